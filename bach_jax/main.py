r"""bach_jax entry point.

  python -m bach_jax.main --config=configs/lstm_attn.py --workdir=DIR             # train / resume
  python -m bach_jax.main --config=configs/lstm.py:test --workdir=DIR             # tiny, seconds
  python -m bach_jax.main --workdir=DIR --mode=sample --config.sample.num_pieces=8
  python -m bach_jax.main --workdir=DIR --mode=evaluate --config.sample.split=test
  python -m bach_jax.main --config=configs/lstm.py --mode=prepare                  # corpus summary

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
config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/lstm.py or configs/lstm.py:test.',
                                lock_config=False)
flags.DEFINE_string('workdir', None, 'Directory of the run: checkpoints, metrics, samples.')
flags.DEFINE_enum('mode', 'train', ['train', 'sample', 'evaluate', 'prepare'], 'What to do.')
flags.DEFINE_integer('step', None, 'sample/evaluate: checkpoint step (default: best, else latest).')


def _config_for_existing_workdir():
  """The workdir's config.json with --config.* overrides from the command line applied."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from bach_jax import checkpoints  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(checkpoints.read_config_dict(FLAGS.workdir))
  for arg in sys.argv[1:]:
    if arg.startswith('--config.') and '=' in arg:
      key, value = arg[len('--config.'):].split('=', 1)
      parent = config
      *path, leaf = key.split('.')
      for p in path:
        parent = parent[p]
      old = parent[leaf]
      try:
        parent[leaf] = type(old)(json.loads(value)) if not isinstance(old, str) else value
      except (ValueError, TypeError):
        raise app.UsageError(f'--config.{key}={value!r}: not a {type(old).__name__}') from None
  return config


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not any(a.startswith(('--verbosity', '-v=')) for a in sys.argv):
    # Orbax logs every save at INFO; progress lines are printed, so keep the log quiet.
    logging.set_verbosity(logging.WARNING)
  from bach_jax import parallel  # pylint: disable=g-import-not-at-top
  parallel.maybe_initialize_distributed()
  from bach_jax import checkpoints, config_base, generate, train  # pylint: disable=g-import-not-at-top
  from bach_jax.data import corpora, pianoroll  # pylint: disable=g-import-not-at-top
  user_errors = (config_base.ConfigError, corpora.CorpusError, checkpoints.CheckpointError,
                 generate.SampleError, pianoroll.MidiError, FileNotFoundError)
  try:
    _run(FLAGS.mode)
  except user_errors as e:
    logging.error('%s', e)
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
    config = FLAGS.config
    if config is None:
      if not os.path.exists(os.path.join(FLAGS.workdir, 'config.json')):
        raise app.UsageError('--config is required for a new workdir')
      config = _config_for_existing_workdir()
    result = train.train_and_evaluate(config, FLAGS.workdir)
    print(json.dumps(result))
    return
  _sample_or_evaluate(mode)


def _sample_or_evaluate(mode):
  import jax  # pylint: disable=g-import-not-at-top
  from bach_jax import evaluate, generate, train  # pylint: disable=g-import-not-at-top
  config = _config_for_existing_workdir()
  model = generate.load_model(FLAGS.workdir, step=FLAGS.step)
  model.config = config
  family, corpus, mesh = train.setup(config)
  if corpus.num_voices != model.num_voices and model.num_voices:
    raise generate.SampleError(
        f'config.data.source={config.data.source!r} has {corpus.num_voices} voices; '
        f'the model was trained with {model.num_voices}')
  if mode == 'evaluate':
    split = config.sample.split
    fn = evaluate.make_eval_fn(family, config, mesh)
    result = evaluate.frame_nll(fn, config, model.params, corpus.splits[split], mesh,
                                corpus.num_voices)
    result.update(split=split, step=model.step, source=config.data.source)
    print(json.dumps(result))
    return
  outdir = os.path.join(FLAGS.workdir, 'samples')
  paths = generate.sample_to_files(family, config, model.params,
                                   jax.random.key(config.seed + 12345), outdir, corpus=corpus,
                                   prefix=f'step{model.step}')
  print('\n'.join(paths))


if __name__ == '__main__':
  flags.mark_flags_as_required([])
  app.run(main)
