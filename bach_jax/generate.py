"""Sampling requests -> PianoRoll -> .mid / .wav / .png; load_model(workdir) for notebooks.

Every family's `sample(config, params, rng, request)` is one jitted lax.scan; this
module turns config/CLI options into a SampleRequest (primer, harmonization
melody, temperature, top-k, top-p), runs it and writes the files (through etils
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
import ml_collections
import numpy as np

from bach_jax import errors
from bach_jax import evaluate
from bach_jax import experiment
from bach_jax import latent_ops
from bach_jax import parallel
from bach_jax import pieces as pieces_lib
from bach_jax import voice_leading
from bach_jax import workdir as workdir_lib
from bach_jax.data import pianoroll
from bach_jax.errors import SampleError
from bach_jax.models import family as family_lib
from bach_jax.models.common import SampleRequest

LONG_SAMPLE_STEPS = 4096  # Requests of this many steps or more announce themselves.
TRIAL_STEPS = 256  # The short run that estimates a long request's duration.
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
  if config.sample.resample_silent and request.primer is None and request.melody is None:
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
  t0 = time.perf_counter()
  jax.block_until_ready(fn(params, rng, trial))
  return time.perf_counter() - t0


def make_request(config, num_pieces=None, num_steps=None, primer=None, melody=None,
                 num_voices=None):
  """SampleRequest from config.sample, with optional overrides.

  primer: PianoRoll to continue (repeated for every piece).
  melody: int[T] soprano pitches (REST -1) to clamp; the request then samples T steps.
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
  return SampleRequest(**kw)


def sample_to_files(family, config, params, rng, outdir, num_pieces=None, corpus=None,
                    prefix='sample'):
  """Samples with config.sample's options (primer / harmonize) and writes the files."""
  s = config.sample
  check_request_supported(family, primer=bool(s.primer), melody=bool(s.harmonize),
                          rules=s.rules)
  spq = corpus.steps_per_quarter if corpus is not None else config.data.steps_per_quarter
  num_voices = corpus.num_voices if corpus is not None else None
  primer = (pieces_lib.load_piece(s.primer, spq, corpus, s.split, s.primer_steps)
            if s.primer else None)
  melody = pieces_lib.soprano_line(pieces_lib.load_piece(s.harmonize, spq)) if s.harmonize else None
  request = make_request(config, num_pieces=num_pieces, primer=primer, melody=melody,
                         num_voices=num_voices)
  out = sample(family, config, params, rng, request, num_voices)
  pieces = pieces_lib.to_pianorolls(out, spq, voice_names(num_voices))
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
  """SampleError unless `pieces` is a non-empty list of PianoRoll."""
  if isinstance(pieces, pianoroll.PianoRoll) or not isinstance(pieces, (list, tuple)):
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


def check_request_supported(family, primer=False, melody=False, rules=''):
  """SampleError naming the option when the family cannot continue a primer or
  harmonize a melody (CAPABILITIES.primer / melody); ConfigError naming
  config.sample.rules when it cannot apply voice-leading rules (CAPABILITIES.rules)."""
  family_lib.check_rules(family, rules)
  caps, name = family.CAPABILITIES, family_lib.name_of(family)
  if primer and not caps.primer:
    raise SampleError(f'config.sample.primer: the {name} family cannot continue a primer')
  if melody and not caps.melody:
    raise SampleError(f'config.sample.harmonize: the {name} family cannot harmonize a melody')


class LoadedModel:
  """A trained run (bach_jax.load_model, an example there): samples, scores and writes
  pieces without knowing its config.

  Pieces in and out are bach_jax.data.PianoRoll: roll bool[T, 88] (key k is MIDI
  pitch 21 + k), voices int16[T, V] (MIDI pitch per voice, -1 rest; S, A, T, B) or
  None, steps_per_quarter (frames per quarter note) and meta (a dict);
  bach_jax.data.from_midi(path, steps_per_quarter=model.steps_per_quarter) reads one.
  Every family: sample, score, write. Latent families only (VAE, VQ-VAE:
  family.CAPABILITIES.latent): encode, decode, reconstruct, interpolate; the others
  raise latent_ops.LatentError. Options a family lacks (primer, melody: the LSTMs;
  rules: lstm_attn) raise SampleError / ConfigError naming them before anything runs.

  Attributes: config (the run's ConfigDict), family (its models/ module), params, step
  (the checkpoint's), num_voices (the corpus's voices, or None), steps_per_quarter.
  """

  def __init__(self, config, family, params, step, meta):
    self.config, self.family, self.params, self.step = config, family, params, step
    self.num_voices = meta.get('num_voices')
    self.steps_per_quarter = meta.get('steps_per_quarter') or config.data.steps_per_quarter

  def sample(self, num_pieces=4, num_steps=64, temperature=1.0, top_k=0, top_p=1.0, seed=0,
             primer=None, melody=None, rules=None, rule_penalty=None):
    """New pieces -> list of num_pieces PianoRoll (a new shape compiles first).

    num_steps: frames per piece (steps_per_quarter to a beat); temperature (> 0;
    < 1 safer), top_k (0: off), top_p (1.0: off) filter each output distribution;
    the same seed, arguments and checkpoint give the same pieces. A latent family
    draws z from its prior (scaled by config.sample.latent_temperature). primer: a
    PianoRoll or MIDI path to continue; the pieces start with its P frames (P +
    num_steps in all). melody: int[T] soprano MIDI pitches (-1 rest) or a MIDI path
    (its top voice) to harmonize; the pieces then have T frames (num_steps unused).
    rules, rule_penalty: voice-leading rules ('parallels,crossing', 'all'; '' = off;
    docs/rules.md) and nats per violation (inf: hard); None = config.sample's; each
    piece's meta then holds 'rule_fallbacks' (choices where every pitch broke a rule).
    temperature=0 samples greedily: the most likely class at every head. A piece whose
    first frame is silent is drawn again (config.sample.resample_silent). Bad
    arguments raise SampleError naming them, before anything compiles.
    """
    check_sample_args(num_pieces, num_steps, temperature, top_k, top_p, seed)
    if temperature == 0:
      temperature, top_k = 1.0, 1
    config = self._config_with_rules(rules, rule_penalty)
    config.sample.update(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p))
    check_request_supported(self.family, primer=primer is not None, melody=melody is not None,
                            rules=config.sample.rules)
    if isinstance(primer, str):
      primer = pieces_lib.load_piece(primer, self.steps_per_quarter)
    elif primer is not None and not isinstance(primer, pianoroll.PianoRoll):
      raise SampleError(f'primer: a PianoRoll or a MIDI path, got a {type(primer).__name__}')
    if isinstance(melody, str):
      melody = pieces_lib.soprano_line(pieces_lib.load_piece(melody, self.steps_per_quarter))
    if melody is not None:
      melody = check_melody(melody)
    request = make_request(config, num_pieces, num_steps, primer, melody, self.num_voices)
    out = sample(self.family, config, self.params, jax.random.key(seed), request,
                 self.num_voices)
    return pieces_lib.to_pianorolls(out, self.steps_per_quarter, voice_names(self.num_voices))

  def score(self, pieces, rules=None, rule_penalty=None):
    """Scores a list of whole pieces (PianoRoll) -> dict; the same pieces, same numbers.

    Likelihoods are nats per frame over every frame of every piece (lower is better):
    'frame_nll' (exact: the LSTMs), or upper bounds on it: the VAE's 'iwae_frame_nll'
    (and 'nelbo_frame_nll', ...), the VQ-VAE's 'code_bound_frame_nll'. The GAN has
    none: 'metric_distance' of its samples to the pieces. 'select_by' names the main
    key (result[result['select_by']]); 'likelihood': 'exact', 'bound' or 'none';
    also 'frames', 'pieces', 'seconds'. rules, rule_penalty: as in sample; a finite
    penalty scores the rule-constrained model (exactly, for an exact family).
    SampleError when the model reads voices (a voice corpus) and a piece has none.
    """
    pieces = check_pieces(pieces)
    config = self._config_with_rules(rules, rule_penalty)
    family_lib.check_rules(self.family, config.sample.rules)
    mesh = parallel.make_mesh()
    fn = evaluate.make_eval_fn(self.family, config, mesh)
    return evaluate.evaluate_pieces(fn, self.family, config, self.params, pieces, mesh,
                                    self.voices_for(pieces))

  def _config_with_rules(self, rules=None, rule_penalty=None):
    """A copy of the config with sample.rules / rule_penalty set (None: kept), checked."""
    config = ml_collections.ConfigDict(self.config.to_dict())
    config.sample.rules = str(config.sample.rules if rules is None else rules)
    config.sample.rule_penalty = float(
        config.sample.rule_penalty if rule_penalty is None else rule_penalty)
    voice_leading.rules_from_config(config)  # ConfigError naming the key.
    return config

  def voices_for(self, pieces):
    """The voice count to batch `pieces` with: the model's when every piece has those
    voices (a model that reads them gets them; others ignore them), else None.
    SampleError when the family reads voices (CAPABILITIES.voices), the run's corpus
    had them, and the pieces lack them."""
    have = bool(self.num_voices) and all(
        p.voices is not None and p.voices.shape[1] == self.num_voices for p in pieces)
    if have:
      return self.num_voices
    if self.family.CAPABILITIES.voices and self.num_voices:
      raise SampleError(f'this model reads {self.num_voices} voices; the pieces '
                        f'({pieces[0].meta.get("file", "?")}, ...) do not all have them')
    return None

  # Latent families (CAPABILITIES.latent); the others raise latent_ops.LatentError.

  def encode(self, pieces):
    """-> list (one per piece) of its latents, a row per segment: the VAE's posterior
    means float32[segments, latent_dim], the VQ-VAE's codes int32[segments, patterns]."""
    pieces = check_pieces(pieces)
    return latent_ops.encode_pieces(self.family, self.config, self.params, pieces,
                                    self.voices_for(pieces))

  def decode(self, z, num_steps=None, greedy=True, temperature=1.0, seed=0):
    """Latents [N, segments, ...] (encode's, stacked) -> list of N PianoRoll, num_steps
    frames (None: every segment's). greedy: the most likely output; else sampled at
    temperature from seed."""
    z = np.asarray(z)
    out = latent_ops.decode(self.family, self.config, self.params, z, num_steps, seed, greedy,
                            temperature)
    return pieces_lib.to_pianorolls(out, self.steps_per_quarter, voice_names(self.num_voices))

  def reconstruct(self, pieces):
    """Encode, then decode greedily -> (list of PianoRoll, stats): key_accuracy,
    note_precision, note_recall, frame_accuracy over all frames; frames, pieces."""
    pieces = check_pieces(pieces)
    return latent_ops.reconstruct(self.family, self.config, self.params, pieces,
                                  self.voices_for(pieces), voice_names(self.num_voices))

  def interpolate(self, piece_a, piece_b, num_points=5):
    """-> num_points PianoRoll decoded (greedily) along the path from piece_a's latents
    to piece_b's (the VAE: slerp of posterior means; the VQ-VAE: codes swapped in);
    the ends are the two reconstructions. Pieces: PianoRoll or MIDI paths, both cut
    to the shorter one."""
    a, b = (pieces_lib.load_piece(p, self.steps_per_quarter) if isinstance(p, str) else p
            for p in (piece_a, piece_b))
    return latent_ops.interpolate(self.family, self.config, self.params, a, b, num_points,
                                  self.voices_for([a, b]), voice_names(self.num_voices))

  def write(self, pieces, outdir, prefix='sample', wav=True):
    """PREFIX_i.mid (an instrument per voice), .png and .wav (wav=False, or a piece over
    pieces.MAX_WAV_SECONDS: none) per piece into outdir (created; gs:// works) at
    config.sample.qpm -> list of the .mid paths."""
    return pieces_lib.write_pieces(pieces, outdir, prefix, qpm=self.config.sample.qpm, wav=wav,
                                   instrument=self.config.sample.instrument)


def load_model(workdir, step=None, best=True, warn=None):
  """bach_jax.load_model (documented there), plus best=False: the latest checkpoint
  even where a best one exists; warn: a callable that gets each warning line
  (default: stderr)."""
  run = experiment.restore_run(workdir, step, best=best, warn=warn)
  return LoadedModel(run.config, run.family, run.state.eval_params(), run.step, run.meta)
