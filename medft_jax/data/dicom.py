"""Reading DICOM files (``.dcm``/``.dicom``, or any file with the ``DICM`` preamble).

DICOM is how a hospital hands over its images. pydicom reads them; it is an
optional dependency (``pip install 'medft-jax[dicom]'``), imported only when
a DICOM file is met. One file becomes the 8-bit image the models see in the
order a DICOM viewer applies (PS3.3 C.11, PS3.4 N.2):

1. the header is checked first: pixel data present, one frame, Rows×Columns
   within :data:`~medft_jax.data.pixels.MAX_PIXELS` and
   :data:`~medft_jax.data.pixels.MAX_ASPECT`;
2. the pixel data is decoded (compressed transfer syntaxes need one of
   pydicom's plugins; when none is installed, one line names the file and
   the plugins that would do);
3. greyscale (MONOCHROME1/2): the modality LUT (RescaleSlope and
   RescaleIntercept, or a Modality LUT Sequence), then the VOI LUT Sequence
   when present (mapped by its output bit depth; a table declared 16-bit
   whose entries fit 12 bits, as some CRs write, by its data's), else the
   first WindowCenter/WindowWidth pair with its VOILUTFunction (refused when not
   finite, or when it shows the image's varied values as one grey), else the
   values' own min..max (what a viewer shows without a window; a file whose values
   are all one is refused, as it has none), leaving out the pixels that
   PixelPaddingValue (and PixelPaddingRangeLimit) mark as padding, which
   PS3.3 C.7.5.1.1.2 names so that a viewer does not count them in the range:
   they fall outside it, at the black end the standard puts them; an enhanced
   file's one frame takes its rescale and window from its functional groups;
   MONOCHROME1 (higher values darker) is then inverted so that bone is white
   as in MONOCHROME2; a fixed window given for the dataset
   (``--dicom-window CENTER,WIDTH``, LINEAR_EXACT: ``center - width/2`` black,
   ``center + width/2`` white) replaces the file's own VOI LUT, window or
   min..max, so that one value is one grey in every file;
4. colour: RGB and YBR (pydicom converts YBR to RGB) by the stored bit
   depth (``v >> (BitsStored - 8)``), PALETTE COLOR through its lookup tables
   (8-bit entries packed or one per 16-bit word).

Lookup tables are applied here (:func:`_lut_table`), not by pydicom's
``apply_*``, which wrap an 8-bit table's index past 255 and cannot hold
9-15-bit entries.

Refused with the path: multi-frame files (a volume or a cine loop is not
one image, and picking a frame silently would be a guess; export the frames
you mean as single-frame files), other photometric interpretations, NaN or
infinite float pixel data, and files pydicom cannot read: a truncated or
damaged file is one "unreadable DICOM file" line (see :func:`_parse_elements`),
which ``--skip-bad-images`` skips, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medft_jax.data.errors import DataError, NotABadFile
from medft_jax.data.pixels import (
    UNDECLARED_FLOOR_BITS,
    DicomWindow,
    check_finite,
    check_size,
    minmax_to_uint8,
    unsigned_to_uint8,
    window_to_uint8,
)
from medft_jax.errors import one_line, quiet_decoding

DICOM_SUFFIXES = (".dcm", ".dicom")
INSTALL_HINT = "pip install 'medft-jax[dicom]'"
GREY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT")


class DecoderMissing(NotABadFile):
    """A file needs a decoder that is not installed (pydicom, or one of its plugins).

    Not a bad file: ``--skip-bad-images`` does not skip it, since every
    file of that kind would be skipped and the dataset silently shrink.
    """


class OneValueUnwindowed(NotABadFile):
    """A greyscale DICOM file with no window whose pixels all hold one value (a blank or
    padded slice): its own min..max has no range, and mapping it to black whatever the
    value would make a slice of 500 and one of 3000 the same image. Refused, not
    skipped by ``--skip-bad-images``, as a LUT that no pixel reaches is: nothing is
    wrong with the file, and a fixed window (``--dicom-window``) shows it faithfully.
    ``path`` and ``what`` (the file's value, without the advice) let a caller that
    may not take the flag (``experiments.predict`` on a run's checkpoint) say what it
    can do instead."""

    def __init__(self, message: str, *, path: object, what: str) -> None:
        super().__init__(message)
        self.path = path
        self.what = what


class WindowOnColour(NotABadFile):
    """A colour DICOM file given a fixed window (``--dicom-window``), which has no meaning
    for it. ``path`` and ``photometric`` let a caller whose window is fixed by its
    checkpoint (``experiments.predict``) say what it can do, not "leave the flag out"."""

    def __init__(self, message: str, *, path: object, photometric: str) -> None:
        super().__init__(message)
        self.path = path
        self.photometric = photometric


def is_dicom(path: Path) -> bool:
    """True for a DICOM suffix or the ``DICM`` marker at byte 128 (the DICOM preamble)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with open(path, "rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM"


def patient_id(path: Path) -> str | None:
    """The PatientID (0010,0020) of a DICOM file; None for another file, a file without
    one, or one that cannot be read here (decoding names what is wrong with it)."""
    try:
        if not is_dicom(path):
            return None
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
        value = str(ds.get("PatientID", "") or "").strip()
    except Exception:  # a header check only: decoding names the damaged or missing file
        return None
    return value or None


def _pydicom(path: Path) -> Any:
    try:
        import pydicom
        import pydicom.pixels
    except ImportError:
        raise DecoderMissing(f"{path}: reading DICOM needs pydicom: {INSTALL_HINT}") from None
    return pydicom


WINDOW_BLANKED = "medft_window_blanked"
"""A key of a decoded image's ``info``, set on every file decoded under ``--dicom-window``:
True where the window showed the file's varied values as one grey (a window off their
range, or one so wide that their spread is under one grey level). Not refused per file, as
a file's own window that misses is: under a dataset's window one file may rightly be so
(an air-only slice); :mod:`medft_jax.data.local` counts them (and the files, without opening
each again to ask whether it is DICOM), and refuses a window that blanks them all."""


def read_dicom(path: Path, window: DicomWindow | None = None) -> Image.Image:
    """The DICOM file at ``path`` as an 8-bit L or RGB PIL image (see the module docstring).

    ``window``: a fixed ``(center, width)`` for greyscale files, in place of
    the file's own (a colour file is then refused: a window has no meaning
    for it, and passing it through unwindowed would be a silent exception).

    pydicom's own warnings and log records (a value longer than its VR allows,
    an unknown character set, each failing decoder plugin's traceback) are
    held back: a damaged file printed screenfuls of its bytes, and what
    matters is this function's one line, or an image whose header passed
    :func:`_check_header`.
    """
    with quiet_decoding():  # shared by the threads decoding a folder: not catch_warnings
        return _read_dicom(path, window)


def _headerless_image(pydicom: Any, path: Path) -> bool:
    """Whether ``path``, which has no DICOM file header, parses as a dataset holding an
    image all the same (Rows and pixel data: a raw dataset, as older tools write).

    Why: such a file is sound, only of a kind not read; called damaged, it was skipped
    by ``--skip-bad-images``, every file of that tool's (often one site's, one class's)
    with it."""
    try:
        ds = pydicom.dcmread(path, force=True, specific_tags=["Rows", "PixelData"])
        return "Rows" in ds and "PixelData" in ds
    except Exception:  # a guess on bytes that are no dataset: damaged, as said
        return False


def _read_dicom(path: Path, window: DicomWindow | None) -> Image.Image:
    pydicom = _pydicom(path)
    try:
        ds = pydicom.dcmread(path, defer_size="1 MB")
        _parse_elements(ds)
    except pydicom.errors.InvalidDicomError as err:
        if _headerless_image(pydicom, path):
            raise NotABadFile(
                f"{path}: a DICOM dataset without the DICOM file header (its preamble and "
                "DICM marker), not skipped as a damaged file: such a file is not read (its "
                "encoding would be a guess); write it with the header (e.g. pydicom's "
                "save_as(..., enforce_file_format=True))"
            ) from None
        why = one_line(err).replace(" Use force=True to force reading.", "")  # pydicom's API
        raise DataError(
            f"{path}: not a DICOM file ({why}): another kind of file, one cut short, or a raw "
            "dataset without the DICOM file header, which is not read"
        ) from None
    except (FileNotFoundError, PermissionError):
        raise  # open_image names it: a missing or unreadable file, not a damaged one
    except Exception as err:  # only pydicom's parser runs here: see _parse_elements
        raise DataError(f"{path}: unreadable DICOM file ({one_line(err)})") from None
    photometric = _check_header(ds, path)
    if window is not None and photometric not in GREY:
        raise WindowOnColour(
            f"{path}: --dicom-window applies to greyscale DICOM ({'/'.join(GREY)}), and this "
            f"file is {photometric}; leave the flag out or keep colour files elsewhere",
            path=path,
            photometric=photometric,
        )
    pixels = _decode_pixels(ds, path)
    try:
        if photometric in GREY:
            image = Image.fromarray(_grey(pixels, ds, path, photometric, window), "L")
            if window is not None:  # said of every windowed file: the build counts them
                low, high = image.getextrema()
                image.info[WINDOW_BLANKED] = low == high and np.min(pixels) != np.max(pixels)
            return image
        return Image.fromarray(_colour(pixels, ds, path, photometric), "RGB")
    except DataError:
        raise
    except (ValueError, KeyError, AttributeError, TypeError, IndexError) as err:
        raise DataError(
            f"{path}: cannot apply the DICOM pixel transforms ({one_line(err)})"
        ) from None


PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
"""Float, double float and integer Pixel Data: left deferred, read by :func:`_decode_pixels`."""


def _parse_elements(ds: Any) -> None:
    """Parses every element but the pixel data now, recursing into sequences.

    pydicom parses lazily: ``dcmread`` only splits the file into raw elements,
    and a damaged one (an unknown VR, a length past the end, a value whose
    bytes do not fit its VR) fails when first touched, as ``struct.error``,
    ``NotImplementedError``, ``BytesLengthException``, ``UnicodeDecodeError``
    and more; no one exception type covers them. Touching them all here,
    inside the one ``try`` around ``dcmread``, turns any such failure into the
    one-line "unreadable DICOM file" error, and leaves the code after it
    (header checks, pixel transforms) working on parsed values, where an
    unexpected exception is a bug to see, not a file to skip. The pixel data
    stays deferred so that an oversized image is refused from its header
    before it is read.
    """
    for tag in list(ds.keys()):
        if tag in PIXEL_TAGS:
            continue
        element = ds[tag]
        if element.VR == "SQ":
            for item in element.value:
                _parse_elements(item)


def _check_header(ds: Any, path: Path) -> str:
    """Everything that can be refused before decoding; returns the photometric interpretation."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if "Rows" in ds:  # its header describes an image: the file ends before its pixels
            raise DataError(
                f"{path}: DICOM file has no pixel data, though its header describes an image "
                "(Rows): a file cut short?"
            )
        raise DataError(f"{path}: DICOM file has no pixel data (not an image)")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
    except (AttributeError, TypeError, ValueError) as err:
        raise DataError(f"{path}: bad DICOM image header ({one_line(err)})") from None
    check_size(path, columns, rows)
    if frames > 1:
        raise DataError(
            f"{path}: multi-frame DICOM ({frames} frames) is not one image; "
            "export the frame(s) you mean as single-frame files"
        )
    stored, high = ds.get("BitsStored"), ds.get("HighBit")
    if stored not in (None, "") and int(stored) < 1:  # "expected HighBit -1" misled
        raise DataError(
            f"{path}: bad DICOM image header (BitsStored {int(stored)}; expected 1 or more)"
        )
    if stored not in (None, "") and high not in (None, "") and int(high) != int(stored) - 1:
        # pydicom keeps the low BitsStored bits: values stored high (HighBit 15 of 12 bits,
        # as some older scanners wrote) come out cut mid-value, their grey levels scrambled.
        raise NotABadFile(
            f"{path}: DICOM HighBit {int(high)} with BitsStored {int(stored)} (values in bits "
            f"{int(high) - int(stored) + 1}..{int(high)}) is not read by this toolkit; expected "
            f"HighBit {int(stored) - 1}"
        )
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    one_sample = (*GREY, "PALETTE COLOR")
    expected = 3 if photometric in COLOUR else 1 if photometric in one_sample else None
    if expected is None or samples != expected:
        raise NotABadFile(
            f"{path}: DICOM PhotometricInterpretation {photometric or '(missing)'} with "
            f"{samples} sample(s) per pixel is not supported; expected "
            f"{'/'.join(GREY)} (1 sample), {'/'.join(COLOUR)} (3) or PALETTE COLOR (1)"
        )
    return photometric


def _decode_pixels(ds: Any, path: Path) -> np.ndarray:
    from pydicom.pixels import get_decoder

    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    name = getattr(syntax, "name", None) or str(syntax or "an unknown transfer syntax")
    try:
        pixels = ds.pixel_array
    except (RuntimeError, NotImplementedError) as err:
        try:
            missing = list(get_decoder(syntax).missing_dependencies) if syntax else []
        except (NotImplementedError, ValueError, TypeError):
            missing = []
        # No installed plugin can decode it at all, or the installed ones cannot decode this
        # kind of it (Pillow and 12-bit JPEG Extended): not a bad file, not to be skipped.
        if "missing dependencies" in str(err) or (missing and "does not support" in str(err)):
            raise DecoderMissing(
                f"{path}: DICOM pixel data in {name} needs a pydicom decoder plugin; "
                f"install one of: {'; '.join(missing) or one_line(err)}"
            ) from None
        hint = f"; plugins that may decode it: {'; '.join(missing)}" if missing else ""
        raise DataError(
            f"{path}: cannot decode DICOM pixel data in {name} ({one_line(err)}){hint}"
        ) from None
    except Exception as err:  # only pydicom's decoders run here, on the file's bytes
        raise DataError(f"{path}: unreadable DICOM pixel data ({one_line(err)})") from None
    rows, columns = int(ds.Rows), int(ds.Columns)
    if pixels.shape[:2] != (rows, columns) or pixels.ndim > 3:
        # NumberOfFrames absent or 1 over pixel data of several frames: pydicom returns them
        # all, and Pillow then failed with "Cannot handle this data type: (1, 1, 20)".
        raise DataError(
            f"{path}: DICOM pixel data decodes to shape {tuple(pixels.shape)}, not one "
            f"{rows}x{columns} image (several frames under a NumberOfFrames of "
            f"{ds.get('NumberOfFrames') or 'none'}?); export the frame(s) you mean as "
            "single-frame files"
        )
    _check_length(ds, path, syntax)
    check_finite(pixels, path)
    return pixels


_PIXEL_BITS = {"FloatPixelData": 32, "DoubleFloatPixelData": 64}
"""Bits per value of the float pixel data elements; ``PixelData``'s are BitsAllocated."""


def _check_length(ds: Any, path: Path, syntax: Any) -> None:
    """Refuses native pixel data longer than its header's image, beyond the one pad byte.

    pydicom keeps the first Rows x Columns values and warns (warnings are held back here):
    a wrong Columns sheared every row into the next, a wrong Rows cropped the image, with
    no word (more data by whole frames is refused as several frames above). Compressed
    data is left to its decoder, which knows its own frame's size."""
    if syntax is not None and getattr(syntax, "is_compressed", False):
        return
    keyword = next(k for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if k in ds)
    bits = _PIXEL_BITS.get(keyword) or int(ds.get("BitsAllocated") or 0)
    values = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1)
    expected = (values * bits + 7) // 8
    length = len(ds[keyword].value)
    if bits and length > expected + 1:  # an odd length is padded to even
        raise DataError(
            f"{path}: DICOM pixel data is {length} bytes, more than the {int(ds.Rows)}x"
            f"{int(ds.Columns)} image of {bits}-bit values its header describes ({expected}): "
            "the header (Rows, Columns, BitsAllocated, SamplesPerPixel) does not match the data"
        )


def _grey(
    pixels: np.ndarray, ds: Any, path: Path, photometric: str, fixed: DicomWindow | None
) -> np.ndarray:
    values = _modality(pixels, ds, path)
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        if np.issubdtype(pixels.dtype, np.integer) or np.isfinite(pixels).all():
            raise DataError(  # the header's, not the pixels': "N values are NaN" misled
                f"{path}: the DICOM rescale (RescaleSlope, RescaleIntercept) or Modality "
                "LUT takes pixel values past the float range: a damaged header"
            )
        check_finite(values, path)
    # Read only where it is used: --dicom-window, or a VOI LUT, takes its place.
    unused = fixed is not None or bool(ds.get("VOILUTSequence"))
    window = None if unused else _window_or_refuse(ds, path)
    if fixed is not None:
        image = window_to_uint8(values, *fixed, "LINEAR_EXACT")
    elif ds.get("VOILUTSequence"):
        table, first, bits = _lut_table(ds.VOILUTSequence[0], ds, path, "VOI LUT")
        signed = _modality_output_signed(ds, path)
        first = _first_mapped(first, values, table, path, "VOI LUT", signed)
        top = int(table.max())
        if bits == 16 and top < 1 << 12:  # 12-bit entries declared 16: viewers scale by the data
            bits = max(8, top.bit_length())
        elif bits == 16 and top < 1 << UNDECLARED_FLOOR_BITS:
            # 13-14-bit entries (a mammography LUT) read as 16-bit kept at most 64 greys, and
            # whether to scale them by 13 or 14 bits is a guess: refused, as such files are.
            raise NotABadFile(
                f"{path}: DICOM VOI LUT declared 16 bits per entry whose entries reach only "
                f"{top} (fit {UNDECLARED_FLOOR_BITS} bits) would keep at most 64 greys; "
                "expected entries over the 16-bit range, or give --dicom-window"
            )
        image = unsigned_to_uint8(_look_up(values, table, first), bits)
    elif window is not None:
        center, width, function = window
        try:
            image = window_to_uint8(values, center, width, function)
        except ValueError as err:  # the file's own window; its pixels are sound
            raise NotABadFile(
                f"{path}: bad DICOM window ({err}); give --dicom-window CENTER,WIDTH to read it"
            ) from None
        _check_window_reached(image, values, path, center, width)
    else:
        padding = _padding(pixels, ds)
        shown = values if padding is None else values[~padding]
        _check_some_range(shown, path)
        image = minmax_to_uint8(values, shown)
    return 255 - image if _inverted(ds, photometric) else image


def _padding(pixels: np.ndarray, ds: Any) -> np.ndarray | None:
    """The pixels PixelPaddingValue marks as padding (PS3.3 C.7.5.1.1.2), or None.

    A CT slice's corners outside its circular field of view hold one value far below
    any tissue (-2000, -32768): counted in a min..max, they squeezed the tissue into a
    few greys at the white end, differently for each scanner's padding value. The
    value is a stored one (before the modality LUT), one end of an inclusive range
    when PixelPaddingRangeLimit is given, and signed where the pixels are (pydicom
    reads it unsigned in Implicit VR: -2000 as 63536). Float pixel data has its own
    padding attribute, not read here."""
    if not _given(ds, "PixelPaddingValue") or pixels.dtype.kind not in "iu":
        return None
    ends = [int(_first(ds.PixelPaddingValue))]
    if _given(ds, "PixelPaddingRangeLimit"):
        ends.append(int(_first(ds.PixelPaddingRangeLimit)))
    if pixels.dtype.kind == "i":
        bits = pixels.dtype.itemsize * 8
        ends = [v - (1 << bits) if v >= 1 << (bits - 1) else v for v in ends]
    padding = (pixels >= min(ends)) & (pixels <= max(ends))
    return padding if padding.any() else None


def _check_some_range(values: np.ndarray, path: Path) -> None:
    """Refuses a file shown by its own min..max whose values (padding left out) are all
    one, or none (see :class:`OneValueUnwindowed`): every such file would come out black,
    whatever its value."""
    if values.size == 0:
        what = (
            "greyscale DICOM without a window whose pixels are all padding "
            "(PixelPaddingValue) has no range to show by"
        )
    elif float(np.min(values)) == float(np.max(values)):
        what = (
            f"greyscale DICOM without a window whose pixels all hold one value "
            f"({float(np.min(values)):g}) has no range to show by (any such file would "
            "come out black, whatever its value)"
        )
    else:
        return
    raise OneValueUnwindowed(
        f"{path}: {what}; give --dicom-window CENTER,WIDTH to show every DICOM file of "
        "the dataset by one window, or leave the file out",
        path=path,
        what=what,
    )


def _check_window_reached(
    image: np.ndarray, values: np.ndarray, path: Path, center: float, width: float
) -> None:
    """Refuses a file's own window that shows its varied values as one grey (all below it,
    or all above: a CT window left on an MR export, a rescale the window was not set for),
    as a VOI LUT no pixel reaches is (:func:`_first_mapped`): a blank white or black image
    trained on, or predicted from, without a word. A file of one value is shown by its own
    window as before: that grey is its value."""
    low, high = float(np.min(values)), float(np.max(values))
    if low != high and int(image.min()) == int(image.max()):
        raise NotABadFile(
            f"{path}: DICOM window {center:g}/{width:g} (centre/width) shows the image's values "
            f"({low:g}..{high:g}) as one grey ({int(image.min())}): no pixel lies within it; "
            "give --dicom-window CENTER,WIDTH to show every DICOM file of the dataset by one "
            "window, or leave the file out"
        )


def _inverted(ds: Any, photometric: str) -> bool:
    """MONOCHROME1, or a Presentation LUT Shape of INVERSE (PS3.3 C.11.6): either says
    low values are white. They say it once between them (a MONOCHROME1 radiograph
    carries INVERSE too, PS3.3 C.8.11.1.1), so the image is inverted once."""
    shape = str(ds.get("PresentationLUTShape") or "").strip().upper()
    return photometric == "MONOCHROME1" or shape == "INVERSE"


def _modality(pixels: np.ndarray, ds: Any, path: Path) -> np.ndarray:
    """The modality LUT (PS3.3 C.11.1): a Modality LUT Sequence, else RescaleSlope and
    RescaleIntercept (top level, or an enhanced file's Pixel Value Transformation)."""
    if ds.get("ModalityLUTSequence"):
        table, first, _ = _lut_table(ds.ModalityLUTSequence[0], ds, path, "Modality LUT")
        signed = int(ds.get("PixelRepresentation") or 0) == 1
        first = _first_mapped(first, pixels, table, path, "Modality LUT", signed)
        return _look_up(pixels, table, first)
    rescale = _rescale(ds, path)
    if rescale is None:
        return pixels
    slope, intercept = rescale
    with np.errstate(over="ignore", invalid="ignore"):  # past float range: named by _grey
        return pixels.astype(np.float64) * slope + intercept


def _rescale(ds: Any, path: Path) -> tuple[float, float] | None:
    """RescaleSlope and RescaleIntercept (top level, or an enhanced file's Pixel Value
    Transformation), or None where neither is given."""
    rescaled = (ds, _frame_item(ds, "PixelValueTransformationSequence"))
    source = next(
        (
            item
            for item in rescaled
            if item is not None
            and (_given(item, "RescaleSlope") or _given(item, "RescaleIntercept"))
        ),
        None,
    )
    if source is None:
        return None
    # One of the pair alone (they are type 1 together, but writers drop one): the other's
    # identity value, not the intercept ignored (CT numbers off by 1024, the window with them).
    slope = _first(source.RescaleSlope) if _given(source, "RescaleSlope") else 1.0
    intercept = _first(source.RescaleIntercept) if _given(source, "RescaleIntercept") else 0.0
    if slope == 0 or not np.isfinite(slope):
        raise DataError(f"{path}: DICOM RescaleSlope {slope:g} would map every pixel to one value")
    return slope, intercept


def _modality_output_signed(ds: Any, path: Path) -> bool:
    """Whether the modality stage's output may be negative, from the header (PS3.3
    C.11.2.1.1: a VOI LUT's first mapped value is SS then): a rescale that maps some stored
    value below 0 (CT), or signed pixels without a modality stage. A Modality LUT's
    output is its entries, never negative."""
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    if ds.get("ModalityLUTSequence"):
        return False
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    rescale = _rescale(ds, path)
    if rescale is None:
        return signed
    slope, intercept = rescale
    return min(low * slope + intercept, high * slope + intercept) < 0


def _window_or_refuse(ds: Any, path: Path) -> tuple[float, float, str] | None:
    """:func:`_window`, a value that is no number (``abcd``) refused as the other bad
    windows are: a sound file's header, read with ``--dicom-window``, never skipped as
    damaged (``--skip-bad-images`` dropped such files, often one site's or one class's)."""
    try:
        return _window(ds)
    except (TypeError, ValueError) as err:
        raise NotABadFile(
            f"{path}: bad DICOM window ({one_line(err)}); give --dicom-window CENTER,WIDTH "
            "to read it"
        ) from None


def _window(ds: Any) -> tuple[float, float, str] | None:
    """The first WindowCenter/WindowWidth and its VOILUTFunction, top level or from an
    enhanced file's Frame VOI LUT; None when there is none (an empty value is none)."""
    for source in (ds, _frame_item(ds, "FrameVOILUTSequence")):
        if source is not None and _given(source, "WindowCenter") and _given(source, "WindowWidth"):
            function = str(source.get("VOILUTFunction") or "LINEAR")
            return _first(source.WindowCenter), _first(source.WindowWidth), function
    return None


def _given(item: Any, keyword: str) -> bool:
    return item.get(keyword) not in (None, "", [])


def _frame_item(ds: Any, keyword: str) -> Any | None:
    """An enhanced (functional groups) file's ``keyword`` item for its one frame: per-frame
    first, else shared (PS3.3 C.7.6.16); None for a classic file."""
    for groups in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        items = ds.get(groups)
        if items and items[0].get(keyword):
            return items[0].get(keyword)[0]
    return None


def _lut_table(
    item: Any,
    ds: Any,
    path: Path,
    what: str,
    descriptor: str = "LUTDescriptor",
    data: str = "LUTData",
) -> tuple[np.ndarray, int, int]:
    """A lookup table's entries (int64), first mapped value and bits per entry.

    Read here, not by pydicom's ``apply_*``: those index an 8-bit table with an
    8-bit array (entries past 255 wrap around), cannot hold 9-15-bit entries and
    take a palette's 8-bit entries stored one per 16-bit word for 16-bit ones.
    """
    try:
        entries, first, bits = (int(v) for v in item[descriptor].value)
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path}: DICOM {what}: {descriptor} is not three numbers") from None
    entries = entries or 1 << 16  # 0 means 65536 (PS3.3 C.11.1.1)
    if not 8 <= bits <= 16:
        raise DataError(
            f"{path}: cannot apply the DICOM pixel transforms ({what} of {bits} bits per "
            "entry; expected 8 to 16)"
        )
    raw = item[data].value if data in item else None
    if isinstance(raw, bytes):
        # A palette's 8-bit entries packed in bytes; an odd count padded to an even length
        # (one entry as a 16-bit word would also be two bytes: not an odd count of 1).
        packed = len(raw) == entries or (entries > 1 and entries % 2 and len(raw) == entries + 1)
        if bits == 8 and packed:
            table = np.frombuffer(raw[:entries], np.uint8)
        else:  # one entry a 16-bit word
            little = ds.original_encoding[1] is not False
            table = np.frombuffer(raw[: len(raw) // 2 * 2], "<u2" if little else ">u2")
    elif raw is not None:
        table = np.asarray(raw if isinstance(raw, Sequence) else [raw])
    else:
        table = np.zeros(0)
    if len(table) < entries:
        raise DataError(
            f"{path}: cannot apply the DICOM pixel transforms ({what} has {len(table)} "
            f"entries, its {descriptor} says {entries})"
        )
    table = table[:entries].astype(np.int64)
    if table.min() < 0 or table.max() >= 1 << bits:
        raise DataError(
            f"{path}: cannot apply the DICOM pixel transforms ({what} entry "
            f"{int(table.max()) if table.max() >= 1 << bits else int(table.min())} outside "
            f"the {bits} bits its {descriptor} says)"
        )
    return table, first, bits


def _first_mapped(
    first: int, values: np.ndarray, table: np.ndarray, path: Path, what: str, signed: bool
) -> int:
    """A LUT's first mapped value, read as signed where its inputs are (PS3.3 C.11.1.1,
    C.11.2.1.1: US or SS as the header says the input is, ``signed``; or where this image's
    inputs are negative). pydicom reads it as unsigned in Implicit VR: -1000 as 64536,
    and every pixel fell below the table, one black image; a CT slice holding no air was
    refused. A table that no pixel reaches maps the whole image to one value: refused."""
    low, high = float(np.min(values)), float(np.max(values))
    if first >= 1 << 15 and (signed or low < 0):
        first -= 1 << 16
    if high < first or low > first + len(table) - 1:
        raise NotABadFile(
            f"{path}: DICOM {what} covers values {first}..{first + len(table) - 1}, and the "
            f"image's values ({low:g}..{high:g}) all lie outside it: every pixel would map to "
            "one value"
        )
    return first


def _look_up(values: np.ndarray, table: np.ndarray, first: int) -> np.ndarray:
    """``table`` at ``value - first``; below the first entry the first, past the last the
    last (PS3.3 C.11.2.1.1)."""
    index = np.clip(np.floor(np.asarray(values, np.float64)) - first, 0, len(table) - 1)
    return table[index.astype(np.int64)]


def _colour(pixels: np.ndarray, ds: Any, path: Path, photometric: str) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        return _palette(pixels, ds, path)
    if pixels.dtype.kind == "i":
        # Negative samples clipped to black without a word; signed colour TIFFs are refused.
        raise NotABadFile(
            f"{path}: signed colour DICOM (PixelRepresentation 1) cannot be converted "
            "faithfully to 8-bit colour; save it as unsigned colour"
        )
    bits = int(ds.get("BitsStored") or pixels.dtype.itemsize * 8)
    if pixels.dtype == np.uint8 and bits >= 8:
        return pixels  # 6-bit samples in 8-bit words are stretched, as in 16-bit words
    if bits == 16 and int(pixels.max()) < 1 << UNDECLARED_FLOOR_BITS:
        # As a 16-bit colour PNG or TIFF so filled is refused: 12-bit values in a file
        # that says 16 bits came out nearly black (at most 64 levels a channel).
        raise NotABadFile(
            f"{path}: 16-bit colour DICOM (BitsStored 16) whose values all fit in "
            f"{UNDECLARED_FLOOR_BITS} bits would keep at most 64 levels per channel; its "
            "BitsStored is likely wrong: correct it, or save the image as 8-bit colour"
        )
    return unsigned_to_uint8(pixels, bits)


def _palette(pixels: np.ndarray, ds: Any, path: Path) -> np.ndarray:
    """PALETTE COLOR through its three tables, each by its own bits per entry."""
    if "SegmentedRedPaletteColorLookupTableData" in ds:
        from pydicom.pixels import apply_color_lut

        bits = _descriptor_bits(ds, "RedPaletteColorLookupTableDescriptor")
        if bits != 16:  # pydicom indexes 8-bit tables with 8-bit numbers (wrapping past 255)
            raise NotABadFile(
                f"{path}: cannot apply the DICOM pixel transforms (a segmented palette of "
                f"{bits}-bit entries, which this toolkit cannot read faithfully; expected 16-bit "
                "entries, or a plain palette, or RGB)"
            )

        rgb = _lut(path, apply_color_lut, pixels, ds)
        return rgb if rgb.dtype == np.uint8 else unsigned_to_uint8(rgb, 16)
    channels = []
    for colour in ("Red", "Green", "Blue"):
        table, first, bits = _lut_table(
            ds,
            ds,
            path,
            f"{colour} palette",
            descriptor=f"{colour}PaletteColorLookupTableDescriptor",
            data=f"{colour}PaletteColorLookupTableData",
        )
        if bits == 16 and int(table.max()) < 1 << 8:
            # PS3.3 C.7.6.3.1.6: 16-bit entries span 0..65535; 8-bit values in them (older
            # ultrasound writers) came out black, an image of one colour, without a word.
            raise NotABadFile(
                f"{path}: DICOM {colour} palette declared 16 bits per entry holds values of at "
                "most 8 bits (255); expected 16-bit entries scaled to 0..65535 (PS3.3 "
                "C.7.6.3.1.6): re-save the image as RGB"
            )
        channels.append(unsigned_to_uint8(_look_up(pixels, table, first), bits))
    return np.stack(channels, axis=-1)


def _descriptor_bits(ds: Any, descriptor: str) -> int | None:
    """The bits per entry a LUT descriptor states (its third number), or None."""
    try:
        return int(ds[descriptor].value[2])
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def _lut(path: Path, apply: Callable[..., np.ndarray], *args: Any, **kwargs: Any) -> np.ndarray:
    """pydicom's ``apply`` (a modality, VOI or palette LUT) with the file's own tables.

    The tables come from the file, and one that contradicts itself (a
    descriptor of 28 bits per entry, entries that overflow the descriptor's
    depth, data shorter than described) fails inside pydicom as
    ``NotImplementedError``, ``OverflowError``, ``struct.error`` and others:
    a bad file, refused in one line naming it.
    """
    try:
        return apply(*args, **kwargs)
    except Exception as err:  # only pydicom runs here, on the file's values
        raise DataError(
            f"{path}: cannot apply the DICOM pixel transforms ({one_line(err)})"
        ) from None


def _first(value: Any) -> float:
    """The first of a multi-valued element (DICOM may list several windows), as float."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        value = value[0]
    return float(value)
