"""Every registered family, through the same checks: a family is tested the day it is
registered (models/family.py is the contract).

Each family trains its ':test' config for a few steps on the embedded chorales, through
the trainer as users run it; the checks read only the contract (CAPABILITIES, the
summary's select_by, load_model). The step-level checks reuse the trainer's jitted step
on batches of the trainer's shapes, so XLA's compilation cache (conftest.py) serves them.
"""

import functools
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from bach_jax import experiment
from bach_jax import loaded
from bach_jax import metric_writers
from bach_jax import models
from bach_jax import parallel
from bach_jax import train
from bach_jax.data import pipeline
from bach_jax.models import family as family_lib
from train_helpers import REPO, RUN_OVERRIDES, RUN_STEPS, load_config

FAMILIES = sorted(models.REGISTRY)


def _config(name, trained_run, **overrides):
  """The family's ':test' config as the shared runs train it (conftest.trained_run); a
  family that builds on another family's run (CAPABILITIES.builds_on) starts from that
  family's shared run."""
  config = load_config(name, 'test', **{**RUN_OVERRIDES, **overrides})
  base = models.get_family(name).CAPABILITIES.builds_on
  if base:
    config.train.init_from = trained_run(base)[0]
  return config


def _losses(workdir, key='loss'):
  return {r['step']: r[f'train/{key}'] for r in metric_writers.read_metrics(workdir)
          if f'train/{key}' in r}


@pytest.fixture(scope='module', params=FAMILIES)
def run(request, trained_run):
  """(name, workdir, result) of the family's shared run (conftest.trained_run)."""
  return (request.param, *trained_run(request.param))


def test_registry_entries_meet_the_contract():
  for name in FAMILIES:
    family = models.get_family(name)
    caps = family.CAPABILITIES
    assert caps.likelihood in family_lib.LIKELIHOODS
    assert caps.select_by
    for fn in family_lib.REQUIRED + (family_lib.LATENT if caps.latent else ()):
      assert callable(getattr(family, fn)), (name, fn)


def test_contract_check_names_what_a_family_lacks():
  import types  # pylint: disable=g-import-not-at-top
  bare = types.ModuleType('bach_jax.models.bare')
  bare.CAPABILITIES = family_lib.Capabilities(likelihood='bound', select_by='x', latent=True)
  bare.init = bare.train_step = lambda *a: None
  with pytest.raises(models.ConfigError, match="lacks .*'eval_step'.*'encode'"):
    family_lib.check_family('bare', bare)


def test_family_trains_evaluates_and_samples(run):
  name, workdir, result = run
  family = models.get_family(name)
  caps = family.CAPABILITIES
  sign = -1 if caps.learns_by.startswith('-') else 1
  learns = _losses(workdir, caps.learns_by.lstrip('-'))
  n = RUN_STEPS
  assert sorted(learns) == list(range(1, n + 1))
  assert sign * np.mean([learns[s] for s in range(n - 3, n + 1)]) < sign * np.mean(
      [learns[s] for s in range(1, 5)]), learns
  assert result['likelihood'] == caps.likelihood
  if caps.likelihood != 'none':
    for split in ('valid', 'test'):
      assert np.isfinite(result[f'best_{split}_{caps.select_by}']), result
  model = loaded.load_model(workdir)
  assert model.step == RUN_STEPS
  pieces = model.sample(num_pieces=2, num_steps=12, seed=1)
  assert [p.roll.shape for p in pieces] == [(12, 88)] * 2
  assert any(p.roll.any() for p in pieces)
  if caps.voices and model.num_voices:
    assert pieces[0].voices.shape == (12, model.num_voices)
  assert sorted(os.listdir(os.path.join(workdir, 'samples')))[:3] == [
      'sample_0.mid', 'sample_0.png', 'sample_0.wav']


def _step_fixture(name, trained_run):
  """(config, family, state, batch, step) with the trainer's shapes and jitted step."""
  config = _config(name, trained_run)
  exp = experiment.setup(config)
  family, corpus, mesh = exp.family, exp.corpus, exp.mesh
  batch = next(pipeline.BatchIterator(
      corpus.splits['train'], batch_size=config.train.batch_size,
      window_steps=config.data.window_steps, hop_steps=config.data.hop_steps, seed=0,
      num_voices=corpus.num_voices, pad_start=config.data.pad_start))
  state = jax.jit(functools.partial(family.init, config), out_shardings=parallel.replicated(
      mesh))(jax.random.key(0), experiment.example_batch(config, corpus.num_voices))
  step = train.make_train_step(family, config, mesh)

  def loss(batch_):  # The state is donated: step a copy.
    return float(step(jax.tree.map(np.array, state), parallel.to_global(batch_, mesh),
                      jax.random.key(1))[1]['loss'])

  return batch, loss


@pytest.mark.parametrize('name', FAMILIES)
def test_masked_frames_never_reach_the_loss_and_the_start_flag_does(name, trained_run):
  """data.pad_short: frames after a piece's end (frame_mask False) never count; the
  start flag tells a piece's start from an internal rest."""
  batch, loss = _step_fixture(name, trained_run)
  rng = np.random.default_rng(0)
  mask = batch['frame_mask'].copy()
  mask[::2, -3:] = False
  clean, dirty = dict(batch, frame_mask=mask), dict(batch, frame_mask=mask)
  noise = rng.random(batch['roll'].shape) < 0.2
  dirty['roll'] = np.where(mask[..., None], batch['roll'], noise)
  if 'voices' in batch:
    dirty['voices'] = np.where(mask[..., None], batch['voices'], 60)
  base = loss(clean)
  np.testing.assert_allclose(loss(dirty), base, rtol=1e-6)
  unmasked = dict(dirty, frame_mask=batch['frame_mask'])
  assert abs(loss(unmasked) - base) > 1e-4
  # Frame 0 silent in every row: flagged as the start frame, or an internal rest.
  silent = dict(clean, roll=clean['roll'].copy())
  silent['roll'][:, 0] = False
  if 'voices' in batch:
    silent['voices'] = batch['voices'].copy()
    silent['voices'][:, 0] = -1
  as_start = loss(dict(silent, start=np.broadcast_to(np.arange(mask.shape[1]) == 0,
                                                     mask.shape).copy()))
  as_rest = loss(dict(silent, start=np.zeros_like(batch['start'])))
  caps = models.get_family(name).CAPABILITIES
  # Not for a family whose loss is over a base model's latents, nor for a critic, which
  # sees rolls only (frames after a piece's end zeroed; no frame likelihood to start).
  if not caps.builds_on and caps.likelihood != 'none':
    assert abs(as_start - as_rest) > 1e-5


def _state_beyond_params_and_one_optimizer(name, config):
  """Whether a family's train state holds more than params and an optimizer state: a
  model_state (e.g. a codebook's statistics), a base run's params (builds_on), or two
  networks' optimizers (no likelihood: a GAN)."""
  family = models.get_family(name)
  if family.CAPABILITIES.builds_on or family.CAPABILITIES.likelihood == 'none':
    return True
  state = jax.eval_shape(functools.partial(family.init, config), jax.random.key(0),
                         experiment.example_batch(config, 4))
  return bool(jax.tree.leaves(state.model_state))


def test_sigterm_then_resume_gives_identical_metrics(run, trained_run, tmp_path, monkeypatch):
  """For the families whose state is more than params and one optimizer; the plain state
  is resumed by test_train.py (kill and SIGTERM) and test_faults.py, with the LSTM."""
  name, full, _ = run  # The uninterrupted run (its final samples change no metric).
  if not _state_beyond_params_and_one_optimizer(name, _config(name, trained_run)):
    pytest.skip('plain train state: resumed in test_train.py / test_faults.py')
  resumed = str(tmp_path / 'resumed')
  calls = {'n': 0}
  real_next = pipeline.BatchIterator.__next__

  def next_then_sigterm(self):
    calls['n'] += 1
    if calls['n'] == 11:  # A preemption arrives while batch 11 is being read.
      os.kill(os.getpid(), signal.SIGTERM)
    return real_next(self)

  monkeypatch.setattr(pipeline.BatchIterator, '__next__', next_then_sigterm)
  config = _config(name, trained_run, **{'train.num_final_samples': 0})
  result = train.train_and_evaluate(config, resumed)
  assert result.get('interrupted_at') == 11
  monkeypatch.setattr(pipeline.BatchIterator, '__next__', real_next)
  final = train.train_and_evaluate(_config(name, trained_run, **{'train.num_final_samples': 0}),
                                   resumed)
  a, b = _losses(full), _losses(resumed)
  assert sorted(b) == list(range(1, RUN_STEPS + 1))
  np.testing.assert_allclose([b[s] for s in range(12, RUN_STEPS + 1)],
                             [a[s] for s in range(12, RUN_STEPS + 1)],
                             rtol=1e-6)
  select = models.get_family(name).CAPABILITIES.select_by
  expected = metric_writers.read_metrics(full)
  got = [r for r in metric_writers.read_metrics(resumed) if f'best/best_test_{select}' in r]
  want = [r for r in expected if f'best/best_test_{select}' in r]
  np.testing.assert_allclose(got[-1][f'best/best_test_{select}'],
                             want[-1][f'best/best_test_{select}'], rtol=1e-6)
  assert final['step'] == RUN_STEPS


_EIGHT_DEVICES = r'''
import sys
sys.path.insert(0, sys.argv[1])
import jax, numpy as np
from bach_jax import models, parallel, train
from train_helpers import load_config

assert jax.device_count() == 8, jax.devices()
for name in sys.argv[2:]:
  config = load_config(name, 'test')
  family = models.get_family(name)
  if family.CAPABILITIES.builds_on:  # The base model's config, as init_from would copy it.
    config.model[config.train.init_from_into] = load_config(family.CAPABILITIES.builds_on,
                                                            'test').model
  for m in [config.model] + [v for v in config.model.values() if hasattr(v, 'keys')]:
    if m.get('num_voices', 0) == -1:
      m.num_voices = 4
  rng = np.random.default_rng(0)
  w = config.data.window_steps
  voices = np.where(rng.random((16, w, 4)) < 0.1, -1, rng.integers(55, 72, (16, w, 4)))
  voices[:, 0] = -1
  batch = {'roll': (np.arange(88) + 21 == voices[..., None]).any(-2),
           'voices': voices.astype(np.int32), 'mask': np.ones(16, bool)}
  batch['mask'][-3:] = False  # Padding rows must not count, wherever they are sharded.
  results = []
  for devices in (jax.devices(), jax.devices()[:1]):
    mesh = parallel.make_mesh(devices)
    state = parallel.replicate(family.init(config, jax.random.key(0), batch), mesh)
    step = train.make_train_step(family, config, mesh)
    gbatch = {k: jax.device_put(v, parallel.data_sharded(mesh)) for k, v in batch.items()}
    metrics = []
    for _ in range(3):
      state, m = step(state, gbatch, jax.random.key(1))
      metrics.append({k: float(v) for k, v in m.items()})
    leaf = jax.tree.leaves(state.params)[0]
    assert len(leaf.sharding.device_set) == len(devices)
    # model_state too: e.g. the VQ codebook's usage counts, summed over the global batch.
    results.append((metrics, jax.device_get((state.params, state.model_state))))
  (m8, p8), (m1, p1) = results
  # A GAN step is n_critic Adam updates of the critic before the generator's: float
  # reassociation of the 8-way batch sums grows through them (measured up to 2.4e-5
  # absolute on losses of order 0.01-1).
  rtol, atol = (1e-4, 1e-4) if family.CAPABILITIES.likelihood == 'none' else (2e-5, 1e-6)
  for a, b in zip(m8, m1):
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=f'{name} {k}')
  # Adam moves a param whose gradient is ~0 by up to the learning rate either way: the
  # GAN's n_critic updates per step meet such params (a critic weight on a silent key).
  patol = 2 * config.train.learning_rate if family.CAPABILITIES.likelihood == 'none' else 1e-5
  for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(p1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=patol, err_msg=name)
  print('OK', name, [m['loss'] for m in m8])
'''


def test_eight_device_step_equals_one_device_step_for_every_family():
  env = dict(os.environ, XLA_FLAGS=os.environ.get('XLA_FLAGS', '')
             + ' --xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', _EIGHT_DEVICES, os.path.join(REPO, 'tests'),
                         *FAMILIES], env=env, cwd=REPO, capture_output=True, text=True,
                        timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.count('OK') == len(FAMILIES), proc.stdout
