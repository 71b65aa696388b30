"""Samplers: which sample positions an epoch visits, and in what order.

A sampler is a pure function of the epoch: ``indices(epoch)`` derives a fresh
``np.random.Generator`` from ``(seed, epoch)`` and keeps no iterator state
(as Grain's samplers do), so every thread, process or resumed run computes the
same order for the same epoch. Positions index one partition's ID list.

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
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kpipe.errors import KpipeError, SamplingError

# Entropy words that keep the random streams of one (seed, epoch) apart.
_STREAM_BATCH = 1  # within-batch shuffles of the balanced sampler
_STREAM_CLASS = 2  # per-class permutation cycles of the balanced sampler
_STREAM_BOOTSTRAP = 3  # bootstrap draws
STREAM_AUGMENT = 4  # the `transform` hook's generator (seed, epoch, 4, batch index)
_STREAM_REPEAT = 5  # whole-class repeats when oversampling
_STREAM_MIX = 6  # order of a class's samples within the epoch

BALANCE_MODES = {
    "balanced": ("undersample", "oversample"),
    "bootstrap": ("none", "stratified", "balanced"),
}
"""Sampling mode -> accepted ``balance`` values; the first is the default."""




def epoch_rng(seed: int, epoch: int, *stream: int) -> np.random.Generator:
    """The generator for one epoch: ``np.random.default_rng([seed, epoch, *stream])``.

    ``SeedSequence`` mixes the entropy words, so neighbouring seeds or epochs
    give independent streams.
    """
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), *map(int, stream)])


# ---------------------------------------------------------------- validators
def class_index(key: Any, classes: Sequence[str], *, argument: str,
                error: type[KpipeError] = SamplingError) -> int:
    """Resolve a class given by name or by index to its index.

    A string is looked up among the class names first, then read as an index
    (``"3"``); an int is an index.

    Args:
        key: A class name or index.
        classes: Class names, in label order.
        argument: The argument's name, for the message.
        error: The exception class to raise.

    Raises:
        SamplingError: (or ``error``) If ``key`` names no class (the message lists them).
    """
    if isinstance(key, str):
        if key in classes:
            return list(classes).index(key)
        if key.strip().lstrip("-").isdigit():
            key = int(key)
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool) and 0 <= int(key) < len(classes):
        return int(key)
    shown = ", ".join(repr(c) for c in list(classes)[:20]) + (", ..." if len(classes) > 20 else "")
    raise error(
        f"`{argument}` has a key that is not a class: {key!r}. Use class names ({shown}) or "
        f"class indices 0..{len(classes) - 1}. Received: {argument} key={key!r}"
    )


def parse_json_mapping(value: Any, *, argument: str, error: type[KpipeError] = SamplingError) -> Any:
    """Return ``value``, or the JSON object a string holds (CLI options pass JSON text).

    Raises:
        SamplingError: (or ``error``) If a string is not valid JSON.
    """
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise error(
                f"`{argument}` must be a JSON object such as '{{\"cat\": 2.0}}'. "
                f"Received: {argument}={value!r} ({e.msg})"
            ) from None
    return value


def check_sampling(sampling: str) -> str:
    """Validate a sampling mode name; returns it.

    Raises:
        SamplingError: If it is not a key of `SAMPLERS`.
    """
    if sampling not in SAMPLERS:
        raise SamplingError(
            f"`sampling` must be one of {', '.join(map(repr, SAMPLERS))}. Received: sampling={sampling!r}"
        )
    return sampling


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


def check_samples_per_epoch(samples_per_epoch: Any) -> int | None:
    """Validate ``samples_per_epoch``: `None` or a positive int.

    Raises:
        SamplingError: If it is not a positive integer.
    """
    if samples_per_epoch is None:
        return None
    if isinstance(samples_per_epoch, bool) or not isinstance(samples_per_epoch, (int, np.integer)) \
            or samples_per_epoch <= 0:
        raise SamplingError(
            f"`samples_per_epoch` must be a positive integer. Received: samples_per_epoch={samples_per_epoch!r}"
        )
    return int(samples_per_epoch)


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
        SamplingError: On an unknown class, a negative / NaN / infinite
            share, a wrong length, or all shares zero.
    """
    value = parse_json_mapping(target_distribution, argument="target_distribution")
    if value is None:
        return None
    p = np.zeros(len(classes), dtype=np.float64)
    if isinstance(value, Mapping):
        for key, share in value.items():
            p[class_index(key, classes, argument="target_distribution")] = _share(share)
    elif isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, str):
        if len(value) != len(classes):
            raise SamplingError(
                f"`target_distribution` as a list needs one share per class ({len(classes)}). "
                f"Received: target_distribution={list(value)!r}"
            )
        p[:] = [_share(s) for s in value]
    else:
        raise SamplingError(
            "`target_distribution` must map classes to shares, e.g. {'cat': 0.5, 'dog': 0.25, 'bird': 0.25}. "
            f"Received: target_distribution={value!r}"
        )
    if p.sum() <= 0:
        raise SamplingError(
            f"`target_distribution` gives every class a share of 0. Received: target_distribution={value!r}"
        )
    return p / p.sum()


def _share(value: Any) -> float:
    try:
        share = float(value)
    except (TypeError, ValueError):
        share = math.nan
    if not math.isfinite(share) or share < 0:
        raise SamplingError(
            f"`target_distribution` shares must be finite numbers >= 0. Received: share={value!r}"
        )
    return share


# ------------------------------------------------------------------ samplers
@dataclasses.dataclass(frozen=True)
class Sampler(abc.ABC):
    """Base sampler over ``num_samples`` positions of a partition.

    Attributes:
        num_samples: Positions ``0 .. num_samples - 1`` of the partition.
        seed: Seed of every random choice.
    """

    num_samples: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_samples <= 0:
            raise SamplingError(f"`num_samples` must be positive. Received: num_samples={self.num_samples}")

    @property
    def epoch_size(self) -> int:
        """Number of positions one epoch visits (fixed for the sampler's life)."""
        return self.num_samples

    @abc.abstractmethod
    def indices(self, epoch: int) -> np.ndarray:
        """Positions visited in ``epoch``: int64 array of shape ``(epoch_size,)``."""


@dataclasses.dataclass(frozen=True)
class SequentialSampler(Sampler):
    """Every position once per epoch, in manifest order (validation and test).

    ``epoch_size == num_samples``.
    """

    def indices(self, epoch: int) -> np.ndarray:
        return np.arange(self.num_samples, dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class ShuffleSampler(Sampler):
    """Every position once per epoch, in a new random order each epoch.

    ``epoch_size == num_samples``; the order is
    ``epoch_rng(seed, epoch).permutation(num_samples)``.
    """

    def indices(self, epoch: int) -> np.ndarray:
        return epoch_rng(self.seed, epoch).permutation(self.num_samples).astype(np.int64)


def _class_positions(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, ...]:
    return tuple(np.flatnonzero(labels == c).astype(np.int64) for c in range(num_classes))


def _class_name(class_names: Sequence[str] | None, c: int) -> str:
    return repr(class_names[c]) if class_names is not None and c < len(class_names) else str(c)


def _init_labelled(sampler: Sampler) -> tuple[np.ndarray, int]:
    """Validate a labelled sampler's ``labels``; set ``labels``, ``num_classes``, ``num_samples``."""
    labels, k = _check_labels(sampler.labels, sampler.num_classes)
    object.__setattr__(sampler, "labels", labels)
    object.__setattr__(sampler, "num_classes", k)
    object.__setattr__(sampler, "num_samples", len(labels))
    Sampler.__post_init__(sampler)
    return labels, k


def _check_labels(labels: Any, num_classes: int | None) -> tuple[np.ndarray, int]:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise SamplingError(
            "`labels` must be a non-empty 1-D array of class indices (ints >= 0). "
            f"Received: labels with shape {labels.shape} and dtype {labels.dtype}"
        )
    k = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if labels.max() >= k:
        raise SamplingError(f"`labels` holds class {int(labels.max())} but num_classes={k}.")
    return labels.astype(np.int64), k


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
        labels: Class index of every position: int array of shape ``(num_samples,)``.
        batch_size: Samples per batch; the composition is planned per batch.
        num_classes: Number of classes; defaults to ``max(labels) + 1``.
        balance: ``"undersample"`` or ``"oversample"``.
        samples_per_epoch: Explicit epoch size, or `None`.
        target_distribution: Class shares (float array of shape
            ``(num_classes,)``, see `check_target_distribution`), or `None`
            for uniform. Classes with share 0 are never served.
        class_names: Names used in error messages.
        num_samples: Set from ``labels``.
        seed: Seed of every random choice.

    Raises:
        SamplingError: If a class to be served has no sample (the message
            names it), or an argument is invalid.

    Example:
        >>> s = BalancedSampler(labels=np.array([0] * 50 + [1] * 100 + [2] * 25), batch_size=6)
        >>> s.epoch_size  # 3 classes x 25 (smallest class)
        75
        >>> np.bincount(np.array([0] * 50 + [1] * 100 + [2] * 25)[s.indices(0)[:6]])
        array([2, 2, 2])
    """

    num_samples: int = 0
    labels: np.ndarray = dataclasses.field(repr=False)
    batch_size: int
    num_classes: int | None = None
    balance: str = "undersample"
    samples_per_epoch: int | None = None
    target_distribution: np.ndarray | None = None
    class_names: tuple[str, ...] | None = dataclasses.field(default=None, repr=False)
    _plan: dict = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        labels, k = _init_labelled(self)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, (int, np.integer)) \
                or self.batch_size <= 0:
            raise SamplingError(f"`batch_size` must be a positive integer. Received: batch_size={self.batch_size!r}")
        check_balance("balanced", self.balance)
        check_samples_per_epoch(self.samples_per_epoch)
        if self.target_distribution is None:
            p = np.full(k, 1.0 / k)
        else:
            p = np.asarray(self.target_distribution, dtype=np.float64)
            if p.shape != (k,) or not np.all(np.isfinite(p)) or p.min() < 0 or p.sum() <= 0:
                raise SamplingError(
                    f"`target_distribution` must hold {k} finite shares >= 0 with a positive sum. "
                    f"Received: target_distribution={p.tolist()!r}"
                )
            p = p / p.sum()
        object.__setattr__(self, "target_distribution", p)
        positions = _class_positions(labels, k)
        counts = np.array([len(q) for q in positions])
        empty = [c for c in range(k) if p[c] > 0 and counts[c] == 0]
        if empty:
            names = ", ".join(_class_name(self.class_names, c) for c in empty)
            raise SamplingError(
                f"Class {names} has no sample in this partition, so balanced batches cannot hold it. "
                "Prepare with a split that gives every class training samples, or pass a "
                "`target_distribution` that gives this class a share of 0."
            )
        active = np.flatnonzero(p > 0)
        if self.samples_per_epoch is not None:
            n = int(self.samples_per_epoch)
            plan = self._make_plan(n, p)
        elif self.balance == "oversample":
            n = int(math.ceil(max(counts[c] / p[c] for c in active) - 1e-9))
            plan = self._make_plan(n, p)
            while np.any(plan["totals"][active] < counts[active]):  # rounding left a class short
                n += 1
                plan = self._make_plan(n, p)
        else:  # undersample
            n = int(math.floor(min(counts[c] / p[c] for c in active) + 1e-9))
            plan = self._make_plan(max(n, 1), p)
            while n > 1 and np.any(plan["totals"] > counts):  # rounding gave a class one too many
                n -= 1
                plan = self._make_plan(n, p)
        plan["positions"] = positions
        plan["counts"] = counts
        object.__setattr__(self, "_plan", plan)

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
        return {"per_batch": per_batch, "totals": per_batch.sum(axis=0), "slot_class": slot_class,
                "slot_batch": slot_batch, "epoch_size": int(n)}

    @property
    def epoch_size(self) -> int:
        return self._plan["epoch_size"]

    @property
    def batch_counts(self) -> np.ndarray:
        """Samples of each class in each batch: int64 array ``(num_batches, num_classes)``."""
        return self._plan["per_batch"]

    @property
    def class_totals(self) -> np.ndarray:
        """Samples of each class per epoch: int64 array ``(num_classes,)``."""
        return self._plan["totals"]

    def _class_window(self, c: int, epoch: int) -> np.ndarray:
        """The ``T`` samples of class ``c`` for ``epoch`` (``T`` = its per-epoch total), in random order.

        With ``T = q * count + r``: every sample ``q`` times (fresh
        permutations), then positions ``[epoch*r, (epoch+1)*r)`` of the
        class's stream, the concatenation of permutations of its samples
        (permutation ``j`` from ``(seed, j, class)``). When that window
        crosses from one permutation into the next, samples already taken
        from the first are skipped in the second: no sample repeats beyond
        ``q + 1`` times in an epoch (none when undersampling), and over
        successive epochs every sample is served.
        """
        members = self._plan["positions"][c]
        n, t = len(members), int(self._plan["totals"][c])
        repeats, t = divmod(t, n)  # oversampling: every sample `repeats` times, then `t` more

        def perm(j: int) -> np.ndarray:
            return epoch_rng(self.seed, j, _STREAM_CLASS, c).permutation(n)

        parts = [epoch_rng(self.seed, epoch, _STREAM_REPEAT, c, k).permutation(n) for k in range(repeats)]
        if t:
            j, a = divmod(epoch * t, n)
            first = perm(j)
            if a + t <= n:
                parts.append(first[a : a + t])
            else:
                tail = first[a:]
                following = perm(j + 1)
                following = following[~np.isin(following, tail)]
                parts.append(np.concatenate([tail, following[: t - len(tail)]]))
        idx = parts[0] if len(parts) == 1 else epoch_rng(self.seed, epoch, _STREAM_MIX, c).permutation(
            np.concatenate(parts))
        return members[idx]

    def indices(self, epoch: int) -> np.ndarray:
        plan = self._plan
        order = np.empty(plan["epoch_size"], dtype=np.int64)
        for c in np.flatnonzero(plan["totals"]):
            order[plan["slot_class"] == c] = self._class_window(int(c), int(epoch))
        # shuffle inside each batch: sort by (batch, random key)
        keys = plan["slot_batch"] + epoch_rng(self.seed, epoch, _STREAM_BATCH).random(len(order))
        return order[np.argsort(keys, kind="stable")]


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
        labels: Class index of every position: int array ``(num_samples,)``.
        num_classes: Number of classes; defaults to ``max(labels) + 1``.
        stratified: Keep each class's count.
        balanced: Same count for every class.
        num_draws: Draws per epoch; `None` for ``num_samples`` (not with ``stratified``).
        class_names: Names used in error messages.

    Raises:
        SamplingError: If both ``stratified`` and ``balanced`` are set, or
            ``balanced`` meets a class with no sample (named).
    """

    num_samples: int = 0
    labels: np.ndarray = dataclasses.field(repr=False)
    num_classes: int | None = None
    stratified: bool = False
    balanced: bool = False
    num_draws: int | None = None
    class_names: tuple[str, ...] | None = None
    _positions: tuple = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        labels, k = _init_labelled(self)
        if self.stratified and self.balanced:
            raise SamplingError("A bootstrap is either `stratified` or `balanced`, not both. "
                                "Received: stratified=True, balanced=True")
        check_samples_per_epoch(self.num_draws)
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
                    f"Class {names} has no sample in this partition, so a balanced bootstrap cannot draw it. "
                    "Prepare with a split that gives every class training samples, or use a plain bootstrap."
                )
        object.__setattr__(self, "_positions", positions)

    @property
    def epoch_size(self) -> int:
        return int(self.num_draws) if self.num_draws is not None else self.num_samples

    def indices(self, epoch: int) -> np.ndarray:
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


def _make_simple(cls):
    def build(*, labels, seed, **_):
        return cls(num_samples=len(labels), seed=seed)
    return build


def _make_balanced(*, labels, num_classes, batch_size, seed, balance, samples_per_epoch, target_distribution,
                   class_names):
    return BalancedSampler(labels=labels, num_classes=num_classes, batch_size=batch_size, seed=seed,
                           balance=balance, samples_per_epoch=samples_per_epoch,
                           target_distribution=target_distribution, class_names=class_names)


def _make_bootstrap(*, labels, num_classes, seed, balance, samples_per_epoch, target_distribution, class_names,
                    **_):
    if target_distribution is not None:
        raise SamplingError("`target_distribution` applies to sampling='balanced' only. "
                            "Received: sampling='bootstrap' with a target_distribution")
    return BootstrapSampler(labels=labels, num_classes=num_classes, seed=seed, stratified=balance == "stratified",
                            balanced=balance == "balanced", num_draws=samples_per_epoch, class_names=class_names)


_BUILDERS = {
    "sequential": _make_simple(SequentialSampler),
    "shuffle": _make_simple(ShuffleSampler),
    "balanced": _make_balanced,
    "bootstrap": _make_bootstrap,
}


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
) -> Sampler:
    """Build the sampler of a sampling mode from validated options.

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

    Returns:
        A `Sampler`.

    Raises:
        SamplingError: If an option is invalid or does not apply to ``sampling``.
    """
    sampling = check_sampling(sampling)
    balance = check_balance(sampling, balance)
    samples_per_epoch = check_samples_per_epoch(samples_per_epoch)
    target = check_target_distribution(target_distribution, classes)
    if sampling in ("shuffle", "sequential") and (samples_per_epoch is not None or target is not None):
        raise SamplingError(
            f"`samples_per_epoch` and `target_distribution` apply to sampling='balanced' or 'bootstrap'. "
            f"Received: sampling={sampling!r}, samples_per_epoch={samples_per_epoch!r}, "
            f"target_distribution={target_distribution!r}"
        )
    return _BUILDERS[sampling](labels=np.asarray(labels), num_classes=len(classes), batch_size=batch_size,
                               seed=seed, balance=balance, samples_per_epoch=samples_per_epoch,
                               target_distribution=target, class_names=tuple(classes))
