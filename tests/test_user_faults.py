"""Faults a careful user still met (issue 33): each one line and its exit code, nothing
lost, the workdir still resumes, samples and evaluates afterwards.

1. A refused resume leaves config.json as it was; inference with another model's
   keys is one line. 2. A damaged best-checkpoint score is set aside. 3. Another
family's config on a run. 4. A window longer than every piece. 5. A report folder
under a file. 6. Evaluate on a full disk. 7. Pieces that begin with silence are drawn
again. 8. Warnings read as one 'warning:' line, and loading a model prints none.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import bach_jax
from bach_jax import generate
from train_helpers import REPO, run_main, write_midi_folder


def one_error_line(proc, code=2):
  assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  errors = [x for x in proc.stderr.splitlines() if x.startswith('error:')]
  assert len(errors) == 1, proc.stderr[-3000:]
  return errors[0]


@pytest.fixture
def run(trained_run, tmp_path, cache_dir):
  """A copy of the shared LSTM run (24 steps: checkpoints 8, 16, 24; best/24), on the
  session's corpus cache."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained_run('lstm')[0], workdir)
  return workdir


def usable(workdir, cache_dir):
  """The workdir resumes, samples and evaluates (each exit 0)."""
  common = [f'--workdir={workdir}', f'--config.data.cache_dir={cache_dir}']
  for extra in (['--config.train.num_steps=26', '--config.train.num_final_samples=0'],
                ['--mode=sample', '--config.sample.num_pieces=1',
                 '--config.sample.num_steps=8', '--config.sample.write_wav=False'],
                ['--mode=evaluate', '--config.sample.split=valid']):
    proc = run_main(*common, *extra)
    assert proc.returncode == 0, (extra, proc.stderr[-3000:])
  assert bach_jax.load_model(workdir).step == 26


def test_refused_resume_leaves_the_workdir_as_it_was(run, cache_dir):
  before = open(os.path.join(run, 'config.json')).read()
  proc = run_main('--config=configs/lstm.py:test', f'--workdir={run}',
                  f'--config.data.cache_dir={cache_dir}', '--config.model.hidden_size=64')
  assert 'does not match the config' in one_error_line(proc)
  assert open(os.path.join(run, 'config.json')).read() == before
  # Inference with a model key the run was not trained with: one line naming it.
  proc = run_main(f'--workdir={run}', '--mode=sample', f'--config.data.cache_dir={cache_dir}',
                  '--config.model.hidden_size=64')
  line = one_error_line(proc)
  assert 'does not fit this config' in line and 'shape' in line, line
  usable(run, cache_dir)


@pytest.mark.parametrize('how', ['empty', 'truncated'])
def test_a_damaged_best_score_is_set_aside(run, cache_dir, how):
  metrics_file = os.path.join(run, 'best', '24', 'metrics', 'metrics')
  text = open(metrics_file).read()
  with open(metrics_file, 'w') as f:
    f.write('' if how == 'empty' else text[:len(text) // 2])
  model = bach_jax.load_model(run)  # Reading needs no score.
  assert model.step == 24
  out = os.path.join(os.path.dirname(run), 'report')
  proc = subprocess.run([sys.executable, '-m', 'bach_jax.compare', run, f'--out={out}',
                         '--num_pieces=2', '--num_steps=16', f'--cache_dir={cache_dir}'],
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = run_main(f'--workdir={run}', f'--config.data.cache_dir={cache_dir}',
                  '--config.train.num_steps=26', '--config.train.num_final_samples=0')
  assert proc.returncode == 0, proc.stderr[-3000:]
  warnings = [x for x in proc.stdout.splitlines() if x.startswith('warning:')]
  assert any(f'{run}/best/24: damaged checkpoint (its score' in w for w in warnings), warnings
  assert os.listdir(os.path.join(run, 'damaged')) == ['best-24']  # Set aside, not deleted.
  usable(run, cache_dir)


def test_another_familys_config_on_a_run_is_one_line(run, cache_dir):
  proc = run_main(f'--workdir={run}', '--mode=sample', '--config=configs/lstm_attn.py:test',
                  f'--config.data.cache_dir={cache_dir}')
  assert 'holds a lstm run; this config is a lstm_attn config' in one_error_line(proc)


@pytest.mark.parametrize('pad_short', [False, True])
def test_a_window_longer_than_every_piece_names_the_key(tmp_path, cache_dir, pad_short):
  proc = run_main('--config=configs/lstm.py:test', f'--workdir={tmp_path}/w',
                  f'--config.data.cache_dir={cache_dir}', '--config.data.window_steps=100000',
                  f'--config.data.pad_short={pad_short}')
  line = one_error_line(proc)
  assert 'config.data.window_steps=100000: longer than every training piece' in line, line
  assert not os.path.exists(f'{tmp_path}/w/config.json')


def test_a_report_folder_under_a_file_is_one_line(run, tmp_path):
  afile = tmp_path / 'afile'
  afile.write_text('x')
  proc = subprocess.run([sys.executable, '-m', 'bach_jax.compare', run,
                         f'--out={afile}/sub'], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert f'{afile}/sub' in one_error_line(proc)
  assert 'sampling' not in proc.stdout  # Refused before anything was sampled.


@pytest.fixture
def full_disk(tmp_path):
  """A 8 MiB tmpfs (root only), unmounted after the test."""
  mount = tmp_path / 'disk'
  mount.mkdir()
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', str(mount)],
                    capture_output=True).returncode != 0:
    pytest.skip('cannot mount a tmpfs here (needs root)')
  yield mount
  subprocess.run(['umount', str(mount)], capture_output=True)


def test_evaluate_on_a_full_disk(run, cache_dir, full_disk):
  """A disk that filled while training wrote the best score (an empty metrics item):
  evaluate only reads, so it works; training stops in one line (74), nothing lost."""
  workdir = str(full_disk / 'run')
  shutil.copytree(run, workdir, ignore=shutil.ignore_patterns('samples', 'tensorboard'))
  open(os.path.join(workdir, 'best', '24', 'metrics', 'metrics'), 'w').close()
  with open(full_disk / 'filler', 'wb') as f:
    try:
      f.write(b'\0' * (16 << 20))
    except OSError:
      pass  # The disk is full.
  before = open(os.path.join(workdir, 'config.json')).read()
  proc = run_main(f'--workdir={workdir}', '--mode=evaluate', '--config.sample.split=valid',
                  f'--config.data.cache_dir={cache_dir}')
  assert proc.returncode == 0 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert json.loads(proc.stdout.splitlines()[-1])['step'] == 24
  proc = run_main(f'--workdir={workdir}', f'--config.data.cache_dir={cache_dir}',
                  '--config.train.num_steps=26')
  assert 'No space left on device' in one_error_line(proc, 74)
  assert open(os.path.join(workdir, 'config.json')).read() == before


def test_pieces_that_begin_with_silence_are_drawn_again():
  """Rejection sampling, row by row: a row is replaced by the first later draw of its
  own that starts with a sound; the others are kept as drawn."""
  first = np.zeros((3, 4, 88), bool)
  first[1, :, 60] = True  # Row 1 starts with a sound; rows 0 and 2 are silent.
  draws = [first]
  second = np.zeros((3, 4, 88), bool)
  second[2, 0, 40] = True  # Row 2 starts now; row 0 is still silent.
  third = np.ones((3, 4, 88), bool)
  draws += [second, third]
  calls = []

  def fn(params, rng, request):
    calls.append(rng)
    return {'roll': draws[len(calls)], 'voices': np.full((3, 4, 1), len(calls))}

  out = generate._resample_silent_starts(  # pylint: disable=protected-access
      fn, None, jax.random.key(0), None, {'roll': first, 'voices': np.zeros((3, 4, 1), int)})
  assert len(calls) == 2
  np.testing.assert_array_equal(out['roll'][1], first[1])
  np.testing.assert_array_equal(out['roll'][2], second[2])
  np.testing.assert_array_equal(out['roll'][0], third[0])
  assert [int(out['voices'][i, 0, 0]) for i in range(3)] == [2, 0, 1]


def test_a_trained_model_starts_every_piece(run):
  model = bach_jax.load_model(run)
  pieces = model.sample(num_pieces=32, num_steps=8, seed=3)
  assert all(p.roll[0].any() for p in pieces)
  model.config.sample.resample_silent = False
  drawn = model.sample(num_pieces=32, num_steps=8, seed=3)
  kept = [i for i, p in enumerate(drawn) if p.roll[0].any()]  # Unchanged where they start.
  for i in kept:
    np.testing.assert_array_equal(pieces[i].roll, drawn[i].roll)


def test_warnings_are_one_line_and_loading_prints_none(run, tmp_path, capfd):
  folder = tmp_path / 'midi'
  write_midi_folder(str(folder), [f'ok{i}.mid' for i in range(6)])
  (folder / 'broken.mid').write_bytes(b'MThd not really')
  proc = run_main('--config=configs/lstm.py:test', '--mode=prepare',
                  f'--config.data.source=midi_dir:{folder}',
                  f'--config.data.cache_dir={tmp_path}/cache')
  assert proc.returncode == 0, proc.stderr[-3000:]
  skipped = [x for x in proc.stderr.splitlines() if 'broken.mid' in x]
  assert skipped and all(x.startswith('warning: skipping broken.mid: ') for x in skipped), (
      proc.stderr[-2000:])
  capfd.readouterr()
  bach_jax.load_model(run)
  err = capfd.readouterr().err
  assert 'WARNING' not in err and 'absl' not in err, err
