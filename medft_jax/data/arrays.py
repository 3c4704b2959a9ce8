"""One split held as arrays: uint8 images (in memory or memmapped) plus labels and ids.

This is the common currency of the package: every source (demo, MedMNIST,
folder, csv, the TFDS builders via the on-disk cache) ends up as a dict of
:class:`ArraySplit`, and the batch pipeline reads only this.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from medft_jax.data.errors import DataError


def file_identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """``(device, inode, size, mtime_ns)`` of a stat: which file a path named, and whether
    it was written since. A memmapped cache array carries its file's as ``file_identity``
    (set when it was opened), so a re-open by name can tell a cache rebuilt since."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclasses.dataclass(frozen=True)
class ArraySplit:
    """Images and labels of one split, index-aligned.

    Attributes:
      images: uint8 ``(N, H, W, 3)``; an ``np.memmap`` for on-disk caches, so
        host memory holds only what a batch gathers.
      labels: int32 ``(N,)`` class ids, or float32 ``(N, C)`` multi-hot.
      ids: ``(N,)`` str, a stable id per example (its path in the source).
      groups: ``(N,)`` str, the evaluation unit (MURA: the study; else the id).
      patients: ``(N,)`` str, the unit splits are disjoint over.
    """

    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    groups: np.ndarray
    patients: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise DataError(
                f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}"
            )
        for field in ("labels", "ids", "groups", "patients"):
            if len(getattr(self, field)) != n:
                raise DataError(f"{field} has {len(getattr(self, field))} rows, images have {n}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


def make_split(
    images: np.ndarray,
    labels: np.ndarray,
    ids: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    patients: np.ndarray | None = None,
    *,
    prefix: str = "",
) -> ArraySplit:
    """An :class:`ArraySplit`, with ids defaulting to ``prefix + index`` and groups to ids."""
    n = len(images)
    if ids is None:
        ids = np.asarray([f"{prefix}{i}" for i in range(n)], dtype=str)
    if groups is None:
        groups = ids
    if patients is None:
        patients = ids
    return ArraySplit(
        images, np.asarray(labels), np.asarray(ids), np.asarray(groups), np.asarray(patients)
    )


def group_mean(
    scores: np.ndarray, labels: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group mean of ``scores`` and the group's label (MURA: study-level evaluation).

    Returns ``(group_ids, mean_scores, group_labels)`` with groups sorted by
    id. A group whose images disagree on the label is an error: the study's
    label is one label.
    """
    unique, inverse = np.unique(np.asarray(groups), return_inverse=True)
    scores = np.asarray(scores, dtype=np.float64)
    sums = np.zeros((len(unique), *scores.shape[1:]))
    np.add.at(sums, inverse, scores)
    counts = np.bincount(inverse, minlength=len(unique)).reshape(-1, *[1] * (scores.ndim - 1))
    labels = np.asarray(labels)
    first = np.zeros(len(unique), dtype=np.int64)
    first[inverse[::-1]] = np.arange(len(inverse))[::-1]
    group_labels = labels[first]
    if not np.array_equal(group_labels[inverse], labels):
        raise DataError("a group's images carry different labels; expected one label per group")
    return unique, sums / counts, group_labels
