"""BACH (ICIAR 2018 grand challenge): 4 classes of breast histology microscopy.

Layout: ``ICIAR2018_BACH_Challenge/Photos/{Normal,Benign,InSitu,Invasive}/*.tif``,
2048×1536 RGB TIFFs, 100 per class (``n001.tif`` .. ``iv100.tif``), and the
release's ``Photos/microscopy_ground_truth.csv``. A copy holding that file
claims to be the release: it must hold those 400 names, each once, and nothing
else (:func:`refuse_partial_copy`). No patient ids are published, so splits are
per image: ``test`` a stratified, seeded 10% (360 / 40, as the paper), ``val``
carved from the rest.
"""

from __future__ import annotations

import os
from pathlib import Path

from medft_jax.data.builders.base import (
    MedicalBuilder,
    MedicalConfig,
    Task,
    name_runs,
    refuse_two_copies,
)
from medft_jax.data.errors import DataError
from medft_jax.data.examples import Example, standard_splits
from medft_jax.data.paths import scan_files

CLASS_NAMES = ("Normal", "Benign", "InSitu", "Invasive")
TEST_FRACTION = 0.1
PREFIXES = {"Normal": "n", "Benign": "b", "InSitu": "is", "Invasive": "iv"}
"""The release's file names: ``<prefix><001..100>.tif`` in each class folder."""
PER_CLASS = 100
GROUND_TRUTH = "microscopy_ground_truth.csv"
"""In the release's ``Photos/``: its presence marks a copy as the official release."""


def find_photos(manual_dir: Path) -> Path:
    """The folder holding the four class folders.

    A folder holding some of them, or the release's ``Photos`` holding other
    folders, is named with what it holds and the four names expected: a class
    folder renamed (``Benign`` -> ``benign_old``) is then one line that says which,
    not a "no Photos/ folder" beside the very folder the user is looking at.
    """
    candidates = (
        manual_dir / "ICIAR2018_BACH_Challenge" / "Photos",
        manual_dir / "Photos",
        manual_dir,
    )
    full = [c for c in candidates if all((c / n).is_dir() for n in CLASS_NAMES)]
    if len(full) > 1:  # the first was taken: a copy unpacked again inside the release won
        refuse_two_copies(full[0], full[1], "class folders")
    if full:
        return full[0]
    found = next((c for c in candidates if any((c / n).is_dir() for n in CLASS_NAMES)), None)
    found = found or next((c for c in candidates[:2] if c.is_dir()), None)
    expected = f"expected the four class folders {', '.join(CLASS_NAMES)}"
    if found is None:
        raise DataError(
            f"{manual_dir}: no Photos/ folder with {', '.join(CLASS_NAMES)} subfolders; "
            f"expected {LAYOUT}"
        )
    others = sorted(
        e.name
        for e in os.scandir(found)
        if e.is_dir() and not e.name.startswith(".") and e.name not in CLASS_NAMES
    )
    missing = ", ".join(c for c in CLASS_NAMES if not (found / c).is_dir())
    if others:
        named = ("folder " if len(others) == 1 else "folders ") + ", ".join(map(repr, others))
        raise DataError(f"{found}: found class {named}, {expected} (missing: {missing})")
    raise DataError(f"{found}: no class folder {missing}; {expected}")


def official_stem(class_name: str, number: int) -> str:
    """The release's name of image ``number`` (1..100) of a class, less ``.tif``: ``b004``."""
    return f"{PREFIXES[class_name]}{number:03d}"


def refuse_partial_copy(photos: Path, listed: dict[str, list[Path]]) -> None:
    """Refuse a copy of the official release that is not its 400 images, naming the
    missing or the extra.

    The copy claims to be the release when its ``Photos`` holds the release's
    ``microscopy_ground_truth.csv``; each class folder then holds
    ``<prefix>001.tif`` .. ``<prefix>100.tif`` and nothing else. A copy cut short would
    shrink the stratified split, and the paper's 360 / 40 would be out of reach, without
    a word; an extra file (``n001 - Copy.tif``, ``b001.tif`` misfiled in ``Normal/``) is
    one image twice, which may sit in train and test at once, or carry two labels.
    A copy without that file (a subset, the tests' small fakes) is not checked:
    nothing says how many images it should hold.
    """
    if not (photos / GROUND_TRUTH).is_file():
        return
    _refuse_missing(photos, listed)
    _refuse_extra(photos, listed)


def _refuse_missing(photos: Path, listed: dict[str, list[Path]]) -> None:
    """Name the official images a release copy lacks (see :func:`refuse_partial_copy`)."""
    gone = {}
    for name in CLASS_NAMES:
        have = {p.stem.lower() for p in listed[name]}  # .tif or .tiff, as listed
        gone[name] = [i for i in range(1, PER_CLASS + 1) if official_stem(name, i) not in have]
    if any(gone.values()):
        total = PER_CLASS * len(CLASS_NAMES)
        named = "; ".join(
            f"{name}: {name_runs(ids, lambda i, name=name: f'{official_stem(name, i)}.tif')}"
            for name, ids in gone.items()
            if ids
        )
        raise DataError(
            f"{photos}: {total - sum(map(len, gone.values()))} of BACH's {total} official "
            f"images ({GROUND_TRUTH} marks the release, {PER_CLASS} per class); missing "
            f"{named}. The split needs every image (a partial copy?)"
        )


def _refuse_extra(photos: Path, listed: dict[str, list[Path]]) -> None:
    """Name the first file of a release copy that is not one of its class folder's
    official images, or is one a second time (``n001.tif`` and ``n001.tiff``), and
    count them (see :func:`refuse_partial_copy`)."""
    extra: list[tuple[Path, str]] = []
    for name in CLASS_NAMES:
        official = {official_stem(name, i) for i in range(1, PER_CLASS + 1)}
        first: dict[str, Path] = {}
        for path in listed[name]:
            stem = path.stem.lower()
            if stem not in official:
                names = f"{official_stem(name, 1)}.tif..{official_stem(name, PER_CLASS)}.tif"
                extra.append((path, f"not one of {name}/'s official names {names}"))
            elif stem in first:
                extra.append((path, f"image {stem} a second time (beside {first[stem].name})"))
            else:
                first[stem] = path
    if extra:
        path, why = extra[0]
        raise DataError(
            f"{path}: {why}; {len(extra)} such file(s) in a copy that {GROUND_TRUTH} marks "
            "as the release, whose images each appear once: a copy or a misfiled image? "
            "remove it"
        )


def parse(manual_dir: Path, config: MedicalConfig) -> dict[str, list[Example]]:
    photos = find_photos(manual_dir)
    listed = {
        name: scan_files(manual_dir, photos / name, (".tif", ".tiff"), recursive=False)
        for name in CLASS_NAMES
    }
    refuse_partial_copy(photos, listed)
    examples = []
    for label, name in enumerate(CLASS_NAMES):
        files = listed[name]
        if not files:
            raise DataError(f"class folder {photos / name} has no .tif images")
        examples += [Example(p, label, p.relative_to(photos.parent).as_posix()) for p in files]
    return standard_splits(
        examples,
        val_fraction=config.val_fraction,
        test_fraction=TEST_FRACTION,
        seed=config.seed,
        stratify=True,
        class_names=CLASS_NAMES,
    )


LAYOUT = (
    "ICIAR2018_BACH_Challenge/Photos/{Normal,Benign,InSitu,Invasive}/*.tif "
    "(https://iciar2018-challenge.grand-challenge.org/)"
)
TASK = Task(name="bach", class_names=CLASS_NAMES, parse=parse, layout=LAYOUT)


class Bach(MedicalBuilder, skip_registration=True):
    """TFDS builder of BACH (4 classes, stratified 10% test)."""

    name = "medft_bach"
    TASK = TASK
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT
