"""Strategies on a small hand-made pytree: every update checked against a hand computation."""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from medft_jax.models.blocks import Block, BlockPartition, flatten
from medft_jax.strategies import (
    EXTRA_STRATEGIES,
    HEAD,
    PAPER_STRATEGIES,
    Prepass,
    block_mask,
    hold_multipliers,
    l1_sp,
    l2_sp,
    make,
    map_paths,
    match_paths,
    rgn_vector,
    scale_by_label,
    scale_by_rgn,
    staged,
    train_only,
    unfreeze_at,
)

LR = 0.1
B1, B2, EPS = 0.9, 0.999, 1e-8

# Three blocks, input to output; the head is the last Linear only, and the last
# block ("top") holds one more layer (fc1), as VGG's and DenseNet's do.
TOY = BlockPartition(
    arch="toy",
    blocks=(Block("stem", ("stem",)), Block("body", ("body",)), Block("top", ("top",))),
    head="top/head",
)


def toy_params() -> dict:
    f = lambda *x: jnp.array(x, jnp.float32)  # noqa: E731
    return {
        "stem": {
            "conv": {"kernel": f([0.5, -1.0], [2.0, 0.25])},
            "bn": {"scale": f(1.0, 1.5), "bias": f(0.0, 0.1)},
        },
        "body": {"dense": {"kernel": f([1.0, -2.0, 0.5]), "bias": f(0.0, 0.0, 0.0)}},
        "top": {
            "fc1": {"kernel": f([0.3], [0.7])},
            "head": {"kernel": f([1.0, -1.0]), "bias": f(0.2, -0.2)},
        },
    }


PATHS = tuple(flatten(toy_params()))
HEAD_PATHS = ("top/head/bias", "top/head/kernel")
# Gradient at step t = BASE * SCALE[t]: varying over time, so Adam's output
# depends on its bias-correction count (with a constant gradient it would not).
SCALE = (1.0, -0.5, 2.0, 0.25, 3.0, -1.5, 0.75, 1.25, -2.0, 0.5)


def base_grads() -> dict:
    leaves, treedef = jax.tree.flatten(toy_params())
    out, k = [], 0
    for x in leaves:
        vals = [(-1.0) ** (k + i) * (0.1 + 0.05 * (k + i)) for i in range(x.size)]
        out.append(jnp.array(vals, jnp.float32).reshape(x.shape))
        k += x.size
    return jax.tree.unflatten(treedef, out)


def grads_at(t: int) -> dict:
    return jax.tree.map(lambda b: b * SCALE[t], base_grads())


def adam_reference(gs: list[np.ndarray], lr: float = LR) -> list[np.ndarray]:
    """PyTorch/optax Adam written out in float64, count starting at 1 with gs[0].

    optax computes in float32 (0.999 is not exact there), so results agree to ~1e-5.
    """
    m = v = 0.0
    out = []
    for k, g in enumerate(gs, start=1):
        m = B1 * m + (1 - B1) * g
        v = B2 * v + (1 - B2) * g * g
        m_hat, v_hat = m / (1 - B1**k), v / (1 - B2**k)
        out.append(-lr * m_hat / (np.sqrt(v_hat) + EPS))
    return out


def run(tx: optax.GradientTransformation, steps: int, params=None, grads=grads_at):
    """Jitted updates for ``steps`` steps; returns (flat updates per step, states)."""
    params = toy_params() if params is None else params
    state = tx.init(params)
    update = jax.jit(tx.update)
    ups, states = [], []
    for t in range(steps):
        u, state = update(grads(t), state, params)
        params = optax.apply_updates(params, u)
        ups.append({k: np.asarray(v) for k, v in flatten(u).items()})
        states.append(state)
    return ups, states


def group_adam(state, group: str) -> optax.ScaleByAdamState:
    """The Adam state of one group of a staged strategy (chain -> partition -> gate)."""
    inner = state[0].inner_states[group].inner_state
    if isinstance(inner, optax.transforms.ConditionallyMaskState):
        inner = inner.inner_state
    return inner


def check_against_reference(
    ups: list[dict], starts: dict[str, int | None], rtol: float = 2e-5
) -> None:
    for path in PATHS:
        start = starts[path]
        gs = [np.asarray(flatten(grads_at(t))[path], np.float64) for t in range(len(ups))]
        ref = [] if start is None else adam_reference(gs[start:])
        for t, u in enumerate(ups):
            if start is None or t < start:
                assert np.all(u[path] == 0), (path, t, u[path])
            else:
                np.testing.assert_allclose(
                    u[path], ref[t - start], rtol=rtol, atol=1e-9, err_msg=f"{path} step {t}"
                )


def starts_of(**by_prefix: int | None) -> dict[str, int | None]:
    out = {}
    for path in PATHS:
        key = "head" if path in HEAD_PATHS else path.split("/")[0]
        key = "fc1" if path.startswith("top/fc1") else key
        out[path] = by_prefix[key]
    return out


# steps_per_epoch = 2 and one block per epoch: stages begin at steps 2 and 4.
STAGED_CASES = {
    "ft": ({}, starts_of(head=0, fc1=0, body=0, stem=0)),
    "lp": ({}, starts_of(head=0, fc1=None, body=None, stem=None)),
    # G-LF epoch 0: the whole last block (fc1 + head); then body; then stem.
    "g_lf": ({}, starts_of(head=0, fc1=0, body=2, stem=4)),
    # G-FL epoch 0: the first block + the head; then body; then the rest of top.
    "g_fl": ({}, starts_of(head=0, fc1=4, body=2, stem=0)),
    "lp_ft": ({"lp_epochs": 2}, starts_of(head=0, fc1=4, body=4, stem=4)),
    "surgical": ({"surgical_block": "body"}, starts_of(head=0, fc1=None, body=0, stem=None)),
}


@pytest.mark.parametrize("name", list(STAGED_CASES))
def test_staged_updates_match_hand_computed_adam(name):
    kwargs, starts = STAGED_CASES[name]
    tx, _ = make(name, toy_params(), TOY, learning_rate=LR, steps_per_epoch=2, **kwargs)
    ups, _ = run(tx, 8)
    check_against_reference(ups, starts)


@pytest.mark.slow  # a bf16 compile per strategy
@pytest.mark.parametrize("name", ["g_lf", "g_fl", "lp_ft"])
def test_staged_takes_gradients_of_another_dtype_than_the_params(name):
    """bfloat16 params, float32 gradients (accumulated so): what Adam alone accepts.

    A closed stage gate must answer in the open one's types, or ``lax.cond`` refuses.
    """
    kwargs, starts = STAGED_CASES[name]
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), toy_params())
    tx, _ = make(name, bf16, TOY, learning_rate=LR, steps_per_epoch=2, **kwargs)
    ups, _ = run(tx, 6, params=bf16)
    # Each group from its start on is optax.adam alone on the same params and gradients
    # (optax keeps Adam's moments in the params' dtype: bfloat16 rounding, as FT has it).
    for start in sorted({v for v in starts.values() if v is not None}):
        adam, _ = run(
            optax.adam(LR), 6 - start, params=bf16, grads=lambda t, s=start: grads_at(t + s)
        )
        for path, first in starts.items():
            for t, u in enumerate(ups):
                if first is None or t < first:
                    assert np.all(u[path] == 0), (path, t)
                elif first == start:
                    want = adam[t - start][path]
                    np.testing.assert_allclose(u[path], want, rtol=1e-6, err_msg=f"{path} {t}")


def test_bitfit_trains_biases_norm_affine_and_head():
    tx, schedule = make("bitfit", toy_params(), TOY, learning_rate=LR)
    trains = {"stem/bn/bias", "stem/bn/scale", "body/dense/bias", *HEAD_PATHS}
    ups, _ = run(tx, 3)
    check_against_reference(ups, {p: 0 if p in trains else None for p in PATHS})
    assert set(schedule.trainable_paths(0)) == trains


def test_newly_unfrozen_block_first_updates_by_hand():
    """A block unfrozen at step 2 starts from zero moments with its own count 1."""
    params = {"a": {"w": jnp.zeros(1)}, "h": {"kernel": jnp.zeros(1)}}
    part = BlockPartition("two", (Block("a", ("a",)), Block("h", ("h",))), head="h")
    tx, _ = make("lp_ft", params, part, learning_rate=0.1, steps_per_epoch=1, lp_epochs=2)
    ga = (1.0, 2.0, 3.0, -1.0)
    grads = lambda t: {"a": {"w": jnp.array([ga[t]])}, "h": {"kernel": jnp.array([1.0])}}  # noqa: E731
    state, update, got = tx.init(params), jax.jit(tx.update), []
    for t in range(4):
        u, state = update(grads(t), state, params)
        got.append(float(u["a"]["w"][0]))
    assert got[0] == 0.0 and got[1] == 0.0
    # Count 1: m_hat = g, v_hat = g^2, so the update is -lr * g / (|g| + eps).
    assert got[2] == pytest.approx(-0.1 * 3.0 / (3.0 + 1e-8), rel=2e-5)
    # Count 2 with g = 3 then -1.
    m_hat = (0.9 * 0.1 * 3.0 + 0.1 * -1.0) / (1 - 0.9**2)  # 0.17 / 0.19
    v_hat = (0.999 * 0.001 * 9.0 + 0.001 * 1.0) / (1 - 0.999**2)  # 0.009991 / 0.001999
    assert got[3] == pytest.approx(-0.1 * m_hat / (math.sqrt(v_hat) + 1e-8), rel=3e-5)
    assert got[3] == pytest.approx(-0.0400219, rel=3e-5)
    # With one count shared over the tree (count 3 at the first update) it would differ:
    shared = -0.1 * (0.1 * 3.0 / (1 - 0.9**3)) / math.sqrt(0.001 * 9.0 / (1 - 0.999**3))
    assert abs(got[2] - shared) > 0.03


def test_frozen_moments_stay_zero_until_unfrozen():
    tx, _ = make("g_lf", toy_params(), TOY, learning_rate=LR, steps_per_epoch=2)
    _, states = run(tx, 6)
    for t, state in enumerate(states):  # state after update t; stem unfreezes at step 4
        adam = group_adam(state, "stem")
        mu = jax.tree.leaves(adam.mu)
        if t < 4:
            assert int(adam.count) == 0
            assert all(np.all(np.asarray(m) == 0) for m in mu)
        else:
            assert int(adam.count) == t - 3
            assert all(np.any(np.asarray(m) != 0) for m in mu)
        # The head's Adam counts every step; body's from step 2.
        assert int(group_adam(state, HEAD).count) == t + 1
        assert int(group_adam(state, "body").count) == max(0, t - 1)


def test_ft_is_plain_adam_bit_for_bit():
    tx, _ = make("ft", toy_params(), TOY, learning_rate=LR)
    ref, _ = run(optax.adam(LR), 6)
    got, _ = run(tx, 6)
    for r, g in zip(ref, got, strict=True):
        for k in r:
            np.testing.assert_array_equal(r[k], g[k])


def test_staged_with_every_group_from_step_0_is_adam():
    labels = map_paths(lambda path: HEAD if path.startswith("top/head") else TOY.block_of(path))
    tx = staged(optax.adam(LR), labels, {HEAD: 0, **dict.fromkeys(TOY.names, 0)})
    ref, _ = run(optax.adam(LR), 4)
    got, _ = run(tx, 4)
    for r, g in zip(ref, got, strict=True):
        for k in r:  # equal up to float32 rounding (XLA fuses the two programs differently)
            np.testing.assert_allclose(r[k], g[k], rtol=1e-6)


def state_elements(state) -> int:
    """Scalars held in arrays of rank >= 1 (moments); step counts are rank 0."""
    return sum(x.size for x in jax.tree.leaves(state) if x.ndim > 0)


def test_lp_state_is_head_sized():
    params = toy_params()
    tx, _ = make("lp", params, TOY, learning_rate=LR)
    assert state_elements(tx.init(params)) == 2 * 4  # mu and nu of head kernel (2) + bias (2)
    tx, _ = make("g_lf", params, TOY, learning_rate=LR, steps_per_epoch=2)
    total = sum(x.size for x in jax.tree.leaves(params))
    assert state_elements(tx.init(params)) == 2 * total  # every block will train


# --- building blocks ---------------------------------------------------------


def test_train_only_with_a_name_pattern_holds_state_only_for_trainable():
    tx = train_only(optax.adam(LR), match_paths(["top/*", "*/bias"]))
    params = toy_params()
    trains = {p for p in PATHS if p.startswith("top/") or p.endswith("/bias")}
    assert state_elements(tx.init(params)) == 2 * sum(flatten(params)[p].size for p in trains)
    ups, _ = run(tx, 3)
    check_against_reference(ups, {p: 0 if p in trains else None for p in PATHS})


def test_block_mask_and_unknown_block():
    mask = flatten(block_mask(TOY, ["body"])(toy_params()))
    assert {p for p, m in mask.items() if m} == {"body/dense/bias", "body/dense/kernel"}
    with pytest.raises(KeyError, match="stem"):
        block_mask(TOY, ["nope"])


def test_unfreeze_at_gate_alone():
    tx = unfreeze_at(optax.adam(LR), 3)
    ups, _ = run(tx, 6)
    check_against_reference(ups, dict.fromkeys(PATHS, 3))


def test_staged_building_block_with_explicit_labels():
    labels = jax.tree.map(lambda _: "late", toy_params())
    labels["top"]["head"] = {"kernel": "early", "bias": "never"}
    tx = staged(optax.adam(LR), labels, {"early": 0, "late": 5, "never": None})
    ups, _ = run(tx, 7)
    starts = dict.fromkeys(PATHS, 5) | {"top/head/kernel": 0, "top/head/bias": None}
    check_against_reference(ups, starts)


def test_llrd_scales_adam_per_block():
    tx, _ = make("llrd", toy_params(), TOY, learning_rate=LR, lr_decay=0.5)
    ref, _ = run(optax.adam(LR), 3)
    got, _ = run(tx, 3)
    factor = {"stem": 0.25, "body": 0.5, "top": 1.0}
    for r, g in zip(ref, got, strict=True):
        for k in r:
            np.testing.assert_allclose(g[k], r[k] * factor[k.split("/")[0]], rtol=1e-7)


def test_scale_by_label_needs_every_factor_at_init_and_none_negative():
    """A missing factor was found at the first update (inside jit, the state built); a
    negative one turned the chained optimizer's descent into ascent without a word."""
    tx = scale_by_label(jax.tree.map(lambda _: "x", toy_params()), {"y": 1.0})
    with pytest.raises(ValueError, match=r"^scale_by_label: no factor for labels \['x'\]$"):
        tx.init(toy_params())
    labels = jax.tree.map(lambda _: "x", toy_params())
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match=r"^scale_by_label: factor .* of label 'x' must be"):
            scale_by_label(labels, {"x": bad})
    frozen = scale_by_label(labels, {"x": 0.0})  # a zero factor freezes: allowed
    u, _ = frozen.update(toy_params(), frozen.init(toy_params()))
    assert all(not np.any(leaf) for leaf in jax.tree.leaves(u))


# --- L1-SP and L2-SP ---------------------------------------------------------


def head_mask(tree):
    return jax.tree_util.tree_map_with_path(
        lambda p, _: p[0].key == "top" and p[1].key == "head", tree
    )


def loss(params):
    """A loss with a gradient that depends on the params: sum(c * w + w^2 / 2)."""
    c = base_grads()
    return sum(
        jnp.sum(ci * w + 0.5 * w * w)
        for ci, w in zip(jax.tree.leaves(c), jax.tree.leaves(params), strict=True)
    )


def sub_abs(x):
    """|x| whose gradient is sign(x), i.e. 0 at 0 (jax.grad(jnp.abs)(0.) is 1)."""
    return x * jax.lax.stop_gradient(jnp.sign(x))


def sp_loss(params, w0, norm, alpha, beta, kernels_only=False):
    f = (lambda x: 0.5 * x * x) if norm == "l2" else sub_abs
    total = loss(params)
    for path, w in flatten(params).items():
        if path in HEAD_PATHS:
            total += beta * jnp.sum(f(w))
        elif not kernels_only or path.endswith("kernel"):
            total += alpha * jnp.sum(f(w - flatten(w0)[path]))
    return total


def pretrained_w0():
    """ω0: the params except two leaves, so w − ω0 starts nonzero there and 0 elsewhere."""
    w0 = toy_params()
    w0["stem"]["conv"]["kernel"] = w0["stem"]["conv"]["kernel"] + 0.5
    w0["body"]["dense"]["bias"] = jnp.array([0.3, -0.1, 0.0])
    return w0


@pytest.mark.parametrize(
    ("norm", "kernels_only"),
    [
        ("l2", False),
        ("l1", True),
        # Each norm and each scope is in the fast tier once; the other pairs are slow.
        pytest.param("l2", True, marks=pytest.mark.slow),
        pytest.param("l1", False, marks=pytest.mark.slow),
    ],
)
def test_sp_equals_adam_on_penalised_loss(norm, kernels_only):
    alpha, beta, w0 = 0.5, 0.3, pretrained_w0()
    start = toy_params()
    start["top"]["head"]["bias"] = jnp.array([0.0, -0.2])  # sign(0) = 0 on the head too
    tx, _ = make(
        f"{norm}_sp",
        start,
        TOY,
        learning_rate=LR,
        pretrained=w0,
        alpha=alpha,
        beta=beta,
        kernels_only=kernels_only,
    )
    ref_tx = optax.adam(LR)
    p, q = start, start
    s, rs = tx.init(p), ref_tx.init(q)
    step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p))
    ref_grad = jax.jit(jax.grad(lambda q: sp_loss(q, w0, norm, alpha, beta, kernels_only)))
    for _ in range(5):
        u, s = step(p, s)
        ru, rs = ref_tx.update(ref_grad(q), rs, q)
        p, q = optax.apply_updates(p, u), optax.apply_updates(q, ru)
        for k, v in flatten(q).items():
            np.testing.assert_allclose(flatten(p)[k], v, rtol=1e-6, atol=1e-7, err_msg=k)


def test_sp_penalty_gradient_by_hand():
    """Zero loss gradient: the transform returns exactly the penalty's gradient."""
    params, w0 = toy_params(), pretrained_w0()
    params["top"]["head"]["bias"] = jnp.array([0.0, -0.2])
    zeros = jax.tree.map(jnp.zeros_like, params)
    for make_tx, pull in ((l2_sp, lambda d: d), (l1_sp, np.sign)):
        tx = make_tx(head_mask, pretrained=w0)  # defaults alpha = beta = 0.01
        u = flatten(jax.jit(tx.update)(zeros, tx.init(params), params)[0])
        np.testing.assert_allclose(
            u["stem/conv/kernel"], 0.01 * pull(np.full((2, 2), -0.5)), rtol=1e-6
        )
        np.testing.assert_allclose(
            u["body/dense/bias"], 0.01 * pull(np.array([-0.3, 0.1, 0.0])), rtol=1e-6
        )
        np.testing.assert_array_equal(u["stem/bn/scale"], 0.0)  # w = ω0: no pull (L1: sign(0)=0)
        np.testing.assert_allclose(
            u["top/head/bias"], 0.01 * pull(np.array([0.0, -0.2])), rtol=1e-6
        )
        np.testing.assert_allclose(u["top/fc1/kernel"], 0.0)  # pretrained, on its ω0


def _three_steps(tx, params, grads):
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return flatten(params)


def test_l2_sp_half_convention():
    """sp_half=False is the paper's eq. 3 (no ½): Li et al.'s penalty at twice α and β."""
    params, w0 = toy_params(), pretrained_w0()
    grads = jax.tree.map(lambda x: 0.1 * jnp.ones_like(x), params)

    def run(**kw):
        tx, _ = make("l2_sp", params, TOY, learning_rate=1.0, pretrained=w0, **kw)
        return _three_steps(tx, params, grads)

    paper = run(sp_half=False)
    doubled = run(alpha=0.02, beta=0.02)
    default = run()
    for path in paper:
        np.testing.assert_allclose(paper[path], doubled[path], rtol=1e-6)
    assert not np.allclose(paper["stem/conv/kernel"], default["stem/conv/kernel"])


def test_sp_default_anchor_is_the_init_params():
    params = toy_params()
    tx = l2_sp(head_mask, alpha=1.0)
    state = tx.init(params)
    moved = jax.tree.map(lambda w: w + 1.0, params)
    u = flatten(tx.update(jax.tree.map(jnp.zeros_like, params), state, moved)[0])
    np.testing.assert_allclose(u["stem/conv/kernel"], np.ones((2, 2)))


def test_sp_needs_params():
    tx = l2_sp(head_mask)
    with pytest.raises(ValueError, match="params"):
        tx.update(toy_params(), tx.init(toy_params()))


# --- Auto-RGN ----------------------------------------------------------------


def rgn_params():
    return {
        "a": {"kernel": jnp.array([3.0, 4.0])},  # ‖w‖ = 5
        "b": {"kernel": jnp.array([1.0, 0.0])},  # ‖w‖ = 1
        "c": {"bias": jnp.zeros(2)},  # ‖w‖ = 0: a fresh bias
    }


def rgn_grads(t, c=(0.0, 0.0)):
    """RGN of a = 0.2 (t + 1), of b = 0.5; c's is undefined (‖w‖ = 0)."""
    return {
        "a": {"kernel": (t + 1) * jnp.array([0.6, 0.8])},
        "b": {"kernel": jnp.array([0.5, 0.0])},
        "c": {"bias": jnp.array(c)},
    }


def rgn_run(tx, steps, c=(0.0, 0.0)):
    params, out = rgn_params(), []
    state, update = tx.init(params), jax.jit(tx.update)
    for t in range(steps):
        u, state = update(rgn_grads(t, c), state, params)
        out.append((flatten(u), {k: float(v) for k, v in flatten(state.applied).items()}))
    return out


def test_rgn_per_epoch_estimate_by_hand():
    # 7 steps per epoch, 5 estimation steps. Epoch 0: each of the first 5 steps
    # applies its own normalised RGN; steps 5-6 apply mean(RGN over steps 0-4)/max
    # = (a 0.6, b 0.5)/0.6. Epoch 1: steps 7-11 keep that; steps 12-13 apply the
    # epoch-1 estimate: a = 0.2 * mean(8..12) = 2.0, b = 0.5 -> b = 0.25.
    b_expected = [0.5 / max(0.2 * (t + 1), 0.5) for t in range(5)]
    b_expected += [0.5 / 0.6] * 7 + [0.25] * 3
    tx = scale_by_rgn(optax.identity(), steps_per_epoch=7)
    for t, (u, m) in enumerate(rgn_run(tx, 15)):
        a_expected = min(0.2 * (t + 1), 0.5) / 0.5 if t < 5 else 1.0
        assert m["a/kernel"] == pytest.approx(a_expected, rel=1e-6), t
        assert m["b/kernel"] == pytest.approx(b_expected[t], rel=1e-6), t
        assert m["c/bias"] == 1.0  # ‖w‖ = 0: RGN undefined, multiplier 1
        g = flatten(rgn_grads(t))
        for k in g:  # identity inner: the update is the gradient times the multiplier
            np.testing.assert_allclose(u[k], np.asarray(g[k]) * m[k], rtol=1e-6)


def test_rgn_prepass_by_hand():
    """The reference order: a prepass on the current weights, then the epoch holds it.

    Epoch 0's prepass sees the gradients of steps 0-4 (a: 0.2, 0.4, ..., 1.0;
    mean 0.6; b: 0.5), so all 7 updates of epoch 0 apply a = 1, b = 0.5/0.6,
    including the first five (the stream applies each step's own RGN there).
    Epoch 1's prepass sees gradients 7-11: a = 0.2 * mean(8..12) = 2.0, so
    b = 0.25 from epoch 1's first update on (the stream: from its 6th).
    """
    params = rgn_params()
    tx = scale_by_rgn(optax.identity(), mode="prepass")
    state, update = tx.init(params), jax.jit(tx.update)
    # Before any prepass: NaN (never held, it trained as the inner optimizer unchanged:
    # plain Adam under Auto-RGN's name, without a word).
    u, _ = update(rgn_grads(0), state, params)
    assert all(np.isnan(x).all() for x in jax.tree.leaves(u))

    def prepass(state, steps):
        rgns = [rgn_vector(rgn_grads(t), params) for t in steps]
        return hold_multipliers(state, sum(rgns) / len(rgns))

    expected = {0: (1.0, 0.5 / 0.6), 1: (1.0, 0.25)}
    for epoch in (0, 1):
        state = prepass(state, range(7 * epoch, 7 * epoch + 5))
        for t in range(7 * epoch, 7 * epoch + 7):
            u, state = update(rgn_grads(t), state, params)
            m = {k: float(v) for k, v in flatten(state.applied).items()}
            a, b = expected[epoch]
            assert m["a/kernel"] == pytest.approx(a, rel=1e-6), t
            assert m["b/kernel"] == pytest.approx(b, rel=1e-6), t
            assert m["c/bias"] == 1.0  # ‖w‖ = 0: RGN undefined, multiplier 1
            g = flatten(rgn_grads(t))
            for k in g:
                np.testing.assert_allclose(flatten(u)[k], np.asarray(g[k]) * m[k], rtol=1e-6)


@pytest.mark.slow  # an nnx model's compiles
def test_rgn_prepass_holds_in_a_flax_nnx_optimizer():
    """nnx.Optimizer keeps its state in variables: hold_multipliers could not be applied
    (an immutable PrepassRGNState, or nnx.update failing), only a private helper could."""
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            ones = nnx.initializers.ones
            self.encoder = nnx.Linear(3, 4, rngs=rngs, bias_init=ones)
            self.fc = nnx.Linear(4, 2, rngs=rngs, bias_init=ones)

        def __call__(self, x):
            return self.fc(nnx.relu(self.encoder(x)))

    part = BlockPartition("net", (Block("encoder", ("encoder",)), Block("fc", ("fc",))), "fc")
    model = Net(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (8, 3))
    y = (x[:, 0] > 0).astype(jnp.int32)
    params = nnx.state(model, nnx.Param)
    tx, _ = make("auto_rgn", params, part, learning_rate=1e-2, rgn_mode="prepass")
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    grads = nnx.grad(lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean())(
        model
    )
    rgn = rgn_vector(grads, params)
    hold_multipliers(opt.opt_state, rgn)
    opt.update(model, grads)
    applied = jnp.stack(jax.tree.leaves(opt.opt_state.applied))
    np.testing.assert_allclose(applied, rgn / rgn.max(), rtol=1e-6)
    assert float(applied.max()) == 1.0 and float(applied.min()) < 0.5  # not all ones


def test_rgn_prepass_state_checks():
    params = rgn_params()
    with pytest.raises(ValueError, match="no Auto-RGN state"):
        hold_multipliers(optax.adam(LR).init(params), jnp.ones(3))
    state = scale_by_rgn(optax.adam(LR), mode="prepass").init(params)
    for wrong in (jnp.ones(2), jnp.ones((3, 1))):  # "3 RGNs for 3 tensors" said the second
        with pytest.raises(ValueError) as e:
            hold_multipliers(state, wrong)
        assert str(e.value) == (
            "hold_multipliers: mean_rgn must be a vector of shape (3,) (one RGN per tensor, as "
            f"rgn_vector gives), got shape {wrong.shape}"
        )
    np.testing.assert_allclose(hold_multipliers(state, [4.0, 1.0, 2.0]).held, [1.0, 0.25, 0.5])
    # No RGN (a non-finite gradient in the prepass) or a negative one: refused, not held as
    # 1 everywhere (plain Adam) or as an ascent; traced (jitted), every multiplier NaN.
    for bad, value in (([1.0, jnp.nan, 2.0], "nan"), ([1.0, -2.0, 2.0], "-2.0")):
        with pytest.raises(ValueError, match=rf"mean_rgn\[1\] is {value} \(1 such\)"):
            hold_multipliers(state, jnp.array(bad))
        held = jax.jit(hold_multipliers)(state, jnp.array(bad)).held
        assert np.isnan(np.asarray(held)).all()
    held = jax.jit(hold_multipliers)(state, jnp.array([2.0, jnp.inf, 1.0])).held
    np.testing.assert_allclose(held, [1.0, 1.0, 0.5])  # inf: a zero-norm tensor, still 1
    # Found inside a chain, as make() or user code may nest it.
    chained = optax.chain(optax.identity(), scale_by_rgn(optax.adam(LR), mode="prepass"))
    held = hold_multipliers(chained.init(params), jnp.array([2.0, 1.0, 0.0]))
    np.testing.assert_allclose(held[1].held, [1.0, 0.5, 0.0])
    # A stream-mode state estimates its own multipliers: holding others is refused.
    stream = scale_by_rgn(optax.adam(LR), 3).init(params)
    with pytest.raises(ValueError, match=r"this Auto-RGN state is mode='stream'"):
        hold_multipliers(stream, jnp.ones(3))
    with pytest.raises(ValueError, match="mode must be one of"):
        scale_by_rgn(optax.adam(LR), 3, mode="before")
    with pytest.raises(ValueError, match="per_step"):
        scale_by_rgn(optax.adam(LR), mode="prepass", per_step=True)


@pytest.mark.parametrize(
    ("name", "option", "value", "readers"),
    [
        ("ft", "alpha", 5.0, "l1_sp, l2_sp"),
        ("g_lf", "lp_epochs", 2, "lp_ft"),
        ("lp_ft", "epochs_per_stage", 2, "g_lf, g_fl"),
        ("l1_sp", "sp_half", False, "l2_sp"),
        ("lp", "surgical_block", "body", "surgical"),
        ("ft", "pretrained", "w0", "l1_sp, l2_sp"),
    ],
)
def test_an_option_no_part_of_the_strategy_reads_is_refused(name, option, value, readers):
    """``make('ft', alpha=5)`` trained plain FT without a word; the command line refused
    such options already. At its default value an option is harmless and accepted."""
    value = toy_params() if value == "w0" else value
    with pytest.raises(ValueError) as err:
        make(name, toy_params(), TOY, learning_rate=LR, steps_per_epoch=2, **{option: value})
    assert str(err.value) == (
        f"make({name!r}): {option} does not apply (only {readers} read it); leave it out"
    )
    default = {"alpha": 0.01, "lp_epochs": 5, "epochs_per_stage": 1, "sp_half": True}
    if option in default:
        make(
            name,
            toy_params(),
            TOY,
            learning_rate=LR,
            steps_per_epoch=2,
            **{option: default[option]},
        )


def test_rgn_of_complex_tensors_counts_their_imaginary_parts():
    """A cast to float32 dropped them: g = [1j, 1j] against w = [1, 0] gave RGN 0, not √2."""
    from medft_jax.strategies.rgn import relative_gradient_norms

    g = {"a": jnp.array([1j, 1j], jnp.complex64), "b": jnp.array([3.0, -4.0])}
    w = {"a": jnp.array([1.0, 0.0], jnp.complex64), "b": jnp.array([0.0, 1.0])}
    rgn = jax.jit(relative_gradient_norms)(g, w)
    np.testing.assert_allclose([rgn["a"], rgn["b"]], [np.sqrt(2.0), 5.0], rtol=1e-6)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("llrd", {"lr_decay": 0.7}),
        ("lp_ft", {"lp_epochs": 1, "steps_per_epoch": 2}),
        pytest.param("g_lf", {"steps_per_epoch": 2}, marks=pytest.mark.slow),
        pytest.param("auto_rgn", {"rgn_eps": 1e-6, "steps_per_epoch": 2}, marks=pytest.mark.slow),
    ],
)
def test_options_given_as_jax_scalars_build_what_numbers_build(name, options):
    """``lr_decay=jnp.float32(0.7)`` was refused as "must be in (0, 1], got Array(0.7)", and
    ``steps_per_epoch=jnp.int32(2)`` as not an integer."""
    as_jax = {
        k: (jnp.int32(v) if isinstance(v, int) else jnp.float32(v)) for k, v in options.items()
    }
    got = []
    for given in (options, as_jax):
        given = {"steps_per_epoch": 2, **given}
        tx, schedule = make(name, toy_params(), TOY, learning_rate=LR, **given)
        ups, _ = run(tx, 5)
        got.append((ups, schedule.start_steps))
    assert got[0][1] == got[1][1]
    for a, b in zip(got[0][0], got[1][0], strict=True):
        for path in PATHS:
            np.testing.assert_allclose(a[path], b[path], rtol=1e-6, err_msg=path)


def test_make_auto_rgn_prepass():
    # No steps_per_epoch needed; the schedule tells the loop what to evaluate.
    _, schedule = make("auto_rgn", toy_params(), TOY, learning_rate=LR, rgn_mode="prepass")
    assert schedule.prepass == Prepass(batches=5, eps=1e-8)
    kw = {"rgn_mode": "prepass", "rgn_estimate_steps": 5, "rgn_eps": 1e-6}
    _, schedule = make("auto_rgn", toy_params(), TOY, learning_rate=LR, steps_per_epoch=3, **kw)
    assert schedule.prepass == Prepass(batches=3, eps=1e-6)  # an epoch of 3 batches
    _, schedule = make("auto_rgn", toy_params(), TOY, learning_rate=LR, steps_per_epoch=3)
    assert schedule.prepass is None  # stream, the default
    with pytest.raises(ValueError) as err:  # FT reads no rgn_mode: it was ignored
        make("ft", toy_params(), TOY, learning_rate=LR, rgn_mode="prepass")
    assert str(err.value) == (
        "make('ft'): rgn_mode does not apply (only auto_rgn read it); leave it out"
    )
    with pytest.raises(ValueError, match="rgn_mode"):
        make("auto_rgn", toy_params(), TOY, learning_rate=LR, rgn_mode="both")
    with pytest.raises(ValueError, match="per_step"):
        make("auto_rgn", toy_params(), TOY, learning_rate=LR, rgn_mode="prepass", rgn_per_step=True)


def test_rgn_per_step_variant():
    tx = scale_by_rgn(optax.identity(), per_step=True)
    for t, (_, m) in enumerate(rgn_run(tx, 8)):
        top = max(0.2 * (t + 1), 0.5)
        assert m["a/kernel"] == pytest.approx(0.2 * (t + 1) / top, rel=1e-6)
        assert m["b/kernel"] == pytest.approx(0.5 / top, rel=1e-6)


def test_rgn_zero_bias_gives_no_nan():
    tx = scale_by_rgn(optax.adam(LR), steps_per_epoch=3)
    for c in ((0.0, 0.0), (0.3, 0.4)):
        for u, m in rgn_run(tx, 4, c):
            assert all(np.all(np.isfinite(v)) for v in u.values())
            assert all(math.isfinite(v) and 0 <= v <= 1 for v in m.values())
    # A zero bias with a gradient gets 1 and does not set the others' scale:
    # a = 0.2, b = 0.5 at step 0, so b = 1 and a = 0.4 (not ~1e-8 from 0.5 / eps).
    _, m = rgn_run(tx, 1, (0.3, 0.4))[0]
    assert m == pytest.approx({"a/kernel": 0.4, "b/kernel": 1.0, "c/bias": 1.0}, rel=1e-6)
    # No gradient at all: multipliers of 1, not 0/0.
    tx = scale_by_rgn(optax.identity(), per_step=True)
    zeros = jax.tree.map(jnp.zeros_like, rgn_params())
    _, state = tx.update(zeros, tx.init(rgn_params()), rgn_params())
    assert all(float(v) == 1.0 for v in jax.tree.leaves(state.applied))


def zero_bias_case():
    """A toy tree with a fresh zero bias: RGNs k 0.5, bn/scale 0.25, bias undefined."""
    params = {
        "k": {"kernel": jnp.array([[0.6, 0.8], [0.0, 0.0]])},  # ‖w‖ = 1
        "bn": {"scale": jnp.array([2.0, 0.0]), "bias": jnp.zeros(3)},  # ‖w‖ = 2 and 0
    }
    grads = {
        "k": {"kernel": jnp.array([[0.3, 0.0], [0.0, 0.4]])},  # ‖g‖ = 0.5
        "bn": {"scale": jnp.array([0.0, 0.5]), "bias": jnp.array([1.0, 2.0, 2.0])},  # 0.5, 3
    }
    # RGN / max over the non-zero-norm tensors (0.5): k 1, scale 0.5; the bias 1.
    expected = {"bn/bias": 1.0, "bn/scale": 0.5, "k/kernel": 1.0}
    return params, grads, expected


@pytest.mark.parametrize("kind", ["stream", "averaged", "per_step", "prepass"])
def test_rgn_zero_norm_tensor_does_not_freeze_the_others(kind):
    """A zero bias gets 1; the rest get RGN / max over the non-zero tensors, in every mode.

    With ‖w‖ floored at eps the bias's RGN would be 3e8 and the others' ~1e-9:
    the network frozen for the epoch (the whole of it under a prepass).
    """
    params, grads, expected = zero_bias_case()
    if kind == "prepass":
        tx = scale_by_rgn(optax.identity(), mode="prepass")
        state = hold_multipliers(tx.init(params), rgn_vector(grads, params))
    else:
        kw = {"per_step": True} if kind == "per_step" else {"steps_per_epoch": 3}
        tx = scale_by_rgn(optax.identity(), estimate_steps=2, **kw)
        state = tx.init(params)
    steps = 3 if kind == "averaged" else 1  # step 2 applies the mean of steps 0-1
    for _ in range(steps):
        u, state = jax.jit(tx.update)(grads, state, params)
    got = {k: float(v) for k, v in flatten(state.applied).items()}
    assert got == pytest.approx(expected, rel=1e-6)
    for k, g in flatten(grads).items():  # identity inner: gradient times multiplier
        np.testing.assert_allclose(flatten(u)[k], np.asarray(g) * expected[k], rtol=1e-6)


def test_rgn_init_warns_of_zero_tensors_that_would_set_the_maximum():
    """flax's zero head bias: after one update its RGN ‖g‖/‖tiny w‖ is the maximum."""
    params, _, _ = zero_bias_case()
    tx = scale_by_rgn(optax.adam(LR), steps_per_epoch=3)
    with pytest.warns(UserWarning, match=r"parameter 'bn/bias' is all zeros at init"):
        tx.init(params)
    params["k"]["bias"] = jnp.zeros(2)
    with pytest.warns(UserWarning, match=r"'bn/bias' and 1 more are all zeros at init"):
        tx.init(params)
    with warnings.catch_warnings():  # no zero tensor, an empty one, or traced params
        warnings.simplefilter("error")
        tx.init(rgn_params() | {"c": {"bias": jnp.ones(2)}, "e": {"bias": jnp.zeros(0)}})
        jax.jit(tx.init)(params)


def test_make_auto_rgn_warns_of_zero_tensors_once_though_init_is_jitted():
    """A jitted init (``TrainState.create`` under jit) sees traced params and warned of
    nothing: flax's zero head bias then set the maximum and all but froze the backbone."""
    params = toy_params()
    params["body"]["dense"]["bias"] = jnp.ones(3)
    params["top"]["head"]["bias"] = jnp.zeros_like(params["top"]["head"]["bias"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tx, _ = make("auto_rgn", params, TOY, learning_rate=LR, steps_per_epoch=2)
        tx.init(params)  # warned by make already: not again
        jax.jit(tx.init)(params)
    said = [str(w.message) for w in caught if "all zeros at init" in str(w.message)]
    assert len(said) == 1 and said[0].startswith("scale_by_rgn: parameter 'top/head/bias'")
    assert caught[0].filename == __file__  # pointing at the make call


def test_the_zero_tensor_check_of_host_params_compiles_and_uploads_nothing():
    """The check took each tensor's norm op by op on the device: a program per tensor shape
    (134 for DenseNet-121, each under the persistent cache's threshold, so paid again by
    every process) and every host parameter uploaded, before training began."""
    from medft_jax.strategies.rgn import warn_zero_tensors

    params = {f"layer{i}": {"kernel": np.ones((i + 1, 3), np.float32)} for i in range(6)}
    params["head"] = {"bias": np.zeros(2, np.float32)}
    said = pytest.warns(UserWarning, match=r"'head/bias' is all zeros at init")
    with jax.transfer_guard("disallow"), said:  # an upload raises
        warn_zero_tensors(params, 1e-12)


def test_rgn_every_tensor_zero_norm_gives_ones():
    params = {"a": jnp.zeros(2), "b": jnp.zeros(3)}
    grads = {"a": jnp.ones(2), "b": jnp.zeros(3)}  # b: 0 / 0 must not be NaN
    rgn = rgn_vector(grads, params)
    assert np.all(np.isposinf(np.asarray(rgn)))
    tx = scale_by_rgn(optax.identity(), per_step=True)
    _, state = tx.update(grads, tx.init(params), params)
    assert [float(v) for v in jax.tree.leaves(state.applied)] == [1.0, 1.0]


@pytest.mark.parametrize("per_step", [False, True])
def test_rgn_in_a_partition_group_with_no_tensors(per_step):
    """As optax.adam there: a label this model lacks, or an all-False mask, is a no-op."""
    params = {"enc": {"kernel": jnp.ones((2, 2))}, "fc": {"kernel": jnp.ones((2, 1))}}
    grads = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)
    rgn = scale_by_rgn(optax.adam(LR), steps_per_epoch=4, per_step=per_step)
    labels = map_paths(lambda path: "head" if path.startswith("fc") else "backbone")
    tx = optax.partition({"backbone": optax.adam(LR), "head": optax.adam(LR), "rgn": rgn}, labels)
    ref = optax.adam(LR)
    u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    ru, _ = ref.update(grads, ref.init(params), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u, ru)
    masked = optax.masked(rgn, jax.tree.map(lambda _: False, params))
    u, _ = masked.update(grads, masked.init(params), params)
    jax.tree.map(np.testing.assert_array_equal, u, grads)


def test_rgn_scales_the_adam_update_not_the_gradient():
    params = rgn_params()
    tx, ref = scale_by_rgn(optax.adam(LR), 3), optax.adam(LR)
    s, rs, update = tx.init(params), ref.init(params), jax.jit(tx.update)
    for t in range(5):
        u, s = update(rgn_grads(t), s, params)
        ru, rs = ref.update(rgn_grads(t), rs, params)
        for k, v in flatten(ru).items():
            m = float(flatten(s.applied)[k])
            np.testing.assert_allclose(flatten(u)[k], np.asarray(v) * m, rtol=1e-6)


def test_make_auto_rgn_on_toy():
    kw = {"steps_per_epoch": 4, "rgn_estimate_steps": 2}
    tx, schedule = make("auto_rgn", toy_params(), TOY, learning_rate=LR, **kw)
    got, states = run(tx, 6)
    ref, _ = run(scale_by_rgn(optax.adam(LR), 4, estimate_steps=2), 6)
    for r, g in zip(ref, got, strict=True):
        for k in r:
            np.testing.assert_array_equal(r[k], g[k])
    assert max(float(v) for v in jax.tree.leaves(states[0].applied)) == 1.0
    assert schedule.final_stage_epoch == 0 and schedule.frozen_blocks(0) == ()


# --- make() and the schedule ----------------------------------------------------


def test_unknown_id_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        make("sgd", toy_params(), TOY, learning_rate=LR)
    for name in PAPER_STRATEGIES + EXTRA_STRATEGIES:
        assert name in str(err.value)


@pytest.mark.parametrize("name", ["g_lf", "g_fl", "lp_ft", "auto_rgn"])
def test_staged_ids_need_steps_per_epoch(name):
    with pytest.raises(ValueError, match="steps_per_epoch"):
        make(name, toy_params(), TOY, learning_rate=LR)


def test_bad_arguments():
    with pytest.raises(ValueError, match="frozen_bn"):
        make("ft", toy_params(), TOY, learning_rate=LR, frozen_bn="train")
    # A block it does not know, or none, read "holds no parameter but the new head".
    for block in (None, "nope"):
        with pytest.raises(ValueError) as err:
            make("surgical", toy_params(), TOY, learning_rate=LR, surgical_block=block)
        assert str(err.value) == (
            f"make('surgical'): surgical_block must be one of {list(TOY.names)}, got {block!r}"
        )
    # A block that is the new head alone (ResNet's fc) trained LP's parameters, unsaid.
    headless = toy_params()
    del headless["top"]["fc1"]
    with pytest.raises(ValueError) as err:
        make("surgical", headless, TOY, learning_rate=LR, surgical_block="top")
    assert str(err.value) == (
        "make('surgical'): surgical_block 'top' holds no parameter but the new head, so this "
        "is LP under surgical's name; expected another block"
    )
    make("surgical", toy_params(), TOY, learning_rate=LR, surgical_block="top")  # fc1: fine
    # Accepted and ignored: an epsilon only Auto-RGN reads; an LP-FT that is FT.
    with pytest.raises(ValueError, match=r"^make\('ft'\): rgn_eps does not apply \(only auto"):
        make("ft", toy_params(), TOY, learning_rate=LR, rgn_eps=1e-3)
    with pytest.raises(ValueError, match=r"^make\('auto_rgn'\): rgn_per_step applies each"):
        make("auto_rgn", toy_params(), TOY, learning_rate=LR, rgn_per_step=True,
             rgn_estimate_steps=3)  # fmt: skip
    with pytest.raises(ValueError, match=r"^make\('lp_ft'\): lp_epochs must be "):
        make("lp_ft", toy_params(), TOY, learning_rate=LR, steps_per_epoch=2, lp_epochs=0)
    with pytest.raises(ValueError, match="epochs_per_stage"):
        make("g_lf", toy_params(), TOY, learning_rate=LR, steps_per_epoch=2, epochs_per_stage=0)


def test_schedule_g_lf_and_g_fl_on_toy():
    _, s = make("g_lf", toy_params(), TOY, learning_rate=LR, steps_per_epoch=10)
    assert [s.trainable_blocks(e) for e in range(4)] == [
        ("top",),
        ("body", "top"),
        ("stem", "body", "top"),
        ("stem", "body", "top"),
    ]
    assert s.frozen_blocks(0) == ("stem", "body") and s.frozen_prefix(0) == 2
    assert s.final_stage_epoch == 2 and s.stage_epochs == (0, 1, 2)
    assert s.start_step("stem") == 20 and s.bn_train(0) is True
    _, s = make("g_fl", toy_params(), TOY, learning_rate=LR, steps_per_epoch=10, epochs_per_stage=3)
    assert s.trainable_blocks(0) == ("stem", "top")  # top only through its head
    assert s.trainable_paths(0) == (
        "stem/bn/bias",
        "stem/bn/scale",
        "stem/conv/kernel",
        *HEAD_PATHS,
    )
    assert s.trainable_blocks(3) == ("stem", "body", "top") and s.final_stage_epoch == 6
    assert not s.is_trainable("top/fc1/kernel", 5) and s.is_trainable("top/fc1/kernel", 6)


def test_schedule_lp_and_bn_modes():
    params = toy_params()
    _, s = make("lp", params, TOY, learning_rate=LR, frozen_bn="freeze")
    for e in (0, 7):
        assert s.trainable_paths(e) == HEAD_PATHS
        assert s.trainable_blocks(e) == ("top",) and s.frozen_prefix(e) == 2
        assert s.bn_train(e) == frozenset()  # only the (Linear) head trains
    assert s.final_stage_epoch == 0 and s.num_trainable(params, 0) == 4
    mask = flatten(s.trainable_mask(params, 0))
    assert {p for p, m in mask.items() if m} == set(HEAD_PATHS)
    _, s = make("lp_ft", params, TOY, learning_rate=LR, steps_per_epoch=3, frozen_bn="freeze")
    assert s.final_stage_epoch == 5 and s.start_step("body") == 15
    assert s.bn_train(4) == frozenset() and s.bn_train(5) == frozenset({"stem", "body", "top"})


def test_trainable_mask_takes_a_traced_epoch_for_clipping_inside_jit():
    """The README's clipping recipe inside a jitted step, the epoch its argument: the mask
    raised TracerBoolConversionError. Zeroed by jnp.where, a frozen block's NaN gradient
    stays out of the global norm (a product with the mask kept it: NaN * 0 is NaN)."""
    params = toy_params()
    _, schedule = make("g_lf", params, TOY, learning_rate=LR, steps_per_epoch=2)

    @jax.jit
    def clipped(grads, epoch):
        mask = schedule.trainable_mask(params, epoch)
        grads = jax.tree.map(lambda g, m: jnp.where(m, g, 0.0), grads, mask)
        return optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())[0], mask

    grads = jax.tree.map(jnp.ones_like, params)
    grads["stem"]["conv"]["kernel"] = jnp.full((2, 2), jnp.nan)  # frozen in epochs 0-1
    for epoch in range(4):
        u, mask = clipped(grads, epoch)
        want = flatten(schedule.trainable_mask(params, epoch))
        assert {p: bool(np.all(m)) for p, m in flatten(mask).items()} == want
        finite = all(np.isfinite(x).all() for x in jax.tree.leaves(u))
        assert finite == (epoch < schedule.start_epoch("stem")), epoch
        if epoch == 0:  # the last block trains: fc1's 2 and the head's 4 ones, norm √6
            np.testing.assert_allclose(flatten(u)["top/head/bias"], [6**-0.5] * 2, rtol=1e-6)


# --- argument checks -----------------------------------------------------------


def test_partition_head_that_matches_no_parameter_is_refused():
    """'top.head' for 'top/head': LP would train nothing and SP take the head as pretrained."""
    import dataclasses

    typo = dataclasses.replace(TOY, head="top.head")
    for name in ("lp", "l2_sp"):
        with pytest.raises(ValueError, match=r"partition\.head 'top\.head'") as err:
            make(name, toy_params(), typo, learning_rate=LR)
        assert "['body', 'stem', 'top']" in str(err.value)


def test_partition_head_naming_one_leaf_of_its_layer_is_refused():
    """'top/head/kernel' would leave 'top/head/bias' frozen under LP and anchored under SP."""
    import dataclasses

    one_leaf = dataclasses.replace(TOY, head="top/head/kernel")
    for name in ("lp", "l2_sp", "ft"):
        with pytest.raises(ValueError, match=r"leaving 'top/head/bias' of the same layer") as e:
            make(name, toy_params(), one_leaf, learning_rate=LR)
        assert "name the head's layer ('top/head')" in str(e.value)
    # A flat dict of a converted state_dict: the head can only be one leaf; told to nest.
    flat = {k.replace("/", "."): v for k, v in flatten(toy_params()).items()}
    dotted = dataclasses.replace(
        TOY,
        blocks=tuple(dataclasses.replace(b, prefixes=tuple(
            k for k in flat if any(k.startswith(p.replace("/", ".")) for p in b.prefixes)
        )) for b in TOY.blocks),
        head="top.head.kernel",
    )  # fmt: skip
    for name in ("lp", "l2_sp"):
        with pytest.raises(ValueError) as e:
            make(name, flat, dotted, learning_rate=LR)
        assert str(e.value).endswith(
            "names one parameter, leaving 'top.head.bias' of the same layer outside the head; "
            "nest the flat keys (flax.traverse_util.unflatten_dict(params, sep='.')) and name "
            "the head's layer ('top.head')"
        ), e.value
    # A head that is the layer's only leaf is a whole layer: accepted.
    params = toy_params()
    del params["top"]["head"]["bias"]
    _, s = make("lp", params, one_leaf, learning_rate=LR)
    assert s.trainable_paths(0) == ("top/head/kernel",)


@pytest.mark.parametrize(
    ("blocks", "head", "message"),
    [
        (  # G-FL would start the second "stem" at epoch 1 and G-LF merge the two
            (Block("stem", ("stem",)), Block("stem", ("body",)), Block("top", ("top",))),
            "top/head",
            r"partition \(toy\) names block 'stem' twice; block names must be distinct",
        ),
        (  # an epoch that unfreezes nothing, and patience counted from one epoch late
            (*TOY.blocks[:2], Block("ghost", ("ghost",)), TOY.blocks[2]),
            "top/head",
            r"partition block 'ghost' \(toy\) owns no parameter; it would be a stage that",
        ),
        (
            (Block("stem", ("stem",)), Block("top", ("top",)), Block("body", ("body",))),
            "top/head",
            r"partition\.head 'top/head' \(toy\) is not in the last block 'body'",
        ),
        (  # Schedule.build raised a KeyError from deep inside make
            (Block("stem", ("stem",)), Block("top", ("top",))),
            "top/head",
            r"parameter 'body/[^']+' is in no block of the partition \(toy\); expected exactly "
            r"one of \['stem', 'top'\]",
        ),
        (
            (Block("stem", ("stem", "body")), Block("body", ("body",)), Block("top", ("top",))),
            "top/head",
            r"parameter 'body/[^']+' is in blocks \['stem', 'body'\] of the partition",
        ),
    ],
    ids=["name-twice", "empty-block", "head-not-last", "uncovered", "overlapping"],
)
def test_a_partition_whose_blocks_are_not_stages_is_refused(blocks, head, message):
    """Each block is a stage of G-LF/G-FL: a user's own partition is checked before use."""
    partition = BlockPartition(arch="toy", blocks=blocks, head=head)
    for name in ("g_fl", "g_lf"):
        with pytest.raises(ValueError, match=rf"^make\('{name}'\): {message}"):
            make(name, toy_params(), partition, learning_rate=LR)


def test_make_without_unpacking_and_foreign_params_say_what_to_do():
    strategy = make("lp", toy_params(), TOY, learning_rate=LR)
    for call in (lambda: strategy.init(toy_params()), lambda: optax.chain(strategy).init({})):
        with pytest.raises(TypeError, match=r"write `tx, schedule = make\(...\)`"):
            call()
    extra = toy_params() | {"extra": {"kernel": jnp.ones(2)}}
    with pytest.raises(KeyError, match=r"'extra/kernel' is not one of the params make\(\)"):
        strategy.schedule.trainable_mask(extra, 0)


def test_a_switch_option_that_is_not_a_bool_is_refused_not_read_by_truthiness():
    """``sp_half="no"`` gave L2-SP with the ½, ``kernels_only="False"`` kernels only, and
    ``rgn_per_step=np.True_`` passed the check against rgn_estimate_steps, which it then
    ignored: an option read from YAML or argparse did the opposite of what it said."""
    params = toy_params()
    for name, option in (
        ("l2_sp", "sp_half"),
        ("l1_sp", "kernels_only"),
        ("auto_rgn", "rgn_per_step"),
    ):
        for value in ("no", "False", 0, None):
            with pytest.raises(ValueError) as e:
                make(name, params, TOY, learning_rate=LR, steps_per_epoch=2, **{option: value})
            assert str(e.value) == f"make({name!r}): {option} must be True or False, got {value!r}"
    with pytest.raises(ValueError, match=r"rgn_per_step applies each step's own RGN, and"):
        make(
            "auto_rgn", params, TOY, learning_rate=LR, steps_per_epoch=2,
            rgn_per_step=np.True_, rgn_estimate_steps=3,
        )  # fmt: skip
    grads = jax.tree.map(lambda w: 0.5 * w + 0.1, params)

    def update(**option):
        tx = make("l2_sp", params, TOY, learning_rate=LR, alpha=1.0, beta=1.0, **option).tx
        return flatten(tx.update(grads, tx.init(params), params)[0])

    numpy_false, false = update(sp_half=np.False_), update(sp_half=False)
    assert all(np.array_equal(numpy_false[k], false[k]) for k in false)  # the bool it holds


def test_partition_and_rgn_state_faults_name_their_cause():
    """A partition of no blocks failed with a bare IndexError; ``Block("encoder",
    ("encoder"))`` (the one-element tuple's comma left out) was "owns no parameter" (its
    prefixes read one character at a time); a prepass with rgn_per_step named
    scale_by_rgn's ``per_step``; Auto-RGN updated on another params structure than it was
    initialised on failed broadcasting two vectors; an injected steps_per_epoch was
    "must be an integer >= 1, got JitTracer"."""
    params = toy_params()
    with pytest.raises(ValueError, match=r"^make\('lp'\): partition \(toy\) has no blocks$"):
        make("lp", params, BlockPartition(arch="toy", blocks=(), head="top/head"), learning_rate=LR)
    with pytest.raises(TypeError) as e:
        Block("stem", ("stem"))
    assert str(e.value) == (
        "Block 'stem': prefixes must be a tuple of path prefixes, got the string 'stem' (a "
        "one-element tuple needs its comma: ('stem',))"
    )
    with pytest.raises(ValueError, match=r"^Block 'stem': no path prefixes; it would own"):
        Block("stem", ())
    with pytest.raises(ValueError, match=r"^make\('auto_rgn'\): rgn_per_step applies each"):
        make("auto_rgn", params, TOY, learning_rate=LR, rgn_mode="prepass", rgn_per_step=True)
    tx = make("auto_rgn", params, TOY, learning_rate=LR, steps_per_epoch=2).tx
    state = tx.init(params)
    more = params | {"extra": {"kernel": jnp.ones(2)}}
    n = len(jax.tree.leaves(params))
    with pytest.raises(ValueError, match=rf"params have {n + 1} tensors and the state was "):
        tx.update(more, state, more)
    inject = optax.inject_hyperparams(
        lambda steps_per_epoch: (
            make("g_lf", params, TOY, learning_rate=LR, steps_per_epoch=steps_per_epoch).tx
        )
    )(steps_per_epoch=2)
    with pytest.raises(ValueError, match=r"steps_per_epoch is a count .* in static_args"):
        jax.jit(inject.update)(params, inject.init(params), params)


def test_an_arch_name_where_a_partition_goes_is_a_type_error():
    with pytest.raises(TypeError, match=r"get_arch\('resnet50'\)\.partition"):
        make("ft", toy_params(), "resnet50", learning_rate=LR)


@pytest.mark.parametrize(
    ("name", "arg", "value"),
    [
        ("g_lf", "epochs_per_stage", 1.5),
        ("g_lf", "epochs_per_stage", True),
        ("g_lf", "steps_per_epoch", 2.5),
        ("lp_ft", "lp_epochs", 2.0),
        ("lp_ft", "lp_epochs", -1),
        ("ft", "steps_per_epoch", "2"),
    ],
)
def test_counts_must_be_integers(name, arg, value):
    """A fractional count made the optimizer (int(), truncated) and the schedule disagree."""
    kw = {"steps_per_epoch": 2, arg: value}
    with pytest.raises(ValueError, match=f"{arg} must be an integer"):
        make(name, toy_params(), TOY, learning_rate=LR, **kw)


def test_numpy_integer_counts_are_accepted():
    kw = {"steps_per_epoch": np.int64(2), "epochs_per_stage": np.int32(1)}
    _, s = make("g_lf", toy_params(), TOY, learning_rate=LR, **kw)
    assert s.start_step("stem") == 4


@pytest.mark.parametrize("lr", [-1e-3, 0.0, float("nan"), "1e-3", None])
def test_learning_rate_must_be_positive_number_or_schedule(lr):
    with pytest.raises(ValueError, match="learning_rate"):
        make("ft", toy_params(), TOY, learning_rate=lr)


def test_learning_rate_schedule_is_accepted():
    tx, _ = make("ft", toy_params(), TOY, learning_rate=optax.constant_schedule(LR))
    ref, _ = run(optax.adam(LR), 2)
    got, _ = run(tx, 2)
    for r, g in zip(ref, got, strict=True):
        for k in r:
            np.testing.assert_allclose(g[k], r[k], rtol=1e-6)


def test_staged_refuses_fractional_start_and_names_missing_labels():
    labels = jax.tree.map(lambda _: "enc", toy_params())
    labels["top"]["head"] = {"kernel": "head", "bias": "head"}
    with pytest.raises(ValueError, match=r"start_steps\['enc'\] must be an integer"):
        staged(optax.adam(LR), labels, {"enc": 2.5, "head": 0})
    # optax's int32 count saturates at 2**31 - 1: a later start would overflow inside jit.
    with pytest.raises(ValueError, match=r"start_steps\['enc'\] must be an integer in \[0, "):
        staged(optax.adam(LR), labels, {"enc": 2**31, "head": 0})
    with pytest.raises(ValueError, match=r"^unfreeze_at: step must be an integer in \[0, 2147"):
        unfreeze_at(optax.adam(LR), 2**31)
    last = unfreeze_at(optax.sgd(LR), 2**31 - 1)
    jax.jit(last.update)(toy_params(), last.init(toy_params()))  # compiles: the gate stays shut
    tx = staged(optax.adam(LR), labels, {"enc": 1})
    with pytest.raises(ValueError, match=r"no start step for labels \['head'\]"):
        tx.init(toy_params())


def test_staged_refuses_a_labelling_under_which_nothing_ever_trains():
    """A hand-made LP whose head label matches no parameter (its head is ``top/head``, not
    ``classifier``) made every update zero without a word; ``train_only`` refused it."""
    params = toy_params()
    labels = jax.tree.map(lambda _: "backbone", params)  # the "head" label matched nothing
    tx = staged(optax.adam(LR), labels, {"head": 0, "backbone": None})
    with pytest.raises(
        ValueError, match=r"^staged: the labels that ever train \(\['head'\]\) marks none"
    ):
        tx.init(params)
    # Every start None: said as such, not blamed on a params wrapper or a pattern.
    never = staged(optax.adam(LR), labels, {"backbone": None, "head": None})
    with pytest.raises(ValueError) as err:
        never.init(params)
    assert str(err.value) == (
        "staged: every start step is None (['backbone', 'head']), so nothing ever trains; "
        "give the head's label 0"
    )
    # Inside a partition group whose other leaves are masked, all-frozen is someone's choice.
    frozen = staged(optax.adam(LR), lambda p: jax.tree.map(lambda _: "f", p), {"f": None})
    groups = {
        k: jax.tree.map(lambda _, k=k: "b" if k == "top" else "a", v) for k, v in params.items()
    }
    outer = optax.partition({"a": frozen, "b": optax.adam(LR)}, groups)
    updates, _ = outer.update(jax.tree.map(jnp.ones_like, params), outer.init(params), params)
    assert all(not np.any(u) for k in ("body", "stem") for u in jax.tree.leaves(updates[k]))
    assert all(np.all(u != 0) for u in jax.tree.leaves(updates["top"]))


def test_make_names_its_own_arguments_in_errors():
    """Not scale_by_rgn's estimate_steps or layerwise_decay_factors' decay: make's names."""
    kw = {"steps_per_epoch": 2, "rgn_estimate_steps": 0}
    with pytest.raises(ValueError, match="rgn_estimate_steps must be an integer >= 1"):
        make("auto_rgn", toy_params(), TOY, learning_rate=LR, **kw)
    with pytest.raises(ValueError, match=r"lr_decay must be in \(0, 1\]"):
        make("llrd", toy_params(), TOY, learning_rate=LR, lr_decay=0.0)
    with pytest.raises(ValueError, match="rgn_eps"):
        make("auto_rgn", toy_params(), TOY, learning_rate=LR, rgn_per_step=True, rgn_eps=-1.0)


def test_sp_pretrained_of_another_shape_is_refused():
    """A (2,) bias anchored to a broadcastable (1, 2) ω0 gave a (1, 2) update silently."""
    w0 = toy_params()
    w0["stem"]["bn"]["bias"] = jnp.zeros((1, 2))
    tx, _ = make("l2_sp", toy_params(), TOY, learning_rate=LR, pretrained=w0)
    with pytest.raises(
        ValueError, match=r"'stem/bn/bias': params \(2,\) float32, pretrained \(1, 2\)"
    ):
        tx.init(toy_params())
    del w0["stem"]["bn"]["bias"]
    with pytest.raises(
        ValueError, match=r"'stem/bn/bias': params \(2,\) float32, pretrained missing"
    ):
        l2_sp(head_mask, pretrained=w0).init(toy_params())
    with pytest.raises(ValueError) as err:  # wrapped: not one path in common
        l2_sp(head_mask, pretrained={"params": toy_params()}).init(toy_params())
    assert str(err.value) == (
        "sp_penalty: pretrained shares no path with the params (params 'body/dense/bias', "
        "pretrained 'params/body/dense/bias'; one wrapped as {'params': ...}?)"
    )


def test_block_mask_takes_one_block_by_name():
    """A string was read letter by letter: KeyError "no block 'b'" for "body"."""
    one = flatten(block_mask(TOY, "body")(toy_params()))
    assert one == flatten(block_mask(TOY, ["body"])(toy_params()))
    assert sorted(p for p, on in one.items() if on) == ["body/dense/bias", "body/dense/kernel"]


def test_sp_pretrained_of_another_dtype_is_refused():
    """ω0 rounded to bfloat16 put every float32 parameter off its start: L1-SP pulled each
    by the full α from rounding alone at step 0, where the subgradient is 0."""
    w0 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), toy_params())
    with pytest.raises(ValueError) as err:
        l1_sp(head_mask, pretrained=w0).init(toy_params())
    assert str(err.value) == (
        "sp_penalty: pretrained differs from the params at 'body/dense/bias': params (3,) "
        "float32, pretrained (3,) bfloat16"
    )
    params = toy_params()
    params["stem"]["conv"]["kernel"] = jnp.array([[0.1, 0.2], [0.3, 0.4]], jnp.float32)
    tx = l1_sp(head_mask, alpha=1.0, beta=0.0, pretrained=params)  # same dtype: no pull
    zeros = jax.tree.map(jnp.zeros_like, params)
    u = flatten(tx.update(zeros, tx.init(params), params)[0])
    assert not any(np.asarray(x).any() for x in u.values())


def test_sp_takes_an_anchor_with_the_source_tasks_head_or_none():
    """ω0 from an ImageNet checkpoint holds a 1000-class head; the head is decayed with
    beta, never pulled to ω0, yet such an ω0 was refused for its head's shape."""
    params, w0 = toy_params(), pretrained_w0()
    imagenet = pretrained_w0()
    imagenet["top"]["head"] = {"kernel": jnp.ones(1000), "bias": jnp.ones(1000)}
    headless = pretrained_w0()
    del headless["top"]["head"]
    got = []
    for anchor in (w0, imagenet, headless):
        tx, _ = make("l2_sp", params, TOY, learning_rate=LR, pretrained=anchor, alpha=0.5)
        got.append(run(tx, 3)[0])
    for ups in got[1:]:
        for a, b in zip(got[0], ups, strict=True):
            for path in PATHS:
                np.testing.assert_array_equal(a[path], b[path], err_msg=path)
    wrong = pretrained_w0()
    wrong["body"]["dense"]["kernel"] = jnp.ones((2, 3))  # outside the head: still refused
    with pytest.raises(ValueError, match="pretrained differs from the params at 'body/dense/"):
        make("l2_sp", params, TOY, learning_rate=LR, pretrained=wrong)[0].init(params)


def test_kernels_only_sp_and_bitfit_refuse_params_without_flax_leaf_names():
    """Leaves named ``w``/``b`` (``self.param("w")``): kernels-only SP pulled nothing and
    BitFit trained the head alone (LP under its name), both without a word."""
    custom = {
        "stem": {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)},
        "body": {"w": jnp.ones(3)},
        "top": {"head": {"kernel": jnp.ones(2), "bias": jnp.zeros(2)}},
    }
    # Refused when made, naming the rule, not at init with a hint of other causes.
    for name in ("l2_sp", "l1_sp"):
        with pytest.raises(ValueError) as err:
            make(name, custom, TOY, learning_rate=LR, kernels_only=True)
        assert str(err.value) == (
            f"make({name!r}): kernels_only pulls the leaves named 'kernel' (the last path "
            "component; paths look like 'body/w'), and none lies outside the head, so no "
            "pretrained weight would be held to its start"
        )
    make("l2_sp", toy_params(), TOY, learning_rate=LR, kernels_only=True)[0].init(toy_params())
    with pytest.raises(ValueError) as err:
        make("bitfit", custom, TOY, learning_rate=LR)
    assert str(err.value) == (
        "make('bitfit'): no parameter outside the head is named 'bias' or 'scale' (the last "
        "path component; paths look like 'body/w'), so BitFit would train the head alone"
    )


def _nnx_state(tree):
    from flax import nnx

    return nnx.State(jax.tree.map(nnx.Param, tree))


def _half_boxed(tree):
    """linen's ``nn.with_partitioning`` boxes (``nn.Partitioned``), on the kernels only."""
    from flax import linen as nn

    return jax.tree_util.tree_map_with_path(
        lambda p, x: nn.Partitioned(x, names=(None,) * x.ndim) if "kernel" in str(p) else x,
        tree,
    )


@pytest.mark.parametrize(
    ("name", "wrap"),
    [
        ("bitfit", _nnx_state),
        ("l2_sp", _half_boxed),
        # The other pairs in the slow tier.
        pytest.param("l2_sp", _nnx_state, marks=pytest.mark.slow),
        pytest.param("g_lf", _nnx_state, marks=pytest.mark.slow),
        pytest.param("bitfit", _half_boxed, marks=pytest.mark.slow),
        pytest.param("g_lf", _half_boxed, marks=pytest.mark.slow),
    ],
)
def test_params_held_in_flax_variables_train_as_the_same_params_in_a_dict(name, wrap):
    """``nnx.state(model, nnx.Param)`` and linen's boxed params hold an array as a
    variable's ``value`` (``body/dense/kernel/value``): BitFit and kernels-only SP refused
    nnx params, naming the wrong cause, and gave boxed kernels beside plain ones no SP
    pull, silently. Their updates equal those of the same params in a plain dict."""
    from medft_jax.strategies import leaf_paths

    w0 = pretrained_w0()
    options = {"pretrained": w0, "kernels_only": True} if name == "l2_sp" else {}
    params = toy_params()
    held_params = wrap(params)
    assert flatten(leaf_paths(held_params)) == {p: p for p in PATHS}
    updates = []
    for tree, g, w in ((params, base_grads(), w0), (held_params, wrap(base_grads()), wrap(w0))):
        opts = {**options, "pretrained": w} if "pretrained" in options else options
        tx, _ = make(name, tree, TOY, learning_rate=LR, steps_per_epoch=1, **opts)
        u, _ = tx.update(g, tx.init(tree), tree)
        updates.append({p: np.asarray(x) for p, x in flatten(u).items()})
    plain, held = updates
    trained_by = {
        "bitfit": {"stem/bn/bias", "stem/bn/scale", "body/dense/bias", *HEAD_PATHS},
        "g_lf": set(HEAD_PATHS) | {"top/fc1/kernel"},  # the last block, the head's, first
    }
    frozen = {p for p, v in plain.items() if not v.any()}
    assert frozen == (set() if name == "l2_sp" else set(PATHS) - trained_by[name])
    for path in PATHS:
        np.testing.assert_array_equal(held[path], plain[path], err_msg=path)


@pytest.mark.parametrize("name", ["ft", "g_lf"])
def test_an_integer_parameter_is_refused_by_name(name):
    params = toy_params()
    params["body"]["dense"]["count"] = jnp.array(3, jnp.int32)
    with pytest.raises(TypeError, match=r"parameter 'body/dense/count' is int32; strategies"):
        make(name, params, TOY, learning_rate=LR, steps_per_epoch=2)


@pytest.mark.parametrize(
    "name",
    ["l2_sp", *(pytest.param(n, marks=pytest.mark.slow) for n in ("ft", "g_lf", "auto_rgn"))],
)
def test_bfloat16_parameters_train_in_bfloat16(name):
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), toy_params())
    tx, _ = make(name, params, TOY, learning_rate=LR, steps_per_epoch=2)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    u = flatten(updates)
    assert {x.dtype for x in u.values()} == {jnp.dtype(jnp.bfloat16)}
    assert all(np.isfinite(np.asarray(x, np.float32)).all() for x in u.values())
    if name != "auto_rgn":  # Adam's first step: -lr * sign(g) (the head is not SP-penalised)
        np.testing.assert_allclose(np.asarray(u["top/head/kernel"], np.float32), -LR, rtol=2e-2)


def test_sp_pretrained_as_a_frozendict_is_matched_by_path():
    from flax.core import freeze

    w0 = jax.tree.map(lambda x: x - 1.0, toy_params())
    tx = l2_sp(head_mask, alpha=1.0, pretrained=freeze(w0))
    state = tx.init(toy_params())
    assert isinstance(state.anchor, dict)
    u = flatten(tx.update(jax.tree.map(jnp.zeros_like, toy_params()), state, toy_params())[0])
    np.testing.assert_allclose(u["stem/bn/scale"], [1.0, 1.0])  # alpha * (w - w0)


def test_sp_head_mask_marking_nothing_is_refused():
    """A head mask that missed would pull the fresh head towards its random start."""
    tx, _ = make("l2_sp", toy_params(), TOY, learning_rate=LR)
    with pytest.raises(ValueError, match=r"head_mask marks none of the params.*'params/"):
        tx.init({"params": toy_params()})  # the Flax variables dict, not the params
    with pytest.raises(ValueError, match="head_mask marks none"):
        # A mask of no leaf (match_paths refuses the pattern itself: "top/head" has no '/*').
        l1_sp(map_paths(lambda path: path == "top/head")).init(toy_params())
    l1_sp(match_paths("top/head/*")).init(toy_params())


def test_sp_in_a_partition_group_without_the_head():
    """SP on the backbone group, plain SGD on the head: the group holds no head leaf
    (optax masks the head out), which is not the typo the head-mask check refuses."""
    params = toy_params()
    head = map_paths(TOY.is_head)
    labels = map_paths(lambda p: "head" if TOY.is_head(p) else "backbone")
    tx = optax.partition(
        {
            "backbone": optax.chain(l2_sp(head, alpha=0.5, beta=0.0), optax.sgd(1.0)),
            "head": optax.sgd(1.0),
        },
        labels,
    )
    state = tx.init(params)  # the anchor: these params
    moved = jax.tree.map(lambda w: w + 2.0, params)
    grads = jax.tree.map(jnp.zeros_like, params)
    u = flatten(tx.update(grads, state, moved)[0])
    for path, v in u.items():  # backbone: -(alpha * (w - w0)) = -1; head: no penalty
        np.testing.assert_allclose(v, np.zeros_like(v) if path in HEAD_PATHS else -1.0)
    # make()'s L2-SP as a group works the same way.
    sp, _ = make("l2_sp", params, TOY, learning_rate=LR)
    optax.partition({"backbone": sp, "head": optax.adam(LR)}, labels).init(params)
    # An explicit ω0, the whole pretrained tree (head included, which the group does not
    # see): refused as "params missing" the head; the group pulls towards it.
    sgd = {"head": optax.sgd(1.0)}
    for group in (
        lambda sp: optax.partition({"backbone": optax.chain(sp, optax.sgd(1.0)), **sgd}, labels),
        lambda sp: optax.masked(
            optax.chain(sp, optax.sgd(1.0)), map_paths(lambda p: not TOY.is_head(p))
        ),
    ):
        tx = group(l2_sp(head, alpha=0.5, beta=0.0, pretrained=moved))
        u = flatten(tx.update(grads, tx.init(params), params)[0])
        for path, v in u.items():  # backbone: -(alpha * (w - w0)) = +1
            np.testing.assert_allclose(v, np.zeros_like(v) if path in HEAD_PATHS else 1.0)


def test_a_trainable_mask_marking_nothing_is_refused():
    """A mask that missed would freeze the whole model: every update zero, and no error."""
    tx = train_only(optax.adam(LR), map_paths(lambda path: path == "top/head"))  # no leaf
    with pytest.raises(ValueError, match=r"train_only: trainable marks none.*'top/head/kernel'"):
        tx.init(toy_params())
    tx = train_only(optax.adam(LR), match_paths("top/head/*"))
    u = flatten(tx.update(jax.tree.map(jnp.ones_like, toy_params()), tx.init(toy_params()))[0])
    np.testing.assert_allclose(u["top/head/bias"], [-LR, -LR], rtol=1e-5)


def test_sp_and_rgn_range_checks_still_refuse_concrete_values():
    with pytest.raises(ValueError, match="alpha must be a number >= 0"):
        l2_sp(head_mask, alpha=-0.1)
    with pytest.raises(ValueError, match="beta must be a number >= 0"):
        l1_sp(head_mask, beta=np.float32(-1.0))
    for bad in ("0.1", None):  # would fail inside the jitted update, naming neither
        with pytest.raises(ValueError, match=r"sp_penalty: alpha must be a number >= 0, got"):
            l2_sp(head_mask, alpha=bad)
        with pytest.raises(ValueError, match=r"make\('l1_sp'\): beta must be a number >= 0"):
            make("l1_sp", toy_params(), TOY, learning_rate=LR, beta=bad)
    with pytest.raises(ValueError, match="steps_per_epoch must be an integer >= 1"):
        scale_by_rgn(optax.adam(LR), 0)
    with pytest.raises(ValueError, match="estimate_steps must be an integer >= 1"):
        scale_by_rgn(optax.adam(LR), 3, estimate_steps=0)


def test_make_refuses_adam_settings_that_ascend_or_give_nan():
    """A negative eps flipped every update's sign (ascent, as a negative LR would, which
    make refuses); b1 or b2 of 1 gave NaN from the first update, without a word."""
    params = toy_params()
    grads = jax.tree.map(lambda w: 0.5 * jnp.ones_like(w), params)
    for key, value, bound in (
        ("eps", -1.0, ">= 0"),
        ("b1", 1.0, "in [0, 1)"),
        ("b2", 1.0, "in [0, 1)"),
        ("b2", -0.5, "in [0, 1)"),
    ):
        with pytest.raises(ValueError) as e:
            make("g_lf", params, TOY, learning_rate=LR, steps_per_epoch=1, **{key: value})
        assert str(e.value) == f"make('g_lf'): {key} must be {bound}, got {value!r}"
    tx, schedule = make("g_lf", params, TOY, learning_rate=LR, steps_per_epoch=1, eps=0.0)
    u, _ = tx.update(grads, tx.init(params), params)
    head = flatten(u)["top/head/bias"]
    np.testing.assert_allclose(head, [-LR, -LR], rtol=1e-5)  # descent, eps 0 allowed
    for epoch in (1.5, -1, math.inf, math.nan):  # 1.5 read as epoch 1; inf: OverflowError
        with pytest.raises(ValueError, match=r"^epoch must be a whole number >= 0, got "):
            schedule.trainable_blocks(epoch)
    assert schedule.trainable_blocks(1.0) == schedule.trainable_blocks(1)


def test_make_names_its_own_options_for_a_stage_past_int32_and_a_bad_frozen_bn():
    """lp_epochs x steps_per_epoch past int32 was "staged: start_steps['a'] must be ...",
    arguments the caller never passed; a bad frozen_bn lacked make's prefix."""
    params = toy_params()
    with pytest.raises(ValueError) as e:
        make("lp_ft", params, TOY, learning_rate=LR, lp_epochs=3, steps_per_epoch=2**30)
    assert str(e.value) == (
        "make('lp_ft'): a stage starts at epoch 3, step 3,221,225,472 (steps_per_epoch "
        "1,073,741,824), past the int32 step count optax keeps (2,147,483,647); expected "
        "fewer steps per epoch or stage epochs"
    )
    make("lp_ft", params, TOY, learning_rate=LR, lp_epochs=1, steps_per_epoch=2**30)
    with pytest.raises(ValueError) as e:
        make("lp", params, TOY, learning_rate=LR, frozen_bn="frz")
    assert str(e.value) == ("make('lp'): frozen_bn must be one of ('update', 'freeze'), got 'frz'")


def test_sp_under_inject_hyperparams_and_jit():
    """As for optax.add_decayed_weights: injected alpha, beta are traced, not range-checked."""
    params = toy_params()
    inject = optax.inject_hyperparams(l2_sp, static_args=("head_mask",))
    tx = optax.chain(inject(head_mask=head_mask, alpha=0.5, beta=0.3), optax.identity())
    zeros = jax.tree.map(jnp.zeros_like, params)
    moved = jax.tree.map(lambda w: w + 1.0, params)
    u, _ = jax.jit(tx.update)(zeros, tx.init(params), moved)
    u = flatten(u)
    np.testing.assert_allclose(u["stem/conv/kernel"], np.full((2, 2), 0.5), rtol=1e-6)
    np.testing.assert_allclose(u["top/head/bias"], 0.3 * np.array([1.2, 0.8]), rtol=1e-6)


def test_tree_map_params_on_a_strategy_reading_paths_says_what_to_use():
    """It said "the params are empty" (optax's placeholder has no leaves): the README's
    way, jax.eval_shape(tx.init, params), is named instead; FT maps as optax's Adam does."""
    params = toy_params()
    for name, where in (("lp", "staged"), ("g_lf", "staged"), ("l2_sp", "sp_penalty")):
        tx, _ = make(name, params, TOY, learning_rate=LR, steps_per_epoch=2)
        with pytest.raises(ValueError) as e:
            optax.tree_map_params(tx, lambda p: p.shape, tx.init(params))
        assert str(e.value).startswith(
            f"{where}: optax.tree_map_params cannot map this strategy's state: its init reads "
            "the params' paths"
        ), name
        assert "jax.eval_shape(tx.init, params)" in str(e.value)
    tx, _ = make("ft", params, TOY, learning_rate=LR)
    shapes = optax.tree_map_params(tx, lambda p: str(p.shape), tx.init(params))
    assert flatten(shapes[0].mu) == {k: str(v.shape) for k, v in flatten(params).items()}


def test_rgn_under_inject_hyperparams_and_jit():
    inject = optax.inject_hyperparams(scale_by_rgn, static_args=("inner",))
    tx = inject(optax.identity(), steps_per_epoch=7, eps=1e-8)
    params, update = rgn_params(), jax.jit(tx.update)
    state = tx.init(params)
    for t in range(6):  # step 5 applies the mean of steps 0-4: a 0.6, b 0.5
        _, state = update(rgn_grads(t), state, params)
    m = {k: float(v) for k, v in flatten(state.inner_state.applied).items()}
    assert m == pytest.approx({"a/kernel": 1.0, "b/kernel": 0.5 / 0.6, "c/bias": 1.0}, rel=1e-6)


@pytest.mark.slow
def test_made_llrd_and_auto_rgn_take_injected_lr_decay_and_rgn_eps_under_jit():
    """lr_decay and rgn_eps, unlike alpha, beta and the rate, refused a traced value ("must
    be in (0, 1], got JitTracer"): an injected one now gives the fixed one's update."""
    params, grads = toy_params(), jax.tree.map(lambda w: 0.5 * w + 0.1, toy_params())

    def made(name: str, **option) -> optax.GradientTransformation:
        return make(name, params, TOY, learning_rate=LR, steps_per_epoch=2, **option).tx

    for name, option, value in (("llrd", "lr_decay", 0.6), ("auto_rgn", "rgn_eps", 1e-3)):
        inject = optax.inject_hyperparams(
            lambda v, name=name, option=option: made(name, **{option: v})
        )
        tx, fixed = inject(v=value), made(name, **{option: value})
        got, _ = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
        want, _ = fixed.update(grads, fixed.init(params), params)
        for k, w in flatten(want).items():
            np.testing.assert_allclose(flatten(got)[k], w, rtol=1e-5, err_msg=f"{name} {k}")


@pytest.mark.slow
def test_made_auto_rgn_takes_an_injected_learning_rate_under_jit():
    """Injecting only the rate (the common case) made ``make('auto_rgn')`` raise
    TracerArrayConversionError inside jit: its zero-tensor check ran jnp on the concrete
    params inside the trace and read the norms back with numpy."""
    params, grads = toy_params(), jax.tree.map(lambda w: 0.5 * w + 0.1, toy_params())
    for option in ({}, {"rgn_per_step": True}):

        def made(learning_rate, option=option):
            return make(
                "auto_rgn", params, TOY, learning_rate=learning_rate, steps_per_epoch=2, **option
            ).tx

        tx, fixed = optax.inject_hyperparams(made)(learning_rate=LR), made(LR)
        with pytest.warns(UserWarning, match="'body/dense/bias' is all zeros"):  # still checked
            got, _ = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
        want, _ = fixed.update(grads, fixed.init(params), params)
        for k, w in flatten(want).items():
            np.testing.assert_allclose(flatten(got)[k], w, rtol=1e-5, err_msg=f"{option} {k}")


def test_rgn_forwards_extra_args_to_inner():
    """optax.contrib.reduce_on_plateau needs ``value``: scale_by_rgn passes it on."""
    params = rgn_params()
    inner = optax.chain(optax.identity(), optax.contrib.reduce_on_plateau(patience=1, factor=0.5))
    tx = scale_by_rgn(inner, per_step=True)
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    state, update = tx.init(params), jax.jit(tx.update)
    for t in range(4):  # the loss never improves on the first: the scale halves
        u, state = update(rgn_grads(0), state, params, value=jnp.asarray(1.0 + t))
    plateau = state.inner_state[1]
    assert float(plateau.scale) < 1.0
    g = flatten(rgn_grads(0))
    np.testing.assert_allclose(
        flatten(u)["a/kernel"], np.asarray(g["a/kernel"]) * 0.4 * float(plateau.scale), rtol=1e-6
    )


def test_a_numpy_steps_per_epoch_gives_plain_int_start_steps():
    """``np.int64(2)`` (a count from numpy) showed as ``np.int64(4)`` in start_steps."""
    made = make("g_lf", toy_params(), TOY, learning_rate=LR, steps_per_epoch=np.int64(2))
    steps = made.schedule.start_steps
    assert {type(v) for v in steps.values() if v is not None} == {int}
    assert max(v for v in steps.values() if v is not None) >= 2


def test_params_wrapped_as_flax_variables_are_hinted():
    """tx.init({'params': params}) (linen's variables, not their params) raised a KeyError
    naming 0 blocks and no cause; SP's penalty names the cause for the same slip."""
    tx = make("g_lf", toy_params(), TOY, learning_rate=LR, steps_per_epoch=2).tx
    with pytest.raises(KeyError, match=r"params wrapped as \{'params': \.\.\.\}\? give "):
        tx.init({"params": toy_params()})
