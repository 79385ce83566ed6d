"""Given cells for a model that fills in the rest (CAPABILITIES.inpaint: the harmonizer).

A request's `given` is int[T, V]: each voice's MIDI pitch (REST -1) where it is given,
MISSING (-2) where the model writes it. Two ways to make one:

  melody_given(melody, voice, V)         one whole voice given: harmonize a melody (or
                                         realize a bass line: voice='bass')
  span_given(piece, (a, b), voices)      everything of `piece` given but `voices` over
                                         frames a..b-1: rewrite (inpaint) that span

and `voice_names` marks, in the written pieces' instrument names, which voices were
given or rewritten. NumPy only.
"""

import numpy as np

from bach_jax.config_base import VOICES
from bach_jax.data import pianoroll
from bach_jax.errors import SampleError

MISSING = -2


def voice_index(name, num_voices=4):
  """'soprano' .. 'bass' (or 0 .. V-1) -> its index; SampleError naming the choices."""
  names = VOICES[:num_voices]
  if isinstance(name, (int, np.integer)) and 0 <= name < num_voices:
    return int(name)
  if str(name).lower() in names:
    return names.index(str(name).lower())
  raise SampleError(f'voice {name!r}: one of {", ".join(names)}')


def melody_given(melody, voice, num_voices):
  """int[T] pitches (REST -1) as voice `voice` of a T-frame piece -> given int[T, V]."""
  given = np.full((len(melody), num_voices), MISSING, np.int32)
  given[:, voice_index(voice, num_voices)] = melody
  return given


def parse_span(span, num_steps):
  """(a, b) or 'A:B' (frames, b exclusive; '' = the whole piece) -> (a, b) inside the
  piece; SampleError naming config.sample.inpaint_span otherwise."""
  if span in ('', None):
    return 0, num_steps
  try:
    a, b = (int(x) for x in (span.split(':') if isinstance(span, str) else span))
  except (TypeError, ValueError):
    raise SampleError(f'config.sample.inpaint_span={span!r}: expected START:END frames') from None
  if not 0 <= a < b <= num_steps:
    raise SampleError(f'config.sample.inpaint_span={span!r}: must be within 0:{num_steps} '
                      'with START < END')
  return a, b


def span_given(piece, span, voices):
  """A piece with voices, `voices` missing over `span` -> given int[T, V]."""
  if piece.voices is None:
    raise SampleError(f'{piece.meta.get("file", "the piece")}: has no voices to keep or '
                      'rewrite')
  a, b = parse_span(span, piece.num_steps)
  given = np.asarray(piece.voices, np.int32).copy()
  for v in voices:
    given[a:b, voice_index(v, given.shape[1])] = MISSING
  return given


def voice_names(given):
  """The written pieces' instrument names: S, A, T, B, with ' (given)' on the voices a
  harmonization was given (where some voice was written throughout) and ' (rewritten)'
  on a voice written over part of the piece."""
  names = list(pianoroll.SATB[:given.shape[1]])
  missing = given == MISSING
  harmonized = missing.all(axis=0).any()
  for v in range(given.shape[1]):
    if harmonized and not missing[:, v].any():
      names[v] += ' (given)'
    elif missing[:, v].any() and not missing[:, v].all():
      names[v] += ' (rewritten)'
  return names
