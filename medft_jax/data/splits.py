"""Seeded, group-disjoint, optionally stratified carving of one split out of another.

Medical datasets hold several images per patient (or study, or video); an
evaluation split that shares a patient with training leaks. Every carve here
moves whole groups, and stratifies by each group's label where labels are
single-class, so ``val``/``test`` keep the class balance of the data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from medft_jax.data.errors import DataError


def carve(
    groups: Sequence[str],
    fraction: float,
    seed: int | str,
    *,
    labels: Sequence[int] | None = None,
) -> np.ndarray:
    """Boolean mask of the examples to move into the carved split.

    Groups are ordered by a hash of ``seed`` and their name, and taken, whole,
    towards a quota of
    ``round(fraction * n)`` of each stratum's ``n`` examples of its label (or
    one group, where that rounds every stratum to none but
    ``round(fraction * len(groups))`` is at least one). A stratum stops at the
    first group that would leave its count no nearer the quota than it is
    (its first group is always taken): stopping only once the quota is met
    overshot by half a patient a stratum on average, e.g. a 559-image T1w
    test split for the paper's 542. With one example a group (images, not
    patients) the quota is met exactly. The stratum of a group is the
    rarest label (fewest examples overall) it holds: a patient with one
    melanoma among fifteen benign images is a melanoma patient, so the
    carved split keeps the rare class's share although nearly every
    patient's most frequent label is the common one. All one stratum when
    ``labels`` is None. Deterministic for a given (groups, labels, seed).

    Each group's place in the order depends on its own name alone, not on
    which other groups exist: adding or removing a few patients (an edited
    folder) moves a few others across the split at most, where one seeded
    shuffle of all of them dealt every split afresh.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"split fraction must be in (0, 1), got {fraction}")
    groups_arr = np.asarray(groups, dtype=str)
    n = len(groups_arr)
    if n == 0:
        raise DataError("nothing to carve a split from: the source split is empty")
    unique, inverse = np.unique(groups_arr, return_inverse=True)
    labels_arr = np.zeros(n, np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    if len(labels_arr) != n:
        raise DataError(f"{len(labels_arr)} labels for {n} examples")
    counts = np.zeros((len(unique), int(labels_arr.max()) + 1), dtype=np.int64)
    np.add.at(counts, (inverse, labels_arr), 1)
    # Rank labels rarest first (ties by label), then give each group its best-ranked label.
    rank = np.empty(counts.shape[1], np.int64)
    rank[np.lexsort((np.arange(counts.shape[1]), counts.sum(axis=0)))] = np.arange(len(rank))
    strata = np.where(counts > 0, rank, len(rank)).argmin(axis=1)
    # A stratum counts its own label's examples: a melanoma patient's benign images
    # come along but do not fill the melanoma quota.
    held = counts[np.arange(len(unique)), strata]
    present = np.unique(strata)
    targets = {int(s): round(fraction * held[strata == s].sum()) for s in present}
    if not any(targets.values()) and round(fraction * n) >= 1 and len(unique) > 1:
        targets[int(present[np.argmax([held[strata == s].sum() for s in present])])] = 1
    order = _hash_order(unique, seed)
    chosen = np.zeros(len(unique), dtype=bool)
    for stratum in present:
        members = order[strata[order] == stratum]
        taken = 0
        target = targets[int(stratum)]
        for g in members:
            if taken >= target or (taken and 2 * (target - taken) <= held[g]):
                break
            chosen[g] = True
            taken += held[g]
    return chosen[inverse]


def _hash_order(names: np.ndarray, seed: int | str) -> np.ndarray:
    """Indices of ``names`` (unique strings) sorted by sha256 of ``seed`` and the name."""
    keys = [hashlib.sha256(f"{seed}\0{name}".encode()).digest()[:8] for name in names]
    return np.asarray(sorted(range(len(names)), key=keys.__getitem__), dtype=np.int64)


def check_disjoint(named_groups: dict[str, Sequence[str]], where: str = "") -> None:
    """Raises if any two splits share a group (a patient, study or video).

    ``where`` (the dataset or file) leads the one-line message.
    """
    names = list(named_groups)
    sets = {k: set(v) for k, v in named_groups.items()}
    lead = f"{where}: " if where else ""
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = sets[a] & sets[b]
            if shared:
                raise DataError(
                    f"{lead}splits {a!r} and {b!r} share {len(shared)} patient group(s), "
                    f"e.g. {sorted(shared)[0]!r}; one patient's images in two splits would "
                    "leak into the evaluation"
                )
