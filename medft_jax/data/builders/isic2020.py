"""ISIC 2020 (SIIM-ISIC melanoma classification): benign vs malignant skin lesions.

Layout: ``train.csv`` (``image_name,patient_id,sex,age_approx,
anatom_site_general_challenge,diagnosis,benign_malignant,target``),
``jpeg/train/<image_name>.jpg`` and the challenge's duplicate list
``ISIC_2020_Training_Duplicates.csv`` (``image_name_1,image_name_2``): the
second image of each of its 425 pairs is dropped (33,126 -> 32,701); beside
the challenge's ``train.csv`` (33,126 rows), a list that drops fewer is refused,
first naming a listed duplicate that ``train.csv`` does not list (another
``train.csv``, a subset or one already cleared of the duplicates, may lack
them: it is not checked). Every image in ``jpeg/train/`` must be listed in
``train.csv`` (or be a duplicate's second image): a lost row would drop its image, and
those checks, without a word; a subset lists the images it holds. A ``train.csv`` cleared
of the duplicates beside the download's images (they are there, unlisted) is checked as
the release. A row with a blank
``patient_id``, or whose ``benign_malignant`` contradicts its ``target``, is
refused naming its line. A missing ``train.csv`` beside the ISIC site's
``ISIC_2020_Training_GroundTruth*.csv``, or a missing ``<name>.jpg`` beside a
``<name>.JPG``, is refused saying what to rename.

``test`` is a seeded, stratified 20%, ``val`` a 10% carve of the rest, split
by ``split_by``:

- ``"patient"`` (default): grouped by ``patient_id``, so no patient's
  lesions sit on both sides of the split. This cannot give the paper's
  counts exactly (whole patients are taken).
- ``"image"``: the paper's split, a random 80/20 split by image: exactly
  ``ceil(0.2 * 32,701) = 6,541`` test images and 26,160 for training (val
  then carved from those). One patient's images can fall on both sides, so
  test lesions may have look-alikes from the same patient in training. Each
  image is then its own "patient" for the disjointness checks. The images are
  drawn in the order of their names, so the split depends on the set of rows and
  the seed, not on ``train.csv``'s row order (variants prepared before that,
  ``_byimage``, are never read: this one is ``_byimage2``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path

import numpy as np

from medft_jax.data.builders.base import MedicalBuilder, MedicalConfig, Task
from medft_jax.data.errors import DataError
from medft_jax.data.examples import Example, standard_splits
from medft_jax.data.paths import safe_join
from medft_jax.data.table import Row, read_csv, refuse_listed_again

CLASS_NAMES = ("benign", "malignant")
HEADER = [
    "image_name",
    "patient_id",
    "sex",
    "age_approx",
    "anatom_site_general_challenge",
    "diagnosis",
    "benign_malignant",
    "target",
]
DUPLICATES = "ISIC_2020_Training_Duplicates.csv"
OFFICIAL_IMAGES = 33_126
"""The images the challenge's ``train.csv`` lists: a copy listing them claims to be it."""
OFFICIAL_DUPLICATES = 425
"""The images the challenge's duplicate list drops from them (33,126 -> 32,701)."""
TEST_FRACTION = 0.2
SPLIT_BY = ("patient", "image")


def read_duplicates(manual_dir: Path) -> dict[str, int]:
    """``{image_name_2: its line}`` of the challenge's duplicate list (the first line
    naming it): the line is what a name ``train.csv`` lacks is reported by.

    A pair written both ways (``A,B`` and ``B,A``) is refused naming both lines: it drops
    both twins, the lesion gone from the data without a word."""
    path = manual_dir / DUPLICATES
    if not path.is_file():
        raise DataError(
            f"{path} not found; the ISIC 2020 duplicate list (image_name_1,image_name_2) "
            "is needed to drop the 425 duplicate images"
        )
    names: dict[str, int] = {}
    pairs: dict[tuple[str, str], int] = {}
    for row in read_csv(path, ["image_name_1", "image_name_2"]):
        kept, dropped = row["image_name_1"].strip(), row["image_name_2"].strip()
        reversed_at = pairs.get((dropped, kept))
        if reversed_at is not None:
            raise DataError(
                f"{path}:{row.line}: the pair {kept},{dropped} is line {reversed_at}'s written "
                "the other way; expected each pair once, its first image kept (both ways "
                "drop both twins)"
            )
        pairs.setdefault((kept, dropped), row.line)
        names.setdefault(dropped, row.line)
    return names


def refuse_unmatched_duplicates(
    path: Path, duplicates: dict[str, int], listed: int, dropped: set[str]
) -> None:
    """Beside the official ``train.csv`` (``listed`` images), refuse a duplicate-list name
    that it does not list, naming its line.

    The two files disagree (a typo, another release's list): the duplicate the line meant
    stays in, perhaps in training beside its twin in test, without a word. Checked before
    :func:`refuse_partial_duplicates`, whose count it names better. Another ``train.csv``
    (a subset, or one already cleared of the duplicates) may lack listed images on
    purpose: it is not checked.
    """
    if listed != OFFICIAL_IMAGES:
        return
    unmatched = [name for name in duplicates if name not in dropped]
    if unmatched:
        name = unmatched[0]
        raise DataError(
            f"{path}:{duplicates[name]}: image_name_2 {name!r} is not in train.csv; expected "
            f"each duplicate to name an image train.csv lists ({len(unmatched)} such line(s): "
            "the list of another release, or a typo?)"
        )


def refuse_partial_duplicates(path: Path, listed: int, dropped: int) -> None:
    """Refuse a partial or padded duplicate list beside the official ``train.csv``, saying
    how much.

    ``listed``: the images ``train.csv`` lists; ``dropped``: those the list drops. With
    the challenge's 33,126 images the list must drop its 425: a list cut short would
    leave duplicates in (one lesion in training and test), one with lines added (another
    release's, a pair written both ways: both twins gone) would drop kept images, and
    either put the paper's 32,701 out of reach, without a word. Another ``train.csv`` (a
    subset, the tests' small fakes) is not checked: nothing says how many of its images
    are duplicates.
    """
    if listed != OFFICIAL_IMAGES or dropped == OFFICIAL_DUPLICATES:
        return
    if dropped > OFFICIAL_DUPLICATES:
        raise DataError(
            f"{path}: drops {dropped} of the official train.csv's {OFFICIAL_IMAGES:,} images "
            f"as duplicates, {dropped - OFFICIAL_DUPLICATES} more than the challenge's list "
            f"({OFFICIAL_DUPLICATES}); expected its {OFFICIAL_IMAGES - OFFICIAL_DUPLICATES:,} "
            "images kept (lines added? a pair written both ways drops both twins)"
        )
    raise DataError(
        f"{path}: drops {dropped} of the official train.csv's {OFFICIAL_IMAGES:,} images as "
        f"duplicates, the challenge's list {OFFICIAL_DUPLICATES}: missing "
        f"{OFFICIAL_DUPLICATES - dropped} duplicates. The paper's "
        f"{OFFICIAL_IMAGES - OFFICIAL_DUPLICATES:,} images need the whole list "
        "(a partial copy?)"
    )


def carve_images(
    labels: Sequence[int], fraction: float, seed: int, ids: Sequence[str] | None = None
) -> np.ndarray:
    """Boolean mask of a seeded, stratified ``ceil(fraction * n)`` images (the paper's split).

    The test size is rounded up, as scikit-learn's ``train_test_split`` rounds
    it (hence the paper's 6,541 of 32,701), shared among classes in proportion
    (largest remainders), each class's images drawn at random with ``seed``.
    The paper's seed is unknown: its counts are reproduced, not its images.

    ``ids``: the images' names; they are drawn from in the order of those names, so
    the split depends on the set of images and the seed alone, not on the order a
    ``train.csv`` lists them in (Kaggle's, the ISIC site's, a spreadsheet's round trip).
    Without ``ids``, the order of ``labels``.
    """
    labels_arr = np.asarray(labels, dtype=np.int64)
    n = len(labels_arr)
    target = math.ceil(fraction * n)
    classes, counts = np.unique(labels_arr, return_counts=True)
    exact = counts * target / n
    take = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - take), kind="stable")
    take[order[: target - int(take.sum())]] += 1
    by_name = np.arange(n) if ids is None else np.argsort(np.asarray(ids, dtype=str), kind="stable")
    rng = np.random.default_rng(seed)
    mask = np.zeros(n, dtype=bool)
    for c, k in zip(classes, take, strict=True):
        members = by_name[labels_arr[by_name] == c]
        mask[rng.permutation(members)[:k]] = True
    return mask


def split_examples(
    examples: list[Example], *, split_by: str, val_fraction: float, seed: int
) -> dict[str, list[Example]]:
    """``train``/``val``/``test`` by patient (grouped) or by image (the paper's)."""
    if split_by == "patient":
        return standard_splits(
            examples,
            val_fraction=val_fraction,
            test_fraction=TEST_FRACTION,
            seed=seed,
            stratify=True,
            class_names=CLASS_NAMES,
        )
    if split_by != "image":
        raise DataError(f"--split-by must be one of {SPLIT_BY}, got {split_by!r}")
    # Each image is its own split unit, so the patient-disjointness checks hold trivially.
    examples = [dataclasses.replace(ex, patient=ex.id) for ex in examples]
    labels = [int(ex.label) for ex in examples]
    mask = carve_images(labels, TEST_FRACTION, seed, ids=[ex.id for ex in examples])
    rest = [ex for ex, m in zip(examples, mask, strict=True) if not m]
    test = [ex for ex, m in zip(examples, mask, strict=True) if m]
    return standard_splits(
        rest, test, val_fraction=val_fraction, seed=seed, stratify=True, class_names=CLASS_NAMES
    )


BENIGN_MALIGNANT = {"benign": 0, "malignant": 1}
"""``benign_malignant``'s values and the ``target`` each states."""


def read_target(row: Row, where: str) -> int:
    """The row's ``target`` (0 or 1), which its ``benign_malignant`` must not contradict:
    the two columns disagreeing is an edited or damaged row, and which one holds is not
    ours to guess (training on the wrong one would flip a melanoma's label)."""
    target = row["target"].strip()
    if target not in ("0", "1"):
        raise DataError(
            f"{where}: target {target!r} outside the class list 0 (benign), 1 (malignant)"
        )
    stated = BENIGN_MALIGNANT.get(row.get("benign_malignant", "").strip().lower())
    if stated is not None and stated != int(target):
        raise DataError(
            f"{where}: target {target} contradicts benign_malignant "
            f"{row['benign_malignant'].strip()!r}; expected the release's labels (one of the "
            "two was edited)"
        )
    return int(target)


def read_patient(row: Row, where: str) -> str:
    """The row's ``patient_id``, refused when blank: the image would be a patient of its own,
    so one patient's lesions could straddle train and test of the patient split."""
    patient = row["patient_id"].strip()
    if not patient:
        raise DataError(f"{where}: patient_id is blank; expected the patient of the image")
    return patient


SITE_LISTS = ("ISIC_2020_Training_GroundTruth_v2.csv", "ISIC_2020_Training_GroundTruth.csv")
"""The ISIC site's names of Kaggle's ``train.csv`` (same columns, and ``lesion_id``)."""
JPEG_SIBLINGS = (".JPG", ".jpeg", ".JPEG", ".Jpg")
"""Other spellings of ``.jpg`` a copy may hold (on a case-sensitive file system)."""


def site_download_hint(manual_dir: Path) -> str:
    """When ``train.csv`` is missing but the ISIC site's list is there: what to do with it.

    Why: the site's download is the same data under other names; "train.csv not found"
    beside the very list the user downloaded sends them looking for another download.
    """
    found = next((manual_dir / n for n in SITE_LISTS if (manual_dir / n).is_file()), None)
    if found is None:
        return ""
    return (
        f", but {found.name} (the ISIC site's list) is there: copy or rename it to train.csv, "
        "and put the images of ISIC_2020_Training_JPEG (its train/ folder) in jpeg/train/"
    )


def refuse_site_folder(manual_dir: Path) -> None:
    """Refuse a copy whose images sit in the ISIC site's ``train/`` folder, not in
    ``jpeg/train/``, saying to move them: "38 of the 38 listed images do not exist (a
    partly downloaded copy?)" sends the user after another download."""
    site = manual_dir / "train"
    if (manual_dir / "jpeg" / "train").is_dir() or not site.is_dir():
        return
    with os.scandir(site) as entries:
        if not any(e.name.lower().endswith(IMAGE_SUFFIXES) for e in entries):
            return
    raise DataError(
        f"{manual_dir / 'jpeg' / 'train'} not found, but {site} holds images; expected the "
        "images in jpeg/train/ (Kaggle's layout): move the ISIC site's train/ folder there"
    )


def refuse_renamed_image(path: Path, where: str) -> None:
    """Refuse a listed ``<name>.jpg`` that is missing while ``<name>.JPG`` (or ``.jpeg``)
    is there, naming it: "1 of the 38 listed images do not exist" alone would send the
    user looking for a download, not at the case of the names."""
    if path.is_file():
        return
    sibling = next((s for s in map(path.with_suffix, JPEG_SIBLINGS) if s.is_file()), None)
    if sibling is not None:
        raise DataError(
            f"{where}: {str(path)!r} not found, but {sibling.name!r} is there; expected the "
            f"release's names, <image_name>.jpg: rename the images (e.g. {sibling.name!r} -> "
            f"{path.name!r})"
        )


IMAGE_SUFFIXES = (".jpg", ".jpeg")
"""The image files of ``jpeg/train/`` (any case) that ``train.csv`` must list."""


def refuse_unlisted_images(
    folder: Path, names: AbstractSet[str], duplicates: dict[str, int]
) -> set[str]:
    """Refuse an image in ``jpeg/train/`` that ``train.csv`` does not list, naming the first
    and counting them; a duplicate list's ``image_name_2`` (dropped anyway) may be unlisted.

    ``train.csv`` is the index: a row lost (a spreadsheet's round trip, a cut download)
    dropped its image without a word, and with it the official release's checks of the
    duplicate list (which go by its 33,126 rows). A deliberate subset lists the images it
    holds; one cut from the whole download leaves the others out of ``jpeg/train/`` too.
    A listing of the folder's names: nothing is opened.

    Returns the duplicates on disk that ``train.csv`` does not list (one cleared of
    them): they count as the release's images, listed and dropped.
    """
    if not folder.is_dir():
        return set()  # the listed images' absence is named when they are read
    with os.scandir(folder) as entries:
        stems = {
            e.name: e.name.rsplit(".", 1)[0]
            for e in entries
            if not e.name.startswith(".") and e.name.lower().endswith(IMAGE_SUFFIXES)
        }
    unlisted = sorted(
        n for n, stem in stems.items() if stem not in names and stem not in duplicates
    )
    if unlisted:
        raise DataError(
            f"{folder}: image {unlisted[0]!r} is not in train.csv ({len(unlisted)} such "
            "image(s)); expected train.csv to list every image in jpeg/train/ (a lost row? "
            "for a deliberate subset, move the images it leaves out out of jpeg/train/)"
        )
    return {stem for stem in stems.values() if stem in duplicates and stem not in names}


def parse(manual_dir: Path, config: MedicalConfig) -> dict[str, list[Example]]:
    if config.split_by not in SPLIT_BY:
        raise DataError(f"--split-by must be one of {SPLIT_BY}, got {config.split_by!r}")
    csv_path = manual_dir / "train.csv"
    if not csv_path.is_file():
        raise DataError(f"{csv_path} not found{site_download_hint(manual_dir)}; expected {LAYOUT}")
    refuse_site_folder(manual_dir)
    duplicates = read_duplicates(manual_dir)
    examples, listed, dropped, names = [], 0, set(), {}
    for row in read_csv(csv_path, ["image_name", "patient_id", "target"], HEADER):
        where = f"{csv_path}:{row.line}"
        name = row["image_name"].strip()
        refuse_listed_again(names, name, csv_path, row.line, "image_name")
        listed += 1
        if name in duplicates:
            dropped.add(name)
            continue
        rel = f"jpeg/train/{name}.jpg"
        path = safe_join(manual_dir, rel, source=where)
        refuse_renamed_image(path, where)
        patient = read_patient(row, where)
        examples.append(Example(path, read_target(row, where), rel, patient=patient))
    # A train.csv cleared of the duplicates, beside the download's images: still the release.
    cleared = refuse_unlisted_images(manual_dir / "jpeg" / "train", names.keys(), duplicates)
    listed += len(cleared)
    dropped |= cleared
    refuse_unmatched_duplicates(manual_dir / DUPLICATES, duplicates, listed, dropped)
    refuse_partial_duplicates(manual_dir / DUPLICATES, listed, len(dropped))
    return split_examples(
        examples, split_by=config.split_by, val_fraction=config.val_fraction, seed=config.seed
    )


LAYOUT = (
    "train.csv and jpeg/train/ISIC_*.jpg (Kaggle's siim-isic-melanoma-classification "
    "download) and ISIC_2020_Training_Duplicates.csv (https://challenge2020.isic-archive.com/)"
)
TASK = Task(
    name="isic2020",
    class_names=CLASS_NAMES,
    parse=parse,
    layout=LAYOUT,
    options=("split_by",),
)


class Isic2020(MedicalBuilder, skip_registration=True):
    """TFDS builder of ISIC 2020 (stratified 20% test, by patient or by image)."""

    name = "medft_isic2020"
    TASK = TASK
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT
