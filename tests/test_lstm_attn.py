"""Tests of the LSTM + attention + voice-heads family (synthetic data, tiny models)."""

import functools
import importlib.util
import itertools
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bach_jax import config_base
from bach_jax.data import pianoroll
from bach_jax.models import lstm_attn
from bach_jax.models.common import SampleRequest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**model):
  """configs/lstm_attn.py:test, shrunk further, with model.KEY overrides."""
  spec = importlib.util.spec_from_file_location(
      'configs_lstm_attn', os.path.join(REPO, 'configs', 'lstm_attn.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config('test')
  config.model.update(hidden_size=16, head_hidden=16, embed_dim=3, attn_heads=2,
                      attn_max_distance=4, attn_window=5, dropout_rate=0.0)
  config.model.update(model)
  lstm_attn.validate(config)
  return config


def _roll(voices):
  """int[..., V] MIDI pitches (REST -1) -> bool[..., 88], their union."""
  v = np.asarray(voices)
  return (np.arange(88) + 21 == v[..., None]).any(axis=-2)


def _batch(rng, b, t, lo=58, hi=66, num_voices=4):
  """Random voices in [lo, hi) with rests; frame 0 is the silent start frame."""
  voices = rng.integers(lo, hi, size=(b, t, num_voices))
  voices[rng.random(voices.shape) < 0.15] = -1
  voices[:, 0] = -1
  return {'roll': jnp.asarray(_roll(voices)), 'voices': jnp.asarray(voices, jnp.int32),
          'mask': jnp.ones((b,), bool), 'frame_mask': jnp.asarray(np.arange(t) >= 1)[None]
          .repeat(b, 0)}


def _params(config, batch, scale=0.3, seed=0):
  """Random normal params of the model's shapes (NumPy: no slow init compile)."""
  info = lstm_attn._info(config, batch)  # pylint: disable=protected-access
  model = lstm_attn.make_model(config, info)
  x = jnp.zeros((1, 2, lstm_attn.input_size(config, info)))
  shapes = jax.eval_shape(model.init, jax.random.key(0), x,
                          jnp.zeros((1, 2, info.num_slots), jnp.int32))['params']
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype),
                      shapes)


_FNS = {}


def _fns(config):
  """Jitted (frame_nll, score_stepwise, sample, frame_logits), one set per config."""
  key = config.to_json()
  if key not in _FNS:
    _FNS[key] = tuple(jax.jit(functools.partial(f, config)) for f in (
        lstm_attn.frame_nll, lstm_attn.score_stepwise, lstm_attn.sample,
        lstm_attn.frame_logits))
  return _FNS[key]


def _nll_fn(config):
  return _fns(config)[0]


def _sampler(config):
  return _fns(config)[2]


@pytest.mark.parametrize('num_voices', [4, 0])
def test_changing_frame_t_plus_1_never_changes_probabilities_up_to_t(num_voices):
  config = _config(num_voices=num_voices)
  batch = _batch(np.random.default_rng(0), 3, 14)
  params = _params(config, batch)
  nll = _nll_fn(config)
  before = nll(params, batch)
  t = 6  # Frames > t change; nll[:, i] scores frame i + 1.
  other = _batch(np.random.default_rng(1), 3, 14)
  changed = {k: (v.at[:, t + 1:].set(other[k][:, t + 1:]) if k in ('roll', 'voices') else v)
             for k, v in batch.items()}
  after = nll(params, changed)
  np.testing.assert_allclose(after[:, :t], before[:, :t], rtol=1e-6, atol=1e-6)
  assert np.all(np.abs(after[:, t:] - before[:, t:]) > 1e-4), 'the change must show later'


@pytest.mark.parametrize('heads,order', [('autoregressive', 'soprano_first'),
                                         ('independent', 'bass_first')])
def test_set_mode_probabilities_of_all_frames_sum_to_one(heads, order):
  # 4 keys (MIDI 60..63), max_notes 4: all 16 subsets are frames of the model.
  config = _config(num_voices=0, min_pitch=60, max_pitch=63, max_notes=4, heads=heads,
                   voice_order=order)
  rng = np.random.default_rng(2)
  history = _batch(rng, 1, 6, lo=60, hi=64)['roll']
  subsets = np.array(list(itertools.product([False, True], repeat=4)))  # [16, 4]
  last = np.zeros((16, 1, 88), bool)
  last[:, 0, 60 - 21:64 - 21] = subsets
  roll = jnp.concatenate([jnp.repeat(history, 16, axis=0), jnp.asarray(last)], axis=1)
  batch = {'roll': roll, 'mask': jnp.ones((16,), bool)}
  params = _params(config, batch, scale=0.8)
  nll = _nll_fn(config)(params, batch)
  np.testing.assert_allclose(float(jnp.sum(jnp.exp(-nll[:, -1]))), 1.0, rtol=1e-5)


def test_voice_mode_probabilities_of_all_frames_sum_to_one():
  # 4 voices over {60, 61, REST}: 81 frames.
  config = _config(num_voices=4, min_pitch=60, max_pitch=61, voice_order='bass_first')
  hist = _batch(np.random.default_rng(3), 1, 5, lo=60, hi=62)
  frames = np.array(list(itertools.product([-1, 60, 61], repeat=4)))  # [81, 4]
  voices = jnp.concatenate([jnp.repeat(hist['voices'], 81, axis=0),
                            jnp.asarray(frames[:, None], jnp.int32)], axis=1)
  batch = {'roll': jnp.asarray(_roll(voices)), 'voices': voices,
           'mask': jnp.ones((81,), bool)}
  params = _params(config, batch, scale=0.8)
  nll = _nll_fn(config)(params, batch)
  np.testing.assert_allclose(float(jnp.sum(jnp.exp(-nll[:, -1]))), 1.0, rtol=1e-5)


@pytest.mark.parametrize('num_voices,attention', [(4, True), (0, True), (4, False)])
def test_stepwise_sampling_path_scores_like_teacher_forcing(num_voices, attention):
  config = _config(num_voices=num_voices, attention=attention)
  batch = _batch(np.random.default_rng(4), 3, 14)
  params = _params(config, batch)
  whole = _nll_fn(config)(params, batch)
  stepwise = _fns(config)[1](params, batch)
  np.testing.assert_allclose(stepwise, whole, rtol=1e-4, atol=1e-4)
  out = jax.jit(lambda p, b: lstm_attn.eval_step(config, p, b))(params, batch)
  np.testing.assert_allclose(out['nll_sum'], jnp.sum(whole), rtol=1e-5)
  assert int(out['frames']) == 3 * 13


@pytest.mark.parametrize('num_voices', [4, 0])
def test_harmonization_keeps_the_melody_and_roll_is_union_of_voices(num_voices):
  config = _config(num_voices=num_voices)
  rng = np.random.default_rng(5)
  primer = _batch(rng, 2, 4)
  params = _params(config, primer)
  melody = rng.integers(60, 72, size=(2, 4 + 9))
  melody[:, ::5] = -1
  request = SampleRequest(num_pieces=2, num_steps=9, temperature=1.5,
                          primer=primer['roll'], primer_voices=primer['voices'],
                          melody=jnp.asarray(melody, jnp.int32))
  out = jax.device_get(_sampler(config)(params, jax.random.key(0), request))
  assert out['roll'].shape == (2, 13, 88)
  np.testing.assert_array_equal(out['roll'][:, :4], primer['roll'])
  if num_voices:
    np.testing.assert_array_equal(out['voices'][:, :4], primer['voices'])
    np.testing.assert_array_equal(out['voices'][:, 4:, 0], melody[:, 4:])
    np.testing.assert_array_equal(out['roll'], _roll(out['voices']))
  else:
    top = np.where(out['roll'].any(-1), 87 - np.argmax(out['roll'][..., ::-1], -1) + 21, -1)
    np.testing.assert_array_equal(top[:, 4:], melody[:, 4:])


@pytest.mark.parametrize('num_voices', [4, 0])
def test_top_k_1_is_deterministic_and_the_argmax_path(num_voices):
  config = _config(num_voices=num_voices)
  batch = _batch(np.random.default_rng(6), 2, 3)
  params = _params(config, batch, scale=0.8)
  request = SampleRequest(num_pieces=2, num_steps=10, top_k=1, primer=batch['roll'][:, 1:],
                          primer_voices=batch['voices'][:, 1:])
  fn = _sampler(config)
  a = jax.device_get(fn(params, jax.random.key(1), request))
  b = jax.device_get(fn(params, jax.random.key(2), request))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  # Teacher-force the sample: every head's choice is the argmax of its logits.
  pad = lambda x, fill: jnp.concatenate([jnp.full_like(x[:, :1], fill), x], axis=1)
  scored = {'roll': pad(jnp.asarray(a['roll']), False)}
  if num_voices:
    scored['voices'] = pad(jnp.asarray(a['voices']), -1)
  logits, target = _fns(config)[3](params, scored)
  np.testing.assert_array_equal(jnp.argmax(logits, -1)[:, 2:], target[:, 2:])
  assert len(np.unique(target[:, 2:])) > 1, 'a constant sample would prove little'


def test_top_p_keeps_the_smallest_nucleus():
  logits = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))
  kept = lstm_attn.filter_logits(logits, top_p=0.75) > lstm_attn.NEG / 2
  np.testing.assert_array_equal(kept, [True, True, False, False])
  kept = lstm_attn.filter_logits(logits, top_k=3, top_p=0.95) > lstm_attn.NEG / 2
  np.testing.assert_array_equal(kept, [True, True, True, False])


@pytest.mark.parametrize('key,value', [('heads', 'parallel'), ('voice_order', 'alto'),
                                       ('attn_heads', 3), ('max_pitch', 200)])
def test_invalid_model_config_names_the_key(key, value):
  config = _config()
  config.model[key] = value
  with pytest.raises(config_base.ConfigError, match=f'config.model.{key}'):
    lstm_attn.validate(config)


def test_check_corpus_resolves_voices_and_rejects_crowded_frames():
  piece = lambda roll: pianoroll.PianoRoll(roll, None, 4, {})
  roll = np.zeros((3, 88), bool)
  roll[1, 30:35] = True  # Five notes at once.
  corpus = types.SimpleNamespace(num_voices=None, splits={'train': [piece(roll)]})
  config = _config()
  with pytest.raises(config_base.ConfigError, match='config.model.max_notes'):
    lstm_attn.check_corpus(config, corpus)
  assert config.model.num_voices == 0
  config.model.max_notes = 5
  lstm_attn.check_corpus(config, corpus)
  config.model.min_pitch = 60
  with pytest.raises(config_base.ConfigError, match='min_pitch'):
    lstm_attn.check_corpus(config, corpus)
