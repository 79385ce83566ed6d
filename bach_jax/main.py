r"""bach_jax entry point.

  python -m bach_jax.main --config=configs/lstm_attn.py --workdir=DIR             # train / resume
  python -m bach_jax.main --config=configs/lstm.py:test --workdir=DIR             # tiny, seconds
  python -m bach_jax.main --workdir=DIR --mode=sample --config.sample.num_pieces=8
  python -m bach_jax.main --workdir=DIR --mode=evaluate --config.sample.split=test
  python -m bach_jax.main --config=configs/lstm.py --mode=prepare                  # corpus summary
  python -m bach_jax.main --workdir=DIR --mode=reconstruct --config.sample.num_pieces=4   # latent
  python -m bach_jax.main --workdir=DIR --mode=interpolate --config.sample.interpolate=split:0,split:1
  python -m bach_jax.main --workdir=DIR --mode=sample --config.sample.harmonize=BASS.mid \
      --config.sample.given=bass                                                   # harmonizer
  python -m bach_jax.main --workdir=DIR --mode=inpaint --config.sample.inpaint=test:3 \
      --config.sample.inpaint_span=32:64 --config.sample.inpaint_voices=alto       # harmonizer

--mode=sample / evaluate on an existing workdir reuse its config.json, with any
--config.KEY=VALUE overrides applied on top (e.g. a different data.source).

Exit codes (docs/faults.md): 0 done; 1 a bug (traceback); 2 a user error (config
key or file, workdir, checkpoint, sampling option: one line naming it); 3 a
non-finite loss; 73 the workdir is locked by another live run; 74 a write failed
(disk full: one line naming the path and the space needed); 75 interrupted by
SIGTERM / Ctrl-C after saving a checkpoint (run the same command again to
resume); 130 Ctrl-C in sample / evaluate, or a second one while training stops
(stopped at once without saving; the checkpoints already written stand).
"""

import difflib
import json
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from bach_jax import errors
from bach_jax.errors import EXIT_INTERRUPTED  # pylint: disable=unused-import  (documented)

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory of the run: checkpoints, metrics, samples.')
flags.DEFINE_enum('mode', 'train',
                  ['train', 'sample', 'evaluate', 'reconstruct', 'interpolate', 'inpaint',
                   'prepare'],
                  'What to do (reconstruct / interpolate: latent families only; inpaint: '
                  'the harmonizer).')
flags.DEFINE_integer('step', None, 'Checkpoint step to load (default: best, else latest).')
flags.DEFINE_string('outdir', None, 'Where sample / reconstruct / interpolate write '
                    '(default: WORKDIR/samples); another folder leaves the workdir '
                    'untouched (read-only, or locked by a training run).')

_fail = errors.fail


def _flag_value(argv, name):
  """The value of the last --NAME=V or --NAME V in argv (as absl takes it), or None."""
  value = None
  for i, a in enumerate(argv):
    if a.startswith(f'--{name}='):
      value = a.split('=', 1)[1]
    elif a == f'--{name}' and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _workdir_config_json(argv):
  """Path (epath) of the workdir's config.json when --config is not given, else None."""
  from bach_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  if _flag_value(argv, 'config') is not None:
    return None
  workdir = _flag_value(argv, 'workdir')
  if not workdir:
    return None
  path = workdir_lib.as_path(workdir) / 'config.json'
  return path if path.exists() else None


def define_config_flag(argv):
  """--config: a config file, or by default the workdir's config.json (so that
  --mode=sample/evaluate/train on an existing run accept --config.KEY=VALUE)."""
  path = _workdir_config_json(argv)
  if path is None:
    config_flags.DEFINE_config_file(
        'config', None, 'Config file, e.g. configs/lstm.py or configs/lstm.py:test.',
        lock_config=False)
    return
  import ml_collections  # pylint: disable=g-import-not-at-top
  try:  # Not checkpoints.read_config_dict: no JAX before hostmem.tune_malloc has run.
    config = json.loads(path.read_text())
  except ValueError as e:
    _fail(f'{path}: not valid JSON ({e})')
  except OSError as e:
    _fail(f'{path}: {e.strerror or e}')
  if not isinstance(config, dict):
    _fail(f'{path}: not a JSON object')
  config = ml_collections.ConfigDict(config)
  if 'model' in config and 'name' in config.model:  # A run from before a key existed.
    from bach_jax import experiment  # pylint: disable=g-import-not-at-top
    try:
      experiment.fill_defaults(config)
    except errors.UserError as e:
      _fail(f'{path}: {e}')
  try:  # Parses the --config.KEY overrides of argv already.
    config_flags.DEFINE_config_dict(
        'config', config, f'Defaults to {path}; override keys with --config.KEY=VALUE.',
        lock_config=False)
  except (AttributeError, KeyError) as e:
    _fail(_unknown_config_key(argv, config) or _flag_error_line(e, argv))


def _config_keys(config, prefix=''):
  """Every dotted key of a ConfigDict (sections and leaves)."""
  keys = []
  for k, v in config.items():
    keys.append(prefix + k)
    if hasattr(v, 'items'):
      keys += _config_keys(v, f'{prefix}{k}.')
  return keys


def _unknown_config_key(argv, config):
  """'--config.KEY: no such config key; did you mean ...?' for the first unknown
  --config.KEY in argv, or None."""
  keys = _config_keys(config)
  for a in argv:
    if not a.startswith(('--config.', '--noconfig.')):
      continue
    key = a.split('=', 1)[0].split('config.', 1)[1]
    if key in keys:
      continue
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    close += [k for k in keys if k.endswith('.' + key) and k not in close]
    hint = f'; did you mean {" or ".join("config." + k for k in close[:3])}?' if close else ''
    return f'--config.{key}: no such config key{hint}'
  return None


def _loaded_config(argv):
  """The config --config.KEY overrides apply to (the file's, or the workdir's), or None."""
  if 'config' not in FLAGS:
    return None
  flag = FLAGS['config']
  for config in (flag.value, flag.default):
    if hasattr(config, 'items'):
      return config
  spec = _flag_value(argv[1:], 'config')
  try:
    return flag.parser.parse(spec) if spec else None
  except Exception:  # pylint: disable=broad-except  (reported by the caller's line)
    return None


def _flag_error_line(e, argv):
  """One line for a flag parsing error (the config file's own error, not its traceback)."""
  config = _loaded_config(argv) if isinstance(e, (AttributeError, KeyError)) else None
  if hasattr(config, 'items'):
    line = _unknown_config_key(argv, config)
    if line:
      return line
  lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
  if not lines:
    return type(e).__name__
  if any(x.startswith('Traceback') for x in lines):  # The config file raised.
    return f'{lines[0].rsplit(": Error whilst", 1)[0]}: {lines[-1]}'
  return lines[0]


def parse_flags(argv):
  """absl's flag parsing, with user mistakes as one line and exit 2: an unknown
  --config.KEY (with the closest known keys), a config file that does not exist,
  a config file's own error (e.g. an unknown variant), a bad flag value."""
  spec = _flag_value(argv[1:], 'config')
  if spec is not None:  # Config files are local Python files.
    file = spec.split(':', 1)[0]
    if not os.path.isfile(file):
      _fail(f'--config={spec}: no such config file {file!r}')
  try:
    return FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError, OSError) as e:
    _fail(_flag_error_line(e, argv))


def main(argv):
  errors.quiet_library_logs()
  with errors.one_line_errors():
    if len(argv) > 1:
      raise errors.UsageError(f'unexpected arguments: {" ".join(argv[1:])} (flags take '
                              '--NAME=VALUE)')
    from bach_jax import parallel  # pylint: disable=g-import-not-at-top
    parallel.maybe_initialize_distributed()
    code = _run(FLAGS.mode)
  sys.exit(code)


def _run(mode):
  """Runs a mode -> exit code (0, or EXIT_INTERRUPTED)."""
  # pylint: disable-next=g-import-not-at-top
  from bach_jax import experiment, metric_writers, train
  if mode == 'prepare':
    if FLAGS.config is None:
      raise errors.UsageError('--mode=prepare needs --config=CONFIG_FILE')
    print(experiment.setup(FLAGS.config).corpus.summary())
    return 0
  if not FLAGS.workdir:
    raise errors.UsageError('--workdir is required (the run\'s folder)')
  if mode == 'train':
    if FLAGS.config is None:
      raise errors.UsageError(f'--config is required for a new workdir ({FLAGS.workdir} has no '
                              'config.json)')
    result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    print(json.dumps(metric_writers.json_safe(result), allow_nan=False), flush=True)
    return EXIT_INTERRUPTED if 'interrupted_at' in result else 0
  with errors.stop_at_safe_points():
    _sample_or_evaluate(mode)
  return 0


def _output_folder(mode, workdir):
  """(--outdir or WORKDIR/samples, whether that is inside the workdir); the workdir
  must then be writable (else one line pointing at --outdir)."""
  from bach_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from bach_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  outdir = workdir_lib.as_path(FLAGS.outdir) if FLAGS.outdir else workdir / 'samples'
  inside = str(outdir) == str(workdir) or str(outdir).startswith(str(workdir).rstrip('/') + '/')
  if inside:
    checkpoints.read_config_dict(workdir)  # Is it a workdir at all? (else: one line)
    try:
      workdir_lib.prepare(workdir)
    except errors.WorkdirError as e:
      raise errors.WorkdirError(f'{e}; --mode={mode} writes into {outdir}: give '
                                '--outdir=DIR to write elsewhere') from None
  return outdir, inside


def _sample_or_evaluate(mode):
  """evaluate (reads only), or sample / reconstruct / interpolate: these hold the
  workdir's lock while they write into it (not with --outdir elsewhere)."""
  import jax  # pylint: disable=g-import-not-at-top
  from bach_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  workdir = workdir_lib.as_path(FLAGS.workdir)
  if mode == 'evaluate':
    _load_and_run(mode, workdir, None)
    return
  outdir, inside = _output_folder(mode, workdir)
  lock = workdir_lib.lock(workdir, mode, enabled=inside and jax.process_index() == 0)
  try:
    lock.__enter__()
  except errors.WorkdirLocked as e:
    raise errors.WorkdirLocked(f'{e}; or give --outdir=DIR to write elsewhere') from None
  try:
    _load_and_run(mode, workdir, outdir)
  finally:
    lock.__exit__(None, None, None)


def _load_and_run(mode, workdir, outdir):
  import jax  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from bach_jax import compare, evaluate, experiment, generate, latent_ops, loaded, metric_writers
  from bach_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  model = loaded.load_model(workdir, step=FLAGS.step)
  run_config = model.config
  config = FLAGS.config if FLAGS.config is not None else run_config
  model.config = config
  exp = experiment.setup(config)
  experiment.check_fits(workdir, run_config, config, model.params, exp.num_voices)
  if exp.family.CAPABILITIES.voices and exp.num_voices != model.num_voices:
    raise errors.SampleError(
        f'config.data.source={config.data.source!r} has {exp.num_voices} voices; '
        f'the model was trained with {model.num_voices}')
  if mode == 'evaluate':
    split = config.sample.split
    fn = evaluate.make_eval_fn(exp.family, config, exp.mesh)
    result = evaluate.evaluate_pieces(fn, exp.family, config, model.params,
                                      exp.corpus.splits[split], exp.mesh, exp.num_voices)
    result.update(split=split, step=model.step, source=config.data.source)
    # The samples' musical metrics against held-out Bach (progress lines on stderr).
    result['sample_metrics'] = compare.sample_metric_summary(model, exp.corpus,
                                                             seed=config.seed)
    print(json.dumps(metric_writers.json_safe(result), allow_nan=False))
    return
  workdir_lib.prepare(outdir, what='output folder')
  if mode in ('reconstruct', 'interpolate'):
    run = (latent_ops.reconstruct_to_files if mode == 'reconstruct'
           else latent_ops.interpolate_to_files)
    print(json.dumps(metric_writers.json_safe(run(model, exp.corpus, str(outdir))),
                     allow_nan=False))
    return
  if mode == 'inpaint':
    paths = generate.inpaint_to_files(exp.family, config, model.params,
                                      jax.random.key(config.seed + 12345), outdir, exp.corpus)
  else:
    paths = generate.sample_to_files(exp.family, config, model.params,
                                     jax.random.key(config.seed + 12345), outdir,
                                     corpus=exp.corpus, prefix=f'step{model.step}')
  print('\n'.join(paths))


if __name__ == '__main__':
  from bach_jax import hostmem  # pylint: disable=g-import-not-at-top
  hostmem.tune_malloc()  # First: before JAX or anything else starts threads.
  define_config_flag(sys.argv)
  app.run(main, flags_parser=parse_flags)
