"""Metric writing and progress lines. Only process 0 writes (multi-host safe).

metrics.jsonl: one JSON object per line, {"step": int, "<name>": float, ...}.
A resumed run first moves the rows of steps after its checkpoint (written
before a crash, about to be re-run) to metrics.superseded.jsonl
(`drop_rows_after`), so the file holds one history; `read_metrics` also takes
the last value per (step, name) and skips a line torn by a crash, so files
written by older versions read right too.
TensorBoard: event files via tensorboardX (no TensorFlow dependency); a resumed
run sets purge_step, so TensorBoard drops the re-run steps' older events.
Every path goes through etils epath: a gs:// workdir works for metrics.jsonl
(rewritten at each flush there: object stores cannot append); TensorBoard on
gs:// needs `pip install google-cloud-storage` and is skipped with a note without it.
"""

import json
import math
import sys
import time

import jax

from bach_jax import workdir as workdir_lib

METRICS = 'metrics.jsonl'
SUPERSEDED = 'metrics.superseded.jsonl'


class _Rewriter:
  """Append for object stores (no append there): the whole file is rewritten at flush."""

  def __init__(self, path):
    self.path = path
    self._text = path.read_text() if path.exists() else ''
    self._new = []

  def write(self, text):
    self._new.append(text)

  def flush(self):
    if self._new:
      self._text += ''.join(self._new)
      self._new = []
      self.path.write_text(self._text)

  def close(self):
    self.flush()


def _open_append(path):
  return path.open('a') if workdir_lib.is_local(path) else _Rewriter(path)


class MetricWriter:
  """Appends scalars to workdir/metrics.jsonl and TensorBoard event files.

  purge_step: a resumed run's first new step (TensorBoard discards older events
  from that step on). An OSError while writing becomes workdir.WriteError naming
  the file.
  """

  def __init__(self, workdir, tensorboard=True, purge_step=None):
    self.enabled = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if not self.enabled:
      return
    workdir = workdir_lib.as_path(workdir)
    self.path = workdir / METRICS
    with self._errors():
      workdir.mkdir(parents=True, exist_ok=True)
      self._jsonl = _open_append(self.path)
    if tensorboard:
      self._tb = _summary_writer(workdir / 'tensorboard', purge_step)

  def _errors(self):
    return workdir_lib.writing(self.path)

  def write(self, step, scalars, tensorboard=True):
    """scalars: name -> number (or a list of numbers: metrics.jsonl only).

    Non-finite numbers are written as null, so the file stays strict JSON.
    """
    if not self.enabled:
      return
    record = {'step': int(step)}
    record.update({k: json_safe(v) for k, v in scalars.items()})
    with self._errors():
      self._jsonl.write(json.dumps(record, allow_nan=False) + '\n')
    if tensorboard and self._tb is not None:
      for k, v in record.items():
        if k != 'step' and isinstance(v, float):
          self._tb.add_scalar(k, v, int(step))

  def flush(self):
    if self._jsonl:
      with self._errors():
        self._jsonl.flush()
    if self._tb:
      self._tb.flush()

  def close(self):
    """Flushes and closes; closes everything even when the flush fails."""
    jsonl, tb, self._jsonl, self._tb = self._jsonl, self._tb, None, None
    try:
      if jsonl:
        with self._errors():
          jsonl.close()
    finally:
      if tb:
        tb.close()


def _summary_writer(logdir, purge_step):
  """A tensorboardX SummaryWriter, or None with a one-line note where it cannot write."""
  try:
    if str(logdir).startswith('gs://'):  # tensorboardX writes gs:// with this package only.
      import google.cloud.storage  # pylint: disable=g-import-not-at-top,unused-import
    from tensorboardX import SummaryWriter  # Lazy: import cost only when training.
    return SummaryWriter(str(logdir), purge_step=purge_step)
  except (ImportError, OSError) as e:
    print(f'note: TensorBoard events not written to {logdir} ({e}); metrics.jsonl has '
          'every scalar', file=sys.stderr, flush=True)
    return None


def json_safe(x):
  """A copy of nested dicts / lists / numbers / arrays with NaN and inf as None (strict
  JSON): what metrics.jsonl, main's result lines and report.json hold."""
  if isinstance(x, dict):
    return {str(k): json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)) or getattr(x, 'ndim', 0) > 0:
    return [json_safe(v) for v in x]
  if isinstance(x, bool) or x is None or isinstance(x, str):
    return x
  if isinstance(x, (int, float)) or hasattr(x, 'dtype'):
    v = x.item() if hasattr(x, 'item') else x
    return v if isinstance(v, (bool, int)) or math.isfinite(v) else None
  return str(x)


def _parse_rows(text):
  """[(line, dict or None)]: None for a line that is not a JSON object with a step."""
  rows = []
  for line in text.splitlines():
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except ValueError:
      row = None
    rows.append((line, row if isinstance(row, dict) and 'step' in row else None))
  return rows


def read_metrics(workdir):
  """-> list of dicts from workdir/metrics.jsonl (empty if none), in file order.

  The last value written for a (step, name) wins: rows re-written by a re-run
  supersede the older ones. Lines torn by a crash are skipped.
  """
  path = workdir_lib.as_path(workdir) / METRICS
  if not path.exists():
    return []
  rows = [row for _, row in _parse_rows(path.read_text()) if row is not None]
  last = {}
  for i, row in enumerate(rows):
    for k in row:
      last[(row['step'], k)] = i
  out = []
  for i, row in enumerate(rows):
    kept = {k: v for k, v in row.items() if k == 'step' or last[(row['step'], k)] == i}
    if len(kept) > 1:
      out.append(kept)
  return out


def drop_rows_after(workdir, step):
  """A resuming run (process 0): moves the rows of steps after `step`, the rows of the
  final phase at `step` ('best/*': a re-run writes them again) and lines torn by a crash
  from metrics.jsonl to metrics.superseded.jsonl -> how many moved."""
  if jax.process_index() != 0:
    return 0
  workdir = workdir_lib.as_path(workdir)
  path = workdir / METRICS
  if not path.exists():
    return 0
  keep, drop = [], []
  for line, row in _parse_rows(path.read_text()):
    kept = row is not None and (row['step'] < step or row['step'] == step and not any(
        k.startswith('best/') for k in row))
    (keep if kept else drop).append(line)
  if not drop:
    return 0
  with workdir_lib.writing(workdir / SUPERSEDED):
    old = (workdir / SUPERSEDED).read_text() if (workdir / SUPERSEDED).exists() else ''
    (workdir / SUPERSEDED).write_text(old + ''.join(line + '\n' for line in drop))
  with workdir_lib.writing(path):
    tmp = workdir / (METRICS + '.tmp')
    tmp.write_text(''.join(line + '\n' for line in keep))
    tmp.replace(path)
  return len(drop)


class Progress:
  """Rate and ETA over a training run, for periodic log lines."""

  def __init__(self, first_step, num_steps):
    self.num_steps = num_steps
    self._t0 = time.perf_counter()
    self._s0 = first_step
    self._last_t, self._last_s = self._t0, first_step

  def line(self, step, scalars):
    now = time.perf_counter()
    rate = (step - self._last_s) / max(now - self._last_t, 1e-9)
    overall = (step - self._s0) / max(now - self._t0, 1e-9)
    eta = (self.num_steps - step) / overall if overall > 0 else math.inf
    self._last_t, self._last_s = now, step
    vals = ' '.join(f'{k}={v:.4f}' for k, v in scalars.items())
    return (f'step {step}/{self.num_steps} {vals} | {rate:.2f} steps/s | '
            f'ETA {_fmt_seconds(eta)}')


def _fmt_seconds(s):
  if not math.isfinite(s):
    return '?'
  s = int(s)
  return f'{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s' if s >= 3600 else f'{s // 60}m{s % 60:02d}s'


def log(msg):
  """A progress line: printed by process 0 (visible without absl flags)."""
  if jax.process_index() == 0:
    print(msg, flush=True)
