"""Datasets by name: ``load(name, ...)`` and ``prepare(name, ...)`` for every source.

Names: ``demo`` (default), the eight paper tasks (:data:`TASK_NAMES`),
``medmnist/<flag>[@size]``, ``folder`` and ``csv``. An unknown name lists
the known ones.

Sizes: ``crop_size`` is the side of the square images the model sees and
``resize_size`` the shorter side before the centre crop (torchvision's
Resize + CenterCrop). File-based datasets default to 256/224; ``demo`` and
MedMNIST keep their native size when ``crop_size`` is None.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medft_jax.data.dataset import Dataset
from medft_jax.data.demo import load_demo
from medft_jax.data.errors import BatchTooLarge, DataError
from medft_jax.data.local import KINDS, LocalState, load_local, local_state
from medft_jax.data.locations import resolve_data_dir
from medft_jax.data.medmnist import load_medmnist
from medft_jax.data.options import split_option_error, unknown_option
from medft_jax.data.tasks import TASK_NAMES, load_task, prepare_task
from medft_jax.names import dataset_names

DEFAULT_DATASET = "demo"
DEFAULT_RESIZE = 256
DEFAULT_CROP = 224


def known_names() -> list[str]:
    return dataset_names()


def _unknown(name: str) -> DataError:
    return DataError(f"unknown dataset {name!r}; known datasets: {', '.join(known_names())}")


def _sizes(resize_size: int | None, crop_size: int | None) -> tuple[int, int]:
    crop = DEFAULT_CROP if crop_size is None else crop_size
    resize = resize_size if resize_size is not None else round(crop * DEFAULT_RESIZE / DEFAULT_CROP)
    if crop < 1 or resize < crop:
        raise DataError(f"--resize-size {resize} must be >= --image-size {crop} >= 1")
    return resize, crop


def _check_split_seed(name: str, seed: int) -> None:
    """A seed for a dataset whose splits are all given (the command lines name their flag)."""
    error = split_option_error(name, "seed", seed, 0)
    if error:
        raise DataError(error)


def _known_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` without the unset ones (None: the command lines pass every option); a
    set option ``name`` does not take is one line."""
    given = {k: v for k, v in options.items() if v is not None}
    unknown = unknown_option(name, given)
    if unknown:
        raise DataError(f"dataset {name}: {unknown}")
    return given


def load(
    name: str = DEFAULT_DATASET,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    manual_dir: str | os.PathLike[str] | None = None,
    resize_size: int | None = None,
    crop_size: int | None = None,
    seed: int = 0,
    skip_bad_images: bool = False,
    progress: bool = True,
    batch_size: int | None = None,
    **options: Any,
) -> Dataset:
    """Loads dataset ``name`` as a :class:`~medft_jax.data.dataset.Dataset`.

    Args:
      name: see the module docstring.
      data_dir: where prepared data and caches live (default: TFDS's).
      manual_dir: the user's copy of the images (``folder``/``csv`` only;
        the paper tasks read what ``experiments.prepare`` wrote).
      resize_size, crop_size: preprocessing sizes (see the module docstring).
      seed: the seed of everything random in the dataset itself (split
        carving; demo images). Shuffling takes its own seed in ``train_iter``.
      skip_bad_images: skip (and count in ``metadata``) undecodable images.
      batch_size: the run's, for ``folder``/``csv`` and MedMNIST: one larger than the
        listed (published) training split is refused before any image is decoded (others:
        ignored here).
      options: source-specific (tasks: ``val_fraction``, ``uncertain``, ``split_by``; csv/
        folder: see :func:`medft_jax.data.local.load_local`).
    """
    if name == "demo":  # in memory: no data dir (one under HOME=/ is refused)
        if options:
            raise DataError(f"demo takes no options; got {sorted(options)[0]!r}")
        return load_demo(seed=seed, image_size=crop_size or 32)
    root = resolve_data_dir(data_dir)
    _check_split_seed(name, seed)
    if name.startswith("medmnist/"):
        if options:
            raise DataError(f"medmnist takes no options; got {sorted(options)[0]!r}")
        refuse_batch_over_medmnist(name, batch_size)  # before a 224 px cache is built
        resize = resize_size if crop_size is not None else None
        return load_medmnist(
            name, data_dir=root, resize_size=resize, crop_size=crop_size, progress=progress
        )
    resize, crop = _sizes(resize_size, crop_size)
    if name in TASK_NAMES:
        return load_task(
            name,
            data_dir=root,
            resize_size=resize,
            crop_size=crop,
            seed=seed,
            progress=progress,
            **_known_options(name, options),
        )
    if name in KINDS:
        return load_local(
            name,
            seed=seed,
            skip_bad_images=skip_bad_images,
            progress=progress,
            batch_size=batch_size,
            **_local_args(name, manual_dir, root, (resize, crop), options),
        )
    raise _unknown(name)


def refuse_batch_over_medmnist(name: str, batch_size: int | None) -> None:
    """A ``batch_size`` above a MedMNIST dataset's published training count, refused before
    its file is read or its cache built (the run refused it only after both)."""
    from medft_jax.data.medmnist import parse_name
    from medft_jax.data.medmnist_info import N_SAMPLES

    flag, _ = parse_name(name)
    train = N_SAMPLES.get(flag, (None,))[0]
    if batch_size is not None and train is not None and batch_size > train:
        raise BatchTooLarge(batch_size, train, name)


def _local_args(
    name: str,
    manual_dir: str | os.PathLike[str] | None,
    data_dir: Path,
    sizes: tuple[int, int],
    options: dict[str, Any],
) -> dict[str, Any]:
    """The keyword arguments :func:`load` and :func:`data_state` both give the
    ``folder``/``csv`` loader, so a dry run checks the very cache a load would use."""
    return {
        "manual_dir": None if manual_dir is None else Path(manual_dir),
        "data_dir": data_dir,
        "resize_size": sizes[0],
        "crop_size": sizes[1],
        **_known_options(name, options),
    }


def data_state(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    manual_dir: str | os.PathLike[str] | None = None,
    resize_size: int | None = None,
    crop_size: int | None = None,
    seed: int = 0,
    skip_bad_images: bool = False,
    **options: Any,
) -> LocalState | None:
    """What :func:`load` would find for the user's ``folder``/``csv`` data, without decoding
    or writing (:func:`medft_jax.data.local.local_state`: the current cache's fingerprint,
    or why there is none and the listing's fingerprints; its training images); None for
    other datasets (not checked)."""
    if name not in KINDS:
        return None
    sizes = _sizes(resize_size, crop_size)
    return local_state(
        name,
        seed=seed,
        skip_bad_images=skip_bad_images,
        **_local_args(name, manual_dir, resolve_data_dir(data_dir), sizes, options),
    )


def prepare(
    name: str,
    *,
    manual_dir: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    resize_size: int | None = None,
    crop_size: int | None = None,
    seed: int = 0,
    skip_bad_images: bool = False,
    progress: bool = True,
    scorable: bool = False,
    **options: Any,
) -> Dataset:
    """Prepares ``name`` once (paper tasks: TFDS, then the cache; others: the cache), loads it.

    ``scorable``: a paper task whose parse leaves a val or test split without a class
    is refused before anything is written (see :func:`tasks.prepare_task`).
    """
    _check_split_seed(name, seed)
    root = resolve_data_dir(data_dir)
    if name in TASK_NAMES:
        if manual_dir is None:
            raise DataError(f"preparing {name} needs --manual-dir (your copy of the dataset)")
        resize, crop = _sizes(resize_size, crop_size)
        opts = _known_options(name, options)
        prepare_task(
            name,
            manual_dir=Path(manual_dir),
            data_dir=root,
            resize_size=resize,
            crop_size=crop,
            seed=seed,
            skip_bad_images=skip_bad_images,
            progress=progress,
            scorable=scorable,
            **opts,
        )
    return load(
        name,
        data_dir=root,
        manual_dir=manual_dir,
        resize_size=resize_size,
        crop_size=crop_size,
        seed=seed,
        skip_bad_images=skip_bad_images,
        progress=progress,
        **options,
    )
