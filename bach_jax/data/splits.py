"""Train / valid / test assignment of a corpus's pieces by a stable hash of a key.

Splits of small folders (`balanced_splits`, midi_dir only). The stable hash
puts each piece at a position in [0, 100) (its bucket: < 80 train, < 90 valid,
else test; then finer digits of the same hash), so the split is three runs of
the pieces sorted by position. When valid or test would hold fewer than
`split_minimum(pieces)` = max(1, min(floor(MIN_SPLIT_SHARE * pieces),
SPLIT_ENOUGH)) usable pieces (56 pieces: 5; 200 or more: 20), the run
boundaries move until it holds that many: the pieces whose positions lie
nearest the boundary move to the next split (train keeps at least one piece).
A folder whose valid and test splits already hold that many keeps the plain
hash split (in practice every folder of a few hundred pieces or more); in a
small one, adding files can move a piece near a boundary. bach_chorales never
moves (its assignment is relied on by published numbers, and versions of a
chorale must share a split), nor does JSB. A split of fewer than corpora.TINY_SPLIT
pieces is reported by a warning line (every source, cache hits included).

bach_chorales keys by BWV number (sources.bwv_key), midi_dir by the file's path
relative to its folder; JSB keeps its own split.
"""

import hashlib
import logging

from bach_jax.data.cache import SPLITS

_log = logging.getLogger(__name__)  # 'warning: ...' lines at the command line (errors.py).

MIN_SPLIT_SHARE = 0.1  # midi_dir: valid and test get at least this share of the pieces,
SPLIT_ENOUGH = 20  # or this many, if fewer (a split this big is usable as is).


def split_of(key: str) -> str:
  """Stable 80/10/10 split of a string key (sha256, not Python's hash())."""
  bucket = int(hashlib.sha256(key.encode('utf-8')).hexdigest()[:8], 16) % 100
  return 'train' if bucket < 80 else 'valid' if bucket < 90 else 'test'


def split_position(key: str) -> float:
  """Where split_of puts a key on [0, 100): its bucket, then finer digits of the hash."""
  digest = hashlib.sha256(key.encode('utf-8')).hexdigest()
  return int(digest[:8], 16) % 100 + int(digest[8:16], 16) / 16**8


def split_minimum(num_pieces: int) -> int:
  """Pieces that valid and test each get at least in a midi_dir corpus (this module's docstring)."""
  return max(1, min(int(num_pieces * MIN_SPLIT_SHARE), SPLIT_ENOUGH))


def balanced_splits(keys) -> dict:
  """key -> split: split_of(key), small valid/test splits topped up (this module's docstring)."""
  order = sorted(set(keys), key=lambda k: (split_position(k), k))
  n = len(order)
  if not n:
    return {}
  natural = [split_of(k) for k in order]
  want = split_minimum(n)
  n_test = max(natural.count('test'), want)
  n_valid = max(natural.count('valid'), want)
  over = n_test + n_valid - (n - 1)  # Train keeps at least one piece.
  if over > 0:
    cut = min(over, n_test)
    n_test, n_valid = n_test - cut, n_valid - (over - cut)
  n_train = n - n_valid - n_test
  splits = ['train'] * n_train + ['valid'] * n_valid + ['test'] * n_test
  return dict(zip(order, splits))


def rebalance(results):
  """midi_dir results with balanced_splits applied to the usable pieces."""
  kept = [name for name, split, _ in results if split is not None]
  assigned = balanced_splits(kept)
  moved = sum(assigned[k] != split_of(k) for k in kept)
  if moved:
    counts = {s: list(assigned.values()).count(s) for s in SPLITS}
    _log.warning('small corpus: %d of %d pieces moved between splits so that valid and '
                    'test hold at least %d (now %d/%d/%d)', moved, len(kept),
                    split_minimum(len(kept)), *counts.values())
  return [(name, None if split is None else assigned[name], out)
          for name, split, out in results]
