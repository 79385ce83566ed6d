"""A workdir written by an older bach_jax still loads, samples, resumes and fine-tunes.

tests/data/legacy_lstm_run was trained by bach_jax at commit 64eb6f3 (before the
runtime moved to experiment.py / one restore path), with

  python -m bach_jax.main --config=configs/lstm.py:test --workdir=legacy_lstm_run \
      --config.model.hidden_size=4 --config.train.num_steps=4 \
      --config.train.checkpoint_every=2 --config.train.eval_every=4 \
      --config.train.log_every=2 --config.train.num_final_samples=0 \
      --config.train.keep_checkpoints=1

(curves.png and tensorboard/ removed): checkpoints/4 and best/4, and a config.json
that lacks keys added since (train.eval_samples). Tests copy it before writing.
"""

import json
import os
import shutil

import bach_jax
from bach_jax import metric_writers
from train_helpers import REPO, run_main

LEGACY = os.path.join(REPO, 'tests', 'data', 'legacy_lstm_run')


def copy_legacy(tmp_path):
  workdir = str(tmp_path / 'legacy')
  shutil.copytree(LEGACY, workdir)
  return workdir


def test_an_old_workdir_loads_and_samples(tmp_path):
  model = bach_jax.load_model(copy_legacy(tmp_path))
  assert model.step == 4 and model.config.model.hidden_size == 4
  assert model.config.train.eval_samples == 64  # A key the old config.json lacks.
  pieces = model.sample(num_pieces=2, num_steps=8, seed=0)
  assert [p.roll.shape for p in pieces] == [(8, 88), (8, 88)]


def test_an_old_workdir_resumes_and_a_new_run_fine_tunes_from_it(tmp_path, cache_dir):
  workdir = copy_legacy(tmp_path)
  proc = run_main(f'--workdir={workdir}', f'--config.data.cache_dir={cache_dir}',
                  '--config.train.num_steps=6')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'resumed from {workdir}/checkpoints/4' in proc.stdout
  assert json.loads(proc.stdout.splitlines()[-1])['step'] == 6
  steps = [r['step'] for r in metric_writers.read_metrics(workdir) if 'train/loss' in r]
  assert steps == [1, 2, 3, 4, 5, 6]
  tuned = str(tmp_path / 'tuned')
  proc = run_main('--config=configs/lstm.py:test', f'--workdir={tuned}',
                  f'--config.data.cache_dir={cache_dir}', '--config.model.hidden_size=4',
                  f'--config.train.init_from={LEGACY}', '--config.train.num_steps=2',
                  '--config.train.num_final_samples=0')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'init_from {LEGACY}: ' in proc.stdout
  assert json.loads(proc.stdout.splitlines()[-1])['step'] == 2
