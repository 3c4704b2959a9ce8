"""What pyproject.toml asks pip for: every machine gets an installable set."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())


@pytest.mark.parametrize(
    ("machine", "wanted"),
    [
        ("x86_64", "tensorflow-cpu"),  # Linux, macOS (Intel)
        ("AMD64", "tensorflow-cpu"),  # Windows
        ("arm64", "tensorflow"),  # Apple silicon: tensorflow-cpu has no wheel
        ("aarch64", "tensorflow"),  # ARM Linux: neither has tensorflow-cpu
    ],
)
def test_the_prepare_extra_installs_one_tensorflow_with_wheels_for_the_machine(machine, wanted):
    """``.[prepare]`` (hence ``.[test]``) asked for tensorflow-cpu everywhere, which has no
    wheels for ARM: the install failed on Apple silicon and aarch64 Linux."""
    env = {"platform_machine": machine, "sys_platform": "linux", "python_version": "3.11"}
    chosen = [
        r.name
        for r in map(Requirement, PYPROJECT["project"]["optional-dependencies"]["prepare"])
        if r.name.startswith("tensorflow") and (r.marker is None or r.marker.evaluate(env))
    ]
    assert chosen == [wanted]
