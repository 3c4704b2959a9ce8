"""``folder``: the user's images, one subfolder per class.

Either ``<root>/<class>/*.png`` (val and test carved, seeded and
stratified) or pre-split ``<root>/train/<class>/...`` with optional
``val/`` and ``test/`` beside it (what is missing is carved from train).
Split folders are known by the names datasets use for them, in any case:
``train``/``training``, ``val``/``valid``/``validation``, ``test``/``testing``
(:data:`SPLIT_NAMES`). Class names are the subfolder names, sorted. An
empty class folder, or a single class, is an error naming it.

Images may sit in subfolders of a class folder (``<class>/<patient>/*.png``).
Carving val and test from them needs to know whether a subfolder is one
patient: ``patient_folders=True`` (``--patient-folders``) keeps each first
subfolder's images in one split (one name under two classes, or in two
given splits, is one patient), ``False`` splits image by image. Unsaid,
such a layout is refused when a split is carved: split image by image, one
patient's images would land in train and test and inflate the test scores
without a word.

What would silently train on the wrong thing is refused: split folders
without a train folder, two folders of one split, or a folder beside the
splits whose images no split reaches (they would be ignored; a store the
splits link into is fine), and class folders of which two read as splits
under names not known (``training_set/``, ``test_set/``): they would be
the "classes". Symbolic links are followed only while
they stay inside ``<root>`` (see :mod:`medft_jax.data.paths`).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

from medft_jax.data import dicom
from medft_jax.data.class_names import patient_twin, refuse_twins, twin_of, twins_message
from medft_jax.data.errors import DataError
from medft_jax.data.examples import (
    SPLIT_NAMES,
    Example,
    carve_missing,
    fraction_for,
    refuse_unused_seed,
)
from medft_jax.data.images import IMAGE_SUFFIXES, saved_twice
from medft_jax.data.paths import not_listed, scan_files, sub_folders
from medft_jax.errors import note

SPLIT_DIRS = ("train", "val", "test")


_SPLIT_LIKE = re.compile(
    r"(train|training|val|valid|validation|dev|test|testing)"
    r"(?:[ _.-]?(?:set|sets|data|split|images|imgs))?"
)
"""A folder name that reads as a split under a name :data:`SPLIT_NAMES` does not know
(``training_set``, ``Test Images``), matched lower-cased; not ``covid_test``."""


def _refuse_split_like_classes(root: Path, class_names: list[str]) -> None:
    """Refuses class folders of which two or more read as splits (``training_set/``,
    ``test_set/``): the classes are their subfolders, and read as given the model would
    learn to tell the training images from the test images."""
    like = [n for n in class_names if _SPLIT_LIKE.fullmatch(n.lower())]
    if len(like) >= 2:
        raise DataError(
            f"{root}: class folders {', '.join(map(repr, like))} look like split folders; "
            "rename them train/, val/ and test/ (so their subfolders are the classes), or "
            "point --manual-dir at one folder of class subfolders"
        )


def _split_folders(root: Path) -> dict[str, Path]:
    """``{split: folder}`` of a pre-split layout; empty when ``root`` holds class folders."""
    top = sub_folders(root, root)
    found: dict[str, list[Path]] = {}
    for p in top:
        if p.name.lower() in SPLIT_NAMES:
            found.setdefault(SPLIT_NAMES[p.name.lower()], []).append(p)
    if not found:
        return {}
    for split, folders in found.items():
        if len(folders) > 1:
            names = [p.name for p in folders]
            raise DataError(f"{root}: folders {names} hold the same split ({split}); keep one")
    if "train" not in found:
        names = sorted(p.name for folders in found.values() for p in folders)
        raise DataError(
            f"{root}: split folder(s) {names} but no train folder; expected "
            "<root>/train/<class>/<image> (val/ and test/ optional), or <root>/<class>/<image>"
        )
    return {split: folders[0] for split, folders in found.items()}


def _check_nothing_left_out(root: Path, splits: dict[str, list[Example]]) -> None:
    """Refuses a folder beside the split folders whose images no split reaches.

    Its images would be ignored without a word (a ``validation/`` under
    another name, say). A folder the splits link into (a shared store) or
    one without images is fine.
    """
    reached = {os.path.realpath(ex.path) for members in splits.values() for ex in members}
    for folder in sub_folders(root, root):
        if folder.name.lower() in SPLIT_NAMES:
            continue
        images = image_files(root, folder)
        left = [p for p in images if os.path.realpath(p) not in reached]
        if left:
            raise DataError(
                f"{root}: folder {folder.name!r} beside the split folders is not train, val or "
                f"test, and no split reaches its {len(left)} image(s) (e.g. "
                f"{left[0].relative_to(root).as_posix()}); move it into a split or out of "
                "--manual-dir"
            )


def _classes(root: Path, base: Path) -> list[str]:
    names = [p.name for p in sub_folders(base, root)]
    refuse_twins(names, lambda name: str(root))
    if not names:
        raise DataError(f"{root}: no class subfolders found; expected <root>/<class>/<image>")
    if len(names) == 1:
        raise DataError(
            f"{root}: only one class folder ({names[0]!r}); a classifier needs at least two "
            "(<root>/<class>/<image>, one folder per class)"
        )
    return names


def image_files(
    base: Path,
    folder: Path,
    others: Counter[str] | None = None,
    *,
    links_anywhere: bool = False,
    recursive: bool = True,
) -> list[Path]:
    """The images under ``folder``: by suffix (:data:`IMAGE_SUFFIXES`), or any file
    with the DICOM marker (PACS exports name files ``IM0001`` or by UID).

    Every other file is counted in ``others`` by suffix, so that the user
    hears that it was left out (:func:`say_left_out`); so is a hidden image (``.x.png``,
    as ``hidden .png``), which no listing reads. ``links_anywhere``: see
    :func:`~medft_jax.data.paths.scan_files` (a folder that is no dataset).
    """
    hidden: list[Path] | None = [] if others is not None else None
    files = scan_files(
        base, folder, links_anywhere=links_anywhere, recursive=recursive, hidden=hidden
    )
    for p in hidden or ():  # an image named .x.png is skipped as hidden: counted, not silent
        if p.suffix.lower() in IMAGE_SUFFIXES and others is not None:
            others[f"hidden {p.suffix.lower()}"] += 1
    return _images(files, others)


def reads_as_image(path: Path) -> bool:
    """Whether a folder's listing takes the file at ``path`` for an image (see
    :func:`image_files`)."""
    return bool(_images([path]))


def _images(files: list[Path], others: Counter[str] | None = None) -> list[Path]:
    images = []
    for p in files:
        if p.name.upper() != DICOMDIR and (
            p.suffix.lower() in IMAGE_SUFFIXES
            or (_pacs_named(p) if not p.exists() else _dicom_marked(p))
        ):  # a link to nothing (listed only by links_anywhere) shows no marker: one named
            # as a PACS file is listed, for its reader to name as a bad file
            images.append(p)
        elif others is not None:
            others[suffix_of(p)] += 1
    return images


def _pacs_named(path: Path) -> bool:
    """Whether ``path`` is named as a PACS export names its DICOM files: ``IM0001`` (no
    suffix) or a UID (``1.2.840.113619.2.55``: a numeric suffix). ``notes.txt`` is not."""
    return path.suffix == "" or path.suffix[1:].isdigit()


DICOMDIR = "DICOMDIR"
"""The index file of a DICOM export (CD, PACS): DICOM-marked, but holds no image."""


def _check_no_loose_images(root: Path, folder: Path, others: Counter[str]) -> None:
    """Refuses images lying in ``folder`` itself, outside every class folder.

    An image's label is the folder it is in: one beside the class folders has
    none, and would be left out without a word. Other files there (a README, the
    labels' CSV) are counted in ``others``, as those inside class folders are.
    """
    loose = image_files(root, folder, others, recursive=False)
    if loose:
        raise DataError(
            f"{folder}: {len(loose)} image(s) outside every class folder (e.g. {loose[0].name}); "
            "an image's class is the folder it is in: move them into one, or out of --manual-dir"
        )


def _dicom_marked(path: Path) -> bool:
    try:
        return dicom.is_dicom(path)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None


def _scan(
    root: Path,
    base: Path,
    class_names: list[str],
    split: str,
    others: Counter[str],
    patient_folders: bool | None = None,
    nested: list[str] | None = None,
) -> list[Example]:
    """The examples of one split folder (or of a flat ``root``); ``nested`` collects the ids
    of images in subfolders of their class folder, each a patient's by its first subfolder
    when ``patient_folders``."""
    examples = []
    for label, name in enumerate(class_names):
        folder = root / name
        if not folder.is_dir():
            continue
        here: Counter[str] = Counter()
        files = image_files(base, folder, here)
        if others is not None:
            others.update(here)
        if not files and split == "train":
            raise DataError(
                f"class folder {folder} {_no_image(folder, here)}; "
                f"expected {'/'.join(IMAGE_SUFFIXES)}"
            )
        for p in files:
            inside = p.relative_to(folder).parts
            id_ = p.relative_to(base).as_posix()
            if len(inside) > 1 and nested is not None:
                nested.append(id_)
            patient = inside[0] if patient_folders and len(inside) > 1 else ""
            examples.append(Example(p, label, id_, patient=patient))
    extra = sorted(p.name for p in sub_folders(base, root) if p.name not in class_names)
    for name in extra:
        twin = twin_of(name, class_names)
        if twin is not None:
            raise DataError(twins_message(f"{root} and train", twin, name))
    if extra:
        raise DataError(f"{root}: folder(s) {extra} are not classes of train {class_names}")
    return examples


def say_left_out(root: Path, others: Counter[str]) -> None:
    """One ``note:`` line counting, by suffix, the files under ``root`` that are not images
    and were left out: a folder's PDFs or a scan exported as ``.nii`` must not vanish
    without a word."""
    if others:
        note(f"note: {root}: {_counted(others, 'left out ')}")


def _counted(others: Counter[str], fate: str = "") -> str:
    """``3 file(s) not read as images left out (.nii.gz 2, .pdf 1)``, with ``fate``. A file
    without a suffix is read only if it is DICOM: a PNG whose suffix an export dropped is
    said to be why it was left out, not called "not an image"."""
    each = ", ".join(f"{suffix} {n}" for suffix, n in sorted(others.items()))
    why = (
        "; a file without a suffix is read only if it is DICOM: name an image .png, .jpg, ..."
        if NO_SUFFIX in others
        else ""
    )
    return f"{sum(others.values())} file(s) not read as images {fate}({each}{why})"


def _no_image(folder: Path, others: Counter[str]) -> str:
    """Why ``folder`` lists no image: the files under it not read as images (``others``,
    counted by suffix), else :func:`_nothing_read`."""
    return f"holds no image, only {_counted(others)}" if others else _nothing_read(folder)


def _nothing_read(folder: Path) -> str:
    """Why a class folder gave nothing: empty, subfolders without images, or only hidden
    entries (a Jupyter ``.ipynb_checkpoints``), which no listing reads."""
    names = sorted(e.name for e in os.scandir(folder))
    if not names:
        return "is empty"
    shown = [n for n in names if not not_listed(n)]  # what is left: folders, read, imageless

    def some(listed: list[str]) -> str:
        return ", ".join(listed[:3]) + (", ..." if len(listed) > 3 else "")

    if shown:
        return f"holds no image in its subfolders ({some(shown)})"
    return f"holds only entries that are not read ({some(names)})"


_COMPRESSED = (".gz", ".bz2", ".xz", ".zst")
NO_SUFFIX = "(no suffix)"


def suffix_of(path: Path) -> str:
    """A file's kind for the left-out count: ``.nii.gz``, not ``.gz``; a DICOM export's
    index named as one (counted as a file without a suffix, it was told to be renamed
    ``.png``)."""
    if path.name.upper() == DICOMDIR:
        return "DICOMDIR, a DICOM export's index,"
    suffix = path.suffix.lower()
    if suffix in _COMPRESSED and len(path.suffixes) > 1:
        return "".join(path.suffixes[-2:]).lower()
    return suffix or NO_SUFFIX


def _refuse_patient_twins(root: Path, examples: list[Example]) -> None:
    """Refuses patient folders whose names are one id spelled otherwise (``P1`` under one
    class, ``p1`` under another; ``007`` and ``7``): as two patients, one patient's images
    were carved into train and test both."""
    seen: dict[str, tuple[str, str]] = {}
    for ex in examples:
        if not ex.patient:
            continue
        twin = patient_twin(ex.patient, str(Path(ex.id).parent), seen)
        if twin is not None:
            first, at, how = twin
            raise DataError(
                f"{root}: patient folders {first!r} ({at}) and {ex.patient!r} "
                f"({Path(ex.id).parent}) differ only in {how}: as two patients, one "
                "patient's images would be split across train and test; name them alike"
            )


def _refuse_saved_twice(root: Path, examples: list[Example]) -> None:
    """Refuses one scan kept in two formats (``x.png`` beside ``x.jpg``, a DICOM file beside
    its preview): two examples of one image, which a carve can split between train and
    test (:func:`~medft_jax.data.images.saved_twice`)."""
    pairs = saved_twice([ex.path for ex in examples])
    if pairs:
        a, b = (p.relative_to(root).as_posix() for p in pairs[0])
        how = "in their suffix"
        if pairs[0][0].suffix == pairs[0][1].suffix:  # café.png as macOS and Linux write it
            how, a, b = "in Unicode normalisation (they print alike)", ascii(a), ascii(b)
        raise DataError(
            f"{root}: {a} and {b} differ only {how} ({len(pairs)} such pair(s)): "
            "one image saved twice is two examples, in two splits unless one patient holds "
            "both; keep one file of each pair (move the other out of --manual-dir)"
        )


def _check_patients_said(
    root: Path,
    nested: dict[str, list[str]],
    patient_folders: bool | None,
    carved: bool,
    train: list[Example],
) -> None:
    """Refuses carving a split out of training images in class subfolders while it is
    unsaid whether a subfolder is one patient (see the module docstring); and the flag
    where no image sits in a subfolder, as every flag that would change nothing is.
    Under ``--patient-folders``, refuses training images that lie loose in their class
    folder when a split is carved from them: each would be a patient of its own, and a
    patient's images left loose (a partly sorted export) could land in train and test.
    ``nested``: split -> the ids of its images in class subfolders; ``train``: the
    examples the carve takes from."""
    if patient_folders is not None and not any(nested.values()):
        flag = "--patient-folders" if patient_folders else "--no-patient-folders"
        raise DataError(
            f"{flag}: no image under {root} sits in a subfolder of its class folder, so "
            "there is no patient folder to say anything of; leave the flag out"
        )
    inside = nested.get("train", [])
    if carved and inside and patient_folders is None:
        raise DataError(
            f"{root}: {len(inside)} image(s) sit in subfolders of their class folder (e.g. "
            f"{inside[0]}) and val/test are carved from them: say whether a subfolder is one "
            "patient: --patient-folders keeps each subfolder's images in one split, "
            "--no-patient-folders splits image by image"
        )
    if not carved and patient_folders is None:
        _refuse_unsaid_shared_subfolders(root, nested)
    in_folders = set(inside)
    loose = [ex.id for ex in train if ex.id not in in_folders]
    if carved and patient_folders and loose:
        raise DataError(
            f"{root}: --patient-folders, and {len(loose)} training image(s) lie loose in "
            f"their class folder, in no patient folder (e.g. {loose[0]}); each would be a "
            "patient of its own, and a patient's loose images could land in train and "
            "test: move them into their patient's folder, or use --no-patient-folders"
        )


def _refuse_unsaid_shared_subfolders(root: Path, nested: dict[str, list[str]]) -> None:
    """With train/, val/ and test/ all given, nothing is carved, yet a class subfolder of one
    name under two splits (``train/benign/P7`` and ``test/benign/P7``) is most likely one
    patient in two splits: unsaid, it passed without a word, though ``--patient-folders``
    refuses it. ``nested``: split -> ids ``<split>/<class>/<subfolder>/...``."""
    first: dict[str, tuple[str, str]] = {}  # subfolder name, casefolded -> (split, an id)
    for split in sorted(nested, key=SPLIT_DIRS.index):  # train first: named as the leak is
        for id_ in nested[split]:
            name = Path(id_).parts[2]
            other, seen = first.setdefault(name.casefold(), (split, id_))
            if other != split:
                raise DataError(
                    f"{root}: class subfolder {name!r} is under {other} and {split} (e.g. "
                    f"{seen} and {id_}): if it is one patient, its images are in two splits; "
                    "say whether a subfolder is one patient: --patient-folders refuses a "
                    "patient in two splits, --no-patient-folders takes the splits as given"
                )


def parse_folder(
    root: Path,
    *,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    seed: int = 0,
    patient_folders: bool | None = None,
) -> tuple[list[str], dict[str, list[Example]]]:
    """``(class_names, {split: examples})`` of an image folder tree; ``patient_folders``:
    whether a class folder's subfolders are patients (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--manual-dir {root} is not a directory")
    folders = _split_folders(root)
    others: Counter[str] = Counter()
    for folder in (root, *folders.values()):
        _check_no_loose_images(root, folder, others)
    if folders:
        class_names = _classes(folders["train"], root)
        nested: dict[str, list[str]] = {s: [] for s in folders}
        given = {
            s: _scan(p, root, class_names, s, others, patient_folders, nested[s])
            for s, p in folders.items()
        }
        for split, members in given.items():
            if not members:  # not "no test/": the user's test set was carved from train/
                folder, here = folders[split], Counter[str]()
                image_files(root, folder, here)
                raise DataError(
                    f"{folder}: the {split} split folder {_no_image(folder, here)}; "
                    f"expected its class folders of images, or no {folder.name}/ (to carve "
                    f"{split} from train/)"
                )
        _check_nothing_left_out(root, given)
        say_left_out(root, others)
        train = given["train"]
        fraction = {
            split: fraction_for(
                split, value, f"{folders[split].name}/" if split in given else None, str(root)
            )
            for split, value in (("test", test_fraction), ("val", val_fraction))
        }
        carved = "test" not in given or "val" not in given
        if not carved:
            refuse_unused_seed(seed, "train/, val/ and test/", str(root))
        _check_patients_said(root, nested, patient_folders, carved, train)
        # One image saved twice first: x.png beside x.PNG is that, not two patients' names.
        _refuse_saved_twice(root, [ex for members in given.values() for ex in members])
        _refuse_patient_twins(root, [ex for members in given.values() for ex in members])
        given["train"] = train
        carve_missing(
            given, fraction, seed, stratify=True, where=str(root), class_names=class_names
        )
        return class_names, {s: given[s] for s in SPLIT_DIRS}
    class_names = _classes(root, root)
    _refuse_split_like_classes(root, class_names)
    nested = {"train": []}
    examples = _scan(root, root, class_names, "train", others, patient_folders, nested["train"])
    _check_patients_said(root, nested, patient_folders, carved=True, train=examples)
    _refuse_saved_twice(root, examples)
    _refuse_patient_twins(root, examples)
    say_left_out(root, others)
    fractions = {
        "test": fraction_for("test", test_fraction, None, str(root)),
        "val": fraction_for("val", val_fraction, None, str(root)),
    }
    splits = {"train": examples}
    carve_missing(splits, fractions, seed, stratify=True, where=str(root), class_names=class_names)
    return class_names, {s: splits[s] for s in SPLIT_DIRS}
