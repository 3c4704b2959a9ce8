"""Pick a strategy for a new dataset by successive halving: ``python -m experiments.select``.

    python -m experiments.select --config experiments/configs/quick.py --only arch=resnet50 \\
        --out runs-select --grid-runs runs/quick

The arms are the grid's strategies x learning rates for one dataset and
arch, at one seed. Every arm trains ``--min-epochs`` epochs; the best
``1/eta`` of them by validation primary metric (the best validation so
far; ties broken by AUROC, or mAP where AUROC is primary) continue to
``eta`` times as many epochs, and so on, until one arm is
left or the survivors reach the grid's maximum epochs. Arms are not
restarted between rungs: each continues from its own checkpoint, so a
batch is never trained twice, and an arm that early-stops keeps its score.

Budgets are counted in train steps, so a rung may end inside an epoch
(``--min-epochs 0.5``): the arm is validated there and later resumes at
the next batch of that epoch. On short grids this is what keeps the first
rung cheap: with whole epochs, a grid of 2-epoch runs spends half of every
arm's run on the first rung alone.

The pick and its cost (epochs and device-seconds actually trained) are
printed; with ``--grid-runs`` (the records of the same grid run in full)
also the grid's winner (the strategy with the best mean validation
primary metric at its chosen learning rate, over every seed) and the
fraction of the grid's cost that the selection spent. A pick is a
recommendation: run it with the full protocol (every seed) afterwards.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from experiments.common import DEMO_OF_GRID, refuse_data_dir_for_demo
from medft_jax import grid as grid_lib
from medft_jax import locks, results
from medft_jax.config import check_value
from medft_jax.errors import (
    ArgumentParser,
    UserError,
    check_data_dir,
    cli_main,
    exit_command,
    exit_statuses,
    json_loads,
    path_flag,
    stops_held,
    writable_dir,
)
from medft_jax.grid import Grid
from medft_jax.halving import Arm, rung_budgets, successive_halving, survivors, tiebreak_metric
from medft_jax.names import lr_text
from medft_jax.report import collect
from medft_jax.report.aggregate import lr_means, mean_se, same_mean

__all__ = ["Arm", "main", "rung_budgets", "survivors", "tiebreak_metric"]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m experiments.select",
        description="Successive halving over strategies x learning rates for one dataset and arch.",
        epilog=exit_statuses(
            s0="done", s75="an arm is being trained by another process: give each its own --out"
        ),
    )
    p.add_argument(
        "--config",
        required=True,
        type=path_flag("a grid file"),
        help="the grid file (its dataset, arch, settings)",
    )
    p.add_argument(
        "--only",
        action="append",
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="narrow the grid to one dataset and one arch (and any strategies/lrs; several "
        "values of one key with |: strategy=lp|ft)",
    )
    p.add_argument(
        "--out",
        default="runs-select",
        type=path_flag("a folder", output=True),
        help="folder for the selection's own runs (default runs-select: beside a sweep's "
        "default runs/, not in it, where a report or a dry run would count them as the grid's)",
    )
    p.add_argument(
        "--grid-runs",
        type=path_flag("a folder"),
        help="records of the full grid, to compare pick and cost with",
    )
    p.add_argument(
        "--data-dir",
        type=path_flag("a folder"),
        help="where prepared datasets live (default: the grid's)",
    )
    p.add_argument("--seed", type=int, help="the one seed the arms use (default: the grid's first)")
    p.add_argument(
        "--min-epochs",
        type=float,
        default=1.0,
        help="epochs of the first rung (fractions allowed: counted in train steps)",
    )
    p.add_argument("--eta", type=int, default=3, help="keep 1/eta per rung; budgets grow eta-fold")
    p.add_argument(
        "--json",
        type=path_flag("a JSON file", output=True),
        help="also write the outcome to this JSON file",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0, 2 with one ``error:`` line for bad input, 75 (``EX_TEMPFAIL``) when
    another process trains one of its arms in the same ``--out`` (try again later)."""
    return cli_main(_main, argv)


def check_halving(min_epochs: float, eta: int) -> None:
    """Refuses ``--min-epochs`` and ``--eta`` out of range (also before a benchmark's grid)."""
    if not (math.isfinite(min_epochs) and min_epochs > 0):
        raise grid_lib.GridError(f"--min-epochs must be a finite number > 0, got {min_epochs}")
    if not 2 <= eta <= 100:
        raise grid_lib.GridError(f"--eta must be in [2, 100], got {eta}")


def check_first_rung(min_epochs: float, max_epochs: int) -> None:
    """Refuses a first rung as long as a run: one rung of the whole grid is no halving."""
    if min_epochs >= max_epochs:
        raise grid_lib.GridError(
            f"--min-epochs {min_epochs:g} is not under the grid's {max_epochs} epochs; "
            "the first rung must be shorter than a run"
        )


def check_selections(config: str, only: Sequence[str], min_epochs: float) -> None:
    """What select refuses of each ``--only`` selection of grid file ``config`` before it
    loads data (one dataset and arch, two arms or more, a first rung under a run), for a
    caller that sweeps the grid first (``benchmarks/select_vs_grid.py``): found after the
    sweep, such a flag wasted its hours."""
    args = argparse.Namespace(config=config, only=list(only), seed=None)
    _, _, max_epochs = _arms(args)
    check_first_rung(min_epochs, max_epochs)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    check_halving(args.min_epochs, args.eta)
    if args.seed is not None:
        check_value("seed", args.seed, "--seed")
    g, arms, max_epochs = _arms(args)
    g.check_manual_dirs((a.config.dataset for a in arms), args.config)
    check_first_rung(args.min_epochs, max_epochs)
    refuse_data_dir_for_demo(args.data_dir, {a.config.dataset for a in arms}, DEMO_OF_GRID)
    # Paths the end of the selection reads or writes, checked before hours of training.
    if args.grid_runs is not None:
        _check_grid_runs(args.grid_runs, args.out)
    if args.json is not None:
        _check_json_path(args.json)
    writable_dir(args.out, "--out")
    if args.data_dir is not None:
        check_data_dir(args.data_dir)
    elif g.data_dir is not None:  # as --data-dir is, named so
        check_data_dir(g.data_dir, f"--config {args.config}: grid {g.name!r} data_dir")
    # The one import of JAX, here and not at the top: --help and a bad flag stay fast.
    with stops_held():  # a Ctrl-C raised inside JAX's C++ start-up aborted the process
        from medft_jax.session import Session

    session = Session(
        args.out,
        data_dir=args.data_dir or g.data_dir,
        dataset_options=g.dataset_options,
        retry_failed=True,  # a diverged arm is tried again, and fails again, as before
        # Each rung trains every arm in turn: one compiled trainer per strategy kept.
        keep_trainers=len({a.config.strategy for a in arms}),
    )
    session.check_same_runs([a.config for a in arms])
    grid = None
    if args.grid_runs is not None:  # on this data and these weights, before any training
        identity = session.identify(arms[0].config)
        grid = grid_records(
            g, arms, args.grid_runs, identity, print if session.main_process else lambda _: None
        )
        if not grid[0]:  # the comparison would be NaN, after all the training
            folders = results.unfinished_runs(args.grid_runs)
            under_way = [f for f, _ in folders if locks.maybe_running(f)]
            raise UserError(
                f"--grid-runs {args.grid_runs}: holds none of the grid's {grid[2]} runs of "
                "this selection; expected the full grid's --out"
                + (  # the grid's sweep going on: its folder, not yet its records
                    f" ({len(under_way)} run(s) there are under way, e.g. {under_way[0]}: "
                    "compare once the sweep has finished)"
                    if under_way
                    else ""
                )
            )
        check_grid_identity(grid[0], identity, args.grid_runs)
    outcome = successive_halving(
        arms,
        session,
        min_epochs=args.min_epochs,
        eta=args.eta,
        max_epochs=max_epochs,
        say=print if session.main_process else lambda line: None,
    )
    import jax  # started by the selection's runs: the devices every arm trained on

    cost = outcome["cost"]
    cost["device_seconds"] = cost["seconds"] * jax.device_count()
    if grid is not None:
        outcome["grid"] = compare_with_grid(*grid, outcome)
    if session.main_process:  # a multi-host job's other processes say and write nothing
        _print_outcome(outcome)
        if args.json:
            results.write_record(args.json, outcome)
    return 0


def _check_grid_runs(path: str, out: str) -> None:
    """Refuses a ``--grid-runs`` that is not a folder (before the dataset loads), or that
    holds ``--out``: the selection's seed-0 runs would be read as the grid's, twice."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"--grid-runs {path}: no such folder; expected the full grid's --out")
    if not p.is_dir():
        raise UserError(f"--grid-runs {path}: is a file; expected the full grid's --out folder")
    grid, mine = p.resolve(), Path(out).expanduser().resolve()
    if mine == grid or grid in mine.parents:
        raise UserError(
            f"--out {out}: is inside --grid-runs {path}, where the selection's runs would "
            "count as the grid's; expected a folder outside it"
        )


def _is_outcome(path: Path) -> bool:
    """Whether ``path`` holds an outcome ``--json`` wrote (so rewriting it loses nothing)."""
    try:
        data = json_loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable, not UTF-8 or not JSON: not one
        return False
    return isinstance(data, dict) and {"pick", "rungs", "cost"} <= data.keys()


def _check_json_path(path: str) -> None:
    """Refuses a ``--json`` that cannot become a file: a folder, or under a file or a
    folder that cannot be written. Written last, a bad one would waste the whole selection;
    nothing is created here (the write makes missing folders)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"--json {path}: is a folder; expected a file path")
    if p.exists() and p.stat().st_size and not _is_outcome(p):  # empty (mktemp): nothing lost
        raise UserError(
            f"--json {path}: an existing file that is no selection's outcome (an image, a "
            "run's record?), which the outcome would replace; expected a new file or an "
            "earlier --json"
        )
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--json {path}: {parent} is a file, expected a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"--json {path}: the folder {parent} is not writable")
            return


def _arms(args: argparse.Namespace) -> tuple[Grid, list[Arm], int]:
    g = grid_lib.load_grid(args.config)
    runs = grid_lib.select(g, grid_lib.parse_only(args.only))
    for axis in ("dataset", "arch"):
        values = sorted({getattr(c, axis) for c in runs})
        if len(values) != 1:
            raise grid_lib.GridError(
                f"--only: select works on one {axis}; the selection has {len(values)} "
                f"({', '.join(values)}): add --only {axis}=..."
            )
    first_seed = runs[0].seed  # the grid's first (seeds vary fastest, in the grid's order)
    kept = grid_lib.parse_only(args.only).get("seed")
    if args.seed is not None and kept is not None and str(args.seed) not in kept:
        raise grid_lib.GridError(
            f"--seed {args.seed} is not among the seeds --only keeps ({', '.join(sorted(kept))}); "
            "give one of them, or leave one of the two flags out"
        )
    seed = args.seed if args.seed is not None else first_seed
    arms = [
        Arm(c.strategy, c.lr, dataclasses.replace(c, seed=seed))
        for c in runs
        if c.seed == first_seed
    ]
    if len(arms) < 2:
        raise grid_lib.GridError(
            f"--only: select chooses among arms (strategy × lr); the selection has "
            f"{len(arms)} ({arms[0].strategy} at lr {lr_text(arms[0].lr)}): widen --only"
        )
    return g, arms, runs[0].epochs


def grid_records(
    g: Any, arms: list[Arm], grid_runs: str, identity: Any, say: Callable[[str], None] = print
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """The full grid's records and failure notes of the selection's cells (every seed), and
    how many runs those cells have. The notes count: an LR at which a seed diverged is
    never the grid's choice, as in the report.

    A run's record on this selection's data and weights (``identity``, the identified
    config) stands for it; a sweep rerun after the data was edited leaves the older
    record beside it under another name, which is left out (said in one note), not a
    copy; so does its failure note on this data (rerun there, it diverged). A run with
    neither on this data keeps its older record, which :func:`check_grid_identity` then
    refuses by name.
    """
    wanted = {
        results.settings_hash(
            g.config(a.config.dataset, a.config.arch, a.strategy, a.lr, s).to_dict()
        )
        for a in arms
        for s in g.seeds
    }
    found = [
        (path, r)
        for path, r in results.load_records_at(grid_runs, finished=True)
        if results.settings_hash(r["config"]) in wanted
    ]
    noted = [
        f for f in results.load_failures(grid_runs) if results.settings_hash(f["config"]) in wanted
    ]
    # Rerun on this data: finished, or diverged there (its older record then no stand-in).
    current = {results.settings_hash(r["config"]) for _, r in found if _same_inputs(r, identity)}
    current |= {results.settings_hash(f["config"]) for f in noted if _same_inputs(f, identity)}
    kept = [
        (path, r)
        for path, r in found
        if _same_inputs(r, identity) or results.settings_hash(r["config"]) not in current
    ]
    if len(kept) < len(found):
        say(
            f"note: --grid-runs {grid_runs}: left out {len(found) - len(kept)} record(s) of "
            "runs on other data or weights, each rerun on this data there"
        )
    records = results.one_record_per_run(  # a run copied in (a selection's --out)
        kept, f"--grid-runs {grid_runs}", key=results.settings_hash
    )
    failures = [
        f
        for f in noted
        if _same_inputs(f, identity) or results.settings_hash(f["config"]) not in current
    ]
    return records, failures, len(wanted)


def _same_inputs(record: dict[str, Any], identity: Any) -> bool:
    """Whether ``record`` ran on ``identity``'s data and starting weights."""
    return all(record["config"].get(k) == getattr(identity, k) for k in results.IDENTITY_KEYS)


def check_grid_identity(records: list[dict[str, Any]], config: Any, grid_runs: str) -> None:
    """Refuses grid records made from other data or weights than the selection's own.

    Their settings match, so they would be compared silently, and the "selection
    found the grid's winner at X% of its cost" would be about another dataset
    (a folder edited since the sweep, weights downloaded since).
    """
    for r in records:
        for key in results.IDENTITY_KEYS:
            theirs, mine = r["config"].get(key), getattr(config, key)
            if theirs != mine:
                what = "data" if key == "data_fingerprint" else "starting weights"
                raise UserError(
                    f"--grid-runs {grid_runs}: {results.run_name(r['config'])} ran on other "
                    f"{what} than this selection ({key} {str(theirs)[:12]}, here "
                    f"{str(mine)[:12]}); compare with a grid run on the same {what}"
                )


def compare_with_grid(
    records: list[dict[str, Any]],
    failures: list[dict[str, Any]],
    runs_expected: int,
    outcome: dict[str, Any],
) -> dict[str, Any]:
    """The grid's winner and cost for the same dataset and arch, from its records (and
    failure notes, which keep an LR with a diverged seed from being its choice).
    ``pick_test``: the grid's test value at the selection's pick (strategy and LR), which
    need not be the LR the grid chose for that strategy."""
    summary = collect(records, failures)
    cells = [c for c in summary.cells.values() if c.has_value]
    seconds = [sum(e["seconds"] for e in r["epochs"]) for r in records]
    out: dict[str, Any] = {
        "runs": len(records),
        "runs_expected": runs_expected,
        # Diverged runs (failure notes) keep no cost: the grid's epochs and seconds leave
        # theirs out, so the fractions below are upper bounds where there are any.
        "runs_failed": len(failures),
        # Every run of the grid recorded or noted as failed: its cost and winner are the
        # grid's, not those of the runs that happened to be there.
        "complete": len(records) + len(failures) >= runs_expected,
        "epochs": sum(len(r["epochs"]) for r in records),
        # As the selection's arms count theirs: their epochs' seconds (training and
        # validation, no compilation), times the devices each run trained on.
        "seconds": float(sum(seconds)),
        "device_seconds": float(
            sum(s * _devices(r) for s, r in zip(seconds, records, strict=True))
        ),
    }
    if cells:
        by_val = max(cells, key=_val_rank)
        by_test = max(cells, key=lambda c: _finite(c.mean()))
        out["winner_by_val"] = {"strategy": by_val.strategy, "lr": by_val.lr}
        out["winner_by_test"] = {"strategy": by_test.strategy, "lr": by_test.lr}
        pick = outcome["pick"]
        ran_pick = any(c.strategy == pick["strategy"] for c in cells)
        # Cells equal to the winner on both metrics (a flat metric on a small val split):
        # the first in cell order was "the" winner, and a pick agreeing with it by that
        # order read as the grid's agreement.
        tied = [c for c in cells if _val_rank(c) == _val_rank(by_val)]
        if len({c.strategy for c in tied}) > 1:
            out["tied_by_val"] = [{"strategy": c.strategy, "lr": c.lr} for c in tied]
        best = {c.strategy for c in tied}
        # None: the grid has no value for the pick's strategy, so it cannot say.
        out["same_strategy"] = pick["strategy"] in best if ran_pick else None
        # The grid's LR of a strategy is the report's (an exact tie on the primary metric
        # to the smaller LR); another LR of it equal on both metrics is that same cell by
        # the selection's rule (grid order chose between them): not "another LR".
        out["same_strategy_and_lr"] = (
            None
            if out["same_strategy"] is None
            else any(
                c.strategy == pick["strategy"]
                and float(pick["lr"]) in _equal_lrs(records, failures, c)
                for c in tied
            )
        )
        out["winner_test"] = by_val.mean()
        at_pick = [
            r["test"].get(by_val.metric)
            for r in records
            if r["config"]["strategy"] == pick["strategy"]
            and float(r["config"]["lr"]) == float(pick["lr"])
        ]
        if at_pick:
            out["pick_test"] = mean_se(at_pick)[0]
    cost = outcome["cost"]
    whole = out["complete"]  # a part of the grid's cost is no denominator for the selection's
    out["fraction_epochs"] = cost["epochs"] / out["epochs"] if whole and out["epochs"] else math.nan
    spent = out["device_seconds"]
    out["fraction_seconds"] = cost["device_seconds"] / spent if whole and spent else math.nan
    return out


def _devices(record: dict[str, Any]) -> int:
    """The devices a record's run trained on (1 where an older record does not say)."""
    return int((record.get("environment") or {}).get("device_count") or 1)


def epochs_text(epochs: float) -> str:
    """``1,234.5``, ``8``, ``2.33``: a count of epochs, fractional where rungs end inside one
    (``:.3g`` printed 1.23e+03)."""
    return f"{epochs:,.2f}".rstrip("0").rstrip(".")


def _equal_lrs(
    records: list[dict[str, Any]], failures: list[dict[str, Any]], cell: Any
) -> set[float]:
    """The LRs of ``cell``'s strategy whose mean validation equals that of the cell's own
    LR on both the primary metric and its tie-breaker (one the records lack counts as
    equal, as in :func:`_val_rank`): the grid cannot tell them apart by the selection's
    rule. An LR with a diverged seed is never one (the report never chooses it)."""
    at = float(cell.lr)
    own = [r for r in records if r["config"]["strategy"] == cell.strategy]
    if not own:
        return {at}
    diverged = {
        float(f["config"]["lr"]) for f in failures if f["config"]["strategy"] == cell.strategy
    }
    means = [lr_means(own, m) for m in (cell.metric, tiebreak_metric(cell.metric))]
    return {at} | {
        lr
        for lr in means[0]
        if lr not in diverged
        and at in means[0]
        and all(same_mean(_finite(m[lr]), _finite(m[at])) for m in means)
    }


def _val_rank(cell: Any) -> tuple[float, float]:
    """A cell's mean validation primary metric, ties broken as the selection breaks them."""
    second = tiebreak_metric(cell.metric)
    return tuple(_finite(cell.val.get(m, (math.nan,))[0]) for m in (cell.metric, second))


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -math.inf


def _print_outcome(o: dict[str, Any]) -> None:
    pick, cost = o["pick"], o["cost"]
    options = pick.get("strategy_options") or {}
    shown = (
        " (" + ", ".join(f"{k} {v}" for k, v in sorted(options.items())) + ")" if options else ""
    )
    print(
        f"\npick for {o['dataset']} ({o['arch']}): {pick['strategy']}{shown} at lr "
        f"{lr_text(pick['lr'])} "
        f"(val {o['metric_label']} {pick['val']:.4f}); spent {epochs_text(cost['epochs'])} "
        f"epochs, {cost['device_seconds']:,.0f} device-s over {cost['arms']} arms"
    )
    from medft_jax import metrics  # scikit-learn: loaded by the selection, not by --help

    if o["metric_label"] == metrics.EQ6_NAME:
        print(metrics.EQ6_NOTE)
    gr = o.get("grid")
    if not gr:
        return
    if gr["complete"]:
        print(
            f"full grid ({gr['runs']} of {gr['runs_expected']} runs recorded): "
            f"{epochs_text(gr['epochs'])} epochs, {gr['device_seconds']:,.0f} device-s; "
            f"selection spent {gr['fraction_epochs']:.1%} of its epochs, "
            f"{gr['fraction_seconds']:.1%} of its device-seconds"
            + (
                f" (at most: the {gr['runs_failed']} diverged run(s) are counted without the "
                "epochs they trained, which their failure notes do not keep)"
                if gr.get("runs_failed")
                else ""
            )
        )
    else:
        print(
            f"grid incomplete: {gr['runs']} of its {gr['runs_expected']} runs recorded "
            f"({epochs_text(gr['epochs'])} epochs, {gr['device_seconds']:,.0f} device-s), so "
            "no fraction of its cost is given and its winner is that of these runs alone"
        )
    if "winner_by_val" in gr:
        w = gr["winner_by_val"]
        same = {True: "yes", False: "no", None: "unknown (the grid has no value for it)"}
        tied = gr.get("tied_by_val")
        named = (
            "a tie of " + ", ".join(f"{t['strategy']} at lr {lr_text(t['lr'])}" for t in tied)
            if tied
            else f"{w['strategy']} at lr {lr_text(w['lr'])}"
        )
        print(
            f"grid winner (mean val over seeds at its chosen lr): {named}; same strategy"
            f"{' (among the tied)' if tied else ''}: {same[gr['same_strategy']]}"
            + (f"; by test: {gr['winner_by_test']['strategy']}" if "winner_by_test" in gr else "")
        )


if __name__ == "__main__":
    exit_command(main())
