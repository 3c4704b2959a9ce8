"""The eight paper tasks: prepare through TFDS once, then cache and memmap for reading.

``prepare_task`` runs the task's TFDS builder on the user's manual
directory (ArrayRecord, needs TensorFlow) and then materialises the
memmap cache (:mod:`medft_jax.data.cache`) in one pass over the prepared
records. ``load_task`` memmaps that cache; if only the TFDS data is there
it builds the cache first (no TensorFlow needed), and if nothing is there
it says which prepare command to run.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from medft_jax.data import cache
from medft_jax.data.dataset import Dataset
from medft_jax.data.errors import DataError
from medft_jax.data.locations import cache_dir

TASK_NAMES = (
    "chexpert",
    "mura_shoulder",
    "mura_wrist",
    "mura_humerus",
    "t1w_mri",
    "bach",
    "isic2020",
    "cholect50_instrument",
)


def _config_kwargs(
    resize_size: int, crop_size: int, seed: int, val_fraction: float, uncertain: str | None
) -> dict[str, Any]:
    return {
        "resize_size": resize_size,
        "crop_size": crop_size,
        "seed": seed,
        "val_fraction": val_fraction,
        "uncertain": uncertain,
    }


def make_builder(name: str, data_dir: Path, *, skip_bad_images: bool = False, **config: Any):
    """The TFDS builder of task ``name`` for one config (see ``MedicalConfig.make``)."""
    from medft_jax.data.builders import builder_class
    from medft_jax.data.builders.base import MedicalConfig

    cls = builder_class(name)
    if config.get("uncertain") not in (None, "ones") and "uncertain" not in cls.TASK.options:
        raise DataError(f"--uncertain applies to chexpert only, not {name!r}")
    return cls(
        config=MedicalConfig.make(**config),
        data_dir=str(data_dir),
        file_format="array_record",
        skip_bad_images=skip_bad_images,
    )


def _variant(name: str, **config: Any) -> str:
    from medft_jax.data.builders.base import config_name

    return config_name(
        config["resize_size"],
        config["crop_size"],
        config["seed"],
        config["val_fraction"],
        config["uncertain"],
    )


def _cache_from_tfds(builder, target: Path, *, progress: bool, chunk: int = 64) -> Path:
    """One pass over the prepared ArrayRecord splits into the memmap cache."""
    info = builder.info
    meta = dict(info.metadata)
    plans = {}
    for split in ("train", "val", "test"):
        source = builder.as_data_source(split)
        n = len(source)
        fields: dict[str, list[Any]] = {"labels": [], "ids": [], "groups": [], "patients": []}

        def chunks(source=source, n=n, fields=fields) -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for start in range(0, n, chunk):
                examples = source.__getitems__(list(range(start, min(start + chunk, n))))
                for ex in examples:
                    fields["labels"].append(ex["label"])
                    fields["ids"].append(_text(ex["id"]))
                    fields["groups"].append(_text(ex["group"]))
                    fields["patients"].append(_text(ex["patient"]))
                images = np.stack([ex["image"] for ex in examples]).astype(np.uint8)
                yield images, np.ones(len(examples), dtype=bool)

        def arrays(fields=fields) -> dict[str, np.ndarray]:
            labels = np.asarray(fields["labels"])
            labels = labels.astype(np.float32 if meta["multilabel"] else np.int32)
            return {
                "labels": labels,
                **{k: np.asarray(fields[k], dtype=str) for k in ("ids", "groups", "patients")},
            }

        c = meta["crop_size"]
        plans[split] = cache.SplitPlan(n, (c, c, 3), chunks, arrays)
    meta["tfds_dir"] = str(builder.data_dir)
    written = cache.write_cache(target, plans, meta, progress=progress)
    return written


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def prepare_command(name: str, data_dir: Path, **config: Any) -> str:
    parts = [
        f"python -m experiments.prepare --dataset {name} --manual-dir <folder with {name}>",
        f"--data-dir {data_dir}",
        f"--resize-size {config['resize_size']} --image-size {config['crop_size']}",
    ]
    if config["seed"]:
        parts.append(f"--seed {config['seed']}")
    if config["val_fraction"] != 0.1:
        parts.append(f"--val-fraction {config['val_fraction']}")
    if config["uncertain"] not in (None, "ones"):
        parts.append(f"--uncertain {config['uncertain']}")
    return " ".join(parts)


def prepare_task(
    name: str,
    *,
    manual_dir: Path,
    data_dir: Path,
    resize_size: int = 256,
    crop_size: int = 224,
    seed: int = 0,
    val_fraction: float = 0.1,
    uncertain: str | None = None,
    skip_bad_images: bool = False,
    progress: bool = True,
) -> Path:
    """TFDS ``download_and_prepare`` from ``manual_dir``, then the cache; returns its dir."""
    import tensorflow_datasets as tfds

    config = _config_kwargs(resize_size, crop_size, seed, val_fraction, uncertain)
    manual_dir = Path(manual_dir).expanduser()
    if not manual_dir.is_dir():
        raise DataError(f"--manual-dir {manual_dir} is not a directory")
    builder = make_builder(name, data_dir, skip_bad_images=skip_bad_images, **config)
    builder.TASK.parse_checked(manual_dir, builder.builder_config)  # fail fast, before TF work
    target = cache_dir(data_dir, name, _variant(name, **config))
    was_prepared = builder.is_prepared()
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)),
    )
    if not was_prepared and target.exists():
        shutil.rmtree(target)  # a cache of an older preparation
    if not cache.is_complete(target):
        _cache_from_tfds(builder, target, progress=progress)
    return target


def load_task(
    name: str,
    *,
    data_dir: Path,
    resize_size: int = 256,
    crop_size: int = 224,
    seed: int = 0,
    val_fraction: float = 0.1,
    uncertain: str | None = None,
    progress: bool = True,
) -> Dataset:
    """The prepared task as a :class:`Dataset` (memmapped cache)."""
    config = _config_kwargs(resize_size, crop_size, seed, val_fraction, uncertain)
    target = cache_dir(data_dir, name, _variant(name, **config))
    if not cache.is_complete(target):
        builder = make_builder(name, data_dir, **config)
        if not builder.is_prepared():
            raise DataError(
                f"{name} ({_variant(name, **config)}) is not prepared in {data_dir}; run: "
                + prepare_command(name, data_dir, **config)
            )
        _cache_from_tfds(builder, target, progress=progress)
    splits, meta = cache.read_cache(target)
    return Dataset(
        name=name,
        splits=splits,
        class_names=tuple(meta["class_names"]),
        multilabel=bool(meta["multilabel"]),
        eval_grouping=meta["eval_grouping"],
        metadata=meta,
    )
