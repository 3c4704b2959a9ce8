"""Successive halving's scoring, by hand (the rungs end to end are in test_sweep.py)."""

from __future__ import annotations

import math

import pytest

from medft_jax.halving import Arm, score_arm


def _record(*vals: tuple[float, float], seconds: float = 2.0) -> dict:
    epochs = [{"val": {"accuracy": a, "auroc": u}, "seconds": seconds} for a, u in vals]
    return {"epochs": epochs, "primary_metric": "accuracy"}


def test_an_arm_keeps_the_best_validation_of_earlier_rungs():
    """A half epoch's 0.72 outlives the checkpoint that dropped it once epoch 0 finished."""
    arm = Arm("lp", 1e-3, None, score=0.72, tiebreak=0.6)
    score_arm(arm, _record((0.5, 0.9), (0.6, 0.8)), "unused", "accuracy", steps_per_epoch=6)
    assert (arm.score, arm.tiebreak) == (0.72, 0.6)
    assert arm.finished and arm.epochs == 2 and arm.seconds == 4.0
    fresh = Arm("lp", 1e-3, None)
    score_arm(fresh, _record((0.5, 0.9), (0.6, 0.8)), "unused", "accuracy", steps_per_epoch=6)
    assert (fresh.score, fresh.tiebreak) == (0.6, 0.8)
    # Equal scores: the better tie-break wins, whichever rung it came from.
    tied = Arm("lp", 1e-3, None, score=0.6, tiebreak=0.7)
    score_arm(tied, _record((0.6, 0.75)), "unused", "accuracy", steps_per_epoch=6)
    assert (tied.score, tied.tiebreak) == (0.6, 0.75)


def test_an_arm_without_a_finite_validation_scores_nan():
    arm = Arm("lp", 1e-3, None)
    score_arm(arm, _record((math.nan, 0.5)), "unused", "accuracy", steps_per_epoch=6)
    assert math.isnan(arm.score) and math.isnan(arm.tiebreak)
    assert arm.epochs == pytest.approx(1)
