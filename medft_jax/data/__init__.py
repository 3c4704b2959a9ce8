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
arrays), ``tasks`` + ``builders/`` (TFDS), ``medmnist``, ``local``
(folder/csv), ``demo``, ``preprocess`` (torchvision-equal resizing).
"""

from medft_jax.data.arrays import ArraySplit
from medft_jax.data.dataset import Dataset
from medft_jax.data.errors import DataError
from medft_jax.data.pipeline import BatchIterator
from medft_jax.data.registry import DEFAULT_DATASET, known_names, load, prepare

__all__ = [
    "DEFAULT_DATASET",
    "ArraySplit",
    "BatchIterator",
    "DataError",
    "Dataset",
    "known_names",
    "load",
    "prepare",
]
