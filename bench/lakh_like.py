r"""Synthetic Lakh-like MIDI folders: multi-track files of 2-5 minutes.

  python -m bench.lakh_like OUT_DIR --files 2000 [--seed 0] [--workers 2]

Each file has 2-6 instruments at 120 qpm: monophonic lines (melody, bass), block
chords, and sometimes drums; one line in ten holds one note 30-140 s too long (a
stuck note, as real files have). Files are a function of (seed, index) only, so a
folder of N files is the first N files of any bigger one. bench/corpus_scale.py
prepares and trains on them; tests/test_shards.py uses a few short ones.
"""

import argparse
import multiprocessing
import os
import sys

import numpy as np

from bach_jax.data.midi_file import pretty_midi

PROGRAMS = (0, 24, 40, 56, 65, 71, 73)  # Piano, guitar, violin, trumpet, sax, clarinet, flute.


def _line(rng, seconds: float, low: int, high: int):
  """A monophonic random walk: (pitch, start, end) arrays, durations of 1-8 16ths."""
  durations = rng.integers(1, 9, int(seconds * 8) + 1) * 0.125  # 16th = 0.125 s at 120 qpm.
  starts = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
  keep = starts < seconds
  steps = rng.integers(-4, 5, keep.sum())
  pitches = np.clip(rng.integers(low, high) + np.cumsum(steps), low, high)
  return pitches, starts[keep], starts[keep] + durations[keep]


def _instrument(rng, kind: str, seconds: float):
  if kind == 'drums':
    inst = pretty_midi.Instrument(0, is_drum=True, name='Drums')
    for t in np.arange(0, seconds, 0.25):
      inst.notes.append(pretty_midi.Note(90, int(rng.choice([36, 38, 42])), t, t + 0.1))
    return inst
  inst = pretty_midi.Instrument(int(rng.choice(PROGRAMS)) if kind != 'bass' else 33,
                                name=kind.title())
  if kind == 'chords':
    t = 0.0
    while t < seconds:
      d = float(rng.choice([0.5, 1.0, 2.0]))
      root = int(rng.integers(52, 68))
      for p in (root, root + 4 - int(rng.integers(0, 2)), root + 7):
        inst.notes.append(pretty_midi.Note(70, p, t, t + d))
      t += d
    return inst
  low, high = (36, 55) if kind == 'bass' else (60, 84)
  pitches, starts, ends = _line(rng, seconds, low, high)
  if rng.random() < 0.1 and len(ends) > 2:  # A stuck note.
    i = int(rng.integers(0, len(ends) - 1))
    ends[i] += rng.uniform(30, 140)
  inst.notes.extend(pretty_midi.Note(80, int(p), float(a), float(b))
                    for p, a, b in zip(pitches, starts, ends))
  return inst


def _vlq(n: int) -> bytes:
  out = [n & 0x7F]
  n >>= 7
  while n:
    out.append(0x80 | (n & 0x7F))
    n >>= 7
  return bytes(reversed(out))


def _track(events) -> bytes:
  """events [(tick, order, bytes)] -> an MTrk chunk (sorted; delta times)."""
  body, last = bytearray(), 0
  for tick, _, data in sorted(events, key=lambda e: (e[0], e[1])):
    body += _vlq(tick - last) + data
    last = tick
  body += b'\x00\xff\x2f\x00'
  return b'MTrk' + len(body).to_bytes(4, 'big') + bytes(body)


def _smf(instruments, tpq: int = 480) -> bytes:
  """A format-1 MIDI file at 120 qpm, written directly (pretty_midi's writer is 5x
  slower, and a benchmark wants tens of thousands of files)."""
  tick = lambda seconds: int(round(seconds * tpq * 2))  # 2 quarters a second.
  tracks = [_track([(0, 0, b'\xff\x51\x03\x07\xa1\x20')])]  # 500,000 us a quarter.
  channels = iter([c for c in range(16) if c != 9])
  for inst in instruments:
    ch = 9 if inst.is_drum else next(channels)
    name = inst.name.encode()
    events = [(0, 0, b'\xff\x03' + _vlq(len(name)) + name),
              (0, 1, bytes([0xC0 | ch, inst.program]))]
    for n in inst.notes:
      events.append((tick(n.start), 3, bytes([0x90 | ch, n.pitch, n.velocity])))
      events.append((tick(n.end), 2, bytes([0x80 | ch, n.pitch, 0])))
    tracks.append(_track(events))
  header = b'MThd' + (6).to_bytes(4, 'big') + (1).to_bytes(2, 'big') + len(tracks).to_bytes(
      2, 'big') + tpq.to_bytes(2, 'big')
  return header + b''.join(tracks)


def write_file(path: str, seed: int, index: int, seconds=(120, 300)):
  """File `index` of the folder with this seed (seconds: its length is drawn from)."""
  rng = np.random.default_rng([seed, index])
  length = float(rng.uniform(*seconds))
  kinds = ['melody', 'bass'] + list(rng.choice(['melody', 'chords', 'drums', 'bass'],
                                               int(rng.integers(0, 5))))
  with open(path, 'wb') as f:
    f.write(_smf([_instrument(rng, kind, length) for kind in kinds]))


def _write(args):
  write_file(*args)


def write_folder(folder: str, files: int, seed: int = 0, workers: int = 1,
                 seconds=(120, 300)) -> str:
  """Writes files 0..files-1 (the ones not there yet) as folder/NNN/NNNNNN.mid."""
  jobs = []
  for i in range(files):
    path = os.path.join(folder, f'{i // 1000:03d}', f'{i:06d}.mid')
    if not os.path.exists(path):
      os.makedirs(os.path.dirname(path), exist_ok=True)
      jobs.append((path, seed, i, seconds))
  if workers > 1 and len(jobs) > 1:
    with multiprocessing.get_context('spawn').Pool(workers) as pool:
      pool.map(_write, jobs, chunksize=16)
  else:
    for job in jobs:
      _write(job)
  return folder


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('out')
  parser.add_argument('--files', type=int, required=True)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--workers', type=int, default=os.cpu_count() or 1)
  args = parser.parse_args()
  write_folder(args.out, args.files, args.seed, args.workers)
  print(f'{args.files} files in {args.out}', file=sys.stderr)


if __name__ == '__main__':
  main()
