"""The model registry: ``create(arch, num_classes)`` and each arch's facts.

Models are plain Flax Linen modules with torchvision parameter names; they
know nothing of strategies. Everything a strategy or the data pipeline needs
to know about an arch (its block partition, the head's path, the resize size
its ImageNet weights were trained with) is here, as data.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from medft_jax.config import PRECISIONS
from medft_jax.models.blocks import PARTITIONS, Block, BlockPartition
from medft_jax.models.densenet import DenseNet, densenet121
from medft_jax.models.layers import BNTrain, Dtype
from medft_jax.models.resnet import ResNet, resnet50, resnet_tiny
from medft_jax.models.vgg import VGG, vgg19, vgg_tiny
from medft_jax.names import is_known_arch

__all__ = [
    "ARCHS",
    "COMPUTE_DTYPES",
    "TEST_ARCHS",
    "VGG",
    "ArchSpec",
    "BNTrain",
    "Block",
    "BlockPartition",
    "DenseNet",
    "ResNet",
    "block_outputs",
    "create",
    "get_arch",
    "init_variables",
    "is_known_arch",
    "variable_shapes",
]


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """What the toolkit knows about one architecture."""

    name: str
    build: Callable[..., nn.Module]
    partition: BlockPartition
    resize_size: int
    """Shorter side before the 224 centre crop, as in its torchvision ImageNet
    weights' transform (ResNet-50 IMAGENET1K_V2: 232; the others: 256)."""
    crop_size: int = 224
    label: str = ""
    """How tables and figures name it (torchvision's model name in prose)."""

    def resize_for(self, crop_size: int) -> int:
        """The resize size for a ``crop_size`` crop: the weights' ratio, 232/224 or 256/224.

        The one rule for the resize size: ``experiments.prepare --arch`` and
        every run use it, so a cache prepared for a run is the one it finds.
        """
        return round(crop_size * self.resize_size / self.crop_size)


ARCHS: dict[str, ArchSpec] = {
    "resnet50": ArchSpec(
        "resnet50", resnet50, PARTITIONS["resnet50"], resize_size=232, label="ResNet-50"
    ),
    "densenet121": ArchSpec(
        "densenet121", densenet121, PARTITIONS["densenet121"], resize_size=256, label="DenseNet-121"
    ),
    "vgg19": ArchSpec("vgg19", vgg19, PARTITIONS["vgg19"], resize_size=256, label="VGG-19"),
}
"""The architectures a user chooses from: ``--arch``, a grid's ``archs``, the report's columns."""

TEST_ARCHS: dict[str, ArchSpec] = {
    "resnet_tiny": ArchSpec(
        "resnet_tiny",
        resnet_tiny,
        PARTITIONS["resnet_tiny"],
        resize_size=232,
        label="ResNet (1 bottleneck per layer)",
    ),
    "vgg_tiny": ArchSpec(
        "vgg_tiny",
        vgg_tiny,
        PARTITIONS["vgg_tiny"],
        resize_size=256,
        label="VGG-19 (8 channels, 64-wide classifier)",
    ),
}
"""Small stand-ins that run by name wherever an arch does (a run, a sweep, a
checkpoint) but are offered to no user: the fast test tier trains these
instead of compiling full-size models."""


def get_arch(arch: str) -> ArchSpec:
    """The :class:`ArchSpec` of ``arch``; an unknown name lists the offered ones."""
    spec = ARCHS.get(arch) or TEST_ARCHS.get(arch)
    if spec is None:
        raise ValueError(f"unknown arch {arch!r}; known archs: {', '.join(ARCHS)}")
    return spec


COMPUTE_DTYPES: dict[str, Any] = dict(zip(PRECISIONS, (jnp.float32, jnp.bfloat16), strict=True))
"""The compute dtype of each ``--precision``: what a run trains and evaluates in,
and what ``experiments.predict`` computes in for the run's checkpoint."""


def create(arch: str, num_classes: int = 1000, *, dtype: Dtype = jnp.float32) -> nn.Module:
    """Builds ``arch`` with a ``num_classes`` head and the given compute dtype.

    Parameters are always float32; ``dtype=jnp.bfloat16`` computes in
    bfloat16 (BatchNorm statistics in float32).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return get_arch(arch).build(num_classes=num_classes, dtype=dtype)


def variable_shapes(arch: str, num_classes: int) -> dict[str, Any]:
    """``arch``'s variables (``params``, ``batch_stats``) as ``jax.ShapeDtypeStruct`` trees.

    No memory and no compiling, but tracing DenseNet-121's initialiser takes
    seconds: the weight port, the checkpoint checks and the strategies ask
    for the same trees, so each (arch, head size) is traced once a process.
    Each call returns its own dicts: a caller may edit them.
    """
    return jax.tree.map(lambda leaf: leaf, _traced_shapes(arch, num_classes))


@functools.cache
def _traced_shapes(arch: str, num_classes: int) -> dict[str, Any]:
    model = create(arch, num_classes)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))


def init_variables(
    model: nn.Module, rng: jax.Array | int = 0, image_size: int = 224
) -> dict[str, Any]:
    """Initialises ``{'params': ..., 'batch_stats': ...}`` as torchvision would.

    The initialisers follow torchvision's (kaiming-normal convs, torch's
    Linear defaults, BN weight 1 / bias 0), so an untrained model here is
    distributed as an untrained torchvision one. The jitted init is cached
    per model configuration: compiling hundreds of random draws is slow on
    CPU, and runs in one process (a sweep, the tests) share it.
    """
    if isinstance(rng, int):
        rng = jax.random.key(rng)
    x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return dict(_jitted_init(model)(rng, x))


@functools.cache
def _jitted_init(model: nn.Module) -> Callable[..., Any]:
    # Init runs once per run; on XLA's CPU backend its threefry-heavy program
    # compiles in about half the time without LLVM's optimisations (ResNet-50:
    # 11 s -> 6 s) and runs in about 2 s instead of 0.3 s: a net saving paid
    # on every run and test. The draws are the same random bits; the float
    # transform of them may round differently in the last place (tested).
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return jax.jit(model.init, compiler_options=options)


def block_outputs(intermediates: dict[str, Any]) -> dict[str, jax.Array]:
    """Each block's output from the ``intermediates`` collection of an apply.

    Models ``sow`` every block's output as ``<block>_out``; call
    ``model.apply(..., mutable=['intermediates'])`` and pass the collection.
    """
    from medft_jax.models.blocks import flatten

    out = {}
    for path, value in flatten(intermediates).items():
        name = path.split("/")[-2]
        if name.endswith("_out"):
            out[name[: -len("_out")]] = value
    return out
