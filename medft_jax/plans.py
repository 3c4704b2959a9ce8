"""What a sweep set out to run, kept beside its runs so that a report can count what is missing.

A report without ``--config`` infers the runs a folder should hold from the runs it
holds (every arch, strategy, LR and seed seen anywhere). That cannot see a run no
record names: when one shard of a sweep never ran (a SLURM array task lost, a host
preempted for good), its runs are simply absent, and where the shards are dealt so
that one holds a whole seed (``--shard i/3`` on a grid of 3 seeds) or a whole
strategy (``--only lr=0.001,seed=0 --shard i/8``), every cell read as complete, one
seed or one strategy short, without a word. A sweep therefore keeps under
``<out>/.plans/`` one plan per grid name: the runs it selected (filtered, before
sharding), and a report expects exactly those runs.

One file per grid name, so that an edited grid does not leave its old runs expected
for ever: a sweep of the same grid (its unfiltered runs hash alike) adds its
selection to the plan, as shards and ``--only`` slices of one grid do; a sweep of an
edited grid replaces it. Deleting the file stops a report expecting its runs.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medft_jax import locks
from medft_jax.atomic import write_bytes
from medft_jax.errors import json_loads, note
from medft_jax.names import STRATEGIES, dataset_name_error, is_known_arch
from medft_jax.results import RecordError, config_hash, jsonable

PLANS_DIR = ".plans"
"""The folder under a sweep's ``--out`` that holds its plans."""
PLAN_KEYS = ("grid", "grid_hash", "only", "runs")
_FIRST_KEYS = ("grid", "only", "runs")
"""The first plans' fields (``<grid>-<runs hash>.json``, one per selection): still read,
unless a plan of the same grid name in this form replaces them."""
_LOCK = ".merge.lock"
"""Held while a plan is merged: two sweeps of one grid add their selections, not one. The
empty file stays (:func:`medft_jax.locks.waiting_lock`); not named ``.lock``, a run's lock,
whose leftover would read as a run still held."""


def plan_path(out_dir: str | Path, grid_name: str) -> Path:
    """Where grid ``grid_name``'s plan lives: its name made safe for a file name, and a
    hash of the name itself, so that grids ``a b`` and ``a_b`` have two files."""
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in grid_name) or "grid"
    digest = hashlib.sha256(grid_name.encode()).hexdigest()[:8]
    return Path(out_dir) / PLANS_DIR / f"{safe}-{digest}.json"


def grid_hash_of(
    runs: Sequence[Mapping[str, Any]], dataset_options: Mapping[str, Any] | None = None
) -> str:
    """A grid's definition: the hash of its runs as a set, whatever order the grid file
    lists its axes in (``tuple(some_set)`` lists them otherwise in every process, and a
    second ``--only`` slice replaced the first's plan instead of adding to it), and of its
    ``dataset_options`` where it has any (a run's config lacks them: two grid files that
    differ only in a folder's ``manual_dir`` are two definitions)."""
    configs = [dict(jsonable(dict(r), "plan")) for r in runs]
    definition: dict[str, Any] = {"runs": sorted(configs, key=config_hash)}
    if dataset_options:  # none: the hash plans without options were written with
        options = {str(d): dict(o) for d, o in dataset_options.items()}
        definition["dataset_options"] = jsonable(options, "plan")
    return config_hash(definition)


def write_plan(
    out_dir: str | Path,
    grid_name: str,
    only: Sequence[str],
    runs: Sequence[Mapping[str, Any]],
    grid_hash: str | None = None,
    *,
    same: Sequence[str] = (),
    on_replace: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """Records that a sweep of grid ``grid_name`` selected ``runs`` (their configs,
    before sharding; ``only`` its ``--only`` filters); returns the plan's path.

    ``grid_hash`` names the grid's definition (default: the runs' own hash, the runs
    being the whole grid); ``same``: other hashes of this definition (the one plans
    written before :func:`grid_hash_of` hold). A plan of the same definition gets these
    runs added; one of another (the grid was edited since, or another grid file has its
    name) is replaced, and ``on_replace`` is given it first. Raises ``OSError`` where the
    folder cannot be written (the caller says so and goes on: the plan is an aid).
    """
    path = plan_path(out_dir, grid_name)
    new = [dict(jsonable(dict(r), "plan")) for r in runs]
    grid_hash = grid_hash or config_hash({"runs": new})
    path.parent.mkdir(parents=True, exist_ok=True)
    with locks.waiting_lock(path.parent / _LOCK):
        old = _read(path) if path.is_file() else None
        if old is None and path.is_file():  # its other slices' or shards' runs go with it
            note(f"{DAMAGED_NOTE.format(path=path)}; replaced by this sweep's")
        if old is not None and old.get("grid_hash") not in (grid_hash, *same) and on_replace:
            on_replace(old)
        if old is not None and old.get("grid_hash") in (grid_hash, *same):
            kept = {config_hash(r): r for r in old["runs"]}
            kept.update((config_hash(r), r) for r in new)
            filters = sorted({*old["only"], *only})
        else:
            kept, filters = {config_hash(r): r for r in new}, sorted(set(only))
        plan = {
            "grid": grid_name,
            "grid_hash": grid_hash,
            "only": filters,
            "runs": [kept[k] for k in sorted(kept)],
        }
        if plan != old:  # every shard of one sweep: the same plan, written once
            write_bytes(path, (json.dumps(plan, sort_keys=True) + "\n").encode())
    return path


DAMAGED_NOTE = (
    "note: {path}: not a readable sweep plan (damaged, or another version's): the runs it "
    "listed are expected by a report no more"
)
"""The note of a plan a sweep replaces unread (the dry run says it will)."""


def read_plan(path: Path) -> dict[str, Any] | None:
    """The plan at ``path``, or None where there is none this version reads."""
    return _read(path) if path.is_file() else None


def _read(path: Path) -> dict[str, Any] | None:
    """The plan at ``path``, or None where it is not one this version writes."""
    try:
        plan = json_loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return plan if _problem(plan) is None else None


def load_plans(out_dir: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every plan under ``out_dir/.plans`` (path order), each checked: a damaged one is
    named in one line (it would narrow what the report expects without a word). Hidden
    files (a Mac's ``._name.json`` beside a copied plan) are not plans."""
    folder = Path(out_dir) / PLANS_DIR
    if not folder.is_dir():
        return []
    plans = []
    for path in sorted(folder.glob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            plan = json_loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise RecordError(
                f"{path}: not a readable sweep plan ({type(e).__name__}); delete it (a report "
                "then expects no runs of it), or give --config"
            ) from None
        problem = _problem(plan)
        if problem:
            raise RecordError(
                f"{path}: not a sweep plan ({problem}); delete it (a report then expects no "
                "runs of it), or give --config"
            )
        plans.append((path, plan))
    current = {plan["grid"] for _, plan in plans if "grid_hash" in plan}
    return [
        (path, plan) for path, plan in plans if "grid_hash" in plan or plan["grid"] not in current
    ]


def _problem(plan: Any) -> str | None:
    """What makes ``plan`` not a plan, or None."""
    if not isinstance(plan, dict) or set(plan) not in (set(PLAN_KEYS), set(_FIRST_KEYS)):
        return f"expected a JSON object of {', '.join(PLAN_KEYS)}"
    if not isinstance(plan["grid"], str) or not isinstance(plan.get("grid_hash", ""), str):
        return "grid and grid_hash must be strings"
    if not isinstance(plan["only"], list) or not all(isinstance(x, str) for x in plan["only"]):
        return "only must be a list of strings"
    if not isinstance(plan["runs"], list):
        return "runs must be a list"
    for k, run in enumerate(plan["runs"]):
        problem = _run_problem(run)
        if problem:
            return f"run {k}: {problem}"
    return None


def _run_problem(run: Any) -> str | None:
    """What makes ``run`` not a run a sweep writes, or None: a hand-made plan's names
    reach the report's tables as records' do, and are held to the same words."""
    if not isinstance(run, dict):
        return "not a JSON object"
    dataset_error = dataset_name_error(run.get("dataset"))
    if dataset_error:
        return f"dataset {run.get('dataset')!r}: {dataset_error}"
    if not (isinstance(run.get("arch"), str) and is_known_arch(run["arch"])):
        return f"arch {run.get('arch')!r} is not an arch this medft-jax builds"
    if run.get("strategy") not in STRATEGIES:
        return f"strategy {run.get('strategy')!r} is not one of {', '.join(STRATEGIES)}"
    lr, seed = run.get("lr"), run.get("seed")
    number = isinstance(lr, int | float) and not isinstance(lr, bool)
    if not (number and math.isfinite(lr) and lr > 0):
        return f"lr {lr!r} is not a positive number"
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        return f"seed {seed!r} is not an integer from 0"
    return None
