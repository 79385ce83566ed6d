r"""Long samples: the time announced before a long request against the time it took.

  python -m bench.long_sampling RUN_DIR [--steps 1000,8000,32000,100000] [--pieces 1]
      [--timeout 900]

For each length, in a process of its own (a compiled loop cannot be stopped): a
LoadedModel.sample of that many steps, the estimate its 'note: estimate: about N s'
line gave (requests of generate.LONG_SAMPLE_STEPS steps or more announce one), and the
seconds it took (compilation included, as a user waits for it); a request still
running at --timeout is reported as '> timeout'. Prints a Markdown table and one
JSON line per length. docs/benchmarks.md ("Long samples") has the figures.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time


def child(run, steps, pieces):
  import bach_jax  # pylint: disable=g-import-not-at-top
  model = bach_jax.load_model(run)
  t0 = time.perf_counter()
  model.sample(num_pieces=pieces, num_steps=steps, seed=0)  # Its notes go to stderr.
  print(json.dumps({'seconds': time.perf_counter() - t0}))


def _estimate(stderr):
  found = re.search(r'estimate: about (\d+) s', stderr or '')
  return int(found.group(1)) if found else None


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('run')
  parser.add_argument('--steps', default='1000,8000,32000,100000')
  parser.add_argument('--pieces', type=int, default=1)
  parser.add_argument('--timeout', type=float, default=900)
  parser.add_argument('--child', type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args.run, args.child, args.pieces)
    return
  print('| steps | announced (s) | took (s) | took / announced |')
  print('|---:|---:|---:|---:|')
  for steps in (int(x) for x in args.steps.split(',')):
    cmd = [sys.executable, '-m', 'bench.long_sampling', args.run, f'--child={steps}',
           f'--pieces={args.pieces}']
    row = {'steps': steps, 'pieces': args.pieces}
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
      row.update(json.loads(proc.stdout.strip().splitlines()[-1]), estimate=_estimate(proc.stderr))
      took = f'{row["seconds"]:.1f}'
    except subprocess.TimeoutExpired as e:
      err = e.stderr.decode() if isinstance(e.stderr, bytes) else e.stderr
      row.update(seconds=None, timeout=args.timeout, estimate=_estimate(err))
      took = f'> {args.timeout:.0f}'
    est = row['estimate']
    ratio = f'{row["seconds"] / est:.2f}' if est and row['seconds'] else '-'
    print(f'| {steps:,} | {est if est is not None else "-"} | {took} | {ratio} |', flush=True)
    print(json.dumps(row), file=sys.stderr, flush=True)


if __name__ == '__main__':
  main()
