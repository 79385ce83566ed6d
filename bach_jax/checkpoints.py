"""Orbax checkpoints of a run: latest N plus the best by the family's selection metric.

Layout in the workdir:
  checkpoints/<step>/{state, data, meta}  latest `keep` steps
  best/<step>/{state, data, meta}         the best on valid (one kept) by the metric
                                          the family selects by (CAPABILITIES.select_by:
                                          the frame NLL, or a bound on it), lower is better
  config.json                             the run's config (also inside every step's `meta`)
Each step holds the TrainState, the data-iterator state (so a resume continues
with exactly the same batches) and small JSON metadata (config, metrics).
"""

import json
import math
import os

import jax
import orbax.checkpoint as ocp


def _score(metrics):
  """A best checkpoint's score; runs from before the family contract saved it as
  'valid_frame_nll'."""
  value = metrics.get('score', metrics.get('valid_score', metrics.get('valid_frame_nll')))
  return None if value is None else float(value)


class CheckpointError(RuntimeError):
  """A checkpoint is missing or does not match; the message names the path."""


def write_config(workdir, config):
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, 'config.json')
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(tmp, path)


def read_config_dict(workdir):
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise CheckpointError(f'{path}: no config.json; is {workdir!r} a bach_jax workdir?')
  with open(path) as f:
    return json.load(f)


class Checkpointer:
  """Saves and restores {state, data-iterator state, metadata} of a run."""

  def __init__(self, workdir, keep=3):
    self.workdir = os.path.abspath(workdir)
    self.latest = ocp.CheckpointManager(
        os.path.join(self.workdir, 'checkpoints'),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
    self.best = ocp.CheckpointManager(
        os.path.join(self.workdir, 'best'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, best_fn=_score, best_mode='min'))

  def _args(self, state, data_state, meta):
    return ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(data_state),
                              meta=ocp.args.JsonSave(meta))

  def save(self, step, state, data_state, meta, score=None):
    """Saves the latest checkpoint, and the best one if the valid score improved.

    score: the family's selection metric on valid (lower is better) or None; a
    non-finite score never becomes the best.
    """
    self.latest.save(step, args=self._args(state, data_state, meta), force=True)
    if score is not None and math.isfinite(score):
      best = self.best_score()
      if best is None or score < best:
        self.best.save(step, args=self._args(state, data_state, meta),
                       metrics={'score': float(score)}, force=True)

  def best_score(self):
    """The best checkpoint's valid score (its metric: meta['select_by']), or None."""
    step = self.best.best_step()
    if step is None:
      return None
    meta = self.best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return _score(meta['meta'])

  def wait(self):
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def latest_step(self):
    return self.latest.latest_step()

  def restore(self, abstract_state, step=None, best=False):
    """-> (state, data_state, meta). abstract_state: pytree of jax.ShapeDtypeStruct
    (with shardings) describing the TrainState to restore into."""
    mngr = self.best if best else self.latest
    if step is None:
      step = mngr.best_step() if best else mngr.latest_step()
    if step is None:
      where = os.path.join(self.workdir, 'best' if best else 'checkpoints')
      raise CheckpointError(f'{where}: no checkpoint to restore')
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
    return restored['state'], restored['data'], restored['meta']

  def close(self):
    self.latest.close()
    self.best.close()
