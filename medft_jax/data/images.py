"""Decoding image files safely: paths stay inside the dataset root, bad files are named.

Every file-based source (the eight paper tasks, ``folder``, ``csv``) and
``experiments.predict`` decode through :func:`open_image`, so the rules are
the same everywhere: a path that escapes the dataset root is refused, a
corrupt or truncated image raises a
:class:`~medft_jax.data.errors.DataError` naming the file, or, when the user
asked for it (``--skip-bad-images``), is skipped and counted.

What comes out is always an 8-bit L or RGB image. 8-bit files pass through
Pillow's ``convert("RGB")`` as before (byte-identical); 16-bit and float
files are converted by their real range and DICOM files through pydicom,
by the rules in :mod:`medft_jax.data.pixels` and
:mod:`medft_jax.data.dicom`. Images over the size limits
(:data:`~medft_jax.data.pixels.MAX_PIXELS`,
:data:`~medft_jax.data.pixels.MAX_ASPECT`) are refused from their header,
before any pixel is decoded, and so are files of several frames (a
multi-page TIFF, an animated GIF/PNG/WebP; :func:`check_one_frame`), which
Pillow would otherwise read as their first frame without a word.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import os
import re
import struct
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from medft_jax.data import dicom
from medft_jax.data.errors import DataError, ImageMissing, NotABadFile
from medft_jax.data.paths import (
    safe_join,  # noqa: F401  (the one path rule lives there)
    special_kind,
)
from medft_jax.data.pixels import (
    MAX_PIXELS,
    DicomWindow,
    check_bits_stored,
    check_size,
    colour16_check,
    integer16_to_uint8,
    parse_dicom_window,
    unit_float_to_uint8,
)
from medft_jax.data.preprocess import EIGHT_BIT_MODES, resize_and_crop
from medft_jax.errors import env_count, one_line, quiet_decoding, raise_if_stopped

IMAGE_SUFFIXES = (
    ".jpg",
    ".jpeg",
    ".png",
    ".tif",
    ".tiff",
    ".bmp",
    ".pgm",
    ".ppm",
    ".pnm",
    ".webp",
    ".gif",
    ".jp2",
    ".j2k",
    ".j2c",
    ".jpx",
    ".jfif",
    ".jpe",
    *dicom.DICOM_SUFFIXES,
)
"""What a ``folder`` dataset lists as images by name; a file of any other name is
listed when it carries the DICOM marker (:func:`medft_jax.data.folder.image_files`)."""


def saved_twice(paths: Sequence[Path]) -> list[tuple[Path, Path]]:
    """Pairs of image files in one folder whose names differ only in an image suffix:
    ``x.png`` and ``x.jpg`` (a conversion that kept the originals), ``x.png`` and ``x.PNG``,
    ``IM0001`` and ``IM0001.jpg`` (a DICOM file and its viewer's preview). Such a pair is
    one scan as two examples, which a carve can put in train and test: a re-encode changes
    the pixels, so the pixel-identical check does not see it. The names before the suffix
    must be equal, case included: ``aB3x.png`` and ``Ab3x.png`` (hash-like names) are two
    images on a case-sensitive disk; ``1.2.840.5`` and ``1.2.840.6`` (DICOM files named by
    UID) differ in more than an image suffix."""
    first: dict[tuple[str, str], Path] = {}
    pairs = []
    for p in paths:
        name = unicodedata.normalize("NFC", p.name)
        if p.suffix.lower() in IMAGE_SUFFIXES:
            name = name[: -len(p.suffix)]
        seen = first.setdefault((os.path.normpath(p.parent), name), p)
        if seen is not p:
            pairs.append((seen, p))
    return pairs


DECODING_VERSION = 12
"""Bumped whenever the same file can decode to other pixels (2: 16-bit, float
and DICOM conversion, instead of Pillow's clipping ``convert("RGB")``; 3:
``bits_stored``, and 16-bit files of 14 bits or fewer refused without it; 4:
multi-frame files refused instead of read as their first frame, and 16-bit
greyscale+alpha PNG read by the greyscale rules from all 16 bits instead of
as colour from the high byte; 5: 16-bit and float WhiteIsZero TIFFs inverted, as
8-bit ones always were; 6: signed 8-bit TIFFs by the signed rule, a DICOM LUT's
first value read as signed where its inputs are, a RescaleIntercept without its
slope applied, MONOCHROME2 with Presentation LUT Shape INVERSE inverted; 7: a constant-valued
greyscale DICOM without a window refused, where it decoded to black; 8: a DICOM
file's PixelPaddingValue pixels left out of the min..max it is shown by without a
window, and a DICOM window that is not finite, or that no pixel reaches, refused where
it gave one grey; 9: a DICOM VOI LUT declared 16 bits whose entries reach 13-14 bits,
and a 16-bit palette of 8-bit values, refused where they decoded to a few greys or
black, and pixel data of more frames than NumberOfFrames refused; 10: DICOM pixel data
longer than its header's image refused where it decoded sheared or cropped, a file's own
window that cannot be applied refused as a sound file (never skipped), a VOI LUT's first
value read as signed where the header says the rescale may give negative values, an
odd 8-bit palette padded to even read, a TIFF whose Orientation turns its raster refused
where Pillow turned (or scrambled) it, a PGM/PPM sample above its maxval refused
where it was clipped to white, and a TIFF of 9-15 bits per sample or a JPEG 2000 of
9-15-bit precision read by the bits it states; 11: a PPM of 9-16-bit colour read
by its samples' high bytes, as PNG/TIFF and its greyscale PGM twin, where Pillow rounded
to 8 bits (one grey level apart in about a quarter of the samples), and a sound file of
a kind not read (a 12-bit JPEG, a float64 TIFF, a DICOM dataset without its file header)
refused, where ``--skip-bad-images`` skipped it as damaged; 12: a signed colour DICOM
refused, where its negative samples became 0, colour DICOM samples of fewer than 8 bits
in 8-bit words stretched to 0..255 as in 16-bit words, where they stayed dark, and a DICOM
window that is no number refused as a sound file's header, where ``--skip-bad-images``
skipped it, or read under ``--dicom-window``, which replaces it): a cache built under another
version is stale (rebuilt; its content fingerprint stays where no pixel changed)."""

_UNSIGNED16 = ("I;16", "I;16B", "I;16L", "I;16N")
_SIGNED16 = ("I;16S", "I;16BS", "I;16NS")
_COLOUR16 = re.compile(r"(RGB[AXa]?|LA);16[BLN]?")
"""Stored layouts of 16 bits per colour sample (``RGB;16B``); not ``BGR;16``, a
BMP's 5-6-5 bits per pixel, which Pillow already widens to 8 bits a sample."""
_GREY_ALPHA16 = "LA;16B"
"""The stored layout of a 16-bit greyscale+alpha PNG, which Pillow opens as RGBA of
the high bytes; :func:`_grey_alpha16` reads all 16 bits instead."""
_ONE_IMAGE_FORMATS = ("MPO", "PSD")
"""Multi-frame formats whose first frame is the image by definition, not a pick:
an MPO (a camera JPEG with previews or depth maps) opens on its primary image,
a layered PSD on its flattened composite (its layers are the other frames)."""


def open_image(
    path: Path, bits_stored: int | None = None, dicom_window: DicomWindow | None = None
) -> Image.Image:
    """The image at ``path``, fully decoded, as the 8-bit L or RGB image the models see.

    DICOM (by suffix or preamble) goes through :func:`medft_jax.data.dicom.read_dicom`,
    everything else through Pillow; see the module docstring for the rules.
    ``bits_stored``: how many bits a 16-bit single-channel file's values use
    (:func:`medft_jax.data.pixels.integer16_to_uint8`); DICOM states its own.
    ``dicom_window``: a fixed ``(center, width)`` for greyscale DICOM files in
    place of each file's own (:func:`medft_jax.data.pixels.dicom_window`);
    other files ignore it.
    """
    path = Path(path)
    check_bits_stored(bits_stored)
    dicom_window = parse_dicom_window(dicom_window)
    kind = special_kind(path)  # listings refuse them; one swapped in since would block a read
    if kind is not None:  # refused, not skipped, as the listing does
        raise NotABadFile(f"{path} is {kind}, not an image file")
    try:
        if path.stat().st_size == 0:  # said as such: "cannot identify image file" named no cause
            raise DataError(
                f"corrupt or unreadable image {path}: an empty file (0 bytes: a copy, sync "
                "or download that did not finish)"
            )
        if dicom.is_dicom(path):
            return dicom.read_dicom(path, dicom_window)
        return _open_pillow(path, bits_stored)
    except FileNotFoundError:
        raise ImageMissing(f"image file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder, expected an image file") from None
    except PermissionError:  # a sound file: --skip-bad-images must not drop it (a site's copy)
        raise NotABadFile(
            f"{path}: permission denied, this user cannot read it (not a damaged file: "
            "give read permission, chmod a+r)"
        ) from None
    except OSError as err:
        raise DataError(f"corrupt or unreadable image {path}: {err}") from None


def _open_pillow(path: Path, bits_stored: int | None) -> Image.Image:
    try:
        with quiet_decoding():  # over MAX_PIXELS anyway: refused below, in one line
            opened = Image.open(path)
        with opened as image:
            check_size(path, *image.size)  # from the header: nothing decoded yet
            samples = _stored_samples(image)  # the tile names them until load() clears it
            check_one_frame(image, path)
            _check_stored_orientation(image, path)
            _check_within_maxval(image, path)
            _check_interleaved(image, path)
            if samples == _GREY_ALPHA16 and image.mode == "RGBA" and len(image.tile) == 1:
                grey = integer16_to_uint8(_grey_alpha16(image), False, bits_stored, path)
                return Image.fromarray(grey, "L")
            stated = _stated_bits(image, path)
            if stated is not None:
                bits_stored = stated  # the file's own range: --bits-stored does not apply
            inverted = _white_is_zero(image)
            high_bytes = _ppm_colour_high_bytes(image, path)  # from the tile, before load()
            _load(image, path)  # PIL is lazy: load() finds truncation
            out = to_8bit(image, samples, path, bits_stored, high_bytes)
            return Image.fromarray(255 - np.asarray(out), out.mode) if inverted else out
    except DataError:
        raise
    except (FileNotFoundError, PermissionError):
        raise  # open_image names them: not a damaged file
    except Image.DecompressionBombError as err:
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(pixels.group(1)):,} pixels" if pixels else "its size"
        raise DataError(
            f"{path}: image header claims {size}, over the limit of {MAX_PIXELS:,} pixels "
            "(medft_jax.data.pixels.MAX_PIXELS)"
        ) from None
    except Image.UnidentifiedImageError as err:
        reasons = _why_unidentified(path)
        why = f"Pillow cannot open it ({'; '.join(reasons)})" if reasons else str(err)
        if any(_unsupported_kind(r, path) for r in reasons):
            raise _unsupported(path, why) from None
        raise DataError(f"corrupt or unreadable image {path}: {why}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"corrupt or unreadable image {path}: {one_line(err)}") from None


def _unsupported_kind(reason: str, path: Path) -> bool:
    """Whether a Pillow plugin's ``reason`` says a sound file is of a kind it cannot decode,
    not that the file is damaged: JPEG's "cannot handle 12-bit layers" (10, 14 and 16
    likewise: the precisions of extended and lossless JPEG) for a file holding its scan,
    TIFF's "unknown pixel mode" for a file whose tags state a layout a TIFF may have and
    whose image data is all there (a float64, a 10-bit packed TIFF). Pillow says the same
    words of a damaged header ("0-bit layers", a BitsPerSample flipped to 136, a TIFF cut
    inside its tags): those stay damaged, skippable by ``--skip-bad-images``."""
    if reason in {f"JPEG: cannot handle {n}-bit layers" for n in (10, 12, 14, 16)}:
        return _jpeg_has_scan(path)
    return reason == "TIFF: unknown pixel mode" and _tiff_sound(path)


def _jpeg_has_scan(path: Path) -> bool:
    """Whether a JPEG holds a start-of-scan marker past its frame header: one cut short
    before its image data is damaged, whatever its header says."""
    try:
        with open(path, "rb") as f:
            return b"\xff\xda" in f.read()
    except OSError:
        return False


_TIFF_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
"""Bytes of one value of each TIFF field type (BYTE .. DOUBLE; BigTIFF's 16-18 are 8)."""
_TIFF_INTS = {256, 257, 258, 259, 262, 273, 277, 279, 284, 324, 325, 339}
"""The tags read: width, height, bits, compression, photometric, strip offsets,
samples per pixel, strip byte counts, planar configuration, tile offsets and byte counts,
sample format."""
_TIFF_INT_FORMATS = {3: "H", 4: "I", 16: "Q"}
"""The integer field types' struct formats: SHORT, LONG, BigTIFF's LONG8."""
_TIFF_LAYOUTS = {42: ("I", 4, "H", "I", 12, 4), 43: ("Q", 8, "Q", "Q", 20, 8)}
"""By the header's magic (classic 42, BigTIFF 43): the first directory's offset format and
its place in the header, the entry count's format, a value count's format, an entry's
bytes, and the bytes of a value the entry holds itself."""
_TIFF_BITS = {1, 2, 4, 8, 10, 12, 14, 16, 24, 32, 64}
"""Bits per sample a sound TIFF may state."""
_TIFF_MODELS = {0: (1, 2), 1: (1, 2), 2: (3, 4), 3: (1,), 5: (4, 5), 6: (3,)}
"""Photometric interpretations (WhiteIsZero, BlackIsZero, RGB, palette, CMYK, YCbCr) and
the samples per pixel each may have."""


def _tiff_tags(path: Path) -> dict[int, tuple[int, ...]] | None:
    """The integer tags of :data:`_TIFF_INTS` of a TIFF's (classic or BigTIFF) first
    directory, or None where the directory, or a value it points to, lies outside the
    file (or no TIFF)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(16)
            order = {b"II": "<", b"MM": ">"}.get(head[:2])
            if order is None or len(head) < 16:
                return None
            layout = _TIFF_LAYOUTS.get(struct.unpack(order + "H", head[2:4])[0])
            if layout is None:
                return None
            offset_fmt, offset_at, count_fmt, n_fmt, entry, inline = layout
            offset = struct.unpack(
                order + offset_fmt, head[offset_at : offset_at + struct.calcsize(offset_fmt)]
            )[0]
            f.seek(offset)
            width = struct.calcsize(count_fmt)
            raw = f.read(width)
            count = struct.unpack(order + count_fmt, raw)[0] if len(raw) == width else -1
            if count < 0 or offset + width + entry * count > size:
                return None
            entries = f.read(entry * count)
            tags: dict[int, tuple[int, ...]] = {}
            for k in range(count):
                at = entry * k
                tag, kind = struct.unpack(order + "HH", entries[at : at + 4])
                n = struct.unpack(order + n_fmt, entries[at + 4 : at + 4 + (entry - 4 - inline)])[0]
                data = entries[at + entry - inline : at + entry]
                nbytes = n * (8 if kind in (16, 17, 18) else _TIFF_TYPE_BYTES.get(kind, 1))
                if nbytes > inline:
                    where = struct.unpack(order + ("I" if inline == 4 else "Q"), data)[0]
                    if where + nbytes > size:
                        return None
                    if tag not in _TIFF_INTS or kind not in _TIFF_INT_FORMATS:
                        continue
                    f.seek(where)
                    data = f.read(nbytes)
                if tag in _TIFF_INTS and kind in _TIFF_INT_FORMATS:
                    tags[tag] = struct.unpack(order + _TIFF_INT_FORMATS[kind] * n, data[:nbytes])
            tags[0] = (size,)  # the file's size, for the data's bounds
            return tags
    except (OSError, struct.error, OverflowError, MemoryError):
        return None


def _tiff_sound(path: Path) -> bool:
    """Whether a TIFF's first directory states a layout a sound TIFF may have
    (:data:`_TIFF_BITS`, its samples per pixel those of its colour model, a known sample
    format) and its strips or tiles lie inside the file, each uncompressed strip as long
    as its rows."""
    tags = _tiff_tags(path)
    stated = (256, 257, 258, 262)  # a sound file states them; a damaged tag reads absent
    if tags is None or not all(tags.get(t) for t in stated):
        return False
    size = tags[0][0]
    bits, spp, model = set(tags[258]), (tags.get(277) or (1,))[0], tags[262][0]
    if not (bits <= _TIFF_BITS and len(bits) == 1 and len(tags[258]) in (1, spp)):
        return False  # one BitsPerSample for every sample: some writers say it once
    if not set(tags.get(339) or (1,)) <= {1, 2, 3, 4, 5, 6} or spp not in _TIFF_MODELS.get(
        model, ()
    ):
        return False
    offsets, counts = (273, 279) if 273 in tags else (324, 325)
    if offsets not in tags:
        return False
    lengths = tags.get(counts) or (0,) * len(tags[offsets])  # no byte counts: offsets alone
    if any(a + b > size for a, b in zip(tags[offsets], lengths, strict=False)):
        return False
    width, height = tags[256][0], tags[257][0]
    chunky = (tags.get(284) or (1,))[0] == 1
    if (tags.get(259) or (1,))[0] == 1 and chunky and offsets == 273 and counts in tags:
        row = -(-width * spp * bits.pop() // 8)  # uncompressed strips: every row there
        return sum(tags[counts]) >= row * height > 0
    return width > 0 and height > 0


def _load(image: Image.Image, path: Path) -> None:
    """``image.load()``, a TypeError of Pillow's (a damaged TIFF tag of the wrong type:
    "'IFDRational' object cannot be interpreted as an integer") a damaged file's line,
    not a traceback."""
    try:
        image.load()
    except TypeError as err:
        raise DataError(f"corrupt or unreadable image {path}: {one_line(err)}") from None


def _unsupported(path: Path, why: str) -> NotABadFile:
    """A sound file of a kind Pillow cannot decode: refused, never skipped as damaged by
    ``--skip-bad-images`` (every file of its kind would be, often those of one class or
    one scanner, and the data silently shrink by it)."""
    return NotABadFile(
        f"{path}: an image of a kind Pillow does not decode ({why}), not skipped as a "
        "damaged file; convert it (e.g. to 16-bit PNG) or move it out of the folder"
    )


def _why_unidentified(path: Path) -> list[str]:
    """What the Pillow plugins that claim the file's first bytes said when opening it
    failed (``JPEG: cannot handle 12-bit layers``), one reason each; empty when none
    claims it.

    Pillow's own error, "cannot identify image file", names no reason, so a sound file of
    a kind Pillow cannot decode (a 12-bit JPEG, a float64 TIFF) read as a damaged one."""
    Image.init()
    reasons: list[str] = []
    try:
        with open(path, "rb") as f:
            prefix = f.read(16)
            for name, (factory, accept) in Image.OPEN.items():
                try:  # None: a plugin that claims every file
                    claimed = accept is not None and bool(accept(prefix))
                except Exception:  # too short for the plugin even to look
                    claimed = False
                if not claimed:
                    continue
                f.seek(0)
                try:
                    factory(f, str(path))
                except Exception as err:  # the plugin's own reason, on the file's bytes
                    reasons.append(f"{name}: {one_line(err) or type(err).__name__}")
    except OSError:
        return []
    return reasons


def takes_bits_stored(path: Path) -> bool:
    """Whether ``--bits-stored`` bears on how the file at ``path`` decodes, from its header.

    True for 16-bit integer samples whose header does not state their range:
    greyscale (signed or not, with or without alpha) and colour (where the flag
    may only confirm 16). False for DICOM (it states its own bits), 8-bit and
    float files, and PGM/PPM with a stated maxval. The same branches as
    :func:`_open_pillow`'s, read without decoding; an unreadable file is False
    (decoding names it).
    """
    try:
        if dicom.is_dicom(path):
            return False
        with Image.open(path) as image:
            samples = _stored_samples(image)
            if _stated_bits(image, path) is not None:
                return False
            return _colour16(image.mode, samples) or _grey16_signed(image.mode, samples) is not None
    except Exception:  # only the header is read; a bad one is decoding's to name
        return False


def check_one_frame(image: Image.Image, path: Path) -> None:
    """Refuses, naming ``path``, a file of several frames: a multi-page TIFF, an
    animated GIF, PNG (APNG) or WebP.

    Pillow opens such a file on its first frame and would say nothing of the
    rest. A stack (a volume, a time series, channels stored as pages, the
    levels of a TIFF pyramid) is not one image, and taking its first page is
    a guess, as for multi-frame DICOM: the user exports the frame(s) meant.
    :data:`_ONE_IMAGE_FORMATS` are exempt: their first frame is the image.
    """
    try:
        frames = getattr(image, "n_frames", 1)  # walks the file's frame headers
    except Exception as err:  # only Pillow's parser runs here, and it fails many ways
        raise DataError(f"corrupt or unreadable image {path}: bad frame header ({err})") from None
    if frames > 1 and image.format not in _ONE_IMAGE_FORMATS:
        kind = image.format or "image"
        raise DataError(
            f"{path}: multi-frame {kind} ({frames} frames) is not one image; "
            "export the frame(s) you mean as single-frame files"
        )


def _check_interleaved(image: Image.Image, path: Path) -> None:
    """Refuses a TIFF of samples wider than 8 bits stored plane by plane (PlanarConfiguration
    2, tifffile's default for a channels-first array).

    Pillow reads each 16-bit plane of such a file as 8-bit samples: low and high bytes
    come out as neighbouring pixels, half of each plane is lost, and no error is raised.
    """
    if image.format != "TIFF":
        return
    tags = getattr(image, "tag_v2", {})
    bits = tags.get(258, (8,))
    bits = bits if isinstance(bits, tuple) else (bits,)
    if tags.get(284) == 2 and max(bits, default=8) > 8:
        raise NotABadFile(
            f"{path}: TIFF of {max(bits)}-bit samples stored as separate planes "
            "(PlanarConfiguration 2), which Pillow misreads; save it with interleaved "
            "samples (PlanarConfiguration 1, e.g. tifffile's planarconfig='contig')"
        )


def _grey_alpha16(image: Image.Image) -> np.ndarray:
    """All 16 bits of a 16-bit greyscale+alpha PNG's grey samples (alpha dropped).

    Pillow has no 16-bit LA mode: it opens such a file as RGBA holding each
    sample's high byte, which made a 12-bit X-ray with an alpha channel look
    like 16-bit colour. Decoding the same tile as 8-bit RGBA instead keeps
    Pillow's PNG decoder (inflate, filters, interlacing, checksums) and gives
    the stored bytes unchanged, since both layouts are 4 bytes a pixel:
    grey high, grey low, alpha high, alpha low. Alpha is dropped, as for 8-bit
    LA (``convert("RGB")``), and the grey follows the 16-bit greyscale rules.
    """
    tile = image.tile[0]
    image.tile = [(*tile[:3], "RGBA")]  # type: ignore[list-item]  # same bytes, 8 bits each
    image.load()  # PIL is lazy: load() finds truncation
    raw = np.asarray(image)
    return (raw[..., 0].astype(np.uint16) << 8) | raw[..., 1]


def _white_is_zero(image: Image.Image) -> bool:
    """A 16-bit or float TIFF stored WhiteIsZero (PhotometricInterpretation 0).

    It is TIFF's MONOCHROME1: 0 is white, as some X-ray exports store it.
    Pillow inverts such files only at 8 bits (and 1 bit); wider samples come
    out as stored, a negative of the image. Inverting the 8-bit result is
    the same as inverting the samples first (``255 - (v >> 8)`` equals
    ``(65535 - v) >> 8``), for every ``bits_stored``.
    """
    return (
        image.format == "TIFF"
        and image.mode.startswith(("I", "F"))
        and getattr(image, "tag_v2", {}).get(262) == 0
    )


def _stated_bits(image: Image.Image, path: Path) -> int | None:
    """The bits a 16-bit greyscale file's own header says its values use, as the 16-bit
    rule reads them after Pillow; None where it says 16 or nothing (``--bits-stored``
    then applies).

    A PGM/PPM with a maxval of 256..65534 and a JPEG 2000 of 9..15-bit precision: 16
    (Pillow scales both to 0..65535 first). A TIFF of 9..15 bits per sample: those bits
    (Pillow keeps the values). A 12-bit TIFF was refused as a 16-bit image of unstated
    range, and a 12-bit JPEG 2000 under ``--bits-stored 12`` (right for the folder's
    12-bit PNGs) as exceeding 12 bits: one folder could not hold both."""
    if _maxval_states_range(image):
        return 16
    if image.mode != "I;16":
        return None
    if image.format == "TIFF":
        per_sample = getattr(image, "tag_v2", {}).get(258)
        bits = set(per_sample if isinstance(per_sample, tuple) else (per_sample,))
        return bits.pop() if len(bits) == 1 and bits <= set(range(9, 16)) else None
    if image.format == "JPEG2000":
        precision = _jpeg2000_precision(path)
        return 16 if precision is not None and 9 <= precision <= 15 else None
    return None


def _jpeg2000_precision(path: Path) -> int | None:
    """The first component's bits (its SIZ segment's Ssiz) of a JPEG 2000 codestream,
    bare or in a JP2 box; None where it is not found in the first MB."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    start = head.find(b"\xff\x4f\xff\x51")  # SOC then SIZ
    ssiz = start + 2 + 40  # SIZ: marker, Lsiz, Rsiz, 8 sizes of 4 bytes, Csiz
    return (head[ssiz] & 0x7F) + 1 if start >= 0 and ssiz < len(head) else None


def _maxval_states_range(image: Image.Image) -> bool:
    """A PGM/PPM whose header's maxval (256..65534) states its samples' range.

    Pillow scales such samples to 0..65535 before anything here sees them,
    so the 16-bit rule maps 0..maxval to 0..255 and ``--bits-stored`` (meant
    for files that do not state their range) no longer applies.
    """
    maxval = _maxval(image)
    return maxval is not None and 255 < maxval < 65535


def _check_stored_orientation(image: Image.Image, path: Path) -> None:
    """Refuses a TIFF whose Orientation tag turns its stored raster for display.

    Pillow applies a TIFF's Orientation when it loads it (a JPEG's EXIF one it leaves,
    and the toolkit, as torchvision's loader, shows the stored pixels): 2-4 came out
    flipped or turned, and 5-8 of an uncompressed greyscale TIFF scrambled (the rows
    read with width and height swapped), without a word."""
    tags = getattr(image, "tag_v2", None) if image.format == "TIFF" else None
    orientation = tags.get(274, 1) if tags is not None else 1
    if orientation != 1:
        raise NotABadFile(
            f"{path}: TIFF Orientation {orientation} (its stored rows are to be turned for "
            "display), which this toolkit does not read faithfully; save it as displayed, "
            "with Orientation 1"
        )


def _check_within_maxval(image: Image.Image, path: Path) -> None:
    """Refuses a binary PGM/PPM holding a sample above its header's maxval.

    Such a file is invalid (Netpbm: every sample at most maxval), and Pillow clamps the
    sample to maxval: a 12-bit file holding 16-bit values came out white where they
    were, without a word (its plain-text form is refused by Pillow)."""
    maxval = _maxval(image)
    if maxval is None or maxval in (255, 65535) or image.tile[0].codec_name != "ppm":
        return
    width, height = image.size
    count = width * height * (3 if image.mode.startswith("RGB") else 1)
    dtype = ">u2" if maxval > 255 else "u1"
    stored = np.fromfile(path, dtype, count=count, offset=image.tile[0].offset)
    if len(stored) and int(stored.max()) > maxval:
        raise DataError(
            f"{path}: a sample of {int(stored.max())} above the maxval {maxval} its header "
            "states (an invalid PGM/PPM: its values would be clipped to white)"
        )


def _ppm_colour_high_bytes(image: Image.Image, path: Path) -> np.ndarray | None:
    """A PPM (binary or plain) of 9..16-bit colour as the high bytes of its samples scaled
    to 0..65535, as its greyscale PGM twin reads; None for any other image.

    Why: Pillow rescales such colour straight to 8 bits, rounding (``v * 255 /
    maxval``), where 16-bit colour PNG/TIFF and greyscale PGM read by the high byte: one
    picture saved as PPM and as PNG differed by one grey level in about a quarter of its
    samples, and the 14-bit check saw rounded values."""
    maxval = _maxval(image)
    if maxval is None or maxval <= 255 or image.mode != "RGB":
        return None
    width, height = image.size
    tile, n = image.tile[0], width * height * 3
    if tile.codec_name == "ppm":  # binary (P6): big-endian 16-bit samples
        stored = np.fromfile(path, ">u2", count=n, offset=tile.offset)
    else:  # plain text (P3): decimal samples, comments to the line's end
        with open(path, "rb") as f:
            f.seek(tile.offset)
            text = re.sub(rb"#[^\r\n]*", b" ", f.read())  # a CR ends a comment too
        try:
            stored = np.array(text.split()[:n], dtype=np.int64)
        except (ValueError, OverflowError):  # a word, or a number past int64
            raise DataError(
                f"corrupt or unreadable image {path}: a plain PPM sample is not a number"
            ) from None
    if len(stored) < n:
        raise DataError(f"corrupt or unreadable image {path}: image file is truncated")
    scaled = np.rint(np.minimum(stored, maxval) / maxval * 65535).astype(np.uint16)
    return (scaled >> 8).astype(np.uint8).reshape(height, width, 3)


def _maxval(image: Image.Image) -> int | None:
    """A PGM/PPM's maxval, from its header (the decoder's arguments); else None."""
    if image.format != "PPM" or not image.tile:
        return None
    args = image.tile[0].args
    maxval = args[1] if isinstance(args, tuple) and len(args) > 1 else None
    return maxval if isinstance(maxval, int) else None


def _stored_samples(image: Image.Image) -> str | None:
    """The raw sample layout of a mode-``I`` image (e.g. ``I;16S``) or of 16-bit colour
    (``RGB;16B``), read before decoding."""
    if image.mode not in ("I", "RGB", "RGBA"):
        return None
    if image.format == "PPM":  # Pillow scales a 9..16-bit maxval to 0..65535
        maxval = _maxval(image)
        if image.mode == "I" or (maxval is not None and maxval > 255):
            return "I;16"
        return None  # 8-bit colour (maxval <= 255, scaled to 0..255 by Pillow)
    if not image.tile:
        return None
    args = image.tile[0].args
    raw = args[0] if isinstance(args, tuple) and args else args
    if not isinstance(raw, str) or (image.mode != "I" and not _COLOUR16.fullmatch(raw)):
        return None
    return raw


def sample_kind(image: Image.Image) -> str:
    """How an opened file stores its samples, from its header alone: ``8-bit colour``,
    ``16-bit grey``, ``1-bit grey``, ``float grey``... Two classes each of their own kind
    (8-bit PNGs and 16-bit PNGs) can be told apart by it: the file-kind note names it."""
    mode, samples = image.mode, _stored_samples(image)
    if mode.startswith("I;16") or (samples is not None and "16" in samples):
        depth = "16-bit"
    else:
        depth = {"1": "1-bit", "I": "32-bit", "F": "float"}.get(mode, "8-bit")
    grey = mode in ("1", "L", "LA", "I", "F") or mode.startswith("I;16")
    return f"{depth} {'grey' if grey else 'colour'}"


def _colour16(mode: str, samples: str | None) -> bool:
    """16-bit colour (or greyscale+alpha, which Pillow opens as RGBA of high bytes)."""
    return mode in ("RGB", "RGBA") and samples is not None


def _grey16_signed(mode: str, samples: str | None) -> bool | None:
    """For 16-bit integer greyscale, whether its samples are signed; else None."""
    if mode in _UNSIGNED16 or (mode == "I" and samples in _UNSIGNED16):
        return False
    return True if mode == "I" and samples in _SIGNED16 else None


def _signed_tiff(image: Image.Image) -> bool:
    """Whether a TIFF says its samples are signed integers (SampleFormat 2)."""
    tags = getattr(image, "tag_v2", None)
    formats = tags.get(339) if tags is not None else None
    if formats is None:
        return False
    return 2 in (formats if isinstance(formats, tuple) else (formats,))


def to_8bit(
    image: Image.Image,
    samples: str | None,
    path: Path,
    bits_stored: int | None = None,
    high_bytes: np.ndarray | None = None,
) -> Image.Image:
    """A decoded Pillow image as 8-bit L or RGB by the rules of :mod:`medft_jax.data.pixels`.

    ``samples`` is the stored layout of a mode-``I`` image (Pillow widens
    16-bit signed and 32-bit samples alike to mode ``I``). ``high_bytes``: 16-bit
    colour's high bytes where Pillow's decoding does not give them
    (:func:`_ppm_colour_high_bytes`).
    """
    mode = image.mode
    if _colour16(mode, samples):
        rgb = image.convert("RGB") if high_bytes is None else Image.fromarray(high_bytes, "RGB")
        colour16_check(np.asarray(rgb), bits_stored, path)
        return rgb
    if mode in ("L", "RGB"):
        if _signed_tiff(image):
            # Pillow reads signed 8-bit TIFF samples as unsigned (-1 as 255): offset them as
            # the signed 16-bit rule does, -128..127 to 0..255.
            if mode == "RGB":
                raise NotABadFile(
                    f"{path}: signed 8-bit colour TIFF (SampleFormat 2) cannot be converted "
                    "faithfully; save it as unsigned 8-bit colour"
                )
            return Image.fromarray(np.asarray(image, np.uint8) ^ np.uint8(0x80), "L")
        return image.copy()
    if mode in EIGHT_BIT_MODES:
        with quiet_decoding():  # Pillow warns of a palette's transparency bytes, dropped
            return image.convert("RGB")  # exactly what preprocessing did before: alpha dropped
    signed = _grey16_signed(mode, samples)
    if signed is not None:
        values = integer16_to_uint8(np.asarray(image), signed, bits_stored, path)
        return Image.fromarray(values, "L")
    if mode == "F":
        return Image.fromarray(unit_float_to_uint8(np.asarray(image), path), "L")
    what = f"{samples} samples" if mode == "I" and samples else f"mode {mode}"
    raise NotABadFile(
        f"{path}: image with {what} cannot be converted to 8 bits faithfully; "
        "save it as 8- or 16-bit integers or as floats in [0, 1]"
    )


class ImageReader:
    """Decodes + preprocesses images, skipping (and counting) bad ones when asked.

    Args:
      resize_size: shorter side after resizing (torchvision ``Resize``).
      crop_size: side of the centre crop (torchvision ``CenterCrop``).
      skip_bad_images: if true, a file that fails to decode is recorded in
        :attr:`skipped` and :meth:`read` returns ``None``; otherwise the
        :class:`DataError` naming the file propagates. A missing file is
        never skipped: every source checks its listed files exist first, so
        one gone later is a copy changing under the reader.
      decode: file -> PIL image; the MRI task swaps in its HDF5 reader.
      threads: images :meth:`read_many` decodes at once (default
        :func:`decode_threads`). Pillow and hashlib release the GIL while they
        decode, resize and hash, so threads use the cores without copying
        images between processes; what is read, and the fingerprint, are the
        same for any number (results are taken in order).
    """

    def __init__(
        self,
        resize_size: int,
        crop_size: int,
        *,
        skip_bad_images: bool = False,
        decode: Callable[[Path], Image.Image] = open_image,
        threads: int | None = None,
    ) -> None:
        self.resize_size = resize_size
        self.crop_size = crop_size
        self.skip_bad_images = skip_bad_images
        self.decode = decode
        self.threads = decode_threads() if threads is None else max(1, int(threads))
        self.skipped: list[str] = []
        self._source = hashlib.blake2b(digest_size=16)

    @property
    def source_fingerprint(self) -> str:
        """A hash of every image read so far as decoded, before the resize, in read order.

        The cache's content fingerprint is of the resized pixels, which differ between
        archs by design (each its weights' resize); this one does not, so two archs'
        runs can be checked to have read the same images (a folder edited between them
        gives the same split and another fingerprint here).
        """
        return self._source.hexdigest()

    def read(self, path: Path) -> np.ndarray | None:
        """uint8 (crop, crop, 3) array of the image at ``path``, or ``None`` if skipped."""
        return self._kept(path, lambda: self._work(path))

    def read_many(self, paths: Sequence[Path]) -> list[np.ndarray | None]:
        """:meth:`read` of each of ``paths``, in order, up to :attr:`threads` at once.

        At most that many images are decoded and held at a time (a window, not the
        whole list: a full-resolution image can be hundreds of MB). The first bad
        file in order stops it as :meth:`read` would; those decoding after it are
        dropped."""
        if self.threads <= 1 or len(paths) <= 1:
            return [self.read(path) for path in paths]
        out: list[np.ndarray | None] = []
        todo = iter(paths)
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="medft-decode")
        try:
            window = collections.deque(
                (path, pool.submit(self._work, path))
                for path in itertools.islice(todo, self.threads)
            )
            while window:
                path, future = window.popleft()
                out.append(self._kept(path, future.result))
                for following in itertools.islice(todo, 1):
                    window.append((following, pool.submit(self._work, following)))
        except BaseException:
            # An error or Ctrl-C: not waiting for the decodes under way (one may be stuck
            # on a stalled file) lets it reach the caller now; what has not started never does.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        return out

    def read_iter(self, paths: Sequence[Path], chunk: int = 64) -> Iterator[np.ndarray | None]:
        """:meth:`read_many` of ``paths``, ``chunk`` at a time, yielded in order: a split of
        any length decoded in threads, holding one chunk's crops at a time (a TFDS
        builder's examples are written one by one)."""
        for start in range(0, len(paths), chunk):
            yield from self.read_many(paths[start : start + chunk])

    def _work(self, path: Path) -> tuple[tuple[bytes, bytes], np.ndarray]:
        """What :meth:`read` does that may run in a thread: the decoded image as the
        fingerprint reads it (its mode, size and pixels) and its crop. The fingerprint,
        which follows the read order, is the caller's to update."""
        image = self.decode(Path(path))
        seen = (f"{image.mode} {image.size}\0".encode(), image.tobytes())
        return seen, resize_and_crop(image, self.resize_size, self.crop_size)

    def _kept(
        self, path: Path, work: Callable[[], tuple[tuple[bytes, bytes], np.ndarray]]
    ) -> np.ndarray | None:
        """``work()``'s crop, counted into the fingerprint; a bad file raised or skipped."""
        raise_if_stopped()  # a Ctrl-C or SIGTERM whose exception a gc callback swallowed
        try:
            seen, cropped = work()
        except NotABadFile:
            raise  # skipping would drop every file of its kind
        except ImageMissing as err:  # listed, checked, then gone: not a corrupt file
            raise ImageMissing(
                f"{err} (moved or deleted while the data was read); --skip-bad-images "
                "skips corrupt files, not missing ones"
            ) from None
        except DataError as err:
            if not self.skip_bad_images:  # named as predict names it: the way past one bad file
                said = str(err)  # a task's reader (T1w's .mat) may have said it already
                raise DataError(said if said.endswith(SKIP_HINT) else said + SKIP_HINT) from None
            self.skipped.append(os.fspath(path))
            return None
        for part in seen:
            self._source.update(part)
        return cropped


SKIP_HINT = "; --skip-bad-images leaves out such files, counted, and reads the others"
"""Ends the error of a damaged file that a dataset's reading did not skip."""


def decode_threads() -> int:
    """Threads an :class:`ImageReader` decodes with: the CPUs this process may use, at most
    :data:`MAX_DECODE_THREADS` (each holds a full-resolution image, decoded and as bytes),
    or the count ``MEDFT_JAX_DECODE_THREADS`` gives (1 to 256)."""
    given = env_count(DECODE_THREADS_ENV)  # checked at every command's start too
    if given is not None:
        return given
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_DECODE_THREADS))


DECODE_THREADS_ENV = "MEDFT_JAX_DECODE_THREADS"
"""Environment variable: the threads that decode a folder's or CSV's images into its cache."""

MAX_DECODE_THREADS = 4
"""The default's cap: past it the in-order fingerprint hash and the cache writes bound the
speed, and each thread holds a full-resolution image twice (decoded, and as bytes)."""
