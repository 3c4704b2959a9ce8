"""The ``csv`` source's list of examples: one file is one example, in one split, once.

A labels CSV is written by hand or by a script, so the same image can be
listed twice (two spellings of one path, or one path given two splits), a
patient can be put in two splits, a path can be wrong, and label flags can
contradict each other. Each is refused in one line naming the file, the
line(s) and the path or flag, before anything is decoded or written;
nothing is silently dropped, doubled or ignored.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from data_fakes import image

from experiments import prepare as prepare_cli
from medft_jax.data import DataError, load
from medft_jax.data.examples import Example, validate
from medft_jax.data.images import IMAGE_SUFFIXES
from medft_jax.data.table import parse_table

SIZES = {"resize_size": 36, "crop_size": 32}


def _images(root: Path, n: int = 12) -> None:
    (root / "imgs" / "x").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image(700 + i, (8, 8)).save(root / "imgs" / f"a{i}.png")


def _write(root: Path, header: str, rows: list[str]) -> None:
    (root / "labels.csv").write_text(header + "\n" + "\n".join(rows) + "\n")


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def _table(root: Path, **kw):
    return parse_table(root, "labels.csv", **kw)


# --- one file, one example ---------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["./imgs/a0.png", "imgs/x/../a0.png", "imgs//a0.png"])
def test_one_file_spelled_two_ways_is_listed_twice(tmp_path, spelling):
    _images(tmp_path)
    rows = [f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'}" for i in range(12)]
    rows[9] = f"{spelling},dog"  # line 11 (the header is line 1)
    _write(tmp_path, "path,label", rows)
    with pytest.raises(DataError) as err:
        _table(tmp_path)
    csv_path = tmp_path / "labels.csv"
    assert _one_line(err) == (
        f"{csv_path}: line 11 lists imgs/a0.png again (line 2, spelled 'imgs/a0.png' there "
        f"and {spelling!r} here); an example listed twice"
    )


def test_one_scan_listed_in_two_formats_is_refused_naming_both_lines(tmp_path):
    _images(tmp_path)
    image(5, (8, 8)).convert("RGB").save(tmp_path / "imgs" / "a3.jpg")
    rows = [f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'}" for i in range(12)] + ["imgs/a3.jpg,cat"]
    _write(tmp_path, "path,label", rows)
    with pytest.raises(DataError) as err:
        _table(tmp_path)
    assert _one_line(err) == (
        f"{tmp_path / 'labels.csv'}: lines 5 and 14 list 'imgs/a3.png' and 'imgs/a3.jpg', "
        "which differ only in their suffix (1 such pair(s)): one image saved twice is two "
        "examples, in two splits unless one group holds both; list one file of each pair"
    )


def test_hash_like_names_that_differ_in_case_are_two_images(tmp_path):
    """``aB3x.png`` and ``Ab3x.png``: two images on a case-sensitive disk (the two-formats
    check took them for one image saved twice)."""
    _images(tmp_path)
    image(6, (8, 8)).save(tmp_path / "imgs" / "aB3x.png")
    image(7, (8, 8)).save(tmp_path / "imgs" / "Ab3x.png")
    rows = [f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'}" for i in range(12)]
    _write(tmp_path, "path,label", [*rows, "imgs/aB3x.png,cat", "imgs/Ab3x.png,dog"])
    _, _, splits = _table(tmp_path, val_fraction=0.2, test_fraction=0.2)
    ids = {ex.id for members in splits.values() for ex in members}
    assert {"imgs/aB3x.png", "imgs/Ab3x.png"} <= ids


def test_a_label_column_of_joined_labels_is_refused_as_multilabel(tmp_path):
    """NIH ChestX-ray14's ``Finding Labels`` (``Effusion|Infiltration``) given as the label
    column trained every combination as a class of its own, exit 0; predict then named
    classes such as ``Effusion|Infiltration``."""
    _images(tmp_path)
    labels = ["No Finding", "Effusion", "Infiltration", "Effusion|Infiltration"] * 3
    rows = [f"imgs/a{i}.png,{label},p{i}" for i, label in enumerate(labels)]
    _write(tmp_path, '"Image Index","Finding Labels","Patient ID"', rows)
    with pytest.raises(DataError) as err:
        _table(tmp_path, path_column="Image Index", label_column="Finding Labels")
    assert _one_line(err) == (
        f"{tmp_path / 'labels.csv'}:5: label 'Effusion|Infiltration' of column 'Finding "
        "Labels' joins labels that stand alone in it ('Effusion', 'Infiltration') with '|': a "
        "multilabel column, each combination of which would be a class; write one 0/1 column "
        "per label and give them as --label-columns (pandas: df['Finding Labels']"
        ".str.get_dummies(sep='|'))"
    )
    # A class name holding a joiner, one of whose parts is no label of the column, is a
    # name: "Carcinoma, NOS" beside "Carcinoma", "grade 1;2" beside "grade 1".
    for a, b in (("Carcinoma, NOS", "Carcinoma"), ("grade 1;2", "grade 1")):
        rows = [f'imgs/a{i}.png,"{a if i % 2 else b}",p{i}' for i in range(12)]
        _write(tmp_path, '"Image Index","Finding Labels","Patient ID"', rows)
        names, _, _ = _table(
            tmp_path, path_column="Image Index", label_column="Finding Labels",
            group_column="Patient ID",
        )  # fmt: skip
        assert names == sorted([a, b])


def test_a_csv_of_other_column_names_or_typed_from_here_says_how(tmp_path, monkeypatch):
    """A one-hot export (``Image Index,Effusion,...``) read with the default columns did not
    name the flags for other columns; ``--csv-file conv.csv`` typed from the folder holding
    it, with ``--manual-dir images``, was "not found: images/conv.csv", a path never typed."""
    _images(tmp_path)
    _write(tmp_path, "Image Index,Effusion", [f"imgs/a{i}.png,{i % 2}" for i in range(12)])
    with pytest.raises(DataError) as err:
        _table(tmp_path)
    assert _one_line(err).endswith(
        "(found Image Index,Effusion); or name your columns: --path-column, and --label-column "
        "(a column of class names) or --label-columns (one 0/1 column per label)"
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as err:
        parse_table(tmp_path / "imgs", "labels.csv")
    assert _one_line(err) == (
        f"--csv-file labels.csv: no such file in --manual-dir {tmp_path / 'imgs'} (a relative "
        f"--csv-file is read from there); labels.csv here is {tmp_path / 'labels.csv'}: give "
        "that path"
    )


def test_a_bad_byte_in_a_classic_mac_csv_names_its_line(tmp_path):
    """Excel's "CSV (Macintosh)" ends lines with a lone CR: the bad byte on line 14 was
    said to be on line 1."""
    _images(tmp_path)
    rows = [f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'}" for i in range(12)] + ["imgs/a1.png,b\xe9"]
    (tmp_path / "labels.csv").write_bytes("\r".join(["path,label", *rows]).encode("latin-1"))
    with pytest.raises(DataError, match=r"labels\.csv:14: byte b'\\xe9' is not UTF-8"):
        _table(tmp_path)
    (tmp_path / "labels.csv").write_bytes(b"path,label\r\nimgs/a0.png,cat\r\n\xe9\n")
    with pytest.raises(DataError, match=r"labels\.csv:3: byte"):
        _table(tmp_path)


def test_split_values_are_read_as_split_folders_are_named(tmp_path):
    """ "Train" or "Validation" in the split column: the names split folders accept in any
    case, refused before; anything else names the line and the names accepted."""
    _images(tmp_path)
    spelled = ("Train", "VALIDATION", "test", "training", "Valid", "Testing")
    rows = [f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'},{spelled[i % 6]}" for i in range(12)]
    _write(tmp_path, "path,label,split", rows)
    _, _, splits = _table(tmp_path, split_column="split")
    by_split = {s: sorted(int(ex.id[6:-4]) for ex in exs) for s, exs in splits.items()}
    assert by_split == {"train": [0, 3, 6, 9], "val": [1, 4, 7, 10], "test": [2, 5, 8, 11]}
    # Every split given by the column: a data seed carves nothing (one split, many names).
    with pytest.raises(DataError) as err:
        _table(tmp_path, split_column="split", seed=2)
    assert _one_line(err) == (
        f"{tmp_path / 'labels.csv'}: data seed 2 does not apply: the values of column "
        "'split' give every split, so nothing is carved; leave it out"
    )
    _write(tmp_path, "path,label,split", [*rows[:11], "imgs/a11.png,cat,holdout"])
    with pytest.raises(DataError) as err:
        _table(tmp_path, split_column="split")
    assert _one_line(err) == (
        f"{tmp_path / 'labels.csv'}:13: split 'holdout' must be one of train, val, test "
        "(any case; also training, valid, validation, testing)"
    )


def test_same_path_in_two_splits_is_refused(tmp_path):
    _images(tmp_path)
    rows = [
        f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'},{('train', 'val', 'test')[i % 3]}"
        for i in range(12)
    ]
    rows.append("imgs/a0.png,dog,test")  # line 14; line 2 says train
    _write(tmp_path, "path,label,split", rows)
    with pytest.raises(DataError) as err:
        _table(tmp_path, split_column="split")
    assert _one_line(err) == (
        f"{tmp_path / 'labels.csv'}: line 14 lists imgs/a0.png again (line 2); "
        "an example listed twice"
    )


def test_example_id_is_the_normalised_path_under_the_root(tmp_path):
    _images(tmp_path)
    rows = [f"./imgs/x/../a{i}.png,{'cat' if i % 2 else 'dog'}" for i in range(12)]
    _write(tmp_path, "path,label", rows)
    _, _, splits = _table(tmp_path)
    ids = sorted(ex.id for members in splits.values() for ex in members)
    assert ids == sorted(f"imgs/a{i}.png" for i in range(12))


def test_validate_refuses_one_id_in_two_splits():
    """Every source's last check: one id in two splits, even with other patients."""
    splits = {
        "train": [Example(Path("a"), 0, "a", patient="p1"), Example(Path("b"), 1, "b")],
        "test": [Example(Path("a"), 0, "a", patient="p2")],
    }
    with pytest.raises(DataError) as err:
        validate(splits, ["x", "y"], False, where="root")
    assert _one_line(err) == (
        "root: 'a' is listed twice (splits 'train' and 'test'); an example listed twice"
    )
    splits["test"] = [Example(Path("b"), 1, "b", patient="p3")]
    splits["train"].append(Example(Path("b"), 1, "b", patient="p3"))
    with pytest.raises(DataError, match=r"^root: 'b' is listed twice \(split 'train'\)"):
        validate(splits, ["x", "y"], False, where="root")


# --- groups across given splits ----------------------------------------------------------------


def test_group_in_two_given_splits_names_file_column_and_lines(tmp_path):
    _images(tmp_path)
    rows = [f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'},p{i},train" for i in range(9)]
    rows += [f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'},p{i},test" for i in range(9, 12)]
    rows[10] = "imgs/a10.png,dog,p1,test"  # line 12; p1 is in train on line 3
    _write(tmp_path, "path,label,patient,split", rows)
    with pytest.raises(DataError) as err:
        _table(tmp_path, group_column="patient", split_column="split")
    assert _one_line(err) == (
        f"{tmp_path / 'labels.csv'}: column 'patient': group 'p1' is in split 'train' "
        "(line 3) and in split 'test' (line 12); one group's images must stay in one split"
    )


def test_a_blank_group_id_is_refused_not_read_as_its_own_patient(tmp_path):
    """Blank ids would be one patient per image without a split column (its images in
    train and test) and all one patient with one: refused either way."""
    _images(tmp_path)
    rows = [f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'},p{i},train" for i in range(12)]
    rows[4] = "imgs/a4.png,dog, ,train"  # line 6
    for split_column in (None, "split"):  # unused, the column must not look like splits
        _write(tmp_path, f"path,label,patient,{split_column or 'note'}", rows)
        with pytest.raises(DataError) as err:
            _table(tmp_path, group_column="patient", split_column=split_column)
        assert _one_line(err) == (
            f"{tmp_path / 'labels.csv'}:6: empty 'patient'; expected a patient/group id"
        )


@pytest.mark.parametrize(
    ("train_y", "message"),
    [
        (0, "positive in no training example; every label needs positive training examples"),
        (1, "positive in every training example; every label needs negative training examples"),
    ],
    ids=["never", "always"],
)
def test_a_label_column_of_one_value_in_train_is_refused(tmp_path, train_y, message):
    """Either way its output can only learn a constant; the all-positive column was
    accepted without a word while the never-positive one was refused."""
    _images(tmp_path)
    rows = [
        f"imgs/a{i}.png,{i % 2},{1 - train_y if i >= 10 else train_y},"
        f"{'test' if i >= 10 else 'train'}"
        for i in range(12)
    ]
    _write(tmp_path, "path,x,y,split", rows)
    names, multilabel, splits = _table(tmp_path, label_columns=["x", "y"], split_column="split")
    with pytest.raises(DataError) as err:
        validate(splits, names, multilabel, where="labels.csv")
    assert _one_line(err) == f"labels.csv: label 'y' is {message}"


def test_one_hot_label_columns_get_a_note_naming_the_single_label_flag(tmp_path, capsys):
    """A 3-class task written as one-hot columns trained as multilabel without a word."""
    _images(tmp_path)
    rows = [
        f"imgs/a{i}.png," + ",".join("1" if c == i % 3 else "0" for c in range(3))
        for i in range(12)
    ]
    _write(tmp_path, "path,a,b,c", rows)
    _table(tmp_path, label_columns=["a", "b", "c"])
    assert capsys.readouterr().err == (
        f"note: {tmp_path / 'labels.csv'}: every row of --label-columns a,b,c has exactly one "
        "1: trained as multilabel (one sigmoid per column); if each image has one class, give "
        "one --label-column of class names instead (softmax, top-1, kappa)\n"
    )
    rows[0] = "imgs/a0.png,1,1,0"  # one image with two findings: multilabel indeed
    _write(tmp_path, "path,a,b,c", rows)
    _table(tmp_path, label_columns=["a", "b", "c"])
    assert capsys.readouterr().err == ""


# --- label flags -------------------------------------------------------------------------------


def test_label_options_that_contradict_are_refused(tmp_path):
    _images(tmp_path)
    rows = [f"imgs/a{i}.png,{i % 2},{(i // 2) % 2}" for i in range(12)]
    _write(tmp_path, "path,x,y", rows)
    with pytest.raises(DataError) as err:
        _table(tmp_path, label_columns=["x", "x"])
    assert _one_line(err) == "label_columns (--label-columns) names column 'x' twice"
    with pytest.raises(DataError) as err:
        _table(tmp_path, label_column="nosuch", label_columns=["x", "y"])
    assert _one_line(err).startswith(
        "label_column (--label-column) and label_columns (--label-columns) exclude each other"
    )
    with pytest.raises(DataError, match=r"^class_names applies to a single-label csv"):
        _table(tmp_path, class_names=["a", "b"], label_columns=["x", "y"])
    names, multilabel, _ = _table(tmp_path, label_columns=["x", "y"])
    assert names == ["x", "y"] and multilabel
    # Names read stripped, as the header's are, by the library as by the CLI.
    names, multilabel, splits = _table(tmp_path, label_columns=[" x", "y "], path_column="path ")
    assert names == ["x", "y"] and multilabel and sum(map(len, splits.values())) == 12
    with pytest.raises(DataError) as err:
        _table(tmp_path, label_columns=["x", " x"])
    assert _one_line(err) == "label_columns (--label-columns) names column 'x' twice"
    # A blank name is refused, never read as "not given" (a group column left out would
    # split one patient's images across train and test).
    for option in ("path_column", "label_column", "group_column", "split_column"):
        for blank in (" ", ""):
            with pytest.raises(DataError) as err:
                _table(tmp_path, **{option: blank})
            flag = "--" + option.replace("_", "-")
            assert _one_line(err) == (
                f"{option} ({flag}) {blank!r} is an empty column name; give a column of "
                "labels.csv, or leave the option out"
            )
    # A class name given twice, or in two spellings, read as a class without examples.
    _write(tmp_path, "path,label", [f"imgs/a{i}.png,{'ab'[i % 2]}" for i in range(12)])
    with pytest.raises(DataError) as err:
        _table(tmp_path, class_names=["a", "b", "a"])
    assert _one_line(err) == "class_names names class 'a' twice; one name a class"
    with pytest.raises(DataError) as err:
        _table(tmp_path, class_names=["a", "b", "A"])
    assert _one_line(err).startswith("class_names: class names 'a' and 'A' differ only in case")
    assert _table(tmp_path, class_names=["b", "a"])[0] == ["b", "a"]  # the order given


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--label-columns", "x,x"],
            "error: label_columns (--label-columns) names column 'x' twice",
        ),
        (
            ["--label-columns", "x,y", "--label-column", "nosuch"],
            "error: label_column (--label-column) and label_columns (--label-columns) exclude",
        ),
        (
            ["--label-columns", "x,,y"],
            "error: label_columns (--label-columns) names an empty column in 'x,,y'",
        ),
    ],
)
def test_label_flags_that_contradict_are_refused(tmp_path, capsys, flags, message):
    _images(tmp_path)
    _write(tmp_path, "path,x,y", [f"imgs/a{i}.png,{i % 2},{(i // 2) % 2}" for i in range(12)])
    argv = ["--dataset", "csv", "--manual-dir", str(tmp_path), "--csv-file", "labels.csv"]
    argv += ["--data-dir", str(tmp_path / "out"), *flags]
    assert prepare_cli.main(argv) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("meta.json"))


# --- a missing file is not a bad image ---------------------------------------------------------


@pytest.mark.parametrize("skip_bad_images", [False, True])
def test_missing_file_is_an_error_naming_the_line_even_when_skipping(tmp_path, skip_bad_images):
    _images(tmp_path, 24)  # enough for every split: only the missing file is at fault
    rows = [f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'}" for i in range(24)]
    rows[4] = "imgs/nosuch.png,dog"  # line 6
    _write(tmp_path, "path,label", rows)
    with pytest.raises(DataError) as err:
        load(
            "csv",
            manual_dir=tmp_path,
            data_dir=tmp_path / "out",
            csv_file="labels.csv",
            skip_bad_images=skip_bad_images,
            progress=False,
            **SIZES,
        )
    assert re.fullmatch(
        rf"{re.escape(str(tmp_path / 'labels.csv'))}:6: image file 'imgs/nosuch\.png' not found "
        rf"in {re.escape(str(tmp_path))}",
        _one_line(err),
    )
    assert not list((tmp_path / "out").rglob("meta.json"))


def test_folder_listed_as_an_image_is_named(tmp_path):
    _images(tmp_path)
    rows = [f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'}" for i in range(12)]
    rows[0] = "imgs/x,dog"
    _write(tmp_path, "path,label", rows)
    with pytest.raises(DataError, match=r"labels\.csv:2: image path 'imgs/x' is a folder"):
        _table(tmp_path)


def test_a_clean_csv_with_groups_and_splits_still_loads(tmp_path):
    _images(tmp_path)
    rows = [
        f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'},p{i // 2},{('train', 'test')[i >= 8]}"
        for i in range(12)
    ]
    _write(tmp_path, "path,label,patient,split", rows)
    names, multilabel, splits = _table(tmp_path, group_column="patient", split_column="split")
    assert names == ["cat", "dog"] and not multilabel
    assert sum(len(v) for v in splits.values()) == 12
    validate(splits, names, multilabel, where=str(tmp_path))


def test_a_header_written_with_spaces_reads_as_its_cells_do(tmp_path):
    """``path, label`` (by hand, or a spreadsheet's export) said "missing column 'label'
    ... (found path, label)", though its cells' spaces were read away."""
    _images(tmp_path)
    rows = [f"imgs/a{i}.png, {'cat' if i % 2 else 'dog'}, p{i // 2}" for i in range(12)]
    _write(tmp_path, "path, label , patient", rows)
    spaced = _table(tmp_path, group_column="patient")
    _write(tmp_path, "path,label,patient", [r.replace(" ", "") for r in rows])
    plain = _table(tmp_path, group_column="patient")
    assert spaced[:2] == plain[:2] == (["cat", "dog"], False)
    for split in plain[2]:
        assert [(e.id, e.label, e.patient) for e in spaced[2][split]] == [
            (e.id, e.label, e.patient) for e in plain[2][split]
        ]


def test_a_split_or_patient_column_left_without_its_flag_is_refused(tmp_path):
    """Only path and label have default names: a 'split' column of train/val/test and a
    'patient_id' shared by images were ignored, the splits carved at random image by
    image (the user's test set not the test set, patients in train and test both)."""
    _images(tmp_path)
    where = ["train"] * 8 + ["val"] * 2 + ["test"] * 2
    rows = [f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'},p{i // 2},{where[i]}" for i in range(12)]
    _write(tmp_path, "path,label,Patient_ID,Split", rows)
    csv_file = tmp_path / "labels.csv"
    with pytest.raises(DataError) as err:
        _table(tmp_path)
    assert _one_line(err) == (
        f"{csv_file}: column 'Split' holds split names (test, train, val) but --split-column "
        "is not given, so the splits would be carved at random instead; pass --split-column "
        "Split (or rename the column to carve)"
    )
    with pytest.raises(DataError, match=r"column 'Patient_ID' looks like a patient id shared"):
        _table(tmp_path, split_column="Split")
    # The flag to paste names a column of two words so that a shell reads it back.
    _write(tmp_path, 'path,label,"Patient ID",Split', rows)
    with pytest.raises(DataError, match=r"pass --group-column 'Patient ID' \(or rename"):
        _table(tmp_path, split_column="Split")
    _write(tmp_path, "path,label,Patient_ID,Split", rows)
    _, _, splits = _table(tmp_path, split_column="Split", group_column="Patient_ID")
    assert [len(splits[s]) for s in ("train", "val", "test")] == [8, 2, 2]
    # One blank cell, or a value no split is named, among split names: refused as well (the
    # whole column was ignored, the user's test images carved into train).
    for odd in ("", "holdout"):
        where[3] = odd
        rows = [f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'},p{i},{where[i]}" for i in range(12)]
        _write(tmp_path, "path,label,patient,Split", rows)
        with pytest.raises(DataError) as err:
            _table(tmp_path)
        assert f"column 'Split' holds split names ({odd or '(blank)'}, test, train, val)" in (
            _one_line(err)
        )
    # One image per patient, or a 'set' column of other values: nothing to misread.
    rows = [f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'},p{i},batch{i % 3}" for i in range(12)]
    _write(tmp_path, "path,label,patient,set", rows)
    _, _, splits = _table(tmp_path)
    assert sum(len(v) for v in splits.values()) == 12


def test_a_split_column_of_other_values_or_missing_patient_ids_are_refused(tmp_path):
    """A 'split' column of tr/te (or a 'fold' of 0..4) was ignored without a word, the
    rows the user held out carved into training; R's NA patient ids were one patient."""
    _images(tmp_path)
    csv_file = tmp_path / "labels.csv"
    for column, values in (("split", ("tr", "te")), ("fold", ("0", "1", "2"))):
        rows = [
            f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'},{values[i % len(values)]}"
            for i in range(12)
        ]
        _write(tmp_path, f"path,label,{column}", rows)
        with pytest.raises(DataError) as err:
            _table(tmp_path)
        assert _one_line(err) == (
            f"{csv_file}: column {column!r} is named as a split column but holds "
            f"{', '.join(sorted(values))}, not split names, and --split-column is not given, "
            "so the splits would be carved at random instead; write train/val/test in it and "
            f"pass --split-column {column} (or rename the column to carve)"
        )
    rows = [f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'},{'NA' if i > 9 else i}" for i in range(12)]
    _write(tmp_path, "path,label,patient", rows)
    with pytest.raises(DataError) as err:
        _table(tmp_path, group_column="patient")
    assert _one_line(err) == (
        f"{csv_file}:12: 'patient' is 'NA', a missing value; expected a patient/group id"
    )


def test_a_spreadsheets_rows_of_empty_cells_are_skipped_as_blank_lines(tmp_path):
    """Excel writes ",," for rows below the data it once formatted: "empty 'label'"."""
    _images(tmp_path)
    rows = [f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'}" for i in range(12)]
    _write(tmp_path, "path,label", [*rows[:6], ",", *rows[6:], ",", " , "])
    _, _, splits = _table(tmp_path)
    assert sum(len(v) for v in splits.values()) == 12


@pytest.mark.parametrize("trailing", [",", ",,", ",,,"])
def test_unnamed_columns_are_unused_columns_however_many(tmp_path, trailing):
    """Excel's "path,label,," was "column '' appears twice in the header", then refused
    as two unnamed columns while one was read: no option reads them, whatever their count."""
    _images(tmp_path)
    rows = [f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'}{trailing}" for i in range(12)]
    _write(tmp_path, f"path,label{trailing}", rows)
    names, _, splits = _table(tmp_path)
    assert names == ["cat", "dog"] and sum(len(v) for v in splits.values()) == 12


def test_excels_separator_line_is_read_past_and_other_exports_are_named(tmp_path):
    """Excel's "sep=," line was "missing column 'path' (found sep=,)"; R's write.csv2 (quoted,
    ';') "malformed CSV" with no word of semicolons; Excel's "Unicode Text" "NUL byte"."""
    _images(tmp_path)
    rows = [f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'}" for i in range(12)]
    _write(tmp_path, "sep=,\npath,label", rows)
    assert sum(len(v) for v in _table(tmp_path)[2].values()) == 12
    csv_file = tmp_path / "labels.csv"
    quoted = [f'"{i}";"imgs/a{i}.png";"{"cat" if i % 2 else "dog"}"' for i in range(12)]
    _write(tmp_path, '"";"path";"label"', quoted)
    with pytest.raises(DataError) as err:
        _table(tmp_path)
    assert _one_line(err) == (
        f"{csv_file}:1: malformed CSV (',' expected after '\"'); its columns are separated by "
        "';', not ','"
    )
    utf16 = "UTF-16 text (Excel's 'Unicode Text'?); expected a UTF-8 text file: save it as "
    utf16 += "'CSV UTF-8'"
    utf32 = "UTF-32 text; expected a UTF-8 text file: save it as UTF-8"
    for bits, said in (("16", utf16), ("32", utf32)):
        for encoding in (f"utf-{bits}", f"utf-{bits}-le", f"utf-{bits}-be"):
            csv_file.write_bytes(("path,label\n" + "\n".join(rows) + "\n").encode(encoding))
            with pytest.raises(DataError) as err:
                _table(tmp_path)
            assert _one_line(err) == f"{csv_file}: {said}", encoding


def test_labels_spelled_as_infinity_are_class_names(tmp_path):
    """float() reads INF (infarct) and Infinity: "a number but not an integer class id"."""
    _images(tmp_path)
    labels = ["INF", "HEM", "Infinity"] * 4
    _write(tmp_path, "path,label", [f"imgs/a{i}.png,{labels[i]}" for i in range(12)])
    assert _table(tmp_path)[0] == ["HEM", "INF", "Infinity"]


def test_a_column_holding_split_names_beside_other_values_is_refused(tmp_path):
    """A 'phase' of train/dev/test, or a 'dataset' of train/holdout with blanks, was not
    read as a split column (one value no split is named) and the splits carved at random."""
    _images(tmp_path)
    csv_file = tmp_path / "labels.csv"
    for column, where, listed in (
        ("phase", ["Train"] * 8 + ["dev"] * 2 + ["TEST"] * 2, "TEST, Train, dev"),
        (
            "dataset",
            ["train"] * 8 + ["", "holdout"] + ["test"] * 2,
            "(blank), holdout, test, train",
        ),
    ):
        rows = [f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'},{where[i]}" for i in range(12)]
        _write(tmp_path, f"path,label,{column}", rows)
        with pytest.raises(DataError) as err:
            _table(tmp_path)
        assert _one_line(err) == (
            f"{csv_file}: column {column!r} holds split names ({listed}) but --split-column "
            "is not given, so the splits would be carved at random instead; pass "
            f"--split-column {column} (or rename the column to carve)"
        )


def test_columns_of_split_names_or_patient_ids_under_other_names_are_refused(tmp_path):
    """Only a short list of exact names was checked: 'dataset' or 'phase' holding
    train/test, and 'PatientNo', 'pid' or 'StudyInstanceUID' shared by images, were
    ignored, the splits carved image by image at random."""
    _images(tmp_path)
    where = ["train"] * 8 + ["test"] * 4
    for column in ("dataset", "phase", "train_test"):
        rows = [f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'},{where[i]}" for i in range(12)]
        _write(tmp_path, f"path,label,{column}", rows)
        with pytest.raises(
            DataError, match=rf"column '{column}' holds split names \(test, train\)"
        ):
            _table(tmp_path)
    for column in (
        "PatientNo", "patient_number", "pid", "case", "StudyInstanceUID", "accession",
        "lesion_id", "pt_id", "PatID", "SubjID", "donor_id", "person_id", "lesion",
    ):  # fmt: skip
        rows = [f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'},x{i // 2}" for i in range(12)]
        _write(tmp_path, f"path,label,{column}", rows)
        with pytest.raises(DataError, match=rf"column '{column}' looks like a patient id shared"):
            _table(tmp_path)
    # A patient's other facts, which images share too, are no id; one split name is no split.
    rows = [f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'},{40 + i // 4},train" for i in range(12)]
    _write(tmp_path, "path,label,patient_age,source", rows)
    assert sum(len(v) for v in _table(tmp_path)[2].values()) == 12
    # Nor a site's, a series' or a patch's number, however shared; nor a comment column
    # holding two split words among others ('Train' and 'training' are one split).
    notes = ["ok", "Test", "valid", "blurry"]
    for column, values in (
        ("hospital_id", [f"h{i % 2}" for i in range(12)]),
        ("SeriesNumber", [str(i % 3) for i in range(12)]),
        ("patch_no", [str(i % 4) for i in range(12)]),
        ("pattern_id", [f"p{i % 2}" for i in range(12)]),
        ("comment", [notes[i % 4] for i in range(12)]),
        ("origin", ["Train", "training"] * 6),
    ):
        rows = [f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'},{values[i]}" for i in range(12)]
        _write(tmp_path, f"path,label,{column}", rows)
        assert sum(len(v) for v in _table(tmp_path)[2].values()) == 12, column
    # A column of split names without a name in the header: name it (--split-column '' is
    # refused as an empty name).
    where = ["train"] * 8 + ["test"] * 4
    rows = [f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'},{where[i]}" for i in range(12)]
    _write(tmp_path, "path,label,", rows)
    with pytest.raises(DataError) as err:
        _table(tmp_path)
    assert _one_line(err).endswith(
        "carved at random instead; name the column in the header and pass --split-column "
        "with that name (or rename the column to carve)"
    )


@pytest.mark.parametrize(
    ("ids", "how"),
    [
        (("P1", "p1"), "case, spaces or Unicode form"),
        (("DOE JOHN", "DOE  JOHN"), "case, spaces or Unicode form"),
        (("007", "7.0"), "leading zeros or a decimal point"),
    ],
)
def test_a_patient_id_spelled_two_ways_is_refused(tmp_path, ids, how):
    """``P1``/``p1`` and ``007``/``7``/``7.0`` (an Excel slip) were two patients: one
    patient's images carved into train and test both, without a word."""
    _images(tmp_path)
    patients = [ids[0], ids[1]] + [f"q{i}" for i in range(10)]
    rows = [f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'},{patients[i]}" for i in range(12)]
    _write(tmp_path, "path,label,patient", rows)
    with pytest.raises(DataError) as err:
        _table(tmp_path, group_column="patient")
    assert _one_line(err) == (
        f"{tmp_path / 'labels.csv'}: column 'patient': patient ids {ids[0]!r} (line 2) and "
        f"{ids[1]!r} (line 3) differ only in {how}: as two patients, one patient's images "
        "would be split across train and test; spell them alike"
    )
    # Long numeric ids stay exact (float() would round 20 digits to one number).
    patients = ["12345678901234567890", "12345678901234567891"] + [f"q{i}" for i in range(10)]
    rows = [f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'},{patients[i]}" for i in range(12)]
    _write(tmp_path, "path,label,patient", rows)
    assert sum(len(v) for v in _table(tmp_path, group_column="patient")[2].values()) == 12


def test_labels_with_underscores_are_names_sorted_as_names(tmp_path):
    """float() read ``1_0`` as 10: classes 1_0, 2_0, 1_10 were numbered by those values."""
    _images(tmp_path)
    labels = ["1_0", "2_0", "1_10"] * 4
    _write(tmp_path, "path,label", [f"imgs/a{i}.png,{labels[i]}" for i in range(12)])
    assert _table(tmp_path)[0] == ["1_0", "1_10", "2_0"]


@pytest.mark.parametrize("sep", [";", "\t"])
def test_a_csv_separated_otherwise_says_so(tmp_path, sep):
    """European Excel's semicolons (and a tab-separated export) were only "missing column
    'path'", the header quoted as found, the cause unnamed."""
    _images(tmp_path)
    rows = [f"imgs/a{i}.png{sep}{'cat' if i % 2 else 'dog'}" for i in range(12)]
    _write(tmp_path, f"path{sep}label", rows)
    with pytest.raises(DataError) as err:
        _table(tmp_path)
    assert _one_line(err).endswith(
        f"(found path{sep}label): its columns are separated by {sep!r}, not ','"
    )


def test_a_carve_far_from_its_fraction_is_noted(capsys):
    """Each class gives its own rounded share: 10 classes of 5 images at 0.1 gave 1 test
    image, at 0.3 twenty of 50, and nothing said the split was not the one asked for."""
    from medft_jax.data.examples import Example, carve_checked

    examples = [Example(Path(f"{c}/{i}.png"), c, f"{c}/{i}") for c in range(10) for i in range(5)]
    for fraction, carved in ((0.1, 1), (0.3, 20)):
        rest, test = carve_checked(examples, "test", fraction, 0, stratify=True, where="x.csv")
        assert (len(test), len(rest)) == (carved, 50 - carved)
        assert capsys.readouterr().err == (
            f"note: x.csv: the test split takes {carved} of the 50 images ({carved / 50:.0%}), "
            f"not the {fraction:.0%} of --test-fraction: each class and patient is carved by "
            "its own rounded share\n"
        )
    carve_checked(examples, "test", 0.2, 0, stratify=True)  # 10 of 50: as asked, no note
    assert capsys.readouterr().err == ""
    # The same listing carved again (a prepare parses it, then TFDS does): said once.
    carve_checked(examples, "test", 0.3, 0, stratify=True, where="x.csv")
    assert capsys.readouterr().err == ""


def test_a_path_missed_for_the_usual_slips_says_why(tmp_path):
    """Paths relative to the CSV's own folder, with Windows backslashes, from above the
    root, or with a name in another case."""
    _images(tmp_path)
    (tmp_path / "meta").mkdir()
    rows = [f"../imgs/a{i}.png,{'cat' if i % 2 else 'dog'}" for i in range(12)]
    (tmp_path / "meta" / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError) as err:
        parse_table(tmp_path, "meta/labels.csv")
    assert _one_line(err).endswith(
        f"escapes the dataset root {tmp_path.resolve()} (paths are read relative to "
        f"--manual-dir {tmp_path}, not to the CSV's folder)"
    )
    label = lambda i: "cat" if i % 2 else "dog"  # noqa: E731
    slips = {  # path of image i -> what the error line ends with
        lambda i: f"imgs\\a{i}.png": "(paths separate folders with '/', not '\\')",
        lambda i: f"x/{tmp_path.name}/imgs/a{i}.png": (  # listed from above the root
            f"(paths are read relative to --manual-dir {tmp_path}: leave out 'x/{tmp_path.name}/')"
        ),
        lambda i: f"imgs/{'A' if i == 3 else 'a'}{i}.png": (  # where names ignore case
            "(there is 'a3.png': file names are case-sensitive here)"
        ),
        lambda i: (
            f"IMGS/a{i}.png"
        ): "(there is a folder 'imgs', not 'IMGS': names are case-sensitive here)",
        lambda i: f"C:/Users/me/imgs/a{i}.png": (
            f"(a Windows absolute path; paths are read relative to --manual-dir {tmp_path})"
        ),
    }
    for path, ending in slips.items():
        _write(tmp_path, "path,label", [f"{path(i)},{label(i)}" for i in range(12)])
        with pytest.raises(DataError) as err:
            _table(tmp_path)
        assert _one_line(err).endswith(f"not found in {tmp_path} {ending}")
    # A name saved on macOS (NFD) listed as typed (NFC): both print as 'é3.png'.
    (tmp_path / "imgs" / "a3.png").rename(tmp_path / "imgs" / "e\u03013.png")
    nfc = "\u00e9"
    rows = [f"imgs/{nfc if i == 3 else 'a'}{i}.png,{label(i)}" for i in range(12)]
    _write(tmp_path, "path,label", rows)
    with pytest.raises(DataError) as err:
        _table(tmp_path)
    assert _one_line(err).endswith(
        f"not found in {tmp_path} (there is a file of this name in another Unicode form, "
        "'e\u03013.png', which prints the same: rename the file or save the CSV in its form)"
    )


def test_a_listed_file_that_is_no_image_is_named_by_its_line(tmp_path):
    """A CSV row listing readme.txt was "corrupt or unreadable image", without its line,
    and --skip-bad-images dropped the wrong path as a bad file."""
    _images(tmp_path)
    (tmp_path / "imgs" / "readme.txt").write_text("notes")
    (tmp_path / "imgs" / "IM0007").write_bytes(b"\0" * 128 + b"DICM")  # a PACS name
    rows = [f"imgs/a{i}.png,{'cat' if i % 2 else 'dog'}" for i in range(12)]
    _write(tmp_path, "path,label", [*rows, "imgs/IM0007,cat"])
    assert sum(len(v) for v in _table(tmp_path)[2].values()) == 13
    _write(tmp_path, "path,label", [*rows, "imgs/readme.txt,cat"])
    with pytest.raises(DataError) as err:
        _table(tmp_path)
    assert _one_line(err) == (
        f"{tmp_path / 'labels.csv'}:14: 'imgs/readme.txt' is not an image file (no image "
        f"suffix, {'/'.join(IMAGE_SUFFIXES)}, and no DICOM marker)"
    )


def test_integer_class_ids_past_two_to_the_53_are_told_apart_and_ordered(tmp_path):
    """Long codes as class ids: 9007199254740992 and ...993 are one float, so they were
    refused as "the same id", and ordered by their floats."""
    from medft_jax.data.table import Row, class_names_of

    def rows(values):
        out = []
        for i, v in enumerate(values):
            row = Row({"label": v})
            row.line = i + 2
            out.append(row)
        return out

    big = ["9007199254740993", "9007199254740992", "18014398509481985", "1e3", "7"]
    assert class_names_of(rows(big), "label", tmp_path / "l.csv") == [
        "7", "1e3", "9007199254740992", "9007199254740993", "18014398509481985",
    ]  # fmt: skip
    with pytest.raises(DataError, match=r"l\.csv:3: labels '9007199254740993' and "):
        class_names_of(
            rows(["9007199254740993", "9007199254740993.0"]), "label", tmp_path / "l.csv"
        )
    with pytest.raises(DataError, match=r"l\.csv:2: label '9007199254740992\.5' is a number but"):
        class_names_of(rows(["9007199254740992.5", "1"]), "label", tmp_path / "l.csv")
