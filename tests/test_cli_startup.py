"""Every command answers ``--help`` (and refuses a mistyped flag) without importing JAX.

JAX, Flax and orbax take seconds to import on a loaded machine; a user reading the help
or fixing a typo should not wait for them. Each case runs in a fresh interpreter, since
this one has JAX loaded already.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [
    "experiments.run",
    "experiments.sweep",
    "experiments.report",
    "experiments.select",
    "experiments.predict",
    "experiments.prepare",
    "weights_port",
]
PROBE = """
import runpy, sys
sys.argv = ["prog", *sys.argv[2:]]
try:
    runpy.run_module(MODULE, run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("jax", "flax", "orbax.checkpoint") if m in sys.modules)
print("heavy:", ",".join(heavy) or "none", "exit:", code, file=sys.stderr)
"""


def _probe(module: str, *argv: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.replace("MODULE", repr(module)), module, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("module", COMMANDS)
def test_help_loads_no_jax(module):
    assert _probe(module, "--help") == "heavy: none exit: 0"


@pytest.mark.parametrize("module", ["weights_port", "experiments.run"])
def test_a_mistyped_flag_is_refused_before_jax_loads(module):
    assert _probe(module, "--archh", "resnet50") == "heavy: none exit: 2"


@pytest.mark.slow  # a process importing JAX (~2 s)
def test_the_port_api_still_loads_on_first_use():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, weights_port as wp; assert 'jax' not in sys.modules; "
            "from weights_port import fetch; "
            "print(wp.PortError is fetch.PortError, wp.port.__module__, 'jax' in sys.modules)",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.split() == ["True", "weights_port.porting", "True"], done.stderr


@pytest.mark.parametrize("module", COMMANDS)
def test_help_lists_the_exit_statuses_a_script_branches_on(module):
    """``sweep && report`` and a SLURM requeue branch on the status: each command's help
    lists its statuses, the bad-input one being the status a mistyped flag gets."""
    helped = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True
    )
    text = " ".join(helped.stdout.split())
    assert helped.returncode == 0 and "exit status: 0 " in text, text
    statuses = dict(re.findall(r"(?:^ |; )(\d+) ([^;]+)", text.split("exit status:")[1]))
    assert {"0", "1", "2", "130", "143"} <= statuses.keys(), statuses
    bad = _probe(module, "--no-such-flag").rsplit("exit: ", 1)[1]
    assert statuses[bad].startswith("bad input"), (bad, statuses)
    busy = {"experiments.run", "experiments.sweep", "experiments.select"}
    assert ("75" in statuses) == (module in busy), statuses
