"""Metrics against hand computations on made-up confusion matrices and scores."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from medft_jax import metrics
from medft_jax.metrics import UndefinedClassWarning, compute_metrics

# --- 3 classes, single-label ------------------------------------------------------------
# Rows are softmax-like scores; argmax predictions are [0, 1, 1, 1, 2, 0].
THREE_SCORES = np.array(
    [
        [0.60, 0.32, 0.08],  # true 0, pred 0
        [0.05, 0.50, 0.45],  # true 0, pred 1
        [0.30, 0.45, 0.25],  # true 1, pred 1
        [0.10, 0.80, 0.10],  # true 1, pred 1
        [0.15, 0.25, 0.60],  # true 2, pred 2
        [0.50, 0.10, 0.40],  # true 2, pred 0
    ]
)
THREE_LABELS = np.array([0, 0, 1, 1, 2, 2])
# Confusion matrix (rows true, columns predicted):
#   [[1, 1, 0],
#    [0, 2, 0],
#    [1, 0, 1]]
# One-vs-rest, N = 6:
#   class 0: TP 1, FN 1, FP 1, TN 3 -> (TP+TN)/N = 4/6, F1 = 2/(2+1+1) = 1/2
#   class 1: TP 2, FN 0, FP 1, TN 3 -> 5/6,            F1 = 4/(4+1+0) = 4/5
#   class 2: TP 1, FN 1, FP 0, TN 4 -> 5/6,            F1 = 2/(2+0+1) = 2/3
# eq. 6 = (4/6 + 5/6 + 5/6)/3 = 7/9  (= 1 - 2(1 - 2/3)/3, top-1 being 4/6)
# macro F1 = (1/2 + 4/5 + 2/3)/3 = 59/90
# kappa: p_o = 4/6; true marginals (2,2,2)/6, predicted (2,3,1)/6;
#   p_e = (2*2 + 2*3 + 2*1)/36 = 1/3; kappa = (2/3 - 1/3)/(1 - 1/3) = 1/2
# balanced accuracy = mean recall = (1/2 + 1 + 1/2)/3 = 2/3
# AUROC (pairs positive > negative out of 2*4):
#   class 0: pos .60 .05, neg .30 .10 .15 .50 -> 4 + 0 = 4/8
#   class 1: pos .45 .80, neg .32 .50 .25 .10 -> 3 + 4 = 7/8
#   class 2: pos .60 .40, neg .08 .45 .25 .10 -> 4 + 3 = 7/8
#   macro = (4/8 + 7/8 + 7/8)/3 = 3/4
# AP (precision at each positive in the ranking, averaged):
#   class 0: .60 P, .50 N, .30 N, .15 N, .10 N, .05 P -> (1 + 2/6)/2 = 2/3
#   class 1: .80 P, .50 N, .45 P -> (1 + 2/3)/2 = 5/6
#   class 2: .60 P, .45 N, .40 P -> (1 + 2/3)/2 = 5/6
#   mAP = (2/3 + 5/6 + 5/6)/3 = 7/9


def test_three_class_single_label_by_hand():
    m = compute_metrics(THREE_SCORES, THREE_LABELS, multilabel=False)
    assert m["accuracy"] == pytest.approx(7 / 9)
    assert m["top1_accuracy"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(59 / 90)
    assert m["kappa"] == pytest.approx(1 / 2)
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)
    assert m["auroc"] == pytest.approx(3 / 4)
    assert m["map"] == pytest.approx(7 / 9)
    assert set(m) == {*metrics.METRIC_KEYS, "top1_accuracy"}
    assert all(type(v) is float for v in m.values())


def test_eq6_relation_to_top1_for_single_label():
    """Each error is one FN and one FP: eq. 6 = 1 - 2 (1 - top1) / C."""
    rng = np.random.default_rng(0)
    scores = rng.dirichlet(np.ones(4), size=50)
    labels = rng.integers(0, 4, size=50)
    m = compute_metrics(scores, labels, multilabel=False)
    assert m["accuracy"] == pytest.approx(1 - 2 * (1 - m["top1_accuracy"]) / 4)


@pytest.mark.slow  # many random cases; the fast tier keeps eq. 6's hand-made ones
def test_eq6_is_equal_for_predictions_of_equal_top1():
    """Early stopping keeps the earliest of equal values and the LR choice breaks exact ties
    by the smaller LR: epochs with the same top-1 must give the same eq. 6, bit for bit
    (a mean of per-class means gave 0.8875 and 0.8875000000000001)."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=36)  # BACH's validation size
    values = set()
    for trial in range(200):
        wrong = rng.choice(36, size=6, replace=False)  # 30 of 36 right, other errors each time
        pred = labels.copy()
        pred[wrong] = (labels[wrong] + rng.integers(1, 4, size=6)) % 4
        scores = np.eye(4)[pred] * 0.7 + 0.075
        m = compute_metrics(scores, labels, multilabel=False)
        assert m["top1_accuracy"] == 30 / 36, trial
        values.add(m["accuracy"])
    assert values == {1 - 2 * (6 / 36) / 4}


# --- four classes, balanced: top-1, eq. 6 and κ from a confusion matrix ----------------------
# Rows: true class, columns: predicted class; 20 images per true class (N = 80).
CONFUSION4 = np.array(
    [
        [16, 2, 1, 1],
        [3, 14, 2, 1],
        [0, 4, 12, 4],
        [1, 1, 2, 16],
    ]
)
# top-1 = (16 + 14 + 12 + 16) / 80 = 58/80.
# eq. 6, per class 1 - (FN + FP)/N: FN (row off-diagonal) 4 6 8 4, FP (column
#   off-diagonal) 4 7 5 6 -> 72/80, 67/80, 67/80, 70/80, mean 276/320 = 69/80.
# κ: p_o = 58/80; predicted marginals 20 21 17 22, true ones 20 each ->
#   p_e = (20·20 + 20·21 + 20·17 + 20·22) / 80² = 1/4; κ = (58/80 - 1/4) / (3/4) = 19/30.


def _from_confusion(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores whose argmax is the predicted class of each (true, predicted) count."""
    c = confusion.shape[0]
    labels, preds = [], []
    for t in range(c):
        for p in range(c):
            labels += [t] * int(confusion[t, p])
            preds += [p] * int(confusion[t, p])
    scores = np.full((len(preds), c), 0.1) + 0.6 * np.eye(c)[preds]
    return scores / scores.sum(axis=1, keepdims=True), np.array(labels)


def test_four_class_confusion_matrix_by_hand():
    scores, labels = _from_confusion(CONFUSION4)
    m = compute_metrics(scores, labels, multilabel=False)
    assert m["top1_accuracy"] == pytest.approx(58 / 80)
    assert m["accuracy"] == pytest.approx(69 / 80)  # eq. 6: not top-1 with 4 classes
    assert m["kappa"] == pytest.approx(19 / 30)


def test_kappa_is_a_line_in_top1_on_a_balanced_four_class_set():
    """The pattern of the paper's BACH cells, κ = (Acc − 25)/0.75 in percent, holds for top-1
    on a balanced 4-class test set (p_e = 1/4 whatever the predictions), not for eq. 6."""
    rng = np.random.default_rng(3)
    for _ in range(5):
        labels = np.repeat(np.arange(4), 25)
        scores = rng.dirichlet(np.ones(4), size=100) + 0.6 * np.eye(4)[labels] * rng.random()
        m = compute_metrics(scores / scores.sum(axis=1, keepdims=True), labels, multilabel=False)
        top1, eq6, kappa = (100 * m[k] for k in ("top1_accuracy", "accuracy", "kappa"))
        assert kappa == pytest.approx((top1 - 25) / 0.75)
        assert kappa != pytest.approx((eq6 - 25) / 0.75)


def test_top1_and_eq6_agree_on_binary_tasks():
    rng = np.random.default_rng(4)
    for _ in range(5):
        p = rng.random(60)
        labels = rng.integers(0, 2, size=60)
        m = compute_metrics(np.stack([1 - p, p], axis=1), labels, multilabel=False)
        assert m["accuracy"] == pytest.approx(m["top1_accuracy"])


# --- binary, single-label -----------------------------------------------------------------
# Positive-class scores p; predictions p > 0.5: [0,0,0,1,0,1,0,1].
BIN_P = np.array([0.1, 0.2, 0.3, 0.6, 0.05, 0.7, 0.4, 0.9])
BIN_LABELS = np.array([0, 0, 0, 0, 0, 1, 1, 1])
# TP 2 (.7 .9), FN 1 (.4), FP 1 (.6), TN 4.
# accuracy = 6/8 = 3/4, and eq. 6 gives the same for both classes.
# AUROC: positives .7 .4 .9 against negatives .1 .2 .3 .6 .05: 5 + 4 + 5 = 14/15
# kappa: p_o = 3/4; marginals (5/8, 3/8) for both truth and prediction;
#   p_e = 25/64 + 9/64 = 17/32; kappa = (24/32 - 17/32)/(15/32) = 7/15
# F1: class 1 = 4/(4+1+1) = 2/3, class 0 = 8/(8+1+1) = 4/5 -> 11/15
# balanced accuracy = (4/5 + 2/3)/2 = 11/15
# AP class 1: .9 P, .7 P, .6 N, .4 P -> (1 + 1 + 3/4)/3 = 11/12
# AP class 0 (score 1-p): .95 P, .9 P, .8 P, .7 P, .6 N, .4 P -> (4 + 5/6)/5 = 29/30
# mAP = (11/12 + 29/30)/2 = 113/120


def test_binary_single_label_by_hand():
    scores = np.stack([1 - BIN_P, BIN_P], axis=1)
    m = compute_metrics(scores, BIN_LABELS, multilabel=False)
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert m["top1_accuracy"] == pytest.approx(3 / 4)
    assert m["auroc"] == pytest.approx(14 / 15)
    assert m["kappa"] == pytest.approx(7 / 15)
    assert m["f1"] == pytest.approx(11 / 15)
    assert m["balanced_accuracy"] == pytest.approx(11 / 15)
    assert m["map"] == pytest.approx(113 / 120)


def test_binary_auroc_is_the_positive_class_auc_only():
    """Ranks that are not complementary: class 0's AUC must not enter the mean."""
    scores = np.stack([1 - BIN_P, BIN_P], axis=1)
    rank = np.stack([np.full(8, 0.5), BIN_P], axis=1)  # class 0 column is uninformative
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no warning about class 0
        m = compute_metrics(scores, BIN_LABELS, multilabel=False, rank_scores=rank)
    assert m["auroc"] == pytest.approx(14 / 15)


# --- multilabel ----------------------------------------------------------------------------
ML_LABELS = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]])
ML_SCORES = np.array(
    [
        [0.9, 0.2, 0.6],
        [0.4, 0.7, 0.3],
        [0.6, 0.4, 0.8],
        [0.1, 0.45, 0.7],
    ]
)
# Predictions at 0.5: [[1,0,1],[0,1,0],[1,0,1],[0,0,1]]
# class 0: y 1010, p 1010: accuracy 1, F1 1, kappa 1, balanced 1; AUROC 1; AP 1
# class 1: y 0110, p 0100: TP 1, FN 1, TN 2: accuracy 3/4, F1 2/3, balanced (1/2 + 1)/2 = 3/4
#   kappa: p_o 3/4, truth (1/2, 1/2), pred (1/4, 3/4): p_e = 1/2 -> kappa 1/2
#   AUROC: pos .7 .4, neg .2 .45 -> 2 + 1 = 3/4; AP: .7 P, .45 N, .4 P -> (1 + 2/3)/2 = 5/6
# class 2: y 1101, p 1011: TP 2, FN 1, FP 1, TN 0: accuracy 1/2, F1 4/6 = 2/3,
#   balanced (2/3 + 0)/2 = 1/3; kappa: p_o 1/2, p_e = 9/16 + 1/16 = 5/8 -> -1/3
#   AUROC: pos .6 .3 .7 all below neg .8 -> 0; AP: .8 N, .7 P, .6 P, .3 P
#   -> (1/2 + 2/3 + 3/4)/3 = 23/36
# eq. 6 = (1 + 3/4 + 1/2)/3 = 3/4; subset accuracy = rows 0 and 3 exact = 1/2
# F1 = (1 + 2/3 + 2/3)/3 = 7/9; kappa = (1 + 1/2 - 1/3)/3 = 7/18
# AUROC = (1 + 3/4 + 0)/3 = 7/12; mAP = (1 + 5/6 + 23/36)/3 = 89/108
# balanced accuracy = (1 + 3/4 + 1/3)/3 = 25/36


def test_multilabel_by_hand():
    m = compute_metrics(ML_SCORES, ML_LABELS, multilabel=True)
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert m["subset_accuracy"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(7 / 9)
    assert m["kappa"] == pytest.approx(7 / 18)
    assert m["auroc"] == pytest.approx(7 / 12)
    assert m["map"] == pytest.approx(89 / 108)
    assert m["balanced_accuracy"] == pytest.approx(25 / 36)
    assert set(m) == {*metrics.METRIC_KEYS, "subset_accuracy"}


def test_a_single_label_column_scores_its_positives_only():
    """One label column is (N, 1): scikit-learn took it for a binary task and averaged in
    the F1 of the negatives (0.486 here, not the label's 0.4)."""
    labels = np.array([[1], [0], [0], [0], [1], [0]])
    scores = np.array([[0.9], [0.8], [0.7], [0.2], [0.1], [0.3]])
    # Predicted 1, 1, 1, 0, 0, 0: TP 1, FP 2, FN 1 -> F1 = 2/(2 + 2 + 1) = 0.4
    assert compute_metrics(scores, labels, multilabel=True)["f1"] == pytest.approx(0.4)


def test_multilabel_threshold_is_inclusive_and_configurable():
    labels = np.array([[1], [0]])
    scores = np.array([[0.5], [0.2]])
    assert compute_metrics(scores, labels, multilabel=True)["accuracy"] == 1.0
    assert compute_metrics(scores, labels, multilabel=True, threshold=0.6)["accuracy"] == 0.5


# --- undefined classes ---------------------------------------------------------------------


def test_class_with_one_label_value_gives_nan_with_warning_not_crash():
    labels = ML_LABELS.copy()
    labels[:, 1] = 0  # class 1 never positive in this split
    with pytest.warns(UndefinedClassWarning) as caught:
        m = compute_metrics(ML_SCORES, labels, multilabel=True)
    messages = sorted(str(w.message) for w in caught)
    assert [m.split(" (")[0] for m in messages] == [
        "auroc is undefined for class(es) [1]",
        "map is undefined for class(es) [1]",
    ]
    # The macro means are over classes 0 and 2 (values from the hand computation above).
    assert m["auroc"] == pytest.approx((1 + 0) / 2)
    assert m["map"] == pytest.approx((1 + 23 / 36) / 2)
    assert m["kappa"] == pytest.approx((1 - 1 / 3) / 2)


def test_single_label_absent_class_auroc_over_the_present_ones():
    scores = THREE_SCORES[:4]  # labels 0, 0, 1, 1: class 2 absent
    with pytest.warns(UndefinedClassWarning) as caught:
        m = compute_metrics(scores, THREE_LABELS[:4], multilabel=False)
    assert {str(w.message).split(" (")[0] for w in caught} == {
        "auroc is undefined for class(es) [2]",
        "map is undefined for class(es) [2]",
    }
    # class 0: pos .60 .05 vs neg .30 .10 -> 2 + 0 = 1/2; class 1: pos .45 .80 vs .32 .50 -> 1 + 2
    assert m["auroc"] == pytest.approx((1 / 2 + 3 / 4) / 2)
    assert math.isfinite(m["accuracy"])


def test_nothing_defined_gives_nan():
    scores = np.stack([1 - BIN_P, BIN_P], axis=1)
    with pytest.warns(UndefinedClassWarning):
        m = compute_metrics(scores, np.zeros(8, dtype=int), multilabel=False)
    assert math.isnan(m["auroc"])
    assert m["top1_accuracy"] == pytest.approx(5 / 8)


@pytest.mark.filterwarnings(
    "ignore:(auroc|map) is undefined:medft_jax.metrics.UndefinedClassWarning"
)
def test_kappa_undefined_when_everything_is_one_class():
    scores = np.array([[0.9, 0.1], [0.8, 0.2]])
    with pytest.warns(UndefinedClassWarning, match="kappa"):
        m = compute_metrics(scores, np.array([0, 0]), multilabel=False)
    assert math.isnan(m["kappa"])
    assert m["accuracy"] == 1.0


@pytest.mark.parametrize(
    ("scores", "labels", "multilabel", "match"),
    [
        (np.ones((3, 2)) / 2, np.array([0, 1]), False, "labels must be"),
        (np.ones((2, 2)) / 2, np.array([0, 2]), False, r"class ids in \[0, 2\); got 2$"),
        (np.array([[np.nan, 1.0]]), np.array([1]), False, "NaN"),
        (np.ones((2, 2)) / 2, np.array([0, 1]), True, r"\(N, C\)"),
        (np.ones(3), np.array([0, 1, 1]), False, r"\(N, C\)"),
        # Logits: ranked per class otherwise than their softmax, thresholded as they stood.
        (np.array([[2.0, -1.0], [0.5, 0.2]]), np.array([0, 1]), False, r"\[-1, 2\]$"),
        (np.array([[-0.4, 1.2]]), np.array([[0, 1]]), True, r"probabilities in \[0, 1\]"),
        (np.array([[0.6, 0.6], [0.2, 0.3]]), np.array([0, 1]), False, r"row 1 sums to 0\.5 "),
    ],
)
def test_bad_inputs_say_what_is_wrong(scores, labels, multilabel, match):
    with pytest.raises(ValueError, match=match):
        compute_metrics(scores, labels, multilabel=multilabel)


def test_a_multilabel_threshold_is_a_probability():
    for bad in (0.0, 1.0, 2.0, float("nan")):
        with pytest.raises(ValueError, match=r"^threshold must be a probability in \(0, 1\)"):
            compute_metrics(ML_SCORES, ML_LABELS, multilabel=True, threshold=bad)


# --- primary metric ------------------------------------------------------------------------


def test_primary_metric_per_task_and_defaults():
    assert metrics.primary_metric("chexpert", True) == "map"
    assert metrics.primary_metric("isic2020", False) == "auroc"
    assert metrics.primary_metric("cholect50_instrument", True) == "map"
    for task in ("mura_shoulder", "mura_wrist", "mura_humerus", "t1w_mri", "bach"):
        assert metrics.primary_metric(task, False) == "accuracy"
    assert metrics.primary_metric("demo", False) == "accuracy"
    assert metrics.primary_metric("medmnist/chestmnist@64", True) == "map"
    assert metrics.primary_metric("folder", False) == "accuracy"


def test_task_tables_cover_the_data_registry_and_lead_with_the_primary_metric():
    from medft_jax.data.tasks import TASK_NAMES

    assert set(TASK_NAMES) == set(metrics.TASK_NAMES) == set(metrics.PRIMARY_METRIC)
    assert set(metrics.TASK_METRICS) == set(TASK_NAMES)
    for task, pair in metrics.TASK_METRICS.items():
        primary = metrics.PRIMARY_METRIC[task]
        # The headline is the primary, or top-1 where the primary is eq. 6 (they rank alike).
        assert pair[0] == primary or {pair[0], primary} == metrics.SELECTION_EQUIVALENT
        assert set(pair) <= {*metrics.METRIC_KEYS, "top1_accuracy"}
    assert metrics.task_metrics("demo", False) == ("accuracy", "auroc")  # classes unknown
    assert metrics.task_metrics("demo", False, num_classes=2) == ("accuracy", "auroc")
    assert metrics.task_metrics("folder", False, num_classes=5) == ("top1_accuracy", "auroc")
    assert metrics.task_metrics("demo", True) == ("map", "auroc")


def test_task_columns_are_the_papers():
    """Tables 3-10 as printed: BACH shows accuracy and κ (Table 8), the multiclass tasks'
    accuracy is top-1, the binary ones keep eq. 6 (the same number there)."""
    assert metrics.TASK_METRICS["bach"] == ("top1_accuracy", "kappa")
    assert metrics.TASK_METRICS["t1w_mri"] == ("top1_accuracy", "f1")
    assert metrics.TASK_METRICS["isic2020"] == ("auroc", "accuracy")
    for task in ("mura_shoulder", "mura_wrist", "mura_humerus"):
        assert metrics.TASK_METRICS[task] == ("accuracy", "kappa")
    for task in ("chexpert", "cholect50_instrument"):
        assert metrics.TASK_METRICS[task] == ("map", "auroc")


def test_scores_from_logits_are_float64_softmax_and_sigmoid_with_exact_log_odds():
    from scipy.special import expit, logsumexp, softmax

    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, (50, 4)).astype(np.float32)
    z64 = z.astype(np.float64)
    others = np.stack([logsumexp(np.delete(z64, c, axis=1), axis=1) for c in range(4)], axis=1)
    for multilabel, p_ref, odds_ref in (
        (False, softmax(z64, axis=1), z64 - others),
        (True, expit(z64), z64),
    ):
        p, odds = metrics.scores_from_logits(z, multilabel)
        assert p.dtype == odds.dtype == np.float64
        np.testing.assert_allclose(p, p_ref, rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(odds, odds_ref, rtol=1e-12, atol=1e-12)
        # log(p / (1 - p)) where neither rounds away
        np.testing.assert_allclose(odds, np.log(p_ref) - np.log1p(-p_ref), rtol=1e-9, atol=1e-9)
    # Past float64's own 1 - 1e-16 the log-odds still order the confident rows: a binary
    # task's are the margins themselves, exactly.
    margins = np.asarray([20.0, 30.0, 40.0, 60.0], np.float32)
    _, odds = metrics.scores_from_logits(np.stack([np.zeros(4), margins], axis=1), False)
    assert odds[:, 1].tolist() == margins.tolist() and odds[:, 0].tolist() == (-margins).tolist()


def test_examples_of_equal_probabilities_keep_equal_log_odds():
    """Rows of one probability (logits shifted by a constant, or the other classes' logits
    in another order) got log-odds a last bit apart: rounding ordered the ties, class 0's
    AUROC and AP 1.0 where four examples of one probability give 0.5 (sklearn's ties)."""
    base = np.array([0.0, 1.0, 2.0])
    z = np.stack([base - 10, base - 10, base - 6.25, base - 6.25]).astype(np.float32)
    labels = np.array([0, 0, 1, 2])
    p, odds = metrics.scores_from_logits(z, False)
    assert len(set(p[:, 0].tolist())) == 1 and len(set(odds[:, 0].tolist())) == 1
    got = compute_metrics(p, labels, multilabel=False, rank_scores=odds)
    ranked = compute_metrics(p, labels, multilabel=False)  # by the probabilities
    assert got["auroc"] == ranked["auroc"] and got["map"] == ranked["map"]
    # Four classes: the others of class 0 in another order, the row shifted by a whole
    # number (exact in binary): one probability of class 0 per kind of row, one log-odds.
    rng = np.random.default_rng(3)
    rows, kinds = [], []
    for _ in range(60):
        kind = int(rng.integers(2))
        rest = rng.permutation([0.25, 1.75, 0.5])
        rows.append(np.array([1.0 + 0.5 * kind, *rest]) + rng.integers(-40, 40))
        kinds.append(kind)
    p, odds = metrics.scores_from_logits(np.asarray(rows), False)
    for kind in (0, 1):
        mine = [i for i, k in enumerate(kinds) if k == kind]
        assert len({odds[i, 0] for i in mine}) == 1, sorted({odds[i, 0] for i in mine})


def test_rank_metrics_keep_the_order_of_margins_past_float64_log_probabilities():
    """Margins of 800 and 1,000 (a diverging model): both top log-probabilities were
    exactly 0.0, tied, and AUROC 0.625 for a model that ranks the four apart (0.75 by
    hand: the positive at margin 20 under the negative at 800 is the one pair wrong)."""
    z = np.array([[-400.0, 400.0], [-500.0, 500.0], [-10.0, 10.0], [10.0, -10.0]])
    labels = np.array([0, 1, 1, 0])
    p, odds = metrics.scores_from_logits(z, False)
    assert compute_metrics(p, labels, multilabel=False, rank_scores=odds)["auroc"] == 0.75
    p, odds = metrics.scores_from_logits(z[:, 1:] * 2, True)  # sigmoids of 800, 1000, 20, -20
    got = compute_metrics(p, labels[:, None], multilabel=True, rank_scores=odds)
    assert got["auroc"] == 0.75


@pytest.mark.parametrize("multilabel", [False, True])
def test_confident_examples_rank_by_their_logits_not_float32_ties(multilabel):
    """float32 probabilities round to 1.0 past a logit margin of about 16.6: five confident
    negatives (18-19) tied with the positives (20-40), AUROC 0.64 for a model
    that ranks them perfectly (both 1.0)."""
    margin = np.asarray([20, 25, 30, 35, 40, 18, 18.5, 18.7, 18.9, 19, -3, -4], np.float32)
    positive = np.asarray([1] * 5 + [0] * 7)
    if multilabel:
        logits, labels = margin[:, None], positive[:, None]
        f32 = 1 / (1 + np.exp(-logits))
    else:
        logits = np.stack([np.zeros_like(margin), margin], axis=1)
        labels = positive
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        f32 = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    assert np.sum(f32.astype(np.float32)[:, -1] == 1.0) == 10  # the ties that were scored
    before = compute_metrics(f32, labels, multilabel=multilabel)
    assert before["auroc"] == pytest.approx((10 + 25 / 2) / 35)  # 25 tied pairs count half
    p, logp = metrics.scores_from_logits(logits, multilabel)
    after = compute_metrics(p, labels, multilabel=multilabel, rank_scores=logp)
    assert after["auroc"] == 1.0 and after["map"] == pytest.approx(1.0)
    assert before["map"] < 0.99  # the ties cost mAP too
    # The thresholded metrics come from the probabilities, as before.
    for k in ("accuracy", "kappa", "f1"):
        assert after[k] == pytest.approx(before[k])
    with pytest.raises(ValueError, match="rank_scores must be finite"):
        compute_metrics(p, labels, multilabel=multilabel, rank_scores=logp[:3])


def test_a_runs_metrics_rank_its_confident_examples_by_their_logits():
    """fit's metrics of a split, from the logits the eval step now returns (it returned
    float32 probabilities, which tied past a margin of 16.6); a study's score (MURA) is the
    mean of its images' float64 probabilities."""
    from medft_jax import fit
    from medft_jax.data.arrays import make_split
    from medft_jax.data.dataset import Dataset

    margin = np.asarray([20, 25, 30, 35, 40, 18, 18.5, 18.7, 18.9, 19, -3, -4], np.float32)
    labels = np.asarray([1] * 5 + [0] * 7)
    logits = np.stack([np.zeros_like(margin), margin], axis=1)
    split = make_split(np.zeros((12, 2, 2, 3), np.uint8), labels)
    ds = Dataset("toy", {"train": split, "val": split, "test": split}, ("no", "yes"))
    assert fit._metrics(ds, "test", logits, "epoch 1", "fp32")["auroc"] == 1.0
    # Studies of two images each (the same study twice over): ranked by mean probability.
    groups = np.repeat(np.arange(6).astype(str), 2)
    split = make_split(
        np.zeros((12, 2, 2, 3), np.uint8), np.repeat([1, 1, 0, 0, 0, 0], 2), groups=groups
    )
    ds = Dataset(
        "toy", {"train": split, "val": split, "test": split}, ("no", "yes"), eval_grouping="study"
    )
    study = np.asarray([30, 30, 25, 25, 3, 3, 2, 2, -1, -1, -2, -2], np.float32)
    got = fit._metrics(ds, "test", np.stack([np.zeros(12), study], axis=1), "epoch 1", "fp32")
    assert got["auroc"] == 1.0
    with pytest.raises(fit.NonFiniteOutputError, match="test outputs became NaN"):
        fit._metrics(ds, "test", np.full((12, 2), np.nan, np.float32), "epoch 1", "fp32")


def test_scores_of_one_class_logits_need_no_other_class():
    """A library caller's one-column logits: log-odds against no other class raised numpy's
    "zero-size array" error (the CLI refuses one-class data before)."""
    p, ranks = metrics.scores_from_logits(np.array([[3.0], [-1.0]]), False)
    assert p.tolist() == [[1.0], [1.0]] and ranks.shape == (2, 1)
