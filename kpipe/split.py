"""Stratified train / validation / test partitions (scikit-learn underneath)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import train_test_split

from kpipe.errors import SplitError
from kpipe.manifest import PARTITIONS


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


def stratified_split(
    labels: np.ndarray,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    *,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Split sample positions into stratified train / validation / test.

    Two calls of scikit-learn's ``train_test_split(..., stratify=labels)``:
    first train vs. the rest, then the rest into validation and test. Sizes
    follow scikit-learn's rounding (the held-out part is rounded up). Same
    labels and seed give the same partition.

    Args:
        labels: Class index of each sample, int array of shape ``(n,)``.
        fractions: Train, validation, test fractions (see `parse_split`).
        seed: Seed of the shuffles (``random_state``).
        class_names: Names for error messages; ``str(index)`` if `None`.

    Returns:
        ``{"train": positions, "validation": positions, "test": positions}``,
        each a sorted int64 array of positions into ``labels``; together they
        cover ``range(n)`` exactly once.

    Raises:
        SplitError: If a class has fewer samples than there are non-empty
            partitions, or a held-out part is too small to hold every class.

    Example:
        >>> parts = stratified_split(np.array([0] * 10 + [1] * 10), (0.6, 0.2, 0.2))
        >>> [len(parts[p]) for p in ("train", "validation", "test")]
        [12, 4, 4]
    """
    labels = np.asarray(labels)
    n = len(labels)
    train_f, val_f, test_f = parse_split(fractions)
    names = list(class_names) if class_names is not None else None
    counts = np.bincount(labels)
    needed = 1 + (val_f > 0) + (test_f > 0)
    for c, count in enumerate(counts):
        if 0 < count < needed:
            name = names[c] if names else str(c)
            raise SplitError(
                f"Class {name!r} has {count} sample{'s' if count != 1 else ''} in total; a stratified "
                f"{needed}-way split needs at least {needed}. Drop the class, add samples, or use a "
                f"split with fewer non-empty parts (e.g. --split {'0.9,0.1,0' if needed == 3 else '1,0,0'})."
            )
    positions = np.arange(n)
    out = {p: np.empty(0, dtype=np.int64) for p in PARTITIONS}
    rest_f = val_f + test_f
    try:
        if rest_f <= 1e-12:
            out["train"] = positions
            return out
        train, rest = train_test_split(
            positions, test_size=rest_f, random_state=seed, shuffle=True, stratify=labels
        )
        out["train"] = train
        if val_f <= 1e-12:
            out["test"] = rest
        elif test_f <= 1e-12:
            out["validation"] = rest
        else:
            val, test = train_test_split(
                rest, test_size=test_f / rest_f, random_state=seed, shuffle=True, stratify=labels[rest]
            )
            out["validation"], out["test"] = val, test
    except ValueError as e:
        raise SplitError(
            f"Cannot make a stratified split {train_f:g},{val_f:g},{test_f:g} of {n} samples in "
            f"{int((counts > 0).sum())} classes: {e} Each held-out part needs at least one sample per "
            "class: add samples or give validation and test larger fractions."
        ) from e
    return {p: np.sort(v).astype(np.int64) for p, v in out.items()}
