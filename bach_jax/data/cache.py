"""On-disk cache of a prepared corpus: one compressed .npz per source and options.

Rolls are bit-packed, voices and metadata stored flat; the full key is stored
inside and compared on read, and a file that cannot be read completely is
ignored (and rebuilt by the caller). Writes go to a temp file in the same
directory and are renamed into place, so an interrupted preparation never
leaves a file a later run would trust.
"""

import contextlib
import hashlib
import json
import logging
import os
import tempfile

import numpy as np

from bach_jax.data import pianoroll
from bach_jax.data.pianoroll import PianoRoll
from bach_jax.errors import CorpusError

_log = logging.getLogger(__name__)  # 'warning: ...' lines at the command line (errors.py).

SPLITS = ('train', 'valid', 'test')


def default_cache_dir() -> str:
  """$BACH_JAX_CACHE, else ~/.cache/bach_jax (read now, not at import)."""
  return os.environ.get('BACH_JAX_CACHE') or os.path.join(
      os.path.expanduser('~'), '.cache', 'bach_jax')


def path_for(cache_dir: str, kind: str, key: dict) -> str:
  """Cache file of a source: KIND-<hash of the key>.npz in cache_dir."""
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
  return os.path.join(os.path.expanduser(cache_dir), f'{kind}-{digest}.npz')


@contextlib.contextmanager
def build_lock(path: str):
  """Holds an exclusive lock on <path>.lock (POSIX flock) while a cache file is built:
  a second process (or thread) preparing the same source waits, then reads the
  file. Where no lock can be taken (no fcntl, a read-only folder) it does not wait."""
  try:
    import fcntl  # pylint: disable=g-import-not-at-top  (POSIX only)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    f = open(f'{path}.lock', 'a')  # pylint: disable=consider-using-with
  except (ImportError, OSError):
    yield
    return
  try:
    try:
      fcntl.flock(f, fcntl.LOCK_EX)
    except OSError:  # A filesystem without locks (some network mounts).
      pass
    yield
  finally:
    f.close()  # Releases the lock.


def check_folder(cache_dir: str):
  """CorpusError naming the folder when the cache cannot be written there (checked
  before a build, so that minutes of preparation are not thrown away)."""
  try:
    os.makedirs(cache_dir, exist_ok=True)
    # A unique probe: threads of one process (same pid) check the same folder at once.
    fd, probe = tempfile.mkstemp(prefix='.write-test-', dir=cache_dir)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise CorpusError(f'{cache_dir}: cannot write the corpus cache there '
                      f'({e.strerror or e}); set config.data.cache_dir or $BACH_JAX_CACHE '
                      'to a writable folder') from None


def remove_leftovers(path: str):
  """Deletes the temporary files of writes to `path` that a kill interrupted (called
  with the build lock held: no other process writes them now)."""
  folder, name = os.path.split(path)
  for entry in os.listdir(folder or '.'):
    if entry.startswith(name + '.') and entry.endswith('.tmp'):
      try:
        os.remove(os.path.join(folder, entry))
      except OSError:
        pass


def write(path: str, key: dict, splits: dict, skipped: list, grid: int):
  """Writes the pieces as one .npz: temp file in the same dir, then os.replace."""
  arrays = {'key': np.array(json.dumps(key, sort_keys=True)),
            'skipped': np.array(json.dumps(skipped)), 'grid': np.array(grid)}
  for s in SPLITS:
    pieces = splits[s]
    arrays[f'{s}.lengths'] = np.array([p.num_steps for p in pieces], dtype=np.int64)
    arrays[f'{s}.num_voices'] = np.array(
        [-1 if p.voices is None else p.num_voices for p in pieces], dtype=np.int64)
    arrays[f'{s}.roll'] = np.packbits(
        np.concatenate([p.roll for p in pieces] or [np.zeros((0, pianoroll.NUM_KEYS), bool)]), axis=-1)
    arrays[f'{s}.voices'] = np.concatenate(
        [p.voices.ravel() for p in pieces if p.voices is not None] or
        [np.zeros(0, np.int16)]).astype(np.int16)
    arrays[f'{s}.meta'] = np.array(json.dumps([p.meta for p in pieces]))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f'{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp'
  try:
    with open(tmp, 'wb') as f:
      np.savez_compressed(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    _log.warning('could not write the cache %s: %s', path, e)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def read(path: str, key: dict):
  """(splits, skipped, grid) from a cache file with this key, else None."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as z:
      if json.loads(str(z['key'])) != json.loads(json.dumps(key, sort_keys=True)):
        raise ValueError('key mismatch')
      grid = int(z['grid'])
      skipped = [tuple(x) for x in json.loads(str(z['skipped']))]
      splits = {}
      for s in SPLITS:
        lengths, nv = z[f'{s}.lengths'], z[f'{s}.num_voices']
        roll = np.unpackbits(z[f'{s}.roll'], axis=-1, count=pianoroll.NUM_KEYS).astype(bool)
        voices, metas = z[f'{s}.voices'], json.loads(str(z[f'{s}.meta']))
        if roll.shape[0] != lengths.sum() or len(metas) != len(lengths):
          raise ValueError('inconsistent arrays')
        pieces, t0, v0 = [], 0, 0
        for length, v, meta in zip(lengths, nv, metas):
          piece_voices = None
          if v >= 0:
            piece_voices = voices[v0:v0 + length * v].reshape(length, v)
            v0 += length * v
          pieces.append(PianoRoll(roll[t0:t0 + length], piece_voices, grid, meta))
          t0 += length
        if v0 != voices.size:
          raise ValueError('inconsistent voices')
        splits[s] = pieces
    return splits, skipped, grid
  except Exception as e:  # A truncated or foreign file: rebuild it.
    _log.warning('ignoring unusable cache %s (%s: %s)', path, type(e).__name__, e)
    return None
