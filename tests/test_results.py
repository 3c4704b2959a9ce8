"""Run records: stable names, atomic writes, loading, mean ± SE and the LR choice by hand."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

from medft_jax import atomic, environment, results
from medft_jax.report import aggregate
from medft_jax.results import RecordError

CONFIG = {
    "dataset": "medmnist/breastmnist@64",
    "arch": "resnet50",
    "strategy": "g_lf",
    "lr": 1e-4,
    "seed": 0,
    "epochs": 50,
    "patience": 5,
    "batch_size": 64,
    "image_size": 224,
    "precision": "fp32",
    "weights": "auto",
    "strategy_options": {},
}


# --- names ---------------------------------------------------------------------------------


def test_hash_is_stable_canonical_and_short():
    h = results.config_hash(CONFIG)
    assert len(h) == 16 and int(h, 16) >= 0
    reordered = dict(reversed(list(CONFIG.items())))
    assert results.config_hash(reordered) == h
    assert results.config_hash({**CONFIG, "lr": 0.0001}) == h
    assert results.config_hash({**CONFIG, "seed": np.int64(0)}) == h
    # Pinned: the hash names every run folder, so it must not change between versions.
    # The first 16 hex digits of sha256(b'{"a":1,"b":[1.5,"x"]}'):
    assert results.config_hash({"a": 1, "b": [1.5, "x"]}) == "253252306831c7a5"


@pytest.mark.parametrize(
    "change",
    [{"lr": 1e-3}, {"seed": 1}, {"epochs": 49}, {"strategy_options": {"lp_epochs": 3}}],
)
def test_hash_differs_for_different_configs(change):
    assert results.config_hash({**CONFIG, **change}) != results.config_hash(CONFIG)


def test_one_weights_folder_spelled_two_ways_is_one_run(tmp_path):
    """``--weights W/best/`` (tab completion) trained the run of ``--weights W/best`` again,
    and the report then refused the two as different settings."""
    from medft_jax.config import RunConfig

    names = {
        results.run_name(RunConfig(strategy="lp", weights=w).to_dict())
        for w in ("runs/x/best", "runs/x/best/", "runs//x/./best")
    }
    assert len(names) == 1
    assert RunConfig(strategy="lp", weights="runs/x/best/").weights == "runs/x/best"
    assert RunConfig(strategy="lp", weights="imagenet").weights == "imagenet"
    other = results.run_name(RunConfig(strategy="lp", weights="runs/y/best").to_dict())
    assert other not in names


def test_run_dir_and_record_path(tmp_path):
    d = results.run_dir(tmp_path, CONFIG)
    assert d.parent == tmp_path
    assert (
        d.name == f"medmnist_breastmnist_64-resnet50-g_lf-lr0.0001-s0-{results.config_hash(CONFIG)}"
    )
    assert results.record_path(tmp_path, CONFIG) == d / "record.json"
    assert results.record_path_of({"config": CONFIG}, tmp_path) == d / "record.json"
    with pytest.raises(KeyError, match="seed"):
        results.run_name({k: v for k, v in CONFIG.items() if k != "seed"})


# --- writing and reading ---------------------------------------------------------------------


def test_write_record_is_atomic_replaces_whole_and_writes_nan_as_null(tmp_path):
    path = results.record_path(tmp_path, CONFIG)
    results.write_record(path, {"config": CONFIG, "val": {"auroc": 0.5}, "old": "x" * 10_000})
    written = results.write_record(
        path,
        {
            "config": CONFIG,
            "val": {"auroc": float("nan"), "map": np.float32(0.25)},
            "epochs": [{"trainable_blocks": ("fc",), "images_per_s": None, "bad": math.inf}],
        },
    )
    assert os.listdir(path.parent) == ["record.json"]  # no temporary file left behind
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    back = results.read_record(path)
    assert back == written
    assert "old" not in back  # replaced whole, not merged or appended
    assert back["val"] == {"auroc": None, "map": 0.25}
    assert back["epochs"] == [{"trainable_blocks": ["fc"], "images_per_s": None, "bad": None}]


def test_a_failed_write_leaves_the_old_record_and_no_temp_file(tmp_path):
    path = tmp_path / "run" / "record.json"
    results.write_record(path, {"config": CONFIG, "test": {"map": 0.5}})
    with pytest.raises(TypeError, match=r"record\['test'\]\['map'\]: cannot write a object"):
        results.write_record(path, {"config": CONFIG, "test": {"map": object()}})
    assert os.listdir(path.parent) == ["record.json"]
    assert results.read_record(path)["test"] == {"map": 0.5}


def test_a_users_folder_named_previous_is_read_a_runs_previous_is_not(tmp_path):
    # previous/ inside a run folder holds what --force set aside: never a current result;
    # a folder of runs the user named "previous" holds runs like any other.
    old_runs = tmp_path / "previous"
    results.write_record(results.record_path(old_runs, CONFIG), {"config": CONFIG})
    run = results.run_dir(old_runs, CONFIG)
    (run / "previous").mkdir()
    results.write_record(run / "previous" / "record.json", {"config": CONFIG})
    (run / "previous.new").mkdir()
    (run / "previous.new" / "record.json").mkdir()  # a damaged set-aside one: not read at all
    assert [r["config"] for r in results.load_records(tmp_path)] == [CONFIG]


def test_load_records_skips_temp_files_and_names_a_corrupt_one(tmp_path):
    for seed in (1, 0):
        cfg = {**CONFIG, "seed": seed}
        results.write_record(results.record_path(tmp_path, cfg), {"config": cfg})
    run = results.run_dir(tmp_path, CONFIG)
    (run / ".record.json.abc123.tmp").write_text('{"config": {"half": ')  # a write in progress
    (run / "checkpoints").mkdir()
    loaded = results.load_records(tmp_path)
    assert sorted(r["config"]["seed"] for r in loaded) == [0, 1]

    bad = results.record_path(tmp_path, {**CONFIG, "seed": 2})
    bad.parent.mkdir()
    bad.write_text('{"config": {"dataset": "demo"')  # truncated
    with pytest.raises(RecordError, match=re.escape(str(bad))):
        results.load_records(tmp_path)
    bad.write_text("[1, 2]")
    with pytest.raises(RecordError, match=re.escape(f"{bad}: not a run record")):
        results.load_records(tmp_path)
    with pytest.raises(RecordError, match="nowhere: no such results folder"):
        results.load_records(tmp_path / "nowhere")


def test_run_folders_linked_in_from_another_disk_are_loaded_once(tmp_path):
    runs, scratch = tmp_path / "runs", tmp_path / "scratch"
    results.write_record(results.record_path(runs, CONFIG), {"config": CONFIG})
    moved = {**CONFIG, "seed": 1}
    results.write_record(results.record_path(scratch, moved), {"config": moved})
    results.write_failure(scratch, {**CONFIG, "seed": 2}, "nonfinite", "loss is nan")
    for cfg in (moved, {**CONFIG, "seed": 2}):
        (runs / results.run_name(cfg)).symlink_to(results.run_dir(scratch, cfg))
    (runs / "loop").symlink_to(runs)  # a loop, and a second way to every run
    (runs / "again").symlink_to(scratch)
    assert sorted(r["config"]["seed"] for r in results.load_records(runs)) == [0, 1]
    assert [f["config"]["seed"] for f in results.load_failures(runs)] == [2]


def test_a_linked_run_folder_whose_disk_is_gone_is_refused_not_left_out(tmp_path):
    """With the other disk unmounted the link dangled, and its runs vanished from every
    table without a word (the grid expected was worked out from the records left)."""
    runs, scratch = tmp_path / "runs", tmp_path / "scratch"
    results.write_record(results.record_path(runs, CONFIG), {"config": CONFIG})
    moved = {**CONFIG, "seed": 1}
    results.write_record(results.record_path(scratch, moved), {"config": moved})
    link = runs / results.run_name(moved)
    link.symlink_to(results.run_dir(scratch, moved))
    assert len(results.load_records(runs)) == 2
    scratch.rename(tmp_path / "unmounted")
    for load in (results.load_records, results.load_failures, results.unfinished_runs):
        with pytest.raises(RecordError) as err:
            load(runs)
        assert str(err.value) == (
            f"{link}: a link that leads nowhere or loops (to {results.run_dir(scratch, moved)}); "
            "expected a run folder or file it holds: its runs would vanish from every table "
            "(a disk not mounted?); mount it, or remove the link"
        )
    (runs / ".stale").symlink_to(tmp_path / "gone")  # hidden: never read, as data listings
    link.unlink()
    # A finished run's own link (a user's tb/ to a disk gone) holds no run: not refused.
    (results.run_dir(runs, CONFIG) / "tb").symlink_to(tmp_path / "gone")
    assert len(results.load_records(runs)) == 1


def test_records_in_hidden_and_recycle_folders_are_not_read(tmp_path):
    """A run folder deleted from a file manager (.Trash-1000/, $RECYCLE.BIN/) came back
    into the tables: a trashed one-seed run was its dataset's best."""
    results.write_record(results.record_path(tmp_path, CONFIG), {"config": CONFIG})
    for trash in (".Trash-1000/files", "$RECYCLE.BIN/S-1-5-21"):
        other = {**CONFIG, "seed": 7 + len(trash)}
        results.write_record(results.record_path(tmp_path / trash, other), {"config": other})
        results.write_failure(tmp_path / trash, {**other, "lr": 0.5}, "nonfinite", "nan")
    assert [r["config"]["seed"] for r in results.load_records(tmp_path)] == [CONFIG["seed"]]
    assert results.load_failures(tmp_path) == []


def test_a_record_edited_away_from_its_folder_is_refused(tmp_path):
    path = results.record_path(tmp_path, CONFIG)
    results.write_record(path, {"config": CONFIG})
    assert results.read_record(path)["config"] == CONFIG
    edited = json.loads(path.read_text())
    edited["config"]["lr"] = 1e-3  # another run now, in the first one's folder
    path.write_text(json.dumps(edited))
    now, named = results.config_hash(edited["config"]), results.config_hash(CONFIG)
    with pytest.raises(
        RecordError,
        match=rf"{re.escape(str(path))}: its config hashes to {now}, not the {named} its folder",
    ):
        results.load_records(tmp_path)
    # A record copied by hand into a folder of another name is read as it is.
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "record.json").write_text(json.dumps(edited))
    assert results.read_record(tmp_path / "kept" / "record.json")["config"]["lr"] == 1e-3


def test_a_copied_record_whose_config_no_longer_names_its_run_is_refused(tmp_path):
    # A finished seed 0 copied by hand to a folder without the hash, its seed edited to
    # 2: the folder check cannot see it, and it counted as a third seed that never ran.
    path = results.record_path(tmp_path / "runs", CONFIG)
    results.write_record(path, {"config": CONFIG, "run": results.run_name(CONFIG)})
    copied = tmp_path / "runs" / "seed2-copy" / "record.json"
    copied.parent.mkdir()
    copied.write_text(path.read_text())
    assert results.read_record(copied)["run"] == results.run_name(CONFIG)  # as it is: fine
    edited = json.loads(copied.read_text())
    edited["config"]["seed"] = 2
    copied.write_text(json.dumps(edited))
    with pytest.raises(
        RecordError,
        match=rf"^{re.escape(str(copied))}: its config is run "
        rf"{re.escape(results.run_name(edited['config']))}, not the "
        rf"{re.escape(results.run_name(CONFIG))} it records; the record was edited or copied",
    ):
        results.load_records(tmp_path / "runs")
    # A failure note names its run the same way.
    note = results.write_failure(tmp_path / "f", CONFIG, "nonfinite", "loss is nan")
    assert note["run"] == results.run_name(CONFIG)
    note_path = results.failure_path(tmp_path / "f", CONFIG)
    note["run"] = results.run_name({**CONFIG, "lr": 1e-3})
    note_path.write_text(json.dumps(note))
    with pytest.raises(RecordError, match="it records; the record was edited or copied"):
        results.load_failures(tmp_path / "f")


def test_a_sealed_record_edited_to_another_valid_number_is_refused(tmp_path):
    """In range and well formed, an edited test accuracy (or a digit the disk flipped)
    would flow into the tables: a run's record and failure note carry a checksum."""
    record = {"config": CONFIG, "run": results.run_name(CONFIG), "test": {"accuracy": 0.5469}}
    path = results.record_path(tmp_path / "runs", CONFIG)
    written = results.write_record(path, record, sealed=True)
    on_disk = json.loads(path.read_text())
    assert on_disk[results.SEAL_KEY] == results.content_hash(written)
    assert results.read_record(path) == written == record  # the seal is not handed on
    text = path.read_text()
    path.write_text(text.replace("0.5469", "0.99"))
    with pytest.raises(RecordError) as e:
        results.load_records(tmp_path / "runs")
    assert str(e.value) == (
        f"{path}: its contents do not match its record_sha256; the record was edited or "
        "damaged on disk: restore it, or delete it to run it again"
    )
    # Only the layout changed (re-indented by an editor): the same record.
    path.write_text(json.dumps(on_disk, indent=4, sort_keys=True))
    assert results.read_record(path) == record
    # Written before records were sealed: read as it is.
    del on_disk[results.SEAL_KEY]
    path.write_text(json.dumps({**on_disk, "test": {"accuracy": 0.99}}))
    assert results.read_record(path)["test"] == {"accuracy": 0.99}
    # A record read back and written again is sealed anew, not with the old seal.
    results.write_record(
        path, {**results.read_record(path), "test": {"accuracy": 0.7}}, sealed=True
    )
    assert results.read_record(path)["test"] == {"accuracy": 0.7}
    # Failure notes are sealed too.
    results.write_failure(tmp_path / "f", CONFIG, "nonfinite", "loss is nan")
    note = results.failure_path(tmp_path / "f", CONFIG)
    note.write_text(note.read_text().replace("nonfinite", "crashed"))
    with pytest.raises(RecordError, match=r"do not match its record_sha256"):
        results.load_failures(tmp_path / "f")


# --- mean and standard error -----------------------------------------------------------------


def test_mean_se_by_hand():
    # values 1, 2, 6: mean 3; deviations -2, -1, 3; sample variance (4 + 1 + 9)/2 = 7;
    # SE = sqrt(7)/sqrt(3) = sqrt(7/3)
    mean, se = aggregate.mean_se([1.0, 2.0, 6.0])
    assert mean == pytest.approx(3.0)
    assert se == pytest.approx(math.sqrt(7 / 3))


def test_mean_se_leaves_out_nan_and_none_and_one_value_has_no_se():
    assert aggregate.mean_se([1.0, float("nan"), 2.0, None, 6.0]) == pytest.approx(
        (3.0, math.sqrt(7 / 3))
    )
    mean, se = aggregate.mean_se([0.7, None])
    assert mean == 0.7 and math.isnan(se)
    assert all(math.isnan(x) for x in aggregate.mean_se([]))
    assert all(math.isnan(x) for x in aggregate.mean_se([None, float("nan")]))


# --- LR choice and summary --------------------------------------------------------------------


def record(lr: float, seed: int, val: float | None, test: dict | None = None, **cfg) -> dict:
    return {
        "config": {**CONFIG, "lr": lr, "seed": seed, **cfg},
        "primary_metric": "accuracy",
        "val": {"accuracy": val, "auroc": 0.5},
        "test": test or {"accuracy": val, "auroc": 0.5},
    }


def test_choose_lr_by_mean_validation_metric():
    recs = [
        # lr 1e-3: mean (0.70 + 0.80 + 0.90)/3 = 0.80
        record(1e-3, 0, 0.70),
        record(1e-3, 1, 0.80),
        record(1e-3, 2, 0.90),
        # lr 1e-4: mean (0.85 + 0.84 + 0.74)/3 = 0.81  <- highest mean, though not the best seed
        record(1e-4, 0, 0.85),
        record(1e-4, 1, 0.84),
        record(1e-4, 2, 0.74),
        # lr 1e-5: mean (0.60 + 0.95 + 0.60)/3 = 0.7167
        record(1e-5, 0, 0.60),
        record(1e-5, 1, 0.95),
        record(1e-5, 2, 0.60),
    ]
    assert aggregate.choose_lr(recs) == 1e-4
    assert aggregate.choose_lr(recs, "accuracy") == 1e-4
    assert aggregate.lr_means(recs)[1e-3] == pytest.approx(0.80)


def test_choose_lr_tie_goes_to_the_smaller_lr_whatever_the_order():
    recs = [
        record(1e-3, 0, 0.5),
        record(1e-3, 1, 0.75),
        record(1e-4, 0, 0.75),
        record(1e-4, 1, 0.5),
    ]
    assert aggregate.choose_lr(recs) == 1e-4
    assert aggregate.choose_lr(recs[::-1]) == 1e-4


def test_choose_lr_with_nan():
    recs = [
        record(1e-3, 0, None),  # an undefined metric for this seed: left out
        record(1e-3, 1, 0.9),  # lr 1e-3: mean over the one finite seed = 0.9
        record(1e-4, 0, 0.8),
        record(1e-4, 1, 0.85),
        record(1e-5, 0, float("nan")),  # lr 1e-5: no finite value, never chosen
    ]
    assert aggregate.choose_lr(recs) == 1e-3
    assert math.isnan(aggregate.lr_means(recs)[1e-5])
    with pytest.raises(RecordError, match="no finite validation accuracy"):
        aggregate.choose_lr([record(1e-3, 0, None), record(1e-4, 0, float("nan"))])


def test_choose_lr_refuses_mixed_configurations_and_duplicates():
    with pytest.raises(RecordError, match="epochs differ"):
        aggregate.choose_lr([record(1e-3, 0, 0.5), record(1e-4, 0, 0.6, epochs=10)])
    with pytest.raises(RecordError, match=r"two records for lr 0\.001, seed 0"):
        aggregate.choose_lr([record(1e-3, 0, 0.5), record(1e-3, 0, 0.6)])
    groups = aggregate.group_records([record(1e-3, 0, 0.5), record(1e-4, 1, 0.6, epochs=10)])
    assert sorted(len(g) for g in groups.values()) == [1, 1]


def test_summarise_at_the_chosen_lr():
    recs = [
        record(1e-3, 0, 0.9, {"accuracy": 0.1, "auroc": 0.1}),
        record(1e-4, 0, 0.5, {"accuracy": 1.0, "auroc": 0.8}),
        record(1e-4, 1, 0.6, {"accuracy": 2.0, "auroc": None}),
        record(1e-4, 2, 0.7, {"accuracy": 6.0, "auroc": 0.6}),
        record(1e-3, 1, 0.1, {"accuracy": 0.1, "auroc": 0.1}),
    ]
    # lr 1e-3: mean val 0.5; lr 1e-4: mean val 0.6 -> 1e-4
    s = aggregate.summarise(recs, ["accuracy", "auroc"])
    assert s["lr"] == 1e-4 and s["seeds"] == [0, 1, 2] and s["metric"] == "accuracy"
    assert s["test"]["accuracy"] == pytest.approx((3.0, math.sqrt(7 / 3)))
    # auroc: 0.8 and 0.6 (seed 1 undefined): mean 0.7, SE = sqrt(0.02)/sqrt(2) = 0.1
    assert s["test"]["auroc"] == pytest.approx((0.7, 0.1))
    assert s["n"] == {"accuracy": 3, "auroc": 2}
    assert s["val"]["accuracy"][0] == pytest.approx(0.6)
    assert s["lr_means"] == pytest.approx({1e-3: 0.5, 1e-4: 0.6})
    # Default metric names: the first chosen record's test keys.
    assert list(aggregate.summarise(recs)["test"]) == ["accuracy", "auroc"]


def test_written_records_round_trip_through_choice(tmp_path):
    for lr, seed, v in [(1e-3, 0, 0.6), (1e-4, 0, 0.7), (1e-4, 1, float("nan"))]:
        r = record(lr, seed, v)
        results.write_record(results.record_path(tmp_path, r["config"]), r)
    assert aggregate.choose_lr(results.load_records(tmp_path)) == 1e-4


# --- environment -------------------------------------------------------------------------------


def test_environment_info():
    env = environment.environment_info()
    json.dumps(env, allow_nan=False)
    assert env["device_count"] >= 1 and env["process_count"] >= 1
    assert env["packages"]["numpy"] == np.__version__
    assert env["packages"]["jax"] is not None
    # An installed wheel's record has no git revision: the toolkit's own version says which.
    assert env["packages"]["medft-jax"] == importlib.metadata.version("medft-jax")
    assert isinstance(env["device_kind"], str) and env["hostname"]
    assert set(env) >= {"python", "git_revision", "git_dirty", "local_device_count", "backend"}
    # What a CPU run's numbers depend on beyond the seed: the threads XLA may use.
    assert env["cpu_threads"] == len(os.sched_getaffinity(0))
    assert env["xla_flags"] == os.environ.get("XLA_FLAGS")


def test_the_cpus_a_run_may_use_are_its_affinity_not_the_machines(monkeypatch):
    """``taskset -c 0`` on a 2-core machine gave other numbers under one run name, and the
    record said nothing: it says 1 now, not the machine's count."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert environment.cpu_threads() == 1


def test_git_info_outside_a_checkout_is_none(tmp_path):
    pkg = tmp_path / "medft_jax"
    pkg.mkdir()
    assert environment.git_info(pkg) == {"git_revision": None, "git_dirty": None}


def test_git_info_in_this_checkout():
    repo = Path(results.__file__).resolve().parents[1]
    if not (repo / ".git").exists():
        pytest.skip("not running from a git checkout")
    info = environment.git_info()
    assert info["git_revision"] is not None and len(info["git_revision"]) == 40
    assert isinstance(info["git_dirty"], bool)


def test_records_are_readable_like_any_new_file(tmp_path):
    """mkstemp's private 0600 mode would hide records from the rest of a shared group."""
    results.write_record(tmp_path / "record.json", {"config": {}})
    mode = (tmp_path / "record.json").stat().st_mode & 0o777
    mask = atomic._umask()
    assert mode == 0o666 & ~mask
    if not mask & 0o044:  # the usual 022: group and others may read
        assert mode & 0o044 == 0o044
    from weights_port.state_io import write_state_dict  # an exported model, likewise

    write_state_dict({"fc.bias": np.zeros(2, np.float32)}, tmp_path / "m.safetensors")
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == mode


def test_content_hash_is_that_of_the_json_read_back():
    """A resume's progress with int keys (3, 12) sorted one way when saved and as strings
    ("12", "3") when read back: every mid-epoch resume was refused as damaged."""
    value = {"partial": {3: [1.5, float("nan")], 12: (2, 3)}, "seconds": {"val": 0.1}}
    back = json.loads(json.dumps(value))
    assert results.content_hash(value) == results.content_hash(back)
    back["partial"]["12"][0] = 4
    assert results.content_hash(value) != results.content_hash(back)


def test_a_results_walk_does_not_descend_into_a_run_folders_checkpoints(tmp_path, monkeypatch):
    """Every walk (records, failure notes, unfinished runs; three a report) went through each
    run's best/ and checkpoints/ orbax folders: 14,000 folders for the paper grid. A run
    folder's checkpoints hold no runs; a folder called best elsewhere is walked."""
    config = {"dataset": "demo", "arch": "resnet_tiny", "strategy": "ft", "lr": 1e-3, "seed": 0}
    run = results.record_path(tmp_path / "runs", config).parent
    results.write_record(run / results.RECORD_NAME, {"config": config})
    for sub in ("best/state/d", "checkpoints/3/state"):
        (run / sub).mkdir(parents=True)
    assert results.unfinished_runs(tmp_path / "runs") == []  # finished: its record says so
    elsewhere = tmp_path / "runs" / "best" / "grid"  # a user's folder named best: walked
    other = {**config, "seed": 1}
    results.write_record(results.record_path(elsewhere, other), {"config": other})
    walked = []
    real_walk = os.walk

    def counting(top, *args, **kwargs):
        for root, dirs, names in real_walk(top, *args, **kwargs):
            walked.append(Path(root).relative_to(tmp_path / "runs").as_posix())
            yield root, dirs, names

    monkeypatch.setattr(results.os, "walk", counting)
    found = [r["config"]["seed"] for _, r in results.load_records_at(tmp_path / "runs")]
    assert sorted(found) == [0, 1]
    # Nor is runs/ itself an unfinished run for holding that best/ (its runs unwalked).
    killed = results.run_dir(tmp_path / "runs" / "best", {**config, "seed": 2})
    (killed / "checkpoints" / "7").mkdir(parents=True)
    assert results.unfinished_runs(tmp_path / "runs") == [(killed, 0)]
    assert not [w for w in walked if w.startswith(f"{run.name}/")], walked


def test_json_nested_too_deeply_is_a_file_that_is_not_json(tmp_path):
    """JSON nested deeper than Python's parser goes (a damaged or hostile file) was a
    RecursionError traceback where each reader names a file that is not JSON: here a
    confirmation stamp (ignored: it orders runs only) and a sweep plan (named)."""
    from medft_jax import plans
    from medft_jax.errors import json_loads

    deep = "[" * 10**5 + "]" * 10**5
    with pytest.raises(json.JSONDecodeError, match="nested too deeply"):
        json_loads(deep)
    with pytest.raises(json.JSONDecodeError, match="nested too deeply"):
        json_loads(deep.encode())
    assert json_loads("[[1]]") == [[1]]
    (tmp_path / results.CONFIRMED_NAME).write_text(deep)
    assert results._confirmed_at(tmp_path) is None
    (tmp_path / results.CONFIRMED_NAME).write_text(json.dumps({results.CONFIRMED_KEY: "2026"}))
    assert results._confirmed_at(tmp_path) == "2026"
    (tmp_path / plans.PLANS_DIR).mkdir()
    (tmp_path / plans.PLANS_DIR / "a.json").write_text(deep)
    with pytest.raises(results.RecordError) as err:
        plans.load_plans(tmp_path)
    assert str(err.value).startswith(
        f"{tmp_path / plans.PLANS_DIR / 'a.json'}: not a readable sweep plan (JSONDecodeError)"
    )
