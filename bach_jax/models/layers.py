"""Shared layers: the scan LSTM stack every recurrent model uses.

The LSTM is written for speed: the input projection for all time steps is one
matmul outside the scan, and the scan body does only the recurrent matmul and
the gate math. Parameters are stored in the fused layout
`w_ih: [D, 4H]`, `w_hh: [H, 4H]`, `b: [4H]` with gates in the order
(input, forget, cell, output), the same layout as cuDNN / torch.nn.LSTM
(transposed), so the weights can be compared with reference implementations.
"""

from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Carry = Tuple[jax.Array, jax.Array]  # (h, c), each float[B, H].


def lstm_scan(x_proj, w_hh, h0, c0):
  """Runs one LSTM layer over time given the hoisted input projection.

  Args:
    x_proj: float[T, B, 4H], x_t @ w_ih + b for every step (time-major).
    w_hh: float[H, 4H], recurrent weights.
    h0, c0: float[B, H], initial state.

  Returns:
    hs: float[T, B, H] hidden outputs; (h_T, c_T) the final state.
  """

  def step(carry, xp):
    h, c = carry
    gates = xp + h @ w_hh
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h

  (h, c), hs = jax.lax.scan(step, (h0, c0), x_proj)
  return hs, (h, c)


class LSTMLayer(nn.Module):
  """One LSTM layer over a whole sequence. x: float[B, T, D] -> float[B, T, H]."""
  hidden_size: int
  dtype: jnp.dtype = jnp.float32  # Matmul input dtype (bfloat16 on TPU/GPU if wanted).

  @nn.compact
  def __call__(self, x, carry: Optional[Carry] = None):
    h_size = self.hidden_size
    d = x.shape[-1]
    w_ih = self.param('w_ih', nn.initializers.lecun_normal(), (d, 4 * h_size))
    w_hh = self.param('w_hh', nn.initializers.orthogonal(column_axis=-1), (h_size, 4 * h_size))
    # Forget-gate bias 1: the usual start that lets gradients flow early on.
    b = self.param('b', lambda _, s: jnp.zeros(s).at[h_size:2 * h_size].set(1.0),
                   (4 * h_size,))
    batch = x.shape[0]
    if carry is None:
      carry = (jnp.zeros((batch, h_size), jnp.float32),) * 2
    # One matmul for every time step, time-major so the scan reads rows.
    x_tm = jnp.swapaxes(x, 0, 1).astype(self.dtype)
    x_proj = jnp.einsum('tbd,dg->tbg', x_tm, w_ih.astype(self.dtype),
                        preferred_element_type=jnp.float32) + b
    hs, carry = lstm_scan(x_proj, w_hh, *carry)
    return jnp.swapaxes(hs, 0, 1), carry


class LSTMStack(nn.Module):
  """Stacked LSTM layers with dropout after each layer.

  Call: (x float[B, T, D], carry) -> (float[B, T, H], new carry), where carry is
  a tuple with one (h, c) per layer or None for the zero state. Feeding T=1
  steps with the carry threaded through gives exactly the whole-sequence output,
  which is what sampling does inside a lax.scan.
  """
  hidden_size: int
  num_layers: int
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, carry: Optional[Sequence[Carry]] = None, *, deterministic: bool = True):
    new_carry = []
    for i in range(self.num_layers):
      x, c = LSTMLayer(self.hidden_size, dtype=self.dtype, name=f'lstm_{i}')(
          x, None if carry is None else carry[i])
      new_carry.append(c)
      x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    return x, tuple(new_carry)

  def zero_carry(self, batch_size):
    z = jnp.zeros((batch_size, self.hidden_size), jnp.float32)
    return tuple((z, z) for _ in range(self.num_layers))
