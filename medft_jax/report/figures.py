"""Report figures as PNG: relative improvement over FT (the paper's Figures 6-11) and cost.

Figures are drawn on a bare :class:`matplotlib.figure.Figure` with the Agg
canvas, never through ``pyplot``: no GUI backend is needed (a headless
cluster node), no global state changes for a caller who also plots, and
nothing is left open. Size and dpi are fixed so reruns give images of the
same size. Colours follow a strategy's place in
:data:`medft_jax.strategies.STRATEGIES` (an arch's in the improvement
bars) and markers an arch's place in :data:`medft_jax.models.ARCHS`, so
every figure of a report (and of two reports) uses the same ones. As the
tables mark a cell with runs missing (``†``), the figures draw it hatched
(bars) or hollow (points) and say so under the axes.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from pathlib import Path

from medft_jax.report.cells import (
    BASELINE,
    MISSING,
    PARTIAL,
    Summary,
    filters_text,
    improvement_se,
    no_baseline,
    relative_improvement,
)
from medft_jax.report.render import (
    DOUBLE_DAGGER,
    PILCROW,
    SECTION,
    arch_label,
    metric_label,
    slug,
    strategy_label,
)
from medft_jax.report.tables import cell_marks

FIGSIZE = (8.0, 4.5)
DPI = 120
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _plain(text: str) -> str:
    """``text`` as Matplotlib shows it literally: a ``$`` pair is read as mathtext, and an
    unbalanced one raised a traceback."""
    return text.replace("$", r"\$")


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    return path


def _index(name: str, known: list[str]) -> int:
    """Place in ``known``; an unknown name gets a stable slot after them (by its CRC)."""
    return known.index(name) if name in known else len(known) + zlib.crc32(name.encode()) % 9


def strategy_colour(strategy: str) -> tuple[float, float, float, float]:
    """tab10 without its grey (grey draws the arch legend), then tab20's light shades."""
    from matplotlib import colormaps

    from medft_jax.names import STRATEGIES

    dark, light = colormaps["tab10"], colormaps["tab20"]
    palette = [dark(i) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]
    palette += [light(i) for i in (1, 3, 5, 7, 9, 11, 13, 17, 19)]
    return palette[_index(strategy, list(STRATEGIES)) % len(palette)]


def arch_marker(arch: str) -> str:
    from medft_jax.names import ARCHS, TEST_ARCHS

    return MARKERS[_index(arch, [*ARCHS, *TEST_ARCHS]) % len(MARKERS)]


def arch_colour(arch: str) -> str:
    """The improvement bars' colour of ``arch``: by its place in ARCHS then TEST_ARCHS, not
    in the report (the two stand-ins took one colour by a hash); an arch not listed takes
    one of the colours after theirs (never one of theirs)."""
    from medft_jax.names import ARCHS, TEST_ARCHS

    known = [*ARCHS, *TEST_ARCHS]
    if arch in known:
        return f"C{known.index(arch)}"
    return f"C{len(known) + zlib.crc32(arch.encode()) % (10 - len(known))}"


PARTIAL_NOTE = "runs missing (†)"
NA_LABEL_Y = 0.02
"""Height of an improvement figure's ``n/a`` labels, in axes coordinates: inside the axes
whatever the bars' range."""
ONE_SEED_NOTE = "no error bar: one seed"
OTHER_MARKS = (DOUBLE_DAGGER, SECTION, PILCROW)
"""The marks of the datasets' tables drawn on a bar (``†`` is its hatching)."""
MARKS_NOTE = "{} on a bar: its cell or FT's is so marked in the dataset's table"
NA_NOTE = "n/a: no value for the cell or for its arch's FT (diverged, failed or not run)"


def _partial(summary: Summary, dataset: str, arch: str, strategy: str) -> bool:
    cell = summary.cells.get((dataset, arch, strategy))
    return cell is not None and cell.status == PARTIAL


@dataclasses.dataclass(frozen=True)
class Bar:
    """One bar of an improvement figure: its place, height and error bar (percent)."""

    arch: str
    strategy: str
    x: float
    gain: float
    """Relative improvement of the mean test headline metric over FT of the same arch;
    NaN when either cell has no value (drawn as ``n/a``)."""
    err: float
    """SE of ``gain`` over the seeds (:func:`~medft_jax.report.cells.improvement_se`);
    NaN when either cell has a single seed (no error bar)."""
    partial: bool = False
    """Whether this cell or its FT cell has runs missing (drawn hatched)."""
    marks: str = ""
    """The other marks of this cell and its FT cell in the dataset's table (``‡`` an LR
    left out, ``§`` fewer seeds, ``¶`` tested before its final stage), drawn on the bar:
    a bar resting on them read as plainly as any other."""


def improvement_bars(summary: Summary, dataset: str) -> list[Bar]:
    """The bars of :func:`improvement_figure`: x = strategy index (FT left out) plus the
    arch's offset within the group."""
    strategies = [s for s in summary.strategies_of(dataset) if s != BASELINE]
    archs = summary.archs_of(dataset)
    width = 0.8 / max(len(archs), 1)
    bars = []
    for j, a in enumerate(archs):
        offset = (j - (len(archs) - 1) / 2) * width
        for i, s in enumerate(strategies):
            gain = relative_improvement(summary, dataset, a, s)
            err = improvement_se(summary, dataset, a, s) if math.isfinite(gain) else math.nan
            partial = any(_partial(summary, dataset, a, x) for x in (s, BASELINE))
            metric = summary.headline(dataset)
            both = "".join(
                cell_marks(summary.cells.get((dataset, a, x)), metric) for x in (s, BASELINE)
            )
            marks = "".join(m for m in OTHER_MARKS if m in both)
            bars.append(Bar(a, s, i + offset, gain, err, partial, marks))
    return bars


def improvement_figure(summary: Summary, dataset: str, path: Path) -> Path:
    """Grouped bars: x = strategies other than FT, one bar per arch, y = relative
    improvement (%) of the mean test headline metric over FT of the same arch, with an
    error bar of ± its SE over the seeds (:func:`improvement_bars`). A bar without a value
    (either cell has none) is left out and labelled ``n/a`` at the foot of the axes
    (not where a message across them says that nothing compares to FT); a bar whose cell or FT cell
    has runs missing is hatched, and a note under the axes says what hatching and a
    missing error bar mean."""
    fig = _figure()
    ax = fig.add_subplot()
    strategies = [s for s in summary.strategies_of(dataset) if s != BASELINE]
    archs = summary.archs_of(dataset)
    width = 0.8 / max(len(archs), 1)
    bars = improvement_bars(summary, dataset)
    missing = no_baseline(summary, dataset)
    message = None  # drawn across the axes, instead of the n/a labels
    if not strategies or missing:
        message = missing or "no strategy but FT: nothing to compare"
    for a in archs:
        mine = [b for b in bars if b.arch == a]
        for b in mine:
            if not math.isfinite(b.gain) and message is None:
                # At the foot of the axes (x in data, y in axes coordinates): at y = 0 the
                # label stood above the axes, on the title, when every bar was negative.
                # In the arch's colour: an arch is told by its colour alone.
                ax.text(
                    b.x,
                    NA_LABEL_Y,
                    "n/a",
                    rotation=90,
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    color=arch_colour(a),
                    transform=ax.get_xaxis_transform(),
                )
        shown = [b for b in mine if math.isfinite(b.gain)]
        drawn = ax.bar(
            [b.x for b in shown],
            [b.gain for b in shown],
            width,
            color=arch_colour(a),
            label=arch_label(a),
        )
        for patch, b in zip(drawn.patches, shown, strict=True):
            if b.partial:
                patch.set_hatch("//")
                patch.set_edgecolor("black")
            if b.marks:  # at the bar's end, beside its error bar (which struck them through)
                ax.annotate(
                    b.marks,
                    (b.x, b.gain),
                    xytext=(2, 3 if b.gain >= 0 else -3),
                    textcoords="offset points",
                    ha="left",
                    va="bottom" if b.gain >= 0 else "top",
                    fontsize=7,
                )
        # Error bars only where there is an SE: a zero-length one with caps read as seeds
        # that agreed exactly, for a single seed.
        spread = [b for b in shown if math.isfinite(b.err)]
        if spread:
            ax.errorbar(
                [b.x for b in spread],
                [b.gain for b in spread],
                yerr=[b.err for b in spread],
                fmt="none",
                ecolor="black",
                elinewidth=0.8,
                capsize=2,
            )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(strategies)), [strategy_label(s) for s in strategies])
    ax.set_xlim(-0.6, max(len(strategies), 1) - 0.4)
    metric = metric_label(summary.headline(dataset))
    ax.set_ylabel(f"Improvement over FT (%), test {metric}")
    ax.set_title(
        f"{_plain(dataset)}: relative improvement over FT (± SE over seeds){_only(summary)}"
    )
    shown = [b for b in bars if math.isfinite(b.gain)]
    notes = [f"hatched: {PARTIAL_NOTE}"] if any(b.partial for b in shown) else []
    drawn_marks = "".join(m for m in OTHER_MARKS if any(m in b.marks for b in shown))
    notes += [MARKS_NOTE.format(drawn_marks)] if drawn_marks else []
    notes += [ONE_SEED_NOTE] if any(not math.isfinite(b.err) for b in shown) else []
    if message is None and len(shown) < len(bars):
        notes.append(NA_NOTE)
    if notes:
        ax.set_xlabel("; ".join(notes), fontsize=8)
    if message is not None:
        ax.text(
            0.5,
            0.5,
            message,
            ha="center",
            wrap=True,
            transform=ax.transAxes,
        )
    elif archs:
        # Drawn from the archs' colours, not from their bars: an arch without a bar here
        # took Matplotlib's first colour, ResNet-50's, and one whose first bar was hatched
        # a hatched swatch.
        from matplotlib.patches import Patch

        handles = [Patch(facecolor=arch_colour(a), label=arch_label(a)) for a in archs]
        ax.legend(handles=handles, fontsize=8)
    return _save(fig, path)


def _only(summary: Summary) -> str:
    """The title's ``--only`` filters, where the report has some: a figure taken out of
    the report read as over every run (the tables' notes say it; a figure has none)."""
    if not summary.filters:
        return ""
    return _plain(f"\n(only the runs --only keeps: {filters_text(summary)})")


def cost_not_shown(summary: Summary, dataset: str) -> list[tuple[str, str, str]]:
    """The cells of ``dataset`` that ran but that :func:`cost_figure` cannot place, as
    (strategy, arch, why): no value (``diverged``, ``failed`` or ``unvalidated``, as the
    tables read), a headline metric undefined for every seed (``n/a``), or device-seconds
    not known (``cost unknown``: a run that reused cached features written before their
    extraction time was recorded). A cell without any run is not listed."""
    out = []
    for (d, a, s), c in summary.cells.items():
        if d != dataset or c.status == MISSING:
            continue
        if not c.has_value:
            why = c.failure_text
        elif not math.isfinite(c.mean()):
            why = "n/a"
        elif c.cost is None or not (
            math.isfinite(c.cost.device_seconds) and c.cost.device_seconds > 0
        ):
            why = "cost unknown"
        else:
            continue
        out.append((s, a, why))
    return out


def cost_not_shown_note(summary: Summary, dataset: str) -> str:
    """``not shown: LP (cost unknown), LP-FT (diverged)`` (each with its arch where the
    report has several), or ``""``: the cost figure's line under the axes."""
    several = len(summary.archs_of(dataset)) > 1
    names = [
        f"{strategy_label(s)}{' ' + arch_label(a) if several else ''} ({why})"
        for s, a, why in cost_not_shown(summary, dataset)
    ]
    return _plain(f"not shown: {', '.join(names)}") if names else ""


def cost_figure(summary: Summary, dataset: str, path: Path) -> Path:
    """Scatter: x = device-seconds of one run at the chosen LR (log), y = mean test
    headline metric (%); colour per strategy, marker per arch. A cell that ran but has
    no point (:func:`cost_not_shown`) is named under the axes, with why."""
    import textwrap

    from matplotlib.lines import Line2D

    fig = _figure()
    ax = fig.add_subplot()
    seen_s: list[str] = []
    seen_a: list[str] = []
    partial = marked = False
    metric_key = summary.headline(dataset)
    for (d, a, s), c in summary.cells.items():
        if d != dataset or not c.has_value or c.cost is None:
            continue
        x, y = c.cost.device_seconds, c.mean()
        if not (math.isfinite(x) and x > 0 and math.isfinite(y)):
            continue
        colour = strategy_colour(s)
        hollow = c.status == PARTIAL
        partial |= hollow
        ax.scatter(
            [x],
            [100 * y],
            marker=arch_marker(a),
            s=40,
            facecolors="none" if hollow else colour,
            edgecolors=colour,
        )
        # ‡ § ¶ beside the point, as on a bar: a point resting on them read as any other.
        marks = "".join(m for m in OTHER_MARKS if m in cell_marks(c, metric_key))
        if marks:
            marked = True
            ax.annotate(marks, (x, 100 * y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        seen_s += [s] if s not in seen_s else []
        seen_a += [a] if a not in seen_a else []
    metric = metric_label(metric_key)
    note = f"; hollow: {PARTIAL_NOTE}" if partial else ""
    note += "; ‡ § ¶ by a point: its cell is so marked in the dataset's table" if marked else ""
    left_out = cost_not_shown_note(summary, dataset)
    left_out = "\n" + textwrap.fill(left_out, 100) if left_out else ""
    scale = " (log scale)" if seen_s else ""
    ax.set_xlabel(f"Device-seconds per run{scale}{note}{left_out}")
    ax.set_ylabel(f"Test {metric} (%)")
    ax.set_title(f"{_plain(dataset)}: cost versus {metric}{_only(summary)}")
    if seen_s:
        ax.set_xscale("log")
        colours = [
            Line2D(
                [], [], color=strategy_colour(s), marker="o", linestyle="", label=strategy_label(s)
            )
            for s in summary.strategies
            if s in seen_s
        ]
        markers = [
            Line2D([], [], color="grey", marker=arch_marker(a), linestyle="", label=arch_label(a))
            for a in summary.archs
            if a in seen_a
        ]
        first = ax.legend(handles=colours, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        ax.add_artist(first)
        ax.legend(handles=markers, fontsize=7, loc="lower left", bbox_to_anchor=(1.01, 0))
    else:
        ax.text(
            0.5, 0.5, "no cell has both a value and a cost", ha="center", transform=ax.transAxes
        )
    return _save(fig, path)


def figure_names(dataset: str) -> dict[str, str]:
    """Kind -> file name (under ``figures/``) of a dataset's figures."""
    return {
        "improvement": f"improvement_{slug(dataset)}.png",
        "cost": f"cost_{slug(dataset)}.png",
    }


def write_figures(summary: Summary, folder: Path) -> dict[str, dict[str, Path]]:
    """Every figure of the report into ``folder``: dataset -> kind -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, dict[str, Path]] = {}
    for d in summary.datasets:
        names = figure_names(d)
        out[d] = {
            "improvement": improvement_figure(summary, d, folder / names["improvement"]),
            "cost": cost_figure(summary, d, folder / names["cost"]),
        }
    return out
