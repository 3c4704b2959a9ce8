"""MedMNIST, folder and csv sources, preprocessing parity, and their bad-input messages."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from data_fakes import image
from PIL import Image

from medft_jax import fit
from medft_jax.data import DataError, load
from medft_jax.data.images import ImageReader, safe_join
from medft_jax.data.medmnist import parse_name
from medft_jax.data.paths import is_inside

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SIZES = {"resize_size": 36, "crop_size": 32}


def _npz(path: Path, n: dict[str, int], labels_shape: str = "Nx1", classes: int = 2) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in n.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = np.arange(count) % classes
        if labels_shape == "Nx1":
            labels = labels[:, None]
        elif labels_shape == "multi":
            labels = (rng.random((count, classes)) < 0.3).astype(np.uint8)
            labels[np.arange(classes) % count, np.arange(classes)] = 1  # each label positive
        arrays[f"{split}_labels"] = labels
    np.savez(path, **arrays)


# MedMNIST


@pytest.mark.skipif(not (SHARED_DATA / "breastmnist.npz").is_file(), reason="no ../shared/data")
def test_breastmnist_from_shared_data_flat_labels():
    ds = load("medmnist/breastmnist", data_dir=SHARED_DATA)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 546, "val": 78, "test": 156}
    assert np.bincount(ds.splits["train"].labels).tolist() == [147, 399]
    assert ds.class_names == ("malignant", "normal, benign") and not ds.multilabel
    assert ds.image_shape == (28, 28, 3)
    im = ds.splits["train"].images
    assert np.array_equal(im[..., 0], im[..., 2])  # grey repeated to RGB


def test_medmnist_nx1_labels_and_resized_cache(tmp_path):
    _npz(tmp_path / "pneumoniamnist.npz", {"train": 10, "val": 4, "test": 6})
    native = load("medmnist/pneumoniamnist", data_dir=tmp_path)
    assert native.splits["train"].labels.tolist() == [0, 1] * 5
    resized = load("medmnist/pneumoniamnist", data_dir=tmp_path, progress=False, **SIZES)
    assert resized.image_shape == (32, 32, 3)
    assert isinstance(resized.splits["test"].images, np.memmap)
    grey = native.splits["val"].images[2, ..., 0]
    expected = np.asarray(Image.fromarray(grey).convert("RGB").resize((36, 36), Image.BILINEAR))
    assert np.array_equal(resized.splits["val"].images[2], expected[2:34, 2:34])


def test_an_unscorable_medmnist_copy_is_refused_before_its_cache_is_written(tmp_path):
    """A val split without a class (an edited copy) was refused only after the whole
    resized cache was written, left behind for every later run to refuse again."""
    _npz(tmp_path / "pneumoniamnist.npz", {"train": 10, "val": 4, "test": 6})
    with np.load(tmp_path / "pneumoniamnist.npz") as f:
        arrays = {k: f[k] for k in f.files}
    arrays["val_labels"][:] = 0
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    with pytest.raises(DataError) as err:
        load("medmnist/pneumoniamnist", data_dir=tmp_path, progress=False, **SIZES)
    assert str(err.value) == (
        f"{tmp_path / 'pneumoniamnist.npz'}: the val split (4 examples) has no example of "
        "class 'pneumonia', so its AUROC is undefined and the macro means would leave it out; "
        "expected the published splits (an edited copy?)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pneumoniamnist.npz"]


def test_the_resized_cache_is_built_by_one_process_under_a_lock(tmp_path, monkeypatch):
    """It took none (folders and paper tasks do): two prepares each built the whole cache,
    and each one's swap deleted the other's under its readers. One that waited finds the
    cache another built, and reads it."""
    import contextlib

    from medft_jax import locks
    from medft_jax.data import cache, medmnist

    _npz(tmp_path / "pneumoniamnist.npz", {"train": 10, "val": 4, "test": 6})
    writes, real_write, real_lock = [], cache.write_cache, locks.build_lock
    monkeypatch.setattr(
        cache, "write_cache", lambda *a, **k: writes.append(1) or real_write(*a, **k)
    )

    @contextlib.contextmanager
    def another_built_it_meanwhile(path, what=None):
        assert path.name.startswith(".") and path.name.endswith(".lock")
        assert what == f"building the pneumoniamnist cache {path.parent / path.name[1:-5]}"
        with monkeypatch.context() as m:  # the other process, holding the lock first
            m.setattr(medmnist.locks, "build_lock", real_lock)
            load("medmnist/pneumoniamnist", data_dir=tmp_path, progress=False, **SIZES)
        with real_lock(path):
            yield

    monkeypatch.setattr(medmnist.locks, "build_lock", another_built_it_meanwhile)
    ds = load("medmnist/pneumoniamnist", data_dir=tmp_path, progress=False, **SIZES)
    assert writes == [1] and ds.image_shape == (32, 32, 3)  # built once, by the other
    load("medmnist/pneumoniamnist", data_dir=tmp_path, progress=False, **SIZES)  # fresh
    assert writes == [1]


def test_the_resized_cache_makes_no_rgb_copy_of_a_split(tmp_path, monkeypatch):
    """Grey images go RGB one at a time as they are resized: a whole split at three times
    its size (ChestMNIST at 224 px: 17 GB) is never held; the pixels are the same."""
    from medft_jax.data import medmnist

    _npz(tmp_path / "pneumoniamnist.npz", {"train": 10, "val": 4, "test": 6})
    native = load("medmnist/pneumoniamnist", data_dir=tmp_path)

    def whole_split_rgb(images):
        pytest.fail(f"an RGB copy of {images.shape}")

    monkeypatch.setattr(medmnist, "_as_rgb", whole_split_rgb)
    resized = load("medmnist/pneumoniamnist", data_dir=tmp_path, progress=False, **SIZES)
    grey = native.splits["test"].images[5, ..., 0]
    expected = np.asarray(Image.fromarray(grey).convert("RGB").resize((36, 36), Image.BILINEAR))
    assert np.array_equal(resized.splits["test"].images[5], expected[2:34, 2:34])


def test_the_resized_cache_streams_the_images_from_the_file(tmp_path, monkeypatch):
    """The first load of a flag held every split of the .npz in memory at once (about 16 GB
    for PathMNIST@224): the images are read from the file a few rows at a time as they are
    resized, with the pixels of the whole-file load, from a compressed file too."""
    from medft_jax.data import medmnist

    path = tmp_path / "pneumoniamnist.npz"
    _npz(path, {"train": 23, "val": 4, "test": 6})
    with np.load(path) as f:
        np.savez_compressed(path, **{k: f[k] for k in f.files})  # as the release is written
    native = load("medmnist/pneumoniamnist", data_dir=tmp_path)
    real = medmnist._array

    def labels_only(npz, where, key):
        assert key.endswith("_labels"), f"{key} read whole"
        return real(npz, where, key)

    monkeypatch.setattr(medmnist, "_array", labels_only)
    monkeypatch.setattr(medmnist, "STREAM_ROWS", 5)  # 23 rows: five reads, the last of 3
    resized = load("medmnist/pneumoniamnist", data_dir=tmp_path, progress=False, **SIZES)
    for i in (0, 4, 5, 22):
        grey = native.splits["train"].images[i, ..., 0]
        rgb = Image.fromarray(grey).convert("RGB").resize((36, 36), Image.BILINEAR)
        assert np.array_equal(resized.splits["train"].images[i], np.asarray(rgb)[2:34, 2:34])
    assert resized.splits["train"].labels.tolist() == native.splits["train"].labels.tolist()


def test_chestmnist_is_multilabel(tmp_path):
    _npz(tmp_path / "chestmnist.npz", {"train": 6, "val": 2, "test": 2}, "multi", 14)
    ds = load("medmnist/chestmnist", data_dir=tmp_path)
    assert ds.multilabel and ds.num_classes == 14
    assert ds.splits["train"].labels.shape == (6, 14)
    assert ds.splits["train"].labels.dtype == np.float32


def test_medmnist_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="unknown MedMNIST flag 'nosuch'"):
        parse_name("medmnist/nosuch")
    with pytest.raises(DataError) as err:  # was "unknown MedMNIST flag" from the library
        parse_name("medmnist/organmnist3d")
    assert str(err.value).startswith(
        "'medmnist/organmnist3d': 'organmnist3d' is one of MedMNIST's 3D datasets (volumes)"
    )
    with pytest.raises(DataError, match=r"size '100' .* is not one of"):
        parse_name("medmnist/breastmnist@100")
    for spelling in ("028", "+28", " 28", "x", ""):  # run and sweep refuse these names
        with pytest.raises(DataError, match=rf"size '{re.escape(spelling)}' in .* is not one"):
            parse_name(f"medmnist/breastmnist@{spelling}")
    assert parse_name("medmnist/breastmnist@64") == ("breastmnist", 64)
    _npz(tmp_path / "breastmnist.npz", {"train": 4, "val": 2, "test": 2}, classes=3)
    with pytest.raises(DataError, match="train_labels holds label 2 outside the 2 classes"):
        load("medmnist/breastmnist", data_dir=tmp_path)
    # A huge float label is named as the file holds it (a cast wrapped 1e20 around to
    # -9223372036854775808, after a numpy RuntimeWarning).
    for value, shown in ((1e20, "1e+20"), (np.uint64(2**64 - 1), str(2**64 - 1))):
        _npz(tmp_path / "breastmnist.npz", {"train": 4, "val": 2, "test": 2})
        with np.load(tmp_path / "breastmnist.npz") as npz:
            arrays = dict(npz)
        arrays["val_labels"] = arrays["val_labels"].astype(np.asarray(value).dtype)
        arrays["val_labels"][0] = value
        np.savez(tmp_path / "breastmnist.npz", **arrays)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(DataError, match=rf"val_labels holds label {re.escape(shown)} "):
                load("medmnist/breastmnist", data_dir=tmp_path)
    np.savez(tmp_path / "octmnist.npz", train_images=np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(DataError, match="missing array 'train_labels'"):
        load("medmnist/octmnist", data_dir=tmp_path)


def test_medmnist_refuses_pickled_npz(tmp_path):
    np.savez(
        tmp_path / "bloodmnist.npz",
        **{
            f"{s}_{k}": np.array([object()])
            for s in ("train", "val", "test")
            for k in ("images", "labels")
        },
    )
    # Refused from its header's dtype, before numpy is asked to read (or unpickle) anything.
    with pytest.raises(ValueError, match=r"\.npz: train_images must be uint8, got object"):
        load("medmnist/bloodmnist", data_dir=tmp_path)


def test_medmnist_npz_declaring_huge_images_is_refused_before_reading_them(tmp_path):
    """A 186 KB .npz whose train_images declared 546×100000×100000 asked numpy for 4.97 TiB
    (a MemoryError traceback from prepare and run)."""
    import io
    import zipfile

    path = tmp_path / "breastmnist.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for split in ("train", "val", "test"):
            head = io.BytesIO()
            header = {"descr": "|u1", "fortran_order": False, "shape": (546, 100000, 100000)}
            np.lib.format.write_array_header_1_0(head, header)
            z.writestr(f"{split}_images.npy", head.getvalue() + bytes(1024))
            buf = io.BytesIO()
            np.save(buf, np.zeros(546, np.uint8))
            z.writestr(f"{split}_labels.npy", buf.getvalue())
    with pytest.raises(ValueError) as e:
        load("medmnist/breastmnist", data_dir=tmp_path)
    assert str(e.value).startswith(
        f"{path}: train_images are 100000×100000, expected 28×28 (the file's name says 28 px)"
    )


# Preprocessing: equal to torchvision's Resize + CenterCrop on PIL images


@pytest.mark.xdist_group("torch")  # the worker that imports torch anyway (tests/conftest.py)
@pytest.mark.slow
def test_reader_equals_torchvision_transforms(tmp_path):
    tv = pytest.importorskip("torchvision.transforms", reason="torchvision not installed")
    for k, (size, mode) in enumerate([((40, 48), "RGB"), ((61, 37), "L"), ((32, 32), "RGB")]):
        path = tmp_path / f"im{k}.png"
        image(k, size, mode).save(path)
        ours = ImageReader(36, 32).read(path)
        pipeline = tv.Compose([tv.Resize(36), tv.CenterCrop(32)])
        theirs = np.asarray(pipeline(Image.open(path).convert("RGB")))
        assert ours.shape == (32, 32, 3) and ours.dtype == np.uint8
        assert np.array_equal(ours, theirs)


# folder


def _folder(root: Path, per_class: int = 10) -> None:
    for c, name in enumerate(("cat", "dog")):
        for i in range(per_class):
            (root / name).mkdir(parents=True, exist_ok=True)
            image(100 * c + i).save(root / name / f"{i}.png")


def test_folder_carve_refusal_names_the_lone_class(tmp_path):
    """A class of one image, which no fraction leaves in both train and test, was named by
    its index ("class 0"): the folder's name says which."""
    _folder(tmp_path / "imgs", per_class=1)
    with pytest.raises(DataError, match=r"expected more images: class 'cat' has all its images"):
        load("folder", manual_dir=tmp_path / "imgs", data_dir=tmp_path / "out", **SIZES)


def test_folder_counts_labels_and_splits(tmp_path):
    _folder(tmp_path / "imgs")
    ds = load(
        "folder", manual_dir=tmp_path / "imgs", data_dir=tmp_path / "out", progress=False, **SIZES
    )
    assert ds.class_names == ("cat", "dog")
    counts = {k: len(v) for k, v in ds.splits.items()}
    assert counts == {"train": 14, "val": 2, "test": 4} and sum(counts.values()) == 20
    ids = np.concatenate([s.ids for s in ds.splits.values()])
    assert len(set(ids.tolist())) == 20
    for split in ds.splits.values():
        assert np.array_equal(split.labels, [0 if i.startswith("cat") else 1 for i in split.ids])
    first = ds.splits["train"]
    expected = ImageReader(36, 32).read(tmp_path / "imgs" / first.ids[0])
    assert np.array_equal(first.images[0], expected)


def test_loads_that_meet_build_the_folder_cache_once(tmp_path, monkeypatch, capfd):
    """A multi-host job's processes (or a sweep's workers) each decoded every image; the
    second now waits on the cache's lock and reads the first's (flock excludes two opens
    of the file even in one process, so threads stand in for processes)."""
    import threading
    import time

    from medft_jax.data import cache

    _folder(tmp_path / "imgs")
    real, builds = cache.write_cache, []

    def slow_write(*args, **kwargs):
        builds.append(threading.get_ident())
        time.sleep(0.3)  # the other load arrives meanwhile
        return real(*args, **kwargs)

    monkeypatch.setattr(cache, "write_cache", slow_write)
    kw = {"manual_dir": tmp_path / "imgs", "data_dir": tmp_path / "out", "progress": False}
    loaded = []
    threads = [
        threading.Thread(target=lambda: loaded.append(load("folder", **kw, **SIZES)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len(loaded) == 2
    assert loaded[0].metadata["fingerprint"] == loaded[1].metadata["fingerprint"]
    # The one waiting says so, once (a large folder's minutes of silence looked hung).
    waited = [x for x in capfd.readouterr().err.splitlines() if "waiting for it" in x]
    assert len(waited) == 1 and waited[0].endswith("; waiting for it")
    assert waited[0].startswith(
        f"note: another process is building the folder cache {tmp_path / 'out'}/"
    )
    # A fresh cache is read without the lock: a read-only --data-dir still loads.
    monkeypatch.setattr(
        "medft_jax.locks.waiting_lock", lambda path, waiting=None: pytest.fail("locked")
    )
    assert (
        load("folder", **kw, **SIZES).metadata["fingerprint"] == loaded[0].metadata["fingerprint"]
    )


def test_split_folders_are_known_by_their_usual_names_and_strays_refused(tmp_path):
    from medft_jax.data.folder import parse_folder

    def tree(root: Path, **splits: int) -> Path:
        for split, n in splits.items():
            _folder(root / split, n)
        return root

    # Kaggle's brain-MRI layout: Training/ and Testing/ are splits, not two classes.
    names, splits = parse_folder(tree(tmp_path / "a", Training=10, Testing=3))
    assert names == ["cat", "dog"]
    assert {k: len(v) for k, v in splits.items()} == {"train": 18, "val": 2, "test": 6}
    assert {i.id.split("/")[0] for i in splits["test"]} == {"Testing"}
    # validation/ is the val split, not ignored while val is carved from train.
    _, splits = parse_folder(tree(tmp_path / "b", train=5, validation=2, TEST=3))
    assert {k: len(v) for k, v in splits.items()} == {"train": 10, "val": 4, "test": 6}
    assert {i.id.split("/")[0] for i in splits["val"]} == {"validation"}
    # A fraction for a split a folder gives would change nothing but the cache's name.
    with pytest.raises(DataError, match=r"a: test_fraction \(--test-fraction\) 0.4 does not "):
        parse_folder(tmp_path / "a", test_fraction=0.4)  # Testing/ gives it
    _, carved = parse_folder(tmp_path / "a", val_fraction=0.5)  # val is carved: it applies
    assert {k: len(v) for k, v in carved.items()} == {"train": 10, "val": 10, "test": 6}
    _, carved_at_0 = parse_folder(tmp_path / "a")
    _, seeded = parse_folder(tmp_path / "a", seed=3)  # a seed carves another val: it applies
    assert {e.id for e in seeded["val"]} != {e.id for e in carved_at_0["val"]}
    # Every split given: a data seed carves nothing; "--data-seed 0 1 2" were one split.
    with pytest.raises(DataError) as e:
        parse_folder(tmp_path / "b", seed=1)
    assert str(e.value) == (
        f"{tmp_path / 'b'}: data seed 1 does not apply: train/, val/ and test/ give every "
        "split, so nothing is carved; leave it out"
    )
    refused = [
        (dict(train=3, val=1, valid=1), r"folders \['val', 'valid'\] hold the same split \(val\)"),
        (
            dict(train=3, extra=1),
            r"folder 'extra' beside the split folders is not train, val or "
            r"test, and no split reaches its 2 image\(s\) \(e\.g\. extra/cat/0\.png\)",
        ),
        (dict(val=1, test=1), r"split folder\(s\) \['test', 'val'\] but no train folder"),
    ]
    for i, (splits_, message) in enumerate(refused):
        with pytest.raises(DataError, match=message):
            parse_folder(tree(tmp_path / f"bad{i}", **splits_))


def test_images_outside_every_class_folder_are_refused_and_a_dicomdir_left_out(tmp_path, capsys):
    from medft_jax.data.folder import parse_folder

    for where in ("flat", "split", "pre"):
        root = tmp_path / where
        _folder(root / "train" if where != "flat" else root, 5)
        loose = {"flat": root, "split": root / "train", "pre": root}[where] / "stray.png"
        image(7).save(loose)
        with pytest.raises(DataError, match=rf"{loose.parent}: 1 image\(s\) outside every class"):
            parse_folder(root)
    # A DICOM export's index file carries the DICOM marker but is no image.
    _folder(tmp_path / "pacs", 5)
    (tmp_path / "pacs" / "cat" / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    _, splits = parse_folder(tmp_path / "pacs")
    assert sum(len(v) for v in splits.values()) == 10
    err = capsys.readouterr().err  # not told to be renamed .png, as a suffix-less file is
    assert "not read as images left out (DICOMDIR, a DICOM export's index, 1)\n" in err
    assert "(no suffix)" not in err


def test_folder_empty_class_is_named(tmp_path):
    _folder(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "empty").mkdir()
    with pytest.raises(DataError, match=r"class folder .*empty is empty"):
        load("folder", manual_dir=tmp_path / "imgs", data_dir=tmp_path / "out", **SIZES)


def test_an_unzipped_archives_macosx_folder_is_not_a_class(tmp_path):
    """A macOS zip leaves __MACOSX/<class>/._x.png resource forks: not a third class."""
    from medft_jax.data.folder import parse_folder

    _folder(tmp_path / "imgs")
    forks = tmp_path / "imgs" / "__MACOSX" / "a"
    forks.mkdir(parents=True)
    (forks / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    classes, splits = parse_folder(tmp_path / "imgs")
    assert "__MACOSX" not in classes and len(classes) == 2
    assert not any("__MACOSX" in str(e.path) for v in splits.values() for e in v)


def test_corrupt_image_named_or_skipped_and_counted(tmp_path):
    _folder(tmp_path / "imgs")
    bad = tmp_path / "imgs" / "dog" / "7.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated PNG
    with pytest.raises(DataError, match=r"corrupt or unreadable image .*dog/7\.png") as e:
        load(
            "folder",
            manual_dir=tmp_path / "imgs",
            data_dir=tmp_path / "out",
            progress=False,
            **SIZES,
        )
    # The flag past it named, as predict names it: the error is one line.
    assert str(e.value).endswith(
        "; --skip-bad-images leaves out such files, counted, and reads the others"
    )
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "out").rglob("meta.json"))  # nothing half-prepared looks done
    assert not (tmp_path / "out" / "medft_cache").exists()  # nor an empty folder
    ds = load(
        "folder",
        manual_dir=tmp_path / "imgs",
        data_dir=tmp_path / "out",
        skip_bad_images=True,
        progress=False,
        **SIZES,
    )
    skipped = ds.metadata["skipped_bad_images"]
    assert sum(len(v) for v in skipped.values()) == 1
    assert [i for v in skipped.values() for i in v] == ["dog/7.png"]
    assert sum(len(s) for s in ds.splits.values()) == 19
    # A run's record says so (and the run command prints it).
    (split,) = [k for k, v in skipped.items() if v]
    assert fit._skipped_images(ds) == {"skipped_bad_images": {split: 1}}
    # A later load that does not skip bad images is not served the cache that did.
    with pytest.raises(DataError, match=r"corrupt or unreadable image .*dog/7\.png"):
        load(
            "folder",
            manual_dir=tmp_path / "imgs",
            data_dir=tmp_path / "out",
            progress=False,
            **SIZES,
        )


def test_skipping_every_image_of_a_class_is_refused(tmp_path):
    _folder(tmp_path / "imgs")
    for p in (tmp_path / "imgs" / "dog").iterdir():
        p.write_bytes(b"not a png")
    kw = {"data_dir": tmp_path / "out", "skip_bad_images": True, "progress": False, **SIZES}
    with pytest.raises(
        DataError,
        match=r"class 'dog' has no training images left after skipping 7 bad image\(s\) "
        r"\(--skip-bad-images\)",
    ):
        load("folder", manual_dir=tmp_path / "imgs", **kw)
    assert not list((tmp_path / "out").rglob("meta.json"))


def test_a_class_that_skipping_took_from_val_names_the_skipped_file_and_the_folder(tmp_path):
    """Splits are carved before decoding: --skip-bad-images can take a class's only val
    image away after. The refusal says so (a larger --val-fraction is not the fix) and
    names the dataset's folder, not ``folder``, which every user's dataset is called."""
    root = tmp_path / "imgs"
    for split, n in (("train", 4), ("val", 1), ("test", 2)):
        for c, name in enumerate(("cat", "dog")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                image(100 * c + 10 * len(split) + i).save(root / split / name / f"{i}.png")
    (root / "val" / "dog" / "0.png").write_bytes(b"not a png")
    kw = {"data_dir": tmp_path / "out", "skip_bad_images": True, "progress": False, **SIZES}
    ds = load("folder", manual_dir=root, **kw)
    with pytest.raises(DataError) as e:
        ds.check_scorable()
    assert str(e.value) == (
        f"{root.resolve()}: the val split (1 example) has no example of class 'dog', so its "
        "AUROC is undefined and the macro means would leave it out; --skip-bad-images left out "
        "1 of its files (e.g. val/dog/0.png): repair or replace it; val/ gives the val split, so "
        "no --val-fraction applies: add images of it there, or drop the class"
    )


# csv


def _folders(root: Path, counts: dict[str, int]) -> Path:
    """``{relative folder: image count}`` of small PNGs under ``root``."""
    for k, (rel, n) in enumerate(counts.items()):
        (root / rel).mkdir(parents=True)
        for i in range(n):
            image(1000 * k + i, (20, 20)).save(root / rel / f"{i}.png")
    return root


@pytest.mark.parametrize(
    ("counts", "hint"),
    [
        (
            {"train/a": 4, "train/b": 4, "val/a": 2, "test/a": 2, "test/b": 2},
            "val/ gives the val split, so no --val-fraction applies: add images of it there, "
            "or drop the class",
        ),
        (
            {"a": 10, "b": 1},
            "it has 1 image across train, val and test, and each of those splits needs one "
            "image of it: no fraction gives that; add images of it, or drop the class",
        ),
    ],
    ids=["given", "too-few"],
)
def test_a_val_split_without_a_class_is_refused_from_the_listing(tmp_path, counts, hint):
    """A dry run reads the listing only (local_state); the split lacking a class was found
    at each run's start, after the dry run passed: a sweep repeated it once per run."""
    from medft_jax.data.local import local_state

    root = _folders(tmp_path / "imgs", counts)
    kw = {"manual_dir": root, "data_dir": tmp_path / "out", **SIZES}
    for check in (local_state, load):
        with pytest.raises(DataError) as e:
            check("folder", **kw)
        n = 2 if "val/a" in counts else 1
        assert str(e.value) == (
            f"{root}: the val split ({n} example{'s' * (n != 1)}) has no example of class 'b', "
            f"so its AUROC is undefined and the macro means would leave it out; {hint}"
        )
    assert not (tmp_path / "out").exists()  # refused before any image was decoded


@pytest.mark.parametrize(
    ("y", "hint"),
    [
        ("0", "no positive of class 'y', so its AUROC is undefined and the macro means would "
         "leave it out; column 'split' gives the test split, so no --test-fraction applies: "
         "add images of it there"),
        ("1", "only positives of class 'y', so its AUROC is undefined and the macro means "
         "would leave it out; column 'split' gives the test split, so no --test-fraction "
         "applies: add images without it there"),
    ],
    ids=["no-positive", "only-positives"],
)  # fmt: skip
def test_a_split_columns_split_lacking_a_label_value_says_to_add_images_there(tmp_path, y, hint):
    """The hint named a larger --test-fraction, which is refused with --split-column; and
    "more images of it" for a column of only positives, which needs negatives."""
    rows = [
        f"img/{i}.jpg,{i % 2},{y if i >= 8 else (i // 2) % 2},{'train' if i < 6 else 'test'}"
        for i in range(12)
    ]
    rows[6:8] = ["img/6.jpg,0,0,val", "img/7.jpg,1,1,val"]
    _csv_layout(tmp_path / "d", "file,x,y,split", rows)
    with pytest.raises(DataError) as e:
        load(
            "csv",
            manual_dir=tmp_path / "d",
            data_dir=tmp_path / "out",
            csv_file="labels.csv",
            path_column="file",
            label_columns=["x", "y"],
            split_column="split",
            **SIZES,
        )
    assert str(e.value) == (
        f"{tmp_path / 'd'}: the test split (4 examples) has {hint}, or leave its column out "
        "of --label-columns"
    )


def _csv_layout(root: Path, header: str = "path,label,patient", rows=None) -> None:
    for i in range(12):
        (root / "img").mkdir(parents=True, exist_ok=True)
        image(500 + i).save(root / "img" / f"{i}.jpg")
    if rows is None:
        rows = [f"img/{i}.jpg,{'benign' if i % 2 else 'malignant'},p{i // 2}" for i in range(12)]
    (root / "labels.csv").write_text(header + "\n" + "\n".join(rows) + "\n")


def test_csv_single_label_with_groups(tmp_path):
    _csv_layout(tmp_path / "d")
    ds = load(
        "csv",
        manual_dir=tmp_path / "d",
        data_dir=tmp_path / "out",
        csv_file="labels.csv",
        group_column="patient",
        progress=False,
        **SIZES,
    )
    assert ds.class_names == ("benign", "malignant")
    patients = {k: set(v.patients.tolist()) for k, v in ds.splits.items()}
    assert not patients["train"] & patients["test"] and not patients["train"] & patients["val"]
    assert sum(len(s) for s in ds.splits.values()) == 12
    for split in ds.splits.values():
        numbers = [int(i.split("/")[1].split(".")[0]) for i in split.ids]
        assert split.labels.tolist() == [0 if n % 2 else 1 for n in numbers]


def test_csv_multilabel_and_split_column(tmp_path):
    rows = [
        f"img/{i}.jpg,{i % 2},{(i // 2) % 2},{['train', 'val', 'test'][i % 3]}" for i in range(12)
    ]
    _csv_layout(tmp_path / "d", "file,a,b,split", rows)
    ds = load(
        "csv",
        manual_dir=tmp_path / "d",
        data_dir=tmp_path / "out",
        csv_file="labels.csv",
        path_column="file",
        label_columns=["a", "b"],
        split_column="split",
        progress=False,
        **SIZES,
    )
    assert ds.multilabel and ds.class_names == ("a", "b")
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 4, "val": 4, "test": 4}
    # rows 1, 4, 7, 10: a = i % 2, b = (i // 2) % 2
    assert ds.splits["val"].labels.tolist() == [[1, 0], [0, 0], [1, 1], [0, 1]]
    from medft_jax.data.table import parse_table

    with pytest.raises(DataError, match=r"labels\.csv: val_fraction \(--val-fraction\) 0\.3 "):
        parse_table(
            tmp_path / "d",
            csv_file="labels.csv",
            path_column="file",
            label_columns=["a", "b"],
            split_column="split",
            val_fraction=0.3,
        )


@pytest.mark.parametrize(
    ("header", "rows", "options", "message"),
    [
        (
            "path,diagnosis",
            None,
            {},
            r"labels\.csv: missing column 'label'; expected the header path,label",
        ),
        (
            "path,label",
            ["../outside.jpg,benign"],
            {},
            r"image path '\.\./outside\.jpg' escapes the dataset root",
        ),
        ("path,label", ["/etc/passwd,benign"], {}, r"escapes the dataset root"),
        (
            "path,label",
            ["img/0.jpg,cyst"],
            {"class_names": ["benign", "malignant"]},
            r"labels\.csv:2: label 'cyst' outside the class list \['benign', 'malignant'\]",
        ),
        (
            "path,label",
            [f"img/{i}.jpg,benign" for i in range(12)],
            {"class_names": ["benign", "malignant"]},
            r"class 'malignant' has no examples",
        ),
        (
            "path,label",
            ["img/0.jpg,benign", "img/1.jpg,malignant"],
            {},
            r"labels\.csv: --test-fraction 0\.2: the test split takes 0 of the 2 images, "
            r"leaving 2 to train and validate on; expected more images: class 'benign' has all its "
            r"images here from one image, which one split or the other takes whole, so no "
            r"fraction leaves it in both; add images of it, or drop the class",
        ),
        (  # a pilot of two patients, one per class: "a fraction that leaves both" misled
            "path,label,patient",
            [f"img/{i}.jpg,{'ab'[i // 3]},P{i // 3}" for i in range(6)],
            {"group_column": "patient"},
            r"labels\.csv: --test-fraction 0\.2: the test split takes 6 of the 6 images, "
            r"leaving 0 to train and validate on; expected more patients: class 'a' has all its "
            r"images here from one patient, which one split or the other takes whole",
        ),
    ],
)
def test_csv_bad_inputs_by_message(tmp_path, header, rows, options, message):
    _csv_layout(tmp_path / "d", header, rows)
    if header == "path,diagnosis":
        (tmp_path / "d" / "labels.csv").write_text("path,diagnosis\nimg/0.jpg,benign\n")
    with pytest.raises(DataError, match=message):
        load(
            "csv",
            manual_dir=tmp_path / "d",
            data_dir=tmp_path / "out",
            csv_file="labels.csv",
            progress=False,
            **options,
            **SIZES,
        )


def test_symlink_escaping_the_root_is_refused(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "secret.jpg").write_bytes(b"x")
    (tmp_path / "root" / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    with pytest.raises(DataError, match="escapes the dataset root"):
        safe_join(tmp_path / "root", "link.jpg", source="list.csv")


def test_a_sibling_folder_sharing_the_roots_name_is_outside(tmp_path):
    """Inside is by path component: ``root2`` is not inside ``root``, though it starts so."""
    (tmp_path / "root").mkdir()
    (tmp_path / "root2").mkdir()
    (tmp_path / "root2" / "a.jpg").write_bytes(b"x")
    (tmp_path / "root" / "b.jpg").write_bytes(b"x")
    real = tmp_path.resolve()
    assert safe_join(tmp_path / "root", "b.jpg", source="l.csv") == real / "root" / "b.jpg"
    assert safe_join(tmp_path / "root", "sub/../b.jpg", source="l.csv") == real / "root" / "b.jpg"
    with pytest.raises(DataError, match=r"^l\.csv: image path '\.\./root2/a\.jpg' escapes"):
        safe_join(tmp_path / "root", "../root2/a.jpg", source="l.csv")
    assert is_inside("/", "/data") and is_inside("/data/x", "/data/x")
    assert not is_inside("/data/x", "/data/xy/a.png") and not is_inside("/data/x", "/data")


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(
        DataError,
        match=r"unknown dataset 'imagenet'; known datasets: demo, chexpert, .*bach.*folder, csv",
    ):
        load("imagenet")


def test_local_sources_need_a_manual_dir(tmp_path):
    with pytest.raises(DataError, match="dataset 'folder' needs --manual-dir"):
        load("folder", data_dir=tmp_path)
    shutil.rmtree(tmp_path)


def test_the_task_option_choices_are_the_builders():
    """The command line's and the grid check's copy (no TFDS import) of what the tasks take."""
    from medft_jax.data.builders.chexpert import POLICIES
    from medft_jax.data.builders.isic2020 import SPLIT_BY
    from medft_jax.data.options import OPTION_CHOICES

    assert OPTION_CHOICES == {"uncertain": POLICIES, "split_by": SPLIT_BY}
