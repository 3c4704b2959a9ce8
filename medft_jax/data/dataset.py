"""The :class:`Dataset` the training loop holds: splits as arrays, facts, batch iterators.

Usage::

    ds = medft_jax.data.load("bach", data_dir=..., resize_size=256, crop_size=224)
    ds.num_classes, ds.class_names, ds.multilabel, ds.eval_grouping
    for epoch in range(start, epochs):
        it = ds.train_iter(batch_size=64, seed=run_seed, epoch=epoch)
        it.set_state(saved)                # optional: resume mid-epoch
        for batch in it:                   # {"image": uint8 NHWC, "label", "mask", "index"}
            ...
            saved = it.get_state()         # JSON-able; store it with the checkpoint
    for batch in ds.eval_batches("val", batch_size=256):
        ...                                # padded last batch: use batch["mask"]

Labels are int32 class ids ``(B,)``, or float32 multi-hot ``(B, C)`` when
``multilabel``. Images stay uint8 until the jitted step normalises them on
the device (:func:`medft_jax.data.preprocess.normalize`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np

from medft_jax.data import pipeline
from medft_jax.data.arrays import ArraySplit, group_mean
from medft_jax.data.errors import DataError
from medft_jax.data.options import official_splits
from medft_jax.names import LOCAL_KINDS, TASK_NAMES


def split_fingerprint_of(splits: dict[str, tuple[Any, Any]]) -> str:
    """:meth:`Dataset.split_fingerprint` of ``{split: (ids, labels)}``: also of a listing
    not decoded yet (a dry run compares it with the records')."""
    h = hashlib.sha256()
    for name in sorted(splits):
        ids, labels = splits[name]
        ids = np.asarray(ids).astype(str)
        order = np.argsort(ids, kind="stable")
        h.update(f"{name}\0{len(ids)}\0".encode())
        h.update("\0".join(ids[order].tolist()).encode())
        h.update(np.ascontiguousarray(np.asarray(labels, np.float32)[order]).tobytes())
    return h.hexdigest()[:16]


def order_fingerprint_of(ids: dict[str, Any]) -> str:
    """:meth:`Dataset.order_fingerprint` of ``{split: ids}``: also of a listing not decoded
    yet (a dry run compares it with the records')."""
    h = hashlib.sha256()
    for name in sorted(ids):
        listed = np.asarray(ids[name]).astype(str).tolist()
        h.update(f"{name}\0{len(listed)}\0".encode())
        h.update("\0".join(listed).encode())
    return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A loaded dataset: its splits and what the training code needs to know about it.

    Attributes:
      name: the registry name it was loaded by.
      splits: ``{"train", "val", "test"}`` -> :class:`ArraySplit`.
      class_names: one name per output unit.
      multilabel: labels are multi-hot (sigmoid per class) rather than one id.
      eval_grouping: ``"image"``, or ``"study"`` when a prediction is the mean
        of its study's images (MURA); see :meth:`grouped_scores`.
      metadata: everything else (sizes, skipped bad images, source facts).
    """

    name: str
    splits: dict[str, ArraySplit]
    class_names: tuple[str, ...]
    multilabel: bool = False
    eval_grouping: str = "image"
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_arrays(
        cls,
        name: str,
        splits: dict[str, tuple[np.ndarray, np.ndarray] | ArraySplit],
        class_names: tuple[str, ...] | list[str],
        *,
        multilabel: bool = False,
    ) -> Dataset:
        r"""A dataset held in memory, for :func:`medft_jax.fit.run_one`\ ``(config,
        dataset=...)``: ``splits`` maps ``train``, ``val`` and ``test`` to ``(images,
        labels)`` (uint8 ``(N, H, W, 3)`` at the run's ``image_size``; int class ids
        ``(N,)``, or 0/1 multi-hot ``(N, C)`` with ``multilabel``) or to
        :class:`ArraySplit`\ s (patients and groups of their own).

        Every label is checked against ``class_names`` here, naming the split: a class
        id past them had trained into a NaN loss ("try a smaller --lr"). The content
        fingerprint that names the run is computed from the arrays, so other arrays
        are another run, never one skipped as done. ``name`` is the record's dataset:
        letters, digits and ``_ . @ / -``, and not a built-in dataset's (``bach``,
        ``demo``, ``medmnist/...``, ``folder``), whose records it would join in reports
        and ``--vs-paper`` and whose file decoder predict would use."""
        from medft_jax.data.arrays import make_split
        from medft_jax.data.cache import fingerprint_of
        from medft_jax.names import dataset_name_error, recorded_dataset_error

        problem = recorded_dataset_error(name)
        if problem:
            raise DataError(f"dataset name {name!r} {problem}")
        if dataset_name_error(name) is None:
            raise DataError(
                f"dataset name {name!r} is a built-in dataset's: its records would join that "
                "dataset's in reports and --vs-paper; name your arrays otherwise"
            )
        class_names = tuple(class_names)
        missing = [s for s in ("train", "val", "test") if s not in splits]
        if missing:
            raise DataError(f"dataset {name!r}: no {missing[0]!r} split (give train, val, test)")
        built = {}
        for split, value in splits.items():
            if isinstance(value, ArraySplit):
                built[split] = value
                continue
            try:
                built[split] = make_split(
                    np.asarray(value[0]), np.asarray(value[1]), prefix=f"{split}/"
                )
            except DataError as e:  # the array's shape, said without the split it is of
                raise DataError(f"dataset {name!r} split {split!r}: {e}") from None
        for split, arrays in built.items():
            _check_labels(name, split, np.asarray(arrays.labels), len(class_names), multilabel)
        fingerprint = fingerprint_of(built, class_names, multilabel)
        return cls(name, built, class_names, multilabel, metadata={"fingerprint": fingerprint})

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, 3)`` of every image."""
        return self.split("train").image_shape

    def split(self, name: str) -> ArraySplit:
        try:
            return self.splits[name]
        except KeyError:
            known = ", ".join(self.splits)
            raise DataError(f"{self.name} has no split {name!r}; splits: {known}") from None

    def split_fingerprint(self) -> str:
        """A hash of which example is in which split with which label: not of the pixels.

        The data fingerprint (of the pixels) differs between archs by design (each
        its own resize); this one does not, so two archs' runs on one dataset can be
        checked to have trained, chosen and tested on the same examples: another
        ``--val-fraction``, ``--test-fraction``, ``--patient-folders`` or set of
        skipped images gives another split, and tables comparing them would not
        say so.
        """
        return split_fingerprint_of({k: (v.ids, v.labels) for k, v in self.splits.items()})

    def order_fingerprint(self) -> str:
        """A hash of each split's example ids in the order the splits hold them.

        :meth:`split_fingerprint` sorts the ids (which examples, not in which order);
        the order is the listing's (a labels CSV's rows), and the training batches
        and so a run's numbers follow it: a CSV with only its rows reordered is
        other data (its data fingerprint differs), which a dry run finds from the
        listing with this.
        """
        return order_fingerprint_of({k: v.ids for k, v in self.splits.items()})

    def num_examples(self, split: str) -> int:
        return len(self.split(split))

    def check_scorable(self, splits: tuple[str, ...] = ("val", "test")) -> None:
        """Refuses an evaluation split in which a class's labels take one value.

        Such a class has no ROC AUC (and, without a positive, no AP), and the
        macro means of :func:`medft_jax.metrics.compute_metrics` would then
        be over the other classes: a number that reads like the others and
        is not comparable with them. A user's folder or CSV is checked on its
        listing already (:func:`medft_jax.data.local`), so a dry run and a sweep
        refuse the dataset once; this check, before any training, covers every
        other source and what decoding changed: ``--skip-bad-images`` can take a
        class's only val or test image away after the splits were carved, and the
        message then names the files it left out there (:meth:`_skipped_hint`),
        the cause a fraction would not fix. A user's dataset is named by its folder
        (``metadata["root"]``), not by ``folder``/``csv``, which every user's
        dataset is called.
        """
        labels = {k: np.asarray(self.split(k).labels) for k in (*self.splits, *splits)}
        gap = find_unscorable(labels, self.num_classes, self.multilabel, splits)
        if gap is None:
            return
        where = self.metadata.get("root") or self.name
        raise DataError(
            unscorable_message(str(where), gap, self.class_names, self.multilabel)
            + self._skipped_hint(gap.split)
            + self._scorable_hint(gap, labels)
        )

    def _skipped_hint(self, split: str) -> str:
        """``--skip-bad-images left out N of its files (e.g. X): ...; `` when the cache
        skipped bad images of ``split``, else ``""``: the class may have lost its images
        there, which the split's size or fraction would not explain."""
        skipped = self.metadata.get("skipped_bad_images")
        ids = skipped.get(split) if isinstance(skipped, dict) else None
        if not ids:
            return ""
        n = len(ids)
        return (
            f"--skip-bad-images left out {n} of its files (e.g. "
            f"{sorted(map(str, ids))[0]}): repair or replace {'them' if n != 1 else 'it'}; "
        )

    def _scorable_hint(self, gap: Unscorable, labels: dict[str, np.ndarray]) -> str:
        """What gives ``gap.split`` every class, naming only what applies to this dataset.

        A user's folder or CSV carves the val and test splits it does not give by the
        fractions given (:func:`local_scorable_hint`); a paper task carves its val split
        by ``--val-fraction`` at ``experiments.prepare`` and fixes its test split
        (official, or a fixed share); MedMNIST and CholecT50 come with every split.
        """
        fixed = official_splits(self.name)
        if fixed is not None:
            return f"its splits are {fixed}: is your copy of its data complete?"
        if self.name in TASK_NAMES:
            if gap.split == "val":
                return (
                    f"give the split {_wanted(gap)} (a larger --val-fraction at "
                    "experiments.prepare)"
                )
            return f"{self.name} fixes this split: is your copy of its data complete?"
        if self.name in LOCAL_KINDS and "root" in self.metadata:
            from medft_jax.data.local import given_by  # the loader's layout rules

            options = self.metadata.get("options") or {}
            root = self.metadata["root"]
            given = {s: given_by(self.name, root, options, s) for s in ("val", "test")}
            patients = {k: np.asarray(v.patients).astype(str) for k, v in self.splits.items()}
            return local_scorable_hint(gap, labels, patients, given, self.multilabel)
        return f"give the split {_wanted(gap)} or drop the class"

    def steps_per_epoch(self, batch_size: int, split: str = "train") -> int:
        """Full training batches per epoch (the remainder is dropped, reshuffled each epoch)."""
        return self.num_examples(split) // batch_size

    def train_iter(
        self,
        batch_size: int,
        *,
        seed: int,
        epoch: int = 0,
        split: str = "train",
        shard_index: int | None = None,
        shard_count: int | None = None,
        num_threads: int = 2,
        prefetch: int = 4,
        num_workers: int = 0,
    ) -> pipeline.BatchIterator:
        """One epoch of shuffled full batches of the global size ``batch_size``.

        Same (seed, epoch) -> the same batches. With several hosts each gets
        its ``batch_size / process_count`` slice of every global batch.
        """
        return pipeline.train_batches(
            self.split(split),
            split,
            batch_size,
            seed=seed,
            epoch=epoch,
            shard_index=shard_index,
            shard_count=shard_count,
            num_threads=num_threads,
            prefetch=prefetch,
            num_workers=num_workers,
        )

    def eval_batches(
        self,
        split: str,
        batch_size: int,
        *,
        shard_index: int | None = None,
        shard_count: int | None = None,
        num_threads: int = 2,
        prefetch: int = 4,
    ) -> pipeline.BatchIterator:
        """Every example of ``split`` once, in order; the last batch padded, see ``mask``."""
        return pipeline.eval_batches(
            self.split(split),
            split,
            batch_size,
            shard_index=shard_index,
            shard_count=shard_count,
            num_threads=num_threads,
            prefetch=prefetch,
        )

    def grouped_scores(
        self, split: str, scores: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(unit_ids, scores, labels)`` per evaluation unit, scores in split order.

        For ``eval_grouping == "study"`` a study's score is the mean of its
        images' scores (MURA); otherwise this returns the images unchanged.
        """
        s = self.split(split)
        scores = np.asarray(scores)
        if len(scores) != len(s):
            raise DataError(f"{len(scores)} scores for the {len(s)} examples of split {split!r}")
        if self.eval_grouping == "image":
            return s.ids, scores, s.labels
        return group_mean(scores, s.labels, s.groups)


@dataclasses.dataclass(frozen=True)
class Unscorable:
    """An evaluation split in which one class's labels take one value.

    Attributes:
      split: the split's name.
      size: its examples.
      label: the class's index.
      lacks_negatives: every example is of the class (a multilabel column all 1);
        else none is.
    """

    split: str
    size: int
    label: int
    lacks_negatives: bool


def find_unscorable(
    labels: dict[str, np.ndarray],
    num_classes: int,
    multilabel: bool,
    splits: tuple[str, ...] = ("val", "test"),
) -> Unscorable | None:
    """The first class of ``splits`` whose AUROC is undefined there, or None.

    Takes labels, not a :class:`Dataset`, so a listing not decoded yet is judged by
    the same rule (:func:`medft_jax.data.local`). A single-label split of only one
    class names the class absent, not the one present.
    """
    for name in splits:
        y = np.asarray(labels[name])
        n = len(y)
        positives = (
            y.astype(bool).sum(axis=0) if multilabel else np.bincount(y, minlength=num_classes)
        )
        for c, k in enumerate(positives[:num_classes]):
            if 0 < k < n or (k == n and not multilabel and num_classes > 1):
                continue
            return Unscorable(name, n, c, bool(k))
    return None


def unscorable_message(
    where: str, gap: Unscorable, class_names: tuple[str, ...] | list[str], multilabel: bool
) -> str:
    """The refusal's first part, up to its hints: what is missing where, and why it matters."""
    if multilabel:
        what = "only positives" if gap.lacks_negatives else "no positive"
    else:
        what = "only examples" if gap.lacks_negatives else "no example"
    n = gap.size
    return (
        f"{where}: the {gap.split} split ({n} example{'s' * (n != 1)}) has {what} of class "
        f"{class_names[gap.label]!r}, so its AUROC is undefined and the macro means would "
        "leave it out; "
    )


def _wanted(gap: Unscorable) -> str:
    """What the split lacks: images of the class, or (all positive) images without it."""
    return "images without it" if gap.lacks_negatives else "more images of it"


def _drop(multilabel: bool) -> str:
    return "leave its column out of --label-columns" if multilabel else "drop the class"


def local_scorable_hint(
    gap: Unscorable,
    labels: dict[str, np.ndarray],
    patients: dict[str, np.ndarray],
    given: dict[str, str | None],
    multilabel: bool,
) -> str:
    """The fix for a user's folder or CSV, by how the split came to be.

    ``given``: what gives each of val and test (``val/``, ``column 'split'``), None where
    the split is carved. A given split is fixed by adding images to it: the fraction flag
    is refused there. A carved split takes whole patients from those left for training,
    so a class with fewer patients (images) there than the splits that share them gets
    every split by no fraction (raising it moves the refusal to the training split). Only
    then is a larger fraction the advice.
    """
    drop = _drop(multilabel)
    source = given.get(gap.split)
    if source is not None:
        add = "images without it" if gap.lacks_negatives else "images of it"
        return (
            f"{source} gives the {gap.split} split, so no --{gap.split}-fraction applies: add "
            f"{add} there, or {drop}"
        )
    pool = ["train", *(s for s in ("val", "test") if given.get(s) is None)]
    units, images = _class_units(gap, labels, patients, pool, multilabel)
    if units < len(pool):
        unit = "image" if units == images else "patient"
        have = f"{images} image{'s' * (images != 1)}"
        if units != images:
            have += f" of {units} patient{'s' * (units != 1)}"
        among = f"{', '.join(pool[:-1])} and {pool[-1]}"
        if gap.lacks_negatives:
            return (
                f"only {have} across {among} lack{'s' * (images == 1)} it, and each of those "
                f"splits needs one {unit} without it: no fraction gives that; add images "
                f"without it, or {drop}"
            )
        return (
            f"it has {have} across {among}, and each of those splits needs one {unit} of it: "
            f"no fraction gives that; add images of it, or {drop}"
        )
    return f"give the split {_wanted(gap)} (a larger --{gap.split}-fraction), or {drop}"


def _class_units(
    gap: Unscorable,
    labels: dict[str, np.ndarray],
    patients: dict[str, np.ndarray],
    pool: list[str],
    multilabel: bool,
) -> tuple[int, int]:
    """``(patients, images)`` of ``pool`` that the carve could hand the split: with the
    class, or (``lacks_negatives``) without it."""
    seen: set[str] = set()
    images = 0
    for name in pool:
        y = np.asarray(labels[name])
        has = y[:, gap.label].astype(bool) if multilabel else y == gap.label
        mask = ~has if gap.lacks_negatives else has
        images += int(mask.sum())
        seen.update(np.asarray(patients[name]).astype(str)[mask].tolist())
    return len(seen), images


def _check_labels(
    name: str, split: str, labels: np.ndarray, classes: int, multilabel: bool
) -> None:
    """Refuses labels that are not of ``classes`` classes, naming the split and a value."""
    where = f"dataset {name!r} split {split!r}"
    if multilabel:
        if labels.ndim != 2 or labels.shape[1] != classes:
            raise DataError(
                f"{where}: multilabel labels must be (N, {classes}), got {labels.shape}"
            )
        bad = labels[(labels != 0) & (labels != 1)]
        if bad.size:
            value = float(bad.flat[0])
            raise DataError(f"{where}: multilabel labels must be 0 or 1, got {value!r}")
        return
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(
            f"{where}: labels must be integer class ids (N,), got {labels.dtype} {labels.shape}"
        )
    bad = labels[(labels < 0) | (labels >= classes)]
    if bad.size:
        raise DataError(
            f"{where}: label {int(bad.flat[0])} is not a class id in [0, {classes}) "
            f"(class_names has {classes})"
        )
