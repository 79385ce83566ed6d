"""Mesh, shardings, host-local -> global arrays, multi-process start-up.

Data parallelism is one jax.jit step over a 1-D mesh ('data',) spanning every
device of every process: state replicated (P()), batch sharded on 'data'. The
compiler inserts the gradient all-reduce. No pmap.

Several processes (hosts, or processes on one machine) form one run through
jax.distributed; `maybe_initialize_distributed` starts it from the environment:

  JAX_COORDINATOR_ADDRESS=HOST:PORT  process 0's address, the same for every process
  JAX_NUM_PROCESSES=N                how many processes the run has
  JAX_PROCESS_ID=I                   this process's index, 0 .. N-1 (0 runs the coordinator)
  JAX_LOCAL_DEVICE_IDS=0,1           optional: the local devices (GPUs) this process uses
  JAX_COORDINATOR_BIND_ADDRESS=A:P   optional: where process 0's coordinator listens; by
                                     default where JAX_COORDINATOR_ADDRESS says when HOST is
                                     an IP address or localhost (e.g. 127.0.0.1 stays local),
                                     else every interface on PORT (a host name may resolve
                                     to a loopback address on its own host)
  BACH_JAX_DISTRIBUTED=1             start it with whatever is set: on Cloud TPU (and under
                                     Slurm or Open MPI) jax finds everything itself; set
                                     automatically when TPU_WORKER_HOSTNAMES lists several
                                     hosts. =0: never start it.

Setting any of the first three starts it. On CPU the processes' collectives use gloo.
"""

import ipaddress
import os
import sys

from absl import logging
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from bach_jax.errors import DistributedError

EXPLICIT_ENV = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')




def _env_int(env, name, low, high=None):
  value = env[name]
  try:
    number = int(value)
  except ValueError:
    number = None
  if number is None or number < low or (high is not None and number >= high):
    bound = f'an integer >= {low}' if high is None else f'an integer in [{low}, {high})'
    raise DistributedError(f'{name}={value!r}: must be {bound}')
  return number


def default_bind_address(coordinator):
  """Where process 0's coordinator listens unless JAX_COORDINATOR_BIND_ADDRESS says:
  the coordinator address itself when its host is an IP address or localhost, else
  None (jax's default, every interface: a host name may resolve to a loopback
  address on its own host, e.g. Debian's 127.0.1.1)."""
  host, sep, port = coordinator.rpartition(':')
  if not sep or not host or not port.isdigit():
    raise DistributedError(f'JAX_COORDINATOR_ADDRESS={coordinator!r}: must be HOST:PORT')
  bare = host[1:-1] if host.startswith('[') and host.endswith(']') else host
  if bare == 'localhost':
    return coordinator
  try:
    ipaddress.ip_address(bare)
  except ValueError:
    return None
  return coordinator


def distributed_args(environ=None):
  """-> keyword arguments for jax.distributed.initialize, or None (one process).

  Reads the variables of the module docstring; raises DistributedError naming a
  malformed one. Only what is set is passed: jax detects the rest on Cloud TPU
  (and under Slurm or Open MPI).
  """
  env = os.environ if environ is None else environ
  flag = env.get('BACH_JAX_DISTRIBUTED', '')
  if flag not in ('', '0', '1'):
    raise DistributedError(f'BACH_JAX_DISTRIBUTED={flag!r}: must be 1 (start jax.distributed) '
                           'or 0 (never)')
  explicit = [k for k in EXPLICIT_ENV if env.get(k)]
  several_tpu_hosts = ',' in env.get('TPU_WORKER_HOSTNAMES', '')
  if flag == '0' or not (flag == '1' or explicit or several_tpu_hosts):
    return None
  kwargs = {}
  if env.get('JAX_NUM_PROCESSES'):
    kwargs['num_processes'] = _env_int(env, 'JAX_NUM_PROCESSES', 1)
  if env.get('JAX_PROCESS_ID'):
    kwargs['process_id'] = _env_int(env, 'JAX_PROCESS_ID', 0, kwargs.get('num_processes'))
  coordinator = env.get('JAX_COORDINATOR_ADDRESS')
  if coordinator:
    kwargs['coordinator_address'] = coordinator
    bind = env.get('JAX_COORDINATOR_BIND_ADDRESS') or default_bind_address(coordinator)
    if bind:
      kwargs['coordinator_bind_address'] = bind
  elif env.get('JAX_COORDINATOR_BIND_ADDRESS'):
    kwargs['coordinator_bind_address'] = env['JAX_COORDINATOR_BIND_ADDRESS']
  return kwargs


def initialize_distributed(environ=None):
  """Starts jax.distributed as the environment asks (module docstring) -> whether it did.

  Raises DistributedError (one line naming the variables) when the environment
  names some of JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID and
  jax cannot find the others itself.
  """
  kwargs = distributed_args(environ)
  if kwargs is None or jax.distributed.is_initialized():
    return False
  if getattr(jax.config, 'jax_cpu_collectives_implementation', 'gloo') is None:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # Older jax: no default.
  try:
    jax.distributed.initialize(**kwargs)
  except ValueError as e:
    env = os.environ if environ is None else environ
    missing = [k for k in EXPLICIT_ENV if not env.get(k)]
    given = [k for k in EXPLICIT_ENV if env.get(k)]
    if missing and given:
      raise DistributedError(
          f'{" and ".join(given)} set but not {" and ".join(missing)}, and jax found no '
          f'cluster (Cloud TPU, Slurm, Open MPI) to read them from: set all of '
          f'{", ".join(EXPLICIT_ENV)} on every process') from None
    raise DistributedError(f'jax.distributed.initialize({kwargs}): {e}') from None
  logging.info('jax.distributed: process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


def maybe_initialize_distributed():
  """initialize_distributed() for the command line: a bad environment exits with
  status 2 and one line naming the variable (main.py calls this first, before its
  own error handling)."""
  try:
    return initialize_distributed()
  except DistributedError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


def make_mesh(devices=None):
  """A 1-D mesh over every device of every host (or the given ones), axis 'data'.

  Auto axis type: the compiler propagates shardings (GSPMD) from the explicit
  in/out shardings of each jit, so model code needs no sharding annotations.
  """
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), ('data',), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh):
  return NamedSharding(mesh, P())


def data_sharded(mesh):
  return NamedSharding(mesh, P('data'))


def to_global(batch, mesh):
  """Host-local NumPy batch (dict of [B_local, ...]) -> global jax.Arrays sharded on 'data'."""
  sharding = data_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def replicate(tree, mesh):
  """Puts a pytree (e.g. the train state) on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))
