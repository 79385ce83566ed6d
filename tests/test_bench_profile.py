"""bench/profile_step.py: the FLOPs it reads from HLO and the summary it prints."""

import jax
import jax.numpy as jnp
import pytest

from bench import profile_step

_HLO = '''
%fused_computation.3 (param_0.3: f32[64,2048], param_1.3: f32[2048,512]) -> f32[64,512] {
  %param_0.3 = f32[64,2048]{1,0} parameter(0)
  %param_1.3 = f32[2048,512]{1,0} parameter(1)
  ROOT %dot.7 = f32[64,512]{1,0} dot(%param_0.3, %param_1.3), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main.9 (a: f32[64,2048], w: f32[2048,512], x: f32[32,64,89]) -> f32[64,512] {
  %a = f32[64,2048]{1,0} parameter(0)
  %w = f32[2048,512]{1,0} parameter(1)
  %x = f32[32,64,89]{2,1,0} parameter(2)
  %ynn_fusion.3 = f32[64,512]{1,0} fusion(%a, %w), kind=kCustom, calls=%fused_computation.3
  %dot.8 = f32[89,512]{1,0} dot(%x, %ynn_fusion.3), lhs_contracting_dims={0,1}, rhs_contracting_dims={0}
  ROOT %tanh.1 = f32[64,512]{1,0} tanh(%ynn_fusion.3)
}
'''


def test_dot_flops_reads_shapes_and_contracting_dims():
  flops = profile_step.dot_flops(_HLO)
  assert flops == {'dot.7': 2 * 64 * 512 * 2048, 'ynn_fusion.3': 2 * 64 * 512 * 2048,
                   'dot.8': 2 * 89 * 512 * (32 * 64)}


def test_dot_flops_finds_the_matmuls_of_a_compiled_scan():
  b, h, t, k, n = 4, 8, 3, 5, 7

  def f(state, w, x, v):
    state, _ = jax.lax.scan(lambda s, _: (jnp.tanh(s @ w), None), state, None, length=t)
    return state, jnp.einsum('tbk,kn->tbn', x, v)

  args = (jnp.ones((b, h)), jnp.ones((h, h)), jnp.ones((t, b, k)), jnp.ones((k, n)))
  flops = profile_step.dot_flops(jax.jit(f).lower(*args).compile().as_text())
  # XLA may wrap each dot in a fusion (which then carries the same count).
  assert set(flops.values()) == {2.0 * b * h * h, 2.0 * t * b * k * n}


def test_summary_splits_matmuls_and_other_ops_in_and_out_of_scans():
  total = {'ynn_fusion': 3000.0, 'ynn_fusion.10': 2000.0, 'add_fusion': 500.0, 'copy.1': 250.0}
  calls = {'ynn_fusion': 32, 'ynn_fusion.10': 1, 'add_fusion': 32, 'copy.1': 1}
  flops = {'ynn_fusion': 1e8, 'ynn_fusion.10': 4e9}
  rows = {kind: (ms, gflop) for kind, ms, gflop in profile_step.summary(total, calls, flops)}
  assert rows['matmuls in scans'] == (3.0, pytest.approx(3.2))
  assert rows['matmuls, once'] == (2.0, pytest.approx(4.0))
  assert rows['other ops in scans'] == (0.5, None)
  assert rows['other ops, once'] == (0.25, None)
