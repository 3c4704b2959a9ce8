"""Where prepared data lives: the data directory and each variant's cache directory.

``data_dir`` defaults to TFDS's own (``$TFDS_DATA_DIR`` or
``~/tensorflow_datasets``) so prepared ArrayRecord files and our caches sit
together. A cache directory name spells out everything that changes its
bytes (resize, crop, split seed, label policy), so two variants never share
one.
"""

from __future__ import annotations

import os
from pathlib import Path

from medft_jax.errors import UserError, utf8_name

CACHE_ROOT = "medft_cache"


CACHE_VARIABLE = "MEDFT_JAX_CACHE"
"""The environment variable that moves :func:`user_cache_base`."""


def user_cache_base() -> Path:
    """``$MEDFT_JAX_CACHE``, else ``~/.cache/medft_jax``: the user's own small files (compiled
    programs, the checks of read-only shared caches, ported ImageNet weights), never data a
    run's numbers come from.

    An empty ``MEDFT_JAX_CACHE`` is unset, as the toolkit's switches read it; a relative one
    is refused (it would mean another folder in every working directory), and so is a
    default whose home is ``''``, ``/`` or a folder that does not exist (``HOME=`` put the
    cache at ``/.cache``; a mistyped ``HOME`` made a top-level folder): one line each.
    """
    value = os.environ.get(CACHE_VARIABLE, "")
    if value:
        if not utf8_name(value):  # the compilation cache failed on it in model setup
            raise UserError(f"{CACHE_VARIABLE} {value!a}: not UTF-8 text; expected a path that is")
        path = Path(value).expanduser()
        if not path.is_absolute():
            raise UserError(f"{CACHE_VARIABLE} {value!r}: expected an absolute path")
        return path
    return _under_home(".cache/medft_jax", CACHE_VARIABLE, "cache")


def _under_home(relative: str, variable: str, what: str) -> Path:
    """``~/<relative>``, refused in one line naming HOME when the home is no folder to hold
    it: empty, relative (``HOME=.``: a folder in every working directory), the filesystem
    root (``/``, ``/.``: a top-level folder from a container's ``-u uid``) or missing."""
    home = os.path.expanduser("~")
    given = os.environ.get("HOME", home)
    why = None
    if given == "" or home in ("", "~"):
        why = "is empty"
    elif not os.path.isabs(home):
        why = "is not an absolute path"
    elif os.path.realpath(home) == os.path.realpath("/"):
        why = "is the filesystem root"
    elif not os.path.isdir(home):
        why = "is not an existing folder"
    if why is not None:
        raise UserError(
            f"HOME {given!r} {why}, so the default {what} ~/{relative} cannot be used; set "
            f"{variable} to an absolute folder"
        )
    return Path(home) / relative


def default_data_dir() -> Path:
    """``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets`` (TFDS's default); an empty
    ``TFDS_DATA_DIR`` is unset (it meant the working directory), and the default's home is
    checked as :func:`user_cache_base`'s."""
    value = os.environ.get("TFDS_DATA_DIR", "")
    if value:
        return Path(value).expanduser()
    return _under_home("tensorflow_datasets", "TFDS_DATA_DIR (or give --data-dir)", "data dir")


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    return default_data_dir() if data_dir is None else Path(data_dir).expanduser()


def variant_name(resize_size: int | None, crop_size: int | None, **extra: object) -> str:
    """E.g. ``r256_c224_s0`` or ``native``; extra options appended as ``<key><value>``.

    Only letters, digits and ``_`` (a valid TFDS config name).
    """
    parts = ["native"] if crop_size is None else [f"r{resize_size}", f"c{crop_size}"]
    parts += [f"{k}{v}" for k, v in extra.items() if v is not None]
    return "_".join(parts)


def cache_dir(data_dir: Path, dataset: str, variant: str) -> Path:
    """``<data_dir>/medft_cache/<dataset>/<variant>`` (``/`` in names becomes ``-``)."""
    return Path(data_dir) / CACHE_ROOT / dataset.replace("/", "-").replace("@", "-") / variant


NOT_PREPARED = "not prepared yet"
"""Why a cache's content is not known: it was not built yet (a dry run's check of the user's
data, :func:`medft_jax.data.local.local_state`)."""
