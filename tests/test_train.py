"""End-to-end training: loss falls on real chorales, resume, NaN stop, config errors."""

import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bach_jax import checkpoints
from bach_jax import config_base
from bach_jax import experiment
from bach_jax import generate
from bach_jax import loaded
from bach_jax import metric_writers
from bach_jax import parallel
from bach_jax import pieces as pieces_lib
from bach_jax import train
from bach_jax.data import pipeline
from bach_jax.models import lstm
from train_helpers import REPO, load_config


def tiny(cache_dir, **overrides):
  return load_config('lstm', 'test', **{'data.cache_dir': cache_dir, **overrides})


def train_losses(workdir):
  return {r['step']: r['train/loss'] for r in metric_writers.read_metrics(workdir)
          if 'train/loss' in r}


@pytest.fixture(scope='module')
def trained(tmp_path_factory, cache_dir):
  workdir = str(tmp_path_factory.mktemp('run'))
  result = train.train_and_evaluate(tiny(cache_dir), workdir)
  return workdir, result


def test_trains_end_to_end_on_real_chorales(trained):
  workdir, result = trained
  losses = train_losses(workdir)
  steps = sorted(losses)
  assert steps == list(range(1, 61))
  first = np.mean([losses[s] for s in steps[:5]])
  last = np.mean([losses[s] for s in steps[-5:]])
  assert last < 0.5 * first, (first, last)
  # The valid NLL beats the untrained model's by a wide margin (88 keys * log 2 = 61).
  assert result['best_valid_frame_nll'] < 20.0
  assert np.isfinite(result['best_test_frame_nll'])
  for name in ('config.json', 'metrics.jsonl'):
    assert os.path.exists(os.path.join(workdir, name))
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  samples = sorted(os.listdir(os.path.join(workdir, 'samples')))
  for ext in ('mid', 'png', 'wav'):
    assert f'sample_0.{ext}' in samples and f'sample_1.{ext}' in samples
  assert checkpoints.Checkpointer(workdir).latest_step() == 60
  assert os.path.getsize(os.path.join(workdir, 'curves.png')) > 1000


def test_rerun_on_finished_workdir_resumes_without_training(trained, cache_dir):
  workdir, _ = trained
  before = len(metric_writers.read_metrics(workdir))
  result = train.train_and_evaluate(tiny(cache_dir, **{'train.num_final_samples': 0}), workdir)
  assert result['step'] == 60
  steps_logged = [r['step'] for r in metric_writers.read_metrics(workdir)[before:]
                  if 'train/loss' in r]
  assert steps_logged == []


def test_kill_and_resume_gives_identical_metrics(tmp_path, cache_dir, monkeypatch):
  overrides = {'train.num_steps': 24, 'train.log_every': 4, 'train.eval_every': 0,
               'train.checkpoint_every': 8, 'train.num_final_samples': 0}
  full = str(tmp_path / 'full')
  train.train_and_evaluate(tiny(cache_dir, **overrides), full)

  resumed = str(tmp_path / 'resumed')
  calls = {'n': 0}
  real_next = pipeline.BatchIterator.__next__

  def next_then_sigterm(self):
    calls['n'] += 1
    if calls['n'] == 11:  # A preemption arrives while batch 11 is being read.
      os.kill(os.getpid(), signal.SIGTERM)
    return real_next(self)

  monkeypatch.setattr(pipeline.BatchIterator, '__next__', next_then_sigterm)
  result = train.train_and_evaluate(tiny(cache_dir, **overrides), resumed)
  assert result == {'interrupted_at': 11}
  assert checkpoints.Checkpointer(resumed).latest_step() == 11
  monkeypatch.setattr(pipeline.BatchIterator, '__next__', real_next)
  train.train_and_evaluate(tiny(cache_dir, **overrides), resumed)

  a, b = train_losses(full), train_losses(resumed)
  assert sorted(b) == list(range(1, 25))
  np.testing.assert_allclose([b[s] for s in range(12, 25)], [a[s] for s in range(12, 25)],
                             rtol=1e-6)


def test_nan_stops_run_and_keeps_last_good_checkpoint(tmp_path, cache_dir, monkeypatch):
  real_step = lstm.train_step

  def poisoned_step(config, state, batch, rng):
    state, metrics = real_step(config, state, batch, rng)
    bad = state.step >= 15
    params = jax.tree.map(lambda p: jnp.where(bad, jnp.nan, p), state.params)
    return state.replace(params=params), {**metrics, 'loss': jnp.where(bad, jnp.nan,
                                                                        metrics['loss'])}

  monkeypatch.setattr(lstm, 'train_step', poisoned_step)
  workdir = str(tmp_path / 'nan')
  config = tiny(cache_dir, **{'train.num_steps': 30, 'train.log_every': 5,
                              'train.checkpoint_every': 10, 'train.eval_every': 0})
  with pytest.raises(train.NonFiniteLossError, match='step 15'):
    train.train_and_evaluate(config, workdir)
  model = loaded.load_model(workdir, best=False)
  assert model.step == 10
  assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(model.params))
  pieces = model.sample(num_pieces=2, num_steps=8)
  assert pieces[0].roll.shape == (8, 88)


def test_restore_then_sample_equals_before_save(tmp_path, cache_dir):
  config = tiny(cache_dir)
  batch = experiment.example_batch(config, None)
  state = lstm.init(config, jax.random.key(3), batch)
  workdir = str(tmp_path / 'ckpt')
  checkpoints.write_config(workdir, config)
  ckpt = checkpoints.Checkpointer(workdir)
  ckpt.save(7, state, {'epoch': 0}, {'step': 7, 'num_voices': None, 'steps_per_quarter': 4})
  ckpt.wait()
  ckpt.close()
  before = loaded.LoadedModel(config, lstm, state.params, 7, {'steps_per_quarter': 4})
  after = loaded.load_model(workdir)
  assert after.step == 7
  a = before.sample(num_pieces=3, num_steps=20, seed=5)
  b = after.sample(num_pieces=3, num_steps=20, seed=5)
  assert any(p.roll.any() for p in a)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x.roll, y.roll)


def test_ema_run_evaluates_and_serves_the_average(tmp_path, cache_dir):
  """train.ema_decay > 0: valid NLL (and best) by the average, the raw params' NLL
  logged beside it, and load_model serves the average."""
  config = tiny(cache_dir, **{'train.ema_decay': 0.8, 'train.num_steps': 20,
                              'train.eval_every': 10, 'train.num_final_samples': 0})
  workdir = str(tmp_path / 'ema')
  train.train_and_evaluate(config, workdir)
  evals = [r for r in metric_writers.read_metrics(workdir) if 'valid/frame_nll' in r]
  assert [r['step'] for r in evals] == [10, 20]
  assert all(r['valid/frame_nll'] != r['valid/frame_nll_raw'] for r in evals)
  ckpt = checkpoints.Checkpointer(workdir)
  try:
    state, _, _ = ckpt.restore(experiment.abstract_state(
        lstm, config, None, parallel.replicated(parallel.make_mesh())), best=True)
  finally:
    ckpt.close()
  served = loaded.load_model(workdir).params
  for a, e in zip(jax.tree.leaves(served), jax.tree.leaves(state.ema_params)):
    np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize('key, value, device_count', [
    ('model.name', 'no_such_model', 1),
    ('data.window_steps', 1, 1),
    ('train.batch_size', 12, 8),
    ('data.steps_per_quarter', 3, 1),
    ('data.source', 'nowhere', 1),
    ('model.dropout_rate', 1.0, 1),
])
def test_invalid_config_names_the_key(key, value, device_count):
  config = load_config('lstm', 'test', **{key: value})
  with pytest.raises(config_base.ConfigError, match=f'config.{key}'):
    config_base.validate(config, device_count)
    lstm.validate(config)
    from bach_jax import models
    models.get_family(config.model.name)


def run_main(*args, cwd=REPO):
  return subprocess.run([sys.executable, '-m', 'bach_jax.main', *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300)


def test_cli_reports_user_errors_in_one_line(tmp_path, cache_dir):
  proc = run_main('--config=configs/lstm.py:test', f'--workdir={tmp_path}/w',
                  '--config.model.name=nope', f'--config.data.cache_dir={cache_dir}')
  assert proc.returncode == 2
  assert 'config.model.name' in proc.stderr and 'Traceback' not in proc.stderr
  proc = run_main(f'--workdir={tmp_path}/missing', '--mode=sample')
  assert proc.returncode == 2
  assert 'config.json' in proc.stderr and 'Traceback' not in proc.stderr


def test_cli_harmonizes_a_melody_with_the_voiceless_baseline(trained, tmp_path, cache_dir):
  """--sample.harmonize on a model without voice heads: the top note is the melody."""
  workdir, _ = trained
  rng = np.random.default_rng(0)
  melody = rng.integers(60, 76, size=24)
  melody[5:7] = -1
  piece = generate.pianoroll.PianoRoll(
      roll=(np.arange(88) + 21 == melody[:, None]), voices=melody[:, None].astype(np.int16),
      steps_per_quarter=4, meta={'file': 'melody'})
  generate.pianoroll.to_midi(piece, str(tmp_path / 'melody.mid'))
  proc = run_main(f'--workdir={workdir}', '--mode=sample', f'--config.data.cache_dir={cache_dir}',
                  f'--config.sample.harmonize={tmp_path}/melody.mid',
                  '--config.sample.num_pieces=2', '--config.sample.write_wav=False')
  assert proc.returncode == 0, proc.stderr[-2000:]
  paths = proc.stdout.split()
  assert len(paths) == 2
  for path in paths:
    sampled = generate.pianoroll.from_midi(path, steps_per_quarter=4)
    np.testing.assert_array_equal(pieces_lib.soprano_line(sampled)[:len(melody)], melody)
