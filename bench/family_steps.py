"""Every model family's training step at the paper's size, side by side with the LSTM's.

Each family of the registry (bach_jax/models/__init__.py) is built from configs/<name>.py
and timed as the trainer runs it: train.make_train_step(family, config, mesh) (jit, state
replicated and donated, batch sharded on 'data'), the state from family.init under jit,
a synthetic batch with the pipeline's keys (roll bool[B, W, 88], voices int32[B, W, 4]
with REST -1, mask bool[B], start bool[B, W], frame_mask bool[B, W]); num_voices=-1 is
resolved by the family's check_corpus on a 4-voice corpus, as on the embedded chorales.
After compiling and a warm-up, every round runs each step once, in an order shuffled per
round, beside the LSTM baseline (configs/lstm.py, hidden 512, 64x32).

Sizes are BATCHxSTEPS: STEPS target frames in windows of STEPS + 1 (the start / previous
frame first, as every config's data.window_steps). ms/frame = median step time / (batch x
STEPS); "x lstm/frame" = median and quartiles of the per-round ratios of ms/frame to the
LSTM's in the same round (which cancels most of a shared machine's drift). GFLOP/step:
the dots and convolutions of the compiled step's HLO, loop bodies times their trip counts
(hlo_flops); XLA's cost analysis ['flops'] (also reported) counts a lax.scan's body once,
missing most of a recurrent step. % peak: against the best float32 2048^3 matmul rate
(bench.train_step.matmul_peak), measured at the start and again at the end of the run.

  python -m bench.family_steps                        # all families, paper sizes, 10 rounds
  python -m bench.family_steps --families lstm,vae --rounds 5 --out steps.jsonl
  python -m bench.family_steps --sizes vae=64x32      # another size for a family
  python -m bench.family_steps --families vae --variants 'vae:output=bernoulli'
                                   # also the family with config.model keys changed
  python -m bench.family_steps --quick                # the configs' :test sizes, batch 4

Output: one JSON line per measurement (stdout, or --out FILE), then a markdown table;
progress on stderr.
"""

import argparse
import collections
import functools
import math
import os
import re
import statistics
import sys
import time
import types

if __package__ in (None, ''):  # Run as `python bench/family_steps.py`.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top

from bench.implementations import (  # pylint: disable=g-import-not-at-top
    JaxRunner, load_config_module, ratio_quartiles, run_rounds)
from bench.profile_step import (  # pylint: disable=g-import-not-at-top
    COMPUTATION, INSTRUCTION, OPERAND, parse_dims)
from bench.train_step import (  # pylint: disable=g-import-not-at-top
    Emitter, time_summary, environment, matmul_peak)

BASELINE = 'lstm'
NUM_VOICES = 4  # The embedded chorales' S, A, T, B: what check_corpus resolves -1 to.
HIDDEN = 512
# The paper's shapes: family -> (batch, target steps, config.model overrides).
PAPER_SIZES = {
    'lstm': (64, 32, {'hidden_size': HIDDEN}),
    'lstm_attn': (64, 32, {'hidden_size': HIDDEN}),
    'vae': (64, 64, {'encoder_hidden': HIDDEN, 'conductor_hidden': HIDDEN,
                     'decoder_hidden': HIDDEN, 'latent_dim': 128, 'segment_steps': 64,
                     'decoder': 'hierarchical'}),
    'vqvae': (64, 256, {'encoder_hidden': HIDDEN, 'decoder_hidden': HIDDEN,
                        'codebook_size': 64, 'pattern_steps': 4, 'segment_steps': 256}),
    # Over the codes of the 'vqvae' entry's model (CAPABILITIES.builds_on).
    'vqvae_prior': (64, 256, {'prior_hidden': HIDDEN}),
    'gan': (64, 64, {'generator_hidden': HIDDEN, 'n_critic': 5}),
}
DEFAULT_SIZE = (64, 64)  # A family without an entry: its config, every *_hidden at 512.
QUICK_BATCH = 4  # --quick: the configs' ':test' variants at this batch.
TARGETS = {'vae': 2.0}  # Most x lstm/frame the issues allow.


def parse_args(argv=None):
  from bach_jax import models  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--families', default=','.join(models.REGISTRY),
                 help=f"Comma-separated (default all: {','.join(models.REGISTRY)}); "
                 f'{BASELINE} is always run, as the baseline.')
  p.add_argument('--sizes', default='',
                 help='Comma-separated FAMILY=BATCHxSTEPS overriding the paper sizes.')
  p.add_argument('--variants', default='',
                 help='Comma-separated FAMILY:KEY=VALUE[;KEY=VALUE] runs of a family with '
                 'config.model keys changed on top of its paper size (e.g. '
                 'vae:output=bernoulli), timed beside the others under that label.')
  p.add_argument('--rounds', type=int, default=None, help='Timed rounds (default 10; --quick 2).')
  p.add_argument('--warmup', type=int, default=None,
                 help='Untimed steps of each after compiling (default 2; --quick 1).')
  p.add_argument('--out', default=None, help='Write the JSON lines here instead of stdout.')
  p.add_argument('--quick', action='store_true',
                 help=f"Tiny sizes (the configs' :test variants, batch {QUICK_BATCH}), "
                 '2 rounds: a smoke run.')
  args = p.parse_args(argv)
  names = [n for n in args.families.split(',') if n]
  unknown = [n for n in names if n not in models.REGISTRY]
  if unknown:
    p.error(f"--families: unknown {', '.join(unknown)} (known: {', '.join(models.REGISTRY)})")
  args.families = [BASELINE] + [n for n in dict.fromkeys(names) if n != BASELINE]
  args.variants = _parse_variants(p, args.variants, models.REGISTRY)
  sizes, args.sizes = args.sizes, {}
  for item in filter(None, sizes.split(',')):
    name, _, size = item.partition('=')
    b, _, t = size.lower().partition('x')
    if name not in models.REGISTRY or not (b.isdigit() and t.isdigit()) or int(b) * int(t) == 0:
      p.error(f'--sizes: {item!r} is not FAMILY=BATCHxSTEPS (a known family, sizes >= 1)')
    args.sizes[name] = (int(b), int(t))
  args.rounds = args.rounds if args.rounds is not None else (2 if args.quick else 10)
  args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
  if args.rounds < 1 or args.warmup < 0:
    p.error('--rounds must be >= 1 and --warmup >= 0')
  args.dtype = 'float32'  # For bench.train_step.environment: the configs' matmul dtype.
  return args


def _parse_variants(parser, text, registry):
  """'vae:output=bernoulli;decoder_layers=1,...' -> {label: (family, {key: value})}; values
  are parsed as Python literals where they are one (1, 0.5, True), else kept as strings."""
  import ast  # pylint: disable=g-import-not-at-top
  variants = {}
  for item in filter(None, text.split(',')):
    name, _, assignments = item.partition(':')
    pairs = [a.partition('=') for a in assignments.split(';') if a]
    if name not in registry or not pairs or any(not k or not e for k, e, _ in pairs):
      parser.error(f'--variants: {item!r} is not FAMILY:KEY=VALUE[;KEY=VALUE] '
                   f"(known families: {', '.join(registry)})")
    values = {}
    for key, _, value in pairs:
      try:
        values[key] = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        values[key] = value
    variants[item] = (name, values)
  return variants


# ------------------------------------------------------------------------------ setup


def make_batch(batch, window, seed=0):
  """A trainer batch: four voices (random walks around S, A, T, B registers, some rests),
  their roll, a start frame, every row and frame real."""
  rng = np.random.default_rng(seed)
  centers = np.array([72, 65, 57, 48])  # MIDI pitches of S, A, T, B.
  walk = np.cumsum(rng.integers(-1, 2, (batch, window, NUM_VOICES)), axis=1)
  pitch = centers + np.clip(walk, -3, 3)
  voices = np.where(rng.random(pitch.shape) < 0.1, -1, pitch).astype(np.int32)
  voices[:, 0] = -1  # The start frame is silent (data.pad_start).
  roll = np.zeros((batch, window, 88), bool)
  b, t, v = np.nonzero(voices >= 0)
  roll[b, t, voices[b, t, v] - 21] = True
  start = np.zeros((batch, window), bool)
  start[:, 0] = True
  return {'roll': roll, 'voices': voices, 'mask': np.ones((batch,), bool), 'start': start,
          'frame_mask': np.ones((batch, window), bool)}


def _fake_corpus(batch):
  """What check_corpus reads of a corpus: the embedded chorales' voices, these pieces."""
  pieces = [types.SimpleNamespace(roll=r[1:], voices=v[1:], meta={})
            for r, v in zip(batch['roll'], batch['voices'])]
  return types.SimpleNamespace(num_voices=NUM_VOICES, splits={'train': pieces},
                               steps_per_quarter=4)


def family_config(name, args, extra=None):
  """-> (config, batch size, target steps, {model key: value set}) of a family's step;
  extra: more config.model keys to set (a --variants run)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from bach_jax import models  # pylint: disable=g-import-not-at-top
  module = load_config_module(name)
  if module is None:
    raise FileNotFoundError(f'configs/{name}.py not found')
  if args.quick:
    config = module.get_config('test')
    batch, steps, overrides = QUICK_BATCH, config.data.window_steps - 1, {}
  else:
    config = module.get_config()
    batch, steps, overrides = PAPER_SIZES.get(name, DEFAULT_SIZE + ({},))
    if name not in PAPER_SIZES:
      overrides = {k: HIDDEN for k in config.model
                   if k == 'hidden_size' or k.endswith('_hidden')}
  batch, steps = args.sizes.get(name, (batch, steps))
  overrides = {**overrides, **(extra or {})}
  for key, value in overrides.items():
    if key not in config.model:
      raise KeyError(f'configs/{name}.py has no config.model.{key}')
    config.model[key] = value
  base = models.get_family(name).CAPABILITIES.builds_on
  into = config.train.init_from_into
  if base and into:  # What experiment.resolve copies in from the base run.
    base_config, _, _, _ = family_config(base, args)
    config.model[into] = ml_collections.ConfigDict(base_config.model.to_dict())
  config.train.batch_size = batch
  config.data.window_steps = steps + 1
  return config, batch, steps, overrides


def build_runner(name, args, mesh, label=None, extra=None):
  """-> (runner for run_rounds, its record fields) of one family's trainer step (label and
  extra: a --variants run's name and config.model keys)."""
  import jax  # pylint: disable=g-import-not-at-top
  from bach_jax import config_base, experiment, models, parallel, train  # pylint: disable=g-import-not-at-top
  config, batch_size, steps, overrides = family_config(name, args, extra)
  family = models.get_family(name)
  batch = make_batch(batch_size, steps + 1)
  config_base.validate(config, jax.device_count())
  family.validate(config)
  family.check_corpus(config, _fake_corpus(batch))
  t0 = time.perf_counter()
  state = jax.jit(functools.partial(family.init, config),
                  out_shardings=parallel.replicated(mesh))(
                      jax.random.key(config.seed), experiment.example_batch(config, NUM_VOICES))
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0
  n_params = int(sum(x.size for x in jax.tree.leaves(state.params)))
  runner = JaxRunner(train.make_train_step(family, config, mesh), state,
                      (parallel.to_global(batch, mesh), jax.random.key(1)),
                      f'configs/{name}.py' + (':test' if args.quick else ''))
  record = dict(family=label or name, config=runner.source, size=f'{batch_size}x{steps}',
                batch=batch_size, steps=steps, window=steps + 1, frames=batch_size * steps,
                overrides=overrides, num_voices=next(  # Its own, or its base model's.
                    (m.num_voices for m in [config.model, *config.model.values()]
                     if hasattr(m, 'keys') and 'num_voices' in m), None),
                params=n_params, init_s=init_s, compile_s=runner.compile_s,
                **_flops(runner.compiled))
  return runner, record


def _flops(compiled):
  """{'gflop': hlo_flops of the step (or 'flops_unavailable'), 'gflop_cost_analysis': XLA's
  cost analysis ['flops'], which counts a loop's body once (or 'cost_analysis_unavailable')}."""
  out = {'gflop': None, 'gflop_cost_analysis': None}
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    out['gflop_cost_analysis'] = float(cost['flops']) / 1e9
  except Exception as e:  # pylint: disable=broad-except
    out['cost_analysis_unavailable'] = f'{type(e).__name__}: {e}'
  try:
    flops, out['loops_without_trip_count'] = hlo_flops(compiled.as_text())
    out['gflop'] = flops / 1e9 if flops > 0 else None
    if not flops > 0:
      out['flops_unavailable'] = 'no dot or convolution in the optimized HLO'
  except Exception as e:  # pylint: disable=broad-except
    out['flops_unavailable'] = f'{type(e).__name__}: {e}'
  return out


_CALLS = re.compile(r'(calls|to_apply|body|condition|branch_computations|true_computation|'
                    r'false_computation)=\{?%([^,}\s]+(?:, %[^,}\s]+)*)')
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def hlo_flops(hlo_text):
  """-> (FLOPs of the dots and convolutions of one run of an optimized HLO module, each
  loop body counted as often as its known trip count, the number of loops without one)."""
  shapes, own, callees, unknown, comp = {}, collections.Counter(), {}, [0], None
  for line in hlo_text.splitlines():
    m = COMPUTATION.match(line)
    if m and not line.startswith(' '):
      comp = m.group(1)
      callees[comp] = []
      continue
    m = INSTRUCTION.match(line)
    if m:
      name, dims, opcode, rest = m.group(1), parse_dims(m.group(2)), m.group(3), m.group(4)
      shapes[name] = dims
      operands = OPERAND.findall(rest.split('),')[0])
      if opcode == 'dot':
        k = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', rest)
        own[comp] += 2.0 * math.prod(dims) * math.prod(
            shapes[operands[0]][i] for i in parse_dims(k.group(1) if k else ''))
      elif opcode == 'convolution':  # 2 x outputs x kernel window x input features.
        labels = re.search(r'dim_labels=\w+_(\w+)->', rest).group(1)
        own[comp] += 2.0 * math.prod(dims) * math.prod(
            n for n, c in zip(shapes[operands[1]], labels) if c.isdigit() or c == 'i')
    for kind, names in _CALLS.findall(line):
      trips = _TRIPS.search(line) if kind == 'body' else None
      unknown[0] += kind == 'body' and trips is None
      callees[comp].append((int(trips.group(1)) if trips else 1,
                            [n.strip().lstrip('%') for n in names.split(',')],
                            kind == 'branch_computations'))

  @functools.lru_cache(maxsize=None)
  def total(c):  # Of a conditional's branches, the costliest.
    calls = [(t, [total(b) for b in bs], alt) for t, bs, alt in callees.get(c, ())]
    return own[c] + sum(t * (max(fs) if alt else sum(fs)) for t, fs, alt in calls)

  return total(re.search(r'^ENTRY %(\S+) ', hlo_text, re.M).group(1)), unknown[0]


# ------------------------------------------------------------------------------- runs


def bench_families(args, emit, peak):
  from bach_jax import parallel  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh()
  runners, records = {}, {}
  runs = {**{n: (n, None) for n in args.families}, **args.variants}
  for name, (family, extra) in runs.items():
    print(f'bench.family_steps: building {name}', file=sys.stderr, flush=True)
    try:
      runners[name], records[name] = build_runner(family, args, mesh, name, extra)
    except Exception as e:  # pylint: disable=broad-except
      if name == BASELINE:
        raise
      emit(kind='family_step', family=name, skipped=f'{type(e).__name__}: {e}')
      continue
    for _ in range(args.warmup):
      runners[name].step()
  print(f'bench.family_steps: {args.rounds} rounds of {", ".join(runners)}', file=sys.stderr,
        flush=True)
  times, cpu_times, losses = run_rounds(runners, args.rounds)
  ratios = ratio_quartiles(times, BASELINE)
  base_frames = records[BASELINE]['frames']
  for name, r in records.items():
    s = time_summary(times[name])
    # Per-frame ratio = time ratio x (baseline frames / these frames), round by round.
    scale = base_frames / r['frames']
    median, q25, q75 = (scale * x for x in ratios[name])
    r.update(kind='family_step', **s, ms_per_frame=s['median_ms'] / r['frames'],
             ratio_per_frame=median, ratio_p25=q25, ratio_p75=q75,
             ratio_of_medians_per_frame=(s['median_ms'] / r['frames']) / (
                 statistics.median(times[BASELINE]) * 1e3 / base_frames),
             cpu_median_ms=1e3 * statistics.median(cpu_times[name]), last_loss=losses[name],
             loadavg_end=list(os.getloadavg()))
    if r['gflop'] is not None:
      r['gflops'] = r['gflop'] / (s['median_ms'] / 1e3)
      r['pct_peak'] = 100 * r['gflops'] / peak
    family = runs[name][0]
    if family in TARGETS and not args.quick and family not in args.sizes:  # At the paper size.
      r.update(target_ratio=TARGETS[family], meets_target=median <= TARGETS[family])
    emit(**r)


def _fmt(r, spec, *keys):
  return '-'.join('n/a' if r.get(k) is None else format(r[k], spec) for k in keys)


def print_table(records, file=None):
  """The measurements as a markdown table, then the peak, the load and notes."""
  file = file or sys.stdout
  env = next(r for r in records if r['kind'] == 'env')
  peaks = ', '.join(f"{r['gflops_best']:.0f}" for r in records if r['kind'] == 'matmul_peak')
  header = ('family', 'size (BxT)', 'median ms', 'p25-p75 ms', 'ms/frame', 'x lstm/frame',
            'p25-p75', 'GFLOP/step', 'GFLOP/s', '% peak', 'XLA cost GFLOP', 'compile s')
  print('\n| ' + ' | '.join(header) + ' |\n|' + '|'.join(
      '---' if i < 2 else '---:' for i in range(len(header))) + '|', file=file)
  notes, rounds = [], 0
  for r in (r for r in records if r['kind'] == 'family_step'):
    if 'skipped' in r:
      print(f"| {r['family']} | skipped: {r['skipped']} |" + ' |' * (len(header) - 2), file=file)
      continue
    rounds = r['n']
    row = (r['family'], r['size'], _fmt(r, '.1f', 'median_ms'), _fmt(r, '.1f', 'p25_ms', 'p75_ms'),
           _fmt(r, '.4f', 'ms_per_frame'), _fmt(r, '.2f', 'ratio_per_frame'),
           _fmt(r, '.2f', 'ratio_p25', 'ratio_p75'), _fmt(r, '.3g', 'gflop'),
           _fmt(r, '.1f', 'gflops'), _fmt(r, '.1f', 'pct_peak'),
           _fmt(r, '.3g', 'gflop_cost_analysis'), _fmt(r, '.1f', 'compile_s'))
    print('| ' + ' | '.join(row) + ' |', file=file)
    if 'target_ratio' in r:
      notes.append(f"{r['family']}: x lstm/frame {_fmt(r, '.2f', 'ratio_per_frame')} "
                   f"({_fmt(r, '.2f', 'ratio_p25', 'ratio_p75')}) against a target of <= "
                   f"{r['target_ratio']:.1f}: {'met' if r['meets_target'] else 'NOT met'}")
    for key in ('flops_unavailable', 'cost_analysis_unavailable'):
      if key in r:
        notes.append(f"{r['family']}: {key.replace('_', ' ')} ({r[key]})")
    if r.get('loops_without_trip_count'):
      notes.append(f"{r['family']}: {r['loops_without_trip_count']} loops of unknown trip "
                   'count, counted once (its GFLOP/step is a lower bound)')
  print(f"\n{rounds} rounds; backend {env['backend']} ({env['cpu']}, {env['threads']} "
        f"threads); float32 2048^3 matmul peak (start, end): {peaks} GFLOP/s (% peak uses "
        f"the start); load average {env['loadavg_start'][0]:.1f} at the start. GFLOP/step: "
        "dots and convolutions, loops x trip counts; XLA's cost analysis counts a loop's "
        "body once.", file=file)
  for note in notes:
    print(note, file=file)


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  emit = Emitter(args.out)
  emit(**environment(args))
  repeats = 2 if args.quick else 10
  best, median = matmul_peak(repeats)
  emit(kind='matmul_peak', n=2048, dtype='float32', gflops_best=best, gflops_median=median)
  bench_families(args, emit, best)
  best, median = matmul_peak(repeats)  # Again at the end: the peak drifts too.
  emit(kind='matmul_peak', n=2048, dtype='float32', gflops_best=best, gflops_median=median)
  print_table(emit.records)
  if emit.file is not sys.stdout:
    emit.file.close()
  return emit.records


if __name__ == '__main__':
  main()
