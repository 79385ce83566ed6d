"""Starting from another run's params: `train.init_from`, and `load_params` for any stage
that builds on a trained run (e.g. a prior over a frozen first stage).

--config.train.init_from=WORKDIR (its best checkpoint, else its latest) or WORKDIR:STEP
(that step of WORKDIR/checkpoints) starts a new run at step 0 with a fresh optimizer,
its own data and config (learning rate, data.source, dropout, ...) from that run's
params: the moving average where the run kept one (train.ema_decay > 0: what it
evaluated, kept as best and samples with), else its params. Every parameter must exist
in both models with the same shape, so another family, size or voice count is refused
before training, in one line naming the first parameter that differs. A workdir that
already has checkpoints resumes from them instead (init_from only starts a run).

The params are read with Orbax into this run's mesh (replicated), each process reading
them, whatever the device count or process count of the run that saved them.
"""

from etils import epath
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from bach_jax import checkpoints
from bach_jax import config_base
from bach_jax import parallel


def parse_spec(spec):
  """'WORKDIR' or 'WORKDIR:STEP' -> (workdir, step or None). A ':' followed by anything but
  digits is part of the path (gs://bucket/run)."""
  head, sep, tail = spec.rpartition(':')
  if sep and head and tail.isdigit():
    return head, int(tail)
  return spec, None


def _name(path):
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k))))
                  for k in path)


def _shapes(tree):
  """{'a/b/c': shape} of a pytree of arrays, ShapeDtypeStructs or Orbax array metadata."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_name(path): tuple(leaf.shape) for path, leaf in leaves}


def find_checkpoint(workdir, step=None):
  """-> (path of the checkpoint's step directory, step): the given step of
  WORKDIR/checkpoints, else the best checkpoint, else the latest. CheckpointError
  naming the path when there is none."""
  root = epath.Path(workdir)
  latest_dir = root / 'checkpoints'
  latest = ocp.utils.checkpoint_steps(latest_dir) if latest_dir.exists() else []
  if step is not None:
    if step not in latest:
      raise checkpoints.CheckpointError(
          f'{latest_dir}: no checkpoint at step {step} (have {sorted(latest)})')
    return latest_dir / str(step), step
  best_dir = root / 'best'
  best = ocp.utils.checkpoint_steps(best_dir) if best_dir.exists() else []
  if best:
    return best_dir / str(max(best)), max(best)
  if latest:
    return latest_dir / str(max(latest)), max(latest)
  raise checkpoints.CheckpointError(f'{root}: no checkpoint to start from')


def load_params(workdir, step=None, mesh=None, like=None, with_model_state=False):
  """Another run's params -> (its config, params replicated on mesh).

  with_model_state: -> (config, params, model_state or None): also what the run's
  family kept outside the optimizer (e.g. a VQ codebook's statistics, which go with
  its codebook).

  workdir: a run's directory (local or gs://); step: a step of WORKDIR/checkpoints
  (default: the best checkpoint, else the latest). The params are the moving average
  where the run kept one. like: a pytree (arrays or ShapeDtypeStructs) the params must
  match in every name and shape; checked on the checkpoint's metadata, before any array
  is read: ConfigError naming the first parameter that differs. CheckpointError when the
  workdir has no config.json or no such checkpoint.
  """
  config = ml_collections.ConfigDict(checkpoints.read_config_dict(workdir))
  path, step = find_checkpoint(workdir, step)
  meta = ocp.StandardCheckpointHandler().metadata(path / 'state')
  saved = getattr(meta, 'tree', meta)
  key = 'ema_params' if saved.get('ema_params') is not None else 'params'
  if like is not None:
    how = describe_mismatch(_shapes(saved[key]), _shapes(like))
    if how:
      raise config_base.ConfigError(
          f'{workdir} (a {config.model.name} model, step {step}) does not fit this run\'s '
          f'model: {how}')
  repl = parallel.replicated(mesh or parallel.make_mesh())
  keys = [key] + (['model_state'] if with_model_state and saved.get('model_state') else [])
  target = {k: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=repl),
                            saved[k]) for k in keys}
  with ocp.PyTreeCheckpointer() as reader:
    restored = reader.restore(path / 'state', args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
  if with_model_state:
    return config, restored[key], restored.get('model_state')
  return config, restored[key]


def describe_mismatch(saved, wanted):
  """How two {name: shape} dicts differ (first difference, in name order), or None."""
  for name in sorted(set(saved) | set(wanted)):
    if name not in saved:
      return f'parameter {name} {wanted[name]} is not there'
    if name not in wanted:
      return f'its parameter {name} {saved[name]} is not in this model'
    if saved[name] != wanted[name]:
      return f'parameter {name} has shape {saved[name]} there, {wanted[name]} here'
  return None


def resolve_config(config):
  """train.init_from_into = KEY: copies the init_from run's model config into
  config.model.KEY (where it is not there yet, e.g. on a resumed run's config.json), so
  the family can build the base model and the run's config.json is self-contained."""
  into = config.train.init_from_into
  if into in config.model and hasattr(config.model[into], 'keys'):
    return config
  workdir, _ = parse_spec(config.train.init_from)
  try:
    source = checkpoints.read_config_dict(workdir)
  except checkpoints.CheckpointError as e:
    raise config_base.ConfigError(f'config.train.init_from={config.train.init_from!r}: {e}'
                                  ) from None
  config.model[into] = ml_collections.ConfigDict(source['model'])
  return config


def init_from(spec, state, mesh, log=print, into=''):
  """train.init_from: a freshly initialized TrainState -> the same with the params (and,
  where this run keeps one, the moving average) of the run `spec` names
  ('WORKDIR' or 'WORKDIR:STEP'). The step and optimizer state stay fresh.

  into: '' (the whole params), or a top-level key of this model's params that the
  other run's params become (a model built on a trained one, e.g. a prior over a
  frozen first stage); the rest stays as initialized. ConfigError naming
  config.train.init_from and the parameter on a mismatch.
  """
  workdir, step = parse_spec(spec)
  fresh = state.params[into] if into else state.params
  try:
    source, params, model_state = load_params(workdir, step, mesh, like=fresh,
                                              with_model_state=True)
  except (config_base.ConfigError, checkpoints.CheckpointError) as e:
    where = f' (into params[{into!r}])' if into else ''
    raise config_base.ConfigError(f'config.train.init_from={spec!r}{where}: {e}') from None
  params = jax.tree.map(lambda p, f: p.astype(f.dtype), params, fresh)
  copy = lambda tree: jax.tree.map(lambda p: p.copy(), tree)  # No buffer shared: donated.
  update = {'params': {**state.params, into: params} if into else params}
  if getattr(state, 'ema_params', None) is not None:
    update['ema_params'] = {**state.ema_params, into: copy(params)} if into else copy(params)
  mine = getattr(state, 'model_state', None)
  if not into and mine is not None and model_state is not None:
    # The same family's state outside the optimizer goes with its params (a VQ
    # codebook rebuilt each step from fresh statistics would forget what it learnt).
    if _shapes(model_state) == _shapes(mine):
      update['model_state'] = jax.tree.map(lambda p, f: p.astype(f.dtype), model_state, mine)
  n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  log(f'init_from {workdir}: {n:,} parameters of its {source.model.name} model '
      f'(data.source {source.data.source!r}){f" into params[{into!r}]" if into else ""}; '
      'optimizer and step start fresh')
  return state.replace(**update)
