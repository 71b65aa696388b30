import warnings

import numpy as np
import pytest

from kpipe.errors import SplitError
from kpipe.split import class_sizes, parse_split, stratified_split


def test_parse_split():
    assert parse_split("0.8,0.1,0.1") == (0.8, 0.1, 0.1)
    assert parse_split([0.9, 0.1, 0]) == (0.9, 0.1, 0.0)
    for bad in ("0.8,0.2", "a,b,c", "0.5,0.5,0.5", "0,0.5,0.5", "-0.1,0.6,0.5"):
        with pytest.raises(SplitError, match="split"):
            parse_split(bad)


def test_stratified_split_sizes_cover_and_counts():
    labels = np.array([0] * 50 + [1] * 100 + [2] * 25)
    parts = stratified_split(labels, (0.8, 0.1, 0.1), seed=0)
    all_pos = np.concatenate(list(parts.values()))
    assert sorted(all_pos.tolist()) == list(range(175))
    # per class, largest remainder: 40/5/5, 80/10/10, 25 -> 20/2.5/2.5 -> 20/3/2
    assert len(parts["train"]) == 140
    assert len(parts["validation"]) == 18 and len(parts["test"]) == 17
    assert np.bincount(labels[parts["train"]]).tolist() == [40, 80, 20]
    assert np.bincount(labels[parts["validation"]]).tolist() == [5, 10, 3]
    assert np.bincount(labels[parts["test"]]).tolist() == [5, 10, 2]


def test_split_is_deterministic_and_seed_dependent():
    labels = np.repeat(np.arange(4), 25)
    a = stratified_split(labels, seed=3)
    b = stratified_split(labels, seed=3)
    c = stratified_split(labels, seed=4)
    assert all(np.array_equal(a[p], b[p]) for p in a)
    assert not np.array_equal(a["test"], c["test"])


def test_zero_fractions():
    labels = np.repeat(np.arange(2), 10)
    parts = stratified_split(labels, (0.9, 0.1, 0.0))
    assert len(parts["test"]) == 0 and len(parts["validation"]) == 2
    parts = stratified_split(labels, (1.0, 0.0, 0.0))
    assert len(parts["train"]) == 20


def test_too_small_class_is_named_with_count_and_remedy():
    labels = np.array([0] * 10 + [1] * 10 + [2] * 2)
    with pytest.raises(SplitError, match=r"Class 'seven' \(2 samples\) cannot have a sample in each of the 3 "
                                         r"partitions.*--split 0.9,0.1,0.*--small-classes warn"):
        stratified_split(labels, class_names=["a", "b", "seven"])


def test_small_class_with_warn_fills_train_then_validation():
    labels = np.array([0] * 10 + [1] * 10 + [2] * 2)
    with pytest.warns(UserWarning, match="Class '2' \\(2 samples\\) cannot"):
        parts = stratified_split(labels, small_classes_policy="warn")
    assert [int((labels[parts[p]] == 2).sum()) for p in ("train", "validation", "test")] == [1, 1, 0]


def test_classes_of_three_get_one_sample_per_partition():
    labels = np.repeat(np.arange(10), 3)
    parts = stratified_split(labels, (0.8, 0.1, 0.1))
    for p in ("train", "validation", "test"):
        assert sorted(labels[parts[p]].tolist()) == list(range(10))


# ---------------------------------------------------------- issue 9, item 7: exact per-class allocation
def test_rare_class_reaches_every_held_out_partition():
    labels = np.array([0] * 1000 + [1] * 3)
    parts = stratified_split(labels, (0.9, 0.05, 0.05), class_names=["common", "rare"])
    for p in ("validation", "test"):
        assert (labels[parts[p]] == 1).sum() == 1  # old code: 0, without a word
    assert [len(parts[p]) for p in ("train", "validation", "test")] == [901, 51, 51]


def test_six_plus_six_with_the_default_split():
    labels = np.array([0] * 6 + [1] * 6)
    parts = stratified_split(labels)  # old code: refused
    for p, n in (("train", 4), ("validation", 1), ("test", 1)):
        assert np.bincount(labels[parts[p]], minlength=2).tolist() == [n, n]


def test_small_classes_are_named_not_numbered():
    labels = np.array([0] * 20 + [1] * 20 + [2] * 2)
    with pytest.raises(SplitError) as e:
        stratified_split(labels, class_names=["cat", "dog", "owl"])
    assert "'owl'" in str(e.value) and "[2]" not in str(e.value)


def test_class_sizes_exact_and_totals_close():
    assert class_sizes([6, 6, 1000, 3], (0.8, 0.1, 0.1)).tolist() == [[4, 1, 1], [4, 1, 1], [800, 100, 100],
                                                                       [1, 1, 1]]
    sizes = class_sizes([15] * 100, (0.8, 0.1, 0.1))
    assert (sizes.sum(axis=1) == 15).all()
    # 12/1.5/1.5 per class: remainders carried from class to class share the halves fairly
    assert sizes.sum(axis=0).tolist() == [1200, 150, 150]
    assert class_sizes([1, 2], (0.8, 0.1, 0.1)).tolist() == [[1, 0, 0], [1, 1, 0]]
    assert class_sizes([5], (1.0, 0.0, 0.0)).tolist() == [[5, 0, 0]]


def test_groups_stay_in_one_partition():
    labels = np.repeat([0, 1], 50)
    groups = np.arange(100)
    groups[10:14] = 10  # a group of 4 in class 0
    groups[60:62] = 60  # a group of 2 in class 1
    groups[[5, 70]] = 5  # a group spanning two classes (conflicting labels)
    for seed in range(20):
        parts = stratified_split(labels, seed=seed, groups=groups)
        where = np.empty(100, dtype=int)
        for k, p in enumerate(("train", "validation", "test")):
            where[parts[p]] = k
        for g in np.unique(groups):
            assert len(set(where[groups == g].tolist())) == 1
        for p in ("validation", "test"):
            assert set(labels[parts[p]].tolist()) == {0, 1}


def test_a_class_that_is_one_group_cannot_be_split():
    labels = np.array([0] * 10 + [1] * 3)
    groups = np.array(list(range(10)) + [99, 99, 99])
    with pytest.raises(SplitError, match=r"'b' \(3 samples in 1 duplicate group\)"):
        stratified_split(labels, class_names=["a", "b"], groups=groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts = stratified_split(labels, groups=groups, small_classes_policy="warn")
    assert sorted(parts["train"].tolist())[-3:] == [10, 11, 12]


def test_a_group_mixing_classes_counts_for_the_rarest():
    # Three rare samples, each equal to a common one (identical features, conflicting labels).
    labels = np.array([0] * 100 + [1] * 3)
    groups = np.arange(103)
    groups[100:] = [0, 1, 2]
    parts = stratified_split(labels, groups=groups, class_names=["common", "rare"])
    for p in ("train", "validation", "test"):
        assert (labels[parts[p]] == 1).sum() == 1
    where = {int(i): p for p, pos in parts.items() for i in pos}
    assert all(where[k] == where[100 + k] for k in range(3))
