"""Frame heads: an exact probability of a frame, slot by slot (frame_slots.py).

Shared by every family whose output is a frame's slots (lstm_attn, the VAE's
decoder with model.output = 'frame_heads'). Given a feature vector z_t per step,

  head j: logits_j = W_j relu(A_j z_t + sum_{i<j} E_{j,i}[slot_i])  (autoregressive)
          or W_j relu(A_j z_t)                                      (independent)

and p(frame) = prod_j p(slot_j | z_t, slot_<j), with the structural mask of set
mode applied to every head (frame_slots.structural_mask). The heads are a mixin
(`FrameHeads`) rather than a submodule so that the parameters keep the names
lstm_attn's checkpoints have always had (head_in_j, head_out_j, cond, in_embed).

Config keys (config.model): heads, voice_order, num_voices, max_notes,
min_pitch, max_pitch, embed_dim, head_hidden; `validate` and `check_corpus`
check them for every family that uses the heads.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from bach_jax.data import shards
from bach_jax.errors import ConfigError
from bach_jax.models import common
from bach_jax.models import layers
from bach_jax.models.frame_slots import (LOWEST_PITCH, NUM_KEYS, _mask_logits,
                                         frame_slots, voice_classes)


def require(ok, key, message):
  """ConfigError 'config.model.KEY: message' unless ok."""
  if not ok:
    raise ConfigError(f'config.model.{key}: {message}')


def validate(config):
  """Checks the heads' config.model keys; raises ConfigError naming the key."""
  m = config.model
  require(m.heads in ('autoregressive', 'independent'), 'heads',
          f"must be 'autoregressive' or 'independent', got {m.heads!r}")
  require(m.voice_order in ('soprano_first', 'bass_first'), 'voice_order',
          f"must be 'soprano_first' or 'bass_first', got {m.voice_order!r}")
  require(LOWEST_PITCH <= m.min_pitch <= LOWEST_PITCH + NUM_KEYS - 1, 'min_pitch',
          f'must be a piano key (21..108), got {m.min_pitch}')
  require(m.min_pitch <= m.max_pitch <= LOWEST_PITCH + NUM_KEYS - 1, 'max_pitch',
          f'must be in min_pitch..108, got {m.max_pitch}')
  require(m.max_notes >= 1, 'max_notes', f'must be >= 1, got {m.max_notes}')
  require(m.num_voices >= -1, 'num_voices', 'must be -1 (from the corpus), 0 (set mode) or V')
  require(m.embed_dim >= 1, 'embed_dim', f'must be >= 1, got {m.embed_dim}')
  require(m.head_hidden >= 1, 'head_hidden', f'must be >= 1, got {m.head_hidden}')


def check_corpus(config, corpus):
  """Resolves model.num_voices from the corpus and checks pitches / notes per frame."""
  m = config.model
  if m.num_voices == -1:
    m.num_voices = int(corpus.num_voices or 0)
  if m.num_voices and m.num_voices != corpus.num_voices:
    raise ConfigError(
        f'config.model.num_voices={m.num_voices} but data.source={config.data.source!r} has '
        f'{corpus.num_voices} voices (use -1 to follow the corpus, 0 for set mode)')
  aug = int(config.data.augment_transpose)
  most, lo, hi = 0, 999, -1
  for pieces in corpus.splits.values():  # From the index: no piece is read.
    if len(pieces):
      lowest = shards.stats(pieces, 'lowest')
      most = max(most, int(shards.stats(pieces, 'max_notes').max()))
      if (lowest >= 0).any():
        lo = min(lo, int(lowest[lowest >= 0].min()))
        hi = max(hi, int(shards.stats(pieces, 'highest').max()))
  if hi >= 0 and (lo - aug < m.min_pitch or hi + aug > m.max_pitch):
    raise ConfigError(
        f'config.model.min_pitch/max_pitch: {m.min_pitch}..{m.max_pitch} does not cover the '
        f'corpus pitches {lo}..{hi} (+-{aug} of data.augment_transpose)')
  if not m.num_voices and most > m.max_notes:
    raise ConfigError(
        f'config.model.max_notes={m.max_notes}: a frame of data.source={config.data.source!r} '
        f'has {most} notes; set model.max_notes >= {most}')


class FrameHeads:
  """Mixin for an nn.Module with the fields num_classes, num_slots, num_voices,
  embed_dim, head_hidden, autoregressive and a dropout module `self.drop`; call
  `setup_input_embed()` and `setup_heads()` from its setup() (two calls, so that a
  module can keep the order in which its parameters were always created: it
  decides their initial values)."""

  def setup_input_embed(self):
    if self.num_voices:
      self.in_embed = self.param('in_embed', nn.initializers.normal(0.1),
                                 (self.num_voices, self.num_classes, self.embed_dim))

  def setup_heads(self):
    self.head_in = [layers.dense(self.head_hidden, self.dtype) for _ in range(self.num_slots)]
    self.head_out = [layers.dense(self.num_classes, self.dtype) for _ in range(self.num_slots)]
    if self.autoregressive and self.num_slots > 1:
      self.cond = self.param('cond', nn.initializers.normal(0.1), (
          self.num_slots, self.num_slots - 1, self.num_classes, self.head_hidden))

  def embed_inputs(self, roll, start, vcls=None):
    """roll: [..., 88]; start: bool[...]; vcls: int[..., V] voice classes -> float[..., D].

    D = input_size(): the 88 keys, the start flag and, in voice mode, an
    embedding of each voice's class.
    """
    x = common.frame_features(roll, start)
    if self.num_voices:
      e = self.in_embed[jnp.arange(self.num_voices), vcls]  # [..., V, E]
      x = jnp.concatenate([x, e.reshape(e.shape[:-2] + (-1,))], axis=-1)
    return x

  def head_logits(self, j, z, prev, deterministic=True):
    """Head j. z: float[..., Dz]; prev: int[..., >= j] earlier slots -> float[..., C]."""
    u = self.head_in[j](z)
    if self.autoregressive:
      for i in range(j):
        u = u + self.cond[j, i][prev[..., i]]
    u = self.drop(nn.relu(u), deterministic=deterministic)
    return self.head_out[j](u)

  def all_head_logits(self, z, slots, deterministic=True):
    """Teacher-forced. z: float[..., Dz]; slots: int[..., S] targets -> float[..., S, C]."""
    return jnp.stack([self.head_logits(j, z, slots, deterministic)
                      for j in range(self.num_slots)], axis=-2)


def input_size(config, info):
  """Width of FrameHeads.embed_inputs' output: 88 keys, the start flag, voice embeddings."""
  return NUM_KEYS + 1 + info.num_voices * config.model.embed_dim


def frame_inputs_targets(info, batch):
  """Next-frame split of a batch for slot models.

  -> (roll_in bool[B, T-1, 88], start_in bool[B, T-1], vcls_in int32[B, T-1, V] or None,
      target slots int32[B, T-1, S]).
  """
  roll, voices = batch['roll'], batch.get('voices') if info.num_voices else None
  vcls = None if voices is None else voice_classes(info, voices[:, :-1])
  target = frame_slots(info, roll[:, 1:], None if voices is None else voices[:, 1:])
  return roll[:, :-1], common.start_flags(batch)[:, :-1], vcls, target


def mask_all(info, logits, target):
  """Applies the structural mask to teacher-forced logits float[..., S, C]."""
  prev = jnp.concatenate([target[..., :1], target[..., :-1]], axis=-1)
  return jnp.stack([_mask_logits(info, j, logits[..., j, :], prev[..., j])
                    for j in range(info.num_slots)], axis=-2)


def slot_nlls(logits, target):
  """-log p(slot_j | ...) of every slot from masked logits float[..., S, C] and slots
  int[..., S] -> float[..., S]."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]


def slot_nll(logits, target):
  """-log p(frame) from masked logits float[..., S, C] and slots int[..., S] -> float[...]."""
  return jnp.sum(slot_nlls(logits, target), axis=-1)


def choose_slots(info, head_fn, forced, key, temperature=1.0, top_k=0, top_p=1.0,
                 counted=None):
  """One frame, head by head: -> (slots int32[N, S], log p(slots) float[N]).

  head_fn(j, slots) -> logits float[N, C] of head j given the slots chosen so far.
  forced[:, j] >= 0 clamps slot j, -1 samples it (temperature / top-k / top-p);
  the log-probability is the unfiltered model's, so forcing every slot scores data.
  counted: bool[N, S], the slots whose log-probability is summed (None: all).
  """
  return _choose(info, head_fn, forced, key, temperature, top_k, top_p, None, counted)[:2]


def choose_slots_with_rules(info, head_fn, forced, key, adjust, temperature=1.0, top_k=0,
                            top_p=1.0, counted=None):
  """choose_slots under voice-leading rules (models/rules.py): each head's masked logits
  go through adjust(j, logits, slots) -> (logits float[N, C], fallback bool[N]) before
  they are filtered and sampled, and log p is the constrained model's (its teacher-forced
  twin: mask_all then rules.apply_all). Clamped slots are kept as they are.

  -> (slots int32[N, S], log p(slots) float[N], fallbacks int32[N]: sampled heads at
  which every pitch broke a rule).
  """
  return _choose(info, head_fn, forced, key, temperature, top_k, top_p, adjust, counted)


def _choose(info, head_fn, forced, key, temperature, top_k, top_p, adjust=None, counted=None):
  slots = jnp.zeros(forced.shape, jnp.int32)
  logp = jnp.zeros(forced.shape[:1], jnp.float32)
  fallbacks = jnp.zeros(forced.shape[:1], jnp.int32) if adjust is not None else None
  for j in range(info.num_slots):
    logits = _mask_logits(info, j, head_fn(j, slots), slots[:, j - 1] if j else None)
    if adjust is not None:
      logits, fallback = adjust(j, logits, slots)
      fallbacks += (fallback & (forced[:, j] < 0)).astype(jnp.int32)
    drawn = jax.random.categorical(
        jax.random.fold_in(key, j), common.filter_logits(logits, temperature, top_k, top_p))
    choice = jnp.where(forced[:, j] >= 0, forced[:, j], drawn).astype(jnp.int32)
    slots = slots.at[:, j].set(choice)
    lp = jnp.take_along_axis(jax.nn.log_softmax(logits), choice[:, None], -1)[:, 0]
    logp += lp if counted is None else jnp.where(counted[:, j], lp, 0.0)
  return slots, logp, fallbacks
