"""Examples of a file-based dataset before decoding: path, label, ids; splitting and checks.

An :class:`Example` is one image of a dataset as its source lists it (not
to be confused with a *run record*, :mod:`medft_jax.results`).

Every file-based source parses its on-disk layout into ``{split: [Example]}``
first (cheap: CSVs and directory listings), so splitting, validation and
counting are plain Python, testable without decoding an image, and shared by
the TFDS builders and the ``folder``/``csv`` sources.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medft_jax.data import cache
from medft_jax.data.errors import DataError
from medft_jax.data.images import IMAGE_SUFFIXES, ImageReader
from medft_jax.data.paths import special_kind
from medft_jax.data.splits import carve, check_disjoint
from medft_jax.errors import note

Label = int | tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Example:
    """One example on disk.

    Attributes:
      path: the file to decode.
      label: class id, or a multi-hot tuple of floats.
      id: unique, stable id (the path relative to the dataset root).
      patient: the unit splits are disjoint over (patient, video); defaults to ``id``.
      group: the evaluation unit (MURA's study); defaults to ``id``.
    """

    path: Path
    label: Label
    id: str
    patient: str = ""
    group: str = ""

    def __post_init__(self) -> None:
        if not self.patient:
            object.__setattr__(self, "patient", self.id)
        if not self.group:
            object.__setattr__(self, "group", self.id)


def labels_of(examples: Sequence[Example], multilabel: bool, num_classes: int) -> np.ndarray:
    """int32 ``(N,)`` or float32 ``(N, C)``."""
    if multilabel:
        return np.asarray([ex.label for ex in examples], dtype=np.float32).reshape(-1, num_classes)
    return np.asarray([ex.label for ex in examples], dtype=np.int32)


SPLIT_NAMES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
"""A split folder's name, or a CSV split column's value (lower-cased) -> its split."""

VAL_FRACTION, TEST_FRACTION = 0.1, 0.2
"""What a user's dataset carves from its training images for a split it does not give."""


def fraction_for(split: str, value: float | None, given_by: str | None, where: str) -> float:
    """The fraction to carve ``split`` with; refuses one given for a split the data gives.

    ``given_by``: what gives the split (``test/``, column ``split``), None when
    nothing does. A fraction given there would change nothing but the cache's
    name: refused, as every flag that changes nothing is.
    """
    default = VAL_FRACTION if split == "val" else TEST_FRACTION
    if value is not None and given_by is not None:
        raise DataError(
            f"{where}: {split}_fraction (--{split}-fraction) {value:g} does not apply: "
            f"{given_by} gives the {split} split; leave it out"
        )
    return default if value is None else value


def refuse_unused_seed(seed: int, given_by: str, where: str) -> None:
    """Refuses a data seed other than 0 where the data gives every split: nothing is carved,
    so ``--data-seed 1 2`` would be runs of other names and one split, "repeated random
    splits" without a second split (as it is refused for the official splits)."""
    if seed != 0:  # run's --data-seed, prepare's --seed, a grid's data_seed: named alike
        raise DataError(
            f"{where}: data seed {seed} does not apply: {given_by} give every split, so "
            "nothing is carved; leave it out"
        )


def carve_examples(
    examples: Sequence[Example], fraction: float, seed: int | str, *, stratify: bool
) -> tuple[list[Example], list[Example]]:
    """``(rest, carved)``: a patient-disjoint, seeded (and stratified) carve."""
    labels = [int(ex.label) for ex in examples] if stratify else None  # type: ignore[arg-type]
    mask = carve([ex.patient for ex in examples], fraction, seed, labels=labels)
    return (
        [ex for ex, m in zip(examples, mask, strict=True) if not m],
        [ex for ex, m in zip(examples, mask, strict=True) if m],
    )


def carve_stream(split: str, seed: int) -> int | str:
    """What orders the groups of the ``split`` carve of data seed ``seed``
    (:func:`medft_jax.data.splits.carve`): val draws from ``seed + 1``, test from ``seed``
    for seed 0 and from its own tagged stream for every other seed.

    Test of seed ``s + 1`` drew from ``s + 1`` as val of seed ``s`` does: the two carves
    walked one order, and seed 0's validation images (which chose its epoch and LR) were
    all in seed 1's test set, for every pair of consecutive seeds (repeated random splits
    then not independent). Seed 0, every default run's, keeps its splits.
    """
    if split == "val":
        return seed + 1
    return seed if seed == 0 else f"test{seed}"


def carve_checked(
    examples: Sequence[Example],
    split: str,
    fraction: float,
    seed: int,
    *,
    stratify: bool,
    where: str = "",
    fixed: bool = False,
    test_carve: tuple[float, int, int, bool] | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[list[Example], list[Example]]:
    """:func:`carve_examples` of ``split`` for data seed ``seed`` (its stream:
    :func:`carve_stream`), refusing a carve that leaves ``split`` or what remains empty
    (the test carve: less than two images, one to train and one to validate on), in one line
    naming the fraction's flag; an empty split was found later and named no flag.
    ``fixed``: the fraction is the task's own (a paper task's test share), no flag's.
    ``test_carve``: for the val carve, the test carve before it (its fraction, images
    taken, images it was taken from, fixed), named where too few are left: a large
    ``--test-fraction`` was told as a fault of the default ``--val-fraction``.
    ``class_names``: what a refusal calls a class by its label (else its index)."""
    rest, carved = carve_examples(examples, fraction, carve_stream(split, seed), stratify=stratify)
    named = f"the task's fixed {split} share" if fixed else f"--{split}-fraction"
    need = 2 if split == "test" else 1
    if not carved or len(rest) < need:
        after = " left after the test split" if split == "val" else ""
        if test_carve is not None:
            t_fraction, t_taken, t_total, t_fixed = test_carve
            t_named = "the task's fixed test share" if t_fixed else "--test-fraction"
            after += f" ({t_named} {t_fraction:g} took {t_taken} of {t_total})"
        also = " and validate" if split == "test" else ""
        expected = "more images" if fixed else "a fraction that leaves both"
        if test_carve is not None and not fixed and not test_carve[3]:  # both fractions flags
            expected = "fractions that leave images in train, val and test"
        # Each class is carved by its own share: no fraction fits a class of one unit (where
        # no test carve came first, whose fraction may have left the class so few).
        # A paper task's classes and share are fixed: "more images" is all there is to say.
        lone = (
            _class_of_one_unit(examples) if stratify and test_carve is None and not fixed else None
        )
        if lone is not None:
            label, unit = lone
            named_class = (
                repr(class_names[label])
                if class_names is not None
                and isinstance(label, int)
                and 0 <= label < len(class_names)
                else str(label)
            )
            expected = (
                f"more {unit}s: class {named_class} has all its images here from one {unit}, which "
                f"one split or the other takes whole, so no fraction leaves it in both; add "
                f"{unit}s of it, or drop the class"
            )
        raise DataError(
            f"{where + ': ' if where else ''}{named} {fraction:g}: the {split} split "
            f"takes {len(carved)} of the {len(examples)} images{after}, leaving {len(rest)} to "
            f"train{also} on; expected {expected}"
        )
    asked = fraction * len(examples)
    if abs(len(carved) - asked) > max(2.0, 0.25 * asked):
        # Each class (or patient) gives its own rounded share: many small classes drift
        # (10 classes of 5 images at 0.1 give 1 image, at 0.3 give 20 of 50).
        said = (
            f"note: {where + ': ' if where else ''}the {split} split takes {len(carved)} of "
            f"the {len(examples)} images ({len(carved) / len(examples):.0%}), not the "
            f"{fraction:.0%} of {named}: each class and patient is carved by its "
            "own rounded share"
        )
        if said not in _CARVE_NOTES_SAID:  # a prepare lists a task twice (then TFDS does)
            _CARVE_NOTES_SAID.add(said)
            note(said)
    return rest, carved


def _class_of_one_unit(examples: Sequence[Example]) -> tuple[Any, str] | None:
    """The first class (label, in label order) whose examples are of one patient (group),
    or one image where images are the units, and the unit's word; None when none is."""
    units: dict[Any, set[str]] = {}
    grouped = any(ex.patient != ex.id for ex in examples)
    for ex in examples:
        units.setdefault(ex.label, set()).add(ex.patient)
    lone = sorted(
        (label for label, u in units.items() if len(u) < 2),
        key=lambda v: (0, v, "") if isinstance(v, int) else (1, 0, str(v)),  # 2 before 10
    )
    return (lone[0], "patient" if grouped else "image") if lone else None


def carve_missing(
    splits: dict[str, list[Example]],
    fractions: Mapping[str, float],
    seed: int,
    *,
    stratify: bool,
    where: str,
    class_names: Sequence[str] | None = None,
) -> None:
    """Carves ``test``, then ``val``, from ``splits["train"]`` where ``splits`` has none
    (in place; a user's folder or CSV giving some splits): :func:`carve_checked` each,
    the val carve told of the test carve before it; ``class_names`` name a class refused."""
    before = None
    if not splits.get("test"):
        total = len(splits["train"])
        splits["train"], splits["test"] = carve_checked(
            splits["train"],
            "test",
            fractions["test"],
            seed,
            stratify=stratify,
            where=where,
            class_names=class_names,
        )
        before = (fractions["test"], len(splits["test"]), total, False)
    if not splits.get("val"):
        splits["train"], splits["val"] = carve_checked(
            splits["train"],
            "val",
            fractions["val"],
            seed,
            stratify=stratify,
            where=where,
            test_carve=before,
            class_names=class_names,
        )


_CARVE_NOTES_SAID: set[str] = set()
"""The carve notes this process has printed: the same listing carved again says nothing new."""


def standard_splits(
    train: Sequence[Example],
    test: Sequence[Example] | None = None,
    *,
    val_fraction: float,
    test_fraction: float | None = None,
    seed: int,
    stratify: bool,
    class_names: Sequence[str] | None = None,
) -> dict[str, list[Example]]:
    """``train``/``val``/``test``: ``test`` given (official) or carved, then ``val`` carved.

    Test is carved, then val from what remains (their streams: :func:`carve_stream`),
    both disjoint by patient. ``class_names``: what a refusal calls a class (MURA's val
    carve beside its official test: "class 0" said less than "class 'normal'").
    """
    rest = list(train)
    if test is None:
        if test_fraction is None:
            raise DataError("no official test split: a test fraction is needed")
        total = len(rest)
        rest, test = carve_checked(  # the paper's share: no flag sets it
            rest, "test", test_fraction, seed, stratify=stratify, fixed=True,
            class_names=class_names,
        )  # fmt: skip
        before = (test_fraction, len(test), total, True)
    else:
        before = None
    rest, val = carve_checked(
        rest, "val", val_fraction, seed, stratify=stratify, test_carve=before,
        class_names=class_names,
    )  # fmt: skip
    return {"train": rest, "val": val, "test": list(test)}


def validate(
    splits: dict[str, list[Example]], class_names: Sequence[str], multilabel: bool, *, where: str
) -> None:
    """Raises :class:`DataError` unless the labels can train the classifier they describe.

    Refused: an empty split; a label that is not an integer class id in
    range (a bool, a float such as 0.9, NaN or a string included: they would
    be cast without a word) or, multilabel, not 0/1; fewer than two classes
    (single-label); a class with no example in ``train`` (the model could
    never predict it: the error names it); an example (id) listed twice, in
    one split or in two (one image would train and test the model); a
    patient in two splits. ``where`` names the dataset/manual dir for the message.
    Every source runs this before it writes anything.
    """
    num = len(class_names)
    if not multilabel and num < 2:
        raise DataError(
            f"{where}: only one class ({', '.join(map(repr, class_names)) or 'none'}); "
            "a classifier needs at least two"
        )
    if multilabel and num < 1:
        raise DataError(f"{where}: no label columns")
    listed: dict[str, str] = {}  # example id -> the split that lists it
    for name, examples in splits.items():
        if not examples:
            raise DataError(f"{where}: split {name!r} came out empty")
        for ex in examples:
            _check_label(ex, class_names, multilabel, where)
            first = listed.get(ex.id)
            if first is not None:
                in_which = f"split {name!r}" if first == name else f"splits {first!r} and {name!r}"
                raise DataError(
                    f"{where}: {ex.id!r} is listed twice ({in_which}); an example listed twice"
                )
            listed[ex.id] = name
    _check_train_labels(splits.get("train", []), class_names, multilabel, where)
    check_disjoint(
        {name: [ex.patient for ex in members] for name, members in splits.items()}, where
    )
    _check_files_exist(splits, where)


def _check_train_labels(
    train: Sequence[Example], class_names: Sequence[str], multilabel: bool, where: str
) -> None:
    """Refuses a class with no training example, or a label column of one value in train.

    Either is an output that can only learn a constant: never predicted (single-label),
    or a sigmoid driven to 0 (never positive) or to 1 (always positive), scored on the
    val and test splits as if it had learnt something.
    """
    num = len(class_names)
    if not multilabel:
        seen = np.bincount([int(ex.label) for ex in train], minlength=num)
        missing = [c for c, count in zip(class_names, seen, strict=True) if count == 0]
        if missing:
            raise DataError(
                f"{where}: class {missing[0]!r} has no examples in the training split; every "
                "class needs training examples"
            )
        return
    seen = np.sum([ex.label for ex in train], axis=0) if train else np.zeros(num)
    for name, count in zip(class_names, seen, strict=True):
        if count == 0:
            raise DataError(
                f"{where}: label {name!r} is positive in no training example; every label "
                "needs positive training examples"
            )
        if count == len(train):
            raise DataError(
                f"{where}: label {name!r} is positive in every training example; every label "
                "needs negative training examples"
            )


def _check_files_exist(splits: dict[str, list[Example]], where: str) -> None:
    """Refuses listed images that are not on disk, or one file listed under two names.

    A partly downloaded or moved copy would otherwise fail only when its first
    missing file is decoded, after part of the data was written, or, with
    ``--skip-bad-images`` (corrupt files), shrink without a word. Two names of
    one file (symbolic or hard links: the same device and inode) would be two
    examples of one image, in two classes or in training and test.
    """
    listed = [(name, ex) for name, members in splits.items() for ex in members]
    missing = []
    first: dict[tuple[int, int], tuple[str, Example]] = {}
    for name, ex in listed:
        try:
            st = os.stat(ex.path)
        except OSError:
            missing.append(ex)
            continue
        if not stat.S_ISREG(st.st_mode):
            kind = special_kind(ex.path) or "a folder"
            raise DataError(f"{where}: listed image {ex.path} is {kind}, not a file")
        seen = first.setdefault((st.st_dev, st.st_ino), (name, ex))
        if seen[1] is not ex:
            in_which = f"split {name!r}" if seen[0] == name else f"splits {seen[0]!r} and {name!r}"
            raise DataError(
                f"{where}: {seen[1].path} and {ex.path} are one file (links to one image; "
                f"{in_which}); an image listed twice would be two examples"
            )
    if missing:
        raise DataError(
            f"{where}: {len(missing)} of the {len(listed)} listed images do not exist, e.g. "
            f"{missing[0].path} ({_renamed(missing[0].path)}); --skip-bad-images "
            "skips corrupt files, not missing ones"
        )


def _renamed(path: Path) -> str:
    """Why a listed image may be missing: another image of its name beside it (frames
    re-encoded as ``.jpg``, ``.PNG`` for ``.png``) says the names, not a download, are at
    fault."""
    try:
        with os.scandir(path.parent) as entries:
            beside = sorted(
                e.name
                for e in entries
                if e.name != path.name
                and Path(e.name).stem == path.stem
                and Path(e.name).suffix.lower() in IMAGE_SUFFIXES
            )
    except OSError:
        beside = []
    if beside:
        return f"but {beside[0]!r} is there: renamed or re-encoded? expected the listed names"
    return "a partly downloaded or moved copy?"


def _check_label(ex: Example, class_names: Sequence[str], multilabel: bool, where: str) -> None:
    num = len(class_names)
    if multilabel:
        if not isinstance(ex.label, tuple) or len(ex.label) != num:
            raise DataError(f"{where}: {ex.id}: expected {num} multi-hot labels, got {ex.label!r}")
        if any(isinstance(v, bool | str) or v not in (0.0, 1.0) for v in ex.label):
            raise DataError(f"{where}: {ex.id}: multi-hot labels must be 0 or 1, got {ex.label!r}")
        return
    if isinstance(ex.label, bool | np.bool_) or not isinstance(ex.label, int | np.integer):
        raise DataError(
            f"{where}: {ex.id}: label {ex.label!r} is not an integer class id "
            f"(0..{num - 1} of {list(class_names)})"
        )
    if not 0 <= ex.label < num:
        raise DataError(
            f"{where}: {ex.id}: label {ex.label!r} outside the class list {list(class_names)}"
        )


def split_plan(
    examples: Sequence[Example],
    reader: ImageReader,
    *,
    multilabel: bool,
    num_classes: int,
    chunk: int = 64,
) -> cache.SplitPlan:
    """A :class:`~medft_jax.data.cache.SplitPlan` that decodes ``examples`` with ``reader``."""

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(examples), chunk):
            images, kept = [], []
            for image in reader.read_many([ex.path for ex in examples[start : start + chunk]]):
                kept.append(image is not None)
                if image is not None:
                    images.append(image)
            shape = (0, reader.crop_size, reader.crop_size, 3)
            yield (np.stack(images) if images else np.zeros(shape, np.uint8)), np.asarray(kept)

    fields = {
        "labels": labels_of(examples, multilabel, num_classes),
        "ids": np.asarray([ex.id for ex in examples], dtype=str),
        "groups": np.asarray([ex.group for ex in examples], dtype=str),
        "patients": np.asarray([ex.patient for ex in examples], dtype=str),
    }
    shape = (reader.crop_size, reader.crop_size, 3)
    return cache.SplitPlan(len(examples), shape, chunks, fields)
