"""Voice-leading rules at sampling time: a constrained autoregressive model of frames.

The slot heads (heads.py) choose a frame's voices one after another. When head j
chooses its class, a rule between its voice and a voice already chosen in this
frame (given both voices' pitches in the previous frame) can be applied exactly:
each class c gets v_j(c), the number of rules it would break, and the head's
logits become

  soft (config.sample.rule_penalty = lambda, finite > 0): logits - lambda * v_j
  hard (rule_penalty = inf): the logits restricted to the classes with the fewest
       violations (v_j(c) = 0 where any pitch is legal), -1e9 elsewhere

then renormalized, so the constrained model is again an autoregressive model with
exact conditionals: teacher-forced scoring (`apply_all` on the mask_all logits)
gives the same frame probabilities as the step-by-step sampler (`make_adjust` in
heads.choose_slots_with_rules). A rest (voice mode) or end-of-frame (set mode)
never breaks a rule (a resting voice forms no progression), but it is no way out
either: when every pitch a head may take breaks a rule (a "fallback"), the hard
rule keeps the pitches with the fewest violations, and the rest; the sampler counts
those heads (sample output 'rule_fallbacks', per piece).

Rules (config.sample.rules, comma-separated, 'all' = every one; the definitions
are bach_jax/voice_leading.py's, shared with the metrics, see RULES there):
  parallels  parallel fifths and octaves / unisons between any two voices
  hidden     hidden fifths and octaves between the outer voices (S, B)
  crossing   a lower voice above a higher one, any two voices (so adjacent ones)
  spacing    more than an octave between S-A or A-T
  range      a pitch outside its voice's range (voice_leading.VOICE_RANGES)

Layout (frame_slots.py): voice mode needs 4 voices (S, A, T, B), slot j being voice
order[j]; set mode takes the first 4 slots as voices by pitch order (slot j is
voice j highest-first, 3 - j lowest-first), and the previous frame as 4 voices when
it holds exactly 4 notes (voice_leading.voices_from_roll, as the metrics do), else
as resting. So in set mode every transition between two 4-note frames is covered,
but a frame that ends with fewer than 4 notes was constrained as if its notes were
the upper (soprano_first) or lower (bass_first) voices of a 4-voice frame, and
slots beyond the fourth are free.
"""

import jax.numpy as jnp

from bach_jax import voice_leading as vl
from bach_jax.errors import ConfigError
from bach_jax.voice_leading import RuleSet, parse_rules as parse, rules_from_config as from_config  # pylint: disable=unused-import
from bach_jax.models.frame_slots import NEG, structural_mask

_BIG = 1 << 20  # More violations than any class can have.


def for_scoring(config):
  """from_config for teacher-forced scoring: a finite penalty only (ConfigError otherwise:
  under hard rules a held-out frame that breaks one has probability 0)."""
  rules = from_config(config)
  if rules is not None and rules.hard:
    raise ConfigError(
        'config.sample.rule_penalty: inf (hard rules) gives a held-out frame that breaks a '
        'rule probability 0 (an infinite NLL); score with a finite penalty, e.g. 3')
  return rules


def check_layout(info):
  """ConfigError unless the heads' frames can be read as 4 voices (see the docstring)."""
  if info.num_voices and info.num_voices != vl.NUM_VOICES:
    raise ConfigError(
        f'config.sample.rules: the voice-leading rules need {vl.NUM_VOICES} voices (S, A, T, '
        f'B) or set mode; this model has {info.num_voices} voices')


def slot_voices(info):
  """The voice (0 soprano .. 3 bass) of each slot, None for a slot that is no voice."""
  if info.num_voices:
    return list(info.order)
  last = vl.NUM_VOICES - 1
  return [(j if info.soprano_first else last - j) if j <= last else None
          for j in range(info.num_slots)]


def pitches(info, classes):
  """Slot classes int[...] -> MIDI pitches int32[...], REST (-1) for rest / end-of-frame."""
  return jnp.where(classes == info.num_keys, vl.REST, classes + info.lo).astype(jnp.int32)


def previous_voices(info, roll, vcls=None):
  """The previous frame as voices: int32[..., 4] pitches (REST -1), soprano first.

  roll: bool[..., 88]; vcls: int[..., 4] voice classes (voice mode). Set mode: the
  4 notes of a 4-note frame, else all REST (voice_leading.voices_from_roll).
  """
  if info.num_voices:
    return pitches(info, vcls)
  return vl.voices_from_roll(roll, xp=jnp)


def violations(info, rules, j, slots, prev, clamped=None):
  """int32[..., C]: how many rules each class of head j breaks, or None (no voice).

  slots: int[..., >= j] the classes chosen so far in this frame (slots < j are read);
  prev: int[..., 4] the previous frame's voices (previous_voices); clamped: None, or
  int[..., S] slots fixed in advance (>= 0; -1 free), whose pairs with head j count
  too when they come after it (harmonization with the soprano last: bass_first).
  """
  voices = slot_voices(info)
  b = voices[j]
  if b is None:
    return None
  cand = pitches(info, jnp.arange(info.num_classes))  # [C]
  b0 = prev[..., b, None]
  count = jnp.zeros(prev.shape[:-1] + (info.num_classes,), jnp.int32)
  add = lambda c, broken: c + broken.astype(jnp.int32)
  if 'range' in rules.names:
    count = add(count, vl.out_of_range(cand, b))
  chosen = [(i, slots[..., i]) for i in range(j)]
  if clamped is not None:  # A free slot reads as a rest: it forms no progression.
    chosen += [(i, jnp.where(clamped[..., i] >= 0, clamped[..., i], info.num_keys))
               for i in range(j + 1, info.num_slots)]
  for i, cls in chosen:
    a = voices[i]
    if a is None:
      continue
    a0, a1 = prev[..., a, None], pitches(info, cls)[..., None]
    (upper, u0, u1), (lower, l0, l1) = sorted([(a, a0, a1), (b, b0, cand)],
                                              key=lambda v: v[0])
    if 'parallels' in rules.names or 'hidden' in rules.names:
      m = vl.pair_motion(u0, u1, l0, l1)
    if 'parallels' in rules.names:
      count = add(count, vl.parallel_fifths(m) | vl.parallel_octaves(m))
    if 'hidden' in rules.names and (upper, lower) == vl.OUTER_PAIR:
      count = add(count, vl.hidden_fifths(m) | vl.hidden_octaves(m))
    if 'crossing' in rules.names:
      count = add(count, vl.crossed(u1, l1))
    if 'spacing' in rules.names and (upper, lower) in vl.SPACING_PAIRS:
      count = add(count, vl.wide_spacing(u1, l1))
  return count


def adjust(info, rules, j, logits, slots, prev, clamped=None):
  """Head j's structurally masked logits float[..., C] -> (constrained logits,
  fallback bool[...]: every pitch the head may take breaks a rule). See violations."""
  v = violations(info, rules, j, slots, prev, clamped)
  if v is None:
    return logits, jnp.zeros(logits.shape[:-1], bool)
  pitch = jnp.arange(info.num_classes) < info.num_keys
  allowed = structural_mask(info, j, slots[..., j - 1] if j else None)
  allowed = pitch if allowed is None else allowed & pitch
  fewest = jnp.min(jnp.where(allowed, v, _BIG), axis=-1)  # _BIG: no pitch allowed at all.
  fallback = (fewest > 0) & (fewest < _BIG)
  if rules.hard:
    return jnp.where(v <= fewest[..., None], logits, NEG), fallback
  return logits - rules.penalty * v.astype(logits.dtype), fallback


def make_adjust(info, rules, prev, clamped=None):
  """-> adjust(j, logits float[N, C], slots int[N, S]) for heads.choose_slots_with_rules,
  for one step whose previous frame has the voices prev int[N, 4]. clamped: None, or
  the step's clamped slots int[N, S] (-1 free) when sampling with them (violations);
  never when scoring, where the constrained model conditions on earlier slots only."""
  return lambda j, logits, slots: adjust(info, rules, j, logits, slots, prev, clamped)


def apply_all(info, rules, logits, target, prev):
  """Teacher-forced: masked logits float[..., S, C] (heads.mask_all) of target slots
  int[..., S], previous frames' voices int[..., 4] -> the constrained logits."""
  return jnp.stack([adjust(info, rules, j, logits[..., j, :], target, prev)[0]
                    for j in range(info.num_slots)], axis=-2)
