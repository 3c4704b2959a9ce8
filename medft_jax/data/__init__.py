"""Datasets and the input pipeline: datasets by name -> batches of uint8 images + labels.

The API the training loop uses::

    from medft_jax import data
    ds = data.load("bach", data_dir=DIR, resize_size=256, crop_size=224)   # or "demo", ...
    ds.num_classes, ds.class_names, ds.multilabel, ds.eval_grouping, ds.image_shape
    it = ds.train_iter(batch_size, seed=seed, epoch=epoch)   # one epoch, checkpointable
    it.get_state() / it.set_state(state)                      # resume mid-epoch
    ds.eval_batches("val", batch_size)                        # all examples once, padded + mask
    ds.grouped_scores("test", scores)                         # MURA: study = mean of its images

Preparing (paper tasks need TensorFlow for it): :func:`prepare` or
``python -m experiments.prepare``. Modules: ``registry`` (names),
``dataset`` (the Dataset), ``pipeline`` (batches), ``cache`` (on-disk
arrays), ``tasks`` + ``builders/`` (TFDS), ``options`` (the tasks' own
options), ``medmnist``, ``local`` (folder/csv), ``demo``, ``preprocess``
(torchvision-equal resizing).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medft_jax.data.arrays import ArraySplit
    from medft_jax.data.dataset import Dataset
    from medft_jax.data.errors import DataError
    from medft_jax.data.local import LocalState
    from medft_jax.data.pipeline import BatchIterator
    from medft_jax.data.registry import DEFAULT_DATASET, data_state, known_names, load, prepare

_HOMES = {
    "ArraySplit": "arrays",
    "BatchIterator": "pipeline",
    "DEFAULT_DATASET": "registry",
    "DataError": "errors",
    "Dataset": "dataset",
    "LocalState": "local",
    "data_state": "registry",
    "known_names": "registry",
    "load": "registry",
    "prepare": "registry",
}
"""Each public name's module. Imported on first use: the pipeline brings grain and JAX,
and importing a light submodule (``errors``, ``tasks``' names) or printing a command's
``--help`` should not."""

__all__ = [
    "DEFAULT_DATASET",
    "ArraySplit",
    "BatchIterator",
    "DataError",
    "Dataset",
    "LocalState",
    "data_state",
    "known_names",
    "load",
    "prepare",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
