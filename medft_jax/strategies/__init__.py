"""Fine-tuning strategies as optax transformations, and the eight of the paper by name.

A strategy is data about parameters: which train in which epoch, at what
learning-rate multiplier, under which penalty. The building blocks are
ordinary ``optax.GradientTransformation`` s that compose with any JAX code:

- :func:`train_only`, :func:`staged`, :func:`unfreeze_at` (freezing with no
  optimizer state for frozen parameters; staged unfreezing driven by the
  step count in the state, each group with its own Adam count);
- :func:`l2_sp`, :func:`l1_sp` (the starting-point penalty's gradient, chained
  before the optimizer);
- :func:`scale_by_rgn` (Auto-RGN: per-tensor multipliers of the inner
  optimizer's update);
- :func:`scale_by_label` (per-group learning-rate multipliers).

:func:`make` (in :mod:`.build`) builds a strategy by id for a params tree
and a block partition and returns the transform (Adam inside) and its
:class:`Schedule`; each id is one entry of data in :mod:`.specs`
(:data:`SPECS`), the place to read or add a strategy. This module only
re-exports. Which parameters are "the head": the *new head* is the
last Linear layer only (``partition.head``: ResNet ``fc``, DenseNet
``classifier``, VGG ``classifier/6``); it always trains and is what LP and
LP-FT's LP phase train. The *head block* is the last block of the partition
(DenseNet: ``norm5`` + ``classifier``; VGG: fc6, fc7, fc8); G-LF trains it
whole in epoch 0.
"""

from __future__ import annotations

from medft_jax.strategies.build import Strategy, built_learning_rate, make
from medft_jax.strategies.freeze import (
    HEAD,
    block_mask,
    leaf_paths,
    map_paths,
    match_paths,
    staged,
    train_only,
    unfreeze_at,
)
from medft_jax.strategies.lr import layerwise_decay_factors, scale_by_label
from medft_jax.strategies.rgn import (
    RGN_MODES,
    Prepass,
    PrepassRGNState,
    RGNState,
    hold_multipliers,
    normalise_by_max,
    relative_gradient_norms,
    rgn_vector,
    scale_by_rgn,
)
from medft_jax.strategies.schedule import FROZEN_BN_MODES, Schedule
from medft_jax.strategies.sp import SPState, kernel_mask, l1_sp, l2_sp, sp_penalty
from medft_jax.strategies.specs import (
    EXTRA_STRATEGIES,
    LABELS,
    PAPER_STRATEGIES,
    SPECS,
    STRATEGIES,
    Spec,
    bitfit_group,
    block_group,
)

__all__ = [
    "EXTRA_STRATEGIES",
    "FROZEN_BN_MODES",
    "HEAD",
    "LABELS",
    "PAPER_STRATEGIES",
    "RGN_MODES",
    "SPECS",
    "STRATEGIES",
    "Prepass",
    "PrepassRGNState",
    "RGNState",
    "SPState",
    "Schedule",
    "Spec",
    "Strategy",
    "bitfit_group",
    "block_group",
    "block_mask",
    "built_learning_rate",
    "hold_multipliers",
    "kernel_mask",
    "l1_sp",
    "l2_sp",
    "layerwise_decay_factors",
    "leaf_paths",
    "make",
    "map_paths",
    "match_paths",
    "normalise_by_max",
    "relative_gradient_norms",
    "rgn_vector",
    "scale_by_label",
    "scale_by_rgn",
    "sp_penalty",
    "staged",
    "train_only",
    "unfreeze_at",
]
