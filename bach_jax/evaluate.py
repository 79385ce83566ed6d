"""Exact likelihoods over whole pieces.

Frame NLL (nats per frame, the JSB convention): -log p(frame_t | frames_<t),
summed over the 88 keys' joint outcome, averaged over every frame of every piece
of a split. The recurrent state is carried through each whole piece (not reset
per training window). Every frame is scored: the first frame of a piece is
predicted from the model's start state, i.e. after the `pad_start` silent frame(s)
the pipeline puts before each piece (training windows see the same start).
"""

import functools
import time

import jax
import numpy as np

from bach_jax import parallel
from bach_jax.data import pipeline


def make_eval_fn(family, config, mesh):
  """jit(eval_step) with params replicated and the batch sharded on 'data'."""
  return jax.jit(functools.partial(family.eval_step, config),
                 in_shardings=(parallel.replicated(mesh), parallel.data_sharded(mesh)),
                 out_shardings=parallel.replicated(mesh))


def frame_nll(eval_fn, config, params, pieces, mesh, num_voices=None, batch_size=None):
  """-> {'frame_nll': nats per frame, 'frames': int, 'pieces': int, 'seconds': float}."""
  t0 = time.perf_counter()
  batches = pipeline.piece_batches(
      pieces, batch_size=batch_size or config.train.eval_batch_size,
      process_index=jax.process_index(), process_count=jax.process_count(),
      pad_start=config.data.pad_start, num_voices=num_voices)
  nll_sum, frames = [], []
  for batch in batches:
    out = eval_fn(params, parallel.to_global(batch, mesh))
    nll_sum.append(out['nll_sum'])
    frames.append(out['frames'])
  nll_sum = float(np.sum(jax.device_get(nll_sum), dtype=np.float64))
  frames = float(np.sum(jax.device_get(frames), dtype=np.float64))
  return {'frame_nll': nll_sum / max(frames, 1.0), 'frames': int(frames),
          'pieces': len(pieces), 'seconds': time.perf_counter() - t0}
