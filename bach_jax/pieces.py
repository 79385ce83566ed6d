"""Pieces in and out: a primer or melody from a MIDI file or a corpus split, a family's
output as PianoRolls, pieces cut, joined and written as .mid / .png / .wav.

NumPy only (no JAX): the sampler, the evaluator, the latent operations and the
report all share these.
"""

import sys
import time

import numpy as np

from bach_jax import plotting
from bach_jax import workdir as workdir_lib
from bach_jax.data import pianoroll
from bach_jax import audio
from bach_jax import errors
from bach_jax.errors import SampleError

MAX_WAV_SECONDS = 600.0  # Longer pieces get no .wav (16-bit mono: 26 MB at this length).
LONG_WRITE_STEPS = 4096  # Pieces of this many frames or more get a line each as written.


def note(msg):
  """A one-line note on stderr (stdout carries a command's result)."""
  print(f'note: {msg}', file=sys.stderr, flush=True)


def load_piece(spec, steps_per_quarter, corpus=None, split='test', num_steps=0):
  """A PianoRoll from 'PATH.mid', 'split:INDEX' (a piece of the corpus's `split`) or
  'train:INDEX' / 'valid:INDEX' / 'test:INDEX' (a piece of that split)."""
  head, _, tail = spec.partition(':')
  if (head in ('train', 'valid', 'test') and tail.isdigit()
      and not workdir_lib.as_path(spec).exists()):
    spec, split = f'split:{tail}', head
  if spec.startswith('split:'):
    if corpus is None:
      raise SampleError(f'sample.primer={spec!r} needs a corpus')
    try:
      piece = corpus.splits[split][int(spec.split(':', 1)[1])]
    except (ValueError, IndexError):
      raise SampleError(f'sample.primer={spec!r}: no such piece in the {split!r} split '
                        f'({len(corpus.splits[split])} pieces)') from None
  else:
    if not workdir_lib.as_path(spec).exists():
      raise SampleError(f'{spec}: MIDI file not found (a piece of the corpus: split:INDEX, '
                        'or train:, valid:, test:INDEX)')
    try:
      piece = pianoroll.from_midi(spec, steps_per_quarter=steps_per_quarter)
    except pianoroll.MidiError as e:
      raise SampleError(f'{spec}: unusable primer: {e}') from None
  return cut_pieces([piece], num_steps)[0] if num_steps else piece


def soprano_line(piece):
  """int[T]: the top voice of a piece (its highest sounding pitch per frame, REST -1)."""
  if piece.voices is not None:
    return np.asarray(piece.voices[:, 0], np.int32)
  top = np.full(piece.roll.shape[0], -1, np.int32)
  steps, keys = np.nonzero(piece.roll)
  np.maximum.at(top, steps, keys + pianoroll.LOWEST_PITCH)
  return top


def to_pianorolls(out, steps_per_quarter, voice_names=None, lengths=None, name='sample'):
  """A family's output (sample or decode: 'roll', 'voices'?, 'rule_fallbacks'?) -> list
  of PianoRoll, piece i named NAME_i and cut to lengths[i] frames (None: whole)."""
  voices = out.get('voices')
  pieces = []
  for i in range(out['roll'].shape[0]):
    n = None if lengths is None else lengths[i]
    meta = {'file': f'{name}_{i}', 'source': 'sample' if name == 'sample' else name}
    if voice_names:
      meta['voice_names'] = list(voice_names)
    if 'rule_fallbacks' in out:  # Sampled under voice-leading rules (models/rules.py).
      meta['rule_fallbacks'] = int(out['rule_fallbacks'][i])
    pieces.append(pianoroll.PianoRoll(
        roll=np.asarray(out['roll'][i][:n], bool),
        voices=None if voices is None else np.asarray(voices[i][:n], np.int16),
        steps_per_quarter=steps_per_quarter, meta=meta))
  return pieces


def cut_pieces(pieces, num_steps):
  """PianoRolls cut to their first num_steps frames (shorter ones kept whole)."""
  return [pianoroll.PianoRoll(p.roll[:num_steps],
                              None if p.voices is None else p.voices[:num_steps],
                              p.steps_per_quarter, dict(p.meta)) for p in pieces]


def concatenate(pieces, gap_steps=0):
  """Pieces end to end (with gap_steps silent frames between) -> one PianoRoll."""
  parts, vparts = [], []
  with_voices = all(p.voices is not None for p in pieces)
  for i, p in enumerate(pieces):
    gap = gap_steps if i else 0
    parts.append(np.concatenate([np.zeros((gap, pianoroll.NUM_KEYS), bool), p.roll]))
    if with_voices:
      rest = np.full((gap, p.voices.shape[1]), pianoroll.REST, np.int16)
      vparts.append(np.concatenate([rest, p.voices]))
  return pianoroll.PianoRoll(np.concatenate(parts), np.concatenate(vparts) if with_voices
                             else None, pieces[0].steps_per_quarter, dict(pieces[0].meta))


def write_pieces(pieces, outdir, prefix='sample', qpm=80.0, wav=True, instrument='organ'):
  """Writes PREFIX_i.mid, .png (and .wav up to MAX_WAV_SECONDS) per piece -> .mid paths.

  instrument: a name of audio.INSTRUMENTS, the program of every voice in the .mid
  and the .wav.

  outdir: str or epath.Path (gs:// works). WorkdirError when outdir is not a
  writable folder; WriteError naming the file when a write fails (disk full).
  """
  outdir = workdir_lib.prepare(outdir, what='output folder')
  paths, too_long = [], []
  for i, piece in enumerate(pieces):
    errors.safe_point()
    name = f'{prefix}_{i}'
    t0 = time.perf_counter()
    pm = pianoroll.to_midi(piece, qpm=qpm, program=audio.INSTRUMENTS[instrument])
    with workdir_lib.writing(outdir / f'{name}.mid') as path, path.open('wb') as f:
      pm.write(f)
    with workdir_lib.writing(outdir / f'{name}.png') as path:
      plotting.plot_pianoroll(path, piece.roll, piece.voices, piece.steps_per_quarter,
                              title=name, voice_names=piece.meta.get('voice_names'))
    if wav and pm.get_end_time() > MAX_WAV_SECONDS:
      too_long.append(name)
    elif wav:
      with workdir_lib.writing(outdir / f'{name}.wav') as path:
        audio.write_wav(path, pm, instrument)
    paths.append(str(outdir / f'{name}.mid'))
    if piece.roll.shape[0] >= LONG_WRITE_STEPS:  # pretty_midi writes ~3k steps/s.
      note(f'wrote {outdir / name}.* ({i + 1} of {len(pieces)}, '
            f'{time.perf_counter() - t0:.0f} s)')
  if too_long:
    note(f'no .wav for {", ".join(too_long)}: longer than {MAX_WAV_SECONDS:.0f} s of audio '
          '(pieces.MAX_WAV_SECONDS); the .mid and .png hold the whole piece')
  return paths
