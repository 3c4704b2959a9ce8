"""Builds the report's tables (Tables 3-12, cost, paired comparison) from a :class:`Summary`.

Each table is built once, as a list of typed *lines*: one frozen dataclass
per line of its CSV (:class:`ValueLine`, :class:`CostLine`,
:class:`PairedLine`, :class:`BestLine`, :class:`CountLine`), holding the raw
values and marks, plus (as display-only fields) the little a reader sees that
the raw numbers cannot say, e.g. ``diverged``. Everything else comes from
that list through the shared code of this module (:func:`_long_table`,
:func:`_wide_table`), so a table's content is defined in one place:

- the CSV header is the line type's fields (:func:`csv_fields`), the CSV
  dicts are the lines' values;
- the display grid (Markdown, LaTeX) is laid out by the table's *slots*
  (:class:`Slot`: a column header and how it shows a line), either one row
  per line (cost, Table 11) or a strategy's lines spread over the slots of
  one row (Tables 3-10, paired, Table 12), where a slot without a line reads
  ``—``.

The builders (:func:`dataset_table`, :func:`cost_table`, :func:`paired_table`,
:func:`table11`, :func:`table12`, :func:`all_tables`) only format what
:mod:`medft_jax.report.cells` computed, into the :class:`~medft_jax.report.render.Table`
model of :mod:`medft_jax.report.render`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from operator import attrgetter
from typing import Any, Generic, NamedTuple, TypeVar

from medft_jax.report.aggregate import same_mean
from medft_jax.report.cells import (
    ALPHA,
    BASELINE,
    COMPLETE,
    MISSING,
    PARTIAL,
    UNVALIDATED,
    Best,
    Cell,
    Paired,
    Summary,
    baseline_filtered_out,
    beats_ft,
    best_per_dataset,
    count_metric,
    filters_text,
    ft_mean_zero,
    no_baseline,
    paired_vs_ft,
    protocol_unlike_paper,
    relative_improvement,
)
from medft_jax.report.paper import Z_FLAG, Compared, PaperTables, compare, table_number
from medft_jax.report.render import (
    DAGGER,
    DOUBLE_DAGGER,
    MISSING_TEXT,
    NO_SE,
    PILCROW,
    SECTION,
    UNDEFINED,
    Column,
    Entry,
    Table,
    arch_label,
    lr_text,
    lrs_text,
    metric_label,
    pct,
    seconds,
    slug,
    strategy_label,
)


def dataset_table_name(dataset: str) -> str:
    number = table_number(dataset)
    return f"table{number:02d}_{slug(dataset)}" if number else f"results_{slug(dataset)}"


def _incomplete(cell: Cell) -> bool:
    return cell.status != MISSING and cell.runs_done < cell.runs_expected


def _lrs_left_out(cell: Cell) -> bool:
    """A cell with a value chosen without the LRs where a run failed, or one left with no
    LR to choose because a run at one has no validation value (``unvalidated``)."""
    return (cell.has_value or cell.status == UNVALIDATED) and bool(cell.excluded_lrs)


def cell_marks(cell: Cell | None, metric: str) -> str:
    """The marks :func:`cell_text` puts after a cell's value, for the CSVs: ``†`` runs
    missing, ``‡`` an LR left out because a run at it failed, ``§`` fewer seeds than
    the cell has, ``¶`` a staged strategy tested before its final stage."""
    if cell is None or cell.status == MISSING:
        return ""
    mark = DAGGER if _incomplete(cell) else ""
    mark += DOUBLE_DAGGER if _lrs_left_out(cell) else ""
    if not cell.has_value:
        return mark
    if not math.isfinite(cell.test.get(metric, (math.nan, math.nan))[0]):
        return mark
    mark += SECTION if _fewer_seeds(cell, metric) else ""
    return mark + (PILCROW if cell.unstaged else "")


def cell_text(cell: Cell, metric: str) -> str:
    """``85.31 (0.42)`` and its :func:`cell_marks`; ``—``, ``diverged``, ``failed``, ``n/a``."""
    if cell.status == MISSING:
        return MISSING_TEXT
    mark = cell_marks(cell, metric)
    if not cell.has_value:
        return cell.failure_text + mark
    mean, se = cell.test.get(metric, (math.nan, math.nan))
    if not math.isfinite(mean):
        return UNDEFINED + mark
    return f"{pct(mean)} ({pct(se)}){mark}"


def _failure(cell: Cell | None) -> str:
    """``diverged`` or ``failed`` for a cell of failure notes only (its ``status`` says
    ``failed`` of both), else empty."""
    return "" if cell is None or cell.status == MISSING or cell.has_value else cell.failure_text


def _fewer_seeds(cell: Cell, metric: str) -> bool:
    """A value over fewer seeds than the cell has (the metric undefined for some)."""
    return cell.has_value and 0 < cell.n.get(metric, len(cell.seeds)) < len(cell.seeds)


def _over(c: Cell) -> str:
    """What a partial cell's value rests on: fewer seeds at the chosen LR, or all of them
    (the missing runs are at other LRs, so only the LR choice may change)."""
    if not c.has_value or c.lr is None:
        return ""
    if len(c.seeds) < c.seeds_expected:
        return (
            f"; the value is over {len(c.seeds)} of {c.seeds_expected} seeds at lr {lr_text(c.lr)}"
        )
    return (
        f"; the value has every seed of lr {lr_text(c.lr)} (the missing runs are at other LRs, "
        "so the LR choice may change)"
    )


def _cell_notes(cells: Iterable[Cell], metrics: Sequence[str] = ()) -> list[str]:
    """What the †, ‡ and § of each marked cell stand for."""
    notes = []
    for c in cells:
        name = f"{strategy_label(c.strategy)}, {arch_label(c.arch)}"
        for m in metrics:
            if _fewer_seeds(c, m):
                notes.append(
                    f"{SECTION} {name}: {metric_label(m)} over {c.n[m]} of {len(c.seeds)} "
                    "seeds (undefined for the others)"
                )
        if _incomplete(c):
            notes.append(f"{DAGGER} {name}: {c.runs_done} of {c.runs_expected} runs{_over(c)}")
        if _lrs_left_out(c):
            failed = [lr for lr in c.excluded_lrs if lr not in c.unvalidated_lrs]
            groups = [(failed, c.failed_text), (c.unvalidated_lrs, "has no validation value")]
            why = [f"lr {lrs_text(lrs)} (a run there {what})" for lrs, what in groups if lrs]
            rest = (
                "the value is from the best of the other LRs"
                if c.has_value
                else "no LR was left to choose, so the cell has no value"
            )
            notes.append(
                f"{DOUBLE_DAGGER} {name}: {' and '.join(why)} left out of the choice; {rest}"
            )
        if c.unstaged:
            notes.append(
                f"{PILCROW} {name}: {c.unstaged} of {len(c.seeds)} runs were tested from before "
                f"the final stage (epoch {(c.final_stage_epoch or 0) + 1}; the run ended, or its "
                "best validation epoch came, earlier): the blocks unfrozen last never trained "
                "in the model tested"
            )
    return notes


def _tie_notes(cells: Iterable[Cell]) -> list[str]:
    """One note per cell whose LR was chosen by an exact tie on the mean validation metric
    (a flat metric: an imbalanced split's majority-class rate at every LR): the run and
    ``select`` say so, and the table showed the tie rule's pick as any other choice."""
    notes = []
    for c in cells:
        tied = c.tied_lrs
        if tied and c.lr is not None:
            notes.append(
                f"{strategy_label(c.strategy)}, {arch_label(c.arch)}: lr {lr_text(c.lr)} tied "
                f"with lr {lrs_text(tied)} on the mean validation metric "
                f"({pct(c.lr_means[c.lr])}); a tie goes to the smaller LR, so the choice "
                "among them is not the data's"
            )
    return notes


CELL_TEXTS = {
    MISSING_TEXT: "not run yet (in Cost: no chosen LR, or its time unknown)",
    "diverged": "no LR with a value, its runs' loss turned NaN or infinite",
    "failed": "no LR with a value, its runs failed (their failure notes say why)",
    UNVALIDATED: "its runs have no validation value to choose an LR by",
    UNDEFINED: "the metric is undefined for its test split (one class present, say)",
    f"({NO_SE})": "a single seed, so no SE",
}
"""What a dataset table's cells without a number say, for its own notes (a table pasted
into a paper carried "diverged" and "(–)" that only the index explained)."""


def _text_notes(texts: Sequence[str], summary: Summary | None = None) -> list[str]:
    """One note naming each of :data:`CELL_TEXTS` that a table's cell ``texts`` (its
    metrics' and its Cost column's) show, in that order; under an ``--only`` of LRs or
    seeds a cell without runs may have had them (:func:`_absent`)."""
    shown = set(texts)

    def occurs(text: str) -> bool:  # a word begins its cell (marks follow); an SE is inside
        return any(text in t if text.startswith("(") else t.startswith(text) for t in shown)

    meanings = {**CELL_TEXTS, MISSING_TEXT: f"{_absent(summary, 'yet')} (in Cost: no chosen "
                "LR, or its time unknown)"}  # fmt: skip
    said = [f"{text}: {meanings[text]}" for text in CELL_TEXTS if occurs(text)]
    return ["; ".join(said) + "."] if said else []


def _best(values: Mapping[Any, float]) -> set[Any]:
    """Keys of the highest value, compared as shown (percent, 2 decimals): a tie a reader
    sees is a tie."""
    shown = {k: pct(v) for k, v in values.items() if math.isfinite(v)}
    shown = {k: float(v) for k, v in shown.items()}
    top = max(shown.values(), default=None)
    return {k for k, v in shown.items() if v == top}


def _cells_of(summary: Summary, dataset: str) -> list[Cell]:
    return [
        summary.cells[(dataset, a, s)]
        for s in summary.strategies
        for a in summary.archs
        if (dataset, a, s) in summary.cells
    ]


def _cell_fields(c: Cell) -> dict[str, Any]:
    """The fields every line about one cell starts from."""
    return {
        "dataset": c.dataset,
        "strategy": c.strategy,
        "arch": c.arch,
        "status": c.status,
        "runs_done": c.runs_done,
        "runs_expected": c.runs_expected,
        "lr": c.lr,
        "excluded_lrs": lrs_text(c.excluded_lrs),
        "tied_lrs": lrs_text(c.tied_lrs),
    }


_DISPLAY_ONLY = {"display_only": True}
"""Field metadata: shown in Markdown / LaTeX, left out of the CSV (which has the raw values)."""


def _shown(**kwargs: Any) -> Any:
    """A display-only line field (see :data:`_DISPLAY_ONLY`)."""
    return dataclasses.field(metadata=_DISPLAY_ONLY, **kwargs)


# --- from lines to a Table (shared by every builder) -----------------------------------------

L = TypeVar("L")


class Head(NamedTuple):
    """What a table says around its lines."""

    name: str
    """File stem: ``tables/<name>.md|.tex|.csv``."""
    title: str
    notes: list[str]


@dataclasses.dataclass(frozen=True)
class Slot(Generic[L]):
    """One display column: its header, and how it shows the line that falls in it."""

    column: Column
    show: Callable[[L], Entry | str]
    """The entry, or its plain text."""
    key: Hashable = None
    """Wide tables: which of a row's lines the slot shows (the one whose ``slot_of`` it is)."""


def csv_fields(kind: type) -> tuple[str, ...]:
    """A line type's CSV header: its fields in order, less the display-only ones."""
    return tuple(f.name for f in dataclasses.fields(kind) if not f.metadata.get("display_only"))


def _table(
    head: Head,
    kind: type,
    lines: Sequence[Any],
    columns: list[Column],
    rows: list[list[Entry]],
) -> Table:
    """The :class:`Table` of ``lines``: its CSV header and dicts come from ``kind``'s fields."""
    name, title, notes = head
    fields = csv_fields(kind)
    records = [{f: getattr(x, f) for f in fields} for x in lines]
    return Table(name, title, columns, rows, notes, fields, records)


def _entry(shown: Entry | str) -> Entry:
    return shown if isinstance(shown, Entry) else Entry(shown)


def _long_table(head: Head, kind: type[L], lines: Sequence[L], slots: Sequence[Slot[L]]) -> Table:
    """A table showing one row per line, one column per slot."""
    rows = [[_entry(slot.show(x)) for slot in slots] for x in lines]
    return _table(head, kind, lines, [slot.column for slot in slots], rows)


def _wide_table(
    head: Head,
    kind: type[L],
    lines: Sequence[L],
    slots: Sequence[Slot[L]],
    strategies: Sequence[str],
    slot_of: Callable[[L], Hashable],
) -> Table:
    """A table showing one row per strategy: its label, then per slot the strategy's line
    whose ``slot_of`` is the slot's key, or ``—`` where it has none."""
    at = {(x.strategy, slot_of(x)): x for x in lines}
    if len(at) != len(lines):
        raise AssertionError(f"{kind.__name__}: two lines fall in one slot")  # a builder bug

    def shown(s: str, slot: Slot[L]) -> Entry:
        line = at.get((s, slot.key))
        return Entry(MISSING_TEXT) if line is None else _entry(slot.show(line))

    rows = [[Entry(strategy_label(s)), *(shown(s, slot) for slot in slots)] for s in strategies]
    columns = [Column("Strategy", align="l"), *(slot.column for slot in slots)]
    return _table(head, kind, lines, columns, rows)


# --- Tables 3-10 -----------------------------------------------------------------------------

COST_METRIC = "device_seconds"
"""The ``metric`` of a dataset table's cost line."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ValueLine:
    """Tables 3-10: one test metric of one cell, or the cell's cost (:data:`COST_METRIC`)."""

    dataset: str
    strategy: str
    arch: str
    metric: str
    mean: float | None
    """Fraction (device-seconds for the cost); None where the cell has none."""
    se: float | None = None
    n: int | None = None
    """Seeds the mean is over; None for a cell without a value and for the cost."""
    status: str
    runs_done: int
    runs_expected: int
    lr: float | None
    excluded_lrs: str = ""
    """LRs left out of the choice because a run at them failed (space-separated)."""
    bold: bool = False
    """Best mean of its arch and metric, as shown (ties all marked)."""
    underline: bool = False
    """Best mean of its metric over all archs, as shown."""
    marks: str = ""
    """The marks shown after the value (:func:`cell_marks`: ``†‡§¶``); none for the cost.
    Last of the CSV's columns with ``failure``: scripts reading by position still read."""
    failure: str = ""
    """``diverged`` or ``failed`` where the cell has failure notes only."""
    tied_lrs: str = ""
    """LRs whose mean validation metric equals the chosen LR's (space-separated): the
    choice among them was the tie rule's (the smaller). Last, after ``failure``, so
    scripts reading by position still read."""
    text: str = _shown()
    """How it reads: ``85.31 (0.42)†``, ``diverged``, ``n/a``, device-seconds ``1,234``."""


def _value_lines(
    cells: Mapping[tuple[str, str], Cell],
    archs: Sequence[str],
    strategies: Sequence[str],
    metrics: Sequence[str],
) -> list[ValueLine]:
    """Per strategy and arch with a cell: one line per metric, then its cost; unmarked."""
    lines = []
    for s in strategies:
        for a in archs:
            c = cells.get((a, s))
            if c is None:
                continue
            for m in metrics:
                mean, se = c.test.get(m, (None, None))
                n = c.n.get(m) if c.has_value else None
                text = cell_text(c, m)
                marks, failure = cell_marks(c, m), _failure(c)
                lines.append(
                    ValueLine(
                        **_cell_fields(c),
                        metric=m,
                        mean=mean,
                        se=se,
                        n=n,
                        text=text,
                        marks=marks,
                        failure=failure,
                    )
                )
            cost = c.cost.device_seconds if c.cost else None
            lines.append(
                ValueLine(**_cell_fields(c), metric=COST_METRIC, mean=cost, text=seconds(cost))
            )
    return lines


def _marked(lines: list[ValueLine]) -> list[ValueLine]:
    """The lines with bold (best per arch and metric) and underline (best per metric over
    all archs) set, from the means of the cells that have a value."""

    def key(x: ValueLine) -> tuple[str, str, str]:
        return (x.arch, x.strategy, x.metric)

    valued = {
        key(x): x.mean if x.status in (COMPLETE, PARTIAL) and x.mean is not None else math.nan
        for x in lines
        if x.metric != COST_METRIC
    }
    bold: set[tuple[str, str, str]] = set()
    under: set[tuple[str, str, str]] = set()
    for a, m in {(a, m) for a, _, m in valued}:
        bold |= _best({k: v for k, v in valued.items() if (k[0], k[2]) == (a, m)})
    for m in {m for _, _, m in valued}:
        under |= _best({k: v for k, v in valued.items() if k[2] == m})
    return [dataclasses.replace(x, bold=key(x) in bold, underline=key(x) in under) for x in lines]


def _value_entry(x: ValueLine) -> Entry:
    return Entry(x.text, bold=x.bold, underline=x.underline)


def data_notes(protocol: Mapping[str, Any]) -> list[str]:
    """What a dataset's records say of its images that changes how its numbers read:
    evaluation images that are copies of training images of their label (inflated scores), and
    images ``--skip-bad-images`` left out (numbers of fewer images than were given)."""
    notes = []
    copies = protocol.get("copies") or {}
    if copies:
        each = " and ".join(f"{n} {split}" for split, n in copies.items())
        whose = (
            " (counted by a toolkit before 2026-12-06, copies under another label included: "
            "those deflate)"
            if protocol.get("copies_any_label")
            else " (multilabel: under any labels, each label they share inflated)"
            if protocol.get("multilabel")
            else " of their label"
        )
        notes.append(
            f"Inflated: {each} image(s) are copies of training images{whose}, scored as if "
            "unseen: these scores are higher than on independent images."
        )
    leaked = protocol.get("patients_across")
    if leaked:
        n, example = leaked
        notes.append(
            f"Inflated: {n} DICOM PatientID(s) have files in more than one split (e.g. "
            f"{example}): a patient's images in training and evaluation, scored as if unseen; "
            "these scores are higher than on independent patients (group the files by patient "
            "and run again)."
        )
    skipped = protocol.get("skipped") or {}
    if skipped:
        each = ", ".join(f"{split} {n}" for split, n in skipped.items())
        notes.append(
            f"{sum(skipped.values())} unreadable image(s) left out by --skip-bad-images ({each})."
        )
    unofficial = protocol.get("unofficial") or []
    if unofficial:
        notes.append(
            "Not MedMNIST's published file: runs read a .npz of MD5 "
            f"{', '.join(unofficial)}, another than MedMNIST's own (an edited or re-saved "
            "copy): these numbers are not comparable with MedMNIST's benchmark."
        )
    return notes


def _one_lr_kept(summary: Summary) -> str | None:
    """The LR of ``--only lr=X`` (one value): every value is X's, none chosen."""
    kept = summary.filters.get("lr")
    return next(iter(kept)) if kept is not None and len(kept) == 1 else None


def lr_phrase(summary: Summary) -> str:
    """How the shown values' LR was picked, for a caption: on validation, among the LRs
    ``--only`` keeps, or none (one kept: the values are that LR's, whatever validation says
    of the others)."""
    fixed = _one_lr_kept(summary)
    if fixed is not None:
        return f"at LR {fixed} (--only lr={fixed}; not chosen on validation)"
    kept = summary.filters.get("lr")
    if kept:
        return f"at the LR chosen on validation among {', '.join(sorted(kept))} (--only)"
    return "at the LR chosen on validation"


def _absent(summary: Summary | None, where: str) -> str:
    """What a cell without runs means: "not run <where>", or, where ``--only`` keeps some
    LRs or seeds (the cell's runs may all be at others), "not run <where> or left out by
    --only"."""
    filtered = summary is not None and {"lr", "seed"} & set(summary.filters)
    return f"not run {where}" + (" or left out by --only" if filtered else "")


def _the_lr(summary: Summary) -> str:
    """The LR whose runs a cost is of: "the chosen LR", or under ``--only lr=X`` (nothing
    chosen) that one."""
    fixed = _one_lr_kept(summary)
    return "the chosen LR" if fixed is None else f"LR {fixed} (--only)"


def filter_note(summary: Summary) -> str | None:
    """A note for every table of a report with ``--only``: its numbers are over the runs
    the filters keep (the others under ``--runs`` count nowhere)."""
    if not summary.filters:
        return None
    return (
        f"Only the runs --only keeps ({filters_text(summary)}); the others under --runs count "
        "nowhere here."
    )


def dataset_table(summary: Summary, dataset: str) -> Table:
    """Tables 3-10: strategies × (arch × two metrics + cost), mean (SE) in percent."""
    metrics = summary.metrics[dataset]
    archs, strategies = summary.archs_of(dataset), summary.strategies_of(dataset)
    cells = {
        (a, s): summary.cells[(dataset, a, s)]
        for a in archs
        for s in strategies
        if (dataset, a, s) in summary.cells
    }
    slots: list[Slot[ValueLine]] = []
    for a in archs:
        slots += [
            Slot(Column(metric_label(m), arch_label(a)), _value_entry, (a, m)) for m in metrics
        ]
        slots.append(Slot(Column("Cost (device-s)", arch_label(a)), _value_entry, (a, COST_METRIC)))
    number = table_number(dataset)
    prefix = f"Table {number}: " if number else ""
    title = (
        f"{prefix}{dataset}: test {', '.join(metric_label(m) for m in metrics)}, "
        f"mean (SE) over seeds in %, {lr_phrase(summary)}"
    )
    fixed = _one_lr_kept(summary)
    chosen = (
        f"LR {fixed}, the one --only keeps (the others under --runs are not compared)."
        if fixed is not None
        else f"LR chosen by the mean validation {metric_label(summary.primary[dataset])} over "
        "seeds."
    )
    lines = _marked(_value_lines(cells, archs, strategies, metrics))
    notes = [
        f"Bold: best mean per arch and metric; underlined: best over all archs. {chosen} Cost: "
        f"device-seconds of one run at {_the_lr(summary)} (mean over seeds).",
        *_cell_notes(
            (cells[(a, s)] for s in strategies for a in archs if (a, s) in cells), metrics
        ),
        *_tie_notes(cells[(a, s)] for s in strategies for a in archs if (a, s) in cells),
        *_text_notes([x.text for x in lines], summary),
        *data_notes(summary.protocol.get(dataset, {})),
    ]
    head = Head(dataset_table_name(dataset), title, notes)
    return _wide_table(head, ValueLine, lines, slots, strategies, lambda x: (x.arch, x.metric))


# --- cost ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class CostLine:
    """The cost table: what one cell cost (:class:`~medft_jax.report.cells.Cost`)."""

    dataset: str
    strategy: str
    arch: str
    status: str
    lr: float | None
    excluded_lrs: str = ""
    device_seconds: float | None = None
    images_per_s: float | None = None
    epochs: float | None = None
    runs_done: int
    runs_expected: int
    total_device_seconds: float | None = None
    total_runs: int | None = None
    tied_lrs: str = ""
    """As :attr:`ValueLine.tied_lrs`; last, so scripts reading by position still read."""


def _cost_line(c: Cell) -> CostLine:
    return CostLine(**_cell_fields(c), **(dataclasses.asdict(c.cost) if c.cost else {}))


def _signed(x: float) -> str:
    """``+1.25``; a value that rounds to zero as ``+0.00``, whichever its sign (a
    difference of -7e-15 read ``-0.00`` beside identical rows' ``+0.00``)."""
    return f"{round(x, 2) + 0.0:+.2f}"


def _finite(x: float | None, spec: str) -> str:
    return format(x, spec) if x is not None and math.isfinite(x) else MISSING_TEXT


def _gain_text(x: float | None) -> str:
    """A gain in percent as :func:`_signed` writes it (a tie's -0.001 % read ``-0.00``),
    or ``—``."""
    return _signed(x) if x is not None and math.isfinite(x) else MISSING_TEXT


COST_SLOTS: tuple[Slot[CostLine], ...] = (
    Slot(Column("Strategy", align="l"), lambda x: strategy_label(x.strategy)),
    Slot(Column("Arch", align="l"), lambda x: arch_label(x.arch)),
    Slot(Column("LR"), lambda x: lr_text(x.lr) if x.lr is not None else MISSING_TEXT),
    Slot(Column("Device-s / run"), lambda x: seconds(x.device_seconds)),
    Slot(Column("Images/s"), lambda x: _finite(x.images_per_s, ",.1f")),
    Slot(Column("Epochs"), lambda x: _finite(x.epochs, ".1f")),
    Slot(Column("Runs"), lambda x: f"{x.runs_done}/{x.runs_expected}"),
    Slot(Column("Device-s, all LRs"), lambda x: seconds(x.total_device_seconds)),
)


def cost_table(summary: Summary, dataset: str) -> Table:
    """What each cell cost: per run at the chosen LR, and the whole LR search."""
    title = f"Cost on {dataset}: device-seconds, throughput, epochs"
    notes = [
        f"Device-s / run, images/s and epochs: mean over the seeds of {_the_lr(summary)}; "
        "all LRs: sum over every finished run of the cell (failed runs carry no time). "
        "Device-s: (the epochs' seconds + the extraction of cached features, charged to "
        "each run that trained from them) × devices; in all LRs the extraction counts "
        "once. Images/s leaves out head steps on cached features. Compilation time is "
        "not included."
    ]
    cells = _cells_of(summary, dataset)
    notes += _no_cost_notes(cells)
    lines = [_cost_line(c) for c in cells]
    return _long_table(Head(f"cost_{slug(dataset)}", title, notes), CostLine, lines, COST_SLOTS)


def _no_cost_notes(cells: Iterable[Cell]) -> list[str]:
    """Why a cell that ran reads ``—`` for its device-seconds per run (``—`` alone means
    no run at all): it has no value, so no chosen LR; or a run at its chosen LR lacks a
    time (``train_seconds``, or that of the cached features it reused where they were
    written before their extraction time was recorded)."""
    notes = []
    for c in cells:
        name = f"{strategy_label(c.strategy)}, {arch_label(c.arch)}"
        if c.status != MISSING and not c.has_value:
            notes.append(
                f"{MISSING_TEXT} {name}: {c.failure_text}, no LR chosen, so no cost per run"
            )
        elif c.has_value and not (c.cost and math.isfinite(c.cost.device_seconds)):
            notes.append(
                f"{MISSING_TEXT} {name}: device-seconds per run unknown, a run at the chosen "
                "LR lacks a time (such as one that reused cached features written before "
                "their extraction time was recorded)"
            )
    return notes


# --- paired comparison -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairedLine:
    """The paired table: a strategy minus FT on one arch (a :class:`~.cells.Paired`)."""

    dataset: str
    arch: str
    strategy: str
    metric: str
    n: int
    """Seeds paired."""
    seeds: tuple[int, ...]
    mean_diff: float
    se_diff: float
    t: float
    df: int
    p: float
    p_holm: float
    significant: bool | None
    """p < 0.05; None where no test was run (no p), an empty field in the CSV."""
    cell_seeds: int = _shown()
    """Seeds of the larger of the two cells: fewer paired ones read ``[n=k]``."""


def _paired_line(summary: Summary, p: Paired) -> PairedLine:
    sides = (summary.cells[(p.dataset, p.arch, s)] for s in (p.strategy, BASELINE))
    return PairedLine(
        dataset=p.dataset,
        arch=p.arch,
        strategy=p.strategy,
        metric=p.metric,
        n=len(p.seeds),
        seeds=p.seeds,
        mean_diff=p.mean,
        se_diff=p.se,
        t=p.t,
        df=p.df,
        p=p.p,
        p_holm=p.p_holm,
        significant=p.significant if math.isfinite(p.p) else None,
        cell_seeds=max(len(c.seeds) for c in sides),
    )


def _diff_text(x: PairedLine) -> str:
    text = f"{pct(x.mean_diff, sign=True)} ({pct(x.se_diff)})"
    return text + (f" [n={x.n}]" if x.n < x.cell_seeds else "")  # a seed without a partner


def _p_text(p: float, significant: bool = False) -> str:
    if not math.isfinite(p):
        return UNDEFINED
    text = f"{p:.3f}" if p >= 0.001 else "<0.001"
    return text + ("*" if significant else "")


def _untested_text(tests: Iterable[tuple[int, float]]) -> str:
    """What ``n/a`` in a p column stands for, given the (seeds paired, p) of the comparisons
    shown: one seed paired, or differences all the same; either way no spread to test."""
    untested = [n for n, p in tests if not math.isfinite(p)]
    one = any(n < 2 for n in untested)
    same = any(n >= 2 for n in untested)
    if one and not same:
        return "one seed paired"
    if same and not one:
        return "every seed's difference the same (up to rounding)"
    return "one seed paired, or every seed's difference the same (up to rounding)"


def _t_needed(df: int) -> float:
    """|t| beyond which a two-sided test with ``df`` degrees of freedom gives p < ALPHA."""
    from scipy import stats

    return float(stats.t.ppf(1 - ALPHA / 2, df))


def _power_text(tests: Iterable[tuple[int, float]]) -> str:
    """What p < 0.05 needs with the numbers of seeds paired (``With 3 seeds (df = 2) p <
    0.05 needs |t| > 4.30``), and that so few seeds give the test little power; ``""``
    where no comparison has two seeds."""
    counts = sorted({n for n, _ in tests if n >= 2})
    if not counts:
        return ""
    needs = ", with ".join(
        f"{n} seeds (df = {n - 1}) p < {ALPHA:g} needs |t| > {_t_needed(n - 1):.2f}" for n in counts
    )
    weak = ": the test has little power, a real difference often goes unmarked"
    return f"With {needs}{weak if counts[-1] <= 5 else ''}."


def _each_at(summary: Summary | None) -> str:
    """Which LR a paired Δ's two sides are at: each its own chosen one, or under
    ``--only lr=X`` (nothing chosen) that one."""
    fixed = None if summary is None else _one_lr_kept(summary)
    return "each at its own chosen LR" if fixed is None else f"both at LR {fixed} (--only)"


def paired_note(pairs: Iterable[Paired] = (), summary: Summary | None = None) -> str:
    """What the paired comparison is and is not; the index shows it once. ``pairs`` (every
    comparison of the report) decide what the note says about the seeds and ``n/a``."""
    tests = [(len(p.seeds), p.p) for p in pairs]
    power = _power_text(tests)
    return (
        "Paired comparison with FT: per seed, the strategy's test headline metric (the first "
        "column of the dataset's table) minus FT's "
        f"({_each_at(summary)}; only seeds both have), mean (SE) in percentage points; "
        "two-sided paired t-test (scipy.stats.ttest_rel), * marks p < 0.05. "
        + (f"{power} " if power else "")
        + "The p column is not corrected for the many "
        "comparisons; the Holm column adjusts p (Holm step-down) over the strategies of one "
        f"dataset and arch that have a p. n/a: {_untested_text(tests)}, so no spread, no t "
        "and no p (nor a place in Holm's count); the CSV's significant is then empty."
        + _sign_flip_text(tests)
    )


def _sign_flip_text(tests: Sequence[tuple[int, float]]) -> str:
    """Why a t-test: an exact sign-flip test's smallest two-sided p is 2/2^n with n pairs
    (0.25 with the protocol's 3 seeds), said for the numbers of seeds this report pairs."""
    counts = sorted({n for n, _ in tests if n >= 2})
    if not counts:
        return ""
    floors = ", ".join(f"p = {2.0 ** (1 - n):g} with {n} pairs" for n in counts)
    why = ", which is why the t-test is used" if 2.0 ** (1 - counts[-1]) > ALPHA else ""
    return f" An exact sign-flip (permutation) test cannot go below {floors}{why}."


def paired_short_note(lines: Sequence[PairedLine], summary: Summary | None = None) -> str:
    """The paired table's note: its ``n/a`` and its power follow the seeds it pairs."""
    tests = [(x.n, x.p) for x in lines]
    power = _power_text(tests)
    return (
        f"Δ: strategy minus FT per seed ({_each_at(summary)}), mean (SE) in percentage "
        "points. p: two-sided paired t-test (scipy.stats.ttest_rel), * p < 0.05, not "
        "corrected for multiple comparisons; p Holm: Holm-adjusted over the strategies of "
        f"one dataset and arch that have a p. n/a: {_untested_text(tests)}, no spread to "
        "test. " + (f"{power} " if power else "") + "[n=k]: only k seeds paired."
    )


def paired_table(summary: Summary, dataset: str) -> Table:
    """Beyond the paper: each strategy minus FT, paired by seed, with a paired t-test."""
    archs = [a for a in summary.archs if (dataset, a, BASELINE) in summary.cells]
    strategies = [s for s in summary.strategies_of(dataset) if s != BASELINE]
    by_place = {(p.strategy, p.arch): p for p in paired_vs_ft(summary) if p.dataset == dataset}
    lines = [
        _paired_line(summary, by_place[(s, a)])
        for s in strategies
        for a in archs
        if (s, a) in by_place
    ]
    slots: list[Slot[PairedLine]] = []
    for a in archs:
        group = arch_label(a)
        slots += [
            Slot(Column("Δ (SE)", group), _diff_text, a),
            Slot(Column("p", group), lambda x: _p_text(x.p, x.significant), a),
            Slot(Column("p Holm", group), lambda x: _p_text(x.p_holm), a),
        ]
    title = (
        f"{dataset}: test {metric_label(summary.headline(dataset))} minus FT's, paired by seed "
        "(percentage points), paired t-test"
    )
    missing = no_baseline(summary, dataset)
    note = missing or paired_short_note(lines, summary)
    head = Head(f"paired_{slug(dataset)}", title, [note])
    return _wide_table(head, PairedLine, lines, slots, strategies, attrgetter("arch"))


# --- Table 11 --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class BestLine:
    """Table 11: a dataset's best (arch, strategy) and FT of the same arch."""

    dataset: str
    metric: str
    arch: str | None
    strategy: str | None
    mean: float | None
    se: float | None
    status: str
    ft_mean: float | None
    ft_se: float | None
    ft_status: str
    improvement_pct: float
    marks: str
    """The best cell's marks (:func:`cell_marks`)."""
    ft_marks: str
    """FT's cell's marks."""
    cells_incomplete: str = ""
    """The dataset's other cells with runs missing or none run (``arch/strategy``, ``;``
    between): the best was chosen without their full values, and may change with them."""
    cells_expected: int = 0
    """The dataset's cells (archs × strategies) the best was chosen among."""
    text: str = _shown()
    """How the best cell reads (:func:`cell_text`)."""
    ft_text: str = _shown()
    """How FT's cell reads."""


def _unsettled(summary: Summary, b: Best) -> list[Cell]:
    """The cells of ``b``'s dataset besides the best and its FT (marked on their own) with
    runs missing or none run: a best chosen without them may not be the best."""
    shown = {x.key for x in (b.cell, b.ft) if x is not None}
    return [
        c
        for c in _cells_of(summary, b.dataset)
        if c.key not in shown and (c.status == MISSING or _incomplete(c))
    ]


def _best_line(summary: Summary, b: Best) -> BestLine:
    c, ft = b.cell, b.ft
    unsettled = _unsettled(summary, b) if c is not None else []
    mean, se = c.test.get(b.metric, (None, None)) if c else (None, None)
    ft_mean, ft_se = ft.test.get(b.metric, (None, None)) if ft else (None, None)
    return BestLine(
        dataset=b.dataset,
        metric=b.metric,
        arch=c.arch if c else None,
        strategy=c.strategy if c else None,
        mean=mean,
        se=se,
        status=c.status if c else MISSING,
        ft_mean=ft_mean,
        ft_se=ft_se,
        ft_status=ft.status if ft else MISSING,
        improvement_pct=b.improvement,
        marks=cell_marks(c, b.metric),
        ft_marks=cell_marks(ft, b.metric),
        cells_incomplete=" ".join(f"{x.arch}/{x.strategy}" for x in unsettled),
        cells_expected=len(_cells_of(summary, b.dataset)),
        text=cell_text(c, b.metric) if c else MISSING_TEXT,
        ft_text=cell_text(ft, b.metric) if ft else MISSING_TEXT,
    )


def _among(x: BestLine) -> str:
    """`` (1 other cell of 12 incomplete)`` where other cells of the dataset than the best
    and FT (marked on their own) have runs missing: "6 of 8 cells incomplete" read as two
    complete where all eight were partial."""
    if not x.cells_incomplete:
        return ""
    k = len(x.cells_incomplete.split())
    return f" ({k} other cell{'s' if k > 1 else ''} of {x.cells_expected} incomplete)"


def _unsettled_notes(summary: Summary, bests: Sequence[Best]) -> list[str]:
    """Per dataset whose best was chosen with other cells incomplete, those cells named."""
    notes = []
    for b in bests:
        unsettled = _unsettled(summary, b) if b.cell is not None else []
        if not unsettled:
            continue
        named = "; ".join(
            f"{strategy_label(c.strategy)}, {arch_label(c.arch)} ("
            + ("not run" if c.status == MISSING else f"{c.runs_done} of {c.runs_expected} runs")
            + ")"
            for c in unsettled
        )
        notes.append(
            f"{b.dataset}: chosen while other cells have runs missing: {named}; the best may "
            "change once their runs are in."
        )
    return notes


def _or_missing(name: str | None, label: Callable[[str], str]) -> str:
    return label(name) if name is not None else MISSING_TEXT


TABLE11_SLOTS: tuple[Slot[BestLine], ...] = (
    Slot(Column("Dataset", align="l"), lambda x: x.dataset + _among(x)),
    Slot(Column("Metric", align="l"), lambda x: metric_label(x.metric)),
    Slot(Column("Arch", align="l"), lambda x: _or_missing(x.arch, arch_label)),
    Slot(Column("Strategy", align="l"), lambda x: _or_missing(x.strategy, strategy_label)),
    Slot(Column("Best, mean (SE)"), lambda x: x.text),
    Slot(Column("FT, same arch"), lambda x: x.ft_text),
    Slot(Column("Improvement (%)"), lambda x: _gain_text(x.improvement_pct)),
)


def _tied_with_best(summary: Summary, bests: Sequence[Best]) -> list[str]:
    """A note per dataset where other cells equal the best as the tables show it (the
    dataset's table underlines them all): Table 11 names the highest mean before rounding
    (the first in display order where those are equal), and the gain of another, over its
    own arch's FT, can differ a lot."""
    notes = []
    for b in bests:
        if b.cell is None:
            continue
        cells = [c for c in _cells_of(summary, b.dataset) if c.has_value]
        tied = _best({c.key: c.mean(b.metric) for c in cells}) - {b.cell.key}
        others = [
            f"{strategy_label(c.strategy)}, {arch_label(c.arch)} ("
            f"{_gain_text(relative_improvement(summary, *c.key))} % over FT)"
            for c in cells
            if c.key in tied
        ]
        if not others:
            continue
        first = next(c for c in cells if c.key in tied or c.key == b.cell.key)
        same = [  # tied before rounding too: named over them by the order alone
            f"{strategy_label(c.strategy)}, {arch_label(c.arch)}"
            for c in cells
            if c.key in tied and same_mean(c.mean(b.metric), b.cell.mean(b.metric))
        ]
        why = (
            "the first in the table's order is named"
            if first.key == b.cell.key
            # named by the unrounded mean, not the order: say so, with the digits
            else (
                "it is named for its higher mean before rounding "
                f"({100 * b.cell.mean(b.metric):.4f} against {strategy_label(first.strategy)}, "
                f"{arch_label(first.arch)}'s {100 * first.mean(b.metric):.4f})"
                + (
                    f", and over {'; '.join(same)}, of the same mean, as the first in the "
                    "table's order"
                    if same
                    else ""
                )
            )
        )
        notes.append(
            f"{b.dataset}: tied as shown with the best ({strategy_label(b.cell.strategy)}, "
            f"{arch_label(b.cell.arch)}): {'; '.join(others)}; {why}."
        )
    return notes


def table11(summary: Summary) -> Table:
    """Table 11: per dataset, the best (arch, strategy) and its relative gain over FT."""
    bests = best_per_dataset(summary)
    notes = [
        "Best: highest mean test headline metric (the first column of the dataset's table, "
        "named under Metric) over every arch and strategy of the dataset; improvement = "
        "100·(m − m_FT)/m_FT against FT of the same arch."
    ]
    shown = [(b, c) for b in bests for c in (b.cell, b.ft) if c is not None]  # FT's marked too
    if any(_incomplete(c) for _, c in shown):
        notes.append(f"{DAGGER}: a cell with runs missing (see the dataset's table).")
    if any(_fewer_seeds(c, b.metric) for b, c in shown):
        notes.append(
            f"{SECTION}: a value over fewer seeds than the cell has, the metric undefined "
            "for the others (see the dataset's table)."
        )
    if any(c.unstaged for _, c in shown):
        notes.append(
            f"{PILCROW}: a staged cell whose runs were tested from before their final stage "
            "(see the dataset's table)."
        )
    if any(c is not None and _lrs_left_out(c) for b in bests for c in (b.cell, b.ft)):
        notes.append(
            f"{DOUBLE_DAGGER}: a cell whose LR was chosen without an LR where a run failed "
            "or had no validation value (see the dataset's table)."
        )
    notes += _unsettled_notes(summary, bests)
    notes += _tied_with_best(summary, bests)
    notes += [
        f"{b.dataset}: FT's mean is 0, so the improvement relative to it is undefined (—)."
        for b in bests
        if b.cell is not None and b.ft is not None and ft_mean_zero(b.ft.mean(b.metric))
    ]
    title = "Table 11: best configuration per dataset and its gain over FT"
    lines = [_best_line(summary, b) for b in bests]
    return _long_table(Head("table11", title, notes), BestLine, lines, TABLE11_SLOTS)


# --- Table 12 --------------------------------------------------------------------------------

ALL_ARCHS = "all"
"""The ``arch`` of a strategy's total line in Table 12."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class CountLine:
    """Table 12: on how many datasets (k of n) a strategy beats FT, per arch and in all."""

    strategy: str
    arch: str
    """An arch, or :data:`ALL_ARCHS` for the strategy's total."""
    k: int
    n: int
    share: float | None
    threshold_pct: float
    threshold_in: str
    """``relative`` (percent of FT's mean) or ``points`` (percentage points of the metric)."""


def _count_line(s: str, a: str, k: int, n: int, threshold: float, points: bool) -> CountLine:
    share = k / n if n else None
    return CountLine(
        strategy=s,
        arch=a,
        k=k,
        n=n,
        share=share,
        threshold_pct=threshold,
        threshold_in="points" if points else "relative",
    )


def _count_lines(
    summary: Summary,
    counts: Mapping[tuple[str, str], tuple[int, int]],
    threshold: float,
    points: bool = False,
) -> list[CountLine]:
    """Per strategy but FT: one line per arch, then the total over the archs."""
    lines = []
    for s in summary.strategies:
        if s == BASELINE:
            continue
        per_arch = [counts[(s, a)] for a in summary.archs]
        lines += [
            _count_line(s, a, k, n, threshold, points)
            for a, (k, n) in zip(summary.archs, per_arch, strict=True)
        ]
        total_k, total_n = sum(k for k, _ in per_arch), sum(n for _, n in per_arch)
        lines.append(_count_line(s, ALL_ARCHS, total_k, total_n, threshold, points))
    return lines


def k_n_share(k: int, n: int) -> str:
    return f"{k}/{n} ({100 * k / n:.1f}%)"


def table12(
    summary: Summary,
    threshold: float = 0.1,
    count_metrics: Mapping[str, str] | None = None,
    points: bool = False,
) -> Table:
    """Table 12: per strategy and arch, the datasets where it beats FT by > threshold %
    (relative; ``points``: percentage points), counted in each dataset's
    :func:`~medft_jax.report.cells.count_metric` (the paper's
    :data:`~medft_jax.report.cells.COUNT_METRICS` unless ``count_metrics`` is given)."""
    counts = beats_ft(summary, threshold, count_metrics, points)
    lines = _count_lines(summary, counts, threshold, points)
    slots = [
        Slot(Column(arch_label(a)), lambda x: f"{x.k}/{x.n}" if x.n else MISSING_TEXT, a)
        for a in summary.archs
    ]
    slots.append(
        Slot(Column("Total"), lambda x: k_n_share(x.k, x.n) if x.n else MISSING_TEXT, ALL_ARCHS)
    )
    by = f"{threshold:g} percentage points" if points else f"{threshold:g}%"
    title = f"Table 12: experiments (datasets) where a strategy beats FT by more than {by}"
    gain = (
        "gain of the mean test metric over FT of the same dataset and arch, 100·(m − m_FT), "
        f"> {threshold:g} percentage points"
        if points
        else "relative improvement of the mean test metric over FT of the same dataset and "
        f"arch > {threshold:g}%"
    )
    notes = [
        f"Beats: {gain}, {count_rule_text(summary, count_metrics)}. k/n: "
        "n counts the datasets where FT has a value and the strategy has a value (complete "
        "or partial), or finished without one in the counted metric, or has only failed runs "
        "(these did not beat FT); datasets not run are left out."
    ]
    notes += _caveats_counted(summary, count_metrics, points)
    strategies = [s for s in summary.strategies if s != BASELINE]
    return _wide_table(
        Head("table12", title, notes), CountLine, lines, slots, strategies, attrgetter("arch")
    )


def _caveats_counted(
    summary: Summary, count_metrics: Mapping[str, str] | None = None, points: bool = False
) -> list[str]:
    """What Table 12's counts rest on that its k/n cannot mark: the cells (FT's among
    them) with runs missing, an LR left out, or runs tested from before their final stage;
    and the experiments it cannot count (FT without a value in the counted metric, a
    strategy's cell ``unvalidated``), each named: its n shrinks for them."""
    cells = [c for c in summary.cells.values() if c.has_value]
    counted = {d: count_metric(summary, d, count_metrics) for d in summary.datasets}
    caveats = [
        (_incomplete, DAGGER, "with runs missing"),
        (_lrs_left_out, DOUBLE_DAGGER, "whose LR was chosen without an LR where a run failed"),
        (attrgetter("unstaged"), PILCROW, "whose runs were tested from before their final stage"),
        (  # a value over 2 of 3 seeds can decide a "beats" as any other
            lambda c: _fewer_seeds(c, counted[c.dataset]),
            SECTION,
            "whose counted metric is over fewer seeds than the cell has",
        ),
    ]
    notes = []
    for test, mark, what in caveats:
        marked = sorted(f"{c.dataset}/{c.arch}/{c.strategy}" for c in cells if test(c))
        if marked:
            shown = ", ".join(marked[:6]) + (
                f" and {len(marked) - 6} more" if len(marked) > 6 else ""
            )
            notes.append(
                f"Counted with {len(marked)} cell(s) {what} ({mark} in the datasets' tables): "
                f"{shown}."
            )
    uncounted = _without_ft(summary, count_metrics, points)
    if uncounted:
        notes.append(
            "Not counted, FT having no value to compare with there: "
            f"{', '.join(uncounted)} (n is smaller by one for each strategy with a value of "
            "that arch)."
        )
    unvalidated = sorted(
        f"{c.dataset}/{c.arch}/{c.strategy}"
        for c in summary.cells.values()
        if c.status == UNVALIDATED and c.strategy != BASELINE
    )
    if unvalidated:
        notes.append(
            "Not counted, no LR of the strategy's having a validation value for every seed "
            f"(unvalidated): {', '.join(unvalidated)}."
        )
    not_run = sorted(
        f"{c.dataset}/{c.arch}/{c.strategy}"
        for c in summary.cells.values()
        if c.status == MISSING and c.strategy != BASELINE
    )
    if not_run:  # its n is one smaller, which the k/n alone does not say
        notes.append(f"Not counted, no run yet: {', '.join(not_run)}.")
    return notes


def _without_ft(
    summary: Summary, count_metrics: Mapping[str, str] | None = None, points: bool = False
) -> list[str]:
    """``dataset/arch (why)`` where other strategies have values but FT none in the counted
    metric (diverged, failed, unvalidated, not run, or the metric undefined for every
    seed), or (a relative count) FT's mean is 0: Table 12 cannot count those, and its n
    shrinks without a word."""
    out = []
    for d in summary.datasets:
        metric = count_metric(summary, d, count_metrics)
        for a in summary.archs:
            ft = summary.cells.get((d, a, BASELINE))
            undefined = ft is not None and ft.has_value and not math.isfinite(ft.mean(metric))
            zero = ft is not None and ft.has_value and not points and ft_mean_zero(ft.mean(metric))
            if ft is not None and ft.has_value and not undefined and not zero:
                continue
            others = [
                c
                for s in summary.strategies
                if s != BASELINE and (c := summary.cells.get((d, a, s))) is not None
            ]
            if any(c.has_value for c in others):
                why = "not run" if ft is None or ft.status == MISSING else ft.failure_text
                if undefined:
                    why = f"its {metric_label(metric)} undefined for every seed"
                if zero:
                    why = (
                        f"its mean {metric_label(metric)} is 0, so no relative improvement; "
                        "--beat-points counts it"
                    )
                if baseline_filtered_out(summary):
                    why = "not shown under --only"
                out.append(f"{d}/{a} ({why})")
    return out


def count_rule_text(summary: Summary, count_metrics: Mapping[str, str] | None = None) -> str:
    """Which metric Table 12 counts each dataset in, as a clause of a sentence.

    The paper's choice for its tasks (:data:`~medft_jax.report.cells.COUNT_METRICS`,
    else their headline); a dataset the paper did not use is counted in its headline.
    """
    each = ", ".join(
        f"{d} {metric_label(count_metric(summary, d, count_metrics))}" for d in summary.datasets
    )
    return (
        "each dataset counted in its headline metric or, where the paper counted it in "
        f"another, in that one ({each})"
    )


# --- against the paper ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class VsPaperLine:
    """The ``vs_paper`` table: one cell and metric of ours beside the published one."""

    dataset: str
    strategy: str
    arch: str
    metric: str
    mean: float
    """Ours, a fraction."""
    se: float | None
    n: int
    """Our seeds: a single one has no SE, and no z."""
    paper_mean_pct: float
    """Published, in percent as printed."""
    paper_se_pct: float | None
    diff_pp: float
    """Ours minus the paper's, in percentage points."""
    z: float | None
    """diff / √(se_ours² + se_paper²), both in points (a published 0.0 read as 0.05, 0.00 as
    0.005: half a unit of its last digit); none
    where the paper gives no SE or ours is a single seed."""
    flagged: bool | None
    """|z| > 2."""
    marks: str = ""
    """Our cell's marks (:func:`cell_marks`)."""
    text: str = _shown()
    """How ours reads, as in the dataset's table: ``85.31 (0.42)†``."""
    paper_text: str = _shown(default="")
    """The paper's as the CSV writes it: ``87.72 (0.0)``."""


def _vs_paper_line(summary: Summary, x: Compared) -> VsPaperLine:
    cell = summary.cells[(x.dataset, x.arch, x.strategy)]
    return VsPaperLine(
        dataset=x.dataset,
        strategy=x.strategy,
        arch=x.arch,
        metric=x.metric,
        mean=x.mean,
        se=x.se if math.isfinite(x.se) else None,
        n=x.n,
        paper_mean_pct=x.paper_mean,
        paper_se_pct=x.paper_se,
        diff_pp=x.diff_pp,
        z=x.z,
        # Not tested (no published SE): an empty field, not False (a cell that agrees).
        flagged=None if x.z is None else abs(x.z) > Z_FLAG,
        marks=cell_marks(cell, x.metric),
        text=cell_text(cell, x.metric),
        paper_text=x.paper_printed,
    )


def _paper_text(x: VsPaperLine) -> str:
    """As printed (a published 87.72 (0.0) read 87.72 (0.00)); two decimals without it."""
    if x.paper_text:
        return x.paper_text
    se = f"{x.paper_se_pct:.2f}" if x.paper_se_pct is not None else NO_SE
    return f"{x.paper_mean_pct:.2f} ({se})"


def _z_text(x: VsPaperLine) -> Entry:
    if x.z is None:
        return Entry(UNDEFINED)
    return Entry(_signed(x.z) + (" !" if x.flagged else ""), bold=x.flagged)


VS_PAPER_SLOTS: tuple[Slot[VsPaperLine], ...] = (
    Slot(Column("Strategy", align="l"), lambda x: strategy_label(x.strategy)),
    Slot(Column("Arch", align="l"), lambda x: arch_label(x.arch)),
    Slot(Column("Metric", align="l"), lambda x: metric_label(x.metric)),
    Slot(Column("Ours, mean (SE)"), lambda x: x.text),
    Slot(Column("Paper, mean (SE)"), _paper_text),
    Slot(Column("Diff. (pp)"), lambda x: _signed(x.diff_pp)),
    Slot(Column("z"), _z_text),
)


VS_PAPER_NOTE = (
    "Ours: the test mean (SE) over seeds {lr}, with the marks of the "
    "dataset's table; paper: as printed in the published CSV. Diff.: ours minus the paper's, "
    "in percentage points. z = diff / √(SE_ours² + SE_paper²): how many combined standard "
    "errors apart the two means are (a published SE read as the middle of what its "
    "cut-off digits stand for, plus half a unit of its last printed digit: 1.6 as 1.65, 0.0 "
    "as 0.05); n/a "
    "where the paper gives no SE or ours is a single seed. Bold with ! marks |z| > 2: a "
    "difference larger than the seeds' spread explains (over 3 seeds, the paper's, the SEs "
    "are rough, so expect some by chance)."
)


def _left_out_note(
    summary: Summary, dataset: str, paper: PaperTables, lines: Sequence[VsPaperLine]
) -> list[str]:
    """What became of the paper's cells of ``dataset`` that have no row: not run here, or
    run without a value (the word the dataset's table shows for it). A table that dropped
    them silently read as the whole comparison (and one without rows as an empty file)."""
    shown = {(x.arch, x.strategy, x.metric) for x in lines}
    why: dict[str, int] = {}
    for d, a, s, m in paper.values:
        if d != dataset or (a, s, m) in shown:
            continue
        cell = summary.cells.get((d, a, s))
        kept = summary.filters
        if any(k in kept and v not in kept[k] for k, v in (("arch", a), ("strategy", s))):
            reason = "left out by --only"
        elif cell is None or cell.status == MISSING:
            reason = _absent(summary, "here")
        elif m not in summary.metrics.get(d, ()):
            reason = "the metric not in the records"
        else:
            text = cell_text(cell, m)
            reason = next((t for t in CELL_TEXTS if text.startswith(t)), text)
        why[reason] = why.get(reason, 0) + 1
    if not why:
        return []
    total = sum(1 for key in paper.values if key[0] == dataset)
    parts = ", ".join(f"{n} {reason}" for reason, n in why.items())
    return [
        f"Not in this table: {sum(why.values())} of the paper's {total} cells (strategy × "
        f"arch × metric) of {dataset}, without a value of ours: {parts} (as the dataset's "
        "table shows them)."
    ]


def vs_paper_table(
    summary: Summary, dataset: str, compared: Sequence[Compared], paper: PaperTables
) -> Table:
    """Ours beside the published numbers, one row per cell and metric present in both
    (``compared``: :func:`medft_jax.report.paper.compare`'s entries of ``dataset``), and
    a note counting the paper's cells left out."""
    lines = [_vs_paper_line(summary, x) for x in compared if x.dataset == dataset]
    title = f"{dataset}: ours against the paper's published values (percent)"
    notes = [VS_PAPER_NOTE.format(lr=lr_phrase(summary))]
    shown = {x.strategy for x in compared if x.dataset == dataset}
    unlike = [
        f"{strategy_label(s)} ran with {summary.options_unlike_paper(s)}"
        for s in summary.strategies
        if s in shown and summary.unlike_paper(s)
    ]
    if unlike:  # a row names a strategy, not its options: this table alone must say them
        notes.append("Not the paper's options: " + "; ".join(unlike) + ".")
    protocol = protocol_unlike_paper(
        summary.protocol.get(dataset) or {}, summary.dataset_options.get(dataset)
    )
    if protocol:  # every |z| > 2 read as the strategies' when it may be the protocol's
        notes.append(f"Not the paper's protocol: {protocol}; a difference may be its.")
    head = Head(
        f"vs_paper_{slug(dataset)}", title, notes + _left_out_note(summary, dataset, paper, lines)
    )
    return _long_table(head, VsPaperLine, lines, VS_PAPER_SLOTS)


def all_tables(
    summary: Summary,
    beat_threshold: float = 0.1,
    count_metrics: Mapping[str, str] | None = None,
    paper: PaperTables | None = None,
    beat_points: bool = False,
) -> list[Table]:
    """Every table of a report, in the order the index shows them; with ``paper`` (a
    :class:`medft_jax.report.paper.PaperTables`) the ``vs_paper`` tables last."""
    tables = []
    for d in summary.datasets:
        tables += [dataset_table(summary, d), cost_table(summary, d), paired_table(summary, d)]
    tables += [table11(summary), table12(summary, beat_threshold, count_metrics, beat_points)]
    if paper is not None:
        compared = compare(summary, paper)
        tables += [
            vs_paper_table(summary, d, compared, paper)
            for d in summary.datasets
            if d in paper.datasets
        ]
    note = filter_note(summary)
    if note is not None:
        tables = [dataclasses.replace(t, notes=[*t.notes, note]) for t in tables]
    return tables
