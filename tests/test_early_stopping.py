"""Early stopping on scripted validation sequences: staged patience, ties, NaN, resume."""

from __future__ import annotations

import json
import math

import pytest

from medft_jax.early_stopping import Decision, EarlyStopping


def run(values: list[float | None], **kwargs) -> tuple[list[Decision], EarlyStopping]:
    """Feeds ``values`` epoch by epoch until a stop; returns the decisions taken."""
    es = EarlyStopping(**kwargs)
    decisions = []
    for epoch, v in enumerate(values):
        decisions.append(es.update(epoch, v))
        if decisions[-1].stop:
            break
    return decisions, es


def test_stops_after_patience_epochs_without_improvement():
    #          0    1    2    3    4    5    6    7    8
    values = [0.5, 0.6, 0.7, 0.6, 0.6, 0.65, 0.69, 0.7, 0.9]
    decisions, es = run(values, patience=5)
    # Best is epoch 2; epochs 3..7 are five without improvement -> stop after epoch 7.
    assert [d.improved for d in decisions] == [True, True, True, False, False, False, False, False]
    assert [d.bad_epochs for d in decisions] == [0, 0, 0, 1, 2, 3, 4, 5]
    assert [d.stop for d in decisions] == [False] * 7 + [True]
    assert (es.best_epoch, es.best_value) == (2, 0.7)


def test_improvement_resets_the_count():
    values = [0.5, 0.4, 0.4, 0.6, 0.5, 0.5, 0.5]
    decisions, es = run(values, patience=3)
    assert [d.bad_epochs for d in decisions] == [0, 1, 2, 0, 1, 2, 3]
    assert decisions[-1].stop and es.best_epoch == 3


def test_patience_counts_only_from_the_final_stage_and_best_may_be_earlier():
    # An LP-FT-like run: best in the linear-probing stage (epoch 1), final stage from epoch 3.
    #          0    1    2    3    4    5    6    7    8
    values = [0.6, 0.8, 0.7, 0.5, 0.6, 0.7, 0.75, 0.79, 0.95]
    decisions, es = run(values, patience=5, start_epoch=3)
    # Epoch 2 does not count (before start_epoch); epochs 3..7 do -> stop after epoch 7.
    assert [d.bad_epochs for d in decisions] == [0, 0, 0, 1, 2, 3, 4, 5]
    assert len(decisions) == 8 and decisions[-1].stop
    assert es.best_epoch == 1 and es.best_value == 0.8
    assert all(d.best_epoch == 1 for d in decisions[1:])


def test_never_stopped_half_unfrozen_even_if_nothing_improves():
    # G-LF with 6 blocks: final stage starts at epoch 5; the best is epoch 0.
    values = [0.9] + [0.1] * 20
    decisions, es = run(values, patience=2, start_epoch=5)
    assert [d.stop for d in decisions].index(True) == 6  # epochs 5 and 6 counted
    assert es.best_epoch == 0


def test_ties_do_not_improve_and_the_earliest_best_stays():
    values = [0.5, 0.7, 0.7, 0.7]
    decisions, es = run(values, patience=2)
    assert [d.improved for d in decisions] == [True, True, False, False]
    assert decisions[-1].stop and es.best_epoch == 1


def test_min_delta_requires_a_margin():
    decisions, _ = run([0.5, 0.505, 0.52], patience=5, min_delta=0.01)
    assert [d.improved for d in decisions] == [True, False, True]


def test_nan_never_improves_and_counts_as_a_bad_epoch():
    values = [math.nan, None, 0.3, math.nan, 0.2, math.inf, 0.31]
    decisions, es = run(values, patience=10)
    assert [d.improved for d in decisions] == [False, False, True, False, False, False, True]
    assert [d.best_epoch for d in decisions] == [None, None, 2, 2, 2, 2, 6]
    assert [d.bad_epochs for d in decisions] == [1, 2, 0, 1, 2, 3, 0]
    assert es.best_value == 0.31


def test_all_nan_stops_with_no_best():
    decisions, es = run([math.nan] * 4, patience=3)
    assert decisions[-1].stop and len(decisions) == 3
    assert es.best_epoch is None and es.best_value is None


def test_min_mode_for_losses():
    decisions, es = run([1.0, 0.8, 0.9, 0.8, 0.7], patience=5, mode="min")
    assert [d.improved for d in decisions] == [True, True, False, False, True]
    assert es.best_value == 0.7


@pytest.mark.parametrize("patience", [None, 0])
def test_patience_none_or_zero_never_stops(patience):
    decisions, es = run([0.5] + [0.1] * 30, patience=patience)
    assert len(decisions) == 31 and not any(d.stop for d in decisions)
    assert es.best_epoch == 0 and decisions[-1].bad_epochs == 30


def test_stop_is_sticky():
    es = EarlyStopping(patience=1)
    es.update(0, 0.5)
    assert es.update(1, 0.4).stop
    later = es.update(2, 0.9)
    assert later.improved and later.stop


def test_resume_mid_sequence_gives_identical_decisions():
    values = [0.6, 0.8, 0.7, math.nan, 0.6, 0.82, 0.7, 0.7, 0.81, 0.7, 0.8, 0.9]
    reference, _ = run(values, patience=4, start_epoch=3)
    for cut in range(1, len(reference)):
        es = EarlyStopping(patience=4, start_epoch=3)
        first = [es.update(e, values[e]) for e in range(cut)]
        state = json.loads(json.dumps(es.state_dict(), allow_nan=False))  # as a checkpoint stores
        resumed = EarlyStopping.from_state(state)
        rest = [resumed.update(e, values[e]) for e in range(cut, len(reference))]
        assert first + rest == reference, f"resumed after epoch {cut - 1}"
        assert resumed.state_dict() == run(values, patience=4, start_epoch=3)[1].state_dict()


def test_epochs_must_increase():
    es = EarlyStopping()
    es.update(0, 0.5)
    with pytest.raises(ValueError, match="epoch 0 after epoch 0"):
        es.update(0, 0.6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"patience": -1},
        {"mode": "maximum"},
        {"start_epoch": -1},
        {"min_delta": -0.1},
        # read by int() as 1 and 2 without a word
        {"patience": 1.9},
        {"start_epoch": 2.7},
        {"patience": True},
    ],
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match=f"^{next(iter(kwargs))} must be"):
        EarlyStopping(**kwargs)


def test_from_state_refuses_something_else():
    state = EarlyStopping().state_dict()
    del state["bad_epochs"]
    with pytest.raises(ValueError, match=r"missing \['bad_epochs'\]"):
        EarlyStopping.from_state(state)


def test_a_run_without_one_finite_validation_is_a_data_error_not_a_crash(tmp_path):
    """No best epoch to test: one line naming the run and the metric, not a RuntimeError."""
    from types import SimpleNamespace

    from medft_jax import fit
    from medft_jax.data.errors import DataError

    stopper = EarlyStopping(patience=5)
    progress = SimpleNamespace(
        epochs=[{"epoch": 0, "val": {"auroc": float("nan")}}], stopper=stopper
    )
    run = SimpleNamespace(progress=progress, config=None, ds=None, primary="auroc")
    with pytest.raises(DataError, match=r"^run r1: no epoch had a finite validation auroc; "):
        fit._finish(run, None, "r1", tmp_path / "record.json")
    assert not (tmp_path / "record.json").exists()
