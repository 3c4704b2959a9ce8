"""Never lose or overwrite a user's data: report folders, run locks, a full disk.

The report replaces only a folder it wrote itself (its marker lists every
file); two processes on one run never both train it (a flock in the run
folder, dropped by the OS when its holder dies); a full disk is one line
naming the path, leaves no half-written record or checkpoint, and a rerun
once space is freed ends with the record an uninterrupted run writes. The
full-disk checks run twice: with ``ENOSPC`` raised where orbax and
tensorstore raise it (everywhere), and on a real small tmpfs (where this
process may mount one).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import report as report_cli
from experiments import sweep as sweep_cli
from medft_jax import fit, locks, results
from medft_jax.checkpoints import run as checkpoint
from medft_jax.checkpoints.model import load_metadata
from medft_jax.checkpoints.run import RunCheckpoints
from medft_jax.data.demo import load_demo
from medft_jax.errors import UserError, find_os_error, os_error_line
from medft_jax.locks import RunLocked
from medft_jax.report import collect, write_report
from medft_jax.report.write import MARKER, ReportError
from tests.processes import dead_pid, writers_temporaries
from tests.test_report import rec

ROOT = Path(__file__).resolve().parents[1]
FULL = "No space left on device"
TENSORSTORE_FULL = (
    'RESOURCE_EXHAUSTED: Error writing "params.w/0" in OCDBT database at local file "{path}/": '
    f"Failed to write 184 bytes to file 5: {FULL} [os_error_code='28']"
)
"""How tensorstore (under orbax) reports a full disk: a ValueError, not an OSError."""


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for a folder)."""
    return {
        p.relative_to(folder).as_posix(): (None if p.is_dir() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
    }


# --- the report only replaces what it wrote ----------------------------------------------------


def _record(strategy: str, seed: int, test: float) -> dict:
    return rec(strategy=strategy, seed=seed, val=test, test=test)


def _runs(folder: Path, strategies=("ft", "lp")) -> Path:
    for k, s in enumerate(strategies):
        for seed in (0, 1):
            r = _record(s, seed, 0.6 + 0.05 * k + 0.01 * seed)
            results.write_record(results.record_path_of(r, folder), r)
    return folder


def _summary(strategies=("ft", "lp")):
    return collect([_record(s, 0, 0.7) for s in strategies])


def test_report_refuses_a_folder_with_an_index_but_no_marker_and_leaves_it_untouched(
    tmp_path, capsys
):
    """What the old rule (an ``index.md`` means a report) deleted: a project folder."""
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "index.md").write_text("# my notes\n")
    (project / "src" / "train.py").write_text("print('mine')\n")
    (project / "tables").mkdir()
    (project / "tables" / "table08_bach.csv").write_text("hand-made\n")
    before = _snapshot(project)
    with pytest.raises(ReportError) as e:
        write_report(_summary(), project)
    assert str(e.value) == (
        f"--out {project}: not empty and not a report written by experiments.report; "
        "choose another folder"
    )
    runs = _runs(tmp_path / "runs")
    assert report_cli.main(["--runs", str(runs), "--out", str(project)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a report written by experiments.report" in err
    assert _snapshot(project) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project", "runs"]  # no temporary


def test_report_replaces_its_own_report_and_its_marker_lists_every_file(tmp_path):
    out = tmp_path / "report"
    write_report(_summary(("ft", "lp", "g_lf")), out)
    first = json.loads((out / MARKER).read_text())
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert first["written_by"] == "experiments.report" and first["format"] == 1
    assert first["files"] == [f for f in on_disk if f != MARKER]
    assert "index.md" in first["files"] and any(f.startswith("figures/") for f in first["files"])
    old_index = (out / "index.md").read_text()
    assert "G-LF" in old_index

    write_report(_summary(("ft", "lp")), out)  # fewer strategies: a different index
    second = json.loads((out / MARKER).read_text())
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert second["files"] == [f for f in on_disk if f != MARKER]
    assert (out / "index.md").read_text() != old_index
    assert "G-LF" not in (out / "index.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # the old one is gone


def test_report_refuses_its_own_report_once_the_user_added_a_file(tmp_path):
    out = tmp_path / "report"
    write_report(_summary(), out)
    (out / "tables" / "my_notes.txt").write_text("do not lose me\n")
    before = _snapshot(out)
    with pytest.raises(ReportError) as e:
        write_report(_summary(), out)
    assert str(e.value) == (
        f"--out {out}: tables/my_notes.txt was not written by experiments.report; move it "
        "away or choose another folder"
    )
    assert _snapshot(out) == before
    # A folder the user made inside it, even empty, is not the report's either.
    (out / "tables" / "my_notes.txt").unlink()
    (out / "drafts").mkdir()
    with pytest.raises(ReportError, match="drafts was not written"):
        write_report(_summary(), out)
    assert (out / "drafts").is_dir()


def test_a_marker_listing_paths_outside_its_folder_is_not_a_report(tmp_path):
    """A hand-edited marker must not make the report delete files elsewhere."""
    victim = tmp_path / "precious.txt"
    victim.write_text("keep")
    out = tmp_path / "report"
    out.mkdir()
    (out / "index.md").write_text("x")
    marker = {"written_by": "experiments.report", "format": 1, "files": ["index.md"]}
    for files in (["index.md", "../precious.txt"], ["/etc/passwd"], "index.md"):
        (out / MARKER).write_text(json.dumps({**marker, "files": files}))
        with pytest.raises(ReportError, match=r"not a report written by experiments\.report"):
            write_report(_summary(), out)
    assert victim.read_text() == "keep" and (out / "index.md").read_text() == "x"


@pytest.mark.parametrize("where", ["same", "inside", "containing"])
def test_report_out_may_not_be_in_or_around_the_runs(tmp_path, capsys, where):
    runs = _runs(tmp_path / "work" / "runs")
    out = {"same": runs, "inside": runs / "report", "containing": tmp_path / "work"}[where]
    before = _snapshot(tmp_path)
    assert report_cli.main(["--runs", str(runs), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    problem = {
        "same": "is the --runs folder",
        "inside": f"is inside --runs {runs}",
        "containing": f"contains --runs {runs}",
    }[where]
    assert err == f"error: --out {out}: {problem}; choose a folder apart from the runs\n"
    assert _snapshot(tmp_path) == before


def test_report_refuses_a_symbolic_link_as_out(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "report"
    link.symlink_to(target)
    with pytest.raises(ReportError, match="is a symbolic link"):
        write_report(_summary(), link)
    assert list(target.iterdir()) == []


# --- one process per run -----------------------------------------------------------------------

HOLD = (
    "import sys, time\n"
    "from medft_jax import locks\n"
    "locks.acquire(sys.argv[1])\n"
    "print('locked', flush=True)\n"
    "time.sleep(600)\n"
)


def _holder(run_dir: Path) -> subprocess.Popen:
    """Another process holding ``run_dir``'s lock (until killed)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_gets_run_locked_naming_the_holder_and_kill_9_leaves_no_stale_lock(
    tmp_path,
):
    run = tmp_path / "runs" / "demo-run"
    proc = _holder(run)
    try:
        holder = json.loads((run / locks.LOCK_NAME).read_text())
        assert holder["pid"] == proc.pid
        with pytest.raises(RunLocked) as e, locks.run_lock(run):
            pytest.fail("took a lock another process holds")
        assert (e.value.pid, e.value.run_dir) == (proc.pid, run)
        assert str(e.value) == f"running in process {proc.pid}"  # same host: not named
        assert not isinstance(e.value, ValueError)  # not bad input
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (run / locks.LOCK_NAME).exists()  # the file outlives its killed holder...
    with locks.run_lock(run) as lock:  # ...but not its lock
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (run / locks.LOCK_NAME).exists()  # released: the file is gone


def test_the_lock_excludes_a_second_taker_clears_around_itself_and_tidies_up(tmp_path):
    run = tmp_path / "new-run"
    with locks.run_lock(run) as lock:
        # flock belongs to the open file, so even this process cannot take it twice.
        with pytest.raises(RunLocked, match=f"^running in process {os.getpid()}$"):
            locks.acquire(run)
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "x").write_text("old")
        (run / "record.json").write_text("{}")
        lock.clear_folder()  # --force: everything goes but the lock itself
        assert [p.name for p in run.iterdir()] == [locks.LOCK_NAME]
    assert not run.exists()  # the lock made the folder and nothing else was written
    # A holder on another host is named.
    e = RunLocked(run, 12, "node-7")
    assert str(e) == "running in process 12 on host node-7"
    assert str(RunLocked(run, None, None)) == "running in another process"


def test_a_run_folder_turned_read_only_names_the_write_that_failed_not_the_lock(
    tmp_path, monkeypatch
):
    """A run folder made read-only mid-run: the best/ save failed, then the lock's release
    could not remove .lock, and that error replaced the first (one line naming .lock, the
    lock's descriptor left open). The first error is said; the lock is dropped."""
    run = tmp_path / "run"
    real_unlink = os.unlink

    def read_only(path, *args, **kwargs):
        if Path(path).name == locks.LOCK_NAME:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(locks.os, "unlink", read_only)
    with pytest.raises(OSError, match="best") as e, locks.run_lock(run) as lock:
        fd = lock._fd
        raise OSError(errno.EROFS, "Read-only file system", str(run / "best"))
    assert e.value.filename == str(run / "best")
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)  # closed: the flock dropped
    monkeypatch.undo()
    with locks.run_lock(run):  # and the run can be taken again
        pass


BUILDER = """
import sys, time
from medft_jax import locks
with locks.build_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_waiter_stopped_while_waiting_leaves_the_holders_build_lock(tmp_path):
    """It never held the lock: removing the file would let a third process build alongside
    the holder."""
    lock = tmp_path / "cache" / ".variant.lock"
    run = [sys.executable, "-c", BUILDER, str(lock)]
    holder = subprocess.Popen([*run, "30"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        waiter = subprocess.Popen([*run, "0"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)  # blocked in flock
        waiter.send_signal(signal.SIGINT)
        waiter.wait(timeout=30)
        assert waiter.returncode != 0 and lock.exists()
    finally:
        holder.kill()
        holder.wait()
    # A holder whose build fails takes its lock file and the folders made for it along.
    with pytest.raises(RuntimeError, match="corrupt"), locks.build_lock(tmp_path / "a" / "b.lock"):
        raise RuntimeError("corrupt image")
    assert not (tmp_path / "a").exists()


def test_a_waiter_is_told_once_that_another_holds_the_lock(tmp_path):
    """A prepare waiting hours for another one's lock said nothing and looked hung."""
    import threading

    lock = tmp_path / "slot.lock"
    told: list[str] = []
    with locks.waiting_lock(lock, lambda: told.append("first")):
        pass
    assert told == []  # free: nothing to say
    got: list[float] = []
    with locks.waiting_lock(lock):

        def wait() -> None:
            with locks.waiting_lock(lock, lambda: told.append("waits")):
                got.append(time.monotonic())

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.3)
        assert told == ["waits"] and got == []  # told, then waiting
        released = time.monotonic()
    waiter.join(10)
    assert told == ["waits"] and got and got[0] >= released


def test_a_waiter_whose_holder_failed_locks_the_file_a_newcomer_holds(tmp_path):
    """The holder's failed build removed the file it held: its waiter then held a lock of
    no file while a newcomer locked a new one, and both built at once (the second told
    its slot "already exists; pass --force")."""
    import threading

    lock = tmp_path / "slot.lock"
    spans: list[tuple[float, float]] = []

    def build() -> None:
        with locks.waiting_lock(lock):
            start = time.monotonic()
            time.sleep(0.3)
            spans.append((start, time.monotonic()))

    with pytest.raises(RuntimeError), locks.build_lock(lock):
        waiter = threading.Thread(target=build)
        waiter.start()
        time.sleep(0.3)  # the waiter blocks in flock on the holder's file
        raise RuntimeError("download failed")
    build()  # the newcomer, at once: whichever locks the new file first, one at a time
    waiter.join(10)
    first, second = sorted(spans)
    assert first[1] <= second[0], spans


def _no_flock(fd, flags):
    raise OSError(errno.ENOLCK, "No locks available")


def test_a_filesystem_that_cannot_lock_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """An NFSv3 client without its lock daemon: refused before any work, or unlocked by choice."""
    monkeypatch.setattr(locks.fcntl, "flock", _no_flock)
    run = tmp_path / "new-run"
    with pytest.raises(UserError, match=r"new-run/\.lock: this filesystem refuses file locks "):
        locks.acquire(run)
    assert list(tmp_path.iterdir()) == []  # the folder it made is gone
    refused = pytest.raises(UserError, match=r"cache\.lock: this filesystem refuses")
    with refused, locks.waiting_lock(tmp_path / "cache.lock"):
        pytest.fail("went on unlocked")
    monkeypatch.setenv(locks.NO_LOCKS_ENV, "yes")
    with pytest.raises(
        UserError, match=r"^environment variable MEDFT_JAX_NO_LOCKS must be 0 or 1, got 'yes'$"
    ):
        locks.acquire(run)
    monkeypatch.setenv(locks.NO_LOCKS_ENV, "1")
    monkeypatch.setattr(locks, "_warned", False)
    warned = pytest.warns(RuntimeWarning, match="MEDFT_JAX_NO_LOCKS is set: runs are not locked")
    with warned, locks.run_lock(run), locks.waiting_lock(tmp_path / "cache.lock"):
        pass


MULTI_HOST = """
import json, os, sys
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
run_dir, port, index = sys.argv[1], sys.argv[2], int(sys.argv[3])
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=index)
from medft_jax import locks
try:
    with locks.run_lock(run_dir) as lock:
        lock.clear_folder()
        print(json.dumps({"cleared": not os.path.exists(os.path.join(run_dir, "old"))}))
except locks.RunLocked as e:
    print(json.dumps({"locked_by": e.pid}))
"""


def _two_process_job(run_dir: Path, script: str = MULTI_HOST, *args: str) -> list[dict]:
    """What each process of a 2-process jax.distributed job prints last (JSON): by default
    what it gets from ``run_lock``."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(run_dir), str(port), str(i), *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outcomes = []
    for p in procs:
        log, _ = p.communicate(timeout=300)
        assert p.returncode == 0, log[-3000:]
        outcomes.append(json.loads(log.strip().splitlines()[-1]))
    return outcomes


TWO_VIEWS = """
import json, os, sys
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
_, port, index = sys.argv[1], sys.argv[2], int(sys.argv[3])
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=index)
from medft_jax import results
from medft_jax.config import RunConfig
from medft_jax.runtime import process_0_says
from medft_jax import session
from medft_jax.session import Session
out = sys.argv[4 + index]  # each process its own view of the results folder
# One folder seen late by one host, simulated by two: the start-up check that --out is
# one folder would refuse them (tests/test_parallel.py tests it).
session.check_shared_folder = lambda *args, **kwargs: None
cfg = RunConfig(strategy="ft", data_fingerprint="d", weights_fingerprint="w")
if index == 0:
    results.write_record(results.record_path(out, cfg.to_dict()), {"config": cfg.to_dict()})
print(json.dumps({"says": process_0_says(10 + index), "status": Session(out).status(cfg)}))
"""


ONE_HOST_LACKS_DATA = """
import json, os, sys
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
_, port, index = sys.argv[1], sys.argv[2], int(sys.argv[3])
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=index)
from medft_jax.config import RunConfig
from medft_jax.data import DataError
from medft_jax.session import Session
folder = sys.argv[4 + index]  # process 1's copy has lost a class folder (a stale mount)
session = Session(sys.argv[6], data_dir=sys.argv[6 + index],  # one --out, shared
                  dataset_options={"folder": {"manual_dir": folder, "progress": False}})
config = RunConfig(strategy="lp", arch="resnet_tiny", dataset="folder", weights="none",
                   image_size=32, epochs=2, batch_size=4)
outcomes = []
for _ in range(2):  # the second meets the cached failure: still in step with the other
    o = session.run(config)
    outcomes.append([o.kind, o.error.split(": ", 1)[-1][:40]])
print(json.dumps(outcomes))
"""


@pytest.mark.slow
def test_a_dataset_one_process_cannot_load_is_unavailable_on_every_process(tmp_path):
    """Process 1 alone failing went on to the next run, pairing its collectives with
    another run's on process 0: a hung job."""
    from PIL import Image

    good, bad = tmp_path / "good", tmp_path / "bad"
    for root, classes in ((good, ("a", "b")), (bad, ("a",))):
        for c in classes:
            (root / c).mkdir(parents=True)
            for i in range(12):
                Image.new("RGB", (40, 40), (i * 20, 0 if c == "a" else 200, 0)).save(
                    root / c / f"{i}.png"
                )
    outs = [str(tmp_path / "out0"), str(tmp_path / "out1")]
    got = _two_process_job(tmp_path, ONE_HOST_LACKS_DATA, str(good), str(bad), *outs)
    assert got[0] == [["unavailable", "unavailable on another process of this j"]] * 2
    assert got[1] == [["unavailable", "only one class folder ('a'); a classifie"]] * 2


@pytest.mark.slow
def test_under_multi_host_jax_every_process_sees_what_process_0_sees(tmp_path):
    """A record one host sees and another does not yet (NFS caching) is done for both:
    processes that decided apart would wait at the run's next collective forever."""
    views = [str(tmp_path / "seen"), str(tmp_path / "not-yet")]
    assert _two_process_job(tmp_path, TWO_VIEWS, *views) == [{"says": 10, "status": "done"}] * 2


@pytest.mark.slow
def test_under_multi_host_jax_all_processes_run_the_run_or_none_does(tmp_path):
    """Only process 0 locks; the others learn the outcome (a mismatch would hang the job)."""
    free = tmp_path / "free"
    (free / "old").mkdir(parents=True)
    assert _two_process_job(free) == [{"cleared": True}] * 2  # the clear done before either goes on
    busy = tmp_path / "busy"
    proc = _holder(busy)
    try:
        assert _two_process_job(busy) == [{"locked_by": proc.pid}] * 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


SIZES = {"train": 16, "val": 8, "test": 8}  # 2 steps of 8 per epoch


@pytest.fixture(scope="module")
def demo():
    return load_demo(seed=0, image_size=32, sizes=SIZES)


def _config(epochs: int = 2) -> fit.RunConfig:
    """An LP run on ResNet-50's layers with one bottleneck each."""
    return fit.RunConfig(
        strategy="lp",
        arch="resnet_tiny",
        weights="none",
        epochs=epochs,
        batch_size=8,
        image_size=32,
        lr=1e-2,
    )


def test_a_run_writes_its_settings_in_its_lock(demo, tmp_path, monkeypatch):
    """A sweep's dry run tells which grid cell a held folder runs by them (the folder's
    name hashes the data's fingerprint too, which the dry run does not compute)."""
    seen = []
    taking = locks.run_lock

    @contextlib.contextmanager
    def spy(run_dir, settings=None):
        with taking(run_dir, settings) as lock:
            seen.append(locks.held_settings(run_dir))
            raise KeyboardInterrupt  # enough: the lock was taken and its file written
            yield lock

    monkeypatch.setattr(locks, "run_lock", spy)
    config = _config()
    with pytest.raises(KeyboardInterrupt):
        fit.run_one(config, tmp_path, dataset=demo, progress=False)
    assert seen == [results.settings_hash(config.to_dict())]


def _run_dir(out: Path, config: fit.RunConfig, ds) -> Path:
    return results.run_dir(out, fit.identify(config, ds).to_dict())


def test_run_one_on_a_run_another_process_holds_touches_nothing_even_with_force(tmp_path, demo):
    run = _run_dir(tmp_path, _config(), demo)
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "in-use").write_text("the other process's")
    proc = _holder(run)
    try:
        before = _snapshot(run)
        for force in (False, True):
            with pytest.raises(RunLocked) as e:
                fit.run_one(_config(), tmp_path, dataset=demo, progress=False, force=force)
            assert e.value.pid == proc.pid and e.value.run_dir == run
            assert _snapshot(run) == before
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.mark.slow  # four runs
def test_an_interrupted_force_keeps_the_finished_result_until_the_new_one_is_written(
    tmp_path, demo
):
    """``--force`` sets the finished record and best parameters aside in ``previous/``;
    a forced run stopped half-way (twice) still has them, no report reads them as the
    run's, and the run, resumed to its end, replaces them."""
    first = fit.run_one(_config(), tmp_path, dataset=demo, progress=False)
    run = tmp_path / first["run"]
    best = load_metadata(run / "best")["content_sha256"]
    for _ in range(2):  # stopped after one step, as if killed; then --force again
        assert (
            fit.run_one(
                _config(), tmp_path, dataset=demo, progress=False, force=True, stop_after_steps=1
            )
            == {}
        )
        kept = run / "previous"
        assert results.read_record(kept / "record.json") == first
        assert load_metadata(kept / "best")["content_sha256"] == best
        assert not (run / "record.json").exists() and results.load_records(tmp_path) == []
    second = fit.run_one(_config(), tmp_path, dataset=demo, progress=False)  # resumes
    assert results.load_records(tmp_path) == [second]
    assert second["test"] == pytest.approx(first["test"])  # the same run, trained again
    assert {"best", "record.json"} <= {p.name for p in run.iterdir()}
    assert not (run / "previous").exists() and not (run / "previous.new").exists()


def _grid(folder: Path, lrs, epochs=1) -> Path:
    path = folder / "grid.py"
    path.write_text(
        "from medft_jax.grid import Grid\n\n"
        "def get_config():\n"
        "    return Grid(name='locks', datasets=('demo',), archs=('resnet_tiny',),\n"
        f"                strategies=('lp',), lrs={tuple(lrs)!r}, seeds=(0,),\n"
        "                settings={'weights': 'none', 'epochs': " + str(epochs) + ",\n"
        "                          'patience': 5, 'batch_size': 32, 'image_size': 32})\n"
    )
    return path


def _grid_run_dirs(grid: Path, out: Path) -> list[Path]:
    from medft_jax import grid as grid_lib

    g = grid_lib.load_grid(grid)
    ds = fit.load_dataset(g.configs()[0])
    return [_run_dir(out, c, ds) for c in g.configs()]


@pytest.mark.slow
def test_sweep_skips_a_run_another_process_holds_and_goes_on(tmp_path, capsys):
    grid = _grid(tmp_path, lrs=(1e-3, 1e-4))
    out = tmp_path / "runs"
    first, second = _grid_run_dirs(grid, out)
    held = locks.acquire(first)  # a separate open file: excludes this process's sweep too
    try:
        # Exit 75 as experiments.run's: the held run has no record when the sweep ends.
        assert sweep_cli.main(["--config", str(grid), "--out", str(out)]) == 75
    finally:
        held.release()
    log = capsys.readouterr().out
    assert f"[1/2] {first.name}: running in process {os.getpid()}, skipped" in log
    assert f"[1/2] {first.name}: running\n" not in log  # said only of a run it holds
    assert f"[2/2] {second.name}: running\n" in log and f"[2/2] {second.name}: done in" in log
    assert "1 run now" in log and "1 running in another process, 0 not run" in log
    assert log.rstrip().endswith("1 run(s) still running in another process: no record yet")
    assert not (first / "record.json").exists() and (second / "record.json").is_file()


@pytest.mark.slow
def test_a_held_run_that_then_diverged_is_not_still_running(tmp_path, capsys, monkeypatch):
    """Its holder ended it with a failure note: two sweeps both exited 75, with nothing left
    running, so `sweep && report` stopped for no reason."""
    from medft_jax import outcomes
    from medft_jax.session import Session

    grid = _grid(tmp_path, lrs=(1e-3,))
    out = tmp_path / "runs"
    (first,) = _grid_run_dirs(grid, out)
    real_run = Session.run

    def run_then_the_holder_diverges(self, config, **kwargs):
        outcome = real_run(self, config, **kwargs)
        if outcome.kind == outcomes.BUSY:
            results.write_failure(out, outcome.config.to_dict(), "nonfinite", "loss is nan")
        return outcome

    monkeypatch.setattr(Session, "run", run_then_the_holder_diverges)
    held = locks.acquire(first)
    try:
        assert sweep_cli.main(["--config", str(grid), "--out", str(out)]) == 0
    finally:
        held.release()
    log = capsys.readouterr().out
    # Ended by the other process before this sweep's end: not said to be running.
    assert "1 run by another process meanwhile, 0 not run" in log
    assert "running in another process" not in log


@pytest.mark.slow
def test_two_sweeps_of_one_grid_at_once_both_succeed_with_one_record_per_run(tmp_path):
    grid = _grid(tmp_path, lrs=(1e-2, 1e-3, 1e-4))
    out = tmp_path / "runs"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    argv = [sys.executable, "-m", "experiments.sweep", "--config", str(grid), "--out", str(out)]
    procs = [
        subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        # A sweep that ends while the other still trains one of its runs exits 75, as
        # experiments.run does: `sweep && report` must not go on without that record.
        assert p.returncode in (0, 75), log[-3000:]
        assert (p.returncode == 75) == ("still running in another process" in log), log[-3000:]
        assert "Traceback" not in log, log[-3000:]
    assert 0 in [p.returncode for p in procs]  # the last to end found every record
    runs = _grid_run_dirs(grid, out)
    assert sorted(p.parent for p in out.rglob("record.json")) == sorted(runs)
    assert not list(out.rglob(".lock")) and not list(out.rglob("*.tmp"))


def test_only_temporaries_of_dead_writers_on_this_host_are_removed(tmp_path):
    """Two sweeps filling one cache at once: each cleans up after killed writers, never
    the folder the other is writing (nor one another host writes on a shared disk)."""
    import socket

    from medft_jax import atomic

    final = tmp_path / "r36_c32_s0"
    gone = dead_pid()
    host = socket.gethostname()
    names = {
        "live": f".{final.name}.tmp-{os.getpid()}@{host}-0123abcd",
        "dead": f".{final.name}.tmp-{gone}@{host}-0123abcd",
        "elsewhere": f".{final.name}.tmp-{gone}@another-host-0123abcd",
        "before": f"{final.name}.tmp-{gone}-0123abcd",  # written before hosts were named
        "other cache": f".r40_c32_s0.tmp-{gone}@{host}-0123abcd",
    }
    for name in names.values():
        (tmp_path / name).mkdir()
    mine = atomic.temporary_sibling(final)
    assert mine.name.startswith(f".{final.name}.tmp-{os.getpid()}@{host}-")
    atomic.remove_abandoned(final)
    left = {k for k, name in names.items() if (tmp_path / name).exists()}
    assert left == {"live", "elsewhere", "other cache"}
    # Siblings too (feature sets: another backbone's may never be written again).
    atomic.remove_abandoned(final, siblings=True)
    left = {k for k, name in names.items() if (tmp_path / name).exists()}
    assert left == {"live", "elsewhere"}


def test_a_killed_file_writes_temporary_is_removed_by_the_next_write(tmp_path):
    """An export or record write killed before its rename left ``.model.pth.<random>.tmp``
    (mkstemp's name, no owner) in the user's folder for good."""
    from medft_jax import atomic

    final = tmp_path / "model.pth"
    killed, live = writers_temporaries(tmp_path, final.name, final.name)
    for p in (killed, live):
        p.write_bytes(b"half")
    atomic.write_bytes(final, b"whole")
    assert final.read_bytes() == b"whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([final.name, live.name])


# --- a full disk -------------------------------------------------------------------------------


def _enospc(path: object = None) -> OSError:
    return OSError(errno.ENOSPC, FULL) if path is None else OSError(errno.ENOSPC, FULL, path)


def test_a_record_write_that_fills_the_disk_leaves_the_old_record_and_no_temporary(
    tmp_path, monkeypatch
):
    path = tmp_path / "run" / "record.json"
    results.write_record(path, {"config": {"a": 1}, "value": "old"})
    old = path.read_bytes()

    def full(fd):
        raise _enospc()  # what write/flush/fsync raise: no file name

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", full)
        with pytest.raises(OSError) as e:
            results.write_record(path, {"config": {"a": 1}, "value": "new"})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert os_error_line(e.value) == f"{path}: no space left on the device"
    assert path.read_bytes() == old
    assert sorted(p.name for p in path.parent.iterdir()) == ["record.json"]
    results.write_record(path, {"config": {"a": 1}, "value": "new"})  # space freed
    assert results.read_record(path)["value"] == "new"


@pytest.mark.parametrize(
    "error",
    [
        ValueError(TENSORSTORE_FULL.format(path="/x/checkpoints/3.orbax-checkpoint-tmp")),
        RuntimeError("Save Finalize thread failed"),  # with an OSError as its cause
    ],
    ids=["tensorstore", "wrapped"],
)
def test_checkpoint_write_errors_become_one_oserror_naming_the_folder(tmp_path, error):
    if isinstance(error, RuntimeError):
        error.__cause__ = _enospc("/x/checkpoints/3.orbax-checkpoint-tmp/_CHECKPOINT_METADATA")
    folder = tmp_path / "checkpoints"
    with pytest.raises(OSError) as e, checkpoint.naming_os_errors(folder):
        raise error
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(folder)
    assert find_os_error(e.value) is e.value
    # Anything that is not an OS error passes through unchanged (a real bug keeps its type).
    with pytest.raises(KeyError), checkpoint.naming_os_errors(folder):
        raise KeyError("params")
    oom = pytest.raises(ValueError, match="RESOURCE_EXHAUSTED: out of memory")
    with oom, checkpoint.naming_os_errors(folder):
        raise ValueError("RESOURCE_EXHAUSTED: out of memory allocating 4 GiB")


def _same_result(a: dict, b: dict) -> None:
    for key in ("best_epoch", "val", "test"):
        assert a[key] == b[key], key
    keys = ("train_loss", "val", "improved", "trainable_blocks")
    assert [[e[k] for k in keys] for e in a["epochs"]] == [
        [e[k] for k in keys] for e in b["epochs"]
    ]


@pytest.mark.slow
def test_disk_full_in_a_checkpoint_or_the_record_then_a_rerun_ends_the_same(
    tmp_path, demo, monkeypatch, capsys
):
    monkeypatch.setenv(fit.CHECKPOINT_SECONDS, "0")  # a resume checkpoint after every epoch
    config = _config()
    # The reference, uninterrupted; deleting its resume checkpoints fails, which after the
    # record is written is one warning, not an error.
    with monkeypatch.context() as m:
        m.setattr(RunCheckpoints, "remove_latest", lambda self: (_ for _ in ()).throw(_enospc()))
        full = fit.run_one(config, tmp_path / "a", dataset=demo, progress=False)
    err = capsys.readouterr().err
    assert full["test"] and (tmp_path / "a" / full["run"] / "record.json").is_file()
    assert err.count("\n") == 1 and err.startswith("warning: ") and "record is written" in err

    out = tmp_path / "b"
    run = _run_dir(out, config, demo)

    def no_leftovers() -> None:
        assert not (run / "record.json").exists()
        assert not [
            p for p in run.rglob("*") if ".tmp" in p.name or "orbax-checkpoint-tmp" in p.name
        ]

    # 1. The first resume checkpoint (after epoch 0) hits a full disk, as tensorstore says it.
    def full_save(self, *a, **k):
        raise ValueError(TENSORSTORE_FULL.format(path=run / "checkpoints" / "2"))

    with monkeypatch.context() as m:
        m.setattr(ocp.CheckpointManager, "save", full_save)
        with pytest.raises(OSError) as e:
            fit.run_one(config, out, dataset=demo, progress=False)
    assert os_error_line(e.value) == f"{run / 'checkpoints'}: no space left on the device"
    no_leftovers()
    assert RunCheckpoints(run).read_progress() is None  # nothing restores as complete
    assert load_metadata(run / "best")["epoch"] == 0  # the best written before stays

    # 2. Space freed for the checkpoints, but the record itself does not fit.
    real_write = results.write_record

    def write_on_full_disk(path, record, **kw):
        with monkeypatch.context() as m:
            m.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(_enospc()))
            return real_write(path, record, **kw)

    with monkeypatch.context() as m:
        m.setattr(results, "write_record", write_on_full_disk)
        with pytest.raises(OSError) as e:
            fit.run_one(config, out, dataset=demo, progress=False)
    assert os_error_line(e.value) == f"{run / 'record.json'}: no space left on the device"
    no_leftovers()
    assert len(RunCheckpoints(run).read_progress()["epochs"]) == 1  # resumable after epoch 0

    # 3. Space freed: the rerun resumes and writes the uninterrupted run's record.
    resumed = fit.run_one(config, out, dataset=demo, progress=False)
    _same_result(resumed, full)
    assert results.read_record(run / "record.json")["test"] == full["test"]
    assert not (run / "checkpoints").exists()  # a finished run keeps no empty folder


@pytest.mark.slow
def test_sweep_stops_at_a_full_disk_with_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    grid = _grid(tmp_path, lrs=(1e-3, 1e-4))
    out = tmp_path / "runs"
    first, _ = _grid_run_dirs(grid, out)

    def full_save(*a, **k):
        raise ValueError(TENSORSTORE_FULL.format(path=first / ".best.new"))

    monkeypatch.setattr(checkpoint, "save_model", full_save)
    assert sweep_cli.main(["--config", str(grid), "--out", str(out)]) == 1
    cap = capsys.readouterr()
    line = f"{first / 'best'}: no space left on the device"
    assert cap.err == f"error: {line}\n"
    assert f"[1/2] {first.name}: stopped, {line}" in cap.out
    assert "[2/2]" not in cap.out and "2 not run" in cap.out
    assert not list(out.rglob("record.json"))


# --- a real full disk (a small tmpfs, where this process may mount one) -------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB filesystem; remount with ``_resize`` to free space."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        reason = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
        pytest.skip(f"cannot mount a tmpfs here ({reason}); the ENOSPC tests above cover it")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _resize(mnt: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)


def _fill(folder: Path) -> Path:
    """Takes every free byte of ``folder``'s filesystem; delete the file to free them."""
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\1" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def _state(value: float):
    return types.SimpleNamespace(
        step=np.int32(1),
        params={"w": np.full((64, 64), value, np.float32)},
        batch_stats={},
        opt_state={"m": np.zeros((64, 64), np.float32)},
    )


def test_real_full_disk_record_and_checkpoints(small_disk, unchecked_saves):
    run = small_disk / "run"
    record = run / "record.json"
    ck = RunCheckpoints(run, exclusive=True)
    ck.save_best({"params": {"w": np.ones((64, 64), np.float32)}}, {"tag": "first"})
    filler = _fill(small_disk)

    with pytest.raises(OSError) as e:
        results.write_record(record, {"config": {}, "x": 1})
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(record))
    with pytest.raises(OSError) as e:  # orbax reports it in the background: at the latest here
        ck.save_latest(1, _state(1.0), {"epochs": []})
        ck.close()
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(run / "checkpoints"))
    with pytest.raises(OSError) as e:
        ck.save_best({"params": {"w": np.zeros((64, 64), np.float32)}}, {"tag": "second"})
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(run / "best"))

    # Nothing half-written: no record, no checkpoint that restores, the previous best intact.
    assert sorted(p.name for p in run.iterdir()) == ["best", "checkpoints"]
    assert list((run / "checkpoints").iterdir()) == []
    assert RunCheckpoints(run).read_progress() is None
    assert load_metadata(run / "best")["tag"] == "first"
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as c:
        best = c.restore(run / "best", ocp.args.Composite(state=ocp.args.StandardRestore()))
    np.testing.assert_array_equal(best["state"]["params"]["w"], np.ones((64, 64)))

    filler.unlink()  # space freed: the same writes succeed
    results.write_record(record, {"config": {}, "x": 1})
    ck = RunCheckpoints(run, exclusive=True)
    ck.save_latest(1, _state(1.0), {"epochs": [0]})
    ck.close()
    assert RunCheckpoints(run).read_progress() == {"epochs": [0]}


def _read_only_mount(folder: Path) -> bool:
    """Makes ``folder`` read-only in place (a bind mount), where this user may mount."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if done.returncode != 0:
        return False
    ro = ["mount", "-o", "remount,bind,ro", str(folder)]
    if subprocess.run(ro, capture_output=True).returncode != 0:
        subprocess.run(["umount", str(folder)], capture_output=True)
        return False
    return True


def test_a_run_folder_turned_read_only_stops_a_save_at_once_in_one_error(tmp_path):
    """The resume save into a run folder made read-only mid-run: orbax made the step folder
    in a background thread, whose failure left its other threads waiting 300 s, with four
    tracebacks after the error line. The folder is made in save(): one error, at once."""
    run = tmp_path / "run"
    ck = RunCheckpoints(run, exclusive=True)
    ck.save_latest(1, _state(1.0), {"epochs": [0]})
    ck._manager.wait_until_finished()
    if not _read_only_mount(run):
        pytest.skip("needs a read-only bind mount (root, mount)")
    try:
        start = time.monotonic()
        with pytest.raises(OSError) as e:
            ck.save_latest(2, _state(2.0), {"epochs": [0, 1]})
            ck._manager.wait_until_finished()
        assert e.value.errno == errno.EROFS and e.value.filename == str(run / "checkpoints")
        with contextlib.suppress(OSError):
            ck.close()
        assert time.monotonic() - start < 30
    finally:
        subprocess.run(["umount", str(run)], capture_output=True)
    assert RunCheckpoints(run).read_progress() == {"epochs": [0]}  # the last save stands


def test_a_superseded_step_half_deleted_by_a_kill_is_dropped_quietly(tmp_path, caplog):
    """Killed while orbax deleted the step before the latest: the resume printed a raw
    "Metadata file does not exist" absl line above its note."""
    run = tmp_path / "run"
    with RunCheckpoints(run, exclusive=True) as ck:
        ck.save_latest(1, _state(1.0), {"epochs": [0]})
        ck.save_latest(2, _state(2.0), {"epochs": [0, 1]})
    half = run / "checkpoints" / "1"
    shutil.copytree(run / "checkpoints" / "2", half)
    (half / "_CHECKPOINT_METADATA").unlink()  # what rmtree had not reached yet
    with caplog.at_level("WARNING"), RunCheckpoints(run, exclusive=True) as ck:
        assert ck.read_progress() == {"epochs": [0, 1]}
    assert not [r for r in caplog.records if "Metadata file does not exist" in r.getMessage()]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2"]
    # A reader (another process's run) leaves the folder alone.
    shutil.copytree(run / "checkpoints" / "2", half)
    (half / "_CHECKPOINT_METADATA").unlink()
    RunCheckpoints(run).read_progress()
    assert half.exists()


def test_a_last_save_that_failed_in_the_background_does_not_fail_the_tidy_up(tmp_path):
    """The record written, the run's last resume save failed on a full disk in the
    background: the tidy-up said "could not delete the resume checkpoints (Errno 28)" and
    left the failed save's temporary folder. That save is not needed: both go quietly."""
    run = tmp_path / "run"
    ck = RunCheckpoints(run, exclusive=True)
    ck.save_latest(1, _state(1.0), {"epochs": [0]})
    ck._manager.wait_until_finished()
    leftover = run / "checkpoints" / "2.orbax-checkpoint-tmp-123"
    leftover.mkdir()

    def failed(*args, **kwargs):
        raise OSError(errno.ENOSPC, FULL, str(run / "checkpoints"))

    ck._manager.wait_until_finished = failed
    ck.remove_latest()
    assert list((run / "checkpoints").iterdir()) == []


def test_a_last_save_failed_on_a_real_full_disk_leaves_nothing_and_no_warning(small_disk, capfd):
    """On a real full disk the failed background save left orbax listing no step, so
    ``checkpoints/1`` stayed, and closing raised the disk-full error again: the tidy-up
    still warned "could not delete the resume checkpoints"."""
    _resize(small_disk, "3m")
    run = small_disk / "run"
    ck = RunCheckpoints(run, exclusive=True)
    big = {"w": np.full((300, 300), 1.0, np.float32)}
    state = types.SimpleNamespace(
        step=np.int32(1), params=big, batch_stats={}, opt_state={"m": big["w"] * 0}
    )
    ck.save_latest(1, state, {"epochs": [0]})
    ck._manager.wait_until_finished()
    filler = _fill(small_disk)
    with contextlib.suppress(OSError):  # the write may fail here or in the background
        ck.save_latest(2, state, {"epochs": [0, 1]})
    fit._tidy_up(ck)
    assert "warning" not in capfd.readouterr().err
    assert not (run / "checkpoints").exists()
    filler.unlink()


@pytest.mark.slow
def test_real_full_disk_during_a_run_then_the_rerun_ends_the_same(
    small_disk, tmp_path, demo, capfd, monkeypatch
):
    # The second resume checkpoint's save reports the first's failure.
    monkeypatch.setenv(fit.CHECKPOINT_SECONDS, "0")  # a resume checkpoint after every epoch
    config = _config(epochs=3)
    full = fit.run_one(config, tmp_path / "a", dataset=demo, progress=False)
    # Room for the first best checkpoint (29 MiB) but not for the resume checkpoint beside it.
    _resize(small_disk, "40m")
    out = small_disk / "runs"
    run = _run_dir(out, config, demo)
    capfd.readouterr()
    with pytest.raises(OSError) as e:
        fit.run_one(config, out, dataset=demo, progress=False)
    assert e.value.errno == errno.ENOSPC and Path(e.value.filename).parent == run
    assert not (run / "record.json").exists()
    # The failed save's temporary folder is gone: on a full disk its space is needed.
    assert not list(run.rglob("*.orbax-checkpoint-tmp*"))
    noise = capfd.readouterr().err  # orbax's own logs and tracebacks of it are silenced
    assert "Traceback" not in noise and "Event loop is closed" not in noise, noise[-2000:]
    _resize(small_disk, "1g")
    _same_result(fit.run_one(config, out, dataset=demo, progress=False), full)
    assert (run / "record.json").is_file()


def test_real_full_disk_in_the_port_export_and_a_cache_is_one_oserror(
    small_disk, capfd, unchecked_saves
):
    """Three writers besides a run's: a model checkpoint, an exported state_dict, a cache."""
    from medft_jax.checkpoints.model import save_model
    from medft_jax.data import cache
    from weights_port.state_io import write_state_dict

    filler = _fill(small_disk)
    big = {"fc": {"kernel": np.ones((512, 512), np.float32)}}  # 1 MiB
    with pytest.raises(OSError) as e:
        save_model(small_disk / "ck", big, {}, {"arch": "resnet50", "num_classes": 2})
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(small_disk / "ck"))
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]  # no orbax temporary
    assert "Traceback" not in capfd.readouterr().err  # orbax's own reports are silenced

    with pytest.raises(OSError) as e:
        write_state_dict({"fc.weight": big["fc"]["kernel"]}, small_disk / "model.safetensors")
    assert (e.value.errno, e.value.filename) == (
        errno.ENOSPC,
        str(small_disk / "model.safetensors"),
    )
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]

    # A cache's images are written through a memory map: without reserving the blocks,
    # a full disk is a SIGBUS that kills the process without a word.
    images = np.zeros((64, 64, 64, 3), np.uint8)
    ids = np.asarray([str(i) for i in range(64)])
    plan = cache.SplitPlan(
        64,
        (64, 64, 3),
        cache.chunked(images),
        {"labels": np.zeros(64, np.int32), "ids": ids, "groups": ids, "patients": ids},
    )
    target = small_disk / "medft_cache" / "x" / "r64_c64"
    with pytest.raises(OSError) as e:
        cache.write_cache(target, {"train": plan}, {"class_names": ["a"]}, progress=False)
    assert e.value.errno == errno.ENOSPC and e.value.filename.startswith(str(target))
    assert not target.exists() and not list(target.parent.glob("*.tmp-*"))
    filler.unlink()


def test_port_force_never_replaces_a_folder_that_is_not_a_checkpoint(tmp_path, unchecked_saves):
    from medft_jax.checkpoints.model import CheckpointError, save_model

    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("months of work")
    params = {"fc": {"kernel": np.ones((2, 2), np.float32)}}
    with pytest.raises(CheckpointError, match="exists and is not a model checkpoint"):
        save_model(thesis, params, {}, {"arch": "resnet50", "num_classes": 2}, force=True)
    assert (thesis / "chapter1.tex").read_text() == "months of work"
    ck = save_model(tmp_path / "ck", params, {}, {"arch": "resnet50", "num_classes": 2})
    save_model(ck, params, {}, {"arch": "resnet50", "num_classes": 2}, force=True)  # ours: fine
    # A checkpoint with a user's file beside its arrays (an export's model.pth, the file
    # being ported from it): --force swapped the folder whole, and the file went with it.
    (ck / "model.pth").write_bytes(b"the weights this port reads")
    before = sorted(p.name for p in ck.iterdir())
    with pytest.raises(CheckpointError) as e:
        save_model(ck, params, {}, {"arch": "resnet50", "num_classes": 2}, force=True)
    assert str(e.value) == (
        f"{ck} holds 1 file(s) a checkpoint does not (e.g. model.pth); --force replaces only "
        "a checkpoint's own files: move them out, or choose another folder"
    )
    assert sorted(p.name for p in ck.iterdir()) == before
    assert (ck / "model.pth").read_bytes() == b"the weights this port reads"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ck")] == []  # no staging
    # A link to a checkpoint: the swap replaced the link with a folder and left a stray
    # .link.old, and the next --force crashed on it. Refused, naming where it points.
    (ck / "model.pth").unlink()
    link = tmp_path / "link"
    link.symlink_to(ck)
    with pytest.raises(CheckpointError) as e:
        save_model(link, params, {}, {"arch": "resnet50", "num_classes": 2}, force=True)
    assert str(e.value) == f"{link} is a link; give the folder it points to ({ck}), or another"
    assert link.is_symlink() and not list(tmp_path.glob(".link*"))


def test_a_float64_array_is_refused_before_a_checkpoint_that_could_not_load(tmp_path):
    """JAX (without x64) loads float64 as float32: the saved hash no longer matched, and the
    new checkpoint read back as 'modified or corrupted'."""
    from medft_jax.checkpoints.model import CheckpointError, save_model

    params = {"fc": {"kernel": np.ones((2, 2), np.float32), "bias": np.zeros(2, np.float64)}}
    meta = {"arch": "resnet50", "num_classes": 2}
    with pytest.raises(CheckpointError, match=r"ck: params/fc/bias is float64, which JAX loads"):
        save_model(tmp_path / "ck", params, {}, meta)
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.slow  # three short runs each
@pytest.mark.parametrize("budget", [3, 4])  # inside epoch 2 (a rung's fraction), at its end
def test_a_ctrl_c_in_a_budgets_last_step_is_validated_by_the_rerun(
    demo, tmp_path, monkeypatch, budget
):
    """A Ctrl-C or SIGTERM during a step budget's last step saved it unvalidated, and the
    rerun of that budget (select's remedy) returned at once: the rung scored the arm
    without that validation and picked another arm, exit 0. Now the rerun validates it
    (training no step) and keeps what an uninterrupted call keeps."""
    from medft_jax import errors
    from medft_jax.train import Trainer

    config = _config(epochs=3)
    kw = {"dataset": demo, "progress": False, "stop_after_steps": budget}
    assert fit.run_one(config, tmp_path / "whole", **kw) == {}
    [whole] = (tmp_path / "whole").iterdir()
    real, steps = Trainer.train_step, []

    def train_step(self, *args, **kwargs):
        steps.append(1)
        if len(steps) == budget:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    with pytest.raises(KeyboardInterrupt), errors._stopping_signals():
        fit.run_one(config, tmp_path / "cut", **kw)
    errors._received.clear()  # as the next command starts
    [cut] = (tmp_path / "cut").iterdir()
    saved = RunCheckpoints(cut).read_progress()
    assert saved["partial"]["steps"] == 2 - (budget % 2) and saved["partial"]["val"] == {}
    steps.clear()
    assert fit.run_one(config, tmp_path / "cut", **kw) == {}
    assert steps == []  # the budget's steps were all taken: none more
    expected, got = RunCheckpoints(whole).read_progress(), RunCheckpoints(cut).read_progress()

    def numbers(progress: dict) -> list:
        partial = progress.get("partial")
        return [
            [(e["train_loss"], e["val"]) for e in progress["epochs"]],
            None if partial is None else (partial["steps"], partial["val"], partial["losses"]),
        ]

    assert numbers(got) == numbers(expected)
    assert [p.name for p in (cut / "checkpoints").iterdir()] == [str(budget)]


# --- a damaged resume checkpoint ---------------------------------------------------------------

RUN_ARGV = ["--strategy", "lp", "--dataset", "demo", "--arch", "resnet_tiny", "--weights", "none"]
RUN_ARGV += ["--image-size", "32", "--batch-size", "8", "--epochs", "2", "--no-progress"]


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> tuple[Path, fit.RunConfig]:
    """``experiments.run RUN_ARGV``'s run stopped after 3 steps, as a killed run leaves it:
    a resume checkpoint (step 3) and no record. Its config is the command line's own."""
    from experiments import run as run_cli
    from medft_jax.session import Session

    out = tmp_path_factory.mktemp("killed") / "runs"
    [config] = run_cli.make_configs(run_cli.build_parser().parse_args(RUN_ARGV))
    outcome = Session(out).run(config, stop_after_steps=3)
    assert outcome.kind == "stopped", outcome.error
    run = results.run_dir(out, outcome.config.to_dict())
    assert (run / "checkpoints" / "3").is_dir() and not (run / "record.json").exists()
    return out, outcome.config


def _truncate(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


def _largest(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


RESUME_DAMAGE = {
    "progress truncated": (
        lambda step: _truncate(step / "progress" / "metadata", 200),
        "3/progress/metadata: unreadable JSON, truncated?",
    ),
    "progress empty": (
        lambda step: _truncate(step / "progress" / "metadata", 0),
        "3/progress/metadata: unreadable JSON, truncated? empty",
    ),
    # Valid JSON that is not a run's progress: one line too, not a KeyError or TypeError.
    "progress field deleted": (
        lambda step: _edit_progress(step, lambda d: d.pop("early_stopping")),
        "3/progress/metadata: no 'early_stopping' field",
    ),
    "progress field of another type": (
        lambda step: _edit_progress(step, lambda d: d.update(epochs="x")),
        "3/progress/metadata: epochs[0] is not the entry of epoch 0",
    ),
    "progress behind its state": (
        lambda step: _edit_progress(step, lambda d: d["partial"].update(steps=2)),
        "3/progress/metadata: 2 train steps of ",
    ),
    # A flipped bit in a metric or the stopper picked another best epoch without a word.
    "progress value changed": (
        lambda step: _edit_progress(step, lambda d: d["partial"].update(steps=2), rehash=False),
        "3/progress/metadata: its contents hash to another value than the ",
    ),
    "array file truncated": (
        lambda step: _truncate(_largest(step / "state"), 1000),
        "3/state: files there are truncated, missing or corrupted: OUT_OF_RANGE",
    ),
    "array file deleted": (
        lambda step: _largest(step / "state").unlink(),
        "3/state: files there are truncated, missing or corrupted: ",
    ),
    "state metadata truncated": (
        lambda step: _truncate(step / "state" / "_METADATA", 100),
        "3/state: files there are truncated, missing or corrupted: ",
    ),
    "state metadata deleted": (
        lambda step: (step / "state" / "_METADATA").unlink(),
        "3/state/_METADATA: missing",
    ),
    "state deleted": (lambda step: shutil.rmtree(step / "state"), "3/state: missing"),
    "array file bit flipped": (
        lambda step: _flip_middle_byte(_largest(step / "state")),
        "3/state: its arrays hash to ",
    ),
}


def _edit_progress(step: Path, edit, rehash: bool = True) -> None:
    """Edits a save's progress; ``rehash``: as a writer would have saved it (the fields'
    own checks then speak), else as a corrupted file (the progress hash catches it)."""
    path = step / "progress" / "metadata"
    progress = json.loads(path.read_text())
    progress.pop(checkpoint.PROGRESS_HASH, None) if rehash else None
    edit(progress)
    if rehash:
        progress[checkpoint.PROGRESS_HASH] = results.content_hash(progress)
    path.write_text(json.dumps(progress))


@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
@pytest.mark.xdist_group("killed_run")
def test_a_resume_checkpoint_without_its_state_hash_is_refused(killed_run, tmp_path):
    """Deleting the key alone turned the arrays' check off: a flipped bit then resumed."""
    from medft_jax.session import Session

    out = Path(shutil.copytree(killed_run[0], tmp_path / "runs"))
    run = results.run_dir(out, killed_run[1].to_dict())
    _edit_progress(run / "checkpoints" / "3", lambda d: d.pop("state_sha256"))
    o = Session(out).run(killed_run[1])
    assert o.kind == "cannot resume" and o.error == (
        f"{run / 'checkpoints'}: the run cannot be resumed: its checkpoint has no state_sha256 "
        "to check its arrays by (saved by a medft-jax before 2026-12-03, or edited); start the "
        "run over with experiments.run --force, or by deleting that folder"
    )


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _train_state_class() -> type:
    """A TrainState-shaped dataclass: what ``RunCheckpoints.save_latest`` saves."""
    import jax
    from flax import struct

    @struct.dataclass
    class State:
        step: jax.Array
        params: dict
        batch_stats: dict
        opt_state: tuple

    return State


def test_a_bit_flipped_resume_checkpoint_is_refused_not_resumed(tmp_path):
    """Orbax's files carry no checksum: a flipped bit in an array restored silently, and
    training went on from a weight no run ever had."""
    import jax
    import jax.numpy as jnp

    State = _train_state_class()
    w = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    saved = State(jnp.int32(3), {"w": jnp.asarray(w)}, {}, (jnp.zeros(4),))
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), saved)
    with RunCheckpoints(tmp_path / "run") as ckpts:
        ckpts.save_latest(10, saved, {"epochs": []})
    state, _ = RunCheckpoints(tmp_path / "run").restore_latest(abstract)  # intact: restores
    np.testing.assert_array_equal(state.params["w"], w)
    step = tmp_path / "run" / "checkpoints" / "10"
    _flip_middle_byte(_largest(step / "state"))
    with pytest.raises(checkpoint.ResumeError, match=r"damaged \(10/state: its arrays hash to"):
        RunCheckpoints(tmp_path / "run").restore_latest(abstract)


def test_a_resume_checkpoint_without_its_state_metadata_is_one_line(tmp_path):
    """Without ``state/_METADATA`` orbax guessed the tree from the files and failed in a
    tree_map: a 60-line traceback ("pytree structure error"), exit 1, not the damage line."""
    import jax
    import jax.numpy as jnp

    State = _train_state_class()
    saved = State(jnp.int32(3), {"w": jnp.ones((4, 4))}, {}, (jnp.zeros(4), {"m": jnp.ones(2)}))
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), saved)
    with RunCheckpoints(tmp_path / "run") as ckpts:
        ckpts.save_latest(10, saved, {"epochs": []})
    (tmp_path / "run" / "checkpoints" / "10" / "state" / "_METADATA").unlink()
    with pytest.raises(checkpoint.ResumeError) as e:
        RunCheckpoints(tmp_path / "run").restore_latest(abstract)
    assert str(e.value) == (
        f"{tmp_path / 'run' / 'checkpoints'}: the run cannot be resumed, its checkpoint is "
        "damaged (10/state/_METADATA: missing); start the run over with experiments.run "
        "--force, or by deleting that folder"
    )


def test_progress_changed_while_its_save_is_written_saves_what_was_given(tmp_path):
    """Orbax writes the progress in the background while the next epoch trains and appends
    to the epochs list the caller's dict shares: the file could hold more than the state
    saved, and failed its own hash, refusing every resume as damaged."""
    import jax.numpy as jnp

    State = _train_state_class()
    state = State(jnp.int32(2), {"w": jnp.ones(3)}, {}, (jnp.zeros(2),))
    epochs = [{"epoch": 0, "val": {"accuracy": 0.5}}]
    progress = {"epochs": epochs, "partial": {"iterator": {3: 1, 12: 2}}}
    with RunCheckpoints(tmp_path / "run") as ckpts:
        ckpts.save_latest(2, state, progress)
        epochs.append({"epoch": 1, "val": {"accuracy": 0.75}})  # the loop goes on
    back = RunCheckpoints(tmp_path / "run").read_progress()
    assert back == {"epochs": [{"epoch": 0, "val": {"accuracy": 0.5}}],
                    "partial": {"iterator": {"3": 1, "12": 2}}}  # fmt: skip


@pytest.mark.slow  # a killed run to build (the fast tier checks damaged model checkpoints)
@pytest.mark.xdist_group("killed_run")  # one worker builds the killed run, once
@pytest.mark.parametrize("damage", list(RESUME_DAMAGE))
def test_a_damaged_resume_checkpoint_is_one_line_that_touches_nothing(
    killed_run, tmp_path, capsys, damage
):
    """Refused, not resumed from garbage nor started over: the user decides (``--force``)."""
    from experiments import run as run_cli
    from medft_jax.session import Session

    out = Path(shutil.copytree(killed_run[0], tmp_path / "runs"))
    run = results.run_dir(out, killed_run[1].to_dict())
    harm, detail = RESUME_DAMAGE[damage]
    harm(run / "checkpoints" / "3")
    before = _snapshot(out)

    o = Session(out).run(killed_run[1])
    assert o.kind == "cannot resume" and isinstance(o.exception, checkpoint.ResumeError)
    head = f"{run / 'checkpoints'}: the run cannot be resumed, its checkpoint is damaged ("
    assert o.error.startswith(head + detail), o.error
    assert o.error.endswith(
        "; start the run over with experiments.run --force, or by deleting that folder"
    )
    assert "\n" not in o.error and "TensorStore(" not in o.error and len(o.error) < 600
    assert _snapshot(out) == before

    assert run_cli.main([*RUN_ARGV, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {head}{detail}"), err
    assert _snapshot(out) == before


@pytest.mark.slow
@pytest.mark.xdist_group("killed_run")
def test_a_bug_while_resuming_keeps_its_traceback(killed_run, tmp_path, monkeypatch):
    """Only a failed read of the stored bytes is a damaged checkpoint, not any exception."""
    from medft_jax.session import Session

    out = Path(shutil.copytree(killed_run[0], tmp_path / "runs"))

    def restore(*a, **k):
        try:
            raise TypeError("a bug")
        except TypeError as e:  # as orbax wraps whatever fails in a read
            raise Exception("Encountered error while reading array index: (0,)") from e

    monkeypatch.setattr(ocp.CheckpointManager, "restore", restore)
    with pytest.raises(Exception, match="Encountered error") as e:
        Session(out).run(killed_run[1])
    assert isinstance(e.value.__cause__, TypeError)


@pytest.mark.slow
def test_sweep_notes_a_run_it_cannot_resume_and_goes_on(tmp_path, capsys):
    """One damaged run of a long grid should not hold up the rest: the sweep goes on,
    and ends with exit 1 and the error repeated."""
    from medft_jax import grid as grid_lib
    from medft_jax.session import Session

    grid = _grid(tmp_path, lrs=(1e-3, 1e-4), epochs=2)
    out = tmp_path / "runs"
    first, second = _grid_run_dirs(grid, out)
    config = grid_lib.load_grid(grid).configs()[0]
    assert Session(out).run(config, stop_after_steps=1).kind == "stopped"
    _truncate(next((first / "checkpoints").iterdir()) / "progress" / "metadata", 200)
    assert sweep_cli.main(["--config", str(grid), "--out", str(out)]) == 1
    cap = capsys.readouterr()
    assert f"[1/2] {first.name}: cannot resume (damaged checkpoint), skipped" in cap.out
    assert f"[2/2] {second.name}: done in" in cap.out
    assert "1 run now" in cap.out and "1 cannot resume, 1 not run" in cap.out
    assert cap.err.count("\n") == 1
    assert cap.err.startswith(f"error: {first / 'checkpoints'}: the run cannot be resumed")
    assert (second / "record.json").is_file() and not (first / "record.json").exists()


@pytest.mark.slow
def test_sweep_goes_on_past_an_edited_record_and_clears_a_killed_runs_leftovers(tmp_path, capsys):
    """An edited record is this run's problem: named, the rest of the grid goes on, exit 1.
    Checkpoints, previous/ and temporaries left by a kill go at the next look."""
    grid = _grid(tmp_path, lrs=(1e-3, 1e-4), epochs=1)
    out = tmp_path / "runs"
    first, second = _grid_run_dirs(grid, out)
    assert sweep_cli.main(["--config", str(grid), "--out", str(out)]) == 0
    record = json.loads((first / "record.json").read_text())
    del record["test"]
    (first / "record.json").write_text(json.dumps(record))
    leftover = second / "checkpoints" / "1"
    leftover.mkdir(parents=True)
    (leftover / "state").write_bytes(b"x" * 100)
    # Killed before --force's previous/ went, and inside a record write: gone too.
    (second / "previous" / "best").mkdir(parents=True)
    (second / "previous" / "record.json").write_text("{}")
    (second / ".record.json.abc123.tmp").write_text("{")
    capsys.readouterr()
    assert sweep_cli.main(["--config", str(grid), "--out", str(out)]) == 1
    cap = capsys.readouterr()
    assert f"[1/2] {first.name}: damaged record, skipped" in cap.out
    assert f"[2/2] {second.name}: done, skipped" in cap.out
    assert "1 damaged records, 0 not run" in cap.out
    assert cap.err == (
        f"error: {first / 'record.json'}: its contents do not match its record_sha256; the "
        "record was edited or damaged on disk: restore it, or delete it to run it again\n"
    )
    assert not (second / "checkpoints").exists() and (second / "record.json").is_file()
    assert sorted(p.name for p in second.iterdir()) == ["best", "confirmed.json", "record.json"]
