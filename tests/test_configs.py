"""Every shipped config variant of every registered family passes validation (before
anything compiles); the variants are the ones each config names when refusing an
unknown one."""

import re

import pytest

from bach_jax import config_base
from bach_jax import models
from train_helpers import load_config


def _variants(name):
  """'' plus the variants configs/NAME.py lists in its 'unknown variant' error."""
  with pytest.raises(ValueError, match='unknown variant') as info:
    load_config(name, 'no_such_variant')
  known = re.search(r'known: ([^)]*)\)', str(info.value))
  assert known, f'configs/{name}.py: its error does not list the known variants'
  return [''] + [v.strip() for v in known.group(1).split(',')]


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
