"""Deterministic, resumable NumPy batches of piano-roll windows (never imports jax).

Windows. Each piece gets `pad_start` silent frames (voices REST) in front,
marked True in the batches' `start` array so a model can tell the start of a
piece from an internal rest (both are silent frames);
windows of `window_steps` frames start every `hop_steps` frames from the start
of the padded piece, and only whole windows are kept: the tail after the last
whole window is dropped, and a piece shorter than one window gives none, unless
pad_short: then it gives one window, padded at its end with silent frames that
`frame_mask` marks False (so a long window can hold every piece whole).

Order and sharding. `batch_size` is the global batch of all processes. Windows
are numbered piece by piece; epoch e orders them (shuffle=False: in order), cuts
the order into global batches, and process k takes rows [k * local, (k + 1) *
local) of each, local = batch_size // process_count: every process yields the
same number of batches, reads only its own windows, and the process shares are
disjoint and cover the epoch. remainder='drop' drops the last incomplete global
batch; 'pad' fills it with empty rows whose mask is False. The order: up to
EXACT_SHUFFLE_WINDOWS windows, np.random.default_rng([seed, e]).permutation (the
batches of every earlier version); above, IndexShuffle keyed by [seed, e, 2], a
bijection computed for each batch's positions, so memory does not grow with the
corpus.

Augmentation. With augment_transpose = a > 0, each window moves by a shift drawn
uniformly from [-a, a] intersected with the shifts that keep the window inside
the piano (its range read from the window itself). The draw: window i of epoch e
takes np.random.default_rng([seed, e, 1]).random(num_windows)[i] with the exact
permutation; else row r of global batch p takes default_rng([seed, e, 1,
p]).random(batch_size)[r].

Resume. get_state() is the epoch and the position in it, with a fingerprint of
the windowing and of the pieces' lengths and contents (crc32): set_state() on
other data fails. A state written by the versions before the sharded corpus (a
hash of the padded stream) is accepted too.
"""

import hashlib
import zlib
from typing import Optional, Sequence

import numpy as np

LOWEST_PITCH = 21  # Same as pianoroll.LOWEST_PITCH (kept import-free).
NUM_KEYS = 88
REST = -1
# Up to this many windows an epoch's order is np.random.default_rng([seed, e]).permutation
# (16 bytes per window with the shifts' draws); above it, a keyed bijection computed for
# each batch's positions (no per-window memory: corpora of any size).
EXACT_SHUFFLE_WINDOWS = 1 << 21


def piece_crc(roll: np.ndarray, voices: Optional[np.ndarray]) -> int:
  """crc32 of a piece's content: its packed roll, then its voices as int8 (shards.py
  stores both so; the fingerprint of BatchIterator uses it)."""
  crc = zlib.crc32(np.packbits(np.asarray(roll, bool), axis=-1).tobytes())
  if voices is not None:
    crc = zlib.crc32(np.asarray(voices).astype(np.int8).tobytes(), crc)
  return crc


class _InMemory:
  """A list of PianoRoll seen as shards.PieceList is: lengths, num_voices, crc, frames."""

  def __init__(self, pieces: Sequence):
    self._pieces = pieces
    self.lengths = np.array([p.roll.shape[0] for p in pieces], dtype=np.int64)
    self.num_voices = np.array([-1 if p.voices is None else p.voices.shape[1] for p in pieces],
                               dtype=np.int64)
    self._crc = None

  @property
  def crc(self):
    if self._crc is None:
      self._crc = np.array([piece_crc(p.roll, p.voices) for p in self._pieces], np.uint32)
    return self._crc

  def frames(self, j: int, a: int, b: int):
    p = self._pieces[j]
    return p.roll[a:b], None if p.voices is None else p.voices[a:b]


def _source(pieces):
  """What the iterators read: a shards.PieceList as is, a list of PianoRoll wrapped."""
  return pieces if hasattr(pieces, 'frames') else _InMemory(pieces)


def _mix(x):
  """splitmix64's finalizer on uint64 arrays (wrapping arithmetic)."""
  x = x ^ (x >> np.uint64(30))
  x = x * np.uint64(0xBF58476D1CE4E5B9)
  x = x ^ (x >> np.uint64(27))
  x = x * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


class IndexShuffle:
  """A keyed bijection of [0, n) computed per index: a 6-round Feistel network on the
  smallest even number of bits that holds n, walked until it lands below n."""

  def __init__(self, n: int, key):
    self.n = int(n)
    self.half = max(1, (max(1, self.n - 1).bit_length() + 1) // 2)
    self.mask = np.uint64((1 << self.half) - 1)
    self.keys = np.random.default_rng(key).integers(0, 1 << 62, 6, dtype=np.uint64)

  def _round_trip(self, x):
    h = np.uint64(self.half)
    left, right = x >> h, x & self.mask
    for k in self.keys:
      left, right = right, left ^ (_mix(right ^ k) & self.mask)
    return (left << h) | right

  def __call__(self, positions: np.ndarray) -> np.ndarray:
    x = np.asarray(positions, dtype=np.uint64).copy()
    todo = np.ones(x.shape, bool)
    while todo.any():
      x[todo] = self._round_trip(x[todo])
      todo = x >= np.uint64(self.n)
    return x.astype(np.int64)


class BatchIterator:
  """Infinite iterator over training batches; see the module docstring.

  `pieces` is a list of PianoRoll or a shards.PieceList; a batch reads only its own
  windows' frames from it (memory: a few batches, plus 16 bytes per window when the
  epoch has at most EXACT_SHUFFLE_WINDOWS windows).

  Each `next()` returns a dict:
    roll: bool[B_local, window_steps, 88]
    start: bool[B_local, window_steps], True on the silent frames before a piece
    frame_mask: bool[B_local, window_steps], False on frames after a short
      piece's end (pad_short) and on padding rows
    mask: bool[B_local], False on padding rows
    voices: int32[B_local, window_steps, V] (REST = -1), only when num_voices.

  Attributes:
    epoch: the epoch the next batch comes from.
    batches_per_epoch: batches every process yields per epoch.
    num_windows: windows in one epoch.
    exact_shuffle: whether the epoch's order is a NumPy permutation (else IndexShuffle).
  """

  def __init__(self, pieces: Sequence, *, batch_size: int, window_steps: int,
               hop_steps: int, seed: int, shuffle: bool = True, process_index: int = 0,
               process_count: int = 1, remainder: str = 'drop', pad_start: int = 1,
               augment_transpose: int = 0, num_voices: Optional[int] = None,
               pad_short: bool = False):
    if batch_size <= 0 or batch_size % process_count:
      raise ValueError(f'batch_size {batch_size} must be a positive multiple of '
                       f'process_count {process_count}')
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index {process_index} not in [0, {process_count})')
    if remainder not in ('drop', 'pad'):
      raise ValueError(f"remainder must be 'drop' or 'pad', got {remainder!r}")
    if window_steps < 1 or hop_steps < 1 or pad_start < 0 or augment_transpose < 0:
      raise ValueError('window_steps, hop_steps must be >= 1; pad_start, '
                       'augment_transpose >= 0')
    self.batch_size, self.window_steps, self.hop_steps = batch_size, window_steps, hop_steps
    self.seed, self.shuffle, self.remainder = int(seed), shuffle, remainder
    self.local_batch = batch_size // process_count
    self.process_index = process_index
    self.pad_start, self.pad_short = int(pad_start), bool(pad_short)
    self.augment_transpose = int(augment_transpose)
    self.num_voices = num_voices
    self._src = _source(pieces)
    if num_voices is not None:
      wrong = np.flatnonzero(self._src.num_voices != num_voices)
      if wrong.size:
        v = int(self._src.num_voices[wrong[0]])
        raise ValueError(f'num_voices={num_voices} but piece {int(wrong[0])} has '
                         f'{"no voices" if v < 0 else f"{v} voices"}')
    self._padded = self._src.lengths + self.pad_start
    if pad_short:  # A short piece's one window starts at 0 and runs past its end.
      last = np.maximum(self._padded - window_steps, 0)
    else:
      last = self._padded - window_steps
    counts = np.where(last >= 0, last // hop_steps + 1, 0)
    self._first = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    self.num_windows = int(self._first[-1])
    if remainder == 'drop':
      self.batches_per_epoch = self.num_windows // batch_size
    else:
      self.batches_per_epoch = -(-self.num_windows // batch_size)
    if self.batches_per_epoch == 0:
      raise ValueError(f'{self.num_windows} windows of {window_steps} frames make no '
                       f'batch of {batch_size} (remainder={remainder!r})')
    self.exact_shuffle = self.num_windows <= EXACT_SHUFFLE_WINDOWS
    digest = hashlib.sha256()
    for part in (self._params(), self._src.lengths, np.asarray(self._src.crc, np.uint32)):
      digest.update(np.ascontiguousarray(part).tobytes())
    self.fingerprint = digest.hexdigest()[:16]
    self.epoch, self._position = 0, 0
    self._plan_epoch, self._order, self._draws, self._shuffle = None, None, None, None

  def _params(self):
    return np.array([self.window_steps, self.hop_steps, self.pad_start, self.num_voices or 0,
                     self.pad_short])

  def _plan(self):
    """The epoch's order (exact: a permutation; else an IndexShuffle) and shift draws."""
    if self._plan_epoch != self.epoch:
      self._order = self._draws = self._shuffle = None
      if self.exact_shuffle:
        if self.shuffle:
          self._order = np.random.default_rng([self.seed, self.epoch]).permutation(
              self.num_windows)
        if self.augment_transpose:
          self._draws = np.random.default_rng([self.seed, self.epoch, 1]).random(
              self.num_windows)
      elif self.shuffle:
        self._shuffle = IndexShuffle(self.num_windows, [self.seed, self.epoch, 2])
      self._plan_epoch = self.epoch

  def _rows(self, position: int):
    """This process's windows of global batch `position` and their shift draws."""
    self._plan()
    begin = position * self.batch_size + self.process_index * self.local_batch
    positions = np.arange(begin, min(begin + self.local_batch, self.num_windows))
    if self._order is not None:
      windows = self._order[positions]
    elif self._shuffle is not None:
      windows = self._shuffle(positions)
    else:
      windows = positions
    draws = None
    if self.augment_transpose:
      if self._draws is not None:
        draws = self._draws[windows]
      else:
        rng = np.random.default_rng([self.seed, self.epoch, 1, position])
        draws = rng.random(self.batch_size)[positions - position * self.batch_size]
    return windows, draws

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    windows, draws = self._rows(self._position)
    batch = self._gather(windows, draws)
    self._position += 1
    if self._position == self.batches_per_epoch:
      self.epoch, self._position = self.epoch + 1, 0
    return batch

  next = __next__

  def _locate(self, windows: np.ndarray):
    """Windows -> (piece, first frame in the padded piece, frames inside the piece)."""
    piece = np.searchsorted(self._first, windows, side='right') - 1
    offset = (windows - self._first[piece]) * self.hop_steps
    valid = np.minimum(self._padded[piece] - offset, self.window_steps)
    return piece, offset, valid

  def _gather(self, windows: np.ndarray, draws: Optional[np.ndarray]) -> dict:
    b, w, pad = self.local_batch, self.window_steps, self.pad_start
    n = windows.size
    frame_mask = np.zeros((b, w), dtype=bool)
    roll = np.zeros((b, w, NUM_KEYS), dtype=bool)
    start = np.zeros((b, w), dtype=bool)
    voices = None
    if self.num_voices is not None:
      voices = np.full((b, w, self.num_voices), REST, dtype=np.int32)
    for row, (j, o, v) in enumerate(zip(*self._locate(windows))):
      frame_mask[row, :v] = True
      silent = int(np.clip(pad - o, 0, v))  # The pad frames before the piece.
      start[row, :silent] = True
      a, z = max(o - pad, 0), o + v - pad
      if z > a:
        r, vs = self._src.frames(int(j), int(a), int(z))
        roll[row, silent:silent + z - a] = r
        if voices is not None:
          voices[row, silent:silent + z - a] = vs
    if draws is not None and n:
      keys = roll[:n].any(axis=1)  # [n, 88]: keys the window sounds.
      any_key = keys.any(axis=1)
      lo = np.where(any_key, keys.argmax(axis=1), NUM_KEYS)
      hi = np.where(any_key, NUM_KEYS - 1 - keys[:, ::-1].argmax(axis=1), -1)
      a = self.augment_transpose
      low = np.minimum(np.maximum(-a, -lo), 0)
      high = np.maximum(np.minimum(a, NUM_KEYS - 1 - hi), 0)
      s = (low + np.floor(draws * (high - low + 1))).astype(np.int64)
      src = np.arange(NUM_KEYS)[None, :] - s[:, None]  # [n, 88] source key.
      inside = (src >= 0) & (src < NUM_KEYS)
      moved = np.take_along_axis(roll[:n], np.clip(src, 0, NUM_KEYS - 1)[:, None, :], 2)
      roll[:n] = moved & inside[:, None, :]
      if voices is not None:
        v = voices[:n]
        voices[:n] = np.where(v == REST, REST, v + s[:, None, None])
    out = {'mask': np.arange(b) < n, 'start': start, 'frame_mask': frame_mask, 'roll': roll}
    if voices is not None:
      out['voices'] = voices
    return out

  def get_state(self) -> dict:
    """JSON-serializable position: restore with set_state on the same data."""
    return {'epoch': int(self.epoch), 'position': int(self._position),
            'seed': self.seed, 'batch_size': self.batch_size,
            'fingerprint': self.fingerprint}

  def set_state(self, state: dict):
    """Continues exactly where `state` (from get_state) was taken."""
    for name in ('seed', 'batch_size'):
      if state.get(name) != getattr(self, name):
        raise ValueError(f'iterator state does not match this data: {name} is '
                         f'{state.get(name)!r} in the state, {getattr(self, name)!r} here')
    given = state.get('fingerprint')
    if given != self.fingerprint and given != self._legacy_fingerprint():  # Read if needed.
      raise ValueError(f'iterator state does not match this data: fingerprint is '
                       f'{state.get("fingerprint")!r} in the state, {self.fingerprint!r} here')
    position = int(state['position'])
    if not 0 <= position < self.batches_per_epoch:
      raise ValueError(f'state position {position} outside [0, {self.batches_per_epoch})')
    self.epoch, self._position = int(state['epoch']), position

  def _legacy_fingerprint(self) -> str:
    """The fingerprint of bach_jax up to 2026-12 (a hash of every frame of the padded
    training stream), so that a checkpoint written then resumes. Reads every piece."""
    digest = hashlib.sha256()
    starts = np.concatenate([[0], np.cumsum(self._padded)[:-1]]).astype(np.int64)
    offsets = [s + np.arange(c) * self.hop_steps for s, c in zip(starts, np.diff(self._first))]
    for part in [self._params(), self._padded] + offsets:
      digest.update(np.ascontiguousarray(part, dtype=np.int64).tobytes())
    pad, w, nv = self.pad_start, self.window_steps, self.num_voices
    for j, n in enumerate(self._src.lengths):
      digest.update(bytes(pad * NUM_KEYS // 8))
      digest.update(np.packbits(self._src.frames(j, 0, int(n))[0], axis=-1).tobytes())
    digest.update(bytes(w * NUM_KEYS // 8))
    if nv is not None:
      for j, n in enumerate(self._src.lengths):
        digest.update(np.full((pad, nv), REST, np.int16).tobytes())
        digest.update(np.asarray(self._src.frames(j, 0, int(n))[1], np.int16).tobytes())
      digest.update(np.full((w, nv), REST, np.int16).tobytes())
    return digest.hexdigest()[:16]


def piece_batches(pieces: Sequence, *, batch_size: int, process_index: int = 0,
                  process_count: int = 1, pad_start: int = 1,
                  num_voices: Optional[int] = None, max_steps: Optional[int] = None):
  """Yields every piece of a split once, whole, in order, for exact evaluation.

  T is the same for every batch of a call: the longest piece + pad_start,
  rounded up to a multiple of 16, or max_steps if given (longer pieces are then
  cut to their first max_steps - pad_start frames). The last global batch is
  filled with empty rows (frame_mask all False); process k takes rows
  [k * local, (k + 1) * local) of every global batch.

  Yields:
    dicts with roll: bool[B_local, T, 88]; frame_mask: bool[B_local, T], True
    on real frames (False on the pad_start frames in front and after the end);
    start: bool[B_local, T], True on the pad_start frames of real rows;
    piece_index: int32[B_local], index into `pieces` or -1 for a padding row;
    voices: int32[B_local, T, V] (REST = -1) when num_voices is given.
  """
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(f'batch_size {batch_size} must be a positive multiple of '
                     f'process_count {process_count}')
  local = batch_size // process_count
  src = _source(pieces)
  if max_steps is None:
    longest = int(src.lengths.max(initial=0)) + pad_start
    num_steps = max(16, -(-longest // 16) * 16)
  else:
    num_steps = int(max_steps)
  for first in range(0, len(pieces), batch_size):
    roll = np.zeros((local, num_steps, NUM_KEYS), dtype=bool)
    frame_mask = np.zeros((local, num_steps), dtype=bool)
    start = np.zeros((local, num_steps), dtype=bool)
    index = np.full((local,), -1, dtype=np.int32)
    if num_voices is not None:
      voices = np.full((local, num_steps, num_voices), REST, dtype=np.int32)
    for row in range(local):
      i = first + process_index * local + row
      if i >= min(len(pieces), first + batch_size):
        break
      if num_voices is not None and src.num_voices[i] != num_voices:
        v = int(src.num_voices[i])
        raise ValueError(f'num_voices={num_voices} but piece {i} has '
                         f'{"no voices" if v < 0 else f"{v} voices"}')
      n = max(0, min(int(src.lengths[i]), num_steps - pad_start))
      piece_roll, piece_voices = src.frames(i, 0, n)
      roll[row, pad_start:pad_start + n] = piece_roll
      frame_mask[row, pad_start:pad_start + n] = True
      start[row, :pad_start] = True
      index[row] = i
      if num_voices is not None:
        voices[row, pad_start:pad_start + n] = piece_voices
    batch = {'roll': roll, 'frame_mask': frame_mask, 'start': start, 'piece_index': index}
    if num_voices is not None:
      batch['voices'] = voices
    yield batch
