"""Aggregation over seeds: mean and standard error, and the learning rate chosen on validation.

A group of runs is one configuration at several learning rates and seeds
(:func:`group_records`); :func:`choose_lr` picks the LR with the best mean
validation primary metric and :func:`summarise` gives the test metrics'
mean ± SE over the seeds at that LR. Records read back hold ``None`` where
a run had NaN; everything here reads ``None`` as NaN.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from medft_jax.config import same_in_float32
from medft_jax.names import WEIGHTS_CHOICES, lr_text
from medft_jax.results import RecordError, config_hash, jsonable

_SEED_KEYS = ("lr", "seed")

TIE_REL_TOL = 1e-12
"""Means this close are equal: equal sums of correct answers over the seeds can give
means a rounding apart (0.6749999999999999 and 0.675), and that is a tie."""


def same_mean(a: float, b: float) -> bool:
    """Whether two means over seeds are equal up to float rounding (:data:`TIE_REL_TOL`):
    the tie rules of the LR choice, Table 11's best and Table 12's count rest on it."""
    return math.isclose(a, b, rel_tol=TIE_REL_TOL)


"""Config keys that vary inside one LR-selection group; every other key must agree."""


def mean_se(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and standard error (sample std with ddof=1, over sqrt(n)) of the finite values.

    NaN, ±inf and None (a metric undefined for that seed) are left out, and
    ``n`` counts the rest: a seed without a value cannot pull the mean. With
    n = 1 the SE is NaN (one seed says nothing about spread); with n = 0
    both are NaN.
    """
    v = [x for x in (_as_float(x) for x in values) if math.isfinite(x)]
    if not v:
        return math.nan, math.nan
    # statistics computes in exact fractions, rounding once: the mean and SE do not
    # depend on the seeds' order (the LR choice's exact tie), three equal seeds give
    # that value and an SE of exactly 0, not one off in the last bit.
    se = statistics.stdev(v) / math.sqrt(len(v)) if len(v) > 1 else math.nan
    return float(statistics.mean(v)), float(se)


CHECKPOINT_SETTING = "<a checkpoint folder>"
"""How a ``--weights`` folder reads as a setting where its fingerprint says which weights."""


def weights_setting(config: Mapping[str, Any]) -> Any:
    """``config``'s ``weights`` as a setting: a checkpoint folder is
    :data:`CHECKPOINT_SETTING` where the config's ``weights_fingerprint`` (the weights'
    content, a setting of its own) says which. Spelt as a path, one checkpoint given
    relatively from two folders, or absolutely, was two settings: seeds run from two
    shells were refused together. Configs without the fingerprint (older) keep their path."""
    weights = config.get("weights")
    path = isinstance(weights, str) and weights not in WEIGHTS_CHOICES
    return CHECKPOINT_SETTING if path and config.get("weights_fingerprint") else weights


def _group_config(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record's config without ``lr`` and ``seed``, a checkpoint's path spelt either
    way as one (:func:`weights_setting`)."""
    config = {k: v for k, v in record["config"].items() if k not in _SEED_KEYS}
    if "weights" in config:
        config["weights"] = weights_setting(config)
    return config


def group_key(record: dict[str, Any]) -> str:
    """The hash of :func:`_group_config`: one LR-selection group."""
    return config_hash(_group_config(record))


def group_records(records: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records split into LR-selection groups (same config up to ``lr`` and ``seed``)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(group_key(r), []).append(r)
    return groups


def eligible(
    records: Iterable[dict[str, Any]], failed_lrs: Iterable[float]
) -> list[dict[str, Any]]:
    """The records at LRs where no run failed and every run has a validation value:
    only these may be chosen.

    Choosing an LR at which a seed diverged, on the seeds that survived,
    would hide that it diverged (and likewise :func:`unvalidated_lrs`); the
    run command and the report both apply this rule.
    """
    records = list(records)
    bad = {float(lr) for lr in failed_lrs} | set(unvalidated_lrs(records))
    return [r for r in records if float(r["config"]["lr"]) not in bad]


def unvalidated_lrs(records: Iterable[dict[str, Any]]) -> tuple[float, ...]:
    """LRs at which a record has no finite validation primary metric (an older or
    edited record): chosen on the other seeds' mean, one seed's value could decide.
    Like an LR with a failed run, such an LR is left out of the choice."""
    bad = set()
    for r in records:
        value = _as_float((r.get("val") or {}).get(r.get("primary_metric")))
        if not math.isfinite(value):
            bad.add(float(r["config"]["lr"]))
    return tuple(sorted(bad))


def lr_means(records: Sequence[dict[str, Any]], metric: str | None = None) -> dict[float, float]:
    """Mean validation ``metric`` (best-epoch ``record["val"]``) per LR, over the seeds."""
    _check_one_group(records)
    metric = metric or _primary(records)
    per_lr: dict[float, list[float]] = {}
    for r in records:
        per_lr.setdefault(float(r["config"]["lr"]), []).append(_as_float(r["val"].get(metric)))
    return {lr: mean_se(v)[0] for lr, v in sorted(per_lr.items())}


def choose_lr(records: Sequence[dict[str, Any]], metric: str | None = None) -> float:
    """The LR with the highest mean validation ``metric`` over its seeds.

    ``records`` are the runs of one configuration at several LRs and seeds
    (everything but ``lr`` and ``seed`` equal, else :class:`RecordError`).
    ``metric`` defaults to the records' ``primary_metric``. Each record
    contributes its best epoch's validation value, ``record["val"][metric]``;
    seeds whose value is NaN/None are left out of their LR's mean, and an
    LR with no finite value is never chosen. An exact tie goes to the
    smaller LR: it stays closer to the pretrained weights, and the choice
    does not depend on record order.
    """
    means = lr_means(records, metric)
    finite = {lr: m for lr, m in means.items() if math.isfinite(m)}
    if not finite:
        raise RecordError(
            f"no finite validation {metric or _primary(records)} in the {len(records)} records "
            f"of {_describe(records[0])}"
        )
    best = max(finite.values())
    return min(lr for lr, m in finite.items() if same_mean(m, best))


def tied_lrs(means: Mapping[float, float], lr: float) -> tuple[float, ...]:
    """The LRs other than ``lr`` (the one :func:`choose_lr` chose from ``means``) whose
    mean validation value equals its up to rounding, largest first: the choice among
    them rests on the tie rule alone (a flat metric, such as the majority-class rate of
    an imbalanced split at every LR), which the run summary and the report both say."""
    if lr not in means:
        return ()
    return tuple(
        x for x in sorted(means, reverse=True) if x != lr and same_mean(means[x], means[lr])
    )


def summarise(
    records: Sequence[dict[str, Any]],
    metric_names: Sequence[str] | None = None,
    *,
    metric: str | None = None,
) -> dict[str, Any]:
    """Mean ± SE over seeds of the test metrics at the chosen LR, for one group of runs.

    The LR is :func:`choose_lr`'s (``records`` may hold one LR only, which
    is then the choice). ``metric_names`` defaults to every test metric of
    the chosen LR's records. Returns::

        {"dataset", "arch", "strategy", "lr", "metric", "seeds": [...],
         "lr_means": {lr: mean val metric},
         "val": {name: (mean, se)}, "test": {name: (mean, se)}, "n": {name: n}}

    where ``n`` counts the seeds with a finite test value of each metric.
    """
    lr = choose_lr(records, metric)
    metric = metric or _primary(records)
    chosen = [r for r in records if float(r["config"]["lr"]) == lr]
    if metric_names is not None:
        names = list(metric_names)
    else:  # every seed's, in first-seen order: one record without a metric hides none
        names = list(dict.fromkeys(n for r in chosen for n in r["test"]))

    def stat(split: str) -> dict[str, tuple[float, float]]:
        return {n: mean_se(_as_float(r[split].get(n)) for r in chosen) for n in names}

    cfg = chosen[0]["config"]
    return {
        "dataset": cfg["dataset"],
        "arch": cfg["arch"],
        "strategy": cfg["strategy"],
        "lr": lr,
        "metric": metric,
        "seeds": sorted(r["config"]["seed"] for r in chosen),
        "lr_means": lr_means(records, metric),
        "val": stat("val"),
        "test": stat("test"),
        "n": {n: sum(math.isfinite(_as_float(r["test"].get(n))) for r in chosen) for n in names},
    }


def _as_float(x: Any) -> float:
    return math.nan if x is None else float(x)


def _primary(records: Sequence[dict[str, Any]]) -> str:
    names = {r.get("primary_metric") for r in records}
    if len(names) != 1 or None in names:
        raise RecordError(
            f"records disagree on or lack the primary metric: {sorted(map(str, names))}"
        )
    return names.pop()


def _check_one_group(records: Sequence[dict[str, Any]]) -> None:
    if not records:
        raise RecordError("no records to choose an LR from")
    first = _group_config(records[0])
    for r in records[1:]:
        other = _group_config(r)
        if jsonable(other) != jsonable(first):
            diff = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
            raise RecordError(
                f"records of different configurations ({', '.join(diff)} differ) "
                "cannot share an LR choice; use group_records first"
            )
    check_unique(records)


def check_unique(records: Sequence[dict[str, Any]]) -> None:
    """Refuses two records (or failure notes) of one (lr, seed): a run folder copied by
    hand would count one run twice, in a mean or in a cell's cost. Two LRs that are one in
    float32 are refused too: ``np.logspace``'s 9.999999999999999e-06 beside a grid's
    1e-05 is one training under two LRs, and the LR choice could pick the one with fewer
    seeds, shown as a complete cell."""
    seen: dict[tuple[float, Any], dict[str, Any]] = {}
    lrs: dict[float, dict[str, Any]] = {}
    for r in records:
        key = (float(r["config"]["lr"]), r["config"]["seed"])
        if key in seen:
            raise RecordError(
                f"two records for lr {lr_text(key[0])}, seed {key[1]} of {_describe(r)}"
                f"{_both(seen[key], r)}"
            )
        seen[key] = r
        lrs.setdefault(key[0], r)
    ordered = sorted(lrs)
    for a, b in itertools.pairwise(ordered):
        if same_in_float32(a, b):
            raise RecordError(
                f"lr {lr_text(a)} and lr {lr_text(b)} of {_describe(lrs[a])} are one LR in "
                "float32, where the step computes (np.logspace and float32 grids write such "
                f"values): one training under two names (runs {lrs[a].get('run', '?')} and "
                f"{lrs[b].get('run', '?')}); since 2026-12-07 grids and --lr hold a rate a "
                "short decimal names as that decimal (0.001, not 0.0010000000474974513), so a "
                "run of its long spelling is older: move it out; else write the grids' LRs as "
                "the same decimals and move one set of runs out"
            )


def _both(first: dict[str, Any], second: dict[str, Any]) -> str:
    """``: runs A and B``, and where their configs differ only in how ``--weights`` was
    spelt, that they are one run under two names: a report named neither folder."""
    names = [str(x.get("run", "?")) for x in (first, second)]
    said = f": runs {names[0]} and {names[1]}" if names[0] != names[1] else f": run {names[0]}"
    a, b = (dict(x["config"]) for x in (first, second))
    if a.get("weights") != b.get("weights") and _group_config(first) == _group_config(second):
        said += (
            f" (one run: its --weights spelt {a.get('weights')!r} and {b.get('weights')!r}, "
            "the same checkpoint by its fingerprint; move one folder out of --runs)"
        )
    return said


def _describe(record: dict[str, Any]) -> str:
    c = record["config"]
    return f"{c.get('dataset')}/{c.get('arch')}/{c.get('strategy')}"
