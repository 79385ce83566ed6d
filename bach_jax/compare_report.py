"""report.md and report.json of `bach_jax.compare`, and what a run's workdir says about it.

Training time: each training session (a first run or a resume) writes its own
TensorBoard event file, whose first event is written when the session's metric
writer opens (after the corpus is loaded and the state initialized, before the
first step is compiled) and whose last is its last metric. The time is the sum
over sessions of last minus first event: wall-clock of the training loop
including compilation, evaluations and checkpoints, excluding corpus
preparation, model initialization and the final samples. '-' when a run has no
event file.
"""

import json
import math
import os
import struct

from bach_jax import metric_writers

# (metric, column header) of the main table; every metric is in report.json and the PNGs.
TABLE_METRICS = (
    ('pitch_class_entropy', 'PC entropy'),
    ('used_pitch_classes', 'PCs/bar'),
    ('scale_consistency', 'in scale'),
    ('polyphony', 'polyphony'),
    ('mean_note_length', 'note len (q)'),
    ('empty_beat_rate', 'empty beats'),
    ('repetition', 'repetition'),
    ('tonal_distance', 'tonal dist'),
)
TABLE_VOICE_LEADING = (
    ('parallel_fifths', 'par. 5ths'),
    ('parallel_octaves', 'par. 8ves'),
    ('hidden_fifths', 'hid. 5ths'),
    ('hidden_octaves', 'hid. 8ves'),
    ('voice_crossing', 'crossing'),
    ('spacing', 'spacing'),
    ('out_of_range', 'range'),
    ('large_leaps', 'leaps'),
)
FILES = ['report.md', 'report.json']
TIME_MEASURE = ('wall-clock of the training loop, summed over sessions (first to last '
                'TensorBoard event of each; compilation, evaluations and checkpoints '
                'included; corpus preparation and final samples not)')


def count_parameters(params):
  """Number of scalars in a params pytree."""
  import jax  # pylint: disable=g-import-not-at-top
  return int(sum(int(getattr(x, 'size', 1)) for x in jax.tree.leaves(params)))


def _event_wall_times(path):
  """(first, last) wall_time of a TensorBoard event file (TFRecord of Event protos)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  data = path.read_bytes()
  pos, first, last = 0, None, None
  while pos + 12 <= len(data):
    (length,) = struct.unpack('<Q', data[pos:pos + 8])
    start, pos = pos + 12, pos + 12 + length + 4  # length, its crc, data, data crc.
    if pos > len(data):
      break  # A record still being written.
    event = event_pb2.Event()
    event.ParseFromString(data[start:start + length])
    first = event.wall_time if first is None else first
    last = event.wall_time
  return first, last


def training_info(workdir):
  """-> dict: trained_steps (latest checkpoint, else metrics.jsonl; None if unknown),
  train_seconds (see the module docstring; None if unknown), train_sessions."""
  from etils import epath  # pylint: disable=g-import-not-at-top  (gs:// where it has a backend)
  root = epath.Path(workdir)
  try:
    steps = [int(p.name) for p in (root / 'checkpoints').iterdir() if p.name.isdigit()]
  except OSError:
    steps = []
  if not steps:
    steps = [r['step'] for r in metric_writers.read_metrics(workdir)
             if any(k.startswith('train/') for k in r)]
  seconds, sessions = 0.0, 0
  try:
    events = sorted((root / 'tensorboard').glob('events.out.tfevents.*'))
  except OSError:
    events = []
  for path in events:
    try:
      first, last = _event_wall_times(path)
    except Exception:  # pylint: disable=broad-except  (a damaged file: time unknown)
      first = last = None
    if first is not None:
      seconds += last - first
      sessions += 1
  return {'trained_steps': max(steps) if steps else None,
          'train_seconds': seconds if sessions else None, 'train_sessions': sessions}


def _num(x, digits=3):
  """A table cell: '-' for None / NaN, else a number with `digits` significant digits
  (at least the integer part)."""
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return '-'
  x = float(x)
  if abs(x) >= 10 ** digits:
    return f'{x:,.0f}'
  return f'{x:.{digits}g}' if abs(x) >= 1 else f'{x:.{digits}f}'.rstrip('0').rstrip('.') or '0'


def _duration(s):
  if s is None:
    return '-'
  s = int(round(s))
  return (f'{s // 3600}h{s % 3600 // 60:02d}m' if s >= 3600 else
          f'{s // 60}m{s % 60:02d}s' if s >= 60 else f'{s}s')


def _columns(report):
  """(metric, header) of the table: TABLE_METRICS and TABLE_VOICE_LEADING that the
  reference has (guessed voices have no crossings)."""
  have = report['reference']['comparison']['metrics']
  return [(n, h) for n, h in TABLE_METRICS + TABLE_VOICE_LEADING if n in have]


def _metric_cells(comparison, columns):
  """Table cells of one row from a metrics.compare() result (sample means)."""
  per = comparison['metrics']
  return [_num(per[name]['mean']) if per.get(name) else '-' for name, _ in columns]


def _likelihood_cell(likelihood):
  if not likelihood:
    return '-'
  return f'{likelihood["value"]:.3f} {likelihood["kind"]}'


def _diversity_cell(comparison):
  cell = _num(comparison['diversity_ratio'])
  return cell + ' (collapsed)' if comparison['collapsed'] else cell


def table_rows(report):
  """(header, rows): the main table, one row per run, then held-out Bach and the noise floor."""
  columns = _columns(report)
  header = (['run', 'family', 'likelihood (nats/frame)', 'distance', 'diversity'] +
            [h for _, h in columns] +
            ['params', 'steps (best/trained)', 'train time', 'sampling frames/s'])
  rows = []
  for run in report['runs']:
    c, s = run['comparison'], run['sampling']
    speed = _num(s['frames_per_second'], 4) + ('*' if s['rate_includes_compile'] else '')
    rows.append([run['label'], run['family'], _likelihood_cell(run['likelihood']),
                 _num(c['distance']), _diversity_cell(c)] + _metric_cells(c, columns) +
                [f'{run["parameters"]:,}', f'{run["best_step"]}/{_num(run["trained_steps"])}',
                 _duration(run['train_seconds']), speed])
  for entry in (report['reference'], report['noise_floor']):
    c = entry.get('comparison', entry)
    rows.append([entry['label'], '-', '-', _num(c['distance']), _diversity_cell(c)] +
                _metric_cells(c, columns) + ['-'] * 4)
  return header, rows


def _markdown_table(header, rows):
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return lines


def _detail_table(report):
  """Every metric: rows = metrics, columns = runs and Bach; mean ± std (overlap with Bach)."""
  columns = [(run['label'], run['comparison']) for run in report['runs']]
  columns.append((report['reference']['label'], report['reference']['comparison']))
  columns.append((report['noise_floor']['label'], report['noise_floor']))
  names = list(report['reference']['comparison']['metrics'])
  rows = []
  for name in names:
    row = [name]
    for _, comparison in columns:
      e = comparison['metrics'].get(name)
      if e is None:
        row.append('-')
      elif isinstance(e['mean'], list):  # The histogram: its overlap only (see the PNG).
        row.append(f'OA {_num(e["overlap"], 2)}')
      else:
        row.append(f'{_num(e["mean"])} ± {_num(e["std"])} (OA {_num(e["overlap"], 2)})')
    rows.append(row)
  return _markdown_table(['metric'] + [label for label, _ in columns], rows)


def markdown(report):
  """The text of report.md."""
  s, ref, floor = report['settings'], report['reference'], report['noise_floor']
  cut = (f'each cut to its first {ref["cut_to_steps"]} frames (shorter ones whole)'
         if ref['cut_to_steps'] else 'whole pieces')
  kinds = sorted({f'{r["family"]}: {r["likelihood"]["metric"]}' for r in report['runs']
                  if r['likelihood']})
  header, rows = table_rows(report)
  lines = [
      '# Comparison report', '',
      f'{s["num_pieces"]} pieces x {s["num_steps"]} steps sampled per run (temperature '
      f'{s["temperature"]}, seed {s["seed"]}, {s["sample_batch"]} pieces per call). '
      f'Held-out Bach: the test split of `{ref["source"]}` (the first run\'s corpus), '
      f'{ref["pieces"]} pieces, {cut}. Noise floor: its valid split ({floor["pieces"]} '
      f'pieces, prepared the same way) against it: distance **{_num(floor["distance"])}**.',
      '',
  ]
  lines += _markdown_table(header, rows)
  lines += [
      '',
      '- likelihood: nats per frame on the test split of the run\'s own corpus (whole '
      'pieces); *exact* = -log p, *bound* = an upper bound on it; - = the family has none'
      + (f' ({", ".join(kinds)})' if kinds else '') + '.',
      '- distance: mean over the scalar metrics of |mean - Bach mean| / Bach std, each '
      'capped at 10 (0 = Bach\'s means); diversity: mean distance between pieces over '
      'that between Bach\'s (1 = as varied; under 0.25: collapsed).',
      '- metric columns: means over the pieces (std and every other metric below and in '
      'report.json). PCs/bar: distinct pitch classes per bar; note len in quarter notes.',
      '- voice leading, per 100 occasions: parallel fifths / octaves per pair transition, '
      'hidden ones per outer-pair transition, crossing and spacing per pair-frame, range '
      'per voice-frame, leaps (> octave) per voice move; voices '
      + ('guessed from the 4-note frames for every set (in pitch order: no crossings).'
         if s['voices'] == 'roll' else
         'of each set where it has 4 (else guessed from the 4-note frames).'),
      f'- train time: {TIME_MEASURE}; - = unknown. steps: best checkpoint (the one '
      'sampled) / trained.',
      '- sampling frames/s: pieces x steps per second after the first call (which '
      'compiles); * = only one call of that size, compilation included.',
      '', '## All metrics', '',
      'mean ± std over the pieces; OA: overlapping area of the distance distributions '
      'with Bach\'s (Yang & Lerch; 1 = same).', '',
  ]
  lines += _detail_table(report)
  lines.append('')
  for name in report.get('files', ()):
    if name.endswith('.png'):
      lines += [f'![{name[:-4]}]({name})', '']
  return '\n'.join(lines)


def write(out, report):
  """Writes report.json and report.md (FILES) into out -> the report as written."""
  report = metric_writers.json_safe(report)
  with open(os.path.join(out, 'report.json'), 'w') as f:
    json.dump(report, f, indent=1, allow_nan=False)
  with open(os.path.join(out, 'report.md'), 'w') as f:
    f.write(markdown(report))
  return report
