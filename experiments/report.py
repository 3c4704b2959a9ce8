"""Tables and figures of finished runs: ``python -m experiments.report``.

    python -m experiments.report --runs runs/ --out report/
    python -m experiments.report --runs runs/ --config experiments/configs/paper.py \\
        --only "dataset=bach|isic2020"

Reads every ``record.json`` and ``failed.json`` under ``--runs`` and writes
the paper's Tables 3-12 (Markdown, LaTeX, CSV), cost tables, paired
comparisons with FT, figures and an ``index.md`` under ``--out``. With
``--config`` the grid says which runs are expected, so an unfinished sweep
shows what is missing; without it the expectation is inferred from the
records. ``--vs-paper [CSV]`` sets each number beside the published one (the paper's
Tables 3-10, bundled, or a CSV of that form): ``tables/vs_paper_<dataset>`` and a section
of the index. ``--latest`` leaves out the records a sweep superseded by rerunning their
settings on edited data (without it, such records are refused, named). Any problem
(no runs folder, a corrupt record, a bad config or filter) is one ``error:`` line and
exit status 2, with nothing written.
``--out`` is only ever replaced when it is a report this command wrote
(its ``.medft-report`` marker lists the files) holding nothing else; it may
not be, be inside, or contain ``--runs``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from medft_jax import grid as gridlib
from medft_jax import locks, plans, results
from medft_jax.errors import (
    ArgumentParser,
    UserError,
    cli_main,
    exit_command,
    exit_statuses,
    path_flag,
)
from medft_jax.plans import PLANS_DIR
from medft_jax.report import collect, write_report
from medft_jax.report.cells import check_failure, check_record
from medft_jax.report.paper import load_paper
from medft_jax.report.write import check_out


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m experiments.report",
        description="Write the tables and figures of a sweep's finished runs.",
        epilog=exit_statuses(s0="written"),
    )
    p.add_argument(
        "--runs",
        required=True,
        type=path_flag("a folder"),
        help="results folder holding the run records",
    )
    p.add_argument(
        "--out",
        default="report",
        type=path_flag("a folder", output=True),
        help="report folder: created, or replaced whole if it holds a report written by this "
        "command and nothing else; any other non-empty folder is refused",
    )
    p.add_argument(
        "--config",
        type=path_flag("a grid file"),
        help="the sweep's grid file (get_config()): defines the expected runs; "
        "default: the runs of the sweeps' plans (--runs/.plans/, one file per grid: "
        "delete one to stop expecting its runs), and the other runs inferred from the records",
    )
    p.add_argument(
        "--only",
        action="append",
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="report only matching runs; keys dataset, arch, strategy, lr, seed; "
        "'|' separates alternatives (strategy=ft|lp); repeatable",
    )
    p.add_argument(
        "--latest",
        action="store_true",
        help="leave out each record superseded by a rerun of its settings on newer data "
        "(a sweep after the data was edited), keeping the newest by finished_at; index.md "
        "says how many. A folder/csv run is dropped only for a rerun on the same folder "
        "and options",
    )
    p.add_argument(
        "--beat-threshold",
        type=float,
        default=0.1,
        help="Table 12: relative improvement over FT (in percent) a strategy must exceed",
    )
    p.add_argument(
        "--beat-points",
        action="store_true",
        help="Table 12: read --beat-threshold in percentage points of the metric, "
        "100·(m − m_FT), not relative to FT's mean (the reading under which the printed "
        "Tables 3-10 give every published Table 12 count; see BUILD.md)",
    )
    p.add_argument(
        "--vs-paper",
        nargs="?",
        const=BUNDLED_PAPER,
        type=path_flag("a CSV file"),
        metavar="CSV",
        help="set our numbers beside published ones: per dataset a table "
        "tables/vs_paper_<dataset> (ours, the paper's, the difference in percentage points, "
        "z = diff / sqrt(se_ours^2 + se_paper^2), the paper's SE plus half a unit of its "
        "last printed digit, as it cuts its SEs off, |z| > 2 flagged) and a section 'Against the "
        "paper' in index.md (cells compared, mean |diff|, |z| > 2, Spearman rho of the "
        "strategy ranking per arch). CSV: columns table,dataset,strategy,arch,metric,mean,se, "
        "mean and se in percent, of the paper's datasets and archs (the toolkit's names); "
        "without it, the paper's Tables 3-10 bundled with the package",
    )
    return p


BUNDLED_PAPER = True
"""``--vs-paper`` given without a CSV: the bundled tables (not a string, which argparse would
check as a path: ``--vs-paper ''`` is refused as an empty path)."""


def _summary(args: argparse.Namespace):
    if not math.isfinite(args.beat_threshold) or args.beat_threshold < 0:
        raise UserError(f"--beat-threshold must be a percentage >= 0, got {args.beat_threshold}")
    filters = gridlib.parse_only(args.only)
    grid = gridlib.load_grid(args.config) if args.config else None
    runs = Path(args.runs)
    if not runs.is_dir():
        what = "is a file, expected the runs' folder" if runs.exists() else "no such folder"
        raise UserError(f"--runs {runs}: {what}")
    check_out(args.out, runs)  # before the work: a folder that is not ours is never replaced
    bare: list[Path] = []  # records without the seal, read alike
    found = results.load_records_at(runs, unsealed=bare)
    for path, record in found:  # a refusal names the file, not only the run
        check_record(path, record)
    records = results.one_record_per_run(found, f"--runs {runs}")
    noted = results.load_failures_at(runs)
    for path, note in noted:  # named by the file, as a record is
        check_failure(path, note)
    failures = results.one_record_per_run(noted, f"--runs {runs}", what="failure notes")
    forced: list[Path] = []  # runs whose last record --force set aside
    unfinished = results.unfinished_runs(runs, set_aside=forced)
    if not records and not failures:
        live = [f for f in forced if locks.maybe_running(f)]
        killed = len(forced) - len(live)
        rerun = (
            f"; {len(forced)} run(s) rerun with --force keep their last record in "
            f"{results.PREVIOUS_NAMES[0]}/, e.g. {forced[0]}: "
            + (f"{len(live)} still running (report once they end)" if live else "")
            + ("; " if live and killed else "")
            + (
                f"{killed} with no process running (a forced rerun killed: run it again to finish)"
                if killed
                else ""
            )
            if forced
            else ""
        )
        going = [f for f, _ in unfinished if locks.maybe_running(f)]
        if going:  # runs under way: not an empty or wrong folder
            rerun += (
                f"; {len(going)} run(s) are under way (a process holds its lock), e.g. "
                f"{going[0]}: report once one finishes"
            )
        raise UserError(
            f"--runs {runs}: no run records (record.json) or failure notes in it{rerun}"
        )
    planned = (
        [
            (f"{PLANS_DIR}/{path.name} (grid {plan['grid']!r})", plan["runs"])
            for path, plan in plans.load_plans(runs)
        ]
        if grid is None
        else []
    )
    summary = collect(
        records, failures, grid=grid, filters=filters, latest=args.latest, planned=planned
    )
    if not any(c.runs_done for c in summary.cells.values()):
        what = f"grid {grid.name!r}" if grid is not None else "the filters"
        raise UserError(
            f"--runs {runs}: none of its {len(records) + len(failures)} runs match {what}; "
            + (f"{summary.left_out_why}" if summary.left_out_why else "check --config and --only")
        )
    if bare:  # said once the report will be written: an error stays one line
        print(
            f"note: {len(bare)} of {len(found)} records carry no {results.SEAL_KEY} (written "
            "before 2026-12-05, or edited with it removed): their numbers are checked against "
            f"nothing, e.g. {bare[0]}",
            file=sys.stderr,
        )
    if forced:  # their cells read as missing runs until the rerun writes its record
        print(
            f"note: {len(forced)} run(s) being rerun with --force (or a forced rerun "
            f"killed) are left out: their last record waits in "
            f"{results.PREVIOUS_NAMES[0]}/ until the rerun ends, e.g. {forced[0]}",
            file=sys.stderr,
        )
    if unfinished:  # a kill, a run going on, or a run whose settings or data changed since
        held = _size(sum(size for _, size in unfinished))
        holders = {folder: locks.holder_of(folder) for folder, _ in unfinished}
        running = [f for f, who in holders.items() if who == locks.RUNNING_HERE]
        elsewhere = [f for f, who in holders.items() if who not in (None, locks.RUNNING_HERE)]
        finished = _finished_stems(folder for folder, _ in unfinished)
        beside = [
            folder
            for folder, _ in unfinished
            if holders[folder] is None and (folder.parent, _stem(folder)) in finished
        ]
        now = (
            f"; {len(running)} of them are running now (a live process on this host holds "
            f"the lock), e.g. {running[0]}"
            if running
            else ""
        )
        if elsewhere:
            who = holders[elsewhere[0]]
            why = (
                "its lock file's holder cannot be read"
                if who == "?"
                else f"the lock names host {who}, which cannot be checked from here"
            )
            now += (
                f"; {len(elsewhere)} of them may be running elsewhere ({why}; a run killed "
                f"there leaves its lock too), e.g. {elsewhere[0]}"
            )
        left = (
            f"; {len(beside)} of them stopped beside a finished run of the same name on other "
            f"data or settings (that run's command never resumes them), e.g. {beside[0]}"
            if beside
            else ""
        )
        print(
            f"note: {len(unfinished)} run folder(s) hold no record, {held} of checkpoints "
            f"(killed, still running, or run with settings or data since changed), e.g. "
            f"{unfinished[0][0]}: rerunning the same command resumes one only while its "
            f"settings and data are as they were (edited data is another run){now}{left}; "
            "delete a stopped one you no longer mean to finish to free its disk",
            file=sys.stderr,
        )
    return summary


def _stem(folder: Path) -> str:
    """A run folder's name without its hash: runs of one name on other data or settings."""
    return folder.name.rpartition("-")[0]


def _finished_stems(folders: Iterable[Path]) -> set[tuple[Path, str]]:
    """``(parent, stem)`` of the folders holding a record beside ``folders``: one listing
    of each parent, not one glob per folder (a grid's --runs holds thousands)."""
    stems = set()
    for parent in {folder.parent for folder in folders}:
        with contextlib.suppress(OSError), os.scandir(parent) as entries:
            for entry in entries:
                if (Path(entry.path) / results.RECORD_NAME).is_file():
                    stems.add((parent, _stem(Path(entry.path))))
    return stems


def _size(n: int) -> str:
    """Bytes as a person reads them: ``181 MB``, ``1.7 GB``."""
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    return f"{n / 1e6:.1f} MB" if n < 1e7 else f"{n / 1e6:.0f} MB"


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0, or 2 with one ``error:`` line for bad input (nothing written)."""
    return cli_main(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    # Read first: a bad CSV stops the report before the records are read.
    paper = (
        None
        if args.vs_paper is None
        else load_paper(None if args.vs_paper is BUNDLED_PAPER else args.vs_paper)
    )
    summary = _summary(args)
    index = write_report(
        summary,
        args.out,
        beat_threshold=args.beat_threshold,
        beat_points=args.beat_points,
        runs_dir=args.runs,
        paper=paper,
    )
    print(index)
    if paper is not None and not set(summary.datasets) & set(paper.datasets):
        # Said in index.md alone, a comparison that compared nothing exited 0 unremarked.
        print(
            f"note: --vs-paper: none of these datasets ({', '.join(summary.datasets)}) is in "
            f"the published tables ({', '.join(paper.datasets)}): nothing compared",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    exit_command(main())
