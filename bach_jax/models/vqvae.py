"""VQ-VAE over 4-step note patterns: the paper's discrete latent family (stage 1).

A piece's target frames are cut into segments of `segment_steps` frames (as the
VAE's), each segment into patterns of `pattern_steps` frames (64 patterns of 4
steps = 256 steps at 4 steps per quarter):

  encoder   each pattern's frames (embedded as the decoder's inputs, frames after
            the piece's end zeroed) -> a dense layer -> context from the
            neighbouring patterns ('bilstm': the shared scan LSTM both ways, the
            backward direction reversed within the segment's length; 'conv': two
            width-3 convolutions over the pattern sequence) -> a code_dim vector e.
  codebook  e -> the nearest of codebook_size codes q (models/codebook.py);
            straight-through gradients to the encoder; commitment loss (weight
            model.commitment); codes learnt by gradient ('gradient': plus the
            codebook loss) or by moving averages of their assigned vectors ('ema',
            counts over the global batch), optionally restarting dead codes.
  decoder   a bidirectional LSTM over the segment's codes gives one context per
            pattern; the frame decoder (models/frame_decoder.py, shared with the
            VAE) decodes each pattern from its context, its state re-initialised at
            every pattern, reading the previous frame; output: the exact slot heads
            or per-key Bernoulli.

Likelihood. With a deterministic encoder, -log p(x) <= -log p(x | c(x)) - log p(c(x))
for the codes c(x) of x: the decoder's exact NLL plus the codes' NLL under a prior.
This family's prior is uniform (log K nats per pattern with a real frame); the
second stage (models/vqvae_prior.py) learns an autoregressive prior over codes,
which tightens the bound and samples new pieces. Both are per frame over whole
pieces, comparable with the other families.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bach_jax.models import codebook as vq
from bach_jax.models import common
from bach_jax.models import family
from bach_jax.models import frame_decoder
from bach_jax.models import heads
from bach_jax.models import layers
from bach_jax.models import vqvae_config
from bach_jax.models.frame_decoder import NUM_KEYS, Segments
from bach_jax.models.frame_slots import slots_to_frame
from bach_jax.models.layers import LSTMLayer

CAPABILITIES = family.Capabilities(likelihood='bound', select_by='code_bound_frame_nll',
                                   voices=True, latent=True)

validate = vqvae_config.validate
check_corpus = vqvae_config.check_corpus
summarize = vqvae_config.summarize


class VQVAE(frame_decoder.FrameDecoder, nn.Module):
  """See the module docstring. N segments, P patterns of L steps, K codes of D dims."""
  num_classes: int
  num_slots: int
  num_voices: int
  pattern_steps: int = 4
  codebook_size: int = 64
  code_dim: int = 64
  encoder: str = 'bilstm'
  encoder_hidden: int = 256
  context_hidden: int = 256
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
    self.pattern_in = layers.dense(self.encoder_hidden, self.dtype)
    if self.encoder == 'bilstm':
      self.enc_fwd = LSTMLayer(self.encoder_hidden, dtype=self.dtype)
      self.enc_bwd = LSTMLayer(self.encoder_hidden, dtype=self.dtype)
    else:
      self.enc_conv = [nn.Conv(self.encoder_hidden, (3,), padding='SAME') for _ in range(2)]
    self.to_code = layers.dense(self.code_dim, self.dtype)
    self.codebook = self.param('codebook', nn.initializers.normal(1.0),
                               (self.codebook_size, self.code_dim))
    self.ctx_fwd = LSTMLayer(self.context_hidden, dtype=self.dtype)
    self.ctx_bwd = LSTMLayer(self.context_hidden, dtype=self.dtype)
    self.setup_decoder()

  def encode(self, x, mask):
    """x: float[N, S, Din] segment frames; mask: float[N, S] real frames (a prefix)
    -> (e float[N, P, D] one vector per pattern, pattern lengths int32[N])."""
    n, steps = x.shape[:2]
    p = steps // self.pattern_steps
    x = (x * mask[..., None]).reshape(n, p, -1)  # Frames after the end read as zeros.
    lengths = jnp.sum(mask.reshape(n, p, -1).max(-1), -1).astype(jnp.int32)
    real = (jnp.arange(p) < lengths[:, None])[..., None]
    h = nn.relu(self.pattern_in(x)) * real
    if self.encoder == 'bilstm':
      h, _ = frame_decoder.bidirectional(self.enc_fwd, self.enc_bwd, h, lengths)
    else:
      for conv in self.enc_conv:
        h = nn.relu(conv(h)) * real  # Padded patterns stay zero: they never leak in.
    return self.to_code(h), lengths

  def contexts(self, q, lengths):
    """q: float[N, P, D] quantized codes -> per-pattern decoder contexts float[N, P, C]."""
    ctx, _ = frame_decoder.bidirectional(self.ctx_fwd, self.ctx_bwd, q, lengths)
    return ctx

  def decode_hidden(self, q, lengths, x_prev, deterministic=True):
    """Teacher-forced. q: float[N, P, D]; x_prev: float[N, S, Din] -> float[N, S, H]."""
    return self.decode_blocks(self.contexts(q, lengths), self.pattern_steps, x_prev,
                              deterministic)

  def __call__(self, x, mask, x_prev, target):
    """Whole forward pass (used by init)."""
    e, lengths = self.encode(x, mask)
    h = self.decode_hidden(e, lengths, x_prev)
    return self.output_logits(h, target)


def make_model(config, info):
  m = config.model
  return VQVAE(*frame_decoder.slot_fields(info), m.pattern_steps, m.codebook_size, m.code_dim,
               m.encoder, m.encoder_hidden, m.context_hidden, m.decoder_hidden,
               m.decoder_layers, m.decoder_input == 'previous_frame', m.dropout_rate,
               m.embed_dim, m.head_hidden, m.heads == 'autoregressive', jnp.dtype(m.dtype))


def _setup(config, params, batch):
  info = frame_decoder.slot_info(config, batch, params)
  model = make_model(config, info)
  return info, model, Segments(config, model, params, info, batch)


def _apply(model, params, *args, method, rng=None):
  return model.apply({'params': params}, *args, method=method,
                     rngs=None if rng is None else {'dropout': rng})


def autoencode(config, params, batch, rng=None):
  """Encode, quantize (straight-through) and decode a batch, teacher-forced.

  -> dict: nll float[N, S] per frame, e / q float[N, P, D], codes int32[N, P],
  pattern_mask float[N, P], seg (frame_decoder.Segments), info, model, h.
  """
  info, model, seg = _setup(config, params, batch)
  e, lengths = _apply(model, params, seg.x_enc, seg.mask, method=VQVAE.encode)
  codes, q = vq.nearest(e, params['codebook'])
  h = model.apply({'params': params}, vq.straight_through(e, q), lengths, seg.x_prev,
                  deterministic=rng is None, rngs=None if rng is None else {'dropout': rng},
                  method=VQVAE.decode_hidden)
  nll = frame_decoder.output_nll(model, params, info, seg.target, h, rng)
  pattern_mask = (jnp.arange(e.shape[1]) < lengths[:, None]).astype(jnp.float32)
  return dict(nll=nll, e=e, q=q, codes=codes, pattern_mask=pattern_mask, seg=seg, info=info,
              model=model, h=h)


def init(config, rng, example_batch):
  """-> TrainState; model_state holds the codebook's moving-average statistics."""
  info = frame_decoder.slot_info(config, example_batch)
  model = make_model(config, info)
  b, s = example_batch['roll'].shape[0], config.model.segment_steps
  din = heads.input_size(config, info) if info else NUM_KEYS + 1
  x = jnp.zeros((b, s, din))
  target = (jnp.zeros((b, s, info.num_slots), jnp.int32) if info
            else jnp.zeros((b, s, NUM_KEYS), bool))
  params = model.init(rng, x, jnp.ones((b, s)), x, target)['params']
  return common.create_state(params, config.train, vq.init_stats(params['codebook']))


def train_step(config, state, batch, rng):
  """Reconstruction NLL per frame + commitment (+ codebook loss in 'gradient' mode),
  then the codebook's statistics (and, in 'ema' mode, the codebook) and dead-code
  restarts, over the global batch."""
  m = config.model

  def loss_fn(params):
    out = autoencode(config, params, batch, jax.random.fold_in(rng, 0))
    seg, pmask = out['seg'], out['pattern_mask']
    frames = jnp.maximum(jnp.sum(seg.mask), 1.0)
    recon = jnp.sum(out['nll'] * seg.mask) / frames
    codebook_loss, commitment = vq.losses(out['e'], out['q'], pmask)
    loss = recon + m.commitment * commitment
    if m.codebook_update == 'gradient':
      loss = loss + codebook_loss
    aux = {'recon': recon, 'commitment': commitment, 'codebook_loss': codebook_loss}
    return loss, (aux, jax.lax.stop_gradient(out['e']), out['codes'], pmask)

  (loss, (aux, e, codes, pmask)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  if m.codebook_update == 'ema':  # The codebook moves only with its statistics.
    grads = dict(grads, codebook=jnp.zeros_like(grads['codebook']))
  state, grad_norm = common.apply_gradients(state, grads, config.train)
  counts, sums = vq.batch_stats(e, codes, pmask, m.codebook_size)
  stats = vq.update_stats(state.model_state, counts, sums, m.ema_decay)
  book = vq.ema_codebook(stats) if m.codebook_update == 'ema' else state.params['codebook']
  restarted = jnp.zeros((), jnp.int32)
  if m.restart_dead_codes:
    book, stats, restarted = vq.restart_dead(book, stats, e, pmask, jax.random.fold_in(rng, 1),
                                             m.dead_code_threshold)
  state = state.replace(params=dict(state.params, codebook=book), model_state=stats)
  used = jnp.sum(counts > 0)
  return state, {'loss': loss, **aux, 'codes_used': used.astype(jnp.float32),
                 'restarted': restarted.astype(jnp.float32), 'grad_norm': grad_norm}


def _greedy_roll(params, out):
  """The decoder's most likely frame at every step, teacher-forced (the true previous
  frames and, in the heads, the true earlier slots): bool[N, S, 88]."""
  info, model = out['info'], out['model']
  logits = model.apply({'params': params}, out['h'], out['seg'].target,
                       method=VQVAE.output_logits)
  if info is None:
    return logits > 0
  masked = heads.mask_all(info, logits, out['seg'].target)
  return slots_to_frame(info, jnp.argmax(masked, -1))[0]


def eval_step(config, params, batch, rng=None):
  """Sums over whole pieces: decoder NLL, code counts, teacher-forced key accuracy."""
  del rng  # The encoder is deterministic.
  return eval_sums(config, params, autoencode(config, params, batch))


def eval_sums(config, params, out):
  """eval_step's sums from an autoencode() output (the codes' NLL: uniform prior)."""
  seg, pmask = out['seg'], out['pattern_mask']
  keys_right = jnp.sum(seg.roll == _greedy_roll(params, out), -1)
  return {'frames': jnp.sum(seg.mask), 'recon_sum': jnp.sum(out['nll'] * seg.mask),
          'patterns': jnp.sum(pmask),
          'code_counts': vq.batch_stats(out['e'], out['codes'], pmask,
                                        config.model.codebook_size)[0],
          'keys_right': jnp.sum(keys_right * seg.mask),
          'code_nll_sum': jnp.sum(pmask) * math.log(config.model.codebook_size)}


def encode(config, params, batch, rng=None):
  """Codes of every segment of whole pieces -> {'z': int32[B, n, P], 'segment_mask'}."""
  del rng
  out = autoencode(config, params, batch)
  b, n = out['seg'].rows
  return {'z': out['codes'].reshape(b, n, -1),
          'segment_mask': (out['seg'].valid > 0).reshape(b, n)}


def decode_scan(config, params, codes, rng, request, forced=None):
  """Codes int32[N, n, P] -> frame_decoder.decode_scan (output dict, log p)."""
  info = frame_decoder.slot_info(config, params=params)
  model = make_model(config, info)
  n, segs, p = codes.shape
  q = params['codebook'][codes.reshape(n * segs, p)]
  ctx = _apply(model, params, q, jnp.full((n * segs,), p), method=VQVAE.contexts)
  ctx = ctx.reshape(n, segs * p, -1)
  return frame_decoder.decode_scan(model, params, info, ctx, config.model.pattern_steps, rng,
                                   request, forced)


def decode(config, params, z, rng, request):
  """Codes int32[N, n, P] -> {'roll': bool[N, n * S, 88] (+ 'voices')}, free-running."""
  return decode_scan(config, params, z, rng, request)[0]


def interpolate_latents(config, a, b, num_points):
  """Code-space interpolation: point k keeps piece a's codes for the first 1 - k/(num_points-1)
  of the patterns and takes piece b's for the rest -> int32[num_points, n, P]."""
  del config
  flat_a, flat_b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
  cut = np.round((1 - np.linspace(0, 1, num_points)) * flat_a.size).astype(int)
  out = np.stack([np.where(np.arange(flat_a.size) < c, flat_a, flat_b) for c in cut])
  return out.reshape((num_points,) + np.asarray(a).shape).astype(np.int32)


def sample(config, params, rng, request):
  """Codes drawn uniformly (this stage's prior) -> decode -> request.num_steps frames.

  New pieces worth hearing come from the learnt prior (vqvae_prior)."""
  m = config.model
  segs = -(-request.num_steps // m.segment_steps)
  codes = jax.random.randint(jax.random.fold_in(rng, 1),
                             (request.num_pieces, segs, m.segment_steps // m.pattern_steps),
                             0, m.codebook_size)
  out = decode(config, params, codes, jax.random.fold_in(rng, 2), request)
  return {k: v[:, :request.num_steps] for k, v in out.items()}
