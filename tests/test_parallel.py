"""Data parallelism for real: 4 simulated devices and 2 processes train as 1 device does."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _worker(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.parallel_worker", str(out), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _run(*procs: subprocess.Popen) -> None:
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]


def _assert_same(a: dict, b: dict) -> None:
    assert a["devices"] != b["devices"]
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-5)
    np.testing.assert_allclose(a["probs"], b["probs"], atol=1e-5)
    keys = [k for k in a.files if k.startswith(("params/", "stats/"))]
    assert keys and set(keys) == {k for k in b.files if k.startswith(("params/", "stats/"))}
    for k in keys:
        scale = max(1.0, float(np.abs(a[k]).max()))
        np.testing.assert_allclose(a[k], b[k], atol=2e-5 * scale, rtol=0, err_msg=k)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("par") / "one.npz"
    _run(_worker(out, "--devices", "1"))
    return np.load(out)


def test_four_devices_equal_one(single, tmp_path):
    out = tmp_path / "four.npz"
    _run(_worker(out, "--devices", "4"))
    _assert_same(np.load(out), single)


def test_two_processes_equal_one(single, tmp_path):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two.npz"
    procs = [_worker(out, "--process", str(i), "--of", "2", "--port", str(port)) for i in range(2)]
    _run(*procs)
    _assert_same(np.load(out), single)
