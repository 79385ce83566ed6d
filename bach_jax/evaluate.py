"""Likelihoods (exact or bounds) over whole pieces, for every family alike.

Frame NLL (nats per frame, the JSB convention): -log p(frame_t | frames_<t),
summed over the 88 keys' joint outcome, averaged over every frame of every piece
of a split. The recurrent state is carried through each whole piece (not reset
per training window). Every frame is scored: the first frame of a piece is
predicted from the model's start state, i.e. after the `pad_start` silent frame(s)
the pipeline puts before each piece (training windows see the same start).

A family's eval_step returns sums over a batch (additive over batches); this
module adds them up over the split and hands the totals to the family's
`summarize`, which turns them into per-frame numbers (an exact NLL, or a bound on
it such as the VAE's negative ELBO and IWAE bound). The result says which:
'likelihood' is the family's CAPABILITIES.likelihood and 'select_by' the metric
that chooses its best checkpoint.
"""

import functools
import time

import jax
import numpy as np

from bach_jax import errors
from bach_jax import metrics
from bach_jax import parallel
from bach_jax import pieces as pieces_lib
from bach_jax.data import pipeline
from bach_jax.models import family as family_lib
from bach_jax.models.common import SampleRequest

EVAL_SEED_OFFSET = 7919  # Evaluation's RNG stream: key(config.seed + this), one per batch.


def make_eval_fn(family, config, mesh):
  """jit(eval_step): (params, batch, rng) with params and rng replicated, batch sharded."""
  repl = parallel.replicated(mesh)
  return jax.jit(functools.partial(family.eval_step, config),
                 in_shardings=(repl, parallel.data_sharded(mesh), repl), out_shardings=repl)


def evaluate_pieces(eval_fn, family, config, params, pieces, mesh, num_voices=None,
                    batch_size=None):
  """Scores whole pieces -> family.summarize(...) plus bookkeeping.

  Returns a dict with the family's metrics (e.g. 'frame_nll'), 'likelihood'
  ('exact' / 'bound' / 'none'), 'select_by' (the key that ranks checkpoints),
  'pieces' and 'seconds'. The RNG of a latent family's sampling is fixed per
  batch (key(config.seed + EVAL_SEED_OFFSET) folded with the batch index), so
  the same params always get the same numbers.
  """
  t0 = time.perf_counter()
  batches = pipeline.piece_batches(
      pieces, batch_size=batch_size or config.train.eval_batch_size,
      process_index=jax.process_index(), process_count=jax.process_count(),
      pad_start=config.data.pad_start, num_voices=num_voices)
  root = jax.random.key(config.seed + EVAL_SEED_OFFSET)
  outs = []
  for i, batch in enumerate(batches):
    errors.safe_point()
    outs.append(eval_fn(params, parallel.to_global(batch, mesh), jax.random.fold_in(root, i)))
  outs = jax.device_get(outs)
  totals = {k: np.sum([np.asarray(o[k], np.float64) for o in outs], axis=0)
            for k in (outs[0] if outs else {'frames': 0})}
  caps = family.CAPABILITIES
  result = dict(family.summarize(config, totals))
  if caps.likelihood == 'none':  # No likelihood: the samples' metrics against the pieces.
    result.update(sample_distance(family, config, params, pieces))
    if result['collapsed']:
      result.setdefault('warnings', []).append(
          f'mode collapse: the samples are {result["diversity_ratio"]:.3f} times as diverse '
          'as the real pieces (pairwise distance of their metrics)')
  result.update(likelihood=caps.likelihood, select_by=caps.select_by, pieces=len(pieces),
                seconds=time.perf_counter() - t0)
  return result


def piece_sums(family, config, params, pieces, num_voices=None, batch_size=None):
  """eval_step's sums piece by piece -> {key: float64[P, ...]}, in the order of `pieces`:
  each piece scored as a batch of its own (the rows of a batch vmapped), so any
  statistic of a subset of the pieces is family.summarize of their summed sums (what
  a bootstrap over pieces needs). One process; a latent family's sampling RNG is
  key(config.seed + EVAL_SEED_OFFSET) folded with the batch, split per row."""
  fn = family_lib.jitted(family, 'eval_step', config, per_row=True)
  root = jax.random.key(config.seed + EVAL_SEED_OFFSET)
  sums = {}
  for i, batch in enumerate(pipeline.piece_batches(
      pieces, batch_size=batch_size or config.train.eval_batch_size,
      pad_start=config.data.pad_start, num_voices=num_voices)):
    out = jax.device_get(fn(params, batch, jax.random.fold_in(root, i)))
    for row, index in enumerate(batch['piece_index']):
      if index >= 0:
        for k, v in out.items():
          sums.setdefault(k, np.zeros((len(pieces),) + np.shape(v)[1:]))[index] = v[row]
  return sums


def sample_distance(family, config, params, pieces):
  """The selection metric of a family without a likelihood.

  config.train.eval_samples pieces of config.sample.num_steps frames (temperature 1,
  a fixed key: the same params give the same number) against `pieces` cut to as
  many frames: 'metric_distance' (set_compare.compare's mean absolute z-score of
  the musical metrics, lower is better), 'diversity_ratio' and 'collapsed'.
  """
  n, steps = int(config.train.eval_samples), int(config.sample.num_steps)
  request = SampleRequest(num_pieces=n, num_steps=steps)
  out = jax.device_get(family_lib.jitted(family, 'sample', config)(
      params, jax.random.key(config.seed + EVAL_SEED_OFFSET + 1), request))
  spq = pieces[0].steps_per_quarter
  rolls = np.asarray(out['roll'], bool)
  mine = metrics.evaluate_set(rolls, np.full(n, rolls.shape[1]), spq)
  mine.pop('voice_crossing', None)  # Voices guessed from frames never cross (set_metrics).
  cmp = metrics.compare(mine, metrics.set_metrics(pieces_lib.cut_pieces(pieces, steps), spq))
  return {'metric_distance': cmp['distance'], 'diversity_ratio': cmp['diversity_ratio'],
          'collapsed': bool(cmp['collapsed'])}


def scalars(result):
  """The float-valued entries of an evaluation result (for metric files and log lines)."""
  return {k: float(v) for k, v in result.items()
          if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)}


def describe(result, split):
  """One log line: the selection metric first, labeled exact or bound, then the rest."""
  key = result['select_by']
  kind = {'exact': 'exact', 'bound': 'bound'}.get(result['likelihood'], 'no likelihood')
  rest = ', '.join(f'{k} {v:.4g}' for k, v in scalars(result).items()
                   if k not in (key, 'seconds', 'pieces', 'frames'))
  line = f'{split} {key} {result[key]:.4f} ({kind})'
  if rest:
    line += f'; {rest}'
  return line + f' ({result.get("frames", "?")} frames, {result["seconds"]:.1f}s)'
