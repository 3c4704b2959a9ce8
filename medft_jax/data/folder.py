"""``folder``: the user's images, one subfolder per class.

Either ``<root>/<class>/*.png`` (val and test carved, seeded and
stratified) or pre-split ``<root>/train/<class>/...`` with optional
``val/`` and ``test/`` beside it (what is missing is carved from train).
Class names are the subfolder names, sorted. An empty class folder, or a
single class, is an error naming it. Symbolic links are followed only while
they stay inside ``<root>`` (see :mod:`medft_jax.data.paths`).
"""

from __future__ import annotations

from pathlib import Path

from medft_jax.data.errors import DataError
from medft_jax.data.examples import Example, carve_examples
from medft_jax.data.images import IMAGE_SUFFIXES
from medft_jax.data.paths import scan_files, sub_folders

SPLIT_DIRS = ("train", "val", "test")


def _classes(root: Path, base: Path) -> list[str]:
    names = [p.name for p in sub_folders(base, root)]
    if not names:
        raise DataError(f"{root}: no class subfolders found; expected <root>/<class>/<image>")
    if len(names) == 1:
        raise DataError(
            f"{root}: only one class folder ({names[0]!r}); a classifier needs at least two "
            "(<root>/<class>/<image>, one folder per class)"
        )
    return names


def _scan(root: Path, base: Path, class_names: list[str], split: str) -> list[Example]:
    examples = []
    for label, name in enumerate(class_names):
        folder = root / name
        if not folder.is_dir():
            continue
        files = scan_files(base, folder, IMAGE_SUFFIXES)
        if not files and split == "train":
            raise DataError(f"class folder {folder} is empty; expected {'/'.join(IMAGE_SUFFIXES)}")
        examples += [Example(p, label, p.relative_to(base).as_posix()) for p in files]
    extra = sorted(p.name for p in sub_folders(base, root) if p.name not in class_names)
    if extra:
        raise DataError(f"{root}: folder(s) {extra} are not classes of train {class_names}")
    return examples


def parse_folder(
    root: Path, *, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[str], dict[str, list[Example]]]:
    """``(class_names, {split: examples})`` of an image folder tree."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--manual-dir {root} is not a directory")
    if (root / "train").is_dir():
        class_names = _classes(root / "train", root)
        given = {
            s: _scan(root / s, root, class_names, s) for s in SPLIT_DIRS if (root / s).is_dir()
        }
        train = given["train"]
        if "test" not in given:
            train, given["test"] = carve_examples(train, test_fraction, seed, stratify=True)
        if "val" not in given:
            train, given["val"] = carve_examples(train, val_fraction, seed + 1, stratify=True)
        given["train"] = train
        return class_names, {s: given[s] for s in SPLIT_DIRS}
    class_names = _classes(root, root)
    examples = _scan(root, root, class_names, "train")
    rest, test = carve_examples(examples, test_fraction, seed, stratify=True)
    rest, val = carve_examples(rest, val_fraction, seed + 1, stratify=True)
    return class_names, {"train": rest, "val": val, "test": test}
