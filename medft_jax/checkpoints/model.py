"""The model checkpoint: params, batch statistics and metadata in one orbax folder.

One format serves the weight port (ImageNet weights ported from torchvision),
the best parameters of a training run, ``experiments.predict`` and
``weights_port export``. Orbax writes into a temporary folder and renames it
when complete, so an interrupted save never leaves a folder that looks like
a finished checkpoint.

Metadata keys: ``arch``, ``num_classes``, ``multilabel``, ``class_names``
(or null), ``resize_size``, ``crop_size``, ``bits_stored`` (optional: the
``--bits-stored`` its training images were decoded with), ``dicom_window``
(optional: the ``--dicom-window`` ``[center, width]`` they were decoded with), ``precision``
(optional: the run's ``--precision``, ``fp32`` when absent), ``source`` and
``source_sha256`` (the torchvision file it came from, if any), ``num_batches_tracked``
(torchvision's BN counters, kept only so an export round-trips bit for bit),
``content_sha256`` (see :func:`variables_hash`), ``metadata_sha256`` (see
:func:`metadata_hash`), ``format_version``.

A checkpoint is checked, not trusted, when it is loaded: the arrays must
hash to the recorded ``content_sha256`` (orbax's files carry no checksum of
their own, and a flipped bit in an uncompressed chunk otherwise loads as a
silently wrong weight), every float array must be finite, and the metadata
must agree with the arrays (:func:`check_metadata`) before anything is built
from it. Each failure is one :class:`CheckpointError` line naming the folder
or file.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from medft_jax import locks
from medft_jax.config import PRECISIONS
from medft_jax.data.options import option_value_error
from medft_jax.data.pixels import BITS_STORED
from medft_jax.errors import (
    UserError,
    json_loads,
    naming_os_errors,
    one_line,
    os_errno_in,
    quiet_logger,
)
from medft_jax.models import ARCHS, get_arch, is_known_arch, variable_shapes
from medft_jax.models.blocks import flatten

FORMAT_VERSION = 5
"""The newest metadata this version reads. A checkpoint is written with the
lowest version that says what it holds: 5 for ``decoder``, 4 for ``dicom_window``, 3 for
``precision`` bf16, 2 for
``bits_stored``, else 1; an older reader, which would ignore the field and so
decode or compute otherwise than the run did, refuses it instead."""

MIN_CROP_SIZE = 32
"""Smallest crop a checkpoint may declare (the smallest ``--image-size`` of a run)."""
MAX_CROP_SIZE = 2048
"""Largest crop a checkpoint may declare: well above any run's ``--image-size``, and
small enough that a batch of crops fits in memory; a larger value is a damaged file."""
MAX_RESIZE_SIZE = 4096
"""Largest resize (shorter side before the crop) a checkpoint may declare."""

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
METADATA_HASH = "metadata_sha256"
"""The metadata key holding :func:`metadata_hash` (absent in checkpoints written before it
was: those load unchecked, as those without ``content_sha256`` do). Like that one, a check
against corruption and careless edits, not a signature: whoever rewrites the metadata can
rewrite its hash."""
_WRITTEN_WITH_THE_HASH = ("decoding_version", "numerics")
"""Metadata keys first written after :data:`METADATA_HASH`: a checkpoint holding one and not
the hash lost it to an edit (one that swapped class names, say), not to its age."""
_METADATA_FILE = ("metadata", "metadata")
"""Where orbax's JsonSave puts the metadata item, relative to the checkpoint folder."""


class CheckpointError(UserError):
    """A model checkpoint folder is missing, incomplete or of the wrong kind."""


# --- writing -----------------------------------------------------------------------------------


def save_model(
    directory: str | Path,
    params: dict[str, Any],
    batch_stats: dict[str, Any],
    metadata: dict[str, Any],
    *,
    force: bool = False,
) -> Path:
    """Writes ``{params, batch_stats}`` and ``metadata`` to ``directory`` atomically.

    The metadata gains ``content_sha256``, the hash of the arrays as written
    (any value passed in is replaced: it described other arrays).

    The checkpoint is written whole beside ``directory`` (``.<name>.new``),
    then swapped in (the one it replaces, with ``force``, goes to
    ``.<name>.old`` for the moment between two renames): a save that fails
    (disk full) or is killed leaves the previous checkpoint in place. Orbax's
    own ``force`` deletes it before writing anything.
    """
    directory = Path(directory).expanduser().absolute()
    if directory.is_symlink():  # the swap replaced the link, and left a stray .old link
        raise CheckpointError(
            f"{directory} is a link; give the folder it points to "
            f"({os.path.realpath(directory)}), or another"
        )
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory} is a file, expected a checkpoint folder")
    if directory.exists() and not force:
        raise _exists(directory)
    if directory.exists() and any(directory.iterdir()) and not is_checkpoint(directory):
        raise CheckpointError(
            f"{directory} exists and is not a model checkpoint; --force replaces only a "
            "checkpoint, choose another folder"
        )
    for parent in directory.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CheckpointError(f"{directory}: {parent} is a file, expected a folder")
            break
    tree = {"params": params, "batch_stats": batch_stats}
    _check_dtypes(tree, directory)
    # What load_model would refuse is not written (with force, over a good checkpoint).
    _check_before_saving(tree, {**metadata, "format_version": _format_version(metadata)}, directory)
    # The version is what the fields say, whatever the caller's copy of an older
    # checkpoint's metadata claims: re-saved with a new field under its old version 1,
    # an older reader would take it and ignore the field.
    meta = {**metadata, "format_version": _format_version(metadata)}
    meta.pop("content_sha256", None)
    digest = variables_hash(tree)
    if digest is not None:
        meta["content_sha256"] = digest
    meta.pop(METADATA_HASH, None)
    meta[METADATA_HASH] = metadata_hash(meta)
    quiet_reported_failures()
    staging, old = staging_paths(directory)
    before = set(threading.enumerate())
    try:
        with naming_os_errors(directory), ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as c:
            c.save(  # force: replaces only a staging folder a killed save left
                staging,
                ocp.args.Composite(
                    state=ocp.args.StandardSave(tree), metadata=ocp.args.JsonSave(meta)
                ),
                force=True,
            )
        if jax.process_index() == 0:
            with naming_os_errors(directory):
                if directory.exists() and not force:  # another process got there first
                    raise _exists(directory)
                _refuse_foreign_files(directory, staging)
                if old.exists():
                    shutil.rmtree(old)
                if directory.exists():
                    os.replace(directory, old)
                os.replace(staging, directory)
                shutil.rmtree(old, ignore_errors=True)
        sync_processes("medft_jax.checkpoints.model.save_model")
    except BaseException as e:
        if jax.process_index() == 0:  # the staging folder, whole or orbax's half-written one
            # A Ctrl-C is not kept waiting for the writes (the next save removes them).
            writers = () if isinstance(e, KeyboardInterrupt) else set(threading.enumerate())
            remove_once_written(
                lambda: directory.parent.glob(f"{glob.escape(staging.name)}*"),
                [t for t in writers if t not in before],
            )
            if old.exists() and not directory.exists():  # failed between the two renames
                os.replace(old, directory)
        raise
    return directory


def _check_before_saving(tree: Mapping[str, Any], metadata: Mapping[str, Any], where: Path) -> None:
    """:func:`check_metadata` as :func:`save_model` runs it (a name of its own: the tests of
    storage on stand-in trees leave this one out, not the check every reader runs)."""
    check_metadata(tree, metadata, where)


WRITERS_WAIT_SECONDS = 10.0
"""How long :func:`remove_once_written` waits at most for a failed save's writers."""
QUIET_SECONDS = 0.3
"""How long nothing may reappear before :func:`remove_once_written` takes its folders for gone."""


def remove_once_written(
    paths: Callable[[], Iterable[Path]], writers: Iterable[threading.Thread] = ()
) -> None:
    """Deletes the folders ``paths()`` lists, once a failed save's writes have stopped.

    Orbax waits for the first of a save's write threads that fails and raises its
    error while the others still write (and tensorstore's own writes of that thread
    go on after its event loop was given up): folders deleted at once were made again
    by them, and a full disk kept a half-written checkpoint after the run stopped.
    So the ``writers`` (threads started by the save) are joined first, then the
    folders deleted until none has come back for :data:`QUIET_SECONDS`, all within
    :data:`WRITERS_WAIT_SECONDS`.
    """
    deadline = time.monotonic() + WRITERS_WAIT_SECONDS
    for thread in writers:
        if thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
    quiet_since = time.monotonic()
    while True:
        found = [p for p in paths() if p.is_dir() and not p.is_symlink()]
        for path in found:
            shutil.rmtree(path, ignore_errors=True)
        now = time.monotonic()
        if found:
            quiet_since = now
        if now - quiet_since >= QUIET_SECONDS or now >= deadline:
            return
        time.sleep(0.05)


def _refuse_foreign_files(directory: Path, staging: Path) -> None:
    """Refuses to replace a checkpoint folder holding files a save does not write.

    ``--force`` swaps the whole folder: a user's notes, an ``export``-ed
    ``model.pth`` beside the arrays, or the very file being ported from it
    went with the old checkpoint, without a word. The names a save writes are
    those of the new checkpoint in ``staging`` (orbax's own files included).
    """
    if not directory.is_dir():
        return
    ours = {p.name for p in staging.iterdir()}
    foreign = sorted(p.name for p in directory.iterdir() if p.name not in ours)
    if foreign:
        raise CheckpointError(
            f"{directory} holds {len(foreign)} file(s) a checkpoint does not (e.g. "
            f"{foreign[0]}); --force replaces only a checkpoint's own files: move them out, "
            "or choose another folder"
        )


def _check_dtypes(tree: dict[str, Any], directory: Path) -> None:
    """Refuses a leaf JAX would not load as written (float64 without ``jax_enable_x64``):
    it came back as float32, unequal to its hash, and the checkpoint read as corrupt."""
    for path, leaf in flatten(tree).items():
        # Not getattr's default: evaluated always, it copied every leaf to the host.
        dtype = np.dtype(leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype)
        if jax.dtypes.canonicalize_dtype(dtype) != dtype:
            raise CheckpointError(
                f"{directory}: {path} is {dtype}, which JAX loads as "
                f"{jax.dtypes.canonicalize_dtype(dtype)}; expected the model's own dtypes "
                "(float32, or bfloat16 parameters), cast it before saving"
            )


def _exists(directory: Path) -> CheckpointError:
    return CheckpointError(f"{directory} already exists; pass --force to overwrite it")


def staging_paths(directory: Path) -> tuple[Path, Path]:
    """``(new, old)``: where :func:`save_model` writes a checkpoint, and where the one it
    replaces waits, until the two are swapped."""
    return (
        directory.parent / f".{directory.name}.new",
        directory.parent / f".{directory.name}.old",
    )


def sync_processes(name: str) -> None:
    """A barrier across the job's processes (none with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _format_version(metadata: Mapping[str, Any]) -> int:
    """The lowest format version whose readers use every field ``metadata`` sets."""
    if metadata.get("decoder") is not None:
        return 5
    if metadata.get("dicom_window") is not None:
        return 4
    if metadata.get("precision", "fp32") != "fp32":
        return 3
    return 2 if metadata.get("bits_stored") is not None else 1


def is_checkpoint(directory: Path) -> bool:
    """Whether ``directory`` holds a model checkpoint's two items (and may be replaced)."""
    return (directory / "metadata").exists() and (directory / "state").exists()


def variables_hash(variables: Mapping[str, Any]) -> str | None:
    """sha256 of ``{'params', 'batch_stats'}``: sorted leaf paths, dtypes, shapes and bytes.

    Each leaf contributes ``["params/layer1/0/conv1/kernel", "float32", [1, 1, 64, 64]]``
    as JSON, a newline, then its C-order bytes, in sorted path order, so the
    hash depends only on the values and not on how the tree was built or
    where it lives. None when an array is sharded over other processes (its
    bytes are not all here); such a checkpoint is saved without a hash.
    """
    flat = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in flatten(variables.get(collection) or {}).items():
            flat[f"{collection}/{path}"] = leaf
    return _arrays_hash(flat)


def tree_hash(tree: Any) -> str | None:
    """sha256 of any pytree's arrays, as :func:`variables_hash` hashes its leaves, each leaf
    named by its ``jax.tree_util.keystr`` path (a train state with its optimizer state)."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return _arrays_hash({jax.tree_util.keystr(path): leaf for path, leaf in leaves})


def start_host_copies(tree: Any) -> None:
    """Starts every device leaf's copy to the host at once.

    Read one by one (``np.asarray`` per leaf), a ResNet-50 train state is
    hundreds of blocking transfers in a row on an accelerator; started
    together, they overlap and each later read takes what has arrived.
    """
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and leaf.is_fully_addressable:
            leaf.copy_to_host_async()


def _arrays_hash(flat: Mapping[str, Any]) -> str | None:
    start_host_copies(list(flat.values()))
    h = hashlib.sha256()
    for path in sorted(flat):
        host = _host_array(flat[path])
        if host is None:
            return None
        a = np.ascontiguousarray(host)
        h.update(json.dumps([path, a.dtype.name, list(a.shape)]).encode() + b"\n")
        h.update(a.reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def _host_array(x: Any) -> np.ndarray | None:
    """``x`` as a numpy array, None if part of it lives only in another process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if not x.is_fully_replicated:
            return None
        x = x.addressable_data(0)
    return np.asarray(x)


# --- reading -----------------------------------------------------------------------------------


def load_metadata(directory: str | Path) -> dict[str, Any]:
    """Reads only the metadata of a model checkpoint (a JSON object; not checked against
    the arrays, which are not read)."""
    return _read_metadata(_check_dir(directory))


def content_hash(directory: str | Path) -> str:
    """The ``content_sha256`` of a model checkpoint, for a run's identity.

    Read from the metadata without loading arrays when recorded (it is
    verified against the arrays whenever they are loaded); computed from the
    arrays (which :func:`load_model` checks) for a checkpoint saved before
    hashes were recorded.
    """
    directory = _check_dir(directory)
    recorded = _recorded_hash(_read_metadata(directory), directory)
    if recorded is not None:
        return recorded
    variables, _ = load_model(directory)
    digest = variables_hash(variables)
    assert digest is not None  # host arrays: every byte is here
    return digest


def load_model(directory: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads a model checkpoint: ``({'params', 'batch_stats'}, metadata)`` as numpy arrays.

    Raises :class:`CheckpointError` (one line naming the folder or file) for
    unreadable metadata, truncated or corrupted array files, arrays that do
    not hash to the recorded ``content_sha256``, metadata that disagrees
    with the arrays (:func:`check_metadata`) and non-finite weights. A
    checkpoint saved before hashes were recorded loads without the hash check. One
    replaced while it was read (a run saving a new best) is read again, once.
    """
    directory = _check_dir(directory)
    for attempt in range(2):
        metadata = _read_metadata(directory)
        recorded = _recorded_hash(metadata, directory)
        try:
            state = _restore_state(directory)
        except CheckpointError:  # its arrays moved aside by a save swapping a new one in
            if attempt == 0 and _replaced_since(directory, metadata):
                time.sleep(_SWAP_SECONDS)
                continue
            raise
        variables = {
            "params": _to_numpy(state.get("params", {}) or {}),
            "batch_stats": _to_numpy(state.get("batch_stats", {}) or {}),
        }
        if recorded is None or variables_hash(variables) == recorded:
            break
        # A run that saved a new best between the two reads (predict on a run still
        # training): metadata of one checkpoint, arrays of the next. Read it again, whole.
        if attempt == 0 and _replaced_since(directory, metadata):
            time.sleep(_SWAP_SECONDS)
            continue
        raise CheckpointError(
            f"{directory}: content hash mismatch: the checkpoint's arrays were modified or "
            "corrupted (they no longer hash to the metadata's content_sha256)"
        )
    check_metadata(variables, metadata, directory)
    check_finite(variables, directory)
    return variables, metadata


_SWAP_SECONDS = 0.1
"""A wait before reading a checkpoint again that a save replaced meanwhile: its two renames
are microseconds apart, and the folder is missing between them."""


def _replaced_since(directory: Path, metadata: Mapping[str, Any]) -> bool:
    """Whether ``directory`` now holds another checkpoint than the one whose ``metadata``
    was read (a save swaps a whole new folder in: its metadata is another's)."""
    try:
        return _read_metadata(directory) != metadata
    except CheckpointError:  # between a save's two renames: no folder for the moment
        return True


def check_finite(variables: Mapping[str, Any], where: str | Path) -> None:
    """Refuses NaN or infinite weights, and BatchNorm variances below 0 (NaN after their
    square root, which XLA's CPU backend drops in the pooling after it: finite, meaningless
    outputs), naming the first such array by its path."""
    for collection in ("params", "batch_stats"):
        for path, leaf in flatten(variables.get(collection) or {}).items():
            a = np.asarray(leaf)
            if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all():
                raise CheckpointError(f"non-finite weights in {where}: {collection}/{path}")
            if collection == "batch_stats" and path.endswith("var") and (a < 0).any():
                raise CheckpointError(
                    f"{where}: batch_stats/{path} has negative values; expected BatchNorm "
                    "variances >= 0 (a damaged or edited checkpoint)"
                )


def _check_dir(directory: str | Path) -> Path:
    directory = Path(directory).expanduser().absolute()
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory}: is a file, expected a checkpoint folder")
    if not directory.is_dir():
        kept = directory.parent / "previous" / directory.name  # a --force rerun's set aside
        hint = (
            f"; a --force rerun of this run has not saved one yet: its last finished "
            f"parameters are {kept}"
            if directory.name == "best" and (kept / "metadata").exists()
            else ""
        )
        holder = locks.holder_of(directory.parent) if directory.name == "best" else None
        if not hint and holder == locks.RUNNING_HERE:
            hint = (
                "; its run has not saved a best epoch yet (a process is running it: its "
                "first validation saves one)"
            )
        elif not hint and holder not in (None, "?"):  # another host's: not known from here
            hint = (
                f"; its run's lock names host {holder} (a run there that has not saved a best "
                "epoch yet, or one killed there before it did)"
            )
        raise CheckpointError(f"{directory}: no such checkpoint folder{hint}")
    if not (directory / "metadata").exists() or not (directory / "state").exists():
        best = directory / "best"
        hint = (
            f"; a run's folder: its best parameters are {best}"
            if (best / "metadata").exists() and (best / "state").exists()
            else ""
        )
        raise CheckpointError(
            f"{directory}: not a medft-jax model checkpoint (expected the orbax items "
            f"'state' and 'metadata' written by weights_port or experiments.run){hint}"
        )
    return directory


def _read_metadata(directory: Path) -> dict[str, Any]:
    """The metadata JSON object, read directly so that a bad file is named."""
    path = directory.joinpath(*_METADATA_FILE)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; the checkpoint is incomplete") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the metadata ({e.strerror})") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: the metadata is not UTF-8 text (corrupted)") from None
    if not text.strip():
        raise CheckpointError(f"{path}: the metadata file is empty (a truncated checkpoint)")
    try:
        metadata = json_loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{path}: unreadable metadata JSON ({e.msg} at line {e.lineno} column {e.colno})"
        ) from None
    if not isinstance(metadata, dict):
        raise CheckpointError(
            f"{path}: the metadata is a JSON {type(metadata).__name__}, expected an object"
        )
    recorded = metadata.get(METADATA_HASH)
    newer = [k for k in _WRITTEN_WITH_THE_HASH if k in metadata]
    if recorded is None and newer:
        raise CheckpointError(
            f"{path}: the metadata lacks its {METADATA_HASH}, which every checkpoint holding "
            f"{newer[0]!r} was written with: edited; its class names and preprocessing are "
            "the predictions' meaning: restore the file"
        )
    if recorded is not None and recorded != metadata_hash(metadata):
        raise CheckpointError(
            f"{path}: the metadata was edited or corrupted (it no longer hashes to its "
            f"{METADATA_HASH}); its class names and preprocessing are the predictions' "
            "meaning: restore the file"
        )
    return metadata


def metadata_hash(metadata: Mapping[str, Any]) -> str:
    """SHA-256 of the metadata (all but :data:`METADATA_HASH`) as canonical JSON.

    The class names' order is what each output means: an edit that swaps two
    would invert every prediction, and the arrays' hash cannot see it.
    """
    body = {k: v for k, v in metadata.items() if k != METADATA_HASH}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _recorded_hash(metadata: Mapping[str, Any], directory: Path) -> str | None:
    value = metadata.get("content_sha256")
    if value is None:
        return None
    if not isinstance(value, str) or not _SHA256.match(value):
        raise CheckpointError(
            f"{directory}: metadata content_sha256 {value!r} is not a sha256 hex digest"
        )
    return value


def _restore_state(directory: Path) -> dict[str, Any]:
    """The ``state`` item, any failure of orbax or tensorstore as one line naming the folder.

    A truncated, deleted or bit-flipped file under ``state/`` makes tensorstore
    raise ValueError (DATA_LOSS, OUT_OF_RANGE, a zstd decode error...) or
    orbax an OSError or JSON error: all mean the same to a user.
    """
    quiet_closed_event_loop()
    try:
        target = _single_device_target(directory)
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            restored = ckptr.restore(
                directory, ocp.args.Composite(state=ocp.args.StandardRestore(target))
            )
    except Exception as e:
        # Orbax raises a read error itself, or wraps tensorstore's in a bare Exception
        # ("Encountered error while reading array index"); anything else is a bug.
        cause = e if isinstance(e, (ValueError, OSError, EOFError)) else storage_read_error(e)
        if cause is None:
            raise
        _quiet_abandoned_reads()
        raise CheckpointError(
            f"{directory}: the checkpoint's arrays cannot be read; files under state/ are "
            f"truncated, missing or corrupted ({_short(cause)})"
        ) from None
    state = restored["state"]
    if not isinstance(state, Mapping) or not isinstance(state.get("params"), Mapping):
        raise CheckpointError(f"{directory}: the checkpoint's state holds no params")
    return dict(state)


UNSAID_CROP_SIZE = 224
"""The crop of a checkpoint whose metadata does not say (the protocol's)."""


def _single_device_target(directory: Path) -> Any:
    """The stored arrays' shapes and dtypes, placed on this process's first device.

    Orbax restores an array with the sharding it was saved with: a model
    trained on 8 GPUs (replicated over their mesh) would not load on a laptop
    ("topology mismatch"). A model is read whole wherever it is used.
    """
    # The composite layout has no per-item checkpoint metadata file: orbax logs that as
    # a warning, and a damaged item's as another, before the one line that matters.
    with quiet_logger("absl", logging.ERROR), ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.metadata(directory / "state").item_metadata
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree_util.tree_map(
        lambda m: (
            jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device) if hasattr(m, "shape") else m
        ),
        tree,
    )


_TENSORSTORE_STATUS = re.compile(
    r"^(?:DATA_LOSS|OUT_OF_RANGE|FAILED_PRECONDITION|NOT_FOUND|INVALID_ARGUMENT|UNKNOWN|"
    r"INTERNAL|ABORTED|UNAVAILABLE|PERMISSION_DENIED):"
)
"""How tensorstore's errors begin: an absl status code (it raises them as ValueError)."""


def storage_read_error(err: BaseException) -> BaseException | None:
    """The error in ``err``'s chain that says stored bytes could not be read, else None.

    Orbax re-raises a failed array read as a bare ``Exception`` whose cause is
    tensorstore's ``ValueError`` (``OUT_OF_RANGE: Error reading "params.x/0"
    ...``, a truncated zstd stream, a missing chunk); its JSON items fail with
    ``json.JSONDecodeError`` and missing files with ``OSError``. Those mean a
    damaged checkpoint. Matching them by kind and by tensorstore's status prefix,
    not "any exception", keeps a genuine bug (a TypeError in our code, or one
    orbax wraps the same way) a traceback.
    """
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError)):
            return e
        if isinstance(e, ValueError) and _TENSORSTORE_STATUS.match(str(e)):
            return e
        e = e.__cause__ or e.__context__
    return None


_OCDBT_WHERE = re.compile(r' in OCDBT database at local file "[^"]*"')
"""Where tensorstore says the array lives: the checkpoint folder, which the line names."""


def _short(err: BaseException) -> str:
    text = _OCDBT_WHERE.sub("", one_line(err).split(" [tensorstore_spec=")[0])
    text = text or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def quiet_closed_event_loop() -> None:
    """Drops tensorstore's late "Event loop is closed" reports after a failed restore.

    When one array of a restore fails, orbax closes its asyncio loop while
    tensorstore still completes the other reads; each completion then reports
    ``RuntimeError: Event loop is closed`` through ``sys.unraisablehook``, a
    six-line traceback per array (about a hundred for a ResNet), some of them
    after the restore has returned; a read coroutine closed unfinished
    reports its ``GeneratorExit`` as orbax's "error while reading array
    index". They say nothing about the checkpoint, so the hook installed here
    drops exactly those reports and passes every other one to the hook it
    wraps. It stays installed because the reports come late; installing it
    again is a no-op unless the hook was replaced since.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_drops_closed_event_loop", False):
        return

    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        # A read orbax abandoned (its coroutine closed, GeneratorExit) that it then reports
        # as an error of its own while being closed: the restore has already failed.
        if isinstance(exc.__cause__, GeneratorExit) and "while reading array index" in str(exc):
            return
        previous(unraisable)

    hook._drops_closed_event_loop = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)


# --- metadata against arrays -------------------------------------------------------------------


def check_metadata(
    variables: Mapping[str, Any], metadata: Mapping[str, Any], where: str | Path
) -> None:
    """Refuses metadata that disagrees with the arrays, before anything is built from it.

    ``arch`` must be a known arch whose parameter tree (paths and shapes,
    from ``jax.eval_shape`` of its init: no memory) is exactly the stored
    one; ``num_classes`` must equal the head's output size; ``class_names``
    (if not null) one string per class; ``multilabel`` a bool;
    ``resize_size``/``crop_size`` integers with ``MIN_CROP_SIZE <= crop <=
    MAX_CROP_SIZE`` and ``crop <= resize <= MAX_RESIZE_SIZE``; ``bits_stored``
    null or an integer from 8 to 16; ``dicom_window`` null or ``[center, width]``
    (finite, width above 0); ``decoding_version`` and ``numerics`` null or positive
    integers;
    ``precision`` a ``--precision`` value;
    ``num_batches_tracked`` null or names to integers. Optional fields may be
    absent. ``where`` names the checkpoint in the one-line
    :class:`CheckpointError`.
    """
    if not isinstance(metadata, Mapping):
        raise CheckpointError(f"{where}: metadata is not a JSON object")
    for field in ("arch", "num_classes"):
        if field not in metadata:
            raise CheckpointError(f"{where}: metadata lacks the field {field!r}")
    version = metadata.get("format_version", FORMAT_VERSION)
    if not _is_int(version) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: metadata format_version {version!r} is not one this medft-jax reads "
            f"(1 to {FORMAT_VERSION})"
            + ("; upgrade medft-jax" if _is_int(version) and version > FORMAT_VERSION else "")
        )
    arch = metadata["arch"]
    if not isinstance(arch, str) or not is_known_arch(arch):
        raise CheckpointError(
            f"{where}: metadata arch {arch!r} is not a known arch ({', '.join(ARCHS)})"
        )
    num_classes = metadata["num_classes"]
    if not _is_int(num_classes) or num_classes < 1:
        raise CheckpointError(
            f"{where}: metadata num_classes {num_classes!r} is not a positive integer"
        )
    stored = _stored_shapes(variables)
    head_path = f"params/{get_arch(arch).partition.head}/kernel"
    head = stored.get(head_path)
    if head is None or len(head) != 2:
        raise CheckpointError(_arch_mismatch(where, arch, stored, None))
    if num_classes != head[1]:
        raise CheckpointError(
            f"{where}: metadata num_classes {num_classes} disagrees with the stored head "
            f"{head_path} of shape {head} ({head[1]} classes)"
        )
    if stored != _expected_shapes(arch, head[1]):
        raise CheckpointError(_arch_mismatch(where, arch, stored, _expected_shapes(arch, head[1])))
    _check_other_fields(metadata, num_classes, where)


DECODERS = ("t1w_mri",)
"""Tasks whose files a run read by the task's own reader (``decoder``), not as images:
T1w MRI's ``.mat`` slices, min-max scaled each."""


def _check_other_fields(metadata: Mapping[str, Any], num_classes: int, where: Any) -> None:
    decoder = metadata.get("decoder")
    if decoder is not None and decoder not in DECODERS:
        raise CheckpointError(
            f"{where}: metadata decoder {decoder!r} is not one this medft-jax reads "
            f"({', '.join(DECODERS)})"
        )
    names = metadata.get("class_names")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise CheckpointError(f"{where}: metadata class_names is not a list of strings")
        if len(names) != num_classes:
            raise CheckpointError(
                f"{where}: metadata class_names has {len(names)} names for {num_classes} classes"
            )
        twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if twice is not None:  # which output is which could not be told in predict's rows
            raise CheckpointError(
                f"{where}: metadata class_names names {twice!r} twice; expected one name per output"
            )
    if not isinstance(metadata.get("multilabel", False), bool):
        raise CheckpointError(
            f"{where}: metadata multilabel {metadata['multilabel']!r} is not true or false"
        )
    if num_classes == 1 and not metadata.get("multilabel", False):
        raise CheckpointError(
            f"{where}: metadata says one class and not multilabel: a softmax over one "
            "output is 1.0 for every image; a one-output head is a sigmoid one (port it "
            "again with --multilabel)"
        )
    crop = metadata.get("crop_size")
    if crop is not None and (not _is_int(crop) or not MIN_CROP_SIZE <= crop <= MAX_CROP_SIZE):
        raise CheckpointError(
            f"{where}: metadata crop_size {crop!r} is not an integer in "
            f"[{MIN_CROP_SIZE}, {MAX_CROP_SIZE}]"
        )
    resize = metadata.get("resize_size")
    low = crop if crop is not None else UNSAID_CROP_SIZE  # the crop a reader then uses
    if resize is not None and (not _is_int(resize) or not low <= resize <= MAX_RESIZE_SIZE):
        raise CheckpointError(
            f"{where}: metadata resize_size {resize!r} is not an integer in "
            f"[{low} (the crop), {MAX_RESIZE_SIZE}]"
        )
    bits = metadata.get("bits_stored")
    if bits is not None and (not _is_int(bits) or bits not in BITS_STORED):
        raise CheckpointError(
            f"{where}: metadata bits_stored {bits!r} is not an integer from 8 to 16"
        )
    window = metadata.get("dicom_window")
    if window is not None and option_value_error("dicom_window", window):
        raise CheckpointError(
            f"{where}: metadata dicom_window {window!r} is not [center, width] (two finite "
            "numbers, the width above 0)"
        )
    for key in ("decoding_version", "numerics"):
        version = metadata.get(key)
        if version is not None and (not _is_int(version) or version < 1):
            raise CheckpointError(f"{where}: metadata {key} {version!r} is not a positive integer")
    precision = metadata.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise CheckpointError(
            f"{where}: metadata precision {precision!r} is not one of {', '.join(PRECISIONS)}"
        )
    tracked = metadata.get("num_batches_tracked")
    if tracked is not None and (
        not isinstance(tracked, dict)
        or not all(isinstance(k, str) and _is_int(v) and v >= 0 for k, v in tracked.items())
    ):
        raise CheckpointError(
            f"{where}: metadata num_batches_tracked is not a mapping of names to counts"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _stored_shapes(variables: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {
        f"{collection}/{path}": tuple(int(d) for d in np.shape(leaf))
        for collection in ("params", "batch_stats")
        for path, leaf in flatten(variables.get(collection) or {}).items()
    }


@cache
def _expected_shapes(arch: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    """``arch``'s variable paths and shapes with a ``num_classes`` head (no memory used)."""
    return _stored_shapes(variable_shapes(arch, num_classes))


def _arch_mismatch(
    where: Any,
    arch: str,
    stored: dict[str, tuple[int, ...]],
    expected: dict[str, tuple[int, ...]] | None,
) -> str:
    """The one line for metadata whose arch is not the arrays' arch, naming the first
    difference and, when the arrays are another known arch's, that arch."""
    actual = next(
        (
            other
            for other in ARCHS
            if other != arch
            and len(head := stored.get(f"params/{get_arch(other).partition.head}/kernel", ())) == 2
            and stored == _expected_shapes(other, head[1])
        ),
        None,
    )
    if actual is not None:
        detail = f"the arrays are a {actual} model's"
    elif expected is None:
        head_path = f"params/{get_arch(arch).partition.head}/kernel"
        detail = f"no head {head_path} of shape (features, classes)"
    else:
        missing = sorted(expected.keys() - stored.keys())
        extra = sorted(stored.keys() - expected.keys())
        wrong = [p for p in sorted(expected.keys() & stored.keys()) if expected[p] != stored[p]]
        if missing:
            detail = f"{missing[0]} is missing ({len(missing)} missing, {len(extra)} unexpected)"
        elif extra:
            detail = f"{extra[0]} is unexpected ({len(extra)} unexpected)"
        else:
            p = wrong[0]
            detail = f"{p} has shape {stored[p]}, expected {expected[p]}"
    return f"{where}: metadata arch {arch!r} disagrees with the stored arrays ({detail})"


_SHUTDOWN_RACE = "cannot schedule new futures after shutdown"
"""What orbax's signalling thread logs, with a traceback, when the checkpoint manager
closes under it: a run refused at its resume (a damaged checkpoint) closes the manager
while that thread still starts, and the one ``error:`` line came with a traceback."""


class _DropReportedOsErrors(logging.Filter):
    """Drops orbax's ERROR logs of an OS error that :func:`naming_os_errors` re-raises,
    of its background thread racing the manager's close (:data:`_SHUTDOWN_RACE`), and of
    a Ctrl-C or SIGTERM raised while it waited for a save (the command says that one in
    its own line: "terminated (SIGTERM): ... rerunning resumes")."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, KeyboardInterrupt):  # errors.Terminated and Interrupted too
            return False
        if _SHUTDOWN_RACE in record.getMessage() or _SHUTDOWN_RACE in str(error or ""):
            return False
        if record.exc_info and record.exc_info[1] is not None:
            return os_errno_in(record.exc_info[1]) is None
        return os_errno_in(Exception(record.getMessage())) is None


class _DropAbandonedReads(logging.Filter):
    """Drops asyncio's "exception was never retrieved" reports of failed array reads.

    A damaged checkpoint fails many of orbax's concurrent reads; the first
    becomes the one-line :class:`CheckpointError`, and the others' futures,
    garbage-collected later (often as the process exits), are each reported
    with a traceback. Only tensorstore's errors (their message carries its
    spec) and those :func:`storage_read_error` recognises are dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if "never retrieved" not in record.getMessage():
            return True
        error = record.exc_info[1] if record.exc_info else None
        if error is None:
            return True
        tensorstore = isinstance(error, ValueError) and "tensorstore_spec" in str(error)
        return not tensorstore and storage_read_error(error) is None


_abandoned_reads_quieted = False


def _quiet_abandoned_reads() -> None:
    global _abandoned_reads_quieted
    if not _abandoned_reads_quieted:
        _abandoned_reads_quieted = True
        logging.getLogger("asyncio").addFilter(_DropAbandonedReads())


_quieted = False


def quiet_reported_failures() -> None:
    """Silences orbax's and tensorstore's own reports of a failed write (once per process).

    A failed save surfaces here as one exception (re-raised by
    :func:`naming_os_errors`, then one line from the command line), but
    orbax also logs it from each background thread with a traceback, and
    tensorstore reports every array write still in flight when orbax closed
    its event loop as an unraisable "Event loop is closed" error: dozens of
    tracebacks around the one line that matters. Other logs and unraisable
    errors pass through untouched.
    """
    global _quieted
    if _quieted:
        return
    _quieted = True
    for logger in ("absl", "asyncio"):  # orbax logs through absl; its futures through asyncio
        logging.getLogger(logger).addFilter(_DropReportedOsErrors())
    quiet_closed_event_loop()
    # The writes a failed save abandoned are reported again as the interpreter exits.
    warnings.filterwarnings(
        "ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning
    )
