"""The notebook API checks its arguments, long samples cost what they should, a stopped
corpus build leaves nothing behind, Ctrl-C is heard, resumed means are the same, and
plain command-line mistakes are one line and exit 2 (issue 34)."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import bach_jax
from bach_jax import generate
from bach_jax import metric_writers
from bach_jax import train
from bach_jax.data import corpora
from bach_jax.models import lstm_attn
from train_helpers import REPO, load_config, run_main, sigterm_at_batch, write_midi_folder


@pytest.fixture(scope='module')
def model(trained_run):
  return bach_jax.load_model(trained_run('lstm_attn')[0])


@pytest.mark.parametrize('kwargs, named', [
    ({'num_pieces': 0}, 'num_pieces=0'), ({'num_pieces': -1}, 'num_pieces=-1'),
    ({'num_steps': 0}, 'num_steps=0'), ({'num_steps': -5}, 'num_steps=-5'),
    ({'temperature': -1}, 'temperature=-1'), ({'top_p': 2.0}, 'top_p=2.0'),
    ({'top_p': 0}, 'top_p=0'), ({'top_k': -1}, 'top_k=-1'), ({'num_steps': 2.5}, 'num_steps'),
    ({'melody': [200, 5, -3]}, 'melody: 200 at frame 0'), ({'melody': []}, 'melody'),
    ({'primer': 42}, 'primer'),
])
def test_bad_sample_arguments_are_refused_before_compiling(model, monkeypatch, kwargs, named):
  monkeypatch.setattr(generate.family_lib, 'jitted', None)  # Must not be reached.
  with pytest.raises(generate.SampleError, match=named.replace('[', r'\[')):
    model.sample(**kwargs)


@pytest.mark.parametrize('pieces, named', [([], 'pieces: an empty list'),
                                           ([None], r'pieces\[0\]: a NoneType')])
def test_bad_pieces_are_refused(model, pieces, named):
  with pytest.raises(generate.SampleError, match=named):
    model.score(pieces)


def test_temperature_zero_is_greedy(model):
  a = model.sample(num_pieces=2, num_steps=12, temperature=0, seed=1)
  b = model.sample(num_pieces=2, num_steps=12, temperature=0, seed=2)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x.voices, y.voices)


def test_windowed_attention_samples_from_a_ring_of_the_window():
  """attn_window W: the sampler's cache holds W steps, and scoring a piece step by step
  through the ring equals teacher forcing over pieces longer than W."""
  config = load_config('lstm_attn', 'test', **{'model.num_voices': 4, 'model.attn_window': 4,
                                                'model.dropout_rate': 0.0})
  rng = np.random.default_rng(0)
  voices = rng.integers(55, 72, (2, 21, 4)).astype(np.int32)
  voices[:, 0] = -1
  roll = np.zeros((2, 21, 88), bool)
  for b, t, v in np.ndindex(2, 21, 4):
    if voices[b, t, v] >= 0:
      roll[b, t, voices[b, t, v] - 21] = True
  batch = {'roll': roll, 'voices': voices}
  state = lstm_attn.init(config, jax.random.key(0), batch)
  info = lstm_attn._info(config, params=state.params)  # pylint: disable=protected-access
  cache = lstm_attn._start_state(config, state.params, info, 2, 20)[1]  # pylint: disable=protected-access
  assert cache[0].shape[1] == 4
  stepwise = lstm_attn.score_stepwise(config, state.params, batch)
  forced = lstm_attn.frame_nll(config, state.params, batch)
  np.testing.assert_allclose(stepwise, forced, rtol=2e-5, atol=2e-5)


def _start_build(tmp_path, *extra):
  """`--mode=prepare` on an empty cache in a session of its own -> (process, stderr path)."""
  err = open(tmp_path / 'stderr', 'w')
  proc = subprocess.Popen([sys.executable, '-m', 'bach_jax.main', '--mode=prepare',
                           '--config=configs/lstm.py:test', '--config.data.workers=2',
                           f'--config.data.cache_dir={tmp_path}/cache', *extra], cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
  deadline = time.time() + 120
  while 'bach chorales:' not in open(tmp_path / 'stderr').read():
    assert proc.poll() is None and time.time() < deadline, open(tmp_path / 'stderr').read()
    time.sleep(0.2)
  time.sleep(3)  # The workers are preparing files.
  return proc


def _group_alive(pgid):
  try:
    os.killpg(pgid, 0)
    return True
  except ProcessLookupError:
    return False


def test_killed_build_leaves_no_process_behind(tmp_path):
  proc = _start_build(tmp_path)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  deadline = time.time() + 10
  while _group_alive(proc.pid) and time.time() < deadline:
    time.sleep(0.2)
  alive = _group_alive(proc.pid)
  if alive:
    os.killpg(proc.pid, signal.SIGKILL)
  assert not alive, 'workers of a killed build still run'


def test_ctrl_c_stops_a_build_at_once(tmp_path):
  proc = _start_build(tmp_path)
  t0 = time.time()
  os.killpg(proc.pid, signal.SIGINT)  # What a terminal sends.
  code = proc.wait(timeout=60)
  assert code == 130 and time.time() - t0 < 5, (code, time.time() - t0)
  err = open(tmp_path / 'stderr').read()
  assert 'Traceback' not in err and err.strip().splitlines()[-1].startswith('error: interrupted')
  assert not glob.glob(f'{tmp_path}/cache/*/index.npz')  # No corpus a later run would trust.
  deadline = time.time() + 10
  while _group_alive(proc.pid) and time.time() < deadline:
    time.sleep(0.2)
  assert not _group_alive(proc.pid)


def test_unwritable_cache_folder_fails_before_the_build(tmp_path):
  afile = tmp_path / 'afile'
  afile.write_text('x')
  t0 = time.time()
  proc = run_main('--mode=prepare', '--config=configs/lstm.py:test',
                  f'--config.data.cache_dir={afile}/cache')
  assert proc.returncode == 2 and 'cannot write the corpus cache' in proc.stderr
  assert 'bach chorales:' not in proc.stderr and time.time() - t0 < 60


def test_a_killed_cache_write_leaves_nothing_the_next_build_keeps(tmp_path):
  folder = write_midi_folder(str(tmp_path / 'midi'), [f'p{i}.mid' for i in range(6)], low=40)
  data = {'source': f'midi_dir:{folder}', 'cache_dir': str(tmp_path / 'cache'), 'workers': 1}
  corpus = corpora.load_corpus(data, progress=False)
  index = os.path.join(corpus.cache_path, 'index.npz')
  os.remove(index)
  leftovers = [f'{index}.4242.dead.tmp',  # What a kill during the writes leaves.
               os.path.join(corpus.cache_path, 'shard-00000.roll.npy.4242.dead.tmp')]
  for leftover in leftovers:
    open(leftover, 'w').close()
  again = corpora.load_corpus(data, progress=False)
  assert not again.cache_hit and os.path.exists(index)
  assert not any(os.path.exists(leftover) for leftover in leftovers)


def test_ctrl_c_while_pieces_are_written_stops_the_command(trained_run, tmp_path):
  out = tmp_path / 'out'
  proc = subprocess.Popen(
      [sys.executable, '-m', 'bach_jax.main', f'--workdir={trained_run("lstm")[0]}',
       '--mode=sample', f'--outdir={out}', '--config.sample.num_pieces=300',
       '--config.sample.num_steps=64'], cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, start_new_session=True)
  deadline = time.time() + 300
  while not glob.glob(f'{out}/*.mid'):
    assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
    time.sleep(0.1)
  t0 = time.time()
  os.killpg(proc.pid, signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-2000:]
  assert time.time() - t0 < 10 and 'Traceback' not in err
  assert len(glob.glob(f'{out}/*.mid')) < 300


def _means(workdir):
  return [r for r in metric_writers.read_metrics(workdir) if any('_mean' in k for k in r)]


def test_a_stop_between_log_steps_keeps_the_means(tmp_path, cache_dir, monkeypatch):
  overrides = {'data.cache_dir': cache_dir, 'train.num_steps': 20, 'train.log_every': 10,
               'train.eval_every': 20, 'train.checkpoint_every': 20,
               'train.num_final_samples': 0}
  full = str(tmp_path / 'full')
  train.train_and_evaluate(load_config('lstm', 'test', **overrides), full)
  stopped = str(tmp_path / 'stopped')
  restore = sigterm_at_batch(monkeypatch, 15)  # Between log steps 10 and 20.
  assert train.train_and_evaluate(load_config('lstm', 'test', **overrides), stopped) == {
      'interrupted_at': 15}
  restore()
  train.train_and_evaluate(load_config('lstm', 'test', **overrides), stopped)
  assert [r['step'] for r in _means(stopped)] == [10, 20]
  assert _means(stopped) == _means(full)


def test_a_rerun_after_a_stop_in_the_final_phase(tmp_path, cache_dir, monkeypatch):
  overrides = {'data.cache_dir': cache_dir, 'train.num_steps': 10, 'train.log_every': 5,
               'train.eval_every': 10, 'train.checkpoint_every': 10,
               'train.num_final_samples': 0}
  workdir = str(tmp_path / 'w')
  real = train._Run._score_best  # pylint: disable=protected-access

  def score_then_stop(self):
    out = real(self)
    os.kill(os.getpid(), signal.SIGTERM)  # After the best rows, before the end.
    return out

  monkeypatch.setattr(train._Run, '_score_best', score_then_stop)  # pylint: disable=protected-access
  assert train.train_and_evaluate(load_config('lstm', 'test', **overrides), workdir) == {
      'interrupted_at': 10}
  monkeypatch.setattr(train._Run, '_score_best', real)  # pylint: disable=protected-access
  result = train.train_and_evaluate(load_config('lstm', 'test', **overrides), workdir)
  assert result['last_valid_frame_nll'] is not None
  assert result['last_valid_frame_nll'] == result['best_valid_frame_nll']
  lines = [json.loads(x) for x in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert sum('best/best_valid_frame_nll' in r for r in lines) == 1


@pytest.mark.parametrize('args', [
    ['--mode=sample'],  # No --workdir.
    ['--workdir={tmp}/new'],  # A new workdir without --config.
    ['--mode=prepare'],  # prepare without --config.
    ['--config=configs/lstm.py:test', '--workdir={tmp}/w', 'extra'],  # A positional argument.
])
def test_plain_command_line_mistakes_are_one_line(tmp_path, args):
  proc = run_main(*[a.format(tmp=tmp_path) for a in args])
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr[-2000:]


def test_report_without_out_is_one_line(trained_run):
  proc = subprocess.run([sys.executable, '-m', 'bach_jax.compare', trained_run('lstm')[0]],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == ["error: --out=DIR is required (the report's folder)"]
