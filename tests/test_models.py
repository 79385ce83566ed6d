"""Shared model machinery: the params' moving average and the learning-rate warmup.

(What every family must do is tested over the registry in test_family_contract.py.)
"""

import functools

import jax
import numpy as np
import pytest

from bach_jax import experiment
from bach_jax import models
from train_helpers import load_config


def _tiny_model(name):
  """configs/NAME.py:test without dropout, freshly initialized (4 voices for lstm_attn)."""
  config = load_config(name, **{'model.dropout_rate': 0.0})
  family = models.get_family(name)
  num_voices = 4 if name == 'lstm_attn' else 0
  state = family.init(config, jax.random.key(0), experiment.example_batch(config, num_voices))
  return config, family, state, num_voices


def test_ema_params_follow_the_moving_average():
  """train.ema_decay: the state carries an average that evaluation uses; the raw
  params train exactly as without it."""
  config, family, _, _ = _tiny_model('lstm')
  config.train.ema_decay = 0.9
  batch = {'roll': np.random.default_rng(2).random((4, 8, 88)) < 0.05, 'mask': np.ones(4, bool)}
  init = lambda c: family.init(c, jax.random.key(0), experiment.example_batch(c, 0))
  state = init(config)
  plain_config = load_config('lstm', **{'model.dropout_rate': 0.0})
  plain = init(plain_config)
  assert plain.ema_params is None and plain.eval_params() is plain.params
  expected = state.params
  step, plain_step = (jax.jit(functools.partial(family.train_step, c))
                      for c in (config, plain_config))  # Jitted: op by op took 20 s.
  for k in range(3):
    state, _ = step(state, batch, jax.random.key(k))
    plain, _ = plain_step(plain, batch, jax.random.key(k))
    decay = min(0.9, (1 + k) / (10 + k))
    expected = jax.tree.map(lambda e, p, d=decay: e + (1 - d) * (p - e), expected, state.params)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(plain.params)):
    np.testing.assert_array_equal(a, b)
  for a, e, p in zip(jax.tree.leaves(state.eval_params()), jax.tree.leaves(expected),
                     jax.tree.leaves(state.params)):
    np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-7)
  assert any(not np.allclose(a, p) for a, p in zip(jax.tree.leaves(state.ema_params),
                                                    jax.tree.leaves(state.params)))


@pytest.mark.parametrize('schedule', ['constant', 'cosine'])
def test_learning_rate_warmup(schedule):
  """train.warmup_steps: 0 = the full rate from the first update; N = a ramp from 0."""
  from bach_jax.models import common  # pylint: disable=g-import-not-at-top
  params = {'w': np.ones(3, np.float32)}
  grads = {'w': np.array([1.0, -2.0, 3.0], np.float32)}
  first = {}
  for warmup in (0, 4):
    config = load_config('lstm', **{'train.lr_schedule': schedule, 'train.warmup_steps': warmup,
                                    'train.learning_rate': 0.1, 'train.weight_decay': 0.0})
    tx = common.make_optimizer(config.train)
    first[warmup], _ = tx.update(grads, tx.init(params), params)
  # Adam's first update is -lr * sign(g) (up to eps).
  np.testing.assert_allclose(first[0]['w'], [-0.1, 0.1, -0.1], rtol=1e-4)
  np.testing.assert_array_equal(first[4]['w'], 0.0)
