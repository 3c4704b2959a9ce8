"""Process settings of the command lines (``medft_jax.runtime``)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A CPU program whose temporary buffer is 64 MB: sin(x) must be materialised
# for the matrix product. Prints the minor page faults of each of eight calls.
_FAULTS = """
import json, resource
from medft_jax.runtime import set_up_process
set_up_process()
import jax, jax.numpy as jnp
f = jax.jit(lambda x, w: (jnp.sin(x) @ w).sum())
x, w = jnp.ones((8192, 2048)), jnp.ones((2048, 8))
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x, w).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""

TEMP_PAGES = 8192 * 2048 * 4 // 4096


def _thp_always() -> bool:
    p = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return p.exists() and "[always]" in p.read_text()


@pytest.mark.slow  # two fresh processes
@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the allocator settings are glibc's",
)
def test_a_session_process_reuses_xla_temp_memory_instead_of_faulting_it_in(tmp_path):
    """Set up as the command lines are, a repeated step maps no fresh pages;
    with ``MEDFT_JAX_TUNE_CPU_HOST=0`` each call first-touches its 64 MB again."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "MEDFT_JAX_CACHE": str(tmp_path)}
    procs = {
        tuned: subprocess.Popen(
            [sys.executable, "-c", _FAULTS],
            env={**env, "MEDFT_JAX_TUNE_CPU_HOST": "1" if tuned else "0"},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tuned in (True, False)
    }
    faults = {}
    for tuned, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        faults[tuned] = json.loads(out.strip().splitlines()[-1])
    # The first calls grow the heap (around what else the process allocates); then it is
    # reused. Under memory pressure the host may still reclaim idle heap pages between calls
    # (this machine runs DAMON's kdamond), so a tuned call can refault now and then, as seen
    # in a loaded full suite: [16918, 16384, 0, 16384, 0]. A call that faults nothing at all
    # is what only the tuned process can show: the untuned one maps its buffer afresh each time.
    assert min(faults[True][2:]) < 0.02 * TEMP_PAGES, faults
    if not _thp_always():  # with transparent huge pages always on, faults are 2 MB each
        assert min(faults[False][3:]) > 0.5 * TEMP_PAGES, faults


def test_the_opt_out_leaves_the_process_alone(monkeypatch):
    from jax._src import xla_bridge

    from medft_jax.runtime import tune_cpu_host

    monkeypatch.setenv("MEDFT_JAX_TUNE_CPU_HOST", "0")
    flag = xla_bridge._CPU_ENABLE_ASYNC_DISPATCH
    before = flag.value
    assert tune_cpu_host() is False
    assert flag.value == before


@pytest.mark.parametrize(("value", "on"), [(None, None), ("", None), ("1", True), ("0", False)])
@pytest.mark.parametrize("name", ["MEDFT_DISTRIBUTED", "MEDFT_JAX_XLA_CACHE"])
def test_a_switch_is_1_or_0_and_unset_is_its_default(monkeypatch, name, value, on):
    from medft_jax.errors import env_switch

    if value is None:
        monkeypatch.delenv(name, raising=False)
    else:
        monkeypatch.setenv(name, value)
    default = {"MEDFT_DISTRIBUTED": False, "MEDFT_JAX_XLA_CACHE": True}[name]
    assert env_switch(name) is (default if on is None else on)


@pytest.mark.parametrize("value", ["true", "yes", "off", " 1", "2"])
def test_any_other_switch_value_is_refused_naming_the_variable(monkeypatch, value):
    from medft_jax.errors import UserError, env_switch

    monkeypatch.setenv("MEDFT_JAX_XLA_CACHE", value)
    with pytest.raises(UserError) as e:
        env_switch("MEDFT_JAX_XLA_CACHE")
    assert str(e.value) == f"environment variable MEDFT_JAX_XLA_CACHE must be 0 or 1, got {value!r}"


def test_a_run_under_a_misspelt_distributed_switch_stops_in_one_line_before_writing(tmp_path):
    """``MEDFT_DISTRIBUTED=true`` read as off would run each host of a pod alone."""
    out = tmp_path / "runs"
    flags = ["--dataset", "demo", "--strategy", "lp", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.run", *flags],
        env={**os.environ, "JAX_PLATFORMS": "cpu", "MEDFT_DISTRIBUTED": "true"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: environment variable MEDFT_DISTRIBUTED must be 0 or 1, got 'true'"
    ]
    assert not out.exists()


def test_a_malformed_no_locks_switch_stops_every_command_first(monkeypatch, capsys):
    """MEDFT_JAX_NO_LOCKS was read only when a lock was taken: a command that took none
    (a run whose record exists) ended 0 under `MEDFT_JAX_NO_LOCKS=yes`, without a word."""
    from medft_jax.errors import cli_main

    monkeypatch.setenv("MEDFT_JAX_NO_LOCKS", "yes")
    assert cli_main(lambda argv: pytest.fail("ran")) == 2
    assert capsys.readouterr().err == (
        "error: environment variable MEDFT_JAX_NO_LOCKS must be 0 or 1, got 'yes'\n"
    )


@pytest.mark.parametrize("value", ["-1", "1 min", "inf", "nan", "1_0"])
def test_a_malformed_duration_is_one_line_before_anything_runs(value, monkeypatch, capsys):
    from medft_jax.errors import cli_main

    monkeypatch.setenv("MEDFT_JAX_CHECKPOINT_SECONDS", value)
    assert cli_main(lambda argv: pytest.fail("ran")) == 2
    assert capsys.readouterr().err == (
        f"error: environment variable MEDFT_JAX_CHECKPOINT_SECONDS must be seconds >= 0, got "
        f"{value!r}\n"
    )


def test_a_cluster_without_auto_detection_gives_its_process_layout(monkeypatch):
    """BUILD.md: elsewhere than Cloud TPU and SLURM, JAX_NUM_PROCESSES and JAX_PROCESS_ID,
    which jax.distributed.initialize does not read itself ("Number of processes must be
    defined")."""
    from medft_jax import runtime
    from medft_jax.errors import UserError

    calls = []
    monkeypatch.setattr(runtime.jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(runtime, "tune_cpu_host", lambda: False)
    monkeypatch.setattr(runtime, "enable_compilation_cache", lambda: None)
    monkeypatch.setattr(runtime, "_SET_UP", False)
    monkeypatch.setenv("MEDFT_DISTRIBUTED", "1")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    runtime.set_up_process()
    assert calls == [{"num_processes": 4, "process_id": 3}]
    for env, message in [
        ({"JAX_PROCESS_ID": "4"}, r"^JAX_PROCESS_ID=4 is outside 0\.\.JAX_NUM_PROCESSES-1 \(3\)$"),
        ({"JAX_NUM_PROCESSES": "two"}, r"^JAX_NUM_PROCESSES='two': expected an integer$"),
        ({"JAX_NUM_PROCESSES": ""}, r"^JAX_PROCESS_ID set without JAX_NUM_PROCESSES: set both$"),
    ]:
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            with pytest.raises(UserError, match=message):
                runtime._process_layout()
    monkeypatch.delenv("JAX_NUM_PROCESSES")
    monkeypatch.delenv("JAX_PROCESS_ID")
    assert runtime._process_layout() == {}  # Cloud TPU, SLURM: JAX finds them itself


def test_a_process_of_a_job_without_the_distributed_switch_is_refused(monkeypatch):
    """One host's launch line without MEDFT_DISTRIBUTED=1: it trained alone and wrote the
    record while the others waited for it until their coordinator gave up (exit 134)."""
    from medft_jax import runtime
    from medft_jax.errors import UserError

    monkeypatch.setattr(runtime.jax.distributed, "initialize", lambda **kw: pytest.fail("init"))
    monkeypatch.setattr(runtime, "tune_cpu_host", lambda: False)
    monkeypatch.setattr(runtime, "enable_compilation_cache", lambda: None)
    monkeypatch.setattr(runtime, "_SET_UP", False)
    monkeypatch.delenv("MEDFT_DISTRIBUTED", raising=False)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    with pytest.raises(UserError) as err:
        runtime.set_up_process()
    assert str(err.value) == (
        "JAX_NUM_PROCESSES=2 is set but MEDFT_DISTRIBUTED is not 1: this process would train "
        "alone while the job's others wait for it; set MEDFT_DISTRIBUTED=1 on every process, "
        "or unset JAX_NUM_PROCESSES and JAX_PROCESS_ID"
    )
    runtime.set_up_process(distributed=False)  # predict: one host, whatever the job's layout
    monkeypatch.setattr(runtime, "_SET_UP", False)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "1")
    monkeypatch.setenv("JAX_PROCESS_ID", "0")
    runtime.set_up_process()  # a job of one process: nothing waits


def test_a_job_whose_hosts_hold_different_numbers_of_devices_is_refused_in_one_line():
    """Two GPUs on process 0 and one on process 1: a 28-line traceback ("cannot reshape
    array of size 3 into shape (2,2)") on every process, nothing naming the cause."""
    from types import SimpleNamespace

    from medft_jax import runtime
    from medft_jax.errors import UserError

    def devices(*per_process: int) -> list[SimpleNamespace]:
        held = [p for p, n in enumerate(per_process) for _ in range(n)]
        return [SimpleNamespace(process_index=p) for p in held]

    runtime.check_even_devices(devices(4, 4, 4))
    with pytest.raises(UserError) as err:
        runtime.check_even_devices(devices(2, 1))
    assert str(err.value) == (
        "the job's processes hold different numbers of devices (process 0: 2, process 1: 1); "
        "expected the same on every host (is a device hidden on one, CUDA_VISIBLE_DEVICES?)"
    )


def test_notes_are_said_by_process_0_of_a_job_only(capsys, monkeypatch):
    """Every host of a multi-host job loads the same data and weights: each said the same
    "no ImageNet weights" warning and data notes, once per process."""
    from medft_jax import errors
    from medft_jax.data.cache import note_duplicates

    meta = {"duplicates": {"test": 2, "example": ["train/a", "test/b"]}}
    monkeypatch.setattr(errors, "_PROCESS_INDEX", 0)
    note_duplicates("d", meta)
    assert capsys.readouterr().err.startswith("note: d: images pixel-identical")
    errors.set_process_index(1)
    note_duplicates("d", meta)
    errors.note("note: anything")
    assert capsys.readouterr().err == ""


def test_progress_bars_show_on_a_terminal_or_a_notebook_only(monkeypatch):
    """A log file, a SLURM job's output or a pipe took every redraw of every epoch's bar
    (predict's bars were terminal-only already): asked for, bars show where they draw."""
    import io

    from medft_jax import errors

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file: no bars
    assert errors.bars_hidden(True) and errors.bars_hidden(False)
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert not errors.bars_hidden(True) and errors.bars_hidden(False)
    monkeypatch.setattr(errors, "_PROCESS_INDEX", 1)  # another host of a job
    assert errors.bars_hidden(True)
    monkeypatch.setattr(errors, "_PROCESS_INDEX", 0)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setitem(sys.modules, "ipykernel", object())  # a notebook's stderr
    assert not errors.bars_hidden(True)


def test_a_backend_jax_platforms_names_that_this_machine_lacks_is_one_line(monkeypatch):
    """``JAX_PLATFORMS=cuda`` on a CPU machine was JAX's traceback (a bare AssertionError)
    from the first computation, in run, sweep and predict."""
    from medft_jax import runtime
    from medft_jax.errors import UserError

    def no_such_backend():
        raise RuntimeError("Unable to initialize backend 'cuda': no GPU\nmore lines")

    monkeypatch.setattr(runtime.jax, "default_backend", no_such_backend)
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    with pytest.raises(UserError) as e:
        runtime.check_backend()
    assert str(e.value) == (
        "JAX_PLATFORMS=cuda: JAX cannot start that backend on this machine (Unable to "
        "initialize backend 'cuda': no GPU); expected one it has (cpu, or cuda/tpu with their "
        "jaxlib and a device), or leave JAX_PLATFORMS unset"
    )
    monkeypatch.delenv("JAX_PLATFORMS")  # not the user's setting: JAX's own error stands
    with pytest.raises(RuntimeError):
        runtime.check_backend()
