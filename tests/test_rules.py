"""Voice-leading rules at sampling time (models/rules.py): exact, shared with the metrics."""

import functools
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bach_jax import config_base
from bach_jax import experiment
from bach_jax import generate
from bach_jax import loaded
from bach_jax import pieces as pieces_lib
from bach_jax import voice_leading as vl
from bach_jax.models import family
from bach_jax.models import lstm
from bach_jax.models import lstm_attn
from bach_jax.models import rules
from bach_jax.models import vae
from bach_jax.models.common import SampleRequest
from bach_jax.models.frame_slots import _Info
from test_lstm_attn import _batch, _config, _params, _roll
from train_helpers import load_config, run_main

WIDE = dict(min_pitch=36, max_pitch=84)  # Room for every rule to bind.


def _info(num_voices=4, order='soprano_first', lo=60, hi=69):
  return _Info(_config(num_voices=num_voices, voice_order=order, min_pitch=lo, max_pitch=hi),
               num_voices)


def _probs(logits):
  return np.asarray(jax.nn.softmax(logits, axis=-1))


def test_alto_whose_only_choice_makes_parallel_fifths_with_the_soprano():
  # Previous frame S=67 (G4), A=60 (C4): a fifth. The soprano moves to 69 (A4); the
  # model's only alto pitch is 62 (D4), a parallel fifth, besides a rare rest.
  info = _info()
  slots = jnp.array([[69 - info.lo, 0, 0, 0]])
  prev = jnp.array([[67, 60, 55, 48]])
  logits = jnp.full((1, info.num_classes), -1e9).at[0, 62 - info.lo].set(0.0)
  logits = logits.at[0, info.num_keys].set(-5.0)  # REST.
  free = _probs(logits)[0, 62 - info.lo]
  hard, fallback = rules.adjust(info, rules.parse('parallels', 'inf'), 1, logits, slots, prev)
  assert _probs(hard)[0, 62 - info.lo] == 0.0 and not bool(fallback[0])
  assert _probs(hard)[0, info.num_keys] == pytest.approx(1.0)
  soft, _ = rules.adjust(info, rules.parse('parallels', 3.0), 1, logits, slots, prev)
  p = _probs(soft)[0, 62 - info.lo]
  assert 0.0 < p < free - 0.05
  assert p == pytest.approx(np.exp(-3) / (np.exp(-3) + np.exp(-5)), rel=1e-5)
  for adjusted in (hard, soft):
    assert float(np.sum(_probs(adjusted))) == pytest.approx(1.0, abs=1e-6)
  # The rule is the metric's: the frame counts one parallel fifth there.
  counts = vl.voice_leading_counts(np.array([[[67, 60, 55, 48], [69, 62, 55, 48]]]), [2])
  assert counts['parallel_fifths'][0] == 1


def test_every_pitch_breaking_a_rule_falls_back_to_the_fewest_violations():
  # S, A in unison on 60; S moves to 62 (the lowest pitch): alto 62 is a parallel
  # unison, every higher alto pitch crosses the soprano. Only the rest is legal.
  info = _info(lo=62)
  slots = jnp.array([[0, 0, 0, 0]])
  prev = jnp.array([[60, 60, 55, 48]])
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(1, info.num_classes)), jnp.float32)
  rule_set = rules.parse('parallels,crossing', 'inf')
  v = rules.violations(info, rule_set, 1, slots, prev)
  assert np.all(np.asarray(v)[0, :-1] == 1) and int(v[0, -1]) == 0
  hard, fallback = rules.adjust(info, rule_set, 1, logits, slots, prev)
  assert bool(fallback[0])
  np.testing.assert_allclose(_probs(hard), _probs(logits), rtol=1e-6)  # All tie: unchanged.
  # Soft: every pitch loses the same, the rest gains.
  soft, _ = rules.adjust(info, rules.parse('parallels,crossing', 2.0), 1, logits, slots, prev)
  ratio = _probs(soft)[0, :-1] / _probs(logits)[0, :-1]
  np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
  assert _probs(soft)[0, -1] > _probs(logits)[0, -1]


@pytest.mark.parametrize('order', ['soprano_first', 'bass_first'])
def test_violations_count_what_the_metric_counts(order):
  """Per rule, the violations of the chosen classes of a frame, summed over its heads,
  equal voice_leading_counts of that frame (and its transition from the previous one)."""
  info = _info(order=order, lo=36, hi=84)
  rng = np.random.default_rng(1)
  n = 3000
  before = rng.integers(40, 80, size=(n, 4))
  step = np.where(rng.random((n, 1)) < 0.5, rng.integers(-3, 4, size=(n, 1)),
                  rng.integers(-3, 4, size=(n, 4)))  # Often the same motion everywhere.
  after = before + step
  for a in (before, after):
    a[rng.random(a.shape) < 0.05] = -1
  frames = np.stack([before, after], axis=1)
  counts = vl.voice_leading_counts(frames, np.full(n, 2))
  per_frame = vl.voice_leading_counts(after[:, None], np.ones(n, int))
  target = jnp.asarray(np.where(after < 0, info.num_keys, after - info.lo)[:, info.order])
  for name in vl.RULES:
    rule_set = rules.parse(name, 1.0)
    got = sum(np.take_along_axis(np.asarray(rules.violations(
        info, rule_set, j, target, jnp.asarray(before))), np.asarray(target[:, j:j + 1]), 1)[:, 0]
        for j in range(4))
    rates = vl.RULES[name]
    source = per_frame if name in ('crossing', 'spacing', 'range') else counts
    want = sum(source[vl.VOICE_LEADING_RATES[r][0]] for r in rates)
    np.testing.assert_array_equal(got, want, err_msg=name)
    assert want.sum() > 10, name  # The data exercises the rule.


@pytest.mark.parametrize('penalty', [2.0, 'inf'])
def test_constrained_frame_probabilities_sum_to_one(penalty):
  rule_set = rules.parse('all', penalty)
  # Voice mode: 4 voices over {60, 61, 62, REST}, after a history in those pitches.
  config = _config(num_voices=4, min_pitch=60, max_pitch=62)
  hist = _batch(np.random.default_rng(3), 1, 5, lo=60, hi=63)
  hist['voices'] = hist['voices'].at[0, -1].set(jnp.array([61, 61, 60, 60]))
  frames = np.array(list(itertools.product([-1, 60, 61, 62], repeat=4)))
  voices = jnp.concatenate([jnp.repeat(hist['voices'], len(frames), axis=0),
                            jnp.asarray(frames[:, None], jnp.int32)], axis=1)
  batch = {'roll': jnp.asarray(_roll(voices)), 'voices': voices}
  params = _params(config, batch, scale=0.8)
  nll = _jit_nll(config, rule_set)(params, batch)
  free = _jit_nll(config, None)(params, batch)
  np.testing.assert_allclose(float(jnp.sum(jnp.exp(-nll[:, -1]))), 1.0, rtol=1e-5)
  assert float(jnp.max(jnp.abs(nll[:, -1] - free[:, -1]))) > 0.5  # The rules bind.
  # Set mode: the 16 subsets of 4 keys after a 4-note frame.
  config = _config(num_voices=0, min_pitch=60, max_pitch=63)
  subsets = np.array(list(itertools.product([False, True], repeat=4)))
  roll = np.zeros((16, 3, 88), bool)
  roll[:, 1, 60 - 21:64 - 21] = True
  roll[:, 2, 60 - 21:64 - 21] = subsets
  batch = {'roll': jnp.asarray(roll)}
  params = _params(config, batch, scale=0.8)
  nll = _jit_nll(config, rule_set)(params, batch)
  np.testing.assert_allclose(float(jnp.sum(jnp.exp(-nll[:, -1]))), 1.0, rtol=1e-5)


def _jit_nll(config, rule_set):
  """lstm_attn.frame_nll jitted (op by op, a test took 20 s)."""
  return jax.jit(functools.partial(lstm_attn.frame_nll, config, rules=rule_set))


@pytest.mark.parametrize('num_voices', [4, 0])
def test_stepwise_log_probability_equals_teacher_forced_nll_under_the_rules(num_voices):
  config = _config(num_voices=num_voices, **WIDE)
  batch = _batch(np.random.default_rng(4), 3, 14, lo=50, hi=72)
  params = _params(config, batch)
  free = _jit_nll(config, None)(params, batch)
  for rule_set in (rules.parse('parallels,hidden', 1.0), rules.parse('all', 2.0)):
    whole = jax.jit(functools.partial(lstm_attn.frame_nll, config, rules=rule_set))(
        params, batch)
    stepwise = jax.jit(functools.partial(lstm_attn.score_stepwise, config, rules=rule_set))(
        params, batch)
    np.testing.assert_allclose(stepwise, whole, rtol=1e-4, atol=1e-4)
    assert float(jnp.max(jnp.abs(whole - free))) > 1e-2, rule_set  # The rules bind.
  # eval_step scores under config.sample.rules (finite penalty), and refuses inf.
  config.sample.rules, config.sample.rule_penalty = 'all', 2.0
  sums = jax.jit(functools.partial(lstm_attn.eval_step, config))(params, batch)
  np.testing.assert_allclose(sums['nll_sum'], jnp.sum(whole), rtol=1e-5)
  config.sample.rule_penalty = float('inf')
  with pytest.raises(config_base.ConfigError, match='config.sample.rule_penalty'):
    jax.jit(functools.partial(lstm_attn.eval_step, config))(params, batch)


def _sample(config, params, n=8, steps=48, seed=0, **request):
  fn = jax.jit(functools.partial(lstm_attn.sample, config))
  out = fn(params, jax.random.key(seed), SampleRequest(num_pieces=n, num_steps=steps,
                                                        temperature=1.5, **request))
  return jax.device_get(out)


def _counts(out, start=0):
  voices = out['voices'] if 'voices' in out else vl.voices_from_roll(out['roll'])
  voices = np.asarray(voices)[:, start:]
  return vl.voice_leading_counts(voices, np.full(len(voices), voices.shape[1]))


@pytest.mark.parametrize('num_voices', [4, 0])
def test_samples_under_hard_rules_break_none_as_the_metric_counts(num_voices):
  config = _config(num_voices=num_voices, **WIDE)
  params = _params(config, _batch(np.random.default_rng(5), 1, 3), scale=0.5)
  free = _counts(_sample(config, params))
  config.sample.rules = 'all'
  out = _sample(config, params)
  counts = _counts(out)
  assert out['rule_fallbacks'].shape == (8,)
  for name, rates in vl.RULES.items():
    for rate in rates:
      count, occasions = vl.VOICE_LEADING_RATES[rate]
      assert counts[count].sum() <= out['rule_fallbacks'].sum(), (rate, counts[count])
      assert counts[occasions].sum() > 0, rate
  if num_voices:
    assert free['parallel_fifths'].sum() + free['parallel_octaves'].sum() > 0
    assert free['voice_crossings'].sum() > 0 and out['rule_fallbacks'].sum() == 0


def test_every_rule_off_samples_bit_identically():
  config = _config(num_voices=4)
  params = _params(config, _batch(np.random.default_rng(6), 1, 3), scale=0.8)
  old = _config(num_voices=4)  # A run's config from before the option existed,
  del old.sample['rules'], old.sample['rule_penalty']  # its defaults filled as every
  a = _sample(config_base.fill_defaults(old), params, seed=3)  # load path fills them.
  b = _sample(config, params, seed=3)  # rules = '' (the default).
  assert set(b) == {'roll', 'voices'}
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  # Rules that cannot bind (every voice's range holds MIDI 60, the only pitch) go the
  # constrained path and must draw the very same samples.
  narrow = _config(num_voices=4, min_pitch=60, max_pitch=60)
  params = _params(narrow, _batch(np.random.default_rng(6), 1, 3, lo=60, hi=61), scale=0.8)
  plain = _sample(narrow, params, seed=4)
  for penalty in (1.0, float('inf')):
    narrow.sample.rules, narrow.sample.rule_penalty = 'range', penalty
    ruled = _sample(narrow, params, seed=4)
    np.testing.assert_array_equal(ruled['voices'], plain['voices'])
  assert len(np.unique(plain['voices'])) == 2  # Both the pitch and the rest are drawn.


@pytest.mark.parametrize('order', ['soprano_first', 'bass_first'])
def test_harmonization_under_rules_keeps_primer_and_melody(order):
  config = _config(num_voices=4, voice_order=order, **WIDE)
  rng = np.random.default_rng(7)
  primer = _batch(rng, 2, 4, lo=55, hi=70)
  params = _params(config, primer, scale=0.5)
  melody = rng.integers(62, 76, size=(2, 4 + 20))
  config.sample.rules = 'parallels,crossing'
  out = _sample(config, params, n=2, steps=20, primer=primer['roll'],
                primer_voices=primer['voices'], melody=jnp.asarray(melody, jnp.int32))
  np.testing.assert_array_equal(out['voices'][:, :4], primer['voices'])
  np.testing.assert_array_equal(out['voices'][:, 4:, 0], melody[:, 4:])
  moves, frames = _counts(out, start=3), _counts(out, start=4)  # After the primer.
  for counts, name in ((moves, 'parallel_fifths'), (moves, 'parallel_octaves'),
                       (frames, 'voice_crossings')):
    assert counts[name].sum() <= out['rule_fallbacks'].sum(), name


def test_loaded_model_samples_and_scores_under_rules(make_piece):
  config = _config(num_voices=4, **WIDE)
  params = _params(config, _batch(np.random.default_rng(8), 1, 3), scale=0.5)
  model = loaded.LoadedModel(config, lstm_attn, params, 0,
                               {'num_voices': 4, 'steps_per_quarter': 4})
  plain = model.sample(num_pieces=2, num_steps=16, seed=1)
  again = model.sample(num_pieces=2, num_steps=16, seed=1, rules='')
  np.testing.assert_array_equal(plain[0].voices, again[0].voices)
  ruled = model.sample(num_pieces=2, num_steps=16, seed=1, rules='all', rule_penalty=3.0)
  assert all('rule_fallbacks' in p.meta for p in ruled)
  assert 'rule_fallbacks' not in plain[0].meta
  pieces = [make_piece(np.random.default_rng(9), 20, low=50, high=72) for _ in range(2)]
  free = model.score(pieces)['frame_nll']
  soft = model.score(pieces, rules='all', rule_penalty=3.0)['frame_nll']
  assert np.isfinite(soft) and soft != free
  with pytest.raises(config_base.ConfigError, match='config.sample.rules'):
    model.sample(rules='fifths')
  with pytest.raises(config_base.ConfigError, match='config.sample.rule_penalty'):
    model.sample(rules='all', rule_penalty=0.0)


def test_families_without_slot_heads_refuse_the_option():
  assert lstm_attn.CAPABILITIES.rules and not lstm.CAPABILITIES.rules
  for module in (lstm, vae):
    with pytest.raises(config_base.ConfigError) as e:
      generate.check_request_supported(module, rules='parallels')
    message = str(e.value)
    assert 'config.sample.rules' in message and '\n' not in message
  family.check_rules(lstm, '')  # Off: nothing to refuse.
  with pytest.raises(config_base.ConfigError, match='config.sample.rules'):
    experiment.setup(load_config('lstm', 'test', **{'sample.rules': 'parallels'}))


@pytest.mark.parametrize('rule_names,penalty,key', [
    ('parallels,fifths', 1.0, 'rules'), ('all', -1.0, 'rule_penalty'),
    ('all', float('nan'), 'rule_penalty')])
def test_invalid_rule_options_name_the_key(rule_names, penalty, key):
  config = load_config('lstm_attn', 'test', **{'sample.rules': rule_names,
                                                'sample.rule_penalty': penalty})
  with pytest.raises(config_base.ConfigError, match=f'config.sample.{key}'):
    config_base.validate(config)


def test_old_run_configs_get_the_rule_options_and_the_cli_takes_them(tmp_path, cache_dir):
  config = load_config('lstm_attn', 'test')
  del config.sample['rules'], config.sample['rule_penalty']
  config_base.fill_defaults(config)
  assert config.sample.rules == '' and np.isinf(config.sample.rule_penalty)
  assert rules.from_config(config) is None
  common = [f'--workdir={tmp_path}/w', f'--config.data.cache_dir={cache_dir}']
  proc = run_main('--config=configs/lstm.py:test', *common, '--config.sample.rules=parallels')
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'config.sample.rules' in proc.stderr and 'Traceback' not in proc.stderr
  proc = run_main('--config=configs/lstm_attn.py:test', '--mode=prepare', *common,
                  '--config.sample.rules=parallels,crossing', '--config.sample.rule_penalty=inf')
  assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_trained_run_samples_scores_and_loads_under_rules_from_the_cli(trained_run, tmp_path):
  """The shared lstm_attn run end to end: --mode=sample with a primer under hard rules,
  --mode=evaluate scoring the soft-constrained model (and its samples' metrics), and
  load_model(workdir).sample with a primer and a clamped melody under the rules."""
  workdir, result = trained_run('lstm_attn')
  out = tmp_path / 'out'
  proc = run_main(f'--workdir={workdir}', '--mode=sample', f'--outdir={out}',
                  '--config.sample.rules=parallels,crossing', '--config.sample.num_pieces=2',
                  '--config.sample.num_steps=16', '--config.sample.primer=test:0',
                  '--config.sample.primer_steps=4', '--config.sample.write_wav=False')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert len(list(out.glob('*.mid'))) == 2
  assert 'rules parallels,crossing' in proc.stderr and 'fallbacks' in proc.stderr
  proc = run_main(f'--workdir={workdir}', '--mode=evaluate', '--config.sample.rules=parallels',
                  '--config.sample.rule_penalty=3')
  assert proc.returncode == 0, proc.stderr[-2000:]
  scored = json.loads(proc.stdout.strip().splitlines()[-1])
  plain = result['best_test_frame_nll']
  assert np.isfinite(scored['frame_nll']) and scored['frame_nll'] != pytest.approx(plain)
  assert np.isfinite(scored['sample_metrics']['distance'])
  model = loaded.load_model(workdir)
  corpus = experiment.setup(model.config).corpus
  primer = pieces_lib.load_piece('test:1', model.steps_per_quarter, corpus, num_steps=4)
  melody = pieces_lib.load_piece('test:1', model.steps_per_quarter, corpus).voices[:12, 0]
  pieces = model.sample(num_pieces=2, seed=3, rules='parallels', primer=primer, melody=melody)
  for piece in pieces:
    assert piece.voices.shape == (12, 4)
    np.testing.assert_array_equal(piece.voices[:4], primer.voices[:4])
    np.testing.assert_array_equal(piece.voices[4:, 0], melody[4:])
    assert 'rule_fallbacks' in piece.meta
