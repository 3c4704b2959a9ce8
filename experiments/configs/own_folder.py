"""Your own images: every paper strategy on a folder of class subfolders, three seeds.

    MEDFT_FOLDER=~/data/my_xrays python -m experiments.sweep \
        --config experiments/configs/own_folder.py --out runs/mine --dry-run
    MEDFT_FOLDER=~/data/my_xrays python -m experiments.sweep \
        --config experiments/configs/own_folder.py --out runs/mine
    python -m experiments.report --runs runs/mine --out report/mine
    MEDFT_FOLDER=~/data/my_xrays python -m experiments.select \
        --config experiments/configs/own_folder.py --only arch=resnet50 --out runs/mine-select

The folder (``MEDFT_FOLDER``, or edit ``FOLDER`` below) holds one subfolder per class
(``normal/``, ``effusion/``), or ``train/``, ``val/`` and ``test/`` holding those; what is
missing is carved, seeded, at the protocol's fractions. Copy this file to change the
grid. The options the run command takes as flags go into ``dataset_options``, under
the dataset's name (``folder``; a labels CSV is ``csv``, with ``csv_file`` and
``group_column``): below, commented out, each patient's images in one subfolder of its
class (``--patient-folders``) and 12-bit values in 16-bit files (``--bits-stored 12``);
uncomment what applies. BUILD.md "Preparing data" describes the options, and "What the toolkit
refuses, and why" the decoding ones (``dicom_window``, ``bits_stored``) and ``test_fraction``.
"""

import os

from medft_jax.grid import Grid
from medft_jax.names import PAPER_STRATEGIES

FOLDER = os.environ.get("MEDFT_FOLDER", "")
"""Your folder: ``MEDFT_FOLDER``, or write its path here."""


def get_config() -> Grid:
    if not FOLDER:
        raise ValueError(
            "set MEDFT_FOLDER to your images' folder, or write it in a copy of this file"
        )
    return Grid(
        name="own_folder",
        datasets=("folder",),
        archs=("resnet50", "densenet121", "vgg19"),
        strategies=tuple(PAPER_STRATEGIES),
        lrs=(1e-3, 1e-4, 1e-5),
        seeds=(0, 1, 2),
        settings={"weights": "auto"},  # the protocol's 224 px, batch 64, 50 epochs
        dataset_options={
            "folder": {
                "manual_dir": FOLDER,
                # "patient_folders": True,  # <class>/<patient>/<images>
                # "bits_stored": 12,        # 16-bit files holding 12-bit values
                # "dicom_window": [40, 80], # one window for every DICOM file
            }
        },
    )
