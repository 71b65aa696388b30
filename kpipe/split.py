"""Stratified train / validation / test partitions, allocated exactly per class.

Each class is split on its own: its samples are shared among the partitions
by the largest-remainder (Hamilton) method, with the rounding remainders
carried from class to class so that the partition totals stay within one
sample of ``n * fraction`` too; every partition of non-zero fraction gets at
least one sample of every class that has enough samples (one per partition).
Samples that must stay together (exact duplicates: ``groups``) are placed as
one unit. Which samples go where is a seeded shuffle, so the same labels,
groups and seed give the same partition.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from kpipe._validation import check_seed
from kpipe.errors import SplitError
from kpipe.manifest import PARTITIONS

SMALL_CLASS_POLICIES = ("error", "warn")
"""Values of ``small_classes``: what to do with a class too small to appear in every partition."""


def parse_split(text: str | Sequence[float]) -> tuple[float, float, float]:
    """Parse ``"0.8,0.1,0.1"`` into train / validation / test fractions.

    Returns:
        Three floats in ``[0, 1]`` summing to 1 (within 1e-6), train > 0.

    Raises:
        SplitError: If there are not three numbers, one is negative, train is
            0, or they do not sum to 1.
    """
    if isinstance(text, str):
        try:
            parts = [float(p) for p in text.split(",")]
        except ValueError:
            raise SplitError(
                f"`split` must be three numbers such as 0.8,0.1,0.1 (train, validation, test). "
                f"Received: split={text!r}"
            ) from None
    else:
        parts = [float(p) for p in text]
    if len(parts) != 3 or any(not np.isfinite(p) or p < 0 for p in parts) or parts[0] <= 0:
        raise SplitError(
            "`split` must be three non-negative fractions (train, validation, test) with "
            f"train > 0, e.g. 0.8,0.1,0.1. Received: split={text!r}"
        )
    if abs(sum(parts) - 1.0) > 1e-6:
        raise SplitError(f"`split` fractions must sum to 1. Received: split={text!r} (sum {sum(parts):g})")
    return parts[0], parts[1], parts[2]


def class_sizes(counts: Sequence[int], fractions: tuple[float, float, float]) -> np.ndarray:
    """How many samples of each class go to each partition.

    Largest remainder per class (Hamilton's method): each class ``c`` of ``n``
    samples gets ``floor(n * f)`` per partition, and the samples left over go
    to the partitions with the largest remainders, the remainders of earlier
    classes carried along (so that totals stay near ``N * f`` as well). Then
    every partition with ``f > 0`` that got no sample of a class with at least
    one sample per such partition takes one from the largest partition. A
    class with fewer samples than partitions fills train, validation, test in
    that order, one each.

    Args:
        counts: Samples per class, ints of shape ``(num_classes,)``.
        fractions: Train, validation, test fractions (see `parse_split`).

    Returns:
        int64 array of shape ``(num_classes, 3)``; row ``c`` sums to ``counts[c]``.

    Example:
        >>> class_sizes([6, 6, 1000, 3], (0.8, 0.1, 0.1)).tolist()
        [[4, 1, 1], [4, 1, 1], [800, 100, 100], [1, 1, 1]]
    """
    f = np.asarray(fractions, dtype=np.float64)
    active = np.flatnonzero(f > 1e-12)
    sizes = np.zeros((len(counts), 3), dtype=np.int64)
    carry = np.zeros(3)
    for c, n in enumerate(int(x) for x in counts):
        if n <= 0:
            continue
        if n < len(active):  # too small for every partition: one each, in partition order
            sizes[c, active[:n]] = 1
            continue
        quota = n * f
        alloc = np.floor(quota).astype(np.int64)
        left = n - int(alloc.sum())
        if left:
            rem = quota - alloc + carry
            order = sorted(active, key=lambda p: (-rem[p], p))
            for p in order[:left]:
                alloc[p] += 1
        for p in active:  # at least one per partition
            if alloc[p] == 0:
                donor = max(active, key=lambda q: (alloc[q], alloc[q] - quota[q], -q))
                alloc[donor] -= 1
                alloc[p] += 1
        carry = np.clip(carry + quota - alloc, -1.0, 1.0)  # bounded: a forced minimum is not repaid forever
        sizes[c] = alloc
    return sizes


def small_classes(counts: Sequence[int], fractions: tuple[float, float, float]) -> list[int]:
    """Classes with fewer samples (or sample groups) than partitions of non-zero fraction."""
    needed = int((np.asarray(fractions) > 1e-12).sum())
    return [c for c, n in enumerate(counts) if 0 < int(n) < needed]


def stratified_split(
    labels: np.ndarray,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    *,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    groups: np.ndarray | None = None,
    small_classes_policy: str = "error",
) -> dict[str, np.ndarray]:
    """Split sample positions into stratified train / validation / test.

    Per-class sizes come from `class_sizes` (exact, every class in every
    partition of non-zero fraction when it has the samples); the samples of a
    class are shuffled with ``seed`` and dealt out. With ``groups``, the
    samples that share a group ID are placed together, in one partition (a
    group that mixes classes counts for its rarest class); groups are placed
    largest first, each in the partition that lacks the most samples of its
    class, and never leave a partition without the class while it has groups
    left to give.

    Args:
        labels: Class index of each sample, int array of shape ``(n,)``.
        fractions: Train, validation, test fractions (see `parse_split`).
        seed: Seed of the shuffle, an integer in ``[0, 2**64)`` (`kpipe._validation.check_seed`).
        class_names: Names for messages; ``str(index)`` if `None`.
        groups: Optional group ID of each sample, int array of shape ``(n,)``;
            samples of one group end up in one partition.
        small_classes_policy: A class with fewer samples (or groups) than
            partitions of non-zero fraction cannot be in all of them:
            ``"error"`` (default) raises a `SplitError` naming the class, its
            count and the remedies; ``"warn"`` warns and fills train, then
            validation, then test.

    Returns:
        ``{"train": positions, "validation": positions, "test": positions}``,
        each a sorted int64 array of positions into ``labels``; together they
        cover ``range(n)`` exactly once.

    Raises:
        SplitError: If a class is too small (with ``small_classes_policy="error"``).
        ArgumentError: If ``seed`` is not an integer in ``[0, 2**64)`` (``1.7`` is never truncated).

    Example:
        >>> parts = stratified_split(np.array([0] * 10 + [1] * 10), (0.6, 0.2, 0.2))
        >>> [len(parts[p]) for p in ("train", "validation", "test")]
        [12, 4, 4]
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    fr = parse_split(fractions)
    if small_classes_policy not in SMALL_CLASS_POLICIES:
        raise SplitError(f"`small_classes` must be one of {', '.join(SMALL_CLASS_POLICIES)}. "
                         f"Received: small_classes={small_classes_policy!r}")
    num_classes = int(labels.max()) + 1 if n else 0
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    groups = np.arange(n) if groups is None else np.asarray(groups, dtype=np.int64)
    if groups.shape != (n,):
        raise SplitError(f"`groups` must have one entry per sample ({n}). Received: shape {groups.shape}")

    # Units: the groups, each owned by its rarest class (a group of equal samples may mix classes), so that a
    # rare class sharing samples with a common one still gets its exact allocation.
    uniq, inverse = np.unique(groups, return_inverse=True)
    count = np.bincount(labels, minlength=num_classes)
    key = count[labels] * max(1, num_classes) + labels
    owner = np.full(len(uniq), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(owner, inverse, key)
    unit_class = owner % max(1, num_classes)
    unit_size = np.bincount(inverse, minlength=len(uniq))
    class_total = np.bincount(unit_class, weights=unit_size, minlength=num_classes).astype(np.int64)
    class_units = np.bincount(unit_class, minlength=num_classes)

    short = small_classes(class_units, fr)
    if short:
        needed = int((np.asarray(fr) > 1e-12).sum())
        listed = ", ".join(
            f"{names[c]!r} ({class_total[c]} sample{'s' if class_total[c] != 1 else ''}"
            + (f" in {class_units[c]} duplicate group{'s' if class_units[c] != 1 else ''}"
               if class_units[c] != class_total[c] else "") + ")"
            for c in short
        )
        message = (
            f"{'Class' if len(short) == 1 else 'Classes'} {listed} cannot have a sample in each of the {needed} "
            f"partitions of the split {fr[0]:g},{fr[1]:g},{fr[2]:g}: it needs at least {needed} "
            f"sample{'s' if needed != 1 else ''}. Add samples, drop the class, use a split with fewer non-empty "
            f"parts (e.g. --split {'0.9,0.1,0' if needed == 3 else '1,0,0'}), or pass --small-classes warn to "
            "accept partitions without it."
        )
        if small_classes_policy == "error":
            raise SplitError(message)
        warnings.warn(message.split(" Add samples")[0] + " Train, then validation, then test get its samples.",
                      stacklevel=2)

    sizes = class_sizes(class_total, fr)
    rng = np.random.default_rng(np.random.SeedSequence(check_seed(seed)))
    part_of_unit = np.full(len(uniq), -1, dtype=np.int64)
    active = [p for p in range(3) if fr[p] > 1e-12]
    for c in range(num_classes):
        units = np.flatnonzero(unit_class == c)
        if len(units) == 0:
            continue
        units = units[rng.permutation(len(units))]
        units = units[np.argsort(-unit_size[units], kind="stable")]  # largest groups first, shuffled within a size
        deficit = sizes[c].astype(np.int64).copy()
        filled = np.zeros(3, dtype=bool)
        k = 0
        while k < len(units) and unit_size[units[k]] > 1:  # groups: one at a time
            empty = [p for p in active if not filled[p]]
            pool = empty if len(units) - k <= len(empty) else active
            p = max(pool, key=lambda q: (deficit[q], -q))
            part_of_unit[units[k]] = p
            deficit[p] -= unit_size[units[k]]
            filled[p] = True
            k += 1
        singles = units[k:]
        if len(singles):
            want = np.maximum(deficit, 0)
            while want.sum() > len(singles):
                want[int(np.argmax(want))] -= 1
            while want.sum() < len(singles):  # groups fell short: give the rest by fraction
                want[max(active, key=lambda q: (fr[q], -q))] += 1
            part_of_unit[singles] = np.repeat(np.arange(3), want)
    part_of_sample = part_of_unit[inverse]
    return {p: np.flatnonzero(part_of_sample == i).astype(np.int64) for i, p in enumerate(PARTITIONS)}
