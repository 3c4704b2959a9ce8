"""Frozen features computed once: the split models, the schedule's head-only epochs, the cache."""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medft_jax import features, fit, locks, strategies
from medft_jax.config import numerics_version
from medft_jax.data.arrays import ArraySplit
from medft_jax.data.dataset import Dataset
from medft_jax.data.demo import load_demo
from medft_jax.models import create, densenet, get_arch, init_variables, variable_shapes, vgg

SIZES = {"train": 32, "val": 16, "test": 16}


@pytest.fixture(scope="module")
def demo():
    return load_demo(seed=0, image_size=32, sizes=SIZES)


@pytest.fixture(scope="module")
def trainers():
    """Shared by the module's runs: each stage's steps compile once."""
    return {}


def _config(strategy: str, frozen_bn: str = "freeze", **options) -> fit.RunConfig:
    return fit.RunConfig(
        dataset="demo",
        arch="resnet_tiny",
        strategy=strategy,
        lr=1e-3,
        epochs=3,
        batch_size=8,
        image_size=32,
        weights="none",
        frozen_bn=frozen_bn,
        strategy_options=tuple(options.items()),
    )


def _numbers(record: dict) -> list[float]:
    out = []
    for e in record["epochs"]:
        out += [e["train_loss"], *e["val"].values()]
    return out + list(record["test"].values())


@pytest.mark.slow  # the fast tier's cached LP run equals the uncached one through both parts
def test_resnet_head_of_backbone_is_the_whole_model():
    model = create("resnet_tiny", 3)
    v = init_variables(model, 0, 32)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))

    @jax.jit
    def both(v, x):  # one program: eager op-by-op dispatch of a ResNet is slow
        feats = model.apply(v, x, part="backbone")
        return feats, model.apply(v, feats, part="head"), model.apply(v, x)

    feats, head, whole = both(v, x)
    assert feats.shape == (2, 2048)
    np.testing.assert_allclose(head, whole, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="part must be one of"):
        model.apply(v, x, part="neck")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "head_path", "dropout"),
    # DenseNet-121's and VGG-19's classes at a few layers each: the split into
    # backbone and head is the same module code at any depth, and a few layers
    # compile in seconds (DenseNet-121 itself takes half a minute here).
    [
        pytest.param(
            densenet.DenseNet(2, block_config=(1, 1, 1, 1)), ("classifier",), False, id="densenet"
        ),
        pytest.param(vgg.VGG(2, cfg=(8, "M", 16, "M")), ("classifier", "6"), True, id="vgg"),
        pytest.param(create("resnet_tiny", 2), ("fc",), False, id="resnet"),
    ],
)
# bf16: XLA may keep the pooled features in float32 inside the whole model's fusion;
# the cut rounds them (features_as_computed), so a cached bf16 run equals an uncached one.
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
def test_head_of_backbone_is_the_whole_model_dropout_masks_included(
    model, head_path, dropout, dtype
):
    model = model.clone(dtype=dtype)
    # 64 px: the last feature map is 2x2, so the pool averages (at 1x1 it copies)
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    v = init_variables(model, 0, 32)
    rng = {"dropout": jax.random.key(7)}
    if not dropout:
        # torchvision's DenseNet-121 has no dropout (drop_rate=0): its training
        # mode draws no random numbers (it runs without a dropout RNG; a live
        # dropout would raise here), so it computes the inference mode's
        # outputs, which are checked below: no dropout variants to compile.
        jax.eval_shape(lambda v, x: model.apply(v, x, deterministic=False), v, x)

    # Three programs, as a cached run computes its features and its head apart from
    # an uncached run's whole model (one program would let XLA share the backbone).
    @jax.jit
    def backbone(v, x):
        return model.apply(v, x, part="backbone")

    @jax.jit
    def head_of(v, feats):
        out = (model.apply(v, feats, part="head"),)
        if dropout:
            out += (model.apply(v, feats, part="head", deterministic=False, rngs=rng),)
        return out

    @jax.jit
    def whole_of(v, x):
        out = (model.apply(v, x),)
        if dropout:
            out += (model.apply(v, x, deterministic=False, rngs=rng),)
        return out

    feats = backbone(v, x)
    (head, *head_dropped), (whole, *whole_dropped) = head_of(v, feats), whole_of(v, x)
    dropped = (*head_dropped, *whole_dropped)
    head_kernel = functools.reduce(dict.__getitem__, head_path, v["params"])["kernel"]
    assert head_kernel.shape[1] == 2 and feats.shape == (2, head_kernel.shape[0])
    np.testing.assert_allclose(head, whole, rtol=1e-6, atol=1e-6)
    if dropout:
        head_dropped, whole_dropped = dropped
        np.testing.assert_allclose(head_dropped, whole_dropped, rtol=1e-6, atol=1e-6)
        # The dropout is live: the masks, not luck, make them equal.
        assert not np.allclose(whole_dropped, whole)


@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
def test_head_only_epochs_of_each_strategy():
    params = variable_shapes("resnet_tiny", 2)["params"]
    partition = get_arch("resnet_tiny").partition

    def head_only(name, frozen_bn, epochs=4, **kw):
        s = strategies.make(
            name,
            params,
            partition,
            learning_rate=1e-3,
            steps_per_epoch=2,
            frozen_bn=frozen_bn,
            **({"pretrained": params} if name.endswith("_sp") else {}),
            **kw,
        ).schedule
        return [s.head_only(e) for e in range(epochs)]

    assert head_only("lp", "freeze") == [True] * 4
    assert head_only("lp", "update") == [False] * 4
    assert head_only("lp_ft", "freeze", lp_epochs=2) == [True, True, False, False]
    assert head_only("g_lf", "freeze", epochs_per_stage=1) == [True, False, False, False]
    assert head_only("g_fl", "freeze", epochs_per_stage=1) == [False] * 4
    assert head_only("ft", "freeze") == [False] * 4
    # Without BatchNorm (VGG-19) the frozen layers are fixed under 'update' too.
    assert [s.head_only(e, batchnorm=False) for e in range(2) for s in [
        strategies.make("lp", params, partition, learning_rate=1e-3, frozen_bn="update").schedule
    ]] == [True, True]  # fmt: skip
    from medft_jax.config import may_cache_features
    from medft_jax.names import ARCHS, ARCHS_WITHOUT_BATCHNORM, TEST_ARCHS

    for arch in (*ARCHS, *TEST_ARCHS):  # the commands' list agrees with the models
        assert (arch in ARCHS_WITHOUT_BATCHNORM) == (
            not variable_shapes(arch, 2).get("batch_stats")
        )
    config = _config("lp", "update")
    assert not may_cache_features(config)
    assert may_cache_features(dataclasses.replace(config, arch="vgg19"))
    assert not may_cache_features(dataclasses.replace(config, arch="vgg19", strategy="ft"))


@pytest.mark.xdist_group("resnet_tiny")
@pytest.mark.parametrize(
    ("strategy", "options"),
    [
        ("lp", {}),
        # G-LF switches from cached features to images after its first epoch, as
        # LP-FT does after its LP phase: one switch is enough for the slow tier.
        pytest.param("g_lf", {"epochs_per_stage": 1}, marks=pytest.mark.slow),
    ],
)
def test_cached_run_records_the_uncached_run(
    demo, tmp_path, trainers, strategy, options, monkeypatch, capsys
):
    # Two epochs: LP's features are read again in the second; G-LF leaves them.
    config = dataclasses.replace(_config(strategy, **options), epochs=2)
    kw = {"dataset": demo, "progress": False, "trainers": trainers}
    # The uncached run: a cache that cannot be written (a full disk, found when its
    # blocks are reserved: a memmap page it cannot back would be a silent SIGBUS) falls
    # back to the images, which is what feature_cache=False does from the start.
    with monkeypatch.context() as m:

        def full_disk(fd, offset, length):
            raise OSError(errno.ENOSPC, "No space left on device")

        m.setattr(os, "posix_fallocate", full_disk)
        plain = fit.run_one(config, tmp_path / "a", **kw)
    assert not plain["features"]["used"]
    assert "No space left on device" in plain["features"]["reason"]
    assert not [p for p in (tmp_path / "a" / "features").rglob("*") if p.is_file()]
    assert not any(e.get("from_features", False) for e in plain["epochs"])
    assert "training the head from the images instead" in capsys.readouterr().err
    cached = fit.run_one(config, tmp_path / "b", **kw)
    np.testing.assert_allclose(_numbers(cached), _numbers(plain), rtol=1e-5, atol=1e-6)
    assert cached["best_epoch"] == plain["best_epoch"]
    flags = [e.get("from_features", False) for e in cached["epochs"]]
    assert flags == {"lp": [True, True], "g_lf": [True, False]}[strategy]
    info = cached["features"]
    assert info["used"] and not info["reused"] and info["seconds"] >= 0
    assert 0 <= info["extract_seconds"] <= info["seconds"]  # compilation left out of both
    stored = np.load(f"{info['directory']}/train.npy", mmap_mode="r")
    assert isinstance(stored, np.memmap) and stored.shape == (SIZES["train"], 2048)
    # Test is scored once from its images (the best epoch's whole model): its features
    # were computed, hashed at every reuse and charged to the runs' cost, never read.
    names = sorted(p.name for p in Path(info["directory"]).iterdir())
    assert names == ["meta.json", "train.npy", "val.npy"]


@pytest.mark.slow  # two runs; the fast tier's head_steps test splits calls 5 + 2
def test_cached_steps_record_the_same_in_calls_of_any_length(demo, tmp_path, trainers, monkeypatch):
    """4 steps an epoch: one call of 4 (the default), or calls of 3 then 1."""
    config = dataclasses.replace(_config("lp"), epochs=2)
    kw = {"dataset": demo, "progress": False, "trainers": trainers}
    whole = fit.run_one(config, tmp_path / "a", **kw)
    monkeypatch.setattr(fit, "HEAD_STEPS_PER_CALL", 3)
    split = fit.run_one(config, tmp_path / "b", **kw)
    assert all(e["from_features"] for e in whole["epochs"] + split["epochs"])
    np.testing.assert_allclose(_numbers(split), _numbers(whole), rtol=1e-6)
    assert len({e["train_loss"] for e in whole["epochs"]}) == 2


@pytest.mark.slow  # a run; the fast tier's cached run records the uncached one
def test_a_cached_epoch_of_one_call_counts_that_call_as_train_time(demo, tmp_path, monkeypatch):
    """The last call's losses are read after the loop: waiting for them is train time."""
    wait = 0.3

    class SlowLosses:  # losses whose device work takes ``wait`` seconds to finish
        def __init__(self, losses):
            self.losses = losses

        def __array__(self, dtype=None, copy=None):
            time.sleep(wait)
            return np.asarray(self.losses, dtype)

    real = fit.Trainer.head_steps

    def slow_head_steps(self, *args, **kw):
        state, losses = real(self, *args, **kw)
        return state, SlowLosses(losses)

    monkeypatch.setattr(fit.Trainer, "head_steps", slow_head_steps)
    record = fit.run_one(_config("lp"), tmp_path, dataset=demo, progress=False)
    for e in record["epochs"]:  # 4 steps an epoch: one call each
        assert e["from_features"]
        assert wait <= e["train_seconds"] <= e["seconds"]


@pytest.mark.slow  # the fast tier's cached run compares against a fallback run
def test_a_run_without_the_cache_records_no_features(demo, tmp_path, trainers):
    config = dataclasses.replace(_config("lp"), epochs=1)
    kw = {"dataset": demo, "progress": False, "trainers": trainers}
    record = fit.run_one(config, tmp_path, feature_cache=False, **kw)
    assert "features" not in record and not (tmp_path / "features").exists()


@pytest.mark.slow  # three runs
def test_features_are_reused_checked_and_recomputed_when_damaged(demo, tmp_path, trainers):
    kw = {"dataset": demo, "progress": False, "trainers": trainers}
    first = fit.run_one(_config("lp"), tmp_path, **kw)
    directory = first["features"]["directory"]
    again = fit.run_one(_config("lp"), tmp_path, force=True, **kw)
    assert again["features"]["reused"] and again["features"]["directory"] == directory
    # One flipped byte in the stored features: found by the hash, recomputed, same record.
    path = f"{directory}/val.npy"
    with open(path, "r+b") as f:
        f.seek(-5, 2)
        byte = f.read(1)
        f.seek(-5, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    third = fit.run_one(_config("lp"), tmp_path, force=True, **kw)
    assert not third["features"]["reused"]
    np.testing.assert_allclose(_numbers(third), _numbers(first), rtol=1e-6)
    # An empty file (np.load's EOFError, not an OSError): recomputed too, not a crash.
    open(f"{directory}/train.npy", "wb").close()
    fourth = fit.run_one(_config("lp"), tmp_path, force=True, **kw)
    assert not fourth["features"]["reused"]
    np.testing.assert_allclose(_numbers(fourth), _numbers(first), rtol=1e-6)


@pytest.mark.slow  # two runs
def test_vgg_without_batchnorm_caches_its_features_under_update_too(demo, tmp_path):
    """VGG-19 has no BatchNorm: under the paper's 'update' its frozen layers are as fixed a
    function of the image as under 'freeze', and its LP ran the backbone every epoch.
    (``vgg_tiny``: VGG-19's layers, dropout and blocks at 8 channels.)"""
    config = dataclasses.replace(_config("lp", "update"), arch="vgg_tiny", epochs=1)
    kw = {"dataset": demo, "progress": False, "trainers": {}}
    plain = fit.run_one(config, tmp_path / "a", feature_cache=False, **kw)
    cached = fit.run_one(config, tmp_path / "b", **kw)
    assert "features" not in plain and cached["features"]["used"]
    assert [e.get("from_features") for e in cached["epochs"]] == [True]
    np.testing.assert_allclose(_numbers(cached), _numbers(plain), rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # another stage to compile
def test_batch_statistics_mode_caches_nothing(demo, tmp_path, trainers):
    config = _config("lp", "update")
    record = fit.run_one(config, tmp_path, dataset=demo, progress=False, trainers=trainers)
    assert "features" not in record and not (tmp_path / "features").exists()
    assert not any(e.get("from_features") for e in record["epochs"])


@pytest.mark.slow  # two runs
def test_features_of_read_only_prepared_data_go_under_the_runs_folder(
    demo, tmp_path, trainers, monkeypatch, capsys
):
    # A file where the prepared data's folder would be: no folder can be made in
    # it, whoever runs the test (a read-only folder does not stop root).
    blocked = tmp_path / "prepared"
    blocked.write_text("")
    out = tmp_path / "runs" / "features"
    monkeypatch.setattr(features, "roots_for", lambda ds, out_dir: (blocked / "features", out))
    monkeypatch.setattr(features, "_FELL_BACK", set())
    kw = {"dataset": demo, "progress": False, "trainers": trainers}
    first = fit.run_one(_config("lp"), tmp_path / "runs", **kw)
    assert first["features"]["used"] and not first["features"]["reused"]
    assert first["features"]["directory"].startswith(str(out))
    # Said (a full data disk went without a word: every --out computed its own), once.
    notes = [x for x in capsys.readouterr().err.splitlines() if "not beside the data" in x]
    assert (
        len(notes) == 1
        and notes[0].startswith(
            f"note: cached features kept in {first['features']['directory']}, not beside the "
            f"data ({blocked / 'features'}"
        )
        and notes[0].endswith("runs with another --out compute their own")
    )
    again = fit.run_one(_config("lp"), tmp_path / "runs", force=True, **kw)
    assert (
        again["features"]["reused"]
        and again["features"]["directory"] == first["features"]["directory"]
    )
    assert "not beside the data" not in capsys.readouterr().err
    np.testing.assert_allclose(_numbers(again), _numbers(first), rtol=1e-6)


@pytest.mark.slow  # three runs each
@pytest.mark.parametrize(("strategy", "options"), [("lp", {}), ("lp_ft", {"lp_epochs": 1})])
def test_resumed_cached_run_writes_the_uninterrupted_record(
    demo, tmp_path, trainers, strategy, options
):
    config = _config(strategy, **options)
    kw = {"dataset": demo, "progress": False, "trainers": trainers}  # each stage compiles once
    full = fit.run_one(config, tmp_path / "a", **kw)
    # Stopped inside the second epoch (4 steps an epoch), then resumed from the checkpoint:
    # LP-FT then resumes in its FT phase, with no head-only epoch left to ask for features.
    assert fit.run_one(config, tmp_path / "b", stop_after_steps=6, **kw) == {}
    resumed = fit.run_one(config, tmp_path / "b", **kw)
    np.testing.assert_allclose(_numbers(resumed), _numbers(full), rtol=1e-6)
    for record in (full, resumed):  # the first head-only epoch's features, not a later call's
        assert record["features"]["used"] and not record["features"]["reused"]


def test_features_sit_beside_memmapped_images(tmp_path):
    path = tmp_path / "variant" / "train_images.npy"
    path.parent.mkdir()
    np.save(path, np.zeros((4, 8, 8, 3), np.uint8))
    split = ArraySplit(
        np.load(path, mmap_mode="r"),
        np.zeros(4, np.int32),
        *(np.array(list("abcd")),) * 3,
    )
    on_disk = Dataset("x", {"train": split}, ("a", "b"))
    assert features.roots_for(on_disk, tmp_path / "runs") == (
        tmp_path / "variant" / "features",
        tmp_path / "runs" / "features",
    )
    ids = split.ids
    held = ArraySplit(np.zeros((4, 8, 8, 3), np.uint8), split.labels, ids, ids, ids)
    in_memory = Dataset("x", {"train": held}, ("a", "b"))
    assert features.roots_for(in_memory, tmp_path / "runs") == (tmp_path / "runs" / "features",)


@pytest.mark.slow  # two command-line runs
def test_command_line_caches_unless_told_not_to(tmp_path, capsys):
    from experiments import run as run_cli

    args = ["--strategy", "lp", "--arch", "resnet_tiny", "--weights", "none", "--epochs", "1"]
    args += ["--batch-size", "16", "--frozen-bn", "freeze", "--no-progress"]
    assert run_cli.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert run_cli.main([*args, "--no-feature-cache", "--out", str(tmp_path / "b")]) == 0
    (a,) = (tmp_path / "a").rglob("record.json")
    (b,) = (tmp_path / "b").rglob("record.json")
    cached, plain = (json.loads(p.read_text()) for p in (a, b))
    assert cached["features"]["used"] and "features" not in plain
    np.testing.assert_allclose(_numbers(cached), _numbers(plain), rtol=1e-5, atol=1e-6)


def _mean_pixels(batches):
    """A stand-in backbone: each real example's mean pixel per channel."""
    for batch in batches:
        yield np.asarray(batch["image"], np.float32).mean(axis=(1, 2))[np.asarray(batch["mask"])]


def _cache_kwargs(demo, roots, calls):
    def extract(batches):
        calls.append(1)
        return _mean_pixels(batches)

    model = create("resnet_tiny", 2)
    return dict(
        roots=roots,
        arch="resnet_tiny",
        precision="fp32",
        variables=init_variables(model, 0, 32),
        partition=get_arch("resnet_tiny").partition,
        extract=extract,
        batch_size=8,
    )


@pytest.mark.slow  # two processes (~5 s)
def test_a_second_process_waits_for_the_first_and_reads_its_features(demo, tmp_path):
    import threading

    from medft_jax import locks

    calls = []
    kw = _cache_kwargs(demo, (tmp_path / "features",), calls)
    found, info = features.cached_features(demo, **kw)
    directory = found.directory
    assert info["used"] and not info["reused"] and len(calls) == 2  # once a split: train and val
    assert f"-{jax.default_backend()}-" in directory.name  # features of this backend only
    np.testing.assert_allclose(
        found.arrays["val"], np.concatenate(list(_mean_pixels(demo.eval_batches("val", 8))))
    )
    # The first process holds the folder's lock and is (re)writing it; the
    # second waits, then reads the first's files instead of computing them too.
    import shutil

    expected = _expected_of(found)
    shutil.rmtree(directory)
    lock = directory.parent / f".{directory.name}.lock"
    holding, done = threading.Event(), {}

    compiled = [0.0]  # a running total of compilation seconds, as the trainer keeps

    def slow(batches):  # long enough for the second to find no folder and want to write
        time.sleep(0.5)
        compiled[0] += 0.4  # of those 0.5 s, say 0.4 compiled (not extraction)
        return _mean_pixels(batches)

    def first():
        with locks.waiting_lock(lock):
            holding.set()
            features.compute_features(
                directory, demo, expected, slow, 8, compile_seconds=lambda: compiled[0]
            )

    t = threading.Thread(target=first)
    t.start()
    holding.wait()
    done["found"], done["info"] = features.cached_features(demo, **kw)
    t.join()
    assert done["info"]["reused"] and len(calls) == 2
    # The reader is charged what the writer's extraction took, compilation left out:
    # two splits (train and val) of 0.5 s, 0.4 of each compiling.
    assert 0.2 <= done["info"]["extract_seconds"] < 0.6
    assert done["found"].extract_seconds == done["info"]["extract_seconds"]


def _expected_of(found) -> dict:
    """What ``cached_features`` expects of a folder: its meta without the files' hashes
    and the seconds the extraction took."""
    meta = json.loads((found.directory / "meta.json").read_text())
    meta.pop("splits")
    meta.pop("extract_seconds")
    return meta


def test_a_killed_set_aside_of_stale_features_is_cleared_by_the_next_writer(
    demo, tmp_path, monkeypatch
):
    import subprocess
    import sys
    import types

    calls = []
    kw = _cache_kwargs(demo, (tmp_path / "features",), calls)
    found, _ = features.cached_features(demo, **kw)
    directory = found.directory
    (directory / "meta.json").write_text("{}")  # stale: set aside and recomputed
    # A writer killed between setting the stale folder aside and removing it:
    # a process that has exited, whose removal never happens.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    with monkeypatch.context() as m:
        m.setattr(os, "getpid", lambda: int(dead.stdout))
        m.setattr(features, "shutil", types.SimpleNamespace(rmtree=lambda *a, **k: None))
        features.cached_features(demo, **kw)
    assert len([p for p in directory.parent.iterdir() if p.name.startswith(".")]) == 2
    (directory / "meta.json").write_text("{}")  # stale again: the next writer clears both
    _, info = features.cached_features(demo, **kw)
    assert not info["reused"] and len(calls) == 6  # three computations, once a split
    assert sorted(p.name for p in directory.parent.iterdir()) == sorted(
        [directory.name, f".{directory.name}.lock"]
    )


def _on_disk(demo, folder):
    """The demo splits with their images memmapped from ``folder``, as a prepared cache."""
    folder.mkdir()
    splits = {}
    for name, split in demo.splits.items():
        np.save(folder / f"{name}_images.npy", np.asarray(split.images))
        images = np.load(folder / f"{name}_images.npy", mmap_mode="r")
        splits[name] = dataclasses.replace(split, images=images)
    return dataclasses.replace(demo, splits=splits)


def test_prepared_images_changed_in_place_are_features_recomputed(demo, tmp_path):
    """The data fingerprint is the one recorded when the images were written: an image file
    changed since (a repair, a restore) must not be served its old features."""
    ds = _on_disk(demo, tmp_path / "variant")
    calls = []
    kw = _cache_kwargs(ds, (tmp_path / "features",), calls)
    first, _ = features.cached_features(ds, **kw)
    _, info = features.cached_features(ds, **kw)
    assert info["reused"] and len(calls) == 2
    train = np.load(tmp_path / "variant" / "train_images.npy", mmap_mode="r+")
    train[:] = 255 - train  # the same shape and fingerprint, other pixels
    train.flush()
    del train
    time.sleep(0.01)  # a later mtime on coarse clocks
    again, info = features.cached_features(ds, **kw)
    assert not info["reused"] and len(calls) == 4
    assert not np.array_equal(again.arrays["train"], first.arrays["train"])
    expected = np.asarray(255 - np.asarray(demo.split("train").images), np.float32).mean(
        axis=(1, 2)
    )
    np.testing.assert_allclose(again.arrays["train"], expected, rtol=1e-6)


@pytest.mark.parametrize("splits", [[], {"train": []}, "x"], ids=["list", "entry-list", "str"])
def test_a_features_meta_of_another_shape_is_recomputed_not_a_crash(demo, tmp_path, splits, capsys):
    calls = []
    kw = _cache_kwargs(demo, (tmp_path / "features",), calls)
    found, _ = features.cached_features(demo, **kw)
    meta = json.loads((found.directory / "meta.json").read_text())
    (found.directory / "meta.json").write_text(json.dumps({**meta, "splits": splits}))
    capsys.readouterr()
    again, info = features.cached_features(demo, **kw)
    assert not info["reused"] and len(calls) == 4
    np.testing.assert_array_equal(again.arrays["val"], found.arrays["val"])
    said = capsys.readouterr().err
    assert said.startswith("note: cached features not used (") and said.count("\n") == 1
    assert "computing them again" in said


def test_damaged_features_are_said_as_they_are_computed_again(demo, tmp_path, capsys):
    """A truncated or altered features file was recomputed without a word (the record's
    ``reused: false`` alone): a disk that damages files is worth knowing of. Each cause is
    named with the file; features merely missing are computed without a note."""
    calls = []
    kw = _cache_kwargs(demo, (tmp_path / "features",), calls)
    found, _ = features.cached_features(demo, **kw)
    assert capsys.readouterr().err == ""  # first computed: nothing to say
    val, meta = found.directory / "val.npy", found.directory / "meta.json"
    data = bytearray(val.read_bytes())
    data[-5] ^= 0xFF
    val.write_bytes(bytes(data))
    features.cached_features(demo, **kw)
    assert capsys.readouterr().err == (
        f"note: cached features not used ({val}: SHA-256 differs from its meta.json's); "
        "computing them again\n"
    )
    val.write_bytes(b"")
    features.cached_features(demo, **kw)
    assert f"({val}: unreadable (EOFError))" in capsys.readouterr().err
    meta.write_text(meta.read_text()[:50])
    features.cached_features(demo, **kw)
    assert f"({meta}: unreadable (JSONDecodeError))" in capsys.readouterr().err
    meta.unlink()
    features.cached_features(demo, **kw)
    assert f"({found.directory}: no meta.json)" in capsys.readouterr().err
    assert len(calls) == 10  # computed five times (train and val each)


def test_features_of_another_numerics_version_are_recomputed(demo, tmp_path, capsys):
    """A toolkit that computes otherwise (the precision's numerics version) never serves older
    features."""
    calls = []
    kw = _cache_kwargs(demo, (tmp_path / "features",), calls)
    found, _ = features.cached_features(demo, **kw)
    meta = json.loads((found.directory / "meta.json").read_text())
    assert meta["numerics"] == numerics_version(meta["precision"])
    (found.directory / "meta.json").write_text(json.dumps({**meta, "numerics": 1}))
    _, info = features.cached_features(demo, **kw)
    assert not info["reused"] and len(calls) == 4
    assert "stale, its meta.json's numerics differ" in capsys.readouterr().err


def test_features_of_another_jax_are_recomputed(demo, tmp_path, capsys, monkeypatch):
    """After a JAX upgrade (another XLA may round a convolution otherwise) the features
    are computed again, not served from the old one's; and two JAX versions sharing one
    data dir keep a set each (they replaced each other's at every run)."""
    calls = []
    kw = _cache_kwargs(demo, (tmp_path / "features",), calls)
    found, _ = features.cached_features(demo, **kw)
    meta = json.loads((found.directory / "meta.json").read_text())
    assert meta["jax"] == f"{jax.__version__}/{jax.lib.__version__}"
    real = jax.__version__
    monkeypatch.setattr(jax, "__version__", "0.0.1")
    other, info = features.cached_features(demo, **kw)
    assert not info["reused"] and len(calls) == 4
    assert other.directory != found.directory and other.directory.parent == found.directory.parent
    assert capsys.readouterr().err == ""  # a set of its own, not a stale one replaced
    monkeypatch.setattr(jax, "__version__", real)
    again, info = features.cached_features(demo, **kw)
    assert info["reused"] and again.directory == found.directory and len(calls) == 4
    monkeypatch.setattr(jax, "__version__", "0.0.1")
    _, info = features.cached_features(demo, **kw)
    assert info["reused"] and len(calls) == 4


def test_features_are_keyed_by_the_batch_they_were_computed_in(demo, tmp_path):
    """A run at another batch size read the set another run wrote (the key had no batch
    size): its convolutions round otherwise over 7 images than over 16, so one config and
    seed wrote a record whose last bits depended on which run came first."""
    calls = []
    kw = _cache_kwargs(demo, (tmp_path / "features",), calls)
    found, _ = features.cached_features(demo, **kw)
    assert json.loads((found.directory / "meta.json").read_text())["batch_size"] == 8
    other, info = features.cached_features(demo, **{**kw, "batch_size": 4})
    assert not info["reused"] and other.directory != found.directory and len(calls) == 4
    again, info = features.cached_features(demo, **kw)
    assert info["reused"] and again.directory == found.directory and len(calls) == 4


def test_features_are_keyed_by_the_devices_they_were_computed_on(demo, tmp_path, monkeypatch):
    """Over 4 devices each convolves a quarter of the batch: features 6e-7 off a 1-device
    set's, which a 4-device run read (one record's last bits depended on who came first)."""
    calls = []
    kw = _cache_kwargs(demo, (tmp_path / "features",), calls)
    found, _ = features.cached_features(demo, **kw)
    assert json.loads((found.directory / "meta.json").read_text())["devices"] == 1
    monkeypatch.setattr(features.jax, "local_device_count", lambda: 4)
    other, info = features.cached_features(demo, **kw)
    assert not info["reused"] and other.directory != found.directory and len(calls) == 4


def test_a_root_whose_filesystem_refuses_locks_gives_way_to_the_next(demo, tmp_path, monkeypatch):
    """Prepared data on an NFS mount without its lock daemon: features go under --out."""
    real = locks.waiting_lock
    nfs = tmp_path / "nfs" / "features"

    def waiting_lock(path, waiting=None):
        if str(path).startswith(str(nfs)):
            raise locks.LocksUnsupported(f"{path}: this filesystem refuses file locks")
        return real(path, waiting)

    monkeypatch.setattr(locks, "waiting_lock", waiting_lock)
    calls = []
    found, info = features.cached_features(
        demo, **_cache_kwargs(demo, (nfs, tmp_path / "out"), calls)
    )
    assert found is not None and info["directory"].startswith(str(tmp_path / "out"))


def test_a_file_replaced_between_its_memmap_and_its_hash_is_not_served(demo, tmp_path, monkeypatch):
    """The hash was taken by path after the memmap opened the file: a folder swapped in
    between passed the check while the memmap read the old, damaged bytes."""
    import shutil

    calls = []
    kw = _cache_kwargs(demo, (tmp_path / "features",), calls)
    found, _ = features.cached_features(demo, **kw)
    expected = {k: v for k, v in json.loads((found.directory / "meta.json").read_text()).items()}
    expected.pop("splits")
    real = features.atomic.file_sha256

    def swapped(path):  # another writer replaces the file after the memmap opened it
        copy = path.with_name(path.name + ".copy")
        shutil.copyfile(path, copy)
        os.replace(copy, path)
        return real(path)

    assert features.open_features(found.directory, demo, expected) is not None
    monkeypatch.setattr(features.atomic, "file_sha256", swapped)
    assert features.open_features(found.directory, demo, expected) is None


def test_features_are_keyed_by_the_accelerator_model_and_matmul_precision(monkeypatch):
    """An H100's features are not an H200's, nor TF32's those of full float32 products."""
    import types

    assert features.device_tag() == jax.default_backend()  # cpu here: the name as before
    gpu = types.SimpleNamespace(device_kind="NVIDIA H200")
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "devices", lambda *a: [gpu])
    assert features.device_tag() == "gpu-NVIDIA-H200"
    with jax.default_matmul_precision("float32"):
        assert features.device_tag() == "gpu-NVIDIA-H200-matmul-float32"
