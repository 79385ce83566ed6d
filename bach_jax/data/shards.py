"""A prepared corpus on disk: shards of bit-packed rolls, read by random access.

Why not Grain + ArrayRecord: a training window is a slice of one piece's frames. In
flat NumPy shards a window is one positioned read (`os.pread`) of window x 11 bytes,
whatever the piece's length; ArrayRecord stores records (pieces) that would be read
and decoded whole for every window. The batch order, the process shares and exact
resume already live in pipeline.BatchIterator (a position in a seeded order), so no
other loader state is needed. Reads go through `pread`, not a memory map: pages of a
map stay in the process's RSS once touched, reads do not.

Layout of a corpus folder (<cache dir>/<kind>-<key hash>/):

  shard-00000.roll.npy    uint8[frames, 11]: every frame of the shard's pieces, end to
                          end, np.packbits of the 88 keys
  shard-00000.voices.npy  int8[n]: each piece's voices int[T, V] raveled, end to end
                          (MIDI pitch, REST = -1; pieces without voices take none)
  shard-00000.json        the shard's pieces (name, split, meta, length, offsets, stats,
                          crc32) and skipped files; written last: a shard is finished
                          when its JSON is there and the sizes it gives match
  index.npz               one row per piece (shard, offsets, length, voices, split,
                          stats, crc32), the shards' sizes, the key and the skipped
                          files: written when every shard is finished

Shard k holds the results of source files [k * F, (k + 1) * F) (F = data.shard_files)
in source order, so a killed preparation keeps its finished shards and a second run
prepares only the others. Opening a corpus reads the index (about 40 bytes per piece)
and checks every shard's files are there with the sizes the index gives; a missing,
truncated or unreadable shard stops the run with a CorpusError naming it. Reads of a
whole piece check its crc32; `check(full=True)` checks every piece.
"""

import collections
import collections.abc
import json
import os
import threading

import numpy as np

from bach_jax.data import cache
from bach_jax.data.pianoroll import LOWEST_PITCH, NUM_KEYS, PianoRoll
from bach_jax.data.pipeline import piece_crc
from bach_jax.errors import CorpusError

SPLITS = ('train', 'valid', 'test')
ROLL_BYTES = NUM_KEYS // 8  # 11 bytes per frame.
INDEX = 'index.npz'
_FIELDS = ('shard', 'roll_offset', 'voices_offset', 'length', 'num_voices', 'lowest',
           'highest', 'max_notes', 'notes', 'folded', 'crc')
_OPEN_SHARDS = 64  # Shard files kept open per process (least recently used closed).


def shard_name(k: int) -> str:
  return f'shard-{k:05d}'


def piece_stats(piece: PianoRoll) -> dict:
  """What the summary and the config checks need of a piece, so they never read it."""
  keys = np.flatnonzero(piece.roll.any(axis=0))
  per_frame = piece.roll.sum(axis=1)
  return {'lowest': int(keys[0]) + LOWEST_PITCH if keys.size else -1,
          'highest': int(keys[-1]) + LOWEST_PITCH if keys.size else -1,
          'max_notes': int(per_frame.max()) if per_frame.size else 0,
          'notes': int(per_frame.sum()), 'folded': int(piece.meta.get('folded_notes') or 0)}


def _piece_bytes(piece: PianoRoll):
  roll = np.packbits(piece.roll, axis=-1)
  voices = (np.zeros(0, np.int8) if piece.voices is None else
            piece.voices.astype(np.int8).ravel())
  return roll, voices


def write_shard(folder: str, k: int, digest: str, jobs: tuple, results: list):
  """Writes shard k: results [(name, split, PianoRoll or reason)] of jobs [a, b)."""
  pieces, skipped, rolls, voices = [], [], [], []
  frames = values = 0
  for name, split, out in results:
    if split is None:
      skipped.append([name, out])
      continue
    roll, flat = _piece_bytes(out)
    pieces.append({'name': name, 'split': split, 'meta': out.meta, 'length': out.num_steps,
                   'num_voices': -1 if out.voices is None else out.num_voices,
                   'roll_offset': frames, 'voices_offset': values,
                   'crc': piece_crc(out.roll, out.voices),
                   **piece_stats(out)})
    rolls.append(roll)
    voices.append(flat)
    frames += out.num_steps
    values += flat.size
  base = os.path.join(folder, shard_name(k))
  roll = np.concatenate(rolls) if rolls else np.zeros((0, ROLL_BYTES), np.uint8)
  flat = np.concatenate(voices) if voices else np.zeros(0, np.int8)
  cache.atomic_write(base + '.roll.npy', lambda f: np.save(f, roll))
  cache.atomic_write(base + '.voices.npy', lambda f: np.save(f, flat))
  info = {'key': digest, 'jobs': list(jobs), 'pieces': pieces, 'skipped': skipped,
          'sizes': [os.path.getsize(base + '.roll.npy'), os.path.getsize(base + '.voices.npy')]}
  cache.atomic_write(base + '.json', lambda f: f.write(json.dumps(info).encode()))


def read_shard_info(folder: str, k: int, digest: str = None, jobs: tuple = None):
  """Shard k's JSON if it is finished (and of this key and jobs), else None."""
  base = os.path.join(folder, shard_name(k))
  try:
    with open(base + '.json', 'rb') as f:
      info = json.loads(f.read())
    sizes = [os.path.getsize(base + '.roll.npy'), os.path.getsize(base + '.voices.npy')]
  except (OSError, ValueError):
    return None
  if info.get('sizes') != sizes:
    return None
  if digest is not None and (info.get('key') != digest or info.get('jobs') != list(jobs)):
    return None
  return info


def write_index(folder: str, key_json: str, grid: int, num_shards: int, splits: dict):
  """The index of the finished shards 0..num_shards-1; splits: piece name -> split."""
  rows = collections.defaultdict(list)
  sizes, skipped, reasons = [], [], []
  for k in range(num_shards):
    info = read_shard_info(folder, k)
    sizes.append(info['sizes'])
    skipped += info['skipped']
    for p in info['pieces']:
      rows['shard'].append(k)
      rows['split'].append(SPLITS.index(splits[p['name']]))
      reason = p['meta'].get('voices_reason') or ''
      if reason not in reasons:
        reasons.append(reason)
      rows['voices_reason'].append(reasons.index(reason))
      for field in _FIELDS[1:]:
        rows[field].append(p[field])
  arrays = {f: np.array(rows[f], dtype=np.int64) for f in _FIELDS + ('split', 'voices_reason')}
  arrays['crc'] = arrays['crc'].astype(np.uint32)
  arrays.update(key=np.array(key_json), grid=np.array(grid), skipped=np.array(json.dumps(skipped)),
                reasons=np.array(json.dumps(reasons)),
                shard_sizes=np.array(sizes, dtype=np.int64).reshape(-1, 2))
  cache.atomic_write(os.path.join(folder, INDEX), lambda f: np.savez(f, **arrays))


def forget(folder: str, ks):
  """Marks shards ks unfinished (and the index gone), so that the next build redoes them."""
  for name in [INDEX] + [shard_name(k) + '.json' for k in ks]:
    try:
      os.remove(os.path.join(folder, name))
    except FileNotFoundError:
      pass


class DamagedShard(CorpusError):
  """Prepared shards whose files are missing, truncated or fail their checksums."""

  def __init__(self, message: str, ks):
    super().__init__(message)
    self.shards = list(ks)


def _npy_data_offset(path: str, dtype, width):
  """Byte offset of an .npy file's data, or what is wrong with it (a str naming it)."""
  try:
    with open(path, 'rb') as f:
      version = np.lib.format.read_magic(f)
      read = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
              np.lib.format.read_array_header_2_0)
      shape, fortran, dt = read(f)
      offset = f.tell()
  except (OSError, ValueError) as e:
    return f'{path}: damaged shard (unreadable header: {e})'
  if dt != np.dtype(dtype) or fortran or len(shape) != (2 if width else 1) or (
      width and shape[1] != width):
    return f'{path}: damaged shard (holds {dt}{list(shape)})'
  return offset


class Prepared:
  """An opened corpus folder: the index in memory, pieces read from the shards on demand."""

  def __init__(self, folder: str, key_json: str):
    path = os.path.join(folder, INDEX)
    with np.load(path, allow_pickle=False) as z:
      if str(z['key']) != key_json:
        raise ValueError('key mismatch')
      self.rows = {f: z[f] for f in _FIELDS + ('split', 'voices_reason')}
      self.grid = int(z['grid'])
      self.skipped = [tuple(x) for x in json.loads(str(z['skipped']))]
      self.reasons = json.loads(str(z['reasons']))
      sizes = z['shard_sizes']
    self.folder = folder
    self._offsets, damaged = [], {}
    for k, want in enumerate(sizes):
      base = os.path.join(folder, shard_name(k))
      files = (base + '.roll.npy', base + '.voices.npy')
      for name, size in zip(files, want):
        have = os.path.getsize(name) if os.path.exists(name) else None
        if have != size:
          got = 'missing' if have is None else f'{have:,} bytes, the index says {size:,}'
          damaged.setdefault(k, f'{name}: damaged shard ({got})')
      offsets = (_npy_data_offset(files[0], np.uint8, ROLL_BYTES) if k not in damaged else 0,
                 _npy_data_offset(files[1], np.int8, None) if k not in damaged else 0)
      for o in offsets:
        if isinstance(o, str):
          damaged.setdefault(k, o)
      self._offsets.append(offsets)
    if damaged:
      first = min(damaged)
      more = f' (and {len(damaged) - 1} more shards)' if len(damaged) > 1 else ''
      raise DamagedShard(damaged[first] + more, sorted(damaged))
    self._first = np.searchsorted(self.rows['shard'], np.arange(len(sizes)), 'left')
    self._files = collections.OrderedDict()
    self._infos = collections.OrderedDict()
    self._lock = threading.Lock()

  def split(self, name: str) -> 'PieceList':
    return PieceList(self, np.flatnonzero(self.rows['split'] == SPLITS.index(name)))

  def _fd(self, k: int, which: int) -> int:
    with self._lock:
      key = (k, which)
      if key not in self._files:
        suffix = ('.roll.npy', '.voices.npy')[which]
        self._files[key] = os.open(os.path.join(self.folder, shard_name(k) + suffix),
                                   os.O_RDONLY)
        while len(self._files) > _OPEN_SHARDS:
          os.close(self._files.popitem(last=False)[1])
      self._files.move_to_end(key)
      return self._files[key]

  def _pread(self, k: int, which: int, nbytes: int, offset: int) -> bytes:
    name = os.path.join(self.folder, shard_name(k) + ('.roll.npy', '.voices.npy')[which])
    try:
      data = os.pread(self._fd(k, which), nbytes, self._offsets[k][which] + offset)
    except OSError as e:
      raise CorpusError(f'{name}: cannot read the shard ({e.strerror or e})') from None
    if len(data) != nbytes:
      raise DamagedShard(f'{name}: damaged shard (a read came back short)', [k])
    return data

  def frames(self, i: int, a: int, b: int):
    """Frames [a, b) of piece i -> (bool[b - a, 88], int16[b - a, V] or None)."""
    r = self.rows
    k, v = int(r['shard'][i]), int(r['num_voices'][i])
    raw = self._pread(k, 0, (b - a) * ROLL_BYTES, (int(r['roll_offset'][i]) + a) * ROLL_BYTES)
    roll = np.unpackbits(np.frombuffer(raw, np.uint8).reshape(b - a, ROLL_BYTES), axis=-1,
                         count=NUM_KEYS).astype(bool)
    voices = None
    if v >= 0:
      raw = self._pread(k, 1, (b - a) * v, int(r['voices_offset'][i]) + a * v)
      voices = np.frombuffer(raw, np.int8).reshape(b - a, v).astype(np.int16)
    return roll, voices

  def info(self, k: int) -> dict:
    """Shard k's JSON (the pieces' meta), the last few kept in memory."""
    with self._lock:
      if k not in self._infos:
        info = read_shard_info(self.folder, k)
        if info is None:
          raise DamagedShard(f'{os.path.join(self.folder, shard_name(k))}.json: damaged shard '
                             '(its description is missing or does not match its files)', [k])
        self._infos[k] = info
        while len(self._infos) > 4:
          self._infos.popitem(last=False)
      return self._infos[k]

  def piece(self, i: int) -> PianoRoll:
    """Piece i, whole; CorpusError naming its shard when its bytes do not check."""
    r = self.rows
    k, length = int(r['shard'][i]), int(r['length'][i])
    roll, voices = self.frames(i, 0, length)
    if piece_crc(roll, voices) != int(r['crc'][i]):
      raise DamagedShard(f'{os.path.join(self.folder, shard_name(k))}.roll.npy: damaged shard '
                         f'(piece {i - int(self._first[k])} fails its checksum)', [k])
    entry = self.info(k)['pieces'][i - int(self._first[k])]
    return PianoRoll(roll, voices, self.grid, dict(entry['meta']))

  def check(self):
    """Reads every piece and checks its crc32: DamagedShard naming the first bad shard,
    with every bad shard in its `shards`."""
    bad = {}
    for i in range(self.rows['length'].size):
      k = int(self.rows['shard'][i])
      if k not in bad:
        try:
          self.piece(i)
        except DamagedShard as e:
          bad[k] = str(e)
    if bad:
      more = f' (and {len(bad) - 1} more shards)' if len(bad) > 1 else ''
      raise DamagedShard(bad[min(bad)] + more, sorted(bad))

  def close(self):
    with self._lock:
      for fd in self._files.values():
        os.close(fd)
      self._files.clear()


def stats(pieces, name: str) -> np.ndarray:
  """PieceList.stats(name) of a PieceList (from the index), or of a list of PianoRoll
  (computed from the pieces)."""
  if isinstance(pieces, PieceList):
    return pieces.stats(name)
  if name == 'length':
    return np.array([p.num_steps for p in pieces], dtype=np.int64)
  if name == 'num_voices':
    return np.array([-1 if p.voices is None else p.num_voices for p in pieces], np.int64)
  if name == 'voices_reason':  # An index into the corpus's reasons; a list has none.
    return np.full(len(pieces), -1, dtype=np.int64)
  return np.array([piece_stats(p)[name] for p in pieces], dtype=np.int64)


class PieceList(collections.abc.Sequence):
  """The pieces of one split, a read-only sequence of PianoRoll read on demand.

  Besides indexing, slicing, len and iteration: `lengths` (frames per piece),
  `stats(name)` (per-piece numbers from the index) and `frames(j, a, b)` (frames
  [a, b) of piece j, what training windows read).
  """

  def __init__(self, prepared: Prepared, ids: np.ndarray):
    self._prepared, self._ids = prepared, np.asarray(ids, dtype=np.int64)
    self.lengths = prepared.rows['length'][self._ids]
    self.num_voices = prepared.rows['num_voices'][self._ids]
    self.crc = prepared.rows['crc'][self._ids]

  def stats(self, name: str) -> np.ndarray:
    """int64[len(self)] of the index: length, lowest, highest (MIDI pitch, -1 when
    silent), max_notes (in one frame), notes, folded, num_voices, voices_reason."""
    return self._prepared.rows[name][self._ids]

  def __len__(self):
    return int(self._ids.size)

  def __getitem__(self, j):
    if isinstance(j, slice):
      return PieceList(self._prepared, self._ids[j])
    j = int(j)
    if not -len(self) <= j < len(self):
      raise IndexError(f'piece {j} of {len(self)}')
    return self._prepared.piece(int(self._ids[j]))

  def __iter__(self):
    for i in self._ids:
      yield self._prepared.piece(int(i))

  def frames(self, j: int, a: int, b: int):
    return self._prepared.frames(int(self._ids[j]), a, b)
