"""Writes pieces of a composer from music21's corpus as MIDI files: a folder of music that is
not a Bach chorale, to fine-tune or evaluate on (`--config.data.source=midi_dir:OUT`).

  python scripts/music21_midi.py palestrina runs/palestrina_midi          # 60 pieces
  python scripts/music21_midi.py monteverdi runs/monteverdi_midi --num=0  # all of them

Which pieces: the scores of music21.corpus.getComposer(COMPOSER) (MusicXML, Humdrum, MIDI,
ABC; not the RomanText harmonic analyses some composers have beside their scores), the
--num shortest files first. For Palestrina only the movements stored as one file
(NAME_NN.krn); movements stored in sections (NAME_NN_a.krn, ...) are left out. A score
stored in two formats is written once, and pieces of one file name get their folder's
name in front. Progress on stderr, one line per 10 files. A file music21 cannot parse or
write is skipped with one line.
"""

import argparse
import collections
import os
import re
import sys
import time


SCORES = ('.mxl', '.xml', '.musicxml', '.krn', '.mid', '.midi', '.abc')


def pieces(composer):
  """[(music21 corpus path, MIDI file name)] of a composer's scores, shortest file first.
  A name is the file's own ('Sanctus_13.mid'), or, where several pieces share it, with its
  folder ('k80_movement1.mid'); the same score in two formats is written once."""
  import music21  # pylint: disable=g-import-not-at-top
  paths = [str(p) for p in music21.corpus.getComposer(composer)
           if str(p).lower().endswith(SCORES)]
  whole = [p for p in paths if re.search(r'_\d+\.krn$', p)]  # Palestrina's movements.
  stem = lambda p: os.path.splitext(os.path.basename(p))[0]
  folder = lambda p: os.path.basename(os.path.dirname(p))
  by_piece = {}  # (folder, stem) -> the shortest file of that piece.
  for path in sorted(whole or paths, key=os.path.getsize):
    by_piece.setdefault((folder(path), stem(path)), path)
  stems = collections.Counter(s for _, s in by_piece)
  return [(path, f'{f}_{s}.mid' if stems[s] > 1 else f'{s}.mid')
          for (f, s), path in by_piece.items()]


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
  for i, (path, name) in enumerate(paths, 1):
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
