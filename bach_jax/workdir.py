"""The workdir: its paths (etils epath, so a gs:// workdir works) and its lock.

Every file the trainer writes or reads outside Orbax goes through `as_path` (an
`epath.Path`): local paths, and gs:// where epath has a backend for it
(gcsfs, or TensorFlow's gfile).

The lock: a run that writes into a workdir (train; sample / reconstruct /
interpolate writing into WORKDIR/samples) holds WORKDIR/lock, a small JSON
file naming the holder: process id, host, boot id, command and a heartbeat
refreshed every HEARTBEAT_SECONDS. A second run refuses at once with one line
naming the holder. A lock is stale, and is taken over with a warning, when its
holder is known to be gone: on the same host (same boot), its pid no longer
runs (or runs another program, started later); on another host (or after a
reboot), its heartbeat is older than STALE_SECONDS. In a multi-process run
only process 0 takes the lock: all processes of one run share the workdir.
"""

import contextlib
import errno
import json
import os
import shutil
import socket
import sys
import threading
import time
import uuid

from etils import epath

from bach_jax.errors import WorkdirError, WorkdirLocked, WriteError, describe_os_error  # pylint: disable=unused-import

LOCK_NAME = 'lock'
HEARTBEAT_SECONDS = 60.0
STALE_SECONDS = 300.0  # A lock from another host with an older heartbeat is stale.




def as_path(path):
  """str / os.PathLike / epath.Path -> epath.Path; a local relative path becomes absolute."""
  p = epath.Path(path)
  if is_local(p) and not p.is_absolute():
    p = epath.Path(os.path.abspath(os.fspath(p)))
  return p


def is_local(path):
  """True for a path on the local filesystem (no 'scheme://' prefix)."""
  return '://' not in os.fspath(path)


def _chain(e):
  seen = []
  while e is not None and e not in seen:
    seen.append(e)
    e = e.__cause__ or e.__context__
  return seen


def is_disk_full(e):
  """True when e (or what caused it) is ENOSPC / EDQUOT, also as TensorStore reports it."""
  for x in _chain(e):
    if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    text = str(x)
    if 'No space left on device' in text or f"os_error_code='{errno.ENOSPC}'" in text:
      return True
  return False


def os_error_in(e):
  """The first OSError with an errno in e's chain of causes, or None."""
  return next((x for x in _chain(e) if isinstance(x, OSError) and x.errno), None)


def format_bytes(n):
  """1536 -> '1.5 KiB'."""
  for unit in ('B', 'KiB', 'MiB', 'GiB'):
    if n < 1024 or unit == 'GiB':
      return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
    n /= 1024
  return f'{n:.1f} GiB'


def free_bytes(path):
  """Free space where `path` (or its nearest existing parent) lives; None if unknown."""
  if not is_local(path):
    return None
  p = as_path(path)
  while not p.exists() and p != p.parent:
    p = p.parent
  try:
    return shutil.disk_usage(str(p)).free
  except OSError:
    return None


@contextlib.contextmanager
def writing(path):
  """Context yielding `path`: an OSError inside becomes WriteError naming it."""
  try:
    yield path
  except OSError as e:
    space = '; free some space' if is_disk_full(e) else ''
    raise WriteError(f'{path}: cannot write ({describe_os_error(e)}){space}') from None


def prepare(path, what='workdir'):
  """Creates a folder the run writes into when missing and checks that it is writable.

  Returns:
    The folder as an epath.Path.

  Raises:
    WorkdirError: one line naming the path (a file; read-only; cannot be created).
  """
  path = as_path(path)
  if path.exists() and not path.is_dir():
    raise WorkdirError(f'{path}: the {what} is a file, not a directory')
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f'{path}: cannot create the {what} ({describe_os_error(e)})') from None
  probe = path / f'.write-test-{socket.gethostname()}-{os.getpid()}'
  try:
    probe.write_text('')
    probe.unlink()
  except OSError as e:
    raise WorkdirError(f'{path}: the {what} is not writable ({describe_os_error(e)})'
                       + ('; free some space' if is_disk_full(e) else '')) from None
  return path


def _boot_id():
  try:
    with open('/proc/sys/kernel/random/boot_id') as f:
      return f.read().strip()
  except OSError:
    return ''


def _start_ticks(pid):
  """A process's start time (clock ticks after boot, Linux) or None where unknown."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return int(f.read().rsplit(')', 1)[1].split()[19])
  except (OSError, ValueError, IndexError):
    return None


def _pid_alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  except (OSError, OverflowError, TypeError):
    return False
  return True


def holder_is_gone(info, now=None):
  """True when the lock's holder (a lock file's dict) is known to no longer run."""
  now = time.time() if now is None else now
  same_machine = (info.get('host') == socket.gethostname() and info.get('boot_id')
                  and info.get('boot_id') == _boot_id())
  if not same_machine:
    return now - float(info.get('heartbeat') or 0) > STALE_SECONDS
  pid = info.get('pid')
  if not isinstance(pid, int) or not _pid_alive(pid):
    return True
  started = info.get('start_ticks')
  return started is not None and _start_ticks(pid) not in (None, started)


def describe_holder(info):
  """'pid 123 on host h (train, started 2024-01-01 12:00:00)'."""
  started = info.get('started')
  when = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started)) if started else '?'
  return (f'pid {info.get("pid", "?")} on host {info.get("host", "?")} '
          f'({info.get("mode", "?")}, started {when})')


class Lock:
  """WORKDIR/lock held by this process; use as a context manager or acquire / release."""

  def __init__(self, workdir, mode='train', warn=None):
    self.path = as_path(workdir) / LOCK_NAME
    self.mode = mode
    self._warn = warn or (lambda msg: print(f'warning: {msg}', file=sys.stderr, flush=True))
    self._token = uuid.uuid4().hex
    self._stop = threading.Event()
    self._thread = None
    self._started = None
    self.held = False

  def _info(self):
    now = time.time()
    return {'pid': os.getpid(), 'host': socket.gethostname(), 'boot_id': _boot_id(),
            'start_ticks': _start_ticks(os.getpid()), 'mode': self.mode,
            'command': ' '.join(sys.argv), 'started': now, 'heartbeat': now,
            'token': self._token}

  def _read(self):
    """The holder's dict; {} when the file is empty or unreadable JSON (a crash mid-write)."""
    try:
      info = json.loads(self.path.read_text() or '{}')
    except FileNotFoundError:
      return None
    except (ValueError, OSError):
      return {}
    return info if isinstance(info, dict) else {}

  def _create(self, info):
    """Creates the lock file; False when it exists. Atomic (O_EXCL) on a local path;
    check-then-write elsewhere (object stores have no exclusive create here)."""
    text = json.dumps(info)
    if is_local(self.path):
      try:
        fd = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        return False
      try:
        with os.fdopen(fd, 'w') as f:
          f.write(text)
      except OSError:
        self.path.unlink()
        raise
      return True
    if self.path.exists():
      return False
    self.path.write_text(text)
    return (self._read() or {}).get('token') == self._token

  def acquire(self):
    """Takes the lock, or raises WorkdirLocked naming the live holder."""
    unreadable = 0
    for _ in range(4):
      info = self._info()
      try:
        created = self._create(info)
      except OSError as e:
        if is_disk_full(e):
          raise WriteError(f'{self.path}: cannot create the lock file '
                           f'({describe_os_error(e)}); free some space') from None
        raise WorkdirError(f'{self.path}: cannot create the lock file '
                           f'({describe_os_error(e)})') from None
      if created:
        self._started = info['started']
        self.held = True
        self._thread = threading.Thread(target=self._beat, daemon=True, name='workdir-lock')
        self._thread.start()
        return self
      holder = self._read()
      if holder is None:  # Released between our two looks: try again.
        continue
      if not holder and not unreadable:  # Maybe being written right now: look again.
        unreadable += 1
        time.sleep(1.0)
        continue
      if holder and not holder_is_gone(holder):
        raise WorkdirLocked(f'{self.path.parent}: in use by {describe_holder(holder)}; '
                            f'if that process is gone, delete {self.path}')
      if self._read() != holder:  # Another run took it over first: look again.
        continue
      self._warn(f'{self.path}: taking over a stale lock'
                 + (f' of {describe_holder(holder)}' if holder else ' (unreadable)'))
      with contextlib.suppress(FileNotFoundError):
        self.path.unlink()
    raise WorkdirLocked(f'{self.path}: could not take the lock (it keeps changing)')

  def _beat(self):
    while not self._stop.wait(HEARTBEAT_SECONDS):
      self.refresh()

  def refresh(self):
    """Rewrites the heartbeat, while the lock is still ours (never raises: a full disk
    must not stop the run here)."""
    if (self._read() or {}).get('token') != self._token:
      return
    info = self._info()
    info['started'] = self._started
    try:
      if is_local(self.path):
        tmp = self.path.parent / f'{LOCK_NAME}.{self._token}.tmp'
        tmp.write_text(json.dumps(info))
        os.replace(os.fspath(tmp), os.fspath(self.path))
      else:
        self.path.write_text(json.dumps(info))
    except OSError:
      pass

  def release(self):
    if not self.held:
      return
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    self.held = False
    with contextlib.suppress(OSError):
      if (self._read() or {}).get('token') == self._token:
        self.path.unlink()

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def lock(workdir, mode, enabled=True, warn=None):
  """Lock(workdir, mode) when enabled (process 0 of a run), else a no-op context."""
  return Lock(workdir, mode, warn) if enabled else contextlib.nullcontext()
