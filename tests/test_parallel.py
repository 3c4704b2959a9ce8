"""Data parallelism for real: 4 simulated devices and 2 processes train as 1 device does."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _worker(out: Path, *args: str, module: str = "tests.parallel_worker") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", module, str(out), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _run(*procs: subprocess.Popen) -> None:
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]


def _split(npz, devices: int) -> dict:
    prefix = f"{devices}/"
    return {k.removeprefix(prefix): npz[k] for k in npz.files if k.startswith(prefix)}


def _assert_same(a: dict, b: dict) -> None:
    """Equal to float32 rounding (reductions are split differently across devices)."""
    assert set(a) == set(b)
    np.testing.assert_allclose(a["bn/losses"], b["bn/losses"], rtol=1e-5)
    np.testing.assert_allclose(a["eval/losses"], b["eval/losses"], rtol=1e-5)
    # Logits (the eval step's output): relative, as their scale is the model's.
    np.testing.assert_allclose(a["eval/logits"], b["eval/logits"], rtol=1e-5, atol=1e-5)
    # BatchNorm's running statistics: the batch statistics are global, not per device.
    stats = [k for k in a if k.startswith("bn/stats/")]
    assert len(stats) == 2 * 17  # 17 BatchNorms
    for k in stats:
        scale = max(1.0, float(np.abs(b[k]).max()))
        np.testing.assert_allclose(a[k], b[k], atol=1e-4 * scale, rtol=0, err_msg=k)
    # The SGD update: the gradient is the global batch's (all-reduced), for every tensor.
    deltas = [k for k in a if k.startswith("eval/delta/")]
    assert len(deltas) == 17 + 2 * 17 + 2
    top = max(float(np.abs(b[k]).max()) for k in deltas)
    assert top > 0
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in deltas)
    assert worst <= 1e-3 * top, (worst, top)


@pytest.fixture(scope="module")
def four_and_one(tmp_path_factory):
    out = tmp_path_factory.mktemp("par") / "four.npz"
    _run(_worker(out, "--devices", "4"))
    npz = np.load(out)
    return _split(npz, 4), _split(npz, 1)


@pytest.mark.slow
@pytest.mark.xdist_group("parallel")
def test_four_devices_equal_one(four_and_one):
    four, one = four_and_one
    _assert_same(four, one)


@pytest.mark.slow
@pytest.mark.xdist_group("parallel")
def test_two_processes_equal_one(four_and_one, tmp_path):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two.npz"
    procs = [_worker(out, "--process", str(i), "--of", "2", "--port", str(port)) for i in range(2)]
    _run(*procs)
    _assert_same(_split(np.load(out), 2), four_and_one[1])


@pytest.mark.slow
@pytest.mark.xdist_group("parallel")
def test_two_processes_resume_a_run_stopped_mid_epoch(tmp_path):
    """Select's rungs stop runs inside an epoch; every host must resume from process 0's
    state. Both BatchNorm modes in one 2-process job (one distributed start for both)."""
    from medft_jax import fit, results
    from tests.resume_worker import run_config

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two"
    modes = ("update", "freeze")
    args = ("--of", "2", "--port", str(port), "--frozen-bn", *modes)
    procs = [_worker(out, "--process", str(i), *args, module="tests.resume_worker") for i in (0, 1)]
    _run(*procs)
    for frozen_bn in modes:
        (resumed,) = results.load_records(out / frozen_bn)
        config, ds = run_config(frozen_bn)
        straight = fit.run_one(config, tmp_path / "one" / frozen_bn, dataset=ds, progress=False)
        # Under freeze the one process trains LP from cached features, several steps a
        # call; two processes train it from the images (each would need its own rows).
        assert not any(e.get("from_features") for e in resumed["epochs"])
        assert all(e.get("from_features") for e in straight["epochs"]) == (frozen_bn == "freeze")
        for a, b in zip(resumed["epochs"], straight["epochs"], strict=True):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
            assert a["val"] == pytest.approx(b["val"], abs=1e-5)
        assert resumed["test"] == pytest.approx(straight["test"], abs=1e-5)


_SMALL_EVAL = """
import json
from medft_jax import fit
from medft_jax.config import RunConfig
from medft_jax.data.demo import load_demo
ds = load_demo(seed=0, image_size=32, sizes={"train": 64, "val": 13, "test": 11})
cfg = RunConfig(strategy="lp", arch="resnet_tiny", dataset="demo", weights="none",
                epochs=1, batch_size=16, image_size=32)
tests = [fit.run_one(cfg, f"{OUT}/{b}", dataset=ds, progress=False, eval_batch_size=b)["test"]
         for b in (2, 16)]
print(json.dumps(tests))
"""


@pytest.mark.slow
@pytest.mark.xdist_group("parallel")
def test_an_eval_batch_below_the_device_count_rounds_up(tmp_path):
    """2 rows on 4 devices: a batch of 4 (2 padded), the same metrics as a batch of 16."""
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", _SMALL_EVAL.replace("OUT", repr(str(tmp_path)))],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    small, large = json.loads(proc.stdout.strip().splitlines()[-1])
    assert small == pytest.approx(large, abs=1e-6)


def _two_processes(tmp_path: Path, per_process: list[list[str]]) -> list[list[str]]:
    """``experiments.run`` as a 2-process job, each process with its own extra flags; the
    ``error:`` lines of each (every process must exit 2, without a traceback)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    argv = ["--strategy", "lp", "--dataset", "demo", "--arch", "resnet_tiny", "--weights"]
    argv += ["none", "--epochs", "1", "--image-size", "32", "--batch-size", "8", "--no-progress"]
    procs = []
    for i, extra in enumerate(per_process):
        env = {
            **os.environ,
            "JAX_PLATFORMS": "cpu",
            "MEDFT_DISTRIBUTED": "1",
            "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(i),
        }
        cmd = [sys.executable, "-m", "experiments.run", *argv, *extra]
        procs.append(
            subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    errors = []
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 2, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        errors.append([line for line in err.splitlines() if line.startswith("error:")])
    assert [len(e) for e in errors] == [1, 1], errors
    return [e[0] for e in errors]


@pytest.mark.slow
@pytest.mark.xdist_group("parallel")
def test_processes_given_other_settings_are_refused_in_one_line_each(tmp_path):
    """One flag differing in a launcher's per-host command: the first collective with the
    two values failed inside JAX, a 35-line traceback on every process (another --epochs
    or data folder: every process waited forever)."""
    out = ["--out", str(tmp_path / "runs")]
    errors = _two_processes(tmp_path, [["--lr", "0.01", *out], ["--lr", "0.1", *out]])
    assert errors[0] == (
        "error: another process of this job was given other runs than process 0 (its own "
        "error line says which): give every process the same command"
    )
    # The runs are not identified yet: their hash named a folder no run writes.
    assert errors[1] == (
        "error: process 1 was given other runs (here 1, the first demo-resnet_tiny-lp-lr0.1-s0-*"
        ") than process 0: give every process the same command"
    )
    assert not list((tmp_path / "runs").rglob("record.json"))


@pytest.mark.slow
@pytest.mark.xdist_group("parallel")
@pytest.mark.parametrize("flags", [["--seeds", "0", "1"], ["--force"]])
def test_processes_given_other_run_lists_or_session_flags_are_refused(tmp_path, flags):
    """``--seeds 0 1`` on one host and ``--seeds 0`` on the other, or ``--force`` on one:
    each run was compared as it started, so the job trained the runs both had, then hung
    for ever (one process at shutdown, the other in its next run, or one skipping a run
    the other trained)."""
    out = ["--out", str(tmp_path / "runs")]
    errors = _two_processes(tmp_path, [[*out], [*flags, *out]])
    what = "runs" if flags[0] == "--seeds" else "session flags"
    assert errors[0] == (
        f"error: another process of this job was given other {what} than process 0 (its own "
        "error line says which): give every process the same command"
    )
    here = "(here 2, the first demo-" if what == "runs" else "(here force=True, retry_failed"
    assert errors[1].startswith(f"error: process 1 was given other {what} {here}")
    assert not list((tmp_path / "runs").rglob("record.json"))


@pytest.mark.slow
@pytest.mark.xdist_group("parallel")
def test_an_out_folder_not_shared_by_the_processes_is_refused_before_training(tmp_path):
    """A node-local --out (one path, two disks): each host wrote its checkpoint shards to
    its own, and the first save waited forever for shards process 0 never saw."""
    a, b = tmp_path / "a", tmp_path / "b"
    errors = _two_processes(tmp_path, [["--out", str(a)], ["--out", str(b)]])
    fix = "give a folder on a filesystem every host shares"
    assert errors == [
        f"error: --out {a}: not one folder for every process of this job: another process "
        f"does not see the file process 0 wrote there (its own error line says so); {fix}",
        f"error: --out {b}: not one folder for every process of this job: process 1 does "
        f"not see the file process 0 wrote there; {fix}",
    ]
    assert not a.exists() and not b.exists()  # made for the run, removed with its error
