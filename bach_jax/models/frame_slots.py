"""Frames <-> slots: how a frame becomes the sequence of classes the heads emit.

A slot's classes are the pitches min_pitch..max_pitch (class k = pitch
min_pitch + k) and one more class K = REST (voice mode) or end-of-frame (set
mode). Voice mode: slot j is voice `order[j]`. Set mode: the frame's notes
sorted by pitch, with a structural mask that allows only strictly monotone
pitches and, after end-of-frame, only end-of-frame, so every note set has
exactly one path (see lstm_attn.py's docstring).
"""

import jax
import jax.numpy as jnp

from bach_jax.errors import ConfigError

NUM_KEYS = 88
LOWEST_PITCH = 21
NEG = -1e9  # Logit of a forbidden class (finite: no NaN in log_softmax).
_BIG = 1 << 20


class _Info:
  """Static facts derived from the config (and the batch or params for num_voices)."""

  def __init__(self, config, num_voices):
    m = config.model
    self.lo = int(m.min_pitch)
    self.num_keys = int(m.max_pitch) - self.lo + 1  # K; class K = REST / end-of-frame.
    self.num_classes = self.num_keys + 1
    self.num_voices = int(num_voices)
    self.num_slots = self.num_voices or int(m.max_notes)
    self.soprano_first = m.voice_order == 'soprano_first'
    order = list(range(self.num_voices))
    self.order = order if self.soprano_first else order[::-1]  # Slot j <- voice order[j].


def _info(config, batch=None, params=None):
  n = config.model.num_voices
  if n < 0 and batch is not None:
    n = batch['voices'].shape[-1] if 'voices' in batch else 0
  elif n < 0 and params is not None:
    n = params['in_embed'].shape[0] if 'in_embed' in params else 0
  elif n < 0:
    raise ConfigError('config.model.num_voices: unresolved (-1); run check_corpus')
  return _Info(config, n)


# ------------------------------------------------------ frames <-> slots

def voice_classes(info, voices):
  """int[..., V] MIDI pitches (REST -1) -> int32[..., V] classes (REST -> K)."""
  voices = jnp.asarray(voices, jnp.int32)
  return jnp.where(voices < 0, info.num_keys, jnp.clip(voices - info.lo, 0, info.num_keys - 1))


def frame_slots(info, roll, voices=None):
  """A frame's slot classes in head order: int32[..., S].

  roll: bool[..., 88]; voices: int[..., V] (voice mode). In set mode, keys
  beyond the first max_notes in the chosen order are dropped (check_corpus
  makes sure a corpus has none).
  """
  if info.num_voices:
    return voice_classes(info, voices)[..., jnp.array(info.order)]
  cls = jnp.arange(NUM_KEYS) + LOWEST_PITCH - info.lo
  ok = roll & (cls >= 0) & (cls < info.num_keys)
  key = jnp.where(ok, -cls if info.soprano_first else cls, _BIG)
  s = jnp.sort(key, axis=-1)[..., :info.num_slots]
  return jnp.where(s == _BIG, info.num_keys, jnp.abs(s)).astype(jnp.int32)


def slots_to_frame(info, slots):
  """int[..., S] slot classes -> (roll bool[..., 88], voice classes int32[..., V] or None)."""
  idx = jnp.where(slots == info.num_keys, -1, slots + info.lo - LOWEST_PITCH)
  roll = jnp.any(jax.nn.one_hot(idx, NUM_KEYS, dtype=jnp.bool_), axis=-2)
  if not info.num_voices:
    return roll, None
  inverse = [info.order.index(v) for v in range(info.num_voices)]
  return roll, slots[..., jnp.array(inverse)]


def structural_mask(info, j, prev):
  """bool[..., C]: classes slot j may take after slot j-1 = prev (int[...]); None = all."""
  if info.num_voices or j == 0:
    return None
  k = jnp.arange(info.num_classes)
  p = prev[..., None]
  keys = (k > p) if not info.soprano_first else (k < p)
  return jnp.where(p == info.num_keys, k == info.num_keys, keys | (k == info.num_keys))


def _mask_logits(info, j, logits, prev):
  allowed = structural_mask(info, j, prev)
  return logits if allowed is None else jnp.where(allowed, logits, NEG)
