"""Piano-roll audio: a PrettyMIDI rendered by sine synthesis and written as WAV.

No soundfont is needed; generate.write_pieces writes one .wav per piece with this.
"""

import wave

import numpy as np
import pretty_midi

from bach_jax import workdir as workdir_lib

SAMPLE_RATE = 22050


def render_audio(pm, fs=SAMPLE_RATE):
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


def write_wav(path, pm):
  """Renders a PrettyMIDI (render_audio) as 16-bit mono WAV at `path` (through epath)."""
  audio = render_audio(pm)
  peak = float(np.max(np.abs(audio))) if audio.size else 0.0
  pcm = (audio * (0.8 * 32767 / peak) if peak > 0 else audio).astype('<i2')
  del audio
  with workdir_lib.as_path(path).open('wb') as f, wave.open(f, 'wb') as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(SAMPLE_RATE)
    w.writeframes(pcm.tobytes())
