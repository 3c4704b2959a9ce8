"""Shared test setup: quiet JAX on CPU, and where ../shared/data lives."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Cache compiled (and assertion-rewritten) test modules even where the
# environment sets PYTHONDONTWRITEBYTECODE: rewriting every test module again
# costs each xdist worker about 7 s of its collection.
sys.dont_write_bytecode = False

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# TensorFlow (dataset preparation) and triton (which torchvision's import pulls in)
# each bundle LLVM, and triton's library loaded after TensorFlow's segfaults the
# process. Tests import torch on first use (tests/torch_ref.py), so a worker may
# prepare a dataset first: load triton now, before anything can import TensorFlow
# (0.6 s; importing torch and torchvision here would cost each worker 4-7 s).
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401


def pytest_configure(config):
    """One XLA compilation cache for the session: tests compile the same programs often.

    The controlling process makes it and puts it in the environment, so the
    xdist workers and every subprocess a test starts (sweep shards, the
    parallel workers, the command lines) share it: a program compiled once
    in the session is loaded, not compiled, everywhere else.
    """
    import tempfile

    from medft_jax.runtime import enable_compilation_cache

    if "MEDFT_TEST_XLA_CACHE" not in os.environ:  # the controller, or a run without xdist
        config.medft_cache_owned = tempfile.mkdtemp(prefix="medft-xla-cache-")
        os.environ["MEDFT_TEST_XLA_CACHE"] = config.medft_cache_owned
    os.environ["MEDFT_JAX_CACHE"] = os.environ["MEDFT_TEST_XLA_CACHE"]
    enable_compilation_cache()


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the groups
def pytest_collection_modifyitems(config, items):
    """The fast tests of a module that sets ``FAST_TESTS_GROUP`` share one xdist worker.

    The modules whose fast tests use torch set it: only one worker then pays
    torch's import (4-7 s), which keeps the fast tier's two workers under two
    minutes. Slow tests stay free to spread: in the full suite the parity
    tests need torch on every worker anyway, and one worker would be the tail.
    """
    for item in items:
        group = getattr(getattr(item, "module", None), "FAST_TESTS_GROUP", None)
        if group and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.xdist_group(group))


def pytest_unconfigure(config):
    owned = getattr(config, "medft_cache_owned", None)
    if owned:
        import shutil

        shutil.rmtree(owned, ignore_errors=True)


@pytest.fixture
def unchecked_saves(monkeypatch):
    """``save_model`` without its metadata check, for tests of storage (a full disk, a
    read-only folder, a swap) on small stand-in trees that are no arch's: the check is
    the loader's, tested where checkpoints are read."""
    from medft_jax.checkpoints import model

    monkeypatch.setattr(model, "_check_before_saving", lambda *a: None)
