"""The sharded step on 8 (fake CPU) devices equals the 1-device step on the same global batch."""

import os
import subprocess
import sys

from train_helpers import REPO

SCRIPT = r'''
import sys
sys.path.insert(0, sys.argv[1])
import jax, numpy as np
from bach_jax import parallel, train
from bach_jax.models import lstm
from train_helpers import load_config

assert jax.device_count() == 8, jax.devices()
config = load_config('lstm', 'test')
rng = np.random.default_rng(0)
batch = {'roll': rng.random((16, 16, 88)) < 0.1, 'mask': np.ones(16, bool)}
batch['mask'][-3:] = False  # Padding rows must not count, wherever they are sharded.
results = []
for devices in (jax.devices(), jax.devices()[:1]):
  mesh = parallel.make_mesh(devices)
  state = parallel.replicate(lstm.init(config, jax.random.key(0), batch), mesh)
  step = train.make_train_step(lstm, config, mesh)
  gbatch = {k: jax.device_put(v, parallel.data_sharded(mesh)) for k, v in batch.items()}
  losses = []
  for _ in range(3):
    state, metrics = step(state, gbatch, jax.random.key(1))
    losses.append(float(metrics['loss']))
  assert len(state.params['out']['kernel'].sharding.device_set) == len(devices)
  results.append((losses, jax.device_get(state.params)))
(l8, p8), (l1, p1) = results
np.testing.assert_allclose(l8, l1, rtol=1e-5)
for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(p1)):
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
print('OK', l8, l1)
'''


def test_eight_device_step_equals_one_device_step():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  tests_dir = os.path.join(REPO, 'tests')
  proc = subprocess.run([sys.executable, '-c', SCRIPT, tests_dir], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'OK' in proc.stdout
