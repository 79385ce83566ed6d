"""Shared layers: the scan LSTM stack every recurrent model uses, and `dense` /
`einsum`, the other matmuls, in a model's compute dtype (model.dtype).

The LSTM is written for speed: the input projection for all time steps is one
matmul outside the scan, and the scan body does only the recurrent matmul and
the gate math. Parameters are stored in the fused layout
`w_ih: [D, 4H]`, `w_hh: [H, 4H]`, `b: [4H]` with gates in the order
(input, forget, cell, output), the same layout as cuDNN / torch.nn.LSTM
(transposed), so the weights can be compared with reference implementations.

The backward pass of the whole layer is hand-written (`jax.custom_vjp`), the
way cuDNN and oneDNN do it: the forward scan saves only the gate activations and
the cell states, the reverse scan computes only the gate gradients and the
(dh, dc) carries, and then both weight gradients are one matmul over all time
steps ([x_t, h_{t-1}]^T d_gates) and the input gradient another. Left to
autodiff, XLA made a transposed copy of the [T*B, 4H] gate gradients for each
weight-gradient matmul (one matmul: 10-16% faster steps); contracting time and
batch in the buffers' own order, it makes none.
No [T, B, 4H] buffer is allocated for the scans: the forward scan writes the gate
activations over the input projection and the reverse scan the gate gradients
over the activations, row t after it is read (the scans' own output buffers would
be zero-filled first; reusing them made training steps about 4% faster).
Second-order reverse mode (grad of grad) works; forward mode (jax.jvp, jacfwd)
does not.
"""

import functools
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Carry = Tuple[jax.Array, jax.Array]  # (h, c), each float[B, H].


def _transposed_specs(spec):
  """'A,B->C' -> ('C,B->A', 'A,C->B'): the einsums of the two operands' gradients (every
  index of A is in B or C, and of B in A or C: true of matmul-like einsums)."""
  inputs, out = spec.replace(' ', '').split('->')
  a, b = inputs.split(',')
  return f'{out},{b}->{a}', f'{a},{out}->{b}'


def _mixed_einsum_fwd(spec, a, b, dtype):
  ac, bc = a.astype(dtype), b.astype(dtype)
  out = jnp.einsum(spec, ac, bc, preferred_element_type=jnp.float32)
  # Scalars of the operands' own dtypes: the gradients go back in those.
  return out, (ac, bc, jnp.zeros((), a.dtype), jnp.zeros((), b.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _mixed_einsum(spec, a, b, dtype):
  return _mixed_einsum_fwd(spec, a, b, dtype)[0]


def _mixed_einsum_bwd(spec, dtype, residuals, g):
  ac, bc, a_type, b_type = residuals
  da_spec, db_spec = _transposed_specs(spec)
  gc = g.astype(dtype)  # The gradient matmuls in `dtype` too, accumulated in float32.
  return (jnp.einsum(da_spec, gc, bc, preferred_element_type=jnp.float32).astype(a_type.dtype),
          jnp.einsum(db_spec, ac, gc, preferred_element_type=jnp.float32).astype(b_type.dtype))


_mixed_einsum.defvjp(_mixed_einsum_fwd, _mixed_einsum_bwd)


def einsum(spec, a, b, dtype=jnp.float32):
  """jnp.einsum of two operands ('A,B->C', no ellipsis) computed in `dtype` (e.g. bfloat16)
  and accumulated in float32, forward and backward (the gradients' matmuls take `dtype`
  inputs too); the result is float32. float32: plain jnp.einsum."""
  if jnp.dtype(dtype) == jnp.float32:
    return jnp.einsum(spec, a, b)
  return _mixed_einsum(spec, a, b, jnp.dtype(dtype))


def _dense_dot_general(dtype):
  """nn.Dense's dot_general (inputs [..., K] x kernel [K, N]) through `einsum`."""

  def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    del precision, preferred_element_type
    assert dimension_numbers == (((lhs.ndim - 1,), (0,)), ((), ())), dimension_numbers
    out = einsum('mk,kn->mn', lhs.reshape(-1, lhs.shape[-1]), rhs, dtype)
    return out.reshape(lhs.shape[:-1] + rhs.shape[1:])

  return dot_general


def dense(features, dtype=jnp.float32, **kwargs):
  """nn.Dense whose matmul (and its gradients') takes `dtype` inputs (e.g. bfloat16) and
  accumulates in float32; its params stay float32 and its output is float32. float32: a
  plain nn.Dense. The parameter names are nn.Dense's either way (checkpoints load in both)."""
  if jnp.dtype(dtype) == jnp.float32:
    return nn.Dense(features, **kwargs)
  return nn.Dense(features, dot_general=_dense_dot_general(jnp.dtype(dtype)), **kwargs)


def _recurrent_matmul(v, w_t, dtype):
  """v @ w_t.T: a scan step's matmul of the small v [B, K] with the weight w_t [N, K].

  On CPU it is computed as (w_t @ v.T).T, with the weight as the left operand:
  the scans' matmuls took 10-20% less op time that way (bench/profile_step),
  presumably because XLA:CPU's matmul library packs the right-hand operand at
  each call and the small one is cheaper to pack. No transpose is materialized:
  XLA reads the [N, B] product transposed in the fusion that consumes it.
  Elsewhere the plain form.
  """
  v, w_t = v.astype(dtype), w_t.astype(dtype)

  def weight_left(v, w_t):
    # Barriers, or XLA rewrites the product back to v @ w_t.T (the one on out), or
    # folds the caller's transpose of w_t into the dot, contracting its dim 0, which
    # XLA:CPU runs outside its matmul library (the sampler was 2-3x slower).
    out = jax.lax.dot_general(jax.lax.optimization_barrier(w_t), v, (((1,), (1,)), ((), ())),
                              preferred_element_type=jnp.float32)
    return jax.lax.optimization_barrier(out).T

  def plain(v, w_t):
    return jax.lax.dot_general(v, w_t, (((1,), (1,)), ((), ())),
                               preferred_element_type=jnp.float32)

  return jax.lax.platform_dependent(v, w_t, cpu=weight_left, default=plain)


def _lstm_forward(x_proj, w_hh, b, h0, c0, dtype, save_residuals):
  """The forward scan. Returns (hs, cs, acts) or hs, and the final (h, c).

  hs, cs: float[T, B, H]; acts: float[T, B, 4H], the gate activations
  (sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)) that the backward pass needs,
  written over x_proj (row t once it is read), so x_proj must not be used after.
  """
  w_hh_t = w_hh.T.astype(dtype)  # Transposed and cast once, not once per step.

  def cell(h, c, xp):
    gates = xp + b + _recurrent_matmul(h, w_hh_t, dtype)
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
    c = f * c + i * g
    return o * jnp.tanh(c), c, jnp.concatenate([i, f, g, o], axis=-1)

  if not save_residuals:
    def step(carry, xp):
      h, c, _ = cell(*carry, xp)
      return (h, c), h
    carry, hs = jax.lax.scan(step, (h0, c0), x_proj)
    return hs, carry

  def step_saving(carry, t):
    h, c, buf = carry
    h, c, act = cell(h, c, jax.lax.dynamic_index_in_dim(buf, t, keepdims=False))
    return (h, c, jax.lax.dynamic_update_index_in_dim(buf, act, t, 0)), (h, c)

  (h, c, acts), (hs, cs) = jax.lax.scan(step_saving, (h0, c0, x_proj),
                                        jnp.arange(x_proj.shape[0]))
  return (hs, cs, acts), (h, c)


def _project(x, w_ih, dtype):
  """x float[T, B, D] @ w_ih [D, 4H] -> float32[T, B, 4H]: every time step in one matmul."""
  return jnp.einsum('tbd,dg->tbg', x.astype(dtype), w_ih.astype(dtype),
                    preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _lstm_layer(x, w_ih, w_hh, b, h0, c0, dtype):
  return _lstm_forward(_project(x, w_ih, dtype), w_hh, b, h0, c0, dtype, save_residuals=False)


def _lstm_layer_fwd(x, w_ih, w_hh, b, h0, c0, dtype):
  (hs, cs, acts), carry = _lstm_forward(_project(x, w_ih, dtype), w_hh, b, h0, c0, dtype,
                                        save_residuals=True)
  return (hs, carry), (x, w_ih, w_hh, b, h0, c0, hs, cs, acts)


def _lstm_layer_bwd(dtype, residuals, cotangents):
  """Reverse scan for the gate gradients; every other gradient is one matmul after it."""
  x, w_ih, w_hh, b, h0, c0, hs, cs, acts = residuals
  d_hs, (d_h_last, d_c_last) = cotangents
  w_hh_cast = w_hh.astype(dtype)  # Cast once, outside the scan.

  def step(carry, xs):
    # The gate gradients are written over the activations' buffer, row t once read.
    # d_c_next (the carry) reads f and feeds d_gates: with every read of row t an
    # input of the write to it, XLA updates the buffer in place; computed apart
    # from d_gates, XLA copied the whole buffer at every step.
    d_h, d_c, buf = carry
    t, d_h_out, c = xs
    i, f, g, o = jnp.split(jax.lax.dynamic_index_in_dim(buf, t, keepdims=False), 4, axis=-1)
    c_before = jnp.where(t > 0, jax.lax.dynamic_index_in_dim(cs, jnp.maximum(t - 1, 0),
                                                             keepdims=False), c0)
    d_h = d_h + d_h_out
    tanh_c = jnp.tanh(c)
    d_c = d_c + d_h * o * (1.0 - tanh_c * tanh_c)
    d_c_next = d_c * f
    d_gates = jnp.concatenate([
        d_c * g * i * (1.0 - i),
        d_c_next * c_before * (1.0 - f),
        d_c * i * (1.0 - g * g),
        d_h * tanh_c * o * (1.0 - o),
    ], axis=-1)
    return (_recurrent_matmul(d_gates, w_hh_cast, dtype), d_c_next,
            jax.lax.dynamic_update_index_in_dim(buf, d_gates, t, 0)), None

  (d_h0, d_c0, d_gates), _ = jax.lax.scan(
      step, (d_h_last, d_c_last, acts), (jnp.arange(cs.shape[0]), d_hs, cs), reverse=True)
  # Both weight gradients in one matmul contracting time and batch: [x_t, h_{t-1}]^T
  # d_gates, in the order (t, b) of the buffers (jnp.einsum says (b, t), and XLA then
  # reorders the whole [T, B, 4H] d_gates first). The output sharding is the
  # weights': B may be sharded over a mesh (the compiler adds the all-reduce).
  h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
  inputs = jnp.concatenate([x.astype(dtype), h_prev.astype(dtype)], axis=-1)
  d_gates_cast = d_gates.astype(dtype)
  d_w = jax.lax.dot_general(inputs, d_gates_cast, (((0, 1), (0, 1)), ((), ())),
                            preferred_element_type=jnp.float32,
                            out_sharding=jax.typeof(w_hh).sharding)
  d = x.shape[-1]
  d_x = jnp.einsum('tbg,dg->tbd', d_gates_cast, w_ih.astype(dtype),
                   preferred_element_type=jnp.float32)
  d_b = jnp.sum(d_gates, axis=(0, 1) if b.ndim == 1 else 0)  # b: [4H] or per row [B, 4H].
  return (d_x.astype(x.dtype), d_w[:d].astype(w_ih.dtype), d_w[d:].astype(w_hh.dtype),
          d_b.astype(b.dtype), d_h0, d_c0)


_lstm_layer.defvjp(_lstm_layer_fwd, _lstm_layer_bwd)


def lstm_layer(x, w_ih, w_hh, b, h0, c0, *, dtype=None):
  """Runs one LSTM layer over a time-major sequence.

  Args:
    x: float[T, B, D] inputs (time-major).
    w_ih: float[D, 4H], w_hh: float[H, 4H], b: float[4H], or float[B, 4H] for a
      bias per row (a sequence's conditioning, the same at every step); gradients
      come back in their dtypes and shapes.
    h0, c0: float32[B, H], initial state.
    dtype: matmul input dtype (e.g. bfloat16); accumulation stays float32.
      None = w_hh.dtype.

  Returns:
    hs: float32[T, B, H] hidden outputs; (h_T, c_T) the final state.
  """
  dtype = jnp.dtype(w_hh.dtype if dtype is None else dtype)
  return _lstm_layer(x, w_ih, w_hh, b, h0, c0, dtype)


# On CPU the stack runs the sequence in time chunks of about this many bytes of gate
# pre-activations ([steps, B, 4H] float32) each, and at most _MAX_CHUNKS of them.
_CPU_CHUNK_BYTES = 8 << 20
_MAX_CHUNKS = 16


def time_chunks(steps, batch, hidden_size, chunk_steps=None):
  """-> [(start, stop)]: the time chunks LSTMStack runs a sequence in.

  chunk_steps: steps per chunk; 0 = the whole sequence at once; None = on CPU
    about _CPU_CHUNK_BYTES of gate pre-activations per chunk (16 steps at batch
    64, hidden 512) and at most _MAX_CHUNKS chunks, elsewhere the whole sequence.
  """
  if chunk_steps is None:
    if jax.default_backend() != 'cpu':
      chunk_steps = steps
    else:
      chunk_steps = max(_CPU_CHUNK_BYTES // (batch * 4 * hidden_size * 4),
                        -(-steps // _MAX_CHUNKS), 1)
  elif chunk_steps < 0:
    raise ValueError(f'time_chunk must be >= 0 (0 = whole sequence), got {chunk_steps}')
  chunk_steps = chunk_steps or steps
  return [(start, min(start + chunk_steps, steps)) for start in range(0, steps, chunk_steps)]


class LSTMLayer(nn.Module):
  """One LSTM layer over a whole sequence. x: float[B, T, D] -> float[B, T, H].

  weight_dropout_rate: DropConnect on the recurrent weights w_hh in training
  (one mask per call, shared by every row and time step, as in AWD-LSTM):
  regularizes the recurrence without touching the scan.
  """
  hidden_size: int
  dtype: jnp.dtype = jnp.float32  # Matmul input dtype (bfloat16 on TPU/GPU if wanted).
  weight_dropout_rate: float = 0.0

  @nn.compact
  def weights(self, in_size, *, deterministic=True, cond=None):
    """-> (w_ih, w_hh, b), with DropConnect applied to w_hh in training.

    cond: float[B, C] or None, a vector per sequence that conditions every step: it
    enters through the bias, b + cond @ w_cond (float[B, 4H]), computed once per
    sequence instead of as C more input columns at every step (what concatenating it
    to the inputs would cost: the decoders of the latent families read one context
    per block of frames).
    """
    h_size = self.hidden_size
    w_ih = self.param('w_ih', nn.initializers.lecun_normal(), (in_size, 4 * h_size))
    w_hh = self.param('w_hh', nn.initializers.orthogonal(column_axis=-1), (h_size, 4 * h_size))
    # Forget-gate bias 1: the usual start that lets gradients flow early on.
    b = self.param('b', lambda _, s: jnp.zeros(s).at[h_size:2 * h_size].set(1.0),
                   (4 * h_size,))
    if cond is not None:
      w_cond = self.param('w_cond', nn.initializers.lecun_normal(),
                          (cond.shape[-1], 4 * h_size))
      b = b + einsum('bc,cg->bg', cond, w_cond, self.dtype)
    if self.weight_dropout_rate and not deterministic:
      w_hh = nn.Dropout(self.weight_dropout_rate)(w_hh, deterministic=False)
    return w_ih, w_hh, b

  def __call__(self, x, carry: Optional[Carry] = None, *, deterministic: bool = True,
               cond=None):
    weights = self.weights(x.shape[-1], deterministic=deterministic, cond=cond)
    if carry is None:
      carry = (jnp.zeros((x.shape[0], self.hidden_size), jnp.float32),) * 2
    # Time-major, so the scan reads rows.
    hs, carry = lstm_layer(jnp.swapaxes(x, 0, 1), *weights, *carry, dtype=self.dtype)
    return jnp.swapaxes(hs, 0, 1), carry


class LSTMStack(nn.Module):
  """Stacked LSTM layers with dropout after each layer (and optional DropConnect on w_hh).

  Call: (x float[B, T, D], carry) -> (float[B, T, H], new carry), where carry is
  a tuple with one (h, c) per layer or None for the zero state. Feeding T=1
  steps with the carry threaded through gives exactly the whole-sequence output,
  which is what sampling does inside a lax.scan.

  The sequence runs in time chunks (`time_chunks`), every layer on chunk k before
  chunk k + 1, the carries passed on. The result is the same; what changes is the
  dataflow: layer l + 1 on chunk k depends only on layer l's chunk k, so XLA runs
  it beside layer l on chunk k + 1, and in the backward pass the other way round.
  On a 2-core CPU, where a scan step's gate arithmetic leaves a core idle, that
  made training steps 5-15% faster at batch 128 x 128 steps, and changed nothing
  measurable at 64 x 32 (README, Benchmarks). Dropout masks are drawn per chunk
  (same distribution; different draws for a different chunking).
  """
  hidden_size: int
  num_layers: int
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  weight_dropout_rate: float = 0.0  # DropConnect on each layer's w_hh (LSTMLayer).
  time_chunk: Optional[int] = None  # Steps per chunk: see time_chunks (None = auto).

  @nn.compact
  def __call__(self, x, carry: Optional[Sequence[Carry]] = None, *, deterministic: bool = True,
               cond=None):
    """cond: float[B, C] or None: conditions the first layer at every step (see
    LSTMLayer.weights)."""
    batch, steps, in_size = x.shape
    weights = []
    for i in range(self.num_layers):
      layer = LSTMLayer(self.hidden_size, dtype=self.dtype,
                        weight_dropout_rate=self.weight_dropout_rate, name=f'lstm_{i}')
      weights.append(layer.weights(in_size if i == 0 else self.hidden_size,
                                   deterministic=deterministic, cond=cond if i == 0 else None))
    carry = list(self.zero_carry(batch) if carry is None else carry)
    dropout = nn.Dropout(self.dropout_rate)
    x = jnp.swapaxes(x, 0, 1)  # Time-major, so the scans read rows.
    outs = []
    for start, stop in time_chunks(steps, batch, self.hidden_size, self.time_chunk):
      h = x[start:stop]
      for i in range(self.num_layers):
        h, carry[i] = lstm_layer(h, *weights[i], *carry[i], dtype=self.dtype)
        h = dropout(h, deterministic=deterministic)
      outs.append(h)
    return jnp.swapaxes(jnp.concatenate(outs, axis=0), 0, 1), tuple(carry)

  def zero_carry(self, batch_size):
    z = jnp.zeros((batch_size, self.hidden_size), jnp.float32)
    return tuple((z, z) for _ in range(self.num_layers))
