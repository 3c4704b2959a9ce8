"""Report table model (Column, Entry, Table), its Markdown / LaTeX / CSV renderers, formatting.

A :class:`Table` holds two views of the same numbers: the display grid
(rows of :class:`Entry` text with bold / underline flags, what Markdown
and LaTeX show) and ``records``, one flat dict per number with raw
fractions, SE, n, status and flags (what the CSV holds), so a reader of
the CSV never parses "85.31 (0.42)†" back, and a missing cell is an empty
field there, never 0.

The formatting helpers (labels, percent, seconds, file-name slugs) are
shared by the table builders (:mod:`medft_jax.report.tables`), the
figures and the index.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
from collections.abc import Iterable
from typing import Any

from medft_jax.names import ARCH_LABELS, STRATEGY_LABELS, lr_text

MISSING_TEXT = "—"
"""A cell without any run (Markdown, LaTeX); the CSV leaves the field empty."""
NO_SE = "–"
"""The SE of a single seed."""
DAGGER = "†"
"""A cell with expected runs missing."""
DOUBLE_DAGGER = "‡"
"""A cell whose LR was chosen without an LR at which a run failed."""
SECTION = "§"
"""A value over fewer seeds than its cell has: the metric was undefined for the others."""
PILCROW = "¶"
"""A staged cell (G-LF, G-FL, LP-FT) whose chosen runs were tested with parameters from
before their final stage (the run ended there, or its best validation epoch came
earlier): the blocks it unfreezes last never trained in the model tested."""
UNDEFINED = "n/a"
"""A metric undefined for every seed of a cell that has runs (e.g. AUROC with one class)."""

METRIC_LABELS = {
    "map": "mAP",
    "accuracy": "Acc.",
    "auroc": "AUROC",
    "kappa": "κ",
    "f1": "F1",
    "balanced_accuracy": "Bal. acc.",
    "top1_accuracy": "Acc. (top-1)",
    "subset_accuracy": "Subset acc.",
}

METRIC_MEANINGS = {
    "map": "mean over classes of average precision",
    "accuracy": (
        "the paper's eq. 6, mean over classes of one-vs-rest (TP+TN)/N (plain accuracy on a "
        "binary task, equal to top-1 there; 1 − Hamming loss on a multilabel one)"
    ),
    "auroc": "mean over classes of one-vs-rest ROC AUC (binary: AUROC of the positive class)",
    "kappa": "Cohen's κ (multilabel: mean over classes of the binary κ)",
    "f1": "macro F1",
    "balanced_accuracy": "mean over classes of recall",
    "top1_accuracy": "top-1 accuracy, the share of images whose highest-scoring class is right",
    "subset_accuracy": "share of images whose whole label vector is right",
}
"""What each metric key is, for the report's "How to read" (see :mod:`medft_jax.metrics`)."""


@dataclasses.dataclass(frozen=True)
class Column:
    """A column: ``label`` under an optional spanning ``group`` (an arch)."""

    label: str
    group: str = ""
    align: str = "r"


@dataclasses.dataclass(frozen=True)
class Entry:
    """The text of one table cell and how it is emphasised."""

    text: str
    bold: bool = False
    underline: bool = False


@dataclasses.dataclass
class Table:
    """One report table: display grid, notes, and its raw CSV records."""

    name: str
    """File stem: ``tables/<name>.md|.tex|.csv``."""
    title: str
    columns: list[Column]
    rows: list[list[Entry]]
    notes: list[str] = dataclasses.field(default_factory=list)
    fields: tuple[str, ...] = ()
    """CSV header."""
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)


# --- renderers -------------------------------------------------------------------------------


def md_escape(text: str) -> str:
    """Escapes the characters Markdown would read as markup (``\\ | * _ < > [ ] $``;
    GitHub reads ``$...$`` as math). Backticks are left: the notes' own code spans."""
    return re.sub(r"([\\|*_<>\[\]$])", r"\\\1", text)


def md_code(text: str) -> str:
    """``text`` verbatim as a Markdown code span: escapes are not read inside one (a
    path's ``_`` showed as ``\\_``), so the fence is one backtick longer than the
    longest run of them in ``text``."""
    runs = [len(r) for r in re.findall("`+", text)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_entry(e: Entry) -> str:
    text = md_escape(e.text)
    if e.bold:
        text = f"**{text}**"
    if e.underline:
        text = f"<u>{text}</u>"
    return text


def to_markdown(table: Table, *, title: bool = True) -> str:
    """GitHub Markdown: a pipe table, bold ``**``, underline ``<u>``, notes as a list."""
    header = [f"{c.group} {c.label}" if c.group else c.label for c in table.columns]
    align = [":--" if c.align == "l" else "--:" for c in table.columns]
    lines = [f"**{md_escape(table.title)}**", ""] if title else []
    lines.append("| " + " | ".join(md_escape(h) for h in header) + " |")
    lines.append("|" + "|".join(align) + "|")
    lines += ["| " + " | ".join(_md_entry(e) for e in row) + " |" for row in table.rows]
    if table.notes:
        lines.append("")
        lines += [f"- {md_escape(n)}" for n in table.notes]
    return "\n".join(lines) + "\n"


_LATEX_CHARS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    "|": r"\textbar{}",  # OT1, LaTeX's default encoding, prints | as an em-dash
    '"': r"\textquotedbl{}",  # and " as a closing quote
    ">": r"\textgreater{}",
    "—": r"\textemdash{}",  # not ---: an ASCII hyphen beside it made a longer dash
    "–": r"\textendash{}",
    "−": "$-$",
    "†": r"$^{\dagger}$",
    "‡": r"$^{\ddagger}$",
    "§": r"$^{\S}$",
    "¶": r"$^{\P}$",
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
    "κ": r"$\kappa$",
    "·": r"$\cdot$",
    "×": r"$\times$",
    "≥": r"$\geq$",
    "√": r"$\surd$",
    "²": r"$^{2}$",  # raw, it needs UTF-8 input and a 2020 kernel's textcomp
}


def latex_escape(text: str) -> str:
    """Escapes LaTeX's special characters and spells the few non-ASCII ones we print.

    ASCII hyphens in a row are kept apart (``-{}-``): LaTeX's ``--`` is an en-dash, and
    a flag in a caption (``--only``) printed as "–only", which does not run. The real
    dashes are commands, so no hyphen beside one joins it into a longer dash.
    """
    return "".join(
        "{}".join(part) if part.startswith("--") else "".join(_LATEX_CHARS.get(c, c) for c in part)
        for part in re.split(r"(-{2,})", text)
    )


def _tex_entry(e: Entry) -> str:
    """A cell in LaTeX; a negative number's sign a minus (``$-$``), not text mode's hyphen,
    half its width, beside the ``+`` of the positive ones in the same column."""
    negative = re.match(r"-(?=[0-9.])", e.text)
    text = "$-$" + latex_escape(e.text[1:]) if negative else latex_escape(e.text)
    if e.bold:
        text = rf"\textbf{{{text}}}"
    if e.underline:
        text = rf"\underline{{{text}}}"
    return text


def to_latex(table: Table) -> str:
    """A booktabs ``table`` float: spanning arch headers, ``\\textbf``/``\\underline``, notes."""
    cols = table.columns
    lines = [
        r"% requires \usepackage{booktabs}",
        r"\begin{table}[htbp]",
        r"\centering",
        # LaTeX numbers the float itself: "Table 8: " again read "Table 1: Table 8: ...".
        rf"\caption{{{latex_escape(re.sub(r'^Table [0-9]+: ', '', table.title))}}}",
        rf"\label{{tab:{table.name}}}",
        r"\begin{tabular}{" + "".join(c.align for c in cols) + "}",
        r"\toprule",
    ]
    if any(c.group for c in cols):
        spans, rules, start = [], [], 0
        for i in range(1, len(cols) + 1):
            if i == len(cols) or cols[i].group != cols[start].group:
                width, group = i - start, cols[start].group
                if group:
                    spans.append(rf"\multicolumn{{{width}}}{{c}}{{{latex_escape(group)}}}")
                    rules.append(rf"\cmidrule(lr){{{start + 1}-{i}}}")
                else:
                    spans += [""] * width
                start = i
        lines.append(" & ".join(spans) + r" \\")
        lines.append(" ".join(rules))
    lines.append(" & ".join(latex_escape(c.label) for c in cols) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(_tex_entry(e) for e in row) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.notes:
        lines.append(r"\par\smallskip{\footnotesize")
        lines += [latex_escape(n) + r"\par" for n in table.notes]
        lines.append("}")
    lines.append(r"\end{table}")
    if any(r"\textquotedbl" in line for line in lines):
        lines[0] += r" and \usepackage[T1]{fontenc} (for \textquotedbl)"
    return "\n".join(lines) + "\n"


def _csv_value(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (tuple, list)):
        return " ".join(map(str, v))
    return str(v)


def to_csv(table: Table) -> str:
    """One line per number: raw fractions, SE, n, status and flags; no value → empty field."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table.fields)
    for rec in table.records:
        writer.writerow([_csv_value(rec.get(f)) for f in table.fields])
    return buf.getvalue()


# --- formatting ------------------------------------------------------------------------------


def arch_label(arch: str) -> str:
    return ARCH_LABELS.get(arch, arch)


def strategy_label(strategy: str) -> str:
    return STRATEGY_LABELS.get(strategy, strategy)


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def metric_meaning(metric: str) -> str:
    """``Acc. (top-1) = top-1 accuracy, …``: a label and what it measures."""
    meaning = METRIC_MEANINGS.get(metric)
    return f"{metric_label(metric)} = {meaning}" if meaning else metric_label(metric)


def lrs_text(lrs: Iterable[float]) -> str:
    """``0.001 1e-05``: learning rates as the CSVs, notes and run summary write them."""
    return " ".join(map(lr_text, lrs))


def pct(x: float, digits: int = 2, sign: bool = False) -> str:
    """A fraction as percent with ``digits`` decimals; NaN -> ``–``; one that rounds to zero
    shows no minus (``+0.00`` with ``sign``)."""
    if not math.isfinite(x):
        return NO_SE
    text = f"{100 * x:+.{digits}f}" if sign else f"{100 * x:.{digits}f}"
    # a tiny negative rounds to "-0.00": a sign the shown digits do not carry
    return text.replace("-", "+" if sign else "", 1) if float(text) == 0 else text


def seconds(x: float | None) -> str:
    """Device-seconds, readable: whole seconds with thousands separators above 100."""
    if x is None or not math.isfinite(x):
        return MISSING_TEXT
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "_"
