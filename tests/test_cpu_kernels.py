"""The CPU convolution and max pool against the plain XLA ops and torch.

``medft_jax.models.conv.cpu_conv`` and ``medft_jax.models.pool.cpu_max_pool``
carry hand-written gradients; each is checked against ``jax.grad`` of the
plain ``lax`` op (which XLA differentiates itself) on every formulation the
shape rules can pick, and the pool's tie rule against torch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medft_jax.models import conv as conv_mod
from medft_jax.models.conv import conv2d, cpu_conv, lax_conv, taps
from medft_jax.models.densenet import avg_pool_2x2
from medft_jax.models.fusion import materialize
from medft_jax.models.pool import cpu_max_pool, lax_max_pool, max_pool2d

# (batch, size, in channels, out channels, kernel, stride, padding): a 1x1 conv,
# a strided 1x1 (ResNet's downsample), a 3x3 left to lax, a strided 3x3 with a
# small output (im2col), ResNet's 7x7 stem, and a 3x3 on an odd size.
SHAPES = [
    (3, 6, 5, 7, 1, 1, 0),
    (3, 7, 5, 7, 1, 2, 0),
    (2, 9, 4, 6, 3, 1, 1),
    (2, 4, 6, 5, 3, 2, 1),
    (2, 13, 3, 4, 7, 2, 3),
    (2, 5, 3, 4, 3, 1, 0),
]


def _inputs(n, h, c, o, k, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, h, h, c)).astype(np.float32)
    w = rng.normal(size=(k, k, c, o)).astype(np.float32) / np.sqrt(k * k * c)
    return x, w


def _loss(fn, s, p):
    # A loss whose cotangent is not constant, so every gradient entry is tested.
    def loss(x, w):
        y = fn(x, w, s, p)
        return jnp.sum(jnp.sin(y) * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size)

    return loss


@pytest.mark.parametrize(
    "shape,narrow",
    [(shape, 0) for shape in SHAPES] + [(SHAPES[2], 64), ((2, 5, 3, 4, 3, 1, 1), 64)],
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else f"narrow{v}",
)
@pytest.mark.slow
def test_cpu_conv_value_and_gradients_equal_lax(shape, narrow, monkeypatch):
    # narrow=0: every weight gradient through patches (the shapes here have
    # few channels); 64: the narrow-output rules: both gradients from the
    # output gradient's shifted views (9x9 = 81 output pixels, inside
    # GRAD_TAPS_PIXELS), or XLA's own weight gradient (5x5, outside it).
    monkeypatch.setattr(conv_mod, "NARROW_OUTPUT", narrow)
    n, h, c, o, k, s, p = shape
    taps_route = narrow and conv_mod._use_grad_taps(
        np.zeros((n, h, h, c)), np.zeros((k, k, c, o)), s, p
    )
    assert taps_route == (narrow and h == 9)
    n, h, c, o, k, s, p = shape
    x, w = _inputs(n, h, c, o, k)
    np.testing.assert_allclose(cpu_conv(x, w, s, p), lax_conv(x, w, s, p), rtol=1e-5, atol=1e-5)
    got = jax.jit(jax.grad(_loss(cpu_conv, s, p), argnums=(0, 1)))(x, w)
    want = jax.jit(jax.grad(_loss(lax_conv, s, p), argnums=(0, 1)))(x, w)
    for g, r in zip(got, want, strict=True):
        assert g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("limit_images", [1, 2])
@pytest.mark.parametrize("route", ["patches", "taps"])
def test_cpu_conv_weight_gradient_in_batch_chunks(limit_images, route, monkeypatch):
    # Past PATCH_BYTES_LIMIT (TAPS_BYTES_LIMIT for a narrow output) the
    # products are summed over batch chunks (one image each, or two of 4).
    narrow = route == "taps"
    monkeypatch.setattr(conv_mod, "NARROW_OUTPUT", 64 if narrow else 0)
    per_image = 9 * 9 * 9 * (6 if narrow else 4) * 4  # 3x3 views of g, or of x
    limit = "TAPS_BYTES_LIMIT" if narrow else "PATCH_BYTES_LIMIT"
    monkeypatch.setattr(conv_mod, limit, limit_images * per_image)
    x, w = _inputs(4, 9, 4, 6, 3)
    assert conv_mod._use_grad_taps(x, w, 1, 1) == narrow
    got = jax.grad(_loss(cpu_conv, 1, 1), argnums=1)(x, w)
    want = jax.grad(_loss(lax_conv, 1, 1), argnums=1)(x, w)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_conv2d_lowers_to_products_on_cpu():
    # The dispatch really picks the CPU formulation here: a 1x1 conv leaves
    # no convolution in the compiled program.
    x, w = _inputs(2, 6, 5, 7, 1)
    hlo = jax.jit(conv2d).lower(x, w).compile().as_text()
    assert "convolution(" not in hlo
    np.testing.assert_allclose(jax.jit(conv2d)(x, w), lax_conv(x, w, 1, 0), rtol=1e-5, atol=1e-5)


def test_conv2d_refuses_non_square_kernels():
    with pytest.raises(ValueError, match="square kernels"):
        conv2d(jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 3, 2, 2)))


def _tied_images(n, h, c, seed=0):
    # Small integers: most windows hold several equal maxima, as flat regions do.
    return np.random.default_rng(seed).integers(0, 3, (n, h, h, c)).astype(np.float32)


@pytest.mark.xdist_group("torch")  # the worker that imports torch anyway (tests/conftest.py)
@pytest.mark.parametrize(
    "window",
    [
        (3, 2, 1, 9),
        pytest.param((3, 2, 1, 8), marks=pytest.mark.slow),
        (2, 2, 0, 7),
        pytest.param((2, 2, 0, 8), marks=pytest.mark.slow),
    ],
)
def test_cpu_max_pool_gradient_equals_lax_and_torch_on_ties(window):
    torch = pytest.importorskip("torch")
    k, s, p, h = window
    x = _tied_images(2, h, 3)
    out = lax_max_pool(x, k, s, p)
    g = np.random.default_rng(1).normal(size=out.shape).astype(np.float32)

    def forward_and_gradient(pool):  # one program each: op by op, every op compiles
        def f(x_, g_):
            y, vjp = jax.vjp(lambda a: pool(a, k, s, p), x_)
            return y, vjp(g_)[0]

        return jax.jit(f)(x, g)

    y, got = forward_and_gradient(cpu_max_pool)
    _, want = forward_and_gradient(lax_max_pool)
    np.testing.assert_array_equal(y, out)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)

    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, k, s, p)
    yt.backward(torch.tensor(g.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(got, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=0, atol=1e-6)
    # The data has ties that matter: sharing each window's gradient among its
    # maxima (jnp.max's rule) gives another answer.
    shared_max = lambda x_: jnp.sum(jnp.max(jnp.stack(taps(x_, k, s, p, -jnp.inf)), 0) * g)  # noqa: E731
    shared = jax.jit(jax.grad(shared_max))(x)
    assert np.abs(shared - got).max() > 0.1


def test_max_pool2d_dispatch_equals_lax():
    x = _tied_images(2, 9, 3)
    g = np.ones(lax_max_pool(x, 3, 2, 1).shape, np.float32)
    got = jax.jit(lambda g_: jax.vjp(lambda x_: max_pool2d(x_, 3, 2, 1), x)[1](g_)[0])(g)
    want = jax.vjp(lambda x_: lax_max_pool(x_, 3, 2, 1), x)[1](g)[0]
    np.testing.assert_array_equal(got, want)
    # An empty batch: a zero gradient of its (empty) shape, as conv2d's, not an IndexError.
    empty = np.zeros((0, 9, 9, 3), np.float32)
    grad = jax.grad(lambda x_: max_pool2d(x_, 3, 2, 1).sum())(empty)
    assert grad.shape == empty.shape


@pytest.mark.slow
def test_cpu_conv_bf16_weight_gradient_accumulates_in_float32():
    # bf16 compute: the product over the batch accumulates in float32, so the
    # weight gradient is within bf16 rounding of the float32 one.
    x, w = _inputs(4, 9, 8, 40, 3)
    got = jax.grad(_loss(cpu_conv, 1, 1), argnums=1)(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    want = jax.grad(_loss(lax_conv, 1, 1), argnums=1)(x, w)
    assert got.dtype == jnp.bfloat16
    scale = np.abs(want).max()
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=0, atol=0.02 * scale)


@pytest.mark.slow
def test_materialize_returns_its_input_through_a_loop_fusion_cannot_cross():
    def f(a):
        g = jnp.sin(a) * 2.0  # an elementwise producer XLA would fuse into the views
        return sum(jnp.roll(materialize(g), i, axis=1) for i in range(3))

    a = jax.random.normal(jax.random.key(0), (2, 5, 4))
    want = sum(jnp.roll(jnp.sin(a) * 2.0, i, axis=1) for i in range(3))
    np.testing.assert_array_equal(jax.jit(f)(a), want)
    assert "while(" in jax.jit(f).lower(a).compile().as_text()  # not folded away
    # A NaN first element runs the loop twice: still the input, NaN included.
    nan = a.at[0, 0, 0].set(jnp.nan)
    np.testing.assert_array_equal(jax.jit(materialize)(nan), nan)
    # Differentiable as the identity.
    np.testing.assert_array_equal(jax.grad(lambda x: (materialize(x) * x).sum())(a), 2 * a)


@pytest.mark.parametrize(
    "shape", [pytest.param((2, 8, 6, 3), marks=pytest.mark.slow), (2, 7, 9, 3)]
)  # the odd edge is the fast tier's case
def test_avg_pool_2x2_equals_reduce_window_dropping_an_odd_edge(shape):
    # torch's AvgPool2d(2, 2) floors an odd size, as a VALID reduce_window does.
    x = jax.random.normal(jax.random.key(1), shape)
    want = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4
    assert want.shape == (2, shape[1] // 2, shape[2] // 2, 3)
    np.testing.assert_allclose(avg_pool_2x2(x), want, rtol=1e-6, atol=1e-6)
