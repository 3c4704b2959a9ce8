"""Processes for tests of what a dead or live process left behind (locks, temporaries)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def dead_pid() -> int:
    """The pid of a process that has exited (its lock files and temporaries are leftovers):
    a child run to its end and reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def writers_temporaries(
    folder: Path, killed: str, live: str, live_pid: int | None = None
) -> tuple[Path, Path]:
    """Temporary paths, as :mod:`medft_jax.atomic` names them (``.<name>.tmp-<pid>@<host>-<hex>``),
    of a writer of ``killed`` that died on this host and of a live writer of ``live``
    (``live_pid``, default this process)."""
    host = socket.gethostname()
    pid = os.getpid() if live_pid is None else live_pid
    return (
        folder / f".{killed}.tmp-{dead_pid()}@{host}-0123abcd",
        folder / f".{live}.tmp-{pid}@{host}-89abcdef",
    )
