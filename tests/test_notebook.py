"""notebooks/colab.ipynb runs from top to bottom (its install cell left out), twice:

* lstm: WORKDIR is a new folder, so the notebook trains the tiny config into it (a few
  steps), then samples, shows the piano-roll, plays it and harmonizes its stand-in melody;
  interpolation says the family has no latent space;
* vae: WORKDIR is a tiny run this test writes (initialized params, one checkpoint: the
  notebook's code paths, not the music, are under test); the notebook samples and
  interpolates; harmonization says the family cannot.

Needs nbclient, nbformat and ipykernel (the [test] extra).
"""

import functools
import os

import jax
import pytest

from bach_jax import checkpoints
from bach_jax import experiment
from bach_jax import pieces as pieces_lib
from train_helpers import REPO, load_config

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')
pytest.importorskip('ipykernel')

NOTEBOOK = os.path.join(REPO, 'notebooks', 'colab.ipynb')


def write_untrained_run(workdir, name):
  """A workdir with config.json and one checkpoint of configs/NAME.py:test's initial params."""
  config = load_config(name, 'test')
  exp = experiment.setup(config)
  family, corpus = exp.family, exp.corpus  # Resolves the corpus-dependent keys (voices).
  state = jax.jit(functools.partial(family.init, config))(
      jax.random.key(0), experiment.example_batch(config, corpus.num_voices))
  checkpoints.write_config(workdir, config)
  ckpt = checkpoints.Checkpointer(workdir)
  ckpt.save(1, state, {'epoch': 0}, {'step': 1, 'num_voices': corpus.num_voices,
                                     'steps_per_quarter': corpus.steps_per_quarter})
  ckpt.wait()
  ckpt.close()


def run_notebook(tmp_path, monkeypatch, workdir, train_steps=10):
  """Executes the notebook (cells tagged 'install' removed) in tmp_path -> its cells."""
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nb.cells = [c for c in nb.cells if 'install' not in c.metadata.get('tags', [])]
  monkeypatch.setenv('BACH_JAX_NOTEBOOK_REPO', REPO)
  monkeypatch.setenv('BACH_JAX_NOTEBOOK_WORKDIR', workdir)
  monkeypatch.setenv('BACH_JAX_NOTEBOOK_TRAIN_STEPS', str(train_steps))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  nbclient.NotebookClient(nb, timeout=300, kernel_name='python3',
                          resources={'metadata': {'path': str(tmp_path)}}).execute()
  return [c for c in nb.cells if c.cell_type == 'code']


def outputs(cell):
  """(text printed, set of rich MIME types displayed) of an executed code cell."""
  text, kinds = '', set()
  for out in cell.get('outputs', []):
    text += out.get('text', '')
    kinds.update(out.get('data', {}))
  return text, kinds


def cell_with(cells, source):
  (cell,) = [c for c in cells if source in c.source]
  return cell


def test_notebook_trains_samples_plays_and_harmonizes(tmp_path, monkeypatch):
  workdir = str(tmp_path / 'drive' / 'tiny')
  cells = run_notebook(tmp_path, monkeypatch, workdir)
  assert os.path.exists(os.path.join(workdir, 'config.json'))  # Trained by the notebook.
  text, _ = outputs(cell_with(cells, 'bach_jax.load_model(WORKDIR)'))
  assert 'lstm from' in text and 'step 10' in text, text
  for source in ('model.sample(num_pieces=2', 'melody=melody_path'):
    _, kinds = outputs(cell_with(cells, source))
    assert {'image/png', 'text/html'} <= kinds, (source, kinds)  # Piano-roll; <audio>.
  text, _ = outputs(cell_with(cells, 'model.interpolate('))
  assert 'no latent space' in text
  out = tmp_path / 'bach_jax_notebook'
  assert {'sample_0.png', 'sample_0.wav', 'melody.mid', 'harmonized_0.mid',
          'harmonized_0.wav'} <= set(os.listdir(out))
  melody = pieces_lib.soprano_line(pieces_lib.load_piece(str(out / 'melody.mid'), 4))
  harmonized = pieces_lib.load_piece(str(out / 'harmonized_0.mid'), 4)
  assert (pieces_lib.soprano_line(harmonized)[:len(melody)] == melody).all()


def test_notebook_interpolates_with_a_latent_model(tmp_path, monkeypatch):
  workdir = str(tmp_path / 'vae')
  write_untrained_run(workdir, 'vae')
  cells = run_notebook(tmp_path, monkeypatch, workdir)
  text, kinds = outputs(cell_with(cells, 'model.interpolate('))
  assert {'image/png', 'text/html'} <= kinds, (text, kinds)
  text, _ = outputs(cell_with(cells, 'melody=melody_path'))
  assert 'cannot harmonize' in text
  assert 'interpolation.png' in os.listdir(tmp_path / 'bach_jax_notebook')
