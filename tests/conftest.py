"""Shared fixtures for the data tests: synthetic pieces and a few real chorales."""

import numpy as np
import pytest

from bach_jax.data import pianoroll

CHORALES = ('bwv1.6.mxl', 'bwv281.krn', 'bwv41.6.mxl')  # Horn part; unnamed parts; long names.


def _random_piece(rng, length, num_voices=4, low=48, high=76, rests=True):
  """A PianoRoll with random voices int16[length, num_voices] in [low, high)."""
  voices = rng.integers(low, high, size=(length, num_voices)).astype(np.int16)
  if rests:
    voices[rng.random(voices.shape) < 0.1] = pianoroll.REST
  return pianoroll.PianoRoll(pianoroll.voices_to_roll(voices), voices, 4,
                             {'file': f'random{length}', 'voice_names': ['S', 'A', 'T', 'B']})


@pytest.fixture
def make_piece():
  """Factory: make_piece(rng, length, num_voices=4, low=48, high=76) -> PianoRoll."""
  return _random_piece


@pytest.fixture(scope='session')
def chorales():
  """A few music21 chorales through MIDI, as (file name, PrettyMIDI)."""
  from bach_jax.data import corpora  # pylint: disable=g-import-not-at-top
  paths = {p.rsplit('/', 1)[-1]: p for p in corpora.chorale_paths()}
  return [(name, corpora.chorale_to_pretty_midi(paths[name])[0]) for name in CHORALES]
