"""A piece's audio: FluidSynth with a General MIDI SoundFont where both are installed,
else a built-in sine synthesis; 16-bit mono WAV, loudness normalized.

FluidSynth: pretty_midi's `PrettyMIDI.fluidsynth`, through pyfluidsynth
(`pip install 'bach_jax[audio]'`) and the FluidSynth library, with a SoundFont from
$BACH_JAX_SOUNDFONT or where Debian, Ubuntu and Colab put one (`apt-get install
fluidsynth fluid-soundfont-gm`: /usr/share/sounds/sf2/FluidR3_GM.sf2). Every voice
plays INSTRUMENTS[sample.instrument] (default: the church organ), so two pieces
differ by their music only. Without them the sine synthesis renders the same notes.
`renderer()` says which one runs; the first file written says it on stderr once.

Loudness: every file is scaled to TARGET_RMS_DBFS of RMS (the same loudness for every
piece, whatever its density), then down if needed so its peak stays at or under
PEAK_DBFS.
"""

import copy
import functools
import os
import sys
import wave

import numpy as np

from bach_jax import workdir as workdir_lib
from bach_jax.data.midi_file import pretty_midi

SAMPLE_RATE = 22050
TARGET_RMS_DBFS = -20.0
PEAK_DBFS = -1.0
# sample.instrument -> General MIDI program (0-based): one program for every voice.
INSTRUMENTS = {'organ': 19, 'choir': 52, 'strings': 48, 'piano': 0}
SOUNDFONT_PATHS = ('/usr/share/sounds/sf2/FluidR3_GM.sf2', '/usr/share/sounds/sf2/default-GM.sf2',
                   '/usr/share/soundfonts/FluidR3_GM.sf2', '/usr/share/soundfonts/default.sf2',
                   '/usr/share/sounds/sf2/TimGM6mb.sf2')
_SAID = []


def soundfont():
  """The SoundFont FluidSynth renders with: $BACH_JAX_SOUNDFONT (when set, it must exist),
  else the first of SOUNDFONT_PATHS that exists, else None."""
  chosen = os.environ.get('BACH_JAX_SOUNDFONT')
  if chosen:
    return chosen if os.path.isfile(chosen) else None
  return next((p for p in SOUNDFONT_PATHS if os.path.isfile(p)), None)


@functools.lru_cache(maxsize=None)
def _fluidsynth_loads():
  try:
    import fluidsynth  # pylint: disable=g-import-not-at-top,unused-import  (pyfluidsynth)
    return hasattr(fluidsynth, 'Synth')
  except (ImportError, OSError):  # No binding, or no libfluidsynth for it.
    return False


def renderer():
  """('fluidsynth', soundfont path) or ('sine', why FluidSynth is not used)."""
  font = soundfont()
  if not _fluidsynth_loads():
    return 'sine', ("pyfluidsynth or the FluidSynth library is missing: pip install "
                    "'bach_jax[audio]' and apt-get install fluidsynth fluid-soundfont-gm")
  if font is None:
    where = os.environ.get('BACH_JAX_SOUNDFONT') or ' or '.join(SOUNDFONT_PATHS[:1])
    return 'sine', f'no General MIDI SoundFont at {where} ($BACH_JAX_SOUNDFONT)'
  return 'fluidsynth', font


def describe():
  """One line: which renderer the .wav files come from."""
  kind, what = renderer()
  if kind == 'fluidsynth':
    return f'audio: FluidSynth with {what}'
  return f'audio: built-in sine synthesis ({what})'


def render_sine(pm, fs=SAMPLE_RATE):
  """PrettyMIDI -> float32 mono audio: pretty_midi's sine synthesizer (exponential decay,
  0.1 s fade-out, velocity as gain; no soundfont), rendered note by note into one
  buffer (pretty_midi's own keeps several float64 copies of the whole piece)."""
  audio = np.zeros(int(fs * (pm.get_end_time() + 1)), np.float32)
  fade = np.linspace(1, 0, int(0.1 * fs))
  for inst in pm.instruments:
    if inst.is_drum:
      continue
    for note in inst.notes:
      a, b = int(fs * note.start), int(fs * note.end)
      if b <= a:
        continue
      t = np.arange(b - a)
      env = np.exp(-t / fs)
      if env.size > fade.size:
        env[-fade.size:] *= fade
      else:
        env *= np.linspace(1, 0, env.size)
      freq = pretty_midi.note_number_to_hz(note.pitch)
      audio[a:b] += (env * note.velocity * np.sin(2 * np.pi * freq / fs * t)).astype(np.float32)
  return audio


def render_audio(pm, fs=SAMPLE_RATE, instrument='organ'):
  """PrettyMIDI -> float32 mono audio, by renderer(): FluidSynth plays every instrument
  with the program INSTRUMENTS[instrument] (the PrettyMIDI is left as it is)."""
  kind, font = renderer()
  if kind == 'sine':
    return render_sine(pm, fs)
  played = copy.deepcopy(pm)
  for inst in played.instruments:
    inst.program = INSTRUMENTS[instrument]
  return np.asarray(played.fluidsynth(fs=fs, sf2_path=font), np.float32)


def normalize(audio):
  """Scaled to TARGET_RMS_DBFS of RMS, its peak kept at or under PEAK_DBFS."""
  if not audio.size:
    return audio
  rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
  peak = float(np.max(np.abs(audio)))
  if rms == 0 or peak == 0:
    return audio
  gain = min(10 ** (TARGET_RMS_DBFS / 20) / rms, 10 ** (PEAK_DBFS / 20) / peak)
  return audio * np.float32(gain)


def write_wav(path, pm, instrument='organ'):
  """Renders a PrettyMIDI (render_audio, normalize) as 16-bit mono WAV at `path` (through
  epath); the first call in a process says which renderer on stderr."""
  if not _SAID:
    _SAID.append(True)
    print(f'note: {describe()}', file=sys.stderr, flush=True)
  audio = normalize(render_audio(pm, SAMPLE_RATE, instrument))
  pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype('<i2')
  del audio
  with workdir_lib.as_path(path).open('wb') as f, wave.open(f, 'wb') as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(SAMPLE_RATE)
    w.writeframes(pcm.tobytes())
