"""Every shipped config variant passes validation (before anything compiles)."""

import pytest

from bach_jax import config_base
from bach_jax import models
from train_helpers import load_config

VARIANTS = [('lstm', ''), ('lstm', 'test'), ('lstm', 'jsb'), ('lstm_attn', ''),
            ('lstm_attn', 'test'), ('lstm_attn', 'jsb'), ('lstm_attn', 'jsb_windows')]


@pytest.mark.parametrize('name, variant', VARIANTS)
def test_config_variant_is_valid(name, variant):
  config = load_config(name, variant)
  assert config.model.name == name
  config_base.validate(config, 1)
  models.get_family(name).validate(config)
  if variant.startswith('jsb'):
    assert config.data.source.startswith('jsb:') and config.train.num_final_samples == 0


@pytest.mark.parametrize('name', ['lstm', 'lstm_attn'])
def test_unknown_variant_is_refused(name):
  with pytest.raises(ValueError, match='unknown variant'):
    load_config(name, 'no_such_variant')
