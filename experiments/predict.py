"""Class probabilities for image files from a model checkpoint.

``python -m experiments.predict --checkpoint DIR --images A.png B.jpg [--json]``

Images are decoded as the checkpoint's training images were (16-bit files by
its ``bits_stored``, greyscale DICOM by its ``dicom_window``, when it has
them) and preprocessed as torchvision's ImageNet weight transforms do (PIL
bilinear antialiased resize of the shorter side to the checkpoint's resize
size, centre crop, ImageNet mean/std;
grayscale repeated to 3 channels).
Probabilities are softmax outputs, or per-class sigmoids for a multilabel
checkpoint, all classes in index order. They are computed in the checkpoint's
precision (a ``--precision bf16`` run's checkpoint in bfloat16, as the run
evaluated it) unless ``--precision`` says otherwise. Each image is scored on its
own: a MURA run scored a study by the mean of its images' probabilities, so
average a study's lines to compare with its record.

Without ``--json`` each image is one line, ``PATH: NAME P, NAME P, ...`` with the
classes ranked; a path that holds ``": "``, a class name that holds a comma, and
either one with blanks at its ends or a character that is not printable (a newline)
is printed JSON-quoted, so every row is one line and splits one way only.
``--out FILE`` writes the rows to a temporary file beside FILE, renamed over it once
all are written: FILE holds its old content or every row, never part of them.
``--skip-bad-images`` leaves out unreadable or undecodable files, each named in one
``note:`` line, and predicts the others.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import errno
import itertools
import json
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from experiments.common import add_bits_stored_flag, add_dicom_window_flag
from medft_jax.config import PRECISIONS
from medft_jax.data.cache import reserve_space
from medft_jax.data.dicom import WINDOW_BLANKED, OneValueUnwindowed, WindowOnColour
from medft_jax.data.errors import DataError, ImageMissing, NotABadFile
from medft_jax.data.images import DECODING_VERSION, decode_threads, open_image
from medft_jax.data.paths import special_kind
from medft_jax.data.pixels import (
    BitsExceeded,
    BitsOnColour,
    DicomWindow,
    GreyBitsUndeclared,
    check_bits_stored,
    parse_dicom_window,
)
from medft_jax.data.preprocess import normalize, resize_and_crop
from medft_jax.errors import (
    ArgumentParser,
    UserError,
    cli_main,
    exit_command,
    exit_statuses,
    naming_os_errors,
    path_flag,
    raise_if_stopped,
)
from medft_jax.metrics import scores_from_logits


class PredictError(UserError):
    """An input image or checkpoint that cannot be used."""


class BadImage(PredictError):
    """A file that cannot be read or decoded (truncated, empty, a link that loops or points
    nowhere): what ``--skip-bad-images`` leaves out. Not a sound file the decoding rules
    refuse (:class:`~medft_jax.data.errors.NotABadFile`: every file of its kind would
    go, without a word) nor a path that is not there (a typo in the command)."""


SKIP_HINT = "; --skip-bad-images leaves out such files and predicts the others"
"""Appended to the first bad file's refusal: without it users find them one per rerun."""


def load_image(
    path: str | Path,
    resize_size: int,
    crop_size: int,
    bits_stored: int | None = None,
    dicom_window: DicomWindow | None = None,
    decoder: str | None = None,
    reword: Callable[[DataError], str | None] | None = None,
    blanked: list[str] | None = None,
) -> np.ndarray:
    """One image file -> the uint8 (crop, crop, 3) array the model sees.

    Decoded by :func:`medft_jax.data.images.open_image`, the one path
    ``prepare`` uses too: 16-bit, float and DICOM files converted by the same
    rules, the same size limits, the same one-line refusals. ``decoder``
    (``t1w_mri``): the task's own reader, the only one its run used: ``.mat``
    files alone, each slice min-max scaled as in training. ``reword``: the
    refusal in a checkpoint's terms where it has its own (None: the decoder's):
    a decoder's advice to give a flag is wrong where the checkpoint fixes it
    (:meth:`Predictor.refusal`). ``blanked``: a list to which a DICOM file that
    ``dicom_window`` shows as one grey, its values varied, is added.
    """
    if not str(path):  # Path("") is ".", the current folder
        raise PredictError("--images: an empty path; expected an image file")
    try:
        if decoder == "t1w_mri":
            if Path(path).suffix.lower() != ".mat":
                raise PredictError(
                    f"{path}: the checkpoint's run read T1w MRI .mat files (each slice "
                    "min-max scaled), so predict reads those alone; expected a .mat file"
                )
            from medft_jax.data.builders.t1w_mri import decode

            image = decode(Path(path))
        else:
            image = open_image(Path(path), bits_stored, dicom_window)
            if blanked is not None and image.info.get(WINDOW_BLANKED):
                blanked.append(str(path))
    except ImageMissing as e:
        if Path(path).is_symlink():  # a link to nothing: a broken file, not a typo
            raise BadImage(
                f"{path} is a symbolic link to {os.readlink(path)}, which does not exist"
            ) from None
        raise PredictError(str(e)) from None
    except NotABadFile as e:
        raise PredictError((reword(e) if reword is not None else None) or str(e)) from None
    except DataError as e:
        raise BadImage(str(e)) from None
    return resize_and_crop(image, resize_size, crop_size)


def _note_unfinished(checkpoint: Path, epoch: Any, source: str) -> None:
    """One note line when a run's ``best/`` has no ``record.json`` beside it: the run is
    training, or was killed, and this is its best epoch so far; after an interrupted
    ``--force`` the finished run's parameters are the ones set aside in ``previous/``.
    Only in the run's own folder (named as the metadata's ``source``, ``run <name>``): a
    ``best/`` copied elsewhere to be used (``deploy/model/best``) has no record beside it
    by design, and the note would tell its user, at every call, to distrust it.
    ``epoch`` is the metadata's, counted from 0 as ``record.json``'s ``best_epoch`` is;
    the note counts from 1, as ``run`` and ``sweep`` print epochs (``epoch 1: ...``,
    ``best epoch 1 of 6``), so that it names the epoch the user saw."""
    from medft_jax.results import PREVIOUS_NAMES, RECORD_NAME

    folder = checkpoint.expanduser().absolute().parent
    if checkpoint.name != "best" or (folder / RECORD_NAME).is_file():
        return
    if folder.resolve().name != source.removeprefix("run "):  # a copy: nothing to say
        return
    when = f" (epoch {epoch + 1})" if isinstance(epoch, int) else ""
    note = f"note: {checkpoint}: its run has not finished (no {RECORD_NAME} in {folder}): "
    note += f"these are its best parameters so far{when}"
    for name in PREVIOUS_NAMES:
        kept = folder / name
        if (kept / RECORD_NAME).is_file() and (kept / "best").is_dir():
            note += f"; its last finished run's are {kept / 'best'}"
            break
    print(note, file=sys.stderr)


def _note_decoding_version(checkpoint: str | Path, version: Any) -> None:
    """One note line when a run's checkpoint was trained under other decoding rules than
    predict's (:data:`~medft_jax.data.images.DECODING_VERSION`), or does not say which:
    a 16-bit, float or DICOM file that decodes otherwise now reaches the model unlike its
    training images did (its run's own cache rebuilt; the checkpoint cannot). Said only
    where an image given is not an 8-bit PNG or JPEG."""
    if version == DECODING_VERSION:
        return
    said = (
        "does not record the decoding version its run used (it was written before checkpoints did)"
        if version is None
        else f"was trained on images decoded by decoding version {version}"
    )
    print(
        f"note: {checkpoint} {said}; predict decodes by version {DECODING_VERSION}: a "
        "16-bit, float or DICOM file whose decoding changed between them (BUILD.md lists "
        "each version's changes) reaches the model unlike its training images",
        file=sys.stderr,
    )


_EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA")


def _decodes_alike_in_every_version(path: str) -> bool:
    """Whether ``path`` is a single-frame 8-bit JPEG or PNG (read by its header alone),
    which every decoding version has decoded alike; anything else (16-bit, DICOM, TIFF,
    a file that cannot be read here) may not have."""
    if Path(path).suffix.lower() not in (".jpg", ".jpeg", ".png"):
        return False
    from PIL import Image

    from medft_jax.data.images import sample_kind

    try:  # by content, not name: a DICOM or 16-bit PNG named .jpg is read as what it is
        with Image.open(path) as image:
            return (
                image.format in ("JPEG", "PNG")
                and image.mode in _EIGHT_BIT_MODES
                and sample_kind(image).startswith(("8-bit", "1-bit"))  # 16-bit grey+alpha
                and getattr(image, "n_frames", 1) == 1
            )
    except Exception:  # named by the reader, in its one line
        return False


def _recorded_numerics(checkpoint: Path, source: str) -> int | None:
    """The numerics version the record beside ``checkpoint`` (its run's ``best/``) names, where
    it is that run's: a checkpoint written before checkpoints recorded it was "unknown" while
    its run's record said 6. None where no such record says."""
    from medft_jax import results

    try:
        record = results.read_record(checkpoint.parent / "record.json")
    except (OSError, results.RecordError):
        return None
    numerics = (record.get("config") or {}).get("numerics")
    if source != f"run {record.get('run')}" or type(numerics) is not int:
        return None
    return numerics


def _note_numerics(checkpoint: str | Path, precision: str, numerics: Any) -> None:
    """One note line when a run's checkpoint was evaluated by another forward pass than
    predict computes at its precision (:func:`~medft_jax.config.forward_version`), or does
    not say which where that precision's forward pass has changed: its probabilities then
    differ from its run's evaluation (a bf16 checkpoint of numerics 5 by up to 0.03, a
    class flipped), and its record's metrics do not follow from them."""
    from medft_jax.config import NUMERICS_VERSION, forward_version

    now = forward_version(precision)
    if numerics is None and now == 1:
        return  # this precision's forward pass never changed: nothing to say
    newer = numerics is not None and int(numerics) > NUMERICS_VERSION  # a later toolkit's
    if numerics is not None and not newer and forward_version(precision, of=int(numerics)) == now:
        return
    said = (
        "does not record the numerics version its run computed with (it was written before "
        "checkpoints did)"
        if numerics is None
        else f"was evaluated by its run at numerics version {numerics}"
    )
    differs = (
        "which knows no later version (written by a newer medft-jax)"
        if newer
        else "whose forward pass differs (medft_jax.config.NUMERICS_VERSION lists each "
        "version's changes)"
    )
    print(
        f"note: {checkpoint} {said}; predict computes {precision} at version "
        f"{NUMERICS_VERSION}, {differs}: its probabilities may differ from its run's "
        "evaluation, and from its record's metrics",
        file=sys.stderr,
    )


class Predictor:
    """A model checkpoint ready to turn uint8 image batches into probabilities."""

    def __init__(
        self,
        checkpoint: str | Path,
        bits_stored: int | None = None,
        precision: str | None = None,
        dicom_window: str | DicomWindow | None = None,
    ):
        """``bits_stored``, ``dicom_window``: how to decode 16-bit files and greyscale
        DICOM when the checkpoint does not say; one that disagrees with the
        checkpoint's is refused, and so is any for a run's checkpoint that has
        none (its run decoded by the default rules: another rule here would
        show the model images unlike its training images). ``precision``: the compute
        precision, by default the checkpoint's (a run's ``--precision``: the
        probabilities are then those its evaluation computed), else fp32."""
        # JAX, Flax and Orbax load here, not with the module: --help and bad
        # flags answer at once.
        import jax

        from medft_jax.checkpoints.model import UNSAID_CROP_SIZE, load_model
        from medft_jax.models import COMPUTE_DTYPES, create, get_arch

        # load_model verifies the arrays and checks the metadata against them
        # (arch, num_classes, class_names, sizes) before anything is built here.
        self.checkpoint = checkpoint
        self.variables, self.metadata = load_model(checkpoint)
        m = self.metadata
        self.precision = precision or m.get("precision", "fp32")
        self.dtype = COMPUTE_DTYPES[self.precision]
        self.model = create(m["arch"], int(m["num_classes"]), dtype=self.dtype)
        self.multilabel = bool(m.get("multilabel", False))
        # Unsaid (absent or null): 224 and the arch's own resize rule (ResNet-50's 232/224),
        # the one every run uses.
        self.crop_size = int(m.get("crop_size") or UNSAID_CROP_SIZE)
        self.resize_size = int(
            m.get("resize_size") or get_arch(m["arch"]).resize_for(self.crop_size)
        )
        from_run = str(m.get("source", "")).startswith("run ")
        self.from_run = from_run
        self._decoding_note: tuple[str | Path, Any] | None = None
        self.trained_bits_stored = m.get("bits_stored")
        self.trained_dicom_window = parse_dicom_window(m.get("dicom_window"))
        if from_run:
            _note_unfinished(Path(checkpoint), m.get("epoch"), str(m["source"]))
            # Said where an image given could decode otherwise (predict_files): of 8-bit
            # PNGs and JPEGs, which every version decodes alike, it misled.
            self._decoding_note = (checkpoint, m.get("decoding_version"))
            if self.precision == m.get("precision", "fp32"):
                numerics = m.get("numerics")
                if numerics is None:  # an older best/: its run's record beside it may say
                    numerics = _recorded_numerics(Path(checkpoint), str(m["source"]))
                _note_numerics(checkpoint, self.precision, numerics)
            else:  # --precision asked otherwise: said, as a smaller difference is above
                print(
                    f"note: {checkpoint} was evaluated by its run in "
                    f"{m.get('precision', 'fp32')}; predict computes {self.precision} "
                    "(--precision): its probabilities differ from its run's evaluation, and "
                    "from its record's metrics",
                    file=sys.stderr,
                )
        self.bits_stored = _decoding_rule(
            "--bits-stored",
            bits_stored,
            m.get("bits_stored"),
            from_run,
            "decoded its images by the default rule (16 bits; 16-bit files whose values fit "
            "14 bits refused), and these must be decoded alike",
            "the bits its training images were decoded with",
            default_is=16,  # the default maps as 16 does; it only refuses dark files
        )
        self.dicom_window = _decoding_rule(
            "--dicom-window",
            parse_dicom_window(dicom_window),
            parse_dicom_window(m.get("dicom_window")),
            from_run,
            "showed each DICOM file by its own window (or its range), and these must be shown "
            "alike",
            "the window its training DICOM files were decoded with",
        )
        self.decoder = m.get("decoder")
        if self.decoder is not None and (bits_stored is not None or dicom_window is not None):
            flag = "--bits-stored" if bits_stored is not None else "--dicom-window"
            raise PredictError(
                f"{flag}: the checkpoint's run read {self.decoder} files by the task's own "
                "reader, which it does not apply to; leave the flag out"
            )
        names = m.get("class_names")
        self.class_names = list(names) if names else [str(i) for i in range(m["num_classes"])]
        self._logits = jax.jit(self._logits_fn)
        # On the device once: numpy arrays would be copied there again with every batch.
        self.variables = jax.device_put(self.variables)

    def _logits_fn(self, variables, images):
        import jax.numpy as jnp

        return self.model.apply(variables, normalize(images, self.dtype)).astype(jnp.float32)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Float64 probabilities, made on the host from the logits as a run's evaluation
        makes them (float32 ones round to 1.0 past a logit margin of about 16.6, so
        confident images would all print, and rank, the same)."""
        logits = np.asarray(self._logits(self.variables, images))
        # A row with a non-finite logit is NaN (refused by the caller, naming the image):
        # a multilabel +inf would otherwise read as a finite probability of 1.
        finite = np.isfinite(logits).all(axis=1)
        probs = np.full(logits.shape, np.nan)
        probs[finite] = scores_from_logits(logits[finite], self.multilabel)[0]
        return probs

    def refusal(self, err: DataError) -> str | None:
        """A decoder's refusal in this checkpoint's terms, or None to keep its own.

        Predict must decode exactly as the checkpoint's training did, so where the
        checkpoint fixes a rule (a recorded ``bits_stored``, or a run's that declared
        none), the decoder's advice to give ``--bits-stored`` or ``--dicom-window``
        would be refused here: the user went from one error to the other. This says
        instead how the training decoded such files and what reads the file: saving it
        as the training images were, or training a run with the flag on such images.
        """
        trained_bits, run = self.trained_bits_stored, self.from_run
        if isinstance(err, GreyBitsUndeclared) and run and trained_bits is None:
            return (
                f"{err.path}: {err.what}; the checkpoint's run declared no --bits-stored, so "
                "it decoded 16-bit files by that rule, refusing files like this one, and "
                "predict decodes as it did: save this file as 8-bit, scaled as you want it, "
                "or train a run on such images with --bits-stored N, the bits they use (12 "
                "for most X-rays), and predict with its checkpoint (--bits-stored 16 forces "
                "that rule here, keeping those few grey levels)"
            )
        if isinstance(err, BitsExceeded) and trained_bits is not None:
            top = (1 << int(trained_bits)) - 1
            return (
                f"{err.path}: {err.what}; the checkpoint records --bits-stored {trained_bits}, "
                "the bits its training images were decoded with, and predict decodes as they "
                f"were: save this file with values 0..{top}, scaled as you want it, or train "
                "a run on such images with --bits-stored N, the bits they use"
            )
        if isinstance(err, BitsOnColour) and trained_bits is not None:
            return (
                f"{err.path}: 16-bit colour, and the checkpoint records --bits-stored "
                f"{trained_bits}, the bits its training images were decoded with, which "
                "applies to 16-bit greyscale alone (colour is read by the 16-bit rule only): "
                "its training refused such files, and predict decodes as it did; save it as "
                "8-bit colour, scaled as you want it"
            )
        if isinstance(err, OneValueUnwindowed) and run and self.trained_dicom_window is None:
            return (
                f"{err.path}: {err.what}; the checkpoint's run declared no --dicom-window, so "
                "it showed each DICOM file by its own window or range, refusing files like "
                "this one, and predict shows them as it did: leave this file out, or train a "
                "run with --dicom-window CENTER,WIDTH and predict with its checkpoint"
            )
        window = self.trained_dicom_window
        if isinstance(err, WindowOnColour) and window is not None:
            return (
                f"{err.path}: colour DICOM ({err.photometric}), and the checkpoint records "
                f"--dicom-window {window[0]:g},{window[1]:g}, the window its training DICOM "
                "files were shown by, which applies to greyscale DICOM alone: its training "
                "refused such files, and predict decodes as it did; save it as an 8-bit "
                "image (PNG), which the window does not apply to"
            )
        return None

    def predict_files(
        self,
        paths: Sequence[str],
        batch_size: int = 32,
        skipped: list[str] | None = None,
        *,
        progress: bool = False,
    ) -> np.ndarray:
        """Probabilities (one row per image read, num_classes); all images are checked
        before any compute. ``skipped`` (``--skip-bad-images``): a list to which each bad
        file (:class:`BadImage`) is added, with one ``note:`` line, instead of stopping the
        job; the rows are then those of the other paths, in order. ``progress``: a bar for
        the reading and one for the compute, on a terminal's stderr only (20,000 files were
        75 s of silence)."""
        check_batch_size(batch_size)
        note, self._decoding_note = self._decoding_note, None  # said once
        if (
            note is not None
            and note[1] != DECODING_VERSION
            and not all(_decodes_alike_in_every_version(p) for p in paths)
        ):
            _note_decoding_version(*note)
        size = (
            self.resize_size,
            self.crop_size,
            self.bits_stored,
            self.dicom_window,
            self.decoder,
        )
        with tempfile.TemporaryDirectory(prefix="medft-predict-") as scratch:
            store = _image_store(len(paths), self.crop_size, Path(scratch))
            blanked: list[str] = []
            with _bar(progress, len(paths), "reading images") as bar:
                paths = _read_images(
                    paths,
                    store,
                    lambda p: load_image(p, *size, reword=self.refusal, blanked=blanked),
                    skipped,
                    bar.update,
                )
            arrays = store[: len(paths)]
            if blanked and self.dicom_window is not None:
                whose = "the checkpoint's " if self.trained_dicom_window is not None else ""
                _note_blank_under_window(sorted(blanked), self.dicom_window, whose)
            out = []
            with _bar(progress, len(arrays), "predicting") as bar:
                for i in range(0, len(arrays), batch_size):
                    raise_if_stopped()  # a stop a gc callback swallowed: before more compute
                    batch = np.asarray(arrays[i : i + batch_size])
                    n = len(batch)
                    if n < batch_size and len(arrays) > batch_size:  # one compiled shape
                        pad = np.zeros((batch_size - n, *batch.shape[1:]), batch.dtype)
                        batch = np.concatenate([batch, pad])
                    out.append(self._compute(batch, batch_size)[:n])
                    bar.update(n)
            del arrays, store  # the memmap's file closes before its folder goes
        probs = np.concatenate(out)
        bad = ~np.isfinite(probs).all(axis=1)
        if bad.any():  # overflowed weights (a run evaluating so would have diverged)
            raise PredictError(
                f"{self.checkpoint}: the model's outputs are NaN or infinite for "
                f"{int(bad.sum())} of {len(probs)} images (first: {paths[int(np.argmax(bad))]}); "
                "its weights overflow"
            )
        return probs

    def _compute(self, batch: np.ndarray, batch_size: int) -> np.ndarray:
        """``self(batch)``; out of device memory is one line naming ``--batch-size``, the
        one thing to lower (recognised as run's sessions do it:
        :func:`~medft_jax.outcomes.fatal_kind`)."""
        from medft_jax.outcomes import OUT_OF_MEMORY, fatal_kind

        try:
            return self(batch)
        except Exception as e:
            fatal = fatal_kind(e)
            if fatal is None or fatal[0] != OUT_OF_MEMORY:
                raise
            raise PredictError(
                f"--batch-size {batch_size}: out of device memory computing a batch of "
                f"{len(batch)} images ({fatal[1]}); give a smaller --batch-size"
            ) from None


def _note_blank_under_window(blank: Sequence[str], window: DicomWindow, whose: str) -> None:
    """One note for the DICOM images the checkpoint's window shows as one grey, their
    values varied: their probabilities are a blank image's, the same for every such scan
    (a run refuses a window that blanks all its files, and notes some:
    :mod:`medft_jax.data.local`)."""
    print(
        f"note: {whose}--dicom-window {window[0]:g},{window[1]:g} shows {len(blank)} DICOM "
        f"image(s) as one grey though their values vary (e.g. {blank[0]}): their "
        "probabilities are a blank image's",
        file=sys.stderr,
    )


def _bar(shown: bool, total: int, what: str) -> tqdm:
    """A progress bar of ``total`` images on stderr, where it is a terminal (tqdm's
    ``disable=None``): a pipe, a log file or a test reads the rows and notes alone."""
    return tqdm(total=total, desc=what, unit="img", disable=None if shown else True, leave=False)


def _read_images(
    paths: Sequence[str],
    store: np.ndarray,
    load: Callable[[str], np.ndarray],
    skipped: list[str] | None,
    done: Callable[[int], Any] = lambda n: None,
) -> list[str]:
    """Loads ``paths`` into ``store`` in order, leaving out (and noting) each bad file when
    ``skipped`` is a list; returns the paths read. All bad: refused, nothing to predict.

    Decoded on :func:`~medft_jax.data.images.decode_threads` threads (one thread read
    20,000 files in 2.7 s of a 17 s job), a bounded window of files ahead of the one
    stored, so the notes, the first error and the rows keep the files' order."""
    read: list[str] = []
    threads = decode_threads()
    window = 4 * threads

    def attempt(p: str) -> np.ndarray | BadImage:
        try:
            return load(p)
        except BadImage as e:  # raised in order, below, as the loop reaches the file
            return e

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        ahead: collections.deque = collections.deque()
        todo = iter(paths)
        for p in itertools.islice(todo, window):
            ahead.append((p, pool.submit(attempt, p)))
        try:
            while ahead:
                p, future = ahead.popleft()
                for q in itertools.islice(todo, 1):
                    ahead.append((q, pool.submit(attempt, q)))
                result = future.result()
                done(1)
                if isinstance(result, BadImage):
                    if skipped is None:
                        raise BadImage(f"{result}{SKIP_HINT}") from None
                    skipped.append(p)
                    print(f"note: skipped bad image (--skip-bad-images): {result}", file=sys.stderr)
                    continue
                store[len(read)] = result
                read.append(p)
        except BaseException:  # a bad file, Ctrl-C: the files queued behind are not read
            for _, f in ahead:
                f.cancel()
            raise
    if not read and paths:
        raise PredictError(
            f"--images: all {len(paths)} file(s) are bad images, left out by "
            "--skip-bad-images (see the notes above); nothing to predict"
        )
    return read


IN_MEMORY_BYTES = 1 << 30
"""Decoded images above this many bytes wait for compute in a memmapped file, not in RAM:
all are checked before any compute, and 100k images at 224 px are 15 GB."""


def _image_store(n: int, crop: int, scratch: Path) -> np.ndarray:
    """Room for ``n`` decoded (crop, crop, 3) uint8 images: an array, or a memmap in
    ``scratch`` when they exceed :data:`IN_MEMORY_BYTES`."""
    shape = (n, crop, crop, 3)
    if n * crop * crop * 3 <= IN_MEMORY_BYTES:
        return np.empty(shape, np.uint8)
    store = np.lib.format.open_memmap(scratch / "images.npy", "w+", np.uint8, shape)
    # Its blocks reserved now: a page of the map a full disk cannot back is a SIGBUS that
    # killed predict without a word (exit 135), the scratch file left behind.
    try:
        reserve_space(scratch / "images.npy")
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise PredictError(
            f"{n} images at {crop} px need {store.nbytes / 2**30:.1f} GiB of scratch space in "
            f"{scratch.parent} (TMPDIR), which has not that much free; set TMPDIR to a "
            "larger disk, or predict the images in parts"
        ) from None
    return store


def _shown_name(name: str, separator: str = ",") -> str:
    """A class name (or, with ``separator`` ``": "``, a path) as the text output prints it:
    JSON-quoted when it could be misread: it holds the separator (a comma separates the
    ranked classes, ``": "`` the path from them), blank or padded names vanish, and a
    character that is not printable (a newline in a file name) would split the row."""
    plain = name.isprintable() and name == name.strip() and not name.startswith('"')
    if name and plain and separator not in name:
        return name
    quoted = json.dumps(name, ensure_ascii=False)
    # json.dumps escapes ASCII controls only: U+2028, U+0085 and the like split lines too
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in quoted)


def _decoding_rule(
    flag: str,
    given: Any,
    trained: Any,
    from_run: bool,
    run_default: str,
    trained_what: str,
    default_is: Any = None,
) -> Any:
    """The rule predict decodes by: the checkpoint's, else the flag's. A flag that disagrees
    with the checkpoint's is refused, and so is any for a run's checkpoint without one
    (``run_default`` says what that run did instead), but ``default_is``: the value that
    decodes as the run's default did (``--bits-stored 16``, which the default's refusal
    of a dark 16-bit file tells the user to give)."""

    def text(value: Any) -> str:
        return ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else str(value)

    if given is None:
        return trained
    if trained is None and from_run and not (default_is is not None and given == default_is):
        raise PredictError(
            f"{flag} {text(given)}: the checkpoint's run {run_default}; leave the flag out"
        )
    if trained is not None and given != trained:
        raise PredictError(
            f"{flag} {text(given)} disagrees with the checkpoint's {text(trained)}, "
            f"{trained_what}; leave the flag out"
        )
    return given


MAX_BATCH_SIZE = 4096
"""Largest ``--batch-size``: more images per forward pass only costs memory."""


def check_batch_size(batch_size: int) -> None:
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise PredictError(
            f"--batch-size must be an integer in [1, {MAX_BATCH_SIZE}], got {batch_size}"
        )


def expand_folders(paths: Sequence[str], mat: bool = False) -> list[str]:
    """``--images`` with each folder replaced by the images under it, sorted, listed as a
    ``folder`` dataset's are (image suffixes or the DICOM marker; hidden entries and
    ``__MACOSX`` skipped; other files counted in one ``note:`` line). Links are followed
    wherever they lead, as a link given as a file is: a folder of links into a PACS export
    is no dataset whose root must hold its files; one that loops or points nowhere is
    listed, a bad file. A folder without an image is refused: nothing would be predicted
    for it, without a word. ``mat``: the checkpoint's run read T1w ``.mat`` files, which
    a folder then lists too (it listed none: "a folder with no image under it")."""
    from collections import Counter

    from medft_jax.data.folder import image_files, reads_as_image, say_left_out, suffix_of
    from medft_jax.data.images import IMAGE_SUFFIXES
    from medft_jax.data.paths import scan_files

    out: list[str] = []
    for given in paths:
        folder = Path(given)
        if not (given and folder.is_dir()):
            kind = special_kind(folder) if given else None
            if kind is not None:  # a reader would block on a pipe for ever
                raise PredictError(f"--images {given}: {kind}, not an image file")
            if not os.path.lexists(given) and any(c in given for c in "*?["):
                raise PredictError(  # was "image file not found", the pattern unsaid
                    f"--images {given}: no such file; predict does not expand patterns: "
                    "leave them unquoted for the shell to expand, or give the folder"
                )
            if folder.suffix.lower() in PATH_LISTS:  # was "corrupt ...: --skip-bad-images"
                raise PredictError(
                    f"--images {given}: a {folder.suffix} file, not an image; --images takes "
                    "image files and folders, not a list of them: pass its paths as "
                    "arguments (e.g. with xargs)"
                )
            if (
                folder.is_file()
                and folder.suffix  # one without is for the reader (a DICOM, or named)
                and folder.suffix.lower() != ".mat"
                and not reads_as_image(folder)
            ):
                # A MedMNIST .npz, a NIfTI volume: "corrupt ...: --skip-bad-images" (a .mat
                # is a T1w checkpoint's, refused by the reader for any other)
                raise PredictError(
                    f"--images {given}: not a file predict reads as an image (by its suffix "
                    f"{suffix_of(folder)!r}: {'/'.join(IMAGE_SUFFIXES)}, or a DICOM file); a "
                    "folder holding it leaves it out"
                )
            out.append(given)
            continue
        others: Counter[str] = Counter()
        try:
            found = image_files(folder, folder, others, links_anywhere=True)
            if mat:
                found = sorted(found + scan_files(folder, folder, (".mat",), links_anywhere=True))
                others.pop(".mat", None)
        except DataError as e:
            raise PredictError(f"--images {given}: {e}") from None
        say_left_out(folder, others)
        if not found:
            raise PredictError(f"--images {given}: a folder with no image under it")
        out += [str(p) for p in found]
    return out


PATH_LISTS = (".csv", ".tsv", ".txt", ".lst", ".json", ".jsonl")
"""Suffixes of the lists of paths a user may hand ``--images`` (a labels CSV, a file
list): text, never an image."""


def check_flags(args: argparse.Namespace) -> None:
    """Names the flag at fault before any work (``--top`` above the class count shows all)."""
    check_batch_size(args.batch_size)
    check_bits_stored(args.bits_stored)
    parse_dicom_window(args.dicom_window)
    if args.top is not None and args.top < 1:
        raise PredictError(f"--top must be an integer >= 1, got {args.top}")
    if args.top is not None and args.json:
        raise PredictError(
            "--top with --json: --json writes every class's probability; leave one out"
        )
    check_checkpoint_is_folder(args.checkpoint)
    check_out_file(args.out)


TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
"""Files of a torchvision state_dict, which ``weights_port`` turns into a checkpoint."""


def check_checkpoint_is_folder(checkpoint: str) -> None:
    """Refuses a state_dict file given as ``--checkpoint``, naming the port that reads it:
    predict reads checkpoint folders, which say what the head means (classes, sigmoid)."""
    path = Path(checkpoint).expanduser()
    if path.suffix.lower() in TORCH_SUFFIXES and path.is_file():
        raise PredictError(
            f"--checkpoint {checkpoint}: a torchvision state_dict file, expected a checkpoint "
            f"folder; port it first: python -m weights_port --arch ARCH --torch-weights "
            f"{checkpoint} --out DIR (with --class-names, --multilabel, --image-size as it "
            "was trained; BUILD.md, Porting weights), then --checkpoint DIR"
        )


def check_out_file(out: str | None) -> None:
    """Refuses an ``--out`` that cannot be written, before any model work: an empty path,
    a folder (or a path ending in ``/``), a link that loops, a socket, a file not writable,
    or a parent folder that is missing or not writable (where the rows are written whole,
    then renamed into place). A link is judged by the file it points to, where the rows go
    (:func:`write_rows`): a dangling one's missing folder was made. A device or named pipe
    (``/dev/null``) is written to, as the shell's ``>`` does: only its own permission
    counts. With no ``--out``, a closed stdout is refused here, not after the compute."""
    if out is None:
        if sys.stdout is None:
            raise PredictError("stdout is closed; give --out FILE to write the rows to")
        return
    if not out:
        raise PredictError("--out '': an empty path; expected a file to write the rows to")
    if out.endswith(("/", os.sep)):
        raise PredictError(f"--out {out}: a folder's path (it ends in /), expected a file")
    try:
        os.path.realpath(Path(out).expanduser(), strict=True)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise PredictError(f"--out {out}: a link that loops; expected a file") from None
    # Judged through links by stat, not by the resolved name: /dev/stdout into a pipe
    # resolves to /proc/<pid>/fd/pipe:[N], a name no file has.
    kind = special_kind(Path(out).expanduser())
    if kind == "a socket":
        raise PredictError(f"--out {out}: {kind}, expected a file to write the rows to")
    if kind is not None:
        if not os.access(Path(out).expanduser(), os.W_OK):
            raise PredictError(f"--out {out}: not writable (its permissions), expected a file")
        return  # written to in place (write_rows), not replaced: its folder is /dev's
    path = Path(os.path.realpath(Path(out).expanduser()))
    if path.is_dir():
        raise PredictError(f"--out {out!r}: expected a file to write the rows to, not a folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise PredictError(f"--out {out}: not writable (its permissions), expected a file")
    parent = path.parent
    for above in (parent, *parent.parents):  # a file on the way is named as one
        if above.exists() and not above.is_dir():
            raise PredictError(f"--out {out}: {above} is a file, expected a folder")
    if not parent.is_dir():
        raise PredictError(f"--out {out}: its folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PredictError(f"--out {out}: its folder {parent} is not writable")


def check_out_not_an_input(out: str, images: Sequence[str], checkpoint: str) -> None:
    """Refuses an ``--out`` that is one of the images read (or a link or hard link to one),
    or a file of ``--checkpoint``: the rows written over it would destroy an input the
    user meant to keep, after a run that said nothing was wrong."""
    target = Path(out).expanduser()
    real = target.resolve()
    folder = Path(checkpoint).expanduser().resolve()
    if real == folder or folder in real.parents:
        raise PredictError(
            f"--out {out}: inside --checkpoint {checkpoint}, whose files the rows would "
            "overwrite; write them elsewhere"
        )
    if folder.name == "best" and _a_run_file(real, folder.parent):
        raise PredictError(
            f"--out {out}: a file of the run folder {folder.parent} that --checkpoint's "
            "run keeps (its record, notes, lock or checkpoints), which the rows would "
            "overwrite; write them elsewhere"
        )
    try:
        out_stat = target.stat()
    except OSError:  # not there yet: only a path resolving to it could be it
        out_stat = None
    for image in images:
        path = Path(image).expanduser()
        same = path.resolve() == real
        if not same and out_stat is not None:
            try:
                same = os.path.samestat(path.stat(), out_stat)
            except OSError:  # a bad file, named by its reader later
                same = False
        if same:
            raise PredictError(
                f"--out {out}: is the input image {image}, which the rows would overwrite; "
                "write them elsewhere"
            )


def _reads_mat(checkpoint: str) -> bool:
    """Whether the checkpoint's run read T1w ``.mat`` files (a folder of them is then
    listed); a checkpoint that cannot be read says so later, when it is loaded."""
    from medft_jax.checkpoints.model import load_metadata

    try:
        return load_metadata(checkpoint).get("decoder") == "t1w_mri"
    except Exception:  # named by Predictor, in its one line
        return False


def check_out_not_listed(out: str, images: Sequence[str]) -> None:
    """Refuses an ``--out`` inside an ``--images`` folder that the folder's listing would
    read as an image (``rows.png``; not ``rows``, nor a hidden ``.rows.png``, which it
    leaves out): the next predict on that folder
    failed on it as a corrupt image, or left it out under ``--skip-bad-images``."""
    from medft_jax.data.images import IMAGE_SUFFIXES

    real = Path(out).expanduser().resolve()
    if real.exists() or real.suffix.lower() not in IMAGE_SUFFIXES or real.name.startswith("."):
        return  # one there is an input (check_out_not_an_input), or left out by the listing
    for given in images:
        folder = Path(given).expanduser()
        if given and folder.is_dir() and folder.resolve() in real.parents:
            raise PredictError(
                f"--out {out}: inside --images {given}, under a name its listing reads as "
                "an image (the next predict on it would read the rows as one); write them "
                "elsewhere, or name them .txt or .jsonl"
            )


def _a_run_file(path: Path, run: Path) -> bool:
    """Whether ``path`` (resolved) is one of the files a run keeps in its folder ``run``
    (``record.json``, ``failed.json``, its lock, ``confirmed.json``) or inside one of its
    subfolders (``checkpoints/``, ``previous/``): the rows written there would leave the
    run unreadable by ``run`` and ``report`` until retrained. Another new file beside them
    (``runs/<run>/predictions.txt``) is the user's to write."""
    from medft_jax.locks import LOCK_NAME
    from medft_jax.results import CONFIRMED_NAME, FAILURE_NAME, RECORD_NAME

    if path.parent == run:
        return path.name in (RECORD_NAME, FAILURE_NAME, CONFIRMED_NAME, LOCK_NAME)
    return run in path.parents


def _rows(
    predictor: Predictor, paths: Sequence[str], probs: np.ndarray, args: argparse.Namespace
) -> str:
    """The output, one line per image: a JSON object (``--json``), or ``PATH: NAME P, ...``
    with the ``--top`` classes ranked, the path and names quoted where they could be misread
    (:func:`_shown_name`)."""
    top = args.top or (len(predictor.class_names) if predictor.multilabel else 3)
    lines = []
    for path, row in zip(paths, probs, strict=True):
        if args.json:
            record = {
                "image": path,
                "precision": predictor.precision,  # the checkpoint's, unless --precision said
                "classes": list(predictor.class_names),
            }
            lines.append(json.dumps({**record, "probs": [float(v) for v in row]}))
        else:
            ranked = np.argsort(-row, kind="stable")[:top]
            shown = ", ".join(
                f"{_shown_name(predictor.class_names[i])} {row[i]:.4f}" for i in ranked
            )
            lines.append(f"{_shown_name(path, ': ')}: {shown}")
    return "".join(f"{line}\n" for line in lines)


_STDOUT_NAMES = ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1")
"""``--out`` names of this process's stdout, written as stdout is (never replaced)."""


def write_rows(text: str, out: str | None) -> None:
    """``text`` to stdout, or whole to ``out`` (a temporary file beside it, renamed into
    place: a full disk leaves the old file, not part of the rows). An ``out`` that is a
    link is written through, as the shell's ``>`` does (the rename replaced the link by a
    file, leaving the file it pointed to, ``latest.txt -> 2026-12-07.txt``, unchanged); a
    file replaced keeps its mode and owner (a private 0600 file became 0644). A device or
    named pipe (``/dev/null``) is written to in place: the rename made it a plain file
    (``/dev/null`` of the whole machine, as root). A failed write names where it went
    (``stdout``), not ``?``."""
    if out is not None and os.path.normpath(out) in _STDOUT_NAMES:
        out = None  # the shell's stdout as it is (`>> log` appends; a rename replaced log)
    if out is not None:
        from medft_jax.atomic import write_bytes

        data = text.encode("utf-8", "surrogateescape")
        if special_kind(Path(out).expanduser()) is not None:  # through links: /dev/stdout
            with naming_os_errors(out), open(Path(out).expanduser(), "wb") as f:
                f.write(data)
            return
        target = Path(os.path.realpath(Path(out).expanduser()))
        write_bytes(target, data, like_existing=True)
        return
    if sys.stdout is None:
        raise PredictError("stdout is closed; give --out FILE to write the rows to")
    with naming_os_errors("stdout"):
        sys.stdout.write(text)
        sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0, or 2 with one ``error:`` line for bad input (see ``cli_main``)."""
    return cli_main(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    p = ArgumentParser(
        prog="python -m experiments.predict",
        description=__doc__.split("\n")[0],
        epilog=exit_statuses(s0="predicted"),
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        type=path_flag("a model checkpoint folder"),
        metavar="DIR",
        help="model checkpoint folder (from weights_port or a run's best parameters)",
    )
    p.add_argument(
        "--images",
        required=True,
        nargs="+",
        metavar="FILE",
        help="image files, or folders: every image under one, as --dataset folder lists them",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object per image: {"image": PATH, "precision": fp32|bf16, '
        '"classes": [NAME, ...], "probs": [...]} (probs in the classes\' order)',
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        help="write the rows to FILE, whole or not at all (a temporary file beside it, "
        "renamed into place), not to stdout; its folder must exist",
    )
    p.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out unreadable or undecodable images (truncated, empty, a link that "
        "loops, multi-frame), each named in one note: line, and predict the others (not "
        "sound files the decoding rules refuse until told more: a 16-bit file's bits, a "
        "DICOM window, a decoder plugin)",
    )
    p.add_argument(
        "--top",
        type=int,
        help="classes shown per image, text output only (>= 1; default 3, or every class for "
        "a multilabel checkpoint, whose labels are each judged alone)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help=f"images per forward pass (1 to {MAX_BATCH_SIZE})",
    )
    add_bits_stored_flag(p, scope="", unset="the checkpoint's, if it has one, else 16")
    add_dicom_window_flag(
        p, scope="", unset="the checkpoint's, if it has one, else each file's own"
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="compute precision (default: the checkpoint's, a run's --precision, else fp32)",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (shown on a terminal only: reading the images, then computing)",
    )
    args = p.parse_args(argv)
    check_flags(args)
    from medft_jax.runtime import set_up_process

    set_up_process(distributed=False)
    if args.out is not None:
        check_out_not_listed(args.out, args.images)
    images = expand_folders(args.images, mat=_reads_mat(args.checkpoint))
    if args.out is not None:
        check_out_not_an_input(args.out, images, args.checkpoint)
    predictor = Predictor(args.checkpoint, args.bits_stored, args.precision, args.dicom_window)
    skipped: list[str] | None = [] if args.skip_bad_images else None
    probs = predictor.predict_files(images, args.batch_size, skipped, progress=not args.no_progress)
    # One occurrence left out per skip: a path listed twice whose file broke between its
    # two reads keeps the row it was read for (a set dropped both, and the rows misaligned).
    gone = Counter(skipped or ())
    kept = []
    for path in images:
        if gone[path]:
            gone[path] -= 1
        else:
            kept.append(path)
    write_rows(_rows(predictor, kept, probs, args), args.out)
    return 0


if __name__ == "__main__":
    exit_command(main())
