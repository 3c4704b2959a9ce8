"""torch's ``max_pool2d`` with a backward pass that is fast on XLA's CPU backend.

``lax.reduce_window``'s gradient is a ``select_and_scatter``; XLA's CPU backend
runs it as a variadic reduce-window that tracks each window's argmax, which
for ResNet-50's stem pool at 224 px costs as much as a large convolution
(``benchmarks/RESULTS.md``). Here the backward pass is k*k elementwise
compares and one fused sum of padded views instead. It routes each window's
gradient to the *first* maximal element in row-major window order, as torch
(and ``select_and_scatter`` with ``ge``) does, so ties (flat image regions)
get the same gradient as in torch. Other backends keep ``lax.reduce_window``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from medft_jax.models.conv import taps


def lax_max_pool(x: jax.Array, kernel: int, stride: int, padding: int) -> jax.Array:
    """The reference: ``lax.reduce_window`` max with -inf padding."""
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    window, strides = (1, kernel, kernel, 1), (1, stride, stride, 1)
    return lax.reduce_window(x, -jnp.inf, lax.max, window, strides, pad)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def cpu_max_pool(x: jax.Array, kernel: int, stride: int, padding: int) -> jax.Array:
    """Max pooling whose gradient goes to each window's first maximum."""
    return lax_max_pool(x, kernel, stride, padding)


def _fwd(x, kernel, stride, padding):
    out = lax_max_pool(x, kernel, stride, padding)
    return out, (x, out)


def _bwd(kernel, stride, padding, residuals, g):
    x, out = residuals
    n, h, w, c = x.shape
    oh, ow = out.shape[1:3]
    zero = jnp.zeros((), g.dtype)
    unclaimed = jnp.ones(out.shape, bool)
    grad = jnp.zeros((n, h + 2 * padding, w + 2 * padding, c), g.dtype)
    for index, tap in enumerate(taps(x, kernel, stride, padding, -jnp.inf)):
        i, j = divmod(index, kernel)
        first = unclaimed & (tap == out)
        unclaimed = unclaimed & ~first
        # The transpose of the strided view: scatter back with interior padding.
        config = (
            (0, 0, 0),
            (i, h + 2 * padding - i - stride * (oh - 1) - 1, stride - 1),
            (j, w + 2 * padding - j - stride * (ow - 1) - 1, stride - 1),
            (0, 0, 0),
        )
        grad = grad + lax.pad(jnp.where(first, g, zero), zero, config)
    return (grad[:, padding : padding + h, padding : padding + w, :],)


cpu_max_pool.defvjp(_fwd, _bwd)


def max_pool2d(x: jax.Array, kernel: int, stride: int, padding: int = 0) -> jax.Array:
    """torch's ``max_pool2d`` on NHWC input (square window, -inf padding)."""
    return lax.platform_dependent(
        x,
        cpu=lambda x_: cpu_max_pool(x_, kernel, stride, padding),
        default=lambda x_: lax_max_pool(x_, kernel, stride, padding),
    )
