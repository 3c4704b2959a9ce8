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


def _train_grads(arch, variables, x, y):
    model = create(arch, NUM_CLASSES)

    def loss(params):
        logits, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            jnp.asarray(x.transpose(0, 2, 3, 1)),
            mutable=["batch_stats"],
        )
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    grads = jax.jit(jax.grad(loss))(variables["params"])
    return flax_to_torch({"params": grads, "batch_stats": variables["batch_stats"]}, arch)


@pytest.mark.slow
def test_parameter_gradients(pair, monkeypatch):
    """Every parameter's gradient of a cross-entropy loss: XLA's own, and torch's.

    The hand-written CPU gradients of the convolution and the max pool
    (``medft_jax.models.conv`` / ``pool``) must give what ``jax.grad`` of the
    plain ``lax`` ops gives through the whole network, and what torch's
    autograd gives. BatchNorm uses running statistics here: with batch
    statistics over 4 images the backward pass amplifies float32 rounding
    (1e-7) to a few percent at the stem, in either framework and with the
    plain ``lax`` ops alike, which would hide a real error in the noise.
    """
    arch, _, variables = pair
    x = _images(64, 80, n=4, seed=4)
    y = np.array([0, 3, 7, 3])
    ours = _train_grads(arch, variables, x, y)
    monkeypatch.setattr(layers, "conv2d", lambda x_, w, s=1, p=0: lax_conv(x_, w, s, p))
    for module in (layers, vgg):
        monkeypatch.setattr(module, "max_pool2d", lambda x_, k, s, p=0: lax_max_pool(x_, k, s, p))
    plain = _train_grads(arch, variables, x, y)

    ref_model = random_torchvision(arch, NUM_CLASSES).eval()
    ref_loss = torch.nn.functional.cross_entropy(ref_model(torch.from_numpy(x)), torch.tensor(y))
    ref_loss.backward()
    for name, p in ref_model.named_parameters():
        ref = p.grad.numpy()
        scale = np.abs(ref).max()
        assert scale > 0, name
        np.testing.assert_allclose(ours[name], plain[name], atol=1e-5 * scale, rtol=0, err_msg=name)
        np.testing.assert_allclose(ours[name], ref, atol=1e-4 * scale, rtol=0, err_msg=name)
