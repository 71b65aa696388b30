"""Resolve a loss given by name, by ``module:function`` / ``file.py:function``, or as a callable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from kpipe.errors import LoadError
from kpipe.training.loading import is_object_spec, load_object

_SPARSE = ("sparse_categorical_crossentropy", "sparse_categorical_focal_crossentropy")
_BINARY = ("binary_crossentropy", "binary_focal_crossentropy", "hinge", "squared_hinge")


def resolve_loss(spec: str | Callable[..., Any]) -> str | Callable[..., Any] | keras.losses.Loss:
    """Return a loss `model.compile` accepts.

    Args:
        spec: A Keras loss name (``"sparse_categorical_crossentropy"``,
            ``"categorical_focal_crossentropy"``, ...), a callable, or a custom
            function ``"module:function"`` / ``"path.py:function"`` with the
            signature ``(y_true, y_pred) -> loss`` (per sample or scalar).

    Returns:
        The loss name (validated) or the loaded callable.

    Raises:
        LoadError: If the name is not a Keras loss or the function cannot be loaded.
    """
    if callable(spec):
        return spec
    if is_object_spec(spec):
        fn = load_object(spec, what="loss")
        if not callable(fn):
            raise LoadError(f"The loss {spec!r} is a {type(fn).__name__}, not a function.")
        return fn
    try:
        keras.losses.get(spec)
    except (ValueError, TypeError):
        raise LoadError(
            f"Unknown loss {spec!r}. Use a Keras loss name such as sparse_categorical_crossentropy or "
            "categorical_crossentropy, or a custom function as module:function or path/to/file.py:function."
        ) from None
    return spec


def label_mode_for_loss(loss: str | Callable[..., Any]) -> str:
    """The label mode a loss expects, from its name.

    ``"int"`` for sparse losses (``sparse_*``), ``"binary"`` for binary ones
    (``binary_*``, hinge), ``"categorical"`` (one-hot) for the rest, custom
    functions included, unless the function declares an attribute
    ``label_mode``. ``kpipe train --label-mode`` overrides this.
    """
    if isinstance(loss, str):
        name = loss
    else:
        declared = getattr(loss, "label_mode", None)
        if declared is not None:
            return declared
        name = getattr(loss, "__name__", "")
    if name in _SPARSE or name.startswith("sparse_"):
        return "int"
    if name in _BINARY or name.startswith("binary_"):
        return "binary"
    return "categorical"
