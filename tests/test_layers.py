"""Tests for bach_jax.models.layers: the custom-VJP scan LSTM against references."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bach_jax.models import layers

RTOL = ATOL = 1e-5
# Most tests compile with LLVM optimization off: half the compile time on a
# 2-core CPU, same arithmetic. One case runs with the default (production) flags.
_FAST_COMPILE = {'xla_backend_optimization_level': 0}


def _jit(fn, optimize=False, **kwargs):
  return jax.jit(fn, compiler_options=None if optimize else _FAST_COMPILE, **kwargs)


def reference_lstm(x, params, carry):
  """A straightforward per-step LSTM with plain autodiff (no custom VJP).

  x: float[B, T, D]; params: w_ih [D, 4H], w_hh [H, 4H], b [4H], gates i, f, g, o;
  carry: (h, c) float[B, H]. Returns (float[B, T, H], (h, c)).
  """
  hi = jax.lax.Precision.HIGHEST

  def step(carry, x_t):
    h, c = carry
    gates = (jnp.dot(x_t, params['w_ih'], precision=hi)
             + jnp.dot(h, params['w_hh'], precision=hi) + params['b'])
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h

  carry, hs = jax.lax.scan(step, carry, jnp.swapaxes(x, 0, 1))
  return jnp.swapaxes(hs, 0, 1), carry


def _random_problem(batch, steps, in_size, hidden, seed=0):
  ks = jax.random.split(jax.random.key(seed), 8)
  params = {
      'w_ih': jax.random.normal(ks[0], (in_size, 4 * hidden)) / np.sqrt(in_size),
      'w_hh': jax.random.normal(ks[1], (hidden, 4 * hidden)) / np.sqrt(hidden),
      'b': 0.1 * jax.random.normal(ks[2], (4 * hidden,)),
  }
  x = jax.random.normal(ks[3], (batch, steps, in_size))
  carry = (0.5 * jax.random.normal(ks[4], (batch, hidden)),
           jax.random.normal(ks[5], (batch, hidden)))
  # Fixed random projections make every output and the final carry matter.
  probes = (jax.random.normal(ks[6], (batch, steps, hidden)),
            jax.random.normal(ks[7], (2, batch, hidden)))
  return params, x, carry, probes


def _loss(apply_fn, probes):
  """-> loss(params, x, carry) -> (scalar, (outputs, final carry)), for value_and_grad."""
  def loss(params, x, carry):
    hs, (h, c) = apply_fn(x, params, carry)
    value = (jnp.sum(hs * probes[0]) + jnp.sum(h * probes[1][0])
             + jnp.sum(jnp.sin(c) * probes[1][1]))
    return value, (hs, (h, c))
  return loss


def _outputs_and_grads(apply_fn, probes, argnums=(0, 1, 2), use_jit=True, optimize=False):
  """-> fn(params, x, carry) -> ((outputs, final carry), grads): one compilation."""
  fn = jax.value_and_grad(_loss(apply_fn, probes), argnums=argnums, has_aux=True)
  fn = _jit(fn, optimize) if use_jit else fn
  return lambda *args: (lambda r: (r[0][1], r[1]))(fn(*args))


def _layer_apply(x, params, carry):
  return layers.LSTMLayer(params['w_hh'].shape[0]).apply({'params': params}, x, carry)


def _assert_trees_close(actual, expected, rtol=RTOL, atol=ATOL):
  flat_a, tree_a = jax.tree_util.tree_flatten(actual)
  flat_e, tree_e = jax.tree_util.tree_flatten(expected)
  assert tree_a == tree_e
  for path, a, e in zip(jax.tree_util.tree_leaves(jax.tree_util.tree_map_with_path(
      lambda p, _: jax.tree_util.keystr(p), expected)), flat_a, flat_e):
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=path)


@pytest.mark.parametrize('batch,steps,in_size,hidden,use_jit,optimize', [
    (3, 1, 5, 4, True, False),    # T=1: the sampling case.
    (4, 9, 6, 8, True, True),     # Compiled as in production.
    (2, 3, 3, 16, False, False),  # Eager (op by op) differentiation.
])
def test_layer_matches_reference_outputs_and_gradients(batch, steps, in_size, hidden, use_jit,
                                                       optimize):
  params, x, carry, probes = _random_problem(batch, steps, in_size, hidden)
  # Outputs and gradients w.r.t. every parameter, the input and the initial
  # carry, with the final carry in the loss.
  actual = _outputs_and_grads(_layer_apply, probes, use_jit=use_jit, optimize=optimize)(
      params, x, carry)
  expected = _outputs_and_grads(reference_lstm, probes)(params, x, carry)
  _assert_trees_close(actual, expected)


def test_layer_zero_carry_default_matches_reference():
  params, x, _, probes = _random_problem(5, 6, 7, 8, seed=1)
  zero = (jnp.zeros((5, 8)),) * 2
  actual = _outputs_and_grads(_layer_apply, probes, argnums=0)(params, x, None)
  expected = _outputs_and_grads(reference_lstm, probes, argnums=0)(params, x, zero)
  _assert_trees_close(actual, expected)


def test_second_order_gradients_match_reference():
  """grad of grad (e.g. a WGAN gradient penalty through an LSTM critic)."""
  params, x, carry, probes = _random_problem(2, 5, 3, 4, seed=2)

  def penalty(apply_fn):
    def fn(params):
      g = jax.grad(lambda *a: _loss(apply_fn, probes)(*a)[0], argnums=1)(params, x, carry)
      return jnp.sum(g * g)
    return fn

  _assert_trees_close(_jit(jax.grad(penalty(_layer_apply)))(params),
                      _jit(jax.grad(penalty(reference_lstm)))(params), rtol=1e-4, atol=1e-5)


def test_gradients_with_batch_sharded_over_a_mesh():
  """The trainer's setting: state replicated, batch sharded on 'data' (explicit mesh)."""
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  params, x, carry, probes = _random_problem(4, 5, 3, 8, seed=6)
  mesh = jax.make_mesh((jax.device_count(),), ('data',))
  repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  fn = jax.value_and_grad(_loss(_layer_apply, probes), argnums=(0, 1, 2), has_aux=True)
  sharded = _jit(fn, in_shardings=(repl, data, data), out_shardings=repl)
  actual = sharded(jax.device_put(params, repl), jax.device_put(x, data),
                   jax.device_put(carry, data))
  _assert_trees_close(actual[1], _outputs_and_grads(reference_lstm, probes)(params, x, carry)[1])


def test_gradient_reuses_buffers_instead_of_zero_filling_new_ones():
  """The forward scan writes the gate activations over the input projection and the
  reverse scan the gate gradients over the activations, and the weight-gradient
  matmul reads the gate gradients as they are: the compiled gradient holds no
  zero-filled, copied or reordered ([B, T, 4H]) gate-sized buffer. A change that
  breaks this still gives the right numbers, only slower: this is what catches it."""
  steps, batch, in_size, hidden = 6, 3, 5, 8

  def loss(x, w_ih, w_hh, b, h0, c0):
    hs, (_, c) = layers.lstm_layer(x, w_ih, w_hh, b, h0, c0)
    return jnp.sum(jnp.sin(hs)) + jnp.sum(c)

  shapes = [(steps, batch, in_size), (in_size, 4 * hidden), (hidden, 4 * hidden),
            (4 * hidden,), (batch, hidden), (batch, hidden)]
  hlo = _jit(jax.grad(loss, argnums=tuple(range(6)))).lower(
      *[jnp.ones(s) for s in shapes]).compile().as_text()
  gates = re.escape(f'f32[{steps},{batch},{4 * hidden}]')
  assert re.search(gates + r'\{', hlo), 'no [T, B, 4H] buffer found: test out of date'
  any_order = '|'.join(re.escape(f'f32[{a},{b},{4 * hidden}]')
                       for a, b in ((steps, batch), (batch, steps)))
  filled = [line.strip()[:120] for line in hlo.splitlines()
            if re.search(rf'({any_order})\{{[^}}]*\}} (broadcast|copy|transpose)\(', line)]
  assert not filled, filled


def test_layer_parameter_names_and_shapes():
  params = _jit(layers.LSTMLayer(16).init)(jax.random.key(0), jnp.zeros((2, 3, 5)))['params']
  shapes = jax.tree_util.tree_map(jnp.shape, params)
  assert shapes == {'w_ih': (5, 64), 'w_hh': (16, 64), 'b': (64,)}
  np.testing.assert_array_equal(params['b'], np.r_[np.zeros(16), np.ones(16), np.zeros(32)])


def test_stack_stepwise_equals_whole_sequence():
  stack = layers.LSTMStack(hidden_size=8, num_layers=3)
  x = jax.random.normal(jax.random.key(3), (4, 7, 5))
  params = _jit(stack.init)(jax.random.key(4), x)
  whole, whole_carry = _jit(stack.apply)(params, x)

  def stepwise(params, x):
    def one_step(carry, x_t):
      out, carry = stack.apply(params, x_t[:, None], carry)
      return carry, out[:, 0]
    return jax.lax.scan(one_step, stack.zero_carry(4), jnp.swapaxes(x, 0, 1))

  carry, outs = _jit(stepwise)(params, x)
  _assert_trees_close((jnp.swapaxes(outs, 0, 1), carry), (whole, whole_carry))


def test_bfloat16_matmuls_stay_close_to_float32():
  params, x, carry, probes = _random_problem(4, 6, 5, 8, seed=5)

  def apply(dtype):
    def fn(x, params, carry):
      return layers.LSTMLayer(8, dtype=dtype).apply({'params': params}, x, carry)
    return fn

  (out16, _), g16 = _outputs_and_grads(apply(jnp.bfloat16), probes, argnums=0)(params, x, carry)
  (out32, _), g32 = _outputs_and_grads(apply(jnp.float32), probes, argnums=0)(params, x, carry)
  assert out16.dtype == jnp.float32
  np.testing.assert_allclose(out16, out32, atol=5e-2)
  assert jax.tree_util.tree_map(lambda a: a.dtype, g16) == jax.tree_util.tree_map(
      lambda a: a.dtype, params)
  for k in g32:
    scale = np.max(np.abs(g32[k]))
    np.testing.assert_allclose(g16[k] / scale, g32[k] / scale, atol=5e-2, err_msg=k)


def test_stack_matches_torch_lstm():
  torch = pytest.importorskip('torch')
  batch, steps, in_size, hidden, num_layers = 3, 6, 5, 8, 2
  torch.manual_seed(0)
  ref = torch.nn.LSTM(in_size, hidden, num_layers=num_layers, batch_first=True).double()
  x = np.random.default_rng(0).normal(size=(batch, steps, in_size))
  # torch keeps two biases per layer and weights as [4H, D]; ours are summed and transposed.
  params = {'params': {
      f'lstm_{l}': {
          'w_ih': getattr(ref, f'weight_ih_l{l}').detach().numpy().T.astype(np.float32),
          'w_hh': getattr(ref, f'weight_hh_l{l}').detach().numpy().T.astype(np.float32),
          'b': (getattr(ref, f'bias_ih_l{l}') + getattr(ref, f'bias_hh_l{l}')
                ).detach().numpy().astype(np.float32),
      } for l in range(num_layers)}}
  xt = torch.tensor(x, requires_grad=True)
  ref_out, (ref_h, ref_c) = ref(xt)
  ref_out.sum().backward()

  stack = layers.LSTMStack(hidden, num_layers)
  out, carry = _jit(stack.apply)(params, jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(out, ref_out.detach().numpy(), rtol=RTOL, atol=ATOL)
  for l in range(num_layers):
    np.testing.assert_allclose(carry[l][0], ref_h[l].detach().numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(carry[l][1], ref_c[l].detach().numpy(), rtol=RTOL, atol=ATOL)

  grads = _jit(jax.grad(
      lambda p: jnp.sum(stack.apply(p, jnp.asarray(x, jnp.float32))[0])))(params)
  for l in range(num_layers):
    g = grads['params'][f'lstm_{l}']
    np.testing.assert_allclose(g['w_hh'], getattr(ref, f'weight_hh_l{l}').grad.numpy().T,
                               rtol=1e-4, atol=ATOL)
    np.testing.assert_allclose(g['w_ih'], getattr(ref, f'weight_ih_l{l}').grad.numpy().T,
                               rtol=1e-4, atol=ATOL)
    np.testing.assert_allclose(g['b'], getattr(ref, f'bias_ih_l{l}').grad.numpy(),
                               rtol=1e-4, atol=ATOL)


def test_weight_dropout_drops_recurrent_weights_in_training_only():
  """DropConnect on w_hh: the reference LSTM with the masked weights, one mask per call."""
  params, x, carry, probes = _random_problem(3, 6, 5, 8, seed=7)
  layer = layers.LSTMLayer(8, weight_dropout_rate=0.5)
  rng = jax.random.key(3)

  def apply(deterministic):
    return lambda x, params, carry: layer.apply({'params': params}, x, carry,
                                                deterministic=deterministic,
                                                rngs={'dropout': rng})

  # Evaluation: the plain layer.
  _assert_trees_close(_outputs_and_grads(apply(True), probes)(params, x, carry),
                      _outputs_and_grads(reference_lstm, probes)(params, x, carry))
  # Training: a dropped weight gets exactly zero gradient, a kept one a nonzero one,
  # and everything equals the reference run with the masked, rescaled w_hh.
  (outs, _), grads = _outputs_and_grads(apply(False), probes)(params, x, carry)
  dropped = np.asarray(grads[0]['w_hh']) == 0.0
  assert 0.35 < dropped.mean() < 0.65, dropped.mean()
  masked = dict(params, w_hh=jnp.where(dropped, 0.0, params['w_hh'] / 0.5))
  (ref_outs, _), ref_grads = _outputs_and_grads(reference_lstm, probes)(masked, x, carry)
  _assert_trees_close(outs, ref_outs)
  np.testing.assert_allclose(grads[0]['w_ih'], ref_grads[0]['w_ih'], rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(np.where(dropped, 0.0, grads[0]['w_hh'] * 0.5),
                             np.where(dropped, 0.0, ref_grads[0]['w_hh']), rtol=1e-4, atol=ATOL)


@pytest.mark.parametrize('time_chunk', [1, 3])
def test_stack_in_time_chunks_equals_whole_sequence(time_chunk):
  """Chunks of 1 and of 3 steps (7 = 3 + 3 + 1): outputs, final carries and every
  gradient equal the stack run over the whole sequence at once, DropConnect included
  (one w_hh mask per call, not per chunk)."""
  batch, steps, in_size, hidden = 3, 7, 5, 8
  x = jax.random.normal(jax.random.key(0), (batch, steps, in_size))
  carry = tuple((0.5 * jax.random.normal(jax.random.key(10 + l), (batch, hidden)),
                 jax.random.normal(jax.random.key(20 + l), (batch, hidden))) for l in range(2))
  probe = jax.random.normal(jax.random.key(1), (batch, steps, hidden))

  def run(chunk):
    stack = layers.LSTMStack(hidden, 2, weight_dropout_rate=0.5, time_chunk=chunk)
    params = stack.init(jax.random.key(2), x)

    def loss(params, x, carry):
      out, new_carry = stack.apply(params, x, carry, deterministic=False,
                                   rngs={'dropout': jax.random.key(3)})
      return jnp.sum(out * probe) + sum(jnp.sum(jnp.sin(c)) for hc in new_carry for c in hc), (
          out, new_carry)
    return _jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(params, x, carry)

  assert layers.time_chunks(steps, batch, hidden, time_chunk)[1][0] == time_chunk
  (_, whole), whole_grads = run(0)
  (_, chunked), chunked_grads = run(time_chunk)
  _assert_trees_close(chunked, whole)
  _assert_trees_close(chunked_grads, whole_grads, rtol=1e-4)


def test_time_chunks():
  assert layers.time_chunks(7, 3, 8, 0) == [(0, 7)]
  assert layers.time_chunks(7, 3, 8, 3) == [(0, 3), (3, 6), (6, 7)]
  assert layers.time_chunks(2, 3, 8, 5) == [(0, 2)]
  with pytest.raises(ValueError, match='time_chunk'):
    layers.time_chunks(7, 3, 8, -1)
  if jax.default_backend() != 'cpu':
    assert layers.time_chunks(128, 128, 512) == [(0, 128)]
    return
  # Auto on CPU: about 8 MiB of gate pre-activations per chunk, at most 16 chunks.
  assert len(layers.time_chunks(32, 64, 512)) == 2
  assert len(layers.time_chunks(128, 128, 512)) == 16
  assert len(layers.time_chunks(1024, 128, 512)) == 16
  assert layers.time_chunks(32, 4, 16) == [(0, 32)]


def test_conditioning_through_the_bias_equals_concatenated_inputs():
  """LSTMLayer(x, cond=v): v enters every step through the bias (b + v w_cond), the same
  function as v concatenated to every step's input with w_cond as more rows of w_ih;
  outputs and gradients (params, inputs, cond) match plain autodiff of that."""
  params, x, carry, probes = _random_problem(3, 5, 4, 6, seed=3)
  ks = jax.random.split(jax.random.key(9), 2)
  cond = jax.random.normal(ks[0], (3, 7))
  params = dict(params, w_cond=jax.random.normal(ks[1], (7, 24)) / np.sqrt(7))

  def conditioned(inputs, p, c):
    x_, v = inputs
    return layers.LSTMLayer(6).apply({'params': p}, x_, c, cond=v)

  def concatenated(inputs, p, c):
    x_, v = inputs
    wide = jnp.concatenate([x_, jnp.broadcast_to(v[:, None], (3, 5, 7))], axis=-1)
    ref = {'w_ih': jnp.concatenate([p['w_ih'], p['w_cond']]), 'w_hh': p['w_hh'], 'b': p['b']}
    return reference_lstm(wide, ref, c)

  # The "inputs" are (x, cond): their gradients are compared too.
  out_a, grads_a = _outputs_and_grads(conditioned, probes)(params, (x, cond), carry)
  out_b, grads_b = _outputs_and_grads(concatenated, probes)(params, (x, cond), carry)
  _assert_trees_close(out_a, out_b)
  _assert_trees_close(grads_a, grads_b)
