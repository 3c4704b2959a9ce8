"""Shared test setup: quiet JAX on CPU, and where ../shared/data lives."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config):
    """One XLA compilation cache for the session: tests compile the same programs often."""
    import tempfile

    from medft_jax.runtime import enable_compilation_cache

    enable_compilation_cache(tempfile.mkdtemp(prefix="medft-xla-cache-"))
