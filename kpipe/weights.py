"""Sample weights: class weights, condition weights and per-sample weights.

A generator's ``sample_weight`` for a sample of class ``c`` is the product

    class_weight[c] * condition_weights[c] * per_sample_weight[sample]

of whatever is configured (factors left out are 1). Weights always come from
class *indices*, whatever the label encoding (int, one-hot, binary).
`SampleWeights` groups the three options (``DataGenerator(weights=...)``).

``class_weight="balanced"`` is scikit-learn's
``compute_class_weight("balanced", ...)``: ``n_samples / (n_classes *
bincount(y))`` over the training partition (the heuristic of King and Zeng,
2001, "Logistic Regression in Rare Events Data"; scikit-learn's docs cite it).
For ``y = [0]*50 + [1]*100 + [2]*25``: ``175 / (3 * [50, 100, 25]) =
[1.1667, 0.5833, 2.3333]``.

Rules for weights given by class (a dict, its JSON text, or one value per
class in a list or array, by position):

* a class is named once, by name or by index: ``{"cat": 2, 0: 5}`` when
  ``cat`` is class 0 is an error;
* a ``class_weight`` dict that leaves classes out gives them the weight of
  its ``"*"`` key, or 1.0 with a warning naming them
  (``{"cat": 2, "*": 1.0}`` says it on purpose); ``condition_weights`` are
  factors for the classes they name, the others keep 1;
* weights are finite numbers >= 0; not all of them 0.

The ``check_*`` functions validate a value *and* return it normalized (as
imbalanced-learn's ``check_sampling_strategy`` does), once, at the API
boundary; policy strings resolve through `CLASS_WEIGHT_POLICIES`.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kpipe._validation import (
    check_bool,
    check_class_index,
    check_class_labels,
    check_weight,
    loads_json,
    parse_json_value,
)
from kpipe.errors import ArgumentError, InputError, WeightError

DEFAULT_KEY = "*"
"""Key of a ``class_weight`` dict that sets the weight of every class it does not name."""


def _where(partition: str | None) -> str:
    return f"partition {partition!r}" if partition else "this partition"


def class_indices(y: Any, *, num_classes: int | None = None, partition: str | None = None) -> np.ndarray:
    """Class indices of labels given as ints ``(n,)``, one-hot ``(n, K)`` or binary ``(n, 1)``.

    Args:
        y: The labels.
        num_classes: Number of classes (indices must be below it).
        partition: The partition's name, for messages.

    Returns:
        int64 array of shape ``(n,)``.

    Raises:
        ArgumentError: If a row is k-hot or all zero, or an index is negative,
            fractional or ``>= num_classes`` (the message names the row).
    """
    where = f" of {_where(partition)}" if partition else ""
    return check_class_labels(y, "labels", num_classes=num_classes, where=where, error=ArgumentError)


def balanced_class_weight(labels: np.ndarray, classes: Sequence[str], *, partition: str | None = None) -> np.ndarray:
    """``n_samples / (n_classes * bincount(labels))``, by scikit-learn's ``compute_class_weight``.

    Args:
        labels: Class indices of the partition: int array of shape ``(n,)``.
        classes: Class names, in label order (``len(classes)`` is ``n_classes``).
        partition: The partition's name, for messages.

    Returns:
        float64 array of shape ``(n_classes,)``.

    Raises:
        WeightError: If a class has no sample in ``labels`` (named, with its
            index and the partition): its weight would be infinite.

    Example:
        >>> balanced_class_weight(np.array([0] * 50 + [1] * 100 + [2] * 25), ["a", "b", "c"]).round(4)
        array([1.1667, 0.5833, 2.3333])
    """
    from sklearn.utils.class_weight import compute_class_weight

    labels = class_indices(labels, num_classes=len(classes), partition=partition)
    counts = np.bincount(labels, minlength=len(classes))
    empty = [f"{classes[c]!r} (index {c})" for c in np.flatnonzero(counts == 0)]
    if empty:
        raise WeightError(
            f"Class {', '.join(empty)} has no sample in {_where(partition)}, so class_weight='balanced' "
            "(n_samples / (n_classes * count)) is infinite for it. Prepare with a split that gives every "
            "class samples there, or pass class_weight as a dict."
        )
    return compute_class_weight("balanced", classes=np.arange(len(classes)), y=labels).astype(np.float64)


CLASS_WEIGHT_POLICIES: dict[str, Callable[..., np.ndarray]] = {
    "balanced": balanced_class_weight,
}
"""``class_weight`` policy name -> ``fn(labels, classes, *, partition=None) -> (num_classes,) weights``."""


def _per_class(value: Any, classes: Sequence[str], *, argument: str, warn_missing: bool) -> np.ndarray:
    """A mapping (class name or index -> weight) or a per-class sequence -> ``(num_classes,)`` float64."""
    if isinstance(value, Mapping):
        w = np.full(len(classes), np.nan)
        named: dict[int, Any] = {}
        default = None
        for key, v in value.items():
            if key == DEFAULT_KEY and DEFAULT_KEY not in classes:
                default = check_weight(v, argument=argument, key=key, error=WeightError)
                continue
            c = check_class_index(key, classes, argument=argument, error=WeightError)
            if c in named:
                raise WeightError(
                    f"`{argument}` gives class {classes[c]!r} (index {c}) twice, as {named[c]!r} and as {key!r}. "
                    f"Give each class once, by name or by index. Received: {argument}={dict(value)!r}"
                )
            named[c] = key
            w[c] = check_weight(v, argument=argument, key=key, error=WeightError)
        missing = np.flatnonzero(np.isnan(w))
        if missing.size and default is None:
            default = 1.0
            if warn_missing:
                left = ", ".join(f"{classes[c]!r} (index {c})" for c in missing[:20])
                warnings.warn(
                    f"`{argument}` names {len(named)} of {len(classes)} classes; class {left}"
                    f"{', ...' if missing.size > 20 else ''} weigh{'s' if missing.size == 1 else ''} 1.0. "
                    f"Name every class, or add {{{DEFAULT_KEY!r}: weight}} for the others.",
                    UserWarning, stacklevel=4,
                )
        w[missing] = default
        return w
    if isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, (str, bytes)):
        values = list(np.asarray(value).reshape(-1)) if isinstance(value, np.ndarray) else list(value)
        if len(values) != len(classes) or (isinstance(value, np.ndarray) and value.ndim != 1):
            raise WeightError(
                f"`{argument}` as a list or array needs one weight per class ({len(classes)}), by class index. "
                f"Received: {argument}={values!r}"
            )
        return np.array([check_weight(v, argument=argument, key=i, error=WeightError) for i, v in enumerate(values)],
                        dtype=np.float64)
    raise WeightError(
        f"`{argument}` must map class names (or indices) to weights, e.g. {{\"cat\": 2.0}}, or give one weight "
        f"per class. Received: {argument}={value!r}"
    )


def check_class_weight(class_weight: Any, classes: Sequence[str], labels: np.ndarray, *,
                       partition: str | None = None) -> np.ndarray | None:
    """Validate ``class_weight`` and return one weight per class.

    Args:
        class_weight: `None`; a policy name of `CLASS_WEIGHT_POLICIES`
            (``"balanced"``); a mapping class name or index -> weight
            (classes left out weigh its ``"*"`` entry, else 1.0 with a
            warning); a list or 1-D array of ``num_classes`` weights, by
            class index; or JSON text of a mapping or list.
        classes: Class names, in label order.
        labels: Class indices of the training partition, int ``(n,)``
            (used by ``"balanced"``).
        partition: The partition's name, for messages.

    Returns:
        float64 array of shape ``(num_classes,)``, or `None`.

    Raises:
        WeightError: On an unknown policy or class key, a class given twice,
            a negative / NaN / infinite weight, or (``"balanced"``) a class
            without samples.
    """
    if class_weight is None:
        return None
    if isinstance(class_weight, str):
        if class_weight in CLASS_WEIGHT_POLICIES:
            return CLASS_WEIGHT_POLICIES[class_weight](labels, classes, partition=partition)
        if not class_weight.lstrip().startswith(("{", "[")):
            raise WeightError(
                f"`class_weight` must be {', '.join(map(repr, CLASS_WEIGHT_POLICIES))}, a dict of class -> weight, "
                f"or its JSON text. Received: class_weight={class_weight!r}"
            )
        class_weight = parse_json_value(class_weight, "class_weight", error=WeightError)
    return _per_class(class_weight, classes, argument="class_weight", warn_missing=True)


def check_condition_weights(condition_weights: Any, classes: Sequence[str]) -> np.ndarray | None:
    """Validate condition weights ``{class name: factor}`` and return one factor per class.

    A condition weight multiplies the weight of every sample of its class
    (the per-condition factors users write by hand); classes left out keep 1.

    Args:
        condition_weights: `None`, a mapping class name (or index) ->
            factor, or its JSON text.
        classes: Class names, in label order.

    Returns:
        float64 array of shape ``(num_classes,)``, or `None`.

    Raises:
        WeightError: On an unknown class, a class given twice, or a negative
            / NaN / infinite factor.
    """
    value = parse_json_value(condition_weights, "condition_weights", error=WeightError)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise WeightError(
            "`condition_weights` must map class names to factors, e.g. {\"tumor\": 3.0}. "
            f"Received: condition_weights={value!r}"
        )
    return _per_class(value, classes, argument="condition_weights", warn_missing=False)


def manifest_sample_weights(manifest: Any, ids: Sequence[str]) -> np.ndarray:
    """Per-sample weights of ``ids`` from ``manifest.sample_weights``.

    Returns:
        float64 array of shape ``(len(ids),)``.

    Raises:
        WeightError: If the manifest has no per-sample weights, or none for
            one of ``ids`` (named), or a weight is invalid.
    """
    stored = manifest.sample_weights
    if stored is None:
        raise WeightError(
            f"The manifest {manifest.path or ''} has no per-sample weights. Prepare with "
            "`kpipe prepare RAW.csv --weight-column NAME` or `kpipe prepare RAW --weights FILE` (ID,weight), "
            "or leave `use_sample_weights` off."
        )
    missing = [i for i in ids if i not in stored]
    if missing:
        raise WeightError(
            f"The manifest has no weight for {len(missing)} sample(s), e.g. {missing[0]!r}. "
            "Prepare again with a weight for every sample."
        )
    return np.array([check_weight(stored[i], argument="sample_weights", key=i, error=WeightError) for i in ids],
                    dtype=np.float64)


def compute_sample_weights(
    labels: Any,
    classes: Sequence[str],
    *,
    class_weight: Any = None,
    condition_weights: Any = None,
    per_sample: np.ndarray | None = None,
    partition: str | None = None,
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The weight of every sample: the product of the configured factors.

    ``w[i] = class_weight[labels[i]] * condition_weights[labels[i]] * per_sample[i]``.

    Args:
        labels: Class indices (int ``(n,)``), binary ``(n, 1)`` or one-hot
            ``(n, K)`` labels; every row names exactly one class (see
            `class_indices`).
        classes: Class names, in label order.
        class_weight: See `check_class_weight`.
        condition_weights: See `check_condition_weights`.
        per_sample: float array ``(n,)`` of per-sample weights, or `None`.
        partition: The partition's name, for messages.

    Returns:
        ``(weights, details)``: float32 array of shape ``(n,)`` (`None` if
        nothing is configured) and a JSON-ready dict of the per-class factors
        used (``{"class_weight": {name: w}, "condition_weights": {...},
        "per_sample": bool}``).

    Raises:
        ArgumentError: If a label row names no class, several classes, or a
            class outside ``[0, len(classes))`` (the message names the row).
        WeightError: On an invalid weight, or if every weight is 0.

    Example:
        >>> w, _ = compute_sample_weights(np.array([0] * 50 + [1] * 100 + [2] * 25), ["a", "b", "c"],
        ...                               class_weight="balanced", condition_weights={"c": 2})
        >>> w[[0, 50, 150]].round(4)
        array([1.1667, 0.5833, 4.6667], dtype=float32)
    """
    labels = class_indices(labels, num_classes=len(classes), partition=partition)
    cw = check_class_weight(class_weight, classes, labels, partition=partition)
    cond = check_condition_weights(condition_weights, classes)
    details: dict[str, Any] = {"per_sample": per_sample is not None}
    if cw is None and cond is None and per_sample is None:
        return None, details
    w = np.ones(len(labels), dtype=np.float64)
    if cw is not None:
        w *= cw[labels]
        details["class_weight"] = {name: float(v) for name, v in zip(classes, cw)}
    if cond is not None:
        w *= cond[labels]
        details["condition_weights"] = {name: float(v) for name, v in zip(classes, cond)}
    if per_sample is not None:
        per_sample = np.asarray(per_sample, dtype=np.float64)
        if per_sample.shape != w.shape:
            raise WeightError(f"`per_sample` must have shape {w.shape}. Received: shape {per_sample.shape}")
        bad = np.flatnonzero(~np.isfinite(per_sample) | (per_sample < 0))
        if bad.size:
            check_weight(float(per_sample[bad[0]]), argument="per_sample", key=int(bad[0]), error=WeightError)
        w *= per_sample
    if not np.any(w > 0):
        raise WeightError(
            f"Every one of the {len(w)} sample weights is 0, so training would learn nothing. Check the "
            "weight column / file and the class and condition weights."
        )
    with np.errstate(over="ignore"):
        w32 = w.astype(np.float32)
    over = np.flatnonzero(~np.isfinite(w32))
    if over.size:
        i = int(over[0])
        raise WeightError(
            f"The sample weight of position {i} (class {classes[labels[i]]!r}) is {w[i]:.3g} (class weight x "
            f"condition weight x per-sample weight), more than float32 holds ({float(np.finfo(np.float32).max):.3g}): "
            "the loss would be infinite. Use smaller weights (their ratios are what matters)."
        )
    return w32, details


@dataclasses.dataclass(frozen=True, eq=False)
class SampleWeights:
    """The sample-weight options of a generator: which factors make each sample's ``sample_weight``.

    Attributes:
        class_weight: ``"balanced"``, a class -> weight mapping, one weight
            per class, or JSON text (see `check_class_weight`). Defaults to
            `None`.
        condition_weights: Class -> factor mapping or its JSON text (see
            `check_condition_weights`). Defaults to `None`.
        use_sample_weights: Multiply by the manifest's per-sample weights
            (``kpipe prepare --weight-column`` / ``--weights``). Defaults to
            `False`.

    Raises:
        WeightError: If an option has the wrong type (values are checked
            against the classes when the generator computes the weights).

    Example:
        >>> DataGenerator("prepared", "train", weights=SampleWeights(class_weight="balanced",
        ...                                                          condition_weights={"tumor": 2.0}))
    """

    class_weight: Any = None
    condition_weights: Any = None
    use_sample_weights: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "use_sample_weights",
                           check_bool(self.use_sample_weights, "use_sample_weights", error=WeightError))
        if isinstance(self.class_weight, str) and self.class_weight not in CLASS_WEIGHT_POLICIES:
            parse_json_value(self.class_weight, "class_weight", error=WeightError)
        parse_json_value(self.condition_weights, "condition_weights", error=WeightError)

    @property
    def configured(self) -> bool:
        """True if any factor is set (batches are then ``(x, y, sample_weight)``)."""
        return self.class_weight is not None or self.condition_weights is not None or self.use_sample_weights

    @property
    def balances_classes(self) -> bool:
        """True for ``class_weight="balanced"``."""
        return isinstance(self.class_weight, str) and self.class_weight == "balanced"

    def compute(self, labels: np.ndarray, classes: Sequence[str], *, manifest: Any = None,
                ids: Sequence[str] | None = None, partition: str | None = None
                ) -> tuple[np.ndarray | None, dict[str, Any]]:
        """The weight of every sample of a partition (see `compute_sample_weights`).

        Args:
            labels: Class indices of the partition's samples, int ``(n,)``.
            classes: Class names, in label order.
            manifest: The manifest holding per-sample weights (with
                ``use_sample_weights``).
            ids: The partition's sample IDs (with ``use_sample_weights``).
            partition: The partition's name, for messages.

        Returns:
            ``(weights, details)`` as `compute_sample_weights`.
        """
        per_sample = manifest_sample_weights(manifest, ids) if self.use_sample_weights else None
        return compute_sample_weights(labels, classes, class_weight=self.class_weight,
                                      condition_weights=self.condition_weights, per_sample=per_sample,
                                      partition=partition)


def check_fit_class_weight(data: Any, class_weight: Any) -> None:
    """Refuse ``fit(class_weight=...)`` together with a generator that yields weights.

    Keras rejects a ``(x, y, sample_weight)`` batch plus ``class_weight``
    ("You cannot specify `class_weight` and `sample_weight` at the same
    time") only when the first batch arrives; call this before `fit`.

    Raises:
        WeightError: If ``class_weight`` is set and ``data`` yields weights.
    """
    if class_weight is not None and getattr(data, "yields_weights", False):
        raise WeightError(
            "`class_weight` was passed to `fit`, but the generator already yields sample weights "
            "(x, y, sample_weight), and Keras cannot combine the two. Give the class weights to the "
            "generator instead: DataGenerator(..., class_weight=...), and call fit without class_weight. "
            f"Received: class_weight={class_weight!r}"
        )


def read_weights_file(path: str | os.PathLike) -> dict[str, float]:
    """Read per-sample weights: a CSV of ``ID,weight`` rows (header optional) or a JSON object.

    Returns:
        Sample ID -> weight (float >= 0).

    Raises:
        InputError: If the file is missing or unreadable, a row is malformed,
            an ID repeats, or a weight is negative, NaN or infinite (the
            message names file and line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"Cannot read the weights file {path}: {e}. Pass a CSV of ID,weight rows.") from e
    if path.suffix.lower() == ".json":
        try:
            rows = list(loads_json(text).items())
        except (ValueError, AttributeError) as e:
            raise InputError(f"Weights file {path} must hold a JSON object {{ID: weight}}: {e}") from e
        numbered = [(1, str(k), v) for k, v in rows]
    else:
        table = [r for r in csv.reader(text.splitlines()) if any(c.strip() for c in r)]
        numbered = [(n, r[0].strip() if r else "", r[1].strip() if len(r) > 1 else None)
                    for n, r in enumerate(table, start=1)]
        if numbered and numbered[0][2] is not None and _number(numbered[0][2]) is None:
            numbered = numbered[1:]  # header row
    weights: dict[str, float] = {}
    for n, sid, value in numbered:
        w = _number(value)
        if not sid or w is None or len(str(value)) == 0:
            raise InputError(f"{path}:{n}: expected `ID,weight` with a number. Received: {sid!r}, {value!r}")
        if not math.isfinite(w) or w < 0:
            raise InputError(f"{path}:{n}: weights must be finite numbers >= 0. Received: weight={value!r} for {sid!r}")
        if sid in weights:
            raise InputError(f"{path}:{n}: sample {sid!r} has a second weight; give each ID once.")
        weights[sid] = w
    if not weights:
        raise InputError(f"Weights file {path} holds no `ID,weight` rows.")
    return weights


def weights_for_samples(kept_ids: Sequence[str], *, all_ids: Sequence[str],
                        column: Mapping[str, float] | None = None,
                        file: Mapping[str, float] | None = None) -> dict[str, float] | None:
    """The ``manifest.sample_weights`` of a prepared dataset, from a CSV column or a weights file.

    Args:
        kept_ids: IDs of the samples that were converted.
        all_ids: IDs of every sample found (converted or skipped).
        column: Sample ID -> weight from the CSV weight column.
        file: Sample ID -> weight from a weights file.

    Returns:
        Sample ID -> weight for every kept sample, or `None` if neither is given.

    Raises:
        InputError: If both are given, or the file names an unknown sample or
            lacks a kept one (an example is named).
    """
    if column is not None and file is not None:
        raise InputError("Pass per-sample weights once: a CSV --weight-column or a --weights file, not both.")
    if column is not None:
        return {i: float(column[i]) for i in kept_ids}
    if file is None:
        return None
    known = set(all_ids)
    unknown = [i for i in file if i not in known]
    if unknown:
        raise InputError(
            f"The weights file names {len(unknown)} sample(s) that are not in the input, e.g. {unknown[0]!r}. "
            f"IDs are those of the manifest, e.g. {next(iter(all_ids), '')!r}."
        )
    missing = [i for i in kept_ids if i not in file]
    if missing:
        raise InputError(
            f"The weights file gives no weight for {len(missing)} sample(s), e.g. {missing[0]!r}. "
            "Give every sample a weight (1.0 for no change)."
        )
    return {i: float(file[i]) for i in kept_ids}


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
