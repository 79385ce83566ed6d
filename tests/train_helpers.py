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


def run_main(*args, cwd=REPO, timeout=600):
  """python -m bach_jax.main ARGS in a subprocess -> CompletedProcess (text output)."""
  return subprocess.run([sys.executable, '-m', 'bach_jax.main', *args], cwd=cwd,
                        capture_output=True, text=True, timeout=timeout)
