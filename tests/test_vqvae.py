"""The VQ-VAE: codebook mechanics, straight-through gradients, padding, and the
stage-2 prior's two scoring paths (tiny models). The codebook's usage counts on 8
devices equal those on 1 device: test_family_contract.py compares every family's
model_state (here, the counts) after sharded and unsharded steps."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bach_jax import experiment
from bach_jax.models import codebook as vq
from bach_jax.models import vqvae
from bach_jax.models import vqvae_prior
from train_helpers import load_config


def _config(**overrides):
  config = load_config('vqvae', 'test', **{'model.dropout_rate': 0.0, **overrides})
  config.model.num_voices = 4 if config.model.output == 'frame_heads' else 0
  vqvae.validate(config)
  return config


def _batch(rng, b, t, lengths=None):
  """Random 4-voice pieces (frame 0 the start frame), frames after `lengths` masked."""
  voices = rng.integers(55, 72, (b, t, 4))
  voices[rng.random(voices.shape) < 0.1] = -1
  voices[:, 0] = -1
  frame_mask = np.ones((b, t), bool)
  frame_mask[:, 0] = False
  if lengths is not None:
    frame_mask &= np.arange(t) <= np.asarray(lengths)[:, None]
  roll = (np.arange(88) + 21 == voices[..., None]).any(-2)
  return {'roll': roll, 'voices': voices.astype(np.int32), 'frame_mask': frame_mask,
          'start': np.broadcast_to(np.arange(t) == 0, (b, t)).copy(), 'mask': np.ones(b, bool)}


def test_nearest_code_and_straight_through_gradient():
  book = jnp.array([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.5]])
  e = jnp.array([[0.9, 1.2], [-1.5, 0.2], [0.1, -0.1]])
  codes, q = vq.nearest(e, book)
  np.testing.assert_array_equal(codes, [1, 2, 0])
  np.testing.assert_array_equal(q, book[codes])
  decoder = lambda v: jnp.sum(jnp.sin(v) * jnp.arange(1.0, 7.0).reshape(3, 2))
  through = jax.grad(lambda e_: decoder(vq.straight_through(e_, q)))(e)
  at_codes = jax.grad(decoder)(q)  # What the decoder's input received.
  np.testing.assert_allclose(through, at_codes, rtol=1e-6)
  np.testing.assert_allclose(vq.straight_through(e, q), q, rtol=1e-6)


def test_ema_update_equals_a_hand_computed_one():
  rng = np.random.default_rng(0)
  book = rng.normal(size=(3, 2)).astype(np.float32)
  stats = {'count': np.array([2.0, 0.5, 1.0], np.float32),
           'sum': rng.normal(size=(3, 2)).astype(np.float32)}
  e = rng.normal(size=(5, 2)).astype(np.float32)
  mask = np.array([1, 1, 1, 0, 1], np.float32)  # Vector 3 is padding.
  codes, _ = vq.nearest(e, book)
  counts, sums = vq.batch_stats(e, codes, mask, 3)
  new = vq.update_stats(stats, counts, sums, 0.9)
  want_counts = np.zeros(3)
  want_sums = np.zeros((3, 2))
  for i in range(5):
    if mask[i]:
      k = int(np.argmin(((book - e[i]) ** 2).sum(-1)))
      want_counts[k] += 1
      want_sums[k] += e[i]
  np.testing.assert_allclose(counts, want_counts)
  np.testing.assert_allclose(new['count'], 0.9 * stats['count'] + 0.1 * want_counts, rtol=1e-6)
  np.testing.assert_allclose(new['sum'], 0.9 * stats['sum'] + 0.1 * want_sums, rtol=1e-5)
  n = new['count'].sum()
  smoothed = (new['count'] + 1e-5) / (n + 3e-5) * n
  np.testing.assert_allclose(vq.ema_codebook(new), new['sum'] / smoothed[:, None], rtol=1e-5)


def test_dead_code_is_restarted_onto_an_encoder_output():
  book = np.array([[0.0, 0.0], [5.0, 5.0], [9.0, 9.0]], np.float32)
  stats = {'count': np.array([3.0, 0.2, 2.0], np.float32), 'sum': book * 2}
  e = np.array([[0.1, 0.2], [7.0, 7.5], [0.3, 0.1], [100.0, 100.0]], np.float32)
  mask = np.array([1, 1, 1, 0], np.float32)  # The padding vector is never picked.
  new_book, new_stats, n = vq.restart_dead(book, stats, e, mask, jax.random.key(0), 1.0)
  assert int(n) == 1
  np.testing.assert_array_equal(np.asarray(new_book)[[0, 2]], book[[0, 2]])
  assert any(np.array_equal(new_book[1], e[i]) for i in range(3)), new_book[1]
  assert float(new_stats['count'][1]) >= 1.0
  np.testing.assert_allclose(vq.ema_codebook(new_stats)[1], new_book[1], rtol=1e-3)


def test_perplexity_of_code_usage():
  assert vq.perplexity([5, 5, 5, 5]) == pytest.approx(4.0)
  assert vq.perplexity([9, 0, 0]) == pytest.approx(1.0)


@pytest.mark.parametrize('encoder', ['bilstm', 'conv'])
def test_padding_never_changes_the_codes_or_the_sums(encoder):
  config = _config(**{'model.encoder': encoder})
  state = vqvae.init(config, jax.random.key(0), experiment.example_batch(config, 4))
  short = _batch(np.random.default_rng(1), 3, 33, lengths=[32, 21, 6])
  garbage = _batch(np.random.default_rng(2), 3, 33)
  noisy = dict(short)
  keep = (short['frame_mask'] | short['start'])[..., None]
  noisy['roll'] = np.where(keep, short['roll'], garbage['roll'])
  noisy['voices'] = np.where(keep, short['voices'], garbage['voices'])
  fn = jax.jit(functools.partial(vqvae.eval_step, config))
  a, b = (jax.device_get(fn(state.params, x)) for x in (short, noisy))
  for key in a:
    np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)
  assert float(a['frames']) == 32 + 21 + 6
  assert float(a['patterns']) == 8 + 6 + 2  # Patterns with a real frame.
  enc = jax.jit(functools.partial(vqvae.encode, config))
  np.testing.assert_array_equal(enc(state.params, short)['z'], enc(state.params, noisy)['z'])


def test_prior_nll_equals_its_step_by_step_conditionals():
  config = load_config('vqvae_prior', 'test')
  config.model.vqvae = _config().model
  state = vqvae_prior.init(config, jax.random.key(0), experiment.example_batch(config, 4))
  params = jax.tree.map(lambda p: p * 3.0, state.params)  # Sharper than at init.
  patterns = config.model.vqvae.segment_steps // config.model.vqvae.pattern_steps
  codes = jax.random.randint(jax.random.key(1), (3, 2, patterns), 0,
                             config.model.vqvae.codebook_size)
  teacher = vqvae_prior.code_nll(config, params, codes.reshape(6, patterns))
  _, logp = vqvae_prior.sample_codes(config, params, jax.random.key(2), 3, 2, forced=codes)
  np.testing.assert_allclose(-logp.reshape(6, patterns), teacher, rtol=1e-5, atol=1e-5)
  drawn, _ = vqvae_prior.sample_codes(config, params, jax.random.key(3), 3, 2, top_k=1)
  again, _ = vqvae_prior.sample_codes(config, params, jax.random.key(4), 3, 2, top_k=1)
  np.testing.assert_array_equal(drawn, again)  # top_k = 1: the argmax path, any key.
