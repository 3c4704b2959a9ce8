"""Writes a report folder: every table as Markdown / LaTeX / CSV, the figures, and ``index.md``.

:func:`write_report` renders all of :func:`medft_jax.report.tables.all_tables`
and :func:`medft_jax.report.figures.write_figures` into a temporary folder
and moves it into place, so the report appears whole or not at all;
:func:`index_markdown` is the ``index.md`` that shows them all.
"""

from __future__ import annotations

from medft_jax.errors import UserError

import os
import shutil
import tempfile
from pathlib import Path

from medft_jax.report import figures
from medft_jax.report.cells import COMPLETE, MISSING, PARTIAL, Summary
from medft_jax.report.render import (
    DAGGER,
    Table,
    md_escape,
    metric_label,
    slug,
    to_csv,
    to_latex,
    to_markdown,
)
from medft_jax.report.tables import all_tables, dataset_table_name, paired_note


def status_counts(summary: Summary) -> dict[str, int]:
    counts = dict.fromkeys((COMPLETE, PARTIAL, "failed", MISSING), 0)
    for c in summary.cells.values():
        counts[c.status] += 1
    return counts


# --- the report folder -------------------------------------------------------------------------


class ReportError(UserError):
    """An ``--out`` folder that cannot take a report; the message names it."""


def write_report(summary: Summary, out_dir: str | Path, *, beat_threshold: float = 0.1) -> Path:
    """Writes every table (``tables/*.md|.tex|.csv``), figure and ``index.md``; returns the
    index's path.

    Everything is written into a temporary folder beside ``out_dir`` and
    moved into place at the end, so a crash never leaves half a report and
    an old report is replaced whole. An existing ``out_dir`` is only
    replaced when it is empty or holds a report (an ``index.md``): pointing
    ``--out`` at the runs folder by mistake must not delete it.
    """
    out = Path(out_dir)
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        tables = all_tables(summary, beat_threshold)
        (tmp / "tables").mkdir()
        for t in tables:
            for ext, render in (("md", to_markdown), ("tex", to_latex), ("csv", to_csv)):
                (tmp / "tables" / f"{t.name}.{ext}").write_text(render(t), encoding="utf-8")
        figures.write_figures(summary, tmp / "figures")
        index = index_markdown(summary, tables, beat_threshold)
        (tmp / "index.md").write_text(index, encoding="utf-8")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "index.md"


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "index.md").is_file():
        raise ReportError(
            f"--out {out}: exists and is not a report (no index.md); choose another folder"
        )


def _move_into_place(tmp: Path, out: Path) -> None:
    """Renames ``tmp`` to ``out``; an old ``out`` is renamed aside first, then removed."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _section(table: Table, level: str = "###") -> list[str]:
    links = " · ".join(f"[{ext}](tables/{table.name}.{ext})" for ext in ("md", "tex", "csv"))
    return [f"{level} {md_escape(table.title)}", "", to_markdown(table, title=False), links, ""]


def index_markdown(summary: Summary, tables: list[Table], beat_threshold: float = 0.1) -> str:
    """``index.md``: how to read the report, then every table inline and every figure."""
    by_name = {t.name: t for t in tables}
    counts = status_counts(summary)
    done = sum(c.runs_done for c in summary.cells.values())
    expected = sum(c.runs_expected for c in summary.cells.values())
    if summary.grid_name is not None:
        source = f"the runs of grid {summary.grid_name!r} (from --config)"
    else:
        source = (
            "inferred from the records: every arch and strategy seen anywhere, every LR and "
            "seed seen within the dataset"
        )
    lines = [
        "# Comparison of fine-tuning strategies: report",
        "",
        f"Runs done (finished or failed): {done} of {expected} expected; expected runs are "
        f"{source}. Cells (dataset × arch × strategy): {counts[COMPLETE]} complete, "
        f"{counts[PARTIAL]} partial, {counts['failed']} failed, {counts[MISSING]} missing.",
    ]
    if summary.filters:
        shown = "; ".join(f"{k} = {' | '.join(sorted(v))}" for k, v in summary.filters.items())
        lines += ["", f"Filters (--only): {md_escape(shown)}."]
    if summary.left_out:
        lines += [
            "",
            f"{summary.left_out} records or failure notes outside the grid were left out.",
        ]
    lines += [
        "",
        "## How to read the tables",
        "",
        "- Values are test metrics in percent, mean (SE) over seeds; SE = sample standard "
        "deviation (ddof = 1) / √n; an SE of – means a single seed.",
        "- Learning rate: per dataset, arch and strategy, the LR with the highest mean "
        "validation primary metric over its seeds (each run's best epoch) is chosen, and the "
        "test metrics are those of that LR (an exact tie goes to the smaller LR). An LR at "
        "which any run failed is never chosen.",
        f"- {DAGGER}: partial cell, some expected runs missing; the value is from the runs "
        "that exist and the table's notes say k of n runs. — : no run at all (an empty field "
        "in the CSV; never 0). diverged: only failure notes, the loss became non-finite; "
        "failed: only failure notes of another kind. n/a: the metric is undefined for every "
        "seed.",
        "- **Bold**: best mean per arch and metric; <u>underlined</u>: best mean per metric "
        "over all archs; means equal at the 2 decimals shown are all marked.",
        "- Cost: device-seconds = train_seconds × number of devices (compilation excluded).",
        f"- Table 11: best (arch, strategy) per dataset and its relative improvement over FT "
        f"of the same arch, 100·(m − m_FT)/m_FT. Table 12: datasets where a strategy beats FT "
        f"by more than {beat_threshold:g}% relative improvement of the primary metric.",
        f"- {md_escape(paired_note())}",
        "",
    ]
    for d in summary.datasets:
        names = figures.figure_names(d)
        metrics = ", ".join(metric_label(m) for m in summary.metrics[d])
        lines += [
            f"## {md_escape(d)}",
            "",
            f"Primary metric: {metric_label(summary.primary[d])}; table metrics: {metrics}.",
            "",
            *_section(by_name[dataset_table_name(d)]),
            f"![Relative improvement over FT, {d}](figures/{names['improvement']})",
            "",
            *_section(by_name[f"cost_{slug(d)}"]),
            f"![Cost versus test metric, {d}](figures/{names['cost']})",
            "",
            *_section(by_name[f"paired_{slug(d)}"]),
        ]
    lines += [
        "## Across datasets",
        "",
        *_section(by_name["table11"]),
        *_section(by_name["table12"]),
    ]
    return "\n".join(lines).rstrip() + "\n"
