"""Shared helpers for the training tests: configs by path, a session corpus cache."""

import importlib.util
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The overrides of every shared tiny run (conftest.trained_run): a few steps, evaluated at
# the end, checkpoints every 8 steps, one final sample.
RUN_STEPS = 24
RUN_OVERRIDES = {'train.num_steps': RUN_STEPS, 'train.log_every': 4, 'train.eval_every': 0,
                 'train.checkpoint_every': 8, 'train.num_final_samples': 1}


def load_config_module(name):
  """configs/<name>.py as a module (get_config, VARIANTS)."""
  path = os.path.join(REPO, 'configs', f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'configs_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(name, arg='test', **overrides):
  """configs/<name>.py get_config(arg), with dotted-key overrides ('train.num_steps': 10)."""
  config = load_config_module(name).get_config(arg)
  for key, value in overrides.items():
    *path_, leaf = key.split('.')
    node = config
    for p in path_:
      node = node[p]
    node[leaf] = value
  return config


def sigterm_at_batch(monkeypatch, n):
  """A preemption: SIGTERM to this process while the trainer reads its n-th batch.
  -> a function that puts the iterator back."""
  import signal  # pylint: disable=g-import-not-at-top
  from bach_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  real, calls = pipeline.BatchIterator.__next__, {'n': 0}

  def next_then_sigterm(self):
    calls['n'] += 1
    if calls['n'] == n:
      os.kill(os.getpid(), signal.SIGTERM)
    return real(self)

  monkeypatch.setattr(pipeline.BatchIterator, '__next__', next_then_sigterm)
  return lambda: monkeypatch.setattr(pipeline.BatchIterator, '__next__', real)


def write_midi_folder(folder, names, low=30):
  """One-voice MIDI files (32 frames of one held key each, keys low, low + 1, ...) ->
  the folder; a small midi_dir corpus."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from bach_jax.data import pianoroll  # pylint: disable=g-import-not-at-top
  os.makedirs(folder, exist_ok=True)
  for i, name in enumerate(names):
    roll = np.zeros((32, 88), bool)
    roll[:, low + i] = True
    pianoroll.to_midi(pianoroll.PianoRoll(roll, None, 4, {}), os.path.join(folder, name))
  return folder


def run_main(*args, cwd=REPO, timeout=600):
  """python -m bach_jax.main ARGS in a subprocess -> CompletedProcess (text output)."""
  return subprocess.run([sys.executable, '-m', 'bach_jax.main', *args], cwd=cwd,
                        capture_output=True, text=True, timeout=timeout)
