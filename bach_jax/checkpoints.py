"""Orbax checkpoints of a run: latest N plus the best by the family's selection metric.

Layout in the workdir:
  checkpoints/<step>/{state, data, meta}  latest `keep` steps
  best/<step>/{state, data, meta}         the best on valid (one kept) by the metric
                                          the family selects by (CAPABILITIES.select_by:
                                          the frame NLL, or a bound on it), lower is better
  damaged/<dir>-<step>/                   a checkpoint that no longer restores, moved
                                          aside by a resuming run (kept, never deleted)
  config.json                             the run's config
Each step holds the TrainState, the data-iterator state (so a resume continues
with exactly the same batches) and small JSON metadata: step, select_by,
valid_score, num_voices, steps_per_quarter.

Faults (docs/faults.md): a checkpoint that fails to restore (truncated array
file, empty or missing _METADATA, missing manifest) is reported in one line
naming its path and the next older one is used; a save that runs out of space
raises workdir.WriteError naming the path and the space a checkpoint needs, and
the previous checkpoint stays intact (Orbax writes into a temporary folder and
renames it when complete; a resuming run deletes such leftovers).
"""

import json
import math
import sys

import jax
import orbax.checkpoint as ocp

from bach_jax import workdir as workdir_lib


def _score(metrics):
  """A best checkpoint's score; runs from before the family contract saved it as
  'valid_frame_nll'."""
  value = metrics.get('score', metrics.get('valid_score', metrics.get('valid_frame_nll')))
  return None if value is None else float(value)


def _local_target(state_path):
  """ShapeDtypeStructs of a saved state on this process's first device, from its metadata."""
  meta = ocp.StandardCheckpointHandler().metadata(state_path)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                      getattr(meta, 'tree', meta))


class CheckpointError(RuntimeError):
  """A checkpoint is missing or does not match; the message names the path."""


class DamagedCheckpoint(CheckpointError):
  """A checkpoint exists but does not restore; .path names it, .reason says why."""

  def __init__(self, path, reason):
    super().__init__(f'{path}: damaged checkpoint ({reason})')
    self.path, self.reason = path, reason


def _warn_stderr(msg):
  print(f'warning: {msg}', file=sys.stderr, flush=True)


def write_config(workdir, config):
  """WORKDIR/config.json, written atomically (a temporary file, then renamed)."""
  if jax.process_index() == 0:
    path = workdir_lib.as_path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / 'config.json.tmp'
    tmp.write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    tmp.replace(path / 'config.json')


def read_config_dict(workdir):
  """WORKDIR/config.json as a dict; CheckpointError naming the file when absent or broken."""
  path = workdir_lib.as_path(workdir) / 'config.json'
  if not path.exists():
    raise CheckpointError(f'{path}: no config.json; is {str(workdir)!r} a bach_jax workdir?')
  try:
    config = json.loads(path.read_text())
  except ValueError as e:
    raise CheckpointError(f'{path}: not valid JSON ({e})') from None
  if not isinstance(config, dict):
    raise CheckpointError(f'{path}: not a JSON object')
  return config


def _first_line(e, limit=120, path=None):
  """An exception as a short reason: its first line, without TensorStore's spec dump
  (and `path`, which the warning names already, as '.')."""
  text = str(e).strip().splitlines()
  text = text[0] if text else type(e).__name__
  if path is not None:
    text = text.replace(str(path), '.')
  for cut in (' See full TensorStore details', ' [tensorstore_spec', ' [source locations'):
    text = text.split(cut, 1)[0]
  text = f'{type(e).__name__}: {text}' if isinstance(e, ValueError) and len(text) < 40 else text
  return text if len(text) <= limit else text[:limit] + '...'


def _tree_shapes(tree):
  """{'a/b/c': shape} of a pytree of arrays / ShapeDtypeStructs / array metadata."""
  def name(k):
    for attr in ('name', 'key', 'idx'):
      if hasattr(k, attr):
        return str(getattr(k, attr))
    return str(k)
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(name(k) for k in path): tuple(getattr(leaf, 'shape', ()))
          for path, leaf in leaves}


def _mismatch(saved, wanted):
  """A short description of how two {name: shape} dicts differ, or None."""
  missing = sorted(set(wanted) - set(saved))
  if missing:
    return f'it has no {missing[0]}' + (f' (+{len(missing) - 1} more)' if len(missing) > 1 else '')
  extra = sorted(set(saved) - set(wanted))
  if extra:
    return f'it has {extra[0]}, which the config does not make'
  for k in sorted(wanted):
    if saved[k] != wanted[k]:
      return f'{k} has shape {saved[k]} there, {wanted[k]} with this config'
  return None


_EVENT_LOOP_FILTER = []


def _quiet_closed_event_loop():
  """A failed TensorStore read leaves callbacks that report 'Event loop is closed', and
  Orbax read coroutines that are never finished, as unraisable exceptions: a traceback
  each, printed after the error was handled (and reported in one line); drop those."""
  if _EVENT_LOOP_FILTER:
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    value = unraisable.exc_value
    if isinstance(value, RuntimeError) and str(value) == 'Event loop is closed':
      return
    code = getattr(unraisable.object, 'cr_code', None)
    if code is not None and '/orbax/' in code.co_filename:
      return
    previous(unraisable)

  sys.unraisablehook = hook
  _EVENT_LOOP_FILTER.append(hook)


class Checkpointer:
  """Saves and restores {state, data-iterator state, metadata} of a run.

  read_only: for sampling / evaluation (creates nothing, deletes nothing).
  """

  def __init__(self, workdir, keep=3, read_only=False):
    self.workdir = workdir_lib.as_path(workdir)
    self.read_only = read_only
    _quiet_closed_event_loop()

    def options(**kw):
      return ocp.CheckpointManagerOptions(create=not read_only, read_only=read_only,
                                          cleanup_tmp_directories=not read_only, **kw)

    self.latest = ocp.CheckpointManager(self.workdir / 'checkpoints',
                                        options=options(max_to_keep=keep))
    self.best = ocp.CheckpointManager(
        self.workdir / 'best', options=options(max_to_keep=1, best_fn=_score, best_mode='min'))
    self._pending = {}  # manager name -> (step path, bytes needed) of an unfinished save
    self._last_good = self.latest.latest_step()

  def _manager(self, best):
    return self.best if best else self.latest

  def path(self, step, best=False):
    """WORKDIR/checkpoints/<step> (or WORKDIR/best/<step>)."""
    return self.workdir / ('best' if best else 'checkpoints') / str(step)

  def _args(self, state, data_state, meta):
    return ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(data_state),
                              meta=ocp.args.JsonSave(meta))

  def save(self, step, state, data_state, meta, score=None):
    """Saves the latest checkpoint, and the best one if the valid score improved.

    score: the family's selection metric on valid (lower is better) or None; a
    non-finite score never becomes the best. Raises workdir.WriteError naming the
    path when the disk is full (here, or for the previous, asynchronous save; with
    several processes also for this step's latest save, which the best one waits for).
    """
    self.wait()
    size = sum(getattr(x, 'nbytes', 0) for x in jax.tree.leaves(state))
    with self._write_errors(self.path(step), size):
      self.latest.save(step, args=self._args(state, data_state, meta), force=True)
    self._pending['latest'] = (self.path(step), size)
    if score is not None and math.isfinite(score):
      best = self.best_score()
      if best is None or score < best:
        if jax.process_count() > 1:
          # Each manager's finishing thread meets the other processes at a barrier whose
          # name does not depend on the manager: two finishing at once in one process
          # fail ("Barrier ThreadSaveMultiHostValueHolder:set_value_start is already
          # ongoing", orbax-checkpoint 0.12.8) and leave the other processes waiting.
          self.wait()
        with self._write_errors(self.path(step, best=True), size):
          self.best.save(step, args=self._args(state, data_state, meta),
                         metrics={'score': float(score)}, force=True)
        self._pending['best'] = (self.path(step, best=True), size)

  def _write_errors(self, path, size):
    return _WriteErrors(self, path, size)

  def _describe_write_error(self, e, path, size):
    """One line for a failed save, or None when it is no write error we know."""
    kept = (f'the checkpoint of step {self._last_good} is intact' if self._last_good is not None
            else 'no earlier checkpoint exists')
    if workdir_lib.is_disk_full(e):
      free = workdir_lib.free_bytes(path)
      free_text = f', {workdir_lib.format_bytes(free)} free' if free is not None else ''
      return (f'{path}: no space left on device: a checkpoint needs about '
              f'{workdir_lib.format_bytes(size)} (the train state){free_text}; {kept}. Free some space '
              'and run the same command again to resume')
    os_error = workdir_lib.os_error_in(e)
    if os_error is not None:
      reason = workdir_lib.describe_os_error(os_error)
      return f'{path}: cannot write the checkpoint ({reason}); {kept}'
    return None

  def best_score(self):
    """The best checkpoint's valid score (its metric: meta['select_by']), or None."""
    step = self.best.best_step()
    if step is None:
      return None
    meta = self.best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return _score(meta['meta'])

  def wait(self):
    """Waits for asynchronous saves; WriteError naming the path of one that failed."""
    for name in ('latest', 'best'):
      path, size = self._pending.pop(name, (None, 0))
      mngr = getattr(self, name)
      if path is None:
        mngr.wait_until_finished()
        continue
      with self._write_errors(path, size):
        mngr.wait_until_finished()
      if name == 'latest':
        self._last_good = int(path.name)

  def latest_step(self):
    return self.latest.latest_step()

  def restore(self, abstract_state, step=None, best=False):
    """-> (state, data_state, meta). abstract_state: pytree of jax.ShapeDtypeStruct
    (with shardings) describing the TrainState to restore into. Raises
    CheckpointError (DamagedCheckpoint when the files do not restore)."""
    mngr = self._manager(best)
    if step is None:
      step = mngr.best_step() if best else mngr.latest_step()
    if step is None:
      where = self.workdir / ('best' if best else 'checkpoints')
      raise CheckpointError(f'{where}: no checkpoint to restore')
    return self._restore(step, best, abstract_state)

  def _restore(self, step, best, abstract_state):
    args = {'meta': ocp.args.JsonRestore()}
    if abstract_state is not None:
      args['data'] = ocp.args.JsonRestore()
    try:
      # For inference (no abstract state) the arrays come onto this process's first
      # device, whatever mesh and process count saved them (a slice's run on a laptop).
      target = abstract_state or _local_target(self.path(step, best) / 'state')
      args['state'] = ocp.args.StandardRestore(target)
      restored = self._manager(best).restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # pylint: disable=broad-except  (TensorStore, JSON, pytree errors)
      if abstract_state is not None:
        self._check_matches(step, best, abstract_state)
      path = self.path(step, best)
      raise DamagedCheckpoint(path, _first_line(e, path=path)) from None
    return restored['state'], restored.get('data'), restored['meta']

  def _check_matches(self, step, best, abstract_state):
    """CheckpointError when a checkpoint's readable metadata shows another model."""
    path = self.path(step, best)
    try:
      saved = ocp.StandardCheckpointHandler().metadata(path / 'state')
    except Exception:  # pylint: disable=broad-except  (unreadable: damaged, said by the caller)
      return
    how = _mismatch(_tree_shapes(getattr(saved, 'tree', saved)), _tree_shapes(abstract_state))
    if how:
      raise CheckpointError(f'{path}: the checkpoint does not match the config ({how}); '
                            'resume with the run\'s config or use a new workdir')

  def restore_intact(self, abstract_state, best=False, warn=_warn_stderr, quarantine=False):
    """The newest checkpoint that restores -> (state, data_state, meta, step), or None
    when there is none at all.

    Each damaged newer one gets a warning naming its path; with quarantine (a
    resuming run, which will save those steps again) it is moved to
    WORKDIR/damaged/. CheckpointError when checkpoints exist but none restores.
    """
    mngr = self._manager(best)
    steps = sorted(mngr.all_steps(), reverse=True)
    damaged = []
    for step in steps:
      try:
        state, data, meta = self._restore(step, best, abstract_state)
      except DamagedCheckpoint as e:
        warn(f'{e}; trying an older checkpoint')
        damaged.append(step)
        continue
      if quarantine:
        self.quarantine(damaged, best, warn)
      return state, data, meta, step
    if steps:
      raise CheckpointError(f'{self.workdir / ("best" if best else "checkpoints")}: no '
                            f'checkpoint restores (damaged: steps {sorted(damaged)})')
    return None

  def check_best(self, abstract_state, warn=_warn_stderr):
    """A resuming run: moves a best checkpoint that does not restore to damaged/."""
    step = self.best.best_step()
    if step is None:
      return
    try:
      self._restore(step, True, abstract_state)
      self.best_score()
    except CheckpointError as e:
      if not isinstance(e, DamagedCheckpoint):
        raise
      warn(f'{e}; the next better score will be the best checkpoint')
      self.quarantine([step], True, warn)
    except Exception as e:  # pylint: disable=broad-except  (its metadata JSON)
      warn(f'{self.path(step, True)}: damaged checkpoint ({_first_line(e)})')
      self.quarantine([step], True, warn)

  def quarantine(self, steps, best, warn=_warn_stderr):
    """Moves steps to WORKDIR/damaged/<checkpoints|best>-<step>[-n] (process 0)."""
    if not steps:
      return
    if jax.process_index() == 0:
      target_dir = self.workdir / 'damaged'
      target_dir.mkdir(parents=True, exist_ok=True)
      for step in steps:
        source = self.path(step, best)
        target = target_dir / f'{source.parent.name}-{step}'
        n = 1
        while target.exists():
          n += 1
          target = target_dir / f'{source.parent.name}-{step}-{n}'
        source.rename(target)
        warn(f'moved {source} to {target}')
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes('bach_jax_quarantine')
    self._manager(best).reload()
    if not best:
      self._last_good = self.latest.latest_step()

  def load_for_inference(self, step=None, prefer_best=True, warn=_warn_stderr):
    """Restores params for sampling / evaluation -> (state dict, meta, step, path).

    step=None: the best checkpoint (prefer_best), else the newest; a damaged one
    gets a warning naming its path and the next candidate (older best, then the
    latest ones, newest first) is used, which a second line names. A given step
    must restore.
    """
    if step is not None:
      if step not in self.latest.all_steps():
        raise CheckpointError(f'{self.workdir}: no checkpoint at step {step} '
                              f'(have {self.latest.all_steps()})')
      candidates = [(step, False)]
    else:
      candidates = [(s, True) for s in sorted(self.best.all_steps(), reverse=True)
                    if prefer_best]
      candidates += [(s, False) for s in sorted(self.latest.all_steps(), reverse=True)]
    if not candidates:
      raise CheckpointError(f'{self.workdir}: no checkpoint to load')
    failed = []
    for s, best in candidates:
      try:
        state, _, meta = self._restore(s, best, None)
      except DamagedCheckpoint as e:
        if step is not None:
          raise
        warn(str(e))
        failed.append(e.path)
        continue
      if failed:
        warn(f'using {self.path(s, best)} instead')
      return state, meta, s, self.path(s, best)
    raise CheckpointError(f'{self.workdir}: no checkpoint restores ({len(failed)} damaged, '
                          'named above)')

  def close(self):
    self.latest.close()
    self.best.close()


class _WriteErrors:
  """Context: an exception of a save becomes workdir.WriteError naming the path."""

  def __init__(self, ckpt, path, size):
    self.ckpt, self.path, self.size = ckpt, path, size

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    if exc is None or not isinstance(exc, Exception):
      return False
    ckpt = self.ckpt
    line = ckpt._describe_write_error(exc, self.path, self.size)  # pylint: disable=protected-access
    if line is None:
      return False
    ckpt._pending.clear()  # pylint: disable=protected-access  (reported once)
    raise workdir_lib.WriteError(line) from None
