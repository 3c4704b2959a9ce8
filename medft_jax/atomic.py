"""Files written whole or not at all: a temporary file, fsync, then a rename.

Run records, failure notes and exported state_dicts are written this way,
so a reader (or a killed writer's next run) never sees part of a file.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import shutil
import socket
import stat
import uuid
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()
"""What ``open()`` would have given a new file: the process's umask applies."""
DIR_MODE = 0o777 & ~_umask()
"""What ``mkdir()`` would have given a new folder (``mkdtemp`` gives 0700, whatever the umask)."""


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 hex digest of a file, read in 4 MiB blocks (bounded memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_bytes(path: str | os.PathLike[str], data: bytes, *, like_existing: bool = False) -> Path:
    """Writes ``data`` at ``path`` atomically; returns the path.

    The bytes go to a temporary file in the same folder (same filesystem,
    so the rename is atomic), are flushed and fsynced, then ``os.replace``-d
    over ``path``: a reader sees the old file whole or the new one whole.
    Any failure removes the temporary file (a kill leaves it, named for its process, and
    the next write of ``path`` on this host removes it), and an OSError of the write
    itself (a full disk) is raised naming ``path``. The file gets the mode
    ``open()`` would give it, not ``mkstemp``'s private 0600, so a shared
    group can read it; with ``like_existing``, a file already at ``path`` gives its mode
    (and owner, where this process may set it) instead, as the shell's ``>`` keeps them.
    """
    path = Path(path)
    tmp = stage_bytes(path, data)
    if like_existing:
        _take_mode_and_owner(tmp, path)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _take_mode_and_owner(tmp: Path, existing: Path) -> None:
    """Gives ``tmp`` the mode and owner of the file at ``existing`` (nothing there: none)."""
    try:
        st = os.stat(existing)
    except OSError:
        return
    try:
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        with contextlib.suppress(OSError):  # only root may give a file away
            if hasattr(os, "chown") and (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
                os.chown(tmp, st.st_uid, st.st_gid)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def stage_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Writes ``data`` whole (fsynced, ``open()``'s mode) to a temporary sibling of
    ``path`` and returns it, for the caller to rename over ``path`` (:func:`write_bytes`),
    or, for files that go together, to rename each once all are written. A failure removes
    the temporary; an OSError of the write (a full disk) is raised naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(path)  # a killed writer's temporary (an export killed mid-write)
    tmp = temporary_sibling(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a failed write names no file
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    return tmp


def replace_all(staged: list[tuple[Path, Path]], before: list[Path] = ()) -> None:
    """Renames each staged ``(temporary, final)`` over its final name, after removing the
    ``before`` paths: files that belong together (an export's ``.pth`` and its
    ``.safetensors`` twin), each replaced atomically. A kill between two renames leaves a
    file of the new set beside none of the old (remove the old ones that could be
    mistaken for the new set's in ``before``)."""
    for path in before:
        path.unlink(missing_ok=True)
    for tmp, final in staged:
        os.replace(tmp, final)
    for folder in dict.fromkeys(final.parent for _, final in staged):
        _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    """Makes the rename itself durable (best effort: not every OS allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_sibling(final: Path) -> Path:
    """A unique hidden name beside ``final`` for a folder written whole, then renamed.

    The name says which process on which host writes it, so that
    :func:`remove_abandoned` can tell a killed writer's leftover from a
    folder another process is still writing (two sweeps filling one cache).
    """
    final = Path(final)
    owner = f"{os.getpid()}@{socket.gethostname()}"
    return final.parent / f".{final.name}.tmp-{owner}-{uuid.uuid4().hex[:8]}"


_TEMPORARY = re.compile(r"\.tmp-(\d+)(?:@(.*))?-[0-9a-f]{8}$")


def remove_abandoned(final: Path, *, siblings: bool = False) -> None:
    """Removes the temporaries of ``final`` whose writer died on this host.

    Those of live processes, and of other hosts (a shared filesystem), stay.
    Names without a host (``<name>.tmp-<pid>-<hex>``, written before) count
    as this host's. ``siblings``: those of every name in ``final``'s folder
    (a cache of many entries, where a killed writer's entry may never be
    written again).
    """
    final = Path(final)
    if not final.parent.is_dir():
        return
    here = socket.gethostname()
    name = "*" if siblings else glob.escape(final.name)
    for path in [*final.parent.glob(f".{name}.tmp-*"), *final.parent.glob(f"{name}.tmp-*")]:
        found = _TEMPORARY.search(path.name)
        if found is None or found.group(2) not in (None, here) or _alive(int(found.group(1))):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:  # a file written whole, then renamed (write_bytes)
            with contextlib.suppress(OSError):
                path.unlink()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
