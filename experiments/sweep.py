"""Run a grid of fine-tuning runs, resumably, split across hosts: ``python -m experiments.sweep``.

    python -m experiments.sweep --config experiments/configs/paper.py --dry-run
    python -m experiments.sweep --config experiments/configs/quick.py
    python -m experiments.sweep --config experiments/configs/paper.py \\
        --only dataset=bach,arch=vgg19 --shard 0/4 --out /shared/runs

Every run writes its record to ``--out`` only when it has finished, so a
sweep started again skips what is done and resumes the run it was killed
in from that run's latest checkpoint (losing at most the epoch in flight).
``--shard i/N`` takes every N-th run of the (filtered) grid starting at
the i-th: N processes given the same config and filters split the grid
with nothing done twice and nothing left out, without talking to each
other (see BUILD.md for a SLURM array and a TPU pod launch). A run whose
loss diverges leaves a ``failed.json`` note and the sweep goes on; it is
not retried unless ``--retry-failed``. A run another process is running
(it holds the run folder's lock, :mod:`medft_jax.locks`) is skipped with
one line, so two unsharded sweeps of one grid share it out. A full disk
stops the sweep (exit status 1, one line naming the path): every later run
would fail too; started again once space is freed, it resumes.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medft_jax.errors import ArgumentParser


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m experiments.sweep",
        description="Run a grid of datasets x archs x strategies x learning rates x seeds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--config",
        required=True,
        help="a grid file defining get_config() (experiments/configs/paper.py, quick.py)",
    )
    p.add_argument(
        "--only",
        action="append",
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="run only matching runs; keys dataset, arch, strategy, lr, seed; "
        "'|' separates alternatives (strategy=ft|lp); repeatable",
    )
    p.add_argument("--shard", metavar="I/N", help="run shard I (0-based) of N")
    p.add_argument("--out", default="runs", help="results folder (shared by every shard)")
    p.add_argument("--data-dir", help="where prepared datasets live (default: the grid's)")
    p.add_argument(
        "--dry-run", action="store_true", help="list the runs and their estimated cost, run none"
    )
    p.add_argument(
        "--retry-failed", action="store_true", help="rerun runs that left a failed.json note"
    )
    p.add_argument("--progress", action="store_true", help="per-epoch progress bars")
    return p


def plan(args: argparse.Namespace) -> tuple[Any, list[Any], tuple[int, int]]:
    """The grid, this process's runs and its shard; a bad flag raises GridError naming it."""
    from medft_jax import grid as grid_lib

    g = grid_lib.load_grid(args.config)
    runs = grid_lib.select(g, grid_lib.parse_only(args.only))
    index, count = grid_lib.parse_shard(args.shard) if args.shard else (0, 1)
    return g, runs, (index, count)


def status_of(config: Any, out: str | os.PathLike[str]) -> str:
    """``done`` (record), ``failed`` (failure note, no record) or ``todo``.

    ``config`` must be identified (:func:`medft_jax.fit.identify`): a record
    of the same settings on other data or weights is another run.
    """
    from medft_jax import results

    cfg = config.to_dict()
    if results.record_path(out, cfg).exists():
        return "done"
    if results.failure_path(out, cfg).exists():
        return "failed"
    return "todo"


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0, 1 when a dataset was unavailable or the disk full, 2 for bad input."""
    from medft_jax.errors import cli_main

    return cli_main(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    g, runs, (index, count) = plan(args)
    if args.dry_run:
        dry_run(g, runs, index, count, args.out)
        return 0
    from medft_jax.errors import writable_dir

    writable_dir(args.out, "--out")
    if args.data_dir is not None:
        writable_dir(args.data_dir, "--data-dir")
    return sweep(g, runs, index, count, args)


# --- dry run -------------------------------------------------------------------------------------


def dry_run(g: Any, runs: list[Any], index: int, count: int, out: str) -> None:
    """Lists this shard's runs with status and estimated cost, and every shard's total."""
    from medft_jax import grid as grid_lib
    from medft_jax import results

    records = results.load_records(out) if Path(out).is_dir() else []
    failures = results.load_failures(out) if Path(out).is_dir() else []
    # Without loading the data, a run is matched by its settings (any data version).
    finished = {results.settings_hash(r["config"]) for r in records}
    noted = {results.settings_hash(f["config"]) for f in failures}

    def status(config: Any) -> str:
        key = results.settings_hash(config.to_dict())
        return "done" if key in finished else "failed" if key in noted else "todo"

    measured = grid_lib.measured_throughput(records)
    mine = grid_lib.shard(runs, index, count)
    axes = " x ".join(f"{len(g.axis(a))} {grid_lib.plural(a)}" for a in grid_lib.AXES)
    print(f"grid {g.name}: {g.size} runs ({axes}); selected {len(runs)}", end="")
    print(f"; shard {index}/{count}: {len(mine)}" if count > 1 else "")
    print(f"{'#':>5}  {'status':<6}  {'est.':>8}  run")
    totals = {"todo": 0.0, "unknown": 0}
    counts = {"done": 0, "failed": 0, "todo": 0}
    for k, config in enumerate(runs[index::count]):
        state = status(config)
        counts[state] += 1
        seconds = grid_lib.estimate_seconds(config, measured)
        if state == "todo":
            if seconds is None:
                totals["unknown"] += 1
            else:
                totals["todo"] += seconds
        run = results.run_name(config.to_dict())
        print(f"{index + k * count:>5}  {state:<6}  {_duration(seconds):>8}  {run}")
    unknown = f" (+{totals['unknown']} of unknown cost)" if totals["unknown"] else ""
    print(
        f"done {counts['done']}, failed {counts['failed']}, to run {counts['todo']}: "
        f"at most {_duration(totals['todo'])} of device time{unknown}"
    )
    if count > 1:
        per = []
        for i in range(count):
            cost = [grid_lib.estimate_seconds(c, measured) for c in runs[i::count]]
            per.append(f"{i}: {len(cost)} runs, {_duration(sum(x for x in cost if x))}")
        print("shards: " + "; ".join(per))
    source = (
        f"measured throughput of {len(records)} records in {out} where the arch and image "
        "size match, else "
        if measured
        else ""
    )
    print(
        "estimates are upper bounds (every epoch run, no early stopping) from the tasks' "
        f"nominal training images and {source}assumed H100 throughput "
        f"({', '.join(f'{a} {r:g} img/s' for a, r in grid_lib.REFERENCE_IMAGES_PER_S.items())} "
        "at 224 px)"
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 1:
        return "<1 s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# --- the sweep -----------------------------------------------------------------------------------


def sweep(g: Any, runs: list[Any], index: int, count: int, args: argparse.Namespace) -> int:
    """Runs this shard's unfinished runs in grid order; returns the exit status."""
    import jax

    from medft_jax import grid as grid_lib
    from medft_jax import results
    from medft_jax.data import DataError
    from medft_jax.data.tasks import task_options
    from medft_jax.errors import find_os_error, os_error_line
    from medft_jax.fit import identify, load_dataset, run_one
    from medft_jax.locks import RunLocked
    from medft_jax.runtime import enable_compilation_cache
    from medft_jax.train import NonFiniteLossError

    if os.environ.get("MEDFT_DISTRIBUTED") == "1":  # every process of one job runs every run
        jax.distributed.initialize()
    enable_compilation_cache()
    main_process = jax.process_index() == 0

    def say(text: str) -> None:
        if main_process:
            print(text, flush=True)

    mine = grid_lib.shard(runs, index, count)
    data_dir = args.data_dir or g.data_dir
    datasets: dict[tuple, Any] = {}
    trainers: dict[tuple, Any] = {}  # compiled steps shared by runs differing in lr/seed
    unavailable: dict[str, str] = {}
    ran = skipped = diverged = 0
    busy: set[str] = set()  # runs another process was running
    errors: list[str] = []
    say(
        f"grid {g.name}: {len(mine)} runs in this process"
        + (f" (shard {index}/{count} of {len(runs)})" if count > 1 else "")
        + f", results in {args.out}"
    )
    identified: list[Any] = []  # with their data and weights fingerprints
    for k, config in enumerate(mine, 1):
        if config.dataset in unavailable:
            continue
        key = (config.dataset, config.arch, config.image_size, config.data_seed)
        try:
            if key not in datasets:
                options = dict(g.dataset_options.get(config.dataset, {}))
                datasets[key] = load_dataset(config, data_dir, **options)
            config = identify(config, datasets[key])
        except DataError as e:
            unavailable[config.dataset] = str(e)
            errors.append(f"dataset {config.dataset}: {e}")
            say(f"[{k}/{len(mine)}] dataset {config.dataset} unavailable, its runs skipped ({e})")
            continue
        identified.append(config)
        name = results.run_name(config.to_dict())
        state = status_of(config, args.out)
        if state == "done" or (state == "failed" and not args.retry_failed):
            skipped += 1
            say(f"[{k}/{len(mine)}] {name}: {state}, skipped")
            continue
        t = time.perf_counter()
        try:
            say(f"[{k}/{len(mine)}] {name}: running")
            record = run_one(
                config,
                args.out,
                dataset=datasets[key],
                progress=args.progress,
                trainers=trainers,
            )
        except NonFiniteLossError as e:
            diverged += 1
            if main_process:
                results.write_failure(
                    args.out,
                    config.to_dict(),
                    "nonfinite",
                    str(e),
                    task_options(config.dataset, datasets[key].metadata),
                )
            say(f"[{k}/{len(mine)}] {name}: diverged ({e})")
            continue
        except DataError as e:
            unavailable[config.dataset] = str(e)
            errors.append(f"dataset {config.dataset}: {e}")
            say(f"[{k}/{len(mine)}] {name}: dataset unavailable, its runs skipped ({e})")
            continue
        except RunLocked as e:  # another sweep (or experiments.run) is on it: go on
            busy.add(name)
            say(f"[{k}/{len(mine)}] {name}: {e}, skipped")
            continue
        except Exception as e:
            os_err = find_os_error(e)
            if os_err is None or os_err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # Every later run would fail the same way: stop (the run resumes when rerun).
            errors.append(os_error_line(os_err))
            say(f"[{k}/{len(mine)}] {name}: stopped, {os_error_line(os_err)}")
            break
        ran += 1
        metric = record["primary_metric"]
        value = record["test"].get(metric)
        shown = "nan" if value is None else f"{value:.4f}"
        say(
            f"[{k}/{len(mine)}] {name}: done in {time.perf_counter() - t:.0f} s, best epoch "
            f"{record['best_epoch'] + 1} of {len(record['epochs'])}, test {metric} {shown}"
        )
    left = sum(
        status_of(c, args.out) == "todo" and results.run_name(c.to_dict()) not in busy
        for c in identified
    )
    left += len(mine) - len(identified)  # runs of datasets that were unavailable, or not reached
    running = f", {len(busy)} running in another process" if busy else ""
    say(
        f"finished: {ran} run now, {skipped} already done or failed before, {diverged} diverged"
        f"{running}, {left} not run"
    )
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
