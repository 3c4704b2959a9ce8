"""Successive halving's scoring, by hand (the rungs end to end are in test_sweep.py)."""

from __future__ import annotations

import json
import math

import pytest

from medft_jax import results
from medft_jax.config import RunConfig
from medft_jax.errors import UserError
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


def _val(accuracy: float, auroc: float = 0.5) -> dict:
    return {"accuracy": accuracy, "auroc": auroc}


def test_an_arm_trained_past_the_rung_is_scored_at_the_rung(tmp_path):
    """A re-run selection finds an arm's finished record: it competes at the rung's steps only.

    Epoch 2's 0.99 is past a 2-epoch rung, where the other arms stand; scoring it there
    would pick this arm on budget the others never had.
    """
    config = RunConfig(strategy="lp")
    record = {
        "epochs": [
            {"val": _val(0.6), "seconds": 1.0},
            {"val": _val(0.7), "seconds": 1.0},
            {"val": _val(0.99), "seconds": 1.0},
        ],
        "primary_metric": "accuracy",
    }
    arm = Arm("lp", 1e-4, config)
    score_arm(arm, record, tmp_path, "accuracy", steps_per_epoch=6, steps=12)
    assert (arm.score, arm.epochs, arm.seconds, arm.finished) == (0.7, 2, 2.0, False)
    score_arm(arm, record, tmp_path, "accuracy", steps_per_epoch=6, steps=36)
    assert (arm.score, arm.epochs, arm.finished) == (0.99, 3, True)


def test_a_validation_inside_an_epoch_outlives_its_checkpoint(tmp_path, monkeypatch):
    """Half an epoch's validation is kept beside the run: a re-run at that rung scores it,
    and an arm trained past a rung whose validation was never taken is refused."""
    from medft_jax.checkpoints import run as run_ckpt

    config = RunConfig(strategy="lp")
    state = {"epochs": [], "partial": {"steps": 3, "val": _val(0.8), "seconds": 0.5}}
    monkeypatch.setattr(run_ckpt.RunCheckpoints, "read_progress", lambda self: state)
    arm = Arm("lp", 1e-4, config)
    score_arm(arm, {}, tmp_path, "accuracy", steps_per_epoch=6, steps=3)
    assert (arm.score, arm.epochs, arm.seconds) == (0.8, 0.5, 0.5)
    # The arm went on to finish epoch 0 (its checkpoint dropped the half epoch's 0.8) and more.
    state = {
        "epochs": [{"val": _val(0.6), "seconds": 1.0}, {"val": _val(0.9), "seconds": 1.0}],
        "partial": None,
    }
    again = Arm("lp", 1e-4, config)  # a re-run selection starts from no score
    score_arm(again, {}, tmp_path, "accuracy", steps_per_epoch=6, steps=3)
    assert (again.score, again.epochs, again.seconds) == (0.8, 0.5, 0.5)
    score_arm(again, {}, tmp_path, "accuracy", steps_per_epoch=6, steps=6)
    assert (again.score, again.epochs) == (0.8, 1)  # best of 0.8 (half) and 0.6 (epoch 0)
    with pytest.raises(
        UserError,
        match=r"arm lp @ lr 0.0001 has trained 12 steps, past this selection's rung at 4, "
        r"and its validation at step 4 was not kept; give the selection a new --out",
    ):
        score_arm(Arm("lp", 1e-4, config), {}, tmp_path, "accuracy", 6, steps=4)


def test_an_arm_past_an_unkept_rung_is_refused_before_the_rung_trains(tmp_path, monkeypatch):
    """Refused only when it came to be scored, after the rung's other arms had trained
    (52 s on a toy grid; hours on a real one) for the same remedy, a new --out; checked
    per rung, for the arms still in: one dropped earlier is never scored there."""
    from medft_jax import halving
    from medft_jax.checkpoints import run as run_ckpt

    config = RunConfig(strategy="lp")
    arm = Arm("lp", 1e-4, config)
    halving._check_rescorable(arm, tmp_path, 4, 6)  # no folder: nothing trained
    results.run_dir(tmp_path, config.to_dict()).mkdir(parents=True)
    state = {"epochs": [{"val": _val(0.6), "seconds": 1.0}] * 2, "partial": None}
    monkeypatch.setattr(run_ckpt.RunCheckpoints, "read_progress", lambda self: state)
    with pytest.raises(
        UserError,
        match=r"arm lp @ lr 0.0001 has trained 12 steps, past this selection's rung at 4, "
        r"and its validation at step 4 was not kept; give the selection a new --out",
    ):
        halving._check_rescorable(arm, tmp_path, 4, 6)
    halving._check_rescorable(arm, tmp_path, 6, 6)  # an epoch's end: scored from its epochs
    kept = results.run_dir(tmp_path, config.to_dict()) / halving.RUNG_VALIDATIONS
    halving._write_kept(kept, {4: {"val": _val(0.7), "seconds": 0.5}})
    halving._check_rescorable(arm, tmp_path, 4, 6)  # its validation there was kept


def test_rungs_rounding_to_the_same_step_are_one_rung():
    from medft_jax.halving import rung_steps

    # 0.95, 1.9 and 2 epochs of 4 steps: 4, 8 and 8 steps; halving twice at step 8 would
    # drop arms with no training between.
    assert rung_steps(0.95, 2, 2, 4) == [(0.95, 4), (2, 8)]
    assert rung_steps(0.5, 3, 2, 6) == [(0.5, 3), (1.5, 9), (2, 12)]


def test_an_earlier_selections_validation_at_another_step_is_not_counted(tmp_path, monkeypatch):
    """A selection re-run in the same --out with other budgets: the half-epoch validation
    its predecessor kept at step 3 is no rung of this one, where the fresh arms had none."""
    from medft_jax.checkpoints import run as run_ckpt

    config = RunConfig(strategy="lp")
    state = {"epochs": [], "partial": {"steps": 3, "val": _val(0.9), "seconds": 0.5}}
    monkeypatch.setattr(run_ckpt.RunCheckpoints, "read_progress", lambda self: state)
    score_arm(Arm("lp", 1e-4, config), {}, tmp_path, "accuracy", 6, steps=3)  # kept at 3
    state = {"epochs": [{"val": _val(0.6), "seconds": 1.0}], "partial": None}
    rerun = Arm("lp", 1e-4, config)
    score_arm(rerun, {}, tmp_path, "accuracy", 6, steps=6, at={6, 12})
    assert (rerun.score, rerun.epochs) == (0.6, 1)
    score_arm(rerun := Arm("lp", 1e-4, config), {}, tmp_path, "accuracy", 6, steps=6, at={3, 6})
    assert rerun.score == 0.9


class _Session:
    """A session over a 4-steps-an-epoch dataset whose runs ``run(config, steps)`` gives."""

    out = "unused"

    def __init__(self, run):
        self.run = run

    def dataset(self, config):
        return type(
            "D", (), {"multilabel": False, "num_classes": 2, "steps_per_epoch": lambda self, b: 4}
        )()

    def identify(self, config):
        return config


def test_when_every_arm_diverges_there_is_no_pick():
    """Not a failed arm named the winner: one line listing why each arm has no score."""
    from medft_jax.halving import successive_halving
    from medft_jax.outcomes import DIVERGED, Outcome

    def diverged(config, stop_after_steps):
        return Outcome(config, DIVERGED, error=f"loss nan at lr {config.lr:g}")

    arms = [Arm("ft", lr, RunConfig(strategy="ft", lr=lr)) for lr in (1e-3, 1e-4)]
    said = []
    with pytest.raises(UserError) as e:
        successive_halving(
            arms, _Session(diverged), min_epochs=1, eta=2, max_epochs=2, say=said.append
        )
    # The rung line says so (it printed the arm's score from before, as if its rung's).
    assert said == [
        "rung at 1 epoch(s), 4 steps, val accuracy: ft @ lr 0.001 diverged, ft @ lr 0.0001 diverged"
    ]
    assert str(e.value) == (
        "no pick for demo (resnet50): every arm still in the selection diverged or has no "
        "finite validation accuracy: ft @ lr 0.001: loss nan at lr 0.001; ft @ lr 0.0001: "
        "loss nan at lr 0.0001"
    )


def test_a_diverged_arm_counts_what_it_trained_and_is_not_kept_as_a_survivor(monkeypatch):
    """An arm diverging inside rung 2 kept its rung-1 cost (select's "spent" under-counted
    the grid's share); an arm diverged in rung 1 kept beside the one viable arm made it
    train a whole extra rung that could not change the pick."""
    from medft_jax import halving
    from medft_jax.outcomes import DIVERGED, DONE, Outcome
    from medft_jax.train import NonFiniteLossError

    def fake_score(arm, record, out, primary, steps_per_epoch, *, steps=None, at=None):
        arm.score, arm.epochs, arm.seconds = record["score"], steps / steps_per_epoch, steps

    monkeypatch.setattr(halving, "score_arm", fake_score)
    calls = []

    def run(scores, diverge):
        def one(config, stop_after_steps):
            calls.append((config.lr, stop_after_steps))
            at = diverge.get((config.lr, stop_after_steps))
            if at is not None:
                e = NonFiniteLossError(f"training loss became nan at step {at}", step=at)
                return Outcome(config, DIVERGED, error=str(e), exception=e, seconds=5.0)
            return Outcome(config, DONE, record={"score": scores[config.lr]})

        return one

    lrs = (1e-2, 1e-3, 1e-4, 1e-5)
    arms = [Arm("ft", lr, RunConfig(strategy="ft", lr=lr)) for lr in lrs]
    scores = {1e-2: 0.9, 1e-3: 0.8, 1e-4: 0.5, 1e-5: 0.4}
    session = _Session(run(scores, {(1e-2, 8): 6}))  # the leader diverges at step 6 of 8
    out = halving.successive_halving(
        arms, session, min_epochs=1, eta=2, max_epochs=4, say=lambda line: None
    )
    assert out["pick"]["lr"] == 1e-3
    # Rung 1: four arms of 1 epoch (4 s each); rung 2: 1e-3 to 2 epochs (8 s), 1e-2 to
    # step 6 (1.5 epochs) and its rung's 5 wall seconds on top of its 4.
    assert out["cost"]["epochs"] == 1 + 1 + 2 + 1.5
    assert out["cost"]["seconds"] == 4 + 4 + 8 + 9
    # Three arms, two diverged in rung 1: the one viable arm is the pick, trained no further.
    calls.clear()
    arms = [Arm("ft", lr, RunConfig(strategy="ft", lr=lr)) for lr in lrs[:3]]
    session = _Session(run(scores, {(1e-2, 4): 3, (1e-3, 4): 2}))
    out = halving.successive_halving(
        arms, session, min_epochs=1, eta=2, max_epochs=4, say=lambda line: None
    )
    assert out["pick"]["lr"] == 1e-4 and calls == [(1e-2, 4), (1e-3, 4), (1e-4, 4)]
    assert out["cost"]["epochs"] == 0.75 + 0.5 + 1
    assert out["pick"]["strategy_options"] == {}
    # The pick names the options it ran with: rerun without them, it is another run.
    options = (("alpha", 0.1),)
    arms = [Arm("l2_sp", lr, RunConfig("l2_sp", lr=lr, strategy_options=options)) for lr in lrs[:2]]
    out = halving.successive_halving(
        arms, _Session(run(scores, {})), min_epochs=1, eta=2, max_epochs=2, say=lambda line: None
    )
    assert out["pick"]["strategy_options"] == {"alpha": 0.1}


def test_a_first_rung_that_rounds_to_a_whole_run_is_refused():
    """1.9 of 2 epochs at 4 steps an epoch is 8 steps: every arm would train the full run."""
    from medft_jax.data import DataError
    from medft_jax.halving import successive_halving

    def no_run(config, stop_after_steps):
        pytest.fail("trained a rung that is a whole run")

    arms = [Arm("ft", lr, RunConfig(strategy="ft", lr=lr)) for lr in (1e-3, 1e-4)]
    with pytest.raises(DataError, match=r"^--min-epochs 1.9 is 8 train steps of demo, a whole"):
        successive_halving(arms, _Session(no_run), min_epochs=1.9, eta=2, max_epochs=2, say=print)


def test_kept_rung_validations_are_checked_by_their_hash(tmp_path):
    """They rank the arms: a flipped digit in a score would change the pick without a word."""
    from medft_jax import halving

    path = tmp_path / halving.RUNG_VALIDATIONS
    kept = {12: {"val": {"accuracy": 0.75}, "seconds": 1.5}}
    halving._write_kept(path, kept)
    assert halving._read_kept(path) == kept
    path.write_text(path.read_text().replace("0.75", "0.95"))
    with pytest.raises(UserError, match=r"its contents hash to another value than the one saved"):
        halving._read_kept(path)
    path.write_text(json.dumps({"12": {"val": {"accuracy": 0.75}, "seconds": 1.5}}))  # older
    assert halving._read_kept(path) == kept


def test_arms_tied_on_both_metrics_with_the_last_kept_all_survive():
    """LP-FT in its LP stage and G-LF's first epoch are LP at the same LR: grid order kept
    LP and dropped them before they ever differed (LP-FT could never reach its FT stage
    unless LP itself was in the top third)."""
    from medft_jax.halving import survivors

    def arm(strategy, lr, score, tiebreak, failed=None):
        return Arm(strategy, lr, None, score=score, tiebreak=tiebreak, failed=failed)

    ft = arm("ft", 1e-2, 0.656, 0.70)
    lp, lp_ft, g_lf = (arm(s, 1e-3, 0.719, 0.788) for s in ("lp", "lp_ft", "g_lf"))
    lower = [arm("ft", 1e-3, 0.5, 0.6), arm("lp", 1e-2, 0.5, 0.61)]
    broke = arm("g_fl", 1e-3, 0.719, 0.788, failed="loss nan")
    kept = survivors([ft, *lower, lp, lp_ft, g_lf, broke], eta=3)  # ceil(7 / 3) = 3
    assert [a.strategy for a in kept] == ["lp", "lp_ft", "g_lf"]
    kept = survivors([ft, *lower, lp, lp_ft, g_lf], eta=6)  # one kept, its two twins too
    assert [a.strategy for a in kept] == ["lp", "lp_ft", "g_lf"]
    assert [a.strategy for a in survivors([lp, ft, lp_ft], eta=3)] == ["lp", "lp_ft"]
    # A near tie is no tie: the tie-break ranks it.
    near = arm("lp_ft", 1e-3, 0.719, 0.787)
    assert [a.strategy for a in survivors([lp, near, ft], eta=3)] == ["lp"]


def test_a_rung_line_shows_the_tie_break_where_scores_tie():
    from medft_jax.halving import _rung_text

    a = Arm("ft", 1e-3, None, score=0.5, tiebreak=0.8154)
    b = Arm("lp", 1e-3, None, score=0.5, tiebreak=0.7)
    c = Arm("lp_ft", 1e-2, None, score=0.6, tiebreak=0.9)
    d = Arm("g_lf", 1e-2, None, score=0.6, tiebreak=0.9, failed="loss nan")
    texts = [_rung_text(x, [a, b, c, d], "auroc") for x in (a, b, c, d)]
    assert texts == [
        "ft @ lr 0.001 0.5000 (auroc 0.8154)",
        "lp @ lr 0.001 0.5000 (auroc 0.7000)",
        "lp_ft @ lr 0.01 0.6000",
        "g_lf @ lr 0.01 diverged",
    ]
    # An arm early stopping ended before this rung's budget: said, not read as trained to it.
    e = Arm("lp", 1e-4, None, score=0.7, tiebreak=0.8, epochs=4.0, finished=True)
    assert (
        _rung_text(e, [e], "auroc", budget=9) == "lp @ lr 0.0001 0.7000 (stopped early at 4 epochs)"
    )
    assert _rung_text(e, [e], "auroc", budget=4) == "lp @ lr 0.0001 0.7000"
