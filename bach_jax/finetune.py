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

The other run is restored into its own family's state (experiment.restore_run, the
one restore path of every checkpoint) on this run's mesh (replicated), each process
reading it, whatever the device count or process count of the run that saved it; its
`eval_params()` are what this run starts from.
"""

import jax
import numpy as np

from bach_jax import checkpoints
from bach_jax import experiment
from bach_jax import parallel
from bach_jax.errors import CheckpointError, ConfigError


def load_params(workdir, step=None, mesh=None, like=None):
  """Another run's params for this run -> (its Restored run, its eval_params()).

  workdir: a run's directory (local or gs://); step: a step of WORKDIR/checkpoints
  (default: the best checkpoint, else the latest). The run's state is restored into
  its own family's state, replicated on `mesh`; its eval_params() are the moving
  average where it kept one. like: a pytree the params must match in every name and
  shape, checked before any array is read (ConfigError naming the first parameter
  that differs). CheckpointError when the workdir has no config.json or no such
  checkpoint.
  """
  run = experiment.restore_run(workdir, step, sharding=parallel.replicated(
      mesh or parallel.make_mesh()), expect_params=like)
  return run, run.state.eval_params()


def init_from(spec, state, mesh, log=print, into=''):
  """train.init_from: a freshly initialized TrainState -> the same with the params (and,
  where this run keeps one, the moving average) of the run `spec` names
  ('WORKDIR' or 'WORKDIR:STEP'). The step and optimizer state stay fresh.

  into: '' (the whole params), or a top-level key of this model's params that the
  other run's params become (a model built on a trained one, e.g. a prior over a
  frozen first stage); the rest stays as initialized. ConfigError naming
  config.train.init_from and the parameter on a mismatch.
  """
  workdir, step = checkpoints.parse_spec(spec)
  fresh = state.params[into] if into else state.params
  try:
    source, params = load_params(workdir, step, mesh, like=fresh)
  except (ConfigError, CheckpointError) as e:
    where = f' (into params[{into!r}])' if into else ''
    raise ConfigError(f'config.train.init_from={spec!r}{where}: {e}') from None
  params = jax.tree.map(lambda p, f: p.astype(f.dtype), params, fresh)
  state = state.with_params({**state.params, into: params} if into else params)
  mine, theirs = state.model_state, getattr(source.state, 'model_state', None)
  if not into and mine is not None and theirs is not None:
    # The same family's state outside the optimizer goes with its params (a VQ
    # codebook rebuilt each step from fresh statistics would forget what it learnt).
    if checkpoints.tree_shapes(theirs) == checkpoints.tree_shapes(mine):
      state = state.replace(
          model_state=jax.tree.map(lambda p, f: p.astype(f.dtype), theirs, mine))
  n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  log(f'init_from {workdir}: {n:,} parameters of its {source.config.model.name} model '
      f'(data.source {source.config.data.source!r}){f" into params[{into!r}]" if into else ""}; '
      'optimizer and step start fresh')
  return state
