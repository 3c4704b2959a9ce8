"""Every strategy id as one entry of data: its label, groups, start epochs and optimizer.

As big_vision writes freezing rules as data, a strategy here is a
:class:`Spec`: which *groups* its parameters fall in (the blocks of the
partition, or BitFit's biases), the epoch at which each group starts
training, whether those epochs need ``steps_per_epoch`` to become update
numbers, whether the loop runs a gradient prepass, and how its optimizer is
built. :func:`medft_jax.strategies.build.make` reads one entry; adding a
strategy is adding one. The new head (group ``'new_head'``) always trains
from epoch 0 and is added by ``make``, so ``starts`` gives the other groups.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax

from medft_jax.config import OPTION_DEFAULTS
from medft_jax.models.blocks import BlockPartition
from medft_jax.strategies.checks import is_concrete_number, require_coefficient, require_int
from medft_jax.strategies.freeze import HEAD, map_paths, staged
from medft_jax.strategies.lr import layerwise_decay_factors, scale_by_label
from medft_jax.strategies.rgn import RGN_MODES, Prepass, scale_by_rgn
from medft_jax.strategies.schedule import Schedule
from medft_jax.strategies.sp import kernel_mask, sp_penalty

PyTree = Any
Starts = dict[str, int | None]
"""Group -> first epoch it trains (None: never)."""


@dataclasses.dataclass(frozen=True)
class Options:
    """``make``'s keyword arguments, as one value the specs read (documented there)."""

    learning_rate: optax.ScalarOrSchedule
    steps_per_epoch: int | None
    pretrained: PyTree | None
    epochs_per_stage: int
    lp_epochs: int
    alpha: float
    beta: float
    sp_half: bool
    kernels_only: bool
    rgn_estimate_steps: int
    rgn_mode: str
    rgn_per_step: bool
    rgn_eps: float
    frozen_bn: str
    b1: float
    b2: float
    eps: float
    surgical_block: str | None
    lr_decay: float


class Layout(NamedTuple):
    """What an optimizer is built on besides the options: the params' blocks and groups."""

    partition: BlockPartition
    group_of: Callable[[str], str]
    schedule: Schedule


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


def _never(o: Options) -> bool:
    del o
    return False


def _always(o: Options) -> bool:
    del o
    return True


def _no_prepass(o: Options) -> Prepass | None:
    del o
    return None


@dataclasses.dataclass(frozen=True)
class Spec:
    """One strategy id, as data."""

    label: str
    """How tables and figures name it (the paper's label)."""
    starts: Callable[[Options, tuple[str, ...]], Starts]
    """(options, block names input to output) -> first epoch of every group but the head."""
    optimizer: Callable[[Options, Layout], optax.GradientTransformation]
    groups: Callable[[BlockPartition], Callable[[str], str]] = block_group
    """partition -> (path -> group); the groups ``starts`` names."""
    needs_steps: Callable[[Options], bool] = _never
    """Whether ``make`` must be given ``steps_per_epoch`` (its stages are in epochs)."""
    prepass: Callable[[Options], Prepass | None] = _no_prepass
    """The gradient evaluations the loop makes before each epoch (``Schedule.prepass``)."""


# --- the pieces entries are made of --------------------------------------------------------


def _every_block(epoch: int | None) -> Callable[[Options, tuple[str, ...]], Starts]:
    return lambda o, blocks: dict.fromkeys(blocks, epoch)


def _adam(o: Options, layout: Layout | None = None) -> optax.GradientTransformation:
    """Plain Adam: ``ft`` is exactly ``optax.adam``."""
    del layout
    return optax.adam(o.learning_rate, b1=o.b1, b2=o.b2, eps=o.eps)


def _staged_adam(o: Options, layout: Layout) -> optax.GradientTransformation:
    """Groups of Adam from their start steps on, each with its own bias-correction count."""
    return optax.chain(
        staged(
            optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps),
            map_paths(layout.group_of),
            layout.schedule.start_steps,
        ),
        optax.scale_by_learning_rate(o.learning_rate),
    )


def _sp_adam(norm: str) -> Callable[[Options, Layout], optax.GradientTransformation]:
    """The SP penalty's gradient, then Adam.

    L2-SP's penalty α/2‖w_s − ω0‖² + β/2‖w‖² (Li et al.) has gradient α(w_s − ω0), βw;
    the paper's eq. 3, α‖w_s − ω0‖² + β‖w‖² without the ½ (``sp_half=False``), has twice that.
    """

    def build(o: Options, layout: Layout) -> optax.GradientTransformation:
        require_coefficient(f"make('{norm}_sp')", "alpha", o.alpha)
        require_coefficient(f"make('{norm}_sp')", "beta", o.beta)
        double = 2.0 if norm == "l2" and not o.sp_half else 1.0
        penalty = sp_penalty(
            norm,
            double * o.alpha,
            double * o.beta,
            map_paths(layout.partition.is_head),
            source_mask=kernel_mask if o.kernels_only else None,
            pretrained=o.pretrained,
        )
        return optax.chain(penalty, _adam(o))

    return build


def _rgn_streams(o: Options) -> bool:
    """Auto-RGN's per-epoch stream needs ``steps_per_epoch``; checks ``rgn_mode`` first."""
    if o.rgn_mode not in RGN_MODES:
        raise ValueError(
            f"make('auto_rgn'): rgn_mode must be one of {RGN_MODES}, got {o.rgn_mode!r}"
        )
    return o.rgn_mode == "stream" and not o.rgn_per_step


def _check_rgn(o: Options) -> None:
    """Auto-RGN's options, named as ``make`` takes them (not as ``scale_by_rgn`` does)."""
    require_int("make('auto_rgn')", "rgn_estimate_steps", o.rgn_estimate_steps, 1)
    if o.rgn_mode == "prepass" and o.rgn_per_step:
        raise ValueError(
            "make('auto_rgn'): rgn_per_step applies each step's own RGN, a stream variant; "
            "rgn_mode='prepass' estimates it before each epoch: give one of them"
        )
    traced = isinstance(o.rgn_eps, jax.Array)  # injected (optax.inject_hyperparams)
    if not traced and not (is_concrete_number(o.rgn_eps) and o.rgn_eps >= 0):
        raise ValueError(f"make('auto_rgn'): rgn_eps must be a number >= 0, got {o.rgn_eps!r}")


def _rgn_prepass(o: Options) -> Prepass | None:
    """The reference's ``islice(loader, 5)`` before each epoch: no more batches than it has."""
    if o.rgn_mode != "prepass":
        return None
    _check_rgn(o)
    batches, spe = int(o.rgn_estimate_steps), o.steps_per_epoch
    return Prepass(batches if spe is None else min(batches, spe), o.rgn_eps)


def _rgn_adam(o: Options, layout: Layout) -> optax.GradientTransformation:
    """Adam's update of each tensor scaled by its normalised RGN."""
    del layout
    _check_rgn(o)
    if o.rgn_per_step is True and o.rgn_estimate_steps != OPTION_DEFAULTS["rgn_estimate_steps"]:
        raise ValueError(
            "make('auto_rgn'): rgn_per_step applies each step's own RGN, and "
            "rgn_estimate_steps (which averages an epoch's first steps) would be ignored; "
            "give one of them"
        )
    return scale_by_rgn(
        _adam(o),
        o.steps_per_epoch,
        estimate_steps=o.rgn_estimate_steps,
        mode=o.rgn_mode,
        per_step=o.rgn_per_step,
        eps=o.rgn_eps,
        warn_zero_norm=False,  # make warned, given the params concrete
    )


def _llrd_adam(o: Options, layout: Layout) -> optax.GradientTransformation:
    """Adam, each block's update times ``lr_decay ** (blocks above it)``."""
    traced = isinstance(o.lr_decay, jax.Array)  # injected (optax.inject_hyperparams)
    if not traced and not (is_concrete_number(o.lr_decay) and 0 < o.lr_decay <= 1):
        raise ValueError(f"make('llrd'): lr_decay must be in (0, 1], got {o.lr_decay!r}")
    return optax.chain(
        _adam(o),
        scale_by_label(
            map_paths(layout.partition.block_of),
            layerwise_decay_factors(layout.partition.names, o.lr_decay),
        ),
    )


def _surgical_starts(o: Options, blocks: tuple[str, ...]) -> Starts:
    if o.surgical_block not in blocks:
        raise ValueError(
            f"make('surgical'): surgical_block must be one of {list(blocks)}, "
            f"got {o.surgical_block!r}"
        )
    return {b: 0 if b == o.surgical_block else None for b in blocks}


# --- the table -----------------------------------------------------------------------------

PAPER: dict[str, Spec] = {
    "ft": Spec("FT", starts=_every_block(0), optimizer=_adam),
    "lp": Spec("LP", starts=_every_block(None), optimizer=_staged_adam),
    "g_lf": Spec(  # epoch 0: the head block; then one block per stage towards the input
        "G-LF",
        starts=lambda o, blocks: {
            b: (len(blocks) - 1 - i) * o.epochs_per_stage for i, b in enumerate(blocks)
        },
        optimizer=_staged_adam,
        needs_steps=_always,
    ),
    "g_fl": Spec(  # epoch 0: block 1 (+ the head); then one block per stage to the output
        "G-FL",
        starts=lambda o, blocks: {b: i * o.epochs_per_stage for i, b in enumerate(blocks)},
        optimizer=_staged_adam,
        needs_steps=_always,
    ),
    "lp_ft": Spec(  # the head alone for lp_epochs, then everything
        "LP-FT",
        starts=lambda o, blocks: dict.fromkeys(blocks, o.lp_epochs),
        optimizer=_staged_adam,
        needs_steps=lambda o: o.lp_epochs > 0,
    ),
    "l1_sp": Spec("L1-SP", starts=_every_block(0), optimizer=_sp_adam("l1")),
    "l2_sp": Spec("L2-SP", starts=_every_block(0), optimizer=_sp_adam("l2")),
    "auto_rgn": Spec(  # Adam's update of each tensor scaled by its normalised RGN
        "Auto-RGN",
        starts=_every_block(0),
        optimizer=_rgn_adam,
        needs_steps=_rgn_streams,
        prepass=_rgn_prepass,
    ),
}
"""The eight strategies of the paper, in its order."""

EXTRAS: dict[str, Spec] = {
    "surgical": Spec("Surgical", starts=_surgical_starts, optimizer=_staged_adam),
    "llrd": Spec(  # Adam, each block's update times lr_decay ** (blocks above it)
        "LLRD", starts=_every_block(0), optimizer=_llrd_adam
    ),
    "bitfit": Spec(  # biases and norm affine parameters (+ the head) only
        "BitFit",
        starts=lambda o, blocks: {"bias": 0, "frozen": None},
        optimizer=_staged_adam,
        groups=bitfit_group,
    ),
}
"""Beyond the paper: surgical fine-tuning (one block + head), layer-wise LR decay, BitFit."""

SPECS: dict[str, Spec] = PAPER | EXTRAS

PAPER_STRATEGIES = tuple(PAPER)
"""The eight strategies of the paper, in its order."""
EXTRA_STRATEGIES = tuple(EXTRAS)
"""Beyond the paper: surgical fine-tuning (one block + head), layer-wise LR decay, BitFit."""
STRATEGIES = PAPER_STRATEGIES + EXTRA_STRATEGIES
LABELS: dict[str, str] = {name: spec.label for name, spec in SPECS.items()}
"""How tables and figures name each strategy id (the paper's labels)."""
