"""The comparison report end to end: two tiny trained runs -> report files; the script's chain."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bach_jax import compare
from bach_jax import compare_report
from bach_jax import experiment
from bach_jax import loaded
from bach_jax import models
from bach_jax.data import corpora
from train_helpers import REPO, RUN_STEPS

FAMILIES = ('lstm', 'vae')  # One exact likelihood, one bound.
STEPS = RUN_STEPS
SETTINGS = compare.Settings(num_pieces=4, num_steps=32, sample_batch=2)
PNGS = ('metrics_pitch.png', 'metrics_rhythm.png', 'metrics_voice_leading.png',
        'pitch_classes.png', 'rolls.png')


@pytest.fixture(scope='module')
def trained(tmp_path_factory, trained_run):
  """RUNS/<family>: the shared STEPS-step runs of configs/<family>.py:test
  (conftest.trained_run), linked into one folder -> (RUNS, results)."""
  root = str(tmp_path_factory.mktemp('runs'))
  results = {}
  for name in FAMILIES:
    workdir, results[name] = trained_run(name)
    os.symlink(workdir, os.path.join(root, name))
  return root, results


@pytest.fixture(scope='module')
def report(trained, tmp_path_factory):
  root, _ = trained
  out = str(tmp_path_factory.mktemp('report'))
  runs = [(os.path.join(root, name), name) for name in FAMILIES]
  return compare.build_report(runs, out, SETTINGS), out


def test_report_writes_every_file_it_promises(report):
  result, out = report
  assert sorted(result['files']) == sorted(PNGS + ('report.md', 'report.json', 'report.html',
                                                  'listen.html'))
  for name in result['files']:
    assert os.path.getsize(os.path.join(out, name)) > 1000, name
  with open(os.path.join(out, 'report.json')) as f:
    written = json.load(f, parse_constant=lambda c: pytest.fail(f'{c} in report.json'))
  assert [r['label'] for r in written['runs']] == list(FAMILIES)
  with open(os.path.join(out, 'report.md')) as f:
    text = f.read()
  for name in PNGS:
    assert f']({name})' in text


def _rows(out):
  """report.md's main table -> {first cell: cells}, with the header's cells under 'run'."""
  with open(os.path.join(out, 'report.md')) as f:
    lines = f.read().split('\n## ')[0].splitlines()
  rows = [[c.strip() for c in line.strip('|').split('|')] for line in lines
          if line.startswith('| ')]
  return {row[0]: row for row in rows}


def test_table_rows_and_likelihoods(report, trained):
  result, out = report
  _, results = trained
  rows = _rows(out)
  header = rows['run']
  assert set(rows) == {'run', *FAMILIES, 'Bach (held-out test)', 'Bach (valid vs test)'}
  for name in FAMILIES:
    row = dict(zip(header, rows[name]))
    run = next(r for r in result['runs'] if r['label'] == name)
    family = models.get_family(name)
    key = family.CAPABILITIES.select_by
    # The test-split likelihood is the one training reported for its best checkpoint.
    assert run['likelihood']['metric'] == key
    assert run['likelihood']['value'] == pytest.approx(results[name][f'best_test_{key}'],
                                                       rel=1e-5)
    assert row['likelihood (nats/frame)'].endswith(family.CAPABILITIES.likelihood)
    assert row['steps (best/trained)'] == f'{STEPS}/{STEPS}'
    assert row['train time'] != '-' and run['train_seconds'] > 0
    assert run['parameters'] > 1000 and row['params'] == f'{run["parameters"]:,}'
    assert run['sampling']['frames_per_second'] > 0
    assert not run['sampling']['rate_includes_compile']  # 2 calls of 2 pieces.
    assert run['likelihood']['kind'] == family.CAPABILITIES.likelihood
    assert len(row) == len(header)
    assert row['distance'] == compare_report._num(run['comparison']['distance'])
  assert dict(zip(header, rows['Bach (held-out test)']))['likelihood (nats/frame)'] == '-'


def test_reference_against_itself_is_distance_zero_and_noise_floor_is_not(report):
  result, out = report
  ref = result['reference']['comparison']
  assert ref['distance'] == 0.0
  assert all(m['overlap'] == pytest.approx(1.0) for m in ref['metrics'].values())
  floor = result['noise_floor']
  assert 0.0 < floor['distance'] < 10.0
  assert result['reference']['cut_to_steps'] == SETTINGS.num_steps
  assert result['reference']['frames'] <= SETTINGS.num_steps * result['reference']['pieces']
  assert _rows(out)['Bach (held-out test)'][3] == '0'
  for run in result['runs']:
    assert run['comparison']['distance'] > 0.0
  assert 'voice_crossing' not in ref['metrics']  # Guessed voices never cross.


def test_sample_metric_summary_is_json_safe_and_seeded(trained, cache_dir):
  root, _ = trained
  model = loaded.load_model(os.path.join(root, 'lstm'))
  model.config.data.cache_dir = cache_dir
  corpus = experiment.setup(model.config).corpus
  lines = []
  a = compare.sample_metric_summary(model, corpus, num_pieces=4, num_steps=32, seed=3,
                                    log=lines.append)
  b = compare.sample_metric_summary(model, corpus, num_pieces=4, num_steps=32, seed=3,
                                    log=lines.append)
  text = json.dumps(a, allow_nan=False)
  assert json.loads(text)['distance'] == a['distance'] > 0
  assert a['distance'] == b['distance'] and a['metrics'] == b['metrics']
  assert a['reference']['split'] == 'test' and a['reference']['cut_to_steps'] == 32
  assert 'frames/s' in lines[0] and '4/4 pieces' in lines[0]


def test_metric_summary_skips_a_corpus_without_a_test_split(make_piece):
  piece = make_piece(np.random.default_rng(0), 40)
  corpus = corpora.Corpus({'train': [piece], 'valid': [piece], 'test': [piece]}, [], 'x', 4)
  result = compare.sample_metric_summary(None, corpus, temperature=1.0)
  assert 'test split has 1 pieces' in result['skipped']


def test_run_arguments_and_labels(tmp_path):
  run = tmp_path / 'my_run'
  run.mkdir()
  assert compare.parse_run_arg(str(run)) == (str(run), 'my_run')
  assert compare.parse_run_arg(f'{run}:LSTM 512') == (str(run), 'LSTM 512')
  with pytest.raises(compare.CompareError, match='no such run directory'):
    compare.parse_run_arg(str(tmp_path / 'missing:label'))
  assert compare.unique_labels(['a', 'b', 'a']) == ['a', 'b', 'a (2)']


@pytest.mark.parametrize('make_dir,message', [(False, 'no such run directory'),
                                              (True, 'no config.json')])
def test_cli_user_errors_are_one_line(tmp_path, make_dir, message):
  run = tmp_path / 'run'
  if make_dir:
    run.mkdir()
  proc = subprocess.run([sys.executable, '-m', 'bach_jax.compare', str(run),
                         f'--out={tmp_path / "out"}'], cwd=REPO, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], lines


def _script(env, timeout=600):
  env = dict(os.environ, PYTHON=sys.executable, **env)
  return subprocess.run(['bash', os.path.join(REPO, 'scripts', 'compare_all.sh')], env=env,
                        cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_script_finds_every_family_with_a_config():
  proc = _script({'LIST': '1'})
  assert proc.returncode == 0, proc.stderr
  expected = [n for n in models.REGISTRY if os.path.exists(os.path.join(REPO, 'configs',
                                                                        f'{n}.py'))]
  assert proc.stdout.split() == expected and len(expected) >= 3


def test_script_smoke_trains_and_reports(trained, cache_dir, tmp_path):
  """SMOKE=1: a finished run is kept, a missing one trained, the report written.

  The smoke flags are the fixture's (STEPS steps, evaluated at the end, 4 x 32-step
  samples 2 at a time), so XLA's persistent cache (conftest) spares most compiles.
  """
  root, _ = trained
  runs, out = tmp_path / 'runs', str(tmp_path / 'report')
  runs.mkdir()
  (runs / 'vae').symlink_to(os.path.join(root, 'vae'))
  proc = _script({'SMOKE': '1', 'SMOKE_STEPS': str(STEPS), 'RUNS': str(runs), 'OUT': out,
                  'CACHE_DIR': cache_dir, 'FAMILIES': 'lstm vae'})
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert 'training lstm' in proc.stdout and 'vae: finished' in proc.stdout
  assert 'sampling lstm: 4/4 pieces' in proc.stdout  # The progress line.
  with open(os.path.join(out, 'report.json')) as f:
    written = json.load(f)
  assert [r['label'] for r in written['runs']] == ['lstm', 'vae']
  assert [r['trained_steps'] for r in written['runs']] == [STEPS, STEPS]
  assert [r['likelihood']['kind'] for r in written['runs']] == ['exact', 'bound']
  for name in written['files']:
    assert os.path.getsize(os.path.join(out, name)) > 1000, name
