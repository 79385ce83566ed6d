"""train_and_evaluate(config, workdir): the training loop of every model family.

State replicated and batch sharded over the mesh's 'data' axis, one jitted step
with the state donated; checkpoints (latest N + best by the family's selection
metric on valid) with the data-iterator state beside them, so re-running on the
same workdir resumes with the same step, data position and RNG stream.
SIGTERM / Ctrl-C saves and stops (main.py then exits with EXIT_INTERRUPTED, 75).
The workdir is locked for the run (workdir.Lock); a damaged newest checkpoint is
moved to WORKDIR/damaged/ and the newest intact one resumed; metrics rows after
it are superseded. What a crash at any moment leaves behind: docs/faults.md.
train.py knows no model by name: the family comes from experiment.setup.

The loop (`_Run`) is a step and three kinds of periodic work after it, each due
by a `Periodic` (every N steps, and at the last step): write the pending step
metrics (with the progress line), evaluate, save. Only main.py imports this module.
"""

import functools
import signal
import sys
import threading

import jax
import numpy as np

from bach_jax import checkpoints
from bach_jax import config_base
from bach_jax import evaluate
from bach_jax import experiment
from bach_jax import finetune
from bach_jax import generate
from bach_jax import metric_writers
from bach_jax import parallel
from bach_jax import plotting
from bach_jax import workdir as workdir_lib
from bach_jax.data import pipeline
from bach_jax.errors import ConfigError, NonFiniteLossError  # pylint: disable=unused-import

FINAL_SAMPLES_SEED = 1 << 30  # The end-of-run samples: fold_in(key(config.seed), this).


class _StopRequest:
  """SIGTERM / SIGINT set a flag; the loop saves a checkpoint and exits cleanly.

  A second Ctrl-C interrupts at once (KeyboardInterrupt), in case saving hangs.
  With several processes no handler is installed: SIGTERM is left to jax's
  preemption handler, so that the processes agree on the step they stop at
  (Orbax's reached_preemption, checked in the loop); a handler of ours would
  replace jax's and let each process stop at a different step, each then waiting
  for the others forever. Ctrl-C there ends the processes (no checkpoint).
  """

  def __init__(self):
    self.requested = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():  # signal() needs it.
      for sig in (signal.SIGTERM, signal.SIGINT) if jax.process_count() == 1 else ():
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.requested is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class Periodic:
  """Whether periodic work is due after a step: every `every` steps (0: never), at
  `last` and at the steps `on`. Our own, not clu's periodic_actions: clu 0.0.12 imports
  TensorFlow with its metric writers, and its first call never triggers (a resumed run
  whose first step is the last would skip its final evaluation)."""

  def __init__(self, every, last, on=()):
    self.every, self.last, self.on = every, last, frozenset(on)

  def __call__(self, step):
    return bool(self.every) and step % self.every == 0 or step == self.last or step in self.on


def make_train_step(family, config, mesh):
  """jit(train_step): (state, global batch, root rng) -> (state, metrics).

  State replicated and donated, batch sharded on 'data'; the step's RNG is
  fold_in(rng, state.step), computed on device, so a resumed run draws the
  same dropout masks as an uninterrupted one.
  """
  repl = parallel.replicated(mesh)

  def step_fn(state, batch, rng):
    return family.train_step(config, state, batch, jax.random.fold_in(rng, state.step))

  return jax.jit(step_fn, in_shardings=(repl, parallel.data_sharded(mesh), repl),
                 out_shardings=(repl, repl), donate_argnums=(0,))


def _first_nonfinite(pending):
  """pending: [(step, metrics)] on device -> (host metrics list, (first bad step, its
  non-finite metric names) or None). Every metric is checked, not only the loss."""
  host = jax.device_get(pending)
  for step, m in host:
    bad = [k for k, v in m.items() if not np.all(np.isfinite(v))]
    if bad:
      return host, (step, bad)
  return host, None


def _all_finite(tree):
  return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(jax.device_get(tree)))


def _nonfinite_message(bad, saved, workdir, halt):
  """NonFiniteLossError's line: the step, the metrics, and what checkpoint is left."""
  kept = (f'The last good checkpoint (step {saved}) is intact in {workdir}/checkpoints'
          if saved is not None else
          f'No checkpoint was written yet: {workdir}/checkpoints has nothing to resume from')
  why = '' if halt else ' (the params are non-finite too: train.halt_on_nan=False cannot go on)'
  return f'non-finite training {", ".join(bad[1])} at step {bad[0]}; stopping{why}. {kept}'


def _close_all(raise_errors, *closers):
  """Runs every closer; re-raises the first error only when nothing else is propagating
  (a cleanup must not hide the error that stopped the run)."""
  first = None
  for close in closers:
    try:
      close()
    except Exception as e:  # pylint: disable=broad-except
      first = first or e
  if first is not None and raise_errors:
    raise first


def _batch_iterator(exp):
  """The training windows of this process's rows of each global batch. ConfigError
  naming the key when the window or the batch does not fit the training split."""
  config, t = exp.config, exp.config.train
  d, train = config.data, exp.corpus.splits['train']
  frames = int(train.lengths.max(initial=0)) + d.pad_start
  if d.window_steps > frames:
    name = train[int(train.lengths.argmax())].meta.get('file', '?') if len(train) else 'none'
    raise ConfigError(
        f'config.data.window_steps={d.window_steps}: longer than every training piece (the '
        f'longest, {name}, is {frames} frames with its start frame); use at most {frames}')
  try:
    return pipeline.BatchIterator(
        train, batch_size=t.batch_size, window_steps=d.window_steps, hop_steps=d.hop_steps,
        seed=config.seed, shuffle=True, process_index=jax.process_index(),
        process_count=jax.process_count(), remainder='drop', pad_start=d.pad_start,
        augment_transpose=d.augment_transpose, num_voices=exp.num_voices,
        pad_short=d.pad_short)
  except ValueError as e:  # No whole batch in an epoch of the training split.
    raise ConfigError(f'config.train.batch_size={t.batch_size}: {e} ({len(train)} training '
                      f'pieces, data.window_steps={d.window_steps})') from None


def train_and_evaluate(config, workdir):
  """Trains config.model on config.data, writing everything into workdir.

  Returns a dict of final metrics: the last evaluation's selection metric and the
  best checkpoint's on valid and test (e.g. best_test_frame_nll; a bound family's
  metric is a bound, e.g. best_test_iwae_frame_nll); after SIGTERM / Ctrl-C
  {'interrupted_at': step}, with a checkpoint of that step saved.

  Raises (one line each, naming the path or key; all errors.UserError):
  WorkdirError (a file, read-only), WorkdirLocked (another run holds it),
  WriteError (disk full), CheckpointError, ConfigError, NonFiniteLossError.
  """
  lead = jax.process_index() == 0  # Every process of one run shares the workdir.
  workdir = workdir_lib.prepare(workdir) if lead else workdir_lib.as_path(workdir)
  warn = lambda msg: metric_writers.log(f'warning: {msg}')
  with workdir_lib.lock(workdir, 'train', enabled=lead, warn=warn):
    exp = experiment.setup(config)  # Ctrl-C while the corpus is prepared stops at once.
    with _StopRequest() as stop:
      return _Run(exp, workdir, stop, warn).run()


class _Run:
  """One training run in a locked workdir, SIGTERM / SIGINT caught by `stop`."""

  def __init__(self, exp, workdir, stop, warn):
    self.exp, self.config = exp, exp.config
    self.workdir, self.stop, self.warn = workdir, stop, warn
    self.log = metric_writers.log
    self.select_by = self.exp.family.CAPABILITIES.select_by
    self.train_iter = _batch_iterator(self.exp)
    self.root = jax.random.key(self.config.seed)
    self.init_rng, self.train_rng = jax.random.split(self.root)
    self.ckpt = self.writer = None
    self.pending = []  # (step, metrics on device) not yet written.
    self.window = []  # (step, host metrics) since the last log step: its means.
    self.saved = None  # The step of the latest checkpoint written (or resumed from).
    self.last_score = None  # The last evaluation's selection metric.

  def run(self):
    try:
      self._start()
      return self._loop() or self._finish()
    finally:  # Cleanup errors are raised only when no error is on its way out already.
      closers = [self.writer.close] if self.writer else []
      closers += [self.ckpt.wait, self.ckpt.close] if self.ckpt else []
      _close_all(sys.exc_info()[1] is None, *closers)

  def _start(self):
    """Resumes or initializes the state, then compiles the step and opens the writer."""
    self.ckpt = checkpoints.Checkpointer(self.workdir, keep=self.config.train.keep_checkpoints,
                                         warn=self.warn,
                                         keep_steps=config_base.keep_steps(self.config))
    self.abstract = experiment.abstract_state(self.exp.family, self.config,
                                              self.exp.num_voices,
                                              parallel.replicated(self.exp.mesh))
    self.state = self._restore_or_init()
    # Only now: a resume this config cannot make is refused before config.json changes.
    checkpoints.write_config(self.workdir, self.config)
    self.ckpt.restore_first([self.ckpt.path(s, True) for s in self.ckpt.steps(True)][::-1],
                            self.abstract, self.warn, quarantine=True)
    superseded = metric_writers.drop_rows_after(self.workdir, self.saved or 0)
    if superseded:
      self.log(f'moved {superseded} rows of metrics.jsonl after step {self.saved or 0} (steps '
               f'run again now) to {metric_writers.SUPERSEDED}')
    if self.saved:
      self._continue_from_metrics()
    exp = self.exp
    n_params = sum(x.size for x in jax.tree.leaves(self.state.params))
    self.log(f'{self.config.model.name}: {n_params:,} parameters; {jax.device_count()} '
             f'devices ({jax.process_count()} processes); train '
             f'{len(exp.corpus.splits["train"])} pieces, '
             f'{self.train_iter.batches_per_epoch} batches/epoch')
    self.train_step = make_train_step(exp.family, self.config, exp.mesh)
    self.eval_fn = evaluate.make_eval_fn(exp.family, self.config, exp.mesh)
    self.writer = metric_writers.MetricWriter(self.workdir, purge_step=(self.saved or 0) + 1)
    self.step = int(jax.device_get(self.state.step))
    self.progress = metric_writers.Progress(self.step, self.config.train.num_steps)
    self.write_due = Periodic(self.config.train.log_every, self.config.train.num_steps)

  def _continue_from_metrics(self):
    """A resumed run picks up what the stopped one wrote: the steps since its last log
    step (so the next mean covers log_every steps, as without the stop) and its last
    evaluation's score (the result's last_<split>_<metric>)."""
    t = self.config.train
    last_log = self.saved // t.log_every * t.log_every
    key = f'{t.eval_split}/{self.select_by}'
    for row in metric_writers.read_metrics(self.workdir):
      steps = {k[len('train/'):]: np.float32(np.nan if v is None else v)
               for k, v in row.items() if k.startswith('train/') and not k.endswith('_mean')}
      if last_log < row['step'] <= self.saved and steps:
        self.window.append((row['step'], steps))
      if key in row and row['step'] <= self.saved:
        self.last_score = row[key]

  def _restore_or_init(self):
    """The newest intact checkpoint (damaged newer ones moved to damaged/), with the
    data iterator at its position; else a fresh state (or train.init_from's params)."""
    paths = [self.ckpt.path(s) for s in self.ckpt.steps()][::-1]
    found = self.ckpt.restore_first(paths, self.abstract, self.warn, quarantine=True)
    if found is None and paths:
      raise checkpoints.CheckpointError(f'{self.workdir / "checkpoints"}: no checkpoint '
                                        'restores (damaged ones named above)')
    if found is not None:
      state, data_state, _, path = found
      try:
        self.train_iter.set_state(data_state)
      except ValueError as e:  # The data or the batch size changed since the checkpoint.
        raise ConfigError(
            f'{path}: cannot resume with this config: {e} (use the run\'s config.data / '
            'config.train.batch_size, or a new workdir)') from None
      self.saved = int(path.name)
      self.log(f'resumed from {path}')
      return state
    t, exp = self.config.train, self.exp
    state = jax.jit(functools.partial(exp.family.init, self.config),
                    out_shardings=parallel.replicated(exp.mesh))(
                        self.init_rng, experiment.example_batch(self.config, exp.num_voices))
    if t.init_from:  # Fine-tuning: another run's params, a fresh optimizer.
      state = finetune.init_from(t.init_from, state, exp.mesh, log=self.log,
                                 into=t.init_from_into)
    return state

  def _loop(self):
    """Steps until train.num_steps -> None, or {'interrupted_at': step} after a stop."""
    t = self.config.train
    eval_due = Periodic(t.eval_every, t.num_steps)
    save_due = Periodic(t.checkpoint_every, t.num_steps, config_base.keep_steps(self.config))
    while self.step < t.num_steps:
      if self.stop.requested or (jax.process_count() > 1
                                 and self.ckpt.latest.reached_preemption(self.step)):
        return self._interrupted()
      batch = parallel.to_global(next(self.train_iter), self.exp.mesh)
      self.state, metrics = self.train_step(self.state, batch, self.train_rng)
      self.step += 1
      self.pending.append((self.step, metrics))
      if self.write_due(self.step):
        self._flush()
      score = self._evaluate() if eval_due(self.step) else None
      if save_due(self.step) or score is not None:
        self._flush()
        self._save(score if t.eval_split == 'valid' else None)
    self.ckpt.wait()
    if self.stop.requested:  # The last checkpoint is saved; a re-run does what follows.
      return self._interrupted()
    return None

  def _flush(self):
    """Fetches pending step metrics (one host sync), checks them, writes each step's row;
    at a log step (or the last), also the means since the one before and the progress line.

    A non-finite metric stops the run (NonFiniteLossError), unless
    train.halt_on_nan is False and the params are still finite: then it is
    logged (written as null) and training goes on.
    """
    host, bad = _first_nonfinite(self.pending)
    self.pending.clear()
    halt = self.config.train.halt_on_nan
    stop_here = bad is not None and (halt or not _all_finite(self.state.params))
    for s, m in host:
      if stop_here and s >= bad[0]:
        break
      self.writer.write(s, {f'train/{k}': v for k, v in m.items()}, tensorboard=False)
    if stop_here:
      self.writer.flush()
      raise NonFiniteLossError(_nonfinite_message(bad, self.saved, self.workdir, halt))
    if bad is not None:
      self.warn(f'non-finite training {", ".join(bad[1])} at step {bad[0]}; going on '
                '(train.halt_on_nan=False and the params are finite)')
    self.window += host
    if self.window and self.write_due(self.window[-1][0]):
      means = {k: float(np.mean([m[k] for _, m in self.window])) for k in self.window[0][1]}
      self.writer.write(self.window[-1][0], {f'train/{k}_mean': v for k, v in means.items()})
      self.log(self.progress.line(self.window[-1][0], means))
      self.window = []
    self.writer.flush()

  def _run_eval(self, params, split):
    return evaluate.evaluate_pieces(self.eval_fn, self.exp.family, self.config, params,
                                    self.exp.corpus.splits[split], self.exp.mesh,
                                    self.exp.num_voices)

  def _evaluate(self):
    """Scores train.eval_split -> the selection metric; writes and logs every metric."""
    self._flush()
    split, step = self.config.train.eval_split, self.step
    result = self._run_eval(self.state.eval_params(), split)
    self.last_score = result[self.select_by]
    scores = {f'{split}/{k}': v for k, v in evaluate.scalars(result).items()}
    line = f'step {step}: {evaluate.describe(result, split)}'
    if self.state.eval_params() is not self.state.params:  # An average: what does it buy?
      raw = scores[f'{split}/{self.select_by}_raw'] = self._run_eval(
          self.state.params, split)[self.select_by]
      line += f'; raw params {raw:.4f}'
    self.writer.write(step, scores)
    self.log(line)
    for warning in result.get('warnings', ()):
      self.log(f'warning (step {step}): {warning}')
    return self.last_score

  def _save(self, score=None):
    meta = {'step': self.step, 'select_by': self.select_by, 'valid_score': score,
            'num_voices': self.exp.num_voices,
            'steps_per_quarter': self.exp.corpus.steps_per_quarter}
    self.ckpt.save(self.step, self.state, self.train_iter.get_state(), meta, score=score)
    self.saved = self.step

  def _interrupted(self):
    """SIGTERM / Ctrl-C / preemption: saves this step (unless just saved) and says so."""
    self._flush()
    if self.step > 0 and self.saved != self.step:
      self._save()
    self.ckpt.wait()
    done = (f'saved a checkpoint at step {self.step}' if self.saved == self.step
            else 'stopped before the first step, nothing to save')
    self.log(f'{self.stop.requested or "preemption"}: {done}; run the same command again to '
             'resume')
    return {'interrupted_at': self.step}

  def _finish(self):
    """After the last step: the best checkpoint scored on valid and test, curves.png and
    the final samples -> the run's result."""
    t, caps = self.config.train, self.exp.family.CAPABILITIES
    final = {'step': self.step, f'last_{t.eval_split}_{self.select_by}': self.last_score,
             'likelihood': caps.likelihood}
    if self.ckpt.best_step() is not None:
      final.update(self._score_best())
    self.writer.flush()
    if jax.process_index() == 0:
      with workdir_lib.writing(self.workdir / 'curves.png') as path:
        plotting.plot_curves(path, metric_writers.read_metrics(self.workdir),
                             ['train/loss_mean', f'{t.eval_split}/{self.select_by}'])
    if self.stop.requested:
      return self._interrupted()
    if t.num_final_samples and jax.process_index() == 0:
      paths = generate.sample_to_files(
          self.exp.family, self.config, self.state.eval_params(),
          jax.random.fold_in(self.root, FINAL_SAMPLES_SEED), self.workdir / 'samples',
          num_pieces=t.num_final_samples, corpus=self.exp.corpus)
      self.log(f'wrote {len(paths)} samples to {self.workdir / "samples"}')
    return final

  def _score_best(self):
    """The best checkpoint's selection metric on valid and test, written and logged."""
    best_state, _, _ = self.ckpt.restore(self.abstract, best=True)
    scores = {}
    for split in ('valid', 'test'):
      if self.exp.corpus.splits.get(split):
        scores[f'best_{split}_{self.select_by}'] = self._run_eval(best_state.eval_params(),
                                                                  split)[self.select_by]
    scores['best_step'] = self.ckpt.best_step()
    best = {k: v for k, v in scores.items()
            if k.startswith('best_') and k.endswith(self.select_by) and v is not None}
    self.writer.write(self.step, {f'best/{k}': v for k, v in best.items()})
    self.log('best checkpoint (step %d, %s): %s' % (
        scores['best_step'], self.exp.family.CAPABILITIES.describe(),
        ', '.join(f'{k}={v:.4f}' for k, v in best.items())))
    return scores
