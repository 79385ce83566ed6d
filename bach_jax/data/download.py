"""The JSB Chorales benchmark files: where they live and how to fetch them.

Data dir: $BACH_JAX_DATA if set, else <cache dir>/jsb, the cache dir being
$BACH_JAX_CACHE or ~/.cache/bach_jax; read when asked, not at import. The
repository's benchmarks set BACH_JAX_DATA=../shared/data/jsb.

`python -m bach_jax.data download jsb` fetches the public JSON files of
czhuang/JSB-Chorales-dataset (the Boulanger-Lewandowski et al. 2012 split)
from BASE_URL, or from $BACH_JAX_JSB_URL when set (a mirror; tests point it at
a local server). Every file is checked against its SHA-256 below before
anything is written; a mismatch writes nothing. Files are written to a temp
file in the data dir and os.replace'd into place. A file already there with
the right hash is not fetched again.
"""

import hashlib
import os
import urllib.error
import urllib.request
from typing import Optional

from bach_jax.data import cache
from bach_jax.errors import DownloadError

BASE_URL = 'https://raw.githubusercontent.com/czhuang/JSB-Chorales-dataset/master/'
QUARTER = 'jsb-chorales-quarter.json'
SIXTEENTH = 'jsb-16th-separated.json'
# Local name -> (upstream name, SHA-256). The hashes are those of the copies in
# the project's shared/data/jsb (the upstream files, byte for byte).
FILES = {
    QUARTER: ('jsb-chorales-quarter.json',
              '2db9329f1881a1d3f49703ec556bf1d6f84b4f6c1d702c156536e93cf31e1c91'),
    SIXTEENTH: ('Jsb16thSeparated.json',
                '79294cc374f9252e95ef4b703161524c1c53dc1f712c236f00f1c1f5d54af5a7'),
}
TIMEOUT_S = 60.0
_CHUNK = 1 << 16




def data_dir() -> str:
  """$BACH_JAX_DATA, else <cache dir>/jsb (see the module docstring)."""
  return os.path.abspath(os.path.expanduser(
      os.environ.get('BACH_JAX_DATA') or os.path.join(cache.default_cache_dir(), 'jsb')))


def jsb_path(name: str = QUARTER) -> str:
  """The path of one JSB file in the data dir (which may not hold it yet)."""
  return os.path.join(data_dir(), name)


def how_to_get(path: str = '') -> str:
  """One sentence: the command that fetches the JSB files (to path's folder) and where to."""
  here = data_dir()
  folder = os.path.dirname(os.path.abspath(path)) if path else here
  flag = '' if folder == here else f' --dir={folder}'
  return (f'get it with `python -m bach_jax.data download jsb{flag}` (writes '
          f'{", ".join(FILES)} to {folder}; the default folder is $BACH_JAX_DATA, else '
          '$BACH_JAX_CACHE/jsb or ~/.cache/bach_jax/jsb)')


def base_url() -> str:
  """$BACH_JAX_JSB_URL if set, else BASE_URL; always ends with '/'."""
  url = os.environ.get('BACH_JAX_JSB_URL') or BASE_URL
  return url if url.endswith('/') else url + '/'


def sha256_file(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(_CHUNK), b''):
      digest.update(chunk)
  return digest.hexdigest()


def _fetch(url: str, timeout: float) -> bytes:
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response:
      return response.read()
  except urllib.error.HTTPError as e:
    raise DownloadError(f'cannot fetch {url}: HTTP {e.code} {e.reason}') from e
  except urllib.error.URLError as e:
    raise DownloadError(f'cannot fetch {url}: {e.reason} (offline? set $BACH_JAX_JSB_URL '
                        'to a mirror, or copy the files into the data dir)') from e
  except (OSError, ValueError) as e:  # Timeouts, resets, malformed URLs.
    raise DownloadError(f'cannot fetch {url}: {type(e).__name__}: {e}') from e


def download_jsb(dest: str = '', url: str = '', files: Optional[dict] = None,
                 timeout: float = TIMEOUT_S, log=print) -> list:
  """Fetches the JSB files, checks their SHA-256 and writes them to dest.

  Every file is fetched and checked before any is written, so a mismatch or a
  failed fetch leaves dest as it was.

  Args:
    dest: target folder; '' = data_dir().
    url: base URL the upstream names are appended to; '' = base_url().
    files: local name -> (upstream name, SHA-256); default FILES.
    timeout: seconds per request.
    log: called with one progress line per file.

  Returns:
    The paths of the files, in `files` order.

  Raises:
    DownloadError: offline, HTTP error, hash mismatch or unwritable dest (one line).
  """
  dest = os.path.abspath(os.path.expanduser(dest or data_dir()))
  url = url or base_url()
  url = url if url.endswith('/') else url + '/'
  files = FILES if files is None else files
  fetched = {}
  for name, (remote, want) in files.items():
    path = os.path.join(dest, name)
    if os.path.isfile(path) and sha256_file(path) == want:
      log(f'{path}: already there (SHA-256 checked)')
      continue
    data = _fetch(url + remote, timeout)
    got = hashlib.sha256(data).hexdigest()
    if got != want:
      raise DownloadError(f'{name}: SHA-256 mismatch (expected {want}, got {got}) from '
                          f'{url + remote}; nothing written')
    fetched[name] = data
  try:
    os.makedirs(dest, exist_ok=True)
    for name, data in fetched.items():
      cache.atomic_write(os.path.join(dest, name), lambda f: f.write(data))  # pylint: disable=cell-var-from-loop
      log(f'{os.path.join(dest, name)}: written ({len(data):,} bytes, SHA-256 checked)')
  except OSError as e:
    raise DownloadError(f'cannot write {dest}: {e.strerror or e}') from e
  return [os.path.join(dest, name) for name in files]
