"""``medmnist/<flag>[@size]``: the official MedMNIST v3 ``.npz`` files.

A file is looked for in ``data_dir`` (as ``<flag>[_<size>].npz``, directly
or under ``medmnist/``), else downloaded there from Zenodo and checked
against its MD5 (files found on disk are trusted: users may hold re-saved
copies, like the one with flat labels in the project's test data). Labels
may be ``N`` or ``N×1``; ChestMNIST's ``N×14`` are multi-hot. Images are
used at their native size unless a crop size is asked for, in which case
they go through the same Resize + CenterCrop as every other dataset and are
cached on disk once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from medft_jax.data import cache
from medft_jax.data.arrays import ArraySplit, make_split
from medft_jax.data.dataset import Dataset
from medft_jax.data.errors import DataError
from medft_jax.data.locations import cache_dir, variant_name
from medft_jax.data.medmnist_info import FLAGS, SIZES, URL
from medft_jax.data.preprocess import resize_and_crop

SPLITS = ("train", "val", "test")


def parse_name(name: str) -> tuple[str, int]:
    """``"medmnist/breastmnist@64"`` -> ``("breastmnist", 64)`` (size defaults to 28)."""
    rest = name.split("/", 1)[1] if "/" in name else ""
    flag, _, size_text = rest.partition("@")
    if flag not in FLAGS:
        raise DataError(
            f"unknown MedMNIST flag {flag!r} in {name!r}; known: {', '.join(sorted(FLAGS))}"
        )
    try:
        size = int(size_text) if size_text else 28
    except ValueError:
        raise DataError(f"MedMNIST size in {name!r} must be one of {SIZES}") from None
    if size not in SIZES:
        raise DataError(f"MedMNIST size {size} in {name!r} is not one of {SIZES}")
    return flag, size


def file_stem(flag: str, size: int) -> str:
    return flag if size == 28 else f"{flag}_{size}"


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(flag: str, size: int, dest_dir: Path) -> Path:
    """Downloads the official file into ``dest_dir`` (temp name, MD5 check, rename)."""
    stem = file_stem(flag, size)
    dest = Path(dest_dir) / f"{stem}.npz"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    url = URL.format(stem=stem)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
        got, expected = md5sum(tmp), FLAGS[flag].md5[size]
        if got != expected:
            raise DataError(f"{url}: MD5 {got} does not match the expected {expected}")
        os.replace(tmp, dest)
    except OSError as err:
        raise DataError(
            f"cannot download {url} ({err}); put {stem}.npz in the --data-dir yourself"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def find_or_download(flag: str, size: int, data_dir: Path, *, allow_download: bool = True) -> Path:
    stem = file_stem(flag, size)
    for candidate in (data_dir / f"{stem}.npz", data_dir / "medmnist" / f"{stem}.npz"):
        if candidate.is_file():
            return candidate
    if not allow_download:
        raise DataError(f"{stem}.npz not found in {data_dir} or {data_dir / 'medmnist'}")
    return download(flag, size, data_dir / "medmnist")


def read_npz(path: Path, flag: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (uint8 N×H×W×3 images, labels)}`` from an official-format ``.npz``."""
    info = FLAGS[flag]
    out = {}
    with np.load(path, allow_pickle=False) as npz:
        for split in SPLITS:
            for key in (f"{split}_images", f"{split}_labels"):
                if key not in npz.files:
                    raise DataError(f"{path}: missing array {key!r}; has {sorted(npz.files)}")
            images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
            out[split] = (_rgb(images, path, split), _labels(labels, info, path, split))
            if len(out[split][0]) != len(out[split][1]):
                raise DataError(
                    f"{path}: {split}_images has {len(images)} rows, {split}_labels {len(labels)}"
                )
    return out


def _rgb(images: np.ndarray, path: Path, split: str) -> np.ndarray:
    if images.dtype != np.uint8:
        raise DataError(f"{path}: {split}_images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        return np.repeat(images[..., None], 3, axis=-1)
    if images.ndim == 4 and images.shape[-1] == 3:
        return images
    raise DataError(f"{path}: {split}_images must be N×H×W or N×H×W×3, got {images.shape}")


def _labels(labels: np.ndarray, info, path: Path, split: str) -> np.ndarray:
    num = len(info.labels)
    if info.multilabel:
        if labels.ndim != 2 or labels.shape[1] != num:
            raise DataError(f"{path}: {split}_labels must be N×{num} multi-hot, got {labels.shape}")
        if not np.isin(labels, (0, 1)).all():
            raise DataError(f"{path}: {split}_labels must hold only 0/1")
        return labels.astype(np.float32)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{path}: {split}_labels must be N or N×1, got {labels.shape}")
    bad = (labels < 0) | (labels >= num)
    if bad.any():
        raise DataError(
            f"{path}: {split}_labels holds label {labels[bad][0]} outside the {num} classes "
            f"0..{num - 1}"
        )
    return labels.astype(np.int32)


def _resized_chunks(images: np.ndarray, resize_size: int, crop_size: int) -> cache.ImageChunks:
    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for image in images:
            out = resize_and_crop(Image.fromarray(image), resize_size, crop_size)
            yield out[None], np.ones(1, dtype=bool)

    return chunks


def load_medmnist(
    name: str,
    *,
    data_dir: Path,
    resize_size: int | None = None,
    crop_size: int | None = None,
    allow_download: bool = True,
    progress: bool = True,
) -> Dataset:
    """Loads ``medmnist/<flag>[@size]``; see the module docstring."""
    flag, size = parse_name(name)
    info = FLAGS[flag]
    facts = {
        "class_names": list(info.labels),
        "multilabel": info.multilabel,
        "eval_grouping": "image",
        "license": info.license,
        "source_size": size,
    }
    if crop_size is None:
        path = find_or_download(flag, size, data_dir, allow_download=allow_download)
        arrays = read_npz(path, flag)
        splits: dict[str, ArraySplit] = {
            s: make_split(im, lab, prefix=f"{s}/") for s, (im, lab) in arrays.items()
        }
        for s, split in splits.items():
            if len(split) == 0:
                raise DataError(f"{path}: split {s!r} is empty")
    else:
        resize_size = resize_size or crop_size
        target = cache_dir(
            data_dir, f"medmnist/{flag}@{size}", variant_name(resize_size, crop_size)
        )
        if not cache.is_complete(target):
            path = find_or_download(flag, size, data_dir, allow_download=allow_download)
            arrays = read_npz(path, flag)
            shape = (crop_size, crop_size, 3)
            plan = {}
            for s, (im, lab) in arrays.items():
                ids = np.asarray([f"{s}/{i}" for i in range(len(lab))])
                fields = {"labels": lab, "ids": ids, "groups": ids, "patients": ids}
                chunks = _resized_chunks(im, resize_size, crop_size)
                plan[s] = cache.SplitPlan(len(lab), shape, chunks, fields)
            cache.write_cache(target, plan, facts, progress=progress)
        splits, _ = cache.read_cache(target)
    return Dataset(
        name=name,
        splits=splits,
        class_names=tuple(info.labels),
        multilabel=info.multilabel,
        metadata={**facts, "flag": flag},
    )
