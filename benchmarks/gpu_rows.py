"""Gathers ``benchmarks/gpu.sh``'s logs into ``$OUT/rows.md``, the rows for RESULTS.md.

    python3 benchmarks/gpu_rows.py OUT

Run by gpu.sh after every step (and at its exit), so a lease cut short
still returns the rows measured so far. Standard library only: it must
run where the toolkit's own dependencies are missing.

From each step's log it keeps the tables, the result lines (``- ...``,
"LP from cached features ...", "FT as one fused program ...") and
grid_bill's headings (one level under the step's), and drops the ``# ...``
progress lines, which would be headings in Markdown and break the tables
they sit in; the few that say how a step was run or cut short (the
machine line, a CPU or scaled projection, a time budget, a SIGTERM) are
kept as notes under the step's output. A JAX speed printed ahead of its
table row (``- measured JAX ...``) is kept only where the row is missing
(the PyTorch side killed or failed).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # an installed medft_jax wins
from medft_jax.errors import ArgumentParser, UserError, cli_main, exit_command  # stdlib only

STEPS = (
    ("densenet", "models.py, DenseNet-121, JAX bf16 against PyTorch AMP"),
    ("grid_bill", "grid_bill.py, the grid's bill in bf16"),
    ("models", "models.py, ResNet-50, JAX bf16 against PyTorch AMP"),
    ("strategies", "strategies.py, ResNet-50: LP, LP from cached features"),
)
KEEP = re.compile(
    r"^(\||- |finished|LP from cached features|FT as one fused program|nothing measured)"
)
NOTE = re.compile(
    r"^# (\d{4}-\d\d-\d\d |CPU PROJECTION|timed at|time budget|SIGTERM|the report of|measured )"
)
"""Lines kept as notes: ``# measured ft 0: ...`` is what strategies.py timed before its
table, all a step stopped at its limit leaves."""
JAX_ONLY = re.compile(r"^- measured JAX \S+ (\S+) (\d+)x(\d+) (.+): ")


def section(text: str) -> list[str]:
    """The lines of one step's log that belong in rows.md (tables set off by blank lines)."""
    lines = text.splitlines()
    rows = {tuple(c.strip() for c in ln.split("|")[1:5]) for ln in lines if ln.startswith("| ")}
    out: list[str] = []
    notes: list[str] = []
    for line in lines:
        line = line.rstrip()
        if NOTE.match(line):
            notes.append(f"- note: {line[2:]}")
            continue
        m = JAX_ONLY.match(line)
        if m and m.groups() in rows:  # its table row is there
            continue
        if line.startswith("## "):
            line = "#### " + line[3:]
        elif not KEEP.match(line):
            continue
        table = line.startswith("|")
        if out and (table != out[-1].startswith("|") or line.startswith("####")):
            out.append("")
        out.append(line)
        if line.startswith("####"):
            out.append("")
    out = _without_empty_tables(out)
    if notes:
        out += ["", *notes] if out else notes
    return out


def _without_empty_tables(lines: list[str]) -> list[str]:
    """``lines`` less each table that is a header and its rule alone (a step stopped before
    its table's rows were printed), and the blank line before it."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        j = i
        while j < len(lines) and lines[j].startswith("|"):
            j += 1
        if j > i:  # a table: lines[i:j]
            if j - i > 2:
                out += lines[i:j]
            elif out and out[-1] == "":
                out.pop()
            i = j
        else:
            out.append(lines[i])
            i += 1
    return out


def read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def rows(out: Path) -> str:
    """rows.md from ``$OUT``: ``gpu.txt`` (gpu.sh's ``key: value`` lines: card, versions,
    commit, date, setup, ``step NAME``) and each step's log."""
    meta: dict[str, str] = {}
    for line in read(out / "gpu.txt").splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            meta.setdefault(key, value)
    lines = [
        f"## GPU: {meta.get('card', 'card not recorded')} (`benchmarks/gpu.sh`, "
        f"{meta.get('date', 'date not recorded')})",
        "",
        f"- {meta.get('versions', 'versions not recorded')}",
        f"- commit: {meta.get('commit', 'commit not recorded')}",
    ]
    for key in ("setup", "total"):
        if key in meta:
            lines.append(f"- {key}: {meta[key]}")
    for name, title in STEPS:
        lines += ["", f"### {name}: {title}", ""]
        if f"step {name}" in meta:
            lines += [f"- step: {meta[f'step {name}']}", ""]
        log = out / f"{name}.txt"
        body = section(read(log))
        if body:
            lines += body
        elif not log.exists():
            lines.append("- not run")
        else:
            lines.append("- no rows (see the log)")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", metavar="OUT", help="gpu.sh's output folder: its logs, and rows.md")
    out = Path(p.parse_args(argv).out)
    if not out.is_dir():
        what = "no such folder" if not out.exists() else "not a folder"
        raise UserError(f"OUT {str(out)!r}: {what}; expected gpu.sh's output folder")
    (out / "rows.md").write_text(rows(out))  # no temporary: $OUT brings back 8 files at most
    return 0


if __name__ == "__main__":
    exit_command(cli_main(main))
