"""Strategies on the real ResNet-50, DenseNet-121 and VGG-19 parameter trees.

Only shapes are built (``jax.eval_shape``): the checks read paths, and the
transforms run on a same-structure tree of one-element leaves.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medft_jax import models
from medft_jax.config import BN_TRAINS_THROUGHOUT
from medft_jax.models.blocks import flatten
from medft_jax.strategies import STRATEGIES, make

ARCHS = ("resnet50", "densenet121", "vgg19")
NUM_CLASSES = 3


@pytest.fixture(scope="module", params=ARCHS)
def arch(request):
    shapes = models.variable_shapes(request.param, NUM_CLASSES)
    return request.param, shapes["params"], models.ARCHS[request.param].partition


def prefixed(paths, *prefixes):
    return {p for p in paths if any(p == q or p.startswith(q + "/") for q in prefixes)}


# Epoch-0 trainable parameters, as parameter-path prefixes, per the spec.
EPOCH0 = {
    "resnet50": {
        "lp": ("fc",),
        "g_lf": ("fc",),
        "g_fl": ("conv1", "bn1", "fc"),
        "lp_ft": ("fc",),
        "surgical": ("layer2", "fc"),
    },
    "densenet121": {
        "lp": ("classifier",),
        "g_lf": ("features/norm5", "classifier"),
        "g_fl": ("features/conv0", "features/norm0", "classifier"),
        "lp_ft": ("classifier",),
        "surgical": ("features/denseblock2", "classifier"),
    },
    "vgg19": {
        "lp": ("classifier/6",),
        "g_lf": ("classifier",),  # fc6, fc7 and the new fc8
        "g_fl": ("features/0", "features/2", "classifier/6"),
        "lp_ft": ("classifier/6",),
        "surgical": ("features/5", "features/7", "classifier/6"),
    },
}
SURGICAL = {"resnet50": "layer2", "densenet121": "denseblock2", "vgg19": "stage2"}
HEAD = {"resnet50": "fc", "densenet121": "classifier", "vgg19": "classifier/6"}
FINAL_STAGE = {  # g_lf, g_fl: ResNet's last block is the head alone, so G-FL ends a stage early
    "resnet50": (5, 4),
    "densenet121": (8, 8),
    "vgg19": (5, 5),
}


TENSORS_PER_BLOCK = {
    # stem (conv1, bn1), layer1-4 (3/4/6/3 bottlenecks of 9 tensors, +3 for the downsample), fc
    "resnet50": [3, 30, 39, 57, 30, 2],
    # conv0+norm0, then each dense block (6/12/24/16 layers of 6) and transition (3), norm5 + fc
    "densenet121": [3, 36, 3, 72, 3, 144, 3, 96, 4],
    # VGG-19's five stages of 2, 2, 4, 4, 4 convs (kernel + bias), then classifier's 3 linears
    "vgg19": [4, 4, 8, 8, 8, 6],
}


def build(name, params, partition, arch_name, **kw):
    kw.setdefault("steps_per_epoch", 1)
    if name == "surgical":
        kw.setdefault("surgical_block", SURGICAL[arch_name])
    return make(name, params, partition, learning_rate=1e-3, **kw)


def test_every_parameter_in_exactly_one_block(arch):
    name, params, partition = arch
    paths = list(flatten(params))
    owners = {p: [b.name for b in partition.blocks if b.owns(p)] for p in paths}
    assert all(len(o) == 1 for o in owners.values()), {
        p: o for p, o in owners.items() if len(o) != 1
    }
    counts = {b: sum(o == [b] for o in owners.values()) for b in partition.names}
    assert all(counts.values()), counts  # no empty block
    # What each block holds (strategies.md, "Parameter blocks"), in parameter tensors: a
    # conv moved across VGG-19's stages 3/4 (features/16) passed every test, shifting each
    # G-LF/G-FL run's unfreezing by an epoch for it.
    assert list(counts.values()) == TENSORS_PER_BLOCK[name], counts
    assert partition.head_block == partition.names[-1]
    assert prefixed(paths, HEAD[name]) == {f"{HEAD[name]}/kernel", f"{HEAD[name]}/bias"}
    assert [p for p in paths if partition.is_head(p)] == sorted(prefixed(paths, HEAD[name]))


@pytest.mark.parametrize(
    "strategy",
    [
        "ft",
        "lp",
        "g_lf",
        "g_fl",
        "lp_ft",
        "l1_sp",
        "l2_sp",
        "auto_rgn",
        "surgical",
        "llrd",
        "bitfit",
    ],
)
def test_epoch0_trainable_set(arch, strategy):
    name, params, partition = arch
    _, schedule = build(strategy, params, partition, name)
    paths = set(flatten(params))
    if strategy in EPOCH0[name]:
        want = prefixed(paths, *EPOCH0[name][strategy])
    elif strategy == "bitfit":
        want = {p for p in paths if p.endswith(("/bias", "/scale"))} | prefixed(paths, HEAD[name])
    else:  # ft, SP, Auto-RGN, LLRD: everything from step 0
        want = paths
    assert set(schedule.trainable_paths(0)) == want
    g_lf, g_fl = FINAL_STAGE[name]
    want_final = {"g_lf": g_lf, "g_fl": g_fl, "lp_ft": 5}.get(strategy, 0)
    assert schedule.final_stage_epoch == want_final


@pytest.mark.parametrize("arch_name", (*ARCHS, *models.TEST_ARCHS))
def test_bn_trains_throughout_is_exactly_where_freezing_bn_changes_nothing(arch_name):
    """``RunConfig`` names ``frozen_bn='freeze'`` of these strategies as ``'update'``."""
    shapes = models.variable_shapes(arch_name, NUM_CLASSES)
    partition = models.get_arch(arch_name).partition
    bn_blocks = {partition.block_of(p) for p in flatten(shapes.get("batch_stats", {}))}
    surgical = SURGICAL.get(arch_name, partition.names[1])
    for strategy in STRATEGIES:
        _, schedule = make(
            strategy,
            shapes["params"],
            partition,
            learning_rate=1e-3,
            steps_per_epoch=1,
            frozen_bn="freeze",
            **({"surgical_block": surgical} if strategy == "surgical" else {}),
        )
        in_inference = {
            e: bn_blocks - set(schedule.bn_train(e)) for e in range(len(partition.names) + 6)
        }
        if strategy in BN_TRAINS_THROUGHOUT or not bn_blocks:
            assert not any(in_inference.values()), (strategy, in_inference)
        else:  # the set is complete: every other strategy freezes some BatchNorm
            assert in_inference[0], strategy


def test_lp_optimizer_state_is_head_sized(arch):
    name, params, partition = arch
    tx, _ = build("lp", params, partition, name)
    state = jax.eval_shape(tx.init, params)
    head = sum(x.size for p, x in flatten(params).items() if partition.is_head(p))
    assert head == (2048 if name == "resnet50" else 1024 if name == "densenet121" else 4096) * 3 + 3
    assert sum(x.size for x in jax.tree.leaves(state) if x.ndim > 0) == 2 * head
    assert sum(x.size for x in jax.tree.leaves(state)) <= 2 * head + 2  # + step counts


@pytest.mark.slow
def test_gradual_unfreezing_transform_follows_the_schedule(arch):
    """One jitted update per epoch (1 step each): nonzero updates = the schedule's set."""
    name, params, partition = arch
    tiny = jax.tree.map(lambda _: jnp.ones((1,)), params)
    for strategy in ("g_lf", "g_fl"):
        tx, schedule = build(strategy, tiny, partition, name)
        state, update = tx.init(tiny), jax.jit(tx.update)
        n = len(partition.names)
        blocks_seen = []
        for epoch in range(n + 1):
            u, state = update(tiny, state, tiny)
            moved = {p for p, v in flatten(u).items() if np.asarray(v)[0] != 0}
            assert moved == set(schedule.trainable_paths(epoch)), (strategy, epoch)
            blocks_seen.append(schedule.trainable_blocks(epoch))
        names = partition.names
        for epoch in range(n):  # one more block each epoch, in the strategy's direction
            if strategy == "g_lf":
                assert blocks_seen[epoch] == names[n - 1 - epoch :]
            else:  # the first epoch + 1 blocks, and the head block through its head
                assert blocks_seen[epoch] == names[: epoch + 1] + names[epoch + 1 :][-1:]
        assert blocks_seen[-1] == names
