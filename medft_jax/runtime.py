"""Process-level JAX settings the command lines share."""

from __future__ import annotations

import os
from pathlib import Path

import jax


def enable_compilation_cache(path: str | os.PathLike[str] | None = None) -> Path | None:
    """Keeps compiled XLA programs on disk, so the next run skips compiling them.

    Every run of a sweep compiles the same model init, eval step and, per
    strategy stage, the same train step; on a CPU that is tens of seconds
    each. Default folder: ``$MEDFT_JAX_CACHE/xla`` (``~/.cache/medft_jax/xla``);
    ``MEDFT_JAX_XLA_CACHE=0`` turns it off. Returns the folder, or None when off.
    """
    if os.environ.get("MEDFT_JAX_XLA_CACHE", "1") == "0":
        return None
    if path is None:
        base = Path(os.environ.get("MEDFT_JAX_CACHE", "~/.cache/medft_jax")).expanduser()
        path = base / "xla"
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path
