"""Freezing and staged unfreezing as ordinary optax transformations.

Frozen parameters get an update of exactly zero. A group that never trains
holds *no* optimizer state: each group of parameters is routed by
``optax.partition`` either to the inner transformation or to
``optax.set_to_zero()``, whose state is empty. A group that starts training
later holds its inner state (zero Adam moments) from ``init`` on, and is
wrapped in :func:`unfreeze_at`, a gate driven by the step count kept in its own state:
the stage changes inside the jitted update at exactly the right step, with
no Python-side swapping of optimizers. While the gate is closed the inner
state is passed through untouched, so an inner ``optax.scale_by_adam``
keeps zero moments *and* a bias-correction count that advances only while
the group trains (PyTorch's Adam with ``requires_grad`` toggled: a block
unfrozen at step 3,000 takes its first update with count 1).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from medft_jax.models.blocks import BlockPartition, path_str
from medft_jax.strategies.checks import (
    MAX_STEP,
    is_masked_group,
    require_int,
    require_marks_some,
)

PyTree = Any
Labels = PyTree | Callable[[PyTree], PyTree]
"""A pytree of string labels shaped like the params, or a function of the params returning one."""

HEAD = "new_head"
"""The group label of the new head (the last Linear layer) in strategy labels."""


def leaf_paths(params: PyTree) -> PyTree:
    """A pytree like ``params`` holding each leaf's path string (``'layer1/0/conv1/kernel'``)."""
    return jax.tree_util.tree_map_with_path(lambda p, _: path_str(p), params)


def map_paths(fn: Callable[[str], Any]) -> Callable[[PyTree], PyTree]:
    """Lifts ``fn(path) -> value`` to ``params -> pytree of values`` (a label or mask function)."""

    def tree_fn(params: PyTree) -> PyTree:
        return jax.tree_util.tree_map_with_path(lambda p, _: fn(path_str(p)), params)

    return tree_fn


def match_paths(
    patterns: str | Iterable[str], *, strict: bool = True
) -> Callable[[PyTree], PyTree]:
    """A mask function: True where a leaf's path matches any ``fnmatch`` pattern.

    ``match_paths(['fc/*', '*/bias'])(params)`` marks the ``fc`` layer and every bias.
    With ``strict`` (the default) a pattern that matches no path of the tree the mask
    is given raises ``ValueError`` naming it: one typo among several (``layr4/*``)
    had left its layer out without a word, and a freeze mask matching nothing,
    inverted, trains everything. Pass ``strict=False`` where a pattern may rightly
    match nothing: a mask inside :func:`staged` or another transform that sees one
    group's parameters only, or a pattern list written for several architectures
    (``'*/scale'`` on VGG-19, which has no BatchNorm).
    """
    pats = (patterns,) if isinstance(patterns, str) else tuple(patterns)

    def tree_fn(params: PyTree) -> PyTree:
        if strict:
            paths = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
            for pat in pats:
                if not any(fnmatch.fnmatchcase(path, pat) for path in paths):
                    seen = f"paths look like {paths[0]!r}" if paths else "the tree is empty"
                    raise ValueError(
                        f"match_paths: pattern {pat!r} matches no parameter ({seen}); "
                        "pass strict=False where a pattern may rightly match nothing "
                        "(a mask inside staged, a list for several architectures)"
                    )
        return map_paths(lambda path: any(fnmatch.fnmatchcase(path, p) for p in pats))(params)

    return tree_fn


def block_mask(
    partition: BlockPartition, blocks: str | Iterable[str]
) -> Callable[[PyTree], PyTree]:
    """A mask function: True on every parameter of the named blocks of ``partition``
    (one block's name, or several: ``"layer4"`` is that block, not its letters)."""
    wanted = {blocks} if isinstance(blocks, str) else set(blocks)
    for b in wanted:
        partition.index(b)  # raises a KeyError naming the known blocks
    return map_paths(lambda path: partition.block_of(path) in wanted)


def resolve(tree_or_fn: Labels, params: PyTree) -> PyTree:
    """A label or mask pytree, given as is or as a function of ``params`` (optax takes both)."""
    return tree_or_fn(params) if callable(tree_or_fn) else tree_or_fn


def train_only(
    inner: optax.GradientTransformation, trainable: PyTree | Callable[[PyTree], PyTree]
) -> optax.GradientTransformationExtraArgs:
    """Applies ``inner`` where ``trainable`` is True and freezes everything else.

    Unlike ``optax.masked`` (which passes masked-out updates through
    unchanged) frozen updates here are exactly zero, and unlike chaining
    ``optax.freeze`` with an optimizer, ``inner`` holds state only for the
    trainable leaves: linear probing's Adam state is the head's size. This is
    ``optax.transforms.selective_transform``; it takes only a fixed mask, so
    a mask function (:func:`match_paths`) is applied to each tree it is given.
    """

    def for_tree(tree: PyTree) -> optax.GradientTransformation:
        frozen = jax.tree.map(lambda t: not t, resolve(trainable, tree))
        return optax.transforms.selective_transform(inner, freeze_mask=frozen)

    def init_fn(params: PyTree) -> optax.OptState:
        # A mask that missed would freeze the whole model: every update zero, no error.
        require_marks_some("train_only", "trainable", resolve(trainable, params), params)
        return for_tree(params).init(params)

    def update_fn(updates, state, params=None, **extra_args):
        return for_tree(updates).update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def unfreeze_at(
    inner: optax.GradientTransformation, step: int
) -> optax.GradientTransformationExtraArgs:
    """Gives zero updates until update number ``step`` (0-based), then ``inner``'s.

    The gate counts every call in its own state; before ``step`` the inner
    state is passed through unchanged, so an inner Adam starts with zero
    moments and its own bias-correction count 1 at the first update it
    makes. The switch is a ``lax.cond`` on that count inside the update:
    one jitted function serves every stage.

    ``optax.transforms.conditionally_mask`` with its own state, but its
    closed branch returns what the open one would in type, not in the
    gradients' dtype: gradients of another dtype than the params (float32
    ones accumulated for bfloat16 params) give Adam's promoted dtype, and
    ``lax.cond`` refuses branches that differ.
    """
    require_int("unfreeze_at", "step", step, 0, MAX_STEP)  # an int32 count never passes it
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: PyTree) -> optax.transforms.ConditionallyMaskState:
        return optax.transforms.ConditionallyMaskState(
            step=jnp.zeros([], jnp.int32), inner_state=inner.init(params)
        )

    def update_fn(updates, state, params=None, **extra_args):
        def train(_):
            return inner.update(updates, state.inner_state, params, **extra_args)

        out = jax.eval_shape(train, None)

        def wait(_):
            zeros = jax.tree.map(lambda o: jnp.zeros(o.shape, o.dtype), out[0])
            kept = jax.tree.map(lambda x, o: jnp.asarray(x, o.dtype), state.inner_state, out[1])
            return zeros, kept

        new_updates, inner_state = jax.lax.cond(state.step >= step, train, wait, None)
        new_state = optax.transforms.ConditionallyMaskState(
            step=optax.safe_increment(state.step), inner_state=inner_state
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def staged(
    inner: optax.GradientTransformation,
    labels: Labels,
    start_steps: Mapping[str, int | None],
) -> optax.GradientTransformationExtraArgs:
    """Trains each labelled group with ``inner`` from its own start step on.

    ``start_steps`` maps every label to the update number at which its group
    starts training: ``0`` trains from the start (plain ``inner``), ``None``
    never (``set_to_zero``, no state). Each group gets its own copy of
    ``inner``'s state, created at init for every group that will ever train,
    so a group's Adam moments and bias-correction count start fresh when it
    unfreezes and nothing else is reset. Gradual unfreezing (G-LF, G-FL),
    LP-FT, LP, surgical fine-tuning and BitFit are all this one function.

    Keep a learning-rate schedule out of ``inner`` (chain it after, as
    :func:`medft_jax.strategies.make` does): each group's copy would count
    its own steps from its start, so a block unfrozen at step 8 would begin
    at the schedule's step-0 rate.

    A start step must be an integer (a fraction would otherwise be
    truncated here while a schedule used it as is), every label of the
    params must be in ``start_steps`` (``init`` names the missing ones), and
    some parameter must carry a label that ever trains (a head label that
    matches nothing would make every update zero).

    Start steps count the updates this transform makes, not the batches
    seen: under ``optax.apply_if_finite`` a skipped (non-finite)
    step does not count, so every later stage starts one batch
    later than the :class:`~medft_jax.strategies.Schedule`'s epochs say.
    The training loop here skips nothing; code that does should count its
    epochs from the updates made.
    """
    transforms: dict[str, optax.GradientTransformation] = {}
    for group, start in start_steps.items():
        if start is None:
            transforms[group] = optax.set_to_zero()
            continue
        step = require_int("staged", f"start_steps[{group!r}]", start, 0, MAX_STEP)
        transforms[group] = inner if step == 0 else unfreeze_at(inner, step)
    routed = optax.partition(transforms, labels)

    def init_fn(params: PyTree) -> optax.OptState:
        # optax.partition's own message lists every label and key; name the culprits.
        resolved = resolve(labels, params)
        missing = set(jax.tree.leaves(resolved)) - set(start_steps)
        if missing:
            raise ValueError(
                f"staged: no start step for labels {sorted(map(str, missing))}; "
                f"start_steps has {sorted(map(str, start_steps))}"
            )
        if not is_masked_group(params):  # a partition group may hold only frozen labels
            # A head label that matches no parameter: every update zero, without a word.
            trains = sorted(str(g) for g, start in start_steps.items() if start is not None)
            if not trains:
                raise ValueError(
                    f"staged: every start step is None ({sorted(map(str, start_steps))}), so "
                    "nothing ever trains; give the head's label 0"
                )
            marks = jax.tree.map(lambda g: start_steps[g] is not None, resolved)
            require_marks_some("staged", f"the labels that ever train ({trains})", marks, params)
        return routed.init(params)

    return optax.GradientTransformationExtraArgs(init_fn, routed.update)
