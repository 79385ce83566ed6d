"""bench/train_step.py end to end on a tiny size: records, per-round ratios, the table."""

import collections
import json

import pytest

from bench import implementations
from bench import profile_step
from bench import train_step


def _run_bench(tmp_path, impls, steps):
  """-> {impl: train_step record} of a 2x4 run without warm-up."""
  out = tmp_path / 'bench.jsonl'
  train_step.main(['--sizes', '2x4', '--steps', str(steps), '--warmup', '0', '--impls', impls,
                   '--skip', 'data,sampling', '--out', str(out)])
  records = [json.loads(line) for line in out.read_text().splitlines()]
  return {r['impl']: r for r in records if r['kind'] == 'train_step'}


def test_main_reports_per_round_ratios_to_torch(tmp_path, capsys):
  pytest.importorskip('torch')
  steps = _run_bench(tmp_path, 'bach_jax,torch', 4)
  assert set(steps) == {'bach_jax', 'torch'}
  assert steps['torch']['ratio_vs_torch'] == 1.0
  jax_step = steps['bach_jax']
  assert jax_step['n'] == 4
  assert jax_step['ratio_p25'] <= jax_step['ratio_vs_torch'] <= jax_step['ratio_p75']
  assert jax_step['ratio_of_medians'] == pytest.approx(
      jax_step['median_ms'] / steps['torch']['median_ms'])
  assert 'p25-p75' in capsys.readouterr().out


def test_main_without_torch_has_no_ratios(tmp_path, capsys):
  steps = _run_bench(tmp_path, 'bach_jax,matmuls', 2)
  assert set(steps) == {'bach_jax', 'matmuls'}
  assert all('ratio_vs_torch' not in r and r['n'] == 2 for r in steps.values())
  jax_step = steps['bach_jax']
  assert (jax_step['ratio_vs_matmuls_p25'] <= jax_step['ratio_vs_matmuls']
          <= jax_step['ratio_vs_matmuls_p75'])
  assert 'bach_jax x its matmuls alone' in capsys.readouterr().out


@pytest.mark.parametrize('size', [(4, 8), (64, 20)])  # (64, 20): two time chunks on CPU.
def test_matmul_floor_has_the_steps_matmuls(size):
  """The floor must run the matmuls the step runs: the same dots, of the same sizes."""
  roll = implementations.make_rolls(*size)

  def dots(runner):
    flops = profile_step.dot_flops(runner.compiled.as_text())
    # The dots themselves (the fusions that wrap some of them are listed too).
    return collections.Counter(f for name, f in flops.items() if name.startswith('dot'))

  step_dots = dots(implementations.make_bach_jax_step(roll, 'float32'))
  assert sum(step_dots.values()) >= 10
  assert dots(implementations.make_matmul_floor(roll, 'float32')) == step_dots


def test_unknown_impl_is_a_one_line_usage_error(capsys):
  with pytest.raises(SystemExit):
    train_step.parse_args(['--impls', 'bach_jax,pytorch'])
  assert 'unknown pytorch' in capsys.readouterr().err
