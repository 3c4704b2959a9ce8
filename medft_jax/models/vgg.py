"""VGG-19 (no BatchNorm) in Flax Linen, as torchvision builds it.

Parameter paths mirror torchvision's indices (``features/0`` ...
``features/34``, ``classifier/0``, ``classifier/3``, ``classifier/6``). The
adaptive 7x7 average pool makes any input of at least 32 px work, and the
feature map is flattened in torch's NCHW order so ported ``classifier/0``
weights apply unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from medft_jax.models.layers import (
    HEAD_DTYPE,
    BNTrain,
    Dense,
    Dtype,
    adaptive_avg_pool,
    check_part,
    conv,
    features_as_computed,
    torch_linear_bias,
    torch_linear_kernel,
)
from medft_jax.models.pool import max_pool2d

# torchvision cfgs["E"]: channels per conv, "M" for a 2x2 max pool.
VGG19_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
    512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)  # fmt: skip

_linear_init = nn.initializers.normal(0.01)


class Features(nn.Module):
    """torchvision's ``features`` Sequential; convs keep their Sequential index."""

    cfg: Sequence[int | str]
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        index, stage = 0, 1
        for v in self.cfg:
            if v == "M":
                x = max_pool2d(x, 2, 2)
                self.sow("intermediates", f"stage{stage}_out", x)
                index, stage = index + 1, stage + 1
            else:
                x = conv(int(v), 3, padding=1, use_bias=True, dtype=self.dtype, name=str(index))(x)
                x = nn.relu(x)
                index += 2  # conv, ReLU
        return x


class Classifier(nn.Module):
    """Linear-ReLU-Dropout-Linear-ReLU-Dropout-Linear at indices 0, 3, 6."""

    num_classes: int
    dropout_rate: float = 0.5
    dtype: Dtype = jnp.float32
    hidden: int = 4096

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool, part: str = "all") -> jax.Array:
        """``part='backbone'`` stops at ``relu(classifier/0)``, before the first dropout.

        The cut is there, not at the head, because dropout is random: what
        comes before it is a pure function of the image; the head part then
        applies the same dropout layers (same names, so the same masks for
        the same RNG) and ``classifier/3`` before ``classifier/6``.
        """
        if part != "head":
            x = nn.relu(Dense(self.hidden, kernel_init=_linear_init, dtype=self.dtype, name="0")(x))
            x = features_as_computed(x, self.dtype)
        if part == "backbone":
            return x
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        x = Dense(self.hidden, kernel_init=_linear_init, dtype=self.dtype, name="3")(x)
        x = nn.Dropout(self.dropout_rate)(nn.relu(x), deterministic=deterministic)
        # The new head: a fresh torch.nn.Linear (see medft_jax.models.layers.torch_linear_bias).
        return nn.Dense(
            self.num_classes,
            kernel_init=torch_linear_kernel,
            bias_init=torch_linear_bias(x.shape[-1]),
            dtype=HEAD_DTYPE,
            name="6",
        )(x)


class VGG(nn.Module):
    """torchvision VGG without BatchNorm, NHWC input.

    Attributes:
      num_classes: size of the ``classifier/6`` head.
      dropout_rate: the classifier's dropout (torchvision: 0.5), active when
        called with ``deterministic=False`` and a ``dropout`` RNG.
      dtype: compute dtype (parameters stay float32).
      hidden: width of ``classifier/0`` and ``classifier/3`` (torchvision: 4096).
    """

    num_classes: int = 1000
    cfg: Sequence[int | str] = VGG19_CFG
    dropout_rate: float = 0.5
    dtype: Dtype = jnp.float32
    hidden: int = 4096

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        bn_train: BNTrain = False,
        deterministic: bool = True,
        part: str = "all",
    ) -> jax.Array:
        """Logits for an NHWC float batch; ``bn_train`` is accepted and unused (no BN).

        The backbone ends at ``relu(classifier/0)``, ``(N, hidden)``: see
        :class:`Classifier`.
        """
        del bn_train
        check_part(part)
        x = x.astype(self.dtype)
        if part != "head":
            x = Features(self.cfg, self.dtype, name="features")(x)
            x = adaptive_avg_pool(x, (7, 7))
            x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # torch's NCHW flatten
        x = Classifier(
            self.num_classes, self.dropout_rate, self.dtype, self.hidden, name="classifier"
        )(x, deterministic, part)
        if part != "backbone":
            self.sow("intermediates", "classifier_out", x)
        return x


def vgg19(num_classes: int = 1000, dtype: Dtype = jnp.float32) -> VGG:
    return VGG(num_classes=num_classes, cfg=VGG19_CFG, dtype=dtype)


# VGG-19's layers at 8 channels: every conv at its torchvision index, so its blocks,
# parameter paths and strategies are VGG-19's.
VGG_TINY_CFG: tuple[int | str, ...] = tuple(v if v == "M" else 8 for v in VGG19_CFG)


def vgg_tiny(num_classes: int = 1000, dtype: Dtype = jnp.float32) -> VGG:
    """VGG-19 at 8 channels and a 64-wide classifier: the tests' stand-in for it.

    VGG-19's cost is its classifier (25088x4096, 103M parameters: 0.4 GB a checkpoint,
    three with Adam's moments); this one has the same layers, blocks and paths (no
    BatchNorm, the fc6/fc7 dropout), so what depends on VGG's shape (features cached under
    ``--frozen-bn update``, dropout in the head) is tested in seconds.
    """
    return VGG(num_classes=num_classes, cfg=VGG_TINY_CFG, dtype=dtype, hidden=64)
