"""Per-group learning-rate multipliers, e.g. layer-wise learning-rate decay."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import optax

from medft_jax.strategies.checks import is_concrete_number
from medft_jax.strategies.freeze import resolve

PyTree = Any


def scale_by_label(
    labels: PyTree | Callable[[PyTree], PyTree], factors: Mapping[str, float]
) -> optax.GradientTransformation:
    """Multiplies each leaf's update by the factor of its label (stateless).

    Chained after an optimizer it is a per-group learning rate; under Adam
    that is the same as giving each group its own learning rate.
    """
    # Not ``optax.partition({label: optax.scale(f)}, labels)``: its updates are bit-for-bit
    # these, but its state is a PartitionState of per-label MaskedState(EmptyState) instead of
    # one EmptyState, and orbax refuses to restore a checkpoint whose tree differs, so an
    # ``llrd`` run checkpointed before could not resume.

    for label, factor in factors.items():  # an injected (traced) factor is the caller's
        if is_concrete_number(factor) and not float(factor) >= 0:  # also NaN
            raise ValueError(
                f"scale_by_label: factor {factor!r} of label {label!r} must be a number >= 0 "
                "(a negative one ascends the loss)"
            )

    def init_fn(params: PyTree) -> optax.EmptyState:
        # A label without a factor, named here rather than at the first update (traced).
        if type(params).__name__ != "_ParamsPlaceholder":  # optax.tree_map_params's
            _require_factors(resolve(labels, params))
        return optax.EmptyState()

    def update_fn(
        updates: PyTree, state: optax.EmptyState, params: PyTree | None = None
    ) -> tuple[PyTree, optax.EmptyState]:
        del params
        lab = resolve(labels, updates)
        _require_factors(lab)
        return jax.tree.map(lambda u, label: u * factors[label], updates, lab), state

    def _require_factors(lab: PyTree) -> None:
        missing = set(jax.tree.leaves(lab)) - set(factors)
        if missing:
            raise ValueError(f"scale_by_label: no factor for labels {sorted(missing)}")

    return optax.GradientTransformation(init_fn, update_fn)


def layerwise_decay_factors(blocks: Sequence[str], decay: float) -> dict[str, float]:
    """``decay ** (distance from the last block)``: 1 for the last block, smaller towards the input.

    ``decay`` may be a jax array (injected by ``optax.inject_hyperparams``): the factors
    are then arrays too, and the range is the caller's to keep.

    Layer-wise learning-rate decay (ULMFiT's discriminative fine-tuning,
    BEiT): layers near the input hold general features and move least.
    """
    n = len(blocks)
    if isinstance(decay, jax.Array):  # injected (optax.inject_hyperparams): traced in jit
        return {b: decay ** (n - 1 - i) for i, b in enumerate(blocks)}
    if not 0 < decay <= 1:
        raise ValueError(f"layerwise_decay_factors: decay must be in (0, 1], got {decay!r}")
    return {b: float(decay ** (n - 1 - i)) for i, b in enumerate(blocks)}
