"""torch's ``max_pool2d`` with a backward pass that is fast on XLA's CPU backend.

``lax.reduce_window``'s gradient is a ``select_and_scatter``; XLA's CPU backend
runs it as a variadic reduce-window that tracks each window's argmax, which
for ResNet-50's stem pool at 224 px costs as much as a large convolution
(``benchmarks/RESULTS.md``). Here the backward pass finds each window's
first maximum in one pass of k*k compares, then sums the routed gradient
phase by phase (stride s: s*s phases of shifted views, interleaved once). It routes each window's
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
from medft_jax.models.fusion import materialize


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
    k, s = kernel, stride
    # Each window's first maximum, as its tap number (row-major), in one pass.
    views = taps(x, k, s, padding, -jnp.inf)
    first = jnp.full(out.shape, k * k, jnp.int8)
    for t in reversed(range(k * k)):
        first = jnp.where(views[t] == out, jnp.int8(t), first)
    # Both are written once: XLA would otherwise compute them again for every
    # tap below, with the gradient's producers (in DenseNet-121, the BatchNorm
    # backward of every dense layer of the first block) fused in.
    first, g = materialize(first), materialize(g)
    # The padded input's rows r = s*q + a (a = r mod s) receive, from tap i
    # with i mod s == a, the gradient of output row q - i // s: each of the
    # s*s phases is a sum of shifted (not interleaved) arrays, and the phases
    # are interleaved once at the end.
    zero = jnp.zeros((), g.dtype)
    qh, qw = oh + (k - 1) // s, ow + (k - 1) // s
    rows = []
    for a in range(s):
        cols = []
        for b in range(s):
            phase = jnp.zeros((n, qh, qw, c), g.dtype)
            for i in range(a, k, s):
                for j in range(b, k, s):
                    routed = jnp.where(first == i * k + j, g, zero)
                    di, dj = i // s, j // s
                    pad = ((0, 0), (di, qh - oh - di), (dj, qw - ow - dj), (0, 0))
                    phase = phase + jnp.pad(routed, pad)
            cols.append(phase)
        rows.append(jnp.stack(cols, axis=3))  # (n, qh, qw, s, c)
    grad = jnp.stack(rows, axis=2).reshape(n, qh * s, qw * s, c)
    hp, wp = h + 2 * padding, w + 2 * padding
    grad = jnp.pad(grad, ((0, 0), (0, max(0, hp - qh * s)), (0, max(0, wp - qw * s)), (0, 0)))
    return (grad[:, padding : padding + h, padding : padding + w, :],)


cpu_max_pool.defvjp(_fwd, _bwd)


def max_pool2d(x: jax.Array, kernel: int, stride: int, padding: int = 0) -> jax.Array:
    """torch's ``max_pool2d`` on NHWC input (square window, -inf padding)."""
    return lax.platform_dependent(
        x,
        cpu=lambda x_: cpu_max_pool(x_, kernel, stride, padding),
        default=lambda x_: lax_max_pool(x_, kernel, stride, padding),
    )
