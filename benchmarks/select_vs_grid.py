"""Successive halving against the full grid, side by side in one run.

    python benchmarks/select_vs_grid.py --config experiments/configs/quick.py \\
        --work /tmp/select_vs_grid [--grid-runs runs/quick]

Runs the grid (``experiments.sweep``; skipped where ``--grid-runs`` already
holds its records), then ``experiments.select`` for every arch of the
grid into a fresh folder, and prints per arch: the pick, the grid's winner
(best mean validation metric over seeds at its chosen learning rate), and
the fraction of the grid's epochs and device-seconds (training and
validation, compilation excluded) that the selection spent. The issue's
goal: the same pick at <= 1/4 of the grid's cost. Wall times are printed
too; they include compilation, which the two share through the process's
compiled programs and the persistent compilation cache.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from experiments import select as select_cli
from experiments import sweep as sweep_cli
from medft_jax import grid as grid_lib
from medft_jax.errors import ArgumentParser, UserError, cli_main, exit_command, no_file_in_the_way

ROOT = Path(__file__).resolve().parents[1]


def _winner(grid: dict) -> str:
    """The grid's winner by validation, or its tie (the first of a tie alone read as the
    one winner beside "same? yes" for a pick that was another of the tied)."""
    tied = grid.get("tied_by_val")
    if tied:
        return "tie: " + ", ".join(f"{t['strategy']} @ {t['lr']:g}" for t in tied)
    win = grid.get("winner_by_val", {})
    return f"{win.get('strategy', '-')} @ {win.get('lr', float('nan')):g}"


def _same(value: bool | None) -> str:
    """A pick against the grid's winner: ``unknown`` where the grid's records lack the pick's
    strategy (None), which "no" misread as a pick that differs."""
    return "unknown" if value is None else "yes" if value else "no"


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--config",
        default=str(ROOT / "experiments" / "configs" / "quick.py"),
        help="the grid file (default: this repository's experiments/configs/quick.py)",
    )
    p.add_argument("--work", default="/tmp/medft_select_vs_grid", help="scratch folder")
    p.add_argument("--grid-runs", help="records of the grid already run (else it is run here)")
    p.add_argument("--eta", type=int, default=3)
    p.add_argument("--min-epochs", type=float, default=0.5)
    args = p.parse_args(argv)
    # before the grid: a bad flag found after hours of runs would waste them
    select_cli.check_halving(args.min_epochs, args.eta)
    g = grid_lib.load_grid(args.config)
    for dataset in g.datasets:
        for arch in g.archs:
            select_cli.check_selections(
                args.config, [f"dataset={dataset},arch={arch}"], args.min_epochs
            )
    no_file_in_the_way(args.work, "--work")
    if args.grid_runs and not Path(args.grid_runs).is_dir():
        raise UserError(f"--grid-runs {args.grid_runs}: no such folder (expected a sweep's --out)")
    from medft_jax.environment import machine_line  # JAX, after the flags

    print(machine_line(), flush=True)
    work = Path(args.work)
    grid_runs = Path(args.grid_runs) if args.grid_runs else work / "grid"
    grid_wall = None
    if not args.grid_runs:
        t = time.perf_counter()
        rc = sweep_cli.main(["--config", args.config, "--out", str(grid_runs)])
        grid_wall = time.perf_counter() - t
        if rc:  # it said why, in one error: line
            return rc
    g = grid_lib.load_grid(args.config)
    rows = []
    for dataset in g.datasets:
        for arch in g.archs:
            out = work / "select" / f"{dataset}-{arch}"
            shutil.rmtree(out, ignore_errors=True)
            outcome_file = work / f"select-{dataset}-{arch}.json"
            t = time.perf_counter()
            rc = select_cli.main(
                [
                    "--config",
                    args.config,
                    "--only",
                    f"dataset={dataset},arch={arch}",
                    "--out",
                    str(out),
                    "--grid-runs",
                    str(grid_runs),
                    "--eta",
                    str(args.eta),
                    "--min-epochs",
                    str(args.min_epochs),
                    "--json",
                    str(outcome_file),
                ]
            )
            wall = time.perf_counter() - t
            if rc:  # it said why, in one error: line
                return rc
            rows.append((dataset, arch, json.loads(outcome_file.read_text()), wall))
    print(
        f"\n# {args.config}: eta {args.eta}, first rung {args.min_epochs:g} epoch(s)"
        + (f"; grid wall time {grid_wall / 60:.1f} min" if grid_wall is not None else "")
    )
    print("| dataset | arch | pick | grid's winner (val) | same? | epochs | device-s | wall |")
    print("|---|---|---|---|---|--:|--:|--:|")
    for dataset, arch, o, wall in rows:
        print(_row(dataset, arch, o, wall))
    return 0


def _share(spent: str, whole: str, fraction: float | None) -> str:
    """``spent/whole = fraction``; without the fraction where select gave none (an incomplete
    grid: null in its JSON, which ``:.0%`` crashed on after the whole selection)."""
    return f"{spent}/{whole}" + ("" if fraction is None else f" = {fraction:.0%}")


def _row(dataset: str, arch: str, o: dict, wall: float) -> str:
    """One table row from select's ``--json`` outcome. Costs in device-seconds on both sides,
    as the fraction is (a grid swept on several devices read as plain seconds beside it)."""
    gr, pick, cost = o["grid"], o["pick"], o["cost"]
    runs = "" if gr["complete"] else f" (grid incomplete: {gr['runs']} of {gr['runs_expected']})"
    epochs = _share(f"{cost['epochs']:.1f}", str(gr["epochs"]), gr.get("fraction_epochs"))
    seconds = _share(
        f"{cost['device_seconds']:.0f}", f"{gr['device_seconds']:.0f}", gr.get("fraction_seconds")
    )
    return (
        f"| {dataset} | {arch} | {pick['strategy']} @ {pick['lr']:g} | {_winner(gr)}{runs} "
        f"| {_same(gr.get('same_strategy_and_lr'))} | {epochs} | {seconds} "
        f"| {wall / 60:.1f} min |"
    )


if __name__ == "__main__":
    exit_command(cli_main(main))
