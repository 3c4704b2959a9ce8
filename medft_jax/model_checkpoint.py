"""The model checkpoint: params, batch statistics and metadata in one orbax folder.

One format serves the weight port (ImageNet weights ported from torchvision),
the best parameters of a training run, ``experiments.predict`` and
``weights_port export``. Orbax writes into a temporary folder and renames it
when complete, so an interrupted save never leaves a folder that looks like
a finished checkpoint.

Metadata keys: ``arch``, ``num_classes``, ``multilabel``, ``class_names``
(or null), ``resize_size``, ``crop_size``, ``source`` and ``source_sha256``
(the torchvision file it came from, if any), ``num_batches_tracked``
(torchvision's BN counters, kept only so an export round-trips bit for bit),
``format_version``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A model checkpoint folder is missing, incomplete or of the wrong kind."""


def save_model(
    directory: str | Path,
    params: dict[str, Any],
    batch_stats: dict[str, Any],
    metadata: dict[str, Any],
    *,
    force: bool = False,
) -> Path:
    """Writes ``{params, batch_stats}`` and ``metadata`` to ``directory`` atomically."""
    directory = Path(directory).expanduser().absolute()
    if directory.exists() and not force:
        raise CheckpointError(f"{directory} already exists; pass --force to overwrite it")
    tree = {"params": params, "batch_stats": batch_stats}
    meta = {"format_version": FORMAT_VERSION, **metadata}
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(
            directory,
            ocp.args.Composite(state=ocp.args.StandardSave(tree), metadata=ocp.args.JsonSave(meta)),
            force=force,
        )
    return directory


def load_metadata(directory: str | Path) -> dict[str, Any]:
    """Reads only the metadata of a model checkpoint."""
    directory = _check_dir(directory)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        restored = ckptr.restore(directory, ocp.args.Composite(metadata=ocp.args.JsonRestore()))
    return dict(restored["metadata"])


def load_model(directory: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads a model checkpoint: ``({'params', 'batch_stats'}, metadata)`` as numpy arrays."""
    directory = _check_dir(directory)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        restored = ckptr.restore(
            directory,
            ocp.args.Composite(state=ocp.args.StandardRestore(), metadata=ocp.args.JsonRestore()),
        )
    state = restored["state"]
    variables = {
        "params": _to_numpy(state.get("params", {})),
        "batch_stats": _to_numpy(state.get("batch_stats", {}) or {}),
    }
    return variables, dict(restored["metadata"])


def _check_dir(directory: str | Path) -> Path:
    directory = Path(directory).expanduser().absolute()
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint folder")
    if not (directory / "metadata").exists() or not (directory / "state").exists():
        raise CheckpointError(
            f"{directory}: not a medft-jax model checkpoint (expected the orbax items "
            "'state' and 'metadata' written by weights_port or experiments.run)"
        )
    return directory


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)
