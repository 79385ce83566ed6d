"""train.init_from: a chorale model fine-tuned on a folder of MIDI that are not chorales
(Palestrina, from music21's corpus), mismatches refused before training, load_params."""

import functools
import importlib.util
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from bach_jax import checkpoints
from bach_jax import config_base
from bach_jax import evaluate
from bach_jax import experiment
from bach_jax import finetune
from bach_jax import metric_writers
from bach_jax import models
from bach_jax import parallel
from bach_jax import train
from bach_jax.data import corpora
from train_helpers import REPO, load_config

NUM_FILES = 24  # The smallest whole Palestrina pieces: 17 train, 2 valid, 5 test.
QUIET = {'train.num_final_samples': 0}


@pytest.fixture(scope='module')
def palestrina(tmp_path_factory):
  """A folder of Palestrina mass movements as MIDI (music21 corpus -> .mid), written by
  scripts/music21_midi.py, as docs/results.md's fine-tuning example does."""
  folder = str(tmp_path_factory.mktemp('palestrina'))
  spec = importlib.util.spec_from_file_location(
      'music21_midi', os.path.join(REPO, 'scripts', 'music21_midi.py'))
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  script.main(['palestrina', folder, f'--num={NUM_FILES}'])
  assert len(os.listdir(folder)) == NUM_FILES
  return folder


@pytest.fixture(scope='module')
def chorale_run(tmp_path_factory):
  """configs/lstm.py:test trained on the embedded chorales (60 steps)."""
  workdir = str(tmp_path_factory.mktemp('chorales'))
  train.train_and_evaluate(load_config('lstm', 'test', **QUIET), workdir)
  return workdir


def run_main(*args):
  return subprocess.run([sys.executable, '-m', 'bach_jax.main', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600)


def valid_nll(config, params):
  """frame NLL of params on config.data's valid split."""
  family = models.get_family(config.model.name)
  corpus = corpora.load_corpus(config.data)
  mesh = parallel.make_mesh()
  return evaluate.evaluate_pieces(evaluate.make_eval_fn(family, config, mesh), family, config,
                                  params, corpus.splits['valid'], mesh,
                                  corpus.num_voices)['frame_nll']


def first_loss(workdir):
  return next(r['train/loss'] for r in metric_writers.read_metrics(workdir)
              if r.get('step') == 1 and 'train/loss' in r)


def test_chorale_model_fine_tuned_on_palestrina(chorale_run, palestrina, tmp_path):
  overrides = {**QUIET, 'data.source': f'midi_dir:{palestrina}', 'train.num_steps': 40,
               'train.eval_every': 20, 'train.checkpoint_every': 20}
  config = load_config('lstm', 'test', **overrides, **{'train.init_from': chorale_run})
  _, chorale_params = finetune.load_params(chorale_run)
  before = valid_nll(config, chorale_params)
  workdir = str(tmp_path / 'fine_tuned')
  result = train.train_and_evaluate(config, workdir)
  after = result['best_valid_frame_nll']
  print(f'Palestrina valid frame NLL: chorale model {before:.4f}, after 40 fine-tuning '
        f'steps {after:.4f}')
  assert after < before - 0.3, (before, after)
  # It started from the chorale params (an untrained model's first loss is ~61 nats).
  assert first_loss(workdir) < 20.0
  # A re-run resumes the fine-tuned run's own checkpoint; init_from is not read again.
  again = train.train_and_evaluate(config, workdir)
  assert again['step'] == 40 and again['best_valid_frame_nll'] == pytest.approx(after)


def test_mismatched_size_fails_before_training_in_one_line(chorale_run, tmp_path):
  workdir = tmp_path / 'bigger'
  proc = run_main('--config=configs/lstm.py:test', f'--workdir={workdir}',
                  '--config.model.hidden_size=64', f'--config.train.init_from={chorale_run}')
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
  assert len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert 'config.train.init_from' in lines[0]
  assert 'parameter out/kernel has shape (32, 88) there, (64, 88) here' in lines[0], lines[0]
  assert not (workdir / 'checkpoints').exists() or not os.listdir(workdir / 'checkpoints')
  assert not any('train/loss' in r for r in metric_writers.read_metrics(str(workdir)))


def fresh_state(name, **overrides):
  config = load_config(name, 'test', **overrides)
  family = models.get_family(config.model.name)
  num_voices = config.model.get('num_voices', 0)
  num_voices = None if num_voices is None or num_voices <= 0 else num_voices
  batch = experiment.example_batch(config, num_voices)
  return config, jax.jit(functools.partial(family.init, config))(jax.random.key(0), batch)


def save_run(workdir, config, state, step=1, num_voices=None):
  """A run's workdir with one checkpoint of state (as the trainer writes it: the config
  resolved for its corpus, the corpus's voice count in the checkpoint's meta)."""
  checkpoints.write_config(workdir, config)
  ckpt = checkpoints.Checkpointer(workdir)
  ckpt.save(step, state, {'epoch': 0}, {'step': step, 'num_voices': num_voices,
                                        'steps_per_quarter': 4})
  ckpt.wait()
  ckpt.close()


def test_another_family_or_voice_count_is_refused(chorale_run, tmp_path):
  mesh = parallel.make_mesh()
  _, attn4 = fresh_state('lstm_attn', **{'model.num_voices': 4})
  with pytest.raises(config_base.ConfigError,
                     match=r"config.train.init_from=.*a lstm model.*parameter "):
    finetune.init_from(chorale_run, attn4, mesh)
  save_run(str(tmp_path / 'attn4'), load_config('lstm_attn', 'test', **{'model.num_voices': 4}),
           attn4, num_voices=4)
  _, attn3 = fresh_state('lstm_attn', **{'model.num_voices': 3})
  with pytest.raises(config_base.ConfigError, match=r'parameter \S+ has shape .* there'):
    finetune.init_from(str(tmp_path / 'attn4'), attn3, mesh)


def test_load_params_picks_the_average_and_steps(tmp_path):
  config, state = fresh_state('lstm', **{'train.ema_decay': 0.9})
  ema = jax.tree.map(lambda p: p + 1.0, state.params)
  source = str(tmp_path / 'ema')
  save_run(source, config, state.replace(ema_params=ema), step=3)
  save_run(source, config, state.replace(ema_params=ema, params=ema), step=5)
  loaded, params = finetune.load_params(source)
  assert loaded.config.model.name == 'lstm'
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ema)):
    np.testing.assert_array_equal(a, b)
  assert loaded.step == 5  # No best checkpoint: the latest.
  assert loaded.path.name == '5'
  assert finetune.load_params(source, 3)[0].step == 3
  # A run that keeps an average starts it from the loaded params too; optimizer fresh.
  new = finetune.init_from(f'{source}:3', state, parallel.make_mesh(), log=lambda _: None)
  assert int(new.step) == 0
  for a, b in zip(jax.tree.leaves(new.ema_params), jax.tree.leaves(ema)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(config_base.ConfigError, match=r'no checkpoint at step 4 \(have \[3, 5\]\)'):
    finetune.init_from(f'{source}:4', state, parallel.make_mesh())
  with pytest.raises(config_base.ConfigError, match='config.json'):
    finetune.init_from(str(tmp_path / 'nothing'), state, parallel.make_mesh())


def test_init_from_into_a_part_of_a_bigger_model(tmp_path):
  """into='base': the other run's params become params['base']; the rest stays fresh."""
  from bach_jax.models import common  # pylint: disable=g-import-not-at-top
  config, state = fresh_state('lstm')
  trained = jax.tree.map(lambda p: p + 2.0, state.params)
  source = str(tmp_path / 'stage1')
  save_run(source, config, state.replace(params=trained))
  head = {'w': np.zeros((3, 4), np.float32)}
  bigger = common.create_state({'base': state.params, 'head': head}, config.train)
  new = finetune.init_from(source, bigger, parallel.make_mesh(), log=lambda _: None,
                           into='base')
  for a, b in zip(jax.tree.leaves(new.params['base']), jax.tree.leaves(trained)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(new.params['head']['w'], head['w'])
  with pytest.raises(config_base.ConfigError, match=r"into params\['head'\].*parameter"):
    finetune.init_from(source, bigger, parallel.make_mesh(), into='head')


@pytest.mark.parametrize('spec, expected', [
    ('/runs/a', ('/runs/a', None)),
    ('/runs/a:1200', ('/runs/a', 1200)),
    ('gs://bucket/run', ('gs://bucket/run', None)),
    ('gs://bucket/run:7', ('gs://bucket/run', 7)),
    ('rel/dir:x', ('rel/dir:x', None)),
])
def test_parse_spec(spec, expected):
  assert checkpoints.parse_spec(spec) == expected


def test_config_key_defaults_to_off():
  config = load_config('lstm', 'test')
  assert config.train.init_from == ''
  config_base.validate(config)


def test_init_from_keeps_the_state_a_family_holds_outside_the_optimizer(tmp_path):
  """A VQ-VAE fine-tuned from another run keeps that run's codebook statistics with its
  codebook (fresh statistics would pull the codebook back to its initial values)."""
  config = load_config('vqvae', 'test')
  config.model.num_voices = 4
  family = models.get_family('vqvae')
  batch = experiment.example_batch(config, 4)
  source = family.init(config, jax.random.key(1), batch)
  stats = jax.tree.map(lambda x: x * 0 + np.arange(x.size).reshape(x.shape) + 0.5,
                       source.model_state)
  source = source.replace(model_state=stats)
  workdir = str(tmp_path / 'source')
  checkpoints.write_config(workdir, config)
  ckpt = checkpoints.Checkpointer(workdir)
  ckpt.save(5, source, {'epoch': 0}, {'step': 5, 'num_voices': 4, 'steps_per_quarter': 4})
  ckpt.wait()
  ckpt.close()
  fresh = family.init(config, jax.random.key(2), batch)
  tuned = finetune.init_from(workdir, fresh, parallel.make_mesh(), log=lambda _: None)
  for got, want in zip(jax.tree.leaves(tuned.model_state), jax.tree.leaves(stats)):
    np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(tuned.params['codebook'], source.params['codebook'])
