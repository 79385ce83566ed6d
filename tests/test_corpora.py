"""Tests for bach_jax.data.corpora: sources, bad files, splits, the disk cache."""

import json
import logging
import os
import re
import subprocess
import sys
import time

import mido
import numpy as np
import pretty_midi
import pytest

from bach_jax.data import corpora, pianoroll, sources, splits
from bach_jax.data.corpora import CorpusError


def _data(source, **kw):
  data = {'source': source, 'steps_per_quarter': 4, 'transpose': 'tonic',
          'min_steps': 16, 'cache_dir': '', 'workers': 1}
  data.update(kw)
  return data


def _good_midi(path, pitch=60, beats=8, key=2):
  pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=100.0)
  pm.key_signature_changes.append(pretty_midi.KeySignature(key, 0.0))
  for name, offset in (('Soprano', 12), ('Bass', 0)):
    inst = pretty_midi.Instrument(0, name=name)
    for b in range(beats):
      inst.notes.append(pretty_midi.Note(80, pitch + offset + b % 3, b * 0.6, (b + 1) * 0.6))
    pm.instruments.append(inst)
  pm.write(str(path))


def _bad_files(root):
  """Writes one file per kind of bad input; returns {name: expected reason}."""
  _good_midi(root / 'good.mid')
  good = (root / 'good.mid').read_bytes()
  (root / 'empty.mid').write_bytes(b'')
  (root / 'text.mid').write_text('this is not MIDI\n')
  (root / 'corrupt.mid').write_bytes(good[:14] + b'MTrk\xff\xff\xff\xff' + bytes(range(40)))
  (root / 'truncated.mid').write_bytes(good[:len(good) // 2])
  drums = pretty_midi.PrettyMIDI()
  kit = pretty_midi.Instrument(0, is_drum=True)
  kit.notes = [pretty_midi.Note(90, 36, i * 0.25, i * 0.25 + 0.1) for i in range(40)]
  drums.instruments.append(kit)
  drums.write(str(root / 'drums.mid'))
  _good_midi(root / 'low.mid', pitch=5)  # Every note under A0 (a few would be folded).
  _good_midi(root / 'short.mid', beats=2)
  mid = mido.MidiFile()  # Tempo only, no notes.
  mid.tracks.append(mido.MidiTrack([mido.MetaMessage('set_tempo', tempo=400000)]))
  mid.save(str(root / 'silent.mid'))
  return {'empty.mid': 'empty file', 'text.mid': 'not a MIDI file',
          'corrupt.mid': 'corrupt or truncated', 'truncated.mid': 'corrupt or truncated',
          'drums.mid': 'only drum notes', 'low.mid': 'all 16 notes outside the piano range',
          'short.mid': 'shorter than min_steps', 'silent.mid': 'no notes'}


def test_midi_dir_skips_bad_files_one_line_each(tmp_path, caplog):
  root = tmp_path / 'midi'
  (root / 'sub').mkdir(parents=True)
  expected = _bad_files(root)
  _good_midi(root / 'sub' / 'good2.MIDI', pitch=55, beats=12)
  (root / 'notes.txt').write_text('ignored: not .mid')
  with caplog.at_level(logging.WARNING):
    corpus = corpora.load_corpus(_data(f'midi_dir:{root}'), cache_dir=tmp_path / 'c',
                                 progress=False)
  pieces = [p for s in corpora.SPLITS for p in corpus.splits[s]]
  assert sorted(p.meta['file'] for p in pieces) == ['good.mid', os.path.join('sub', 'good2.MIDI')]
  assert corpus.num_voices == 2 and corpus.steps_per_quarter == 4
  assert all(p.meta['key_signature'] == 'C major' and p.meta['transposed_by'] == -2
             for p in pieces)
  skipped = dict(corpus.skipped)
  assert set(skipped) == set(expected)
  lines = [r.getMessage() for r in caplog.records if 'skipping' in r.getMessage()]
  assert len(lines) == len(expected)
  for name, reason in expected.items():
    assert reason in skipped[name], (name, skipped[name])
    mine = [line for line in lines if line.startswith(f'skipping {name}: ')]
    assert len(mine) == 1 and '\n' not in mine[0] and reason in mine[0]
  summary = corpus.summary()
  assert 'skipped: 8 files' in summary
  assert '    2  corrupt or truncated MIDI' in summary
  assert '    1  only drum notes' in summary
  assert re.search(r'^all +2 ', summary, re.M), summary


def test_pool_workers_give_same_pieces(tmp_path):
  root = tmp_path / 'midi'
  root.mkdir()
  for i in range(3):
    _good_midi(root / f'{i}.mid', pitch=50 + i, beats=10 + i)
  one = corpora.load_corpus(_data(f'midi_dir:{root}'), tmp_path / 'a', progress=False)
  two = corpora.load_corpus(_data(f'midi_dir:{root}', workers=2), tmp_path / 'b',
                            progress=False)
  for s in corpora.SPLITS:
    assert [p.meta for p in one.splits[s]] == [p.meta for p in two.splits[s]]
    for p, q in zip(one.splits[s], two.splits[s]):
      np.testing.assert_array_equal(p.voices, q.voices)


def test_missing_or_unusable_sources_raise(tmp_path):
  missing = tmp_path / 'nope'
  for source in (f'midi_dir:{missing}', f'jsb:{missing}.json'):
    with pytest.raises(CorpusError, match=str(missing)):
      corpora.load_corpus(_data(source), tmp_path / 'c', progress=False)
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(CorpusError, match=f'{empty}.*no .mid'):
    corpora.load_corpus(_data(f'midi_dir:{empty}'), tmp_path / 'c', progress=False)
  (empty / 'bad.mid').write_text('nope')
  with pytest.raises(CorpusError, match=f'{empty}.*no usable piece'):
    corpora.load_corpus(_data(f'midi_dir:{empty}'), tmp_path / 'c', progress=False)
  with pytest.raises(CorpusError, match='unknown data.source'):
    corpora.load_corpus(_data('folder:/x'), tmp_path / 'c', progress=False)


def _jsb(tmp_path, separated):
  if separated:
    piece = [[72, 67, 64, 48], [72, 67, 64, 48], [74, -1, 65, 50], [-1, -1, -1, -1]] * 5
    data = {'train': [piece, piece[:16]], 'valid': [piece[4:]], 'test': [piece[:8], piece]}
  else:
    piece = [[60, 64, 67], [], [62, 65, 69, 72], [59]] * 5
    data = {'train': [piece], 'valid': [piece, piece[:-1]], 'test': [piece[2:]]}
  path = tmp_path / f'jsb{int(separated)}.json'
  path.write_text(json.dumps(data))
  return path, data


@pytest.mark.parametrize('separated', [False, True])
def test_jsb_keeps_split_and_grid(tmp_path, separated):
  path, raw = _jsb(tmp_path, separated)
  corpus = corpora.load_corpus(_data(f'jsb:{path}', steps_per_quarter=2, min_steps=10),
                               tmp_path / 'c', progress=False)
  assert corpus.steps_per_quarter == (4 if separated else 1)
  assert corpus.num_voices == (4 if separated else None)
  assert [name for name, _ in corpus.skipped] == ['test/0'] if separated else not corpus.skipped
  for split in corpora.SPLITS:
    kept = [f for f in raw[split] if len(f) >= 10]
    assert len(corpus.splits[split]) == len(kept)
    for piece, frames in zip(corpus.splits[split], kept):
      assert 'do not apply' in piece.meta['transpose_note']
      for t, frame in enumerate(frames):
        want = sorted(p for p in frame if p >= 0)
        got = list(np.flatnonzero(piece.roll[t]) + pianoroll.LOWEST_PITCH)
        assert got == sorted(set(want))
        if separated:
          np.testing.assert_array_equal(piece.voices[t], [max(p, -1) for p in frame])


def test_cache_hit_and_untrusted_leftovers(tmp_path, caplog):
  root = tmp_path / 'midi'
  root.mkdir()
  _good_midi(root / 'a.mid')
  _good_midi(root / 'b.mid', pitch=50)
  cache = tmp_path / 'cache'
  first = corpora.load_corpus(_data(f'midi_dir:{root}'), cache, progress=False)
  assert not first.cache_hit and os.path.isdir(first.cache_path)
  name = os.path.basename(first.cache_path)  # No temp file left; the build's lock stays.
  assert sorted(os.listdir(cache)) == [name, name + '.lock']
  assert sorted(os.listdir(first.cache_path)) == [
      'index.npz', 'shard-00000.json', 'shard-00000.roll.npy', 'shard-00000.voices.npy']
  start = time.perf_counter()
  second = corpora.load_corpus(_data(f'midi_dir:{root}'), cache, progress=False)
  assert second.cache_hit and time.perf_counter() - start < 1.0
  for s in corpora.SPLITS:
    for p, q in zip(first.splits[s], second.splits[s], strict=True):
      np.testing.assert_array_equal(p.roll, q.roll)
      np.testing.assert_array_equal(p.voices, q.voices)
      assert p.meta == q.meta and q.voices.dtype == np.int16
  # An option that changes the result is a different cache entry.
  other = corpora.load_corpus(_data(f'midi_dir:{root}', transpose='none'), cache,
                              progress=False)
  assert not other.cache_hit and other.cache_path != first.cache_path
  # A truncated index (an interrupted writer without os.replace) is not trusted: the
  # index is written again from the finished shards.
  index = os.path.join(first.cache_path, 'index.npz')
  data = open(index, 'rb').read()
  with open(index, 'wb') as f:
    f.write(data[:len(data) // 2])
  with caplog.at_level(logging.WARNING):
    third = corpora.load_corpus(_data(f'midi_dir:{root}'), cache, progress=False)
  assert not third.cache_hit and 'ignoring unusable index' in caplog.text
  assert corpora.load_corpus(_data(f'midi_dir:{root}'), cache, progress=False).cache_hit
  # A leftover temp file of an interrupted writer is never read, and the next build
  # deletes it.
  os.remove(index)
  with open(index + '.123.abcd.tmp', 'wb') as f:
    f.write(data)
  assert not corpora.load_corpus(_data(f'midi_dir:{root}'), cache, progress=False).cache_hit
  assert not [f for f in os.listdir(first.cache_path) if f.endswith('.tmp')]
  # Touching a source file changes the key.
  _good_midi(root / 'b.mid', pitch=52, beats=9)
  assert not corpora.load_corpus(_data(f'midi_dir:{root}'), cache, progress=False).cache_hit


def test_bwv_split_keys():
  assert sources.bwv_key('/x/bwv248.23-2.mxl') == sources.bwv_key('bwv248.23-s.mxl') == 'bwv248.23'
  assert sources.bwv_key('bwv69.6-a.mxl') == sources.bwv_key('bwv69.6.xml') == 'bwv69.6'
  assert splits.split_of('bwv248.23') == splits.split_of('bwv248.23')
  assigned = [splits.split_of(f'bwv{i}.{j}') for i in range(200) for j in range(5)]
  frac = {s: assigned.count(s) / len(assigned) for s in corpora.SPLITS}
  assert 0.76 < frac['train'] < 0.84 and 0.07 < frac['valid'] < 0.13, frac


def test_satb_by_name():
  assert sources.satb_indices(['Horn 2', 'Soprano', 'Alto', 'Tenor', 'Bass']) == [1, 2, 3, 4]
  assert sources.satb_indices(['Soprano 1', 'Soprano 2', 'Alto', 'Tenor', 'Bass',
                               'Continuo']) == [0, 2, 3, 4]
  assert sources.satb_indices(['Tenor\rViola', 'Basso continuo', 'S.', 'alt', 'B']) == [
      2, 3, 0, 4]
  assert sources.satb_indices(['', None, 'x', 'y']) == [0, 1, 2, 3]
  with pytest.raises(pianoroll.MidiError, match='cannot identify'):
    sources.satb_indices(['Piano', 'Piano'])


def test_chorale_worker_gives_satb_in_c():
  paths = {p.rsplit('/', 1)[-1]: p for p in sources.chorale_paths()}
  assert 'bwv1.6.mxl' in paths and not any(p.endswith('.rntxt') for p in paths)
  name, split, piece = sources.chorale_piece(paths['bwv1.6.mxl'], _data('bach_chorales'))
  assert name == 'bwv1.6.mxl' and split == splits.split_of('bwv1.6')
  assert piece.meta['voice_names'] == list(pianoroll.SATB)
  assert piece.meta['parts'] == ['Soprano', 'Alto', 'Tenor', 'Bass']  # Horn dropped.
  assert piece.meta['transposed_by'] == -5 and piece.meta['key_signature'] == 'C major'
  np.testing.assert_array_equal(piece.roll, pianoroll.voices_to_roll(piece.voices))


def test_chorale_worker_never_touches_music21s_pickle_cache(monkeypatch):
  """music21 writes its parse pickles in place in one scratch folder: a concurrent build
  that read a half-written one lost a chorale (CI: 318 train pieces instead of 319)."""
  import music21  # pylint: disable=g-import-not-at-top

  def refuse(*args, **kwargs):
    raise AssertionError('music21 pickle cache used')

  monkeypatch.setattr(music21.freezeThaw.StreamFreezer, 'write', refuse)
  monkeypatch.setattr(music21.converter, 'thaw', refuse)
  paths = {p.rsplit('/', 1)[-1]: p for p in sources.chorale_paths()}
  name, split, piece = sources.chorale_piece(paths['bwv281.krn'], _data('bach_chorales'))
  assert split is not None, piece
  assert piece.num_steps > 16


def test_concurrent_preparations_of_one_source_build_it_once(tmp_path):
  import threading  # pylint: disable=g-import-not-at-top
  for i in range(6):
    _good_midi(tmp_path / f'p{i}.mid', pitch=55 + i)
  data = _data(f'midi_dir:{tmp_path}', cache_dir=str(tmp_path / 'cache'))
  results, errors = [], []

  def load():
    try:
      results.append(corpora.load_corpus(data, progress=False))
    except Exception as e:  # pylint: disable=broad-except  (shown by the assert below)
      errors.append(repr(e))

  threads = [threading.Thread(target=load) for _ in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors, errors
  assert sorted(c.cache_hit for c in results) == [False, True, True]
  for c in results[1:]:
    for s in corpora.SPLITS:
      assert [p.roll.tobytes() for p in c.splits[s]] == [
          p.roll.tobytes() for p in results[0].splits[s]]


def test_command_line_prepares_then_hits_cache(tmp_path):
  path, _ = _jsb(tmp_path, separated=False)
  cmd = [sys.executable, '-m', 'bach_jax.data', f'--source=jsb:{path}',
         f'--out={tmp_path / "cache"}', '--min_steps=4']
  first = subprocess.run(cmd, capture_output=True, text=True, check=True)
  assert re.search(r'^all +4 +77 +59..72 +2.03$', first.stdout, re.M), first.stdout
  assert 'cache: miss' in first.stdout and 'wall time' in first.stdout
  second = subprocess.run(cmd, capture_output=True, text=True, check=True)
  assert 'cache: hit' in second.stdout
  bad = subprocess.run(cmd[:3] + [f'--source=jsb:{tmp_path}/missing.json'],
                       capture_output=True, text=True)
  assert bad.returncode != 0 and 'missing.json' in bad.stderr


def test_leading_and_trailing_silence_is_trimmed(tmp_path):
  pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=60.0)  # One beat per second.
  inst = pretty_midi.Instrument(0, name='Piano')
  for b in range(3, 9):  # Silent beats 0-2 (a pickup rest), notes on beats 3..8.
    inst.notes.append(pretty_midi.Note(80, 60 + b % 4, float(b), b + 1.0))
  pm.instruments.append(inst)
  pm.write(str(tmp_path / 'late_start.mid'))
  _good_midi(tmp_path / 'other.mid')
  corpus = corpora.load_corpus(_data(f'midi_dir:{tmp_path}', transpose='none',
                                     cache_dir=str(tmp_path / 'cache')), progress=False)
  pieces = [p for s in corpus.splits.values() for p in s if 'late_start' in p.meta['file']]
  assert len(pieces) == 1
  piece = pieces[0]
  assert piece.roll[0].any() and piece.roll[-1].any()
  assert piece.num_steps == 6 * 4
  assert piece.meta['trimmed_silence'][0] == 12
