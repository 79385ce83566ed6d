"""Shared config sections and validation for every configs/<model>.py.

Every config is an ml_collections.ConfigDict with sections `model`, `data`,
`train` and `sample`. configs/<model>.py starts from `base_config()` and fills
in `model`; `validate(config)` runs before anything is compiled and names the
key of any bad value. A run's config.json written before a key existed gets its
default from `fill_defaults` (every section but `model`, whose keys the family
fills: models.fill_model_defaults), so code reads every key directly, never
with a fallback of its own. This module imports nothing above the data layer.
"""

import ml_collections

from bach_jax import audio
from bach_jax import voice_leading
from bach_jax.data import download
from bach_jax.errors import ConfigError  # pylint: disable=unused-import  (re-exported)


def jsb_quarter() -> str:
  """The JSB Chorales benchmark (quarter-note grid), resolved when called.

  <data dir>/jsb-chorales-quarter.json, the data dir being $BACH_JAX_DATA, else
  $BACH_JAX_CACHE/jsb or ~/.cache/bach_jax/jsb; `python -m bach_jax.data
  download jsb` puts it there (bach_jax/data/download.py). The repository's
  benchmarks set BACH_JAX_DATA=../shared/data/jsb.
  """
  return download.jsb_path(download.QUARTER)


def base_config():
  """Returns the sections shared by all model families, with defaults."""
  config = ml_collections.ConfigDict()

  config.seed = 0  # Root of every RNG stream (params, dropout, data order).

  data = config.data = ml_collections.ConfigDict()
  # Where pieces come from: 'bach_chorales' (music21's embedded chorales),
  # 'midi_dir:PATH' (a folder of .mid/.midi, recursive) or 'jsb:PATH' (JSB JSON).
  data.source = 'bach_chorales'
  data.steps_per_quarter = 4  # Grid: 1, 2 or 4 frames per quarter note (JSB keeps its own).
  data.transpose = 'tonic'  # 'tonic': to C major / C minor; 'none': as written.
  data.augment_transpose = 0  # Random +-semitones per training window (0 = off).
  data.min_steps = 16  # Pieces shorter than this many frames are dropped.
  data.window_steps = 32  # Frames per training window (the paper uses 32).
  data.hop_steps = 16  # Frames between the starts of consecutive windows.
  data.pad_short = False  # True: a piece shorter than a window gives one window, padded
  #   at its end and masked out of the loss (else it gives none); with a window longer
  #   than every piece, training sees whole pieces, as evaluation does.
  data.pad_start = 1  # Silent frames put before each piece: the model's "start" input.
  data.cache_dir = ''  # '' = $BACH_JAX_CACHE or ~/.cache/bach_jax.
  data.workers = 0  # Parallel workers for preparation; 0 = one per core.
  data.shard_files = 256  # Source files per shard of the prepared corpus (data/shards.py).

  train = config.train = ml_collections.ConfigDict()
  train.batch_size = 64  # Global batch (all hosts); must divide by the device count.
  train.num_steps = 5000  # Training steps (optimizer updates; the GAN: generator updates).
  train.learning_rate = 1e-3  # Peak learning rate (after warmup).
  train.warmup_steps = 100  # Linear ramp from 0 over this many steps; 0 = full rate at once.
  train.lr_schedule = 'cosine'  # 'cosine' | 'constant' (after warmup).
  train.grad_clip_norm = 1.0  # 0 = off.
  train.weight_decay = 0.0  # AdamW's decoupled weight decay.
  train.ema_decay = 0.0  # > 0: keep an exponential moving average of the params (e.g.
  #   0.999) and use it for evaluation, the best checkpoint and sampling.
  train.log_every = 50  # Steps between progress lines / metric writes.
  train.eval_every = 500  # Steps between valid-split evaluations (0 = only at end).
  train.checkpoint_every = 500  # Steps between checkpoints.
  train.keep_checkpoints = 3  # Latest N kept, plus the best by the family's selection metric
  #   on valid (its frame NLL, a bound on it, or its samples' metric distance).
  train.keep_steps = ''  # Comma-separated steps whose checkpoints are saved and kept whatever
  #   keep_checkpoints says (e.g. a study's budgets: '250,500,1000').
  train.eval_batch_size = 32  # Whole pieces per eval batch.
  train.eval_split = 'valid'  # Split evaluated during training (the best checkpoint: valid).
  train.num_final_samples = 4  # Pieces written to samples/ at the end (0 = none).
  train.halt_on_nan = True  # Stop at a non-finite training metric (False: warn and go on
  #   while the params stay finite).
  train.eval_samples = 64  # A family without a likelihood: pieces sampled at each evaluation,
  #   whose musical metrics are compared with the split's (its selection metric).
  train.init_from = ''  # WORKDIR or WORKDIR:STEP: start from that run's params (its best
  #   checkpoint, else latest; its average if it kept one) with a fresh optimizer, e.g. to
  #   fine-tune on data.source='midi_dir:PATH'. Shapes must match (bach_jax/finetune.py).
  train.init_from_into = ''  # '' or a top-level key of this model's params that init_from's
  #   params become (its model config is copied into config.model.<key>): a model built on
  #   a trained one, e.g. configs/vqvae_prior.py.
  train.frozen = ''  # Comma-separated top-level params kept out of the optimizer (frozen).

  sample = config.sample = ml_collections.ConfigDict()
  sample.num_pieces = 4  # Pieces per --mode=sample (and reconstruct).
  sample.num_steps = 256  # Frames per sampled piece.
  sample.temperature = 1.0  # Divides the output logits (< 1: safer, > 1: wilder).
  sample.latent_temperature = 1.0  # Latent families: scale of the prior's std when sampling z.
  sample.top_k = 0  # 0 = off.
  sample.top_p = 1.0  # 1.0 = off.
  sample.primer = ''  # '' | PATH.mid | 'test:INDEX' (or train:, valid:; split:INDEX = sample.split's).
  sample.primer_steps = 0  # Frames of the primer to keep (0 = all).
  sample.harmonize = ''  # PATH.mid: its melody is clamped as the soprano (or sample.given).
  sample.given = 'soprano'  # The voice sample.harmonize gives: soprano; alto, tenor or bass
  #   (e.g. a bass line to realize) for a family that inpaints (the harmonizer).
  sample.inpaint = ''  # --mode=inpaint: the piece (PATH.mid or test:INDEX) to rewrite part of.
  sample.inpaint_span = ''  # START:END frames rewritten ('' = the whole piece).
  sample.inpaint_voices = 'alto'  # Comma-separated voices rewritten over the span.
  sample.split = 'test'  # Split used by --mode=evaluate and --mode=reconstruct.
  sample.interpolate = ''  # --mode=interpolate: 'A,B', each PATH.mid or 'test:INDEX' (as primer).
  sample.interpolation_points = 5  # Points from A to B, both ends included.
  sample.resample_silent = True  # Draw a piece again when its first frame is silent (up to 8
  #   times): samples follow the model given that a piece starts, as every real one does.
  sample.qpm = 80.0  # Tempo of written MIDI/WAV.
  sample.write_wav = True  # Also render a .wav per piece (FluidSynth where installed, else
  #   sine synthesis: bach_jax/audio.py).
  sample.instrument = 'organ'  # Every voice's sound in .mid and .wav: organ, choir, strings,
  #   piano (General MIDI programs 19, 52, 48, 0).
  sample.rules = ''  # Voice-leading rules applied when sampling (models/rules.py), comma-
  #   separated: parallels, hidden, crossing, spacing, range, or all; '' = off. Families
  #   with slot heads only (lstm_attn); --mode=evaluate then scores the constrained model.
  sample.rule_penalty = float('inf')  # Nats per violation (soft), or inf: hard masking.

  config.model = ml_collections.ConfigDict()
  return config


def fill_defaults(config):
  """Adds the keys of base_config() that `config` lacks (a run's config.json written
  before they existed), in every section but `model`, so --config.KEY works on every
  run and code reads every key directly. Returns config."""
  base = base_config()
  for key, value in base.items():
    if key == 'model':
      continue
    if key not in config:
      config[key] = value
    elif hasattr(value, 'items'):
      for k, v in value.items():
        if k not in config[key]:
          config[key][k] = v
  return config


def test_training(config):
  """The training block every ':test' variant shares (tiny, seconds on a CPU)."""
  t = config.train
  t.batch_size = t.eval_batch_size = 16
  t.num_steps = 60
  t.warmup_steps = 5
  t.learning_rate = 1e-2
  t.log_every = 10
  t.eval_every = t.checkpoint_every = 30
  t.num_final_samples = 2
  config.sample.num_steps = 32
  return config


def sibling_config(config_file, name, arg):
  """configs/NAME.py's get_config(arg), NAME beside `config_file` (a config's __file__):
  a config built on another (its keys, sizes and schedule)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'configs_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def check_variant(config_file, arg, variants):
  """ValueError naming configs/<file> and its variants when `arg` is not '' nor one of
  them (each config file declares VARIANTS, read by the tests and the docs' checks)."""
  if arg and arg not in variants:
    raise ValueError(f'configs/{config_file}: unknown variant {arg!r} '
                     f'(known: {", ".join(variants)})')


VOICES = ('soprano', 'alto', 'tenor', 'bass')  # sample.given, sample.inpaint_voices.


def keep_steps(config):
  """train.keep_steps as a sorted tuple of ints (ValueError when malformed)."""
  steps = tuple(sorted(int(x) for x in str(config.train.keep_steps).split(',') if x.strip()))
  if any(s < 1 for s in steps):
    raise ValueError(steps)
  return steps


def _require(ok, key, message):
  if not ok:
    raise ConfigError(f'config.{key}: {message}')


def validate(config, device_count=1):
  """Checks values that would otherwise fail late or silently. Raises ConfigError."""
  d, t, s = config.data, config.train, config.sample
  _require(d.steps_per_quarter in (1, 2, 4), 'data.steps_per_quarter',
           f'must be 1, 2 or 4, got {d.steps_per_quarter!r}')
  _require(d.transpose in ('tonic', 'none'), 'data.transpose',
           f"must be 'tonic' or 'none', got {d.transpose!r}")
  _require(d.window_steps >= 2, 'data.window_steps',
           f'must be >= 2, got {d.window_steps}')
  _require(d.hop_steps >= 1, 'data.hop_steps', f'must be >= 1, got {d.hop_steps}')
  _require(d.augment_transpose >= 0, 'data.augment_transpose', 'must be >= 0')
  _require(d.shard_files >= 1, 'data.shard_files', f'must be >= 1, got {d.shard_files}')
  src = d.source
  _require(src == 'bach_chorales' or src.startswith(('midi_dir:', 'jsb:')),
           'data.source', f"must be 'bach_chorales', 'midi_dir:PATH' or 'jsb:PATH', got {src!r}")
  _require(t.batch_size > 0 and t.batch_size % device_count == 0, 'train.batch_size',
           f'{t.batch_size} must be a positive multiple of the device count ({device_count})')
  _require(t.eval_batch_size > 0 and t.eval_batch_size % device_count == 0,
           'train.eval_batch_size',
           f'{t.eval_batch_size} must be a positive multiple of the device count ({device_count})')
  _require(t.num_steps >= 0, 'train.num_steps', 'must be >= 0')
  _require(t.learning_rate > 0, 'train.learning_rate', 'must be > 0')
  _require(0 <= t.ema_decay < 1, 'train.ema_decay',
           f'must be in [0, 1) (0 = off), got {t.ema_decay!r}')
  _require(t.lr_schedule in ('cosine', 'constant'), 'train.lr_schedule',
           f"must be 'cosine' or 'constant', got {t.lr_schedule!r}")
  _require(t.log_every > 0, 'train.log_every', 'must be > 0')
  _require(t.checkpoint_every > 0, 'train.checkpoint_every', 'must be > 0')
  _require(t.keep_checkpoints >= 1, 'train.keep_checkpoints', 'must be >= 1')
  try:
    keep_steps(config)
  except ValueError:
    _require(False, 'train.keep_steps', f"must be '' or comma-separated steps >= 1, got "
             f'{t.keep_steps!r}')
  _require(isinstance(t.init_from, str), 'train.init_from',
           f"must be '' or a workdir ('WORKDIR' or 'WORKDIR:STEP'), got {t.init_from!r}")
  _require(t.eval_split in ('train', 'valid', 'test'), 'train.eval_split',
           'must be train, valid or test')
  _require(s.split in ('train', 'valid', 'test'), 'sample.split', 'must be train, valid or test')
  _require(s.temperature > 0, 'sample.temperature', 'must be > 0')
  _require(s.latent_temperature > 0, 'sample.latent_temperature', 'must be > 0')
  _require(0 < s.top_p <= 1, 'sample.top_p', 'must be in (0, 1]')
  _require(s.top_k >= 0, 'sample.top_k', 'must be >= 0')
  _require(s.num_steps >= 1, 'sample.num_steps', 'must be >= 1')
  _require(str(s.given).lower() in VOICES, 'sample.given',
           f'must be one of {", ".join(VOICES)}, got {s.given!r}')
  _require(all(v.strip().lower() in VOICES for v in str(s.inpaint_voices).split(',')),
           'sample.inpaint_voices', f'must be voices among {", ".join(VOICES)}, got '
           f'{s.inpaint_voices!r}')
  _require(s.instrument in audio.INSTRUMENTS, 'sample.instrument',
           f'must be one of {", ".join(audio.INSTRUMENTS)}, got {s.instrument!r}')
  voice_leading.rules_from_config(config)  # ConfigError naming sample.rules / rule_penalty.
