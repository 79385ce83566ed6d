"""The floor under train / evaluate / generate / compare: what every mode sets up first.

  resolve(config)       every default filled once (base sections, the family's
                        MODEL_DEFAULTS, a base run's model config for
                        train.init_from_into), then validated -> the family module
  setup(config)         -> Experiment: config, family, corpus, mesh
  abstract_state(...)   the shapes (and shardings) of a family's state: what every
                        checkpoint is restored into
  read_config(workdir)  a run's config.json, resolved the same way
  restore_run(workdir)  a run's checkpoint restored into its family's own state (the
                        best, else the latest; damaged ones skipped with a warning):
                        load_model, fine-tuning and the report read runs through it

Nothing here imports train, evaluate, generate or compare: data flows one way.
"""

import dataclasses
import functools
import json

import jax
import ml_collections
import numpy as np

from bach_jax import checkpoints
from bach_jax import config_base
from bach_jax import models
from bach_jax import parallel
from bach_jax.data import corpora
from bach_jax.errors import CheckpointError, ConfigError
from bach_jax.models import family as family_lib


@dataclasses.dataclass
class Experiment:
  """What a mode works on: the resolved config, its family module, corpus and mesh."""
  config: ml_collections.ConfigDict
  family: object
  corpus: corpora.Corpus
  mesh: jax.sharding.Mesh

  @property
  def num_voices(self):
    return self.corpus.num_voices


def _base_model_config(config):
  """train.init_from_into = KEY: the init_from run's model config becomes
  config.model.KEY (where it is not there yet, e.g. on a resumed run's config.json), so
  the family can build the base model and the run's config.json is self-contained."""
  into = config.train.init_from_into
  if not (config.train.init_from and into):
    return
  if into in config.model and hasattr(config.model[into], 'keys'):
    return
  workdir, _ = checkpoints.parse_spec(config.train.init_from)
  try:
    source = checkpoints.read_config_dict(workdir)
  except CheckpointError as e:
    raise ConfigError(f'config.train.init_from={config.train.init_from!r}: {e}') from None
  config.model[into] = ml_collections.ConfigDict(source['model'])


def fill_defaults(config):
  """Every key a run's config may lack (written before the key existed) -> config."""
  config_base.fill_defaults(config)
  models.fill_model_defaults(config)
  return config


def resolve(config, device_count=None):
  """Fills every default, checks every key (ConfigError naming it) -> the family module.
  Runs before anything compiles."""
  fill_defaults(config)
  config_base.validate(config, jax.device_count() if device_count is None else device_count)
  family = models.get_family(config.model.name)
  _base_model_config(config)
  family.validate(config)
  family_lib.check_rules(family, config.sample.rules)
  return family


def setup(config):
  """Resolves the config and loads what any mode needs -> Experiment."""
  family = resolve(config)
  corpus = corpora.load_corpus(config.data, progress=jax.process_index() == 0)
  family.check_corpus(config, corpus)
  return Experiment(config, family, corpus, parallel.make_mesh())


def example_batch(config, num_voices):
  """A one-row batch with the training shapes, for init / eval_shape."""
  w = config.data.window_steps
  batch = {'roll': np.zeros((1, w, 88), bool), 'mask': np.ones((1,), bool)}
  if num_voices:
    batch['voices'] = np.full((1, w, num_voices), -1, np.int32)
  return batch


def abstract_state(family, config, num_voices, sharding):
  """Shapes and dtypes of the family's state (jax.eval_shape of its init), every leaf
  placed by `sharding`: the target every checkpoint is restored into."""
  shapes = jax.eval_shape(functools.partial(family.init, config), jax.random.key(0),
                          example_batch(config, num_voices))
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                      shapes)


def local_sharding():
  """This process's first device: where inference puts a restored run, whatever mesh and
  process count saved it (a slice's run on a laptop)."""
  return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def read_config(workdir):
  """WORKDIR/config.json as a ConfigDict with every default filled (CheckpointError
  naming the file when absent or broken; ConfigError for an unknown model name)."""
  return fill_defaults(ml_collections.ConfigDict(checkpoints.read_config_dict(workdir)))


@dataclasses.dataclass
class Restored:
  """A run's checkpoint restored into its family's own state."""
  config: ml_collections.ConfigDict
  family: object
  state: object  # The family's state: .step, .params, .eval_params().
  meta: dict
  step: int
  path: object


def _saved_num_voices(paths):
  """The corpus's voice count the run saved in its checkpoints' meta (None if unreadable)."""
  for path in paths:
    try:
      return json.loads((path / 'meta' / 'metadata').read_text()).get('num_voices')
    except (OSError, ValueError, AttributeError):
      continue
  return None


def restore_run(workdir, step=None, best=True, sharding=None, warn=None, expect_params=None):
  """A run's checkpoint in its family's own state -> Restored.

  step: a step of WORKDIR/checkpoints; None: the best checkpoint (best=True), else the
  latest, newest first, a damaged one named in a warning and the next one used.
  sharding: where the arrays go (default: this process's first device). warn: a
  callable per warning line (default: stderr). expect_params: a pytree the run's
  eval_params() must match in every name and shape, checked before any array is read
  (ConfigError naming the first parameter that differs). CheckpointError naming the
  file: no config.json, no such checkpoint, none that restores.
  """
  config = read_config(workdir)
  family = models.get_family(config.model.name)
  ckpt = checkpoints.Checkpointer(workdir, read_only=True)
  paths = ckpt.candidates(step, prefer_best=best)
  target = abstract_state(family, config, _saved_num_voices(paths),
                          sharding or local_sharding())
  if expect_params is not None:
    how = checkpoints.describe_mismatch(checkpoints.tree_shapes(target.eval_params()),
                                        checkpoints.tree_shapes(expect_params))
    if how:
      raise ConfigError(f'{workdir} (a {config.model.name} model, step '
                        f'{paths[0].name}) does not fit this run\'s model: {how}')
  kw = {} if warn is None else {'warn': warn}
  found = ckpt.restore_first(paths, target, **kw)
  if found is None:
    raise CheckpointError(f'{ckpt.workdir}: no checkpoint restores ({len(paths)} damaged, '
                          'named above)')
  state, _, meta, path = found
  return Restored(config, family, state, meta, int(path.name), path)


def check_fits(workdir, run_config, config, params, num_voices):
  """CheckpointError (one line) when `config` (a run's config.json with a user's changes,
  or another config file) does not build the model whose params the run saved: another
  family, or another shape of a parameter. The config is resolved (experiment.setup)."""
  if config.model.name != run_config.model.name:
    raise CheckpointError(
        f'{workdir} holds a {run_config.model.name} run; this config is a '
        f'{config.model.name} config (sample or evaluate it with its own: leave --config out)')
  family = models.get_family(config.model.name)
  target = abstract_state(family, config, num_voices, local_sharding()).eval_params()
  how = checkpoints.describe_mismatch(checkpoints.tree_shapes(params),
                                      checkpoints.tree_shapes(target))
  if how:
    raise CheckpointError(f'{workdir}: its checkpoint does not fit this config ({how}); '
                          "leave config.model as the run's")
