r"""The comparison report: trained runs of any family, side by side with held-out Bach.

  python -m bach_jax.compare RUN_DIR[:LABEL] [RUN_DIR[:LABEL] ...] --out=DIR
      [--num_pieces=64] [--num_steps=256] [--temperature=1.0] [--seed=0]
      [--sample_batch=16] [--voices=roll|own] [--cut_reference=true] [--cache_dir=DIR]
      [--clips_per_run=3] [--listening_pairs=24] [--excerpt_steps=64] [--instrument=organ]

For every run: its best checkpoint (loaded.load_model; the family is read from
the run, only the family contract is used), N sampled pieces of the same length
and temperature with a fixed seed, every metric of `metrics.evaluate_set`
compared with the reference (`metrics.compare`), and the likelihood of the test
split of the run's own corpus where the family has one (exact or a bound;
'-' for CAPABILITIES.likelihood 'none').

Reference ("held-out Bach"): the test split of the FIRST run's corpus. With
--cut_reference (default) each piece is cut to its first --num_steps frames
(shorter pieces are kept whole), so that length-dependent metrics (pitch range,
used pitch classes...) compare like with like; --nocut_reference keeps them
whole. Noise floor: the valid split of the same corpus, prepared the same way,
compared with the reference: a run closer to Bach than that is within noise.

Voices (for the voice-leading metrics): --voices=roll (default) guesses them
from the frames holding exactly 4 notes (metrics.voices_from_roll) for every
set, samples and Bach alike, so every row is measured the same way whatever
the family; --voices=own uses a set's own 4 voices where it has them.

Writes into --out: report.md (the table), report.json (everything), and PNGs:
metrics_<group>.png (bars per run with the Bach band, mean +- std),
pitch_classes.png (pitch-class histograms, runs vs Bach) and rolls.png (one
sample per run and one real piece); report.html (the tables, --clips_per_run
samples of every run and of Bach as audio players beside their piano-rolls, the
PNGs; audio/) and listen.html (a blind listening test of --listening_pairs pairs of
--excerpt_steps-frame excerpts; clips/, and listen_key.json, which the page never
reads): compare_html.py, compare_listen.py. Every clip has the same sound
(--instrument; FluidSynth where installed, bach_jax/audio.py).

  python -m bach_jax.compare --listening=A.json,B.json --out=REPORT_DIR

aggregates listen.html's downloaded answers (one file per listener) into
listening.json / .md / .png in REPORT_DIR: per family, how often its excerpt was
taken for Bach's and preferred over another family's, with Wilson 95% intervals. Library use: `build_report(runs, out, ...)`
and `sample_metric_summary(model, corpus)` (--mode=evaluate's metric summary).
"""

import dataclasses
import math
import os
import sys
import time

from bach_jax import audio
from bach_jax import compare_html
from bach_jax import compare_listen
from bach_jax import compare_plots
from bach_jax import errors
from bach_jax import compare_report
from bach_jax import experiment
from bach_jax import loaded
from bach_jax import metrics
from bach_jax import workdir as workdir_lib
from bach_jax.errors import CompareError
from bach_jax.metrics import VOICE_MODES
from bach_jax.pieces import cut_pieces


@dataclasses.dataclass(frozen=True)
class Settings:
  """What every run is sampled and measured with (the same for all rows)."""
  num_pieces: int = 64
  num_steps: int = 256
  temperature: float = 1.0
  seed: int = 0
  sample_batch: int = 16
  voices: str = 'roll'
  cut_reference: bool = True
  cache_dir: str = ''
  clips_per_run: int = 3  # report.html: players of each run's first samples and of Bach.
  listening_pairs: int = 24  # listen.html: pairs of excerpts (0: no listening test).
  excerpt_steps: int = 64  # Frames of every listening-test excerpt.
  instrument: str = 'organ'  # The sound of every clip (audio.INSTRUMENTS).
  qpm: float = 80.0  # The tempo of every clip.


def _is_dir(path):
  from etils import epath  # pylint: disable=g-import-not-at-top  (gs:// where it has a backend)
  try:
    return epath.Path(path).is_dir()
  except Exception:  # pylint: disable=broad-except  (no backend for the scheme: not a dir)
    return False


def parse_run_arg(arg):
  """'RUN_DIR' or 'RUN_DIR:LABEL' -> (workdir, label); the label defaults to the dir's name.

  A directory whose own name contains ':' is taken whole when it exists; a label
  has no '/' (so 'gs://bucket/run' is a directory, not 'gs' labeled).
  """
  workdir, label = arg, None
  head, sep, tail = arg.rpartition(':')
  if sep and head and '/' not in tail and not _is_dir(arg):
    workdir, label = head, tail
  if not _is_dir(workdir):
    raise CompareError(f'{workdir}: no such run directory')
  return workdir, label or os.path.basename(os.path.normpath(workdir))


def unique_labels(labels):
  """Labels made unique by a suffix (' (2)', ' (3)'...) on repeats."""
  seen, out = {}, []
  for label in labels:
    seen[label] = seen.get(label, 0) + 1
    out.append(label if seen[label] == 1 else f'{label} ({seen[label]})')
  return out


def _fmt_seconds(s):
  if s is None or not math.isfinite(s):
    return '?'
  if s < 60:
    return f'{s:.1f}s'
  s = int(round(s))
  return f'{s // 3600}h{s % 3600 // 60:02d}m' if s >= 3600 else f'{s // 60}m{s % 60:02d}s'


def sample_timed(model, num_pieces, num_steps, temperature=1.0, seed=0, batch=16, label='',
                 log=print):
  """model.sample in chunks of `batch` pieces, printing a progress line per chunk.

  Chunk c is sampled with seed + c, so the pieces depend on (seed, batch) only.

  Returns:
    (list of PianoRoll, dict: seconds, frames, frames_per_second (of the chunks
    after the first of the same size: compiled, steady; over all chunks, the
    first one's compilation included, when there is no such chunk),
    first_chunk_seconds, rate_includes_compile).
  """
  batch = max(1, min(batch, num_pieces))
  pieces, times, sizes = [], [], []
  t0 = time.perf_counter()
  while len(pieces) < num_pieces:
    errors.safe_point()
    n = min(batch, num_pieces - len(pieces))
    start = time.perf_counter()
    pieces += model.sample(num_pieces=n, num_steps=num_steps, temperature=temperature,
                           seed=seed + len(times))
    times.append(time.perf_counter() - start)
    sizes.append(n)
    elapsed = time.perf_counter() - t0
    rate = len(pieces) * num_steps / elapsed
    eta = (num_pieces - len(pieces)) * num_steps / rate if rate > 0 else float('inf')
    log(f'sampling {label}: {len(pieces)}/{num_pieces} pieces x {num_steps} steps, '
        f'{elapsed:.1f} s, {rate:.0f} frames/s, ETA {_fmt_seconds(eta)}')
  steady = [(t, n) for t, n in zip(times[1:], sizes[1:]) if n == sizes[0]]
  if steady:
    frames_per_second = sum(n for _, n in steady) * num_steps / sum(t for t, _ in steady)
  else:
    frames_per_second = num_pieces * num_steps / sum(times)
  return pieces, {'seconds': sum(times), 'frames': num_pieces * num_steps,
                  'frames_per_second': frames_per_second, 'first_chunk_seconds': times[0],
                  'rate_includes_compile': not steady}


def score_test(model, corpus):
  """The likelihood of the test split (whole pieces, nats per frame), or None when the
  family has none (CAPABILITIES.likelihood 'none') or the split is empty.

  -> dict: value, kind ('exact' / 'bound'), metric (the family's select_by key),
  pieces, frames, seconds.
  """
  test = corpus.splits.get('test') or []
  if model.family.CAPABILITIES.likelihood == 'none' or not test:
    return None
  result = model.score(test)
  key = result['select_by']
  return {'value': float(result[key]), 'kind': result['likelihood'], 'metric': key,
          'pieces': int(result['pieces']), 'frames': int(result.get('frames', 0) or 0),
          'seconds': float(result['seconds'])}


def reference_pieces(corpus, split, num_steps, cut=True):
  """A split of the corpus, cut to num_steps frames per piece when `cut`."""
  pieces = list(corpus.splits.get(split) or [])
  if len(pieces) < 2:
    raise CompareError(f'corpus {corpus.source!r}: the {split} split has {len(pieces)} '
                       'pieces; the reference needs at least 2')
  return cut_pieces(pieces, num_steps) if cut else pieces


def describe_reference(corpus, pieces, cut, num_steps):
  """The reference's description for report.json and the report's notes."""
  return {'source': corpus.source, 'split': 'test', 'pieces': len(pieces),
          'frames': int(sum(p.num_steps for p in pieces)),
          'cut_to_steps': num_steps if cut else None,
          'steps_per_quarter': corpus.steps_per_quarter}


def _stderr(msg):
  print(msg, file=sys.stderr, flush=True)


def sample_metric_summary(model, corpus, num_pieces=64, num_steps=256, seed=0,
                          temperature=None, voices='roll', log=_stderr):
  """Samples a loaded model and compares the samples' metrics with the test split.

  For --mode=evaluate (whose stdout is its JSON result: the progress lines go
  to stderr by default). The test split's pieces are cut to num_steps frames,
  as in the report.

  Args:
    model: loaded.LoadedModel.
    corpus: the run's Corpus (experiment.setup(model.config).corpus).
    num_pieces, num_steps, seed: the samples.
    temperature: default model.config.sample.temperature.
    voices: 'roll' or 'own' (see set_metrics).
    log: progress-line printer (default: stderr).

  Returns:
    A plain-JSON dict (NaN -> None): 'distance' to the test split, 'diversity_ratio',
    'collapsed', 'metrics' (name -> mean, std, ref_mean, ref_std, z, overlap, kl),
    'sampling' (seconds, frames_per_second...) and the settings; or {'skipped':
    reason} when the test split has fewer than 2 pieces.
  """
  if temperature is None:
    temperature = float(model.config.sample.temperature)
  try:
    reference = reference_pieces(corpus, 'test', num_steps)
  except CompareError as e:
    return {'skipped': str(e)}
  pieces, sampling = sample_timed(model, num_pieces, num_steps, temperature, seed,
                                  label=model.config.model.name, log=log)
  result = metrics.compare(metrics.set_metrics(pieces, model.steps_per_quarter, voices),
                           metrics.set_metrics(reference, corpus.steps_per_quarter, voices))
  result.update(sampling=sampling, num_steps=num_steps, seed=seed, temperature=temperature,
                voices=voices, reference=describe_reference(corpus, reference, True, num_steps))
  return result


def _run_entry(workdir, label, settings, reference, ref_spq, log):
  """Loads, samples, scores and measures one run -> (report entry, its samples)."""
  model = loaded.load_model(workdir)
  if settings.cache_dir:
    model.config.data.cache_dir = settings.cache_dir
  corpus = experiment.setup(model.config).corpus
  if model.steps_per_quarter != ref_spq:
    log(f'warning: {label} samples {model.steps_per_quarter} steps per quarter, the '
        f'reference has {ref_spq}; its rhythm metrics are not comparable')
  pieces, sampling = sample_timed(model, settings.num_pieces, settings.num_steps,
                                  settings.temperature, settings.seed, settings.sample_batch,
                                  label, log)
  t0 = time.perf_counter()
  values = metrics.set_metrics(pieces, model.steps_per_quarter, settings.voices)
  metrics_seconds = time.perf_counter() - t0
  likelihood = score_test(model, corpus)
  if likelihood:
    log(f'{label}: test {likelihood["metric"]} {likelihood["value"]:.4f} '
        f'({likelihood["kind"]}, {likelihood["seconds"]:.1f} s)')
  entry = {'label': label, 'workdir': workdir,
           'family': model.config.model.name, 'source': model.config.data.source,
           'likelihood': likelihood, 'comparison': metrics.compare(values, reference),
           'summary': metrics.summarize(values), 'sampling': sampling,
           'metrics_seconds': metrics_seconds,
           'parameters': compare_report.count_parameters(model.params),
           'best_step': int(model.step)}
  entry.update(compare_report.training_info(workdir))
  return entry, pieces


def build_report(runs, out, settings=Settings(), log=print):
  """Compares runs with held-out Bach and writes report.md, report.json and the PNGs.

  Args:
    runs: [(workdir, label)], at least one; the first run's corpus gives the reference.
    out: output directory (created).
    settings: Settings (sampling, voices, reference cut).
    log: progress-line printer.

  Returns:
    The report dict written to report.json.
  """
  if not runs:
    raise CompareError('no run to compare')
  if settings.num_pieces < 1 or settings.num_steps < 1:
    raise CompareError('--num_pieces and --num_steps must be >= 1')
  if settings.voices not in VOICE_MODES:
    raise CompareError(f'--voices must be one of {VOICE_MODES}, got {settings.voices!r}')
  if settings.instrument not in audio.INSTRUMENTS:
    raise CompareError(f'--instrument must be one of {", ".join(audio.INSTRUMENTS)}, got '
                       f'{settings.instrument!r}')
  workdir_lib.prepare(out, what='report folder')  # Before anything is sampled.
  t0 = time.perf_counter()
  labels = unique_labels([label for _, label in runs])
  config = experiment.read_config(runs[0][0])
  if settings.cache_dir:
    config.data.cache_dir = settings.cache_dir
  corpus = experiment.setup(config).corpus
  spq, n = corpus.steps_per_quarter, settings.num_steps
  test = reference_pieces(corpus, 'test', n, settings.cut_reference)
  valid = reference_pieces(corpus, 'valid', n, settings.cut_reference)
  ref_values = metrics.set_metrics(test, spq, settings.voices)
  noise_floor = metrics.compare(metrics.set_metrics(valid, spq, settings.voices), ref_values)
  log(f'reference: {len(test)} test pieces of {corpus.source} '
      f'({"cut to " + str(n) + " steps" if settings.cut_reference else "whole"}); '
      f'noise floor (valid vs test): distance {_num(noise_floor["distance"])}')
  entries, samples = [], {}
  for (workdir, _), label in zip(runs, labels):
    entry, samples[label] = _run_entry(workdir, label, settings, ref_values, spq, log)
    log(f'{label}: distance {_num(entry["comparison"]["distance"])} '
        f'(noise floor {_num(noise_floor["distance"])})')
    entries.append(entry)
  report = {
      'settings': dataclasses.asdict(settings),
      'reference': dict(describe_reference(corpus, test, settings.cut_reference, n),
                        label='Bach (held-out test)', summary=metrics.summarize(ref_values),
                        comparison=metrics.compare(ref_values, ref_values)),
      'noise_floor': dict(noise_floor, label='Bach (valid vs test)',
                          pieces=len(valid)),
      'runs': entries,
  }
  report['files'] = compare_plots.write_plots(out, report, [p[0] for p in samples.values()],
                                              test[0], spq)
  report['files'] += compare_report.FILES + _pages(str(out), report, samples, test, settings)
  report['seconds'] = time.perf_counter() - t0
  report = compare_report.write(out, report)
  log(f'wrote {", ".join(report["files"])} to {out} ({report["seconds"]:.1f} s)')
  return report


def _num(x):
  return '-' if x is None else f'{x:.3f}'


def _pages(out, report, samples, bach, settings):
  """report.html (players of each run's first samples and of Bach) and, with
  listening_pairs, listen.html -> their file names."""
  clips = compare_listen.write_clips(out, {**samples, report['reference']['label']: bach},
                                     settings.clips_per_run, settings.qpm, settings.instrument)
  files = [compare_html.report_page(out, report, clips)]
  if settings.listening_pairs:
    pairs, test_id = compare_listen.make_test(
        out, samples, bach, settings.listening_pairs, settings.seed, settings.excerpt_steps,
        settings.qpm, settings.instrument)
    files.append(compare_html.listen_page(out, pairs, test_id))
  return files


def define_flags():
  """The CLI's flags (defined only when run as a program, not on import)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('out', None, 'Output directory of the report (required).')
  flags.DEFINE_integer('num_pieces', 64, 'Pieces sampled per run.')
  flags.DEFINE_integer('num_steps', 256, 'Frames per sampled piece (and per reference piece '
                       'with --cut_reference).')
  flags.DEFINE_float('temperature', 1.0, 'Sampling temperature, the same for every run.')
  flags.DEFINE_integer('seed', 0, 'Sampling seed, the same for every run.')
  flags.DEFINE_integer('sample_batch', 16, 'Pieces per sampling call (the first call '
                       'compiles; the speed column is measured on the later ones).')
  flags.DEFINE_enum('voices', 'roll', list(VOICE_MODES), "Voices for voice leading: 'roll' "
                    "guesses them from 4-note frames for every set; 'own' uses a set's own.")
  flags.DEFINE_bool('cut_reference', True, 'Cut reference pieces to --num_steps frames '
                    '(else whole pieces).')
  flags.DEFINE_string('cache_dir', '', "Corpus cache for every run ('' = each run's own "
                      'config.data.cache_dir).')
  flags.DEFINE_integer('clips_per_run', 3, 'report.html: audio players per run (and of Bach).')
  flags.DEFINE_integer('listening_pairs', 24, 'listen.html: pairs of excerpts (0: none).')
  flags.DEFINE_integer('excerpt_steps', 64, 'Frames of every listening-test excerpt.')
  flags.DEFINE_string('instrument', 'organ', 'The sound of every clip: organ, choir, '
                      'strings or piano.')
  flags.DEFINE_string('listening', '', 'Comma-separated answer files of listen.html: '
                      'aggregate them into --out (the report folder, with listen_key.json) '
                      'instead of writing a report.')


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  errors.quiet_library_logs()
  f = flags.FLAGS
  with errors.one_line_errors(interrupted='interrupted by Ctrl-C: no report written'):
    if not f.out:
      raise errors.UsageError("--out=DIR is required (the report's folder)")
    if f.listening:
      compare_listen.write_results(f.out, [x for x in f.listening.split(',') if x])
      return
    if len(argv) < 2:
      raise errors.UsageError('give at least one RUN_DIR[:LABEL]')
    runs = [parse_run_arg(a) for a in argv[1:]]
    settings = Settings(f.num_pieces, f.num_steps, f.temperature, f.seed, f.sample_batch,
                        f.voices, f.cut_reference, f.cache_dir, f.clips_per_run,
                        f.listening_pairs, f.excerpt_steps, f.instrument)
    with errors.stop_at_safe_points():
      build_report(runs, f.out, settings)


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  from bach_jax import hostmem  # pylint: disable=g-import-not-at-top
  hostmem.tune_malloc()
  define_flags()
  app.run(main)
