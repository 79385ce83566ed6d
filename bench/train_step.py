"""One LSTM training step, side by side: bach_jax vs flax nn.RNN vs torch.nn.LSTM.

The paper's baseline: piano-roll batches float32[B, T, 88], a 2-layer LSTM with
512 units, a dense layer to 88 logits, sigmoid BCE summed over the keys and
averaged over batch and time, Adam. Each implementation runs one full training
step (forward, backward, optimizer update); after a warm-up every round runs
each implementation once, in an order shuffled per round, so that drift of the
machine hits all alike. "x torch" is the median over the rounds of each round's
ratio to torch's step, with its quartiles (the ratio of the medians is in the JSON
as ratio_of_medians): quartiles that straddle 1.0 mean "level". The row
'matmuls' runs only the matmuls of bach_jax's step (implementations.make_matmul_floor):
its floor, the time left if every other op were free.

  python -m bench.train_step                 # 64x32 and 128x128, 20 steps each
  python -m bench.train_step --quick         # smoke run: 64x32, 3 steps
  python -m bench.train_step --malloc=tuned  # re-runs itself under GLIBC_TUNABLES

Output: one JSON line per measurement (stdout, or --out FILE), then a table.

FLOPs are counted as 3x the forward matmuls (backward = 2x forward) of the two
LSTM layers and the dense layer: per frame 2*4H*(D+H) + 2*4H*(2H) + 2*H*88.
This counts the input gradient of the first layer, which no implementation
computes (about 1.8% over). Elementwise work is not counted.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

if __package__ in (None, ''):  # Run as `python bench/train_step.py`.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top

from bench.implementations import (  # pylint: disable=g-import-not-at-top
    HIDDEN, NUM_KEYS, NUM_LAYERS, REPO_ROOT, _TorchRunner, _jax_num_threads,
    load_config_module, _torch_device, make_bach_jax_step, make_flax_step, make_matmul_floor,
    make_rolls, ratio_quartiles, run_rounds)

IMPLS = ('bach_jax', 'flax', 'torch', 'matmuls')

# What the notes in shared/notes/lstm-cpu-probe.md found to remove most page faults.
TUNED_MALLOC = ('glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:'
                'glibc.malloc.trim_threshold=68719476736')


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--sizes', default=None,
                 help='Comma-separated BATCHxSTEPS (default 64x32,128x128; --quick: 64x32).')
  p.add_argument('--steps', type=int, default=None,
                 help='Timed steps per implementation and size (default 20; --quick: 3).')
  p.add_argument('--warmup', type=int, default=None,
                 help='Untimed steps per implementation after compiling (default 3; --quick: 1).')
  p.add_argument('--impls', default=','.join(IMPLS),
                 help=f"Comma-separated subset of {','.join(IMPLS)} ('matmuls': only the "
                 "matmuls of bach_jax's step, its floor).")
  p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'],
                 help='Matmul input dtype of the JAX LSTMs (float32 accumulation).')
  p.add_argument('--quick', action='store_true', help='Few steps, one size: a smoke run.')
  p.add_argument('--out', default=None, help='Write the JSON lines here instead of stdout.')
  p.add_argument('--malloc', default='asis', choices=['asis', 'tuned'],
                 help="'tuned': re-execute under GLIBC_TUNABLES=" + TUNED_MALLOC)
  p.add_argument('--skip', default=None,
                 help="Comma-separated extra measurements to skip: 'data', 'sampling' "
                 "(default none; --quick: 'data', which takes minutes on a fresh cache).")
  args = p.parse_args(argv)
  unknown = set(args.impls.split(',')) - set(IMPLS)
  if unknown:
    p.error(f"--impls: unknown {', '.join(sorted(unknown))} (known: {', '.join(IMPLS)})")
  args.sizes = args.sizes or ('64x32' if args.quick else '64x32,128x128')
  args.steps = args.steps or (3 if args.quick else 20)
  args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
  if args.skip is None:
    args.skip = 'data' if args.quick else ''
  return args


def maybe_reexec_with_tuned_malloc(args, argv, module='bench.train_step'):
  """glibc reads GLIBC_TUNABLES at process start, so the setting needs a new process."""
  if args.malloc == 'tuned' and os.environ.get('GLIBC_TUNABLES') != TUNED_MALLOC:
    env = dict(os.environ, GLIBC_TUNABLES=TUNED_MALLOC)
    os.execve(sys.executable, [sys.executable, '-m', module] + argv,
              dict(env, PYTHONPATH=os.pathsep.join(
                  [REPO_ROOT] + [p for p in [env.get('PYTHONPATH')] if p])))


def forward_flops(batch, steps, hidden=HIDDEN, num_layers=NUM_LAYERS, keys=NUM_KEYS):
  """Matmul FLOPs of one forward pass (multiply-add = 2)."""
  per_frame = 0
  d = keys
  for _ in range(num_layers):
    per_frame += 2 * 4 * hidden * (d + hidden)
    d = hidden
  per_frame += 2 * hidden * keys
  return per_frame * batch * steps


def step_flops(batch, steps):
  return 3 * forward_flops(batch, steps)


# --------------------------------------------------------------------------- runs


class Emitter:
  """Writes JSON lines to stdout or a file; keeps the records for the table."""

  def __init__(self, path):
    self.file = open(path, 'a') if path else sys.stdout
    self.records = []

  def __call__(self, **record):
    self.records.append(record)
    self.file.write(json.dumps(record) + '\n')
    self.file.flush()


def environment(args):
  import jax  # pylint: disable=g-import-not-at-top
  import flax  # pylint: disable=g-import-not-at-top
  env = {
      'kind': 'env', 'python': platform.python_version(), 'jax': jax.__version__,
      'flax': flax.__version__, 'backend': jax.default_backend(),
      'devices': [str(d) for d in jax.devices()], 'device_count': jax.device_count(),
      'cpu': _cpu_model(), 'threads': _jax_num_threads(),
      'glibc_tunables': os.environ.get('GLIBC_TUNABLES', ''),
      'xla_flags': os.environ.get('XLA_FLAGS', ''), 'dtype': args.dtype,
      'loadavg_start': list(os.getloadavg()),
  }
  try:
    import torch  # pylint: disable=g-import-not-at-top
    env['torch'] = torch.__version__
    env['torch_threads'] = torch.get_num_threads()
  except ImportError:
    env['torch'] = None
  return env


def _cpu_model():
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def matmul_peak(repeats):
  """Best float32 GFLOP/s of a 2048^3 matmul in jax (the 'peak' we compare to)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  n = 2048
  a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(2), (n, n), jnp.float32)
  mm = jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.DEFAULT))
  mm(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    mm(a, b).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * n ** 3 / min(times) / 1e9, 2 * n ** 3 / statistics.median(times) / 1e9


def time_summary(times):
  ts = sorted(times)
  q = np.percentile(ts, [25, 75])
  return {'median_ms': 1e3 * statistics.median(ts), 'min_ms': 1e3 * ts[0],
          'max_ms': 1e3 * ts[-1], 'p25_ms': 1e3 * q[0], 'p75_ms': 1e3 * q[1], 'n': len(ts)}


def bench_size(args, emit, batch, steps, peak, torch_device):
  roll = make_rolls(batch, steps)
  runners = {}
  makers = {'bach_jax': lambda: make_bach_jax_step(roll, args.dtype),
            'flax': lambda: make_flax_step(roll, args.dtype),
            'torch': lambda: _TorchRunner(roll, torch_device),
            'matmuls': lambda: make_matmul_floor(roll, args.dtype)}
  for name in args.impls.split(','):
    if name == 'torch' and torch_device is None:
      emit(kind='train_step', impl='torch', size=f'{batch}x{steps}', skipped=_TORCH_WHY[0])
      continue
    runners[name] = makers[name]()
    for _ in range(args.warmup + (1 if name == 'torch' else 0)):
      runners[name].step()
  times, cpu_times, losses = run_rounds(runners, args.steps)
  flops = step_flops(batch, steps)
  results = {}
  for name, runner in runners.items():
    s = time_summary(times[name])
    gflops = flops / (s['median_ms'] / 1e3) / 1e9
    results[name] = dict(kind='train_step', impl=name, source=runner.source,
                         size=f'{batch}x{steps}', batch=batch, steps=steps, **s,
                         compile_s=runner.compile_s, gflop=flops / 1e9, gflops=gflops,
                         pct_peak=100 * gflops / peak, last_loss=losses[name],
                         # Process CPU seconds (all threads) per step: less sensitive than
                         # wall time to other processes on the machine, but it counts
                         # OpenMP spin-waiting (torch) as work.
                         cpu_median_ms=1e3 * statistics.median(cpu_times[name]))
  ratios = ratio_quartiles(times, 'torch') if 'torch' in results else {}
  for name, r in results.items():
    if ratios:
      # The median of the per-round ratios (each round runs every implementation once),
      # with its quartiles: the figure to compare. The ratio of the medians is kept too.
      median, q25, q75 = ratios[name]
      r.update(ratio_vs_torch=median, ratio_p25=q25, ratio_p75=q75,
               ratio_of_medians=r['median_ms'] / results['torch']['median_ms'])
    if name == 'bach_jax' and 'matmuls' in results:
      # How far the step is above its matmul floor, per round like the ratios to torch.
      median, q25, q75 = ratio_quartiles(times, 'matmuls')['bach_jax']
      r.update(ratio_vs_matmuls=median, ratio_vs_matmuls_p25=q25, ratio_vs_matmuls_p75=q75)
    r['loadavg_end'] = list(os.getloadavg())
    emit(**r)


_TORCH_WHY = ['']


def bench_data_prep(emit):
  try:
    from bach_jax.data import corpora  # pylint: disable=g-import-not-at-top
    config_mod = load_config_module('lstm')
  except ImportError as e:
    emit(kind='data_prep', skipped=f'ImportError: {e}')
    return
  if config_mod is None:
    emit(kind='data_prep', skipped='configs/lstm.py not found')
    return
  config = config_mod.get_config()
  with tempfile.TemporaryDirectory() as cache_dir:
    config.data.cache_dir = cache_dir
    try:
      t0 = time.perf_counter()
      corpus = corpora.load_corpus(config.data, progress=False)
      seconds = time.perf_counter() - t0
    except Exception as e:  # pylint: disable=broad-except
      emit(kind='data_prep', skipped=f'{type(e).__name__}: {e}')
      return
  pieces = {k: len(v) for k, v in getattr(corpus, 'splits', {}).items()}
  emit(kind='data_prep', source=config.data.source, seconds=seconds, pieces=pieces,
       workers=config.data.workers)


def bench_sampling(emit, quick):
  """Frames per second of configs/lstm_attn.py's sampler (random init, jitted)."""
  config_mod = load_config_module('lstm_attn')
  if config_mod is None:
    emit(kind='sampling', skipped='configs/lstm_attn.py not found')
    return
  try:
    import jax  # pylint: disable=g-import-not-at-top
    from bach_jax import experiment, generate, models  # pylint: disable=g-import-not-at-top
    config = config_mod.get_config()
    if config.model.get('num_voices', 0) == -1:
      config.model.num_voices = 4  # What check_corpus sets for the chorales.
    num_voices = config.model.get('num_voices', 0) or None
    family = models.get_family(config.model.name)
    state = family.init(config, jax.random.key(0), experiment.example_batch(config, num_voices))
    num_steps = 32 if quick else config.sample.num_steps
    request = generate.make_request(config, num_steps=num_steps, num_voices=num_voices)
    t0 = time.perf_counter()
    generate.sample(family, config, state.params, jax.random.key(1), request)
    first_s = time.perf_counter() - t0
    times = []
    for i in range(2 if quick else 5):
      t0 = time.perf_counter()
      generate.sample(family, config, state.params, jax.random.key(2 + i), request)
      times.append(time.perf_counter() - t0)
  except Exception as e:  # pylint: disable=broad-except
    emit(kind='sampling', skipped=f'{type(e).__name__}: {e}')
    return
  frames = request.num_pieces * request.num_steps
  emit(kind='sampling', config='configs/lstm_attn.py', pieces=request.num_pieces,
       steps=request.num_steps, first_call_s=first_s, median_s=statistics.median(times),
       frames_per_s=frames / statistics.median(times))


def print_table(records, file=None):
  file = file or sys.stdout
  env = next(r for r in records if r['kind'] == 'env')
  peaks = [r for r in records if r['kind'] == 'matmul_peak']
  peak_text = ', '.join(f"{r['gflops_best']:.0f}" for r in peaks)
  print(f"\nbackend {env['backend']} ({env['cpu']}), {env['threads']} threads, "
        f"dtype {env['dtype']}, GLIBC_TUNABLES={env['glibc_tunables'] or '(unset)'}\n"
        f"float32 2048^3 matmul peak (start, end): "
        f"{peak_text} GFLOP/s; "
        f"% peak uses the start value", file=file)
  header = ('size', 'impl', 'median ms', 'min-max ms', 'IQR ms', 'x torch', 'p25-p75',
            'GFLOP/s', '% peak', 'compile s')
  rows = []
  for r in records:
    if r['kind'] != 'train_step':
      continue
    if 'skipped' in r:
      rows.append((r['size'], r['impl'], 'skipped: ' + r['skipped']) + ('',) * 7)
      continue
    rows.append((r['size'], r['impl'], f"{r['median_ms']:.1f}",
                 f"{r['min_ms']:.1f}-{r['max_ms']:.1f}", f"{r['p25_ms']:.1f}-{r['p75_ms']:.1f}",
                 f"{r['ratio_vs_torch']:.3f}" if 'ratio_vs_torch' in r else '-',
                 f"{r['ratio_p25']:.3f}-{r['ratio_p75']:.3f}" if 'ratio_p25' in r else '-',
                 f"{r['gflops']:.1f}", f"{r['pct_peak']:.0f}", f"{r['compile_s']:.1f}"))
  widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
  for row in [header] + rows:
    print('  '.join(str(x).rjust(w) for x, w in zip(row, widths)), file=file)
  for r in records:
    if 'ratio_vs_matmuls' in r:
      print(f"{r['size']}: bach_jax x its matmuls alone {r['ratio_vs_matmuls']:.3f} "
            f"({r['ratio_vs_matmuls_p25']:.3f}-{r['ratio_vs_matmuls_p75']:.3f})", file=file)
  for r in records:
    if r['kind'] in ('data_prep', 'sampling'):
      if 'skipped' in r:
        print(f"{r['kind']}: skipped ({r['skipped']})", file=file)
      elif r['kind'] == 'data_prep':
        print(f"data_prep: {r['seconds']:.1f} s ({r['source']}, fresh cache)", file=file)
      else:
        print(f"sampling: {r['frames_per_s']:.0f} frames/s ({r['pieces']} pieces x "
              f"{r['steps']} steps, {r['config']})", file=file)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  maybe_reexec_with_tuned_malloc(args, argv)
  import jax  # pylint: disable=g-import-not-at-top

  emit = Emitter(args.out)
  emit(**environment(args))
  torch_device, why = _torch_device(jax.default_backend())
  _TORCH_WHY[0] = why
  repeats = 3 if args.quick else 10
  best, median = matmul_peak(repeats)
  emit(kind='matmul_peak', n=2048, dtype='float32', gflops_best=best, gflops_median=median)
  for size in args.sizes.split(','):
    batch, steps = (int(v) for v in size.lower().split('x'))
    bench_size(args, emit, batch, steps, best, torch_device)
  best, median = matmul_peak(repeats)  # Again at the end: the peak may drift too.
  emit(kind='matmul_peak', n=2048, dtype='float32', gflops_best=best, gflops_median=median)
  skip = set(filter(None, args.skip.split(',')))
  if 'sampling' in skip:
    emit(kind='sampling', skipped='--skip')
  else:
    bench_sampling(emit, args.quick)
  if 'data' in skip:
    emit(kind='data_prep', skipped='--skip' + (' (default with --quick)' if args.quick else ''))
  else:
    bench_data_prep(emit)
  print_table(emit.records)


if __name__ == '__main__':
  main()
