r"""Prepares a corpus and prints its summary table, or fetches the JSB files.

  python -m bach_jax.data --source=bach_chorales --out=/tmp/bachcache
  python -m bach_jax.data prepare --source=jsb:PATH   # The same; 'prepare' is optional.
  python -m bach_jax.data download jsb [--dir=DIR] [--url=URL]

prepare: prepares the source into a folder of shards (progress bar on stderr;
a killed preparation keeps its finished shards and the next run prepares the
rest), then reads every piece back and checks it: a damaged shard is rebuilt.
Training runs prepare too, but stop on a damaged shard, naming it.

download jsb: fetches the JSB Chorales JSON files into the data dir ($BACH_JAX_DATA,
else $BACH_JAX_CACHE/jsb or ~/.cache/bach_jax/jsb; see bach_jax/data/download.py),
checking their SHA-256.
"""

import sys
import time

from absl import app
from absl import flags

from bach_jax import config_base
from bach_jax.data import corpora
from bach_jax.data import download

_SOURCE = flags.DEFINE_string('source', 'bach_chorales',
                              "'bach_chorales', 'midi_dir:PATH' or 'jsb:PATH'.")
_OUT = flags.DEFINE_string('out', '', 'Cache dir for this run (default: data.cache_dir, '
                           '$BACH_JAX_CACHE or ~/.cache/bach_jax).')
_STEPS = flags.DEFINE_integer('steps_per_quarter', 4, 'Frames per quarter note.')
_TRANSPOSE = flags.DEFINE_enum('transpose', 'tonic', ['tonic', 'none'],
                               "'tonic': to C major / C minor; 'none': as written.")
_MIN_STEPS = flags.DEFINE_integer('min_steps', 16, 'Shorter pieces are skipped.')
_WORKERS = flags.DEFINE_integer('workers', 0, 'Worker processes; 0 = one per core.')
_SHARD_FILES = flags.DEFINE_integer('shard_files', 256, 'Source files per shard.')
_DIR = flags.DEFINE_string('dir', '', 'download: target folder (default: $BACH_JAX_DATA, '
                           'else $BACH_JAX_CACHE/jsb or ~/.cache/bach_jax/jsb).')
_URL = flags.DEFINE_string('url', '', 'download: base URL (default: $BACH_JAX_JSB_URL, '
                           f'else {download.BASE_URL}).')
_TIMEOUT = flags.DEFINE_float('timeout', download.TIMEOUT_S, 'download: seconds per request.')


def prepare() -> int:
  """Prepares (or reads from the cache) --source and prints its summary."""
  config = config_base.base_config()
  data = config.data
  data.source = _SOURCE.value
  data.steps_per_quarter = _STEPS.value
  data.transpose = _TRANSPOSE.value
  data.min_steps = _MIN_STEPS.value
  data.workers = _WORKERS.value
  data.shard_files = _SHARD_FILES.value
  if _OUT.value:
    data.cache_dir = _OUT.value
  try:
    config_base.validate(config)
    start = time.perf_counter()
    corpus = corpora.load_corpus(data, repair=True)
    seconds = time.perf_counter() - start
  except (config_base.ConfigError, corpora.CorpusError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(corpus.summary())
  print(f'cache: {"hit" if corpus.cache_hit else "miss (prepared and written)"} '
        f'{corpus.cache_path} (every piece read back and checked)')
  print(f'preparation wall time: {seconds:.2f} s')
  return 0


def download_jsb() -> int:
  """Fetches the JSB files into --dir (default: the data dir)."""
  try:
    download.download_jsb(_DIR.value, _URL.value, timeout=_TIMEOUT.value)
  except download.DownloadError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


def main(argv):
  args = argv[1:]
  if not args or args == ['prepare']:
    return prepare()
  if args == ['download', 'jsb']:
    return download_jsb()
  raise app.UsageError(f'unexpected arguments {args}: expected none, `prepare` or '
                       '`download jsb`')


if __name__ == '__main__':
  app.run(main)
