"""``csv``: the user's images listed in a CSV file (a path column + labels).

Single-label: a ``label`` column whose values are class names (or ids);
multilabel: one 0/1 column per class (``label_columns``). Optional columns:
``group`` (patient id: splits stay disjoint by it) and ``split``
(train/val/test; what is missing is carved, seeded). Paths are relative to
the dataset root and may not escape it.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from medft_jax.data.errors import DataError
from medft_jax.data.images import safe_join
from medft_jax.data.records import Record, carve_records

SPLITS = ("train", "val", "test")


def read_csv(
    path: Path, required: Sequence[str], header: Sequence[str] | None = None
) -> list[dict[str, str]]:
    """Rows of ``path`` as dicts; a missing column names it and the expected header.

    ``header`` is the full header to quote in that message (default: ``required``).
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            found = reader.fieldnames or []
            missing = [c for c in required if c not in found]
            if missing:
                raise DataError(
                    f"{path}: missing column {missing[0]!r}; expected the header "
                    f"{','.join(header or required)} (found {','.join(found) or 'nothing'})"
                )
            return list(reader)
    except FileNotFoundError:
        raise DataError(f"CSV file not found: {path}") from None


def parse_table(
    root: Path,
    csv_file: str | Path,
    *,
    path_column: str = "path",
    label_column: str = "label",
    label_columns: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    group_column: str | None = None,
    split_column: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[list[str], bool, dict[str, list[Record]]]:
    """``(class_names, multilabel, {split: records})`` from a labels CSV."""
    root = Path(root)
    csv_path = Path(csv_file) if Path(csv_file).is_absolute() else root / csv_file
    multilabel = bool(label_columns)
    label_cols = list(label_columns) if multilabel else [label_column]  # type: ignore[arg-type]
    required = [path_column, *label_cols] + [c for c in (group_column, split_column) if c]
    rows = read_csv(csv_path, required)
    if multilabel:
        names = list(label_cols)
    elif class_names:
        names = list(class_names)
    else:
        names = sorted({row[label_column] for row in rows})
    by_split: dict[str, list[Record]] = {s: [] for s in SPLITS}
    for line, row in enumerate(rows, start=2):
        where = f"{csv_path}:{line}"
        path = safe_join(root, row[path_column], source=where)
        if multilabel:
            try:
                label = tuple(float(row[c]) for c in label_cols)
            except ValueError:
                raise DataError(f"{where}: label columns must hold 0 or 1") from None
            if any(v not in (0.0, 1.0) for v in label):
                raise DataError(f"{where}: label columns must hold 0 or 1")
        else:
            value = row[label_column]
            if value not in names:
                raise DataError(f"{where}: label {value!r} outside the class list {names}")
            label = names.index(value)
        split = row[split_column].strip() if split_column else "train"
        if split not in by_split:
            raise DataError(f"{where}: split {split!r} must be one of {', '.join(SPLITS)}")
        group = row[group_column] if group_column else ""
        by_split[split].append(Record(path, label, row[path_column], patient=group))
    stratify = not multilabel
    if not by_split["test"]:
        by_split["train"], by_split["test"] = carve_records(
            by_split["train"], test_fraction, seed, stratify=stratify
        )
    if not by_split["val"]:
        by_split["train"], by_split["val"] = carve_records(
            by_split["train"], val_fraction, seed + 1, stratify=stratify
        )
    return names, multilabel, by_split
