"""Every split tlunet makes (tlunet.data.splits): grouped, seeded, covering."""

import numpy as np
import pytest

from tlunet.data.splits import experiment_splits, fraction_indices, kfold_indices, split_indices, stratified_split


@pytest.mark.parametrize("k", [2, 5])
def test_kfold_groups_and_coverage(k):
    groups = [i // 3 for i in range(30)]
    folds = kfold_indices(30, k, seed=1, groups=groups)
    tests = [set(t) for _, t in folds]
    assert sorted(i for t in tests for i in t) == list(range(30))  # each item tested once
    for train, test in folds:
        assert not {groups[i] for i in train} & {groups[i] for i in test}
    with pytest.raises(ValueError, match="cannot make"):
        kfold_indices(4, 5, groups=[0, 0, 1, 1])


def test_fraction_indices_nested_and_grouped():
    groups = [i // 2 for i in range(40)]
    idx = list(range(40))
    sizes = [len(fraction_indices(idx, f, seed=3, groups=groups)) for f in (0.1, 0.3, 0.5, 1.0)]
    assert sizes == [4, 12, 20, 40]
    small = fraction_indices(idx, 0.1, seed=3, groups=groups)
    assert {groups[i] for i in small} and all(groups.count(groups[i]) == 2 for i in small)
    assert set(small) <= set(fraction_indices(idx, 0.3, seed=3, groups=groups))  # nested sweep
    with pytest.raises(ValueError, match="fraction"):
        fraction_indices(idx, 0)


def test_experiment_splits_one_split_folds_and_train_on_fold():
    groups = [i // 2 for i in range(40)]  # pairs of images of one subject
    (train, val, test), = experiment_splits(40, (0.7, 0.15, 0.15), seed=1, groups=groups)
    assert sorted(train + val + test) == list(range(40))
    assert not {groups[i] for i in train} & {groups[i] for i in test}
    folds = experiment_splits(40, (0.7, 0.15, 0.15), seed=1, groups=groups, folds=4)
    assert sorted(i for _, _, test in folds for i in test) == list(range(40))  # every case tested once
    for train, val, test in folds:
        assert val and not {groups[i] for i in train + val} & {groups[i] for i in test}
        assert not {groups[i] for i in train} & {groups[i] for i in val}
    swapped = experiment_splits(40, (0.7, 0.15, 0.15), seed=1, groups=groups, folds=4, train_on="fold")
    for (train, val, test), (_, _, fold) in zip(swapped, folds):
        assert train == fold and val == [] and len(test) == 30
    with pytest.raises(ValueError, match="train_on"):
        experiment_splits(40, (0.7, 0.15, 0.15), folds=4, train_on="test")


def test_split_indices_refuses_bad_fractions():
    with pytest.raises(ValueError, match="sum to 1"):
        split_indices(10, (0.5, 0.6))


def test_video_split_is_stratified_and_grouped():
    labels = np.repeat([0, 1, 2], 20)
    groups = [f"v{i // 4}" for i in range(60)]  # 4 frames per video, 5 videos per class
    train, val, test = stratified_split(labels, groups, (0.6, 0.2, 0.2), seed=3)
    assert sorted(train + val + test) == list(range(60))
    for part in (train, val, test):
        assert set(labels[part]) == {0, 1, 2}
    assert not {groups[i] for i in train} & {groups[i] for i in test}
