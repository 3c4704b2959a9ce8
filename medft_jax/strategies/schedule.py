"""The schedule of a strategy: which parameters and blocks train in which epoch.

The optimizer transformation decides what moves; the training loop needs
the same facts as plain data, per epoch: which blocks to differentiate and
which frozen prefix to run forward-only, which BatchNorm layers use batch
statistics, and from which epoch early stopping may count its patience
(``final_stage_epoch``, so a staged run is never stopped half-unfrozen).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax

from medft_jax.models.blocks import BlockPartition, path_str
from medft_jax.strategies.freeze import HEAD
from medft_jax.strategies.rgn import Prepass

PyTree = Any
FROZEN_BN_MODES = ("update", "freeze")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Which parameters train in which epoch, for one strategy on one params tree.

    Every parameter leaf belongs to a block of the partition and to a
    *group* (the unit that starts training together: a block, or the new
    head ``'new_head'``, or e.g. BitFit's ``'bias'``). A group starts training at its
    start epoch and trains from then on; ``None`` means never.
    """

    strategy: str
    blocks: tuple[str, ...]
    """Block names, input to output."""
    leaves: tuple[tuple[str, str, str], ...]
    """``(path, block, group)`` of every parameter leaf, in tree order."""
    start_epochs: tuple[tuple[str, int | None], ...]
    """``(group, first epoch it trains or None)`` for every group present."""
    steps_per_epoch: int | None = None
    frozen_bn: str = "update"
    """``'update'``: every BatchNorm uses batch statistics and updates its
    running statistics, frozen or not (the authors' code keeps the whole
    model in train mode). ``'freeze'``: BatchNorm layers whose parameters
    are frozen run in inference mode."""
    prepass: Prepass | None = None
    """Gradient evaluations the loop makes before each epoch, updating
    nothing (Auto-RGN's ``rgn_mode='prepass'``); None: none."""

    def __post_init__(self) -> None:
        if self.frozen_bn not in FROZEN_BN_MODES:
            raise ValueError(f"frozen_bn must be one of {FROZEN_BN_MODES}, got {self.frozen_bn!r}")
        missing = {g for _, _, g in self.leaves} - set(self._starts)
        if missing:
            raise ValueError(f"schedule {self.strategy!r}: no start epoch for groups {missing}")

    @classmethod
    def build(
        cls,
        strategy: str,
        params: PyTree,
        partition: BlockPartition,
        group_of: Callable[[str], str],
        start_epochs: Mapping[str, int | None],
        *,
        steps_per_epoch: int | None = None,
        frozen_bn: str = "update",
        prepass: Prepass | None = None,
    ) -> Schedule:
        """Labels every leaf of ``params`` with its block and group (``group_of(path)``)."""
        leaves = tuple(
            (path_str(p), partition.block_of(path_str(p)), group_of(path_str(p)))
            for p, _ in jax.tree_util.tree_leaves_with_path(params)
        )
        present = {g for _, _, g in leaves}
        starts = tuple((g, start_epochs.get(g)) for g in start_epochs if g in present)
        extra = present - set(start_epochs)
        if extra:
            raise ValueError(f"schedule {strategy!r}: no start epoch for groups {sorted(extra)}")
        return cls(strategy, partition.names, leaves, starts, steps_per_epoch, frozen_bn, prepass)

    @functools.cached_property
    def _starts(self) -> dict[str, int | None]:
        return dict(self.start_epochs)

    @functools.cached_property
    def _by_path(self) -> dict[str, tuple[str, str]]:
        return {p: (b, g) for p, b, g in self.leaves}

    # --- per group -------------------------------------------------------

    def start_epoch(self, group: str) -> int | None:
        """The first epoch in which ``group`` trains (None: never)."""
        return self._starts[group]

    def start_step(self, group: str) -> int | None:
        """The first update number (0-based) at which ``group`` trains (None: never)."""
        start = self._starts[group]
        if start is None or start == 0:
            return start
        if self.steps_per_epoch is None:
            raise ValueError(f"schedule {self.strategy!r}: stages need steps_per_epoch")
        return int(start * self.steps_per_epoch)  # a numpy count: a plain int, as printed

    @property
    def start_steps(self) -> dict[str, int | None]:
        """``{group: start_step(group)}``: what :func:`.freeze.staged` takes."""
        return {g: self.start_step(g) for g in self._starts}

    @property
    def final_stage_epoch(self) -> int:
        """The first epoch of the final stage: early stopping counts patience from here."""
        return max((s for s in self._starts.values() if s is not None), default=0)

    @property
    def stage_epochs(self) -> tuple[int, ...]:
        """The epochs at which a stage begins (always starts with 0)."""
        return tuple(sorted({0} | {s for s in self._starts.values() if s is not None}))

    def group_of(self, path: str) -> str:
        return self._by_path[path][1]

    # --- per epoch -------------------------------------------------------

    def _check(self, epoch: int) -> None:
        if isinstance(epoch, jax.core.Tracer):  # traced: see trainable_mask
            return
        try:  # stages are whole epochs: 1.5 read as 1; inf and NaN are none
            whole = epoch >= 0 and float(epoch).is_integer()
        except (TypeError, ValueError, OverflowError):
            whole = False
        if not whole:
            raise ValueError(f"epoch must be a whole number >= 0, got {epoch}")

    def is_trainable(self, path: str, epoch: int) -> bool:
        """Whether the parameter at ``path`` receives updates in ``epoch``."""
        self._check(epoch)
        if path not in self._by_path:  # params other than the ones make() was given
            known = next(iter(self._by_path), None)
            raise KeyError(
                f"schedule: parameter {path!r} is not one of the params make() was given "
                f"({len(self._by_path)} leaves, e.g. {known!r}); build the strategy from "
                "the params you train"
            )
        start = self._starts[self._by_path[path][1]]
        return start is not None and epoch >= start

    def trainable_paths(self, epoch: int) -> tuple[str, ...]:
        return tuple(p for p, _, _ in self.leaves if self.is_trainable(p, epoch))

    def trainable_mask(self, params: PyTree, epoch: int) -> PyTree:
        """A pytree of bools like ``params``: True where the leaf trains in ``epoch``.

        ``epoch`` may be traced (inside ``jit``, the epoch an argument of the step): the
        leaves that train from some epoch on are then boolean arrays, those that never
        train ``False``."""
        return jax.tree_util.tree_map_with_path(
            lambda p, _: self.is_trainable(path_str(p), epoch), params
        )

    def trainable_blocks(self, epoch: int) -> tuple[str, ...]:
        """Blocks (input to output) with at least one parameter training in ``epoch``.

        E.g. linear probing on VGG-19 trains only ``classifier/6`` (the
        head), so its ``classifier`` block is listed, partly trained.
        """
        live = {b for p, b, _ in self.leaves if self.is_trainable(p, epoch)}
        return tuple(b for b in self.blocks if b in live)

    def frozen_blocks(self, epoch: int) -> tuple[str, ...]:
        """Blocks none of whose parameters train in ``epoch``."""
        live = set(self.trainable_blocks(epoch))
        return tuple(b for b in self.blocks if b not in live)

    def frozen_prefix(self, epoch: int) -> int:
        """How many leading blocks (from the input) are frozen: they may run forward-only."""
        frozen = set(self.frozen_blocks(epoch))
        n = 0
        for b in self.blocks:
            if b not in frozen:
                break
            n += 1
        return n

    def bn_train(self, epoch: int) -> bool | frozenset[str]:
        """The models' ``bn_train`` argument for ``epoch``.

        ``True`` under ``frozen_bn='update'``; under ``'freeze'`` the blocks
        with a trainable non-head parameter (the head is a Linear layer, so
        e.g. DenseNet's ``norm5`` stays in inference mode during LP).
        """
        if self.frozen_bn == "update":
            return True
        return frozenset(b for p, b, g in self.leaves if g != HEAD and self.is_trainable(p, epoch))

    def head_only(self, epoch: int, batchnorm: bool = True) -> bool:
        """Whether only the head trains in ``epoch`` and every other layer is a fixed function.

        True under ``frozen_bn='freeze'`` for linear probing and LP-FT's LP
        phase, and for G-LF's first stage only where the last block is the
        head alone (ResNet's ``fc``; DenseNet's last block is ``norm5`` +
        ``classifier`` and VGG's is fc6-fc8, which G-LF trains whole in
        epoch 0). The backbone then maps an image to the same features
        every epoch, so they can be computed once (:mod:`medft_jax.features`).
        Under ``'update'`` the frozen layers' BatchNorms use the batch's
        statistics and this is False, unless the model has no BatchNorm
        (``batchnorm=False``: VGG-19), whose frozen layers are a fixed function
        in either mode.
        """
        if self.frozen_bn != "freeze" and batchnorm:
            return False
        trained = [g for p, _, g in self.leaves if self.is_trainable(p, epoch)]
        return bool(trained) and all(g == HEAD for g in trained)

    def num_trainable(self, params: PyTree, epoch: int) -> int:
        """How many scalars train in ``epoch``."""
        return sum(
            int(x.size)
            for x, t in zip(
                jax.tree.leaves(params),
                jax.tree.leaves(self.trainable_mask(params, epoch)),
                strict=True,
            )
            if t
        )
