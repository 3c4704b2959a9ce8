"""``python -m experiments.prepare``: exit codes, what it prints, what it writes."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import data_fakes as fakes
import numpy as np
import pytest

from experiments.prepare import main
from medft_jax.data import load


def test_prepare_folder_then_load(tmp_path, capsys):
    for c in ("a", "b"):
        for i in range(10):
            (tmp_path / "imgs" / c).mkdir(parents=True, exist_ok=True)
            fakes.image(10 * i + (c == "b")).save(tmp_path / "imgs" / c / f"{i}.png")
    argv = ["--dataset", "folder", "--manual-dir", str(tmp_path / "imgs")]
    argv += ["--data-dir", str(tmp_path / "out"), "--resize-size", "36", "--image-size", "32"]
    assert main([*argv, "--no-progress"]) == 0
    said = capsys.readouterr()
    assert "folder: train 14, val 2, test 4; 2 classes; images (32, 32, 3)" in said.out
    assert len(list((tmp_path / "out" / "medft_cache").rglob("meta.json"))) == 1
    # Another split seed: run's flag for it has another name, said (a run without it
    # carved and cached seed 0's split anew, without a word).
    assert "note:" not in said.err
    assert main([*argv, "--no-progress", "--seed", "3"]) == 0
    assert capsys.readouterr().err.splitlines()[-1] == (
        "note: this is the split of seed 3: a run reads it with --data-seed 3 (without it, "
        "seed 0's split is carved and cached anew)"
    )


def test_prepare_says_what_a_run_would_refuse(tmp_path, capsys):
    # One image of class "c": a 20% test carve takes it, so val has none of "c".
    for c, n in (("a", 10), ("b", 10), ("c", 1)):
        for i in range(n):
            (tmp_path / "imgs" / c).mkdir(parents=True, exist_ok=True)
            fakes.image(10 * i + ord(c)).save(tmp_path / "imgs" / c / f"{i}.png")
    argv = ["--dataset", "folder", "--manual-dir", str(tmp_path / "imgs")]
    argv += ["--data-dir", str(tmp_path / "out"), "--resize-size", "36", "--image-size", "32"]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    root = (tmp_path / "imgs").resolve()  # the dataset's folder, not "folder"
    assert err.startswith(f"error: {root}: the ") and "of class 'c'" in err
    assert len(err.splitlines()) == 1


def test_prepare_reports_bad_input_in_one_line(tmp_path, capsys):
    assert main(["--dataset", "bach", "--manual-dir", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --manual-dir {tmp_path / 'missing'} is not a directory"
    packed = tmp_path / "ICIAR2018_BACH_Challenge.zip"  # the download itself
    packed.write_bytes(b"PK\x05\x06" + bytes(18))
    assert main(["--dataset", "bach", "--manual-dir", str(packed)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --manual-dir {packed}: is the packed download, not its folder: unpack it "
        f"(into {tmp_path}), then pass the folder it makes"
    )
    assert main(["--dataset", "nosuch", "--data-dir", str(tmp_path)]) == 2
    assert "error: --dataset 'nosuch': unknown; known: demo, chexpert" in capsys.readouterr().err
    # One rule for a name with run and sweep: "@" without a size was prepared at 28 px.
    assert main(["--dataset", "medmnist/breastmnist@", "--data-dir", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err == (
        "error: --dataset 'medmnist/breastmnist@': size @ is not one of 28, 64, 128, 224\n"
    )
    # Flags that name image files, for datasets without any: refused, not ignored.
    for dataset, flag in (("medmnist/breastmnist", "--skip-bad-images"), ("demo", "--manual-dir")):
        argv = ["--dataset", dataset, flag, *([str(tmp_path)] if flag == "--manual-dir" else [])]
        assert main([*argv, "--data-dir", str(tmp_path / "d")]) == 2
        assert capsys.readouterr().err.strip() == (
            f"error: {flag} applies to the paper tasks, folder and csv only, not to --dataset "
            f"{dataset}"
        )
    # MedMNIST's file is no prepare's --manual-dir either: where it goes is said.
    argv = ["--dataset", "medmnist/breastmnist", "--manual-dir", str(tmp_path)]
    assert main([*argv, "--data-dir", str(tmp_path / "d")]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            "medmnist/breastmnist reads its .npz from --data-dir (or its medmnist/ folder): put "
            "the file there, or let prepare download it"
        )
    )
    assert not (tmp_path / "d").exists()
    # demo: nothing to prepare, and a flag that would mean something is refused, as run does.
    for flags, said in (
        (["--data-dir", str(tmp_path / "d")], "--data-dir does not apply to --dataset demo"),
        (["--image-size", "5000"], "--image-size does not apply to --dataset demo"),
        (["--arch", "vgg19"], "--arch does not apply to --dataset demo"),
        (["--seed", "-5"], "--seed does not apply to --dataset demo"),
    ):
        assert main(["--dataset", "demo", *flags]) == 2
        assert capsys.readouterr().err.startswith(f"error: {said}")
    assert main(["--dataset", "demo"]) == 0
    assert "nothing to prepare" in capsys.readouterr().out


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="needs TensorFlow")
@pytest.mark.xdist_group("tfds_prepared")  # the worker that loads TensorFlow anyway
def test_prepare_task_with_arch_resize(tmp_path, capsys):
    fakes.make_bach(tmp_path / "bach", 10)
    argv = ["--dataset", "bach", "--manual-dir", str(tmp_path / "bach")]
    argv += ["--data-dir", str(tmp_path / "out"), "--arch", "resnet50", "--no-progress"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "bach: train 32, val 4, test 4; 4 classes; images (224, 224, 3)" in out
    assert "Generating splits" not in err  # TFDS's bars too: --no-progress
    assert "already prepared" not in err
    # A second prepare printed the first's summary alone: nothing said it did nothing.
    assert main(argv) == 0
    out2, err = capsys.readouterr()
    version = tmp_path / "out" / "medft_bach" / "r232_c224_s0" / "1.0.0"
    assert out2 == out and err == (
        f"bach: already prepared in {version} from this copy of the data; reused\n"
    )
    from tensorflow_datasets.core.utils import tqdm_utils

    assert tqdm_utils._active  # TFDS's setting is as it was
    ds = load("bach", data_dir=tmp_path / "out", resize_size=232, crop_size=224)
    assert ds.metadata["resize_size"] == 232


@pytest.mark.slow  # a paper task's first prepare, with its bars
def test_a_first_prepare_prints_no_tfds_warning_about_its_own_design(tmp_path, caplog, capsys):
    """TFDS warned twice per first prepare that the variant folder "has no
    dataset_info.json" (not prepared yet: by design), and before the one-line error of a
    prepare without TensorFlow; and that the cache's PNGs decode with Pillow."""
    import logging

    fakes.make_bach(tmp_path / "bach", 10)
    argv = ["--dataset", "bach", "--manual-dir", str(tmp_path / "bach")]
    argv += ["--data-dir", str(tmp_path / "out"), "--arch", "resnet50"]
    with caplog.at_level(logging.INFO, logger="absl"):
        assert main(argv) == 0
    said = [r.getMessage() for r in caplog.records if r.name == "absl"]
    assert said and not [m for m in said if m.startswith(("Variant folder", "OpenCV"))], said
    # TFDS's "prepared to <dir>" named the temporary folder, removed a moment later.
    assert "Subsequent calls will reuse" not in capsys.readouterr().out
    # A run whose cache is built again from the prepared data (a copied --data-dir) too: in
    # a new process, as TFDS says it once per process.
    shutil.rmtree(tmp_path / "out" / "medft_cache")
    code = (
        "from medft_jax.data import load; "
        f"load('bach', data_dir={str(tmp_path / 'out')!r}, resize_size=232, crop_size=224, "
        "progress=False)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "OpenCV" not in done.stderr and "WARNING" not in done.stderr, done.stderr


needs_tf = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None, reason="needs TensorFlow"
)


@needs_tf
@pytest.mark.xdist_group("tfds_prepared")
def test_a_16_bit_image_in_a_paper_task_says_what_can_be_done(tmp_path, capsys):
    """--bits-stored is refused for the paper tasks: the error must not send the user
    there, but say what works (the official file, or an 8-bit one)."""
    import numpy as np
    from PIL import Image

    fakes.make_mura(tmp_path / "mura", parts=("XR_HUMERUS",))
    image = sorted((tmp_path / "mura" / "MURA-v1.1" / "train").rglob("*.png"))[0]
    values = np.random.default_rng(0).integers(0, 4096, (40, 37)).astype(np.uint16)
    Image.fromarray(values).save(image)
    argv = ["--dataset", "mura_humerus", "--manual-dir", str(tmp_path / "mura")]
    argv += ["--data-dir", str(tmp_path / "out"), "--resize-size", "36", "--image-size", "32"]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {image}: 16-bit image whose values all fit in 14 bits")
    assert "the official mura_humerus images are 8-bit" in err
    assert "give --bits-stored" not in err and "or --bits-stored 16" not in err
    assert not list((tmp_path / "out").rglob("*.array_record*"))


@needs_tf
@pytest.mark.xdist_group("tfds_prepared")
def test_a_full_disk_while_tfds_writes_names_the_output_folder(tmp_path, capsys, monkeypatch):
    import errno

    from medft_jax.data.builders.base import MedicalBuilder

    def full(self, **kwargs):
        Path(self.data_dir).mkdir(parents=True)  # a part written before the disk filled
        raise RuntimeError(f"ArrayRecord writer: {os.strerror(errno.ENOSPC)}")

    monkeypatch.setattr(MedicalBuilder, "download_and_prepare", full)
    fakes.make_bach(tmp_path / "bach", 10)
    out = tmp_path / "out"
    argv = ["--dataset", "bach", "--manual-dir", str(tmp_path / "bach"), "--data-dir", str(out)]
    assert main([*argv, "--resize-size", "36", "--image-size", "32", "--no-progress"]) == 1
    version_dir = out / "medft_bach" / "r36_c32_s0" / "1.0.0"
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {version_dir}: no space left on the device"]
    assert [p.name for p in version_dir.parent.iterdir()] == [".1.0.0.prepare.lock"]


@needs_tf
@pytest.mark.xdist_group("tfds_prepared")
def test_no_progress_holds_back_tfds_lines_and_warnings(tmp_path, capsys, caplog):
    fakes.make_bach(tmp_path / "bach", 10)
    argv = ["--dataset", "bach", "--manual-dir", str(tmp_path / "bach")]
    argv += ["--data-dir", str(tmp_path / "out"), "--resize-size", "36", "--image-size", "32"]
    assert main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "bach: train 32, val 4, test 4; 4 classes; images (32, 32, 3); skipped bad images: 0"
    ]
    assert not [r for r in caplog.records if r.name == "absl" and r.levelno >= 30]


@needs_tf
@pytest.mark.skipif(importlib.util.find_spec("h5py") is None, reason="needs h5py")
@pytest.mark.xdist_group("tfds_prepared")
def test_a_truncated_t1w_mat_is_named_or_skipped_and_counted(tmp_path, capsys):
    """Its label and patient are in the file, so it fails while the listing is read:
    --skip-bad-images must get past it there too, and count it as it counts bad images."""
    from medft_jax.data.cache import skipped_counts

    fakes.make_t1w_mri(tmp_path / "t1w")
    bad = tmp_path / "t1w" / "brainTumorDataPublic_1-766" / "3.mat"
    bad.write_bytes(bad.read_bytes()[:3000])
    out = tmp_path / "out"
    argv = ["--dataset", "t1w_mri", "--manual-dir", str(tmp_path / "t1w"), "--data-dir", str(out)]
    argv += ["--resize-size", "36", "--image-size", "32", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot read {bad} as MATLAB v7.3 (HDF5)")
    assert main([*argv, "--skip-bad-images"]) == 0
    cap = capsys.readouterr()
    assert cap.out.strip().endswith("; skipped bad images: 1")
    assert cap.err.strip().splitlines()[-1] == (  # named, not only counted
        "note: --skip-bad-images skipped 1 bad image(s): brainTumorDataPublic_1-766/3.mat (train)"
    )
    ds = load("t1w_mri", data_dir=out, resize_size=36, crop_size=32, progress=False)
    assert skipped_counts(ds.metadata) == {"train": 1}
    assert ds.metadata["skipped_bad_images"]["train"] == ["brainTumorDataPublic_1-766/3.mat"]
    assert sum(len(split.labels) for split in ds.splits.values()) == 35


@needs_tf
@pytest.mark.xdist_group("tfds_prepared")
def test_a_study_scored_task_says_its_counts_are_images_and_how_many_studies(tmp_path, capsys):
    """MURA printed ``test 10`` beside a task whose test samples are studies (5 of them):
    the number a user compares with the paper's study count, with no unit."""
    fakes.make_mura(tmp_path / "mura", parts=("XR_SHOULDER",), n_valid_patients=3)
    argv = ["--dataset", "mura_shoulder", "--manual-dir", str(tmp_path / "mura")]
    argv += ["--data-dir", str(tmp_path / "out"), "--resize-size", "36", "--image-size", "32"]
    assert main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "mura_shoulder: train 18, val 5, test 10 images (metrics per study: val " in out
    assert ", test 5); 2 classes; images (32, 32, 3)" in out


def test_a_task_whose_test_split_lacks_a_class_is_refused_before_anything_is_written(
    tmp_path, capsys
):
    """The refusal came after the TFDS data and its cache were written (and left): the
    next prepare of a fixed copy found them "stale" and prepared again."""
    fakes.make_cholect50(tmp_path / "chol", (1, 2, 8), 25)  # test videos: frame 0 alone
    argv = ["--dataset", "cholect50_instrument", "--manual-dir", str(tmp_path / "chol")]
    argv += ["--data-dir", str(tmp_path / "out"), "--resize-size", "36", "--image-size", "32"]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cholect50_instrument"), err
    assert "is your copy of its data complete?" in err[0]
    out = tmp_path / "out"
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


def test_skipped_note_names_each_split_s_images_and_counts_past_the_limit():
    """prepare only counted the images --skip-bad-images left out: five of one class
    looked like five anywhere, and the names sat in the cache's metadata alone."""
    from medft_jax.data.cache import skipped_note

    meta = {"skipped_bad_images": {"train": ["a/1.png", "a/2.png"], "test": ["b/3.png"]}}
    assert skipped_note(meta) == (
        "note: --skip-bad-images skipped 3 bad image(s): a/1.png (train), a/2.png (train), "
        "b/3.png (test)"
    )
    assert skipped_note(meta, limit=1) == (
        "note: --skip-bad-images skipped 3 bad image(s): a/1.png (train) and 2 more"
    )
    assert skipped_note({"skipped_bad_images": {"train": []}}) is None
    assert skipped_note({}) is None


def test_prepare_names_a_medmnist_dataset_as_runs_name_it(tmp_path, capsys):
    """``medmnist/x@28`` is ``medmnist/x`` in every run name, record and report; prepare's
    summary line said it as typed."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 10), ("val", 4), ("test", 6)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2)[:, None]
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    argv = ["--dataset", "medmnist/pneumoniamnist@28", "--data-dir", str(tmp_path)]
    assert main([*argv, "--image-size", "32", "--resize-size", "36", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("medmnist/pneumoniamnist: train 10, val 4, test 6;")


def test_resize_size_takes_every_size_an_arch_rule_makes():
    """``--arch resnet50 --image-size 1024`` prepares at 1061, which ``--resize-size 1061``
    refused (the crop's limit, 1024)."""
    import argparse

    from experiments.prepare import sizes
    from medft_jax.errors import UserError
    from medft_jax.models import get_arch

    def args(**kw):
        return argparse.Namespace(
            **{"arch": None, "resize_size": None, "image_size": 1024, "seed": 0, **kw}
        )

    made = max(get_arch(a).resize_for(1024) for a in ("resnet50", "densenet121", "vgg19"))
    assert made > 1024
    assert sizes(args(dataset="folder", resize_size=made)) == (made, 1024)
    with pytest.raises(UserError, match=r"--resize-size must be in \[32, 2048\], got 4096"):
        sizes(args(dataset="folder", resize_size=4096))
