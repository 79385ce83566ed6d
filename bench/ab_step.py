"""A/B of LSTM stack variants in bach_jax's training step, side by side in one process.

How every "x the previous version" figure in README's Benchmarks section is measured:

  python -m bench.ab_step --variant git:HEAD~1                 # against the last commit
  python -m bench.ab_step --variant /tmp/layers_try.py --torch --sizes 64x32,128x128
  python -m bench.ab_step --variant git:main --malloc=tuned --rounds 40

The step is the benchmark's bach_jax step (bench.implementations.make_bach_jax_step:
configs/lstm.py, batch [B, T, 88], hidden 512, jit, sharded, donated), built once with the
working tree's `LSTMStack` ("current") and once per variant. A variant is a Python file
that defines `LSTMStack` as bach_jax/models/layers.py does (a modified copy of it), or
git:REV for layers.py at a git revision. Then every round runs each step once (and torch's
with --torch), in an order shuffled per round with a fixed seed, and the report gives per
step the median time and the median and quartiles of its per-round ratio to "current".
The per-round ratio cancels most of a shared machine's drift, which moves the medians
of single runs by 5-10%; a ratio whose quartiles straddle 1.0 is noise.

Output: one JSON line per step and size (stdout, or --out FILE), then a table. The last
loss of every bach_jax step is reported too: a pure speed change leaves it equal.
"""

import argparse
import contextlib
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile

if __package__ in (None, ''):  # Run as `python bench/ab_step.py`.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.implementations import (  # pylint: disable=g-import-not-at-top
    REPO_ROOT, _TorchRunner, _torch_device, make_bach_jax_step, make_rolls, ratio_quartiles,
    run_rounds)
from bench.train_step import (  # pylint: disable=g-import-not-at-top
    TUNED_MALLOC, Emitter, maybe_reexec_with_tuned_malloc)

CURRENT = 'current'


class VariantError(Exception):
  """A variant that cannot be loaded; the message names it."""


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--variant', action='append', required=True,
                 help='A file defining LSTMStack, or git:REV (layers.py at REV). Repeatable.')
  p.add_argument('--sizes', default='64x32', help='Comma-separated BATCHxSTEPS (default 64x32).')
  p.add_argument('--rounds', type=int, default=20, help='Timed rounds (default 20).')
  p.add_argument('--warmup', type=int, default=3,
                 help='Untimed steps of each after compiling (default 3).')
  p.add_argument('--torch', action='store_true', help="Also run torch.nn.LSTM's step.")
  p.add_argument('--out', default=None, help='Write the JSON lines here instead of stdout.')
  p.add_argument('--malloc', default='asis', choices=['asis', 'tuned'],
                 help="'tuned': re-execute under GLIBC_TUNABLES=" + TUNED_MALLOC)
  args = p.parse_args(argv)
  if args.rounds < 1 or args.warmup < 0:
    p.error(f'--rounds must be >= 1 and --warmup >= 0, got {args.rounds} and {args.warmup}')
  return args


def load_variant(spec, workdir):
  """-> the LSTMStack class of a variant: a file path or git:REV."""
  if spec.startswith('git:'):
    rev = spec[len('git:'):]
    try:
      source = subprocess.run(
          ['git', '-C', REPO_ROOT, 'show', f'{rev}:bach_jax/models/layers.py'],
          capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
      why = getattr(e, 'stderr', '') or str(e)
      raise VariantError(f'{spec}: no bach_jax/models/layers.py at that revision '
                         f'({why.strip().splitlines()[-1] if why.strip() else e})') from None
    path = os.path.join(workdir, f'layers_{len(os.listdir(workdir))}.py')
    with open(path, 'w') as f:
      f.write(source)
  else:
    path = spec
    if not os.path.isfile(path):
      raise VariantError(f'{spec}: no such file')
  module_name = f'bench_ab_variant_{abs(hash((spec, path)))}'
  try:
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except
    raise VariantError(f'{spec}: cannot be imported ({type(e).__name__}: {e})') from None
  if not hasattr(module, 'LSTMStack'):
    raise VariantError(f'{spec}: defines no LSTMStack')
  return module.LSTMStack


@contextlib.contextmanager
def stack_class(cls):
  """Builds bach_jax.models.lstm's model with `cls` as its LSTMStack while inside."""
  from bach_jax.models import lstm  # pylint: disable=g-import-not-at-top
  saved = lstm.LSTMStack
  lstm.LSTMStack = cls
  try:
    yield
  finally:
    lstm.LSTMStack = saved


def bench_size(args, emit, stacks, batch, steps, torch_device):
  roll = make_rolls(batch, steps)
  runners = {}
  for name, cls in stacks.items():
    with stack_class(cls):
      runners[name] = make_bach_jax_step(roll, 'float32')
  if args.torch and torch_device is not None:
    runners['torch'] = _TorchRunner(roll, torch_device)
  for runner in runners.values():
    for _ in range(args.warmup):
      runner.step()
  times, _, losses = run_rounds(runners, args.rounds)
  ratios = ratio_quartiles(times, CURRENT)
  for name, ts in times.items():
    median, q25, q75 = ratios[name]
    emit(kind='ab_step', variant=name, size=f'{batch}x{steps}', rounds=len(ts),
         median_ms=1e3 * statistics.median(ts), min_ms=1e3 * min(ts),
         ratio_vs_current=median, ratio_p25=q25, ratio_p75=q75,
         compile_s=runners[name].compile_s, last_loss=losses[name],
         malloc=os.environ.get('GLIBC_TUNABLES', '(unset)'))


def print_table(records, file=None):
  file = file or sys.stdout
  print(f"\n{'size':>8} {'variant':>28} {'median ms':>10} {'x current':>10} "
        f"{'p25-p75':>13} {'compile s':>10} {'last loss':>10}", file=file)
  for r in records:
    if r.get('kind') == 'ab_step':
      print(f"{r['size']:>8} {r['variant'][-28:]:>28} {r['median_ms']:10.1f} "
            f"{r['ratio_vs_current']:10.3f} {r['ratio_p25']:6.3f}-{r['ratio_p75']:.3f} "
            f"{r['compile_s']:10.1f} {r['last_loss']:10.5f}", file=file)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  maybe_reexec_with_tuned_malloc(args, argv, module='bench.ab_step')
  import jax  # pylint: disable=g-import-not-at-top
  from bach_jax.models import layers  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as workdir:
    stacks = {CURRENT: layers.LSTMStack}
    for spec in args.variant:
      try:
        stacks[spec] = load_variant(spec, workdir)
      except VariantError as e:
        sys.exit(f'bench.ab_step: variant {e}')
  torch_device, why = (None, '') if not args.torch else _torch_device(jax.default_backend())
  if args.torch and torch_device is None:
    print(f'bench.ab_step: torch skipped: {why}', file=sys.stderr)
  emit = Emitter(args.out)
  for size in args.sizes.split(','):
    try:
      batch, steps = (int(v) for v in size.lower().split('x'))
    except ValueError:
      sys.exit(f'bench.ab_step: --sizes: {size!r} is not BATCHxSTEPS')
    bench_size(args, emit, stacks, batch, steps, torch_device)
  print_table(emit.records)


if __name__ == '__main__':
  main()
