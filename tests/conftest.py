"""Session-wide caches, and shared fixtures: synthetic pieces and a few real chorales.

Every test (and every subprocess a test starts) shares these for the
session, set here before jax is imported:
* the prepared corpus ($BACH_JAX_CACHE): the embedded chorales are prepared
  once (about a minute) instead of once per test module; BACH_JAX_TEST_CACHE
  points it at an existing cache (e.g. ~/.cache/bach_jax) to skip even that;
* XLA's persistent compilation cache: a config compiled once (e.g. a family's
  ':test' train step) is loaded, not recompiled, by later runs of the same
  computation, in-process or in a subprocess (a 90 s compile became 11 s); one
  per pytest-xdist worker (setup.cfg runs the suite on every core, a file per
  worker at a time);
* the shared tiny runs of every family ($BACH_JAX_TEST_RUNS, `trained_run`): trained
  by the first worker that asks, read by the others.
And XLA's backend optimization level 0: the tests' tiny models spend their time
compiling, not running (a VAE ':test' step compiled in 63 s instead of 146 s and
ran 20 steps in 0.43 s instead of 0.29 s). Subprocesses inherit it through
XLA_FLAGS: a test that sets XLA_FLAGS appends to it.
"""

import os
import tempfile


def _session_dir(var, prefix, default=None):
  """$var, else `default`, else a new temp folder (made once: pytest-xdist's workers
  inherit the controller's environment)."""
  if not os.environ.get(var):
    os.environ[var] = default or tempfile.mkdtemp(prefix=prefix)


_session_dir('BACH_JAX_CACHE', 'bach_jax_corpus_', os.environ.get('BACH_JAX_TEST_CACHE'))
_session_dir('JAX_COMPILATION_CACHE_DIR', 'bach_jax_xla_')
_session_dir('BACH_JAX_TEST_RUNS', 'bach_jax_runs_')  # The shared tiny runs (trained_run).
if os.environ.get('PYTEST_XDIST_WORKER'):  # One XLA cache per pytest-xdist worker: jax
  #   writes an entry in place, and a process reading another's half-written entry aborts.
  os.environ['JAX_COMPILATION_CACHE_DIR'] = os.path.join(
      os.environ['JAX_COMPILATION_CACHE_DIR'], os.environ['PYTEST_XDIST_WORKER'])
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
if 'xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                             + ' --xla_backend_optimization_level=0').strip()

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from bach_jax.data import pianoroll

CHORALES = ('bwv1.6.mxl', 'bwv281.krn', 'bwv41.6.mxl')  # Horn part; unnamed parts; long names.


def _random_piece(rng, length, num_voices=4, low=48, high=76, rests=True):
  """A PianoRoll with random voices int16[length, num_voices] in [low, high)."""
  voices = rng.integers(low, high, size=(length, num_voices)).astype(np.int16)
  if rests:
    voices[rng.random(voices.shape) < 0.1] = pianoroll.REST
  return pianoroll.PianoRoll(pianoroll.voices_to_roll(voices), voices, 4,
                             {'file': f'random{length}', 'voice_names': ['S', 'A', 'T', 'B']})


@pytest.fixture
def make_piece():
  """Factory: make_piece(rng, length, num_voices=4, low=48, high=76) -> PianoRoll."""
  return _random_piece


@pytest.fixture(scope='session')
def chorales():
  """A few music21 chorales through MIDI, as (file name, PrettyMIDI)."""
  from bach_jax.data import sources  # pylint: disable=g-import-not-at-top
  paths = {p.rsplit('/', 1)[-1]: p for p in sources.chorale_paths()}
  return [(name, sources.chorale_to_pretty_midi(paths[name])[0]) for name in CHORALES]


@pytest.fixture(scope='session')
def cache_dir():
  """The session's corpus cache (see the module docstring)."""
  return os.environ['BACH_JAX_CACHE']


@pytest.fixture(scope='session')
def trained_run():
  """trained_run(family) -> (workdir, result): the family's ':test' config trained
  RUN_STEPS steps on the embedded chorales with RUN_OVERRIDES, once per session and
  shared by every module that asks (the family contract, the comparison report, ...)
  in every pytest-xdist worker: the first to ask trains it in $BACH_JAX_TEST_RUNS while
  holding a lock, the others wait, then read its result. A family that builds on another
  (CAPABILITIES.builds_on) starts from that family's shared run. Tests must not write
  into the workdir (copy it first)."""
  import json  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  from bach_jax import models  # pylint: disable=g-import-not-at-top
  from bach_jax import train  # pylint: disable=g-import-not-at-top
  from bach_jax.data import cache  # pylint: disable=g-import-not-at-top
  from train_helpers import RUN_OVERRIDES, load_config  # pylint: disable=g-import-not-at-top
  runs = {}

  def get(name):
    if name not in runs:
      workdir = os.path.join(os.environ['BACH_JAX_TEST_RUNS'], name)
      done = workdir + '.json'
      with cache.build_lock(done):
        if not os.path.exists(done):
          config = load_config(name, 'test', **RUN_OVERRIDES)
          base = models.get_family(name).CAPABILITIES.builds_on
          if base:
            config.train.init_from = get(base)[0]
          shutil.rmtree(workdir, ignore_errors=True)  # A worker that died mid-run.
          result = train.train_and_evaluate(config, workdir)
          with open(done + '.tmp', 'w') as f:
            json.dump(result, f)
          os.replace(done + '.tmp', done)
        with open(done) as f:
          runs[name] = workdir, json.load(f)
    return runs[name]

  return get
