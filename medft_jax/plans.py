"""What a sweep set out to run, kept beside its runs so that a report can count what is missing.

A report without ``--config`` infers the runs a folder should hold from the runs it
holds (every arch, strategy, LR and seed seen anywhere). That cannot see a run no
record names: when one shard of a sweep never ran (a SLURM array task lost, a host
preempted for good), its runs are simply absent, and where the shards are dealt so
that one holds a whole seed (``--shard i/3`` on a grid of 3 seeds) or a whole
strategy (``--only lr=0.001,seed=0 --shard i/8``), every cell read as complete, one
seed or one strategy short, without a word. Each sweep process therefore writes the
whole (filtered, unsharded) list of its runs under ``<out>/.plans/``, one file per
list, the same bytes from every shard; a report adds them to what it expects.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medft_jax.atomic import write_bytes
from medft_jax.results import RecordError, config_hash, jsonable

PLANS_DIR = ".plans"
"""The folder under a sweep's ``--out`` that holds its plans."""
PLAN_KEYS = ("grid", "only", "runs")


def plan_path(out_dir: str | Path, grid_name: str, runs: Sequence[Mapping[str, Any]]) -> Path:
    """Where the plan of ``runs`` lives: named by the grid and the runs' own hash, so that
    every shard of one sweep names one file, and another selection of the grid another."""
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in grid_name) or "grid"
    digest = config_hash({"runs": [dict(r) for r in runs]})
    return Path(out_dir) / PLANS_DIR / f"{safe}-{digest}.json"


def write_plan(
    out_dir: str | Path, grid_name: str, only: Sequence[str], runs: Sequence[Mapping[str, Any]]
) -> Path:
    """Writes the plan of a sweep's runs (their configs, before sharding) once; returns it."""
    path = plan_path(out_dir, grid_name, runs)
    if not path.exists():  # another shard wrote the same bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        plan = {"grid": grid_name, "only": list(only), "runs": [dict(r) for r in runs]}
        write_bytes(path, (json.dumps(jsonable(plan, "plan"), sort_keys=True) + "\n").encode())
    return path


def load_plans(out_dir: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every plan under ``out_dir/.plans`` (path order), each checked: a damaged one is
    named in one line (it would narrow what the report expects without a word)."""
    folder = Path(out_dir) / PLANS_DIR
    if not folder.is_dir():
        return []
    plans = []
    for path in sorted(folder.glob("*.json")):
        try:
            plan = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise RecordError(
                f"{path}: not a readable sweep plan ({type(e).__name__}); delete it, and the "
                "report infers the expected runs from the records alone (or give --config)"
            ) from None
        runs = plan.get("runs") if isinstance(plan, dict) else None
        if (
            not isinstance(plan, dict)
            or set(plan) != set(PLAN_KEYS)
            or not isinstance(runs, list)
            or not all(_is_run(r) for r in runs)
        ):
            raise RecordError(
                f"{path}: not a sweep plan (expected {{grid, only, runs}} with each run's "
                "dataset, arch, strategy, lr and seed); delete it, or give --config"
            )
        plans.append((path, plan))
    return plans


def _is_run(run: Any) -> bool:
    if not isinstance(run, dict):
        return False
    names = all(isinstance(run.get(k), str) for k in ("dataset", "arch", "strategy"))
    numbers = isinstance(run.get("lr"), int | float) and isinstance(run.get("seed"), int)
    return names and numbers and not isinstance(run.get("seed"), bool)
