"""The sources of pieces: each file (or JSB piece) -> (name, split, PianoRoll or reason).

Sources (`config.data.source`):

* `bach_chorales`: the .mxl/.krn/.xml chorales shipped with music21 (the .rntxt
  analyses are skipped). Each score is written to MIDI by music21 and read
  back by pretty_midi, so one MIDI reader serves every source. Voices rule:
  a part is a voice when the first word of the first line of its name is a
  voice name (case-insensitive): soprano (soprano, sopran, sop, s, canto,
  cantus, treble, discant), alto (alto, alt, a, contralto, altus), tenor
  (tenor, tenore, ten, t), bass (bass, basso, bassus, bas, b); 'Basso
  continuo' / 'B.c.' is not a voice. When several parts name one voice, the
  topmost is taken ('Soprano 1' over 'Soprano 2'). Other parts (horns,
  violins, continuo...) are dropped. If the names do not give all four voices
  but the score has exactly 4 parts, they are taken top to bottom as S, A, T,
  B; otherwise the file is skipped. Split 80/10/10 by a stable hash of the
  BWV number without its version suffix (bwv248.23-2, bwv248.23-s ->
  'bwv248.23'), so versions of one chorale share a split.
* `midi_dir:PATH`: every .mid/.midi under PATH (recursive); voices as in
  `pianoroll.from_pretty_midi(voices='auto')`. Split 80/10/10 by a stable hash
  of the path relative to PATH, with small corpora topped up (below).
* `jsb:PATH`: the JSB Chorales JSON ({"train": [piece...], ...}, a piece a list
  of frames, a frame a list of MIDI pitches), its split kept. `python -m
  bach_jax.data download jsb` fetches the public files into the data dir
  ($BACH_JAX_DATA, else <cache dir>/jsb; see download.py). If every frame of
  every piece has exactly 4 entries, the file is the voice-separated 16th-note
  version: frames are [S, A, T, B] (negative = rest) and steps_per_quarter=4;
  otherwise frames are pitch sets and steps_per_quarter=1. The pieces are
  already in C major / C minor on their own grid: data.transpose and
  data.steps_per_quarter do not apply (meta['transpose_note'] says so).

Which split a piece falls in, and how small folders are topped up: splits.py.

Pieces shorter than data.min_steps frames are skipped; every skipped file is
reported as one line 'skipping FILE: reason' and counted in the summary. Notes
outside the piano are folded into range by octaves (pianoroll.py); the summary
gives their total.
"""

import io
import json
import os

import numpy as np

from bach_jax.data import download
from bach_jax.data import pianoroll
from bach_jax.data.pianoroll import SATB, MidiError, PianoRoll, satb_indices
from bach_jax.data.cache import SPLITS
from bach_jax.data.splits import split_of
from bach_jax.errors import CorpusError


def bwv_key(filename: str) -> str:
  """'.../bwv248.23-2.mxl' -> 'bwv248.23' (the BWV number without version)."""
  stem = os.path.basename(filename).rsplit('.', 1)[0].lower()
  return stem.split('-')[0]


def _finish(piece: PianoRoll, data: dict, trim: bool = True) -> PianoRoll:
  """Applies trimming, transpose and min_steps to a fresh piece; MidiError to skip it.

  JSB pieces are not trimmed (trim=False): the benchmark's frames are kept as published.
  """
  if piece.num_steps == 0 or not piece.roll.any():
    raise MidiError('no notes after quantization')
  # Leading/trailing silence (pickup rests, empty end bars) would teach the model
  # that a piece may begin with long silence: keep from the first to the last note.
  sounding = np.nonzero(piece.roll.any(axis=1))[0]
  first, last = int(sounding[0]), int(sounding[-1]) + 1
  if trim and (first > 0 or last < piece.num_steps):
    piece = PianoRoll(piece.roll[first:last],
                      None if piece.voices is None else piece.voices[first:last],
                      piece.steps_per_quarter,
                      {**piece.meta, 'trimmed_silence': [first, piece.num_steps - last]})
  if piece.num_steps < data['min_steps']:
    raise MidiError(f'shorter than min_steps ({piece.num_steps} < {data["min_steps"]} frames)')
  if data['transpose'] == 'tonic':
    piece = pianoroll.to_common_tonic(piece)
  return piece


def chorale_to_pretty_midi(path: str):
  """A music21 score -> (PrettyMIDI of its S, A, T, B parts, meta entries).

  Parts that are not voices are removed before music21 writes the MIDI (that
  write is most of the cost); MidiError if the voices cannot be identified.
  """
  import music21  # pylint: disable=g-import-not-at-top  (heavy; workers only)
  from bach_jax.data.midi_file import pretty_midi  # pylint: disable=g-import-not-at-top
  # From the source, never through music21's pickle cache: it writes each pickle in
  # place in a shared scratch folder, and a concurrent build (two runs, two test
  # workers) reading a half-written one lost a chorale from the corpus.
  score = music21.converter.parse(path, forceSource=True, storePickle=False)
  parts = list(score.parts)
  keep = satb_indices([p.partName for p in parts])
  for i, part in enumerate(parts):
    if i not in keep:
      score.remove(part)
  order = [parts.index(p) for p in score.parts]  # Kept parts, in score order.
  notes = {}
  repeat_classes = (music21.bar.Repeat, music21.repeat.RepeatExpression,
                    music21.spanner.RepeatBracket)
  if not score.recurse().getElementsByClass(repeat_classes):
    # Nothing to expand: skip the deep copy that expandRepeats makes inside
    # streamToMidiFile (half its cost; this score is ours to mutate, and the
    # MIDI bytes are identical for every chorale of music21 10.5).
    score.expandRepeats = lambda *args, **kwargs: score
  try:
    midi_bytes = music21.midi.translate.streamToMidiFile(score).writestr()
  except music21.repeat.ExpanderException:  # Badly formed repeats: play as written.
    for m in score.recurse().getElementsByClass(music21.stream.Measure):
      for side in ('leftBarline', 'rightBarline'):
        if isinstance(getattr(m, side), music21.bar.Repeat):
          setattr(m, side, None)
    midi_bytes = music21.midi.translate.streamToMidiFile(score).writestr()
    notes['repeats'] = 'badly formed repeats: not expanded'
  pm = pretty_midi.PrettyMIDI(io.BytesIO(midi_bytes))
  if len(pm.instruments) != 4:
    raise MidiError(f'expected 4 voice tracks in the MIDI, got {len(pm.instruments)}')
  pm.instruments = [pm.instruments[order.index(k)] for k in keep]
  notes['parts'] = [parts[k].partName or '' for k in keep]
  return pm, notes


def chorale_piece(path: str, data: dict):
  """Worker: one music21 chorale -> (name, split, PianoRoll or reason)."""
  name = os.path.basename(path)
  try:
    pm, meta = chorale_to_pretty_midi(path)
    meta.update(file=name, source='bach_chorales')
    piece = pianoroll.from_pretty_midi(pm, data['steps_per_quarter'], voices=[0, 1, 2, 3],
                                       voice_names=SATB, meta=meta)
    return name, split_of(bwv_key(name)), _finish(piece, data)
  except MidiError as e:
    return name, None, str(e)
  except Exception as e:  # music21 raises many kinds on odd scores.
    return name, None, f'cannot convert ({type(e).__name__}: {e})'


def midi_file_piece(path: str, rel: str, data: dict):
  """Worker: one .mid file -> (relpath, split, PianoRoll or reason)."""
  try:
    piece = pianoroll.from_midi(path, data['steps_per_quarter'],
                                meta={'file': rel, 'source': 'midi_dir'})
    return rel, split_of(rel), _finish(piece, data)
  except MidiError as e:
    return rel, None, str(e)


def jsb_pieces(path: str, data: dict):
  """Reads a JSB JSON file -> (grid, [(name, split, PianoRoll or reason)])."""
  try:
    with open(path) as f:
      raw = json.load(f)
  except (OSError, ValueError) as e:
    raise CorpusError(f'{path}: not a readable JSB JSON file ({e})') from e
  if not isinstance(raw, dict) or not all(isinstance(raw.get(s), list) for s in SPLITS):
    raise CorpusError(f'{path}: expected a JSON object with lists "train", "valid", "test"')
  separated = all(len(frame) == 4 for s in SPLITS for piece in raw[s] for frame in piece)
  grid = 4 if separated else 1
  note = ('JSB: already in C major / C minor on its own grid; data.transpose and '
          'data.steps_per_quarter do not apply')
  results = []
  for split in SPLITS:
    for i, frames in enumerate(raw[split]):
      name = f'{split}/{i}'
      meta = {'file': name, 'source': 'jsb', 'transpose_note': note,
              'key_signature': None, 'time_signature': None}
      try:
        if separated:
          voices = np.array(frames, dtype=np.int64).reshape(-1, 4)
          voices[voices < 0] = pianoroll.REST
          _check_range(voices[voices != pianoroll.REST])
          meta['voice_names'] = list(SATB)
          piece = PianoRoll(pianoroll.voices_to_roll(voices), voices, grid, meta)
        else:
          roll = np.zeros((len(frames), pianoroll.NUM_KEYS), dtype=bool)
          for t, frame in enumerate(frames):
            pitches = np.array(frame, dtype=np.int64)
            _check_range(pitches)
            roll[t, pitches - pianoroll.LOWEST_PITCH] = True
          meta['voice_names'] = None
          piece = PianoRoll(roll, None, grid, meta)
        results.append((name, split, _finish(piece, dict(data, transpose='none'), trim=False)))
      except MidiError as e:
        results.append((name, None, str(e)))
      except (TypeError, ValueError) as e:
        results.append((name, None, f'malformed piece ({e})'))
  return grid, results


def _check_range(pitches):
  if pitches.size and (pitches.min() < pianoroll.LOWEST_PITCH or
                       pitches.max() > pianoroll.HIGHEST_PITCH):
    raise MidiError(f'notes outside the piano range ({pitches.min()}..{pitches.max()})')


def parse_source(source: str):
  """'midi_dir:PATH' -> ('midi_dir', abspath); checks the path exists."""
  if source == 'bach_chorales':
    return 'bach_chorales', None
  for kind in ('midi_dir', 'jsb'):
    if source.startswith(kind + ':'):
      path = os.path.abspath(os.path.expanduser(source[len(kind) + 1:]))
      if not os.path.exists(path) and kind == 'jsb':
        raise CorpusError(f'{path}: JSB file does not exist ({source!r}); '
                          f'{download.how_to_get(path)}')
      if not os.path.exists(path):
        raise CorpusError(f'{path}: source path does not exist ({source!r})')
      if kind == 'midi_dir' and not os.path.isdir(path):
        raise CorpusError(f'{path}: midi_dir source is not a directory')
      return kind, path
  raise CorpusError(f"unknown data.source {source!r}: expected 'bach_chorales', "
                    "'midi_dir:PATH' or 'jsb:PATH'")


def midi_files(root: str):
  """Sorted (abspath, relpath) of every .mid/.midi under root."""
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for f in filenames:
      if f.lower().endswith(('.mid', '.midi')):
        full = os.path.join(dirpath, f)
        found.append((full, os.path.relpath(full, root)))
  return sorted(found, key=lambda x: x[1])


def chorale_paths():
  """Sorted paths of the music21 Bach chorales (.mxl, .krn, .xml; no .rntxt)."""
  import music21  # pylint: disable=g-import-not-at-top
  paths = [str(p) for p in music21.corpus.getComposer('bach')]
  return sorted((p for p in paths if p.lower().endswith(('.mxl', '.krn', '.xml'))),
                key=os.path.basename)
