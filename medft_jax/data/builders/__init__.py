"""TFDS builders of the paper's eight tasks, one module per dataset, looked up by name.

Importing this package imports tensorflow_datasets (not TensorFlow);
preparing needs TensorFlow, reading what was prepared does not.
"""

from __future__ import annotations

import importlib

from medft_jax.data.errors import DataError

BUILDERS: dict[str, tuple[str, str]] = {
    "chexpert": ("chexpert", "Chexpert"),
    "mura_shoulder": ("mura", "MuraShoulder"),
    "mura_wrist": ("mura", "MuraWrist"),
    "mura_humerus": ("mura", "MuraHumerus"),
    "t1w_mri": ("t1w_mri", "T1wMri"),
    "bach": ("bach", "Bach"),
    "isic2020": ("isic2020", "Isic2020"),
    "cholect50_instrument": ("cholect50", "Cholect50Instrument"),
}


def builder_class(name: str):
    """The :class:`~medft_jax.data.builders.base.MedicalBuilder` subclass of task ``name``."""
    try:
        module, cls = BUILDERS[name]
    except KeyError:
        raise DataError(f"unknown task {name!r}; tasks: {', '.join(BUILDERS)}") from None
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)
