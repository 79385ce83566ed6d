"""The frame decoder of the latent families (VAE, VQ-VAE), and their segments.

A latent family cuts each piece's target frames into segments (latent.to_segments)
and turns each segment's latent into one context vector per block of frames (the
VAE's conductor gives one per bar, its flat decoder one per segment; the VQ-VAE
one per 4-step pattern). The decoder here decodes a block from its context: an
LSTM stack (the shared scan LSTM) whose state is re-initialised from the context
(tanh of a dense layer) at the block's first frame, so it cannot carry
information past the latent, and which reads the previous frame at every step
(decoder_input = False: nothing) and the context at every step too, through its
first layer's bias (LSTMLayer's `cond`: one matmul per block, not per step). Its
output is either the exact slot heads of models/heads.py or 88 independent
Bernoulli keys.

`decode_blocks` runs the blocks as one batch (teacher-forced, for the bound);
`decode_scan` runs the same model one step at a time with the state reset at
block boundaries (sampling, reconstruction) and scores forced frames the same way.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from bach_jax.models import common
from bach_jax.models import heads
from bach_jax.models import latent
from bach_jax.models import layers
from bach_jax.models.frame_slots import NUM_KEYS, _info, slots_to_frame, voice_classes
from bach_jax.models.layers import LSTMStack


class FrameDecoder(heads.FrameHeads):
  """Mixin for an nn.Module with the fields num_classes, num_slots (0: Bernoulli keys),
  num_voices, decoder_hidden, decoder_layers, decoder_input, dropout_rate, embed_dim,
  head_hidden, autoregressive, dtype; call setup_decoder() from its setup()."""

  def setup_decoder(self):
    self.decoder_init = layers.dense(2 * self.decoder_layers * self.decoder_hidden, self.dtype)
    self.dec = LSTMStack(self.decoder_hidden, self.decoder_layers, self.dropout_rate, self.dtype)
    self.drop = nn.Dropout(self.dropout_rate)
    if self.num_slots:
      self.setup_heads()
    else:
      self.out = layers.dense(NUM_KEYS, self.dtype)

  def init_carry(self, ctx):
    """ctx: float[M, C] -> the decoder's initial (h, c) per layer, from tanh(dense)."""
    hc = jnp.tanh(self.decoder_init(ctx)).reshape(
        ctx.shape[0], self.decoder_layers, 2, self.decoder_hidden)
    return tuple((hc[:, i, 0], hc[:, i, 1]) for i in range(self.decoder_layers))

  def decode_blocks(self, ctx, block, x_prev, deterministic=True):
    """Teacher-forced. ctx: float[N, U, C] one per block of `block` steps; x_prev:
    float[N, U * block, Din] the previous frames -> hidden float[N, U * block, H]."""
    n, u = ctx.shape[:2]
    ctx = ctx.reshape(n * u, -1)
    inputs = self._inputs(x_prev.reshape(n * u, block, -1))
    h, _ = self.dec(inputs, self.init_carry(ctx), deterministic=deterministic, cond=ctx)
    return h.reshape(n, u * block, -1)

  def _inputs(self, x_prev):
    """The decoder's step inputs: the previous frames, or one zero column without them."""
    return x_prev if self.decoder_input else jnp.zeros(x_prev.shape[:-1] + (1,))

  def decode_step(self, x_prev, ctx, carry):
    """One step. x_prev: float[N, Din]; ctx: float[N, C] -> (h float[N, H], carry)."""
    h, carry = self.dec(self._inputs(x_prev[:, None]), carry, cond=ctx)
    return h[:, 0], carry

  def output_logits(self, h, target, deterministic=True):
    """h: float[..., H] -> [..., S, C] (heads, teacher-forced on target) or [..., 88]."""
    if self.num_slots:
      return self.all_head_logits(h, target, deterministic)
    return self.out(h)


def slot_info(config, batch=None, params=None):
  """The heads' slot info (frame_slots._Info), or None for per-key Bernoulli output."""
  if config.model.output == 'bernoulli':
    return None
  return _info(config, batch, params)


def slot_fields(info):
  """(num_classes, num_slots, num_voices) of a decoder module for slot_info's result."""
  return (info.num_classes, info.num_slots, info.num_voices) if info else (0, 0, 0)


class Segments:
  """A batch cut into segments of S target frames: N = B * n rows.

  Attributes: x_enc, x_prev float[N, S, Din] (the frames, and the previous frames,
  embedded by the model's embed_inputs); target int32[N, S, slots] or bool[N, S,
  88]; roll bool[N, S, 88] the target frames; mask float[N, S]; lengths int32[N]
  (real frames, a prefix of the segment); valid float[N] (segments with a real
  frame); rows (B, n).
  """

  def __init__(self, config, model, params, info, batch):
    s = config.model.segment_steps
    embed = lambda *a: model.apply({'params': params}, *a, method=model.embed_inputs)
    if info is not None:
      roll_in, start_in, vcls_in, target = heads.frame_inputs_targets(info, batch)
      voices = batch.get('voices') if info.num_voices else None
      vcls_t = None if voices is None else voice_classes(info, voices[:, 1:])
    else:
      roll_in, start_in = batch['roll'][:, :-1], common.start_flags(batch)[:, :-1]
      target, vcls_in, vcls_t = batch['roll'][:, 1:], None, None
    roll_t = batch['roll'][:, 1:]
    x_prev = embed(roll_in, start_in, vcls_in)
    x_enc = embed(roll_t, jnp.zeros(roll_t.shape[:-1], bool), vcls_t)
    flat = lambda a: latent.to_segments(a, s).reshape((-1, s) + a.shape[2:])
    self.rows = (roll_t.shape[0], -(-roll_t.shape[1] // s))
    self.x_prev, self.x_enc, self.target = flat(x_prev), flat(x_enc), flat(target)
    self.roll, self.mask = flat(roll_t), flat(common.target_mask(batch))
    self.lengths = jnp.sum(self.mask, -1).astype(jnp.int32)
    self.valid = (self.lengths > 0).astype(jnp.float32)


def output_nll(model, params, info, target, h, rng=None):
  """-log p(frame | decoder state) per step: float[N, S] from hidden h float[N, S, H]."""
  logits = model.apply({'params': params}, h, target, deterministic=rng is None,
                       rngs=None if rng is None else {'dropout': rng},
                       method=FrameDecoder.output_logits)
  if info is None:
    return common.bernoulli_nll(logits, target)
  return heads.slot_nll(heads.mask_all(info, logits, target), target)


def decode_scan(model, params, info, ctx, block, rng, request, forced=None):
  """The step-by-step decoder: one lax.scan over U * block steps.

  ctx: float[N, U, C], one context per block of `block` steps, in time order.
  forced: frames to clamp instead of sampling: slot classes int32[N, T, slots]
  (heads; -1 samples a slot) or bool[N, T, 88] (Bernoulli). request.temperature /
  top_k / top_p filter the output distributions; top_k = 1 is greedy (Bernoulli
  keys: on when p > 0.5).
  -> ({'roll': bool[N, T, 88] (+ 'voices' int32[N, T, V])}, log p float[N, T] of each
  chosen frame under the unfiltered model: forcing the data scores it).
  """
  apply = lambda *a, method: model.apply({'params': params}, *a, method=method)
  n, u = ctx.shape[:2]
  steps = u * block
  ctx = jnp.swapaxes(ctx, 0, 1)  # [U, N, C]
  inits = jax.vmap(lambda c: apply(c, method=FrameDecoder.init_carry))(ctx)
  vcls0 = (jnp.full((n, info.num_voices), info.num_keys, jnp.int32)
           if info and info.num_voices else None)
  if forced is None:
    forced = jnp.full((n, steps, info.num_slots if info else 1), -1, jnp.int32)

  def step(state, inputs):
    carry, roll_prev, vcls_prev, t = state
    force, key = inputs
    b = t // block
    carry = jax.tree.map(lambda i, c: jnp.where(t % block == 0, i[b], c), inits, carry)
    x = apply(roll_prev, jnp.broadcast_to(t == 0, (n,)), vcls_prev, method=model.embed_inputs)
    h, carry = apply(x, ctx[b], carry, method=FrameDecoder.decode_step)
    if info is None:
      logits = apply(h, None, method=FrameDecoder.output_logits)
      p = jax.nn.sigmoid(logits / request.temperature)
      roll = p > 0.5 if request.top_k == 1 else jax.random.bernoulli(key, p)
      if force.shape[-1] == NUM_KEYS:  # Clamped frames (the default has one column of -1).
        roll = force.astype(bool)
      return (carry, roll, None, t + 1), (roll, 0, -common.bernoulli_nll(logits, roll))
    head = lambda j, slots: apply(j, h, slots, method=FrameDecoder.head_logits)
    slots, logp = heads.choose_slots(info, head, force, key, request.temperature,
                                     request.top_k, request.top_p)
    roll, vcls = slots_to_frame(info, slots)
    return (carry, roll, vcls, t + 1), (roll, vcls if info.num_voices else 0, logp)

  state = (jax.tree.map(lambda i: i[0], inits), jnp.zeros((n, NUM_KEYS), bool), vcls0,
           jnp.zeros((), jnp.int32))
  _, (rolls, vcls, logp) = jax.lax.scan(
      step, state, (jnp.swapaxes(forced, 0, 1), jax.random.split(rng, steps)))
  out = {'roll': jnp.swapaxes(rolls, 0, 1)}
  if info is not None and info.num_voices:
    vcls = jnp.swapaxes(vcls, 0, 1)
    out['voices'] = jnp.where(vcls == info.num_keys, -1, vcls + info.lo).astype(jnp.int32)
  return out, jnp.swapaxes(logp, 0, 1)


def bidirectional(fwd, bwd, x, lengths):
  """Two LSTM layers over x float[N, S, D], the second on each row reversed within its
  length (positions >= length are never read by either direction for positions < length).

  -> (per-step outputs float[N, S, 2H] (backward outputs realigned to their frames),
      final states float[N, 2H]: the forward output at length - 1 and the backward
      output at the first frame).
  """
  steps = x.shape[1]
  t = jnp.arange(steps)[None]
  rev = jnp.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)[..., None]
  hs_fwd, _ = fwd(x)
  hs_bwd = jnp.take_along_axis(bwd(jnp.take_along_axis(x, rev, axis=1))[0], rev, axis=1)
  last = jnp.clip(lengths - 1, 0, steps - 1)[:, None, None]
  final = jnp.concatenate([jnp.take_along_axis(hs_fwd, last, 1)[:, 0], hs_bwd[:, 0]], axis=-1)
  return jnp.concatenate([hs_fwd, hs_bwd], axis=-1), final
