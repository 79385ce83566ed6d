"""The three implementations bench/train_step.py times: bach_jax's trainer step,
flax nn.RNN(OptimizedLSTMCell), and torch.nn.LSTM, all with the same sizes,
loss (sigmoid BCE summed over keys, mean over batch and time) and Adam.
"""

import functools
import importlib.util
import os
import random
import time

import numpy as np

NUM_KEYS = 88
HIDDEN = 512
NUM_LAYERS = 2
LEARNING_RATE = 1e-3
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_rolls(batch, steps, seed=0):
  """bool[batch, steps + 1, 88]: the LSTM then runs `steps` steps (inputs = roll[:, :-1])."""
  rng = np.random.default_rng(seed)
  return rng.random((batch, steps + 1, NUM_KEYS)) < 0.05


# ----------------------------------------------------------------------------- JAX


def _jax_num_threads():
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def _bce_loss(logits, targets):
  """Sigmoid BCE summed over keys, mean over batch and time."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  return jnp.mean(jnp.sum(optax.sigmoid_binary_cross_entropy(logits, targets), axis=-1))


def make_bach_jax_step(roll, dtype):
  """bach_jax's step as the trainer runs it: sharded jit, state donated.

  Uses bach_jax.models.lstm with configs/lstm.py (dropout 0, no gradient
  clipping, no weight decay: plain Adam like the others) where it exists, else
  the same network built from layers.LSTMStack.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top

  mesh = jax.make_mesh((jax.device_count(),), ('data',))
  repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  batch = {'roll': roll, 'mask': np.ones((roll.shape[0],), bool)}
  rng = jax.random.key(0)
  try:
    from bach_jax.models import lstm  # pylint: disable=g-import-not-at-top
    config_mod = load_config_module('lstm')
  except ImportError:
    lstm = config_mod = None
  if lstm is not None and config_mod is not None:
    config = config_mod.get_config()
    config.model.dropout_rate = 0.0
    config.model.dtype = dtype
    config.train.batch_size = roll.shape[0]
    config.train.grad_clip_norm = 0.0
    config.train.weight_decay = 0.0
    config.train.learning_rate = LEARNING_RATE
    # Constant learning rate from the first step, as torch's and flax's Adam: the
    # same updates, so the last losses of the three can be compared.
    config.train.warmup_steps = 0
    config.train.lr_schedule = 'constant'
    state = jax.jit(functools.partial(lstm.init, config), out_shardings=repl)(rng, batch)

    def step_fn(state, batch, rng):
      return lstm.train_step(config, state, batch, jax.random.fold_in(rng, state.step))
    source = 'bach_jax.models.lstm'
  else:
    import flax.linen as nn  # pylint: disable=g-import-not-at-top
    import optax  # pylint: disable=g-import-not-at-top
    from bach_jax.models.layers import LSTMStack  # pylint: disable=g-import-not-at-top

    class Net(nn.Module):

      @nn.compact
      def __call__(self, x):
        h, _ = LSTMStack(HIDDEN, NUM_LAYERS, 0.0, jnp.dtype(dtype))(x)
        return nn.Dense(NUM_KEYS)(h)

    net, tx = Net(), optax.adam(LEARNING_RATE)

    def init(rng, batch):
      params = net.init(rng, batch['roll'][:, :-1].astype(jnp.float32))['params']
      return {'params': params, 'opt': tx.init(params)}

    state = jax.jit(init, out_shardings=repl)(rng, batch)

    def step_fn(state, batch, rng):
      del rng
      roll = batch['roll'].astype(jnp.float32)

      def loss_fn(params):
        return _bce_loss(net.apply({'params': params}, roll[:, :-1]), roll[:, 1:])
      loss, grads = jax.value_and_grad(loss_fn)(state['params'])
      updates, opt = tx.update(grads, state['opt'], state['params'])
      return {'params': optax.apply_updates(state['params'], updates), 'opt': opt}, {
          'loss': loss}
    source = 'bach_jax.models.layers.LSTMStack (models/lstm.py not found)'

  step = jax.jit(step_fn, in_shardings=(repl, data, repl), out_shardings=(repl, repl),
                 donate_argnums=(0,))
  batch = jax.device_put(batch, data)
  return JaxRunner(step, state, (batch, rng), source)


def make_flax_step(roll, dtype):
  """flax.linen.RNN(OptimizedLSTMCell) x 2 + Dense, optax.adam, plain jit."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  class Net(nn.Module):

    @nn.compact
    def __call__(self, x):
      for _ in range(NUM_LAYERS):
        x = nn.RNN(nn.OptimizedLSTMCell(HIDDEN, dtype=jnp.dtype(dtype)))(x)
      return nn.Dense(NUM_KEYS)(x)

  net, tx = Net(), optax.adam(LEARNING_RATE)
  roll = jnp.asarray(roll)
  params = net.init(jax.random.key(0), roll[:, :-1].astype(jnp.float32))['params']
  state = (params, tx.init(params))

  @jax.jit
  def step(state, roll):
    params, opt = state
    roll = roll.astype(jnp.float32)

    def loss_fn(params):
      return _bce_loss(net.apply({'params': params}, roll[:, :-1]), roll[:, 1:])
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt, params)
    return (optax.apply_updates(params, updates), opt), {'loss': loss}

  return JaxRunner(step, state, (roll,), 'flax.linen.RNN(OptimizedLSTMCell)')


def make_matmul_floor(roll, dtype):
  """The matmuls of bach_jax's LSTM training step and as little else as possible.

  The same products in the same order as layers.LSTMStack and its custom VJP: the
  same time chunks, the input projections, the scans' weight-left recurrent
  products (layers._recurrent_matmul), the head, the weight gradients per chunk and
  the input gradient of every layer but the first. The glue is one tanh of [B, H]
  per scan step (it keeps the values finite) and the gate-gradient rows written
  for the weight gradients; no gate arithmetic, loss or optimizer. Its time is the
  floor the step would reach if everything but the matmuls were free: the part of
  a gap to torch that no change outside the matmuls can close.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from bach_jax.models import common  # pylint: disable=g-import-not-at-top
  from bach_jax.models import layers  # pylint: disable=g-import-not-at-top

  dtype = jnp.dtype(dtype)
  batch, steps = roll.shape[0], roll.shape[1] - 1
  chunks = layers.time_chunks(steps, batch, HIDDEN)
  keys = iter(jax.random.split(jax.random.key(0), 2 * NUM_LAYERS + 1))
  # bach_jax's LSTM reads 89 features per frame: the keys and a start flag
  # (models/common.frame_features).
  sizes = [NUM_KEYS + 1] + [HIDDEN] * (NUM_LAYERS - 1)
  w_ih = [0.05 * jax.random.normal(next(keys), (d, 4 * HIDDEN)) for d in sizes]
  w_hh = [0.05 * jax.random.normal(next(keys), (HIDDEN, 4 * HIDDEN)) for _ in sizes]
  w_out = 0.05 * jax.random.normal(next(keys), (HIDDEN, NUM_KEYS))

  # The scans' product, exactly as the layer computes it.
  recurrent_matmul = layers._recurrent_matmul  # pylint: disable=protected-access

  def scan_forward(x_proj, w_hh_t, h):
    def step(h, xp):
      h = jnp.tanh((xp + recurrent_matmul(h, w_hh_t, dtype))[:, :HIDDEN])
      return h, h
    return jax.lax.scan(step, h, x_proj)

  def scan_backward(d_hs, w_hh, d):
    def step(d, d_h):
      d_gates = jnp.concatenate([d + d_h] * 4, axis=-1)
      return jnp.tanh(recurrent_matmul(d_gates, w_hh, dtype)), d_gates
    return jax.lax.scan(step, d, d_hs, reverse=True)

  def matmuls(x, w_ih, w_hh, w_out):
    cast = lambda v: v.astype(dtype)
    zeros = jnp.zeros((batch, HIDDEN))
    carry = [zeros] * NUM_LAYERS
    inputs = {}  # (chunk, layer) -> [x_t, h_{t-1}], the weight gradients' operand.
    outs = []
    for k, (start, stop) in enumerate(chunks):
      h = x[start:stop]
      for i in range(NUM_LAYERS):
        x_proj = jnp.einsum('tbd,dg->tbg', cast(h), cast(w_ih[i]),
                            preferred_element_type=jnp.float32)
        h_last, hs = scan_forward(x_proj, cast(w_hh[i].T), carry[i])
        inputs[k, i] = jnp.concatenate([h, jnp.concatenate([carry[i][None], hs[:-1]])], -1)
        carry[i], h = h_last, hs
      outs.append(h)
    hs = jnp.concatenate(outs)
    d_logits = jnp.tanh(jnp.einsum('tbh,hk->tbk', cast(hs), cast(w_out),
                                   preferred_element_type=jnp.float32))
    grads = [jnp.einsum('tbh,tbk->hk', cast(hs), cast(d_logits),
                        preferred_element_type=jnp.float32)]
    d_out = jnp.einsum('tbk,hk->tbh', cast(d_logits), cast(w_out),
                       preferred_element_type=jnp.float32)
    d_carry = [zeros] * NUM_LAYERS
    for k, (start, stop) in reversed(list(enumerate(chunks))):
      d_h = d_out[start:stop]
      for i in reversed(range(NUM_LAYERS)):
        d_carry[i], d_gates = scan_backward(d_h, cast(w_hh[i]), d_carry[i])
        grads.append(jax.lax.dot_general(cast(inputs[k, i]), cast(d_gates),
                                         (((0, 1), (0, 1)), ((), ())),
                                         preferred_element_type=jnp.float32))
        if i:
          d_h = jnp.einsum('tbg,dg->tbd', cast(d_gates), cast(w_ih[i]),
                           preferred_element_type=jnp.float32)
    return grads

  def step(state, x, w_ih, w_hh, w_out):
    # The gradients are outputs, or XLA would drop the matmuls that make them.
    return state, {'loss': jnp.zeros(()), 'grads': matmuls(x, w_ih, w_hh, w_out)}

  frames = roll[:, :-1]
  start = np.broadcast_to(np.arange(frames.shape[1]) == 0, frames.shape[:2])  # Frame 0.
  x = jnp.swapaxes(common.frame_features(frames, start), 0, 1)
  return JaxRunner(jax.jit(step), jnp.zeros(()), (x, w_ih, w_hh, w_out),
                    f'the matmuls of the bach_jax step only ({len(chunks)} time chunks)')


def load_config_module(name):
  path = os.path.join(REPO_ROOT, 'configs', f'{name}.py')
  if not os.path.exists(path):
    return None
  spec = importlib.util.spec_from_file_location(f'bench_configs_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


class JaxRunner:
  """Holds a jitted step and its state; step() runs one and waits for it."""

  def __init__(self, step, state, args, source):
    self.step_fn, self.state, self.args, self.source = step, state, args, source
    t0 = time.perf_counter()
    self.compiled = step.lower(state, *args).compile()
    self.compile_s = time.perf_counter() - t0

  def step(self):
    import jax  # pylint: disable=g-import-not-at-top
    self.state, metrics = self.compiled(self.state, *self.args)
    jax.block_until_ready((self.state, metrics))
    return metrics


def run_rounds(runners, rounds, seed=0):
  """Runs every runner once per round, in an order shuffled per round (fixed seed).

  -> ({name: [wall s]}, {name: [process CPU s]}, {name: last loss}). Shuffling keeps
  any one implementation from always running right after another (caches, the other
  framework's threads still spinning); one step of each per round lets the per-round
  ratios (paired_ratios) cancel the machine's drift.
  """
  rng = random.Random(seed)
  times = {name: [] for name in runners}
  cpu_times = {name: [] for name in runners}
  losses = {}
  names = list(runners)
  for _ in range(rounds):
    rng.shuffle(names)
    for name in names:
      c0, t0 = time.process_time(), time.perf_counter()
      metrics = runners[name].step()
      times[name].append(time.perf_counter() - t0)
      cpu_times[name].append(time.process_time() - c0)
      losses[name] = float(metrics['loss'])
  return times, cpu_times, losses


def paired_ratios(times, base):
  """-> {name: [t_name / t_base per round]}."""
  return {name: [t / b for t, b in zip(ts, times[base])] for name, ts in times.items()}


def ratio_quartiles(times, base):
  """-> {name: (median, p25, p75)} of each runner's per-round ratio to `base`."""
  out = {}
  for name, ratios in paired_ratios(times, base).items():
    q25, q75 = np.percentile(ratios, [25, 75])
    out[name] = (float(np.median(ratios)), float(q25), float(q75))
  return out


# --------------------------------------------------------------------------- torch


class _TorchRunner:
  """torch.nn.LSTM (fused kernel) + Linear, torch.optim.Adam."""

  def __init__(self, roll, device):
    import torch  # pylint: disable=g-import-not-at-top
    self.torch, self.device = torch, device
    torch.manual_seed(0)
    self.lstm = torch.nn.LSTM(NUM_KEYS, HIDDEN, num_layers=NUM_LAYERS, batch_first=True,
                              dropout=0.0).to(device)
    self.dense = torch.nn.Linear(HIDDEN, NUM_KEYS).to(device)
    params = list(self.lstm.parameters()) + list(self.dense.parameters())
    self.opt = torch.optim.Adam(params, lr=LEARNING_RATE)
    roll = torch.from_numpy(roll.astype(np.float32)).to(device)
    self.inputs, self.targets = roll[:, :-1].contiguous(), roll[:, 1:].contiguous()
    self.source = f'torch {torch.__version__} nn.LSTM on {device}'
    self.compile_s = 0.0

  def step(self):
    torch = self.torch
    self.opt.zero_grad(set_to_none=True)
    h, _ = self.lstm(self.inputs)
    logits = self.dense(h)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, self.targets, reduction='sum') / (logits.shape[0] * logits.shape[1])
    loss.backward()
    self.opt.step()
    if self.device != 'cpu':
      torch.cuda.synchronize()
    return {'loss': loss.item()}


def _torch_device(jax_backend):
  """'cpu', 'cuda' or None (no torch, or torch cannot use this accelerator)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None, 'torch not installed (pip install -e .[bench])'
  if jax_backend == 'cpu':
    torch.set_num_threads(_jax_num_threads())
    return 'cpu', ''
  if jax_backend == 'gpu' and torch.cuda.is_available():
    return 'cuda', ''
  return None, f'torch has no device for jax backend {jax_backend!r}'
