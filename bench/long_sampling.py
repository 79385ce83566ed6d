r"""Long samples: the time announced before a long request against the time it took.

  python -m bench.long_sampling RUN_DIR [--steps 1000,8000,32000,100000] [--pieces 1]
      [--timeout 900]

For each length, in a process of its own (a compiled loop cannot be stopped): a
LoadedModel.sample of that many steps twice, the estimate the first call's 'note:
estimate: about N s' line gave (requests of generate.LONG_SAMPLE_STEPS steps or more
announce one; it is the time after compiling), the first call's seconds (the trials,
compilation and the run, as a user waits for them) and the second call's (the run
alone, what the estimate is for); a call still running at --timeout is '> timeout'. Prints a Markdown table and one
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
  for call in ('first', 'second'):  # The first compiles (and announces); the second runs.
    t0 = time.perf_counter()
    model.sample(num_pieces=pieces, num_steps=steps, seed=0)  # Its notes go to stderr.
    print(json.dumps({call: time.perf_counter() - t0}), flush=True)


def _estimate(stderr):
  found = re.search(r'estimate: about (\d+) s', stderr or '')
  return int(found.group(1)) if found else None


def _text(x):
  return x.decode() if isinstance(x, bytes) else (x or '')


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
  print('| steps | announced (s) | first call (s, compiling) | second call (s) | '
        'second / announced |')
  print('|---:|---:|---:|---:|---:|')
  for steps in (int(x) for x in args.steps.split(',')):
    cmd = [sys.executable, '-m', 'bench.long_sampling', args.run, f'--child={steps}',
           f'--pieces={args.pieces}']
    row = {'steps': steps, 'pieces': args.pieces}
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
      out, err = proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
      out, err = _text(e.stdout), _text(e.stderr)
      row['timeout'] = args.timeout
    for line in out.splitlines():
      if line.startswith('{'):
        row.update(json.loads(line))
    row['estimate'] = _estimate(err)
    cell = lambda k: f'{row[k]:.1f}' if k in row else f'> {args.timeout:.0f}'
    est = row['estimate']
    ratio = f'{row["second"] / est:.2f}' if est and 'second' in row else '-'
    print(f'| {steps:,} | {est if est is not None else "-"} | {cell("first")} | '
          f'{cell("second")} | {ratio} |', flush=True)
    print(json.dumps(row), file=sys.stderr, flush=True)


if __name__ == '__main__':
  main()
