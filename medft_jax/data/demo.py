"""``demo``: a small synthetic two-class image task, generated from a seed, in memory.

It needs no files and no network, so the default command runs anywhere in
minutes on a CPU. Each image is a noisy, smoothly shaded grey field (like
an X-ray's soft background) with one Gaussian spot; the spot is bright in
class ``lesion`` and dark in class ``normal``, at a random place and size,
so the task is learnable in a few epochs but not from one pixel. Its
``metadata["fingerprint"]`` hashes the generated arrays (a few hundred KiB,
milliseconds), so it is the data's identity like every other source's.
"""

from __future__ import annotations

import numpy as np

from medft_jax.data.arrays import make_split
from medft_jax.data.cache import fingerprint_of
from medft_jax.data.dataset import Dataset

CLASS_NAMES = ("normal", "lesion")
SPLIT_SIZES = {"train": 192, "val": 64, "test": 128}


def _images(rng: np.random.Generator, labels: np.ndarray, size: int) -> np.ndarray:
    n = len(labels)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = 90 + 60 * rng.random((n, 1, 1), dtype=np.float32)
    tilt = 40 * (rng.random((n, 2, 1, 1), dtype=np.float32) - 0.5)
    field = base + tilt[:, 0] * yy + tilt[:, 1] * xx
    cy, cx = 0.2 + 0.6 * rng.random((2, n, 1, 1), dtype=np.float32)
    radius = (0.08 + 0.1 * rng.random((n, 1, 1), dtype=np.float32)) ** 2
    spot = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius))
    sign = np.where(labels == 1, 1.0, -1.0).astype(np.float32)[:, None, None]
    grey = field + 70 * sign * spot + rng.normal(0, 12, (n, size, size)).astype(np.float32)
    grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def load_demo(
    *, seed: int = 0, image_size: int = 32, sizes: dict[str, int] | None = None
) -> Dataset:
    """The demo dataset; the same ``seed`` gives the same bytes on every machine."""
    sizes = dict(SPLIT_SIZES if sizes is None else sizes)
    splits = {}
    for i, (name, n) in enumerate(sizes.items()):
        rng = np.random.default_rng([seed, i])
        labels = rng.permutation(np.arange(n) % 2).astype(np.int32)
        splits[name] = make_split(_images(rng, labels, image_size), labels, prefix=f"{name}/")
    fingerprint = fingerprint_of(splits, CLASS_NAMES, multilabel=False)
    return Dataset(
        name="demo",
        splits=splits,
        class_names=CLASS_NAMES,
        metadata={
            "seed": seed,
            "image_size": image_size,
            "synthetic": True,
            "fingerprint": fingerprint,
        },
    )
