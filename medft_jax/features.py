"""A frozen backbone's features, computed once per (data, backbone) and kept on disk.

With BatchNorm frozen (``frozen_bn='freeze'``) and only the head training
(linear probing, LP-FT's LP phase, G-LF's first stage), the backbone is a
pure function of the image: the protocol has no augmentation, and its
BatchNorms use running statistics. Every epoch of such a stage would
compute the same features again; here they are computed once, in inference
mode, written in chunks to float32 ``.npy`` files and read back memmapped,
so host memory holds a batch at a time. The head then trains on batches of
features that :mod:`medft_jax.data.pipeline` gathers in exactly the order it
gathers the images, so the updates, and the records, are those of the
uncached run up to float rounding.

Under the paper's default ``frozen_bn='update'`` the frozen layers' outputs
depend on the batch (batch statistics), so nothing is cached; a model without
BatchNorm (VGG-19) is a function of the image in either mode, and is cached in both
(:meth:`medft_jax.strategies.schedule.Schedule.head_only`'s ``batchnorm``).

Layout, beside the prepared images (``<variant cache>/features``), or
under ``<runs>/features`` for a dataset held in memory or prepared data
that cannot be written (a read-only shared copy)::

    <root>/<data fingerprint>/<arch>-<precision>-<device>-<backbone hash>/
        train.npy  val.npy  test.npy   float32 (N, D), rows in split order
        meta.json                      what they were computed from, and each file's sha256

The backbone hash is the sha256 of every non-head parameter and BatchNorm
statistic, so features are never reused for other weights; ``meta.json`` is
written last and the folder renamed into place, so a folder with one is
whole; the files' hashes are checked when read. ``<device>`` is the backend
and the accelerator's model (:func:`device_tag`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from medft_jax import atomic, locks
from medft_jax.checkpoints.model import variables_hash
from medft_jax.config import numerics_version
from medft_jax.data import pipeline
from medft_jax.data.cache import reserve_space
from medft_jax.data.dataset import Dataset
from medft_jax.errors import json_loads, one_line
from medft_jax.models.blocks import BlockPartition, flatten, unflatten

FORMAT = 2
"""Bumped when the files' meaning changes (older folders are then recomputed). 2: no
``test.npy`` (:data:`SPLITS`)."""
SPLITS = ("train", "val")
"""The splits whose features are computed: the head trains on train's and is validated on
val's. The test split is scored once, with the best epoch's whole model, from its images
(a staged strategy's best model is past its head-only epochs): its features were computed,
hashed at every reuse and charged to every run's cost, and never read."""


def backbone_hash(variables: Mapping[str, Any], partition: BlockPartition) -> str:
    """sha256 of every parameter outside the head, and every BatchNorm statistic."""
    params = {k: v for k, v in flatten(variables["params"]).items() if not partition.is_head(k)}
    digest = variables_hash(
        {"params": unflatten(params), "batch_stats": variables.get("batch_stats") or {}}
    )
    if digest is None:  # parameters sharded over other processes
        raise ValueError("backbone_hash: the variables are not all on this host")
    return digest


def roots_for(ds: Dataset, out_dir: str | Path) -> tuple[Path, ...]:
    """Where a run looks for and writes its features, in order of preference.

    Beside the prepared images when they are an on-disk cache (every run of
    that variant shares them), then under ``out_dir``: a read-only shared
    copy of the prepared data still gets its features computed once, in
    the run folder's tree, instead of recomputing them every run.
    """
    out = Path(out_dir) / "features"
    images = ds.split("train").images
    if isinstance(images, np.memmap) and images.filename is not None:
        beside = Path(images.filename).parent / "features"
        if beside != out:
            return (beside, out)
    return (out,)


def device_tag() -> str:
    """The backend, and the accelerator's model where it is not the backend itself
    (``gpu-NVIDIA-H200``, ``tpu-TPU-v5-lite``; ``cpu``), and a default matmul precision
    when one is set (``-matmul-highest``).

    Two GPU models (or one under another matmul precision: TF32 or not) pick other
    convolution algorithms and give features that differ in the last digits: a
    run's features, like its record, are those of the device it ran on.
    """
    backend = jax.default_backend()
    kind = str(jax.devices()[0].device_kind)
    tag = backend if kind.lower() == backend else f"{backend}-{kind}"
    matmul = jax.config.jax_default_matmul_precision
    if matmul:
        tag += f"-matmul-{matmul}"
    return re.sub(r"[^A-Za-z0-9.]+", "-", tag).strip("-")


VERSION_KEYS = ("format", "numerics", "jax", "batch_size", "devices")
"""What computes the features otherwise without changing the weights or the images: the
batch they were computed in too (a convolution over 7 images rounds otherwise than over
16: a run reusing another batch size's set wrote a record of another run's last bits),
and the devices it was split over (4 devices convolve a quarter of it each: features
6e-7 off a 1-device set's, which a 4-device run then read)."""


def location(
    root: Path,
    ds: Dataset,
    arch: str,
    precision: str,
    backbone: str,
    backend: str,
    versions: Mapping[str, Any],
) -> Path:
    """The folder of one (data, arch, precision, backend, backbone, versions) feature set.

    The backend is part of the name: a GPU's convolutions (TF32, other
    algorithms) give features that differ from a CPU's in the last digits,
    and a run's record should be that of the device it ran on. So are the
    versions (:data:`VERSION_KEYS`, as a short hash): two toolkit or JAX
    versions sharing one data dir keep a set each, rather than each
    recomputing (and replacing) the other's at every run.
    """
    fingerprint = str(ds.metadata.get("fingerprint") or "")
    if not fingerprint:
        raise ValueError(f"dataset {ds.name!r} has no content fingerprint")
    tag = hashlib.sha256(json.dumps([versions[k] for k in VERSION_KEYS]).encode()).hexdigest()[:8]
    return root / fingerprint[:24] / f"{arch}-{precision}-{backend}-{backbone[:24]}-{tag}"


class FeatureSet:
    """Memmapped features of the train and val splits (:data:`SPLITS`), iterated as the
    images are."""

    def __init__(
        self,
        directory: Path,
        ds: Dataset,
        arrays: Mapping[str, np.ndarray],
        extract_seconds: float | None = None,
    ) -> None:
        self.directory = directory
        self.ds = ds
        self.arrays = dict(arrays)
        self.extract_seconds = extract_seconds
        """What computing these features took (compilation excluded), whoever computed
        them; None for features written before it was recorded."""

    def train_iter(
        self,
        batch_size: int,
        *,
        seed: int,
        epoch: int = 0,
        split: str = "train",
        shard_index: int | None = None,
        shard_count: int | None = None,
        **_: Any,
    ) -> pipeline.BatchIterator:
        """The batches of :meth:`Dataset.train_iter`, features in place of images."""
        return pipeline.array_train_batches(
            self.arrays[split],
            self.ds.split(split).labels,
            split,
            batch_size,
            seed=seed,
            epoch=epoch,
            shard_index=shard_index,
            shard_count=shard_count,
            num_threads=0,  # a memmap slice per batch: no thread pool needed
        )

    def eval_batches(
        self,
        split: str,
        batch_size: int,
        *,
        shard_index: int | None = None,
        shard_count: int | None = None,
        **_: Any,
    ) -> pipeline.BatchIterator:
        """The batches of :meth:`Dataset.eval_batches`, features in place of images."""
        return pipeline.array_eval_batches(
            self.arrays[split],
            self.ds.split(split).labels,
            split,
            batch_size,
            shard_index=shard_index,
            shard_count=shard_count,
            num_threads=0,
        )


def open_features(
    directory: Path,
    ds: Dataset,
    expected: Mapping[str, Any],
    problems: list[str] | None = None,
) -> FeatureSet | None:
    """The features in ``directory`` if they are whole and were computed from ``expected``.

    None when the folder is missing, from another format, or any file's
    size or hash disagrees with its ``meta.json`` (then it is recomputed).
    ``problems``: a list that collects why a folder that is there was not used
    (damaged, or computed from other images or by another version), which the
    run says in one line as it computes them again, rather than recompute in silence.
    """
    meta_path = directory / "meta.json"
    said = problems if problems is not None else []
    if not meta_path.exists():
        if directory.exists():
            said.append(f"{directory}: no meta.json")
        return None
    try:
        meta = json_loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        said.append(f"{meta_path}: unreadable ({type(e).__name__})")
        return None
    stale = [k for k, v in expected.items() if meta.get(k) != v] if isinstance(meta, dict) else []
    if stale:
        said.append(f"{directory}: stale, its meta.json's {', '.join(stale)} differ")
        return None
    splits = meta.get("splits") if isinstance(meta, dict) else None
    if not isinstance(splits, dict):  # valid JSON of another shape: damaged, recomputed
        said.append(f"{meta_path}: not the features' meta.json")
        return None
    arrays = {}
    for split in _splits(ds):
        info = splits.get(split)
        path = directory / f"{split}.npy"
        try:
            before = os.stat(path)
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            digest = atomic.file_sha256(path)
            after = os.stat(path)
        except (OSError, ValueError, EOFError) as e:  # EOFError: an empty (truncated) file
            said.append(f"{path}: unreadable ({type(e).__name__})")
            return None
        if not isinstance(info, dict) or _identity(before) != _identity(after):
            said.append(f"{path}: replaced while read, or not in meta.json")
            return None  # damaged, or replaced between the memmap and the hash
        if array.shape != (ds.num_examples(split), info.get("dim")) or array.dtype != np.float32:
            said.append(f"{path}: shape {array.shape} {array.dtype}, not its meta.json's")
            return None
        if digest != info.get("sha256"):
            said.append(f"{path}: SHA-256 differs from its meta.json's")
            return None
        arrays[split] = array
    seconds = meta.get("extract_seconds")
    known = isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds >= 0
    return FeatureSet(directory, ds, arrays, float(seconds) if known else None)


def _splits(ds: Dataset) -> list[str]:
    return [split for split in ds.splits if split in SPLITS]


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def images_signature(ds: Dataset) -> dict[str, list[int]] | None:
    """Each split's prepared image file as (size, mtime, inode, ctime); None in memory.

    The data fingerprint is the one its cache recorded when written; an image
    file changed in place since then (a repair, a restore from another copy)
    keeps it, so the features also record the files they were computed from (the ctime:
    a copy written over the file keeping its size, mtime and inode moves only that).
    """
    out = {}
    for split in _splits(ds):
        images = ds.split(split).images
        if not isinstance(images, np.memmap) or images.filename is None:
            return None
        st = os.stat(images.filename)
        out[split] = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
    return out


def compute_features(
    directory: Path,
    ds: Dataset,
    expected: Mapping[str, Any],
    extract: Any,
    batch_size: int,
    compile_seconds: Callable[[], float] | None = None,
) -> FeatureSet:
    """Runs ``extract`` (batches -> feature arrays) over every split, written as it goes.

    ``meta.json`` records the seconds it took, less the compilation that
    ``compile_seconds`` (a running total) counted meanwhile: the one-off cost every
    run trained from these features is charged in the report, the first or not.

    The files go to a temporary sibling folder, ``meta.json`` last, which
    is then renamed into place: a kill leaves no folder that looks whole.
    When another process finished the same folder first, its copy is used.
    """
    tmp = atomic.temporary_sibling(directory)
    # What killed writers left, of this feature set or another of the data (a backbone
    # that will not come again), never a live one's.
    atomic.remove_abandoned(directory, siblings=True)
    tmp.mkdir(parents=True)
    started, compiled = time.perf_counter(), (compile_seconds or float)()
    try:
        splits = {}
        for split in _splits(ds):
            splits[split] = _write_split(
                tmp / f"{split}.npy",
                ds.num_examples(split),
                extract(ds.eval_batches(split, batch_size, shard_index=0, shard_count=1)),
            )
        spent = time.perf_counter() - started - ((compile_seconds or float)() - compiled)
        meta = {**expected, "splits": splits, "extract_seconds": max(spent, 0.0)}
        atomic.write_bytes(tmp / "meta.json", json.dumps(meta, indent=1).encode())
        if directory.exists():  # stale or damaged (open_features refused it): set aside
            # under a temporary's name, so that a kill mid-removal leaves a
            # folder the next writer's remove_abandoned clears
            trash = atomic.temporary_sibling(directory)
            with contextlib.suppress(FileNotFoundError):
                os.replace(directory, trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, directory)
        except OSError:
            if not (directory / "meta.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process's copy is in place
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    found = open_features(directory, ds, expected)
    if found is None:
        raise OSError(f"{directory}: the features just written do not read back whole")
    return found


def _write_split(path: Path, rows: int, chunks: Any) -> dict[str, Any]:
    out, position = None, 0
    for chunk in chunks:
        if out is None:
            out = np.lib.format.open_memmap(path, "w+", np.float32, (rows, chunk.shape[1]))
            # A page of a memmap a full disk cannot back is a SIGBUS that kills the
            # process without a word: reserve the blocks now, as an OSError to fall back on.
            reserve_space(path)
        out[position : position + len(chunk)] = chunk
        position += len(chunk)
    if out is None or position != rows:
        raise ValueError(f"{path}: the backbone gave {position} rows for {rows} examples")
    out.flush()
    dim = int(out.shape[1])
    del out
    return {"rows": rows, "dim": dim, "sha256": atomic.file_sha256(path)}


def cached_features(
    ds: Dataset,
    *,
    roots: Sequence[Path],
    arch: str,
    precision: str,
    variables: Mapping[str, Any],
    partition: BlockPartition,
    extract: Any,
    batch_size: int,
    compile_seconds: Callable[[], float] | None = None,
) -> tuple[FeatureSet | None, dict[str, Any]]:
    """The run's features under the first of ``roots`` (:func:`roots_for`) that has or takes them.

    ``(None, info)`` when they cannot be had.

    ``info`` (for the run's record): the folder, whether it was reused, the
    seconds spent computing or checking, and ``extract_seconds``, what
    computing them took whoever did (:func:`compute_features`, with
    ``compile_seconds`` as there). Only single-process runs cache
    (several hosts would each need their own rows); a failure to write (a
    full disk) is one warning line, and the run trains from the images,
    which gives the same numbers.
    """
    if jax.process_count() > 1:
        return None, {"used": False, "reason": "multi-process run"}
    t = time.perf_counter()
    host = jax.device_get(dict(variables))
    backbone = backbone_hash(host, partition)
    backend = device_tag()
    expected = {
        "format": FORMAT,
        "numerics": numerics_version(precision),  # computed otherwise: recomputed
        "arch": arch,
        "precision": precision,
        "backend": backend,
        # Another XLA may fuse or round a convolution otherwise: an upgrade recomputes.
        "jax": f"{jax.__version__}/{jax.lib.__version__}",
        "backbone_sha256": backbone,
        "batch_size": int(batch_size),
        "devices": jax.local_device_count(),
        "data_fingerprint": str(ds.metadata["fingerprint"]),
        "images": images_signature(ds),
    }
    directories = [
        location(root, ds, arch, precision, backbone, backend, expected) for root in roots
    ]
    problems: list[str] = []
    for directory in directories:
        found = open_features(directory, ds, expected, problems)
        if found is not None:
            return found, _info(found, reused=True, started=t)
    if problems:  # recomputed, never read: said, as a damaged disk is worth knowing of
        print(
            f"note: cached features not used ({'; '.join(problems)}); computing them again",
            file=sys.stderr,
        )
    errors = []
    for directory in directories:
        try:
            # Two runs of one variant starting together (a sweep's workers)
            # would both compute the same features: the second waits, then
            # reads the first's.
            lock = directory.parent / f".{directory.name}.lock"
            waiting = locks.waiting_note(f"computing the features {directory}")
            with locks.waiting_lock(lock, waiting):
                found = open_features(directory, ds, expected)
                reused = found is not None
                if found is None:
                    try:
                        found = compute_features(
                            directory, ds, expected, extract, batch_size, compile_seconds
                        )
                    except OSError:
                        # Nothing left behind (a full disk): at worst a waiting
                        # process and a newcomer then both compute, each whole.
                        lock.unlink(missing_ok=True)
                        raise
        except (OSError, locks.LocksUnsupported) as e:  # e.g. a read-only or NFS data dir
            errors.append(f"{directory}: {one_line(e)}")
            with contextlib.suppress(OSError):
                directory.parent.rmdir()  # only if empty
            continue
        if errors and str(directory) not in _FELL_BACK:  # once a process: a sweep's runs
            _FELL_BACK.add(str(directory))  # each read the set there
            print(
                f"note: cached features kept in {directory}, not beside the data "
                f"({'; '.join(errors)}): runs with another --out compute their own",
                file=sys.stderr,
            )
        return found, _info(found, reused=reused, started=t)
    print(
        f"warning: cannot write the cached features ({'; '.join(errors)}); "
        "training the head from the images instead (same results, slower)",
        file=sys.stderr,
    )
    return None, {"used": False, "reason": f"cannot write: {'; '.join(errors)}"}


_FELL_BACK: set[str] = set()
"""Feature folders this process said it kept in a run's --out, its data's folder failing
(a full disk, or read-only: said, where it went without a word)."""


def _info(found: FeatureSet, *, reused: bool, started: float) -> dict[str, Any]:
    return {
        "used": True,
        "directory": str(found.directory),
        "reused": reused,
        "seconds": time.perf_counter() - started,
        "extract_seconds": found.extract_seconds,
    }
