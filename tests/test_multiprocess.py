"""Two JAX processes on this machine train like one process with the same global batch.

The processes start from the documented environment only (JAX_COORDINATOR_ADDRESS
on 127.0.0.1 and a free port, JAX_NUM_PROCESSES=2, JAX_PROCESS_ID), one CPU device
each, gloo collectives. One run of 30 steps in this process is the reference; the
same 30 steps are then trained as 2 processes (steps 1-10), 2 processes resuming
from their own checkpoint (11-20) and 1 process resuming from the 2-process
checkpoint (21-30, in this process). Every step's loss and every valid NLL agree.

The corpus is the chorales in the session's cache (tests/conftest.py: $BACH_JAX_CACHE),
which the subprocesses share; the reference run prepares it if needed.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from bach_jax import finetune
from bach_jax import loaded
from bach_jax import metric_writers
from bach_jax import parallel
from bach_jax import train
from train_helpers import REPO, load_config

# A constant rate after the warmup: the schedule does not depend on num_steps, so a run
# continued with a larger num_steps trains exactly like one run of that length.
OVERRIDES = {'train.lr_schedule': 'constant', 'train.eval_every': 10,
             'train.checkpoint_every': 10, 'train.log_every': 5, 'train.num_final_samples': 0}
RTOL = 1e-5  # Measured: 2 processes vs 1 agree to ~1e-7 relative (another reduction order).

# Runs bach_jax.main as __main__ and records, through the `open` audit event, every file
# under the workdir this process opens for writing (Orbax's array data, written by
# tensorstore in C++, are not seen; its Python-side files are, and are left out).
LAUNCHER = r'''
import atexit, json, os, runpy, sys
workdir, record = os.path.realpath(sys.argv[1]), sys.argv[2]
sys.argv = [sys.argv[0]] + sys.argv[3:]
written = set()

def hook(event, args):
  if event != 'open' or isinstance(args[0], int):
    return
  mode, flags = args[1], args[2]
  writing = (any(c in mode for c in 'wax+') if mode else
             bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
  path = os.path.realpath(os.fsdecode(args[0]))
  if writing and path.startswith(workdir + os.sep):
    rel = os.path.relpath(path, workdir)
    if rel.split(os.sep)[0] not in ('checkpoints', 'best'):
      written.add(rel.split(os.sep)[0])

sys.addaudithook(hook)
atexit.register(lambda: json.dump(sorted(written), open(record, 'w')))
runpy.run_module('bach_jax.main', run_name='__main__', alter_sys=True)
'''


def _flags(num_steps, **extra):
  values = {**OVERRIDES, 'train.num_steps': num_steps, **extra}
  return ['--config=configs/lstm.py:test'] + [f'--config.{k}={v}' for k, v in values.items()]


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _listening(port):
  """Local addresses (hex, as in /proc/net/tcp*) listening on port."""
  found = []
  for table in ('/proc/net/tcp', '/proc/net/tcp6'):
    try:
      with open(table) as f:
        rows = f.read().splitlines()[1:]
    except OSError:
      continue
    for row in rows:
      local, state = row.split()[1], row.split()[3]
      if state == '0A' and int(local.rsplit(':', 1)[1], 16) == port:
        found.append(local.rsplit(':', 1)[0])
  return found


def run_two_processes(tmp_path, workdir, flags, name, signal_after=None, returncode=0):
  """Runs bach_jax.main as processes 0 and 1 -> (stdouts, files each wrote, bound addrs).
  signal_after: a text; once process 0 has printed it, both get SIGTERM (a preempted
  slice). returncode: what both must exit with."""
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
             JAX_NUM_PROCESSES='2', PYTHONPATH=REPO)
  # One CPU device per process (no device-count flag); conftest's other flags kept.
  env['XLA_FLAGS'] = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                              if 'device_count' not in f)
  procs, logs = [], []
  try:
    for i in range(2):
      log = open(tmp_path / f'{name}_{i}.log', 'w+')
      logs.append(log)
      procs.append(subprocess.Popen(
          [sys.executable, '-c', LAUNCHER, workdir, str(tmp_path / f'{name}_{i}.json'),
           f'--workdir={workdir}', *flags],
          # Each process its own XLA cache: both compile the same program at once, and
          # one must not read the other's half-written entry (CI: an abort, -6).
          env=dict(env, JAX_PROCESS_ID=str(i),
                   JAX_COMPILATION_CACHE_DIR=str(tmp_path / f'xla_cache_{i}')),
          cwd=REPO, stdout=log,
          stderr=subprocess.STDOUT))
    bound = []
    deadline = time.time() + 120
    while not bound and time.time() < deadline and procs[0].poll() is None:
      bound = _listening(port)
      time.sleep(0.05)
    if signal_after is not None:
      deadline = time.time() + 300
      while signal_after not in (tmp_path / f'{name}_0.log').read_text():
        assert time.time() < deadline and procs[0].poll() is None, f'no {signal_after!r}'
        time.sleep(0.05)
      for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
      p.wait(timeout=400)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  outs = []
  for i, (p, log) in enumerate(zip(procs, logs)):
    log.seek(0)
    outs.append(log.read())
    log.close()
    assert p.returncode == returncode, f'process {i} exited {p.returncode}:\n{outs[-1][-3000:]}'
  written = [json.loads((tmp_path / f'{name}_{i}.json').read_text()) for i in range(2)]
  return outs, written, bound


def train_losses(workdir):
  return {r['step']: r['train/loss'] for r in metric_writers.read_metrics(workdir)
          if 'train/loss' in r}


def valid_nlls(workdir):
  return {r['step']: r['valid/frame_nll'] for r in metric_writers.read_metrics(workdir)
          if 'valid/frame_nll' in r}


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """One process, 30 steps, in this process (it also prepares the corpus cache)."""
  workdir = str(tmp_path_factory.mktemp('one_process'))
  result = train.train_and_evaluate(load_config('lstm', 'test', **OVERRIDES,
                                                **{'train.num_steps': 30}), workdir)
  return workdir, result


def test_two_processes_train_resume_and_hand_over_to_one(reference, tmp_path):
  ref_dir, ref_result = reference
  workdir = str(tmp_path / 'run')

  # Steps 1-10: two processes, 16 rows each step as 2 x 8.
  outs, written, bound = run_two_processes(
      tmp_path, workdir, _flags(10, **{'train.num_final_samples': 1}), 'first')
  assert '2 devices (2 processes)' in outs[0], outs[0][-2000:]
  assert bound and all(a in ('0100007F', '0000000000000000FFFF00000100007F') for a in bound), (
      f'coordinator listens on {bound}, not only on 127.0.0.1')
  # Process 0 writes config, metrics, TensorBoard, curves and samples; process 1 nothing.
  assert {'metrics.jsonl', 'samples', 'tensorboard', 'curves.png'} <= set(written[0]), written[0]
  assert any(name.startswith('config.json') for name in written[0]), written[0]
  assert written[1] == [], written[1]
  assert sorted(os.listdir(os.path.join(workdir, 'samples'))) == [
      'sample_0.mid', 'sample_0.png', 'sample_0.wav']
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints'))) == [10]

  # Steps 11-20: two processes again, resuming from the checkpoint both wrote.
  outs, written, _ = run_two_processes(tmp_path, workdir, _flags(20), 'second')
  assert f'resumed from {workdir}/checkpoints/10' in outs[0]
  assert written[1] == [], written[1]
  # A model the two processes saved loads and samples in one process (a slice's run on
  # a laptop), with no warning that it is damaged.
  warnings = []
  model = loaded.load_model(workdir, best=False, warn=warnings.append)
  assert model.step == 20 and not warnings, warnings
  assert model.sample(num_pieces=1, num_steps=8)[0].roll.shape == (8, 88)

  # Steps 21-30: one process (this one) resumes from the 2-process checkpoint.
  result = train.train_and_evaluate(
      load_config('lstm', 'test', **OVERRIDES, **{'train.num_steps': 30}), workdir)

  ref, got = train_losses(ref_dir), train_losses(workdir)
  assert sorted(got) == list(range(1, 31)), sorted(got)  # Each step once: one writer.
  np.testing.assert_allclose([got[s] for s in range(1, 31)], [ref[s] for s in range(1, 31)],
                             rtol=RTOL)
  ref_nll, got_nll = valid_nlls(ref_dir), valid_nlls(workdir)
  assert sorted(got_nll) == [10, 20, 30]
  np.testing.assert_allclose([got_nll[s] for s in (10, 20, 30)],
                             [ref_nll[s] for s in (10, 20, 30)], rtol=RTOL)
  np.testing.assert_allclose(result['best_valid_frame_nll'], ref_result['best_valid_frame_nll'],
                             rtol=RTOL)
  # The checkpoint the two processes wrote at step 20 holds the reference's params.
  _, two = finetune.load_params(workdir, step=20)
  _, one = finetune.load_params(ref_dir, step=20)
  for a, b in zip(jax.tree.leaves(two), jax.tree.leaves(one)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  worst = max(abs(got[s] / ref[s] - 1) for s in ref)
  print(f'losses 1..30: max relative difference {worst:.2e}; valid NLL '
        f'{[round(got_nll[s], 6) for s in (10, 20, 30)]} vs '
        f'{[round(ref_nll[s], 6) for s in (10, 20, 30)]}')


def test_sigterm_stops_both_processes_at_one_step_with_one_checkpoint(tmp_path):
  """A preempted slice: SIGTERM to every process; JAX's preemption sync makes them stop
  at the same step, save it together and exit 75 (main.EXIT_INTERRUPTED)."""
  workdir = str(tmp_path / 'run')
  flags = _flags(400, **{'train.checkpoint_every': 400, 'train.eval_every': 400})
  outs, _, _ = run_two_processes(tmp_path, workdir, flags, 'preempted',
                                 signal_after='step 10/', returncode=75)
  steps = os.listdir(os.path.join(workdir, 'checkpoints'))
  assert len(steps) == 1 and 10 <= int(steps[0]) < 400, steps
  assert f'preemption: saved a checkpoint at step {steps[0]}' in outs[0], outs[0][-2000:]
  for out in outs:
    assert f'{{"interrupted_at": {steps[0]}}}' in out, out[-2000:]


@pytest.mark.parametrize('env, match', [
    ({'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1', 'JAX_NUM_PROCESSES': 'two',
      'JAX_PROCESS_ID': '0'}, "JAX_NUM_PROCESSES='two'"),
    ({'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1', 'JAX_NUM_PROCESSES': '2',
      'JAX_PROCESS_ID': '2'}, 'JAX_PROCESS_ID'),
    ({'JAX_COORDINATOR_ADDRESS': '127.0.0.1', 'JAX_NUM_PROCESSES': '2',
      'JAX_PROCESS_ID': '0'}, 'HOST:PORT'),
    ({'BACH_JAX_DISTRIBUTED': 'yes'}, 'BACH_JAX_DISTRIBUTED'),
])
def test_bad_environment_names_the_variable(env, match):
  with pytest.raises(parallel.DistributedError, match=match):
    parallel.distributed_args(env)


def test_environment_to_initialize_arguments():
  env = {'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1234', 'JAX_NUM_PROCESSES': '2',
         'JAX_PROCESS_ID': '1'}
  assert parallel.distributed_args(env) == {
      'coordinator_address': '127.0.0.1:1234', 'num_processes': 2, 'process_id': 1,
      'coordinator_bind_address': '127.0.0.1:1234'}
  # A host name: jax's default bind (every interface), unless told where.
  assert 'coordinator_bind_address' not in parallel.distributed_args(
      dict(env, JAX_COORDINATOR_ADDRESS='node0:1234'))
  assert parallel.distributed_args(dict(env, JAX_COORDINATOR_BIND_ADDRESS='0.0.0.0:1234'))[
      'coordinator_bind_address'] == '0.0.0.0:1234'
  assert parallel.distributed_args(dict(env, JAX_COORDINATOR_ADDRESS='[::1]:9'))[
      'coordinator_bind_address'] == '[::1]:9'
  # Nothing set: one process. Cloud TPU: everything detected by jax.
  assert parallel.distributed_args({}) is None
  assert parallel.distributed_args(dict(env, BACH_JAX_DISTRIBUTED='0')) is None
  assert parallel.distributed_args({'BACH_JAX_DISTRIBUTED': '1'}) == {}
  assert parallel.distributed_args({'TPU_WORKER_HOSTNAMES': 'a,b'}) == {}
  assert parallel.distributed_args({'TPU_WORKER_HOSTNAMES': 'a'}) is None


def test_cli_incomplete_environment_is_one_line():
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_NUM_PROCESSES='2', JAX_PROCESS_ID='1')
  env.pop('JAX_COORDINATOR_ADDRESS', None)
  proc = subprocess.run([sys.executable, '-m', 'bach_jax.main', '--config=configs/lstm.py:test',
                         '--workdir=/nonexistent/never_written'], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert lines[-1].startswith('error: ') and 'JAX_COORDINATOR_ADDRESS' in lines[-1], lines
  assert 'Traceback' not in proc.stderr
