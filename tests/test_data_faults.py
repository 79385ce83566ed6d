"""Tests for data faults a long run meets: out-of-range notes, SMPTE and long files, splits."""

import collections
import logging

import mido
import numpy as np
import pretty_midi
import pytest

from bach_jax.data import corpora, midi_file, pianoroll, splits
from bach_jax.data.pianoroll import MidiError


def _data(source, **kw):
  data = {'source': source, 'steps_per_quarter': 4, 'transpose': 'none',
          'min_steps': 8, 'cache_dir': '', 'workers': 1}
  data.update(kw)
  return data


def _two_voices(path, top, bass):
  """Writes Soprano/Bass parts of (pitch, start, end) notes in quarters (120 qpm)."""
  pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=120.0)
  for name, notes in (('Soprano', top), ('Bass', bass)):
    inst = pretty_midi.Instrument(0, name=name)
    inst.notes = [pretty_midi.Note(80, p, a * 0.5, b * 0.5) for p, a, b in notes]
    pm.instruments.append(inst)
  if path is not None:
    pm.write(str(path))
  return pm


def _scale(base, n=8):
  return [(base + i % 3, i, i + 1) for i in range(n)]


# Item 10: notes outside the piano range.

def test_out_of_range_notes_are_folded_by_octaves():
  pm = _two_voices(None, [(72, 0, 2), (115, 2, 4)], [(15, 0, 2), (48, 2, 4)])
  piece = pianoroll.from_pretty_midi(pm, 1)
  np.testing.assert_array_equal(piece.voices, [[72, 27], [72, 27], [103, 48], [103, 48]])
  np.testing.assert_array_equal(piece.roll, pianoroll.voices_to_roll(piece.voices))
  assert piece.meta['folded_notes'] == 2
  assert pianoroll.from_pretty_midi(_two_voices(None, _scale(60), _scale(48)), 1).meta[
      'folded_notes'] == 0
  assert [pianoroll.fold_pitch(p) for p in (0, 8, 9, 20, 21, 108, 109, 127)] == [
      24, 32, 21, 32, 21, 108, 97, 103]


def test_corpus_keeps_pieces_with_a_few_out_of_range_notes(tmp_path, caplog):
  root = tmp_path / 'midi'
  root.mkdir()
  _two_voices(root / 'organ.mid', _scale(72), _scale(48)[:5] + [(12, 5, 6), (20, 6, 8)])
  _two_voices(root / 'plain.mid', _scale(74), _scale(50))
  _two_voices(root / 'subsonic.mid', _scale(5), _scale(10))
  with caplog.at_level(logging.WARNING):
    corpus = corpora.load_corpus(_data(f'midi_dir:{root}'), tmp_path / 'c', progress=False)
  pieces = {p.meta['file']: p for s in corpora.SPLITS for p in corpus.splits[s]}
  assert sorted(pieces) == ['organ.mid', 'plain.mid']
  assert pieces['organ.mid'].meta['folded_notes'] == 2
  assert list(pieces['organ.mid'].voices[20:32:4, 1]) == [24, 32, 32]
  assert pieces['plain.mid'].meta['folded_notes'] == 0
  skipped = dict(corpus.skipped)
  assert list(skipped) == ['subsonic.mid']
  assert 'all 16 notes outside the piano range (5..12' in skipped['subsonic.mid']
  assert 'folded into range by octaves: 2 (in 1 pieces)' in corpus.summary()
  again = corpora.load_corpus(_data(f'midi_dir:{root}'), tmp_path / 'c', progress=False)
  assert again.cache_hit and again.summary() == corpus.summary()


# Item 10: SMPTE time division.

def test_smpte_division_is_named(tmp_path):
  _two_voices(tmp_path / 'beats.mid', _scale(72), _scale(48))
  data = bytearray((tmp_path / 'beats.mid').read_bytes())
  assert data[12:14] == (480).to_bytes(2, 'big')
  data[12:14] = bytes([256 - 25, 40])  # 25 frames per second, 40 ticks per frame.
  (tmp_path / 'smpte.mid').write_bytes(bytes(data))
  with pytest.raises(MidiError, match=r'^SMPTE time division is not supported \(25 frames'):
    midi_file.read_pretty_midi(tmp_path / 'smpte.mid')
  corpus = corpora.load_corpus(_data(f'midi_dir:{tmp_path}'), tmp_path / 'c', progress=False)
  assert dict(corpus.skipped)['smpte.mid'].startswith('SMPTE time division is not supported')


# Item 11: valid long files over pretty_midi's tick limit.

def _long_midi(path, quarters, tpq=10080, odd_tick=False, pitches=(72, 48)):
  """Two voices of quarter notes for `quarters` quarters (a music21-like resolution)."""
  mid = mido.MidiFile(ticks_per_beat=tpq)
  mid.tracks.append(mido.MidiTrack([mido.MetaMessage('set_tempo', tempo=500000)]))
  for name, base in zip(('Soprano', 'Bass'), pitches):
    track = mido.MidiTrack([mido.MetaMessage('track_name', name=name)])
    for q in range(quarters):
      late = int(odd_tick and q == 0)  # One note starts a tick late: no common factor.
      track.append(mido.Message('note_on', note=base + q % 5, velocity=80, time=late))
      track.append(mido.Message('note_off', note=base + q % 5, time=tpq - late))
    mid.tracks.append(track)
  mid.save(str(path))


@pytest.mark.parametrize('odd_tick, resolution, takes_mido', [
    (False, 5040, True), (True, 9520, True), (False, 5040, False)])
def test_long_high_resolution_file_is_read(tmp_path, monkeypatch, odd_tick, resolution,
                                           takes_mido):
  monkeypatch.setattr(midi_file, '_TAKES_MIDO', takes_mido)  # False: pretty_midi < 0.2.11.
  quarters = 1050  # 10,584,000 ticks at 10080 per quarter: pretty_midi says "corrupt".
  _long_midi(tmp_path / 'long.mid', quarters, odd_tick=odd_tick)
  with pytest.raises(ValueError, match='likely corrupt'):
    pretty_midi.PrettyMIDI(str(tmp_path / 'long.mid'))
  assert midi_file.read_pretty_midi(tmp_path / 'long.mid').resolution == resolution
  corpus = corpora.load_corpus(_data(f'midi_dir:{tmp_path}'), tmp_path / 'c', progress=False)
  assert not corpus.skipped
  (piece,) = corpus.splits['train']
  want = np.repeat(np.array([[72 + q % 5, 48 + q % 5] for q in range(quarters)]), 4, axis=0)
  np.testing.assert_array_equal(piece.voices, want)


def test_absurdly_long_file_is_refused_with_its_length(tmp_path):
  mid = mido.MidiFile(ticks_per_beat=480)
  mid.tracks.append(mido.MidiTrack([
      mido.Message('note_on', note=60, velocity=80, time=0),
      mido.Message('note_off', note=60, time=40_000 * 480)]))
  mid.save(str(tmp_path / 'forever.mid'))
  with pytest.raises(MidiError, match=r'too long for a piece \(40000 quarter notes, more than '
                     r'30000\)'):
    midi_file.read_pretty_midi(tmp_path / 'forever.mid')


# Item 12: small corpora get usable valid and test splits.

def _positions(assigned):
  position = splits.split_position
  return [assigned[k] for k in sorted(assigned, key=position)]


def test_balanced_splits_top_up_small_corpora():
  keys = [f'f{i:02d}.mid' for i in range(56)]
  natural = collections.Counter(splits.split_of(k) for k in keys)
  assert natural == {'train': 50, 'valid': 3, 'test': 3}
  assigned = splits.balanced_splits(keys)
  assert collections.Counter(assigned.values()) == {'train': 46, 'valid': 5, 'test': 5}
  order = _positions(assigned)
  assert order == sorted(order, key=corpora.SPLITS.index)  # Three runs: boundaries moved.
  moved = [k for k in keys if assigned[k] != splits.split_of(k)]
  assert len(moved) == 6 and all(  # 2 valid -> test, then 4 train -> valid.
      corpora.SPLITS.index(assigned[k]) == corpora.SPLITS.index(splits.split_of(k)) + 1
      for k in moved)
  assert assigned == splits.balanced_splits(list(reversed(keys)))  # Order-free.
  big = [f'k{i}' for i in range(1000)]  # Valid and test already hold 20+: hash only.
  assert splits.balanced_splits(big) == {k: splits.split_of(k) for k in big}
  for n, want in ((1, [1, 0, 0]), (2, [1, 1, 0]), (3, [1, 1, 1]), (12, [10, 1, 1])):
    assigned = splits.balanced_splits([f'p{i:02d}.mid' for i in range(n)])
    counts = collections.Counter(assigned.values())
    assert [counts[s] for s in corpora.SPLITS] == want, n


def test_small_midi_dir_gets_valid_and_test_and_warns(tmp_path, caplog):
  root = tmp_path / 'midi'
  root.mkdir()
  names = [f'p{i:02d}.mid' for i in range(12)]
  assert {splits.split_of(n) for n in names} == {'train'}  # The plain hash: no valid/test.
  for i, name in enumerate(names):
    _two_voices(root / name, _scale(70 + i % 5), _scale(48 + i % 3))
  with caplog.at_level(logging.WARNING):
    corpus = corpora.load_corpus(_data(f'midi_dir:{root}'), tmp_path / 'c', progress=False)
  assert [len(corpus.splits[s]) for s in corpora.SPLITS] == [10, 1, 1]
  lines = caplog.text.splitlines()
  assert any('2 of 12 pieces moved between splits' in line for line in lines), caplog.text
  for split in ('valid', 'test'):
    assert any(f'split {split} holds only 1 of 12 pieces' in line for line in lines)
  assert not any('split train holds only' in line for line in lines)
