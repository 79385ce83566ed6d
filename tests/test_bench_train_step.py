"""bench/train_step.py end to end on a tiny size: records, per-round ratios, the table."""

import json

import pytest

from bench import train_step


def test_main_reports_per_round_ratios_to_torch(tmp_path, capsys):
  pytest.importorskip('torch')
  out = tmp_path / 'bench.jsonl'
  train_step.main(['--sizes', '2x4', '--steps', '4', '--warmup', '0', '--impls',
                   'bach_jax,torch', '--skip', 'data,sampling', '--out', str(out)])
  records = [json.loads(line) for line in out.read_text().splitlines()]
  steps = {r['impl']: r for r in records if r['kind'] == 'train_step'}
  assert set(steps) == {'bach_jax', 'torch'}
  assert steps['torch']['ratio_vs_torch'] == 1.0
  jax_step = steps['bach_jax']
  assert jax_step['n'] == 4
  assert jax_step['ratio_p25'] <= jax_step['ratio_vs_torch'] <= jax_step['ratio_p75']
  assert jax_step['ratio_of_medians'] == pytest.approx(
      jax_step['median_ms'] / steps['torch']['median_ms'])
  assert 'p25-p75' in capsys.readouterr().out


def test_main_without_torch_has_no_ratios(tmp_path):
  out = tmp_path / 'bench.jsonl'
  train_step.main(['--sizes', '2x4', '--steps', '2', '--warmup', '0', '--impls', 'bach_jax',
                   '--skip', 'data,sampling', '--out', str(out)])
  steps = [json.loads(line) for line in out.read_text().splitlines()]
  steps = [r for r in steps if r['kind'] == 'train_step']
  assert len(steps) == 1 and 'ratio_vs_torch' not in steps[0] and steps[0]['n'] == 2
