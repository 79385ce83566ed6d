"""Comparing sets of pieces by their metrics: summaries, distances, diversity, collapse.

Inputs are dicts of `metrics.evaluate_set`: name -> float[N] (or float[N, D],
the pitch-class histogram) per piece; NaN pieces (a metric undefined for that
piece) are skipped. Outputs are plain JSON (NaN -> None).

After Yang & Lerch (2018, "On the evaluation of generative models in music"):
`compare(samples, reference)` takes two dicts of `evaluate_set`. For
every metric, the intra-set distances of the reference (|r_i - r_j|, or the
Euclidean norm for the histogram, over ALL ordered pairs, i = j included) and
the inter-set distances (|s_i - r_j|) are smoothed by Gaussian KDEs
(scipy.stats.gaussian_kde, bandwidth at least KDE_FLOOR_FRACTION of the spread
of both samples; a sample without variance, where gaussian_kde fails, becomes a
Gaussian of that width; at most MAX_DISTANCES distances each, subsampled with a
fixed seed), normalized on a common grid, and compared by their overlapping
area (OA, 1 = identical) and the KL divergence KL(intra || inter). Keeping
i = j in the intra-set (the paper leaves it out) makes a set compared with
itself give exactly OA 1 and KL 0. The summary `distance` ranks runs: the
mean over scalar metrics of |mean_samples - mean_ref| / std_ref, each term
capped at Z_CAP (std_ref floored at STD_FLOOR). Diversity: the mean Euclidean
distance between the pieces of a set over DIVERSITY_FEATURES standardized by
the reference (see `diversity`); `diversity_ratio` divides that of the samples
by that of the reference, and `is_collapsed` flags a ratio below COLLAPSE_RATIO.
"""

import math
import warnings
from typing import Optional

import numpy as np
from scipy import stats

KDE_GRID_POINTS = 512
KDE_FLOOR_FRACTION = 0.01  # Least KDE bandwidth, as a share of the distances' spread.
MAX_DISTANCES = 2048  # Distances per KDE; more pairs are subsampled (fixed seed).
STD_FLOOR = 1e-6
Z_CAP = 10.0
COLLAPSE_RATIO = 0.25
DIVERSITY_FEATURES = ('pitch_class_histogram', 'pitch_class_entropy', 'used_pitch_classes',
                      'polyphony', 'note_density', 'mean_note_length', 'pitch_range',
                      'empty_beat_rate', 'repetition')


def _json_float(x) -> Optional[float]:
  """A float for JSON: None for NaN or inf."""
  x = float(x)
  return x if math.isfinite(x) else None


def _json(x):
  """Float or float array -> float / nested lists of floats, NaN -> None."""
  x = np.asarray(x, dtype=np.float64)
  return _json_float(x) if x.ndim == 0 else [_json(v) for v in x]


def _rows(values) -> np.ndarray:
  """float[N] or float[N, D] -> float[M, D], the M rows without NaN."""
  values = np.asarray(values, dtype=np.float64)
  values = values.reshape(values.shape[0], -1)
  return values[~np.isnan(values).any(axis=1)]


def summarize(metrics: dict) -> dict:
  """name -> (mean, std) over the pieces without NaN (lists for the histogram; None if none)."""
  summary = {}
  for name, values in metrics.items():
    rows = _rows(values)
    shape = np.asarray(values).shape[1:]
    if rows.shape[0] == 0:
      mean = std = np.full(shape, np.nan)
    else:
      mean, std = rows.mean(axis=0).reshape(shape), rows.std(axis=0).reshape(shape)
    summary[name] = (_json(mean), _json(std))
  return summary


def pair_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Euclidean distances of the pairs (a_i, b_j) of float[N, D] and float[M, D].

  All N * M pairs, or MAX_DISTANCES of them picked with a fixed seed (the same
  picks for the same N and M, so a set against itself gives its intra-set).
  """
  num_pairs = a.shape[0] * b.shape[0]
  if num_pairs <= MAX_DISTANCES:
    picks = np.arange(num_pairs)
  else:
    picks = np.random.default_rng(0).choice(num_pairs, MAX_DISTANCES, replace=False)
  i, j = np.divmod(picks, b.shape[0])
  return np.linalg.norm(a[i] - b[j], axis=-1)


def _density(data: np.ndarray, floor: float):
  """(pdf callable, bandwidth) of a sample of distances.

  scipy's gaussian_kde with its bandwidth raised to at least `floor`, or, for a
  sample without variance (where gaussian_kde fails), a Gaussian of width
  `floor` at the sample's value.
  """
  center = float(np.mean(data))
  if data.size < 2 or not np.std(data) > 1e-12 * max(1.0, abs(center)):
    return (lambda x: stats.norm.pdf(x, center, floor)), floor
  kde = stats.gaussian_kde(data)
  bandwidth = float(np.sqrt(kde.covariance[0, 0]))
  if bandwidth < floor:
    kde.set_bandwidth(kde.factor * floor / bandwidth)
    bandwidth = floor
  return kde, bandwidth


def overlap_and_kl(intra: np.ndarray, inter: np.ndarray):
  """(overlapping area, KL(intra || inter)) of the KDEs of two samples of distances.

  Both densities are evaluated on one grid covering both samples and
  normalized there, so identical samples give exactly (1, 0).
  """
  both = np.concatenate([intra, inter])
  floor = max(KDE_FLOOR_FRACTION * np.ptp(both), 1e-6)
  (pdf_p, bw_p), (pdf_q, bw_q) = _density(intra, floor), _density(inter, floor)
  margin = 4 * max(bw_p, bw_q)
  grid = np.linspace(both.min() - margin, both.max() + margin, KDE_GRID_POINTS)
  p, q = pdf_p(grid), pdf_q(grid)
  p, q = p / p.sum(), q / q.sum()  # Riemann sums on a uniform grid; dx cancels.
  overlap = float(np.minimum(p, q).sum())
  with np.errstate(divide='ignore', invalid='ignore'):
    kl = float(np.sum(np.where(p > 0, p * np.log(p / np.maximum(q, 1e-300)), 0.0)))
  return overlap, max(kl, 0.0)


def _metric_comparison(samples: np.ndarray, reference: np.ndarray) -> dict:
  """One metric's rows float[N, D] and float[M, D] (no NaN) -> the entries of compare()."""
  shape = () if samples.shape[1] == 1 else (samples.shape[1],)
  out = {'mean': _json(samples.mean(axis=0).reshape(shape)),
         'std': _json(samples.std(axis=0).reshape(shape)),
         'ref_mean': _json(reference.mean(axis=0).reshape(shape)),
         'ref_std': _json(reference.std(axis=0).reshape(shape)), 'z': None}
  if not shape:
    ref_std = max(float(reference.std()), STD_FLOOR)
    out['z'] = min(abs(float(samples.mean() - reference.mean())) / ref_std, Z_CAP)
  intra = pair_distances(reference, reference)
  inter = pair_distances(samples, reference)
  out['overlap'], out['kl'] = overlap_and_kl(intra, inter)
  return out


def compare(samples: dict, reference: dict) -> dict:
  """Compares two sets' metrics (dicts of evaluate_set) as Yang & Lerch do.

  Args:
    samples: name -> float[N] (or float[N, D]) of the generated pieces.
    reference: name -> float[M] (or float[M, D]) of the reference pieces.

  Returns:
    A plain-JSON dict: 'distance' (mean capped |z| over the scalar metrics,
    0 = same means), 'diversity_ratio', 'collapsed', 'num_samples',
    'num_reference', and 'metrics': name -> {mean, std, ref_mean, ref_std, z
    (None for the histogram), overlap, kl}; a metric undefined for every
    piece of either set (or with < 2 reference pieces) is None.
  """
  per_metric, z_scores = {}, []
  for name in (n for n in reference if n in samples):
    s, r = _rows(samples[name]), _rows(reference[name])
    if s.shape[0] < 1 or r.shape[0] < 2:
      per_metric[name] = None
      continue
    per_metric[name] = _metric_comparison(s, r)
    if per_metric[name]['z'] is not None:
      z_scores.append(per_metric[name]['z'])
  ratio = diversity_ratio(samples, reference)
  return {'distance': _json_float(np.mean(z_scores)) if z_scores else None,
          'diversity_ratio': _json_float(ratio),
          'collapsed': bool(ratio < COLLAPSE_RATIO),
          'num_samples': int(len(next(iter(samples.values())))),
          'num_reference': int(len(next(iter(reference.values())))),
          'metrics': per_metric}


def distance_replicates(samples: dict, reference: dict, rows: np.ndarray) -> np.ndarray:
  """compare()'s `distance` of resampled sample sets, the reference fixed.

  rows: int[B, N], each line the rows of `samples` (with repeats) of one resample ->
  float[B]. The line arange(N) gives compare()'s distance itself. Vectorized over
  the resamples (a bootstrap of thousands costs milliseconds)."""
  z_scores = []
  for name in (n for n in reference if n in samples):
    values = np.asarray(samples[name], np.float64)
    ref = _rows(reference[name])
    if values.ndim != 1 or ref.shape[0] < 2 or np.all(np.isnan(values)):
      continue  # The histogram has no z; an undefined metric is left out, as in compare().
    with warnings.catch_warnings():  # A resample of NaN pieces only: left out of its mean.
      warnings.simplefilter('ignore', RuntimeWarning)
      means = np.nanmean(values[rows], axis=1)
    ref_std = max(float(ref.std()), STD_FLOOR)
    z_scores.append(np.minimum(np.abs(means - ref.mean()) / ref_std, Z_CAP))
  if not z_scores:
    return np.full(rows.shape[0], np.nan)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', RuntimeWarning)
    return np.nanmean(np.stack(z_scores), axis=0)


def _features(metrics: dict, reference: dict) -> np.ndarray:
  """float[N, F]: DIVERSITY_FEATURES standardized by the reference's mean and std.

  Columns with no spread in the reference are dropped; NaN (e.g. an empty
  piece) becomes 0, the reference mean.
  """
  columns, ref_columns = [], []
  for name in DIVERSITY_FEATURES:
    if name in metrics and name in reference:
      columns.append(np.asarray(metrics[name], np.float64).reshape(len(metrics[name]), -1))
      ref_columns.append(np.asarray(reference[name], np.float64)
                         .reshape(len(reference[name]), -1))
  if not columns:
    return np.zeros((len(next(iter(metrics.values()))), 0))
  x, ref = np.concatenate(columns, axis=1), np.concatenate(ref_columns, axis=1)
  with warnings.catch_warnings():  # An all-NaN column: NaN mean and std, dropped.
    warnings.simplefilter('ignore', RuntimeWarning)
    mean, std = np.nanmean(ref, axis=0), np.nanstd(ref, axis=0)
  keep = std > STD_FLOOR
  z = (x[:, keep] - mean[keep]) / std[keep]
  return np.where(np.isnan(z), 0.0, z)


def diversity(metrics: dict, reference: Optional[dict] = None) -> float:
  """Mean Euclidean distance between pieces i < j of a set (NaN with < 2 pieces).

  Features: DIVERSITY_FEATURES (the pitch-class histogram's 12 bins and scalar
  metrics) standardized by `reference` (default: the set itself), so that
  distances of different sets are in the same units.
  """
  x = _features(metrics, metrics if reference is None else reference)
  if x.shape[0] < 2:
    return float('nan')
  i, j = np.triu_indices(x.shape[0], k=1)
  return float(np.linalg.norm(x[i] - x[j], axis=1).mean())


def diversity_ratio(samples: dict, reference: dict) -> float:
  """diversity(samples) / diversity(reference), both in the reference's units.

  About 1 for a generator as varied as the reference, 0 for identical samples;
  NaN if either set has < 2 pieces or the reference has no spread.
  """
  ref_diversity = diversity(reference, reference)
  if not ref_diversity > 0:
    return float('nan')
  return diversity(samples, reference) / ref_diversity


def is_collapsed(samples: dict, reference: dict, threshold: float = COLLAPSE_RATIO) -> bool:
  """Whether the samples are less than `threshold` times as varied as the reference.

  COLLAPSE_RATIO = 0.25: the mean distance between two samples is under a
  quarter of that between two reference pieces. False when undefined.
  """
  return bool(diversity_ratio(samples, reference) < threshold)
