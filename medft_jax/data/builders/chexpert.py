"""CheXpert (Irvin et al. 2019): 5 multilabel findings from chest X-rays.

Layout: ``CheXpert-v1.0-small/{train,valid}.csv`` + the images they list
(paths in the CSVs start with ``CheXpert-v1.0-small/``, or ``./`` and that:
they are normalised, and one with a ``..`` part refused). Like the paper:
one frontal image per patient (the first the CSV lists) for training; the
official ``valid`` set, one frontal image per patient, as ``test``; ``val``
carved from training patients. Lateral views are never used. A
``Frontal/Lateral`` value other than ``Frontal`` or ``Lateral`` is refused
naming its line, and so is a CSV without a frontal row, and a ``patientN`` folder of
``train/`` or ``valid/`` that no row of its CSV names (a lost row).

Uncertain labels (-1), by ``uncertain``:

- ``"ones"`` (U-Ones, default): every uncertain label becomes 1.
- ``"zeros"`` (U-Zeros): every uncertain label becomes 0.
- ``"libauc"``: the paper's, after its reference (the LibAUC CheXpert
  loader): 1 for Edema and Atelectasis, 0 for Cardiomegaly, Consolidation
  and Pleural Effusion, on frontal images.

Unmentioned (empty) is 0 under every policy.
"""

from __future__ import annotations

import os
from pathlib import Path

from medft_jax.data.builders.base import MedicalBuilder, MedicalConfig, Task, refuse_two_copies
from medft_jax.data.errors import DataError
from medft_jax.data.examples import Example, standard_splits
from medft_jax.data.paths import listed_path, safe_join
from medft_jax.data.table import read_csv, refuse_listed_again

CLASS_NAMES = ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion")
HEADER = [
    "Path",
    "Sex",
    "Age",
    "Frontal/Lateral",
    "AP/PA",
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
]
FOLDERS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
POLICIES = ("ones", "zeros", "libauc")
LIBAUC_ONES = frozenset({"Edema", "Atelectasis"})
"""Under ``uncertain="libauc"`` these findings' uncertain labels become 1, the others' 0."""


def uncertain_value(policy: str, finding: str) -> float:
    """What an uncertain (-1) label of ``finding`` becomes under ``policy``."""
    if policy == "libauc":
        return 1.0 if finding in LIBAUC_ONES else 0.0
    return 1.0 if policy == "ones" else 0.0


def find_root(manual_dir: Path) -> Path:
    """The folder holding ``train.csv``: ``CheXpert-v1.0-small`` (or ``-v1.0``) inside
    ``manual_dir``, or ``manual_dir`` itself, whatever it is called or however reached."""
    found = [manual_dir / name for name in FOLDERS if (manual_dir / name / "train.csv").is_file()]
    if len(found) > 1:  # the small copy would win without a word: other pixels, same name
        raise DataError(
            f"{manual_dir}: holds both {' and '.join(p.name for p in found)}; point "
            "--manual-dir at the one to prepare"
        )
    own = (manual_dir / "train.csv").is_file()
    if found and own and is_listing(manual_dir / "train.csv"):
        refuse_two_copies(found[0], manual_dir, "train.csv")
    if found:
        return found[0]
    if own:
        return manual_dir
    raise DataError(f"{manual_dir}: no CheXpert-v1.0-small/train.csv; expected {LAYOUT}")


def is_listing(path: Path) -> bool:
    """Whether ``path``'s first line is CheXpert's header (``Path,...,Frontal/Lateral,...``):
    a ``train.csv`` of another dataset beside the release folder is not a second copy."""
    with open(path, "rb") as f:
        first = f.readline(4096)
    return b"Frontal/Lateral" in first


def image_path(folder: Path, rel: str, where: str) -> Path:
    """The image a CSV ``Path`` names, inside ``folder`` (the one holding the CSV).

    The CSVs' paths start with the release's folder name
    (``CheXpert-v1.0-small/train/...``). That prefix is the folder found, so it is
    dropped and the rest joined to ``folder`` itself: joined to its parent, a folder
    given as ``.``, through a symlink or renamed would read nothing, or a sibling
    copy named as the release.
    """
    first, _, rest = rel.partition("/")
    return safe_join(folder, rest if first in FOLDERS and rest else rel, source=where)


def label_value(text: str, policy: str, where: str, finding: str = "") -> float:
    """1.0 / 0.0 / -1.0 (uncertain: see :func:`uncertain_value`) / empty (unmentioned -> 0)."""
    text = text.strip()
    if text == "":
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = None
    if value == 1.0:
        return 1.0
    if value == 0.0:
        return 0.0
    if value == -1.0:
        return uncertain_value(policy, finding)
    raise DataError(f"{where}: label {text!r} is not 1.0, 0.0, -1.0 or empty")


def read_split(csv_path: Path, policy: str) -> list[Example]:
    """One frontal image per patient, in CSV order (ids: the CSV's paths, as listed)."""
    rows = read_csv(csv_path, ["Path", "Frontal/Lateral", *CLASS_NAMES], HEADER)
    examples, seen, listed, first = [], set(), set(), {}
    for row in rows:
        where = f"{csv_path}:{row.line}"
        listed.update(p for p in row["Path"].split("/") if p.startswith("patient"))
        rel = listed_path(row["Path"].strip(), source=where)
        if "\\" in rel:  # a Windows tool's export: no file, no patient folder would match
            raise DataError(f"{where}: Path {rel!r} uses backslashes; expected '/'")
        # A row pasted twice with other labels: the first frontal row stood for the
        # patient, the second's labels dropped without a word.
        refuse_listed_again(first, rel, csv_path, row.line, "Path")
        if not is_frontal(row["Frontal/Lateral"], where):
            continue
        parts = rel.split("/")
        patient = next((p for p in parts if p.startswith("patient")), None)
        if patient is None:
            raise DataError(f"{where}: Path {rel!r} has no patientN folder")
        if patient in seen:
            continue
        seen.add(patient)
        label = tuple(label_value(row[c], policy, f"{where} column {c!r}", c) for c in CLASS_NAMES)
        examples.append(
            Example(image_path(csv_path.parent, rel, where), label, rel, patient=patient)
        )
    if not examples:
        raise DataError(
            f"{csv_path}: no row with Frontal/Lateral = Frontal; expected the release's rows, "
            "a frontal image per patient"
        )
    refuse_unlisted_patients(csv_path.parent / csv_path.stem, csv_path.name, listed)
    return examples


def refuse_unlisted_patients(split_dir: Path, listing: str, listed: set[str]) -> None:
    """Refuse a ``patientN`` folder of ``split_dir`` (``valid/``, ``train/``) that no row of
    its CSV names, naming the first and counting them: the CSV is the index, so a lost row
    dropped the patient (of the official test set, for ``valid``) without a word. A
    listing of the folder's names: nothing below it is read."""
    if not split_dir.is_dir():
        return  # the listed images' absence is named when they are read
    with os.scandir(split_dir) as entries:
        unlisted = sorted(
            e.name for e in entries if e.name.startswith("patient") and e.name not in listed
        )
    if unlisted:
        raise DataError(
            f"{split_dir}: patient folder {unlisted[0]!r} has no row in {listing} "
            f"({len(unlisted)} such folder(s)); expected {listing} to list every patient "
            "folder (a lost row? a partial copy of the CSV?)"
        )


VIEWS = ("Frontal", "Lateral")


def is_frontal(value: str, where: str) -> bool:
    """Whether a ``Frontal/Lateral`` cell says Frontal; a value other than the release's
    two (``FRONTAL``, a typo) is refused: skipped, it made the patient's next frontal
    image (other labels) stand for the patient, or the patient vanish, without a word."""
    view = value.strip()
    if view not in VIEWS:
        raise DataError(f"{where}: Frontal/Lateral {view!r} is not Frontal or Lateral")
    return view == "Frontal"


def parse(manual_dir: Path, config: MedicalConfig) -> dict[str, list[Example]]:
    if config.uncertain not in POLICIES:
        raise DataError(f"--uncertain must be one of {POLICIES}, got {config.uncertain!r}")
    folder = find_root(manual_dir)
    train = read_split(folder / "train.csv", config.uncertain)
    if not (folder / "valid.csv").is_file():  # a partial copy: the layout says what is missing
        raise DataError(f"{folder / 'valid.csv'} not found; expected {LAYOUT}")
    test = read_split(folder / "valid.csv", config.uncertain)
    return standard_splits(
        train, test, val_fraction=config.val_fraction, seed=config.seed, stratify=False
    )


LAYOUT = (
    "CheXpert-v1.0-small/{train,valid}.csv and CheXpert-v1.0-small/{train,valid}/"
    "patientN/studyM/viewK_frontal.jpg (https://stanfordmlgroup.github.io/competitions/chexpert/)"
)
TASK = Task(
    name="chexpert",
    class_names=CLASS_NAMES,
    parse=parse,
    layout=LAYOUT,
    multilabel=True,
    options=("uncertain",),
)


class Chexpert(MedicalBuilder, skip_registration=True):
    """TFDS builder of CheXpert (5 findings; U-Ones, U-Zeros or LibAUC's per-finding policy)."""

    name = "medft_chexpert"
    TASK = TASK
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT
