"""``make``: a strategy by id, from its entry in :mod:`medft_jax.strategies.specs`."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from medft_jax.config import OPTION_STRATEGIES
from medft_jax.models.blocks import BlockPartition, path_str
from medft_jax.strategies.checks import (
    MAX_STEP,
    is_concrete_number,
    require_int,
    require_learning_rate,
)
from medft_jax.strategies.freeze import HEAD
from medft_jax.strategies.rgn import warn_zero_tensors
from medft_jax.strategies.schedule import FROZEN_BN_MODES, Schedule
from medft_jax.strategies.specs import (
    EXTRA_STRATEGIES,
    PAPER_STRATEGIES,
    SPECS,
    STRATEGIES,
    Layout,
    Options,
)

PyTree = Any


class Strategy(NamedTuple):
    """What :func:`make` returns: ``tx, schedule = make(...)``."""

    tx: optax.GradientTransformation
    """The optimizer (Adam inside); ``tx.update(grads, state, params)``."""
    schedule: Schedule
    """Which blocks train in which epoch; ``final_stage_epoch``; ``bn_train``."""

    # ``tx = make(...)`` (no unpacking) then ``tx.init(params)``: say what to write
    # instead of a bare AttributeError, or optax.chain taking the pair for a transform.
    def init(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(_NOT_A_TRANSFORM)

    def update(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(_NOT_A_TRANSFORM)


_NOT_A_TRANSFORM = (
    "make() returns Strategy(tx, schedule), not a transform: write `tx, schedule = "
    "make(...)` (or make(...).tx) and call tx.init / tx.update"
)


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
        head); their tree structure, paths and dtypes are read (integer leaves are
        refused), and Auto-RGN's values only to warn of an all-zero tensor: SP's
        ω0 is ``pretrained``, or else the params given to ``tx.init``.
      partition: the architecture's blocks and head path, a
        :class:`~medft_jax.models.blocks.BlockPartition` (for a named arch:
        ``medft_jax.models.get_arch(name).partition``). Its ``head`` must
        match at least one parameter.
      learning_rate: Adam's learning rate (a number > 0 or an optax schedule).
      steps_per_epoch: updates per epoch (an integer, as are the epoch
        counts below); stages switch at
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
      rgn_eps: a tensor with ‖w‖ <= rgn_eps is zero-norm (no defined RGN):
        multiplier 1, left out of the maximum that normalises the others.
      frozen_bn: ``'update'`` or ``'freeze'`` (see :class:`Schedule`).
      b1, b2, eps: Adam's.
      surgical_block: the block that ``surgical`` trains (with the head).
      lr_decay: ``llrd``'s per-block factor towards the input.

    Returns:
      ``Strategy(tx, schedule)``. ``ft`` is exactly ``optax.adam``.
    """
    # Every keyword argument, by its own name (a parameter Options lacks is a TypeError here).
    o = Options(
        **{
            k: _as_python(v)
            for k, v in locals().items()
            if k not in ("name", "params", "partition")
        }
    )
    if name not in STRATEGIES:
        raise ValueError(
            f"unknown strategy {name!r}; valid ids: {', '.join(PAPER_STRATEGIES)} "
            f"(the paper) and {', '.join(EXTRA_STRATEGIES)} (extras)"
        )
    o = _switches_as_bools(name, o)
    spec = SPECS[name]
    _refuse_options_of_others(name, o)
    _check_partition(name, params, partition)
    _check(name, o)
    if spec.needs_steps(o) and o.steps_per_epoch is None:
        raise ValueError(f"make({name!r}): steps_per_epoch is required (stages are in epochs)")
    group_of = spec.groups(partition)
    _check_groups_train_something(name, params, group_of, o, partition.names)
    starts = {HEAD: 0, **spec.starts(o, partition.names)}
    _check_start_steps(name, starts, o.steps_per_epoch)
    if name == "auto_rgn":  # here, where params are concrete even if init is jitted
        warn_zero_tensors(params, o.rgn_eps)
    schedule = Schedule.build(
        name,
        params,
        partition,
        group_of,
        starts,
        steps_per_epoch=o.steps_per_epoch,
        frozen_bn=o.frozen_bn,
        prepass=spec.prepass(o),
    )
    tx = spec.optimizer(o, Layout(partition, group_of, schedule))
    _BUILT_RATE[tx.update] = learning_rate
    return Strategy(tx, schedule)


_BUILT_RATE: weakref.WeakKeyDictionary[Callable[..., Any], Any] = weakref.WeakKeyDictionary()
"""The learning rate :func:`make` built each transform with, by its ``update`` function."""


def built_learning_rate(tx: optax.GradientTransformation) -> Any:
    """The ``learning_rate`` :func:`make` built ``tx`` with; None for a transform it did not
    build (a :class:`~medft_jax.train.Trainer` given its own rate checks the tx's is 1)."""
    try:
        return _BUILT_RATE.get(tx.update)
    except TypeError:  # an update that cannot be weakly referenced: not make's
        return None


def _check_groups_train_something(
    name: str,
    params: PyTree,
    group_of: Callable[[str], str],
    o: Options,
    blocks: tuple[str, ...],
) -> None:
    """Refuses a grouping that leaves a strategy nothing of its own to train.

    BitFit trains the leaves named ``bias`` or ``scale`` (Flax's names): a model
    whose leaves are named otherwise (``self.param("b")``) would train the head
    alone, LP under BitFit's name. Surgical's block must hold a parameter besides
    the new head: ResNet's ``fc`` is the head alone, and ``surgical_block='fc'``
    trained exactly LP's parameters (the command line refused it; ``make`` did not),
    and a block it does not know is named as such, with the known ones. Kernels-only SP
    holds the leaves named ``kernel`` to their start: a model naming its weights
    otherwise would be pulled nowhere (checked at ``init`` too, later and less plainly).
    """
    kernels_only_sp = name in ("l1_sp", "l2_sp") and o.kernels_only
    if name not in ("bitfit", "surgical") and not kernels_only_sp:
        return
    paths = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    if kernels_only_sp:
        if not any(group_of(p) != HEAD and p.rsplit("/", 1)[-1] == "kernel" for p in paths):
            raise ValueError(
                f"make({name!r}): kernels_only pulls the leaves named 'kernel' (the last path "
                f"component; paths look like {paths[0]!r}), and none lies outside the head, "
                "so no pretrained weight would be held to its start"
            )
        return
    if name == "surgical":
        if o.surgical_block not in blocks:
            raise ValueError(
                f"make('surgical'): surgical_block must be one of {list(blocks)}, "
                f"got {o.surgical_block!r}"
            )
        if not any(group_of(p) == o.surgical_block for p in paths):
            raise ValueError(
                f"make('surgical'): surgical_block {o.surgical_block!r} holds no parameter "
                "but the new head, so this is LP under surgical's name; expected another block"
            )
        return
    if not any(group_of(p) == "bias" for p in paths):
        raise ValueError(
            f"make({name!r}): no parameter outside the head is named 'bias' or 'scale' (the "
            f"last path component; paths look like {paths[0]!r}), so BitFit would train the "
            "head alone"
        )


def _check_partition(name: str, params: PyTree, partition: Any) -> None:
    """``partition`` is a BlockPartition whose head is a parameter of ``params``.

    A head path that matches nothing (``'cls.6'`` for ``'cls/6'``) would
    make LP train nothing and SP treat the new head as pretrained, silently.
    """
    where = f"make({name!r})"
    if not isinstance(partition, BlockPartition):
        hint = (
            f"; for an arch name use medft_jax.models.get_arch({partition!r}).partition"
            if isinstance(partition, str)
            else ""
        )
        raise TypeError(
            f"{where}: partition must be a medft_jax.models.blocks.BlockPartition, "
            f"got {type(partition).__name__}{hint}"
        )
    if not partition.blocks:
        raise ValueError(f"{where}: partition ({partition.arch}) has no blocks")
    leaves = jax.tree_util.tree_leaves_with_path(params)
    paths = [path_str(p) for p, _ in leaves]
    # Adam's float update of an integer leaf is truncated (FT) or breaks a stage's
    # lax.cond (G-LF, G-FL, LP-FT) deep inside optax.
    for path, leaf in zip(paths, (x for _, x in leaves), strict=True):
        dtype = np.dtype(leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype)
        if not jnp.issubdtype(dtype, jnp.inexact):  # numpy's own says no to bfloat16
            raise TypeError(
                f"{where}: parameter {path!r} is {dtype}; strategies train floating-point "
                "parameters only (keep counters and other integer state out of the params)"
            )
    heads = [p for p in paths if partition.is_head(p)]
    if not heads:
        top = sorted({p.split("/", 1)[0] for p in paths})
        raise ValueError(
            f"{where}: partition.head {partition.head!r} ({partition.arch}) matches no "
            f"parameter; the params' top-level names are {top} (paths are '/'-separated)"
        )
    # A head naming one leaf ('fc/kernel') leaves its siblings ('fc/bias') in the backbone:
    # frozen under LP, pulled to their random init under SP, silently.
    # A flat dict of a converted state_dict ('fc.weight', 'fc.bias') has no path naming the
    # layer: its head can only be one leaf, and is refused alike, told to nest the keys.
    sep = "/" if "/" in partition.head else "."
    if partition.head in paths and sep in partition.head:
        module = partition.head.rsplit(sep, 1)[0]
        sibling = next(
            (p for p in paths if p.startswith(module + sep) and not partition.is_head(p)), None
        )
        if sibling is not None:
            fix = (
                f"name the head's layer ({module!r})"
                if sep == "/"
                else f"nest the flat keys (flax.traverse_util.unflatten_dict(params, "
                f"sep='.')) and name the head's layer ({module!r})"
            )
            raise ValueError(
                f"{where}: partition.head {partition.head!r} ({partition.arch}) names one "
                f"parameter, leaving {sibling!r} of the same layer outside the head; {fix}"
            )
    # Each block is a stage of G-LF/G-FL: a name given twice would merge or skip stages,
    # a block owning nothing would be an epoch that unfreezes nothing.
    names = list(partition.names)
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise ValueError(
            f"{where}: partition ({partition.arch}) names block {twice!r} twice; block "
            "names must be distinct (each block is a stage)"
        )
    empty = next((b.name for b in partition.blocks if not any(b.owns(p) for p in paths)), None)
    if empty is not None:
        raise ValueError(
            f"{where}: partition block {empty!r} ({partition.arch}) owns no parameter; "
            "it would be a stage that trains nothing"
        )
    for path in paths:  # every parameter in one block: else Schedule.build's KeyError
        owners = [b.name for b in partition.blocks if b.owns(path)]
        if len(owners) != 1:
            held = f"blocks {owners}" if owners else "no block"
            raise ValueError(
                f"{where}: parameter {path!r} is in {held} of the partition "
                f"({partition.arch}); expected exactly one of {list(partition.names)}"
            )
    last = partition.blocks[-1]
    if not all(last.owns(p) for p in heads):
        raise ValueError(
            f"{where}: partition.head {partition.head!r} ({partition.arch}) is not in the "
            f"last block {last.name!r}; the head's block must be the last (output) block"
        )


def _as_python(value: Any) -> Any:
    """A concrete 0-d jax array as the Python number it holds (``jnp.float32(0.7)``,
    ``jnp.int32(2)``): the checks read numbers, and refused it as out of range; a traced
    one, and anything else, as it is."""
    concrete = isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer)
    if concrete and value.ndim == 0 and value.is_fully_addressable:
        return value.item()
    return value


def _refuse_options_of_others(name: str, o: Options) -> None:
    """Refuses an option set away from its default for a strategy that never reads it
    (``make('ft', alpha=5)``, ``make('g_lf', lp_epochs=2)``): it was ignored without a
    word, and the run was not the one asked for (the command line refuses them too)."""
    defaults = {k: p.default for k, p in inspect.signature(make).parameters.items()}
    readers = {**OPTION_STRATEGIES, "pretrained": ("l1_sp", "l2_sp")}
    for option, strategies in readers.items():
        value = getattr(o, option)
        if name in strategies or value is defaults[option]:
            continue
        if value is not None and defaults[option] is not None:
            with contextlib.suppress(Exception):  # an array, or a value of another type
                if bool(value == defaults[option]):
                    continue
        raise ValueError(
            f"make({name!r}): {option} does not apply (only {', '.join(strategies)} read it); "
            "leave it out"
        )


SWITCHES = ("sp_half", "kernels_only", "rgn_per_step")
"""``make``'s options that are True or False (the command line's ``BOOL_OPTIONS``)."""


def _switches_as_bools(name: str, o: Options) -> Options:
    """Refuses a switch that is not True or False, and makes a numpy one a ``bool``.

    Read by truthiness, ``sp_half="no"`` (an option from YAML, argparse or the
    environment) was L2-SP with the ½, ``kernels_only="False"`` kernels only, and
    ``rgn_per_step=np.True_`` passed the check that refuses it with
    ``rgn_estimate_steps``, which it then ignored."""
    for key in SWITCHES:
        value = getattr(o, key)
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"make({name!r}): {key} must be True or False, got {value!r}")
    return dataclasses.replace(o, **{key: bool(getattr(o, key)) for key in SWITCHES})


def _check_start_steps(
    name: str, starts: dict[str, int | None], steps_per_epoch: int | None
) -> None:
    """Refuse a stage starting past optax's int32 step count, naming the options that put
    it there (``staged: start_steps['a'] ...`` named arguments the caller never passed).
    A group that never starts (None: frozen throughout) has no step."""
    if steps_per_epoch is None:
        return
    epoch = max(e for e in starts.values() if e is not None)
    if epoch * steps_per_epoch > MAX_STEP:
        raise ValueError(
            f"make({name!r}): a stage starts at epoch {epoch}, step {epoch * steps_per_epoch:,} "
            f"(steps_per_epoch {steps_per_epoch:,}), past the int32 step count optax keeps "
            f"({MAX_STEP:,}); expected fewer steps per epoch or stage epochs"
        )


def _check(name: str, o: Options) -> None:
    """The numeric options every strategy shares: counts are integers, the rate positive."""
    where = f"make({name!r})"
    if o.frozen_bn not in FROZEN_BN_MODES:
        raise ValueError(
            f"{where}: frozen_bn must be one of {FROZEN_BN_MODES}, got {o.frozen_bn!r}"
        )
    if o.steps_per_epoch is not None:
        require_int(where, "steps_per_epoch", o.steps_per_epoch, 1)
    require_int(where, "epochs_per_stage", o.epochs_per_stage, 1)
    # LP-FT without head-only epochs is FT under LP-FT's name (the command line says so)
    require_int(where, "lp_epochs", o.lp_epochs, 1 if name == "lp_ft" else 0)
    require_learning_rate(where, o.learning_rate)
    # Adam's own: a negative eps flips the sign of every update near zero moments (ascent);
    # b1 or b2 of 1 (or outside [0, 1)) gives NaN from the first update on.
    for key, low, high in (("b1", 0.0, 1.0), ("b2", 0.0, 1.0), ("eps", 0.0, math.inf)):
        value = getattr(o, key)
        if is_concrete_number(value) and not low <= float(value) < high:
            bound = f"in [{low:g}, {high:g})" if high < math.inf else f">= {low:g}"
            raise ValueError(f"{where}: {key} must be {bound}, got {value!r}")
