"""Starting weights for a run: ``--weights auto|imagenet|none|PATH``.

``auto`` uses the cached ported ImageNet weights, or downloads and ports them
when online; offline and uncached it says so in one loud line and the run
starts from random initialisation. ``imagenet`` fails instead. ``PATH`` is a
model checkpoint (ported or from an earlier run). The new head is never
taken from the checkpoint: it keeps the run's seeded initialisation, sized
for the task.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import numpy as np

from medft_jax.checkpoints.model import CheckpointError, load_model
from medft_jax.data.locations import CACHE_VARIABLE
from medft_jax.errors import UNWRITABLE
from medft_jax.locks import build_lock
from medft_jax.models.blocks import BlockPartition, flatten, unflatten

_UNAVAILABLE: dict[str, str] = {}
"""Archs whose ImageNet weights could not be ported in this process, and why.

A sweep resolves ``auto`` once per run; on an offline node each attempt
would try the download again (a network timeout per run) and print the
same warning. The first failure is remembered instead.
"""


_WARNED: set[str] = set()
"""Archs whose fallback to random initialisation this process has announced."""


def locate(weights: str, arch: str, *, warn: bool = True) -> Path | None:
    """The checkpoint folder ``--weights`` names for ``arch``, or None for random init.

    ``auto`` and ``imagenet`` port torchvision's weights on first use (once
    per process and arch, see :data:`_UNAVAILABLE`); ``auto`` falls back to
    None with one warning (once per process and arch, and only when ``warn``:
    a run identified but skipped trains nothing to warn of), ``imagenet``
    raises. A path must exist.
    """
    if weights == "none":
        return None
    if weights in ("auto", "imagenet"):
        path = _imagenet(arch, warn=warn and weights == "auto")
        if path is None and weights == "imagenet":
            raise CheckpointError(f"--weights imagenet: {_UNAVAILABLE[arch]}")
        return path
    path = Path(weights).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"--weights {weights}: no such checkpoint folder; expected auto, imagenet, none or "
            "a model checkpoint folder"
        )
    return path


def _imagenet(arch: str, *, warn: bool) -> Path | None:
    """The ported ImageNet checkpoint of ``arch``, ported on first use; None if unavailable.

    The reason is kept in :data:`_UNAVAILABLE`; ``warn`` prints it, once, when
    first found (``auto`` then trains from random initialisation). An arch
    torchvision has no weights for (``resnet_tiny``) is unavailable too.
    """
    import weights_port

    path = None
    try:
        path = weights_port.default_checkpoint(arch)
        if path.exists():
            weights_port.remove_killed_downloads(arch)
            return path
        if arch not in _UNAVAILABLE:
            with one_porter(path):  # two runs starting at once would port over each other
                return path if path.exists() else weights_port.port_imagenet(arch)
    except weights_port.PortError as e:
        _UNAVAILABLE[arch] = str(e)
    except OSError as e:
        # A read-only HOME: the demo trains, as offline, and says why. Any other failure
        # (a download cut off, a full disk) stops the run as before: a sweep would
        # otherwise train every later run of the arch from random weights.
        if path is None or e.errno not in UNWRITABLE:
            raise
        _UNAVAILABLE[arch] = (
            f"the weights cache {path.parent} cannot be written ({e.strerror or e}); "
            f"set {CACHE_VARIABLE} to a writable folder"
        )
    if warn and arch not in _WARNED:
        _WARNED.add(arch)
        reason = _UNAVAILABLE[arch]
        if "python -m weights_port" in reason or CACHE_VARIABLE in reason:  # says what to do
            hint = ""
        elif arch in weights_port.WEIGHTS_NAMES:
            hint = f" Port them with: python -m weights_port --download --arch {arch}"
        else:
            hint = " Say --weights none for random initialisation, or --weights PATH"
        print(  # every process: this host's weights cache (another host's may hold them)
            f"WARNING: no ImageNet weights for {arch} ({reason}); TRAINING FROM "
            f"RANDOM INITIALISATION.{hint}",
            file=sys.stderr,
        )
    return None


def one_porter(checkpoint: Path) -> contextlib.AbstractContextManager[None]:
    """One process at a time ports ``checkpoint``; the others wait, then find it there
    (runs with ``--weights auto``, and ``python -m weights_port`` into the same folder:
    two ports at once shared one staging folder and both failed, with tracebacks).

    Not under multi-host JAX: there every process ports together (orbax's
    save is a collective), and one waiting for a lock another holds while
    that one waits for it at orbax's barrier would never return. A port that fails (a
    file that is no state_dict, another arch's weights) leaves no lock file behind.
    """
    import jax

    if jax.process_count() > 1:
        return contextlib.nullcontext()
    return build_lock(checkpoint.parent / f".{checkpoint.name}.lock", f"porting {checkpoint}")


def resolve(weights: str, arch: str) -> tuple[dict[str, Any] | None, str]:
    """``(variables or None, what was used)`` for a ``--weights`` value."""
    path = locate(weights, arch)
    if path is None:
        used = "random initialisation" if weights == "none" else "ImageNet weights unavailable"
        return None, f"none ({used})"
    try:
        variables, metadata = load_model(path)
    except CheckpointError as err:
        if weights not in ("auto", "imagenet"):
            raise
        # The ImageNet slot the toolkit ported: say how it is ported again.
        raise CheckpointError(
            f"{err}; port them again: python -m weights_port --download --arch {arch} --force"
        ) from None
    if weights in ("auto", "imagenet"):
        import weights_port

        # The ImageNet slot could be filled by hand (the offline hint's port) with any
        # file, ResNet-50's V1 among them: runs would be recorded as trained from V2.
        problem = weights_port.imagenet_slot_problem(arch, metadata)
        if problem:
            raise CheckpointError(
                f"--weights {weights}: {path}: {problem}; delete that folder to port them "
                f"again, or train from it by its path (--weights {path})"
            )
        return variables, f"imagenet ({path})"
    if metadata.get("arch") != arch:
        raise CheckpointError(
            f"--weights {path}: checkpoint is for arch {metadata.get('arch')!r}, not {arch!r}"
        )
    return variables, str(path)


def merge(
    initial: dict[str, Any], pretrained: dict[str, Any], partition: BlockPartition
) -> dict[str, Any]:
    """``initial`` with every non-head parameter and all BN statistics from ``pretrained``.

    Shapes must agree leaf by leaf; a mismatch names the parameter.
    """
    out = {}
    for collection in ("params", "batch_stats"):
        init_flat = flatten(initial.get(collection, {}))
        pre_flat = flatten(pretrained.get(collection, {}))
        merged = {}
        for path, value in init_flat.items():
            if collection == "params" and partition.is_head(path):
                merged[path] = value
                continue
            if path not in pre_flat:
                raise CheckpointError(f"pretrained weights lack {collection}/{path}")
            src = np.asarray(pre_flat[path])
            if src.shape != tuple(value.shape):
                raise CheckpointError(
                    f"pretrained {collection}/{path} has shape {src.shape}, "
                    f"expected {tuple(value.shape)}"
                )
            merged[path] = src.astype(np.asarray(value).dtype)
        out[collection] = unflatten(merged) if merged else {}
    return out
