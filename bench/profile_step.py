"""Where bach_jax's LSTM training step spends its time, op by op (XLA CPU/GPU).

Traces a few steps of the bench's bach_jax step with jax.profiler and sums the
duration of every compiled op (XLA fusion, dot, copy, ...) per step, so a change
to models/layers.py can be judged by the ops it moves, not only by the total.

  python -m bench.profile_step                  # 64x32, top 25 ops
  python -m bench.profile_step --size 128x128 --top 40 --hlo step.hlo

Op names are XLA's (e.g. ynn_fusion.12); --hlo writes the optimized HLO so a
name can be looked up (its metadata op_name points at the JAX source line).
Ops on different threads may overlap, so the sum can exceed the wall time.

First comes a summary by kind: matmuls (any op whose HLO holds a dot, with the
FLOPs counted from its shapes and the GFLOP/s it ran at) and other ops, each
split into ops called more than once per step (inside a scan) and ops called
once. It answers "how far is this step from its matmul floor".
"""

import argparse
import collections
import glob
import gzip
import json
import math
import os
import re
import sys
import tempfile

if __package__ in (None, ''):  # Run as `python bench/profile_step.py`.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.implementations import make_bach_jax_step, make_rolls  # pylint: disable=g-import-not-at-top

# Trace events that wrap or wait for the ops rather than being ops.
_NOT_OPS = ('$', 'ThunkExecutor', 'SlinkyThreadPool', 'ThreadpoolListener', 'end: ')


def op_times(trace_dir, steps):
  """-> (Counter name -> microseconds per step, Counter name -> calls per step, wall us)."""
  path = glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True)[0]
  with gzip.open(path) as f:
    events = json.load(f)
  events = events['traceEvents'] if isinstance(events, dict) else events
  total, calls = collections.Counter(), collections.Counter()
  wall = 0.0
  for e in events:
    if e.get('ph') != 'X':
      continue
    if e['name'] == 'ThunkExecutor::Execute (wait for completion)':
      wall += e.get('dur', 0) / steps
    if e['name'].startswith(_NOT_OPS):
      continue
    total[e['name']] += e.get('dur', 0) / steps
    calls[e['name']] += 1 / steps
  return total, calls, wall


COMPUTATION = re.compile(r'^(?:ENTRY )?%(\S+) .*\{$')
INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%(\S+) = \w+\[([\d,]*)\]\S* (\w[\w-]*)\((.*)$')
OPERAND = re.compile(r'%([^,)\s]+)')


def parse_dims(text):
  return [int(d) for d in text.split(',') if d]


def dot_flops(hlo_text):
  """-> {instruction name: FLOPs} for every dot, and every op calling one, in HLO text.

  A dot's FLOPs are 2 x (output elements) x (contracted size); a fusion (e.g.
  XLA CPU's ynn_fusion, which wraps a dot) gets the FLOPs of the dots in the
  computation it calls.
  """
  shapes, in_computation, calls = {}, collections.defaultdict(float), {}
  flops, computation = {}, None
  for line in hlo_text.splitlines():
    m = COMPUTATION.match(line)
    if m and not line.startswith(' '):
      computation = m.group(1)
      continue
    m = INSTRUCTION.match(line)
    if not m:
      continue
    name, dims, opcode, rest = m.group(1), parse_dims(m.group(2)), m.group(3), m.group(4)
    shapes[name] = dims
    if opcode == 'dot':
      lhs = OPERAND.search(rest).group(1)
      contracting = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', rest)
      k = math.prod(shapes[lhs][i] for i in parse_dims(contracting.group(1))) if contracting else 1
      flops[name] = 2.0 * math.prod(dims) * k
      in_computation[computation] += flops[name]
    called = re.search(r'calls=%([^,\s]+)', rest)
    if called:
      calls[name] = called.group(1)
  for name, computation in calls.items():
    if in_computation.get(computation):
      flops[name] = in_computation[computation]
  return flops


def summary(total, calls, flops):
  """Rows (kind, ms per step, GFLOP per step or None) for the op kinds named above."""
  rows = collections.OrderedDict(
      (kind, [0.0, 0.0]) for kind in ('matmuls in scans', 'matmuls, once',
                                      'other ops in scans', 'other ops, once'))
  for name, us in total.items():
    kind = ('matmuls' if name in flops else 'other ops') + (
        ' in scans' if calls[name] > 1.5 else ', once')
    rows[kind][0] += us / 1e3
    rows[kind][1] += flops.get(name, 0.0) * round(calls[name]) / 1e9
  return [(kind, ms, gflop if kind.startswith('matmuls') else None)
          for kind, (ms, gflop) in rows.items()]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--size', default='64x32', help='BATCHxSTEPS (default 64x32).')
  p.add_argument('--steps', type=int, default=3, help='Traced steps (default 3).')
  p.add_argument('--top', type=int, default=25, help='Ops to list (default 25).')
  p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  p.add_argument('--hlo', default=None, help='Write the optimized HLO of the step here.')
  args = p.parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  batch, steps = (int(v) for v in args.size.split('x'))
  runner = make_bach_jax_step(make_rolls(batch, steps), args.dtype)
  hlo_text = runner.compiled.as_text()
  if args.hlo:
    with open(args.hlo, 'w') as f:
      f.write(hlo_text)
  for _ in range(3):  # Warm-up: allocations settle.
    runner.step()
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    for _ in range(args.steps):
      runner.step()
    jax.profiler.stop_trace()
    total, calls, wall = op_times(trace_dir, args.steps)
  ops_sum = sum(total.values())
  print(f'{args.size} {jax.default_backend()}: {wall / 1e3:.1f} ms per step on the '
        f'executor; ops sum to {ops_sum / 1e3:.1f} ms')
  flops = dot_flops(hlo_text)
  for kind, ms, gflop in summary(total, calls, flops):
    rate = f'{gflop:6.2f} GFLOP {gflop / ms * 1e3:6.1f} GFLOP/s' if gflop and ms else ''
    print(f'{ms:9.2f} {ms * 1e3 / ops_sum:6.1%}  {kind:20s} {rate}')
  print(f'{"ms/step":>9} {"share":>6} {"calls":>6} {"GFLOP/s":>8}  op')
  for name, us in total.most_common(args.top):
    rate = f'{flops[name] * round(calls[name]) / us / 1e3:8.1f}' if name in flops and us else ''
    print(f'{us / 1e3:9.2f} {us / ops_sum:6.1%} {calls[name]:6.0f} {rate:>8}  {name}')


if __name__ == '__main__':
  main()
