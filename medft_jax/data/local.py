"""Loading the user's own ``folder``/``csv`` datasets: parse, check, cache once, memmap.

No TFDS and no TensorFlow here: a user's images go straight into the
on-disk cache (see :mod:`medft_jax.data.cache`) the first time they are
loaded; later loads memmap it after checking it was built from the files
now there. The cache's name includes a hash of the dataset root and of
every option that changes its bytes; its ``meta.json`` records the source
signature and the content fingerprint.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from medft_jax import locks
from medft_jax.data import cache, dicom
from medft_jax.data.dataset import (
    Dataset,
    find_unscorable,
    local_scorable_hint,
    order_fingerprint_of,
    split_fingerprint_of,
    unscorable_message,
)
from medft_jax.data.dicom import is_dicom
from medft_jax.data.errors import BatchTooLarge, DataError
from medft_jax.data.examples import SPLIT_NAMES, Example, labels_of, split_plan, validate
from medft_jax.data.folder import parse_folder
from medft_jax.data.images import (
    DECODING_VERSION,
    IMAGE_SUFFIXES,
    ImageReader,
    open_image,
    sample_kind,
    takes_bits_stored,
)
from medft_jax.data.locations import NOT_PREPARED, cache_dir, variant_name
from medft_jax.data.paths import refuse_listed_output, sub_folders
from medft_jax.data.pixels import check_bits_stored, parse_dicom_window
from medft_jax.data.table import parse_table, read_csv
from medft_jax.errors import note
from medft_jax.names import LOCAL_KINDS

KINDS = LOCAL_KINDS
DECODING_OPTIONS = ("bits_stored", "dicom_window")
"""Options that say how files become pixels, not which files are which examples."""


def _fingerprint(root: Path, options: dict[str, Any]) -> str:
    text = json.dumps({"root": str(root.resolve()), **options}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What a load of the user's data reads and where its cache is: everything but pixels."""

    kind: str
    root: Path
    target: Path
    source: dict[str, Any]
    splits: dict[str, list[Example]]
    class_names: list[str]
    multilabel: bool
    bits_stored: int | None
    window: Any
    options: dict[str, Any]


def _plan(
    kind: str,
    manual_dir: Path | None,
    data_dir: Path,
    sizes: tuple[int, int],
    seed: int,
    skip_bad_images: bool,
    options: dict[str, Any],
) -> _Plan:
    """Parses and checks the layout (listing or CSV, no decoding) and names the cache;
    ``sizes`` is ``(resize_size, crop_size)``. Shared by :func:`load_local` and
    :func:`local_state`, so a dry run judges the cache a load would use."""
    resize_size, crop_size = sizes
    if manual_dir is None:
        raise DataError(f"dataset {kind!r} needs --manual-dir (the folder holding the images)")
    root = Path(manual_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"--manual-dir {root} is not a directory")
    if kind == "folder":  # csv lists its files by name, never the folder
        refuse_listed_output(root, Path(data_dir), "--data-dir", "the prepared cache")
    if kind == "csv" and "csv_file" not in options:
        raise DataError("dataset 'csv' needs the csv_file option (--csv-file)")
    options = {k: v for k, v in options.items() if v is not None}
    bits_stored = options.get("bits_stored")
    check_bits_stored(bits_stored)
    window = parse_dicom_window(options.get("dicom_window"))
    if window is not None:  # one spelling, one cache: "40,80", [40, 80] and (40.0, 80.0)
        options["dicom_window"] = list(window)
    layout = {k: v for k, v in options.items() if k not in DECODING_OPTIONS}
    if kind == "folder":
        class_names, splits = parse_folder(root, seed=seed, **layout)
        multilabel = False
    else:
        class_names, multilabel, splits = parse_table(root, seed=seed, **layout)
    _check_train_classes(kind, root, splits, list(class_names), multilabel, options)
    validate(splits, class_names, multilabel, where=str(root))
    _check_scorable(kind, root, splits, list(class_names), multilabel, options)
    source = source_of(root, class_names, multilabel, splits, options)
    # A cache that skipped bad images is not what a load that refuses them expects.
    source["skip_bad_images"] = bool(skip_bad_images)
    variant = variant_name(resize_size, crop_size, s=seed)
    target = cache_dir(data_dir, f"{kind}-{_fingerprint(root, {**options, 'kind': kind})}", variant)
    return _Plan(
        kind, root, target, source, splits, list(class_names), multilabel, bits_stored, window,
        options,
    )  # fmt: skip


def _check_train_classes(
    kind: str,
    root: Path,
    splits: dict[str, list[Example]],
    class_names: list[str],
    multilabel: bool,
    options: dict[str, Any],
) -> None:
    """Refuses a class the val or test carve left out of training, with what would help.

    ``validate`` says only "no examples in the training split": a patient-grouped carve
    that took a rare class's every patient left the user between it and "a larger
    --val-fraction" for the split that then lacked the class. Where the class has fewer
    patients than the splits that need one, no fraction helps; else another data seed or
    a smaller fraction leaves one in training. Splits the data gives are for
    :func:`validate` to name (add images there).
    """
    for label, name in enumerate(class_names):

        def has(ex: Example, label: int = label) -> bool:
            return bool(ex.label[label]) if multilabel else int(ex.label) == label

        if any(has(ex) for ex in splits["train"]):
            continue
        # Only now the layout is read again: which splits were carved from training.
        carved = [s for s in ("val", "test") if given_by(kind, root, options, s) is None]
        mine = [ex for s in ("train", *carved) for ex in splits.get(s, []) if has(ex)]
        if not mine:
            return  # only in splits the data gives, or nowhere: validate's line
        units = len({ex.patient for ex in mine})
        unit = "image" if units == len(mine) else "patient"
        have = f"{len(mine)} image{'s' * (len(mine) != 1)}"
        if unit == "patient":
            have += f" of {units} patient{'s' * (units != 1)}"
        what = "label" if multilabel else "class"
        pool = ["train", *carved]
        if units < len(pool):
            among = f"{', '.join(pool[:-1])} and {pool[-1]}"
            hint = (
                f"its {have} are to be shared by {among}, and each needs one {unit} of it: no "
                "fraction gives that; add images of it, or "
                + ("leave its column out of --label-columns" if multilabel else "drop the class")
            )
        else:
            flags = " or ".join(f"--{s}-fraction" for s in carved)
            hint = (
                f"the {' and '.join(carved)} carve took every {unit} of its {have}; another "
                f"data seed (run's --data-seed, prepare's --seed), or a smaller {flags}, leaves "
                "one in training"
            )
        raise DataError(f"{root}: {what} {name!r} has no examples in the training split: {hint}")


def _check_scorable(
    kind: str,
    root: Path,
    splits: dict[str, list[Example]],
    class_names: list[str],
    multilabel: bool,
    options: dict[str, Any],
) -> None:
    """:meth:`Dataset.check_scorable` on the listing: a val or test split that lacks a
    class is the data's fault, not a run's, so it is refused with the listing's other
    checks, where a dry run reads them and a sweep leaves the dataset out once (it was
    found at each run's start: one line per run of the grid, after a dry run that passed).
    """
    n = len(class_names)
    labels = {s: labels_of(members, multilabel, n) for s, members in splits.items()}
    gap = find_unscorable(labels, n, multilabel)
    if gap is None:
        return
    patients = {s: np.asarray([ex.patient for ex in m], str) for s, m in splits.items()}
    given = {s: given_by(kind, root, options, s) for s in ("val", "test")}
    raise DataError(
        unscorable_message(str(root), gap, class_names, multilabel)
        + local_scorable_hint(gap, labels, patients, given, multilabel)
    )


def given_by(kind: str, root: Path | str, options: dict[str, Any], split: str) -> str | None:
    """What gives ``split`` of a user's dataset (``val/``, ``column 'split'``), or None
    where it is carved by its fraction: the fix for a split that lacks a class differs
    (a fraction given for a given split is refused). Read again from the layout, only
    when a refusal needs it, by the rules :func:`parse_folder` and :func:`parse_table`
    split by."""
    root = Path(root)
    if kind == "folder":
        named = [p.name for p in sub_folders(root, root)]
        return next((f"{n}/" for n in named if SPLIT_NAMES.get(n.lower()) == split), None)
    column = options.get("split_column")
    if not column or "csv_file" not in options:
        return None
    column = str(column).strip()
    csv_path = root / str(options["csv_file"])  # an absolute csv_file replaces root
    rows = read_csv(csv_path, [column])
    if any(SPLIT_NAMES.get(row[column].strip().lower()) == split for row in rows):
        return f"column {column!r}"
    return None


class LocalState(NamedTuple):
    """What :func:`local_state` found."""

    fingerprint: str | None
    """The built, current cache's; None otherwise."""
    reason: str | None
    """Why there is no current cache (:data:`NOT_PREPARED`, a stale reason); None if there is."""
    listing: tuple[str, str] | None
    """Without a built cache: the listing's (split fingerprint, order fingerprint)."""
    train_images: int
    """The listing's training examples (before any ``--skip-bad-images`` skip): what a
    dry run's time estimate counts, where a user's folder has no published size."""


def local_state(
    kind: str,
    *,
    manual_dir: Path | None,
    data_dir: Path,
    resize_size: int,
    crop_size: int,
    seed: int = 0,
    skip_bad_images: bool = False,
    **options: Any,
) -> LocalState:
    """``(fingerprint, None, None, n)`` when the cache of these files is built and current,
    else ``(None, why not, (split fingerprint, order fingerprint), n)``: what a load would
    find, without decoding or writing anything (a dry run telling which recorded runs the
    data changed under, and how long they take: ``n`` training images).

    The split fingerprint (:meth:`Dataset.split_fingerprint`: which example is in which
    split with which label) and the order fingerprint (:meth:`Dataset.order_fingerprint`:
    in which order) are the listing's, so a cache not built yet (deleted, another
    ``--data-dir``) is still compared with the records' on everything but the pixels;
    None under ``skip_bad_images``, whose skips only decoding finds."""
    plan = _plan(
        kind, manual_dir, data_dir, (resize_size, crop_size), seed, skip_bad_images, options
    )
    train = len(plan.splits["train"])
    if not cache.is_complete(plan.target):
        listing = None
        if not skip_bad_images:
            n = len(plan.class_names)
            ids = {name: [ex.id for ex in members] for name, members in plan.splits.items()}
            split = split_fingerprint_of(
                {
                    name: (ids[name], labels_of(members, plan.multilabel, n))
                    for name, members in plan.splits.items()
                }
            )
            listing = (split, order_fingerprint_of(ids))
        return LocalState(None, NOT_PREPARED, listing, train)
    reason = cache.stale_reason(plan.target, plan.source)
    if reason:
        return LocalState(None, reason, None, train)
    return LocalState(str(cache.read_meta(plan.target)["fingerprint"]), None, None, train)


def load_local(
    kind: str,
    *,
    manual_dir: Path | None,
    data_dir: Path,
    resize_size: int,
    crop_size: int,
    seed: int = 0,
    skip_bad_images: bool = False,
    progress: bool = True,
    batch_size: int | None = None,
    **options: Any,
) -> Dataset:
    """Loads ``folder`` or ``csv`` from ``manual_dir``; ``options`` go to the parser.

    folder: ``val_fraction``, ``test_fraction``. csv: ``csv_file`` (required),
    ``path_column``, ``label_column`` | ``label_columns``, ``class_names``,
    ``group_column``, ``split_column``, ``val_fraction``, ``test_fraction``.
    Both: ``bits_stored``, the bits 16-bit files' values use
    (:func:`medft_jax.data.pixels.integer16_to_uint8`); part of the cache's
    name and recorded in its metadata, so a model checkpoint carries it to
    ``experiments.predict``. ``dicom_window``: a fixed ``(center, width)``
    for every greyscale DICOM file (:func:`medft_jax.data.pixels.parse_dicom_window`),
    the same way: a dataset with no DICOM file is refused with it.

    Every load parses and checks the layout (directory listing or CSV, no
    decoding) and compares its signature (see :func:`source_of`) with the
    cache's: a cache built from other files, classes or labels is rebuilt,
    with one line saying what changed.

    ``batch_size``: the run's; one larger than the listed training split is refused
    (:class:`BatchTooLarge`) before any image is decoded or cached: a refused run built a
    whole cache in a ``--data-dir`` it had just created. (Images ``skip_bad_images`` drops
    can still leave fewer: the run checks the loaded split again.)
    """
    plan = _plan(
        kind, manual_dir, data_dir, (resize_size, crop_size), seed, skip_bad_images, options
    )
    root, target, source, splits = plan.root, plan.target, plan.source, plan.splits
    listed = len(splits.get("train", ()))
    if batch_size is not None and batch_size > listed:
        raise BatchTooLarge(batch_size, listed, f"{kind} {manual_dir}")
    class_names, multilabel = plan.class_names, plan.multilabel
    bits_stored, window, options = plan.bits_stored, plan.window, plan.options
    # Processes building one cache at once (a multi-host job's, a sweep's workers) would
    # each decode every image: the first builds, the others wait, then find it built. A
    # fresh cache is read without the lock: a shared --data-dir may be read-only.
    fresh = cache.is_complete(target) and not cache.stale_reason(target, source)
    if not fresh:
        lock = target.parent / f".{target.name}.lock"
        with locks.build_lock(lock, f"building the {kind} cache {target}"):
            reason = cache.stale_reason(target, source) if cache.is_complete(target) else None
            if reason:
                cache.announce_rebuild(kind, target, reason)
            if reason or not cache.is_complete(target):
                if window is not None:
                    _check_some_dicom(root, splits)
                if bits_stored is not None:
                    _check_some_sixteen_bit(root, splits, bits_stored)
                decode = functools.partial(open_image, bits_stored=bits_stored, dicom_window=window)
                flat = _FlatUnderWindow(decode) if window is not None else None
                reader = ImageReader(
                    resize_size, crop_size, skip_bad_images=skip_bad_images, decode=flat or decode
                )
                plans = {
                    s: split_plan(
                        members, reader, multilabel=multilabel, num_classes=len(class_names)
                    )
                    for s, members in splits.items()
                }
                facts = {
                    "class_names": list(class_names),
                    "multilabel": multilabel,
                    "eval_grouping": "image",
                    "bits_stored": bits_stored,
                    "dicom_window": None if window is None else list(window),
                    "root": str(root.resolve()),
                    "options": {k: str(v) for k, v in options.items()},
                    "source": source,
                    "dicom_patients_across_splits": _dicom_patients_across_splits(splits),
                    "dicom_patients_across_groups": _dicom_patients_across_splits(
                        splits, stated=True
                    ),
                    **_headers(splits),
                }
                cache.write_cache(
                    target,
                    plans,
                    facts,
                    progress=progress,
                    late=lambda: {
                        "source_fingerprint": reader.source_fingerprint,
                        **({"dicom_flat": flat.found()} if flat is not None else {}),
                    },
                )
    splits_arrays, meta = cache.read_cache(target)
    _refuse_blank_window(root, meta)
    cache.note_duplicates(root, meta)
    for key, template in _FOUND_AT_BUILD.items():
        cache.note_found(root, meta.get(key), template)
    if not multilabel:
        _note_file_kind_by_class(root, splits, class_names, meta.get("file_kinds"))
    return Dataset(
        name=kind,
        splits=splits_arrays,
        class_names=tuple(meta["class_names"]),
        multilabel=bool(meta["multilabel"]),
        eval_grouping=meta["eval_grouping"],
        metadata=meta,
    )


class _FlatUnderWindow:
    """``decode`` that counts the DICOM files whose values vary and those of them that
    ``--dicom-window`` shows as one grey (:data:`medft_jax.data.dicom.WINDOW_BLANKED`; a
    file of one value is shown faithfully as one grey). A window that misses their values
    (a CT window on radiographs) made every one a blank image, trained on and predicted
    from without a word, where a file's own window that misses is refused
    (:func:`medft_jax.data.dicom._check_window_reached`). One file may rightly be flat
    under a dataset's window (an air-only slice), so they are counted and judged together
    (:func:`_refuse_blank_window`). Thread-safe: the reader decodes on several threads."""

    def __init__(self, decode: Any) -> None:
        import threading

        self._decode = decode
        self._lock = threading.Lock()
        self.varied = 0
        self.blanked: list[str] = []

    def __call__(self, path: Path) -> Image.Image:
        image = self._decode(path)
        if dicom.WINDOW_BLANKED in image.info:  # a DICOM file, said by its decoder
            blanked = bool(image.info[dicom.WINDOW_BLANKED])
            one_value = not blanked and len(set(image.getextrema())) == 1  # shown as it is
            with self._lock:
                self.varied += 0 if one_value else 1
                if blanked:
                    self.blanked.append(str(path))
        return image

    def found(self) -> list[Any] | None:
        """``[blanked count, count of DICOM files whose values vary, first blanked file]``;
        None when none is blanked."""
        return [len(self.blanked), self.varied, min(self.blanked)] if self.blanked else None


def _refuse_blank_window(root: Path, meta: dict[str, Any]) -> None:
    """Refuses a cache whose every DICOM file ``--dicom-window`` showed as one grey, and
    notes the count where some were (at every load, as the build's other findings)."""
    found, window = meta.get("dicom_flat"), meta.get("dicom_window")
    if not (isinstance(found, list) and len(found) == 3 and window):
        return
    flat, total, example = found
    shown = f"--dicom-window {float(window[0]):g},{float(window[1]):g}"
    if flat == total:
        raise DataError(
            f"{shown} shows every one of the {total} DICOM file(s) under {root} whose values "
            f"vary as one grey (e.g. {example}): expected a window over the files' values "
            "(leave it out to show each file by its own window)"
        )
    note(
        f"note: {root}: {shown} shows {flat} of the {total} DICOM files whose values vary as "
        f"one grey (e.g. {example}): blank images trained on; check the window if they are "
        "not blank"
    )


def _dicom_patients_across_splits(
    splits: dict[str, list[Example]], stated: bool = False
) -> list[Any] | None:
    """``[count, "'patient': id, id"]`` of the DICOM PatientIDs whose files lie in more than
    one split, among examples of no stated patient (a folder's loose images, a CSV's
    rows without a patient column); None when none. Split file by file, the slices of
    one patient's scan land in train and test, and nothing else in the layout says so.
    ``stated``: among the examples of a stated group instead: a group of one image (a
    group column of one id per image, accession numbers, groups nothing), or of several
    whose files all hold one PatientID (a study: a patient's two studies in train and
    test leak as split files do). A group whose files hold several PatientIDs is coarser
    than the headers' patients, or the headers are not patients': the user's grouping,
    not contradicted here.
    A PatientID held by more than half of the files looked at, across every class, is no
    patient's (headers anonymised to one value) and is left out; one patient's many
    slices of one finding are kept."""
    found: list[tuple[str, str, str, Any, str]] = []  # (split, id, group, label, PatientID)
    for split in sorted(splits):
        for ex in splits[split]:
            if (ex.patient != ex.id) != stated:  # a stated patient (folder, CSV column)
                continue
            suffix = ex.path.suffix.lower()
            if suffix in IMAGE_SUFFIXES and suffix not in dicom.DICOM_SUFFIXES:
                continue  # a .png: not opened to look for a DICOM marker
            patient = dicom.patient_id(ex.path)
            if patient is not None:
                found.append((split, ex.id, ex.patient, _label_key(ex.label), patient))
    held: dict[str, set[str]] = {}  # a stated group's PatientIDs
    for *_, group, _, patient in found:
        held.setdefault(group, set()).add(patient)
    ids: dict[str, list[tuple[str, str, Any]]] = {}
    for split, ex_id, group, label, patient in found:
        if not stated or len(held[group]) == 1:
            ids.setdefault(patient, []).append((split, ex_id, label))
    looked = sum(len(v) for v in ids.values())
    classes = {c for where in ids.values() for *_, c in where}

    def anonymised(where: list[tuple[str, str, Any]]) -> bool:
        return 2 * len(where) > looked and len(classes) > 1 and {c for *_, c in where} == classes

    crossing = {
        patient: [patient, where[0][1], next(i for s, i, _ in where if s != where[0][0])]
        for patient, where in ids.items()
        if len({s for s, *_ in where}) > 1 and not anonymised(where)
    }
    if not crossing:
        return None
    patient, a, b = min(crossing.values())
    return [len(crossing), f"{patient!r}: {a}, {b}"]


def _label_key(label: Any) -> Any:
    """A label as a set member: a class id, or a multi-hot vector as a tuple."""
    if isinstance(label, (int, str)):
        return label
    values = np.asarray(label)
    return tuple(values.ravel().tolist()) if values.ndim else values.item()


_EXIF_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".tif", ".tiff", ".webp", ".png")
_ORIENTATION = 0x0112


def _headers(splits: dict[str, list[Example]]) -> dict[str, Any]:
    """What the files' headers say, read once at the cache's build (no decoding):
    ``exif_turned``, ``[count, id]`` of the images whose EXIF orientation is not upright
    (a phone's or a dermatoscope's photos; None when none), and ``file_kinds``, each
    class's kinds of file (suffix, sample depth, grey or colour), for
    :func:`_note_file_kind_by_class`. An unreadable file is left to decoding, which names
    it; one Pillow cannot open (DICOM) is of its suffix's kind."""
    turned, kinds = [], {}
    for members in splits.values():
        for ex in members:
            kind = _kind_by_suffix(ex.path)
            try:
                with Image.open(ex.path) as image:
                    kind = f"{kind} {sample_kind(image)}"  # before getexif, which may decode
                    if _exif_orientation(image, ex.path) not in (1, None):
                        turned.append(ex.id)
            except Exception:  # a header check only: decoding names the damaged file
                pass
            if np.ndim(ex.label) == 0:  # a multilabel image is of no one class
                kinds.setdefault(str(int(ex.label)), set()).add(kind)
    return {
        "exif_turned": [len(turned), min(turned)] if turned else None,
        "file_kinds": {c: sorted(k) for c, k in sorted(kinds.items())},
    }


def _kind_by_suffix(path: Path) -> str:
    """A file's kind by its suffix (``.jpeg`` is ``.jpg``); a file listed without an image
    suffix is DICOM (a PACS export's ``IM0001`` or UID-named file, whose "suffix" is its
    UID's last number: every class's files were of a kind of their own)."""
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        return "DICOM"
    return ".jpg" if suffix == ".jpeg" else suffix


def _exif_orientation(image: Image.Image, path: Path) -> Any:
    """The EXIF orientation of an opened file, from its header: a PNG's eXIf chunk only
    where Pillow met it before the pixels (its ``getexif`` decodes the whole image to look
    for one after them, an image's decode per PNG at every cache build)."""
    suffix = path.suffix.lower()
    if suffix not in _EXIF_SUFFIXES or (suffix == ".png" and "exif" not in image.info):
        return 1
    return image.getexif().get(_ORIENTATION, 1)


_FOUND_AT_BUILD = {
    "dicom_patients_across_splits": "{n} DICOM PatientID(s) have files in more than one "
    "split (e.g. {example}); one patient in train and test inflates the test scores: put "
    "each patient's files in a subfolder and pass --patient-folders, or a CSV patient column",
    "dicom_patients_across_groups": "{n} DICOM PatientID(s) have files in more than one "
    "split although the layout grouped the files (e.g. {example}): the groups are not the "
    "files' patients (an image's or a study's id leaves a patient's other files free), and "
    "one patient in train and test inflates the test scores: group by the patient (a CSV "
    "column holding the PatientID)",
    "exif_turned": "{n} image(s) carry an EXIF orientation other than upright (e.g. "
    "{example}); they are read as stored, as torchvision reads them, not turned as a photo "
    "viewer shows them: save them upright if that matters (exiftran -ai)",
}
"""The notes of what a cache's build found in the files (:func:`_dicom_patients_across_splits`,
:func:`_headers`), said at every load."""


def _note_file_kind_by_class(
    root: Path, splits: dict[str, list[Example]], class_names: list[str], built: Any
) -> None:
    """A note when every class's files are of a kind no other class has: JPEG photos in
    one class and 16-bit PNGs in the other, say, or 8-bit and 16-bit PNGs, or grey and
    colour JPEGs. A model tells such classes apart by how their files were made
    (compression, bit depth, colour), whatever they show, and scores near 1 on a test split
    made the same way. ``built``: the kinds the cache's build read from the headers
    (:func:`_headers`); a cache from before it recorded them, by suffix alone."""
    kinds: dict[int, set[str]] = {}
    if isinstance(built, dict):
        kinds = {int(c): set(k) for c, k in built.items()}
    else:
        for members in splits.values():
            for ex in members:
                kinds.setdefault(int(ex.label), set()).add(_kind_by_suffix(ex.path))
    if len(kinds) < 2 or any(kinds[a] & kinds[b] for a in kinds for b in kinds if a < b):
        return
    each = "; ".join(
        f"{class_names[c]}: {', '.join(sorted(k or '(no suffix)' for k in kinds[c]))}"
        for c in sorted(kinds)
    )
    note(
        f"note: {root}: each class's files are of a kind no other class has ({each}); a "
        "model can tell the classes by how the files were made rather than by what they "
        "show: convert them to one format"
    )


def _check_some_sixteen_bit(root: Path, splits: dict[str, list[Example]], bits_stored: int) -> None:
    """Refuses ``--bits-stored`` for a dataset without one 16-bit file it applies to
    (:func:`medft_jax.data.images.takes_bits_stored`): it would change nothing, and the
    user who gave it believes their images read by it. Headers only, up to the first."""
    paths = [ex.path for members in splits.values() for ex in members]
    if not any(takes_bits_stored(path) for path in paths):
        raise DataError(
            f"--bits-stored {bits_stored}: none of the {len(paths)} images under {root} has "
            "16-bit integer samples of an unstated range, which the flag is for (DICOM "
            "states its own); leave the flag out"
        )


def _check_some_dicom(root: Path, splits: dict[str, list[Example]]) -> None:
    """Refuses ``--dicom-window`` for a dataset without one DICOM file: it would change
    nothing, and the user who gave it believes their images windowed."""
    paths = [ex.path for members in splits.values() for ex in members]
    for path in paths:
        try:
            if is_dicom(path):
                return
        except OSError:  # unreadable: decoding names it
            continue
    raise DataError(
        f"--dicom-window: none of the {len(paths)} images under {root} is a DICOM file, and "
        "the window applies to DICOM only; leave the flag out"
    )


LISTING_VERSION = 6
"""Bumped whenever the same files can list as other examples, or the signature changes
form (2: a csv's ids are the resolved path under the root, so ``./a.png`` and ``a.png``
are one example; folder split folders known by their usual names; 3: the signature
holds the examples' digest and each file's ctime, and one file listed under two names
is refused; 4: a carved split stops nearest its quota, not past it; 5: carved groups
are ordered by a hash of their own name, so an edited folder keeps its splits; 6: the test
carve of a data seed above 0 draws from its own stream, not from the next seed's val
stream): a cache built under another version is stale."""


def source_of(
    root: Path,
    class_names: list[str],
    multilabel: bool,
    splits: dict[str, list[Example]],
    options: dict[str, Any],
) -> dict[str, Any]:
    """The signature of what a cache is built from: stat only, nothing decoded or hashed.

    Every listed image file's (name, size, mtime, ctime), the examples' digest
    (ids, labels, splits), the class list, multilabel and the labels CSV's
    (name, size, mtime, ctime) for ``csv``.
    """
    paths = [ex.path for members in splits.values() for ex in members]
    csv_file = options.get("csv_file")
    csv_stat = None
    if csv_file is not None:
        csv_path = Path(csv_file) if Path(csv_file).is_absolute() else root / csv_file
        csv_stat = cache.file_stats(root, [csv_path], ctime=True)[0]
    return {
        "files": cache.file_stats(root, paths, ctime=True),
        # Which file is which example: a link moved to another class or split.
        "examples": cache.examples_digest(splits),
        "class_names": list(class_names),
        "multilabel": multilabel,
        "labels_csv": csv_stat,
        # How files become pixels (16-bit, float, DICOM rules): a change rebuilds.
        "decoding": DECODING_VERSION,
        # How a listing becomes examples (ids, splits): a change rebuilds.
        "listing": LISTING_VERSION,
    }
