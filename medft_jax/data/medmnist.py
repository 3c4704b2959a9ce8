"""``medmnist/<flag>[@size]``: the official MedMNIST v3 ``.npz`` files.

A file is looked for in ``data_dir`` (as ``<flag>[_<size>].npz``, directly
or under ``medmnist/``), else downloaded there from Zenodo and checked
against its MD5 (files found on disk are used, their labels checked: users
may hold re-saved copies, like the one with flat labels in the project's
test data; ``metadata["source"]["official"]`` says whether the MD5 is the
published one, and a note line says it once a process; a file whose MD5 is
another flag's or size's official one is refused, as is one with the other
kind of channels: it is another dataset renamed). Labels
may be ``N`` or ``N×1``; ChestMNIST's ``N×14`` are multi-hot. Images are
used at their native size only where no crop size is asked for (library use); a run
and ``prepare`` always ask for one, so their images go through the same Resize +
CenterCrop as every other dataset (at the file's own size too), cached on disk once.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from PIL import Image

from medft_jax import download as download_lib
from medft_jax import locks
from medft_jax.data import cache
from medft_jax.data.arrays import ArraySplit, make_split
from medft_jax.data.dataset import Dataset, find_unscorable, unscorable_message
from medft_jax.data.errors import DataError
from medft_jax.data.locations import cache_dir, variant_name
from medft_jax.data.medmnist_info import FLAGS, FLAGS_3D, N_SAMPLES, SIZES, URL
from medft_jax.data.preprocess import resize_and_crop
from medft_jax.errors import note

SPLITS = ("train", "val", "test")


def parse_name(name: str) -> tuple[str, int]:
    """``"medmnist/breastmnist@64"`` -> ``("breastmnist", 64)`` (size defaults to 28)."""
    rest = name.split("/", 1)[1] if "/" in name else ""
    flag, _, size_text = rest.partition("@")
    if flag.lower() in FLAGS_3D:  # the command lines' words, for library callers too
        from medft_jax.names import dataset_name_error

        raise DataError(f"{name!r}: {dataset_name_error(name)}")
    if flag not in FLAGS:
        raise DataError(
            f"unknown MedMNIST flag {flag!r} in {name!r}; known: {', '.join(sorted(FLAGS))}"
        )
    # Spelled as run and sweep spell it: int() took "028", "+28" and " 28", names they
    # refuse, for a dataset that prepare then named so.
    if (size_text or "@" in rest) and size_text not in {str(s) for s in SIZES}:
        raise DataError(f"MedMNIST size {size_text!r} in {name!r} is not one of {SIZES}")
    return flag, int(size_text) if size_text else 28


def file_stem(flag: str, size: int) -> str:
    return flag if size == 28 else f"{flag}_{size}"


def download(flag: str, size: int, dest_dir: Path) -> Path:
    """Downloads the official file into ``dest_dir`` (temp name, MD5 check, rename).

    A failed download leaves nothing behind: not the partial file, and not the
    folders it made for it (``~/tensorflow_datasets/medmnist`` on a machine
    that had none).
    """
    stem = file_stem(flag, size)
    dest = Path(dest_dir) / f"{stem}.npz"
    made = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]  # deepest first
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = download_lib.temporary(dest)
    url = URL.format(stem=stem)
    manual = (
        f"download {stem}.npz yourself (or copy it from ~/.medmnist, where the medmnist "
        "package keeps it) into the data dir"
    )
    done = False
    try:
        got = download_lib.fetch(url, tmp, algorithm="md5", timeout=60, label=dest.name)
        expected = FLAGS[flag].md5[size]
        if got != expected:
            raise DataError(
                f"{url}: MD5 {got} does not match the expected {expected}; the download is "
                f"corrupt: try again, or {manual}"
            )
        os.replace(tmp, dest)
        done = True
    except download_lib.DownloadError as err:  # the network's failure; a full disk is the disk's
        raise DataError(f"{err}; {manual}") from None
    finally:
        tmp.unlink(missing_ok=True)
        for folder in [] if done else made:
            try:
                folder.rmdir()  # only while empty: another process may have begun using it
            except OSError:
                break
    return dest


def find_or_download(
    flag: str, size: int, data_dir: Path, *, allow_download: bool = True, tidy: bool | None = None
) -> Path:
    """``tidy`` (default: ``allow_download``): remove what killed downloads left beside the
    file found (a load's look, not a dry run's)."""
    stem = file_stem(flag, size)
    for candidate in (data_dir / f"{stem}.npz", data_dir / "medmnist" / f"{stem}.npz"):
        if candidate.is_file():
            if allow_download if tidy is None else tidy:
                download_lib.remove_killed(data_dir / "medmnist" / f"{stem}.npz")
            return candidate
        if candidate.exists() or candidate.is_symlink():  # a folder, or a broken link
            raise DataError(f"{candidate}: not a file; expected MedMNIST's {stem}.npz")
    shown = data_dir.absolute()  # a relative one (a grid's data_dir) is read from the cwd
    where = (
        f"{shown} or {shown / 'medmnist'} (--data-dir, or a grid's data_dir; without either, "
        "$TFDS_DATA_DIR or ~/tensorflow_datasets)"
    )
    where += _near_misses(flag, size, data_dir)
    if not allow_download:
        raise DataError(f"{stem}.npz not found in {where}")
    try:
        return download(flag, size, data_dir / "medmnist")
    except DataError as err:
        raise DataError(f"{err}; looked for it in {where}") from None


def _near_misses(flag: str, size: int, data_dir: Path) -> str:
    """What lies there under a near name: another size's file (the dataset is named
    ``medmnist/<flag>@<size>``), or the 28 px file saved as ``<flag>_28.npz``, which
    MedMNIST names ``<flag>.npz``. Empty when neither is there."""
    names = {f"{flag}_28.npz": None} | {f"{file_stem(flag, s)}.npz": s for s in SIZES if s != size}
    said = []
    for folder in (data_dir, data_dir / "medmnist"):
        for name, other in names.items():
            if not (folder / name).is_file():
                continue
            if other is None:
                said.append(
                    f"{folder / name} is there: MedMNIST names its 28 px file {flag}.npz"
                    + ("; rename it" if size == 28 else "")
                )
            else:
                said.append(f"{folder / name} is there: that is medmnist/{flag}@{other}")
    return f"; {'; '.join(said)}" if said else ""


_UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError)
"""What reading a damaged ``.npz`` raises: a bad CRC (``BadZipFile``), a corrupt deflate
stream (``zlib.error``: a flipped bit copied by hand), a compression method zipfile lacks
(``NotImplementedError``); each one line naming the file and array."""


def read_npz(
    path: Path, flag: str, size: int, *, rgb: bool = True, images: bool = True
) -> dict[str, tuple[Any, np.ndarray]]:
    """``{split: (uint8 N×H×W×3 images, labels)}`` from an official-format ``.npz``, checked.

    Labels are checked (see :func:`_labels`) and every class must have a
    training example; an unreadable file or array is one line naming it.
    ``rgb=False`` leaves grayscale files N×H×W, a third of the memory.
    ``images=False`` reads no image: each split's first item is then the images' declared
    ``shape``/``dtype`` (checked as the arrays would be), and the resized cache streams
    them from the file (:func:`stream_images`): the whole file in memory at once was
    about 16 GB for PathMNIST@224.
    """
    info = FLAGS[flag]
    out = {}
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # np.load would call a text file "pickled data"
            raise DataError(f"{path}: not a .npz file (no zip header); expected MedMNIST's .npz")
    try:
        npz = np.load(path, allow_pickle=False)
    except _UNREADABLE as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from None
    with npz:
        for split in SPLITS:
            for key in (f"{split}_images", f"{split}_labels"):
                if key not in npz.files:
                    raise DataError(f"{path}: missing array {key!r}; has {sorted(npz.files)}")
            # The shapes the file declares, checked before anything is read: a 186 KB file
            # declaring 546×100000×100000 images asked numpy for 4.97 TiB (a traceback).
            declared = _declared(path, f"{split}_images")
            _checked_images(declared, path, split, size, info.n_channels)
            labels = _labels(_array(npz, path, f"{split}_labels"), info, path, split)
            if images:
                pixels = _array(npz, path, f"{split}_images")
                pixels = _checked_images(pixels, path, split, size, info.n_channels)
                out[split] = (_as_rgb(pixels) if rgb else pixels, labels)
            else:
                out[split] = (declared, labels)
            rows = len(out[split][0]) if images else declared.shape[0]
            if rows != len(out[split][1]):
                raise DataError(
                    f"{path}: {split}_images has {rows} rows, {split}_labels {len(labels)}"
                )
            if len(out[split][1]) == 0:
                raise DataError(f"{path}: split {split!r} is empty")
    _check_classes(out, info, path)
    return out


STREAM_ROWS = 256
"""Images read from a ``.npz`` member at a time when the resized cache is built."""


def stream_images(path: Path, key: str) -> Iterator[np.ndarray]:
    """The images of member ``key`` of the ``.npz`` at ``path``, one at a time, decompressed
    :data:`STREAM_ROWS` at a time: memory bounded whatever the file's size. The member's
    header was checked by :func:`read_npz` (``images=False``)."""
    try:
        with zipfile.ZipFile(path) as z, z.open(f"{key}.npy") as f:
            shape, fortran, dtype, _ = cache.read_npy_header(f)
            if fortran:  # not how np.savez writes; read whole, as before
                yield from np.load(path, allow_pickle=False)[key]
                return
            row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
            left = shape[0]
            while left:
                n = min(STREAM_ROWS, left)
                data = f.read(n * row)
                if len(data) != n * row:
                    raise DataError(f"{path}: array {key!r} ends before its {shape[0]} rows")
                yield from np.frombuffer(data, dtype).reshape((n, *shape[1:]))
                left -= n
    except _UNREADABLE as err:
        raise DataError(f"{path}: cannot read array {key!r} ({err})") from None


def _declared(path: Path, key: str) -> SimpleNamespace:
    """The ``dtype``, ``shape`` and ``ndim`` member ``key`` of the ``.npz`` at ``path``
    declares in its ``.npy`` header, read without reading the array."""
    try:
        with zipfile.ZipFile(path) as z, z.open(f"{key}.npy") as f:
            shape, _, dtype, _ = cache.read_npy_header(f)
    except (*_UNREADABLE, KeyError) as err:
        raise DataError(f"{path}: cannot read array {key!r} ({err})") from None
    return SimpleNamespace(dtype=np.dtype(dtype), shape=tuple(shape), ndim=len(shape))


def _array(npz, path: Path, key: str) -> np.ndarray:
    try:
        return npz[key]
    except _UNREADABLE as err:
        raise DataError(f"{path}: cannot read array {key!r} ({err})") from None


def _checked_images(
    images: np.ndarray, path: Path, split: str, size: int, channels: int
) -> np.ndarray:
    """N×size×size (grayscale flags) or N×size×size×3 (colour ones) uint8: a file of another
    size (a 28 px file saved under the 64 px name, or splits of two sizes) would train at one
    size while the record says another; one with the other flag kind's channels is most
    likely another flag's file renamed."""
    if images.dtype != np.uint8:
        raise DataError(f"{path}: {split}_images must be uint8, got {images.dtype}")
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
        raise DataError(f"{path}: {split}_images must be N×H×W or N×H×W×3, got {images.shape}")
    if (images.ndim == 4) != (channels == 3):
        have, want = ("colour", "grayscale") if images.ndim == 4 else ("grayscale", "colour")
        raise DataError(
            f"{path}: {split}_images are {have} ({images.shape}), but this flag's official "
            f"file is {want} ({channels} channel{'s' * (channels > 1)}); is it another flag's file?"
        )
    if images.shape[1:3] != (size, size):
        raise DataError(
            f"{path}: {split}_images are {images.shape[1]}×{images.shape[2]}, expected "
            f"{size}×{size} (the file's name says {size} px)"
        )
    return images


def _as_rgb(images: np.ndarray) -> np.ndarray:
    """N×H×W×3: grayscale repeated to three channels, as ``convert("RGB")`` does."""
    return np.repeat(images[..., None], 3, axis=-1) if images.ndim == 3 else images


def _labels(labels: np.ndarray, info, path: Path, split: str) -> np.ndarray:
    """Checked labels: int32 ids ``(N,)``, or float32 multi-hot ``(N, C)``.

    A float array is accepted only if every value is a whole, finite number
    (re-saved copies often hold 0.0/1.0): 0.9 would become 0 and NaN
    -2147483648 in a cast. Strings, and any other dtype, are refused.
    """
    key = f"{split}_labels"
    num = len(info.labels)
    if info.multilabel:
        if labels.dtype.kind not in "iufb":
            raise DataError(f"{path}: {key} has dtype {labels.dtype}; expected 0/1 multi-hot")
        if labels.ndim != 2 or labels.shape[1] != num:
            raise DataError(f"{path}: {key} must be N×{num} multi-hot, got {labels.shape}")
        bad = ~np.isin(labels, (0, 1))
        if bad.any():
            raise DataError(f"{path}: {key} must hold only 0/1, found {labels[bad][0]!s}")
        return labels.astype(np.float32)
    if labels.dtype.kind in "iuf":  # before the int64 cast, which wrapped 1e20 around
        _check_range(labels, num, path, key)
    labels = _integral(labels, path, key)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{path}: {key} must be N or N×1, got {labels.shape}")
    _check_range(labels, num, path, key)
    return labels.astype(np.int32)


def _check_range(labels: np.ndarray, num: int, path: Path, key: str) -> None:
    """One line naming the first label outside ``0..num-1``, as the file holds it."""
    with np.errstate(invalid="ignore"):  # NaN and inf: _integral names them
        bad = ((labels < 0) | (labels >= num)) & np.isfinite(labels)
    if bad.any():
        raise DataError(
            f"{path}: {key} holds label {labels[bad][0]!s} outside the {num} classes 0..{num - 1}"
        )


def _integral(labels: np.ndarray, path: Path, key: str) -> np.ndarray:
    """``labels`` as int64 if they are whole numbers; else one line naming the first bad value."""
    kind = labels.dtype.kind
    if kind in "iu":
        return labels.astype(np.int64)
    if kind == "b":
        return labels.astype(np.int64)
    if kind != "f":
        raise DataError(
            f"{path}: {key} has dtype {labels.dtype}; expected integer class ids "
            "(string or object labels are not read)"
        )
    bad = ~np.isfinite(labels) | (labels != np.round(labels))
    if bad.any():
        raise DataError(
            f"{path}: {key} holds {labels[bad][0]!s}, not a whole number; expected integer "
            "class ids (a float label would be truncated)"
        )
    return labels.astype(np.int64)


def _check_classes(arrays: dict[str, tuple[np.ndarray, np.ndarray]], info, path: Path) -> None:
    """Every class has a training example (multi-label: a positive one); one line naming
    the first missing."""
    labels = arrays["train"][1]
    if info.multilabel:
        seen = labels.sum(axis=0)
        what = "positive example of label"
    else:
        seen = np.bincount(labels, minlength=len(info.labels))
        what = "example of class"
    missing = [i for i, n in enumerate(seen) if n == 0]
    if missing:
        raise DataError(
            f"{path}: train_labels has no {what} {missing[0]} "
            f"({info.labels[missing[0]]!r}); every class needs training examples"
        )
    # A label positive in every image: nothing to learn it from, as for folders and CSVs.
    full = [i for i, n in enumerate(seen) if info.multilabel and n == len(labels)]
    if full:
        raise DataError(
            f"{path}: train_labels has label {full[0]} ({info.labels[full[0]]!r}) positive in "
            "every training example; every label needs negative training examples"
        )


def _resized_chunks(
    images: Callable[[], Iterable[np.ndarray]], resize_size: int, crop_size: int
) -> cache.ImageChunks:
    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for image in images():
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
    """Loads ``medmnist/<flag>[@size]``; see the module docstring.

    ``metadata["fingerprint"]``: the SHA-256 of the ``.npz`` file at native
    size; the resized cache's content fingerprint otherwise. A resized cache
    records the file it was built from (size, mtime, SHA-256, MD5) and is
    rebuilt, with one line, when the file found now differs (a poisoned copy
    replaced by the official one, say); with no file found it is served as is.
    """
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
        source = file_source(path, flag, size)  # another flag's file is named before reading
        arrays = read_npz(path, flag, size)
        _refuse_other_flags_sizes(path, flag, source, arrays)
        splits: dict[str, ArraySplit] = {
            s: make_split(im, lab, prefix=f"{s}/") for s, (im, lab) in arrays.items()
        }
        _note_unofficial(source, flag, size)
        fingerprint = source["sha256"]
        return _dataset(name, splits, info, {**facts, "source": source}, fingerprint, flag)
    resize_size = resize_size or crop_size
    target = cache_dir(data_dir, f"medmnist/{flag}@{size}", variant_name(resize_size, crop_size))
    found = find_local(flag, size, data_dir, tidy=True)
    fresh = cache.is_complete(target) and not _stale_reason(target, found, flag, size)
    if not fresh:
        # One process builds (a sweep's workers, prepare twice): each built the whole cache
        # and its swap deleted the other's, under the readers of it. A fresh cache is read
        # without the lock: a shared --data-dir may be read-only.
        lock = target.parent / f".{target.name}.lock"
        with locks.build_lock(lock, f"building the {flag} cache {target}"):
            _build_cache(
                name,
                target,
                flag,
                size,
                data_dir,
                resize_size,
                crop_size,
                facts,
                allow_download=allow_download,
                progress=progress,
            )
    splits, meta = cache.read_cache(target)
    _note_unofficial(meta["source"], flag, size)
    cache.note_duplicates(name, meta)
    facts = {**facts, "source": meta["source"], "counts": meta["counts"]}
    facts["duplicates"] = meta.get("duplicates") or {}
    return _dataset(name, splits, info, facts, meta["fingerprint"], flag)


def _build_cache(
    name: str,
    target: Path,
    flag: str,
    size: int,
    data_dir: str | Path | None,
    resize_size: int,
    crop_size: int,
    facts: dict[str, Any],
    *,
    allow_download: bool,
    progress: bool,
) -> None:
    """Writes ``target``'s resized cache from the ``.npz``, unless another process built
    a fresh one while this one waited for the lock (the caller holds it)."""
    found = find_local(flag, size, data_dir, tidy=True)
    reason = _stale_reason(target, found, flag, size) if cache.is_complete(target) else None
    if reason:
        cache.announce_rebuild(name, target, reason)
    elif cache.is_complete(target):
        return
    path = found or find_or_download(flag, size, data_dir, allow_download=allow_download)
    source = file_source(path, flag, size)
    # Labels read and checked; the images streamed from the file as the cache is written
    # (each made RGB as it is resized).
    arrays = read_npz(path, flag, size, images=False)
    _refuse_other_flags_sizes(path, flag, source, arrays)
    _refuse_unscorable(path, arrays, facts)  # before the cache is written, not after
    shape = (crop_size, crop_size, 3)
    plan = {}
    for s, (_, lab) in arrays.items():
        ids = np.asarray([f"{s}/{i}" for i in range(len(lab))])
        fields = {"labels": lab, "ids": ids, "groups": ids, "patients": ids}
        rows = functools.partial(stream_images, path, f"{s}_images")
        chunks = _resized_chunks(rows, resize_size, crop_size)
        plan[s] = cache.SplitPlan(len(lab), shape, chunks, fields)
    cache.write_cache(target, plan, {**facts, "source": source}, progress=progress)


def _refuse_unscorable(
    path: Path, arrays: dict[str, tuple[np.ndarray, ...]], facts: dict[str, Any]
) -> None:
    """Refuse a file whose val or test split leaves a class's AUROC undefined (an edited
    copy: the published splits hold every class), by the rule runs check, before the
    resized cache is written: the refusal came after it, a whole cache left behind."""
    names, multilabel = facts["class_names"], facts["multilabel"]
    labels = {s: lab for s, (_, lab) in arrays.items()}
    gap = find_unscorable(labels, len(names), multilabel)
    if gap is not None:
        raise DataError(
            unscorable_message(str(path), gap, names, multilabel)
            + "expected the published splits (an edited copy?)"
        )


def _refuse_other_flags_sizes(
    path: Path, flag: str, source: dict[str, Any], arrays: dict[str, tuple[np.ndarray, ...]]
) -> None:
    """A copy that is not the published file but holds exactly another flag's published
    split sizes (and not this flag's) is that flag's data under this name: PneumoniaMNIST
    saved as ``breastmnist.npz`` passed as BreastMNIST with a note. Refused, naming it."""
    if source.get("official"):
        return
    sizes = tuple(len(arrays[s][1]) for s in ("train", "val", "test"))
    if sizes == N_SAMPLES[flag]:
        return
    other = next((f for f, n in N_SAMPLES.items() if n == sizes and f != flag), None)
    if other is not None:
        raise DataError(
            f"{path}: its splits hold {', '.join(map(str, sizes))} images, {other}'s published "
            f"sizes, not {flag}'s ({', '.join(map(str, N_SAMPLES[flag]))}): {other}'s data "
            f"under {flag}'s name? Name it {other}, or put {flag}'s file here"
        )


def _dataset(
    name: str, splits: dict[str, ArraySplit], info, facts: dict, fingerprint: str, flag: str
) -> Dataset:
    return Dataset(
        name=name,
        splits=splits,
        class_names=tuple(info.labels),
        multilabel=info.multilabel,
        # The file is the data before any resize: the same for every arch's variant.
        metadata={
            **facts,
            "flag": flag,
            "fingerprint": fingerprint,
            "source_fingerprint": facts["source"]["sha256"],
        },
    )


def find_local(flag: str, size: int, data_dir: Path, *, tidy: bool = False) -> Path | None:
    """The ``.npz`` in ``data_dir`` (or its ``medmnist/``), or None; never downloads.

    ``tidy``: a load's look, which removes a killed download's ``.part`` beside it (a
    load finds the file here, and never asked for it where that was done: a 10-minute-old
    part stayed for good); a dry run's look changes nothing.
    """
    try:
        return find_or_download(flag, size, data_dir, allow_download=False, tidy=tidy)
    except DataError:
        return None


def file_source(path: Path, flag: str, size: int) -> dict[str, Any]:
    """What a MedMNIST dataset is read from: the file's stat, SHA-256 and MD5 (one pass).

    ``official``: the MD5 is the one MedMNIST publishes for this file.
    """
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if key not in _HASHES:
        sha, md5 = hashlib.sha256(), hashlib.md5()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                sha.update(block)
                md5.update(block)
        _HASHES[key] = (sha.hexdigest(), md5.hexdigest())
    sha256, md5_hex = _HASHES[key]
    other = _OFFICIAL.get(md5_hex)
    if other is not None and other != (flag, size):  # renamed: it would train on other data
        raise DataError(
            f"{path}: is MedMNIST's official {file_stem(*other)}.npz (by its MD5), not "
            f"{file_stem(flag, size)}.npz; rename it back, or put {file_stem(flag, size)}.npz here"
        )
    return {
        "file": str(Path(path).resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "sha256": sha256,
        "md5": md5_hex,
        "official": md5_hex == FLAGS[flag].md5.get(size),
    }


_HASHES: dict[tuple[str, int, int, int, int], tuple[str, str]] = {}
"""Hashes of files already read by this process, by (path, size, mtime, ctime, inode)."""

_OFFICIAL = {md5: (flag, size) for flag, info in FLAGS.items() for size, md5 in info.md5.items()}
"""Each official file's (flag, size), by its MD5."""

_NOTED: set[tuple[str, str]] = set()
"""Copies already noted as not official by this process (file, MD5)."""


def _note_unofficial(source: dict[str, Any], flag: str, size: int) -> None:
    """One note line, once a process, for a copy that is not the published file: re-saved
    copies are read (their arrays checked), but their numbers are not MedMNIST's."""
    key = (str(source.get("file")), str(source.get("md5")))
    if source.get("official") or key in _NOTED:
        return
    _NOTED.add(key)
    note(
        f"note: {key[0]}: not MedMNIST's official {file_stem(flag, size)}.npz (MD5 {key[1]}); "
        "runs read this copy as it is"
    )


def file_md5(path: Path, flag: str, size: int, data_dir: Path) -> str:
    """The MD5 of ``path`` (this dataset's ``.npz``), hashed only when no resized cache of it
    under ``data_dir`` recorded it at the file's present stat (path, size, mtime and inode
    change time, as :func:`_stale_reason` trusts them): a dry run asks of every MedMNIST
    record, and the 224 px files take seconds each to hash."""
    st = os.stat(path)
    stat = [str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    root = cache_dir(data_dir, f"medmnist/{flag}@{size}", "x").parent
    with contextlib.suppress(OSError):
        for variant in sorted(root.iterdir()):
            if not cache.is_complete(variant):
                continue
            try:
                old = cache.read_meta(variant).get("source")
            except DataError:
                continue
            if not isinstance(old, dict) or not isinstance(old.get("md5"), str):
                continue
            if stat == [old.get(k) for k in ("file", "size", "mtime_ns", "ctime_ns")]:
                return old["md5"]
    return str(file_source(path, flag, size)["md5"])


def _stale_reason(target: Path, found: Path | None, flag: str, size: int) -> str | None:
    """Why the cache in ``target`` no longer matches the ``.npz`` found now (None: it does).

    Stat first; only when the size, times or place changed is the file hashed,
    so a copied-back identical file just updates the record. The times include
    the inode change time, which no copy tool sets back; a cache recorded
    before it is hashed once and its record updated.
    """
    meta = cache.read_meta(target)
    old = meta.get("source")
    if not isinstance(old, dict) or "sha256" not in old or not meta.get("fingerprint"):
        return "it predates content checks (no source signature or fingerprint)"
    if found is None:
        return None  # nothing to compare with: the cache is all there is
    st = os.stat(found)
    stat = [str(found.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    if stat == [old.get(k) for k in ("file", "size", "mtime_ns", "ctime_ns")]:
        return None  # the inode change time: a same-size copy with its mtime kept (cp -p) is not
    now = file_source(found, flag, size)
    if now["sha256"] == old["sha256"]:
        # next time the stat matches; in a read-only data dir it is hashed again, that is all
        with contextlib.suppress(OSError):
            cache.update_meta(target, {"source": now})
        return None
    return (
        f"{found} differs from the file it was built from "
        f"(sha256 {now['sha256'][:12]}, was {old['sha256'][:12]})"
    )
