"""The study (bach_jax.study, bach_jax.compare_study): equal budgets, seeds, intervals.

End to end on the ':test' configs through the command (two families, two seeds, two
budgets): every run trained once, every checkpoint scored once, the report with
intervals; run again, it trains and scores nothing; a lost score is scored again,
alone. The statistics on made-up numbers: the two-level bootstrap, the resampled
distance against compare()'s, the ranking's separation.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bach_jax import compare_study
from bach_jax import metrics
from bach_jax import study
from train_helpers import REPO

ARGS = ['--preset=test', '--fractions=0.5,1']


def run_study(out, *extra):
  return subprocess.run([sys.executable, '-m', 'bach_jax.study', f'--out={out}', *ARGS,
                         *extra], cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """A finished test-preset study: (folder, its output)."""
  out = str(tmp_path_factory.mktemp('study') / 'study')
  proc = run_study(out)
  assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
  return out, proc.stdout


def _scores(out):
  return sorted(os.path.relpath(os.path.join(d, f), out)
                for d, _, fs in os.walk(os.path.join(out, 'evals')) for f in fs)


def test_every_run_trained_and_every_checkpoint_scored_once(finished):
  out, stdout = finished
  assert _scores(out) == [f'evals/{fam}/seed{s}/f{f}.json' for fam in ('lstm', 'lstm_attn')
                          for s in (0, 1) for f in ('0.5', '1')]
  assert stdout.count('train ') == 4  # lstm and lstm_attn, seeds 0 and 1.
  for fam in ('lstm', 'lstm_attn'):
    for seed in (0, 1):
      done = json.load(open(os.path.join(out, 'runs', fam, f'seed{seed}', 'study_done.json')))
      assert done['frames'] == 7680  # The same budget: 32 steps x 16 windows x 15 frames.
  score = json.load(open(os.path.join(out, 'evals', 'lstm', 'seed1', 'f0.5.json')))
  assert score['step'] == 16 and score['frames'] == 3840
  assert len(score['likelihood']['replicates']) == 200
  assert len(score['metrics']['pitch_range']) == 8  # The preset's 8 samples.


def test_report_has_intervals_ranking_and_the_noise_floor(finished):
  out, _ = finished
  report = json.load(open(os.path.join(out, 'report', 'report.json')))
  assert sorted(report['ranking']) == ['lstm', 'lstm_attn']
  for fam in ('lstm', 'lstm_attn'):
    for frac in ('0.5', '1'):
      p = report['points'][fam][frac]
      for key in ('distance', 'likelihood'):
        mean, low, high = p[key]
        assert low <= mean <= high and low < high, (fam, frac, key, p[key])
      assert p['seeds'] == 2 and p['likelihood_kind'] == 'exact'
  noise = report['noise_floor']['distance']
  assert noise[1] < noise[2]
  md = open(os.path.join(out, 'report', 'report.md')).read()
  assert 'Bach: valid vs test (noise floor)' in md and 'Not separated' in md
  assert md.count(' [') > 20  # Intervals everywhere.
  assert os.path.getsize(os.path.join(out, 'report', 'study_budget.png')) > 10_000


def test_a_study_run_again_trains_and_scores_nothing_finished(finished, tmp_path):
  out, _ = finished
  stamps = {p: os.path.getmtime(os.path.join(out, p)) for p in _scores(out)}
  lost = 'evals/lstm_attn/seed0/f1.json'
  os.remove(os.path.join(out, lost))
  proc = run_study(out)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'train ' not in proc.stdout  # No run trained again.
  for path, stamp in stamps.items():
    if path != lost:
      assert os.path.getmtime(os.path.join(out, path)) == stamp, path
  assert os.path.exists(os.path.join(out, lost))  # Scored again, alone.


def test_two_level_bootstrap_holds_the_seed_spread():
  rng = np.random.default_rng(0)
  tight = rng.normal(0, 0.01, (3, 500))  # Each seed's own bootstrap: narrow.
  mean, low, high = compare_study.two_level([0.0, 0.0, 0.0], tight, rng)
  assert mean == 0.0 and high - low < 0.05
  spread = compare_study.two_level([-1.0, 0.0, 1.0], tight + np.array([[-1], [0], [1]]), rng)
  assert spread[0] == 0.0 and spread[2] - spread[1] > 1.0  # The seeds disagree: wide.


def test_resampled_distance_equals_compare_on_the_whole_set(make_piece):
  rng = np.random.default_rng(1)
  samples = metrics.set_metrics([make_piece(rng, 64) for _ in range(6)], 4)
  reference = metrics.set_metrics([make_piece(rng, 64, low=55, high=70) for _ in range(5)], 4)
  whole = metrics.compare(samples, reference)['distance']
  rows = np.array([np.arange(6), [0, 0, 0, 0, 0, 0], [5, 4, 3, 2, 1, 0]])
  got = metrics.distance_replicates(samples, reference, rows)
  np.testing.assert_allclose(got[[0, 2]], whole, rtol=1e-12)  # A permutation: the same set.
  one = {k: np.asarray(v)[[0]] for k, v in samples.items()}
  np.testing.assert_allclose(got[1], metrics.compare(one, reference)['distance'], rtol=1e-12)


def test_ranking_marks_overlapping_intervals():
  points = {'a': {'distance': (1.0, 0.9, 1.1)}, 'b': {'distance': (1.05, 1.0, 1.2)},
            'c': {'distance': (2.0, 1.9, 2.1)}}
  order, together = compare_study.ranking(points)
  assert order == ['a', 'b', 'c'] and together == [('a', 'b')]


def test_plan_splits_a_two_stage_family_budget():
  preset = study.dataclasses.replace(study.PRESETS['test'], families=('vqvae_prior',),
                                     seeds=1, budget=49_152)
  runs = study.plan(preset, '/nowhere', os.path.join(REPO, 'configs'))
  base, *stages = runs
  assert base.family == 'vqvae' and base.frames == 24_576 and not base.scores
  assert [s.scores[0][0] for s in stages] == [0.125, 0.25, 0.5, 1.0]
  assert [s.frames for s in stages] == [3_072, 6_144, 12_288, 24_576]
  for stage, (fraction, step) in zip(stages, base.keep):
    assert stage.overrides['train.init_from'] == f'{base.workdir}:{step}'
    assert base.frames * fraction + stage.frames == fraction * preset.budget


def test_bad_options_are_one_line(tmp_path):
  proc = run_study(str(tmp_path / 's'), '--families=lstm,nope')
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --families: unknown family 'nope'")
