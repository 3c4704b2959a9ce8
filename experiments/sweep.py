"""Run a grid of fine-tuning runs, resumably, split across hosts: ``python -m experiments.sweep``.

    python -m experiments.sweep --config experiments/configs/paper.py --dry-run
    python -m experiments.sweep --config experiments/configs/quick.py
    python -m experiments.sweep --config experiments/configs/paper.py \\
        --only dataset=bach,arch=vgg19 --shard 0/4 --out /shared/runs

Every run writes its record to ``--out`` only when it has finished, so a
sweep started again skips what is done and resumes the run it was killed
in from that run's latest checkpoint (losing at most the training since it:
``MEDFT_JAX_CHECKPOINT_SECONDS``, 60 by default, and the epoch in flight).
``--shard i/N`` takes the i-th of N shares of the (filtered) grid, dealt
out round-robin in a canonical order of the runs (each axis sorted), not
the order the grid file lists them (which may differ between processes, as
``tuple(a_set)``'s does): N processes given the same config and filters
split the grid with nothing done twice and nothing left out, without
talking to each other (see BUILD.md for a SLURM array and a TPU pod
launch). A run whose loss diverges leaves a ``failed.json`` note and the
sweep goes on; it is not retried unless ``--retry-failed``. A run another process is running
(it holds the run folder's lock, :mod:`medft_jax.locks`) is skipped with
one line, so two unsharded sweeps of one grid share it out; if it still has
no record when the sweep ends, the exit status is 75 (as ``experiments.run``'s:
``sweep && report`` must not go on without it). A run whose
resume checkpoint is damaged is skipped with one line and the sweep goes
on (exit status 1 at the end, the error repeated): one unreadable run of a
long grid should not hold up the rest, and only the user can decide to
start it over (``experiments.run --force``, or deleting its checkpoints).
A full disk stops the sweep (exit status 1, one line naming the path):
every later run would fail too; started again once space is freed, it resumes.
The runs a sweep selected are kept in ``<out>/.plans/`` (:mod:`medft_jax.plans`), so
that a report without ``--config`` counts a lost shard's runs as missing.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.common import DEMO_OF_GRID, refuse_data_dir_for_demo
from medft_jax import grid as grid_lib
from medft_jax import locks, plans, results
from medft_jax.config import RunConfig, may_cache_features
from medft_jax.data.errors import BatchTooLarge, DataError
from medft_jax.data.locations import NOT_PREPARED, resolve_data_dir
from medft_jax.data.paths import refuse_listed_output
from medft_jax.errors import (
    EXIT_BUSY,
    ArgumentParser,
    UserError,
    check_data_dir,
    cli_main,
    exit_command,
    exit_statuses,
    json_loads,
    no_file_in_the_way,
    one_line,
    path_flag,
    stops_held,
    writable_dir,
)
from medft_jax.grid import Grid
from medft_jax.names import LOCAL_KINDS
from medft_jax.outcomes import (
    BUSY,
    DAMAGED,
    DIVERGED,
    DONE,
    FAILED_BEFORE,
    REFUSED,
    SKIPPED,
    UNAVAILABLE,
    UNRESUMABLE,
    Outcome,
)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m experiments.sweep",
        description="Run a grid of datasets x archs x strategies x learning rates x seeds.",
        epilog=exit_statuses(
            s0="every selected run finished, now or before (a diverged run is a result: its "
            "failed.json; --retry-failed runs it again)",
            s1="a run refused, unable to resume or with a damaged record, or a dataset "
            "unavailable (each named again at the end; the other runs went on), or out of "
            "memory or disk",
            s75="runs still running in another process, without a record yet",
        ),
    )
    p.add_argument(
        "--config",
        required=True,
        type=path_flag("a grid file"),
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
    p.add_argument(
        "--out",
        default="runs",
        type=path_flag("a folder", output=True),
        help="results folder (shared by every shard)",
    )
    p.add_argument(
        "--data-dir",
        type=path_flag("a folder"),
        help="where prepared datasets live (default: the grid's)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="list the runs and their estimated cost, run none"
    )
    p.add_argument(
        "--retry-failed", action="store_true", help="rerun runs that left a failed.json note"
    )
    p.add_argument("--progress", action="store_true", help="per-epoch progress bars")
    p.add_argument(
        "--no-feature-cache",
        action="store_true",
        help="under frozen_bn='freeze' (VGG-19: either mode), run frozen backbones every epoch "
        "(same results, slower)",
    )
    return p


def plan(args: argparse.Namespace) -> tuple[Any, list[Any], tuple[int, int]]:
    """The grid, this process's runs and its shard; a bad flag raises GridError naming it."""

    g = grid_lib.load_grid(args.config)
    runs = grid_lib.select(g, grid_lib.parse_only(args.only))
    index, count = grid_lib.parse_shard(args.shard) if args.shard is not None else (0, 1)
    return g, runs, (index, count)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0, 1 when a dataset was unavailable or the disk full, 2 for bad input."""

    return cli_main(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    g, runs, (index, count) = plan(args)
    if args.no_feature_cache and not any(may_cache_features(c) for c in runs):
        raise grid_lib.GridError(
            f"--no-feature-cache applies under frozen_bn 'freeze' (or with VGG-19, which has no "
            f"BatchNorm), with a strategy that freezes blocks, only; no run of grid {g.name!r} "
            "here has both, so nothing is cached"
        )
    g.check_manual_dirs((c.dataset for c in runs), args.config)
    refuse_data_dir_for_demo(args.data_dir, {c.dataset for c in runs}, DEMO_OF_GRID)
    folder = g.dataset_options.get("folder", {}).get("manual_dir")
    if folder is not None and any(c.dataset == "folder" for c in runs):
        refuse_listed_output(Path(folder), Path(args.out), "--out", "the runs")
    if args.data_dir is None and g.data_dir is not None:  # as --data-dir is, named so
        no_file_in_the_way(g.data_dir, f"--config {args.config}: grid {g.name!r} data_dir")
    if args.dry_run:  # reads --out only, but a file there is the sweep's error too
        no_file_in_the_way(args.out, "--out")
        dry_run(g, runs, index, count, args.out, args.retry_failed, args.data_dir or g.data_dir)
        return 0
    writable_dir(args.out, "--out")
    if args.data_dir is not None:
        check_data_dir(args.data_dir)
    elif g.data_dir is not None:
        check_data_dir(g.data_dir, f"--config {args.config}: grid {g.name!r} data_dir")
    return sweep(g, runs, index, count, args)


# --- dry run -------------------------------------------------------------------------------------


DataStates = dict[tuple[Any, ...], Any]
"""(dataset, resize, crop, data seed) -> ``fit.data_state``'s answer for the user's data."""


def _state_key(c: RunConfig) -> tuple[Any, ...]:
    from medft_jax import fit  # JAX: only for a grid of the user's own data

    return (c.dataset, fit.resize_for(c.arch, c.image_size), c.image_size, c.data_seed)


def _check_medmnist_batches(runs: list[RunConfig]) -> None:
    """A grid's batch_size above a MedMNIST dataset's published training count: every run
    of it would be refused alone by the sweep (exit 1) where its dry run said "to run"."""
    from medft_jax.data.registry import refuse_batch_over_medmnist

    for c in runs:
        if c.dataset.startswith("medmnist/"):
            try:
                refuse_batch_over_medmnist(c.dataset, c.batch_size)
            except BatchTooLarge as e:
                raise _batch_over(c, e.examples) from None


def _note_medmnist_absent(runs: list[RunConfig], data_dir: str | None) -> None:
    """A note per MedMNIST dataset whose file the data dir lacks: the sweep downloads it
    then (or, offline, skips the dataset's runs and exits 1), where its dry run said
    nothing."""
    from medft_jax.data import medmnist

    for name in sorted({c.dataset for c in runs if c.dataset.startswith("medmnist/")}):
        try:
            flag, size = medmnist.parse_name(name)
            root = resolve_data_dir(data_dir)
        except (DataError, OSError):
            continue  # named when the sweep loads it
        if medmnist.find_local(flag, size, root) is None:
            stem = medmnist.file_stem(flag, size)
            print(
                f"note: {name}: {stem}.npz is in neither {root} nor {root / 'medmnist'}: the "
                "sweep downloads it unless a resized cache of it is there (offline, its runs "
                "are not run: place the file there)",
                file=sys.stderr,
            )


def _batch_over(c: RunConfig, examples: int) -> UserError:
    """The dry run's refusal of a grid's batch_size above a dataset's training examples."""
    return UserError(
        f"dataset {c.dataset}: batch_size {c.batch_size} is larger than its {examples} "
        "training examples; every run of it at that batch size would be refused: give the "
        "grid a smaller batch_size"
    )


def _check_listings(
    runs: list[RunConfig],
    data_dir: str | None,
    dataset_options: Any,
    read: DataStates | None = None,
    *,
    strict: bool = True,
) -> DataStates:
    """Reads the listing (folder tree or labels CSV, nothing decoded) of each of the user's
    datasets the runs use, so that a mistake there (a misspelt label column) is the dry
    run's one line, not the sweep's after it started: the dry run passed it, and the sweep
    then left out every run of the dataset. Returns what it read, which
    :func:`_data_changed` uses rather than list a 20,000-file folder again. ``read``: the
    states already read (not read again); not ``strict``: a dataset that cannot be read is
    None (another shard's, whose own dry run names it), not a refusal."""
    states: DataStates = {}
    local = [c for c in runs if c.dataset in LOCAL_KINDS]
    if not local:
        return states
    from medft_jax import fit

    for c in local:
        done = (*states, *(read or {}))
        if any(at[0] == c.dataset for at in done):  # one listing a dataset: its errors
            continue
        at = _state_key(c)
        try:
            states[at] = fit.data_state(c, data_dir, **dict(dataset_options.get(c.dataset, {})))
        except DataError as e:
            if strict:
                raise UserError(f"dataset {c.dataset}: {e}") from None
            states[at] = None  # not this shard's: its cost unknown here
    if strict:  # each run refused alone by the sweep (exit 1), its dry run "to run"
        listed = {**(read or {}), **states}
        for c in local:
            # One listing per dataset and data seed (the sizes change no example's split)
            state = next(
                (v for at, v in listed.items() if (at[0], at[3]) == (c.dataset, c.data_seed)),
                None,
            )
            if state is not None and c.batch_size > state.train_images:
                raise _batch_over(c, state.train_images)
    return states


_SHOWN_SETTINGS = (
    ("epochs", "at most {} epochs"),
    ("patience", "patience {}"),
    ("batch_size", "batch {}"),
    ("image_size", "{} px"),
    ("precision", "{}"),
    ("frozen_bn", "frozen_bn {}"),
    ("weights", "weights {}"),
    ("data_seed", "data seed {}"),
)
"""The protocol settings a dry run shows: run names hold none of them."""


def _settings_lines(runs: Sequence[RunConfig], dataset_options: Any) -> list[str]:
    """What the selected runs train under, which their names do not say: the protocol
    settings (each value the runs take), each strategy's options other than its
    defaults, and each dataset's split or label options (which its prepare must match).
    Why: a dry run is where a grid file is checked before days of device time."""
    if not runs:
        return []
    shown = []
    for field, text in _SHOWN_SETTINGS:
        values = sorted({str(getattr(c, field)) for c in runs}, key=lambda v: (len(v), v))
        shown.append(text.format("/".join(values)))
    lines = ["settings: " + ", ".join(shown)]
    options: dict[str, set[str]] = {}
    for c in runs:
        said = ", ".join(f"{k}={v}" for k, v in c.strategy_options) or "defaults"
        options.setdefault(c.strategy, set()).add(said)
    changed = [f"{s} {' | '.join(sorted(v))}" for s, v in options.items() if v != {"defaults"}]
    if changed:
        lines.append("strategy options: " + "; ".join(changed))
    from medft_jax.data.options import TASK_VAL_FRACTION, task_options  # names only

    def own(d: str) -> dict[str, Any]:  # the protocol's val fraction goes without saying
        if d in LOCAL_KINDS:  # the grid's as given: patient grouping, window, columns
            return dict((dataset_options or {}).get(d) or {})
        opts = task_options(d, (dataset_options or {}).get(d)) or {}
        return {k: v for k, v in opts.items() if (k, v) != ("val_fraction", TASK_VAL_FRACTION)}

    given = [
        f"{d} {', '.join(f'{k}={v}' for k, v in opts.items())}"
        for d in dict.fromkeys(c.dataset for c in runs)
        if (opts := own(d))
    ]
    if given:
        lines.append("dataset options: " + "; ".join(given) + " (prepare each with the same flags)")
    return lines


def dry_run(
    g: Grid,
    runs: list[RunConfig],
    index: int,
    count: int,
    out: str,
    retry_failed: bool = False,
    data_dir: str | None = None,
) -> None:
    """Lists this shard's runs with status and estimated cost, and every shard's total.

    With ``retry_failed`` a run with a failure note counts as to run, as the
    sweep itself would run it. A run recorded on the user's folder or CSV data
    that changed since (its cache stale, or of other content) is ``changed``:
    to run, as the sweep would run it again.
    """
    damaged: list[results.RecordError] = []  # the sweep skips them, naming each, and goes on
    records = results.load_records(out, damaged=damaged) if Path(out).is_dir() else []
    failures = results.load_failures(out) if Path(out).is_dir() else []
    # Without loading the data, a run is matched by its settings (any data version), and
    # only where the sweep looks for it: <out>/<run>/, not a copy or a selection's run
    # in a folder below (those the sweep would run again).
    finished = {
        results.settings_hash(r["config"])
        for r in records
        if results.record_path(out, r["config"]).is_file()
    }
    noted = {
        results.settings_hash(f["config"])
        for f in failures
        if results.failure_path(out, f["config"]).is_file()
    }

    # Every shard's runs, not this shard's alone: the closing "shards:" line gives each
    # shard's count and cost, which other shards' folder runs left "?" and their changed
    # runs "done" (each shard's dry run told other totals). Only this shard's datasets stop
    # it: another shard's unreadable one is its own dry run's to name.
    own = [runs[k] for k in grid_lib.shard_positions(runs, index, count)]
    listings = _check_listings(own, data_dir, g.dataset_options)
    _check_medmnist_batches(own)
    _note_medmnist_absent(own, data_dir)
    listings.update(_check_listings(runs, data_dir, g.dataset_options, listings, strict=False))
    unbuilt: dict[str, str] = {}
    changed = _data_changed(
        runs,
        [r for r in records if results.record_path(out, r["config"]).is_file()],
        data_dir,
        g.dataset_options,
        unbuilt,
        listings,
    )
    # A paper task's record of other split or label options (a val fraction the grid now
    # sets otherwise) is of other data: the sweep's fingerprint finds it and runs it again.
    from medft_jax.data.options import task_options
    from medft_jax.report.cells import run_options  # names only: no JAX

    # Changed only where no record of the settings is of the present data: a run already
    # rerun on an edited file beside its older record is done, as the sweep finds it.
    stale: dict[str, str] = {}
    current: set[str] = set()
    for r in records:
        d = r["config"]["dataset"]
        if d in LOCAL_KINDS or not results.record_path(out, r["config"]).is_file():
            continue
        key = results.settings_hash(r["config"])
        why = (
            "other split or label options"
            if run_options(r) != task_options(d, g.dataset_options.get(d))
            else _medmnist_file_changed(r, data_dir)
        )
        if why is None:
            current.add(key)
        else:
            stale.setdefault(key, why)
    for key, why in stale.items():
        if key not in current:
            changed.setdefault(key, why)

    broken_keys, broken_names = _damaged_runs(damaged, out)
    # Folders a live process holds (another shard training them now): the sweep skips them.
    # A lock naming another host cannot be checked from here: that node may be training it,
    # or may have died holding it (the sweep then runs it): "held?", not "running".
    holders = (
        {p.name: locks.holder_of(p) for p in Path(out).iterdir() if (p / locks.LOCK_NAME).is_file()}
        if Path(out).is_dir()
        else {}
    )
    # "?": a lock file being written, or unreadable: a live process's, as before.
    held = [name for name, who in holders.items() if who in (locks.RUNNING_HERE, "?")]
    elsewhere = [
        name for name, who in holders.items() if who not in (None, locks.RUNNING_HERE, "?")
    ]
    # The settings a holder wrote in its lock: a folder of this cell's name run under other
    # settings (an edited grid's) is not this cell's run. Older locks lack them: by name.
    held_as = {name: locks.held_settings(Path(out) / name) for name in held + elsewhere}

    def holds(names: list[str], config: RunConfig, key: str) -> bool:
        pattern = _unhashed(config)
        return any(
            held_as[name] in (None, key) and fnmatch.fnmatchcase(name, pattern) for name in names
        )

    def status(config: RunConfig) -> str:
        key = results.settings_hash(config.to_dict())
        if key in broken_keys or any(
            fnmatch.fnmatchcase(name, _unhashed(config)) for name in broken_names
        ):
            return "damaged"  # the sweep skips it, naming the file: not run, not done
        if key in finished:
            return "changed" if key in changed else "done"
        if holds(held, config, key):
            return "running"  # by another process now: the sweep skips it (exit 75)
        if holds(elsewhere, config, key):
            return "held?"  # another host's lock: live or a dead node's, not known here
        if key in noted:
            return "retry" if retry_failed else "failed"
        return "todo"

    measured = grid_lib.measured_throughput(records)
    states = [status(c) for c in runs]
    # A user's folder or CSV has no published size: its listing, read above, counts it
    # (the estimate bounds a run's time; the data seed moves a few images between splits).
    listed = {at[0]: st.train_images for at, st in listings.items() if st is not None}
    seconds = [grid_lib.estimate_seconds(c, measured, listed.get(c.dataset)) for c in runs]
    # Dealt once (not sorted again per shard: --shard 0/20000 took 14 s); shards past the
    # number of runs hold none and are said in one span.
    order = grid_lib.canonical_order(runs)
    positions = [sorted(order[i::count]) for i in range(min(count, len(runs)))]
    mine = sorted(order[index::count])
    axes = " x ".join(
        f"{len(g.axis(a))} {grid_lib.plural(a) if len(g.axis(a)) != 1 else a}"
        for a in grid_lib.AXES
    )
    print(
        f"grid {g.name}: {g.size} run{'s' if g.size != 1 else ''} ({axes}); selected {len(runs)}",
        end="",
    )
    print(f"; shard {index}/{count}: {len(mine)}" if count > 1 else "")
    for line in _settings_lines(runs, g.dataset_options):
        print(line)
    # '#': the position shards are dealt by (shard i of N holds those of i mod N), the same
    # in every process; the listed order is a grid file's, which a set-built axis changes.
    dealt = {k: rank for rank, k in enumerate(grid_lib.canonical_order(runs))}
    print(f"{'#':>5}  {'status':<7}  {'est.':>8}  run")
    for k in mine:
        print(f"{dealt[k]:>5}  {states[k]:<7}  {_duration(seconds[k]):>8}  {_unhashed(runs[k])}")
    shard_states = [states[k] for k in mine]
    done, failed = shard_states.count("done"), shard_states.count("failed")
    broken, running = shard_states.count("damaged"), shard_states.count("running")
    maybe = shard_states.count("held?")
    todo = len(shard_states) - done - failed - broken - running - maybe
    cost = _to_run_cost(shard_states, [seconds[k] for k in mine])
    damaged_text = f"damaged {broken}, " if broken else ""
    damaged_text += f"running in another process {running}, " if running else ""
    damaged_text += (
        f"held by another host's lock {maybe} (running there, or a dead node's lock: the "
        "sweep runs it where no process holds it), "
        if maybe
        else ""
    )
    print(f"done {done}, failed {failed}, {damaged_text}to run {todo}: {cost}")
    _say_plan_replaced(out, g)
    kept, peak = grid_lib.disk_bytes(runs)
    if kept:
        print(
            f"disk: the {len(runs)} selected runs keep about {kept / 1e9:.1f} GB of best/ "
            f"checkpoints in --out once finished (float32; ResNet-50 87 MB, DenseNet-121 27 MB, "
            f"VGG-19 516 MB a run), and a running one needs up to {peak / 1e9:.1f} GB more "
            "(its resume checkpoint, Adam's moments, written beside the last); reports and "
            "reruns read records only: deleting a run's best/ frees it, predict and export "
            "need it"
        )
    stale = shard_states.count("changed")
    if stale:
        why = "; ".join(sorted(set(changed.values())))
        print(
            f"{stale} of them have records on data that changed since ({why}): the sweep "
            "runs them again, unless the rebuilt cache holds the same images"
        )
    unknown = [
        unbuilt[key]
        for k in mine
        if states[k] == "done" and (key := results.settings_hash(runs[k].to_dict())) in unbuilt
    ]
    if unknown:
        print(
            f"{len(unknown)} 'done' of them are on user data whose cache is not built here "
            f"(deleted, or another --data-dir): checked from the listing only "
            f"({'; '.join(sorted(set(unknown)))}); a file replaced under its name is found "
            "when the sweep builds the cache, and its runs then run again"
        )
    print(
        "a run's folder is its name with a hash in place of '*': the hash covers the data's "
        "and the weights' contents too, so it is decided at run time; 'done' means a record "
        "of these settings exists, and a run whose data or weights changed since runs again"
    )
    if count > 1:
        per = []
        for i, held in enumerate(positions):
            states_i = [states[k] for k in held]
            todo_i = sum(s in _TO_RUN for s in states_i)
            short = _to_run_cost(states_i, [seconds[k] for k in held], short=True)
            per.append(f"{i}: {todo_i} of {len(held)} runs to run, {short}")
        if count > len(runs):
            empty = str(len(runs)) if count - len(runs) == 1 else f"{len(runs)}-{count - 1}"
            per.append(f"{empty}: no runs (more shards than runs)")
        print("shards: " + "; ".join(per))
    sizes = {k[:2] for k in measured}  # (arch, image size) measured
    used = sum(grid_lib.throughput_key(runs[k].to_dict()) in measured for k in mine)
    source = (
        f"for the {used} run{'s' * (used != 1)} whose arch, image size and strategy have "
        f"records in {out}, their measured throughput (unknown where only other strategies "
        "of the arch and size were measured), else "
        if any((runs[k].arch, runs[k].image_size) in sizes for k in mine)
        else ""
    )
    if any(seconds[k] is not None for k in mine):  # what the estimates rest on, if any
        print(
            "estimates are of train steps, every epoch run (no early stopping); validation, "
            "test, setup and compilation come on top (a record's seconds say how much), from "
            "the tasks' "
            "nominal training images (a user's folder or CSV: those its listing counts) and "
            f"{source}assumed H100 throughput "
            f"({', '.join(f'{a} {r:g} img/s' for a, r in grid_lib.REFERENCE_IMAGES_PER_S.items())} "
            f"at 224 px){_slower_here()}"
        )
    if damaged:
        print(
            f"{len(damaged)} damaged record(s) not counted (the sweep skips such a run, naming "
            f"it): {damaged[0]}"
        )


_TO_RUN = ("todo", "retry", "changed")


def _damaged_runs(damaged: list[results.RecordError], out: str) -> tuple[set[str], list[str]]:
    """The runs whose record, where the sweep looks (``<out>/<run>/record.json``), is
    damaged: the settings hashes of those whose config still reads, and the folder
    names of the others (matched against a run's name with ``*`` for its hash)."""
    keys: set[str] = set()
    names: list[str] = []
    for e in damaged:
        path = getattr(e, "path", None)
        if path is None or Path(path).parent.parent.resolve() != Path(out).resolve():
            continue
        try:
            keys.add(results.settings_hash(json_loads(Path(path).read_text())["config"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            names.append(Path(path).parent.name)
    return keys, names


def _data_changed(
    runs: list[RunConfig],
    records: list[dict[str, Any]],
    data_dir: str | None,
    dataset_options: Any,
    unbuilt: dict[str, str] | None = None,
    states: DataStates | None = None,
) -> dict[str, str]:
    """Settings hash -> why, for the recorded runs of the user's ``folder``/``csv`` data
    whose data changed since: the cache is stale (files added, removed or touched), or
    holds other content than every record of the run was trained on. The listing is read,
    nothing decoded. A cache not built yet (deleted, another ``--data-dir``) is judged by
    the listing's split fingerprint (ids, splits, labels) against the records'; the runs
    it cannot judge further (same listing: a file replaced under its name is found when
    the sweep builds the cache; records without one) go into ``unbuilt``, key -> why."""
    recorded: dict[str, set[str]] = {}
    recorded_splits: dict[str, set[str | None]] = {}
    recorded_orders: dict[str, set[str | None]] = {}
    for r in records:
        if r["config"].get("dataset") in LOCAL_KINDS:
            key = results.settings_hash(r["config"])
            recorded.setdefault(key, set()).add(str(r["config"].get("data_fingerprint")))
            recorded_splits.setdefault(key, set()).add(r.get("split_fingerprint"))
            recorded_orders.setdefault(key, set()).add(r.get("order_fingerprint"))
    todo = [c for c in runs if results.settings_hash(c.to_dict()) in recorded]
    if not todo:
        return {}
    from medft_jax import fit  # JAX: only when there is such a run to check

    states = dict(states or {})  # what the listings' check read: not read again
    out: dict[str, str] = {}
    for c in todo:
        at = _state_key(c)
        if at not in states:
            options = dict(dataset_options.get(c.dataset, {}))
            try:
                states[at] = fit.data_state(c, data_dir, **options)
            except DataError as e:
                print(f"note: {c.dataset}: not checked for changes ({e})", file=sys.stderr)
                states[at] = None
        state = states[at]
        if state is None:
            continue
        fingerprint, reason, listing = state.fingerprint, state.reason, state.listing
        key = results.settings_hash(c.to_dict())
        if fingerprint is None and reason == NOT_PREPARED:
            split, order = listing if listing is not None else (None, None)
            splits, orders = recorded_splits[key], recorded_orders[key]
            if split is not None and None not in splits and split not in splits:
                out[key] = (
                    f"{c.dataset}: other examples, splits or labels than recorded (its cache "
                    "is not built here; the listing says so)"
                )
            elif (
                split is not None
                and None not in splits
                and None not in orders
                and (order not in orders)
            ):  # the batches follow the listing: its data fingerprint will differ
                out[key] = (
                    f"{c.dataset}: the recorded examples, splits and labels listed in another "
                    "order (a labels CSV's rows reordered, say), which the training batches "
                    "follow (its cache is not built here; the listing says so)"
                )
            elif unbuilt is not None:
                unbuilt[key] = (
                    "same examples, splits and labels as recorded"
                    + ("" if None not in orders else " (their order not compared: older records)")
                    if split is not None and None not in splits
                    else "not compared (a record without split_fingerprint, or "
                    "--skip-bad-images, whose skips only decoding finds)"
                )
        elif fingerprint is None:
            out[key] = f"{c.dataset}: {reason}"
        elif fingerprint is not None and fingerprint not in recorded[key]:
            out[key] = f"{c.dataset}: other images than recorded"
    return out


def _say_plan_replaced(out: str, g: Grid) -> None:
    """What the sweep will say of the grid's plan in ``out``, said by the dry run, where a
    grid file is checked before a long sweep: that it replaces one of another definition
    (the grid edited since), or one it cannot read."""
    path = plans.plan_path(out, g.name)
    if not path.is_file():
        return
    old = plans.read_plan(path)
    if old is None:
        print(f"{plans.DAMAGED_NOTE.format(path=path)}; the sweep replaces it", file=sys.stderr)
        return
    every = [c.to_dict() for c in g.configs()]
    new, same = _plan_hashes(g, every)
    if old.get("grid_hash") not in (new, *same):
        said = _plan_replaced(out, g, old, every)
        print(said.replace("; replaced by this one.", "; the sweep replaces it."), file=sys.stderr)


def _plan_hashes(g: Grid, every: list[dict[str, Any]]) -> tuple[str, tuple[str, ...]]:
    """The grid's plan hash, and the other hashes plans of its definition were written
    under: before the hash held dataset_options (and before it was of the runs as a set:
    their listed order), the same grid, taken over with the new hash."""
    listed = results.config_hash({"runs": every})
    return plans.grid_hash_of(every, g.dataset_options), (listed, plans.grid_hash_of(every))


def _plan_replaced(out: str, g: Grid, old: dict[str, Any], every: list[dict[str, Any]]) -> str:
    """The note a sweep says replacing ``old``, the plan of another definition of grid
    ``g`` in ``out`` (the dry run says it will)."""

    def hashes(runs: list[dict], drop: str = "") -> set[str]:
        return {results.config_hash({k: v for k, v in r.items() if k != drop}) for r in runs}

    # The old plan's runs (a --only slice of it, too) are this grid's but for their
    # numerics: an upgrade that computes otherwise (bf16 numerics 6 -> 7), not an edit of
    # the grid file, as the line said. Its runs as they are: the edit was elsewhere (the
    # dataset_options the plan's hash holds).
    upgrade = hashes(old["runs"], "numerics") <= hashes(every, "numerics") and not (
        hashes(old["runs"]) <= hashes(every)
    )
    why = (
        "the same runs computed by an older medft-jax's numerics version: they are run again"
        if upgrade
        else "the grid file was edited since, or another grid file has its name"
    )
    n = len(old["runs"])
    return (
        f"note: {plans.plan_path(out, g.name)} held the plan of another definition of grid "
        f"{g.name!r} ({n} run{'s' if n != 1 else ''}: {why}); replaced by this one. Records of "
        "runs this grid lacks still count in a report without --config (a dropped LR in its LR "
        "choice): move their folders out, or report with --config (and give each grid file "
        "its own name)"
    )


def _medmnist_file_changed(record: dict[str, Any], data_dir: str | None) -> str | None:
    """Why a MedMNIST run's record is of another ``.npz`` than the one in ``data_dir`` now
    (its MD5 differs: a label flipped, another copy), or None (the same file, none there
    yet, or not MedMNIST): the dry run called such runs done, and the sweep, whose data
    fingerprint finds them, trained them all again without a word. The MD5 a resized cache
    recorded at the file's present stat is taken; otherwise the file is hashed (seconds
    for a large one)."""
    kept = record.get("medmnist_file")
    name = record["config"]["dataset"]
    if not isinstance(kept, dict) or not str(name).startswith("medmnist/"):
        return None
    from medft_jax.data import medmnist

    try:
        flag, size = medmnist.parse_name(name)
        root = resolve_data_dir(data_dir)
        found = medmnist.find_local(flag, size, root)
        md5 = None if found is None else medmnist.file_md5(found, flag, size, root)
    except (DataError, OSError):
        return None  # named when the sweep loads it
    if md5 is None or md5 == kept.get("md5"):
        return None
    return f"{name}: {found} is another file (MD5 {md5}) than recorded ({kept.get('md5')})"


_PLUGINS = ("jax_cuda", "jax_rocm", "libtpu")
"""Names an installed GPU/TPU plugin for JAX starts with (``jax_cuda12_plugin``,
``libtpu``); every module of the ``jax_plugins`` namespace (``xla_cuda12``, Metal's) is
one too."""


def accelerator_installed() -> bool:
    """Whether JAX here may run on a GPU or TPU, judged without starting a backend (a dry
    run beside a running sweep must not open a CUDA client, nor take a TPU another process
    holds): ``JAX_PLATFORMS`` if set, else an installed CUDA, ROCm or TPU plugin."""
    return _on_cpu_because() is None


def _on_cpu_because() -> str | None:
    """Why JAX here runs on the CPU only, or None when it may run on a GPU or TPU."""
    import importlib.util
    import pkgutil

    setting = os.environ.get("JAX_PLATFORMS", "")
    platforms = [p.strip().lower() for p in setting.split(",") if p.strip()]
    if platforms:
        on_cpu = all(p == "cpu" for p in platforms)
        return f"JAX_PLATFORMS={setting} runs JAX on this host's CPU" if on_cpu else None
    if any(m.name.lower().startswith(_PLUGINS) for m in pkgutil.iter_modules()):
        return None
    with contextlib.suppress(ImportError, ValueError):  # a namespace package: nothing run
        spec = importlib.util.find_spec("jax_plugins")
        where = list(spec.submodule_search_locations or []) if spec is not None else []
        if where and any(pkgutil.iter_modules(where)):
            return None
    return "this host has no GPU or TPU plugin for JAX and runs on its CPU"


def _slower_here() -> str:
    """Said where the assumed throughput is an accelerator's and this host has none: the
    quick grid's "<1 s" took 26 minutes on two CPU cores."""
    why = _on_cpu_because()
    if why is None:
        return ""
    return (
        f"; {why}, often a hundred times slower or more: the records of runs finished here "
        "replace the assumption"
    )


def _to_run_cost(states: list[str], seconds: list[float | None], short: bool = False) -> str:
    """The device time of the runs still to run, with the count whose cost is unknown."""
    pending = [t for s, t in zip(states, seconds, strict=True) if s in _TO_RUN]
    known = [t for t in pending if t is not None]
    unknown = len(pending) - len(known)
    if not pending:
        return "nothing" if short else "nothing to run"
    if not known and unknown:  # "<1 s" would read as a promise
        if short:
            return f"? ({unknown} of unknown cost)"
        return (
            f"device time unknown for all {unknown} (no training-set size or throughput to "
            "estimate from: a dataset without a published size or listing, or an arch "
            "without a reference speed (the tests' stand-ins) and no finished run of its "
            "settings at this size; a record's seconds say what a run took)"
        )
    extra = f" (+{unknown} of unknown cost)" if unknown else ""
    if short:
        return f"{_duration(sum(known))}{extra}"
    return f"{_duration(sum(known))} of device time in train steps{extra}"


def _unhashed(config: RunConfig) -> str:
    """``run_name`` with ``*`` for its hash: ``demo-resnet50-ft-lr0.001-s0-*``.

    The hash in a run folder's name includes the data and weights fingerprints,
    which only loading the data and locating the weights find out; a hash
    computed without them would name a folder no run ever writes.
    """
    return results.run_name(config.to_dict()).rsplit("-", 1)[0] + "-*"


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


def sweep(g: Grid, runs: list[RunConfig], index: int, count: int, args: argparse.Namespace) -> int:
    """Runs this shard's unfinished runs in grid order; returns the exit status."""
    # The one import of JAX, here and not at the top: --dry-run and a bad flag stay fast.
    with stops_held():  # a Ctrl-C raised inside JAX's C++ start-up aborted the process
        from medft_jax.session import Session

    session = Session(
        args.out,
        data_dir=args.data_dir or g.data_dir,
        dataset_options=g.dataset_options,
        retry_failed=args.retry_failed,
        progress=args.progress,
        feature_cache=not args.no_feature_cache,
    )

    def say(text: str) -> None:
        if session.main_process:
            print(text, flush=True)

    planned = not session.main_process  # process 0 writes the plan for all

    def write_plan() -> None:
        """The plan, once this process reaches a run of a dataset it can read (a sweep of
        unavailable datasets only, a mistaken --data-dir, leaves none): every shard writes
        the same one, so that a lost shard's runs stay expected."""
        nonlocal planned
        if planned:
            return
        planned = True
        every = [c.to_dict() for c in g.configs()]
        grid_hash, same = _plan_hashes(g, every)

        def replaced(old: dict) -> None:
            print(_plan_replaced(args.out, g, old, every), file=sys.stderr)

        try:
            plans.write_plan(
                args.out,
                g.name,
                args.only or [],
                [c.to_dict() for c in runs],
                grid_hash,
                same=same,
                on_replace=replaced,
            )
        except (OSError, UserError) as e:  # the plan is an aid: the runs go on
            why = e.strerror if isinstance(e, OSError) and e.strerror else one_line(e)
            print(
                f"note: {plans.plan_path(args.out, g.name)} not written ({why}): a "
                "report without --config will not count this sweep's runs that never start",
                file=sys.stderr,
            )

    mine = grid_lib.shard(runs, index, count)
    session.check_same_runs(mine)
    import jax  # started by the Session: every device of the job

    devices = jax.device_count()
    odd = [c for c in mine if c.batch_size % devices]
    if odd and Path(args.out).is_dir():  # runs recorded before (on other devices) stay done
        done = {
            results.settings_hash(r["config"])
            for r in results.load_records(args.out, damaged=[])
            if results.record_path(args.out, r["config"]).is_file()
        }
        odd = [c for c in odd if results.settings_hash(c.to_dict()) not in done]
    odd = sorted({c.batch_size for c in odd})
    if odd:  # each run was refused on its own, one line each, after its data loaded
        raise UserError(
            f"--config {args.config}: settings['batch_size'] {odd[0]} must be a multiple of "
            f"the {devices} devices this job trains on"
        )
    say(
        f"grid {g.name}: {len(mine)} run{'s' if len(mine) != 1 else ''} in this process"
        + (f" (shard {index}/{count} of {len(runs)})" if count > 1 else "")
        + f", results in {args.out}"
    )
    tally = {kind: 0 for kind in (DONE, SKIPPED, FAILED_BEFORE, DIVERGED, UNRESUMABLE, DAMAGED)}
    unavailable: set[str] = set()
    busy: set[str] = set()  # runs another process was running
    errors: list[str] = []
    identified: list[RunConfig] = []  # with their data and weights fingerprints
    for k, config in enumerate(mine, 1):
        if config.dataset in unavailable:
            continue
        at = f"[{k}/{len(mine)}]"
        started: list[RunConfig] = []

        def on_start(c: RunConfig, at: str = at, started: list = started) -> None:
            write_plan()  # before it trains: a shard killed in its first run leaves one
            started.append(c)
            say(f"{at} {results.run_name(c.to_dict())}: running")

        o = session.run(config, on_start=on_start)
        if o.kind == UNAVAILABLE:
            unavailable.add(config.dataset)
            errors.append(f"dataset {config.dataset}: {o.error}")
            where = f"{o.name}: dataset" if started else f"dataset {config.dataset}"
            say(f"{at} {where} unavailable, its runs skipped ({o.error})")
            continue
        write_plan()
        if o.kind == REFUSED:  # this run's settings only: the dataset's other runs go on
            why = o.error
            if isinstance(o.exception, BatchTooLarge):  # a sweep has no --batch-size
                why = o.exception.said(f"--config {args.config}: settings['batch_size']")
            errors.append(f"{o.name}: {why}")
            say(f"{at} {o.name}: refused ({why})")
            continue
        identified.append(o.config)
        if o.kind in tally:
            tally[o.kind] += 1
        if o.kind == BUSY:
            busy.add(o.name)
        say(f"{at} {o.name}: {_outcome_text(o)}")
        if o.kind in (UNRESUMABLE, DAMAGED):  # this run's files: the others go on, exit 1
            errors.append(o.error)
        if o.fatal:  # every later run would fail the same way: stop (rerun resumes)
            errors.append(o.error)
            break
    left = sum(
        session.status(c) == "todo" and results.run_name(c.to_dict()) not in busy
        for c in identified
    )
    left += len(mine) - len(identified)  # runs of datasets that were unavailable, or not reached
    # Runs another process held when reached and has not ended since: no record, no note.
    still_running = sum(
        results.run_name(c.to_dict()) in busy and session.status(c) == "todo" for c in identified
    )
    # Said as they stand at the end: one another process finished meanwhile is not running.
    running = f", {still_running} running in another process" if still_running else ""
    if len(busy) > still_running:
        running += f", {len(busy) - still_running} run by another process meanwhile"
    damaged = f", {tally[UNRESUMABLE]} cannot resume" if tally[UNRESUMABLE] else ""
    damaged += f", {tally[DAMAGED]} damaged records" if tally[DAMAGED] else ""
    say(
        f"finished: {tally[DONE]} run now, {tally[SKIPPED] + tally[FAILED_BEFORE]} already done "
        f"or failed before, {tally[DIVERGED]} diverged{running}{damaged}, {left} not run"
    )
    if tally[DONE] or tally[SKIPPED]:  # what to run next, as the user would type it
        only = "".join(f" --only {shlex.quote(o)}" for o in args.only or [])
        say(
            f"tables: python -m experiments.report --runs {shlex.quote(str(args.out))} "
            f"--config {shlex.quote(str(args.config))}{only}"
        )
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    if errors:
        return 1
    if still_running:  # as experiments.run: `sweep && report` must not go on without them
        say(f"{still_running} run(s) still running in another process: no record yet")
        return EXIT_BUSY
    return 0


def _outcome_text(o: Outcome) -> str:
    """How the sweep's log line tells how a run ended."""
    if o.kind in (SKIPPED, FAILED_BEFORE):
        return f"{'done' if o.kind == SKIPPED else 'failed'}, skipped"
    if o.kind == DIVERGED:
        return f"diverged ({o.error})"
    if o.kind == BUSY:
        return f"{o.error}, skipped"
    if o.kind == UNRESUMABLE:
        return "cannot resume (damaged checkpoint), skipped"
    if o.kind == DAMAGED:
        return "damaged record, skipped"
    if o.fatal:
        return f"stopped, {o.error}"
    from medft_jax.metrics import metric_name, task_metrics  # sklearn: not for a dry run

    r = o.record
    # The report's headline (top-1 for a multiclass task), named as run names it: the
    # primary metric of a 5-class task is eq. 6, 0.68 where top-1 is 0.20.
    multilabel, num_classes = bool(r.get("multilabel")), r.get("num_classes")
    key = task_metrics(r["config"]["dataset"], multilabel, num_classes)[0]
    value = r["test"].get(key)
    shown = "nan" if value is None else f"{value:.4f}"
    wall = float((r.get("seconds") or {}).get("wall") or 0.0)
    # A resumed run: its overhead (below) is of every call, as the record's wall time is.
    earlier = f" ({wall:.0f} s with its earlier calls)" if wall > o.seconds + 1 else ""
    return (
        f"done in {o.seconds:.0f} s{earlier}, {results.best_epoch_text(r)}, "
        f"test {metric_name(key, multilabel, num_classes)} {shown}{_overhead_text(r)}"
    )


def _overhead_text(record: dict) -> str:
    """``; overhead 4.2 s = 7% (compile 3.1, checkpoints 0.6, setup 0.4)``, or nothing."""
    found = results.run_overhead(record)
    if found is None or not record["seconds"]["wall"]:
        return ""
    total, parts = found
    top = sorted(parts.items(), key=lambda kv: -kv[1])[:3]
    share = 100 * total / record["seconds"]["wall"]
    return (
        f"; overhead {total:.1f} s = {share:.0f}% ("
        + ", ".join(f"{k} {v:.1f}" for k, v in top)
        + ")"
    )


if __name__ == "__main__":
    exit_command(main())
