"""DenseNet-121 in Flax Linen, as torchvision builds it.

Parameter paths mirror torchvision's module names
(``features/conv0``, ``features/denseblock1/denselayer1/conv1``,
``features/transition1/conv``, ``features/norm5``, ``classifier``). Each dense
block concatenates ``[input, layer1 output, layer2 output, ...]`` along
channels, in torchvision's order, so ported 1x1 kernels line up.
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
    Conv,
    Dtype,
    bn_uses_batch_stats,
    check_part,
    conv,
    features_as_computed,
    kaiming_normal_fan_in,
    max_pool_3x3_s2,
    torch_linear_bias,
    torch_linear_kernel,
)


def _conv(features: int, kernel: int, dtype: Dtype, name: str, **kw) -> Conv:
    return conv(features, kernel, kernel_init=kaiming_normal_fan_in, dtype=dtype, name=name, **kw)


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (bn_size * growth) then BN-ReLU-3x3 conv (growth)."""

    growth_rate: int
    bn_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, use_batch_stats: bool) -> jax.Array:
        d = self.dtype
        y = nn.relu(BatchNorm(dtype=d, name="norm1")(x, use_batch_stats))
        y = _conv(self.bn_size * self.growth_rate, 1, d, "conv1")(y)
        y = nn.relu(BatchNorm(dtype=d, name="norm2")(y, use_batch_stats))
        return _conv(self.growth_rate, 3, d, "conv2", padding=1)(y)


class DenseBlock(nn.Module):
    """``num_layers`` dense layers named ``denselayer1`` ... each seeing all before it."""

    num_layers: int
    growth_rate: int
    bn_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, use_batch_stats: bool) -> jax.Array:
        features = [x]
        for i in range(self.num_layers):
            inp = features[0] if len(features) == 1 else jnp.concatenate(features, axis=-1)
            new = DenseLayer(self.growth_rate, self.bn_size, self.dtype, name=f"denselayer{i + 1}")(
                inp, use_batch_stats
            )
            features.append(new)
        return jnp.concatenate(features, axis=-1)


class Transition(nn.Module):
    """BN-ReLU-1x1 conv (halving channels) then 2x2 average pooling.

    The pooling runs before the convolution here: a bias-free 1x1
    convolution and an average over pixels are both linear and act on
    different axes, so they commute, and the convolution (forward and both
    gradients) then runs on a quarter of the pixels. The result is
    torchvision's up to the order of float additions (parity tests, 1e-4).
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, use_batch_stats: bool) -> jax.Array:
        x = nn.relu(BatchNorm(dtype=self.dtype, name="norm")(x, use_batch_stats))
        return _conv(self.features, 1, self.dtype, "conv")(avg_pool_2x2(x))


def avg_pool_2x2(x: jax.Array) -> jax.Array:
    """torch's ``AvgPool2d(2, 2)`` on NHWC input: an odd last row or column is dropped.

    A reshape and a mean rather than ``reduce_window``, which XLA's CPU
    backend runs several times slower for this window.
    """
    n, h, w, c = x.shape
    if h < 2 or w < 2:  # torch refuses it too; a mean over nothing would be NaN logits
        raise ValueError(
            f"a {h}x{w} feature map is too small for DenseNet's 2x2 transition pooling; "
            "give larger images (a run's --image-size is at least 32)"
        )
    x = x[:, : h - h % 2, : w - w % 2, :]
    # jnp.mean sums in float32 whatever the compute dtype, then rounds once.
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class Features(nn.Module):
    """torchvision's ``features`` Sequential (conv0 ... norm5)."""

    growth_rate: int
    block_config: Sequence[int]
    num_init_features: int
    bn_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, bn_train: BNTrain) -> jax.Array:
        d = self.dtype
        x = _conv(self.num_init_features, 7, d, "conv0", stride=2, padding=3)(x)
        x = BatchNorm(dtype=d, name="norm0")(x, bn_uses_batch_stats(bn_train, "stem"))
        x = max_pool_3x3_s2(nn.relu(x))
        self.sow("intermediates", "stem_out", x)
        channels = self.num_init_features
        for i, n in enumerate(self.block_config):
            name = f"denseblock{i + 1}"
            x = DenseBlock(n, self.growth_rate, self.bn_size, d, name=name)(
                x, bn_uses_batch_stats(bn_train, name)
            )
            self.sow("intermediates", f"{name}_out", x)
            channels += n * self.growth_rate
            if i != len(self.block_config) - 1:
                name = f"transition{i + 1}"
                channels //= 2
                x = Transition(channels, d, name=name)(x, bn_uses_batch_stats(bn_train, name))
                self.sow("intermediates", f"{name}_out", x)
        return BatchNorm(dtype=d, name="norm5")(x, bn_uses_batch_stats(bn_train, "classifier"))


class DenseNet(nn.Module):
    """torchvision DenseNet (BC), NHWC input.

    Attributes:
      num_classes: size of the ``classifier`` head.
      dtype: compute dtype (parameters and BN statistics stay float32).
    """

    num_classes: int = 1000
    growth_rate: int = 32
    block_config: Sequence[int] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4
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
        """Logits for an NHWC float batch; see ``ResNet.__call__`` for the arguments.

        The backbone ends at the pooled ReLU of ``norm5``: ``(N, 1024)``.
        """
        del deterministic
        check_part(part)
        x = x.astype(self.dtype)
        if part != "head":
            x = Features(
                self.growth_rate,
                self.block_config,
                self.num_init_features,
                self.bn_size,
                self.dtype,
                name="features",
            )(x, bn_train)
            x = features_as_computed(jnp.mean(nn.relu(x), axis=(1, 2)), self.dtype)
        if part == "backbone":
            return x
        x = nn.Dense(
            self.num_classes,
            kernel_init=torch_linear_kernel,
            bias_init=torch_linear_bias(x.shape[-1]),
            dtype=HEAD_DTYPE,
            param_dtype=jnp.float32,
            name="classifier",
        )(x)
        self.sow("intermediates", "classifier_out", x)
        return x


def densenet121(num_classes: int = 1000, dtype: Dtype = jnp.float32) -> DenseNet:
    return DenseNet(num_classes=num_classes, block_config=(6, 12, 24, 16), dtype=dtype)
