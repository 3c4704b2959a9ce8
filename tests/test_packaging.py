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


@pytest.mark.parametrize(
    ("package", "broken"),
    [
        ("jax", "0.6.2"),  # no Compiled.out_info: every training run crashed (Python 3.10's)
        ("jax", "0.7.0"),  # a model saved across two devices does not load with new orbax
        ("optax", "0.2.4"),  # no optax.partition
        ("orbax-checkpoint", "0.11.21"),  # metadata() is the tree, not .item_metadata
        ("orbax-checkpoint", "0.11.32"),  # an absl warning line before predict's one error line
        ("grain", "0.2.11"),  # no grain.MultiprocessingOptions (worker processes)
        ("pillow", "10.4.0"),  # ImageFile.tile items plain tuples: every RGB decode crashed
        ("numpy", "1.26.4"),  # below jax 0.7.2's own floor: a floor never installable
        ("scipy", "1.11.4"),  # likewise
    ],
)
def test_the_floors_leave_out_releases_the_toolkit_fails_on(package, broken):
    """The floors were jax>=0.5.1, optax>=0.2.3, orbax>=0.6 and grain>=0.2.2, never tested:
    pip kept an installed or Python 3.10 release that crashed."""
    (req,) = [
        r for r in map(Requirement, PYPROJECT["project"]["dependencies"]) if r.name == package
    ]
    assert not req.specifier.contains(broken)
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"  # jax 0.7 needs it


def test_an_installed_toolkit_carries_its_type_annotations_and_the_sdist_its_test_helpers():
    """No ``py.typed``: type checkers called the installed library untyped. The sdist took
    ``tests/test_*.py`` alone, without conftest.py and the helpers they import."""
    root = Path(__file__).parents[1]
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["medft_jax"]
    assert (root / "medft_jax" / "py.typed").is_file()
    rules = (root / "MANIFEST.in").read_text().split("\n")
    assert "graft tests" in rules and "graft benchmarks" in rules  # test_benchmarks_cli's
    assert PYPROJECT["project"]["license"] == "Apache-2.0"  # a TOML table stops building
