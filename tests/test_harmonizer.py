"""The harmonizer (models/harmonizer.py): a masked conditional model whose score is the
exact -log q(missing | given), and which sees the given line on both sides.

What the family contract test cannot see: the score equals the step-by-step sampler's
log-probabilities; given cells are never changed, whatever is sampled around them; a
given cell after a span changes the model's distribution inside it (it reads the future)
while a causal model's does not; the masks; the command line and the API (harmonize a
bass line, rewrite a span), and a resume after SIGTERM giving the same losses.
"""

import os

import jax
import numpy as np
import pytest

import bach_jax
from bach_jax import experiment
from bach_jax import generate
from bach_jax import metric_writers
from bach_jax import train
from bach_jax.data import pianoroll
from bach_jax.models import harmonizer
from bach_jax.models import lstm_attn
from train_helpers import load_config, run_main, sigterm_at_batch


def _config(**overrides):
  return load_config('harmonizer', 'test', **{'model.num_voices': 4, 'model.dropout_rate': 0.0,
                                               **overrides})


def _batch(rng, rows=2, steps=13):
  voices = rng.integers(55, 72, (rows, steps, 4)).astype(np.int32)
  voices[:, 0] = -1  # The start frame.
  voices[rng.random(voices.shape) < 0.1] = -1
  roll = np.zeros((rows, steps, 88), bool)
  for b, t, v in zip(*np.nonzero(voices >= 0)):
    roll[b, t, voices[b, t, v] - 21] = True
  start = np.zeros((rows, steps), bool)
  start[:, 0] = True
  return {'roll': roll, 'voices': voices, 'start': start,
          'frame_mask': ~start}


@pytest.fixture(scope='module')
def model():
  config = _config()
  state = harmonizer.init(config, jax.random.key(0), _batch(np.random.default_rng(0)))
  # Spread the params, so that every input visibly moves the output.
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(1), p.shape),
                        state.params)
  return config, params


def test_score_equals_the_stepwise_samplers_log_probabilities(model):
  config, params = model
  batch = _batch(np.random.default_rng(1))
  for given in (harmonizer.first_slot_given((2, 12, 4)),
                harmonizer.random_given(config, jax.random.key(3), (2, 12, 4))):
    forced = harmonizer.slot_nlls(config, params, batch, given)
    stepwise = harmonizer.score_stepwise(config, params, batch, given)
    np.testing.assert_allclose(np.sum(forced * ~given, -1), stepwise, rtol=2e-5, atol=2e-5)


def test_a_given_cell_after_the_span_changes_the_span_a_causal_model_does_not(model):
  config, params = model
  batch = _batch(np.random.default_rng(2))
  given = np.ones((2, 12, 4), bool)
  given[:, 2:6, 1] = False  # The alto of target frames 2..5 is written.
  changed = {k: v.copy() for k, v in batch.items()}
  changed['voices'][:, 10, 0] = np.where(changed['voices'][:, 10, 0] == 60, 62, 60)
  changed['roll'][:, 10] = False
  for b in range(2):
    for v in changed['voices'][b, 10]:
      if v >= 0:
        changed['roll'][b, 10, v - 21] = True
  span = lambda x: np.asarray(harmonizer.slot_nlls(config, params, x, given))[:, 2:6, 1]
  assert np.abs(span(batch) - span(changed)).max() > 1e-4  # It hears the future.
  causal = lstm_attn.init(config, jax.random.key(0), batch).params
  cnll = lambda x: np.asarray(lstm_attn.frame_nll(config, causal, x))[:, 2:6]
  np.testing.assert_array_equal(cnll(batch), cnll(changed))  # The causal model does not.


def test_given_cells_are_never_changed(model):
  config, params = model
  rng = np.random.default_rng(4)
  given = rng.integers(55, 72, (2, 16, 4)).astype(np.int32)
  given[rng.random(given.shape) < 0.5] = harmonizer.MISSING
  given[:, :, 2] = -1  # A resting given voice stays at rest.
  request = generate.make_request(config, num_pieces=2, given=given[0])
  request = request.replace(given=given)
  outs = [harmonizer.sample(config, params, jax.random.key(s), request) for s in (0, 1)]
  keep = given >= -1
  for out in outs:
    np.testing.assert_array_equal(np.asarray(out['voices'])[keep], given[keep])
  assert (np.asarray(outs[0]['voices']) != np.asarray(outs[1]['voices']))[~keep].any()
  config.sample.rules, config.sample.rule_penalty = 'all', float('inf')
  out = harmonizer.sample(config, params, jax.random.key(0), request)
  np.testing.assert_array_equal(np.asarray(out['voices'])[keep], given[keep])


def test_masks_of_every_kind():
  config = _config(**{'model.mask_weights': '0.45,0.25,0.2,0.1', 'model.mask_first_slot': 0.5})
  given = np.asarray(harmonizer.random_given(config, jax.random.key(0), (400, 32, 4)))
  whole = given.all(axis=1)  # Slots given throughout, per row.
  counts = {'voice': int(np.sum((whole.sum(-1) == 1) & (given.sum((1, 2)) == 32))),
            'none': int(np.sum(~given.any((1, 2)))),
            'span': int(np.sum(given.sum((1, 2)) >= 3 * 32 + 1) - 0)}
  assert counts['voice'] > 100 and counts['none'] > 10 and counts['span'] > 50, counts
  first = whole[:, 0] & (whole.sum(-1) == 1) & (given.sum((1, 2)) == 32)
  assert first.sum() > 0.3 * counts['voice']  # The soprano is the given voice half the time.


@pytest.fixture(scope='module')
def run(trained_run):
  return trained_run('harmonizer')[0]


def test_harmonize_a_bass_line_and_rewrite_a_span(run, tmp_path, cache_dir):
  model = bach_jax.load_model(run)
  piece = experiment.setup(model.config).corpus.splits['test'][0]
  bass = piece.voices[:64, 3]
  out = model.harmonize(bass, voice='bass', num_pieces=2, seed=0)
  assert all((p.voices[:, 3] == bass).all() for p in out)
  assert out[0].meta['voice_names'] == ['Soprano', 'Alto', 'Tenor', 'Bass (given)']
  short = pianoroll.PianoRoll(piece.roll[:64], piece.voices[:64], 4, dict(piece.meta))
  for p in model.inpaint(short, (16, 48), ('alto', 'tenor'), num_pieces=2, temperature=0.8):
    np.testing.assert_array_equal(np.delete(p.voices, [1, 2], 1),
                                  np.delete(short.voices, [1, 2], 1))
    np.testing.assert_array_equal(p.voices[:16], short.voices[:16])
    np.testing.assert_array_equal(p.voices[48:], short.voices[48:])
  path = str(tmp_path / 'bass.mid')
  pianoroll.to_midi(pianoroll.PianoRoll(pianoroll.voices_to_roll(bass[:, None]), None, 4, {}),
                    path)
  proc = run_main(f'--workdir={run}', '--mode=sample', f'--outdir={tmp_path}/out',
                  f'--config.data.cache_dir={cache_dir}', f'--config.sample.harmonize={path}',
                  '--config.sample.given=bass', '--config.sample.num_pieces=1')
  assert proc.returncode == 0, proc.stderr[-3000:]
  written = pianoroll.from_midi(f'{tmp_path}/out/step24_0.mid', steps_per_quarter=4)
  assert (written.voices[:, 3] == bass[:written.num_steps]).all()
  proc = run_main(f'--workdir={run}', '--mode=inpaint', f'--outdir={tmp_path}/inp',
                  f'--config.data.cache_dir={cache_dir}', '--config.sample.inpaint=test:0',
                  '--config.sample.inpaint_span=8:40', '--config.sample.num_pieces=2')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(f for f in os.listdir(f'{tmp_path}/inp') if f.endswith('.mid')) == [
      'inpaint_0.mid', 'inpaint_1.mid', 'inpaint_original_0.mid']


def test_a_causal_model_refuses_what_it_cannot_see(trained_run, cache_dir, tmp_path):
  model = bach_jax.load_model(trained_run('lstm_attn')[0])
  with pytest.raises(generate.SampleError, match='harmonizes the soprano only'):
    model.harmonize([60] * 8, voice='bass')
  with pytest.raises(generate.SampleError, match='cannot rewrite a span'):
    model.inpaint(pianoroll.PianoRoll(np.zeros((8, 88), bool), np.full((8, 4), -1), 4, {}),
                  (0, 4))
  assert all((p.voices[:, 0] == 60).all() for p in model.harmonize([60] * 8, num_pieces=2))


def test_sigterm_and_resume_give_the_same_losses(tmp_path, cache_dir, monkeypatch):
  overrides = {'data.cache_dir': cache_dir, 'train.num_steps': 16, 'train.log_every': 4,
               'train.eval_every': 0, 'train.checkpoint_every': 8,
               'train.num_final_samples': 0}
  full = str(tmp_path / 'full')
  train.train_and_evaluate(load_config('harmonizer', 'test', **overrides), full)
  resumed = str(tmp_path / 'resumed')
  restore = sigterm_at_batch(monkeypatch, 11)
  assert train.train_and_evaluate(load_config('harmonizer', 'test', **overrides), resumed) == {
      'interrupted_at': 11}
  restore()
  train.train_and_evaluate(load_config('harmonizer', 'test', **overrides), resumed)
  losses = lambda w: {r['step']: r['train/loss'] for r in metric_writers.read_metrics(w)
                      if 'train/loss' in r}
  a, b = losses(full), losses(resumed)
  assert sorted(b) == list(range(1, 17))
  np.testing.assert_allclose([b[s] for s in range(12, 17)], [a[s] for s in range(12, 17)],
                             rtol=1e-5)
