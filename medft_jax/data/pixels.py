"""From a file's samples to the 8-bit image the models see: the rules, and the size limits.

The models take 8-bit RGB (torchvision's ImageNet weights and their
preprocessing). Medical images are often 16-bit, float or DICOM, and
Pillow's ``convert("RGB")`` clips anything above 255 (a 16-bit X-ray comes
out white) and truncates floats (a [0, 1] float TIFF comes out black).
:func:`medft_jax.data.images.open_image`, which every file-based source
(``folder``, ``csv``, the paper tasks) and ``experiments.predict`` decode
through, converts by these rules instead:

* **8-bit images** (Pillow modes 1, L, P, RGB, RGBA, LA, CMYK, YCbCr, ...):
  ``convert("RGB")``, as before, byte for byte, so the torchvision parity
  and existing caches hold. Alpha is dropped, not composited: the colour
  stored under a transparent pixel is kept.
* **16-bit integer samples** (single-channel PNG, TIFF, JPEG 2000, PGM): a
  fixed range per dataset, the range of the bits its values use,
  ``bits_stored`` (``--bits-stored``, 8 to 16; 16 by default):
  ``v >> (bits - 8)`` for unsigned (16 bits: 0..65535 -> 0..255 in 256
  equal bins; 12 bits: 0..4095), ``(v + 2^(bits-1)) >> (bits - 8)`` for
  signed. Why a fixed range and not each image's own min..max: it gives a
  stored value the same grey in every image, as 8-bit images have, so two
  images (or two classes) that differ only in brightness stay different;
  per-image min-max maps a uniformly brighter image onto the darker one.
  With 16 bits it is also what OpenCV's ``imread`` and scikit-image's
  ``img_as_ubyte`` do, and it agrees with Pillow, which already reads 16-bit
  RGB(A) PNG/TIFF as their high byte. A file is refused when its values
  exceed the declared bits (the declaration is wrong). Without a
  declaration, a file whose values all fit in 14 bits (unsigned below
  16384; signed within -8192..8191) is refused rather than crushed: 12-bit
  X-rays saved in 16-bit PNGs are common, and the 16-bit rule would leave
  them 16 grey levels. The message asks for ``--bits-stored`` (12 for such
  X-rays, 16 to keep the 16-bit rule for data that is merely dark). An
  8-bit image stored as 16-bit by the usual ``v * 257`` comes back as
  exactly ``v``; one stored unscaled (0..255) needs ``--bits-stored 8``.
  DICOM files state their own bits and window, and ignore the option.
  16-bit greyscale+alpha PNG is greyscale: all 16 bits, alpha dropped as for
  8-bit LA. 16-bit colour PNG/TIFF, which Pillow reads as each sample's high
  byte, takes the 16-bit rule only (:func:`colour16_check`).
* **Float samples**: [0, 1] is the float image convention (scikit-image,
  torchvision), mapped by ``round(v * 255)``. A float image with values
  outside [0, 1] is refused: a float file states no range, and guessing one
  per image would silently erase brightness differences between images.
* **DICOM** (see :mod:`medft_jax.data.dicom`): the modality LUT (rescale
  slope/intercept), then the VOI LUT or the first window (centre/width, with
  its LINEAR, LINEAR_EXACT or SIGMOID function), else the pixel values' own
  min..max (what a viewer shows without a window; a file whose values are all
  one has none and is refused: black whatever the value), or one window for the
  whole dataset (``--dicom-window``, :func:`parse_dicom_window`) in place of
  all three; MONOCHROME1 is inverted.
* **Refused**, with the path: 16-bit images as above, NaN or
  infinite samples, files of several frames (multi-page TIFF, animated
  GIF/PNG/WebP, multi-frame DICOM: not one image), 32-bit integer
  samples (no range to map; save them as 16-bit), images Pillow cannot
  decode (e.g. 2-channel or 64-bit float TIFFs).

Size limits, checked from the header before any pixel is decoded (Pillow's
size, DICOM Rows/Columns): at most :data:`MAX_PIXELS` pixels and a long/short
side ratio of at most :data:`MAX_ASPECT`. A 274-byte PNG can claim 1×200000
pixels, which the shorter-side resize turns into gigabytes, or 100000²,
which Pillow refuses with a traceback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medft_jax.data.errors import BitsUndeclared, DataError, NotABadFile
from medft_jax.errors import plain_number

MAX_PIXELS = 8192 * 8192
"""67,108,864 pixels. Admits every real medical image we know of that is read
whole: mammograms (at most ~5928×4728 ≈ 28 Mpx), 2048×1536 BACH TIFFs, CT/MR
slices, chest X-rays (~3000×3000), whole-slide thumbnails and low-resolution
levels up to 8192²; a decoded RGB image is then at most 192 MiB, but decoding one
at the limit holds float64 copies on the way (a 16-bit DICOM of 8192²: about 3 GB at its
peak, per decoding thread). Whole-slide images at full resolution (10^9 pixels and more)
need tiling, not this path."""

MAX_ASPECT = 20.0
"""Long side / short side. Admits stitched full-spine and long-leg
radiographs (~1:4), panoramic dental X-rays (~1:2) and elongated tissue
thumbnails (up to ~1:10); the shorter-side resize of an image at this limit
holds 20 × resize_size² pixels (15 MiB at 512)."""

FLOAT_RANGE = (0.0, 1.0)
"""The intensities a float image must lie in (see the module docstring)."""


def check_size(path: Path | str, width: int, height: int) -> None:
    """Refuses, naming ``path``, an image over :data:`MAX_PIXELS` or :data:`MAX_ASPECT`."""
    width, height = int(width), int(height)
    if width < 1 or height < 1:
        raise DataError(f"{path}: image size {width}x{height} has no pixels")
    if width * height > MAX_PIXELS:
        raise DataError(
            f"{path}: image size {width}x{height} ({width * height:,} pixels) exceeds the limit "
            f"of {MAX_PIXELS:,} pixels (medft_jax.data.pixels.MAX_PIXELS)"
        )
    aspect = max(width, height) / min(width, height)
    if aspect > MAX_ASPECT:
        raise DataError(
            f"{path}: image size {width}x{height} has aspect ratio {aspect:.1f}:1, over the limit "
            f"of {MAX_ASPECT:g}:1 (medft_jax.data.pixels.MAX_ASPECT)"
        )


def check_finite(values: np.ndarray, path: Path | str) -> None:
    """Refuses, naming ``path``, samples that are NaN or infinite."""
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise DataError(f"{path}: {bad} pixel value(s) are NaN or infinite")


def unsigned_to_uint8(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ``bits``-bit samples -> uint8 by the type's full range (``v >> (bits - 8)``).

    Values above the declared range (a file that lies about its bit depth)
    saturate at 255. Fewer than 8 bits are stretched to 0..255.
    """
    values = np.asarray(values)
    if values.dtype.kind not in "ui":
        raise TypeError(f"unsigned_to_uint8 takes integer samples, got {values.dtype}")
    if bits >= 8:
        return np.clip(np.right_shift(values, bits - 8), 0, 255).astype(np.uint8)
    top = (1 << bits) - 1
    return np.rint(np.minimum(values, top) * (255.0 / top)).astype(np.uint8)


def signed_to_uint8(values: np.ndarray, bits: int = 16) -> np.ndarray:
    """Signed ``bits``-bit samples -> uint8 by that range (``(v + 2^(bits-1)) >> (bits - 8)``)."""
    half = 1 << (bits - 1)
    values = np.clip(np.asarray(values, np.int32), -half, half - 1)
    return ((values + half) >> (bits - 8)).astype(np.uint8)


BITS_STORED = range(8, 17)
"""The bit depths ``--bits-stored`` takes: how many bits a 16-bit file's values use."""


def check_bits_stored(bits: object) -> None:
    """Refuses a ``bits_stored`` that is not None or an integer in :data:`BITS_STORED`."""
    if bits is not None and (type(bits) is not int or bits not in BITS_STORED):
        raise DataError(f"--bits-stored must be an integer from 8 to 16, got {bits!r}")


DicomWindow = tuple[float, float]
"""A fixed DICOM window ``(center, width)`` (``--dicom-window``), in the values the
modality LUT gives (Hounsfield units for CT)."""


def parse_dicom_window(value: object, flag: str = "--dicom-window") -> DicomWindow | None:
    """``value`` (None, ``"CENTER,WIDTH"`` or a pair of numbers) as a checked window.

    Why a fixed window: each file's own WindowCenter/WindowWidth is what its
    scanner or technician chose (a brain window on one series, a bone window
    on the next), and a file without one is shown by its own min..max; either
    way one tissue can come out as different greys in different images, the
    per-image normalisation the 16-bit rule avoids. One window for the whole
    dataset maps a value to one grey everywhere. Raises DataError naming
    ``flag`` for anything but two finite numbers with a width above 0.
    """
    if value is None:
        return None
    expected = "CENTER,WIDTH: two numbers, the width above 0 (a CT brain window: 40,80)"
    parts = value.split(",") if isinstance(value, str) else value
    pair = isinstance(parts, (list, tuple)) and len(parts) == 2
    if not pair or any(isinstance(v, bool) for v in parts):  # True is no window edge
        raise DataError(f"{flag} must be {expected}, got {value!r}")
    if isinstance(value, str) and not all(plain_number(v.strip()) for v in parts):
        raise DataError(f"{flag} must be {expected}, got {value!r}")  # 1_0 read as 10
    try:
        center, width = float(parts[0]), float(parts[1])
    except (TypeError, ValueError):
        raise DataError(f"{flag} must be {expected}, got {value!r}") from None
    if not (np.isfinite(center) and np.isfinite(width) and width > 0):
        raise DataError(f"{flag} must be {expected}, got {value!r}")
    return center, width


UNDECLARED_FLOOR_BITS = 14
"""Without ``--bits-stored``, a 16-bit image whose values fit in this many bits is
refused: the 16-bit rule would leave it at most 64 grey levels (12-bit data: 16)."""


class GreyBitsUndeclared(BitsUndeclared):
    """A 16-bit greyscale file whose values fit in a few bits, refused until its bits are
    declared. Told apart from 16-bit colour (which takes the 16-bit rule only) so that a
    caller bound to a rule already chosen (``experiments.predict`` on a run's checkpoint)
    can say that training with ``--bits-stored N`` reads such files, true only here."""


class BitsExceeded(NotABadFile):
    """A 16-bit file whose values exceed the declared ``bits_stored``. ``path`` and
    ``what`` (the values and the range, without the advice) let a caller that may not
    change the bits (``experiments.predict``, bound to its checkpoint's) say what it can
    do instead of asking for the flag it would refuse."""

    def __init__(self, message: str, *, path: object, what: str) -> None:
        super().__init__(message)
        self.path = path
        self.what = what


class BitsOnColour(NotABadFile):
    """A 16-bit colour file under a ``bits_stored`` other than 16, which applies to
    greyscale only. Its own class so that ``experiments.predict``, whose rule comes from
    the checkpoint and not from a flag the user gave, says so rather than blame the flag."""

    def __init__(self, message: str, *, path: object) -> None:
        super().__init__(message)
        self.path = path


def integer16_to_uint8(
    values: np.ndarray, signed: bool, bits_stored: int | None, path: Path | str
) -> np.ndarray:
    """16-bit integer samples -> uint8 by the declared range, or the full 16-bit one.

    Refuses, naming ``path``, values outside the declared ``bits_stored``
    range and, with nothing declared, an image (not all zero) whose values
    fit in :data:`UNDECLARED_FLOOR_BITS` bits: only the user knows whether
    that is 12-bit data or a dark 16-bit image.
    """
    values = np.asarray(values)
    lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if bits_stored is None:
        if (lo, hi) != (0, 0) and _fits(lo, hi, UNDECLARED_FLOOR_BITS, signed):
            kind = "signed 16-bit" if signed else "16-bit"
            what = (
                f"{kind} image whose values all fit in {UNDECLARED_FLOOR_BITS} bits "
                f"({lo}..{hi}) would keep at most 64 grey levels under the 16-bit rule"
            )
            raise GreyBitsUndeclared(
                f"{path}: {what}; give --bits-stored with the bits its data uses (12 for most "
                "X-rays, 8 for unscaled 8-bit data), or --bits-stored 16 to keep the 16-bit rule",
                path=path,
                what=what,
            )
        bits_stored = 16
    if not _fits(lo, hi, bits_stored, signed):
        low, high = _range(bits_stored, signed)
        what = (
            f"values {lo}..{hi} exceed the {bits_stored}-bit range {low}..{high} of "
            f"--bits-stored {bits_stored}"
        )
        raise BitsExceeded(
            f"{path}: {what}; give the bits the data really uses", path=path, what=what
        )
    if signed:
        return signed_to_uint8(values, bits_stored)
    return unsigned_to_uint8(values, bits_stored)


def colour16_check(high_bytes: np.ndarray, bits_stored: int | None, path: Path | str) -> None:
    """Refuses 16-bit colour the 16-bit rule would crush, or that ``bits_stored`` cannot reach.

    Pillow decodes 16-bit RGB(A) PNG and TIFF to the high byte of each sample
    (the 16-bit rule, ``v >> 8``), so only that rule can be applied: another
    ``bits_stored`` is refused, and so, without one, is an image whose high
    bytes all lie below 64 (its samples fit in 14 bits), by the rule for
    grayscale files. All-zero high bytes are refused too: the low bytes
    cannot be read back from Pillow's decode, and such a file is far more
    often 8-bit values stored unscaled (all black under the rule) than a
    truly black image (``--bits-stored 16`` keeps the rule for that).
    """
    top = int(high_bytes.max()) if high_bytes.size else 0
    if bits_stored is not None and bits_stored != 16:
        raise BitsOnColour(
            f"{path}: --bits-stored {bits_stored} applies to 16-bit grayscale images; this is "
            "16-bit colour, which is read by the 16-bit rule only (save it as 8-bit colour, "
            "scaled as you want it)",
            path=path,
        )
    if bits_stored is None and top < 1 << (UNDECLARED_FLOOR_BITS - 8):
        what = (
            f"16-bit colour image whose values all fit in {UNDECLARED_FLOOR_BITS} bits "
            "would keep at most 64 levels per channel under the 16-bit rule"
        )
        raise BitsUndeclared(
            f"{path}: {what}; save it as 8-bit colour, scaled as you want it, or give "
            "--bits-stored 16 to keep the 16-bit rule",
            path=path,
            what=what,
        )


def _range(bits: int, signed: bool) -> tuple[int, int]:
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _fits(lo: int, hi: int, bits: int, signed: bool) -> bool:
    low, high = _range(bits, signed)
    return low <= lo and hi <= high


def unit_float_to_uint8(values: np.ndarray, path: Path | str) -> np.ndarray:
    """Float samples in [0, 1] -> ``round(v * 255)``; NaN/inf or other ranges are refused."""
    check_finite(values, path)
    lo, hi = float(values.min()), float(values.max())
    if lo < FLOAT_RANGE[0] or hi > FLOAT_RANGE[1]:
        raise NotABadFile(
            f"{path}: float image values span [{lo:g}, {hi:g}]; float images must hold "
            "intensities in [0, 1] (or store the image as 8- or 16-bit integers)"
        )
    return np.rint(values.astype(np.float32) * np.float32(255)).astype(np.uint8)


def minmax_to_uint8(values: np.ndarray, shown: np.ndarray | None = None) -> np.ndarray:
    """The values' own min..max -> 0..255 (rounded); a constant image is all 0 (DICOM and
    the T1w task refuse one before it gets here: :class:`medft_jax.data.dicom.
    OneValueUnwindowed`, ``t1w_mri.decode``).

    Used where values have no fixed range: DICOM without a window, and the
    T1w MRI task's intensities (arbitrary units per scan). ``shown``: the values
    whose min..max sets the range, when not all of them (a DICOM file's padding
    left out); values outside it clip to black or white.
    """
    image = np.asarray(values).astype(np.float64)
    sample = image if shown is None else np.asarray(shown, np.float64)
    lo, hi = sample.min(), sample.max()
    scaled = (image - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(image)
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def window_to_uint8(
    values: np.ndarray, center: float, width: float, function: str = "LINEAR"
) -> np.ndarray:
    """A DICOM window (PS3.3 C.11.2.1.2 and C.11.2.1.3) to 0..255, rounded.

    ``LINEAR``: below ``c - 0.5 - (w - 1) / 2`` black, above ``c - 0.5 +
    (w - 1) / 2`` white, linear between (needs ``w >= 1``). ``LINEAR_EXACT``:
    the same with ``c`` and ``w`` as given (``w > 0``). ``SIGMOID``:
    ``255 / (1 + exp(-4 (x - c) / w))`` (``w > 0``). Raises ValueError for a
    width outside those ranges, a centre or width not finite, or another function.
    """
    x = np.asarray(values, np.float64)
    function = function.upper()
    if not (np.isfinite(center) and np.isfinite(width)):  # NaN passed every width test
        raise ValueError(f"window centre {center:g} / width {width:g} is not a finite number")
    if function == "LINEAR":
        if width < 1:
            raise ValueError(f"window width {width:g} < 1 (LINEAR needs at least 1)")
        center, width = center - 0.5, width - 1
        if width == 0:
            return np.where(x <= center, 0, 255).astype(np.uint8)
    elif function in ("LINEAR_EXACT", "SIGMOID"):
        if width <= 0:
            raise ValueError(f"window width {width:g} <= 0 ({function} needs more than 0)")
        if function == "SIGMOID":
            with np.errstate(over="ignore"):  # exp -> inf far below the centre: 0, as meant
                sigmoid = 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
            return np.rint(sigmoid).astype(np.uint8)
    else:
        raise ValueError(f"VOI LUT function {function!r} (expected LINEAR, LINEAR_EXACT, SIGMOID)")
    scaled = ((x - center) / width + 0.5) * 255.0
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)
