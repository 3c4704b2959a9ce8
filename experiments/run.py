"""Fine-tune one arch on one dataset with one strategy: ``python -m experiments.run``.

    python -m experiments.run --strategy g_lf                 # demo data, CPU-sized, minutes
    python -m experiments.run --strategy lp_ft --dataset bach --arch densenet121 --lr-grid

Each (lr, seed) run writes one JSON record under ``--out`` (skipped when it
already exists, unless ``--force``) and its best parameters as a model
checkpoint beside it. With several seeds (and ``--lr-grid``), the learning
rate is chosen by the mean validation primary metric and the test metrics
at that rate are printed as mean ± standard error over seeds.

Exit status: 0 every run done (or skipped because its record exists), 1 a
run diverged or ran out of device memory or disk, 2 bad input (one
``error:`` line, nothing written), 75 (EX_TEMPFAIL, "try again later") a
run skipped because another process is running it now, so it has no
record yet; a failure's 1 takes precedence over 75.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from experiments.common import (
    add_dataset_flags,
    dataset_options,
    local_options,
    refuse_data_dir_for_demo,
    refuse_split_seed,
)
from medft_jax import results
from medft_jax.config import RunConfig, check_config, flag_name, may_cache_features, run_lr
from medft_jax.data.paths import refuse_listed_output
from medft_jax.errors import (
    EXIT_BUSY,
    ArgumentParser,
    UserError,
    check_data_dir,
    cli_main,
    deferred_stops,
    exit_command,
    exit_statuses,
    path_flag,
    plain_number,
    stops_held,
    writable_dir,
)
from medft_jax.names import ARCHS, STRATEGIES, WEIGHTS_CHOICES, dataset_name_error
from medft_jax.outcomes import BUSY, DIVERGED, OUT_OF_MEMORY, SKIPPED
from medft_jax.report import aggregate
from medft_jax.report.cells import tested_before_final_stage
from medft_jax.report.render import lr_text, lrs_text

# Small settings that make the default command finish in minutes on a 2-core CPU.
DEMO_DEFAULTS = {"image_size": 32, "epochs": 8, "batch_size": 32, "lr": 1e-4, "seeds": [0]}
PAPER_DEFAULTS = {"image_size": 224, "epochs": 50, "batch_size": 64, "lr": 1e-4, "seeds": [0]}
LR_GRID = (1e-3, 1e-4, 1e-5)


def _one_lr(text: str) -> float:
    """``--lr``'s type: a comma-separated list (``1e-3,1e-4``) is said to be one rate per
    run, with the flag that runs several (argparse said only "invalid float value")."""
    try:
        if not plain_number(text):
            raise ValueError(text)
        return run_lr(float(text))  # as a grid's: 9.999999999999999e-06 is 1e-05's run
    except ValueError:
        if "," in text:
            raise argparse.ArgumentTypeError(
                f"{text!r}: one learning rate per run; --lr-grid runs the paper's "
                f"{', '.join(map(lr_text, LR_GRID))} and chooses by validation"
            ) from None
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number, such as 1e-4") from None


def _one_seed(text: str) -> int:
    """``--seeds``'s type: ``0,1,2`` is said to be three values written apart."""
    try:
        if not plain_number(text):
            raise ValueError(text)
        return int(text)
    except ValueError:
        if "," in text:
            listed = " ".join(t.strip() for t in text.split(","))
            raise argparse.ArgumentTypeError(
                f"{text!r}: seeds are separate values: --seeds {listed}"
            ) from None
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number") from None


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m experiments.run",
        description="Fine-tune a pretrained CNN on a medical image task with one strategy.",
        epilog=exit_statuses(
            s0="done, or skipped because its record exists",
            s1="the run diverged, or out of memory or disk",
            s75="skipped because another process is running it (try again later)",
        ),
    )
    p.add_argument(
        "--strategy",
        required=True,
        help=f"fine-tuning strategy, one of: {', '.join(STRATEGIES)}",
    )
    p.add_argument(
        "--arch",
        default="resnet50",
        help=f"one of: {', '.join(ARCHS)} (and the tests' stand-ins: resnet_tiny, a "
        "one-bottleneck-per-stage ResNet-50, and vgg_tiny, an 8-channel VGG-19)",
    )
    p.add_argument(
        "--dataset",
        default="demo",
        help="demo (synthetic, no files), a paper task (chexpert, mura_shoulder, mura_wrist, "
        "mura_humerus, t1w_mri, bach, isic2020, cholect50_instrument; prepare it first with "
        "python -m experiments.prepare), medmnist/<flag>[@size], folder or csv",
    )
    add_dataset_flags(p)
    p.add_argument(
        "--data-seed",
        type=int,
        default=0,
        help="seed of the dataset's val/test carving (experiments.prepare's --seed)",
    )
    p.add_argument(
        "--weights",
        default="auto",
        type=path_flag("auto, imagenet, none or a model checkpoint folder"),
        help=f"{', '.join(WEIGHTS_CHOICES)} or a model checkpoint folder. auto: cached ported "
        "ImageNet weights, downloaded and ported when online, else random init with a warning",
    )
    lr = p.add_mutually_exclusive_group()
    lr.add_argument("--lr", type=_one_lr, help="Adam learning rate (default 1e-4)")
    lr.add_argument(
        "--lr-grid",
        action="store_true",
        help=f"run every learning rate of {list(LR_GRID)} and choose by validation",
    )
    p.add_argument("--seeds", type=_one_seed, nargs="+", help="seeds, each once (default: 0)")
    p.add_argument("--epochs", type=int, help="maximum epochs (default 50; demo: 8)")
    p.add_argument(
        "--patience",
        type=int,
        default=5,
        help="early-stopping patience in epochs (0: no early stopping, every epoch runs)",
    )
    p.add_argument("--batch-size", type=int, help="global batch size (default 64; demo: 32)")
    p.add_argument(
        "--image-size", type=int, help="centre-crop size in pixels (default 224; demo: 32)"
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="bf16: bfloat16 compute, float32 parameters and optimizer",
    )
    p.add_argument(
        "--frozen-bn",
        default="update",
        choices=["update", "freeze"],
        help="BatchNorm of frozen blocks: keep updating running statistics (the "
        "paper's code) or freeze them (inference mode)",
    )
    p.add_argument(
        "--no-feature-cache",
        action="store_true",
        help="under --frozen-bn freeze (VGG-19: either mode), run the frozen backbone every "
        "epoch instead of training the head on its features computed once (same results, "
        "slower)",
    )
    _add_strategy_options(p)
    p.add_argument(
        "--out", default="runs", type=path_flag("a folder", output=True), help="results folder"
    )
    p.add_argument("--force", action="store_true", help="rerun runs whose record exists")
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars and no per-epoch lines (the record holds every epoch)",
    )
    return p


def _add_strategy_options(p: argparse.ArgumentParser) -> None:
    """Flags of the options some strategies read (``strategies.make``'s arguments)."""
    p.add_argument("--lp-epochs", type=int, help="LP-FT: head-only epochs (default 5)")
    p.add_argument(
        "--epochs-per-stage",
        type=int,
        help="G-LF/G-FL: epochs between unfreezing two blocks (default 1)",
    )
    p.add_argument(
        "--alpha",
        type=float,
        help="L1/L2-SP: weight of the pull to w0 (default 0.01, the paper's; Li et al. tuned "
        "L2-SP at 0.1)",
    )
    p.add_argument("--beta", type=float, help="L1/L2-SP: weight of the head penalty (default 0.01)")
    p.add_argument(
        "--no-sp-half",
        dest="sp_half",
        action="store_const",
        const=False,
        help="L2-SP: the paper's eq. 3, without Li et al.'s ½ (twice the penalty's gradient)",
    )
    p.add_argument(
        "--kernels-only",
        action="store_const",
        const=True,
        help="L1/L2-SP: pull only kernels towards w0 (the original TF code; default: every "
        "pretrained parameter)",
    )
    p.add_argument(
        "--rgn-mode",
        choices=["stream", "prepass"],
        help="Auto-RGN: estimate from each epoch's first --rgn-estimate-steps updates (stream, "
        "default) or from as many gradient evaluations before each epoch (prepass, the "
        "reference code's order)",
    )
    p.add_argument(
        "--rgn-estimate-steps",
        type=int,
        help="Auto-RGN: batches whose RGN is averaged each epoch (default 5)",
    )
    p.add_argument(
        "--rgn-per-step",
        action="store_const",
        const=True,
        help="Auto-RGN (stream): apply each step's own RGN instead of the epoch's estimate",
    )
    p.add_argument(
        "--rgn-eps",
        type=float,
        help="Auto-RGN: a tensor whose norm is at most this has no defined RGN and keeps "
        "multiplier 1 (default 1e-8)",
    )
    p.add_argument("--surgical-block", help="surgical: the block trained with the head")
    p.add_argument(
        "--lr-decay",
        type=float,
        help="llrd: each block's rate is this times the next one's, the head's is --lr "
        "(default 0.7)",
    )


def _defaults(args: argparse.Namespace) -> dict[str, Any]:
    base = DEMO_DEFAULTS if args.dataset == "demo" else PAPER_DEFAULTS
    return {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in base.items()}


def _strategy_options(args: argparse.Namespace) -> tuple[tuple[str, Any], ...]:
    names = {
        "lp_epochs": args.lp_epochs,
        "epochs_per_stage": args.epochs_per_stage,
        "alpha": args.alpha,
        "beta": args.beta,
        "surgical_block": args.surgical_block,
        "sp_half": args.sp_half,
        "rgn_mode": args.rgn_mode,
        "lr_decay": args.lr_decay,
        "kernels_only": args.kernels_only,
        "rgn_estimate_steps": args.rgn_estimate_steps,
        "rgn_per_step": args.rgn_per_step,
        "rgn_eps": args.rgn_eps,
    }
    return tuple(sorted((k, v) for k, v in names.items() if v is not None))


def make_configs(args: argparse.Namespace) -> list[Any]:
    """One :class:`RunConfig` per (lr, seed), every value checked against its range.

    Everything is checked before any work starts; a value out of range is
    one line naming its flag (``--lr must be in (0, 1], got -1.0``).
    """
    error = dataset_name_error(args.dataset)
    if error:
        raise UserError(f"--dataset {args.dataset!r}: {error}")
    refuse_split_seed(args.dataset, "--data-seed", args.data_seed)
    d = _defaults(args)
    twice = sorted({s for s in d["seeds"] if d["seeds"].count(s) > 1})
    if twice:  # two runs of one (lr, seed) would be one run with two records, found at the end
        raise UserError(
            f"--seeds {' '.join(map(str, d['seeds']))}: seed {', '.join(map(str, twice))} "
            "given twice; expected distinct seeds"
        )
    lrs = list(LR_GRID) if args.lr_grid else [d["lr"]]
    configs = [
        RunConfig(
            strategy=args.strategy,
            arch=args.arch,
            dataset=args.dataset,
            weights=args.weights,
            lr=lr,
            seed=seed,
            epochs=d["epochs"],
            patience=args.patience,
            batch_size=d["batch_size"],
            image_size=d["image_size"],
            precision=args.precision,
            frozen_bn=args.frozen_bn,
            data_seed=args.data_seed,
            strategy_options=_strategy_options(args),
        )
        for lr in lrs
        for seed in d["seeds"]
    ]
    # How this command line spells them: --seeds, and --no-sp-half (no --sp-half exists).
    spelled = {"seed": "--seeds", "sp_half": "--no-sp-half"}
    for config in configs:
        check_config(config, lambda f: spelled.get(f) or flag_name(f))
    return configs


def format_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 done (or skipped: record exists), 1 a run diverged or ran out of memory
    or disk, 2 bad input (one ``error:`` line), 75 a run skipped because another process
    is running it (``EXIT_BUSY``, "try again later"; only when nothing else failed)."""
    return cli_main(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    configs = make_configs(args)
    options = dataset_options(args) | local_options(args)
    refuse_data_dir_for_demo(args.data_dir, {args.dataset})
    if args.no_feature_cache and not may_cache_features(configs[0]):
        raise UserError(
            "--no-feature-cache applies under --frozen-bn freeze (or with VGG-19, which has no "
            "BatchNorm), with a strategy that freezes blocks, only (features are cached only "
            "when the frozen backbone is a function of the image)"
        )
    if args.dataset == "folder" and args.manual_dir is not None:
        refuse_listed_output(Path(args.manual_dir), Path(args.out), "--out", "the runs")
    writable_dir(args.out, "--out")
    if args.data_dir is not None:
        check_data_dir(args.data_dir)
    # The one import of JAX, here and not at the top: --help and a bad flag stay fast.
    with stops_held():  # a Ctrl-C raised inside JAX's C++ start-up aborted the process
        from medft_jax.session import Session

    session = Session(
        args.out,
        data_dir=args.data_dir,
        # --no-progress silences the bars of caching a folder's images too.
        dataset_options={args.dataset: {**options, "progress": not args.no_progress}},
        force=args.force,
        retry_failed=True,  # a run asked for by name is tried again
        progress=not args.no_progress,
        feature_cache=not args.no_feature_cache,
    )
    session.check_same_runs(configs)
    say = print if session.main_process else lambda *a, **k: None
    records, status, failed_lrs, busy_lrs = [], 0, set(), set()
    for i, config in enumerate(configs, 1):
        if len(configs) > 1:
            say(f"[{i}/{len(configs)}] lr {lr_text(config.lr)}, seed {config.seed}", flush=True)
        o = session.run(config)
        if o.kind == SKIPPED:
            say(f"skipped: record exists (use --force): {session.path_of(o.config)}", flush=True)
        elif o.kind == BUSY:  # no record: a script `run && report` must not go on without it
            say(f"{o.name}: {o.error}, skipped", flush=True)
            busy_lrs.add(config.lr)
            status = status or EXIT_BUSY
        elif o.kind == DIVERGED:  # noted in failed.json; the other learning rates go on
            # Named: with stdout and stderr apart (a batch job's logs) nothing else says which.
            where = results.run_dir(args.out, o.config.to_dict())
            print(f"error: {where}: {o.error}", file=sys.stderr)
            failed_lrs.add(config.lr)
            status = 1
        elif o.kind == OUT_OF_MEMORY:
            print(
                f"error: out of device memory ({o.error}); try a smaller --batch-size "
                f"than {config.batch_size} or --precision bf16",
                file=sys.stderr,
            )
            return 1
        elif o.exception is not None:  # data unavailable, disk full: one line from cli_main
            raise o.exception
        if o.record:
            records.append(o.record)
    if records and session.main_process:
        command_lrs = sorted({float(c.lr) for c in configs})
        # Every run is written: a stop now is said "as it finished" (cli_main), after the
        # whole summary; it cut the summary short with a bare "terminated", read as a run
        # cut short.
        with deferred_stops():
            _print_summary(records, args.out, sorted(failed_lrs), sorted(busy_lrs), command_lrs)
    return status


def _print_summary(
    records: list[dict[str, Any]],
    out: str,
    failed_lrs: list[float],
    busy_lrs: Sequence[float] = (),
    command_lrs: Sequence[float] = (),
) -> None:
    """The test metrics of the one run, or mean ± SE at the LR chosen by validation.

    As the report chooses (:func:`medft_jax.report.aggregate.eligible`): an
    LR at which a run diverged is never chosen, nor one whose run another
    process holds (its mean would be over fewer seeds than the others').
    ``command_lrs``: the LRs the command ran (``--lr-grid``'s three): the choice is
    among those left of them, said so, and a tie it broke is said too.
    """
    from medft_jax import metrics  # scikit-learn: loaded by the runs, not by --help

    chosen = aggregate.eligible(records, [*failed_lrs, *busy_lrs])
    metric = records[0]["primary_metric"]
    task = (records[0].get("multilabel", False), records[0].get("num_classes"))
    shown = metrics.metric_name(metric, *task)
    skipped = records[0].get("skipped_bad_images")
    if skipped:
        each = ", ".join(f"{split} {n}" for split, n in skipped.items())
        print(f"\nskipped bad images (--skip-bad-images): {sum(skipped.values())} ({each})")
    sizes = records[0].get("split_sizes")
    if isinstance(sizes, dict) and sizes:
        units = records[0].get("scored_units")
        per = (
            f" (metrics per {units['unit']}: val {units.get('val')}, test {units.get('test')})"
            if isinstance(units, dict) and units.get("unit")
            else ""
        )
        print("\nimages: " + ", ".join(f"{split} {n}" for split, n in sizes.items()) + per)
    copies = records[0].get("eval_copies_of_train")
    if copies:
        each = ", ".join(f"{split} {n}" for split, n in copies.items())
        whose = (
            " (multilabel: under any labels, each label they share inflated)"
            if records[0].get("multilabel")
            else " of their label"
            if records[0].get("eval_copies_rule")
            else " (of any label: counted by an older cache)"
        )
        print(
            f"\nevaluation images that are copies of training images{whose}: {each}; "
            "scores inflated"
        )
    if failed_lrs:
        print(f"\nlr {lrs_text(failed_lrs)} left out of the choice: a run there diverged")
    if busy_lrs:
        print(
            f"\nlr {lrs_text(busy_lrs)} left out of the choice: a run there is running in "
            "another process (no record yet)"
        )
    unvalidated = aggregate.unvalidated_lrs(records)
    if unvalidated:
        print(
            f"\nlr {lrs_text(unvalidated)} left out of the choice: a run there has no "
            f"validation {shown}"
        )
    if not chosen:
        print("no learning rate with every run finished: no test metrics to show")
    elif len(chosen) == 1:
        r = chosen[0]
        print(
            f"\n{r['config']['strategy']} on {r['config']['dataset']} ({r['config']['arch']}), "
            f"lr {lr_text(r['config']['lr'])}, seed {r['config']['seed']}: "
            f"{results.best_epoch_text(r)} by validation {shown}; test metrics:"
        )
        print(
            format_table([(metrics.metric_name(k, *task), _fmt(v)) for k, v in r["test"].items()])
        )
        _note_tested_before_final_stage([r])
    else:
        lr = aggregate.choose_lr(chosen, metric)
        summary = aggregate.summarise([r for r in chosen if r["config"]["lr"] == lr])
        ran = {*command_lrs, *failed_lrs, *busy_lrs, *(float(r["config"]["lr"]) for r in records)}
        how = _how_chosen(chosen, metric, lr, shown, ran)
        seeds = summary["seeds"]
        if len(seeds) == 1:  # one seed: no spread to show (its SE is NaN)
            print(f"\nlr {lr_text(lr)} {how}; test metrics of seed {seeds[0]}:")
            rows = [
                (metrics.metric_name(k, *task), _fmt(m)) for k, (m, _) in summary["test"].items()
            ]
        else:
            print(f"\nlr {lr_text(lr)} {how}; test metrics, mean ± SE over {len(seeds)} seeds:")
            n = summary["n"]  # a metric undefined for a seed is over the others only
            rows = [
                (
                    metrics.metric_name(k, *task),
                    f"{_fmt(m)} ± {_fmt(se)}"
                    + (f" (over {n[k]} of {len(seeds)} seeds)" if n[k] != len(seeds) else ""),
                )
                for k, (m, se) in summary["test"].items()
            ]
        print(format_table(rows))
        _note_tested_before_final_stage([r for r in chosen if r["config"]["lr"] == lr])
    if chosen and metrics.metric_name("accuracy", *task) == metrics.EQ6_NAME:
        print(metrics.EQ6_NOTE)
    unavailable = [r for r in chosen if str(r.get("weights_used", "")).startswith("none (ImageNet")]
    if unavailable:  # said once above the progress bars; a reader of the numbers sees this
        from weights_port.fetch import WEIGHTS_NAMES

        arch = unavailable[0]["config"]["arch"]
        why = (
            "none ported, and none could be downloaded when the run trained"
            if arch in WEIGHTS_NAMES
            else "torchvision publishes none for it"
        )
        print(
            f"trained from random initialisation: no ImageNet weights for {arch} ({why}); "
            "these numbers are not a fine-tuning's"
        )
    paths = [results.record_path_of(r, out) for r in records]
    for path in paths:
        print(f"record: {path}")
    models = [path.parent / "best" for path in paths]
    if len({float(r["config"]["lr"]) for r in records}) == 1 and all(m.is_dir() for m in models):
        # The folder predict takes: a user left to find it among the run's files.
        print("model (predict --checkpoint): " + ", ".join(map(str, models)))
    elif len({float(r["config"]["lr"]) for r in records}) > 1 and len(chosen) > 1:
        # Which of those folders hold the chosen models: a user left to work it out from
        # the names gave predict another LR's best/.
        picked = [r for r in chosen if r["config"]["lr"] == lr]
        print(
            f"the chosen lr {lr_text(lr)}'s models (predict --checkpoint): "
            + ", ".join(
                str(path.parent / "best")
                for r, path in zip(records, paths, strict=True)
                if any(r is p for p in picked)
            )
        )


def _how_chosen(
    chosen: list[dict[str, Any]],
    metric: str,
    lr: float,
    shown: str,
    ran_lrs: Iterable[float],
) -> str:
    """``chosen by mean validation accuracy among lr 0.001 0.0001 1e-05`` (``; tied with
    lr 0.001, a tie goes to the smaller lr``), or ``(the only lr run)``, or, where
    several were run (``ran_lrs``) and one is left, ``(the only lr left of lr ...)``."""
    means = aggregate.lr_means(chosen, metric)
    among = sorted(means, reverse=True)
    ran = sorted({*ran_lrs, *among}, reverse=True)
    if len(among) == 1:
        return "(the only lr run)" if len(ran) == 1 else f"(the only lr left of lr {lrs_text(ran)})"
    each = " ".join(f"{lr_text(x)} ({_fmt(means[x])})" for x in among)
    how = f"chosen by mean validation {shown} among lr {each}"
    tied = aggregate.tied_lrs(means, lr)
    if tied:
        how += f"; tied with lr {lrs_text(tied)}, a tie goes to the smaller lr"
    return how


def _note_tested_before_final_stage(shown: list[dict[str, Any]]) -> None:
    """A note under test metrics of a staged strategy's runs tested with parameters from
    before their final stage (the report's ¶): the summary said "best epoch 5 of 8" of
    an LP-FT whose fine-tuning began at epoch 6, and its numbers were linear probing's."""
    early = [r for r in shown if tested_before_final_stage(r)]
    if not early:
        return
    r = early[0]
    runs = "its run was" if len(shown) == 1 else f"{len(early)} of its {len(shown)} runs were"
    print(
        f"note: {r['config']['strategy']}'s final stage begins at epoch "
        f"{int(r['final_stage_epoch']) + 1}, and {runs} tested with parameters from "
        "before it (the best epoch came earlier, or the run ended first): the strategy's "
        "numbers as its protocol picks them (the best validation over the whole run), from "
        "parameters that never trained as its final stage does (the report marks such "
        "cells ¶)"
    )


def _fmt(v: float | None) -> str:
    """``0.1235``; a value that rounds to zero as ``0.0000``, whichever its sign: sklearn's
    kappa of a constant predictor is -2.2e-16, which read ``-0.0000`` beside a plain 0."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan"
    return f"{round(v, 4) + 0.0:.4f}"


if __name__ == "__main__":
    exit_command(main())
