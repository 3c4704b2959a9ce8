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
* **16-bit integer samples** (PNG, TIFF, JPEG 2000, PGM): the data type's full
  range, ``v >> 8`` for unsigned (0..65535 -> 0..255 in 256 equal bins),
  ``(v + 32768) >> 8`` for signed. Why the type's range and not each
  image's own min..max: a fixed rule gives a stored value the same grey in
  every image, as 8-bit images have, so two images (or two classes) that
  differ only in brightness stay different; per-image min-max maps a
  uniformly brighter image onto the darker one. It is also what
  OpenCV's ``imread`` and scikit-image's ``img_as_ubyte`` do, and it agrees
  with Pillow, which already reads 16-bit RGB(A) PNG/TIFF as their high
  byte. The cost: data using only part of the range (12-bit values in a
  16-bit file) comes out dark, with 16 grey levels; window such data to
  8 bits yourself, or hand over the DICOM files, whose window is applied.
  An 8-bit image stored as 16-bit by the usual ``v * 257`` comes back as
  exactly ``v``.
* **Float samples**: [0, 1] is the float image convention (scikit-image,
  torchvision), mapped by ``round(v * 255)``. A float image with values
  outside [0, 1] is refused: a float file states no range, and guessing one
  per image would silently erase brightness differences between images.
* **DICOM** (see :mod:`medft_jax.data.dicom`): the modality LUT (rescale
  slope/intercept), then the VOI LUT or the first window (centre/width, with
  its LINEAR, LINEAR_EXACT or SIGMOID function), else the pixel values' own
  min..max (what a viewer shows without a window); MONOCHROME1 is inverted.
* **Refused**, with the path: 16-bit images whose values all lie below 256
  (8-bit data stored unscaled: the rule would turn them black), NaN or
  infinite samples, 32-bit integer
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

from medft_jax.data.errors import DataError

MAX_PIXELS = 8192 * 8192
"""67,108,864 pixels. Admits every real medical image we know of that is read
whole: mammograms (at most ~5928×4728 ≈ 28 Mpx), 2048×1536 BACH TIFFs, CT/MR
slices, chest X-rays (~3000×3000), whole-slide thumbnails and low-resolution
levels up to 8192²; a decoded RGB image is then at most 192 MiB. Whole-slide
images at full resolution (10^9 pixels and more) need tiling, not this path."""

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


def signed16_to_uint8(values: np.ndarray) -> np.ndarray:
    """Signed 16-bit samples -> uint8 by the type's full range (``(v + 32768) >> 8``)."""
    values = np.clip(np.asarray(values, np.int32), -32768, 32767)
    return ((values + 32768) >> 8).astype(np.uint8)


def unit_float_to_uint8(values: np.ndarray, path: Path | str) -> np.ndarray:
    """Float samples in [0, 1] -> ``round(v * 255)``; NaN/inf or other ranges are refused."""
    check_finite(values, path)
    lo, hi = float(values.min()), float(values.max())
    if lo < FLOAT_RANGE[0] or hi > FLOAT_RANGE[1]:
        raise DataError(
            f"{path}: float image values span [{lo:g}, {hi:g}]; float images must hold "
            "intensities in [0, 1] (or store the image as 8- or 16-bit integers)"
        )
    return np.rint(values.astype(np.float32) * np.float32(255)).astype(np.uint8)


def minmax_to_uint8(values: np.ndarray) -> np.ndarray:
    """The values' own min..max -> 0..255 (rounded); a constant image is all 0.

    Used where values have no fixed range: DICOM without a window, and the
    T1w MRI task's intensities (arbitrary units per scan).
    """
    image = np.asarray(values).astype(np.float64)
    lo, hi = image.min(), image.max()
    scaled = (image - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(image)
    return np.rint(scaled).astype(np.uint8)


def window_to_uint8(
    values: np.ndarray, center: float, width: float, function: str = "LINEAR"
) -> np.ndarray:
    """A DICOM window (PS3.3 C.11.2.1.2 and C.11.2.1.3) to 0..255, rounded.

    ``LINEAR``: below ``c - 0.5 - (w - 1) / 2`` black, above ``c - 0.5 +
    (w - 1) / 2`` white, linear between (needs ``w >= 1``). ``LINEAR_EXACT``:
    the same with ``c`` and ``w`` as given (``w > 0``). ``SIGMOID``:
    ``255 / (1 + exp(-4 (x - c) / w))`` (``w > 0``). Raises ValueError for a
    width outside those ranges or another function.
    """
    x = np.asarray(values, np.float64)
    function = function.upper()
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
