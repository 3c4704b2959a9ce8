"""ISIC 2020 (SIIM-ISIC melanoma classification): benign vs malignant skin lesions.

Layout: ``train.csv`` (``image_name,patient_id,sex,age_approx,
anatom_site_general_challenge,diagnosis,benign_malignant,target``),
``jpeg/train/<image_name>.jpg`` and the challenge's duplicate list
``ISIC_2020_Training_Duplicates.csv`` (``image_name_1,image_name_2``): the
second image of each of its 425 pairs is dropped (33,126 -> 32,701). Like
the paper: ``test`` a patient-grouped, stratified, seeded 20% (26,160 /
6,541 at full size), ``val`` carved from the remaining patients.
"""

from __future__ import annotations

from pathlib import Path

from medft_jax.data.builders.base import MedicalBuilder, MedicalConfig, Task
from medft_jax.data.errors import DataError
from medft_jax.data.paths import safe_join
from medft_jax.data.records import Record, standard_splits
from medft_jax.data.table import read_csv

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
TEST_FRACTION = 0.2


def read_duplicates(manual_dir: Path) -> set[str]:
    """The ``image_name_2`` column of the challenge's duplicate list."""
    path = manual_dir / DUPLICATES
    if not path.is_file():
        raise DataError(
            f"{path} not found; the ISIC 2020 duplicate list (image_name_1,image_name_2) "
            "is needed to drop the 425 duplicate images"
        )
    return {row["image_name_2"].strip() for row in read_csv(path, ["image_name_1", "image_name_2"])}


def parse(manual_dir: Path, config: MedicalConfig) -> dict[str, list[Record]]:
    csv_path = manual_dir / "train.csv"
    if not csv_path.is_file():
        raise DataError(f"{csv_path} not found; expected {LAYOUT}")
    duplicates = read_duplicates(manual_dir)
    records = []
    for row in read_csv(csv_path, ["image_name", "patient_id", "target"], HEADER):
        where = f"{csv_path}:{row.line}"
        name = row["image_name"].strip()
        if name in duplicates:
            continue
        target = row["target"].strip()
        if target not in ("0", "1"):
            raise DataError(
                f"{where}: target {target!r} outside the class list 0 (benign), 1 (malignant)"
            )
        rel = f"jpeg/train/{name}.jpg"
        path = safe_join(manual_dir, rel, source=where)
        records.append(Record(path, int(target), rel, patient=row["patient_id"].strip()))
    return standard_splits(
        records,
        val_fraction=config.val_fraction,
        test_fraction=TEST_FRACTION,
        seed=config.seed,
        stratify=True,
    )


LAYOUT = (
    "train.csv, ISIC_2020_Training_Duplicates.csv and jpeg/train/ISIC_*.jpg "
    "(https://challenge2020.isic-archive.com/)"
)
TASK = Task(name="isic2020", class_names=CLASS_NAMES, parse=parse, layout=LAYOUT)


class Isic2020(MedicalBuilder, skip_registration=True):
    """TFDS builder of ISIC 2020 (patient-grouped, stratified 20% test)."""

    name = "medft_isic2020"
    TASK = TASK
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT
