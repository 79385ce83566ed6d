"""Reading a MIDI file into pretty_midi, with one-line reasons for the files it refuses.

SMPTE time division (the MThd division
word has its top bit set) counts time in frames of a second, not in beats, so
such a file has no beat grid to put notes on: refused with that reason.
pretty_midi refuses files whose largest tick exceeds `MAX_TICK` (1e7) as
"likely corrupt", but a valid long piece can get there (music21 writes 10080
ticks per quarter: 1000 quarter notes are 1e7 ticks). Such files are read:
their ticks are divided by a common factor of all times and the resolution
(exact), else rounded to a coarser resolution that is a multiple of 8 ticks
per quarter (moves times by under 1/600 of a quarter note). The guard against
absurd files is in quarter notes: a file longer than MAX_QUARTERS (over 4
hours at 120 quarter notes per minute) is refused as too long.
"""

import contextlib
import inspect
import io
import math
import os
from typing import Union

import mido

# pretty_midi imports pyfluidsynth where it is installed, and pyfluidsynth (>= 1.3.4)
# prints "'fluidsynth' was found at ..." when $CI is set: a debugging line in our
# commands' output, which scripts read (written paths on stdout, one error line on
# stderr). It is dropped. Every module of ours takes pretty_midi from here.
with contextlib.redirect_stdout(io.StringIO()):
  import pretty_midi  # pylint: disable=g-import-not-at-top

from bach_jax.errors import MidiError

MAX_QUARTERS = 30_000  # Longer files are refused (4h10 at 120 qpm; no real piece is).
# pretty_midi >= 0.2.11 takes a parsed mido.MidiFile; older ones get its bytes again.
_TAKES_MIDO = 'mido_object' in inspect.signature(pretty_midi.PrettyMIDI.__init__).parameters




def _corrupt(e: Exception) -> MidiError:
  return MidiError(f'corrupt or truncated MIDI ({type(e).__name__}: {e})')


def _fit_ticks(mid, largest: int, limit: float):
  """Rescales the ticks of a mido.MidiFile in place so that its largest tick is < limit.

  Exact when the resolution and every delta time share a factor big enough (the
  smallest such factor is used); else absolute times are rounded to a coarser
  resolution, a multiple of 8 ticks per quarter.
  """
  tpq = mid.ticks_per_beat
  common = tpq
  for track in mid.tracks:
    for msg in track:
      common = math.gcd(common, msg.time)
  for d in range(2, common + 1):
    if common % d == 0 and largest // d + 1 < limit:
      for track in mid.tracks:
        for msg in track:
          msg.time //= d
      mid.ticks_per_beat = tpq // d
      return
  new = max(8, int((limit - 2) * tpq // largest) // 8 * 8)
  for track in mid.tracks:
    now = before = 0
    for msg in track:
      now += msg.time
      at = (2 * now * new + tpq) // (2 * tpq)  # Round half up.
      msg.time, before = at - before, at
  mid.ticks_per_beat = new


def read_pretty_midi(path: Union[str, os.PathLike]) -> pretty_midi.PrettyMIDI:
  """Reads a MIDI file; MidiError with a short reason when it cannot.

  See the module docstring for SMPTE files and files over pretty_midi's tick limit.
  """
  path = os.fspath(path)
  try:
    size = os.path.getsize(path)
  except OSError as e:
    raise MidiError(f'cannot read ({e.strerror})') from e
  if size == 0:
    raise MidiError('empty file')
  with open(path, 'rb') as f:
    head = f.read(14)
  if head[:4] != b'MThd':
    raise MidiError('not a MIDI file (no MThd header)')
  if len(head) == 14 and head[12] & 0x80:
    raise MidiError(f'SMPTE time division is not supported ({256 - head[12]} frames per '
                    'second: the file counts seconds, not beats, so it has no beat grid)')
  try:
    mid = mido.MidiFile(path, charset='latin1')  # As pretty_midi reads it.
  except Exception as e:  # mido raises many types on bad data.
    raise _corrupt(e) from e
  if mid.ticks_per_beat <= 0:
    raise MidiError(f'corrupt MIDI header ({mid.ticks_per_beat} ticks per quarter note)')
  largest = max((sum(msg.time for msg in track) for track in mid.tracks), default=0)
  if largest > MAX_QUARTERS * mid.ticks_per_beat:
    raise MidiError(f'too long for a piece ({largest / mid.ticks_per_beat:.0f} quarter '
                    f'notes, more than {MAX_QUARTERS}): likely corrupt')
  limit = pretty_midi.pretty_midi.MAX_TICK
  if largest + 1 > limit:  # pretty_midi would call it corrupt: a long valid piece.
    _fit_ticks(mid, largest, limit)
  try:
    if _TAKES_MIDO:
      return pretty_midi.PrettyMIDI(mido_object=mid)
    data = io.BytesIO()
    mid.save(file=data)
    data.seek(0)
    return pretty_midi.PrettyMIDI(data)
  except Exception as e:  # pretty_midi raises many types on bad data.
    raise _corrupt(e) from e
