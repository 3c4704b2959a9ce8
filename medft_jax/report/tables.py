"""Builds the report's tables (Tables 3-12, cost, paired comparison) from a :class:`Summary`.

The builders (:func:`dataset_table`, :func:`cost_table`, :func:`paired_table`,
:func:`table11`, :func:`table12`, :func:`all_tables`) only format what
:mod:`medft_jax.report.cells` computed, into the :class:`~medft_jax.report.render.Table`
model of :mod:`medft_jax.report.render`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

from medft_jax.report.cells import (
    BASELINE,
    MISSING,
    Cell,
    Summary,
    beats_ft,
    best_per_dataset,
    count_metric,
    paired_vs_ft,
)
from medft_jax.report.render import (
    DAGGER,
    MISSING_TEXT,
    UNDEFINED,
    Column,
    Entry,
    Table,
    arch_label,
    metric_label,
    pct,
    seconds,
    slug,
    strategy_label,
)


def table_number(dataset: str) -> int | None:
    """The paper's table number of a task (Tables 3-10 in task order), else None."""
    from medft_jax.metrics import TASK_NAMES

    return TASK_NAMES.index(dataset) + 3 if dataset in TASK_NAMES else None


def dataset_table_name(dataset: str) -> str:
    number = table_number(dataset)
    return f"table{number:02d}_{slug(dataset)}" if number else f"results_{slug(dataset)}"


def _incomplete(cell: Cell) -> bool:
    return cell.status != MISSING and cell.runs_done < cell.runs_expected


def cell_text(cell: Cell, metric: str) -> str:
    """``85.31 (0.42)``; ``†`` when runs are missing; ``—``, ``diverged``, ``n/a``."""
    if cell.status == MISSING:
        return MISSING_TEXT
    mark = DAGGER if _incomplete(cell) else ""
    if not cell.has_value:
        return cell.failure_text + mark
    mean, se = cell.test.get(metric, (math.nan, math.nan))
    if not math.isfinite(mean):
        return UNDEFINED + mark
    return f"{pct(mean)} ({pct(se)}){mark}"


def _partial_notes(cells: Iterable[Cell]) -> list[str]:
    return [
        f"{DAGGER} {strategy_label(c.strategy)}, {arch_label(c.arch)}: "
        f"{c.runs_done} of {c.runs_expected} runs"
        for c in cells
        if _incomplete(c)
    ]


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


def _strategies_of(summary: Summary, dataset: str) -> list[str]:
    return [
        s
        for s in summary.strategies
        if any((dataset, a, s) in summary.cells for a in summary.archs)
    ]


# --- builders --------------------------------------------------------------------------------

MAIN_FIELDS = (
    "dataset",
    "strategy",
    "arch",
    "metric",
    "mean",
    "se",
    "n",
    "status",
    "runs_done",
    "runs_expected",
    "lr",
    "bold",
    "underline",
)


def dataset_table(summary: Summary, dataset: str) -> Table:
    """Tables 3-10: strategies × (arch × two metrics + cost), mean (SE) in percent."""
    metrics = summary.metrics[dataset]
    archs = [
        a
        for a in summary.archs
        if any((dataset, a, s) in summary.cells for s in summary.strategies)
    ]
    strategies = _strategies_of(summary, dataset)
    columns = [Column("Strategy", align="l")]
    for a in archs:
        columns += [Column(metric_label(m), arch_label(a)) for m in metrics]
        columns.append(Column("Cost (device-s)", arch_label(a)))
    cells = {(a, s): summary.cells.get((dataset, a, s)) for a in archs for s in strategies}

    def mean(a: str, s: str, m: str) -> float:
        c = cells[(a, s)]
        return c.mean(m) if c is not None and c.has_value else math.nan

    bold = {(a, m): _best({s: mean(a, s, m) for s in strategies}) for a in archs for m in metrics}
    under = {m: _best({(a, s): mean(a, s, m) for a in archs for s in strategies}) for m in metrics}
    rows, records = [], []
    for s in strategies:
        row = [Entry(strategy_label(s))]
        for a in archs:
            c = cells[(a, s)]
            for m in metrics:
                if c is None:
                    row.append(Entry(MISSING_TEXT))
                    continue
                b, u = s in bold[(a, m)], (a, s) in under[m]
                row.append(Entry(cell_text(c, m), bold=b, underline=u))
                mu, se = c.test.get(m, (None, None))
                records.append(
                    {
                        **_cell_fields(c),
                        "metric": m,
                        "mean": mu,
                        "se": se,
                        "n": c.n.get(m) if c.has_value else None,
                        "bold": b,
                        "underline": u,
                    }
                )
            cost = c.cost.device_seconds if c is not None and c.cost else None
            row.append(Entry(seconds(cost)))
            if c is not None:
                records.append(
                    {
                        **_cell_fields(c),
                        "metric": "device_seconds",
                        "mean": cost,
                        "bold": False,
                        "underline": False,
                    }
                )
        rows.append(row)
    number = table_number(dataset)
    prefix = f"Table {number}: " if number else ""
    title = (
        f"{prefix}{dataset}: test {', '.join(metric_label(m) for m in metrics)}, "
        "mean (SE) over seeds in %, at the LR chosen on validation"
    )
    notes = [
        f"Bold: best mean per arch and metric; underlined: best over all archs. LR chosen by the "
        f"mean validation {metric_label(summary.primary[dataset])} over seeds. Cost: "
        "device-seconds of one run at the chosen LR (mean over seeds).",
        *_partial_notes(cells[(a, s)] for s in strategies for a in archs if cells[(a, s)]),
    ]
    return Table(dataset_table_name(dataset), title, columns, rows, notes, MAIN_FIELDS, records)


def _cell_fields(c: Cell) -> dict[str, Any]:
    return {
        "dataset": c.dataset,
        "strategy": c.strategy,
        "arch": c.arch,
        "status": c.status,
        "runs_done": c.runs_done,
        "runs_expected": c.runs_expected,
        "lr": c.lr,
    }


COST_FIELDS = (
    "dataset",
    "strategy",
    "arch",
    "status",
    "lr",
    "device_seconds",
    "images_per_s",
    "epochs",
    "runs_done",
    "runs_expected",
    "total_device_seconds",
    "total_runs",
)


def cost_table(summary: Summary, dataset: str) -> Table:
    """What each cell cost: per run at the chosen LR, and the whole LR search."""
    columns = [
        Column("Strategy", align="l"),
        Column("Arch", align="l"),
        Column("LR"),
        Column("Device-s / run"),
        Column("Images/s"),
        Column("Epochs"),
        Column("Runs"),
        Column("Device-s, all LRs"),
    ]
    rows, records = [], []
    for c in _cells_of(summary, dataset):
        k = c.cost
        rows.append(
            [
                Entry(strategy_label(c.strategy)),
                Entry(arch_label(c.arch)),
                Entry(f"{c.lr:g}" if c.lr is not None else MISSING_TEXT),
                Entry(seconds(k.device_seconds if k else None)),
                Entry(
                    f"{k.images_per_s:,.1f}"
                    if k and math.isfinite(k.images_per_s)
                    else MISSING_TEXT
                ),
                Entry(f"{k.epochs:.1f}" if k and math.isfinite(k.epochs) else MISSING_TEXT),
                Entry(f"{c.runs_done}/{c.runs_expected}"),
                Entry(seconds(k.total_device_seconds if k else None)),
            ]
        )
        fields = dataclasses.asdict(k) if k else {}
        records.append({**_cell_fields(c), **fields})
    title = f"Cost on {dataset}: device-seconds (train_seconds × devices), throughput, epochs"
    notes = [
        "Device-s / run, images/s and epochs: mean over the seeds of the chosen LR; "
        "all LRs: sum over every finished run of the cell (failed runs carry no time). "
        "Compilation time is not included."
    ]
    return Table(f"cost_{slug(dataset)}", title, columns, rows, notes, COST_FIELDS, records)


PAIRED_FIELDS = (
    "dataset",
    "arch",
    "strategy",
    "metric",
    "n",
    "seeds",
    "mean_diff",
    "se_diff",
    "t",
    "df",
    "p",
    "p_holm",
    "significant",
)


def paired_note() -> str:
    """What the paired comparison is and is not; the index shows it once."""
    return (
        "Paired comparison with FT: per seed, the strategy's test headline metric (the first "
        "column of the dataset's table) minus FT's "
        "(each at its own chosen LR; only seeds both have), mean (SE) in percentage points; "
        "two-sided paired t-test (scipy.stats.ttest_rel), * marks p < 0.05. With 3 seeds the "
        "test has 2 degrees of freedom (|t| must exceed 4.30), so it has little power: a real "
        "difference often goes unmarked. The p column is not corrected for the many "
        "comparisons; the Holm column adjusts p (Holm step-down) over the strategies of one "
        "dataset and arch. An exact sign-flip (permutation) test cannot go below p = 0.25 with "
        "3 pairs, which is why the t-test is used."
    )


PAIRED_SHORT_NOTE = (
    "Δ: strategy minus FT per seed (each at its own chosen LR), mean (SE) in percentage points. "
    "p: two-sided paired t-test (scipy.stats.ttest_rel), * p < 0.05, not corrected for multiple "
    "comparisons; p Holm: Holm-adjusted over the strategies of one dataset and arch. With 3 "
    "seeds (df = 2) the test has little power. [n=k]: only k seeds paired."
)


def paired_table(summary: Summary, dataset: str) -> Table:
    """Beyond the paper: each strategy minus FT, paired by seed, with a paired t-test."""
    archs = [a for a in summary.archs if (dataset, a, BASELINE) in summary.cells]
    tests = {(p.arch, p.strategy): p for p in paired_vs_ft(summary) if p.dataset == dataset}
    columns = [Column("Strategy", align="l")]
    for a in archs:
        columns += [Column("Δ (SE)", arch_label(a)), Column("p", arch_label(a))]
        columns.append(Column("p Holm", arch_label(a)))
    rows, records = [], []
    for s in _strategies_of(summary, dataset):
        if s == BASELINE:
            continue
        row = [Entry(strategy_label(s))]
        for a in archs:
            p = tests.get((a, s))
            if p is None:
                row += [Entry(MISSING_TEXT)] * 3
                continue
            diff = f"{pct(p.mean, sign=True)} ({pct(p.se)})"
            seeds = max(len(summary.cells[(dataset, a, x)].seeds) for x in (s, BASELINE))
            if len(p.seeds) < seeds:  # some seed of one side has no partner
                diff += f" [n={len(p.seeds)}]"
            row += [Entry(diff), Entry(_p_text(p.p, p.significant)), Entry(_p_text(p.p_holm))]
            records.append(
                {
                    "dataset": p.dataset,
                    "arch": p.arch,
                    "strategy": p.strategy,
                    "metric": p.metric,
                    "n": len(p.seeds),
                    "seeds": p.seeds,
                    "mean_diff": p.mean,
                    "se_diff": p.se,
                    "t": p.t,
                    "df": p.df,
                    "p": p.p,
                    "p_holm": p.p_holm,
                    "significant": p.significant,
                }
            )
        rows.append(row)
    title = (
        f"{dataset}: test {metric_label(summary.headline(dataset))} minus FT's, paired by seed "
        "(percentage points), paired t-test"
    )
    return Table(
        f"paired_{slug(dataset)}", title, columns, rows, [PAIRED_SHORT_NOTE], PAIRED_FIELDS, records
    )


def _p_text(p: float, significant: bool = False) -> str:
    if not math.isfinite(p):
        return UNDEFINED
    text = f"{p:.3f}" if p >= 0.001 else "<0.001"
    return text + ("*" if significant else "")


TABLE11_FIELDS = (
    "dataset",
    "metric",
    "arch",
    "strategy",
    "mean",
    "se",
    "status",
    "ft_mean",
    "ft_se",
    "ft_status",
    "improvement_pct",
)


def table11(summary: Summary) -> Table:
    """Table 11: per dataset, the best (arch, strategy) and its relative gain over FT."""
    columns = [
        Column("Dataset", align="l"),
        Column("Metric", align="l"),
        Column("Arch", align="l"),
        Column("Strategy", align="l"),
        Column("Best, mean (SE)"),
        Column("FT, same arch"),
        Column("Improvement (%)"),
    ]
    rows, records = [], []
    for b in best_per_dataset(summary):
        c, ft = b.cell, b.ft
        rows.append(
            [
                Entry(b.dataset),
                Entry(metric_label(b.metric)),
                Entry(arch_label(c.arch) if c else MISSING_TEXT),
                Entry(strategy_label(c.strategy) if c else MISSING_TEXT),
                Entry(cell_text(c, b.metric) if c else MISSING_TEXT),
                Entry(cell_text(ft, b.metric) if ft else MISSING_TEXT),
                Entry(f"{b.improvement:+.2f}" if math.isfinite(b.improvement) else MISSING_TEXT),
            ]
        )
        mean, se = c.test.get(b.metric, (None, None)) if c else (None, None)
        ft_mean, ft_se = ft.test.get(b.metric, (None, None)) if ft else (None, None)
        records.append(
            {
                "dataset": b.dataset,
                "metric": b.metric,
                "arch": c.arch if c else None,
                "strategy": c.strategy if c else None,
                "mean": mean,
                "se": se,
                "status": c.status if c else MISSING,
                "ft_mean": ft_mean,
                "ft_se": ft_se,
                "ft_status": ft.status if ft else MISSING,
                "improvement_pct": b.improvement,
            }
        )
    notes = [
        "Best: highest mean test headline metric (the first column of the dataset's table, "
        "named under Metric) over every arch and strategy of the dataset; improvement = "
        "100·(m − m_FT)/m_FT against FT of the same arch."
    ]
    if any(b.cell is not None and _incomplete(b.cell) for b in best_per_dataset(summary)):
        notes.append(f"{DAGGER}: a cell with runs missing (see the dataset's table).")
    title = "Table 11: best configuration per dataset and its gain over FT"
    return Table("table11", title, columns, rows, notes, TABLE11_FIELDS, records)


TABLE12_FIELDS = ("strategy", "arch", "k", "n", "share", "threshold_pct")


def table12(
    summary: Summary, threshold: float = 0.1, count_metrics: Mapping[str, str] | None = None
) -> Table:
    """Table 12: per strategy and arch, the datasets where it beats FT by > threshold %,
    counted in each dataset's :func:`~medft_jax.report.cells.count_metric` (the paper's
    :data:`~medft_jax.report.cells.COUNT_METRICS` unless ``count_metrics`` is given)."""
    counts = beats_ft(summary, threshold, count_metrics)
    columns = [Column("Strategy", align="l")]
    columns += [Column(arch_label(a)) for a in summary.archs]
    columns.append(Column("Total"))
    rows, records = [], []
    for s in summary.strategies:
        if s == BASELINE:
            continue
        row = [Entry(strategy_label(s))]
        total_k = total_n = 0
        for a in summary.archs:
            k, n = counts[(s, a)]
            total_k, total_n = total_k + k, total_n + n
            row.append(Entry(f"{k}/{n}" if n else MISSING_TEXT))
            records.append(_count_record(s, a, k, n, threshold))
        row.append(Entry(k_n_share(total_k, total_n) if total_n else MISSING_TEXT))
        records.append(_count_record(s, "all", total_k, total_n, threshold))
        rows.append(row)
    title = (
        f"Table 12: experiments (datasets) where a strategy beats FT by more than {threshold:g}%"
    )
    notes = [
        f"Beats: relative improvement of the mean test metric over FT of the same dataset and "
        f"arch > {threshold:g}%, each dataset counted in the metric the paper counted it in "
        f"({count_metrics_text(summary, count_metrics)}). k/n: "
        "n counts the datasets where both cells have a value (complete or partial)."
    ]
    return Table("table12", title, columns, rows, notes, TABLE12_FIELDS, records)


def count_metrics_text(summary: Summary, count_metrics: Mapping[str, str] | None = None) -> str:
    """``bach Acc. (top-1), isic2020 Acc., …``: the metric Table 12 counts each dataset in."""
    return ", ".join(
        f"{d} {metric_label(count_metric(summary, d, count_metrics))}" for d in summary.datasets
    )


def k_n_share(k: int, n: int) -> str:
    return f"{k}/{n} ({100 * k / n:.1f}%)"


def _count_record(s: str, a: str, k: int, n: int, threshold: float) -> dict[str, Any]:
    return {
        "strategy": s,
        "arch": a,
        "k": k,
        "n": n,
        "share": k / n if n else None,
        "threshold_pct": threshold,
    }


def all_tables(
    summary: Summary,
    beat_threshold: float = 0.1,
    count_metrics: Mapping[str, str] | None = None,
) -> list[Table]:
    """Every table of a report, in the order the index shows them."""
    tables = []
    for d in summary.datasets:
        tables += [dataset_table(summary, d), cost_table(summary, d), paired_table(summary, d)]
    return [*tables, table11(summary), table12(summary, beat_threshold, count_metrics)]
