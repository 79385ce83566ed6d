"""The PNGs of `bach_jax.compare`: metric bars with the Bach band, pitch classes, piano-rolls."""

import os

import numpy as np

from bach_jax import plotting
from bach_jax.plotting import plt

# Group -> metrics: one bar chart each (metrics_<group>.png).
METRIC_GROUPS = {
    'pitch': ('pitch_class_entropy', 'used_pitch_classes', 'scale_consistency', 'pitch_range',
              'tonal_distance'),
    'rhythm': ('polyphony', 'polyphony_rate', 'note_density', 'mean_note_length',
               'qualified_note_rate', 'empty_beat_rate', 'repetition'),
    'voice_leading': ('parallel_fifths', 'parallel_octaves', 'hidden_fifths',
                      'hidden_octaves', 'voice_crossing', 'spacing', 'out_of_range',
                      'large_leaps'),
}
PITCH_CLASSES = ('C', 'C#', 'D', 'Eb', 'E', 'F', 'F#', 'G', 'Ab', 'A', 'Bb', 'B')
BAND_COLOR = 'tab:gray'


def _value(x):
  return np.nan if x is None else float(x)


def plot_metric_group(path, names, runs, reference):
  """Bars (mean, std error bar) per run and metric, over the reference's mean +- std band.

  Args:
    path: PNG to write.
    names: metric names (one panel each).
    runs: [(label, compare() result)].
    reference: compare(reference, reference): its ref_mean / ref_std are Bach's.
  """
  cols = min(4, len(names))
  rows = -(-len(names) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols + 0.5, 2.9 * rows), dpi=100,
                           squeeze=False)
  x = np.arange(len(runs))
  for ax, name in zip(axes.flat, names):
    ref = reference['metrics'].get(name)
    if ref is not None:
      mean, std = _value(ref['ref_mean']), _value(ref['ref_std'])
      ax.axhspan(mean - std, mean + std, color=BAND_COLOR, alpha=0.25, lw=0,
                 label='Bach mean ± std')
      ax.axhline(mean, color=BAND_COLOR, lw=1)
    entries = [c['metrics'].get(name) for _, c in runs]
    means = [_value(e['mean']) if e else np.nan for e in entries]
    stds = [_value(e['std']) if e else 0.0 for e in entries]
    ax.bar(x, means, yerr=stds, color=[f'C{i % 10}' for i in x], capsize=3, alpha=0.85)
    ax.set_xticks(x, [label for label, _ in runs], rotation=30, ha='right', fontsize=8)
    ax.set_title(name, fontsize=9)
    ax.grid(axis='y', alpha=0.3)
  for ax in list(axes.flat)[len(names):]:
    ax.axis('off')
  axes.flat[0].legend(fontsize=7, loc='best')
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def plot_pitch_classes(path, runs, reference):
  """Grouped bars of the mean pitch-class histogram per run, Bach's as a black outline."""
  fig, ax = plt.subplots(figsize=(9, 3.8), dpi=100)
  x = np.arange(12)
  width = 0.8 / max(len(runs), 1)
  for i, (label, c) in enumerate(runs):
    e = c['metrics'].get('pitch_class_histogram')
    if e is not None:
      ax.bar(x - 0.4 + (i + 0.5) * width, [_value(v) for v in e['mean']], width,
             color=f'C{i % 10}', alpha=0.85, label=label)
  ref = reference['metrics'].get('pitch_class_histogram')
  if ref is not None:
    mean = np.array([_value(v) for v in ref['ref_mean']])
    std = np.array([_value(v) for v in ref['ref_std']])
    ax.bar(x, mean, 0.84, fill=False, edgecolor='black', lw=1.2, label='Bach')
    ax.errorbar(x, mean, yerr=std, fmt='none', ecolor='black', capsize=3, lw=0.8)
  ax.set_xticks(x, PITCH_CLASSES)
  ax.set_ylabel('share of note-frames')
  ax.set_title('pitch classes (pieces transposed to a C tonic where the corpus is)')
  ax.legend(fontsize=8)
  ax.grid(axis='y', alpha=0.3)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def write_plots(out, report, first_samples, real_piece, steps_per_quarter):
  """Writes every PNG of the report into out -> their file names.

  Args:
    out: directory.
    report: build_report's dict ('runs', 'reference').
    first_samples: one PianoRoll per run (the grid's rows).
    real_piece: a reference PianoRoll (the grid's last row).
    steps_per_quarter: of the reference.
  """
  runs = [(r['label'], r['comparison']) for r in report['runs']]
  reference = report['reference']['comparison']
  files = []
  for group, names in METRIC_GROUPS.items():
    name = f'metrics_{group}.png'
    names = [n for n in names if n in reference['metrics']]  # No crossings of guessed voices.
    plot_metric_group(os.path.join(out, name), names, runs, reference)
    files.append(name)
  plot_pitch_classes(os.path.join(out, 'pitch_classes.png'), runs, reference)
  files.append('pitch_classes.png')
  titles = [f'{label}: sample 0' for label, _ in runs]
  titles.append(f'{report["reference"]["label"]}: {real_piece.meta.get("file", "piece 0")}')
  plotting.plot_pianoroll_rows(os.path.join(out, 'rolls.png'),
                               list(first_samples) + [real_piece], titles, steps_per_quarter)
  files.append('rolls.png')
  return files


def plot_study(folder, report):
  """study_budget.png: distance to Bach (left) and the test likelihood (right, where a
  family has one: solid exact, dashed bound) against training frames, a line per family
  with its 95% band; the noise floor as a gray band. -> the file name."""
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
  budget = report['preset']['budget']
  noise = report['noise_floor']['distance']
  left.axhspan(noise[1], noise[2], color=BAND_COLOR, alpha=0.25,
               label='Bach valid vs test (noise floor)')
  for i, family in enumerate(report['ranking']):
    by = report['points'][family]
    fracs = sorted(by, key=float)
    x = [float(f) * budget for f in fracs]
    color = f'C{i}'
    for ax, key in ((left, 'distance'), (right, 'likelihood')):
      ys = [by[f].get(key) for f in fracs]
      if any(y is None for y in ys):
        continue
      mean, low, high = (np.array([_value(y[j]) for y in ys]) for j in range(3))
      style = '--' if key == 'likelihood' and by[fracs[-1]].get('likelihood_kind') == 'bound' else '-'
      ax.plot(x, mean, style, marker='o', color=color, label=family)
      ax.fill_between(x, low, high, color=color, alpha=0.2)
  for ax, title in ((left, 'distance of samples to Bach (lower is closer)'),
                    (right, 'test NLL, nats/frame (solid exact, dashed bound)')):
    ax.set_xscale('log', base=2)
    ax.set_xlabel('training frames')
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, framealpha=0.6)
  fig.tight_layout()
  plotting.savefig(fig, os.path.join(folder, 'study_budget.png'))
  return 'study_budget.png'
