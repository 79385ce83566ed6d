"""Model registry: config.model.name -> family module.

A family module exposes `init`, `train_step`, `eval_step` and `sample` (see
../shared/DESIGN.md), so train.py, generate.py and evaluate.py never branch on
the family. Adding one = a module, a config, a line here and a test file.
"""

import importlib

from bach_jax.config_base import ConfigError

REGISTRY = {
    'lstm': 'bach_jax.models.lstm',
    'lstm_attn': 'bach_jax.models.lstm_attn',
}


def get_family(name):
  """Returns the family module for config.model.name."""
  if name not in REGISTRY:
    raise ConfigError(f'config.model.name: unknown model {name!r}; known: {sorted(REGISTRY)}')
  return importlib.import_module(REGISTRY[name])
