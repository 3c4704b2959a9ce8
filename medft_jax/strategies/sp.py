"""L1-SP and L2-SP: the starting-point penalty's gradient, added before the optimizer.

Li et al. (2018) regularise fine-tuning towards the pretrained weights ω0:
loss + α/2‖w_s − ω0_s‖² + β/2‖w_head‖² (L2-SP) or
loss + α‖w_s − ω0_s‖₁ + β‖w_head‖₁ (L1-SP), where w_s are the pretrained
parameters and w_head the new, randomly initialised head. The penalty is
*coupled*: :func:`sp_penalty` adds its gradient to the loss gradient, so
``optax.chain(l2_sp(...), optax.adam(lr))`` is exactly Adam on the
penalised loss (not a decoupled, AdamW-style decay). ω0 lives in the
transform's state (so it is an argument of the jitted update rather than
a constant baked into the compiled program, and it is checkpointed with the
optimizer state).
"""

from __future__ import annotations

from collections.abc import Callable, Set
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from medft_jax.models.blocks import path_str
from medft_jax.strategies.checks import is_masked_group, require_coefficient, require_marks_some
from medft_jax.strategies.freeze import map_paths, resolve

PyTree = Any
Mask = PyTree | Callable[[PyTree], PyTree]


class SPState(NamedTuple):
    """The starting point ω0, shaped like the params."""

    anchor: PyTree


def kernel_mask(params: PyTree) -> PyTree:
    """True on weight matrices and conv filters (leaves named ``kernel``)."""
    return map_paths(lambda path: path.rsplit("/", 1)[-1] == "kernel")(params)


def sp_penalty(
    norm: Literal["l1", "l2"],
    alpha: float,
    beta: float,
    head_mask: Mask,
    *,
    source_mask: Mask | None = None,
    pretrained: PyTree | None = None,
) -> optax.GradientTransformation:
    """Adds the gradient of the L1-SP or L2-SP penalty to the updates.

    Args:
      norm: ``'l2'`` adds α·(w − ω0) on w_s and β·w on the head; ``'l1'``
        adds α·sign(w − ω0) and β·sign(w), with the subgradient 0 at 0 (so a
        parameter sitting exactly on its starting point feels no pull).
      alpha: weight of the pull towards ω0 on the pretrained parameters.
      beta: weight of the plain decay on the head.
      head_mask: True on the head's leaves (a pytree or a function of params);
        ``init`` refuses one that marks no leaf, except inside one group of
        ``optax.partition``/``optax.masked`` (the head may be another group's).
      source_mask: True on the non-head leaves that count as w_s; default
        all of them (kernels, biases, BatchNorm affine, as the
        Transfer-Learning-Library does). Pass :func:`kernel_mask` for the
        original TF code's kernels-only penalty. Head leaves are never w_s.
      pretrained: ω0; by default the params given to ``init`` (the
        pretrained weights with the fresh head). ``init`` checks that it has
        the params' tree structure and shapes: one that merely broadcasts
        against them would silently change the shape of the updates. Its
        head leaves are never read: they may be the source task's (1000
        ImageNet classes) or missing.

    The update needs ``params``: ``tx.update(grads, state, params)``.
    ``alpha`` and ``beta`` are range-checked only as Python/numpy numbers,
    so ``optax.inject_hyperparams(l2_sp, static_args=("head_mask",))`` works
    under ``jit`` (their injected values are traced arrays).
    """
    if norm not in ("l1", "l2"):
        raise ValueError(f"sp_penalty: norm must be 'l1' or 'l2', got {norm!r}")
    require_coefficient("sp_penalty", "alpha", alpha)
    require_coefficient("sp_penalty", "beta", beta)
    pull = (lambda x: x) if norm == "l2" else jnp.sign

    def init_fn(params: PyTree) -> SPState:
        # Silently, the fresh head would count as pretrained: pulled towards its
        # random start with alpha instead of decayed with beta.
        head = resolve(head_mask, params)
        if not is_masked_group(params):  # a partition group may hold no head leaf at all
            require_marks_some("sp_penalty", "head_mask", head, params)
        if source_mask is not None:  # kernels only, by Flax's leaf name: custom names miss
            source = jax.tree.map(
                lambda s, h: bool(s) and not h, resolve(source_mask, params), head
            )
            require_marks_some("sp_penalty", "source_mask (outside the head)", source, params)
        if pretrained is None:
            start = params
        else:
            # The head's ω0 is never read (the head is decayed with beta, not pulled): a
            # pretrained tree with the source task's head (1000 ImageNet classes), or none.
            heads = {
                path_str(p)
                for p, h in jax.tree_util.tree_leaves_with_path(head)
                if isinstance(h, (bool, np.bool_)) and h
            }
            _check_like(pretrained, params, skip=heads)
            # Same paths and shapes: ω0 takes the params' structure (a FrozenDict ω0 for
            # dict params), each leaf found by its path, never by its position.
            by_path = {path_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(pretrained)}
            start = jax.tree_util.tree_map_with_path(
                lambda p, w: w if path_str(p) in heads else by_path[path_str(p)], params
            )
        return SPState(anchor=jax.tree.map(jnp.array, start))

    def update_fn(
        updates: PyTree, state: SPState, params: PyTree | None = None
    ) -> tuple[PyTree, SPState]:
        if params is None:
            raise ValueError("sp_penalty needs the params: call tx.update(grads, state, params)")
        head = resolve(head_mask, params)
        source = (
            jax.tree.map(lambda h: not h, head)
            if source_mask is None
            else jax.tree.map(lambda s, h: bool(s) and not h, resolve(source_mask, params), head)
        )

        def add(g, w, w0, is_head, is_source):
            if is_head:
                return g + (beta * pull(w)).astype(g.dtype)
            if is_source:
                return g + (alpha * pull(w - w0)).astype(g.dtype)
            return g

        new = jax.tree.map(add, updates, params, state.anchor, head, source)
        return new, state

    return optax.GradientTransformation(init_fn, update_fn)


def _check_like(anchor: PyTree, params: PyTree, skip: Set[str] = frozenset()) -> None:
    """Raises a ValueError at the first path where ``anchor`` differs from ``params``.

    A missing or extra leaf, or a leaf of another shape, names that path and
    both shapes: ``w - w0`` would otherwise broadcast (a (1,) parameter
    against a (1, 3) anchor gives a (1, 3) update) or fail deep inside jit.
    A leaf of another dtype too: ω0 rounded to bfloat16 against float32
    params puts every parameter off its start at step 0, and L1-SP's pull,
    α·sign(w − ω0), would act in full on all of them from rounding alone.
    The leaves other groups own (``optax.MaskedNode``) are not compared, nor those of
    ``skip`` (the head's).
    """

    def described(tree: PyTree) -> dict[str, str]:
        return {
            path_str(p): f"{jnp.shape(x)} {jnp.result_type(x)}"
            for p, x in jax.tree_util.tree_leaves_with_path(tree)
        }

    mine, theirs = described(params), described(anchor)
    # In one group of optax.partition/optax.masked the other groups' leaves are
    # MaskedNodes: ω0 may hold them (the whole pretrained tree), they are not compared.
    masked = {
        path_str(p)
        for p, x in jax.tree_util.tree_leaves_with_path(
            params, is_leaf=lambda x: isinstance(x, optax.MaskedNode)
        )
        if isinstance(x, optax.MaskedNode)
    }
    theirs = {p: d for p, d in theirs.items() if p not in masked and p not in skip}
    mine = {p: d for p, d in mine.items() if p not in skip}
    if mine and theirs and not set(mine) & set(theirs):
        raise ValueError(
            f"sp_penalty: pretrained shares no path with the params (params {next(iter(mine))!r}"
            f", pretrained {next(iter(theirs))!r}; one wrapped as {{'params': ...}}?)"
        )
    for path in [*mine, *(p for p in theirs if p not in mine)]:  # params' order first
        want, got = mine.get(path, "missing"), theirs.get(path, "missing")
        if want != got:
            raise ValueError(
                f"sp_penalty: pretrained differs from the params at {path!r}: "
                f"params {want}, pretrained {got}"
            )


def l2_sp(
    head_mask: Mask,
    alpha: float = 0.01,
    beta: float = 0.01,
    *,
    source_mask: Mask | None = None,
    pretrained: PyTree | None = None,
) -> optax.GradientTransformation:
    """Gradient of α/2‖w_s − ω0_s‖² + β/2‖w_head‖²; chain it before the optimizer."""
    return sp_penalty("l2", alpha, beta, head_mask, source_mask=source_mask, pretrained=pretrained)


def l1_sp(
    head_mask: Mask,
    alpha: float = 0.01,
    beta: float = 0.01,
    *,
    source_mask: Mask | None = None,
    pretrained: PyTree | None = None,
) -> optax.GradientTransformation:
    """Subgradient of α‖w_s − ω0_s‖₁ + β‖w_head‖₁ (0 at 0); chain it before the optimizer."""
    return sp_penalty("l1", alpha, beta, head_mask, source_mask=source_mask, pretrained=pretrained)
