"""BACH (ICIAR 2018 grand challenge): 4 classes of breast histology microscopy.

Layout: ``ICIAR2018_BACH_Challenge/Photos/{Normal,Benign,InSitu,Invasive}/*.tif``,
2048×1536 RGB TIFFs, 100 per class. No patient ids are published, so splits
are per image: ``test`` a stratified, seeded 10% (360 / 40, as the paper),
``val`` carved from the rest.
"""

from __future__ import annotations

from pathlib import Path

from medft_jax.data.builders.base import MedicalBuilder, MedicalConfig, Task
from medft_jax.data.errors import DataError
from medft_jax.data.examples import Example, standard_splits
from medft_jax.data.paths import scan_files

CLASS_NAMES = ("Normal", "Benign", "InSitu", "Invasive")
TEST_FRACTION = 0.1


def find_photos(manual_dir: Path) -> Path:
    for candidate in (
        manual_dir / "ICIAR2018_BACH_Challenge" / "Photos",
        manual_dir / "Photos",
        manual_dir,
    ):
        if all((candidate / c).is_dir() for c in CLASS_NAMES):
            return candidate
    raise DataError(
        f"{manual_dir}: no Photos/ folder with {', '.join(CLASS_NAMES)} subfolders; "
        f"expected {LAYOUT}"
    )


def parse(manual_dir: Path, config: MedicalConfig) -> dict[str, list[Example]]:
    photos = find_photos(manual_dir)
    examples = []
    for label, name in enumerate(CLASS_NAMES):
        files = scan_files(manual_dir, photos / name, (".tif", ".tiff"), recursive=False)
        if not files:
            raise DataError(f"class folder {photos / name} has no .tif images")
        examples += [Example(p, label, p.relative_to(photos.parent).as_posix()) for p in files]
    return standard_splits(
        examples,
        val_fraction=config.val_fraction,
        test_fraction=TEST_FRACTION,
        seed=config.seed,
        stratify=True,
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
