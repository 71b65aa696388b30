"""Metrics named by ``--metrics``, in the form that fits the label mode, and the same figures from scikit-learn.

==================  =====================================================================================
name                what it is (``num_classes`` softmax outputs; with ``label_mode="binary"``: class 1)
==================  =====================================================================================
``accuracy``        top-1 accuracy (always logged; the loops pick Keras' form for the label mode)
``auc``             ROC AUC, one-vs-rest per class, unweighted mean over classes (macro); binary: of class 1
``pr_auc``          the same for the precision-recall curve (average precision)
``precision``       macro precision of the top-1 prediction; binary: precision of class 1
``recall``          macro recall (the mean of per-class recalls); binary: recall of class 1
``f1``              macro F1; binary: F1 of class 1
``balanced_accuracy``  mean recall over the classes present in the labels (scikit-learn's balanced accuracy)
==================  =====================================================================================

Why not Keras' own `keras.metrics.Precision` / `Recall` / `AUC` as they are: on softmax outputs they threshold
every class probability at 0.5 and pool all classes (a micro average of one-vs-rest decisions), and `AUC` needs
one-hot labels. `ClassCounts` keeps a confusion matrix of top-1 predictions (the definitions of
`sklearn.metrics.precision_recall_fscore_support` with ``zero_division=0``); `ClassAUC` hands one-hot labels to
`keras.metrics.AUC(multi_label=True)`, which averages per-class AUCs (an approximation over 200 thresholds).

The final evaluation (`scores`) computes the same names exactly with scikit-learn on the predicted
probabilities (``roc_auc_score(average="macro", multi_class="ovr")``, ``average_precision_score``...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from kpipe.training.config import METRIC_NAMES

__all__ = ["METRIC_NAMES", "ClassAUC", "ClassCounts", "build_metrics", "scores"]

_COUNT_KINDS = ("precision", "recall", "f1", "balanced_accuracy")


def _class_indices(y_true: Any, label_mode: str, num_classes: int) -> Any:
    """int32 ``(batch,)`` class indices from labels as the generator encodes them."""
    y_true = keras.ops.convert_to_tensor(y_true)
    if label_mode == "categorical":
        return keras.ops.cast(keras.ops.argmax(y_true, axis=-1), "int32")
    y_true = keras.ops.reshape(y_true, (-1,))
    if label_mode == "binary":
        return keras.ops.cast(y_true > 0.5, "int32")
    return keras.ops.cast(y_true, "int32")


def _probabilities(y_pred: Any, logits: bool) -> Any:
    """float32 ``(batch, num_classes)`` probabilities; one sigmoid unit ``p`` becomes ``(1 - p, p)``."""
    y_pred = keras.ops.cast(keras.ops.convert_to_tensor(y_pred), "float32")
    if y_pred.shape[-1] == 1:
        p = keras.ops.sigmoid(y_pred) if logits else y_pred
        return keras.ops.concatenate([1.0 - p, p], axis=-1)
    return keras.ops.softmax(y_pred, axis=-1) if logits else y_pred


@keras.saving.register_keras_serializable(package="kpipe")
class ClassCounts(keras.metrics.Metric):
    """Precision, recall, F1 or balanced accuracy of top-1 predictions, from a running confusion matrix.

    Args:
        kind: ``"precision"``, ``"recall"``, ``"f1"`` or ``"balanced_accuracy"``.
        num_classes: Number of classes.
        label_mode: How the labels come: ``"int"`` (class indices), ``"categorical"`` (one-hot) or
            ``"binary"`` (0/1, one sigmoid output: precision, recall and F1 are then those of class 1,
            as `sklearn.metrics.precision_score` with ``average="binary"``; otherwise macro averages).
        logits: The model outputs logits (only the argmax / sign is used, so this matters for nothing but
            a single sigmoid unit).
        name: Logged name. Defaults to ``kind``.

    Example:
        >>> m = ClassCounts("f1", num_classes=3, label_mode="int")
        >>> m.update_state([0, 1, 2, 2], [[.9, .1, 0], [.2, .7, .1], [.1, .8, .1], [0, .1, .9]])
        >>> float(m.result())  # per class F1 1, 2/3, 2/3
        0.7777...
    """

    def __init__(self, kind: str, num_classes: int, label_mode: str = "int", logits: bool = False,
                 name: str | None = None, dtype: Any = None) -> None:
        super().__init__(name=name or kind, dtype=dtype)
        if kind not in _COUNT_KINDS:
            raise ValueError(f"`kind` must be one of {', '.join(_COUNT_KINDS)}. Received: kind={kind!r}")
        self.kind, self.num_classes, self.label_mode, self.logits = kind, int(num_classes), label_mode, bool(logits)
        self.matrix = self.add_variable(shape=(self.num_classes, self.num_classes), initializer="zeros",
                                        name="confusion_matrix", dtype="float32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        n = self.num_classes
        true = keras.ops.one_hot(_class_indices(y_true, self.label_mode, n), n, dtype="float32")
        pred = keras.ops.one_hot(keras.ops.argmax(_probabilities(y_pred, self.logits), axis=-1), n, dtype="float32")
        if sample_weight is not None:
            true = true * keras.ops.reshape(keras.ops.cast(sample_weight, "float32"), (-1, 1))
        self.matrix.assign_add(keras.ops.matmul(keras.ops.transpose(true), pred))

    def result(self):
        m = keras.ops.convert_to_tensor(self.matrix)
        tp = keras.ops.diagonal(m)
        predicted, actual = keras.ops.sum(m, axis=0), keras.ops.sum(m, axis=1)
        recall = _ratio(tp, actual)
        if self.kind == "balanced_accuracy":
            present = keras.ops.cast(actual > 0, "float32")
            return keras.ops.sum(recall * present) / keras.ops.maximum(keras.ops.sum(present), 1.0)
        per_class = {"precision": _ratio(tp, predicted), "recall": recall,
                     "f1": _ratio(2.0 * tp, predicted + actual)}[self.kind]
        return per_class[1] if self.label_mode == "binary" else keras.ops.mean(per_class)

    def reset_state(self):
        self.matrix.assign(keras.ops.zeros((self.num_classes, self.num_classes), dtype="float32"))

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"kind": self.kind, "num_classes": self.num_classes,
                                       "label_mode": self.label_mode, "logits": self.logits}


def _ratio(numerator: Any, denominator: Any) -> Any:
    """``numerator / denominator``, 0 where the denominator is 0 (scikit-learn's ``zero_division=0``)."""
    return keras.ops.where(denominator > 0, numerator / keras.ops.maximum(denominator, 1e-12), 0.0)


@keras.saving.register_keras_serializable(package="kpipe")
class ClassAUC(keras.metrics.AUC):
    """`keras.metrics.AUC` fed the way the label mode needs: macro one-vs-rest over classes, or of class 1.

    Args:
        num_classes: Number of classes.
        label_mode: ``"int"``, ``"categorical"`` or ``"binary"`` (one sigmoid output: the AUC of class 1).
        logits: The model outputs logits (a softmax or sigmoid is applied first).
        curve: ``"ROC"`` or ``"PR"``.
        name: Logged name. Defaults to ``"auc"`` (``"pr_auc"`` for the PR curve).
        **kwargs: More `keras.metrics.AUC` arguments (``num_thresholds``...).
    """

    def __init__(self, num_classes: int, label_mode: str = "int", logits: bool = False, curve: str = "ROC",
                 name: str | None = None, **kwargs: Any) -> None:
        binary = label_mode == "binary"
        for key in ("multi_label", "num_labels", "from_logits"):
            kwargs.pop(key, None)  # from get_config: decided here
        super().__init__(curve=curve, name=name or ("auc" if curve == "ROC" else "pr_auc"),
                         multi_label=not binary, num_labels=None if binary else int(num_classes), **kwargs)
        self.num_classes, self.label_mode, self.logits = int(num_classes), label_mode, bool(logits)

    def update_state(self, y_true, y_pred, sample_weight=None):
        probs = _probabilities(y_pred, self.logits)
        indices = _class_indices(y_true, self.label_mode, self.num_classes)
        if self.label_mode == "binary":
            return super().update_state(keras.ops.reshape(indices, (-1, 1)), probs[:, 1:], sample_weight)
        return super().update_state(keras.ops.one_hot(indices, self.num_classes), probs, sample_weight)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"num_classes": self.num_classes, "label_mode": self.label_mode,
                                       "logits": self.logits}


def build_metrics(names: Sequence[str], *, num_classes: int, label_mode: str, logits: bool = False
                  ) -> list[Callable[[], keras.metrics.Metric]]:
    """Factories of the Keras metrics named (``accuracy`` left out: every loop logs it already).

    Factories, not instances: the tape loop makes a train and a validation copy of each.

    Args:
        names: Names from `METRIC_NAMES`.
        num_classes: Number of classes.
        label_mode: The run's label mode.
        logits: The model outputs logits (`kpipe.training.losses.model_outputs`).

    Returns:
        One ``() -> keras.metrics.Metric`` per name, in order.
    """
    factories: list[Callable[[], keras.metrics.Metric]] = []
    for name in names:
        if name in ("auc", "pr_auc"):
            curve = "ROC" if name == "auc" else "PR"
            factories.append(lambda curve=curve: ClassAUC(num_classes, label_mode, logits, curve=curve))
        elif name in _COUNT_KINDS:
            factories.append(lambda kind=name: ClassCounts(kind, num_classes, label_mode, logits))
        elif name != "accuracy":
            raise ValueError(f"Unknown metric {name!r}; the names are {', '.join(METRIC_NAMES)}.")
    return factories


def scores(names: Sequence[str], y_true: np.ndarray, probabilities: np.ndarray, *, binary: bool) -> dict[str, float]:
    """The named metrics on the whole partition, computed exactly by scikit-learn.

    Args:
        names: Names from `METRIC_NAMES`.
        y_true: int ``(n,)`` class indices.
        probabilities: float ``(n, num_classes)`` class probabilities (``(n, 2)`` for one sigmoid output).
        binary: Precision, recall, F1 and AUC of class 1 (``label_mode="binary"``), else macro averages.

    Returns:
        ``{name: value}``; an AUC that is undefined (a class with no sample, or one class only) is `None`.
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, precision_recall_fscore_support

    num_classes = probabilities.shape[1]
    y_pred = np.argmax(probabilities, axis=-1)
    out: dict[str, float | None] = {}
    labels = list(range(num_classes))
    for name in names:
        if name == "accuracy":
            out[name] = float(accuracy_score(y_true, y_pred))
        elif name in ("precision", "recall", "f1"):
            how = {"average": "binary", "pos_label": 1} if binary else {"average": "macro", "labels": labels}
            p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, zero_division=0, **how)
            out[name] = float({"precision": p, "recall": r, "f1": f}[name])
        elif name == "balanced_accuracy":
            out[name] = float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else None
        elif name in ("auc", "pr_auc"):
            out[name] = _auc(name, y_true, probabilities, binary)
    return out


def _auc(name: str, y_true: np.ndarray, probabilities: np.ndarray, binary: bool) -> float | None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    num_classes = probabilities.shape[1]
    present = np.unique(y_true)
    if len(present) < 2 or (not binary and len(present) < num_classes):
        return None  # undefined: a class without a positive (or a negative) sample
    if binary:
        score = roc_auc_score if name == "auc" else average_precision_score
        return float(score(y_true, probabilities[:, 1]))
    one_hot = np.eye(num_classes)[y_true]
    if name == "auc":
        return float(roc_auc_score(one_hot, probabilities, average="macro"))
    return float(average_precision_score(one_hot, probabilities, average="macro"))
