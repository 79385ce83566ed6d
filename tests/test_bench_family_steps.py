"""bench/family_steps.py end to end with --quick on two families: records and the table."""

import json

import numpy as np
import pytest

from bench import family_steps


def test_quick_run_reports_each_family_beside_the_lstm(tmp_path, capsys):
  out = tmp_path / 'family_steps.jsonl'
  family_steps.main(['--quick', '--families', 'lstm_attn', '--out', str(out)])
  records = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r['kind'] for r in records].count('matmul_peak') == 2  # Start and end.
  assert all(r['gflops_best'] > 0 for r in records if r['kind'] == 'matmul_peak')
  steps = {r['family']: r for r in records if r['kind'] == 'family_step'}
  assert list(steps) == ['lstm', 'lstm_attn']  # The baseline is always run.
  lstm, attn = steps['lstm'], steps['lstm_attn']
  assert lstm['ratio_per_frame'] == lstm['ratio_p25'] == lstm['ratio_p75'] == 1.0
  for r in steps.values():
    assert r['n'] == 2 and r['median_ms'] > 0 and r['compile_s'] > 0
    assert r['frames'] == r['batch'] * r['steps'] and r['window'] == r['steps'] + 1
    assert r['ms_per_frame'] == pytest.approx(r['median_ms'] / r['frames'])
    assert r['ratio_p25'] <= r['ratio_per_frame'] <= r['ratio_p75']
    assert np.isfinite(r['last_loss'])
    # FLOPs from the cost analysis, or the reason they are missing.
    assert (r['gflop'] > 0 and r['pct_peak'] > 0) if r['gflop'] else r['flops_unavailable']
  assert attn['num_voices'] == 4  # -1 resolved as on the chorales (voice mode).
  assert 'target_ratio' not in attn
  table = capsys.readouterr().out
  assert '| family | size (BxT) |' in table and 'x lstm/frame' in table
  assert '| lstm | 4x15 |' in table and '| lstm_attn | 4x15 |' in table


def test_make_batch_has_the_trainers_keys():
  batch = family_steps.make_batch(3, 9)
  assert batch['roll'].shape == (3, 9, 88) and batch['roll'].dtype == bool
  assert batch['voices'].shape == (3, 9, 4) and batch['voices'].dtype == np.int32
  assert batch['mask'].shape == (3,) and batch['start'][:, 0].all()
  assert batch['frame_mask'].shape == (3, 9) and (batch['voices'][:, 0] == -1).all()
  # The roll holds exactly the voices' sounding pitches.
  b, t, v = np.nonzero(batch['voices'] >= 0)
  assert batch['roll'][b, t, batch['voices'][b, t, v] - 21].all()
  assert batch['roll'].sum() <= (batch['voices'] >= 0).sum()


def test_hlo_flops_counts_loop_bodies_times_their_trips():
  """XLA's cost analysis counts a scan's body once; hlo_flops counts it per step."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def scan(w, h):
    return jax.lax.scan(lambda h, _: (jnp.tanh(h @ w), None), h, None, length=10)[0]
  compiled = jax.jit(scan).lower(jnp.ones((32, 32)), jnp.ones((8, 32))).compile()
  assert family_steps.hlo_flops(compiled.as_text()) == (10 * 2 * 8 * 32 * 32, 0)
  conv = nn.Conv(16, (4,), strides=(2,))
  x = jnp.ones((2, 12, 6))
  params = conv.init(jax.random.key(0), x)
  compiled = jax.jit(lambda p: conv.apply(p, x).sum()).lower(params).compile()
  assert family_steps.hlo_flops(compiled.as_text())[0] == 2 * 2 * 6 * 16 * 4 * 6


def test_parse_args_always_includes_the_baseline_and_refuses_unknown(capsys):
  args = family_steps.parse_args(['--families', 'vae', '--sizes', 'vae=8x16'])
  assert args.families == ['lstm', 'vae'] and args.sizes == {'vae': (8, 16)}
  assert (args.rounds, args.warmup) == (10, 2)
  with pytest.raises(SystemExit):
    family_steps.parse_args(['--families', 'lstm,transformer'])
  assert 'unknown transformer' in capsys.readouterr().err


def test_variants_set_model_keys_on_top_of_the_paper_size(capsys):
  args = family_steps.parse_args(
      ['--families', 'vae', '--variants', 'vae:output=bernoulli;decoder_layers=1'])
  label = 'vae:output=bernoulli;decoder_layers=1'
  assert args.variants == {label: ('vae', {'output': 'bernoulli', 'decoder_layers': 1})}
  config, batch, steps, overrides = family_steps.family_config(
      'vae', args, args.variants[label][1])
  assert (batch, steps) == family_steps.PAPER_SIZES['vae'][:2]
  assert config.model.output == 'bernoulli' and config.model.decoder_layers == 1
  assert config.model.encoder_hidden == family_steps.HIDDEN  # The paper size still applies.
  assert overrides['output'] == 'bernoulli'
  for bad in ('vae', 'vae:output', 'rnn:output=x'):
    with pytest.raises(SystemExit):
      family_steps.parse_args(['--variants', bad])
    assert 'not FAMILY:KEY=VALUE' in capsys.readouterr().err
