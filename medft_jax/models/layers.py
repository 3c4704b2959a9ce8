"""Layers that behave exactly as their torch counterparts do.

Flax's built-ins differ from torch in small ways that matter for weight
parity: ``nn.BatchNorm`` updates its running variance with the biased batch
variance (torch uses the unbiased one) and uses the opposite momentum
convention; torch's default ``Linear`` initialiser draws its bias from a
fan-in dependent uniform; ``AdaptiveAvgPool2d`` has its own overlapping bin
rule. The modules here reproduce torch so that a torchvision checkpoint
ported to Flax gives the same logits and the same running statistics.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from medft_jax.errors import UserError
from medft_jax.models.conv import conv2d
from medft_jax.models.pool import max_pool2d

Dtype = jnp.dtype | type
BNTrain = bool | Collection[str]

HEAD_DTYPE = jnp.float32
"""What the new classifier layer computes in, whatever the model's compute dtype: a bf16
run's logits in bfloat16 carry 8 bits, so near scores tie and AUROC and mAP are coarser
than the model. The layer is one matmul of the pooled features, so float32 costs
nothing measurable; mixed-precision practice keeps the output layer in float32 too."""

PARTS = ("all", "backbone", "head")
"""What a model call computes: ``'all'`` (images -> logits), ``'backbone'``
(images -> the features the head's trained layer reads, after every
BatchNorm and before any dropout) or ``'head'`` (those features -> logits).
``head(backbone(x)) == all(x)``: the split lets linear probing train on
features computed once (:mod:`medft_jax.features`)."""


def features_as_computed(x: jax.Array, dtype: Dtype) -> jax.Array:
    """The backbone's features rounded to the compute ``dtype``, where they meet the head.

    XLA may keep a bfloat16 value in float32 inside a fusion (excess precision), so a
    bf16 model run whole fed its head other numbers than the backbone's bf16 output,
    which :mod:`medft_jax.features` stores: a cached bf16 run's logits then differed
    from an uncached one's by about 0.2 %. ``reduce_precision`` is not elided; at
    float32 it is the identity and left out.
    """
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float32:
        return x
    info = jnp.finfo(dtype)
    return jax.lax.reduce_precision(x, exponent_bits=info.nexp, mantissa_bits=info.nmant)


def check_part(part: str) -> None:
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")


"""Which blocks' BatchNorm layers use (and update) batch statistics.

``True``: every block; ``False``: none (inference mode, running statistics);
a collection of block names: exactly those blocks. Pass a ``frozenset`` or a
tuple when the model is called under ``jax.jit`` with this as a static
argument.
"""


def bn_uses_batch_stats(bn_train: BNTrain, block: str) -> bool:
    """Resolves a model-level :data:`BNTrain` value for one block."""
    if isinstance(bn_train, bool):
        return bn_train
    if isinstance(bn_train, str):
        raise TypeError(f"bn_train must be a bool or a collection of block names, got {bn_train!r}")
    return block in bn_train


# torch.nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu").
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch.nn.init.kaiming_normal_(w) (mode="fan_in").
kaiming_normal_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# torch.nn.Linear's default weight init: kaiming_uniform_(a=sqrt(5)) = U(±1/sqrt(fan_in)).
torch_linear_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_linear_bias(fan_in: int) -> nn.initializers.Initializer:
    """torch.nn.Linear's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Every arch's new head (ResNet ``fc``, DenseNet ``classifier``, VGG
    ``classifier/6``) is initialised as a fresh ``torch.nn.Linear``, which is
    what a PyTorch user replacing the last layer gets. torchvision's own
    model init zeroes DenseNet's and VGG's Linear biases; a zero bias has no
    relative gradient norm (Auto-RGN divides by ‖w‖), and the three archs'
    heads would start differently for no reason.
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class BatchNorm(nn.Module):
    """torch.nn.BatchNorm2d over the last axis (NHWC).

    Statistics are computed in float32 whatever the compute dtype. In training
    mode the running mean and the *unbiased* running variance are updated
    with torch's momentum convention (new = (1 - m) * old + m * batch).
    Under ``jax.jit`` over a sharded batch the mean is global, i.e. this is
    synchronised BatchNorm across devices.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, use_batch_stats: bool) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        xf = x.astype(jnp.float32)  # one conversion: the statistics' and the affine step's
        if use_batch_stats:
            if x.size == c and not self.is_initializing():
                # One value per channel (batch 1 at a 1x1 map): the batch variance is 0 and
                # every output its bias, whatever the image. torch refuses it too.
                raise UserError(
                    f"BatchNorm {'/'.join(self.scope.path)}: one value per channel in training "
                    f"(input {tuple(x.shape)}), so the batch statistics say nothing of the "
                    "image; use a larger --batch-size or --image-size"
                )
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(xf, axes)
            var = jnp.mean(jnp.square(xf - mean), axes)
            if not self.is_initializing():
                n = x.size // c
                unbiased = var * (n / max(n - 1, 1))
                ra_mean.value = (1.0 - self.momentum) * ra_mean.value + self.momentum * mean
                ra_var.value = (1.0 - self.momentum) * ra_var.value + self.momentum * unbiased
        else:
            mean, var = ra_mean.value, ra_var.value
        mul = scale * jax.lax.rsqrt(var + self.epsilon)
        shift = bias - mean * mul
        # In float32, then rounded once: the gradients of scale and bias are sums over every
        # pixel of the batch, which in bfloat16 came out 15-33% wrong (Flax's BatchNorm and
        # torch's AMP sum them in float32 too). A no-op under float32 compute.
        return (xf * mul + shift).astype(self.dtype)


class Conv(nn.Module):
    """torch.nn.Conv2d on NHWC input: square kernel, symmetric padding, HWIO float32 kernel.

    The parameters are those of ``flax.linen.Conv`` (``kernel``, ``bias``), so
    checkpoints and the torchvision port are unchanged; the product is
    :func:`medft_jax.models.conv.conv2d`, which is fast on XLA's CPU backend.
    """

    features: int
    kernel: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = False
    kernel_init: nn.initializers.Initializer = kaiming_normal_fan_out
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.kernel, self.kernel, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
        y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.padding)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = add_bias(y, bias, self.dtype)
        return y


def add_bias(y: jax.Array, bias: jax.Array, dtype: Dtype) -> jax.Array:
    """``y + bias`` in float32, rounded once to ``dtype``: the bias's gradient is a sum over
    every row and pixel of the batch, which in bfloat16 came out up to 90% wrong (a VGG-19
    conv's, over 64 x 224 x 224 values). A no-op cast under float32 compute."""
    return (y.astype(jnp.float32) + bias).astype(dtype)


class Dense(nn.Module):
    """``flax.linen.Dense``'s parameters (``kernel`` (in, out), ``bias``) and product, its
    bias added by :func:`add_bias` (in float32), where ``nn.Dense`` adds it in the compute
    dtype. For the hidden layers of VGG-19's classifier under bfloat16 compute."""

    features: int
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        y = jax.lax.dot_general(
            x.astype(self.dtype), kernel.astype(self.dtype), (((x.ndim - 1,), (0,)), ((), ()))
        )
        return add_bias(y, bias, self.dtype)


def conv(
    features: int,
    kernel: int,
    *,
    stride: int = 1,
    padding: int = 0,
    use_bias: bool = False,
    kernel_init: nn.initializers.Initializer = kaiming_normal_fan_out,
    dtype: Dtype = jnp.float32,
    name: str,
) -> Conv:
    """A torch-style Conv2d (see :class:`Conv`)."""
    return Conv(
        features,
        kernel,
        stride=stride,
        padding=padding,
        use_bias=use_bias,
        kernel_init=kernel_init,
        dtype=dtype,
        name=name,
    )


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """torch.nn.MaxPool2d(kernel_size=3, stride=2, padding=1): pads with -inf."""
    return max_pool2d(x, 3, 2, 1)


def _adaptive_matrix(size: int, out: int) -> np.ndarray:
    """Averaging matrix (out, size) with torch's bins [floor(i*n/o), ceil((i+1)*n/o))."""
    m = np.zeros((out, size), np.float32)
    for i in range(out):
        start = (i * size) // out
        end = -((-(i + 1) * size) // out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
    """torch.nn.AdaptiveAvgPool2d on NHWC input, for any input size.

    Expressed as two small averaging matrices so it works for bins that
    overlap (input smaller than, or not a multiple of, the output).
    """
    _, h, w, _ = x.shape
    oh, ow = output_size
    if (h, w) == (oh, ow):
        return x
    # In float32 (a no-op there): in bfloat16 the weights rounded (1/3 to 0.33398).
    ph, pw = jnp.asarray(_adaptive_matrix(h, oh)), jnp.asarray(_adaptive_matrix(w, ow))
    return jnp.einsum("ih,bhwc,jw->bijc", ph, x.astype(jnp.float32), pw).astype(x.dtype)
