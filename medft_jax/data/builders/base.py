"""What the eight paper tasks share: the task description, the config and the TFDS builder.

A task module (``chexpert.py``, ``mura.py``, ...) states its facts as a
:class:`Task` (class names, multilabel, evaluation grouping, the on-disk
layout) and a ``parse(root, config) -> {split: [Example]}`` that reads the
official layout's CSVs/listings without decoding images. Its builder is a
:class:`MedicalBuilder` subclass that only names the task.

The builder writes ArrayRecord through TFDS: each image decoded once,
resized (shorter side ``resize_size``) and centre-cropped to
``crop_size`` exactly as torchvision, stored uint8 RGB, PNG-encoded
(lossless, about half the bytes of raw pixels). TFDS writes into a
temporary directory and renames it when done, so an interrupted preparation
never looks finished. Reading the result needs no TensorFlow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from medft_jax.data import cache
from medft_jax.data.errors import BitsUndeclared, DataError, NotABadFile
from medft_jax.data.examples import Example, validate
from medft_jax.data.images import ImageReader, open_image
from medft_jax.data.locations import variant_name

VERSION = "1.0.0"
UNLISTED_SPLIT = "train"
"""Where a file skipped while the listing was read (``--skip-bad-images``) is counted:
unreadable, it has no label or patient to place it, and the cache and run records
count skipped images by split only."""


@dataclasses.dataclass
class MedicalConfig(tfds.core.BuilderConfig):
    """One prepared variant of a task: preprocessing sizes, split seed, label policy.

    Build it with :meth:`make`, which derives the name from the values, so
    every variant lands in its own directory.
    """

    resize_size: int = 256
    crop_size: int = 224
    seed: int = 0
    val_fraction: float = 0.1
    uncertain: str = "ones"
    split_by: str = "patient"

    @classmethod
    def make(
        cls,
        *,
        resize_size: int = 256,
        crop_size: int = 224,
        seed: int = 0,
        val_fraction: float = 0.1,
        uncertain: str | None = None,
        split_by: str | None = None,
    ) -> MedicalConfig:
        return cls(
            name=config_name(resize_size, crop_size, seed, val_fraction, uncertain, split_by),
            resize_size=resize_size,
            crop_size=crop_size,
            seed=seed,
            val_fraction=val_fraction,
            uncertain=uncertain or "ones",
            split_by=split_by or "patient",
        )


def config_name(
    resize_size: int,
    crop_size: int,
    seed: int,
    val_fraction: float,
    uncertain: str | None,
    split_by: str | None = None,
) -> str:
    """``r256_c224_s0`` (+ ``_t2`` for a seed above 0, ``_vf15`` for a non-default val
    fraction, ``_uzeros``, ``_byimage2``).

    Defaults add nothing, so variants prepared before an option existed keep their names.
    A fraction of a whole percent is named by it (``vf15``), any other exactly
    (``vf12p5`` for 0.125): rounded, 0.115 and 0.125 shared one prepared split.
    """
    vf = None if val_fraction == 0.1 else _percent_name(val_fraction)
    u = None if uncertain in (None, "ones") else uncertain
    by = None if split_by in (None, "patient") else split_by
    # ISIC by image draws its test images in the order of their names since (isic2020.
    # carve_images), no longer train.csv's row order: its variants prepared before may hold
    # another split of the same seed, so they are named anew, never read.
    by = "image2" if by == "image" else by
    # Seeds above 0 carve test from their own stream since (examples.carve_stream): their
    # variants prepared before hold other splits, so they are named anew, never read.
    t = 2 if seed else None
    return variant_name(resize_size, crop_size, s=seed, t=t, vf=vf, u=u, by=by)


def _percent_name(fraction: float) -> str:
    """``fraction`` in percent for a name: ``15``, or ``12p5`` (letters and digits only)."""
    percent = fraction * 100
    if abs(percent - round(percent)) < 1e-9:
        return str(round(percent))
    return format(percent, ".10g").replace(".", "p").replace("-", "m")


@dataclasses.dataclass(frozen=True)
class Task:
    """The facts of one paper task."""

    name: str
    class_names: tuple[str, ...]
    parse: Callable[..., dict[str, list[Example]]]
    """``parse(root, config)`` (and ``skipped=`` where :attr:`reads_files`)."""
    layout: str
    multilabel: bool = False
    eval_grouping: str = "image"
    decode: Callable[[Path], Image.Image] = open_image
    options: tuple[str, ...] = ()
    """Config fields beyond sizes/seed/val_fraction this task reads (e.g. ``uncertain``)."""
    reads_files: bool = False
    """Whether ``parse`` reads the image files themselves (T1w: label and patient are in
    each ``.mat``) and so takes ``skipped=``: with ``--skip-bad-images`` a file it cannot
    read is left out and counted, as a file that fails to decode is, rather than stop the
    listing the flag was given to get past."""

    def parse_checked(
        self, root: Path, config: MedicalConfig, *, skipped: list[str] | None = None
    ) -> dict[str, list[Example]]:
        """``parse`` + :func:`~medft_jax.data.examples.validate`, naming the manual dir.

        ``skipped``: a list (``--skip-bad-images``) to which a task that
        :attr:`reads_files` appends the ids of the files it could not read and left
        out; ``None`` (the default): such a file is an error naming it.
        """
        root = Path(root)
        refuse_packed(root)
        if not root.is_dir():
            raise DataError(f"--manual-dir {root} is not a directory; expected {self.layout}")
        try:
            if skipped is not None and self.reads_files:
                splits = self.parse(root, config, skipped=skipped)
            else:
                splits = self.parse(root, config)
        except DataError as err:
            hint = layout_hint(root) if self.layout in str(err) else ""
            if not hint:
                raise
            raise DataError(f"{err}; {hint}") from None
        validate(splits, self.class_names, self.multilabel, where=f"{self.name} in {root}")
        return splits


ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz", ".7z", ".rar")
"""Downloads still packed: a manual dir holding one of these was not unpacked yet."""


def refuse_packed(manual_dir: Path) -> None:
    """Refuses a ``--manual-dir`` that names the download itself (``X.zip``), saying to
    unpack it: "is not a directory" left the user to guess."""
    if manual_dir.is_file() and manual_dir.name.lower().endswith(ARCHIVES):
        raise DataError(
            f"--manual-dir {manual_dir}: is the packed download, not its folder: unpack it "
            f"(into {manual_dir.parent}), then pass the folder it makes"
        )


def layout_hint(root: Path) -> str:
    """What a manual dir that failed its layout check seems to hold instead: a download
    not unpacked yet, or the release unpacked into a folder of its own name
    (``X/X/...``); empty when neither."""
    entries = _visible(root)
    packed = sorted(e.name for e in entries if e.is_file() and e.name.lower().endswith(ARCHIVES))
    if packed:
        shown = ", ".join(packed[:3]) + (f" and {len(packed) - 3} more" if len(packed) > 3 else "")
        return f"it holds {shown}: unpack it there first"
    if len(entries) == 1 and entries[0].is_dir():
        inner = _visible(entries[0])
        nested = len(inner) == 1 and inner[0].is_dir() and inner[0].name == entries[0].name
        if nested or entries[0].name == root.name:
            return f"unpacked one folder too deep? try --manual-dir {entries[0]}"
    return ""


def _visible(folder: Path) -> list[Path]:
    try:
        return [e for e in folder.iterdir() if not e.name.startswith((".", "__MACOSX"))]
    except OSError:
        return []


def paper_decode(task: Task) -> Callable[[Path], Image.Image]:
    """``task.decode``, with a 16-bit file of undeclared bits refused in a paper task's terms.

    The generic message asks for ``--bits-stored``, which the paper tasks refuse (their
    variants are named and checked without it): the user would go from one error to
    another. Their official images are 8-bit, so such a file is a converted copy.
    """

    def decode(path: Path) -> Image.Image:
        try:
            return task.decode(path)
        except BitsUndeclared as err:
            raise NotABadFile(
                f"{err.path}: {err.what}; the official {task.name} images are 8-bit: replace "
                "it with the file from the official release, or save it as 8-bit, scaled as "
                "you want it (--bits-stored applies to --dataset folder and csv only)"
            ) from None

    return decode


def name_runs(numbers: Iterable[int], name: Callable[[int], str], limit: int = 8) -> str:
    """``numbers`` as names, consecutive runs joined: ``b004.tif, is017.tif..is100.tif``.

    Why runs: a partial copy misses whole stretches (an unzipped part, a class folder cut
    short), and naming each of 766 files would not be one readable line. Beyond ``limit``
    runs the rest is counted, not named.
    """
    runs: list[list[int]] = []
    for n in sorted(set(numbers)):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    named = [name(a) if a == b else f"{name(a)}..{name(b)}" for a, b in runs[:limit]]
    rest = sum(b - a + 1 for a, b in runs[limit:])
    return ", ".join(named) + (f" and {rest} more" if rest else "")


class MedicalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS builder of a :class:`Task` read from a manual directory.

    Construct with ``config=MedicalConfig.make(...)``, ``data_dir``,
    ``file_format="array_record"`` and optionally ``skip_bad_images=True``
    (bad images are then skipped and listed in ``info.metadata``).
    """

    VERSION = tfds.core.Version(VERSION)
    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = []
    TASK: ClassVar[Task]

    def __init__(self, *, skip_bad_images: bool = False, **kwargs: Any) -> None:
        self.skip_bad_images = skip_bad_images
        super().__init__(**kwargs)

    def _log_download_done(self) -> None:
        """Says nothing: TFDS's "prepared to <dir>. Subsequent calls will reuse this data"
        named the temporary folder a prepare writes into (``.1.0.0.tmp-PID@host/...``),
        removed once swapped into place; ``experiments.prepare`` says what was prepared."""

    def _info(self) -> tfds.core.DatasetInfo:
        task, config = self.TASK, self.builder_config
        c = config.crop_size
        if task.multilabel:
            label = tfds.features.Tensor(shape=(len(task.class_names),), dtype=np.float32)
        else:
            label = tfds.features.ClassLabel(names=list(task.class_names))
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(c, c, 3), encoding_format="png"),
                "label": label,
                "id": tfds.features.Text(),
                "patient": tfds.features.Text(),
                "group": tfds.features.Text(),
            }
        )
        metadata = tfds.core.MetadataDict(
            task=task.name,
            class_names=list(task.class_names),
            multilabel=task.multilabel,
            eval_grouping=task.eval_grouping,
            resize_size=config.resize_size,
            crop_size=config.crop_size,
            split_seed=config.seed,
            val_fraction=config.val_fraction,
            uncertain=config.uncertain if "uncertain" in task.options else None,
            split_by=config.split_by if "split_by" in task.options else None,
            skipped_bad_images={},
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{task.name}: {task.layout}",
            features=features,
            metadata=metadata,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        skipped: list[str] | None = [] if self.skip_bad_images else None
        splits = self.TASK.parse_checked(
            Path(dl_manager.manual_dir), self.builder_config, skipped=skipped
        )
        if skipped:
            # Files skipped while listing have no label or patient, so no split: they are
            # counted under the training pool every split of such a task is carved from.
            self.info.metadata["skipped_bad_images"].setdefault(UNLISTED_SPLIT, []).extend(skipped)
        return {name: self._generate_examples(members, name) for name, members in splits.items()}

    def _generate_examples(self, examples: list[Example], split: str):
        config = self.builder_config
        reader = ImageReader(
            config.resize_size,
            config.crop_size,
            skip_bad_images=self.skip_bad_images,
            decode=paper_decode(self.TASK),
        )
        skipped, kept_labels = [], []
        images = reader.read_iter([ex.path for ex in examples])  # decoded in threads
        for ex, image in zip(examples, images, strict=True):
            if image is None:
                skipped.append(ex.id)
                self.info.metadata["skipped_bad_images"].setdefault(split, []).append(ex.id)
                continue
            kept_labels.append(ex.label)
            label = np.asarray(ex.label, np.float32) if self.TASK.multilabel else ex.label
            yield (
                ex.id,
                {
                    "image": image,
                    "label": label,
                    "id": ex.id,
                    "patient": ex.patient,
                    "group": ex.group,
                },
            )
        # As the folder/csv cache does: what --skip-bad-images left must still train every
        # class and fill every split (else TFDS's "No examples were yielded" assertion).
        if skipped and not kept_labels:
            raise DataError(
                f"split {split!r}: every image was skipped as bad ({len(skipped)}, "
                "--skip-bad-images); repair or replace the files"
            )
        if skipped and split == "train":
            meta = {"class_names": list(self.TASK.class_names), "multilabel": self.TASK.multilabel}
            cache.check_classes_left(np.asarray(kept_labels), meta, len(skipped))


def refuse_two_copies(nested: Path, manual_dir: Path, listing: str) -> None:
    """Refuse a ``--manual-dir`` that holds the release's ``listing`` itself and a second
    copy of the release in ``nested``, naming both: whichever was taken, the other (an older
    or pilot copy unpacked a second time inside the release) was silently not prepared."""
    raise DataError(
        f"{manual_dir} and {nested} both hold the release's {listing} (a second copy "
        "unpacked inside the release?); point --manual-dir at the one to prepare"
    )
