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
from bach_jax.errors import CheckpointError


def _score(metrics):
  """A best checkpoint's score; runs from before the family contract saved it as
  'valid_frame_nll'."""
  value = metrics.get('score', metrics.get('valid_score', metrics.get('valid_frame_nll')))
  return None if value is None else float(value)


def _read_score(path):
  """The score a best checkpoint was saved with (its Orbax `metrics` item)."""
  return _score(json.loads((path / 'metrics' / 'metrics').read_text()))


def _warn_stderr(msg):
  print(f'warning: {msg}', file=sys.stderr, flush=True)


def write_config(workdir, config):
  """WORKDIR/config.json, written atomically (a temporary file, then renamed)."""
  if jax.process_index() == 0:
    path = workdir_lib.as_path(workdir)
    tmp = path / 'config.json.tmp'
    try:
      with workdir_lib.writing(path / 'config.json'):
        path.mkdir(parents=True, exist_ok=True)
        tmp.write_text(config.to_json_best_effort(indent=2, sort_keys=True))
        tmp.replace(path / 'config.json')
    finally:
      if tmp.exists():  # A failed write leaves the old config.json, and no half copy.
        tmp.unlink()


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


def tree_shapes(tree):
  """{'a/b/c': shape} of a pytree of arrays, ShapeDtypeStructs or Orbax array metadata."""
  def name(k):
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        return str(getattr(k, attr))
    return str(k)
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(name(k) for k in path): tuple(getattr(leaf, 'shape', ()))
          for path, leaf in leaves}


def describe_mismatch(saved, wanted):
  """How two {name: shape} dicts differ (the first difference, in name order), or None."""
  for name in sorted(set(saved) | set(wanted)):
    if name not in saved:
      return f'parameter {name} {wanted[name]} is not there'
    if name not in wanted:
      return f'its parameter {name} {saved[name]} is not in this model'
    if saved[name] != wanted[name]:
      return f'parameter {name} has shape {saved[name]} there, {wanted[name]} here'
  return None


def parse_spec(spec):
  """'WORKDIR' or 'WORKDIR:STEP' -> (workdir, step or None). A ':' followed by anything but
  digits is part of the path (gs://bucket/run)."""
  head, sep, tail = spec.rpartition(':')
  if sep and head and tail.isdigit():
    return head, int(tail)
  return spec, None


class DamagedCheckpoint(CheckpointError):
  """A checkpoint exists but does not restore; .path names it, .reason says why."""

  def __init__(self, path, reason):
    super().__init__(f'{path}: damaged checkpoint ({reason})')
    self.path, self.reason = path, reason


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

  Two Orbax managers write: checkpoints/ (the latest `keep`) and best/ (one, by
  score). Every restore (a resume, the best for the final scores, load_model, a
  fine-tuning start) goes through `restore_first`: a list of step directories, one
  target (the family's abstract state), the first that restores wins, each damaged
  one is named in a warning (and moved to damaged/ by a resuming run).

  read_only: for sampling / evaluation / fine-tuning's source: no managers (nothing
  created, deleted or read beyond the step directories asked for).
  """

  def __init__(self, workdir, keep=3, read_only=False, warn=_warn_stderr, keep_steps=()):
    self.workdir = workdir_lib.as_path(workdir)
    self.read_only = read_only
    self.latest = self.best = None
    self._pending = {}  # manager name -> (step path, bytes needed) of an unfinished save
    _quiet_closed_event_loop()
    if read_only:
      return
    options = lambda **kw: ocp.CheckpointManagerOptions(create=True, **kw)
    policy = ocp.checkpoint_managers.AnyPreservationPolicy(
        [ocp.checkpoint_managers.LatestN(keep)]
        + ([ocp.checkpoint_managers.CustomSteps(list(keep_steps))] if keep_steps else []))
    self.latest = ocp.CheckpointManager(self.workdir / 'checkpoints',
                                        options=options(preservation_policy=policy))
    self._set_aside_unscored(warn)
    self.best = ocp.CheckpointManager(
        self.workdir / 'best', options=options(max_to_keep=1, best_fn=_score, best_mode='min'))
    self._last_good = self.latest.latest_step()

  def path(self, step, best=False):
    """WORKDIR/checkpoints/<step> (or WORKDIR/best/<step>)."""
    return self.workdir / ('best' if best else 'checkpoints') / str(step)

  def steps(self, best=False):
    """The steps saved in checkpoints/ (or best/), oldest first."""
    mngr = self.best if best else self.latest
    if mngr is not None:
      return sorted(mngr.all_steps())
    folder = self.workdir / ('best' if best else 'checkpoints')
    return sorted(ocp.utils.checkpoint_steps(folder)) if folder.exists() else []

  def latest_step(self):
    steps = self.steps()
    return steps[-1] if steps else None

  def best_step(self):
    return self.best.best_step() if self.best is not None else (self.steps(True) or [None])[-1]

  def _set_aside_unscored(self, warn):
    """A best checkpoint whose score (its `metrics` item) does not read is moved to
    damaged/ before the best manager, which reads every score when it starts, sees it."""
    damaged = []
    for step in self.steps(best=True):
      try:
        _read_score(self.path(step, True))
      except FileNotFoundError:
        continue
      except (ValueError, TypeError, AttributeError, OSError) as e:
        warn(f'{self.path(step, True)}: damaged checkpoint (its score: {_first_line(e)})')
        damaged.append(self.path(step, True))
    self.quarantine(damaged, warn)

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
    step = self.best_step()
    return None if step is None else _read_score(self.path(step, True))

  def wait(self):
    """Waits for asynchronous saves; WriteError naming the path of one that failed."""
    for name in ('latest', 'best'):
      path, size = self._pending.pop(name, (None, 0))
      mngr = getattr(self, name)
      if mngr is None:
        continue
      if path is None:
        mngr.wait_until_finished()
        continue
      with self._write_errors(path, size):
        mngr.wait_until_finished()
      if name == 'latest':
        self._last_good = int(path.name)

  def restore(self, target, step=None, best=False):
    """-> (state, data_state, meta) of a step (default: the latest, or the best) of
    checkpoints/ (best/). target: pytree of jax.ShapeDtypeStruct (with shardings) of
    the state. CheckpointError (DamagedCheckpoint when the files do not restore)."""
    step = (self.best_step() if best else self.latest_step()) if step is None else step
    if step is None:
      where = self.workdir / ('best' if best else 'checkpoints')
      raise CheckpointError(f'{where}: no checkpoint to restore')
    return self._restore(self.path(step, best), target)

  def _restore(self, path, target):
    """The one restore of every checkpoint: into `target`, its shapes checked first."""
    self._check_matches(path, target)
    args = {'state': ocp.args.StandardRestore(target), 'data': ocp.args.JsonRestore(),
            'meta': ocp.args.JsonRestore()}
    try:
      with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as reader:
        restored = reader.restore(path, args=ocp.args.Composite(**args))
    except Exception as e:  # pylint: disable=broad-except  (TensorStore, JSON, pytree errors)
      raise DamagedCheckpoint(path, _first_line(e, path=path)) from None
    return restored['state'], restored['data'], restored['meta']

  def _check_matches(self, path, target):
    """CheckpointError when the checkpoint's metadata shows another model's shapes (not
    damage: nothing is moved); unreadable metadata is left to the restore to report."""
    try:
      saved = ocp.StandardCheckpointHandler().metadata(path / 'state')
    except Exception:  # pylint: disable=broad-except  (unreadable: damaged, said by the caller)
      return
    how = describe_mismatch(tree_shapes(getattr(saved, 'tree', saved)), tree_shapes(target))
    if how:
      raise CheckpointError(f'{path}: the checkpoint does not match the config ({how}); '
                            'resume with the run\'s config or use a new workdir')

  def candidates(self, step=None, prefer_best=True):
    """The step directories to load a model from, in order: a given step of
    checkpoints/, else the best ones (prefer_best), then the latest, newest first.
    CheckpointError when there is none."""
    if step is not None:
      if step not in self.steps():
        raise CheckpointError(f'{self.workdir}: no checkpoint at step {step} '
                              f'(have {self.steps()})')
      return [self.path(step)]
    found = [self.path(s, True) for s in reversed(self.steps(True))] if prefer_best else []
    found += [self.path(s) for s in reversed(self.steps())]
    if not found:
      raise CheckpointError(f'{self.workdir}: no checkpoint to load')
    return found

  def restore_first(self, paths, target, warn=_warn_stderr, quarantine=False):
    """The first of `paths` that restores into `target` -> (state, data, meta, path), or
    None when none does. Each damaged one before it gets a warning naming it (quarantine:
    a resuming run moves it to damaged/); the path used then gets a line of its own.
    A checkpoint of another model is CheckpointError at once, never damage."""
    damaged = []
    for path in paths:
      try:
        state, data, meta = self._restore(path, target)
      except DamagedCheckpoint as e:
        warn(str(e))
        damaged.append(path)
        continue
      if damaged:
        warn(f'using {path} instead')
      if quarantine:
        self.quarantine(damaged, warn)
      return state, data, meta, path
    if quarantine:
      self.quarantine(damaged, warn)
    return None

  def quarantine(self, paths, warn=_warn_stderr):
    """Moves step directories to WORKDIR/damaged/<checkpoints|best>-<step>[-n] (process 0)."""
    if not paths:
      return
    if jax.process_index() == 0:
      target_dir = self.workdir / 'damaged'
      target_dir.mkdir(parents=True, exist_ok=True)
      for source in paths:
        target = target_dir / f'{source.parent.name}-{source.name}'
        n = 1
        while target.exists():
          n += 1
          target = target_dir / f'{source.parent.name}-{source.name}-{n}'
        source.rename(target)
        warn(f'moved {source} to {target}')
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes('bach_jax_quarantine')
    for mngr in (self.latest, self.best):
      if mngr is not None:
        mngr.reload()
    if self.latest is not None:
      self._last_good = self.latest.latest_step()

  def close(self):
    for mngr in (self.latest, self.best):
      if mngr is not None:
        mngr.close()


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
