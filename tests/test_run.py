"""End-to-end runs: every strategy on demo data from ported torchvision weights."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

import weights_port
from experiments.run import main
from medft_jax import fit, locks, results, strategies
from medft_jax.checkpoints import pretrained
from medft_jax.checkpoints.model import load_model
from medft_jax.checkpoints.pretrained import merge
from medft_jax.checkpoints.run import RunCheckpoints
from medft_jax.data.demo import load_demo
from medft_jax.early_stopping import EarlyStopping
from medft_jax.errors import UserError
from medft_jax.models import create, get_arch, init_variables, variable_shapes
from medft_jax.models.blocks import flatten
from tests.processes import dead_pid
from tests.torch_ref import randomise_batchnorm, torch, torchvision

SIZES = {"train": 32, "val": 16, "test": 16}
BATCH = 8  # 4 steps per epoch
TINY = "resnet_tiny"
"""ResNet-50 with one bottleneck per layer: the resume checks, which are not about ResNet-50."""


def _tiny_torchvision(seed: int) -> torch.nn.Module:
    """torchvision's ResNet with one bottleneck per layer (``resnet_tiny``), pretrained-like.

    BN weights, biases and statistics drawn as ``random_torchvision`` draws them:
    no zero-norm tensor, whose relative gradient norm would dwarf the rest.
    """
    torch.manual_seed(seed)
    resnet = torchvision.models.resnet
    model = resnet.ResNet(resnet.Bottleneck, [1, 1, 1, 1], num_classes=1000)
    randomise_batchnorm(model, seed)
    with torch.no_grad():
        model.fc.weight.mul_(30.0)
    return model.eval()


@pytest.fixture(scope="module")
def ported_tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("weights")
    torch.save(_tiny_torchvision(seed=4).state_dict(), tmp / "tiny.pth")
    return weights_port.port(TINY, tmp / "tiny.pth", tmp / "ck")


@pytest.fixture(scope="module")
def demo():
    return load_demo(seed=0, image_size=32, sizes=SIZES)


def _config(strategy: str, weights, **kw) -> fit.RunConfig:
    options = {"g_lf": (("epochs_per_stage", 1),), "lp_ft": (("lp_epochs", 1),)}
    options[strategy] = kw.pop("strategy_options", options.get(strategy, ()))
    return fit.RunConfig(
        strategy=strategy,
        weights=str(weights),
        epochs=kw.pop("epochs", 2),
        batch_size=BATCH,
        image_size=32,
        lr=kw.pop("lr", 1e-3),
        strategy_options=options.get(strategy, ()),
        **kw,
    )


def _start_params(config: fit.RunConfig, weights) -> dict:
    model = create(config.arch, 2)
    init = jax.device_get(init_variables(model, config.seed, image_size=32))
    start, _ = load_model(weights)
    return flatten(merge(init, start, get_arch(config.arch).partition)["params"])


def test_a_run_says_when_an_epoch_leaves_out_a_large_share_of_small_data(capsys):
    """45 training images at --batch-size 16: 13 (29 %) sat out every epoch without a word
    (the protocol's drop of the last partial batch, 1.2 % on BACH)."""
    config = fit.RunConfig(dataset="folder", arch=TINY, strategy="ft", lr=1e-3, batch_size=16)
    fit._say_what_the_run_cannot_do(config, 0, 45 // 16, train_images=45)
    assert capsys.readouterr().err == (
        "note: 13 of the 45 training images (29 %) sit out each epoch: the last partial batch "
        "of --batch-size 16 is dropped (other images each epoch, as the order is reshuffled); a "
        "batch size that divides 45 trains on them all\n"
    )
    fit._say_what_the_run_cannot_do(config, 0, 400 // 16, train_images=410)  # 10: 2.4 %
    assert capsys.readouterr().err == ""


@pytest.mark.slow
@pytest.mark.parametrize("strategy", strategies.PAPER_STRATEGIES)
def test_strategy_end_to_end(strategy, ported_tiny, demo, tmp_path, capsys):
    # ResNet-50's blocks with one bottleneck each: every block of the partition
    # is there to freeze or train, at a quarter of ResNet-50's compiling.
    config = _config(strategy, ported_tiny, arch=TINY)
    record = fit.run_one(config, tmp_path, dataset=demo, progress=False)
    # Two epochs end before the gradual strategies' final stage: said as the run starts.
    short = record["final_stage_epoch"] >= len(record["epochs"])
    assert short == (strategy in ("g_lf", "g_fl"))
    said = f"note: {strategy}'s final stage begins at epoch {record['final_stage_epoch'] + 1}"
    err = capsys.readouterr().err
    assert (said in err) == short
    # Auto-RGN's 5-step estimate never applies within a 4-step epoch: said too.
    rgn = "note: auto_rgn estimates each epoch's RGN over its first 5 steps and an epoch here has 4"
    assert (rgn in err) == (strategy == "auto_rgn")
    # The record holds what it should.
    assert record["config"]["strategy"] == strategy and len(record["epochs"]) == 2
    assert record["primary_metric"] == "accuracy"
    assert set(record["test"]) >= {"map", "accuracy", "auroc", "kappa", "f1"}
    assert record["environment"]["device_count"] == jax.device_count()
    sizes = {split: demo.num_examples(split) for split in ("train", "val", "test")}
    assert record["split_sizes"] == sizes
    assert sizes["train"] // config.batch_size == record["steps_per_epoch"]
    on_disk = json.loads((tmp_path / record["run"] / "record.json").read_text())
    assert on_disk["best_epoch"] == record["best_epoch"]
    # Frozen parameters are bit-identical in the best checkpoint; trained ones moved.
    schedule = strategies.make(
        strategy,
        _dummy_params(TINY),
        get_arch(TINY).partition,
        learning_rate=1e-3,
        steps_per_epoch=4,
        **dict(config.strategy_options),
    ).schedule
    trained = set()
    for epoch in range(record["best_epoch"] + 1):
        trained |= set(schedule.trainable_paths(epoch))
        assert record["epochs"][epoch]["trainable_blocks"] == list(schedule.trainable_blocks(epoch))
    start = _start_params(config, ported_tiny)
    best, meta = load_model(tmp_path / record["run"] / "best")
    assert meta["epoch"] == record["best_epoch"] and meta["num_classes"] == 2
    assert meta["precision"] == config.precision == "fp32"  # predict computes alike
    best = flatten(best["params"])
    assert best.keys() == start.keys()
    for path, value in best.items():
        same = np.array_equal(value, start[path])
        assert same == (path not in trained), (strategy, path)
    # At most one compilation per stage (g_lf: 2 stages in 2 epochs; lp_ft: LP, then FT).
    stages = {tuple(e["trainable_blocks"]) for e in record["epochs"]}
    assert record["num_compilations"] <= len(stages)


def _dummy_params(arch: str):
    return variable_shapes(arch, 2)["params"]


@pytest.mark.slow
def test_rgn_prepass_runs_before_each_epoch_and_resumes(
    ported_tiny, demo, tmp_path, monkeypatch, capsys
):
    """Auto-RGN's prepass: once per epoch, on the epoch's first batches; not again on resume."""
    options = (("rgn_estimate_steps", 2), ("rgn_mode", "prepass"))
    config = _config("auto_rgn", ported_tiny, epochs=2, strategy_options=options, arch=TINY)
    calls = []
    estimate = fit.Trainer.estimate_rgn

    def spy(self, state, batches, **kw):
        batches = list(batches)
        calls.append((int(state.step), [b["label"].tolist() for b in batches]))
        return estimate(self, state, batches, **kw)

    monkeypatch.setattr(fit.Trainer, "estimate_rgn", spy)
    full = fit.run_one(config, tmp_path / "a", dataset=demo, progress=False)
    first = [
        [b["label"].tolist() for b in demo.train_iter(BATCH, seed=0, epoch=e)][:2] for e in (0, 1)
    ]
    assert calls == [(0, first[0]), (4, first[1])]
    # Stopped inside epoch 1: the resumed run keeps the held multipliers (no new prepass).
    calls.clear()
    fit.run_one(config, tmp_path / "b", dataset=demo, progress=False, stop_after_steps=6)
    assert "resuming" not in capsys.readouterr().err
    # The same budget again (a selection re-run reading its arms): nothing resumes, unsaid.
    fit.run_one(config, tmp_path / "b", dataset=demo, progress=False, stop_after_steps=6)
    assert "resuming" not in capsys.readouterr().err
    resumed = fit.run_one(config, tmp_path / "b", dataset=demo, progress=False)
    said = re.findall(r"note: resuming after .*", capsys.readouterr().err)
    assert len(said) == 1 and re.fullmatch(
        r"note: resuming after 1 epoch and 2 steps of epoch 2, from /\S+/checkpoints", said[0]
    ), said
    assert [c[0] for c in calls] == [0, 4]
    for key in ("best_epoch", "val", "test"):
        assert resumed[key] == full[key], key
    # Prepass and stream differ (epoch 0's first steps hold other multipliers).
    stream = fit.run_one(
        _config("auto_rgn", ported_tiny, epochs=2, strategy_options=options[:1], arch=TINY),
        tmp_path / "c",
        dataset=demo,
        progress=False,
    )
    assert stream["epochs"][0]["train_loss"] != full["epochs"][0]["train_loss"]


@pytest.mark.slow
def test_resume_checkpoints_come_every_checkpoint_seconds_each_after_its_best(
    ported_tiny, demo, tmp_path, monkeypatch
):
    """A resume checkpoint costs about a second for ResNet-50: a run makes one when
    MEDFT_JAX_CHECKPOINT_SECONDS (default 60) have passed, writing a newer best first, so
    that a resume finds in best/ the epoch its progress calls best."""
    saves = []
    latest, best = RunCheckpoints.save_latest, RunCheckpoints.save_best

    def save_latest(self, step, state, progress):
        saves.append(("latest", step, progress["early_stopping"]["best_epoch"]))
        latest(self, step, state, progress)

    def save_best(self, variables, meta):
        saves.append(("best", meta["epoch"]))
        best(self, variables, meta)

    monkeypatch.setattr(RunCheckpoints, "save_latest", save_latest)
    monkeypatch.setattr(RunCheckpoints, "save_best", save_best)
    config = _config("lp", ported_tiny, epochs=3, lr=1e-2, arch=TINY)
    quick = fit.run_one(config, tmp_path / "a", dataset=demo, progress=False)
    assert saves == [("best", quick["best_epoch"])]  # seconds a run: its best, once, at the end
    assert load_model(tmp_path / "a" / quick["run"] / "best")[1]["epoch"] == quick["best_epoch"]

    saves.clear()
    monkeypatch.setenv(fit.CHECKPOINT_SECONDS, "0")  # after every epoch but the last
    every = fit.run_one(config, tmp_path / "b", dataset=demo, progress=False)
    assert (
        every["test"] == quick["test"]
        and every["epochs"][-1]["val"] == (quick["epochs"][-1]["val"])
    )
    spe = every["steps_per_epoch"]
    assert [s[1] for s in saves if s[0] == "latest"] == [spe, 2 * spe]
    on_disk = None
    for kind, *what in saves:
        if kind == "best":
            on_disk = what[0]
        else:
            assert on_disk == what[1]  # best/ holds the progress's best epoch
    assert on_disk == every["best_epoch"]

    monkeypatch.setenv(fit.CHECKPOINT_SECONDS, "soon")
    with pytest.raises(UserError, match=r"MEDFT_JAX_CHECKPOINT_SECONDS must be seconds >= 0"):
        fit.run_one(config, tmp_path / "c", dataset=demo, progress=False)
    assert not (tmp_path / "c").exists()


@pytest.mark.slow  # two runs; the fast tier resumes in test_resume_writes_the_uninterrupted_record
def test_a_best_newer_than_the_resumed_checkpoint_is_refused_not_tested(
    ported_tiny, demo, tmp_path, monkeypatch
):
    """Killed between writing best/ and the resume checkpoint's commit, best/ holds a later
    epoch than the progress's best. If the epochs trained again do not improve again (a
    nondeterministic device), the finish would test, and leave, the wrong epoch's weights."""
    from medft_jax.checkpoints.run import ResumeError

    config = _config("lp", ported_tiny, epochs=3, lr=1e-2, arch=TINY)
    out = tmp_path / "runs"
    spe = demo.steps_per_epoch(config.batch_size)
    assert fit.run_one(config, out, dataset=demo, progress=False, stop_after_steps=spe) == {}
    run = out / next(p.name for p in out.iterdir())
    ckpts = RunCheckpoints(run, exclusive=True)
    variables, epoch = ckpts.load_best_of_epoch()
    assert epoch == RunCheckpoints(run).read_progress()["early_stopping"]["best_epoch"] == 0
    meta = load_model(run / "best")[1]
    ckpts.save_best(variables, {**meta, "epoch": 2})  # as a killed later epoch left it
    monkeypatch.setattr(EarlyStopping, "is_better", lambda self, value: False)
    with pytest.raises(ResumeError, match=r"best: holds epoch 2, not epoch 0, the best of the"):
        fit.run_one(config, out, dataset=demo, progress=False)
    assert not (run / "record.json").exists()


def _refused_at_resume(config, out, demo, run, message: str) -> None:
    """The resume of ``run`` is refused with ``message`` before it trains: one epoch kept,
    no record."""
    from medft_jax.checkpoints.run import ResumeError

    with pytest.raises(ResumeError) as e:
        fit.run_one(config, out, dataset=demo, progress=False)
    assert str(e.value) == message
    assert len(RunCheckpoints(run).read_progress()["epochs"]) == 1  # nothing trained
    assert not (run / "record.json").exists()


@pytest.mark.slow
def test_a_resume_whose_best_was_deleted_is_refused_before_it_trains(ported_tiny, demo, tmp_path):
    """best/ deleted by hand (to free disk): the run would train its remaining epochs, then
    fail at the test, and each rerun again; it is refused at the resume, saying so."""
    import shutil

    config = _config("lp", ported_tiny, epochs=3, lr=1e-2, arch=TINY)
    out = tmp_path / "runs"
    spe = demo.steps_per_epoch(config.batch_size)
    assert fit.run_one(config, out, dataset=demo, progress=False, stop_after_steps=spe) == {}
    run = out / next(p.name for p in out.iterdir())
    shutil.rmtree(run / "best")
    _refused_at_resume(config, out, demo, run, (
        f"{run / 'best'}: no such checkpoint folder, but the run resumes after 1 epoch whose "
        "best, epoch 1, was saved there (deleted?); start the run over with experiments.run "
        f"--force, or by deleting {run}"
    ))  # fmt: skip


@pytest.mark.slow
def test_a_resume_whose_best_is_another_runs_is_refused_before_it_trains(
    ported_tiny, demo, tmp_path
):
    """Another seed's best/ copied in (or a backup restored): sound, of the right epoch, it
    was tested as this run's, its test metrics beside this run's validation in one record."""
    import dataclasses
    import shutil

    config = _config("lp", ported_tiny, epochs=3, lr=1e-2, arch=TINY)
    other = dataclasses.replace(config, seed=1)
    out = tmp_path / "runs"
    spe = demo.steps_per_epoch(config.batch_size)
    for c in (config, other):
        assert fit.run_one(c, out, dataset=demo, progress=False, stop_after_steps=spe) == {}
    run, theirs = (out / results.run_name(fit.identify(c, demo).to_dict()) for c in (config, other))
    shutil.rmtree(run / "best")
    shutil.copytree(theirs / "best", run / "best")
    _refused_at_resume(config, out, demo, run, (
        f"{run / 'best'}: saved by run {theirs.name}, not by this run {run.name} (copied "
        "in?); put this run's own best/ back, or start the run over with experiments.run "
        "--force"
    ))  # fmt: skip


@pytest.mark.slow
def test_a_resume_whose_best_was_corrupted_is_refused_before_it_trains(ported_tiny, demo, tmp_path):
    """A flipped byte in best/'s arrays was found at the end, after the remaining epochs were
    trained, in a line without a remedy; its content hash is checked at the resume."""

    config = _config("lp", ported_tiny, epochs=3, lr=1e-2, arch=TINY)
    out = tmp_path / "runs"
    spe = demo.steps_per_epoch(config.batch_size)
    assert fit.run_one(config, out, dataset=demo, progress=False, stop_after_steps=spe) == {}
    run = out / next(p.name for p in out.iterdir())
    files = [p for p in (run / "best" / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    data = bytearray(max(files, key=lambda p: p.stat().st_size).read_bytes())
    data[len(data) // 2] ^= 0x10
    max(files, key=lambda p: p.stat().st_size).write_bytes(bytes(data))
    _refused_at_resume(config, out, demo, run, (
        f"{run / 'best'}: content hash mismatch: the checkpoint's arrays were modified or "
        "corrupted (they no longer hash to the metadata's content_sha256); the run cannot test "
        "its best epoch; start the run over with experiments.run --force"
    ))  # fmt: skip


@pytest.mark.slow
def test_ctrl_c_names_the_run_and_that_rerunning_resumes_it(
    ported_tiny, tmp_path, capsys, monkeypatch
):
    """A Ctrl-C said only ``interrupted``: not which run, nor that the same command resumes."""
    monkeypatch.setenv("MEDFT_JAX_CHECKPOINT_SECONDS", "0")
    out = tmp_path / "runs"
    argv = ["--strategy", "lp", "--arch", TINY, "--weights", str(ported_tiny), "--epochs", "2"]
    argv += ["--image-size", "32", "--batch-size", "16", "--out", str(out), "--no-progress"]
    real, calls = fit._train_epoch, []

    def ctrl_c_in_epoch(at: int):
        def train_epoch(run, epoch, **kw):
            calls.append(epoch)
            if epoch == at:
                raise KeyboardInterrupt
            return real(run, epoch, **kw)

        return train_epoch

    monkeypatch.setattr(fit, "_train_epoch", ctrl_c_in_epoch(0))
    assert main(argv) == 130
    run = out / next(p.name for p in out.iterdir() if p.is_dir())
    assert capsys.readouterr().err == (
        f"interrupted: {run}: it has no checkpoint yet: rerunning the same command starts it "
        "again\n"
    )
    monkeypatch.setattr(fit, "_train_epoch", ctrl_c_in_epoch(1))
    assert main(argv) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"interrupted: {run}: rerunning the same command resumes it from its last checkpoint"
    )
    monkeypatch.setattr(fit, "_train_epoch", real)
    assert main(argv) == 0
    assert f"note: resuming after 1 epoch, from {run / 'checkpoints'}" in capsys.readouterr().err
    assert calls == [0, 0, 1]
    # Under --force the same command clears the folder: it starts over, not resumes.
    monkeypatch.setattr(fit, "_train_epoch", ctrl_c_in_epoch(1))
    assert main([*argv, "--force"]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"interrupted: {run}: rerunning the same command (--force) starts it over; without "
        "--force it resumes from its last checkpoint, if it has one"
    )


def _signal_at_steps(monkeypatch, signum: int) -> tuple[list[int], list[int]]:
    """Patches the train step to count its calls (``steps``) and to send this process
    ``signum`` during each step whose number (from 1) is in ``kill_at``; both lists are
    returned for the test to read and fill. The rest of such a step is deferred."""
    from medft_jax.train import Trainer

    real, steps, kill_at = Trainer.train_step, [], []

    def train_step(self, *args, **kw):
        steps.append(len(steps))
        if len(steps) in kill_at:
            os.kill(os.getpid(), signum)
        return real(self, *args, **kw)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    return steps, kill_at


@pytest.mark.slow
@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_signal_mid_epoch_saves_where_the_epoch_stands_and_the_rerun_ends_the_same(
    signum, ported_tiny, tmp_path, capsys, monkeypatch
):
    """A Ctrl-C or SIGTERM (a cluster's time limit) lost the epoch in flight: an epoch
    longer than the job's time limit began again at every resume and never finished. The
    run stops between steps, saves there, and the same command ends as an uninterrupted
    run does."""
    import signal

    from medft_jax.train import Trainer

    out = tmp_path / "runs"
    argv = ["--strategy", "g_lf", "--arch", TINY, "--weights", str(ported_tiny), "--epochs"]
    argv += ["3", "--image-size", "32", "--batch-size", "16", "--no-progress", "--out"]
    real = Trainer.train_step
    steps, kill_at = _signal_at_steps(monkeypatch, getattr(signal, signum))
    assert main([*argv, str(tmp_path / "whole")]) == 0
    whole = json.loads(next((tmp_path / "whole").glob("*/record.json")).read_text())
    spe = len(steps) // 3
    steps.clear()
    kill_at.append(spe + 2)  # inside epoch 1
    status = main([*argv, str(out)])
    run = next(p for p in out.iterdir() if p.is_dir())
    said = "terminated (SIGTERM)" if signum == "SIGTERM" else "interrupted"
    assert (status, capsys.readouterr().err.splitlines()[-1]) == (
        143 if signum == "SIGTERM" else 130,
        f"{said}: {run}: rerunning the same command resumes it from its last checkpoint",
    )
    assert len(steps) == spe + 2  # the step under way finished, no other began
    progress = RunCheckpoints(run).read_progress()
    assert (len(progress["epochs"]), progress["partial"]["steps"]) == (1, 2)
    assert [p.name for p in (run / "checkpoints").iterdir()] == [str(spe + 2)]
    monkeypatch.setattr(Trainer, "train_step", real)
    assert main([*argv, str(out)]) == 0
    assert f"resuming after 1 epoch and 2 steps of epoch 2, from {run / 'checkpoints'}" in (
        capsys.readouterr().err
    )
    resumed = json.loads((run / "record.json").read_text())
    keys = ("train_loss", "val", "trainable_blocks")
    assert [[e[k] for k in keys] for e in resumed["epochs"]] == [
        [e[k] for k in keys] for e in whole["epochs"]
    ]
    assert resumed["test"] == whole["test"]


@pytest.mark.slow
def test_a_signal_in_an_epochs_last_step_resumes_to_the_uninterrupted_record(
    ported_tiny, tmp_path, capsys, monkeypatch
):
    """A SIGTERM during an epoch's last step saved the epoch unvalidated at its end's step;
    the rerun validated it and, a checkpoint due, saved that step again: orbax's
    StepAlreadyExistsError, a traceback at every rerun, the run never finished."""
    import signal

    from medft_jax.train import Trainer

    monkeypatch.setenv("MEDFT_JAX_CHECKPOINT_SECONDS", "0")  # a checkpoint after every epoch
    argv = ["--strategy", "lp", "--arch", TINY, "--weights", str(ported_tiny), "--epochs"]
    argv += ["3", "--image-size", "32", "--batch-size", "16", "--no-progress", "--out"]
    real = Trainer.train_step
    steps, kill_at = _signal_at_steps(monkeypatch, signal.SIGTERM)
    assert main([*argv, str(tmp_path / "whole")]) == 0
    whole = json.loads(next((tmp_path / "whole").glob("*/record.json")).read_text())
    spe = len(steps) // 3
    steps.clear()
    kill_at.append(2 * spe)  # epoch 2's last step
    out = tmp_path / "runs"
    assert main([*argv, str(out)]) == 143
    run = next(p for p in out.iterdir() if p.is_dir())
    progress = RunCheckpoints(run).read_progress()
    assert (len(progress["epochs"]), progress["partial"]["steps"]) == (1, spe)
    assert progress["partial"]["val"] == {}  # stopped before its validation
    capsys.readouterr()
    monkeypatch.setattr(Trainer, "train_step", real)
    assert main([*argv, str(out)]) == 0
    resumed = json.loads((run / "record.json").read_text())
    keys = ("train_loss", "val", "trainable_blocks", "improved")
    assert [[e[k] for k in keys] for e in resumed["epochs"]] == [
        [e[k] for k in keys] for e in whole["epochs"]
    ]
    assert resumed["test"] == whole["test"]


@pytest.mark.slow
def test_a_lost_ctrl_c_stops_the_training_at_its_next_step(
    ported_tiny, demo, tmp_path, monkeypatch
):
    """A Ctrl-C whose exception a gc callback swallowed (JAX's, while compiling) let the run
    train on; the step loop stops at it, saves and raises it, naming the run
    (tests/test_signals.py)."""
    import signal

    from medft_jax import errors
    from medft_jax.errors import Interrupted

    config = _config("lp", ported_tiny, epochs=2, arch=TINY)
    kw = {"dataset": demo, "progress": False, "trainers": {}}
    monkeypatch.setattr(errors, "_received", [signal.SIGINT])
    with pytest.raises(Interrupted, match="it has no checkpoint yet"):  # before a step
        fit.run_one(config, tmp_path / "runs", **kw)
    (run,) = (tmp_path / "runs").iterdir()
    assert RunCheckpoints(run).latest_step() is None  # nothing trained: nothing to resume
    spe = demo.steps_per_epoch(config.batch_size)
    monkeypatch.setattr(errors, "_received", [])
    assert fit.run_one(config, tmp_path / "runs", stop_after_steps=spe + 1, **kw) == {}
    monkeypatch.setattr(errors, "_received", [signal.SIGINT])
    for _ in range(2):  # stopped again before a step: the checkpoint on disk stays the one
        with pytest.raises(Interrupted, match="resumes it from its last checkpoint"):
            fit.run_one(config, tmp_path / "runs", **kw)
        assert RunCheckpoints(run).latest_step() == spe + 1
    monkeypatch.setattr(errors, "_received", [])
    assert fit.run_one(config, tmp_path / "runs", **kw)["test"]


def test_ctrl_c_under_force_beside_a_record_says_the_rerun_starts_over(tmp_path):
    """A Ctrl-C under --force while the run's last record was still in place said "rerunning
    the same command skips it": the same command (--force) starts it over."""
    from medft_jax.errors import Interrupted

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "record.json").write_text("{}")
    said = []
    for force in (True, False):
        with (
            pytest.raises(Interrupted) as e,
            fit._naming_an_interrupt(run_dir, run_dir / "record.json", force),
        ):
            raise KeyboardInterrupt
        said.append(str(e.value))
    assert said == [
        f"{run_dir}: a record of it is on disk: rerunning the same command (--force) starts "
        "it over; without --force it skips it",
        f"{run_dir}: its record is written: rerunning the same command skips it",
    ]


@pytest.mark.slow
def test_resume_writes_the_uninterrupted_record(ported_tiny, demo, tmp_path):
    """Stops inside and at the end of epochs (4 steps each); the resumed run ends the same."""
    config = _config("lp", ported_tiny, epochs=3, lr=1e-2, arch=TINY)
    kw = {"dataset": demo, "progress": False, "trainers": {}}  # compiled once, as in a sweep
    full = fit.run_one(config, tmp_path / "a", **kw)
    run = tmp_path / "b" / full["run"]

    def stop_after(steps: int) -> dict:
        stopped = fit.run_one(config, tmp_path / "b", stop_after_steps=steps, **kw)
        assert stopped == {}
        assert [p.name for p in (run / "checkpoints").iterdir()] == [str(steps)]
        return RunCheckpoints(run).read_progress()

    mid = stop_after(2)  # half of epoch 0: validated, not an epoch yet
    assert mid["epochs"] == [] and mid["partial"]["steps"] == 2
    assert len(mid["partial"]["losses"]) == 2 and mid["partial"]["iterator"]["position"] == 2
    assert set(mid["partial"]["val"]) >= {"accuracy", "auroc"}
    assert mid["early_stopping"] == EarlyStopping(patience=config.patience).state_dict()
    assert stop_after(2) == mid  # the budget is spent: nothing trained, nothing saved
    end = stop_after(4)  # the rest of epoch 0
    assert "partial" not in end and len(end["epochs"]) == 1
    assert (end["epochs"][0]["train_loss"], end["epochs"][0]["val"]) == (
        full["epochs"][0]["train_loss"],
        full["epochs"][0]["val"],
    )
    assert stop_after(7)["partial"]["steps"] == 3
    assert not (run / "record.json").exists()
    resumed = fit.run_one(config, tmp_path / "b", **kw)
    for key in ("best_epoch", "val", "test"):
        assert resumed[key] == full[key], key
    for a, b in zip(full["epochs"], resumed["epochs"], strict=True):
        keys = ("train_loss", "val", "improved", "trainable_blocks")
        assert [a[k] for k in keys] == [b[k] for k in keys]
    assert sorted(p.name for p in run.iterdir()) == ["best", "record.json"]  # nothing else
    assert "attempts" not in resumed["environment"]  # one environment: an uninterrupted record
    # A finished run is skipped: the same record comes back without training.
    again = fit.run_one(config, tmp_path / "b", **kw)
    assert again["finished_at"] == resumed["finished_at"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["g_lf", "auto_rgn", "l2_sp"])
def test_a_staged_or_stateful_strategy_resumed_mid_stage_writes_the_uninterrupted_record(
    strategy, ported_tiny, demo, tmp_path
):
    """Stopped inside the epochs after blocks unfroze (G-LF), inside the RGN's
    per-epoch estimate (Auto-RGN) and with the SP starting point (L2-SP), twice: the resumed
    run trains and ends as the uninterrupted one (each stage's Adam counts, the gates, the
    starting point and the RGN statistics come back from the checkpoint)."""
    config = _config(strategy, ported_tiny, epochs=3, lr=1e-2, arch=TINY)
    kw = {"dataset": demo, "progress": False, "trainers": {}}
    full = fit.run_one(config, tmp_path / "a", **kw)
    spe = demo.steps_per_epoch(config.batch_size)
    for steps in (spe + spe // 2, 2 * spe + 1):  # inside epochs 1 and 2
        assert fit.run_one(config, tmp_path / "b", stop_after_steps=steps, **kw) == {}
    resumed = fit.run_one(config, tmp_path / "b", **kw)
    keys = ("train_loss", "val", "trainable_blocks")
    assert [[e[k] for k in keys] for e in resumed["epochs"]] == [
        [e[k] for k in keys] for e in full["epochs"]
    ]
    stages = {tuple(e["trainable_blocks"]) for e in full["epochs"]}
    assert len(stages) == (3 if strategy == "g_lf" else 1)  # a stage begins in each stop's epoch
    assert (resumed["best_epoch"], resumed["test"]) == (full["best_epoch"], full["test"])


@pytest.mark.slow
def test_a_resume_in_another_environment_is_noted_and_recorded(
    ported_tiny, demo, tmp_path, capsys, monkeypatch
):
    """Killed on 2 CPU threads and resumed on 1 (another device, another jax): the numbers
    are those of neither uninterrupted run. The resume says so in one line, and the record
    lists each environment the run trained in, not only the last call's."""
    from medft_jax import environment

    config = _config("lp", ported_tiny, epochs=2, lr=1e-2, arch=TINY)
    out = tmp_path / "runs"
    spe = demo.steps_per_epoch(config.batch_size)
    threads = environment.cpu_threads()
    assert fit.run_one(config, out, dataset=demo, progress=False, stop_after_steps=spe) == {}
    capsys.readouterr()
    monkeypatch.setattr(environment, "cpu_threads", lambda: threads + 7)
    record = fit.run_one(config, out, dataset=demo, progress=False)
    notes = [x for x in capsys.readouterr().err.splitlines() if "environment" in x]
    assert notes == [
        f"note: resuming after step {spe} in another environment than before (cpu_threads "
        f"{threads} -> {threads + 7}): the run's numbers will be those of neither's "
        "uninterrupted run, and its record lists each (environment.attempts); --force "
        "trains it over here"
    ]
    env = record["environment"]
    assert env["cpu_threads"] == threads + 7  # this call's, as before
    assert [(a["from_step"], a["cpu_threads"]) for a in env["attempts"]] == [
        (0, threads),
        (spe, threads + 7),
    ]
    assert env["attempts"][0]["jax"] == env["packages"]["jax"]


@pytest.mark.slow
def test_default_command_prints_table(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDFT_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(weights_port, "port_imagenet", _offline)
    monkeypatch.setattr(pretrained, "_UNAVAILABLE", {})
    monkeypatch.setattr(pretrained, "_WARNED", set())
    argv = ["--strategy", "lp", "--epochs", "1", "--out", str(tmp_path / "runs"), "--no-progress"]
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert "TRAINING FROM RANDOM INITIALISATION" in cap.err
    assert "test metrics:" in cap.out and "  accuracy" in cap.out
    assert "final stage" not in cap.out  # LP has one stage
    record_line = next(x for x in cap.out.splitlines() if x.startswith("record: "))
    record = json.loads(Path(record_line.removeprefix("record: ")).read_text())
    assert record["config"]["dataset"] == "demo" and record["config"]["image_size"] == 32
    # The demo's images are made at 32 px, never resized: predict must not resize to 33.
    from medft_jax.checkpoints.model import load_metadata

    best = load_metadata(Path(record_line.removeprefix("record: ")).parent / "best")
    assert (best["resize_size"], best["crop_size"]) == (32, 32)
    # The folder predict takes, said (it was left to be found among the run's files).
    model = Path(record_line.removeprefix("record: ")).parent / "best"
    assert f"model (predict --checkpoint): {model}" in cap.out.splitlines()
    # The same command again trains nothing: skipped, and no warning of random weights;
    # the record is stamped as found current (report --latest orders by it).
    stamp = Path(record_line.removeprefix("record: ")).parent / results.CONFIRMED_NAME
    assert not stamp.exists()
    monkeypatch.setattr(pretrained, "_WARNED", set())
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert "skipped: record exists" in cap.out and "RANDOM INITIALISATION" not in cap.err
    assert json.loads(stamp.read_text())[results.CONFIRMED_KEY] > record["finished_at"]


def test_test_metrics_from_before_the_final_stage_are_noted(capsys):
    """The demo's LP-FT summary said "best epoch 1 of 8" of a run whose fine-tuning began
    at epoch 6: its test metrics were linear probing's, and nothing said so."""
    from experiments.run import _note_tested_before_final_stage

    def record(best: int, seed: int = 0) -> dict:
        config = {"strategy": "lp_ft", "seed": seed}
        return {"config": config, "best_epoch": best, "final_stage_epoch": 5, "epochs": [0] * 8}

    _note_tested_before_final_stage([record(0)])
    assert capsys.readouterr().out == (
        "note: lp_ft's final stage begins at epoch 6, and its run was tested with parameters "
        "from before it (the best epoch came earlier, or the run ended first): the strategy's "
        "numbers as its protocol picks them (the best validation over the whole run), from "
        "parameters that never trained as its final stage does (the report marks such "
        "cells ¶)\n"
    )
    _note_tested_before_final_stage([record(6), record(3, 1), record(5, 2)])
    assert ", and 1 of its 3 runs were tested with" in capsys.readouterr().out
    _note_tested_before_final_stage([record(5), record(7, 1)])  # best in the final stage
    assert capsys.readouterr().out == ""


def _offline(arch):
    raise weights_port.PortError("cannot download (offline?)")


def test_unavailable_weights_are_tried_and_reported_once(tmp_path, capsys, monkeypatch):
    """A sweep's runs on an offline node: one download attempt and one warning per arch."""
    monkeypatch.setenv("MEDFT_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pretrained, "_UNAVAILABLE", {})
    monkeypatch.setattr(pretrained, "_WARNED", set())
    tries = []
    monkeypatch.setattr(
        weights_port, "port_imagenet", lambda arch: tries.append(arch) or _offline(arch)
    )
    for _ in range(3):
        assert pretrained.resolve("auto", "resnet50") == (
            None,
            "none (ImageNet weights unavailable)",
        )
    assert tries == ["resnet50"]
    err = capsys.readouterr().err
    assert err.count("TRAINING FROM RANDOM INITIALISATION") == 1
    assert err.endswith(
        "INITIALISATION. Port them with: python -m weights_port --download --arch resnet50\n"
    ), err
    # Offline, the download's own line names the --torch-weights route: the --download
    # hint after it would be the command that just failed.
    monkeypatch.setattr(pretrained, "_UNAVAILABLE", {})
    monkeypatch.setattr(pretrained, "_WARNED", set())
    said = "cannot download URL (offline?); offline? Download it elsewhere, then python -m "
    monkeypatch.setattr(
        weights_port,
        "port_imagenet",
        lambda arch: (_ for _ in ()).throw(
            weights_port.PortError(said + "weights_port --arch resnet50 --torch-weights FILE")
        ),
    )
    pretrained.resolve("auto", "resnet50")
    err = capsys.readouterr().err
    assert err.endswith("--torch-weights FILE); TRAINING FROM RANDOM INITIALISATION.\n"), err
    monkeypatch.setattr(
        weights_port, "port_imagenet", lambda arch: tries.append(arch) or _offline(arch)
    )
    with pytest.raises(pretrained.CheckpointError, match=r"^--weights imagenet: cannot download"):
        pretrained.resolve("imagenet", "resnet50")
    assert tries == ["resnet50"]
    pretrained.resolve("auto", "densenet121")  # another arch is tried on its own
    assert tries == ["resnet50", "densenet121"]


def test_an_unwritable_weights_cache_trains_from_random_init_and_names_the_fix(
    tmp_path, capsys, monkeypatch
):
    """A read-only HOME stopped the demo (``--weights auto``) with ".../.cache: read-only
    file system", naming no fix, where offline it trains from random initialisation."""
    (tmp_path / "afile").write_text("x")  # as a read-only HOME would (root ignores modes)
    monkeypatch.setenv("MEDFT_JAX_CACHE", str(tmp_path / "afile" / "cache"))
    monkeypatch.setattr(pretrained, "_UNAVAILABLE", {})
    monkeypatch.setattr(pretrained, "_WARNED", set())
    assert pretrained.resolve("auto", "resnet50") == (None, "none (ImageNet weights unavailable)")
    why = (
        f"the weights cache {tmp_path / 'afile' / 'cache' / 'flax'} cannot be written "
        "(Not a directory); set MEDFT_JAX_CACHE to a writable folder"
    )
    assert capsys.readouterr().err == (
        f"WARNING: no ImageNet weights for resnet50 ({why}); TRAINING FROM RANDOM INITIALISATION.\n"
    )
    with pytest.raises(pretrained.CheckpointError) as e:
        pretrained.resolve("imagenet", "resnet50")
    assert str(e.value) == f"--weights imagenet: {why}"
    # The cache folder itself a file (EEXIST, not ENOTDIR): the same warning, not a stop.
    (tmp_path / "c2").mkdir()
    (tmp_path / "c2" / "flax").write_text("x")
    monkeypatch.setenv("MEDFT_JAX_CACHE", str(tmp_path / "c2"))
    monkeypatch.setattr(pretrained, "_UNAVAILABLE", {})
    monkeypatch.setattr(pretrained, "_WARNED", set())
    assert pretrained.resolve("auto", "resnet50") == (None, "none (ImageNet weights unavailable)")
    assert f"the weights cache {tmp_path / 'c2' / 'flax'} cannot be written (File exists)" in (
        capsys.readouterr().err
    )
    # A download cut off or a full disk is no unwritable cache: it stops the run, as
    # before, rather than train it (and a sweep's every later run) from random weights.
    monkeypatch.setenv("MEDFT_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pretrained, "_UNAVAILABLE", {})

    def cut_off(arch):
        raise TimeoutError("The read operation timed out")

    monkeypatch.setattr(weights_port, "port_imagenet", cut_off)
    with pytest.raises(TimeoutError):
        pretrained.resolve("auto", "resnet50")
    assert pretrained._UNAVAILABLE == {}


def test_an_arch_without_imagenet_weights_is_said_not_a_crash(tmp_path, capsys, monkeypatch):
    """resnet_tiny (the test arch) has no torchvision weights: auto warns, imagenet refuses."""
    monkeypatch.setenv("MEDFT_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pretrained, "_UNAVAILABLE", {})
    monkeypatch.setattr(pretrained, "_WARNED", set())
    monkeypatch.setattr(weights_port, "port_imagenet", lambda arch: pytest.fail("no port"))
    with pytest.raises(
        pretrained.CheckpointError,
        match=r"^--weights imagenet: --arch resnet_tiny: no ImageNet weights known; known: "
        "resnet50, densenet121, vgg19$",
    ):
        pretrained.resolve("imagenet", "resnet_tiny")
    monkeypatch.setattr(pretrained, "_UNAVAILABLE", {})
    monkeypatch.setattr(pretrained, "_WARNED", set())
    for _ in range(2):
        assert pretrained.resolve("auto", "resnet_tiny")[0] is None
    err = capsys.readouterr().err
    assert err.count("TRAINING FROM RANDOM INITIALISATION") == 1 and "--weights none" in err
    assert "python -m weights_port" not in err  # porting cannot help this arch


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--strategy", "sgd"], "error: --strategy 'sgd' is unknown; valid: ft, lp, g_lf"),
        (["--strategy", "ft", "--arch", "resnet18"], "error: --arch 'resnet18' is unknown"),
        (["--strategy", "ft", "--dataset", "imagenet"], "error: --dataset 'imagenet': unknown"),
        (
            ["--strategy", "ft", "--dataset", "medmnist/breastmnist@064"],
            "error: --dataset 'medmnist/breastmnist@064': size @064 is not one of 28, 64, 128, 224",
        ),
        (["--strategy", "ft", "--dataset", "demo@64"], "error: --dataset 'demo@64': unknown;"),
        (["--strategy", "ft", "--weights", "/nonexistent"], "error: --weights /nonexistent: no"),
        (["--strategy", "ft", "--image-size", "16"], "error: --image-size must be in [32, 1024]"),
        (["--strategy", "ft", "--image-size", "1000000"], "error: --image-size must be in [32,"),
        (["--strategy", "ft", "--lr", "0"], "error: --lr must be in (0, 1], got 0.0"),
        (["--strategy", "ft", "--lr", "-1"], "error: --lr must be in (0, 1], got -1.0"),
        (["--strategy", "ft", "--lr", "nan"], "error: --lr must be a finite number"),
        (["--strategy", "ft", "--epochs", "0"], "error: --epochs must be in [1, 10000], got 0"),
        (["--strategy", "ft", "--batch-size", "0"], "error: --batch-size must be in [1, 8192]"),
        (["--strategy", "ft", "--patience", "-1"], "error: --patience must be in [0, 10000]"),
        (["--strategy", "ft", "--seeds", "0", "-3"], "error: --seeds must be in [0, 2147483647]"),
        (["--strategy", "lp_ft", "--lp-epochs", "-1"], "error: --lp-epochs must be in [1, 10000]"),
        (  # a test arch misspelt: "did you mean resnet50?", the test archs not listed
            ["--strategy", "ft", "--arch", "resnet-tiny"],
            "error: --arch 'resnet-tiny' is unknown; valid: resnet50, densenet121, vgg19, "
            "resnet_tiny, vgg_tiny; did you mean resnet_tiny?",
        ),
        (["--strategy", "l2_sp", "--alpha", "inf"], "error: --alpha must be a finite number"),
        (["--strategy", "ft", "--dataset", "bach", "--csv-file", "x.csv"], "error: --csv-file"),
        (["--strategy", "ft", "--val-fraction", "1.5"], "error: --val-fraction must be in (0, 1)"),
        (  # not "the file-based datasets": a paper task refuses it too
            ["--strategy", "ft", "--test-fraction", "0.2"],
            "error: --test-fraction applies to folder and csv only, not to --dataset demo",
        ),
        (
            ["--strategy", "ft", "--val-fraction", "0.2"],
            "error: --val-fraction applies to folder, csv and the paper tasks only, not to "
            "--dataset demo",
        ),
        (["--strategy", "ft", "--dataset", "bach", "--manual-dir", "/x"], "error: --manual-dir"),
        (["--strategy", "ft", "--rgn-mode", "prepass"], "error: --rgn-mode applies to auto_rgn"),
        (["--strategy", "l1_sp", "--no-sp-half"], "error: --no-sp-half applies to l2_sp only, no"),
        (["--strategy", "ft", "--alpha", "0.1"], "error: --alpha applies to l1_sp, l2_sp only"),
        (["--strategy", "ft", "--alpha", "0.01"], "error: --alpha applies to l1_sp, l2_sp only"),
        (["--strategy", "ft", "--lr-decay", "0.5"], "error: --lr-decay applies to llrd only"),
        (["--strategy", "ft", "--rgn-eps", "1e-6"], "error: --rgn-eps applies to auto_rgn only"),
        (["--strategy", "auto_rgn", "--rgn-eps", "-1"], "error: --rgn-eps must be in [0, 1], got"),
        (["--strategy", "llrd", "--lr-decay", "0"], "error: --lr-decay must be in (0, 1), got 0.0"),
        (
            ["--strategy", "lp_ft", "--lp-epochs", "0"],
            "error: --lp-epochs 0: LP-FT without head-only epochs is FT under LP-FT's name",
        ),
        (
            ["--strategy", "ft", "--data-dir", "/tmp/medft-test-never-made"],
            "error: --data-dir does not apply to --dataset demo (synthetic, no files)\n",
        ),
        (
            ["--strategy", "lp", "--no-feature-cache"],
            "error: --no-feature-cache applies under --frozen-bn freeze (or with VGG-19, which "
            "has no BatchNorm), with a strategy that freezes blocks, only",
        ),
        (
            ["--strategy", "ft", "--frozen-bn", "freeze", "--no-feature-cache"],
            "error: --no-feature-cache applies under --frozen-bn freeze (or with VGG-19, which "
            "has no BatchNorm), with a strategy that freezes blocks, only",
        ),
        (
            ["--strategy", "ft", "--dataset", "bach", "--skip-bad-images"],
            "error: --skip-bad-images applies to folder and csv datasets; bach reads what "
            "experiments.prepare wrote into --data-dir (give it to experiments.prepare)\n",
        ),
        (  # prepare refuses it for MedMNIST too: no "give it to experiments.prepare"
            ["--strategy", "ft", "--dataset", "medmnist/breastmnist", "--skip-bad-images"],
            "error: --skip-bad-images applies to folder and csv datasets; medmnist/breastmnist "
            "reads its .npz from --data-dir (or its medmnist/ folder): put the file there, or "
            "let the run download it\n",
        ),
        (  # was sent to experiments.prepare, which refuses --manual-dir for MedMNIST
            ["--strategy", "ft", "--dataset", "medmnist/breastmnist", "--manual-dir", "/tmp"],
            "error: --manual-dir applies to folder and csv datasets; medmnist/breastmnist "
            "reads its .npz from --data-dir (or its medmnist/ folder): put the file there, or "
            "let the run download it\n",
        ),
        (
            ["--strategy", "ft", "--weights", __file__],  # a file: a torch .pth, say
            f"error: --weights {__file__}: a file, expected a model checkpoint folder; a torch "
            ".pth or .safetensors is ported into one first: python -m weights_port --arch "
            "resnet50 --torch-weights FILE --out DIR\n",
        ),
        (
            ["--strategy", "ft", "--manual-dir", "/tmp"],  # demo, the default: no files
            "error: --manual-dir applies to folder and csv datasets; demo is generated in "
            "memory from a seed and reads no files\n",
        ),
    ],
)
def test_bad_flags_are_named(argv, message, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    assert not Path("/tmp/medft-test-never-made").exists()
    assert not any(tmp_path.rglob("record.json"))


def test_an_empty_weights_path_is_named(capsys):
    """--weights '' said only "must be auto, imagenet, none or a checkpoint folder"."""
    with pytest.raises(SystemExit) as exit_:
        main(["--strategy", "ft", "--weights", ""])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith(
        "error: argument --weights: an empty path; expected auto, imagenet, none or a model "
        "checkpoint folder"
    )


def test_strategy_option_flags_reach_the_config():
    from experiments.run import build_parser, make_configs

    def options(*argv):
        return dict(make_configs(build_parser().parse_args(list(argv)))[0].strategy_options)

    assert options("--strategy", "auto_rgn", "--rgn-mode", "prepass") == {"rgn_mode": "prepass"}
    assert options("--strategy", "l2_sp", "--no-sp-half") == {"sp_half": False}
    assert options("--strategy", "l2_sp", "--alpha", "0.1") == {"alpha": 0.1}
    assert options("--strategy", "auto_rgn") == {}  # defaults stay out of the run's name
    assert options("--strategy", "llrd", "--lr-decay", "0.5") == {"lr_decay": 0.5}
    assert options("--strategy", "auto_rgn", "--rgn-eps", "1e-6") == {"rgn_eps": 1e-6}
    assert options("--strategy", "auto_rgn", "--rgn-eps", "1e-8") == {}  # the default


def test_an_option_at_its_default_or_written_as_an_int_is_the_same_run(tmp_path):
    """``--lp-epochs 5`` is the run without it; a grid's ``alpha: 1`` is ``--alpha 1``."""
    import inspect

    from experiments.run import build_parser, make_configs
    from medft_jax import grid as grid_lib
    from medft_jax import strategies
    from medft_jax.config import OPTION_DEFAULTS

    made = inspect.signature(strategies.make).parameters
    assert {k: made[k].default for k in OPTION_DEFAULTS} == OPTION_DEFAULTS

    def config(*argv):
        (c,) = make_configs(build_parser().parse_args([*argv, "--seeds", "0", "--lr", "1e-3"]))
        return c

    def name(*argv):
        return results.run_name(config(*argv).to_dict())

    for strategy, flags in [
        ("lp_ft", ("--lp-epochs", "5")),
        ("g_lf", ("--epochs-per-stage", "1")),
        ("l1_sp", ("--alpha", "0.01", "--beta", "0.01")),
        ("auto_rgn", ("--rgn-mode", "stream")),
    ]:
        assert name("--strategy", strategy, *flags) == name("--strategy", strategy), flags
    assert name("--strategy", "lp_ft", "--lp-epochs", "4") != name("--strategy", "lp_ft")

    grid = grid_lib.Grid(
        name="g",
        datasets=("demo",),
        archs=("resnet50",),
        strategies=("l2_sp",),
        lrs=(1e-3,),
        seeds=(0,),
        strategy_options={"l2_sp": {"alpha": 1, "beta": 0.01}},
    )
    (from_grid,) = grid.configs()
    cli = config("--strategy", "l2_sp", "--alpha", "1")
    assert from_grid.strategy_options == cli.strategy_options == (("alpha", 1.0),)
    assert type(from_grid.strategy_options[0][1]) is float  # the same JSON, the same hash


def test_a_config_identified_on_other_data_is_refused(demo):
    """Its name would be the other data's run: found done, it would hand back that run's
    record for these images."""
    config = fit.RunConfig(strategy="lp", arch=TINY, weights="none", image_size=32)
    identified = fit.identify(config, demo)
    assert identified.data_fingerprint == demo.metadata["fingerprint"]
    assert fit.identify(identified, demo) is identified
    other = load_demo(seed=1, image_size=32, sizes=SIZES)
    assert other.metadata["fingerprint"] != demo.metadata["fingerprint"]
    with pytest.raises(UserError) as e:
        fit.identify(identified, other)
    assert str(e.value) == (
        f"the run's config was identified on data {demo.metadata['fingerprint']}, and the "
        f"dataset given is demo with data {other.metadata['fingerprint']}; identify it on this "
        "dataset (leave data_fingerprint and weights_fingerprint empty)"
    )


def _own_folder(root: Path) -> Path:
    """A user's two-class folder of 8 small PNGs a class (``<root>/<class>/<i>.png``)."""
    from tests.data_fakes import image

    for c, name in enumerate(("benign", "malignant")):
        (root / name).mkdir(parents=True)
        for i in range(8):
            image(100 * c + i, size=(36, 36)).save(root / name / f"{i}.png")
    return root


def test_own_data_records_its_folder_and_options_outside_the_runs_identity(
    tmp_path, monkeypatch, demo
):
    """Every user's dataset is named ``folder`` or ``csv``, so a record must say which
    folder (absolute), csv and layout options it read; the run's name stays its data's
    content fingerprint: two equal folders are one run, as before."""
    import shutil

    from medft_jax import data, results

    monkeypatch.chdir(tmp_path)
    _own_folder(tmp_path / "hospA")
    shutil.copytree(tmp_path / "hospA", tmp_path / "hospB")
    kw = {"data_dir": tmp_path / "data", "resize_size": 36, "crop_size": 32, "progress": False}
    a = data.load("folder", manual_dir="hospA", val_fraction=0.25, **kw)  # relative: resolved
    b = data.load("folder", manual_dir=tmp_path / "hospB", val_fraction=0.25, **kw)
    assert fit.data_source_of(a) == {
        "root": str((tmp_path / "hospA").resolve()),
        "options": {"val_fraction": 0.25},
        "skip_bad_images": False,
    }
    assert fit.data_source_of(b)["root"] == str((tmp_path / "hospB").resolve())
    assert fit.data_source_of(demo) is None  # a dataset known by its name
    config = fit.RunConfig(dataset="folder", arch=TINY, strategy="ft", weights="none")
    named = [results.run_name(fit.identify(config, ds).to_dict()) for ds in (a, b)]
    assert named[0] == named[1]
    assert not {"root", "manual_dir", "data_source"} & set(fit.identify(config, a).to_dict())

    rows = [("path", "label", "patient")]
    rows += [(f"{c}/{i}.png", c, f"p{i // 2}") for c in ("benign", "malignant") for i in range(8)]
    (tmp_path / "hospA" / "labels.csv").write_text("\n".join(map(",".join, rows)) + "\n")
    table = data.load(
        "csv", manual_dir="hospA", csv_file="labels.csv", group_column="patient",
        skip_bad_images=True, **kw,
    )  # fmt: skip
    assert fit.data_source_of(table) == {
        "root": str((tmp_path / "hospA").resolve()),
        "csv_file": str((tmp_path / "hospA" / "labels.csv").resolve()),
        "options": {"group_column": "patient"},
        "skip_bad_images": True,
    }


@pytest.mark.slow  # one run on a folder: the record and best/ say where its data came from
def test_a_folder_runs_record_and_best_checkpoint_name_its_folder(tmp_path, monkeypatch):
    from medft_jax import data
    from medft_jax.checkpoints.model import load_metadata

    monkeypatch.chdir(tmp_path)
    _own_folder(tmp_path / "imgs")
    ds = data.load(
        "folder", manual_dir="imgs", data_dir=tmp_path / "data", resize_size=36, crop_size=32,
        progress=False, val_fraction=0.25, test_fraction=0.25,
    )  # fmt: skip
    config = _config("ft", "none", arch=TINY, dataset="folder", epochs=1)
    record = fit.run_one(config, tmp_path / "runs", dataset=ds, progress=False)
    where = {
        "root": str((tmp_path / "imgs").resolve()),
        "options": {"test_fraction": 0.25, "val_fraction": 0.25},
        "skip_bad_images": False,
    }
    assert record["data_source"] == where
    assert "data_source" not in record["config"]
    on_disk = json.loads((tmp_path / "runs" / record["run"] / "record.json").read_text())
    assert on_disk["data_source"] == where
    assert load_metadata(tmp_path / "runs" / record["run"] / "best")["data_source"] == where


@pytest.mark.slow
def test_a_fresh_run_names_the_checkpoints_a_run_of_its_name_on_other_data_left(
    demo, tmp_path, capsys, monkeypatch
):
    """Killed, then the data edited, the same command starts another run (its hash covers
    the data): right, but nothing said that the killed run was not resumed, nor that its
    checkpoints stay on disk. One note names the folder, its size and the remedy."""
    from medft_jax import results

    config = _config("lp", "none", arch=TINY, epochs=1)
    out = tmp_path / "runs"
    name = results.run_name(fit.identify(config, demo).to_dict())
    killed = out / (name.rpartition("-")[0] + "-0123456789abcdef")
    (killed / "checkpoints" / "4" / "state").mkdir(parents=True)
    (killed / "checkpoints" / "4" / "state" / "d").write_bytes(b"x" * 2_000_000)
    finished = out / (name.rpartition("-")[0] + "-fedcba9876543210")  # has a record: not named
    (finished / "checkpoints" / "4").mkdir(parents=True)
    (finished / "record.json").write_text("{}")
    # A finished record of these settings on other data (a MedMNIST file edited since): the
    # run trained anew under a new name in silence.
    before = {**fit.identify(config, demo).to_dict(), "data_fingerprint": "0" * 64}
    recorded = out / (name.rpartition("-")[0] + "-aaaaaaaaaaaaaaaa")
    recorded.mkdir()
    (recorded / "record.json").write_text(json.dumps({"config": before}))
    assert fit.run_one(config, out, dataset=demo, progress=False, stop_after_steps=1) == {}
    err = capsys.readouterr().err
    assert (
        f"note: {recorded} holds a finished record of these settings on other data: the data "
        f"changed since, so {name} is another run and trains from scratch (the report takes "
        "one of the two: --latest, once the dataset's other runs are rerun on it too, or "
        "move the older folder out)\n"
    ) in err
    assert (
        f"note: {killed} (2.0 MB) holds the resume checkpoints of a stopped run of the same "
        "name on other data, weights or settings (the data edited since it stopped, say): it "
        f"is not resumed, {name} starts from scratch; unless you mean to finish it under its "
        "own settings, delete it to free the space\n"
    ) in err
    assert str(finished) not in err
    # Recorded on images decoded by an older decoding version: an upgrade, said once a
    # dataset, not "the data changed since" at every run.
    import dataclasses

    from medft_jax.data.images import DECODING_VERSION

    monkeypatch.setattr(fit, "_UPGRADES_SAID", set())
    for seed in (3, 4):
        other = dataclasses.replace(config, seed=seed)
        mine = results.run_name(fit.identify(other, demo).to_dict())
        older = out / (mine.rpartition("-")[0] + "-bbbbbbbbbbbbbbbb")
        older.mkdir()
        (older / "record.json").write_text(json.dumps(
            {"config": {**before, "seed": seed}, "decoding_version": DECODING_VERSION - 1}
        ))  # fmt: skip
        fit.run_one(other, out, dataset=demo, progress=False, stop_after_steps=1)
        err = capsys.readouterr().err
        said = (
            f"note: {older} holds a finished record of these settings on images decoded "
            f"by decoding version {DECODING_VERSION - 1}; version {DECODING_VERSION} decodes "
            "some of demo's files otherwise (an upgrade of medft-jax, whether or not the "
            "data was edited too)"
        )
        assert (said in err) == (seed == 3), err
        assert "the data changed since" not in err
    # Resumed, the run says where from, not this again.
    assert fit.run_one(config, out, dataset=demo, progress=False, stop_after_steps=2) == {}
    assert str(killed) not in capsys.readouterr().err


def test_the_leftover_note_skips_a_sibling_running_now_or_set_aside_by_force(tmp_path):
    """A bf16 run and an fp32 run of one name share a stem: the fp32 run, still running in
    another process, was named as a leftover "to delete". So was a forced rerun's folder,
    whose last record waits in previous/. Only a stopped sibling is named."""

    run_dir = tmp_path / "runs" / "bach-resnet50-lp-lr0.001-s0-aaaaaaaaaaaaaaaa"
    other = run_dir.parent / "bach-resnet50-lp-lr0.001-s0-bbbbbbbbbbbbbbbb"
    (other / "checkpoints" / "3").mkdir(parents=True)
    assert str(other) in fit._left_by_other_data(run_dir)  # stopped: no lock file
    host = locks._host()
    lock = other / locks.LOCK_NAME
    lock.write_text(json.dumps({"pid": os.getppid(), "host": host}))  # alive: running
    assert fit._left_by_other_data(run_dir) is None
    lock.write_text(json.dumps({"pid": os.getppid(), "host": host + "-elsewhere"}))
    assert fit._left_by_other_data(run_dir) is None  # another host's: cannot tell, not named
    lock.write_text("")  # a holder that has not written its pid yet
    assert fit._left_by_other_data(run_dir) is None
    gone = dead_pid()
    lock.write_text(json.dumps({"pid": gone, "host": host}))  # a killed holder's file
    assert str(other) in fit._left_by_other_data(run_dir)
    lock.write_text(json.dumps({"pid": os.getpid(), "host": host}))  # a container's reused pid
    assert str(other) in fit._left_by_other_data(run_dir)
    lock.write_text(json.dumps({"pid": os.getppid(), "host": host}))
    os.utime(lock, (0, 0))  # written before that live process started: its pid reused
    assert str(other) in fit._left_by_other_data(run_dir)
    lock.unlink()
    (other / "previous").mkdir()
    (other / "previous" / "record.json").write_text("{}")
    assert fit._left_by_other_data(run_dir) is None


def test_a_settings_note_is_said_once_per_session_not_once_per_run(capsys):
    """select (and a sweep, run --lr-grid) printed "g_lf's final stage begins at epoch 6,
    past --epochs 2" word for word once per LR arm."""
    config = fit.RunConfig("g_lf", epochs=2)
    said: set[str] = set()
    for _ in range(3):
        fit._say_what_the_run_cannot_do(config, 5, 10, said)
    err = capsys.readouterr().err
    assert err.count("note: g_lf's final stage begins at epoch 6, past --epochs 2") == 1
    fit._say_what_the_run_cannot_do(fit.RunConfig("g_fl", epochs=2), 5, 10, said)
    assert "g_fl's final stage" in capsys.readouterr().err  # another note: said
    for _ in range(2):  # a single run (no session) says it each time
        fit._say_what_the_run_cannot_do(config, 5, 10)
    assert capsys.readouterr().err.count("g_lf's final stage begins") == 2


def test_auto_rgn_notes_say_what_short_epochs_do(capsys):
    """Epochs no longer than the estimate window: the stream note said every epoch applies
    the previous one's estimate, yet epoch 1 has none and applies each step's own RGN (one
    epoch is --rgn-per-step's numbers). A prepass was cut to an epoch's batches silently."""
    stream = fit.RunConfig("auto_rgn", epochs=2)
    fit._say_what_the_run_cannot_do(stream, 0, 3)
    assert capsys.readouterr().err == (
        "note: auto_rgn estimates each epoch's RGN over its first 5 steps and an epoch here "
        "has 3: epoch 1 applies each step's own RGN (as --rgn-per-step), every later epoch "
        "the previous one's estimate (--rgn-mode prepass estimates it before the epoch "
        "trains)\n"
    )
    prepass = fit.RunConfig(
        "auto_rgn", epochs=2, strategy_options=(("rgn_estimate_steps", 10), ("rgn_mode", "prepass"))
    )
    fit._say_what_the_run_cannot_do(prepass, 0, 3)
    assert capsys.readouterr().err == (
        "note: auto_rgn's prepass averages at most an epoch's batches: 3 here, not the 10 of "
        "its estimate steps\n"
    )
    fit._say_what_the_run_cannot_do(prepass, 0, 10)  # as many batches as asked: no note
    fit._say_what_the_run_cannot_do(stream, 0, 6)
    assert capsys.readouterr().err == ""


def test_a_gpu_or_tpu_runs_environment_leaves_the_hosts_cpus_out(monkeypatch):
    """A preempted GPU job resumed on a node with another CPU allocation was "another
    environment" (cpu_threads differed), its record listing attempts and the note advising
    --force; the host's CPUs change the numbers of a CPU run only."""
    import jax

    from medft_jax import environment

    assert environment.numerics_environment()["cpu_threads"] == environment.cpu_threads()

    class Gpu:
        platform, device_kind = "gpu", "NVIDIA H100"

    monkeypatch.setattr(jax, "devices", lambda: [Gpu()])
    before = environment.numerics_environment()
    monkeypatch.setattr(environment, "cpu_threads", lambda: 3)
    assert before["cpu_threads"] is None
    assert environment.environment_changes(before, environment.numerics_environment()) == []


def test_the_resume_line_counts_in_words():
    """It said "after 0 epochs and 1 steps of epoch 1"."""
    from types import SimpleNamespace

    from medft_jax.fit import _resuming

    ckpts = SimpleNamespace(latest_dir="/runs/r/checkpoints")

    def said(epochs: int, steps: int | None) -> str:
        part = None if steps is None else SimpleNamespace(steps=steps, epoch=epochs)
        return _resuming(SimpleNamespace(epochs=[{}] * epochs, partial=part), ckpts)

    assert said(0, 1) == "note: resuming after 1 step of epoch 1, from /runs/r/checkpoints"
    assert said(1, 2) == (
        "note: resuming after 1 epoch and 2 steps of epoch 2, from /runs/r/checkpoints"
    )
    assert said(2, None) == "note: resuming after 2 epochs, from /runs/r/checkpoints"


def test_a_metric_that_rounds_to_zero_prints_without_a_minus():
    """sklearn's kappa of a 60-class run predicting one class is -2.2e-16: the summary
    printed ``kappa -0.0000`` beside other runs' ``0.0000``."""
    from experiments.run import _fmt

    assert [_fmt(-2.220446049250313e-16), _fmt(-0.0), _fmt(-0.00012), _fmt(None)] == [
        "0.0000",
        "0.0000",
        "-0.0001",
        "nan",
    ]


def test_a_records_data_says_the_dicom_patients_its_splits_share():
    """The load noted DICOM PatientIDs in more than one split once; the record kept nothing
    of it, so the report marked the inflated numbers of copies but not of a patient leak."""
    from types import SimpleNamespace

    def said(**meta):
        return fit.patients_across_splits(SimpleNamespace(metadata=meta))

    assert said() == {} and said(dicom_patients_across_splits=None) == {}
    leak = ["3", "'P1': a/0.dcm, b/2.dcm"]
    assert said(dicom_patients_across_splits=leak) == {
        "dicom_patients_across_splits": [3, "'P1': a/0.dcm, b/2.dcm"]
    }
    assert said(dicom_patients_across_groups=[2, "'P9': x, y"]) == {
        "dicom_patients_across_splits": [2, "'P9': x, y"]
    }
    both = said(dicom_patients_across_splits=leak, dicom_patients_across_groups=[2, "'P9'"])
    assert both == {"dicom_patients_across_splits": [5, "'P1': a/0.dcm, b/2.dcm"]}


def test_a_done_run_whose_data_headers_count_other_patients_across_splits_is_noted(capsys):
    """A DICOM PatientID edited after a run (the pixels, labels and splits not: the same
    run, skipped as done): each load noted the leak, but the record kept the old count and
    the report marked nothing, while the same grid run anew marked it inflated."""
    from types import SimpleNamespace

    from medft_jax.session import Session

    session = object.__new__(Session)
    meta = {"dicom_patients_across_splits": [2, "'P1': a/0.dcm, b/2.dcm"]}
    session.said = set()
    session.dataset = lambda config: SimpleNamespace(metadata=meta)
    session._load_key = lambda config: ("folder", "imgs")
    record = {"config": {}}
    session._note_headers_since(None, Path("/runs/r1/record.json"), record)
    assert capsys.readouterr().err == (
        "note: /runs/r1/record.json: its record counts 0 DICOM PatientID(s) with files in more "
        "than one split, the files' headers now 2 (the pixels, labels and splits are the same: "
        "the same run): the report reads the record and marks the numbers inflated by it; "
        "rerun with --force to record the headers' count (said once for the dataset's runs)\n"
    )
    session._note_headers_since(None, Path("/runs/r2/record.json"), record)
    assert capsys.readouterr().err == ""  # once for the dataset
    session.said = set()
    record["dicom_patients_across_splits"] = [2, "'P1': a/0.dcm, b/2.dcm"]
    session._note_headers_since(None, Path("/runs/r1/record.json"), record)
    meta.clear()  # headers mended since a record that counted a leak
    session._note_headers_since(None, Path("/runs/r1/record.json"), {"config": {}})
    assert capsys.readouterr().err == ""
    session._note_headers_since(None, Path("/runs/r1/record.json"), record)
    assert "its record counts 2 DICOM PatientID(s)" in capsys.readouterr().err


def test_a_resume_checkpoint_is_due_after_training_time_not_compile_time(monkeypatch):
    """A cold run's first epochs compiled for a minute on CPU: the 60 s clock counted it
    and saved a resume checkpoint (1.5-4 s) that the finish then deleted."""
    from types import SimpleNamespace

    monkeypatch.setenv("MEDFT_JAX_CHECKPOINT_SECONDS", "60")
    now = [1000.0]
    monkeypatch.setattr(fit.time, "perf_counter", lambda: now[0])
    run = SimpleNamespace(
        last_save=1000.0, compiled_at_save=5.0, trainer=SimpleNamespace(compile_seconds=5.0)
    )
    now[0] = 1070.0  # 70 s since the save, 50 of them compiling: 20 s of training
    run.trainer.compile_seconds = 55.0
    assert not fit._save_due(run)
    now[0] = 1111.0  # 61 s of training
    assert fit._save_due(run)


@pytest.mark.slow
def test_one_checkpoint_spelt_otherwise_is_the_same_run_skipped(
    ported_tiny, tmp_path, capsys, monkeypatch
):
    """--weights as an absolute path, a relative one and through a link: three runs, each
    trained, whose report was then refused as two records of one run. One spelling now
    (the resolved path); a record of another spelling (written before) is found by its
    checkpoint's content and skipped."""
    from medft_jax import results
    from medft_jax.session import Session

    out = tmp_path / "runs"
    common = ["--strategy", "lp", "--arch", TINY, "--epochs", "1", "--image-size", "32"]
    common += ["--batch-size", "16", "--out", str(out), "--no-progress"]
    assert main([*common, "--weights", str(ported_tiny)]) == 0
    (first,) = [p for p in out.iterdir() if p.is_dir()]
    capsys.readouterr()
    monkeypatch.chdir(ported_tiny.parent)
    (tmp_path / "link").symlink_to(ported_tiny.parent)
    for spelt in (ported_tiny.name, str(tmp_path / "link" / ported_tiny.name)):
        assert main([*common, "--weights", spelt]) == 0
        assert f"skipped: record exists (use --force): {first / 'record.json'}" in (
            capsys.readouterr().out
        )
    assert [p for p in out.iterdir() if p.is_dir()] == [first]
    # A record of the same checkpoint spelt otherwise (a relative path, before spellings
    # were resolved): found by the weights' content hash.
    record = json.loads((first / "record.json").read_text())
    record["config"]["weights"] = ported_tiny.name
    older = results.record_path(out, record["config"])
    results.write_record(older, record, sealed=True)
    shutil.rmtree(first)
    session = Session(out)
    config = fit.RunConfig(**{**record["config"], "weights": str(ported_tiny)})
    twin = session._weights_spelt_otherwise(config)
    assert twin is not None and session.path_of(twin) == older
    assert f"note: {older.parent}: this run's record, its --weights spelt " in (
        capsys.readouterr().err
    )
