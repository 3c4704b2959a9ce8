"""``csv``: the user's images listed in a CSV file (a path column + labels).

Single-label: a ``label`` column whose values are class names (or ids);
multilabel: one 0/1 column per class (``label_columns``). Optional columns:
``group`` (patient id: splits stay disjoint by it) and ``split``
(train/val/test; what is missing is carved, seeded). Paths are relative to
the dataset root and may not escape it.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

from medft_jax.data.errors import DataError
from medft_jax.data.examples import Example, carve_examples
from medft_jax.data.paths import safe_join

SPLITS = ("train", "val", "test")


class Row(dict[str, str]):
    """One data row of a CSV file: its fields by column, and ``line``, where it starts."""

    line: int


def read_text(path: Path) -> str:
    """The text of a UTF-8 file; latin-1 bytes or a NUL byte are one error naming the line.

    Why strict: a label file mis-decoded, or cut by a NUL, gives wrong class
    names or lost rows without a word.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder, expected a file") from None
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise DataError(f"{path}:{line}: NUL byte; expected a UTF-8 text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        bad = data[err.start : err.start + 1]
        raise DataError(
            f"{path}:{line}: byte {bad!r} is not UTF-8 (latin-1 or another encoding?); "
            "save the file as UTF-8"
        ) from None


def read_csv(path: Path, required: Sequence[str], header: Sequence[str] | None = None) -> list[Row]:
    """Rows of ``path`` as dicts (each with its ``line``); every malformed line is an error.

    A missing column names it and the expected header (``header``, default
    ``required``). Refused, with the file and line: bytes that are not
    UTF-8, a NUL byte, a row with fewer or more fields than the header, bad
    quoting, an empty file, a header with no rows. Blank lines are skipped.
    """
    expected = ",".join(header or required)
    if not Path(path).exists():
        raise DataError(f"CSV file not found: {path}")
    reader = csv.reader(io.StringIO(read_text(path), newline=""), strict=True)
    rows: list[Row] = []
    found: list[str] | None = None
    last = 0
    try:
        for fields in reader:
            start, last = last + 1, reader.line_num
            if not fields:
                continue
            if found is None:
                found = _header(path, fields, required, expected)
                continue
            if len(fields) != len(found):
                few = "fewer" if len(fields) < len(found) else "more"
                raise DataError(
                    f"{path}:{start}: {len(fields)} fields, {few} than the header's "
                    f"{len(found)} ({','.join(found)})"
                )
            row = Row(zip(found, fields, strict=True))
            row.line = start
            rows.append(row)
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({err})") from None
    if found is None:
        raise DataError(f"{path}:1: empty file; expected the header {expected}")
    if not rows:
        raise DataError(f"{path}:{last + 1}: only a header, no rows")
    return rows


def _header(path: Path, fields: list[str], required: Sequence[str], expected: str) -> list[str]:
    missing = [c for c in required if c not in fields]
    if missing:
        raise DataError(
            f"{path}: missing column {missing[0]!r}; expected the header "
            f"{expected} (found {','.join(fields) or 'nothing'})"
        )
    twice = sorted({c for c in fields if fields.count(c) > 1})
    if twice:
        raise DataError(f"{path}:1: column {twice[0]!r} appears twice in the header")
    return fields


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def class_names_of(rows: Sequence[Row], label_column: str, csv_path: Path) -> list[str]:
    """The class names a label column holds: names sorted, or integer ids sorted by value.

    Refused, naming the line: an empty label; a number that is not an
    integer id (``0.9``, ``nan``: a float label would otherwise become a
    class of its own); ids mixed with names; two spellings of one id
    (``1`` and ``1.0``).
    """
    first: dict[str, int] = {}
    for row in rows:
        value = row[label_column].strip()
        if not value:
            raise DataError(f"{csv_path}:{row.line}: empty {label_column!r}; expected a class")
        first.setdefault(value, row.line)
    numbers = {v: _number(v) for v in first}
    ids = {v: x for v, x in numbers.items() if x is not None}
    if not ids:
        return sorted(first)
    for v, x in ids.items():
        if not (math.isfinite(x) and x.is_integer()):
            raise DataError(
                f"{csv_path}:{first[v]}: label {v!r} is a number but not an integer class id"
            )
    names = [v for v, x in numbers.items() if x is None]
    if names:
        line = max(min(first[v] for v in ids), first[names[0]])
        raise DataError(
            f"{csv_path}:{line}: column {label_column!r} mixes class ids ({next(iter(ids))!r}) "
            f"and class names ({names[0]!r})"
        )
    spelled: dict[float, str] = {}
    for v, x in ids.items():
        other = spelled.setdefault(x, v)
        if other != v:
            raise DataError(f"{csv_path}:{first[v]}: labels {other!r} and {v!r} are the same id")
    return sorted(ids, key=lambda v: ids[v])


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
) -> tuple[list[str], bool, dict[str, list[Example]]]:
    """``(class_names, multilabel, {split: examples})`` from a labels CSV."""
    root = Path(root)
    csv_path = Path(csv_file) if Path(csv_file).is_absolute() else root / csv_file
    multilabel = bool(label_columns)
    label_cols = list(label_columns) if multilabel else [label_column]  # type: ignore[arg-type]
    required = [path_column, *label_cols] + [c for c in (group_column, split_column) if c]
    rows = read_csv(csv_path, required)
    if multilabel:
        names = list(label_cols)
    elif class_names:
        names = [str(c) for c in class_names]
    else:
        names = class_names_of(rows, label_column, csv_path)
    by_split: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for row in rows:
        where = f"{csv_path}:{row.line}"
        if not row[path_column].strip():
            raise DataError(f"{where}: empty {path_column!r}; expected an image path")
        path = safe_join(root, row[path_column].strip(), source=where)
        if multilabel:
            label = tuple(_hot(row[c], f"{where} column {c!r}") for c in label_cols)
        else:
            value = row[label_column].strip()
            if value not in names:
                raise DataError(f"{where}: label {value!r} outside the class list {names}")
            label = names.index(value)
        split = row[split_column].strip() if split_column else "train"
        if split not in by_split:
            raise DataError(f"{where}: split {split!r} must be one of {', '.join(SPLITS)}")
        group = row[group_column].strip() if group_column else ""
        by_split[split].append(Example(path, label, row[path_column].strip(), patient=group))
    stratify = not multilabel
    if not by_split["test"]:
        by_split["train"], by_split["test"] = carve_examples(
            by_split["train"], test_fraction, seed, stratify=stratify
        )
    if not by_split["val"]:
        by_split["train"], by_split["val"] = carve_examples(
            by_split["train"], val_fraction, seed + 1, stratify=stratify
        )
    return names, multilabel, by_split


def _hot(text: str, where: str) -> float:
    """A multi-hot cell: ``0``/``1`` (also ``0.0``/``1.0``); anything else names the cell."""
    value = _number(text.strip())
    if value not in (0.0, 1.0):
        raise DataError(f"{where}: {text.strip()!r} is not 0 or 1; label columns hold 0 or 1")
    return float(value)  # type: ignore[arg-type]
