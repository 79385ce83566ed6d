"""Bach's voice-leading rules on 4 voices (S, A, T, B): counts and rates per piece.

Pure NumPy, vectorized over pieces and time. Voices are `int[N, T, 4]` MIDI
pitches (REST = -1), voice 0 the soprano, with `lengths: int[N]` (frames at or
beyond a piece's length are ignored); `voices_from_roll` guesses them from the
frames of a piano-roll that hold exactly 4 notes. A rate with no occasion
(e.g. no voice transition) is NaN for that piece, never a made-up 0.

A transition of a pair of voices (upper u, lower l) is a step t-1 -> t where
both voices sound in both frames and at least one of them changes pitch (a
held or repeated note is not a motion). With du, dl the melodic steps and
i0, i1 = |u - l| the vertical intervals (semitones) before and after:
  similar motion: du * dl > 0; contrary motion: du * dl < 0.
  parallel fifth: similar or contrary motion, i0 % 12 == i1 % 12 == 7
    (compound fifths and anti-parallel fifths included), any pair of voices.
  parallel octave (unisons included): contrary motion with i0 % 12 == i1 % 12
    == 0, or similar motion from unison to unison or from a (compound) octave
    to a (compound) octave. Similar motion from a unison to an octave is not
    parallel but a hidden octave (as in music21, below).
  hidden fifth / octave: outer voices only (soprano, bass), similar motion
    into a fifth (i1 % 12 == 7) / an octave or unison (i1 % 12 == 0) that is
    not a parallel fifth / octave, with the soprano moving by at least
    `soprano_leap` semitones (default 3: a leap, more than a whole step).
  voice crossing: per frame, a pair (u above l in the score) with both
    sounding and l > u (strictly; a unison is not a crossing).
  spacing: per frame, more than an octave between soprano and alto or
    between alto and tenor (tenor-bass may be wider).
  out of range: a sounding note outside its voice's range, VOICE_RANGES:
    soprano 60..81 (C4-A5), alto 53..74 (F3-D5), tenor 48..67 (C3-G4), bass
    40..60 (E2-C4), inclusive.
  large leap: a voice moving by more than an octave between frames in
    which it sounds.
Rates are per 100 of their own occasions: parallels per 100 pair
transitions (all 6 pairs), hidden intervals per 100 outer-pair transitions,
crossings per 100 pair-frames with both voices sounding, spacing per 100
(S-A or A-T) pair-frames with both sounding, range per 100 sounding
voice-frames, leaps per 100 voice moves (a voice changing pitch between two
sounding frames).

The rules themselves (pair_motion, parallel_fifths, parallel_octaves,
hidden_fifths, hidden_octaves, crossed, wide_spacing, out_of_range) use only
array operators, so they work on NumPy and on JAX arrays alike: the sampler's
voice-leading rules (bach_jax/models/rules.py, config.sample.rules, named in
RULES) call the same functions on each candidate pitch, so a rule means the same
thing in the metric and in the sampler.

music21 (voiceLeading.VoiceLeadingQuartet, the oracle of the tests) works on
spelled intervals; these rules are its rules on semitones. Ours agree with its
parallelFifth, parallelUnisonOrOctave, hiddenFifth and hiddenOctave (these two
with soprano_leap=1: music21 asks for no leap) and voiceCrossing whenever every
interval of 0, 7 or 12 semitones (mod 12) is spelled as a perfect unison, fifth
or octave and no interval is spelled as an augmented or diminished unison,
fifth or octave (true of white keys). The one case that matters in practice:
a tritone moving to a fifth in similar motion is a hidden fifth here, but
music21 counts it only if the tritone is spelled as an augmented fourth (a
diminished fifth is "generically parallel" to the fifth there, so neither
parallel nor hidden). music21's parallelOctave alone excludes unisons; its
hiddenOctave includes arrivals on a unison (the simpleName of P8 is 'P1'), as
ours does.
"""

import dataclasses
import math

import numpy as np

from bach_jax.data.pianoroll import LOWEST_PITCH, NUM_KEYS, REST
from bach_jax.errors import ConfigError

NUM_VOICES = 4
# Inclusive MIDI ranges of soprano, alto, tenor, bass.
VOICE_RANGES = ((60, 81), (53, 74), (48, 67), (40, 60))
SOPRANO_LEAP = 3  # Semitones the soprano must move for a hidden fifth/octave.


def _per_100(num, den) -> np.ndarray:
  """100 * num / den as float, NaN where den == 0."""
  num = np.asarray(num, dtype=np.float64)
  den = np.asarray(den, dtype=np.float64)
  with np.errstate(divide='ignore', invalid='ignore'):
    return np.where(den > 0, 100.0 * num / np.where(den > 0, den, 1.0), np.nan)


# The sampler's rules (config.sample.rules) -> the rates of VOICE_LEADING_RATES that
# each one forbids (pairs as counted there: parallels and crossings between any two
# voices, hidden intervals between the outer voices, spacing within SPACING_PAIRS).
RULES = {
    'parallels': ('parallel_fifths', 'parallel_octaves'),
    'hidden': ('hidden_fifths', 'hidden_octaves'),
    'crossing': ('voice_crossing',),
    'spacing': ('spacing',),
    'range': ('out_of_range',),
}
OUTER_PAIR = (0, NUM_VOICES - 1)  # (soprano, bass): the pair of the hidden intervals.
SPACING_PAIRS = ((0, 1), (1, 2))  # S-A, A-T: at most an octave apart.


def voices_from_roll(rolls, xp=np):
  """bool[N, T, 88] -> int[N, T, 4]: the 4 pitches of each 4-note frame, highest first.

  Frames without exactly 4 notes are REST in every voice. Any leading shape works
  (bool[..., 88] -> int[..., 4]); xp: the array module (numpy, or jax.numpy: int32).
  """
  rolls = xp.asarray(rolls, dtype=bool)
  keys = xp.where(rolls, xp.arange(NUM_KEYS), -1)
  top = -xp.sort(-keys, axis=-1)[..., :NUM_VOICES]
  four = rolls.sum(axis=-1, keepdims=True) == NUM_VOICES
  return xp.where(four, top + LOWEST_PITCH, REST).astype(np.int64 if xp is np else 'int32')


# The rules on (broadcastable) arrays of MIDI pitches, REST = -1: operators only, so
# NumPy and JAX arrays both work (the metric below, and models/rules.py's sampler).

def pair_motion(u0, u1, l0, l1) -> dict:
  """Motion of a pair of voices (upper u above lower l in the score) from frame t-1 to t.

  Args: the pitches u0, u1 (upper voice before, after) and l0, l1 (lower voice).

  Returns:
    bool 'moves', 'similar', 'contrary' and int 'before', 'after' (vertical
    intervals |u - l|) and 'step' (the upper voice's motion |u1 - u0|), of the
    arguments' broadcast shape.
  """
  sound = (u0 != REST) & (u1 != REST) & (l0 != REST) & (l1 != REST)
  du, dl = u1 - u0, l1 - l0
  return {'moves': sound & ((du != 0) | (dl != 0)),
          'similar': sound & (du * dl > 0), 'contrary': sound & (du * dl < 0),
          'before': abs(u0 - l0), 'after': abs(u1 - l1), 'step': abs(du)}


def _pair_motion(voices: np.ndarray, upper: int, lower: int) -> dict:
  """pair_motion of voices upper, lower of int[N, T, 4] over t-1 -> t: [N, T-1] each."""
  return pair_motion(voices[:, :-1, upper], voices[:, 1:, upper],
                     voices[:, :-1, lower], voices[:, 1:, lower])


def parallel_fifths(m: dict):
  """bool: a parallel fifth (module docstring) in the motion m of pair_motion."""
  fifths = (m['before'] % 12 == 7) & (m['after'] % 12 == 7)
  return (m['similar'] | m['contrary']) & fifths


def parallel_octaves(m: dict):
  """bool: parallel octaves or unisons (module docstring) in the motion m."""
  b, a = m['before'], m['after']
  unisons = (b == 0) & (a == 0)
  octaves = (b > 0) & (a > 0) & (b % 12 == 0) & (a % 12 == 0)
  return (m['similar'] & (unisons | octaves)) | (m['contrary'] & (b % 12 == 0) & (a % 12 == 0))


def hidden_fifths(m: dict, soprano_leap: int = SOPRANO_LEAP):
  """bool: similar motion into a fifth, not a parallel one, the upper voice leaping."""
  into = m['similar'] & (m['step'] >= soprano_leap)
  return into & (m['after'] % 12 == 7) & ~parallel_fifths(m)


def hidden_octaves(m: dict, soprano_leap: int = SOPRANO_LEAP):
  """bool: similar motion into an octave or unison, not a parallel one, the upper leaping."""
  into = m['similar'] & (m['step'] >= soprano_leap)
  return into & (m['after'] % 12 == 0) & ~parallel_octaves(m)


def crossed(upper, lower):
  """bool: both sound and the lower voice is strictly above the upper one."""
  return (upper != REST) & (lower != REST) & (lower > upper)


def wide_spacing(upper, lower):
  """bool: both sound more than an octave apart (upper above lower)."""
  return (upper != REST) & (lower != REST) & (upper - lower > 12)


def out_of_range(pitch, voice: int):
  """bool: a sounding pitch outside VOICE_RANGES[voice]."""
  low, high = VOICE_RANGES[voice]
  return (pitch != REST) & ((pitch < low) | (pitch > high))


def voice_leading_counts(voices, lengths, soprano_leap: int = SOPRANO_LEAP) -> dict:
  """Counts of voice-leading events and of their occasions (module docstring).

  Args:
    voices: int[N, T, 4] MIDI pitches (REST = -1), soprano first.
    lengths: int[N] frames of each piece.
    soprano_leap: semitones the soprano must move for a hidden fifth/octave
      (1: any motion, as music21 counts them).

  Returns:
    name -> int[N]: parallel_fifths, parallel_octaves, pair_transitions,
    hidden_fifths, hidden_octaves, outer_transitions, voice_crossings,
    pair_frames, spacing, spacing_frames, out_of_range, voice_frames,
    large_leaps, voice_moves.
  """
  voices = np.asarray(voices, dtype=np.int64)
  if voices.ndim != 3 or voices.shape[2] != NUM_VOICES:
    raise ValueError(f'voices must be int[N, T, {NUM_VOICES}], got {voices.shape}')
  valid = np.arange(voices.shape[1])[None, :] < np.asarray(lengths)[:, None]
  voices = np.where(valid[..., None], voices, REST)
  sounding = voices != REST
  counts = {name: np.zeros(voices.shape[0], dtype=np.int64) for name in (
      'parallel_fifths', 'parallel_octaves', 'pair_transitions', 'voice_crossings',
      'pair_frames', 'spacing', 'spacing_frames')}
  for upper in range(NUM_VOICES):
    for lower in range(upper + 1, NUM_VOICES):
      m = _pair_motion(voices, upper, lower)
      counts['parallel_fifths'] += parallel_fifths(m).sum(axis=1)
      counts['parallel_octaves'] += parallel_octaves(m).sum(axis=1)
      counts['pair_transitions'] += m['moves'].sum(axis=1)
      u, l = voices[..., upper], voices[..., lower]
      both = sounding[..., upper] & sounding[..., lower]
      counts['voice_crossings'] += crossed(u, l).sum(axis=1)
      counts['pair_frames'] += both.sum(axis=1)
      if (upper, lower) in SPACING_PAIRS:
        counts['spacing'] += wide_spacing(u, l).sum(axis=1)
        counts['spacing_frames'] += both.sum(axis=1)
  outer = _pair_motion(voices, *OUTER_PAIR)
  counts['hidden_fifths'] = hidden_fifths(outer, soprano_leap).sum(axis=1)
  counts['hidden_octaves'] = hidden_octaves(outer, soprano_leap).sum(axis=1)
  counts['outer_transitions'] = outer['moves'].sum(axis=1)
  counts['out_of_range'] = sum(out_of_range(voices[..., v], v).sum(axis=1)
                               for v in range(NUM_VOICES))
  counts['voice_frames'] = sounding.sum(axis=(1, 2))
  steps = voices[:, 1:] - voices[:, :-1]
  moved = sounding[:, 1:] & sounding[:, :-1] & (steps != 0)
  counts['large_leaps'] = (moved & (np.abs(steps) > 12)).sum(axis=(1, 2))
  counts['voice_moves'] = moved.sum(axis=(1, 2))
  return counts


# Rate name -> (count, occasions) of voice_leading_counts.
VOICE_LEADING_RATES = {
    'parallel_fifths': ('parallel_fifths', 'pair_transitions'),
    'parallel_octaves': ('parallel_octaves', 'pair_transitions'),
    'hidden_fifths': ('hidden_fifths', 'outer_transitions'),
    'hidden_octaves': ('hidden_octaves', 'outer_transitions'),
    'voice_crossing': ('voice_crossings', 'pair_frames'),
    'spacing': ('spacing', 'spacing_frames'),
    'out_of_range': ('out_of_range', 'voice_frames'),
    'large_leaps': ('large_leaps', 'voice_moves'),
}


def voice_leading(voices, lengths, soprano_leap: int = SOPRANO_LEAP) -> dict:
  """Voice-leading rates per 100 occasions (VOICE_LEADING_RATES), NaN without occasions.

  Args:
    voices: int[N, T, 4] MIDI pitches (REST = -1), soprano first.
    lengths: int[N] frames of each piece.
    soprano_leap: see voice_leading_counts.

  Returns:
    name -> float[N].
  """
  counts = voice_leading_counts(voices, lengths, soprano_leap)
  return {name: _per_100(counts[num], counts[den])
          for name, (num, den) in VOICE_LEADING_RATES.items()}


# config.sample.rules / rule_penalty: which rules the sampler applies (models/rules.py).


@dataclasses.dataclass(frozen=True)
class RuleSet:
  """Rules to apply (names of voice_leading.RULES) and the penalty per violation
  (nats; inf = hard). Hashable: it is part of the compiled sampler."""
  names: tuple
  penalty: float

  @property
  def hard(self):
    return math.isinf(self.penalty)

  def describe(self):
    return f'{",".join(self.names)} ({"hard" if self.hard else f"{self.penalty:g} nats"})'


def parse_rules(rules, penalty):
  """config.sample.rules / rule_penalty values -> RuleSet, or None for '' (off).

  ConfigError naming the key for an unknown rule or a penalty that is not > 0.
  """
  names = [r.strip() for r in str(rules or '').split(',') if r.strip()]
  if not names:
    return None
  if 'all' in names:
    names = list(RULES)
  unknown = [r for r in names if r not in RULES]
  if unknown:
    raise ConfigError(
        f'config.sample.rules: unknown rule {unknown[0]!r} (known: {", ".join(RULES)}, all)')
  try:
    penalty = float(penalty)
  except (TypeError, ValueError):
    penalty = float('nan')
  if not penalty > 0:
    raise ConfigError(
        f'config.sample.rule_penalty: must be > 0 (nats per violation) or inf (hard), '
        f'got {penalty!r}')
  return RuleSet(tuple(r for r in RULES if r in names), penalty)


def rules_from_config(config):
  """The RuleSet of config.sample (None when rules are off)."""
  s = config.sample
  return parse_rules(s.rules, s.rule_penalty)
