"""ResNet-50 (torchvision's v1.5: stride in the 3x3 conv) in Flax Linen.

Parameter paths mirror torchvision's module names (``conv1``, ``bn1``,
``layer1/0/conv1``, ``layer1/0/downsample/0``, ``fc``), so a torchvision
state_dict maps onto this tree key by key.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from medft_jax.models.layers import (
    HEAD_DTYPE,
    BatchNorm,
    BNTrain,
    Dtype,
    bn_uses_batch_stats,
    check_part,
    conv,
    features_as_computed,
    max_pool_3x3_s2,
    torch_linear_bias,
    torch_linear_kernel,
)


class Downsample(nn.Module):
    """torchvision's ``downsample`` Sequential: ``0`` = 1x1 conv, ``1`` = BN."""

    features: int
    stride: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, use_batch_stats: bool) -> jax.Array:
        x = conv(self.features, 1, stride=self.stride, dtype=self.dtype, name="0")(x)
        return BatchNorm(dtype=self.dtype, name="1")(x, use_batch_stats)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 with expansion 4 and a projection shortcut."""

    planes: int
    stride: int = 1
    downsample: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, use_batch_stats: bool) -> jax.Array:
        d = self.dtype
        out = conv(self.planes, 1, dtype=d, name="conv1")(x)
        out = nn.relu(BatchNorm(dtype=d, name="bn1")(out, use_batch_stats))
        out = conv(self.planes, 3, stride=self.stride, padding=1, dtype=d, name="conv2")(out)
        out = nn.relu(BatchNorm(dtype=d, name="bn2")(out, use_batch_stats))
        out = conv(self.planes * 4, 1, dtype=d, name="conv3")(out)
        out = BatchNorm(dtype=d, name="bn3")(out, use_batch_stats)
        if self.downsample:
            x = Downsample(self.planes * 4, self.stride, dtype=d, name="downsample")(
                x, use_batch_stats
            )
        return nn.relu(out + x)


class ResLayer(nn.Module):
    """torchvision's ``layerN`` Sequential of bottlenecks named ``0``, ``1``, ..."""

    planes: int
    num_blocks: int
    stride: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, use_batch_stats: bool) -> jax.Array:
        for i in range(self.num_blocks):
            x = Bottleneck(
                self.planes,
                stride=self.stride if i == 0 else 1,
                downsample=i == 0,
                dtype=self.dtype,
                name=str(i),
            )(x, use_batch_stats)
        return x


class ResNet(nn.Module):
    """torchvision ResNet with bottleneck blocks, NHWC input.

    Attributes:
      num_classes: size of the ``fc`` head.
      stage_sizes: bottlenecks per layer (ResNet-50: 3, 4, 6, 3).
      dtype: compute dtype (parameters and BN statistics stay float32).
    """

    num_classes: int = 1000
    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        bn_train: BNTrain = False,
        deterministic: bool = True,
        part: str = "all",
    ) -> jax.Array:
        """Logits for an NHWC float batch.

        Args:
          x: images, already normalised, shape (N, H, W, 3); with
            ``part='head'`` the pooled features ``(N, 2048)``.
          bn_train: which blocks' BatchNorms use batch statistics (see
            :data:`medft_jax.models.layers.BNTrain`).
          deterministic: unused (no dropout in ResNet); accepted so every
            model has one call signature.
          part: see :data:`medft_jax.models.layers.PARTS`; the backbone
            ends at the global average pool.
        """
        del deterministic
        check_part(part)
        d = self.dtype
        x = x.astype(d)
        if part != "head":
            x = features_as_computed(self.backbone(x, bn_train), d)
        if part == "backbone":
            return x
        fan_in = x.shape[-1]
        x = nn.Dense(
            self.num_classes,
            kernel_init=torch_linear_kernel,
            bias_init=torch_linear_bias(fan_in),
            dtype=HEAD_DTYPE,
            param_dtype=jnp.float32,
            name="fc",
        )(x)
        self.sow("intermediates", "fc_out", x)
        return x

    def backbone(self, x: jax.Array, bn_train: BNTrain) -> jax.Array:
        """Images -> pooled features ``(N, 2048)``; called from ``__call__`` (its scope)."""
        d = self.dtype
        x = conv(64, 7, stride=2, padding=3, dtype=d, name="conv1")(x)
        x = BatchNorm(dtype=d, name="bn1")(x, bn_uses_batch_stats(bn_train, "stem"))
        x = max_pool_3x3_s2(nn.relu(x))
        self.sow("intermediates", "stem_out", x)
        for i, n in enumerate(self.stage_sizes):
            name = f"layer{i + 1}"
            x = ResLayer(64 * 2**i, n, 1 if i == 0 else 2, dtype=d, name=name)(
                x, bn_uses_batch_stats(bn_train, name)
            )
            self.sow("intermediates", f"{name}_out", x)
        return jnp.mean(x, axis=(1, 2))


def resnet50(num_classes: int = 1000, dtype: Dtype = jnp.float32) -> ResNet:
    return ResNet(num_classes=num_classes, stage_sizes=(3, 4, 6, 3), dtype=dtype)


def resnet_tiny(num_classes: int = 1000, dtype: Dtype = jnp.float32) -> ResNet:
    """ResNet-50 with one bottleneck per layer: the fast tests' stand-in for it.

    As the Flax ImageNet example's ``_ResNet1``: the same layers (BatchNorm,
    downsample), blocks (``stem``, ``layer1``..``layer4``, ``fc``) and
    parameter paths (``layerN/0/...``), so strategies, checkpoints and the
    torchvision port treat it as they treat ResNet-50, at a fraction of the
    compile time. torchvision's ``ResNet(Bottleneck, [1, 1, 1, 1])`` has its
    state_dict keys.
    """
    return ResNet(num_classes=num_classes, stage_sizes=(1, 1, 1, 1), dtype=dtype)
