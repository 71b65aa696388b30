"""Evaluation of a trained model on a generator: loss, accuracy, per-class report, confusion matrix.

Labels and predictions come from the very same batches: the generator is read
through `PinnedEpoch`, a view that serves its batches of one epoch and records
each batch's labels as Keras reads it, so a generator that shuffles (or a
transform that changes ``y``) cannot pair a prediction with another sample's
label. Reusable outside `train` (a later ``kpipe evaluate RUN`` builds on it).
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np


class PinnedEpoch(keras.utils.PyDataset):
    """The batches of one epoch of ``data``, as often as Keras reads them, with their labels recorded.

    Keras' ``on_epoch_end`` calls reach this view, not ``data``: ``evaluate``
    and ``predict`` both read the epoch ``data`` is at. The labels of batch
    ``i`` are kept as class indices (one-hot and 0/1 labels are decoded).

    Args:
        data: A `keras.utils.PyDataset` of ``(x, y)`` or ``(x, y, sample_weight)``.
    """

    def __init__(self, data: Any) -> None:
        super().__init__()  # one worker: `data` makes its batches ahead itself
        self.data = data
        self.labels: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Any:
        batch = self.data[index]
        _, y, _ = keras.utils.unpack_x_y_sample_weight(tuple(batch))
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] > 1:
            y = np.argmax(y, axis=-1)
        self.labels[int(index)] = y.reshape(len(y)).astype(np.int64)
        return batch

    def y_true(self) -> np.ndarray:
        """The recorded labels of all batches, in batch order."""
        return np.concatenate([self.labels[i] for i in range(len(self))])


def unusual_sampling(data: Any) -> str | None:
    """Why ``data`` is not a plain evaluation set (it shuffles, balances, bootstraps or weights), or `None`.

    Read through the public generator API: epoch 0 must serve every ID of
    ``data.ids`` once, in order, and the batches must carry no sample weights.
    """
    reasons = []
    if getattr(data, "yields_weights", False):
        reasons.append("weighs its samples (the metrics would be weighted, unlike Keras' evaluate)")
    batch_ids = getattr(data, "batch_ids", None)
    ids = getattr(data, "ids", None)
    if batch_ids is not None and ids is not None:
        served = [i for b in range(len(data)) for i in batch_ids(b, 0)]
        if served != list(ids):
            reasons.append("does not serve each sample once in order (it shuffles, balances or bootstraps)")
    return " and ".join(reasons) or None


def evaluate_on(model: keras.Model, data: Any, classes: list[str], *, warn: bool = True) -> dict[str, Any]:
    """Loss and accuracy of ``model`` on ``data``, with scikit-learn's per-class report.

    Args:
        model: A compiled `keras.Model` (probabilities or logits per class, or
            one sigmoid probability for two classes).
        data: A `kpipe.DataGenerator` (or any `keras.utils.PyDataset` of
            ``(x, y[, sample_weight])`` batches).
        classes: Class names, in index order.
        warn: Warn when ``data`` shuffles, balances, bootstraps or weights
            (see `unusual_sampling`): the figures then describe that sample,
            not the partition. Defaults to `True`.

    Returns:
        ``{"loss", "accuracy", "num_samples", "classification_report",
        "confusion_matrix"}``; the report is ``classification_report(...,
        output_dict=True)`` (precision, recall, F1 and support per class).
    """
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

    why = unusual_sampling(data) if warn else None
    if why:
        warnings.warn(f"The evaluation generator {why}; evaluate on a sequential, unweighted generator "
                      "(DataGenerator(..., shuffle=False)) for the partition's figures.", stacklevel=2)
    pinned = PinnedEpoch(data)
    results = model.evaluate(pinned, verbose=0, return_dict=True)
    probs = np.asarray(model.predict(pinned, verbose=0))
    y_true = pinned.y_true()
    if probs.ndim == 2 and probs.shape[1] == 1:  # binary: a single probability
        y_pred = (probs[:, 0] > 0.5).astype(np.int64)
    else:
        y_pred = np.argmax(probs, axis=-1)
    labels = list(range(len(classes)))
    report = classification_report(y_true, y_pred, labels=labels, target_names=classes,
                                   output_dict=True, zero_division=0)
    return {
        "loss": float(results["loss"]),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "num_samples": int(len(y_true)),
        "classification_report": report,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
