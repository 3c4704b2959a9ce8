"""Seeded, group-disjoint, optionally stratified carving of one split out of another.

Medical datasets hold several images per patient (or study, or video); an
evaluation split that shares a patient with training leaks. Every carve here
moves whole groups, and stratifies by each group's label where labels are
single-class, so ``val``/``test`` keep the class balance of the data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medft_jax.data.errors import DataError


def carve(
    groups: Sequence[str],
    fraction: float,
    seed: int,
    *,
    labels: Sequence[int] | None = None,
) -> np.ndarray:
    """Boolean mask of the examples to move into the carved split.

    Groups are shuffled with ``seed`` and taken, whole, until the carved
    split holds ``round(fraction * n)`` examples of each stratum (the
    stratum of a group is its most frequent label; all one stratum when
    ``labels`` is None). Deterministic for a given (groups, labels, seed).
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"split fraction must be in (0, 1), got {fraction}")
    groups_arr = np.asarray(groups, dtype=str)
    n = len(groups_arr)
    if n == 0:
        raise DataError("nothing to carve a split from: the source split is empty")
    unique, inverse, sizes = np.unique(groups_arr, return_inverse=True, return_counts=True)
    if labels is None:
        strata = np.zeros(len(unique), dtype=np.int64)
    else:
        labels_arr = np.asarray(labels, dtype=np.int64)
        if len(labels_arr) != n:
            raise DataError(f"{len(labels_arr)} labels for {n} examples")
        counts = np.zeros((len(unique), int(labels_arr.max()) + 1), dtype=np.int64)
        np.add.at(counts, (inverse, labels_arr), 1)
        strata = counts.argmax(axis=1)
    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(unique), dtype=bool)
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        members = members[rng.permutation(len(members))]
        target = round(fraction * sizes[members].sum())
        taken = 0
        for g in members:
            if taken >= target:
                break
            chosen[g] = True
            taken += sizes[g]
    return chosen[inverse]


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
