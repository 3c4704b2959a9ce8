"""Early stopping on one validation value per epoch, with the spec's staged-patience rule.

The rule (``shared/spec/strategies.md``, "Early stopping with staged
strategies"): patience counts only from the first epoch of a strategy's
final stage (``start_epoch`` = the schedule's ``final_stage_epoch``), so a
gradually unfrozen or LP-FT run is never stopped half-unfrozen; the best
epoch is chosen over the whole run, earlier stages included (LP-FT's best
may be a linear-probing epoch).

Exactly, with ``patience = P``:

* An epoch *improves* when its value is finite and strictly better than
  the best so far (``> best + min_delta`` for ``mode="max"``,
  ``< best - min_delta`` for ``"min"``; ``min_delta`` defaults to 0). The
  first finite value always improves. A tie does not improve, so the
  earliest of equal values stays the best. NaN (an undefined metric) and
  ±inf never improve: they count as epochs without improvement.
* An epoch without improvement counts against patience only when
  ``epoch >= start_epoch``. An improvement resets the count to 0.
* The run stops after the epoch where the count reaches P, i.e. after P
  consecutive counted epochs without improvement. With ``start_epoch = 3``
  and P = 5, a run whose best is epoch 1 stops after epoch 7 (epochs 3-7
  counted), never earlier. ``patience=None`` or ``0`` never stops (early
  stopping off, as ``--patience 0``; the best epoch is still tracked).
* Once stopped it stays stopped: later updates still track the best but
  always say ``stop``.

The state is a small JSON-serialisable dict (:meth:`EarlyStopping.state_dict`,
:meth:`EarlyStopping.from_state`), saved with each training checkpoint so
that a resumed run takes the decisions an uninterrupted one takes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from medft_jax.errors import whole_number

MODES = ("max", "min")
STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Decision:
    """What one epoch's value means for the run."""

    improved: bool
    """This epoch is the new best: save its parameters as the best checkpoint."""
    stop: bool
    """Patience is spent: end training after this epoch."""
    best_epoch: int | None
    """The best epoch so far (this one when ``improved``); None while no value was finite."""
    best_value: float | None
    """Its value."""
    bad_epochs: int
    """Counted epochs without improvement since the last improvement (or ``start_epoch``)."""


class EarlyStopping:
    """Tracks the best epoch and decides when to stop (the rule is in the module docstring).

    Args:
      patience: counted epochs without improvement before stopping; None
        or 0 disables stopping (the best epoch is still tracked).
      mode: ``"max"`` for metrics where higher is better (all of
        :mod:`medft_jax.metrics`), ``"min"`` for losses.
      start_epoch: first epoch that counts against patience (the strategy
        schedule's ``final_stage_epoch``; 0 for single-stage strategies).
      min_delta: how much better than the best a value must be to improve.
    """

    def __init__(
        self,
        patience: int | None = 5,
        mode: str = "max",
        start_epoch: int = 0,
        min_delta: float = 0.0,
    ) -> None:
        if patience is not None and not (whole_number(patience) and patience >= 0):  # 1.9 read as 1
            raise ValueError(f"patience must be an integer >= 0 (0: off) or None; got {patience!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
        if not (whole_number(start_epoch) and start_epoch >= 0):
            raise ValueError(f"start_epoch must be an integer >= 0; got {start_epoch!r}")
        if not (math.isfinite(min_delta) and min_delta >= 0):
            raise ValueError(f"min_delta must be a finite number >= 0; got {min_delta!r}")
        self.patience = None if patience is None else int(patience)
        self.mode = mode
        self.start_epoch = int(start_epoch)
        self.min_delta = float(min_delta)
        self.best_epoch: int | None = None
        self.best_value: float | None = None
        self.bad_epochs = 0
        self.last_epoch: int | None = None
        self.stopped = False

    def is_better(self, value: float) -> bool:
        """Whether ``value`` would improve on the best so far (strictly, finite only)."""
        if not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        if self.mode == "max":
            return value > self.best_value + self.min_delta
        return value < self.best_value - self.min_delta

    def update(self, epoch: int, value: float | None) -> Decision:
        """Takes epoch ``epoch``'s validation value (None is read as NaN); returns the decision.

        Epochs must be fed in increasing order, each once: a repeated or
        earlier epoch raises ``ValueError`` (it means a resume went wrong).
        """
        epoch = int(epoch)
        if self.last_epoch is not None and epoch <= self.last_epoch:
            raise ValueError(
                f"early stopping got epoch {epoch} after epoch {self.last_epoch}; "
                "epochs must increase (was a run resumed from the wrong checkpoint?)"
            )
        value = math.nan if value is None else float(value)
        self.last_epoch = epoch
        improved = self.is_better(value)
        if improved:
            self.best_epoch, self.best_value, self.bad_epochs = epoch, value, 0
        elif epoch >= self.start_epoch:
            self.bad_epochs += 1
        if self.patience and self.bad_epochs >= self.patience:
            self.stopped = True
        return Decision(improved, self.stopped, self.best_epoch, self.best_value, self.bad_epochs)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, as JSON-compatible values (no NaN: best is finite)."""
        return {
            "version": STATE_VERSION,
            "patience": self.patience,
            "mode": self.mode,
            "start_epoch": self.start_epoch,
            "min_delta": self.min_delta,
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "bad_epochs": self.bad_epochs,
            "last_epoch": self.last_epoch,
            "stopped": self.stopped,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EarlyStopping:
        """Rebuilds the object :meth:`state_dict` described (e.g. from a checkpoint)."""
        expected = set(cls().state_dict())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"not an early-stopping state: missing {missing}, unexpected {extra}")
        if state["version"] != STATE_VERSION:
            raise ValueError(f"early-stopping state version {state['version']} != {STATE_VERSION}")
        es = cls(state["patience"], state["mode"], state["start_epoch"], state["min_delta"])
        es.best_epoch = None if state["best_epoch"] is None else int(state["best_epoch"])
        es.best_value = None if state["best_value"] is None else float(state["best_value"])
        es.bad_epochs = int(state["bad_epochs"])
        es.last_epoch = None if state["last_epoch"] is None else int(state["last_epoch"])
        es.stopped = bool(state["stopped"])
        return es

    def __repr__(self) -> str:
        return (
            f"EarlyStopping(patience={self.patience}, mode={self.mode!r}, "
            f"start_epoch={self.start_epoch}, best_epoch={self.best_epoch}, "
            f"best_value={self.best_value}, bad_epochs={self.bad_epochs}, stopped={self.stopped})"
        )
