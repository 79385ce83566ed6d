"""Writes pieces of a composer from music21's corpus as MIDI files: a folder of music that is
not a Bach chorale, to fine-tune or evaluate on (`--config.data.source=midi_dir:OUT`).

  python scripts/music21_midi.py palestrina runs/palestrina_midi          # 60 pieces
  python scripts/music21_midi.py monteverdi runs/monteverdi_midi --num=0  # all of them

Which pieces: those of music21.corpus.getComposer(COMPOSER), without the Humdrum
collections' per-movement parts duplicated (for Palestrina, the whole movements named
NAME_NN.krn), the --num shortest files first. Progress on stderr, one line per 10 files.
A file music21 cannot parse or write is skipped with one line.
"""

import argparse
import os
import re
import sys
import time


def pieces(composer):
  """music21 corpus paths of a composer's pieces, shortest file first."""
  import music21  # pylint: disable=g-import-not-at-top
  paths = [str(p) for p in music21.corpus.getComposer(composer)]
  whole = [p for p in paths if re.search(r'_\d+\.krn$', p)]  # Palestrina's movements.
  return sorted(whole or paths, key=os.path.getsize)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('composer', help="music21 corpus composer, e.g. palestrina, monteverdi")
  p.add_argument('out', help='folder to write the .mid files into (created)')
  p.add_argument('--num', type=int, default=60, help='pieces to write (0: all; default 60)')
  args = p.parse_args(argv)
  import music21  # pylint: disable=g-import-not-at-top
  paths = pieces(args.composer)
  if not paths:
    sys.exit(f'error: music21 has no corpus pieces of {args.composer!r}')
  if args.num > 0:
    paths = paths[:args.num]
  os.makedirs(args.out, exist_ok=True)
  start, written = time.time(), 0
  for i, path in enumerate(paths, 1):
    name = os.path.splitext(os.path.basename(path))[0] + '.mid'
    try:
      music21.converter.parse(path).write('midi', fp=os.path.join(args.out, name))
      written += 1
    except Exception as e:  # pylint: disable=broad-except  (music21 raises many kinds)
      print(f'skipping {path}: {type(e).__name__}: {e}', file=sys.stderr)
    if i % 10 == 0 or i == len(paths):
      rate = i / max(time.time() - start, 1e-9)
      print(f'{i}/{len(paths)} files | {rate:.1f} files/s | ETA {(len(paths) - i) / rate:.0f} s',
            file=sys.stderr, flush=True)
  print(f'{written} MIDI files in {args.out}')


if __name__ == '__main__':
  main()
