"""Where prepared corpora live, and the lock that makes one process prepare each.

A prepared corpus is a folder of shards (shards.py) named by a hash of its key (the
source and every option that changes the pieces). Every file in it is written to a
temp file in the same folder and renamed into place, so an interrupted preparation
never leaves a file a later run would trust.
"""

import contextlib
import hashlib
import json
import os
import tempfile

from bach_jax.errors import CorpusError

SPLITS = ('train', 'valid', 'test')


def default_cache_dir() -> str:
  """$BACH_JAX_CACHE, else ~/.cache/bach_jax (read now, not at import)."""
  return os.environ.get('BACH_JAX_CACHE') or os.path.join(
      os.path.expanduser('~'), '.cache', 'bach_jax')


def path_for(cache_dir: str, kind: str, key: dict) -> str:
  """The prepared corpus's folder: KIND-<hash of the key> in cache_dir."""
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
  return os.path.join(os.path.expanduser(cache_dir), f'{kind}-{digest}')


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


def atomic_write(path: str, write):
  """write(binary file) into path.<pid>.<random>.tmp, fsync, then os.replace it into
  place: a reader sees the old file or the new one, never half of one (a kill leaves
  the .tmp, which `remove_leftovers` deletes)."""
  tmp = f'{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp'
  try:
    with open(tmp, 'wb') as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


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


def remove_leftovers(folder: str):
  """Deletes the temporary files in `folder` of writes that a kill interrupted (called
  with the build lock held: no other process writes them now)."""
  for entry in os.listdir(folder):
    if entry.endswith('.tmp'):
      try:
        os.remove(os.path.join(folder, entry))
      except OSError:
        pass
