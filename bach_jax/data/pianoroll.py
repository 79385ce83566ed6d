"""MIDI <-> piano-roll on a beat-relative grid.

A `PianoRoll` holds `roll: bool[T, 88]` over MIDI pitches 21..108 and, when the
voices of the piece are known, `voices: int16[T, V]` (one MIDI pitch per voice
and frame, or `REST` = -1). Where voices exist, `roll` is exactly the union of
the sounding voice pitches.

Grid. Frames are fractions of a quarter note, not of a second: note onsets and
offsets are converted to MIDI ticks with `pm.time_to_tick` and divided by the
file's resolution (ticks per quarter), so tempo changes do not move notes off
the grid (a note at beat 8 lands on frame `8 * steps_per_quarter` whatever the
tempo map). Onsets and offsets are rounded to the nearest step (halves round
up); a note shorter than one step still occupies one frame.

Held vs repeated notes. A frame only says which pitches sound, so the roll
cannot tell a note held for two frames from the same pitch struck twice; the
voices array has the same limitation (onsets are not stored). `to_midi` merges
consecutive equal frames into one held note.

Voices from a MIDI file (`voices='auto'`): when the file has more than one
non-drum instrument and every one of them is monophonic-ish (at most 10% of
its sounding frames hold more than one pitch), each instrument is one voice,
in file order; otherwise `voices=None`, and meta['voices_reason'] says why.
Before that test, a note that runs past the next onset of its own instrument
(a stuck note: real files hold one for minutes) is cut at that onset
(meta['cut_notes'] counts them); notes of one onset (a chord) are not cut.
Callers can instead pass the instrument indices to use (no note is cut then).
Where notes of one voice share a frame, the voice takes the note with the
latest onset, and of a chord its highest note; the roll is then the union of
the voices (lower notes of a chord are dropped).

Notes outside the piano (MIDI 21..108) are folded: moved by whole octaves
into range (pitch class, rhythm and voice kept); meta['folded_notes'] counts
them. A file whose notes are all outside the piano is refused (MidiError).

Reading files, and the files refused: midi_file.py.
"""

import dataclasses
import os
import re
from typing import Optional, Sequence, Union

import numpy as np

from bach_jax.data.midi_file import MidiError, pretty_midi, read_pretty_midi

LOWEST_PITCH = 21  # A0, the lowest piano key.
NUM_KEYS = 88
HIGHEST_PITCH = LOWEST_PITCH + NUM_KEYS - 1  # C8.
REST = -1  # Value of `voices` where a voice is silent.
MONOPHONIC_TOLERANCE = 0.1  # Max fraction of chord frames for a "voice" instrument.
SATB = ('Soprano', 'Alto', 'Tenor', 'Bass')
_VOICE_WORDS = {
    'soprano': 0, 'sopran': 0, 'sop': 0, 's': 0, 'canto': 0, 'cantus': 0,
    'treble': 0, 'discant': 0,
    'alto': 1, 'alt': 1, 'a': 1, 'contralto': 1, 'altus': 1,
    'tenor': 2, 'tenore': 2, 'ten': 2, 't': 2,
    'bass': 3, 'basso': 3, 'bassus': 3, 'bas': 3, 'b': 3,
}


@dataclasses.dataclass
class PianoRoll:
  """One piece on a grid of `steps_per_quarter` frames per quarter note.

  Attributes:
    roll: bool[T, 88], key k is MIDI pitch LOWEST_PITCH + k.
    voices: int16[T, V] MIDI pitches or REST, or None when voices are unknown.
    steps_per_quarter: frames per quarter note.
    meta: plain-JSON dict: file, source, key_signature, time_signature,
      voice_names and how the piece was transposed, when known.
  """
  roll: np.ndarray
  voices: Optional[np.ndarray] = None
  steps_per_quarter: int = 4
  meta: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self.roll = np.asarray(self.roll, dtype=bool)
    if self.roll.ndim != 2 or self.roll.shape[1] != NUM_KEYS:
      raise ValueError(f'roll must be bool[T, {NUM_KEYS}], got {self.roll.shape}')
    if self.voices is not None:
      self.voices = np.asarray(self.voices, dtype=np.int16)
      if self.voices.ndim != 2 or self.voices.shape[0] != self.roll.shape[0]:
        raise ValueError(f'voices must be int16[T, V] with T={self.roll.shape[0]}, '
                         f'got {self.voices.shape}')

  @property
  def num_steps(self) -> int:
    return int(self.roll.shape[0])

  @property
  def num_voices(self) -> Optional[int]:
    return None if self.voices is None else int(self.voices.shape[1])

  def pitch_range(self) -> Optional[tuple[int, int]]:
    """Returns (lowest, highest) sounding MIDI pitch, or None if silent."""
    keys = np.flatnonzero(self.roll.any(axis=0))
    if keys.size == 0:
      return None
    return int(keys[0]) + LOWEST_PITCH, int(keys[-1]) + LOWEST_PITCH

  def transpose(self, semitones: int) -> 'PianoRoll':
    """Returns the piece moved by `semitones`; ValueError if it leaves the piano."""
    semitones = int(semitones)
    rng = self.pitch_range()
    if rng is not None and (rng[0] + semitones < LOWEST_PITCH or
                            rng[1] + semitones > HIGHEST_PITCH):
      raise ValueError(f'transposing pitches {rng[0]}..{rng[1]} by {semitones} '
                       f'leaves the piano range {LOWEST_PITCH}..{HIGHEST_PITCH}')
    roll = np.zeros_like(self.roll)
    if semitones >= 0:
      roll[:, semitones:] = self.roll[:, :NUM_KEYS - semitones]
    else:
      roll[:, :semitones] = self.roll[:, -semitones:]
    voices = None
    if self.voices is not None:
      voices = np.where(self.voices == REST, REST, self.voices + semitones).astype(np.int16)
    return PianoRoll(roll, voices, self.steps_per_quarter, dict(self.meta))


def voices_to_roll(voices: np.ndarray) -> np.ndarray:
  """int[T, V] pitches (REST = -1) -> bool[T, 88], the union of sounding voices."""
  voices = np.asarray(voices)
  roll = np.zeros((voices.shape[0], NUM_KEYS), dtype=bool)
  t, v = np.nonzero(voices != REST)
  roll[t, voices[t, v] - LOWEST_PITCH] = True
  return roll


def satb_indices(names) -> list:
  """Part names (top to bottom) -> indices of the [S, A, T, B] parts.

  A part is a voice when the first word of the first line of its name is a
  voice word of _VOICE_WORDS (case-insensitive), not 'Basso continuo' / 'B.c.';
  the topmost part wins when several name one voice. If the names do not give
  all four voices but there are exactly 4 parts, they are S, A, T, B top to
  bottom. The bach_chorales rule of bach_jax.data.corpora.

  Raises:
    MidiError: neither rule identifies four voices.
  """
  found = [None] * 4
  for i, name in enumerate(names):
    first_line = re.split(r'[\r\n]', name or '')[0].lower()
    words = re.findall(r'[a-z]+', first_line)
    if not words or ' '.join(words[:2]) in ('basso continuo', 'b c'):
      continue
    voice = _VOICE_WORDS.get(words[0])
    if voice is not None and found[voice] is None:
      found[voice] = i
  if None not in found:
    return found
  if len(names) == 4:
    return [0, 1, 2, 3]
  raise MidiError(f'cannot identify soprano/alto/tenor/bass ({len(names)} parts: '
                  f'{", ".join(repr(n) for n in names)})')


def _quantize(pm: pretty_midi.PrettyMIDI, notes, steps_per_quarter: int):
  """Notes -> int[N] onset and offset frames on the beat grid."""
  starts = np.array([pm.time_to_tick(n.start) for n in notes], dtype=np.float64)
  ends = np.array([pm.time_to_tick(n.end) for n in notes], dtype=np.float64)
  scale = steps_per_quarter / pm.resolution
  on = np.floor(starts * scale + 0.5).astype(np.int64)
  off = np.floor(ends * scale + 0.5).astype(np.int64)
  return on, np.maximum(off, on + 1)


def _cut_at_next_onset(on, off):
  """Offsets cut at the next later onset of the same instrument -> (off, notes cut)."""
  onsets = np.unique(on)
  later = np.searchsorted(onsets, on, side='right')
  nxt = np.where(later < onsets.size, onsets[np.minimum(later, onsets.size - 1)], off)
  cut = np.minimum(off, nxt)
  return cut, int((cut < off).sum())


def _instrument_grid(notes, on, off, num_steps):
  """One instrument's notes and their frames -> bool[T, 128] sounding pitches."""
  grid = np.zeros((num_steps, 128), dtype=bool)
  for n, a, b in zip(notes, on, off):
    grid[a:b, n.pitch] = True
  return grid


def _voice_line(notes, on, off, num_steps) -> np.ndarray:
  """One instrument's notes and their frames -> int16[T], one pitch per frame or REST.

  Where notes share a frame, the one with the latest onset wins, and among
  notes with the same onset (a chord) the highest.
  """
  line = np.full(num_steps, REST, dtype=np.int16)
  for j in sorted(range(len(notes)), key=lambda j: (notes[j].start, notes[j].pitch)):
    line[on[j]:off[j]] = notes[j].pitch
  return line


def _first(changes, fmt):
  return fmt(changes[0]) if changes else None


def fold_pitch(pitch: int) -> int:
  """Moves a MIDI pitch by whole octaves into LOWEST_PITCH..HIGHEST_PITCH."""
  if pitch < LOWEST_PITCH:
    return pitch + 12 * -(-(LOWEST_PITCH - pitch) // 12)
  if pitch > HIGHEST_PITCH:
    return pitch - 12 * -(-(pitch - HIGHEST_PITCH) // 12)
  return pitch


def _folded_notes(pm, chosen):
  """{instrument index: notes, out-of-range pitches folded}, and how many were folded.

  Raises:
    MidiError: no notes, or every note is outside the piano.
  """
  notes = {i: pm.instruments[i].notes for i in chosen}
  pitches = [n.pitch for i in chosen for n in notes[i]]
  if not pitches:
    raise MidiError('no notes')
  outside = sum(not LOWEST_PITCH <= p <= HIGHEST_PITCH for p in pitches)
  if outside == len(pitches):
    raise MidiError(f'all {outside} notes outside the piano range ({min(pitches)}..'
                    f'{max(pitches)} not within {LOWEST_PITCH}..{HIGHEST_PITCH})')
  if outside:
    notes = {i: [n if LOWEST_PITCH <= n.pitch <= HIGHEST_PITCH else
                 pretty_midi.Note(n.velocity, fold_pitch(n.pitch), n.start, n.end)
                 for n in ns] for i, ns in notes.items()}
  return notes, outside


def _why_no_voices(grids):
  """Why these instruments' grids are not voices ('auto'), or None when they are."""
  if len(grids) < 2:
    return 'one melodic instrument'
  for g in grids:
    counts = g.sum(axis=1)
    if (counts > 1).sum() > MONOPHONIC_TOLERANCE * max(1, (counts > 0).sum()):
      return 'an instrument plays chords'
  return None


def from_pretty_midi(pm: pretty_midi.PrettyMIDI, steps_per_quarter: int = 4, *,
                     voices: Union[str, Sequence[int]] = 'auto',
                     voice_names: Optional[Sequence[str]] = None,
                     meta: Optional[dict] = None) -> PianoRoll:
  """Quantizes a PrettyMIDI onto the beat grid.

  Args:
    pm: the parsed MIDI.
    steps_per_quarter: frames per quarter note.
    voices: 'auto' (see the module docstring), 'none', or the indices into
      `pm.instruments` of the voices, top voice first (other instruments are
      dropped, and the roll is the union of these voices).
    voice_names: names for the voices; default the instrument names.
    meta: extra entries for `PianoRoll.meta` (e.g. file, source).

  Returns:
    The PianoRoll; meta gets key_signature ('D major'), key_number (pretty_midi
    numbering, 0-11 major, 12-23 minor), time_signature ('4/4') when the file
    carries them, voice_names, and folded_notes (how many notes outside
    21..108 were moved by octaves into range).

  Raises:
    MidiError: no notes, only drums, every note outside 21..108.
  """
  melodic = [i for i, inst in enumerate(pm.instruments) if not inst.is_drum]
  if not any(pm.instruments[i].notes for i in melodic):
    if any(inst.notes for inst in pm.instruments):
      raise MidiError('only drum notes')
    raise MidiError('no notes')
  mode = voices if isinstance(voices, str) else 'indices'
  if mode != 'indices':
    if mode not in ('auto', 'none'):
      raise ValueError(f"voices must be 'auto', 'none' or indices, got {voices!r}")
    chosen = [i for i in melodic if pm.instruments[i].notes]
  else:
    chosen = [int(i) for i in voices]
  notes, folded = _folded_notes(pm, chosen)
  frames = {i: _quantize(pm, notes[i], steps_per_quarter) if notes[i] else
            (np.zeros(0, np.int64), np.zeros(0, np.int64)) for i in chosen}
  num_steps = max([int(off.max()) for _, off in frames.values() if off.size] or [0])
  grids = [_instrument_grid(notes[i], *frames[i], num_steps) for i in chosen]
  cut_notes, reason = 0, None
  if mode == 'auto':
    for i in chosen:  # Stuck notes cut before the monophony test, and in the voices.
      on, off = frames[i]
      cut, n = _cut_at_next_onset(on, off) if on.size else (off, 0)
      frames[i], cut_notes = (on, cut), cut_notes + n
    reason = _why_no_voices([_instrument_grid(notes[i], *frames[i], num_steps)
                             for i in chosen])
    use_voices = reason is None
  else:
    use_voices = mode == 'indices'
    reason = None if use_voices else 'voices not asked for'
  info = dict(meta or {})
  info['key_signature'] = _first(
      pm.key_signature_changes,
      lambda k: pretty_midi.key_number_to_key_name(k.key_number).replace('M', 'm'))
  info['key_number'] = _first(pm.key_signature_changes, lambda k: int(k.key_number))
  info['time_signature'] = _first(pm.time_signature_changes,
                                  lambda t: f'{t.numerator}/{t.denominator}')
  info['folded_notes'] = folded
  if use_voices:
    if cut_notes:
      info['cut_notes'] = cut_notes
    voice_array = np.stack([_voice_line(notes[i], *frames[i], num_steps)
                            for i in chosen], axis=1)
    roll = voices_to_roll(voice_array)
    names = list(voice_names) if voice_names else [pm.instruments[i].name for i in chosen]
    info['voice_names'] = names
    return PianoRoll(roll, voice_array, steps_per_quarter, info)
  union = np.logical_or.reduce(grids, axis=0) if grids else np.zeros((0, 128), bool)
  info['voice_names'] = None
  info['voices_reason'] = reason
  return PianoRoll(union[:, LOWEST_PITCH:HIGHEST_PITCH + 1], None, steps_per_quarter, info)


def from_midi(path: Union[str, os.PathLike], steps_per_quarter: int = 4, *,
              voices: Union[str, Sequence[int]] = 'auto',
              meta: Optional[dict] = None) -> PianoRoll:
  """Reads a .mid file into a PianoRoll (see `from_pretty_midi`); MidiError if bad."""
  info = {'file': os.fspath(path)}
  info.update(meta or {})
  return from_pretty_midi(read_pretty_midi(path), steps_per_quarter, voices=voices,
                          meta=info)


def _runs(column: np.ndarray):
  """Yields (value, start, end) for runs of equal values in a 1-D array."""
  if column.size == 0:
    return
  change = np.flatnonzero(column[1:] != column[:-1]) + 1
  bounds = np.concatenate([[0], change, [column.size]])
  for a, b in zip(bounds[:-1], bounds[1:]):
    yield column[a], int(a), int(b)


def to_midi(piano_roll: PianoRoll, path: Optional[Union[str, os.PathLike]] = None,
            qpm: float = 80.0, program: int = 0) -> pretty_midi.PrettyMIDI:
  """Writes a PianoRoll as MIDI (and to `path` if given).

  One instrument per voice, named by meta['voice_names'], when voices are
  known; else one piano instrument. Consecutive equal frames become one held
  note. Key and time signatures from meta are written when present. Reading
  the file back gives the same roll and voices, except trailing silent frames
  (a piece ends with its last note).

  Args:
    piano_roll: the piece.
    path: where to write the .mid file, or None.
    qpm: tempo in quarter notes per minute.
    program: General MIDI program of every instrument.

  Returns:
    The PrettyMIDI.
  """
  resolution = 480
  pm = pretty_midi.PrettyMIDI(resolution=resolution, initial_tempo=float(qpm))
  step = 60.0 / qpm / piano_roll.steps_per_quarter
  meta = piano_roll.meta or {}
  if meta.get('key_number') is not None:
    pm.key_signature_changes.append(pretty_midi.KeySignature(int(meta['key_number']), 0.0))
  if meta.get('time_signature'):
    num, den = (int(x) for x in str(meta['time_signature']).split('/'))
    pm.time_signature_changes.append(pretty_midi.TimeSignature(num, den, 0.0))
  if piano_roll.voices is not None:
    names = meta.get('voice_names') or [f'voice {v}' for v in range(piano_roll.num_voices)]
    for v in range(piano_roll.num_voices):
      inst = pretty_midi.Instrument(program=program, name=str(names[v]))
      for pitch, a, b in _runs(piano_roll.voices[:, v]):
        if pitch != REST:
          inst.notes.append(pretty_midi.Note(80, int(pitch), a * step, b * step))
      pm.instruments.append(inst)
  else:
    inst = pretty_midi.Instrument(program=program, name='Piano')
    for k in range(NUM_KEYS):
      for on, a, b in _runs(piano_roll.roll[:, k]):
        if on:
          inst.notes.append(pretty_midi.Note(80, k + LOWEST_PITCH, a * step, b * step))
    inst.notes.sort(key=lambda n: (n.start, n.pitch))
    pm.instruments.append(inst)
  if path is not None:
    pm.write(os.fspath(path))
  return pm


def to_common_tonic(piano_roll: PianoRoll) -> PianoRoll:
  """Transposes to C major / C minor using meta['key_number'].

  The shift is the one in [-6, +5] semitones that brings the tonic to C; if
  that leaves the piano range, the other octave. Without a key signature the
  piece is left as is. meta['transposed_by'] records the shift (None when the
  key was unknown).

  Raises:
    MidiError: neither octave fits in the piano range.
  """
  key = piano_roll.meta.get('key_number')
  if key is None:
    out = PianoRoll(piano_roll.roll, piano_roll.voices, piano_roll.steps_per_quarter,
                    dict(piano_roll.meta))
    out.meta['transposed_by'] = None
    out.meta['transpose_note'] = 'no key signature: left as written'
    return out
  shift = (-(int(key) % 12) + 6) % 12 - 6
  for s in (shift, shift + 12 if shift < 0 else shift - 12):
    try:
      out = piano_roll.transpose(s)
    except ValueError:
      continue
    out.meta['transposed_by'] = s
    out.meta['key_number'] = 0 if int(key) < 12 else 12
    out.meta['key_signature'] = 'C major' if int(key) < 12 else 'C minor'
    return out
  raise MidiError('cannot transpose to C within the piano range')
