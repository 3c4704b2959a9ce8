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
# for the matrix product. Prints the minor page faults of each of five calls.
_FAULTS = """
import json, resource
from medft_jax.session import set_up_process
set_up_process()
import jax, jax.numpy as jnp
f = jax.jit(lambda x, w: (jnp.sin(x) @ w).sum())
x, w = jnp.ones((8192, 2048)), jnp.ones((2048, 8))
faults = []
for _ in range(5):
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
    # The first calls grow the heap (around what else the process allocates); then it is reused.
    assert max(faults[True][3:]) < 0.02 * TEMP_PAGES, faults
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
