"""Mesh, shardings, host-local -> global arrays, multi-host start-up.

Data parallelism is one jax.jit step over a 1-D mesh ('data',) spanning every
device of every host: state replicated (P()), batch sharded on 'data'. The
compiler inserts the gradient all-reduce. No pmap.
"""

import os

from absl import logging
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


def maybe_initialize_distributed():
  """Starts jax.distributed on multi-host runs; a no-op on one machine.

  Multi-host is detected from the environment that Cloud TPU VMs (TPU_WORKER_HOSTNAMES
  with more than one host) or an explicit coordinator (JAX_COORDINATOR_ADDRESS) set;
  BACH_JAX_DISTRIBUTED=1 forces it, =0 disables it.
  """
  flag = os.environ.get('BACH_JAX_DISTRIBUTED', '')
  hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  wanted = flag == '1' or (flag != '0' and (',' in hosts or 'JAX_COORDINATOR_ADDRESS' in os.environ))
  if wanted and not jax.distributed.is_initialized():
    jax.distributed.initialize()
    logging.info('jax.distributed: process %d of %d, %d local / %d global devices',
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())


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


def local_batch_size(global_batch_size):
  return global_batch_size // jax.process_count()
