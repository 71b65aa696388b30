"""Argument checks: validate *and* normalise a value once, at the API boundary.

Every ``check_*`` function returns the clean value (an ``int``, a ``float``,
a normalised string...) or raises the kpipe error that says whose mistake it
is (the pattern of imbalanced-learn's ``imblearn/utils/_validation.py``). The
messages follow Keras: the argument in backticks, the rule, then
``Received: name=value``.

Which error class:

* `ArgumentError`: a bad argument to a kpipe function or command (the default);
* `SamplingError` / `WeightError`: a bad sampling or weight option (both are
  `ArgumentError` subclasses, so one ``except ArgumentError`` catches all);
* `InputError`: bad raw input for ``kpipe prepare``;
* `ManifestError`: a manifest that fails validation.

Pass ``error=`` to choose; the default is `ArgumentError`.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Iterable, Sequence
from typing import Any

from kpipe.errors import ArgumentError, KpipeError

__all__ = [
    "check_bool",
    "check_choice",
    "check_class_index",
    "check_class_labels",
    "check_int",
    "check_json_object",
    "check_n_jobs",
    "check_name_list",
    "check_number",
    "check_optional_bool",
    "check_positive_int",
    "check_seed",
    "check_text",
    "check_text_choice",
    "check_weight",
    "parse_json_value",
]


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None,
              allow_none: bool = False, error: type[KpipeError] = ArgumentError) -> int | None:
    """An integer (Python or NumPy, never `bool`) within ``[minimum, maximum]``.

    Args:
        value: The value received.
        name: The argument's name, for the message.
        minimum: Smallest accepted value, or `None` for no bound.
        maximum: Largest accepted value, or `None` for no bound.
        allow_none: Accept (and return) `None`.
        error: The exception class to raise.

    Returns:
        ``int(value)``, or `None` when allowed.

    Raises:
        ArgumentError: (or ``error``) If ``value`` is not an integer in range.

    Example:
        >>> check_int(3, "epochs", minimum=1)
        3
    """
    if value is None and allow_none:
        return None
    if not _is_int(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if minimum == 1 and maximum is None:
            rule = "a positive integer"
        elif minimum is not None and maximum is not None:
            rule = f"an integer in [{minimum}, {maximum}]"
        elif minimum is not None:
            rule = f"an integer >= {minimum}"
        elif maximum is not None:
            rule = f"an integer <= {maximum}"
        else:
            rule = "an integer"
        rule += " or None" if allow_none else ""
        raise error(f"`{name}` must be {rule}. Received: {name}={value!r}")
    return int(value)


def check_positive_int(value: Any, name: str, *, allow_none: bool = False,
                       error: type[KpipeError] = ArgumentError) -> int | None:
    """An integer >= 1 (see `check_int`).

    Example:
        >>> check_positive_int(32, "batch_size")
        32
    """
    return check_int(value, name, minimum=1, allow_none=allow_none, error=error)


def check_number(value: Any, name: str, *, minimum: float | None = None, exclusive_minimum: bool = False,
                 allow_none: bool = False, error: type[KpipeError] = ArgumentError) -> float | None:
    """A finite real number (not `bool`), optionally ``>= minimum`` (``> minimum`` if exclusive).

    Returns:
        ``float(value)``, or `None` when allowed.

    Raises:
        ArgumentError: (or ``error``) If ``value`` is not a finite number in range.

    Example:
        >>> check_number(1e-3, "learning_rate", minimum=0, exclusive_minimum=True)
        0.001
    """
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok and minimum is not None:
        ok = float(value) > minimum if exclusive_minimum else float(value) >= minimum
    if not ok:
        if minimum == 0 and exclusive_minimum:
            rule = "a positive number"
        elif minimum is not None:
            rule = f"a finite number {'>' if exclusive_minimum else '>='} {minimum:g}"
        else:
            rule = "a finite number"
        rule += " or None" if allow_none else ""
        raise error(f"`{name}` must be {rule}. Received: {name}={value!r}")
    return float(value)


def check_bool(value: Any, name: str, *, error: type[KpipeError] = ArgumentError) -> bool:
    """A `bool` (NumPy's too); ``0``/``1`` and strings are refused, so a typo cannot mean `True`."""
    if isinstance(value, bool) or type(value).__name__ in ("bool_", "bool"):
        return bool(value)
    raise error(f"`{name}` must be True or False. Received: {name}={value!r}")


def check_choice(value: Any, name: str, choices: Iterable[Any], *,
                 error: type[KpipeError] = ArgumentError) -> Any:
    """One of ``choices`` (compared with ``==``); returns it.

    Example:
        >>> check_choice("fit", "loop", ("fit", "step", "tape"))
        'fit'
    """
    choices = tuple(choices)
    if not any(value == c and type(value) is type(c) for c in choices):
        shown = ", ".join(repr(c) for c in choices)
        raise error(f"`{name}` must be one of {shown}. Received: {name}={value!r}")
    return value


MAX_SEED = 2**64 - 1
"""Largest seed kpipe accepts: seeds are integers in ``[0, 2**64)``, each used whole."""


def check_seed(value: Any, name: str = "seed", *, error: type[KpipeError] = ArgumentError) -> int:
    """A seed: an integer in ``[0, 2**64)``, used whole (no wrapping to 32 bits).

    kpipe derives every random stream with ``np.random.SeedSequence`` from
    the whole seed, so ``seed=0`` and ``seed=2**32`` give different streams.
    Negative seeds and seeds of 2**64 and more are refused rather than wrapped.

    Raises:
        ArgumentError: (or ``error``) If ``value`` is not an integer in ``[0, 2**64)``.
    """
    return check_int(value, name, minimum=0, maximum=MAX_SEED, error=error)


def check_weight(value: Any, *, argument: str, key: Any = None, error: type[KpipeError] = ArgumentError) -> float:
    """A weight: a finite number >= 0 (not `bool`).

    Args:
        value: The weight received.
        argument: The argument's name (``"class_weight"``...).
        key: The class or sample it belongs to, for the message.
        error: The exception class to raise.

    Raises:
        ArgumentError: (or ``error``) If the weight is negative, NaN, infinite or not a number.
    """
    try:
        w = float(value)
    except (TypeError, ValueError):
        w = math.nan
    if isinstance(value, bool) or not math.isfinite(w) or w < 0:
        where = argument if key is None else f"{argument}[{key!r}]"
        raise error(f"Weights must be finite numbers >= 0. Received: {where}={value!r}")
    return w


def parse_json_value(value: Any, name: str, *, example: str = '{"cat": 2.0}',
                     error: type[KpipeError] = ArgumentError) -> Any:
    """``value`` itself, or the JSON value a string holds (command-line options pass JSON text).

    Raises:
        ArgumentError: (or ``error``) If a string is not valid JSON.
    """
    if isinstance(value, str):
        try:
            return loads_json(value)
        except ValueError as e:
            why = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
            raise error(f"`{name}` must be JSON such as '{example}'. Received: {name}={value!r} ({why})") from None
    return value


def check_class_index(key: Any, classes: Sequence[str], *, argument: str,
                      error: type[KpipeError] = ArgumentError) -> int:
    """Resolve a class given by name or by index to its index.

    A string is looked up among the class names first, then read as an index
    (``"3"``); an integer is an index in ``[0, len(classes))``.

    Raises:
        ArgumentError: (or ``error``) If ``key`` names no class (the message lists them).

    Example:
        >>> check_class_index("dog", ["cat", "dog"], argument="class_weight")
        1
    """
    if isinstance(key, str):
        if key in classes:
            return list(classes).index(key)
        if key.strip().lstrip("-").isdigit():
            key = int(key)
    if _is_int(key) and 0 <= int(key) < len(classes):
        return int(key)
    shown = ", ".join(repr(c) for c in list(classes)[:20]) + (", ..." if len(classes) > 20 else "")
    raise error(
        f"`{argument}` has a key that is not a class: {key!r}. Use class names ({shown}) or "
        f"class indices 0..{len(classes) - 1}. Received: {argument}={{{key!r}: ...}}"
    )


def check_class_labels(labels: Any, name: str = "labels", *, num_classes: int | None = None,
                       where: str = "", error: type[KpipeError] = ArgumentError) -> Any:
    """Class indices from labels given as indices ``(n,)``, binary ``(n, 1)`` or one-hot ``(n, K)``.

    Every row must name exactly one class: an integer-valued index in
    ``[0, num_classes)`` (``1.0`` is accepted, ``1.5``, ``-1`` and
    ``num_classes`` are not), or a one-hot row of ``K == num_classes`` values
    with exactly one ``1`` (k-hot and all-zero rows are refused, never
    argmaxed).

    Args:
        labels: Array-like of labels.
        name: The argument's name, for the message.
        num_classes: Number of classes; defaults to ``max(index) + 1``
            (one-hot: ``K``).
        where: Words added after the row number in messages, e.g.
            ``" of partition 'train'"``.
        error: The exception class to raise.

    Returns:
        int64 NumPy array of shape ``(n,)``.

    Raises:
        ArgumentError: (or ``error``) If a row names no class, several
            classes, or a class outside ``[0, num_classes)`` (the message
            gives the row and its value).

    Example:
        >>> check_class_labels([[0, 1, 0], [1, 0, 0]]).tolist()
        [1, 0]
    """
    import numpy as np

    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] > 1:
        if num_classes is not None and y.shape[1] != num_classes:
            raise error(f"`{name}` as one-hot rows needs {num_classes} columns (one per class). "
                        f"Received: {name} with shape {y.shape}")
        if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
            raise error(f"`{name}` must hold numbers. Received: {name} with dtype {y.dtype}")
        ones, zeros = (y == 1), (y == 0)
        bad = np.flatnonzero((ones.sum(axis=1) != 1) | ((ones | zeros).sum(axis=1) != y.shape[1]))
        if bad.size:
            row = int(bad[0])
            kind = "all zero" if not y[row].any() else "not one-hot (k-hot or not 0/1)"
            raise error(
                f"`{name}` row {row}{where} is {kind}: {y[row].tolist()!r}. Each one-hot row must hold exactly "
                f"one 1 (its class) and zeros; give class indices for multi-label data. Received: {name}[{row}]"
            )
        return np.argmax(y, axis=1).astype(np.int64)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise error(f"`{name}` must be class indices (n,), binary (n, 1) or one-hot (n, K) labels. "
                    f"Received: {name} with shape {y.shape}")
    if y.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool) or np.issubdtype(y.dtype, np.complexfloating):
        raise error(f"`{name}` must hold class indices (integers). Received: {name} with dtype {y.dtype}")
    as_int = y.astype(np.int64) if np.issubdtype(y.dtype, np.integer) or y.dtype == bool else None
    if as_int is None:
        finite = np.isfinite(y)
        whole = finite & (np.floor(np.where(finite, y, 0)) == np.where(finite, y, 0))
        bad = np.flatnonzero(~whole)
        if bad.size:
            row = int(bad[0])
            raise error(f"`{name}` must hold whole class indices; row {row}{where} holds {y[row].item()!r}. "
                        f"Received: {name}[{row}]={y[row].item()!r}")
        as_int = y.astype(np.int64)
    k = int(as_int.max()) + 1 if num_classes is None else int(num_classes)
    bad = np.flatnonzero((as_int < 0) | (as_int >= k))
    if bad.size:
        row = int(bad[0])
        raise error(
            f"`{name}` row {row}{where} holds class index {int(as_int[row])}, outside 0..{k - 1} "
            f"({k} classes). Labels are class indices, never negative. Received: {name}[{row}]={y[row].item()!r}"
        )
    return as_int


def check_text_choice(value: Any, name: str, choices: Iterable[str], *, allow_none: bool = False,
                      error: type[KpipeError] = ArgumentError) -> str | None:
    """A string option that is one of ``choices``; the message lists them as typed on a command line.

    Example:
        >>> check_text_choice("tape", "loop", ("fit", "step", "tape"))
        'tape'
    """
    choices = tuple(choices)
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or value not in choices:
        raise error(f"`{name}` must be one of {', '.join(choices)}{' or None' if allow_none else ''}. "
                    f"Received: {name}={value!r}")
    return value


def check_text(value: Any, name: str, *, allow_none: bool = False, error: type[KpipeError] = ArgumentError
               ) -> str | None:
    """A non-empty string (a name, a path, a ``module:attr`` spec); `None` when allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise error(f"`{name}` must be a non-empty string{' or None' if allow_none else ''}. "
                    f"Received: {name}={value!r}")
    return value


def check_optional_bool(value: Any, name: str, *, error: type[KpipeError] = ArgumentError) -> bool | None:
    """`True`, `False` or `None` (an option whose default is decided later, e.g. "when installed")."""
    return None if value is None else check_bool(value, name, error=error)


def check_json_object(value: Any, name: str, *, example: str = '{"gamma": 3.0}', allow_none: bool = True,
                      error: type[KpipeError] = ArgumentError) -> dict[str, Any] | None:
    """A mapping, or a string holding a JSON object; returns a new `dict` (`None` or ``""``: `None`)."""
    if value is None or value == "":
        if allow_none:
            return None
    value = parse_json_value(value, name, example=example, error=error)
    if not isinstance(value, dict):
        raise error(f"`{name}` must be a JSON object (a dict) such as '{example}'. Received: {name}={value!r}")
    return dict(value)


def check_name_list(value: Any, name: str, choices: Iterable[str], *,
                    error: type[KpipeError] = ArgumentError) -> tuple[str, ...]:
    """Names from ``choices``, given as a comma-separated string (``"auc,f1"``) or a sequence of strings.

    Spaces around names are ignored and repeats are dropped (the first kept); `None` and ``""`` give ``()``.

    Returns:
        The names, in the order given, as a tuple.

    Raises:
        ArgumentError: (or ``error``) If a name is not one of ``choices``, or the value is neither a string
            nor a sequence of strings.

    Example:
        >>> check_name_list("auc, f1", "metrics", ("accuracy", "auc", "f1"))
        ('auc', 'f1')
    """
    choices = tuple(choices)
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise error(f"`{name}` must be a comma-separated list of names such as '{','.join(choices[:2])}'. "
                    f"Received: {name}={value!r}")
    unknown = [v for v in items if v not in choices]
    if unknown:
        raise error(f"`{name}` takes names from: {', '.join(choices)}; {unknown[0]!r} is not one of them. "
                    f"Received: {name}={value!r}")
    return tuple(dict.fromkeys(items))


def check_n_jobs(value: Any, name: str = "n_jobs", *, error: type[KpipeError] = ArgumentError) -> int:
    """Workers as joblib counts them: a non-zero integer (``-1`` all cores, ``-2`` all but one, ...).

    Raises:
        ArgumentError: (or ``error``) If ``value`` is not a non-zero integer (`bool` is refused).

    Example:
        >>> check_n_jobs(-1)
        -1
    """
    if not _is_int(value) or value == 0:
        raise error(f"`{name}` must be a non-zero integer (-1 for all cores). Received: {name}={value!r}")
    return int(value)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the key {key!r} appears twice in one JSON object (which one is meant cannot be told)")
        seen[key] = value
    return seen


def loads_json(text: str | bytes, **kwargs: Any) -> Any:
    """`json.loads`, refusing an object that names a key twice (Python's `json` keeps the last one silently).

    Raises:
        ValueError: On a repeated key (`json.JSONDecodeError`, a `ValueError`, on invalid JSON).

    Example:
        >>> loads_json('{"a": 1, "a": 2}')
        Traceback (most recent call last):
        ValueError: the key 'a' appears twice in one JSON object (which one is meant cannot be told)
    """
    return json.loads(text, object_pairs_hook=_unique_keys, **kwargs)
