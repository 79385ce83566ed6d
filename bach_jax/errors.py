"""Every failure bach_jax reports in one line, and the exit codes of its commands.

A `UserError` is a failure that is not a bug: a user's mistake (a config key, a
file, a workdir, a checkpoint, a sampling option) or a run that cannot go on (a
locked workdir, a full disk, a non-finite loss). Its message names the key or
the path; every entry point (`python -m bach_jax.main`, `.compare`, `.data`)
runs inside `one_line_errors()`, which prints `error: <message>` on stderr and
exits with the error's `exit_code`. Anything else is a bug: a traceback, exit 1.

This module imports nothing of bach_jax: every layer (data, config, models,
runtime) raises these.
"""

import contextlib
import logging
import os
import sys

EXIT_USER_ERROR = 2
EXIT_NONFINITE = 3
EXIT_LOCKED = 73  # EX_CANTCREAT: another live process holds the workdir.
EXIT_WRITE_FAILED = 74  # EX_IOERR: disk full or another write error.
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: interrupted after a checkpoint; run again to resume.
EXIT_FORCED = 130  # Ctrl-C that stops at once: nothing more is saved.

INTERRUPTED = ('interrupted by Ctrl-C: stopped at once, without saving (checkpoints already '
               'written stand; run the same command again to resume)')


class UserError(Exception):
  """A failure reported as one line naming what to fix, and an exit code."""
  exit_code = EXIT_USER_ERROR


class UsageError(UserError):
  """A command line that cannot run: a missing or extra argument."""


class ConfigError(UserError, ValueError):
  """A config value is invalid; the message names the key."""


class CorpusError(UserError, ValueError):
  """A corpus source is unusable; the message names it."""


class MidiError(UserError, ValueError):
  """A MIDI file cannot be used; the message names the file and why."""


class DownloadError(UserError, RuntimeError):
  """A download failed or its checksum did not match; the message names the URL."""


class WorkdirError(UserError, RuntimeError):
  """The workdir cannot be used (a file, not writable); the message names the path."""


class WorkdirLocked(WorkdirError):
  """Another live process holds the workdir; the message names it."""
  exit_code = EXIT_LOCKED


class WriteError(UserError, RuntimeError):
  """A file of the run could not be written (disk full, I/O error); the message names
  the path, and for a checkpoint the space it needs."""
  exit_code = EXIT_WRITE_FAILED


class CheckpointError(UserError, RuntimeError):
  """A checkpoint is missing or does not match; the message names the path."""


class SampleError(UserError, ValueError):
  """A sampling option or input file is unusable; the message names it."""


class LatentError(UserError, ValueError):
  """The family has no latent space, or a latent request is unusable."""


class CompareError(UserError, ValueError):
  """A run or option of the report is unusable; the message names it."""


class DistributedError(UserError, ValueError):
  """A JAX_* variable of a multi-process start is unusable; the message names it."""


class NonFiniteLossError(UserError, RuntimeError):
  """The training loss became NaN or infinite; the message gives the step."""
  exit_code = EXIT_NONFINITE


def describe_os_error(e):
  """An OSError as 'strerror' (its errno's text when strerror is empty)."""
  return e.strerror or (os.strerror(e.errno) if e.errno else str(e))


def fail(message, code=EXIT_USER_ERROR):
  """Prints `error: message` on stderr and exits with `code`."""
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(code)


_STOP = []  # Set by a first Ctrl-C under stop_at_safe_points().


def safe_point():
  """Where a long command may stop: a Ctrl-C that came under stop_at_safe_points() is
  raised here (KeyboardInterrupt), not inside whatever Python ran when it came."""
  if _STOP:
    raise KeyboardInterrupt


@contextlib.contextmanager
def stop_at_safe_points():
  """Ctrl-C (SIGINT) for commands that only read and write files (sample, evaluate):
  the first one stops the command at its next safe_point() (a Ctrl-C raised anywhere
  else can land in a library's callback, e.g. JAX's garbage-collection hook, which
  swallows it); a second one stops it at once."""
  import signal  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def handle(signum, frame):
    if _STOP:
      raise KeyboardInterrupt
    _STOP.append(signum)

  previous = signal.signal(signal.SIGINT, handle)
  try:
    yield
    safe_point()
  finally:
    signal.signal(signal.SIGINT, previous)
    _STOP.clear()


@contextlib.contextmanager
def one_line_errors(interrupted=INTERRUPTED):
  """An entry point's body: a UserError (or a failed file operation, or Ctrl-C) becomes
  one `error:` line and its exit code; a bug keeps its traceback."""
  try:
    yield
  except UserError as e:
    fail(e, e.exit_code)
  except FileNotFoundError as e:  # A path the user gave that is not there.
    fail(e)
  except OSError as e:  # Any other failed read or write: the file and the reason.
    fail(f'{e.filename or "?"}: {describe_os_error(e)}', EXIT_WRITE_FAILED)
  except KeyboardInterrupt:
    fail(interrupted, EXIT_FORCED)


def _from_orbax(record):
  """Whether a log record is about an Orbax task (its message or traceback)."""
  if '/orbax/' in record.getMessage():
    return True
  tb = record.exc_info[1].__traceback__ if record.exc_info and record.exc_info[1] else None
  while tb is not None:
    if '/orbax/' in tb.tb_frame.f_code.co_filename:
      return True
    tb = tb.tb_next
  return False


def _quiet_orbax(record):
  """A logging filter: Orbax's own log lines (a save logs at INFO, a failed one dozens),
  and asyncio's 'exception was never retrieved' for its tasks, are left out; the errors
  they describe are reported in one line."""
  if record.name == 'asyncio':
    return not _from_orbax(record)
  return 'orbax' not in record.pathname or record.levelno >= logging.CRITICAL


class _OurLines(logging.Formatter):
  """bach_jax's own warnings as 'warning: ...' lines, as the rest of its messages; other
  records keep absl's format."""

  def __init__(self, other):
    super().__init__()
    self.other = other

  def format(self, record):
    if record.name.startswith('bach_jax'):
      return f'{record.levelname.lower()}: {record.getMessage()}'
    return self.other.format(record)


def quiet_library_logs():
  """An entry point's log: absl at WARNING without Orbax's lines (--verbosity, or -v=,
  on the command line shows everything), bach_jax's warnings as one 'warning:' line."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  handler = absl_logging.get_absl_handler()
  handler.setFormatter(_OurLines(handler.python_handler.formatter or logging.Formatter()))
  if any(a.startswith(('--verbosity', '-v=')) for a in sys.argv):
    return
  absl_logging.set_verbosity(absl_logging.WARNING)
  absl_logging.get_absl_logger().addFilter(_quiet_orbax)
  logging.getLogger('asyncio').addFilter(_quiet_orbax)
