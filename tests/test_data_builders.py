"""The eight paper tasks on fake official layouts: parsing (no TF) and TFDS end to end.

Parsing tests check counts, labels (CheXpert U-Ones/U-Zeros, MURA study
labels, CholecT50 multi-hot), class names and disjoint splits. The TFDS
tests prepare every task with TensorFlow (skipped with a reason where it is
not installed), then read it back through the memmap cache, and once in a
process where TensorFlow cannot be imported.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import data_fakes as fakes
import numpy as np
import pytest
from PIL import Image

from medft_jax.data import DataError, load, prepare
from medft_jax.data import cache as cache_mod
from medft_jax.data.builders import BUILDERS, builder_class
from medft_jax.data.builders.base import MedicalConfig
from medft_jax.data.builders.cholect50 import VIDEOS
from medft_jax.data.builders.t1w_mri import decode as decode_mat
from medft_jax.data.images import SKIP_HINT, ImageReader

SIZES = {"resize_size": 36, "crop_size": 32}
CONFIG = MedicalConfig.make(**SIZES)
MAKERS = {
    "chexpert": fakes.make_chexpert,
    "mura": fakes.make_mura,
    "t1w_mri": fakes.make_t1w_mri,
    "bach": fakes.make_bach,
    "isic2020": fakes.make_isic2020,
    "cholect50_instrument": fakes.make_cholect50,
}
DIRS = {name: ("mura" if name.startswith("mura") else name) for name in BUILDERS}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("manual")
    has_h5py = importlib.util.find_spec("h5py") is not None
    return {
        name: (root / name, make(root / name))
        for name, make in MAKERS.items()
        if has_h5py or name != "t1w_mri"
    }


needs_h5py = pytest.mark.skipif(
    importlib.util.find_spec("h5py") is None,
    reason="MATLAB v7.3 files need h5py (pip install medft-jax[prepare])",
)


def _parse(name: str, root: Path, config: MedicalConfig = CONFIG):
    return builder_class(name).TASK.parse_checked(root, config)


def _disjoint(splits) -> None:
    patients = {k: {r.patient for r in v} for k, v in splits.items()}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]


# Parsing the official layouts (no TensorFlow)


@pytest.mark.parametrize("policy", ["ones", "zeros"])
def test_chexpert_one_frontal_per_patient_and_uncertainty_policy(layouts, policy):
    root, truth = layouts["chexpert"]
    config = MedicalConfig.make(**SIZES, uncertain=policy)
    splits = _parse("chexpert", root, config)
    assert len(splits["train"]) + len(splits["val"]) == 12 and len(splits["test"]) == 4
    _disjoint(splits)
    expected_value = {"1.0": 1.0, "0.0": 0.0, "": 0.0, "-1.0": 1.0 if policy == "ones" else 0.0}
    for split, records in splits.items():
        for r in records:
            assert r.id.endswith("study1/view1_frontal.jpg")  # first frontal, not the lateral
            raw = truth["valid" if split == "test" else "train"][r.patient]
            assert r.label == tuple(expected_value[v] for v in raw)
    assert builder_class("chexpert").TASK.class_names == (
        "Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion",
    )  # fmt: skip


@pytest.mark.parametrize("part", ["shoulder", "wrist", "humerus"])
def test_mura_images_carry_their_study_label(layouts, part):
    root, truth = layouts["mura"]
    splits = _parse(f"mura_{part}", root)
    _disjoint(splits)
    body = f"XR_{part.upper()}"
    for split, records in splits.items():
        studies = truth[("valid" if split == "test" else "train", body)]
        for r in records:
            assert body in r.id and r.group == r.id.rsplit("/", 1)[0]
            assert r.label == studies[r.group]
            assert r.label == (1 if r.group.endswith("positive") else 0)
    train_studies = {r.group for s in ("train", "val") for r in splits[s]}
    assert train_studies == set(truth[("train", body)])
    assert {r.group for r in splits["test"]} == set(truth[("valid", body)])
    assert builder_class(f"mura_{part}").TASK.eval_grouping == "study"


@needs_h5py
def test_t1w_mri_labels_patients_and_orientation(layouts):
    root, truth = layouts["t1w_mri"]
    splits = _parse("t1w_mri", root)
    records = [r for v in splits.values() for r in v]
    assert len(records) == 36  # cvind.mat ignored
    _disjoint(splits)
    for r in records:
        label, pid, pixels = truth[r.path.name]
        assert r.label == label - 1 and r.patient == pid
    r = records[0]
    pixels = truth[r.path.name][2].astype(float)
    expected = np.rint((pixels - pixels.min()) / (pixels.max() - pixels.min()) * 255)
    assert np.array_equal(np.asarray(decode_mat(r.path)), expected.astype(np.uint8))


def test_bach_stratified_ten_percent_test(layouts):
    root, truth = layouts["bach"]
    splits = _parse("bach", root)
    assert {k: len(v) for k, v in splits.items()} == {"train": 32, "val": 4, "test": 4}
    assert sorted(r.label for r in splits["test"]) == [0, 1, 2, 3]
    assert all(truth[r.id] == r.label for v in splits.values() for r in v)


def test_isic2020_drops_duplicates_and_groups_patients(layouts):
    root, truth = layouts["isic2020"]
    splits = _parse("isic2020", root)
    records = [r for v in splits.values() for r in v]
    assert len(records) == 38 and {r.id.split("/")[-1][:-4] for r in records} == set(truth)
    _disjoint(splits)
    for r in records:
        assert (r.label, r.patient) == truth[r.id.split("/")[-1][:-4]]
    assert {r.label for r in splits["test"]} == {0, 1}  # stratified: both classes


def test_cholect50_official_videos_subsampled_multi_hot(layouts):
    root, truth = layouts["cholect50_instrument"]
    splits = _parse("cholect50_instrument", root)
    assert {k: sorted({r.patient for r in v}) for k, v in splits.items()} == {
        split: sorted(f"VID{v:02d}" for v in videos) for split, videos in VIDEOS.items()
    }
    assert (len(VIDEOS["train"]), len(VIDEOS["val"]), len(VIDEOS["test"])) == (35, 5, 10)
    records = [r for v in splits.values() for r in v]
    # Frames 0, 10, 20 of 25 in VID01, 02, 08, 06; frame 0 alone in the 46 others.
    assert len(records) == 4 * 3 + 46
    assert sum(r.patient == "VID06" for r in splits["test"]) == 3
    assert all(r.label == truth[r.id] for r in records)
    frame10 = next(r for r in records if r.id == "videos/VID01/000010.png")
    assert frame10.label == (0.0, 1.0, 0.0, 0.0, 1.0, 0.0)  # {10 % 6, (10 // 10) % 6}


# Bad input, by message


def test_every_val_fraction_names_its_own_prepared_variant():
    """Rounded to a whole percent, 0.115 and 0.125 were one variant: a load served
    whichever split was prepared last, without a word."""
    from medft_jax.data.builders.base import config_name

    names = {v: config_name(256, 224, 0, v, None) for v in (0.1, 0.15, 0.115, 0.12, 0.125, 0.001)}
    assert len(set(names.values())) == len(names)
    # The names variants already prepared have are kept.
    assert names[0.1] == "r256_c224_s0" and names[0.15] == "r256_c224_s0_vf15"
    assert names[0.125] == "r256_c224_s0_vf12p5" and names[0.001] == "r256_c224_s0_vf0p1"


def test_chexpert_missing_column_names_it_and_the_header(tmp_path, layouts):
    root, _ = layouts["chexpert"]
    csv = (root / "CheXpert-v1.0-small" / "train.csv").read_text().replace("Edema", "Oedema", 1)
    (tmp_path / "CheXpert-v1.0-small").mkdir()
    (tmp_path / "CheXpert-v1.0-small" / "train.csv").write_text(csv)
    with pytest.raises(
        DataError,
        match=r"train\.csv: missing column 'Edema'; expected the header "
        r"Path,Sex,Age,Frontal/Lateral",
    ):
        _parse("chexpert", tmp_path)


def test_chexpert_small_and_full_size_copies_side_by_side_are_refused(tmp_path, layouts):
    """The small copy was taken without a word: a user who added the full-size release
    beside it trained on the downsampled JPEGs."""
    root, _ = layouts["chexpert"]
    for name in ("CheXpert-v1.0-small", "CheXpert-v1.0"):
        (tmp_path / name).mkdir()
        shutil.copyfile(root / "CheXpert-v1.0-small" / "train.csv", tmp_path / name / "train.csv")
    with pytest.raises(
        DataError,
        match=rf"^{tmp_path}: holds both CheXpert-v1\.0-small and CheXpert-v1\.0; point "
        r"--manual-dir at the one to prepare$",
    ):
        _parse("chexpert", tmp_path)


@pytest.mark.parametrize(
    ("name", "folder", "make"),
    [
        ("chexpert", "CheXpert-v1.0-small", lambda r: fakes.make_chexpert(r, 10, 2)),
        ("mura_shoulder", "MURA-v1.1", lambda r: fakes.make_mura(r, ("XR_SHOULDER",), 3, 2)),
        ("bach", "ICIAR2018_BACH_Challenge", lambda r: fakes.make_bach(r, 2)),
    ],
)
def test_a_second_copy_nested_inside_the_release_folder_is_refused(tmp_path, name, folder, make):
    """--manual-dir the release folder itself (as the docs show) holding a copy of the
    release unpacked again inside it: the nested copy was prepared, without a word."""
    make(tmp_path / "outer")
    make(tmp_path / "inner")
    release = tmp_path / "outer" / folder
    shutil.copytree(tmp_path / "inner" / folder, release / folder)
    inner = release / folder / ("Photos" if name == "bach" else "")
    with pytest.raises(DataError) as err:
        _parse(name, release)
    message = str(err.value)
    assert "\n" not in message and "point --manual-dir at the one to prepare" in message
    assert str(inner.parent if name != "bach" else inner) in message
    assert f"{release if name != 'bach' else release / 'Photos'} and" in message
    shutil.rmtree(release / folder)
    assert _parse(name, release)["train"]  # the release alone still prepares


def test_chexpert_train_csv_of_another_dataset_beside_the_release_is_not_a_copy(tmp_path):
    fakes.make_chexpert(tmp_path, 10, 2)
    (tmp_path / "train.csv").write_text("image_name,patient_id,target\nISIC_1,IP_1,0\n")
    assert _parse("chexpert", tmp_path)["test"]


def test_a_packed_or_doubly_nested_download_gets_a_hint(tmp_path, layouts):
    root, _ = layouts["chexpert"]
    packed = tmp_path / "packed"
    packed.mkdir()
    (packed / "CheXpert-v1.0-small.zip").write_bytes(b"PK")
    with pytest.raises(
        DataError,
        match=r"no CheXpert-v1\.0-small/train\.csv; expected .*; it holds "
        r"CheXpert-v1\.0-small\.zip: unpack it there first$",
    ):
        _parse("chexpert", packed)
    nested = tmp_path / "nested" / "CheXpert-v1.0-small"
    shutil.copytree(root / "CheXpert-v1.0-small", nested / "CheXpert-v1.0-small")
    with pytest.raises(
        DataError, match=rf"; unpacked one folder too deep\? try --manual-dir {nested}$"
    ):
        _parse("chexpert", tmp_path / "nested")
    assert _parse("chexpert", nested)["train"]  # the hint is right
    with pytest.raises(DataError, match=r"expected [^;]*$"):  # no hint where none fits
        _parse(
            "chexpert",
            tmp_path / "nested" / "CheXpert-v1.0-small" / "CheXpert-v1.0-small" / "train",
        )


def test_chexpert_unknown_label_value(tmp_path, layouts):
    root, _ = layouts["chexpert"]
    with open(root / "CheXpert-v1.0-small" / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows[1]["Edema"] = "2.0"  # line 3: the first frontal image of patient 1
    (tmp_path / "CheXpert-v1.0-small").mkdir()
    with open(tmp_path / "CheXpert-v1.0-small" / "train.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(
        DataError, match=r"train\.csv:3 column 'Edema': label '2\.0' is not 1\.0, 0\.0, -1\.0"
    ):
        _parse("chexpert", tmp_path)


def test_chexpert_view_other_than_frontal_or_lateral_is_refused_naming_its_line(tmp_path):
    """``FRONTAL`` was skipped as not frontal: the patient's next frontal image (other
    labels) stood for the patient, or the patient vanished, without a word."""
    fakes.make_chexpert(tmp_path, 4, 2)
    path = tmp_path / "CheXpert-v1.0-small" / "train.csv"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace(",Frontal,", ",FRONTAL,")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        _parse("chexpert", tmp_path)
    assert str(err.value) == f"{path}:3: Frontal/Lateral 'FRONTAL' is not Frontal or Lateral"


def test_chexpert_path_listed_twice_or_with_backslashes_is_refused_naming_its_line(tmp_path):
    """valid.csv with a copy of a row (other labels) before the original: the copy's labels
    stood for the official test image, the release's dropped without a word. A Windows
    tool's backslashes were "no patientN folder" though the patient is in the path."""
    fakes.make_chexpert(tmp_path, 10, 4)
    path = tmp_path / "CheXpert-v1.0-small" / "valid.csv"
    text = path.read_text()
    header, first, *rest = text.splitlines()
    copy = ",".join(first.split(",")[:5] + ["0.0"] * (len(first.split(",")) - 5))
    path.write_text("\n".join([header, copy, first, *rest]) + "\n")
    rel = first.split(",")[0]
    with pytest.raises(DataError) as err:
        _parse("chexpert", tmp_path)
    assert str(err.value) == (
        f"{path}:3: Path {rel!r} is listed again (first on line 2); expected each Path once "
        "(a line pasted twice?)"
    )
    windows = rel.replace("/", "\\")
    path.write_text("\n".join([header, first.replace(rel, windows), *rest]) + "\n")
    with pytest.raises(DataError) as err:
        _parse("chexpert", tmp_path)
    assert str(err.value) == f"{path}:2: Path {windows!r} uses backslashes; expected '/'"
    path.write_text(text)
    assert len(_parse("chexpert", tmp_path)["test"]) == 4


def test_chexpert_csv_without_a_frontal_row_is_named(tmp_path):
    fakes.make_chexpert(tmp_path, 4, 2)
    path = tmp_path / "CheXpert-v1.0-small" / "valid.csv"
    path.write_text(path.read_text().replace(",Frontal,", ",Lateral,"))
    with pytest.raises(DataError) as err:
        _parse("chexpert", tmp_path)
    assert str(err.value) == (
        f"{path}: no row with Frontal/Lateral = Frontal; expected the release's rows, a "
        "frontal image per patient"
    )


def test_chexpert_copy_without_valid_csv_is_named_with_the_layout(tmp_path):
    """A partial extraction without valid.csv said only "CSV file not found"."""
    from medft_jax.data.builders.chexpert import LAYOUT

    fakes.make_chexpert(tmp_path, 4, 2)
    path = tmp_path / "CheXpert-v1.0-small" / "valid.csv"
    path.unlink()
    with pytest.raises(DataError) as err:
        _parse("chexpert", tmp_path)
    assert str(err.value) == f"{path} not found; expected {LAYOUT}"


def test_mura_label_outside_class_list(tmp_path):
    fakes.make_mura(tmp_path, ("XR_WRIST",), 2, 1)
    path = tmp_path / "MURA-v1.1" / "train_labeled_studies.csv"
    path.write_text(path.read_text().replace("/,1", "/,2", 1))
    with pytest.raises(
        DataError, match=r"train_labeled_studies\.csv:\d+: label '2' outside the class list"
    ):
        _parse("mura_wrist", tmp_path)


def test_mura_study_listed_twice_with_two_labels_is_refused(tmp_path):
    """The last line would win without a word; listed twice alike, it is one study."""
    fakes.make_mura(tmp_path, ("XR_WRIST",))
    path = tmp_path / "MURA-v1.1" / "train_labeled_studies.csv"
    lines = path.read_text().splitlines()
    study, label = lines[0].rsplit(",", 1)
    path.write_text("\n".join([*lines, f"{study},{label}"]) + "\n")
    _parse("mura_wrist", tmp_path)  # the same label again: fine
    path.write_text("\n".join([*lines, f"{study},{1 - int(label)}"]) + "\n")
    with pytest.raises(DataError) as e:
        _parse("mura_wrist", tmp_path)
    assert str(e.value) == (
        f"{path}:{len(lines) + 1}: study {study.rstrip('/')!r} listed again with label "
        f"{1 - int(label)} (before: {label}); expected one label per study"
    )


def test_mura_image_line_pasted_twice_is_refused_naming_both_lines(tmp_path):
    """It was refused as one example in two places, named by the split a carve put it in
    ("split 'val'"), not by the listing and its lines."""
    fakes.make_mura(tmp_path, ("XR_WRIST",))
    path = tmp_path / "MURA-v1.1" / "train_image_paths.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(DataError) as e:
        _parse("mura_wrist", tmp_path)
    assert str(e.value) == (
        f"{path}:{len(lines) + 1}: image {lines[1]!r} is listed again (first on line 2); "
        "expected each image once (a line pasted twice?)"
    )


def test_mura_label_that_contradicts_its_study_folder_is_refused(tmp_path):
    """``study1_negative`` labelled 1 in the CSV: all its images trained as abnormal, without
    a word (the release's folder names state each study's label)."""
    fakes.make_mura(tmp_path, ("XR_WRIST",))
    path = tmp_path / "MURA-v1.1" / "train_labeled_studies.csv"
    lines = path.read_text().splitlines()
    study, label = lines[0].rsplit(",", 1)
    lines[0] = f"{study},{1 - int(label)}"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        _parse("mura_wrist", tmp_path)
    named = 1 if study.rstrip("/").endswith("_positive") else 0
    assert named == int(label)
    assert str(e.value) == (
        f"{path}: study {study.rstrip('/')!r} is labelled {1 - named}, its folder name says "
        f"{named}; expected the release's labels (one of the two was edited)"
    )


def test_a_partly_downloaded_copy_is_refused_before_any_decoding(tmp_path):
    """A listed image that is not on disk: refused when the listing is read (the same with
    --skip-bad-images, which skips corrupt files), not found mid-prepare or skipped."""
    fakes.make_mura(tmp_path, ("XR_WRIST",))
    first = (tmp_path / "MURA-v1.1" / "train_image_paths.csv").read_text().splitlines()[0]
    (tmp_path / first).unlink()
    with pytest.raises(
        DataError,
        match=rf"mura_wrist in {tmp_path}: 1 of the \d+ listed images do not exist, e\.g\. "
        rf"{tmp_path / first} \(a partly downloaded or moved copy\?\); --skip-bad-images",
    ):
        _parse("mura_wrist", tmp_path)
    # CholecT50 frames re-encoded as .jpg (some copies): the names are at fault.
    fakes.make_cholect50(tmp_path / "cholec", (1, 2, 8, 6), 25)
    frame = tmp_path / "cholec" / "videos" / "VID06" / "000010.png"
    frame.rename(frame.with_suffix(".jpg"))
    with pytest.raises(DataError) as err:
        _parse("cholect50_instrument", tmp_path / "cholec")
    assert f"{frame} (but '000010.jpg' is there: renamed or re-encoded? expected the listed " in (
        str(err.value)
    ) and "names); --skip-bad-images" in str(err.value)


def test_mura_listing_no_image_of_the_part_says_why(tmp_path):
    fakes.make_mura(tmp_path, ("XR_SHOULDER",), 2, 1)
    # No humerus in this copy: one line, not numpy's error from carving an empty list.
    with pytest.raises(DataError, match=r"train_image_paths\.csv: lists no XR_HUMERUS images \("):
        _parse("mura_humerus", tmp_path)
    # A copy extracted on Windows: backslash paths.
    for split in ("train", "valid"):
        path = tmp_path / "MURA-v1.1" / f"{split}_image_paths.csv"
        path.write_text(path.read_text().replace("/", "\\"))
    with pytest.raises(DataError, match=r"_image_paths\.csv:1: '.*' is not an image path; it uses"):
        _parse("mura_shoulder", tmp_path)
    path = tmp_path / "MURA-v1.1" / "train_image_paths.csv"  # one line alone: a path all the same
    path.write_text(path.read_text().splitlines()[0] + "\n")
    with pytest.raises(DataError, match=r"_image_paths\.csv:1: '.*' is not an image path; it uses"):
        _parse("mura_shoulder", tmp_path)
    path.write_text(path.read_text().replace("\\", "/", 1))  # MURA-v1.1/train\XR_SHOULDER\...
    with pytest.raises(DataError, match=r"_image_paths\.csv:1: '.*' is not an image path; it uses"):
        _parse("mura_shoulder", tmp_path)


def test_mura_listing_line_without_a_slash_past_the_first_is_refused(tmp_path):
    """Only the first line may be a header: any later line without '/' (one path of a
    mixed copy written with backslashes) was skipped as one, an image gone without a word."""
    fakes.make_mura(tmp_path, ("XR_HUMERUS",))
    path = tmp_path / "MURA-v1.1" / "train_image_paths.csv"
    original = path.read_text()
    lines = original.splitlines()
    lines[4] = lines[4].replace("/", "\\")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        _parse("mura_humerus", tmp_path)
    assert str(err.value) == (
        f"{path}:5: {lines[4]!r} is not an image path; it uses backslashes, expected '/' (only "
        "the first line may be a header); expected a line like "
        "MURA-v1.1/train/XR_HUMERUS/patient00001/study1_positive/image1.png"
    )
    lines[4] = lines[4].replace("\\", "/", 2)  # mixed: its part unseen, the image skipped
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train_image_paths\.csv:5: .* it uses backslashes"):
        _parse("mura_humerus", tmp_path)
    path.write_text("image_path\n" + original)
    _parse("mura_humerus", tmp_path)  # a header on the first line: fine


@pytest.mark.parametrize("sep", ["\\", None])
def test_mura_first_listing_line_that_is_an_image_path_is_not_taken_for_a_header(tmp_path, sep):
    """The first line was skipped as a header whatever it was: written with backslashes
    (a Windows tool), or a bare image name, it was an image gone without a word."""
    fakes.make_mura(tmp_path, ("XR_HUMERUS",))
    path = tmp_path / "MURA-v1.1" / "train_image_paths.csv"
    lines = path.read_text().splitlines()
    lines[0] = lines[0].replace("/", sep) if sep else lines[0].rsplit("/", 1)[1]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        _parse("mura_humerus", tmp_path)
    hint = "; it uses backslashes, expected '/'" if sep else ""
    assert str(err.value) == (
        f"{path}:1: {lines[0]!r} is not an image path{hint} (only the first line may be a "
        "header); expected a line like "
        "MURA-v1.1/train/XR_HUMERUS/patient00001/study1_positive/image1.png"
    )


def test_mura_labelled_study_without_a_listed_image_is_refused(tmp_path):
    """A valid_image_paths.csv cut short dropped a study of the official test set, and its
    images, without a word: every labelled study of the part must list an image."""
    fakes.make_mura(tmp_path, ("XR_WRIST", "XR_HUMERUS"))
    path = tmp_path / "MURA-v1.1" / "valid_image_paths.csv"
    lines = path.read_text().splitlines()
    last_study = lines[-1].rsplit("/", 1)[0]
    kept = [line for line in lines if not line.startswith(last_study + "/")]
    path.write_text("\n".join(kept) + "\n")
    _parse("mura_wrist", tmp_path)  # the humerus study gone: the wrist task is whole
    with pytest.raises(DataError) as err:
        _parse("mura_humerus", tmp_path)
    assert str(err.value) == (
        f"{path}: study {last_study!r} is labelled in valid_labeled_studies.csv but lists no "
        "image; 1 such XR_HUMERUS studies (a cut-short listing?)"
    )


def test_mura_path_escaping_root_is_refused(tmp_path):
    fakes.make_mura(tmp_path, ("XR_WRIST",), 2, 1)
    path = tmp_path / "MURA-v1.1" / "train_image_paths.csv"
    study = path.read_text().splitlines()[0].rsplit("/", 1)[0]
    path.write_text(f"{study}/../../../../../../escape/XR_WRIST/x.png\n" + path.read_text())
    (tmp_path / "MURA-v1.1" / "train_labeled_studies.csv").write_text(
        f"{study}/../../../../../../escape/XR_WRIST/,1\n"
        + (tmp_path / "MURA-v1.1" / "train_labeled_studies.csv").read_text()
    )
    with pytest.raises(DataError, match=r"_labeled_studies\.csv:1: path .* has a '\.\.' part"):
        _parse("mura_wrist", tmp_path)


@pytest.mark.parametrize("task", ["chexpert", "mura_wrist"])
def test_listings_written_with_a_leading_dot_slash_read_as_the_release(tmp_path, task):
    """pandas and Windows tools write ``./CheXpert-v1.0-small/train/...``: the folder prefix
    was not recognised and every image refused as missing under a doubled folder."""
    if task == "chexpert":
        fakes.make_chexpert(tmp_path)
        files = [tmp_path / "CheXpert-v1.0-small" / f"{s}.csv" for s in ("train", "valid")]
        prefix = "CheXpert-v1.0-small/"
    else:
        fakes.make_mura(tmp_path, ("XR_WRIST",))
        files = sorted((tmp_path / "MURA-v1.1").glob("*.csv"))
        prefix = "MURA-v1.1/"
    before = _parse(task, tmp_path)
    for path in files:
        lines = path.read_text().splitlines()
        path.write_text("\n".join(f"./{x}" if x.startswith(prefix) else x for x in lines) + "\n")
    assert f"./{prefix}" in files[0].read_text()
    after = _parse(task, tmp_path)
    for split, members in before.items():
        assert [(r.id, r.path, r.label) for r in after[split]] == [
            (r.id, r.path, r.label) for r in members
        ]


@needs_h5py
def test_t1w_label_outside_and_corrupt_mat(tmp_path):
    fakes.write_mat(tmp_path / "1.mat", np.ones((8, 8), np.int16), 4, "7")
    with pytest.raises(
        DataError, match=r"1\.mat: cjdata/label 4 outside the class list 1 \(meningioma\)"
    ):
        _parse("t1w_mri", tmp_path)
    (tmp_path / "1.mat").write_bytes(b"MATLAB 5.0 MAT-file, not HDF5")
    with pytest.raises(DataError, match=r"cannot read .*1\.mat as MATLAB v7\.3 \(HDF5\)"):
        _parse("t1w_mri", tmp_path)


@pytest.mark.parametrize("pid", ["", "\x00\x00"], ids=["matlab-empty", "nul-codes"])
def test_t1w_empty_patient_id_is_refused_not_one_shared_patient(tmp_path, pid):
    """MATLAB's empty char array is stored as [0 0]: read as text, every such file was
    one patient "\x00\x00"; the split is patient-disjoint, so it is refused."""
    fakes.write_mat(tmp_path / "1.mat", np.ones((8, 8), np.int16), 1, "100")
    fakes.write_mat(tmp_path / "2.mat", np.ones((8, 8), np.int16), 2, pid)
    with pytest.raises(DataError, match=r"2\.mat: cjdata/PID is empty; expected the patient id"):
        _parse("t1w_mri", tmp_path)


def test_bach_empty_class_is_named(tmp_path):
    fakes.make_bach(tmp_path, 2)
    for f in (tmp_path / "ICIAR2018_BACH_Challenge" / "Photos" / "InSitu").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"class folder .*Photos/InSitu has no \.tif images"):
        _parse("bach", tmp_path)


def test_bach_split_that_comes_out_empty(tmp_path):
    """The paper tasks' test share is fixed: named as such, not as --test-fraction, a flag
    they refuse (the carve's note named it too)."""
    fakes.make_bach(tmp_path, 1)
    with pytest.raises(DataError) as e:
        _parse("bach", tmp_path)
    assert str(e.value) == (
        "the task's fixed test share 0.1: the test split takes 0 of the 4 images, leaving 4 "
        "to train and validate on; expected more images"
    )


@needs_h5py
def test_a_paper_tasks_test_carve_note_names_no_flag(tmp_path, capsys, monkeypatch):
    from medft_jax.data import examples

    monkeypatch.setattr(examples, "_CARVE_NOTES_SAID", set())  # said once per process
    fakes.make_t1w_mri(tmp_path)  # 36 images: each class and patient rounds its own share
    _parse("t1w_mri", tmp_path)
    notes = [line for line in capsys.readouterr().err.splitlines() if "test split" in line]
    assert notes == [
        "note: the test split takes 9 of the 36 images (25%), not the 18% of the task's "
        "fixed test share: each class and patient is carved by its own rounded share"
    ]


@needs_h5py
def test_t1w_copy_of_the_release_without_every_image_is_refused(tmp_path):
    """The release's cvind.mat holds 3,064 fold ids: a copy with it claims to be the release,
    and one zip part left packed would shrink the patient-disjoint split without a word."""
    fakes.make_t1w_mri(tmp_path)  # 1.mat..36.mat and a cvind.mat of 36 ids: no claim
    assert sum(len(v) for v in _parse("t1w_mri", tmp_path).values()) == 36
    root = tmp_path / "release"
    fakes.make_t1w_mri(root, cvind_size=3064)
    (root / "brainTumorDataPublic_1-766" / "5.mat").unlink()
    message = (
        rf"^{root}: 35 of T1w MRI's 3,064 official images \(cvind\.mat indexes all of them\); "
        r"missing 5\.mat, 37\.mat\.\.3064\.mat\. The split needs every image \(a partial "
        r"copy\? the release's four zip parts hold 1-766, 767-1532, 1533-2298 and 2299-3064\)$"
    )
    with pytest.raises(DataError, match=message):
        _parse("t1w_mri", root)
    from scipy.io import savemat  # the release's cvind.mat may be an older MAT file

    savemat(root / "cvind.mat", {"cvind": np.ones((3064, 1))})
    with pytest.raises(DataError, match=message):
        _parse("t1w_mri", root)
    (root / "cvind.mat").write_bytes(b"not a MAT file")
    with pytest.raises(DataError, match=r"^cannot read \S*cvind\.mat as a MATLAB file \("):
        _parse("t1w_mri", root)


@needs_h5py
@pytest.mark.parametrize("extra", ["1 (1).mat", "01.mat"])
def test_t1w_copy_of_the_release_with_an_extra_image_is_refused_naming_it(tmp_path, extra):
    """A release copy (cvind.mat of 3,064 ids) with ``1 (1).mat`` or ``01.mat`` beside
    ``1.mat`` held one image twice: 3,065 images prepared without a word."""
    fakes.make_t1w_mri(tmp_path, cvind_size=3064)
    part = tmp_path / "brainTumorDataPublic_1-766"
    shutil.copy(part / "1.mat", part / extra)
    with pytest.raises(DataError) as err:
        _parse("t1w_mri", tmp_path)
    assert str(err.value) == (
        f"{part / extra}: not one of T1w MRI's official names 1.mat..3064.mat (each once; "
        "cvind.mat indexes 3,064, so the copy claims to be the release); 1 such file(s): "
        "a copy? remove it"
    )


@needs_h5py
def test_t1w_zip_part_unpacked_twice_is_refused_naming_both_copies(tmp_path):
    """Byte copies of one part (``brainTumorDataPublic_1-766 2``) were prepared as more
    images: every copied test image counted twice in the test metric."""
    fakes.make_t1w_mri(tmp_path)
    part = tmp_path / "brainTumorDataPublic_1-766"
    shutil.copytree(part, tmp_path / "brainTumorDataPublic_1-766 2")
    with pytest.raises(DataError, match=r"^\S+/1\.mat and \S+ 2/1\.mat are both 1\.mat: the "):
        _parse("t1w_mri", tmp_path)


@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
def test_t1w_one_unzipped_part_of_the_release_is_refused(tmp_path):
    """``--manual-dir`` at one part folder (no cvind.mat): 766 of 3,064 images prepared
    silently; so were parts unpacked only partly. Checked before any file is read, so
    empty files stand in for the images."""
    part = tmp_path / "brainTumorDataPublic_1-766"
    part.mkdir()
    for n in range(1, 767):
        (part / f"{n}.mat").touch()
    message = (
        rf"^{part}: holds only the release's zip part\(s\) 1-766 \(766 of 3,064 images\) and "
        r"no cvind\.mat; point --manual-dir at the folder holding all four parts"
    )
    with pytest.raises(DataError, match=message):
        _parse("t1w_mri", part)
    for n in range(767, 1533):  # two parts of four: still not the release
        (part / f"{n}.mat").touch()
    with pytest.raises(DataError, match=r"part\(s\) 1-766, 767-1532 \(1,532 of 3,064"):
        _parse("t1w_mri", part)
    (part / "1532.mat").unlink()  # part 767-1532 cut short: named, not prepared short
    with pytest.raises(DataError) as err:
        _parse("t1w_mri", part)
    assert str(err.value) == (
        f"{part}: holds 1,531 of the release's 3,064 images and no cvind.mat; missing "
        "1532.mat..3064.mat: a zip part cut short? unpack each of the four parts (1-766, "
        "767-1532, 1533-2298 and 2299-3064) whole"
    )
    for n in range(1533, 3065):  # all four parts, ten files lost mid-part
        (part / f"{n}.mat").touch()
    for n in range(500, 510):
        (part / f"{n}.mat").unlink()
    with pytest.raises(DataError, match=r"holds 3,053 of .* missing 500\.mat\.\.509\.mat, 1532\.m"):
        _parse("t1w_mri", part)
    for n in range(701, 3065):  # a user's own subset of no more than a part: not checked
        (part / f"{n}.mat").unlink(missing_ok=True)
    with pytest.raises(DataError, match=r"cannot read \S+\.mat as MATLAB v7\.3"):
        _parse("t1w_mri", part)


@pytest.mark.parametrize(
    "extra",
    [
        "1 (1).mat",
        *(pytest.param(x, marks=pytest.mark.slow) for x in ("01.mat", "notes.mat", "\u00b9.mat")),
    ],
)  # (each ~2 s: one in the fast tier)
def test_t1w_release_cut_short_with_an_extra_name_is_refused_naming_it(tmp_path, extra):
    """2,000 of the release's names and no cvind.mat: refused as a zip part cut short, but
    one other name beside them (a Windows copy ``1 (1).mat``, ``notes.mat``) turned the check
    off, and the copy was prepared short and with the extra file (``¹.mat``: a ValueError)."""
    for n in range(1, 2001):
        (tmp_path / f"{n}.mat").touch()
    (tmp_path / extra).touch()
    with pytest.raises(DataError) as err:
        _parse("t1w_mri", tmp_path)
    assert str(err.value) == (
        f"{tmp_path / extra}: not one of T1w MRI's official names 1.mat..3064.mat (each once; "
        "the folder holds 2,000 of them and no cvind.mat, more than a zip part's 766, so the "
        "copy claims to be the release); 1 such file(s): a copy? remove it (or give a subset "
        "of your own other names)"
    )
    (tmp_path / extra).unlink()
    with pytest.raises(DataError, match=r"holds 2,000 of .* missing 2001\.mat\.\.3064\.mat: a "):
        _parse("t1w_mri", tmp_path)


@needs_h5py
def test_t1w_without_h5py_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    """h5py is the [prepare] extra's: without it the listing was a ModuleNotFoundError
    traceback, before the TensorFlow check that names the extra."""
    import sys

    fakes.make_t1w_mri(tmp_path)
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py raises ImportError
    with pytest.raises(DataError, match=r"^reading T1w MRI's \.mat files needs h5py \(.*\); "
                       r"pip install 'medft-jax\[prepare\]'$"):  # fmt: skip
        _parse("t1w_mri", tmp_path)


def test_a_readers_error_that_names_skip_bad_images_names_it_once(tmp_path):
    """T1w's .mat reader names --skip-bad-images (its listing reads files too); an image
    it could not decode then said it twice, as the image reader adds it."""
    from medft_jax.data.builders.t1w_mri import UnreadableMat

    path = tmp_path / "1.mat"
    path.write_bytes(b"x")

    def decode(p):
        raise UnreadableMat(f"cannot read {p}: cjdata/image: damaged{SKIP_HINT}")

    with pytest.raises(DataError) as err:
        ImageReader(8, 8, decode=decode).read_many([path])
    assert str(err.value) == f"cannot read {path}: cjdata/image: damaged{SKIP_HINT}"


@needs_h5py
def test_t1w_unreadable_mat_is_named_or_skipped_and_counted(tmp_path):
    """A truncated .mat fails while the listing is read (its label and patient are in it):
    named in one line, or with --skip-bad-images left out and counted, as a bad image is."""
    fakes.make_t1w_mri(tmp_path)
    bad = tmp_path / "brainTumorDataPublic_1-766" / "3.mat"
    bad.write_bytes(bad.read_bytes()[:3000])
    with pytest.raises(DataError) as err:
        _parse("t1w_mri", tmp_path)
    assert str(err.value).startswith(f"cannot read {bad} as MATLAB v7.3 (HDF5): ")
    assert str(err.value).endswith(SKIP_HINT) and "\n" not in str(err.value)
    skipped: list[str] = []
    splits = builder_class("t1w_mri").TASK.parse_checked(tmp_path, CONFIG, skipped=skipped)
    assert skipped == ["brainTumorDataPublic_1-766/3.mat"]
    ids = [ex.id for members in splits.values() for ex in members]
    assert len(ids) == 35 and skipped[0] not in ids
    # A wrong label is a wrong copy, not a bad file: refused with the flag too.
    fakes.write_mat(tmp_path / "brainTumorDataPublic_1-766" / "1.mat", np.ones((8, 8)), 4, "7")
    with pytest.raises(DataError, match=r"1\.mat: cjdata/label 4 outside the class list"):
        builder_class("t1w_mri").TASK.parse_checked(tmp_path, CONFIG, skipped=[])
    for path in tmp_path.rglob("*.mat"):
        if path.name != "cvind.mat":
            path.write_bytes(b"")
    with pytest.raises(DataError, match=r"every \.mat file was skipped as unreadable \(36, "):
        builder_class("t1w_mri").TASK.parse_checked(tmp_path, CONFIG, skipped=[])


def test_t1w_blank_slice_is_refused_not_decoded_black(tmp_path):
    """A .mat whose image holds one value min-max scaled to an all-black image without a
    word (DICOM refuses the same case); a bad file, which --skip-bad-images skips."""
    from medft_jax.data.builders import t1w_mri

    path = tmp_path / "1.mat"
    fakes.write_mat(path, np.full((8, 8), 1500, np.int16), 1, "7")
    with pytest.raises(t1w_mri.UnreadableMat) as err:
        t1w_mri.decode(path)
    assert str(err.value) == (
        f"{path}: cjdata/image holds one value (1500) everywhere, a blank or damaged slice"
    )
    fakes.write_mat(path, np.array([[0, 1500], [3000, 1500]], np.int16), 1, "7")
    # Min-max scaled, as MATLAB shows it (write_mat stores it column-major, as MATLAB does).
    assert np.asarray(t1w_mri.decode(path)).tolist() == [[0, 128], [255, 128]]


def test_bach_copy_of_the_release_without_all_400_images_is_refused(tmp_path):
    """The release's Photos/microscopy_ground_truth.csv makes a copy claim to be the
    release: then each class folder must hold its 100 images, the missing ones named."""
    fakes.make_bach(tmp_path, 2, ground_truth=True)
    photos = tmp_path / "ICIAR2018_BACH_Challenge" / "Photos"
    with pytest.raises(DataError) as err:
        _parse("bach", tmp_path)
    assert str(err.value) == (
        f"{photos}: 8 of BACH's 400 official images (microscopy_ground_truth.csv marks the "
        "release, 100 per class); missing Normal: n003.tif..n100.tif; Benign: "
        "b003.tif..b100.tif; InSitu: is003.tif..is100.tif; Invasive: iv003.tif..iv100.tif. "
        "The split needs every image (a partial copy?)"
    )
    whole = tmp_path / "whole"
    fakes.make_bach(whole, 100, ground_truth=True)
    assert [len(v) for v in _parse("bach", whole).values()] == [324, 36, 40]
    photos = whole / "ICIAR2018_BACH_Challenge" / "Photos"
    for name in ("Benign/b004.tif", "InSitu/is017.tif", "InSitu/is018.tif"):
        (photos / name).unlink()
    with pytest.raises(
        DataError,
        match=r"Photos: 397 of BACH's 400 official images \(.*\); missing Benign: b004\.tif; "
        r"InSitu: is017\.tif\.\.is018\.tif\. The split needs",
    ):
        _parse("bach", whole)


def test_bach_copy_of_the_release_with_an_extra_image_is_refused_naming_it(tmp_path):
    """A release copy (microscopy_ground_truth.csv) with ``n001 - Copy.tif``, a Benign image
    misfiled in Normal/, or n001.tif beside n001.tiff held one image twice: it could sit in
    train and test, or carry two labels, and 401 images were prepared without a word."""
    fakes.make_bach(tmp_path, 100, ground_truth=True)
    photos = tmp_path / "ICIAR2018_BACH_Challenge" / "Photos"
    copy = photos / "Normal" / "n001 - Copy.tif"
    shutil.copy(photos / "Normal" / "n001.tif", copy)
    shutil.copy(photos / "Benign" / "b001.tif", photos / "Normal" / "b001.tif")
    with pytest.raises(DataError) as err:
        _parse("bach", tmp_path)
    assert str(err.value) == (  # files in name order: b001.tif is named first
        f"{photos / 'Normal' / 'b001.tif'}: not one of Normal/'s official names "
        "n001.tif..n100.tif; 2 such file(s) in a copy that microscopy_ground_truth.csv marks "
        "as the release, whose images each appear once: a copy or a misfiled image? remove it"
    )
    copy.unlink()
    (photos / "Normal" / "b001.tif").unlink()
    shutil.copy(photos / "InSitu" / "is007.tif", photos / "InSitu" / "is007.tiff")
    with pytest.raises(
        DataError,
        match=r"^\S+/InSitu/is007\.tiff: image is007 a second time \(beside is007\.tif\); "
        r"1 such file\(s\) in a copy",
    ):
        _parse("bach", tmp_path)


def test_bach_renamed_class_folder_names_it_and_the_four_expected(tmp_path):
    fakes.make_bach(tmp_path, 2)
    photos = tmp_path / "ICIAR2018_BACH_Challenge" / "Photos"
    (photos / "Benign").rename(photos / "benign_old")
    expected = "expected the four class folders Normal, Benign, InSitu, Invasive"
    for manual_dir in (tmp_path, photos):
        with pytest.raises(DataError) as err:
            _parse("bach", manual_dir)
        assert str(err.value) == (
            f"{photos}: found class folder 'benign_old', {expected} (missing: Benign)"
        )
    shutil.rmtree(photos / "benign_old")
    with pytest.raises(DataError) as err:
        _parse("bach", tmp_path)
    assert str(err.value) == f"{photos}: no class folder Benign; {expected}"


def test_name_runs_joins_consecutive_numbers_and_counts_beyond_the_limit():
    from medft_jax.data.builders.base import name_runs

    assert name_runs([5, 3, 4, 9], "{}.mat".format) == "3.mat..5.mat, 9.mat"
    assert name_runs(range(1, 20, 2), str, limit=3) == "1, 3, 5 and 7 more"


@pytest.mark.slow
def test_isic_partial_duplicate_list_beside_the_official_train_csv_is_refused(tmp_path):
    """The challenge's train.csv lists 33,126 images, of which its duplicate list drops
    425: a list cut short would leave duplicates in. A smaller train.csv is not checked."""
    from medft_jax.data.builders.isic2020 import HEADER, refuse_partial_duplicates

    fakes.make_isic2020(tmp_path, 10, 2)  # its own 20-image train.csv, 2 duplicate pairs
    assert sum(len(v) for v in _parse("isic2020", tmp_path).values()) == 18
    with open(tmp_path / "train.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HEADER, restval="")
        writer.writeheader()
        for n in range(1, 33_127):
            writer.writerow({"image_name": f"ISIC_{n:07d}", "patient_id": "IP_1", "target": 0})
    with pytest.raises(DataError) as err:
        _parse("isic2020", tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'ISIC_2020_Training_Duplicates.csv'}: drops 2 of the official "
        "train.csv's 33,126 images as duplicates, the challenge's list 425: missing 423 "
        "duplicates. The paper's 32,701 images need the whole list (a partial copy?)"
    )
    refuse_partial_duplicates(tmp_path / "list.csv", 33_126, 425)  # the whole list


def _write_official_isic_train_csv(root: Path) -> None:
    """A train.csv of the official 33,126 rows (ISIC_0000001..), the fake's names among them."""
    from medft_jax.data.builders.isic2020 import HEADER

    with open(root / "train.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HEADER, restval="")
        writer.writeheader()
        for n in range(1, 33_127):
            writer.writerow({"image_name": f"ISIC_{n:07d}", "patient_id": "IP_1", "target": 0})


@pytest.mark.slow
def test_isic_duplicate_that_train_csv_does_not_list_is_refused_naming_its_line(tmp_path):
    """A typo in the duplicate list (ISIC_000006 for ISIC_0000006) beside the official
    train.csv left the duplicate in: named by its line, before the count of the list."""
    fakes.make_isic2020(tmp_path, 10, 2)
    _write_official_isic_train_csv(tmp_path)
    path = tmp_path / "ISIC_2020_Training_Duplicates.csv"
    path.write_text(path.read_text().replace("ISIC_0000006", "ISIC_000006"))
    with pytest.raises(DataError) as err:
        _parse("isic2020", tmp_path)
    assert str(err.value) == (
        f"{path}:2: image_name_2 'ISIC_000006' is not in train.csv; expected each duplicate to "
        "name an image train.csv lists (1 such line(s): the list of another release, or a typo?)"
    )


@pytest.mark.slow
def test_isic_train_csv_cleared_of_duplicates_beside_their_images_is_checked_as_the_release(
    tmp_path,
):
    """train.csv without the duplicates' rows (their images still in jpeg/train/) is the
    release all the same: its duplicate list cut short was not checked."""
    fakes.make_isic2020(tmp_path, 10, 2)  # duplicates ISIC_0000006, ISIC_0000012 on disk
    _write_official_isic_train_csv(tmp_path)
    path = tmp_path / "train.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(
        "".join(ln for ln in lines if not ln.startswith(("ISIC_0000006,", "ISIC_0000012,")))
    )
    with pytest.raises(DataError, match=r"drops 2 of the official train\.csv's 33,126 images"):
        _parse("isic2020", tmp_path)


@pytest.mark.slow
def test_isic_duplicate_list_dropping_more_than_the_challenges_is_refused(tmp_path):
    """Beside the official train.csv a list dropping more than its 425 (lines added)
    passed: 32,696 images, a 6,540-image test set, without a word."""
    from medft_jax.data.builders.isic2020 import refuse_partial_duplicates

    path = tmp_path / "list.csv"
    with pytest.raises(DataError) as err:
        refuse_partial_duplicates(path, 33_126, 430)
    assert str(err.value) == (
        f"{path}: drops 430 of the official train.csv's 33,126 images as duplicates, 5 more "
        "than the challenge's list (425); expected its 32,701 images kept (lines added? a "
        "pair written both ways drops both twins)"
    )
    refuse_partial_duplicates(path, 33_126, 425)  # the whole list
    refuse_partial_duplicates(path, 20, 430)  # another train.csv: not counted


def test_isic_duplicate_pair_written_both_ways_is_refused_naming_both_lines(tmp_path):
    """A,B and B,A dropped both twins: the lesion gone from the data, any train.csv."""
    fakes.make_isic2020(tmp_path, 10, 2)
    path = tmp_path / "ISIC_2020_Training_Duplicates.csv"
    lines = path.read_text().splitlines()
    kept, dropped = lines[1].split(",")
    path.write_text("\n".join([*lines, f"{dropped},{kept}"]) + "\n")
    with pytest.raises(DataError) as err:
        _parse("isic2020", tmp_path)
    assert str(err.value) == (
        f"{path}:{len(lines) + 1}: the pair {dropped},{kept} is line 2's written the other "
        "way; expected each pair once, its first image kept (both ways drop both twins)"
    )


def test_isic_train_csv_row_pasted_twice_is_refused_naming_both_lines(tmp_path):
    fakes.make_isic2020(tmp_path, 10, 2)
    path = tmp_path / "train.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, lines[3]]) + "\n")
    with pytest.raises(DataError) as err:
        _parse("isic2020", tmp_path)
    assert str(err.value) == (
        f"{path}:{len(lines) + 1}: image_name 'ISIC_0000003' is listed again (first on line "
        "4); expected each image_name once (a line pasted twice?)"
    )


def test_isic_images_in_the_site_s_train_folder_are_named_with_where_to_move_them(tmp_path):
    """Every image was "missing (a partly downloaded or moved copy?)": the ISIC site's
    train/ folder beside train.csv, Kaggle's jpeg/train/ expected."""
    fakes.make_isic2020(tmp_path, 10, 2)
    (tmp_path / "jpeg" / "train").rename(tmp_path / "train")
    with pytest.raises(DataError) as err:
        _parse("isic2020", tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'jpeg' / 'train'} not found, but {tmp_path / 'train'} holds images; "
        "expected the images in jpeg/train/ (Kaggle's layout): move the ISIC site's train/ "
        "folder there"
    )


def test_isic_subset_train_csv_without_a_listed_duplicate_is_accepted(tmp_path):
    """A train.csv already cleared of the duplicates (32,701 rows), or any subset, beside the
    official list was refused as "not in train.csv": it lacks them on purpose."""
    truth = fakes.make_isic2020(tmp_path, 10, 2)
    path = tmp_path / "train.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(line for line in lines if not line.startswith("ISIC_0000006,")))
    splits = _parse("isic2020", tmp_path)
    assert sum(len(v) for v in splits.values()) == len(truth) == 18


def test_isic_image_that_train_csv_does_not_list_is_refused_naming_it(tmp_path):
    """A train.csv row lost (a spreadsheet's round trip) dropped its image without a word,
    and with it the official release's checks, which go by train.csv's 33,126 rows."""
    fakes.make_isic2020(tmp_path, 10, 2)
    path = tmp_path / "train.csv"
    text = path.read_text()
    (tmp_path / "jpeg" / "train" / "._ISIC_0000099.jpg").write_bytes(b"")  # macOS: ignored
    (tmp_path / "jpeg" / "train" / "Thumbs.db").write_bytes(b"")  # not an image: ignored
    assert sum(len(v) for v in _parse("isic2020", tmp_path).values()) == 18
    path.write_text("".join(ln for ln in text.splitlines(True) if "ISIC_0000009," not in ln))
    with pytest.raises(DataError) as err:
        _parse("isic2020", tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'jpeg' / 'train'}: image 'ISIC_0000009.jpg' is not in train.csv (1 such "
        "image(s)); expected train.csv to list every image in jpeg/train/ (a lost row? for a "
        "deliberate subset, move the images it leaves out out of jpeg/train/)"
    )
    (tmp_path / "jpeg" / "train" / "ISIC_0000009.jpg").unlink()  # a subset holding its own
    assert sum(len(v) for v in _parse("isic2020", tmp_path).values()) == 17


def _edit_isic_row(root: Path, image_name: str, **cells: str) -> int:
    """Set ``cells`` of ``image_name``'s train.csv row; returns its line number."""
    path = root / "train.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    k = next(k for k, row in enumerate(rows) if row["image_name"] == image_name)
    rows[k].update(cells)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return k + 2


@pytest.mark.parametrize("split_by", ["patient", "image"])
def test_isic_blank_patient_id_is_refused_naming_its_line(tmp_path, split_by):
    """A blank patient_id made the image a patient of its own: one patient's lesions could
    straddle train and test of the patient split. The column is required either way."""
    fakes.make_isic2020(tmp_path, 10, 2)
    line = _edit_isic_row(tmp_path, "ISIC_0000009", patient_id=" ")
    with pytest.raises(DataError) as err:
        _parse("isic2020", tmp_path, MedicalConfig.make(**SIZES, split_by=split_by))
    assert str(err.value) == (
        f"{tmp_path / 'train.csv'}:{line}: patient_id is blank; expected the patient of the image"
    )


def test_isic_target_that_contradicts_benign_malignant_is_refused_naming_its_line(tmp_path):
    """A malignant row with target 0 was trained and tested as benign without a word."""
    fakes.make_isic2020(tmp_path, 10, 2)
    _edit_isic_row(tmp_path, "ISIC_0000001", benign_malignant=" Malignant ")
    _parse("isic2020", tmp_path)  # case and spaces aside, it agrees: fine
    line = _edit_isic_row(tmp_path, "ISIC_0000001", target="0")
    with pytest.raises(DataError) as err:
        _parse("isic2020", tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'train.csv'}:{line}: target 0 contradicts benign_malignant 'Malignant'; "
        "expected the release's labels (one of the two was edited)"
    )


def test_isic_image_saved_as_upper_case_jpg_is_named_with_the_rename(tmp_path):
    """``ISIC_0000003.JPG`` on a case-sensitive file system: refused as "1 of the 38 listed
    images do not exist", with no word of the .JPG beside it."""
    fakes.make_isic2020(tmp_path, 10, 2)
    image = tmp_path / "jpeg" / "train" / "ISIC_0000003.jpg"
    image.rename(image.with_suffix(".JPG"))
    if image.is_file():
        pytest.skip("a case-insensitive file system: ISIC_0000003.jpg is found")
    with pytest.raises(DataError) as err:
        _parse("isic2020", tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'train.csv'}:4: {str(image)!r} not found, but 'ISIC_0000003.JPG' is "
        "there; expected the release's names, <image_name>.jpg: rename the images (e.g. "
        "'ISIC_0000003.JPG' -> 'ISIC_0000003.jpg')"
    )


def test_isic_rename_hint_for_a_name_holding_a_newline_is_one_line(tmp_path):
    """A quoted image_name cell holding a newline (and its .JPG on disk) printed the names
    as they are: a three-line error. A cell read holds no line break: refused at its line."""
    fakes.make_isic2020(tmp_path, 10, 2)
    name = "ISIC_0000003\nx"
    path = tmp_path / "train.csv"
    text = path.read_text()
    path.write_text(text.replace("ISIC_0000003,", f'"{name}",', 1))
    (tmp_path / "jpeg" / "train" / f"{name}.JPG").write_bytes(b"")
    if (tmp_path / "jpeg" / "train" / f"{name}.jpg").is_file():
        pytest.skip("a case-insensitive file system: the .jpg is found")
    with pytest.raises(DataError) as err:
        _parse("isic2020", tmp_path)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"{path}:4: column 'image_name' holds a line break")


def test_isic_site_download_without_train_csv_says_to_rename_its_list(tmp_path):
    """The ISIC site's download names Kaggle's train.csv ISIC_2020_Training_GroundTruth.csv:
    "train.csv not found" beside it sent the user after another download."""
    fakes.make_isic2020(tmp_path, 10, 2)
    (tmp_path / "train.csv").rename(tmp_path / "ISIC_2020_Training_GroundTruth.csv")
    with pytest.raises(DataError) as err:
        _parse("isic2020", tmp_path)
    assert str(err.value).startswith(
        f"{tmp_path / 'train.csv'} not found, but ISIC_2020_Training_GroundTruth.csv (the ISIC "
        "site's list) is there: copy or rename it to train.csv, and put the images of "
        "ISIC_2020_Training_JPEG (its train/ folder) in jpeg/train/; expected train.csv and "
    )
    assert "\n" not in str(err.value)


def test_isic_needs_the_duplicate_list(tmp_path):
    fakes.make_isic2020(tmp_path, 4, 1)
    (tmp_path / "ISIC_2020_Training_Duplicates.csv").unlink()
    with pytest.raises(DataError, match=r"ISIC_2020_Training_Duplicates\.csv not found"):
        _parse("isic2020", tmp_path)


@pytest.mark.parametrize("key", ["010", "10"], ids=["zero-padded", "repeated"])
def test_cholect50_frame_listed_twice_is_refused_naming_it(tmp_path, key):
    """``"10"`` beside ``"010"`` (or one key written twice, which json.loads collapses):
    the last entry silently won, a hand-merged file's frame label replaced."""
    fakes.make_cholect50(tmp_path, (1,), 25)
    path = tmp_path / "labels" / "VID01.json"
    text = path.read_text()
    path.write_text(
        text.replace(
            '"10": [',
            f'"10": [[-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1]], "{key}": [',
            1,
        )
    )
    with pytest.raises(DataError) as err:
        _parse("cholect50_instrument", tmp_path)
    assert str(err.value) == (
        f"{path}: frame 10 listed twice (keys '10' and {key!r}); expected one entry per frame"
        if key == "010"
        else f"{path}: key '10' written twice in one JSON object; expected each key once (a "
        "hand-merged file? the last would win without a word)"
    )


def test_cholect50_any_key_written_twice_is_refused_naming_it(tmp_path):
    """Two "annotations" blocks (a hand-merged file): json.loads kept the last, and the
    first block's frames were gone without a word."""
    fakes.make_cholect50(tmp_path, (1,), 25)
    path = tmp_path / "labels" / "VID01.json"
    text = path.read_text().strip()
    path.write_text(text[:-1] + ', "annotations": {"20": []}}')
    with pytest.raises(DataError) as err:
        _parse("cholect50_instrument", tmp_path)
    assert str(err.value) == (
        f"{path}: key 'annotations' written twice in one JSON object; expected each key once "
        "(a hand-merged file? the last would win without a word)"
    )


@pytest.mark.parametrize("key", ["\u00b2", "\u0661"])
def test_cholect50_frame_key_of_non_ascii_digits_is_one_line(tmp_path, key):
    """``"²"`` passed str.isdigit, then int() raised a ValueError traceback; ``"١"`` (an
    Arabic-Indic 1) was read as frame 1."""
    from medft_jax.data.builders.cholect50 import frame_labels

    path = tmp_path / "VID01.json"
    path.write_text(json.dumps({"annotations": {key: []}}))
    with pytest.raises(DataError) as err:
        frame_labels(path)
    assert str(err.value) == (
        f"{path}: frame {key!r}: expected a frame number and a list of vectors"
    )


def test_cholect50_refuses_a_copy_without_every_official_video(tmp_path):
    # A missing video leaves its split smaller: a test split so reduced is not the
    # paper's test set, and nothing downstream could tell.
    fakes.make_cholect50(tmp_path, (1,), 3)
    for video in ("VID111", "VID92", "VID08"):
        (tmp_path / "labels" / f"{video}.json").unlink()
        shutil.rmtree(tmp_path / "videos" / video)
    with pytest.raises(
        DataError,
        match=r"^\S*labels: 47 of CholecT50's 50 official videos; missing test: VID111; "
        r"val: VID08; train: VID92\. The official splits need every video",
    ):
        _parse("cholect50_instrument", tmp_path)
    # A copy of one video alone names all 49 others.
    fakes.make_cholect50(tmp_path / "b", (1,), 3, complete=False)
    with pytest.raises(DataError, match=r"1 of CholecT50's 50 official videos; missing test: VID"):
        _parse("cholect50_instrument", tmp_path / "b")


def test_cholect50_bad_instrument_and_unknown_video(tmp_path):
    fakes.make_cholect50(tmp_path, (1,), 3)
    path = tmp_path / "labels" / "VID01.json"
    path.write_text(path.read_text().replace("[0, 0, 0,", "[0, 9, 0,", 1))
    with pytest.raises(
        DataError, match=r"VID01\.json: frame 0: instrument 9 outside the class list"
    ):
        _parse("cholect50_instrument", tmp_path)
    fakes.make_cholect50(tmp_path / "b", (3,), 3)
    with pytest.raises(DataError, match="VID03 is not one of CholecT50's 50 videos"):
        _parse("cholect50_instrument", tmp_path / "b")
    # A label file with a BOM (saved by a Windows editor) is read like one without.
    from medft_jax.data.builders.cholect50 import frame_labels

    plain = tmp_path / "b" / "labels" / "VID03.json"
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    assert frame_labels(bom) == frame_labels(plain) and frame_labels(plain)


@pytest.mark.parametrize("name", ["VID+1", "VID1_0", "VID\u0661"])
def test_cholect50_label_file_name_must_be_vid_and_ascii_digits(tmp_path, name):
    """int() read 'VID+1' and 'VID١' (Arabic-Indic one) as video 1: an odd copy's name."""
    fakes.make_cholect50(tmp_path, (1,), 3)
    labels = tmp_path / "labels"
    (labels / f"{name}.json").write_text((labels / "VID01.json").read_text())
    with pytest.raises(DataError, match=r"\.json: expected a name like VID01\.json$"):
        _parse("cholect50_instrument", tmp_path)


def test_cholect50_two_label_files_of_one_video_are_refused(tmp_path):
    """VID1.json beside VID01.json: one video's frames listed twice (two examples each)."""
    fakes.make_cholect50(tmp_path, (1,), 3)
    labels = tmp_path / "labels"
    (labels / "VID1.json").write_text((labels / "VID01.json").read_text())
    with pytest.raises(DataError, match=r"VID1\.json and .*VID01\.json name one video \(VID01\)"):
        _parse("cholect50_instrument", tmp_path)


def test_cholect50_video_without_labels_and_annotations_not_an_object(tmp_path):
    # A video whose label file is missing would leave its split (here the official
    # test set: VID06 and VID10 are test videos) smaller without a word.
    fakes.make_cholect50(tmp_path, (1, 8, 6, 10), 21)
    assert len(_parse("cholect50_instrument", tmp_path)["test"]) == 2 * 3 + 8
    (tmp_path / "labels" / "VID10.json").unlink()
    with pytest.raises(DataError, match=r"VID10: frames without labels/VID10\.json"):
        _parse("cholect50_instrument", tmp_path)
    fakes.make_cholect50(tmp_path / "b", (1,), 3)
    (tmp_path / "b" / "labels" / "VID01.json").write_text('{"annotations": []}')
    with pytest.raises(DataError, match=r"VID01\.json: 'annotations' is a JSON list, expected"):
        _parse("cholect50_instrument", tmp_path / "b")


# TFDS end to end

tf_required = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("h5py") is None,
    reason="preparing TFDS builders needs TensorFlow (pip install medft-jax[prepare])",
)


@pytest.fixture(scope="module")
def prepared(layouts, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    datasets = {}
    for name in BUILDERS:
        root = layouts[DIRS[name]][0]
        datasets[name] = prepare(name, manual_dir=root, data_dir=out, progress=False, **SIZES)
    return out, datasets


@tf_required
@pytest.mark.xdist_group("tfds_prepared")  # one worker prepares the eight builders, not each
@pytest.mark.parametrize("name", list(BUILDERS))
def test_prepared_task_matches_its_layout(layouts, prepared, name):
    root = layouts[DIRS[name]][0]
    ds = prepared[1][name]
    parsed = _parse(name, root)
    task = builder_class(name).TASK
    assert ds.class_names == task.class_names and ds.multilabel == task.multilabel
    assert ds.eval_grouping == task.eval_grouping and ds.image_shape == (32, 32, 3)
    reader = ImageReader(36, 32, decode=task.decode)
    for split, records in parsed.items():
        arrays = ds.splits[split]
        by_id = {r.id: r for r in records}
        assert sorted(arrays.ids.tolist()) == sorted(by_id)
        for k, id_ in enumerate(arrays.ids):
            r = by_id[str(id_)]
            expected = np.asarray(r.label, np.float32) if task.multilabel else r.label
            assert np.array_equal(arrays.labels[k], expected)
            assert arrays.patients[k] == r.patient and arrays.groups[k] == r.group
        k = len(arrays) - 1
        assert np.array_equal(arrays.images[k], reader.read(by_id[str(arrays.ids[k])].path))
    assert not any(ds.metadata["skipped_bad_images"].values())


def _cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_info(version: Path, edit) -> None:
    info = json.loads((version / "dataset_info.json").read_text())
    edit(info)
    (version / "dataset_info.json").write_text(json.dumps(info))


PREPARED_DAMAGE = {  # what TFDS's or array_record's traceback said
    "val file deleted": (
        lambda v: (v / "medft_bach-val.array_record-00000-of-00001").unlink(),
        "its val split: RuntimeError: open() failed: No such file or directory",
    ),
    "train file cut short": (
        lambda v: _cut_short(v / "medft_bach-train.array_record-00000-of-00001"),
        "its train split: RuntimeError: Corrupted Riegeli/records file",
    ),
    "another version's info": (
        lambda v: _edit_info(v, lambda i: i.update(version="2.0.0")),
        "it: AssertionError: The constructed DatasetInfo instance and the restored proto "
        "version do not match",
    ),
    "a split dropped from the info": (
        lambda v: _edit_info(
            v, lambda i: i.update(splits=[x for x in i["splits"] if x["name"] != "val"])
        ),
        "its val split: ValueError: Unknown split 'val'",
    ),
}


@tf_required
@pytest.mark.xdist_group("tfds_prepared")
def test_damaged_prepared_data_is_one_line_saying_to_prepare_again(prepared, tmp_path):
    """A prepared split file deleted or cut short, or its dataset_info.json edited, was a
    TFDS or array_record traceback at every load, and prepare, finding it prepared, did the
    same: one line naming the folder and what to do."""
    for damage, (harm, detail) in PREPARED_DAMAGE.items():
        out = tmp_path / damage.replace(" ", "_")
        shutil.copytree(prepared[0] / "medft_bach", out / "medft_bach")
        version = next((out / "medft_bach").glob("*/1.0.0"))
        harm(version)
        with pytest.raises(DataError) as err:
            load("bach", data_dir=out, progress=False, **SIZES)
        line = str(err.value)
        assert "\n" not in line and line.startswith(
            f"{version}: prepared data that cannot be read ({detail}"
        ), (damage, line)
        assert line.endswith(
            f"; delete that folder and prepare again: python -m experiments.prepare --dataset "
            f"bach --manual-dir <folder with bach> --data-dir {out} --resize-size 36 "
            "--image-size 32"
        ), line
        assert not (out / "medft_cache" / "bach" / version.parent.name).exists()


def test_memory_and_os_errors_reading_prepared_data_are_not_called_damage(tmp_path):
    """Out of memory, or a read the disk or permissions refused, is not the prepared data's
    fault: "delete that folder and prepare again" would send the user the wrong way."""
    import errno

    from medft_jax.data import tasks

    config = tasks._config_kwargs(36, 32, 0, 0.1, None)
    version = tmp_path / "medft_bach" / tasks._variant("bach", **config) / "1.0.0"
    version.mkdir(parents=True)
    for error in (MemoryError(), PermissionError(errno.EACCES, "denied", str(version))):
        with pytest.raises(type(error)), tasks._damaged_prepared("bach", tmp_path, config):
            raise error
    damaged = pytest.raises(DataError, match=r"prepared data that cannot be read \(its val ")
    with damaged, tasks._damaged_prepared("bach", tmp_path, config, "val"):
        raise RuntimeError("Corrupted Riegeli/records file")


@tf_required
@pytest.mark.slow
def test_a_builder_decodes_in_threads_what_one_thread_decodes(tmp_path, monkeypatch):
    """The paper tasks' builders read one image at a time, on one core (CheXpert's 224k
    images); they decode MEDFT_JAX_DECODE_THREADS at once, into the same examples."""
    import threading

    real, threads = ImageReader._work, set()

    def work(self, path):
        threads.add(threading.current_thread().name.split("_")[0])
        return real(self, path)

    monkeypatch.setattr(ImageReader, "_work", work)
    manual = tmp_path / "bach"
    fakes.make_bach(manual, 10)
    datasets, seen = {}, {}
    for n in ("1", "3"):
        monkeypatch.setenv("MEDFT_JAX_DECODE_THREADS", n)
        threads.clear()
        out = tmp_path / f"out{n}"
        datasets[n] = prepare("bach", manual_dir=manual, data_dir=out, progress=False, **SIZES)
        seen[n] = set(threads)
    assert seen == {"1": {"MainThread"}, "3": {"medft-decode"}}
    for split, arrays in datasets["1"].splits.items():
        other = datasets["3"].splits[split]
        assert arrays.ids.tolist() == other.ids.tolist() and len(arrays) > 0
        assert np.array_equal(arrays.images, other.images)
        assert np.array_equal(arrays.labels, other.labels)


@tf_required
@pytest.mark.xdist_group("tfds_prepared")
def test_mura_study_scores_are_image_means(prepared):
    ds = prepared[1]["mura_wrist"]
    test = ds.splits["test"]
    scores = np.linspace(0, 1, len(test))
    ids, study_scores, labels = ds.grouped_scores("test", scores)
    assert len(ids) == len(set(test.groups.tolist())) < len(test)
    for sid, score, label in zip(ids, study_scores, labels, strict=True):
        members = test.groups == sid
        assert np.isclose(score, scores[members].mean())
        assert label == (1 if sid.endswith("positive") else 0)


@tf_required
@pytest.mark.xdist_group("tfds_prepared")
@pytest.mark.slow
def test_reading_prepared_data_needs_no_tensorflow(prepared):
    out, _ = prepared
    script = textwrap.dedent(
        f"""
        import importlib.util, shutil, sys
        find_spec = importlib.util.find_spec
        def no_tf(name, package=None):
            return None if name.split(".")[0] == "tensorflow" else find_spec(name, package)
        importlib.util.find_spec = no_tf
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "tensorflow":
                    raise ModuleNotFoundError(name)
        sys.meta_path.insert(0, Block())
        shutil.rmtree({str(out / "medft_cache" / "bach")!r})
        from medft_jax.data import load
        ds = load("bach", data_dir={str(out)!r}, resize_size=36, crop_size=32, progress=False)
        assert "tensorflow" not in sys.modules
        print({{k: len(v) for k, v in ds.splits.items()}})
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "{'train': 32, 'val': 4, 'test': 4}" in result.stdout


def test_unprepared_task_says_which_command_to_run(tmp_path, caplog):
    with pytest.raises(
        DataError,
        match=r"bach \(r36_c32_s0\) is not prepared in .*; run: python -m experiments\.prepare "
        r"--dataset bach --manual-dir .* --resize-size 36 --image-size 32",
    ):
        load("bach", data_dir=tmp_path, progress=False, **SIZES)
    # That line alone: not TFDS's warnings of its custom config and missing variant first.
    assert not [r for r in caplog.records if r.name == "absl" and r.levelname == "WARNING"]
    # A --data-dir holding nothing (a typo the command created) is said to be empty: the
    # command offered would prepare into the typo.
    empty = tmp_path / "typo"
    empty.mkdir()
    note = " (an empty folder: is it the --data-dir the data was prepared into?); run: "
    with pytest.raises(DataError, match=re.escape(f"is not prepared in {empty}{note}")):
        load("bach", data_dir=empty, progress=False, **SIZES)
    (empty / "other").mkdir()  # other data prepared there: not that
    with pytest.raises(DataError, match=re.escape(f"is not prepared in {empty}; run: ")):
        load("bach", data_dir=empty, progress=False, **SIZES)


@tf_required
@pytest.mark.xdist_group("tfds_prepared")
def test_a_tasks_test_images_that_copy_training_images_are_said_at_every_load(tmp_path, capsys):
    """One BACH photo saved under every Benign name: the test and val Benign images are
    copies of training images. Said as the user's folders say it, at each load."""
    import shutil

    fakes.make_bach(tmp_path / "bach", 10)
    benign = tmp_path / "bach" / "ICIAR2018_BACH_Challenge" / "Photos" / "Benign"
    for p in sorted(benign.iterdir())[1:]:
        shutil.copy(benign / "b001.tif", p)
    out = tmp_path / "out"
    prepare("bach", manual_dir=tmp_path / "bach", data_dir=out, progress=False, **SIZES)
    capsys.readouterr()
    for _ in range(2):
        ds = load("bach", data_dir=out, progress=False, **SIZES)
        counts = {s: int((ds.splits[s].labels == 1).sum()) for s in ("val", "test")}
        notes = [x for x in capsys.readouterr().err.splitlines() if "pixel-identical" in x]
        assert len(notes) == 1 and notes[0].startswith(
            f"note: bach: images pixel-identical to a training image after preprocessing: "
            f"{counts['val']} in val, {counts['test']} in test (e.g. Photos/Benign/b0"
        ), notes
        assert counts["test"] >= 1


@tf_required
@pytest.mark.xdist_group("tfds_prepared")  # the worker that loads TensorFlow anyway
def test_corrupt_image_fails_cleanly_or_is_skipped_and_counted(tmp_path):
    fakes.make_bach(tmp_path / "bach", 10)
    bad = tmp_path / "bach" / "ICIAR2018_BACH_Challenge" / "Photos" / "Benign" / "b004.tif"
    bad.write_bytes(bad.read_bytes()[:100])
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"corrupt or unreadable image .*Benign/b004\.tif"):
        prepare("bach", manual_dir=tmp_path / "bach", data_dir=out, progress=False, **SIZES)
    with pytest.raises(DataError, match="is not prepared"):  # nothing half-prepared is served
        load("bach", data_dir=out, progress=False, **SIZES)
    ds = prepare(
        "bach",
        manual_dir=tmp_path / "bach",
        data_dir=out,
        skip_bad_images=True,
        progress=False,
        **SIZES,
    )
    skipped = ds.metadata["skipped_bad_images"]
    assert [i for v in skipped.values() for i in v] == ["Photos/Benign/b004.tif"]
    assert sum(len(s) for s in ds.splits.values()) == 39
    # Every Benign image corrupt: skipping them would train a model that never predicts it.
    for p in bad.parent.iterdir():
        p.write_bytes(b"not a tif")
    with pytest.raises(
        DataError, match=r"class 'Benign' has no training images left after skipping \d+ bad"
    ):
        prepare("bach", manual_dir=tmp_path / "bach", data_dir=tmp_path / "out2",
                skip_bad_images=True, progress=False, **SIZES)  # fmt: skip
    with pytest.raises(DataError, match="is not prepared"):
        load("bach", data_dir=tmp_path / "out2", progress=False, **SIZES)


# Preparing again: what the manual dir's signature sees, and what a failed prepare keeps


def test_inner_folder_given_as_dot_link_or_renamed_reads_that_folder(tmp_path, monkeypatch):
    """The folder holding the CSVs, however it is reached, is where the images are read:
    not its parent (nothing there: "N of N listed images do not exist"), and not a
    sibling copy named as the release beside a renamed folder."""
    fakes.make_chexpert(tmp_path / "chx")
    fakes.make_mura(tmp_path / "mura", parts=("XR_HUMERUS",))
    outer = {
        "chexpert": _parse("chexpert", tmp_path / "chx"),
        "mura_humerus": _parse("mura_humerus", tmp_path / "mura"),
    }
    inner = {"chexpert": "CheXpert-v1.0-small", "mura_humerus": "MURA-v1.1"}
    for name, folder in inner.items():
        source = tmp_path / ("chx" if name == "chexpert" else "mura") / folder
        renamed = tmp_path / f"{name}_copy" / "renamed"
        shutil.copytree(source, renamed)
        # Another copy beside it, named as the release, with other pixels.
        sibling = renamed.parent / folder
        shutil.copytree(source, sibling)
        for p in sibling.rglob("*.*g"):
            p.write_bytes(b"not an image")
        link = tmp_path / f"{name}_link"
        link.symlink_to(source, target_is_directory=True)
        monkeypatch.chdir(source)
        for given, root in ((Path("."), source), (link, link), (renamed, renamed)):
            splits = _parse(name, given)
            ids = {s: [ex.id for ex in v] for s, v in splits.items()}
            assert ids == {s: [ex.id for ex in v] for s, v in outer[name].items()}, given
            real = Path(root).resolve()
            assert all(ex.path.is_relative_to(real) for v in splits.values() for ex in v)


def test_a_release_folder_linked_from_elsewhere_is_read_through_the_link(tmp_path):
    fakes.make_mura(tmp_path / "store", parts=("XR_HUMERUS",))
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "MURA-v1.1").symlink_to(tmp_path / "store" / "MURA-v1.1")
    splits = _parse("mura_humerus", tmp_path / "manual")
    assert sum(len(v) for v in splits.values()) == 33


def test_manual_signature_is_the_same_for_outer_and_inner_folder(tmp_path):
    from medft_jax.data.tasks import manual_source

    fakes.make_mura(tmp_path / "mura", parts=("XR_HUMERUS",))
    outer = manual_source(_parse("mura_humerus", tmp_path / "mura"))
    inner = manual_source(_parse("mura_humerus", tmp_path / "mura" / "MURA-v1.1"))
    assert outer == inner


def test_manual_signature_sees_a_file_replaced_with_same_size_and_mtime(tmp_path):
    """``cp -p`` (or ``rsync -a``) of a fixed copy: same size, same mtime, other pixels."""
    import os
    import time

    from medft_jax.data.tasks import manual_source

    fakes.make_bach(tmp_path / "bach", 3)
    before = manual_source(_parse("bach", tmp_path / "bach"))
    path = tmp_path / "bach" / "ICIAR2018_BACH_Challenge" / "Photos" / "Normal" / "n001.tif"
    st = path.stat()
    time.sleep(0.05)  # past the filesystem's timestamp granularity
    replacement = tmp_path / "black.tif"
    fakes.image(0, (48, 36)).save(replacement)
    assert replacement.stat().st_size == st.st_size
    os.replace(replacement, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = manual_source(_parse("bach", tmp_path / "bach"))
    assert after != before


def _prepare_bach(manual: Path, out: Path, **kwargs):
    return prepare("bach", manual_dir=manual, data_dir=out, progress=False, **SIZES, **kwargs)


def _version_dir(out: Path, name: str = "bach") -> Path:
    return out / f"medft_{name}" / "r36_c32_s0" / "1.0.0"


@tf_required
@pytest.mark.xdist_group("tfds_prepared")
def test_a_replaced_image_of_same_size_and_mtime_is_prepared_again(tmp_path, capsys):
    import os
    import time

    fakes.make_bach(tmp_path / "bach", 10)
    out = tmp_path / "out"
    _prepare_bach(tmp_path / "bach", out)
    path = tmp_path / "bach" / "ICIAR2018_BACH_Challenge" / "Photos" / "Normal" / "n001.tif"
    st = path.stat()
    time.sleep(0.05)
    Image.fromarray(np.zeros((36, 48, 3), np.uint8)).save(tmp_path / "black.tif")
    assert (tmp_path / "black.tif").stat().st_size == st.st_size
    shutil.copyfile(tmp_path / "black.tif", path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    capsys.readouterr()
    ds = _prepare_bach(tmp_path / "bach", out)
    err = capsys.readouterr().err
    assert f"is stale: 1 file {cache_mod.CTIME_ONLY}; preparing again" in err
    split = next(s for s in ds.splits.values() if "Photos/Normal/n001.tif" in s.ids)
    k = list(split.ids).index("Photos/Normal/n001.tif")
    assert split.images[k].max() == 0


@tf_required
@pytest.mark.xdist_group("tfds_prepared")
def test_outer_then_inner_folder_does_not_prepare_again(tmp_path, capsys):
    import json

    fakes.make_mura(tmp_path / "mura", parts=("XR_HUMERUS",))
    out = tmp_path / "out"
    kw = {"data_dir": out, "progress": False, **SIZES}
    prepare("mura_humerus", manual_dir=tmp_path / "mura", **kw)
    record = _version_dir(out, "mura_humerus") / "medft_manual_source.json"
    written = record.read_text()
    capsys.readouterr()
    prepare("mura_humerus", manual_dir=tmp_path / "mura" / "MURA-v1.1", **kw)
    assert "stale" not in capsys.readouterr().err
    assert record.read_text() == written
    # A record of the form written before (names relative to --manual-dir, no ctime):
    # an unchanged copy keeps its data, and the record is rewritten in the new form.
    from medft_jax.data import cache

    splits = _parse("mura_humerus", tmp_path / "mura")
    paths = [ex.path for v in splits.values() for ex in v]
    old = json.loads(written)
    del old["signature"]
    old["files"] = cache.file_stats(tmp_path / "mura", paths)
    record.write_text(json.dumps(old))
    prepare("mura_humerus", manual_dir=tmp_path / "mura", **kw)
    assert "stale" not in capsys.readouterr().err
    assert json.loads(record.read_text()) == json.loads(written)


@tf_required
@pytest.mark.xdist_group("tfds_prepared")
def test_a_failed_prepare_keeps_the_good_prepared_data(tmp_path, capsys):
    """Prepared with --skip-bad-images, then without: refused for the bad image, and the
    data (TFDS folder and cache) prepared before is still there and served."""
    fakes.make_bach(tmp_path / "bach", 10)
    bad = tmp_path / "bach" / "ICIAR2018_BACH_Challenge" / "Photos" / "Benign" / "b004.tif"
    bad.write_bytes(b"not a tif")
    out = tmp_path / "out"
    _prepare_bach(tmp_path / "bach", out, skip_bad_images=True)
    before = load("bach", data_dir=out, progress=False, **SIZES)
    with pytest.raises(DataError, match=r"corrupt or unreadable image .*b004\.tif"):
        _prepare_bach(tmp_path / "bach", out)
    assert (_version_dir(out) / "dataset_info.json").is_file()
    after = load("bach", data_dir=out, progress=False, **SIZES)
    assert sum(len(s) for s in after.splits.values()) == 39
    assert np.array_equal(after.splits["test"].images, before.splits["test"].images)
    leftovers = [p.name for p in _version_dir(out).parent.iterdir()]
    assert sorted(leftovers) == [".1.0.0.prepare.lock", "1.0.0"]


@tf_required
@pytest.mark.xdist_group("tfds_prepared")
def test_killed_prepares_leftovers_are_removed_by_the_next(tmp_path):
    """TFDS's ``incomplete.*`` folder of a killed prepare, and a killed prepare's own
    temporary data dir beside the version folder, are removed under the lock."""
    import socket

    fakes.make_bach(tmp_path / "bach", 10)
    out = tmp_path / "out"
    parent = _version_dir(out).parent
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    incomplete = parent / "incomplete.ABC123_1.0.0"
    scratch = parent / f".1.0.0.tmp-{dead}@{socket.gethostname()}-0123abcd"
    other_version = parent / "incomplete.ABC123_2.0.0"  # not this version's: left alone
    for folder in (incomplete, scratch, other_version):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "part").write_bytes(b"x")
    _prepare_bach(tmp_path / "bach", out)
    assert sorted(p.name for p in parent.iterdir()) == sorted(
        [".1.0.0.prepare.lock", "1.0.0", other_version.name]
    )


@tf_required
@pytest.mark.xdist_group("tfds_prepared")
def test_a_prepare_that_finished_while_this_one_waited_is_reused(tmp_path, monkeypatch):
    """Two prepares of one task at once: the second made its builder before the first
    finished, then took the lock. It must read the data the first wrote, not crash on
    its stale builder (TFDS: "splits is empty")."""
    import contextlib

    from medft_jax.data import tasks

    fakes.make_bach(tmp_path / "bach", 10)
    out = tmp_path / "out"
    real_lock = tasks.locks.waiting_lock
    other_ran = []

    @contextlib.contextmanager
    def lock_after_the_other(path, waiting=None):
        if not other_ran:  # the other process, which held the lock first
            other_ran.append(True)
            tasks.prepare_task("bach", manual_dir=tmp_path / "bach", data_dir=out,
                               progress=False, **SIZES)  # fmt: skip
            tasks.cache.retire(tasks.cache_dir(out, "bach", "r36_c32_s0"))  # not built yet
        with real_lock(path, waiting):
            yield

    monkeypatch.setattr(tasks.locks, "waiting_lock", lock_after_the_other)
    target = tasks.prepare_task("bach", manual_dir=tmp_path / "bach", data_dir=out,
                                progress=False, **SIZES)  # fmt: skip
    assert other_ran and tasks.cache.is_complete(target)
    ds = load("bach", data_dir=out, progress=False, **SIZES)
    assert sum(len(s) for s in ds.splits.values()) == 40


@tf_required
@pytest.mark.xdist_group("tfds_prepared")
def test_data_of_a_changed_copy_is_kept_unserved_until_the_copy_is_put_back(tmp_path, capsys):
    """An image added to the copy fails the prepare: the old data is not served (it is
    not the copy's), but kept, and reused as it was once the image is gone again."""
    from medft_jax.data import tasks

    fakes.make_bach(tmp_path / "bach", 10)
    out = tmp_path / "out"
    first = _prepare_bach(tmp_path / "bach", out)
    added = tmp_path / "bach" / "ICIAR2018_BACH_Challenge" / "Photos" / "Normal" / "n011.tif"
    added.write_bytes(b"not a tif")
    with pytest.raises(DataError, match=r"corrupt or unreadable image .*n011\.tif"):
        _prepare_bach(tmp_path / "bach", out)
    with pytest.raises(DataError, match=r"no longer matches its manual dir .*; run: "):
        load("bach", data_dir=out, progress=False, **SIZES)
    # While another prepare holds the folder's lock (re-preparing it from another copy, as
    # a second prepare started beside the first does), that is what is said: the first
    # prepare, which had finished, was told its data's "preparing it again did not finish".
    (version_dir,) = [p.parent for p in out.rglob(tasks.STALE_MARK)]
    with tasks.locks.waiting_lock(tasks.prepare_lock(version_dir)), pytest.raises(DataError) as e:
        load("bach", data_dir=out, progress=False, **SIZES)
    assert str(e.value) == (
        f"bach (r36_c32_s0) in {out}: another prepare is preparing {version_dir} again now, "
        "from a copy of the data that differs from the one it was made from; run this again "
        "when it has finished"
    )
    added.unlink()
    capsys.readouterr()
    again = _prepare_bach(tmp_path / "bach", out)
    assert "stale" not in capsys.readouterr().err
    assert again.metadata["fingerprint"] == first.metadata["fingerprint"]


def test_mura_listings_written_by_pandas_or_a_spreadsheet_read_as_the_releases(tmp_path):
    """Paths in quotes (and pandas' index column) made every study "not in
    train_labeled_studies.csv", though it was there."""
    fakes.make_mura(tmp_path, ("XR_WRIST",))
    want = _parse("mura_wrist", tmp_path)
    folder = tmp_path / "MURA-v1.1"
    for name in ("train_labeled_studies.csv", "valid_labeled_studies.csv"):
        path = folder / name
        rows = [line.rsplit(",", 1) for line in path.read_text().splitlines()]
        quoted = [f'{i},"{study}",{label}\n' for i, (study, label) in enumerate(rows)]
        path.write_text("".join(quoted))
    for name in ("train_image_paths.csv", "valid_image_paths.csv"):
        path = folder / name
        path.write_text("".join(f'"{line}"\n' for line in path.read_text().splitlines()))
    assert _parse("mura_wrist", tmp_path) == want


def test_a_mat_declaring_a_huge_image_is_refused_before_it_is_read(tmp_path):
    """A 5 KB .mat whose cjdata/image declares 60000x60000 (chunked, never written) asked
    for 6.7 GiB: a MemoryError traceback, which --skip-bad-images did not skip."""
    import h5py

    path = tmp_path / "bomb.mat"
    fakes.write_mat(path, np.zeros((8, 8), np.int16), 1, "100001")
    with h5py.File(path, "a") as f:
        del f["cjdata"]["image"]
        f["cjdata"].create_dataset(
            "image", shape=(60000, 60000), dtype=np.int16, chunks=(256, 256), compression="gzip"
        )
    assert path.stat().st_size < 100_000
    with pytest.raises(DataError) as e:
        decode_mat(path)
    assert str(e.value).startswith(
        f"{path}: image size 60000x60000 (3,600,000,000 pixels) exceeds the limit of "
    )


def test_chexpert_patient_folder_without_a_csv_row_is_refused_naming_it(tmp_path):
    """valid.csv that lost a patient's rows (its folder still in valid/) shrank the
    official test set without a word; so did train.csv for training."""
    fakes.make_chexpert(tmp_path, 10, 4)
    base = tmp_path / "CheXpert-v1.0-small"
    (base / "valid" / "README.txt").write_text("")  # not a patient folder: ignored
    assert len(_parse("chexpert", tmp_path)["test"]) == 4
    for split, patient in (("valid", "patient64543"), ("train", "patient00007")):
        path = base / f"{split}.csv"
        text = path.read_text()
        path.write_text("".join(ln for ln in text.splitlines(True) if patient not in ln))
        with pytest.raises(DataError) as err:
            _parse("chexpert", tmp_path)
        assert str(err.value) == (
            f"{base / split}: patient folder {patient!r} has no row in {split}.csv (1 such "
            f"folder(s)); expected {split}.csv to list every patient folder (a lost row? a "
            "partial copy of the CSV?)"
        )
        path.write_text(text)


def _drop_lines(path: Path, holding: str) -> None:
    """Removes ``path``'s lines that hold ``holding`` (a listing that lost them)."""
    path.write_text("".join(ln for ln in path.read_text().splitlines(True) if holding not in ln))


def test_mura_image_of_a_listed_study_missing_from_the_listing_is_refused(tmp_path):
    """A lost line of valid_image_paths.csv dropped an image of a test study: the study's
    score (the mean over its images) changed without a word."""
    fakes.make_mura(tmp_path, ("XR_SHOULDER",), 3, 3)
    base = tmp_path / "MURA-v1.1"
    gone = "MURA-v1.1/valid/XR_SHOULDER/patient11001/study1_negative/image2.png"
    assert (tmp_path / gone).is_file()
    (tmp_path / gone).with_name("._image9.png").write_bytes(b"")  # macOS: ignored
    _parse("mura_shoulder", tmp_path)
    _drop_lines(base / "valid_image_paths.csv", gone)
    with pytest.raises(DataError) as err:
        _parse("mura_shoulder", tmp_path)
    assert str(err.value) == (
        f"{(tmp_path / gone).parent}: image 'image2.png' is not in valid_image_paths.csv (1 "
        "such image(s) in the listed studies); expected the listing to name every image of "
        "its studies (a lost line? a partial copy of the listing?)"
    )


def test_mura_study_folder_in_neither_listing_is_refused(tmp_path):
    """A study whose lines both listings lost (cut short alike, a hand-edited pair) left
    the official test set without a word; a file or a folder of another name beside the
    studies is not one."""
    fakes.make_mura(tmp_path, ("XR_SHOULDER",), 3, 3)
    base = tmp_path / "MURA-v1.1"
    study = "MURA-v1.1/valid/XR_SHOULDER/patient11001/study1_negative"
    (tmp_path / study).with_name("notes").mkdir()
    (tmp_path / study).with_name("study9.txt").write_text("")
    before = len(_parse("mura_shoulder", tmp_path)["test"])
    for name in ("valid_image_paths.csv", "valid_labeled_studies.csv"):
        _drop_lines(base / name, study)
    with pytest.raises(DataError) as err:
        _parse("mura_shoulder", tmp_path)
    assert str(err.value) == (
        f"{(tmp_path / study).parent}: study folder 'study1_negative' is in neither "
        "valid_labeled_studies.csv nor valid_image_paths.csv (1 such folder(s)); expected "
        "the listings to name every study (lost lines? partial copies of the listings?)"
    )
    shutil.rmtree(tmp_path / study)
    assert len(_parse("mura_shoulder", tmp_path)["test"]) < before


def test_cholect50_subsampled_frame_without_an_annotation_is_refused(tmp_path):
    """labels/VID06.json without key "10" (000010.png on disk) dropped a frame of the
    official test set without a word; an unlabelled frame between the subsampled ones
    is not read anyway."""
    fakes.make_cholect50(tmp_path, (1, 2, 8, 6), 25)
    path = tmp_path / "labels" / "VID06.json"
    data = json.loads(path.read_text())
    del data["annotations"]["11"]  # not subsampled: fine
    path.write_text(json.dumps(data))
    assert len(_parse("cholect50_instrument", tmp_path)["test"]) == 12
    del data["annotations"]["10"]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as err:
        _parse("cholect50_instrument", tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'videos' / 'VID06'}: frame '000010.png' has no annotation in VID06.json "
        "(1 such frame(s) of every 10th); expected a key for each subsampled frame (a lost "
        "key? a partial copy of the labels?)"
    )
