"""Tests for bach_jax.data.pianoroll: grid, voices, round trips, transposition."""

import mido
import numpy as np
import pretty_midi
import pytest

from bach_jax.data import pianoroll
from bach_jax.data.pianoroll import LOWEST_PITCH, NUM_KEYS, REST, MidiError, PianoRoll


def test_real_chorale_midi_round_trip(tmp_path, chorales):
  for name, pm in chorales:
    piece = pianoroll.from_pretty_midi(pm, 4, voices=[0, 1, 2, 3],
                                       voice_names=['Soprano', 'Alto', 'Tenor', 'Bass'])
    assert piece.voices.shape == (piece.num_steps, 4), name
    assert piece.num_steps > 32, name
    np.testing.assert_array_equal(piece.roll, pianoroll.voices_to_roll(piece.voices))
    path = tmp_path / f'{name}.mid'
    pianoroll.to_midi(piece, path)
    back = pianoroll.from_midi(path, 4)
    np.testing.assert_array_equal(back.roll, piece.roll, err_msg=name)
    assert back.voices is not None, name
    np.testing.assert_array_equal(back.voices, piece.voices, err_msg=name)
    assert back.meta['voice_names'] == ['Soprano', 'Alto', 'Tenor', 'Bass']
    assert back.meta['key_signature'] == piece.meta['key_signature']
    assert back.meta['time_signature'] == piece.meta['time_signature']


def test_soprano_is_top_voice_of_a_chorale(chorales):
  _, pm = chorales[0]
  piece = pianoroll.from_pretty_midi(pm, 4, voices=[0, 1, 2, 3])
  sounding = (piece.voices != REST).all(axis=1)
  assert sounding.mean() > 0.9
  v = piece.voices[sounding].astype(int)
  assert (v[:, 0] >= v[:, 3]).all() and v[:, 0].mean() > v[:, 1].mean() > v[:, 3].mean()


def _write_tempo_change_midi(path, tpq=480):
  """Quarter notes at beats 0, 2, 4, 6, 8; tempo 120 until beat 4, then 40 qpm.

  Plus a 1/16-beat grace note at beat 9 and a note from beat 10.5 to 11.125.
  """
  mid = mido.MidiFile(ticks_per_beat=tpq)
  track = mido.MidiTrack()
  mid.tracks.append(track)
  events = [(0, mido.MetaMessage('set_tempo', tempo=500000)),
            (4 * tpq, mido.MetaMessage('set_tempo', tempo=1500000))]
  pitches = {0: 60, 2: 62, 4: 64, 6: 65, 8: 67}
  for beat, pitch in pitches.items():
    events.append((beat * tpq, mido.Message('note_on', note=pitch, velocity=80)))
    events.append(((beat + 1) * tpq, mido.Message('note_off', note=pitch)))
  events += [(9 * tpq, mido.Message('note_on', note=72, velocity=80)),
             (9 * tpq + tpq // 16, mido.Message('note_off', note=72)),
             (int(10.5 * tpq), mido.Message('note_on', note=74, velocity=80)),
             (int(11.125 * tpq), mido.Message('note_off', note=74))]
  events.sort(key=lambda e: (e[0], e[1].type != 'set_tempo', e[1].type == 'note_on'))
  now = 0
  for tick, msg in events:
    track.append(msg.copy(time=tick - now))
    now = tick
  mid.save(path)
  return pitches


@pytest.mark.parametrize('steps_per_quarter', [1, 2, 4])
def test_grid_is_beat_relative_across_tempo_change(tmp_path, steps_per_quarter):
  path = tmp_path / 'tempo.mid'
  pitches = _write_tempo_change_midi(str(path))
  pm = pretty_midi.PrettyMIDI(str(path))
  # The tempo change matters: a seconds-based grid would put beat 8 elsewhere.
  beat8 = pm.instruments[0].notes[4].start
  assert round(beat8 / (0.5 / steps_per_quarter)) != 8 * steps_per_quarter
  piece = pianoroll.from_midi(path, steps_per_quarter)
  spq = steps_per_quarter
  for beat, pitch in pitches.items():
    frames = np.flatnonzero(piece.roll[:, pitch - LOWEST_PITCH])
    np.testing.assert_array_equal(frames, np.arange(beat * spq, (beat + 1) * spq))
  # Shorter than a step: still one frame, at its (rounded) onset.
  np.testing.assert_array_equal(np.flatnonzero(piece.roll[:, 72 - LOWEST_PITCH]), [9 * spq])
  # 10.5 .. 11.125 beats: halves round up, so 10.5 -> frame 11 at 1 step/quarter.
  on = int(np.floor(10.5 * spq + 0.5))
  off = max(on + 1, int(np.floor(11.125 * spq + 0.5)))
  np.testing.assert_array_equal(np.flatnonzero(piece.roll[:, 74 - LOWEST_PITCH]),
                                np.arange(on, off))
  assert piece.voices is None  # One instrument: no voices.


def _pm_with(instruments):
  pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=120.0)
  for name, notes, is_drum in instruments:
    inst = pretty_midi.Instrument(0, is_drum=is_drum, name=name)
    for pitch, start, end in notes:  # In quarter notes; 0.5 s each at 120 qpm.
      inst.notes.append(pretty_midi.Note(80, pitch, start * 0.5, end * 0.5))
    pm.instruments.append(inst)
  return pm


def test_a_stuck_note_is_cut_at_the_next_onset_and_the_voices_kept():
  # As in real files (a Mozart quartet's cello held one note 138 s): 'Low' holds its
  # first note over its 12 other notes, 24 of its 40 frames: it failed the monophony
  # test, and the piece lost its voices.
  low = [(36, 0, 40)] + [(38 + i % 3, 2 + 2 * i, 4 + 2 * i) for i in range(12)]
  pm = _pm_with([('Top', [(72 + i % 5, i, i + 1) for i in range(26)], False),
                 ('Low', low, False)])
  piece = pianoroll.from_pretty_midi(pm, 1)
  assert piece.meta['voice_names'] == ['Top', 'Low'] and piece.meta['cut_notes'] == 1
  np.testing.assert_array_equal(piece.voices[:2, 1], [36, 36])  # Cut at quarter 2 ...
  np.testing.assert_array_equal(piece.voices[2:26, 1], [38 + i // 2 % 3 for i in range(24)])
  assert (piece.voices[26:, 1] == pianoroll.REST).all()  # ... not held to quarter 40.
  # Notes of one onset (a chord) are not cut: that instrument is no voice.
  chord = _pm_with([('Top', [(72, 0, 8), (76, 0, 8), (79, 0, 8)], False),
                    ('Low', [(48, 0, 8)], False)])
  piece = pianoroll.from_pretty_midi(chord, 1)
  assert piece.voices is None and piece.meta['voices_reason'] == 'an instrument plays chords'
  assert piece.roll.sum() == 4 * 8
  one = pianoroll.from_pretty_midi(_pm_with([('Top', [(72, 0, 8)], False)]), 1)
  assert one.voices is None and one.meta['voices_reason'] == 'one melodic instrument'


def test_auto_voices_from_monophonic_instruments():
  pm = _pm_with([('Top', [(72, 0, 6), (74, 6, 12), (76, 11, 12)], False),  # 1 chord frame.
                 ('Low', [(48, 0, 12)], False)])
  piece = pianoroll.from_pretty_midi(pm, 1)
  assert piece.meta['voice_names'] == ['Top', 'Low']
  np.testing.assert_array_equal(piece.voices[:, 1], [48] * 12)
  np.testing.assert_array_equal(piece.voices[:, 0], [72] * 6 + [74] * 5 + [76])
  np.testing.assert_array_equal(piece.roll, pianoroll.voices_to_roll(piece.voices))
  # A chord (two onsets at once) over 2 of 12 frames: not a voice. (The overlap of 74
  # and 76 above is no chord: a note held past the next onset is cut there.)
  pm.instruments[0].notes.append(pretty_midi.Note(80, 79, 0.0, 1.0))
  piece = pianoroll.from_pretty_midi(pm, 1)
  assert piece.voices is None and piece.roll.sum() == 13 + 12 + 2


def test_roll_without_voices_round_trips(tmp_path):
  rng = np.random.default_rng(0)
  roll = rng.random((50, NUM_KEYS)) < 0.05
  piece = PianoRoll(roll, None, 2, {})
  path = tmp_path / 'r.mid'
  pm = pianoroll.to_midi(piece, path, qpm=97.0)
  assert len(pm.instruments) == 1
  back = pianoroll.from_midi(path, 2)
  assert back.voices is None
  np.testing.assert_array_equal(back.roll[:50], roll)
  assert back.num_steps <= 50 and not back.roll[50:].any()


@pytest.mark.parametrize('instruments, reason', [
    ([('Drums', [(36, 0, 1)], True)], 'only drum notes'),
    ([('Empty', [], False)], 'no notes'),
    ([('Low', [(12, 0, 1)], False)], 'outside the piano range'),
    ([('High', [(110, 0, 1), (115, 1, 2)], False)], 'all 2 notes outside the piano range'),
])
def test_bad_content_raises_midi_error(instruments, reason):
  with pytest.raises(MidiError, match=reason):
    pianoroll.from_pretty_midi(_pm_with(instruments), 4)


def test_read_errors(tmp_path):
  cases = {'empty.mid': b'', 'text.mid': b'hello, not midi\n',
           'corrupt.mid': b'MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\xe0MTrk\xff\xff\xff\xff\x00'}
  for name, data in cases.items():
    (tmp_path / name).write_bytes(data)
    with pytest.raises(MidiError):
      pianoroll.from_midi(tmp_path / name)


def test_transpose_and_range(make_piece):
  piece = make_piece(np.random.default_rng(1), 20)
  up = piece.transpose(5)
  np.testing.assert_array_equal(up.roll[:, 5:], piece.roll[:, :-5])
  np.testing.assert_array_equal(up.voices == REST, piece.voices == REST)
  np.testing.assert_array_equal(up.voices[piece.voices != REST],
                                piece.voices[piece.voices != REST] + 5)
  lo, hi = piece.pitch_range()
  assert up.pitch_range() == (lo + 5, hi + 5)
  assert piece.transpose(0).pitch_range() == (lo, hi)
  with pytest.raises(ValueError):
    piece.transpose(108 - hi + 1)
  with pytest.raises(ValueError):
    piece.transpose(21 - lo - 1)
  assert piece.transpose(21 - lo).pitch_range()[0] == 21


@pytest.mark.parametrize('key, highest, shift', [
    (2, 70, -2),  # D major -> C major, down 2.
    (21, 70, 3),  # A minor -> C minor, up 3.
    (7, 70, 5),  # G major -> up 5 ...
    (7, 106, -7),  # ... unless that leaves the piano: the other octave.
    (6, 70, -6),  # F# major: shifts lie in [-6, 5].
])
def test_to_common_tonic(key, highest, shift):
  voices = np.array([[highest, 60], [highest - 2, REST]], np.int16)
  piece = PianoRoll(pianoroll.voices_to_roll(voices), voices, 4, {'key_number': key})
  out = pianoroll.to_common_tonic(piece)
  assert out.meta['transposed_by'] == shift
  assert out.meta['key_signature'] == ('C major' if key < 12 else 'C minor')
  np.testing.assert_array_equal(out.voices[0], [highest + shift, 60 + shift])


def test_to_common_tonic_without_key_keeps_piece():
  piece = PianoRoll(np.eye(4, NUM_KEYS, 30, dtype=bool), None, 4, {'key_number': None})
  out = pianoroll.to_common_tonic(piece)
  np.testing.assert_array_equal(out.roll, piece.roll)
  assert out.meta['transposed_by'] is None and 'no key signature' in out.meta['transpose_note']
