"""The recurrent VAE: its bound, its encoder, collapse diagnostics, reconstruction and
interpolation (tiny models; one trained ':test' run shared by the module)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bach_jax import experiment
from bach_jax import loaded
from bach_jax.data import pipeline
from bach_jax.models import common
from bach_jax.models import latent
from bach_jax.models import vae
from bach_jax.models import vae_config
from train_helpers import load_config, run_main


def _config(**overrides):
  config = load_config('vae', 'test', **{'model.dropout_rate': 0.0, **overrides})
  if config.model.num_voices == -1:
    config.model.num_voices = 4 if config.model.output == 'frame_heads' else 0
  vae.validate(config)
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
    voices = np.where(frame_mask[..., None] | (np.arange(t) == 0)[None, :, None], voices, -1)
  roll = (np.arange(88) + 21 == voices[..., None]).any(-2)
  return {'roll': roll, 'voices': voices.astype(np.int32), 'frame_mask': frame_mask,
          'start': np.broadcast_to(np.arange(t) == 0, (b, t)).copy()}


@functools.lru_cache(maxsize=None)
def _params(**overrides):
  config = _config(**dict(overrides))
  state = vae.init(config, jax.random.key(0), experiment.example_batch(config, 4))
  return state.params


@pytest.fixture(scope='module')
def trained(trained_run):
  """configs/vae.py:test trained on the embedded chorales (the session's shared run,
  conftest.trained_run): (workdir, result, model)."""
  workdir, result = trained_run('vae')
  return workdir, result, loaded.load_model(workdir)


def test_kl_closed_form_equals_monte_carlo():
  rng = np.random.default_rng(0)
  mean = rng.normal(size=(3, 5)).astype(np.float32)
  std = np.exp(rng.normal(scale=0.5, size=(3, 5))).astype(np.float32)
  closed = np.asarray(latent.gaussian_kl(mean, std)).sum(-1)
  z = mean + std * rng.normal(size=(200_000, 3, 5)).astype(np.float32)
  log_q = latent.gaussian_logpdf(z, mean, std)
  log_p = latent.gaussian_logpdf(z, 0.0, 1.0)
  monte_carlo = np.asarray(jnp.mean(log_q - log_p, axis=0))
  np.testing.assert_allclose(monte_carlo, closed, rtol=0.02, atol=0.01)
  assert np.all(closed > 0)


def test_trained_run_bound_is_finite_iwae_tighter_and_units_active(trained):
  _, result, model = trained
  assert result['likelihood'] == 'bound'
  assert np.isfinite(result['best_test_iwae_frame_nll'])
  scores = model.score(_test_pieces(model)[:6])
  assert scores['likelihood'] == 'bound' and scores['select_by'] == 'iwae_frame_nll'
  assert scores['iwae_frame_nll'] < scores['nelbo_frame_nll']
  np.testing.assert_allclose(scores['nelbo_frame_nll'],
                             scores['recon_frame_nll'] + scores['kl_per_frame'], rtol=1e-6)
  assert scores['active_units'] >= 1, scores['kl_per_dim']
  assert scores['kl_per_piece'] > 0


def _test_pieces(model):
  corpus = experiment.setup(model.config).corpus
  return corpus.splits['test']


def test_iwae_with_one_sample_is_the_elbo_in_expectation(trained):
  _, _, model = trained
  config = model.config.copy_and_resolve_references()
  config.model.iwae_samples = 1
  batch = next(pipeline.piece_batches(_test_pieces(model)[:4], batch_size=4, num_voices=4))
  many = jax.jit(jax.vmap(lambda k: vae.eval_step(config, model.params, batch, k)))
  runs = jax.device_get(many(jax.random.split(jax.random.key(0), 256)))
  iwae1 = np.mean(runs['iwae_sum'])
  nelbo = np.mean(runs['recon_sum'] + runs['kl_sum'])
  spread = np.std(runs['iwae_sum']) / np.sqrt(len(runs['iwae_sum']))
  assert abs(iwae1 - nelbo) < 4 * spread + 1e-3 * abs(nelbo), (iwae1, nelbo, spread)
  config.model.iwae_samples = 32
  tight = np.mean([jax.device_get(jax.jit(functools.partial(vae.eval_step, config))(
      model.params, batch, jax.random.key(k)))['iwae_sum'] for k in range(3)])
  assert tight < nelbo - 4 * spread, (tight, nelbo)


def test_padding_never_changes_the_encoding_or_the_loss():
  config = _config()
  params = _params()
  rng = np.random.default_rng(1)
  short = _batch(rng, 3, 14, lengths=[13, 9, 5])
  # The same pieces in a longer batch, with garbage after each piece's end.
  longer = {k: np.concatenate([v, v[:, :10]], axis=1) if v.ndim > 1 else v
            for k, v in short.items()}
  longer['frame_mask'][:, 14:] = False
  longer['start'][:, 14:] = False
  garbage = _batch(np.random.default_rng(2), 3, 14)
  short_g = dict(short)
  keep = short['frame_mask'] | short['start']
  short_g['roll'] = np.where(keep[..., None], short['roll'], garbage['roll'])
  short_g['voices'] = np.where(keep[..., None], short['voices'], garbage['voices'])
  encode = jax.jit(functools.partial(vae.encode, config))
  enc = [encode(params, b) for b in (short, short_g, longer)]
  real = np.asarray(enc[0]['segment_mask'])  # Segments with frames (row 2 has one).
  assert real.sum() == 5
  for e in enc[1:]:
    np.testing.assert_array_equal(e['segment_mask'][:, :2], real)
    np.testing.assert_allclose(e['z'][:, :2][real], enc[0]['z'][real], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(e['std'][:, :2][real], enc[0]['std'][real], rtol=1e-5,
                               atol=1e-6)
  assert not enc[2]['segment_mask'][:, 2].any()
  eval_fn = jax.jit(functools.partial(vae.eval_step, config))
  sums = [jax.device_get(eval_fn(params, b, jax.random.key(3))) for b in (short, short_g, longer)]
  # Garbage after the ends: every sum equal (same z draws: same shapes).
  for key in ('recon_sum', 'kl_sum', 'iwae_sum', 'recon_at_mean_sum', 'frames', 'segments'):
    np.testing.assert_allclose(sums[1][key], sums[0][key], rtol=2e-5, err_msg=key)
  # A longer batch (an empty third segment per row): the deterministic sums are equal.
  for key in ('kl_sum', 'recon_at_mean_sum', 'frames', 'segments', 'pieces'):
    np.testing.assert_allclose(sums[2][key], sums[0][key], rtol=2e-5, err_msg=key)
  assert float(sums[0]['frames']) == 13 + 9 + 5


def _lstm_reference(x, p):
  """Plain NumPy LSTM over x float[T, D] with gates (i, f, g, o) -> final h."""
  sig = lambda a: 1 / (1 + np.exp(-a))
  w_ih, w_hh, b = (np.asarray(p[k], np.float64) for k in ('w_ih', 'w_hh', 'b'))
  hid = w_hh.shape[0]
  h, c = np.zeros(hid), np.zeros(hid)
  for xt in x:
    i, f, g, o = np.split(xt @ w_ih + h @ w_hh + b, 4)
    c = sig(f) * c + sig(i) * np.tanh(g)
    h = sig(o) * np.tanh(c)
  return h


def test_bidirectional_encoder_equals_two_plain_directions():
  config = _config()
  params = _params()
  rng = np.random.default_rng(4)
  x = rng.normal(size=(3, 8, 12)).astype(np.float32)
  lengths = np.array([8, 5, 1])
  model = vae.make_model(config, vae.frame_decoder.slot_info(config, params=params))  # pylint: disable=protected-access
  enc = {k: params[k] for k in ('enc_fwd', 'enc_bwd', 'to_posterior')}
  for name in ('enc_fwd', 'enc_bwd'):  # Input weights for 12 features, random.
    w = params[name]['w_ih']
    enc[name] = dict(params[name], w_ih=rng.normal(scale=0.3, size=(12, w.shape[1])))
  mean, std = model.apply({'params': {**params, **enc}}, jnp.asarray(x), jnp.asarray(lengths),
                          method=vae.RecurrentVAE.encode)
  for row, n in enumerate(lengths):
    h = np.concatenate([_lstm_reference(x[row, :n], enc['enc_fwd']),
                        _lstm_reference(x[row, :n][::-1], enc['enc_bwd'])])
    raw = h @ np.asarray(enc['to_posterior']['kernel']) + np.asarray(enc['to_posterior']['bias'])
    d = config.model.latent_dim
    np.testing.assert_allclose(mean[row], raw[:d], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(std[row], np.log1p(np.exp(raw[d:])) + latent.MIN_STD,
                               rtol=1e-4, atol=1e-5)


def test_encoder_that_ignores_its_input_is_flagged_by_active_units(trained):
  _, _, model = trained
  config = model.config
  params = jax.tree.map(np.asarray, model.params)
  batch = next(pipeline.piece_batches(_test_pieces(model)[:16], batch_size=16, num_voices=4))
  eval_fn = jax.jit(functools.partial(vae.eval_step, config))
  live = vae_config.summarize(config, jax.device_get(eval_fn(params, batch, jax.random.key(0))))
  deaf = dict(params)
  for name in ('enc_fwd', 'enc_bwd'):
    deaf[name] = dict(params[name], w_ih=np.zeros_like(params[name]['w_ih']))
  dead = vae_config.summarize(config, jax.device_get(eval_fn(deaf, batch, jax.random.key(0))))
  assert live['active_units'] > dead['active_units'] == 0
  assert any('posterior collapse' in w for w in dead['warnings'])
  assert not live['warnings']


@pytest.mark.parametrize('overrides', [
    {}, {'model.decoder': 'flat'},
    {'model.output': 'bernoulli', 'model.decoder_input': 'none'}])
def test_step_by_step_decoder_scores_like_teacher_forcing(overrides):
  """The sampler's scan (carry reset at every subsequence / segment) is the model that
  the bound scores: forcing the data through it gives the teacher-forced NLL."""
  config = _config(**overrides)
  params = _params(**overrides)
  batch = _batch(np.random.default_rng(6), 2, 17)
  batch.pop('frame_mask')
  info, model, seg = vae._setup(config, params, batch)  # pylint: disable=protected-access
  z = jax.random.normal(jax.random.key(1), (seg.x_enc.shape[0], config.model.latent_dim))
  teacher = vae._frame_nll(model, params, info, seg, z)  # pylint: disable=protected-access
  forced = seg.target.reshape((2, -1) + seg.target.shape[2:])
  _, logp = vae.decode_scan(config, params, z.reshape(2, -1, z.shape[-1]), jax.random.key(0),
                            common.SampleRequest(num_pieces=2), forced=forced)
  np.testing.assert_allclose(-logp, teacher.reshape(2, -1), rtol=2e-4, atol=2e-4)


def test_reconstruction_and_interpolation_endpoints(trained, tmp_path):
  _, _, model = trained
  pieces = _test_pieces(model)[:2]
  recon, stats = model.reconstruct(pieces)
  assert [r.roll.shape for r in recon] == [p.roll.shape for p in pieces]
  assert 0.5 < stats['key_accuracy'] <= 1.0 and 0 <= stats['note_recall'] <= 1
  points = model.interpolate(pieces[0], pieces[1], num_points=4)
  steps = min(p.roll.shape[0] for p in pieces)
  assert len(points) == 4 and all(p.roll.shape == (steps, 88) for p in points)
  for end, rec in ((points[0], recon[0]), (points[-1], recon[1])):
    np.testing.assert_array_equal(end.roll, rec.roll[:steps])


def test_slerp_path_runs_between_the_two_latents_on_the_arc():
  rng = np.random.default_rng(7)
  a, b = rng.normal(size=(2, 3, 6))
  path = vae.interpolate_latents(None, a, b, 5)
  assert path.shape == (5, 3, 6)
  np.testing.assert_allclose(path[0], a, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(path[-1], b, rtol=1e-5, atol=1e-6)
  # Equal-norm ends stay on their sphere (a straight line would cut inside it).
  b_same = b / np.linalg.norm(b, axis=-1, keepdims=True) * np.linalg.norm(a, axis=-1,
                                                                           keepdims=True)
  mid = vae.interpolate_latents(None, a, b_same, 3)[1]
  np.testing.assert_allclose(np.linalg.norm(mid, axis=-1), np.linalg.norm(a, axis=-1),
                             rtol=1e-5)


def test_sample_and_latent_modes_from_the_command_line(trained, tmp_path):
  workdir, _, _ = trained
  out = tmp_path / 'out'
  # (--mode=sample is every family's: the contract samples each through load_model.)
  for args in (['--mode=reconstruct', '--config.sample.num_pieces=2'],
               ['--mode=interpolate', '--config.sample.interpolate=split:0,split:1']):
    proc = run_main(f'--workdir={workdir}', f'--outdir={out}', *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
  names = sorted(p.name for p in out.iterdir())
  for name in ('interpolation.mid', 'interpolation.png', 'reconstruct_0.png',
               'reconstruct_1.mid'):
    assert name in names
  proc = run_main(f'--workdir={workdir}', '--mode=sample', '--config.sample.primer=split:0')
  assert proc.returncode == 2 and 'cannot continue a primer' in proc.stderr
