"""Evaluation metrics of the paper (scikit-learn) and the primary metric of each task.

:func:`compute_metrics` turns a split's scores and labels into one flat dict
of floats, the same for validation (early stopping, LR choice) and test
(the tables). Every metric is a *macro* mean over classes, as in the spec
(``shared/spec/strategies.md``, "Metrics"):

``map``
    Mean over classes of average precision. Single-label tasks are scored
    one-vs-rest, class by class (a binary task averages the AP of both of
    its classes, as the spec's "mean over classes" says).
``accuracy``
    The paper's eq. 6: mean over classes of (TP+TN)/(TP+TN+FP+FN), one
    class against the rest. Single-label predictions are the argmax,
    multilabel ones ``score >= threshold`` (0.5). For a binary task this is
    plain accuracy (equal to ``top1_accuracy``). For a single-label task
    with C > 2 classes it is *not*: every wrong prediction is one FN (true
    class) and one FP (predicted class), so
    ``accuracy = 1 - 2 (1 - top1_accuracy) / C`` (BACH's four classes: a
    top-1 of 0.80 reads 0.90). For a multilabel task eq. 6 is
    ``1 - Hamming loss``. The key keeps this meaning in every record ever
    written; the tables of multiclass tasks show ``top1_accuracy`` instead
    (see :data:`TASK_METRICS`).
``top1_accuracy`` (single-label only)
    Fraction of examples whose argmax is the true class: what the paper's
    tables call "Accuracy" for its multiclass tasks (BACH, T1w MRI). Its
    BACH cells satisfy κ = (Acc − 25) / 0.75, true of top-1 on a balanced
    4-class test set and not of eq. 6.
``subset_accuracy`` (multilabel only)
    Fraction of examples whose whole thresholded label vector is right.
``balanced_accuracy``
    Mean over classes of recall (single-label, scikit-learn's definition);
    multilabel: mean over classes of (TPR + TNR) / 2.
``auroc``
    Mean over classes of one-vs-rest ROC AUC. A binary single-label task
    gives the standard binary AUROC of the positive class's score (class 1),
    not a mean over both classes.
``kappa``
    Cohen's κ. Single-label: on argmax predictions over all C classes.
    Multilabel: mean over classes of the binary κ at the threshold, so that
    it is a macro mean like every other metric here (κ on the flattened
    label matrix would be dominated by the frequent negatives).
``f1``
    Macro F1 (multilabel: per class at the threshold).

The rank metrics (``map``, ``auroc``) rank by each class's log-odds in float64 when
given (:func:`scores_from_logits`): float32 probabilities round to exactly 1.0
once a logit's margin passes about 16.6 (float64 log-probabilities to exactly 0 past
about 745), and every such example then tied, however confident the model was of
each, which moved AUROC and AP with the ties (a confident model fine-tuned long on
small data gets there).

Undefined values are NaN, never a crash. A class whose labels take only
one value in the split has no ROC AUC (and no AP without positives): it
gives NaN for that class with a :class:`UndefinedClassWarning`, and the
macro mean is over the classes where the metric is defined (NaN when there
are none). F1 of a class that is neither present nor predicted, balanced
accuracy and κ of a class with one label value are left out of their means
the same way, silently (κ warns when the whole single-label κ is undefined).
A run never gets there for AUROC and AP: it refuses, before training, an
evaluation split in which a class has one label value
(:meth:`medft_jax.data.dataset.Dataset.check_scorable`), since a macro mean
over fewer classes reads like the others and is not comparable with them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from medft_jax.names import TASK_NAMES as _DATA_TASK_NAMES


def _sk():
    """``sklearn.metrics``, imported when a metric is computed: the report, the grid and
    ``--help`` read this module's names without scikit-learn's second of imports."""
    from sklearn import metrics

    return metrics


def import_sklearn() -> None:
    """Imports scikit-learn now (about a second): a run's setup pays it, not its first
    validation, whose seconds ``select`` compares arms and the grid by (the first arm of
    a selection was charged 1.2 s more than the others)."""
    _sk()


RANKED_BY = "float64 log-odds"
"""A run record's ``ranked_by``: what its AUROC and AP ranked the examples by. Records
without it (written before 2026-12-06) ranked by float32 probabilities, which tie past a
logit margin of about 16.6 (see the module docstring); records of
:data:`LOG_PROBABILITIES_RANKED` (before 2026-12-07's log-odds) by float64
log-probabilities, the top class's exactly 0 past a margin of about 745."""

LOG_PROBABILITIES_RANKED = "float64 log-probabilities"
"""The ``ranked_by`` of records between 2026-12-06 and 2026-12-07's log-odds. Not a
numerics version of its own: the two rankings differ only past a logit margin of about
745, which a diverging model reaches, not a trained one, and a version would have made
every such record unreportable beside new ones; the report counts them instead."""

THRESHOLD = 0.5
"""Multilabel decision threshold on sigmoid probabilities."""

TASK_NAMES = _DATA_TASK_NAMES
"""The paper's eight tasks, as the data registry names them."""

PRIMARY_METRIC: dict[str, str] = {
    "chexpert": "map",
    "mura_shoulder": "accuracy",
    "mura_wrist": "accuracy",
    "mura_humerus": "accuracy",
    "t1w_mri": "accuracy",
    "bach": "accuracy",
    "isic2020": "auroc",
    "cholect50_instrument": "map",
}
"""The spec's primary metric per task: early stopping and the LR choice, recorded in each run.

The report's relative improvements use the headline metric, the first of
:data:`TASK_METRICS` (the same, or top-1 where this is eq. 6 of a
multiclass task, which ranks runs alike).
"""

TASK_METRICS: dict[str, tuple[str, str]] = {
    "chexpert": ("map", "auroc"),
    "mura_shoulder": ("accuracy", "kappa"),
    "mura_wrist": ("accuracy", "kappa"),
    "mura_humerus": ("accuracy", "kappa"),
    "t1w_mri": ("top1_accuracy", "f1"),
    "bach": ("top1_accuracy", "kappa"),
    "isic2020": ("auroc", "accuracy"),
    "cholect50_instrument": ("map", "auroc"),
}
"""The two columns of each task's table (the paper's Tables 3-10), the headline metric first.

As the paper prints them: CheXpert and CholecT50 mAP, AUROC; MURA accuracy,
Cohen's κ; T1w MRI accuracy, macro F1; BACH accuracy, κ (Table 8); ISIC
2020 AUROC, accuracy. The paper's "accuracy" of the multiclass tasks (BACH,
T1w) is top-1 accuracy (see the module docstring), hence ``top1_accuracy``
there; the binary tasks keep ``accuracy`` (eq. 6), equal to top-1 for them.
The first metric is the report's headline (Table 11, the relative
improvements, the paired test). It is the primary metric of
:data:`PRIMARY_METRIC` or, for BACH and T1w, top-1 where the primary is
eq. 6: for single-label predictions eq. 6 is an increasing function of
top-1 at a fixed number of classes, so choosing the epoch or LR by either
picks the same one, and records keep their primary metric unchanged.
"""

SELECTION_EQUIVALENT = frozenset({"accuracy", "top1_accuracy"})
"""Metrics that rank single-label runs alike (eq. 6 = 1 − 2 (1 − top-1) / C)."""
METRIC_KEYS = ("map", "accuracy", "auroc", "kappa", "f1", "balanced_accuracy")
"""Keys present for every task; plus ``top1_accuracy`` or ``subset_accuracy``."""


class UndefinedClassWarning(UserWarning):
    """A per-class metric is undefined (one label value in the split) and left out."""


def primary_metric(dataset_name: str, multilabel: bool) -> str:
    """The metric that early stopping and the LR choice maximise for ``dataset_name``.

    The paper's tasks use :data:`PRIMARY_METRIC`. Any other dataset
    (``demo``, ``medmnist/<flag>[@size]``, ``folder``, ``csv``) gets ``map``
    when multilabel (threshold-free and the usual multilabel summary) and
    ``accuracy`` (eq. 6) otherwise, matching most of the paper's tasks.
    """
    if dataset_name in PRIMARY_METRIC:
        return PRIMARY_METRIC[dataset_name]
    return "map" if multilabel else "accuracy"


EQ6_NAME = "accuracy (eq. 6)"
"""How commands print ``accuracy`` where it is not the share of images classed right."""
EQ6_NOTE = (
    "accuracy (eq. 6) is the paper's mean over classes of one-vs-rest accuracy, not the "
    "share of images classed right"
)
"""The line that explains :data:`EQ6_NAME` where a command printed it."""


def metric_name(key: str, multilabel: bool, num_classes: int | None) -> str:
    """``key`` as a command prints it: ``accuracy`` of a multiclass or multilabel task is
    eq. 6 (:data:`EQ6_NAME`), which reads higher than the share of images classed right
    (a 3-class top-1 of 0.33 is an eq. 6 of 0.56); a binary task's is that share, and
    an unknown ``num_classes`` (a record from before it was kept) keeps the key."""
    if key == "accuracy" and (multilabel or (num_classes or 0) > 2):
        return EQ6_NAME
    return key


def task_metrics(
    dataset_name: str, multilabel: bool, num_classes: int | None = None
) -> tuple[str, str]:
    """The two metrics a report shows for ``dataset_name`` (:data:`TASK_METRICS` or a default).

    The default pairs the headline metric with AUROC, the one threshold-free
    metric that every task has. The headline is the primary metric, except
    that a single-label dataset of more than two classes shows top-1
    accuracy rather than eq. 6 (what a reader means by accuracy there; a
    binary one keeps ``accuracy``, the same number, as do datasets whose
    ``num_classes`` is not known).
    """
    if dataset_name in TASK_METRICS:
        return TASK_METRICS[dataset_name]
    first = primary_metric(dataset_name, multilabel)
    if first == "accuracy" and not multilabel and (num_classes or 0) > 2:
        first = "top1_accuracy"
    return (first, "auroc" if first != "auroc" else "accuracy")


def scores_from_logits(logits: np.ndarray, multilabel: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities, log_odds)`` of ``(N, C)`` logits, both float64: softmax rows
    (single-label) or independent sigmoids (multilabel), and each class's log-odds,
    ``log(p / (1 - p))``, what the rank metrics rank by (``rank_scores`` of
    :func:`compute_metrics`); the probabilities decide the thresholded ones.

    Why log-odds: they keep the order of confident examples that rounding makes equal
    probabilities (1 - p below float64's 1.1e-16, or float32's 6e-8), and, unlike
    log-probabilities, of any finite logits: a softmax class's is ``z_c - logsumexp``
    of the others (a binary task's ``z_1 - z_0``), a sigmoid's is ``z`` itself, where the
    top class's log-probability ``-log1p(exp(-margin))`` is exactly 0 past a margin of
    about 745 (a diverging or long-overtrained model): every such example tied, and
    AUROC fell to 0.5 for a model that ranked them apart.
    """
    z = np.asarray(logits, dtype=np.float64)
    if multilabel:
        log_p = -(np.maximum(-z, 0.0) + np.log1p(np.exp(-np.abs(z))))
        return np.exp(log_p), z.copy()
    top = z.argmax(axis=1)[:, None]
    shifted = z - np.take_along_axis(z, top, axis=1)
    rest = np.exp(shifted)
    np.put_along_axis(rest, top, 0.0, axis=1)  # the max's own exp(0) = 1, added exactly
    log_p = shifted - np.log1p(rest.sum(axis=1, keepdims=True))
    if z.shape[1] < 2:  # one class: no other to be odds against (ranks nothing)
        return np.exp(log_p), log_p
    # From the rows shifted by their maximum, as the probabilities are, the other classes
    # summed in sorted order: rows of equal probabilities (logits shifted by a constant, or
    # the other classes' logits in another order) got log-odds a last bit apart, and that
    # rounding ordered ties (AUROC 1.0 of four examples of one probability).
    log_odds = np.empty_like(z)
    for c in range(z.shape[1]):
        others = np.sort(np.delete(shifted, c, axis=1), axis=1)
        peak = others[:, -1]
        spread = np.exp(others - peak[:, None]).sum(axis=1)
        log_odds[:, c] = shifted[:, c] - (peak + np.log(spread))
    return np.exp(log_p), log_odds


def compute_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    multilabel: bool,
    threshold: float = THRESHOLD,
    rank_scores: np.ndarray | None = None,
) -> dict[str, float]:
    """All metrics of one evaluation split as plain floats (see the module docstring).

    Args:
      scores: ``(N, C)`` probabilities: softmax rows for single-label tasks,
        independent sigmoids for multilabel ones.
      labels: ``(N,)`` integer class ids (single-label) or ``(N, C)`` 0/1
        multi-hot rows (multilabel).
      multilabel: which of the two the task is.
      threshold: multilabel decision threshold (ignored for single-label).
      rank_scores: ``(N, C)``, each column in the order of ``scores``' (its
        log-odds, :func:`scores_from_logits`): what ``map`` and ``auroc`` rank
        by, where ``scores`` would tie (default: ``scores``).

    Raises:
      ValueError: shapes that do not match, labels out of range,
        non-finite scores (a diverged model must not get a score), scores that are
        not probabilities (outside [0, 1]; single-label rows not summing to 1), or a
        threshold outside (0, 1).
    """
    scores, onehot = _validate(scores, labels, multilabel)
    if multilabel and not 0.0 < threshold < 1.0:  # also refuses NaN
        raise ValueError(f"threshold must be a probability in (0, 1); got {threshold!r}")
    if rank_scores is None:
        rank = scores
    else:
        rank = np.asarray(rank_scores, dtype=np.float64)
        if rank.shape != scores.shape or not np.all(np.isfinite(rank)):
            raise ValueError(f"rank_scores must be finite, shaped as scores {scores.shape}")
    # Warnings are collected and raised again here so that they point at the caller.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if multilabel:
            result = _multilabel_metrics(scores, rank, onehot, threshold)
        else:
            result = _single_label_metrics(scores, rank, np.asarray(labels).astype(np.int64))
    for w in caught:
        warnings.warn(w.message, w.category, stacklevel=2)
    return result


PROBABILITY_SLACK = 1e-6
"""How far outside [0, 1] a score may round (a float32 sigmoid or softmax)."""
ROW_SUM_SLACK = 1e-3
"""How far from 1 a single-label row may sum (a float32 softmax over many classes, or
probabilities rounded when written out and read back)."""


def _validate(
    scores: np.ndarray, labels: np.ndarray, multilabel: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Checks shapes and values; returns float64 scores and the ``(N, C)`` 0/1 label matrix."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or (scores.shape[1] < 2 and not multilabel):
        raise ValueError(f"scores must be (N, C) with C >= 2 for single-label; got {scores.shape}")
    n, c = scores.shape
    if n == 0:
        raise ValueError("no examples to evaluate (scores has 0 rows)")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinite values")
    # Logits ranked per class otherwise than their softmax (AUROC 0.652 for 0.671) and were
    # thresholded at 0.5 as they stood: probabilities are asked for, and checked.
    if scores.min() < -PROBABILITY_SLACK or scores.max() > 1 + PROBABILITY_SLACK:
        raise ValueError(
            f"scores must be probabilities in [0, 1] (softmax or sigmoid of the logits: "
            f"scores_from_logits); got values in [{scores.min():.4g}, {scores.max():.4g}]"
        )
    sums = scores.sum(axis=1)
    if not multilabel and np.max(np.abs(sums - 1.0)) > ROW_SUM_SLACK:
        worst = int(np.argmax(np.abs(sums - 1.0)))
        raise ValueError(
            f"single-label scores must be softmax rows summing to 1; row {worst} sums to "
            f"{sums[worst]:.6g} (scores_from_logits gives them from logits)"
        )
    if multilabel:
        if labels.shape != (n, c):
            raise ValueError(f"multilabel labels must be (N, C) = {(n, c)}; got {labels.shape}")
        if not np.all((labels == 0) | (labels == 1)):
            raise ValueError("multilabel labels must be 0 or 1")
        return scores, labels.astype(np.int64)
    if labels.shape != (n,):
        raise ValueError(f"single-label labels must be (N,) = {(n,)} class ids; got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"single-label labels must be integers in [0, {c}); got {labels.dtype}")
    if labels.min() < 0 or labels.max() >= c:  # the value, not the type, at fault
        bad = labels[(labels < 0) | (labels >= c)][0]
        raise ValueError(f"single-label labels must be class ids in [0, {c}); got {int(bad)}")
    return scores, np.eye(c, dtype=np.int64)[labels]


def _single_label_metrics(
    scores: np.ndarray, rank: np.ndarray, labels: np.ndarray
) -> dict[str, float]:
    c = scores.shape[1]
    pred = scores.argmax(axis=1)
    onehot = np.eye(c, dtype=np.int64)[labels]
    pred_onehot = np.eye(c, dtype=np.int64)[pred]
    if c == 2:  # the standard binary AUROC: positive class only, no double counting
        auroc = _macro("auroc", [_auroc(onehot[:, 1], rank[:, 1])], [1])
    else:
        auroc = _per_class_macro("auroc", _auroc, onehot, rank)
    return {
        "map": _per_class_macro("map", _average_precision, onehot, rank),
        "accuracy": _eq6_accuracy(onehot, pred_onehot),
        "top1_accuracy": float(np.mean(pred == labels)),
        "balanced_accuracy": _balanced_accuracy(labels, pred),
        "auroc": auroc,
        "kappa": _kappa(labels, pred, list(range(c))),
        "f1": _nanmean(_sk().f1_score(labels, pred, labels=list(range(c)), average=None, **_F1_KW)),
    }


def _multilabel_metrics(
    scores: np.ndarray, rank: np.ndarray, labels: np.ndarray, threshold: float
) -> dict:
    pred = (scores >= threshold).astype(np.int64)
    binary_ba = [
        _binary_balanced_accuracy(labels[:, k], pred[:, k]) for k in range(labels.shape[1])
    ]
    binary_kappa = [_binary_kappa(labels[:, k], pred[:, k]) for k in range(labels.shape[1])]
    # Column by column: scikit-learn reads a single label column (N, 1) as a binary task
    # and would average the F1 of its negatives in.
    binary_f1 = [_sk().f1_score(labels[:, k], pred[:, k], **_F1_KW) for k in range(labels.shape[1])]
    return {
        "map": _per_class_macro("map", _average_precision, labels, rank),
        "accuracy": _eq6_accuracy(labels, pred),
        "subset_accuracy": float(np.mean(np.all(labels == pred, axis=1))),
        "balanced_accuracy": _nanmean(binary_ba),
        "auroc": _per_class_macro("auroc", _auroc, labels, rank),
        "kappa": _nanmean(binary_kappa),
        "f1": _nanmean(binary_f1),
    }


_F1_KW = {"zero_division": np.nan}
"""F1 of a class neither present nor predicted is NaN (left out of the mean), not 0 or 1."""


def _eq6_accuracy(truth: np.ndarray, pred: np.ndarray) -> float:
    """Eq. 6: per class (TP+TN)/N one-vs-rest, averaged: the fraction of agreeing cells.

    One division of an integer count, not a mean of per-class means: every
    class has N cells, so the two are equal, but the mean of means rounds
    differently for epochs with the same top-1 (0.8875 vs 0.8875000000000001),
    and early stopping and the LR choice would then break an exact tie by
    rounding noise.
    """
    return float(np.count_nonzero(truth == pred) / truth.size)


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    return float(_sk().roc_auc_score(y, s)) if _two_valued(y) else math.nan


def _average_precision(y: np.ndarray, s: np.ndarray) -> float:
    # AP needs a positive; an all-positive class is defined (AP = 1).
    return float(_sk().average_precision_score(y, s)) if y.any() else math.nan


def _balanced_accuracy(labels: np.ndarray, pred: np.ndarray) -> float:
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": expected
        warnings.simplefilter("ignore", UserWarning)
        return float(_sk().balanced_accuracy_score(labels, pred))


def _binary_balanced_accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return _balanced_accuracy(y, p) if _two_valued(y) else math.nan


def _binary_kappa(y: np.ndarray, p: np.ndarray) -> float:
    return _kappa(y, p, [0, 1]) if _two_valued(y) else math.nan


def _kappa(y: np.ndarray, p: np.ndarray, classes: list[int]) -> float:
    """Cohen's κ; NaN with a warning where it is 0/0 (truth and prediction one same class)."""
    if len(np.union1d(np.unique(y), np.unique(p))) < 2:
        warnings.warn(
            "kappa is undefined: labels and predictions are all one class",
            UndefinedClassWarning,
            stacklevel=2,
        )
        return math.nan
    return float(_sk().cohen_kappa_score(y, p, labels=classes))


def _two_valued(y: np.ndarray) -> bool:
    return bool(y.any()) and not bool(y.all())


def _per_class_macro(
    name: str,
    fn: Callable[[np.ndarray, np.ndarray], float],
    truth: np.ndarray,
    scores: np.ndarray,
) -> float:
    k = truth.shape[1]
    return _macro(name, [fn(truth[:, i], scores[:, i]) for i in range(k)], list(range(k)))


def _macro(name: str, values: Sequence[float], classes: Sequence[int]) -> float:
    """Mean over the classes where ``name`` is defined; one warning lists the others."""
    undefined = [c for c, v in zip(classes, values, strict=True) if math.isnan(v)]
    if undefined:
        warnings.warn(
            f"{name} is undefined for class(es) {undefined} (one label value in this split); "
            f"the macro mean is over the other {len(values) - len(undefined)} class(es)",
            UndefinedClassWarning,
            stacklevel=2,
        )
    return _nanmean(values)


def _nanmean(values: Sequence[float] | np.ndarray) -> float:
    """Mean of the non-NaN values; NaN (and no numpy warning) when there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan
