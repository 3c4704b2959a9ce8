"""Where and with what a run ran: package versions, devices, git revision, host."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

PACKAGES = (
    "medft-jax",  # an installed wheel's record has no git revision: its version says which
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "grain",
    "numpy",
    "scikit-learn",
    "tensorflow-datasets",
)
"""Distributions whose versions a record keeps (``None`` when not installed)."""
_ALTERNATIVE_NAMES = {"grain": ("grain-nightly",)}


def environment_info() -> dict[str, Any]:
    """Where and with what a run ran: versions, devices, processes, git revision, host.

    Enough to tell two records' conditions apart later (a jax upgrade, a
    different GPU, uncommitted code). Calls ``jax.devices()``, so it
    initialises the backend if nothing has yet.
    """
    import jax

    devices = jax.devices()
    return {
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "platform": platform.platform(),
        "backend": devices[0].platform if devices else None,
        "device_kind": devices[0].device_kind if devices else None,
        "device_count": len(devices),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        # On a CPU the sums of BatchNorm's batch statistics split over the threads XLA may
        # use: one seed gives other numbers on 1 core than on 2 (BUILD.md, "Determinism").
        "cpu_threads": cpu_threads(),
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "hostname": socket.gethostname(),
        **git_info(),
    }


NUMERICS_PACKAGES = ("jax", "jaxlib", "flax", "optax")
"""The packages whose version can change a run's numbers (compiled kernels, optimizer maths)."""


def numerics_environment() -> dict[str, Any]:
    """What of :func:`environment_info` can change a run's numbers from one step to the next:
    the device (``backend``, ``device_kind``, ``device_count``, ``process_count``), the CPU
    threads on a CPU backend and ``XLA_FLAGS`` (BUILD.md, "Determinism") and the versions of
    :data:`NUMERICS_PACKAGES`. A run resumed where any of them differs mixes two machines'
    numbers (:class:`medft_jax.fit.Progress` keeps one entry per such attempt). Flat, its
    values JSON scalars, so that two compare as they were saved."""
    import jax

    devices = jax.devices()
    backend = devices[0].platform if devices else None
    return {
        "backend": backend,
        "device_kind": devices[0].device_kind if devices else None,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        # A GPU/TPU run's numbers do not depend on the host's CPUs (a preempted SLURM job
        # resumed on a node with another allocation is the same environment).
        "cpu_threads": cpu_threads() if backend == "cpu" else None,
        "xla_flags": os.environ.get("XLA_FLAGS"),
        **{name: _version(name) for name in NUMERICS_PACKAGES},
    }


def environment_changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``["cpu_threads 2 -> 1", ...]``: the fields of two :func:`numerics_environment` that
    differ (a field one lacks counts as None), in ``now``'s order."""
    keys = [*now, *(k for k in before if k not in now)]
    return [f"{k} {before.get(k)} -> {now.get(k)}" for k in keys if before.get(k) != now.get(k)]


def cpu_threads() -> int:
    """The CPUs this process may run on (its affinity: ``taskset``, a SLURM allocation,
    a container's cpuset), which XLA's CPU thread pool is sized by."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity
        return os.cpu_count() or 1


def machine_line() -> str:
    """``# <date> <machine>, <cores> cores; jax <v> (jaxlib <v>) on <n>x <device>``: the
    first line of a benchmark's output, so that its numbers say where they were taken."""
    import os
    import time

    import jax

    devices = jax.devices()
    return (
        f"# {time.strftime('%Y-%m-%d')} {platform.machine()}, {os.cpu_count()} cores; jax "
        f"{_version('jax')} (jaxlib {_version('jaxlib')}) on {len(devices)}x "
        f"{devices[0].device_kind}"
    )


def _version(dist: str) -> str | None:
    for name in (dist, *_ALTERNATIVE_NAMES.get(dist, ())):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def git_info(package_dir: Path | None = None) -> dict[str, Any]:
    """``git_revision`` (HEAD) and ``git_dirty`` of the checkout this package runs from.

    Both None when the package is not in a git checkout (an installed
    wheel), when git is missing, or when the enclosing repository is not
    this project's (a virtual environment inside some other repository).
    """
    pkg = (package_dir or Path(__file__).resolve().parent).resolve()
    top = _git(pkg, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() / pkg.name != pkg:
        return {"git_revision": None, "git_dirty": None}
    status = _git(pkg, "status", "--porcelain", "--untracked-files=no")
    return {
        "git_revision": _git(pkg, "rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
    }


def _git(cwd: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()
