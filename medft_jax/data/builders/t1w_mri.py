"""T1-weighted contrast-enhanced brain MRI (Cheng et al. 2015, figshare 1512427): 3 tumour types.

Layout: 3,064 ``N.mat`` files (any folder depth, e.g. the four unzipped
parts), MATLAB v7.3, i.e. HDF5, read with h5py: ``cjdata/image`` (int16,
mostly 512×512; MATLAB stores column-major, so h5py sees it transposed),
``cjdata/label`` (1 meningioma, 2 glioma, 3 pituitary), ``cjdata/PID``
(patient id as UTF-16 code units). ``cvind.mat`` (the release's 5-fold ids)
is not an image: it only tells whether the copy is the official release, which
must then hold ``1.mat`` .. ``3064.mat``, each once, and nothing else (see
:func:`refuse_partial_copy`). Without it, a folder holding more than one zip
part's worth of release names must hold every one of them, and nothing else. Each image is
min-max scaled to uint8 grey (the intensities have no fixed range). The
paper's split is patient-disjoint with ~18% test (2,522 / 542): ``test`` is
carved at that fraction, stratified, seeded, then ``val`` from the rest.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from medft_jax.data.builders.base import MedicalBuilder, MedicalConfig, Task, name_runs
from medft_jax.data.errors import DataError
from medft_jax.data.examples import Example, standard_splits
from medft_jax.data.images import SKIP_HINT
from medft_jax.data.paths import scan_files
from medft_jax.data.pixels import check_finite, check_size, minmax_to_uint8

CLASS_NAMES = ("meningioma", "glioma", "pituitary")
TEST_FRACTION = 542 / 3064
IGNORED = ("cvind.mat",)
FOLD_IDS = "cvind.mat"
OFFICIAL_IMAGES = 3064
"""The release's images, ``1.mat`` .. ``3064.mat``, each with a fold id in its ``cvind.mat``."""
PART_RANGES = ((1, 766), (767, 1532), (1533, 2298), (2299, 3064))
PARTS = "1-766, 767-1532, 1533-2298 and 2299-3064"
"""The numbers each of the release's four zip parts holds (brainTumorDataPublic_<part>)."""


class UnreadableMat(DataError):
    """A ``.mat`` file that cannot be read as HDF5 (truncated, damaged): a bad file,
    which ``--skip-bad-images`` skips, unlike a readable file with a wrong label."""


def _h5py():
    """h5py (the ``[prepare]`` extra): without it, one line naming the install, not a
    traceback from inside the listing."""
    try:
        import h5py
    except ImportError as e:
        raise DataError(
            f"reading T1w MRI's .mat files needs h5py ({e}); pip install 'medft-jax[prepare]'"
        ) from None
    return h5py


def _open(path: Path):
    h5py = _h5py()
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise UnreadableMat(f"cannot read {path} as MATLAB v7.3 (HDF5): {err}{SKIP_HINT}") from None


def _field(f, path: Path, name: str) -> np.ndarray:
    try:
        return np.asarray(f["cjdata"][name])
    except KeyError:
        raise DataError(f"{path}: missing field cjdata/{name}") from None
    except (OSError, RuntimeError, ValueError) as err:  # h5py's errors of a damaged file
        raise UnreadableMat(f"cannot read {path}: cjdata/{name}: {err}{SKIP_HINT}") from None


def read_meta(path: Path) -> tuple[int, str]:
    """``(label 1..3, patient id)`` of one ``.mat`` file, without reading the image."""
    with _open(path) as f:
        raw = _field(f, path, "label").ravel()
        pid_codes = _field(f, path, "PID").ravel()
        # MATLAB writes an empty char array as its dimensions, [0 0], marked MATLAB_empty:
        # read as text it would be "\x00\x00", one patient shared by every such file.
        try:
            empty = bool(f["cjdata"]["PID"].attrs.get("MATLAB_empty", 0))
        except (OSError, RuntimeError) as err:
            raise UnreadableMat(f"cannot read {path}: cjdata/PID: {err}{SKIP_HINT}") from None
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
    """The image as MATLAB shows it (rows × columns), in its stored dtype. Its declared
    shape is checked against the size limits before it is read: a 5 KB file declaring
    60000×60000 asked for 6.7 GiB (a MemoryError traceback, not skippable as bad)."""
    with _open(path) as f:
        try:
            shape = tuple(f["cjdata"]["image"].shape)
        except (KeyError, OSError, RuntimeError, ValueError, TypeError, AttributeError):
            shape = ()  # missing or unreadable: _field names it
        if len(shape) == 2:  # stored column-major: MATLAB's columns × rows
            check_size(path, shape[0], shape[1])
        image = _field(f, path, "image")
    if image.ndim != 2 or image.size == 0:
        raise DataError(f"{path}: cjdata/image must be a 2-D image, got shape {image.shape}")
    return image.T


def decode(path: Path) -> Image.Image:
    """Min-max scaled uint8 greyscale PIL image of a ``.mat`` file (size limits as every image)."""
    image = read_image(path)
    check_size(path, image.shape[1], image.shape[0])
    check_finite(image, path)
    if image.min() == image.max():  # min-max scaling has no range: it was all black
        raise UnreadableMat(
            f"{path}: cjdata/image holds one value ({image.flat[0]}) everywhere, a blank or "
            "damaged slice"
        )
    return Image.fromarray(minmax_to_uint8(image), mode="L")


def fold_id_count(path: Path) -> int:
    """How many images ``cvind.mat`` gives a fold id (3,064 in the official release).

    Read as MATLAB v7.3 (HDF5, as the images) or an older MAT file (scipy): the
    variable ``cvind``, or the file's only one. One that cannot be read is an error
    naming it: silently passed over, it would let a partial copy through.
    """
    arrays: dict[str, np.ndarray] = {}
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as f:
            arrays = {k: np.asarray(v) for k, v in f.items() if isinstance(v, h5py.Dataset)}
    except (OSError, RuntimeError, ValueError):
        from scipy.io import loadmat

        try:
            arrays = {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
        except Exception as err:  # scipy fails in many ways on a file that is not a MAT file
            raise DataError(
                f"cannot read {path} as a MATLAB file ({err}); it is the release's 5-fold ids, "
                "read to check that the copy is whole: replace it with the release's file"
            ) from None
    ids = arrays.get("cvind", next(iter(arrays.values())) if len(arrays) == 1 else None)
    if ids is None:
        raise DataError(
            f"{path}: no variable cvind among {sorted(arrays)}; expected the release's 5-fold "
            f"ids, one per image ({OFFICIAL_IMAGES:,})"
        )
    return int(np.asarray(ids).size)


RELEASE_NAMES = {str(n): n for n in range(1, OFFICIAL_IMAGES + 1)}
"""The release's stems, written so (``"1"`` .. ``"3064"``; not ``"01"``), and their numbers."""
PART_SIZE = PART_RANGES[0][1] - PART_RANGES[0][0] + 1
"""The images of one zip part (766): a folder of more release names than that is the release."""


def refuse_partial_copy(manual_dir: Path, scanned: list[Path]) -> None:
    """Refuse a copy of the official release that is not whole or holds other files,
    naming the first missing runs or the first other file.

    The copy claims to be the release when its ``cvind.mat`` holds the release's
    3,064 fold ids, or, without that file, when it holds more than one zip part's
    worth (766) of the release's names ``1.mat`` .. ``3064.mat`` (or exactly some
    of its four parts, whole: :func:`_refuse_whole_parts`). Its images are then
    ``1.mat`` .. ``3064.mat``, each once, and nothing else. One zip part not unpacked
    (766 images) or a copy cut short would leave the patient-disjoint split smaller,
    and the paper's 2,522 / 542 out of reach, without a word; an extra file
    (``1 (1).mat``, ``01.mat``) is one image twice. Another copy (a ``cvind.mat`` of
    another size, no more than a part's worth of release names: a user's subset, the
    tests' small fakes) is not checked: nothing says how many images it should hold.
    """
    present = {RELEASE_NAMES[p.stem] for p in scanned if p.stem in RELEASE_NAMES}
    index = next((p for p in scanned if p.name == FOLD_IDS), None)
    if index is None:
        _refuse_whole_parts(manual_dir, present)
        if len(present) <= PART_SIZE:
            return  # a few release names: a user's own subset
        claim = (
            f"the folder holds {len(present):,} of them and no {FOLD_IDS}, more than a zip "
            f"part's {PART_SIZE}, so the copy claims to be the release"
        )
        _refuse_extra(claim, scanned, " (or give a subset of your own other names)")
        _refuse_missing(
            present,
            f"{manual_dir}: holds {len(present):,} of the release's {OFFICIAL_IMAGES:,} images "
            f"and no {FOLD_IDS}",
            f": a zip part cut short? unpack each of the four parts ({PARTS}) whole",
        )
        return
    if fold_id_count(index) != OFFICIAL_IMAGES:
        return
    claim = f"{index.name} indexes {OFFICIAL_IMAGES:,}, so the copy claims to be the release"
    _refuse_extra(claim, scanned)
    _refuse_missing(
        present,
        f"{manual_dir}: {len(present):,} of T1w MRI's {OFFICIAL_IMAGES:,} official images "
        f"({index.name} indexes all of them)",
        f". The split needs every image (a partial copy? the release's four zip parts hold "
        f"{PARTS})",
    )


def _refuse_missing(present: set[int], head: str, tail: str) -> None:
    """Name the runs of release numbers a release copy lacks (``head; missing ...tail``)."""
    missing = [n for n in range(1, OFFICIAL_IMAGES + 1) if n not in present]
    if missing:
        raise DataError(f"{head}; missing {name_runs(missing, '{}.mat'.format)}{tail}")


def _refuse_extra(claim: str, scanned: list[Path], hint: str = "") -> None:
    """Name the first image of a release copy whose name is not one of the release's
    (``1.mat`` .. ``3064.mat``, written so) or repeats one (``1.mat`` and ``1.MAT``),
    and count them; ``claim``: why the copy is the release (see
    :func:`refuse_partial_copy`), for both its ways of claiming it."""
    seen: set[str] = set()
    extra = []
    for path in scanned:
        if path.name in IGNORED:
            continue
        if path.stem not in RELEASE_NAMES or path.stem in seen:
            extra.append(path)
        seen.add(path.stem)
    if extra:
        raise DataError(
            f"{extra[0]}: not one of T1w MRI's official names 1.mat..{OFFICIAL_IMAGES}.mat "
            f"(each once; {claim}); {len(extra)} such file(s): a copy? remove it{hint}"
        )


def _refuse_whole_parts(manual_dir: Path, present: set[int]) -> None:
    """Name the zip parts a copy holds when its release names (``present``) are exactly
    some of the four, whole (``--manual-dir`` at one unzipped part, or three of four)."""
    held = [(lo, hi) for lo, hi in PART_RANGES if any(lo <= n <= hi for n in present)]
    if not held or len(held) == len(PART_RANGES):
        return
    if present != {n for lo, hi in held for n in range(lo, hi + 1)}:
        return
    names = ", ".join(f"{lo}-{hi}" for lo, hi in held)
    raise DataError(
        f"{manual_dir}: holds only the release's zip part(s) {names} ({len(present):,} of "
        f"{OFFICIAL_IMAGES:,} images) and no {FOLD_IDS}; point --manual-dir at the folder "
        f"holding all four parts ({PARTS}) and {FOLD_IDS}"
    )


def parse(
    manual_dir: Path, config: MedicalConfig, *, skipped: list[str] | None = None
) -> dict[str, list[Example]]:
    """The examples of every ``.mat`` file, split; see the module docstring.

    ``skipped`` (``--skip-bad-images``): a file that cannot be read (truncated,
    damaged) is left out and its id appended, as an image that fails to decode
    is skipped; ``None``: it is an error naming it. A readable file whose label or
    patient id is wrong is refused either way: that is a wrong copy, not a bad file.
    """
    scanned = scan_files(manual_dir, manual_dir, (".mat",))
    files = [p for p in scanned if p.name not in IGNORED]
    if not files:
        raise DataError(f"{manual_dir}: no .mat files found; expected {LAYOUT}")
    by_name: dict[str, Path] = {}
    for p in files:
        if p.name in by_name:
            raise DataError(
                f"{by_name[p.name]} and {p} are both {p.name}: the release names each image "
                "once (a zip part unpacked twice?); remove one copy"
            )
        by_name[p.name] = p
    refuse_partial_copy(manual_dir, scanned)
    examples = []
    for path in files:
        rel = path.relative_to(manual_dir).as_posix()
        try:
            label, pid = read_meta(path)
        except UnreadableMat:
            if skipped is None:
                raise
            skipped.append(rel)
            continue
        if label not in (1, 2, 3):
            raise DataError(
                f"{path}: cjdata/label {label} outside the class list "
                "1 (meningioma), 2 (glioma), 3 (pituitary)"
            )
        examples.append(Example(path, label - 1, rel, patient=pid))
    if not examples:
        raise DataError(
            f"{manual_dir}: every .mat file was skipped as unreadable ({len(files)}, "
            "--skip-bad-images); repair or replace the files"
        )
    return standard_splits(
        examples,
        val_fraction=config.val_fraction,
        test_fraction=TEST_FRACTION,
        seed=config.seed,
        stratify=True,
        class_names=CLASS_NAMES,
    )


LAYOUT = (
    "<dir>/**/N.mat, MATLAB v7.3 files with cjdata/{image,label,PID} "
    "(https://doi.org/10.6084/m9.figshare.1512427)"
)
TASK = Task(
    name="t1w_mri",
    class_names=CLASS_NAMES,
    parse=parse,
    layout=LAYOUT,
    decode=decode,
    reads_files=True,
)


class T1wMri(MedicalBuilder, skip_registration=True):
    """TFDS builder of the T1w brain-tumour MRI task (patient-disjoint test)."""

    name = "medft_t1w_mri"
    TASK = TASK
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT
