"""Successive halving over strategies x learning rates: pick a strategy cheaply.

The arms are (strategy, lr) runs of one dataset and arch at one seed.
Every arm trains a first budget (in epochs, counted in train steps, so a
fraction of an epoch is a budget); the best ``1/eta`` by validation
primary metric (the best validation so far; ties broken by a
threshold-free second metric) continue to ``eta`` times the budget, and
so on, until one arm is left or the survivors reach the maximum epochs.
Arms are not restarted between rungs: each continues from its own resume
checkpoint (:func:`medft_jax.fit.run_one` with ``stop_after_steps``), so a
batch is never trained twice, and an arm that early-stops keeps its score.
:func:`successive_halving` runs the rungs through a
:class:`medft_jax.session.Session`, the one way every run is run.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medft_jax import atomic, results
from medft_jax.config import RunConfig
from medft_jax.data.errors import BatchTooLarge, DataError
from medft_jax.errors import BusyError, UserError, json_loads
from medft_jax.names import lr_text
from medft_jax.outcomes import BUSY, DIVERGED, DONE, STOPPED

if TYPE_CHECKING:  # JAX comes with the session: imported where a rung runs, not on --help
    from medft_jax.session import Session


@dataclasses.dataclass
class Arm:
    """One (strategy, lr) of the selection and what it has trained so far."""

    strategy: str
    lr: float
    config: Any
    score: float = math.nan
    tiebreak: float = math.nan
    """A threshold-free second metric at the best validation (see :func:`tiebreak_metric`)."""
    epochs: float = 0.0
    seconds: float = 0.0
    finished: bool = False
    failed: str | None = None

    @property
    def label(self) -> str:
        return f"{self.strategy} @ lr {lr_text(self.lr)}"


def rung_budgets(min_epochs: float, eta: int, max_epochs: int) -> list[float]:
    """Epoch budgets of the rungs: min, min*eta, min*eta^2, ... capped at (and ending in) max."""
    budgets = [min(min_epochs, max_epochs)]
    while budgets[-1] < max_epochs:
        budgets.append(min(budgets[-1] * eta, max_epochs))
    return budgets


def rung_steps(
    min_epochs: float, eta: int, max_epochs: int, steps_per_epoch: int
) -> list[tuple[float, int]]:
    """The rungs as (epochs, train steps): :func:`rung_budgets` rounded to whole steps. A
    rung that rounds to the next one's steps is dropped (0.95, 1.9 and 2 epochs of 4 steps
    are 4, 8 and 8 steps): it would halve the arms again with no training between."""
    plan = [(b, round(b * steps_per_epoch)) for b in rung_budgets(min_epochs, eta, max_epochs)]
    return [
        r for r, after in zip(plan, [*plan[1:], None], strict=True) if not after or after[1] != r[1]
    ]


def survivors(arms: Sequence[Arm], eta: int) -> list[Arm]:
    """The best ``ceil(n / eta)`` arms by score, then tie-break (failed and NaN last), and
    every arm tied on both with the last one kept.

    Equal scores are common early: accuracy on a small validation set
    moves in steps of one image, and after a few steps most arms still
    predict one class. The tie-break metric ranks those. Arms tied on both
    are the same model so far (LP-FT in its LP stage and G-LF's head-only
    first epoch are LP at the same LR): grid order would keep LP and drop
    the others before they ever differ, so they all go on.
    """
    keep = max(1, math.ceil(len(arms) / eta))
    ranked = sorted(
        enumerate(arms),
        key=lambda ia: (_rank_key(ia[1]), ia[0]),
    )
    kept = [a for _, a in ranked[:keep]]
    last = _rank_key(kept[-1]) if kept else None
    tied = [a for _, a in ranked[keep:] if not _failed(a) and _rank_key(a) == last]
    return kept + tied


def _rung_text(arm: Arm, alive: Sequence[Arm], tiebreak: str, budget: float | None = None) -> str:
    """``lp @ lr 0.001 0.7188``, with the tie-break where another arm has the same score
    (it decided between them), ``diverged`` for an arm that diverged, and ``(stopped
    early at 4 epochs)`` for one early stopping ended before this rung's ``budget`` (its
    score is its best before then: it read as trained to the budget)."""
    if arm.failed:
        return f"{arm.label} diverged"
    tied = any(b is not arm and not _failed(b) and b.score == arm.score for b in alive)
    extra = f" ({tiebreak} {arm.tiebreak:.4f})" if tied and not math.isnan(arm.tiebreak) else ""
    if budget is not None and arm.finished and arm.epochs < budget - 1e-9:
        extra += f" (stopped early at {arm.epochs:g} epochs)"
    return f"{arm.label} {arm.score:.4f}{extra}"


def _why_not(arm: Arm, alive: Sequence[Arm]) -> str:
    """Why ``arm`` is not the pick: its failure, or the rung that left it (not "no finite
    validation" for an arm that had one and was outranked before the survivors diverged)."""
    if arm.failed:
        return f"{arm.label}: {arm.failed}"
    if math.isnan(arm.score):
        return f"{arm.label}: no finite validation"
    left = "" if any(arm is a for a in alive) else "left at an earlier rung, "
    return f"{arm.label}: {left}val {arm.score:.4f}"


def _failed(arm: Arm) -> bool:
    return arm.failed is not None or math.isnan(arm.score)


def _rank_key(arm: Arm) -> tuple[bool, float, float]:
    return (_failed(arm), -_num(arm.score), -_num(arm.tiebreak))


def tiebreak_metric(primary: str) -> str:
    """AUROC, or mAP where AUROC is the primary metric: continuous where accuracy is not."""
    return "map" if primary == "auroc" else "auroc"


def successive_halving(
    arms: list[Arm],
    session: Session,
    *,
    min_epochs: float,
    eta: int,
    max_epochs: int,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs the rungs over ``arms`` (one dataset and arch); returns the outcome.

    The outcome holds the pick (strategy, lr, its validation score), every
    rung's scores and the cost actually trained (epochs and seconds; an arm that diverged
    counts its steps up to the divergence and that rung's wall seconds).
    """
    try:
        for arm in arms:  # the runs' identity covers the data and the starting weights
            arm.config = session.identify(arm.config)  # every process has the data, or none
        first = arms[0].config
        dataset = session.dataset(first)
    except BatchTooLarge as e:  # a selection has no --batch-size
        raise UserError(e.said("the grid's settings['batch_size']")) from None
    steps_per_epoch = dataset.steps_per_epoch(first.batch_size)
    if min_epochs * steps_per_epoch < 1:
        raise DataError(
            f"--min-epochs {min_epochs:g} is under one train step: {first.dataset} has "
            f"{steps_per_epoch} steps per epoch at batch size {first.batch_size}"
        )
    if round(min_epochs * steps_per_epoch) >= max_epochs * steps_per_epoch:
        raise DataError(
            f"--min-epochs {min_epochs:g} is {round(min_epochs * steps_per_epoch)} train steps "
            f"of {first.dataset}, a whole run of {max_epochs} epochs ({steps_per_epoch} steps "
            "each): the first rung must be shorter than a run"
        )
    from medft_jax.metrics import metric_name, primary_metric

    primary = primary_metric(first.dataset, dataset.multilabel)
    shown = metric_name(primary, dataset.multilabel, dataset.num_classes)
    alive, rungs = list(arms), []
    plan = rung_steps(min_epochs, eta, max_epochs, steps_per_epoch)
    at = {steps for _, steps in plan}
    for budget, steps in plan:
        for arm in alive:  # the arms scored at this rung, before any of them trains for it
            _check_rescorable(arm, session.out, steps, steps_per_epoch)
        for arm in alive:
            if not (arm.finished or arm.failed):
                _advance(arm, session, steps, primary, steps_per_epoch, at)
        rungs.append(_rung(budget, steps, alive))
        say(
            f"rung at {budget:.3g} epoch(s), {steps} steps, val {shown}: "
            + ", ".join(_rung_text(a, alive, tiebreak_metric(primary), budget) for a in alive)
        )
        if budget >= max_epochs:
            break
        alive = survivors(alive, eta)
        viable = [a for a in alive if not _failed(a)]
        if len(viable) <= 1:  # the pick (a diverged arm kept beside it cannot win), or none
            alive = viable or alive
            break
    best = survivors(alive, len(alive))
    pick = best[0]
    if _failed(pick):
        raise UserError(
            f"no pick for {first.dataset} ({first.arch}): every arm still in the selection "
            f"diverged or has no finite validation {primary}: "
            + "; ".join(_why_not(a, alive) for a in arms)
        )
    if len(best) > 1:  # equal on validation: the first in grid order is named, the tie said
        say(
            f"tie: {', '.join(a.label for a in best)} have equal validation {shown} and "
            f"{tiebreak_metric(primary)} (the same model so far, or a validation set too "
            "small to tell them apart); the first is picked"
        )
    return {
        "dataset": first.dataset,
        "arch": first.arch,
        "seed": first.seed,
        "eta": eta,
        "min_epochs": min_epochs,
        "max_epochs": max_epochs,
        "pick": {
            "strategy": pick.strategy,
            "lr": pick.lr,
            "val": pick.score,
            # The options it ran with (a grid's alpha, --rgn-mode prepass): rerun without
            # them, the pick is the default-option run instead.
            "strategy_options": dict(getattr(pick.config, "strategy_options", ()) or ()),
        },
        "tied_with": [{"strategy": a.strategy, "lr": a.lr} for a in best[1:]],
        "metric": primary,
        "metric_label": shown,
        "tiebreak_metric": tiebreak_metric(primary),
        "rungs": rungs,
        "cost": {
            "epochs": sum(a.epochs for a in arms),
            "seconds": sum(a.seconds for a in arms),
            "arms": len(arms),
        },
    }


def _trained(epochs: Sequence[Any], partial: dict[str, Any] | None, steps_per_epoch: int) -> int:
    """Train steps an arm has taken: its whole epochs and its partial epoch's steps."""
    return len(epochs) * steps_per_epoch + (partial["steps"] if partial else 0)


def _check_rescorable(arm: Arm, out: str | Path, steps: int, steps_per_epoch: int) -> None:
    """Refuses, before any arm trains for the rung at ``steps``, an arm still in the
    selection that an earlier selection in ``out`` trained past that rung, which ends
    inside an epoch, without keeping its validation there (:func:`score_arm` refused it
    when it came to score the arm: after the rung's other arms had trained, hours on a
    real grid, for the same remedy). An arm dropped at an earlier rung is never scored
    there, and not asked."""
    run = results.run_dir(out, arm.config.to_dict())
    if not run.is_dir():
        return
    record = results.record_path(out, arm.config.to_dict())
    if record.is_file():
        trained = _trained(results.read_record(record).get("epochs", []), None, steps_per_epoch)
    else:
        from medft_jax.checkpoints.run import RunCheckpoints

        progress = RunCheckpoints(run).read_progress() or {}
        trained = _trained(progress.get("epochs", []), progress.get("partial"), steps_per_epoch)
    kept = _read_kept(run / RUNG_VALIDATIONS)
    if trained > steps and steps % steps_per_epoch and steps not in kept:
        raise _unkept(arm, out, trained, steps)


def _unkept(arm: Arm, out: str | Path, trained: int, steps: int) -> UserError:
    """An arm trained past a rung inside an epoch without its validation there kept (an
    earlier selection of other rungs in ``out``): its score at the rung is lost."""
    return UserError(
        f"--out {out}: arm {arm.label} has trained {trained} steps, past this selection's "
        f"rung at {steps}, and its validation at step {steps} was not kept; give the "
        "selection a new --out"
    )


def _advance(
    arm: Arm, session: Session, steps: int, primary: str, steps_per_epoch: int, at: set[int]
) -> None:
    """Trains ``arm`` up to ``steps`` train steps in all and scores it (``at``: the steps
    every rung of this selection ends at)."""
    o = session.run(arm.config, stop_after_steps=steps)
    if o.kind == DIVERGED:  # what it trained up to the divergence was spent too
        arm.failed = o.error
        step = getattr(o.exception, "step", None)
        reached = steps if step is None else min(step, steps)
        arm.epochs = max(arm.epochs, reached / steps_per_epoch)
        arm.seconds += o.seconds  # the call's wall seconds: its epochs' are not recorded
        return
    if o.kind == BUSY:  # another selection (or a sweep) trains this arm: not scorable
        raise BusyError(
            f"--out {session.out}: arm {arm.label} is {o.error} (another selection, or a "
            "sweep or run given this --out); give each selection its own --out"
        )
    if o.kind not in (DONE, STOPPED) and o.exception is not None:
        raise o.exception
    score_arm(arm, o.record or {}, session.out, primary, steps_per_epoch, steps=steps, at=at)


def _rung(budget: float, steps: int, alive: list[Arm]) -> dict[str, Any]:
    return {
        "epochs": budget,
        "steps": steps,
        "arms": [
            {
                "arm": a.label,
                "score": a.score,
                "tiebreak": a.tiebreak,
                "epochs": a.epochs,
                "failed": a.failed,
            }
            for a in alive
        ],
    }


def score_arm(
    arm: Arm,
    record: dict[str, Any],
    out: str | Path,
    primary: str,
    steps_per_epoch: int,
    *,
    steps: int | None = None,
    at: set[int] | None = None,
) -> None:
    """Updates the arm from its record (finished) or its resume checkpoint (stopped).

    The score is the best validation (by primary metric, then tie-break
    metric) the arm has had within the rung's ``steps``: of its epochs, of
    the partial epoch it stopped in, and of the earlier rungs' partial
    epochs (whose validation the resume checkpoint drops once the epoch is
    finished, so they are kept beside it in :data:`RUNG_VALIDATIONS`).
    Its cost counts the steps and seconds of its epochs and partial epoch.

    An arm that has trained past ``steps`` (a re-run selection, or an
    earlier one with larger budgets in the same ``--out``) is scored as if
    it had stopped at ``steps``: on its epochs up to there and the partial
    validations kept, never on a later epoch the other arms have not
    reached. Where its validation at ``steps`` was never taken, it is
    refused: that score cannot be recovered. ``at``: the steps this
    selection's rungs end at; validations kept at other steps (an earlier
    selection's rungs in the same ``--out``) are not counted, since the arms
    trained afresh never had them (None: every kept one counts).
    """
    if record:
        epochs, partial, arm.finished = record["epochs"], None, True
        metric = record["primary_metric"]
    else:
        from medft_jax.checkpoints.run import RunCheckpoints

        run = results.run_dir(out, arm.config.to_dict())
        progress = RunCheckpoints(run).read_progress() or {}
        epochs, partial = progress.get("epochs", []), progress.get("partial")
        metric = primary
    kept: dict[int, dict[str, Any]] = {}
    if steps is not None:
        kept_file = results.run_dir(out, arm.config.to_dict()) / RUNG_VALIDATIONS
        kept = _read_kept(kept_file)
        trained = _trained(epochs, partial, steps_per_epoch)
        # A Ctrl-C's or SIGTERM's resume point is not validated: no score to keep.
        if partial and partial["val"] and trained <= steps and trained not in kept:
            kept[trained] = {"val": partial["val"], "seconds": partial["seconds"]}
            _write_kept(kept_file, kept)
        if trained > steps:
            whole, extra = divmod(steps, steps_per_epoch)
            if extra and steps not in kept:
                raise _unkept(arm, out, trained, steps)
            epochs, arm.finished = epochs[:whole], False
            partial = {"steps": extra, **kept[steps]} if extra else None
        kept = {k: v for k, v in kept.items() if k <= steps and (at is None or k in at)}
    vals = [e["val"] for e in epochs] + [k["val"] for k in kept.values()]
    vals += [partial["val"]] if partial else []
    second = tiebreak_metric(metric)
    ranked = [
        (v[metric], _num(v.get(second, math.nan)))
        for v in vals
        if v.get(metric) is not None and math.isfinite(v[metric])
    ]
    if math.isfinite(arm.score):  # an earlier rung's best
        ranked.append((arm.score, _num(arm.tiebreak)))
    arm.score, tiebreak = max(ranked) if ranked else (math.nan, math.nan)
    arm.tiebreak = tiebreak if math.isfinite(tiebreak) else math.nan
    arm.epochs = len(epochs) + (partial["steps"] / steps_per_epoch if partial else 0)
    arm.seconds = float(sum(e["seconds"] for e in epochs)) + (partial["seconds"] if partial else 0)


RUNG_VALIDATIONS = "rung_validations.json"
"""Beside an arm's checkpoints: its validations inside an epoch (by train step), score and
seconds, which the resume checkpoint drops once that epoch finishes."""


_KEPT_HASH = "sha256"
"""The key of :data:`RUNG_VALIDATIONS` holding the content hash of the rest: these scores
rank the arms, so a flipped bit would change the pick without a word."""


def _write_kept(path: Path, kept: dict[int, dict[str, Any]]) -> None:
    body = {str(k): v for k, v in kept.items()}
    atomic.write_bytes(path, json.dumps({**body, _KEPT_HASH: results.content_hash(body)}).encode())


def _read_kept(path: Path) -> dict[int, dict[str, Any]]:
    """The kept validations; files written before they carried a hash are read unchecked."""
    try:
        body = json_loads(path.read_text())
        recorded = body.pop(_KEPT_HASH, None)
        if recorded is not None and recorded != results.content_hash(body):
            raise ValueError("its contents hash to another value than the one saved")
        return {int(k): v for k, v in body.items()}
    except FileNotFoundError:
        return {}
    except (ValueError, AttributeError) as e:
        raise UserError(
            f"{path}: not the rung validations this selection wrote ({e}); give the selection "
            "a new --out"
        ) from e


def _num(x: float) -> float:
    return -math.inf if math.isnan(x) else x


__all__ = [
    "Arm",
    "RunConfig",
    "rung_budgets",
    "score_arm",
    "successive_halving",
    "survivors",
    "tiebreak_metric",
]
