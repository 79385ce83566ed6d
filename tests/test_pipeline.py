"""Tests for bach_jax.data.pipeline: order, shards, resume, padding, augmentation."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bach_jax.data import pipeline
from bach_jax.data.pianoroll import LOWEST_PITCH, REST, voices_to_roll


@pytest.fixture
def pieces(make_piece):
  rng = np.random.default_rng(0)
  return [make_piece(rng, n) for n in (40, 75, 16, 31, 120, 64, 9, 47)]


def _iterator(pieces, **kw):
  args = dict(batch_size=4, window_steps=16, hop_steps=8, seed=0, num_voices=4)
  args.update(kw)
  return pipeline.BatchIterator(pieces, **args)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _windows(pieces, window, hop, pad_start=1):
  """Reference window list: (piece, start in the padded piece)."""
  out = []
  for i, p in enumerate(pieces):
    for s in range(0, p.num_steps + pad_start - window + 1, hop):
      out.append((i, s))
  return out


def _padded_voices(p, pad_start=1):
  return np.concatenate([np.full((pad_start, 4), REST), p.voices])


def test_pipeline_does_not_import_jax():
  code = ('import sys; import bach_jax.data.pipeline, bach_jax.data.corpora; '
          'print("jax" in sys.modules)')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       check=True)
  assert out.stdout.strip() == 'False'


def test_batches_are_windows_of_the_pieces(pieces):
  it = _iterator(pieces, shuffle=False)
  windows = _windows(pieces, 16, 8)
  assert it.num_windows == len(windows) and it.batches_per_epoch == len(windows) // 4
  rows = [b for batch in _take(it, it.batches_per_epoch) for b in zip(
      batch['roll'], batch['voices'], batch['mask'], batch['start'])]
  for (i, s), (roll, voices, mask, start) in zip(windows, rows):
    want = _padded_voices(pieces[i])[s:s + 16]
    assert mask and roll.shape == (16, 88) and voices.dtype == np.int32
    np.testing.assert_array_equal(voices, want)
    np.testing.assert_array_equal(roll, voices_to_roll(want))
    # The start flag marks the pad frame only: windows from a piece's start.
    np.testing.assert_array_equal(start, np.arange(s, s + 16) == 0)
  assert (rows[0][1][0] == REST).all()  # pad_start: a silent frame before each piece.


def test_same_seed_same_batches_other_seed_differs(pieces):
  a, b, c = (_take(_iterator(pieces, seed=s), 12) for s in (3, 3, 4))
  _assert_same(a, b)
  assert any(not np.array_equal(x['voices'], y['voices']) for x, y in zip(a, c))


def test_epochs_reshuffle_and_advance(pieces):
  it = _iterator(pieces)
  n = it.batches_per_epoch
  e0, e1 = _take(it, n), _take(it, n)
  assert it.epoch == 2
  assert any(not np.array_equal(x['voices'], y['voices']) for x, y in zip(e0, e1))


@pytest.mark.parametrize('skip', [0, 4, 10, 13])  # 10 per epoch: 4, 13 cross one.
def test_resume_from_state(pieces, skip):
  kw = dict(augment_transpose=3, seed=7)
  it = _iterator(pieces, **kw)
  assert it.batches_per_epoch == 10
  _take(it, skip)
  state = json.loads(json.dumps(it.get_state()))
  rest = _take(it, 8)
  fresh = _iterator(pieces, **kw)
  fresh.set_state(state)
  _assert_same(_take(fresh, 8), rest)


def test_state_on_other_data_fails(pieces, make_piece):
  state = _iterator(pieces).get_state()
  other = pieces[:-1] + [make_piece(np.random.default_rng(9), pieces[-1].num_steps)]
  with pytest.raises(ValueError, match='fingerprint'):
    _iterator(other).set_state(state)
  with pytest.raises(ValueError, match='seed'):
    _iterator(pieces, seed=1).set_state(state)


@pytest.mark.parametrize('remainder', ['drop', 'pad'])
def test_process_shards_are_disjoint_and_cover(pieces, remainder):
  kw = dict(batch_size=6, shuffle=True, seed=2, remainder=remainder)
  shards = [_iterator(pieces, process_index=k, process_count=2, **kw) for k in range(2)]
  whole = _iterator(pieces, **kw)
  n = whole.batches_per_epoch
  assert shards[0].batches_per_epoch == shards[1].batches_per_epoch == n
  total = whole.num_windows
  assert n == (total // 6 if remainder == 'drop' else -(-total // 6))
  seen = []
  for _ in range(n):
    g = next(whole)
    parts = [next(s) for s in shards]
    for k in g:  # Process k's rows are rows [3k, 3k + 3) of the global batch.
      np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), g[k])
    for p in parts:
      assert p['roll'].shape == (3, 16, 88)
      seen += [v.tobytes() for v, m in zip(p['voices'], p['mask']) if m]
  # Identify windows by content: they are distinct for these random pieces.
  every = [_padded_voices(pieces[i])[s:s + 16].astype(np.int32).tobytes()
           for i, s in _windows(pieces, 16, 8)]
  assert len(set(every)) == len(every)
  assert len(seen) == len(set(seen))
  if remainder == 'pad':
    assert sorted(seen) == sorted(every)
  else:
    assert len(seen) == n * 6 and set(seen) <= set(every)


def test_pad_remainder_masks_rows(pieces):
  it = _iterator(pieces, batch_size=8, remainder='pad', shuffle=False)
  total = it.num_windows
  assert total % 8
  last = _take(it, it.batches_per_epoch)[-1]
  real = total % 8
  np.testing.assert_array_equal(last['mask'], np.arange(8) < real)
  assert not last['roll'][real:].any() and (last['voices'][real:] == REST).all()
  with pytest.raises(ValueError, match='multiple'):
    _iterator(pieces, batch_size=5, process_count=2)


def test_augmentation_in_range_and_deterministic(make_piece):
  rng = np.random.default_rng(1)
  edge = [make_piece(rng, 40, low=21, high=30), make_piece(rng, 40, low=100, high=109),
          make_piece(rng, 60)]
  kw = dict(augment_transpose=6, shuffle=False, batch_size=2)
  a = _take(_iterator(edge, seed=5, **kw), 10)
  _assert_same(a, _take(_iterator(edge, seed=5, **kw), 10))
  plain = _take(_iterator(edge, seed=5, **dict(kw, augment_transpose=0)), 10)
  shifts = set()
  for x, y in zip(a, plain):
    v, w = x['voices'], y['voices']
    np.testing.assert_array_equal(v == REST, w == REST)
    sounding = v != REST
    assert v[sounding].min() >= LOWEST_PITCH and v[sounding].max() <= 108
    for row in range(2):  # One shift per window, the roll moved with the voices.
      d = np.unique(v[row][sounding[row]] - w[row][sounding[row]])
      assert d.size == 1 and abs(d[0]) <= 6
      shifts.add(int(d[0]))
      np.testing.assert_array_equal(x['roll'][row], voices_to_roll(v[row]))
  assert len(shifts) > 3


def test_piece_batches_cover_every_frame_once(pieces):
  for count in (1, 2):
    seen = {}
    shapes = set()
    for k in range(count):
      for batch in pipeline.piece_batches(pieces, batch_size=4, process_index=k,
                                          process_count=count, num_voices=4):
        shapes.add(batch['roll'].shape)
        for roll, fmask, voices, idx, start in zip(
            batch['roll'], batch['frame_mask'], batch['voices'], batch['piece_index'],
            batch['start']):
          if idx < 0:
            assert not fmask.any() and not roll.any() and not start.any()
            continue
          assert idx not in seen and not fmask[0]
          seen[idx] = True
          np.testing.assert_array_equal(start, np.arange(fmask.size) == 0)  # The pad frame.
          np.testing.assert_array_equal(voices[fmask], pieces[idx].voices)
          np.testing.assert_array_equal(roll[fmask], pieces[idx].roll)
          assert not roll[~fmask].any()
    assert sorted(seen) == list(range(len(pieces)))
    assert shapes == {(4 // count, 128, 88)}  # Longest 120 + 1, rounded up to 16.


def test_piece_batches_max_steps_cuts(pieces):
  batches = list(pipeline.piece_batches(pieces, batch_size=3, max_steps=32))
  assert len(batches) == 3 and all(b['roll'].shape == (3, 32, 88) for b in batches)
  assert batches[0]['frame_mask'][1].sum() == 31  # 75 frames cut to 32 - 1.
  assert 'voices' not in batches[0]


def test_pad_short_gives_short_pieces_one_masked_window(pieces):
  """With pad_short, pieces shorter than a window train whole, padding masked out."""
  it = _iterator(pieces, window_steps=64, hop_steps=16, shuffle=False, pad_short=True,
                 batch_size=1)
  plain = _iterator(pieces, window_steps=64, hop_steps=16, shuffle=False, batch_size=1)
  # Lengths 40, 16, 31, 9, 47 (+1 pad frame) fit in one window; 75 -> 1, 120 -> 4, 64 -> 1.
  assert plain.num_windows == 6 and it.num_windows == 11
  short = [p for p in pieces if p.num_steps + 1 < 64]
  for _ in range(it.num_windows):
    b = next(it)
    n = int(b['frame_mask'][0].sum())
    assert b['frame_mask'][0, :n].all()
    assert not b['roll'][0, n:].any() and (b['voices'][0, n:] == REST).all()
    if n < 64:  # A whole short piece, from its start frame.
      piece = short.pop(0)
      np.testing.assert_array_equal(b['voices'][0, :n], _padded_voices(piece))
      np.testing.assert_array_equal(b['start'][0], np.arange(64) == 0)
  assert not short
  shifted = _iterator(pieces, window_steps=64, hop_steps=16, pad_short=True, batch_size=11,
                      augment_transpose=12)
  b = next(shifted)
  for roll, voices in zip(b['roll'], b['voices']):  # Nothing moved off the keyboard.
    np.testing.assert_array_equal(roll, voices_to_roll(voices))
