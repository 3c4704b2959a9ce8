"""The per-(dataset, resize) preprocessed cache: plain ``.npy`` files, memmapped back.

Layout of a finished cache directory::

    <dir>/meta.json                dataset facts (class names, multilabel, counts, ...)
    <dir>/<split>_images.npy       uint8 (N, crop, crop, 3)
    <dir>/<split>_labels.npy       int32 (N,) or float32 (N, C)
    <dir>/<split>_ids.npy          str (N,)
    <dir>/<split>_groups.npy       str (N,)   evaluation unit
    <dir>/<split>_patients.npy     str (N,)   split-disjointness unit

Why plain arrays: one sorted fancy-index gather of a batch from a memmap
reads ~37,000 images/s on a 2-core host, against ~1,600 for per-example
ArrayRecord reads (see the datasets spec); the page cache does the rest.

Why it cannot look finished while half-written: everything is written into
``.<dir>.tmp-<pid>@<host>-<random>`` and the directory is renamed to
``<dir>`` as the last step (atomic on one filesystem). A crash leaves only
that temporary directory, removed by the next writer on the host once its
process is gone (never one another live process is writing);
``<dir>`` existing means complete.
All files load with ``allow_pickle=False``.

What a cache was built from is in ``meta.json`` too, so a changed source is
never served from an old cache: ``source`` holds a cheap signature (the
source files' relative names, sizes and mtimes, and facts such as the class
list; see :func:`stale_reason`), checked on every load by the source, which
rebuilds with one line saying why when it differs. ``fingerprint`` is a
SHA-256 of the prepared bytes (images, labels, ids, groups, patients per
split, class names, multilabel, grouping; :func:`fingerprint_of`), computed
once as the cache is written: the data's identity in a run's record. It
never holds mtimes or paths, so it is the same for the same data anywhere.
A cache without either (written before they existed) is stale and rebuilt.
Since the fingerprint is computed once, ``meta.json`` also keeps each array
file's size and mtime as written, checked on every read: an array file changed
in place (other pixels under the old identity) is refused, a truncated one is
one line, and one merely copied (new mtimes) is hashed once against the
recorded per-split digests (:func:`_check_unchanged`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob
import hashlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from medft_jax import atomic
from medft_jax.data.arrays import ArraySplit, file_identity
from medft_jax.data.errors import DataError
from medft_jax.data.locations import user_cache_base
from medft_jax.errors import UserError, bars_hidden, json_loads, note, one_line

META = "meta.json"
FIELDS = ("labels", "ids", "groups", "patients")
FINGERPRINT_FORMAT = 1
"""Bumped if :func:`fingerprint_of`'s definition changes (it is part of what is hashed)."""

ImageChunks = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]
"""Yields ``(images, kept)`` chunks in example order: ``kept`` is a bool mask over the
chunk's examples (False = a bad image skipped) and ``images`` the uint8
``(kept.sum(), H, W, 3)`` images of the kept ones."""


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """What :func:`write_cache` writes for one split.

    ``num_examples`` is the count before skipping bad images; ``fields``
    holds the small per-example arrays of :data:`FIELDS` (filtered to the
    kept examples on write) or a callable returning them; ``chunks()`` streams the images, so memory
    stays bounded by one chunk whatever the split's size.
    """

    num_examples: int
    image_shape: tuple[int, int, int]
    chunks: ImageChunks
    fields: dict[str, np.ndarray] | Callable[[], dict[str, np.ndarray]]
    """The arrays, or a callable giving them once ``chunks()`` has run (sources
    that read labels and images from the same records fill them as they go)."""


def is_complete(cache_dir: Path) -> bool:
    """True when ``cache_dir`` is a finished cache (it only exists once finished)."""
    return (Path(cache_dir) / META).is_file()


def remove_stale(cache_dir: Path) -> None:
    """Removes the leftovers of interrupted writes of ``cache_dir`` and of the other caches
    beside it (killed writers' only: another process may be writing one right now)."""
    cache_dir = Path(cache_dir)
    # Every variant's in the folder: a killed build of another size or seed, which may
    # never be built again, held its whole preallocated images file there for good.
    atomic.remove_abandoned(cache_dir, siblings=True)
    if cache_dir.parent.is_dir():  # an old cache set aside to be deleted: nobody reads it
        for old in cache_dir.parent.glob(f"{glob.escape(cache_dir.name)}.tmp-old-*"):
            shutil.rmtree(old, ignore_errors=True)


def retire(cache_dir: Path) -> None:
    """Removes the finished cache ``cache_dir`` whole (a reader sees it or nothing), when
    what it was built from is being replaced."""
    old = _set_aside(Path(cache_dir))
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _set_aside(cache_dir: Path) -> Path | None:
    """Renames ``cache_dir`` to a ``.tmp-old-`` sibling (:func:`remove_stale` deletes a
    killed process's); returns it, or None when there was none (or another process
    moved it first)."""
    old = cache_dir.with_name(f"{cache_dir.name}.tmp-old-{uuid.uuid4().hex[:8]}")
    try:
        cache_dir.rename(old)
    except FileNotFoundError:
        return None
    return old


def write_cache(
    cache_dir: Path,
    splits: dict[str, SplitPlan],
    meta: dict[str, Any],
    *,
    progress: bool = True,
    late: Callable[[], Mapping[str, Any]] | None = None,
) -> Path:
    """Writes a cache atomically (replacing a stale one) and returns its directory.

    ``meta`` (JSON-able dataset facts, with ``class_names`` and
    ``multilabel``, and ``source``: what the cache is built from) is stored in
    ``meta.json`` with the per-split counts, the ids of skipped bad images
    (added to any ``meta["skipped_bad_images"][split]`` already skipped
    upstream) and the content ``fingerprint``, hashed as the arrays are
    written. A split left with no examples is an error naming it. ``late``: facts known
    only once every image is read (a hash of the decoded images), added to ``meta`` then.
    """
    cache_dir = Path(cache_dir)
    remove_stale(cache_dir)
    made = _missing_parents(cache_dir)
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic.temporary_sibling(cache_dir)
    tmp.mkdir()
    try:
        counts, skipped, digests, by_image = {}, {}, {}, {}
        for name, plan in splits.items():
            kept, images_digest, each = _write_images(
                tmp / f"{name}_images.npy", name, plan, progress
            )
            if not kept.any():
                raise DataError(f"split {name!r} came out empty")
            fields = plan.fields() if callable(plan.fields) else plan.fields
            written = {}
            for field in FIELDS:
                array = np.asarray(fields[field])
                if len(array) != plan.num_examples:
                    raise DataError(
                        f"split {name!r}: {field} has {len(array)} rows, "
                        f"expected {plan.num_examples}"
                    )
                written[field] = array[kept]
                np.save(tmp / f"{name}_{field}.npy", written[field], allow_pickle=False)
            digests[name] = _split_digest(
                [int(kept.sum()), *plan.image_shape], images_digest, written
            )
            counts[name] = int(kept.sum())
            labels = [np.asarray(row).tobytes() for row in written["labels"]]
            by_image[name] = list(zip(each, map(str, written["ids"]), labels, strict=True))
            earlier = list(meta.get("skipped_bad_images", {}).get(name, []))
            skipped[name] = earlier + [str(i) for i in np.asarray(fields["ids"])[~kept]]
            if name == "train" and skipped[name]:
                check_classes_left(written["labels"], meta, len(skipped[name]))
        meta = {
            **meta,
            **(late() if late is not None else {}),
            "splits": list(counts),
            "counts": counts,
            "skipped_bad_images": skipped,
            "fingerprint": _combine(digests, meta),
            "split_digests": digests,
            "file_stats": _file_stats(tmp, list(counts)),
            "duplicates": leaked_duplicates(by_image, multilabel=bool(meta.get("multilabel"))),
        }
        (tmp / META).write_text(json.dumps(meta, indent=1, sort_keys=True))
        _swap_in(tmp, cache_dir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:  # innermost first; one another writer filled stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(e, OSError) and e.filename is None:  # numpy's writes name no file
            raise OSError(e.errno, e.strerror, str(cache_dir)) from e
        raise
    return cache_dir


def leaked_duplicates(
    by_image: Mapping[str, Sequence[tuple[bytes, str, bytes]]], *, multilabel: bool = False
) -> dict[str, Any]:
    """Images pixel-identical (after preprocessing) to another the scores depend on.

    ``by_image``: split -> [(image hash, id, label bytes), ...]. Returns, each only when
    found: ``{split: count, "example": [eval id, train id]}`` for ``val``/``test``
    images that copy a training image of the same label (a copy in the test split
    inflates its score, and byte-identical copies under two names are common in
    collected data; a copy under another label does not inflate it, a model that
    learnt the training image scores it wrong, and ``two_labels`` names it);
    ``"eval_repeats": [count, "id = id"]``, val/test images that copy another val/test
    image and no training image (each counts more than once); ``"two_labels": [count,
    "id = id"]``, pixel contents seen under different labels, in any splits (one is
    mislabelled, or the classes cannot be told apart by the pixels).

    ``multilabel``: a copy counts under any label vector. Each label is a task of its
    own, and every label the copy agrees on with the training image (most of them: the
    findings both lack) is scored on an image the model trained on; one differing label
    made the copy, and its inflation, unsaid.
    """
    train: dict[bytes, dict[bytes, str]] = {}  # image hash -> label -> a training id
    for h, i, label in by_image.get("train", ()):
        train.setdefault(h, {}).setdefault(label, i)

    def source(h: bytes, label: bytes) -> str | None:
        known = train.get(h, {})
        if label in known:
            return known[label]
        return min(known.values()) if multilabel and known else None

    out: dict[str, Any] = {}
    for split in ("val", "test"):
        same = [
            (i, found)
            for h, i, label in by_image.get(split, ())
            if (found := source(h, label)) is not None
        ]
        if same:
            out[split] = len(same)
            out.setdefault("example", list(min(same)))
    if any(split in out for split in ("val", "test")):
        out["copies_rule"] = COPIES_RULE
    first_eval: dict[bytes, str] = {}
    repeats = []
    for split in ("val", "test"):
        for h, i, _ in by_image.get(split, ()):
            if h in train:  # a copy of a training image: counted above, or two_labels's
                continue
            if h in first_eval:
                repeats.append([first_eval[h], i])
            else:
                first_eval[h] = i
    if repeats:
        out["eval_repeats"] = [len(repeats), " = ".join(min(repeats))]
    labelled: dict[bytes, tuple[bytes, str]] = {}
    conflicts: dict[bytes, list[str]] = {}
    for split in sorted(by_image):
        for h, i, label in by_image[split]:
            seen = labelled.setdefault(h, (label, i))
            if seen[0] != label and h not in conflicts:
                conflicts[h] = [seen[1], i]
    if conflicts:
        out["two_labels"] = [len(conflicts), " = ".join(min(conflicts.values()))]
    return out


COPIES_RULE = "same_label"
"""What a cache's copy counts count (``duplicates["copies_rule"]``): val/test images
pixel-identical to a training image of their own label. Caches built before 2026-12-06
counted copies under any label, and carry no rule (:func:`copies_rule`)."""


def copies_rule(meta: Mapping[str, Any]) -> str | None:
    """The rule a cache's copy counts follow; None for one built before the rule (copies
    under any label counted, a copy under another label deflating rather than inflating)."""
    found = meta.get("duplicates") or {}
    return found.get("copies_rule") if isinstance(found, Mapping) else None


def duplicate_counts(meta: Mapping[str, Any]) -> dict[str, int]:
    """``{split: n}`` of a cache's val/test images that are copies of training images
    (:func:`leaked_duplicates`); empty when none, or for a cache that predates the check."""
    found = meta.get("duplicates") or {}
    if not isinstance(found, Mapping):
        return {}
    return {k: int(found[k]) for k in ("val", "test") if found.get(k)}


def note_duplicates(where: str | Path, meta: Mapping[str, Any]) -> None:
    """One note line when evaluation images are copies of training images: said at every
    load (of the user's folders, the paper tasks and MedMNIST alike), since the numbers of
    every run on this data carry it; a run's record keeps the counts too."""
    counts = duplicate_counts(meta)
    if counts:
        each = ", ".join(f"{n} in {split}" for split, n in counts.items())
        example = " = ".join(meta["duplicates"].get("example", []))
        note(
            f"note: {where}: images pixel-identical to a training image after preprocessing: "
            f"{each} (e.g. {example}); they inflate validation/test scores, remove them"
        )
    found = meta.get("duplicates") if isinstance(meta.get("duplicates"), Mapping) else {}
    for key, template in _OTHER_COPIES.items():
        note_found(where, found.get(key), template)


def note_found(where: str | Path, found: Any, template: str) -> None:
    """One note line, at every load, for a finding a cache's meta keeps as ``[count,
    example]`` (``template`` takes ``{n}`` and ``{example}``); nothing for an older cache
    that lacks it."""
    if isinstance(found, list) and len(found) == 2:
        n, example = found
        note(f"note: {where}: {template.format(n=n, example=example)}")


_OTHER_COPIES = {
    "eval_repeats": "{n} val/test image(s) pixel-identical after preprocessing to another "
    "val/test image; each counts more than once in the scores (e.g. {example})",
    "two_labels": "{n} image(s) pixel-identical after preprocessing to one of another label; "
    "one of each is mislabelled, or the pixels cannot tell the classes apart (e.g. {example})",
}
"""The notes of :func:`leaked_duplicates`' other findings, said at every load."""


def _missing_parents(cache_dir: Path) -> list[Path]:
    """The folders above ``cache_dir`` that do not exist yet, innermost first.

    A failed write removes them again (when still empty): nothing half-made
    is left for the user to wonder about.
    """
    missing = []
    for folder in cache_dir.parents:
        if folder.exists():
            break
        missing.append(folder)
    return missing


def check_classes_left(labels: np.ndarray, meta: dict[str, Any], n_skipped: int) -> None:
    """Refuses a single-label training split that skipping bad images left without a class.

    The labels were checked before decoding (every class in train,
    :func:`medft_jax.data.examples.validate`); a class whose images were all
    corrupt would otherwise train a model that can never predict it, with
    nothing said but a count.
    """
    names = meta.get("class_names") or []
    if meta.get("multilabel") or not names:
        return
    seen = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(names))
    missing = [c for c, count in zip(names, seen, strict=False) if count == 0]
    if missing:
        raise DataError(
            f"class {missing[0]!r} has no training images left after skipping {n_skipped} bad "
            "image(s) (--skip-bad-images); repair or replace its files"
        )


def skipped_counts(meta: dict[str, Any]) -> dict[str, int]:
    """``{split: n}`` of the bad images a cache skipped, splits with none left out."""
    skipped = meta.get("skipped_bad_images") or {}
    return {k: len(v) for k, v in skipped.items() if v} if isinstance(skipped, dict) else {}


def skipped_note(meta: dict[str, Any], limit: int = 10) -> str | None:
    """One ``note:`` line naming the images a cache skipped as bad (``--skip-bad-images``),
    each with its split, the first ``limit`` named and the rest counted; None for none.

    Why name them: a count alone ("skipped bad images: 5") hides that all five were one
    class's, and the user cannot look at the files; every name stays in the cache's
    metadata (``skipped_bad_images``)."""
    skipped = meta.get("skipped_bad_images") or {}
    if not isinstance(skipped, dict):
        return None
    named = [
        f"{name} ({split})"
        for split, names in skipped.items()
        if isinstance(names, list)
        for name in names
    ]
    if not named:
        return None
    more = f" and {len(named) - limit} more" if len(named) > limit else ""
    return (
        f"note: --skip-bad-images skipped {len(named)} bad image(s): "
        f"{', '.join(named[:limit])}{more}"
    )


def _swap_in(tmp: Path, cache_dir: Path) -> None:
    """Renames the finished ``tmp`` to ``cache_dir``, moving a stale one aside first.

    A reader holding the old arrays memmapped keeps them (the files live on
    until unmapped). If another writer swaps in at the same moment, one of
    the two finished caches wins; both were built from the same source.
    """
    old = _set_aside(cache_dir) if cache_dir.exists() else None
    try:
        tmp.rename(cache_dir)
    except OSError:
        if not is_complete(cache_dir):  # not a concurrent writer finishing first
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_images(
    path: Path, name: str, plan: SplitPlan, progress: bool
) -> tuple[np.ndarray, str, list[bytes]]:
    """Streams a split's images into ``path``; returns the kept-mask, the images' SHA-256
    and each kept image's own short hash (for :func:`leaked_duplicates`)."""
    n = plan.num_examples
    if n == 0:
        raise DataError(f"split {name!r} came out empty")
    shape = tuple(plan.image_shape)
    # The header and the file's size; the rows are then written with pwrite, not through
    # the memory map: every page written through a map stayed mapped, and the build's
    # resident memory grew with the split (1.8 GB for 15,000 224 px images).
    offset = np.lib.format.open_memmap(path, "w+", np.uint8, (n, *shape)).offset
    reserve_space(path)
    row = int(np.prod(shape))
    masks = []
    start = 0
    digest = hashlib.sha256()
    each: list[bytes] = []
    fd = os.open(path, os.O_WRONLY)
    try:
        with tqdm(
            total=n, desc=f"caching {name}", unit="img", disable=bars_hidden(progress)
        ) as bar:
            for chunk, kept in plan.chunks():
                contiguous = np.ascontiguousarray(chunk, dtype=np.uint8)
                if contiguous.shape[1:] != shape or start + len(contiguous) > n:
                    raise ValueError(
                        f"split {name!r}: a chunk of shape {contiguous.shape} at row {start} "
                        f"does not fit {n} images of shape {shape}"
                    )
                try:
                    _write_at(fd, contiguous, offset + start * row)
                except OSError as e:  # pwrite names no file: the one written, not the cache
                    raise OSError(e.errno, e.strerror, str(path)) from e
                digest.update(contiguous.data)
                each += [
                    hashlib.blake2b(image.data, digest_size=16).digest() for image in contiguous
                ]
                start += len(contiguous)
                masks.append(np.asarray(kept, dtype=bool))
                bar.update(len(kept))
        os.fsync(fd)  # written before the cache is swapped in, as the map's flush did
    finally:
        os.close(fd)
    kept = np.concatenate(masks) if masks else np.zeros(0, bool)
    if len(kept) != n or kept.sum() != start:
        raise DataError(f"split {name!r}: the image stream covered {len(kept)} of {n} examples")
    if start < n:
        _shrink_npy(path, start)
    return kept, digest.hexdigest(), each


def _write_at(fd: int, array: np.ndarray, position: int) -> None:
    """Writes ``array``'s bytes at ``position`` of ``fd``, all of them (pwrite may write
    fewer: a signal, a pipe-like filesystem)."""
    if not array.size:  # every image of a chunk skipped
        return
    view = memoryview(array.reshape(-1))
    while view:
        written = os.pwrite(fd, view, position)
        view, position = view[written:], position + written


def reserve_space(path: Path) -> None:
    """Allocates a freshly created (sparse) file's blocks now, so a full disk is an OSError.

    A sparse file's blocks are allocated only as they are written (and a
    page of a memory map the filesystem cannot back is a SIGBUS that kills
    the process without a word). Reserving the blocks first turns a full
    disk into ``OSError(ENOSPC)`` naming the file, before any image is
    decoded for it. Filesystems that cannot preallocate are left as they are.
    """
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(e.errno, os.strerror(e.errno), str(path)) from None
        # EOPNOTSUPP, EINVAL: no preallocation here; the memory map still works.
    finally:
        os.close(fd)


def read_npy_header(f: Any) -> tuple[tuple[int, ...], bool, np.dtype, tuple[int, int]]:
    """``(shape, fortran_order, dtype, format version)`` of the ``.npy`` file object ``f``,
    read from its header alone (``f`` left at the data's first byte)."""
    version = np.lib.format.read_magic(f)
    read = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    return (*read(f), version)


def _shrink_npy(path: Path, rows: int) -> None:
    """Rewrites an ``.npy`` header in place to ``rows`` rows and truncates the file.

    The header is padded to a fixed length, and a smaller row count never
    needs more digits, so the data offset stays where it was.
    """
    with open(path, "r+b") as f:
        shape, fortran, dtype, version = read_npy_header(f)
        offset = f.tell()
        header = repr(
            {
                "descr": np.lib.format.dtype_to_descr(dtype),
                "fortran_order": fortran,
                "shape": (rows, *shape[1:]),
            }
        )
        prefix = 10 if version == (1, 0) else 12
        room = offset - prefix
        f.seek(prefix)
        f.write(header.ljust(room - 1).encode("latin1") + b"\n")
        f.truncate(offset + rows * int(np.prod(shape[1:])) * dtype.itemsize)


def read_cache(cache_dir: Path) -> tuple[dict[str, ArraySplit], dict[str, Any]]:
    """Memmaps a finished cache: ``({split: ArraySplit}, meta)``."""
    cache_dir = Path(cache_dir)
    if not is_complete(cache_dir):
        raise DataError(f"{cache_dir} is not a finished dataset cache (no {META})")
    meta = read_meta(cache_dir)
    if isinstance(meta.get("source"), dict) and isinstance(meta["source"].get("files"), list):
        meta["source"] = {**meta["source"], "files": len(meta["source"]["files"])}
    splits = {}
    for name in meta["splits"]:
        images = _load(cache_dir, f"{name}_images.npy", mmap_mode="r")
        fields = {f: _load(cache_dir, f"{name}_{f}.npy") for f in FIELDS}
        splits[name] = ArraySplit(images=images, **fields)
    _check_unchanged(cache_dir, meta, splits)
    return splits, meta


def _load(cache_dir: Path, name: str, mmap_mode: str | None = None) -> np.ndarray:
    """One array file of a cache; a missing, truncated or garbled one is one line."""
    path = cache_dir / name
    try:
        if mmap_mode is None:
            return np.load(path, allow_pickle=False)
        before = os.stat(path)
        array = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
        if isinstance(array, np.memmap) and file_identity(os.stat(path)) == file_identity(before):
            # The file mapped (unchanged across the open): a worker process re-opening it by
            # name checks it is still this one (medft_jax.data.pipeline._BatchSource).
            array.file_identity = file_identity(before)  # type: ignore[attr-defined]
        return array
    except (OSError, ValueError, EOFError) as err:
        raise DataError(
            f"{path}: damaged dataset cache file ({one_line(err)}); delete {cache_dir} to "
            "rebuild it"
        ) from None


def _file_stats(cache_dir: Path, splits: Sequence[str]) -> dict[str, list[int]]:
    """Each array file's ``[size, mtime_ns, ctime_ns]``, as written.

    The inode change time because a copy written over a file in place keeping its size
    and mtime (``cp -p``, ``touch -r``) keeps its inode too: only the ctime, which no
    tool sets back, shows it.
    """
    out = {}
    for name in splits:
        for kind in ("images", *FIELDS):
            st = os.stat(cache_dir / f"{name}_{kind}.npy")
            out[f"{name}_{kind}.npy"] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    return out


def _check_unchanged(
    cache_dir: Path, meta: dict[str, Any], splits: Mapping[str, ArraySplit]
) -> None:
    """Refuses array files changed since the cache was written: the data's fingerprint is
    the one computed then, so changed pixels would train under the old data's identity
    (a second seed on other data, averaged with the first as one table cell).

    Size, mtime and ctime as written: nothing to read. A file of another mtime or ctime
    (a copy made with or without keeping times, a restore, a chmod) is hashed again, and
    its split's digest must be the recorded one; the new times are then recorded, so that
    happens once. A cache the user
    cannot write (a lab's shared copy) keeps them in the user's own record instead
    (:func:`_checked_record`), so it too is hashed once, not on every load. Caches
    written before the stats were recorded are read as they are.
    """
    stats, digests = meta.get("file_stats"), meta.get("split_digests")
    if not isinstance(stats, dict) or not isinstance(digests, dict):
        return
    try:
        record: Path | None = _checked_record(cache_dir, meta)
    except UserError:  # no user cache (HOME=/ in a container): no record, hashed again
        record = None
    checked = {} if record is None else _read_checked(record)
    moved = {}
    for name, split in splits.items():
        now = _file_stats(cache_dir, [name])
        changed = [f for f, st in now.items() if stats.get(f) != st and checked.get(f) != st]
        if not changed:
            continue
        resized = [f for f in changed if not stats.get(f) or stats[f][0] != now[f][0]]
        if resized or _digest_of(split) != digests.get(name):
            how = f"the size of {resized[0]}" if resized else "their contents"
            raise DataError(
                f"{cache_dir}: the {name} split's files changed since the cache was written "
                f"({how}), so the data's recorded fingerprint no longer holds; delete "
                f"{cache_dir} to rebuild it"
            )
        moved.update(now)
    if moved:
        try:
            update_meta(cache_dir, {"file_stats": {**stats, **moved}})
            meta["file_stats"] = {**stats, **moved}
        except OSError:  # a read-only shared cache: the check is kept in the user's record
            if record is None:
                return
            with contextlib.suppress(OSError):
                text = json.dumps({"cache": str(cache_dir), "file_stats": {**checked, **moved}})
                atomic.write_bytes(record, text.encode())


def _checked_record(cache_dir: Path, meta: Mapping[str, Any]) -> Path:
    """Where the user keeps the array files' stats checked against a cache they cannot write:
    one file per cache folder and data fingerprint, under :func:`user_cache_base`. The
    stats are trusted as ``meta.json``'s are: a file of these size and times hashed to the
    recorded digest."""
    key = hashlib.sha256(
        f"{Path(cache_dir).resolve()}\0{meta.get('fingerprint', '')}".encode()
    ).hexdigest()[:32]
    return user_cache_base() / "checked_caches" / f"{key}.json"


def _read_checked(record: Path) -> dict[str, Any]:
    """The stats :func:`_check_unchanged` kept in ``record``; none when absent or unreadable."""
    try:
        stats = json_loads(record.read_text()).get("file_stats")
    except (OSError, ValueError, AttributeError):
        return {}
    return stats if isinstance(stats, dict) else {}


def _digest_of(split: ArraySplit, chunk: int = 1024) -> dict[str, Any]:
    """:func:`_split_digest` of a split read back (what :func:`write_cache` recorded)."""
    fields = {f: np.asarray(getattr(split, f)) for f in FIELDS}
    return _split_digest(list(split.images.shape), _images_sha(split.images, chunk), fields)


def _images_sha(images: np.ndarray, chunk: int = 1024) -> str:
    digest = hashlib.sha256()
    for start in range(0, len(images), chunk):
        part = np.asarray(images[start : start + chunk])
        digest.update(np.ascontiguousarray(part, dtype=np.uint8).data)
    return digest.hexdigest()


def chunked(array: np.ndarray, chunk: int = 256) -> ImageChunks:
    """:data:`ImageChunks` over an in-memory (or memmapped) array, nothing skipped."""

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(array), chunk):
            part = np.asarray(array[start : start + chunk])
            yield part, np.ones(len(part), dtype=bool)

    return chunks


def read_meta(cache_dir: Path) -> dict[str, Any]:
    """The full ``meta.json`` of a finished cache (unreadable JSON is one line naming it)."""
    path = Path(cache_dir) / META
    try:
        meta = json_loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable cache metadata ({err}); delete {cache_dir}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: unreadable cache metadata; delete {cache_dir}")
    return meta


def update_meta(cache_dir: Path, changes: Mapping[str, Any]) -> None:
    """Rewrites ``meta.json`` with ``changes`` merged in, atomically (temp name + rename)."""
    path = Path(cache_dir) / META
    meta = {**read_meta(cache_dir), **changes}
    tmp = path.with_name(f"{META}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# What a cache was built from


def file_stats(root: Path, paths: Iterable[Path], *, ctime: bool = False) -> list[list[Any]]:
    """``[[name relative to root, size, mtime_ns(, ctime_ns)], ...]`` sorted; stat only.

    Links are followed (the size and times of what is read); a listed name that is a
    link to another file of the folder is named with its target (:data:`LINK_MARK`
    between), so that links
    whose targets were swapped (a link farm regenerated after relabelling) are another
    signature: named by their targets alone, the sorted list was the same, and the cache
    kept each example's old pixels. A missing file
    gets size and times -1, so its later appearance changes the signature.
    ``ctime``: also the inode change time, which no copy tool sets back: a
    file replaced by one of the same size and modification time (``cp -p``,
    ``rsync -a``, two same-size files swapped with ``mv``) changes it. The
    user's own folders take it; the paper tasks' prepared data does not, so
    that caches built before it are not rebuilt for nothing.
    """
    # Strings, not Paths: Path.resolve and relative_to cost ten times the stat itself
    # (0.6 s a load of a 20,000-file folder); os.path.realpath is what resolve calls.
    real_prefix, listed_prefix = (
        p if p.endswith(os.sep) else p + os.sep
        for p in (os.path.realpath(root), os.path.abspath(root))
    )
    out = []
    for path in paths:
        real = os.path.realpath(path)
        name = real[len(real_prefix) :] if real.startswith(real_prefix) else real
        listed = os.path.abspath(path)
        if listed != real:  # a link (or below one): which file each listed name reads
            shown = listed[len(listed_prefix) :] if listed.startswith(listed_prefix) else listed
            if shown != name:  # two links' targets swapped (a relabelled link farm): the
                name = f"{shown}{LINK_MARK}{name}"  # same files, other examples' pixels
        if os.sep != "/":
            name = name.replace(os.sep, "/")
        try:
            st = os.stat(real)
            out.append([name, st.st_size, st.st_mtime_ns, *([st.st_ctime_ns] if ctime else [])])
        except (FileNotFoundError, NotADirectoryError):
            out.append([name, -1, -1, *([-1] if ctime else [])])
    return sorted(out)


def examples_digest(splits: Mapping[str, Sequence[Any]]) -> str:
    """A hash of every example's split, id, label, patient and group, in listing order.

    Part of a cache's source signature: the same files listed as other examples
    (a link moved to another class or split) is another dataset.
    """
    examples = [
        [
            split,
            ex.id,
            list(ex.label) if isinstance(ex.label, tuple) else int(ex.label),
            ex.patient,
            ex.group,
        ]
        for split, members in splits.items()
        for ex in members
    ]
    return hashlib.sha256(json.dumps(examples).encode()).hexdigest()


def tree_stats(folder: Path, *, exclude: Sequence[str] = ()) -> list[list[Any]]:
    """:func:`file_stats` of every file below ``folder`` (names in ``exclude`` left out)."""
    folder = Path(folder)
    files = [p for p in folder.rglob("*") if p.is_file() and p.name not in exclude]
    return file_stats(folder, files)


def stale_reason(cache_dir: Path, source: Mapping[str, Any]) -> str | None:
    """Why the finished cache in ``cache_dir`` does not match ``source``, or None if it does.

    ``source`` is what the cache would be built from now: ``files`` (see
    :func:`file_stats`) and any other JSON-able facts (class list, label file,
    options). A cache that predates source records is stale.
    """
    meta = read_meta(cache_dir)
    old = meta.get("source")
    if not isinstance(old, dict) or not meta.get("fingerprint"):
        return "it predates content checks (no source signature or fingerprint)"
    key = "skip_bad_images"
    if key in old and old[key] != source.get(key, old[key]) and not skipped_counts(meta):
        # A build that skipped nothing holds what a build under the other setting would
        # (without the flag a bad image stops the build): commands that differ only in it
        # shared this folder and rebuilt it in turn, and dropped its cached features.
        source = {**source, key: old[key]}
    return describe_change(old, source)


def describe_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """E.g. ``"3 files added, 1 removed; class_names changed"``; None when equal.

    A change of the toolkit's own rules (:data:`RULE_FACTS`) is said alone: the
    signature's other parts may have changed form with it.
    """
    rules = [
        f"{FACT_WORDS[key]} changed"
        for key in RULE_FACTS
        if _jsonable(old.get(key)) != _jsonable(new.get(key))
    ]
    if rules:
        return "; ".join(rules)
    parts = []
    before, after = (_by_listed_name(x.get("files", [])) for x in (old, new))
    named_by_target = {target: v for target, v in after.values() if target}
    if (
        named_by_target
        and set(before) - set(after) == set(named_by_target)
        and not any(LINK_MARK in str(f[0]) for f in old.get("files", []))
    ):  # links recorded by their targets alone, before their names were: a rebuild, once
        return (
            f"its record of {len(named_by_target)} linked file(s) predates naming links with "
            "their targets (so that swapping two links' targets counts)"
        )
    added = len(after.keys() - before.keys())
    removed = len(before.keys() - after.keys())
    moved = [k for k in after.keys() & before.keys() if after[k] != before[k]]
    # (size, mtime, ctime) with only the ctime moved: a chmod/chown, or a copy that kept
    # size and mtime (cp -p), which cannot be told apart without reading the pixels.
    ctime_only = sum(
        1
        for k in moved
        if after[k][0] == before[k][0]  # the same target (or none: not a link)
        and len(after[k][1]) == 3
        and after[k][1][:2] == before[k][1][:2]
    )
    changed = len(moved) - ctime_only
    counts = [
        (n, w)
        for n, w in (
            (added, "added"),
            (removed, "removed"),
            (changed, "changed"),
            (ctime_only, CTIME_ONLY),
        )
        if n
    ]
    if counts:
        words = [f"{n} {w}" for n, w in counts]
        n, w = counts[0]
        words[0] = f"{n} file{'s' if n != 1 else ''} {w}"
        parts.append(", ".join(words))
    facts = [
        key
        for key in sorted((old.keys() | new.keys()) - {"files"})
        if _jsonable(old.get(key)) != _jsonable(new.get(key))
    ]
    if "examples" in facts and (added or removed or len(facts) > 1):
        facts.remove("examples")  # it changed with the files or facts said
    parts += [f"{FACT_WORDS.get(key, key)} changed" for key in facts]
    return "; ".join(parts) or None


LINK_MARK = "\0"
"""Between a listed link's name and its target's in :func:`file_stats` (a NUL: no path
holds one, where a file named ``x -> 1.png`` was split as a link, and two such names
were one entry)."""


def _by_listed_name(
    files: Iterable[Sequence[Any]],
) -> dict[str, tuple[str, tuple[Any, ...]]]:
    """:func:`file_stats` entries as ``{listed name: (link target or "", stats)}`` (a
    link's name split at :data:`LINK_MARK`): a link given another target is a file
    changed, not one added and one removed."""
    out = {}
    for name, *stats in files:
        listed, _, target = str(name).partition(LINK_MARK)
        out[listed] = (target, tuple(stats))
    return out


CTIME_ONLY = (
    "with only the inode change time moved (chmod or chown, or replaced keeping size and mtime)"
)
"""Files whose size and mtime held but whose ctime moved: :func:`describe_change` cannot
tell a permissions change from a replacement without reading the pixels, so says both."""

RULE_FACTS = ("decoding", "listing")
"""Signature facts that are versions of the toolkit's rules, not of the user's files."""

FACT_WORDS = {
    "class_names": "class list",
    "multilabel": "label kind",
    "labels_csv": "labels CSV file",
    "tfds_dir": "TFDS folder",
    "examples": "examples (ids, labels, patients or splits)",
    "decoding": "image decoding rules (16-bit, float, DICOM)",
    "listing": "listing rules (ids, splits, the files' signature)",
    "skip_bad_images": "--skip-bad-images",
}
"""How :func:`describe_change` names a changed fact of a source signature."""


def _jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparing."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def announce_rebuild(what: str, cache_dir: Path, reason: str) -> None:
    """The one line a rebuild prints (stderr): which cache and why."""
    # Every process: a host's own copy is rebuilt (a node-local --data-dir), not the job's.
    print(f"{what} cache {cache_dir} is stale: {reason}; rebuilding", file=sys.stderr, flush=True)


# The content fingerprint


def fingerprint_of(
    splits: Mapping[str, ArraySplit],
    class_names: Sequence[str],
    multilabel: bool,
    eval_grouping: str = "image",
    *,
    chunk: int = 1024,
) -> str:
    """The content fingerprint of in-memory (or memmapped) splits; see the module docstring.

    Equal to what :func:`write_cache` stores for the same arrays and facts.
    """
    digests = {name: _digest_of(split, chunk) for name, split in splits.items()}
    facts = {"class_names": list(class_names), "multilabel": multilabel}
    return _combine(digests, {**facts, "eval_grouping": eval_grouping})


def _split_digest(
    images_shape: list[int], images_sha: str, fields: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    labels = np.asarray(fields["labels"])
    canonical = labels.astype("<f8" if labels.dtype.kind == "f" else "<i8")
    out: dict[str, Any] = {
        "images": [list(map(int, images_shape)), images_sha],
        "labels": [list(canonical.shape), hashlib.sha256(canonical.tobytes()).hexdigest()],
    }
    for field in FIELDS[1:]:
        text = json.dumps([str(v) for v in np.asarray(fields[field]).tolist()])
        out[field] = hashlib.sha256(text.encode()).hexdigest()
    return out


def _combine(digests: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    whole = {
        "format": FINGERPRINT_FORMAT,
        "class_names": [str(c) for c in meta.get("class_names", [])],
        "multilabel": bool(meta.get("multilabel", False)),
        "eval_grouping": str(meta.get("eval_grouping", "image")),
        "splits": dict(digests),
    }
    return hashlib.sha256(json.dumps(whole, sort_keys=True).encode()).hexdigest()
