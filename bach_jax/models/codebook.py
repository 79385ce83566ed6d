"""A vector-quantization codebook: nearest-code lookup, straight-through gradients,
exponential-moving-average updates and dead-code restarts (pure functions).

Statistics `stats` = {'count': float[K], 'sum': float[K, D]}: moving averages (decay
`decay`) of how many encoder vectors each code was assigned per step and of their
sum. Under jit over a mesh whose batch axis is sharded, the per-step sums below are
over the global batch (the compiler inserts the all-reduce), so every device and
every host updates the codebook with the same numbers.
"""

import jax
import jax.numpy as jnp
import numpy as np


def nearest(e, codebook):
  """e: float[..., D]; codebook: float[K, D] -> (codes int32[...], quantized float[..., D])."""
  dist = (jnp.sum(e ** 2, -1, keepdims=True) - 2 * e @ codebook.T
          + jnp.sum(codebook ** 2, -1))
  codes = jnp.argmin(dist, axis=-1).astype(jnp.int32)
  return codes, codebook[codes]


def straight_through(e, q):
  """Forward value q, gradient passed to e unchanged (van den Oord et al. 2017)."""
  return e + jax.lax.stop_gradient(q - e)


def losses(e, q, mask):
  """(codebook loss, commitment loss): mean squared distances over the valid vectors.

  codebook: |sg(e) - q|^2 moves codes towards encoder outputs (gradient updates);
  commitment: |e - sg(q)|^2 keeps the encoder near its codes. mask: float[...].
  """
  count = jnp.maximum(jnp.sum(mask), 1.0) * e.shape[-1]
  sq = lambda a, b: jnp.sum(jnp.sum((a - b) ** 2, -1) * mask) / count
  return sq(jax.lax.stop_gradient(e), q), sq(e, jax.lax.stop_gradient(q))


def batch_stats(e, codes, mask, size):
  """This step's assignment counts float[K] and sums float[K, D] over valid vectors."""
  onehot = jax.nn.one_hot(codes, size, dtype=e.dtype) * mask[..., None]
  onehot = onehot.reshape(-1, size)
  return jnp.sum(onehot, 0), onehot.T @ e.reshape(-1, e.shape[-1])


def init_stats(codebook):
  """Statistics that reproduce `codebook` (one vector per code so far)."""
  return {'count': jnp.ones(codebook.shape[:1], jnp.float32),
          'sum': jnp.array(codebook, jnp.float32, copy=True)}  # Not the param's buffer:
  #   the state is donated to the step, and one buffer cannot be donated twice.


def update_stats(stats, counts, sums, decay):
  """Moving averages of this step's counts and sums."""
  return {'count': decay * stats['count'] + (1 - decay) * counts,
          'sum': decay * stats['sum'] + (1 - decay) * sums}


def ema_codebook(stats, eps=1e-5):
  """Codes = averaged sums / Laplace-smoothed averaged counts (no division by 0)."""
  count = stats['count']
  total = jnp.sum(count)
  smoothed = (count + eps) / (total + count.shape[0] * eps) * total
  return stats['sum'] / smoothed[:, None]


def restart_dead(codebook, stats, e, mask, rng, threshold):
  """Moves every code whose averaged count is below `threshold` onto a random valid
  encoder output of this batch (its statistics restart there, with count
  max(threshold, 1)).

  e: float[..., D] encoder outputs; mask: float[...] which of them are real.
  -> (codebook, stats, number restarted).
  """
  flat_e = jax.lax.stop_gradient(e).reshape(-1, e.shape[-1])
  logits = jnp.where(mask.reshape(-1) > 0, 0.0, -1e9)
  picks = jax.random.categorical(rng, logits, shape=(codebook.shape[0],))
  dead = (stats['count'] < threshold) & (jnp.sum(mask) > 0)
  new = flat_e[picks]
  count = jnp.where(dead, jnp.maximum(threshold, 1.0), stats['count'])
  return (jnp.where(dead[:, None], new, codebook),
          {'count': count, 'sum': jnp.where(dead[:, None], new * count[:, None], stats['sum'])},
          jnp.sum(dead))


def perplexity(counts):
  """exp(entropy of the code usage distribution): K when uniform, 1 when one code (NumPy)."""
  counts = np.asarray(counts, np.float64)
  total = counts.sum()
  if total <= 0:
    return float('nan')
  p = counts[counts > 0] / total
  return float(np.exp(-np.sum(p * np.log(p))))
