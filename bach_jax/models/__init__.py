"""Model registry: config.model.name -> family module.

A family module follows the contract in `models/family.py` (init, train_step,
eval_step, summarize, sample, ... and its CAPABILITIES), so train.py,
generate.py and evaluate.py never branch on the family. Adding one = a module,
a config, a line here and a test file (tests/test_family_contract.py already
runs every registered family).
"""

import importlib

from bach_jax.errors import ConfigError
from bach_jax.models import family as family_lib

REGISTRY = {
    'lstm': 'bach_jax.models.lstm',
    'lstm_attn': 'bach_jax.models.lstm_attn',
    'vae': 'bach_jax.models.vae',
    'vqvae': 'bach_jax.models.vqvae',
    'vqvae_prior': 'bach_jax.models.vqvae_prior',
    'gan': 'bach_jax.models.gan',
    'harmonizer': 'bach_jax.models.harmonizer',
}


def get_family(name):
  """Returns the family module for config.model.name (checked against the contract)."""
  if name not in REGISTRY:
    raise ConfigError(f'config.model.name: unknown model {name!r}; known: {sorted(REGISTRY)}')
  return family_lib.check_family(name, importlib.import_module(REGISTRY[name]))


def fill_model_defaults(config):
  """Adds the config.model keys the family declares in MODEL_DEFAULTS that `config`
  lacks (a run's config.json written before they existed). Returns config."""
  family = get_family(config.model.name)
  for key, value in getattr(family, 'MODEL_DEFAULTS', {}).items():
    if key not in config.model:
      config.model[key] = value
  return config
