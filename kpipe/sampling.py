"""Samplers: which sample positions an epoch visits, and in what order.

A sampler is a pure function of the epoch: ``indices(epoch)`` derives a fresh
``np.random.Generator`` from ``(seed, epoch)`` and keeps no iterator state
(as Grain's samplers do), so every thread, process or resumed run computes the
same order for the same epoch. Positions index one partition's ID list.

A sampler is also the one owner of the sampling options of a
`kpipe.DataGenerator`: ``seed``, ``batch_size`` and its own options. Build it
*unbound* (without labels) and give it to the generator, which binds it to the
partition's labels (`Sampler.bind`)::

    DataGenerator("prepared", "train", sampler=BalancedSampler(batch_size=64, seed=5, balance="oversample"))

Modes (`SAMPLERS`, resolved by `make_sampler`):

* ``"sequential"``: every position once, in manifest order (validation, test).
* ``"shuffle"``: every position once, in a new order every epoch (train).
* ``"balanced"``: every batch holds the classes in fixed proportions (equal,
  or a ``target_distribution``); see `BalancedSampler`.
* ``"bootstrap"``: draws with replacement, redrawn every epoch, with the
  out-of-bag positions available; see `BootstrapSampler`.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from kpipe._validation import (
    check_bool,
    check_choice,
    check_class_index,
    check_class_labels,
    check_number,
    check_positive_int,
    check_seed,
    parse_json_value,
)
from kpipe.errors import SamplingError

# Entropy words that keep the random streams of one (seed, epoch) apart.
_STREAM_BATCH = 1  # within-batch shuffles of the balanced sampler
_STREAM_CLASS = 2  # per-class permutation cycles of the balanced sampler
_STREAM_BOOTSTRAP = 3  # bootstrap draws
STREAM_AUGMENT = 4  # the `transform` hook's generator (seed, epoch, 4, batch index)
STREAM_AUGMENT_SAMPLE = 5  # per sample: (seed, epoch, 5, slot of the sample in the epoch's order)


BALANCE_MODES = {
    "balanced": ("undersample", "oversample"),
    "bootstrap": ("none", "stratified", "balanced"),
}
"""Sampling mode -> accepted ``balance`` values; the first is the default."""

DEFAULT_BATCH_SIZE = 32


def epoch_rng(seed: int, epoch: int, *stream: int) -> np.random.Generator:
    """The generator of one epoch (and stream): a pure function of ``(seed, epoch, *stream)``.

    Seeds below ``2**32`` use ``np.random.default_rng([seed, epoch, *stream])``;
    larger seeds (up to `MAX_SEED`) use ``SeedSequence(seed, spawn_key=(epoch,
    *stream))``, so the whole integer counts: ``seed=0`` and ``seed=2**32``
    give different streams, and no large seed shares a stream with a small
    one (the large form's third entropy word is 0, which no stream number is).
    ``SeedSequence`` mixes the entropy words, so neighbouring seeds or epochs
    give independent streams.

    Raises:
        SamplingError: If ``seed`` is not an integer in ``[0, MAX_SEED]``.
    """
    seed = check_seed_value(seed)
    words = (int(epoch), *map(int, stream))
    if seed < 2**32:
        return np.random.default_rng([seed, *words])
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=words))


# ---------------------------------------------------------------- validators
def check_seed_value(seed: Any, name: str = "seed") -> int:
    """A sampling seed: an integer in ``[0, MAX_SEED]`` (see `epoch_rng`).

    Raises:
        SamplingError: Otherwise.
    """
    return check_seed(seed, name, error=SamplingError)


def check_sampling(sampling: str) -> str:
    """Validate a sampling mode name; returns it.

    Raises:
        SamplingError: If it is not a key of `SAMPLERS`.
    """
    return check_choice(sampling, "sampling", SAMPLERS, error=SamplingError)


def check_balance(sampling: str, balance: str | None) -> str | None:
    """Validate ``balance`` for a sampling mode and return it normalized.

    ``"balanced"`` takes ``"undersample"`` (default) or ``"oversample"``;
    ``"bootstrap"`` takes ``"none"`` (default: plain bootstrap),
    ``"stratified"`` or ``"balanced"``; other modes take `None` only.

    Raises:
        SamplingError: If ``balance`` does not apply to ``sampling``.
    """
    allowed = BALANCE_MODES.get(sampling)
    if allowed is None:
        if balance is not None:
            raise SamplingError(
                f"`balance` applies to sampling='balanced' or 'bootstrap' only. "
                f"Received: balance={balance!r} with sampling={sampling!r}"
            )
        return None
    if balance is None:
        return allowed[0]
    if balance not in allowed:
        raise SamplingError(
            f"With sampling={sampling!r}, `balance` must be one of {', '.join(map(repr, allowed))}. "
            f"Received: balance={balance!r}"
        )
    return balance


def check_target_distribution(target_distribution: Any, classes: Sequence[str]) -> np.ndarray | None:
    """Validate a target class distribution and return it as probabilities.

    Args:
        target_distribution: `None` (uniform), a mapping class name or index
            -> share (classes left out get 0), a sequence of ``len(classes)``
            shares, or JSON text of either. Shares are finite, >= 0, and are
            divided by their sum.
        classes: Class names, in label order.

    Returns:
        float64 array of shape ``(num_classes,)`` summing to 1, or `None`.

    Raises:
        SamplingError: On an unknown class, a class given twice, a negative /
            NaN / infinite share, a wrong length, or all shares zero.
    """
    value = parse_json_value(target_distribution, "target_distribution", example='{"cat": 0.5, "dog": 0.5}',
                             error=SamplingError)
    if value is None:
        return None
    p = np.zeros(len(classes), dtype=np.float64)
    if isinstance(value, Mapping):
        given: dict[int, Any] = {}
        for key, share in value.items():
            c = check_class_index(key, classes, argument="target_distribution", error=SamplingError)
            if c in given:
                raise SamplingError(
                    f"`target_distribution` gives class {classes[c]!r} (index {c}) twice, as {given[c]!r} and "
                    f"{key!r}. Give each class once. Received: target_distribution={value!r}"
                )
            given[c] = key
            p[c] = _share(share, key)
    elif isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, str):
        if len(value) != len(classes):
            raise SamplingError(
                f"`target_distribution` as a list needs one share per class ({len(classes)}). "
                f"Received: target_distribution={list(value)!r}"
            )
        p[:] = [_share(s, i) for i, s in enumerate(value)]
    else:
        raise SamplingError(
            "`target_distribution` must map classes to shares, e.g. {'cat': 0.5, 'dog': 0.25, 'bird': 0.25}. "
            f"Received: target_distribution={value!r}"
        )
    if p.max() <= 0:
        raise SamplingError(
            f"`target_distribution` gives every class a share of 0. Received: target_distribution={value!r}"
        )
    p = p / p.max()  # first: shares near the float maximum would sum to infinity
    return p / p.sum()


def _share(value: Any, key: Any) -> float:
    return check_number(value, f"target_distribution[{key!r}]", minimum=0, error=SamplingError)


# ------------------------------------------------------------------ samplers
@dataclasses.dataclass(frozen=True)
class Sampler(abc.ABC):
    """Base sampler over ``num_samples`` positions of a partition.

    A sampler built without ``num_samples`` (or ``labels``) is *unbound*: a
    set of options that `kpipe.DataGenerator` binds to its partition
    (`bind`). A bound sampler plans epochs.

    Attributes:
        num_samples: Positions ``0 .. num_samples - 1`` of the partition, or
            `None` (unbound).
        seed: Seed of every random choice: an integer in ``[0, 2**64)``, used
            whole (see `epoch_rng`). Defaults to 0.
        batch_size: Samples per batch, or `None` to take the generator's
            (default 32). The balanced sampler plans each batch's classes.

    Raises:
        SamplingError: On an invalid option (the message names it).
    """

    num_samples: int | None = None
    seed: int = 0
    batch_size: int | None = None

    mode: ClassVar[str] = ""
    """The sampling mode name (``"shuffle"``...), `DataGenerator.sampling`."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "seed", check_seed_value(self.seed))
        object.__setattr__(self, "batch_size", check_positive_int(self.batch_size, "batch_size", allow_none=True,
                                                                  error=SamplingError))
        object.__setattr__(self, "num_samples", check_positive_int(self.num_samples, "num_samples", allow_none=True,
                                                                   error=SamplingError))

    @property
    def bound(self) -> bool:
        """True once the sampler knows its partition (``num_samples``)."""
        return self.num_samples is not None

    @property
    def balance(self) -> str | None:
        """The normalized ``balance`` option (`None` for shuffle and sequential)."""
        return None

    def bind(self, labels: Any, *, class_names: Sequence[str] | None = None,
             partition: str | None = None) -> Sampler:
        """This sampler over a partition whose samples have class indices ``labels``.

        Args:
            labels: Class index of every position: int array of shape ``(n,)``.
            class_names: Class names, in label order (their number is the
                number of classes; names appear in messages).
            partition: The partition's name, for messages.

        Returns:
            A bound sampler with the same options (``self`` if it is bound
            to ``n`` positions already).

        Raises:
            SamplingError: If a bound sampler covers another number of
                positions, or the labels do not fit the options.
        """
        y = check_class_labels(labels, num_classes=None if class_names is None else len(class_names),
                               error=SamplingError)
        if self.bound:
            if self.num_samples != len(y):
                where = f"partition {partition!r}" if partition else "the partition"
                raise SamplingError(
                    f"The sampler covers {self.num_samples} positions, but {where} has {len(y)} samples. "
                    f"Pass it unbound (without `num_samples` / `labels`) and the generator binds it. "
                    f"Received: sampler={self!r}"
                )
            return self
        return self._bound_copy(y, class_names, partition)

    def _bound_copy(self, labels: np.ndarray, class_names: Sequence[str] | None, partition: str | None) -> Sampler:
        return dataclasses.replace(self, num_samples=len(labels))

    def _require_bound(self) -> None:
        if not self.bound:
            raise SamplingError(
                f"This {type(self).__name__} is unbound (no `num_samples` / `labels`): give it to a "
                "`DataGenerator` (`sampler=`), or call `bind(labels)` first."
            )

    @property
    def epoch_size(self) -> int:
        """Number of positions one epoch visits (fixed for the sampler's life)."""
        self._require_bound()
        return int(self.num_samples)

    @abc.abstractmethod
    def indices(self, epoch: int) -> np.ndarray:
        """Positions visited in ``epoch``: int64 array of shape ``(epoch_size,)``."""

    def describe(self) -> dict[str, Any]:
        """The sampler's options, JSON-ready: ``sampling``, ``seed``, ``batch_size``, ``balance``."""
        return {"sampling": self.mode or type(self).__name__, "seed": self.seed, "batch_size": self.batch_size,
                "balance": self.balance}


@dataclasses.dataclass(frozen=True)
class SequentialSampler(Sampler):
    """Every position once per epoch, in manifest order (validation and test).

    ``epoch_size == num_samples``.
    """

    mode: ClassVar[str] = "sequential"

    def indices(self, epoch: int) -> np.ndarray:
        self._require_bound()
        return np.arange(self.num_samples, dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class ShuffleSampler(Sampler):
    """Every position once per epoch, in a new random order each epoch.

    ``epoch_size == num_samples``; the order is
    ``epoch_rng(seed, epoch).permutation(num_samples)``.
    """

    mode: ClassVar[str] = "shuffle"

    def indices(self, epoch: int) -> np.ndarray:
        self._require_bound()
        return epoch_rng(self.seed, epoch).permutation(self.num_samples).astype(np.int64)


def _class_positions(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, ...]:
    return tuple(np.flatnonzero(labels == c).astype(np.int64) for c in range(num_classes))


def _class_name(class_names: Sequence[str] | None, c: int) -> str:
    name = repr(class_names[c]) if class_names is not None and c < len(class_names) else repr(str(c))
    return f"{name} (index {c})"


def _in_partition(partition: str | None) -> str:
    return f"partition {partition!r}" if partition else "this partition"


def _init_labelled(sampler: Sampler) -> tuple[np.ndarray, int] | None:
    """Validate a labelled sampler's options and ``labels``; `None` when unbound."""
    Sampler.__post_init__(sampler)
    if sampler.class_names is not None:
        object.__setattr__(sampler, "class_names", tuple(str(c) for c in sampler.class_names))
    num_classes = check_positive_int(sampler.num_classes, "num_classes", allow_none=True, error=SamplingError)
    if sampler.labels is None:
        if sampler.num_samples is not None:
            raise SamplingError(f"A {type(sampler).__name__} needs `labels` (one class index per position), "
                                f"not only `num_samples`. Received: num_samples={sampler.num_samples}")
        return None
    if num_classes is None and sampler.class_names is not None:
        num_classes = len(sampler.class_names)
    labels = check_class_labels(sampler.labels, num_classes=num_classes, error=SamplingError)
    if labels.size == 0:
        raise SamplingError("`labels` is empty: a sampler needs at least one position.")
    k = int(labels.max()) + 1 if num_classes is None else num_classes
    object.__setattr__(sampler, "labels", labels)
    object.__setattr__(sampler, "num_classes", k)
    object.__setattr__(sampler, "num_samples", len(labels))
    return labels, k


def _labelled_copy(sampler: Sampler, labels: np.ndarray, class_names: Sequence[str] | None,
                   partition: str | None) -> Sampler:
    return dataclasses.replace(
        sampler, labels=labels, num_samples=None,
        num_classes=sampler.num_classes if sampler.num_classes is not None else (
            len(class_names) if class_names is not None else None),
        class_names=tuple(class_names) if class_names is not None else sampler.class_names,
        partition=partition if partition is not None else sampler.partition)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class BalancedSampler(Sampler):
    """Every batch holds the classes in fixed proportions, exactly.

    Each full batch holds ``batch_size * p[c]`` samples of class ``c`` (``p``
    uniform unless ``target_distribution`` is given): ``batch_size //
    num_classes`` each when uniform, the remainder going to the classes in
    rotation (largest accumulated shortfall first, ties to the lower class
    index), so no class is favoured over the epoch. The batch composition is
    the same every epoch; which samples fill it, and their order inside the
    batch, are drawn anew every epoch from ``(seed, epoch)``.

    Epoch size (``epoch_size``, fixed for the sampler's life; the generator's
    ``len`` is ``ceil(epoch_size / batch_size)``):

    * ``balance="undersample"``: ``num_classes * smallest class count`` (with
      ``target_distribution``: the largest size at which no class repeats).
      No sample repeats within an epoch; each class walks through endless
      random permutations of its samples, epoch after epoch, so the large
      classes are served a different subset every epoch and every sample
      within ``ceil(count / per-epoch count) + 1`` epochs.
    * ``balance="oversample"``: ``num_classes * largest class count`` (with
      ``target_distribution``: the smallest size at which every sample of
      every class fits once); the smaller classes repeat, each sample
      ``floor`` or ``ceil`` of (per-epoch count / class count) times.
    * ``samples_per_epoch=N``: ``N`` exactly, whichever ``balance``.

    Attributes:
        labels: Class index of every position: int array of shape
            ``(num_samples,)``; `None` for an unbound sampler.
        batch_size: Samples per batch; the composition is planned per batch
            (`None`: the generator's, 32 when planned without one).
        num_classes: Number of classes; defaults to ``len(class_names)``, or
            ``max(labels) + 1``.
        balance: ``"undersample"`` (default) or ``"oversample"``.
        samples_per_epoch: Explicit epoch size, or `None`.
        target_distribution: Class shares: a mapping class name (or index)
            -> share, a sequence of one share per class, JSON text of either,
            or `None` for uniform (see `check_target_distribution`); held as
            a float array ``(num_classes,)`` once bound. Classes with share 0
            are never served.
        class_names: Names used in messages and to resolve
            ``target_distribution`` keys.
        partition: The partition's name, used in messages.
        num_samples: Set from ``labels``.
        seed: Seed of every random choice.

    Raises:
        SamplingError: If a class to be served has no sample (the message
            names it, its index and the partition), or an option is invalid.

    Example:
        >>> s = BalancedSampler(labels=np.array([0] * 50 + [1] * 100 + [2] * 25), batch_size=6)
        >>> s.epoch_size  # 3 classes x 25 (smallest class)
        75
        >>> np.bincount(np.array([0] * 50 + [1] * 100 + [2] * 25)[s.indices(0)[:6]])
        array([2, 2, 2])
        >>> unbound = BalancedSampler(batch_size=64, seed=5, balance="oversample")  # for DataGenerator(sampler=)
    """

    labels: np.ndarray | None = dataclasses.field(default=None, repr=False)
    num_classes: int | None = None
    balance: str = "undersample"
    samples_per_epoch: int | None = None
    target_distribution: Any = None
    class_names: tuple[str, ...] | None = dataclasses.field(default=None, repr=False)
    partition: str | None = dataclasses.field(default=None, repr=False)
    _plan: dict | None = dataclasses.field(init=False, repr=False, default=None)
    _stream_cache: dict = dataclasses.field(init=False, repr=False, default_factory=dict)

    mode: ClassVar[str] = "balanced"

    def __post_init__(self) -> None:
        object.__setattr__(self, "balance", check_balance("balanced", self.balance))
        object.__setattr__(self, "samples_per_epoch", check_positive_int(
            self.samples_per_epoch, "samples_per_epoch", allow_none=True, error=SamplingError))
        bound = _init_labelled(self)
        if bound is None:
            if self.target_distribution is not None and not isinstance(self.target_distribution, np.ndarray):
                parse_json_value(self.target_distribution, "target_distribution", error=SamplingError)
            return
        labels, k = bound
        if self.batch_size is None:
            object.__setattr__(self, "batch_size", DEFAULT_BATCH_SIZE)
        if self.target_distribution is None:
            p = np.full(k, 1.0 / k)
        elif isinstance(self.target_distribution, np.ndarray):
            p = np.asarray(self.target_distribution, dtype=np.float64)
            if p.shape != (k,) or not np.all(np.isfinite(p)) or p.min() < 0 or p.max() <= 0:
                raise SamplingError(
                    f"`target_distribution` must hold {k} finite shares >= 0 with a positive sum. "
                    f"Received: target_distribution={p.tolist()!r}"
                )
            p = p / p.max()
            p = p / p.sum()
        else:
            names = self.class_names if self.class_names is not None else tuple(str(c) for c in range(k))
            p = check_target_distribution(self.target_distribution, names)
        object.__setattr__(self, "target_distribution", p)
        positions = _class_positions(labels, k)
        counts = np.array([len(q) for q in positions])
        empty = [c for c in range(k) if p[c] > 0 and counts[c] == 0]
        if empty:
            names = ", ".join(_class_name(self.class_names, c) for c in empty)
            raise SamplingError(
                f"Class {names} has no sample in {_in_partition(self.partition)}, so balanced batches cannot hold "
                "it. Prepare with a split that gives every class samples there, or pass a `target_distribution` "
                "that gives this class a share of 0."
            )
        active = np.flatnonzero(p > 0)
        if self.samples_per_epoch is not None:
            n = int(self.samples_per_epoch)
            plan = self._make_plan(n, p)
        elif self.balance == "oversample":
            n = math.ceil(max(counts[c] / p[c] for c in active) - 1e-9)
            plan = self._make_plan(n, p)
            while np.any(plan["totals"][active] < counts[active]):  # rounding left a class short
                n += 1
                plan = self._make_plan(n, p)
        else:  # undersample
            n = math.floor(min(counts[c] / p[c] for c in active) + 1e-9)
            plan = self._make_plan(max(n, 1), p)
            while n > 1 and np.any(plan["totals"] > counts):  # rounding gave a class one too many
                n -= 1
                plan = self._make_plan(n, p)
        plan["positions"] = positions
        plan["counts"] = counts
        object.__setattr__(self, "_plan", plan)

    def _bound_copy(self, labels, class_names, partition) -> Sampler:
        return _labelled_copy(self, labels, class_names, partition)

    def _make_plan(self, n: int, p: np.ndarray) -> dict:
        """Per-batch class counts for an epoch of ``n`` samples (the same every epoch)."""
        b = int(self.batch_size)
        k = len(p)
        num_batches = -(-n // b)
        sizes = np.full(num_batches, b, dtype=np.int64)
        sizes[-1] = n - b * (num_batches - 1)
        per_batch = np.zeros((num_batches, k), dtype=np.int64)
        credit = np.zeros(k)
        for i, size in enumerate(sizes):
            quota = size * p
            base = np.floor(quota + 1e-9).astype(np.int64)
            frac = np.where(quota - base > 1e-9, quota - base, 0.0)
            credit += frac
            extra = int(size - base.sum())
            if extra > 0:
                candidates = np.flatnonzero(frac > 0) if np.count_nonzero(frac > 0) >= extra else np.flatnonzero(p > 0)
                # largest accumulated credit first, ties to the lower class index
                chosen = candidates[np.lexsort((candidates, -credit[candidates]))[:extra]]
                base[chosen] += 1
                credit[chosen] -= 1.0
            per_batch[i] = base
        # the class of every slot of the epoch, batch by batch
        slot_class = np.concatenate([np.repeat(np.arange(k), row) for row in per_batch])
        slot_batch = np.repeat(np.arange(num_batches), sizes)
        totals = per_batch.sum(axis=0)
        class_slots = [(int(c), np.flatnonzero(slot_class == c)) for c in np.flatnonzero(totals)]
        return {"per_batch": per_batch, "totals": totals, "class_slots": class_slots,
                "slot_batch": slot_batch, "epoch_size": int(n)}

    @property
    def epoch_size(self) -> int:
        self._require_bound()
        return self._plan["epoch_size"]

    @property
    def batch_counts(self) -> np.ndarray:
        """Samples of each class in each batch: int64 array ``(num_batches, num_classes)``."""
        self._require_bound()
        return self._plan["per_batch"]

    @property
    def class_totals(self) -> np.ndarray:
        """Samples of each class per epoch: int64 array ``(num_classes,)``."""
        self._require_bound()
        return self._plan["totals"]

    def _class_window(self, c: int, epoch: int, rng: np.random.Generator) -> np.ndarray:
        """The ``T`` samples of class ``c`` for ``epoch`` (``T`` = its per-epoch total), in random order.

        With ``T = q * count + r``: every sample ``q`` times (permutations
        drawn from ``rng``, the epoch's generator), then positions
        ``[epoch*r, (epoch+1)*r)`` of the class's stream, the concatenation of
        permutations of its samples (permutation ``j`` from ``(seed, j,
        class)``). When that window crosses from one permutation into the
        next, samples already taken from the first are skipped in the
        second: no sample repeats beyond ``q + 1`` times in an epoch (none
        when undersampling), and over successive epochs every sample is
        served.

        Cost: ``O(T)`` per epoch, amortized. A stream permutation serves
        ``count / r`` consecutive epochs and is kept (`_stream_permutation`),
        so a class of 4,000 samples that gives 40 per epoch is permuted once
        every 100 epochs, not every epoch.
        """
        members = self._plan["positions"][c]
        n = len(members)
        repeats, t = divmod(int(self._plan["totals"][c]), n)  # every sample `repeats` times, then `t` more
        if not repeats:  # undersampled: a window of the stream (most classes, most of the time)
            j, a = divmod(epoch * t, n)
            if a + t <= n:
                return members[self._stream_permutation(c, j)[a : a + t]]
        parts = [rng.permutation(n) for _ in range(repeats)]
        if t:
            j, a = divmod(epoch * t, n)
            first = self._stream_permutation(c, j)
            if a + t <= n:
                parts.append(first[a : a + t])
            else:
                tail = first[a:]
                # The first t - len(tail) samples of the next permutation that are not in `tail` lie in its
                # first t entries (at most len(tail) of them are in `tail`).
                following = self._stream_permutation(c, j + 1)[:t]
                following = following[~np.isin(following, tail)]
                parts.append(np.concatenate([tail, following[: t - len(tail)]]))
        idx = parts[0] if len(parts) == 1 else rng.permutation(np.concatenate(parts))
        return members[idx]

    def _stream_permutation(self, c: int, j: int) -> np.ndarray:
        """Permutation ``j`` of class ``c``'s stream, ``(seed, j, class)``; the last two of each class are kept."""
        kept = self._stream_cache.get(c, ())
        for key, perm in kept:
            if key == j:
                return perm
        n = len(self._plan["positions"][c])
        perm = epoch_rng(self.seed, j, _STREAM_CLASS, c).permutation(n).astype(np.int32 if n < 2**31 else np.int64)
        self._stream_cache[c] = ((j, perm), *kept[:1])  # one tuple swap: safe under threads
        return perm

    def indices(self, epoch: int) -> np.ndarray:
        """Positions of ``epoch``: each batch's planned classes, filled by `_class_window`, shuffled in the batch.

        One generator per epoch, ``(seed, epoch)``, draws the within-batch
        order first, then the repeats of oversampled classes; the cost is
        proportional to the epoch size (see `_class_window`), not to the
        partition size.
        """
        self._require_bound()
        plan = self._plan
        epoch = int(epoch)
        rng = epoch_rng(self.seed, epoch, _STREAM_BATCH)
        keys = plan["slot_batch"] + rng.random(plan["epoch_size"])  # shuffle inside each batch: sort by (batch, key)
        order = np.empty(plan["epoch_size"], dtype=np.int64)
        for c, slots in plan["class_slots"]:
            order[slots] = self._class_window(c, epoch, rng)
        return order[np.argsort(keys, kind="stable")]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_stream_cache"] = {}  # a cache, rebuilt where needed: not sent to worker processes
        return state


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class BootstrapSampler(Sampler):
    """Draws with replacement, redrawn every epoch from ``(seed, epoch)`` (bagging).

    * plain (default): ``num_draws`` uniform draws over all positions;
    * ``stratified=True``: each class drawn as many times as it has samples
      (its count is kept), from its own samples;
    * ``balanced=True``: every class drawn the same number of times
      (``num_draws // num_classes``, the remainder to classes in rotation by
      epoch), from its own samples.

    ``epoch_size == num_draws`` (default ``num_samples``), fixed for the
    sampler's life. `oob` gives the out-of-bag positions of an epoch (those
    not drawn), e.g. to evaluate each bag's model on them (Breiman, 1996,
    "Bagging predictors"; about ``(1 - 1/n)**n ~ 36.8%`` of the positions for
    plain bootstrap).

    Attributes:
        labels: Class index of every position: int array ``(num_samples,)``;
            `None` for an unbound sampler.
        num_classes: Number of classes; defaults to ``len(class_names)``, or
            ``max(labels) + 1``.
        stratified: Keep each class's count.
        balanced: Same count for every class.
        num_draws: Draws per epoch; `None` for ``num_samples`` (not with ``stratified``).
        class_names: Names used in messages.
        partition: The partition's name, used in messages.

    Raises:
        SamplingError: If both ``stratified`` and ``balanced`` are set, or
            ``balanced`` meets a class with no sample (named, with its index
            and the partition).
    """

    labels: np.ndarray | None = dataclasses.field(default=None, repr=False)
    num_classes: int | None = None
    stratified: bool = False
    balanced: bool = False
    num_draws: int | None = None
    class_names: tuple[str, ...] | None = dataclasses.field(default=None, repr=False)
    partition: str | None = dataclasses.field(default=None, repr=False)
    _positions: tuple | None = dataclasses.field(init=False, repr=False, default=None)

    mode: ClassVar[str] = "bootstrap"

    def __post_init__(self) -> None:
        object.__setattr__(self, "stratified", check_bool(self.stratified, "stratified", error=SamplingError))
        object.__setattr__(self, "balanced", check_bool(self.balanced, "balanced", error=SamplingError))
        if self.stratified and self.balanced:
            raise SamplingError("A bootstrap is either `stratified` or `balanced`, not both. "
                                "Received: stratified=True, balanced=True")
        object.__setattr__(self, "num_draws", check_positive_int(self.num_draws, "samples_per_epoch",
                                                                 allow_none=True, error=SamplingError))
        bound = _init_labelled(self)
        if bound is None:
            return
        labels, k = bound
        if self.stratified and self.num_draws not in (None, len(labels)):
            raise SamplingError(
                "A stratified bootstrap keeps each class's count, so it draws num_samples "
                f"({len(labels)}) per epoch. Received: num_draws={self.num_draws}"
            )
        positions = _class_positions(labels, k)
        if self.balanced:
            empty = [c for c in range(k) if len(positions[c]) == 0]
            if empty:
                names = ", ".join(_class_name(self.class_names, c) for c in empty)
                raise SamplingError(
                    f"Class {names} has no sample in {_in_partition(self.partition)}, so a balanced bootstrap "
                    "cannot draw it. Prepare with a split that gives every class samples there, or use a plain "
                    "bootstrap."
                )
        object.__setattr__(self, "_positions", positions)

    def _bound_copy(self, labels, class_names, partition) -> Sampler:
        return _labelled_copy(self, labels, class_names, partition)

    @property
    def balance(self) -> str:
        """``"stratified"``, ``"balanced"`` or ``"none"``."""
        return "stratified" if self.stratified else "balanced" if self.balanced else "none"

    @property
    def epoch_size(self) -> int:
        self._require_bound()
        return int(self.num_draws) if self.num_draws is not None else int(self.num_samples)

    def indices(self, epoch: int) -> np.ndarray:
        self._require_bound()
        rng = epoch_rng(self.seed, epoch, _STREAM_BOOTSTRAP)
        n = self.epoch_size
        if not (self.stratified or self.balanced):
            return rng.integers(0, self.num_samples, size=n, dtype=np.int64)
        k = int(self.num_classes)
        if self.stratified:
            per_class = np.array([len(p) for p in self._positions])
        else:
            per_class = np.full(k, n // k)
            per_class[(np.arange(n % k) + epoch) % k] += 1  # remainder in rotation by epoch
        drawn = [members[rng.integers(0, len(members), size=m)]
                 for members, m in zip(self._positions, per_class) if m > 0]
        return rng.permutation(np.concatenate(drawn)).astype(np.int64)

    def oob(self, epoch: int) -> np.ndarray:
        """Out-of-bag positions of ``epoch`` (never drawn in it): sorted int64 array."""
        return np.setdiff1d(np.arange(self.num_samples, dtype=np.int64), self.indices(epoch))


SAMPLERS: dict[str, type[Sampler]] = {
    "sequential": SequentialSampler,
    "shuffle": ShuffleSampler,
    "balanced": BalancedSampler,
    "bootstrap": BootstrapSampler,
}
"""Sampling mode name -> sampler class."""


def _simple_options(cls):
    def build(*, seed, batch_size, balance, samples_per_epoch, target_distribution):
        if samples_per_epoch is not None or target_distribution is not None:
            raise SamplingError(
                f"`samples_per_epoch` and `target_distribution` apply to sampling='balanced' or 'bootstrap'. "
                f"Received: sampling={cls.mode!r}, samples_per_epoch={samples_per_epoch!r}, "
                f"target_distribution={target_distribution!r}"
            )
        return cls(seed=seed, batch_size=batch_size)
    return build


def _balanced_options(*, seed, batch_size, balance, samples_per_epoch, target_distribution):
    return BalancedSampler(seed=seed, batch_size=batch_size, balance=balance, samples_per_epoch=samples_per_epoch,
                           target_distribution=target_distribution)


def _bootstrap_options(*, seed, batch_size, balance, samples_per_epoch, target_distribution):
    if target_distribution is not None:
        raise SamplingError("`target_distribution` applies to sampling='balanced' only. "
                            "Received: sampling='bootstrap' with a target_distribution")
    return BootstrapSampler(seed=seed, batch_size=batch_size, stratified=balance == "stratified",
                            balanced=balance == "balanced", num_draws=samples_per_epoch)


_BUILDERS = {
    "sequential": _simple_options(SequentialSampler),
    "shuffle": _simple_options(ShuffleSampler),
    "balanced": _balanced_options,
    "bootstrap": _bootstrap_options,
}


def sampler_from_options(
    sampling: str,
    *,
    seed: int = 0,
    batch_size: int | None = None,
    balance: str | None = None,
    samples_per_epoch: int | None = None,
    target_distribution: Any = None,
) -> Sampler:
    """The unbound sampler of a sampling mode and its options (the generator's keyword shortcuts).

    Args:
        sampling: ``"shuffle"``, ``"sequential"``, ``"balanced"`` or ``"bootstrap"``.
        seed: Seed of every random choice.
        batch_size: Samples per batch (`None`: the generator's).
        balance: See `check_balance`.
        samples_per_epoch: Epoch size for ``"balanced"`` and ``"bootstrap"``
            (default: from ``balance``).
        target_distribution: For ``"balanced"``: see `check_target_distribution`.

    Returns:
        An unbound `Sampler` (see `Sampler.bind`).

    Raises:
        SamplingError: If an option is invalid or does not apply to ``sampling``.
    """
    sampling = check_sampling(sampling)
    balance = check_balance(sampling, balance)
    samples_per_epoch = check_positive_int(samples_per_epoch, "samples_per_epoch", allow_none=True,
                                           error=SamplingError)
    return _BUILDERS[sampling](seed=seed, batch_size=batch_size, balance=balance,
                               samples_per_epoch=samples_per_epoch, target_distribution=target_distribution)


def make_sampler(
    sampling: str,
    *,
    labels: np.ndarray,
    classes: Sequence[str],
    batch_size: int,
    seed: int = 0,
    balance: str | None = None,
    samples_per_epoch: int | None = None,
    target_distribution: Any = None,
    partition: str | None = None,
) -> Sampler:
    """Build the bound sampler of a sampling mode from its options and a partition's labels.

    Args:
        sampling: ``"shuffle"``, ``"sequential"``, ``"balanced"`` or ``"bootstrap"``.
        labels: Class index of each position: int array ``(num_samples,)``.
        classes: Class names, in label order.
        batch_size: Samples per batch (balanced batches are planned per batch).
        seed: Seed of every random choice.
        balance: See `check_balance`.
        samples_per_epoch: Epoch size for ``"balanced"`` and ``"bootstrap"``
            (default: from ``balance``).
        target_distribution: For ``"balanced"``: see `check_target_distribution`.
        partition: The partition's name, for messages.

    Returns:
        A bound `Sampler`.

    Raises:
        SamplingError: If an option is invalid or does not apply to ``sampling``.
    """
    options = sampler_from_options(sampling, seed=seed, batch_size=batch_size, balance=balance,
                                   samples_per_epoch=samples_per_epoch, target_distribution=target_distribution)
    return options.bind(labels, class_names=classes, partition=partition)
