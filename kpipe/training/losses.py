"""Losses: resolve a name, a Keras loss class with arguments, or a custom function; check it on one batch.

A loss can be given as

* a Keras loss name (``"sparse_categorical_crossentropy"``,
  ``"categorical_focal_crossentropy"``, ``"mse"``...) or class name
  (``"CategoricalFocalCrossentropy"``), with optional constructor arguments
  (``loss_args``, a dict or a JSON object such as ``{"gamma": 3.0}``);
* a custom function ``"module:function"`` or ``"path/to/file.py:function"``
  with the signature ``(y_true, y_pred) -> loss`` (per sample, shape
  ``(batch,)``, or a scalar), or a custom `keras.losses.Loss` subclass given
  the same way;
* a Python callable or `keras.losses.Loss` instance (library use).

Every form becomes a `keras.losses.Loss` instance, so the three training loops
(`fit`, `step`, `tape`) reduce it and apply sample weights the same way
(`build_loss`; `resolve_loss` only validates a name or loads a function)
(Keras' ``"sum_over_batch_size"``: ``sum(loss_i * w_i) / batch_size``).

`check_loss` runs the loss on one batch before training and turns the
classic mistakes into errors that say what to do: sparse loss with one-hot
labels (or the reverse), a loss that returns the wrong shape, NaN or a
non-float, and ``from_logits`` that contradicts the model's last activation.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np

from kpipe._validation import check_json_object
from kpipe.errors import KpipeError, LoadError
from kpipe.training.loading import is_loaded, is_object_spec, load_object

# Label mode each well-known loss needs; others (mse, kl_divergence, custom...) take what they get.
_INT_LOSSES = ("sparse_categorical_crossentropy", "sparse_categorical_focal_crossentropy",
               "categorical_generalized_cross_entropy")
_CATEGORICAL_LOSSES = ("categorical_crossentropy", "categorical_focal_crossentropy", "categorical_hinge")
_BINARY_LOSSES = ("binary_crossentropy", "binary_focal_crossentropy", "hinge", "squared_hinge")
_LABEL_MODE_HELP = {
    "int": "integer class indices, shape (batch,)",
    "categorical": "one-hot labels, shape (batch, num_classes)",
    "binary": "0/1 labels, shape (batch, 1)",
}


class LossCheckError(KpipeError, ValueError):
    """A loss that does not fit the labels or the model (found on the first batch)."""


# ----------------------------------------------------------------- wrappers
@keras.saving.register_keras_serializable(package="kpipe")
class FunctionLoss(keras.losses.Loss):
    """A `keras.losses.Loss` around a function ``fn(y_true, y_pred)``.

    Does what Keras does when `compile` gets a plain function: brings
    ``y_true`` and ``y_pred`` to the same rank when they differ by a trailing
    1, calls ``fn``, then reduces with sample weights (``"sum_over_batch_size"``).

    Args:
        fn: The function; returns the loss per sample, shape ``(batch,)``, or
            per element, or a scalar (float).
        name: Name of the loss (in logs and errors). Defaults to ``fn.__name__``.
        spec: How the function was named (``"module:function"``), kept in
            `get_config` so a saved model can find it again.
        reduction: As `keras.losses.Loss`. Defaults to ``"sum_over_batch_size"``.
    """

    def __init__(self, fn: Callable[..., Any] | None = None, name: str | None = None, *, spec: str | None = None,
                 reduction: str = "sum_over_batch_size", dtype: Any = None) -> None:
        if fn is None:
            if spec is None:
                raise ValueError("`FunctionLoss` needs `fn` or `spec`.")
            fn = load_object(spec, what="loss")
        super().__init__(name=name or getattr(fn, "__name__", "custom_loss"), reduction=reduction, dtype=dtype)
        self.fn = fn
        self.spec = spec

    def call(self, y_true, y_pred):
        y_true = keras.ops.convert_to_tensor(y_true)
        if len(y_true.shape) == len(y_pred.shape) + 1 and y_true.shape[-1] == 1:
            y_true = keras.ops.squeeze(y_true, axis=-1)
        elif len(y_pred.shape) == len(y_true.shape) + 1 and y_pred.shape[-1] == 1:
            y_true = keras.ops.expand_dims(y_true, axis=-1)
        return self.fn(y_true, y_pred)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"spec": self.spec}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FunctionLoss:
        """Rebuild from `get_config`; the function's code is imported only if this process loaded it already.

        A saved model (``model.keras``) may come from someone else: loading it
        must not run the code its loss names. Load the loss first
        (`kpipe.training.loading.load_object`, or train with it), or load the
        model with ``compile=False``.

        Raises:
            LoadError: If the named code was not loaded by this process.
        """
        spec = config.get("spec")
        if spec is not None and not is_loaded(spec):
            raise LoadError(
                f"The saved loss names code to import: {spec}. kpipe imports code only when you name it: call "
                f"kpipe.training.loading.load_object({spec!r}) first if you trust it, or load the model with "
                "compile=False."
            )
        return cls(**config)


# ----------------------------------------------------------------- lookup
def _keras_loss_class(name: str) -> type[keras.losses.Loss] | None:
    """The Keras loss class of a loss name, class name or alias (``"mse"``), through `keras.losses.get`.

    A function name (``"categorical_focal_crossentropy"``) maps to the class
    of the same name in CamelCase (``CategoricalFocalCrossentropy``), which
    is how Keras names each loss class after its function.
    """
    try:
        obj = keras.losses.get(name)
    except (ValueError, TypeError):  # unknown, or a class that needs arguments
        return None
    if isinstance(obj, keras.losses.Loss):
        return type(obj)
    key = getattr(obj, "__name__", "").replace("_", "").lower()
    for attr, value in vars(keras.losses).items():
        if inspect.isclass(value) and issubclass(value, keras.losses.Loss) and attr.lower() == key:
            return value
    return None


def _snake_case(name: str) -> str:
    """``"SparseCategoricalCrossentropy"`` -> ``"sparse_categorical_crossentropy"``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def parse_loss_args(loss_args: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """``loss_args`` as a dict: a mapping is copied, a string is read as a JSON object (`None`: ``{}``).

    Raises:
        ArgumentError: If the string is not a JSON object.
    """
    return check_json_object(loss_args, "loss_args") or {}


def loss_name(loss: Any) -> str:
    """A short name for messages: the Keras name, the function name or the spec."""
    if isinstance(loss, FunctionLoss):
        return loss.spec or loss.name
    if isinstance(loss, keras.losses.Loss):
        return loss.name
    if isinstance(loss, str):
        return loss
    return getattr(loss, "__name__", type(loss).__name__)


def model_outputs(model: keras.Model) -> str | None:
    """What the model's last layer outputs: ``"probabilities"``, ``"logits"`` or `None` (unknown).

    Read from the activation of the last layer: softmax or sigmoid ->
    probabilities, linear -> logits. A last layer that is itself a model
    (a model with kpipe's preprocessing in front) is looked into.
    """
    layers = getattr(model, "layers", None)
    if not layers:
        return None
    last = layers[-1]
    if isinstance(last, keras.Model):
        return model_outputs(last)
    if isinstance(last, keras.layers.Softmax):
        return "probabilities"
    activation = getattr(last, "activation", None)
    name = getattr(activation, "__name__", None)
    if name in ("softmax", "sigmoid", "log_softmax"):
        return "probabilities" if name != "log_softmax" else None
    if name == "linear":
        return "logits"
    return None


def resolve_loss(spec: Any) -> Any:
    """Validate a loss name, or load a custom loss; no instance is built (see `build_loss`).

    Args:
        spec: A Keras loss name or class name, a callable, or a custom loss
            ``"module:function"`` / ``"path.py:function"``.

    Returns:
        The name (validated) or the loaded callable / class.

    Raises:
        LoadError: If the name is not a Keras loss or the object cannot be loaded.
    """
    if not isinstance(spec, str):
        return spec
    if is_object_spec(spec):
        obj = load_object(spec, what="loss")
        if not callable(obj):
            raise LoadError(f"The loss {spec!r} is a {type(obj).__name__}, not a function or a keras.losses.Loss "
                            "class.")
        return obj
    if _keras_loss_class(spec) is None:
        raise LoadError(
            f"Unknown loss {spec!r}. Use a Keras loss name such as sparse_categorical_crossentropy, "
            "categorical_crossentropy or categorical_focal_crossentropy, a Keras loss class name, or a custom "
            "function as module:function or path/to/file.py:function."
        )
    return spec


def build_loss(spec: Any, loss_args: str | Mapping[str, Any] | None = None, *,
                 outputs: str | None = None) -> keras.losses.Loss:
    """Turn a loss specification into a `keras.losses.Loss` instance.

    Args:
        spec: A Keras loss name or class name, ``"module:function"`` /
            ``"path.py:function"`` (a function or a `keras.losses.Loss`
            subclass), a callable, or a `keras.losses.Loss` instance.
        loss_args: Constructor arguments of a Keras (or custom) loss class, as a
            dict or a JSON object string, e.g. ``{"gamma": 3.0}``. For a custom
            function they are bound as keyword arguments. Defaults to none.
        outputs: What the model outputs, ``"probabilities"`` or ``"logits"``
            (see `model_outputs`). A Keras loss that takes ``from_logits`` gets
            ``from_logits=(outputs == "logits")`` unless ``loss_args`` sets it.

    Returns:
        A `keras.losses.Loss` (custom functions are wrapped in `FunctionLoss`).

    Raises:
        LoadError: If the name is not a Keras loss or the custom loss cannot be loaded.
        KpipeError: If ``loss_args`` is not a JSON object or does not fit the loss class.

    Example:
        >>> build_loss("categorical_focal_crossentropy", '{"gamma": 3.0}', outputs="probabilities")
        <CategoricalFocalCrossentropy name=categorical_focal_crossentropy ...>
    """
    args = parse_loss_args(loss_args)
    if isinstance(spec, keras.losses.Loss):
        if args:
            raise KpipeError(f"`loss_args` cannot apply to a loss instance. Received: loss_args={args!r}")
        return spec
    text_spec = spec if isinstance(spec, str) else None
    if isinstance(spec, str) and is_object_spec(spec):
        obj = load_object(spec, what="loss")
    elif isinstance(spec, str):
        obj = _keras_loss_class(spec)
        if obj is None:
            raise LoadError(
                f"Unknown loss {spec!r}. Use a Keras loss name such as sparse_categorical_crossentropy, "
                "categorical_crossentropy or categorical_focal_crossentropy, a Keras loss class name, or a custom "
                "function as module:function or path/to/file.py:function."
            )
    else:
        obj = spec
    if inspect.isclass(obj) and issubclass(obj, keras.losses.Loss):
        kwargs = dict(args)
        params = inspect.signature(obj.__init__).parameters
        if "from_logits" in params and "from_logits" not in kwargs and outputs in ("probabilities", "logits"):
            kwargs["from_logits"] = outputs == "logits"
        try:
            return obj(**kwargs)
        except TypeError as e:
            accepted = ", ".join(p for p in params if p not in ("self", "kwargs"))
            raise KpipeError(
                f"The arguments do not fit the loss {obj.__name__}: {e}. It accepts: {accepted}. "
                f"Received: loss_args={args!r}"
            ) from None
    if isinstance(obj, keras.losses.Loss):
        return obj
    if not callable(obj):
        raise LoadError(f"The loss {spec!r} is a {type(obj).__name__}, not a function or a keras.losses.Loss class.")
    fn = obj
    if args:
        fn = functools.update_wrapper(functools.partial(obj, **args), obj)
    return FunctionLoss(fn, spec=text_spec)


def label_mode_for_loss(loss: Any) -> str:
    """The label mode a loss expects.

    ``"int"`` for sparse losses (``sparse_*``), ``"binary"`` for binary ones
    (``binary_*``, hinge), ``"categorical"`` (one-hot) for the rest, custom
    functions included, unless the function (or class) declares an attribute
    ``label_mode``. ``kpipe train --label-mode`` overrides this.

    Args:
        loss: A loss name, ``"module:function"`` spec, callable or `keras.losses.Loss`.

    Returns:
        ``"int"``, ``"categorical"`` or ``"binary"``.
    """
    declared = _declared_label_mode(loss)
    if declared is not None:
        return declared
    return _expected_label_mode(loss) or "categorical"


def _declared_label_mode(loss: Any) -> str | None:
    obj = loss
    if isinstance(loss, str) and is_object_spec(loss):
        obj = load_object(loss, what="loss")
    if isinstance(obj, FunctionLoss):
        obj = obj.fn
    declared = getattr(obj, "label_mode", None)
    return declared if declared in _LABEL_MODE_HELP else None


def _expected_label_mode(loss: Any) -> str | None:
    """The label mode a well-known Keras loss needs, or `None` when any may do (or the loss is custom)."""
    if isinstance(loss, str) and not is_object_spec(loss):
        cls = _keras_loss_class(loss)
        name = _snake_case(cls.__name__) if cls is not None else loss
    elif isinstance(loss, FunctionLoss):
        name = getattr(loss.fn, "__name__", "")
    elif isinstance(loss, keras.losses.Loss):
        name = loss.name
    elif inspect.isclass(loss) and issubclass(loss, keras.losses.Loss):
        name = _snake_case(loss.__name__)
    else:
        name = getattr(loss, "__name__", "")
    if name in _INT_LOSSES or name.startswith("sparse_"):
        return "int"
    if name in _BINARY_LOSSES or name.startswith("binary_"):
        return "binary"
    if name in _CATEGORICAL_LOSSES:
        return "categorical"
    return None


def known_label_mode(loss: Any) -> str | None:
    """The label mode a loss declares (``fn.label_mode``) or a well-known Keras loss needs; `None` if unknown.

    `None` means "try it": `kpipe.training.preflight.choose_label_mode` runs
    the loss on one batch with one-hot, then integer labels.
    """
    return _declared_label_mode(loss) or _expected_label_mode(loss)


# ----------------------------------------------------------------- checks
def _from_logits(loss: keras.losses.Loss) -> bool | None:
    try:
        value = loss.get_config().get("from_logits")
    except Exception:
        return None
    return value if isinstance(value, bool) else None


def _label_mode_mismatch(loss: Any, name: str, y_arr: np.ndarray, label_mode: str | None) -> str:
    """The label mode of ``y_arr``; raises if a well-known loss needs another."""
    expected = _expected_label_mode(loss)
    actual = label_mode
    if actual is None:
        actual = "categorical" if y_arr.ndim == 2 and y_arr.shape[-1] > 1 else "int"
    if expected is not None and expected != actual:
        what = {"int": "a sparse loss", "categorical": "a one-hot loss", "binary": "a binary loss"}[expected]
        alternative = {
            "int": "or a one-hot loss such as categorical_crossentropy",
            "categorical": "or a sparse loss such as sparse_categorical_crossentropy",
            "binary": "or categorical_crossentropy / sparse_categorical_crossentropy",
        }[expected]
        raise LossCheckError(
            f"The loss `{name}` is {what}: it needs {_LABEL_MODE_HELP[expected]}, but the labels are "
            f"{_LABEL_MODE_HELP.get(actual, actual)} (shape {tuple(y_arr.shape)}). Use label_mode={expected!r} "
            f"(`--label-mode {expected}`), {alternative}. Received: loss={name!r}, label_mode={actual!r}"
        )
    return actual


def _check_model_fits(loss: keras.losses.Loss, model: keras.Model, name: str, y_arr: np.ndarray, y_pred: Any,
                      label_mode: str) -> None:
    outputs = model_outputs(model)
    from_logits = _from_logits(loss)
    if from_logits is not None and outputs is not None and from_logits != (outputs == "logits"):
        raise LossCheckError(
            f"The loss `{name}` has from_logits={from_logits}, but the model outputs {outputs} "
            f"(its last layer {'has a softmax/sigmoid activation' if outputs == 'probabilities' else 'is linear'}). "
            f"Set from_logits={outputs == 'logits'} in `loss_args` (or leave it out: kpipe then sets it from the "
            f"model). Received: loss={name!r}, from_logits={from_logits}"
        )
    if label_mode == "binary" and y_pred.shape[-1] != 1:
        raise LossCheckError(
            f"Binary labels (shape {tuple(y_arr.shape)}) need a model with one sigmoid output, but the model outputs "
            f"shape {tuple(y_pred.shape)}. Use label_mode='int' with sparse_categorical_crossentropy, or a model "
            f"ending in Dense(1, activation='sigmoid'). Received: loss={name!r}, label_mode='binary'"
        )


def _per_sample(loss: keras.losses.Loss, name: str, y: Any, y_pred: Any, y_arr: np.ndarray) -> Any:
    """``loss.call`` on the tensors `keras.losses.Loss.__call__` makes (both cast to ``loss.dtype``)."""
    try:
        y_true_t = keras.ops.convert_to_tensor(y, dtype=loss.dtype)
        y_pred_t = keras.ops.convert_to_tensor(y_pred, dtype=loss.dtype)
        raw = loss.call(y_true_t, y_pred_t)
    except Exception as e:
        raise LossCheckError(
            f"The loss `{name}` failed on the first batch (y_true shape {tuple(y_arr.shape)}, cast to "
            f"{loss.dtype} as Keras does; y_pred shape {tuple(y_pred.shape)}): {type(e).__name__}: {e}. If it "
            "expects one-hot labels use `--label-mode categorical`; class indices: `--label-mode int`."
        ) from e
    if raw is None or not hasattr(raw, "dtype"):
        raise LossCheckError(
            f"The loss `{name}` must return a float tensor of shape (batch,) or (); it returned "
            f"{type(raw).__name__}. Received: {raw!r:.80}"
        )
    return raw


def check_loss(loss: Any, model: keras.Model, batch: tuple, *, label_mode: str | None) -> float:
    """Run ``loss`` on one batch as Keras will, and fail early with a message that says what to do.

    The loss is called exactly as `fit` calls it: `keras.losses.Loss.__call__`
    (``y_true`` and ``y_pred`` cast to the loss's dtype, then reduced with
    the sample weights). Checks, in order: the labels fit a well-known loss (a
    sparse loss needs ``label_mode="int"``...); ``from_logits`` agrees with
    the model's last activation (`model_outputs`); the loss runs; its
    unreduced value (``loss.call`` on the same casts) is a float tensor of
    shape ``(batch,)`` or ``()`` (a loss returning ``y_pred`` itself, shape
    ``(batch, num_classes)``, is refused); the reduced value is finite.

    Args:
        loss: The loss (`build_loss`); a plain function is wrapped in `FunctionLoss`.
        model: The model, called once on the batch with ``training=False``.
        batch: ``(x, y)`` or ``(x, y, sample_weight)`` as the generator yields it.
        label_mode: The labels' mode (``"int"``, ``"categorical"``, ``"binary"``).

    Returns:
        The reduced loss on the batch (float).

    Raises:
        LossCheckError: On any of the problems above; the message names the loss.
    """
    if not isinstance(loss, keras.losses.Loss):
        loss = FunctionLoss(loss)
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(tuple(batch))
    name = loss_name(loss)
    y_arr = np.asarray(y)
    label_mode = _label_mode_mismatch(loss, name, y_arr, label_mode)
    y_pred = model(x, training=False)
    _check_model_fits(loss, model, name, y_arr, y_pred, label_mode)
    raw = _per_sample(loss, name, y, y_pred, y_arr)
    dtype = keras.backend.standardize_dtype(raw.dtype)
    if not dtype.startswith(("float", "bfloat")):
        raise LossCheckError(
            f"The loss `{name}` must return floats; it returned dtype {dtype}. Cast with "
            f"keras.ops.cast(loss, 'float32') (an integer loss has no gradient). Received: dtype={dtype}"
        )
    shape, batch_size = tuple(raw.shape), int(y_pred.shape[0])
    if shape not in ((), (batch_size,)):
        raise LossCheckError(
            f"The loss `{name}` must return one value per sample, shape ({batch_size},), or a scalar; it returned "
            f"shape {shape} for a batch of {batch_size}. Reduce over the class axis (e.g. "
            f"keras.ops.mean(..., axis=-1) or keras.ops.sum(..., axis=-1)). Received: shape={shape}"
        )
    value = float(np.asarray(keras.ops.convert_to_numpy(loss(y, y_pred, sample_weight=sample_weight))))
    if not math.isfinite(value):
        raise LossCheckError(
            f"The loss `{name}` returned NaN or infinity on the first batch (y_true shape {tuple(y_arr.shape)}, "
            f"y_pred in [{float(np.min(y_pred)):.3g}, {float(np.max(y_pred)):.3g}]). Check the loss for log(0) or "
            f"0/0 (clip y_pred with keras.ops.clip), and the data for NaN. Received: loss={name!r}"
        )
    return value
