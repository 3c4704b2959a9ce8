"""The paper tasks' own options (CheXpert's uncertain labels, ISIC 2020's split unit).

A leaf module: records, reports and grid files name these options without
loading a dataset, so it imports nothing from the data pipeline or TFDS.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from medft_jax.names import TASK_NAMES

TASK_OPTIONS = ("val_fraction", "uncertain", "split_by")
"""The options a paper task's load takes (each task reads those that apply to it)."""

OPTION_OWNERS = {"uncertain": ("chexpert", "ones"), "split_by": ("isic2020", "patient")}
"""Task-specific options: ``{option: (the task that reads it, its default)}``, as the
builders' ``Task.options`` say; kept here so loading needs no builder (no TFDS import)."""


_LOCAL_COMMON = (
    "manual_dir",
    "skip_bad_images",
    "val_fraction",
    "test_fraction",
    "bits_stored",
    "dicom_window",
)
LOCAL_OPTIONS: dict[str, tuple[str, ...]] = {
    "folder": (*_LOCAL_COMMON, "patient_folders"),
    "csv": (
        *_LOCAL_COMMON,
        "csv_file",
        "path_column",
        "label_column",
        "label_columns",
        "class_names",
        "group_column",
        "split_column",
    ),
}
"""The options a user's own data (``folder``, ``csv``) takes, as :func:`medft_jax.data.load`
and :func:`medft_jax.data.local.load_local` read them: checked by name when a grid
file loads, so a typo is one line before any run, not a failure mid-sweep."""


def unknown_option(dataset: str, options: Mapping[str, Any]) -> str | None:
    """The one line naming the first option ``dataset`` does not take, or None.

    Only for the datasets whose options are listed here (the user's own
    ``folder``/``csv``, the paper tasks); others (demo, MedMNIST) say so
    where they load.
    """
    if dataset in LOCAL_OPTIONS:
        known = LOCAL_OPTIONS[dataset]
    elif dataset in TASK_NAMES:  # a task-specific option is its owner's alone, as on the CLI
        known = tuple(o for o in TASK_OPTIONS if OPTION_OWNERS.get(o, (dataset,))[0] == dataset)
    else:
        return None
    unknown = sorted(set(options) - set(known))
    if not unknown:
        return None
    if unknown[0] in OPTION_OWNERS and dataset in TASK_NAMES:
        return f"{unknown[0]} applies to {OPTION_OWNERS[unknown[0]][0]} only, not {dataset}"
    return f"unknown option {unknown[0]!r}; {dataset} takes {', '.join(known)}"


OPTION_CHOICES = {"uncertain": ("ones", "zeros", "libauc"), "split_by": ("patient", "image")}
"""The values the task options take (the builders' ``POLICIES`` and ``SPLIT_BY``; a test
holds them equal), for the command line's choices and a grid file's check."""
_PATHS = ("manual_dir", "csv_file")
_TEXT = ("path_column", "label_column", "group_column", "split_column")
_FRACTIONS = ("val_fraction", "test_fraction")


def option_value_error(option: str, value: Any) -> str | None:
    """Why ``value`` cannot be ``option``'s (a grid file's ``dataset_options``), or None.

    The command line's flags give these types; a grid file may write anything,
    and ``"skip_bad_images": "no"`` would read as true, ``"val_fraction": "0.2"``
    fail mid-sweep.
    """
    if value is None:  # unset: the default
        return None
    if option in _PATHS:
        ok = isinstance(value, os.PathLike) or (isinstance(value, str) and bool(value.strip()))
        expected = "a path"
    elif option in _TEXT:
        ok, expected = isinstance(value, str) and bool(value.strip()), "a non-empty string"
    elif option in OPTION_CHOICES:
        choices = OPTION_CHOICES[option]
        ok, expected = value in choices, f"one of {', '.join(choices)}"
    elif option in ("label_columns", "class_names"):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        expected = "a list of strings"
    elif option in ("skip_bad_images", "patient_folders"):
        ok, expected = isinstance(value, bool), "True or False"
    elif option in _FRACTIONS:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok, expected = number and 0 < value < 1, "a number in (0, 1)"
    elif option == "bits_stored":
        integer = isinstance(value, int) and not isinstance(value, bool)
        ok, expected = integer and 8 <= value <= 16, "an integer from 8 to 16"
    elif option == "dicom_window":
        pair = isinstance(value, (list, tuple)) and len(value) == 2
        numbers = pair and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in value
        )
        ok = numbers and value[1] > 0
        expected = "[center, width]: two numbers, the width above 0"
    else:
        return None
    return None if ok else f"{option} must be {expected}, got {value!r}"


OFFICIAL_SPLITS = {
    "cholect50_instrument": "the official video lists (35 train, 5 val, 10 test videos)",
}
"""Paper tasks whose every split is given by the release: no carving, so no split seed."""


def official_splits(dataset: str) -> str | None:
    """What fixes ``dataset``'s splits when it carves none (MedMNIST, CholecT50), else None."""
    if dataset.startswith("medmnist/"):
        return "MedMNIST's official train/val/test"
    return OFFICIAL_SPLITS.get(dataset)


def split_option_error(dataset: str, flag: str, value: Any, default: Any) -> str | None:
    """The one line refusing a split seed or val fraction for a dataset that carves no split.

    Such a value changes nothing in the data but the run's name: runs "on
    other splits" would be the same split, and their spread no split
    variance at all. ``value`` None or ``default`` passes.
    """
    fixed = official_splits(dataset)
    if fixed is None or value is None or value == default:
        return None
    return f"{flag} {value} does not apply to {dataset}: its splits are {fixed}; leave it out"


def task_options(dataset: str, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``dataset``'s task-specific options (:data:`OPTION_OWNERS`), defaults filled in.

    What a record carries to say which labels and split its numbers come
    from (e.g. ``{"split_by": "image"}`` for ISIC 2020); empty for datasets
    without such options. ``given``: a loaded dataset's metadata, a grid's
    ``dataset_options`` entry or a record's (missing or None: the default).
    """
    given = given or {}
    options = {
        option: given.get(option) or default
        for option, (owner, default) in OPTION_OWNERS.items()
        if owner == dataset
    }
    if dataset in TASK_NAMES and official_splits(dataset) is None:
        # The share of the training pool carved into val: runs at two fractions are two
        # splits, which a report must not average as one cell (nor --latest take one for
        # a rerun of the other on newer data).
        options["val_fraction"] = float(given.get("val_fraction") or TASK_VAL_FRACTION)
    return options


TASK_VAL_FRACTION = 0.1
"""A paper task's default ``--val-fraction`` (experiments.prepare's)."""
