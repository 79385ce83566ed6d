"""train_and_evaluate(config, workdir): the training loop of every model family.

State replicated and batch sharded over the mesh's 'data' axis, one jitted step
with the state donated; checkpoints (latest N + best by the family's selection
metric on valid) with the data-iterator state beside them, so re-running on the
same workdir resumes with the same step, data position and RNG stream.
SIGTERM / Ctrl-C saves and stops (main.py then exits with EXIT_INTERRUPTED, 75).
The workdir is locked for the run (workdir.Lock); a damaged newest checkpoint is
moved to WORKDIR/damaged/ and the newest intact one resumed; metrics rows after
it are superseded. What a crash at any moment leaves behind: docs/faults.md.
train.py knows no model by name: the family comes from the registry.
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
from bach_jax import metric_writers
from bach_jax import models
from bach_jax import parallel
from bach_jax import plotting
from bach_jax import workdir as workdir_lib
from bach_jax.data import corpora
from bach_jax.data import pipeline
from bach_jax.models import family as family_lib


class NonFiniteLossError(RuntimeError):
  """The training loss became NaN or infinite; the message gives the step."""


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


def setup(config, workdir=None):
  """Validates the config and loads what any mode needs: (family, corpus, mesh)."""
  config_base.validate(config, jax.device_count())
  family = models.get_family(config.model.name)
  if config.train.get('init_from') and config.train.get('init_from_into'):
    from bach_jax import finetune  # pylint: disable=g-import-not-at-top
    finetune.resolve_config(config)  # The base run's model config, for the family.
  family.validate(config)
  family_lib.check_rules(family, config.sample.get('rules', ''))
  corpus = corpora.load_corpus(config.data, progress=jax.process_index() == 0)
  family.check_corpus(config, corpus)
  return family, corpus, parallel.make_mesh()


def example_batch(config, num_voices):
  """A one-row batch with the training shapes, for init / eval_shape."""
  w = config.data.window_steps
  batch = {'roll': np.zeros((1, w, 88), bool), 'mask': np.ones((1,), bool)}
  if num_voices:
    batch['voices'] = np.full((1, w, num_voices), -1, np.int32)
  return batch


def abstract_state(family, config, mesh, num_voices):
  """Shapes, dtypes and (replicated) shardings of the TrainState, for restoring."""
  shapes = jax.eval_shape(functools.partial(family.init, config),
                          jax.random.key(0), example_batch(config, num_voices))
  repl = parallel.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl), shapes)


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


def train_and_evaluate(config, workdir):
  """Trains config.model on config.data, writing everything into workdir.

  Returns a dict of final metrics: the last evaluation's selection metric and the
  best checkpoint's on valid and test (e.g. best_test_frame_nll; a bound family's
  metric is a bound, e.g. best_test_iwae_frame_nll); after SIGTERM / Ctrl-C
  {'interrupted_at': step}, with a checkpoint of that step saved.

  Raises (one line each, naming the path or key): workdir.WorkdirError (a file,
  read-only), workdir.WorkdirLocked (another run holds it), workdir.WriteError
  (disk full), checkpoints.CheckpointError, config_base.ConfigError,
  NonFiniteLossError.
  """
  lead = jax.process_index() == 0  # Every process of one run shares the workdir.
  workdir = workdir_lib.prepare(workdir) if lead else workdir_lib.as_path(workdir)
  warn = lambda msg: metric_writers.log(f'warning: {msg}')
  with _StopRequest() as stop, workdir_lib.lock(workdir, 'train', enabled=lead, warn=warn):
    return _train(config, workdir, stop, warn)


def _train(config, workdir, stop, warn):
  """train_and_evaluate in a locked workdir, with SIGTERM / SIGINT caught by `stop`."""
  family, corpus, mesh = setup(config, workdir)
  log = metric_writers.log
  num_voices = corpus.num_voices
  t = config.train
  checkpoints.write_config(workdir, config)

  train_iter = pipeline.BatchIterator(
      corpus.splits['train'], batch_size=t.batch_size, window_steps=config.data.window_steps,
      hop_steps=config.data.hop_steps, seed=config.seed, shuffle=True,
      process_index=jax.process_index(), process_count=jax.process_count(),
      remainder='drop', pad_start=config.data.pad_start,
      augment_transpose=config.data.augment_transpose, num_voices=num_voices,
      pad_short=config.data.get('pad_short', False))
  if train_iter.batches_per_epoch == 0:
    raise config_base.ConfigError(
        f'config.train.batch_size: {t.batch_size} windows of {config.data.window_steps} steps '
        f'is more than one epoch of the training split ({len(corpus.splits["train"])} pieces)')

  repl = parallel.replicated(mesh)
  root = jax.random.key(config.seed)
  init_rng, train_rng = jax.random.split(root)
  ckpt = checkpoints.Checkpointer(workdir, keep=t.keep_checkpoints)
  writer = None
  try:
    abstract = abstract_state(family, config, mesh, num_voices)
    restored = ckpt.restore_intact(abstract, warn=warn, quarantine=True)
    if restored is not None:
      state, data_state, _, saved = restored
      try:
        train_iter.set_state(data_state)
      except ValueError as e:  # The data or the batch size changed since the checkpoint.
        raise config_base.ConfigError(
            f'{ckpt.path(saved)}: cannot resume with this config: {e} (use the run\'s '
            'config.data / config.train.batch_size, or a new workdir)') from None
      log(f'resumed from {ckpt.path(saved)}')
    else:
      saved = None
      state = jax.jit(functools.partial(family.init, config), out_shardings=repl)(
          init_rng, example_batch(config, num_voices))
      if t.get('init_from'):  # Fine-tuning: another run's params, a fresh optimizer.
        from bach_jax import finetune  # pylint: disable=g-import-not-at-top
        state = finetune.init_from(t.init_from, state, mesh, log=log,
                                    into=t.get('init_from_into', ''))
    ckpt.check_best(abstract, warn=warn)
    superseded = metric_writers.drop_rows_after(workdir, saved or 0)
    if superseded:
      log(f'moved {superseded} rows of metrics.jsonl after step {saved or 0} (steps run '
          f'again now) to {metric_writers.SUPERSEDED}')
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    log(f'{config.model.name}: {n_params:,} parameters; {jax.device_count()} devices '
        f'({jax.process_count()} processes); train {len(corpus.splits["train"])} pieces, '
        f'{train_iter.batches_per_epoch} batches/epoch')

    train_step = make_train_step(family, config, mesh)
    eval_fn = evaluate.make_eval_fn(family, config, mesh)
    select_by = family.CAPABILITIES.select_by
    halt = t.get('halt_on_nan', True)

    def run_eval(params, split):
      return evaluate.evaluate_pieces(eval_fn, family, config, params, corpus.splits[split],
                                      mesh, num_voices)

    writer = metric_writers.MetricWriter(workdir, purge_step=(saved or 0) + 1)
    step = int(jax.device_get(state.step))
    progress = metric_writers.Progress(step, t.num_steps)
    pending = []
    last_valid = None

    def flush():
      """Fetches pending step metrics (one host sync), checks them, writes them.

      A non-finite metric stops the run (NonFiniteLossError), unless
      train.halt_on_nan is False and the params are still finite: then it is
      logged (written as null) and training goes on.
      """
      host, bad = _first_nonfinite(pending)
      pending.clear()
      stop_here = bad is not None and (halt or not _all_finite(state.params))
      for s, m in host:
        if stop_here and s >= bad[0]:
          break
        writer.write(s, {f'train/{k}': v for k, v in m.items()}, tensorboard=False)
      if stop_here:
        writer.flush()
        raise NonFiniteLossError(_nonfinite_message(bad, saved, workdir, halt))
      if bad is not None:
        warn(f'non-finite training {", ".join(bad[1])} at step {bad[0]}; going on '
             '(train.halt_on_nan=False and the params are finite)')
      if host:
        means = {k: float(np.mean([m[k] for _, m in host])) for k in host[0][1]}
        writer.write(host[-1][0], {f'train/{k}_mean': v for k, v in means.items()})
        log(progress.line(host[-1][0], means))
      writer.flush()

    def save(score=None):
      nonlocal saved
      meta = {'step': step, 'select_by': select_by, 'valid_score': score,
              'num_voices': num_voices, 'steps_per_quarter': corpus.steps_per_quarter}
      ckpt.save(step, state, train_iter.get_state(), meta, score=score)
      saved = step

    def interrupted():
      """SIGTERM / Ctrl-C / preemption: saves this step (unless just saved) and says so."""
      flush()
      if step > 0 and saved != step:
        save()
      ckpt.wait()
      done = (f'saved a checkpoint at step {step}' if saved == step
              else 'stopped before the first step, nothing to save')
      log(f'{stop.requested or "preemption"}: {done}; run the same command again to resume')
      return {'interrupted_at': step}

    while step < t.num_steps:
      if stop.requested or (jax.process_count() > 1 and ckpt.latest.reached_preemption(step)):
        return interrupted()
      batch = parallel.to_global(next(train_iter), mesh)
      state, metrics = train_step(state, batch, train_rng)
      step += 1
      pending.append((step, metrics))
      last = step == t.num_steps
      if step % t.log_every == 0 or last:
        flush()
      score = None
      if (t.eval_every and step % t.eval_every == 0) or last:
        flush()
        result = run_eval(state.eval_params(), t.eval_split)
        score = last_valid = result[select_by]
        scores = {f'{t.eval_split}/{k}': v for k, v in evaluate.scalars(result).items()}
        line = f'step {step}: {evaluate.describe(result, t.eval_split)}'
        if state.eval_params() is not state.params:  # An average: what does it buy?
          raw = scores[f'{t.eval_split}/{select_by}_raw'] = run_eval(
              state.params, t.eval_split)[select_by]
          line += f'; raw params {raw:.4f}'
        writer.write(step, scores)
        log(line)
        for warning in result.get('warnings', ()):
          log(f'warning (step {step}): {warning}')
      if step % t.checkpoint_every == 0 or last or score is not None:
        flush()
        save(score if t.eval_split == 'valid' else None)
    ckpt.wait()
    if stop.requested:  # The last checkpoint is saved; a re-run does what follows.
      return interrupted()
    final = {'step': step, f'last_{t.eval_split}_{select_by}': last_valid,
             'likelihood': family.CAPABILITIES.likelihood}
    if ckpt.best.best_step() is not None:
      best_state, _, _ = ckpt.restore(abstract, best=True)
      for split in ('valid', 'test'):
        if corpus.splits.get(split):
          final[f'best_{split}_{select_by}'] = run_eval(best_state.eval_params(),
                                                        split)[select_by]
      final['best_step'] = ckpt.best.best_step()
      best = {k: v for k, v in final.items()
              if k.startswith('best_') and k.endswith(select_by) and v is not None}
      writer.write(step, {f'best/{k}': v for k, v in best.items()})
      log('best checkpoint (step %d, %s): %s' % (
          final['best_step'], family.CAPABILITIES.describe(),
          ', '.join(f'{k}={v:.4f}' for k, v in best.items())))
    writer.flush()
    if jax.process_index() == 0:
      with workdir_lib.writing(workdir / 'curves.png') as path:
        plotting.plot_curves(path, metric_writers.read_metrics(workdir),
                             ['train/loss_mean', f'{t.eval_split}/{select_by}'])
    if stop.requested:
      return interrupted()
    if t.num_final_samples and jax.process_index() == 0:
      from bach_jax import generate  # Only the end of a run needs it.
      paths = generate.sample_to_files(
          family, config, state.eval_params(), jax.random.fold_in(root, 1 << 30),
          workdir / 'samples', num_pieces=t.num_final_samples, corpus=corpus)
      log(f'wrote {len(paths)} samples to {workdir / "samples"}')
    return final
  finally:  # Cleanup errors are raised only when no error is on its way out already.
    _close_all(sys.exc_info()[1] is None, *([writer.close] if writer else []), ckpt.wait,
               ckpt.close)
