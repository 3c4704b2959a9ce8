"""T1-weighted contrast-enhanced brain MRI (Cheng et al. 2015, figshare 1512427): 3 tumour types.

Layout: 3,064 ``N.mat`` files (any folder depth, e.g. the four unzipped
parts), MATLAB v7.3, i.e. HDF5, read with h5py: ``cjdata/image`` (int16,
mostly 512×512; MATLAB stores column-major, so h5py sees it transposed),
``cjdata/label`` (1 meningioma, 2 glioma, 3 pituitary), ``cjdata/PID``
(patient id as UTF-16 code units). ``cvind.mat`` is ignored. Each image is
min-max scaled to uint8 grey (the intensities have no fixed range). The
paper's split is patient-disjoint with ~18% test (2,522 / 542): ``test`` is
carved at that fraction, stratified, seeded, then ``val`` from the rest.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from medft_jax.data.builders.base import MedicalBuilder, MedicalConfig, Task
from medft_jax.data.errors import DataError
from medft_jax.data.examples import Example, standard_splits
from medft_jax.data.paths import scan_files
from medft_jax.data.pixels import check_finite, check_size, minmax_to_uint8

CLASS_NAMES = ("meningioma", "glioma", "pituitary")
TEST_FRACTION = 542 / 3064
IGNORED = ("cvind.mat",)


def _open(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"cannot read {path} as MATLAB v7.3 (HDF5): {err}") from None


def _field(f, path: Path, name: str) -> np.ndarray:
    try:
        return np.asarray(f["cjdata"][name])
    except KeyError:
        raise DataError(f"{path}: missing field cjdata/{name}") from None


def read_meta(path: Path) -> tuple[int, str]:
    """``(label 1..3, patient id)`` of one ``.mat`` file, without reading the image."""
    with _open(path) as f:
        raw = _field(f, path, "label").ravel()
        pid_codes = _field(f, path, "PID").ravel()
        # MATLAB writes an empty char array as its dimensions, [0 0], marked MATLAB_empty:
        # read as text it would be "\x00\x00", one patient shared by every such file.
        empty = bool(f["cjdata"]["PID"].attrs.get("MATLAB_empty", 0))
    pid = "" if empty else "".join(chr(int(c)) for c in pid_codes).strip("\x00 \t\r\n")
    if not pid:
        raise DataError(
            f"{path}: cjdata/PID is empty; expected the patient id (the test split is "
            "patient-disjoint, and an image without one cannot be placed)"
        )
    return _whole(raw, path), pid


def _whole(raw: np.ndarray, path: Path) -> int:
    """The one label value as an int; a fraction, NaN or text is refused (int() would truncate)."""
    if raw.size != 1 or raw.dtype.kind not in "iuf":
        raise DataError(f"{path}: cjdata/label must be one number, got {raw.dtype} {raw.shape}")
    value = raw[0].item()
    if not (math.isfinite(value) and float(value).is_integer()):
        raise DataError(f"{path}: cjdata/label {value!r} is not a whole class number 1..3")
    return int(value)


def read_image(path: Path) -> np.ndarray:
    """The image as MATLAB shows it (rows × columns), in its stored dtype."""
    with _open(path) as f:
        image = _field(f, path, "image")
    if image.ndim != 2 or image.size == 0:
        raise DataError(f"{path}: cjdata/image must be a 2-D image, got shape {image.shape}")
    return image.T


def decode(path: Path) -> Image.Image:
    """Min-max scaled uint8 greyscale PIL image of a ``.mat`` file (size limits as every image)."""
    image = read_image(path)
    check_size(path, image.shape[1], image.shape[0])
    check_finite(image, path)
    return Image.fromarray(minmax_to_uint8(image), mode="L")


def parse(manual_dir: Path, config: MedicalConfig) -> dict[str, list[Example]]:
    files = [p for p in scan_files(manual_dir, manual_dir, (".mat",)) if p.name not in IGNORED]
    if not files:
        raise DataError(f"{manual_dir}: no .mat files found; expected {LAYOUT}")
    examples = []
    for path in files:
        label, pid = read_meta(path)
        if label not in (1, 2, 3):
            raise DataError(
                f"{path}: cjdata/label {label} outside the class list "
                "1 (meningioma), 2 (glioma), 3 (pituitary)"
            )
        rel = path.relative_to(manual_dir).as_posix()
        examples.append(Example(path, label - 1, rel, patient=pid))
    return standard_splits(
        examples,
        val_fraction=config.val_fraction,
        test_fraction=TEST_FRACTION,
        seed=config.seed,
        stratify=True,
    )


LAYOUT = (
    "<dir>/**/N.mat, MATLAB v7.3 files with cjdata/{image,label,PID} "
    "(https://doi.org/10.6084/m9.figshare.1512427)"
)
TASK = Task(name="t1w_mri", class_names=CLASS_NAMES, parse=parse, layout=LAYOUT, decode=decode)


class T1wMri(MedicalBuilder, skip_registration=True):
    """TFDS builder of the T1w brain-tumour MRI task (patient-disjoint test)."""

    name = "medft_t1w_mri"
    TASK = TASK
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT
