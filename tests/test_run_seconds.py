"""Where a run's wall time goes: the record's ``seconds``, and the sweep's overhead line."""

from __future__ import annotations

import dataclasses
import time

import pytest

from experiments.sweep import _overhead_text
from medft_jax import fit, results
from medft_jax.data.demo import load_demo


@pytest.fixture(scope="module")
def demo():
    return load_demo(seed=0, image_size=32, sizes={"train": 32, "val": 16, "test": 16})


def _config() -> fit.RunConfig:
    return fit.RunConfig(
        dataset="demo",
        arch="resnet_tiny",
        strategy="ft",
        lr=1e-3,
        epochs=2,
        batch_size=8,
        image_size=32,
        weights="none",
    )


@pytest.mark.slow  # three runs
def test_record_splits_the_wall_time_of_every_call(demo, tmp_path):
    trainers: dict = {}  # the later calls reuse the compiled steps
    t, began = time.perf_counter(), time.time()
    full = fit.run_one(_config(), tmp_path / "a", dataset=demo, progress=False, trainers=trainers)
    elapsed = time.perf_counter() - t
    s = full["seconds"]
    assert full["wall_seconds"] == s["wall"] <= elapsed
    # The clock stops as the record is written; what follows (waiting for the
    # background checkpoint writes, releasing the lock) is after it, so the
    # lower bound is the record file's write time, not the call's return.
    (record_file,) = (tmp_path / "a").rglob("record.json")
    until_written = record_file.stat().st_mtime - began
    assert 0.9 * until_written - 0.2 <= s["wall"] <= until_written + 0.05
    assert s["train"] == pytest.approx(sum(e["train_seconds"] for e in full["epochs"]))
    assert s["compile"] == full["compile_seconds"] > 0
    assert s["checkpoints"] > 0 and s["validation"] > 0 and s["test"] > 0 and s["setup"] > 0
    assert s["features"] == 0.0  # FT trains no head-only epoch
    assert -0.05 <= s["other"] < 0.2 * s["wall"]
    assert sum(s.values()) - s["wall"] == pytest.approx(s["wall"], rel=1e-9)

    # Stopped after 6 of 8 steps and resumed: the record's wall time is both calls'.
    t = time.perf_counter()
    assert (
        fit.run_one(_config(), tmp_path / "b", dataset=demo, progress=False, stop_after_steps=6)
        == {}
    )
    first = time.perf_counter() - t
    t = time.perf_counter()
    resumed = fit.run_one(
        _config(), tmp_path / "b", dataset=demo, progress=False, trainers=trainers
    )
    second = time.perf_counter() - t
    assert second < resumed["wall_seconds"] <= first + second


def test_overhead_is_the_wall_time_outside_the_epochs_work():
    record = {
        "seconds": {
            "wall": 100.0,
            "train": 80.0,
            "data": 4.0,
            "validation": 6.0,
            "compile": 5.0,
            "checkpoints": 2.5,
            "setup": 1.0,
            "features": 0.0,
            "test": 1.0,
            "other": 0.5,
        }
    }
    total, parts = results.run_overhead(record)
    assert total == pytest.approx(10.0) and set(parts) == {
        "compile",
        "checkpoints",
        "setup",
        "features",
        "test",
        "other",
    }
    assert (
        _overhead_text(record)
        == "; overhead 10.0 s = 10% (compile 5.0, checkpoints 2.5, setup 1.0)"
    )
    assert results.run_overhead({"train_seconds": 3.0}) is None and _overhead_text({}) == ""


@pytest.mark.parametrize(
    "strategy, options",
    [
        ("lp", {"frozen_bn": "freeze"}),
        pytest.param(  # another strategy's programs to compile
            "auto_rgn", {"strategy_options": (("rgn_mode", "prepass"),)}, marks=pytest.mark.slow
        ),
    ],
    ids=["cached-features", "rgn-prepass"],
)
def test_every_compilation_of_the_run_is_counted_as_compilation(
    demo, tmp_path, monkeypatch, strategy, options
):
    """The feature extractor's and the prepass's programs too: they were counted as training
    (the prepass) or nowhere (the features), so a run's seconds misplaced them."""
    from medft_jax import train

    monkeypatch.setattr(train, "_PREPASS_PROGRAMS", {})
    config = dataclasses.replace(_config(), strategy=strategy, **options)
    trainers: dict = {}
    record = fit.run_one(config, tmp_path, dataset=demo, progress=False, trainers=trainers)
    (trainer,) = trainers.values()
    assert record["compile_seconds"] == pytest.approx(trainer.compile_seconds, rel=1e-9)
    assert record["seconds"]["compile"] == record["compile_seconds"]
    if strategy == "lp":
        assert record["features"]["used"] and not record["features"]["reused"]
    else:  # compiled once each, through the trainer, and kept for the next epoch
        assert len(train._PREPASS_PROGRAMS) == 2


@pytest.mark.slow  # three runs, two strategies' stages each
def test_a_resumed_run_counts_the_compilations_of_every_call(demo, tmp_path):
    """G-LF, 2 stages: the stopped call compiles both, the resumed one the second again."""
    config = dataclasses.replace(_config(), strategy="g_lf")
    full = fit.run_one(config, tmp_path / "a", dataset=demo, progress=False, trainers={})
    assert full["num_compilations"] == 2
    stopped = fit.run_one(config, tmp_path / "b", dataset=demo, progress=False, stop_after_steps=6)
    assert stopped == {}
    resumed = fit.run_one(config, tmp_path / "b", dataset=demo, progress=False, trainers={})
    assert resumed["num_compilations"] == 3


@pytest.mark.slow  # one training run
def test_scikit_learns_import_is_setup_not_the_first_validation(demo, tmp_path, monkeypatch):
    """The first validation of a process imported scikit-learn (1.2 s), which select then
    charged to its first arm's and the grid's first run's validation seconds."""
    from medft_jax import metrics

    real, paid = metrics._sk, []

    def slow_first_import():
        if not paid:
            paid.append(1)
            time.sleep(1.0)
        return real()

    monkeypatch.setattr(metrics, "_sk", slow_first_import)
    config = dataclasses.replace(_config(), epochs=1)
    s = fit.run_one(config, tmp_path, dataset=demo, progress=False)["seconds"]
    assert s["setup"] >= 1.0 > s["validation"]
