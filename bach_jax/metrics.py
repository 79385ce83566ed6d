"""Objective metrics of piano-rolls, Bach's voice-leading rules, and set-vs-set distances.

Pure NumPy/SciPy (no jax), vectorized over pieces and time: a set of pieces is a
padded batch `rolls: bool[N, T, 88]` (key k is MIDI pitch LOWEST_PITCH + k) with
`lengths: int[N]`; frames at or beyond a piece's length are ignored. `pad_pieces`
builds the batch from PianoRolls. Voices, where known, are `int[N, T, 4]` MIDI
pitches (REST = -1), voice 0 the soprano; `voices_from_roll` guesses them from
frames that hold exactly 4 notes. The grid is `steps_per_quarter` frames per
quarter; a beat is a quarter note and a bar is 4 beats (4/4 is assumed).

Notes. A note is a maximal run of frames in which one key is on: a held note
and a repeated note look the same on a roll, so a repeated note counts as one
longer note.

Undefined values are NaN, never a made-up 0: a metric with no data to average
(an empty piece, no sounding frame, no bar with both a bass and an upper note,
no voice transition...) is NaN for that piece, and `summarize` / `compare` /
`diversity` skip NaN pieces. Empty bars and beats inside a piece are data: an
empty bar uses 0 pitch classes, an empty beat counts in the empty-beat rate.

Per-piece metrics (`roll_metrics`, each float[N] unless said otherwise):
  pitch_class_histogram: float[N, 12], share of sounding note-frames per pitch
    class (C = 0), i.e. weighted by duration as in Yang & Lerch's mgeval.
  pitch_class_entropy: entropy of that histogram in bits (0..log2 12).
  used_pitch_classes: distinct pitch classes per bar, mean over the piece's
    bars (a last, partial bar counts; empty bars count as 0).
  scale_consistency: share of notes (onsets) in the best-fitting of the 24
    major / natural-minor scales (MuseGAN, Mogren's C-RNN-GAN). A natural
    minor scale has the notes of its relative major, so 12 distinct sets.
  polyphony: mean number of notes sounding per sounding frame.
  polyphony_rate: share of frames (within the length) with >= 2 notes.
  empty_beat_rate: share of beats (quarters; a last partial beat counts)
    with no note sounding.
  note_density: notes (onsets) per frame of the piece.
  mean_note_length: mean note length in quarter notes.
  qualified_note_rate: share of notes lasting >= 3/4 of a quarter, i.e.
    ceil(3 * steps_per_quarter / 4) frames (MuseGAN's 3 steps at 4 per
    quarter; every note qualifies at 1 step per quarter).
  pitch_range: highest minus lowest sounding pitch, in semitones.
  tonal_distance: per bar, the Euclidean distance between the 6-D tonal
    centroids (Harte, Sandler & Gasser 2006) of the bass chroma (the lowest
    note of each frame) and of the upper chroma (the other notes), each
    chroma summed over the bar's frames; the mean over bars having both.
  repetition: share of frames t, bar <= t < length, equal to frame t - bar
    (two silent frames are equal).

Voice leading (`voice_leading_counts` / `voice_leading`, 4 voices S, A, T, B).
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

Comparing sets (Yang & Lerch 2018, "On the evaluation of generative models in
music"): `compare(samples, reference)` takes two dicts of `evaluate_set`. For
every metric, the intra-set distances of the reference (|r_i - r_j|, or the
Euclidean norm for the histogram, over ALL ordered pairs, i = j included) and
the inter-set distances (|s_i - r_j|) are smoothed by Gaussian KDEs
(scipy.stats.gaussian_kde, bandwidth at least KDE_FLOOR_FRACTION of the spread
of both samples; a sample without variance, where gaussian_kde fails, becomes a
Gaussian of that width; at most MAX_DISTANCES distances each, subsampled with a
fixed seed), normalized on a common grid, and compared by their overlapping
area (OA, 1 = identical) and the KL divergence KL(intra || inter). Keeping
i = j in the intra-set (the paper leaves it out) makes a set compared with
itself give exactly OA 1 and KL 0. The summary `distance` ranks runs: the
mean over scalar metrics of |mean_samples - mean_ref| / std_ref, each term
capped at Z_CAP (std_ref floored at STD_FLOOR). Diversity: the mean Euclidean distance between the
pieces of a set over DIVERSITY_FEATURES standardized by the reference (see
`diversity`); `diversity_ratio` divides that of the samples by that of the
reference, and `is_collapsed` flags a ratio below COLLAPSE_RATIO.
"""

import math
import warnings
from typing import Optional, Sequence

import numpy as np
from scipy import stats

from bach_jax.data.pianoroll import LOWEST_PITCH, NUM_KEYS, REST, PianoRoll

NUM_PITCH_CLASSES = 12
BEATS_PER_BAR = 4
NUM_VOICES = 4
# Inclusive MIDI ranges of soprano, alto, tenor, bass.
VOICE_RANGES = ((60, 81), (53, 74), (48, 67), (40, 60))
SOPRANO_LEAP = 3  # Semitones the soprano must move for a hidden fifth/octave.
MAJOR_SCALE = (1, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1)
NATURAL_MINOR_SCALE = (1, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0)
# Yang & Lerch comparison.
KDE_GRID_POINTS = 512
KDE_FLOOR_FRACTION = 0.01  # Least KDE bandwidth, as a share of the distances' spread.
MAX_DISTANCES = 2048  # Distances per KDE; more pairs are subsampled (fixed seed).
STD_FLOOR = 1e-6
Z_CAP = 10.0
COLLAPSE_RATIO = 0.25
DIVERSITY_FEATURES = ('pitch_class_histogram', 'pitch_class_entropy', 'used_pitch_classes',
                      'polyphony', 'note_density', 'mean_note_length', 'pitch_range',
                      'empty_beat_rate', 'repetition')

# Key k -> pitch class, as a one-hot float[88, 12] for matrix products.
_KEY_PITCH_CLASS = (LOWEST_PITCH + np.arange(NUM_KEYS)) % NUM_PITCH_CLASSES
_KEY_TO_PC = np.eye(NUM_PITCH_CLASSES)[_KEY_PITCH_CLASS]


def _scales() -> np.ndarray:
  """float[24, 12]: the 12 major then the 12 natural-minor scales, tonic C first."""
  rows = [np.roll(template, tonic) for template in (MAJOR_SCALE, NATURAL_MINOR_SCALE)
          for tonic in range(NUM_PITCH_CLASSES)]
  return np.array(rows, dtype=np.float64)


def _tonal_centroid_matrix() -> np.ndarray:
  """float[6, 12]: Harte et al.'s projection of a chroma onto fifths, minor and major thirds."""
  pc = np.arange(NUM_PITCH_CLASSES)
  rows = []
  for radius, angle in ((1.0, 7 * np.pi / 6), (1.0, 3 * np.pi / 2), (0.5, 2 * np.pi / 3)):
    rows += [radius * np.sin(pc * angle), radius * np.cos(pc * angle)]
  return np.array(rows)


_SCALES = _scales()
_CENTROID = _tonal_centroid_matrix()


# ---------------------------------------------------------------------------- batching


def pad_pieces(pieces: Sequence[PianoRoll]):
  """PianoRolls -> (rolls: bool[N, T, 88], lengths: int[N], voices: int[N, T, V] or None).

  T is the longest piece; voices is None unless every piece has voices with
  the same V. Padding frames are silent (REST).
  """
  lengths = np.array([p.num_steps for p in pieces], dtype=np.int64)
  num_steps = int(lengths.max()) if len(pieces) else 0
  rolls = np.zeros((len(pieces), num_steps, NUM_KEYS), dtype=bool)
  for i, p in enumerate(pieces):
    rolls[i, :p.num_steps] = p.roll
  num_voices = {p.num_voices for p in pieces}
  if len(num_voices) != 1 or None in num_voices:
    return rolls, lengths, None
  voices = np.full((len(pieces), num_steps, num_voices.pop()), REST, dtype=np.int64)
  for i, p in enumerate(pieces):
    voices[i, :p.num_steps] = p.voices
  return rolls, lengths, voices


def _valid_frames(lengths: np.ndarray, num_steps: int) -> np.ndarray:
  """bool[N, T]: frame t is within piece n's length."""
  return np.arange(num_steps)[None, :] < np.asarray(lengths)[:, None]


def _masked(rolls: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """bool[N, T, 88] rolls with the frames beyond each length switched off."""
  rolls = np.asarray(rolls, dtype=bool)
  return rolls & _valid_frames(lengths, rolls.shape[1])[..., None]


def _chunks(x: np.ndarray, size: int) -> np.ndarray:
  """x: [N, T, ...] -> [N, ceil(T / size), size, ...], zero/False-padded at the end."""
  num_chunks = -(-x.shape[1] // size)
  pad = [(0, 0), (0, num_chunks * size - x.shape[1])] + [(0, 0)] * (x.ndim - 2)
  x = np.pad(x, pad)
  return x.reshape(x.shape[0], num_chunks, size, *x.shape[2:])


def _chunk_valid(lengths: np.ndarray, num_chunks: int, size: int) -> np.ndarray:
  """bool[N, C]: chunk c (frames c*size...) starts within the piece."""
  return np.arange(num_chunks)[None, :] * size < np.asarray(lengths)[:, None]


def _ratio(num, den) -> np.ndarray:
  """num / den as float, NaN where den == 0."""
  num = np.asarray(num, dtype=np.float64)
  den = np.asarray(den, dtype=np.float64)
  with np.errstate(divide='ignore', invalid='ignore'):
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _onsets(roll: np.ndarray) -> np.ndarray:
  """bool[N, T, 88]: a note starts (key on, and off in the previous frame or t = 0)."""
  previous = np.zeros_like(roll)
  previous[:, 1:] = roll[:, :-1]
  return roll & ~previous


# ---------------------------------------------------------------------------- per piece


def pitch_class_histogram(rolls, lengths) -> np.ndarray:
  """float[N, 12]: share of note-frames per pitch class (C = 0); NaN rows if silent."""
  counts = _masked(rolls, lengths).sum(axis=1) @ _KEY_TO_PC
  return _ratio(counts, counts.sum(axis=1, keepdims=True))


def entropy_bits(histogram: np.ndarray) -> np.ndarray:
  """float[N, K] distributions (rows sum to 1, or NaN) -> float[N] entropy in bits."""
  p = np.asarray(histogram, dtype=np.float64)
  with np.errstate(divide='ignore', invalid='ignore'):
    terms = np.where(p > 0, -p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
  return np.where(np.isnan(p).any(axis=1), np.nan, terms.sum(axis=1))


def used_pitch_classes(roll: np.ndarray, lengths, bar_steps: int) -> np.ndarray:
  """float[N]: distinct pitch classes per bar, mean over the piece's bars.

  Args:
    roll: bool[N, T, 88], already masked to the lengths.
    lengths: int[N].
    bar_steps: frames per bar.
  """
  per_bar = _chunks(roll, bar_steps).any(axis=2) @ _KEY_TO_PC  # [N, B, 12]
  used = (per_bar > 0).sum(axis=2)
  valid = _chunk_valid(lengths, used.shape[1], bar_steps)
  return _ratio((used * valid).sum(axis=1), valid.sum(axis=1))


def scale_consistency(onsets: np.ndarray) -> np.ndarray:
  """float[N]: share of notes in the best of the 24 major/minor scales.

  Args:
    onsets: bool[N, T, 88] note starts.
  """
  counts = onsets.sum(axis=1) @ _KEY_TO_PC  # [N, 12]
  in_scale = counts @ _SCALES.T  # [N, 24]
  return _ratio(in_scale.max(axis=1), counts.sum(axis=1))


def empty_beat_rate(roll: np.ndarray, lengths, steps_per_quarter: int) -> np.ndarray:
  """float[N]: share of the piece's beats (quarters) in which no note sounds.

  Args:
    roll: bool[N, T, 88], already masked to the lengths.
    lengths: int[N].
    steps_per_quarter: frames per beat.
  """
  sounding = _chunks(roll.any(axis=2), steps_per_quarter).any(axis=2)  # [N, beats]
  valid = _chunk_valid(lengths, sounding.shape[1], steps_per_quarter)
  return _ratio((valid & ~sounding).sum(axis=1), valid.sum(axis=1))


def qualified_notes(roll: np.ndarray, onsets: np.ndarray, min_steps: int) -> np.ndarray:
  """int[N]: notes lasting at least min_steps frames.

  Args:
    roll: bool[N, T, 88], already masked to the lengths.
    onsets: bool[N, T, 88] note starts of roll.
    min_steps: frames a note needs.
  """
  num_steps = roll.shape[1]
  if min_steps > num_steps:
    return np.zeros(roll.shape[0], dtype=np.int64)
  on_count = np.zeros((roll.shape[0], num_steps + 1, NUM_KEYS), dtype=np.int32)
  np.cumsum(roll, axis=1, out=on_count[:, 1:])
  window = on_count[:, min_steps:] - on_count[:, :num_steps + 1 - min_steps]  # frames t..t+L-1
  return (onsets[:, :window.shape[1]] & (window == min_steps)).sum(axis=(1, 2))


def pitch_range(roll: np.ndarray) -> np.ndarray:
  """float[N]: highest minus lowest sounding key (semitones); NaN if silent."""
  used = roll.any(axis=1)  # [N, 88]
  lowest = np.argmax(used, axis=1)
  highest = NUM_KEYS - 1 - np.argmax(used[:, ::-1], axis=1)
  return np.where(used.any(axis=1), (highest - lowest).astype(np.float64), np.nan)


def _centroids(chroma: np.ndarray) -> np.ndarray:
  """float[..., 12] chroma -> float[..., 6] tonal centroids (NaN where the chroma is 0)."""
  return _ratio(chroma @ _CENTROID.T, chroma.sum(axis=-1, keepdims=True))


def tonal_distance(roll: np.ndarray, bar_steps: int) -> np.ndarray:
  """float[N]: mean over bars of the bass-vs-upper tonal centroid distance.

  Args:
    roll: bool[N, T, 88], already masked to the lengths.
    bar_steps: frames per bar.
  """
  sounding = roll.any(axis=2)
  lowest = np.argmax(roll, axis=2)  # [N, T]
  bass = (np.arange(NUM_KEYS) == lowest[..., None]) & sounding[..., None]
  upper = roll & ~bass
  bass_centroid = _centroids(_chunks(bass, bar_steps).sum(axis=2) @ _KEY_TO_PC)
  upper_centroid = _centroids(_chunks(upper, bar_steps).sum(axis=2) @ _KEY_TO_PC)
  distance = np.linalg.norm(bass_centroid - upper_centroid, axis=-1)  # [N, B], NaN if undefined
  defined = ~np.isnan(distance)
  return _ratio(np.where(defined, distance, 0.0).sum(axis=1), defined.sum(axis=1))


def repetition(roll: np.ndarray, lengths, bar_steps: int) -> np.ndarray:
  """float[N]: share of frames bar <= t < length equal to frame t - bar.

  Args:
    roll: bool[N, T, 88], already masked to the lengths.
    lengths: int[N].
    bar_steps: frames per bar.
  """
  valid = _valid_frames(lengths, roll.shape[1])[:, bar_steps:]
  same = (roll[:, bar_steps:] == roll[:, :max(roll.shape[1] - bar_steps, 0)]).all(axis=2)
  return _ratio((same & valid).sum(axis=1), valid.sum(axis=1))


def roll_metrics(rolls, lengths, steps_per_quarter: int) -> dict:
  """The per-piece metrics of the rolls (see the module docstring).

  Args:
    rolls: bool[N, T, 88].
    lengths: int[N] frames of each piece.
    steps_per_quarter: frames per quarter note.

  Returns:
    name -> float[N] (pitch_class_histogram: float[N, 12]).
  """
  lengths = np.asarray(lengths)
  roll = _masked(rolls, lengths)
  bar_steps = BEATS_PER_BAR * steps_per_quarter
  onsets = _onsets(roll)
  notes = onsets.sum(axis=(1, 2))
  note_frames = roll.sum(axis=(1, 2))
  per_frame = roll.sum(axis=2)  # [N, T]
  histogram = pitch_class_histogram(roll, lengths)
  min_note_steps = math.ceil(3 * steps_per_quarter / 4)
  return {
      'pitch_class_histogram': histogram,
      'pitch_class_entropy': entropy_bits(histogram),
      'used_pitch_classes': used_pitch_classes(roll, lengths, bar_steps),
      'scale_consistency': scale_consistency(onsets),
      'polyphony': _ratio(note_frames, (per_frame > 0).sum(axis=1)),
      'polyphony_rate': _ratio((per_frame >= 2).sum(axis=1), lengths),
      'empty_beat_rate': empty_beat_rate(roll, lengths, steps_per_quarter),
      'note_density': _ratio(notes, lengths),
      'mean_note_length': _ratio(note_frames, notes * steps_per_quarter),
      'qualified_note_rate': _ratio(qualified_notes(roll, onsets, min_note_steps), notes),
      'pitch_range': pitch_range(roll),
      'tonal_distance': tonal_distance(roll, bar_steps),
      'repetition': repetition(roll, lengths, bar_steps),
  }


# ---------------------------------------------------------------------------- voices


def voices_from_roll(rolls) -> np.ndarray:
  """bool[N, T, 88] -> int[N, T, 4]: the 4 pitches of each 4-note frame, highest first.

  Frames without exactly 4 notes are REST in every voice.
  """
  rolls = np.asarray(rolls, dtype=bool)
  keys = np.where(rolls, np.arange(NUM_KEYS), -1)
  top = -np.sort(-keys, axis=2)[..., :NUM_VOICES]
  four = rolls.sum(axis=2, keepdims=True) == NUM_VOICES
  return np.where(four, top + LOWEST_PITCH, REST).astype(np.int64)


def _pair_motion(voices: np.ndarray, upper: int, lower: int) -> dict:
  """Motion of one pair of voices over the transitions t-1 -> t.

  Args:
    voices: int[N, T, 4] pitches, REST beyond the lengths.
    upper, lower: voice indices, upper above lower in the score.

  Returns:
    bool[N, T-1] 'moves', 'similar', 'contrary' and int[N, T-1] 'before',
    'after' (vertical intervals |u - l|) and 'step' (the upper voice's motion).
  """
  u0, u1 = voices[:, :-1, upper], voices[:, 1:, upper]
  l0, l1 = voices[:, :-1, lower], voices[:, 1:, lower]
  sound = (u0 != REST) & (u1 != REST) & (l0 != REST) & (l1 != REST)
  du, dl = u1 - u0, l1 - l0
  return {'moves': sound & ((du != 0) | (dl != 0)),
          'similar': sound & (du * dl > 0), 'contrary': sound & (du * dl < 0),
          'before': np.abs(u0 - l0), 'after': np.abs(u1 - l1), 'step': np.abs(du)}


def _parallel_fifths(m: dict) -> np.ndarray:
  fifths = (m['before'] % 12 == 7) & (m['after'] % 12 == 7)
  return (m['similar'] | m['contrary']) & fifths


def _parallel_octaves(m: dict) -> np.ndarray:
  b, a = m['before'], m['after']
  unisons = (b == 0) & (a == 0)
  octaves = (b > 0) & (a > 0) & (b % 12 == 0) & (a % 12 == 0)
  return (m['similar'] & (unisons | octaves)) | (m['contrary'] & (b % 12 == 0) & (a % 12 == 0))


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
  voices = np.where(_valid_frames(lengths, voices.shape[1])[..., None], voices, REST)
  sounding = voices != REST
  counts = {name: np.zeros(voices.shape[0], dtype=np.int64) for name in (
      'parallel_fifths', 'parallel_octaves', 'pair_transitions', 'voice_crossings',
      'pair_frames', 'spacing', 'spacing_frames')}
  for upper in range(NUM_VOICES):
    for lower in range(upper + 1, NUM_VOICES):
      m = _pair_motion(voices, upper, lower)
      counts['parallel_fifths'] += _parallel_fifths(m).sum(axis=1)
      counts['parallel_octaves'] += _parallel_octaves(m).sum(axis=1)
      counts['pair_transitions'] += m['moves'].sum(axis=1)
      both = sounding[..., upper] & sounding[..., lower]
      gap = voices[..., upper] - voices[..., lower]
      counts['voice_crossings'] += (both & (gap < 0)).sum(axis=1)
      counts['pair_frames'] += both.sum(axis=1)
      if lower == upper + 1 and lower < NUM_VOICES - 1:  # S-A, A-T.
        counts['spacing'] += (both & (gap > 12)).sum(axis=1)
        counts['spacing_frames'] += both.sum(axis=1)
  outer = _pair_motion(voices, 0, NUM_VOICES - 1)
  into = outer['similar'] & (outer['step'] >= soprano_leap)
  counts['hidden_fifths'] = (into & (outer['after'] % 12 == 7)
                             & ~_parallel_fifths(outer)).sum(axis=1)
  counts['hidden_octaves'] = (into & (outer['after'] % 12 == 0)
                              & ~_parallel_octaves(outer)).sum(axis=1)
  counts['outer_transitions'] = outer['moves'].sum(axis=1)
  low = np.array([r[0] for r in VOICE_RANGES])
  high = np.array([r[1] for r in VOICE_RANGES])
  counts['out_of_range'] = (sounding & ((voices < low) | (voices > high))).sum(axis=(1, 2))
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
  return {name: 100.0 * _ratio(counts[num], counts[den])
          for name, (num, den) in VOICE_LEADING_RATES.items()}


def evaluate_set(rolls, lengths, steps_per_quarter: int, voices=None) -> dict:
  """Every per-piece metric of a set: roll_metrics plus voice_leading.

  Args:
    rolls: bool[N, T, 88].
    lengths: int[N] frames of each piece.
    steps_per_quarter: frames per quarter note.
    voices: int[N, T, 4] pitches (REST = -1), or None to take them from the
      4-note frames of the rolls (voices_from_roll).

  Returns:
    name -> float[N] (pitch_class_histogram: float[N, 12]).
  """
  metrics = roll_metrics(rolls, lengths, steps_per_quarter)
  if voices is None:
    voices = voices_from_roll(rolls)
  metrics.update(voice_leading(voices, lengths))
  return metrics


# ---------------------------------------------------------------------------- sets


def _json_float(x) -> Optional[float]:
  """A float for JSON: None for NaN or inf."""
  x = float(x)
  return x if math.isfinite(x) else None


def _json(x):
  """Float or float array -> float / nested lists of floats, NaN -> None."""
  x = np.asarray(x, dtype=np.float64)
  return _json_float(x) if x.ndim == 0 else [_json(v) for v in x]


def _rows(values) -> np.ndarray:
  """float[N] or float[N, D] -> float[M, D], the M rows without NaN."""
  values = np.asarray(values, dtype=np.float64)
  values = values.reshape(values.shape[0], -1)
  return values[~np.isnan(values).any(axis=1)]


def summarize(metrics: dict) -> dict:
  """name -> (mean, std) over the pieces without NaN (lists for the histogram; None if none)."""
  summary = {}
  for name, values in metrics.items():
    rows = _rows(values)
    shape = np.asarray(values).shape[1:]
    if rows.shape[0] == 0:
      mean = std = np.full(shape, np.nan)
    else:
      mean, std = rows.mean(axis=0).reshape(shape), rows.std(axis=0).reshape(shape)
    summary[name] = (_json(mean), _json(std))
  return summary


def pair_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Euclidean distances of the pairs (a_i, b_j) of float[N, D] and float[M, D].

  All N * M pairs, or MAX_DISTANCES of them picked with a fixed seed (the same
  picks for the same N and M, so a set against itself gives its intra-set).
  """
  num_pairs = a.shape[0] * b.shape[0]
  if num_pairs <= MAX_DISTANCES:
    picks = np.arange(num_pairs)
  else:
    picks = np.random.default_rng(0).choice(num_pairs, MAX_DISTANCES, replace=False)
  i, j = np.divmod(picks, b.shape[0])
  return np.linalg.norm(a[i] - b[j], axis=-1)


def _density(data: np.ndarray, floor: float):
  """(pdf callable, bandwidth) of a sample of distances.

  scipy's gaussian_kde with its bandwidth raised to at least `floor`, or, for a
  sample without variance (where gaussian_kde fails), a Gaussian of width
  `floor` at the sample's value.
  """
  center = float(np.mean(data))
  if data.size < 2 or not np.std(data) > 1e-12 * max(1.0, abs(center)):
    return (lambda x: stats.norm.pdf(x, center, floor)), floor
  kde = stats.gaussian_kde(data)
  bandwidth = float(np.sqrt(kde.covariance[0, 0]))
  if bandwidth < floor:
    kde.set_bandwidth(kde.factor * floor / bandwidth)
    bandwidth = floor
  return kde, bandwidth


def overlap_and_kl(intra: np.ndarray, inter: np.ndarray):
  """(overlapping area, KL(intra || inter)) of the KDEs of two samples of distances.

  Both densities are evaluated on one grid covering both samples and
  normalized there, so identical samples give exactly (1, 0).
  """
  both = np.concatenate([intra, inter])
  floor = max(KDE_FLOOR_FRACTION * np.ptp(both), 1e-6)
  (pdf_p, bw_p), (pdf_q, bw_q) = _density(intra, floor), _density(inter, floor)
  margin = 4 * max(bw_p, bw_q)
  grid = np.linspace(both.min() - margin, both.max() + margin, KDE_GRID_POINTS)
  p, q = pdf_p(grid), pdf_q(grid)
  p, q = p / p.sum(), q / q.sum()  # Riemann sums on a uniform grid; dx cancels.
  overlap = float(np.minimum(p, q).sum())
  with np.errstate(divide='ignore', invalid='ignore'):
    kl = float(np.sum(np.where(p > 0, p * np.log(p / np.maximum(q, 1e-300)), 0.0)))
  return overlap, max(kl, 0.0)


def _metric_comparison(samples: np.ndarray, reference: np.ndarray) -> dict:
  """One metric's rows float[N, D] and float[M, D] (no NaN) -> the entries of compare()."""
  shape = () if samples.shape[1] == 1 else (samples.shape[1],)
  out = {'mean': _json(samples.mean(axis=0).reshape(shape)),
         'std': _json(samples.std(axis=0).reshape(shape)),
         'ref_mean': _json(reference.mean(axis=0).reshape(shape)),
         'ref_std': _json(reference.std(axis=0).reshape(shape)), 'z': None}
  if not shape:
    ref_std = max(float(reference.std()), STD_FLOOR)
    out['z'] = min(abs(float(samples.mean() - reference.mean())) / ref_std, Z_CAP)
  intra = pair_distances(reference, reference)
  inter = pair_distances(samples, reference)
  out['overlap'], out['kl'] = overlap_and_kl(intra, inter)
  return out


def compare(samples: dict, reference: dict) -> dict:
  """Compares two sets' metrics (dicts of evaluate_set) as Yang & Lerch do.

  Args:
    samples: name -> float[N] (or float[N, D]) of the generated pieces.
    reference: name -> float[M] (or float[M, D]) of the reference pieces.

  Returns:
    A plain-JSON dict: 'distance' (mean capped |z| over the scalar metrics,
    0 = same means), 'diversity_ratio', 'collapsed', 'num_samples',
    'num_reference', and 'metrics': name -> {mean, std, ref_mean, ref_std, z
    (None for the histogram), overlap, kl}; a metric undefined for every
    piece of either set (or with < 2 reference pieces) is None.
  """
  per_metric, z_scores = {}, []
  for name in (n for n in reference if n in samples):
    s, r = _rows(samples[name]), _rows(reference[name])
    if s.shape[0] < 1 or r.shape[0] < 2:
      per_metric[name] = None
      continue
    per_metric[name] = _metric_comparison(s, r)
    if per_metric[name]['z'] is not None:
      z_scores.append(per_metric[name]['z'])
  ratio = diversity_ratio(samples, reference)
  return {'distance': _json_float(np.mean(z_scores)) if z_scores else None,
          'diversity_ratio': _json_float(ratio),
          'collapsed': bool(ratio < COLLAPSE_RATIO),
          'num_samples': int(len(next(iter(samples.values())))),
          'num_reference': int(len(next(iter(reference.values())))),
          'metrics': per_metric}


def _features(metrics: dict, reference: dict) -> np.ndarray:
  """float[N, F]: DIVERSITY_FEATURES standardized by the reference's mean and std.

  Columns with no spread in the reference are dropped; NaN (e.g. an empty
  piece) becomes 0, the reference mean.
  """
  columns, ref_columns = [], []
  for name in DIVERSITY_FEATURES:
    if name in metrics and name in reference:
      columns.append(np.asarray(metrics[name], np.float64).reshape(len(metrics[name]), -1))
      ref_columns.append(np.asarray(reference[name], np.float64)
                         .reshape(len(reference[name]), -1))
  if not columns:
    return np.zeros((len(next(iter(metrics.values()))), 0))
  x, ref = np.concatenate(columns, axis=1), np.concatenate(ref_columns, axis=1)
  with warnings.catch_warnings():  # An all-NaN column: NaN mean and std, dropped.
    warnings.simplefilter('ignore', RuntimeWarning)
    mean, std = np.nanmean(ref, axis=0), np.nanstd(ref, axis=0)
  keep = std > STD_FLOOR
  z = (x[:, keep] - mean[keep]) / std[keep]
  return np.where(np.isnan(z), 0.0, z)


def diversity(metrics: dict, reference: Optional[dict] = None) -> float:
  """Mean Euclidean distance between pieces i < j of a set (NaN with < 2 pieces).

  Features: DIVERSITY_FEATURES (the pitch-class histogram's 12 bins and scalar
  metrics) standardized by `reference` (default: the set itself), so that
  distances of different sets are in the same units.
  """
  x = _features(metrics, metrics if reference is None else reference)
  if x.shape[0] < 2:
    return float('nan')
  i, j = np.triu_indices(x.shape[0], k=1)
  return float(np.linalg.norm(x[i] - x[j], axis=1).mean())


def diversity_ratio(samples: dict, reference: dict) -> float:
  """diversity(samples) / diversity(reference), both in the reference's units.

  About 1 for a generator as varied as the reference, 0 for identical samples;
  NaN if either set has < 2 pieces or the reference has no spread.
  """
  ref_diversity = diversity(reference, reference)
  if not ref_diversity > 0:
    return float('nan')
  return diversity(samples, reference) / ref_diversity


def is_collapsed(samples: dict, reference: dict, threshold: float = COLLAPSE_RATIO) -> bool:
  """Whether the samples are less than `threshold` times as varied as the reference.

  COLLAPSE_RATIO = 0.25: the mean distance between two samples is under a
  quarter of that between two reference pieces. False when undefined.
  """
  return bool(diversity_ratio(samples, reference) < threshold)
