"""The eight paper tasks: prepare through TFDS once, then cache and memmap for reading.

``prepare_task`` runs the task's TFDS builder on the user's manual
directory (ArrayRecord, needs TensorFlow) and then materialises the
memmap cache (:mod:`medft_jax.data.cache`) in one pass over the prepared
records. ``load_task`` memmaps that cache; if only the TFDS data is there
it builds the cache first (no TensorFlow needed), and if nothing is there
it says which prepare command to run.

What each step was built from is recorded and checked, so a changed input
is never served from old output (one line says what changed):

- the cache's ``meta.json`` holds the names, sizes and mtimes of the TFDS
  files it was read from; every load compares them (stat only) and rebuilds
  the cache when TFDS data was prepared again. With the TFDS data gone, the
  cache is served as it is (it is all there is); a cache written before
  these records existed is rebuilt, or, without TFDS data, refused with the
  prepare command.
- the TFDS folder holds :data:`MANUAL_RECORD`: the manual dir's images
  (name, size, mtime) and a hash of the parsed examples (ids, labels,
  patients, split membership). ``prepare`` compares it and prepares again
  when the user's copy changed (TFDS itself would keep the old preparation).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from medft_jax import atomic, locks
from medft_jax.data import cache
from medft_jax.data.dataset import Dataset
from medft_jax.data.errors import DataError
from medft_jax.data.examples import Example
from medft_jax.data.locations import cache_dir
from medft_jax.data.options import OPTION_OWNERS, split_option_error
from medft_jax.errors import quiet_logger
from medft_jax.names import TASK_NAMES as TASK_NAMES  # the one list of the tasks' names

MANUAL_RECORD = "medft_manual_source.json"
"""In a prepared TFDS folder: the signature of the manual dir it was prepared from."""


def _config_kwargs(
    resize_size: int,
    crop_size: int,
    seed: int,
    val_fraction: float,
    uncertain: str | None,
    split_by: str | None = None,
) -> dict[str, Any]:
    return {
        "resize_size": resize_size,
        "crop_size": crop_size,
        "seed": seed,
        "val_fraction": val_fraction,
        "uncertain": uncertain,
        "split_by": split_by,
    }


def _check_options(name: str, config: dict[str, Any]) -> None:
    """Refuses a task-specific option given to a task that does not read it."""
    error = split_option_error(name, "--val-fraction", config.get("val_fraction"), 0.1)
    if error:
        raise DataError(error)
    for option, (owner, default) in OPTION_OWNERS.items():
        if config.get(option) not in (None, default) and name != owner:
            flag = "--" + option.replace("_", "-")
            raise DataError(f"{flag} applies to {owner} only, not {name!r}")


def make_builder(name: str, data_dir: Path, *, skip_bad_images: bool = False, **config: Any):
    """The TFDS builder of task ``name`` for one config (see ``MedicalConfig.make``)."""
    from medft_jax.data.builders import builder_class
    from medft_jax.data.builders.base import MedicalConfig

    cls = builder_class(name)
    _check_options(name, config)
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
        config["split_by"],
    )


def _cache_from_tfds(
    builder, target: Path, data_dir: Path, *, progress: bool, chunk: int = 64
) -> Path:
    """One pass over the prepared ArrayRecord splits into the memmap cache."""
    info = builder.info
    meta = dict(info.metadata)
    meta["source"] = tfds_source(Path(builder.data_dir), data_dir)
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


def tfds_source(tfds_dir: Path, data_dir: Path) -> dict[str, Any]:
    """The signature of a prepared TFDS folder: its files' (name, size, mtime), stat only."""
    tfds_dir = Path(tfds_dir)
    try:
        where = tfds_dir.resolve().relative_to(Path(data_dir).resolve()).as_posix()
    except ValueError:
        where = str(tfds_dir.resolve())
    return {"files": cache.tree_stats(tfds_dir, exclude=(MANUAL_RECORD,)), "tfds_dir": where}


def _stale_reason(target: Path, data_dir: Path) -> str | None:
    """Why the finished cache ``target`` no longer matches its TFDS data (None: it does).

    With the TFDS folder gone there is nothing to compare with: None.
    """
    meta = cache.read_meta(target)
    old = meta.get("source")
    if not isinstance(old, dict) or "tfds_dir" not in old or not meta.get("fingerprint"):
        return "it predates content checks (no source signature or fingerprint)"
    tfds_dir = Path(data_dir) / old["tfds_dir"]
    if not tfds_dir.is_dir():
        return None
    return cache.describe_change(old, tfds_source(tfds_dir, data_dir))


def manual_source(manual_dir: Path, splits: dict[str, list[Example]]) -> dict[str, Any]:
    """The signature of a manual dir as parsed: image files' stats + a hash of the examples."""
    paths = [ex.path for members in splits.values() for ex in members]
    return {"files": cache.file_stats(manual_dir, paths), "examples": cache.examples_digest(splits)}


def _read_manual_record(tfds_dir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((Path(tfds_dir) / MANUAL_RECORD).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _write_manual_record(tfds_dir: Path, record: dict[str, Any]) -> None:
    path = Path(tfds_dir) / MANUAL_RECORD
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    if config["split_by"] not in (None, "patient"):
        parts.append(f"--split-by {config['split_by']}")
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
    split_by: str | None = None,
    skip_bad_images: bool = False,
    progress: bool = True,
) -> Path:
    """TFDS ``download_and_prepare`` from ``manual_dir``, then the cache; returns its dir."""
    import tensorflow_datasets as tfds

    config = _config_kwargs(resize_size, crop_size, seed, val_fraction, uncertain, split_by)
    _check_options(name, config)
    manual_dir = Path(manual_dir).expanduser()
    if not manual_dir.is_dir():
        raise DataError(f"--manual-dir {manual_dir} is not a directory")
    builder = make_builder(name, data_dir, skip_bad_images=skip_bad_images, **config)
    splits = builder.TASK.parse_checked(manual_dir, builder.builder_config)  # before TF work
    manual = manual_source(manual_dir, splits)
    if skip_bad_images:  # other data than a strict prepare's: said only when set, so that
        manual["skip_bad_images"] = True  # records written before it stay fresh
    version_dir = Path(builder.data_dir)
    target = cache_dir(data_dir, name, _variant(name, **config))
    if not builder.is_prepared():
        _require_tensorflow(name)  # before the lock's folders are made
    with locks.waiting_lock(prepare_lock(version_dir)):  # a second prepare waits, then reuses
        atomic.remove_abandoned(version_dir)  # a killed removal's leftover, set aside whole
        if builder.is_prepared():
            recorded = _read_manual_record(version_dir)
            reason = (
                "it has no record of the files it was prepared from (a prepare killed before "
                "writing it)"
                if recorded is None
                else cache.describe_change(recorded, manual)
            )
            if reason:
                _require_tensorflow(name)  # before the stale data is removed
                print(
                    f"{name} prepared data {version_dir} is stale: {reason}; preparing again",
                    file=sys.stderr,
                    flush=True,
                )
                # Its cache first: with the TFDS folder gone, a cache is not checked against
                # it, and a failed prepare would leave the old images served as current.
                cache.retire(target)
                trash = atomic.temporary_sibling(version_dir)
                os.replace(version_dir, trash)  # gone whole, never half-removed
                shutil.rmtree(trash)
                builder = make_builder(name, data_dir, skip_bad_images=skip_bad_images, **config)
        with _tfds_progress(progress):
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)),
            )
        _write_manual_record(version_dir, manual)
    _ensure_cache(name, builder, target, data_dir, progress=progress)
    return target


@contextlib.contextmanager
def _tfds_progress(progress: bool) -> Iterator[None]:
    """TFDS's own progress bars and info logs, shown only with ``progress``
    (``--no-progress`` silences them too), then TFDS's setting as it was."""
    if progress:
        yield
        return
    from tensorflow_datasets.core.utils import tqdm_utils

    before = getattr(tqdm_utils, "_active", True)
    tqdm_utils.display_progress_bar(False)
    try:
        with quiet_logger("absl", logging.WARNING):
            yield
    finally:
        tqdm_utils.display_progress_bar(before)


def _require_tensorflow(name: str) -> None:
    """TFDS encodes images with TensorFlow: without it, one line before any work, not a
    traceback from inside the first encoded example."""
    try:
        import tensorflow  # noqa: F401
    except ImportError as e:
        raise DataError(
            f"preparing {name} needs TensorFlow ({e}); pip install 'medft-jax[prepare]'"
        ) from None


def prepare_lock(version_dir: Path) -> Path:
    """The file a prepare of the TFDS folder ``version_dir`` holds while it writes there."""
    version_dir = Path(version_dir)
    return version_dir.parent / f".{version_dir.name}.prepare.lock"


def _ensure_cache(name: str, builder, target: Path, data_dir: Path, *, progress: bool) -> None:
    """Builds the cache from the prepared TFDS data unless a matching one is there."""
    reason = _stale_reason(target, data_dir) if cache.is_complete(target) else None
    if reason:
        cache.announce_rebuild(name, target, reason)
    if reason or not cache.is_complete(target):
        _cache_from_tfds(builder, target, data_dir, progress=progress)


def load_task(
    name: str,
    *,
    data_dir: Path,
    resize_size: int = 256,
    crop_size: int = 224,
    seed: int = 0,
    val_fraction: float = 0.1,
    uncertain: str | None = None,
    split_by: str | None = None,
    progress: bool = True,
) -> Dataset:
    """The prepared task as a :class:`Dataset` (memmapped cache)."""
    config = _config_kwargs(resize_size, crop_size, seed, val_fraction, uncertain, split_by)
    _check_options(name, config)
    target = cache_dir(data_dir, name, _variant(name, **config))
    reason = _stale_reason(target, data_dir) if cache.is_complete(target) else None
    if reason or not cache.is_complete(target):
        # TFDS warns of its custom config and a missing variant: a run says one line.
        with quiet_logger("absl", logging.ERROR):
            builder = make_builder(name, data_dir, **config)
            prepared = builder.is_prepared()
        if not prepared:
            raise DataError(
                f"{name} ({_variant(name, **config)}) is not prepared in {data_dir}; run: "
                + prepare_command(name, data_dir, **config)
            )
        _ensure_cache(name, builder, target, data_dir, progress=progress)
    splits, meta = cache.read_cache(target)
    cache.note_duplicates(name, meta)
    return Dataset(
        name=name,
        splits=splits,
        class_names=tuple(meta["class_names"]),
        multilabel=bool(meta["multilabel"]),
        eval_grouping=meta["eval_grouping"],
        metadata=meta,
    )
