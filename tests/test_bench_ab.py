"""bench/ab_step.py: variants load (or fail with one line), and the step really uses them."""

import json
import shutil
import textwrap

import pytest

from bench import ab_step
from bench import implementations
from bach_jax.models import layers


def test_load_variant_errors_name_the_variant(tmp_path):
  with pytest.raises(ab_step.VariantError, match='nope.py: no such file'):
    ab_step.load_variant(str(tmp_path / 'nope.py'), str(tmp_path))
  empty = tmp_path / 'empty.py'
  empty.write_text('X = 1\n')
  with pytest.raises(ab_step.VariantError, match='empty.py: defines no LSTMStack'):
    ab_step.load_variant(str(empty), str(tmp_path))
  broken = tmp_path / 'broken.py'
  broken.write_text('import no_such_module_here\n')
  with pytest.raises(ab_step.VariantError, match='broken.py: cannot be imported'):
    ab_step.load_variant(str(broken), str(tmp_path))
  with pytest.raises(ab_step.VariantError, match='git:no-such-rev-'):
    ab_step.load_variant('git:no-such-rev-0123', str(tmp_path))


def test_paired_ratios_are_per_round():
  ratios = implementations.paired_ratios({'current': [1.0, 2.0], 'v': [2.0, 2.0]}, 'current')
  assert ratios == {'current': [1.0, 1.0], 'v': [2.0, 1.0]}
  quartiles = implementations.ratio_quartiles({'c': [1.0] * 4, 'v': [1.0, 2.0, 3.0, 4.0]}, 'c')
  assert quartiles == {'c': (1.0, 1.0, 1.0), 'v': (2.5, 1.75, 3.25)}


class _Recorder:
  """A runner that logs its name each time it steps."""

  def __init__(self, name, log):
    self.name, self.log = name, log

  def step(self):
    self.log.append(self.name)
    return {'loss': float(len(self.log))}


def test_run_rounds_runs_each_once_per_round_in_shuffled_orders():
  log = []
  runners = {name: _Recorder(name, log) for name in 'abc'}
  times, cpu_times, losses = implementations.run_rounds(runners, rounds=12, seed=1)
  rounds = [log[i:i + 3] for i in range(0, len(log), 3)]
  assert len(rounds) == 12 and all(sorted(r) == ['a', 'b', 'c'] for r in rounds)
  assert len({tuple(r) for r in rounds}) > 1  # Not a fixed A B C order.
  assert all(len(times[n]) == len(cpu_times[n]) == 12 for n in 'abc')
  assert losses[rounds[-1][-1]] == 36.0


def test_main_times_each_variant_in_the_benchmark_step(tmp_path, capsys):
  same = tmp_path / 'same.py'
  shutil.copy(layers.__file__, same)
  silent = tmp_path / 'silent.py'  # Changes the model: its loss must differ.
  silent.write_text(textwrap.dedent('''
      import flax.linen as nn
      import jax.numpy as jnp
      from bach_jax.models import layers

      class LSTMStack(layers.LSTMStack):
        @nn.compact
        def __call__(self, x, carry=None, *, deterministic=True):
          h, carry = super().__call__(x, carry, deterministic=deterministic)
          return jnp.zeros_like(h), carry
  '''))
  out = tmp_path / 'ab.jsonl'
  ab_step.main(['--variant', str(same), '--variant', str(silent), '--sizes', '2x4',
                '--rounds', '2', '--warmup', '0', '--out', str(out)])
  records = {r['variant']: r for r in map(json.loads, out.read_text().splitlines())}
  assert set(records) == {'current', str(same), str(silent)}
  assert records['current']['ratio_vs_current'] == 1.0
  assert all(r['rounds'] == 2 and r['ratio_vs_current'] > 0 for r in records.values())
  assert records[str(same)]['last_loss'] == records['current']['last_loss']
  assert records[str(silent)]['last_loss'] != records['current']['last_loss']
  assert 'x current' in capsys.readouterr().out


def test_main_exits_with_one_line_for_a_bad_variant(tmp_path):
  with pytest.raises(SystemExit, match='bench.ab_step: variant .*missing.py: no such file'):
    ab_step.main(['--variant', str(tmp_path / 'missing.py')])
