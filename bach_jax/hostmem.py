"""Host memory: the glibc malloc setting that makes CPU training steps faster.

A training step on CPU takes its large scratch buffers (tens to hundreds of MiB)
fresh from the OS every step: glibc serves blocks over its mmap threshold with
mmap and unmaps them on free, so every step page-faults its buffers in again
(30-45k faults per step for the LSTM baseline; ../shared/notes/lstm-cpu-probe.md).
Keeping freed memory in one heap instead (no mmap, no trimming, one arena)
made the baseline's trainer run 1.19-1.26x more steps/s on the 2-core CPU
(README, Benchmark: "malloc").

`python -m bach_jax.main` calls tune_malloc() before anything starts a thread;
the cost is that the process keeps its peak heap size until it exits.
"""

import ctypes
import os

# mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def tune_malloc():
  """Sets one arena, no mmap'd blocks and no trimming. -> what was done, in words.

  Leaves malloc alone where GLIBC_TUNABLES is set (the user chose), where
  BACH_JAX_MALLOC=system, or where the C library is not glibc. Call it before
  JAX starts its threads: arenas already created are not merged.
  """
  if os.environ.get('BACH_JAX_MALLOC', '') == 'system':
    return 'system (BACH_JAX_MALLOC=system)'
  if os.environ.get('GLIBC_TUNABLES'):
    return 'as set by GLIBC_TUNABLES'
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return 'system (no glibc mallopt)'
  ok = all(mallopt(param, value) == 1 for param, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)))
  return 'tuned (one arena, no mmap, no trim)' if ok else 'system (mallopt refused)'
