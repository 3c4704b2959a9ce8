"""Tables and figures of finished runs: ``python -m experiments.report``.

    python -m experiments.report --runs runs/ --out report/
    python -m experiments.report --runs runs/ --config experiments/configs/paper.py \\
        --only dataset=bach|isic2020

Reads every ``record.json`` and ``failed.json`` under ``--runs`` and writes
the paper's Tables 3-12 (Markdown, LaTeX, CSV), cost tables, paired
comparisons with FT, figures and an ``index.md`` under ``--out``. With
``--config`` the grid says which runs are expected, so an unfinished sweep
shows what is missing; without it the expectation is inferred from the
records. Any problem (no runs folder, a corrupt record, a bad config or
filter) is one ``error:`` line and exit status 2, with nothing written.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.report",
        description="Write the tables and figures of a sweep's finished runs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--runs", required=True, help="results folder holding the run records")
    p.add_argument("--out", default="report", help="report folder (replaced whole)")
    p.add_argument(
        "--config",
        help="the sweep's grid file (get_config()): defines the expected runs; "
        "default: inferred from the records",
    )
    p.add_argument(
        "--only",
        action="append",
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="report only matching runs; keys dataset, arch, strategy, lr, seed; "
        "'|' separates alternatives (strategy=ft|lp); repeatable",
    )
    p.add_argument(
        "--beat-threshold",
        type=float,
        default=0.1,
        help="Table 12: relative improvement over FT (in percent) a strategy must exceed",
    )
    return p


def _summary(args: argparse.Namespace):
    from medft_jax import grid as gridlib
    from medft_jax import results
    from medft_jax.report import collect

    if not math.isfinite(args.beat_threshold) or args.beat_threshold < 0:
        raise ValueError(f"--beat-threshold must be a percentage >= 0, got {args.beat_threshold}")
    filters = gridlib.parse_only(args.only)
    grid = gridlib.load_grid(args.config) if args.config else None
    runs = Path(args.runs)
    if not runs.is_dir():
        raise ValueError(f"--runs {runs}: no such folder")
    records = results.load_records(runs)
    failures = results.load_failures(runs)
    if not records and not failures:
        raise ValueError(f"--runs {runs}: no run records (record.json) or failure notes in it")
    summary = collect(records, failures, grid=grid, filters=filters)
    if not any(c.runs_done for c in summary.cells.values()):
        what = f"grid {grid.name!r}" if grid is not None else "the filters"
        raise ValueError(
            f"--runs {runs}: none of its {len(records) + len(failures)} runs match {what}; "
            "check --config and --only"
        )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from medft_jax.report import write_report

    try:
        summary = _summary(args)
        index = write_report(summary, args.out, beat_threshold=args.beat_threshold)
    except (ValueError, OSError) as e:  # RecordError, GridError and ReportError are ValueErrors
        message = " ".join(str(e).split())
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
