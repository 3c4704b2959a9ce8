"""A sweep's numbers against published ones: the paper's Tables 3-10, cell by cell.

:func:`load_paper` reads a CSV of published per-cell means and SEs (the form of
the bundled ``paper_tables.csv``, typed from the paper's Tables 3-10 as printed:
columns ``table, dataset, strategy, arch, metric, mean, se``, mean and SE in
percent) and checks every line; :func:`compare` sets a :class:`Summary`'s
cells beside it: per (strategy, arch, metric) present in both, the
difference in percentage points and z = diff / √(se_ours² + se_paper²), and
per dataset how far the strategy ranking agrees (Spearman's ρ per arch).
``python -m experiments.report --vs-paper [CSV]`` writes them as the
``vs_paper_<dataset>`` tables and the index's "Against the paper".
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path

from medft_jax import metrics, names
from medft_jax.errors import UserError, did_you_mean, spelling
from medft_jax.report.aggregate import same_mean
from medft_jax.report.cells import Summary
from medft_jax.report.render import NO_SE

COLUMNS = ("table", "dataset", "strategy", "arch", "metric", "mean", "se")
"""The columns a published-tables CSV must have (more are ignored)."""
BUNDLED = "paper_tables.csv"
"""The package file (in :mod:`medft_jax.report`) read when no CSV is given."""
Z_FLAG = 2.0
"""|z| above this is flagged: a difference larger than the two SEs explain."""
PaperKey = tuple[str, str, str, str]
"""(dataset, arch, strategy, metric key)."""


class PaperTablesError(UserError):
    """A published-tables CSV that cannot be read; the message names its file and line."""


@dataclasses.dataclass(frozen=True)
class PaperValue:
    """One published cell: mean and SE in percent (SE None where the CSV leaves it empty)."""

    mean: float
    se: float | None
    line: int
    printed: str = ""
    """Mean and SE as the CSV writes them, ``87.72 (0.0)``: the precision the paper gives."""
    zero_se: float = 0.05
    """Half a unit of the SE's last printed digit (``0.0``: 0.05; ``0.00`` in a user's CSV:
    0.005, which read as 0.05 understated z tenfold), added to the printed SE: the paper
    cuts its SEs off, not rounds them (BACH's accuracies, multiples of 2.5 over 40 test
    images: every one of the 24 cells' printed mean and SE follows from some seeds cut
    off, 13 from seeds rounded;
    L1-SP ResNet-50's 65, 70, 70 have SE 1.667, printed 1.6), so a printed 1.6 is
    1.6-1.7, read as its middle, 1.65, and 0.0 as 0.05."""


@dataclasses.dataclass(frozen=True)
class PaperTables:
    """The published cells of a CSV, keyed by (dataset, arch, strategy, metric key)."""

    source: str
    values: Mapping[PaperKey, PaperValue]

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(d for d in names.TASK_NAMES if any(k[0] == d for k in self.values))


def metric_key(dataset: str, paper_metric: str) -> str:
    """The toolkit's key of a column the paper labels ``paper_metric``: the multiclass
    tasks' "accuracy" is top-1 (``medft_jax.metrics.TASK_METRICS``)."""
    if paper_metric == "accuracy" and "top1_accuracy" in metrics.TASK_METRICS[dataset]:
        return "top1_accuracy"
    return paper_metric


_LABELLED = {
    **{label: key for key, label in names.STRATEGY_LABELS.items()},
    **{names.ARCH_LABELS[a]: a for a in names.ARCHS},
}
"""The paper's labels of its strategies and archs (``LP-FT``, ``ResNet-50``), as one
transcribing its tables types them: read as the toolkit's ids."""


def _fold(value: str) -> str:
    return spelling(value).replace(" ", "_")


def _folded(choices: Iterable[str]) -> dict[str, str]:
    return {_fold(c): c for c in choices}


def _known(value: str, choices: Sequence[str]) -> str | None:
    """``value`` as the toolkit's id: the id, the paper's label (``LP-FT``), or the id in
    another case or with ``-`` for ``_`` (``BACH``, ``g-lf``); else None."""
    if value in choices:
        return value
    known = _LABELLED.get(value) or _folded(choices).get(_fold(value))
    return known if known in choices else None


def _paper_label(key: str) -> str:
    return "accuracy" if key == "top1_accuracy" else key


def bundled_text() -> tuple[str, str]:
    """The bundled CSV: (how to name it, its text)."""
    res = resources.files("medft_jax.report").joinpath(BUNDLED)
    return f"medft_jax/report/{BUNDLED} (bundled)", res.read_text(encoding="utf-8")


def table_number(dataset: str) -> int | None:
    """The paper's table number of a task (Tables 3-10 in task order), else None."""
    return names.TASK_NAMES.index(dataset) + 3 if dataset in names.TASK_NAMES else None


def load_paper(path: str | Path | None = None) -> PaperTables:
    """The published cells of ``path`` (None: the bundled Tables 3-10).

    Raises :class:`PaperTablesError`, one line naming the file and line, for a file that
    cannot be read, missing columns, a mean or SE that is not a number (or an SE below 0, or
    above half the range a mean may take), a mean outside [0, 100] percent ([-100, 100] for
    κ), a mean that looks like a fraction, not percent (every mean at most 1; of a file of κ
    only, every κ within [-1, 1], two or more; of a file partly in percent, a non-κ mean at
    most 1 or every κ of a dataset, two or more, within [-1, 1]), a table number that is not
    the dataset's, an unknown dataset, strategy, arch or metric, a cell given twice, or no
    cells at all.
    """
    if path is None:
        source, text = bundled_text()
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise PaperTablesError(f"--vs-paper {source}: cannot read it: {why}") from None
    return parse_paper(text, source)


def parse_paper(text: str, source: str) -> PaperTables:
    """The published cells of ``text`` (CSV); ``source`` names it in errors."""

    def bad(line: int, why: str) -> PaperTablesError:
        return PaperTablesError(f"--vs-paper {source} line {line}: {why}")

    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise bad(1, f"missing column(s) {', '.join(missing)}; expected {','.join(COLUMNS)}")
    values: dict[PaperKey, PaperValue] = {}
    for row in reader:
        line = reader.line_num
        if None in row or any(row[c] is None for c in COLUMNS):
            raise bad(line, f"{len(header)} fields expected")
        d, s, a, m = (row[c].strip() for c in ("dataset", "strategy", "arch", "metric"))
        given = {"dataset": d, "strategy": s, "arch": a}
        for what, choices in (
            ("dataset", names.TASK_NAMES),
            ("strategy", names.STRATEGIES),
            ("arch", names.ARCHS),
        ):
            known = _known(given[what], choices)
            if known is None:
                value = given[what]
                raise bad(
                    line,
                    f"unknown {what} {value!r}; known: {', '.join(choices)}"
                    + did_you_mean(value, choices),
                )
            given[what] = known
        d, s, a = given["dataset"], given["strategy"], given["arch"]
        table = row["table"].strip()
        number = re.fullmatch(r"(?:table\s*)?0*(\d+)(?:\.0*)?", table, re.IGNORECASE)
        if table and (number is None or int(number.group(1)) != table_number(d)):
            raise bad(
                line, f"table {table!r} for {d}; the paper's table of {d} is {table_number(d)}"
            )
        pair = metrics.TASK_METRICS[d]
        m = _folded({*pair, *map(_paper_label, pair)}).get(_fold(m), m)  # "AUROC", "Kappa"
        if m not in {*pair, *map(_paper_label, pair)}:
            shown = ", ".join(_paper_label(k) for k in pair)
            raise bad(line, f"unknown metric {m!r} for {d}; its table's metrics: {shown}")
        mean = _number(row["mean"], "mean", bad, line)
        if mean is None:
            raise bad(line, "mean is empty")
        low = -100.0 if metric_key(d, m) == "kappa" else 0.0  # κ < 0: worse than chance
        if not low <= mean <= 100:
            raise bad(
                line, f"mean {row['mean'].strip()!r} is outside [{low:g}, 100] (percent, {m})"
            )
        se = _number(row["se"], "se", bad, line)
        if se is not None and (se < 0 or row["se"].strip().startswith("-")):  # -0.0 too
            raise bad(line, f"se {row['se'].strip()!r} is negative")
        most = (100 - low) / 2  # the SE of two values at the ends of the range: z ≈ 0 above it
        if se is not None and se > most:
            raise bad(
                line,
                f"se {row['se'].strip()!r} is above {most:g}, the most the SE of means within "
                f"[{low:g}, 100] can be (percent, {m})",
            )
        key = (d, a, s, metric_key(d, m))
        if key in values:
            raise bad(line, f"{d} {s} {a} {m} is given twice (first on line {values[key].line})")
        printed = f"{row['mean'].strip()} ({row['se'].strip() if se is not None else NO_SE})"
        values[key] = PaperValue(mean, se, line, printed, _half_last_digit(row["se"]))
    if not values:  # a comparison of no cells said nothing, silently
        raise bad(1, "a header and no rows; expected one published cell per line")
    # Every cell flagged, ~70 pp off. κ in percent may be near 0; other metrics not all.
    rates = [v.mean for k, v in values.items() if k[3] != "kappa"]
    first = min(v.line for v in values.values())  # a row's, not the header's
    if rates and all(m <= 1 for m in rates):
        raise bad(
            first,
            "every mean (κ aside) is at most 1: they look like fractions; expected percent "
            "(71.98, not 0.7198)",
        )
    kappas = [v.mean for k, v in values.items() if k[3] == "kappa"]
    if not rates and _fractions(kappas):
        # κ-only: in percent, every cell within 1 point of chance; in fractions, usual.
        raise bad(
            first,
            "every κ is within [-1, 1]: they look like fractions; expected percent "
            "(61.2, not 0.612)",
        )
    # Part of the file in fractions (κ, often published so; one dataset's rows): each such
    # row was flagged as tens of standard errors off, without a word of the unit.
    for (d, _, s, m), v in values.items():
        if m != "kappa" and v.mean <= 1:
            raise bad(
                v.line,
                f"{d} {s} {m} mean {v.mean:g} is at most 1 where other means are in percent: "
                "it looks like a fraction; expected percent (71.98, not 0.7198)",
            )
    for d in dict.fromkeys(k[0] for k in values):
        of_d = [v for k, v in values.items() if k[0] == d and k[3] == "kappa"]
        if _fractions([v.mean for v in of_d]):
            raise bad(
                min(v.line for v in of_d),
                f"every κ of {d} is within [-1, 1] where the other metrics are in percent: "
                "they look like fractions; expected percent (61.2, not 0.612)",
            )
    return PaperTables(source, values)


def _fractions(kappas: Sequence[float]) -> bool:
    """Whether κ means look like fractions: two or more, all within [-1, 1], not all 0 (in
    percent, every one within a point of chance)."""
    return len(kappas) > 1 and all(abs(m) <= 1 for m in kappas) and any(kappas)


_PRINTED_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)")  # ASCII digits only
"""A number as a table prints it: ``float`` also took ``6_2.5`` (62.5) and ``6.25e1``, which
the comparison then showed as typed beside the values it computed with."""


def _number(
    text: str, what: str, bad: Callable[[int, str], PaperTablesError], line: int
) -> float | None:
    text = text.strip()
    if not text:
        return None
    if not _PRINTED_NUMBER.fullmatch(text):
        raise bad(line, f"{what} {text!r} is not a number as a table prints it (percent)")
    return float(text)


def _half_last_digit(text: str) -> float:
    """Half a unit of the last digit of ``text`` (``0.0``: 0.05; ``0``: 0.5)."""
    _, dot, decimals = text.strip().partition(".")
    return 0.5 * 10.0 ** -(len(decimals) if dot else 0)


# --- the comparison --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Compared:
    """One cell and metric in both: ours (fractions, from the summary) and the paper's
    (percent), their difference in percentage points and its z."""

    dataset: str
    arch: str
    strategy: str
    metric: str
    mean: float
    se: float
    n: int
    paper_mean: float
    paper_se: float | None
    diff_pp: float
    z: float | None
    paper_printed: str = ""
    """The paper's as the CSV writes it (:attr:`PaperValue.printed`)."""


@dataclasses.dataclass(frozen=True)
class Agreement:
    """A dataset's comparison in numbers, for the index."""

    dataset: str
    compared: int
    mean_abs_diff_pp: float | None
    flagged: int
    headline: str
    rho: Mapping[str, tuple[float | None, int]]
    """Arch -> (Spearman's ρ of the strategies' headline means, ours vs the paper's, or
    None where fewer than 3 strategies are in both or one side is all ties; how many)."""


PRINTED_ZERO_SE = 0.05
"""Half a unit of a published SE's one printed decimal (:attr:`PaperValue.zero_se`): a
printed 0.0 is 0.0-0.1, read as 0.05, so a difference of 10 points beside it is flagged,
not left without a z."""


def z_score(
    mean: float,
    se: float,
    n: int,
    paper_mean: float,
    paper_se: float | None,
    zero_se: float = PRINTED_ZERO_SE,
):
    """diff / √(se_ours² + se_paper²) in percentage points (a published SE read as the
    middle of what its cut-off digits stand for: plus ``zero_se``, half a unit of its last
    printed digit, so 1.6 as 1.65 and 0.0 as 0.05; ours 0 where every seed scored
    alike); None where the paper gives no SE or ours is a single seed (no SE of ours)."""
    se_pp = 100 * se
    if n < 2 or paper_se is None or not math.isfinite(se_pp):
        return None
    return (100 * mean - paper_mean) / math.hypot(se_pp, paper_se + zero_se)


def _ours(summary: Summary, key: PaperKey) -> tuple[float, float, int] | None:
    d, a, s, m = key
    c = summary.cells.get((d, a, s))
    if c is None or not c.has_value or m not in summary.metrics.get(d, ()):
        return None
    mean, se = c.test.get(m, (math.nan, math.nan))
    if not math.isfinite(mean):
        return None
    return mean, se, c.n.get(m, len(c.seeds))


def compare(summary: Summary, paper: PaperTables) -> list[Compared]:
    """Every (dataset, arch, strategy, metric) with a value of ours and a published one,
    in the summary's order (strategies, then archs, then the table's metrics)."""
    out = []
    for d in summary.datasets:
        for s in summary.strategies:
            for a in summary.archs:
                for m in summary.metrics[d]:
                    p = paper.values.get((d, a, s, m))
                    ours = _ours(summary, (d, a, s, m))
                    if p is None or ours is None:
                        continue
                    mean, se, n = ours
                    out.append(
                        Compared(
                            d, a, s, m, mean, se, n, p.mean, p.se,
                            100 * mean - p.mean, z_score(mean, se, n, p.mean, p.se, p.zero_se),
                            p.printed,
                        )
                    )  # fmt: skip
    return out


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties share their mean rank); None for fewer than 3
    pairs or a side whose values are all equal.

    Values equal up to float rounding (:func:`~medft_jax.report.aggregate.same_mean`:
    equal totals of correct answers give 0.5416666666666666 and …667) are one tie, as
    in every other table: their last bit would otherwise rank one strategy above another.
    """
    from scipy import stats

    xs, ys = _ties_snapped(xs), _ties_snapped(ys)
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return float(stats.spearmanr(xs, ys).statistic)


def _ties_snapped(values: Sequence[float]) -> list[float]:
    """``values`` with each run of neighbours (in sorted order) equal up to float
    rounding set to its smallest."""
    out = list(values)
    first = None
    for i in sorted(range(len(out)), key=out.__getitem__):
        if first is None or not same_mean(out[i], first):
            first = out[i]
        out[i] = first
    return out


def agreements(summary: Summary, paper: PaperTables) -> list[Agreement]:
    """Per dataset of both: cells compared, mean |diff|, |z| > 2, and per arch the
    Spearman ρ of the strategies ranked by the paper's headline metric."""
    compared = compare(summary, paper)
    out = []
    for d in summary.datasets:
        if d not in paper.datasets:
            continue
        mine = [x for x in compared if x.dataset == d]
        diffs = [abs(x.diff_pp) for x in mine]
        headline = metrics.TASK_METRICS[d][0]
        rho: dict[str, tuple[float | None, int]] = {}
        for a in summary.archs:
            pairs = [
                (100 * x.mean, x.paper_mean) for x in mine if (x.arch, x.metric) == (a, headline)
            ]
            if pairs:
                rho[a] = (spearman(*zip(*pairs, strict=True)), len(pairs))
        out.append(
            Agreement(
                dataset=d,
                compared=len(mine),
                mean_abs_diff_pp=sum(diffs) / len(diffs) if diffs else None,
                flagged=sum(x.z is not None and abs(x.z) > Z_FLAG for x in mine),
                headline=headline,
                rho=rho,
            )
        )
    return out


def unmatched(summary: Summary, paper: PaperTables) -> tuple[int, int]:
    """(published cells without a value of ours, our values the paper does not have),
    counted per (dataset, arch, strategy, metric)."""
    ours = {
        (d, a, s, m)
        for (d, a, s) in summary.cells
        for m in summary.metrics[d]
        if _ours(summary, (d, a, s, m)) is not None
    }
    return len(set(paper.values) - ours), len(ours - set(paper.values))
