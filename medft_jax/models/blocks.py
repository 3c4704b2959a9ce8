"""Block partitions of each architecture, as data.

A block is a named, ordered group of parameter-path prefixes written in
torchvision's module names (``layer1``, ``features/denseblock1``,
``features/0``). Gradual unfreezing, reports and the BatchNorm mode all speak
in these blocks. The partition follows the paper authors' block-wise split of
torchvision's ``named_parameters()`` (see the strategies spec); the *head*
is the last Linear layer only, which is replaced and re-initialised for the
task and always trains.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import jax
from flax import traverse_util


@dataclasses.dataclass(frozen=True)
class Block:
    """One block: its name and the parameter-path prefixes it owns."""

    name: str
    prefixes: tuple[str, ...]

    def __post_init__(self) -> None:
        # ("encoder") is the string "encoder" (a one-element tuple needs its comma): read
        # one character at a time, each a prefix, it owned no parameter, or the wrong ones.
        if isinstance(self.prefixes, str):
            raise TypeError(
                f"Block {self.name!r}: prefixes must be a tuple of path prefixes, got the "
                f"string {self.prefixes!r} (a one-element tuple needs its comma: "
                f"({self.prefixes!r},))"
            )
        if not self.prefixes:
            raise ValueError(f"Block {self.name!r}: no path prefixes; it would own nothing")

    def owns(self, path: str) -> bool:
        parts = path.split("/")
        return any(parts[: len(p.split("/"))] == p.split("/") for p in self.prefixes)


@dataclasses.dataclass(frozen=True)
class BlockPartition:
    """The ordered blocks (input to output) of one architecture and its head."""

    arch: str
    blocks: tuple[Block, ...]
    head: str
    """Path prefix of the new head (the last Linear layer)."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.blocks)

    @property
    def head_block(self) -> str:
        """The name of the block that holds the head (always the last one)."""
        return self.block_of(self.head + "/kernel")

    def block_of(self, path: str) -> str:
        """The block owning a parameter path such as ``layer1/0/conv1/kernel``."""
        owners = [b.name for b in self.blocks if b.owns(path)]
        if len(owners) != 1:
            wrapped = (
                "; params wrapped as {'params': ...}? give variables['params']"
                if not owners and path.startswith("params/")
                else ""
            )
            raise KeyError(
                f"{self.arch}: parameter {path!r} belongs to {len(owners)} blocks "
                f"({owners}), expected exactly one of {list(self.names)}{wrapped}"
            )
        return owners[0]

    def is_head(self, path: str) -> bool:
        return Block("head", (self.head,)).owns(path)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(
                f"{self.arch} has no block {name!r}; blocks are {list(self.names)}"
            ) from None


def path_str(path: Iterable[Any]) -> str:
    """A ``jax.tree_util`` key path -> ``'layer1/0/conv1/kernel'``, the partition's spelling.

    A last ``.value`` attribute is left out: flax.nnx's ``State`` holds each parameter
    in a variable whose array is its ``value`` (``encoder/kernel/value``), and the
    parameter's name, which patterns such as ``*/bias`` and ``*/kernel`` match, is the
    path to the variable. A dict key named ``value`` stays (a user's own module name).
    """
    keys = tuple(path)
    if keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name == "value":
        keys = keys[:-1]
    return jax.tree_util.keystr(keys, simple=True, separator="/")


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dict -> ``{'a/b/c': leaf}`` in tree order (jax's: keys sorted at each level).

    Tree order, not insertion order, so every flat view of one tree lists its
    leaves as ``jax.tree.leaves`` does, however the tree was built or restored.
    """
    return {path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{'a/b/c': leaf}`` -> nested dict, the inverse of :func:`flatten`."""
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def _vgg_stage(*indices: int) -> tuple[str, ...]:
    return tuple(f"features/{i}" for i in indices)


RESNET50 = BlockPartition(
    arch="resnet50",
    blocks=(
        Block("stem", ("conv1", "bn1")),
        Block("layer1", ("layer1",)),
        Block("layer2", ("layer2",)),
        Block("layer3", ("layer3",)),
        Block("layer4", ("layer4",)),
        Block("fc", ("fc",)),
    ),
    head="fc",
)

# ResNet-50's blocks and paths with one bottleneck per layer (``layerN/0`` only).
RESNET_TINY = dataclasses.replace(RESNET50, arch="resnet_tiny")

DENSENET121 = BlockPartition(
    arch="densenet121",
    blocks=(
        Block("stem", ("features/conv0", "features/norm0")),
        Block("denseblock1", ("features/denseblock1",)),
        Block("transition1", ("features/transition1",)),
        Block("denseblock2", ("features/denseblock2",)),
        Block("transition2", ("features/transition2",)),
        Block("denseblock3", ("features/denseblock3",)),
        Block("transition3", ("features/transition3",)),
        Block("denseblock4", ("features/denseblock4",)),
        Block("classifier", ("features/norm5", "classifier")),
    ),
    head="classifier",
)

# torchvision's vgg19 "E" config: convs at these indices of ``features``.
VGG19 = BlockPartition(
    arch="vgg19",
    blocks=(
        Block("stage1", _vgg_stage(0, 2)),
        Block("stage2", _vgg_stage(5, 7)),
        Block("stage3", _vgg_stage(10, 12, 14, 16)),
        Block("stage4", _vgg_stage(19, 21, 23, 25)),
        Block("stage5", _vgg_stage(28, 30, 32, 34)),
        Block("classifier", ("classifier",)),
    ),
    head="classifier/6",
)

# VGG-19's blocks and paths at 8 channels.
VGG_TINY = dataclasses.replace(VGG19, arch="vgg_tiny")

PARTITIONS: dict[str, BlockPartition] = {
    p.arch: p for p in (RESNET50, RESNET_TINY, DENSENET121, VGG19, VGG_TINY)
}
