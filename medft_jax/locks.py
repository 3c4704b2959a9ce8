"""One process per run: an exclusive lock file in the run's folder.

Two processes training the same run (two identical ``experiments.run``
into one ``--out``, two unsharded sweeps at once) would write the same
checkpoints and crash each other with orbax errors. :func:`run_lock` takes
an exclusive, non-blocking ``fcntl.flock`` on ``<run_dir>/.lock`` for the
whole run; the second process gets :class:`RunLocked` at once and can go on
to its next run. The operating system drops a flock when its holder dies,
so a ``kill -9`` never leaves a stale lock: the file may remain, but it is
only locked while a live process holds it open. The holder writes its pid
and host name into the file so that the refusal can say who runs it.

The file is removed when the lock is released. Because a process may have
opened the file just before it was removed (and then locks a file no
longer in the folder), every acquisition checks that the file it locked
is still the one at ``<run_dir>/.lock`` and tries again if not.

Limitations:

- Multi-host JAX (``jax.process_count() > 1``): every process of the job
  runs the same run, so only process 0 takes the lock and it broadcasts
  the outcome; the job's processes therefore all run the run or all raise
  :class:`RunLocked`. This is a collective: every process must reach
  :func:`run_lock` for the same run (they do: they run the same grid in
  the same order). The other processes' :class:`RunLocked` names the
  holder's pid but not its host.
- The lock excludes processes across hosts only where the shared
  filesystem supports ``flock`` between clients (NFS on Linux emulates it
  with POSIX locks; Lustre needs the ``flock`` mount option, and on a
  ``localflock`` mount it only excludes processes of one host).
- Fork: a child forked while the lock is held shares it (flock belongs to
  the open file); it is released when both have exited or closed it.
- Windows has no ``fcntl``: runs there are not locked, with one warning.
- A filesystem that refuses ``flock`` outright (an NFSv3 client without its
  lock daemon: "No locks available") is refused with one line, before any
  work; ``MEDFT_JAX_NO_LOCKS=1`` runs unlocked there, as on Windows, for
  whoever makes sure no two processes run one run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from medft_jax.errors import UserError, env_switch, json_loads

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

NO_LOCKS_ENV = "MEDFT_JAX_NO_LOCKS"
"""Set to ``1``: take no locks (a filesystem without ``flock``; the user keeps runs apart)."""
UNSUPPORTED = frozenset(
    getattr(errno, n) for n in ("ENOLCK", "EOPNOTSUPP", "ENOTSUP", "ENOSYS") if hasattr(errno, n)
)
"""``flock``'s errors that mean the filesystem cannot lock at all (not: someone holds it)."""

LOCK_NAME = ".lock"
"""The lock file in a run's folder; :meth:`RunLock.clear_folder` keeps it."""

_ATTEMPTS = 50
"""Tries to lock a file that is still the folder's lock file (each retry means another
process removed or replaced it in between: a finished holder)."""


class RunLocked(RuntimeError):
    """Another live process holds the run's lock (it is running this run now).

    Not a :class:`~medft_jax.errors.UserError`: the input is fine, the run
    is simply busy. ``str(e)`` is ``"running in process N"``, plus
    ``" on host H"`` when the holder is on another host (``"running in
    another process"`` if the holder's pid could not be read); the caller's
    line names the run (``e.run_dir``). ``e.pid`` and ``e.host`` are the
    holder's (None when unknown).
    """

    def __init__(self, run_dir: str | os.PathLike[str], pid: int | None, host: str | None):
        self.run_dir = Path(run_dir)
        self.pid = pid
        self.host = host
        who = "another process" if pid is None else f"process {pid}"
        where = f" on host {host}" if host and host != _host() else ""
        super().__init__(f"running in {who}{where}")


class RunLock:
    """A held run lock: :func:`run_lock` yields it."""

    def __init__(self, run_dir: Path, fd: int | None, created_dir: bool, clears: bool = True):
        self.run_dir = run_dir
        self.path = run_dir / LOCK_NAME
        self._fd = fd
        self._created_dir = created_dir
        self._clears = clears  # False on the processes > 0 of a multi-host job

    def clear_folder(self, keep: tuple[str, ...] = ()) -> None:
        """Deletes everything in the run folder but the lock file and ``keep`` (``--force``
        starts afresh; it keeps the previous result aside until the new one is written).

        Removing the whole folder would remove the lock file too, and a
        third process could then lock a new one while this one runs. Under
        multi-host JAX every process calls it: process 0 deletes, the others
        wait for it.
        """
        if self._clears:
            for entry in self.run_dir.iterdir():
                if entry.name == LOCK_NAME or entry.name in keep:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        if _process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"medft_jax.locks.clear_folder {self.run_dir}")

    def release(self) -> None:
        """Removes the lock file and drops the lock (the removal first: see the module note)."""
        if self._fd is None:
            return
        # A folder turned read-only (or gone) under the run keeps the file; the lock drops
        # with the close all the same, and the error that stopped the run, naming the
        # write that failed, is the one to say (this one replaced it, naming .lock).
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)  # drops the flock
        self._fd = None
        if self._created_dir:  # a run that failed before writing anything leaves no folder
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str], settings: str | None = None) -> Iterator[RunLock]:
    """Holds ``run_dir``'s lock for the ``with`` block; raises :class:`RunLocked` if taken.

    Creates ``run_dir`` when missing. Under multi-host JAX only process 0
    locks, and every process learns the outcome (see the module note).
    ``settings`` (the run's :func:`~medft_jax.results.settings_hash`) is written in
    the lock file: :func:`held_settings` reads it back.
    """
    run_dir = Path(run_dir)
    lock = (
        _acquire_for_all_processes(run_dir, settings)
        if _process_count() > 1
        else acquire(run_dir, settings)
    )
    try:
        yield lock
    finally:
        lock.release()


@contextlib.contextmanager
def waiting_lock(
    path: str | os.PathLike[str], waiting: Callable[[], None] | None = None
) -> Iterator[None]:
    """Holds an exclusive lock on the file ``path`` for the ``with`` block, waiting for it.

    For work that every process needs done once, where the others may
    simply wait (porting the ImageNet weights into the shared cache): each
    re-checks, inside the block, whether the work is already done. The file
    stays (removing it would let a third process lock a new one meanwhile);
    it is empty. Without ``fcntl`` (Windows) nothing is locked. ``waiting`` is
    called once, if another process holds the lock, before waiting for it: a
    prepare waiting hours for another one's said nothing and looked hung.
    """
    if not _locking():
        yield
        return
    path = Path(path)
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                if waiting is not None:
                    waiting()
                    waiting = None
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            os.close(fd)
            _refuse_unsupported(e, path)
            raise
        if _same_file(fd, path):
            break
        # The holder removed the file it held (a failed build: :func:`build_lock`): this
        # lock is of no file now, and a newcomer may hold the new one. Lock that instead
        # (both built at once, and the second was told its folder "already exists").
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)  # drops the flock


def held_elsewhere(path: str | os.PathLike[str]) -> bool:
    """Whether another process holds :func:`waiting_lock`'s lock on ``path`` now.

    Probed without waiting and let go at once: a process waiting for the lock meanwhile
    waits a moment longer, never fails. For telling the user what is happening (a
    prepare under way), never for deciding who does the work.
    """
    if not _locking():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file: never held
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        return e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    finally:
        os.close(fd)
    return False


def waiting_note(what: str) -> Callable[[], None]:
    """A ``waiting`` for :func:`waiting_lock` saying ``note: another process is <what>;
    waiting for it`` on stderr: a run waiting minutes for another's cache looked hung."""

    def say() -> None:
        print(f"note: another process is {what}; waiting for it", file=sys.stderr, flush=True)

    return say


@contextlib.contextmanager
def build_lock(path: str | os.PathLike[str], what: str | None = None) -> Iterator[None]:
    """:func:`waiting_lock` for building something once; a failed build leaves nothing.

    ``what`` (``building the cache <folder>``): said once if another process holds the
    lock (:func:`waiting_note`).

    The folders made for the lock file, and the file itself, are removed when
    the block raises in the holder (a dataset refused for a corrupt image
    writes nothing), so a process that waited then locks a removed file and
    builds too: at worst the same work twice, never a half-built result. A
    waiter that stops while waiting leaves the holder's file alone.
    """
    path = Path(path)
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    waiting = None if what is None else waiting_note(what)
    with waiting_lock(path, waiting):  # a waiter interrupted here removes nothing: not its lock
        try:
            yield
        except BaseException:
            with contextlib.suppress(OSError):
                path.unlink()  # while still held, as RunLock.release does
            for folder in made:  # deepest first; only if empty
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise


def acquire(run_dir: str | os.PathLike[str], settings: str | None = None) -> RunLock:
    """Takes ``run_dir``'s lock now or raises :class:`RunLocked`; release with ``release()``.

    ``settings``: written in the lock file beside the holder (see :func:`held_settings`).
    """
    run_dir = Path(run_dir)
    if not _locking():
        return RunLock(run_dir, None, created_dir=False)
    path = run_dir / LOCK_NAME
    for _ in range(_ATTEMPTS):
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            run_dir.mkdir()
            created = True
        except FileExistsError:
            created = False
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder was removed in between (a holder finishing)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                if created:  # nothing of this run is left behind
                    with contextlib.suppress(OSError):
                        path.unlink()
                        run_dir.rmdir()
                _refuse_unsupported(e, path)
                raise
            raise RunLocked(run_dir, *_holder(path)) from None
        if not _same_file(fd, path):  # locked a file its holder removed on release
            os.close(fd)
            continue
        _write_holder(fd, settings)
        return RunLock(run_dir, fd, created_dir=created)
    raise RuntimeError(f"{path}: could not lock it in {_ATTEMPTS} tries (replaced each time)")


RUNNING_HERE = "here"
""":func:`holder_of`: a live process on this host holds the run's lock."""


def held_settings(run_dir: str | os.PathLike[str]) -> str | None:
    """The settings hash the holder of ``run_dir``'s lock wrote in it (None: no lock file,
    unreadable, or written without one).

    A run folder's name hashes the data's and weights' fingerprints too, which a sweep's
    dry run does not compute: the settings in the lock tell it which grid cell a held
    folder is running (an edited grid's run of the same name is another cell).
    """
    try:
        info = json_loads((Path(run_dir) / LOCK_NAME).read_text(encoding="utf-8"))
        settings = info.get("settings") if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None
    return settings if isinstance(settings, str) else None


def maybe_running(run_dir: str | os.PathLike[str]) -> bool:
    """Whether a process may be running ``run_dir`` now (:func:`holder_of` is not None)."""
    return holder_of(run_dir) is not None


def holder_of(run_dir: str | os.PathLike[str]) -> str | None:
    """Who may be running ``run_dir`` now, judged without locking: :data:`RUNNING_HERE`, the
    host its lock names (which cannot be checked from here), ``"?"`` for a lock file whose
    holder could not be read, or None: no process runs it.

    For notes about other runs' folders (a sibling's leftover checkpoints, a report's
    folders without a record), which must not call a run in progress a leftover:
    probing the ``flock`` would make that run's own start fail for the moment of the
    probe, so this reads the holder the lock file names. No lock file: stopped (a
    holder removes it on release). On this host: running while that pid is alive, is
    not this process, and started before the lock file was written (a container
    restarts with the pids it had: a killed run's pid can be another live process's).
    """
    path = Path(run_dir) / LOCK_NAME
    try:
        written = path.stat().st_mtime
        info = json_loads(path.read_text(encoding="utf-8"))
        pid, host = int(info["pid"]), str(info["host"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):  # being written, or a stranger's file
        return "?"
    if host != _host():
        return host
    if pid == os.getpid() or not _alive(pid):
        return None
    started = _process_start(pid)
    if started is not None and started > written + 1.0:  # a later process with its pid
        return None
    return RUNNING_HERE


def _alive(pid: int) -> bool:
    if sys.platform == "win32":  # os.kill(pid, 0) would end the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, another user's
        return True
    return True


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from Linux's /proc; None
    elsewhere or when it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rpartition(")")[2].split()[19])  # field 22: start time, clock ticks
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration, AttributeError):
        return None


def _acquire_for_all_processes(run_dir: Path, settings: str | None) -> RunLock:
    """Process 0 locks; the others learn whether it did (a collective of every process)."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    lock, failure, outcome = None, None, np.array([0, -1], np.int64)  # (0 ok 1 locked 2 error, pid)
    if jax.process_index() == 0:
        try:
            lock = acquire(run_dir, settings)
        except RunLocked as e:
            failure, outcome = e, np.array([1, -1 if e.pid is None else e.pid], np.int64)
        except Exception as e:  # every process must reach the broadcast, then process 0 raises
            failure, outcome = e, np.array([2, -1], np.int64)
    code, pid = (int(x) for x in multihost_utils.broadcast_one_to_all(outcome))
    if failure is not None:
        raise failure
    if code == 1:
        raise RunLocked(run_dir, None if pid < 0 else pid, None)
    if code == 2:
        raise RuntimeError(f"{run_dir}: process 0 could not take the run lock")
    return lock if lock is not None else RunLock(run_dir, None, created_dir=False, clears=False)


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is still the one at ``path`` (not removed or replaced)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _write_holder(fd: int, settings: str | None = None) -> None:
    holder: dict[str, Any] = {"pid": os.getpid(), "host": _host()}
    if settings is not None:
        holder["settings"] = settings
    text = json.dumps(holder) + "\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)


def _holder(path: Path, wait: float = 1.0) -> tuple[int | None, str | None]:
    """``(pid, host)`` written by the lock's holder (it writes them just after locking)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            info = json_loads(path.read_text(encoding="utf-8"))
            return int(info["pid"]), str(info["host"])
        except (OSError, ValueError, KeyError, TypeError):
            if time.monotonic() >= deadline:
                return None, None
            time.sleep(0.02)


def _host() -> str:
    return socket.gethostname()


def _process_count() -> int:
    jax = sys.modules.get("jax")  # a process that never imported jax is one process
    return 1 if jax is None else jax.process_count()


class LocksUnsupported(UserError):
    """The filesystem refuses file locks (not: someone holds the lock)."""


def _refuse_unsupported(e: OSError, path: Path) -> None:
    """One line for a filesystem that cannot lock (``e`` is re-raised by the caller if not)."""
    if e.errno in UNSUPPORTED:
        raise LocksUnsupported(
            f"{path}: this filesystem refuses file locks ({e.strerror}); put the folder on one "
            "that locks (on NFS, start the client's lock daemon), or set "
            f"{NO_LOCKS_ENV}=1 to run unlocked and never start two processes on one run"
        ) from None


_warned = False


def _locking() -> bool:
    """Whether to lock: not without ``fcntl`` nor under ``MEDFT_JAX_NO_LOCKS=1`` (one warning)."""
    unlocked = env_switch(NO_LOCKS_ENV)  # also checked as every command starts
    if fcntl is not None and not unlocked:
        return True
    global _warned
    if not _warned:
        _warned = True
        why = "this platform has no fcntl" if fcntl is None else f"{NO_LOCKS_ENV} is set"
        warnings.warn(
            f"{why}: runs are not locked, so do not start two processes on the same run",
            RuntimeWarning,
            stacklevel=4,
        )
    return False
