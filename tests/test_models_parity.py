"""Flax models against torchvision: logits and every block's output, eval and train mode.

The torchvision models carry seeded random weights and random BN statistics
and go through the weight port, so this tests the models and the key map
together. Tolerance: 1e-4 on logits (float32) in eval mode, 1e-4 relative to
the output's scale on block outputs and in train mode.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medft_jax.models import ARCHS, block_outputs, create, layers, vgg
from medft_jax.models.blocks import flatten
from medft_jax.models.conv import lax_conv
from medft_jax.models.pool import lax_max_pool
from tests.torch_ref import random_torchvision, run_with_hooks, state_dict_numpy, torch
from weights_port.keymap import flax_to_torch, torch_to_flax

NUM_CLASSES = 10


@pytest.fixture(scope="module", params=list(ARCHS))
def pair(request):
    arch = request.param
    tm = random_torchvision(arch, NUM_CLASSES)
    variables, _ = torch_to_flax(state_dict_numpy(tm), arch)
    return arch, tm, variables


def _images(h: int, w: int, n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, h, w)).astype(np.float32)


@functools.cache
def _apply(arch: str, bn_train):
    model = create(arch, NUM_CLASSES)

    def f(variables, x):
        return model.apply(
            variables, x, bn_train=bn_train, mutable=["intermediates", "batch_stats"]
        )

    return jax.jit(f)


def _flax_run(arch, variables, x_nchw, bn_train=False):
    logits, state = _apply(arch, bn_train)(variables, jnp.asarray(x_nchw.transpose(0, 2, 3, 1)))
    blocks = {k: np.asarray(v) for k, v in block_outputs(state["intermediates"]).items()}
    return np.asarray(logits), blocks, state.get("batch_stats", {})


def _assert_blocks(arch, ours, ref):
    assert set(ours) == set(ref) == set(ARCHS[arch].partition.names)
    for name, r in ref.items():
        err = np.abs(ours[name] - r).max()
        assert err <= 1e-4 * max(1.0, np.abs(r).max()), (name, err)


@pytest.mark.slow
def test_eval_logits_and_blocks_224(pair):
    arch, tm, variables = pair
    x = _images(224, 224)
    ref, ref_blocks = run_with_hooks(arch, tm.eval(), x)
    logits, blocks, _ = _flax_run(arch, variables, x)
    assert np.abs(ref).max() > 0.1  # a meaningful scale for an absolute tolerance
    np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=0)
    _assert_blocks(arch, blocks, ref_blocks)


@pytest.mark.slow
def test_eval_logits_non_square(pair):
    arch, tm, variables = pair
    x = _images(200, 264, seed=1)
    ref, _ = run_with_hooks(arch, tm.eval(), x)
    logits, _, _ = _flax_run(arch, variables, x)
    np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_train_mode_batch_statistics(pair):
    """Train mode: logits from batch statistics, and torch's running-stat update."""
    arch, _, variables = pair
    x = _images(64, 96, n=4, seed=2)
    ref_model = random_torchvision(arch, NUM_CLASSES).train()
    for m in ref_model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    ref, ref_blocks = run_with_hooks(arch, ref_model, x)
    logits, blocks, new_stats = _flax_run(arch, variables, x, bn_train=True)
    # Normalising by the statistics of a small batch amplifies float32 rounding
    # layer after layer (float64 statistics do not change it), so train mode is
    # held to 1e-4 relative to the logits' scale rather than absolute.
    np.testing.assert_allclose(logits, ref, atol=1e-4 * max(1.0, np.abs(ref).max()), rtol=0)
    _assert_blocks(arch, blocks, ref_blocks)
    expected = flax_to_torch({"params": variables["params"], "batch_stats": new_stats}, arch)
    for key, value in state_dict_numpy(ref_model).items():
        if key.endswith(("running_mean", "running_var")):
            np.testing.assert_allclose(expected[key], value, atol=1e-5, rtol=1e-5, err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("arch,block", [("resnet50", "layer3"), ("densenet121", "transition2")])
def test_per_block_bn_mode(arch, block):
    """Only the named block uses batch statistics; the others keep running ones."""
    tm = random_torchvision(arch, NUM_CLASSES)
    variables, _ = torch_to_flax(state_dict_numpy(tm), arch)
    tm.eval()
    module = getattr(tm, block) if arch == "resnet50" else getattr(tm.features, block)
    module.train()
    x = _images(64, 64, n=3, seed=3)
    ref, _ = run_with_hooks(arch, tm, x)
    logits, _, new_stats = _flax_run(arch, variables, x, bn_train=frozenset({block}))
    np.testing.assert_allclose(logits, ref, atol=1e-4 * max(1.0, np.abs(ref).max()), rtol=0)
    partition = ARCHS[arch].partition
    for path, value in flatten(new_stats).items():
        old = flatten(variables["batch_stats"])[path]
        changed = not np.array_equal(np.asarray(value), old)
        assert changed == (partition.block_of(path) == block), path


def _grads(model, variables, x, y):
    """Every parameter's gradient of a cross-entropy loss, BatchNorm on running statistics."""

    def loss(params):
        logits, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            jnp.asarray(x.transpose(0, 2, 3, 1)),
            mutable=["batch_stats"],
        )
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    return jax.jit(jax.grad(loss))(variables["params"])


def _gradient_batch():
    return _images(64, 80, n=4, seed=4), np.array([0, 3, 7, 3])


@pytest.fixture(scope="module")
def grads(pair):
    """``pair``'s parameter gradients on :func:`_gradient_batch`, with the toolkit's own ops."""
    arch, _, variables = pair
    return _grads(create(arch, NUM_CLASSES), variables, *_gradient_batch())


def _assert_cpu_kernels_give_plain_lax_gradients(gradients, ours=None):
    """``gradients()`` equal, to 1e-5 of each one's scale, what they are with plain ``lax`` ops.

    ``gradients``: returns a flat dict of gradients of a program that
    convolves and max-pools through ``medft_jax.models.layers`` (and
    ``vgg``); it is called again with those two replaced by the plain ``lax``
    ops, which XLA differentiates itself, so the hand-written CPU gradients
    (``medft_jax.models.conv`` / ``pool``) are held to XLA's own.
    ``ours``: what ``gradients()`` returns, if already computed.
    """
    ours = gradients() if ours is None else ours
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(layers, "conv2d", lambda x_, w, s=1, p=0: lax_conv(x_, w, s, p))
        for module in (layers, vgg):
            mp.setattr(module, "max_pool2d", lambda x_, k, s, p=0: lax_max_pool(x_, k, s, p))
        plain = gradients()
    assert set(ours) == set(plain)
    for path, want in plain.items():
        scale = np.abs(want).max()
        assert scale > 0, path
        np.testing.assert_allclose(ours[path], want, atol=1e-5 * scale, rtol=0, err_msg=path)


# ResNet-50's gradients with the toolkit's ops are also the next test's:
# on one xdist worker the two share the ``grads`` fixture (or its compiled
# program, from the session's cache) instead of compiling it twice at once.
RESNET50_GRADIENTS = pytest.mark.xdist_group("resnet50_gradients")


@pytest.mark.slow
@pytest.mark.parametrize(
    "pair",
    [pytest.param("resnet50", marks=RESNET50_GRADIENTS), *[a for a in ARCHS if a != "resnet50"]],
    indirect=True,
)
def test_parameter_gradients(pair, grads):
    """Every parameter's gradient of a cross-entropy loss against torch's autograd.

    BatchNorm uses running statistics here: with batch statistics over 4
    images the backward pass amplifies float32 rounding (1e-7) to a few
    percent at the stem, in either framework and with the plain ``lax`` ops
    alike, which would hide a real error in the noise. The hand-written CPU
    gradients are held to XLA's own, 10x tighter, by the two tests below.
    """
    arch, tm, variables = pair
    x, y = _gradient_batch()
    ours = flax_to_torch({"params": grads, "batch_stats": variables["batch_stats"]}, arch)
    tm.eval().zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(tm(torch.from_numpy(x)), torch.tensor(y)).backward()
    refs = {name: p.grad.numpy().copy() for name, p in tm.named_parameters()}
    tm.zero_grad(set_to_none=True)  # the module's other tests share the model
    for name, ref in refs.items():
        scale = np.abs(ref).max()
        assert scale > 0, name
        np.testing.assert_allclose(ours[name], ref, atol=1e-4 * scale, rtol=0, err_msg=name)


@pytest.mark.slow
@RESNET50_GRADIENTS
@pytest.mark.parametrize("pair", ["resnet50"], indirect=True)
def test_cpu_kernel_gradients_equal_plain_lax_through_resnet50(pair, grads):
    """ResNet-50's parameter gradients: the CPU conv and max pool against ``jax.grad`` of ``lax``.

    The hand-written gradients of ``medft_jax.models.conv`` / ``pool`` must
    give, through a whole network, what XLA's own gradient of the plain
    ``lax`` ops gives, to 1e-5 of each parameter's gradient scale.

    One full network is enough: what differs between the two programs is
    the formulation each convolution and max pool takes, and the kernels'
    shape rules pick it from the operation's sizes and widths alone.
    ResNet-50 takes those of its 7x7 stride-2 stem, 3x3 at strides 1 and 2,
    1x1 and strided 1x1 convolutions and 3x3 stride-2 max pool; the ones
    only DenseNet-121 and VGG-19 take are checked by the next test, at their
    sizes, and each formulation on its own in ``tests/test_cpu_kernels.py``.
    (DenseNet-121's average pools are the same ``jnp`` code in both
    programs: torch checks them, above and in the forward tests.) The full
    DenseNet-121 and VGG-19 are held to torch's gradients above; their
    whole gradients compiled again with the plain ops cost over a minute.
    """
    arch, _, variables = pair
    x, y = _gradient_batch()
    _assert_cpu_kernels_give_plain_lax_gradients(
        lambda: flatten(_grads(create(arch, NUM_CLASSES), variables, x, y)), ours=flatten(grads)
    )


def _densenet_and_vgg_convolutions(params, x):
    """The convolutions and max pools DenseNet-121 and VGG-19 run on 64x80 images, as one chain.

    Those whose formulation ResNet-50 at that size does not take, at their
    sizes (non-square, as there) and widths: VGG-19's 64-channel 3x3 at
    full size (the weight gradient in batch chunks) and 2x2 max pools (even
    and odd sizes); DenseNet-121's dense layer (1x1 to 128 channels, 3x3 to
    the 32-channel growth) at each block's size: 16x20 and 8x10 (both
    gradients from the output gradient's shifted views), 4x5 (XLA's weight
    gradient) and 2x2 (im2col). Which formulation runs is decided by these
    sizes and widths alone (the kernels' shape rules), not by what the
    layers around them are.
    """
    conv, pool = layers.conv2d, layers.max_pool2d  # looked up now: patchable
    x = jax.nn.relu(conv(x, params["vgg_a"], 1, 1))
    x = jax.nn.relu(conv(x, params["vgg_b"], 1, 1))
    x = pool(pool(x, 2, 2), 2, 2)  # 64x80 -> 16x20
    for block in range(4):  # 16x20, 8x10, 4x5, 2x2 (the last pool drops an odd column)
        if block:
            x = pool(x, 2, 2)
        x = jax.nn.relu(conv(x, params[f"dense{block}_1x1"]))
        x = jax.nn.relu(conv(x, params[f"dense{block}_3x3"], 1, 1))
    # A cotangent that is not constant, so every gradient entry is tested.
    return jnp.sum(jnp.sin(x) * jnp.arange(x.size, dtype=x.dtype).reshape(x.shape) / x.size)


@pytest.mark.slow
def test_cpu_kernel_gradients_equal_plain_lax_on_densenet_and_vgg_shapes():
    """As the ResNet-50 test above, for the formulations only DenseNet-121 and VGG-19 take.

    On :func:`_densenet_and_vgg_convolutions`, their convolutions and pools
    at their sizes, and the image's gradient too: a few seconds of
    compiling where the two whole models took over a minute.
    """
    x = _gradient_batch()[0].transpose(0, 2, 3, 1)
    rng = np.random.default_rng(5)
    shapes = {"vgg_a": (3, 3, 64), "vgg_b": (3, 64, 64)}
    for block in range(4):
        shapes[f"dense{block}_1x1"] = (1, 64 if block == 0 else 32, 128)
        shapes[f"dense{block}_3x3"] = (3, 128, 32)
    params = {
        name: (rng.normal(size=(k, k, c, o)) / np.sqrt(k * k * c)).astype(np.float32)
        for name, (k, c, o) in shapes.items()
    }

    def gradients():
        g_params, g_x = jax.jit(jax.grad(_densenet_and_vgg_convolutions, (0, 1)))(params, x)
        return {**g_params, "image": g_x}

    _assert_cpu_kernels_give_plain_lax_gradients(gradients)
