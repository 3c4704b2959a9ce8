"""The one run path: every way a run ends, as experiments.run and experiments.sweep see it."""

from __future__ import annotations

import dataclasses
import types

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import run as run_cli
from medft_jax import fit, outcomes, results, train
from medft_jax.config import RunConfig
from medft_jax.session import Session

ARGS = ["--arch", "resnet_tiny", "--weights", "none", "--epochs", "1", "--batch-size", "16"]
ARGS += ["--no-progress"]


@pytest.mark.slow  # two CLI runs; test_train checks the stop itself in the fast tier
def test_a_diverged_run_leaves_a_note_under_run_as_under_sweep(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(train, "classification_loss", lambda *a: jnp.float32(jnp.nan))
    monkeypatch.setattr(train, "_GRAD_PROGRAMS", {})  # not the programs of the real loss
    argv = ["--strategy", "lp", *ARGS, "--seeds", "0", "1", "--out", str(tmp_path)]
    assert run_cli.main(argv) == 1
    err = capsys.readouterr().err.splitlines()
    # Both seeds were tried (one diverging does not stop the others), each noted once.
    notes = results.load_failures(tmp_path)
    # Each names its run's folder: with stdout apart, nothing else said which diverged.
    assert sorted(err) == sorted(
        f"error: {results.run_dir(tmp_path, n['config'])}: {n['error']}" for n in notes
    )
    assert all(n["error"].startswith("training loss became nan") for n in notes)
    assert sorted(n["config"]["seed"] for n in notes) == [0, 1]
    assert {n["kind"] for n in notes} == {"nonfinite"}
    assert [n["decoding"] for n in notes] == [{}, {}]  # the default rule, said
    assert not list(tmp_path.rglob("record.json"))
    # Asked for again, the loss finite now: the earlier attempt is said, and the record
    # stands alone (the failure note stayed beside it, saying the run had failed).
    monkeypatch.undo()
    argv = ["--strategy", "lp", *ARGS, "--seeds", "0", "--out", str(tmp_path)]
    assert run_cli.main(argv) == 0
    run = next(results.run_dir(tmp_path, n["config"]) for n in notes if n["config"]["seed"] == 0)
    assert (
        f"note: {run.name}: an earlier attempt failed (nonfinite: training loss became nan"
    ) in capsys.readouterr().err
    assert (run / results.RECORD_NAME).is_file() and not (run / results.FAILURE_NAME).exists()


@pytest.mark.slow
def test_nan_outputs_at_validation_are_a_divergence_noted(monkeypatch, tmp_path, capsys):
    """A finite loss with NaN eval outputs (overflowed BN statistics): a note, not a crash."""
    real = train.Trainer.predict

    def nan_predict(self, *args, **kwargs):
        probs = np.array(real(self, *args, **kwargs))
        probs[1] = np.nan
        return probs

    monkeypatch.setattr(train.Trainer, "predict", nan_predict)
    argv = ["--strategy", "lp", *ARGS, "--seeds", "0", "--out", str(tmp_path)]
    assert run_cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    (note,) = results.load_failures(tmp_path)
    where = results.run_dir(tmp_path, note["config"])
    assert err.startswith(f"error: {where}: the model's val outputs became NaN or infinite (1 of ")
    assert err.endswith(" examples, epoch 1); try a smaller --lr")  # fp32 is the default
    assert note["kind"] == "nonfinite" and note["error"] == err.removeprefix(f"error: {where}: ")
    assert not list(tmp_path.rglob("record.json"))


@pytest.mark.slow
def test_outcomes_of_one_session(tmp_path, monkeypatch):
    """Done, then skipped; a failure note is skipped unless retried; out of memory is fatal."""
    config = fit.RunConfig(
        strategy="lp", arch="resnet_tiny", weights="none", epochs=1, batch_size=16, image_size=32
    )
    session = Session(tmp_path)
    started = []
    first = session.run(config, on_start=started.append)
    assert first.kind == outcomes.DONE and first.record["config"]["strategy"] == "lp"
    assert started == [first.config] and first.config.identified
    again = session.run(config, on_start=started.append)
    assert again.kind == outcomes.SKIPPED and again.record == first.record and len(started) == 1
    # Finished by another process after status() looked: found by run_one, not trained here.
    with monkeypatch.context() as m:
        m.setattr(Session, "status", lambda self, c: "todo")
        raced = Session(tmp_path).run(config, on_start=started.append)
    assert raced.kind == outcomes.SKIPPED and raced.record == first.record and len(started) == 1

    other = fit.identify(
        fit.RunConfig(**{**config.to_dict(), "seed": 1, "strategy_options": ()}),
        session.dataset(config),
    )
    results.write_failure(tmp_path, other.to_dict(), "nonfinite", "nan")
    assert session.run(other).kind == outcomes.FAILED_BEFORE

    def oom(*a, **k):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.1GiB")

    monkeypatch.setattr(fit, "run_one", oom)
    retried = Session(tmp_path, retry_failed=True).run(other)
    assert retried.kind == outcomes.OUT_OF_MEMORY and retried.fatal
    assert retried.error.startswith("RESOURCE_EXHAUSTED: Out of memory")


@pytest.mark.slow
def test_a_divergence_is_noted_under_the_runs_lock_and_the_note_read_under_it(
    tmp_path, monkeypatch
):
    """Two sweeps on one --out: the note is written before the lock is released, and a
    process that found the run to do (before the note) skips it once it holds the lock."""
    from medft_jax import locks

    config = fit.RunConfig(
        strategy="lp", arch="resnet_tiny", weights="none", epochs=1, batch_size=16, image_size=32
    )
    held = []
    real_write = results.write_failure

    def write_failure(out, cfg, *args, **kwargs):
        held.append((results.run_dir(out, cfg) / locks.LOCK_NAME).exists())
        return real_write(out, cfg, *args, **kwargs)

    def diverge(*args, **kwargs):
        raise train.NonFiniteLossError("training loss became nan at step 1")

    monkeypatch.setattr(results, "write_failure", write_failure)
    monkeypatch.setattr(fit, "_train_epochs", diverge)
    first = Session(tmp_path).run(config)
    assert first.kind == outcomes.DIVERGED and held == [True]
    started = []
    monkeypatch.setattr(Session, "status", lambda self, c: "todo")  # looked before the note
    raced = Session(tmp_path).run(config, on_start=started.append)
    assert raced.kind == outcomes.FAILED_BEFORE and started == [] and held == [True]
    retried = Session(tmp_path, retry_failed=True).run(config, on_start=started.append)
    assert retried.kind == outcomes.DIVERGED and len(started) == 1 and held == [True, True]


def test_an_unknown_dataset_folder_is_unavailable_once(tmp_path):
    config = fit.RunConfig(strategy="lp", arch="resnet_tiny", dataset="folder", weights="none")
    session = Session(tmp_path, dataset_options={"folder": {"manual_dir": str(tmp_path / "none")}})
    first = session.run(config)
    assert first.kind == outcomes.UNAVAILABLE and str(tmp_path / "none") in first.error
    with pytest.raises(type(first.exception)):
        session.dataset(config)  # remembered: not loaded again


@pytest.mark.slow  # trains a run
def test_one_runs_data_error_leaves_the_other_runs_of_its_dataset_alone(tmp_path):
    """A batch larger than the training split is that run's error; the dataset loads, and
    the next run on it (a batch that fits) trains, not "unavailable" with the first's line."""
    config = fit.RunConfig(
        strategy="lp", arch="resnet_tiny", weights="none", epochs=1, batch_size=256, image_size=32
    )
    session = Session(tmp_path, progress=False)
    first = session.run(config)
    assert first.kind == outcomes.REFUSED
    assert first.error.startswith("--batch-size 256 is larger than the ")
    second = session.run(dataclasses.replace(config, batch_size=64))
    assert second.kind == outcomes.DONE and second.record["config"]["batch_size"] == 64


def test_options_given_under_another_spelling_of_the_dataset_reach_its_loader(
    tmp_path, monkeypatch
):
    """``run --dataset medmnist/x@28 --no-progress`` keyed ``progress=False`` by the name as
    typed, the session looked it up by RunConfig's (``medmnist/x``): the caching bars
    showed under --no-progress, and any such option was silently dropped."""
    from medft_jax.config import RunConfig

    given = []

    def load(config, data_dir, **kw):
        given.append(kw)
        return types.SimpleNamespace(metadata={})

    monkeypatch.setattr(fit, "load_dataset", load)
    options = {"medmnist/breastmnist@28": {"progress": False}}
    session = Session(tmp_path, dataset_options=options)
    session.dataset(RunConfig("ft", dataset="medmnist/breastmnist@28"))
    assert given == [{"progress": False, "batch_size": 64}]  # refused before decoding if over


def test_a_session_names_the_images_skip_bad_images_left_out_once(tmp_path, monkeypatch, capsys):
    """A run on a folder only counted them ("skipped bad images: 5"): whether all five were
    one class's, and which files, was in the cache's metadata alone."""
    skipped = {"skipped_bad_images": {"train": ["a/d3.tif"], "val": ["a/d2.tif"]}}
    monkeypatch.setattr(
        fit, "load_dataset", lambda config, data_dir, **kw: types.SimpleNamespace(metadata=skipped)
    )
    session = Session(tmp_path)
    for data_seed in (0, 1):  # two loads, one note
        session.dataset(RunConfig("ft", dataset="folder", data_seed=data_seed))
    assert capsys.readouterr().err == (
        "note: --skip-bad-images skipped 2 bad image(s): a/d3.tif (train), a/d2.tif (val)\n"
    )


@pytest.mark.slow  # three runs
def test_a_session_keeps_only_the_trainers_it_may_reuse(tmp_path):
    """Every compiled trainer stayed to the process's end: a paper-grid sweep kept 192,
    about 15 GB of host memory, all but the last never used again (grid order). A session
    keeps ``keep_trainers``, the least recently used dropped."""
    from medft_jax.session import RecentTrainers, Session

    kept = RecentTrainers(2)
    kept["ft"], kept["lp"] = 1, 2
    assert kept["ft"] == 1  # read: now the most recent
    kept["g_lf"] = 3
    assert list(kept) == ["ft", "g_lf"]
    tiny = {"arch": "resnet_tiny", "weights": "none", "epochs": 1, "image_size": 32}
    runs = (("lp", 0), ("ft", 0), ("lp", 1))
    configs = [RunConfig(strategy=s, seed=k, batch_size=16, **tiny) for s, k in runs]
    session = Session(tmp_path)
    assert session.trainers.capacity == 1
    for c in configs:
        assert session.run(c).kind == "done"
        assert len(session.trainers) == 1  # the last run's


def test_status_and_path_of_refuse_an_unidentified_config_and_every_outcome_is_timed(
    tmp_path, monkeypatch
):
    """Session.status said "todo" of a finished run given the config passed to run (its
    hash, without fingerprints, names no run's folder), and path_of named a file never
    written; Outcome.seconds was 0.0 for a skipped run, though the call took time."""
    import time

    session = Session(tmp_path / "runs")
    bare = RunConfig(strategy="ft")
    for method in (session.status, session.path_of):
        with pytest.raises(ValueError, match=r"the config is not identified"):
            method(bare)
    known = dataclasses.replace(bare, data_fingerprint="d", weights_fingerprint="w")
    assert session.status(known) == "todo"
    assert session.path_of(known) == results.record_path(tmp_path / "runs", known.to_dict())

    def slow_identify(config):
        time.sleep(0.05)
        return known

    monkeypatch.setattr(session, "identify", slow_identify)
    results.write_record(session.path_of(known), {"config": known.to_dict()})
    outcome = session.run(bare)  # a record found: no training
    assert outcome.kind in (outcomes.SKIPPED, outcomes.DAMAGED) and outcome.seconds >= 0.05
