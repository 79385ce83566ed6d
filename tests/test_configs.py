"""Every shipped config variant of every registered family passes validation (before
anything compiles); the variants are the ones each config declares in VARIANTS."""

import pytest

from bach_jax import config_base
from bach_jax import models
from train_helpers import load_config, load_config_module


def _variants(name):
  """'' plus the variants configs/NAME.py declares (VARIANTS), each refused when unknown."""
  with pytest.raises(ValueError, match='unknown variant'):
    load_config(name, 'no_such_variant')
  return [''] + list(load_config_module(name).VARIANTS)


VARIANTS = [(name, variant) for name in sorted(models.REGISTRY) for variant in _variants(name)]


@pytest.mark.parametrize('name, variant', VARIANTS)
def test_config_variant_is_valid(name, variant):
  config = load_config(name, variant)
  assert config.model.name == name
  family = models.get_family(name)
  base = family.CAPABILITIES.builds_on
  if base:  # What train.init_from copies from the base run.
    assert config.train.init_from_into, f'configs/{name}.py: builds on {base}, no init_from_into'
    config.model[config.train.init_from_into] = load_config(base, variant).model
  config_base.validate(config, 1)
  family.validate(config)
  if variant.startswith('jsb'):
    assert config.data.source.startswith('jsb:') and config.train.num_final_samples == 0
