"""The benchmarks' own logic: grid_bill's projection arithmetic, its CLI, models.py's cells.

The projection is pure arithmetic on measured seconds, so it is checked
against hand calculations; the measuring is checked end to end by the
``--quick`` run (a real ResNet-50 on a CPU, a minute: slow tier).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import grid_bill  # noqa: E402  (benchmarks/ is not a package)
import models as bench_models  # noqa: E402

from medft_jax.grid import NOMINAL_TRAIN_IMAGES  # noqa: E402


def test_a_feature_extraction_is_billed_over_train_and_val_only():
    """Test is scored from its images: its features are not computed (features.SPLITS),
    and billed they overstated cached LP's cost."""
    from medft_jax.features import SPLITS

    assert SPLITS == ("train", "val")
    task = grid_bill.TaskFacts("t", train=100, val=28, test=1000, num_classes=2, multilabel=False)
    times = grid_bill.ArchTimes("resnet50", "fp32", scale=2.0, extract_batch=0.5)
    times.feature_compile = 3.0
    # ceil(128 / 64) = 2 batches of 0.5 s, scaled 2x, plus 3 s compiling
    assert grid_bill.extraction_seconds(times, task, 64) == 2 * 0.5 * 2.0 + 3.0


def test_projection_matches_a_hand_calculation():
    a = grid_bill.RunPlan(
        runs=9,
        epoch_train=(10.0, 10.0, 20.0, 20.0),
        epoch_val=(1.0, 1.0, 1.0, 1.0),
        test=3.0,
        resume_save=0.5,
        best_save=0.25,
        compile=4.0,
        min_epochs=3,
        checkpoint_seconds=0.0,  # a resume checkpoint after every epoch but the last
    )
    b = grid_bill.RunPlan(
        runs=2,
        epoch_train=(5.0, 5.0, 5.0),
        epoch_val=(0.5, 0.5, 0.5),
        test=1.0,
        resume_save=1.0,
        best_save=0.5,
        compile=2.0,
        checkpoint_seconds=12.0,  # 5.5 s an epoch: none before its last epoch
    )
    # Every epoch: A = 60 + 4 + (4 + 3 + 3 x 0.5 + 0.25) = 72.75 s a run, x 9 = 654.75;
    # B = 15 + 1.5 + (2 + 1 + 0 + 0.5) = 20, x 2 = 40; plus 36 s one-time: 730.75 s.
    every = grid_bill.project([a, b], None, one_time=36.0)
    assert (every.train, every.val, every.fixed, every.one_time) == (570.0, 39.0, 85.75, 36.0)
    assert every.hours == pytest.approx(730.75 / 3600)
    # A mean of 2 epochs: A never stops before its 3 (min_epochs): 40 + 3 + 8.25 = 51.25,
    # x 9 = 461.25; B trains 2: 10 + 1 + 3.5 = 14.5, x 2 = 29; + 36 = 526.25 s.
    mean = grid_bill.project([a, b], 2, one_time=36.0)
    assert mean.total == pytest.approx(526.25)
    assert mean.hours == pytest.approx(526.25 / 3600)
    # More epochs than a run has: capped at its length.
    assert grid_bill.epochs_trained(a, 80) == 4
    # Every 5 s: B saves after each of its first two epochs (5.5 s each), not its last.
    assert grid_bill.resume_points(dataclasses.replace(b, checkpoint_seconds=5.0), 3) == 2
    assert grid_bill.resume_points(a, 1) == 0


def test_scale_factor_is_the_pixel_and_batch_ratio():
    assert grid_bill.scale_factor(64, 8, 224, 64) == pytest.approx(3.5**2 * 8)
    assert grid_bill.scale_factor(224, 64, 224, 64) == 1.0


def _times() -> grid_bill.ArchTimes:
    """Made-up measurements: FT's stage 'all', LP's 'head', an unmeasured middle stage."""
    se = grid_bill.StrategyEpochs
    t = grid_bill.ArchTimes("resnet50", "fp32", scale=2.0)
    t.steps = {("ft", "all"): 0.5, ("lp", "head"): 0.1}
    t.cached = {("lp", "f-head"): 0.01}
    t.compile = {"ft": 10.0, "lp": 4.0}
    t.cached_compile = {"lp": 1.0}
    t.eval_batch, t.head_eval_batch, t.eval_compile = 0.2, 0.002, 3.0
    t.ckpt_latest, t.ckpt_best = 0.3, 0.2
    t.prepass_batch = 0.4
    t.epochs = {
        "ft": se(("all",) * 3, ("f-all",) * 3, (False,) * 3, 0, 0),
        "lp": se(("head",) * 3, ("f-head",) * 3, (True,) * 3, 0, 0),
        "g": se(("head", "mid", "all"), ("f-head", "f-mid", "f-all"), (True, False, False), 2, 0),
        "rgn": se(("all",) * 3, ("f-all",) * 3, (False,) * 3, 0, 5),
    }
    return t


def test_cell_plan_turns_measurements_into_seconds():
    # 640 train images at batch 64: 10 steps an epoch; 130 val: 3 batches; 250 test: 4.
    task = grid_bill.TaskFacts("t", 640, 130, 250, 2, False)
    t = _times()
    kw = {"runs": 9, "batch": 64, "patience": 5}
    lp = grid_bill.cell_plan(t, "lp", task, cached=False, bounds=grid_bill.Bounds(), **kw)
    assert lp.epoch_train == pytest.approx((10 * 0.1 * 2,) * 3)  # steps x s/step x scale
    assert lp.epoch_val == pytest.approx((3 * 0.2 * 2,) * 3)
    assert lp.test == pytest.approx(4 * 0.2 * 2)
    assert (lp.resume_save, lp.best_save) == pytest.approx((0.5, 0.2))
    assert lp.compile == pytest.approx((4 + 3) / 9)
    assert lp.min_epochs == 3  # capped at the run's 3 epochs (0 + patience 5 + 1 = 6)
    cached = grid_bill.cell_plan(t, "lp", task, cached=True, bounds=grid_bill.Bounds(), **kw)
    assert cached.epoch_train == pytest.approx((10 * 0.01,) * 3)  # features: no image scaling
    assert cached.epoch_val == pytest.approx((3 * 0.002,) * 3)
    assert cached.compile == pytest.approx((4 + 1 + 3) / 9)
    # An unmeasured strategy: its head stage from LP's, 'all' from FT's, 'mid' bounded by FT.
    bounds = grid_bill.Bounds()
    g = grid_bill.cell_plan(t, "g", task, cached=False, bounds=bounds, **kw)
    assert g.epoch_train == pytest.approx((2.0, 10.0, 10.0))
    assert g.compile == pytest.approx((3 * 10 + 3) / 9)  # one FT-sized compile per stage
    assert len(bounds.other_strategy) == 2 and len(bounds.ft_bound) == 1
    g_cached = grid_bill.cell_plan(t, "g", task, cached=True, bounds=grid_bill.Bounds(), **kw)
    assert g_cached.epoch_train == pytest.approx((0.1, 10.0, 10.0))
    # Auto-RGN's prepass: 5 gradient evaluations before each epoch.
    rgn = grid_bill.cell_plan(t, "rgn", task, cached=False, bounds=grid_bill.Bounds(), **kw)
    assert rgn.epoch_train == pytest.approx((10 * 0.5 * 2 + 5 * 0.4 * 2,) * 3)
    # Unmeasured (left out of --strategies, or past --time-budget): FT's step, scaled.
    t.prepass_batch = None
    rgn = grid_bill.cell_plan(t, "rgn", task, cached=False, bounds=grid_bill.Bounds(), **kw)
    assert rgn.epoch_train == pytest.approx((10 * 0.5 * 2 + 5 * 0.5 * 2,) * 3)


@pytest.mark.slow  # compiles the Auto-RGN prepass
def test_auto_rgn_prepass_is_billed_five_batches_or_an_epochs_fewer():
    from medft_jax.models import create, get_arch, init_variables

    params = init_variables(create("resnet_tiny", 2), 0, 32)["params"]
    partition = get_arch("resnet_tiny").partition
    kw = {"epochs": 3, "frozen_bn": "update", "options": {"rgn_mode": "prepass"}}  # paper.py
    assert grid_bill.strategy_epochs("auto_rgn", params, partition, **kw).prepass_batches == 5
    # A task of 3 steps an epoch: its prepass takes those 3 (fit's rule), not 5.
    task = grid_bill.TaskFacts("t", 192, 130, 250, 2, False)
    plan = grid_bill.cell_plan(
        _times(), "rgn", task, cached=False, bounds=grid_bill.Bounds(), runs=1, batch=64, patience=5
    )
    assert plan.epoch_train == pytest.approx((3 * 0.5 * 2 + 3 * 0.4 * 2,) * 3)


def _projection(plans: list, missing: int) -> grid_bill.Projection:
    variant = grid_bill.Variant("bf16", cached=True)
    return grid_bill.Projection(variant, plans, 0.0, missing, grid_bill.Bounds())


def test_sp_and_rgn_priced_at_another_strategys_step_are_a_lower_bound_not_a_pass(capsys):
    """Their update adds work to Adam's: at FT's step they are billed too little, so a bill
    under the goal with such stages is not a PASS; one over it is a FAIL all the same."""
    task = grid_bill.TaskFacts("t", 640, 130, 250, 2, False)
    t = _times()
    t.epochs["l2_sp"] = t.epochs["ft"]
    kw = {"runs": 9, "batch": 64, "patience": 5}
    bounds = grid_bill.Bounds()
    sp = grid_bill.cell_plan(t, "l2_sp", task, cached=False, bounds=bounds, **kw)
    assert sp.epoch_train == pytest.approx((10 * 0.5 * 2,) * 3)  # FT's step, scaled
    assert bounds.lower == bounds.other_strategy == {("resnet50", "l2_sp", "all")}
    assert bounds.note() == (
        "1 stage of L2-SP, L1-SP or Auto-RGN at another strategy's step (lower bound: "
        "their update adds work)"
    )
    grid_bill.cell_plan(t, "g", task, cached=False, bounds=bounds, **kw)  # Adam: no lower
    assert len(bounds.lower) == 1 and len(bounds.other_strategy) == 3

    plan = grid_bill.RunPlan(runs=1, epoch_train=(3600.0,), epoch_val=(0.0,), test=0.0,
                             resume_save=0.0, best_save=0.0, compile=0.0)  # fmt: skip
    variant = grid_bill.Variant("bf16", cached=True)
    for hours, lower, verdict in [
        (20, set(), "PASS: 20.0 h"),
        (20, bounds.lower, "not measured (under the goal with stages billed too little): 20.0"),
        (30, bounds.lower, "FAIL: 30.0 h"),
    ]:
        plans = [dataclasses.replace(plan, runs=hours)]
        proj = grid_bill.Projection(variant, plans, 0.0, 0, grid_bill.Bounds(lower=set(lower)))
        grid_bill.goal_lines([proj], {}, reduced=None, mean_epochs=20)
        out = capsys.readouterr().out
        assert f"device-hours in bf16 with cached LP: {verdict}" in out, out


def test_a_precision_with_nothing_timed_is_a_row_not_a_crash(capsys):
    # SIGTERM or the budget before any bf16 pair: its variant has no plans at all.
    grid_bill.grid_table([_projection([], 576)], mean_epochs=20, max_epochs=50)
    grid_bill.goal_lines([_projection([], 576)], {}, reduced=None, mean_epochs=20)
    out = capsys.readouterr().out
    assert "| bf16, LP cached | - | - | - | - | - | - | - | not measured: 576 runs" in out
    assert "cached LP: not measured (576 runs' archs not timed)" in out
    assert "per-run overhead <= 2% of the grid: not measured" in out


def test_a_scaled_timing_on_a_gpu_judges_no_goal(capsys):
    plan = grid_bill.RunPlan(runs=1, epoch_train=(1.0,), epoch_val=(0.1,), test=0.1,
                             resume_save=0.0, best_save=0.0, compile=0.1)  # fmt: skip
    reduced = "timed at 32 px batch 4, scaled 784.00x"
    grid_bill.goal_lines([_projection([plan], 0)], {}, reduced=reduced, mean_epochs=20)
    out = capsys.readouterr().out
    assert f"cached LP: not measured ({reduced}; the goal is one H100/H200's" in out
    # Steps are scaled at a reduced size, compiles and saves not: no verdict on the share.
    said = r"per-run overhead <= 2% of the grid: not judged: [\d.]+% .*\(timed at 32"
    assert re.search(said, out)


def test_torch_compile_failure_is_a_cell_not_a_crash():
    def fails():
        raise RuntimeError("inductor: no C++ compiler\nsecond line")

    cell = bench_models.images_per_s_or_reason(fails, 4, 1)
    assert cell == "n/a (RuntimeError: inductor: no C++ compiler second line)"
    assert bench_models.images_per_s_or_reason(lambda: None, 4, 1) > 0


def test_models_rejects_a_malformed_setting():
    from medft_jax.errors import UserError

    for setting in ("224", "abc", "0x64", "224x-1", "224x64x1"):
        with pytest.raises(UserError, match=f"--settings '{setting}': expected SIZExBATCH"):
            bench_models.parse_setting(setting)
    assert bench_models.parse_setting("224x64") == (224, 64)


@pytest.mark.parametrize(
    ("script", "flags", "message"),
    [
        ("select_vs_grid.py", ["--eta", "1"], "--eta must be in [2, 100], got 1"),
        pytest.param(
            "select_vs_grid.py",
            ["--min-epochs", "0"],
            "--min-epochs must be a finite number > 0",
            marks=pytest.mark.slow,
        ),
        pytest.param(  # select's own refusal, found after the whole grid was swept
            "select_vs_grid.py",
            ["--min-epochs", "2"],
            "--min-epochs 2 is not under the grid's 2 epochs; the first rung must be shorter",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "input_pipeline.py",
            ["--images", "-5"],
            "--images must be >= 1, got -5",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "input_pipeline.py",
            ["--images", "8"],
            "--images must be >= 256 (the largest batch timed), got 8",
            marks=pytest.mark.slow,
        ),
        # One check per script in the fast tier: each costs a process importing JAX.
        pytest.param(
            "models.py", ["--steps", "0"], "--steps must be >= 1, got 0", marks=pytest.mark.slow
        ),
        pytest.param(
            "models.py",
            ["--archs", "resnet50", "bogus"],
            "--archs 'bogus': unknown arch",
            marks=pytest.mark.slow,
        ),
        (  # the bf16 table has no XLA-ops column and no child process: refused, not ignored
            "models.py",
            ["--precision", "bf16", "--host", "split"],
            "--host split applies to the fp32 table (--precision fp32 or both)",
        ),
        pytest.param(
            "models.py",
            ["--precision", "bf16", "--xla-baseline"],
            "--xla-baseline applies to the fp32 table (--precision fp32 or both)",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "models.py",
            ["--torch-compile"],
            "--torch-compile applies to the bf16 table",
            marks=pytest.mark.slow,
        ),
        pytest.param(  # was exit 1 with no error: prefix
            "models.py",
            ["--settings", "abc"],
            "error: --settings 'abc': expected SIZExBATCH",
            marks=pytest.mark.slow,
        ),
        pytest.param(  # (the fast tier's flag-error check of strategies.py is the next test's)
            "strategies.py",
            ["--arch", "bogus"],
            "--arch 'bogus': unknown arch",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "strategies.py",
            ["--strategies", "lp", "bogus"],
            "--strategies 'bogus': unknown",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_benchmark_flags_are_checked_before_any_work(tmp_path, script, flags, message):
    """select_vs_grid ran the whole grid before select refused --eta; input_pipeline crashed."""
    path = os.pathsep.join(filter(None, [str(BENCH.parent), os.environ.get("PYTHONPATH")]))
    work = tmp_path / "work"
    work_flag = {"select_vs_grid.py": ["--work"], "input_pipeline.py": ["--workdir"]}
    out = subprocess.run(
        [sys.executable, str(BENCH / script), *flags, *(f for f in work_flag.get(script, []))]
        + ([str(work)] if script in work_flag else []),
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": path},
        cwd=BENCH.parent,
        timeout=300,
        check=False,
    )
    assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
    assert not work.exists()


TINY = ["--archs", "resnet_tiny"]


def _paper_grid_of(tmp_path: Path, archs: tuple[str, ...]) -> tuple[Path, dict[str, str]]:
    """A grid file of the paper's grid with ``archs`` in place of its three, and the
    environment a benchmark script runs in (CPU; the repository importable)."""
    config = tmp_path / "tiny_grid.py"
    config.write_text(
        "import dataclasses\n"
        "from experiments.configs.paper import get_config as paper\n"
        "def get_config():\n"
        f"    return dataclasses.replace(paper(), archs={archs!r})\n"
    )
    path = os.pathsep.join(filter(None, [str(BENCH.parent), os.environ.get("PYTHONPATH")]))
    return config, {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}


@pytest.mark.slow
def test_grid_bill_quick_runs_on_cpu_and_states_its_goals(tmp_path):
    # The paper's grid with the test arch (ResNet-50 wired with one bottleneck
    # per layer) in place of its three: the same script, half the compiling.
    config, env = _paper_grid_of(tmp_path, ("resnet_tiny",))
    out = subprocess.run(
        [sys.executable, str(BENCH / "grid_bill.py"), "--quick", "--config", str(config), *TINY],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "CPU PROJECTION AT REDUCED SIZE" in text
    assert "ASSUMED" in text  # the mean epoch count and the val/test sizes
    # chexpert's steps per epoch at the grid's batch 64.
    assert f"| chexpert | {NOMINAL_TRAIN_IMAGES['chexpert']:,} |" in text
    assert f"| {NOMINAL_TRAIN_IMAGES['chexpert'] // 64:,} |" in text
    for goal in (
        "- projected grid <= 24 device-hours in bf16 with cached LP: not measured",
        "- per-run overhead <= 2% of the grid: ",
        "- epoch images/s (data + step) >= 95% of step-only: ",
    ):
        assert goal in text
    assert re.search(r"per-run overhead <= 2% of the grid: not judged: \d", text)
    assert re.search(r"of step-only: not judged: FT [\d.]+ vs [\d.]+ img/s", text)
    for variant in ("fp32, LP uncached", "fp32, LP cached"):
        assert re.search(rf"\| {variant} \| every \(50\) \| .* \*\*[\d,.]+\*\*", text)
    # Cached LP trains a head on features: far cheaper an epoch than from images.
    row = re.search(r"\| resnet_tiny \| lp \| fp32 \|[^\n]*", text).group(0).split("|")
    uncached_x_ft, cached_x_ft = float(row[8]), float(row[9])
    assert cached_x_ft < uncached_x_ft / 5


def test_measured_times_survive_the_json_round_trip():
    """grid_bill --out / --from-json: the projection of the file is the projection measured."""
    t = _times()
    t.cached[("lp", ((False, True), frozenset({"b", "a"})))] = 0.0005
    t.head_eval_batch, t.ckpt_best = 0.001, math.nan
    back = grid_bill.times_from_json(
        json.loads(json.dumps(grid_bill.times_to_json(t), allow_nan=False))
    )
    assert math.isnan(back.ckpt_best)  # an unmeasured save stays unmeasured
    t.ckpt_best = back.ckpt_best = 0.5
    t.extract_batch = back.extract_batch = t.ckpt_latest_background = 0.1
    back.ckpt_latest_background = 0.1
    assert back == t  # tuple keys, frozensets and the strategies' epochs as they were
    task = grid_bill.TaskFacts("t", 640, 130, 250, 2, False)
    kw = {"runs": 1, "batch": 64, "patience": 5, "bounds": grid_bill.Bounds()}
    assert grid_bill.cell_plan(back, "g", task, cached=True, **kw) == grid_bill.cell_plan(
        t, "g", task, cached=True, **kw
    )


def test_cached_lp_with_no_step_from_features_is_labelled_not_silent():
    t = _times()
    task = grid_bill.TaskFacts("t", 640, 130, 250, 2, False)
    kw = {"runs": 1, "batch": 64, "patience": 5}
    t.cached.clear()
    bounds = grid_bill.Bounds()
    plan = grid_bill.cell_plan(t, "lp", task, cached=True, bounds=bounds, **kw)
    assert bounds.no_features and "no step from features timed" in bounds.note()
    assert (
        plan.epoch_train
        == grid_bill.cell_plan(
            t, "lp", task, cached=False, bounds=grid_bill.Bounds(), **kw
        ).epoch_train
    )  # billed from images: said, not hidden


def test_amp_failure_is_a_cell_and_the_jax_row_is_kept(monkeypatch):
    def oom(*a, **k):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(bench_models, "torch_amp_fns", oom)
    cells = bench_models.torch_amp_speeds("vgg19", 224, 64, 1)
    assert cells == {m: "n/a (RuntimeError: CUDA out of memory)" for m in ("forward", "train step")}


def test_gpu_rows_keep_results_and_drop_progress_lines(tmp_path):
    import gpu_rows

    (tmp_path / "gpu.txt").write_text(
        "date: 2026-12-07 10:00 UTC\ncommit: abc123\ncard: NVIDIA H200, 143771 MiB, 580\n"
        "versions: jax 0.11.2, flax 0.12.10, torch missing (ImportError)\n"
        "step densenet: stopped at its limit (SIGTERM), limit 120 s, wall 121 s\n"
    )
    (tmp_path / "densenet.txt").write_text(
        "# 2026-12-07 x86_64, 16 cores, card H200; jax 0.11.2\n"
        "| arch | px | batch | mode | JAX bf16 img/s | PyTorch AMP img/s | JAX/AMP |\n"
        "|---|---|---|---|---|---|---|\n"
        "- measured JAX bf16 densenet121 224x64 forward: 9000.0 img/s\n"
        "| densenet121 | 224 | 64 | forward | 9000.0 | 5000.0 | 1.80 |\n"
        "- measured JAX bf16 densenet121 224x64 train step: 2100.5 img/s\n"
    )
    (tmp_path / "strategies.txt").write_text(
        "# 2026-12-07 machine\n| strategy | stage | s/step | x FT |\n|---|---|---|---|\n"
        "# measured ft 0: all: 0.020 s/step\n| ft | 0: all | 0.020 | 1.00 |\n\n"
        "LP from cached features (2048 per image): 0.35 ms/step = 0.017x FT (meets the goal "
        "<= 0.05x); computing the features once: 0.010 s a batch = 0.50 FT steps\n\n"
        "FT as one fused program (benchmarks/models.py's train step): 0.021 s/step\n"
    )
    (tmp_path / "grid_bill.txt").write_text(
        "# resnet50 bf16 ft epoch 0: 0.0200 s/step\n# SIGTERM: measuring stopped, projecting\n"
        "\n## Goals (issue 16)\n- projected grid <= 24 device-hours in bf16 with cached LP: PASS\n"
    )
    text = gpu_rows.rows(tmp_path)
    assert text.startswith("## GPU: NVIDIA H200, 143771 MiB, 580 (`benchmarks/gpu.sh`, 2026-12")
    assert "- commit: abc123" in text and "torch missing (ImportError)" in text
    assert "0.35 ms/step = 0.017x FT (meets the goal <= 0.05x)" in text
    assert "FT as one fused program" in text
    # No progress line copied (they would be headings, and break the table they sit in).
    assert "# measured" not in text and "s/step\n# " not in text and "\n# resnet50" not in text
    assert "|---|---|---|---|\n| ft | 0: all | 0.020 | 1.00 |" in text
    # The forward row is in the table; the train step's JAX speed only in its line.
    assert "forward: 9000.0" not in text and "train step: 2100.5 img/s" in text
    assert "#### Goals (issue 16)" in text and "- note: SIGTERM: measuring stopped" in text
    assert "- step: stopped at its limit (SIGTERM), limit 120 s" in text
    assert "### models: " in text and "- not run" in text


@pytest.mark.slow
def test_grid_bill_prints_and_keeps_what_was_measured_on_sigterm(tmp_path):
    """A SIGTERM mid-measuring (here during DenseNet's first compilation) still prints the
    report of the arch measured, and the JSON written so far projects the same."""
    import signal
    import time

    config, env = _paper_grid_of(tmp_path, ("resnet_tiny", "densenet121"))
    out_json = tmp_path / "gb.json"
    cmd = [sys.executable, str(BENCH / "grid_bill.py"), "--quick", "--config", str(config)]
    proc = subprocess.Popen(
        [*cmd, "--archs", "resnet_tiny", "densenet121", "--strategies", "ft", "lp",
         "--out", str(out_json)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    lines = []
    for line in proc.stdout:  # until DenseNet's measuring starts
        lines.append(line)
        if "resnet_tiny fp32 lp from features" in line:
            break
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    text = "".join(lines) + rest
    assert proc.returncode == 0, text[-3000:]
    assert "# SIGTERM: measuring stopped" in text
    row = re.search(r"\| resnet_tiny \| lp \| fp32 \|[^\n]*", text).group(0).split("|")
    assert float(row[5]) > 0  # LP's step from features: measured, not a bound
    assert "| densenet121 |" not in text
    assert "1,728 runs" not in text and "576 runs (archs not timed)" in text
    replay = subprocess.run(
        [*cmd, "--from-json", str(out_json)], capture_output=True, text=True, env=env,
        timeout=300, check=True,
    )  # fmt: skip
    table = re.compile(r"^\| fp32, LP cached \|.*$", re.M)
    assert table.findall(replay.stdout) == table.findall(text)


def _bench(script: str, *flags: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``benchmarks/<script> flags`` in a fresh process (CPU; the repository importable)."""
    path = os.pathsep.join(filter(None, [str(BENCH.parent), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, str(BENCH / script), *flags],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": path},
        cwd=cwd or BENCH.parent,
        timeout=120,
        check=False,
    )


def _refused(out: subprocess.CompletedProcess, message: str) -> None:
    """One ``error:`` line naming ``message``, exit 2, no traceback."""
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr[-2000:]
    assert message in out.stderr, out.stderr


def test_gpu_rows_keep_what_a_step_stopped_at_its_limit_measured(tmp_path):
    """strategies.py prints its table at the end; a step stopped at its limit left only the
    header, and the ``# measured`` lines it had printed were dropped."""
    import gpu_rows

    (tmp_path / "gpu.txt").write_text("card: NVIDIA H200\n")
    (tmp_path / "strategies.txt").write_text(
        "# 2026-12-07 x; resnet50, 224 px\n"
        "| strategy | stage (epoch: trainable blocks) | s/step | x FT |\n|---|---|---|---|\n"
        "# measured ft 0: all: 0.031 s/step\n# measured lp 0: fc: 0.011 s/step\n"
    )
    text = gpu_rows.rows(tmp_path)
    part = text.split("### strategies")[1]
    assert "| strategy |" not in part  # a header without rows says nothing
    assert "- note: measured ft 0: all: 0.031 s/step\n" in part
    assert "- note: measured lp 0: fc: 0.011 s/step" in part


def test_gpu_rows_takes_one_existing_folder(tmp_path):
    """gpu_rows took --help for its folder (a traceback), and no folder or a missing one too."""
    helped = _bench("gpu_rows.py", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "OUT" in helped.stdout, helped.stderr
    assert list(tmp_path.iterdir()) == []
    _refused(_bench("gpu_rows.py", cwd=tmp_path), "required: OUT")
    _refused(_bench("gpu_rows.py", str(tmp_path / "none")), "no such folder")
    (tmp_path / "afile").write_text("x")
    _refused(_bench("gpu_rows.py", str(tmp_path / "afile")), "not a folder")
    assert _bench("gpu_rows.py", str(tmp_path)).returncode == 0
    assert (tmp_path / "rows.md").read_text().startswith("## GPU")


def test_conv_refuses_no_steps():
    """--steps 0 was a StatisticsError traceback after the first compilation."""
    _refused(_bench("conv.py", "--steps", "0"), "--steps must be >= 1, got 0")


def _main_refuses(capsys, main, argv: list[str], message: str) -> None:
    """``main(argv)`` under ``cli_main``: one ``error:`` line naming ``message``, exit 2."""
    from medft_jax.errors import cli_main

    try:
        status = cli_main(main, argv)
    except SystemExit as e:  # the parser's own refusal
        status = e.code
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--time-budget", "0"], "--time-budget must be a finite number of seconds > 0, got 0"),
        (["--time-budget", "-1"], "--time-budget must be a finite number of seconds > 0"),
        (["--time-budget", "nan"], "--time-budget must be a finite number of seconds > 0"),
        (["--out", "{tmp}/afile/x.json"], "afile is a file, expected a folder"),
        (["--out", "{tmp}/none/x.json"], "its folder {tmp}/none does not exist"),
        (["--out", "{tmp}"], "is a folder, expected a JSON file"),
        (["--out", "{tmp}/afile"], "--out {tmp}/afile: exists and is not a file grid_bill.py"),
        (["--from-json", "{tmp}/none.json"], "--from-json {tmp}/none.json: no such file"),
        (["--from-json", "{tmp}/afile"], "--from-json {tmp}/afile: not JSON"),
        (["--from-json", "{tmp}/other.json"], "--from-json {tmp}/other.json: no measurements"),
    ],
)
def test_grid_bill_refuses_bad_flags_before_measuring(tmp_path, capsys, flags, message):
    """--from-json and --config were tracebacks, --time-budget 0 meant no budget and a bad
    --out failed only at the first measurement written, minutes in."""
    (tmp_path / "afile").write_text("x,y\n")
    (tmp_path / "other.json").write_text('{"archs": [{"arch": 1}], "meta": {}}')
    argv = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    before = sorted(tmp_path.iterdir())
    _main_refuses(capsys, grid_bill.main, argv, message.replace("{tmp}", str(tmp_path)))
    assert sorted(tmp_path.iterdir()) == before


def test_grid_bill_out_replaces_only_an_empty_file_or_an_earlier_out(tmp_path):
    """--out overwrote whatever the path named (a mistyped path cost the user a file)."""
    earlier = tmp_path / "earlier.json"
    grid_bill.write_json(earlier, dict.fromkeys(grid_bill.META_KEYS, 1), {})
    (tmp_path / "empty.json").touch()
    # An older grid_bill's measurements (fields since renamed) are an earlier --out too.
    (tmp_path / "older.json").write_text('{"meta": {}, "archs": [{"old_field": 1}]}')
    for name in ("earlier.json", "empty.json", "new.json", "older.json"):
        grid_bill.check_out_file(tmp_path / name)
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    with pytest.raises(grid_bill.UserError, match=r"notes\.json: exists and is not a file"):
        grid_bill.check_out_file(tmp_path / "notes.json")
    assert (tmp_path / "notes.json").read_text() == '{"mine": 1}'


@pytest.mark.slow
def test_grid_bill_script_refuses_a_broken_config_in_one_line(tmp_path):
    """The script did not run under cli_main: a GridError (a UserError) was a traceback."""
    (tmp_path / "syntax.py").write_text("def get_config(:\n")
    out = _bench("grid_bill.py", "--config", str(tmp_path / "syntax.py"))
    _refused(out, f"--config {tmp_path / 'syntax.py'}: cannot be imported")


def test_input_pipeline_refuses_a_file_for_its_workdir(tmp_path):
    """--workdir naming a file was a FileExistsError traceback."""
    (tmp_path / "afile").write_text("mine")
    out = _bench("input_pipeline.py", "--workdir", str(tmp_path / "afile"))
    _refused(out, f"--workdir {tmp_path / 'afile'}: {tmp_path / 'afile'} is a file")
    assert (tmp_path / "afile").read_text() == "mine"


def _script(name: str):
    """benchmarks/<name>.py as a module of its own name (``checkpoints`` would shadow)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("script", "flags", "message"),
    [
        ("precision", ["--epochs", "0"], "--epochs must be in [1, 10000], got 0"),
        ("precision", ["--arch", "resnet5"], "--arch 'resnet5' is unknown"),
        ("precision", ["--image-size", "8"], "--image-size must be in [32, 1024], got 8"),
        ("checkpoints", ["--strategy", "nope"], "--strategy: invalid choice: 'nope'"),
        ("checkpoints", ["--epochs", "100000"], "--epochs must be in [1, 10000], got 100000"),
        ("end_to_end", ["--flag", "nope"], "--flag 'nope': unknown MedMNIST flag"),
        ("end_to_end", ["--flag", "breastmnist@64"], "did you mean breastmnist?"),
        ("end_to_end", ["--epochs", "0"], "--epochs must be in [1, 10000], got 0"),
    ],
)
def test_run_wrappers_check_flags_before_the_first_run(
    tmp_path, capsys, monkeypatch, script, flags, message
):
    """precision.py, checkpoints.py and end_to_end.py left their flags to experiments.run, a
    run later (end_to_end: after the whole PyTorch side)."""
    module = _script(script)

    def no_run(*args, **kwargs):
        raise AssertionError("experiments.run was started")

    monkeypatch.setattr(module.subprocess, "run", no_run)
    npz = tmp_path / "breastmnist.npz"
    npz.write_bytes(b"")
    extra = ["--npz", str(npz)] if script == "precision" else []
    _main_refuses(capsys, module.main, [*flags, *extra], message)


@pytest.mark.parametrize("script", ["precision", "checkpoints", "end_to_end"])
def test_run_wrappers_exit_with_a_failed_runs_status(tmp_path, capsys, monkeypatch, script):
    """A refused experiments.run (its one error line on stderr) was then a
    CalledProcessError traceback from the script; now the script exits with its status."""
    module = _script(script)
    calls = []

    def refused(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 2, "", "")

    monkeypatch.setattr(module.subprocess, "run", refused)
    npz = tmp_path / "breastmnist.npz"
    npz.write_bytes(b"")
    from medft_jax.errors import cli_main

    argv = ["--npz", str(npz)] if script == "precision" else []
    with pytest.raises(SystemExit) as exit_:
        cli_main(module.main, argv)
    assert exit_.value.code == 2 and len(calls) == 1
    assert capsys.readouterr().err == ""  # the child's line is the only one


def test_select_vs_grid_default_config_is_the_repositorys(tmp_path):
    """From any folder but the repository's, the default --config (relative to the cwd) was
    refused before --work was looked at; a --work that is a file was never refused."""
    (tmp_path / "afile").write_text("mine")
    out = _bench("select_vs_grid.py", "--work", str(tmp_path / "afile" / "w"), cwd=tmp_path)
    _refused(out, f"--work {tmp_path / 'afile' / 'w'}: {tmp_path / 'afile'} is a file")
    missing = _bench("select_vs_grid.py", "--grid-runs", str(tmp_path / "none"), cwd=tmp_path)
    _refused(missing, f"--grid-runs {tmp_path / 'none'}: no such folder")


@pytest.mark.parametrize(
    "script",
    [
        "checkpoints.py",
        "conv.py",
        "end_to_end.py",
        "gpu_rows.py",
        "input_pipeline.py",
        "precision.py",
        "select_vs_grid.py",
        "strategies.py",  # imports JAX first: one such process in the fast tier
        pytest.param("grid_bill.py", marks=pytest.mark.slow),
        pytest.param("models.py", marks=pytest.mark.slow),
    ],
)
def test_every_benchmark_says_a_flag_error_in_one_line(tmp_path, script):
    """Plain argparse printed its usage block first (3-9 lines), and took a flag given twice
    as the last one."""
    out_folder = ["."] if script == "gpu_rows.py" else []  # its one positional
    _refused(_bench(script, *out_folder, "--no-such-flag", cwd=tmp_path), "unrecognized arguments")
    flag, value = ("--steps", "3") if script in ("conv.py", "strategies.py") else ("--x", "")
    if value:
        _refused(_bench(script, flag, value, flag, value, cwd=tmp_path), f"{flag} given twice")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_child_status_is_passed_on_as_a_shell_gives_it():
    """One rule for the three wrappers: a refused run's 2, and a run killed by SIGKILL as
    137 (128 + 9), as a shell reports it; a child that succeeded returns."""
    from medft_jax.errors import exit_as_child

    assert exit_as_child(0) is None
    for returncode, status in ((2, 2), (-9, 137)):
        with pytest.raises(SystemExit) as exit_:
            exit_as_child(returncode)
        assert exit_.value.code == status


@pytest.mark.slow  # starts JAX twice in child processes
def test_gpu_sh_times_nothing_where_jax_has_no_gpu(tmp_path):
    """Run where JAX saw no GPU, gpu.sh timed ResNet-50 at 224 px on the CPU for ten
    minutes and wrote the rows under a "## GPU:" heading."""
    env = {**os.environ, "OUT": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    env.pop("SMOKE", None)
    done = subprocess.run(
        ["bash", str(BENCH / "gpu.sh")],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == (
        "gpu.sh: JAX's backend is cpu, expected gpu (a CUDA jaxlib); SMOKE=1 runs the "
        "commands on any machine"
    )
    assert (
        "setup: JAX's backend is cpu, not gpu: nothing timed" in (tmp_path / "gpu.txt").read_text()
    )
    assert not any((tmp_path / f"{step}.txt").exists() for step in ("models", "strategies"))


@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
def test_models_py_times_torch_on_the_kind_of_device_jax_runs_on(monkeypatch):
    """torch went to CUDA whenever it saw a GPU, whatever JAX ran on: a jaxlib without CUDA
    made the JAX/PyTorch ratio one of a CPU against a GPU."""
    torch = pytest.importorskip("torch")
    from medft_jax.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench_models.jax, "default_backend", lambda: "cpu")
    assert bench_models.torch_device() == "cpu"
    monkeypatch.setattr(bench_models.jax, "default_backend", lambda: "gpu")
    assert bench_models.torch_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"^JAX runs on a GPU that torch cannot see"):
        bench_models.torch_device()


def test_select_vs_grid_says_unknown_where_the_grid_cannot_judge_the_pick():
    """The grid's records lacking the pick's strategy: `same_strategy_and_lr` is null, which
    the table printed as "no", a pick that differs."""
    import select_vs_grid

    assert [select_vs_grid._same(v) for v in (True, False, None)] == ["yes", "no", "unknown"]
    tie = {"winner_by_val": {"strategy": "ft", "lr": 1e-3}}
    assert select_vs_grid._winner(tie) == "ft @ 0.001"
    tie["tied_by_val"] = [{"strategy": "ft", "lr": 1e-3}, {"strategy": "lp", "lr": 1e-3}]
    assert select_vs_grid._winner(tie) == "tie: ft @ 0.001, lp @ 0.001"


def test_select_vs_grid_rows_an_incomplete_grid_and_counts_device_seconds():
    """select's --json gives null fractions for an incomplete grid: the row's `:.0%` raised
    a TypeError after the whole selection. Its seconds column printed plain seconds beside
    a fraction of device-seconds (a grid on 4 devices: 100/400 = 100%)."""
    import select_vs_grid

    o = {
        "pick": {"strategy": "lp", "lr": 1e-3},
        "cost": {"epochs": 6.5, "seconds": 50.0, "device_seconds": 200.0},
        "grid": {
            "complete": True,
            "runs": 8,
            "runs_expected": 8,
            "epochs": 26,
            "seconds": 100.0,
            "device_seconds": 400.0,
            "fraction_epochs": 0.25,
            "fraction_seconds": 0.5,
            "winner_by_val": {"strategy": "ft", "lr": 1e-4},
            "same_strategy_and_lr": False,
        },
    }
    assert select_vs_grid._row("breastmnist", "resnet_tiny", o, 90.0) == (
        "| breastmnist | resnet_tiny | lp @ 0.001 | ft @ 0.0001 | no | 6.5/26 = 25% "
        "| 200/400 = 50% | 1.5 min |"
    )
    o["grid"].update(complete=False, runs=3, fraction_epochs=None, fraction_seconds=None)
    assert select_vs_grid._row("breastmnist", "resnet_tiny", o, 90.0) == (
        "| breastmnist | resnet_tiny | lp @ 0.001 | ft @ 0.0001 (grid incomplete: 3 of 8) "
        "| no | 6.5/26 | 200/400 | 1.5 min |"
    )


def _paper_variant(tmp_path: Path, name: str, **changes: object) -> Path:
    """A grid file: the paper's grid (ResNet-50 alone) with ``changes`` (Python literals)."""
    path = tmp_path / f"{name}.py"
    extra = "".join(f", {k}={v}" for k, v in changes.items())
    path.write_text(
        "import dataclasses\n"
        "from experiments.configs.paper import get_config as paper\n"
        "def get_config():\n"
        f"    return dataclasses.replace(paper(), archs=('resnet50',){extra})\n"
    )
    return path


def test_grid_bill_from_json_refuses_a_grid_other_than_the_one_measured(tmp_path, capsys):
    """--from-json bills the stages per epoch stored when measuring: a 12-epoch --config's
    "every (12)" row was the measured 50 epochs' bill, another strategy option's stages
    were the measured ones, a strategy not measured was a KeyError traceback, and
    --mean-epochs over the grid's epochs was billed as every epoch under its own label."""
    from medft_jax.grid import load_grid

    se = grid_bill.StrategyEpochs
    measured, paper = _times(), load_grid("paper")
    measured.steps = {(s, "all"): 0.5 for s in paper.strategies}
    measured.compile = dict.fromkeys(paper.strategies, 1.0)
    measured.epochs = {
        s: se(("all",) * 50, ("all",) * 50, (False,) * 50, 0, 0) for s in paper.strategies
    }
    meta = {**dict.fromkeys(grid_bill.META_KEYS, 1), "precisions": ["fp32"], "on_cpu": True}
    meta["schedule"] = grid_bill.schedule_of(paper)
    gb = tmp_path / "gb.json"
    grid_bill.write_json(gb, meta, {("resnet50", "fp32"): measured})
    capsys.readouterr()
    grids = BENCH.parent / "experiments" / "configs"
    twelve = _paper_variant(tmp_path, "twelve", settings="{**paper().settings, 'epochs': 12}")
    options = _paper_variant(
        tmp_path, "lp3", strategy_options="{**paper().strategy_options, 'lp_ft': {'lp_epochs': 3}}"
    )
    bitfit = _paper_variant(
        tmp_path, "bitfit", strategies="('ft', 'bitfit')", strategy_options="{}"
    )
    cases = [
        (twelve, [], f"--config {twelve}: at most 12 epochs, but --from-json {gb} was "
         "measured under 50; report it with the grid it measured"),
        (options, [], f"--config {options}: strategy_options['lp_ft'] {{'lp_epochs': 3}}, but "
         f"--from-json {gb} was measured under {{}}; report it with the grid it measured"),
        (bitfit, [], f"--config {bitfit}: strategy 'bitfit' was not measured in --from-json "
         f"{gb} (it holds {', '.join(paper.strategies)}); measure it"),
        (grids / "paper.py", ["--mean-epochs", "51"], "--mean-epochs 51: more than the grid's 50"),
        (grids / "paper.py", ["--tasks", "bach", "bach"], "--tasks: bach is listed twice"),
        (grids / "quick.py", [], f"--config {grids / 'quick.py'}: grid 'quick' holds 'demo', "
         "which grid_bill cannot bill"),
    ]  # fmt: skip
    for config, flags, message in cases:
        argv = ["--config", str(config), "--from-json", str(gb), *flags]
        _main_refuses(capsys, grid_bill.main, argv, message)
    # The grid it measured reports (its tables, from the stored stages).
    argv = ["--config", str(grids / "paper.py"), "--from-json", str(gb), "--tasks", "bach"]
    assert grid_bill.main(argv) == 0
    assert "| fp32, LP uncached | every (50) |" in capsys.readouterr().out
