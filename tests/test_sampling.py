"""Samplers: property tests (hypothesis) and hand-checkable cases."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kpipe.sampling import (
    BalancedSampler,
    BootstrapSampler,
    SamplingError,
    SequentialSampler,
    ShuffleSampler,
    check_balance,
    check_target_distribution,
    epoch_rng,
    make_sampler,
    sampler_from_options,
)

PROPS = settings(max_examples=40, deadline=None)

class_counts = st.lists(st.integers(min_value=1, max_value=40), min_size=2, max_size=5)


def labels_of(counts) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


def batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


# ------------------------------------------------------------- shuffle / sequential
@PROPS
@given(n=st.integers(1, 300), seed=st.integers(0, 2**32 - 1), epoch=st.integers(0, 1000))
def test_shuffle_and_sequential_serve_every_position_once(n, seed, epoch):
    for sampler in (ShuffleSampler(n, seed), SequentialSampler(n, seed)):
        order = sampler.indices(epoch)
        assert order.dtype == np.int64 and len(order) == sampler.epoch_size == n
        np.testing.assert_array_equal(np.sort(order), np.arange(n))
        np.testing.assert_array_equal(order, sampler.indices(epoch))  # pure
    np.testing.assert_array_equal(SequentialSampler(n, seed).indices(epoch), np.arange(n))


@PROPS
@given(n=st.integers(8, 300), seed=st.integers(0, 2**32 - 1), epoch=st.integers(0, 1000))
def test_shuffle_same_seed_epoch_same_order_new_epoch_new_order(n, seed, epoch):
    a, b = ShuffleSampler(n, seed), ShuffleSampler(n, seed)
    np.testing.assert_array_equal(a.indices(epoch), b.indices(epoch))
    assert not np.array_equal(a.indices(epoch), a.indices(epoch + 1))  # 1/8! chance of equality at n=8


# ------------------------------------------------------------------- balanced
@PROPS
@given(counts=class_counts, batch_size=st.integers(1, 24), seed=st.integers(0, 2**31),
       balance=st.sampled_from(["undersample", "oversample"]), epoch=st.integers(0, 50))
def test_balanced_batches_hold_exact_class_counts(counts, batch_size, seed, balance, epoch):
    y = labels_of(counts)
    k = len(counts)
    s = BalancedSampler(labels=y, batch_size=batch_size, seed=seed, balance=balance)
    expected_size = k * (min(counts) if balance == "undersample" else max(counts))
    assert s.epoch_size == expected_size
    order = s.indices(epoch)
    assert len(order) == expected_size
    np.testing.assert_array_equal(np.bincount(y[order], minlength=k), np.full(k, expected_size // k))
    got = np.array([np.bincount(y[b], minlength=k) for b in batches(order, batch_size)])
    np.testing.assert_array_equal(got, s.batch_counts)  # the planned composition, every epoch
    full = got[: expected_size // batch_size]
    if len(full):
        # batch_size // k of each class, the remainder in rotation: no class favoured over the epoch
        assert set(np.unique(full)) <= {batch_size // k, batch_size // k + 1}
        assert np.ptp(full.sum(axis=0)) <= 1
    np.testing.assert_array_equal(order, s.indices(epoch))  # pure function of (seed, epoch)
    # oversampling repeats each sample of a class floor or ceil of (per-epoch count / count) times
    per_class = expected_size // k
    for c, n_c in enumerate(counts):
        times = np.bincount(order[y[order] == c], minlength=len(y))[y == c]
        assert times.min() >= per_class // n_c and times.max() <= -(-per_class // n_c)


@PROPS
@given(counts=class_counts, batch_size=st.integers(1, 24), seed=st.integers(0, 2**31))
def test_undersample_no_repeats_and_covers_large_classes_over_epochs(counts, batch_size, seed):
    y = labels_of(counts)
    s = BalancedSampler(labels=y, batch_size=batch_size, seed=seed, balance="undersample")
    m = min(counts)
    seen = np.zeros(len(y), dtype=bool)
    num_epochs = -(-max(counts) // m) + 1  # ceil(count / per-epoch count) + 1
    orders = []
    for epoch in range(num_epochs):
        order = s.indices(epoch)
        assert len(np.unique(order)) == len(order)  # no repeat within an epoch
        seen[order] = True
        orders.append(order)
    assert seen.all()  # every sample of every class served over the epochs
    if max(counts) > m and max(counts) * 2 > 8:  # a different subset of the large classes
        big = int(np.argmax(counts))
        subsets = {tuple(sorted(o[y[o] == big])) for o in orders}
        assert len(subsets) > 1


@PROPS
@given(counts=class_counts, batch_size=st.integers(1, 16), seed=st.integers(0, 2**31),
       n=st.integers(1, 200))
def test_samples_per_epoch_fixes_the_epoch_size(counts, batch_size, seed, n):
    y = labels_of(counts)
    s = BalancedSampler(labels=y, batch_size=batch_size, seed=seed, samples_per_epoch=n)
    order = s.indices(3)
    assert s.epoch_size == len(order) == n
    totals = np.bincount(y[order], minlength=len(counts))
    assert np.ptp(totals) <= 1  # uniform up to one sample


def test_balanced_hand_computed_case():
    y = np.array([0] * 50 + [1] * 100 + [2] * 25)
    s = BalancedSampler(labels=y, batch_size=7, seed=0)
    assert s.epoch_size == 75 and len(s.batch_counts) == 11
    # 7 // 3 = 2 each, the extra one in rotation: class 0, 1, 2, 0, ...
    assert s.batch_counts[:4].tolist() == [[3, 2, 2], [2, 3, 2], [2, 2, 3], [3, 2, 2]]
    assert s.batch_counts[-1].tolist() == [1, 2, 2]  # 75 = 10 * 7 + 5
    assert s.class_totals.tolist() == [25, 25, 25]
    over = BalancedSampler(labels=y, batch_size=7, balance="oversample")
    assert over.epoch_size == 300


def test_target_distribution():
    y = np.array([0] * 50 + [1] * 100 + [2] * 25)
    p = check_target_distribution({"cat": 0.5, "dog": 0.25, "bird": 0.25}, ["cat", "dog", "bird"])
    np.testing.assert_allclose(p, [0.5, 0.25, 0.25])
    s = BalancedSampler(labels=y, batch_size=8, target_distribution=p, seed=0)
    assert s.batch_counts[0].tolist() == [4, 2, 2]
    assert s.epoch_size == 100  # the largest epoch without repeats: bird 25 / 0.25
    order = s.indices(0)
    assert len(np.unique(order)) == len(order)
    np.testing.assert_array_equal(np.bincount(y[order]), [50, 25, 25])
    # shares are normalized; a class left out is never served
    np.testing.assert_allclose(check_target_distribution({"0": 2, 1: 2}, ["0", "1", "2"]), [0.5, 0.5, 0])
    s0 = BalancedSampler(labels=np.array([0, 0, 1, 1]), num_classes=3, batch_size=2,
                         target_distribution=np.array([0.5, 0.5, 0.0]))
    assert s0.epoch_size == 4
    # shares near the float maximum: their sum overflows, their ratios do not
    np.testing.assert_allclose(check_target_distribution({"cat": 1e308, "dog": 1e308}, ["cat", "dog", "bird"]),
                               [0.5, 0.5, 0])
    s1 = BalancedSampler(labels=np.array([0, 0, 1, 1]), num_classes=2, batch_size=2,
                         target_distribution=np.array([1e308, 1e308]))
    np.testing.assert_allclose(s1.target_distribution, [0.5, 0.5])


def test_balanced_names_a_class_without_samples():
    y = np.array([0, 0, 2, 2])
    with pytest.raises(SamplingError, match=r"Class 'bird' \(index 1\) has no sample in this partition"):
        BalancedSampler(labels=y, num_classes=3, batch_size=2, class_names=("cat", "bird", "dog"))
    unbound = BalancedSampler(batch_size=2)
    with pytest.raises(SamplingError, match=r"Class 'bird' \(index 1\) has no sample in partition 'train'"):
        unbound.bind(y, class_names=("cat", "bird", "dog"), partition="train")
    with pytest.raises(SamplingError, match=r"Class 'bird' \(index 1\) has no sample in partition 'train'"):
        BootstrapSampler(balanced=True).bind(y, class_names=("cat", "bird", "dog"), partition="train")


# ------------------------------------------------------------------ bootstrap
@PROPS
@given(counts=class_counts, seed=st.integers(0, 2**31), epoch=st.integers(0, 100),
       kind=st.sampled_from(["none", "stratified", "balanced"]))
def test_bootstrap_drawn_and_oob_partition_the_positions(counts, seed, epoch, kind):
    y = labels_of(counts)
    n, k = len(y), len(counts)
    s = BootstrapSampler(labels=y, seed=seed, stratified=kind == "stratified", balanced=kind == "balanced")
    drawn = s.indices(epoch)
    assert len(drawn) == s.epoch_size == n
    oob = s.oob(epoch)
    assert set(drawn.tolist()) | set(oob.tolist()) == set(range(n))
    assert not set(drawn.tolist()) & set(oob.tolist())
    np.testing.assert_array_equal(drawn, s.indices(epoch))  # pure
    got = np.bincount(y[drawn], minlength=k)
    if kind == "stratified":
        np.testing.assert_array_equal(got, counts)
    elif kind == "balanced":
        assert np.ptp(got) <= 1 and got.sum() == n


def test_bootstrap_redraws_every_epoch():
    s = BootstrapSampler(labels=np.arange(100) % 3, seed=0)
    assert not np.array_equal(s.indices(0), s.indices(1))
    assert 0.2 < len(s.oob(0)) / 100 < 0.5  # about 1/e out of bag


# ------------------------------------------------------------------- validation
def test_make_sampler_and_validators():
    y = np.array([0, 0, 1, 1, 1])
    classes = ["a", "b"]
    assert isinstance(make_sampler("shuffle", labels=y, classes=classes, batch_size=2), ShuffleSampler)
    b = make_sampler("bootstrap", labels=y, classes=classes, batch_size=2, balance="stratified")
    assert b.stratified and not b.balanced
    assert check_balance("balanced", None) == "undersample"
    assert check_balance("bootstrap", None) == "none"
    with pytest.raises(SamplingError, match=r"`sampling` must be one of .* Received: sampling='random'"):
        make_sampler("random", labels=y, classes=classes, batch_size=2)
    with pytest.raises(SamplingError, match=r"Received: balance='oversample' with sampling='shuffle'"):
        make_sampler("shuffle", labels=y, classes=classes, batch_size=2, balance="oversample")
    with pytest.raises(SamplingError, match=r"balance='stratified'"):
        make_sampler("balanced", labels=y, classes=classes, batch_size=2, balance="stratified")
    with pytest.raises(SamplingError, match=r"key that is not a class: 'zebra'"):
        check_target_distribution({"zebra": 1.0}, classes)
    with pytest.raises(SamplingError, match=r"`target_distribution\['a'\]` must be a finite number >= 0"):
        check_target_distribution('{"a": -1}', classes)
    with pytest.raises(SamplingError, match=r"`target_distribution` must be JSON"):
        check_target_distribution("{a: 1", classes)
    with pytest.raises(SamplingError, match=r"gives class 'a' \(index 0\) twice"):
        check_target_distribution({"a": 1, 0: 2}, classes)
    with pytest.raises(SamplingError, match=r"`samples_per_epoch` must be a positive integer"):
        make_sampler("balanced", labels=y, classes=classes, batch_size=2, samples_per_epoch=0)


def test_samplers_pickle():
    s = BalancedSampler(labels=np.array([0, 1, 1, 2]), batch_size=3, seed=4)
    clone = pickle.loads(pickle.dumps(s))
    np.testing.assert_array_equal(clone.indices(5), s.indices(5))


# ------------------------------------------------------------------- seeds, unbound samplers (issues 8, 11)
def test_seeds_are_used_whole():
    """seed=0 and seed=2**32 (and 2**32 + 1 and 1) used to give identical shuffles (the seed was cut to 32 bits)."""
    for a, b in ((0, 2**32), (1, 2**32 + 1), (7, 2**63 + 7)):
        assert not np.array_equal(ShuffleSampler(50, a).indices(0), ShuffleSampler(50, b).indices(0))
    # a large seed never shares a stream with a small seed's (epoch, stream) words
    assert not np.array_equal(epoch_rng(2**32, 5).random(4), epoch_rng(0, 1, 5).random(4))
    # seeds below 2**32 keep the streams of earlier kpipe versions
    np.testing.assert_array_equal(epoch_rng(3, 2).random(4), np.random.default_rng([3, 2]).random(4))
    for bad in (-1, 2**64, 1.5, True, "3"):
        with pytest.raises(SamplingError, match=r"`seed` must be an integer in \[0, 18446744073709551615\]"):
            ShuffleSampler(5, bad)
    assert len(ShuffleSampler(5, 2**64 - 1).indices(0)) == 5  # the largest seed is valid


def test_unbound_sampler_binds_to_a_partition():
    y = np.array([0] * 6 + [1] * 2 + [2] * 4)
    unbound = BalancedSampler(batch_size=3, seed=5, balance="oversample",
                              target_distribution='{"a": 2, "b": 1, "c": 1}')
    assert not unbound.bound and unbound.seed == 5 and unbound.batch_size == 3
    with pytest.raises(SamplingError, match=r"unbound"):
        unbound.indices(0)
    bound = unbound.bind(y, class_names=["a", "b", "c"], partition="train")
    np.testing.assert_allclose(bound.target_distribution, [0.5, 0.25, 0.25])
    direct = BalancedSampler(labels=y, batch_size=3, seed=5, balance="oversample",
                             target_distribution=np.array([0.5, 0.25, 0.25]))
    np.testing.assert_array_equal(bound.indices(2), direct.indices(2))
    assert bound.describe() == {"sampling": "balanced", "seed": 5, "batch_size": 3, "balance": "oversample"}
    # num_classes comes from the class names, not from the labels present
    assert BootstrapSampler(balanced=False).bind(np.array([0, 0, 1]), class_names=["a", "b", "c"]).num_classes == 3
    shuffle = ShuffleSampler(seed=2).bind(y)
    np.testing.assert_array_equal(shuffle.indices(1), ShuffleSampler(len(y), 2).indices(1))
    assert shuffle.bind(y) is shuffle
    with pytest.raises(SamplingError, match=r"covers 12 positions, but partition 'x' has 3 samples"):
        shuffle.bind(np.array([0, 1, 0]), partition="x")
    with pytest.raises(SamplingError, match=r"`batch_size` must be a positive integer"):
        ShuffleSampler(batch_size=0)
    with pytest.raises(SamplingError, match=r"`labels` row 1 holds class index -1"):
        BalancedSampler(labels=np.array([0, -1, 1]), batch_size=2)
    with pytest.raises(SamplingError, match=r"`samples_per_epoch` and `target_distribution` apply to"):
        sampler_from_options("shuffle", samples_per_epoch=3)


# ------------------------------------------------------------------- plan cost (issue 14 item 3)
def test_balanced_plan_cost_follows_the_epoch_not_the_partition(monkeypatch):
    """At 99:1 (5 x 3,960 + 5 x 40) an undersampled epoch is 400 samples: each epoch permutes O(400) positions,
    not the 20,000 of the partition (a large class's stream permutation serves 99 epochs)."""
    import kpipe.sampling as sampling

    y = np.repeat(np.arange(10), [3960] * 5 + [40] * 5)
    s = BalancedSampler(labels=y, batch_size=64, seed=3)
    fresh = BalancedSampler(labels=y, batch_size=64, seed=3)
    permuted = []
    real_rng = sampling.epoch_rng

    class Counting:
        def __init__(self, rng):
            self.rng = rng

        def permutation(self, x):
            permuted.append(x if isinstance(x, int) else len(x))
            return self.rng.permutation(x)

        def __getattr__(self, name):
            return getattr(self.rng, name)

    monkeypatch.setattr(sampling, "epoch_rng", lambda *a: Counting(real_rng(*a)))
    epochs = 198
    for e in range(epochs):
        assert len(s.indices(e)) == 400
    # per epoch: 5 small classes permuted (40 each); over 198 epochs each large class's stream is permuted
    # twice (epochs 0-98 and 99-197): 10 x 3,960
    assert sum(permuted) == epochs * 5 * 40 + 10 * 3960
    monkeypatch.undo()
    for e in (150, 3, 197, 3, 99, 98, 0):  # the kept permutations never change an epoch: any order of calls
        np.testing.assert_array_equal(s.indices(e), fresh.indices(e))


def test_balanced_window_across_two_stream_permutations():
    """counts 7 and 3 at batch 4: class 0 gives 3 per epoch, its windows cross permutation boundaries."""
    y = np.array([0] * 7 + [1] * 3)
    s = BalancedSampler(labels=y, batch_size=4, seed=11)
    served = []
    for e in range(7):
        order = s.indices(e)
        assert len(set(order.tolist())) == 6 and np.bincount(y[order]).tolist() == [3, 3]
        served.append(sorted(p for p in order.tolist() if y[p] == 0))
    assert set().union(*map(set, served[:4])) == set(range(7))  # every sample within ceil(7 / 3) + 1 epochs
    clone = pickle.loads(pickle.dumps(s))
    assert clone._stream_cache == {}  # the kept permutations are not pickled
    for e in range(7):
        np.testing.assert_array_equal(clone.indices(e), s.indices(e))
