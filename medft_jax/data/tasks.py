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
  (example id, size, mtime, ctime) and a hash of the parsed examples (ids,
  labels, patients, split membership). ``prepare`` compares it and prepares
  again when the user's copy changed (TFDS itself would keep the old
  preparation); the new data is written beside the old and swapped in when
  complete, so a failed or killed prepare leaves the old data as it was.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import io
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
from medft_jax.errors import UserError, json_loads, one_line, os_errno_in, quiet_logger
from medft_jax.names import TASK_NAMES as TASK_NAMES  # the one list of the tasks' names

MANUAL_RECORD = "medft_manual_source.json"
"""In a prepared TFDS folder: the signature of the manual dir it was prepared from."""
STALE_MARK = "medft_stale.json"
"""In a prepared TFDS folder: its manual dir changed and preparing it again has not
finished (failed or killed). The data is kept (the copy may be put back, and then it
is reused), but not served: ``load`` says to prepare."""


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


def _empty_note(data_dir: str | Path) -> str:
    """`` (an empty folder: ...)`` where ``data_dir`` holds nothing (a mistyped
    ``--data-dir``, created by the command): the prepare command after it would prepare into
    the typo, where the data was prepared elsewhere."""
    try:
        empty = not any(Path(data_dir).expanduser().iterdir())
    except OSError:
        return ""
    return " (an empty folder: is it the --data-dir the data was prepared into?)" if empty else ""


def make_builder(name: str, data_dir: Path, *, skip_bad_images: bool = False, **config: Any):
    """The TFDS builder of task ``name`` for one config (see ``MedicalConfig.make``)."""
    from medft_jax.data.builders import builder_class
    from medft_jax.data.builders.base import MedicalConfig

    cls = builder_class(name)
    _check_options(name, config)
    builder_config = MedicalConfig.make(**config)
    # TFDS warns of the custom config and of a variant not prepared yet: both by design.
    with quiet_logger("absl", logging.ERROR), _damaged_prepared(name, data_dir, config):
        return cls(
            config=builder_config,
            data_dir=str(data_dir),
            file_format="array_record",
            skip_bad_images=skip_bad_images,
        )


@contextlib.contextmanager
def _damaged_prepared(
    name: str,
    data_dir: Path,
    config: dict[str, Any],
    split: str | None = None,
    version_dir: Path | None = None,
) -> Iterator[None]:
    """One line for prepared TFDS data that TFDS cannot read (a split file deleted or cut
    short, ``dataset_info.json`` edited or of another version): TFDS's and array_record's
    tracebacks (``RuntimeError``, ``AssertionError``, ``ValueError``, protobuf's
    ``ParseError``) reached the user, and ``prepare``, finding the folder prepared, did not
    prepare it again. A :class:`UserError` passes; where no prepared folder exists, the
    error is TFDS's own (a bug, not damaged data) and passes too; so do running out of
    memory and an OS error the command line explains (a full disk, permission denied).
    ``version_dir``: the folder read (a builder's, the new data a prepare writes beside the
    old), by default the variant's under ``data_dir``."""
    if version_dir is None:
        from medft_jax.data.builders import builder_class

        cls = builder_class(name)
        version_dir = Path(data_dir).expanduser() / cls.name / _variant(name, **config)
        version_dir = version_dir / str(cls.VERSION)
    try:
        yield
    except UserError:
        raise
    except Exception as err:
        # Not the data's: no folder (TFDS's own error), the host's memory, or the disk or
        # permissions refusing a read (one line from the handler, exit 1 or 2 as it is).
        if not version_dir.is_dir() or isinstance(err, MemoryError) or os_errno_in(err):
            raise
        what = f"its {split} split" if split else "it"
        raise DataError(
            f"{version_dir}: prepared data that cannot be read ({what}: "
            f"{type(err).__name__}: {one_line(str(err))[:200]}); delete that folder and "
            f"prepare again: {prepare_command(name, data_dir, **config)}"
        ) from None


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
    bc = builder.builder_config
    config = _config_kwargs(
        bc.resize_size, bc.crop_size, bc.seed, bc.val_fraction, bc.uncertain, bc.split_by
    )
    read = Path(builder.data_dir)  # a re-prepare's new data, beside the old: named as read
    for split in ("train", "val", "test"):
        with _damaged_prepared(builder.TASK.name, data_dir, config, split, read):
            source = builder.as_data_source(split)
            n = len(source)
        fields: dict[str, list[Any]] = {"labels": [], "ids": [], "groups": [], "patients": []}

        def chunks(
            source=source, n=n, fields=fields, split=split
        ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for start in range(0, n, chunk):
                with _damaged_prepared(builder.TASK.name, data_dir, config, split, read):
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
    files = cache.tree_stats(tfds_dir, exclude=(MANUAL_RECORD, STALE_MARK))
    return {"files": files, "tfds_dir": where}


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
    if (tfds_dir / STALE_MARK).is_file():
        return "its TFDS data no longer matches the manual dir it was prepared from"
    return cache.describe_change(old, tfds_source(tfds_dir, data_dir))


MANUAL_SIGNATURE = 2
"""The form of :func:`manual_source`'s record: 2 keys the files by example id and adds
ctime. A record without it (form 1: names relative to the --manual-dir given, no
ctime) is compared in its own form, and rewritten in this one when it still holds,
so that an upgrade does not prepare every task again."""


def manual_source(splits: dict[str, list[Example]]) -> dict[str, Any]:
    """The signature of a manual dir as parsed: image files' stats + a hash of the examples.

    Each file is named by its example's id (the path relative to the dataset's own
    root, as its listing gives it), not by its path relative to ``--manual-dir``: the
    outer folder and the inner one (``CheXpert-v1.0-small``, ``MURA-v1.1``), a
    symlink or ``.`` are one copy and must not prepare it again. The inode change
    time is part of it: a file replaced by one of the same size and mtime (``cp -p``,
    ``rsync -a``) changes nothing else, and would keep its old pixels.
    """
    files = []
    for members in splits.values():
        for ex in members:
            try:
                st = os.stat(ex.path)
                files.append([ex.id, st.st_size, st.st_mtime_ns, st.st_ctime_ns])
            except (FileNotFoundError, NotADirectoryError):
                files.append([ex.id, -1, -1, -1])
    return {
        "files": sorted(files),
        "examples": cache.examples_digest(splits),
        "signature": MANUAL_SIGNATURE,
    }


def _manual_change(
    recorded: dict[str, Any] | None,
    manual: dict[str, Any],
    manual_dir: Path,
    splits: dict[str, list[Example]],
) -> tuple[str | None, bool]:
    """``(why the prepared data no longer matches the manual dir or None, whether its
    record should be rewritten in the current form)``.

    A record of an older form is compared in that form (names relative to
    ``manual_dir``, no ctime): an unchanged copy keeps its prepared data, and its
    record is upgraded, rather than every task being prepared again after an update.
    """
    if recorded is None:
        return (
            "it has no record of the files it was prepared from (a prepare killed before "
            "writing it)",
            False,
        )
    if recorded.get("signature") == MANUAL_SIGNATURE:
        return cache.describe_change(recorded, manual), False
    paths = [ex.path for members in splits.values() for ex in members]
    old_form = {k: v for k, v in manual.items() if k != "signature"}
    old_form["files"] = cache.file_stats(manual_dir, paths)
    reason = cache.describe_change(recorded, old_form)
    return reason, reason is None


def _same_copy(
    recorded: dict[str, Any] | None,
    manual: dict[str, Any],
    manual_dir: Path,
    splits: dict[str, list[Example]],
) -> bool:
    """Whether only ``--skip-bad-images`` differs from the record: the prepared data is
    then still what that flag gives from this very copy, fine to serve until a prepare
    with the other setting completes."""
    if recorded is None:
        return False
    recorded = {k: v for k, v in recorded.items() if k != "skip_bad_images"}
    manual = {k: v for k, v in manual.items() if k != "skip_bad_images"}
    return _manual_change(recorded, manual, manual_dir, splits)[0] is None


def _read_manual_record(tfds_dir: Path) -> dict[str, Any] | None:
    try:
        record = json_loads((Path(tfds_dir) / MANUAL_RECORD).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _write_manual_record(tfds_dir: Path, record: dict[str, Any]) -> None:
    _write_json(Path(tfds_dir) / MANUAL_RECORD, record)


def _write_json(path: Path, record: dict[str, Any]) -> None:
    """``record`` at ``path``, whole or not at all (a temporary file renamed)."""
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
    scorable: bool = False,
) -> Path:
    """TFDS ``download_and_prepare`` from ``manual_dir``, then the cache; returns its dir.

    ``scorable``: refuse, before anything is written, a parse whose val or test split has
    a class of one label value (:func:`refuse_unscorable`), as ``experiments.prepare``
    does: what a run would refuse is not worth writing.
    """
    # --no-progress: TFDS's absl warnings held back too (is_prepared's, the cache's
    # decoder note), as its bars are, and TensorFlow's start-up lines; errors still show.
    if not progress:
        quiet_tensorflow_startup()
    quiet = contextlib.nullcontext() if progress else quiet_logger("absl", logging.ERROR)
    with quiet, _without_tfds_noise():
        return _prepare_task(
            name,
            manual_dir=manual_dir,
            data_dir=data_dir,
            config=_config_kwargs(resize_size, crop_size, seed, val_fraction, uncertain, split_by),
            skip_bad_images=skip_bad_images,
            progress=progress,
            scorable=scorable,
        )


def _prepare_task(
    name: str,
    *,
    manual_dir: Path,
    data_dir: Path,
    config: dict[str, Any],
    skip_bad_images: bool,
    progress: bool,
    scorable: bool = False,
) -> Path:
    """:func:`prepare_task`'s work, with ``config`` from :func:`_config_kwargs`."""
    _check_options(name, config)
    from medft_jax.data.builders.base import refuse_packed

    manual_dir = Path(manual_dir).expanduser()
    refuse_packed(manual_dir)
    if not manual_dir.is_dir():
        raise DataError(f"--manual-dir {manual_dir} is not a directory")
    manual_dir = manual_dir.absolute()  # TFDS parses it again, maybe from another cwd
    builder = make_builder(name, data_dir, skip_bad_images=skip_bad_images, **config)
    # Before TF work. With --skip-bad-images a file the listing cannot read (a truncated
    # .mat) is left out here as the builder will leave it out, not an error.
    skipped: list[str] | None = [] if skip_bad_images else None
    splits = builder.TASK.parse_checked(manual_dir, builder.builder_config, skipped=skipped)
    if scorable:
        refuse_unscorable(name, builder.TASK, splits)  # before anything is written
    manual = manual_source(splits)
    if skip_bad_images:  # other data than a strict prepare's: said only when set, so that
        manual["skip_bad_images"] = True  # records written before it stay fresh
    version_dir = Path(builder.data_dir)
    target = cache_dir(data_dir, name, _variant(name, **config))
    if not builder.is_prepared():
        _require_tensorflow(name)  # before the lock's folders are made

    def waiting() -> None:
        print(
            f"{name}: another process is preparing {version_dir}; waiting for it (its data "
            "is then checked and reused)",
            file=sys.stderr,
            flush=True,
        )

    fresh = False
    # A second prepare waits, then reuses.
    with locks.waiting_lock(prepare_lock(version_dir), waiting):
        atomic.remove_abandoned(version_dir)  # killed prepares' new data, unfinished
        _remove_incomplete(version_dir)
        # Made again under the lock: the one made before it saw the folder as it was then,
        # and a prepare that finished meanwhile left it reading splits it never loaded.
        builder = make_builder(name, data_dir, skip_bad_images=skip_bad_images, **config)
        reason, same_copy = None, True
        if builder.is_prepared():
            recorded = _read_manual_record(version_dir)
            reason, upgrade = _manual_change(recorded, manual, manual_dir, splits)
            if upgrade:
                _write_manual_record(version_dir, manual)
            if reason is None:
                (version_dir / STALE_MARK).unlink(missing_ok=True)  # the copy was put back
            else:
                same_copy = _same_copy(recorded, manual, manual_dir, splits)
        fresh = not reason and builder.is_prepared()
        if not fresh:
            _require_tensorflow(name)  # before the old data is marked
            if reason:
                print(  # every process: this host's prepared copy, not the job's
                    f"{name} prepared data {version_dir} is stale: {reason}; preparing again",
                    file=sys.stderr,
                    flush=True,
                )
            if not same_copy:
                # Its images are no longer the copy's: kept until the new data is complete,
                # but not served (its cache goes now) should this prepare fail or be killed.
                _write_json(version_dir / STALE_MARK, {"reason": reason})
                cache.retire(target)
            _prepare_beside(
                name, version_dir, target, manual_dir, manual, data_dir, skip_bad_images,
                config, progress=progress,
            )  # fmt: skip
            builder = make_builder(name, data_dir, skip_bad_images=skip_bad_images, **config)
    if fresh:  # a second prepare printed the first's summary alone: was anything done?
        print(
            f"{name}: already prepared in {version_dir} from this copy of the data; reused",
            file=sys.stderr,
            flush=True,
        )
    _ensure_cache(name, builder, target, data_dir, progress=progress)
    return target


def refuse_unscorable(name: str, task: Any, splits: dict[str, list[Example]]) -> None:
    """:meth:`Dataset.check_scorable` on the parse, in its words: a val or test split
    lacking a class was refused only after its data was written (and left). Decoding
    with ``--skip-bad-images`` can still take a class away: the loaded data is checked
    again."""
    from medft_jax.data.dataset import find_unscorable, unscorable_message
    from medft_jax.data.examples import labels_of

    n = len(task.class_names)
    labels = {s: labels_of(members, task.multilabel, n) for s, members in splits.items()}
    gap = find_unscorable(labels, n, task.multilabel)
    if gap is None:
        return
    ds = Dataset(name, {}, tuple(task.class_names), multilabel=task.multilabel)
    raise DataError(
        unscorable_message(name, gap, task.class_names, task.multilabel)
        + ds._scorable_hint(gap, labels)
    )


def _prepare_beside(
    name: str,
    version_dir: Path,
    target: Path,
    manual_dir: Path,
    manual: dict[str, Any],
    data_dir: Path,
    skip_bad_images: bool,
    config: dict[str, Any],
    *,
    progress: bool,
) -> None:
    """TFDS prepares into a temporary data dir beside ``version_dir``, then it is swapped in.

    Why not in place: the old prepared data is good until the new is complete. A
    prepare that fails (a bad image without ``--skip-bad-images``, a full disk) or is
    killed leaves it, and its cache, as they were; the temporary folder is removed
    (by :func:`medft_jax.atomic.remove_abandoned` when killed). Call with the lock held.
    """
    import tensorflow_datasets as tfds

    scratch = atomic.temporary_sibling(version_dir)
    try:
        builder = make_builder(name, scratch, skip_bad_images=skip_bad_images, **config)
        try:
            with _tfds_progress(progress):
                builder.download_and_prepare(
                    download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)),
                )
        except Exception as e:
            _raise_naming_output(e, version_dir)
            raise
        new = Path(builder.data_dir)
        _write_manual_record(new, manual)
        # The cache first: built from the old data, it must not outlive it.
        cache.retire(target)
        old = atomic.temporary_sibling(version_dir) if version_dir.exists() else None
        if old is not None:
            os.replace(version_dir, old)  # set aside whole, removed once the new is in
        os.replace(new, version_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _raise_naming_output(err: Exception, version_dir: Path) -> None:
    """A full disk (or quota) while TFDS writes, as an OSError naming the output folder.

    TFDS and ArrayRecord report it without a path (their text names the errno at
    most), and "?: no space left on the device" does not say which disk to clear.
    """
    code = os_errno_in(err)
    if code in (errno.ENOSPC, errno.EDQUOT):
        raise OSError(code, os.strerror(code), str(version_dir)) from err


def _remove_incomplete(version_dir: Path) -> None:
    """Removes TFDS's ``incomplete.*`` folders of ``version_dir`` left by killed prepares.

    TFDS writes into ``incomplete.<random>_<version>`` beside the version folder and
    renames it when done; a prepare killed before (this toolkit's older ones wrote
    there) leaves it for ever. Call with the prepare lock held: no live prepare of
    this version writes there then.
    """
    parent = Path(version_dir).parent
    if not parent.is_dir():
        return
    pattern = f"incomplete.*_{glob.escape(Path(version_dir).name)}"
    for leftover in parent.glob(pattern):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)


TF_QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}
"""The environment that keeps TensorFlow's C++ start-up lines (CPU features, oneDNN)
off stderr. TensorFlow only encodes and decodes the TFDS images here (integer work,
the same with or without oneDNN), so its note of oneDNN's float round-off says
nothing about this toolkit's numbers."""


def quiet_tensorflow_startup() -> None:
    """Sets :data:`TF_QUIET_ENV` where the user has not, for a TensorFlow imported later
    (TFDS imports it lazily, at the first encoded example); one already imported keeps
    its lines."""
    for key, value in TF_QUIET_ENV.items():
        os.environ.setdefault(key, value)


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
        # Its "Downloading and preparing ... to <temporary folder>" lines are printed.
        with quiet_logger("absl", logging.ERROR), contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tqdm_utils.display_progress_bar(before)


TFDS_NOISE = ("Variant folder ", "OpenCV is not installed")
"""Starts of TFDS's absl warnings that say nothing to a user of this toolkit: a variant
not prepared yet has no ``dataset_info.json`` by design (printed before the one-line error
of a prepare without TensorFlow, and twice in every first prepare), and the cache's
decoding of the prepared PNGs with Pillow, which being lossless read alike by any decoder."""


class _NoiseFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(TFDS_NOISE)


@contextlib.contextmanager
def _without_tfds_noise() -> Iterator[None]:
    """:data:`TFDS_NOISE` held back while a task prepares; TFDS's other lines are kept."""
    logger, noise = logging.getLogger("absl"), _NoiseFilter()
    logger.addFilter(noise)
    try:
        yield
    finally:
        logger.removeFilter(noise)


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
        if not progress:
            quiet_tensorflow_startup()
        # TFDS warns of its custom config and a missing variant: a run says one line.
        with quiet_logger("absl", logging.ERROR):
            builder = make_builder(name, data_dir, **config)
            prepared = builder.is_prepared()
        if not prepared:
            raise DataError(
                f"{name} ({_variant(name, **config)}) is not prepared in {data_dir}"
                f"{_empty_note(data_dir)}; run: " + prepare_command(name, data_dir, **config)
            )
        version_dir = Path(builder.data_dir)
        if (version_dir / STALE_MARK).is_file():
            if locks.held_elsewhere(prepare_lock(version_dir)):
                raise DataError(
                    f"{name} ({_variant(name, **config)}) in {data_dir}: another prepare is "
                    f"preparing {version_dir} again now, from a copy of the data that differs "
                    "from the one it was made from; run this again when it has finished"
                )
            raise DataError(
                f"{name} ({_variant(name, **config)}) is not prepared in {data_dir}: the data "
                f"in {version_dir} no longer matches its manual dir and preparing it again "
                "did not finish; run: " + prepare_command(name, data_dir, **config)
            )
        with _without_tfds_noise():  # the cache decodes with Pillow: no "OpenCV" warning
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
