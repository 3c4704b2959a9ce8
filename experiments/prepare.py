"""Prepare a dataset once: ``python -m experiments.prepare --dataset NAME --manual-dir DIR``.

For the paper's eight tasks this runs the TFDS builder on your copy of the
official layout (ArrayRecord in ``--data-dir``, needs ``pip install
medft-jax[prepare]``), then writes the memmap cache the training reads.
For ``folder``/``csv`` it writes the cache directly; for
``medmnist/<flag>[@size]`` it downloads (or finds in ``--data-dir``) the
official file. ``demo`` needs no preparation. Preprocessing follows the
architecture: ``--arch`` picks its resize size for the crop (ResNet-50
232/224 of it, DenseNet-121 and VGG-19 256/224: the rule ``experiments.run``
uses, so ``--arch resnet50 --image-size 32`` prepares what that run reads;
without it, the sizes of ``experiments.run``'s default arch, ResNet-50), or
give ``--resize-size``; ``--image-size`` is the crop.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from experiments.common import (
    add_dataset_flags,
    dataset_options,
    medmnist_file_place,
    refuse_data_dir_for_demo,
    refuse_split_seed,
    refuse_unused,
)
from medft_jax.config import RunConfig, check_value
from medft_jax.data.cache import skipped_counts, skipped_note
from medft_jax.errors import (
    ArgumentParser,
    UserError,
    cli_main,
    exit_command,
    exit_statuses,
    writable_dir,
)
from medft_jax.names import ARCHS, DEMO, TEST_ARCHS, dataset_name_error, dataset_names, same_data


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(
        prog="python -m experiments.prepare",
        description=__doc__,
        epilog=exit_statuses(s0="prepared, or already prepared"),
    )
    p.add_argument("--dataset", required=True, help="one of: " + ", ".join(dataset_names()))
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--arch",
        choices=[*sorted(ARCHS), *TEST_ARCHS],  # run takes the test arch: prepare for it too
        metavar="{" + ",".join(sorted(ARCHS)) + "}",
        help="use this architecture's resize size (its weights' ratio to the crop: ResNet-50 "
        "232/224, the others 256/224), the one experiments.run uses (default: run's default "
        f"arch, {RunConfig.arch}; also resnet_tiny and vgg_tiny, run's test archs)",
    )
    size.add_argument("--resize-size", type=int, help="shorter side before the centre crop")
    p.add_argument("--image-size", type=int, default=None, help="centre crop side (default 224)")
    p.add_argument("--seed", type=int, default=0, help="seed of the val/test carving")
    add_dataset_flags(p, prepares_tasks=True)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def sizes(args: argparse.Namespace) -> tuple[int | None, int | None]:
    """``(resize, crop)`` as ``experiments.run`` computes them, checked.

    Neither ``--arch`` nor ``--resize-size``: the sizes of ``experiments.run``'s
    default arch, so that ``prepare`` then ``run`` without flags meet.
    """
    arch = args.arch
    if arch is None and args.resize_size is None:
        arch = RunConfig.arch  # experiments.run's default
    crop = args.image_size
    if crop is None and not args.dataset.startswith("demo"):
        crop = 224
    if crop is not None:
        check_value("image_size", crop, "--image-size")
    if arch:
        from medft_jax.models import get_arch  # Flax: only when an arch is named

        resize = get_arch(arch).resize_for(crop or 224)  # run's rule (fit.resize_for)
    else:
        resize = args.resize_size
    if args.resize_size is not None:
        check_value("resize_size", args.resize_size, "--resize-size")
        if crop is not None and args.resize_size < crop:
            raise UserError(f"--resize-size {args.resize_size} must be >= --image-size {crop}")
    check_value("seed", args.seed, "--seed")
    return resize, crop


def _refuse_image_file_flags(args: argparse.Namespace) -> None:
    """``--manual-dir`` and ``--skip-bad-images`` for a dataset that has no image files of
    the user's (demo is generated, MedMNIST's arrays are downloaded): refused, not ignored."""
    if args.manual_dir is not None and args.dataset.startswith("medmnist/"):
        raise UserError(
            "--manual-dir applies to the paper tasks, folder and csv only; "
            + medmnist_file_place(args.dataset, "prepare")
        )
    files = {"manual_dir": args.manual_dir, "skip_bad_images": args.skip_bad_images or None}
    refuse_unused(args.dataset, files, "the paper tasks, folder and csv")


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0, or 2 with one ``error:`` line for bad input."""
    return cli_main(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    error = dataset_name_error(args.dataset)  # one rule for a name, run's and sweep's
    if error:
        raise UserError(f"--dataset {args.dataset!r}: {error}")
    options = dataset_options(args)  # a flag that does not apply is refused, demo included
    refuse_split_seed(args.dataset, "--seed", args.seed)
    if args.dataset == DEMO or args.dataset.startswith("medmnist/"):
        _refuse_image_file_flags(args)
    if args.dataset == DEMO:
        refuse_data_dir_for_demo(args.data_dir, {DEMO})  # as run refuses it
        sized = [f for f in ("arch", "resize_size", "image_size") if getattr(args, f) is not None]
        if sized or args.seed != 0:
            flag = "--" + (sized[0] if sized else "seed").replace("_", "-")
            raise UserError(f"{flag} does not apply to --dataset demo (nothing to prepare)")
        print("demo is generated in memory from a seed: nothing to prepare")
        return 0
    resize, crop = sizes(args)
    if args.data_dir is not None:
        writable_dir(args.data_dir, "--data-dir")
    # The data pipeline (grain, JAX), here and not at the top: --help and a bad flag stay fast.
    from medft_jax.data.registry import prepare

    ds = prepare(
        args.dataset,
        manual_dir=args.manual_dir,
        data_dir=args.data_dir,
        resize_size=resize,
        crop_size=crop,
        seed=args.seed,
        skip_bad_images=args.skip_bad_images,
        progress=not args.no_progress,
        scorable=True,  # a paper task's parse: refused before anything is written
        **options,
    )
    # What a run would refuse, said now rather than at its start, and before the summary: a
    # script reading that line took a refused dataset for a prepared one.
    ds.check_scorable()
    counts = ", ".join(f"{k} {len(v)}" for k, v in ds.splits.items())
    if ds.eval_grouping != "image":  # MURA: the test samples are studies, the counts images
        per = {s: len(np.unique(np.asarray(ds.split(s).groups))) for s in ("val", "test")}
        unit = ds.eval_grouping
        counts += f" images (metrics per {unit}: val {per['val']}, test {per['test']})"
    n_skipped = sum(skipped_counts(ds.metadata).values())
    note = skipped_note(ds.metadata)
    if note:
        print(note, file=sys.stderr)
    print(
        f"{same_data(args.dataset)}: {counts}; {ds.num_classes} classes; images {ds.image_shape}; "
        f"skipped bad images: {n_skipped}"
    )
    if args.seed != 0:  # run's flag has another name: without it, a run carved seed 0's split
        print(
            f"note: this is the split of seed {args.seed}: a run reads it with --data-seed "
            f"{args.seed} (without it, seed 0's split is carved and cached anew)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    exit_command(main())
