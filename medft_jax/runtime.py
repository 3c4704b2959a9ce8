"""Process-level JAX settings the command lines share."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax

from medft_jax.data.locations import user_cache_base
from medft_jax.errors import UserError, env_switch, set_process_index, writable_dir

_SET_UP = False


def set_up_process(distributed: bool = True) -> None:
    """Once per process: multi-host init (``MEDFT_DISTRIBUTED=1``, where
    ``distributed``), the CPU host settings (:func:`tune_cpu_host`) and the
    compilation cache (:func:`enable_compilation_cache`).

    ``experiments.predict`` passes ``distributed=False``: it runs on one host,
    and joining a pod's coordinator would wait for hosts that never come.
    """
    global _SET_UP
    if _SET_UP:
        return
    if distributed and env_switch("MEDFT_DISTRIBUTED"):  # BUILD.md: multi-host runs
        jax.distributed.initialize(**_process_layout())
        check_even_devices(jax.devices())
        set_process_index(jax.process_index())  # notes said once per job
    elif distributed:
        _refuse_layout_without_switch()
    tune_cpu_host()  # before the backend starts: its dispatch setting must precede it
    check_backend()
    enable_compilation_cache()
    _SET_UP = True


def check_backend() -> str:
    """JAX's default backend, started here: a ``JAX_PLATFORMS`` this machine cannot start
    (``cuda`` without a GPU, a misspelt ``bogus``) is one line naming the variable, where it
    was JAX's traceback (a bare AssertionError for ``cuda``) from the first computation."""
    try:
        return jax.default_backend()
    except (RuntimeError, AssertionError, ValueError) as e:
        setting = os.environ.get("JAX_PLATFORMS")
        if not setting:
            raise
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"JAX_PLATFORMS={setting}: JAX cannot start that backend on this machine "
            f"({why}); expected one it has (cpu, or cuda/tpu with their jaxlib and a device), "
            "or leave JAX_PLATFORMS unset"
        ) from None


def check_even_devices(devices: Sequence[Any]) -> None:
    """Refuses a job whose processes hold different numbers of devices (a GPU hidden by
    ``CUDA_VISIBLE_DEVICES`` on one host): the mesh splits every batch evenly over
    processes and failed in a 28-line traceback ("cannot reshape array of size 3")."""
    counts = Counter(d.process_index for d in devices)
    if len(set(counts.values())) > 1:
        held = ", ".join(f"process {p}: {n}" for p, n in sorted(counts.items()))
        raise UserError(
            f"the job's processes hold different numbers of devices ({held}); expected the "
            "same on every host (is a device hidden on one, CUDA_VISIBLE_DEVICES?)"
        )


LAYOUT_ENV = {"num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}
"""What a cluster without auto-detection (not Cloud TPU, not SLURM) sets beside
``JAX_COORDINATOR_ADDRESS``, which JAX reads itself; these two it does not."""


def _refuse_layout_without_switch() -> None:
    """Refuses a process told it is one of several (``JAX_NUM_PROCESSES`` above 1) while
    ``MEDFT_DISTRIBUTED`` is off: it trained alone and wrote the record, while the job's
    other processes waited for it until their coordinator gave up, minutes later."""
    layout = _process_layout()
    if layout.get("num_processes", 1) > 1:
        raise UserError(
            f"JAX_NUM_PROCESSES={layout['num_processes']} is set but MEDFT_DISTRIBUTED is not "
            "1: this process would train alone while the job's others wait for it; set "
            "MEDFT_DISTRIBUTED=1 on every process, or unset JAX_NUM_PROCESSES and "
            "JAX_PROCESS_ID"
        )


def _process_layout() -> dict[str, int]:
    """``jax.distributed.initialize``'s ``num_processes``/``process_id`` from the environment."""
    layout = {}
    for arg, env in LAYOUT_ENV.items():
        text = os.environ.get(env, "").strip()
        if not text:
            continue
        try:
            layout[arg] = int(text)
        except ValueError:
            raise UserError(f"{env}={text!r}: expected an integer") from None
    if "process_id" in layout and "num_processes" in layout:
        if not 0 <= layout["process_id"] < layout["num_processes"]:
            raise UserError(
                f"JAX_PROCESS_ID={layout['process_id']} is outside 0..JAX_NUM_PROCESSES-1 "
                f"({layout['num_processes'] - 1})"
            )
    elif layout:
        have = [LAYOUT_ENV[arg] for arg in layout]
        lack = [env for arg, env in LAYOUT_ENV.items() if arg not in layout]
        raise UserError(f"{', '.join(have)} set without {', '.join(lack)}: set both")
    return layout


def process_0_says(value: int) -> int:
    """Process 0's ``value`` (an int32), on every process of a multi-host job (``value`` in
    one process).

    For a decision each process reads from the shared filesystem (is this run
    done? did it fail before?): two hosts' views of a folder may differ for a
    moment (NFS caches file attributes), and processes that decide apart wait
    at the next collective forever. A collective itself: every process calls it
    at the same point.
    """
    if not -(2**31) <= value < 2**31:  # the broadcast is int32 without jax_enable_x64
        raise ValueError(f"process_0_says: {value} does not fit in int32")
    if jax.process_count() == 1:
        return value
    import numpy as np
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


def every_process(ok: bool) -> bool:
    """Whether ``ok`` holds on every process of a multi-host job (``ok`` in one process).

    For what one host may find and another not (a dataset on a stale mount):
    a process that went on alone would pair its next collective with another
    run's on the others and wait forever. A collective itself.
    """
    if jax.process_count() == 1:
        return ok
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.min(multihost_utils.process_allgather(np.int32(ok))))


def check_shared_folder(folder: str | os.PathLike[str], flag: str = "--out") -> None:
    """Refuses, before any work, a multi-host job whose ``folder`` is not one folder for
    every process (the same path on node-local disks): each host writes its checkpoint
    shards there, and the first save waited forever for shards process 0 never sees.

    Process 0 writes a file of a random name there; every process must read it back. A
    collective itself: every process calls it at the same point.
    """
    if jax.process_count() == 1:
        return
    import secrets
    import time

    from jax.experimental import multihost_utils

    token = process_0_says(secrets.randbelow(2**31) if jax.process_index() == 0 else 0)
    probe = Path(folder) / f".medft-shared-{token}"
    if jax.process_index() == 0:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text(str(token))
    multihost_utils.sync_global_devices(f"medft-shared-{token}-written")
    seen = False
    for wait in (0.0, 0.5, 1.0, 2.0):  # a network filesystem's lookup may lag a moment
        time.sleep(wait)
        try:
            seen = probe.read_text() == str(token)
        except OSError:
            seen = False
        if seen:
            break
    everywhere = every_process(seen)
    multihost_utils.sync_global_devices(f"medft-shared-{token}-read")
    if jax.process_index() == 0:
        probe.unlink(missing_ok=True)
    if everywhere:
        return
    who = (
        f"process {jax.process_index()} does not see the file process 0 wrote there"
        if not seen
        else "another process does not see the file process 0 wrote there (its own error "
        "line says so)"
    )
    raise UserError(
        f"{flag} {folder}: not one folder for every process of this job: {who}; give a "
        "folder on a filesystem every host shares"
    )


def enable_compilation_cache(path: str | os.PathLike[str] | None = None) -> Path | None:
    """Keeps compiled XLA programs on disk, so the next run skips compiling them.

    Every run of a sweep compiles the same model init, eval step and, per
    strategy stage, the same train step; on a CPU that is tens of seconds
    each. Default folder: ``$MEDFT_JAX_CACHE/xla`` (``~/.cache/medft_jax/xla``);
    ``MEDFT_JAX_XLA_CACHE=0`` turns it off. Returns the folder, or None when off.
    A ``MEDFT_JAX_CACHE`` that is relative, a file or cannot be written is refused in one
    line; an unwritable default folder (or one under a ``HOME`` of ``/`` or that does not
    exist) only turns the cache off, with a warning.
    """
    if not env_switch("MEDFT_JAX_XLA_CACHE"):
        return None
    named = "the compilation cache folder"
    try:
        if path is None:
            named = "MEDFT_JAX_CACHE" if os.environ.get("MEDFT_JAX_CACHE") else ""
            path = user_cache_base() / "xla"
        path = Path(path)
        writable_dir(path, named or "MEDFT_JAX_CACHE (default ~/.cache/medft_jax)")
    except UserError as e:
        if named:  # the user chose this folder: say what is wrong with it
            raise
        # The default location is only an optimisation: run without it.
        print(f"warning: {e}; compiled programs are not cached", file=sys.stderr)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def tune_cpu_host() -> bool:
    """Runs CPU steps on the calling thread and keeps freed host memory for reuse.

    XLA's CPU client allocates every execution's temporary buffer (hundreds of
    MB for a training step) with ``posix_memalign`` and frees it at the end.
    By default glibc serves an allocation that large with a fresh ``mmap``,
    and frees it with ``munmap``, so each step first-touches every page
    again: about 490K minor page faults, 1.4 s of kernel time, in a
    DenseNet-121 224 px batch-16 step on 2 cores (benchmarks/RESULTS.md,
    "Fourth pass"). Two settings stop that, and each is useless without the
    other:

    - ``jax_cpu_enable_async_dispatch=False``: single-device CPU computations
      run on the calling thread, whose malloc arena is the main one. An
      asynchronous execution allocates from a worker thread's arena, which
      glibc cannot grow past 64 MB and so always maps afresh.
    - ``mallopt(M_MMAP_MAX, 0)`` and ``mallopt(M_TRIM_THRESHOLD, -1)`` (both
      documented in mallopt(3)): the main arena serves large blocks from its
      heap and never gives freed memory back, so the next step reuses pages
      already mapped. The process's resident size stays at its peak, which a
      training loop reaches every step anyway.

    The dispatch setting is always made (it only concerns the CPU client) and
    must precede that client's creation, so call this before any JAX
    computation (:func:`set_up_process` does). The allocator
    part is made only when JAX's default backend is the CPU, and needs glibc.
    ``MEDFT_JAX_TUNE_CPU_HOST=0`` turns both off. Returns whether the
    allocator was tuned.
    """
    if not env_switch("MEDFT_JAX_TUNE_CPU_HOST"):
        return False
    # Only single-device CPU computations are affected: a GPU or TPU run's
    # steps, and sharded ones, keep their asynchronous dispatch.
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    if check_backend() != "cpu":
        return False
    return keep_freed_host_memory()


def keep_freed_host_memory() -> bool:
    """glibc only: large blocks from the heap, never trimmed (see :func:`tune_cpu_host`)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success.
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, -1) == 1
