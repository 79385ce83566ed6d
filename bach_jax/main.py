r"""bach_jax entry point.

  python -m bach_jax.main --config=configs/lstm_attn.py --workdir=DIR             # train / resume
  python -m bach_jax.main --config=configs/lstm.py:test --workdir=DIR             # tiny, seconds
  python -m bach_jax.main --workdir=DIR --mode=sample --config.sample.num_pieces=8
  python -m bach_jax.main --workdir=DIR --mode=evaluate --config.sample.split=test
  python -m bach_jax.main --config=configs/lstm.py --mode=prepare                  # corpus summary
  python -m bach_jax.main --workdir=DIR --mode=reconstruct --config.sample.num_pieces=4   # latent
  python -m bach_jax.main --workdir=DIR --mode=interpolate --config.sample.interpolate=split:0,split:1

--mode=sample / evaluate on an existing workdir reuse its config.json, with any
--config.KEY=VALUE overrides applied on top (e.g. a different data.source).
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory of the run: checkpoints, metrics, samples.')
flags.DEFINE_enum('mode', 'train',
                  ['train', 'sample', 'evaluate', 'reconstruct', 'interpolate', 'prepare'],
                  'What to do (reconstruct / interpolate: latent families only).')
flags.DEFINE_integer('step', None, 'Checkpoint step to load (default: best, else latest).')
flags.DEFINE_string('outdir', None, 'Where sample / reconstruct / interpolate write '
                    '(default: WORKDIR/samples).')


def _workdir_config_json(argv):
  """Path of the workdir's config.json when --config is not given, else None."""
  if any(a == '--config' or a.startswith('--config=') for a in argv):
    return None
  for i, a in enumerate(argv):
    workdir = a.split('=', 1)[1] if a.startswith('--workdir=') else (
        argv[i + 1] if a == '--workdir' and i + 1 < len(argv) else None)
    if workdir:
      path = os.path.join(workdir, 'config.json')
      return path if os.path.exists(path) else None
  return None


def define_config_flag(argv):
  """--config: a config file, or by default the workdir's config.json (so that
  --mode=sample/evaluate/train on an existing run accept --config.KEY=VALUE)."""
  path = _workdir_config_json(argv)
  if path is None:
    config_flags.DEFINE_config_file(
        'config', None, 'Config file, e.g. configs/lstm.py or configs/lstm.py:test.',
        lock_config=False)
  else:
    import ml_collections  # pylint: disable=g-import-not-at-top
    with open(path) as f:
      config_flags.DEFINE_config_dict(
          'config', ml_collections.ConfigDict(json.load(f)),
          f'Defaults to {path}; override keys with --config.KEY=VALUE.', lock_config=False)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not any(a.startswith(('--verbosity', '-v=')) for a in sys.argv):
    # Orbax logs every save at INFO; progress lines are printed, so keep the log quiet.
    logging.set_verbosity(logging.WARNING)
  from bach_jax import parallel  # pylint: disable=g-import-not-at-top
  parallel.maybe_initialize_distributed()
  from bach_jax import checkpoints, config_base, generate, latent_ops, train  # pylint: disable=g-import-not-at-top
  from bach_jax.data import corpora, pianoroll  # pylint: disable=g-import-not-at-top
  user_errors = (config_base.ConfigError, corpora.CorpusError, checkpoints.CheckpointError,
                 generate.SampleError, latent_ops.LatentError, pianoroll.MidiError,
                 FileNotFoundError)
  try:
    _run(FLAGS.mode)
  except user_errors as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except train.NonFiniteLossError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(3)


def _run(mode):
  from bach_jax import train  # pylint: disable=g-import-not-at-top
  if mode == 'prepare':
    if FLAGS.config is None:
      raise app.UsageError('--mode=prepare needs --config')
    family, corpus, _ = train.setup(FLAGS.config)
    print(corpus.summary())
    return
  if not FLAGS.workdir:
    raise app.UsageError('--workdir is required')
  if mode == 'train':
    if FLAGS.config is None:
      raise app.UsageError('--config is required for a new workdir')
    result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    print(json.dumps(result))
    return
  _sample_or_evaluate(mode)


def _sample_or_evaluate(mode):
  import jax  # pylint: disable=g-import-not-at-top
  from bach_jax import evaluate, generate, train  # pylint: disable=g-import-not-at-top
  config = FLAGS.config
  model = generate.load_model(FLAGS.workdir, step=FLAGS.step)
  if config is None:
    config = model.config
  model.config = config
  family, corpus, mesh = train.setup(config)
  if family.CAPABILITIES.voices and corpus.num_voices != model.num_voices:
    raise generate.SampleError(
        f'config.data.source={config.data.source!r} has {corpus.num_voices} voices; '
        f'the model was trained with {model.num_voices}')
  if mode == 'evaluate':
    split = config.sample.split
    fn = evaluate.make_eval_fn(family, config, mesh)
    result = evaluate.evaluate_pieces(fn, family, config, model.params, corpus.splits[split],
                                      mesh, corpus.num_voices)
    result.update(split=split, step=model.step, source=config.data.source)
    print(json.dumps(result))
    return
  outdir = FLAGS.outdir or os.path.join(FLAGS.workdir, 'samples')
  if mode in ('reconstruct', 'interpolate'):
    from bach_jax import latent_ops  # pylint: disable=g-import-not-at-top
    run = (latent_ops.reconstruct_to_files if mode == 'reconstruct'
           else latent_ops.interpolate_to_files)
    print(json.dumps(run(model, corpus, outdir)))
    return
  paths = generate.sample_to_files(family, config, model.params,
                                   jax.random.key(config.seed + 12345), outdir, corpus=corpus,
                                   prefix=f'step{model.step}')
  print('\n'.join(paths))


if __name__ == '__main__':
  from bach_jax import hostmem  # pylint: disable=g-import-not-at-top
  hostmem.tune_malloc()  # First: before JAX or anything else starts threads.
  define_config_flag(sys.argv)
  app.run(main)
