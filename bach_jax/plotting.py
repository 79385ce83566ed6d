"""Piano-roll and curve PNGs (matplotlib, Agg backend: no display needed).

`path`: a str, os.PathLike or etils epath.Path (a gs:// path works), or an open
binary file.
"""

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from bach_jax import workdir as workdir_lib

LOWEST_PITCH = 21
VOICE_COLORS = ('tab:red', 'tab:blue', 'tab:green', 'tab:purple', 'tab:orange', 'tab:brown')


def _draw_pianoroll(ax, roll, voices, steps_per_quarter, title, voice_names):
  roll = np.asarray(roll, bool)
  t = roll.shape[0]
  if voices is not None and np.asarray(voices).size:
    voices = np.asarray(voices)
    for v in range(voices.shape[1]):
      steps = np.nonzero(voices[:, v] >= 0)[0]
      ax.scatter(steps + 0.5, voices[steps, v], marker='s', s=6,
                 color=VOICE_COLORS[v % len(VOICE_COLORS)], linewidths=0,
                 label=voice_names[v] if voice_names else f'voice {v}')
    ax.legend(loc='upper right', fontsize=7, markerscale=2)
  else:
    steps, keys = np.nonzero(roll)
    ax.scatter(steps + 0.5, keys + LOWEST_PITCH, marker='s', s=6, color='black', linewidths=0)
  if roll.any():
    keys = np.nonzero(roll.any(0))[0] + LOWEST_PITCH
    ax.set_ylim(keys.min() - 2, keys.max() + 2)
  ax.set_xlim(0, max(t, 1))
  bar = 4 * steps_per_quarter
  for x in range(0, t, bar):
    ax.axvline(x, color='0.85', lw=0.5, zorder=0)
  ax.set_ylabel('MIDI pitch')
  ax.set_title(title)


def savefig(fig, path):
  """Writes a figure as PNG to a path (through epath) or an open binary file; closes it."""
  try:
    if hasattr(path, 'write'):
      fig.savefig(path, format='png')
    else:
      with workdir_lib.as_path(path).open('wb') as f:
        fig.savefig(f, format='png')
  finally:
    plt.close(fig)


def plot_pianoroll(path, roll, voices=None, steps_per_quarter=4, title='', voice_names=None):
  """Writes a piano-roll PNG. roll: bool[T, 88]; voices: int[T, V] (REST -1) colours voices."""
  t = np.asarray(roll).shape[0]
  fig, ax = plt.subplots(figsize=(min(4 + t / 16, 24), 4.5), dpi=100)
  _draw_pianoroll(ax, roll, voices, steps_per_quarter, title, voice_names)
  ax.set_xlabel(f'step ({steps_per_quarter} per quarter; lines every 4 quarters)')
  fig.tight_layout()
  savefig(fig, path)


def plot_pianoroll_rows(path, pieces, titles, steps_per_quarter=4):
  """One PNG with a piano-roll per row, on one time axis (e.g. an original above its
  reconstruction, or the points of an interpolation). pieces: PianoRoll-like objects
  with .roll, .voices and .meta."""
  t = max(np.asarray(p.roll).shape[0] for p in pieces)
  fig, axes = plt.subplots(len(pieces), 1, figsize=(min(4 + t / 16, 24), 2.6 * len(pieces)),
                           dpi=100, sharex=True, squeeze=False)
  for ax, piece, title in zip(axes[:, 0], pieces, titles):
    _draw_pianoroll(ax, piece.roll, piece.voices, steps_per_quarter, title,
                    piece.meta.get('voice_names'))
    ax.set_xlim(0, t)
  axes[-1, 0].set_xlabel(f'step ({steps_per_quarter} per quarter; lines every 4 quarters)')
  fig.tight_layout()
  savefig(fig, path)


def plot_curves(path, records, keys):
  """Writes a PNG of metric curves. records: dicts with 'step' (metrics.jsonl rows)."""
  fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
  for key in keys:
    pts = [(r['step'], r[key]) for r in records if key in r]
    if pts:
      xs, ys = zip(*pts)
      ax.plot(xs, ys, label=key, marker='.' if len(pts) < 30 else None)
  ax.set_xlabel('step')
  ax.set_ylabel('nats per frame')
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  savefig(fig, path)
