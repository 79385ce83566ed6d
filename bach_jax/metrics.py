"""Objective metrics of piano-rolls, per piece; `evaluate_set` adds the voice leading.

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

Voice leading (parallel fifths / octaves, hidden intervals, crossings, spacing,
range, leaps): bach_jax/voice_leading.py. Comparing sets (Yang & Lerch's
overlap and KL, the summary distance, diversity, collapse):
bach_jax/set_compare.py. Their public names are re-exported here, so
`metrics.evaluate_set(...)` then `metrics.compare(...)` is all a caller needs.
"""

import math
from typing import Sequence

import numpy as np

from bach_jax.data.pianoroll import LOWEST_PITCH, NUM_KEYS, REST, PianoRoll
# Re-exports: callers use `metrics.<name>` for the whole toolkit.
from bach_jax.set_compare import (  # pylint: disable=unused-import
    COLLAPSE_RATIO, DIVERSITY_FEATURES, KDE_FLOOR_FRACTION, KDE_GRID_POINTS, MAX_DISTANCES,
    STD_FLOOR, Z_CAP, compare, distance_replicates, diversity, diversity_ratio, is_collapsed,
    overlap_and_kl, pair_distances, summarize)
from bach_jax.voice_leading import (  # pylint: disable=unused-import
    NUM_VOICES, SOPRANO_LEAP, VOICE_LEADING_RATES, VOICE_RANGES, voice_leading,
    voice_leading_counts, voices_from_roll)

NUM_PITCH_CLASSES = 12
BEATS_PER_BAR = 4
MAJOR_SCALE = (1, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1)
NATURAL_MINOR_SCALE = (1, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0)

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


VOICE_MODES = ('roll', 'own')  # Voices of a set: guessed from 4-note frames, or its own.


def set_metrics(pieces, steps_per_quarter, voices='roll'):
  """evaluate_set of PianoRolls -> name -> float[N] (histogram float[N, 12]).

  voices: 'roll' guesses the 4 voices from the 4-note frames; 'own' uses the
  pieces' voices when every piece has 4 (else guesses them too). Guessed voices
  are in pitch order, so they never cross: 'voice_crossing' is left out then.
  """
  if voices not in VOICE_MODES:
    raise ValueError(f'voices must be one of {VOICE_MODES}, got {voices!r}')
  rolls, lengths, own = pad_pieces(pieces)
  use = own if voices == 'own' and own is not None and own.shape[2] == 4 else None
  values = evaluate_set(rolls, lengths, steps_per_quarter, use)
  if use is None:
    del values['voice_crossing']
  return values
