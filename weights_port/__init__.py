"""torchvision ImageNet checkpoints <-> medft-jax model checkpoints (orbax).

``python -m weights_port --arch resnet50 --torch-weights FILE --out DIR``
ports a torchvision state_dict (``.pth`` or ``.safetensors``);
``--download`` fetches torchvision's ImageNet weights first.
``python -m weights_port export --checkpoint DIR --out model.pth`` goes back.

The names below live in :mod:`weights_port.porting` and are loaded on first use
(PEP 562): the port needs JAX, Flax and orbax (seconds to import), its ``--help``
and a mistyped flag do not.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from weights_port.porting import (
        WEIGHTS_NAMES,
        PortError,
        cache_dir,
        default_checkpoint,
        export,
        imagenet_slot_problem,
        imagenet_source_problem,
        port,
        port_imagenet,
        ported_imagenet,
        remove_killed_downloads,
    )

__all__ = [
    "WEIGHTS_NAMES",
    "PortError",
    "cache_dir",
    "default_checkpoint",
    "export",
    "imagenet_slot_problem",
    "imagenet_source_problem",
    "port",
    "port_imagenet",
    "ported_imagenet",
    "remove_killed_downloads",
]


def __getattr__(name: str) -> Any:
    # Only the API: ``from weights_port import fetch`` asks for a submodule this way first.
    if name not in __all__:
        raise AttributeError(f"module 'weights_port' has no attribute {name!r}")
    value = getattr(importlib.import_module("weights_port.porting"), name)
    globals()[name] = value  # once: a monkeypatch of weights_port.NAME then holds
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
