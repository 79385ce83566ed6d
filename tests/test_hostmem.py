"""bach_jax.hostmem: the tuned malloc keeps freed buffers, so reuse costs no page faults."""

import os
import subprocess
import sys

import pytest

# Allocates, touches and frees a 64 MiB buffer twice; prints tune_malloc's answer and
# the minor page faults of the second round (the one a training step's reuse is like).
_SCRIPT = '''
import ctypes, resource
from bach_jax import hostmem
print(hostmem.tune_malloc())
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
n = 64 << 20
def round_trip():
  p = libc.malloc(n)
  ctypes.memset(p, 1, n)
  libc.free(p)
round_trip()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
round_trip()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


def _run(**env):
  env = dict(os.environ, **env)
  env.pop('GLIBC_TUNABLES', None)
  out = subprocess.run([sys.executable, '-c', _SCRIPT], capture_output=True, text=True,
                       check=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
  said, faults = out.stdout.strip().splitlines()
  return said, int(faults)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc only')
def test_tuned_malloc_reuses_memory_without_page_faults():
  said, faults = _run(BACH_JAX_MALLOC='')
  if said.startswith('system (no glibc'):
    pytest.skip(said)
  assert said.startswith('tuned'), said
  pages = (64 << 20) // os.sysconf('SC_PAGE_SIZE')
  assert faults < pages // 10, (faults, pages)
  # The opt-out leaves glibc's default: the block is mmap'd afresh and faults in again.
  said, faults = _run(BACH_JAX_MALLOC='system')
  assert said.startswith('system'), said
  assert faults > pages // 2, (faults, pages)
