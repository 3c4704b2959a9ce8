"""2-D convolution that is fast on XLA's CPU backend as well as on accelerators.

On GPU and TPU, ``lax.conv_general_dilated`` lowers to cuDNN or the TPU's
convolution units and is left alone. On CPU, XLA lowers a convolution to
Eigen's spatial convolution, which is slow in three places that a fine-tuning
step hits every time (``benchmarks/RESULTS.md``, "CPU training step"):

* 1x1 convolutions (most of ResNet-50's and DenseNet-121's FLOPs): Eigen's
  convolution is 2-5x slower than the same product as one matrix multiply;
* the weight gradient, which XLA writes as a convolution over the batch
  dimension: 2-4x slower than ``patches^T @ grad`` as one matrix multiply;
* small outputs with wide padding (ResNet-50's stride-2 3x3 convolutions at
  low resolution): up to 50x slower than im2col + matrix multiply.

So on CPU :func:`conv2d` is a ``jax.custom_vjp`` whose forward pass, input
gradient and weight gradient each pick the formulation that is fast for the
shape (the rules are below, measured by ``benchmarks/conv.py``), all of them
exact reformulations of the same sums: only the order of float additions
changes. :func:`lax.platform_dependent` keeps every other backend on
``lax.conv_general_dilated``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from medft_jax.models.fusion import materialize

_DIMS = ("NHWC", "HWIO", "NHWC")

# The weight gradient builds the im2col patch matrix of at most this many bytes
# at a time (a chunk of the batch, at least one image), summing the chunks'
# products: bounded memory, and cache-sized products are faster on CPU
# (benchmarks/RESULTS.md: 86 ms at 32 MiB chunks, 161 ms whole, ResNet-50's
# 56 px 3x3 at batch 16).
PATCH_BYTES_LIMIT = 32 * 2**20
# At or below this many output pixels per image, Eigen's padded convolution is
# pathological (mostly padding); im2col there is 3-50x faster.
SMALL_OUTPUT_PIXELS = 4
# A k x k convolution with at most this many output channels (DenseNet-121's
# 32-channel growth convolutions) keeps XLA's weight gradient: building the
# k*k*C-wide patch matrix costs more than a product only this wide saves.
NARROW_OUTPUT = 32
# ... except at stride 1 with "same" padding and at least GRAD_TAPS_PIXELS[0]
# output pixels per image: then the weight gradient is x^T @ the k*k shifted
# views of the narrow output gradient (only k*k*32 wide), summed over batch
# chunks whose views fit TAPS_BYTES_LIMIT (0.3-0.5x XLA's at DenseNet-121's
# 56, 28 and 14 px; slower at 7 px). The input gradient takes the same views
# within GRAD_TAPS_PIXELS (0.55-0.86x XLA's; slower at 56 px and 7 px).
GRAD_TAPS_PIXELS = (64, 1024)
TAPS_BYTES_LIMIT = 8 * 2**20


def out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def lax_conv(x: jax.Array, w: jax.Array, stride: int, padding: int) -> jax.Array:
    """The reference: ``lax.conv_general_dilated`` with torch's padding."""
    pad = ((padding, padding), (padding, padding))
    return lax.conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=_DIMS)


def taps(
    x: jax.Array, kernel: int, stride: int, padding: int, pad_value: float = 0.0
) -> list[jax.Array]:
    """The window's k*k shifted (and strided) views of the padded input, row-major.

    Shared by the convolution (zero padding) and the max pool (-inf padding).
    """
    _, h, w, _ = x.shape
    oh, ow = out_size(h, kernel, stride, padding), out_size(w, kernel, stride, padding)
    if padding:
        pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
        x = jnp.pad(x, pad, constant_values=pad_value)
    return [
        x[:, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride, :]
        for i in range(kernel)
        for j in range(kernel)
    ]


def _patches(x: jax.Array, kernel: int, stride: int, padding: int) -> jax.Array:
    """im2col: (N, OH, OW, k*k*C), channels fastest, taps in HWIO kernel order."""
    views = taps(x, kernel, stride, padding)
    return views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)


def matmul_conv(x: jax.Array, w: jax.Array, stride: int, padding: int) -> jax.Array:
    """The convolution as im2col + one matrix multiply (no copy for a 1x1 kernel)."""
    kh, kw, c, o = w.shape
    cols = _patches(x, kh, stride, padding)
    return jnp.einsum("nhwk,ko->nhwo", cols, w.reshape(kh * kw * c, o))


def _patch_bytes(x: jax.Array, w: jax.Array, stride: int, padding: int) -> int:
    n, h, wd, c = x.shape
    k = w.shape[0]
    oh, ow = out_size(h, k, stride, padding), out_size(wd, k, stride, padding)
    return n * oh * ow * k * k * c * x.dtype.itemsize


def _use_matmul(x: jax.Array, w: jax.Array, stride: int, padding: int) -> bool:
    """Forward and input gradient: a matrix multiply for 1x1 kernels and small outputs."""
    k = w.shape[0]
    oh = out_size(x.shape[1], k, stride, padding)
    ow = out_size(x.shape[2], k, stride, padding)
    return k == 1 or oh * ow <= SMALL_OUTPUT_PIXELS


def _forward(x: jax.Array, w: jax.Array, stride: int, padding: int) -> jax.Array:
    if _use_matmul(x, w, stride, padding):
        return matmul_conv(x, w, stride, padding)
    return lax_conv(x, w, stride, padding)


def _use_grad_taps(
    x: jax.Array, w: jax.Array, stride: int, padding: int, *, for_input: bool = False
) -> bool:
    """A gradient from the output gradient's shifted views (see GRAD_TAPS_PIXELS)."""
    k, o = w.shape[0], w.shape[-1]
    lo, hi = GRAD_TAPS_PIXELS
    pixels = x.shape[1] * x.shape[2]
    same = k % 2 == 1 and padding == k // 2
    sized = lo <= pixels <= hi if for_input else lo <= pixels
    return k > 1 and stride == 1 and same and o <= NARROW_OUTPUT and sized


def _grad_taps(g: jax.Array, k: int) -> jax.Array:
    """(N, H, W, k*k*O): the output gradient at every offset of the window, row-major.

    Tap (i, j) holds ``g[p + (i - k//2, j - k//2)]``: the output positions
    that read input position p through kernel tap (k-1-i, k-1-j).
    """
    return jnp.concatenate(taps(g, k, 1, k // 2), axis=-1)


def _input_grad(x: jax.Array, w: jax.Array, g: jax.Array, stride: int, padding: int) -> jax.Array:
    if _use_grad_taps(x, w, stride, padding, for_input=True):
        k, _, c, o = w.shape
        flipped = w[::-1, ::-1].transpose(0, 1, 3, 2).reshape(k * k * o, c)
        # Nine views of g: written once, not recomputed from its producers per view.
        return jnp.einsum("nhwq,qc->nhwc", _grad_taps(materialize(g), k), flipped)
    conv = matmul_conv if _use_matmul(x, w, stride, padding) else lax_conv
    _, vjp = jax.vjp(lambda x_: conv(x_, w, stride, padding), x)
    return vjp(g)[0]


def _weight_grad(x: jax.Array, w: jax.Array, g: jax.Array, stride: int, padding: int) -> jax.Array:
    """dL/dw = patches^T @ g, in batch chunks whose patch matrix fits PATCH_BYTES_LIMIT.

    Or, for narrow outputs (see TAPS_BYTES_LIMIT), x^T @ the output
    gradient's shifted views, with the kernel's taps flipped back.
    """
    k, c, o = w.shape[0], w.shape[2], w.shape[-1]
    if _use_grad_taps(x, w, stride, padding):
        per_image = g[0].size * k * k * g.dtype.itemsize
        r = _batch_chunked(
            lambda xc, gc: _tn(xc, _grad_taps(gc, k)), x, g, per_image, TAPS_BYTES_LIMIT
        )
        r = r.reshape(c, k, k, o)  # taps flipped: (k-1-i, k-1-j)
        return r[:, ::-1, ::-1, :].transpose(1, 2, 0, 3).astype(w.dtype)
    if k > 1 and o <= NARROW_OUTPUT:
        _, vjp = jax.vjp(lambda w_: lax_conv(x, w_, stride, padding), w)
        return vjp(g)[0]
    per_image = _patch_bytes(x, w, stride, padding) // x.shape[0]
    r = _batch_chunked(
        lambda xc, gc: _tn(_patches(xc, k, stride, padding), gc),
        x,
        g,
        per_image,
        PATCH_BYTES_LIMIT,
    )
    return r.reshape(w.shape).astype(w.dtype)


def _batch_chunked(product, x: jax.Array, g: jax.Array, per_image: int, limit: int) -> jax.Array:
    """``product(x, g)``, a sum over the batch, as a sum over chunks of at most ``limit`` bytes.

    ``per_image`` is what one image's share of the product's operand takes;
    a chunk holds at least one image and divides the batch.
    """
    n = x.shape[0]
    fits = max(limit, per_image)
    chunk = max(b for b in range(1, n + 1) if n % b == 0 and b * per_image <= fits)
    if chunk == n:
        return product(x, g)
    xs = x.reshape(n // chunk, chunk, *x.shape[1:])
    gs = g.reshape(n // chunk, chunk, *g.shape[1:])
    first = jax.eval_shape(product, xs[0], gs[0])

    def step(total, xg):
        return total + product(xg[0], xg[1]), None

    return lax.scan(step, jnp.zeros(first.shape, first.dtype), (xs, gs))[0]


def _tn(a: jax.Array, b: jax.Array) -> jax.Array:
    """a^T @ b over all but the last axis, as one 2-D product (no 4-D transposes).

    Accumulates in float32 whatever the compute dtype: it sums over the batch.
    """
    a2 = a.reshape(-1, a.shape[-1])
    b2 = b.reshape(-1, b.shape[-1])
    return lax.dot_general(a2, b2, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def cpu_conv(x: jax.Array, w: jax.Array, stride: int, padding: int) -> jax.Array:
    """The CPU convolution: each pass in the formulation fast for its shape."""
    return _forward(x, w, stride, padding)


def _cpu_conv_fwd(x, w, stride, padding):
    return _forward(x, w, stride, padding), (x, w)


def _cpu_conv_bwd(stride, padding, residuals, g):
    x, w = residuals
    return _input_grad(x, w, g, stride, padding), _weight_grad(x, w, g, stride, padding)


cpu_conv.defvjp(_cpu_conv_fwd, _cpu_conv_bwd)


def conv2d(x: jax.Array, w: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
    """torch's ``conv2d`` on NHWC input and an HWIO kernel (square kernel, stride, padding).

    The CPU formulation is chosen when the program is lowered for a CPU;
    other platforms get ``lax.conv_general_dilated``.
    """
    if w.shape[0] != w.shape[1]:
        raise ValueError(f"conv2d takes square kernels, got {w.shape[:2]}")
    if not math.prod(x.shape):
        return lax_conv(x, w, stride, padding)
    return lax.platform_dependent(
        x,
        w,
        cpu=lambda x_, w_: cpu_conv(x_, w_, stride, padding),
        default=lambda x_, w_: lax_conv(x_, w_, stride, padding),
    )
