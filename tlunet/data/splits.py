"""Every way tlunet splits data, in one place: seeded, and grouped so that no subject (fetus,
patient, video) ever sits on both sides of a split.

- `split_indices`: train/validation/test (any number of parts) by fraction;
- `split_by_subject`: the same for HC18 records;
- `stratified_split`: per class, then joined (every class reaches every part);
- `kfold_indices`: k folds;
- `fraction_indices`: a training-set-size subset (10/30/50/100 % sweeps);
- `experiment_splits`: what the experiment runners use: one split, or k folds with an inner
  validation split, or Wang et al. 2020's "train on one fold".
"""

import numpy as np


def split_indices(n, fractions=(0.8, 0.2), seed=0, groups=None):
    """Index lists for a seeded split; with `groups`, no group is split across parts."""
    fractions = np.asarray(fractions, dtype=float)
    if fractions.min() < 0 or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"`fractions` must be non-negative and sum to 1. Received: {fractions.tolist()}")
    groups = list(range(n)) if groups is None else list(groups)
    unique = sorted(set(groups), key=str)
    np.random.default_rng(seed).shuffle(unique)
    bounds = np.round(np.cumsum(fractions) * len(unique)).astype(int)
    part = {g: int(np.searchsorted(bounds, i, side="right")) for i, g in enumerate(unique)}
    return [[i for i in range(n) if part[groups[i]] == k] for k in range(len(fractions))]


def split_by_subject(records, fractions=(0.8, 0.2), seed=0):
    """Splits records (anything with a `.subject`, e.g. HC18 records) into len(fractions) lists with
    no subject in two lists. Subjects, not files, are shuffled and dealt out by cumulative fraction."""
    parts = split_indices(len(records), fractions, seed=seed, groups=[r.subject for r in records])
    return [[records[i] for i in part] for part in parts]


def stratified_split(labels, groups, fractions, seed=0):
    """Index lists per part: the groups (videos) of each class are split by `fractions` separately,
    so every class reaches every part when it has enough groups; items follow their group."""
    labels = np.asarray(labels)
    out = [[] for _ in fractions]
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        for part, sub in zip(out, split_indices(len(idx), fractions, seed=seed, groups=[groups[i] for i in idx])):
            part.extend(int(idx[i]) for i in sub)
    return [sorted(p) for p in out]


def kfold_indices(n, k, seed=0, groups=None):
    """k (train, test) index pairs; with `groups`, no group appears on both sides of a fold."""
    if k < 2:
        raise ValueError(f"`k` must be >= 2. Received: k={k}")
    groups = list(range(n)) if groups is None else list(groups)
    unique = sorted(set(groups), key=str)
    if len(unique) < k:
        raise ValueError(f"{len(unique)} groups cannot make {k} folds")
    np.random.default_rng(seed).shuffle(unique)
    fold_of = {g: i % k for i, g in enumerate(unique)}
    return [([i for i in range(n) if fold_of[groups[i]] != f], [i for i in range(n) if fold_of[groups[i]] == f])
            for f in range(k)]


def fraction_indices(indices, fraction, seed=0, groups=None):
    """A seeded subset holding `fraction` of `indices` (of their groups, when given), for
    training-set-size sweeps (10/30/50/100 %)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"`fraction` must be in (0, 1]. Received: fraction={fraction}")
    indices = list(indices)
    keys = indices if groups is None else [groups[i] for i in indices]
    unique = sorted(set(keys), key=str)
    np.random.default_rng(seed).shuffle(unique)
    keep = set(unique[:max(1, round(fraction * len(unique)))])
    return [i for i, key in zip(indices, keys) if key in keep]


def experiment_splits(n, fractions, seed=0, groups=None, folds=None, train_on="rest", validation=True):
    """[(train, validation, test)] for an experiment: one seeded split by `fractions` (train, val,
    test), or `folds` folds. With folds, `train_on="rest"` is k-fold cross-validation (test = the
    fold; the rest is split again into train and validation by the ratio of `fractions[:2]` when
    `validation`), and `train_on="fold"` trains on the fold and tests on the rest (Wang et al. 2020's
    4 train / 16 test), with no validation set."""
    if not folds:
        return [tuple(split_indices(n, fractions, seed=seed, groups=groups))]
    if train_on not in ("rest", "fold"):
        raise ValueError(f"`train_on` must be 'rest' or 'fold'. Received: {train_on!r}")
    out = []
    for rest, fold in kfold_indices(n, folds, seed=seed, groups=groups):
        if train_on == "fold":
            out.append((fold, [], rest))
        elif validation:
            val_frac = fractions[1] / (fractions[0] + fractions[1])
            sub = split_indices(len(rest), (1 - val_frac, val_frac), seed=seed,
                                groups=None if groups is None else [groups[i] for i in rest])
            out.append(([rest[i] for i in sub[0]], [rest[i] for i in sub[1]], fold))
        else:
            out.append((rest, [], fold))
    return out
