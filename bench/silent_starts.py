r"""How often a sampled piece never starts: silent from its first frame to its last.

  python -m bench.silent_starts RUN_DIR [RUN_DIR ...] [--pieces 256] [--steps 128]

Per run: the share of pieces silent throughout and of pieces whose first frame is
silent, drawn as the model draws them (config.sample.resample_silent off) and with a
piece that begins with silence drawn again (on, the default). docs/faults.md has the
figures.
"""

import argparse

import numpy as np


def rates(pieces):
  silent = np.mean([not p.roll.any() for p in pieces])
  first = np.mean([not p.roll[0].any() for p in pieces])
  return silent, first


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('runs', nargs='+')
  parser.add_argument('--pieces', type=int, default=256)
  parser.add_argument('--steps', type=int, default=128)
  parser.add_argument('--seed', type=int, default=1)
  args = parser.parse_args()
  import bach_jax  # pylint: disable=g-import-not-at-top
  print('| run | step | resample_silent | silent throughout | first frame silent |')
  print('|---|---:|---|---:|---:|')
  for run in args.runs:
    model = bach_jax.load_model(run)
    for on in (False, True):
      model.config.sample.resample_silent = on
      silent, first = rates(model.sample(num_pieces=args.pieces, num_steps=args.steps,
                                         seed=args.seed))
      print(f'| {run} | {model.step} | {on} | {silent:.1%} ({round(silent * args.pieces)}) | '
            f'{first:.1%} ({round(first * args.pieces)}) |', flush=True)


if __name__ == '__main__':
  main()
