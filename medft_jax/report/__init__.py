"""The report of a sweep: the paper's Tables 3-12 and Figures 6-11 from run records, and more.

    python -m experiments.report --runs runs/ --out report/

or from Python::

    from medft_jax import results
    from medft_jax.report import collect, write_report

    summary = collect(results.load_records("runs"), results.load_failures("runs"))
    write_report(summary, "report")

:func:`summary_from_means` builds the same cells from bare per-cell means (a paper's
published tables), so Tables 11 and 12 can be checked against the paper's own numbers.
:func:`collect` gathers records into cells, one per (dataset, arch,
strategy), each with its value (:func:`medft_jax.report.aggregate.summarise`: LR
chosen on validation, test mean ± SE over seeds), status (complete,
partial, missing, failed) against the runs expected of it, and cost.
:func:`write_report` renders every table as Markdown, LaTeX and CSV, draws
the figures and writes an ``index.md`` that shows them all; the folder
appears whole or not at all.

Modules: :mod:`~medft_jax.report.cells` (the numbers),
:mod:`~medft_jax.report.render` (table model, Markdown / LaTeX / CSV
renderers, text formatting), :mod:`~medft_jax.report.tables` (the table
builders), :mod:`~medft_jax.report.figures` (PNG figures, Agg),
:mod:`~medft_jax.report.paper` (published values beside ours: ``--vs-paper``),
:mod:`~medft_jax.report.write` (the report folder and its index).
"""

from medft_jax.report.cells import (
    ALPHA,
    COMPLETE,
    COUNT_METRICS,
    FAILED,
    MISSING,
    PARTIAL,
    STATUSES,
    UNVALIDATED,
    Best,
    Cell,
    Cost,
    Paired,
    Summary,
    beats_ft,
    best_per_dataset,
    collect,
    count_metric,
    improvement_se,
    paired_vs_ft,
    relative_improvement,
    summary_from_means,
)
from medft_jax.report.render import Column, Entry, Table, to_csv, to_latex, to_markdown
from medft_jax.report.tables import (
    all_tables,
    cost_table,
    dataset_table,
    paired_table,
    table11,
    table12,
)
from medft_jax.report.write import ReportError, write_report

__all__ = [
    "ALPHA",
    "COMPLETE",
    "COUNT_METRICS",
    "FAILED",
    "MISSING",
    "PARTIAL",
    "STATUSES",
    "UNVALIDATED",
    "Best",
    "Cell",
    "Column",
    "Cost",
    "Entry",
    "Paired",
    "ReportError",
    "Summary",
    "Table",
    "all_tables",
    "beats_ft",
    "best_per_dataset",
    "collect",
    "cost_table",
    "count_metric",
    "dataset_table",
    "improvement_se",
    "paired_table",
    "paired_vs_ft",
    "relative_improvement",
    "summary_from_means",
    "table11",
    "table12",
    "to_csv",
    "to_latex",
    "to_markdown",
    "write_report",
]
