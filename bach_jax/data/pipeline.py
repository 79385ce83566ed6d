"""Deterministic, resumable NumPy batches of piano-roll windows (never imports jax).

Windows. Each piece gets `pad_start` silent frames (voices REST) in front,
marked True in the batches' `start` array so a model can tell the start of a
piece from an internal rest (both are silent frames);
windows of `window_steps` frames start every `hop_steps` frames from the start
of the padded piece, and only whole windows are kept: the tail after the last
whole window is dropped, and a piece shorter than one window gives none, unless
pad_short: then it gives one window, padded at its end with silent frames that
`frame_mask` marks False (so a long window can hold every piece whole).

Order and sharding. `batch_size` is the global batch of all processes. Epoch e
permutes the list of all windows with np.random.default_rng([seed, e]) (or keeps
it in order when shuffle=False), cuts it into global batches, and process k
takes rows [k * local, (k + 1) * local) of each, local = batch_size //
process_count: every process yields the same number of batches, and the shards
are disjoint and cover the epoch. remainder='drop' drops the last incomplete
global batch; 'pad' fills it with empty rows whose mask is False.

Augmentation. With augment_transpose = a > 0, window i of epoch e moves by a
shift drawn uniformly from [-a, a] intersected with the shifts that keep the
window inside the piano, from np.random.default_rng([seed, e, 1]).
"""

import hashlib
from typing import Optional, Sequence

import numpy as np

LOWEST_PITCH = 21  # Same as pianoroll.LOWEST_PITCH (kept import-free).
NUM_KEYS = 88
REST = -1


def _padded_concat(pieces, pad_start: int, num_voices: Optional[int]):
  """All pieces, each after pad_start silent frames, end to end.

  Returns:
    roll: bool[N, 88], voices: int16[N, V] or None, start: bool[N] True on
    the pad_start frames, starts: int64[P] offset of each padded piece,
    lengths: int64[P] padded lengths.
  """
  lengths = np.array([p.roll.shape[0] + pad_start for p in pieces], dtype=np.int64)
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
  total = int(lengths.sum())
  roll = np.zeros((total, NUM_KEYS), dtype=bool)
  start = np.zeros((total,), dtype=bool)
  voices = None
  if num_voices is not None:
    voices = np.full((total, num_voices), REST, dtype=np.int16)
  for p, s, n in zip(pieces, starts, lengths):
    roll[s + pad_start:s + n] = p.roll
    start[s:s + pad_start] = True
    if voices is not None:
      if p.voices is None or p.voices.shape[1] != num_voices:
        shape = None if p.voices is None else p.voices.shape
        raise ValueError(f'num_voices={num_voices} but a piece ({p.meta.get("file")}) '
                         f'has voices {shape}')
      voices[s + pad_start:s + n] = p.voices
  return roll, voices, start, starts, lengths


class BatchIterator:
  """Infinite iterator over training batches; see the module docstring.

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
    self.augment_transpose = int(augment_transpose)
    self.num_voices = num_voices
    self._roll, self._voices, self._start, starts, lengths = _padded_concat(
        pieces, pad_start, num_voices)
    if pad_short:  # A short piece's one window starts at 0 and runs past its end.
      last = np.maximum(lengths - window_steps, 0)
    else:
      last = lengths - window_steps
    offsets = [s + np.arange(0, n + 1, hop_steps) for s, n in zip(starts, last)]
    self._offsets = np.concatenate(offsets or [np.zeros(0, np.int64)]).astype(np.int64)
    # Frames per window that belong to its piece (window_steps unless padded).
    owner = np.repeat(np.arange(len(lengths)), [o.size for o in offsets])
    ends = (starts + lengths)[owner] if owner.size else np.zeros(0, np.int64)
    self._valid = np.minimum(ends - self._offsets, window_steps).astype(np.int64)
    # Whole windows past the stream's end read these silent frames.
    self._roll = np.concatenate([self._roll, np.zeros((window_steps, NUM_KEYS), bool)])
    self._start = np.concatenate([self._start, np.zeros((window_steps,), bool)])
    if self._voices is not None:
      self._voices = np.concatenate(
          [self._voices, np.full((window_steps, num_voices), REST, np.int16)])
    self.num_windows = int(self._offsets.size)
    if remainder == 'drop':
      self.batches_per_epoch = self.num_windows // batch_size
    else:
      self.batches_per_epoch = -(-self.num_windows // batch_size)
    if self.batches_per_epoch == 0:
      raise ValueError(f'{self.num_windows} windows of {window_steps} frames make no '
                       f'batch of {batch_size} (remainder={remainder!r})')
    # Lowest / highest key of every window (88 / -1 when silent), for augmentation.
    keys = np.arange(NUM_KEYS)
    frame_lo = np.where(self._roll, keys, NUM_KEYS).min(axis=1)
    frame_hi = np.where(self._roll, keys, -1).max(axis=1)
    view = np.lib.stride_tricks.sliding_window_view
    inside = np.arange(window_steps) < self._valid[:, None]  # Not the next piece's frames.
    self._win_lo = np.where(inside, view(frame_lo, window_steps)[self._offsets],
                            NUM_KEYS).min(axis=1)
    self._win_hi = np.where(inside, view(frame_hi, window_steps)[self._offsets], -1).max(axis=1)
    digest = hashlib.sha256()
    for part in (np.array([window_steps, hop_steps, pad_start, num_voices or 0, pad_short]),
                 lengths, self._offsets, np.packbits(self._roll)):
      digest.update(np.ascontiguousarray(part).tobytes())
    if self._voices is not None:
      digest.update(self._voices.tobytes())
    self.fingerprint = digest.hexdigest()[:16]
    self.epoch, self._position = 0, 0
    self._order_epoch, self._order, self._shifts = None, None, None

  def _epoch_plan(self):
    """Window order and shifts of self.epoch (computed once per epoch)."""
    if self._order_epoch != self.epoch:
      if self.shuffle:
        self._order = np.random.default_rng([self.seed, self.epoch]).permutation(
            self.num_windows)
      else:
        self._order = np.arange(self.num_windows)
      self._shifts = None
      if self.augment_transpose:
        a = self.augment_transpose
        low = np.maximum(-a, -self._win_lo)  # Silent windows: lo=88, hi=-1.
        high = np.minimum(a, NUM_KEYS - 1 - self._win_hi)
        low, high = np.minimum(low, 0), np.maximum(high, 0)
        u = np.random.default_rng([self.seed, self.epoch, 1]).random(self.num_windows)
        self._shifts = (low + np.floor(u * (high - low + 1))).astype(np.int64)
      self._order_epoch = self.epoch
    return self._order, self._shifts

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    order, shifts = self._epoch_plan()
    begin = self._position * self.batch_size + self.process_index * self.local_batch
    rows = order[begin:begin + self.local_batch]
    batch = self._gather(rows, shifts)
    self._position += 1
    if self._position == self.batches_per_epoch:
      self.epoch, self._position = self.epoch + 1, 0
    return batch

  next = __next__

  def _gather(self, rows: np.ndarray, shifts: Optional[np.ndarray]) -> dict:
    b, w = self.local_batch, self.window_steps
    n = rows.size
    index = self._offsets[rows][:, None] + np.arange(w)
    frame_mask = np.zeros((b, w), dtype=bool)
    frame_mask[:n] = np.arange(w) < self._valid[rows][:, None]
    roll = np.zeros((b, w, NUM_KEYS), dtype=bool)
    roll[:n] = self._roll[index] & frame_mask[:n, :, None]
    start = np.zeros((b, w), dtype=bool)
    start[:n] = self._start[index] & frame_mask[:n]
    out = {'mask': np.arange(b) < n, 'start': start, 'frame_mask': frame_mask}
    if self._voices is not None:
      voices = np.full((b, w, self._voices.shape[1]), REST, dtype=np.int32)
      voices[:n] = np.where(frame_mask[:n, :, None], self._voices[index], REST)
    if shifts is not None and n:
      s = shifts[rows]
      src = np.arange(NUM_KEYS)[None, :] - s[:, None]  # [n, 88] source key.
      valid = (src >= 0) & (src < NUM_KEYS)
      moved = np.take_along_axis(roll[:n], np.clip(src, 0, NUM_KEYS - 1)[:, None, :], 2)
      roll[:n] = moved & valid[:, None, :]
      if self._voices is not None:
        v = voices[:n]
        voices[:n] = np.where(v == REST, REST, v + s[:, None, None])
    out['roll'] = roll
    if self._voices is not None:
      out['voices'] = voices
    return out

  def get_state(self) -> dict:
    """JSON-serializable position: restore with set_state on the same data."""
    return {'epoch': int(self.epoch), 'position': int(self._position),
            'seed': self.seed, 'batch_size': self.batch_size,
            'fingerprint': self.fingerprint}

  def set_state(self, state: dict):
    """Continues exactly where `state` (from get_state) was taken."""
    for name in ('seed', 'batch_size', 'fingerprint'):
      if state.get(name) != getattr(self, name):
        raise ValueError(f'iterator state does not match this data: {name} is '
                         f'{state.get(name)!r} in the state, {getattr(self, name)!r} here')
    position = int(state['position'])
    if not 0 <= position < self.batches_per_epoch:
      raise ValueError(f'state position {position} outside [0, {self.batches_per_epoch})')
    self.epoch, self._position = int(state['epoch']), position


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
  if max_steps is None:
    longest = max((p.roll.shape[0] for p in pieces), default=0) + pad_start
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
      piece = pieces[i]
      n = max(0, min(piece.roll.shape[0], num_steps - pad_start))
      roll[row, pad_start:pad_start + n] = piece.roll[:n]
      frame_mask[row, pad_start:pad_start + n] = True
      start[row, :pad_start] = True
      index[row] = i
      if num_voices is not None:
        if piece.voices is None or piece.voices.shape[1] != num_voices:
          raise ValueError(f'num_voices={num_voices} but piece {i} has voices '
                           f'{None if piece.voices is None else piece.voices.shape}')
        voices[row, pad_start:pad_start + n] = piece.voices[:n]
    batch = {'roll': roll, 'frame_mask': frame_mask, 'start': start, 'piece_index': index}
    if num_voices is not None:
      batch['voices'] = voices
    yield batch
