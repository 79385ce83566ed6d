"""Named sources of pieces -> train/valid/test lists of PianoRoll, prepared once on disk.

The sources (bach_chorales, midi_dir:PATH, jsb:PATH), their voice rules and splits:
sources.py. `load_corpus` prepares a source into a folder of shards (shards.py) under
data.cache_dir, else $BACH_JAX_CACHE, else ~/.cache/bach_jax, one folder per (source,
file names/sizes/mtimes or package version, grid, transpose, min_steps, shard_files,
format version). The files go to worker processes (data.workers, one per core), a
shard of data.shard_files files at a time; a killed preparation keeps its finished
shards. Every file left out is reported as one line 'skipping FILE: reason' and counted
in the summary. Runs that start at once on one machine (test workers, the processes of
one host) prepare a source once: the first holds a lock (<folder>.lock) while it
builds, the others then open its shards.
"""

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import sys
from typing import Optional

import numpy as np

from bach_jax.data import cache
from bach_jax.data import shards
from bach_jax.data import sources
from bach_jax.data import splits as splits_lib
from bach_jax.errors import CorpusError

_log = logging.getLogger(__name__)  # 'warning: ...' lines at the command line (errors.py).

SPLITS = cache.SPLITS
FORMAT_VERSION = 5  # Bump when the prepared pieces or the cache layout change.
SHARD_FILES = 256  # Source files per shard (data.shard_files).
TINY_SPLIT = 5  # A split with fewer pieces gets a warning: its figures are noise.




@dataclasses.dataclass
class Corpus:
  """Prepared pieces of one source.

  Attributes:
    splits: 'train', 'valid', 'test' -> shards.PieceList, a sequence of PianoRoll
      read from disk on demand, sorted by file name (JSB: in file order).
    skipped: (file, reason) of every file left out.
    source: the data.source string.
    steps_per_quarter: the grid of every piece.
    num_voices: V if every piece has voices int16[T, V] with the same V, else None.
    cache_path: the prepared corpus's folder.
    cache_hit: whether it was prepared before this call.
    voices_reasons: why pieces have no voices (shards' index vocabulary; '' = they do).
  """
  splits: dict
  skipped: list
  source: str
  steps_per_quarter: int
  num_voices: Optional[int] = None
  cache_path: str = ''
  cache_hit: bool = False
  voices_reasons: list = dataclasses.field(default_factory=list)

  def summary(self) -> str:
    """A plain-text table: pieces, frames, pitch range, notes/frame, voices, skips (from
    the index: no piece is read)."""
    lines = [f'source: {self.source}   grid: {self.steps_per_quarter} steps per '
             f'quarter   voices: {self.num_voices}']
    lines.append(f'{"split":<7}{"pieces":>8}{"frames":>10}{"pitch range":>16}'
                 f'{"notes/frame":>13}')
    names = [s for s in SPLITS if s in self.splits]
    stat = lambda field: {s: shards.stats(self.splits[s], field) for s in names}
    stats = {f: stat(f) for f in ('length', 'notes', 'lowest', 'highest', 'folded')}
    stats['voices_reason'], stats['num_voices'] = stat('voices_reason'), stat('num_voices')
    every = {f: np.concatenate([v[s] for s in names] or [np.zeros(0, np.int64)])
             for f, v in stats.items()}
    for name in names + ['all']:
      get = (lambda f: every[f]) if name == 'all' else (lambda f: stats[f][name])  # pylint: disable=cell-var-from-loop
      frames, notes, lo, hi = (int(get('length').sum()), int(get('notes').sum()),
                               get('lowest'), get('highest'))
      rng = f'{lo[lo >= 0].min()}..{hi.max()}' if (lo >= 0).any() else '-'
      density = f'{notes / frames:.2f}' if frames else '-'
      lines.append(f'{name:<7}{get("length").size:>8}{frames:>10}{rng:>16}{density:>13}')
    folded = every['folded']
    lines.append(f'notes outside 21..108 folded into range by octaves: {int(folded.sum())} '
                 f'(in {int((folded > 0).sum())} pieces)')
    none = every['num_voices'] < 0
    codes = every['voices_reason'][none]
    reasons = [r or 'the source gives none' for r in self.voices_reasons]
    without = {r: int((codes == i).sum()) for i, r in enumerate(reasons)}
    without['for no recorded reason'] = int((codes < 0).sum())
    lines.append(f'pieces with voices: {int((~none).sum())} of {none.size}')
    lines += _counted(without, 'without: ')
    lines.append(f'skipped: {len(self.skipped)} files')
    counts = {}
    for _, reason in self.skipped:
      key = reason.split(' (')[0]
      counts[key] = counts.get(key, 0) + 1
    lines += _counted(counts)
    return '\n'.join(lines)


def _counted(counts: dict, prefix: str = ''):
  return [f'  {n:>5}  {prefix}{reason}'
          for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n]


def _worker_start(parent):
  """A preparation worker: it dies with its parent (Linux: PR_SET_PDEATHSIG), even a
  SIGKILLed one, and leaves Ctrl-C to the parent, which stops the pool itself."""
  import signal  # pylint: disable=g-import-not-at-top
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG.
  except (OSError, AttributeError):  # Not Linux: workers end when their queue closes.
    pass
  if os.getppid() != parent:  # The parent died before the line above.
    os._exit(1)  # pylint: disable=protected-access


def _call(indexed_job):
  i, fn, job = indexed_job
  return i, fn(*job)


def _iter_jobs(fn, jobs, workers: int, bar):
  """Yields fn(*job) for every job, in job order, from a process pool when workers > 1.
  Closing the generator (an exception or Ctrl-C in the parent) terminates the workers."""
  workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
  if workers == 1:
    for job in jobs:
      result = fn(*job)
      bar.update()
      yield result
    return
  # spawn: the parent may already run JAX threads, which fork does not survive.
  ctx = multiprocessing.get_context('spawn')
  with ctx.Pool(workers, initializer=_worker_start, initargs=(os.getpid(),)) as pool:
    for _, result in pool.imap(_call, [(i, fn, job) for i, job in enumerate(jobs)]):
      bar.update()
      yield result


def _cache_key(kind, path, data):
  key = {'format': FORMAT_VERSION, 'source': kind, 'min_steps': int(data['min_steps']),
         'shard_files': int(data['shard_files'])}
  if kind != 'jsb':
    key.update(steps_per_quarter=int(data['steps_per_quarter']),
               transpose=str(data['transpose']))
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  key['pretty_midi'] = metadata.version('pretty_midi')
  if kind == 'bach_chorales':
    key['music21'] = metadata.version('music21')
  elif kind == 'midi_dir':
    key['path'] = path
    stats = [(rel, os.stat(full)) for full, rel in sources.midi_files(path)]
    key['files'] = [(rel, st.st_size, st.st_mtime_ns) for rel, st in stats]
  else:
    st = os.stat(path)
    key.update(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns)
  return key


default_cache_dir = cache.default_cache_dir


def load_corpus(data_config, cache_dir: Optional[str] = None, progress: bool = True,
                repair: bool = False) -> Corpus:
  """Prepares (or opens the prepared) pieces of `data_config.source`.

  Args:
    data_config: `config.data` (source, steps_per_quarter, transpose, min_steps,
      cache_dir, workers, shard_files); a dict works too.
    cache_dir: overrides data_config.cache_dir and the default location.
    progress: show a tqdm bar on stderr while preparing.
    repair: read every prepared piece and rebuild the shards that fail their
      checksums (`python -m bach_jax.data prepare` does); otherwise a damaged
      shard stops with a CorpusError naming it.

  Returns:
    The Corpus: its splits read their pieces from the shards on demand.

  Raises:
    CorpusError: the source path does not exist or yields no usable piece, or a
      prepared shard is damaged (without `repair`).
  """
  get = data_config.get
  data = {'source': get('source', 'bach_chorales'),
          'steps_per_quarter': int(get('steps_per_quarter', 4)),
          'transpose': get('transpose', 'tonic'),
          'min_steps': int(get('min_steps', 16)),
          'shard_files': int(get('shard_files', SHARD_FILES) or SHARD_FILES)}
  workers = int(get('workers', 0) or 0)
  kind, path = sources.parse_source(data['source'])
  cache_dir = cache_dir or get('cache_dir', '') or default_cache_dir()
  key = _cache_key(kind, path, data)
  if kind == 'midi_dir' and not key['files']:
    raise CorpusError(f'{path}: no .mid/.midi files found')
  folder = cache.path_for(cache_dir, kind, key)
  key_json = json.dumps(key, sort_keys=True)
  hit = True
  while True:
    try:
      prepared = _open(folder, key_json)
      if prepared is None:
        cache.check_folder(cache_dir)  # Before the build, not after it.
        with cache.build_lock(folder):
          prepared = _open(folder, key_json)  # Built by another process while we waited?
          if prepared is None:
            hit = False
            try:
              _build(kind, path, data, workers, progress, folder, key_json)
            except OSError as e:  # A full disk, a quota: the finished shards are kept.
              raise CorpusError(f'{e.filename or folder}: cannot write the prepared corpus '
                                f'({e.strerror or e}); free space there or set '
                                'data.cache_dir') from None
            prepared = _open(folder, key_json)
            if prepared is None:  # Logged by _open; not a loop of rebuilds.
              raise CorpusError(f'{folder}: the corpus just prepared cannot be opened')
      if repair:
        prepared.check()
      break
    except shards.DamagedShard as e:
      if not repair:
        raise CorpusError(f'{e}; run `python -m bach_jax.data prepare --source='
                          f'{data["source"]}` (same options) to rebuild it') from None
      _log.warning('%s: rebuilding it', e)
      shards.forget(folder, e.shards)
      repair = False  # One rebuild; a shard damaged again is an error.
  return _corpus(prepared, data['source'], folder, hit)


def _open(folder, key_json):
  """The prepared corpus in folder, or None when it has no usable index (not built, a
  build that stopped before its end, other options). DamagedShard passes through."""
  if not os.path.exists(os.path.join(folder, shards.INDEX)):
    return None
  try:
    return shards.Prepared(folder, key_json)
  except shards.DamagedShard:
    raise
  except Exception as e:  # pylint: disable=broad-except  (an unreadable index: rebuild it)
    _log.warning('ignoring unusable index %s (%s: %s)', folder, type(e).__name__, e)
    return None


def _build(kind, path, data, workers, progress, folder, key_json):
  """Prepares every piece of a source into shards, the finished ones of an earlier
  build kept, then writes the index."""
  os.makedirs(folder, exist_ok=True)
  cache.remove_leftovers(folder)
  digest = hashlib.sha256(key_json.encode()).hexdigest()[:20]
  per_shard = data['shard_files']
  if kind == 'jsb':
    grid, results = sources.jsb_pieces(path, data)
    jobs, fn, desc = [(r,) for r in results], _identity, 'jsb pieces'
  elif kind == 'midi_dir':
    grid, fn, desc = data['steps_per_quarter'], sources.midi_file_piece, 'midi files'
    jobs = [(full, rel, data) for full, rel in sources.midi_files(path)]
  else:
    grid, fn, desc = data['steps_per_quarter'], sources.chorale_piece, 'bach chorales'
    jobs = [(p, data) for p in sources.chorale_paths()]
  ranges = [(a, min(a + per_shard, len(jobs))) for a in range(0, len(jobs), per_shard)]
  pending = [k for k, r in enumerate(ranges)
             if shards.read_shard_info(folder, k, digest, r) is None]
  done = sum(b - a for k, (a, b) in enumerate(ranges) if k not in pending)
  if done:
    _log.info('%s: %d of %d shards already prepared, preparing the other %d', folder,
              len(ranges) - len(pending), len(ranges), len(pending))
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  todo = [job for k in pending for job in jobs[slice(*ranges[k])]]
  with tqdm(total=len(jobs), initial=done, desc=desc, file=sys.stderr, disable=not progress,
            unit='file') as bar:
    results = _iter_jobs(fn, todo, workers if kind != 'jsb' else 1, bar)
    try:
      for k in pending:
        a, b = ranges[k]
        shards.write_shard(folder, k, digest, (a, b), [next(results) for _ in range(b - a)])
    finally:
      results.close()
  kept, skipped = [], []
  for k in range(len(ranges)):
    info = shards.read_shard_info(folder, k)
    kept += [(p['name'], p['split'], None) for p in info['pieces']]
    skipped += info['skipped']
  for name, reason in skipped:
    _log.warning('skipping %s: %s', name, reason)
  if not kept:
    raise CorpusError(f'{path or kind}: no usable piece ({len(skipped)} files skipped, '
                      f'first: {skipped[0][0] if skipped else "-"}: '
                      f'{skipped[0][1] if skipped else "-"})')
  if kind == 'midi_dir':
    kept = splits_lib.rebalance(kept)
  shards.write_index(folder, key_json, grid, len(ranges), {n: s for n, s, _ in kept})


def _identity(result):
  return result


def _corpus(prepared, source, folder, hit) -> Corpus:
  splits = {s: prepared.split(s) for s in SPLITS}
  total = sum(len(splits[s]) for s in SPLITS)
  for s in SPLITS:
    if len(splits[s]) < TINY_SPLIT:
      _log.warning('split %s holds only %d of %d pieces (fewer than %d): its figures '
                      'will be noise', s, len(splits[s]), total, TINY_SPLIT)
  counts = set(int(v) for s in SPLITS for v in splits[s].num_voices)
  num_voices = counts.pop() if len(counts) == 1 else None
  num_voices = None if num_voices is not None and num_voices < 0 else num_voices
  return Corpus(splits, prepared.skipped, source, prepared.grid, num_voices, folder, hit,
                prepared.reasons)
