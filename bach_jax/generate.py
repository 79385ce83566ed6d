"""Sampling requests -> PianoRoll -> .mid / .wav / .png (loaded.py: load_model).

Every family's `sample(config, params, rng, request)` is one jitted lax.scan; this
module turns config/CLI options into a SampleRequest (primer, harmonization
melody, given cells to fill in (conditional.py), temperature, top-k, top-p), checks
them, runs it and writes the files (through etils
epath: a gs:// output folder works). Voice-leading rules (config.sample.rules /
rule_penalty, models/rules.py) are part of the config the sampler is compiled for;
their fallback count is noted on stderr and kept in each piece's meta.

Limits (docs/faults.md): a request whose output alone would not fit in the
available memory is refused before it starts; one of LONG_SAMPLE_STEPS steps or
more prints a line before (its size and an estimate from a short trial) and one
after (its rate), since the family's one compiled loop reports nothing while it
runs; the WAV of a piece longer than pieces.MAX_WAV_SECONDS is skipped with a
one-line note (the .mid and .png hold the whole piece).
"""

import dataclasses
import time

import jax
import numpy as np

from bach_jax import conditional
from bach_jax import errors
from bach_jax import pieces as pieces_lib
from bach_jax import voice_leading
from bach_jax import workdir as workdir_lib
from bach_jax.data import pianoroll
from bach_jax.data import shards
from bach_jax.errors import SampleError
from bach_jax.models import family as family_lib
from bach_jax.models.common import SampleRequest

LONG_SAMPLE_STEPS = 4096  # Requests of this many steps or more announce themselves.
TRIAL_STEPS = 512  # The short runs (this and twice as many) that estimate a long request.
SILENT_TRIES = 8  # Draws of a piece that begins with silence (config.sample.resample_silent).


def _note(msg):
  """A one-line note on stderr (stdout carries the command's result), from process 0."""
  if jax.process_index() == 0:
    pieces_lib.note(msg)


def _available_memory():
  """Bytes of host memory available (Linux MemAvailable), or None where unknown."""
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  return None


def output_bytes(request, num_voices=0):
  """Host bytes of a request's output: the roll (bool) and voices (int32) of every frame."""
  primer = 0 if request.primer is None else np.shape(request.primer)[1]
  return request.num_pieces * (primer + request.num_steps) * (88 + 4 * (num_voices or 0))


def check_sample_size(request, num_voices=0):
  """SampleError, before anything runs, when the output (times 4: device and host
  copies and the conversions) would not fit in the available memory."""
  need = 4 * output_bytes(request, num_voices)
  available = _available_memory()
  if available is not None and need > available:
    raise SampleError(
        f'config.sample.num_steps={request.num_steps}: {request.num_pieces} pieces of '
        f'{request.num_steps} steps need about {workdir_lib.format_bytes(need)} of memory '
        f'({workdir_lib.format_bytes(available)} available); sample fewer steps or pieces')


def sample(family, config, params, rng, request, num_voices=0):
  """Runs family.sample under jit -> dict of NumPy arrays ('roll' bool[N, T, 88], ...).

  A request of LONG_SAMPLE_STEPS steps or more prints its size and an estimated
  duration (from a TRIAL_STEPS-step run) before, and its rate after.
  """
  check_sample_size(request, num_voices)
  fn = family_lib.jitted(family, 'sample', config)
  long = request.num_steps >= LONG_SAMPLE_STEPS
  if long:
    _announce(fn, config, params, rng, request, num_voices)
  t0 = time.perf_counter()
  out = jax.device_get(fn(params, rng, request))
  errors.safe_point()
  if (config.sample.resample_silent and request.primer is None and request.melody is None
      and request.given is None):
    out = _resample_silent_starts(fn, params, rng, request, out)
  if 'rule_fallbacks' in out:
    rules = voice_leading.rules_from_config(config)  # A note per request: models/rules.py.
    _note(f'rules {rules.describe()}: {int(np.sum(out["rule_fallbacks"]))} fallbacks (every '
          f'pitch broke a rule) in {request.num_pieces} x {request.num_steps} steps')
  if long:
    seconds = time.perf_counter() - t0
    frames = request.num_pieces * request.num_steps
    _note(f'sampled {request.num_pieces} x {request.num_steps:,} steps in {seconds:.1f} s '
          f'({frames / max(seconds, 1e-9):,.0f} steps/s, compilation included)')
  return out


def _resample_silent_starts(fn, params, rng, request, out):
  """Pieces whose first frame is silent drawn again (up to SILENT_TRIES times), each row
  from its own new draw: rejection sampling, so a piece follows the model's distribution
  given that it starts with a sound, as every corpus piece does (trimmed of silence).
  Those the tries leave silent stay, with a note."""
  silent = ~out['roll'][:, 0].any(axis=-1)
  for attempt in range(1, SILENT_TRIES + 1):
    if not silent.any():
      return out
    again = jax.device_get(fn(params, jax.random.fold_in(rng, attempt), request))
    take = silent & again['roll'][:, 0].any(axis=-1)
    out = {k: np.where(take.reshape((-1,) + (1,) * (np.ndim(v) - 1)), again[k], v)
           for k, v in out.items()}
    silent &= ~take
  if silent.any():
    _note(f'{int(silent.sum())} of {request.num_pieces} pieces still begin with silence after '
          f'{SILENT_TRIES} draws (the model rarely starts a piece: train it longer)')
  return out


def _announce(fn, config, params, rng, request, num_voices):
  """The line before a long request: its size, and its duration estimated from two
  trials (TRIAL_STEPS and twice as many): the time grows as steps^p, p from their ratio
  (1: linear, e.g. a windowed attention's ring cache; 2: attention over the whole piece)."""
  spq, qpm = config.data.steps_per_quarter, float(config.sample.qpm)
  minutes = request.num_steps / spq / qpm
  size = workdir_lib.format_bytes(output_bytes(request, num_voices))
  pieces = f'{request.num_pieces} piece' + ('s' if request.num_pieces != 1 else '')
  _note(f'sampling {pieces} x {request.num_steps:,} steps '
        f'({minutes:.0f} min of music each at {qpm:g} qpm; output {size}) in one compiled '
        f'loop, which prints nothing until it ends; timing trials of {TRIAL_STEPS} and '
        f'{2 * TRIAL_STEPS} steps...')
  seconds = [_time_trial(fn, params, rng, request, n) for n in (TRIAL_STEPS, 2 * TRIAL_STEPS)]
  power = float(np.clip(np.log2(max(seconds[1], 1e-9) / max(seconds[0], 1e-9)), 1.0, 2.0))
  estimate = seconds[0] * (request.num_steps / TRIAL_STEPS) ** power
  _note(f'estimate: about {estimate:.0f} s after compiling (time grows as steps^{power:.1f})')


def _time_trial(fn, params, rng, request, num_steps):
  """Seconds of `request` cut to num_steps (compiled first, then timed)."""
  trial = dataclasses.replace(request, num_steps=num_steps)
  if request.melody is not None:  # int[N, P + num_steps]: the trial's part of it.
    primer = 0 if request.primer is None else np.shape(request.primer)[1]
    trial = dataclasses.replace(trial, melody=np.asarray(request.melody)[:, :primer + num_steps])
  jax.block_until_ready(fn(params, rng, trial))  # Compiles the trial's shape.
  times = []
  for _ in range(3):  # The fastest of three: the machine's noise only adds time.
    t0 = time.perf_counter()
    jax.block_until_ready(fn(params, rng, trial))
    times.append(time.perf_counter() - t0)
  return min(times)


def make_request(config, num_pieces=None, num_steps=None, primer=None, melody=None,
                 num_voices=None, given=None):
  """SampleRequest from config.sample, with optional overrides.

  primer: PianoRoll to continue (repeated for every piece).
  melody: int[T] soprano pitches (REST -1) to clamp; the request then samples T steps.
  given: int[T, V] given cells (conditional.MISSING where generated); T steps.
  """
  s = config.sample
  n = s.num_pieces if num_pieces is None else num_pieces
  num_steps = s.num_steps if num_steps is None else num_steps
  kw = dict(num_pieces=n, num_steps=num_steps, temperature=float(s.temperature),
            top_k=int(s.top_k), top_p=float(s.top_p),
            latent_temperature=float(s.latent_temperature))
  if primer is not None:
    kw['primer'] = np.repeat(primer.roll[None], n, axis=0)
    if num_voices:
      if primer.voices is None or primer.voices.shape[1] != num_voices:
        raise SampleError(f'primer {primer.meta.get("file", "")!r} has no {num_voices} voices '
                          'for this model')
      kw['primer_voices'] = np.repeat(primer.voices[None].astype(np.int32), n, axis=0)
  if melody is not None:
    melody = np.asarray(melody, np.int32)
    p = 0 if primer is None else primer.roll.shape[0]
    kw['num_steps'] = max(len(melody) - p, 1)
    kw['melody'] = np.repeat(melody[None], n, axis=0)
  if given is not None:
    kw['num_steps'] = len(given)
    kw['given'] = np.repeat(np.asarray(given, np.int32)[None], n, axis=0)
  return SampleRequest(**kw)


def sample_to_files(family, config, params, rng, outdir, num_pieces=None, corpus=None,
                    prefix='sample'):
  """Samples with config.sample's options (primer / harmonize) and writes the files."""
  s = config.sample
  check_request_supported(family, primer=bool(s.primer), melody=bool(s.harmonize),
                          rules=s.rules, voice=s.given)
  spq = corpus.steps_per_quarter if corpus is not None else config.data.steps_per_quarter
  num_voices = corpus.num_voices if corpus is not None else None
  primer = (pieces_lib.load_piece(s.primer, spq, corpus, s.split, s.primer_steps)
            if s.primer else None)
  melody = pieces_lib.soprano_line(pieces_lib.load_piece(s.harmonize, spq)) if s.harmonize else None
  names, given = voice_names(num_voices), None
  if melody is not None and family.CAPABILITIES.inpaint and num_voices:
    given = conditional.melody_given(check_melody(melody), s.given, num_voices)
    melody, names = None, conditional.voice_names(given)
  request = make_request(config, num_pieces=num_pieces, primer=primer, melody=melody,
                         num_voices=num_voices, given=given)
  out = sample(family, config, params, rng, request, num_voices)
  pieces = pieces_lib.to_pianorolls(out, spq, names)
  return pieces_lib.write_pieces(pieces, outdir, prefix, qpm=s.qpm, wav=s.write_wav,
                                 instrument=s.instrument)


def _is_int(x):
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_number(x):
  return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def check_sample_args(num_pieces, num_steps, temperature, top_k, top_p, seed):
  """SampleError naming the argument and what it may be, before anything compiles."""
  checks = (('num_pieces', num_pieces, _is_int(num_pieces) and num_pieces >= 1,
             'an integer >= 1'),
            ('num_steps', num_steps, _is_int(num_steps) and num_steps >= 1, 'an integer >= 1'),
            ('temperature', temperature, _is_number(temperature) and 0 <= temperature < np.inf,
             'a number > 0 (< 1 safer, > 1 wilder), or 0: greedy (the most likely class)'),
            ('top_k', top_k, _is_int(top_k) and top_k >= 0, 'an integer >= 0 (0: off)'),
            ('top_p', top_p, _is_number(top_p) and 0 < top_p <= 1, 'in (0, 1] (1: off)'),
            ('seed', seed, _is_int(seed), 'an integer'))
  for name, value, ok, allowed in checks:
    if not ok:
      raise SampleError(f'{name}={value!r}: must be {allowed}')


def check_melody(melody):
  """A melody as int32[T]: MIDI pitches of the piano (21..108) or -1 (rest); SampleError
  naming the first bad frame otherwise."""
  try:
    mel = np.asarray(melody)
  except (TypeError, ValueError):
    mel = np.zeros((0,))
  if mel.ndim != 1 or mel.size == 0 or not np.issubdtype(mel.dtype, np.number):
    raise SampleError(f'melody: must be a non-empty list of MIDI pitches (-1: rest), got '
                      f'{str(melody)[:60]}')
  low, high = pianoroll.LOWEST_PITCH, pianoroll.LOWEST_PITCH + pianoroll.NUM_KEYS - 1
  bad = np.flatnonzero((mel != np.round(mel)) | ((mel != -1) & ((mel < low) | (mel > high))))
  if bad.size:
    raise SampleError(f'melody: {mel[bad[0]].item()!r} at frame {bad[0]} is not a piano pitch '
                      f'({low}..{high}) nor a rest (-1)')
  return mel.astype(np.int32)


def check_pieces(pieces):
  """SampleError unless `pieces` is a non-empty sequence of PianoRoll (a list, or a
  corpus split) -> a list."""
  if isinstance(pieces, pianoroll.PianoRoll) or not isinstance(pieces, (list, tuple,
                                                                         shards.PieceList)):
    raise SampleError(f'pieces: must be a list of PianoRoll, got a {type(pieces).__name__}')
  if not pieces:
    raise SampleError('pieces: an empty list; give at least one PianoRoll')
  for i, p in enumerate(pieces):
    if not isinstance(p, pianoroll.PianoRoll):
      raise SampleError(f'pieces[{i}]: a {type(p).__name__}, not a PianoRoll')
  return list(pieces)


def voice_names(num_voices):
  """S, A, T, B for a 4-voice model's pieces, else None."""
  return list(pianoroll.SATB) if num_voices == 4 else None


def check_request_supported(family, primer=False, melody=False, rules='', voice='soprano',
                            inpaint=False):
  """SampleError naming the option when the family cannot continue a primer, harmonize a
  melody (CAPABILITIES.primer / melody), harmonize another voice than the soprano or
  rewrite a span (CAPABILITIES.inpaint); ConfigError naming config.sample.rules when it
  cannot apply voice-leading rules (CAPABILITIES.rules)."""
  family_lib.check_rules(family, rules)
  caps, name = family.CAPABILITIES, family_lib.name_of(family)
  if primer and not caps.primer:
    raise SampleError(f'config.sample.primer: the {name} family cannot continue a primer')
  if melody and not caps.melody:
    raise SampleError(f'config.sample.harmonize: the {name} family cannot harmonize a melody')
  if melody and str(voice).lower() != 'soprano' and not caps.inpaint:
    raise SampleError(f'config.sample.given={voice!r}: the {name} family harmonizes the '
                      'soprano only (it is causal); the harmonizer takes any voice')
  if inpaint and not caps.inpaint:
    raise SampleError(f'config.sample.inpaint: the {name} family cannot rewrite a span (it '
                      'reads no future); use a harmonizer run (configs/harmonizer.py)')


def inpaint_to_files(family, config, params, rng, outdir, corpus=None):
  """--mode=inpaint: config.sample.inpaint (a MIDI path or test:INDEX) with
  sample.inpaint_voices written again over sample.inpaint_span -> the .mid paths of
  inpaint_original (the piece) and inpaint_I (sample.num_pieces rewritings)."""
  s = config.sample
  check_request_supported(family, rules=s.rules, inpaint=True)
  spq = corpus.steps_per_quarter if corpus is not None else config.data.steps_per_quarter
  piece = pieces_lib.load_piece(s.inpaint, spq, corpus, s.split)
  given = conditional.span_given(piece, s.inpaint_span, s.inpaint_voices.split(','))
  request = make_request(config, given=given, num_voices=given.shape[1])
  out = sample(family, config, params, rng, request, given.shape[1])
  names = conditional.voice_names(given)
  original = pieces_lib.to_pianorolls({'roll': piece.roll[None], 'voices': given[None]
                                       .clip(-1)}, spq, list(pianoroll.SATB), name='original')
  paths = pieces_lib.write_pieces(original, outdir, 'inpaint_original', qpm=s.qpm,
                                  wav=s.write_wav, instrument=s.instrument)
  return paths + pieces_lib.write_pieces(pieces_lib.to_pianorolls(out, spq, names), outdir,
                                         'inpaint', qpm=s.qpm, wav=s.write_wav,
                                         instrument=s.instrument)
