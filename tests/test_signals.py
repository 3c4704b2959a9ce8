"""SIGTERM (a cluster's time limit, ``timeout``, ``docker stop``) cleans up as a Ctrl-C does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from medft_jax import errors, fit, locks
from medft_jax.errors import Terminated, cli_main

ROOT = Path(__file__).resolve().parents[1]


def _sigterm_self() -> None:
    """Sends this process a SIGTERM and waits for the handler to raise."""
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
    pytest.fail("the SIGTERM did not stop the command")


def test_a_sigterm_stops_a_command_as_a_ctrl_c_with_its_own_word_and_status(tmp_path, capsys):
    """Its default action killed the process on the spot: the folders the command created,
    a cache build's temporaries and a run's lock stayed, and no line said why."""
    out = tmp_path / "a" / "out"
    seen = {}

    def command(argv):
        errors.writable_dir(out, "--out")
        try:
            _sigterm_self()
        except Terminated:
            seen["after the first"] = signal.getsignal(signal.SIGTERM)  # a second one kills
            raise

    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert cli_main(command) == 143
    assert capsys.readouterr().err == "terminated (SIGTERM)\n"
    assert seen == {"after the first": signal.SIG_DFL}
    assert not (tmp_path / "a").exists()  # created for the command, removed as after a Ctrl-C
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back
    # A run names itself and what rerunning does, as after a Ctrl-C.
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    def run(argv):
        with fit._naming_an_interrupt(run_dir, run_dir / "record.json", False):
            _sigterm_self()

    assert cli_main(run) == 143
    assert capsys.readouterr().err == (
        f"terminated (SIGTERM): {run_dir}: it has no checkpoint yet: rerunning the same "
        "command starts it again\n"
    )
    # A Ctrl-C after it is a Ctrl-C again.
    assert cli_main(lambda argv: (_ for _ in ()).throw(KeyboardInterrupt)) == 130
    assert capsys.readouterr().err == "interrupted\n"


@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
def test_a_stop_a_library_wrapped_or_a_gc_callback_swallowed_is_never_success(capsys):
    """A SIGTERM inside orbax's restore came back as orbax's own exception (a traceback and
    exit 1); one raised inside JAX's gc callback was printed as "Exception ignored" and
    lost, and predict and report went on to exit 0."""
    import gc

    def wrapped(argv):
        try:
            _sigterm_self()
        except Terminated as e:
            raise Exception("Encountered error while reading array index") from e

    assert cli_main(wrapped) == 143
    assert capsys.readouterr().err == "terminated (SIGTERM)\n"
    # Another error after a stop is that error: a resume checkpoint's save on a full disk.
    import errno

    def full_disk_after_a_stop(argv):
        with errors.deferred_stops():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)  # recorded; the loop goes on to save its resume point
            raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/checkpoints/12")

    assert cli_main(full_disk_after_a_stop) == 1
    assert capsys.readouterr().err == "error: /runs/x/checkpoints/12: no space left on the device\n"

    def swallowed(argv):
        def callback(phase, info):
            if phase == "start" and not said:
                said.append(1)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.5)  # the handler runs here: recorded, not raised and dropped

        said = []
        gc.callbacks.append(callback)
        try:
            gc.collect()
        finally:
            gc.callbacks.remove(callback)
        return 0  # the work done and written, no loop left to raise it

    unraisable = []
    previous, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        assert cli_main(swallowed) == 143
    finally:
        sys.unraisablehook = previous
    assert unraisable == []
    assert capsys.readouterr().err == (
        "terminated (SIGTERM) as it finished: its work is done and written\n"
    )

    def failed(argv):  # its own failure (a run diverged: 1) is kept, not made a stop's
        swallowed(argv)
        return 1

    previous, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        assert cli_main(failed) == 1
    finally:
        sys.unraisablehook = previous
    assert capsys.readouterr().err == "terminated (SIGTERM) as it finished\n"


@pytest.mark.slow  # one training run
def test_a_sigterm_during_runs_closing_summary_lets_it_finish_and_says_so(
    tmp_path, monkeypatch, capsys
):
    """A SIGTERM that landed after the record was written, as the summary printed, cut the
    summary short with a bare "terminated (SIGTERM)": read as a run cut short."""
    from experiments import run as run_cli
    from medft_jax import results

    real = results.record_path_of

    def stopped_as_printed(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler runs here
        return real(*a, **k)

    monkeypatch.setattr(results, "record_path_of", stopped_as_printed)
    argv = ["--strategy", "lp", "--arch", "resnet_tiny", "--weights", "none", "--epochs", "1"]
    argv += ["--batch-size", "8", "--image-size", "32", "--no-progress", "--dataset", "demo"]
    assert run_cli.main([*argv, "--out", str(tmp_path / "runs")]) == 143
    printed = capsys.readouterr()
    *_, record, model = printed.out.rstrip().splitlines()  # the summary printed whole
    assert record.startswith("record: ") and model.startswith("model (predict --checkpoint): ")
    assert printed.err.endswith(
        "terminated (SIGTERM) as it finished: its work is done and written\n"
    )
    assert len(list((tmp_path / "runs").rglob("record.json"))) == 1


def test_a_sigterm_handler_is_left_where_the_embedding_program_or_jax_owns_sigterm(
    monkeypatch, capsys
):
    """A program's own handler is its choice; a multi-host job's is JAX's preemption
    handler; a command run outside the main thread cannot have one (Python runs handlers
    in the main thread only: ``signal.signal`` raised there)."""
    seen, ctrl_c = [], []

    def command(argv):
        seen.append(signal.getsignal(signal.SIGTERM))
        ctrl_c.append(signal.getsignal(signal.SIGINT))
        return 0

    def own(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, own)
    try:
        assert cli_main(command) == 0
        assert signal.getsignal(signal.SIGTERM) is own
    finally:
        signal.signal(signal.SIGTERM, previous)
    monkeypatch.setenv("MEDFT_DISTRIBUTED", "1")
    assert cli_main(command) == 0
    monkeypatch.delenv("MEDFT_DISTRIBUTED")
    statuses = []
    thread = threading.Thread(target=lambda: statuses.append(cli_main(command)))
    thread.start()
    thread.join()
    assert cli_main(command) == 0
    assert seen == [own, signal.SIG_DFL, signal.SIG_DFL, errors._on_signal]
    assert ctrl_c == [errors._on_signal] * 2 + [signal.default_int_handler, errors._on_signal]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    assert statuses == [0]
    assert capsys.readouterr().err == ""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the point
@pytest.mark.parametrize(
    ("signum", "status", "said"),
    [(signal.SIGTERM, 143, "terminated (SIGTERM)\n"), (signal.SIGINT, 130, "interrupted\n")],
)
def test_a_stop_whose_exception_a_gc_callback_swallowed_stops_at_the_next_image(
    tmp_path, capsys, signum, status, said
):
    """A signal arriving while JAX's gc callback ran raised inside it: Python printed
    "Exception ignored" and the command went on (a Ctrl-C in a command's first seconds was
    lost). The next image read raises it again."""
    import gc

    from PIL import Image

    from medft_jax.data.images import ImageReader

    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for path in paths:
        Image.new("RGB", (8, 8)).save(path)
    read = []

    def callback(phase, info):
        if phase == "start" and not read:
            read.append("signalled")
            os.kill(os.getpid(), signum)
            time.sleep(0.5)  # the handler runs here, inside the callback

    def command(argv):
        gc.callbacks.append(callback)
        try:
            gc.collect()
        finally:
            gc.callbacks.remove(callback)
        read.append("went on")  # the exception was lost, as in a gc callback of JAX's
        ImageReader(8, 8).read_many(paths)
        read.append("read every image")
        return 0

    assert cli_main(command) == status
    assert capsys.readouterr().err.endswith(said)
    assert read == ["signalled", "went on"]
    errors.raise_if_stopped()  # outside a command: nothing received, nothing raised


# Trains epoch 0, then waits in epoch 1 for the test's SIGTERM (a time limit mid-epoch).
_WAITS_IN_EPOCH_1 = """
import sys, time
from experiments.run import main
from medft_jax import errors, fit
real = fit._train_epoch
def train_epoch(run, epoch, **kw):
    if epoch == 1:
        print("in epoch 1", flush=True)
        for _ in range(300):  # as a training step would, it heeds a signal a gc callback
            time.sleep(1)     # swallowed (under load, one landed there: slept out 300 s)
            errors.raise_if_stopped()
    return real(run, epoch, **kw)
fit._train_epoch = train_epoch
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # three fresh processes
def test_a_run_ended_by_sigterm_mid_epoch_is_named_unlocked_and_resumed(tmp_path):
    """The whole command: the checkpoint of epoch 0 is kept, the lock is free, the line
    names the run, and the same command resumes it."""
    out = tmp_path / "runs"
    argv = ["--strategy", "ft", "--dataset", "demo", "--arch", "resnet_tiny", "--weights"]
    argv += ["none", "--epochs", "2", "--image-size", "32", "--batch-size", "8"]
    argv += ["--no-progress", "--out", str(out)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "MEDFT_JAX_CHECKPOINT_SECONDS": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WAITS_IN_EPOCH_1, *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "in epoch 1"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    run = next(p for p in out.iterdir() if p.is_dir())
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        f"terminated (SIGTERM): {run}: rerunning the same command resumes it from its last "
        "checkpoint"
    )
    assert not (run / locks.LOCK_NAME).exists()  # released (a killed holder leaves it)
    again = subprocess.run(
        [sys.executable, "-m", "experiments.run", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"note: resuming after 1 epoch, from {run / 'checkpoints'}" in again.stderr
    assert (run / "record.json").is_file()


@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
def test_a_sigterm_while_a_checkpoint_is_written_waits_for_it(tmp_path, monkeypatch, capsys):
    """Raised inside the write of best/, it deleted the unfinished folder under orbax's
    writer threads (their 30-line tracebacks before the run's line), and the epoch's resume
    checkpoint was never written: the rerun began again. Written first, then stopped."""
    from experiments import run as run_cli
    from medft_jax.checkpoints.run import RunCheckpoints

    real = RunCheckpoints.save_best
    sent = []

    def save_best(self, variables, metadata):
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while the write is under way
        return real(self, variables, metadata)

    monkeypatch.setattr(RunCheckpoints, "save_best", save_best)
    monkeypatch.setenv("MEDFT_JAX_CHECKPOINT_SECONDS", "0")
    out = tmp_path / "runs"
    argv = ["--strategy", "ft", "--dataset", "demo", "--arch", "resnet_tiny", "--weights"]
    argv += ["none", "--epochs", "2", "--image-size", "32", "--batch-size", "32"]
    argv += ["--no-progress", "--out", str(out)]
    assert run_cli.main(argv) == 143
    err = capsys.readouterr().err
    run = next(p for p in out.iterdir() if p.is_dir())
    assert "Traceback" not in err and "ERROR" not in err, err
    assert err.strip().splitlines()[-1] == (
        f"terminated (SIGTERM): {run}: rerunning the same command resumes it from its last "
        "checkpoint"
    )
    assert sent and (run / "best").is_dir() and not list(run.glob(".best*"))
    monkeypatch.setattr(RunCheckpoints, "save_best", real)
    assert run_cli.main(argv) == 0
    assert f"note: resuming after 1 epoch, from {run / 'checkpoints'}" in capsys.readouterr().err


@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
def test_a_stop_swallowed_during_validation_keeps_the_epoch_as_the_resume_point(
    tmp_path, monkeypatch, capsys
):
    """A SIGTERM a gc callback swallowed during an epoch's validation, no checkpoint due:
    the run stopped after the epoch without saving it ("no checkpoint yet"), and the rerun
    trained it again. It is saved, then the run stops."""
    from experiments import run as run_cli

    real = fit._train_epoch

    def train_epoch(run, epoch, **kw):
        entry = real(run, epoch, **kw)
        if epoch == 0:
            errors._received.append(signal.SIGTERM)  # received, its exception lost
        return entry

    monkeypatch.setattr(fit, "_train_epoch", train_epoch)
    monkeypatch.setenv("MEDFT_JAX_CHECKPOINT_SECONDS", "3600")  # no save due
    out = tmp_path / "runs"
    argv = ["--strategy", "ft", "--dataset", "demo", "--arch", "resnet_tiny", "--weights"]
    argv += ["none", "--epochs", "2", "--image-size", "32", "--batch-size", "32"]
    argv += ["--no-progress", "--out", str(out)]
    assert run_cli.main(argv) == 143
    run = next(p for p in out.iterdir() if p.is_dir())
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"terminated (SIGTERM): {run}: rerunning the same command resumes it from its last "
        "checkpoint"
    )
    monkeypatch.setattr(fit, "_train_epoch", real)
    assert run_cli.main(argv) == 0
    assert f"note: resuming after 1 epoch, from {run / 'checkpoints'}" in capsys.readouterr().err


_STOPPED_COMMAND = """
import atexit, sys
from medft_jax.errors import cli_main, exit_command
atexit.register(lambda: print("shut down", flush=True))
def main(argv):
    print("working", flush=True)
    raise KeyboardInterrupt
status = cli_main(main, [])
exit_command(status) if sys.argv[1] == "command" else sys.exit(status)
"""


@pytest.mark.parametrize("called", ["command", "library"])
def test_a_stopped_command_line_ends_without_the_interpreters_shutdown(called):
    """A Ctrl-C that arrived while XLA compiled: the interpreter's shutdown then crashed in
    XLA's threads (exit 139, not 130) in most first runs. A command line stopped so ends
    at once, its output flushed; a caller's ``main([...])`` returns as before."""
    done = subprocess.run(
        [sys.executable, "-c", _STOPPED_COMMAND, called],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 130 and done.stderr == "interrupted\n"
    assert done.stdout == ("working\n" if called == "command" else "working\nshut down\n")


def test_stdout_full_or_closed_is_named_or_passed_over(monkeypatch, capsys):
    """`> /dev/full`: a print's flush failed with no file name, "error: ?: no space left"
    (the outputs were written: users took their results for failed); `>&-` (no stdout at
    all) ended a finished command with an AttributeError traceback."""

    def main(argv):
        print("tables: report --runs out", flush=True)
        return 0

    with open("/dev/full", "w") as full:
        monkeypatch.setattr(sys, "stdout", full)
        assert cli_main(main, []) == 1
        monkeypatch.undo()
    assert capsys.readouterr().err == "error: stdout: no space left on the device\n"
    monkeypatch.setattr(sys, "stdout", None)
    assert cli_main(main, []) == 0
