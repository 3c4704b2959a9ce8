"""Flags the command lines share: which data, where it lives, and how to read a user's own.

``experiments.prepare`` and ``experiments.run`` take the same dataset flags
(``--csv-file`` and friends), parsed and checked here once, so a ``csv``
dataset prepared by one is loaded the same way by the other.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from medft_jax.data.examples import TEST_FRACTION, VAL_FRACTION
from medft_jax.data.options import OPTION_CHOICES, split_option_error
from medft_jax.data.pixels import check_bits_stored, parse_dicom_window
from medft_jax.data.table import check_label_options
from medft_jax.errors import UserError, path_flag
from medft_jax.names import DEMO, LOCAL_KINDS


def medmnist_file_place(dataset: str, downloader: str) -> str:
    """Where a MedMNIST dataset's file goes, said where ``--manual-dir`` is refused for it
    (run sent the user to prepare, which refused the flag too)."""
    return (
        f"{dataset} reads its .npz from --data-dir (or its medmnist/ folder): put the file "
        f"there, or let {downloader} download it"
    )


def add_dataset_flags(p: argparse.ArgumentParser, *, prepares_tasks: bool = False) -> None:
    """``--data-dir``, ``--manual-dir`` and the folder/csv/task options. ``prepares_tasks``:
    ``--manual-dir`` takes a paper task's official layout too (prepare's, not run's)."""
    p.add_argument(
        "--data-dir",
        type=path_flag("a folder"),
        help="where prepared datasets live (default: $TFDS_DATA_DIR or TFDS's)",
    )
    p.add_argument(
        "--manual-dir",
        type=path_flag("a folder"),
        help=(
            "your copy of the dataset: a paper task's official layout, or your folder/csv images"
            if prepares_tasks
            else "your images (folder and csv datasets; a paper task's official layout goes "
            "to experiments.prepare, a MedMNIST .npz into --data-dir)"
        ),
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        help=f"share of the training images (what a carved test split leaves) held out as "
        f"val (default {VAL_FRACTION:g}; tasks with official splits take none)",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        help=f"folder/csv: share carved as test where the data gives none "
        f"(default {TEST_FRACTION:g})",
    )
    p.add_argument(
        "--uncertain",
        choices=OPTION_CHOICES["uncertain"],
        help="CheXpert uncertain labels: 1 (ones, default), 0 (zeros), or the paper's "
        "per finding (libauc: 1 for Edema and Atelectasis, 0 for the others)",
    )
    p.add_argument(
        "--split-by",
        choices=OPTION_CHOICES["split_by"],
        help="ISIC 2020 train/test split: by patient (default, grouped) or by image (the "
        "paper's random 80/20; one patient's images can fall on both sides)",
    )
    p.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="skip and count corrupt images and files no setting reads as one image "
        "(multi-frame); not sound files the decoding rules refuse until told more (a 16-bit "
        "file's bits, a DICOM window, a decoder plugin)",
    )
    add_bits_stored_flag(p)
    add_dicom_window_flag(p)
    p.add_argument(
        "--patient-folders",
        action=argparse.BooleanOptionalAction,
        help="folder: whether the subfolders of a class folder are patients "
        "(<class>/<patient>/<image>): --patient-folders keeps each one's images in one split, "
        "--no-patient-folders splits image by image; needed when val/test are carved from "
        "such images, or when given train/, val/ and test/ share a subfolder name",
    )
    p.add_argument(
        "--csv-file",
        type=path_flag("a file"),
        help="csv: the labels file (relative to --manual-dir)",
    )
    p.add_argument("--path-column", help="csv: column of image paths (default 'path')")
    p.add_argument("--label-column", help="csv: column of class names (default 'label')")
    p.add_argument("--label-columns", help="csv multilabel: comma-separated 0/1 columns")
    p.add_argument("--group-column", help="csv: patient id column (splits stay disjoint)")
    p.add_argument("--split-column", help="csv: column of train/val/test")


def add_bits_stored_flag(
    p: argparse.ArgumentParser, scope: str = "folder/csv: ", unset: str = "16"
) -> None:
    """``--bits-stored``: the bits a dataset's 16-bit files use (``medft_jax.data.pixels``)."""
    p.add_argument(
        "--bits-stored",
        type=int,
        metavar="N",
        help=f"{scope}the bits 16-bit grayscale images' values use, 8 to 16 (12-bit X-rays "
        "saved as 16-bit PNG: 12); maps 0..2^N-1 to 0..255 for every image alike. Unset: "
        f"{unset}, and an image whose values fit in 14 bits is refused",
    )


def add_dicom_window_flag(
    p: argparse.ArgumentParser, scope: str = "folder/csv: ", unset: str = "each file's own"
) -> None:
    """``--dicom-window``: one window for every greyscale DICOM file (``medft_jax.data.dicom``)."""
    p.add_argument(
        "--dicom-window",
        metavar="CENTER,WIDTH",
        help=f"{scope}one window for every greyscale DICOM file, after its rescale (Hounsfield "
        "units for CT; a brain window: 40,80): center - width/2 black, center + width/2 "
        f"white. Unset: {unset} (its VOI LUT or window, else its min..max)",
    )


def dataset_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of ``data.load``/``data.prepare`` that were given, checked.

    A flag that does not apply to ``args.dataset`` (``--csv-file`` for a
    paper task, say) is refused rather than silently ignored.
    """
    for flag in ("val_fraction", "test_fraction"):
        value = getattr(args, flag)
        if value is not None and not (math.isfinite(value) and 0 < value < 1):
            raise UserError(f"--{flag.replace('_', '-')} must be in (0, 1), got {value!r}")
    csv_only = {
        "csv_file": args.csv_file,
        "path_column": args.path_column,
        "label_column": args.label_column,
        # Stripped as the CSV's header names are: "a, b" named a column ' b'.
        "label_columns": None
        if args.label_columns is None
        else [c.strip() for c in args.label_columns.split(",")],
        "group_column": args.group_column,
        "split_column": args.split_column,
    }
    given = {k: v for k, v in csv_only.items() if v is not None}
    _refuse_task_options(args)
    local = {
        "val_fraction": args.val_fraction,
        "test_fraction": args.test_fraction,
        "bits_stored": args.bits_stored,
        "dicom_window": args.dicom_window,
    }
    if args.dataset in LOCAL_KINDS:
        check_bits_stored(args.bits_stored)
        window = parse_dicom_window(args.dicom_window)
        local["dicom_window"] = None if window is None else list(window)
    else:
        decoding = {"bits_stored": args.bits_stored, "dicom_window": args.dicom_window}
        refuse_unused(args.dataset, decoding, "folder and csv")
    if args.dataset != "folder":  # csv groups by --group-column
        refuse_unused(args.dataset, {"patient_folders": args.patient_folders}, "folder")
    if args.dataset == "csv":
        # One rule with the Python API's; its messages name the flags too.
        check_label_options(args.label_column, given.get("label_columns"), None)
        return _given(local) | given
    refuse_unused(args.dataset, given, "csv")
    if args.dataset == "folder":
        return _given({**local, "patient_folders": args.patient_folders})
    if args.dataset == "demo" or args.dataset.startswith("medmnist/"):
        refuse_unused(args.dataset, {"test_fraction": args.test_fraction}, "folder and csv")
        refuse_unused(
            args.dataset, {"val_fraction": args.val_fraction}, "folder, csv and the paper tasks"
        )
        return {}
    refuse_unused(args.dataset, {"test_fraction": args.test_fraction}, "folder and csv")
    error = split_option_error(args.dataset, "--val-fraction", args.val_fraction, None)
    if error:
        raise UserError(error)
    return _given(
        {"val_fraction": args.val_fraction, "uncertain": args.uncertain, "split_by": args.split_by}
    )


def _refuse_task_options(args: argparse.Namespace) -> None:
    """``--uncertain`` is CheXpert's alone, ``--split-by`` ISIC 2020's."""
    if args.dataset != "chexpert":
        refuse_unused(args.dataset, {"uncertain": args.uncertain}, "chexpert")
    if args.dataset != "isic2020":
        refuse_unused(args.dataset, {"split_by": args.split_by}, "isic2020")


def local_options(args: argparse.Namespace) -> dict[str, Any]:
    """What only the loader of a user's own images takes (``manual_dir``, bad-image policy)."""
    if args.dataset in LOCAL_KINDS:
        return _given({"manual_dir": args.manual_dir}) | (
            {"skip_bad_images": True} if args.skip_bad_images else {}
        )
    for flag, given in (("--manual-dir", args.manual_dir is not None),
                        ("--skip-bad-images", args.skip_bad_images)):  # fmt: skip
        if not given:
            continue
        if args.dataset == "demo":  # no files at all
            raise UserError(
                f"{flag} applies to folder and csv datasets; demo is generated in memory "
                "from a seed and reads no files"
            )
        if args.dataset.startswith("medmnist/"):  # no prepare step, and no flag of it
            raise UserError(
                f"{flag} applies to folder and csv datasets; "
                + medmnist_file_place(args.dataset, "the run")
            )
        # A no-op here: the images were decoded (or skipped) when prepared.
        raise UserError(
            f"{flag} applies to folder and csv datasets; {args.dataset} reads what "
            "experiments.prepare wrote into --data-dir"
            + (
                " (give it to experiments.prepare)"
                if flag == "--skip-bad-images" and not args.dataset.startswith("medmnist/")
                else ""  # MedMNIST's arrays hold no image file to skip: prepare refuses it
            )
        )
    return {}


def refuse_split_seed(dataset: str, flag: str, seed: int) -> None:
    """A split seed (``--seed``, ``--data-seed``) for a dataset whose splits are all given."""
    error = split_option_error(dataset, flag, seed, 0)
    if error:
        raise UserError(error)


def _given(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


def refuse_unused(dataset: str, options: dict[str, Any], owner: str) -> None:
    """The first of ``options`` given (not None) is refused: it applies to ``owner`` only."""
    given = [k for k, v in options.items() if v is not None]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise UserError(f"{flag} applies to {owner} only, not to --dataset {dataset}")


DEMO_OF_GRID = "demo, the grid's only dataset here"
"""How sweep and select name a demo-only selection of their grid (they have no --dataset)."""


def refuse_data_dir_for_demo(
    data_dir: str | None, datasets: set[str], named: str = "--dataset demo"
) -> None:
    """``--data-dir`` for the demo task alone (synthetic, no files): refused before it is
    created, not made and left empty. ``named``: how the command chose demo (sweep and
    select have no ``--dataset``: their grid did)."""
    if data_dir is not None and datasets == {DEMO}:
        raise UserError(f"--data-dir does not apply to {named} (synthetic, no files)")
