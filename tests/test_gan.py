"""The WGAN: its gradient penalty (also through the LSTM's custom VJP), weight clipping,
the update counts of one step, and mode collapse flagged (tiny models)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bach_jax import evaluate
from bach_jax import experiment
from bach_jax import generate
from bach_jax import parallel
from bach_jax import train
from bach_jax.models import gan
from bach_jax.models import layers
from test_layers import reference_lstm
from train_helpers import load_config


def _config(variant='test', **overrides):
  config = load_config('gan', variant, **overrides)
  gan.validate(config)
  return config


def _batch(rng, b=4, t=17):
  voices = rng.integers(55, 72, (b, t, 4))
  voices[:, 0] = -1
  return {'roll': (np.arange(88) + 21 == voices[..., None]).any(-2),
          'voices': voices.astype(np.int32), 'mask': np.ones(b, bool),
          # The trainer's batch keys, so its step compiled for a ':test' run is reused.
          'start': np.broadcast_to(np.arange(t) == 0, (b, t)).copy(),
          'frame_mask': np.ones((b, t), bool)}


def test_gradient_penalty_equals_a_hand_written_one():
  """critic(x) = sum(a x^2) / 2 has gradient a x: the penalty by hand at the same
  interpolates."""
  rng = np.random.default_rng(0)
  a = rng.normal(size=(5, 3, 2, 88)).astype(np.float32)
  real, fake = rng.random((2, 4, 5, 3, 2, 88)).astype(np.float32)
  critic = lambda x, mask: 0.5 * jnp.sum(a * x ** 2, axis=(1, 2, 3, 4))
  key = jax.random.key(1)
  got = gan.gradient_penalty(critic, real, fake, None, key)
  eps = np.asarray(jax.random.uniform(key, (4, 1, 1, 1, 1)))
  mixed = eps * real + (1 - eps) * fake
  norms = np.sqrt(np.sum((a * mixed).reshape(4, -1) ** 2, -1))
  np.testing.assert_allclose(got, np.mean((norms - 1) ** 2), rtol=1e-5)


def _reference_layer(x, w_ih, w_hh, b, h0, c0, *, dtype=None):
  del dtype
  hs, carry = reference_lstm(jnp.swapaxes(x, 0, 1), {'w_ih': w_ih, 'w_hh': w_hh, 'b': b},
                             (h0, c0))
  return jnp.swapaxes(hs, 0, 1), carry


def test_gradient_penalty_through_the_lstm_custom_vjp_matches_plain_autodiff(monkeypatch):
  """The penalty's gradient w.r.t. a BiLSTM critic's params is a gradient of a gradient
  through layers.lstm_layer's hand-written backward pass: it equals plain autodiff."""
  config = _config(**{'model.critic': 'bilstm'})
  batch = _batch(np.random.default_rng(2), b=3, t=9)
  state = gan.init(config, jax.random.key(0), batch)
  real, mask = gan.real_tracks(config, batch)
  fake = gan.generate(config, state.params['generator'], jax.random.key(3), 3, 8) * 1.0
  _, critic = gan._models(config)  # pylint: disable=protected-access

  def penalty_grads():
    fn = lambda cp: gan.gradient_penalty(
        lambda x, m: critic.apply({'params': cp}, x, m), real, fake, mask, jax.random.key(4))
    return jax.grad(fn)(state.params['critic'])

  fast = penalty_grads()
  monkeypatch.setattr(layers, 'lstm_layer', _reference_layer)
  plain = penalty_grads()
  for x, y in zip(jax.tree.leaves(fast), jax.tree.leaves(plain)):
    np.testing.assert_allclose(x, y, rtol=2e-4, atol=1e-6)
  assert any(np.abs(np.asarray(x)).max() > 0 for x in jax.tree.leaves(fast))


@functools.lru_cache(maxsize=None)
def _steps(variant):
  """Three train_steps of a ':test' variant -> (config, state, metrics list)."""
  config = _config(variant)
  batch = _batch(np.random.default_rng(5), b=16)
  mesh = parallel.make_mesh()
  state = gan.init(config, jax.random.key(0), batch)
  step = train.make_train_step(gan, config, mesh)
  out = []
  for k in range(3):
    state, metrics = step(state, parallel.to_global(batch, mesh), jax.random.key(k))
    out.append(jax.device_get(metrics))
  return config, jax.device_get(state), out


@pytest.mark.parametrize('variant', ['test', 'clip_test'])
def test_one_step_is_n_critic_critic_updates_then_one_generator_update(variant):
  config, state, _ = _steps(variant)
  n = config.model.n_critic
  assert int(state.model_state['critic_updates']) == 3 * n
  assert int(state.model_state['generator_updates']) == 3 == int(state.step)
  if variant == 'test':  # Adam counts its own updates.
    counts = {k: int(jax.tree.leaves(v)[0]) for k, v in state.opt_state.items()}
    assert counts == {'critic': 3 * n, 'generator': 3}


def test_clipping_keeps_every_critic_weight_within_the_bound():
  config, state, metrics = _steps('clip_test')
  bound = config.model.clip
  biggest = max(float(np.abs(p).max()) for p in jax.tree.leaves(state.params['critic']))
  assert biggest <= bound + 1e-7
  assert all(0 < m['clip_fraction'] <= 1 for m in metrics)


def test_a_generator_with_a_constant_output_is_flagged_as_collapsed(cache_dir):
  config = _config(**{'data.cache_dir': cache_dir, 'train.eval_samples': 16})
  exp = experiment.setup(config)
  corpus, mesh = exp.corpus, exp.mesh
  state = gan.init(config, jax.random.key(0), _batch(np.random.default_rng(6)))
  const = dict(state.params)
  const['generator'] = jax.tree.map(jnp.zeros_like, state.params['generator'])
  const['generator']['Dense_1']['bias'] = jnp.where(
      jnp.arange(config.model.tracks * 88) % 7 == 0, 5.0, -5.0)
  fn = evaluate.make_eval_fn(gan, config, mesh)
  pieces = corpus.splits['valid'][:12]
  live = evaluate.evaluate_pieces(fn, gan, config, state.params, pieces, mesh, 4)
  dead = evaluate.evaluate_pieces(fn, gan, config, const, pieces, mesh, 4)
  assert dead['collapsed'] and not live['collapsed']
  assert any('mode collapse' in w for w in dead['warnings'])
  assert np.isfinite(dead['metric_distance'])


@pytest.mark.parametrize('stride', [1, 2])
def test_critic_windows_times_a_kernel_is_a_same_padded_convolution(stride):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(0), (2, 9, 3))
  conv = nn.Conv(5, (4,), strides=(stride,))
  params = conv.init(jax.random.key(1), x)['params']
  want = conv.apply({'params': params}, x)
  got = gan.windows(x, 4, stride) @ params['kernel'].reshape(12, 5) + params['bias']
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('tracks', [1, 2, 4])
def test_tracks_split_the_real_roll_and_samples_carry_voices_only_with_four(tracks):
  """1 track: the roll; 2: treble and bass (the lowest voice below, the rest above);
  4: one voice per track. Samples name voices only with 4 tracks."""
  config = _config(**{'model.tracks': tracks})
  batch = _batch(np.random.default_rng(5))
  real, mask = gan.real_tracks(config, batch)
  assert real.shape == (4, 16, tracks, 88) and mask.shape == (4, 16)
  np.testing.assert_array_equal(np.asarray(real).any(2), batch['roll'][:, 1:])
  if tracks == 2:
    bass = np.asarray(real)[:, :, 1].argmax(-1) + 21
    np.testing.assert_array_equal(bass, batch['voices'][:, 1:, 3])
  if tracks == 4:
    np.testing.assert_array_equal(np.asarray(real).argmax(-1) + 21, batch['voices'][:, 1:])
  state = gan.init(config, jax.random.key(0), batch)
  request = generate.make_request(config, num_pieces=2, num_steps=6)
  out = gan.sample(config, state.params, jax.random.key(1), request)
  assert out['roll'].shape == (2, 6, 88)
  assert ('voices' in out) == (tracks == 4)
  if tracks == 4:
    v = np.asarray(out['voices'])
    np.testing.assert_array_equal((np.arange(88) + 21 == v[..., None]).any(-2), out['roll'])
