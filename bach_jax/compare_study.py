"""The study's report (bach_jax.study; also `python -m bach_jax.compare --study=DIR`).

Every family at every budget scored: the distance of its samples' musical metrics to
held-out Bach (set_compare's distance: the mean capped |z| over the scalar metrics),
every metric's mean, and the test split's likelihood where the family has one (exact,
or a bound), each as the mean over seeds with a 95% interval.

Intervals: a two-level bootstrap. A replicate draws K seeds with replacement from the
K, then, for each drawn seed, that run's pieces with replacement (its samples for the
metrics and the distance, the test split's pieces for the likelihood, each scored
piece by piece); the interval is the 2.5-97.5 percentile of the replicates' means over
seeds. So it holds both the seed-to-seed spread of training and the finite number of
pieces. The point is the mean over seeds of each run's value on all its pieces. The
reference (Bach's test split, cut to the samples' length) is the same fixed set for
every family; the noise floor (the valid split against it) gets an interval by
resampling the valid pieces.

Ranking: by distance at the largest budget. Two families are separated when their
intervals do not overlap; the report lists the pairs that are not.
"""

import itertools
import json
import math
import os
import warnings

import numpy as np

from bach_jax import compare
from bach_jax import compare_plots
from bach_jax import experiment
from bach_jax import metric_writers
from bach_jax import metrics
from bach_jax import workdir as workdir_lib
from bach_jax.errors import CompareError

REPORT = 'report'  # OUT/report/
SEED = 20261206  # The bootstrap's own seed: the same scores give the same report.


def load_scores(out):
  """OUT/evals -> {(family, fraction): [score dict per seed]}, seeds in order."""
  root = os.path.join(out, 'evals')
  if not os.path.isdir(root):
    raise CompareError(f'{out}: no study scores (no evals/ folder)')
  scores = {}
  for dirpath, _, files in sorted(os.walk(root)):
    for name in sorted(files):
      if name.endswith('.json'):
        with open(os.path.join(dirpath, name)) as f:
          s = json.load(f)
        scores.setdefault((s['family'], s['fraction']), []).append(s)
  for key in scores:
    scores[key].sort(key=lambda s: s['seed'])
  return scores


def _values(x):
  return np.array([np.nan if v is None else v for v in x], np.float64)


def two_level(full, replicates, rng):
  """full float[K] (each seed's value), replicates float[K, B] (each seed's bootstrap
  over its pieces) -> (mean, low, high): the mean over seeds, the 95% interval of the
  two-level bootstrap (seeds drawn with replacement, then each one's piece replicate)."""
  full, replicates = np.asarray(full, np.float64), np.asarray(replicates, np.float64)
  k, b = replicates.shape
  seeds = rng.integers(0, k, (b, k))
  cols = rng.integers(0, b, (b, k))
  draws = np.nanmean(replicates[seeds, cols], axis=1)
  low, high = np.nanpercentile(draws, [2.5, 97.5])
  return float(np.nanmean(full)), float(low), float(high)


def _sample_rows(n, b, rng):
  return np.concatenate([np.arange(n)[None], rng.integers(0, n, (b, n))])


def point(seed_scores, reference, b, rng):
  """One family at one budget -> distance, likelihood and every scalar metric's mean,
  each (mean, low, high)."""
  full, reps, means, mean_reps = [], [], {}, {}
  for s in seed_scores:
    values = {k: np.array([[np.nan if x is None else x for x in r] for r in v], np.float64)
              if v and isinstance(v[0], list) else _values(v) for k, v in s['metrics'].items()}
    n = len(next(iter(values.values())))
    rows = _sample_rows(n, b, rng)
    dist = metrics.distance_replicates(values, reference, rows)
    full.append(dist[0])
    reps.append(dist[1:])
    for name, v in values.items():
      if v.ndim == 1:
        m = np.nanmean(v[rows], axis=1)
        means.setdefault(name, []).append(m[0])
        mean_reps.setdefault(name, []).append(m[1:])
  result = {'seeds': len(seed_scores), 'frames': seed_scores[0]['frames'],
            'distance': two_level(full, reps, rng),
            'metrics': {k: two_level(means[k], mean_reps[k], rng) for k in means}}
  lik = [s['likelihood'] for s in seed_scores]
  if all(x is not None for x in lik):
    result['likelihood'] = two_level([x['value'] for x in lik],
                                     [x['replicates'] for x in lik], rng)
    result['likelihood_kind'], result['likelihood_metric'] = lik[0]['kind'], lik[0]['metric']
  return result


def overlaps(a, b):
  """Whether two (mean, low, high) intervals overlap: not separated."""
  return a[1] <= b[2] and b[1] <= a[2]


def ranking(points):
  """{family: point} -> (families by distance, [(a, b) pairs whose intervals overlap])."""
  order = sorted(points, key=lambda f: points[f]['distance'][0])
  together = [(a, b) for a, b in itertools.combinations(order, 2)
              if overlaps(points[a]['distance'], points[b]['distance'])]
  return order, together


def _reference(out, plan, steps):
  """Bach's test split (the reference) and valid split, cut to `steps` frames, as
  set_metrics, from the first run's corpus."""
  config = experiment.read_config(plan['runs'][0]['workdir'])
  corpus = experiment.setup(config).corpus
  test = compare.reference_pieces(corpus, 'test', steps)
  valid = compare.reference_pieces(corpus, 'valid', steps)
  spq = corpus.steps_per_quarter
  return (corpus, metrics.set_metrics(test, spq), metrics.set_metrics(valid, spq),
          len(test), len(valid))


def build(out, log=print):
  """The report dict of a study folder (see the module docstring)."""
  path = os.path.join(out, 'study.json')
  if not os.path.exists(path):
    raise CompareError(f'{out}: not a study folder (no study.json)')
  with open(path) as f:
    plan = json.load(f)
  preset = plan['preset']
  scores = load_scores(out)
  corpus, ref, valid, n_test, n_valid = _reference(out, plan, preset['sample_steps'])
  rng = np.random.default_rng(SEED)
  b = preset['bootstrap']
  noise_d = metrics.distance_replicates(valid, ref, _sample_rows(n_valid, b, rng))
  noise = (float(noise_d[0]), *np.nanpercentile(noise_d[1:], [2.5, 97.5]).tolist())
  points = {}
  with warnings.catch_warnings():  # A metric undefined on every piece (a silent sample):
    warnings.simplefilter('ignore', RuntimeWarning)  # NaN, left out of the means.
    for (family, fraction), seed_scores in sorted(scores.items()):
      points.setdefault(family, {})[fraction] = point(seed_scores, ref, b, rng)
  fractions = sorted({f for p in points.values() for f in p})
  if not fractions:
    raise CompareError(f'{out}: no scored checkpoint yet')
  at = lambda f: {fam: p[f] for fam, p in points.items() if f in p}
  order_last, together = ranking(at(fractions[-1]))
  order_first, together_first = ranking(at(fractions[0]))
  log(f'study report: {len(points)} families, budgets {fractions}, noise floor '
      f'{noise[0]:.3f} [{noise[1]:.3f}, {noise[2]:.3f}]')
  return {'preset': preset, 'fractions': fractions, 'points': _json_points(points),
          'noise_floor': {'distance': noise, 'pieces': n_valid,
                          'metrics': _means(valid)},
          'reference': {'source': corpus.source, 'split': 'test', 'pieces': n_test,
                        'cut_to_steps': preset['sample_steps'],
                        'metrics': _means(ref)},
          'ranking': order_last, 'not_separated': together,
          'ranking_at_smallest': order_first, 'not_separated_at_smallest': together_first,
          'ranking_changes': order_first != [f for f in order_last if f in order_first]}


def _means(values):
  """{metric: mean over the pieces} of the scalar metrics of set_metrics."""
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', RuntimeWarning)
    return {k: float(np.nanmean(v)) for k, v in values.items() if np.asarray(v).ndim == 1}


def _json_points(points):
  return {fam: {f'{frac:g}': p for frac, p in by.items()} for fam, by in points.items()}


def write_report(out, log=print):
  """OUT/report/{report.md, report.json, study_budget.png} -> the report dict."""
  report = build(out, log)
  folder = str(workdir_lib.prepare(os.path.join(out, REPORT), what='report folder'))
  report['files'] = ['report.md', 'report.json', compare_plots.plot_study(folder, report)]
  with open(os.path.join(folder, 'report.json'), 'w') as f:
    json.dump(metric_writers.json_safe(report), f, indent=1)
  with open(os.path.join(folder, 'report.md'), 'w') as f:
    f.write(markdown(report))
  log(f'wrote {", ".join(report["files"])} to {folder}')
  return report


def _ci(x, digits=3):
  if x is None or not all(map(math.isfinite, x)):
    return '-'
  return f'{x[0]:.{digits}f} [{x[1]:.{digits}f}, {x[2]:.{digits}f}]'


def markdown(report):
  """The study's tables: the ranking at the full budget, the budgets, every metric."""
  preset, fractions = report['preset'], report['fractions']
  last = f'{fractions[-1]:g}'
  pts = report['points']
  lines = [f'# Study: {len(pts)} families, {preset["seeds"]} seeds, '
           f'{preset["budget"]:,} training frames each', '',
           f'Samples: {preset["num_samples"]} pieces x {preset["sample_steps"]} frames per '
           f'checkpoint; reference: {report["reference"]["pieces"]} pieces of Bach\'s test '
           f'split ({report["reference"]["source"]}), cut to as many frames. Every number: '
           'the mean over seeds [95% interval, two-level bootstrap over seeds and pieces].',
           '', '## Ranking at the full budget (lower distance is closer to Bach)', '',
           '| rank | family | distance to Bach | test likelihood (nats/frame) | kind |',
           '|---:|---|---|---|---|']
  for i, fam in enumerate(report['ranking'], 1):
    p = pts[fam][last]
    lines.append(f'| {i} | {fam} | {_ci(p["distance"])} | {_ci(p.get("likelihood"))} | '
                 f'{p.get("likelihood_kind", "none")} |')
  lines.append(f'| | Bach: valid vs test (noise floor) | {_ci(report["noise_floor"]["distance"])}'
               ' | | |')
  together = report['not_separated']
  lines += ['', 'Not separated (intervals overlap): ' + (
      ', '.join(f'{a} / {b}' for a, b in together) if together else 'none') + '.',
            'Ranking at the smallest budget: ' + ' < '.join(report['ranking_at_smallest'])
            + ('; it differs from the full budget\'s' if report['ranking_changes']
               else '; the same order as at the full budget') + '; not separated there: '
            + (', '.join(f'{a} / {b}' for a, b in report['not_separated_at_smallest'])
               or 'none') + '.',
            '', '## Distance to Bach by budget', '',
            '| family | ' + ' | '.join(f'{float(f) * preset["budget"]:,.0f} frames'
                                      for f in fractions) + ' |',
            '|---|' + '---|' * len(fractions)]
  for fam in report['ranking']:
    lines.append(f'| {fam} | ' + ' | '.join(_ci(pts[fam].get(f'{f:g}', {}).get('distance'))
                                           for f in fractions) + ' |')
  lines.append('| Bach: valid vs test (noise floor) | ' + ' | '.join(
      _ci(report['noise_floor']['distance']) for _ in fractions) + ' |')
  lines += ['', '## Test likelihood by budget (exact or bound, nats per frame)', '',
            '| family | kind | ' + ' | '.join(f'{f:g}' for f in fractions) + ' |',
            '|---|---|' + '---|' * len(fractions)]
  for fam in report['ranking']:
    kind = pts[fam][last].get('likelihood_kind')
    if kind:
      lines.append(f'| {fam} | {kind} | ' + ' | '.join(
          _ci(pts[fam].get(f'{f:g}', {}).get('likelihood')) for f in fractions) + ' |')
  names = sorted(report['reference']['metrics'])
  lines += ['', '## Every metric at the full budget (mean over samples)', '',
            '| metric | Bach (test) | Bach (valid) | ' + ' | '.join(report['ranking']) + ' |',
            '|---|---:|---:|' + '---|' * len(report['ranking'])]
  for name in names:
    lines.append(f'| {name} | {report["reference"]["metrics"][name]:.3f} | '
                 f'{report["noise_floor"]["metrics"].get(name, float("nan")):.3f} | ' +
                 ' | '.join(_ci(pts[fam][last]['metrics'].get(name))
                            for fam in report['ranking']) + ' |')
  lines += ['', '![distance and likelihood by budget](study_budget.png)', '']
  return '\n'.join(lines)
