"""Writes a report folder: every table as Markdown / LaTeX / CSV, the figures, and ``index.md``.

:func:`write_report` renders all of :func:`medft_jax.report.tables.all_tables`
and :func:`medft_jax.report.figures.write_figures` into a temporary folder
and moves it into place, so the report appears whole or not at all;
:func:`index_markdown` is the ``index.md`` that shows them all. A report
folder carries a marker listing its files (:data:`MARKER`), and an existing
``--out`` is replaced only when it is such a folder with nothing added.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from medft_jax import atomic
from medft_jax.atomic import DIR_MODE
from medft_jax.data.options import TASK_VAL_FRACTION
from medft_jax.errors import UserError, json_loads, naming_os_errors, no_file_in_the_way
from medft_jax.report import figures
from medft_jax.report.cells import (
    COMPLETE,
    FAILED,
    MISSING,
    PARTIAL,
    UNVALIDATED,
    Summary,
    option_text,
    paired_vs_ft,
    protocol_unlike_paper,
)
from medft_jax.report.paper import Z_FLAG, PaperTables, agreements, unmatched
from medft_jax.report.render import (
    DAGGER,
    DOUBLE_DAGGER,
    PILCROW,
    SECTION,
    Table,
    arch_label,
    md_code,
    md_escape,
    metric_label,
    metric_meaning,
    slug,
    strategy_label,
    to_csv,
    to_latex,
    to_markdown,
)
from medft_jax.report.tables import (
    all_tables,
    count_rule_text,
    data_notes,
    dataset_table_name,
    paired_note,
    table_number,
)


def status_counts(summary: Summary) -> dict[str, int]:
    """Cells by status; a cell whose runs so far all failed, with runs still to do, is
    partial: not yet a failed experiment."""
    counts = dict.fromkeys((COMPLETE, PARTIAL, FAILED, UNVALIDATED, MISSING), 0)
    for c in summary.cells.values():
        early = c.status in (FAILED, UNVALIDATED) and c.runs_done < c.runs_expected
        counts[PARTIAL if early else c.status] += 1
    return counts


# --- the report folder -------------------------------------------------------------------------


class ReportError(UserError):
    """An ``--out`` folder that cannot take a report; the message names it."""


MARKER = ".medft-report"
"""The file that marks a folder as a report this module wrote. JSON:
``{"written_by": "experiments.report", "format": 1, "files": [...]}``, ``files``
being every file of the report (POSIX paths relative to the folder, the
marker itself excepted). Only such a folder, holding nothing but those files
(in their subfolders ``tables/`` and ``figures/``), is ever replaced."""
_MARKER_FORMAT = 1


def _check_file_names(summary: Summary) -> None:
    """Two datasets whose names give one file name (``a-b`` and ``a_b``) would write over
    each other's tables and figures: refused before anything is written."""
    seen: dict[str, str] = {}
    for d in summary.datasets:
        other = seen.setdefault(slug(d), d)
        if other != d:
            raise ReportError(
                f"datasets {other!r} and {d!r} would share the file name {slug(d)!r}; "
                "report them from separate --runs folders"
            )


def write_report(
    summary: Summary,
    out_dir: str | Path,
    *,
    beat_threshold: float = 0.1,
    beat_points: bool = False,
    runs_dir: str | Path | None = None,
    paper: PaperTables | None = None,
) -> Path:
    """Writes every table (``tables/*.md|.tex|.csv``), figure and ``index.md``; returns the
    index's path.

    Everything is written into a temporary folder beside ``out_dir`` and
    moved into place at the end, so a crash never leaves half a report and
    an old report is replaced whole; the temporary folder of a report killed
    on this host is removed by the next report into the same ``out_dir``. An
    existing ``out_dir`` is only replaced when it is empty or is a report this function wrote (see
    :data:`MARKER`) holding nothing else: a report never deletes what it
    did not write. ``runs_dir``: the records' folder, which ``out_dir``
    may neither be, nor be inside, nor contain. ``paper``: published values
    (:func:`medft_jax.report.paper.load_paper`) to set ours beside, in the
    ``vs_paper_<dataset>`` tables and the index's "Against the paper".
    """
    check_out(out_dir, runs_dir)
    _check_file_names(summary)
    out = Path(os.path.abspath(out_dir))
    with naming_os_errors(out_dir):  # a read-only --out is named, not our temporary folder
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic.remove_abandoned(out)  # a killed report's temporary folder (a live one's stays)
        tmp = atomic.temporary_sibling(out)
        tmp.mkdir()
        os.chmod(tmp, DIR_MODE)  # it becomes out: readable by whom the umask says
    try:
        tables = all_tables(summary, beat_threshold, paper=paper, beat_points=beat_points)
        # A full disk is named as --out: a failed write's error names no file ("?: file too
        # large"), or our temporary folder, which is gone by the time the user reads it.
        with naming_os_errors(out_dir):
            (tmp / "tables").mkdir()
            for t in tables:
                for ext, render in (("md", to_markdown), ("tex", to_latex), ("csv", to_csv)):
                    (tmp / "tables" / f"{t.name}.{ext}").write_text(render(t), encoding="utf-8")
            figures.write_figures(summary, tmp / "figures")
            index = index_markdown(summary, tables, beat_threshold, paper, beat_points)
            (tmp / "index.md").write_text(index, encoding="utf-8")
            _write_marker(tmp)
        _move_into_place(tmp, out, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the temporary folder this call made
        raise
    return Path(out_dir) / "index.md"


def check_out(out_dir: str | Path, runs_dir: str | Path | None = None) -> None:
    """Refuses, with one line naming it, an ``--out`` a report may not replace.

    That is: a file or a symbolic link; ``runs_dir`` itself, a folder
    inside it or one holding it; a non-empty folder without the marker of
    a report (:data:`MARKER`), or a report folder where the user added a
    file.
    """
    out = Path(out_dir)
    if out.is_symlink():
        raise ReportError(f"--out {out_dir}: is a symbolic link; give the folder itself")
    if out.is_dir() and os.path.ismount(out):  # an empty volume, say: a traceback at the end
        raise ReportError(
            f"--out {out_dir}: is a mount point, which the report (written beside it, then "
            "renamed into place) cannot replace; give a folder inside it"
        )
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out_dir}: exists and is not a folder")
    no_file_in_the_way(out_dir, "--out")  # a file above it was "already exists"
    if runs_dir is not None:
        _check_apart(out_dir, runs_dir)
    if out.is_dir():
        _old_report_files(out, out_dir)


def _check_apart(out_dir: str | Path, runs_dir: str | Path) -> None:
    out, runs = Path(out_dir).resolve(), Path(runs_dir).resolve()
    if out == runs:
        problem = "is the --runs folder"
    elif out.is_relative_to(runs):
        problem = f"is inside --runs {runs_dir}"
    elif runs.is_relative_to(out):
        problem = f"contains --runs {runs_dir}"
    else:
        return
    raise ReportError(f"--out {out_dir}: {problem}; choose a folder apart from the runs")


def _old_report_files(out: Path, shown: str | Path) -> list[str] | None:
    """The files of the old report in ``out`` (None when empty); refuses anything else."""
    if not any(out.iterdir()):
        return None
    files = _read_marker(out / MARKER)
    if files is None:
        raise ReportError(
            f"--out {shown}: not empty and not a report written by experiments.report; "
            "choose another folder"
        )
    folders = {parent.as_posix() for f in files for parent in Path(f).parents} - {"."}
    allowed = set(files) | {MARKER}
    for root, dirs, names in os.walk(out):  # does not follow links to folders
        here = Path(root)
        for name in sorted(dirs) + sorted(names):
            path = here / name
            rel = path.relative_to(out).as_posix()
            if path.is_symlink():
                ok = False
            elif name in dirs:
                ok = rel in folders
            else:
                ok = rel in allowed and path.is_file()
            if not ok:
                raise ReportError(
                    f"--out {shown}: {rel} was not written by experiments.report; move it "
                    "away or choose another folder"
                )
    return files


def _read_marker(path: Path) -> list[str] | None:
    """The files a report's marker lists, or None when it is missing or not one of ours."""
    try:
        marker = json_loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(marker, dict) or marker.get("written_by") != "experiments.report":
        return None
    files = marker.get("files")
    if not isinstance(files, list) or not all(_safe_relative(f) for f in files):
        return None  # a path outside the folder is never ours to delete
    return list(files)


def _safe_relative(name: object) -> bool:
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return False
    parts = name.split("/")
    return all(p not in ("", ".", "..") for p in parts) and name != MARKER


def _write_marker(folder: Path) -> None:
    files = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != MARKER
    )
    marker = {"written_by": "experiments.report", "format": _MARKER_FORMAT, "files": files}
    (folder / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")


def _move_into_place(tmp: Path, out: Path, shown: str | Path) -> None:
    """Renames ``tmp`` to ``out``; an old report is renamed aside, then its files deleted.

    ``out`` is checked again just before (the tables and figures take a
    while), and of the old report only the files its marker lists are
    deleted, one by one, never the folder as a whole.
    """
    aside = None
    if out.is_dir():
        old_files = _old_report_files(out, shown)
        if old_files is None:
            out.rmdir()  # empty: fails, losing nothing, if a file appeared since
        else:
            aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            try:
                os.replace(out, aside / out.name)
            except BaseException:
                aside.rmdir()
                raise
    try:
        os.replace(tmp, out)
    except BaseException:
        if aside is not None:
            os.replace(aside / out.name, out)
            aside.rmdir()
        raise
    if aside is not None:
        _remove_report(aside / out.name, old_files)
        try:
            aside.rmdir()
        except OSError:
            print(
                f"warning: kept {aside / out.name}: it held files the old report did not "
                "list (added while this one was written)",
                file=sys.stderr,
            )


def _remove_report(folder: Path, files: list[str]) -> None:
    """Deletes the listed files and the marker, then the folders they leave empty."""
    for rel in [*files, MARKER]:
        with contextlib.suppress(OSError):  # gone, or no longer a file: it stays
            (folder / rel).unlink()
    folders = {folder / parent for f in files for parent in Path(f).parents}
    for path in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty: something unlisted stays
            path.rmdir()


def _section(table: Table, level: str = "###") -> list[str]:
    links = " · ".join(f"[{ext}](tables/{table.name}.{ext})" for ext in ("md", "tex", "csv"))
    return [f"{level} {md_escape(table.title)}", "", to_markdown(table, title=False), links, ""]


def _selection_text(summary: Summary, dataset: str) -> str:
    """Which validation metric chose the epoch and LR, and how it relates to the headline."""
    primary, headline = summary.primary[dataset], summary.headline(dataset)
    how = (
        f"{metric_label(primary)} (the headline)"
        if primary == headline
        else f"{metric_label(primary)}, "
        + (
            "eq. 6, which ranks single-label runs as top-1 does"
            if {primary, headline} == {"accuracy", "top1_accuracy"}
            else "as the records say"
        )
    )
    return f"The epoch and LR are chosen by the validation {md_escape(how)}."


def _metric_lines(summary: Summary) -> list[str]:
    """One line per dataset table: which metric each of its columns is."""
    lines = []
    for d in summary.datasets:
        number = table_number(d)
        name = f"Table {number} ({d})" if number else d
        shown = "; ".join(metric_meaning(m) for m in summary.metrics[d])
        lines.append(f"  - {md_escape(name)}: {md_escape(shown)}.")
    return lines


OPTION_NOTES = {
    ("split_by", "image"): "split by image, as the paper did (`--split-by image`): one "
    "patient's images can fall in both training and test, which flatters the test metrics",
    ("split_by", "patient"): "split by patient, each patient's images on one side (the "
    "paper split by image: `--split-by image`)",
    ("uncertain", "libauc"): "uncertain labels mapped as LibAUC does, as the paper did: 1 "
    "for Edema and Atelectasis, 0 for Cardiomegaly, Consolidation and Pleural Effusion",
    ("uncertain", "ones"): "every uncertain label counted as positive, U-Ones (the paper "
    "used LibAUC's mapping: `--uncertain libauc`)",
    ("uncertain", "zeros"): "every uncertain label counted as negative, U-Zeros (the paper "
    "used LibAUC's mapping: `--uncertain libauc`)",
}
"""What each split or label option means for the numbers, for "How to read"."""


START_WORDS = {
    "pretrained": "from pretrained weights",
    "random": "from **random initialisation** (no pretrained weights: not the paper's "
    "transfer learning)",
}
"""How a dataset's start weights read in "Trained under" (:func:`cells.start_of`)."""


def _protocol_lines(summary: Summary) -> list[str]:
    """What each dataset's runs were trained under (the paper's: 224 px, batch 64, at most
    50 epochs, patience 5, float32, BatchNorm statistics updated)."""
    lines = []
    for d in summary.datasets:
        p = summary.protocol.get(d)
        if p:
            source = f" read from {md_code(p['source'])}" if p.get("source") else ""
            if p.get("sizes"):
                each = ", ".join(f"{split} {n}" for split, n in p["sizes"].items()) + " images"
                units = p.get("units") or {}
                if units.get("unit"):  # MURA: the tables' numbers are per study, not image
                    per = ", ".join(f"{s} {units[s]}" for s in ("val", "test") if s in units)
                    each += f"; metrics per {md_escape(str(units['unit']))}: {per}"
                source += f" ({each})"
            lines.append(
                f"  - {md_escape(d)}{source}: {p['image_size']} px, batch {p['batch_size']}, "
                f"at most {p['epochs']} epochs (patience {p['patience']}), {p['precision']} "
                f"compute, `frozen_bn={p['frozen_bn']}`, {START_WORDS[p['start']]}, numerics "
                f"version {p['numerics']}.{''.join(' ' + n for n in data_notes(p))}"
            )
    return ["- Trained under, per dataset:", *lines] if lines else []


def _strategy_option_lines(summary: Summary) -> list[str]:
    """The options each strategy ran with (a row names a strategy, not its options), and
    where they are not the paper's (L2-SP's ½ doubles or halves its penalty's gradient)."""
    lines = []
    for strategy, options in summary.strategy_options.items():
        shown = ", ".join(md_code(f"{k} = {option_text(v)}") for k, v in options.items())
        differ = [
            md_code(f"{k} = {option_text(v)}") for k, v in summary.unlike_paper(strategy).items()
        ]
        unlike = f" (the paper's: {', '.join(differ)})" if differ else ""
        lines.append(f"  - {md_escape(strategy_label(strategy))}: {shown}{unlike}.")
    return ["- Strategy options, as run:", *lines] if lines else []


def _option_lines(summary: Summary) -> list[str]:
    """One line per dataset run with a split or label option (ISIC 2020, CheXpert)."""
    lines = []
    for d in summary.datasets:
        for option, value in summary.dataset_options.get(d, {}).items():
            if option == "val_fraction" and value == TASK_VAL_FRACTION:
                continue  # the protocol's own: said in the split sizes
            text = OPTION_NOTES.get((option, value), f"{option} = {value}")
            lines.append(f"- {md_escape(d)}: {md_escape(text)}.")
    return lines


def paper_lines(summary: Summary, paper: PaperTables) -> list[str]:
    """The index's "Against the paper": per dataset of both, what its ``vs_paper`` table
    says in numbers, then the cells only one side has, counted once."""
    lines = [
        f"Published values from {md_code(paper.source)}. Per dataset: cells (strategy × arch "
        "× metric) in both; mean |ours − paper| in percentage points; how many differ by "
        f"|z| > {Z_FLAG:g}; and per arch Spearman's ρ between our ranking of the strategies "
        "by the headline metric and the paper's (1: the same order; n/a with fewer than 3 "
        "strategies in both or all tied).",
        "",
    ]
    compared = agreements(summary, paper)
    if not compared:  # the comparison is empty by construction, not by a failure
        lines.append(
            f"- None of this report's datasets ({md_escape(', '.join(summary.datasets))}) is "
            "in the published tables: nothing to compare."
        )
    for g in compared:
        mean = f"{g.mean_abs_diff_pp:.2f}" if g.mean_abs_diff_pp is not None else "–"
        rho = "; ".join(
            f"{arch_label(a)} {f'{r:+.2f}' if r is not None else 'n/a'} "
            f"({k} {'strategy' if k == 1 else 'strategies'})"
            for a, (r, k) in g.rho.items()
        )
        ranking = f"; ranking by {metric_label(g.headline)}, ρ: {rho}" if rho else "; no ranking"
        lines.append(
            f"- {md_escape(g.dataset)}: {g.compared} cells compared, mean |diff| {mean} pp, "
            f"{g.flagged} with |z| > {Z_FLAG:g}{md_escape(ranking)} "
            f"([table](tables/vs_paper_{slug(g.dataset)}.md))."
        )
        protocol = protocol_unlike_paper(
            summary.protocol.get(g.dataset) or {}, summary.dataset_options.get(g.dataset)
        )
        if protocol:
            lines.append(
                f"  Not the paper's protocol: {md_escape(protocol)}; a difference may be its."
            )
        if g.headline not in summary.metrics[g.dataset]:  # records from before it was kept
            lines.append(
                f"  Our {md_escape(metric_label(summary.headline(g.dataset)))} is not the "
                f"paper's {md_escape(metric_label(g.headline))}: the records hold no "
                f"{md_escape(metric_label(g.headline))} (written by an older toolkit), so "
                "these cells are not compared and count below as unmatched on both sides; "
                "rerun them (--force) to compare."
            )
    no_run, no_paper = unmatched(summary, paper)
    lines += [
        f"- Paper cells without a run: {no_run} (not run here, left out by --only, failed, or "
        "the metric undefined).",
        f"- Our cells the paper does not have: {no_paper}.",
        "",
    ]
    return lines


def index_markdown(
    summary: Summary,
    tables: list[Table],
    beat_threshold: float = 0.1,
    paper: PaperTables | None = None,
    beat_points: bool = False,
) -> str:
    """``index.md``: how to read the report, then every table inline and every figure."""
    by_name = {t.name: t for t in tables}
    counts = status_counts(summary)
    done = sum(c.runs_done for c in summary.cells.values())
    expected = sum(c.runs_expected for c in summary.cells.values())
    if summary.grid_name is not None:
        source = f"the runs of grid {md_escape(repr(summary.grid_name))} (from --config)"
    else:
        planned = (
            f"the runs listed in the sweep plan(s) {md_escape(', '.join(summary.plans))} "
            "beside the runs (a shard that never ran counts as missing; delete a plan file "
            "to stop expecting its runs), and for a dataset holding runs no plan lists, "
            if summary.plans
            else ""
        )
        source = (
            f"{planned}inferred from the records and planned runs of every such dataset "
            "together: every arch, strategy, LR and seed seen among them, for each of them "
            "(--config gives a grid's own)"
            if summary.plans
            else "inferred from the records: every arch, strategy, LR and seed seen "
            f"anywhere{' --only keeps' if summary.filters else ''}, for every dataset "
            "(--config gives a grid's own)"
        )
    lines = [
        "# Comparison of fine-tuning strategies: report",
        "",
        f"Runs done (finished or failed): {done} of {expected} expected; expected runs are "
        f"{source}. Cells (dataset × arch × strategy): {counts[COMPLETE]} complete, "
        f"{counts[PARTIAL]} partial, {counts[FAILED]} failed, "
        + (f"{counts[UNVALIDATED]} unvalidated, " if counts[UNVALIDATED] else "")
        + f"{counts[MISSING]} missing.",
    ]
    if summary.filters:
        shown = "; ".join(f"{k} = {' | '.join(sorted(v))}" for k, v in summary.filters.items())
        lines += ["", f"Filters (--only): {md_escape(shown)}."]
    if summary.left_out:
        lines += [
            "",
            f"{summary.left_out} records or failure notes outside the grid were left out"
            + (f": {md_escape(summary.left_out_why)}." if summary.left_out_why else "."),
        ]
    if summary.float32_ranked:
        n = summary.float32_ranked
        lines += [
            "",
            f"{n} record{'s' if n != 1 else ''} (numerics version 4 or earlier) ranked AUROC "
            "and mAP by float32 probabilities, which round to 1.0 past a logit margin of about "
            "16.6: where a model was that confident, its examples tied, and those two metrics "
            "(and, where one selects, the best epoch and the LR) can differ from what this "
            "toolkit computes; a sweep of the grid runs them again under version 5.",
        ]
    if summary.log_probability_ranked:
        n = summary.log_probability_ranked
        lines += [
            "",
            f"{n} record{'s' if n != 1 else ''} (written before 2026-12-07's log-odds) ranked "
            "AUROC and mAP by float64 log-probabilities, the top class's exactly 0 past a logit "
            "margin of "
            "about 745: where a model was that confident (a diverging one, say), its examples "
            "tied, and those two metrics (and, where one selects, the best epoch and the LR) "
            "can differ from this toolkit's ranking by log-odds; rerun them (--force) to rank "
            "alike.",
        ]
    if summary.superseded:
        n = summary.superseded
        lines += [
            "",
            f"{n} record{'s' if n != 1 else ''} on older data (superseded by a rerun of "
            f"the same settings on newer data) {'were' if n != 1 else 'was'} left out "
            "(--latest).",
        ]
    lines += [
        "",
        "## How to read the tables",
        "",
        "- Values are test metrics in percent, mean (SE) over seeds; SE = sample standard "
        "deviation (ddof = 1) / √n; an SE of – means a single seed. The CSVs hold the raw "
        "values: means, SEs, mean_diff and share as fractions, improvement_pct and "
        "threshold_pct in percent, the device_seconds rows' mean in seconds; marks and "
        "failure say what the tables mark. Four columns are lists, space-separated: seeds "
        "(paired CSVs, e.g. `0 1 2`), excluded_lrs and tied_lrs (dataset and cost CSVs, e.g. "
        "`0.001 0.01`) and Table 11's cells_incomplete (e.g. `resnet50/lp vgg19/lp_ft`); read "
        'them as strings (pandas: `dtype={"seeds": str, "excluded_lrs": str, "tied_lrs": '
        "str}`), or a single entry reads as a number.",
        "- Learning rate: per dataset, arch and strategy, the LR with the highest mean "
        "validation primary metric over its seeds (each run's best epoch) is chosen, and the "
        "test metrics are those of that LR (an exact tie goes to the smaller LR: the dataset "
        "table's notes and the CSVs' tied_lrs name each cell chosen so). An LR at "
        "which any run failed is never chosen.",
        f"- {DAGGER}: partial cell, some expected runs missing; the value is from the runs "
        "that exist and the table's notes say k of n runs. — : no run at all (an empty field "
        "in the CSV; never 0), and in the cost columns also a cell that ran but has no "
        "chosen LR (diverged, failed, unvalidated) or whose device-seconds per run are not "
        "known (a run at the chosen LR lacks a time, such as one that reused cached features "
        "written before their extraction time was recorded): the cost table's notes name "
        "each, and the cost figure, which has no point for them, names them under its axes; "
        "Images/s — : every epoch trained only the head, on cached features. diverged: every "
        "LR at which the cell ran has a failed run (a failure note; the runs that finished at "
        "that LR do not count), so no LR could be chosen, and every failure note says the "
        "loss became non-finite; failed: the same, with a failure of another kind among "
        "them. unvalidated: every LR has a run "
        "without a validation value (or a failed one), so none could be chosen; not a failure "
        "and not counted in Table 12. n/a: the metric is undefined for every "
        "seed (in an improvement figure, a bar without a value: its note says so). "
        f"{DOUBLE_DAGGER}: a run failed (or has no validation value) at one of the "
        "cell's LRs, so that LR was left "
        "out of the choice and the value is the best of the others (the table's notes and "
        "the CSV's excluded_lrs name it). "
        f"{SECTION}: the value is over fewer seeds than the cell has, the metric being "
        "undefined for the others (the notes and the CSV's n say how many)."
        + (
            f" {PILCROW}: runs of a staged strategy tested with parameters from before "
            "their final stage (the run ended at the epoch cap, or its best validation epoch "
            "came, earlier), so the blocks it unfreezes last never trained in the model "
            "tested."
            if any(c.unstaged for c in summary.cells.values())
            else ""
        ),
        "- **Bold**: best mean per arch and metric; <u>underlined</u>: best mean per metric "
        "over all archs; means equal at the 2 decimals shown are all marked.",
        "- Cost: device-seconds = (train_seconds, the epochs' steps, data waits and "
        "validation, + the extraction of the cached features that head-only epochs trained "
        "from, charged to every run that used them) × number of devices (compilation "
        "excluded); images/s is the images of the epochs that ran them through the model "
        "over those epochs' train seconds.",
        "- Metrics, per table (each dataset's first column is its headline metric: the "
        "figures' relative improvements, Table 11 and the paired comparison use it):",
        *_metric_lines(summary),
        f"- Table 11: best (arch, strategy) per dataset by its headline metric, and its "
        f"relative improvement over FT of the same arch, 100·(m − m_FT)/m_FT. Table 12: "
        f"datasets where a strategy beats FT by more than {beat_threshold:g}"
        + (" percentage points, 100·(m − m_FT)" if beat_points else "% relative improvement")
        + f", {md_escape(count_rule_text(summary))}.",
        "- Figures: relative improvement over FT with an error bar of ± its SE over the "
        "seeds, 100·√(se² + (m/m_FT)²·se_FT²)/m_FT (the two cells' SEs taken as "
        "independent); no error bar where a cell has a single seed.",
        f"- {md_escape(paired_note(paired_vs_ft(summary), summary))}",
        *_option_lines(summary),
        *_strategy_option_lines(summary),
        *_protocol_lines(summary),
        "",
    ]
    for d in summary.datasets:
        names = figures.figure_names(d)
        metrics = ", ".join(metric_label(m) for m in summary.metrics[d])
        lines += [
            f"## {md_escape(d)}",
            "",
            f"Table metrics: {metrics} (headline: {metric_label(summary.headline(d))}). "
            f"{_selection_text(summary, d)}",
            "",
            *_section(by_name[dataset_table_name(d)]),
            f"![Relative improvement over FT, {md_escape(d)}](figures/{names['improvement']})",
            "",
            *_section(by_name[f"cost_{slug(d)}"]),
            f"![Cost versus test metric, {md_escape(d)}](figures/{names['cost']})",
            "",
            *_section(by_name[f"paired_{slug(d)}"]),
        ]
    lines += [
        "## Across datasets",
        "",
        *_section(by_name["table11"]),
        *_section(by_name["table12"]),
    ]
    if paper is not None:
        lines += ["## Against the paper", "", *paper_lines(summary, paper)]
        lines += [
            line
            for d in summary.datasets
            if f"vs_paper_{slug(d)}" in by_name
            for line in _section(by_name[f"vs_paper_{slug(d)}"])
        ]
    return "\n".join(lines).rstrip() + "\n"
