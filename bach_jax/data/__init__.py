"""Data layer: MIDI <-> PianoRoll, named corpora with a disk cache, NumPy batches.

Nothing here imports jax. See pianoroll.py, corpora.py and pipeline.py.
"""

from bach_jax.data.corpora import Corpus, CorpusError, load_corpus
from bach_jax.data.pianoroll import (LOWEST_PITCH, NUM_KEYS, REST, MidiError, PianoRoll,
                                     from_midi, from_pretty_midi, to_midi)
from bach_jax.data.pipeline import BatchIterator, piece_batches
