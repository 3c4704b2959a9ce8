"""The compiled steps: what XLA is asked to compute, losses, and failure messages."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from experiments import run as run_cli
from medft_jax import fit, strategies, train
from medft_jax.data.demo import load_demo
from medft_jax.models import create, get_arch, init_variables, layers, variable_shapes
from medft_jax.models.conv import lax_conv
from medft_jax.train import Trainer

TINY = "resnet_tiny"
"""ResNet-50's layers, blocks and paths with one bottleneck per layer: for what is not
ResNet-50's own numbers (compilations, shared programs, updates). Its fast tests share
an xdist worker (group ``resnet_tiny``), which compiles its initialiser once."""


def _model(arch: str):
    model = create(arch, 2)
    return model, jax.device_get(init_variables(model, 0, 32))


@pytest.fixture(scope="module")
def tiny():
    return _model(TINY)


def _zeros_tree(arch: str):
    """The model's variables as zeros: its tree without compiling its initialiser."""
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variable_shapes(arch, 2))
    return create(arch, 2), zeros


def _count_convs(strategy: str, model, variables, epoch: int = 0) -> int:
    """Convolutions in the train step XLA is given (lowered, not compiled)."""
    strat = strategies.make(
        strategy,
        variables["params"],
        get_arch(TINY).partition,
        learning_rate=1e-3,
        steps_per_epoch=1,
    )
    trainer = Trainer(model, strat.tx, multilabel=False)
    state = trainer.init_state(variables)
    x = trainer.shard_batch(np.zeros((4, 32, 32, 3), np.uint8))
    y = trainer.shard_batch(np.zeros((4,), np.int32))
    mask = strat.schedule.trainable_mask(variables["params"], epoch)
    lowered = trainer.lower_stage(
        state, x, y, trainable=mask, bn_train=strat.schedule.bn_train(epoch)
    )
    return lowered.as_text().count("stablehlo.convolution")


@pytest.mark.slow
def test_frozen_prefix_runs_forward_only(monkeypatch):
    """LP computes no backward convolution; FT all of them; G-LF's stages in between."""
    # ResNet-50's blocks and paths with one bottleneck per layer: the frozen
    # prefix is cut per block, and lowering it costs a third of ResNet-50's.
    model, variables = _zeros_tree(TINY)  # only lowered: the values do not matter
    # Counted with XLA's own convolution: the CPU formulation writes 1x1 and
    # small-output convolutions as matrix products (medft_jax/models/conv.py).
    monkeypatch.setattr(layers, "conv2d", lambda x, w, s=1, p=0: lax_conv(x, w, s, p))
    forward = 17  # the stem conv, 4 bottlenecks of 3 convs, 4 downsample convs
    assert _count_convs("lp", model, variables) == forward
    # FT: each conv also gets a weight gradient and (but the first) an input gradient.
    assert _count_convs("ft", model, variables) == forward + forward + (forward - 1)
    g_lf = [_count_convs("g_lf", model, variables, epoch) for epoch in range(6)]
    assert g_lf[0] == forward and g_lf[-1] == 3 * forward - 1
    assert all(a < b for a, b in itertools.pairwise(g_lf))  # each stage unfreezes more convs


def test_losses_by_hand():
    logits = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    ce = train.classification_loss(logits, jnp.array([0, 0]), multilabel=False)
    expected = np.mean([np.log(1 + np.exp(-2.0)), np.log(1 + np.exp(1.0))])
    np.testing.assert_allclose(ce, expected, rtol=1e-6)
    bce = train.classification_loss(logits, jnp.array([[1.0, 0.0], [0.0, 0.0]]), multilabel=True)
    sp = lambda z: np.log1p(np.exp(z))  # noqa: E731  softplus: -log(sigmoid(-z))
    expected = np.mean([sp(-2.0), sp(0.0), sp(0.0), sp(1.0)])
    np.testing.assert_allclose(bce, expected, rtol=1e-6)


@pytest.mark.slow
def test_one_compilation_per_stage(tiny):
    model, variables = tiny
    strat = strategies.make(
        "lp_ft",
        variables["params"],
        get_arch(TINY).partition,
        learning_rate=1e-3,
        steps_per_epoch=1,
        lp_epochs=1,
    )
    trainer = Trainer(model, strat.tx, multilabel=False)
    state = trainer.init_state(variables)
    x = trainer.shard_batch(np.zeros((2, 32, 32, 3), np.uint8))
    y = trainer.shard_batch(np.zeros((2,), np.int32))
    for epoch in (0, 0, 1, 1, 2):
        mask = strat.schedule.trainable_mask(variables["params"], epoch)
        state, _ = trainer.train_step(
            state, x, y, trainable=mask, bn_train=strat.schedule.bn_train(epoch)
        )
    assert trainer.num_compilations == 2


@pytest.mark.xdist_group("resnet_tiny")
@pytest.mark.slow
def test_non_finite_loss_stops_the_run(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(train, "classification_loss", lambda *a: jnp.float32(jnp.nan))
    monkeypatch.setattr(train, "_GRAD_PROGRAMS", {})  # not the programs of the real loss
    demo = load_demo(seed=0, image_size=32, sizes={"train": 16, "val": 8, "test": 8})
    config = fit.RunConfig(
        strategy="lp", arch=TINY, weights="none", epochs=1, batch_size=8, image_size=32
    )
    with pytest.raises(
        train.NonFiniteLossError,
        match=r"^training loss became nan at step 1 \(epoch 1\); try a smaller --lr$",
    ):
        fit.run_one(config, tmp_path, dataset=demo, progress=False)
    assert not list(tmp_path.rglob("record.json"))


def test_a_divergence_names_its_epoch_as_the_progress_lines_do_and_fp32_only_if_not_used():
    """Epochs are said from 1 (``epoch 1: loss ...``): the third epoch (index 2) is epoch 3.
    ``--precision fp32`` is a remedy only for a run that computed in bf16."""
    with pytest.raises(train.NonFiniteLossError) as e:
        train.check_finite(float("inf"), step=9, epoch=2, precision="bf16")
    assert str(e.value) == (
        "training loss became inf at step 9 (epoch 3); try a smaller --lr or --precision fp32"
    )
    with pytest.raises(train.NonFiniteLossError, match=r"\(epoch 1\); try a smaller --lr$"):
        train.check_finite(float("nan"), step=1, epoch=0, precision="fp32")
    train.check_finite(1.5, step=1, epoch=0)  # finite: nothing


def test_out_of_memory_suggests_smaller_batch(monkeypatch, tmp_path, capsys):
    def oom(*a, **k):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.1GiB")

    monkeypatch.setattr(fit, "run_one", oom)
    argv = ["--strategy", "ft", "--weights", "none", "--out", str(tmp_path), "--batch-size", "64"]
    assert run_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "try a smaller --batch-size than 64" in err


def test_trainer_rejects_a_mask_of_another_tree():
    model, variables = _zeros_tree("resnet50")
    trainer = Trainer(model, optax.sgd(0.1), multilabel=False)
    state = trainer.init_state(variables)
    x = trainer.shard_batch(np.zeros((2, 32, 32, 3), np.uint8))
    y = trainer.shard_batch(np.zeros((2,), np.int32))
    with pytest.raises(ValueError, match="trainable mask has 1 leaves, params have 161"):
        trainer.train_step(state, x, y, trainable=[True], bn_train=True)


@pytest.mark.slow
@pytest.mark.xdist_group("resnet_tiny")
def test_runtime_learning_rate_and_seed_share_one_program(tiny):
    """lr and seed are step arguments: the same program for every (lr, seed), same updates."""
    model, variables = tiny
    partition = get_arch(TINY).partition

    def trainer(lr, seed, runtime):
        strat = strategies.make(
            "lp", variables["params"], partition, learning_rate=1.0 if runtime else lr
        )
        return strat, Trainer(
            model, strat.tx, multilabel=False, seed=seed, learning_rate=lr if runtime else None
        )

    strat, a = trainer(1e-3, 0, True)
    _, b = trainer(1e-5, 7, True)
    _, baked = trainer(1e-3, 0, False)
    x = a.shard_batch(np.arange(2 * 32 * 32 * 3, dtype=np.uint8).reshape(2, 32, 32, 3))
    y = a.shard_batch(np.array([0, 1], np.int32))
    mask = strat.schedule.trainable_mask(variables["params"], 0)
    bn = strat.schedule.bn_train(0)

    def text(t):
        return t.lower_stage(t.init_state(variables), x, y, trainable=mask, bn_train=bn).as_text()

    assert text(a) == text(b)
    assert text(a) != text(baked)  # the baked-in rate is a constant of the program
    head = ("fc", "kernel")
    moved = {}
    for name, t in (("runtime", a), ("baked", baked)):
        state, _ = t.train_step(t.init_state(variables), x, y, trainable=mask, bn_train=bn)
        moved[name] = (
            np.asarray(state.params[head[0]][head[1]]) - variables["params"]["fc"]["kernel"]
        )
    # First Adam step: no trained weight moves by more than lr, and some move.
    assert 0 < np.abs(moved["runtime"]).max() <= 1e-3 * (1 + 1e-6)
    np.testing.assert_allclose(moved["runtime"], moved["baked"], rtol=1e-6, atol=1e-9)


@pytest.mark.xdist_group("resnet_tiny")
@pytest.mark.slow
def test_trainer_with_hyper_shares_compiled_steps(tiny):
    """A sweep's runs at another lr/seed reuse the compiled step and update as a fresh trainer."""
    model, variables = tiny
    strat = strategies.make("lp", variables["params"], get_arch(TINY).partition, learning_rate=1.0)
    first = Trainer(model, strat.tx, multilabel=False, seed=0, learning_rate=1e-3)
    x = first.shard_batch(np.arange(2 * 32 * 32 * 3, dtype=np.uint8).reshape(2, 32, 32, 3))
    y = first.shard_batch(np.array([0, 1], np.int32))
    mask = strat.schedule.trainable_mask(variables["params"], 0)
    bn = strat.schedule.bn_train(0)
    first.train_step(first.init_state(variables), x, y, trainable=mask, bn_train=bn)
    shared = first.with_hyper(seed=3, learning_rate=1e-5)
    fresh = Trainer(model, strat.tx, multilabel=False, seed=3, learning_rate=1e-5)
    a, _ = shared.train_step(shared.init_state(variables), x, y, trainable=mask, bn_train=bn)
    b, _ = fresh.train_step(fresh.init_state(variables), x, y, trainable=mask, bn_train=bn)
    assert (first.num_compilations, shared.num_compilations, fresh.num_compilations) == (1, 0, 1)
    np.testing.assert_array_equal(a.params["fc"]["kernel"], b.params["fc"]["kernel"])
    assert not np.array_equal(a.params["fc"]["kernel"], variables["params"]["fc"]["kernel"])


@pytest.mark.slow
def test_strategies_share_the_gradient_program_and_match_one_fused_step(monkeypatch):
    """Two trainers of one model share the gradient program; the split step is the plain one."""
    # The step's own arithmetic (split into gradient and update programs), on a
    # conv, a BatchNorm and a head: the fused reference compiles in a second.
    model = TinyNet()
    variables = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    monkeypatch.setattr(train, "_GRAD_PROGRAMS", {})
    adam = Trainer(model, optax.adam(1e-3), multilabel=False)
    sgd = Trainer(model, optax.sgd(0.1), multilabel=False)
    x_host = np.arange(4 * 32 * 32 * 3, dtype=np.uint8).reshape(4, 32, 32, 3)
    y_host = np.array([0, 1, 1, 0], np.int32)
    x, y = adam.shard_batch(x_host), adam.shard_batch(y_host)
    mask = jax.tree.map(lambda _: True, variables["params"])
    state, loss = adam.train_step(adam.init_state(variables), x, y, trainable=mask, bn_train=True)
    sgd.compile_stage(sgd.init_state(variables), x, y, trainable=mask, bn_train=True)
    key = train._stage_key(mask, True, False), train._shapes((x, y))
    assert len(train._GRAD_PROGRAMS) == 1
    assert sgd._train_steps[key][0] is adam._train_steps[key][0]
    assert sgd._train_steps[key][1] is not adam._train_steps[key][1]

    # The same step as one program: value_and_grad of the same loss, then Adam.
    tx = optax.adam(1e-3)

    @jax.jit
    def fused(params, stats, images, labels):
        def loss_fn(p):
            logits, new = model.apply(
                {"params": p, "batch_stats": stats},
                train.normalize(images, jnp.float32),
                bn_train=True,
                deterministic=False,
                mutable=["batch_stats"],
            )
            return train.classification_loss(logits, labels, False), new["batch_stats"]

        (value, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, _ = tx.update(grads, tx.init(params), params)
        return optax.apply_updates(params, updates), new_stats, value

    params, stats, value = fused(variables["params"], variables["batch_stats"], x_host, y_host)
    np.testing.assert_allclose(loss, value, rtol=1e-6)
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for got, want in zip(jax.tree.leaves(state.batch_stats), jax.tree.leaves(stats), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert int(state.step) == 1


class TinyNet(nn.Module):
    """A conv, a BatchNorm and a head: enough for the loop's own arithmetic."""

    @nn.compact
    def __call__(self, x, bn_train=False, deterministic=True):
        x = nn.Conv(4, (3, 3), use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=not bn_train, momentum=0.9, name="bn")(x)
        return nn.Dense(2, name="fc")(nn.relu(x).mean(axis=(1, 2)))


@pytest.mark.slow
def test_train_step_takes_a_smaller_last_batch():
    """A loop of the user's own whose last batch is smaller got the full batch's compiled
    program (keyed by the stage alone), and XLA's TypeError; its step is SGD's by hand."""
    model = TinyNet()
    variables = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
    trainer = Trainer(model, optax.sgd(0.1), multilabel=False)
    mask = jax.tree.map(lambda _: True, variables["params"])
    rng = np.random.default_rng(0)
    n = jax.device_count()
    x = rng.integers(0, 256, (6 * n, 8, 8, 3), dtype=np.uint8)
    y = rng.integers(0, 2, 6 * n).astype(np.int32)
    state = trainer.init_state(variables)
    state, _ = trainer.train_step(
        state, trainer.shard_batch(x[: 4 * n]), trainer.shard_batch(y[: 4 * n]),
        trainable=mask, bn_train=True,
    )  # fmt: skip
    before = jax.device_get((state.params, state.batch_stats))
    state, loss = trainer.train_step(
        state, trainer.shard_batch(x[4 * n :]), trainer.shard_batch(y[4 * n :]),
        trainable=mask, bn_train=True,
    )  # fmt: skip

    def loss_fn(p):
        logits, _ = model.apply(
            {"params": p, "batch_stats": before[1]},
            train.normalize(jnp.asarray(x[4 * n :]), jnp.float32),
            bn_train=True,
            deterministic=False,
            mutable=["batch_stats"],
        )
        return train.classification_loss(logits, jnp.asarray(y[4 * n :]), False)

    value, grads = jax.value_and_grad(loss_fn)(before[0])
    np.testing.assert_allclose(loss, value, rtol=1e-6)
    want = jax.tree.map(lambda p, g: p - 0.1 * g, before[0], grads)
    for got, w in zip(jax.tree.leaves(state.params), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)
    assert trainer.num_compilations == 2


@pytest.mark.slow
def test_rgn_prepass_by_hand():
    """The prepass holds normalised mean RGN over its batches and changes nothing else."""
    model = TinyNet()
    variables = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
    # Pretrained-like: no zero-norm tensor, whose RGN ‖g‖/eps would dwarf the rest.
    variables = jax.tree.map(lambda w: w + 0.1, variables)
    tx = strategies.scale_by_rgn(optax.adam(1.0), mode="prepass")
    trainer = Trainer(model, tx, multilabel=False, learning_rate=1e-2)
    rng = np.random.default_rng(0)
    batches = [
        {
            "image": rng.integers(0, 256, (4, 8, 8, 3), np.uint8),
            "label": rng.integers(0, 2, 4).astype(np.int32),
        }
        for _ in range(3)
    ]

    @jax.jit
    @jax.grad
    def grad_fn(p, images, labels):
        logits, _ = model.apply(
            {"params": p, "batch_stats": variables["batch_stats"]},
            train.normalize(images, jnp.float32),
            bn_train=True,
            mutable=["batch_stats"],
        )
        return train.classification_loss(logits, labels, False)

    def rgns(params, batch, frozen=()):
        grads = grad_fn(params, batch["image"], batch["label"])
        return np.array(
            [
                0.0 if "/".join(k.key for k in path) in frozen else np.linalg.norm(g)
                for path, g in jax.tree_util.tree_leaves_with_path(grads)
            ]
        ) / np.array([max(np.linalg.norm(w), 1e-8) for w in jax.tree.leaves(params)])

    def expected(frozen=()):
        mean = np.mean([rgns(variables["params"], b, frozen) for b in batches], axis=0)
        return mean / mean.max()

    everything = jax.tree.map(lambda _: True, variables["params"])
    state = trainer.init_state(variables)
    before = jax.device_get(state)
    prepass = strategies.Prepass(batches=3)
    state = trainer.estimate_rgn(
        state, iter(batches), trainable=everything, bn_train=True, prepass=prepass
    )
    np.testing.assert_allclose(state.opt_state.held, expected(), rtol=1e-5)
    assert state.opt_state.held.max() == 1.0
    # Nothing but the held multipliers moved: weights, statistics, step, Adam's moments.
    unchanged = (state.params, state.batch_stats, state.step, state.opt_state.inner_state)
    want = (before.params, before.batch_stats, before.step, before.opt_state.inner_state)
    for got, ref in zip(jax.tree.leaves(unchanged), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(got, ref)
    # The next update applies them.
    x, y = trainer.shard_batch(batches[0]["image"]), trainer.shard_batch(batches[0]["label"])
    state, _ = trainer.train_step(state, x, y, trainable=everything, bn_train=True)
    applied = np.array([float(m) for m in jax.tree.leaves(state.opt_state.applied)])
    np.testing.assert_allclose(applied, expected(), rtol=1e-5)
    # A frozen tensor counts with a zero gradient (so a zero multiplier).
    frozen = {"conv/kernel", "bn/scale"}
    mask = jax.tree_util.tree_map_with_path(
        lambda p, _: "/".join(k.key for k in p) not in frozen, variables["params"]
    )
    state = trainer.estimate_rgn(
        trainer.init_state(variables), iter(batches), trainable=mask, bn_train=True, prepass=prepass
    )
    np.testing.assert_allclose(state.opt_state.held, expected(frozen), rtol=1e-5)


@pytest.mark.slow  # two compilations of a ResNet step
def test_bf16_loss_curve_stays_within_five_percent_of_float32(tiny):
    """``--precision bf16``: bf16 compute, float32 parameters and Adam state.

    Six Adam steps (lr 1e-4) of full fine-tuning on demo images from the same start. The
    first pass over the four batches (losses 0.48-0.91): each bf16 loss within 5 % of the
    float32 run's, no absolute slack (measured: 1.0-2.3 %, numerics 7). The second pass
    (losses near 0.01, bf16's 8-bit mantissa then 6-16 % of them): within 0.005. A body
    silently left in float32 with only its input rounded stayed within both, so every
    convolution and BatchNorm of the bf16 model is checked to compute in bf16 (the head,
    its logits and the loss in float32), as none of the float32 model's does.
    """
    _, variables = tiny
    demo = load_demo(seed=0, image_size=32, sizes={"train": 32, "val": 8, "test": 8})
    batches = list(itertools.islice(demo.train_iter(8, seed=0, epoch=0), 4))
    curves, params, computed = {}, {}, {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model = create(TINY, 2, dtype=dtype)
        trainer = Trainer(model, optax.adam(1e-4), multilabel=False, compute_dtype=dtype)
        state = trainer.init_state(variables)
        mask = jax.tree.map(lambda _: True, variables["params"])
        losses = []
        for step in range(6):
            b = batches[step % len(batches)]
            x, y = trainer.shard_batch(b["image"]), trainer.shard_batch(b["label"])
            state, loss = trainer.train_step(state, x, y, trainable=mask, bn_train=True)
            losses.append(float(loss))
        curves[dtype], params[dtype] = np.array(losses), state.params
        _, inter = model.apply(
            variables,
            jnp.asarray(batches[0]["image"]),
            capture_intermediates=True,
            mutable=["intermediates"],
        )
        computed[dtype] = {
            jax.tree_util.keystr(path): leaf.dtype
            for path, leaf in jax.tree_util.tree_leaves_with_path(inter)
        }
    f32, bf16 = curves[jnp.float32], curves[jnp.bfloat16]
    np.testing.assert_allclose(bf16[:4], f32[:4], rtol=0.05, atol=0)
    np.testing.assert_allclose(bf16[4:], f32[4:], rtol=0, atol=0.005)
    assert not np.array_equal(bf16, f32)  # the bf16 run did compute in bf16
    assert f32.min() < 0.1 * f32[0]  # and the curve moves: the comparison is of training
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params[jnp.bfloat16]))
    layers = [k for k in computed[jnp.bfloat16] if "conv" in k or "bn" in k]
    assert len(layers) >= 20 and all(computed[jnp.bfloat16][k] == jnp.bfloat16 for k in layers)
    assert all(computed[jnp.bfloat16][k] == jnp.float32 for k in computed[jnp.bfloat16]
               if "fc" in k)  # fmt: skip
    assert set(computed[jnp.float32].values()) == {jnp.dtype(jnp.float32)}


def test_default_mesh_orders_devices_by_process():
    """predict gathers masks in process order; a mesh listing devices by id (TPU pods can
    interleave processes) would pair probabilities with other examples' labels."""
    from types import SimpleNamespace as D

    listed = [D(id=0, process_index=1), D(id=1, process_index=0), D(id=2, process_index=1)]
    listed.append(D(id=3, process_index=0))
    assert [d.id for d in train.process_ordered(listed)] == [1, 3, 0, 2]
    assert list(train.make_mesh().devices.flat) == train.process_ordered(jax.devices())


def _lp_trainer(model, variables, mesh=None):
    strat = strategies.make(
        "lp", variables["params"], get_arch(TINY).partition, learning_rate=1.0, frozen_bn="freeze"
    )
    trainer = Trainer(model, strat.tx, multilabel=False, learning_rate=1e-2, mesh=mesh)
    kw = {
        "trainable": strat.schedule.trainable_mask(variables["params"], 0),
        "bn_train": strat.schedule.bn_train(0),
    }
    return trainer, kw


@pytest.mark.xdist_group("resnet_tiny")
@pytest.mark.slow
def test_head_steps_are_train_steps_from_features_one_call_each(tiny):
    """Cached-feature steps scanned in one program update as one call per step does."""
    model, variables = tiny
    trainer, kw = _lp_trainer(model, variables)
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(7, 4, 2048)).astype(np.float32)
    labels = rng.integers(0, 2, (7, 4)).astype(np.int32)
    one = trainer.init_state(variables)
    want = []
    for f, y in zip(feats, labels, strict=True):
        x, y = trainer.shard_batch(f), trainer.shard_batch(y)
        one, loss = trainer.train_step(one, x, y, from_features=True, **kw)
        want.append(float(loss))
    scanned = trainer.init_state(variables)
    got = []
    for rows in (slice(0, 5), slice(5, 7)):  # calls of two lengths: each compiles once
        x, y = trainer.shard_steps(feats[rows]), trainer.shard_steps(labels[rows])
        scanned, losses = trainer.head_steps(scanned, x, y, **kw)
        got += np.asarray(losses).tolist()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert len(set(want)) == 7  # the head trained: every step's loss differs
    assert int(scanned.step) == int(one.step) == 7
    for a, b in zip(jax.tree.leaves(scanned.params), jax.tree.leaves(one.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(
        jax.tree.leaves(scanned.opt_state), jax.tree.leaves(one.opt_state), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    fc = variables["params"]["fc"]["kernel"]
    assert np.abs(np.asarray(scanned.params["fc"]["kernel"]) - fc).max() > 1e-4
    for a, b in zip(
        jax.tree.leaves(scanned.batch_stats), jax.tree.leaves(variables["batch_stats"]), strict=True
    ):
        np.testing.assert_array_equal(a, b)  # frozen BatchNorm: bit for bit
    assert len(trainer._head_programs) == 2


@pytest.mark.slow  # compiles two steps; head_steps' equality is the fast tier's check
@pytest.mark.xdist_group("resnet_tiny")
def test_a_step_copies_only_the_batch_statistics_it_changes(tiny):
    """Frozen BatchNorm: the gradient program returns no statistics (it copied every one)."""
    model, variables = tiny
    n_stats = len(jax.tree.leaves(variables["batch_stats"]))
    assert n_stats > 0
    trainer = Trainer(model, optax.sgd(0.1), multilabel=False)
    state = trainer.init_state(variables)
    x = trainer.shard_batch(np.zeros((4, 32, 32, 3), np.uint8))
    y = trainer.shard_batch(np.zeros((4,), np.int32))
    mask = jax.tree.map(lambda _: True, variables["params"])
    n_params = len(jax.tree.leaves(variables["params"]))
    for bn_train, returned in ((False, 0), (True, n_stats)):
        grad = trainer.lower_stage(state, x, y, trainable=mask, bn_train=bn_train).grad
        assert len(jax.tree.leaves(grad.out_info)) == 1 + n_params + returned
    new, _ = trainer.train_step(state, x, y, trainable=mask, bn_train=False)
    assert new.batch_stats is state.batch_stats


@pytest.mark.slow  # a process of its own, with two simulated devices
def test_head_steps_on_two_devices_equal_one(tmp_path):
    """The stacked batches shard on their batch axis, not the steps': 2 devices give 1's steps."""
    code = """
import json, jax, numpy as np
from medft_jax.models import create, init_variables
from medft_jax.train import make_mesh
from tests.test_train import _lp_trainer
model = create("resnet_tiny", 2)
variables = jax.device_get(init_variables(model, 0, 32))
rng = np.random.default_rng(0)
feats = rng.normal(size=(3, 4, 2048)).astype(np.float32)
labels = rng.integers(0, 2, (3, 4)).astype(np.int32)
out = []
for devices in (jax.devices()[:1], jax.devices()):
    trainer, kw = _lp_trainer(model, variables, make_mesh(devices))
    x, y = trainer.shard_steps(feats), trainer.shard_steps(labels)
    assert x.sharding.shard_shape(x.shape) == (3, 4 // len(devices), 2048)
    state, losses = trainer.head_steps(trainer.init_state(variables), x, y, **kw)
    out.append([np.asarray(losses).tolist(), np.asarray(state.params["fc"]["kernel"]).tolist()])
print(json.dumps(out))
"""
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(two[0], one[0], rtol=1e-5)
    np.testing.assert_allclose(two[1], one[1], rtol=1e-5, atol=1e-6)


@pytest.mark.xdist_group("resnet_tiny")
@pytest.mark.slow
def test_predict_returns_the_models_float32_logits(tiny):
    """The eval step returned float32 probabilities, which round to 1.0 past a logit margin
    of about 16.6: every confident example then tied in AUROC and AP. It returns the logits,
    which the host turns into float64 probabilities and log-probabilities."""
    model, variables = tiny
    trainer, _ = _lp_trainer(model, variables)
    state = trainer.init_state(variables)
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3)).astype(np.uint8)
    mask = np.asarray([True] * 5 + [False])
    got = trainer.predict(state, [{"image": images, "mask": mask}])
    want = model.apply(variables, train.normalize(images[:5], jnp.float32))
    assert got.dtype == np.float32 and got.shape == (5, 2)
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got.sum(axis=1), 1.0)  # logits, not softmax rows


@pytest.mark.slow  # a training run; the fast tier's 2 minutes
@pytest.mark.xdist_group("resnet_tiny")
def test_weights_gone_nan_under_a_finite_loss_stop_the_run(monkeypatch, tmp_path):
    """On XLA's CPU backend a reduction fused with a maximum (the ReLU before the global
    average pool, VGG's max pools) drops NaN: a backbone weight turned NaN can give finite
    logits and a finite loss (VGG-19's, in training too: it has no BatchNorm to spread the
    NaN first), and the run then trained a head on zero features to a record. The epoch's
    end checks the weights themselves, before they are validated or saved."""
    real = Trainer.train_step

    def poisoned(self, state, *args, **kwargs):
        state, loss = real(self, state, *args, **kwargs)
        if int(state.step) != 2:  # the first epoch's last step: no loss sees it
            return state, loss
        params = jax.tree_util.tree_map(lambda a: a, state.params)  # a new dict tree
        kernel = params["layer4"]["0"]["conv3"]["kernel"]
        params["layer4"]["0"]["conv3"]["kernel"] = kernel.at[0, 0, 0, 0].set(jnp.nan)
        return state.replace(params=params), loss

    monkeypatch.setattr(Trainer, "train_step", poisoned)
    demo = load_demo(seed=0, image_size=32, sizes={"train": 16, "val": 8, "test": 8})
    config = fit.RunConfig(
        strategy="ft", arch=TINY, weights="none", epochs=2, batch_size=8, image_size=32
    )
    with pytest.raises(train.NonFiniteLossError) as e:
        fit.run_one(config, tmp_path, dataset=demo, progress=False)
    assert str(e.value) == (
        "the model's weights or BatchNorm statistics became NaN or infinite in epoch 1, its "
        "training loss finite; try a smaller --lr"
    )
    assert e.value.step == 2 and not list(tmp_path.rglob("record.json"))


def test_a_compute_dtype_that_is_not_the_models_is_refused():
    """A float32 model given bfloat16 compute rounded its input to bf16 and computed in
    float32: neither precision's logits, without a word. Unsaid, the model's own is taken."""
    f32, bf16 = create(TINY, 2), create(TINY, 2, dtype=jnp.bfloat16)
    with pytest.raises(ValueError, match=r"^compute_dtype bfloat16 for a model built with dtype"):
        Trainer(f32, optax.sgd(0.1), multilabel=False, compute_dtype=jnp.bfloat16)
    assert Trainer(bf16, optax.sgd(0.1), multilabel=False).compute_dtype == jnp.bfloat16
    assert Trainer(f32, optax.sgd(0.1), multilabel=False).compute_dtype == jnp.float32


def test_a_trainer_rate_is_a_positive_number_over_a_tx_built_at_rate_one():
    """``make(..., learning_rate=1e-3)`` (the README's) with ``Trainer(learning_rate=1e-3)``
    trained at their product, 1e-6, writing a plausible record; -1e-3, NaN and 0 were taken."""
    model = create(TINY, 2)
    params = init_variables(model, 0, 32)["params"]
    partition = get_arch(TINY).partition

    def tx(rate):
        return strategies.make("ft", params, partition, learning_rate=rate).tx

    with pytest.raises(ValueError) as e:
        Trainer(model, tx(1e-3), multilabel=False, learning_rate=1e-3)
    assert str(e.value) == (
        "Trainer: learning_rate 0.001 multiplies every update, and tx was built by make() "
        "with learning_rate 0.001: the run would train at their product; build tx with "
        "learning_rate=1.0, or give the Trainer no learning_rate"
    )
    trainer = Trainer(model, tx(1.0), multilabel=False, learning_rate=1e-3)
    assert Trainer(model, tx(1e-3), multilabel=False).learning_rate is None  # tx's own rate
    for bad in (-1e-3, float("nan"), 0.0, float("inf")):
        with pytest.raises(ValueError, match=r"^Trainer: learning_rate must be a finite number"):
            Trainer(model, tx(1.0), multilabel=False, learning_rate=bad)
        with pytest.raises(ValueError, match=r"^Trainer: learning_rate must be a finite number"):
            trainer.with_hyper(seed=0, learning_rate=bad)
    with pytest.raises(ValueError, match=r"^Trainer: learning_rate must be a number \(a step"):
        Trainer(model, tx(1.0), multilabel=False, learning_rate=optax.constant_schedule(1e-3))
    assert trainer.with_hyper(seed=1, learning_rate=1e-4).learning_rate == 1e-4
