"""The paper grid's bill in device-hours, projected from measured step times.

    python benchmarks/grid_bill.py                  # CPU: reduced size, says so
    python benchmarks/grid_bill.py --image-size 224 --batch 64 --precisions fp32 bf16
    python benchmarks/grid_bill.py --quick          # a one-minute smoke run (the tests')

On synthetic data (random uint8 images, no files), with each paper task's
nominal training-set size (``medft_jax.grid.NOMINAL_TRAIN_IMAGES``) and its
class count and loss (the task registry), it times through the toolkit's
own :class:`medft_jax.train.Trainer`, for each arch and precision:

- one train step of every stage of every strategy (compiled once, median of
  ``--steps``; ``benchmarks/strategies.py``'s timing), the Auto-RGN prepass
  batch where the grid asks for one, and the compile seconds of each
  strategy's trainer as a sweep process builds them one after the other;
- one evaluation batch (a validation or test batch), and one feature
  extraction batch (the backbone in inference mode);
- a head-only step from cached features (``from_features=True``) for the
  stages that may train from features computed once (LP, LP-FT's LP phase,
  G-LF's first stage where only the new head trains; ``frozen_bn='freeze'``);
- a best-parameters save and a resume save (``medft_jax.checkpoints``);
- a short epoch fed by a real ``Dataset.train_iter`` over in-memory images
  against the same steps on one resident batch (images/s, data + step vs
  step only).

It then projects every run of the grid (``--config``, default the paper's:
its tasks, archs, strategies, learning rates, seeds and settings)::

    run = sum over its epochs (steps_per_epoch x stage step + prepass + val pass)
          + compile share + test pass + checkpoint saves

with every epoch (the grid's maximum, the upper bound) and with a stated
mean epoch count under early stopping (``--mean-epochs``; never below a
strategy's last stage + patience + 1), for fp32 and bf16 and with LP
cached or not (cached: head-only epochs cost head steps, plus one feature
extraction over train+val per (task, arch, precision)). It prints the
step and epoch table, the device-hours of each variant, the per-run
overhead as a share of the grid, the data-fed epoch's images/s ratio, and
the issue's goal lines with PASS / FAIL / not measured.

On a CPU (``jax.default_backend() == 'cpu'``) the default is a reduced size
(64 px, batch 8, ResNet-50 and the strategies that share its two gradient
programs; fp32): the real archs, few steps, step times scaled to the grid's
size and batch by the pixel and batch ratios, and the output says it is a
CPU projection. On a GPU the defaults are the grid's size and batch and
every arch, strategy and precision. Every (arch, precision) gets its core
first (FT's step, eval, feature and checkpoint times, then LP's step from
features: the issue's "LP cached" rows are measured, not bounded), then the
other strategies arch by arch, the gradual ones (a compilation per stage)
last. ``--time-budget``: nothing is started that is predicted to end after
it (a core as long as the longest so far, a strategy from FT's own
measurement); what was not measured is bounded (a stage never costs more
than FT's step, which trains a superset) and labelled. L2-SP, L1-SP and
Auto-RGN priced at FT's step are a lower bound (their update adds work to
Adam's), so a bill under the goal with such stages is not a PASS.
``--out`` writes the measurements as they come (JSON), and ``--from-json``
prints the report from such a file. A SIGTERM (``timeout``) ends the
measuring at once, even mid-compilation, and prints the report of what was
measured.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from models import median_seconds  # benchmarks/models.py, beside this script
from strategies import (
    head_step_seconds,
    step_seconds,
)  # benchmarks/strategies.py, beside this script

from medft_jax import strategies
from medft_jax.checkpoints.run import RunCheckpoints
from medft_jax.data.arrays import make_split
from medft_jax.data.dataset import Dataset
from medft_jax.environment import machine_line
from medft_jax.errors import ArgumentParser, UserError, cli_main, exit_command
from medft_jax.fit import checkpoint_seconds
from medft_jax.grid import NOMINAL_TRAIN_IMAGES, Grid, load_grid
from medft_jax.models import COMPUTE_DTYPES, create, get_arch, init_variables
from medft_jax.names import TASK_NAMES
from medft_jax.runtime import tune_cpu_host
from medft_jax.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
VAL_FRACTION, TEST_FRACTION = 0.10, 0.20
"""The val and test sizes assumed, as fractions of the nominal training set."""
GOAL_HOURS = 24.0
GOAL_OVERHEAD = 0.02
GOAL_DATA_RATIO = 0.95
COSTLIER_UPDATE = frozenset({"l2_sp", "l1_sp", "auto_rgn"})
"""Strategies whose update adds work to Adam's (the SP penalty's distance to the
start, Auto-RGN's per-layer gradient norms): a stage priced at another
strategy's step bills them too little (L2-SP measured 1.04x FT's on the H200)."""
CPU_DEFAULTS = {
    "image_size": 64,
    "batch": 8,
    "steps": 3,
    "data_steps": 6,
    "archs": ["resnet50"],
    # The strategies that share FT's and LP's gradient programs (each of
    # G-LF's and G-FL's stages is another compilation, a minute on a CPU).
    "strategies": ["ft", "lp", "lp_ft", "l1_sp", "l2_sp", "auto_rgn"],
    "precisions": ["fp32"],
}
QUICK = {
    "image_size": 32,
    "batch": 4,
    "steps": 1,
    "data_steps": 3,
    "archs": ["resnet50"],
    "strategies": ["ft", "lp"],
    "precisions": ["fp32"],
}


# --- the projection: pure arithmetic on measured seconds ------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """One kind of run of the grid as counts and seconds: what :func:`project` sums.

    Attributes:
      runs: how many runs of the grid are this one (learning rates x seeds).
      epoch_train: seconds of the train steps (and prepass) of each epoch the
        run may train, in order (``len`` = the grid's maximum epochs).
      epoch_val: seconds of each epoch's validation pass.
      test: the test pass at the end.
      resume_save: one resume checkpoint (and the best save it makes first).
      best_save: the best save at the finish.
      compile: this run's share of its compilations.
      min_epochs: epochs early stopping cannot cut (last stage + patience + 1).
      checkpoint_seconds: training seconds between resume checkpoints
        (``medft_jax.fit.checkpoint_seconds``; 0: after every epoch).
    """

    runs: int
    epoch_train: tuple[float, ...]
    epoch_val: tuple[float, ...]
    test: float
    resume_save: float
    best_save: float
    compile: float
    min_epochs: int = 1
    checkpoint_seconds: float = 0.0


@dataclasses.dataclass(frozen=True)
class Cost:
    """Seconds of a set of runs, by kind; ``fixed`` is the per-run overhead."""

    train: float = 0.0
    val: float = 0.0
    fixed: float = 0.0
    one_time: float = 0.0

    @property
    def total(self) -> float:
        return self.train + self.val + self.fixed + self.one_time

    @property
    def hours(self) -> float:
        return self.total / 3600

    def __add__(self, other: Cost) -> Cost:
        return Cost(*(a + b for a, b in zip(_fields(self), _fields(other), strict=True)))


def _fields(cost: Cost) -> tuple[float, ...]:
    return tuple(getattr(cost, f.name) for f in dataclasses.fields(cost))


def epochs_trained(plan: RunPlan, epochs: int | None) -> int:
    """Epochs the run trains: ``epochs`` (None: every one), never below its ``min_epochs``."""
    most = len(plan.epoch_train)
    return most if epochs is None else min(most, max(epochs, plan.min_epochs))


def run_cost(plan: RunPlan, epochs: int | None) -> Cost:
    """One run's seconds: its epochs' steps and validations, and its fixed costs."""
    n = epochs_trained(plan, epochs)
    return Cost(
        train=sum(plan.epoch_train[:n]),
        val=sum(plan.epoch_val[:n]),
        fixed=plan.compile + plan.test + resume_points(plan, n) * plan.resume_save + plan.best_save,
    )


def resume_points(plan: RunPlan, epochs: int) -> int:
    """Resume checkpoints a run of ``epochs`` makes: after an epoch that ends
    ``checkpoint_seconds`` or more after the last one (never after its last epoch)."""
    saves, since = 0, 0.0
    for e in range(epochs - 1):
        since += plan.epoch_train[e] + plan.epoch_val[e]
        if since >= plan.checkpoint_seconds:
            saves, since = saves + 1, 0.0
    return saves


def project(plans: Iterable[RunPlan], epochs: int | None, one_time: float = 0.0) -> Cost:
    """The grid's seconds: every plan's runs, plus one-time work (feature extraction)."""
    total = Cost(one_time=one_time)
    for plan in plans:
        c = run_cost(plan, epochs)
        total += Cost(c.train * plan.runs, c.val * plan.runs, c.fixed * plan.runs)
    return total


def scale_factor(image_size: int, batch: int, grid_size: int, grid_batch: int) -> float:
    """What a step timed at ``image_size``/``batch`` is multiplied by for the grid's size.

    Pixels and batch ratios: a convolutional step's work is linear in both.
    A crude projection across sizes (fixed per-step costs scale too), exact
    (1.0) when measured at the grid's size.
    """
    return (grid_size / image_size) ** 2 * (grid_batch / batch)


# --- the tasks -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskFacts:
    name: str
    train: int
    val: int
    test: int
    num_classes: int
    multilabel: bool

    def steps_per_epoch(self, batch: int) -> int:
        return self.train // batch  # the remainder is dropped, as Dataset.steps_per_epoch does


def task_facts(names: Sequence[str]) -> list[TaskFacts]:
    """Sizes (nominal train; val and test as assumed fractions) and heads from the registry."""
    from medft_jax.data.builders import builder_class  # imports tensorflow_datasets

    out = []
    for name in names:
        if name not in NOMINAL_TRAIN_IMAGES:
            raise UserError(f"--tasks {name}: no nominal training-set size in medft_jax.grid")
        task = builder_class(name).TASK
        n = NOMINAL_TRAIN_IMAGES[name]
        out.append(
            TaskFacts(
                name,
                n,
                math.ceil(VAL_FRACTION * n),
                math.ceil(TEST_FRACTION * n),
                len(task.class_names),
                bool(task.multilabel),
            )
        )
    return out


# --- measuring -----------------------------------------------------------------------------------


def stage_key(schedule: strategies.Schedule, params: Any, epoch: int) -> tuple:
    """What a stage's step time depends on: its trainable leaves and BatchNorm mode."""
    mask = tuple(bool(m) for m in jax.tree.leaves(schedule.trainable_mask(params, epoch)))
    bn = schedule.bn_train(epoch)
    return mask, bn if isinstance(bn, bool) else frozenset(bn)


def stage_epochs(schedule: strategies.Schedule, params: Any, epochs: int) -> dict[tuple, int]:
    """Each distinct stage of ``schedule`` -> the first epoch it trains."""
    first: dict[tuple, int] = {}
    for epoch in range(epochs):
        first.setdefault(stage_key(schedule, params, epoch), epoch)
    return first


@dataclasses.dataclass(frozen=True)
class StrategyEpochs:
    """A strategy's epochs as the projection needs them (from its schedules, no timing)."""

    keys: tuple[tuple, ...]
    """Each epoch's stage key under the grid's ``frozen_bn`` (images)."""
    freeze_keys: tuple[tuple, ...]
    """Each epoch's stage key under ``frozen_bn='freeze'`` (the cached variant)."""
    head_only: tuple[bool, ...]
    """Each epoch: only the new head trains, so it may train from cached features."""
    final_stage_epoch: int
    prepass_batches: int
    """Gradient evaluations before each epoch (Auto-RGN's prepass), 0 if none."""

    @property
    def num_stages(self) -> int:
        return len(set(self.keys))


def strategy_epochs(
    name: str, params: Any, partition: Any, *, epochs: int, frozen_bn: str, options: dict
) -> StrategyEpochs:
    """Strategy ``name``'s stage per epoch, under the grid's BatchNorm mode and under freeze."""

    def schedule(mode: str) -> strategies.Schedule:
        return strategies.make(
            name,
            params,
            partition,
            learning_rate=1.0,
            # Longer than any prepass, so its batches are not capped here: cell_plan caps
            # them at each task's own epoch (stages are in epochs, so nothing else changes).
            steps_per_epoch=1_000,
            frozen_bn=mode,
            **options,
        ).schedule

    update, freeze = schedule(frozen_bn), schedule("freeze")
    return StrategyEpochs(
        keys=tuple(stage_key(update, params, e) for e in range(epochs)),
        freeze_keys=tuple(stage_key(freeze, params, e) for e in range(epochs)),
        head_only=tuple(freeze.head_only(e) for e in range(epochs)),
        final_stage_epoch=update.final_stage_epoch,
        prepass_batches=update.prepass.batches if update.prepass is not None else 0,
    )


@dataclasses.dataclass
class ArchTimes:
    """What was measured for one (arch, precision), in seconds at the measured size.

    Image-step and eval seconds are at the measured image size and batch
    (``scale`` converts them to the grid's); head steps from features are
    timed at the grid's batch (features do not depend on the image size).
    """

    arch: str
    precision: str
    scale: float
    steps: dict[tuple[str, tuple], float] = dataclasses.field(default_factory=dict)
    """(strategy, stage key) -> s/step from images."""
    cached: dict[tuple[str, tuple], float] = dataclasses.field(default_factory=dict)
    """(strategy, stage key) -> s/step from features (head-only stages)."""
    compile: dict[str, float] = dataclasses.field(default_factory=dict)
    """strategy -> its trainer's compile seconds (train stages), in measurement order."""
    cached_compile: dict[str, float] = dataclasses.field(default_factory=dict)
    """strategy -> compile seconds of its step from features."""
    epochs: dict[str, StrategyEpochs] = dataclasses.field(default_factory=dict)
    """Every grid strategy's epochs (measured or not)."""
    prepass_batch: float | None = None
    eval_batch: float = math.nan
    head_eval_batch: float = math.nan
    extract_batch: float = math.nan
    eval_compile: float = 0.0
    feature_compile: float = 0.0
    ckpt_latest: float = math.nan
    ckpt_latest_background: float = math.nan
    ckpt_best: float = math.nan
    feature_dim: int = 0


@dataclasses.dataclass(frozen=True)
class Setup:
    """The measurement's fixed inputs."""

    grid: Grid
    tasks: list[TaskFacts]
    image_size: int
    batch: int
    steps: int
    data_steps: int
    grid_size: int
    grid_batch: int
    deadline: float

    @property
    def timing_task(self) -> TaskFacts:
        """The head the backbones are timed with: the largest task's (it dominates the bill)."""
        return max(self.tasks, key=lambda t: t.train)

    def options(self, strategy: str) -> dict[str, Any]:
        return dict(self.grid.strategy_options.get(strategy, {}))


def random_labels(rng: np.random.Generator, n: int, task: TaskFacts) -> np.ndarray:
    if task.multilabel:
        return rng.integers(0, 2, (n, task.num_classes)).astype(np.float32)
    return rng.integers(0, task.num_classes, (n,)).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class _Context:
    """What every strategy of one (arch, precision) is measured with."""

    setup: Setup
    times: ArchTimes
    task: TaskFacts
    spec: Any
    model: Any
    variables: Any
    x_host: np.ndarray
    y_host: np.ndarray
    frozen_bn: str

    def strategy(self, name: str, frozen_bn: str) -> strategies.Strategy:
        return strategies.make(
            name,
            self.variables["params"],
            self.spec.partition,
            learning_rate=1.0,  # the trainer applies the rate, as in medft_jax.fit
            steps_per_epoch=self.task.steps_per_epoch(self.setup.grid_batch),
            frozen_bn=frozen_bn,
            **self.setup.options(name),
        )

    def trainer(self, name: str, frozen_bn: str) -> tuple[strategies.Strategy, Trainer, Any]:
        """Strategy ``name``, its trainer at this precision, and its initial state."""
        strat = self.strategy(name, frozen_bn)
        trainer = Trainer(
            self.model,
            strat.tx,
            multilabel=self.task.multilabel,
            compute_dtype=COMPUTE_DTYPES[self.times.precision],
            learning_rate=1e-4,
        )
        return strat, trainer, trainer.init_state(self.variables)


@dataclasses.dataclass
class ArchRun:
    """One (arch, precision) being measured: its times so far and what measures the rest."""

    ctx: _Context
    ft: tuple[Trainer, Any, strategies.Schedule] | None = None
    ft_wall: float = math.nan
    """Wall seconds of FT's own measurement (compiles and steps): the unit of predictions."""
    core_wall: float = math.nan
    """Wall seconds of the core (FT, eval, features, checkpoints, LP from features)."""

    @property
    def times(self) -> ArchTimes:
        return self.ctx.times


def start_arch(setup: Setup, arch: str, precision: str) -> ArchRun:
    """The model, its variables and every grid strategy's epochs (nothing compiled but init)."""
    task, spec = setup.timing_task, get_arch(arch)
    model = create(arch, task.num_classes, dtype=COMPUTE_DTYPES[precision])
    variables = jax.device_get(init_variables(model, 0, 32))
    params = variables["params"]
    rng = np.random.default_rng(0)
    shape = (setup.batch, setup.image_size, setup.image_size, 3)
    x_host = rng.integers(0, 256, shape, np.uint8)
    y_host = random_labels(rng, setup.batch, task)
    settings = setup.grid.config(task.name, arch, "ft", 1e-4, 0)
    times = ArchTimes(
        arch,
        precision,
        scale_factor(setup.image_size, setup.batch, setup.grid_size, setup.grid_batch),
    )
    for name in setup.grid.strategies:
        times.epochs[name] = strategy_epochs(
            name,
            params,
            spec.partition,
            epochs=settings.epochs,
            frozen_bn=settings.frozen_bn,
            options=setup.options(name),
        )
    ctx = _Context(setup, times, task, spec, model, variables, x_host, y_host, settings.frozen_bn)
    return ArchRun(ctx)


def measure_core(run: ArchRun, publish: Callable[[], None]) -> None:
    """FT's step, eval and feature batches, checkpoint saves, then LP's step from features.

    What every projection of the arch needs, and the issue's headline (LP
    cached): the head step from features is one small program, so it is
    timed for every arch right after FT. ``publish`` is called as soon as
    the arch can be projected, and again after LP's cached step.
    """
    ctx, times = run.ctx, run.ctx.times
    t0 = time.perf_counter()
    trainer, state, schedule = measure_strategy(ctx, "ft")
    run.ft_wall = time.perf_counter() - t0
    eval_times(ctx.setup, times, trainer, state, ctx.x_host)
    checkpoint_times(times, state, times.arch, ctx.task, ctx.spec)
    run.ft = trainer, state, schedule
    publish()
    lp = "lp" if "lp" in ctx.setup.grid.strategies else None
    lp = lp or next((s for s in ctx.setup.grid.strategies if any(times.epochs[s].head_only)), None)
    if lp is not None and not any(s == lp for s, _ in times.cached):
        cached_only(ctx, lp)
        publish()
    run.core_wall = time.perf_counter() - t0


def cached_only(ctx: _Context, name: str) -> None:
    """Strategy ``name``'s head step from features alone (no image step compiled)."""
    params, times = ctx.variables["params"], ctx.times
    strat, trainer, state = ctx.trainer(name, "freeze")
    epoch = times.epochs[name].head_only.index(True)
    cached_step(ctx.setup, times, trainer, state, name, strat.schedule, params, epoch)


def predicted_seconds(run: ArchRun, name: str) -> float:
    """A heuristic of what measuring strategy ``name`` will take, from FT's own measurement.

    Each stage whose trainable set was not timed yet needs a gradient program
    compiled: as long as FT's measurement took. A stage already timed (its
    gradient program shared) costs its update program and steps: a fifth of it.
    Auto-RGN's prepass is one more gradient program.
    """
    times, unit = run.times, run.ft_wall
    ep = times.epochs[name]
    timed = {k for _, k in times.steps}
    seconds = sum(unit if k not in timed else unit / 5 for k in dict.fromkeys(ep.keys))
    return seconds + (unit if ep.prepass_batches else 0.0)


def measure_rest(
    run: ArchRun,
    measure: Sequence[str],
    *,
    deadline: float,
    data_ratio: dict | None,
    publish: Callable[[], None],
) -> None:
    """The strategies in ``measure`` other than FT, in order, each only when predicted to
    end before ``deadline`` (``time.perf_counter()``); then FT again, its faster time kept
    (as ``benchmarks/strategies.py`` does: a disturbance at the start shows as a gap).
    ``data_ratio``: a dict to fill with LP's data-fed epoch's images/s, or None."""
    ctx, times = run.ctx, run.times
    arch, precision, params = times.arch, times.precision, ctx.variables["params"]
    for name in measure:
        if name == "ft":
            continue
        left = deadline - time.perf_counter()
        need = predicted_seconds(run, name)
        if need > left:
            print(
                f"# time budget: {arch} {precision} {name} not measured (predicted "
                f"{need:.0f} s, {max(left, 0):.0f} s left)",
                flush=True,
            )
            continue
        trainer, state, schedule = measure_strategy(ctx, name)
        if data_ratio is not None and name == "lp":
            kw = {"trainable": schedule.trainable_mask(params, 0), "bn_train": schedule.bn_train(0)}
            data_ratio[name], state = data_fed_ratio(
                ctx.setup, trainer, state, kw, ctx.x_host, ctx.task
            )
        del state
        publish()
    ft_again(run)
    publish()


def ft_again(run: ArchRun) -> None:
    """FT's step timed again (compiled already: a few steps), the faster kept."""
    times = run.times
    trainer, state, schedule = run.ft
    params = run.ctx.variables["params"]
    key = times.epochs["ft"].keys[0]
    x, y = trainer.shard_batch(run.ctx.x_host), trainer.shard_batch(run.ctx.y_host)
    kw = {"trainable": schedule.trainable_mask(params, 0), "bn_train": schedule.bn_train(0)}
    again, state = step_seconds(trainer, state, x, y, steps=run.ctx.setup.steps, **kw)
    run.ft = trainer, state, schedule
    print(f"# {times.arch} {times.precision} ft again: {again:.4f} s/step", flush=True)
    times.steps[("ft", key)] = min(times.steps[("ft", key)], again)


def data_fed_ft(run: ArchRun, data_ratio: dict) -> None:
    """FT's data-fed epoch against the resident one (the first arch only)."""
    trainer, state, schedule = run.ft
    params = run.ctx.variables["params"]
    kw = {"trainable": schedule.trainable_mask(params, 0), "bn_train": schedule.bn_train(0)}
    data_ratio["ft"], state = data_fed_ratio(
        run.ctx.setup, trainer, state, kw, run.ctx.x_host, run.ctx.task
    )
    run.ft = trainer, state, schedule


def measure_strategy(ctx: _Context, name: str) -> tuple[Trainer, Any, strategies.Schedule]:
    """Every stage of strategy ``name`` (its step, its compile seconds; the prepass, and the
    step from features where it has head-only epochs); returns its trainer and state."""
    times, params = ctx.times, ctx.variables["params"]
    strat, trainer, state = ctx.trainer(name, ctx.frozen_bn)
    if strat.schedule.prepass is not None:  # as fit does before an epoch: its updates are
        state = trainer.estimate_rgn(  # NaN until the first multipliers are held
            state,
            [{"image": ctx.x_host, "label": ctx.y_host}],
            trainable=strat.schedule.trainable_mask(params, 0),
            bn_train=strat.schedule.bn_train(0),
            prepass=strat.schedule.prepass,
        )
    x, y = trainer.shard_batch(ctx.x_host), trainer.shard_batch(ctx.y_host)
    for key, epoch in stage_epochs(strat.schedule, params, len(times.epochs[name].keys)).items():
        kw = {
            "trainable": strat.schedule.trainable_mask(params, epoch),
            "bn_train": strat.schedule.bn_train(epoch),
        }
        sec, state = step_seconds(trainer, state, x, y, steps=ctx.setup.steps, **kw)
        times.steps[(name, key)] = sec
        print(
            f"# {times.arch} {times.precision} {name} epoch {epoch}: {sec:.4f} s/step", flush=True
        )
    if strat.schedule.prepass is not None:
        times.prepass_batch = prepass_seconds(
            trainer, state, strat.schedule, params, ctx.x_host, ctx.y_host, ctx.setup.steps
        )
    times.compile[name] = trainer.compile_seconds  # the prepass's program included, as fit's
    head_only = times.epochs[name].head_only
    if any(head_only) and not any(s == name for s, _ in times.cached):
        freeze = ctx.strategy(name, "freeze").schedule
        state = cached_step(
            ctx.setup, times, trainer, state, name, freeze, params, head_only.index(True)
        )
    return trainer, state, strat.schedule


def prepass_seconds(
    trainer: Trainer,
    state: Any,
    schedule: strategies.Schedule,
    params: Any,
    x_host: np.ndarray,
    y_host: np.ndarray,
    steps: int,
) -> float:
    """One Auto-RGN prepass batch (a gradient evaluation, nothing updated), compiled first."""
    kw = {
        "trainable": schedule.trainable_mask(params, 0),
        "bn_train": schedule.bn_train(0),
        "prepass": schedule.prepass,
    }
    batch = [{"image": x_host, "label": y_host}]

    def one() -> None:
        jax.block_until_ready(trainer.estimate_rgn(state, batch, **kw).opt_state)

    return median_seconds(one, steps)


def eval_times(
    setup: Setup, times: ArchTimes, trainer: Trainer, state: Any, x_host: np.ndarray
) -> None:
    """An eval batch (logits), a feature-extraction batch, and their compile seconds."""
    batch = [{"image": x_host, "mask": np.ones(len(x_host), bool)}]
    before = trainer.compile_seconds
    times.eval_batch = median_seconds(lambda: trainer.predict(state, batch), setup.steps)
    times.eval_compile = trainer.compile_seconds - before
    before = trainer.compile_seconds
    feats: list[np.ndarray] = []
    times.extract_batch = median_seconds(
        lambda: feats.append(next(iter(trainer.features(state, batch)))), setup.steps
    )
    times.feature_compile = trainer.compile_seconds - before
    times.feature_dim = int(np.prod(feats[-1].shape[1:]))


def cached_step(
    setup: Setup,
    times: ArchTimes,
    trainer: Trainer,
    state: Any,
    name: str,
    freeze: strategies.Schedule,
    params: Any,
    epoch: int,
) -> Any:
    """The head-only step from features at the grid's batch, and a head eval batch."""
    rng = np.random.default_rng(1)
    task = setup.timing_task
    f_host = rng.standard_normal((setup.grid_batch, times.feature_dim), np.float32)
    y_host = random_labels(rng, setup.grid_batch, task)
    trainable, bn = freeze.trainable_mask(params, epoch), freeze.bn_train(epoch)
    before = trainer.compile_seconds
    sec, state = head_step_seconds(trainer, state, f_host, y_host, trainable, bn, setup.steps)
    times.cached[(name, stage_key(freeze, params, epoch))] = sec
    times.cached_compile[name] = trainer.compile_seconds - before
    if math.isnan(times.head_eval_batch):
        batch = [{"image": f_host, "mask": np.ones(len(f_host), bool)}]
        times.head_eval_batch = median_seconds(
            lambda: trainer.predict(state, batch, from_features=True), setup.steps
        )
    print(f"# {times.arch} {times.precision} {name} from features: {sec:.5f} s/step", flush=True)
    return state


def checkpoint_times(times: ArchTimes, state: Any, arch: str, task: TaskFacts, spec: Any) -> None:
    """A resume save (its blocking part, then its background write) and a best save."""
    folder = Path(tempfile.mkdtemp(prefix="medft-grid-bill-"))
    try:
        with RunCheckpoints(folder / "run", exclusive=True) as ckpts:
            t = time.perf_counter()
            ckpts.save_latest(1, state, {"epochs": []})
            times.ckpt_latest = time.perf_counter() - t
            ckpts.close()
            times.ckpt_latest_background = time.perf_counter() - t - times.ckpt_latest
            meta = {
                "arch": arch,
                "num_classes": task.num_classes,
                "multilabel": task.multilabel,
                "class_names": [str(i) for i in range(task.num_classes)],
                "resize_size": spec.resize_for(224),
                "crop_size": 224,
                "source": "benchmarks/grid_bill.py",
            }
            t = time.perf_counter()
            ckpts.save_best(state.variables, meta)
            times.ckpt_best = time.perf_counter() - t
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def data_fed_ratio(
    setup: Setup,
    trainer: Trainer,
    state: Any,
    kw: dict[str, Any],
    x_host: np.ndarray,
    task: TaskFacts,
) -> tuple[dict[str, float], Any]:
    """Images/s of ``data_steps`` steps fed by ``Dataset.train_iter`` vs on one resident batch.

    The fed loop is the training loop's (``medft_jax.fit``): shard each
    batch, step, read the loss one step late; the iterator is created inside
    the clock, as an epoch's is.
    """
    n = setup.data_steps * setup.batch
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (n, *x_host.shape[1:]), np.uint8)
    split = make_split(images, random_labels(rng, n, task), prefix="train/")
    ds = Dataset(
        name="synthetic",
        splits={"train": split},
        class_names=tuple(str(i) for i in range(task.num_classes)),
        multilabel=task.multilabel,
    )

    def fed() -> float:
        nonlocal state
        t = time.perf_counter()
        pending = None
        for batch in ds.train_iter(setup.batch, seed=0, epoch=0):
            x, y = trainer.shard_batch(batch["image"]), trainer.shard_batch(batch["label"])
            state, loss = trainer.train_step(state, x, y, **kw)
            if pending is not None:
                float(pending)
            pending = loss
        float(pending)
        return time.perf_counter() - t

    y_res = random_labels(rng, setup.batch, task)
    x_res, y_res = trainer.shard_batch(x_host), trainer.shard_batch(y_res)

    def resident() -> float:
        nonlocal state
        t = time.perf_counter()
        pending = None
        for _ in range(setup.data_steps):
            state, loss = trainer.train_step(state, x_res, y_res, **kw)
            if pending is not None:
                float(pending)
            pending = loss
        float(pending)
        return time.perf_counter() - t

    resident()  # warm: both loops' programs are compiled already
    fed_s = min(fed(), fed())
    res_s = min(resident(), resident())
    return {"fed": n / fed_s, "resident": n / res_s, "ratio": res_s / fed_s}, state


# --- from measurements to run plans --------------------------------------------------------------


@dataclasses.dataclass
class Bounds:
    """The stages whose time was not measured for their own strategy (see :func:`stage_step`).

    Sets of ``(arch, strategy, stage key)``: each distinct stage counts once,
    however many epochs and tasks it runs in.
    """

    other_strategy: set[tuple] = dataclasses.field(default_factory=set)
    ft_bound: set[tuple] = dataclasses.field(default_factory=set)
    lower: set[tuple] = dataclasses.field(default_factory=set)
    """Of ``other_strategy``, those of :data:`COSTLIER_UPDATE`: billed too little."""
    no_features: set[tuple] = dataclasses.field(default_factory=set)
    """Head-only stages of a cached variant with no step from features timed for any
    strategy: billed from images (an upper bound, and not a cached measurement)."""

    def note(self) -> str:
        parts = []
        if self.no_features:
            parts.append(
                f"{_stages(self.no_features)} of cached LP with no step from features "
                "timed (billed from images)"
            )
        if self.other_strategy - self.lower:
            parts.append(
                f"{_stages(self.other_strategy - self.lower)} timed under another strategy"
            )
        if self.lower:
            parts.append(
                f"{_stages(self.lower)} of L2-SP, L1-SP or Auto-RGN at another strategy's "
                "step (lower bound: their update adds work)"
            )
        if self.ft_bound:
            parts.append(f"{_stages(self.ft_bound)} at FT's step (upper bound)")
        return "; ".join(parts)


def _stages(keys: set[tuple]) -> str:
    return f"{len(keys)} stage{'s' if len(keys) != 1 else ''}"


def stage_step(
    times: ArchTimes,
    table: Mapping[tuple[str, tuple], float],
    name: str,
    key: tuple,
    fallback: float,
    bounds: Bounds,
) -> float:
    """A stage's s/step: measured for ``name``, else for another strategy, else ``fallback``.

    The same trainable set and BatchNorm mode run the same gradient program
    whatever the strategy (only the optimizer's update differs); a stage
    measured for no strategy is bounded by ``fallback`` (FT's step: every
    stage trains a subset of FT's parameters).
    """
    if (name, key) in table:
        return table[(name, key)]
    same = {s: sec for (s, k), sec in table.items() if k == key}
    if same:
        bounds.other_strategy.add((times.arch, name, key))
        if name in COSTLIER_UPDATE:
            bounds.lower.add((times.arch, name, key))
        # FT's own step where it is the same stage (Adam on the same set, as a gradual
        # strategy's last stage), else the slowest measurement of it.
        return same.get("ft", max(same.values()))
    bounds.ft_bound.add((times.arch, name, key))
    return fallback


@dataclasses.dataclass(frozen=True)
class Variant:
    precision: str
    cached: bool

    @property
    def label(self) -> str:
        return f"{self.precision}, LP {'cached' if self.cached else 'uncached'}"


def ft_step(times: ArchTimes) -> float:
    return times.steps[("ft", times.epochs["ft"].keys[0])]


def cell_plan(
    times: ArchTimes,
    name: str,
    task: TaskFacts,
    *,
    cached: bool,
    runs: int,
    batch: int,
    patience: int,
    bounds: Bounds,
) -> RunPlan:
    """The :class:`RunPlan` of (task, ``times.arch``, ``name``) from the measurements.

    Seconds at the grid's size and batch; ``cached``: head-only epochs
    train and validate from features.
    """
    ep, ft = times.epochs[name], ft_step(times)
    spe = task.steps_per_epoch(batch)
    val_batches, test_batches = math.ceil(task.val / batch), math.ceil(task.test / batch)
    # Seconds at the measured size, as ft is (scaled below); unmeasured: one FT step bounds it.
    prepass = times.prepass_batch if times.prepass_batch is not None else ft
    train, val = [], []
    for epoch, key in enumerate(ep.keys):
        fkey = ep.freeze_keys[epoch]
        if cached and ep.head_only[epoch] and any(k == fkey for _, k in times.cached):
            sec = stage_step(times, times.cached, name, fkey, math.nan, bounds)
            train.append(spe * sec)
            head_eval = times.head_eval_batch
            if math.isnan(head_eval):  # no step from features timed: the image pass bounds it
                head_eval = times.eval_batch * times.scale
            val.append(val_batches * head_eval)
            continue
        if cached and ep.head_only[epoch]:  # no step from features timed for this stage
            bounds.no_features.add((times.arch, name, fkey))
        sec = stage_step(times, times.steps, name, key, ft, bounds) * times.scale
        # A run's prepass takes no more batches than an epoch has (as fit's does).
        train.append(spe * sec + min(ep.prepass_batches, spe) * prepass * times.scale)
        val.append(val_batches * times.eval_batch * times.scale)
    if name in times.compile:
        compile_s = times.compile[name] + (times.cached_compile.get(name, 0.0) if cached else 0.0)
    else:  # one FT-sized compilation per stage (an upper bound)
        compile_s = ep.num_stages * times.compile["ft"]
    return RunPlan(
        runs=runs,
        epoch_train=tuple(train),
        epoch_val=tuple(val),
        test=test_batches * times.eval_batch * times.scale,
        resume_save=times.ckpt_latest + times.ckpt_best,  # a best save first: at most
        best_save=times.ckpt_best,
        compile=(compile_s + times.eval_compile) / runs,
        min_epochs=min(len(ep.keys), ep.final_stage_epoch + patience + 1),
        checkpoint_seconds=checkpoint_seconds(),
    )


def extraction_seconds(times: ArchTimes, task: TaskFacts, batch: int) -> float:
    """One pass of the backbone over train + val (the splits whose features are cached,
    ``medft_jax.features.SPLITS``: test is scored from its images), and its compilation."""
    batches = math.ceil((task.train + task.val) / batch)
    return batches * times.extract_batch * times.scale + times.feature_compile


@dataclasses.dataclass
class Projection:
    """A variant's projected grid, with the cells it could not measure."""

    variant: Variant
    plans: list[RunPlan]
    one_time: float
    missing_runs: int
    bounds: Bounds

    def cost(self, epochs: int | None) -> Cost:
        return project(self.plans, epochs, self.one_time)


def project_variant(
    grid: Grid, tasks: list[TaskFacts], measured: Mapping[tuple[str, str], ArchTimes], v: Variant
) -> Projection:
    settings = grid.config(tasks[0].name, grid.archs[0], grid.strategies[0], 1e-4, 0)
    runs = len(grid.lrs) * len(grid.seeds)
    plans, one_time, missing, bounds = [], 0.0, 0, Bounds()
    for task in tasks:
        for arch in grid.archs:
            times = measured.get((arch, v.precision))
            if times is None:
                missing += runs * len(grid.strategies)
                continue
            for name in grid.strategies:
                plans.append(
                    cell_plan(
                        times,
                        name,
                        task,
                        cached=v.cached,
                        runs=runs,
                        batch=settings.batch_size,
                        patience=settings.patience,
                        bounds=bounds,
                    )
                )
            if v.cached and any(any(times.epochs[s].head_only) for s in grid.strategies):
                one_time += extraction_seconds(times, task, settings.batch_size)
    return Projection(v, plans, one_time, missing, bounds)


# --- the report ----------------------------------------------------------------------------------


def hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f}"


def ratio(x: float) -> str:
    return f"{x:.3f}" if x >= 0.001 else f"{x:.1e}"


def epoch_table(
    grid: Grid, task: TaskFacts, measured: Mapping[tuple[str, str], ArchTimes], batch: int
) -> None:
    """Per (arch, strategy, precision): stage steps and the mean epoch on ``task``."""
    print(
        f"\n## Steps and epochs at the grid's size ({task.name}: {task.train:,} train, "
        f"{task.val:,} val images; epoch = train steps + prepass + validation, mean over "
        f"{len(next(iter(measured.values())).epochs['ft'].keys)} epochs)"
    )
    print(
        "| arch | strategy | precision | s/step per stage (from images) | s/step from features "
        "| epoch s | epoch s, LP cached | x FT | x FT, LP cached | not measured |"
    )
    print("|---" * 10 + "|")
    for (arch, precision), times in measured.items():
        ft = [mean_epoch(times, "ft", task, cached, batch, Bounds()) for cached in (False, True)]
        for name in grid.strategies:
            bounds = Bounds()
            mean = [
                mean_epoch(times, name, task, cached, batch, bounds) for cached in (False, True)
            ]
            ep = times.epochs[name]
            steps = [
                stage_step(times, times.steps, name, k, ft_step(times), Bounds()) * times.scale
                for k in dict.fromkeys(ep.keys)
            ]
            from_features = [sec for (s, k), sec in times.cached.items() if s == name]
            print(
                f"| {arch} | {name} | {precision} | {' / '.join(f'{s:.4f}' for s in steps)} | "
                f"{' / '.join(f'{s:.5f}' for s in from_features) or '-'} | "
                f"{mean[0]:,.1f} | {mean[1]:,.1f} | {ratio(mean[0] / ft[0])} | "
                f"{ratio(mean[1] / ft[1])} | {bounds.note() or '-'} |"
            )


def mean_epoch(
    times: ArchTimes, name: str, task: TaskFacts, cached: bool, batch: int, bounds: Bounds
) -> float:
    """Seconds of an epoch (train steps, prepass, validation) averaged over a whole run's."""
    plan = cell_plan(
        times, name, task, cached=cached, runs=1, batch=batch, patience=0, bounds=bounds
    )
    return (sum(plan.epoch_train) + sum(plan.epoch_val)) / len(plan.epoch_train)


def grid_table(projections: list[Projection], mean_epochs: int, max_epochs: int) -> None:
    print(
        f"\n## The grid in device-hours (every epoch = {max_epochs}; early stopping: a mean "
        f"of {mean_epochs} epochs ASSUMED, --mean-epochs, at least each strategy's last "
        "stage + patience + 1)"
    )
    print(
        "| variant | epochs | train h | val h | per-run fixed h | one-time h | device-hours "
        "| fixed % | not measured |"
    )
    print("|---" * 9 + "|")
    for proj in projections:
        if not proj.plans:  # no arch of this precision timed (budget, SIGTERM)
            print(
                f"| {proj.variant.label} | - | - | - | - | - | - | - | not measured: "
                f"{proj.missing_runs:,} runs (archs not timed) |"
            )
            continue
        for label, epochs in (
            (f"every ({max_epochs})", None),
            (f"mean {mean_epochs}", mean_epochs),
        ):
            c = proj.cost(epochs)
            note = []
            if proj.missing_runs:
                note.append(f"{proj.missing_runs:,} runs (archs not timed)")
            if proj.bounds.note():
                note.append(proj.bounds.note())
            print(
                f"| {proj.variant.label} | {label} | {hours(c.train)} | {hours(c.val)} | "
                f"{hours(c.fixed)} | {hours(c.one_time)} | **{hours(c.total)}** | "
                f"{100 * c.fixed / c.total:.2f} | {'; '.join(note) or '-'} |"
            )


def overhead_lines(times: ArchTimes, grid: Grid, task: TaskFacts, batch: int) -> None:
    """The per-run fixed costs measured for one arch, in seconds."""
    test = math.ceil(task.test / batch) * times.eval_batch * times.scale
    print(
        f"- {times.arch} {times.precision}: compile FT {times.compile['ft']:.1f} s (+ eval "
        f"{times.eval_compile:.1f} s) per (task, strategy) trainer, shared by its "
        f"{len(grid.lrs) * len(grid.seeds)} lr x seed runs; test pass on {task.name} "
        f"{test:.1f} s; a resume checkpoint every {checkpoint_seconds():g} s of training "
        f"(0: every epoch): resume save {times.ckpt_latest:.2f} s blocking (+ "
        f"{times.ckpt_latest_background:.2f} s written in the background) and best save "
        f"{times.ckpt_best:.2f} s (counted with each: an upper bound), one best save at the "
        "finish"
    )


def goal_lines(
    projections: list[Projection],
    data_ratio: Mapping[str, Mapping[str, float]],
    *,
    reduced: str | None,
    mean_epochs: int,
) -> None:
    """The issue's goals from the projections. ``reduced``: how the timing differs from
    the grid's own size on the goal's device (a CPU, a scaled size), or None: the goals
    are then judged, else only reported beside it."""
    print("\n## Goals (issue 16)")
    goal = next(
        (p for p in projections if p.variant == Variant("bf16", cached=True)),
        None,
    )
    where = f" ({reduced})" if reduced else ""
    if goal is None:
        verdict = "not measured (bf16 with cached LP not timed: --precisions bf16)"
    elif reduced:
        verdict = f"not measured ({reduced}; the goal is one H100/H200's at the grid's size)"
    elif goal.missing_runs:
        verdict = f"not measured ({goal.missing_runs:,} runs' archs not timed)"
    else:
        every, mean = goal.cost(None).hours, goal.cost(mean_epochs).hours
        upper = goal.bounds.ft_bound or goal.bounds.no_features
        bound = " (an upper bound: some stages at FT's step)" if goal.bounds.ft_bound else ""
        if goal.bounds.no_features:
            bound += " (an upper bound: cached LP's head steps billed from images)"
        if goal.bounds.lower:
            bound += " (L2-SP, L1-SP or Auto-RGN stages at another strategy's step: too low)"
        if mean <= GOAL_HOURS and goal.bounds.lower:
            # What is billed too little may lift the true bill over the goal: no PASS.
            verdict = "not measured (under the goal with stages billed too little)"
        elif mean <= GOAL_HOURS:
            verdict = "PASS"
        elif upper:
            verdict = "not measured (the upper bound is above the goal)"
        else:
            verdict = "FAIL"
        verdict = f"{verdict}: {mean:.1f} h at a mean {mean_epochs} epochs{bound}, {every:.1f} h "
        verdict += "at every epoch"
    print(f"- projected grid <= {GOAL_HOURS:.0f} device-hours in bf16 with cached LP: {verdict}")
    # The goal's variant, else the nearest measured: cached LP at the first precision.
    ref = goal or next((p for p in projections if p.variant.cached), None)
    if ref is None or not ref.plans:
        print(f"- per-run overhead <= {100 * GOAL_OVERHEAD:.0f}% of the grid: not measured")
    else:
        c = ref.cost(mean_epochs)
        share = c.fixed / c.total
        # At a reduced size steps are scaled, compiles and saves not: not the goal's share.
        ok = "not judged" if reduced else "PASS" if share <= GOAL_OVERHEAD else "FAIL"
        print(
            f"- per-run overhead <= {100 * GOAL_OVERHEAD:.0f}% of the grid: {ok}: "
            f"{100 * share:.2f}% ({ref.variant.label}, mean {mean_epochs} epochs){where}"
        )
    if not data_ratio:
        print(f"- epoch images/s (data + step) >= {100 * GOAL_DATA_RATIO:.0f}%: not measured")
        return
    worst = min(data_ratio, key=lambda k: data_ratio[k]["ratio"])
    r = data_ratio[worst]["ratio"]
    ok = "not judged" if reduced else "PASS" if r >= GOAL_DATA_RATIO else "FAIL"
    detail = ", ".join(
        f"{k.upper()} {d['fed']:.1f} vs {d['resident']:.1f} img/s = {100 * d['ratio']:.1f}%"
        for k, d in data_ratio.items()
    )
    print(
        f"- epoch images/s (data + step) >= {100 * GOAL_DATA_RATIO:.0f}% of step-only: "
        f"{ok}: {detail}{where}"
    )


# --- the command line ----------------------------------------------------------------------------


def _enc(obj: Any) -> Any:
    """JSON form of measured times: tuples, frozensets and tuple-keyed dicts tagged."""
    if isinstance(obj, tuple):
        return {"tuple": [_enc(v) for v in obj]}
    if isinstance(obj, frozenset):
        return {"frozenset": sorted(_enc(v) for v in obj)}
    if isinstance(obj, dict):
        return {"items": [[_enc(k), _enc(v)] for k, v in obj.items()]}
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"float": repr(obj)}
    return obj


def _dec(obj: Any) -> Any:
    if isinstance(obj, list):
        return [_dec(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "tuple" in obj:
        return tuple(_dec(v) for v in obj["tuple"])
    if "frozenset" in obj:
        return frozenset(_dec(v) for v in obj["frozenset"])
    if "float" in obj:
        return float(obj["float"])
    return {_dec(k): _dec(v) for k, v in obj["items"]}


def times_to_json(times: ArchTimes) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(times):
        value = getattr(times, f.name)
        if f.name == "epochs":
            value = {k: dataclasses.asdict(v) for k, v in value.items()}
            value = {k: {n: _enc(x) for n, x in v.items()} for k, v in value.items()}
        else:
            value = _enc(value)
        out[f.name] = value
    return out


def times_from_json(data: Mapping[str, Any]) -> ArchTimes:
    kw = {k: _dec(v) for k, v in data.items() if k != "epochs"}
    kw["epochs"] = {
        name: StrategyEpochs(**{n: _dec(x) for n, x in ep.items()})
        for name, ep in data["epochs"].items()
    }
    return ArchTimes(**kw)


def write_json(path: Path, meta: Mapping[str, Any], measured: Mapping[tuple, ArchTimes]) -> None:
    """The measurements so far, replaced atomically (a kill mid-write leaves the last one)."""
    doc = {"meta": dict(meta), "archs": [times_to_json(t) for t in measured.values()]}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def schedule_of(grid: Grid) -> dict[str, Any]:
    """What the stored stages per epoch (:func:`strategy_epochs`) were computed from: the
    grid's epochs, BatchNorm mode and each strategy's options, as JSON reads them back."""
    settings = grid.config(grid.datasets[0], grid.archs[0], grid.strategies[0], 1e-4, 0)
    schedule = {
        "epochs": settings.epochs,
        "frozen_bn": settings.frozen_bn,
        "strategy_options": {name: grid.strategy_options.get(name, {}) for name in grid.strategies},
    }
    return json.loads(json.dumps(schedule))


def check_measured_grid(
    path: Path,
    meta: Mapping[str, Any],
    measured: Mapping[tuple, ArchTimes],
    grid: Grid,
    config: str,
) -> None:
    """Refuses a ``--config`` whose stages differ from those ``--from-json`` was measured
    under: each strategy's stage per epoch is stored, not recomputed, so a 12-epoch grid's
    "every (12)" row billed the measured 50 epochs, and a strategy not measured was a
    KeyError. Files written before the schedule was stored are checked by epoch count."""
    now = schedule_of(grid)
    for times in measured.values():
        for name in grid.strategies:
            if name not in times.epochs:
                raise UserError(
                    f"--config {config}: strategy {name!r} was not measured in --from-json "
                    f"{path} (it holds {', '.join(times.epochs)}); measure it"
                )
            if len(times.epochs[name].keys) != now["epochs"]:
                raise UserError(
                    f"--config {config}: at most {now['epochs']} epochs, but --from-json "
                    f"{path} was measured under {len(times.epochs[name].keys)}; report it "
                    "with the grid it measured"
                )
    then = meta.get("schedule")
    if not isinstance(then, dict):
        return
    for key in ("epochs", "frozen_bn"):
        if then.get(key) != now[key]:
            raise UserError(
                f"--config {config}: {key} {now[key]!r}, but --from-json {path} was measured "
                f"under {then.get(key)!r}; report it with the grid it measured"
            )
    options = then.get("strategy_options", {})
    for name, value in now["strategy_options"].items():
        if options.get(name, {}) != value:
            raise UserError(
                f"--config {config}: strategy_options[{name!r}] {value!r}, but --from-json "
                f"{path} was measured under {options.get(name, {})!r}; report it with the "
                "grid it measured"
            )


MEAN_EPOCHS = 20
"""The default assumed mean epoch count of a run under early stopping."""

META_KEYS = ("on_cpu", "image_size", "batch", "precisions")
"""What the report of ``--from-json`` reads from the file's ``meta``."""


def read_json(path: Path) -> tuple[dict[str, Any], dict[tuple[str, str], ArchTimes]]:
    """What ``--out`` wrote; anything else is refused in one line naming ``--from-json``."""
    expected = "expected a JSON file grid_bill.py --out wrote"
    try:
        doc = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"--from-json {path}: not JSON ({e}); {expected}") from None
    except OSError as e:
        raise UserError(f"--from-json {path}: cannot be read ({e.strerror}); {expected}") from None
    try:
        measured = {}
        for data in doc["archs"]:
            t = times_from_json(data)
            measured[(t.arch, t.precision)] = t
        meta = doc["meta"]
        missing = [k for k in META_KEYS if k not in meta]
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise UserError(f"--from-json {path}: no measurements ({e!r}); {expected}") from None
    if missing:
        raise UserError(f"--from-json {path}: its meta lacks {', '.join(missing)}; {expected}")
    return meta, measured


class _Reporter:
    """Publishes the measurements as they come (JSON under ``--out``) and prints the report
    once: at the end, or from a SIGTERM.

    A SIGTERM wakes a watcher thread (through :func:`signal.set_wakeup_fd`,
    written by the interpreter's C-level handler whichever thread the signal
    lands on), so it is answered at once even while the main thread sits in
    an XLA compilation (where a Python signal handler would wait for it to
    return, and ``timeout``'s kill would come first): the watcher prints the
    report from the last published measurements and ends the process.
    """

    def __init__(self, report: Callable[[dict, dict], int], out: Path | None, meta: dict):
        self.report, self.out, self.meta = report, out, meta
        self.lock = threading.Lock()
        self.published: dict[tuple[str, str], ArchTimes] = {}
        self.data_ratio: dict[str, dict[str, float]] = {}
        self.done = False

    def publish(self, measured: Mapping[tuple, ArchTimes], data_ratio: Mapping) -> None:
        with self.lock:
            self.published = copy.deepcopy(dict(measured))
            self.data_ratio = copy.deepcopy(dict(data_ratio))
            if self.out is not None:
                meta = {**self.meta, "data_ratio": self.data_ratio}
                write_json(self.out, meta, self.published)

    def finish(self, note: str | None = None) -> int:
        """The report, once (whichever of the main thread and the watcher comes first)."""
        with self.lock:
            if self.done:
                return 0
            self.done = True
            if note:
                print(note, flush=True)
            rc = self.report(self.published, self.data_ratio)
            sys.stdout.flush()
            return rc

    def watch(self) -> None:
        """From the main thread: a SIGTERM from now on ends the measuring, not the report."""
        read, write = os.pipe()
        os.set_blocking(write, False)
        signal.signal(signal.SIGTERM, lambda signum, frame: None)  # the watcher acts
        signal.set_wakeup_fd(write)
        threading.Thread(target=self._wait, args=(read,), daemon=True).start()

    def _wait(self, read: int) -> None:
        while os.read(read, 1) != bytes([signal.SIGTERM]):
            pass
        if self.done:  # the report printed already (or printing): end as SIGTERM would
            with self.lock:
                os._exit(128 + signal.SIGTERM)
        rc = self.finish("# SIGTERM: measuring stopped, projecting what was measured")
        os._exit(rc)


def cheap_first(grid: Grid) -> list[str]:
    """The grid's strategies, the gradual ones (a compilation per stage) last.

    Under a time budget what is left unmeasured is then bounded by FT's
    step, stage by stage, rather than a whole arch left out.
    """
    return sorted(grid.strategies, key=lambda s: s in ("g_lf", "g_fl"))


def _an_earlier_out(path: Path) -> bool:
    """Whether ``path`` holds what an ``--out`` of any grid_bill.py wrote: a JSON object of
    ``meta`` and ``archs`` (its measurements' fields may be an older version's)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(doc, dict) and set(doc) == {"meta", "archs"}


def check_out_file(path: Path) -> None:
    """Refuses an ``--out`` that cannot be written, before any measuring (not minutes later,
    at the first measurement written), or that holds something else: an existing file is
    replaced only if it is empty or an earlier ``--out`` (a mistyped path must not cost
    the user another file). Leaves nothing behind."""
    folder = path.parent
    if path.is_dir():
        raise UserError(f"--out {path}: is a folder, expected a JSON file")
    if path.exists() and path.stat().st_size and not _an_earlier_out(path):
        raise UserError(
            f"--out {path}: exists and is not a file grid_bill.py --out wrote; "
            "name a new file (or remove it)"
        )
    if not folder.exists():
        raise UserError(f"--out {path}: its folder {folder} does not exist; create it first")
    if not folder.is_dir():
        raise UserError(f"--out {path}: {folder} is a file, expected a folder")
    try:  # a file made and removed at once: os.access says yes to root, even on /proc
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as e:
        raise UserError(
            f"--out {path}: its folder {folder} is not writable ({e.strerror})"
        ) from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "experiments" / "configs" / "paper.py"))
    p.add_argument("--archs", nargs="+", help="archs to time (CPU: resnet50; GPU: the grid's)")
    p.add_argument(
        "--strategies", nargs="+", help="strategies to time (the rest are bounded; default: all)"
    )
    p.add_argument("--tasks", nargs="+", help="tasks to project (default: the grid's)")
    p.add_argument("--precisions", nargs="+", choices=tuple(COMPUTE_DTYPES))
    p.add_argument("--image-size", type=int, help="timed image size (CPU 64, GPU the grid's)")
    p.add_argument("--batch", type=int, help="timed batch (CPU 8, GPU the grid's)")
    p.add_argument("--steps", type=int, help="timed steps per stage (median; CPU 3, GPU 10)")
    p.add_argument("--data-steps", type=int, help="steps of the data-fed epoch (CPU 6, GPU 30)")
    p.add_argument(
        "--mean-epochs",
        type=int,
        help=f"assumed mean under early stopping (default {MEAN_EPOCHS}, or the grid's epochs "
        "if fewer)",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        help="seconds of measuring (> 0; default: no limit): nothing is started that is "
        "predicted to end after it; what is left is bounded",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="JSON file the measurements are written to as they come (replaced each time), "
        "for --from-json if the process is killed",
    )
    p.add_argument(
        "--from-json",
        type=Path,
        help="measure nothing: print the report from a file --out wrote",
    )
    p.add_argument("--quick", action="store_true", help="a smoke run: ResNet-50, 32 px, FT and LP")
    args = p.parse_args(argv)
    budget = args.time_budget
    if budget is not None and not (0 < budget < math.inf):
        p.error(f"--time-budget must be a finite number of seconds > 0, got {budget}")
    if args.out is not None:
        check_out_file(args.out)
    if args.from_json is not None and not args.from_json.is_file():
        what = "is a folder" if args.from_json.is_dir() else "no such file"
        raise UserError(f"--from-json {args.from_json}: {what}; expected a file --out wrote")
    for field in ("image_size", "batch", "steps", "data_steps", "mean_epochs"):
        value = getattr(args, field)
        if value is not None and value < 1:
            p.error(f"--{field.replace('_', '-')} must be >= 1, got {value}")
    return args


def fill_defaults(args: argparse.Namespace, on_cpu: bool) -> None:
    """The sizes, archs, strategies and precisions not given: ``--quick``'s, a CPU's or a GPU's."""
    defaults = QUICK if args.quick else CPU_DEFAULTS if on_cpu else {}
    for field in ("image_size", "batch", "steps", "data_steps", "archs", "strategies"):
        if getattr(args, field) is None:
            setattr(args, field, defaults.get(field))
    if args.precisions is None:
        args.precisions = defaults.get("precisions", ["bf16", "fp32"])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    checkpoint_seconds()  # before the measuring, not after it
    grid = load_grid(args.config)  # a broken --config or --from-json: refused before any work
    if args.from_json is not None:
        meta, measured = read_json(args.from_json)
    else:
        tune_cpu_host()  # the process as the command lines set it up, before JAX's first use
    on_cpu = jax.default_backend() == "cpu"
    fill_defaults(args, on_cpu)
    settings = grid.config(grid.datasets[0], grid.archs[0], grid.strategies[0], 1e-4, 0)
    size, batch = settings.image_size, settings.batch_size
    if args.from_json is not None:
        if args.tasks is None:
            args.tasks = meta.get("tasks")
        on_cpu = meta["on_cpu"]
        args.image_size, args.batch, args.precisions = (
            meta["image_size"],
            meta["batch"],
            meta["precisions"],
        )
    if args.tasks:
        unknown = sorted(set(args.tasks) - set(grid.datasets))
        if unknown:
            raise UserError(f"--tasks {' '.join(unknown)}: not in grid {grid.name!r}")
        twice = sorted({t for t in args.tasks if args.tasks.count(t) > 1})
        if twice:
            raise UserError(f"--tasks: {twice[0]} is listed twice; name each task once")
        # The options of the tasks left out go too (the grid refuses options of a task it
        # does not run: --tasks bach on the paper grid was refused for CheXpert's).
        options = {k: v for k, v in grid.dataset_options.items() if k in args.tasks}
        grid = dataclasses.replace(grid, datasets=tuple(args.tasks), dataset_options=options)
    unbillable = [d for d in grid.datasets if d not in TASK_NAMES]
    if unbillable:  # a user's grid (demo, MedMNIST, a folder): no published training-set size
        raise UserError(
            f"--config {args.config}: grid {grid.name!r} holds {unbillable[0]!r}, which "
            f"grid_bill cannot bill: it bills the paper's tasks "
            f"({', '.join(TASK_NAMES)}), whose training-set sizes it knows"
        )
    if args.from_json is not None:
        check_measured_grid(args.from_json, meta, measured, grid, args.config)
    if args.mean_epochs is None:
        args.mean_epochs = min(MEAN_EPOCHS, settings.epochs)
    elif args.mean_epochs > settings.epochs:  # was billed as every epoch, under its own label
        raise UserError(
            f"--mean-epochs {args.mean_epochs}: more than the grid's {settings.epochs} epochs "
            "(a run's most)"
        )
    archs = args.archs or list(grid.archs)
    if args.from_json is not None:  # the file's archs and strategies, whatever was asked
        archs, args.strategies = [], None
    for arch in archs:
        if arch not in grid.archs:
            raise UserError(f"--archs {arch}: not in grid {grid.name!r}")
    measure = args.strategies or cheap_first(grid)
    for name in measure:
        if name not in grid.strategies:
            raise UserError(f"--strategies {name}: not in grid {grid.name!r}")
    tasks = task_facts(grid.datasets)
    image_size, timed_batch = args.image_size or size, args.batch or batch
    scale = scale_factor(image_size, timed_batch, size, batch)
    reduced = (
        "CPU projection at reduced size"
        if on_cpu
        else f"timed at {image_size} px batch {timed_batch}, scaled {scale:.2f}x"
        if scale != 1
        else None
    )

    def report(measured: dict, data_ratio: dict) -> int:
        return print_report(
            grid,
            tasks,
            measured,
            data_ratio,
            precisions=args.precisions,
            mean_epochs=args.mean_epochs,
            reduced=reduced,
        )

    if args.from_json is not None:
        print(f"# the report of {args.from_json} (measured {meta.get('date', '?')}), {reduced}")
        return report(measured, meta.get("data_ratio", {}))
    setup = Setup(
        grid=grid,
        tasks=tasks,
        image_size=image_size,
        batch=timed_batch,
        steps=args.steps or 10,
        data_steps=args.data_steps or 30,
        grid_size=size,
        grid_batch=batch,
        deadline=time.perf_counter() + (math.inf if args.time_budget is None else args.time_budget),
    )
    print(
        f"{machine_line()}; grid {grid.name!r}: "
        f"{len(grid.datasets)} tasks x {len(grid.archs)} archs x {len(grid.strategies)} "
        f"strategies x {len(grid.lrs)} lrs x {len(grid.seeds)} seeds = {grid.size:,} runs, "
        f"at most {settings.epochs} epochs, patience {settings.patience}, batch {batch}, {size} px"
    )
    if on_cpu:
        print(
            f"# CPU PROJECTION AT REDUCED SIZE: the real archs timed at {setup.image_size} px "
            f"batch {setup.batch} (median of {setup.steps} steps), scaled to {size} px batch "
            f"{batch} by pixels and batch ({scale:.1f}x); 'device-hours' are this CPU's, not a "
            "GPU's"
        )
    elif scale != 1:
        print(f"# timed at {setup.image_size} px batch {setup.batch}, scaled {scale:.2f}x")
    print(
        f"# timing {', '.join(archs)}; strategies {', '.join(measure)} (others: bounded); "
        f"precisions {', '.join(args.precisions)}; heads of {setup.timing_task.name} "
        f"(the largest task); val = {VAL_FRACTION:.0%} and test = {TEST_FRACTION:.0%} of "
        "train (ASSUMED); the per-stage compile is measured cold (no persistent cache)"
    )
    print("\n| task | train | val | test | classes | multilabel | steps/epoch |")
    print("|---|---|---|---|---|---|---|")
    for t in tasks:
        print(
            f"| {t.name} | {t.train:,} | {t.val:,} | {t.test:,} | {t.num_classes} | "
            f"{'yes' if t.multilabel else 'no'} | {t.steps_per_epoch(batch):,} |"
        )
    print(flush=True)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine_line(),
        "on_cpu": on_cpu,
        "image_size": setup.image_size,
        "batch": setup.batch,
        "steps": setup.steps,
        "precisions": args.precisions,
        "tasks": list(grid.datasets),
        "schedule": schedule_of(grid),
    }
    reporter = _Reporter(report, args.out, meta)
    reporter.watch()  # a SIGTERM (`timeout`) ends the measuring, not the report
    measure_all(setup, archs, args.precisions, measure, reporter)
    return reporter.finish()


def measure_all(
    setup: Setup,
    archs: Sequence[str],
    precisions: Sequence[str],
    measure: Sequence[str],
    reporter: _Reporter,
) -> None:
    """Every (arch, precision)'s core first (FT, eval, checkpoints, LP from features), then
    the other strategies, arch by arch, while the budget lasts.

    Nothing is started that is predicted to end after the deadline: a core
    is predicted to take as long as the longest core so far (the first is
    always started), a strategy as :func:`predicted_seconds` says.
    """
    measured: dict[tuple[str, str], ArchTimes] = {}
    data_ratio: dict[str, dict[str, float]] = {}

    def publish() -> None:
        reporter.publish(measured, data_ratio)

    runs: list[ArchRun] = []
    for arch, precision in [(a, p) for p in precisions for a in archs]:
        left = setup.deadline - time.perf_counter()
        walls = [r.core_wall for r in runs if not math.isnan(r.core_wall)]
        if walls and max(walls) > left:
            print(
                f"# time budget: {arch} {precision} not started (its FT part predicted "
                f"{max(walls):.0f} s as the longest so far, {max(left, 0):.0f} s left)",
                flush=True,
            )
            continue
        run = start_arch(setup, arch, precision)
        t0 = time.perf_counter()

        def publish_run(run: ArchRun = run) -> None:  # projectable once FT's part is timed
            measured[(run.times.arch, run.times.precision)] = run.times
            publish()

        measure_core(run, publish_run)
        run.core_wall = time.perf_counter() - t0  # the model's init included
        runs.append(run)
        if not data_ratio:  # the first arch: FT's data-fed epoch (compiled: seconds)
            data_fed_ft(run, data_ratio)
            publish()
    for run in runs:
        measure_rest(
            run,
            measure,
            deadline=setup.deadline,
            data_ratio=data_ratio if run is runs[0] else None,
            publish=publish,
        )
    print("# measuring done", flush=True)


def print_report(
    grid: Grid,
    tasks: list[TaskFacts],
    measured: Mapping[tuple[str, str], ArchTimes],
    data_ratio: Mapping[str, Mapping[str, float]],
    *,
    precisions: Sequence[str],
    mean_epochs: int,
    reduced: str | None,
) -> int:
    """The tables and goal lines from what was measured; 1 if nothing was."""
    if not measured:
        print("nothing measured: no arch finished within the time budget (or before SIGTERM)")
        return 1
    settings = grid.config(grid.datasets[0], grid.archs[0], grid.strategies[0], 1e-4, 0)
    batch = settings.batch_size
    ref_task = max(tasks, key=lambda t: t.train)
    epoch_table(grid, ref_task, measured, batch)
    projections = [
        project_variant(grid, tasks, measured, Variant(p, cached))
        for p in precisions
        for cached in (False, True)
    ]
    grid_table(projections, mean_epochs, settings.epochs)
    print("\n## Per-run fixed costs (compile share + test pass + checkpoint saves)")
    for times in measured.values():
        overhead_lines(times, grid, ref_task, batch)
    goal_lines(projections, data_ratio, reduced=reduced, mean_epochs=mean_epochs)
    return 0


if __name__ == "__main__":
    exit_command(cli_main(main))
