r"""Training curves of several runs side by side, one panel per metric, as one PNG.

  python -m bach_jax.curves RUN_DIR[:LABEL] ... --keys=train/wasserstein_mean,valid/metric_distance \
      --out=curves.png

Reads each run's metrics.jsonl (the last row per step, as metric_writers does); a
metric a run does not have is left out of its panel.
"""

import sys

from absl import app
from absl import flags
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from bach_jax import metric_writers  # pylint: disable=wrong-import-position

_KEYS = flags.DEFINE_list('keys', ['train/loss_mean'], 'Metric names, one panel each.')
_OUT = flags.DEFINE_string('out', 'curves.png', 'PNG to write.')


def plot_runs(path, runs, keys):
  """runs: [(label, metrics.jsonl rows)]; keys: metric names -> one PNG, a panel per key."""
  fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 3.8), dpi=100,
                           squeeze=False)
  for ax, key in zip(axes[0], keys):
    for label, records in runs:
      pts = [(r['step'], r[key]) for r in records if r.get(key) is not None]
      if pts:
        xs, ys = zip(*pts)
        ax.plot(xs, ys, label=label, marker='.' if len(pts) < 30 else None)
    ax.set_title(key)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def main(argv):
  specs = argv[1:]
  if not specs:
    raise app.UsageError('give one or more RUN_DIR[:LABEL]')
  runs = []
  for spec in specs:
    workdir, _, label = spec.partition(':')
    records = metric_writers.read_metrics(workdir)
    if not records:
      print(f'error: {workdir}: no metrics.jsonl (is it a bach_jax workdir?)', file=sys.stderr)
      return 2
    runs.append((label or workdir.rstrip('/').rsplit('/', 1)[-1], records))
  plot_runs(_OUT.value, runs, _KEYS.value)
  print(_OUT.value)
  return 0


if __name__ == '__main__':
  app.run(main)
