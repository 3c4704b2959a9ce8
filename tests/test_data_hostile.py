"""Hostile data sources: bad labels, malformed CSVs, symlinks out of the root, stale caches.

Every case writes real files (npz, PNGs, CSVs, links, the fake paper layouts)
and checks the one-line error, or that the cache is rebuilt from what is on
disk now, or that the content fingerprint follows the bytes and nothing else.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import data_fakes as fakes
import numpy as np
import pytest
from conftest import SHARED_DATA
from data_fakes import image
from PIL import Image

from medft_jax.data import DataError, load, prepare
from medft_jax.data import cache as cache_mod
from medft_jax.data.builders import builder_class
from medft_jax.data.builders.base import MedicalConfig
from medft_jax.data.table import read_csv

SIZES = {"resize_size": 36, "crop_size": 32}
CONFIG = MedicalConfig.make(**SIZES)
tf_required = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None,
    reason="preparing TFDS builders needs TensorFlow (pip install medft-jax[prepare])",
)
needs_h5py = pytest.mark.skipif(
    importlib.util.find_spec("h5py") is None, reason="MATLAB v7.3 files need h5py"
)


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def _no_cache_written(out: Path) -> None:
    assert not list(out.rglob("meta.json")), "a cache was written before the check"


# MedMNIST-style .npz labels


def _npz(path: Path, labels: dict[str, np.ndarray], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, lab in labels.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (len(lab), 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = lab
    np.savez(path, **arrays)


def _ok_labels(dtype=np.uint8) -> dict[str, np.ndarray]:
    return {
        s: (np.arange(n) % 2).astype(dtype)[:, None]
        for s, n in (("train", 8), ("val", 4), ("test", 4))
    }


@pytest.mark.parametrize(
    ("train", "message"),
    [
        (
            np.array([0, 1, 0.9, 1, 0, 1], np.float32),
            r"train_labels holds 0\.9\d*, not a whole number",
        ),
        (np.array([0, 1, np.nan, 1, 0, 1]), r"train_labels holds nan, not a whole number"),
        (np.array([0, 1, np.inf, 1, 0, 1]), r"train_labels holds inf, not a whole number"),
        (np.array(["0", "1", "0", "1", "0", "1"]), r"train_labels has dtype <U1; expected integer"),
        (np.zeros(6, np.uint8), r"train_labels has no example of class 1 \('normal, benign'\)"),
    ],
    ids=["float-0.9", "nan", "inf", "string", "one-class"],
)
def test_npz_bad_labels_refused_before_caching(tmp_path, train, message):
    labels = {**_ok_labels(), "train": train}
    _npz(tmp_path / "breastmnist.npz", labels)
    out = tmp_path / "out"
    for sizes in ({}, SIZES):
        with pytest.raises(DataError, match=r"breastmnist\.npz: " + message) as err:
            load("medmnist/breastmnist", data_dir=tmp_path, progress=False, **sizes)
        _one_line(err)
    _no_cache_written(out)
    _no_cache_written(tmp_path)


def test_npz_class_missing_from_train_only(tmp_path):
    labels = _ok_labels()
    labels["train"] = np.ones(8, np.uint8)  # class 0 only in val and test
    _npz(tmp_path / "breastmnist.npz", labels)
    with pytest.raises(DataError, match=r"train_labels has no example of class 0 \('malignant'\)"):
        load("medmnist/breastmnist", data_dir=tmp_path, progress=False, **SIZES)
    _no_cache_written(tmp_path)


def test_another_flags_data_under_this_flags_name_is_refused(tmp_path):
    """PneumoniaMNIST (4,708 / 524 / 624, two classes) saved as ``breastmnist.npz`` was
    trained as BreastMNIST with only the "not official" note."""
    sizes = (("train", 4708), ("val", 524), ("test", 624))
    _npz(tmp_path / "breastmnist.npz", {s: (np.arange(n) % 2).astype(np.uint8) for s, n in sizes})
    for kw in ({}, SIZES):
        with pytest.raises(
            DataError,
            match=r"breastmnist\.npz: its splits hold 4708, 524, 624 images, pneumoniamnist's "
            r"published sizes, not breastmnist's \(546, 78, 156\)",
        ):
            load("medmnist/breastmnist", data_dir=tmp_path, progress=False, **kw)
    _no_cache_written(tmp_path)


def test_npz_with_a_corrupt_deflate_stream_is_one_line(tmp_path):
    """A flipped bit inside a compressed member was zlib's traceback (a bad CRC was one
    line): native and resized reads alike."""
    import zipfile

    arrays = {}
    for split, n in (("train", 64), ("val", 32), ("test", 32)):
        arrays[f"{split}_images"] = np.tile(np.arange(28, dtype=np.uint8), (n, 28, 1))
        arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8)[:, None]
    path = tmp_path / "breastmnist.npz"
    np.savez_compressed(path, **arrays)
    with zipfile.ZipFile(path) as z:
        member = z.getinfo("val_images.npy")
    data = bytearray(path.read_bytes())
    start = member.header_offset + 30 + len(member.filename) + len(member.extra)
    for i in range(start + 40, start + 60):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    for kw in ({}, SIZES):
        with pytest.raises(DataError) as err:
            load("medmnist/breastmnist", data_dir=tmp_path, progress=False, **kw)
        assert _one_line(err).startswith(f"{path}: cannot read array 'val_images' (")
    _no_cache_written(tmp_path)


def test_organ_flags_sizes_are_medmnist_3s():
    """The Organ{A,C,S} sizes were MedMNIST v2's while the files (MD5s, URL) are v3's: OrganS
    data saved as organcmnist.npz loaded as OrganCMNIST. medmnist 3.0.2's INFO n_samples:"""
    from medft_jax.data import medmnist as mm

    published = {
        "organamnist": (34561, 6491, 17778),
        "organcmnist": (12975, 2392, 8216),
        "organsmnist": (13932, 2452, 8827),
    }
    assert {f: mm.N_SAMPLES[f] for f in published} == published
    arrays = {s: (None, np.zeros(n)) for s, n in zip(("train", "val", "test"), published[
        "organsmnist"], strict=True)}  # fmt: skip
    with pytest.raises(DataError, match=r"organsmnist's published sizes, not organcmnist's"):
        mm._refuse_other_flags_sizes(Path("organcmnist.npz"), "organcmnist", {}, arrays)


def test_npz_whole_float_labels_are_cast(tmp_path):
    _npz(tmp_path / "breastmnist.npz", _ok_labels(np.float64))
    ds = load("medmnist/breastmnist", data_dir=tmp_path)
    assert ds.splits["train"].labels.dtype == np.int32
    assert ds.splits["train"].labels.tolist() == [0, 1] * 4


def test_npz_multilabel_non_binary_is_named(tmp_path):
    rng = np.random.default_rng(0)
    labels = {s: (rng.random((4, 14)) < 0.5).astype(np.float32) for s in ("train", "val", "test")}
    labels["val"][1, 3] = 0.5
    _npz(tmp_path / "chestmnist.npz", labels)
    with pytest.raises(
        DataError, match=r"chestmnist\.npz: val_labels must hold only 0/1, found 0\.5"
    ):
        load("medmnist/chestmnist", data_dir=tmp_path)


def test_npz_multilabel_label_never_positive_in_train_is_named(tmp_path):
    labels = {s: np.ones((4, 14), np.float32) for s in ("train", "val", "test")}
    labels["train"][:, 5] = 0  # 'pneumonia' positive only in val and test
    _npz(tmp_path / "chestmnist.npz", labels)
    with pytest.raises(
        DataError, match=r"chestmnist\.npz: train_labels has no positive example of label 5 "
    ) as err:
        load("medmnist/chestmnist", data_dir=tmp_path)
    _one_line(err)


def test_npz_multilabel_label_positive_in_every_training_image_is_named(tmp_path):
    """Nothing to learn 'atelectasis' from: refused for folders and CSVs, trained here."""
    checker = (np.add.outer(np.arange(4), np.arange(14)) % 2).astype(np.float32)
    labels = {s: checker.copy() for s in ("train", "val", "test")}
    labels["train"] = np.tile(labels["train"], (2, 1))
    labels["train"][:, 0] = 1
    _npz(tmp_path / "chestmnist.npz", labels)
    with pytest.raises(DataError) as err:
        load("medmnist/chestmnist", data_dir=tmp_path, progress=False, **SIZES)
    assert _one_line(err) == (
        f"{tmp_path / 'chestmnist.npz'}: train_labels has label 0 ('atelectasis') positive in "
        "every training example; every label needs negative training examples"
    )
    _no_cache_written(tmp_path)


@pytest.mark.parametrize(
    ("name", "sizes", "message"),
    [
        # A 28 px file saved under the 64 px name would train at 28 px recorded as 64.
        ("breastmnist_64.npz", {}, r"train_images are 28×28, expected 64×64"),
        ("breastmnist.npz", {"val": 32}, r"val_images are 32×32, expected 28×28"),
        ("breastmnist.npz", {"test": 0}, r"test_images are 0×0, expected 28×28"),
    ],
    ids=["named-64", "mixed-splits", "empty-images"],
)
def test_npz_images_of_another_size_than_the_name_are_refused(tmp_path, name, sizes, message):
    labels = _ok_labels()
    _npz(tmp_path / name, labels)
    with np.load(tmp_path / name) as npz:
        arrays = dict(npz)
    for split, size in sizes.items():
        arrays[f"{split}_images"] = np.zeros((len(labels[split]), size, size), np.uint8)
    np.savez(tmp_path / name, **arrays)
    flag = "medmnist/breastmnist" + ("@64" if "_64" in name else "")
    for kw in ({}, SIZES):
        with pytest.raises(DataError, match=message) as err:
            load(flag, data_dir=tmp_path, progress=False, **kw)
        _one_line(err)
    _no_cache_written(tmp_path)


def test_npz_that_is_not_a_zip_is_one_line(tmp_path):
    (tmp_path / "breastmnist.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match=r"breastmnist\.npz: not a readable \.npz file") as err:
        load("medmnist/breastmnist", data_dir=tmp_path)
    _one_line(err)


def test_npz_that_is_not_a_zip_at_all_is_named_so(tmp_path):
    (tmp_path / "breastmnist.npz").write_text("train_images,train_labels\n")
    with pytest.raises(DataError, match=r"breastmnist\.npz: not a \.npz file \(no zip header\)"):
        load("medmnist/breastmnist", data_dir=tmp_path)


def test_another_flags_file_renamed_is_refused_and_a_copy_noted_once(tmp_path, monkeypatch, capsys):
    """A renamed official file (known by its MD5), or one with the other flag kind's
    channels, would train on another dataset under this one's name."""
    from medft_jax.data import medmnist as mm

    path = tmp_path / "breastmnist.npz"
    _npz(path, _ok_labels())
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    for kw in ({}, SIZES):
        load("medmnist/breastmnist", data_dir=tmp_path, progress=False, **kw)
    note = f"note: {path}: not MedMNIST's official breastmnist.npz (MD5 {md5}); runs read"
    assert capsys.readouterr().err.count(note) == 1  # said once a process, not at every load
    monkeypatch.setitem(mm._OFFICIAL, md5, ("pneumoniamnist", 64))  # as if it were that file
    renamed = tmp_path / "other" / "breastmnist.npz"
    renamed.parent.mkdir()
    renamed.write_bytes(path.read_bytes())
    for kw in ({}, SIZES):
        with pytest.raises(DataError) as err:
            load("medmnist/breastmnist", data_dir=renamed.parent, progress=False, **kw)
        assert _one_line(err) == (
            f"{renamed}: is MedMNIST's official pneumoniamnist_64.npz (by its MD5), not "
            "breastmnist.npz; rename it back, or put breastmnist.npz here"
        )
    _no_cache_written(renamed.parent)
    monkeypatch.undo()
    rgb = {f"{s}_images": np.zeros((len(v), 28, 28, 3), np.uint8) for s, v in _ok_labels().items()}
    np.savez(path, **rgb, **{f"{s}_labels": v for s, v in _ok_labels().items()})
    with pytest.raises(DataError) as err:
        load("medmnist/breastmnist", data_dir=tmp_path)
    assert _one_line(err) == (
        f"{path}: train_images are colour ((8, 28, 28, 3)), but this flag's official file is "
        "grayscale (1 channel); is it another flag's file?"
    )
    gray = tmp_path / "pathmnist.npz"
    _npz(gray, {s: np.arange(n) % 9 for s, n in (("train", 18), ("val", 9), ("test", 9))})
    with pytest.raises(DataError, match=r"train_images are grayscale \(\(18, 28, 28\)\), but "):
        load("medmnist/pathmnist", data_dir=tmp_path)


# folder labels


def _folder(root: Path, classes=("cat", "dog"), per_class: int = 10, seed: int = 0) -> None:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image(seed + 100 * c + i, (20, 18)).save(root / name / f"{i}.png")


def _load_folder(root: Path, out: Path, **kw):
    return load("folder", manual_dir=root, data_dir=out, progress=False, **SIZES, **kw)


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ({"test_fraction": 0.99}, "--test-fraction 0.99: the test split takes 20 of the 20 "
         "images, leaving 0 to train and validate on; expected a fraction that leaves both"),
        # The test carve's share said too: the default --val-fraction alone was blamed.
        ({"test_fraction": 0.9}, "--val-fraction 0.1: the val split takes 0 of the 2 images "
         "left after the test split (--test-fraction 0.9 took 18 of 20), leaving 2 to train "
         "on; expected fractions that leave images in train, val and test"),
        ({"val_fraction": 0.01}, "--val-fraction 0.01: the val split takes 0 of the 16 images "
         "left after the test split (--test-fraction 0.2 took 4 of 20), leaving 16 to train "
         "on; expected fractions that leave images in train, val and test"),
    ],
)  # fmt: skip
def test_fractions_that_empty_a_split_name_their_flag(tmp_path, fractions, message):
    """--test-fraction 0.99 said "nothing to carve a split from: the source split is empty"
    (of the val carve), naming neither the flag nor the folder."""
    root = tmp_path / "imgs"
    _folder(root, per_class=10)
    with pytest.raises(DataError) as err:
        _load_folder(root, tmp_path / "out", **fractions)
    assert _one_line(err) == f"{root}: {message}"
    _no_cache_written(tmp_path / "out")


def test_val_fraction_is_a_share_of_what_the_test_carve_leaves(tmp_path):
    """--val-fraction 0.5 --test-fraction 0.5 is a 25/25/50 split (val is carved from what
    test leaves, as --help says): it was refused as "plus must be below 1"."""
    root = tmp_path / "imgs"
    _folder(root, per_class=20)
    ds = _load_folder(root, tmp_path / "out", val_fraction=0.5, test_fraction=0.5)
    sizes = {split: ds.num_examples(split) for split in ("train", "val", "test")}
    assert sizes == {"train": 10, "val": 10, "test": 20}
    # The command line and a grid take them as the loader does.
    from experiments import run as run_cli
    from experiments.common import dataset_options
    from medft_jax.grid import Grid

    argv = ["--strategy", "ft", "--dataset", "folder", "--manual-dir", str(root)]
    args = run_cli.build_parser().parse_args(
        [*argv, "--val-fraction", "0.5", "--test-fraction", "0.5"]
    )
    assert dataset_options(args)["test_fraction"] == dataset_options(args)["val_fraction"] == 0.5
    options = {"manual_dir": str(root), "val_fraction": 0.6, "test_fraction": 0.5}
    axes = {"archs": ("resnet50",), "strategies": ("ft",), "lrs": (1e-3,), "seeds": (0,)}
    grid = Grid(name="g", datasets=("folder",), dataset_options={"folder": options}, **axes)
    assert grid.dataset_options["folder"]["val_fraction"] == 0.6


def test_the_source_fingerprint_is_of_the_images_before_the_resize(tmp_path):
    """Each arch reads the folder at its own resize, so the content fingerprints differ by
    design; the source fingerprint does not, and follows a file edited in place (same name,
    same split, other pixels), which the report then refuses to compare across archs."""
    from medft_jax.data.images import ImageReader

    root = tmp_path / "imgs"
    _folder(root)
    small = load("folder", manual_dir=root, data_dir=tmp_path / "a", progress=False, **SIZES)
    large = load(
        "folder",
        manual_dir=root,
        data_dir=tmp_path / "b",
        progress=False,
        resize_size=40,
        crop_size=32,
    )
    assert small.metadata["fingerprint"] != large.metadata["fingerprint"]
    assert small.split_fingerprint() == large.split_fingerprint()
    fp = small.metadata["source_fingerprint"]
    assert large.metadata["source_fingerprint"] == fp and len(fp) == 32
    # By hand: each decoded image's mode, size and bytes, in read order, before the resize.
    files = sorted(root.rglob("*.png"))[:2]
    for resize in (36, 64):
        reader = ImageReader(resize, 32)
        for path in files:
            reader.read(path)
        by_hand = hashlib.blake2b(digest_size=16)
        for path in files:
            with Image.open(path) as im:
                by_hand.update(f"{im.mode} {im.size}\0".encode() + im.tobytes())
        assert reader.source_fingerprint == by_hand.hexdigest()
    edited = sorted(root.rglob("*.png"))[0]
    fakes.image(999).save(edited)
    again = load("folder", manual_dir=root, data_dir=tmp_path / "a", progress=False, **SIZES)
    assert again.split_fingerprint() == small.split_fingerprint()
    assert again.metadata["source_fingerprint"] != fp


@pytest.mark.parametrize("splits", [("test_set", "training_set"), ("Test Images", "Train Images")])
def test_split_folders_under_unknown_names_are_not_taken_for_classes(tmp_path, splits):
    """``training_set/{a,b}`` and ``test_set/{a,b}`` (a common download layout) made a
    classifier of training against test images: with --no-patient-folders it trained."""
    root, out = tmp_path / "imgs", tmp_path / "out"
    for k, split in enumerate(splits):
        _folder(root / split, seed=1000 * k)
    with pytest.raises(DataError) as err:
        _load_folder(root, out, patient_folders=False)
    assert _one_line(err) == (
        f"{root}: class folders {splits[0]!r}, {splits[1]!r} look like split folders; rename "
        "them train/, val/ and test/ (so their subfolders are the classes), or point "
        "--manual-dir at one folder of class subfolders"
    )
    _no_cache_written(out)
    _folder(tmp_path / "tests", classes=("covid_test", "flu_test"))  # classes, not splits
    assert _load_folder(tmp_path / "tests", out).class_names == ("covid_test", "flu_test")


def test_a_data_dir_inside_the_image_folder_is_refused_unless_hidden(tmp_path):
    """The second load listed the first's cache as a class folder ("class folder
    .../prepared is empty"); a hidden folder is never listed."""
    root = tmp_path / "imgs"
    _folder(root)
    with pytest.raises(DataError) as err:
        _load_folder(root, root / "prepared")
    assert _one_line(err) == (
        f"--data-dir {root / 'prepared'} is inside --manual-dir {root}, whose listing would "
        f"read the prepared cache as images; put it elsewhere, or in a hidden folder "
        f"({root / '.medft'})"
    )
    assert not (root / "prepared").exists()
    for _ in range(2):  # built, then read back: the same two classes of 10
        ds = _load_folder(root, root / ".medft")
        assert ds.class_names == ("cat", "dog")
        assert sum(len(s.ids) for s in ds.splits.values()) == 20


def test_a_prepared_cache_changed_in_place_is_refused_and_a_copy_is_not(tmp_path):
    """Pixels changed in train_images.npy kept the data's fingerprint: a second seed trained
    on other data under the first's identity. A truncated file was a numpy traceback."""
    root, out = tmp_path / "imgs", tmp_path / "out"
    _folder(root)
    first = _load_folder(root, out)
    images = next(out.rglob("train_images.npy"))
    cache_dir = images.parent
    before = images.read_bytes()
    # A copy made without keeping times: hashed once, found the same, its times recorded.
    stamp = os.stat(images).st_mtime_ns + 10**9
    os.utime(images, ns=(stamp, stamp))
    again = _load_folder(root, out)
    assert again.metadata["fingerprint"] == first.metadata["fingerprint"]
    meta = json.loads((cache_dir / "meta.json").read_text())
    assert meta["file_stats"]["train_images.npy"] == [
        len(before),
        stamp,
        os.stat(images).st_ctime_ns,
    ]
    # The same size, other pixels (a repair, a restore from another copy), written in place
    # with the size, mtime and inode kept (cp -p, touch -r): only the ctime moved.
    changed = bytearray(before)
    changed[-50:] = bytes(255 - b for b in changed[-50:])
    inode = os.stat(images).st_ino
    images.write_bytes(bytes(changed))
    os.utime(images, ns=(stamp, stamp))
    assert (os.stat(images).st_ino, os.stat(images).st_mtime_ns) == (inode, stamp)
    with pytest.raises(DataError) as err:
        _load_folder(root, out)
    assert _one_line(err) == (
        f"{cache_dir}: the train split's files changed since the cache was written (their "
        f"contents), so the data's recorded fingerprint no longer holds; delete {cache_dir} "
        "to rebuild it"
    )
    images.write_bytes(before[:-1000])  # cut short
    with pytest.raises(DataError) as err:
        _load_folder(root, out)
    assert _one_line(err).startswith(f"{images}: damaged dataset cache file (")
    assert _one_line(err).endswith(f"; delete {cache_dir} to rebuild it")
    labels = cache_dir / "val_labels.npy"
    images.write_bytes(before)
    labels.write_bytes(labels.read_bytes()[:20])
    with pytest.raises(DataError, match=r"val_labels\.npy: damaged dataset cache file \("):
        _load_folder(root, out)


def test_a_read_only_copied_cache_is_hashed_once_not_on_every_load(tmp_path, monkeypatch):
    """A lab's shared cache, copied without keeping times and then made read-only: its times
    cannot go into its meta.json, so every load hashed every array again (minutes for
    CheXpert). The check is kept in the user's own record instead; a later edit still
    shows, as new times, and is refused."""
    root, out = tmp_path / "imgs", tmp_path / "out"
    monkeypatch.setenv("MEDFT_JAX_CACHE", str(tmp_path / "user"))
    _folder(root)
    first = _load_folder(root, out)
    images = next(out.rglob("train_images.npy"))
    cache_dir = images.parent
    stamp = os.stat(images).st_mtime_ns + 10**9
    os.utime(images, ns=(stamp, stamp))

    def read_only(*_args, **_kw):
        raise PermissionError(13, "Permission denied", str(cache_dir / "meta.json"))

    monkeypatch.setattr(cache_mod, "update_meta", read_only)
    hashed = []
    digest = cache_mod._digest_of
    monkeypatch.setattr(cache_mod, "_digest_of", lambda split: hashed.append(1) or digest(split))
    for _ in range(3):
        again = _load_folder(root, out)
        assert again.metadata["fingerprint"] == first.metadata["fingerprint"]
    assert len(hashed) == 1  # the train split, once
    [record] = (tmp_path / "user" / "checked_caches").glob("*.json")
    assert json.loads(record.read_text())["file_stats"]["train_images.npy"][1] == stamp
    changed = bytearray(images.read_bytes())
    changed[-50:] = bytes(255 - b for b in changed[-50:])
    images.write_bytes(bytes(changed))  # new times: not the checked ones
    with pytest.raises(DataError, match=r"the train split's files changed since the cache"):
        _load_folder(root, out)


def _patient_folders(root: Path, patients: int = 10, per_patient: int = 4) -> None:
    """``<class>/p<k>/<i>.png``; patient p0 has images under both classes."""
    for c, name in enumerate(("benign", "malignant")):
        for k in range(patients):
            (root / name / f"p{k}").mkdir(parents=True, exist_ok=True)
            for i in range(per_patient):
                image(1000 * c + 10 * k + i, (20, 18)).save(root / name / f"p{k}" / f"{i}.png")


def test_patient_subfolders_must_be_said_before_a_split_is_carved(tmp_path):
    """Split image by image, one patient's images land in train and test without a word."""
    root, out = tmp_path / "imgs", tmp_path / "out"
    _patient_folders(root)
    with pytest.raises(DataError) as err:
        _load_folder(root, out)
    assert _one_line(err) == (
        f"{root}: 80 image(s) sit in subfolders of their class folder (e.g. benign/p0/0.png) "
        "and val/test are carved from them: say whether a subfolder is one patient: "
        "--patient-folders keeps each subfolder's images in one split, --no-patient-folders "
        "splits image by image"
    )
    _no_cache_written(out)
    ds = _load_folder(root, out, patient_folders=True)
    where = {}  # patient -> the splits holding their images
    for split, arrays in ds.splits.items():
        for id_, patient in zip(arrays.ids.tolist(), arrays.patients.tolist(), strict=True):
            assert patient == id_.split("/")[1]  # benign/p3/0.png: p3
            where.setdefault(patient, set()).add(split)
    assert len(where) == 10 and all(len(s) == 1 for s in where.values())  # p0: both classes
    assert {len(a) for a in (ds.splits["val"], ds.splits["test"])} <= {4, 8, 12, 16, 20}
    each = _load_folder(root, out, patient_folders=False)  # as asked: image by image
    assert each.metadata["fingerprint"] != ds.metadata["fingerprint"]
    spread = {}
    for split, arrays in each.splits.items():
        for patient_id in arrays.ids.tolist():
            spread.setdefault(patient_id.split("/")[1], set()).add(split)
    assert any(len(s) > 1 for s in spread.values())  # what the refusal was about
    assert each.split_fingerprint() != ds.split_fingerprint()


def test_patient_folders_named_one_id_two_ways_are_refused(tmp_path):
    """``P1`` under one class and ``p1`` under another (or ``007`` and ``7``) were two
    patients: one patient's images carved into train and test both, as CSV ids were."""
    from medft_jax.data.folder import parse_folder

    root = tmp_path / "imgs"
    _patient_folders(root)
    (root / "malignant" / "p3").rename(root / "malignant" / "P3")
    with pytest.raises(DataError) as err:
        parse_folder(root, patient_folders=True)
    assert _one_line(err) == (
        f"{root}: patient folders 'p3' (benign/p3) and 'P3' (malignant/P3) differ only in "
        "case, spaces or Unicode form: as two patients, one patient's images would be split across "
        "train and test; name them alike"
    )
    assert parse_folder(root, patient_folders=False)[1]  # image by image: no patients


def test_images_loose_beside_patient_folders_are_refused_under_patient_folders(tmp_path):
    """A partly sorted export: p9's images moved up into their class folder became four
    patients of their own, and landed in train and val without a word."""
    root, out = tmp_path / "imgs", tmp_path / "out"
    _patient_folders(root)
    for f in sorted((root / "benign" / "p9").iterdir()):
        f.rename(root / "benign" / f"p9_{f.name}")
    (root / "benign" / "p9").rmdir()
    with pytest.raises(DataError) as err:
        _load_folder(root, out, patient_folders=True)
    assert _one_line(err) == (
        f"{root}: --patient-folders, and 4 training image(s) lie loose in their class "
        "folder, in no patient folder (e.g. benign/p9_0.png); each would be a patient of its "
        "own, and a patient's loose images could land in train and test: move them into "
        "their patient's folder, or use --no-patient-folders"
    )
    _no_cache_written(out)
    _load_folder(root, out, patient_folders=False)  # image by image, as asked
    # Given splits carve nothing: loose images there are a split's images, as before.
    given = tmp_path / "given"
    for n, split in enumerate(("train", "val", "test")):
        for c, name in enumerate(("benign", "malignant")):
            (given / split / name / f"{split}{c}").mkdir(parents=True)
            for i in range(2):
                image(100 * n + 10 * c + i, (20, 18)).save(
                    given / split / name / f"{split}{c}" / f"{i}.png"
                )
            image(100 * n + 10 * c + 5, (20, 18)).save(given / split / name / "loose.png")
    ds = _load_folder(given, tmp_path / "out2", patient_folders=True)
    assert "train/benign/loose.png" in ds.splits["train"].ids.tolist()


@pytest.mark.parametrize("said", [True, False])
def test_patient_folders_said_of_a_folder_without_subfolders_is_refused(tmp_path, said):
    """It would change nothing but the cache's name, as a fraction given for a given split."""
    root = tmp_path / "imgs"
    _folder(root)
    with pytest.raises(DataError) as err:
        _load_folder(root, tmp_path / "out", patient_folders=said)
    flag = "--patient-folders" if said else "--no-patient-folders"
    assert _one_line(err) == (
        f"{flag}: no image under {root} sits in a subfolder of its class folder, so there is "
        "no patient folder to say anything of; leave the flag out"
    )
    _no_cache_written(tmp_path / "out")


def test_the_split_fingerprint_is_of_the_split_not_the_pixels(tmp_path):
    """Two archs' resizes of one folder: other pixels, one split. Another val fraction or
    one relabelled image: another split."""
    root, out = tmp_path / "imgs", tmp_path / "out"
    _folder(root, per_class=12)
    small = _load_folder(root, out)
    large = load(
        "folder", manual_dir=root, data_dir=out, progress=False, resize_size=40, crop_size=36
    )
    assert small.metadata["fingerprint"] != large.metadata["fingerprint"]
    assert small.split_fingerprint() == large.split_fingerprint()
    assert len(small.split_fingerprint()) == 16
    assert (
        _load_folder(root, out, val_fraction=0.3).split_fingerprint() != small.split_fingerprint()
    )
    moved = root / "dog" / "0.png"
    moved.rename(root / "cat" / "moved.png")
    assert _load_folder(root, out).split_fingerprint() != small.split_fingerprint()


def test_given_splits_need_no_word_on_patients_but_are_checked_when_given(tmp_path):
    """Nothing carved: nested images of subfolders named apart load as they are. One
    subfolder name under two given splits is most likely one patient in both: unsaid, it
    passed without a word (now refused, asking); said to be patients, refused as the leak
    it is; said not to be, taken as given."""
    root, out = tmp_path / "imgs", tmp_path / "out"
    for split in ("train", "val", "test"):
        _patient_folders(root / split, patients=2, per_patient=2)
    with pytest.raises(DataError) as err:
        _load_folder(root, out)
    assert _one_line(err) == (
        f"{root}: class subfolder 'p0' is under train and val (e.g. train/benign/p0/0.png "
        "and val/benign/p0/0.png): if it is one patient, its images are in two splits; say "
        "whether a subfolder is one patient: --patient-folders refuses a patient in two "
        "splits, --no-patient-folders takes the splits as given"
    )
    _no_cache_written(out)
    ds = _load_folder(root, out, patient_folders=False)
    assert sorted(len(a) for a in ds.splits.values()) == [8, 8, 8]
    with pytest.raises(DataError) as err:
        _load_folder(root, out, patient_folders=True)
    assert "splits 'train' and 'val' share 2 patient group(s), e.g. 'p0'" in _one_line(err)
    for split in ("val", "test"):  # the same layout, each split's patients its own
        for folder in sorted((root / split).glob("*/p*")):
            folder.rename(folder.with_name(f"{split}_{folder.name}"))
    ds = _load_folder(root, tmp_path / "out2")
    assert sorted(len(a) for a in ds.splits.values()) == [8, 8, 8]


def test_one_scan_kept_in_two_formats_is_refused(tmp_path):
    """``x.png`` beside ``x.jpg`` (a conversion that kept the originals), or a DICOM file
    beside its preview: 8 of 20 such scans had a copy in train and one in val or test, and the
    pixel-identical check missed them (a JPEG re-encode changes the pixels)."""
    from medft_jax.data.folder import parse_folder

    root, out = tmp_path / "imgs", tmp_path / "out"
    _folder(root)
    for src in sorted((root / "dog").glob("[0-2].png")):
        Image.open(src).convert("RGB").save(src.with_suffix(".JPG"), quality=90)
    with pytest.raises(DataError) as err:
        _load_folder(root, out)
    assert _one_line(err) == (
        f"{root}: dog/0.JPG and dog/0.png differ only in their suffix (3 such pair(s)): one "
        "image saved twice is two examples, in two splits unless one patient holds both; keep "
        "one file of each pair (move the other out of --manual-dir)"
    )
    _no_cache_written(out)
    for jpg in (root / "dog").glob("*.JPG"):
        jpg.unlink()
    # x.png beside x.PNG: one image saved twice, not two patients' names spelled apart.
    (root / "dog" / "5.PNG").write_bytes((root / "dog" / "5.png").read_bytes())
    with pytest.raises(DataError, match=r": dog/5\.PNG and dog/5\.png differ only in their suffix"):
        _load_folder(root, out)
    (root / "dog" / "5.PNG").unlink()
    # café.png as macOS (NFD) and Linux (NFC) write it: they print alike, the suffix is one.
    for name in ("caf\u00e9.png", "cafe\u0301.png"):
        (root / "dog" / name).write_bytes((root / "dog" / "5.png").read_bytes())
    with pytest.raises(DataError, match=r": 'dog/cafe\\u0301\.png' and 'dog/caf\\xe9\.png' "
                       r"differ only in Unicode normalisation \(they print alike\)"):  # fmt: skip
        _load_folder(root, out)
    for name in ("caf\u00e9.png", "cafe\u0301.png"):
        (root / "dog" / name).unlink()
    # A PACS export's IM0001 beside its viewer's IM0001.jpg, in a given split.
    split = tmp_path / "split"
    for name in ("train", "val", "test"):
        _folder(split / name, per_class=3)
    marked = b"\0" * 128 + b"DICM" + b"\0" * 64
    (split / "test" / "cat" / "IM0001").write_bytes(marked)
    image(5, (20, 18)).save(split / "test" / "cat" / "IM0001.jpg")
    with pytest.raises(DataError, match=r"test/cat/IM0001 and test/cat/IM0001\.jpg differ"):
        parse_folder(split)
    # DICOM files named by UID differ in more than a suffix: no pair.
    (split / "test" / "cat" / "IM0001.jpg").unlink()
    (split / "test" / "cat" / "IM0001").unlink()
    for uid in ("1.2.840.5", "1.2.840.6"):
        (split / "test" / "cat" / uid).write_bytes(marked)
    _, splits = parse_folder(split)
    assert len(splits["test"]) == 8


def test_a_drives_system_folders_and_a_class_of_hidden_entries(tmp_path):
    """A dataset at a drive's root: ``$RECYCLE.BIN``'s deleted images were a third class.
    A class folder holding only ``.ipynb_checkpoints`` was called "empty"."""
    from medft_jax.data.folder import parse_folder

    root = tmp_path / "imgs"
    _folder(root)
    for name in ("$RECYCLE.BIN/S-1-5-21", "System Volume Information", "lost+found"):
        (root / name).mkdir(parents=True)
    image(9, (20, 18)).save(root / "$RECYCLE.BIN" / "S-1-5-21" / "$RABC12.png")
    classes, splits = parse_folder(root)
    assert classes == ["cat", "dog"] and sum(len(v) for v in splits.values()) == 20
    (root / "bird" / ".ipynb_checkpoints").mkdir(parents=True)
    image(8, (20, 18)).save(root / "bird" / ".ipynb_checkpoints" / "0-checkpoint.png")
    with pytest.raises(DataError) as err:
        parse_folder(root)
    assert _one_line(err).startswith(
        f"class folder {root / 'bird'} holds only entries that are not read "
        "(.ipynb_checkpoints); expected .jpg/"
    )
    (root / "bird" / "P1").mkdir()  # a patient folder left empty is read, and holds none
    with pytest.raises(DataError) as err:
        parse_folder(root)
    assert _one_line(err).startswith(
        f"class folder {root / 'bird'} holds no image in its subfolders (P1); expected .jpg/"
    )


def test_single_class_folder_fails_at_load(tmp_path):
    _folder(tmp_path / "imgs", classes=("cat",))
    with pytest.raises(DataError, match=r"imgs: only one class folder \('cat'\)") as err:
        _load_folder(tmp_path / "imgs", tmp_path / "out")
    _one_line(err)
    _no_cache_written(tmp_path / "out")
    # the same with a pre-split layout
    _folder(tmp_path / "split" / "train", classes=("cat",))
    with pytest.raises(DataError, match="only one class folder"):
        _load_folder(tmp_path / "split", tmp_path / "out")


def test_folder_class_missing_from_train(tmp_path):
    root = tmp_path / "imgs"
    _folder(root / "train")
    _folder(root / "val")
    for f in (root / "train" / "dog").iterdir():
        f.unlink()
    (root / "train" / "dog" / "notes.txt").write_text("no images here")
    for name in ("vol1.nii.gz", "vol2.NII.GZ", "vol1.npy"):
        (root / "train" / "dog" / name).write_bytes(b"\0")
    # A folder of MRI volumes was "empty": what it holds, and that it is no image, is said.
    with pytest.raises(
        DataError,
        match=r"class folder .*train/dog holds no image, only 4 file\(s\) not read as images "
        r"\(\.nii\.gz 2, \.npy 1, \.txt 1\); expected \.jpg/",
    ):
        _load_folder(root, tmp_path / "out")
    _no_cache_written(tmp_path / "out")
    for f in (root / "train" / "dog").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"class folder .*train/dog is empty; expected \.jpg/"):
        _load_folder(root, tmp_path / "out")


NFC, NFD = "pneumon\u00eda", "pneumoni\u0301a"  # one name as Linux and as macOS store it
TWINS = r"class names 'pneumon\\xeda' and 'pneumoni\\u0301a' differ only in Unicode normalisation"


def test_folder_class_names_written_two_ways_are_refused(tmp_path):
    """Two folders that look alike would be two classes (macro metrics over a fake one)."""
    _folder(tmp_path / "flat", classes=("normal", NFC, NFD))
    flat = r"flat: class names 'pneumoni\\u0301a' and 'pneumon\\xeda' differ only in Unicode"
    with pytest.raises(DataError, match=flat) as err:  # in sorted order
        _load_folder(tmp_path / "flat", tmp_path / "out")
    _one_line(err)
    _no_cache_written(tmp_path / "out")
    root = tmp_path / "split"  # the test folder made on another machine
    _folder(root / "train", classes=("normal", NFC))
    _folder(root / "test", classes=("normal", NFD), per_class=3)
    with pytest.raises(DataError, match=rf"split/test and train: {TWINS}"):
        _load_folder(root, tmp_path / "out")


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        (("benign", "Benign"), "'Benign' and 'benign' differ only in case (one name written "),
        (("STRASSE", "straße"), "'STRASSE' and 'stra\\xdfe' differ only in case (one name "),
        (
            ("pneumoni\u0301a", "Pneumon\u00eda"),
            "'Pneumon\\xeda' and 'pneumoni\\u0301a' differ only in case and Unicode "
            "normalisation (one name written several ",
        ),
        (("Tumour", "Tumour "), "'Tumour' and 'Tumour ' differ only in surrounding whitespace "),
        (("Tumour", "tumour "), "'Tumour' and 'tumour ' differ only in case and surrounding "),
        (  # two spaces typed inside: a third class, averaged into every macro metric
            ("Basal cell", "Basal  cell"),
            "'Basal  cell' and 'Basal cell' differ only in whitespace within (one name written ",
        ),
        (
            ("basal cell", "Basal\tcell "),
            "'Basal\\tcell ' and 'basal cell' differ only in case and whitespace within and "
            "surrounding whitespace (one name written several ",
        ),
        (  # a zero-width space pasted in: prints as nothing
            ("benign", "benign\u200b"),
            "'benign' and 'benign\\u200b' differ only in invisible characters (one name written ",
        ),
        (  # a full-width letter from an East Asian input method: NFKC folds it
            ("Tumour", "\uff34umour"),
            "'Tumour' and '\\uff34umour' differ only in Unicode normalisation (one name ",
        ),
    ],
)
def test_folder_class_names_differing_in_case_are_refused(tmp_path, classes, message):
    """``Benign/`` beside ``benign/``: one class typed two ways (and one folder on macOS)."""
    _folder(tmp_path / "flat", classes=("normal", *classes))
    with pytest.raises(DataError) as err:
        _load_folder(tmp_path / "flat", tmp_path / "out")
    assert str(err.value).startswith(f"{tmp_path / 'flat'}: class names {message}")
    assert str(err.value).endswith("ways); spell them alike")
    _no_cache_written(tmp_path / "out")


def test_csv_labels_differing_in_case_are_refused(tmp_path):
    root = _csv_dir(tmp_path / "d", ["benign", "malignant"] * 5 + ["Benign"])
    with pytest.raises(DataError) as err:
        _load_csv(root, tmp_path / "out")
    assert str(err.value) == (
        f"{root / 'labels.csv'}:12: class names 'benign' and 'Benign' differ only in case (one "
        "name written two ways); spell them alike"
    )


# csv labels


def _csv_dir(root: Path, labels: list[str], header: str = "path,label", extra=None) -> Path:
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, label in enumerate(labels):
        image(500 + i, (20, 18)).save(root / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{label}" + ("" if extra is None else f",{extra[i]}"))
    (root / "labels.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    return root


def _load_csv(root: Path, out: Path, **kw):
    return load(
        "csv", manual_dir=root, data_dir=out, csv_file="labels.csv", progress=False, **SIZES, **kw
    )


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["0", "1"] * 5 + ["0.9"], r"labels\.csv:12: label '0\.9' is a number but not an integer"),
        (["0", "1"] * 5 + ["nan"], r"labels\.csv:12: 'label' is 'nan', a missing value; expected"),
        (["a", "b"] * 5 + ["NA"], r"labels\.csv:12: 'label' is 'NA', a missing value; expected"),
        (["a", "b"] * 5 + ["#N/A"], r"labels\.csv:12: 'label' is '#N/A', a missing value"),
        (["0", "1"] * 5 + ["benign"], r"labels\.csv:12: column 'label' mixes class ids \('0'\)"),
        (["0", "1"] * 5 + ["1.0"], r"labels\.csv:12: labels '1' and '1\.0' are the same id"),
        (["0", "1"] * 5 + [" "], r"labels\.csv:12: empty 'label'; expected a class"),
        (["benign"] * 11, r"only one class \('benign'\); a classifier needs at least two"),
        (["normal", NFC] * 5 + [NFD], rf"labels\.csv:12: {TWINS}"),
    ],
    ids=[
        "float-0.9",
        "nan",
        "NA",
        "#N/A",
        "string-among-ids",
        "two-spellings",
        "empty",
        "one-class",
        "nfd",
    ],
)
def test_csv_bad_labels_refused_before_caching(tmp_path, labels, message):
    root = _csv_dir(tmp_path / "d", labels)
    with pytest.raises(DataError, match=message) as err:
        _load_csv(root, tmp_path / "out")
    _one_line(err)
    _no_cache_written(tmp_path / "out")


def test_csv_class_missing_from_train(tmp_path):
    labels = ["benign"] * 6 + ["malignant"] * 2
    splits = ["train"] * 6 + ["test", "val"]
    root = _csv_dir(tmp_path / "d", labels, "path,label,split", splits)
    with pytest.raises(
        DataError, match=r"class 'malignant' has no examples in the training split"
    ) as err:
        _load_csv(root, tmp_path / "out", split_column="split")
    _one_line(err)
    _no_cache_written(tmp_path / "out")


@pytest.mark.parametrize("cell", ["-1", "", "NA"])
def test_csv_multilabel_uncertain_or_blank_cells_say_to_map_them(tmp_path, cell):
    """CheXpert's -1 (uncertain) and blank (unmentioned) cells were told about
    --label-column, which has nothing to do with them."""
    root = _csv_dir(tmp_path / f"d{len(cell)}", ["1,0"] * 5 + [f"{cell},1"], "path,a,b")
    with pytest.raises(DataError) as err:
        _load_csv(root, tmp_path / "out", label_columns=["a", "b"])
    assert str(err.value).endswith(
        f"labels.csv:7 column 'a': {cell!r} is not 0 or 1; an uncertain or unmentioned label, "
        "and nothing is guessed: map such cells to 0 or 1 in the file, as the task's policy "
        "says (e.g. U-Ones, U-Zeros)"
    )


@pytest.mark.parametrize("cell", ["yes", "+1", "1e0", "0_0", "\uff11", "0.99999999999999999"])
def test_csv_multilabel_cell_that_is_not_0_or_1(tmp_path, cell):
    """float() took +1, 1e0, 0_0, a full-width 1 and 0.99999999999999999 (read as 1)."""
    root = _csv_dir(tmp_path / f"d{len(cell)}", ["1,0"] * 5 + [f"{cell},1"], "path,a,b")
    with pytest.raises(
        DataError,
        match=rf"labels\.csv:7 column 'a': {re.escape(repr(cell))} is not 0 or 1; label columns "
        r"hold 0 or 1, one column per label \(a column of label names is --label-column\)$",
    ):
        _load_csv(root, tmp_path / "out", label_columns=["a", "b"])


def test_csv_multilabel_cells_of_0_and_1_as_numbers_are_read():
    from medft_jax.data.table import _hot

    for cell, value in (("0", 0.0), ("1", 1.0), ("0.0", 0.0), ("1.00", 1.0), (" 1 ", 1.0)):
        assert _hot(cell, "labels.csv:2 column 'a'") == value


def test_csv_integer_ids_are_ordered_by_value(tmp_path):
    ids = (10, 2, 0)  # as strings "0" < "10" < "2"
    labels = [str(ids[i % 3]) for i in range(30)]
    ds = _load_csv(_csv_dir(tmp_path / "d", labels), tmp_path / "out")
    assert ds.class_names == ("0", "2", "10")
    for split in ds.splits.values():
        numbers = [int(i.split("/")[1].split(".")[0]) for i in split.ids]
        assert split.labels.tolist() == [{10: 2, 2: 1, 0: 0}[ids[n % 3]] for n in numbers]


# the paper builders' labels (fake official layouts)


def _parse(name: str, root: Path):
    return builder_class(name).TASK.parse_checked(root, CONFIG)


@needs_h5py
@pytest.mark.parametrize(
    ("value", "message"), [(1.5, r"cjdata/label 1\.5 is not a whole"), (np.nan, "cjdata/label nan")]
)
def test_t1w_fractional_or_nan_label_is_refused(tmp_path, value, message):
    fakes.make_t1w_mri(tmp_path, n_patients=6, per_patient=1)
    fakes.write_mat(
        tmp_path / "brainTumorDataPublic_1-766" / "1.mat", np.ones((8, 8), np.int16), 1, "7"
    )
    import h5py

    with h5py.File(tmp_path / "brainTumorDataPublic_1-766" / "1.mat", "r+") as f:
        f["cjdata"]["label"][...] = value
    with pytest.raises(DataError, match=r"1\.mat: " + message) as err:
        _parse("t1w_mri", tmp_path)
    _one_line(err)


def test_isic_class_missing_from_train(tmp_path):
    fakes.make_isic2020(tmp_path, 10, 2)
    path = tmp_path / "train.csv"
    lines = path.read_text().splitlines()
    path.write_text(
        "\n".join(
            [lines[0]]
            + [ln[: ln.rindex(",")].replace(",malignant", ",benign") + ",0" for ln in lines[1:]]
        )
        + "\n"
    )
    with pytest.raises(
        DataError, match=r"class 'malignant' has no examples in the training split"
    ) as err:
        _parse("isic2020", tmp_path)
    _one_line(err)


def test_isic_float_target_is_refused(tmp_path):
    fakes.make_isic2020(tmp_path, 10, 2)
    path = tmp_path / "train.csv"
    path.write_text(path.read_text().replace(",melanoma,malignant,1", ",melanoma,malignant,0.9", 1))
    with pytest.raises(DataError, match=r"train\.csv:2: target '0\.9' outside the class list"):
        _parse("isic2020", tmp_path)


@pytest.mark.parametrize(("value", "message"), [("1.5", "not a whole id"), ('"2"', "not a number")])
def test_cholect50_fractional_or_text_instrument_is_refused(tmp_path, value, message):
    fakes.make_cholect50(tmp_path, (1,), 3)
    path = tmp_path / "labels" / "VID01.json"
    path.write_text(path.read_text().replace("[0, 0, 0,", f"[0, {value}, 0,", 1))
    with pytest.raises(DataError, match=rf"VID01\.json: frame 0: instrument .* is {message}"):
        _parse("cholect50_instrument", tmp_path)


# CSV files


CSV_CASES = [
    (b"path,label\nimg/0.png,caf\xe9\n", r"labels\.csv:2: byte b'\\xe9' is not UTF-8"),
    (  # Excel's "CSV UTF-8" with a pasted latin-1 byte: its offset was counted past the BOM
        b"\xef\xbb\xbfpath,label\r\nimg/0.png,a\r\nimg/1.png,caf\xe9\r\n",
        r"labels\.csv:3: byte b'\\xe9' is not UTF-8",
    ),
    (b"path,label\nimg/0.png,a\nimg/1.png,b\x00\n", r"labels\.csv:3: NUL byte"),
    (
        b"path,label\nimg/0.png,a\nimg/1.png\n",
        r"labels\.csv:3: 1 fields, fewer than the header's 2",
    ),
    (b"path,label\nimg/0.png,a,x\n", r"labels\.csv:2: 3 fields, more than the header's 2"),
    (b"path,label\n", r"labels\.csv:2: only a header, no rows"),
    (b"path,label\n\n\n", r"labels\.csv:4: only a header, no rows"),
    (b"", r"labels\.csv:1: empty file; expected the header path,label"),
    (b'path,label\nimg/0.png,a\n"img/1.png,b\n', r"labels\.csv:3: malformed CSV"),
    (b"path,label,path\nimg/0.png,a,b\n", r"labels\.csv:1: column 'path' appears twice"),
]


@pytest.mark.parametrize(("data", "message"), CSV_CASES)
def test_malformed_csv_is_one_line_with_file_and_line(tmp_path, data, message):
    (tmp_path / "labels.csv").write_bytes(data)
    with pytest.raises(DataError, match=message) as err:
        read_csv(tmp_path / "labels.csv", ["path", "label"])
    _one_line(err)
    (tmp_path / "img").mkdir()
    with pytest.raises(DataError, match=message):  # the csv source says the same
        _load_csv(tmp_path, tmp_path / "out")


def test_csv_rows_know_their_lines(tmp_path):
    text = 'path,label,note\n\nimg/0.png,a,\nimg/1.png,b,"two, a\nnote"\n\nimg/2.png,c,\n'
    (tmp_path / "l.csv").write_text(text)
    rows = read_csv(tmp_path / "l.csv", ["path", "label"])
    assert [(r["label"], r.line) for r in rows] == [("a", 3), ("b", 4), ("c", 7)]
    assert rows[1]["note"] == "two, a\nnote"  # a free-text note may run over lines
    # ... and hold a line of the header's count of fields, a note's, not a row's.
    with open(tmp_path / "n.csv", "w", newline="") as f:
        csv.writer(f).writerows(
            [["path", "label", "note"], ["a.png", "0", "seen\nbiopsy, left arm, 3mm"]]
        )
    assert read_csv(tmp_path / "n.csv", ["path", "label"])[0]["note"].endswith("3mm")
    # A quote never closed in a listing past the csv module's field limit: named where it
    # opens, not as "field larger than field limit" lines below.
    rows = ["path,label"] + [f"img{i:06d}.png,{i % 2}" for i in range(20_000)]
    rows[5] = '"img5.png,1'
    (tmp_path / "big.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as err:
        read_csv(tmp_path / "big.csv", ["path", "label"])
    assert str(err.value) == (
        f"{tmp_path / 'big.csv'}:6: malformed CSV (a quote opened in this row is never closed)"
    )


SWALLOWED = [f"img/{i}.png,{'ab'[i % 2]},ok" for i in range(6)]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        # A note's stray quote closed three lines below: rows 3-4 vanished without a word.
        (
            {1: 'img/1.png,b,"lesion 6', 4: 'img/4.png,a,see note"'},
            "labels.csv:4: column 'note' runs over lines 4-7 and holds what reads as rows "
            "('img/2.png,a,ok'): an unclosed quote on line 4?; expected one line per row",
        ),
        # In a label: a class named by the rows it swallowed, refused as a split's gap.
        (
            {1: 'img/1.png,"b,ok', 2: 'img/2.png,a",ok'},
            "labels.csv:4: column 'label' holds a line break (the row runs over lines 4-5: "
            "an unclosed quote?); expected one line per row",
        ),
        # Never closed: named where it opens, not past the last row.
        ({1: 'img/1.png,"b,ok'}, "labels.csv:4: malformed CSV (a quote opened in this row is "),
    ],
)
def test_a_stray_quote_swallowing_rows_is_refused_naming_its_line(tmp_path, rows, message):
    lines = [rows.get(i, row) for i, row in enumerate(SWALLOWED)]
    (tmp_path / "labels.csv").write_text("path,label,note\n\n" + "\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        read_csv(tmp_path / "labels.csv", ["path", "label"])
    assert str(err.value).startswith(f"{tmp_path}/{message}"), str(err.value)


def test_builder_label_files_with_bad_bytes(tmp_path):
    fakes.make_chexpert(tmp_path / "chex", 4, 2)
    train = tmp_path / "chex" / "CheXpert-v1.0-small" / "train.csv"
    lines = train.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b"Female", b"F\xe9male")
    train.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=r"train\.csv:4: byte b'\\xe9' is not UTF-8"):
        _parse("chexpert", tmp_path / "chex")
    fakes.make_mura(tmp_path / "mura", ("XR_WRIST",), 2, 1)
    paths = tmp_path / "mura" / "MURA-v1.1" / "train_image_paths.csv"
    paths.write_bytes(paths.read_bytes().replace(b"\n", b"\n\x00", 1))
    with pytest.raises(DataError, match=r"train_image_paths\.csv:2: NUL byte") as err:
        _parse("mura_wrist", tmp_path / "mura")
    _one_line(err)


# Symbolic links: nothing outside the dataset root is read


def test_folder_image_link_out_of_the_root_is_refused(tmp_path):
    root = tmp_path / "imgs"
    _folder(root)
    image(9).save(tmp_path / "secret.png")
    (root / "dog" / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(
        DataError, match=r"dog/link\.png is a symbolic link to .*secret\.png, outside the dataset"
    ) as err:
        _load_folder(root, tmp_path / "out")
    _one_line(err)
    _no_cache_written(tmp_path / "out")
    # Leading nowhere, outside: "copy the file" could not help.
    (root / "dog" / "link.png").unlink()
    (root / "dog" / "link.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(DataError) as err:
        _load_folder(root, tmp_path / "out")
    assert str(err.value) == (
        f"{root / 'dog' / 'link.png'} is a symbolic link to {(tmp_path / 'gone.png').resolve()}, "
        f"which does not exist (and lies outside the dataset root {root.resolve()}); remove "
        "the link or restore its target"
    )


def test_folder_class_folder_link_out_of_the_root_is_refused(tmp_path):
    root = tmp_path / "imgs"
    _folder(root)
    _folder(tmp_path / "elsewhere", classes=("bird",))
    (root / "bird").symlink_to(tmp_path / "elsewhere" / "bird")
    with pytest.raises(
        DataError,
        match=r"imgs/bird is a symbolic link to .*elsewhere/bird, .*; copy the folder into",
    ):
        _load_folder(root, tmp_path / "out")
    # a link to a folder out of the root, deeper inside a class folder
    (root / "bird").unlink()
    (root / "dog" / "more").symlink_to(tmp_path / "elsewhere" / "bird")
    with pytest.raises(DataError, match=r"dog/more is a symbolic link"):
        _load_folder(root, tmp_path / "out")


@pytest.mark.parametrize("where", ["file", "class folder"])
def test_a_name_that_is_not_utf8_is_one_line_before_anything_is_prepared(tmp_path, where):
    """A Latin-1 ``café.png`` (surrogates in Python) crashed the carve with a traceback, and
    with split folders only at the record, after the whole training."""
    root = tmp_path / "imgs"
    _folder(root)
    bad = os.fsencode(root / "cat") + b"/caf\xe9.png"
    if where == "class folder":
        os.rename(os.fsencode(root / "dog"), os.fsencode(root) + b"/caf\xe9")
        bad = os.fsencode(root) + b"/caf\xe9"
    else:
        image(3).save(bad)
    named = r": the name b'caf\\xe9(\.png)?' is not UTF-8 text; rename"
    with pytest.raises(DataError, match=named):
        _load_folder(root, tmp_path / "out")
    _no_cache_written(tmp_path / "out")


def test_folder_dangling_link_is_refused(tmp_path):
    root = tmp_path / "imgs"
    _folder(root)
    (root / "cat" / "gone.png").symlink_to(root / "cat" / "nothing.png")
    with pytest.raises(
        DataError, match=r"gone\.png is a symbolic link to .*, which does not exist"
    ):
        _load_folder(root, tmp_path / "out")


@pytest.mark.parametrize("where", ["cat/x.png", "loose.png", "bird"])
def test_a_symbolic_link_loop_is_one_line_naming_it(tmp_path, where):
    """Path.resolve raises RuntimeError on a loop: a traceback, where a dangling link is a line."""
    root = tmp_path / "imgs"
    _folder(root)
    link = root / where
    link.symlink_to(link)  # the shortest loop: itself
    with pytest.raises(DataError, match=rf"{where}(\.png)? is a symbolic link loop: it never"):
        _load_folder(root, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("meta.json"))


def test_folder_links_inside_the_root_are_followed(tmp_path):
    root = tmp_path / "imgs"
    _folder(root / "store", classes=("cat_files", "dog_files"))
    (root / "train").mkdir()
    (root / "train" / "cat").symlink_to(root / "store" / "cat_files")
    (root / "train" / "dog").symlink_to(Path("../store/dog_files"))  # relative link
    image(99).save(root / "store" / "extra.png")  # listed through the link only
    (root / "train" / "dog" / "extra.png").symlink_to(root / "store" / "extra.png")
    ds = _load_folder(root, tmp_path / "out")
    assert ds.class_names == ("cat", "dog")
    ids = sorted(i for s in ds.splits.values() for i in s.ids.tolist())
    assert len(ids) == 21 and "train/dog/extra.png" in ids


@pytest.mark.parametrize("link", ["symbolic", "hard", "folder"])
def test_one_file_under_two_names_is_refused(tmp_path, link):
    """Two names of one image (a link into another class, or a link to a folder above that
    reaches the classes again) would be two examples: in two classes, or train and test."""
    root = tmp_path / "imgs"
    _folder(root)
    if link == "symbolic":
        (root / "dog" / "also.png").symlink_to(root / "cat" / "3.png")
    elif link == "hard":
        os.link(root / "cat" / "3.png", root / "dog" / "also.png")
    else:
        (root / "cat" / "up").symlink_to(Path(".."))
    with pytest.raises(DataError) as err:  # cat/up/dog/0.png: said to be no patient folder
        _load_folder(root, tmp_path / "out", patient_folders=False if link == "folder" else None)
    message = _one_line(err)
    assert re.search(
        r"imgs/(cat/up/)?(cat|dog)/\S+\.png and \S+imgs/(cat|dog)/\S+\.png are one file \(links "
        r"to one image; splits? .*\); an image listed twice would be two examples$",
        message,
    ), message
    _no_cache_written(tmp_path / "out")


def test_test_images_that_copy_training_images_are_noted_on_every_load(tmp_path, capsys):
    """Three test images are byte copies of training images under other names (one of them
    re-saved as another format), a fourth differs in a few pixels: 3, said on each load."""
    import shutil

    from PIL import Image

    root, out = tmp_path / "imgs", tmp_path / "out"
    _folder(root / "train", per_class=8)
    _folder(root / "test", per_class=4, seed=7000)
    shutil.copy(root / "train" / "cat" / "0.png", root / "test" / "cat" / "copy.png")
    shutil.copy(root / "train" / "dog" / "2.png", root / "test" / "dog" / "copy.png")
    Image.open(root / "train" / "dog" / "3.png").save(root / "test" / "dog" / "copy2.bmp")
    near = np.asarray(Image.open(root / "train" / "cat" / "4.png")).copy()
    near[8:12, 8:12] ^= 16  # inside the crop
    Image.fromarray(near).save(root / "test" / "cat" / "near.png")
    _said_at_every_load(root, out, capsys, [
        f"note: {root}: images pixel-identical to a training image after preprocessing: "
        "3 in test (e.g. test/cat/copy.png = train/cat/0.png); they inflate "
        "validation/test scores, remove them"
    ])  # fmt: skip


def test_a_test_copy_under_another_label_is_not_said_to_inflate_the_scores(tmp_path, capsys):
    """BreastMNIST's test/76 copies train/115 under the other label: a model that learnt the
    training image scores the copy wrong (it deflates, by one image), yet the run, the
    record and the report said "inflated". Only same-label copies count as inflating;
    the other is the two-labels note's."""
    import shutil

    from medft_jax.data.cache import copies_rule, duplicate_counts

    root, out = tmp_path / "imgs", tmp_path / "out"
    _folder(root / "train", per_class=8)
    _folder(root / "test", per_class=4, seed=7000)
    shutil.copy(root / "train" / "cat" / "0.png", root / "test" / "dog" / "relabelled.png")
    shutil.copy(root / "train" / "dog" / "2.png", root / "test" / "dog" / "copy.png")
    ds = _load_folder(root, out)
    assert duplicate_counts(ds.metadata) == {"test": 1}
    assert copies_rule(ds.metadata) == "same_label"
    assert copies_rule({"duplicates": {"test": 2, "example": ["a", "b"]}}) is None  # older
    notes = [x for x in capsys.readouterr().err.splitlines() if "pixel-identical" in x]
    assert notes == [
        f"note: {root}: images pixel-identical to a training image after preprocessing: "
        "1 in test (e.g. test/dog/copy.png = train/dog/2.png); they inflate "
        "validation/test scores, remove them",
        f"note: {root}: 1 image(s) pixel-identical after preprocessing to one of another "
        "label; one of each is mislabelled, or the pixels cannot tell the classes apart "
        "(e.g. test/dog/relabelled.png = train/cat/0.png)",
    ]


def test_the_inflating_copys_example_pairs_images_of_one_label():
    """The pixels of one training image under two labels: the test copy of the dog was
    paired with the cat's file in the "inflate" note's example."""
    from medft_jax.data.cache import leaked_duplicates

    found = leaked_duplicates(
        {
            "train": [(b"h", "train/dog/a.png", b"1"), (b"h", "train/cat/b.png", b"0")],
            "test": [(b"h", "test/dog/c.png", b"1"), (b"g", "test/cat/d.png", b"0")],
        }
    )
    assert found["test"] == 1 and found["example"] == ["test/dog/c.png", "train/dog/a.png"]
    assert found["copies_rule"] == "same_label" and found["two_labels"][0] == 1
    # Multilabel: a copy whose label vector differs in one finding still copies the
    # others' (A=1 B=0 C=1 trained, A=1 B=0 C=0 tested): counted, not only "two labels".
    one, other = np.array([1, 0, 1], np.float32), np.array([1, 0, 0], np.float32)
    split_of = {
        "train": [(b"h", "train/a.png", one.tobytes())],
        "test": [(b"h", "test/b.png", other.tobytes())],
    }
    assert "test" not in leaked_duplicates(split_of)
    found = leaked_duplicates(split_of, multilabel=True)
    assert found["test"] == 1 and found["example"] == ["test/b.png", "train/a.png"]
    assert found["two_labels"][0] == 1


def _said_at_every_load(root: Path, out: Path, capsys, expected: list[str]) -> None:
    for _ in range(2):  # when the cache is written, and when it is read
        _load_folder(root, out)
        notes = [x for x in capsys.readouterr().err.splitlines() if "pixel-identical" in x]
        assert notes == expected


def test_copies_under_two_labels_and_within_the_evaluation_splits_are_noted(tmp_path, capsys):
    """Only copies of training images were noted: the same pixels under two classes (one
    of them mislabelled), or twice in the test split (counted twice), passed silently."""
    import shutil

    root, out = tmp_path / "imgs", tmp_path / "out"
    _folder(root / "train", per_class=8)
    _folder(root / "val", per_class=4, seed=9000)
    _folder(root / "test", per_class=4, seed=7000)
    shutil.copy(root / "test" / "cat" / "0.png", root / "test" / "dog" / "twin.png")
    shutil.copy(root / "train" / "cat" / "1.png", root / "train" / "dog" / "mislabelled.png")
    shutil.copy(root / "val" / "dog" / "2.png", root / "test" / "dog" / "from_val.png")
    _said_at_every_load(root, out, capsys, [
        f"note: {root}: 2 val/test image(s) pixel-identical after preprocessing to another "
        "val/test image; each counts more than once in the scores (e.g. test/cat/0.png = "
        "test/dog/twin.png)",
        f"note: {root}: 2 image(s) pixel-identical after preprocessing to one of another "
        "label; one of each is mislabelled, or the pixels cannot tell the classes apart "
        "(e.g. test/cat/0.png = test/dog/twin.png)",
    ])  # fmt: skip


def test_classes_each_of_their_own_file_kind_are_noted(tmp_path, capsys):
    """Cats as JPEG and dogs as PNG: a model learns the compression, not the animal, and
    the test split made the same way scores near 1, without a word."""
    root = tmp_path / "imgs"
    _folder(root)
    for p in (root / "cat").iterdir():
        image(int(p.stem), (20, 18)).save(p.with_suffix(".jpeg" if p.stem == "0" else ".jpg"))
        p.unlink()
    _load_folder(root, tmp_path / "out")
    assert [x for x in capsys.readouterr().err.splitlines() if "kind" in x] == [
        f"note: {root}: each class's files are of a kind no other class has (cat: .jpg "
        "8-bit colour; dog: .png 8-bit colour); a model can tell the classes by how the "
        "files were made rather than by what they show: convert them to one format"
    ]
    image(99, (20, 18)).save(root / "dog" / "99.jpg")  # one kind shared: nothing to say
    _load_folder(root, tmp_path / "out")
    assert "kind" not in capsys.readouterr().err


def test_classes_each_of_their_own_bit_depth_are_noted(tmp_path, capsys):
    """8-bit PNGs in one class, 16-bit PNGs in the other: one suffix, yet a model tells the
    classes by the quantisation; the note compared suffixes alone and said nothing."""
    from PIL import Image

    root = tmp_path / "imgs"
    _folder(root)
    for p in (root / "dog").iterdir():
        grey = np.asarray(Image.open(p).convert("L"), dtype=np.uint16)
        Image.fromarray(grey * 257 + int(p.stem)).save(p)  # 16-bit, full range
    out = tmp_path / "out"
    for _ in range(2):  # when the cache is written, and when it is read
        _load_folder(root, out)
        assert [x for x in capsys.readouterr().err.splitlines() if "kind" in x] == [
            f"note: {root}: each class's files are of a kind no other class has (cat: .png "
            "8-bit colour; dog: .png 16-bit grey); a model can tell the classes by how the "
            "files were made rather than by what they show: convert them to one format"
        ]
    Image.open(root / "cat" / "0.png").convert("L").save(root / "cat" / "0.png")
    _load_folder(root, out)  # cat's 8-bit grey and colour share nothing with dog's 16-bit
    assert "(cat: .png 8-bit colour, .png 8-bit grey; dog" in capsys.readouterr().err
    Image.open(root / "cat" / "0.png").save(root / "dog" / "cat0.png")
    _load_folder(root, out)  # one kind shared: nothing to say
    assert "kind" not in capsys.readouterr().err


def test_classes_of_8_and_16_bit_colour_pngs_and_uid_named_dicoms_are_told_apart(tmp_path, capsys):
    """16-bit colour PNGs were called 8-bit colour (getexif decoded the file before its
    depth was read), so 8- and 16-bit colour classes said nothing; DICOM files named by UID
    were of a "kind" per UID number, so two DICOM classes were "each of its own kind"."""
    from PIL import Image

    from tests.test_image_decoding import _png16_rgb

    root = tmp_path / "imgs"
    _folder(root)
    for p in (root / "dog").iterdir():
        rgb = np.asarray(Image.open(p).convert("RGB"), dtype=np.uint16) * 257
        _png16_rgb(p, rgb)
    _load_folder(root, tmp_path / "out")
    assert "(cat: .png 8-bit colour; dog: .png 16-bit colour)" in capsys.readouterr().err
    dicoms = tmp_path / "dicoms"
    marked = b"\0" * 128 + b"DICM" + b"\0" * 64
    for c, uid in (("a", "1.2.840.113619.2.55"), ("b", "1.2.840.113619.2.77")):
        (dicoms / c).mkdir(parents=True)
        for i in range(4):
            (dicoms / c / f"{uid}.{i}{c}").write_bytes(marked)
    from medft_jax.data import local

    _, splits = local.parse_folder(dicoms)
    local._note_file_kind_by_class(dicoms, splits, ["a", "b"], None)
    assert "kind" not in capsys.readouterr().err  # both DICOM


def test_photos_turned_by_their_exif_orientation_are_noted(tmp_path, capsys):
    """A phone's photo stored sideways with an EXIF orientation is read as stored (as
    torchvision reads it), not as a viewer shows it: that was said nowhere (a PNG's eXIf
    chunk was not read for it)."""
    from PIL import Image

    root = tmp_path / "imgs"
    _folder(root)
    for name, orientation in (("p1.jpg", 6), ("p2.jpg", 1), ("p3.jpg", 3), ("p4.png", 8)):
        exif = Image.Exif()
        exif[0x0112] = orientation
        image(500 + orientation, (20, 18)).convert("RGB").save(root / "dog" / name, exif=exif)
    for _ in range(2):  # when the cache is written, and when it is read
        _load_folder(root, tmp_path / "out")
        assert [x for x in capsys.readouterr().err.splitlines() if "EXIF" in x] == [
            f"note: {root}: 3 image(s) carry an EXIF orientation other than upright (e.g. "
            "dog/p1.jpg); they are read as stored, as torchvision reads them, not turned as a "
            "photo viewer shows them: save them upright if that matters (exiftran -ai)"
        ]


def test_a_change_of_the_toolkits_rules_is_said_alone():
    """A new listing version may change the signature's form too: not "3 files changed"."""
    old = {"files": [["a.png", 1, 2]], "listing": 2, "examples": "x"}
    new = {"files": [["a.png", 1, 2, 3]], "listing": 3, "examples": "y"}
    assert cache_mod.describe_change(old, new) == (
        "listing rules (ids, splits, the files' signature) changed"
    )
    assert cache_mod.describe_change(old, {**old, "examples": "y"}) == (
        "examples (ids, labels, patients or splits) changed"
    )


def test_a_file_whose_only_inode_change_time_moved_is_named_apart():
    """A chmod -R read as "40 files changed" although no size or mtime moved."""
    old = {"files": [["a.png", 1, 2, 3], ["b.png", 1, 2, 3], ["c.png", 1, 2, 3]]}
    new = {"files": [["a.png", 1, 2, 4], ["b.png", 5, 2, 4], ["c.png", 1, 2, 3]]}
    assert cache_mod.describe_change(old, new) == (f"1 file changed, 1 {cache_mod.CTIME_ONLY}")
    one = {"files": [["a.png", 1, 2, 4], *old["files"][1:]]}
    assert cache_mod.describe_change(old, one) == f"1 file {cache_mod.CTIME_ONLY}"


def test_a_new_decoding_version_rebuilds_a_folder_cache(tmp_path, capsys, monkeypatch):
    """A cache written under older decoding rules (one that kept a blank DICOM slice
    as a black image, say) is rebuilt on the next load, naming the rules as the reason;
    loading again under the same rules reuses it."""
    from medft_jax.data import images, local

    root, out = tmp_path / "imgs", tmp_path / "out"
    _folder(root, per_class=8)
    monkeypatch.setattr(local, "DECODING_VERSION", images.DECODING_VERSION - 1)
    _load_folder(root, out)
    capsys.readouterr()
    monkeypatch.setattr(local, "DECODING_VERSION", images.DECODING_VERSION)
    _load_folder(root, out)
    stale = [x for x in capsys.readouterr().err.splitlines() if "is stale" in x]
    assert len(stale) == 1
    assert stale[0].endswith(
        "is stale: image decoding rules (16-bit, float, DICOM) changed; rebuilding"
    )
    _load_folder(root, out)
    assert "is stale" not in capsys.readouterr().err


def test_folder_cache_follows_links_moved_and_files_swapped(tmp_path, capsys):
    """Moving a link to another class relabels an image without touching any image file;
    swapping two same-size files keeps every name, size and mtime: both rebuild."""
    from PIL import Image

    root, out = tmp_path / "imgs", tmp_path / "out"
    _folder(root / "store", classes=("files",), per_class=24)
    for i in range(24):
        split, c = ("train" if i < 16 else "test"), ("cat" if i % 2 else "dog")
        (root / split / c).mkdir(parents=True, exist_ok=True)
        (root / split / c / f"{i}.png").symlink_to(Path("../../store/files") / f"{i}.png")
    _load_folder(root, out)
    (root / "train" / "cat" / "1.png").rename(root / "train" / "dog" / "1.png")
    ds = _load_folder(root, out)
    assert _rebuilds(capsys) == [  # the link, a listed file, moved
        f"folder cache {_only_cache(out)} is stale: 1 file added, 1 removed; rebuilding"
    ]
    labels = {
        i: ds.class_names[label]
        for s in ds.splits.values()
        for i, label in zip(s.ids.tolist(), s.labels.tolist(), strict=True)
    }
    assert labels["train/dog/1.png"] == "dog" and "train/cat/1.png" not in labels
    a, b = root / "store" / "files" / "2.png", root / "store" / "files" / "3.png"
    Image.new("RGB", (20, 18), (30, 30, 30)).save(a)
    Image.new("RGB", (20, 18), (220, 220, 220)).save(b)
    assert a.stat().st_size == b.stat().st_size  # one size: only the ctime tells them apart
    for p in (a, b):
        os.utime(p, ns=(5, 5))
    _load_folder(root, out)
    capsys.readouterr()
    a.rename(tmp_path / "t.png")
    b.rename(a)
    (tmp_path / "t.png").rename(b)
    _load_folder(root, out)
    assert _rebuilds(capsys) == [
        f"folder cache {_only_cache(out)} is stale: 2 files with only the inode change time "
        "moved (chmod or chown, or replaced keeping size and mtime); rebuilding"
    ]


def test_csv_link_out_of_the_root_is_refused(tmp_path):
    root = _csv_dir(tmp_path / "d", ["a", "b"] * 5)
    image(9).save(tmp_path / "secret.png")
    (root / "img" / "0.png").unlink()
    (root / "img" / "0.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(DataError, match=r"labels\.csv:2: image path 'img/0\.png' escapes"):
        _load_csv(root, tmp_path / "out")


def test_builder_listing_link_out_of_the_root_is_refused(tmp_path):
    fakes.make_bach(tmp_path / "bach", 10)
    image(9).save(tmp_path / "secret.tif")
    normal = tmp_path / "bach" / "ICIAR2018_BACH_Challenge" / "Photos" / "Normal"
    (normal / "n999.tif").symlink_to(tmp_path / "secret.tif")
    with pytest.raises(DataError, match=r"Normal/n999\.tif is a symbolic link to .*secret\.tif"):
        _parse("bach", tmp_path / "bach")


# Caches follow their source


def _rebuilds(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "is stale" in line]


def test_folder_cache_follows_added_removed_and_changed_images(tmp_path, capsys):
    root, out = tmp_path / "imgs", tmp_path / "out"
    _folder(root, per_class=8)
    first = _load_folder(root, out)
    again = _load_folder(root, out)
    assert not _rebuilds(capsys)
    assert again.metadata["fingerprint"] == first.metadata["fingerprint"]

    for i in range(3):
        image(900 + i, (20, 18)).save(root / "dog" / f"new{i}.png")
    (root / "cat" / "0.png").unlink()
    ds = _load_folder(root, out)
    assert _rebuilds(capsys) == [
        f"folder cache {_only_cache(out)} is stale: 3 files added, 1 removed; rebuilding"
    ]
    ids = {i for s in ds.splits.values() for i in s.ids.tolist()}
    assert "dog/new2.png" in ids and "cat/0.png" not in ids and len(ids) == 18
    assert ds.metadata["fingerprint"] != first.metadata["fingerprint"]

    image(77, (20, 18)).save(root / "dog" / "new0.png")  # same name, other pixels
    os.utime(root / "dog" / "new0.png", ns=(1, 1))
    changed = _load_folder(root, out)
    assert _rebuilds(capsys) == [
        f"folder cache {_only_cache(out)} is stale: 1 file changed; rebuilding"
    ]
    assert changed.metadata["fingerprint"] != ds.metadata["fingerprint"]


def test_skip_bad_images_toggled_without_a_bad_image_keeps_the_folder_cache(tmp_path, capsys):
    """Commands that differ only in --skip-bad-images share one cache folder: with no bad
    image its arrays are the same either way, and it was rebuilt at each turn (its cached
    features dropped). A build that skipped an image is rebuilt without the flag, which
    then names the bad file."""
    root, out = tmp_path / "imgs", tmp_path / "out"
    _folder(root, per_class=8)
    first = _load_folder(root, out)
    for skip in (True, False, True):
        again = _load_folder(root, out, skip_bad_images=skip)
        assert not _rebuilds(capsys)
        assert again.metadata["fingerprint"] == first.metadata["fingerprint"]
    (root / "dog" / "bad.png").write_bytes(b"not a png")
    skipped = _load_folder(root, out, skip_bad_images=True)
    assert _rebuilds(capsys) == [
        f"folder cache {_only_cache(out)} is stale: 1 file added; rebuilding"
    ]
    assert skipped.metadata["fingerprint"] == first.metadata["fingerprint"]
    with pytest.raises(DataError, match=r"bad\.png"):
        _load_folder(root, out)
    assert _rebuilds(capsys) == [
        f"folder cache {_only_cache(out)} is stale: --skip-bad-images changed; rebuilding"
    ]


def test_folder_cache_follows_an_added_class(tmp_path, capsys):
    root, out = tmp_path / "imgs", tmp_path / "out"
    _folder(root)
    assert _load_folder(root, out).num_classes == 2
    _folder(root, classes=("eel",), seed=5000)
    ds = _load_folder(root, out)
    assert ds.class_names == ("cat", "dog", "eel")
    [line] = _rebuilds(capsys)
    assert line.endswith("is stale: 10 files added; class list changed; rebuilding")
    assert sorted(np.unique(ds.splits["train"].labels).tolist()) == [0, 1, 2]


def test_csv_cache_follows_the_labels_file(tmp_path, capsys):
    root, out = _csv_dir(tmp_path / "d", ["a", "b"] * 10), tmp_path / "out"
    first = _load_csv(root, out)
    text = (root / "labels.csv").read_text()
    (root / "labels.csv").write_text(text.replace("img/0.png,a", "img/0.png,b"))
    second = _load_csv(root, out)
    [line] = _rebuilds(capsys)
    assert line.endswith("is stale: labels CSV file changed; rebuilding")
    assert second.metadata["fingerprint"] != first.metadata["fingerprint"]
    label_of = {
        i: int(lab) for s in second.splits.values() for i, lab in zip(s.ids, s.labels, strict=True)
    }
    assert label_of["img/0.png"] == 1


def test_cache_written_before_signatures_is_rebuilt(tmp_path, capsys):
    root, out = tmp_path / "imgs", tmp_path / "out"
    _folder(root)
    first = _load_folder(root, out)
    meta_path = _only_cache(out) / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["fingerprint"], meta["source"]
    meta_path.write_text(json.dumps(meta))
    ds = _load_folder(root, out)
    [line] = _rebuilds(capsys)
    assert "predates content checks" in line
    assert ds.metadata["fingerprint"] == first.metadata["fingerprint"]
    assert "fingerprint" in json.loads(meta_path.read_text())


def _only_cache(out: Path) -> Path:
    [meta] = list(out.rglob("meta.json"))
    return meta.parent


def _poisoned_and_good(tmp_path: Path) -> tuple[bytes, bytes]:
    if (SHARED_DATA / "breastmnist.npz").is_file():
        good = (SHARED_DATA / "breastmnist.npz").read_bytes()
    else:
        _npz(tmp_path / "good.npz", _ok_labels())
        good = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "good.npz").write_bytes(good)
    with np.load(tmp_path / "good.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["train_images"] = 255 - arrays["train_images"]  # poisoned, still valid
    np.savez(tmp_path / "bad.npz", **arrays)
    return (tmp_path / "bad.npz").read_bytes(), good


def test_medmnist_cache_follows_the_file_put_back(tmp_path, capsys):
    poisoned, good = _poisoned_and_good(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "breastmnist.npz").write_bytes(poisoned)
    bad = load("medmnist/breastmnist", data_dir=data, progress=False, **SIZES)
    (data / "breastmnist.npz").write_bytes(good)  # the official file put back
    ds = load("medmnist/breastmnist", data_dir=data, progress=False, **SIZES)
    [line] = _rebuilds(capsys)
    assert "breastmnist.npz differs from the file it was built from" in line
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "breastmnist.npz").write_bytes(good)
    reference = load("medmnist/breastmnist", data_dir=clean, progress=False, **SIZES)
    assert np.array_equal(ds.splits["train"].images, reference.splits["train"].images)
    assert ds.metadata["fingerprint"] == reference.metadata["fingerprint"]
    assert ds.metadata["fingerprint"] != bad.metadata["fingerprint"]
    sha = hashlib.sha256(good).hexdigest()
    assert ds.metadata["source"]["sha256"] == sha

    os.utime(data / "breastmnist.npz", ns=(5, 5))  # touched, same bytes: no rebuild
    again = load("medmnist/breastmnist", data_dir=data, progress=False, **SIZES)
    assert not _rebuilds(capsys)
    assert again.metadata["source"]["mtime_ns"] == 5
    assert again.metadata["fingerprint"] == ds.metadata["fingerprint"]

    # Other bytes of the same size with the time set back (cp -p): the inode change time says.
    with np.load(tmp_path / "bad.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["train_images"] = 255 - arrays["train_images"]
    np.savez(tmp_path / "unpoisoned.npz", **arrays)  # uncompressed: bad.npz's size exactly
    target = data / "breastmnist.npz"
    target.write_bytes(poisoned)
    load("medmnist/breastmnist", data_dir=data, progress=False, **SIZES)
    _rebuilds(capsys)
    st = target.stat()
    target.write_bytes((tmp_path / "unpoisoned.npz").read_bytes())
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size
    swapped = load("medmnist/breastmnist", data_dir=data, progress=False, **SIZES)
    [line] = _rebuilds(capsys)
    assert "breastmnist.npz differs from the file it was built from" in line
    assert swapped.metadata["fingerprint"] != bad.metadata["fingerprint"]


@pytest.mark.slow
def test_preparing_without_tensorflow_is_one_line_before_any_work(tmp_path):
    manual, out = tmp_path / "bach", tmp_path / "out"
    fakes.make_bach(manual, 10)
    missing = tmp_path / "no_tf" / "tensorflow"  # first on the path: as a missing install
    missing.mkdir(parents=True)
    (missing / "__init__.py").write_text("raise ImportError('No module named tensorflow')\n")
    result = subprocess.run(
        [sys.executable, "-m", "experiments.prepare", "--dataset", "bach", "--no-progress",
         "--manual-dir", str(manual), "--data-dir", str(out), "--resize-size", "36",
         "--image-size", "32"],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(missing.parent), *filter(None, [os.environ.get("PYTHONPATH")])])},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: preparing bach needs TensorFlow (No module named tensorflow); "
        "pip install 'medft-jax[prepare]'"
    )
    assert "Traceback" not in result.stderr
    assert not [p for p in out.rglob("*") if p.is_dir()]  # no TFDS or downloads folders


@tf_required
@pytest.mark.slow
def test_no_progress_keeps_tensorflows_startup_lines_off_stderr(tmp_path):
    """TensorFlow (imported by TFDS at the first encoded image) prints its CPU-feature
    and oneDNN lines from C++; under --no-progress a prepare prints none of them, and
    a user's own TF_CPP_MIN_LOG_LEVEL is kept."""
    manual, out = tmp_path / "bach", tmp_path / "out"
    fakes.make_bach(manual, 10)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}

    def prepare_quietly(data_dir: Path, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "experiments.prepare", "--dataset", "bach",
             "--no-progress", "--manual-dir", str(manual), "--data-dir", str(data_dir),
             "--resize-size", "36", "--image-size", "32"],
            capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1],
            env={**env, **extra},
        )  # fmt: skip

    result = prepare_quietly(out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "oneDNN" not in result.stderr and "absl::InitializeLog" not in result.stderr
    assert result.stdout.startswith("bach: ")
    # The user's own setting wins: level 0 lets TensorFlow's start-up lines through.
    loud = prepare_quietly(tmp_path / "out2", TF_CPP_MIN_LOG_LEVEL="0", TF_ENABLE_ONEDNN_OPTS="1")
    assert loud.returncode == 0, loud.stderr[-2000:]
    assert "oneDNN" in loud.stderr


@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
@tf_required
@pytest.mark.xdist_group("tfds_prepared")
def test_a_failed_prepare_of_changed_data_leaves_no_old_cache_served(tmp_path):
    manual, out = tmp_path / "bach", tmp_path / "out"
    fakes.make_bach(manual, 10)
    prepare("bach", manual_dir=manual, data_dir=out, progress=False, **SIZES)
    photo = manual / "ICIAR2018_BACH_Challenge" / "Photos" / "Invasive" / "iv003.tif"
    photo.write_bytes(b"not a tiff")  # edited, and now undecodable: the prepare fails
    with pytest.raises(DataError, match=r"iv003\.tif"):
        prepare("bach", manual_dir=manual, data_dir=out, progress=False, **SIZES)
    # The cache of the old images is gone with their TFDS data: a run says to prepare.
    with pytest.raises(DataError, match=r"bach \(.*\) is not prepared in .*; run: "):
        load("bach", data_dir=out, progress=False, **SIZES)


@tf_required
@pytest.mark.xdist_group("tfds_prepared")  # the worker that loads TensorFlow anyway
@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
def test_task_cache_follows_tfds_data_and_manual_dir(tmp_path, capsys):
    manual, out = tmp_path / "bach", tmp_path / "out"
    fakes.make_bach(manual, 10)
    first = prepare("bach", manual_dir=manual, data_dir=out, progress=False, **SIZES)
    again = load("bach", data_dir=out, progress=False, **SIZES)
    assert not _rebuilds(capsys)
    assert again.metadata["fingerprint"] == first.metadata["fingerprint"]

    tfds_dir = out / again.metadata["source"]["tfds_dir"]
    info = next(tfds_dir.glob("dataset_info.json"))
    os.utime(info, ns=(7, 7))  # the TFDS data is not what the cache was built from
    rebuilt = load("bach", data_dir=out, progress=False, **SIZES)
    [line] = _rebuilds(capsys)
    assert line.startswith("bach cache ") and "1 file changed" in line
    assert rebuilt.metadata["fingerprint"] == first.metadata["fingerprint"]  # same bytes

    photo = manual / "ICIAR2018_BACH_Challenge" / "Photos" / "Invasive" / "iv003.tif"
    image(4242, (48, 36)).save(photo)
    changed = prepare("bach", manual_dir=manual, data_dir=out, progress=False, **SIZES)
    err = capsys.readouterr().err
    assert "bach prepared data" in err and "is stale: 1 file changed; preparing again" in err
    assert changed.metadata["fingerprint"] != first.metadata["fingerprint"]

    # A prepare killed after TFDS finished but before its record: prepared again, not trusted.
    from medft_jax import atomic
    from medft_jax.data.tasks import MANUAL_RECORD, prepare_lock

    (tfds_dir / MANUAL_RECORD).unlink()
    photo.write_bytes(b"")  # edited meanwhile: a trusted prepare would serve the old image
    image(4343, (48, 36)).save(photo)
    leftover = atomic.temporary_sibling(tfds_dir)  # a killed removal's set-aside copy
    leftover = leftover.with_name(leftover.name.replace(f"-{os.getpid()}@", "-999999999@"))
    leftover.mkdir()
    renewed = prepare("bach", manual_dir=manual, data_dir=out, progress=False, **SIZES)
    err = capsys.readouterr().err
    assert "is stale: it has no record of the files it was prepared from" in err
    assert renewed.metadata["fingerprint"] != changed.metadata["fingerprint"]
    assert not leftover.exists()
    # Skipping bad images is other data than a strict prepare's: prepared again, said why.
    prepare("bach", manual_dir=manual, data_dir=out, skip_bad_images=True, progress=False, **SIZES)
    assert "is stale: --skip-bad-images changed; preparing again" in capsys.readouterr().err

    # A second prepare waits for the first's lock, then finds the data fresh and reuses it.
    import fcntl
    import threading

    with open(prepare_lock(tfds_dir), "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        done = []
        kw = {"skip_bad_images": True, "progress": False, **SIZES}
        waiter = threading.Thread(
            target=lambda: done.append(prepare("bach", manual_dir=manual, data_dir=out, **kw))
        )
        waiter.start()
        waiter.join(timeout=2)
        assert waiter.is_alive() and not done
    waiter.join(timeout=120)
    assert done and "preparing again" not in capsys.readouterr().err


# Fingerprints


def test_fingerprint_present_stable_and_content_only(tmp_path):
    demo = load("demo")
    assert demo.metadata["fingerprint"] == load("demo").metadata["fingerprint"]
    assert demo.metadata["fingerprint"] != load("demo", seed=1).metadata["fingerprint"]

    _npz(tmp_path / "breastmnist.npz", _ok_labels())
    native = load("medmnist/breastmnist", data_dir=tmp_path)
    digest = hashlib.sha256((tmp_path / "breastmnist.npz").read_bytes()).hexdigest()
    assert native.metadata["fingerprint"] == digest
    resized = load("medmnist/breastmnist", data_dir=tmp_path, progress=False, **SIZES)
    assert len(resized.metadata["fingerprint"]) == 64
    assert resized.metadata["fingerprint"] != native.metadata["fingerprint"]

    # the same images in two folders: equal fingerprints (no paths or mtimes in it)
    _folder(tmp_path / "a")
    _folder(tmp_path / "b")
    os.utime(tmp_path / "b" / "cat" / "0.png", ns=(3, 3))
    fa = _load_folder(tmp_path / "a", tmp_path / "out").metadata["fingerprint"]
    fb = _load_folder(tmp_path / "b", tmp_path / "out").metadata["fingerprint"]
    assert fa == fb
    assert len(list((tmp_path / "out").rglob("meta.json"))) == 2  # two caches, one fingerprint
    csv_ds = _load_csv(_csv_dir(tmp_path / "c", ["a", "b"] * 10), tmp_path / "out")
    assert len(csv_ds.metadata["fingerprint"]) == 64

    # what write_cache stored is the hash of the arrays it wrote
    for ds in (resized, csv_ds):
        splits = ds.splits
        assert (
            cache_mod.fingerprint_of(splits, ds.class_names, ds.multilabel)
            == ds.metadata["fingerprint"]
        )


@pytest.mark.slow
def test_fingerprint_is_the_same_in_another_process(tmp_path):
    _folder(tmp_path / "imgs")
    ds = _load_folder(tmp_path / "imgs", tmp_path / "out")
    fresh = tmp_path / "out2"  # built again from scratch by another process
    script = textwrap.dedent(
        f"""
        from medft_jax.data import load
        ds = load("folder", manual_dir={str(tmp_path / "imgs")!r}, data_dir={str(fresh)!r},
                  resize_size=36, crop_size=32, progress=False)
        print(ds.metadata["fingerprint"], load("demo").metadata["fingerprint"])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    folder_fp, demo_fp = result.stdout.split()
    assert folder_fp == ds.metadata["fingerprint"]
    assert demo_fp == load("demo").metadata["fingerprint"]


@pytest.mark.parametrize("links_anywhere", [False, True])
def test_a_named_pipe_named_as_an_image_is_refused(tmp_path, links_anywhere):
    """A FIFO called ``x.png`` is no file: read, it blocks forever; left out without a word,
    it is an image the user meant to include that vanished."""
    from medft_jax.data.paths import scan_files

    _folder(tmp_path / "d")
    os.mkfifo(tmp_path / "d" / "dog" / "x.png")
    expected = f"{tmp_path / 'd' / 'dog' / 'x.png'} is a named pipe (FIFO), not a file; move it"
    with pytest.raises(DataError, match=re.escape(expected)):
        scan_files(tmp_path / "d", tmp_path / "d", links_anywhere=links_anywhere)
    if not links_anywhere:
        with pytest.raises(DataError, match=re.escape(expected)) as err:
            _load_folder(tmp_path / "d", tmp_path / "out")
        _one_line(err)
        _no_cache_written(tmp_path / "out")


def test_a_named_pipe_listed_or_given_as_an_image_is_refused_as_such(tmp_path, capsys):
    """A CSV listing a FIFO called it missing ("a partly downloaded copy?"); predict given
    one as a file blocked in its decoder for ever."""
    from experiments.predict import expand_folders
    from experiments.predict import main as predict

    root = _csv_dir(tmp_path / "c", ["a", "b"] * 5)
    (root / "img" / "3.png").unlink()
    os.mkfifo(root / "img" / "3.png")
    with pytest.raises(DataError) as err:
        _load_csv(root, tmp_path / "out")
    assert str(err.value).endswith(
        f"listed image {root / 'img' / '3.png'} is a named pipe (FIFO), not a file"
    )
    _no_cache_written(tmp_path / "out")
    fifo = str(root / "img" / "3.png")
    assert predict(["--checkpoint", str(tmp_path / "no-ck"), "--images", fifo]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --images {fifo}: a named pipe (FIFO), not an image file\n"
    assert expand_folders([str(root / "img" / "0.png")]) == [str(root / "img" / "0.png")]


def test_label_columns_are_stripped_as_the_csv_header_is():
    """``--label-columns "a, b"`` asked for a column ' b' (the header's names are stripped)."""
    import argparse

    from experiments.common import add_dataset_flags, dataset_options

    p = argparse.ArgumentParser()
    p.add_argument("--dataset")
    add_dataset_flags(p)
    args = p.parse_args(["--dataset", "csv", "--csv-file", "l.csv", "--label-columns", "a, b"])
    assert dataset_options(args)["label_columns"] == ["a", "b"]


def test_a_class_the_carve_left_out_of_training_says_what_would_help(tmp_path):
    """A rare class of three patients (10, 1 and 1 images): the test carve took the two
    small ones, the val carve the last; "no examples in the training split" was all, and a
    smaller --val-fraction then said "a larger --val-fraction" for val. Where the class has
    fewer patients than the carved splits need, no fraction helps: said so."""
    labels = ["neg"] * 40 + ["pos"] * 12
    patients = [f"n{i // 2}" for i in range(40)] + ["B0"] * 10 + ["S2", "T3"]
    root = _csv_dir(tmp_path / "d", labels, "path,label,patient", patients)
    with pytest.raises(DataError) as err:
        _load_csv(root, tmp_path / "out", group_column="patient")
    assert str(err.value) == (
        f"{root}: class 'pos' has no examples in the training split: the val and test carve "
        "took every patient of its 12 images of 3 patients; another data seed (run's "
        "--data-seed, prepare's --seed), or a smaller --val-fraction or --test-fraction, "
        "leaves one in training"
    )
    few_patients = [f"n{i // 2}" for i in range(40)] + ["P0"] * 3 + ["P1"] * 3
    few = _csv_dir(tmp_path / "e", labels[:46], "path,label,patient", few_patients)
    with pytest.raises(DataError) as err:  # test takes one patient, val the other
        _load_csv(few, tmp_path / "out", group_column="patient", val_fraction=0.5)
    assert str(err.value) == (
        f"{few}: class 'pos' has no examples in the training split: its 6 images of 2 "
        "patients are to be shared by train, val and test, and each needs one patient of it: "
        "no fraction gives that; add images of it, or drop the class"
    )
    # A split the data gives is not carved: a class only in the given test split is
    # validate's (it was told the val carve took it).
    given = _csv_dir(
        tmp_path / "g", ["neg", "pos"] * 6 + ["pos"] * 3, "path,label,split",
        ["train", "train"] * 6 + ["test"] * 3,
    )  # fmt: skip
    rows = (given / "labels.csv").read_text().splitlines()
    (given / "labels.csv").write_text(
        "\n".join([rows[0], *(r.replace(",pos,train", ",neg,train") for r in rows[1:])]) + "\n"
    )
    with pytest.raises(DataError) as err:
        _load_csv(given, tmp_path / "out", split_column="split")
    assert str(err.value).endswith(
        "class 'pos' has no examples in the training split; every class needs training examples"
    )


@pytest.mark.parametrize("split", ["val", "test"])
def test_an_empty_split_folder_is_refused_not_carved_from_train(tmp_path, split):
    """An empty test/ (its images not copied yet, or in a format not read) was "no test
    split": a carve of train/ became the test set without a word, while --test-fraction was
    refused because "test/ gives the test split"."""
    root = tmp_path / "imgs"
    for s in ("train", "val", "test"):
        _folder(root / s)
    folder = root / split
    for c in folder.iterdir():
        for f in c.iterdir():
            f.unlink()
    with pytest.raises(DataError) as err:
        _load_folder(root, tmp_path / "out")
    assert _one_line(err) == (
        f"{folder}: the {split} split folder holds no image in its subfolders (cat, dog); "
        f"expected its class folders of images, or no {split}/ (to carve {split} from train/)"
    )
    (folder / "dog" / "scan.heic").write_bytes(b"\0")
    with pytest.raises(DataError, match=r"holds no image, only 1 file\(s\) not read as images "):
        _load_folder(root, tmp_path / "out")
    for c in list(folder.iterdir()):
        shutil.rmtree(c)
    with pytest.raises(DataError, match=rf"the {split} split folder is empty; expected"):
        _load_folder(root, tmp_path / "out")
    _no_cache_written(tmp_path / "out")
    shutil.rmtree(folder)  # no folder: carved, as documented
    assert _load_folder(root, tmp_path / "out").num_examples(split) > 0
