"""Run records gathered into report cells, and the numbers every table is built from.

A *cell* is one (dataset, arch, strategy): the runs of that configuration
at every learning rate and seed. Its value is :func:`medft_jax.report.aggregate.summarise`
(LR chosen by the mean validation primary metric over seeds, test metrics
mean ± SE over the seeds at that LR), so a report shows exactly what the
run command prints. What this module adds is what a report of a whole,
possibly unfinished, sweep needs:

- which runs a cell *should* have (the grid of ``--config``, or inferred
  from what exists), hence its status: complete, partial, missing, failed,
  or unvalidated (every LR has a run without a validation value, or failed);
- failure notes (``failed.json``): done, but without a value, and the
  learning rate of a failed run is never chosen (choosing it on the seeds
  that survived would hide that it diverged);
- cost in device-seconds, the paired comparison with FT, and the data of
  the paper's Tables 11 and 12.

Nothing here formats text: :mod:`medft_jax.report.render` and
:mod:`medft_jax.report.tables` do.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medft_jax import results
from medft_jax.config import (
    BN_TRAINS_THROUGHOUT,
    NUMERICS_VERSION,
    PAPER_STRATEGY_OPTIONS,
    RunConfig,
    effective_options,
    numerics_version,
)
from medft_jax.data.cache import COPIES_RULE
from medft_jax.data.options import task_options
from medft_jax.metrics import LOG_PROBABILITIES_RANKED
from medft_jax.names import LOCAL_KINDS, lr_text, same_data
from medft_jax.report import aggregate
from medft_jax.results import RecordError

COMPLETE, PARTIAL, MISSING, FAILED = "complete", "partial", "missing", "failed"
UNVALIDATED = "unvalidated"
"""A cell whose every LR is left out of the choice, at least one because a run there has
no validation value (not because runs failed): no value, and no experiment lost either."""
STATUSES = (COMPLETE, PARTIAL, MISSING, FAILED, UNVALIDATED)
ALPHA = 0.05
"""Significance level of the paired comparison's mark."""
SPREAD_TOLERANCE = 1e-9
"""Paired differences (metrics in [0, 1]) whose SE is below this have no spread."""

_REQUIRED = ("dataset", "arch", "strategy", "lr", "seed")
_PER_CELL = (
    "arch",
    "strategy",
    "strategy_options",
    "lr",
    "seed",
    # The prepared data and the weights differ by arch (resize size, ImageNet file);
    # within an arch they must agree (checked by _check_settings).
    "data_fingerprint",
    "weights_fingerprint",
)
"""Config keys that may differ between the cells of one dataset; every other key must agree."""

CellKey = tuple[str, str, str]


@dataclasses.dataclass(frozen=True)
class Cost:
    """What a cell cost, from its records' ``train_seconds``, features and throughput.

    Device-seconds (``(train_seconds + feature extraction) ×
    environment.device_count``) compare runs made on different numbers of
    accelerators. ``train_seconds`` is the epochs' seconds: steps, data
    waits and validation; the extraction is that of the cached features a
    run's head-only epochs trained from, charged to every run that used
    them. Compilation is not included.
    """

    device_seconds: float
    """Mean over the chosen LR's seeds: what one more run of the chosen setting costs."""
    images_per_s: float
    """Mean over those seeds of each run's mean per-epoch training throughput, over the
    epochs that ran the images through the model (not head steps on cached features)."""
    epochs: float
    """Mean number of epochs those runs trained (early stopping makes them differ)."""
    total_device_seconds: float
    """Sum over every record of the cell, all LRs: what the LR search cost."""
    total_runs: int
    """Records counted in the total (failure notes carry no time)."""


@dataclasses.dataclass(frozen=True)
class Cell:
    """One (dataset, arch, strategy) of the report; see the module docstring."""

    dataset: str
    arch: str
    strategy: str
    status: str
    metric: str
    """The dataset's headline metric, the first table column: the relative improvements,
    Tables 11 and 12, the paired test. The LR is chosen by the records' primary metric,
    which is this one or (eq. 6 for top-1 of a single-label task) ranks runs alike."""
    lr: float | None = None
    val: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    test: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    """Test metric -> (mean, SE) over the seeds at the chosen LR; empty without a value."""
    n: Mapping[str, int] = dataclasses.field(default_factory=dict)
    seeds: tuple[int, ...] = ()
    per_seed: Mapping[int, float] = dataclasses.field(default_factory=dict)
    """Seed -> test headline metric at the chosen LR (the paired test pairs these)."""
    lr_means: Mapping[float, float] = dataclasses.field(default_factory=dict)
    runs_done: int = 0
    runs_expected: int = 0
    seeds_expected: int = 0
    """Seeds expected at the chosen LR: a partial cell's value is over fewer when
    ``len(seeds)`` is less (its missing runs are at that LR, not at another)."""
    failure_kinds: tuple[str, ...] = ()
    excluded_lrs: tuple[float, ...] = ()
    """LRs not eligible for the choice: a run at them failed or has no validation value."""
    unvalidated_lrs: tuple[float, ...] = ()
    """Those of :attr:`excluded_lrs` where no run failed but one has no validation value."""
    cost: Cost | None = None
    unstaged: int = 0
    """Runs at the chosen LR whose tested parameters come from before their final stage:
    the run ended there (too few epochs for G-LF/G-FL to unfreeze every block) or its
    best validation epoch came before it (a G-LF run tested as the linear probe of its
    first epoch): see :data:`medft_jax.report.render.PILCROW`.
    Nonzero only in a cell with a value (only such a cell has a chosen LR)."""
    final_stage_epoch: int | None = None

    @property
    def key(self) -> CellKey:
        return (self.dataset, self.arch, self.strategy)

    @property
    def tied_lrs(self) -> tuple[float, ...]:
        """The LRs that tied with the chosen one on the mean validation metric
        (:func:`~medft_jax.report.aggregate.tied_lrs`); empty without a chosen LR."""
        if not self.has_value or self.lr is None:
            return ()
        return aggregate.tied_lrs(self.lr_means, self.lr)

    @property
    def has_value(self) -> bool:
        return self.status in (COMPLETE, PARTIAL)

    def mean(self, metric: str | None = None) -> float:
        """Mean test ``metric`` (default: the table's headline, :attr:`metric`, top-1 for BACH
        and T1w, not the primary eq. 6 accuracy); NaN when the cell has no value."""
        return self.test.get(metric or self.metric, (math.nan, math.nan))[0]

    @property
    def failure_text(self) -> str:
        """How a cell without a value (failure notes, or runs without a validation value)
        reads in a table."""
        return UNVALIDATED if self.status == UNVALIDATED else self.failed_text

    @property
    def failed_text(self) -> str:
        """What the cell's failed runs did: ``diverged`` (every failure non-finite) or
        ``failed``."""
        kinds = set(self.failure_kinds)
        return "diverged" if kinds and kinds <= {"nonfinite"} else "failed"


@dataclasses.dataclass(frozen=True)
class Summary:
    """Every cell of a report, with the axes in display order."""

    cells: dict[CellKey, Cell]
    datasets: tuple[str, ...]
    archs: tuple[str, ...]
    strategies: tuple[str, ...]
    primary: dict[str, str]
    """Dataset -> primary metric of its records (early stopping, LR choice)."""
    metrics: dict[str, tuple[str, str]]
    """Dataset -> the two metrics of its table, the headline metric first."""
    grid_name: str | None = None
    plans: tuple[str, ...] = ()
    """Without a grid: the sweep plans whose runs are expected (``.plans/<file> (grid
    'name')``), each named so that a stale one can be found and deleted."""
    filters: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    left_out: int = 0
    """Records and failure notes under ``--runs`` that are not runs of the grid."""
    left_out_why: str = ""
    """Of those, how many are runs of the grid's settings read otherwise (another folder,
    other options), with the first's reason: the sweep takes them for done."""
    superseded: int = 0
    """Records left out by ``latest``: runs whose settings were rerun on newer data."""
    float32_ranked: int = 0
    """Records whose AUROC and AP ranked by float32 probabilities (no ``ranked_by``: numerics
    version 4 or earlier), which tie past a logit margin of about 16.6."""
    log_probability_ranked: int = 0
    """Records whose AUROC and AP ranked by float64 log-probabilities
    (:data:`~medft_jax.metrics.LOG_PROBABILITIES_RANKED`), which tie past a logit margin of
    about 745."""
    dataset_options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    """Dataset -> the split and label options its runs used (``task_options``)."""
    protocol: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    """Dataset -> the :data:`PROTOCOL` settings its runs share (one value each: checked)."""
    strategy_options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    """Strategy -> every option it read, as run (one set per strategy: checked)."""

    def cell(self, dataset: str, arch: str, strategy: str) -> Cell:
        return self.cells[(dataset, arch, strategy)]

    def headline(self, dataset: str) -> str:
        """The metric of ``dataset``'s improvements, Table 11 and paired test."""
        return self.metrics[dataset][0]

    def archs_of(self, dataset: str) -> list[str]:
        """The archs with a cell of ``dataset``, in the report's order: its table's columns
        and its figures' bars (another dataset's arch is no "n/a" of this one)."""
        return [
            a for a in self.archs if any((dataset, a, s) in self.cells for s in self.strategies)
        ]

    def strategies_of(self, dataset: str) -> list[str]:
        """The strategies with a cell of ``dataset``, in the report's order."""
        return [
            s for s in self.strategies if any((dataset, a, s) in self.cells for a in self.archs)
        ]

    def options_unlike_paper(self, strategy: str) -> str:
        """``sp_half = True (the paper's: sp_half = False)``, or "" where it ran with the
        paper's options."""
        differ = self.unlike_paper(strategy)
        if not differ:
            return ""
        ran = self.strategy_options[strategy]
        ours = ", ".join(f"{k} = {option_text(ran[k])}" for k in differ)
        theirs = ", ".join(f"{k} = {option_text(v)}" for k, v in differ.items())
        return f"{ours} (the paper's: {theirs})"

    def unlike_paper(self, strategy: str) -> dict[str, Any]:
        """The options ``strategy`` ran with that are not the paper's, each with the
        paper's value (L2-SP's ``sp_half``, Auto-RGN's ``rgn_mode``): the index's settings
        and every ``vs_paper`` table say them, since a row names a strategy, not its
        options."""
        options = self.strategy_options.get(strategy) or {}
        paper = effective_options(strategy, PAPER_STRATEGY_OPTIONS.get(strategy))
        return {k: paper[k] for k, v in options.items() if k in paper and paper[k] != v}


def option_text(value: object) -> str:
    """A strategy option as the report prints it (``0.01``, ``True``, ``prepass``)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


# --- collecting ------------------------------------------------------------------------------


def collect(
    records: Iterable[dict[str, Any]],
    failures: Iterable[dict[str, Any]] = (),
    grid: Any = None,
    filters: Mapping[str, Iterable[str]] | None = None,
    latest: bool = False,
    planned: Sequence[tuple[str, Sequence[Mapping[str, Any]]]] = (),
) -> Summary:
    """Gathers records and failure notes into cells (see the module docstring).

    Args:
      records: finished runs (:func:`medft_jax.results.load_records`).
      failures: failure notes (:func:`medft_jax.results.load_failures`).
      grid: a :class:`medft_jax.grid.Grid` defining the expected cells and
        runs; then only runs of the grid count (same config hash), the rest
        are counted in ``Summary.left_out``. None: infer the expectation.
      filters: ``--only`` filters (:func:`medft_jax.grid.parse_only`).
      latest: ``--latest``: leave out each record superseded by a rerun of its
        settings on newer data (:func:`drop_superseded`), counted in
        ``Summary.superseded``. Without it such records are refused, named.
      planned: without ``grid``, the sweeps' plans found beside the runs (how to name
        the plan, its run configs: :func:`medft_jax.plans.load_plans`): their runs are
        expected as listed, so a shard that never ran is counted missing, not unseen;
        runs no plan lists are inferred among themselves.

    Raises:
      RecordError: a record lacking what a report needs, records of one
        dataset run with different settings, records of two numerics
        versions, or two records of one run.
      medft_jax.grid.GridError: a filter value the grid does not have.
    """
    from medft_jax import grid as gridlib

    records = list(records)
    failures = list(failures)
    for r in records:
        _check_record(r)
    for f in failures:
        _check_config(f)
    records = [_named_by_data(r) for r in records]
    failures = [_named_by_data(f) for f in failures]
    # A run with a record and a failure note was retried and finished: the record wins.
    finished = {results.config_hash(r["config"]) for r in records}
    failures = [f for f in failures if results.config_hash(f["config"]) not in finished]
    filt = {k: set(v) for k, v in (filters or {}).items()}
    left_out = superseded = 0
    left_out_why = ""
    if grid is not None:
        configs = gridlib.select(grid, filt)
        wanted = {results.settings_hash(c.to_dict()): c for c in configs}
        before = len(records) + len(failures)

        apart: list[str] = []  # why runs of the grid's settings were left out, one each

        def of_grid(run: dict[str, Any]) -> bool:  # same settings, same split and labels
            d = run["config"]["dataset"]
            given = grid.dataset_options.get(d)
            if results.settings_hash(run["config"]) not in wanted:
                return False
            why = _apart_from_grid(run, given)
            if why:
                apart.append(why)
            return not why

        everything = records + failures
        records = [r for r in records if of_grid(r)]
        failures = [f for f in failures if of_grid(f)]
        left_out = before - len(records) - len(failures)
        left_out_why = (
            f"{len(apart)} of them of the grid's settings, {apart[0]}"
            + (
                " (a folder moved, or an option given since? the sweep takes them for done: "
                "point the grid at what they read, or rerun them with --force)"
            )
            if apart
            else ""
        )
        if not apart and not records and not failures:  # none matched: say which setting
            left_out_why = next(filter(None, (_settings_apart(r, configs) for r in everything)), "")
        expected: dict[CellKey, set[tuple[float, int]]] = {}
        for c in configs:
            expected.setdefault((c.dataset, c.arch, c.strategy), set()).add(
                (float(c.lr), int(c.seed))
            )
    else:
        runs = records + failures
        stubs = [_named_by_data({"config": dict(c)}) for _, configs in planned for c in configs]
        held = {k: sorted({r["config"][k] for r in runs + stubs if k in r["config"]}) for k in filt}
        gridlib.check_filter_values(filt, held, "no run has it (the runs'")
        if latest:  # before the filter, so that what is expected rests on current runs
            kept, _ = drop_superseded(records)
            superseded = sum(gridlib.matches(r["config"], filt) for r in records) - sum(
                gridlib.matches(r["config"], filt) for r in kept
            )
            records = kept
        expected = _expected_under(records + failures, filt, stubs)
        records = [r for r in records if gridlib.matches(r["config"], filt)]
        failures = [f for f in failures if gridlib.matches(f["config"], filt)]
    if latest and grid is not None:
        records, superseded = drop_superseded(records)

    _check_numerics(records + failures)
    _check_strategy_options(records + failures)
    strategy_options = {
        r["config"]["strategy"]: effective_options(
            r["config"]["strategy"], r["config"].get("strategy_options")
        )
        for r in records + failures
    }
    datasets = _order({k[0] for k in expected}, _dataset_order())
    archs = _order({k[1] for k in expected}, _arch_order())
    strategies = _order({k[2] for k in expected}, _strategy_order())
    primary: dict[str, str] = {}
    metrics: dict[str, tuple[str, str]] = {}
    options: dict[str, dict[str, Any]] = {}
    protocol: dict[str, dict[str, Any]] = {}
    for d in datasets:
        recs = [r for r in records if r["config"]["dataset"] == d]
        _check_settings(d, recs + [f for f in failures if f["config"]["dataset"] == d])
        primary[d], metrics[d] = _dataset_metrics(d, recs)
        runs = recs + [f for f in failures if f["config"]["dataset"] == d]
        given = grid.dataset_options.get(d) if grid is not None else None
        options[d] = run_options(runs[0]) if runs else task_options(d, given)
        if runs:
            protocol[d] = _protocol(runs)
    _check_start(protocol)

    by_cell: dict[CellKey, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for r in records:
        by_cell.setdefault(_cell_key(r), ([], []))[0].append(r)
    for f in failures:
        by_cell.setdefault(_cell_key(f), ([], []))[1].append(f)
    cells = {
        key: _make_cell(key, *by_cell.get(key, ([], [])), expected[key], metrics[key[0]][0])
        for key in sorted(expected, key=_sorter(datasets, archs, strategies))
    }
    return Summary(
        cells=cells,
        datasets=datasets,
        archs=archs,
        strategies=strategies,
        primary=primary,
        metrics=metrics,
        grid_name=None if grid is None else grid.name,
        plans=() if grid is not None else tuple(sorted({name for name, _ in planned})),
        filters={k: frozenset(v) for k, v in filt.items()},
        left_out=left_out,
        left_out_why=left_out_why,
        superseded=superseded,
        float32_ranked=sum("ranked_by" not in r for r in records),
        log_probability_ranked=sum(r.get("ranked_by") == LOG_PROBABILITIES_RANKED for r in records),
        strategy_options={s: strategy_options[s] for s in strategies if strategy_options.get(s)},
        dataset_options=options,
        protocol=protocol,
    )


def summary_from_means(
    means: Mapping[CellKey, Mapping[str, tuple[float, float]]],
    metrics: Mapping[str, tuple[str, str]] | None = None,
    primary: Mapping[str, str] | None = None,
) -> Summary:
    """A :class:`Summary` of complete cells from per-cell test means, without run records.

    For numbers that exist only as means, such as a paper's published
    tables: the Table 11 and 12 builders then run on them exactly as on a
    sweep's. ``means`` maps (dataset, arch, strategy) to metric ->
    (mean, SE) as fractions; ``metrics`` gives each dataset's table pair
    (default :func:`medft_jax.metrics.task_metrics`, which gives the paper's
    tasks their columns; other datasets read as single-label) and ``primary``
    its selection metric (default: the headline). Axes follow the canonical order.
    """
    from medft_jax import metrics as metriclib

    datasets = _order({k[0] for k in means}, _dataset_order())
    pairs = {d: (metrics or {}).get(d) or metriclib.task_metrics(d, False) for d in datasets}
    chosen = {d: (primary or {}).get(d, pairs[d][0]) for d in datasets}
    cells = {
        key: Cell(
            dataset=key[0],
            arch=key[1],
            strategy=key[2],
            status=COMPLETE,
            metric=pairs[key[0]][0],
            test=dict(values),
            runs_done=1,
            runs_expected=1,
        )
        for key, values in means.items()
    }
    return Summary(
        cells=cells,
        datasets=datasets,
        archs=_order({k[1] for k in means}, _arch_order()),
        strategies=_order({k[2] for k in means}, _strategy_order()),
        primary=chosen,
        metrics=pairs,
    )


def _check_config(run: dict[str, Any]) -> None:
    if not isinstance(run.get("config"), dict):
        raise RecordError(f"run {run.get('run', '?')}: no config")
    config, name = run["config"], run.get("run", "?")
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise RecordError(f"run {name}: config lacks {', '.join(missing)}")
    if not _is_number(config["lr"]):
        raise RecordError(f"run {name}: config.lr is {config['lr']!r}, not a number")
    if not isinstance(config["seed"], int) or isinstance(config["seed"], bool):
        raise RecordError(f"run {name}: config.seed is {config['seed']!r}, not an integer")
    numerics = config.get("numerics", 1)  # absent: written before versions were
    if not isinstance(numerics, int) or isinstance(numerics, bool) or numerics < 1:
        raise RecordError(f"run {name}: config.numerics is {numerics!r}, not a version (>= 1)")


def _named_by_data(run: dict[str, Any]) -> dict[str, Any]:
    """``run`` with its dataset as runs name it now: records written before the name was
    canonical say ``medmnist/x@28``, one dataset with ``medmnist/x``, not a second one (and
    both records of one run are then refused as a run found twice)."""
    name = run["config"]["dataset"]
    same = same_data(name) if isinstance(name, str) else name
    return run if same == name else {**run, "config": {**run["config"], "dataset": same}}


def _check_record(record: dict[str, Any]) -> None:
    """A record lacking what the report reads is named now, not as a KeyError deep inside."""
    _check_config(record)
    _check_newer(record)
    name = record.get("run", "?")
    for key in ("val", "test"):
        if not isinstance(record.get(key), dict):
            raise RecordError(f"run {name}: record has no {key!r} metrics")
    if not isinstance(record.get("primary_metric"), str):
        raise RecordError(f"run {name}: record has no primary_metric")
    problem = results.numbers_problem(record)
    if problem:
        raise RecordError(f"run {name}: {problem}")
    epochs = record.get("epochs")
    if epochs is not None and not (
        isinstance(epochs, list)
        and all(
            isinstance(e, dict) and (e.get("images_per_s") is None or _is_number(e["images_per_s"]))
            for e in epochs
        )
    ):
        raise RecordError(f"run {name}: epochs is not a list of epoch entries")
    environment = record.get("environment") or {}
    if not isinstance(environment, dict):
        raise RecordError(f"run {name}: environment is not a JSON object")
    devices = environment.get("device_count")
    if devices is not None and not (_is_number(devices) and devices == int(devices) > 0):
        raise RecordError(f"run {name}: environment.device_count is {devices!r}, not a count")
    multilabel = record.get("multilabel")  # decides the dataset's headline column
    if multilabel is not None and not isinstance(multilabel, bool):
        raise RecordError(f"run {name}: multilabel is {multilabel!r}, expected true or false")
    classes = record.get("num_classes")
    counted = isinstance(classes, int) and not isinstance(classes, bool) and classes > 0
    if classes is not None and not counted:
        raise RecordError(f"run {name}: num_classes is {classes!r}, expected a count")


def check_record(path: Path, record: dict[str, Any]) -> None:
    """:func:`_check_record`, its refusal naming the file ``record`` was read from: in a
    folder merged from several hosts, a run's name alone left the user searching."""
    try:
        _check_record(record)
    except RecordError as err:
        raise RecordError(f"{path}: {err}") from None


def check_failure(path: Path, note: dict[str, Any]) -> None:
    """A failure note's config checked as a record's (:func:`_check_config`,
    :func:`_check_newer`), the refusal naming the file, as :func:`check_record`'s does."""
    try:
        _check_config(note)
        _check_newer(note)
    except RecordError as err:
        raise RecordError(f"{path}: {err}") from None


def _check_newer(run: dict[str, Any]) -> None:
    """Refuses a run of a numerics version this toolkit does not know (a newer toolkit's):
    computed, and perhaps recorded, in ways this one cannot know."""
    if numerics_of(run) > NUMERICS_VERSION:
        raise RecordError(
            f"run {run.get('run', run['config']['dataset'])}: written by a newer toolkit "
            f"(numerics version {numerics_of(run)}; this one knows 1 to {NUMERICS_VERSION}): "
            "report it with that toolkit, or move it out of --runs"
        )


def _is_number(x: Any) -> bool:
    """A real number as JSON holds one (a bool is not one, though Python says so)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _cell_key(run: dict[str, Any]) -> CellKey:
    c = run["config"]
    return (str(c["dataset"]), str(c["arch"]), str(c["strategy"]))


def _expected_under(
    runs: list[dict[str, Any]],
    filt: Mapping[str, set[str]],
    planned: Sequence[dict[str, Any]] = (),
) -> dict[CellKey, set[tuple[float, int]]]:
    """The runs the sweeps' plans list (``planned``, as stub records), and
    :func:`_infer_expected` of the runs no plan lists, then narrowed to the cells, LRs
    and seeds that ``--only`` shows: a seed or LR that the shown runs have not reached
    yet (LP's seed 2, done for FT) is still expected of them, so the cell is marked
    partial, not complete. A filter on another setting (``precision``) picks the runs
    the grid is inferred from.

    A plan's runs are expected as listed, not crossed with every other run's settings:
    two grids' sweeps in one folder (demo on ResNet-50, bach at another LR) each expect
    their own runs, not each other's archs and LRs. A dataset holding a run that no plan
    lists is inferred from its runs, planned or not, as a folder without plans is (a
    one-off LP-FT seed beside a planned 3-seed grid is partial, not complete)."""
    from medft_jax import grid as gridlib

    axes = {"dataset", "arch", "strategy", "lr", "seed"}
    other = {k: v for k, v in filt.items() if k not in axes}
    shown = {k: v for k, v in filt.items() if k in axes}
    stubs = [p for p in planned if gridlib.matches(p["config"], other)]
    runs = [r for r in runs if gridlib.matches(r["config"], other)]
    listed = {_run_key(p) for p in stubs}
    loose = {r["config"]["dataset"] for r in runs if _run_key(r) not in listed}
    # A dataset with a run no plan lists (a one-off experiments.run beside a sweep) is
    # inferred as a folder without plans is, from its runs and planned runs; the others
    # as planned (not crossed with another grid's archs and LRs).
    every = _infer_expected([r for r in runs + stubs if r["config"]["dataset"] in loose])
    for p in stubs:
        every.setdefault(_cell_key(p), set()).add(_run_key(p)[3:])
    expected = {}
    for (d, a, s), pairs in every.items():
        kept = {
            (lr, seed)
            for lr, seed in pairs
            if gridlib.matches(
                {"dataset": d, "arch": a, "strategy": s, "lr": lr, "seed": seed}, shown
            )
        }
        if kept:
            expected[(d, a, s)] = kept
    return expected


def _run_key(run: Mapping[str, Any]) -> tuple[str, str, str, float, int]:
    """A run's cell and its (LR, seed): what makes it one of a cell's expected runs."""
    c = run["config"]
    return (c["dataset"], c["arch"], c["strategy"], float(c["lr"]), int(c["seed"]))


def _infer_expected(runs: list[dict[str, Any]]) -> dict[CellKey, set[tuple[float, int]]]:
    """Every arch, strategy, LR and seed seen anywhere, for every dataset seen.

    A sweep runs one grid: a dataset with one LR and seed done so far is a
    partial sweep, not a complete one of its own (use ``--config`` for a grid
    whose datasets differ in their LRs or seeds).
    """
    archs = {r["config"]["arch"] for r in runs}
    strategies = {r["config"]["strategy"] for r in runs}
    datasets = {r["config"]["dataset"] for r in runs}
    lrs = {float(r["config"]["lr"]) for r in runs}
    seeds = {int(r["config"]["seed"]) for r in runs}
    cell = {(lr, s) for lr in lrs for s in seeds}
    return {(d, a, s): set(cell) for d in datasets for a in archs for s in strategies}


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _differing(configs: Sequence[Mapping[str, Any]], skip: Iterable[str]) -> dict[str, list[str]]:
    """Key -> its distinct values, for the keys (outside ``skip``) whose values differ."""
    skip = set(skip)
    keys = sorted({k for c in configs for k in c} - skip)
    out = {}
    for k in keys:
        seen = {_canon(c.get(k, "<absent>")): c.get(k) for c in configs}
        if len(seen) == 2:  # as the configs give them: "a vs b" is one run, then the other,
            out[k] = list(seen)  # for every key (sorted apart, "<absent>" came first in each)
        elif len(seen) > 2:  # numbers in numeric order: "40" sorted before "8" as text
            out[k] = sorted(seen, key=lambda t: _value_order(seen[t], t))
    return out


def _value_order(value: Any, text: str) -> tuple[int, float, str]:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (0, float(value), text) if number else (1, 0.0, text)


def _describe_diff(diff: Mapping[str, list[str]]) -> str:
    """Each key's values, at most four, then how many more (a dropped one was the value
    of a folder the error names as an example)."""
    return "; ".join(
        f"{k}: {' vs '.join(v[:4])}" + (f" and {len(v) - 4} more" if len(v) > 4 else "")
        for k, v in diff.items()
    )


_NOT_LAYOUT = ("manual_dir", "csv_file", "bits_stored", "dicom_window", "skip_bad_images")
"""A user dataset's options that are not its layout (where it is, how files decode)."""


def _settings_apart(run: Mapping[str, Any], configs: Sequence[RunConfig]) -> str:
    """Which settings set ``run`` apart from the grid's run of its dataset, arch and
    strategy (the nearest of its LRs and seeds), for the report's line when no record
    matches the grid; ``""`` when the grid has no such run."""
    mine = {k: v for k, v in run["config"].items() if k not in results.IDENTITY_KEYS}
    axes = (mine.get("dataset"), mine.get("arch"), mine.get("strategy"))
    same = [c.to_dict() for c in configs if (c.dataset, c.arch, c.strategy) == axes]

    def differing(theirs: dict[str, Any]) -> list[str]:
        keys = sorted((set(theirs) | set(mine)) - set(results.IDENTITY_KEYS))
        return [k for k in keys if _canon(theirs.get(k)) != _canon(mine.get(k))]

    if not same:
        return ""
    nearest = min(same, key=lambda c: len(differing(c)))
    keys = [k for k in differing(nearest) if k not in ("lr", "seed")] or differing(nearest)
    shown = ", ".join(
        f"{k} {mine.get(k, '<absent>')!r} (the grid's {nearest.get(k, '<absent>')!r})"
        for k in keys[:3]
    )
    return f"e.g. {run.get('run', axes[0])} has {shown}" if keys else ""


def _apart_from_grid(run: Mapping[str, Any], given: Mapping[str, Any] | None) -> str:
    """Why a run of a grid's settings is not the grid's (other split or label options,
    another layout, another folder), for the report's line; ``""`` when it is."""
    d = run["config"]["dataset"]
    if run_options(run) != task_options(d, given):
        return f"e.g. {run.get('run', d)} of other split or label options"
    if layout_differs(run, given):
        return f"e.g. {run.get('run', d)} read with other layout options than the grid's"
    if read_elsewhere(run, given):
        source = run.get("data_source") or {}
        root = Path(str((given or {}).get("manual_dir"))).expanduser().resolve()
        read = source.get("root")
        if str(root) == str(read):  # the folder's, another labels CSV
            root = root / Path(str((given or {}).get("csv_file"))).expanduser()
            read = source.get("csv_file")
        return f"e.g. {run.get('run', d)} read from {read}, not the grid's {root}"
    return ""


def layout_differs(run: Mapping[str, Any], given: Mapping[str, Any] | None) -> bool:
    """Whether a ``folder``/``csv`` record was read with other layout options (fractions,
    patient folders, columns) than a grid's ``given`` ``dataset_options``: a grid asking
    for ``test_fraction`` 0.3 took a run made at the default as its finished cell. Records
    without ``data_source`` (older) cannot say: never judged to differ."""
    source = run.get("data_source")
    if run["config"]["dataset"] not in LOCAL_KINDS or not isinstance(source, Mapping):
        return False

    def layout(options: Any) -> str:
        kept = {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dict(options or {}).items()
            if v is not None and k not in _NOT_LAYOUT
        }
        return _canon(kept)

    return layout(source.get("options")) != layout(given)


def read_elsewhere(run: Mapping[str, Any], given: Mapping[str, Any] | None) -> bool:
    """Whether a ``folder``/``csv`` record was read from another folder (or labels CSV)
    than a grid's ``given`` ``manual_dir`` (``csv_file``): two grids of one user's two
    folders swept into one ``--out`` hold runs of one name, ``folder``, and each grid's
    report took the other's as its own, then refused the mix. A grid that names no folder,
    or a record without ``data_source`` (older), cannot say: never judged elsewhere. A
    relative ``manual_dir`` is read from where the command runs, as the sweep read it."""
    source = run.get("data_source")
    given = dict(given or {})
    if (
        run["config"]["dataset"] not in LOCAL_KINDS
        or not isinstance(source, Mapping)
        or not source.get("root")
        or given.get("manual_dir") is None
    ):
        return False
    root = Path(str(given["manual_dir"])).expanduser().resolve()
    if str(root) != str(source["root"]):
        return True
    if given.get("csv_file") is None or source.get("csv_file") is None:
        return False
    return str((root / Path(str(given["csv_file"])).expanduser()).resolve()) != str(
        source["csv_file"]
    )


def run_options(run: Mapping[str, Any]) -> dict[str, Any]:
    """A record's or failure note's split and label options (older ones: the defaults)."""
    return task_options(run["config"]["dataset"], run.get("dataset_options"))


def numerics_of(run: Mapping[str, Any]) -> int:
    """The numerics version a record's run computed with (records without one: 1)."""
    return int(run["config"].get("numerics", 1))


def _precision_of(run: Mapping[str, Any]) -> str:
    return str(run["config"].get("precision", "fp32"))


def _generations(run: Mapping[str, Any]) -> set[int]:
    """The toolkit versions under which ``run`` is current: a float32 version-3 run is
    version 4's too (:data:`~medft_jax.config.NUMERICS_CHANGES`), a bf16 one is not. A
    version this toolkit does not know for the precision (a newer toolkit's) is its own."""
    precision, numerics = _precision_of(run), numerics_of(run)
    upto = max(NUMERICS_VERSION, numerics)
    known = {v for v in range(1, upto + 1) if numerics_version(precision, v) == numerics}
    return known or {numerics}


def _check_numerics(runs: list[dict[str, Any]]) -> None:
    """One report, one numerics version: a change between them altered runs' numbers.
    A run of a version this toolkit does not know (a newer toolkit's) is refused.

    Per precision: a float32 run of version 3 and a bf16 run of version 4 are both
    version 4's (it changed bf16 runs only); two bf16 runs of 3 and 4 are not.
    """
    for r in runs:
        _check_newer(r)
    if not runs or set.intersection(*(_generations(r) for r in runs)):
        return
    versions = sorted({numerics_of(r) for r in runs})
    newest = max(max(_generations(r)) for r in runs)
    older = next(r for r in runs if newest not in _generations(r))
    raise RecordError(
        f"runs of numerics versions {' and '.join(map(str, versions))} (e.g. "
        f"{older.get('run', older['config']['dataset'])} is {_precision_of(older)} version "
        f"{numerics_of(older)}): a change between them alters runs' numbers (see "
        "medft_jax.config.NUMERICS_VERSION); delete or move the older runs' folders, or "
        "report them from separate --runs folders"
    )


def _check_strategy_options(runs: list[dict[str, Any]]) -> None:
    """One strategy, one set of options across the report: a row, Table 11 and Table 12
    name a strategy, not its options (L2-SP at α = 1 on one arch beside α = 0.01 on
    another, or a run's defaults beside a grid's ``sp_half=False``, under one label)."""
    by_strategy: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        config = r["config"]
        options = {
            f"strategy_options.{k}": v for k, v in (config.get("strategy_options") or {}).items()
        }
        by_strategy.setdefault(config["strategy"], []).append(options)
    for strategy, options in sorted(by_strategy.items()):
        diff = _differing(options, ())
        if diff:
            raise RecordError(
                f"strategy {strategy!r} ran with different options ({_describe_diff(diff)}; "
                "<absent>: its default): one row cannot name both; report them from separate "
                "--runs folders, or keep one with --only"
            )


PROTOCOL = ("image_size", "batch_size", "epochs", "patience", "precision", "frozen_bn")
"""The settings a report states per dataset: what its numbers were trained under."""


def _protocol(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The :data:`PROTOCOL` of one dataset's runs (:func:`_check_settings` made them agree).

    ``frozen_bn`` is a freezing strategy's: FT and its kin run as ``update``
    whatever the grid says (:data:`~medft_jax.config.BN_TRAINS_THROUGHOUT`).
    """
    configs = [r["config"] for r in runs]
    freezing = [c for c in configs if c["strategy"] not in BN_TRAINS_THROUGHOUT] or configs
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    protocol = {
        k: (freezing if k == "frozen_bn" else configs)[0].get(k, defaults[k]) for k in PROTOCOL
    }
    protocol["start"] = start_of(configs[0])
    # the grid the cells chose among: z and ρ against the paper read its 3 seeds × 3 LRs
    protocol["lrs"] = tuple(sorted({float(c["lr"]) for c in configs}, reverse=True))
    cells: dict[tuple[Any, ...], set[Any]] = {}  # seeds per (arch, strategy, lr): the
    for c in configs:  # paper's 3 is of each, not of the dataset's runs together
        cells.setdefault((c["arch"], c["strategy"], float(c["lr"])), set()).add(c["seed"])
    protocol["seeds"] = max(len(s) for s in cells.values())
    protocol["numerics"] = numerics_of(runs[0])  # one a report: _check_numerics
    source = data_source_of(runs[0]) or {}
    protocol["source"] = source.get("csv_file") or source.get("root")
    sizes = runs[0].get("split_sizes")  # of the data: one for the dataset's runs
    protocol["sizes"] = dict(sizes) if isinstance(sizes, Mapping) else {}
    units = runs[0].get("scored_units")  # MURA: metrics per study, not per image
    protocol["units"] = dict(units) if isinstance(units, Mapping) else {}
    protocol["copies"] = _split_counts(runs, "eval_copies_of_train")
    protocol["multilabel"] = bool(runs[0].get("multilabel"))  # copies under any labels
    protocol["copies_any_label"] = any(  # counted before the same-label rule
        r.get("eval_copies_of_train") and r.get("eval_copies_rule") != COPIES_RULE for r in runs
    )
    protocol["skipped"] = _split_counts(runs, "skipped_bad_images")
    leaks = [r.get("dicom_patients_across_splits") for r in runs]
    leaks = [x for x in leaks if isinstance(x, list | tuple) and len(x) == 2]
    protocol["patients_across"] = max(leaks, key=lambda x: int(x[0])) if leaks else None
    files = [r.get("medmnist_file") for r in runs]
    protocol["unofficial"] = sorted(
        {str(f.get("md5")) for f in files if isinstance(f, Mapping) and f.get("official") is False}
    )
    return protocol


PAPER_PROTOCOL: dict[str, Any] = {
    "image_size": 224,
    "batch_size": 64,
    "epochs": 50,
    "patience": 5,
    "precision": "fp32",
    "frozen_bn": "update",
    "start": "pretrained",
    "lrs": (1e-3, 1e-4, 1e-5),
    "seeds": 3,
}
"""The paper's protocol in :func:`_protocol`'s terms (RunConfig's defaults, the grid's
LRs and seeds)."""

_PROTOCOL_WORDS = {
    "image_size": "{} px",
    "batch_size": "batch {}",
    "epochs": "at most {} epochs",
    "patience": "patience {}",
    "precision": "{} compute",
    "frozen_bn": "frozen_bn={}",
    "start": "{} weights",
    "lrs": "LRs {}",
    "seeds": "{} seeds",
}


PAPER_DATASET_OPTIONS: dict[str, Any] = {"uncertain": "libauc", "split_by": "image"}
"""The paper tasks' options as the paper ran them: CheXpert's uncertain labels mapped as
LibAUC does, ISIC 2020 split by image. (The paper gives no validation share: the 10 % is
this toolkit's, and another is no departure from the paper.)"""


def protocol_unlike_paper(
    protocol: Mapping[str, Any], options: Mapping[str, Any] | None = None
) -> str | None:
    """What of a dataset's :func:`_protocol` and its task ``options`` (its split and label
    options: U-Ones where the paper mapped CheXpert's uncertain labels as LibAUC does) is
    not the paper's, each beside the paper's (``"32 px (the paper's 224 px), random weights
    (the paper's pretrained weights)"``); None when all is. Said with the published values:
    a difference from them may be the protocol's or the labels', not the strategies'."""
    unlike = [
        f"{_said(words, protocol[k])} (the paper's {_said(words, PAPER_PROTOCOL[k])})"
        for k, words in _PROTOCOL_WORDS.items()
        if k in protocol and not _same_setting(protocol[k], PAPER_PROTOCOL[k])
    ]
    unlike += [
        f"{k} = {v} (the paper's {PAPER_DATASET_OPTIONS[k]})"
        for k, v in (options or {}).items()
        if k in PAPER_DATASET_OPTIONS and v != PAPER_DATASET_OPTIONS[k]
    ]
    return ", ".join(unlike) or None


def _same_setting(value: Any, paper: Any) -> bool:
    """``value`` is the paper's; LRs equal up to float32 rounding (a grid of float32
    rates) are the same LRs."""
    if isinstance(paper, tuple):
        return (
            isinstance(value, tuple)
            and len(value) == len(paper)
            and all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(value, paper, strict=True))
        )
    return value == paper


def _said(words: str, value: Any) -> str:
    """``words`` of ``value``, its plural's ``s`` dropped for one (``at most 1 epoch``,
    ``1 seed``); LRs as ``0.001, 0.0001``."""
    if isinstance(value, tuple):
        value = ", ".join(lr_text(x) for x in value)
    text = words.format(value)
    return text[:-1] if value == 1 and text.endswith(("epochs", "seeds")) else text


def _split_counts(runs: Sequence[Mapping[str, Any]], key: str) -> dict[str, int]:
    """Split -> the most images any of ``runs`` counts under ``key`` (a record's
    ``eval_copies_of_train`` or ``skipped_bad_images``: properties of the data, equal
    across the runs of one dataset), in train/val/test order; splits without any left out."""
    counts: dict[str, int] = {}
    for r in runs:
        given = r.get(key)
        for split, n in given.items() if isinstance(given, Mapping) else ():
            if (k := _int(n)) is not None and k > 0:
                counts[str(split)] = max(counts.get(str(split), 0), k)
    order = {s: i for i, s in enumerate(("train", "val", "test"))}
    return dict(sorted(counts.items(), key=lambda kv: (order.get(kv[0], 3), kv[0])))


def start_of(config: Mapping[str, Any]) -> str:
    """Where a run's backbone started: ``random`` (``--weights none``, or ``auto`` that
    found no ImageNet file) or ``pretrained``. Records before the weights fingerprint
    was written know only what was asked for."""
    fingerprint = config.get("weights_fingerprint")
    if fingerprint is None:
        return "random" if config.get("weights") == "none" else "pretrained"
    return "random" if fingerprint == "none" else "pretrained"


def _check_start(protocol: Mapping[str, Mapping[str, Any]]) -> None:
    """One report, one start: Table 11 ranks and Table 12 counts across datasets, so a
    dataset trained from random initialisation beside one from ImageNet is no comparison."""
    starts: dict[str, list[str]] = {}
    for d, p in protocol.items():
        starts.setdefault(p["start"], []).append(d)
    if len(starts) > 1:
        raise RecordError(
            f"datasets {', '.join(starts['random'])} trained from random initialisation "
            f"(weights_fingerprint none), {', '.join(starts['pretrained'])} from pretrained "
            "weights: Tables 11 and 12 would rank and count them together; report them from "
            "separate --runs folders"
        )


def _check_settings(dataset: str, runs: list[dict[str, Any]]) -> None:
    """One dataset's cells must be comparable: same settings up to arch, strategy, LR, seed."""
    settings = [
        {
            **{k: v for k, v in r["config"].items() if k != "frozen_bn"},
            **{f"dataset_options.{k}": v for k, v in run_options(r).items()},
            **(
                {"weights": aggregate.weights_setting(r["config"])}
                if "weights" in r["config"]
                else {}
            ),
        }
        for r in runs
    ]
    compared = [(runs, settings, _PER_CELL)]
    # A record without ``decoding`` was decoded by the default rule; a failure note
    # without it is an older one that did not say (it holds no numbers to compare).
    decoded = [r for r in runs if "decoding" in r or "test" in r]
    compared.append(
        (
            decoded,
            [{f"decoding.{k}": v for k, v in (r.get("decoding") or {}).items()} for r in decoded],
            (),
        )
    )
    # frozen_bn between the strategies that freeze blocks: a grid that freezes BatchNorm
    # names its FT runs ``update`` (:data:`~medft_jax.config.BN_TRAINS_THROUGHOUT`).
    freezing = [r for r in runs if r["config"]["strategy"] not in BN_TRAINS_THROUGHOUT]
    compared.append(
        (
            freezing,
            [{k: r["config"][k] for k in ("frozen_bn",) if k in r["config"]} for r in freezing],
            (),
        )
    )
    for subset, values, skip in compared:
        diff = _differing(values, skip)
        if diff:
            key = next(iter(diff))
            raise RecordError(
                f"dataset {dataset!r} holds runs with different settings "
                f"({_describe_diff(diff)}; e.g. "
                f"{_one_run_each(subset, [v.get(key, '<absent>') for v in values])}); "
                "report them from separate --runs folders"
            )
    # The data fingerprint differs by arch (the resize); the split and the images before
    # the resize must not. Records from before these fingerprints (and failure notes, and
    # datasets without a source fingerprint) hold none and are not compared.
    _check_same(
        dataset,
        runs,
        "split_fingerprint",
        "different splits",
        "other val/test fractions, patient folders or skipped images, or data edited between them",
    )
    _check_same(
        dataset,
        runs,
        "source_fingerprint",
        "different images",
        _decoded_otherwise(runs)
        or "the data was edited between them (same files, splits and labels: other pixels, "
        "or the listing in another order, e.g. a labels CSV's rows reordered), or a medft-jax "
        "upgrade decoded them otherwise (records before 2026-12-07 do not say)",
    )
    # What may differ by arch must still agree between the strategies of one arch: FT
    # from random weights (``auto`` offline) against LP from ImageNet is no comparison.
    for arch in sorted({r["config"]["arch"] for r in runs}):
        configs = [r["config"] for r in runs if r["config"]["arch"] == arch]
        diff = {
            k: v
            for k, v in _differing(configs, ()).items()
            if k in ("data_fingerprint", "weights_fingerprint")
        }
        if diff:
            key = next(iter(diff))
            mine = [r for r in runs if r["config"]["arch"] == arch]
            way_out = "report them from separate --runs folders"
            if key == "data_fingerprint":  # other data: two datasets, or one edited
                by_data: dict[str, list[dict[str, Any]]] = {}
                for r in mine:
                    by_data.setdefault(str(r["config"].get(key)), []).append(r)
                other = _other_data(mine)
                if other is not None and other[1]:
                    way_out = f"{other[0]}, not one dataset edited between them; {way_out}"
                else:
                    way_out = _way_out(key, _by_age(by_data))
            raise RecordError(
                f"dataset {dataset!r}, arch {arch}: runs from different inputs "
                f"({_describe_diff(diff)}; e.g. "
                f"{_one_run_each(mine, [r['config'].get(key) for r in mine])}); their "
                f"strategies cannot be compared: {way_out}"
            )
    # Across archs the weights differ by design (each its own ImageNet file), but one
    # arch from random initialisation against another's ImageNet runs is no comparison
    # either: its cells would compete for the best mark and Table 11 unannounced.
    random = {r["config"]["arch"] for r in runs if start_of(r["config"]) == "random"}
    pretrained = {r["config"]["arch"] for r in runs} - random
    if random and pretrained:
        raise RecordError(
            f"dataset {dataset!r}: {', '.join(sorted(random))} trained from random "
            f"initialisation (weights_fingerprint none), {', '.join(sorted(pretrained))} from "
            "pretrained weights; their cells cannot be compared: report them from separate "
            "--runs folders"
        )


def _run_of(run: Mapping[str, Any]) -> str:
    """The name of ``run``'s folder: where to look, or what to move out."""
    return str(run.get("run") or results.run_name(run["config"]))


def _one_run_each(runs: Sequence[Mapping[str, Any]], values: Sequence[Any]) -> str:
    """One run of each distinct value (``values[i]`` is ``runs[i]``'s), in the order
    :func:`_differing` lists the values: two as the runs give them, more in value order
    (sorted apart, "bf16 vs <absent>; e.g." named the <absent> run first)."""
    first: dict[str, tuple[Any, str]] = {}
    for run, value in zip(runs, values, strict=True):
        first.setdefault(_canon(value), (value, _run_of(run)))
    order = (
        list(first)
        if len(first) == 2
        else sorted(first, key=lambda t: _value_order(first[t][0], t))
    )
    return " and ".join(first[t][1] for t in order)


def _decoded_otherwise(runs: Sequence[Mapping[str, Any]]) -> str:
    """Why runs' images differ where their records say it is the decoding rules alone: each
    decoding version's runs read one set of images, the versions others (a toolkit upgrade
    between them, not an edit); ``""`` where an edit is possible too (two images within one
    version) or a record does not say (records before 2026-12-07 hold no version)."""
    keyed = [r for r in runs if r.get("source_fingerprint")]
    by_version: dict[int, set[str]] = {}
    for r in keyed:
        version = r.get("decoding_version")
        if type(version) is not int:
            return ""
        by_version.setdefault(version, set()).add(str(r["source_fingerprint"]))
    if len(by_version) < 2 or any(len(fps) > 1 for fps in by_version.values()):
        return ""
    return (
        f"medft-jax decoded their files by other rules (decoding versions "
        f"{', '.join(map(str, sorted(by_version)))}: an upgrade between them, not an edit of "
        "the data)"
    )


def _check_same(dataset: str, runs: list[dict[str, Any]], key: str, what: str, why: str) -> None:
    """Refuses runs of one dataset whose ``key`` differs, naming the archs and one run of
    each value (the folder to look at, or to move out).

    Which way out the line gives depends on what the records say: two datasets under
    one name (other class lists, other folders or layout options: each side's folder
    named) are reported apart; one dataset edited between runs leaves the runs on the
    older data superseded, and the line names their folders (see :func:`_way_out`).
    """
    by_value: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        if r.get(key):
            by_value.setdefault(str(r[key]), []).append(r)
    if len(by_value) <= 1:
        return
    keyed = [r for rs in by_value.values() for r in rs]
    other = _other_data(keyed)
    order = _by_age(by_value)
    if other is not None and not other[1]:  # one folder, changed: an edit all the same
        why = other[0]
    elif other is not None:
        each = "; ".join(
            f"{_archs(rs)}: {fp} ({_where(rs, classes=True)}e.g. {_run_of(rs[0])})"
            for fp, rs in sorted(by_value.items())
        )
        raise RecordError(
            f"dataset {dataset!r} holds runs on {what} ({key} {each}): {other[0]}, not one "
            "dataset edited between them; their cells cannot be compared: report them from "
            "separate --runs folders"
        )
    if order is None:
        each = "; ".join(
            f"{_archs(rs)}: {fp} ({_where(rs)}e.g. {_run_of(rs[0])})"
            for fp, rs in sorted(by_value.items())
        )
    else:
        each = "; ".join(
            f"{_archs(rs)}: {fp} ({'newest' if i == len(order) - 1 else 'older'}, "
            f"current at {_newest(rs)[:19]}; {_where(rs)}e.g. {_run_of(rs[0])})"
            for i, (fp, rs) in enumerate(order)
        )
    raise RecordError(
        f"dataset {dataset!r} holds runs on {what} ({key} {each}): {why}; their cells "
        f"cannot be compared: {_way_out(key, order)}"
    )


def _archs(runs: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(sorted({str(r["config"]["arch"]) for r in runs}))


def _finished(run: Mapping[str, Any]) -> str:
    """When a record was last known current, as ``YYYY-MM-DDTHH:MM:SS.ffffff`` in UTC, which
    orders as text: its ``finished_at``, or the later time a run command found it of the
    data on disk and skipped it (:data:`medft_jax.results.CONFIRMED_KEY`); "" when it has no
    readable ``finished_at`` (a failure note, an older record)."""
    finished = _utc_text(run.get("finished_at"))
    if not finished:
        return ""
    return max(finished, _utc_text(run.get(results.CONFIRMED_KEY)))


def _utc_text(value: Any) -> str:
    try:
        when = datetime.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        when = None
    if when is None:
        return ""
    if when.tzinfo is None:  # written as UTC
        when = when.replace(tzinfo=datetime.UTC)
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def _newest(runs: Sequence[Mapping[str, Any]]) -> str:
    return max(_finished(r) for r in runs)


def _by_age(
    by_value: Mapping[str, list[dict[str, Any]]],
) -> list[tuple[str, list[dict[str, Any]]]] | None:
    """The groups oldest first, by their newest record's ``finished_at``; None when that
    does not tell (a group with no time, or two groups finished at the same time)."""
    times = {value: _newest(rs) for value, rs in by_value.items()}
    ordered = sorted(by_value.items(), key=lambda kv: (times[kv[0]], kv[0]))
    newest, runner_up = times[ordered[-1][0]], times[ordered[-2][0]]
    if not all(times.values()) or newest == runner_up:
        return None
    return ordered


def data_source_of(run: Mapping[str, Any]) -> dict[str, Any] | None:
    """A record's ``data_source`` flattened (``root``, ``csv_file``, ``skip_bad_images``,
    ``options.<name>``), or None: not a user's own dataset, or an older record."""
    source = run.get("data_source")
    if not isinstance(source, Mapping):
        return None
    flat = {k: v for k, v in source.items() if k != "options"}
    options = source.get("options")
    if isinstance(options, Mapping):
        flat.update({f"options.{k}": v for k, v in options.items()})
    return flat


def _other_data(runs: Sequence[Mapping[str, Any]]) -> tuple[str, bool] | None:
    """What tells ``runs`` (of one dataset name, on differing data) apart besides their
    data, where their records say, and whether that makes them two datasets; else None.

    Other folders, CSV files or layout options (``data_source``) are two datasets, to
    report apart; so are other class lists where the records name no folder. Other class
    lists read from one recorded folder are that folder changed between runs.
    """
    reasons = []
    classes = {
        tuple(map(str, r["class_names"])) for r in runs if isinstance(r.get("class_names"), list)
    }
    sources = [source for r in runs if (source := data_source_of(r)) is not None]
    diff = _differing(sources, ())
    if len(classes) > 1:
        listed = " vs ".join(map(", ".join, sorted(classes)))
        if not diff and len(sources) == len(runs):
            return f"the folder's class list changed between them ({listed})", False
        reasons.append(f"different class lists ({listed})")
    if diff:
        if "root" in diff or "csv_file" in diff:
            where = "data from different folders"
        else:
            where = "the data read with other options"
        described = _describe_diff(diff)
        absent = "; <absent>: the default" if "<absent>" in described else ""
        reasons.append(f"{where} ({described}{absent})")
    return (" and ".join(reasons), True) if reasons else None


def _where(runs: Sequence[Mapping[str, Any]], *, classes: bool = False) -> str:
    """``folder X, `` (and ``csv Y, ``; ``classes a, b, ``) of ``runs`` where their records
    say: the words that tell two users' datasets apart in a refusal, "" where none do."""
    parts = []
    for field, label in (("root", "folder"), ("csv_file", "csv")):
        places = sorted({str(s[field]) for r in runs if (s := data_source_of(r)) and field in s})
        if places:
            parts.append(f"{label} {' and '.join(places)}")
    names = {tuple(r["class_names"]) for r in runs if isinstance(r.get("class_names"), list)}
    if classes and names:
        parts.append("classes " + " / ".join(", ".join(map(str, n)) for n in sorted(names)))
    return "".join(f"{p}; " for p in parts)


SHOWN_RUNS = 10
"""Run folders a refusal names at most (the rest counted): one line, still readable."""


def _way_out(key: str, order: list[tuple[str, list[dict[str, Any]]]] | None) -> str:
    """What to do with runs of one dataset on edited data (``order``: their groups by
    ``key``, oldest first; None: not known which are older).

    The runs on the older data are superseded: a sweep reran them (a new data fingerprint
    is a new run folder) and left the old records where they were. The line names their
    folders, says which have no rerun yet, and offers ``--latest`` when it would leave
    them all out (:func:`drop_superseded`).
    """
    if order is None:
        return (
            "rerun the older ones on the data as it is and move their folders out of --runs "
            "(these records do not say when they finished, so which are older is not known "
            "here), or report them from separate --runs folders"
        )
    newest = order[-1][1]
    older = sorted((r for _, rs in order[:-1] for r in rs), key=_run_of)
    reruns = {_rerun_key(r, strict=False) for r in newest}
    waiting = [r for r in older if _rerun_key(r, strict=False) not in reruns]
    strict = {_rerun_key(r) for r in newest if _finished(r)}
    latest = all(_finished(r) and _rerun_key(r) in strict for r in older)
    many = len(older) != 1
    text = (
        f"the {len(older)} run{'s' if many else ''} on older data "
        f"({_names(older, key, order[-1][0])}) {'are' if many else 'is'} superseded: move or "
        f"delete {'their folders' if many else 'its folder'} from --runs"
    )
    if latest:
        text += ", or report with --latest (which leaves them out and says how many)"
    if waiting:
        text += (
            f" ({len(waiting)} of them, {_names(waiting, key, None)}, not rerun on the newest "
            "data yet: a sweep of the grid reruns them)"
        )
    return text + ", or report them from separate --runs folders"


def _names(runs: Sequence[Mapping[str, Any]], key: str, newest: str | None) -> str:
    """The run folders of ``runs``, at most :data:`SHOWN_RUNS` of them, the rest counted."""
    names = [_run_of(r) for r in runs]
    shown = ", ".join(names[:SHOWN_RUNS])
    if len(names) > SHOWN_RUNS:
        rest = f" and {len(names) - SHOWN_RUNS} more"
        if newest is not None:
            rest += f" (every run whose record's {key} is not {newest})"
        shown += rest
    return shown


def _rerun_key(run: Mapping[str, Any], *, strict: bool = True) -> str:
    """What a rerun on newer data shares with the run it supersedes: the whole config
    but its ``data_fingerprint`` (and the fingerprints of the data, which then differ),
    the split and label options and, for a user's own data (``strict``), where and how
    it was read. Two folders of other content under one name never share it, so
    ``--latest`` cannot drop one hospital's runs for another's; a ``folder``/``csv``
    record without ``data_source`` (older) shares it with no other record."""
    config = {k: v for k, v in run["config"].items() if k != "data_fingerprint"}
    parts: list[Any] = [config, run_options(run)]
    if strict:
        source = run.get("data_source")
        if source is None and str(run["config"]["dataset"]) in LOCAL_KINDS:
            return _canon([parts, _run_of(run)])  # its own: never superseded
        parts.append(source)
    return _canon(parts)


def drop_superseded(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """``(records kept, how many left out)``: of the records sharing a :func:`_rerun_key`
    (the same run, settings and data source, on other data), those finished before the
    newest one on other data (``--latest``).

    Only what is clearly a rerun is dropped: a record without ``finished_at``
    is never dropped nor drops another, and one on the newest's data is kept
    (two records of one run are refused as such later). Failure notes carry no
    time and are never dropped.
    """
    newest: dict[str, dict[str, Any]] = {}
    for r in records:
        key = _rerun_key(r)
        if _finished(r) and (key not in newest or _finished(r) > _finished(newest[key])):
            newest[key] = r
    kept = []
    for r in records:
        top = newest.get(_rerun_key(r))
        if (
            top is not None
            and _finished(r)
            and _finished(r) < _finished(top)
            and r["config"].get("data_fingerprint") != top["config"].get("data_fingerprint")
        ):
            continue
        kept.append(r)
    return kept, len(records) - len(kept)


def _refuse_other_tasks(dataset: str, recs: list[dict[str, Any]]) -> None:
    """Refuse records of one dataset that disagree on ``multilabel`` or ``num_classes``
    (where they state them), naming a run of each.

    Why: the first record's decided the whole dataset's headline column and metric pair;
    one edited, or of another task under the same name, switched every cell's number."""
    for key in ("multilabel", "num_classes"):
        first: dict[Any, str] = {}
        for r in recs:
            if key in r:
                first.setdefault(r[key], r.get("run", "a record without a run name"))
        if len(first) > 1:
            shown = ", ".join(f"{json.dumps(v)} (e.g. {run})" for v, run in first.items())
            raise RecordError(
                f"dataset {dataset!r}: records disagree on {key}: {shown}; expected one "
                "task per dataset: report them from separate --runs folders"
            )


def _dataset_metrics(dataset: str, recs: list[dict[str, Any]]) -> tuple[str, tuple[str, str]]:
    """The primary metric the records used, and the table's metric pair.

    Records written before ``multilabel`` was recorded read as multilabel
    exactly when their primary metric is ``map`` (the rule of
    :func:`medft_jax.metrics.primary_metric` for non-paper datasets). The
    pair is :func:`medft_jax.metrics.task_metrics`', except where its
    headline could mislead: a headline that ranks runs otherwise than the
    records' primary (a dataset whose rule changed) or that the records do
    not hold gives way to the primary, so the LR choice, the improvements
    and the bold marks agree.
    """
    from medft_jax import metrics

    if not recs:
        return metrics.primary_metric(dataset, False), metrics.task_metrics(dataset, False)
    names = {r["primary_metric"] for r in recs}
    if len(names) > 1:
        first = {}  # one run of each, so the user can find them
        for r in recs:
            first.setdefault(r["primary_metric"], r.get("run", "a record without a run name"))
        shown = ", ".join(f"{m} (e.g. {first[m]})" for m in sorted(names))
        raise RecordError(
            f"dataset {dataset!r}: records disagree on the primary metric: {shown}; "
            "report them from separate --runs folders"
        )
    primary = names.pop()
    _refuse_other_tasks(dataset, recs)
    multilabel = bool(recs[0].get("multilabel", primary == "map"))
    pair = metrics.task_metrics(dataset, multilabel, recs[0].get("num_classes"))
    held = all(pair[0] in (r.get("test") or {}) for r in recs)
    alike = not multilabel and {pair[0], primary} <= metrics.SELECTION_EQUIVALENT
    if pair[0] != primary and not (alike and held):
        pair = (primary, pair[0] if pair[1] == primary else pair[1])
    return primary, pair


def _make_cell(
    key: CellKey,
    recs: list[dict[str, Any]],
    fails: list[dict[str, Any]],
    expected: set[tuple[float, int]],
    metric: str,
) -> Cell:
    d, a, s = key
    runs = recs + fails
    if len(aggregate.group_records(runs)) > 1:
        diff = _differing([r["config"] for r in runs], ("lr", "seed"))
        raise RecordError(
            f"{d}/{a}/{s}: runs with different settings ({_describe_diff(diff)}); "
            "report them from separate --runs folders"
        )
    aggregate.check_unique(runs)  # every LR's, as each run counts in the cell's cost
    done = {(float(r["config"]["lr"]), int(r["config"]["seed"])) for r in runs}
    base = {
        "dataset": d,
        "arch": a,
        "strategy": s,
        "metric": metric,
        "runs_done": len(done & expected),
        "runs_expected": len(expected),
        "failure_kinds": tuple(sorted({str(f.get("kind", "failed")) for f in fails})),
    }
    if not runs:
        return Cell(status=MISSING, **base)
    failed = {float(f["config"]["lr"]) for f in fails}
    unvalidated = set(aggregate.unvalidated_lrs(recs)) - failed
    bad_lrs = tuple(sorted(failed | unvalidated))
    base["unvalidated_lrs"] = tuple(sorted(unvalidated))
    eligible = aggregate.eligible(recs, failed)  # leaves the unvalidated LRs out itself
    if not eligible or not any(map(math.isfinite, aggregate.lr_means(eligible).values())):
        # Runs that finished without a validation value did not fail: a cell left with
        # nothing to choose because of them is not an experiment lost (Table 12).
        status = UNVALIDATED if unvalidated else FAILED
        # Its finished runs spent their time all the same: the LR search's total counts
        # them (a per-run cost of a setting that was never chosen has no meaning).
        cost = _cost([], recs) if recs else None
        return Cell(status=status, excluded_lrs=bad_lrs, cost=cost, **base)
    summary = aggregate.summarise(eligible)
    chosen = [r for r in eligible if float(r["config"]["lr"]) == summary["lr"]]
    complete = base["runs_done"] >= len(expected)
    return Cell(
        status=COMPLETE if complete else PARTIAL,
        lr=summary["lr"],
        seeds_expected=len({seed for lr, seed in expected if lr == summary["lr"]}),
        val=summary["val"],
        test=summary["test"],
        n=summary["n"],
        seeds=tuple(summary["seeds"]),
        per_seed={int(r["config"]["seed"]): _num(r["test"].get(metric)) for r in chosen},
        lr_means=summary["lr_means"],
        excluded_lrs=bad_lrs,
        cost=_cost(chosen, recs),
        unstaged=sum(map(tested_before_final_stage, chosen)),
        final_stage_epoch=max(
            (f for r in chosen if (f := _int(r.get("final_stage_epoch"))) is not None),
            default=None,
        ),
        **base,
    )


def tested_before_final_stage(record: dict[str, Any]) -> bool:
    """Whether a run's tested parameters predate its final stage: it stopped at its epoch
    cap before that stage began, or its best epoch (0-based, as ``final_stage_epoch``)
    came before it. The best epoch is chosen over the whole run, so such a G-LF, G-FL or
    LP-FT result is a model whose last-unfrozen blocks never trained. Records before
    ``final_stage_epoch`` was written: not known, so False."""
    final = _int(record.get("final_stage_epoch"))
    if final is None:
        return False
    best = _int(record.get("best_epoch"))
    return len(record.get("epochs") or ()) <= final or (best is not None and best < final)


def _int(x: Any) -> int | None:
    return int(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def _device_seconds(record: dict[str, Any], *, spent: bool = False) -> float:
    """(Training epochs' seconds + cached features' seconds) × devices; see
    :func:`_feature_seconds` for ``spent``."""
    devices = (record.get("environment") or {}).get("device_count") or 1
    return (_num(record.get("train_seconds")) + _feature_seconds(record, spent=spent)) * devices


def _feature_seconds(record: dict[str, Any], *, spent: bool) -> float:
    """The seconds of the cached backbone features a run's head-only epochs trained from.

    ``spent=False``: what computing them takes, charged to every run that used them, the
    first or one that reused them (a cell's cost is what one more such run costs, and an
    LP epoch on features alone would make LP look nearly free). ``spent=True``: what this
    run itself spent on them (computing, or checking a reused set), for the sum over an
    LR search. NaN where not known: a run that reused features written before their
    extraction time was recorded.
    """
    info = record.get("features")
    if not isinstance(info, dict) or not info.get("used"):
        return 0.0
    value = info.get("seconds") if spent else info.get("extract_seconds")
    if value is None and not spent and not info.get("reused"):
        value = info.get("seconds")  # an older record of the run that computed them
    return float(value) if _is_number(value) else math.nan


def _cost(chosen: list[dict[str, Any]], every: list[dict[str, Any]]) -> Cost:
    def throughput(r: dict[str, Any]) -> float:
        # Images through the whole model: a head step on stored features is not one.
        epochs = [e for e in r.get("epochs") or [] if not e.get("from_features")]
        # Their images over their train seconds, as the sweep's estimate: a mean of the
        # epochs' rates weighed G-LF's fast head-only epoch as a full one (7 % high).
        timed = [
            (float(e["images_per_s"]) * float(e["train_seconds"]), float(e["train_seconds"]))
            for e in epochs
            if _is_number(e.get("images_per_s")) and _is_number(e.get("train_seconds"))
        ]
        if timed and len(timed) == len(epochs) and all(t > 0 for _, t in timed):
            return math.fsum(i for i, _ in timed) / math.fsum(t for _, t in timed)
        return aggregate.mean_se(e.get("images_per_s") for e in epochs)[0]  # older records

    totals = [x for x in (_device_seconds(r, spent=True) for r in every) if math.isfinite(x)]
    return Cost(
        device_seconds=aggregate.mean_se(map(_device_seconds, chosen))[0],
        images_per_s=aggregate.mean_se(map(throughput, chosen))[0],
        # A record without its epoch log has an unknown count, not 0 epochs.
        epochs=aggregate.mean_se(
            len(r["epochs"]) if isinstance(r.get("epochs"), list) else None for r in chosen
        )[0],
        total_device_seconds=math.fsum(totals) if totals else math.nan,
        total_runs=len(totals),
    )


# --- display order ---------------------------------------------------------------------------


def _order(values: Iterable[str], canonical: Sequence[str]) -> tuple[str, ...]:
    """The canonical ones first in canonical order, then the rest sorted."""
    values = set(values)
    return tuple([v for v in canonical if v in values] + sorted(values - set(canonical)))


def _dataset_order() -> tuple[str, ...]:
    from medft_jax.metrics import TASK_NAMES

    return tuple(TASK_NAMES)


def _arch_order() -> tuple[str, ...]:
    from medft_jax.names import ARCHS

    return tuple(ARCHS)


def _strategy_order() -> tuple[str, ...]:
    from medft_jax.names import STRATEGIES

    return tuple(STRATEGIES)


def _sorter(*axes: Sequence[str]):
    index = [{v: i for i, v in enumerate(axis)} for axis in axes]
    return lambda key: tuple(ix[k] for ix, k in zip(index, key, strict=True))


# --- comparisons with FT ---------------------------------------------------------------------

BASELINE = "ft"


COUNT_METRICS: dict[str, str] = {"isic2020": "accuracy", "t1w_mri": "f1"}
"""Dataset -> the metric Table 12 counts wins in, where it is not the headline metric.

The paper's Table 12 counts ISIC 2020 in accuracy and T1w MRI in macro F1
(every other task in its headline metric): on the paper's own Tables 3-10
only this choice gives its published counts (17/24/15 per arch), where the
headline metrics give 20/27/13 (``tests/test_paper_tables.py`` checks it).
Change it here, or pass ``count_metrics`` to :func:`beats_ft`, to count otherwise.

"More than 0.1%" reads two ways. As a relative improvement (the default, as the
specs decide) the printed tables give 17/24/16: ISIC VGG-19 L2-SP is +0.103%
relative as printed. In percentage points (``points``) they give every
published cell: that gain is +0.10 points, not more than 0.1. Both agree with
the paper's unrounded means, which are not published.
"""


def count_metric(
    summary: Summary, dataset: str, count_metrics: Mapping[str, str] | None = None
) -> str:
    """The metric Table 12 counts ``dataset`` in (:data:`COUNT_METRICS`, else the headline)."""
    table = COUNT_METRICS if count_metrics is None else count_metrics
    return table.get(dataset, summary.headline(dataset))


def _means(summary: Summary, dataset: str, arch: str, strategy: str, metric: str | None):
    """(m, SE) of the strategy and of FT in ``metric`` (default: the headline); None when
    either cell is absent."""
    key, key_ft = (dataset, arch, strategy), (dataset, arch, BASELINE)
    if key not in summary.cells or key_ft not in summary.cells:
        return None
    metric = metric or summary.cells[key].metric
    nan = (math.nan, math.nan)
    return summary.cells[key].test.get(metric, nan), summary.cells[key_ft].test.get(metric, nan)


def baseline_filtered_out(summary: Summary) -> bool:
    """Whether ``--only strategy=...`` shows no FT: its cells then say nothing of whether
    FT was run (they read "not run", of runs the folder may hold)."""
    shown = summary.filters.get("strategy")
    return shown is not None and BASELINE not in shown


def filters_text(summary: Summary) -> str:
    """``lr = 0.001; seed = 0 | 1``: the ``--only`` filters the summary was made under."""
    return "; ".join(f"{k} = {' | '.join(sorted(v))}" for k, v in summary.filters.items())


def no_baseline(summary: Summary, dataset: str) -> str | None:
    """Why nothing of ``dataset`` can be compared with FT, or None when some arch's FT cell
    has a value: a folder without FT runs (the README's demo runs G-LF and LP-FT) drew an
    empty paired table and a figure of ``n/a`` labels, saying nothing of why."""
    ft = [c for (d, _, s), c in summary.cells.items() if d == dataset and s == BASELINE]
    if any(c.has_value for c in ft):
        return None
    if baseline_filtered_out(summary):
        return f"no FT value for {dataset} to compare with (--only shows no FT): add strategy=ft"
    if ft and all(c.status == FAILED for c in ft):  # ran, and rerunning it fails again
        said = sorted({c.failed_text for c in ft}, key=("diverged", "failed").index)
        return (
            f"no FT value for {dataset} to compare with (FT {' or '.join(said)} at every LR "
            "it ran): run FT at other LRs"
        )
    why = "its runs failed or have not finished" if ft else "it was not run"
    return f"no FT value for {dataset} to compare with ({why}): run --strategy ft too"


def relative_improvement(
    summary: Summary, dataset: str, arch: str, strategy: str, metric: str | None = None
) -> float:
    """100·(m − m_FT)/|m_FT| of the mean test ``metric`` (default: the headline); NaN when
    either has no value or FT's mean is 0 (named under Tables 11 and 12)."""
    return _gain_over_ft(summary, dataset, arch, strategy, metric, relative=True)


def points_gain(
    summary: Summary, dataset: str, arch: str, strategy: str, metric: str | None = None
) -> float:
    """100·(m − m_FT) of the mean test ``metric`` (default: the headline), in percentage
    points; NaN when either has no value."""
    return _gain_over_ft(summary, dataset, arch, strategy, metric, relative=False)


def ft_mean_zero(m_ft: float) -> bool:
    """FT's mean is 0 up to float rounding (κs of seeds summing to 0 give ±9e-18): no gain
    relative to it (one over 9e-18 read as 10^18 %)."""
    return abs(m_ft) < 1e-12


def _gain_over_ft(
    summary: Summary, dataset: str, arch: str, strategy: str, metric: str | None, relative: bool
) -> float:
    pair = _means(summary, dataset, arch, strategy, metric)
    if pair is None:
        return math.nan
    (m, _), (m_ft, _) = pair
    if not (math.isfinite(m) and math.isfinite(m_ft)) or (relative and ft_mean_zero(m_ft)):
        return math.nan
    if aggregate.same_mean(m, m_ft):  # equal up to rounding: no gain, not a 1e-14 % one
        return 0.0
    # |m_FT|: a κ below 0 (counted by a caller's choice) would turn a gain into a loss
    return 100.0 * (m - m_ft) / (abs(m_ft) if relative else 1.0)


def improvement_se(
    summary: Summary, dataset: str, arch: str, strategy: str, metric: str | None = None
) -> float:
    """SE of :func:`relative_improvement` over the seeds, by first-order propagation.

    With g = 100·(m/m_FT − 1) and the two means' SEs independent (each
    cell at its own LR): SE(g) = 100·√(se² + (m/m_FT)²·se_FT²)/m_FT. NaN
    where a mean is missing or an SE is (a single seed): no spread to show.
    """
    pair = _means(summary, dataset, arch, strategy, metric)
    if pair is None:
        return math.nan
    (m, se), (m_ft, se_ft) = pair
    values = (m, se, m_ft, se_ft)
    if not all(map(math.isfinite, values)) or m_ft == 0:
        return math.nan
    return 100.0 * math.sqrt(se**2 + (m / m_ft) ** 2 * se_ft**2) / abs(m_ft)


@dataclasses.dataclass(frozen=True)
class Best:
    """One row of Table 11: a dataset's best (arch, strategy) and its gain over FT."""

    dataset: str
    metric: str
    cell: Cell | None
    ft: Cell | None
    improvement: float


def best_per_dataset(summary: Summary) -> list[Best]:
    """Per dataset, the cell with the highest mean test headline metric (first in display
    order on a tie), FT of the same arch, and the relative improvement in percent."""
    out = []
    for d in summary.datasets:
        valued = [
            summary.cell(d, a, s)
            for s in summary.strategies
            for a in summary.archs
            if (d, a, s) in summary.cells and math.isfinite(summary.cell(d, a, s).mean())
        ]
        top = max((c.mean() for c in valued), default=math.nan)
        # A tie (means a rounding apart) goes to the first in display order, not to
        # whichever float came out a bit higher.
        best = next((c for c in valued if aggregate.same_mean(c.mean(), top)), None)
        ft = None if best is None else summary.cells.get((d, best.arch, BASELINE))
        gain = (
            math.nan if best is None else relative_improvement(summary, d, best.arch, best.strategy)
        )
        out.append(Best(d, summary.headline(d), best, ft, gain))
    return out


def beats_ft(
    summary: Summary,
    threshold: float = 0.1,
    count_metrics: Mapping[str, str] | None = None,
    points: bool = False,
) -> dict[tuple[str, str], tuple[int, int]]:
    """Table 12: (strategy, arch) -> (k, n): datasets where the strategy's relative
    improvement over FT, in the dataset's :func:`count_metric`, exceeds ``threshold``
    percent (``points``: where its gain, 100·(m − m_FT) in percentage points of the
    metric, exceeds ``threshold`` points; see :data:`COUNT_METRICS`), out of the n
    datasets where FT has a value and the strategy has one, or
    has one but none in the counted metric, or only failed runs. A strategy whose every
    run diverged (or whose counted metric is undefined) did not beat FT: the paper
    counts out of all its experiments, and leaving such a dataset out would raise the
    share of a strategy that often diverges. Datasets not yet run are left out."""
    metric = {d: count_metric(summary, d, count_metrics) for d in summary.datasets}
    out = {}
    for s in summary.strategies:
        if s == BASELINE:
            continue
        for a in summary.archs:
            k = n = 0
            for d in summary.datasets:
                gain = (points_gain if points else relative_improvement)(
                    summary, d, a, s, metric[d]
                )
                if math.isfinite(gain):
                    k, n = k + _more_than(gain, threshold), n + 1
                elif _failed_against_ft(summary, d, a, s) or _undefined_against_ft(
                    summary, d, a, s, metric[d]
                ):
                    n += 1
            out[(s, a)] = (k, n)
    return out


def _more_than(gain: float, threshold: float) -> bool:
    """``gain > threshold`` where a gain equal to it up to float rounding is not more:
    equal totals of correct answers give 0.10000000000000131 % for an exact 0.1 %."""
    return gain > threshold and not math.isclose(gain, threshold, rel_tol=1e-9, abs_tol=1e-9)


def _undefined_against_ft(
    summary: Summary, dataset: str, arch: str, strategy: str, metric: str
) -> bool:
    """The strategy's runs are done and have values, but not in the counted metric, where
    FT has one: an experiment it did not win, as one whose runs failed."""
    pair = _means(summary, dataset, arch, strategy, metric)
    cell = summary.cells.get((dataset, arch, strategy))
    if pair is None or cell is None or not cell.has_value:
        return False
    (m, _), (m_ft, _) = pair
    return math.isnan(m) and math.isfinite(m_ft) and cell.runs_done >= cell.runs_expected


def _failed_against_ft(summary: Summary, dataset: str, arch: str, strategy: str) -> bool:
    """The strategy's runs all failed where FT has a value: an experiment it lost.

    Only once every expected run is done: runs still to come may yet give a value.
    """
    ft = summary.cells.get((dataset, arch, BASELINE))
    cell = summary.cells.get((dataset, arch, strategy))
    if ft is None or not ft.has_value or cell is None or cell.status != FAILED:
        return False
    return cell.runs_done >= cell.runs_expected


@dataclasses.dataclass(frozen=True)
class Paired:
    """A strategy against FT on one dataset and arch, paired by seed (each at its own LR)."""

    dataset: str
    arch: str
    strategy: str
    metric: str
    seeds: tuple[int, ...]
    mean: float
    """Mean of (strategy − FT) over the shared seeds, as a fraction."""
    se: float
    t: float
    df: int
    p: float
    p_holm: float = math.nan

    @property
    def significant(self) -> bool:
        return math.isfinite(self.p) and self.p < ALPHA


def paired_vs_ft(summary: Summary) -> list[Paired]:
    """Every strategy ≠ FT against FT per dataset and arch, where both have a value.

    Two-sided paired t-test (``scipy.stats.ttest_rel``) over the seeds both
    cells have a finite test primary metric for; t and p are NaN with fewer
    than two pairs or no spread (an SE below :data:`SPREAD_TOLERANCE`: equal
    differences up to float rounding). ``p_holm`` is
    Holm's step-down adjustment over the strategies of one (dataset, arch),
    the family a reader scans.
    """
    from scipy import stats

    out: list[Paired] = []
    for d in summary.datasets:
        for a in summary.archs:
            ft = summary.cells.get((d, a, BASELINE))
            family = []
            for s in summary.strategies:
                other = summary.cells.get((d, a, s))
                if s == BASELINE or ft is None or other is None:
                    continue
                if not (ft.has_value and other.has_value):
                    continue
                seeds = tuple(
                    sorted(
                        k
                        for k in set(ft.per_seed) & set(other.per_seed)
                        if math.isfinite(ft.per_seed[k]) and math.isfinite(other.per_seed[k])
                    )
                )
                x = [other.per_seed[k] for k in seeds]
                y = [ft.per_seed[k] for k in seeds]
                mean, se = aggregate.mean_se(xi - yi for xi, yi in zip(x, y, strict=True))
                t = p = math.nan
                # "No spread" up to rounding: 0.55-0.60 and 0.60-0.65 differ in the last
                # bit, and a test set's accuracy moves in steps, so equal differences are
                # common; their t would be ~1e15, a "significant" artefact.
                if len(seeds) >= 2 and math.isfinite(se) and se > SPREAD_TOLERANCE:
                    res = stats.ttest_rel(x, y)
                    t, p = float(res.statistic), float(res.pvalue)
                family.append(Paired(d, a, s, ft.metric, seeds, mean, se, t, len(seeds) - 1, p))
            out.extend(_holm(family))
    return out


def _holm(family: list[Paired]) -> list[Paired]:
    tested = sorted((p.p, i) for i, p in enumerate(family) if math.isfinite(p.p))
    m = len(tested)
    adjusted: dict[int, float] = {}
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return [dataclasses.replace(p, p_holm=adjusted.get(i, math.nan)) for i, p in enumerate(family)]
