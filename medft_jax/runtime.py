"""Process-level JAX settings the command lines share."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jax

from medft_jax.errors import UserError, writable_dir


def enable_compilation_cache(path: str | os.PathLike[str] | None = None) -> Path | None:
    """Keeps compiled XLA programs on disk, so the next run skips compiling them.

    Every run of a sweep compiles the same model init, eval step and, per
    strategy stage, the same train step; on a CPU that is tens of seconds
    each. Default folder: ``$MEDFT_JAX_CACHE/xla`` (``~/.cache/medft_jax/xla``);
    ``MEDFT_JAX_XLA_CACHE=0`` turns it off. Returns the folder, or None when off.
    A ``MEDFT_JAX_CACHE`` that is a file or cannot be written is refused in one
    line; an unwritable default folder only turns the cache off, with a warning.
    """
    if os.environ.get("MEDFT_JAX_XLA_CACHE", "1") == "0":
        return None
    named = "the compilation cache folder"
    if path is None:
        named = "MEDFT_JAX_CACHE" if "MEDFT_JAX_CACHE" in os.environ else ""
        base = Path(os.environ.get("MEDFT_JAX_CACHE", "~/.cache/medft_jax")).expanduser()
        path = base / "xla"
    path = Path(path)
    try:
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
