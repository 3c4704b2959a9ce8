"""Seconds per epoch of each strategy relative to full fine-tuning (FT).

    python benchmarks/strategies.py [--arch resnet50] [--image-size 64] [--batch 32] [--steps 4]

All strategies run the same arch, batch and image size through the same
:class:`medft_jax.train.Trainer` the toolkit trains with: for every stage
of a strategy (its distinct trainable sets, epoch by epoch) the train step
is compiled once and the median step time over ``--steps`` steps is taken,
side by side in one process. An epoch's cost is proportional to the step
time, so the ratio to FT is the ratio of step times. FT is measured first
and again last, and the faster of the two is the reference, so a
disturbance at either end shows up as a gap between them. Goal (issue 16):
an LP epoch <= 0.05x an FT epoch, met by training LP's head from features
computed once (the "LP from cached features" line; LP from images, its
backbone running forward every step, costs about a third of FT). Each
gradual-unfreezing stage costs more as its trainable depth grows. Last,
FT's step as one fused program (``benchmarks/models.py``'s) against the
Trainer's two programs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import jax
import numpy as np
from models import jax_fns, median_seconds  # benchmarks/models.py, beside this script

from medft_jax import strategies
from medft_jax.environment import machine_line
from medft_jax.errors import ArgumentParser, cli_main, exit_command
from medft_jax.fit import HEAD_STEPS_PER_CALL
from medft_jax.models import ARCHS, create, get_arch, init_variables
from medft_jax.names import is_known_arch
from medft_jax.runtime import tune_cpu_host
from medft_jax.train import Trainer


def step_seconds(trainer, state, x, y, trainable, bn_train, steps):
    """A train step's median seconds (compiled first, one warm-up step)."""
    kw = {"trainable": trainable, "bn_train": bn_train}
    trainer.compile_stage(state, x, y, **kw)
    return _median_call(lambda s: trainer.train_step(s, x, y, **kw), state, steps)


def head_step_seconds(trainer, state, f_host, y_host, trainable, bn_train, steps):
    """One cached-feature step's seconds, as a run takes them: in calls of
    :data:`medft_jax.fit.HEAD_STEPS_PER_CALL` steps (median call / its steps)."""
    n = HEAD_STEPS_PER_CALL
    x = trainer.shard_steps(np.stack([f_host] * n))
    y = trainer.shard_steps(np.stack([y_host] * n))
    kw = {"trainable": trainable, "bn_train": bn_train}
    trainer.compile_head_steps(state, x, y, **kw)
    sec, state = _median_call(lambda s: trainer.head_steps(s, x, y, **kw), state, steps)
    return sec / n, state


def _median_call(call, state, steps):
    """``call(state) -> (state, loss)`` once to warm up, then its median seconds of ``steps``."""
    state, loss = call(state)
    loss.block_until_ready()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, loss = call(state)
        loss.block_until_ready()
        times.append(time.perf_counter() - t)
    return statistics.median(times), state


def prepass_cost(model, variables, spec, x_host, y_host, steps: int) -> None:
    """Auto-RGN's two modes: an epoch's extra cost under ``rgn_mode='prepass'``.

    The stream estimates from the epoch's own updates (no extra work); the
    prepass evaluates 5 gradients per epoch without updating. Both modes'
    steps are timed, then one prepass batch, side by side; the epoch
    overhead follows for a range of epoch lengths (BACH trains 324 images:
    6 steps of 64, the shortest epoch of the paper's tasks).
    """
    timed = {}
    batch = {"image": x_host, "label": y_host}
    for mode in ("stream", "prepass"):
        strat = strategies.make(
            "auto_rgn",
            variables["params"],
            spec.partition,
            learning_rate=1e-4,
            steps_per_epoch=100,
            rgn_mode=mode,
        )
        trainer = Trainer(model, strat.tx, multilabel=False)
        state = trainer.init_state(variables)
        x, y = trainer.shard_batch(x_host), trainer.shard_batch(y_host)
        trainable = strat.schedule.trainable_mask(variables["params"], 0)
        if strat.schedule.prepass is not None:  # held first, as fit does: NaN updates before
            state = trainer.estimate_rgn(
                state, [batch], trainable=trainable, bn_train=True, prepass=strat.schedule.prepass
            )
        timed[mode], state = step_seconds(trainer, state, x, y, trainable, True, steps)
    prepass = strat.schedule.prepass

    def one_prepass(state):
        state = trainer.estimate_rgn(
            state, [batch], trainable=trainable, bn_train=True, prepass=prepass
        )
        jax.block_until_ready(state.opt_state)
        return state

    state = one_prepass(state)  # compiles the RGN sum
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state = one_prepass(state)
        times.append(time.perf_counter() - t)
    batch_s = statistics.median(times)
    print(
        f"\nAuto-RGN: stream step {timed['stream']:.3f} s, prepass-mode step "
        f"{timed['prepass']:.3f} s, one prepass batch {batch_s:.3f} s "
        f"({batch_s / timed['stream']:.2f}x a step); {prepass.batches} per epoch"
    )
    # The two modes' steps are one program but for the norms the stream adds,
    # so the epoch ratio counts the prepass batches against stream steps.
    print("| steps per epoch | prepass epoch / stream epoch |")
    print("|---|---|")
    for spe in (5, 20, 100, 1000):
        print(f"| {spe} | {1 + prepass.batches * batch_s / (spe * timed['stream']):.2f} |")


def cached_lp_cost(model, variables, spec, x_host, y_host, steps: int, ft: float) -> None:
    """LP under ``frozen_bn='freeze'`` from cached features (:mod:`medft_jax.features`).

    An epoch is then head steps on stored features, run as a run runs them
    (several per call): their step time against FT's is the epoch ratio
    (goal <= 0.05). The features are computed once
    per (data, backbone): that pass costs one inference forward per image,
    reported in FT steps so it can be spread over a run's epochs.
    """
    strat = strategies.make(
        "lp", variables["params"], spec.partition, learning_rate=1e-4, frozen_bn="freeze"
    )
    trainer = Trainer(model, strat.tx, multilabel=False)
    state = trainer.init_state(variables)
    batch = {"image": x_host, "mask": np.ones(len(x_host), bool)}
    feats = next(trainer.features(state, [batch]))  # compiles the backbone pass
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        next(trainer.features(state, [batch]))
        times.append(time.perf_counter() - t)
    extract = statistics.median(times)
    trainable = strat.schedule.trainable_mask(variables["params"], 0)
    bn_train = strat.schedule.bn_train(0)
    sec, _ = head_step_seconds(trainer, state, feats, y_host, trainable, bn_train, steps)
    verdict = "meets" if sec / ft <= 0.05 else "misses"
    print(
        f"\nLP from cached features ({feats.shape[1]} per image): {sec * 1e3:.2f} ms/step = "
        f"{sec / ft:.3f}x FT ({verdict} the goal <= 0.05x); computing the features once: "
        f"{extract:.3f} s a batch = {extract / ft:.2f} FT steps"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--strategies", nargs="+", default=list(strategies.PAPER_STRATEGIES))
    args = p.parse_args(argv)
    for flag in ("image_size", "batch", "steps"):  # before any compiling
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if not is_known_arch(args.arch):
        p.error(f"--arch {args.arch!r}: unknown arch; known: {', '.join(ARCHS)}")
    unknown = [s for s in args.strategies if s not in strategies.STRATEGIES]
    if unknown:
        p.error(
            f"--strategies {unknown[0]!r}: unknown strategy; known: "
            f"{', '.join(strategies.STRATEGIES)}"
        )
    tune_cpu_host()  # the process as the command lines set it up, before JAX's first use
    spec = get_arch(args.arch)
    model = create(args.arch, 2)
    variables = jax.device_get(init_variables(model, 0, 32))
    rng = np.random.default_rng(0)
    x_host = rng.integers(0, 256, (args.batch, args.image_size, args.image_size, 3), np.uint8)
    y_host = rng.integers(0, 2, (args.batch,)).astype(np.int32)
    print(
        f"{machine_line()}; {args.arch}, {args.image_size} px, batch {args.batch}, median of "
        f"{args.steps} steps"
    )
    print("| strategy | stage (epoch: trainable blocks) | s/step | x FT |")
    print("|---|---|---|---|")
    rows = []
    for name in ["ft", *[s for s in args.strategies if s != "ft"], "ft"]:
        strat = strategies.make(
            name,
            variables["params"],
            spec.partition,
            learning_rate=1e-4,
            steps_per_epoch=1,
            **({"lp_epochs": 1} if name == "lp_ft" else {}),
        )
        trainer = Trainer(model, strat.tx, multilabel=False)
        state = trainer.init_state(variables)
        x, y = trainer.shard_batch(x_host), trainer.shard_batch(y_host)
        seen = set()
        for epoch in range(strat.schedule.final_stage_epoch + 1):
            blocks = strat.schedule.trainable_blocks(epoch)
            if blocks in seen:
                continue
            seen.add(blocks)
            trainable = strat.schedule.trainable_mask(variables["params"], epoch)
            sec, state = step_seconds(
                trainer, state, x, y, trainable, strat.schedule.bn_train(epoch), args.steps
            )
            label = (
                f"{epoch}: {', '.join(blocks)}"
                if len(blocks) < len(spec.partition.names)
                else f"{epoch}: all"
            )
            rows.append((name, label, sec))
            print(f"# measured {name} {label}: {sec:.3f} s/step", flush=True)
    ft = min(sec for name, _, sec in rows if name == "ft")
    for name, label, sec in rows:
        print(f"| {name} | {label} | {sec:.3f} | {sec / ft:.2f} |")
    if "lp" in args.strategies:
        cached_lp_cost(model, variables, spec, x_host, y_host, args.steps, ft)
    if "auto_rgn" in args.strategies:
        prepass_cost(model, variables, spec, x_host, y_host, args.steps)
    # The Trainer runs a step as two programs (gradients, then the update) so
    # that strategies share the gradient program; a single fused jit of the
    # same FT step is the reference for what that split costs.
    _, fused_step = jax_fns(args.arch, args.image_size, args.batch)
    fused = median_seconds(fused_step, args.steps)
    print(
        f"\nFT as one fused program (benchmarks/models.py's train step): {fused:.3f} s/step; "
        f"the Trainer's two programs: {ft:.3f} s/step = {ft / fused:.2f}x fused"
    )
    return 0


if __name__ == "__main__":
    exit_command(cli_main(main))
