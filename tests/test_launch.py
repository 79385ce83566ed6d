"""launch/*.sh under DRY_RUN=1: the gcloud commands they would run, the keep-alive decisions,
user errors, bash -n and shellcheck; the remote shell commands run here against a stand-in."""

import os
import shlex
import shutil
import subprocess
import time

import pytest

from train_helpers import REPO

LAUNCH = os.path.join(REPO, 'launch')
SCRIPTS = ('common.sh', 'create.sh', 'setup.sh', 'run.sh', 'keep_alive.sh')


def launch(script, *args, **env):
  """Runs launch/SCRIPT with DRY_RUN=1 -> (exit status, [argv of each command], stdout, stderr)."""
  base = {'PATH': os.environ['PATH'], 'HOME': os.environ.get('HOME', '/tmp'),
          'BUCKET': 'gs://test-bucket', 'DRY_RUN': '1', 'POLL_SECONDS': '7'}
  proc = subprocess.run(['bash', os.path.join(LAUNCH, script), *args],
                        env={**base, **{k: str(v) for k, v in env.items()}},
                        capture_output=True, text=True, timeout=60)
  commands = [shlex.split(line[len('DRY_RUN: '):]) for line in proc.stdout.splitlines()
              if line.startswith('DRY_RUN: ')]
  return proc.returncode, commands, proc.stdout, proc.stderr


def flag(argv, name):
  """The value of --name=VALUE in argv (None if absent)."""
  values = [a.split('=', 1)[1] for a in argv if a.startswith(f'--{name}=')]
  return values[-1] if values else None


def kind(argv):
  """A short name of a command: 'tpu-vm create', 'queued-resources delete', 'ssh all', ..."""
  if argv[0] == 'gcloud' and argv[3] == 'tpu-vm' and argv[4] == 'ssh':
    return f'ssh {flag(argv, "worker")}'
  if argv[0] == 'gcloud':
    return f'{argv[3]} {argv[4]}'
  return argv[0]


@pytest.mark.parametrize('script', SCRIPTS)
def test_bash_syntax(script):
  proc = subprocess.run(['bash', '-n', os.path.join(LAUNCH, script)], capture_output=True,
                        text=True)
  assert proc.returncode == 0, proc.stderr


def test_shellcheck_clean():
  if shutil.which('shellcheck') is None:
    pytest.skip('shellcheck is not installed (apt-get install shellcheck)')
  proc = subprocess.run(['shellcheck', '-x', *SCRIPTS], cwd=LAUNCH, capture_output=True,
                        text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize('env, expected', [
    ({}, ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'bach-jax', '--zone=us-central2-b',
          '--accelerator-type=v4-32', '--version=tpu-ubuntu2204-base']),
    ({'SPOT': 1, 'TPU_NAME': 'mine', 'ACCELERATOR': 'v5litepod-16', 'ZONE': 'us-west4-a'},
     ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'mine', '--zone=us-west4-a',
      '--accelerator-type=v5litepod-16', '--version=tpu-ubuntu2204-base', '--spot']),
    ({'QUEUED': 1, 'SPOT': 1},
     ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'bach-jax-qr',
      '--node-id=bach-jax', '--zone=us-central2-b', '--accelerator-type=v4-32',
      '--runtime-version=tpu-ubuntu2204-base', '--spot']),
])
def test_create(env, expected):
  rc, commands, _, err = launch('create.sh', **env)
  assert rc == 0, err
  assert commands == [expected]


def test_setup_copies_installs_and_mounts_on_every_worker():
  rc, commands, _, err = launch('setup.sh')
  assert rc == 0, err
  assert [kind(c) for c in commands] == ['git', 'tpu-vm scp', 'ssh all']
  git, scp, ssh = commands
  assert git[:4] == ['git', '-C', REPO, 'archive'] and git[-1] == 'HEAD'
  tarball = git[git.index('-o') + 1]
  assert scp[5:7] == [tarball, 'bach-jax:bach_jax.tar.gz'] and flag(scp, 'worker') == 'all'
  remote = flag(ssh, 'command')
  assert "pip install -q -e ~/bach_jax 'jax[tpu]'" in remote
  assert 'gcsfuse --implicit-dirs test-bucket /mnt/bach_jax' in remote
  # A gs:// workdir root: no mount, gcsfs for epath instead.
  rc, commands, _, _ = launch('setup.sh', WORKDIR_ROOT='gs://test-bucket/runs')
  remote = flag(commands[-1], 'command')
  assert 'gcsfs' in remote and 'gcsfuse' not in remote


def test_run_starts_every_worker_in_the_background():
  rc, commands, out, err = launch('run.sh', 'attn1', '--config.train.batch_size=512')
  assert rc == 0, err
  (ssh,) = commands
  assert ssh[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'bach-jax']
  assert flag(ssh, 'worker') == 'all' and flag(ssh, 'zone') == 'us-central2-b'
  remote = flag(ssh, 'command')
  assert 'BACH_JAX_DISTRIBUTED=1' in remote
  assert ('-m bach_jax.main --config=configs/lstm_attn.py --config.train.batch_size=512 '
          '--workdir=/mnt/bach_jax/attn1 ') in remote
  assert 'started attn1' in out
  # A given --config replaces the default one.
  _, commands, _, _ = launch('run.sh', 'l1', '--config=configs/lstm.py:test')
  remote = flag(commands[0], 'command')
  assert '--config=configs/lstm.py:test --workdir=/mnt/bach_jax/l1' in remote
  assert 'lstm_attn' not in remote


@pytest.mark.parametrize('script, args, env, match', [
    ('create.sh', [], {'BUCKET': ''}, 'BUCKET is not set'),
    ('create.sh', [], {'BUCKET': 'my-bucket'}, 'BUCKET=my-bucket'),
    ('create.sh', [], {'SPOT': 'yes'}, 'SPOT=yes'),
    ('keep_alive.sh', ['r'], {'QUEUED': '2'}, 'QUEUED=2'),
    ('create.sh', [], {'TPU_NAME': 'a b'}, 'TPU_NAME'),
    ('run.sh', [], {}, 'usage: launch/run.sh RUN_NAME'),
    ('run.sh', ['a/b'], {}, 'RUN_NAME=a/b'),
    ('run.sh', ['r', '--workdir=/x'], {}, '--workdir=/x: run.sh sets'),
    ('keep_alive.sh', [], {}, 'usage: launch/keep_alive.sh RUN_NAME'),
])
def test_user_errors_are_one_line_with_status_2(script, args, env, match):
  rc, commands, _, err = launch(script, *args, **env)
  assert rc == 2 and commands == []
  assert err.count('\n') == 1 and err.startswith('error: ') and match in err, err


def keep_alive(states, exits, *flags, **env):
  rc, commands, out, err = launch('keep_alive.sh', 'attn1', *flags, DRY_RUN_STATES=states,
                                  DRY_RUN_EXITS=exits, **env)
  # The decisions: what was run between two looks at the slice.
  steps, current = [], None
  for c in commands:
    k = kind(c)
    if k in ('tpu-vm describe', 'queued-resources describe'):
      current = []
      steps.append(current)
    elif k != 'sleep':
      current.append(k)
  return rc, steps, commands, out + err


def test_keep_alive_creates_sets_up_resumes_after_75_and_stops_on_0():
  rc, steps, commands, log = keep_alive('MISSING CREATING READY READY READY READY',
                                        'running 75 0', '--config.train.batch_size=512')
  assert rc == 0, log
  assert steps == [['tpu-vm create'], [], ['git', 'tpu-vm scp', 'ssh all', 'ssh all'],
                   ['ssh 0'], ['ssh 0', 'ssh all'], ['ssh 0']]
  create = next(c for c in commands if kind(c) == 'tpu-vm create')
  assert '--spot' in create  # keep_alive's slices are spot unless SPOT=0.
  runs = [flag(c, 'command') for c in commands if kind(c) == 'ssh all'][1:]
  assert len(runs) == 2 and all('--config.train.batch_size=512' in r for r in runs)
  assert all(flag(c, 'worker') == 'all' for c in commands if c[:5] == [
      'gcloud', 'compute', 'tpus', 'tpu-vm', 'scp'])
  assert ['sleep', '7'] in commands
  assert 'interrupted (exit 75): resuming' in log and 'attn1 finished' in log


def test_keep_alive_recreates_a_preempted_slice():
  rc, steps, _, log = keep_alive('READY PREEMPTED READY READY', 'running 0')
  assert rc == 0, log
  assert steps == [['ssh 0'], ['tpu-vm delete', 'tpu-vm create'],
                   ['git', 'tpu-vm scp', 'ssh all', 'ssh all'], ['ssh 0']]


def test_keep_alive_with_a_queued_resource():
  rc, steps, commands, log = keep_alive(
      'MISSING WAITING_FOR_RESOURCES PROVISIONING ACTIVE SUSPENDED ACTIVE ACTIVE', '0',
      QUEUED=1)
  assert rc == 0, log
  assert steps == [['queued-resources create'], [], [],
                   ['git', 'tpu-vm scp', 'ssh all', 'ssh all'],
                   ['queued-resources delete', 'queued-resources create'],
                   ['git', 'tpu-vm scp', 'ssh all', 'ssh all'], ['ssh 0']]
  describe = next(c for c in commands if kind(c) == 'queued-resources describe')
  assert flag(describe, 'format') == 'value(state.state)'
  delete = next(c for c in commands if kind(c) == 'queued-resources delete')
  assert '--force' in delete and '--quiet' in delete
  create = next(c for c in commands if kind(c) == 'queued-resources create')
  assert flag(create, 'node-id') == 'bach-jax' and '--spot' in create


@pytest.mark.parametrize('exit_status, rc, message', [
    ('2', 2, 'user error (exit 2)'),
    ('3', 3, 'not finite (exit 3)'),
])
def test_keep_alive_stops_on_a_user_error_or_nan(exit_status, rc, message):
  got, steps, _, log = keep_alive('READY READY READY', f'running {exit_status} 0')
  assert got == rc, log
  assert steps == [['ssh 0'], ['ssh 0']]  # Not started again.
  assert message in log


def test_keep_alive_retries_a_crash_a_few_times_then_gives_up():
  rc, steps, _, log = keep_alive('READY READY READY READY', '1 1 1', MAX_RESTARTS=2)
  assert rc == 1, log
  assert steps == [['ssh 0', 'ssh all'], ['ssh 0', 'ssh all'], ['ssh 0']]
  assert 'giving up' in log


def test_keep_alive_starts_a_run_never_started():
  rc, steps, _, log = keep_alive('READY READY', 'none 0')
  assert rc == 0, log
  assert steps == [['ssh 0', 'ssh all'], ['ssh 0']]


def _remote(script, *args):
  """The --command of the single ssh (all or 0) a script prints last."""
  _, commands, _, _ = launch(script, *args, DRY_RUN_STATES='READY', DRY_RUN_EXITS='running')
  return flag([c for c in commands if kind(c).startswith('ssh')][-1], 'command')


def test_remote_commands_run_here_against_a_stand_in(tmp_path):
  """run.sh's command starts the run in the background and leaves its exit status in
  ~/RUN.exit; keep_alive.sh's query reads running / the status. HOME is a temp dir with a
  stand-in python that records its arguments and exits 75."""
  home = tmp_path / 'home'
  (home / 'bach_jax').mkdir(parents=True)
  (home / 'venv' / 'bin').mkdir(parents=True)
  stub = home / 'venv' / 'bin' / 'python'
  stub.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$HOME/argv"\n'
                  'echo "$BACH_JAX_DISTRIBUTED" > "$HOME/env"\nsleep 1\nexit 75\n')
  stub.chmod(0o755)
  env = {'PATH': os.environ['PATH'], 'HOME': str(home)}
  start = _remote('run.sh', 'r1', '--config.sample.primer=my piece.mid')
  query = _remote('keep_alive.sh', 'r1')

  def status():
    return subprocess.run(['bash', '-c', query], env=env, capture_output=True, text=True,
                          timeout=30).stdout.strip()

  assert status() == 'none'
  subprocess.run(['bash', '-c', start], env=env, check=True, timeout=30)
  assert status() == 'running'
  deadline = time.time() + 30
  while status() == 'running' and time.time() < deadline:
    time.sleep(0.2)
  assert status() == '75'
  assert (home / 'argv').read_text().splitlines() == [
      '-m', 'bach_jax.main', '--config=configs/lstm_attn.py',
      '--config.sample.primer=my piece.mid', '--workdir=/mnt/bach_jax/r1']
  assert (home / 'env').read_text().strip() == '1'
