"""Recurrent VAE with a flat or hierarchical decoder: the paper's latent-variable family.

A piece's target frames are cut into segments of `segment_steps` frames; each
segment k has its own latent z_k ~ N(0, I) (model.latent_dim):

  encoder   q(z_k | x_k): a 1-layer bidirectional LSTM (the shared scan LSTM of
            layers.py, the backward direction run on each segment reversed within
            its length, so padding never reaches the encoding) -> mean, std
            (softplus) of a diagonal Gaussian.
  decoder   p(x_k | z_k, x_<k), frame by frame:
            'flat'          an LSTM stack whose initial state comes from z (tanh of a
                            dense layer) and that reads z at every step;
            'hierarchical'  (MusicVAE) a conductor LSTM turns z into one embedding
                            per subsequence of subsequence_steps frames (a bar); the
                            bottom LSTM stack decodes each subsequence from its
                            embedding, its state re-initialised from that embedding
                            at every boundary, so it cannot carry information past
                            z. (It runs as a batch of subsequences: fast as well.)
            Its input at step t is the previous frame (decoder_input =
            'previous_frame', teacher-forced; the previous segment's last frame at
            a segment's first step) or nothing ('none': everything comes from z).
  output    'frame_heads': the slot heads lstm_attn has (models/heads.py; voices on
            a voiced corpus, sorted note sets otherwise), an exact log p(frame);
            'bernoulli': 88 independent keys (the paper).

Likelihood. p(x) = prod_k p(x_k | x_<k) with z_k integrated out is a proper
distribution over whole pieces, so its bounds are comparable per frame with the
exact families' NLL: eval_step reports the negative ELBO (reconstruction + closed-
form KL) and the importance-weighted bound (IWAE, model.iwae_samples samples;
tighter), per frame. The best checkpoint is chosen by the IWAE bound.

Training objective per frame: (reconstruction + w * KL') / frames, with w the
KL weight schedule (constant / linear / cyclical, capped at model.beta) and KL'
the KL after free bits (latent.free_bits_kl: 'total' per segment as in MusicVAE,
or 'per_dim'). The logged 'nelbo' is always the plain w = 1 bound.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bach_jax.models import common
from bach_jax.models import family
from bach_jax.models import frame_decoder
from bach_jax.models import heads
from bach_jax.models import latent
from bach_jax.models import layers
from bach_jax.models import vae_config
from bach_jax.models.frame_decoder import NUM_KEYS, Segments
from bach_jax.models.layers import LSTMLayer, LSTMStack

CAPABILITIES = family.Capabilities(likelihood='bound', select_by='iwae_frame_nll',
                                   voices=True, latent=True)

validate = vae_config.validate
check_corpus = vae_config.check_corpus
summarize = vae_config.summarize


class RecurrentVAE(frame_decoder.FrameDecoder, nn.Module):
  """See the module docstring. N segments, S steps, D latent dims; num_slots = 0
  means per-key Bernoulli output."""
  num_classes: int
  num_slots: int
  num_voices: int
  latent_dim: int = 64
  encoder_hidden: int = 256
  decoder: str = 'hierarchical'
  subsequence_steps: int = 16
  conductor_hidden: int = 256
  decoder_hidden: int = 256
  decoder_layers: int = 2
  decoder_input: bool = True
  dropout_rate: float = 0.0
  embed_dim: int = 8
  head_hidden: int = 128
  autoregressive: bool = True
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.setup_input_embed()
    self.enc_fwd = LSTMLayer(self.encoder_hidden, dtype=self.dtype)
    self.enc_bwd = LSTMLayer(self.encoder_hidden, dtype=self.dtype)
    self.to_posterior = layers.dense(2 * self.latent_dim, self.dtype)
    if self.decoder == 'hierarchical':
      self.conductor_init = layers.dense(2 * self.conductor_hidden, self.dtype)
      self.conductor = LSTMStack(self.conductor_hidden, 1, dtype=self.dtype)
    self.setup_decoder()

  def encode(self, x, lengths):
    """x: float[N, S, Din] segment frames; lengths: int[N] real frames (a prefix)
    -> (mean, std) float[N, D]. Frames at or after a segment's length are never read."""
    _, final = frame_decoder.bidirectional(self.enc_fwd, self.enc_bwd, x, lengths)
    return latent.posterior(self.to_posterior(final), self.latent_dim)

  def contexts(self, z, steps):
    """z: float[N, D] -> (block contexts float[N, U, C], block_steps): what the bottom
    decoder reads in each block (flat: one block of `steps` with context z)."""
    if self.decoder != 'hierarchical':
      return z[:, None], steps
    u = steps // self.subsequence_steps
    h0 = jnp.tanh(self.conductor_init(z))
    carry = ((h0[:, :self.conductor_hidden], h0[:, self.conductor_hidden:]),)
    ctx, _ = self.conductor(jnp.broadcast_to(z[:, None], (z.shape[0], u, z.shape[1])), carry)
    return ctx, self.subsequence_steps

  def decode_hidden(self, z, x_prev, deterministic=True):
    """Teacher-forced. z: float[N, D]; x_prev: float[N, S, Din] -> float[N, S, H]."""
    ctx, block = self.contexts(z, x_prev.shape[1])
    return self.decode_blocks(ctx, block, x_prev, deterministic)

  def __call__(self, x_enc, lengths, x_prev, target, eps, deterministic=True):
    """Whole forward pass (used by init): encode, z = mean + std * eps, decode."""
    mean, std = self.encode(x_enc, lengths)
    h = self.decode_hidden(mean + std * eps, x_prev, deterministic)
    return self.output_logits(h, target, deterministic)


# ----------------------------------------------------------------- helpers

def make_model(config, info):
  m = config.model
  return RecurrentVAE(
      *frame_decoder.slot_fields(info), m.latent_dim, m.encoder_hidden, m.decoder,
      m.subsequence_steps, m.conductor_hidden, m.decoder_hidden, m.decoder_layers,
      m.decoder_input == 'previous_frame', m.dropout_rate, m.embed_dim, m.head_hidden,
      m.heads == 'autoregressive', jnp.dtype(m.dtype))


def _frame_nll(model, params, info, seg, z, rng=None):
  """-log p(x_t | z, x_<t) per segment frame: float[N, S] (masked frames included)."""
  h = model.apply({'params': params}, z, seg.x_prev, deterministic=rng is None,
                  rngs=None if rng is None else {'dropout': rng},
                  method=RecurrentVAE.decode_hidden)
  return frame_decoder.output_nll(model, params, info, seg.target, h, rng)


def _encode(model, params, seg):
  return model.apply({'params': params}, seg.x_enc, seg.lengths, method=RecurrentVAE.encode)


def _setup(config, params, batch):
  info = frame_decoder.slot_info(config, batch, params)
  model = make_model(config, info)
  return info, model, Segments(config, model, params, info, batch)


# ----------------------------------------------------------- family surface

def init(config, rng, example_batch):
  """-> TrainState with freshly initialized params and optimizer state."""
  info = frame_decoder.slot_info(config, example_batch)
  model = make_model(config, info)
  b, s = example_batch['roll'].shape[0], config.model.segment_steps
  din = heads.input_size(config, info) if info else NUM_KEYS + 1
  x = jnp.zeros((b, s, din))
  target = (jnp.zeros((b, s, info.num_slots), jnp.int32) if info
            else jnp.zeros((b, s, NUM_KEYS), bool))
  params = model.init(rng, x, jnp.full((b,), s), x, target,
                      jnp.zeros((b, config.model.latent_dim)))['params']
  return common.create_state(params, config.train)


def train_step(config, state, batch, rng):
  """One step on (reconstruction + KL weight * free-bits KL) per frame, one z sample."""
  m = config.model
  weight = latent.kl_weight(state.step, m.kl_schedule, m.kl_warmup_steps, m.kl_cycle_steps,
                            m.beta)

  def loss_fn(params):
    info, model, seg = _setup(config, params, batch)
    mean, std = _encode(model, params, seg)
    z = mean + std * jax.random.normal(jax.random.fold_in(rng, 1), mean.shape)
    recon = jnp.sum(_frame_nll(model, params, info, seg, z, jax.random.fold_in(rng, 0))
                    * seg.mask)
    kl = latent.gaussian_kl(mean, std)
    kl_sum = jnp.sum(kl * seg.valid[:, None])
    penalized = latent.free_bits_kl(kl, seg.valid, m.free_bits, m.free_bits_mode)
    frames = jnp.maximum(jnp.sum(seg.mask), 1.0)
    aux = {'nelbo': (recon + kl_sum) / frames, 'recon': recon / frames, 'kl': kl_sum / frames,
           'kl_per_segment': kl_sum / jnp.maximum(jnp.sum(seg.valid), 1.0), 'kl_weight': weight}
    return (recon + weight * penalized) / frames, aux

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state, grad_norm = common.apply_gradients(state, grads, config.train)
  return state, {'loss': loss, **aux, 'grad_norm': grad_norm}


def eval_step(config, params, batch, rng):
  """Sums over whole pieces: ELBO parts, the IWAE bound, collapse statistics.

  With K = model.iwae_samples draws z_1..K ~ q per segment: reconstruction =
  mean over k of -log p(x | z_k); IWAE = -log mean_k p(x | z_k) p(z_k) / q(z_k | x);
  KL in closed form. Also -log p(x | z = mean) and the posterior means' first
  two moments per dimension (active units).
  """
  info, model, seg = _setup(config, params, batch)
  mean, std = _encode(model, params, seg)

  def draw(_, key):
    z = mean + std * jax.random.normal(key, mean.shape)
    logp = -jnp.sum(_frame_nll(model, params, info, seg, z) * seg.mask, -1)
    logw = (logp + latent.gaussian_logpdf(z, 0.0, 1.0) - latent.gaussian_logpdf(z, mean, std))
    return None, (logp, logw)

  _, (logp, logw) = jax.lax.scan(draw, None,
                                 jax.random.split(rng, config.model.iwae_samples))
  kl = latent.gaussian_kl(mean, std) * seg.valid[:, None]
  at_mean = jnp.sum(_frame_nll(model, params, info, seg, mean) * seg.mask)
  valid = seg.valid
  rows = jnp.any(seg.mask.reshape(seg.rows[0], -1) > 0, axis=-1)
  return {'frames': jnp.sum(seg.mask), 'segments': jnp.sum(valid),
          'pieces': jnp.sum(rows.astype(jnp.float32)),
          'recon_sum': jnp.sum(-jnp.mean(logp, 0) * valid), 'kl_sum': jnp.sum(kl),
          'iwae_sum': jnp.sum(-latent.log_mean_exp(logw, 0) * valid),
          'recon_at_mean_sum': at_mean, 'kl_dim_sum': jnp.sum(kl, 0),
          'mean_sum': jnp.sum(mean * valid[:, None], 0),
          'mean_sq_sum': jnp.sum(mean ** 2 * valid[:, None], 0)}


def encode(config, params, batch, rng=None):
  """Posterior of every segment of whole pieces (piece_batches rows).

  -> {'z' (the posterior mean), 'std': float[B, n, D], 'segment_mask': bool[B, n]}.
  """
  del rng  # The posterior's parameters are deterministic.
  _, model, seg = _setup(config, params, batch)
  mean, std = _encode(model, params, seg)
  b, n = seg.rows
  return {'z': mean.reshape(b, n, -1), 'std': std.reshape(b, n, -1),
          'segment_mask': (seg.valid > 0).reshape(b, n)}


def decode(config, params, z, rng, request):
  """Latents float[N, n, D] -> {'roll': bool[N, n * S, 88] (+ 'voices')}, free-running.

  Each segment's decoder starts from its own z; the previous frame runs on across
  segments. request.temperature / top_k / top_p filter the output distributions;
  top_k = 1 is greedy (for Bernoulli keys: on when p > 0.5).
  """
  out, _ = decode_scan(config, params, z, rng, request)
  return out


def decode_scan(config, params, z, rng, request, forced=None):
  """frame_decoder.decode_scan from latents float[N, n, D] (n segments) -> (output, log p)."""
  info = frame_decoder.slot_info(config, params=params)
  model = make_model(config, info)
  n, segs = z.shape[:2]
  ctx, block = model.apply({'params': params}, z.reshape(n * segs, -1),
                           config.model.segment_steps, method=RecurrentVAE.contexts)
  ctx = ctx.reshape(n, -1, ctx.shape[-1])  # Blocks in time order.
  return frame_decoder.decode_scan(model, params, info, ctx, block, rng, request, forced)


def interpolate_latents(config, a, b, num_points):
  """Spherical interpolation from z_a to z_b float[n, D] (per segment) -> [P, n, D]."""
  del config
  t = np.linspace(0.0, 1.0, num_points)[:, None, None]
  return latent.slerp(a[None], b[None], t).astype(np.float32)


def sample(config, params, rng, request):
  """z ~ N(0, latent_temperature^2 I) per segment -> decode -> request.num_steps frames."""
  m = config.model
  segs = -(-request.num_steps // m.segment_steps)
  z = request.latent_temperature * jax.random.normal(
      jax.random.fold_in(rng, 1), (request.num_pieces, segs, m.latent_dim))
  out = decode(config, params, z, jax.random.fold_in(rng, 2), request)
  return {k: v[:, :request.num_steps] for k, v in out.items()}
