"""Metric writing and progress lines. Only process 0 writes (multi-host safe).

metrics.jsonl: one JSON object per line, {"step": int, "<name>": float, ...}.
TensorBoard: event files via tensorboardX (no TensorFlow dependency).
"""

import json
import math
import os
import time

import jax


class MetricWriter:
  """Appends scalars to workdir/metrics.jsonl and TensorBoard event files."""

  def __init__(self, workdir, tensorboard=True):
    self.enabled = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
    if tensorboard:
      from tensorboardX import SummaryWriter  # Lazy: import cost only when training.
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step, scalars, tensorboard=True):
    """scalars: name -> number (or a list of numbers: metrics.jsonl only).

    Non-finite numbers are written as null, so the file stays strict JSON.
    """
    if not self.enabled:
      return
    record = {'step': int(step)}
    record.update({k: _json_value(v) for k, v in scalars.items()})
    self._jsonl.write(json.dumps(record, allow_nan=False) + '\n')
    if tensorboard and self._tb is not None:
      for k, v in record.items():
        if k != 'step' and isinstance(v, float):
          self._tb.add_scalar(k, v, int(step))

  def flush(self):
    if self._jsonl:
      self._jsonl.flush()
    if self._tb:
      self._tb.flush()

  def close(self):
    self.flush()
    if self._jsonl:
      self._jsonl.close()
    if self._tb:
      self._tb.close()


def _json_value(v):
  """A metric as strict JSON: float (None when not finite), or a list of them."""
  if isinstance(v, (list, tuple)) or getattr(v, 'ndim', 0) > 0:
    return [_json_value(x) for x in list(v)]
  v = float(v)
  return v if math.isfinite(v) else None


def read_metrics(workdir):
  """-> list of dicts from workdir/metrics.jsonl (empty if none)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


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
