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

:func:`make` builds a strategy by id for a params tree and a block
partition and returns the transform (Adam inside) and its
:class:`Schedule`. Which parameters are "the head": the *new head* is the
last Linear layer only (``partition.head``: ResNet ``fc``, DenseNet
``classifier``, VGG ``classifier/6``); it always trains and is what LP and
LP-FT's LP phase train. The *head block* is the last block of the partition
(DenseNet: ``norm5`` + ``classifier``; VGG: fc6, fc7, fc8); G-LF trains it
whole in epoch 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import optax

from medft_jax.models.blocks import BlockPartition
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
    RGNState,
    hold_multipliers,
    normalise_by_max,
    relative_gradient_norms,
    rgn_vector,
    scale_by_rgn,
)
from medft_jax.strategies.schedule import FROZEN_BN_MODES, Schedule
from medft_jax.strategies.sp import SPState, kernel_mask, l1_sp, l2_sp, sp_penalty

__all__ = [
    "EXTRA_STRATEGIES",
    "FROZEN_BN_MODES",
    "HEAD",
    "PAPER_STRATEGIES",
    "RGN_MODES",
    "STRATEGIES",
    "Prepass",
    "RGNState",
    "SPState",
    "Schedule",
    "Strategy",
    "bitfit_group",
    "block_group",
    "block_mask",
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

PyTree = Any

PAPER_STRATEGIES = ("ft", "lp", "g_lf", "g_fl", "lp_ft", "l1_sp", "l2_sp", "auto_rgn")
"""The eight strategies of the paper, in its order."""
EXTRA_STRATEGIES = ("surgical", "llrd", "bitfit")
"""Beyond the paper: surgical fine-tuning (one block + head), layer-wise LR decay, BitFit."""
STRATEGIES = PAPER_STRATEGIES + EXTRA_STRATEGIES
LABELS: dict[str, str] = {
    "ft": "FT",
    "lp": "LP",
    "g_lf": "G-LF",
    "g_fl": "G-FL",
    "lp_ft": "LP-FT",
    "l1_sp": "L1-SP",
    "l2_sp": "L2-SP",
    "auto_rgn": "Auto-RGN",
    "surgical": "Surgical",
    "llrd": "LLRD",
    "bitfit": "BitFit",
}
"""How tables and figures name each strategy id (the paper's labels)."""


class Strategy(NamedTuple):
    """What :func:`make` returns: ``tx, schedule = make(...)``."""

    tx: optax.GradientTransformation
    """The optimizer (Adam inside); ``tx.update(grads, state, params)``."""
    schedule: Schedule
    """Which blocks train in which epoch; ``final_stage_epoch``; ``bn_train``."""


def block_group(partition: BlockPartition) -> Callable[[str], str]:
    """Path -> group: ``'new_head'`` for the new head, else the block's name."""
    if HEAD in partition.names:
        raise ValueError(f"{partition.arch}: a block may not be named {HEAD!r} (reserved)")
    return lambda path: HEAD if partition.is_head(path) else partition.block_of(path)


def bitfit_group(partition: BlockPartition) -> Callable[[str], str]:
    """Path -> group: ``'new_head'``, ``'bias'`` (biases, norm scale/bias) or ``'frozen'``."""

    def group(path: str) -> str:
        if partition.is_head(path):
            return HEAD
        return "bias" if path.rsplit("/", 1)[-1] in ("bias", "scale") else "frozen"

    return group


def _start_epochs(
    name: str,
    partition: BlockPartition,
    *,
    epochs_per_stage: int,
    lp_epochs: int,
    surgical_block: str | None,
) -> dict[str, int | None]:
    """The first epoch of training of every group, per strategy (None: never)."""
    blocks, n = partition.names, len(partition.names)
    if name in ("ft", "l1_sp", "l2_sp", "auto_rgn", "llrd"):
        per_block = dict.fromkeys(blocks, 0)
    elif name == "lp":
        per_block = dict.fromkeys(blocks, None)
    elif name == "g_lf":  # epoch 0: the head block; then one block per stage towards the input
        per_block = {b: (n - 1 - i) * epochs_per_stage for i, b in enumerate(blocks)}
    elif name == "g_fl":  # epoch 0: block 1 (+ the head); then one block per stage to the output
        per_block = {b: i * epochs_per_stage for i, b in enumerate(blocks)}
    elif name == "lp_ft":
        per_block = dict.fromkeys(blocks, lp_epochs)
    elif name == "surgical":
        if surgical_block not in blocks:
            raise ValueError(
                f"make('surgical'): surgical_block must be one of {list(blocks)}, "
                f"got {surgical_block!r}"
            )
        per_block = {b: 0 if b == surgical_block else None for b in blocks}
    elif name == "bitfit":
        return {HEAD: 0, "bias": 0, "frozen": None}
    else:  # pragma: no cover - make() checks the id first
        raise AssertionError(name)
    return {HEAD: 0, **per_block}


def make(
    name: str,
    params: PyTree,
    partition: BlockPartition,
    *,
    learning_rate: optax.ScalarOrSchedule,
    steps_per_epoch: int | None = None,
    pretrained: PyTree | None = None,
    epochs_per_stage: int = 1,
    lp_epochs: int = 5,
    alpha: float = 0.01,
    beta: float = 0.01,
    sp_half: bool = True,
    kernels_only: bool = False,
    rgn_estimate_steps: int = 5,
    rgn_mode: str = "stream",
    rgn_per_step: bool = False,
    rgn_eps: float = 1e-8,
    frozen_bn: str = "update",
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    surgical_block: str | None = None,
    lr_decay: float = 0.7,
) -> Strategy:
    """Builds strategy ``name`` for ``params`` split into blocks by ``partition``.

    Args:
      name: one of :data:`STRATEGIES` (the paper's eight, then the extras).
      params: the model's parameters (the pretrained weights with the new
        head); only their tree structure and paths are read, plus ω0 for SP.
      partition: the architecture's blocks and head path.
      learning_rate: Adam's learning rate (a float or an optax schedule).
      steps_per_epoch: updates per epoch; stages switch at
        ``start_epoch * steps_per_epoch``. Needed by ``g_lf``, ``g_fl``,
        ``lp_ft`` and ``auto_rgn`` (per-epoch estimate).
      pretrained: ω0 for ``l1_sp``/``l2_sp``; default: the params given to
        ``tx.init``.
      epochs_per_stage: epochs between unfreezing two blocks (G-LF, G-FL).
      lp_epochs: LP-FT's head-only epochs.
      alpha, beta: SP weights of the pull to ω0 and of the head penalty.
      sp_half: L2-SP's convention. True (default, Li et al. 2018, whose
        reference code the SP literature follows): the penalty is
        α/2‖w_s − ω0‖² + β/2‖w_head‖². False: the paper's eq. 3,
        α‖w_s − ω0‖² + β‖w_head‖², twice the gradient at the same α, β.
      kernels_only: SP counts only kernels as w_s (the original TF code);
        default all pretrained parameters. The head penalty covers all head
        parameters either way.
      rgn_estimate_steps: Auto-RGN's batches averaged at each epoch start.
      rgn_mode: Auto-RGN's ``'stream'`` (default: the estimate comes from
        the epoch's first updates, no extra passes) or ``'prepass'`` (the
        reference code's: the loop evaluates ``rgn_estimate_steps``
        gradients before each epoch, ``schedule.prepass``).
      rgn_per_step: Auto-RGN applies each step's own RGN instead (stream).
      rgn_eps: floor of ‖w‖ in RGN.
      frozen_bn: ``'update'`` or ``'freeze'`` (see :class:`Schedule`).
      b1, b2, eps: Adam's.
      surgical_block: the block that ``surgical`` trains (with the head).
      lr_decay: ``llrd``'s per-block factor towards the input.

    Returns:
      ``Strategy(tx, schedule)``. ``ft`` is exactly ``optax.adam``.
    """
    if name not in STRATEGIES:
        raise ValueError(
            f"unknown strategy {name!r}; valid ids: {', '.join(PAPER_STRATEGIES)} "
            f"(the paper) and {', '.join(EXTRA_STRATEGIES)} (extras)"
        )
    if steps_per_epoch is not None and steps_per_epoch < 1:
        raise ValueError(f"make({name!r}): steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if epochs_per_stage < 1:
        raise ValueError(f"make({name!r}): epochs_per_stage must be >= 1, got {epochs_per_stage}")
    if lp_epochs < 0:
        raise ValueError(f"make({name!r}): lp_epochs must be >= 0, got {lp_epochs}")
    staged_ids = ("g_lf", "g_fl") + (("lp_ft",) if lp_epochs > 0 else ())
    if name == "auto_rgn" and rgn_mode not in RGN_MODES:
        raise ValueError(f"make('auto_rgn'): rgn_mode must be one of {RGN_MODES}, got {rgn_mode!r}")
    streamed = name == "auto_rgn" and rgn_mode == "stream" and not rgn_per_step
    needs_steps = name in staged_ids or streamed
    if needs_steps and steps_per_epoch is None:
        raise ValueError(f"make({name!r}): steps_per_epoch is required (stages are in epochs)")

    group_of = (bitfit_group if name == "bitfit" else block_group)(partition)
    starts = _start_epochs(
        name,
        partition,
        epochs_per_stage=epochs_per_stage,
        lp_epochs=lp_epochs,
        surgical_block=surgical_block,
    )
    schedule = Schedule.build(
        name,
        params,
        partition,
        group_of,
        starts,
        steps_per_epoch=steps_per_epoch,
        frozen_bn=frozen_bn,
        prepass=Prepass(_prepass_batches(rgn_estimate_steps, steps_per_epoch), rgn_eps)
        if name == "auto_rgn" and rgn_mode == "prepass"
        else None,
    )
    adam = optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
    head_mask = map_paths(partition.is_head)

    if name == "ft":
        tx = adam
    elif name in ("l1_sp", "l2_sp"):
        # L2-SP's penalty α/2‖w_s − ω0‖² + β/2‖w‖² (Li et al.) has gradient α(w_s − ω0), βw;
        # the paper's eq. 3, α‖w_s − ω0‖² + β‖w‖² without the ½, has twice that.
        double = 2.0 if name == "l2_sp" and not sp_half else 1.0
        penalty = sp_penalty(
            "l1" if name == "l1_sp" else "l2",
            double * alpha,
            double * beta,
            head_mask,
            source_mask=kernel_mask if kernels_only else None,
            pretrained=pretrained,
        )
        tx = optax.chain(penalty, adam)
    elif name == "auto_rgn":
        tx = scale_by_rgn(
            adam,
            steps_per_epoch,
            estimate_steps=rgn_estimate_steps,
            mode=rgn_mode,
            per_step=rgn_per_step,
            eps=rgn_eps,
        )
    elif name == "llrd":
        factors = layerwise_decay_factors(partition.names, lr_decay)
        tx = optax.chain(adam, scale_by_label(map_paths(partition.block_of), factors))
    else:  # lp, g_lf, g_fl, lp_ft, surgical, bitfit: groups of Adam, each with its own count
        tx = optax.chain(
            staged(
                optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                map_paths(group_of),
                schedule.start_steps,
            ),
            optax.scale_by_learning_rate(learning_rate),
        )
    return Strategy(tx, schedule)


def _prepass_batches(estimate_steps: int, steps_per_epoch: int | None) -> int:
    """The reference's ``islice(loader, 5)``: no more batches than an epoch has."""
    if estimate_steps < 1:
        raise ValueError(f"make('auto_rgn'): rgn_estimate_steps must be >= 1, got {estimate_steps}")
    return estimate_steps if steps_per_epoch is None else min(estimate_steps, steps_per_epoch)
