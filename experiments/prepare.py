"""Prepare a dataset once: ``python -m experiments.prepare --dataset NAME --manual-dir DIR``.

For the paper's eight tasks this runs the TFDS builder on your copy of the
official layout (ArrayRecord in ``--data-dir``, needs ``pip install
medft-jax[prepare]``), then writes the memmap cache the training reads.
For ``folder``/``csv`` it writes the cache directly; for
``medmnist/<flag>[@size]`` it downloads (or finds in ``--data-dir``) the
official file. ``demo`` needs no preparation. Preprocessing follows the
architecture: ``--arch`` picks its resize size (ResNet-50 232, DenseNet-121
and VGG-19 256), or give ``--resize-size``; ``--image-size`` is the crop.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from medft_jax.data.errors import DataError
from medft_jax.data.registry import known_names, prepare
from medft_jax.models import ARCHS


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.prepare", description=__doc__)
    p.add_argument("--dataset", required=True, help="one of: " + ", ".join(known_names()))
    p.add_argument("--manual-dir", help="your copy of the dataset (official layout)")
    p.add_argument(
        "--data-dir", help="output folder (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)"
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--arch", choices=sorted(ARCHS), help="use this architecture's resize size")
    size.add_argument("--resize-size", type=int, help="shorter side before the centre crop")
    p.add_argument("--image-size", type=int, default=None, help="centre crop side (default 224)")
    p.add_argument("--seed", type=int, default=0, help="seed of the val/test carving")
    p.add_argument("--val-fraction", type=float, help="share of training data held out as val")
    p.add_argument("--uncertain", choices=("ones", "zeros"), help="CheXpert: U-Ones or U-Zeros")
    p.add_argument("--skip-bad-images", action="store_true", help="skip and count corrupt images")
    p.add_argument("--csv-file", help="csv: the labels file (relative to --manual-dir)")
    p.add_argument("--path-column", help="csv: column of image paths (default 'path')")
    p.add_argument("--label-column", help="csv: column of class names (default 'label')")
    p.add_argument("--label-columns", help="csv multilabel: comma-separated 0/1 columns")
    p.add_argument("--group-column", help="csv: patient id column (splits stay disjoint)")
    p.add_argument("--split-column", help="csv: column of train/val/test")
    p.add_argument("--test-fraction", type=float, help="folder/csv: share carved as test")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def options_of(args: argparse.Namespace) -> dict[str, object]:
    """The dataset-specific options that were given (None = not given)."""
    if args.dataset in ("folder", "csv"):
        opts = {
            "val_fraction": args.val_fraction,
            "test_fraction": args.test_fraction,
        }
        if args.dataset == "csv":
            opts |= {
                "csv_file": args.csv_file,
                "path_column": args.path_column,
                "label_column": args.label_column,
                "label_columns": args.label_columns.split(",") if args.label_columns else None,
                "group_column": args.group_column,
                "split_column": args.split_column,
            }
    else:
        opts = {"val_fraction": args.val_fraction, "uncertain": args.uncertain}
        if args.dataset.startswith("medmnist/") or args.dataset == "demo":
            opts = {}
    return {k: v for k, v in opts.items() if v is not None}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    resize = ARCHS[args.arch].resize_size if args.arch else args.resize_size
    crop = args.image_size
    if crop is None and (args.arch or args.resize_size) and not args.dataset.startswith("demo"):
        crop = 224
    if args.dataset == "demo":
        print("demo is generated in memory from a seed: nothing to prepare")
        return 0
    try:
        ds = prepare(
            args.dataset,
            manual_dir=args.manual_dir,
            data_dir=args.data_dir,
            resize_size=resize,
            crop_size=crop,
            seed=args.seed,
            skip_bad_images=args.skip_bad_images,
            progress=not args.no_progress,
            **options_of(args),
        )
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k} {len(v)}" for k, v in ds.splits.items())
    skipped = ds.metadata.get("skipped_bad_images") or {}
    n_skipped = sum(len(v) for v in skipped.values()) if isinstance(skipped, dict) else 0
    print(
        f"{args.dataset}: {counts}; {ds.num_classes} classes; images {ds.image_shape}; "
        f"skipped bad images: {n_skipped}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
