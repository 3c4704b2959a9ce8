"""Model registry, initialisation as torchvision's, compute dtype, small inputs."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medft_jax.models import (
    ARCHS,
    TEST_ARCHS,
    VGG,
    DenseNet,
    block_outputs,
    create,
    get_arch,
    init_variables,
    variable_shapes,
)
from medft_jax.models.blocks import flatten
from medft_jax.models.layers import _adaptive_matrix, adaptive_avg_pool


def test_unknown_arch_lists_known():
    with pytest.raises(ValueError, match=r"unknown arch 'resnet18'; known archs: resnet50, "):
        create("resnet18", 3)


def _init(arch: str):
    # init_variables' program: the one other tests and processes of the session
    # compile too (2 classes, 32 px), so the compilation cache serves it.
    model = create(arch, 2)
    return model, init_variables(model, 0, 32)


@pytest.fixture(scope="module")
def resnet():
    return _init("resnet50")


@pytest.fixture(scope="module")
def tiny():
    """ResNet-50's layers with one bottleneck each: for what is not ResNet-50's own numbers.

    Its users share one xdist worker (group ``resnet_tiny``): the initialiser's
    program compiles once there, not once in each worker at the same time.
    """
    return _init("resnet_tiny")


@pytest.mark.slow
def test_parameter_counts_match_torchvision():
    # torchvision with num_classes=1000: 25,557,032 / 7,978,856 / 143,667,240.
    expected = {"resnet50": 25_557_032, "densenet121": 7_978_856, "vgg19": 143_667_240}
    for arch, n in expected.items():
        shapes = variable_shapes(arch, 1000)
        assert sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"])) == n, arch


def test_variable_shapes_are_the_initialisers_and_each_call_owns_its_tree():
    model = create("resnet_tiny", 3)
    traced = jax.eval_shape(lambda: model.init(jax.random.key(1), jnp.zeros((2, 64, 64, 3))))
    shapes = variable_shapes("resnet_tiny", 3)
    assert jax.tree.structure(shapes) == jax.tree.structure(traced)
    assert jax.tree.leaves(shapes) == jax.tree.leaves(traced)  # shapes and dtypes
    assert shapes["params"]["fc"]["kernel"].shape == (2048, 3)
    del shapes["params"]["fc"]  # a caller's edit stays in its own tree
    assert "fc" in variable_shapes("resnet_tiny", 3)["params"]


@pytest.mark.slow
def test_head_and_conv_init_follow_torchvision(resnet):
    _, v = resnet
    p = flatten(v["params"])
    bound = 1 / math.sqrt(2048)
    fc_w, fc_b = np.asarray(p["fc/kernel"]), np.asarray(p["fc/bias"])
    assert fc_w.shape == (2048, 2)
    assert np.abs(fc_w).max() <= bound and np.abs(fc_w).max() > 0.95 * bound
    assert np.abs(fc_b).max() <= bound and np.abs(fc_b).std() > 0
    # kaiming_normal_(mode="fan_out"): std = sqrt(2 / (out * kh * kw)) = sqrt(2 / (256 * 9))
    w = np.asarray(p["layer3/0/conv2/kernel"])
    assert w.shape == (3, 3, 256, 256)
    assert abs(w.std() / math.sqrt(2 / (256 * 9)) - 1) < 0.02
    assert np.all(np.asarray(p["bn1/scale"]) == 1) and np.all(np.asarray(p["bn1/bias"]) == 0)
    stats = flatten(v["batch_stats"])
    assert np.all(np.asarray(stats["bn1/mean"]) == 0) and np.all(np.asarray(stats["bn1/var"]) == 1)


@pytest.mark.slow
def test_vgg_and_densenet_heads():
    s = variable_shapes("vgg19", 3)
    assert s["params"]["classifier"]["0"]["kernel"].shape == (25088, 4096)
    assert s["params"]["classifier"]["6"]["kernel"].shape == (4096, 3)
    assert variable_shapes("densenet121", 2)["params"]["classifier"]["kernel"].shape == (1024, 2)
    # DenseNet-121's head, initialised on a DenseNet with a layer a block: the
    # same classifier code, without compiling 120 convolutions' initialisers.
    v = init_variables(DenseNet(2, block_config=(1, 1, 1, 1)), 1, 32)
    # The new head of each arch is a fresh torch.nn.Linear: kernel and bias U(±1/sqrt(in)),
    # not torchvision's zero bias (which Auto-RGN could not divide by).
    small_vgg = init_variables(VGG(2, cfg=(8, "M", 16, "M")), 1, 32)["params"]["classifier"]
    for head in (v["params"]["classifier"], small_vgg["6"]):
        bound = 1 / math.sqrt(head["kernel"].shape[0])
        for w in (np.asarray(head["kernel"]), np.asarray(head["bias"])):
            assert 0 < np.abs(w).max() <= bound and np.abs(w).std() > 0
        assert np.abs(np.asarray(head["kernel"])).max() > 0.9 * bound


@pytest.mark.xdist_group("resnet_tiny")
@pytest.mark.slow
def test_same_seed_same_init_other_seed_differs():
    model = create("resnet_tiny", 2)
    a, b, c = (init_variables(model, s, 32)["params"]["fc"]["kernel"] for s in (3, 3, 4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.slow
@pytest.mark.xdist_group("resnet_tiny")
def test_bfloat16_compute_keeps_float32_params_and_a_float32_head(tiny):
    _, v = tiny
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    f32 = jax.jit(create("resnet_tiny", 2).apply)(v, x)
    model = create("resnet_tiny", 2, dtype=jnp.bfloat16)
    bf16 = jax.jit(model.apply)(v, x)
    assert f32.dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(v))
    err = np.abs(np.asarray(bf16, np.float32) - np.asarray(f32)).max()
    assert 0 < err < 0.05 * max(1.0, float(np.abs(f32).max()))
    # The backbone computes in bfloat16; the new head computes in float32, so its
    # logits are not rounded to bfloat16 (whose 8 bits tie near test scores).
    feats = jax.random.normal(jax.random.key(2), (4, 2048)).astype(jnp.bfloat16)
    head = jax.jit(lambda v, f: model.apply(v, f, part="head"))(v, feats)
    fc = v["params"]["fc"]
    by_hand = np.asarray(feats, np.float64) @ np.asarray(fc["kernel"], np.float64) + fc["bias"]
    assert bf16.dtype == head.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(head), by_hand, rtol=1e-5, atol=1e-5)
    assert not np.array_equal(np.asarray(bf16), np.asarray(bf16.astype(jnp.bfloat16), np.float32))


@pytest.mark.slow
def test_bfloat16_compute_sums_norm_and_bias_gradients_in_float32():
    """Under bf16 compute the gradients of BatchNorm's scale and bias and of a conv's or a
    VGG-19 hidden layer's bias (sums over every pixel of the batch) were summed in
    bfloat16: 15-33% off for BatchNorm, up to 90% for a conv bias. Against the same
    layers fed the same bf16 values in float32, they agree to bf16's input rounding."""
    from medft_jax.models.layers import BatchNorm, Dense, conv

    x = jax.random.normal(jax.random.key(0), (16, 32, 32, 8)).astype(jnp.bfloat16)
    g = jax.random.normal(jax.random.key(1), (16, 32, 32, 8)).astype(jnp.bfloat16)
    layers = {
        "norm": (BatchNorm, {}, lambda m, v, x: m.apply(v, x, True, mutable=["batch_stats"])[0]),
        "conv": (lambda dtype: conv(8, 1, use_bias=True, dtype=dtype, name="c"), {}, None),
        "dense": (lambda dtype: Dense(8, dtype=dtype), {}, None),
    }
    for name, (make, _, call) in layers.items():
        grads = {}
        for dtype in (jnp.bfloat16, jnp.float32):
            module = make(dtype=dtype)
            v = module.init(
                jax.random.key(2), x.astype(jnp.float32), *([True] * (call is not None))
            )
            apply = call or (lambda m, v, x: m.apply(v, x))

            def loss(params, module=module, v=v, apply=apply, dtype=dtype):
                out = apply(module, {**v, "params": params}, x.astype(dtype))
                return jnp.sum(out.astype(jnp.float32) * g.astype(jnp.float32))

            grads[dtype] = jax.grad(loss)(v["params"])
        for key in ("bias", "scale") if name == "norm" else ("bias",):
            low, ref = (np.asarray(grads[d][key], np.float64) for d in (jnp.bfloat16, jnp.float32))
            err = np.abs(low - ref).max() / np.abs(ref).max()
            assert err < 2e-2, (name, key, err)


def test_every_arch_gives_float32_logits_under_bfloat16_compute():
    # Traced only (no memory, no compiling): the head's output dtype of each arch.
    for arch in ARCHS:
        model = create(arch, 3, dtype=jnp.bfloat16)
        x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
        out = jax.eval_shape(
            lambda x, model=model: model.init_with_output(jax.random.key(0), x)[0], x
        )
        assert out.dtype == jnp.float32, arch


@pytest.mark.slow
def test_vgg_runs_at_32px_with_dropout_only_when_asked():
    # VGG-19's five 2x2 pools (32 px -> 1 px, then the adaptive 7x7 pool) at
    # 8 channels a conv: the same layers as VGG-19, compiled in seconds.
    model = VGG(2, cfg=(8, "M", 8, "M", 8, "M", 8, "M", 8, "M"))
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    v = init_variables(model, 0, 32)

    @jax.jit
    def outputs(v, x):  # one program: op-by-op dispatch compiles every op
        dropped = [
            model.apply(v, x, deterministic=False, rngs={"dropout": jax.random.key(k)})
            for k in (1, 2)
        ]
        return model.apply(v, x), *dropped  # by default: no dropout, so no RNG needed

    a, d1, d2 = outputs(v, x)
    assert a.shape == (2, 2)
    np.testing.assert_array_equal(a, outputs(v, x)[0])
    assert not np.allclose(d1, d2) and not np.allclose(d1, a)


def test_batch_statistics_of_one_value_per_channel_are_refused():
    # Batch 1 at a 1x1 map: the batch variance is 0 and every output the bias, whatever
    # the image (torch raises too). Two values per channel, or running statistics, are fine.
    from medft_jax.errors import UserError
    from medft_jax.models.layers import BatchNorm

    bn = BatchNorm()
    one = jnp.arange(4.0).reshape(1, 1, 1, 4)
    variables = bn.init(jax.random.key(0), one, True)  # initialising is no training step
    with pytest.raises(
        UserError, match=r"one value per channel in training \(input \(1, 1, 1, 4\)"
    ):
        bn.apply(variables, one, True, mutable=["batch_stats"])
    two = jnp.arange(8.0).reshape(2, 1, 1, 4)
    out, _ = bn.apply(variables, two, True, mutable=["batch_stats"])
    np.testing.assert_allclose(out[:, 0, 0, 0], [-1.0, 1.0], atol=1e-5)  # (x - mean) / std
    np.testing.assert_allclose(bn.apply(variables, one, False)[0, 0, 0], one[0, 0, 0] / 1.0000050)


@pytest.mark.slow
def test_densenet_refuses_a_map_too_small_to_pool_rather_than_nan_logits():
    model = create("densenet121", num_classes=2)
    with pytest.raises(ValueError, match=r"a 1x1 feature map is too small for DenseNet's 2x2"):
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x), jnp.zeros((1, 24, 24, 3)))
    logits = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0],
                            jnp.zeros((1, 32, 32, 3)))  # fmt: skip
    assert logits.shape == (1, 2)  # 32 px: the smallest the config takes


def test_adaptive_pool_bins_by_hand():
    # torch bins for 3 -> 2: [0, 2) and [1, 3) (they overlap)
    np.testing.assert_allclose(_adaptive_matrix(3, 2), [[0.5, 0.5, 0], [0, 0.5, 0.5]])
    x = jnp.arange(1 * 3 * 1 * 1, dtype=jnp.float32).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(adaptive_avg_pool(x, (2, 1))[0, :, 0, 0], [0.5, 1.5])
    # 1 -> 7 replicates the value into every bin.
    y = adaptive_avg_pool(jnp.full((1, 1, 1, 2), 3.0), (7, 7))
    assert y.shape == (1, 7, 7, 2) and np.all(np.asarray(y) == 3.0)


@pytest.mark.slow
def test_block_outputs_cover_every_block():
    for arch, spec in {**ARCHS, **TEST_ARCHS}.items():
        model = create(arch, 2)
        x = jnp.zeros((1, 32, 32, 3))
        _, state = jax.eval_shape(
            lambda m=model, x=x: m.init_with_output(jax.random.key(0), x, mutable=True)
        )
        assert set(block_outputs(state["intermediates"])) == set(spec.partition.names), arch


def test_every_parameter_in_exactly_one_block():
    for arch, spec in {**ARCHS, **TEST_ARCHS}.items():
        paths = list(flatten(variable_shapes(arch, 2)["params"]))
        owners = {p: [b.name for b in spec.partition.blocks if b.owns(p)] for p in paths}
        assert all(len(o) == 1 for o in owners.values()), arch
        assert {o[0] for o in owners.values()} == set(spec.partition.names), arch
        heads = [p for p in paths if spec.partition.is_head(p)]
        assert sorted(heads) == sorted(f"{spec.partition.head}/{n}" for n in ("bias", "kernel"))


def _shapes(arch: str) -> dict:
    return variable_shapes(arch, 2)


def test_tiny_resnet_is_resnet50_with_one_bottleneck_per_layer():
    """What lets the fast tests stand it in for ResNet-50: its blocks, paths and shapes."""
    assert "resnet_tiny" not in ARCHS  # runnable by name, offered to no user
    tiny, full = get_arch("resnet_tiny"), get_arch("resnet50")
    assert tiny.partition.blocks == full.partition.blocks
    assert tiny.partition.head == full.partition.head
    assert (tiny.resize_size, tiny.crop_size) == (full.resize_size, full.crop_size)
    for collection in ("params", "batch_stats"):
        small = flatten(_shapes("resnet_tiny")[collection])
        big = flatten(_shapes("resnet50")[collection])
        first = {p: s for p, s in big.items() if not p.startswith("layer") or "/0/" in p}
        assert {p: s.shape for p, s in small.items()} == {p: s.shape for p, s in first.items()}


@pytest.mark.slow
def test_cpu_init_without_llvm_optimisation_draws_the_same_values():
    """init_variables compiles at XLA's optimisation level 0 on CPU: the same draws, to rounding."""
    model = create("resnet_tiny", 2)
    x = jnp.zeros((1, 32, 32, 3), jnp.float32)
    plain = jax.jit(model.init)(jax.random.key(5), x)
    fast = init_variables(model, 5, 32)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(fast), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
