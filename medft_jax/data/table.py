"""``csv``: the user's images listed in a CSV file (a path column + labels).

Single-label: a ``label`` column whose values are class names (or ids);
multilabel: one 0/1 column per class (``label_columns``). Optional columns:
``group`` (patient id: splits stay disjoint by it) and ``split``
(train/val/test; what is missing is carved, seeded). Paths are relative to
the dataset root and may not escape it.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import os
import re
import shlex
import stat
import unicodedata
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path

from medft_jax.data.class_names import patient_twin, refuse_twins
from medft_jax.data.dicom import is_dicom
from medft_jax.data.errors import DataError
from medft_jax.data.examples import (
    SPLIT_NAMES,
    Example,
    carve_missing,
    fraction_for,
    refuse_unused_seed,
)
from medft_jax.data.images import IMAGE_SUFFIXES, saved_twice
from medft_jax.data.paths import safe_join
from medft_jax.errors import note

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
        if data.startswith((b"\xff\xfe\0\0", b"\0\0\xfe\xff")) or b"\0\0\0" in (
            data[:3],
            data[1:4],
        ):
            raise DataError(f"{path}: UTF-32 text; expected a UTF-8 text file: save it as UTF-8")
        if data.startswith((b"\xff\xfe", b"\xfe\xff")) or nul < 2:  # Excel's "Unicode Text"
            raise DataError(
                f"{path}: UTF-16 text (Excel's 'Unicode Text'?); expected a UTF-8 text file: "
                "save it as 'CSV UTF-8'"
            )
        line = _line_at(data, nul)
        raise DataError(f"{path}:{line}: NUL byte; expected a UTF-8 text file")
    if data.startswith(codecs.BOM_UTF8):  # Excel's "CSV UTF-8": dropped, as utf-8-sig does
        data = data[len(codecs.BOM_UTF8) :]  # here, so an error's offset is this text's
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = _line_at(data, err.start)
        bad = data[err.start : err.start + 1]
        raise DataError(
            f"{path}:{line}: byte {bad!r} is not UTF-8 (latin-1 or another encoding?); "
            "save the file as UTF-8"
        ) from None


def _line_at(data: bytes, pos: int) -> int:
    """The line holding byte ``pos``, counting ``\\r\\n``, ``\\n`` and a lone ``\\r`` (classic
    Mac Excel's "CSV (Macintosh)") as one break each, as the csv module reads them."""
    head = data[:pos]
    return head.count(b"\n") + head.count(b"\r") - head.count(b"\r\n") + 1


def read_csv(
    path: Path,
    required: Sequence[str],
    header: Sequence[str] | None = None,
    naming: Mapping[str, str] | None = None,
) -> list[Row]:
    """Rows of ``path`` as dicts (each with its ``line``); every malformed line is an error.

    A missing column names it and the expected header (``header``, default
    ``required``), then ``naming[column]``: how the user names it otherwise (a default
    column name the user did not give).
    Refused, with the file and line: bytes that are not UTF-8, a NUL byte, a row with
    fewer or more fields than the header, bad quoting, an empty file, a header with no
    rows. Blank lines, and rows of empty cells (``,,`` a spreadsheet writes below its data),
    are skipped. Column names, like the cells, are read without
    surrounding spaces (``path, label``).
    """
    expected = ",".join(header or required)
    if not Path(path).exists():
        raise DataError(f"CSV file not found: {path}")
    text = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[Row] = []
    found: list[str] | None = None
    last = 0
    try:
        for fields in reader:
            start, last = last + 1, reader.line_num
            if not any(f.strip() for f in fields):  # blank, or a spreadsheet's row of ",,"
                continue
            if found is None and [f.strip() for f in fields] == ["sep=", ""]:
                continue  # Excel's separator line above the header: "sep=," is what is read
            if found is None:  # names stripped as the cells are: "path, label" by hand
                found = _header(path, [f.strip() for f in fields], required, expected, naming)
                continue
            if len(fields) != len(found):
                few = "fewer" if len(fields) < len(found) else "more"
                raise DataError(
                    f"{path}:{start}: {len(fields)} fields, {few} than the header's "
                    f"{len(found)} ({','.join(found)})"
                )
            if last > start:  # a quoted cell over several lines: a stray quote's swallow?
                _refuse_swallowed_rows(path, found, fields, required, start, last)
            row = Row(zip(found, fields, strict=True))
            row.line = start
            rows.append(row)
    except csv.Error as err:
        hint = ""
        if found is None and ";" in text.partition("\n")[0]:  # R's write.csv2: "";"path"
            hint = "; its columns are separated by ';', not ','"
        # An open quote reads to the end, or past the csv module's field limit (a large
        # listing): named at its row's first line, not where the reading gave up.
        if "unexpected end of data" in str(err) or "field larger than field limit" in str(err):
            raise DataError(
                f"{path}:{last + 1}: malformed CSV (a quote opened in this row is never "
                f"closed){hint}"
            ) from None
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({err}){hint}") from None
    if found is None:
        raise DataError(f"{path}:1: empty file; expected the header {expected}")
    if not rows:
        raise DataError(f"{path}:{last + 1}: only a header, no rows")
    return rows


def _refuse_swallowed_rows(
    path: Path,
    header: Sequence[str],
    fields: Sequence[str],
    required: Sequence[str],
    start: int,
    end: int,
) -> None:
    """Refuse a row read over lines ``start``-``end`` whose multi-line cell is a stray
    quote's swallow: a quote opened in one cell and closed lines below read the rows
    between as one cell, and those images vanished without a word (or made a patient id,
    a class, of them). A cell the toolkit reads (a path, label, group or split) holds no
    line break; another (a free-text note) may, unless a line of it after the first
    reads as a whole row."""
    for column, value in zip(header, fields, strict=True):
        if "\n" not in value and "\r" not in value:
            continue
        if column in required:
            raise DataError(
                f"{path}:{start}: column {column!r} holds a line break (the row runs over "
                f"lines {start}-{end}: an unclosed quote?); expected one line per row"
            )
        listed_at = list(header).index(required[0]) if required else 0  # the path column
        for line in value.splitlines()[1:]:
            fields = next(csv.reader([line]), [])
            # A swallowed row: the header's fields, an image file where the path goes (a
            # note's "biopsy, left arm, 3mm" has the fields, not the path).
            if len(fields) == len(header) and _names_an_image(fields[listed_at]):
                raise DataError(
                    f"{path}:{start}: column {column!r} runs over lines {start}-{end} and holds "
                    f"what reads as rows ({line.strip()!r}): an unclosed quote on line "
                    f"{start}?; expected one line per row"
                )


def _names_an_image(text: str) -> bool:
    """Whether a cell reads as an image file's path (``img/x006.png``)."""
    return os.path.splitext(text.strip())[1].lower() in IMAGE_SUFFIXES


def refuse_listed_again(first: dict[str, int], key: str, path: Path, line: int, what: str) -> None:
    """Record ``key`` (a listing's ``what``: an image) at ``line`` of ``path`` in ``first``;
    refuse it listed before, naming both lines.

    Why here, in the listing: the same row pasted twice is otherwise caught only as one
    example in two places, named by the split a carve put it in, not by the file and the
    lines the user can mend.
    """
    before = first.setdefault(key, line)
    if before != line:
        raise DataError(
            f"{path}:{line}: {what} {key!r} is listed again (first on line {before}); "
            f"expected each {what} once (a line pasted twice?)"
        )


def _header(
    path: Path,
    fields: list[str],
    required: Sequence[str],
    expected: str,
    naming: Mapping[str, str] | None = None,
) -> list[str]:
    missing = [c for c in required if c not in fields]
    if missing:
        # European Excel saves "CSV" with semicolons; a tab-separated export reads alike.
        other = next((sep for sep in (";", "\t") if len(fields) == 1 and sep in fields[0]), None)
        hint = (
            f": its columns are separated by {other!r}, not ','"
            if other
            else (naming or {}).get(missing[0], "")
        )
        raise DataError(
            f"{path}: missing column {missing[0]!r}; expected the header "
            f"{expected} (found {','.join(fields) or 'nothing'}){hint}"
        )
    # Columns without a name (Excel's "path,label,," right of cells once used, pandas'
    # index) are read by no option: unused, as any column no option names, however many.
    twice = sorted({c for c in fields if c and fields.count(c) > 1})
    if twice:
        raise DataError(f"{path}:1: column {twice[0]!r} appears twice in the header")
    return fields


def _number(text: str) -> float | None:
    """A label read as a number, or None for a name: float() also took ``1_0`` (10) and
    full-width digits, so labels ``1_0``, ``2_0``, ``1_10`` were numbered as 10, 20, 110,
    and ``INF`` (infarct), ``Infinity`` as numbers that are no class id."""
    if "_" in text or not text.isascii():
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


MISSING_MARKERS = frozenset({"na", "n/a", "#n/a", "nan", "null", "#null!", "<na>"})
"""What spreadsheets and data frames write for a missing value (R's ``NA``, Excel's
``#N/A``, pandas' ``nan`` and ``<NA>``), compared in lower case. Not ``None``, ``-`` or
``?``: real grades and classes are named so."""


def missing_marker(value: str) -> bool:
    """Whether a cell holds a missing-value marker (:data:`MISSING_MARKERS`)."""
    return value.strip().lower() in MISSING_MARKERS


def class_names_of(rows: Sequence[Row], label_column: str, csv_path: Path) -> list[str]:
    """The class names a label column holds: names sorted, or integer ids sorted by value.

    Refused, naming the line: an empty label, or a missing-value marker (``NA``, ``#N/A``,
    ``nan``: R's and Excel's missing labels became a class of their own, averaged into
    every macro metric); a number that is not an integer id (``0.9``: a float label
    would otherwise become a class of its own); ids mixed with names; two spellings of
    one id (``1`` and ``1.0``).
    """
    first: dict[str, int] = {}
    for row in rows:
        value = row[label_column].strip()
        if not value:
            raise DataError(f"{csv_path}:{row.line}: empty {label_column!r}; expected a class")
        if missing_marker(value):
            raise DataError(
                f"{csv_path}:{row.line}: {label_column!r} is {value!r}, a missing value; "
                "expected a class (label the image, or drop its row)"
            )
        first.setdefault(value, row.line)
    refuse_twins(first, lambda value: f"{csv_path}:{first[value]}")  # first appearances
    _refuse_joined_labels(first, label_column, csv_path)
    numbers = {v: _number(v) for v in first}
    ids = {v: x for v, x in numbers.items() if x is not None}
    if not ids:
        return sorted(first)
    # Compared and ordered exactly: floats collapse ids past 2**53 (long codes used as
    # class ids), refused as "the same id" and ordered wrongly.
    exact = {v: Decimal(v) for v in ids}
    for v, x in exact.items():
        if x != x.to_integral_value():
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
    spelled: dict[Decimal, str] = {}
    for v, x in exact.items():
        other = spelled.setdefault(x, v)
        if other != v:
            raise DataError(f"{csv_path}:{first[v]}: labels {other!r} and {v!r} are the same id")
    return sorted(exact, key=lambda v: exact[v])


def _shell(word: str) -> str:
    """``word`` as a shell reads it back (``Patient ID`` quoted): the flag suggested was
    pasted, and ``--group-column Patient ID`` was refused for ``ID``."""
    return shlex.quote(word)


def _pass(flag: str, column: str) -> str:
    """How to give ``column`` to ``flag``: a column without a name in the header cannot be
    (``--split-column ''`` is refused as an empty name) until it is given one."""
    if not column:
        return f"name the column in the header and pass {flag} with that name"
    return f"pass {flag} {_shell(column)}"


LABEL_JOINERS = ("|", ";", ",")
"""What a multilabel export joins a row's labels with in one cell (NIH ChestX-ray14's
``Effusion|Infiltration``)."""


def _refuse_joined_labels(first: dict[str, int], label_column: str, csv_path: Path) -> None:
    """Refuses a single-label column whose values join labels it also holds alone
    (``Effusion|Infiltration`` beside ``Effusion``): read as classes, each combination was a
    class of its own, and a multilabel task trained as a 7-class one without a word.
    ``first``: each value -> the line it first appears on."""
    for value, line in first.items():
        for joiner in LABEL_JOINERS:
            parts = [p.strip() for p in value.split(joiner)]
            # Every part a label of its own: "Carcinoma, NOS" beside "Carcinoma" is a name.
            if len(parts) > 1 and all(p in first for p in parts):
                raise DataError(
                    f"{csv_path}:{line}: label {value!r} of column {label_column!r} joins "
                    f"labels that stand alone in it ({', '.join(map(repr, parts))}) with "
                    f"{joiner!r}: a multilabel column, each combination of which would be a "
                    "class; write one 0/1 column per label and give them as --label-columns "
                    f"(pandas: df[{label_column!r}].str.get_dummies(sep={joiner!r}))"
                )


def parse_table(
    root: Path,
    csv_file: str | Path,
    *,
    path_column: str = "path",
    label_column: str | None = None,
    label_columns: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    group_column: str | None = None,
    split_column: str | None = None,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    seed: int = 0,
) -> tuple[list[str], bool, dict[str, list[Example]]]:
    """``(class_names, multilabel, {split: examples})`` from a labels CSV.

    ``label_column`` (default ``label``) is single-label, ``label_columns``
    multilabel: giving both is refused, not one silently ignored. Each
    example's id is its path relative to the root, resolved, so two
    spellings of one file (``a.png``, ``./a.png``, ``x/../a.png``) are one
    id; a file listed twice, in one split or in two, is refused naming both
    lines (else one image could train and test the same model). A listed
    file that does not exist is refused naming its line, even with
    ``--skip-bad-images``: that skips corrupt images, and a wrong path is a
    mistake in the list, not a bad image. With ``split_column`` and
    ``group_column``, a group in two given splits is refused naming a line
    of each.
    """
    root = Path(root)
    csv_path = Path(csv_file) if Path(csv_file).is_absolute() else root / csv_file
    # The header's names are read stripped; so are the names given for them, by the CLI
    # or by a caller's own code ("a, b" split at commas).
    named = {
        "path_column": path_column,
        "label_column": label_column,
        "group_column": group_column,
        "split_column": split_column,
    }
    for option, name in named.items():  # blank: a column no header has, never "not given"
        if name is not None and not name.strip():
            flag = "--" + option.replace("_", "-")
            raise DataError(
                f"{option} ({flag}) {name!r} is an empty column name; give a column of "
                f"{csv_path.name}, or leave the option out"
            )
    path_column, label_column, group_column, split_column = (
        c if c is None else c.strip() for c in named.values()
    )
    label_columns = None if label_columns is None else [c.strip() for c in label_columns]
    check_label_options(label_column, label_columns, class_names)
    multilabel = label_columns is not None
    label_column = label_column or "label"
    label_cols = list(label_columns) if label_columns is not None else [label_column]
    required = [path_column, *label_cols] + [c for c in (group_column, split_column) if c]
    if not csv_path.exists() and not Path(csv_file).is_absolute() and Path(csv_file).is_file():
        raise DataError(  # typed from where the command runs; it is read from --manual-dir
            f"--csv-file {csv_file}: no such file in --manual-dir {root} (a relative "
            f"--csv-file is read from there); {csv_file} here is {Path(csv_file).absolute()}: "
            "give that path"
        )
    naming = {  # a default name the user did not give: say how to give theirs
        column: "; or name your columns: --path-column, and --label-column (a column of "
        "class names) or --label-columns (one 0/1 column per label)"
        for column, said in (("path", named["path_column"]), ("label", named["label_column"]))
        if said is None or said.strip() == column
    }
    if multilabel:
        naming.pop("label", None)
    rows = read_csv(csv_path, required, naming=naming)
    used = [path_column, *label_cols]
    _refuse_unused_layout_columns(csv_path, rows, split_column, group_column, used)
    if multilabel:
        names = list(label_cols)
    elif class_names:
        names = [str(c) for c in class_names]
    else:
        names = class_names_of(rows, label_column, csv_path)
    real_root = os.path.realpath(root)
    by_split: dict[str, list[Example]] = {s: [] for s in SPLITS}
    listed: dict[str, Row] = {}  # example id -> the row that first listed it
    group_first: dict[str, tuple[str, int]] = {}  # group -> (split, line) where first seen
    spelled: dict[str, tuple[str, str]] = {}  # an id's key -> (first spelling, its line)
    for row in rows:
        where = f"{csv_path}:{row.line}"
        raw = row[path_column].strip()
        if not raw:
            raise DataError(f"{where}: empty {path_column!r}; expected an image path")
        try:
            path = safe_join(root, raw, source=where)
            _check_file(path, raw, where, root)
        except DataError as err:
            raise DataError(f"{err}{_path_hint(raw, root, csv_path)}") from None
        example_id = Path(os.path.relpath(path, real_root)).as_posix()
        first = listed.setdefault(example_id, row)
        if first is not row:
            before = first[path_column].strip()
            spelled = "" if before == raw else f", spelled {before!r} there and {raw!r} here"
            raise DataError(
                f"{csv_path}: line {row.line} lists {example_id} again (line {first.line}"
                f"{spelled}); an example listed twice"
            )
        if multilabel:
            label = tuple(_hot(row[c], f"{where} column {c!r}") for c in label_cols)
        else:
            value = row[label_column].strip()
            if value not in names:
                raise DataError(f"{where}: label {value!r} outside the class list {names}")
            label = names.index(value)
        given = row[split_column].strip() if split_column else "train"
        split = SPLIT_NAMES.get(given.lower(), "")  # as split folders are named: any case
        if split not in by_split:
            raise DataError(
                f"{where}: split {given!r} must be one of {', '.join(SPLITS)} (any case; "
                "also training, valid, validation, testing)"
            )
        group = row[group_column].strip() if group_column else ""
        if group_column and not group:  # blank: one patient per image, or all one patient?
            raise DataError(f"{where}: empty {group_column!r}; expected a patient/group id")
        if group_column and missing_marker(group):  # every unknown patient one patient
            raise DataError(
                f"{where}: {group_column!r} is {group!r}, a missing value; expected a "
                "patient/group id"
            )
        if group_column:
            _refuse_group_twins(csv_path, group_column, group, row.line, spelled)
        if group_column and split_column:
            other, line = group_first.setdefault(group, (split, row.line))
            if other != split:
                raise DataError(
                    f"{csv_path}: column {group_column!r}: group {group!r} is in split "
                    f"{other!r} (line {line}) and in split {split!r} (line {row.line}); "
                    "one group's images must stay in one split"
                )
        by_split[split].append(Example(path, label, example_id, patient=group))
    _refuse_saved_twice(csv_path, path_column, listed)
    if multilabel:
        _note_one_hot(csv_path, label_cols, [ex for exs in by_split.values() for ex in exs])
    stratify = not multilabel
    fraction = {
        split: fraction_for(
            split, value, f"column {split_column!r}" if by_split[split] else None, str(csv_path)
        )
        for split, value in (("test", test_fraction), ("val", val_fraction))
    }
    if by_split["test"] and by_split["val"]:
        refuse_unused_seed(seed, f"the values of column {split_column!r}", str(csv_path))
    carve_missing(
        by_split, fraction, seed, stratify=stratify, where=str(csv_path), class_names=names
    )
    return names, multilabel, by_split


def _refuse_saved_twice(csv_path: Path, path_column: str, listed: dict[str, Row]) -> None:
    """Refuses two listed files that are one scan in two formats (``x.png``, ``x.jpg``):
    two examples of one image (:func:`~medft_jax.data.images.saved_twice`)."""
    rows = {Path(example_id): row for example_id, row in listed.items()}
    pairs = saved_twice(list(rows))
    if pairs:
        a, b = (rows[p] for p in pairs[0])
        raise DataError(
            f"{csv_path}: lines {a.line} and {b.line} list {a[path_column].strip()!r} and "
            f"{b[path_column].strip()!r}, which differ only in their suffix ({len(pairs)} "
            "such pair(s)): one image saved twice is two examples, in two splits unless one "
            "group holds both; list one file of each pair"
        )


def _note_one_hot(csv_path: Path, columns: Sequence[str], examples: Sequence[Example]) -> None:
    """One line when every row of the ``--label-columns`` has exactly one 1: a single-label
    task written as one-hot columns, which would train with independent sigmoids, stop
    early on mAP and report no top-1 or confusion-matrix kappa."""
    if len(columns) < 2 or not examples:
        return
    if all(sum(ex.label) == 1 for ex in examples):
        note(
            f"note: {csv_path}: every row of --label-columns {','.join(columns)} has exactly "
            "one 1: trained as multilabel (one sigmoid per column); if each image has one "
            "class, give one --label-column of class names instead (softmax, top-1, kappa)"
        )


def _refuse_group_twins(
    csv_path: Path,
    column: str,
    group: str,
    line: int,
    spelled: dict[str, tuple[str, str]],
) -> None:
    """Refuses a patient id that is another one spelled otherwise
    (:func:`~medft_jax.data.class_names.patient_twin`), naming both lines."""
    twin = patient_twin(group, str(line), spelled)
    if twin is not None:
        first, first_line, how = twin
        raise DataError(
            f"{csv_path}: column {column!r}: patient ids {first!r} (line {first_line}) and "
            f"{group!r} (line {line}) differ only in {how}: as two patients, one patient's "
            "images would be split across train and test; spell them alike"
        )


_SPLIT_OTHERS = frozenset({"", "dev", "holdout", "hold-out", "heldout", "held-out", "external"})
"""Values beside split names in a column that holds splits (blank cells, a dev or a
held-out set): a column of train/test with these is a split column by its content; one
with other words beside (a comment column: "ok", "valid", "test") is not."""
SPLIT_LIKE = frozenset({"split", "set", "subset", "fold", "partition", "datasplit"})
"""Column names (lower case, letters and digits only) that a split column goes by."""
GROUP_LIKE = frozenset(
    {
        "patient", "patientid", "patientname", "subject", "subjectid", "participant",
        "participantid", "caseid", "group", "groupid", "studyid", "mrn", "pid", "case",
        "study", "accession", "lesion", "donor", "person", "individual",
        "pt", "ptid", "ptno", "pat", "patid", "patno", "subj", "subjid", "subjno",
    }
)  # fmt: skip
"""Column names (as :data:`SPLIT_LIKE`) that a patient/group id column goes by (``pt_id``,
``PatID``, ``SubjID`` as exact names: ``pat``/``pt`` as beginnings would take
``patch_no`` and ``pattern_id``)."""


_GROUP_STEMS = (
    "patient", "subject", "participant", "case", "study", "accession", "lesion", "donor",
    "person", "individual",
)  # fmt: skip
"""Beginnings of patient-id column names whose end says it is an id (``PatientNo``,
``subject_number``, ``StudyInstanceUID``, HAM10000's ``lesion_id``): not ``patient_age``,
which images share too, nor a site's or a series' number (``hospital_id``,
``SeriesNumber``: not a patient). A column is refused only when images share its
values, so an id of one image each passes."""


def _squashed(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _group_like(column: str) -> bool:
    """Whether a column's name says it holds patient (or study) ids."""
    name = _squashed(column)
    return name in GROUP_LIKE or (
        name.startswith(_GROUP_STEMS) and name.endswith(("id", "no", "nr", "number", "num"))
    )


def _refuse_unused_layout_columns(
    csv_path: Path,
    rows: Sequence[Row],
    split_column: str | None,
    group_column: str | None,
    used: Sequence[str],
) -> None:
    """Refuses a CSV whose own split or patient column would be ignored for want of its flag.

    Why: only the path and label columns have default names. A ``split`` column
    of train/val/test values, or a ``patient_id`` column shared by several images,
    was ignored without a word: the splits were carved at random, image by image,
    so the user's test set was not the test set and a patient's images landed in
    train and test both (an inflated test score). The flag says which is meant; to
    carve anyway, the column is renamed.
    """
    columns = [c for c in rows[0] if c not in used]
    if split_column is None:
        for column in columns:
            spelled = {row[column].strip() for row in rows}
            values = {v.lower() for v in spelled}
            # Any split name counts: one blank cell or a 'holdout' row among train/test ones
            # had the whole column ignored, the user's test images carved into train.
            # By name, or by content: a column holding two or more split names ('dataset',
            # 'phase' holding train/test, with 'dev', 'holdout' or blank cells beside them)
            # is one whatever it is called.
            splits_in_it = (
                len({SPLIT_NAMES[v] for v in values if v in SPLIT_NAMES}) > 1
                and values <= set(SPLIT_NAMES) | _SPLIT_OTHERS
            )
            named = _squashed(column) in SPLIT_LIKE
            listed = _some_values(spelled)
            # 'set', 'subset' may hold batches, sources (HAM10000, BCN20000): not surely splits
            surely = named and _squashed(column) not in ("set", "subset")
            if surely and len(values) > 1 and not values & set(SPLIT_NAMES):
                raise DataError(  # tr/te, 0/1, a fold number: the user's own split, unread
                    f"{csv_path}: column {column!r} is named as a split column but holds "
                    f"{listed}, not split names, and --split-column is not given, so the "
                    "splits would be carved at random instead; write train/val/test in it and "
                    f"{_pass('--split-column', column)} (or rename the column to carve)"
                )
            if (named and values & set(SPLIT_NAMES)) or splits_in_it:
                raise DataError(
                    f"{csv_path}: column {column!r} holds split names ({listed}) but "
                    "--split-column is not given, so the splits would be carved at random "
                    f"instead; {_pass('--split-column', column)} (or rename the column to carve)"
                )
    if group_column is None:
        for column in columns:
            if not _group_like(column):
                continue
            values = [row[column].strip() for row in rows]
            if len(set(values)) < len(values):
                raise DataError(
                    f"{csv_path}: column {column!r} looks like a patient id shared by several "
                    f"images, but --group-column is not given, so a patient's images could land "
                    f"in train and test both; {_pass('--group-column', column)} (or rename the "
                    "column to split image by image)"
                )


def _some_values(values: set[str], limit: int = 6) -> str:
    """A column's values, sorted, the first ``limit`` named (a blank one as ``(blank)``)."""
    shown = sorted(v or "(blank)" for v in values)
    return ", ".join(shown[:limit]) + (", ..." if len(shown) > limit else "")


def check_label_options(
    label_column: str | None,
    label_columns: Sequence[str] | None,
    class_names: Sequence[str] | None,
) -> None:
    """Refuses label options that contradict each other, each in one line naming the option.

    Why: ``label_column`` beside ``label_columns`` used to be ignored
    without a word, and a column named twice in ``label_columns`` gave two
    identical outputs the user never asked for.
    """
    if label_columns is None:
        if class_names is not None:  # one name twice read as a class with no examples
            names = [str(c) for c in class_names]
            twice = next((c for c in names if names.count(c) > 1), None)
            if twice is not None:
                raise DataError(f"class_names names class {twice!r} twice; one name a class")
            refuse_twins(names, lambda name: "class_names")
        return
    if label_column is not None:
        raise DataError(
            "label_column (--label-column) and label_columns (--label-columns) exclude each "
            "other: the first names one column of class names, the second the 0/1 columns"
        )
    if class_names is not None:
        raise DataError(
            "class_names applies to a single-label csv (label_column); with label_columns "
            "(--label-columns) the columns are the classes"
        )
    columns = list(label_columns)
    if not columns or any(not c.strip() for c in columns):
        raise DataError(
            f"label_columns (--label-columns) names an empty column in {','.join(columns)!r}; "
            "give the 0/1 columns, comma-separated"
        )
    twice = next((c for c in columns if columns.count(c) > 1), None)
    if twice is not None:
        raise DataError(f"label_columns (--label-columns) names column {twice!r} twice")


def _path_hint(raw: str, root: Path, csv_path: Path) -> str:
    """Why a listed path may have missed, for its error line: the usual slips.

    Paths are read relative to ``--manual-dir``; a CSV kept in a subfolder often
    lists them relative to itself (``../img/x.png``), or from above the root
    (``data/f8/x.png`` with ``--manual-dir data/f8``). A CSV written on Windows
    separates with backslashes, which are part of a file name elsewhere, and one
    written where names ignore case may spell a name in another case.
    """
    beside_csv = os.path.realpath(csv_path.parent / raw)
    if csv_path.parent.resolve() != Path(root).resolve() and os.path.isfile(beside_csv):
        return f" (paths are read relative to --manual-dir {root}, not to the CSV's folder)"
    if "\\" in raw:
        return " (paths separate folders with '/', not '\\')"
    if re.match(r"[A-Za-z]:/", raw):  # C:/Users/...: another machine's absolute path
        return f" (a Windows absolute path; paths are read relative to --manual-dir {root})"
    parts = Path(raw).parts
    for i, part in enumerate(parts[:-1]):  # the root's own folder name repeated in the path
        if part == Path(root).resolve().name and (Path(root) / Path(*parts[i + 1 :])).is_file():
            prefix = "/".join(parts[: i + 1])
            return f" (paths are read relative to --manual-dir {root}: leave out {prefix + '/'!r})"
    folder, name = (Path(root) / raw).parent, Path(raw).name
    at = Path(root)
    for part in Path(raw).parent.parts:  # a folder of the path in another case (IMG/ for img/)
        if not (at / part).is_dir():
            key = _loose(part)
            other = next(
                (f.name for f in _entries(at) if f.is_dir() and _loose(f.name) == key), None
            )
            if other is not None and other != part:
                return (
                    f" (there is a folder {other!r}, not {part!r}: names are case-sensitive here)"
                )
            break
        at = at / part
    if folder.is_dir():  # the name in another case or Unicode form (macOS, Windows)
        key = _loose(name)
        other = next((f.name for f in folder.iterdir() if _loose(f.name) == key), None)
        if other is not None and other != name:
            if unicodedata.normalize("NFC", other) == unicodedata.normalize("NFC", name):
                return (
                    f" (there is a file of this name in another Unicode form, {other!r}, which "
                    "prints the same: rename the file or save the CSV in its form)"
                )
            return f" (there is {other!r}: file names are case-sensitive here)"
    return ""


def _entries(folder: Path) -> list[Path]:
    """What ``folder`` holds, or nothing where it cannot be listed (a hint is no error)."""
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def _loose(name: str) -> str:
    """A file name with case and Unicode form (NFC against macOS's NFD) set aside."""
    return unicodedata.normalize("NFC", name).casefold()


def _check_file(path: Path, raw: str, where: str, root: Path) -> None:
    """Refuses a listed image that is missing or a folder, naming the CSV line.

    Checked here, not when decoding, so the line is known and
    ``--skip-bad-images`` (corrupt files only) cannot silently drop it.
    """
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"{where}: image file {raw!r} not found in {root}") from None
    except OSError as err:
        raise DataError(f"{where}: image file {raw!r} cannot be read: {err.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise DataError(f"{where}: image path {raw!r} is a folder, expected an image file")
    if path.suffix.lower() not in IMAGE_SUFFIXES and not _dicom(path):
        # else decoding called it a "corrupt image", without its line, and
        # --skip-bad-images dropped a wrong path as a bad file
        raise DataError(
            f"{where}: {raw!r} is not an image file (no image suffix, "
            f"{'/'.join(IMAGE_SUFFIXES)}, and no DICOM marker)"
        )


def _dicom(path: Path) -> bool:
    try:
        return is_dicom(path)
    except OSError:  # unreadable: decoding names it
        return True


_HOT = re.compile(r"[01](?:\.0*)?", re.ASCII)
"""What a multi-hot cell may read: ``0``, ``1``, ``0.0``, ``1.00``. float() also took
``+1``, ``1e0``, ``0_0``, full-width digits and ``0.99999999999999999`` (rounded to 1):
a spreadsheet's stray value became a label without a word."""


def _hot(text: str, where: str) -> float:
    """A multi-hot cell: ``0``/``1`` (also ``0.0``/``1.0``); anything else names the cell."""
    cell = text.strip()
    if not _HOT.fullmatch(cell):
        if cell in ("-1", "-1.0", "") or missing_marker(cell):  # CheXpert's uncertain/unmentioned
            hint = (
                "an uncertain or unmentioned label, and nothing is guessed: map such cells to "
                "0 or 1 in the file, as the task's policy says (e.g. U-Ones, U-Zeros)"
            )
        else:
            hint = (
                "label columns hold 0 or 1, one column per label (a column of label names is "
                "--label-column)"
            )
        raise DataError(f"{where}: {cell!r} is not 0 or 1; {hint}")
    return float(cell[0])
