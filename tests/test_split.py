import numpy as np
import pytest

from kpipe.errors import SplitError
from kpipe.split import parse_split, stratified_split


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
    # held-out 0.2 of 175 = 35 (sklearn rounds the held-out part up), then 18 / 17 ... split in half:
    assert len(parts["train"]) == 140
    assert len(parts["validation"]) + len(parts["test"]) == 35
    # stratified: each class keeps its proportion in train
    assert np.bincount(labels[parts["train"]]).tolist() == [40, 80, 20]


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


def test_too_small_class_is_named():
    labels = np.array([0] * 10 + [1] * 10 + [2])
    with pytest.raises(SplitError,
                       match=r"Class 'seven' has 1 sample in total; a stratified 3-way split needs at least 3"):
        stratified_split(labels, class_names=["a", "b", "seven"])


def test_held_out_part_too_small_is_clear():
    labels = np.repeat(np.arange(10), 3)
    with pytest.raises(SplitError, match="Cannot make a stratified split"):
        stratified_split(labels, (0.8, 0.1, 0.1))
