"""The report from hand-made records: numbers, marks, counts and tests checked by hand."""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from experiments import report as cli
from medft_jax import locks, results
from medft_jax.atomic import DIR_MODE
from medft_jax.config import NUMERICS_VERSION, RunConfig, forward_version, numerics_version
from medft_jax.grid import Grid
from medft_jax.metrics import RANKED_BY
from medft_jax.names import ARCHS
from medft_jax.report import (
    beats_ft,
    best_per_dataset,
    collect,
    dataset_table,
    paired_table,
    paired_vs_ft,
    table11,
    table12,
    tables,
    to_csv,
    to_latex,
    to_markdown,
    write_report,
)
from medft_jax.report.figures import improvement_bars
from medft_jax.results import RecordError
from tests.conftest import SHARED_DATA
from tests.processes import dead_pid

PNG = b"\x89PNG\r\n\x1a\n"
SECOND = {"bach": "kappa", "t1w_mri": "f1", "mura_wrist": "kappa"}
"""The second table metric of each task used here (medft_jax.metrics.TASK_METRICS)."""


def rec(
    dataset="bach",
    arch="resnet50",
    strategy="ft",
    lr=1e-4,
    seed=0,
    *,
    val=0.5,
    test=0.5,
    test2=None,
    seconds=10.0,
    devices=1,
    epochs=3,
    ips=100.0,
    config=None,
    **settings,
):
    """A minimal finished-run record: accuracy is the primary metric (every task used here)."""
    cfg = config or {
        "dataset": dataset,
        "arch": arch,
        "strategy": strategy,
        "lr": lr,
        "seed": seed,
        "epochs": 50,
        "image_size": 224,
        "batch_size": 64,
        "weights": "imagenet",
        "strategy_options": {},
        **settings,
    }
    second = SECOND.get(cfg["dataset"], "auroc")
    return {
        "config": cfg,
        "run": results.run_name(cfg),
        "primary_metric": "accuracy",
        "multilabel": False,
        "val": {"accuracy": val, second: val},
        "test": {"accuracy": test, second: test / 2 if test2 is None else test2},
        "epochs": [{"images_per_s": ips, "seconds": 1.0}] * epochs,
        "train_seconds": seconds,
        "environment": {"device_count": devices},
        "ranked_by": RANKED_BY,
    }


def fail(dataset="bach", arch="resnet50", strategy="ft", lr=1e-4, seed=0, config=None):
    cfg = config or rec(dataset, arch, strategy, lr, seed)["config"]
    return {"config": cfg, "run": results.run_name(cfg), "kind": "nonfinite", "error": "nan loss"}


def one_run_grid(dataset, dataset_options=None):
    """A grid of one run: ResNet-50 FT at lr 1e-4, seed 0, from ImageNet weights."""
    return Grid(
        name="one",
        datasets=(dataset,),
        archs=("resnet50",),
        strategies=("ft",),
        lrs=(1e-4,),
        seeds=(0,),
        settings={"weights": "imagenet"},
        dataset_options=dataset_options or {},
    )


def read_csv(text):
    return list(csv.DictReader(io.StringIO(text)))


def shown(m, se):
    return f"{100 * m:.2f} ({100 * se:.2f})"


# --- values ----------------------------------------------------------------------------------


def test_value_is_mean_and_se_at_the_lr_with_best_mean_validation():
    good = [0.70, 0.74, 0.75]  # test at the LR validation prefers
    tempting = [0.95, 0.96, 0.97]  # better test numbers at the LR validation rejects
    records = [
        rec(lr=1e-4, seed=s, val=v, test=t)
        for s, v, t in zip(range(3), [0.8, 0.82, 0.81], good, strict=True)
    ]
    records += [rec(lr=1e-3, seed=s, val=0.80, test=t) for s, t in enumerate(tempting)]
    summary = collect(records)
    cell = summary.cell("bach", "resnet50", "ft")
    mean, se = float(np.mean(good)), float(np.std(good, ddof=1) / math.sqrt(3))
    assert cell.status == "complete" and cell.lr == 1e-4 and cell.seeds == (0, 1, 2)
    assert cell.test["accuracy"] == pytest.approx((mean, se))
    assert (cell.runs_done, cell.runs_expected) == (6, 6)
    assert cell.cost.device_seconds == pytest.approx(10.0)
    assert cell.cost.total_device_seconds == pytest.approx(60.0)
    table = dataset_table(summary, "bach")
    assert table.name == "table08_bach" and table.title.startswith("Table 8: bach")
    assert shown(mean, se) in to_markdown(table)
    row = next(r for r in read_csv(to_csv(table)) if r["metric"] == "accuracy")
    assert float(row["mean"]) == pytest.approx(mean) and float(row["se"]) == pytest.approx(se)
    assert row["n"] == "3" and float(row["lr"]) == 1e-4


def test_the_mean_over_seeds_does_not_depend_on_their_order():
    """The LR choice gives an exact tie to the smaller LR: a mean that changes in its last
    bit with the records' order (0.5648148148148148 or ...49) would decide it instead."""
    import itertools
    from fractions import Fraction

    from medft_jax.report.aggregate import mean_se

    values = (20 / 36, 20 / 36, 21 / 36)
    means = {mean_se(order)[0] for order in itertools.permutations(values)}
    assert means == {float(sum(map(Fraction, values)) / 3)}  # the exact mean, rounded once
    values = (0.11, 0.2, 0.2, 0.73)
    assert len({mean_se(order)[1] for order in itertools.permutations(values)}) == 1
    # Three seeds of one value: that value, no spread (fsum / 3 gave 0.6999999999999998).
    assert mean_se([0.7, 0.7, 0.7]) == (0.7, 0.0)


def test_a_single_seed_shows_no_se_and_device_seconds_count_devices():
    summary = collect([rec(test=0.5, seconds=10.0, devices=4, epochs=2, ips=50.0)])
    cell = summary.cell("bach", "resnet50", "ft")
    assert "50.00 (–)" in to_markdown(dataset_table(summary, "bach"))
    assert (
        cell.cost.device_seconds == 40.0 and cell.cost.epochs == 2 and cell.cost.images_per_s == 50
    )


def test_throughput_is_a_runs_images_over_its_train_seconds_not_a_mean_of_epoch_rates():
    """G-LF's head-only epoch at 1,210 img/s beside a full one at 714: the cell said 962
    (the mean of the rates) where the run's 2 x 512 images took 0.423 + 0.717 s, 898/s."""
    r = rec(strategy="g_lf", epochs=2)
    r["epochs"] = [
        {"images_per_s": 512 / 0.423, "train_seconds": 0.423, "seconds": 0.5},
        {"images_per_s": 512 / 0.717, "train_seconds": 0.717, "seconds": 0.8},
    ]
    cell = collect([r]).cell("bach", "resnet50", "g_lf")
    assert cell.cost.images_per_s == pytest.approx(1024 / (0.423 + 0.717))
    del r["epochs"][0]["train_seconds"]  # an older record: the mean of the rates, as before
    cell = collect([r]).cell("bach", "resnet50", "g_lf")
    assert cell.cost.images_per_s == pytest.approx((512 / 0.423 + 512 / 0.717) / 2)


def test_cost_charges_cached_feature_extraction_and_leaves_head_steps_out_of_throughput():
    """An LP run on cached features: its epochs are head steps (fast), but the features
    cost what their extraction took, charged to the run that computed them and to the
    ones that reused them; the LR search's total counts the extraction once."""

    def lp(seed, lr, reused, extract):
        r = rec(strategy="lp", seed=seed, lr=lr, seconds=2.0, devices=2, epochs=2, ips=9e4)
        for e in r["epochs"]:
            e["from_features"] = True
        r["epochs"] = [*r["epochs"], {"images_per_s": 300.0, "seconds": 1.0}]
        spent = 0.5 if reused else 30.0  # checking a reused set, or computing it
        r["features"] = {"used": True, "reused": reused, "seconds": spent}
        if extract is not None:
            r["features"]["extract_seconds"] = extract
        return r

    records = [lp(0, 1e-4, False, 30.0), lp(1, 1e-4, True, 30.0), lp(0, 1e-3, True, 30.0)]
    cell = collect(records).cell("bach", "resnet50", "lp")
    assert cell.cost.device_seconds == pytest.approx((2.0 + 30.0) * 2)  # each run alike
    assert cell.cost.total_device_seconds == pytest.approx((3 * 2.0 + 30.0 + 0.5 + 0.5) * 2)
    assert cell.cost.images_per_s == pytest.approx(300.0)  # the image epoch only
    # Records from before the extraction time was kept: the computing run's own seconds
    # stand for it; a reused run's cost is unknown, left out of the mean, never 2 s.
    old = [lp(0, 1e-4, False, None), lp(1, 1e-4, True, None)]
    assert collect(old).cell("bach", "resnet50", "lp").cost.device_seconds == pytest.approx(64)
    only_reused = collect([lp(1, 1e-4, True, None)]).cell("bach", "resnet50", "lp")
    assert math.isnan(only_reused.cost.device_seconds)


def test_a_failed_cells_finished_runs_count_in_its_total_cost():
    """Every LR of LP with a diverged seed: the cell is failed, but its two finished runs
    spent 20 device-s, which the cost table's total and CSV left out (summing the column
    undercounted the sweep)."""
    records = [rec(strategy="lp", lr=1e-3, seed=s, seconds=10.0) for s in (0, 1)]
    summary = collect(records, [fail(strategy="lp", lr=1e-3, seed=2)])
    cell = summary.cell("bach", "resnet50", "lp")
    assert cell.status == "failed" and not cell.has_value
    assert (cell.cost.total_device_seconds, cell.cost.total_runs) == (20.0, 2)
    assert math.isnan(cell.cost.device_seconds)  # no setting was chosen: no per-run cost
    from medft_jax.report.tables import cost_table

    row = next(r for r in read_csv(to_csv(cost_table(summary, "bach"))) if r["strategy"] == "lp")
    assert (float(row["total_device_seconds"]), row["total_runs"]) == (20.0, "2")


def test_an_lr_chosen_by_an_exact_tie_is_named_in_the_notes_and_the_csvs():
    """A flat validation metric (an imbalanced split's majority rate at every LR): the run
    and select said the LR was a tie's pick, the report showed it as any other choice."""
    from medft_jax.report.tables import cost_table

    records = [rec(lr=lr, seed=s, val=0.99, test=0.9) for lr in (1e-3, 1e-4, 1e-5) for s in (0, 1)]
    lp = ((1e-3, 0.8), (1e-4, 0.7))
    records += [rec(strategy="lp", lr=lr, seed=s, val=v) for lr, v in lp for s in (0, 1)]
    summary = collect(records)
    ft = summary.cell("bach", "resnet50", "ft")
    assert ft.lr == 1e-5 and ft.tied_lrs == (1e-3, 1e-4)  # a tie goes to the smaller LR
    assert summary.cell("bach", "resnet50", "lp").tied_lrs == ()
    table = dataset_table(summary, "bach")
    ties = [n for n in table.notes if "tied" in n]
    assert ties == [
        "FT, ResNet-50: lr 1e-05 tied with lr 0.001 0.0001 on the mean validation metric "
        "(99.00); a tie goes to the smaller LR, so the choice among them is not the data's"
    ]
    for made in (table, cost_table(summary, "bach")):
        rows = read_csv(to_csv(made))
        assert {r["strategy"]: r["tied_lrs"] for r in rows} == {"ft": "0.001 0.0001", "lp": ""}
        assert list(rows[0])[-1] == "tied_lrs"  # last: scripts reading by position still read


def test_an_lr_with_a_failed_run_is_never_chosen():
    records = [rec(lr=1e-4, seed=s, val=0.7, test=0.7) for s in (0, 1)]
    records.append(rec(lr=1e-3, seed=1, val=0.99, test=0.99))
    summary = collect(records, [fail(lr=1e-3, seed=0)])
    cell = summary.cell("bach", "resnet50", "ft")
    assert cell.lr == 1e-4 and cell.excluded_lrs == (1e-3,)
    assert cell.status == "complete" and (cell.runs_done, cell.runs_expected) == (4, 4)
    # The reader sees it: a mark, a note naming the LR, the CSV's field; Table 11 notes it.
    table = dataset_table(summary, "bach")
    assert f"{shown(0.7, 0.0)}‡" in to_markdown(table)
    assert "‡ FT, ResNet-50: lr 0.001 (a run there diverged) left out of the choice" in (
        " ".join(table.notes)
    )
    rows = read_csv(to_csv(table))
    assert {r["excluded_lrs"] for r in rows} == {"0.001"}
    assert any(n.startswith("‡: a cell whose LR") for n in table11(summary).notes)
    # Table 12 cannot mark its k/n: it names the cells its counts rest on.
    assert (
        "Counted with 1 cell(s) whose LR was chosen without an LR where a run failed (‡ in "
        "the datasets' tables): bach/resnet50/ft." in table12(summary).notes
    )
    # A counted metric over 2 of 3 seeds (§) can decide a "beats" as any value: named too.
    few = [rec(strategy="ft", seed=k, test=0.7) for k in range(3)]
    few += [rec(strategy="lp", seed=k, test=None if k == 2 else 0.8, test2=0.4) for k in range(3)]
    notes = table12(collect(few)).notes
    assert (
        "Counted with 1 cell(s) whose counted metric is over fewer seeds than the cell has "
        "(§ in the datasets' tables): bach/resnet50/lp." in notes
    ), notes
    # A failure note of a run that later finished is superseded by its record.
    again = collect(records, [fail(lr=1e-3, seed=1)]).cell("bach", "resnet50", "ft")
    assert again.lr == 1e-3 and again.excluded_lrs == () and again.runs_done == 3


def test_one_strategy_with_different_options_across_cells_is_refused():
    # L2-SP at alpha = beta = 1 on VGG-19 beside the default on ResNet-50: two settings
    # under one label, both bold, both counted in Table 12.
    tuned = {"alpha": 1.0, "beta": 1.0}
    runs = [rec(strategy="l2_sp"), rec(arch="vgg19", strategy="l2_sp", strategy_options=tuned)]
    with pytest.raises(RecordError) as e:
        collect([rec(), rec(arch="vgg19"), *runs])
    assert str(e.value) == (
        "strategy 'l2_sp' ran with different options (strategy_options.alpha: \"<absent>\" "
        'vs 1.0; strategy_options.beta: "<absent>" vs 1.0; <absent>: its default): one '
        "row cannot name both; report them from separate --runs folders, or keep one with "
        "--only"
    )
    # Across datasets too, and from a failure note; one set of options everywhere is fine.
    other = rec(dataset="t1w_mri", strategy="l2_sp", strategy_options=tuned)
    with pytest.raises(RecordError, match="strategy 'l2_sp' ran with different options"):
        collect([runs[0]], [fail(config=other["config"])])
    same = [rec(strategy="l2_sp", strategy_options=tuned), runs[1], other]
    assert collect(same).cell("bach", "vgg19", "l2_sp").status == "complete"


def test_a_run_counted_twice_at_a_left_out_lr_is_refused():
    # A run folder copied by hand at an LR left out of the choice (a seed there diverged)
    # never reached the mean, but counted twice in the cell's cost and runs done.
    records = [rec(lr=1e-4, seed=s) for s in (0, 1)] + [rec(lr=1e-3, seed=1)]
    cell = collect(records, [fail(lr=1e-3, seed=0)]).cell("bach", "resnet50", "ft")
    assert cell.cost.total_runs == 3 and cell.cost.total_device_seconds == pytest.approx(30.0)
    with pytest.raises(RecordError, match=r"^two records for lr 0\.001, seed 1 of bach/"):
        collect([*records, rec(lr=1e-3, seed=1)], [fail(lr=1e-3, seed=0)])
    with pytest.raises(RecordError, match=r"^two records for lr 0\.001, seed 0 of bach/"):
        collect(records, [fail(lr=1e-3, seed=0), fail(lr=1e-3, seed=0)])


def test_one_medmnist_dataset_named_with_and_without_its_default_size_is_one_dataset():
    """``medmnist/x@28`` (records written before names were canonical) and ``medmnist/x``
    are one dataset: one table, its runs pooled, and one run found under both refused."""
    from medft_jax.grid import matches, parse_only

    plain, sized = "medmnist/breastmnist", "medmnist/breastmnist@28"
    assert RunConfig(strategy="ft", dataset=sized).dataset == plain
    assert RunConfig(strategy="ft", dataset="medmnist/breastmnist@64").dataset.endswith("@64")
    assert one_run_grid(sized).configs()[0].dataset == plain
    assert matches({"dataset": plain}, parse_only([f"dataset={sized}"]))
    records = [rec(sized, seed=0, test=0.6), rec(plain, seed=1, test=0.8)]
    summary = collect(records)
    assert summary.datasets == (plain,)
    cell = summary.cell(plain, "resnet50", "ft")
    assert cell.seeds == (0, 1) and cell.test["accuracy"][0] == pytest.approx(0.7)
    with pytest.raises(RecordError, match=r"^two records for lr 0\.0001, seed 0 of medmnist/"):
        collect([*records, rec(plain, seed=0)])


def test_two_lrs_that_are_one_in_float32_are_refused_not_chosen_between():
    """``np.logspace``'s 9.999999999999999e-06 beside a grid's 1e-05: one training under
    two LRs. The LR choice picked the one-seed copy over the real LR's two seeds, and the
    cell read as complete."""
    records = [rec(lr=1e-5, seed=0, val=0.5, test=0.5), rec(lr=1e-5, seed=1, val=0.5, test=0.6)]
    records.append(rec(lr=9.999999999999999e-06, seed=0, val=0.9, test=0.9))
    with pytest.raises(RecordError) as err:
        collect(records)
    message = str(err.value)
    assert message.startswith(
        "lr 9.999999999999999e-06 and lr 1e-05 of bach/resnet50/ft are one LR in float32, "
        "where the step computes"
    )
    assert message.endswith(
        "since 2026-12-07 grids and --lr hold a rate a short decimal names as that decimal "
        "(0.001, not 0.0010000000474974513), so a run of its long spelling is older: move it "
        "out; else write the grids' LRs as the same decimals and move one set of runs out"
    )
    assert "\n" not in message
    float32_cast = float(np.float32(1e-3))  # 0.0010000000474974513
    with pytest.raises(RecordError, match=r"^lr 0\.001 and lr 0\.0010000000474974513 of"):
        collect([rec(lr=1e-3, seed=0), rec(lr=float32_cast, seed=1)])
    near = collect([rec(lr=1e-3, seed=0), rec(lr=1.001e-3, seed=1)])  # two LRs in float32
    assert near.cell("bach", "resnet50", "ft").lr in (1e-3, 1.001e-3)


def test_a_gradual_cell_whose_runs_never_reached_their_final_stage_is_marked():
    """G-LF on DenseNet-121 (final stage at epoch 9) capped at 8 epochs never trains its
    stem: its cell was shown as G-LF without a word."""
    short = [
        {**rec(strategy="g_lf", seed=s, val=0.6, test=0.6, epochs=8), "final_stage_epoch": 8}
        for s in range(2)
    ]
    reached = [{**r, "epochs": r["epochs"] * 2} for r in short]
    summary = collect([*short, rec(seed=0), rec(seed=1)])
    cell = summary.cell("bach", "resnet50", "g_lf")
    assert (cell.unstaged, cell.final_stage_epoch) == (2, 8)
    table = dataset_table(summary, "bach")
    assert f"{shown(0.6, 0.0)}¶" in to_markdown(table)
    assert "¶ G-LF, ResNet-50: 2 of 2 runs were tested from before the final stage (epoch 9;" in (
        " ".join(table.notes)
    )
    assert r"$^{\P}$" in to_latex(table) and "¶" not in to_latex(table)
    assert any(n.startswith("¶: a staged cell") for n in table11(summary).notes)
    again = collect([*reached, rec(seed=0), rec(seed=1)])
    assert again.cell("bach", "resnet50", "g_lf").unstaged == 0
    assert "¶" not in to_markdown(dataset_table(again, "bach"))
    # Reached, but tested from its best epoch 7, the last before the final stage (8): the
    # stem never trained in the model tested. Epoch 8 itself is the final stage's first.
    early = [{**r, "best_epoch": 7} for r in reached[:1]] + [{**reached[1], "best_epoch": 8}]
    summary = collect([*early, rec(seed=0), rec(seed=1)])
    assert summary.cell("bach", "resnet50", "g_lf").unstaged == 1
    assert "1 of 2 runs were tested from before" in " ".join(dataset_table(summary, "bach").notes)


def test_an_lr_where_a_seed_has_no_validation_value_is_never_chosen():
    """One seed's 0.99 at lr 1e-3, the others' missing: chosen on that seed alone, it
    would beat 1e-4's three 0.80s; it is left out and marked as a failed LR is."""
    records = [rec(lr=1e-4, seed=s, val=0.8, test=0.7) for s in range(3)]
    records.append(rec(lr=1e-3, seed=0, val=0.99, test=0.3))
    for s in (1, 2):
        r = rec(lr=1e-3, seed=s, test=0.3)
        r["val"]["accuracy"] = None
        records.append(r)
    cell = collect(records).cell("bach", "resnet50", "ft")
    assert cell.lr == 1e-4 and cell.excluded_lrs == (1e-3,)
    assert cell.test["accuracy"][0] == pytest.approx(0.7)
    table = dataset_table(collect(records), "bach")
    assert "lr 0.001 (a run there has no validation value) left out of the choice" in (
        " ".join(table.notes)
    )
    tex = to_latex(table)
    assert "‡" not in tex and r"$^{\ddagger}$" in tex  # LaTeX has no raw double dagger
    # One LR diverged, another has no validation value: each is given its own reason.
    records += [rec(lr=1e-5, seed=s, val=0.5, test=0.5) for s in range(2)]
    notes = " ".join(dataset_table(collect(records, [fail(lr=1e-5, seed=2)]), "bach").notes)
    assert (
        "lr 1e-05 (a run there diverged) and lr 0.001 (a run there has no validation value) "
        "left out of the choice; the value is from the best of the other LRs"
    ) in notes


def test_a_value_over_fewer_seeds_than_its_cell_is_marked():
    """kappa undefined for seed 2: its mean is over 2 seeds while accuracy's is over 3; the
    table says so next to the value, in a note, and in LaTeX."""
    records = [rec(seed=k, test=v) for k, v in enumerate((0.6, 0.7, 0.85))]
    records[2]["test"]["kappa"] = None
    table = dataset_table(collect(records), "bach")
    md = to_markdown(table)
    assert f"**{shown(0.7166666, 0.0726483)}**" in md and f"**{shown(0.325, 0.025)}§**" in md
    assert "§ FT, ResNet-50: κ over 2 of 3 seeds (undefined for the others)" in table.notes
    assert r"$^{\S}$" in to_latex(table)


def test_the_run_summary_says_a_value_over_fewer_seeds(tmp_path, capsys):
    """It printed "mean ± SE over 3 seeds" above a kappa averaged over 2."""
    from experiments import run as run_cli

    records = [rec(seed=k, test=v) for k, v in enumerate((0.6, 0.7, 0.85))]
    records[2]["test"]["kappa"] = None
    run_cli._print_summary(records, str(tmp_path), [])
    out = capsys.readouterr().out
    assert "0.3250 ± 0.0250 (over 2 of 3 seeds)\n" in out
    assert f"0.7167 ± {0.0726483:.4f}\n" in out  # accuracy: every seed, nothing added


def test_a_percent_that_rounds_to_zero_has_no_minus():
    from medft_jax.report.render import pct

    assert [pct(-1e-5, sign=True), pct(-1e-5), pct(-4.9e-5), pct(-5e-4, sign=True)] == [
        "+0.00", "0.00", "0.00", "-0.05",
    ]  # fmt: skip


def test_equal_paired_differences_up_to_rounding_have_no_spread():
    """BACH accuracy moves in 2.5 % steps: LP 5 points under FT on every seed differs in
    the last bit between seeds, which must not read as t = -1e15, p < 0.001."""
    ft, lp = [0.60, 0.65, 0.70], [0.55, 0.60, 0.65]
    assert len({b - a for a, b in zip(ft, lp, strict=True)}) > 1  # float rounding
    records = [rec(strategy="ft", seed=k, test=v) for k, v in enumerate(ft)]
    records += [rec(strategy="lp", seed=k, test=v) for k, v in enumerate(lp)]
    (paired,) = paired_vs_ft(collect(records))
    assert paired.mean == pytest.approx(-0.05)
    assert math.isnan(paired.t) and math.isnan(paired.p) and not paired.significant


def test_the_run_command_and_the_report_choose_alike_when_a_run_diverged(tmp_path, capsys):
    from experiments import run as run_cli

    records = [rec(lr=1e-3, seed=s, val=0.9, test=0.9) for s in (0, 2)]  # seed 1 diverged
    records += [rec(lr=1e-4, seed=s, val=0.8, test=t) for s, t in enumerate([0.5, 0.6, 0.7])]
    run_cli._print_summary(records, str(tmp_path), [1e-3])
    out = capsys.readouterr().out
    assert "lr 0.001 left out of the choice: a run there diverged" in out
    assert (
        "lr 0.0001 (the only lr left of lr 0.001 0.0001); test metrics, mean ± SE over 3 seeds"
        in out
    )
    assert f"accuracy  0.6000 ± {0.1 / math.sqrt(3):.4f}" in out
    cell = collect(records, [fail(lr=1e-3, seed=1)]).cell("bach", "resnet50", "ft")
    assert cell.lr == 1e-4 and cell.test["accuracy"][0] == pytest.approx(0.6)
    # Images --skip-bad-images left out are said before the numbers they change.
    records[0]["skipped_bad_images"] = {"train": 14, "test": 1}
    run_cli._print_summary(records, str(tmp_path), [])
    assert (
        "skipped bad images (--skip-bad-images): 15 (train 14, test 1)" in capsys.readouterr().out
    )
    # A run another process holds (no record yet): its LR is left out and said, not chosen
    # on the seeds that are there (1e-3's two 0.9s would win against 1e-4's three 0.8s).
    run_cli._print_summary(records, str(tmp_path), [], [1e-3])
    out = capsys.readouterr().out
    assert "lr 0.001 left out of the choice: a run there is running in another process" in out
    assert "lr 0.0001 (the only lr left of lr 0.001 0.0001)" in out
    # Every LR had a diverged run: no metrics, and no guess.
    run_cli._print_summary(records, str(tmp_path), [1e-3, 1e-4])
    out = capsys.readouterr().out
    assert "no learning rate with every run finished" in out and "±" not in out


def test_the_run_summary_says_which_lrs_it_chose_among_and_a_tie_it_broke(tmp_path, capsys):
    """--lr-grid whose other LRs all diverged said "(the only lr run)"; the LRs chosen
    among were not named (the report over an --out with more LRs chose another); a tie,
    broken by the smaller-LR rule, was not said."""
    from experiments import run as run_cli

    grid = [1e-3, 1e-4, 1e-5]
    records = [rec(lr=lr, seed=s, val=v) for lr, v in ((1e-3, 0.8), (1e-4, 0.8)) for s in (0, 1)]
    records += [rec(lr=1e-5, seed=s, val=0.5) for s in (0, 1)]
    run_cli._print_summary(records, str(tmp_path), [], [], grid)
    assert (
        "\nlr 0.0001 chosen by mean validation accuracy among lr 0.001 (0.8000) 0.0001 (0.8000) "
        "1e-05 (0.5000); tied with lr 0.001, a tie goes to the smaller lr; test metrics, mean ± "
        "SE over 2 seeds:\n"
    ) in (out := capsys.readouterr().out)
    # Which folders hold the chosen models, for predict: the names alone left it to guess.
    best = [results.record_path_of(r, str(tmp_path)).parent / "best" for r in records[2:4]]
    assert f"\nthe chosen lr 0.0001's models (predict --checkpoint): {best[0]}, {best[1]}\n" in out
    lone = [r for r in records if r["config"]["lr"] == 1e-4]  # the others diverged, no record
    run_cli._print_summary(lone, str(tmp_path), [1e-3, 1e-5], [], grid)
    assert "\nlr 0.0001 (the only lr left of lr 0.001 0.0001 1e-05); test metrics" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize(
    ("num_classes", "multilabel", "eq6"), [(2, False, False), (3, False, True), (3, True, True)]
)
def test_the_run_summary_names_eq6_accuracy_apart_from_top1(
    num_classes, multilabel, eq6, tmp_path, capsys
):
    """A 3-class top-1 of 1/3 is an eq. 6 accuracy of 5/9: printed as bare "accuracy" above
    top-1 it read as the share of images classed right (the report says "Acc. (top-1)")."""
    from experiments import run as run_cli

    records = [rec(seed=s, test=5 / 9) for s in (0, 1)]
    for r in records:
        r |= {"num_classes": num_classes, "multilabel": multilabel, "best_epoch": 0}
        r["test"]["top1_accuracy"] = 1 / 3
    name = "accuracy (eq. 6)" if eq6 else "accuracy"
    records[0]["split_sizes"] = {"train": 27, "val": 3, "test": 6}
    for shown in (records[:1], records):
        run_cli._print_summary(shown, str(tmp_path), [])
        out = capsys.readouterr().out
        assert "\nimages: train 27, val 3, test 6\n" in out
        table = {line.strip().split("  ")[0] for line in out.splitlines() if "0.5556" in line}
        assert table == {name}, out
        assert ("one-vs-rest accuracy, not the share of images classed right" in out) == eq6
    assert "lr 0.0001 (the only lr run); test metrics, mean ± SE over 2 seeds:" in out
    run_cli._print_summary([*records, rec(lr=1e-3, val=0.1)], str(tmp_path), [])
    assert f"lr 0.0001 chosen by mean validation {name} among lr 0.001 (0.1000) 0.0001 (" in (
        capsys.readouterr().out
    )
    run_cli._print_summary([records[0], rec(lr=1e-3, val=0.1)], str(tmp_path), [])
    out = capsys.readouterr().out  # one seed: its values, no "± nan"
    assert "lr 0.0001 chosen by mean validation" in out and "test metrics of seed 0:" in out
    assert "nan" not in out and "random initialisation" not in out
    # One run: which validation metric picked its epoch; and weights that were not there
    # (said once above the progress bars) are said again beside the numbers.
    offline = records[0] | {"weights_used": "none (ImageNet weights unavailable)"}
    run_cli._print_summary([offline], str(tmp_path), [])
    out = capsys.readouterr().out
    # Three epochs of at most 50: its patience ended it, said (it read as a run of three).
    assert (
        f"seed 0: best epoch 1 of 3 (stopped early, of at most 50) by validation {name}; "
        "test metrics:"
    ) in out, out
    assert (
        "trained from random initialisation: no ImageNet weights for resnet50 (none ported, "
        "and none could be downloaded when the run trained); these numbers are not a "
        "fine-tuning's\n"
    ) in out
    # An arch torchvision publishes no weights for: nothing could have been downloaded.
    tiny = offline | {"config": offline["config"] | {"arch": "resnet_tiny"}}
    run_cli._print_summary([tiny], str(tmp_path), [])
    assert (
        "no ImageNet weights for resnet_tiny (torchvision publishes none for it); these "
        "numbers are not a fine-tuning's\n"
    ) in capsys.readouterr().out
    # A multilabel task's copies count under any labels: said so, not "of their label".
    copied = records[0] | {"multilabel": True, "eval_copies_of_train": {"test": 2}}
    run_cli._print_summary([copied | {"eval_copies_rule": "same_label"}], str(tmp_path), [])
    assert (
        "copies of training images (multilabel: under any labels, each label they share "
        "inflated): test 2; scores inflated"
    ) in capsys.readouterr().out
    chose = records[0] | {"weights_used": "none (random initialisation)"}  # --weights none
    run_cli._print_summary([chose], str(tmp_path), [])
    assert "random initialisation" not in capsys.readouterr().out


def test_inferred_expectation_marks_a_cell_with_fewer_runs_partial():
    records = [rec(strategy="ft", lr=lr, seed=s) for lr in (1e-4, 1e-3) for s in (0, 1)]
    records.append(rec(strategy="lp", lr=1e-4, seed=0, test=0.25))
    summary = collect(records)
    lp = summary.cell("bach", "resnet50", "lp")
    assert lp.status == "partial" and (lp.runs_done, lp.runs_expected) == (1, 4)
    md = to_markdown(dataset_table(summary, "bach"))
    assert "25.00 (–)†" in md and "LP, ResNet-50: 1 of 4 runs" in md


# --- marks -----------------------------------------------------------------------------------


def test_bold_per_arch_and_underline_over_archs_ties_all_marked():
    accuracy = {
        ("resnet50", "ft"): 0.80,
        ("resnet50", "lp"): 0.85,  # best of ResNet-50, not overall
        ("resnet50", "g_lf"): 0.85,  # tied with LP
        ("densenet121", "ft"): 0.90,  # best of DenseNet-121 and overall
        ("densenet121", "lp"): 0.88,
        ("densenet121", "g_lf"): 0.70,
    }
    summary = collect([rec(arch=a, strategy=s, test=v) for (a, s), v in accuracy.items()])
    table = dataset_table(summary, "bach")
    md = to_markdown(table)
    assert "| LP | **85.00 (–)** |" in md and "| G-LF | **85.00 (–)** |" in md
    assert "<u>**90.00 (–)**</u>" in md and md.count("<u>") == 2  # accuracy and F1
    assert "**80.00" not in md and "**88.00" not in md
    tex = to_latex(table)
    assert r"\textbf{85.00 (\textendash{})}" in tex
    assert r"\underline{\textbf{90.00 (\textendash{})}}" in tex
    assert r"\underline{\textbf{85.00" not in tex and r"\toprule" in tex
    assert r"\multicolumn{3}{c}{ResNet-50}" in tex
    flags = {
        (r["arch"], r["strategy"]): (r["bold"], r["underline"])
        for r in read_csv(to_csv(table))
        if r["metric"] == "accuracy"
    }
    assert flags == {
        ("resnet50", "ft"): ("False", "False"),
        ("resnet50", "lp"): ("True", "False"),
        ("resnet50", "g_lf"): ("True", "False"),
        ("densenet121", "ft"): ("True", "True"),
        ("densenet121", "lp"): ("False", "False"),
        ("densenet121", "g_lf"): ("False", "False"),
    }
    # Rows follow the paper's strategy order, columns ARCHS' order.
    assert [r[0].text for r in table.rows] == ["FT", "LP", "G-LF"]
    assert [c.group for c in table.columns[1:4]] == ["ResNet-50"] * 3


def test_a_dataset_table_says_what_its_cells_without_a_number_mean():
    """A table pasted into a paper carried "diverged", "—" and "(–)" that only the index
    explained; its own notes name each one it shows, and none it does not."""
    records = [rec(strategy="ft", seed=0, test=0.7)]
    records += [rec(strategy="lp", seed=k, test=0.8) for k in range(2)]
    failures = [fail(strategy="lp_ft", lr=1e-4, seed=k) for k in range(2)]
    table = dataset_table(collect(records, failures), "bach")
    assert table.notes[-1] == (  # the — is the diverged cell's Cost
        "—: not run yet (in Cost: no chosen LR, or its time unknown); diverged: no LR with a "
        "value, its runs' loss turned NaN or infinite; (–): a single seed, so no SE."
    )
    plain = dataset_table(collect([rec(strategy="ft", seed=k) for k in range(2)]), "bach")
    assert not [n for n in plain.notes if "single seed" in n or "diverged" in n]


def test_latex_escapes_underscores_percent_and_ampersand():
    summary = collect([rec(dataset="t1w_mri", test=0.9)])
    tex = to_latex(dataset_table(summary, "t1w_mri"))
    assert r"t1w\_mri" in tex and r"in \%" in tex and "t1w_mri:" not in tex
    from medft_jax.report.render import latex_escape

    assert latex_escape("a & b_c 5%") == r"a \& b\_c 5\%"
    # A flag in a caption: LaTeX's -- is an en-dash ("–only", which does not run).
    assert latex_escape("(--only lr=1; a---b; x-y)") == r"(-{}-only lr=1; a-{}-{}-b; x-y)"
    assert latex_escape("a — b – c") == r"a \textemdash{} b \textendash{} c"
    # A hyphen beside a real dash joined it into a longer one (-– read as ---).
    assert latex_escape("-–x–-—") == r"-\textendash{}x\textendash{}-\textemdash{}"
    assert latex_escape("√(SE²)") == r"$\surd$(SE$^{2}$)"  # ASCII only in every .tex
    # Text-mode < and > print as other glyphs in LaTeX's default font encoding.
    assert latex_escape("p < 0.05, >1") == r"p \textless{} 0.05, \textgreater{}1"


def test_latex_captions_leave_the_number_to_latex_and_bars_and_quotes_are_escaped():
    """``\\caption{Table 8: ...}`` read "Table 1: Table 8: ..."; ``|`` and ``"`` printed as
    an em-dash and a closing quote under LaTeX's default font encoding."""
    from medft_jax.report.render import latex_escape

    tex = to_latex(dataset_table(collect([rec()]), "bach"))
    caption = next(x for x in tex.splitlines() if x.startswith(r"\caption{"))
    assert caption.startswith(r"\caption{bach: ") and "Table" not in caption
    assert latex_escape('a|b "c"') == r"a\textbar{}b \textquotedbl{}c\textquotedbl{}"


def test_md_code_shows_text_verbatim_whatever_backticks_it_holds():
    from medft_jax.report.render import md_code, md_escape

    assert md_code("/data/my_images") == "`/data/my_images`"
    assert md_code("a`b") == "``a`b``" and md_code("`x") == "`` `x ``"
    assert md_escape("a]b $x$") == r"a\]b \$x\$"  # alt text and GitHub math


def test_the_csvs_carry_every_mark_the_tables_show_and_each_lr_in_full():
    """A staged cell tested before its final stage read ``60.50 (0.50)¶`` in Markdown and
    LaTeX but as a plain complete cell in the CSV; a diverged cell was ``failed`` there;
    Table 11's CSV had no marks; an LR left out read in 6 digits, matching no ``lr``."""
    short = [
        {**rec(strategy="g_lf", seed=k, val=0.6, test=0.6 + 0.01 * k, epochs=8)}
        | {"final_stage_epoch": 8}
        for k in range(2)
    ]
    summary = collect(
        [*short, rec(seed=0), rec(seed=1)], [fail(strategy="lp", seed=k) for k in (0, 1)]
    )
    rows = read_csv(to_csv(dataset_table(summary, "bach")))
    at = {(r["strategy"], r["metric"]): r for r in rows}
    assert at[("g_lf", "accuracy")]["marks"] == "¶" and at[("ft", "accuracy")]["marks"] == ""
    assert at[("lp", "accuracy")]["status"] == "failed"
    assert (
        at[("lp", "accuracy")]["failure"] == "diverged" and at[("ft", "accuracy")]["failure"] == ""
    )
    best = read_csv(to_csv(table11(summary)))[0]
    assert (best["strategy"], best["marks"], best["ft_marks"]) == ("g_lf", "¶", "")
    fine = [rec(lr=1.2345678e-4, seed=k, val=0.6) for k in range(3)]
    fine += [rec(lr=1.2345679e-4, seed=k, val=0.9) for k in range(2)]
    line = read_csv(to_csv(dataset_table(collect(fine, [fail(lr=1.2345679e-4, seed=2)]), "bach")))[
        0
    ]
    assert (line["lr"], line["excluded_lrs"], line["marks"]) == (
        "0.00012345678",
        "0.00012345679",
        "‡",
    )


def test_a_record_naming_no_dataset_arch_or_strategy_a_run_writes_is_refused(tmp_path):
    """A hand-made record's ``$`` in its dataset crashed the report's figures with a
    traceback; such names reach file names, Markdown and LaTeX: refused in one line."""
    for field, value, said in (
        ("dataset", "price $x^{$ data", "config dataset 'price $x^{$ data': is not a name"),
        ("strategy", "mine", "config strategy 'mine' is not one of ft, lp,"),
        # An arch's $ crashed the figures' legend, a newline split the Markdown tables.
        ("arch", "r$\\nosuchcmd{$x", "config arch 'r$\\\\nosuchcmd{$x' is not one of resnet50,"),
        ("arch", "res\nnet50", "config arch 'res\\nnet50' is not one of resnet50, densenet121"),
    ):
        r = rec()
        r["config"][field] = value
        r["run"] = results.run_name(r["config"])
        path = tmp_path / f"{field}.json"
        path.write_text(json.dumps(r))
        with pytest.raises(RecordError, match=re.escape(f"{path}: {said}")):
            results.read_record(path)
    # Older runs spelt a MedMNIST size with a zero (@064): their records still read.
    r = rec()
    r["config"]["dataset"] = "medmnist/breastmnist@064"
    r["run"] = results.run_name(r["config"])
    (tmp_path / "old.json").write_text(json.dumps(r))
    assert results.read_record(tmp_path / "old.json")["config"]["dataset"].endswith("@064")


# --- Tables 11 and 12 ------------------------------------------------------------------------

ACC = {
    # dataset: {strategy: test accuracy}; FT is the reference of each dataset.
    "bach": {"ft": 0.8000, "lp": 0.8007, "lp_ft": 0.8009},  # +0.0875% (no), +0.1125% (yes)
    "t1w_mri": {"ft": 0.9000, "lp": 0.9500, "lp_ft": 0.8900},
    "mura_wrist": {"ft": 0.7000, "lp": 0.7200},  # LP-FT missing: not counted in its n
}


def _three_datasets():
    return collect(
        [rec(dataset=d, strategy=s, test=v) for d, values in ACC.items() for s, v in values.items()]
    )


def test_table12_counts_against_a_hand_count():
    summary = _three_datasets()
    assert summary.cell("mura_wrist", "resnet50", "lp_ft").status == "missing"
    assert beats_ft(summary, 0.1) == {("lp", "resnet50"): (2, 3), ("lp_ft", "resnet50"): (1, 2)}
    assert beats_ft(summary, 0.05)[("lp", "resnet50")] == (3, 3)
    table = table12(summary, 0.1)
    md = to_markdown(table)
    assert "| LP | 2/3 | 2/3 (66.7%) |" in md and "| LP-FT | 1/2 | 1/2 (50.0%) |" in md
    rows = {(r["strategy"], r["arch"]): r for r in read_csv(to_csv(table))}
    assert rows[("lp", "all")]["k"] == "2" and float(rows[("lp", "all")]["share"]) == pytest.approx(
        2 / 3
    )
    assert rows[("lp", "all")]["threshold_in"] == "relative"
    # In percentage points: BACH's LP-FT is +0.09 points (+0.1125% relative): not counted.
    points = {("lp", "resnet50"): (2, 3), ("lp_ft", "resnet50"): (0, 2)}
    assert beats_ft(summary, 0.1, points=True) == points
    assert beats_ft(summary, 0.08, points=True)[("lp_ft", "resnet50")] == (1, 2)
    assert "| LP-FT | 0/2 | 0/2 (0.0%) |" in to_markdown(table12(summary, 0.1, points=True))


def test_the_index_says_each_strategys_options_and_where_they_are_not_the_papers(tmp_path):
    """A row names a strategy, not its options: L2-SP at the toolkit's default (with the ½)
    has half the gradient of the paper's eq. 3, and its row read as the paper's."""
    records = [rec(strategy=s) for s in ("ft", "l2_sp", "auto_rgn", "lp_ft")]
    for r in records:
        if r["config"]["strategy"] == "auto_rgn":
            r["config"]["strategy_options"] = {"rgn_mode": "prepass"}
        if r["config"]["strategy"] == "lp_ft":
            r["config"]["strategy_options"] = {"lp_epochs": 1}
    summary = collect(records)
    assert summary.strategy_options["l2_sp"]["sp_half"] is True
    per_step = collect([rec(strategy="auto_rgn", strategy_options={"rgn_per_step": True})])
    assert dict(per_step.strategy_options["auto_rgn"]) == {  # no window, no mode: unread
        "rgn_per_step": True,
        "rgn_eps": 1e-8,
    }
    text = write_report(summary, tmp_path / "out").read_text()
    assert (
        "- Strategy options, as run:\n"
        "  - LP-FT: `lp_epochs = 1` (the paper's: `lp_epochs = 5`).\n"
        "  - L2-SP: `alpha = 0.01`, `beta = 0.01`, `sp_half = True`, `kernels_only = False` "
        "(the paper's: `sp_half = False`).\n"
        "  - Auto-RGN: `rgn_estimate_steps = 5`, `rgn_mode = prepass`, `rgn_per_step = False`, "
        "`rgn_eps = 1e-08`.\n"
    ) in text


def test_a_full_disk_while_writing_the_report_names_out_and_leaves_nothing(
    tmp_path, monkeypatch, capsys
):
    """A write that fails for space raises an OSError naming no file: the line read
    "error: ?: file too large"; it names --out."""
    runs = tmp_path / "runs"
    _write_runs(runs, [rec(strategy="ft", test=0.8), rec(strategy="lp", test=0.81)])
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name == "index.md":
            raise OSError(errno.ENOSPC, "No space left on device")  # no filename, as write gives
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    out = tmp_path / "out"
    assert cli.main(["--runs", str(runs), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {out}: no space left") and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing half-written


def test_cli_reads_the_beat_threshold_in_points_when_asked(tmp_path, capsys):
    runs = tmp_path / "runs"
    _write_runs(runs, [rec(strategy="ft", test=0.8), rec(strategy="lp", test=0.8009)])
    for flags, title, k in (
        ([], "0.1%", "1/1"),
        (["--beat-points"], "0.1 percentage points", "0/1"),
    ):
        out = tmp_path / f"out{len(flags)}"
        assert cli.main(["--runs", str(runs), "--out", str(out), *flags]) == 0
        md = (out / "tables" / "table12.md").read_text()
        assert f"beats FT by more than {title}" in md and f"| LP | {k} |" in md
        assert f"beats FT by more than 0.1{'' if flags else '%'}" in (out / "index.md").read_text()
    capsys.readouterr()


def test_table12_counts_a_strategy_that_diverged_as_not_beating_ft():
    """LP diverged at every LR on ISIC and beats FT on BACH: 1 of 2, not 1 of 1 (the
    paper counts out of all experiments); a dataset not run at all stays out."""
    records = [rec(strategy="ft", test=0.8), rec(strategy="lp", test=0.9)]
    records += [rec(dataset="isic2020", strategy="ft", test=0.8)]
    records += [rec(dataset="mura_wrist", strategy="ft", test=0.8)]  # LP not run there
    failures = [fail(dataset="isic2020", strategy="lp", lr=lr) for lr in (1e-3, 1e-4)]
    summary = collect(records, failures)
    assert summary.cell("isic2020", "resnet50", "lp").status == "failed"
    assert summary.cell("mura_wrist", "resnet50", "lp").status == "missing"
    assert beats_ft(summary, 0.1) == {("lp", "resnet50"): (1, 2)}
    assert "| LP | 1/2 | 1/2 (50.0%) |" in to_markdown(table12(summary, 0.1))


def test_table12_counts_a_finished_strategy_without_the_counted_metric_as_not_beating_ft():
    """ISIC is counted in accuracy: LP's runs finished with values, but none in accuracy.
    As a strategy that diverged, it did not beat FT there: 1 of 2, not 1 of 1."""
    records = [rec(strategy="ft", test=0.8), rec(strategy="lp", test=0.9)]
    records += [rec(dataset="isic2020", strategy="ft", test=0.8)]
    undefined = rec(dataset="isic2020", strategy="lp", test=0.9)
    undefined["test"]["accuracy"] = None
    summary = collect([*records, undefined])
    assert summary.cell("isic2020", "resnet50", "lp").has_value
    assert beats_ft(summary, 0.1) == {("lp", "resnet50"): (1, 2)}


def test_table11_best_per_dataset_and_improvement():
    summary = _three_datasets()
    best = {b.dataset: b for b in best_per_dataset(summary)}
    assert best["bach"].cell.strategy == "lp_ft"
    assert best["bach"].improvement == pytest.approx(100 * (0.8009 - 0.8) / 0.8)
    assert best["t1w_mri"].cell.strategy == "lp"
    assert best["t1w_mri"].improvement == pytest.approx(100 * 0.05 / 0.9)
    assert best["mura_wrist"].improvement == pytest.approx(100 * 0.02 / 0.7)
    rows = {r["dataset"]: r for r in read_csv(to_csv(table11(summary)))}
    assert float(rows["t1w_mri"]["improvement_pct"]) == pytest.approx(100 * 0.05 / 0.9)
    assert float(rows["t1w_mri"]["ft_mean"]) == pytest.approx(0.9)
    assert "+5.56" in to_markdown(table11(summary))
    # Paper task order: the table follows metrics.TASK_NAMES, not the input order.
    assert summary.datasets == ("mura_wrist", "t1w_mri", "bach")


# --- paired comparison -----------------------------------------------------------------------


def test_paired_t_test_against_a_hand_computed_t():
    ft = [0.80, 0.82, 0.78]
    lp = [0.83, 0.86, 0.79]
    records = [rec(strategy="ft", lr=1e-4, seed=s, val=0.8, test=t) for s, t in enumerate(ft)]
    records += [rec(strategy="ft", lr=1e-3, seed=s, val=0.1, test=0.99) for s in range(3)]
    records += [rec(strategy="lp", lr=1e-3, seed=s, val=0.8, test=t) for s, t in enumerate(lp)]
    summary = collect(records)
    (paired,) = paired_vs_ft(summary)
    d = np.array(lp) - np.array(ft)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    p = 2 * stats.t.sf(abs(t), df=2)
    assert paired.strategy == "lp" and paired.seeds == (0, 1, 2) and paired.df == 2
    assert paired.t == pytest.approx(t) and paired.p == pytest.approx(p)
    assert paired.mean == pytest.approx(d.mean())
    assert paired.significant == (p < 0.05) and paired.p_holm == pytest.approx(p)  # one test
    md = to_markdown(paired_table(summary, "bach"))
    assert f"{p:.3f}" in md and f"+{100 * d.mean():.2f}" in md


def test_holm_adjusts_within_dataset_and_arch():
    ft = [0.80, 0.82, 0.78]
    records = [rec(strategy="ft", seed=s, test=t) for s, t in enumerate(ft)]
    records += [rec(strategy="lp", seed=s, test=t + 0.01 * (s + 1)) for s, t in enumerate(ft)]
    records += [
        rec(strategy="g_lf", seed=s, test=t + (0.03, 0.05, 0.02)[s]) for s, t in enumerate(ft)
    ]
    tests = {p.strategy: p for p in paired_vs_ft(collect(records))}
    low, high = sorted(tests.values(), key=lambda p: p.p)
    assert low.p_holm == pytest.approx(min(1, 2 * low.p))
    assert high.p_holm == pytest.approx(max(low.p_holm, high.p))


# --- an unfinished grid ----------------------------------------------------------------------


def test_half_finished_grid_shows_missing_partial_and_failed_cells():
    grid = Grid(
        name="half",
        datasets=("bach",),
        archs=("resnet50", "densenet121"),
        strategies=("ft", "lp"),
        lrs=(1e-4, 1e-3),
        seeds=(0, 1),
        settings={"weights": "imagenet", "epochs": 5, "image_size": 64},
    )

    def cfg(arch, strategy, lr, seed):
        return grid.config("bach", arch, strategy, lr, seed).to_dict()

    records = [
        rec(config=cfg("resnet50", "ft", lr, s), test=0.8, val=0.8 if lr == 1e-4 else 0.7)
        for lr in grid.lrs
        for s in grid.seeds
    ]
    records += [rec(config=cfg("resnet50", "lp", 1e-4, s), test=0.6) for s in grid.seeds]
    records.append(rec(strategy="lp", image_size=32))  # not a run of this grid
    failures = [fail(config=cfg("densenet121", "lp", 1e-3, 0))]
    summary = collect(records, failures, grid=grid)
    status = {(a, s): c.status for (_, a, s), c in summary.cells.items()}
    assert status == {
        ("resnet50", "ft"): "complete",
        ("resnet50", "lp"): "partial",
        ("densenet121", "ft"): "missing",
        ("densenet121", "lp"): "failed",
    }
    assert summary.left_out == 1
    lp = summary.cell("bach", "resnet50", "lp")
    assert (lp.runs_done, lp.runs_expected) == (2, 4)
    table = dataset_table(summary, "bach")
    md = to_markdown(table)
    assert "60.00 (0.00)†" in md and "LP, ResNet-50: 2 of 4 runs" in md
    assert "diverged†" in md and "LP, DenseNet-121: 1 of 4 runs" in md
    densenet_ft = md.splitlines()[4]  # header, title, blank, rule, FT row
    assert densenet_ft.startswith("| FT |") and densenet_ft.count("—") == 3  # 2 metrics + cost
    assert r"$^{\dagger}$" in to_latex(table) and "†" not in to_latex(table)
    rows = read_csv(to_csv(table))
    missing = [r for r in rows if r["arch"] == "densenet121" and r["strategy"] == "ft"]
    assert missing and all(r["status"] == "missing" for r in missing)
    assert all(r["mean"] == "" and r["se"] == "" and r["n"] == "" for r in missing)
    assert all(r["mean"] != "0" and r["mean"] != "0.0" for r in rows if r["status"] != "complete")
    # The filter --only arch=resnet50 narrows the expected cells too.
    narrow = collect(records, failures, grid=grid, filters={"arch": {"resnet50"}})
    assert narrow.archs == ("resnet50",)


def test_records_of_one_dataset_with_different_settings_are_refused():
    records = [rec(image_size=32), rec(strategy="lp", image_size=224)]
    with pytest.raises(results.RecordError) as e:
        collect(records)
    assert str(e.value) == (
        "dataset 'bach' holds runs with different settings (image_size: 32 vs 224; e.g. "
        f"{records[0]['run']} and {records[1]['run']}); report them from separate --runs folders"
    )
    # Numbers in numeric order ("40" sorted before "8"), and a fifth value not dropped
    # without a word (it was the value of one of the folders named).
    records = [rec(seed=k, patience=n) for k, n in enumerate((1, 2, 8, 40, 60))]
    with pytest.raises(results.RecordError) as e:
        collect(records)
    assert str(e.value).startswith(
        "dataset 'bach' holds runs with different settings (patience: 1 vs 2 vs 8 vs 40 and 1 "
        f"more; e.g. {records[0]['run']} and {records[1]['run']} and {records[2]['run']} and "
    )
    # Two values: the runs named in the values' order (sorted apart, "bf16" vs "<absent>"
    # named the <absent> run under "bf16").
    records = [rec(seed=1), rec(seed=0, precision="bf16"), rec(seed=2)]
    with pytest.raises(results.RecordError) as e:
        collect([records[1], records[0], records[2]])
    assert (
        f'(precision: "bf16" vs "<absent>"; e.g. {records[1]["run"]} and {records[0]["run"]})'
    ) in str(e.value)


def test_records_of_one_dataset_must_agree_on_the_task_and_state_it_as_json_types():
    """The first record's multilabel decided the dataset's headline column for every cell:
    one edited to "false" (a string, truthy) switched bach from top-1 to eq. 6 accuracy."""
    edited = {**rec(seed=0), "multilabel": "false"}
    with pytest.raises(results.RecordError) as e:
        collect([edited, rec(seed=1)])
    assert str(e.value) == (f"run {edited['run']}: multilabel is 'false', expected true or false")
    with pytest.raises(results.RecordError, match=r"num_classes is True, expected a count"):
        collect([{**rec(seed=0), "num_classes": True}])
    other = {**rec(seed=0), "multilabel": True}
    first = rec(seed=1)
    with pytest.raises(results.RecordError) as e:
        collect([first, other])
    assert str(e.value) == (
        f"dataset 'bach': records disagree on multilabel: false (e.g. {first['run']}), true "
        f"(e.g. {other['run']}); expected one task per dataset: report them from separate "
        "--runs folders"
    )
    classes = [{**rec(seed=k), "num_classes": n} for k, n in ((0, 4), (1, 3))]
    with pytest.raises(results.RecordError, match=r"records disagree on num_classes: 4 \(e\.g"):
        collect(classes)
    collect([{**rec(seed=0), "num_classes": 4}, {**rec(seed=1), "num_classes": 4}, rec(seed=2)])


def test_cli_a_records_refusal_names_its_file(tmp_path, capsys):
    """A record's content refusal named the run alone: in a folder merged from several
    hosts the user had to search for it."""
    runs = tmp_path / "runs"
    bad = {**rec(seed=1), "multilabel": "no"}
    _write_runs(runs / "hostB", [bad])
    _write_runs(runs / "hostA", [rec(seed=0)])
    assert cli.main(["--runs", str(runs), "--out", str(tmp_path / "out")]) == 2
    path = results.record_path_of(bad, runs / "hostB")
    assert capsys.readouterr().err == (
        f"error: {path}: run {bad['run']}: multilabel is 'no', expected true or false\n"
    )
    assert not (tmp_path / "out").exists()


def test_one_checkpoint_spelt_two_ways_or_one_per_arch_is_one_setting():
    """Seeds run with ``--weights ck/best`` from the project and ``--weights
    /abs/ck/best`` from another shell: the same weights (fingerprint), refused as
    "different settings"; and each arch needs its own checkpoint folder. The content
    decides, per arch; other contents within an arch are still refused."""

    def w(arch, strategy, seed, path, fingerprint):
        return rec(
            arch=arch, strategy=strategy, seed=seed, weights=path, weights_fingerprint=fingerprint
        )

    records = [w("resnet50", "ft", k, "ck/best", "f1") for k in (0, 1)]
    records += [w("resnet50", "ft", 2, "/home/u/ck/best", "f1")]
    records += [w("resnet50", "lp", k, "/home/u/ck/best", "f1") for k in range(3)]
    records += [w("vgg19", "ft", k, "vgg/best", "f2") for k in range(3)]
    summary = collect(records)
    assert summary.cell("bach", "resnet50", "ft").seeds == (0, 1, 2)
    # The same seed run again under the other spelling (another run name): refused, as a
    # copy is, but naming both folders and why they are one run.
    again = w("resnet50", "ft", 0, "/home/u/ck/best", "f1")
    with pytest.raises(results.RecordError) as e:
        collect([*records, again])
    assert str(e.value) == (
        f"two records for lr 0.0001, seed 0 of bach/resnet50/ft: runs {records[0]['run']} and "
        f"{again['run']} (one run: its --weights spelt 'ck/best' and '/home/u/ck/best', the "
        "same checkpoint by its fingerprint; move one folder out of --runs)"
    )
    other = [*records, w("resnet50", "l2_sp", 0, "ck/best", "f3")]  # edited checkpoint
    with pytest.raises(results.RecordError, match="arch resnet50: runs from different inputs"):
        collect(other)
    # A checkpoint beside ImageNet's weights is another setting, as is a record without the
    # fingerprint (older: its path is all it says).
    for odd in (rec(strategy="lp", weights="imagenet"), rec(strategy="lp", weights="old/best")):
        with pytest.raises(results.RecordError, match="different settings \\(weights: "):
            collect([w("resnet50", "ft", 0, "ck/best", "f1"), odd])


def test_strategies_of_one_arch_from_other_weights_or_data_are_refused():
    def fp(arch, strategy, weights="w1", data="d1"):
        return rec(arch=arch, strategy=strategy, weights_fingerprint=weights, data_fingerprint=data)

    # Per arch they differ (another ImageNet file, another resize size): fine.
    collect([fp("resnet50", "ft"), fp("resnet50", "lp"), fp("vgg19", "ft", "w2", "d2")])
    # FT from random weights (auto, offline) and LP from ImageNet: refused, both named.
    with pytest.raises(results.RecordError) as e:
        collect([ft := fp("resnet50", "ft", "none"), lp := fp("resnet50", "lp")])
    assert str(e.value) == (
        "dataset 'bach', arch resnet50: runs from different inputs (weights_fingerprint: "
        f'"none" vs "w1"; e.g. {ft["run"]} and {lp["run"]}); their strategies cannot be '
        "compared: report them from separate --runs folders"
    )
    with pytest.raises(results.RecordError, match=r'data_fingerprint: "d1" vs "d2"'):
        collect([fp("vgg19", "ft"), fp("vgg19", "l2_sp", data="d2")])
    # One arch all from random initialisation, another from ImageNet: not one table.
    with pytest.raises(results.RecordError) as e:
        collect([fp("resnet50", "ft", "none"), fp("resnet50", "lp", "none"), fp("vgg19", "ft")])
    assert str(e.value) == (
        "dataset 'bach': resnet50 trained from random initialisation (weights_fingerprint "
        "none), vgg19 from pretrained weights; their cells cannot be compared: report them "
        "from separate --runs folders"
    )
    collect([fp("resnet50", "ft", "none"), fp("vgg19", "ft", "none")])  # all random: one table


def test_archs_trained_on_different_splits_are_refused():
    """Each arch has its own data fingerprint (its resize), so only the split fingerprint
    tells that VGG-19's runs carved another val/test: not one table."""

    def split(arch, strategy, fp=None, data="d1"):
        r = rec(arch=arch, strategy=strategy, data_fingerprint=data)
        return {**r, "split_fingerprint": fp} if fp else r

    collect([split("resnet50", "ft", "s1"), split("vgg19", "ft", "s1", "d2")])
    collect([split("resnet50", "ft", "s1"), split("vgg19", "ft", None, "d2")])  # older: unknown
    with pytest.raises(results.RecordError) as e:
        collect([split("resnet50", "ft", "s1"), vgg := split("vgg19", "lp", "s2", "d2")])
    resnet = split("resnet50", "ft")["run"]
    assert str(e.value) == (
        f"dataset 'bach' holds runs on different splits (split_fingerprint resnet50: s1 (e.g. "
        f"{resnet}); vgg19: s2 (e.g. {vgg['run']})): other val/test fractions, patient folders "
        "or skipped images, or data edited between them; their cells cannot be compared: "
        "rerun the older ones on the data as it is and move their folders out of --runs (these "
        "records do not say when they finished, so which are older is not known here), or "
        "report them from separate --runs folders"
    )

    # Same split, other images before the resize: a folder edited between the archs' runs
    # (the data fingerprints differ by arch anyway, so only this one tells).
    def source(arch, strategy, fp):
        return {**split(arch, strategy, "s1", arch), "source_fingerprint": fp}

    collect(
        [
            source("resnet50", "ft", "p1"),
            source("vgg19", "ft", "p1"),
            split("vgg19", "lp", None, "vgg19"),
        ]
    )
    with pytest.raises(results.RecordError) as e:
        collect([first := source("resnet50", "ft", "p1"), second := source("vgg19", "ft", "p2")])
    assert str(e.value).startswith(
        f"dataset 'bach' holds runs on different images (source_fingerprint resnet50: p1 (e.g. "
        f"{first['run']}); vgg19: p2 (e.g. {second['run']})): the data was edited "
        "between them (same files, splits and labels: other pixels, or the listing in "
        "another order, e.g. a labels CSV's rows reordered), or a medft-jax upgrade decoded "
        "them otherwise (records before 2026-12-07 do not say); their cells cannot be compared"
    )
    # Records that name their decoding versions, and two: an upgrade, not an edit (a user
    # who touched nothing was told the data was edited).
    with pytest.raises(results.RecordError) as e:
        collect(
            [
                {**source("resnet50", "ft", "p1"), "decoding_version": 10},
                {**source("vgg19", "ft", "p2"), "decoding_version": 11},
            ]
        )
    assert (
        "): medft-jax decoded their files by other rules (decoding versions 10, 11: an "
        "upgrade between them, not an edit of the data); their cells cannot be compared"
    ) in str(e.value)
    # Two images within one version too: an edit is possible, not only an upgrade.
    with pytest.raises(results.RecordError) as e:
        collect(
            [
                {**source("resnet50", "ft", "p1"), "decoding_version": 11},
                {**source("vgg19", "ft", "p2"), "decoding_version": 11},
                {**source("vgg19", "lp", "p3"), "decoding_version": 12},
            ]
        )
    assert "the data was edited between them" in str(e.value)
    assert "an upgrade between them, not an edit" not in str(e.value)
    decoded = {**split("vgg19", "lp", "s1", "d2"), "decoding": {"bits_stored": 12}}
    with pytest.raises(results.RecordError, match=r"decoding\.bits_stored: .*separate --runs"):
        collect([split("resnet50", "ft", "s1"), decoded])
    # A diverged run's note: an older one does not say how its files were decoded (one
    # such note made the whole dataset unreportable); a newer one says, and is compared.
    twelve = {**split("resnet50", "ft", "s1"), "decoding": {"bits_stored": 12}}
    older_note = fail(config={**decoded["config"], "seed": 1})
    cell = collect([twelve, decoded], [older_note]).cell("bach", "vgg19", "lp")
    assert (cell.runs_done, cell.excluded_lrs) == (2, (1e-4,))  # the diverged seed counts
    collect([twelve, decoded], [{**older_note, "decoding": {"bits_stored": 12}}])
    with pytest.raises(results.RecordError, match=r"decoding\.bits_stored: .*separate --runs"):
        collect([twelve, decoded], [{**older_note, "decoding": {}}])


def own(
    strategy="ft",
    *,
    data,
    when=None,
    root="/data/hospA",
    classes=("benign", "malignant"),
    split="s1",
    options=None,
    source=True,
    test=0.5,
):
    """A record of a user's own ``folder`` run on data ``data`` (its fingerprints follow),
    finished on day ``when`` of January 2025 (None: an older record with no time),
    read from ``root`` (``source`` False: an older record that does not say)."""
    r = rec("folder", "resnet_tiny", strategy, data_fingerprint=data, test=test)
    r.update(split_fingerprint=split, source_fingerprint=f"p-{data}", class_names=list(classes))
    if when is not None:
        r["finished_at"] = f"2025-01-{when:02d}T10:00:00.123456+00:00"
    if source:
        r["data_source"] = {"root": root, "options": options or {}, "skip_bad_images": False}
    return r


def test_two_own_datasets_under_one_name_are_refused_naming_each_folder_not_as_an_edit():
    """Every user's dataset is named ``folder``: two hospitals' folders in one --runs were
    refused as "data edited between them". Their class lists or recorded folders say
    otherwise, and the line names each side's folder."""
    a = own(data="d1", when=1)
    b = own("lp", data="d2", when=2, root="/data/hospB", classes=("normal", "pneumonia"))
    with pytest.raises(results.RecordError) as e:
        collect([a, b])
    assert str(e.value) == (
        "dataset 'folder' holds runs on different images (source_fingerprint resnet_tiny: p-d1 "
        f"(folder /data/hospA; classes benign, malignant; e.g. {a['run']}); resnet_tiny: p-d2 "
        f"(folder /data/hospB; classes normal, pneumonia; e.g. {b['run']})): different class "
        "lists (benign, malignant vs normal, pneumonia) and data from different folders (root: "
        '"/data/hospA" vs "/data/hospB"), not one dataset edited between them; their cells '
        "cannot be compared: report them from separate --runs folders"
    )
    # The same classes from another folder; and older records, which name no folder.
    with pytest.raises(results.RecordError, match=r'different folders \(root: "/data/hospA" vs'):
        collect([a, own("lp", data="d2", when=2, root="/data/hospB")])
    older = [own(data="d1", source=False), own("lp", data="d2", classes="xy", source=False)]
    with pytest.raises(results.RecordError, match=r"different class lists \(benign, malig"):
        collect(older)
    # One csv read with and without --group-column: another split, not an edit.
    grouped = own("lp", data="d2", when=2, split="s2", options={"group_column": "patient"})
    with pytest.raises(results.RecordError) as e:
        collect([a, grouped])
    assert "holds runs on different splits" in str(e.value)
    assert (
        'the data read with other options (options.group_column: "<absent>" vs "patient"; '
        "<absent>: the default), not one dataset edited between them"
    ) in str(e.value)
    # Two keys of two runs each: every "x vs y" is the first run's value, then the other's
    # (each key sorted apart put "<absent>" first in each, pairing values across runs).
    first = own(data="d1", when=1, options={"group_column": "patient"})
    mixed = own("lp", data="d2", when=2, split="s2", options={"label_column": "dx"})
    with pytest.raises(results.RecordError) as e:
        collect([first, mixed])
    assert (
        'options.group_column: "patient" vs "<absent>"; options.label_column: "<absent>" vs "dx"'
    ) in str(e.value)


def test_runs_on_edited_data_name_the_superseded_folders_oldest_first():
    """Sweep, edit an image, sweep again: the sweep reran the runs under new names and
    left the old records; the report said "rerun the older ones" without naming them."""
    old_ft, old_lp = own(data="d2", when=1), own("lp", data="d2", when=1)
    new_ft = own(data="d1", when=2)  # its fingerprint sorts first, its record is newer
    with pytest.raises(results.RecordError) as e:
        collect([new_ft, old_ft, old_lp])
    assert str(e.value) == (
        "dataset 'folder' holds runs on different images (source_fingerprint resnet_tiny: p-d2 "
        "(older, current at 2025-01-01T10:00:00; folder /data/hospA; e.g. "
        f"{old_ft['run']}); resnet_tiny: p-d1 (newest, current at 2025-01-02T10:00:00; folder "
        f"/data/hospA; e.g. {new_ft['run']})): the data was edited between them (same files, "
        "splits and labels: other pixels, or the listing in another order, e.g. a labels "
        "CSV's rows reordered), or a medft-jax upgrade decoded them otherwise (records before "
        "2026-12-07 do not say); their cells cannot be compared: the 2 runs on older data "
        f"({old_ft['run']}, {old_lp['run']}) are superseded: move or delete their folders from "
        f"--runs (1 of them, {old_lp['run']}, not rerun on the newest data yet: a sweep of the "
        "grid reruns them), or report them from separate --runs folders"
    )
    # Every old run rerun: --latest is offered, and leaves exactly those out.
    new_lp = own("lp", data="d1", when=2)
    with pytest.raises(results.RecordError, match=r"or report with --latest \(which leaves"):
        collect([new_ft, old_ft, old_lp, new_lp])
    # A class added to the same folder: changed, not another dataset; the old runs named.
    three = own("lp", data="d3", when=3, split="s3", classes=("benign", "malignant", "cyst"))
    with pytest.raises(results.RecordError) as e:
        collect([old_ft, three])
    assert "different splits" in str(e.value) and str(e.value).endswith(
        "the folder's class list changed between them (benign, malignant vs benign, "
        "malignant, cyst); their cells cannot be compared: the 1 run on older data "
        f"({old_ft['run']}) is superseded: move or delete its folder from --runs (1 of "
        f"them, {old_ft['run']}, not rerun on the newest data yet: a sweep of the grid reruns "
        "them), or report them from separate --runs folders"
    )
    # A paper task re-prepared between runs: the per-arch data check says the same.
    bach_old = {**rec(data_fingerprint="d1"), "finished_at": "2025-01-01T00:00:00"}
    bach_new = [
        {**rec(strategy=s, data_fingerprint="d2"), "finished_at": "2025-01-02T00:00:00"}
        for s in ("ft", "lp")
    ]
    with pytest.raises(results.RecordError) as e:
        collect([bach_old, *bach_new])
    assert str(e.value).endswith(
        f"the 1 run on older data ({bach_old['run']}) is superseded: move or delete its "
        "folder from --runs, or report with --latest (which leaves them out and says how "
        "many), or report them from separate --runs folders"
    )
    assert collect([bach_old, *bach_new], latest=True).superseded == 1


def test_latest_keeps_each_runs_newest_data_and_the_report_says_how_many_it_left_out(tmp_path):
    old = [own(s, data="d2", when=1, test=0.9) for s in ("ft", "lp")]
    new = [own(s, data="d1", when=3, test=0.6) for s in ("ft", "lp")]
    summary = collect([*old, *new], latest=True)
    assert summary.superseded == 2
    assert summary.cell("folder", "resnet_tiny", "ft").mean() == pytest.approx(0.6)
    index = write_report(summary, tmp_path / "report").read_text()
    assert "2 records on older data (superseded by a rerun of the same settings on newer " in index
    assert collect(new, latest=True).superseded == 0
    # What is not clearly a rerun is never dropped: another folder of the same name,
    # records that name no folder or no time; the refusal then stands.
    other = own(data="d3", when=4, root="/data/hospB")
    undated = own(data="d3")
    unnamed = own(data="d3", when=4, source=False)
    for newer in (other, undated, unnamed):
        with pytest.raises(results.RecordError, match="holds runs on different images"):
            collect([old[0], newer], latest=True)


def test_latest_keeps_the_run_a_later_command_found_current_after_an_edit_was_undone(
    tmp_path, capsys
):
    """Run on d1, an image added (d2) and run again, the image removed: the sweep skipped the
    d1 runs (done), but --latest kept d2's, whose data is no longer on disk, and the plain
    refusal told the user to delete d1's, the current data's only runs."""
    first = [own(s, data="d1", when=1, test=0.6) for s in ("ft", "lp")]
    edit = [own(s, data="d2", when=2, test=0.9) for s in ("ft", "lp")]
    runs = tmp_path / "runs"
    _write_runs(runs, [*first, *edit])
    for r in first:  # what run_one's skip of a current record leaves
        folder = runs / r["run"]
        assert (folder / results.RECORD_NAME).is_file()
        (folder / results.CONFIRMED_NAME).write_text(
            json.dumps({results.CONFIRMED_KEY: "2025-01-03T10:00:00+00:00"})
        )
    loaded = results.load_records(runs)
    assert sorted(r.get(results.CONFIRMED_KEY, "") for r in loaded)[-1].startswith("2025-01-03")
    summary = collect(loaded, latest=True)
    assert summary.superseded == 2
    assert summary.cell("folder", "resnet_tiny", "ft").mean() == pytest.approx(0.6)
    with pytest.raises(results.RecordError) as e:
        collect(loaded)
    superseded = str(e.value).split("the 2 runs on older data")[1]
    assert all(r["run"] in superseded for r in edit)
    assert not any(r["run"] in superseded for r in first)
    # A damaged stamp only orders runs: it is read as none, not refused.
    (runs / first[0]["run"] / results.CONFIRMED_NAME).write_text("{")
    again = {r["run"]: r for r in results.load_records(runs)}
    assert results.CONFIRMED_KEY not in again[first[0]["run"]]
    assert results.CONFIRMED_KEY in again[first[1]["run"]]


def test_cli_latest_reports_the_current_runs_the_refusal_names_the_superseded(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "out"
    old = [own(s, data="d2", when=1) for s in ("ft", "lp")]
    _write_runs(runs, [*old, *(own(s, data="d1", when=2) for s in ("ft", "lp"))])
    assert cli.main(["--runs", str(runs), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(r["run"] in err for r in old) and "--latest" in err
    assert not out.exists()
    assert cli.main(["--runs", str(runs), "--out", str(out), "--latest"]) == 0
    assert "2 records on older data" in (out / "index.md").read_text()


def test_a_record_without_its_epoch_log_has_an_unknown_epoch_count():
    """Not 0.0 epochs in the cost table: the count is unknown, shown as a dash."""
    records = [rec(seed=s) for s in range(3)]
    for r in records:
        del r["epochs"]
    (cell,) = collect(records).cells.values()
    assert math.isnan(cell.cost.epochs) and cell.cost.device_seconds == 10.0
    (cell,) = collect([rec(seed=s) for s in range(3)]).cells.values()
    assert cell.cost.epochs == 3


def test_a_grid_that_freezes_batchnorm_reports_its_ft_runs_named_update():
    """FT has no frozen block, so a freeze grid's FT runs are named ``update``
    (``RunConfig``): one grid, not runs of different settings."""
    records = [rec(strategy="ft", frozen_bn="update"), rec(strategy="lp", frozen_bn="freeze")]
    summary = collect(records)
    assert summary.cell("bach", "resnet50", "lp").status == "complete"
    with pytest.raises(results.RecordError, match=r"frozen_bn.*separate --runs"):
        collect([*records, rec(strategy="lp", seed=1, frozen_bn="update")])


def test_runs_of_two_numerics_versions_are_refused_and_a_grid_leaves_the_older_out():
    """A record without ``numerics`` predates version 2 (DenseNet/VGG head init, Auto-RGN's
    zero-norm rule): its numbers are not comparable with a current run's."""
    current_fp32 = numerics_version("fp32")
    old, new = rec(strategy="lp"), rec(numerics=current_fp32)
    assert "numerics" not in old["config"]
    collect([old, rec()])  # all of one version (the older): reported
    with pytest.raises(results.RecordError) as e:
        collect([new, old])
    assert str(e.value) == (
        f"runs of numerics versions 1 and {current_fp32} (e.g. {old['run']} is fp32 version "
        "1): a change between them alters runs' numbers (see medft_jax.config."
        "NUMERICS_VERSION); delete or move the older runs' folders, or report them from "
        "separate --runs folders"
    )
    grid = one_run_grid("bach")
    cfg = grid.config("bach", "resnet50", "ft", 1e-4, 0).to_dict()
    current = rec(config=cfg, test=0.7)
    stale = rec(config={k: v for k, v in cfg.items() if k != "numerics"}, test=0.9)
    assert current["run"] != stale["run"]  # another run: a sweep runs it again
    summary = collect([stale, current], grid=grid)
    assert summary.left_out == 1
    assert summary.cell("bach", "resnet50", "ft").test["accuracy"][0] == pytest.approx(0.7)


def test_a_version_that_changed_bf16_runs_only_leaves_float32_runs_current():
    """Version 4 computes a bf16 run's head in float32: a float32 run of version 3 is
    version 4's too (same name, not run again), a bf16 run of version 3 is not."""
    assert NUMERICS_VERSION == 7 and RunConfig("ft").numerics == 5  # 6, 7 changed bf16 only
    assert RunConfig("ft", precision="bf16").numerics == 7
    assert [numerics_version("bf16", v) for v in range(1, 8)] == [1, 2, 3, 4, 5, 6, 7]
    assert [numerics_version("fp32", v) for v in range(1, 8)] == [1, 2, 3, 3, 5, 5, 5]
    assert [forward_version("bf16", v) for v in range(1, 8)] == [1, 1, 1, 4, 4, 6, 7]
    assert [forward_version("fp32", v) for v in range(1, 8)] == [1] * 7
    fp32 = rec("bach", numerics=3)
    bf16_now = rec("t1w_mri", numerics=4, precision="bf16")
    bf16_then = rec("t1w_mri", seed=1, numerics=3, precision="bf16")
    summary = collect([fp32, bf16_now])  # one toolkit version's runs, two precisions
    assert [p["numerics"] for p in map(summary.protocol.get, ("bach", "t1w_mri"))] == [3, 4]
    collect([fp32, bf16_then])  # both version 3's
    with pytest.raises(results.RecordError) as e:
        collect([fp32, bf16_now, bf16_then])
    assert str(e.value).startswith(
        f"runs of numerics versions 3 and 4 (e.g. {bf16_then['run']} is bf16 version 3): "
    )
    with pytest.raises(
        results.RecordError, match=r"versions 2 and 4 \(e\.g\. .* is fp32 version 2"
    ):
        collect([rec("bach", numerics=2), bf16_now])


def test_a_run_of_a_newer_toolkit_is_refused_naming_it(tmp_path, capsys):
    """A record of a numerics version this toolkit does not know was reported without a
    word alone, and beside current runs the error told the user to delete the current ones
    as "older"."""
    newer = rec("bach", seed=2, numerics=NUMERICS_VERSION + 1)
    expected = (
        f"run {newer['run']}: written by a newer toolkit (numerics version {NUMERICS_VERSION + 1}; "
        f"this one knows 1 to {NUMERICS_VERSION}): report it with that toolkit, or move it "
        "out of --runs"
    )
    for runs in ([newer], [rec("bach", numerics=numerics_version("fp32")), newer]):
        with pytest.raises(results.RecordError) as e:
            collect(runs)
        assert str(e.value) == expected
    # The report names the file: in --runs merged from several hosts the run's name alone
    # left the user searching.
    runs = tmp_path / "runs"
    _write_runs(runs, [rec("bach"), newer])
    (path,) = [p for p in runs.rglob("record.json") if f"s{newer['config']['seed']}" in str(p)]
    assert cli.main(["--runs", str(runs), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"error: {path}: {expected}\n"


# --- the report folder -----------------------------------------------------------------------


@pytest.mark.slow
def test_write_report_writes_every_table_figure_and_index(tmp_path):
    summary = _three_datasets()
    out = tmp_path / "report"
    write_report(collect([rec(dataset="demo", test=0.6)]), out)  # an old report, replaced
    stale = out / "tables" / "cost_demo.csv"
    assert stale.is_file()
    index = write_report(summary, out)
    assert index == out / "index.md" and not stale.exists()
    figures = sorted((out / "figures").glob("*.png"))
    assert len(figures) == 2 * len(summary.datasets)
    for f in figures:
        data = f.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG)
    names = {p.stem for p in (out / "tables").iterdir()}
    expected = {"table11", "table12"} | {
        f"{kind}_{d}" for kind in ("cost", "paired") for d in ("bach", "t1w_mri", "mura_wrist")
    }
    assert expected | {"table05_mura_wrist", "table07_t1w_mri", "table08_bach"} == names
    for name in names:
        for ext in ("md", "tex", "csv"):
            assert (out / "tables" / f"{name}.{ext}").stat().st_size > 0
    text = index.read_text()
    for link in re.findall(r"\]\(([^)]+)\)", text):
        assert (out / link).is_file(), link
    assert "ttest" in text and "n/a: one seed paired," in text and "4.30" not in text  # 1 seed
    assert "†" in text and "—" in text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    # A folder the user shares is as readable as mkdir under the umask makes it (not 0700).
    assert out.stat().st_mode & 0o777 == (out / "tables").stat().st_mode & 0o777 == DIR_MODE


def test_a_killed_reports_temporary_folder_is_removed_by_the_next(tmp_path):
    """Killed mid-write, a report left its hidden temporary folder beside --out for good;
    the next report into the same --out removes it, never a live writer's."""
    import socket

    gone = dead_pid()
    host = socket.gethostname()
    out = tmp_path / "report"
    killed = tmp_path / f".report.tmp-{gone}@{host}-0123abcd"
    live = tmp_path / f".report.tmp-{os.getppid()}@{host}-0123abcd"  # the test runner's parent
    for folder in (killed, live):
        (folder / "tables").mkdir(parents=True)
    write_report(collect([rec(dataset="demo", test=0.6)]), out)
    assert not killed.exists() and live.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "report"])


def test_a_mount_point_out_is_refused_first_and_a_failed_swap_leaves_nothing(tmp_path, monkeypatch):
    """An --out that is a mount point (an empty volume) was a traceback once every table
    was written (it can be neither removed nor renamed), and a failed rename of an old
    report left an empty .<name>.XXXX.old folder beside it."""
    import dataclasses

    from medft_jax.report import write

    out = tmp_path / "volume"
    out.mkdir()
    real_ismount = os.path.ismount
    monkeypatch.setattr(write.os.path, "ismount", lambda p: Path(p) == out or real_ismount(p))
    with pytest.raises(write.ReportError) as err:
        write.check_out(out)
    assert str(err.value) == (
        f"--out {out}: is a mount point, which the report (written beside it, then renamed "
        "into place) cannot replace; give a folder inside it"
    )
    monkeypatch.setattr(write.os.path, "ismount", real_ismount)
    summary = collect([rec(dataset="demo", test=0.6)])
    write_report(summary, out)  # an old report
    real_replace = os.replace

    def busy(src, dst):
        if Path(src) == out:
            raise OSError(errno.EBUSY, "Device or resource busy", str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(write.os, "replace", busy)
    with pytest.raises(OSError, match="busy"):
        write_report(summary, out)
    monkeypatch.setattr(write.os, "replace", real_replace)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["volume"]  # no .old, no temporary
    # A grid's name is the user's text: escaped in the index as every other name is.
    named = dataclasses.replace(summary, grid_name="v2 *draft* <b>")
    index = write_report(named, tmp_path / "named").read_text()
    assert "the runs of grid 'v2 \\*draft\\* \\<b\\>' (from --config)" in index


def test_write_report_refuses_a_folder_that_is_not_a_report(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "keep.json").write_text("{}")
    with pytest.raises(ValueError, match="not a report"):
        write_report(_three_datasets(), runs)
    assert (runs / "keep.json").exists()


# --- command line ----------------------------------------------------------------------------


def _write_runs(folder: Path, records):
    for r in records:
        results.write_record(results.record_path_of(r, folder), r, sealed=True)


def test_cli_writes_the_report_and_prints_the_index(tmp_path, capsys):
    runs = tmp_path / "runs"
    _write_runs(
        runs, [rec(strategy=s, seed=k, test=0.7 + 0.01 * k) for s in ("ft", "lp") for k in (0, 1)]
    )
    out = tmp_path / "out"
    assert cli.main(["--runs", str(runs), "--out", str(out), "--only", "strategy=ft|lp"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "index.md")
    assert (out / "tables" / "table08_bach.csv").is_file()


def test_a_multilabel_datasets_copies_are_said_to_count_under_any_labels():
    from medft_jax.report.tables import data_notes

    [note] = data_notes({"copies": {"test": 3}, "multilabel": True})
    assert note.startswith(
        "Inflated: 3 test image(s) are copies of training images (multilabel: under any "
        "labels, each label they share inflated), scored as if unseen"
    )
    records = [rec(strategy="ft", seed=k) | {"multilabel": True} for k in (0, 1)]
    assert collect(records).protocol["bach"]["multilabel"] is True


@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
def test_the_report_says_which_scores_are_inflated_by_copies_and_what_was_skipped(tmp_path):
    """Each record of a folder whose test images include byte copies of training images
    said so (``eval_copies_of_train``), and the run's summary did; the report, the table a
    user copies into a paper, showed the inflated numbers without a word."""
    runs = tmp_path / "runs"
    # A path's _ is shown as it is: escapes are not read in a code span (it read my\_clinic).
    source = {"root": "/data/my_clinic", "options": {}, "skip_bad_images": True}
    records = [rec(dataset="folder", strategy=s, seed=k) for s in ("ft", "lp") for k in (0, 1)]
    for r in records:
        r |= {"data_source": source, "class_names": ["a", "b"]}
        r["eval_copies_of_train"] = {"test": 11, "val": 2}
        r["eval_copies_rule"] = "same_label"
        r["skipped_bad_images"] = {"train": 3}
        r["split_sizes"] = {"train": 27, "val": 3, "test": 6}
    records[0]["eval_copies_of_train"] = {"test": 11}  # an older reading: the most is kept
    _write_runs(runs, records)
    out = tmp_path / "out"
    assert cli.main(["--runs", str(runs), "--out", str(out)]) == 0
    inflated = (
        "Inflated: 2 val and 11 test image(s) are copies of training images of their label, "
        "scored as if unseen: these scores are higher than on independent images."
    )
    skipped = "3 unreadable image(s) left out by --skip-bad-images (train 3)."
    index = (out / "index.md").read_text()
    line = next(x for x in index.splitlines() if x.startswith("  - folder") and " px" in x)
    assert line.startswith(
        "  - folder read from `/data/my_clinic` (train 27, val 3, test 6 images): 224 px"
    )
    assert line.endswith(f". {inflated} {skipped}")
    table = next((out / "tables").glob("results_folder.md")).read_text()
    assert inflated in table and skipped in table

    # A folder split image by image whose DICOM headers put patients in two splits: the
    # load said so once, the record and the report did not (worse than copies).
    def reported(name: str, file: str = "tables/results_folder.md") -> str:
        """The report's ``file`` of the records as they are now."""
        _write_runs(tmp_path / name, records)
        assert (
            cli.main(["--runs", str(tmp_path / name), "--out", str(tmp_path / f"{name}_out")]) == 0
        )
        return (tmp_path / f"{name}_out" / file).read_text()

    for r in records:
        r["dicom_patients_across_splits"] = [9, "'P3': a/1.dcm, b/4.dcm"]
    assert (
        "Inflated: 9 DICOM PatientID(s) have files in more than one split (e.g. 'P3': a/1.dcm, "
        "b/4.dcm): a patient's images in training and evaluation, scored as if unseen; these "
        "scores are higher than on independent patients (group the files by patient and run "
        "again)."
    ) in reported("leaky")
    for r in records:
        del r["dicom_patients_across_splits"]
    # A record from a cache built before the same-label rule: its count may hold copies
    # under another label (which deflate), and the note does not claim otherwise.
    del records[1]["eval_copies_rule"]
    assert (
        "Inflated: 2 val and 11 test image(s) are copies of training images (counted by a "
        "toolkit before 2026-12-06, copies under another label included: those deflate), "
        "scored as if unseen"
    ) in reported("older", "index.md")
    # Clean data: no such words.
    for r in records:
        r.pop("eval_copies_rule", None)
        del r["eval_copies_of_train"], r["skipped_bad_images"]
    clean = tmp_path / "clean"
    _write_runs(clean, records)
    assert cli.main(["--runs", str(clean), "--out", str(tmp_path / "out2")]) == 0
    text = (tmp_path / "out2" / "index.md").read_text()
    assert "Inflated" not in text and "--skip-bad-images" not in text


def test_a_run_folder_copied_inside_runs_is_refused_naming_both_records(tmp_path, capsys):
    """A backup copy (``<run>.bak``, or under ``old/``) is one run found twice: refused as
    before, now naming both files rather than only the cell's lr and seed."""
    runs = tmp_path / "runs"
    one = rec(strategy="lp")
    _write_runs(runs, [one, rec(seed=1)])
    first = results.record_path_of(one, runs)
    copy = runs / "old" / f"{first.parent.name}.bak" / "record.json"
    results.write_record(copy, one, sealed=True)
    assert cli.main(["--runs", str(runs), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        f"error: --runs {runs}: {results.run_name(one['config'])} has two records, {first} "
        f"and {copy}; expected one per run: move the copy out\n"
    )


def test_records_without_the_seal_are_counted_in_one_note(tmp_path, capsys):
    """Written before records were sealed, or edited with the seal removed: read, and
    reported, but the user hears that their numbers are checked against nothing."""
    runs = tmp_path / "runs"
    _write_runs(runs, [rec(strategy="ft"), rec(strategy="lp")])
    bare = rec(seed=1)
    results.write_record(results.record_path_of(bare, runs), bare)  # no seal
    assert cli.main(["--runs", str(runs), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().err == (
        "note: 1 of 3 records carry no record_sha256 (written before 2026-12-05, or edited "
        "with it removed): their numbers are checked against nothing, e.g. "
        f"{results.record_path_of(bare, runs)}\n"
    )
    _write_runs(runs, [bare])  # sealed: nothing said
    assert cli.main(["--runs", str(runs), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().err == ""


def test_run_folders_without_a_record_are_counted_with_their_size(tmp_path, capsys):
    """A run killed, then its sweep's settings (or its data) edited: its folder and
    checkpoints stay on disk, and no table or listing named it. Finished and failed runs
    are not counted, nor a --force's previous/. Beside the finished run of its name (the
    rerun on the edited data, say) it is never resumed: the note said the sweep would."""
    runs = tmp_path / "runs"
    _write_runs(runs, [rec(strategy="ft"), rec(strategy="lp")])
    killed = runs / "bach-resnet50-ft-lr0.0001-s0-0123456789abcdef"
    (killed / "checkpoints" / "12" / "state").mkdir(parents=True)
    (killed / "checkpoints" / "12" / "state" / "d").write_bytes(b"x" * 2_500_000)
    (killed / "best").mkdir()
    (killed / "best" / "m").write_bytes(b"x" * 500_000)
    note = results.write_failure(runs, rec(strategy="lp", lr=1e-3)["config"], "nonfinite", "nan")
    diverged = runs / note["run"]
    (diverged / "checkpoints" / "3").mkdir(parents=True)
    empty = runs / "started-nothing-saved"
    (empty / "checkpoints").mkdir(parents=True)
    assert results.unfinished_runs(runs) == [(killed, 3_000_000)]
    assert cli.main(["--runs", str(runs), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().err == (
        "note: 1 run folder(s) hold no record, 3.0 MB of checkpoints (killed, still running, "
        f"or run with settings or data since changed), e.g. {killed}: rerunning the same "
        "command resumes one only while its settings and data are as they were (edited data "
        "is another run); 1 of them stopped beside a finished run of the same name on other "
        f"data or settings (that run's command never resumes them), e.g. {killed}; delete a "
        "stopped one you no longer mean to finish to free its disk\n"
    )
    # Running now in another process (a bf16 run beside the fp32 one, say): not stopped.
    (killed / locks.LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": locks._host()}))
    assert cli.main(["--runs", str(runs), "--out", str(tmp_path / "out2")]) == 0
    err = capsys.readouterr().err
    assert (
        f"; 1 of them are running now (a live process on this host holds the lock), e.g. {killed};"
    ) in err
    assert "stopped beside" not in err
    # That pid started after the lock was written: another process now, the run stopped.
    os.utime(killed / locks.LOCK_NAME, (0, 0))
    assert cli.main(["--runs", str(runs), "--out", str(tmp_path / "out3")]) == 0
    err = capsys.readouterr().err
    assert "running now" not in err and "stopped beside a finished run" in err
    # A lock naming another host (the report made on a login node): not called running.
    lock = {"pid": 4242, "host": "node17"}
    (killed / locks.LOCK_NAME).write_text(json.dumps(lock))
    assert cli.main(["--runs", str(runs), "--out", str(tmp_path / "out4")]) == 0
    err = capsys.readouterr().err
    assert (
        "; 1 of them may be running elsewhere (the lock names host node17, which cannot be "
        "checked from here; a run killed there leaves its lock too), e.g. "
    ) in err
    assert "running now" not in err and "stopped beside" not in err


def test_a_run_under_way_before_its_first_checkpoint_is_named_not_missing(tmp_path, capsys):
    """Setting up, compiling or in its first epoch a run's folder holds its lock alone: a
    report said "not run yet", or with nothing finished "no run records" of the folder."""
    runs = tmp_path / "runs"
    going = runs / "bach-resnet50-ft-lr0.0001-s0-0123456789abcdef"
    going.mkdir(parents=True)
    (going / locks.LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": locks._host()}))
    stale = runs / "bach-resnet50-lp-lr0.0001-s0-0123456789abcdef"
    stale.mkdir()
    (stale / locks.LOCK_NAME).write_text(json.dumps({"pid": 2**22 + 7, "host": locks._host()}))
    assert results.unfinished_runs(runs) == [(going, (going / locks.LOCK_NAME).stat().st_size)]
    assert cli.main(["--runs", str(runs), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        f"error: --runs {runs}: no run records (record.json) or failure notes in it; 1 run(s) "
        f"are under way (a process holds its lock), e.g. {going}: report once one finishes\n"
    )
    _write_runs(runs, [rec(strategy="lp", lr=1e-3)])
    assert cli.main(["--runs", str(runs), "--out", str(tmp_path / "out")]) == 0
    assert (
        f"1 of them are running now (a live process on this host holds the lock), e.g. {going}"
        in (capsys.readouterr().err)
    )


def test_a_forced_rerun_is_named_not_taken_for_an_empty_folder(tmp_path, capsys):
    """During ``run --force`` the run's last record waits in previous/ (not read: it is not
    the rerun's result). A report then said "no run records" in a folder holding one, or
    counted the rerun with killed runs."""
    runs = tmp_path / "runs"
    _write_runs(runs, [rec(strategy="lp")])
    folder = results.record_path_of(rec(strategy="lp"), runs).parent
    (folder / "previous").mkdir()
    (folder / "record.json").rename(folder / "previous" / "record.json")
    (folder / "checkpoints" / "2").mkdir(parents=True)  # the rerun's first checkpoint
    forced: list[Path] = []
    assert results.unfinished_runs(runs, set_aside=forced) == [] and forced == [folder]
    out = tmp_path / "out"
    assert cli.main(["--runs", str(runs), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: --runs {runs}: no run records (record.json) or failure notes in it; 1 run(s) "
        f"rerun with --force keep their last record in previous/, e.g. {folder}: 1 with no "
        "process running (a forced rerun killed: run it again to finish)\n"
    )
    (folder / ".lock").write_text(json.dumps({"pid": 1, "host": "node17"}))  # running there
    assert cli.main(["--runs", str(runs), "--out", str(out)]) == 2
    assert capsys.readouterr().err.endswith(
        f"e.g. {folder}: 1 still running (report once they end)\n"
    )
    (folder / ".lock").unlink()
    assert not out.exists()
    _write_runs(runs, [rec(strategy="ft")])  # another run finished: the report is written
    assert cli.main(["--runs", str(runs), "--out", str(out)]) == 0
    assert capsys.readouterr().err == (
        "note: 1 run(s) being rerun with --force (or a forced rerun killed) are left out: "
        f"their last record waits in previous/ until the rerun ends, e.g. {folder}\n"
    )


def test_a_lost_shard_is_counted_missing_by_the_sweeps_plan(tmp_path, capsys):
    """A 3-seed grid swept as --shard i/3 deals each shard one whole seed: with shard 2
    lost (a SLURM task never scheduled), a report without --config inferred seeds 0 and 1
    and read every cell complete, one seed short. The sweep's plan beside the runs keeps
    seed 2 expected; a plan that is not one is named."""
    from medft_jax import plans

    runs = tmp_path / "runs"
    grid = [rec(strategy=s, seed=k)["config"] for s in ("ft", "lp") for k in (0, 1, 2)]
    _write_runs(runs, [rec(strategy=c["strategy"], seed=c["seed"]) for c in grid if c["seed"] < 2])
    out = tmp_path / "out"
    assert cli.main(["--runs", str(runs), "--out", str(out)]) == 0  # no plan: inferred
    assert "Runs done (finished or failed): 4 of 4 expected" in (out / "index.md").read_text()
    for _ in range(3):  # every shard writes it: one file
        plan = plans.write_plan(runs, "paper", ["strategy=ft|lp"], grid)
    assert [p.name for p in (runs / ".plans").glob("*.json")] == [plan.name]
    capsys.readouterr()
    assert cli.main(["--runs", str(runs), "--out", str(out)]) == 0
    index = (out / "index.md").read_text()
    assert "Runs done (finished or failed): 4 of 6 expected" in index, index
    assert f"the runs listed in the sweep plan(s) .plans/{plan.name} (grid 'paper')" in index
    assert "delete a plan file to stop expecting its runs" in index
    assert "0 complete, 2 partial" in index
    bad = dict(json.loads(plan.read_text()))
    for k, run, said in (
        (None, {"dataset": "bach"}, "run 0: arch None is not an arch this medft-jax builds"),
        ("strategy", "zzz", "run 0: strategy 'zzz' is not one of ft, lp,"),
        ("dataset", "nonsense", "run 0: dataset 'nonsense': unknown; known:"),
        ("lr", float("nan"), "run 0: lr nan is not a positive number"),
        ("seed", -5, "run 0: seed -5 is not an integer from 0"),
    ):
        first = run if k is None else {**bad["runs"][0], k: run}
        plan.write_text(json.dumps({**bad, "runs": [first, *bad["runs"][1:]]}))
        assert cli.main(["--runs", str(runs), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {plan}: not a sweep plan ({said}"), err
        assert err.endswith("delete it (a report then expects no runs of it), or give --config\n")
    # A Mac's AppleDouble file beside a copied plan is not a plan.
    plan.write_text(json.dumps(bad))
    (plan.parent / f"._{plan.name}").write_bytes(b"\x00\x05\x16\x07Mac OS X")
    assert cli.main(["--runs", str(runs), "--out", str(out)]) == 0


def test_a_plan_of_the_first_form_is_read_until_its_grid_writes_one_of_the_new(tmp_path):
    """Plans first had no grid_hash and one file per selection: a folder holding one
    failed every report once plans took the new form; it counts until replaced."""
    from medft_jax import plans

    runs = tmp_path / "runs"
    grid = [rec(strategy="ft", seed=k)["config"] for k in (0, 1, 2)]
    _write_runs(runs, [rec(strategy="ft", seed=k) for k in (0, 1)])
    first = runs / ".plans" / "paper-0123456789abcdef.json"
    first.parent.mkdir()
    first.write_text(json.dumps({"grid": "paper", "only": [], "runs": grid}))
    assert [p for p, _ in plans.load_plans(runs)] == [first]
    plans.write_plan(runs, "paper", [], grid[:2])
    assert [p.name for p, _ in plans.load_plans(runs)] == [plans.plan_path(runs, "paper").name]


def test_each_sweep_plan_expects_its_own_runs_and_an_edited_grid_replaces_its_plan(tmp_path):
    """The plans' runs were crossed with every run's arch, LR and seed: a 2-run plan of
    bach (ResNet-50, lr 0.01) beside a complete demo sweep read "8 of 48 expected", demo
    gaining a ResNet-50 column. A grid edited to 3 seeds, swept for seed 2 and edited
    back kept seed 2 expected for ever. Now a plan's runs are expected as listed, slices
    of one grid add up, and an edited grid's plan replaces the old one."""
    from medft_jax import plans

    runs = tmp_path / "runs"
    demo = [
        rec(dataset="demo", arch="resnet_tiny", strategy=s, lr=lr, seed=k)
        for s in ("ft", "lp")
        for lr in (1e-3, 1e-4)
        for k in (0, 1)
    ]
    _write_runs(runs, demo)
    plans.write_plan(runs, "tiny", [], [r["config"] for r in demo])
    bach = [rec(arch="resnet50", lr=0.01, seed=k)["config"] for k in (0, 1)]
    plans.write_plan(runs, "bachgrid", [], bach)
    out = tmp_path / "out"
    assert cli.main(["--runs", str(runs), "--out", str(out)]) == 0
    index = (out / "index.md").read_text()
    assert "Runs done (finished or failed): 8 of 10 expected" in index, index
    assert "2 complete, 0 partial, 0 failed, 1 missing" in index
    # A one-off run no plan lists (LP-FT, one seed) is inferred as before: partial.
    one_off = rec(dataset="demo", arch="resnet_tiny", strategy="lp_ft", lr=1e-3, seed=0)
    _write_runs(runs, [one_off])
    assert cli.main(["--runs", str(runs), "--out", str(out)]) == 0
    index = (out / "index.md").read_text()
    assert "2 complete, 1 partial, 0 failed, 1 missing" in index, index
    shutil.rmtree(results.record_path_of(one_off, runs).parent)
    # Slices of one grid (--only seed=0, then seed=1) add up in one plan.
    whole = [rec(arch="resnet50", lr=0.01, seed=k)["config"] for k in (0, 1, 2)]
    grid_hash = results.config_hash({"runs": whole})
    for k in (0, 1, 2):
        path = plans.write_plan(runs, "bachgrid", [f"seed={k}"], [whole[k]], grid_hash)
    [(_, plan)] = [(p, x) for p, x in plans.load_plans(runs) if x["grid"] == "bachgrid"]
    assert sorted(r["seed"] for r in plan["runs"]) == [0, 1, 2]
    assert plan["only"] == ["seed=0", "seed=1", "seed=2"]
    # The grid edited (another definition): its plan is the new selection alone.
    plans.write_plan(runs, "bachgrid", [], whole[:1])
    assert [r["seed"] for r in json.loads(path.read_text())["runs"]] == [0]
    assert len(list((runs / ".plans").glob("*.json"))) == 2


def test_a_folder_without_ft_says_why_nothing_is_compared_with_it(tmp_path):
    """The README's demo runs G-LF and LP-FT: the paired table drew a bare Strategy column
    and the improvement figure two n/a labels, saying nothing of the missing baseline."""
    runs = tmp_path / "runs"
    _write_runs(runs, [rec(strategy=s) for s in ("g_lf", "lp_ft")])
    out = tmp_path / "out"
    assert cli.main(["--runs", str(runs), "--out", str(out)]) == 0
    said = "no FT value for bach to compare with (it was not run): run --strategy ft too"
    assert said in (out / "tables" / "paired_bach.md").read_text()
    assert said in (out / "index.md").read_text()
    _write_runs(runs, [rec(strategy="ft")])  # the baseline: the usual note, no such line
    assert cli.main(["--runs", str(runs), "--out", str(out)]) == 0
    assert "no FT value" not in (out / "index.md").read_text()
    shutil.rmtree(runs / results.record_path_of(rec(strategy="ft"), runs).parent.name)
    results.write_failure(runs, rec(strategy="ft")["config"], "nonfinite", "nan")
    assert cli.main(["--runs", str(runs), "--out", str(out)]) == 0
    assert "(FT diverged at every LR it ran): run FT at other LRs" in (out / "index.md").read_text()


def test_a_read_only_out_is_named_not_the_temporary_folder(tmp_path, capsys, monkeypatch):
    import errno

    runs = tmp_path / "runs"
    _write_runs(runs, [rec()])
    mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.name.startswith(".report.tmp-"):  # the report's temporary folder
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    out = tmp_path / "ro" / "report"
    assert cli.main(["--runs", str(runs), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err and ".tmp" not in err, err


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "no such folder"),
        ("file", "is a file, expected the runs' folder"),
        ("empty", "no run records"),
        ("corrupt", "record.json: not a readable run record"),
        # A RecursionError's traceback, from JSON nested deeper than Python's parser goes.
        ("nested", "record.json: not a readable run record"),
        ("filter", "--only"),
        # A value no run has: seed 7 would vanish from a report that says "2 of 2 expected".
        ("typo", "--only seed=7: no run has it (the runs' seeds: 0)"),
        ("threshold", "--beat-threshold"),
        ("config", "--config"),
        ("value", 'test.accuracy is "0.71 (bad)", expected null or a number in [-1, 1]'),
        ("seed", "config.seed is '0', not an integer"),
        ("seconds", "train_seconds is [1.0], expected seconds >= 0"),
        # Edits that read as numbers: a cell's winner, an undefined metric, a cheaper strategy.
        ("range", "test.accuracy is 57.0, expected null or a number in [-1, 1]"),
        ("dropped", "metric 'accuracy' is in val only"),
        ("untimed", "no train_seconds (seconds of training)"),
        # Left out of the LR search's device-seconds while "Runs 6/6" stood.
        ("features", 'features.seconds is "3", expected seconds >= 0'),
        ("nan", "NaN is not JSON; a record writes a non-finite number as null"),
        # A record file that is not a file: its run would vanish from every table.
        ("folder", "record.json: a folder, expected the run's record.json"),
        ("loop", "record.json: a broken or looping link, expected the run's record.json"),
    ],
)
def test_cli_errors_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, case, expected):
    runs = tmp_path / "runs"
    args = []
    if case == "file":
        runs.write_text("")
    elif case != "missing":
        runs.mkdir()
    if case in ("corrupt", "nested", "filter", "typo", "threshold", "config"):
        _write_runs(runs, [rec()])
    edits = ("value", "seed", "seconds", "range", "dropped", "untimed", "nan", "features")
    if case in edits:  # hand-edited values, in a folder not named by hash
        edited = rec(strategy="lp")
        edited["test"]["accuracy"] = {"value": "0.71 (bad)", "range": 57.0, "nan": math.nan}.get(
            case, 0.71
        )
        if case == "dropped":
            del edited["test"]["accuracy"]
        edited["config"]["seed"] = "0" if case == "seed" else 0
        if case == "seed":  # hand-made, without the run name ("s0") the edit would contradict
            del edited["run"]
        edited["train_seconds"] = {"seconds": [1.0], "untimed": None}.get(case, 1.0)
        if case == "features":
            edited["features"] = {"used": True, "reused": False, "seconds": "3"}
        _write_runs(runs, [rec()])
        (runs / "edited").mkdir()
        (runs / "edited" / "record.json").write_text(json.dumps(edited))
    if case in ("folder", "loop"):
        _write_runs(runs, [rec()])
        (runs / "lp-run").mkdir()
        bad = runs / "lp-run" / "record.json"
        bad.mkdir() if case == "folder" else bad.symlink_to(bad)
    if case in ("corrupt", "nested"):
        bad = runs / "bach-broken" / "record.json"
        bad.parent.mkdir()
        bad.write_text(
            '{"config": {"dataset": ' if case == "corrupt" else "[" * 10**5 + "]" * 10**5
        )
        expected = str(bad) + ": not a readable"
    args = {
        "filter": ["--only", "colour=red"],
        "typo": ["--only", "seed=0|7"],
        "threshold": ["--beat-threshold", "-1"],
        "config": ["--config", str(tmp_path / "nope.py")],
    }.get(case, [])
    out = tmp_path / "out"
    assert cli.main(["--runs", str(runs), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_records_without_the_multilabel_key_read_map_as_multilabel():
    r = rec(dataset="demo", test=0.6)
    del r["multilabel"]
    r["primary_metric"] = "map"
    r["val"] = {"map": 0.6, "accuracy": 0.5}
    r["test"] = {"map": 0.6, "accuracy": 0.5}
    summary = collect([r])
    assert summary.primary["demo"] == "map" and summary.metrics["demo"] == ("map", "auroc")
    assert json.dumps(to_csv(dataset_table(summary, "demo")))  # renders


# --- the paper's metrics: top-1 headline, Table 12's counting metric, error bars -------------


def top1_rec(strategy="ft", seed=0, lr=1e-4, *, top1, eq6=None, kappa=0.5, f1=0.5, **kw):
    """A BACH record as fit writes it today: eq. 6 primary, top-1 beside it."""
    r = rec(strategy=strategy, seed=seed, lr=lr, **kw)
    eq6 = 1 - 2 * (1 - top1) / 4 if eq6 is None else eq6
    metrics_ = {"accuracy": eq6, "top1_accuracy": top1, "kappa": kappa, "f1": f1}
    r["val"], r["test"] = dict(metrics_), dict(metrics_)
    return r


def test_multiclass_tables_show_top1_and_improve_in_it():
    """BACH's table shows top-1 accuracy and κ; the improvement is in top-1 (eq. 6 would
    give 100·(0.9 − 0.875)/0.875 = 2.86 %, top-1 100·(0.8 − 0.75)/0.75 = 6.67 %)."""
    summary = collect([top1_rec("ft", top1=0.75), top1_rec("lp", top1=0.80)])
    assert summary.primary["bach"] == "accuracy"  # the LR is still chosen as recorded
    assert summary.metrics["bach"] == ("top1_accuracy", "kappa")
    assert summary.cell("bach", "resnet50", "lp").metric == "top1_accuracy"
    (best,) = best_per_dataset(summary)
    assert best.metric == "top1_accuracy"
    assert best.improvement == pytest.approx(100 * 0.05 / 0.75)
    md = to_markdown(dataset_table(summary, "bach"))
    assert "Acc. (top-1)" in md and "κ" in md and "80.00 (–)" in md and "90.00" not in md
    assert "top-1" in to_markdown(table11(summary))


def test_records_without_top1_keep_their_primary_as_headline():
    """Records that lack the headline key fall back to their primary, never to NaN."""
    summary = collect([rec(strategy="ft", test=0.7), rec(strategy="lp", test=0.8)])
    assert summary.metrics["bach"] == ("accuracy", "kappa")
    assert best_per_dataset(summary)[0].improvement == pytest.approx(100 * 0.1 / 0.7)


def test_vs_paper_says_why_older_bach_records_are_not_compared(tmp_path):
    """Records without top-1 show eq. 6 accuracy, rightly not set beside the paper's top-1;
    the index called them "cells the paper does not have" and the paper's "without a run"
    ("not run here, failed, or the metric undefined"), never the reason."""
    records = [rec(strategy=s, seed=k, test=0.7) for s in ("ft", "lp") for k in range(3)]
    rows = "8,bach,ft,resnet50,accuracy,70.0,1.0\n8,bach,lp,resnet50,accuracy,72.0,1.0\n"
    index = (_vs_paper_report(tmp_path, records, rows) / "index.md").read_text()
    assert "- bach: 0 cells compared" in index
    assert (
        "  Our Acc. is not the paper's Acc. (top-1): the records hold no Acc. (top-1) (written "
        "by an older toolkit), so these cells are not compared and count below as unmatched "
        "on both sides; rerun them (--force) to compare.\n"
    ) in index
    records = [top1_rec(s, k, top1=0.7) for s in ("ft", "lp") for k in range(3)]
    index = (_vs_paper_report(tmp_path / "new", records, rows) / "index.md").read_text()
    assert "- bach: 2 cells compared" in index and "is not the paper's" not in index


def test_table12_counts_each_dataset_in_its_counting_metric():
    """T1w counts F1 (COUNT_METRICS), not its headline top-1: here top-1 rises, F1 falls."""
    from medft_jax.report import COUNT_METRICS, count_metric

    records = [
        top1_rec("ft", dataset="t1w_mri", top1=0.80, f1=0.70),
        top1_rec("lp", dataset="t1w_mri", top1=0.85, f1=0.69),
    ]
    summary = collect(records)
    assert summary.headline("t1w_mri") == "top1_accuracy"
    assert count_metric(summary, "t1w_mri") == COUNT_METRICS["t1w_mri"] == "f1"
    assert beats_ft(summary) == {("lp", "resnet50"): (0, 1)}
    assert beats_ft(summary, count_metrics={}) == {("lp", "resnet50"): (1, 1)}
    table = table12(summary)
    assert "t1w_mri F1" in table.notes[0] and table.records[0]["k"] == 0


def test_improvement_error_bars_from_the_seeds_se():
    """SE(g) = 100·√(se² + (m/m_FT)²·se_FT²)/m_FT, each SE over the cell's seeds."""
    from medft_jax.report import improvement_se

    ft, lp = [0.70, 0.74, 0.72], [0.80, 0.76, 0.81]
    records = [rec(strategy="ft", seed=s, test=t) for s, t in enumerate(ft)]
    records += [rec(strategy="lp", seed=s, test=t) for s, t in enumerate(lp)]
    records += [rec(strategy="g_lf", seed=0, test=0.75)]  # one seed: no spread
    summary = collect(records)
    m, m_ft = np.mean(lp), np.mean(ft)
    se, se_ft = (np.std(x, ddof=1) / math.sqrt(3) for x in (lp, ft))
    expected = 100 * math.sqrt(se**2 + (m / m_ft) ** 2 * se_ft**2) / m_ft
    assert improvement_se(summary, "bach", "resnet50", "lp") == pytest.approx(expected)
    bars = {b.strategy: b for b in improvement_bars(summary, "bach")}
    assert bars["lp"].gain == pytest.approx(100 * (m - m_ft) / m_ft)
    assert bars["lp"].err == pytest.approx(expected)
    assert math.isfinite(bars["g_lf"].gain) and math.isnan(bars["g_lf"].err)
    assert set(bars) == {"lp", "g_lf"}  # FT is the reference, not a bar


def _drawn(summary, kind, monkeypatch, dataset="bach"):
    """The matplotlib figure a report draws for ``dataset`` (its axes)."""
    from medft_jax.report import figures

    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig) or path)
    draw = figures.improvement_figure if kind == "improvement" else figures.cost_figure
    draw(summary, dataset, Path("unused.png"))
    return drawn[0].axes[0]


def test_figure_legends_errors_and_titles_say_what_is_drawn(monkeypatch):
    """An arch without a bar took ResNet-50's blue in the legend; a single seed's bar had a
    zero-length error bar with caps (as seeds that agreed exactly); n/a was unexplained;
    an --only filter was unsaid; an empty cost figure's axis said log scale."""
    from matplotlib.colors import to_rgba

    records = [rec(strategy=s, seed=k, test=0.7 + 0.01 * k) for s in ("ft", "lp") for k in range(3)]
    records += [rec(strategy="g_lf", seed=0, test=0.75)]  # one seed: no error bar
    records += [rec(arch="densenet121", strategy="lp", seed=k, test=0.8) for k in range(3)]
    failures = [fail(arch="densenet121", strategy="ft", seed=k) for k in range(3)]
    ax = _drawn(collect(records, failures), "improvement", monkeypatch)
    legend = ax.get_legend()
    swatches = {t.get_text(): h.get_facecolor() for t, h in zip(
        legend.get_texts(), legend.legend_handles, strict=True)}  # fmt: skip
    assert swatches == {"ResNet-50": to_rgba("C0"), "DenseNet-121": to_rgba("C1")}
    (errors,) = [c for c in ax.containers if type(c).__name__ == "ErrorbarContainer"]
    assert len(errors.lines[2][0].get_segments()) == 1  # LP's; G-LF's single seed has none
    assert ax.get_xlabel().endswith("; n/a: no value for the cell or for its arch's FT "
                                    "(diverged, failed or not run)")  # fmt: skip
    labels = [t for t in ax.texts if t.get_text() == "n/a"]
    assert labels and all(to_rgba(t.get_color()) == to_rgba("C1") for t in labels)
    only = collect(records, failures, filters={"lr": {"0.0001"}})
    title = _drawn(only, "improvement", monkeypatch).get_title()
    assert title.endswith("\n(only the runs --only keeps: lr = 0.0001)")
    empty = _drawn(collect([], failures), "cost", monkeypatch)
    assert "log scale" not in empty.get_xlabel()
    assert "(log scale)" in _drawn(collect(records), "cost", monkeypatch).get_xlabel()
    texts = [t.get_text() for t in _drawn(collect([], failures), "improvement", monkeypatch).texts]
    assert texts == [
        "no FT value for bach to compare with (FT diverged at every LR it ran): run FT at other LRs"
    ]


def test_a_datasets_figures_show_its_own_archs_and_strategies(monkeypatch):
    """A dataset run on ResNet-50 alone, beside one run on DenseNet-121 too, had a
    DenseNet-121 legend entry, n/a slots and half-width bars (its table no such column);
    a strategy only the other ran, an n/a tick."""
    records = [rec(strategy=s, seed=k, test=0.7) for s in ("ft", "lp") for k in range(3)]
    records += [
        rec(dataset="mura_wrist", arch=a, strategy=s, seed=k, test=0.6)
        for a in ("resnet50", "densenet121")
        for s in ("ft", "lp", "l2_sp")
        for k in range(3)
    ]
    # Two grids' plans: each dataset expects its own runs (loose runs would be read as one
    # grid, crossed: DenseNet-121 expected of bach too).
    planned = [
        ("a", [r["config"] for r in records if r["config"]["dataset"] == "bach"]),
        ("b", [r["config"] for r in records if r["config"]["dataset"] != "bach"]),
    ]
    summary = collect(records, planned=planned)
    assert summary.archs_of("bach") == ["resnet50"]
    assert summary.strategies_of("bach") == ["ft", "lp"]
    assert [(b.arch, b.strategy, b.x) for b in improvement_bars(summary, "bach")] == [
        ("resnet50", "lp", 0.0)
    ]
    ax = _drawn(summary, "improvement", monkeypatch)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ResNet-50"]
    assert "n/a" not in [t.get_text() for t in ax.texts] and ax.get_xlabel() == ""


def test_improvement_bars_carry_the_tables_other_marks(monkeypatch):
    """A bar whose LR was chosen without an LR where a run failed (‡ in the table) was
    drawn as plainly as any other: only † had a sign (hatching)."""
    records = [
        rec(strategy=s, seed=k, test=t) for s, t in (("ft", 0.7), ("lp", 0.8)) for k in range(3)
    ]
    records += [rec(strategy="lp", lr=1e-3, seed=k, val=0.1) for k in (1, 2)]
    summary = collect(records, [fail(strategy="lp", lr=1e-3, seed=0)])
    [bar] = improvement_bars(summary, "bach")
    assert bar.marks == "‡"  # (and hatched: FT has no run at lr 0.001)
    ax = _drawn(summary, "improvement", monkeypatch)
    assert [t.get_text() for t in ax.texts] == ["‡"]
    assert "; ‡ on a bar: its cell or FT's is so marked in the dataset's table" in ax.get_xlabel()
    cost = _drawn(summary, "cost", monkeypatch)  # and by its point: the cost figure said none
    assert [t.get_text() for t in cost.texts] == ["‡"]
    assert "; ‡ § ¶ by a point: its cell is so marked in the dataset's table" in cost.get_xlabel()


def test_figures_mark_partial_cells_and_missing_error_bars(monkeypatch):
    """As the tables' †: LP has 2 of FT's 3 seeds (partial), G-LF 1 (partial, no spread)."""
    from matplotlib.colors import to_rgba

    records = [rec(strategy="ft", seed=k, test=0.7 + 0.01 * k) for k in range(3)]
    records += [rec(strategy="lp", seed=k, test=0.8 + 0.01 * k) for k in range(2)]
    records += [rec(strategy="g_lf", seed=0, test=0.75)]
    records += [rec(arch="densenet121", strategy=s, seed=k) for s in ("ft", "lp") for k in range(3)]
    summary = collect(records)
    assert summary.cell("bach", "resnet50", "lp").status == "partial"
    bars = {(b.arch, b.strategy): b for b in improvement_bars(summary, "bach")}
    assert bars[("resnet50", "lp")].partial and bars[("resnet50", "g_lf")].partial
    assert not bars[("densenet121", "lp")].partial
    ax = _drawn(summary, "improvement", monkeypatch)
    drawn = {c.get_label(): c.patches for c in ax.containers if hasattr(c, "patches")}
    by_arch = {arch: [p.get_hatch() for p in patches] for arch, patches in drawn.items()}
    assert by_arch == {"ResNet-50": ["//", "//"], "DenseNet-121": [None]}
    assert ax.get_xlabel() == (  # DenseNet-121 ran no G-LF: n/a
        "hatched: runs missing (†); no error bar: one seed; n/a: no value for the cell or "
        "for its arch's FT (diverged, failed or not run)"
    )
    densenet = drawn["DenseNet-121"][0]
    alone = collect([r for r in records if r["config"]["arch"] == "densenet121"])
    ax_alone = _drawn(alone, "improvement", monkeypatch)
    alone_bar = next(c for c in ax_alone.containers if hasattr(c, "patches")).patches[0]
    assert alone_bar.get_facecolor() == densenet.get_facecolor()
    assert densenet.get_facecolor() == to_rgba("C1")  # DenseNet-121's colour in every report
    from medft_jax.names import TEST_ARCHS
    from medft_jax.report.figures import arch_colour, arch_marker

    every = [*ARCHS, *TEST_ARCHS]  # the two stand-ins took one colour (by a hash)
    assert len({arch_colour(a) for a in every}) == len({arch_marker(a) for a in every}) == 5
    assert ax_alone.get_xlabel() == ""  # complete cells, three seeds: nothing to say
    cost = _drawn(summary, "cost", monkeypatch)
    assert cost.get_xlabel().endswith("; hollow: runs missing (†)")
    ft_only = _drawn(collect([rec(strategy="ft")]), "improvement", monkeypatch)
    assert [t.get_text() for t in ft_only.texts] == ["no strategy but FT: nothing to compare"]


def test_how_to_read_names_every_tables_metrics(tmp_path):
    records = [top1_rec("ft", top1=0.75), top1_rec("lp", top1=0.80)]
    records += [rec(dataset="mura_wrist", strategy=s, test=0.7) for s in ("ft", "lp")]
    text = write_report(collect(records), tmp_path / "report").read_text()
    how = text[text.index("## How to read") : text.index("## mura\\_wrist")]
    assert "Table 8 (bach): Acc. (top-1) = top-1 accuracy" in how
    assert "κ = Cohen's κ" in how
    assert "Table 5 (mura\\_wrist): Acc. = the paper's eq. 6" in how
    assert "bach Acc. (top-1)" in how and "mura\\_wrist Acc." in how
    assert "counted in its headline metric or, where the paper counted it in another" in how
    mura = text[text.index("## mura\\_wrist") :]
    assert (
        "(headline: Acc.). The epoch and LR are chosen by the validation Acc. (the headline)."
        in mura
    )
    assert "error bar" in how


def opt_rec(strategy="ft", seed=0, *, dataset="isic2020", options=None, **kw):
    """A record of a task with split or label options (None: written before they existed)."""
    r = rec(dataset=dataset, strategy=strategy, seed=seed, **kw)
    if options is not None:
        r["dataset_options"] = options
    return r


def test_how_to_read_says_which_split_and_labels_the_runs_used(tmp_path):
    records = [opt_rec(s, options={"split_by": "image"}) for s in ("ft", "lp")]
    records += [opt_rec(s, dataset="chexpert", options={"uncertain": "libauc"}) for s in ("ft",)]
    records += [opt_rec(s, dataset="bach") for s in ("ft", "lp")]
    summary = collect(records)
    assert summary.dataset_options == {  # val_fraction: the share carved into val
        "chexpert": {"uncertain": "libauc", "val_fraction": 0.1},
        "isic2020": {"split_by": "image", "val_fraction": 0.1},
        "bach": {"val_fraction": 0.1},
    }
    text = write_report(summary, tmp_path / "report").read_text()
    how = text[text.index("## How to read") : text.index("## chexpert")]
    assert "isic2020: split by image, as the paper did" in how
    assert "patient's images can fall in both training and test" in how
    assert "chexpert: uncertain labels mapped as LibAUC does" in how
    options = how[: how.index("Trained under, per dataset:")]
    assert "bach:" not in options.replace("(bach)", "")
    # A record written before records carried options reads as the default split.
    assert collect([opt_rec(s) for s in ("ft", "lp")]).dataset_options == {
        "isic2020": {"split_by": "patient", "val_fraction": 0.1}
    }


def test_one_dataset_split_two_ways_is_refused():
    records = [opt_rec("ft", options={"split_by": "image"}), opt_rec("lp")]
    with pytest.raises(results.RecordError, match=r"dataset_options.split_by.*separate"):
        collect(records)


def test_a_grid_takes_only_runs_of_its_split():
    grid = one_run_grid("isic2020", {"isic2020": {"split_by": "image"}})
    cfg = grid.config("isic2020", "resnet50", "ft", 1e-4, 0).to_dict()
    by_patient = opt_rec(config=cfg, options={"split_by": "patient"}, test=0.9)
    by_image = opt_rec(config=cfg, options={"split_by": "image"}, test=0.7)
    summary = collect([by_patient], grid=grid)
    assert summary.left_out == 1 and summary.cell("isic2020", "resnet50", "ft").status == "missing"
    summary = collect([by_image, by_patient], grid=grid)
    assert summary.left_out == 1
    assert summary.cell("isic2020", "resnet50", "ft").test["accuracy"][0] == pytest.approx(0.7)
    assert summary.dataset_options == {"isic2020": {"split_by": "image", "val_fraction": 0.1}}


def test_a_grid_takes_only_runs_of_its_val_fraction_and_latest_keeps_both():
    """A paper task's val fraction was recorded nowhere: a grid asking for 0.3 reported a
    run made at the default 0.1 as its finished cell, and --latest took the 0.3 run for a
    rerun of the 0.1 one on newer data (dropping it)."""
    from medft_jax.report.cells import drop_superseded

    grid = one_run_grid("chexpert", {"chexpert": {"val_fraction": 0.3}})
    cfg = grid.config("chexpert", "resnet50", "ft", 1e-4, 0).to_dict()
    default = opt_rec(dataset="chexpert", config=cfg, options={"uncertain": "ones"}, test=0.9)
    older = opt_rec(dataset="chexpert", config=cfg, test=0.8)  # before the field: 0.1
    carved = opt_rec(
        dataset="chexpert",
        config={**cfg, "data_fingerprint": "f" * 64},
        options={"uncertain": "ones", "val_fraction": 0.3},
        test=0.7,
    )
    assert collect([default, older], grid=grid).left_out == 2
    summary = collect([default, carved], grid=grid)
    assert summary.left_out == 1
    assert summary.cell("chexpert", "resnet50", "ft").test["accuracy"][0] == pytest.approx(0.7)
    default["finished_at"], carved["finished_at"] = "2026-12-01T00:00:00", "2026-12-02T00:00:00"
    kept, dropped = drop_superseded([default, carved])
    assert dropped == 0 and len(kept) == 2  # two splits, neither a rerun of the other


def test_a_folder_grid_takes_only_runs_read_with_its_layout_options():
    """A grid with test_fraction 0.3 reported a run made at the default (its record's
    data_source says how it was read) as "1 of 1 expected, complete"."""
    grid = one_run_grid("folder", {"folder": {"manual_dir": "/data/x", "test_fraction": 0.3}})
    cfg = grid.config("folder", "resnet50", "ft", 1e-4, 0).to_dict()

    def read_with(options):
        r = rec(dataset="folder", config=cfg, test=0.8)
        r["data_source"] = {"root": "/data/x", "options": options, "skip_bad_images": False}
        return r

    assert collect([read_with({})], grid=grid).left_out == 1
    assert collect([read_with({"test_fraction": 0.2})], grid=grid).left_out_why.startswith(
        f"1 of them of the grid's settings, e.g. {read_with({})['run']} read with other "
        "layout options than the grid's ("
    )
    summary = collect([read_with({"test_fraction": 0.3})], grid=grid)
    assert summary.left_out == 0 and summary.cell("folder", "resnet50", "ft").has_value
    older = rec(dataset="folder", config=cfg)  # no data_source: cannot say, kept
    assert collect([older], grid=grid).left_out == 0


def test_a_folder_grid_takes_only_runs_read_from_its_folder(tmp_path, monkeypatch):
    """Two grids of one user's two folders swept into one --out: both datasets are called
    ``folder``, and each grid's report took the other's runs as its own, then refused the
    mix ("holds runs on different images"). The grid's manual_dir (csv_file) decides."""
    mine, other = tmp_path / "fold1", tmp_path / "fold2"
    grid = one_run_grid("folder", {"folder": {"manual_dir": str(mine)}})
    cfg = grid.config("folder", "resnet50", "ft", 1e-4, 0).to_dict()

    def read_from(root, fingerprint, csv_file=None):
        r = rec(dataset="folder", config={**cfg, "data_fingerprint": fingerprint}, test=0.8)
        r["data_source"] = {"root": str(root), "options": {}, "skip_bad_images": False}
        if csv_file is not None:
            r["data_source"]["csv_file"] = str(csv_file)
        return r

    summary = collect([read_from(mine, "a" * 16), read_from(other, "b" * 16)], grid=grid)
    assert summary.left_out == 1 and summary.cell("folder", "resnet50", "ft").runs_done == 1
    # Said why: a folder moved since leaves the sweep taking them for done, the report not.
    moved = read_from(other, "b" * 16)
    assert summary.left_out_why == (
        f"1 of them of the grid's settings, e.g. {moved['run']} read from {other}, not the "
        f"grid's {mine} (a folder moved, or an option given since? the sweep takes them for "
        "done: point the grid at what they read, or rerun them with --force)"
    )
    # Relative, as the grid file may give it: read from where the command runs.
    monkeypatch.chdir(tmp_path)
    relative = one_run_grid("folder", {"folder": {"manual_dir": "fold1"}})
    assert collect([read_from(mine, "a" * 16)], grid=relative).left_out == 0
    # A csv grid: the labels file too.
    table = one_run_grid("csv", {"csv": {"manual_dir": str(mine), "csv_file": "labels.csv"}})
    cfg = table.config("csv", "resnet50", "ft", 1e-4, 0).to_dict()
    runs = [read_from(mine, "c" * 16, mine / name) for name in ("labels.csv", "old.csv")]
    for r in runs:
        r["config"] = {**cfg, "data_fingerprint": r["config"]["data_fingerprint"]}
    summary = collect(runs, grid=table)
    assert summary.left_out == 1
    assert f"read from {mine / 'old.csv'}, not the grid's {mine / 'labels.csv'} (a" in (
        summary.left_out_why
    )


def test_a_cell_failed_so_far_with_runs_to_come_is_not_a_lost_experiment():
    """LP's one run so far diverged, five are still to run: Table 12 must not count it
    lost, and the index calls it partial, not failed."""
    from medft_jax.report.write import status_counts

    records = [rec(strategy="ft", lr=lr, seed=s, test=0.8) for lr in (1e-3, 1e-4) for s in (0, 1)]
    records += [rec(strategy="lp", lr=1e-4, seed=0, test=0.9)]  # the seeds/LRs it will have
    early = collect(records[:4], [fail(strategy="lp", lr=1e-3, seed=0)])
    cell = early.cell("bach", "resnet50", "lp")
    assert cell.status == "failed" and (cell.runs_done, cell.runs_expected) == (1, 4)
    assert beats_ft(early, 0.1)[("lp", "resnet50")] == (0, 0)
    assert status_counts(early)["partial"] == 1 and status_counts(early)["failed"] == 0
    lost = collect(
        records[:4], [fail(strategy="lp", lr=lr, seed=s) for lr in (1e-3, 1e-4) for s in (0, 1)]
    )
    assert beats_ft(lost, 0.1)[("lp", "resnet50")] == (0, 1)
    assert status_counts(lost)["failed"] == 1


def test_equal_validation_sums_are_a_tie_and_go_to_the_smaller_lr():
    """Accuracies k/78 summing to 156 at both LRs: means 0.6666666666666666 and ...67."""
    small = [rec(lr=1e-4, seed=s, val=k / 78, test=0.71) for s, k in enumerate((40, 70, 46))]
    large = [rec(lr=1e-3, seed=s, val=k / 78, test=0.61) for s, k in enumerate((51, 50, 55))]
    cell = collect(small + large).cell("bach", "resnet50", "ft")
    assert cell.lr == 1e-4 and cell.test["accuracy"][0] == pytest.approx(0.71)


def test_a_metric_missing_from_one_seeds_record_is_kept_from_the_others():
    # An older record, written before the metric was: in neither its val nor its test.
    records = [rec(strategy="ft", seed=s, test=0.7 + 0.01 * s) for s in range(3)]
    del records[0]["test"]["kappa"], records[0]["val"]["kappa"]
    cell = collect(records).cell("bach", "resnet50", "ft")
    assert cell.n["kappa"] == 2
    assert cell.test["kappa"][0] == pytest.approx((0.71 + 0.72) / 2 / 2)


def test_table11_explains_the_marks_of_the_ft_cell_too():
    records = [rec(strategy="lp", seed=s, test=0.81) for s in range(3)]
    records += [rec(strategy="ft", seed=s, test=0.705) for s in range(2)]  # seed 2 missing
    md = to_markdown(table11(collect(records)))
    assert "| 81.00 (0.00) | 70.50 (0.00)† | +14.89 |" in md
    assert "†: a cell with runs missing" in md


def test_table11_says_a_best_chosen_while_other_cells_have_runs_missing():
    """With one cell not yet run, Table 11 named another "best" as over every arch and
    strategy, unmarked, its CSV row "complete"; Table 12's n shrank without a word."""
    records = [
        rec(arch=a, strategy=s, seed=seed, test=t + (0.01 if a == "vgg19" else 0))
        for a in ("resnet50", "vgg19")
        for s, t in (("ft", 0.7), ("lp", 0.75), ("lp_ft", 0.8))
        for seed in range(3)
        if (a, s) != ("vgg19", "lp_ft") and (a, s, seed) != ("resnet50", "lp", 2)
    ]
    summary = collect(records)
    md = to_markdown(table11(summary))
    assert (
        "| bach (2 other cells of 6 incomplete) | Acc. | ResNet-50 | LP-FT | 80.00 (0.00) |" in md
    )
    assert (
        "- bach: chosen while other cells have runs missing: LP, ResNet-50 (2 of 3 runs); "
        "LP-FT, VGG-19 (not run); the best may change once their runs are in."
    ) in md
    [row] = read_csv(to_csv(table11(summary)))
    assert (row["cells_incomplete"], row["cells_expected"]) == ("resnet50/lp vgg19/lp_ft", "6")
    assert "Not counted, no run yet: bach/vgg19/lp_ft." in table12(summary).notes
    # Every cell in: no count, no note.
    records += [rec(arch="vgg19", strategy="lp_ft", seed=k, test=0.81) for k in range(3)]
    records += [rec(strategy="lp", seed=2, test=0.75)]
    summary = collect(records)
    [row] = read_csv(to_csv(table11(summary)))
    assert row["cells_incomplete"] == "" and "| bach | Acc. |" in to_markdown(table11(summary))
    assert not any(n.startswith("Not counted, no run") for n in table12(summary).notes)


def test_datasets_that_would_share_a_file_name_are_refused(tmp_path):
    from medft_jax.report.write import ReportError

    records = [
        rec(dataset=d, strategy="ft", test=t) for d, t in (("my-data", 0.6), ("my_data", 0.9))
    ]
    with pytest.raises(ReportError, match=r"datasets 'my-data' and 'my_data' would share"):
        write_report(collect(records), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_index_states_what_each_dataset_was_trained_under(tmp_path):
    """Precision and frozen BatchNorm change the numbers: the report says which it holds."""
    records = [
        rec(
            dataset="bach",
            strategy=s,
            seed=seed,
            precision="bf16",
            frozen_bn=bn,
            test=0.5 + seed / 10,
        )
        for s, bn in (("ft", "update"), ("lp", "freeze"))  # FT runs as 'update' under freeze
        for seed in (0, 1)
    ] + [rec(dataset="t1w_mri", strategy="ft", seed=seed) for seed in (0, 1)]
    text = write_report(collect(records), tmp_path / "report").read_text()
    assert (
        "  - bach: 224 px, batch 64, at most 50 epochs (patience 5), bf16 compute, "
        "`frozen_bn=freeze`, from pretrained weights, numerics version 1.\n" in text
    )
    # A record written without the keys (older) reads as RunConfig's defaults.
    assert (
        "(patience 5), fp32 compute, `frozen_bn=update`, from pretrained"
        in (text.split("t1w\\_mri: ")[1])
    )
    # Random initialisation (--weights none, or auto offline) is said where it holds, and
    # a report whose datasets started apart is refused: Tables 11 and 12 span datasets.
    scratch = [rec(dataset="t1w_mri", seed=s, weights_fingerprint="none") for s in (0, 1)]
    text = write_report(collect(scratch), tmp_path / "scratch").read_text()
    assert "`frozen_bn=update`, from **random initialisation** (no pretrained weights" in text
    with pytest.raises(RecordError) as e:
        collect([*records[:4], *scratch])
    assert str(e.value) == (
        "datasets t1w_mri trained from random initialisation (weights_fingerprint none), bach "
        "from pretrained weights: Tables 11 and 12 would rank and count them together; report "
        "them from separate --runs folders"
    )


# --- ties up to float rounding, --only, partial notes ----------------------------------------


def _seeds(arch, strategy, correct, n=40):
    """Three seeds' records whose test accuracy is k/n correct answers each."""
    return [
        rec(arch=arch, strategy=strategy, seed=s, val=0.5, test=k / n)
        for s, k in enumerate(correct)
    ]


def test_table11_tie_up_to_rounding_goes_to_the_first_in_order_and_is_named():
    """LP ResNet-50 and G-LF DenseNet-121 both hold 81 of 120 answers right (67.50 %), but
    their float means are 0.6749999999999999 and 0.675: the pick was the last bit's."""
    records = _seeds("resnet50", "ft", (24, 24, 24)) + _seeds("densenet121", "ft", (26, 26, 26))
    records += _seeds("resnet50", "lp", (24, 24, 33)) + _seeds("densenet121", "g_lf", (24, 25, 32))
    summary = collect(records)
    (best,) = best_per_dataset(summary)
    assert (best.cell.arch, best.cell.strategy) == ("resnet50", "lp")  # LP before G-LF
    assert best.improvement == pytest.approx(100 * (0.675 - 0.6) / 0.6)  # 12.50, not 3.85
    md = to_markdown(table11(summary))
    assert "+12.50" in md
    assert "tied as shown with the best (LP, ResNet-50): G-LF, DenseNet-121 (+3.85 % over FT)" in md


def test_table11_tie_note_says_a_later_cell_is_named_for_its_mean_before_rounding():
    """LP and L2-SP both read 85.00, L2-SP 0.0009 points higher: Table 11 names L2-SP, and
    its note said "the first in the table's order is named" (LP is)."""
    from medft_jax.report.cells import summary_from_means

    means = {"ft": 0.80, "lp": 0.850040, "l2_sp": 0.850049}
    summary = summary_from_means(
        {("bach", "resnet50", s): {"top1_accuracy": (m, 0.01)} for s, m in means.items()}
    )
    assert best_per_dataset(summary)[0].cell.strategy == "l2_sp"
    assert table11(summary).notes[-1] == (
        "bach: tied as shown with the best (L2-SP, ResNet-50): LP, ResNet-50 (+6.25 % over "
        "FT); it is named for its higher mean before rounding (85.0049 against LP, "
        "ResNet-50's 85.0040)."
    )
    # G-LF of L2-SP's very mean, before it in the order: named over it by the order alone.
    means["g_lf"] = 0.850049
    summary = summary_from_means(
        {("bach", "resnet50", s): {"top1_accuracy": (m, 0.01)} for s, m in means.items()}
    )
    assert best_per_dataset(summary)[0].cell.strategy == "g_lf"
    note = table11(summary).notes[-1]
    assert note.endswith(
        "it is named for its higher mean before rounding (85.0049 against LP, ResNet-50's "
        "85.0040), and over L2-SP, ResNet-50, of the same mean, as the first in the table's "
        "order."
    )


def test_table11_tie_note_writes_a_gain_that_rounds_to_zero_as_plus_zero():
    """LP at 80.000 % beside FT's 80.001 % (equal as shown): the note read "-0.00 % over FT"."""
    records = [rec(strategy="ft", seed=k, test=0.80001) for k in range(3)]
    records += [rec(strategy="lp", seed=k, test=0.80000) for k in range(3)]
    md = to_markdown(table11(collect(records)))
    assert "LP, ResNet-50 (+0.00 % over FT)" in md and "-0.00" not in md


def test_table12_an_equal_mean_or_an_exact_threshold_gain_does_not_beat_ft():
    """Equal totals of correct answers are no gain (was 1.6e-14 %, a win at threshold 0),
    and a gain of exactly the threshold is not more than it (0.10000000000000131 %)."""
    equal = _seeds("resnet50", "ft", (24, 24, 33)) + _seeds("resnet50", "lp", (24, 25, 32))
    summary = collect(equal)
    assert beats_ft(summary, 0.0) == {("lp", "resnet50"): (0, 1)}
    best = best_per_dataset(summary)[0]
    assert best.improvement == 0.0
    # 17,000 vs 17,017 right of 3 x 6,541 ISIC test images: exactly +0.1 %.
    n = 6541
    exact = [
        rec(dataset="isic2020", strategy="ft", seed=s, test=k / n)
        for s, k in enumerate((5667, 5667, 5666))
    ]
    exact += [
        rec(dataset="isic2020", strategy="lp", seed=s, test=k / n)
        for s, k in enumerate((5673, 5672, 5672))
    ]
    summary = collect(exact)
    assert beats_ft(summary, 0.1) == {("lp", "resnet50"): (0, 1)}
    assert beats_ft(summary, 0.099) == {("lp", "resnet50"): (1, 1)}


def test_only_keeps_what_the_whole_folder_expects_of_the_cells_it_shows():
    """LP has seeds 0 and 1 at both LRs, FT all three: shown alone, LP is still 4 of 6."""
    records = [rec(strategy="ft", lr=lr, seed=s) for lr in (1e-4, 1e-3) for s in (0, 1, 2)]
    records += [rec(strategy="lp", lr=lr, seed=s) for lr in (1e-4, 1e-3) for s in (0, 1)]
    for only in ({"strategy": ["lp"]}, {"strategy": ["lp"], "epochs": ["50"]}):
        lp = collect(records, filters=only).cell("bach", "resnet50", "lp")
        assert lp.status == "partial" and (lp.runs_done, lp.runs_expected) == (4, 6)
    summary = collect(records, filters={"strategy": ["lp"], "seed": ["0", "1"]})
    lp = summary.cell("bach", "resnet50", "lp")
    assert lp.status == "complete" and lp.runs_expected == 4
    assert summary.strategies == ("lp",)


def test_a_report_of_one_lr_under_only_does_not_call_it_chosen_on_validation():
    """``--only lr=0.001``: every table still said "at the LR chosen on validation" over
    lr 0.001's values (92 % where validation chose lr 1e-4's 62 %); only index.md named the
    filter."""
    from medft_jax.grid import parse_only
    from medft_jax.report.paper import load_paper
    from medft_jax.report.tables import all_tables, vs_paper_table

    records = [rec(strategy="ft", lr=1e-4, seed=s, val=0.7, test=0.62) for s in range(3)]
    records += [rec(strategy="ft", lr=1e-3, seed=s, val=0.6, test=0.92) for s in range(3)]
    chosen = collect(records)
    md = to_markdown(dataset_table(chosen, "bach"))
    assert "at the LR chosen on validation**" in md and "62.00" in md
    assert "LR chosen by the mean validation Acc." in md and "--only" not in md
    fixed = collect(records, filters=parse_only(["lr=0.001"]))
    tables = all_tables(fixed)
    md = to_markdown(tables[0])
    assert "92.00" in md and "62.00" not in md
    assert "at LR 0.001 (--only lr=0.001; not chosen on validation)**" in md
    assert "LR 0.001, the one --only keeps (the others under --runs are not compared)." in md
    assert "device-seconds of one run at LR 0.001 (--only) (mean" in md and "chosen LR" not in md
    cost = to_markdown(tables[1])
    assert "mean over the seeds of LR 0.001 (--only);" in cost and "chosen LR" not in cost
    paired = to_markdown(tables[2])  # its twin: the paired Δ's sides
    assert "(both at LR 0.001 (--only))" in paired and "chosen LR" not in paired
    assert "chosen on validation," not in md and "LR chosen by" not in md
    note = "Only the runs --only keeps (lr = 0.001); the others under --runs count nowhere here."
    assert [t.notes[-1] for t in tables] == [note] * len(tables)  # Table 11 and 12 too
    assert (
        "Ours: the test mean (SE) over seeds at LR 0.001 (--only lr=0.001; not chosen"
        in (vs_paper_table(fixed, "bach", [], load_paper()).notes[0])
    )
    among = collect(records, filters=parse_only(["lr=0.001|0.0001"]))
    assert "at the LR chosen on validation among 0.0001, 0.001 (--only)**" in to_markdown(
        dataset_table(among, "bach")
    )
    assert all(t.notes[-1] != note for t in all_tables(chosen))


def test_a_partial_cells_note_says_whether_its_value_lacks_a_seed():
    records = [rec(strategy="ft", lr=lr, seed=s) for lr in (1e-4, 1e-3) for s in (0, 1, 2)]
    records += [rec(strategy="lp", lr=1e-3, seed=s, val=0.9) for s in (0, 1)]  # chosen LR
    records += [rec(strategy="lp", lr=1e-4, seed=s) for s in (0, 1, 2)]
    records += [rec(strategy="lp_ft", lr=1e-3, seed=s, val=0.9) for s in (0, 1, 2)]
    records += [rec(strategy="lp_ft", lr=1e-4, seed=s) for s in (0, 1)]
    md = to_markdown(dataset_table(collect(records), "bach"))
    assert "LP, ResNet-50: 5 of 6 runs; the value is over 2 of 3 seeds at lr 0.001" in md
    assert "LP-FT, ResNet-50: 5 of 6 runs; the value has every seed of lr 0.001" in md


def test_table12_names_the_dataset_and_arch_it_cannot_count_for_want_of_ft():
    records = [rec(strategy="ft", test=0.8), rec(strategy="lp", test=0.9)]
    records += [rec(arch="densenet121", strategy="lp", lr=lr, test=0.9) for lr in (1e-3, 1e-4)]
    failures = [fail(arch="densenet121", strategy="ft", lr=lr) for lr in (1e-3, 1e-4)]
    summary = collect(records, failures)
    assert beats_ft(summary, 0.1)[("lp", "densenet121")] == (0, 0)
    md = to_markdown(table12(summary, 0.1))
    assert (
        "Not counted, FT having no value to compare with there: bach/densenet121 (diverged)" in md
    )
    assert "bach/resnet50" not in md.split("Not counted")[1]


def test_a_ft_mean_of_zero_is_named_not_counted_and_a_negative_one_keeps_the_gains_sign():
    """FT's mean 0 leaves no relative improvement: Table 12 showed "—" (documented as "no
    run") and Table 11 "—" without a word; --beat-points counts it. A negative FT mean (a
    κ counted by a caller's choice) divided a gain into a loss."""
    from medft_jax.report.cells import relative_improvement
    from medft_jax.report.tables import table11

    records = [rec(strategy="ft", seed=k, test=0.0) for k in range(3)]
    records += [rec(strategy="lp", seed=k, test=0.5) for k in range(3)]
    summary = collect(records)
    assert beats_ft(summary, 0.1)[("lp", "resnet50")] == (0, 0)
    assert beats_ft(summary, 0.1, points=True)[("lp", "resnet50")] == (1, 1)
    md = to_markdown(table12(summary, 0.1))
    assert (
        "Not counted, FT having no value to compare with there: bach/resnet50 (its mean "
        "Acc. is 0, so no relative improvement; --beat-points counts it)" in md
    )
    assert "Not counted" not in to_markdown(table12(summary, 0.1, points=True))
    assert "bach: FT's mean is 0, so the improvement relative to it is undefined (—)." in (
        table11(summary).notes
    )
    # κs of seeds summing to 0 average to about 1e-17, not 0: the same, not a 10^18 % gain.
    near = [rec(strategy="ft", seed=k, test=0.5, test2=v) for k, v in enumerate((0.1, 0.2, -0.3))]
    near += [rec(strategy="lp", seed=k, test=0.5, test2=0.1) for k in range(3)]
    assert math.isnan(relative_improvement(collect(near), "bach", "resnet50", "lp", "kappa"))
    negative = [rec(strategy="ft", seed=k, test=0.5, test2=-0.2) for k in range(3)]
    negative += [rec(strategy="lp", seed=k, test=0.5, test2=0.1) for k in range(3)]
    gain = relative_improvement(collect(negative), "bach", "resnet50", "lp", "kappa")
    assert gain == pytest.approx(150.0)  # (0.1 − (−0.2)) / 0.2, not −150


def test_ft_left_out_by_only_is_said_so_not_called_not_run():
    """``--only strategy=lp`` over a folder holding FT: Table 12 and the paired notes said
    FT was "not run" there."""
    from medft_jax.report.cells import no_baseline

    records = [rec(strategy="ft", test=0.8), rec(strategy="lp", test=0.9)]
    summary = collect(records, filters={"strategy": ["lp"]})
    md = to_markdown(table12(summary, 0.1))
    assert (
        "Not counted, FT having no value to compare with there: bach/resnet50 "
        "(not shown under --only)" in md
    )
    assert "(not run)" not in md
    assert no_baseline(summary, "bach") == (
        "no FT value for bach to compare with (--only shows no FT): add strategy=ft"
    )
    assert no_baseline(collect(records[1:]), "bach").endswith(
        "(it was not run): run --strategy ft too"
    )


def test_runs_on_an_unofficial_medmnist_file_are_said_so_under_the_table():
    """A note on stderr, once per process, was all that said a MedMNIST table was computed
    on an edited or swapped copy of the published file."""
    records = [rec(dataset="medmnist/breastmnist", strategy=s) for s in ("ft", "lp")]
    md = to_markdown(dataset_table(collect(records), "medmnist/breastmnist"))
    assert "Not MedMNIST's published file" not in md
    records[1]["medmnist_file"] = {"md5": "098de56c", "official": False}
    md = to_markdown(dataset_table(collect(records), "medmnist/breastmnist"))
    assert "Not MedMNIST's published file: runs read a .npz of MD5 098de56c, another" in md


def test_a_medmnist_record_says_whether_its_file_is_the_published_one():
    import types

    from medft_jax import fit

    source = {"md5": "750601b1", "official": True, "sha256": "x"}
    ds = types.SimpleNamespace(name="medmnist/breastmnist@64", metadata={"source": source})
    assert fit._medmnist_file(ds) == {"medmnist_file": {"md5": "750601b1", "official": True}}
    ds = types.SimpleNamespace(name="folder", metadata={"source": source})
    assert fit._medmnist_file(ds) == {}


def test_a_study_scored_task_says_how_many_studies_its_metrics_are_over(tmp_path, capsys):
    """MURA printed ``test 41`` images beside an accuracy of 17 of 21 studies."""
    import types

    from experiments import run as run_cli
    from medft_jax import fit

    groups = {"val": ["a", "a", "b"], "test": ["c", "c", "d", "e"]}
    ds = types.SimpleNamespace(
        eval_grouping="study", split=lambda s: types.SimpleNamespace(groups=groups[s])
    )
    units = fit._scored_units(ds)
    assert units == {"scored_units": {"unit": "study", "val": 2, "test": 3}}
    assert fit._scored_units(types.SimpleNamespace(eval_grouping="image")) == {}
    record = {**rec(dataset="mura_wrist"), "best_epoch": 0, **units}
    record["split_sizes"] = {"train": 9, "val": 3, "test": 4}
    run_cli._print_summary([record], str(tmp_path), [])
    assert (
        "images: train 9, val 3, test 4 (metrics per study: val 2, test 3)"
        in capsys.readouterr().out
    )


# --- against the paper (--vs-paper) ----------------------------------------------------------

PAPER_HEADER = "table,dataset,strategy,arch,metric,mean,se\n"


def _paper_csv(folder: Path, rows: str, header: str = PAPER_HEADER) -> Path:
    path = folder / "paper.csv"
    path.write_text(header + rows, encoding="utf-8")
    return path


def _vs_paper_report(tmp_path, records, rows):
    runs, out = tmp_path / "runs", tmp_path / "out"
    _write_runs(runs, records)
    paper = _paper_csv(tmp_path, rows)
    assert cli.main(["--runs", str(runs), "--out", str(out), "--vs-paper", str(paper)]) == 0
    return out


def test_a_published_se_of_zero_is_read_as_half_its_last_printed_digit(tmp_path):
    """A user's CSV with two decimals: an SE printed 0.00 is under 0.005, and read as the
    bundled table's 0.05 it understated z tenfold."""
    from medft_jax.report.paper import compare, load_paper

    records = [rec(dataset="mura_wrist", seed=k, test=0.70 + 0.02 * k) for k in range(3)]
    for printed, bound in (("0.0", 0.05), ("0.00", 0.005), ("0", 0.5)):
        paper = load_paper(
            _paper_csv(tmp_path, f"5,mura_wrist,ft,resnet50,accuracy,69.0,{printed}\n")
        )
        (cell,) = [c for c in compare(collect(records), paper) if c.metric == "accuracy"]
        se_ours = 100 * 0.02 / math.sqrt(3)
        assert cell.z == pytest.approx(3.0 / math.hypot(se_ours, bound))


def test_vs_paper_difference_and_z_of_a_cell_against_a_hand_computation(tmp_path):
    """Ours: accuracy 70, 72, 74 % (mean 72, SE 2/√3 = 1.1547), κ half of it (mean 36);
    the paper: accuracy 69.0 (0.5), κ 30.0 without an SE, and a cell we did not run."""
    records = [rec(dataset="mura_wrist", seed=k, test=0.70 + 0.02 * k) for k in range(3)]
    rows = (
        "5,mura_wrist,ft,resnet50,accuracy,69.0,0.5\n"
        "5,mura_wrist,ft,resnet50,kappa,30.0,\n"
        "5,mura_wrist,lp,resnet50,accuracy,75.0,1.0\n"
    )
    out = _vs_paper_report(tmp_path, records, rows)
    lines = read_csv((out / "tables" / "vs_paper_mura_wrist.csv").read_text())
    assert [(r["strategy"], r["arch"], r["metric"]) for r in lines] == [
        ("ft", "resnet50", "accuracy"),
        ("ft", "resnet50", "kappa"),
    ]
    acc, kappa = lines
    se_ours = 2 / math.sqrt(3)  # points
    assert float(acc["mean"]) == pytest.approx(0.72) and acc["n"] == "3"
    assert float(acc["se"]) == pytest.approx(se_ours / 100)
    assert (float(acc["paper_mean_pct"]), float(acc["paper_se_pct"])) == (69.0, 0.5)
    assert float(acc["diff_pp"]) == pytest.approx(3.0)
    z = 3.0 / math.sqrt(se_ours**2 + 0.55**2)  # 0.5 printed, cut off: 0.5-0.6, read 0.55
    assert z == pytest.approx(2.346, abs=1e-3)
    assert float(acc["z"]) == pytest.approx(z) and acc["flagged"] == "True"
    assert float(kappa["diff_pp"]) == pytest.approx(6.0)
    assert (kappa["paper_se_pct"], kappa["z"], kappa["flagged"]) == ("", "", "")  # untested
    md = (out / "tables" / "vs_paper_mura_wrist.md").read_text()
    # The paper's as printed: a published 69.0 (0.5) read 69.00 (0.50).
    assert "| 72.00 (1.15) | 69.0 (0.5) | +3.00 | **+2.35 !** |" in md
    assert "| 36.00 (0.58) | 30.0 (–) | +6.00 | n/a |" in md
    index = (out / "index.md").read_text()
    assert "- mura\\_wrist: 2 cells compared, mean |diff| 4.50 pp, 1 with |z| > 2" in index
    assert "- Paper cells without a run: 1 " in index
    assert "- Our cells the paper does not have: 0." in index


def test_a_vs_paper_table_says_the_options_a_strategy_ran_with_unlike_the_papers(tmp_path):
    """L2-SP at the toolkit's default (sp_half = True: half the paper's eq. 3 gradient) was
    set beside the paper's L2-SP with no word in the table (the index alone said it): a
    table pasted into a paper could not tell."""
    from medft_jax.report.paper import compare, load_paper
    from medft_jax.report.tables import vs_paper_table
    from medft_jax.report.write import paper_lines

    records = [
        rec(dataset="mura_wrist", strategy=s, lr=lr, seed=k, test=0.70 + 0.02 * k)
        for s in ("ft", "l2_sp", "lp_ft")
        for lr in (1e-3, 1e-4, 1e-5)
        for k in range(3)
    ]
    for r in records:
        if r["config"]["strategy"] == "lp_ft":
            r["config"]["strategy_options"] = {"lp_epochs": 5}  # the paper's
    summary = collect(records)
    paper = load_paper(_paper_csv(tmp_path, "".join(
        f"5,mura_wrist,{s},resnet50,accuracy,69.0,0.5\n" for s in ("ft", "l2_sp", "lp_ft")
    )))  # fmt: skip
    notes = vs_paper_table(summary, "mura_wrist", compare(summary, paper), paper).notes
    assert [n for n in notes if n.startswith("Not the paper's")] == [
        "Not the paper's options: L2-SP ran with sp_half = True (the paper's: sp_half = False)."
    ]
    for r in records:
        if r["config"]["strategy"] == "l2_sp":
            r["config"]["strategy_options"] = {"sp_half": False}
    summary = collect(records)
    notes = vs_paper_table(summary, "mura_wrist", compare(summary, paper), paper).notes
    assert not [n for n in notes if n.startswith("Not the paper's")]
    # Runs of another protocol (a quick grid's): every |z| > 2 read as the strategies'.
    for r in records:
        r["config"].update(image_size=32, epochs=2, weights="none", precision="bf16")
    summary = collect(records)
    notes = vs_paper_table(summary, "mura_wrist", compare(summary, paper), paper).notes
    said = (
        "Not the paper's protocol: 32 px (the paper's 224 px), at most 2 epochs (the paper's "
        "at most 50 epochs), bf16 compute (the paper's fp32 compute), random weights (the "
        "paper's pretrained weights); a difference may be its."
    )
    assert [n for n in notes if n.startswith("Not the paper's")] == [said]
    assert f"  {said}" in paper_lines(summary, paper)
    # CheXpert's uncertain labels counted positive (U-Ones), the paper's mapped as LibAUC
    # does: other test labels, which the table's note left unsaid; one epoch, not "1 epochs".
    records = [
        rec(dataset="chexpert", strategy=s, seed=0, test=0.70) for s in ("ft", "lp")
    ]  # one LR and one seed: the paper's SEs are over 3 seeds, its choice among 3 LRs
    for r in records:
        # The paper gives no val share: another than the toolkit's 0.1 is no departure.
        r["dataset_options"] = {"uncertain": "ones", "val_fraction": 0.2}
        r["config"].update(epochs=1)
    summary = collect(records)
    paper = load_paper(_paper_csv(tmp_path, "".join(
        f"3,chexpert,{s},resnet50,{m},69.0,0.5\n" for s in ("ft", "lp") for m in ("map", "auroc")
    )))  # fmt: skip
    notes = vs_paper_table(summary, "chexpert", compare(summary, paper), paper).notes
    said = (
        "Not the paper's protocol: at most 1 epoch (the paper's at most 50 epochs), "
        "LRs 0.0001 (the paper's LRs 0.001, 0.0001, 1e-05), 1 seed (the paper's 3 seeds), "
        "uncertain = ones (the paper's libauc); a difference may be its."
    )
    assert [n for n in notes if n.startswith("Not the paper's")] == [said]
    assert f"  {said}" in paper_lines(summary, paper)


def test_a_vs_paper_table_counts_the_papers_cells_it_has_no_row_for(tmp_path):
    """A vs_paper table dropped the paper's cells without a value of ours (not run,
    diverged) with no word, and one without any row was a header alone: it read as the
    whole comparison. Its note counts them by what the dataset's table shows."""
    from medft_jax.report.paper import compare, load_paper
    from medft_jax.report.tables import vs_paper_table

    rows = "".join(
        f"5,mura_wrist,{s},resnet50,{m},70.0,1.0\n"
        for s in ("ft", "lp", "g_lf")
        for m in ("accuracy", "kappa")
    )
    paper = load_paper(_paper_csv(tmp_path, rows))
    records = [rec(dataset="mura_wrist", strategy="ft", seed=k, test=0.7) for k in range(3)]
    failures = [fail(dataset="mura_wrist", strategy="lp", lr=1e-4, seed=k) for k in range(3)]
    summary = collect(records, failures)
    table = vs_paper_table(summary, "mura_wrist", compare(summary, paper), paper)
    assert len(table.rows) == 2  # FT's accuracy and κ
    assert table.notes[-1] == (
        "Not in this table: 4 of the paper's 6 cells (strategy × arch × metric) of "
        "mura_wrist, without a value of ours: 2 diverged, 2 not run here (as the dataset's "
        "table shows them)."
    )
    summary = collect([], failures)  # no row at all: the note says why
    table = vs_paper_table(summary, "mura_wrist", compare(summary, paper), paper)
    assert not table.rows and "4 not run here" in table.notes[-1]
    assert "6 of the paper's 6 cells" in table.notes[-1]
    full = collect([rec(dataset="mura_wrist", strategy=s, seed=0) for s in ("ft", "lp", "g_lf")])
    notes = vs_paper_table(full, "mura_wrist", compare(full, paper), paper).notes
    assert len(notes) == 2 and notes[1].startswith("Not the paper's protocol: LRs 0.0001")
    # Run, but left out by --only: said as such, not "not run here".
    runs = [rec(dataset="mura_wrist", strategy=s, seed=0) for s in ("ft", "lp", "g_lf")]
    only = collect(runs, filters={"strategy": {"ft"}})
    note = vs_paper_table(only, "mura_wrist", compare(only, paper), paper).notes[-1]
    assert "without a value of ours: 4 left out by --only (as" in note
    # --only lr=: a cell whose runs are all at another LR has none left: it may have run.
    at = [rec(dataset="mura_wrist", strategy="ft", lr=1e-4, seed=0)]
    at += [rec(dataset="mura_wrist", strategy="lp", lr=1e-3, seed=0)]
    lr_only = collect(at, filters={"lr": {"0.0001"}})
    note = vs_paper_table(lr_only, "mura_wrist", compare(lr_only, paper), paper).notes[-1]
    assert "without a value of ours: 4 not run here or left out by --only (as" in note
    table = dataset_table(lr_only, "mura_wrist")
    assert any(n.startswith("—: not run yet or left out by --only (in Cost") for n in table.notes)


def test_vs_paper_index_counts_mean_diff_and_spearman_of_a_hand_made_ranking(tmp_path, capsys):
    """Single seeds (z n/a). Accuracy, ours: FT 80, LP 70, G-LF 85, G-FL 75 (ranks 3 1 4 2);
    the paper's: 80, 72, 78, 70 (ranks 4 2 3 1): Σd² = 4, ρ = 1 − 6·4/(4·15) = 0.6.
    |diff|: 0, 2, 7, 5 → mean 3.5. Our four κ cells are not in the paper; its BACH cell
    and its VGG-19 cell are not ours."""
    ours = {"ft": 0.80, "lp": 0.70, "g_lf": 0.85, "g_fl": 0.75}
    paper = {"ft": 80, "lp": 72, "g_lf": 78, "g_fl": 70}
    records = [rec(dataset="mura_wrist", strategy=s, test=v) for s, v in ours.items()]
    rows = "".join(f"5,mura_wrist,{s},resnet50,accuracy,{v},1.0\n" for s, v in paper.items())
    rows += "5,mura_wrist,ft,vgg19,accuracy,77.0,1.0\n8,bach,ft,resnet50,accuracy,70.0,1.0\n"
    out = _vs_paper_report(tmp_path, records, rows)
    index = (out / "index.md").read_text()
    assert (
        "- mura\\_wrist: 4 cells compared, mean |diff| 3.50 pp, 0 with |z| > 2; ranking by "
        "Acc., ρ: ResNet-50 +0.60 (4 strategies) ([table](tables/vs_paper_mura_wrist.md))."
    ) in index
    assert "- Paper cells without a run: 2 " in index
    assert "- Our cells the paper does not have: 4." in index
    assert "## Against the paper" in index and "### mura\\_wrist: ours against" in index
    assert not (out / "tables" / "vs_paper_bach.csv").exists()  # a dataset we did not run
    assert "nothing to compare" not in index
    # None of the paper's datasets: said, not an empty section of counts.
    records = [rec(dataset="folder", strategy=s, test=v) for s, v in ours.items()]
    capsys.readouterr()
    index = (_vs_paper_report(tmp_path / "own", records, rows) / "index.md").read_text()
    assert (
        "- None of this report's datasets (folder) is in the published tables: nothing to compare."
    ) in index
    # On the terminal too: a comparison asked for that compared nothing exited 0 unsaid.
    assert capsys.readouterr().err == (
        "note: --vs-paper: none of these datasets (folder) is in the published tables "
        "(mura_wrist, bach): nothing compared\n"
    )
    lines = read_csv((out / "tables" / "vs_paper_mura_wrist.csv").read_text())
    assert [float(r["diff_pp"]) for r in lines] == pytest.approx([0.0, -2.0, 7.0, 5.0])
    # LaTeX's text-mode hyphen is no minus: -2.00 beside +7.00 printed with a short dash.
    tex = (out / "tables" / "vs_paper_mura_wrist.tex").read_text()
    assert "& $-$2.00 &" in tex and "& +7.00 &" in tex and "& -2" not in tex
    assert all(r["z"] == "" and r["flagged"] == "" for r in lines)


def test_vs_paper_z_where_an_se_is_zero_and_a_zero_difference_reads_plus():
    """A published SE printed 0.0 left a 10-point difference without a z and unflagged
    (21 of the paper's 384 cells); ours 0 (every seed alike) likewise. A difference of
    -7e-15 read -0.00 beside identical rows' +0.00."""
    from medft_jax.report.paper import z_score
    from medft_jax.report.tables import _signed

    assert z_score(0.8772 + 0.10, 0.005, 3, 87.72, 0.0) == pytest.approx(10 / math.hypot(0.5, 0.05))
    assert z_score(0.75, 0.0, 3, 70.0, 1.0) == pytest.approx(5.0 / 1.05)  # 1.0 cut off
    assert z_score(0.75, 0.0, 1, 70.0, 1.0) is None and z_score(0.75, 0.01, 3, 70.0, None) is None
    assert (_signed(-7e-15), _signed(-0.004), _signed(1.256)) == ("+0.00", "+0.00", "+1.26")


def test_spearman_ties_and_too_few():
    from medft_jax.report.paper import spearman

    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ties share their mean rank: (1.5, 1.5, 3) against (1, 2, 3): ρ = 0.866.
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None
    # Means equal up to float rounding (equal totals of correct answers over 3 seeds of 24
    # images: 0.06944444444444445 and …443) are a tie, as in every table: ranked by their
    # last bit they gave a ρ, not n/a.
    a, b = (0 + 0 + 5 / 24) / 3, (0 + 1 / 24 + 4 / 24) / 3
    assert a != b and math.isclose(a, b, rel_tol=1e-12)
    assert spearman([100 * a, 100 * b, 100 * a], [70.0, 71.0, 72.0]) is None
    assert spearman([100 * a, 100 * b, 1.0], [70.0, 71.0, 72.0]) == pytest.approx(
        stats.spearmanr([2, 2, 1], [1, 2, 3]).statistic
    )


@pytest.mark.parametrize(
    ("rows", "header", "line", "why"),
    [
        ("5,mura_wrist,ft,resnet50,accuracy,70\n", "table,dataset,strategy,arch,metric,mean\n",
         1, "missing column(s) se"),
        ("5,mura_wrist,ft,resnet50,accuracy,seventy,1\n", PAPER_HEADER, 2,
         "mean 'seventy' is not a number"),
        ("5,mura_wrist,ft,resnet50,accuracy,70,1\n5,mura_wrist,ft,resnet50,kappa,nan,1\n",
         PAPER_HEADER, 3, "mean 'nan' is not a number"),
        # float() took them, the table then showed them as typed beside 62.5
        ("5,mura_wrist,ft,resnet50,accuracy,6_2.5,1\n", PAPER_HEADER, 2,
         "mean '6_2.5' is not a number as a table prints it (percent)"),
        ("5,mura_wrist,ft,resnet50,accuracy,62.5,1e0\n", PAPER_HEADER, 2,
         "se '1e0' is not a number as a table prints it (percent)"),
        ("5,mura_wrist,ft,resnet50,accuracy,７０.5,1\n", PAPER_HEADER, 2,
         "mean '７０.5' is not a number as a table prints it (percent)"),
        ("5,mura_wrist,ft,resnet50,accuracy,70,1\n5,mura_wrist,ft,resnet50,accuracy,71,1\n",
         PAPER_HEADER, 3, "mura_wrist ft resnet50 accuracy is given twice (first on line 2)"),
        ("8,bach,ft,resnet50,accuracy,70,1\n8,bach,ft,resnet50,top1_accuracy,70,1\n",
         PAPER_HEADER, 3, "bach ft resnet50 top1_accuracy is given twice (first on line 2)"),
        ("5,mura_elbow,ft,resnet50,accuracy,70,1\n", PAPER_HEADER, 2,
         "unknown dataset 'mura_elbow'"),
        ("5,mura_wrist,ft2,resnet50,accuracy,70,1\n", PAPER_HEADER, 2,
         "unknown strategy 'ft2'"),
        ("5,mura_wrist,ft,resnet-50,accuracy,70,1\n", PAPER_HEADER, 2,
         "unknown arch 'resnet-50'"),
        ("5,mura_wrist,ft,resnet50,auroc,70,1\n", PAPER_HEADER, 2,
         "unknown metric 'auroc' for mura_wrist"),
        ("5,mura_wrist,ft,resnet50,accuracy,70,-1\n", PAPER_HEADER, 2, "se '-1' is negative"),
        ("5,mura_wrist,ft,resnet50,accuracy,70,-0.0\n", PAPER_HEADER, 2, "se '-0.0' is negative"),
        ("5,mura_wrist,ft,resnet50,accuracy,70,99999\n", PAPER_HEADER, 2,
         "se '99999' is above 50, the most the SE of means within [0, 100] can be"),
        ("5,mura_wrist,ft,resnet50,accuracy,250,1\n", PAPER_HEADER, 2,
         "mean '250' is outside [0, 100] (percent, accuracy)"),
        ("5,mura_wrist,ft,resnet50,accuracy,-0.5,1\n", PAPER_HEADER, 2,
         "mean '-0.5' is outside [0, 100] (percent, accuracy)"),
        ("5,mura_wrist,ft,resnet50,kappa,-101,1\n", PAPER_HEADER, 2,
         "mean '-101' is outside [-100, 100] (percent, kappa)"),
        ("", PAPER_HEADER, 1, "a header and no rows; expected one published cell per line"),
        # Accepted before: a row of another table, a CSV typed in fractions (all flagged).
        ("3,mura_wrist,ft,resnet50,accuracy,70,1\n", PAPER_HEADER, 2,
         "table '3' for mura_wrist; the paper's table of mura_wrist is 5"),
        ("5,mura_wrist,ft,resnet50,accuracy,0.70,0.01\n5,mura_wrist,ft,resnet50,kappa,0.4,0\n",
         PAPER_HEADER, 2, "every mean (κ aside) is at most 1: they look like fractions"),
        ("5,mura_wrist,ft,resnet50,kappa,0.61,0.02\n5,mura_wrist,lp,resnet50,kappa,-0.1,0\n",
         PAPER_HEADER, 2, "every κ is within [-1, 1]: they look like fractions"),
        # Part of the file in fractions: accepted, and every such row flagged (z = +2600).
        ("5,mura_wrist,ft,resnet50,accuracy,81,1\n6,mura_humerus,ft,resnet50,kappa,60,2\n"
         "5,mura_wrist,lp,resnet50,kappa,0.6,0.02\n5,mura_wrist,g_lf,resnet50,kappa,0.5,0\n",
         PAPER_HEADER, 4, "every κ of mura_wrist is within [-1, 1] where the other metrics are "
         "in percent: they look like fractions"),
        ("5,mura_wrist,ft,resnet50,accuracy,81,1\n6,mura_humerus,ft,resnet50,accuracy,0.81,0\n",
         PAPER_HEADER, 3, "mura_humerus ft accuracy mean 0.81 is at most 1 where other means "
         "are in percent: it looks like a fraction"),
    ],
)  # fmt: skip
def test_a_bad_paper_csv_is_one_error_line_naming_file_and_line(
    tmp_path, capsys, rows, header, line, why
):
    runs, out = tmp_path / "runs", tmp_path / "out"
    _write_runs(runs, [rec(dataset="mura_wrist")])
    paper = _paper_csv(tmp_path, rows, header)
    assert cli.main(["--runs", str(runs), "--out", str(out), "--vs-paper", str(paper)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --vs-paper {paper} line {line}: {why}")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["paper.csv", "runs"]  # no temporary


def test_a_paper_csv_may_write_its_table_number_and_small_kappas_as_it_likes():
    """ "05", "5.0" and "Table 5" were refused as another table; a CSV whose only cells are
    κ near 0 (in percent) was refused as fractions."""
    from medft_jax.report.paper import parse_paper

    for table in ("5", "05", "5.0", "Table 5", "table 5", ""):
        text = PAPER_HEADER + f"{table},mura_wrist,ft,resnet50,accuracy,70,1\n"
        assert parse_paper(text, "p.csv").values[("mura_wrist", "resnet50", "ft", "accuracy")]
    kappas = PAPER_HEADER + "5,mura_wrist,ft,resnet50,kappa,0.8,0.1\n"
    assert parse_paper(kappas, "p.csv").values
    kappas += "5,mura_wrist,lp,resnet50,kappa,0,0\n5,mura_wrist,g_lf,resnet50,kappa,1.5,1\n"
    assert len(parse_paper(kappas, "p.csv").values) == 3  # one beyond 1: percent


def test_a_paper_csv_may_name_cells_as_the_paper_prints_them():
    """``LP-FT``, ``ResNet-50``, ``Accuracy``, ``BACH``: one transcribing the tables types
    the paper's labels, which were refused with the ids listed and no hint."""
    from medft_jax.report.paper import PaperTablesError, parse_paper

    ids = "8,bach,lp_ft,resnet50,accuracy,70,1\n8,bach,g_lf,densenet121,kappa,50,2\n"
    labels = "8,BACH,LP-FT,ResNet-50,Accuracy,70,1\n8,Bach,G-LF,DenseNet-121,Kappa,50,2\n"
    want = parse_paper(PAPER_HEADER + ids, "p.csv").values
    got = parse_paper(PAPER_HEADER + labels, "p.csv").values
    assert (
        list(got)
        == list(want)
        == [
            ("bach", "resnet50", "lp_ft", "top1_accuracy"),
            ("bach", "densenet121", "g_lf", "kappa"),
        ]
    )
    assert [(v.mean, v.se) for v in got.values()] == [(v.mean, v.se) for v in want.values()]
    with pytest.raises(PaperTablesError) as err:
        parse_paper(PAPER_HEADER + "8,bach,LPFT,resnet50,accuracy,70,1\n", "p.csv")
    assert str(err.value).endswith("; did you mean lp_ft?")


def test_the_bundled_paper_tables_load_through_importlib_resources():
    from importlib import resources

    from medft_jax.report.paper import load_paper

    text = resources.files("medft_jax.report").joinpath("paper_tables.csv").read_text("utf-8")
    assert text.startswith("table,dataset,strategy,arch,metric,mean,se\n")
    paper = load_paper()
    assert len(paper.values) == 384 == text.count("\n") - 1
    assert len(paper.datasets) == 8
    first = paper.values[("chexpert", "resnet50", "ft", "map")]
    assert (first.mean, first.se, first.line) == (71.98, 0.7, 2)
    # BACH's accuracy is top-1 (Table 8's Auto-RGN, DenseNet-121: 75.0).
    assert paper.values[("bach", "densenet121", "auto_rgn", "top1_accuracy")].mean == 75.0
    assert ("bach", "densenet121", "auto_rgn", "accuracy") not in paper.values


@pytest.mark.skipif(
    not (SHARED_DATA / "paper_tables.csv").is_file(),
    reason=f"the paper's published tables are not in {SHARED_DATA}",
)
def test_the_bundled_paper_tables_are_the_shared_ones():
    from importlib import resources

    bundled = resources.files("medft_jax.report").joinpath("paper_tables.csv").read_bytes()
    assert bundled == (SHARED_DATA / "paper_tables.csv").read_bytes()


def test_the_paper_tables_are_package_data():
    """An installed (non-editable) package carries the CSV only if pyproject says so."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    assert "paper_tables.csv" in config["tool"]["setuptools"]["package-data"]["medft_jax.report"]


def test_a_report_without_vs_paper_is_unchanged(tmp_path):
    """Without the flag: no vs_paper file and no section; every other file as with it."""
    runs = tmp_path / "runs"
    _write_runs(runs, [rec(dataset="mura_wrist", seed=k, test=0.7 + 0.02 * k) for k in range(3)])
    plain, versus = tmp_path / "plain", tmp_path / "versus"
    assert cli.main(["--runs", str(runs), "--out", str(plain)]) == 0
    assert cli.main(["--runs", str(runs), "--out", str(versus), "--vs-paper"]) == 0
    files = {p.relative_to(plain).as_posix() for p in plain.rglob("*") if p.is_file()}
    with_paper = {p.relative_to(versus).as_posix() for p in versus.rglob("*") if p.is_file()}
    added = {f"tables/vs_paper_mura_wrist.{ext}" for ext in ("md", "tex", "csv")}
    assert with_paper - files == added and files <= with_paper
    assert not any("vs_paper" in f for f in files)
    for f in sorted(files - {"index.md", ".medft-report"}):
        if not f.endswith(".png"):
            assert (plain / f).read_text() == (versus / f).read_text(), f
    index, index_paper = (plain / "index.md").read_text(), (versus / "index.md").read_text()
    assert "Against the paper" not in index and "vs_paper" not in index
    assert index_paper.startswith(index.rstrip("\n"))  # the section is added at the end
    bundled = read_csv((versus / "tables" / "vs_paper_mura_wrist.csv").read_text())
    assert {(r["strategy"], r["arch"], r["metric"]) for r in bundled} == {
        ("ft", "resnet50", "accuracy"),
        ("ft", "resnet50", "kappa"),
    }
    acc = next(r for r in bundled if r["metric"] == "accuracy")
    assert (acc["paper_mean_pct"], acc["paper_se_pct"]) == ("79.54", "0.4")  # Table 5
    assert float(acc["diff_pp"]) == pytest.approx(72.0 - 79.54)


def test_a_cell_left_with_no_validated_lr_is_unvalidated_not_a_loss():
    """Every LR with one seed's record lacking a validation value: the cell read ``failed``
    with no note although no run failed, and Table 12 counted it lost to FT (0/1) where its
    test value beat FT's."""
    records = [rec(strategy="ft", lr=lr, seed=k, test=0.7) for lr in (1e-3, 1e-4) for k in range(3)]
    for lr in (1e-3, 1e-4):
        for k in range(3):
            r = rec(strategy="lp", lr=lr, seed=k, test=0.9)
            if k == 0:
                r["val"]["accuracy"] = None
            records.append(r)
    summary = collect(records)
    lp = summary.cell("bach", "resnet50", "lp")
    assert lp.status == "unvalidated" and not lp.has_value
    assert lp.unvalidated_lrs == (1e-4, 1e-3)
    assert beats_ft(summary, 0.1)[("lp", "resnet50")] == (0, 0)
    md = to_markdown(dataset_table(summary, "bach"))
    assert "| LP | unvalidated‡ |" in md
    assert (
        "‡ LP, ResNet-50: lr 0.0001 0.001 (a run there has no validation value) left out "
        "of the choice; no LR was left to choose, so the cell has no value"
    ) in md
    notes = table12(summary, 0.1).notes
    assert (
        "Not counted, no LR of the strategy's having a validation value for every seed "
        "(unvalidated): bach/resnet50/lp."
    ) in notes
    # A failed run at one LR and an unvalidated one at the other: still no loss claimed.
    failures = [fail(strategy="lp", lr=1e-3, seed=0)]
    summary = collect(
        [r for r in records if r["config"]["lr"] != 1e-3 or r["config"]["seed"]], failures
    )
    lp = summary.cell("bach", "resnet50", "lp")
    assert lp.status == "unvalidated" and lp.excluded_lrs == (1e-4, 1e-3)
    assert beats_ft(summary, 0.1)[("lp", "resnet50")] == (0, 0)
    # Every LR failed: a loss, as before.
    summary = collect(
        records[:6], [fail(strategy="lp", lr=lr, seed=k) for lr in (1e-3, 1e-4) for k in range(3)]
    )
    assert summary.cell("bach", "resnet50", "lp").status == "failed"
    assert beats_ft(summary, 0.1)[("lp", "resnet50")] == (0, 1)


def test_table12_names_a_dataset_whose_ft_has_no_value_in_the_counted_metric():
    """FT with values but its counted metric undefined for every seed: the dataset left n
    without a word (the note named only FT cells with no value at all)."""
    records = []
    for k in range(3):
        ft = rec(strategy="ft", seed=k, test=0.7)
        ft["test"]["accuracy"] = None
        records += [ft, rec(strategy="lp", seed=k, test=0.9)]
        records += [
            rec("mura_wrist", strategy=s, seed=k, test=t) for s, t in (("ft", 0.7), ("lp", 0.9))
        ]
    summary = collect(records)
    assert beats_ft(summary, 0.1)[("lp", "resnet50")] == (1, 1)
    notes = table12(summary, 0.1).notes
    assert any(
        n.startswith(
            "Not counted, FT having no value to compare with there: "
            "bach/resnet50 (its Acc. undefined"
        )
        for n in notes
    ), notes
    assert "mura_wrist/resnet50" not in " ".join(n for n in notes if "Not counted" in n)


def test_records_disagreeing_on_the_primary_metric_are_named():
    """The refusal named no run: the user could not find the odd record."""
    a, b = rec(strategy="ft"), rec(strategy="lp")
    b["primary_metric"] = "kappa"
    with pytest.raises(results.RecordError) as e:
        collect([a, b])
    assert str(e.value) == (
        f"dataset 'bach': records disagree on the primary metric: accuracy (e.g. {a['run']}), "
        f"kappa (e.g. {b['run']}); report them from separate --runs folders"
    )


def test_a_report_out_under_a_file_names_the_file(tmp_path, capsys):
    """``--out afile/sub`` was refused as ".../afile/sub: already exists"."""
    runs = tmp_path / "runs"
    _write_runs(runs, [rec()])
    (tmp_path / "afile").write_text("mine")
    out = tmp_path / "afile" / "sub"
    assert cli.main(["--runs", str(runs), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --out {out}: {tmp_path / 'afile'} is a file, expected a folder\n"
    assert (tmp_path / "afile").read_text() == "mine"


def test_the_index_says_how_many_records_ranked_by_float32_probabilities(tmp_path):
    """Records written before AUROC and AP ranked by float64 log-probabilities lack
    ``ranked_by``: their two rank metrics may carry float32's ties, which the index says."""
    old = rec(strategy="lp")
    del old["ranked_by"]
    summary = collect([rec(), old])
    assert summary.float32_ranked == 1
    index = write_report(summary, tmp_path / "out").read_text()
    assert (
        "1 record (numerics version 4 or earlier) ranked AUROC and mAP by float32 probabilities"
    ) in index
    index = write_report(collect([rec()]), tmp_path / "again").read_text()
    assert "float32 probabilities" not in index


def test_the_index_says_how_many_records_ranked_by_float64_log_probabilities(tmp_path):
    """Records ranked by log-probabilities (before the log-odds) tie a diverging model's
    examples past a logit margin of about 745: the index counts them, as it counts
    float32-ranked ones."""
    from medft_jax.metrics import LOG_PROBABILITIES_RANKED

    old = rec(strategy="lp")
    old["ranked_by"] = LOG_PROBABILITIES_RANKED
    summary = collect([rec(), old])
    assert (summary.log_probability_ranked, summary.float32_ranked) == (1, 0)
    index = write_report(summary, tmp_path / "out").read_text()
    assert "1 record (written before 2026-12-07's log-odds) ranked AUROC and mAP by float64" in (
        index
    )
    index = write_report(collect([rec()]), tmp_path / "again").read_text()
    assert "log-probabilities" not in index


# --- what the report says of cells it cannot show ---------------------------------------------


def _feature_reuser(strategy, seed, **kw):
    """A run that reused cached features written before their extraction time was
    recorded: its device-seconds are unknown."""
    r = rec(strategy=strategy, seed=seed, **kw)
    r["features"] = {"used": True, "reused": True, "seconds": 0.5}
    return r


def test_cost_figure_and_table_name_the_cells_that_ran_without_a_known_cost(tmp_path, monkeypatch):
    """LP has a value but no known device-seconds, LP-FT diverged: the cost figure left
    both out without a word, and the cost table's — read as "no run at all"."""
    from medft_jax.report import cost_table
    from medft_jax.report.figures import cost_not_shown

    records = [rec(strategy="ft", seed=k, test=0.7) for k in range(3)]
    records += [_feature_reuser("lp", k, test=0.755) for k in range(3)]
    records += [rec(strategy="lp_ft", seed=k) for k in range(2)]
    summary = collect(records, [fail(strategy="lp_ft", seed=2)])
    assert summary.cell("bach", "resnet50", "lp").has_value
    assert summary.cell("bach", "resnet50", "lp_ft").failure_text == "diverged"
    assert cost_not_shown(summary, "bach") == [
        ("lp", "resnet50", "cost unknown"),
        ("lp_ft", "resnet50", "diverged"),
    ]
    ax = _drawn(summary, "cost", monkeypatch)
    assert ax.get_xlabel() == (
        "Device-seconds per run (log scale)\nnot shown: LP (cost unknown), LP-FT (diverged)"
    )
    with_two_archs = collect([*records, rec(arch="densenet121")], [fail(strategy="lp_ft", seed=2)])
    assert (
        _drawn(with_two_archs, "cost", monkeypatch)
        .get_xlabel()
        .endswith("not shown: LP ResNet-50 (cost unknown), LP-FT ResNet-50 (diverged)")
    )
    assert _drawn(collect(records[:3]), "cost", monkeypatch).get_xlabel() == (
        "Device-seconds per run (log scale)"  # every cell placed: nothing to name
    )
    md = to_markdown(cost_table(summary, "bach"))
    assert (
        "— LP, ResNet-50: device-seconds per run unknown, a run at the chosen LR lacks a time "
        "(such as one that reused cached features written before their extraction time was "
        "recorded)"
    ) in md
    assert "— LP-FT, ResNet-50: diverged, no LR chosen, so no cost per run" in md
    assert "— FT" not in md
    text = write_report(summary, tmp_path / "report").read_text()
    assert (
        "— : no run at all (an empty field in the CSV; never 0), and in the cost columns also "
        "a cell that ran but has no chosen LR (diverged, failed, unvalidated) or whose "
        "device-seconds per run are not known"
    ) in text


def test_how_to_read_defines_diverged_and_failed_by_the_rule_cells_follow(tmp_path):
    """LP has two finished runs and one failure note at its only LR: it reads "diverged",
    which the index defined as "only failure notes"."""
    records = [rec(strategy=s, seed=k) for s in ("ft", "lp") for k in range(2)]
    records += [rec(strategy="ft", seed=2)]
    summary = collect(records, [fail(strategy="lp", seed=2)])
    cell = summary.cell("bach", "resnet50", "lp")
    assert (cell.status, cell.failure_text, len(cell.seeds)) == ("failed", "diverged", 0)
    text = write_report(summary, tmp_path / "report").read_text()
    assert (
        "diverged: every LR at which the cell ran has a failed run (a failure note; the runs "
        "that finished at that LR do not count), so no LR could be chosen, and every failure "
        "note says the loss became non-finite; failed: the same, with a failure of another "
        "kind among them."
    ) in text
    assert "only failure notes" not in text
    other = {**fail(strategy="lp", seed=2), "kind": "oom"}
    assert collect(records, [other]).cell("bach", "resnet50", "lp").failure_text == "failed"


def _paired_note_and_rows(seeds, tests=(0.7, 0.8)):
    records = [
        rec(strategy=s, seed=k, test=t + 0.001 * k * (k + (s == "lp")))
        for s, t in zip(("ft", "lp"), tests, strict=True)
        for k in seeds
    ]
    table = paired_table(collect(records), "bach")
    return table.notes[0], read_csv(to_csv(table))


def test_paired_notes_and_csv_follow_the_seeds_paired(tmp_path):
    """One seed: the note said "every seed's difference the same" and "With 3 seeds
    (df = 2)", and the CSV's significant read False for a test never run."""
    note, rows = _paired_note_and_rows([0])
    assert "n/a: one seed paired, no spread to test. [n=k]" in note
    assert "every seed's difference" not in note and "With 3 seeds" not in note
    assert (rows[0]["df"], rows[0]["p"], rows[0]["significant"]) == ("0", "", "")
    note, rows = _paired_note_and_rows([0, 1, 2])
    assert rows[0]["p"] != "" and rows[0]["significant"] in ("True", "False")
    assert (
        "With 3 seeds (df = 2) p < 0.05 needs |t| > 4.30: the test has little power, a real "
        "difference often goes unmarked."
    ) in note
    note, _ = _paired_note_and_rows([0, 1])
    assert "With 2 seeds (df = 1) p < 0.05 needs |t| > 12.71" in note
    note, _ = _paired_note_and_rows(range(8))
    assert "With 8 seeds (df = 7) p < 0.05 needs |t| > 2.36." in note  # not "little power"
    records = [rec(strategy=s, seed=0) for s in ("ft", "lp")]
    text = write_report(collect(records), tmp_path / "report").read_text()
    assert "n/a: one seed paired, so no spread, no t and no p" in text
    assert "With 3 seeds" not in text and "every seed's difference" not in text
    assert "sign-flip" not in text  # no test ran: no floor to explain
    # The sign-flip floor, 2/2^n, follows the pairs too (it said 0.25 "with 3 pairs" to 2).
    records = [r for k in (0, 1) for r in (rec(strategy="ft", seed=k), rec(strategy="lp", seed=k))]
    text = write_report(collect(records), tmp_path / "report").read_text()
    assert (
        "An exact sign-flip (permutation) test cannot go below p = 0.5 with 2 pairs, which is "
        "why the t-test is used."
    ) in text and "0.25" not in text
    assert tables.paired_note([]).endswith("the CSV's significant is then empty.")


def test_improvement_figure_draws_na_inside_the_axes_and_not_under_a_message(monkeypatch):
    """Every bar negative: the axes end at 0 and the n/a drawn above y = 0 stood on the
    title; without FT it crossed the message drawn across the axes."""
    records = [rec(strategy="ft", seed=k, test=0.8) for k in range(3)]
    records += [rec(strategy="lp", seed=k, test=0.7 + 0.01 * k) for k in range(3)]
    records += [rec(strategy="lp_ft", seed=k) for k in range(2)]
    summary = collect(records, [fail(strategy="lp_ft", seed=2)])
    ax = _drawn(summary, "improvement", monkeypatch)
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.texts if t.get_text() == "n/a"]
    assert len(labels) == 1 and ax.get_ylim()[1] <= 0.0
    box, axes = labels[0].get_window_extent(renderer), ax.get_window_extent(renderer)
    assert axes.y0 <= box.y0 and box.y1 <= axes.y1
    assert axes.x0 <= box.x0 and box.x1 <= axes.x1
    no_ft = collect(records[3:], [fail(strategy="lp_ft", seed=2)])
    texts = [t.get_text() for t in _drawn(no_ft, "improvement", monkeypatch).texts]
    assert texts == ["no FT value for bach to compare with (it was not run): run --strategy ft too"]


def test_how_to_read_says_which_csv_columns_are_lists(tmp_path):
    """``seeds`` and ``excluded_lrs`` are space-joined: pandas read one seed as an int and
    several as a str, and nothing said so."""
    records = [rec(strategy=s, seed=k) for s in ("ft", "lp") for k in range(3)]
    records += [rec(strategy="lp", lr=1e-3, seed=k) for k in range(2)]
    out = tmp_path / "report"
    text = write_report(collect(records, [fail(strategy="lp", lr=1e-3, seed=2)]), out).read_text()
    assert (
        "Four columns are lists, space-separated: seeds (paired CSVs, e.g. `0 1 2`), "
        "excluded_lrs and tied_lrs (dataset and cost CSVs, e.g. `0.001 0.01`) and Table 11's "
        "cells_incomplete (e.g. `resnet50/lp vgg19/lp_ft`); read them as strings (pandas: "
        '`dtype={"seeds": str, "excluded_lrs": str, "tied_lrs": str}`), or a single entry '
        "reads as a number."
    ) in text
    tables = out / "tables"
    assert read_csv((tables / "paired_bach.csv").read_text())[0]["seeds"] == "0 1 2"
    for name in ("table08_bach", "cost_bach"):
        rows = read_csv((tables / f"{name}.csv").read_text())
        assert {r["excluded_lrs"] for r in rows if r["strategy"] == "lp"} == {"0.001"}


def test_the_index_says_mura_metrics_are_per_study(tmp_path):
    """Above a MURA table the index counted images alone; its accuracy and kappa are over
    studies (the record's scored_units), which the report never said."""
    records = [rec(dataset="mura_wrist", strategy=s) for s in ("ft", "lp")]
    for r in records:
        r["split_sizes"] = {"train": 30, "val": 6, "test": 23}
        r["scored_units"] = {"unit": "study", "val": 3, "test": 12}
    index = write_report(collect(records), tmp_path / "out").read_text()
    line = next(x for x in index.splitlines() if x.startswith("  - mura\\_wrist"))
    assert "(train 30, val 6, test 23 images; metrics per study: val 3, test 12): " in line


def test_a_grid_whose_settings_no_record_has_names_the_setting_that_differs():
    """report --config with a grid of other epochs (or batch size) said "none of its N runs
    match grid ...; check --config and --only", naming nothing."""
    grid = one_run_grid("chexpert", {})
    cfg = grid.config("chexpert", "resnet50", "ft", 1e-4, 0).to_dict()
    other = rec(dataset="chexpert", config={**cfg, "epochs": 3, "batch_size": 32}, test=0.9)
    summary = collect([other], grid=grid)
    assert summary.left_out == 1
    assert summary.left_out_why == (
        f"e.g. {other['run']} has batch_size 32 (the grid's {cfg['batch_size']!r}), epochs 3 "
        f"(the grid's {cfg['epochs']!r})"
    )
    # Another dataset's run tells nothing of the grid's settings.
    assert collect([rec(dataset="bach", test=0.9)], grid=grid).left_out_why == ""


def test_failure_notes_copied_or_edited_are_refused_naming_the_files(tmp_path, capsys):
    """A copied failure note's folder was "two records for lr ..., seed ...: run X",
    naming neither file (and calling notes records); a note's bad config named the run."""
    runs = tmp_path / "runs"
    _write_runs(runs, [rec(strategy="ft")])
    note = results.write_failure(runs, rec(strategy="lp", lr=1e-3)["config"], "nonfinite", "nan")
    first = runs / note["run"] / results.FAILURE_NAME
    assert cli.main(["--runs", str(runs), "--out", str(tmp_path / "ok")]) == 0
    capsys.readouterr()
    copy = runs / "bak" / note["run"]
    shutil.copytree(first.parent, copy)
    assert cli.main(["--runs", str(runs), "--out", str(tmp_path / "out")]) == 2
    pair = sorted([first, copy / results.FAILURE_NAME])
    assert capsys.readouterr().err == (
        f"error: --runs {runs}: {note['run']} has two failure notes, {pair[0]} and {pair[1]}; "
        "expected one per run: move the copy out\n"
    )
    shutil.rmtree(runs / "bak")
    edited = json.loads(first.read_text())
    edited["config"]["lr"] = "0.001"
    del edited["run"], edited[results.SEAL_KEY]  # hand-made: no name or seal to contradict
    shutil.rmtree(first.parent)
    hand = runs / "hand-made" / results.FAILURE_NAME  # a folder not named by the hash
    hand.parent.mkdir()
    hand.write_text(json.dumps(edited))
    assert cli.main(["--runs", str(runs), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        f"error: {hand}: run ?: config.lr is '0.001', not a number\n"
    )
