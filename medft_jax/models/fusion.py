"""A value that XLA's CPU fusion computes once, not again inside each consumer.

XLA fuses elementwise producers into their consumers and, when a consumer
reads an element several times (the k*k shifted views of a convolution's or
a max pool's gradient), computes the producer again for every read. In
DenseNet-121 the gradient reaching a layer's output is the sum of the
BatchNorm backward of every later layer of its dense block, so a 3x3 view
of it costs nine such sums per element (``benchmarks/RESULTS.md``).
``lax.optimization_barrier`` does not stop this: XLA's CPU pipeline removes
barriers before fusion. A loop is a boundary that fusion does not cross,
so :func:`materialize` passes the value through a one-trip ``while`` whose
trip count XLA cannot fold away (it reads one element at run time).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


@jax.custom_jvp
def materialize(x: jax.Array) -> jax.Array:
    """``x``, written to memory once: its consumers read it instead of recomputing it.

    The loop runs once (twice if ``x``'s first element is NaN; either way
    it returns ``x`` unchanged). Its body selects ``x`` by the loop counter
    so that XLA cannot hoist the value out of the loop. Differentiated as
    the identity it is.
    """
    if not x.size:  # nothing to write (an empty batch); there is no first element
        return x
    first = x.reshape(-1)[0]
    trips = 1 + (first != first).astype(jnp.int32)

    def body(carry):
        i, n, v = carry
        return i + 1, n, jnp.where(i >= 0, v, jnp.zeros((), v.dtype))

    return lax.while_loop(lambda c: c[0] < c[1], body, (jnp.int32(0), trips, x))[2]


@materialize.defjvp
def _materialize_jvp(primals, tangents):
    return materialize(primals[0]), tangents[0]
