"""Decoding real users' images: 16-bit, float, DICOM, pathological sizes, 8-bit unchanged.

Every file here is written by the test itself (or is one of the small DICOM
files pydicom's wheel ships), and goes through the one decoding path that
``prepare`` (ImageReader, the folder source) and ``predict`` share.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments.predict import PredictError, load_image
from medft_jax.data import DataError, load
from medft_jax.data.dicom import DecoderMissing
from medft_jax.data.errors import NotABadFile
from medft_jax.data.images import IMAGE_SUFFIXES, ImageReader, open_image, takes_bits_stored
from medft_jax.data.pixels import MAX_ASPECT, MAX_PIXELS
from medft_jax.data.preprocess import center_crop, resized_size
from medft_jax.errors import UserError

pydicom = pytest.importorskip("pydicom", reason="DICOM tests need the [dicom] extra")
from pydicom.data import get_testdata_file  # noqa: E402

RESIZE, CROP = 36, 32


def _old_path(path: Path) -> np.ndarray:
    """What preprocessing did before 16-bit support: Pillow's ``convert("RGB")``, resize, crop."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    resized = rgb.resize(resized_size(*rgb.size, RESIZE), Image.BILINEAR)
    return center_crop(np.asarray(resized, np.uint8), CROP)


def _read(path: Path) -> np.ndarray:
    return ImageReader(RESIZE, CROP).read(path)


def _pattern(rng: np.random.Generator, shape=(40, 48)) -> np.ndarray:
    return rng.integers(0, 8000, shape).astype(np.uint16)


# 8-bit: byte-identical to the old path


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [
        ("L", ".png"),
        ("RGB", ".png"),
        ("RGB", ".jpg"),
        ("RGBA", ".png"),
        ("LA", ".png"),
        ("P", ".png"),
        ("1", ".png"),
        ("CMYK", ".tif"),
        ("L", ".bmp"),
    ],
)
def test_eight_bit_files_decode_byte_identically(tmp_path, mode, suffix):
    rng = np.random.default_rng(1)
    rgba = Image.fromarray(rng.integers(0, 256, (45, 38, 4), dtype=np.uint8), "RGBA")
    path = tmp_path / f"img{suffix}"
    (rgba if mode == "RGBA" else rgba.convert("RGB" if mode == "P" else mode)).convert(mode).save(
        path
    )
    ours = _read(path)
    assert ours.dtype == np.uint8 and ours.shape == (CROP, CROP, 3)
    assert np.array_equal(ours, _old_path(path))
    assert np.array_equal(load_image(path, RESIZE, CROP), ours)


# multi-frame files: refused like multi-frame DICOM, never read as their first frame


def _frames(n: int, mode: str = "L") -> list[Image.Image]:
    """``n`` distinct frames (GIF and WebP writers merge equal ones); ``I;16``: 16-bit ones."""
    rng = np.random.default_rng(20)
    values = [rng.integers(0, 256, (20, 24), dtype=np.uint8) for _ in range(n)]
    if mode == "I;16":
        return [Image.fromarray(v.astype(np.uint16) * 257) for v in values]
    return [Image.fromarray(v).convert(mode) for v in values]


@pytest.mark.parametrize(
    ("name", "kind", "options"),
    [
        ("stack.tif", "TIFF", {}),
        ("stack16.tif", "TIFF", {"mode": "I;16"}),
        ("anim.gif", "GIF", {}),
        ("anim.png", "PNG", {}),  # APNG
        ("anim.webp", "WEBP", {"lossless": True}),
    ],
)
def test_multi_frame_file_refused_and_its_single_frame_read(tmp_path, name, kind, options):
    """Pillow opens a stack on its first page and says nothing: a volume, a time series
    or a pyramid is not one image, so it is refused (and skippable) as multi-frame DICOM is."""
    options = dict(options)
    first, *rest = _frames(3, options.pop("mode", "L"))
    stack = tmp_path / name
    first.save(stack, save_all=True, append_images=rest, **options)
    with pytest.raises(DataError) as err:
        open_image(stack)
    assert str(err.value) == (
        f"{stack}: multi-frame {kind} (3 frames) is not one image; export the frame(s) you "
        "mean as single-frame files"
    )
    reader = ImageReader(RESIZE, CROP, skip_bad_images=True)
    assert reader.read(stack) is None and reader.skipped == [str(stack)]
    single = tmp_path / f"single{stack.suffix}"
    first.save(single, save_all=True, **options)  # the same writer, one frame
    with Image.open(single) as check:
        assert getattr(check, "n_frames", 1) == 1
    assert _read(single).shape == (CROP, CROP, 3)


@pytest.mark.parametrize("suffix", [".png", ".dcm"])
def test_a_file_gone_while_reading_is_an_error_even_when_skipping_bad_images(tmp_path, suffix):
    """Every source checks its listed files exist; one gone by decoding time is a copy
    changing under the reader, not a corrupt image to leave out of the data silently."""
    gone = tmp_path / f"gone{suffix}"
    assert _refused_not_skipped(gone, DataError) == (
        f"image file not found: {gone} (moved or deleted while the data was read); "
        "--skip-bad-images skips corrupt files, not missing ones"
    )


def test_decoding_in_threads_reads_and_fingerprints_as_one_thread_does(
    tmp_path, monkeypatch, capsys
):
    """read_many decodes up to ``threads`` images at once: the crops, the skipped files and
    the source fingerprint (a hash in read order) are those of one thread, for any count;
    the first bad file in order is the one refused."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(23):
        size = (int(rng.integers(20, 60)), int(rng.integers(20, 60)))
        path = tmp_path / f"{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    for i in (5, 17):
        paths[i].write_bytes(b"not an image")
    one = ImageReader(RESIZE, CROP, skip_bad_images=True, threads=1)
    expected = one.read_many(paths)
    assert [x is None for x in expected] == [i in (5, 17) for i in range(23)]
    for threads in (2, 3, 8):
        many = ImageReader(RESIZE, CROP, skip_bad_images=True, threads=threads)
        got = many.read_many(paths[:11]) + many.read_many(paths[11:])  # two chunks
        assert all(
            (a is None and b is None) or np.array_equal(a, b)
            for a, b in zip(got, expected, strict=True)
        )
        assert many.skipped == one.skipped == [str(paths[5]), str(paths[17])]
        assert many.source_fingerprint == one.source_fingerprint
    # Without skipping, the first bad file in order is refused, as one thread refuses it.
    strict = ImageReader(RESIZE, CROP, threads=4)
    with pytest.raises(DataError, match=re.escape(str(paths[5]))):
        strict.read_many(paths)
    monkeypatch.setenv("MEDFT_JAX_DECODE_THREADS", "1")
    assert ImageReader(RESIZE, CROP).threads == 1
    from experiments.predict import main as predict_main

    for bad in ("two", "\u00b2", "0", "100000", "-1"):  # "²" passed isdigit(), then int()
        monkeypatch.setenv("MEDFT_JAX_DECODE_THREADS", bad)
        why = f"MEDFT_JAX_DECODE_THREADS={bad!r}: expected a whole number from 1 to 256"
        with pytest.raises(UserError) as err:
            ImageReader(RESIZE, CROP)
        assert str(err.value) == why
    # Every command checks it at its start, as the other MEDFT_JAX_* settings: before
    # reading its flags or files (neither exists here).
    capsys.readouterr()
    assert predict_main(["--checkpoint", str(tmp_path / "none"), "--images", "nothing"]) == 2
    assert capsys.readouterr().err == f"error: {why}\n"


def test_a_threaded_read_stops_at_a_bad_file_without_waiting_for_a_stuck_decode(tmp_path):
    """The first bad file (or a Ctrl-C) had to wait for every decode under way: one stuck on
    a stalled file (a FIFO swapped in, a hung network mount) kept a Ctrl-C from ending the
    build until a second one. The error reaches the caller while that decode still hangs."""
    import threading

    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def decode(path: Path) -> Image.Image:
        if path.name == "stuck.png":
            started.set()
            release.wait(60)
            finished.set()
        if path.name == "bad.png":
            started.wait(60)  # the stuck decode is under way when this one fails
            raise DataError(f"corrupt or unreadable image {path}")
        return Image.new("RGB", (40, 40))

    reader = ImageReader(RESIZE, CROP, decode=decode, threads=2)
    paths = [tmp_path / "bad.png", tmp_path / "stuck.png", tmp_path / "ok.png"]
    try:
        with pytest.raises(DataError, match=r"bad\.png"):
            reader.read_many(paths)
        assert not finished.is_set()  # raised while the stuck decode was still under way
    finally:
        release.set()


def test_a_named_pipe_swapped_in_after_the_listing_is_refused_not_waited_on(tmp_path):
    """The listings refuse a FIFO called ``x.png``; one put in its place since (a sync tool
    mid-copy) blocked the decode for ever, a build that never ended. Refused in one line,
    under --skip-bad-images too, as the listing does."""
    import threading

    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for path in paths:
        Image.new("RGB", (40, 40)).save(path)
    paths[1].unlink()
    os.mkfifo(paths[1])
    said = []

    def read() -> None:
        for skip in (False, True):
            try:
                ImageReader(RESIZE, CROP, skip_bad_images=skip, threads=2).read_many(paths)
            except DataError as e:
                said.append(str(e))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(60)
    if reader.is_alive():
        with open(paths[1], "wb"):  # ends the blocked read, then fail
            pass
        pytest.fail("the read waited on the named pipe")
    assert said == [f"{paths[1]} is a named pipe (FIFO), not an image file"] * 2


def test_dicom_files_decode_in_threads_as_in_one(tmp_path):
    """pydicom in the decode threads: 16-bit DICOM slices with their own windows, a damaged
    one skipped, beside PNGs: the same crops, skips and fingerprint as one thread."""
    rng = np.random.default_rng(3)
    paths = []
    for i in range(14):
        if i % 3 == 2:
            path = tmp_path / f"{i:02d}.png"
            Image.fromarray(rng.integers(0, 256, (30, 34, 3), dtype=np.uint8)).save(path)
        else:
            pixels = rng.integers(0, 4000, (36, 40)).astype(np.uint16)
            path = _write_dicom(tmp_path / f"{i:02d}.dcm", pixels, window=(2000.0, 3000.0 + i))
        paths.append(path)
    paths[7].write_bytes(paths[7].read_bytes()[:300])  # a damaged file: skipped, named
    one = ImageReader(RESIZE, CROP, skip_bad_images=True, threads=1)
    expected = one.read_many(paths)
    many = ImageReader(RESIZE, CROP, skip_bad_images=True, threads=4)
    got = many.read_many(paths)
    assert one.skipped == many.skipped == [str(paths[7])]
    assert all(
        (a is None and b is None) or np.array_equal(a, b)
        for a, b in zip(got, expected, strict=True)
    )
    assert many.source_fingerprint == one.source_fingerprint


def test_quieting_the_decoders_from_many_threads_leaves_the_process_as_it_was():
    """Each thread's own warnings.catch_warnings and logger level, interleaved, restored
    another thread's state: pydicom's logger stayed at CRITICAL and the ignore filters
    stayed in place for good. The threads now share one quieting."""
    import logging
    import threading
    import warnings

    from medft_jax.errors import quiet_decoding

    logger = logging.getLogger("pydicom")
    filters, level = list(warnings.filters), logger.level
    inside, start = [], threading.Barrier(4)

    def decode() -> None:
        start.wait()
        for _ in range(200):
            with quiet_decoding():
                inside.append(logger.level == logging.CRITICAL)
                inside.append(
                    any(
                        action == "ignore" and module is not None and module.match("pydicom.x")
                        for action, _, _, module, _ in warnings.filters
                    )
                )

    threads = [threading.Thread(target=decode) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(inside) == 1600 and all(inside)
    assert warnings.filters == filters and logger.level == level


def _refused_not_skipped(path: Path, kind: type[Exception]) -> str:
    """The error of reading ``path`` under --skip-bad-images, which skipped nothing."""
    reader = ImageReader(RESIZE, CROP, skip_bad_images=True)
    with pytest.raises(kind) as err:
        reader.read(path)
    assert reader.skipped == []
    return str(err.value)


def test_mpo_jpeg_is_read_as_its_primary_image(tmp_path):
    """A camera JPEG with MP previews opens on its primary image by definition: not a guess."""
    first, second = _frames(1, "RGB")[0], Image.new("RGB", (20, 24))
    path = tmp_path / "camera.jpg"
    first.save(path, format="MPO", save_all=True, append_images=[second])
    with Image.open(path) as check:
        assert (check.format, check.n_frames) == ("MPO", 2)
    assert np.array_equal(_read(path), _old_path(path))


def test_truncated_multi_frame_file_is_a_data_error(tmp_path):
    """Counting frames walks every frame header: a damaged one is a bad file, not a crash."""
    first, *rest = _frames(3)
    path = tmp_path / "anim.gif"
    first.save(path, save_all=True, append_images=rest)
    whole = path.read_bytes()
    for end in range(len(whole) // 3, len(whole), 7):
        path.write_bytes(whole[:end])
        with pytest.raises(DataError, match=r"anim\.gif"):
            open_image(path)


# 16-bit and float


def _save16(path: Path, values: np.ndarray) -> Path:
    Image.fromarray(values.astype(np.uint16)).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I"), check.mode  # really stored as 16-bit
    return path


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_brightness_above_255_stays_separable(tmp_path, suffix):
    base = _pattern(np.random.default_rng(2))
    dark = _save16(tmp_path / f"dark{suffix}", base + 17000)  # above 14 bits: no flag needed
    bright = _save16(tmp_path / f"bright{suffix}", base + 46000)
    # the bug: both clip to white in the old path
    assert np.array_equal(_old_path(dark), _old_path(bright))
    assert (_old_path(dark) == 255).all()
    a, b = _read(dark), _read(bright)
    assert b.mean() - a.mean() > 100  # 29000 / 256 ≈ 113 grey levels apart
    # the rule: v >> 8, before the 8-bit resize
    assert np.array_equal(np.asarray(open_image(dark)), ((base + 17000) >> 8).astype(np.uint8))
    assert np.array_equal(load_image(bright, RESIZE, CROP), b)


def test_16bit_of_8bit_data_equals_the_8bit_file(tmp_path):
    v = np.random.default_rng(3).integers(0, 256, (30, 41), dtype=np.uint8)
    Image.fromarray(v).save(tmp_path / "v8.png")
    _save16(tmp_path / "v16.png", v.astype(np.uint16) * 257)  # the usual 8 -> 16 bit scaling
    assert np.array_equal(_read(tmp_path / "v16.png"), _read(tmp_path / "v8.png"))


def test_16bit_file_of_unscaled_8bit_values_refused_unless_declared(tmp_path):
    """0..255 stored as 16-bit would come out black: refused, never a silent black image;
    declared as 8 bits, it is the 8-bit image."""
    v = np.random.default_rng(4).integers(1, 256, (30, 41), dtype=np.uint8)
    path = _save16(tmp_path / "raw.png", v.astype(np.uint16))
    with pytest.raises(DataError, match=r"raw.png: 16-bit image whose values all fit in 14 bits"):
        open_image(path)
    assert np.array_equal(np.asarray(open_image(path, bits_stored=8)), v)
    _save16(tmp_path / "zeros.png", np.zeros((8, 8), np.uint16))  # truly black stays black
    assert not np.asarray(open_image(tmp_path / "zeros.png")).any()


def _twelve_bit(rng: np.random.Generator, shape=(40, 48)) -> np.ndarray:
    values = rng.integers(0, 4096, shape).astype(np.uint16)
    values[0, :2] = 0, 4095
    return values


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_12bit_data_in_a_16bit_file_is_refused_until_its_bits_are_declared(tmp_path, suffix):
    """v >> 8 would leave 12-bit X-rays 16 grey levels: the user says how many bits it uses."""
    values = _twelve_bit(np.random.default_rng(7))
    path = _save16(tmp_path / f"xray{suffix}", values)
    with pytest.raises(DataError) as err:
        open_image(path)
    assert str(err.value) == (
        f"{path}: 16-bit image whose values all fit in 14 bits (0..4095) would keep at most 64 "
        "grey levels under the 16-bit rule; give --bits-stored with the bits its data uses (12 "
        "for most X-rays, 8 for unscaled 8-bit data), or --bits-stored 16 to keep the 16-bit rule"
    )
    twelve = np.asarray(open_image(path, bits_stored=12))
    assert np.array_equal(twelve, (values >> 4).astype(np.uint8))
    assert twelve.max() == 255 and len(np.unique(twelve)) == 256
    sixteen = np.asarray(open_image(path, bits_stored=16))  # the 16-bit rule, as asked
    assert np.array_equal(sixteen, (values >> 8).astype(np.uint8)) and sixteen.max() == 15
    assert np.array_equal(
        load_image(path, RESIZE, CROP, 12),
        ImageReader(RESIZE, CROP, decode=lambda p: open_image(p, 12)).read(path),
    )


def test_values_beyond_the_declared_bits_are_refused(tmp_path):
    values = _twelve_bit(np.random.default_rng(8))
    values[3, 3] = 5000
    path = _save16(tmp_path / "lies.png", values)
    with pytest.raises(DataError) as err:
        open_image(path, bits_stored=12)
    assert str(err.value) == (
        f"{path}: values 0..5000 exceed the 12-bit range 0..4095 of --bits-stored 12; give the "
        "bits the data really uses"
    )
    assert np.asarray(open_image(path, bits_stored=13)).max() == 5000 >> 5


def _png16_rgb(path: Path, values: np.ndarray, colour_type: int = 2) -> Path:
    """A 16-bit RGB PNG (Pillow cannot write one): IHDR bit depth 16, colour type 2;
    ``colour_type=4`` with two channels: 16-bit greyscale+alpha."""
    h, w, _ = values.shape
    rows = b"".join(b"\x00" + values[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
    path.write_bytes(png + chunk(b"IEND", b""))
    return path


def test_netpbm_colour_is_16_bit_only_when_its_maxval_says_so(tmp_path):
    """An 8-bit PPM (maxval <= 255), dark or not, is 8-bit colour: it was refused by the
    16-bit colour rule; a 16-bit one (maxval 4095) still takes that rule."""
    dark = np.random.default_rng(11).integers(0, 60, (5, 6, 3)).astype(np.uint8)
    eight = tmp_path / "dark.ppm"
    Image.fromarray(dark, "RGB").save(eight)
    for bits in (None, 12):  # a folder of 12-bit X-rays may hold colour PPMs too
        assert np.array_equal(np.asarray(open_image(eight, bits_stored=bits)), dark)
    sixteen = tmp_path / "c12.ppm"
    sixteen.write_bytes(b"P6\n6 5\n4095\n" + np.full((5, 6, 3), 1000, ">u2").tobytes())
    for bits in (None, 12, 16):  # maxval states the range: 1000 of 4095 is 62 of 255
        assert np.array_equal(
            np.asarray(open_image(sixteen, bits_stored=bits)), np.full((5, 6, 3), 62)
        )
    full = tmp_path / "c16.ppm"  # maxval 65535 states nothing: the 16-bit rule's checks hold
    full.write_bytes(b"P6\n6 5\n65535\n" + np.full((5, 6, 3), 1000, ">u2").tobytes())
    with pytest.raises(DataError, match=r"c16\.ppm: 16-bit colour image whose values all fit"):
        open_image(full)


def test_a_pgm_of_12_bits_is_read_by_its_maxval_whatever_bits_are_declared(tmp_path):
    """Pillow scales 0..maxval to 0..65535 first: --bits-stored 12, right for the folder's
    12-bit PNGs, refused the same X-ray as a PGM (its values quoted as 0..65535)."""
    values = np.array([[0, 1024], [2048, 4095]])
    pgm = tmp_path / "x12.pgm"
    pgm.write_bytes(b"P5\n2 2\n4095\n" + values.astype(">u2").tobytes())
    for bits in (None, 12, 16):
        assert np.asarray(open_image(pgm, bits_stored=bits)).tolist() == [[0, 64], [128, 255]]


def test_a_file_pillow_cannot_open_names_the_plugins_reason(tmp_path):
    """Pillow's "cannot identify image file" named no reason: a sound 12-bit JPEG read as a
    damaged file, and the user could not tell which. It is refused, never skipped by
    --skip-bad-images as damaged: every file of its kind would be (one class's, one
    scanner's), the data silently shrunk."""
    path = tmp_path / "x.jpg"
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    start = data.index(b"\xff\xc0")  # baseline SOF0 -> extended SOF1 of 12-bit samples
    data[start + 1], data[start + 4] = 0xC1, 12
    path.write_bytes(bytes(data))
    with pytest.raises(NotABadFile) as e:
        open_image(path)
    assert str(e.value) == (
        f"{path}: an image of a kind Pillow does not decode (Pillow cannot open it (JPEG: "
        "cannot handle 12-bit layers)), not skipped as a damaged file; convert it (e.g. to "
        "16-bit PNG) or move it out of the folder"
    )
    f64 = tmp_path / "f64.tif"  # a float64 TIFF: sound, no Pillow mode for it
    Image.fromarray(np.zeros((4, 8), np.float32)).save(f64)  # 4 rows of 32 bytes
    tiff = bytearray(f64.read_bytes())
    bps = tiff.index(bytes([0x02, 0x01, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 32]))
    tiff[bps + 8] = 64  # BitsPerSample 32 -> 64 ...
    width = tiff.index(bytes([0x00, 0x01]), 8)  # ... and ImageWidth 8 -> 4: the same rows
    assert tiff[width + 8] == 8
    tiff[width + 8] = 4
    f64.write_bytes(bytes(tiff))
    with pytest.raises(NotABadFile, match=r"f64\.tif: an image of a kind .*unknown pixel mode"):
        open_image(f64)
    # The same as a BigTIFF (Pillow opens BigTIFF): sound too, not skipped as damaged.
    big = tmp_path / "big.tif"
    Image.fromarray(np.zeros((4, 8), np.float32)).save(big, big_tiff=True)
    data = bytearray(big.read_bytes())
    assert data[:4] == b"II+\0"
    data[data.index(bytes([0x02, 0x01, 0x03, 0x00, 1, 0, 0, 0, 0, 0, 0, 0, 32])) + 12] = 64
    at = data.index(bytes([0x00, 0x01, 0x04, 0x00, 1, 0, 0, 0, 0, 0, 0, 0, 8]), 16)
    data[at + 12] = 4
    big.write_bytes(bytes(data))
    with pytest.raises(NotABadFile, match=r"big\.tif: an image of a kind .*unknown pixel mode"):
        open_image(big)
    # A strip offset's field type turned RATIONAL: Pillow's TypeError was a traceback.
    rgb = tmp_path / "rgb.tif"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), np.uint8)).save(rgb)
    data = bytearray(rgb.read_bytes())
    assert data[72] == 4  # StripOffsets' type, LONG
    data[72] = 5
    rgb.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"^corrupt or unreadable image .*rgb\.tif: 'IFDRational'"):
        open_image(rgb)
    # One byte off (BitsPerSample 64 -> 65, or rows shorter than stated): damaged, skippable.
    for at, value in ((bps + 8, 65), (width + 8, 5)):
        odd = tmp_path / "odd.tif"
        odd.write_bytes(bytes(tiff[:at]) + bytes([value]) + bytes(tiff[at + 1 :]))
        with pytest.raises(DataError) as e:
            open_image(odd)
        assert not isinstance(e.value, NotABadFile)
    # Cut short, the same file is damaged (skippable), though Pillow says the same words.
    cut = tmp_path / "cut.tif"
    cut.write_bytes(f64.read_bytes()[: len(tiff) - 20])
    with pytest.raises(DataError) as e:
        open_image(cut)
    assert not isinstance(e.value, NotABadFile)
    assert str(e.value) == (
        f"corrupt or unreadable image {cut}: Pillow cannot open it (TIFF: unknown pixel mode)"
    )
    junk = tmp_path / "y.png"
    junk.write_bytes(b"no image here" * 4)
    with pytest.raises(DataError, match=r"y\.png: cannot identify image file"):
        open_image(junk)  # no plugin claims it: Pillow's words
    # An empty file, the usual cause (a copy that did not finish), is said to be one, as
    # an image or as DICOM ("not a DICOM file ... missing File Meta Information").
    for name in ("zero.jpg", "zero.dcm"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(DataError) as e:
            open_image(tmp_path / name)
        assert str(e.value) == (
            f"corrupt or unreadable image {tmp_path / name}: an empty file (0 bytes: a copy, "
            "sync or download that did not finish)"
        )


def _tiff_of_12_bits(path: Path, values: np.ndarray) -> Path:
    """A little-endian uncompressed greyscale TIFF of 12-bit samples (BitsPerSample 12),
    packed two in three bytes, which Pillow cannot write."""
    import struct

    height, width = values.shape
    data = b""
    for row in values.astype(int).tolist():
        row += [0] * (len(row) % 2)
        packed = b"".join(
            bytes([a >> 4, ((a & 15) << 4) | (b >> 8), b & 255])
            for a, b in zip(row[::2], row[1::2], strict=True)
        )
        data += packed[: (width * 12 + 7) // 8]
    tags = [(256, width), (257, height), (258, 12), (259, 1), (262, 1), (273, 0), (277, 1)]
    tags += [(278, height), (279, len(data))]
    offset = 8 + 2 + 12 * len(tags) + 4
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHII", tag, 4, 1, offset if tag == 273 else value) for tag, value in tags
    )
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + data)
    return path


def test_12_bit_tiff_and_jpeg2000_are_read_by_the_bits_they_state(tmp_path):
    """A TIFF of BitsPerSample 12 was refused as a 16-bit image of unstated range, and a
    JPEG 2000 of 12-bit precision under --bits-stored 12 (right for the folder's 12-bit
    PNGs) as exceeding 12 bits: one folder of X-rays could not hold both. Each states its
    range, as a PGM's maxval does: the flag does not apply to them."""
    values = np.array([[0, 4095, 2048], [1, 100, 4000]])
    expected = (values >> 4).tolist()
    tiff = _tiff_of_12_bits(tmp_path / "x.tif", values)
    assert Image.open(tiff).mode == "I;16"
    # Lossless JPEG 2000 at 16 bits, its precision then set to 12: the decoder's DC shift
    # (2048 where the encoder took 32768) gives back v from v + 30720.
    j2k = tmp_path / "x.j2k"
    Image.fromarray((values + 30720).astype(np.uint16)).save(j2k)
    data = bytearray(j2k.read_bytes())
    data[data.index(b"\xff\x4f\xff\x51") + 42] = 11  # Ssiz: precision 12
    j2k.write_bytes(bytes(data))
    assert np.asarray(Image.open(j2k)).tolist() == (values << 4).tolist()  # Pillow's 16 bits
    for path in (tiff, j2k):
        for bits in (None, 12, 16):
            assert np.asarray(open_image(path, bits_stored=bits)).tolist() == expected
        assert not takes_bits_stored(path)


def test_a_pgm_sample_above_its_maxval_is_refused_not_clipped_to_white(tmp_path):
    """Pillow clamps a binary PGM/PPM's samples to the maxval (an invalid file): a 12-bit
    file holding 16-bit values came out white there, silently."""
    over = tmp_path / "over.pgm"
    over.write_bytes(b"P5\n3 1\n4095\n" + np.array([0, 5000, 4095], ">u2").tobytes())
    with pytest.raises(DataError) as e:
        open_image(over)
    assert str(e.value) == (
        f"{over}: a sample of 5000 above the maxval 4095 its header states (an invalid "
        "PGM/PPM: its values would be clipped to white)"
    )
    colour = tmp_path / "over.ppm"
    colour.write_bytes(b"P6\n2 1\n200\n" + bytes([0, 10, 20, 30, 201, 40]))
    with pytest.raises(DataError, match=r"a sample of 201 above the maxval 200"):
        open_image(colour)
    within = tmp_path / "ok.ppm"
    within.write_bytes(b"P6\n2 1\n200\n" + bytes([0, 10, 20, 30, 200, 40]))
    assert np.asarray(open_image(within))[0, 1].tolist() == [38, 255, 51]  # round(v*255/200)


@pytest.mark.parametrize("orientation", [2, 3, 6, 8])
def test_a_tiff_whose_orientation_turns_its_raster_is_refused(tmp_path, orientation):
    """Pillow turns a TIFF by its Orientation tag when loading it (a JPEG's EXIF one it
    leaves): 2-4 came out flipped or turned, 5-8 of an uncompressed greyscale TIFF
    scrambled (rows read with width and height swapped), without a word."""
    stored = (np.add.outer(np.arange(20) * 10, np.arange(30) * 3) % 256).astype(np.uint8)
    path = tmp_path / "o.tif"
    Image.fromarray(stored).save(path, tiffinfo={274: orientation})
    with pytest.raises(NotABadFile) as e:
        ImageReader(RESIZE, CROP, skip_bad_images=True).read(path)  # a sound file: not skipped
    assert str(e.value) == (
        f"{path}: TIFF Orientation {orientation} (its stored rows are to be turned for "
        "display), which this toolkit does not read faithfully; save it as displayed, with "
        "Orientation 1"
    )
    Image.fromarray(stored).save(path, tiffinfo={274: 1})
    assert np.array_equal(np.asarray(open_image(path)), stored)


def test_a_palette_png_with_transparency_decodes_without_pillows_warning(tmp_path, recwarn):
    """Its conversion to RGB printed Pillow's two-line UserWarning, naming no file."""
    path = tmp_path / "p.png"
    image = Image.new("P", (4, 2))
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.save(path, transparency=bytes([0, 128]))  # two alphas: kept as bytes
    assert Image.open(path).info["transparency"] == b"\x00\x80"
    assert np.asarray(open_image(path))[0, :2].tolist() == [[0, 0, 0], [255, 0, 0]]
    assert not [w for w in recwarn if "Transparency" in str(w.message)]


@pytest.mark.parametrize("kind", ["uint16", "float32"])
def test_white_is_zero_tiff_is_inverted_at_any_bit_depth(tmp_path, kind):
    """PhotometricInterpretation 0 (TIFF's MONOCHROME1): Pillow inverts 8-bit files only,
    so a 16-bit or float X-ray exported this way came out as its negative."""
    stored = {
        "uint16": np.array([[0, 64], [128, 255]], np.uint16) * 257,
        "float32": np.array([[0, 0.25], [0.5, 1.0]], np.float32),
    }[kind]
    for photometric, expected in ((0, [[255, 191], [127, 0]]), (1, [[0, 64], [128, 255]])):
        path = tmp_path / f"p{photometric}.tif"
        Image.fromarray(stored).save(path, tiffinfo={262: photometric})
        assert np.asarray(open_image(path)).tolist() == expected


def test_an_rgb565_bmp_is_8_bit_colour(tmp_path):
    """A 5-6-5 BMP's stored layout reads ``BGR;16``: taken for 16 bits a sample, a dark one
    was refused, and any --bits-stored but 16 too, though Pillow reads it as 8-bit colour."""
    h, w = 4, 3
    px = (np.uint16(5) << 11) | (np.uint16(10) << 5) | np.uint16(5)  # r, g, b = 5, 10, 5
    rows = b"".join(np.full(w, px, "<u2").tobytes().ljust(8, b"\0") for _ in range(h))
    dib = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 16, 3, len(rows), 2835, 2835, 0, 0)
    masks = struct.pack("<III", 0xF800, 0x07E0, 0x001F)
    off = 14 + len(dib) + len(masks)
    path = tmp_path / "dark.bmp"
    path.write_bytes(b"BM" + struct.pack("<IHHI", off + len(rows), 0, 0, off) + dib + masks + rows)
    expected = np.asarray(Image.open(path).convert("RGB"))
    assert expected[0, 0].tolist() == [41, 40, 41]  # 5/31, 10/63, 5/31 of 255
    for bits in (None, 12):
        assert np.array_equal(np.asarray(open_image(path, bits_stored=bits)), expected)


def test_16bit_colour_is_read_by_the_16bit_rule_and_never_crushed_silently(tmp_path):
    """Pillow reads 16-bit colour as each sample's high byte: 12-bit colour would come out
    0..15. Refused unless the 16-bit rule is asked for; other declared bits cannot be met."""
    rng = np.random.default_rng(10)
    twelve = _png16_rgb(tmp_path / "c12.png", rng.integers(0, 4096, (6, 7, 3)))
    with pytest.raises(
        DataError, match=r"c12\.png: 16-bit colour image whose values all fit in 14"
    ):
        open_image(twelve)
    with pytest.raises(DataError, match=r"c12\.png: --bits-stored 12 applies to 16-bit grayscale"):
        open_image(twelve, bits_stored=12)
    values = rng.integers(0, 65536, (6, 7, 3))
    full = _png16_rgb(tmp_path / "c16.png", values)
    for bits in (None, 16):
        out = np.asarray(open_image(full, bits_stored=bits))
        assert out.shape == (6, 7, 3) and np.array_equal(out, (values >> 8).astype(np.uint8))
    assert np.asarray(open_image(twelve, bits_stored=16)).max() == 15  # as asked
    # 8-bit values stored unscaled (0..255): every high byte 0, all black under the rule.
    unscaled = _png16_rgb(tmp_path / "c8.png", rng.integers(0, 256, (6, 7, 3)))
    with pytest.raises(DataError, match=r"c8\.png: 16-bit colour image whose values all fit in"):
        open_image(unscaled)
    assert np.asarray(open_image(unscaled, bits_stored=16)).max() == 0  # as asked


def test_16bit_grey_alpha_png_follows_the_greyscale_rules(tmp_path):
    """Pillow opens 16-bit greyscale+alpha as RGBA of the high bytes: it was taken for
    16-bit colour, and --bits-stored refused. All 16 bits are read, alpha dropped as for
    8-bit LA, and the grey decodes exactly as the same values without alpha do."""
    rng = np.random.default_rng(11)
    grey = _twelve_bit(rng, (6, 7))
    alpha = rng.integers(0, 65536, grey.shape)
    path = _png16_rgb(tmp_path / "la12.png", np.stack([grey, alpha], -1), colour_type=4)
    with Image.open(path) as check:
        assert check.mode == "RGBA"  # Pillow has no 16-bit LA mode
    plain = _save16(tmp_path / "l12.png", grey)
    with pytest.raises(DataError) as err:
        open_image(path)
    assert str(err.value).startswith(f"{path}: 16-bit image whose values all fit in 14 bits")
    twelve = open_image(path, bits_stored=12)
    assert twelve.mode == "L" and np.array_equal(np.asarray(twelve), (grey >> 4).astype(np.uint8))
    assert np.array_equal(twelve, open_image(plain, bits_stored=12))
    full = rng.integers(0, 65536, grey.shape)
    path = _png16_rgb(tmp_path / "la16.png", np.stack([full, alpha], -1), colour_type=4)
    assert np.array_equal(np.asarray(open_image(path)), (full >> 8).astype(np.uint8))
    path.write_bytes(path.read_bytes()[:-30])  # truncated inside the image data
    with pytest.raises(DataError, match=r"la16\.png"):
        open_image(path)


@pytest.mark.parametrize("bad", [7, 17, 12.0, True, "12"])
def test_bits_stored_is_an_integer_from_8_to_16(tmp_path, bad):
    path = _save16(tmp_path / "x.png", _twelve_bit(np.random.default_rng(9)))
    with pytest.raises(DataError, match=r"^--bits-stored must be an integer from 8 to 16, got "):
        open_image(path, bits_stored=bad)


def _tiff16_signed(path: Path, values: np.ndarray, bits: int = 16) -> Path:
    """A minimal uncompressed little-endian TIFF of int16 (or int8) samples (SampleFormat 2)."""
    h, w = values.shape
    data = values.astype("<i2" if bits == 16 else "i1").tobytes()
    entries = [  # tag, type (3 SHORT, 4 LONG), value
        (256, 4, w),
        (257, 4, h),
        (258, 3, bits),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, 8),
        (277, 3, 1),
        (278, 4, h),
        (279, 4, len(data)),
        (339, 3, 2),
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    ifd += struct.pack("<I", 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8 + len(data)) + data + ifd)
    return path


def _tiff16_planar(path: Path, values: np.ndarray) -> Path:
    """A minimal uncompressed little-endian TIFF of uint16 samples, ``values`` (H, W, C)
    stored plane by plane (PlanarConfiguration 2, as tifffile writes (C, H, W) arrays)."""
    h, w, c = values.shape
    planes = [values[..., k].astype("<u2").tobytes() for k in range(c)]
    n = 11
    after_ifd = 8 + 2 + 12 * n + 4
    data_at = after_ifd + (10 * c if c > 1 else 0)  # out-of-line arrays, then the planes
    entries = [  # tag, type (3 SHORT, 4 LONG), values
        (256, 4, [w]),
        (257, 4, [h]),
        (258, 3, [16] * c),
        (259, 3, [1]),
        (262, 3, [2 if c == 3 else 1]),
        (273, 4, [data_at + k * len(planes[0]) for k in range(c)]),
        (277, 3, [c]),
        (278, 4, [h]),
        (279, 4, [len(p) for p in planes]),
        (284, 3, [2]),
        (339, 3, [1]),
    ]
    ifd, tail = struct.pack("<H", n), b""
    for tag, kind, vals in entries:
        packed = struct.pack(f"<{len(vals)}{'H' if kind == 3 else 'I'}", *vals)
        ifd += struct.pack("<HHI", tag, kind, len(vals))
        if len(packed) <= 4:
            ifd += packed.ljust(4, b"\x00")
        else:
            ifd += struct.pack("<I", after_ifd + len(tail))
            tail += packed
    assert after_ifd + len(tail) == data_at
    head = b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
    path.write_bytes(head + tail + b"".join(planes))
    return path


@pytest.mark.parametrize("channels", [3, 1])
def test_16bit_tiff_stored_plane_by_plane_is_refused_not_misread(tmp_path, channels):
    """Pillow reads each 16-bit plane as 8-bit samples: a ramp 0, 256, 512, ... came out as
    0, 0, 0, 1, 0, 2, ... (low and high bytes side by side), with no error."""
    ramp = (np.arange(16 * 16).reshape(16, 16) * 256).astype(np.uint16)
    path = _tiff16_planar(tmp_path / "planar.tif", np.stack([ramp] * channels, -1))
    with Image.open(path) as check:
        assert check.tag_v2[284] == 2
    with pytest.raises(NotABadFile) as err:
        ImageReader(RESIZE, CROP, skip_bad_images=True).read(path)
    assert str(err.value) == (
        f"{path}: TIFF of 16-bit samples stored as separate planes (PlanarConfiguration 2), "
        "which Pillow misreads; save it with interleaved samples (PlanarConfiguration 1, "
        "e.g. tifffile's planarconfig='contig')"
    )
    interleaved = _save16(tmp_path / "interleaved.tif", ramp)  # the same values, one plane
    assert np.asarray(open_image(interleaved)).tolist() == (ramp >> 8).tolist()


def test_files_the_decoding_rules_refuse_are_never_skipped_as_bad(tmp_path):
    """--skip-bad-images dropped dark 16-bit images (refused until their bits are declared)
    as corrupt: which images go follows brightness, so often the class. Refusals of a
    rule the user can satisfy stop the run; a truncated file is still skipped."""
    rng = np.random.default_rng(5)
    refused = {
        "dark16.png": _save16(tmp_path / "dark16.png", _twelve_bit(rng)),
        "over12.png": _save16(tmp_path / "over12.png", np.full((20, 24), 5000)),
        "dark_rgb16.png": _png16_rgb(tmp_path / "dark_rgb16.png", np.full((4, 5, 3), 900)),
        "float.tif": tmp_path / "float.tif",
    }
    Image.fromarray(np.full((8, 8), 2.5, np.float32)).save(refused["float.tif"])
    reader = ImageReader(RESIZE, CROP, skip_bad_images=True)
    for name, path in refused.items():
        bits = 12 if name == "over12.png" else None
        reader.decode = lambda p, bits=bits: open_image(p, bits_stored=bits)
        with pytest.raises(NotABadFile, match=re.escape(str(path))):
            reader.read(path)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(refused["dark16.png"].read_bytes()[:-30])
    assert reader.read(truncated) is None and reader.skipped == [str(truncated)]


@pytest.mark.parametrize("where", ["header check", "pillow"])
def test_a_file_this_user_may_not_read_is_never_skipped_as_bad(tmp_path, monkeypatch, where):
    """--skip-bad-images skipped a sound file whose permissions denied reading as "corrupt":
    permissions follow a copy of one class's or one site's folder, so the dataset shrank
    by class."""
    from medft_jax.data import dicom, images

    path = tmp_path / "locked.png"
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    if where == "header check":
        monkeypatch.setattr(dicom, "open", denied, raising=False)
    else:
        monkeypatch.setattr(images.Image, "open", denied)
    assert _refused_not_skipped(path, NotABadFile) == (
        f"{path}: permission denied, this user cannot read it (not a damaged file: give "
        "read permission, chmod a+r)"
    )


def test_signed_16bit_tiff_by_the_type_range(tmp_path):
    values = np.array([[-32768, -1024, 0, 3071, 32767]], np.int16).repeat(3, 0)
    path = _tiff16_signed(tmp_path / "ct.tif", values)
    out = np.asarray(open_image(path))
    assert out[0].tolist() == [0, 124, 128, 139, 255]


def test_signed_data_of_few_bits_is_refused_until_declared(tmp_path):
    """CT numbers (-1024..3071) under the signed 16-bit rule: 16 grey levels. Declared as
    13 bits (-4096..4095): (v + 4096) >> 5."""
    values = np.array([[-1024, -1000, 0, 1000, 3071]], np.int16).repeat(3, 0)
    path = _tiff16_signed(tmp_path / "ct.tif", values)
    with pytest.raises(
        DataError, match=r"ct\.tif: signed 16-bit image whose values all fit in 14 "
    ):
        open_image(path)
    out = np.asarray(open_image(path, bits_stored=13))
    assert out[0].tolist() == [(v + 4096) >> 5 for v in (-1024, -1000, 0, 1000, 3071)]
    with pytest.raises(DataError, match=r"exceed the 12-bit range -2048\.\.2047"):
        open_image(path, bits_stored=12)


def test_float_tiff_in_unit_range(tmp_path):
    v = np.random.default_rng(4).random((33, 40)).astype(np.float32)
    v[0, 0], v[0, 1] = 0.0, 1.0
    Image.fromarray(v).save(tmp_path / "f.tif")
    assert np.asarray(Image.open(tmp_path / "f.tif")).dtype == np.float32
    assert (_old_path(tmp_path / "f.tif") <= 1).all()  # the bug: black
    out = np.asarray(open_image(tmp_path / "f.tif"))
    assert np.array_equal(out, np.rint(v * np.float32(255)).astype(np.uint8))
    assert out.max() == 255 and _read(tmp_path / "f.tif").mean() > 100


@pytest.mark.parametrize(
    ("bad", "message"),
    [(np.nan, r"NaN or infinite"), (np.inf, r"NaN or infinite"), (4.5, r"span \[0, 4\.5\]")],
)
def test_float_tiff_nan_inf_or_out_of_range_refused(tmp_path, bad, message):
    v = np.full((8, 8), 0.5, np.float32)
    v[3, 3], v[0, 0] = bad, 0.0
    path = tmp_path / "f.tif"
    Image.fromarray(v).save(path)
    with pytest.raises(DataError, match=message) as err:
        _read(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(PredictError, match=message):
        load_image(path, RESIZE, CROP)


def test_32bit_integer_tiff_refused(tmp_path):
    path = tmp_path / "i32.tif"
    Image.fromarray(np.full((8, 8), 70000, np.int32)).save(path)
    with pytest.raises(DataError, match=r"i32\.tif: image with I;32S samples cannot be converted"):
        open_image(path)


def test_folder_source_keeps_16bit_classes_separable(tmp_path):
    rng = np.random.default_rng(5)
    root = tmp_path / "imgs"
    for name, offset in (("dark", 2000), ("bright", 40000)):
        (root / name).mkdir(parents=True)
        for i in range(10):
            suffix = ".png" if i % 2 else ".tif"
            _save16(root / name / f"{i}{suffix}", _pattern(rng, (34, 38)) + offset)
    with pytest.raises(DataError, match=r"dark/\d\.(png|tif): 16-bit image whose values all fit"):
        load("folder", manual_dir=root, data_dir=tmp_path / "out", progress=False, **_sizes())
    ds = load(
        "folder",
        manual_dir=root,
        data_dir=tmp_path / "out",
        crop_size=32,
        resize_size=32,
        progress=False,
        bits_stored=16,  # the dark class is dark, not of fewer bits
    )
    assert ds.metadata["bits_stored"] == 16
    assert ds.class_names == ("bright", "dark")
    for split in ds.splits.values():
        means = split.images.reshape(len(split), -1).mean(axis=1)
        bright, dark = means[split.labels == 0], means[split.labels == 1]
        assert len(bright) and len(dark)
        assert bright.min() > dark.max() + 100  # (40000 - 2000) / 256 ≈ 148 grey levels
        assert dark.max() < 60  # not clipped to white
    first = ds.splits["train"]
    expected = ImageReader(32, 32, decode=lambda p: open_image(p, 16)).read(root / first.ids[0])
    assert np.array_equal(first.images[0], expected)
    # Declared otherwise, the same files are another cache (and are refused: values > 14 bits).
    with pytest.raises(DataError, match=r"exceed the 14-bit range 0\.\.16383 of --bits-stored 14"):
        load(
            "folder",
            manual_dir=root,
            data_dir=tmp_path / "out",
            progress=False,
            bits_stored=14,
            **_sizes(),
        )


# DICOM


def _write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    voi_lut: tuple[list[int], list[int]] | None = None,
    transfer_syntax: str | None = None,
    pixel_data: bytes | None = None,
    **extra,
) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    if pixels.ndim == 3:  # colour, interleaved
        ds.SamplesPerPixel, ds.PlanarConfiguration = pixels.shape[2], 0
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = int(pixels.dtype == np.int16)
    if pixel_data is not None:  # compressed: one fragment
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([pixel_data])
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut:
        item = Dataset()
        item.LUTDescriptor = voi_lut[0]
        item.add_new(0x00283006, "US", voi_lut[1])  # LUTData: US or OW, say which
        ds.VOILUTSequence = [item]
    ds.save_as(path, enforce_file_format=True)
    return path


# stored v -> x = 2 v - 100 (rescale) -> LINEAR window c=100, w=201: c' = 99.5, w' = 200,
# y = ((x - 99.5) / 200 + 0.5) * 255, clipped, rounded (PS3.3 C.11.2.1.2.1), worked by hand:
STORED = np.array([[0, 50, 100, 125, 150, 1000]], np.uint16)
WINDOWED = [0, 1, 128, 192, 255, 255]


def test_dicom_rescale_then_window_numerically(tmp_path):
    path = _write_dicom(tmp_path / "a.dcm", STORED, rescale=(2, -100), window=(100, 201))
    assert np.asarray(open_image(path))[0].tolist() == WINDOWED
    inverted = _write_dicom(
        tmp_path / "b.dcm", STORED, photometric="MONOCHROME1", rescale=(2, -100), window=(100, 201)
    )
    assert np.asarray(open_image(inverted))[0].tolist() == [255 - v for v in WINDOWED]


def test_dicom_without_window_uses_the_pixel_range(tmp_path):
    stored = np.array([[10, 60, 110, 1030]], np.uint16)  # x = 2 v - 100: -80, 20, 120, 1960
    path = _write_dicom(tmp_path / "a.dcm", stored, rescale=(2, -100))
    expected = np.rint((np.array([-80, 20, 120, 1960]) + 80) / 2040 * 255).astype(int)
    assert np.asarray(open_image(path))[0].tolist() == expected.tolist() == [0, 12, 25, 255]


# A CT row: tissue of -1000..1000 HU (rescale 1, 0), padded outside the field of view.
TISSUE = np.array([-1000, -500, 0, 398, 1000], np.int16)
TISSUE_GREYS = [0, 64, 128, 178, 255]  # (v + 1000) / 2000 * 255, rounded, by hand


@pytest.mark.parametrize("pad", [-1001, -2000, -32768])
def test_dicom_padding_is_left_out_of_the_pixel_range(tmp_path, pad):
    """PixelPaddingValue marks the corners a CT pads its round field of view with; the
    standard names it so that a viewer leaves it out of the range. Counted in the
    min..max, one slice decoded to other greys per scanner's padding value (-32768
    squeezed the tissue into 240..255). Padding, below the tissue, clips to black."""
    stored = np.array([[pad, *TISSUE, pad]], np.int16)
    path = _write_dicom(tmp_path / "a.dcm", stored, rescale=(1, 0), PixelPaddingValue=pad)
    assert np.asarray(open_image(path))[0].tolist() == [0, *TISSUE_GREYS, 0]
    top = min(-pad, 32767)  # MONOCHROME1 pads at the top: still black once inverted
    mono1 = np.array([[top, *-TISSUE, top]], np.int16)
    path = _write_dicom(tmp_path / "b.dcm", mono1, photometric="MONOCHROME1", PixelPaddingValue=top)
    # 255 - round((v + 1000) / 2000 * 255) for v = 1000, 500, 0, -398, -1000
    assert np.asarray(open_image(path))[0].tolist() == [0, 0, 64, 127, 178, 255, 0]


def test_dicom_padding_range_and_a_value_read_unsigned(tmp_path):
    """PixelPaddingRangeLimit makes the padding an inclusive range (noisy background
    air); a signed file's padding value read unsigned (Implicit VR: -2000 as 63536) is
    the signed one; a file that is all padding has no range: refused."""
    stored = np.array([[-2003, -2000, *TISSUE]], np.int16)
    path = _write_dicom(
        tmp_path / "r.dcm", stored, PixelPaddingValue=-2003, PixelPaddingRangeLimit=-2000
    )
    assert np.asarray(open_image(path))[0].tolist() == [0, 0, *TISSUE_GREYS]
    unsigned = _write_dicom(tmp_path / "u.dcm", stored[:, 1:])
    from pydicom import dcmread

    ds = dcmread(unsigned)
    ds.add_new(0x00280120, "US", 63536)  # PixelPaddingValue as an unsigned reader has it
    ds.save_as(unsigned)
    assert np.asarray(open_image(unsigned))[0].tolist() == [0, *TISSUE_GREYS]
    blank = _write_dicom(
        tmp_path / "p.dcm", np.full((4, 5), -2000, np.int16), PixelPaddingValue=-2000
    )
    with pytest.raises(NotABadFile, match=r"pixels are all padding \(PixelPaddingValue\)"):
        open_image(blank)


def test_dicom_of_one_value_without_a_window_is_refused_not_black(tmp_path):
    """A blank or padded slice (every pixel 500, or 3000) has no range of its own: by its
    min..max both came out all black, one image. Refused as a LUT no pixel reaches is,
    and not skipped by --skip-bad-images (nothing is wrong with the file); its own window,
    or one for the dataset, shows it."""
    for value in (500, 3000):
        path = _write_dicom(tmp_path / f"c{value}.dcm", np.full((40, 48), value, np.uint16))
        message = (
            f"{path}: greyscale DICOM without a window whose pixels all hold one value "
            f"({value}) has no range to show by (any such file would come out black, whatever "
            "its value); give --dicom-window CENTER,WIDTH to show every DICOM file of the "
            "dataset by one window, or leave the file out"
        )
        with pytest.raises(NotABadFile) as e:
            ImageReader(RESIZE, CROP, skip_bad_images=True).read(path)
        assert str(e.value) == message
        with pytest.raises(PredictError) as e:  # predict says the same, ported weights' way
            load_image(path, RESIZE, CROP)
        assert str(e.value) == message
    low, high = tmp_path / "c500.dcm", tmp_path / "c3000.dcm"
    windowed = [np.asarray(open_image(p, dicom_window=(2000, 4000))) for p in (low, high)]
    assert [int(w.max()) for w in windowed] == [32, 191]  # (v - 0) / 4000 * 255
    assert (windowed[0] == windowed[0].flat[0]).all()
    own = _write_dicom(tmp_path / "w.dcm", np.full((4, 5), 500, np.uint16), window=(500, 1001))
    assert (np.asarray(open_image(own)) == 128).all()  # its own window: a grey, as before


@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
def test_predict_does_not_ask_for_a_window_flag_its_checkpoint_refuses(tmp_path):
    """A run that declared no --dicom-window refuses the flag at predict, so a blank
    slice's refusal must not ask for it there: it says how the run showed DICOM files.
    Nor, where the checkpoint records a window, may a colour file's refusal say "leave
    the flag out": the window is the checkpoint's, and leaving it out changes nothing."""
    import jax

    from experiments import predict
    from medft_jax.checkpoints.model import save_model
    from medft_jax.models import variable_shapes

    tiny = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variable_shapes("resnet_tiny", 2))
    meta = {"arch": "resnet_tiny", "num_classes": 2, "resize_size": 32, "crop_size": 32}
    meta["source"] = "run folder-resnet_tiny-ft-lr0.001-s0-abc"
    best = save_model(tmp_path / "best", tiny["params"], tiny["batch_stats"], meta)
    blank = _write_dicom(tmp_path / "blank.dcm", np.full((40, 48), 500, np.uint16))
    with pytest.raises(PredictError) as e:
        predict.Predictor(best).predict_files([str(blank)])
    assert str(e.value) == (
        f"{blank}: greyscale DICOM without a window whose pixels all hold one value (500) has "
        "no range to show by (any such file would come out black, whatever its value); the "
        "checkpoint's run declared no --dicom-window, so it showed each DICOM file by its own "
        "window or range, refusing files like this one, and predict shows them as it did: "
        "leave this file out, or train a run with --dicom-window CENTER,WIDTH and predict "
        "with its checkpoint"
    )
    with pytest.raises(PredictError, match=r"^--dicom-window 40,80: .*leave the flag out$"):
        predict.Predictor(best, dicom_window="40,80")  # why it must not ask for the flag
    meta["dicom_window"] = [40.0, 80.0]
    windowed = save_model(tmp_path / "w", tiny["params"], tiny["batch_stats"], meta)
    rgb = Path(get_testdata_file("SC_rgb_rle_16bit.dcm"))
    with pytest.raises(PredictError) as e:
        predict.Predictor(windowed).predict_files([str(rgb)])
    assert str(e.value) == (
        f"{rgb}: colour DICOM (RGB), and the checkpoint records --dicom-window 40,80, the "
        "window its training DICOM files were shown by, which applies to greyscale DICOM "
        "alone: its training refused such files, and predict decodes as it did; save it as "
        "an 8-bit image (PNG), which the window does not apply to"
    )
    meta["bits_stored"] = 12  # a run's rule, not a flag the user gave: named as the run's
    twelve = save_model(tmp_path / "b", tiny["params"], tiny["batch_stats"], meta)
    colour = _png16_rgb(tmp_path / "c16.png", np.full((6, 7, 3), 40000))
    with pytest.raises(PredictError) as e:
        predict.Predictor(twelve).predict_files([str(colour)])
    assert str(e.value) == (
        f"{colour}: 16-bit colour, and the checkpoint records --bits-stored 12, the bits its "
        "training images were decoded with, which applies to 16-bit greyscale alone (colour "
        "is read by the 16-bit rule only): its training refused such files, and predict "
        "decodes as it did; save it as 8-bit colour, scaled as you want it"
    )


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")  # pydicom, writing them
@pytest.mark.parametrize(
    "window, shown", [(("nan", 80), "nan / width 80"), ((40, "inf"), "40 / width inf")]
)
def test_dicom_window_not_finite_is_refused(tmp_path, window, shown):
    """pydicom reads a DS of "nan" or "inf" as a float: a NaN width passed every width
    test and the whole image came out black (NaN cast to 0), an infinite one grey 128."""
    stored = np.array([[0, 1000, 2000, 4000]], np.uint16)
    path = _write_dicom(tmp_path / "a.dcm", stored, window=window)
    with pytest.raises(NotABadFile) as e:  # the pixels are sound: never skipped as bad
        open_image(path)
    assert str(e.value) == (
        f"{path}: bad DICOM window (window centre {shown} is not a finite number); give "
        "--dicom-window CENTER,WIDTH to read it"
    )
    reader = ImageReader(RESIZE, CROP, skip_bad_images=True)
    with pytest.raises(NotABadFile):
        reader.read(path)
    assert np.asarray(open_image(path, dicom_window=(2000, 4000)))[0].tolist() == [
        0,
        64,
        128,
        255,
    ]


def test_dicom_pixel_data_longer_than_its_header_says_is_refused(tmp_path):
    """pydicom keeps the first Rows x Columns values of longer pixel data and warns (held
    back): a wrong Columns sheared each row into the next, without a word. By whole frames
    it was refused already; by one pad byte it is sound."""
    rows = np.repeat(np.arange(10)[:, None] * 400, 12, axis=1).astype(np.uint16)  # 10x12
    path = _write_dicom(tmp_path / "a.dcm", rows, window=(2048, 4096), Columns=10)
    with pytest.raises(DataError) as e:
        open_image(path)
    assert str(e.value) == (
        f"{path}: DICOM pixel data is 240 bytes, more than the 10x10 image of 16-bit values "
        "its header describes (200): the header (Rows, Columns, BitsAllocated, "
        "SamplesPerPixel) does not match the data"
    )
    odd = np.arange(15, dtype=np.uint8).reshape(3, 5) * 17  # 15 bytes, padded to 16
    assert np.asarray(open_image(_write_dicom(tmp_path / "b.dcm", odd))).shape == (3, 5)


def test_dicom_voi_lut_first_value_is_signed_where_the_header_says_so(tmp_path):
    """A CT slice (unsigned stored, intercept -1024) holding no air, in Implicit VR, whose
    VOI LUT starts at -1000 HU (read by pydicom as 64536): refused as covering
    64536..66536, read as signed only where this image's values were negative. PS3.3
    C.11.2.1.1: SS where the rescale may give negative values."""
    from pydicom.uid import ImplicitVRLittleEndian

    stored = np.array([[1100, 1300, 1500, 1700, 2000, 1200]], np.uint16)  # 76..976 HU
    table = [int(x) for x in np.linspace(0, 65535, 2001)]
    path = _write_dicom(
        tmp_path / "a.dcm",
        stored,
        rescale=(1, -1024),
        voi_lut=([2001, 64536, 16], table),
        transfer_syntax=ImplicitVRLittleEndian,
    )
    expected = [table[hu + 1000] >> 8 for hu in (stored[0].astype(int) - 1024)]
    assert np.asarray(open_image(path))[0].tolist() == expected == [137, 163, 188, 214, 252, 150]


def test_dicom_errors_of_a_cut_or_headerless_file_say_so(tmp_path):
    """A file cut before its pixel data was "not an image"; one without the DICOM file
    header ended in pydicom's "Use force=True to force reading.", advice for its API."""
    whole = _write_dicom(tmp_path / "a.dcm", np.zeros((8, 8), np.uint16)).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole[: whole.index(b"\xe0\x7f\x10\x00")])  # before (7FE0,0010)
    with pytest.raises(DataError) as e:
        open_image(cut)
    assert str(e.value) == (
        f"{cut}: DICOM file has no pixel data, though its header describes an image (Rows): "
        "a file cut short?"
    )
    short = tmp_path / "short.dcm"
    short.write_bytes(whole[:100])
    with pytest.raises(DataError) as e:
        open_image(short)
    assert "force=True" not in str(e.value)
    assert str(e.value).startswith(f"{short}: not a DICOM file (")
    assert str(e.value).endswith(
        "): another kind of file, one cut short, or a raw dataset without the DICOM file "
        "header, which is not read"
    )
    assert not isinstance(e.value, NotABadFile)  # damaged: --skip-bad-images skips it


def test_dicom_dataset_without_the_file_header_is_refused_not_skipped_as_damaged(tmp_path):
    """A raw dataset (no preamble, DICM or file meta; older tools write them) was "not a
    DICOM file", skippable by --skip-bad-images: every file of that tool's dropped."""
    pydicom = pytest.importorskip("pydicom")
    ds = pydicom.Dataset()
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 8, 8, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.arange(64, dtype=np.uint16).tobytes()
    raw = tmp_path / "raw.dcm"
    ds.save_as(raw, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert raw.read_bytes()[128:132] != b"DICM"
    with pytest.raises(NotABadFile) as e:
        open_image(raw)
    assert str(e.value) == (
        f"{raw}: a DICOM dataset without the DICOM file header (its preamble and DICM "
        "marker), not skipped as a damaged file: such a file is not read (its encoding would "
        "be a guess); write it with the header (e.g. pydicom's save_as(..., "
        "enforce_file_format=True))"
    )


def test_a_negative_window_centre_is_read_as_the_flags_value(tmp_path, capsys):
    """argparse took ``-600,1500`` (a lung window) for a flag: "argument --dicom-window:
    expected one argument", in run and predict; only ``--dicom-window=-600,1500`` worked."""
    from experiments.predict import main as predict_main
    from medft_jax.errors import ArgumentParser

    missing = tmp_path / "none"
    argv = ["--checkpoint", str(missing), "--images", "x.dcm", "--dicom-window", "-600,1500"]
    assert predict_main(argv) == 2
    assert capsys.readouterr().err == f"error: {missing}: no such checkpoint folder\n"
    p = ArgumentParser(prog="x")
    p.add_argument("--dicom-window")
    p.add_argument("--lr", type=float)
    p.add_argument("--force", action="store_true")
    p.add_argument("rest", nargs="*")
    args = p.parse_args(["--dicom-window", "-1000,400", "--lr", "-1e-3", "--", "--lr", "-1"])
    assert (args.dicom_window, args.lr, args.rest) == ("-1000,400", -1e-3, ["--lr", "-1"])
    with pytest.raises(SystemExit):  # a switch takes no value: the token stays a flag
        p.parse_args(["--force", "-600,1500"])


def test_an_odd_palette_of_bytes_padded_to_even_is_read(tmp_path):
    """Three 8-bit entries packed in bytes take four (a value is padded to even length):
    read as 16-bit words, the palette was refused as "2 entries"."""
    index = np.array([[0, 1, 2, 1]], np.uint8)
    colours = {}
    for colour, values in (
        ("Red", b"\x00\xff\x00"),
        ("Green", b"\x00\x00\xff"),
        ("Blue", b"\xff\x00\x00"),
    ):
        colours[f"{colour}PaletteColorLookupTableDescriptor"] = [3, 0, 8]
        colours[f"{colour}PaletteColorLookupTableData"] = values
    path = _write_dicom(tmp_path / "a.dcm", index, photometric="PALETTE COLOR", **colours)
    assert np.asarray(open_image(path))[0].tolist() == [
        [0, 0, 255],
        [255, 0, 0],
        [0, 255, 0],
        [255, 0, 0],
    ]


def test_dicom_window_no_pixel_reaches_is_refused_as_a_lut_is(tmp_path):
    """A brain window (40/80) left on values of 1000..4000 showed the image as one white:
    trained on without a word, where a VOI LUT no pixel reaches is refused. A file of one
    value keeps its own window's grey; a window some pixel lies in is applied."""
    stored = np.array([[1000, 2500, 4000]], np.uint16)
    path = _write_dicom(tmp_path / "a.dcm", stored, window=(40, 80))
    with pytest.raises(NotABadFile) as e:
        ImageReader(RESIZE, CROP, skip_bad_images=True).read(path)
    assert str(e.value) == (
        f"{path}: DICOM window 40/80 (centre/width) shows the image's values (1000..4000) as "
        "one grey (255): no pixel lies within it; give --dicom-window CENTER,WIDTH to show "
        "every DICOM file of the dataset by one window, or leave the file out"
    )
    # LINEAR, c 1000, w 81: ((1000 - 999.5) / 80 + 0.5) * 255 = 129.1; the rest white.
    reached = _write_dicom(tmp_path / "b.dcm", stored, window=(1000, 81))
    assert np.asarray(open_image(reached))[0].tolist() == [129, 255, 255]
    assert np.asarray(open_image(path, dicom_window=(2500, 3000)))[0].tolist() == [0, 128, 255]


def test_dicom_voi_lut_sequence_by_its_bit_depth(tmp_path):
    stored = np.array([[0, 1, 2, 3, 9]], np.uint16)
    path = _write_dicom(tmp_path / "a.dcm", stored, voi_lut=([4, 0, 12], [0, 1000, 2000, 4095]))
    assert np.asarray(open_image(path))[0].tolist() == [0, 62, 125, 255, 255]  # >> 4
    # A window beside it that is no number: the LUT is what shows the file, the window
    # unread (it was refused).
    path = _write_dicom(
        tmp_path / "b.dcm", stored, voi_lut=([4, 0, 12], [0, 1000, 2000, 4095]),
        window=(9999, 201),
    )  # fmt: skip
    path.write_bytes(path.read_bytes().replace(b"9999", b"abcd"))
    assert np.asarray(open_image(path))[0].tolist() == [0, 62, 125, 255, 255]


def _voi_item(descriptor: list[int], data: np.ndarray):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor = descriptor
    item.add_new(0x00283006, "OW", data.astype("<u2").tobytes())
    return item


def test_dicom_8bit_lut_of_4096_entries_is_indexed_past_255(tmp_path):
    """An 8-bit VOI table of 4096 entries for 12-bit data: entry 1000, not entry 1000 % 256."""
    table = np.rint(np.arange(4096) / 4095 * 255).astype(np.uint16)
    stored = np.array([[0, 1000, 2000, 4095]], np.uint16)
    path = _write_dicom(tmp_path / "a.dcm", stored, VOILUTSequence=[_voi_item([4096, 0, 8], table)])
    assert np.asarray(open_image(path))[0].tolist() == [0, 62, 125, 255]


def test_dicom_voi_lut_declared_16_bits_with_12_bit_entries_scales_by_its_data(tmp_path):
    """Some CRs declare 16 bits for a 12-bit table: read by the declared depth the image
    would be 16 times too dark (0..15); viewers scale by the table's data."""
    stored = np.array([[0, 1, 2, 3]], np.uint16)
    table = np.array([0, 1000, 2000, 4095], np.uint16)
    path = _write_dicom(tmp_path / "a.dcm", stored, VOILUTSequence=[_voi_item([4, 0, 16], table)])
    assert np.asarray(open_image(path))[0].tolist() == [0, 62, 125, 255]


@pytest.mark.parametrize("top", [4096, 8191, 16383])
def test_dicom_voi_lut_declared_16_bits_with_13_or_14_bit_entries_is_refused(tmp_path, top):
    """Entries up to 4095 scale by the data; one of 4096 kept 16 greys of 256 (the image read
    as nearly black, without a word), 14-bit ones 64: refused, with --dicom-window named."""
    stored = np.array([[0, 1, 2, 3]], np.uint16)
    table = np.array([0, 1000, 2000, top], np.uint16)
    path = _write_dicom(tmp_path / "a.dcm", stored, VOILUTSequence=[_voi_item([4, 0, 16], table)])
    with pytest.raises(NotABadFile) as err:
        open_image(path)
    assert str(err.value) == (
        f"{path}: DICOM VOI LUT declared 16 bits per entry whose entries reach only {top} (fit "
        "14 bits) would keep at most 64 greys; expected entries over the 16-bit range, or give "
        "--dicom-window"
    )
    full = np.array([0, 1000, 2000, 65535], np.uint16)  # a 16-bit table: as declared
    path = _write_dicom(tmp_path / "b.dcm", stored, VOILUTSequence=[_voi_item([4, 0, 16], full)])
    assert np.asarray(open_image(path))[0].tolist() == [0, 3, 7, 255]


def test_dicom_16_bit_palette_of_8_bit_values_is_refused_not_black(tmp_path):
    """PS3.3 C.7.6.3.1.6 scales 16-bit palette entries over 0..65535; a writer that put
    0..255 in them gave an image of one colour, black, without a word."""
    index = np.array([[0, 1, 2, 255]], np.uint8)
    extra = {}
    for colour in ("Red", "Green", "Blue"):
        extra[f"{colour}PaletteColorLookupTableDescriptor"] = [256, 0, 16]
        table = np.arange(256, dtype=np.uint16)
        extra[f"{colour}PaletteColorLookupTableData"] = table.astype("<u2").tobytes()
    path = _write_dicom(tmp_path / "a.dcm", index, photometric="PALETTE COLOR", **extra)
    with pytest.raises(NotABadFile, match=r"a\.dcm: DICOM Red palette declared 16 bits per"):
        open_image(path)


def test_dicom_frames_beyond_number_of_frames_are_refused_as_such(tmp_path):
    """Pixel data of 3 frames under no NumberOfFrames: pydicom decodes them all, and the
    refusal was Pillow's "Cannot handle this data type: (1, 1, 20)"."""
    frames = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    path = _write_dicom(tmp_path / "a.dcm", frames[0], pixel_data=None)
    import pydicom

    ds = pydicom.dcmread(path)
    ds.PixelData = frames.tobytes()
    ds.NumberOfFrames = 3
    ds.save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(path)
    del ds.NumberOfFrames  # the header says one frame; the data holds three
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DataError) as err:
        open_image(path)
    assert "decodes to shape" in str(
        err.value
    ) and "several frames under a NumberOfFrames of none" in str(err.value)


def test_dicom_modality_lut_of_12_bit_entries(tmp_path):
    """9-15 bits per entry are allowed in a Modality LUT; its output has no window here,
    so it is shown by its own range."""
    stored = np.array([[0, 1, 2, 3]], np.uint16)
    table = 4095 - np.array([0, 1000, 2000, 4095], np.uint16)
    path = _write_dicom(
        tmp_path / "a.dcm", stored, ModalityLUTSequence=[_voi_item([4, 0, 12], table)]
    )
    expected = np.rint((table - table.min()) / (table.max() - table.min()) * 255).astype(int)
    assert np.asarray(open_image(path))[0].tolist() == expected.tolist() == [255, 193, 130, 0]


def test_dicom_empty_window_is_no_window(tmp_path):
    """WindowCenter/WindowWidth present but empty (type 3 elements sent blank)."""
    stored = np.array([[10, 60, 110, 1030]], np.uint16)
    windowed = _write_dicom(tmp_path / "a.dcm", stored, WindowCenter=None, WindowWidth=None)
    plain = _write_dicom(tmp_path / "b.dcm", stored)
    assert np.array_equal(np.asarray(open_image(windowed)), np.asarray(open_image(plain)))


def test_dicom_enhanced_single_frame_reads_its_functional_groups(tmp_path):
    """Rescale and window stored in the shared functional groups (an enhanced CT of one
    frame): HU -1024, 0, 40, 1024 through the 40/400 window, not the values' own range."""
    from pydicom.dataset import Dataset

    shared, rescale, window = Dataset(), Dataset(), Dataset()
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = 1, -1024, "HU"
    window.WindowCenter, window.WindowWidth = 40, 400
    shared.PixelValueTransformationSequence = [rescale]
    shared.FrameVOILUTSequence = [window]
    stored = np.array([[0, 1024, 1064, 2048]], np.uint16)
    path = _write_dicom(
        tmp_path / "a.dcm", stored, NumberOfFrames=1, SharedFunctionalGroupsSequence=[shared]
    )
    # LINEAR: c' = 39.5, w' = 399: y = ((x - 39.5) / 399 + 0.5) * 255, clipped, rounded.
    assert np.asarray(open_image(path))[0].tolist() == [0, 102, 128, 255]


def test_dicom_palette_of_8_bit_entries_in_16_bit_words(tmp_path):
    """PS3.3 C.7.6.3.1.5: 8-bit palette entries may be stored one per 16-bit word; read
    as 16-bit entries they would all be shifted to black."""
    index = np.array([[0, 1, 2, 255]], np.uint8)
    tables = {c: np.zeros(256, np.uint16) for c in ("Red", "Green", "Blue")}
    tables["Red"][1], tables["Green"][2] = 255, 255
    for table in tables.values():
        table[255] = 128
    extra = {}
    for colour, table in tables.items():
        extra[f"{colour}PaletteColorLookupTableDescriptor"] = [256, 0, 8]
        extra[f"{colour}PaletteColorLookupTableData"] = table.astype("<u2").tobytes()
    path = _write_dicom(tmp_path / "a.dcm", index, photometric="PALETTE COLOR", **extra)
    rgb = np.asarray(open_image(path))[0].tolist()
    assert rgb == [[0, 0, 0], [255, 0, 0], [0, 255, 0], [128, 128, 128]]
    # 16-bit entries, first mapped value 1 (index 0 clamps to the first entry): as pydicom.
    from pydicom.pixels import apply_color_lut

    rng = np.random.default_rng(3)
    for colour in tables:
        extra[f"{colour}PaletteColorLookupTableDescriptor"] = [255, 1, 16]
        extra[f"{colour}PaletteColorLookupTableData"] = (
            rng.integers(0, 65536, 255).astype("<u2").tobytes()
        )
    path = _write_dicom(tmp_path / "b.dcm", index, photometric="PALETTE COLOR", **extra)
    expected = apply_color_lut(pydicom.dcmread(path).pixel_array, pydicom.dcmread(path)) >> 8
    assert np.array_equal(np.asarray(open_image(path)), expected.astype(np.uint8))


def test_dicom_segmented_palettes_of_16_bit_entries_and_8_bit_ones_refused(tmp_path):
    """PS3.3 C.7.9.2: a discrete segment of 256 16-bit entries; values past the table take
    its last entry. 8-bit segmented tables pydicom indexes with 8-bit numbers: refused."""
    stored = np.array([[0, 5, 255, 1000]], np.uint16)
    ramp = np.arange(256, dtype=np.uint16) * 257  # 0..65535
    tables = {"Red": ramp, "Green": ramp[::-1].copy(), "Blue": np.full(256, 32896, np.uint16)}
    extra = {}
    for colour, table in tables.items():
        extra[f"{colour}PaletteColorLookupTableDescriptor"] = [256, 0, 16]
        segment = np.concatenate([[0, 256], table]).astype("<u2")
        extra[f"Segmented{colour}PaletteColorLookupTableData"] = segment.tobytes()
    path = _write_dicom(tmp_path / "a.dcm", stored, photometric="PALETTE COLOR", **extra)
    rgb = np.asarray(open_image(path))[0].tolist()
    assert rgb == [[0, 255, 128], [5, 250, 128], [255, 0, 128], [255, 0, 128]]
    for colour in tables:
        extra[f"{colour}PaletteColorLookupTableDescriptor"] = [256, 0, 8]
    path = _write_dicom(tmp_path / "b.dcm", stored, photometric="PALETTE COLOR", **extra)
    with pytest.raises(DataError, match=r"b\.dcm: .*a segmented palette of 8-bit entries"):
        open_image(path)


def test_dicom_12_bit_jpeg_without_a_plugin_for_it_is_not_skipped(tmp_path):
    """Pillow decodes 8-bit JPEG but refuses 12-bit JPEG Extended: every such file would be
    skipped as bad and the dataset silently shrink, so it is a missing decoder."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGExtended12Bit

    if "pylibjpeg" in get_decoder(JPEGExtended12Bit).available_plugins:
        pytest.skip("a 12-bit JPEG plugin is installed here")
    stored = np.array([[0, 1000], [2000, 4095]], np.uint16)
    path = _write_dicom(
        tmp_path / "a.dcm",
        stored,
        transfer_syntax=JPEGExtended12Bit,
        pixel_data=b"\xff\xd8" + bytes(10),
    )
    with pytest.raises(DecoderMissing, match=r"a\.dcm: DICOM pixel data in JPEG Extended"):
        ImageReader(RESIZE, CROP, skip_bad_images=True).read(path)


def test_dicom_with_preamble_but_no_suffix_and_a_fake_dcm(tmp_path):
    path = _write_dicom(tmp_path / "a.dcm", STORED, rescale=(2, -100), window=(100, 201))
    bare = tmp_path / "IM0001"
    bare.write_bytes(path.read_bytes())
    assert np.asarray(open_image(bare))[0].tolist() == WINDOWED
    fake = tmp_path / "photo.dcm"
    Image.new("L", (4, 4)).save(fake, format="PNG")
    with pytest.raises(DataError, match=r"photo\.dcm: not a DICOM file"):
        open_image(fake)


def test_wheel_mr_small_matches_pydicom_windowing():
    from pydicom.pixels import apply_voi_lut

    path = Path(get_testdata_file("MR_small.dcm"))
    ds = pydicom.dcmread(path)
    assert (ds.WindowCenter, ds.WindowWidth) == (600, 1600) and ds.PixelRepresentation == 1
    y = apply_voi_lut(ds.pixel_array, ds)  # pydicom's output spans the signed 16-bit range
    ref = np.rint((y + 32768) / 65535 * 255)
    ours = np.asarray(open_image(path)).astype(float)
    assert np.abs(ours - ref).max() <= 1 and (ours == ref).mean() > 0.99
    assert np.array_equal(load_image(path, RESIZE, CROP), _read(path))


def test_wheel_ct_small_rescaled_without_window():
    from pydicom.pixels import apply_modality_lut

    path = Path(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(path)
    assert "WindowCenter" not in ds and float(ds.RescaleIntercept) == -1024
    hu = apply_modality_lut(ds.pixel_array, ds)
    ref = np.rint((hu - hu.min()) / (hu.max() - hu.min()) * 255)
    assert np.array_equal(np.asarray(open_image(path)), ref.astype(np.uint8))


def test_wheel_monochrome1_is_inverted(tmp_path):
    path = Path(get_testdata_file("6154"))  # a CR with MONOCHROME1, rescale and window
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.save_as(tmp_path / "m2.dcm")
    m1, m2 = np.asarray(open_image(path)), np.asarray(open_image(tmp_path / "m2.dcm"))
    assert np.array_equal(m1.astype(int), 255 - m2.astype(int)) and m2.std() > 0


def test_wheel_16bit_rgb_by_its_bits():
    path = Path(get_testdata_file("SC_rgb_rle_16bit.dcm"))
    ds = pydicom.dcmread(path)
    assert ds.BitsStored == 16
    assert np.array_equal(np.asarray(open_image(path)), (ds.pixel_array >> 8).astype(np.uint8))


def test_dicom_multi_frame_refused():
    path = get_testdata_file("SC_rgb_rle_2frame.dcm")
    with pytest.raises(DataError, match=r"2frame\.dcm: multi-frame DICOM \(2 frames\)"):
        open_image(Path(path))


def _decodes_or_data_error(path: Path) -> bool:
    """True if ``path`` decodes; False if refused in one line naming it; anything else fails."""
    try:
        open_image(path)
    except DataError as err:
        assert str(path) in str(err) and "\n" not in str(err), str(err)
        return False
    return True


def test_damaged_dicom_is_a_data_error_never_a_traceback(tmp_path, caplog):
    """pydicom parses lazily and fails in many exception types (struct.error at byte 153,
    BytesLengthException at 141, NotImplementedError for an unknown VR): every truncation
    and a seeded sample of bit flips must decode or be the one-line DataError, and pydicom's
    own warnings and log records (screenfuls of a damaged file's bytes) stay held back."""
    import logging
    import warnings

    rng = np.random.default_rng(12)
    valid = _write_dicom(tmp_path / "ok.dcm", rng.integers(0, 4096, (24, 24)).astype(np.uint16))
    whole = valid.read_bytes()
    pixels_at = len(whole) - 24 * 24 * 2
    vr = whole.index(b"US", whole.index(b"(\x00\x11\x00"))  # Columns' VR
    cases = [whole[:end] for end in range(pixels_at + 8)]  # every offset through the header
    cases += [whole[:end] for end in range(pixels_at + 8, len(whole), 97)]
    cases.append(whole[:vr] + b"U\x13" + whole[vr + 2 :])
    for index, bit in zip(rng.integers(0, len(whole), 250), rng.integers(0, 8, 250), strict=True):
        flipped = bytearray(whole)
        flipped[index] ^= 1 << int(bit)
        cases.append(bytes(flipped))
    path = tmp_path / "damaged.dcm"
    decoded = []
    with warnings.catch_warnings(record=True) as warned, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        for data in cases:
            path.write_bytes(data)
            decoded.append(_decodes_or_data_error(path))
        reader = ImageReader(RESIZE, CROP, skip_bad_images=True)
        for end in (141, 153):
            path.write_bytes(whole[:end])
            assert reader.read(path) is None
    assert [str(w.message)[:80] for w in warned] == []
    assert [r.getMessage()[:80] for r in caplog.records if r.name.startswith("pydicom")] == []
    assert reader.skipped == [str(path)] * 2
    assert not any(decoded[: pixels_at + 8]) and decoded[-251] is False  # truncated, bad VR
    assert any(decoded[-250:])  # most flips hit values that still make an image


@pytest.mark.parametrize(
    ("descriptor", "data"),
    [([4, 0, 28], [0, 1, 2, 3]), ([4, 0, 8], [0, 1000, 2000, 4095])],
    ids=["28-bit-entries", "entries-over-8-bits"],
)
def test_dicom_lut_contradicting_itself_is_a_data_error(tmp_path, descriptor, data):
    """pydicom's apply_voi raises NotImplementedError or OverflowError on such a table."""
    path = _write_dicom(tmp_path / "a.dcm", STORED, voi_lut=(descriptor, data))
    with pytest.raises(DataError, match=r"a\.dcm: cannot apply the DICOM pixel transforms"):
        open_image(path)


def test_dicom_compressed_without_plugin_names_file_and_plugins(tmp_path):
    from pydicom.pixels import get_decoder

    path = Path(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    uid = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if get_decoder(uid).available_plugins:
        pytest.skip("a JPEG-LS plugin is installed here")
    reader = ImageReader(RESIZE, CROP, skip_bad_images=True)
    with pytest.raises(DecoderMissing) as err:  # not skipped: every such file would be
        reader.read(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: DICOM pixel data in JPEG-LS") and "\n" not in msg
    assert "pylibjpeg" in msg and "gdcm" in msg
    with pytest.raises(PredictError, match="decoder plugin"):
        load_image(path, RESIZE, CROP)


def test_dicom_without_pydicom_names_the_extra(tmp_path, monkeypatch):
    path = _write_dicom(tmp_path / "a.dcm", STORED)
    monkeypatch.setitem(sys.modules, "pydicom", None)
    monkeypatch.setitem(sys.modules, "pydicom.pixels", None)
    with pytest.raises(DecoderMissing, match=r"a\.dcm: reading DICOM needs pydicom") as err:
        ImageReader(RESIZE, CROP, skip_bad_images=True).read(path)
    assert "pip install 'medft-jax[dicom]'" in str(err.value)


def _dicom_classes(root: Path, seed: int, patients=lambda name, i: None, **kw) -> None:
    """Classes a and b of ten DICOM files each, b 400 brighter; ``patients(class, i)``
    names a file's PatientID (None: none)."""
    rng = np.random.default_rng(seed)
    for name, offset in (("a", 0), ("b", 400)):
        (root / name).mkdir(parents=True)
        for i in range(10):
            pixels = (rng.integers(0, 300, (20, 24)) + offset).astype(np.uint16)
            patient = patients(name, i)
            extra = {} if patient is None else {"PatientID": patient}
            _write_dicom(root / name / f"{i}.dcm", pixels, **kw, **extra)


def test_folder_source_reads_dicom(tmp_path):
    assert ".dcm" in IMAGE_SUFFIXES
    root = tmp_path / "imgs"
    _dicom_classes(root, 6, rescale=(1, -100), window=(350, 800))
    ds = load("folder", manual_dir=root, data_dir=tmp_path / "out", progress=False, **_sizes())
    for split in ds.splits.values():
        means = split.images.reshape(len(split), -1).mean(axis=1)
        assert means[split.labels == 1].min() > means[split.labels == 0].max() + 80
    first = ds.splits["train"]
    assert np.array_equal(first.images[0], ImageReader(36, 32).read(root / first.ids[0]))


def test_dicom_patients_with_files_in_two_splits_are_noted_at_every_load(tmp_path, capsys):
    """The slices of one patient's scans, loose in their class folders, were carved file by
    file into train, val and test without a word, though every file names its patient."""
    root = tmp_path / "imgs"
    _dicom_classes(root, 7, patients=lambda name, i: f"P{i % 2}" if name == "a" else None)
    for _ in range(2):  # when the cache is written, and when it is read
        ds = load("folder", manual_dir=root, data_dir=tmp_path / "out", progress=False, **_sizes())
        notes = [x for x in capsys.readouterr().err.splitlines() if "PatientID" in x]
        split_of = {i: s for s, arrays in ds.splits.items() for i in arrays.ids}
        crossing = {
            p for p in ("P0", "P1")
            if len({split_of[f"a/{i}.dcm"] for i in range(int(p[1]), 10, 2)}) > 1
        }  # fmt: skip
        assert crossing and len(notes) == 1, notes
        assert notes[0].startswith(
            f"note: {root}: {len(crossing)} DICOM PatientID(s) have files in more than one "
            f"split (e.g. '{min(crossing)}': a/"
        ) and notes[0].endswith("pass --patient-folders, or a CSV patient column")
    # In patient folders (--patient-folders) each patient is in one split: nothing to say
    # (five of class a: two could not give train, val and test each one).
    for i in range(10):
        (root / "a" / f"P{i % 5}").mkdir(exist_ok=True)
        (root / "a" / f"{i}.dcm").rename(root / "a" / f"P{i % 5}" / f"{i}.dcm")
        (root / "b" / f"Q{i}").mkdir()
        (root / "b" / f"{i}.dcm").rename(root / "b" / f"Q{i}" / f"{i}.dcm")
    load(
        "folder", manual_dir=root, data_dir=tmp_path / "out", progress=False,
        patient_folders=True, **_sizes(),
    )  # fmt: skip
    assert "PatientID" not in capsys.readouterr().err


def test_a_dicom_window_that_blanks_every_file_is_refused_and_some_noted(tmp_path, capsys):
    """A CT lung window pasted for radiographs (values 0..700, window -1000,500 reaches up
    to -750) made every DICOM file one white image: trained on, exit 0, predict gave every
    scan the same probabilities, and the only notes blamed duplicates and mislabelling."""
    root = tmp_path / "imgs"
    _dicom_classes(root, 3)
    kw = {"manual_dir": root, "data_dir": tmp_path / "out", "progress": False, **_sizes()}
    for _ in range(2):  # when the cache is written, and when it is read again
        with pytest.raises(DataError) as err:
            load("folder", dicom_window="-1000,500", **kw)
        assert str(err.value).startswith(
            f"--dicom-window -1000,500 shows every one of the 20 DICOM file(s) under {root} "
            f"whose values vary as one grey (e.g. {root}/a/"
        ) and str(err.value).endswith("leave it out to show each file by its own window)")
    # A window over the values, with one file of class a below it: one blank image, said.
    below = np.full((20, 24), 7, np.uint16) + 193 * np.eye(20, 24, dtype=np.uint16)  # 7..200
    _write_dicom(root / "a" / "0.dcm", below)
    load("folder", dicom_window="450,500", **kw)  # 200..700: class b, and a's upper third
    notes = [x for x in capsys.readouterr().err.splitlines() if "one grey" in x]
    assert notes == [
        f"note: {root}: --dicom-window 450,500 shows 1 of the 20 DICOM files whose values vary "
        f"as one grey (e.g. {root / 'a' / '0.dcm'}): blank images trained on; check the window "
        "if they are not blank"
    ]
    load("folder", dicom_window="350,800", **kw)  # every file has a pixel within it
    assert "one grey" not in capsys.readouterr().err


def test_a_patient_holding_most_files_is_noted_and_anonymised_headers_are_not(monkeypatch):
    """A PatientID held by most files was left out as anonymised: one real patient's 30
    slices of one finding, split into train and test, then went unnoted."""
    from medft_jax.data import local
    from medft_jax.data.examples import Example

    def splits_of(rows):  # (split, id, label, PatientID)
        out = {}
        for split, name, label, _ in rows:
            out.setdefault(split, []).append(Example(Path(f"/d/{name}.dcm"), label, name))
        return out

    def noted(rows):
        ids = {f"/d/{name}.dcm": patient for *_, name, _, patient in rows}
        monkeypatch.setattr(local.dicom, "patient_id", lambda path: ids[str(path)])
        return local._dicom_patients_across_splits(splits_of(rows))

    one_patient = [("train" if i < 20 else "test", f"x{i}", 0, "PX") for i in range(30)]
    one_patient += [("train", f"y{i}", 1, f"PY{i}") for i in range(20)]
    assert noted(one_patient) == [1, "'PX': x20, x0"]
    anonymised = [(s, n, i % 2, "ANON") for i, (s, n, *_) in enumerate(one_patient)]
    assert noted(anonymised) is None  # across both classes: no patient's
    multi = [(s, n, (1.0, 0.0), p) for s, n, _, p in one_patient]  # multilabel labels
    assert noted(multi) == [1, "'PX': x20, x0"]


def test_dicom_patients_across_splits_are_noted_though_a_csv_grouped_the_files(tmp_path, capsys):
    """A group column of one id per image (accession numbers) grouped nothing, and silenced
    the note that the files' PatientIDs lie in train and test."""
    root = tmp_path / "imgs"
    _dicom_classes(root, 7, patients=lambda name, i: f"P{i % 2}")
    rows = [f"{c}/{i}.dcm,{c},A{c}{i}" for c in "ab" for i in range(10)]
    (root / "labels.csv").write_text("path,label,accession\n" + "\n".join(rows) + "\n")
    load(
        "csv", manual_dir=root, data_dir=tmp_path / "out", progress=False,
        csv_file="labels.csv", group_column="accession", **_sizes(),
    )  # fmt: skip
    notes = [x for x in capsys.readouterr().err.splitlines() if "PatientID" in x]
    assert len(notes) == 1 and "although the layout grouped the files" in notes[0], notes
    # Study groups (files of one PatientID each): a patient's studies in train and test
    # leak as split files do. Five patients of two studies of two files each per class.
    for c in "ab":
        shutil.rmtree(root / c)
    _dicom_classes(root, 7, patients=lambda name, i: f"P{name}{i // 4}")
    rows = [f"{c}/{i}.dcm,{c},S{c}{i // 2}" for c in "ab" for i in range(10)]
    (root / "studies.csv").write_text("path,label,study\n" + "\n".join(rows) + "\n")
    ds = load(
        "csv", manual_dir=root, data_dir=tmp_path / "out", progress=False,
        csv_file="studies.csv", group_column="study", **_sizes(),
    )  # fmt: skip
    split_of = {i: s for s, arrays in ds.splits.items() for i in arrays.ids}
    crossing = {
        f"P{c}{i // 4}" for c in "ab" for i in range(10)
        if split_of[f"{c}/{i}.dcm"] != split_of[f"{c}/{i // 4 * 4}.dcm"]
    }  # fmt: skip
    notes = [x for x in capsys.readouterr().err.splitlines() if "PatientID" in x]
    assert crossing and len(notes) == 1, (crossing, notes)
    assert (
        f"{len(crossing)} DICOM PatientID(s) have files in more than one split although"
        in (notes[0])
        and f"(e.g. '{min(crossing)}': " in notes[0]
    )
    # Groups of several PatientIDs each are the user's grouping, coarser than the headers'
    # patients (or headers anonymised to a few values): not contradicted; nor is one
    # PatientID that most files share.
    for c in "ab":
        shutil.rmtree(root / c)
    _dicom_classes(root, 7, patients=lambda name, i: f"P{i % 2}")
    rows = [f"{c}/{i}.dcm,{c},G{c}{i // 2}" for c in "ab" for i in range(10)]
    (root / "pairs.csv").write_text("path,label,group\n" + "\n".join(rows) + "\n")
    (root / "same.csv").write_text("path,label,accession\n" + "\n".join(
        f"{c}/{i}.dcm,{c},A{c}{i}" for c in "ab" for i in range(10)) + "\n")  # fmt: skip
    for name, column in (("pairs.csv", "group"), ("same.csv", "accession")):
        if name == "same.csv":  # every header but two anonymised to one value
            for c in "ab":
                shutil.rmtree(root / c)
            _dicom_classes(root, 7, patients=lambda name, i: "ANONYMIZED" if i else f"P{name}")
        load(
            "csv", manual_dir=root, data_dir=tmp_path / "out", progress=False,
            csv_file=name, group_column=column, **_sizes(),
        )  # fmt: skip
        assert "PatientID" not in capsys.readouterr().err


# CT stored v -> HU x = v - 1024 -> --dicom-window 40,80 (LINEAR_EXACT: 0 HU black, 80 HU
# white), y = ((x - 40) / 80 + 0.5) * 255, clipped, rounded; worked by hand:
CT_STORED = np.array([[0, 1034, 1064, 1084, 1104, 2000]], np.uint16)  # HU -1024, 10, 40, 60, 80
BRAIN_WINDOWED = [0, 32, 128, 191, 255, 255]  # 31.875, 127.5, 191.25


def test_dicom_fixed_window_replaces_each_files_own(tmp_path):
    """Its own window, its VOI LUT or its min..max: each file shows one HU as another grey;
    with --dicom-window every file shows it as the same one, the hand-computed one."""
    ct = {"rescale": (1, -1024)}
    files = [
        _write_dicom(tmp_path / "bone.dcm", CT_STORED, window=(400, 1800), **ct),
        _write_dicom(tmp_path / "lung.dcm", CT_STORED, window=(-600, 1500), **ct),
        _write_dicom(tmp_path / "bare.dcm", CT_STORED, **ct),
        _write_dicom(tmp_path / "lut.dcm", CT_STORED, voi_lut=([4096, 0, 16], [0] * 4096), **ct),
    ]
    own = [np.asarray(open_image(f))[0].tolist() for f in files]
    assert len({tuple(o) for o in own}) == len(files)  # four greys for one HU
    for f in files:
        assert np.asarray(open_image(f, dicom_window=(40, 80)))[0].tolist() == BRAIN_WINDOWED
        assert np.asarray(open_image(f, dicom_window="40,80"))[0].tolist() == BRAIN_WINDOWED
    inverted = _write_dicom(tmp_path / "m1.dcm", CT_STORED, photometric="MONOCHROME1", **ct)
    windowed = np.asarray(open_image(inverted, dicom_window=(40, 80)))[0].tolist()
    assert windowed == [255 - v for v in BRAIN_WINDOWED]  # a window, then the presentation
    png = tmp_path / "a.png"  # not DICOM: decoded by its own rules, the window is not its
    Image.fromarray(np.full((4, 5), 77, np.uint8)).save(png)
    assert np.array_equal(open_image(png, dicom_window=(40, 80)), open_image(png))
    assert np.array_equal(
        load_image(files[0], RESIZE, CROP, dicom_window=(40, 80)),
        load_image(files[2], RESIZE, CROP, dicom_window=(40, 80)),
    )


@pytest.mark.parametrize("bad", ["40", "40,0", "40,-80", "a,b", "40,80,1", "nan,80", [40, True]])
def test_dicom_window_is_two_numbers_of_positive_width(tmp_path, bad):
    path = _write_dicom(tmp_path / "a.dcm", CT_STORED, rescale=(1, -1024))
    with pytest.raises(DataError) as e:
        open_image(path, dicom_window=bad)
    assert str(e.value) == (
        "--dicom-window must be CENTER,WIDTH: two numbers, the width above 0 (a CT brain "
        f"window: 40,80), got {bad!r}"
    )


def test_dicom_window_on_a_colour_file_is_refused_even_when_skipping_bad_images():
    """Not a bad file but a flag that does not fit it: skipping would drop every colour file."""
    path = Path(get_testdata_file("SC_rgb_rle_16bit.dcm"))
    message = (
        f"{path}: --dicom-window applies to greyscale DICOM (MONOCHROME1/MONOCHROME2), and "
        "this file is RGB; leave the flag out or keep colour files elsewhere"
    )
    with pytest.raises(DataError) as e:
        open_image(path, dicom_window=(40, 80))
    assert str(e.value) == message
    decode = lambda p: open_image(p, dicom_window=(40, 80))  # noqa: E731
    reader = ImageReader(RESIZE, CROP, skip_bad_images=True, decode=decode)
    with pytest.raises(DataError) as e:
        reader.read(path)
    assert str(e.value) == message and not reader.skipped
    assert reader.read(path.parent / "CT_small.dcm") is not None


def test_folder_source_with_one_dicom_window(tmp_path):
    """Scans whose files carry different windows: one window makes one HU one grey in every
    cached image; the window is in the cache's name and metadata; without DICOM, refused."""
    root = tmp_path / "imgs"
    rng = np.random.default_rng(7)
    for name, hu in (("a", 20), ("b", 60)):
        (root / name).mkdir(parents=True)
        for i in range(10):
            pixels = (rng.integers(-5, 6, (20, 24)) + hu + 1024).astype(np.uint16)
            window = [(40, 80), (400, 1800), None][i % 3]
            _write_dicom(root / name / f"{i}.dcm", pixels, rescale=(1, -1024), window=window)
    out = tmp_path / "out"
    ds = load(
        "folder", manual_dir=root, data_dir=out, progress=False, dicom_window="40,80", **_sizes()
    )
    assert ds.metadata["dicom_window"] == [40.0, 80.0]
    for split in ds.splits.values():
        means = split.images.reshape(len(split), -1).mean(axis=1)
        a, b = means[split.labels == 0], means[split.labels == 1]
        # 20 HU -> 63.75 and 60 HU -> 191.25 in every file, whatever window it carries
        assert np.abs(a - 63.75).max() < 20 and np.abs(b - 191.25).max() < 20
    first = ds.splits["train"]
    decode = lambda p: open_image(p, dicom_window=(40, 80))  # noqa: E731
    assert np.array_equal(
        first.images[0], ImageReader(RESIZE, CROP, decode=decode).read(root / first.ids[0])
    )
    same = load(
        "folder", manual_dir=root, data_dir=out, progress=False, dicom_window=[40, 80], **_sizes()
    )
    assert same.metadata["fingerprint"] == ds.metadata["fingerprint"]  # one spelling, one cache
    own = load("folder", manual_dir=root, data_dir=out, progress=False, **_sizes())
    assert own.metadata["fingerprint"] != ds.metadata["fingerprint"]
    assert own.metadata.get("dicom_window") is None
    caches = sorted(out.rglob("*"))
    pngs = tmp_path / "pngs"
    for name in ("a", "b"):  # ten a class: each split gets both (a listing check)
        (pngs / name).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(np.full((20, 24), i, np.uint8)).save(pngs / name / f"{i}.png")
    with pytest.raises(DataError) as e:
        load(
            "folder",
            manual_dir=pngs,
            data_dir=out,
            progress=False,
            dicom_window="40,80",
            **_sizes(),
        )
    assert str(e.value) == (
        f"--dicom-window: none of the 20 images under {pngs} is a DICOM file, and the window "
        "applies to DICOM only; leave the flag out"
    )
    assert sorted(out.rglob("*")) == caches  # refused before any cache was begun


@pytest.mark.slow  # one training run
def test_a_run_with_a_dicom_window_carries_it_to_predict(tmp_path, monkeypatch, capsys):
    """``experiments.run --dicom-window``: the best parameters carry the window, and predict
    decodes a DICOM with it (one HU one grey, as in training), not by the file's own."""
    from experiments import predict
    from experiments import run as run_cli
    from medft_jax.checkpoints.model import load_metadata

    root = tmp_path / "imgs"
    for name, hu in (("a", 20), ("b", 60)):
        (root / name).mkdir(parents=True)
        for i in range(12):
            pixels = np.full((40, 44), hu + 1024 + i % 3, np.uint16)
            _write_dicom(root / name / f"{i}.dcm", pixels, rescale=(1, -1024), window=(400, 1800))
    out = tmp_path / "runs"
    argv = ["--strategy", "lp", "--arch", "resnet_tiny", "--weights", "none", "--epochs", "1"]
    argv += ["--batch-size", "8", "--image-size", "32", "--no-progress", "--dataset", "folder"]
    argv += ["--manual-dir", str(root), "--data-dir", str(tmp_path / "data"), "--out", str(out)]
    assert run_cli.main([*argv, "--dicom-window", "40,80"]) == 0
    best = next(out.rglob("record.json")).parent / "best"
    assert load_metadata(best)["dicom_window"] == [40.0, 80.0]
    seen = []
    monkeypatch.setattr(
        predict.Predictor, "__call__", lambda self, b: seen.append(b) or b[:, :2, 0, 0]
    )
    predict.Predictor(best).predict_files([str(root / "a" / "0.dcm")])
    assert seen[0][0].mean() == 64  # 20 HU in 40,80: 63.75; in the file's 400,1800: 74
    # Training's files are each of one value, shown as they are (the run was not refused);
    # a scan whose varied values all lie above the window is said to be a blank image.
    capsys.readouterr()
    far = np.arange(40 * 44, dtype=np.uint16).reshape(40, 44) % 100 + 3000  # HU 1976..2075
    _write_dicom(tmp_path / "far.dcm", far, rescale=(1, -1024))
    predict.Predictor(best).predict_files([str(root / "a" / "0.dcm"), str(tmp_path / "far.dcm")])
    assert capsys.readouterr().err == (
        "note: the checkpoint's --dicom-window 40,80 shows 1 DICOM image(s) as one grey though "
        f"their values vary (e.g. {tmp_path / 'far.dcm'}): their probabilities are a blank "
        "image's\n"
    )


def _sizes() -> dict[str, int]:
    return {"resize_size": RESIZE, "crop_size": CROP}


def test_which_files_bits_stored_bears_on(tmp_path):
    """From the header alone, the files ``--bits-stored`` changes: 16-bit integer samples
    of an unstated range; not 8-bit, float, DICOM, a PGM with a maxval, or a bad file."""
    v = np.arange(30).reshape(5, 6)
    takes = {
        "grey16.png": _save16(tmp_path / "grey16.png", v * 100),
        "grey16.tif": _save16(tmp_path / "grey16.tif", v * 100),
        "signed.tif": _tiff16_signed(tmp_path / "signed.tif", v - 10),
        "rgb16.png": _png16_rgb(tmp_path / "rgb16.png", np.stack([v] * 3, -1) * 1000),
        "la16.png": _png16_rgb(tmp_path / "la16.png", np.stack([v, v], -1), colour_type=4),
    }
    others = {"grey8.png": tmp_path / "grey8.png", "float.tif": tmp_path / "float.tif"}
    Image.fromarray(v.astype(np.uint8)).save(others["grey8.png"])
    Image.fromarray(v.astype(np.float32) / 30).save(others["float.tif"])
    others["maxval.pgm"] = tmp_path / "maxval.pgm"
    others["maxval.pgm"].write_bytes(b"P5\n6 5\n4095\n" + v.astype(">u2").tobytes())
    others["ct.dcm"] = _write_dicom(tmp_path / "ct.dcm", (v * 100).astype(np.uint16))
    others["broken.png"] = tmp_path / "broken.png"
    others["broken.png"].write_bytes(b"\x89PNG\r\n\x1a\nnothing")
    assert {n: takes_bits_stored(p) for n, p in {**takes, **others}.items()} == {
        **dict.fromkeys(takes, True),
        **dict.fromkeys(others, False),
    }


def test_bits_stored_is_refused_for_a_dataset_it_would_not_change(tmp_path):
    """--bits-stored on a folder of 8-bit files changed only the cache's name, and the
    user believed their images read as 12-bit. Refused before any cache is begun; one
    16-bit file among 8-bit ones is enough to take it."""
    pngs = tmp_path / "pngs"
    for name in ("a", "b"):  # ten a class: each split gets both (a listing check)
        (pngs / name).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(np.full((20, 24), i, np.uint8)).save(pngs / name / f"{i}.png")
    out = tmp_path / "data"
    with pytest.raises(DataError) as e:
        load("folder", manual_dir=pngs, data_dir=out, progress=False, bits_stored=12, **_sizes())
    assert str(e.value) == (
        f"--bits-stored 12: none of the 20 images under {pngs} has 16-bit integer samples "
        "of an unstated range, which the flag is for (DICOM states its own); leave the flag out"
    )
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))
    _save16(pngs / "b" / "10.png", np.full((20, 24), 4000))
    ds = load("folder", manual_dir=pngs, data_dir=out, progress=False, bits_stored=12, **_sizes())
    assert ds.metadata["bits_stored"] == 12
    ids = [i for s in ds.splits.values() for i in s.ids]
    image = next(s.images[k] for s in ds.splits.values()
                 for k, i in enumerate(s.ids) if str(i).endswith("/10.png"))  # fmt: skip
    assert len(ids) == 21 and int(image.max()) == 4000 >> 4  # read as 12 bits: 250


# pathological sizes


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A 1x1 PNG whose IHDR (CRC fixed) claims ``width`` x ``height``."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]  # chunk type + 13 data bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))
    return path


def test_long_thin_png_refused_before_decoding(tmp_path):
    path = tmp_path / "line.png"
    Image.new("L", (200000, 1)).save(path)
    assert path.stat().st_size < 1000
    with pytest.raises(DataError, match=r"line\.png: image size 200000x1 has aspect ratio"):
        _read(path)
    with pytest.raises(PredictError, match=rf"line\.png: .*limit of {MAX_ASPECT:g}:1"):
        load_image(path, RESIZE, CROP)


@pytest.mark.parametrize(
    ("width", "height", "message"),
    [
        (100000, 100000, r"claims 10,000,000,000 pixels, over the limit of 67,108,864"),
        (10000, 10000, r"image size 10000x10000 \(100,000,000 pixels\) exceeds the limit"),
        (8193, 8192, r"image size 8193x8192 .*exceeds the limit of 67,108,864 pixels"),
    ],
)
def test_huge_header_refused_with_path_size_and_limit(tmp_path, width, height, message):
    path = _png_claiming(tmp_path / "bomb.png", width, height)
    with pytest.raises(DataError, match=message) as err:
        _read(path)
    assert str(err.value).startswith(f"{path}: ")
    with pytest.raises(PredictError, match=message):
        load_image(path, RESIZE, CROP)


def test_limits_admit_real_sizes(tmp_path):
    assert MAX_PIXELS >= 5928 * 4728 and MAX_ASPECT >= 4  # mammograms, long-leg radiographs
    at_limit = _png_claiming(tmp_path / "big.png", 8192, 8192)
    with pytest.raises(DataError, match="corrupt or unreadable") as err:  # decoded, then truncated
        _read(at_limit)
    assert "the limit of" not in str(err.value)
    Image.new("L", (int(MAX_ASPECT), 1), 200).save(tmp_path / "strip.png")
    assert (_read(tmp_path / "strip.png")[..., 0] == 200).any()


@pytest.mark.parametrize(
    ("rows", "columns", "message"),
    [
        (1, 60000, r"image size 60000x1 has aspect ratio 60000\.0:1"),
        (65535, 65535, r"image size 65535x65535 \(4,294,836,225 pixels\) exceeds the limit"),
    ],
)
def test_dicom_size_refused_from_the_header(tmp_path, rows, columns, message):
    path = _write_dicom(tmp_path / "a.dcm", np.zeros((1, 4), np.uint16))
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = rows, columns  # the pixel data is 8 bytes: refused before decoding
    ds.save_as(path)
    with pytest.raises(DataError, match=rf"a\.dcm: {message}"):
        open_image(path)


def test_folder_lists_every_readable_format_and_says_what_it_left_out(tmp_path, capsys):
    from medft_jax.data.folder import parse_folder

    root = tmp_path / "imgs"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i, suffix in enumerate((".png", ".pgm", ".webp", ".gif", ".jp2")):
            Image.new("L", (8, 8), 40 * i).save(root / name / f"{i}{suffix}")
        # A PACS export: DICOM files named without a suffix, or by UID.
        shutil.copy(get_testdata_file("MR_small.dcm"), root / name / "IM0001")
        shutil.copy(get_testdata_file("MR_small.dcm"), root / name / "1.2.840.10008.3")
    (root / "a" / "notes.txt").write_text("scanner settings")
    (root / "b" / "Thumbs.db").write_bytes(b"\0" * 200)
    # Beside the class folders too (they were not counted): a README, the labels' sheet.
    (root / "README.txt").write_text("ultrasound, two classes")
    (root / "labels.csv").write_text("path,label\n")
    # Hidden: macOS's own files go unsaid; an image named .x.png was dropped without a word.
    (root / "a" / ".DS_Store").write_bytes(b"\0" * 20)
    (root / "a" / "._0.png").write_bytes(b"\0" * 20)
    Image.new("L", (8, 8)).save(root / "b" / ".5.png")
    Image.new("L", (8, 8)).save(root / ".cover.png")  # beside the class folders too
    _, splits = parse_folder(root)
    listed = sorted(ex.id for ex in splits["train"] + splits["val"] + splits["test"])
    assert len(listed) == 14 and "a/IM0001" in listed and "b/1.2.840.10008.3" in listed
    assert "a/2.webp" in listed and "b/1.pgm" in listed and "a/4.jp2" in listed
    err = capsys.readouterr().err
    assert (
        f"note: {root}: 6 file(s) not read as images left out (.csv 1, .db 1, .txt 2, "
        "hidden .png 2)"
    ) in err
    assert open_image(root / "a" / "IM0001").size == (64, 64)


def test_a_folder_given_as_an_image_is_named_a_folder(tmp_path):
    with pytest.raises(DataError, match=rf"^{re.escape(str(tmp_path))} is a folder, expected an"):
        open_image(tmp_path)


def test_signed_8bit_tiff_is_offset_like_signed_16bit(tmp_path):
    """Pillow reads SampleFormat 2 at 8 bits as unsigned: -1 came out 255 (white), -128 as
    128; the signed rule maps -128..127 to 0..255, as it does at 16 bits."""
    values = np.array([[-128, -1], [0, 127]], np.int8)
    path = _tiff16_signed(tmp_path / "s8.tif", values, bits=8)
    assert np.asarray(open_image(path)).tolist() == [[0, 127], [128, 255]]


def test_dicom_values_stored_in_the_high_bits_are_refused_not_scrambled(tmp_path):
    """HighBit 15 of 12 bits: pydicom keeps the low 12 bits, cutting each value mid-way
    (0, 1000, 2000, 4095 came out 0, 232, 208, 255)."""
    stored = (np.array([[0, 1000, 2000, 4095]], np.uint16) << 4).astype(np.uint16)
    path = _write_dicom(tmp_path / "a.dcm", stored, BitsStored=12, HighBit=15)
    with pytest.raises(
        NotABadFile,
        match=r"a\.dcm: DICOM HighBit 15 with BitsStored 12 \(values "
        r"in bits 4\.\.15\) is not read by this toolkit; expected HighBit 11$",
    ):
        open_image(path)


def test_dicom_voi_lut_first_value_read_unsigned_is_taken_as_signed(tmp_path):
    """After a rescale to negative values, a VOI LUT starting at -1000 read as US (64536,
    as pydicom reads Implicit VR) put every pixel below the table: one black image."""
    stored = np.array([[0, 24, 25, 26, 27, 2000]], np.uint16)  # x = v - 1024
    lut = ([4, 65536 - 1000, 12], [0, 1000, 2000, 4095])
    path = _write_dicom(tmp_path / "a.dcm", stored, rescale=(1, -1024), voi_lut=lut)
    # -1024 below the table: entry 0; -1000 entry 0; -999.. -997 entries 1-3; 976 the last.
    assert np.asarray(open_image(path))[0].tolist() == [0, 0, 62, 125, 255, 255]
    # A table no pixel reaches maps the image to one value: refused.
    far = _write_dicom(tmp_path / "b.dcm", stored, voi_lut=([4, 5000, 12], lut[1]))
    with pytest.raises(
        NotABadFile,
        match=r"b\.dcm: DICOM VOI LUT covers values 5000\.\.5003, "
        r"and the image's values \(0\.\.2000\) all lie outside it",
    ):
        open_image(far)


def test_16bit_colour_dicom_of_12_bit_values_is_refused_as_colour_pngs_are(tmp_path):
    """BitsStored 16 over values that fit 12 bits came out 0..15 (nearly black), where a
    16-bit colour PNG of the same values is refused."""
    rgb = np.zeros((2, 2, 3), np.uint16)
    rgb[0, 0], rgb[1, 1] = (4095, 0, 0), (2048, 2048, 2048)
    path = _write_dicom(tmp_path / "a.dcm", rgb, photometric="RGB")
    with pytest.raises(
        NotABadFile,
        match=r"16-bit colour DICOM \(BitsStored 16\) whose values "
        r"all fit in 14 bits",
    ):
        open_image(path)
    rgb[0, 1] = (65535, 0, 0)  # the full 16 bits used: the 16-bit rule
    path = _write_dicom(tmp_path / "b.dcm", rgb, photometric="RGB")
    assert np.asarray(open_image(path))[0].tolist() == [[15, 0, 0], [255, 0, 0]]


def test_colour_dicom_signed_is_refused_and_under_8_bits_is_stretched_in_any_word(tmp_path):
    """Signed colour samples: the negative ones became 0 without a word (a signed colour
    TIFF is refused). 6-bit colour samples came out 0..63 (dark) in 8-bit words, 0..255
    in 16-bit words: the same values, other pixels by the allocation alone."""
    signed = np.array([[[-100, 0, 20000], [300, -1, 5]]], np.int16)
    path = _write_dicom(tmp_path / "s.dcm", signed, photometric="RGB")
    with pytest.raises(NotABadFile, match=r"s\.dcm: signed colour DICOM \(PixelRepresentation 1"):
        open_image(path)
    six = np.array([[[0, 21, 63], [42, 63, 1]]], np.uint8)
    stretched = np.rint(six * (255 / 63)).astype(int).tolist()  # [[0, 85, 255], [170, 255, 4]]
    for dtype in (np.uint8, np.uint16):
        path = _write_dicom(
            tmp_path / f"six{dtype.__name__}.dcm", six.astype(dtype), photometric="RGB",
            BitsStored=6, HighBit=5,
        )  # fmt: skip
        assert np.asarray(open_image(path)).tolist() == stretched, dtype


def test_a_window_that_is_no_number_is_a_sound_files_header(tmp_path):
    """WindowCenter 'abcd': a DataError, skipped as damaged by --skip-bad-images, even under
    --dicom-window, which replaces the file's window; BitsStored 0 said "expected HighBit
    -1"; a rescale past the float range said the pixels were NaN."""
    path = _write_dicom(tmp_path / "w.dcm", STORED, window=(9999, 201))
    raw = path.read_bytes()
    assert raw.count(b"9999") == 1
    path.write_bytes(raw.replace(b"9999", b"abcd"))  # a DS no writer should have written
    with pytest.raises(NotABadFile, match=r"w\.dcm: bad DICOM window \(.*\); give --dicom-window"):
        open_image(path)
    # LINEAR_EXACT, stored values (no rescale): ((v - 100) / 201 + 0.5) * 255, rounded
    assert np.asarray(open_image(path, dicom_window=(100, 201)))[0].tolist() == [
        1, 64, 128, 159, 191, 255
    ]  # fmt: skip
    zero = _write_dicom(tmp_path / "z.dcm", STORED, BitsStored=0, HighBit=11)
    with pytest.raises(DataError, match=r"z\.dcm: bad DICOM image header \(BitsStored 0; expec"):
        open_image(zero)
    huge = _write_dicom(tmp_path / "h.dcm", STORED, rescale=(1e308, 0))
    with (
        warnings.catch_warnings(),  # numpy's overflow warning: two lines before the one
        pytest.raises(DataError, match=r"h\.dcm: the DICOM rescale \(RescaleSlope, Rescale"),
    ):
        warnings.simplefilter("error")
        open_image(huge)


def test_dicom_intercept_alone_inverse_shape_and_a_zero_slope(tmp_path):
    # An intercept without its slope was ignored: CT numbers 1024 off, and the window with
    # them. x = v - 100 under the LINEAR window c=0, w=201 (c' = -0.5, w' = 200):
    # ((x + 0.5) / 200 + 0.5) * 255 = 0.64, 128.1, 255.6 -> 1, 128, 255 (clipped).
    stored = np.array([[0, 100, 200]], np.uint16)
    path = _write_dicom(tmp_path / "a.dcm", stored, window=(0, 201), RescaleIntercept=-100)
    assert np.asarray(open_image(path))[0].tolist() == [1, 128, 255]
    # Presentation LUT Shape INVERSE shows low values white, as MONOCHROME1 does; the two
    # together say it once.
    inverse = _write_dicom(
        tmp_path / "b.dcm", stored, window=(0, 201), RescaleIntercept=-100,
        PresentationLUTShape="INVERSE",
    )  # fmt: skip
    assert np.asarray(open_image(inverse))[0].tolist() == [254, 127, 0]
    both = _write_dicom(
        tmp_path / "c.dcm", stored, photometric="MONOCHROME1", window=(0, 201),
        RescaleIntercept=-100, PresentationLUTShape="INVERSE",
    )  # fmt: skip
    assert np.asarray(open_image(both))[0].tolist() == [254, 127, 0]
    flat = _write_dicom(tmp_path / "d.dcm", stored, rescale=(0, 5))
    with pytest.raises(DataError, match=r"d\.dcm: DICOM RescaleSlope 0 would map every pixel"):
        open_image(flat)


def test_a_16_bit_colour_ppm_reads_as_its_png_and_pgm_twins_by_the_high_byte(tmp_path):
    """Pillow rounds a binary PPM's 9-16-bit colour straight to 8 bits (v * 255 / maxval):
    one picture saved as PPM and as 16-bit PNG was a grey level apart in about a quarter
    of its samples, and a 12-bit grey picture as PPM unlike its PGM twin."""

    def netpbm(path: Path, magic: str, values: np.ndarray, maxval: int) -> Path:
        h, w = values.shape[:2]
        path.write_bytes(f"{magic}\n{w} {h}\n{maxval}\n".encode() + values.astype(">u2").tobytes())
        return path

    rng = np.random.default_rng(0)
    v = rng.integers(0, 65536, (6, 7, 3), dtype=np.uint16)
    got = np.asarray(open_image(netpbm(tmp_path / "a.ppm", "P6", v, 65535)))
    assert np.array_equal(got, (v >> 8).astype(np.uint8))  # as a 16-bit colour PNG reads
    assert not np.array_equal(got, np.rint(v * 255 / 65535).astype(np.uint8))  # Pillow's
    grey = rng.integers(0, 4096, (6, 7), dtype=np.uint16)
    pgm = np.asarray(open_image(netpbm(tmp_path / "g.pgm", "P5", grey, 4095)))
    ppm = np.asarray(open_image(netpbm(tmp_path / "g.ppm", "P6", np.stack([grey] * 3, -1), 4095)))
    assert all(np.array_equal(ppm[..., c], pgm) for c in range(3))
    plain = tmp_path / "p3.ppm"  # the same picture as plain text (P3), a comment in it
    plain.write_text(
        "P3\n7 6\n# made by hand\n4095\n" + " ".join(map(str, np.stack([grey] * 3, -1).ravel()))
    )
    assert np.array_equal(np.asarray(open_image(plain)), ppm)
    # Cut short, or a word among its samples: a damaged file's line, not a traceback.
    text = plain.read_text()
    crlf = text.replace("\n", "\r")  # old Mac line ends: a comment ends at a CR too
    plain.write_text(crlf, newline="")
    assert np.array_equal(np.asarray(open_image(plain)), ppm)
    for bad in (
        text[: len(text) // 2],
        text.replace("\n4095\n", "\n4095\nx ", 1),
        text.replace("\n4095\n", "\n4095\n" + "9" * 30 + " ", 1),  # past int64
    ):
        plain.write_text(bad)
        with pytest.raises(DataError, match=r"^corrupt or unreadable image .*p3\.ppm: ") as e:
            open_image(plain)
        assert not isinstance(e.value, NotABadFile)


def test_a_link_farm_relabelled_by_swapping_link_targets_rebuilds_the_cache(tmp_path, capsys):
    """Class folders of links into a store, regenerated after relabelling (two links'
    targets swapped): the cache's signature named files by their targets alone, the same
    set, and each listed image kept its old pixels under its new label, without a word."""
    root = tmp_path / "farm"
    store = root / ".store"
    store.mkdir(parents=True)
    for c in "ab":
        (root / c).mkdir()
        for i in range(6):
            value = (40 if c == "a" else 200) + i
            Image.fromarray(np.full((20, 20), value, np.uint8)).save(store / f"{c}{i}.png")
            (root / c / f"{i}.png").symlink_to(f"../.store/{c}{i}.png")
    kw = {"manual_dir": root, "data_dir": tmp_path / "out", "progress": False, **_sizes()}
    kw["val_fraction"], kw["test_fraction"] = 0.2, 0.2

    def pixel_of(ds):
        return {i: int(s.images[k].mean()) for s in ds.splits.values() for k, i in enumerate(s.ids)}

    first = pixel_of(load("folder", **kw))
    assert first["a/0.png"] == 40 and first["b/0.png"] == 200
    for c, target in (("a", "b0"), ("b", "a0")):  # image a0 relabelled b, b0 relabelled a
        (root / c / "0.png").unlink()
        (root / c / "0.png").symlink_to(f"../.store/{target}.png")
    again = pixel_of(load("folder", **kw))
    assert again["a/0.png"] == 200 and again["b/0.png"] == 40
    assert "is stale: 2 files changed; rebuilding" in capsys.readouterr().err
