"""Faults a long run meets (docs/faults.md): signals, damaged checkpoints, a full disk,
unusable workdirs, config mistakes, huge samples, divergence, two runs on one workdir,
exit codes; and every file of a run written through etils epath.

One tiny run is trained once (module fixture) and copied where a test changes it; the
corpus and XLA caches are the session's (conftest.py), subprocesses included.
Subprocesses only where an exit code, a signal or a read-only mount must be observed.
"""

import errno
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bach_jax import checkpoints
from bach_jax import config_base
from bach_jax import evaluate
from bach_jax import experiment
from bach_jax import generate
from bach_jax import loaded
from bach_jax import metric_writers
from bach_jax import pieces as pieces_lib
from bach_jax import plotting
from bach_jax import train
from bach_jax import workdir as workdir_lib
from bach_jax.data import pianoroll
from bach_jax.models import lstm
from train_helpers import REPO, load_config

def tiny(**overrides):
  """configs/lstm.py:test on the session's corpus cache, without final samples."""
  return load_config('lstm', 'test', **{'data.cache_dir': os.environ['BACH_JAX_CACHE'],
                                        'train.num_final_samples': 0, **overrides})


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A finished 60-step run: checkpoints/30, checkpoints/60, best/60."""
  workdir = str(tmp_path_factory.mktemp('faults') / 'run')
  train.train_and_evaluate(tiny(), workdir)
  return workdir


def copy_run(run, tmp_path, name='copy'):
  dst = str(tmp_path / name)
  shutil.copytree(run, dst)
  return dst


def run_main(*args, timeout=300):
  return subprocess.run([sys.executable, '-m', 'bach_jax.main', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


def one_error_line(proc):
  """The stderr of a failed command: no traceback, one 'error:' line; -> that line."""
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  errors = [x for x in proc.stderr.splitlines() if x.startswith('error:')]
  assert len(errors) == 1, proc.stderr[-3000:]
  return errors[0]


# 1. A signal during the evaluation or the save at a checkpoint step.


@pytest.mark.parametrize('during', ['evaluation', 'save'])
def test_signal_at_a_checkpoint_step_saves_once_and_stops(run, tmp_path, monkeypatch, during):
  workdir = copy_run(run, tmp_path)
  sent = []

  def sigterm_once():
    if not sent:
      sent.append(1)
      os.kill(os.getpid(), signal.SIGTERM)

  if during == 'evaluation':
    real = evaluate.evaluate_pieces

    def evaluate_then_signal(*args, **kw):
      sigterm_once()
      return real(*args, **kw)

    monkeypatch.setattr(evaluate, 'evaluate_pieces', evaluate_then_signal)
  else:
    real = checkpoints.Checkpointer.save

    def signal_then_save(self, step, *args, **kw):
      sigterm_once()
      return real(self, step, *args, **kw)

    monkeypatch.setattr(checkpoints.Checkpointer, 'save', signal_then_save)
  config = tiny(**{'train.num_steps': 80, 'train.eval_every': 10, 'train.log_every': 10})
  result = train.train_and_evaluate(config, workdir)
  assert result == {'interrupted_at': 70}
  ckpt = checkpoints.Checkpointer(workdir, read_only=True)
  try:
    assert ckpt.latest_step() == 70
  finally:
    ckpt.close()


# 2. A damaged latest checkpoint.


def damage(workdir, where, how):
  """Damages WORKDIR/<where>/state the way a crash or a bad disk does."""
  state = os.path.join(workdir, where, 'state')
  if how == 'truncated_array':
    files = sorted(glob.glob(os.path.join(state, 'ocdbt.process_0', 'd', '*')),
                   key=os.path.getsize)
    os.truncate(files[-1], os.path.getsize(files[-1]) // 2)
  elif how == 'empty_metadata':
    open(os.path.join(state, '_METADATA'), 'w').close()
  elif how == 'missing_metadata':
    os.remove(os.path.join(state, '_METADATA'))
  elif how == 'missing_manifest':
    os.remove(os.path.join(state, 'manifest.ocdbt'))


@pytest.mark.parametrize('how', ['truncated_array', 'empty_metadata', 'missing_metadata',
                                 'missing_manifest'])
def test_damaged_best_and_latest_fall_back_for_sampling(run, tmp_path, capsys, how):
  workdir = copy_run(run, tmp_path)
  damage(workdir, 'best/60', how)
  damage(workdir, 'checkpoints/60', how)
  model = loaded.load_model(workdir)
  assert model.step == 30
  err = capsys.readouterr().err
  assert 'Traceback' not in err and 'Event loop is closed' not in err
  warnings = [x[len('warning: '):] for x in err.splitlines() if x.startswith('warning: ')]
  assert [w.split(':')[0] for w in warnings[:2]] == [
      f'{workdir}/best/60', f'{workdir}/checkpoints/60']
  assert 'damaged checkpoint' in warnings[0] and len(warnings[0]) < len(workdir) + 180
  assert warnings[-1] == f'using {workdir}/checkpoints/30 instead'
  assert model.sample(num_pieces=1, num_steps=4)[0].roll.shape == (4, 88)


def test_no_intact_checkpoint_names_the_directory(run, tmp_path):
  workdir = copy_run(run, tmp_path)
  for where in ('best/60', 'checkpoints/60', 'checkpoints/30'):
    damage(workdir, where, 'empty_metadata')
  with pytest.raises(checkpoints.CheckpointError, match=f'{workdir}: no checkpoint restores'):
    loaded.load_model(workdir)


def test_resuming_another_model_is_a_config_error_not_damage(run, tmp_path):
  workdir = copy_run(run, tmp_path)
  with pytest.raises(checkpoints.CheckpointError, match='does not match the config'):
    train.train_and_evaluate(tiny(**{'model.hidden_size': 48}), workdir)
  assert not os.path.exists(os.path.join(workdir, 'damaged'))


@pytest.fixture(scope='module')
def resumed_past_damage(run, tmp_path_factory):
  """The run with checkpoints/60 and best/60 truncated, as after a crash mid-write,
  then trained again with the same command: (workdir, result, log lines)."""
  workdir = copy_run(run, tmp_path_factory.mktemp('damaged'))
  damage(workdir, 'checkpoints/60', 'truncated_array')
  damage(workdir, 'best/60', 'truncated_array')
  lines = []
  real_log = metric_writers.log
  metric_writers.log = lines.append
  try:
    result = train.train_and_evaluate(tiny(), workdir)
  finally:
    metric_writers.log = real_log
  return workdir, result, lines


def test_training_resumes_from_the_newest_intact_checkpoint(resumed_past_damage):
  workdir, result, lines = resumed_past_damage
  assert result['step'] == 60 and result['best_step'] == 60
  assert f'resumed from {workdir}/checkpoints/30' in lines
  warned = [x for x in lines if x.startswith('warning:')]
  assert any(f'{workdir}/checkpoints/60: damaged checkpoint' in x for x in warned)
  assert any(f'{workdir}/best/60: damaged checkpoint' in x for x in warned)
  # Moved aside, not deleted: nothing already written is lost.
  assert sorted(os.listdir(os.path.join(workdir, 'damaged'))) == ['best-60', 'checkpoints-60']
  assert loaded.load_model(workdir).step == 60


def test_cli_evaluate_falls_back_with_one_line_warnings(run, tmp_path):
  """--mode=evaluate on a damaged workdir, locked by a training run: evaluate only
  reads, so the lock does not stop it."""
  workdir = copy_run(run, tmp_path)
  damage(workdir, 'checkpoints/60', 'missing_manifest')
  damage(workdir, 'best/60', 'missing_manifest')
  with workdir_lib.Lock(workdir, 'train'):
    proc = run_main(f'--workdir={workdir}', '--mode=evaluate', '--config.sample.split=valid')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr and 'Event loop' not in proc.stderr
  warnings = [x for x in proc.stderr.splitlines() if x.startswith('warning:')]
  assert len(warnings) == 3, proc.stderr
  assert warnings[-1] == f'warning: using {workdir}/checkpoints/30 instead'
  assert json.loads(proc.stdout.splitlines()[-1])['step'] == 30


# 3. Disk full during a save.


def test_disk_full_names_the_path_and_the_space_needed(run, tmp_path, monkeypatch):
  workdir = copy_run(run, tmp_path)
  real = ocp.CheckpointManager.save

  def full_at_70(self, step, *args, **kw):
    if step == 70:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(self, step, *args, **kw)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', full_at_70)
  config = tiny(**{'train.num_steps': 80, 'train.eval_every': 0, 'train.checkpoint_every': 10})
  with pytest.raises(workdir_lib.WriteError) as info:
    train.train_and_evaluate(config, workdir)
  line = str(info.value)
  assert '\n' not in line
  assert line.startswith(f'{workdir}/checkpoints/70: no space left on device')
  assert re.search(r'needs about [\d.]+ KiB', line) and 'step 60 is intact' in line
  monkeypatch.setattr(ocp.CheckpointManager, 'save', real)
  assert loaded.load_model(workdir, best=False).step == 60


def can_unshare():
  """Root with a private mount namespace at hand (for tmpfs / read-only mounts)."""
  return (os.geteuid() == 0 and shutil.which('unshare') is not None and
          subprocess.run(['unshare', '-m', 'true'], capture_output=True).returncode == 0)


def test_cli_full_disk_exits_74_and_the_same_command_resumes(tmp_path):
  """The real thing: a 1 MiB tmpfs as the workdir (in a private mount namespace). The
  third checkpoint does not fit: one line, exit 74, the second intact; with more room,
  the same command resumes from it (and deletes the half-written one)."""
  if not can_unshare():
    pytest.skip('needs root and unshare to mount a small tmpfs')
  disk, w = tmp_path / 'disk', tmp_path / 'disk' / 'w'
  disk.mkdir()
  cmd = (f'{sys.executable} -m bach_jax.main --config=configs/lstm.py:test --workdir={w} '
         '--config.train.num_final_samples=0 --config.train.checkpoint_every=10 '
         '--config.train.eval_every=0 --config.train.num_steps=40')

  def attempt(i):
    return (f'{cmd} >{tmp_path}/{i}.out 2>{tmp_path}/{i}.err; echo $? >{tmp_path}/{i}.rc; '
            f'ls {w}/checkpoints >{tmp_path}/{i}.ls')

  script = (f'mount -t tmpfs -o size=1m tmpfs {disk} && {attempt(1)}; '
            f'mount -o remount,size=16m {disk} && {attempt(2)}')
  subprocess.run(['unshare', '-m', 'sh', '-c', script], cwd=REPO, check=True, timeout=600)
  read = lambda name: (tmp_path / name).read_text()
  full = subprocess.CompletedProcess([], int(read('1.rc')), read('1.out'), read('1.err'))
  assert full.returncode == 74, full.stderr[-3000:]
  line = one_error_line(full)
  match = re.match(rf'error: {w}/checkpoints/(\d+): no space left on device: a checkpoint '
                   r'needs about [\d.]+ KiB \(the train state\), [\d.]+ \w+ free; the '
                   r'checkpoint of step (\d+) is intact', line)
  assert match, line
  failed, intact = match.groups()
  assert intact in read('1.ls').split() and f'{failed}.orbax-checkpoint-tmp' in read('1.ls')
  assert read('2.rc').strip() == '0', read('2.err')[-3000:]
  assert f'resumed from {w}/checkpoints/{intact}' in read('2.out')
  assert 'orbax-checkpoint-tmp' not in read('2.ls') and '40' in read('2.ls').split()


def test_tensorstore_disk_full_is_recognized():
  """A full disk under Orbax is a ValueError from TensorStore, not an OSError."""
  e = ValueError('RESOURCE_EXHAUSTED: Error writing "x": Failed to write 26352 bytes to '
                 "file 8: No space left on device [os_error_code='28']")
  assert workdir_lib.is_disk_full(e)
  assert not workdir_lib.is_disk_full(ValueError('pytree structure error'))


# 4. A workdir that is a file, or read-only.


def test_workdir_that_is_a_file_is_one_line(tmp_path):
  path = tmp_path / 'file'
  path.write_text('not a directory')
  proc = run_main('--config=configs/lstm.py:test', f'--workdir={path}')
  assert proc.returncode == 2
  assert one_error_line(proc) == f'error: {path}: the workdir is a file, not a directory'
  assert path.read_text() == 'not a directory'


def readonly(path, cmd):
  """cmd run with `path` read-only: chmod for a normal user; for root (whom chmod does
  not stop), a read-only bind mount in a private mount namespace (unshare)."""
  if os.geteuid() != 0:
    subprocess.run(['chmod', '-R', 'a-w', path], check=True)
    return cmd
  if not can_unshare():
    pytest.skip('running as root without unshare: cannot make a read-only workdir')
  mount = f'mount --bind "{path}" "{path}" && mount -o remount,bind,ro "{path}" && exec "$@"'
  return ['unshare', '-m', 'sh', '-c', mount, 'sh', *cmd]


def test_read_only_workdir_trains_no_and_samples_elsewhere(run, tmp_path):
  workdir = copy_run(run, tmp_path)
  before = sorted(os.listdir(workdir))
  outdir = tmp_path / 'out'
  main = [sys.executable, '-m', 'bach_jax.main', f'--workdir={workdir}']
  script = ' ; '.join(
      f'{" ".join(cmd)} >{tmp_path}/{name}.out 2>{tmp_path}/{name}.err; '
      f'echo $? >{tmp_path}/{name}.rc'
      for name, cmd in [
          ('train', main),
          ('sample_here', main + ['--mode=sample', '--config.sample.num_pieces=1']),
          ('sample_elsewhere', main + ['--mode=sample', '--config.sample.num_pieces=1',
                                       '--config.sample.write_wav=False', f'--outdir={outdir}']),
      ])
  subprocess.run(readonly(workdir, ['sh', '-c', script]), cwd=REPO, check=True, timeout=300)
  subprocess.run(['chmod', '-R', 'u+w', workdir], check=True)

  def result(name):
    read = lambda ext: (tmp_path / f'{name}.{ext}').read_text()
    return subprocess.CompletedProcess([], int(read('rc')), read('out'), read('err'))

  train_run = result('train')
  assert train_run.returncode == 2
  assert one_error_line(train_run).startswith(f'error: {workdir}: the workdir is not writable')
  sample_here = result('sample_here')
  assert sample_here.returncode == 2
  assert '--outdir' in one_error_line(sample_here)
  elsewhere = result('sample_elsewhere')
  assert elsewhere.returncode == 0, elsewhere.stderr[-3000:]
  assert elsewhere.stdout.split() == [f'{outdir}/step60_0.mid']
  assert sorted(os.listdir(outdir)) == ['step60_0.mid', 'step60_0.png']
  assert sorted(os.listdir(workdir)) == before


# 5. Config mistakes.


@pytest.mark.parametrize('args, expected', [
    (['--config=configs/lstm.py:test', '--config.train.num_step=1'],
     'error: --config.train.num_step: no such config key; did you mean '
     'config.train.num_steps'),
    (['--config=configs/nosuch.py'],
     "error: --config=configs/nosuch.py: no such config file 'configs/nosuch.py'"),
    (['--config=configs/lstm.py:nosuch'],
     "error: flag --config=configs/lstm.py:nosuch: ValueError: configs/lstm.py: unknown "
     "variant 'nosuch' (known: test, jsb)"),
])
def test_config_mistakes_are_one_line(tmp_path, args, expected):
  proc = run_main(*args, f'--workdir={tmp_path}/w', timeout=120)
  assert proc.returncode == 2
  assert one_error_line(proc).startswith(expected)
  assert not os.path.exists(tmp_path / 'w')


# 6. Sampling that cannot fit.


def test_long_piece_gets_no_wav_and_a_note(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(pieces_lib, 'MAX_WAV_SECONDS', 10.0, raising=False)
  rng = np.random.default_rng(0)
  pieces = [pianoroll.PianoRoll(rng.random((steps, 88)) < 0.05, None, 4, {'file': 'x'})
            for steps in (48, 64)]  # 9 s and 12 s at 80 qpm.
  paths = pieces_lib.write_pieces(pieces, str(tmp_path), qpm=80.0)
  assert paths == [f'{tmp_path}/sample_0.mid', f'{tmp_path}/sample_1.mid']
  assert sorted(os.listdir(tmp_path)) == ['sample_0.mid', 'sample_0.png', 'sample_0.wav',
                                          'sample_1.mid', 'sample_1.png']
  notes = [x for x in capsys.readouterr().err.splitlines()  # (Not audio.py's renderer line.)
           if x.startswith('note:') and not x.startswith('note: audio:')]
  assert len(notes) == 1 and 'sample_1' in notes[0] and 'MAX_WAV_SECONDS' in notes[0]


def test_sample_that_cannot_fit_is_refused_before_it_starts(run, monkeypatch):
  model = loaded.load_model(run)
  monkeypatch.setattr(generate, '_available_memory', lambda: 1 << 20, raising=False)
  monkeypatch.setattr(generate.family_lib, 'jitted', None)  # Must not be reached.
  with pytest.raises(generate.SampleError, match='config.sample.num_steps=100000'):
    model.sample(num_pieces=4, num_steps=100_000)


def test_long_sampling_prints_size_estimate_and_rate(run, monkeypatch, capsys):
  monkeypatch.setattr(generate, 'LONG_SAMPLE_STEPS', 32, raising=False)
  monkeypatch.setattr(generate, 'TRIAL_STEPS', 8, raising=False)
  model = loaded.load_model(run)
  capsys.readouterr()
  model.sample(num_pieces=2, num_steps=40)
  notes = [x for x in capsys.readouterr().err.splitlines() if x.startswith('note:')]
  assert len(notes) == 3, notes
  assert notes[0].startswith('note: sampling 2 pieces x 40 steps')
  assert notes[1].startswith('note: estimate: about')
  assert re.match(r'note: sampled 2 x 40 steps in [\d.]+ s \([\d,]+ steps/s', notes[2])


# 7. Divergence.


def small_state(config):
  return lstm.init(config, jax.random.key(0), experiment.example_batch(config, None))


def test_nonfinite_valid_score_never_becomes_best(tmp_path):
  config = tiny()
  state = small_state(config)
  ckpt = checkpoints.Checkpointer(str(tmp_path / 'w'))
  try:
    ckpt.save(1, state, {}, {'step': 1}, score=float('inf'))
    ckpt.save(2, state, {}, {'step': 2}, score=float('nan'))
    ckpt.wait()
    assert ckpt.best.best_step() is None
    ckpt.save(3, state, {}, {'step': 3}, score=12.5)
    ckpt.save(4, state, {}, {'step': 4}, score=float('inf'))
    ckpt.wait()
    assert ckpt.best.best_step() == 3
  finally:
    ckpt.close()


def test_nonfinite_metrics_are_written_as_null(tmp_path):
  writer = metric_writers.MetricWriter(str(tmp_path), tensorboard=False)
  writer.write(1, {'a': float('nan'), 'b': float('inf'), 'c': 1.5, 'd': [1.0, float('-inf')]})
  writer.close()
  text = (tmp_path / 'metrics.jsonl').read_text()
  assert json.loads(text) == {'step': 1, 'a': None, 'b': None, 'c': 1.5, 'd': [1.0, None]}


def test_result_lines_are_strict_json():
  """What main prints (a run's result, evaluate's scores) goes through json_safe."""
  result = {'step': np.int64(3), 'last_valid_frame_nll': float('inf'),
            'sample_metrics': {'z': [np.float32('nan'), 0.5]}, 'ok': True, 'name': 'lstm'}
  text = json.dumps(metric_writers.json_safe(result), allow_nan=False)
  assert json.loads(text) == {'step': 3, 'last_valid_frame_nll': None,
                              'sample_metrics': {'z': [None, 0.5]}, 'ok': True, 'name': 'lstm'}
  main_source = open(os.path.join(REPO, 'bach_jax', 'main.py')).read()
  assert main_source.count('print(json.dumps(') == main_source.count(
      'print(json.dumps(metric_writers.json_safe(') == 3


def poison(monkeypatch, loss_at=None, params_at=None):
  """lstm.train_step with a NaN loss at step loss_at only (params untouched) and NaN
  params (and loss) from step params_at on."""
  real_step = lstm.train_step

  def poisoned(config, state, batch, rng):
    state, metrics = real_step(config, state, batch, rng)
    bad_loss = state.step == (loss_at or -1)
    bad_params = state.step >= (params_at or 1 << 30)
    params = jax.tree.map(lambda p: jnp.where(bad_params, jnp.nan, p), state.params)
    loss = jnp.where(bad_loss | bad_params, jnp.nan, metrics['loss'])
    return state.replace(params=params), {**metrics, 'loss': loss}

  monkeypatch.setattr(lstm, 'train_step', poisoned)


def test_divergence_before_any_checkpoint_says_so(tmp_path, monkeypatch):
  poison(monkeypatch, params_at=3)
  config = tiny(**{'train.num_steps': 10, 'train.log_every': 5, 'train.eval_every': 0,
                   'train.checkpoint_every': 100})
  with pytest.raises(train.NonFiniteLossError) as info:
    train.train_and_evaluate(config, str(tmp_path / 'w'))
  message = str(info.value)
  assert 'at step 3' in message and 'None' not in message
  assert 'No checkpoint was written yet' in message


def test_halt_on_nan_false_goes_on_while_the_params_are_finite(tmp_path, monkeypatch):
  poison(monkeypatch, loss_at=3, params_at=8)
  config = tiny(**{'train.num_steps': 10, 'train.log_every': 5, 'train.eval_every': 0,
                   'train.checkpoint_every': 100, 'train.halt_on_nan': False})
  workdir = str(tmp_path / 'w')
  with pytest.raises(train.NonFiniteLossError, match='at step 8.*halt_on_nan=False'):
    train.train_and_evaluate(config, workdir)
  losses = {r['step']: r['train/loss'] for r in metric_writers.read_metrics(workdir)
            if 'train/loss' in r}
  assert sorted(losses) == list(range(1, 8))  # Step 3 went on, as null.
  assert losses[2] is not None and losses[3] is None and losses[4] is not None


# 8. Two processes on one workdir.


def test_lock_names_a_live_holder_and_takes_over_a_stale_one(tmp_path):
  workdir = str(tmp_path)
  with workdir_lib.Lock(workdir, 'train'):
    with pytest.raises(workdir_lib.WorkdirLocked) as info:
      workdir_lib.Lock(workdir, 'sample').acquire()
    line = str(info.value)
    assert f'pid {os.getpid()} on host {socket.gethostname()} (train' in line
    assert f'delete {workdir}/lock' in line and '\n' not in line
  assert not os.path.exists(tmp_path / 'lock')
  gone = subprocess.Popen(['true'])
  gone.wait()
  stale = workdir_lib.Lock(workdir)._info()  # pylint: disable=protected-access
  stale.update(pid=gone.pid, start_ticks=None)
  (tmp_path / 'lock').write_text(json.dumps(stale))
  warnings = []
  with workdir_lib.Lock(workdir, 'train', warn=warnings.append):
    assert json.loads((tmp_path / 'lock').read_text())['pid'] == os.getpid()
  assert len(warnings) == 1 and 'stale lock' in warnings[0] and f'pid {gone.pid}' in warnings[0]


def test_lock_of_another_host_is_stale_only_without_heartbeat(tmp_path):
  info = {'pid': 1, 'host': 'elsewhere', 'boot_id': 'x', 'heartbeat': time.time()}
  assert not workdir_lib.holder_is_gone(info)
  info['heartbeat'] -= workdir_lib.STALE_SECONDS + 1
  assert workdir_lib.holder_is_gone(info)


def test_second_training_run_refuses_at_once(tmp_path):
  workdir = str(tmp_path / 'w')
  os.makedirs(workdir)
  with workdir_lib.Lock(workdir, 'train'):
    t0 = time.perf_counter()
    with pytest.raises(workdir_lib.WorkdirLocked, match=f'in use by pid {os.getpid()}'):
      train.train_and_evaluate(tiny(), workdir)
    assert time.perf_counter() - t0 < 10  # No corpus, no compilation.
  assert os.listdir(workdir) == []  # Nothing written (the holder's lock is gone too).


def test_only_process_zero_takes_the_lock(tmp_path, monkeypatch):
  """Every process of one multi-host run writes the same workdir: process 1 neither
  takes nor checks the lock (here it gets as far as the config check)."""
  workdir = str(tmp_path)
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  with workdir_lib.Lock(workdir, 'train'):
    with pytest.raises(config_base.ConfigError, match='config.data.window_steps'):
      train.train_and_evaluate(tiny(**{'data.window_steps': 1}), workdir)


def test_sampling_into_a_locked_workdir_is_refused(run):
  with workdir_lib.Lock(run, 'train'):
    proc = run_main(f'--workdir={run}', '--mode=sample', timeout=120)
  assert proc.returncode == 73
  line = one_error_line(proc)
  assert f'in use by pid {os.getpid()}' in line and '--outdir' in line


# 9. Exit codes and metrics after a re-run.


def test_sigterm_exits_75_after_saving(run, tmp_path):
  workdir = copy_run(run, tmp_path)
  proc = subprocess.Popen(
      [sys.executable, '-m', 'bach_jax.main', f'--workdir={workdir}',
       '--config.train.num_steps=100000', '--config.train.eval_every=0',
       '--config.train.log_every=5'],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  out = []
  for line in proc.stdout:
    out.append(line)
    if line.startswith('step '):  # Training: the signal handler is installed.
      proc.send_signal(signal.SIGTERM)
      break
  rest, err = proc.communicate(timeout=120)
  out = ''.join(out) + rest
  assert proc.returncode == 75, err[-3000:]
  assert 'Traceback' not in err
  stopped = json.loads(out.splitlines()[-1])['interrupted_at']
  assert f'SIGTERM: saved a checkpoint at step {stopped}; run the same command again' in out
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', str(stopped)))


def test_rerun_after_a_kill_keeps_one_row_per_step(run, tmp_path):
  """A run killed (SIGKILL) after writing the metrics of steps 31-60 but before saving
  step 60, re-run: those rows are superseded by the re-run's, not duplicated."""
  workdir = copy_run(run, tmp_path)
  for where in ('checkpoints', 'best'):
    shutil.rmtree(os.path.join(workdir, where, '60'))
  train.train_and_evaluate(tiny(**{'train.num_steps': 40}), workdir)
  rows = [json.loads(x) for x in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert [r['step'] for r in rows if 'train/loss' in r] == list(range(1, 41))
  old = [json.loads(x) for x in open(os.path.join(workdir, 'metrics.superseded.jsonl'))]
  assert [r['step'] for r in old if 'train/loss' in r] == list(range(31, 61))


def test_read_metrics_takes_the_last_value_per_step(tmp_path):
  rows = [{'step': 1, 'a': 1.0}, {'step': 2, 'a': 2.0, 'b': 5.0}, {'step': 2, 'a': 3.0}]
  text = ''.join(json.dumps(r) + '\n' for r in rows) + '{"step": 3, "a"'  # Torn by a kill.
  (tmp_path / 'metrics.jsonl').write_text(text)
  assert metric_writers.read_metrics(str(tmp_path)) == [
      {'step': 1, 'a': 1.0}, {'step': 2, 'b': 5.0}, {'step': 2, 'a': 3.0}]


# Task 2: every file of a run goes through etils epath.


MODULES = ('main', 'train', 'checkpoints', 'generate', 'metric_writers', 'plotting', 'workdir')


def test_no_os_path_or_builtin_open_on_run_files():
  for name in MODULES:
    source = open(os.path.join(REPO, 'bach_jax', f'{name}.py')).read()
    for pattern in (r'os\.path\.join', r'os\.makedirs', r'os\.path\.exists',
                    r'(?<![\w.])open\((?!f?\'/proc)'):
      assert not re.search(pattern, source), (name, pattern)


def test_run_files_accept_epath(tmp_path):
  workdir = epath.Path(tmp_path) / 'w'
  config = tiny()
  checkpoints.write_config(workdir, config)
  assert checkpoints.read_config_dict(workdir)['model']['name'] == 'lstm'
  writer = metric_writers.MetricWriter(workdir)
  writer.write(1, {'x': 1.0})
  writer.write(2, {'x': 2.0})
  writer.close()
  assert metric_writers.drop_rows_after(workdir, 1) == 1
  assert metric_writers.read_metrics(workdir) == [{'step': 1, 'x': 1.0}]
  assert list((workdir / 'tensorboard').iterdir())
  plotting.plot_curves(workdir / 'curves.png', metric_writers.read_metrics(workdir), ['x'])
  piece = pianoroll.PianoRoll(np.eye(88, dtype=bool)[:16], None, 4, {'file': 'x'})
  paths = pieces_lib.write_pieces([piece], workdir / 'samples')
  assert paths == [str(workdir / 'samples' / 'sample_0.mid')]
  for name in ('curves.png', 'samples/sample_0.png', 'samples/sample_0.wav'):
    assert os.path.getsize(workdir / name) > 100, name
  assert pianoroll.from_midi(paths[0], steps_per_quarter=4).roll.any()
  with workdir_lib.Lock(workdir, 'train') as lock:
    assert lock.path == workdir / 'lock' and (workdir / 'lock').exists()


def test_object_store_metrics_are_rewritten_not_appended(tmp_path, monkeypatch):
  """gs:// cannot append: there metrics.jsonl is rewritten whole at each flush (the
  same code, run here on a local path taken for a remote one)."""
  (tmp_path / 'metrics.jsonl').write_text('{"step": 1, "x": 1.0}\n')
  monkeypatch.setattr(workdir_lib, 'is_local', lambda path: False)
  writer = metric_writers.MetricWriter(epath.Path(tmp_path), tensorboard=False)
  writer.write(2, {'x': 2.0})
  writer.flush()
  writer.write(3, {'x': 3.0})
  writer.close()
  assert [r['step'] for r in metric_writers.read_metrics(tmp_path)] == [1, 2, 3]


def test_a_piece_is_named_by_split_and_index_and_a_missing_file_says_how(tmp_path):
  import types  # pylint: disable=g-import-not-at-top
  pieces = {s: [pianoroll.PianoRoll(np.eye(88, dtype=bool)[[i] * 8], None, 4, {'n': s})
                for i in range(2)] for s in ('train', 'valid', 'test')}
  corpus = types.SimpleNamespace(splits=pieces)
  assert pieces_lib.load_piece('valid:1', 4, corpus).meta == {'n': 'valid'}
  assert pieces_lib.load_piece('split:0', 4, corpus, split='train').meta == {'n': 'train'}
  with pytest.raises(generate.SampleError, match=r"'split:5'.*'test' split \(2 pieces\)"):
    pieces_lib.load_piece('test:5', 4, corpus)
  with pytest.raises(generate.SampleError, match=r'nope.mid: MIDI file not found.*test:INDEX'):
    pieces_lib.load_piece(str(tmp_path / 'nope.mid'), 4, corpus)
