"""Voice-leading rules at sampling time (models/rules.py): what they do to a trained run.

For each variant (rules off, soft penalties, hard rules) the run's best checkpoint
samples --num_pieces x --num_steps (one batch per seed, --temperature), and the
table gives, for the first seed, the voice-leading rates of the samples (per 100
occasions, pooled over the pieces, from the pieces' own voices:
voice_leading.voice_leading_counts), the comparison report's summary distance to
held-out Bach (metrics.compare against the test split cut to --num_steps frames, as
bach_jax.compare does; voices 'own' and 'roll'), the same mean |z| over the metrics
no rule forbids ('others': not the rates of voice_leading.RULES), the test split's
frame NLL under the same rules (exact under the constrained model for a finite
penalty; a hard rule gives a frame that breaks it probability 0, so none), the
fallbacks (sampled heads at which every pitch broke a rule) and the sampling time
of the whole batch after compiling. A second table gives every scalar metric's |z|
against Bach (the distance is their mean); with several --seeds, a third gives the
distances and the parallel fifths of every seed (the sampling noise).

  python -m bench.rules_table --workdir=RUN [--variants='off;all@1;all@3;all@10;all@inf;
      parallels@inf'] [--num_pieces=64] [--num_steps=256] [--seeds=0] [--out=table.md]

A variant is RULES@PENALTY (RULES: config.sample.rules, PENALTY: nats or inf) or 'off'.
Markdown on stdout (and --out), progress on stderr.
"""

import argparse
import functools
import os
import sys
import time

if __package__ in (None, ''):  # Run as `python bench/rules_table.py`.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import ml_collections  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from bach_jax import compare  # pylint: disable=g-import-not-at-top
from bach_jax import experiment  # pylint: disable=g-import-not-at-top
from bach_jax import generate  # pylint: disable=g-import-not-at-top
from bach_jax import loaded  # pylint: disable=g-import-not-at-top
from bach_jax import metrics  # pylint: disable=g-import-not-at-top
from bach_jax import pieces as pieces_lib  # pylint: disable=g-import-not-at-top
from bach_jax import voice_leading as vl  # pylint: disable=g-import-not-at-top
from bach_jax.models import rules as rules_lib  # pylint: disable=g-import-not-at-top

VARIANTS = 'off;all@1;all@3;all@10;all@inf;parallels@inf'
RATES = ('parallel_fifths', 'parallel_octaves', 'hidden_fifths', 'hidden_octaves',
         'voice_crossing', 'spacing', 'out_of_range')
SHORT = {'parallel_fifths': 'par. 5ths', 'parallel_octaves': 'par. 8ves',
         'hidden_fifths': 'hid. 5ths', 'hidden_octaves': 'hid. 8ves',
         'voice_crossing': 'crossing', 'spacing': 'spacing', 'out_of_range': 'range'}


def _log(msg):
  print(msg, file=sys.stderr, flush=True)


def parse_variant(text):
  """'off' or 'RULES@PENALTY' -> (rules, penalty) as config.sample takes them (checked)."""
  if text.strip() == 'off':
    return '', float('inf')
  names, _, penalty = text.partition('@')
  rules, penalty = names.strip(), float(penalty or 'inf')
  rules_lib.parse(rules, penalty)  # ConfigError naming the key.
  return rules, penalty


def label(rules, penalty):
  if not rules:
    return 'off'
  return f'{rules} {"hard" if np.isinf(penalty) else f"soft {penalty:g}"}'


def pooled_rates(voices, lengths):
  """Voice-leading rates per 100 occasions, pooled over the pieces: name -> float."""
  counts = vl.voice_leading_counts(voices, lengths)
  return {name: float(100.0 * counts[num].sum() / max(counts[den].sum(), 1))
          for name, (num, den) in vl.VOICE_LEADING_RATES.items()}


def compile_sampler(model, rules, penalty, num_pieces, num_steps, temperature):
  """The sampler of LoadedModel.sample(num_pieces, num_steps, rules=..., ...), compiled
  ahead of time so that sampling is timed alone.

  -> (sample(seed) -> (list of PianoRoll, seconds, fallbacks), compile seconds).
  """
  config = ml_collections.ConfigDict(model.config.to_dict())
  config.sample.rules, config.sample.rule_penalty = rules, float(penalty)
  config.sample.temperature = float(temperature)
  request = generate.make_request(config, num_pieces, num_steps, num_voices=model.num_voices)
  fn = jax.jit(functools.partial(model.family.sample, config))
  t0 = time.perf_counter()
  compiled = fn.lower(model.params, jax.random.key(0), request).compile()
  compile_seconds = time.perf_counter() - t0

  def sample(seed):
    t0 = time.perf_counter()
    out = jax.device_get(compiled(model.params, jax.random.key(seed), request))
    seconds = time.perf_counter() - t0
    fallbacks = int(np.sum(out.get('rule_fallbacks', 0)))
    return pieces_lib.to_pianorolls(out, model.steps_per_quarter), seconds, fallbacks

  return sample, compile_seconds


def measure_set(pieces, ref, spq):
  """Rates, distances and |z| of one set of samples against the reference metrics."""
  own = metrics.compare(metrics.set_metrics(pieces, spq, 'own'), ref['own'])
  roll = metrics.compare(metrics.set_metrics(pieces, spq, 'roll'), ref['roll'])
  _, lengths, voices = metrics.pad_pieces(pieces)
  z = {k: v['z'] for k, v in own['metrics'].items() if v and v['z'] is not None}
  ruled = {r for rates in vl.RULES.values() for r in rates}
  others = [v for k, v in z.items() if k not in ruled]
  return {'rates': pooled_rates(voices, lengths), 'distance_own': own['distance'],
          'distance_roll': roll['distance'], 'distance_others': float(np.mean(others)),
          'z': z}


def measure(workdir, variants=VARIANTS, num_pieces=64, num_steps=256, seeds=(0,),
            temperature=1.0, nll=True, cache_dir=''):
  """-> (rows: list of dicts, reference: dict), see the module docstring."""
  model = loaded.load_model(workdir)
  if cache_dir:
    model.config.data.cache_dir = cache_dir
  corpus = experiment.setup(model.config).corpus
  spq = corpus.steps_per_quarter
  reference = compare.reference_pieces(corpus, 'test', num_steps)
  valid = compare.reference_pieces(corpus, 'valid', num_steps)
  ref = {v: metrics.set_metrics(reference, spq, v) for v in ('own', 'roll')}
  _, lengths, voices = metrics.pad_pieces(reference)
  noise = measure_set(valid, ref, spq)
  bach = {'label': 'Bach (test split)', 'rates': pooled_rates(voices, lengths),
          'distance_own': noise['distance_own'], 'distance_roll': noise['distance_roll'],
          'distance_others': noise['distance_others'], 'pieces': len(reference),
          'note': 'distances: the valid split against the test split (the noise floor)'}
  rows = []
  for text in variants.split(';'):
    rules, penalty = parse_variant(text)
    name = label(rules, penalty)
    _log(f'{name}: compiling and sampling {num_pieces} x {num_steps}, seeds {seeds}...')
    sample, compile_seconds = compile_sampler(model, rules, penalty, num_pieces, num_steps,
                                              temperature)
    per_seed = []
    for seed in seeds:
      pieces, seconds, fallbacks = sample(seed)
      per_seed.append(dict(measure_set(pieces, ref, spq), seed=seed, fallbacks=fallbacks,
                           sample_seconds=seconds))
    row = dict(per_seed[0], label=name, rules=rules, penalty=penalty, per_seed=per_seed,
               compile_seconds=compile_seconds, test_frame_nll=None)
    if nll and not (rules and np.isinf(penalty)):
      t0 = time.perf_counter()
      row['test_frame_nll'] = float(model.score(corpus.splits['test'], rules=rules,
                                                rule_penalty=penalty)['frame_nll'])
      row['score_seconds'] = time.perf_counter() - t0
    _log(f'{name}: 5ths {row["rates"]["parallel_fifths"]:.2f}/100, distance '
         f'{row["distance_own"]:.3f}, NLL {row["test_frame_nll"]}, '
         f'{row["sample_seconds"]:.1f} s')
    rows.append(row)
  return rows, bach


def _f(x, digits=2):
  return '-' if x is None else f'{x:.{digits}f}'


def markdown(rows, bach, settings):
  """The two tables (rates / distance / NLL / speed, then |z| per metric) as markdown."""
  head = (['variant'] + [SHORT[r] for r in RATES]
          + ['distance (own)', 'distance (roll)', 'distance (others)', 'test NLL',
             'fallbacks', 'sample s'])
  lines = [settings, '', '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  lines.append('| ' + ' | '.join(
      [f'**{bach["label"]}**'] + [_f(bach['rates'][r]) for r in RATES]
      + [f'({_f(bach[k], 3)})' for k in ('distance_own', 'distance_roll', 'distance_others')]
      + ['', '', '']) + ' |')
  for row in rows:
    cells = ([row['label']] + [_f(row['rates'][r]) for r in RATES]
             + [_f(row[k], 3) for k in ('distance_own', 'distance_roll', 'distance_others')]
             + [_f(row['test_frame_nll'], 4), str(row['fallbacks']),
                _f(row['sample_seconds'], 2)])
    lines.append('| ' + ' | '.join(cells) + ' |')
  names = sorted({k for row in rows for k in row['z']})
  lines += ['', '|z| against Bach per metric (own voices; the distance is their mean):', '',
            '| metric | ' + ' | '.join(row['label'] for row in rows) + ' |',
            '|' + '---|' * (len(rows) + 1)]
  for name in names:
    lines.append(f'| {name} | ' + ' | '.join(_f(row['z'].get(name)) for row in rows) + ' |')
  seeds = [r['seed'] for r in rows[0]['per_seed']]
  if len(seeds) > 1:
    lines += ['', f'Per seed ({", ".join(map(str, seeds))}): parallel fifths per 100 / '
              'distance (own) / distance (others):', '',
              '| variant | ' + ' | '.join(f'seed {s}' for s in seeds) + ' | mean |',
              '|' + '---|' * (len(seeds) + 2)]
    for row in rows:
      cells = [(r['rates']['parallel_fifths'], r['distance_own'], r['distance_others'])
               for r in row['per_seed']]
      cells.append(tuple(np.mean(cells, axis=0)))
      lines.append(f'| {row["label"]} | ' + ' | '.join(
          f'{a:.2f} / {b:.3f} / {c:.3f}' for a, b, c in cells) + ' |')
  return '\n'.join(lines) + '\n'


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--workdir', required=True)
  p.add_argument('--variants', default=VARIANTS)
  p.add_argument('--num_pieces', type=int, default=64)
  p.add_argument('--num_steps', type=int, default=256)
  p.add_argument('--seeds', default='0', help='comma-separated; the tables: the first')
  p.add_argument('--temperature', type=float, default=1.0)
  p.add_argument('--no_nll', action='store_true', help='skip the test-split NLL')
  p.add_argument('--cache_dir', default='')
  p.add_argument('--out', default='', help='also write the markdown here')
  args = p.parse_args(argv)
  seeds = tuple(int(s) for s in args.seeds.split(','))
  rows, bach = measure(args.workdir, args.variants, args.num_pieces, args.num_steps,
                       seeds, args.temperature, not args.no_nll, args.cache_dir)
  settings = (f'{args.workdir}: {args.num_pieces} pieces x {args.num_steps} steps, seed '
              f'{seeds[0]}, temperature {args.temperature:g}; rates per 100 occasions; '
              f'{jax.devices()[0].platform} ({os.cpu_count()} cores)')
  text = markdown(rows, bach, settings)
  print(text)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text)


if __name__ == '__main__':
  main()
