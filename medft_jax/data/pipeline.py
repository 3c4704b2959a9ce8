"""Batches from an :class:`ArraySplit`: seeded per-epoch shuffle, sorted gathers, grain prefetch.

The unit of work is a whole batch: the epoch's permutation is cut into
batches, each batch's indices are sorted and gathered with one fancy index
from the (memmapped) image array. Reading per example costs a Python call
and a small read per image; one sorted gather reads a batch at memory speed
(see the datasets spec). The batches form a grain ``MapDataset`` read through
``to_iter_dataset`` (threads + a prefetch buffer) or ``mp_prefetch`` (worker
processes), so batch ``k+1`` is read while the device trains on batch ``k``.

Determinism and resumption: batch ``b`` of epoch ``e`` is a pure function of
``(seed, e, b)``; the iterator's state is ``{seed, epoch, position, ...}``
and :meth:`BatchIterator.set_state` restarts exactly at ``position``.

Hosts: ``batch_size`` is the global batch. Every host draws the same
permutation and takes its own contiguous ``batch_size / shard_count`` slice
of each global batch, so the global batch, and so training, is the same
whatever the number of hosts.

Evaluation: every example exactly once, in order; the last batch is padded
to the full batch size with zero images, and ``mask`` marks the real rows
(static shapes: the jitted eval step compiles once). ``index`` gives each
row's position in the split (-1 for padding), for per-study aggregation.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np

from medft_jax.data.arrays import ArraySplit, file_identity
from medft_jax.data.errors import DataError
from medft_jax.errors import whole_number

Batch = dict[str, np.ndarray]


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of epoch ``epoch``: a permutation of ``range(n)`` seeded by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def host_shard() -> tuple[int, int]:
    """``(jax.process_index(), jax.process_count())``."""
    import jax

    return jax.process_index(), jax.process_count()


class _BatchSource:
    """Random-access batches: row ``b`` of ``order`` (indices, -1 = padding) gathered.

    Picklable for grain's worker processes without copying a memmapped
    image array: a memmap is re-opened from its file in the worker. The file
    must still be the one mapped here: a dataset cache rebuilt at the same
    path (the data edited, then loaded again by any process) holds other
    images in other rows, which the labels held here would mislabel. Its
    identity (device, inode, size, mtime) is the one recorded when the cache
    opened it (:func:`medft_jax.data.arrays.file_identity`), else the file's
    when this source was made; a re-open of another file is refused.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, order: np.ndarray) -> None:
        self.images = images
        self.labels = labels
        self.order = order
        self.file_identity = _identity_of(images)

    def check_file(self) -> None:
        """Refuses a memmapped image file replaced since it was opened (see the class)."""
        if self.file_identity is not None:
            filename = self.images.filename  # type: ignore[attr-defined]
            try:
                now: tuple[int, ...] = file_identity(os.stat(filename))
            except FileNotFoundError:  # the cache deleted since
                now = ()
            _check_identity(filename, now, self.file_identity)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, b: int) -> Batch:
        rows = self.order[b]
        valid = rows >= 0
        idx = np.sort(rows[valid])
        images = self.images[idx]
        labels = self.labels[idx]
        pad = len(rows) - len(idx)
        if pad:
            images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
            labels = np.concatenate([labels, np.zeros((pad, *labels.shape[1:]), labels.dtype)])
            idx = np.concatenate([idx, np.full(pad, -1, idx.dtype)])
        return {
            "image": np.ascontiguousarray(images),
            "label": np.ascontiguousarray(labels),
            "mask": np.arange(len(rows)) < len(rows) - pad,
            "index": idx.astype(np.int64),
        }

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        images = self.images
        if isinstance(images, np.memmap) and images.filename is not None:
            offset = _file_offset(images)
            if offset is None:  # a strided view: its values travel, not its file
                state["images"] = np.ascontiguousarray(images)
            else:
                state["images"] = (images.filename, offset, images.shape, images.dtype.str)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["images"], tuple):
            filename, offset, shape, dtype = state["images"]
            with open(filename, "rb") as f:  # the file checked is the file mapped
                if state.get("file_identity") is not None:
                    now = file_identity(os.fstat(f.fileno()))
                    _check_identity(filename, now, state["file_identity"])
                state["images"] = np.memmap(f, dtype, "r", offset=offset, shape=shape)
        self.__dict__.update(state)


def _file_offset(images: np.memmap) -> int | None:
    """Where a memmapped array's first element lies in its file; None if not contiguous.

    numpy copies ``offset`` unchanged onto every view of a memmap, so
    ``mm[32:].offset`` is the whole file's: a worker re-mapping the view from it
    read rows 0.. under the labels of rows 32.. (a caller's splits cut from one
    file). The view's own position is the parent mapping's plus the distance
    between their first bytes in memory.
    """
    if not images.flags.c_contiguous:
        return None
    root = images
    while isinstance(root.base, np.ndarray):
        root = root.base
    if not isinstance(root, np.memmap) or root.filename != images.filename:
        return None
    return int(root.offset) + (images.ctypes.data - root.ctypes.data)


def _identity_of(images: np.ndarray) -> tuple[int, ...] | None:
    """The identity of a memmapped array's file: recorded at its opening, else now."""
    if not isinstance(images, np.memmap) or images.filename is None:
        return None
    recorded = getattr(images, "file_identity", None)
    if recorded is not None:
        return tuple(recorded)
    try:
        return file_identity(os.stat(images.filename))
    except OSError:
        return None


def _check_identity(filename: str, now: tuple[int, ...], then: tuple[int, ...]) -> None:
    if tuple(now) != tuple(then):
        raise DataError(
            f"{filename}: the dataset cache was rebuilt while this iterator's dataset was "
            "open (the data edited, then loaded again), so its rows are other images than "
            "the labels held here; load the dataset again and create the iterator again"
        )


def _host_rows(global_rows: np.ndarray, shard_index: int, shard_count: int) -> np.ndarray:
    """This host's contiguous slice of each global batch (rows of ``global_rows``)."""
    per_host = global_rows.shape[1] // shard_count
    return global_rows[:, shard_index * per_host : (shard_index + 1) * per_host]


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What an iterator reads; its fields are the checkpointable identity."""

    kind: str  # "train" | "eval"
    split: str
    num_examples: int
    batch_size: int
    seed: int | None
    epoch: int | None
    shard_index: int
    shard_count: int


class BatchIterator(Iterator[Batch]):
    """Iterates batches of one epoch (train) or one pass (eval); checkpointable.

    ``len(it)`` is the number of batches in the pass; ``get_state()`` is a
    small JSON-able dict and ``set_state(state)`` resumes after the last
    batch the state saw (the state must come from the same plan: split,
    batch size, seed, epoch; any host's).
    """

    def __init__(
        self,
        plan: _Plan,
        source: _BatchSource,
        *,
        num_threads: int = 2,
        prefetch: int = 4,
        num_workers: int = 0,
    ) -> None:
        for key, value in (
            ("num_threads", num_threads),
            ("prefetch", prefetch),
            ("num_workers", num_workers),
        ):
            if not (whole_number(value) and value >= 0):  # -1 ran as 0 without a word
                raise DataError(f"{key} must be an integer >= 0, got {value!r}")
        self._plan = plan
        self._source = source
        self._options = (num_threads, prefetch, num_workers)
        self._position = 0
        self._it: Iterator[Batch] | None = None

    def __len__(self) -> int:
        return len(self._source)

    def _start(self) -> Iterator[Batch]:
        num_threads, prefetch, num_workers = self._options
        ds = grain.MapDataset.source(self._source)
        if self._position:
            ds = ds[self._position :]
        if num_workers > 0:
            self._source.check_file()  # here, one line, rather than in each worker
            _absl_flags_parsed()
            it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
            it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
        elif num_threads > 0:
            it_ds = ds.to_iter_dataset(
                grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
            )
        else:
            it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
        return iter(it_ds)

    def __next__(self) -> Batch:
        if self._position >= len(self._source):
            raise StopIteration
        if self._it is None:
            self._it = self._start()
        batch = next(self._it)
        self._position += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        """``{kind, split, num_examples, batch_size, seed, epoch, shard_*, position}``."""
        return {**dataclasses.asdict(self._plan), "position": self._position}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues from ``state['position']`` (batches already delivered are skipped).

        The position counts global batches, which are the same on every host
        and for any number of hosts (each takes its slice of one permutation),
        so a state saved by one host resumes every host's iterator: the shard
        fields are not compared.
        """
        expected = dataclasses.asdict(self._plan)
        for key, value in expected.items():
            if key in ("shard_index", "shard_count"):
                continue
            if state.get(key) != value:
                raise DataError(
                    f"iterator state field {key!r} is {state.get(key)!r}, this iterator has "
                    f"{value!r}; restore a state saved from the same split, batch size, seed, "
                    "epoch"
                )
        position = state.get("position")
        if not (whole_number(position) and 0 <= position <= len(self._source)):
            raise DataError(
                f"iterator state position {position!r} is not an integer in 0..{len(self._source)}"
            )
        self._position = int(position)
        self._it = None


def _absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside an absl app they are unparsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    """This host's (index, count): both given, in range, or neither (:func:`host_shard`).

    Shard 2 of 2 read no rows, a silent host training on nothing; one of the two
    given alone was dropped for shard 0 of 1.
    """
    if shard_index is None and shard_count is None:
        return host_shard()
    if shard_index is None or shard_count is None:
        raise DataError("give shard_index and shard_count together, or neither")
    if not (whole_number(shard_count) and shard_count >= 1):
        raise DataError(f"shard_count must be an integer >= 1, got {shard_count!r}")
    if not (whole_number(shard_index) and 0 <= shard_index < shard_count):
        raise DataError(
            f"shard_index must be an integer in [0, {shard_count - 1}], got {shard_index!r}"
        )
    return int(shard_index), int(shard_count)


def _check_batch(batch_size: int, shard_count: int) -> None:
    if not whole_number(batch_size) or batch_size < 1:
        raise DataError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if batch_size % shard_count:
        raise DataError(
            f"batch_size {batch_size} is not divisible by the number of hosts {shard_count}"
        )


def train_batches(
    split: ArraySplit,
    name: str,
    batch_size: int,
    *,
    seed: int,
    epoch: int = 0,
    shard_index: int | None = None,
    shard_count: int | None = None,
    **options: int,
) -> BatchIterator:
    """One training epoch: shuffled with (seed, epoch), full batches only.

    The last ``n % batch_size`` examples of the epoch's permutation are
    dropped (static shapes); a new permutation each epoch means no example
    is left out for good.
    """
    return array_train_batches(
        split.images,
        split.labels,
        name,
        batch_size,
        seed=seed,
        epoch=epoch,
        shard_index=shard_index,
        shard_count=shard_count,
        **options,
    )


def array_train_batches(
    inputs: np.ndarray,
    labels: np.ndarray,
    name: str,
    batch_size: int,
    *,
    seed: int,
    epoch: int = 0,
    shard_index: int | None = None,
    shard_count: int | None = None,
    **options: int,
) -> BatchIterator:
    """:func:`train_batches` over any per-example array (``image`` is ``inputs[rows]``).

    The same plan as the images' iterator, so the same batches, and states
    that resume either one.
    """
    shard_index, shard_count = _shard(shard_index, shard_count)
    _check_batch(batch_size, shard_count)
    n = len(inputs)
    if batch_size > n:
        raise DataError(f"batch_size {batch_size} exceeds the {n} examples of split {name!r}")
    rows = train_rows(n, batch_size, seed, epoch, shard_index, shard_count)
    plan = _Plan("train", name, n, batch_size, seed, epoch, shard_index, shard_count)
    return BatchIterator(plan, _BatchSource(inputs, labels, rows), **options)


def train_rows(
    n: int, batch_size: int, seed: int, epoch: int, shard_index: int = 0, shard_count: int = 1
) -> np.ndarray:
    """Example indices of an epoch's batches, this host's rows: ``(batches, per host)``.

    Each global batch is sorted (the order a batch gathers its examples in)
    before the hosts take their slices, so the hosts' slices, concatenated,
    are the one-host batch element for element: a position-dependent op
    (VGG's dropout mask) meets the same example however many hosts run. And
    anything that trains on per-example arrays other than the images (the
    cached features) sees the batches this pipeline yields.
    """
    num_batches = n // batch_size
    perm = epoch_permutation(n, seed, epoch)[: num_batches * batch_size]
    batches = np.sort(perm.reshape(num_batches, batch_size), axis=1)
    return _host_rows(batches, shard_index, shard_count)


def eval_batches(
    split: ArraySplit,
    name: str,
    batch_size: int,
    *,
    shard_index: int | None = None,
    shard_count: int | None = None,
    **options: int,
) -> BatchIterator:
    """Every example once, in order, the last batch padded (``mask`` False on padding)."""
    return array_eval_batches(
        split.images,
        split.labels,
        name,
        batch_size,
        shard_index=shard_index,
        shard_count=shard_count,
        **options,
    )


def array_eval_batches(
    inputs: np.ndarray,
    labels: np.ndarray,
    name: str,
    batch_size: int,
    *,
    shard_index: int | None = None,
    shard_count: int | None = None,
    **options: int,
) -> BatchIterator:
    """:func:`eval_batches` over any per-example array."""
    shard_index, shard_count = _shard(shard_index, shard_count)
    _check_batch(batch_size, shard_count)
    n = len(inputs)
    num_batches = -(-n // batch_size)
    order = np.full(num_batches * batch_size, -1, dtype=np.int64)
    order[:n] = np.arange(n)
    rows = _host_rows(order.reshape(num_batches, batch_size), shard_index, shard_count)
    plan = _Plan("eval", name, n, batch_size, None, None, shard_index, shard_count)
    return BatchIterator(plan, _BatchSource(inputs, labels, rows), **options)
