"""Pieces of the latent-variable families: segments, Gaussians, KL, bounds, schedules.

A latent family scores a piece as consecutive segments of `segment_steps`
target frames, each with its own latent: p(x) = prod_k p(x_k | x_<k), each
factor integrating over its own z_k, so a long piece still gets a proper
probability (and a bound on it) that is comparable per frame with the exact
families' NLL.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

MIN_STD = 1e-4  # Floor of a posterior standard deviation (no log of 0).


def to_segments(x, segment_steps):
  """x: [B, T, ...] -> [B, n, segment_steps, ...], zero-padded at the end; n = ceil(T / S)."""
  b, t = x.shape[:2]
  n = -(-t // segment_steps)
  pad = n * segment_steps - t
  if pad:
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
  return x.reshape((b, n, segment_steps) + x.shape[2:])


def from_segments(x, steps=None):
  """[B, n, S, ...] -> [B, n * S, ...], cut to `steps` frames when given."""
  x = x.reshape((x.shape[0], x.shape[1] * x.shape[2]) + x.shape[3:])
  return x if steps is None else x[:, :steps]


def posterior(raw, latent_dim):
  """Dense output float[..., 2D] -> (mean, std), std = softplus + MIN_STD (never 0 or inf)."""
  mean, pre = raw[..., :latent_dim], raw[..., latent_dim:]
  return mean, jax.nn.softplus(pre) + MIN_STD


def gaussian_kl(mean, std):
  """KL(N(mean, std^2) || N(0, 1)) per dimension, closed form: float[..., D]."""
  return 0.5 * (mean ** 2 + std ** 2 - 1.0) - jnp.log(std)


def gaussian_logpdf(z, mean, std):
  """log N(z; mean, std^2), summed over the last axis."""
  return jnp.sum(-0.5 * ((z - mean) / std) ** 2 - jnp.log(std) - 0.5 * math.log(2 * math.pi),
                 axis=-1)


def kl_weight(step, schedule, warmup_steps, cycle_steps, beta):
  """KL weight at `step` (traced int), never above the cap `beta`.

  'constant': beta. 'linear': 0 -> beta over warmup_steps, then beta.
  'cyclical' (Fu et al. 2019): in every cycle of cycle_steps, 0 -> beta over the
  first half, then beta for the second half.
  """
  step = jnp.asarray(step, jnp.float32)
  if schedule == 'constant':
    return jnp.asarray(beta, jnp.float32)
  if schedule == 'linear':
    return beta * jnp.minimum(1.0, step / max(warmup_steps, 1))
  if schedule == 'cyclical':
    phase = jnp.mod(step, cycle_steps) / cycle_steps
    return beta * jnp.minimum(1.0, 2.0 * phase)
  raise ValueError(f'unknown KL schedule {schedule!r}')


def free_bits_kl(kl, valid, free_bits, mode):
  """The KL that the training loss penalizes, summed over valid segments.

  kl: float[N, D] per segment and dimension; valid: float[N].
  'total' (MusicVAE): per segment, max(KL_segment - free_bits, 0): a budget of
  free_bits nats for the whole latent. 'per_dim' (Kingma et al. 2016): per
  dimension, the batch-mean KL above free_bits nats, times the segment count.
  With free_bits = 0 both are the plain KL.
  """
  if not free_bits:
    return jnp.sum(kl * valid[:, None])
  count = jnp.sum(valid)
  if mode == 'total':
    return jnp.sum(jnp.maximum(jnp.sum(kl, -1) - free_bits, 0.0) * valid)
  mean_kl = jnp.sum(kl * valid[:, None], 0) / jnp.maximum(count, 1.0)
  return jnp.sum(jnp.maximum(mean_kl - free_bits, 0.0)) * count


def log_mean_exp(x, axis=0):
  """log(mean(exp(x))) along an axis, stably."""
  return jax.scipy.special.logsumexp(x, axis=axis) - math.log(x.shape[axis])


def slerp(a, b, t):
  """Spherical interpolation of vectors along the last axis (NumPy); t in [0, 1].

  Falls back to the straight line when a and b are (nearly) parallel.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  na, nb = np.linalg.norm(a, axis=-1, keepdims=True), np.linalg.norm(b, axis=-1, keepdims=True)
  cos = np.sum(a * b, -1, keepdims=True) / np.maximum(na * nb, 1e-12)
  omega = np.arccos(np.clip(cos, -1.0, 1.0))
  so = np.sin(omega)
  safe = so > 1e-6
  wa = np.where(safe, np.sin((1 - t) * omega) / np.where(safe, so, 1.0), 1 - t)
  wb = np.where(safe, np.sin(t * omega) / np.where(safe, so, 1.0), t)
  return wa * a + wb * b


def active_units(mean_sum, mean_sq_sum, count, threshold=0.01):
  """Burda et al. 2016: dimensions whose posterior mean varies over the data by more
  than `threshold` (variance). -> (number active, per-dimension variance list)."""
  count = max(float(count), 1.0)
  var = np.asarray(mean_sq_sum) / count - (np.asarray(mean_sum) / count) ** 2
  return int(np.sum(var > threshold)), var
