"""Evaluation of a trained model on a generator: loss, accuracy, per-class report, confusion matrix.

Labels and predictions come from the very same batches: the generator is read
through `PinnedEpoch`, a view that serves its batches of one epoch and records
each batch's labels as Keras reads it, so a generator that shuffles (or a
transform that changes ``y``) cannot pair a prediction with another sample's
label. Reusable outside `train` (a later ``kpipe evaluate RUN`` builds on it).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kpipe.errors import ArgumentError, KpipeError


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


def evaluate_on(model: keras.Model, data: Any, classes: list[str], *, warn: bool = True,
                metrics: tuple[str, ...] | list[str] = (), binary: bool | None = None) -> dict[str, Any]:
    """Loss and accuracy of ``model`` on ``data``, with the figures that matter on imbalanced data.

    Args:
        model: A `keras.Model` (probabilities or logits per class, or one sigmoid probability for two
            classes). Compiled: ``loss`` is its compiled loss; not compiled: ``loss`` is `None`.
        data: A `kpipe.DataGenerator` (or any `keras.utils.PyDataset` of
            ``(x, y[, sample_weight])`` batches).
        classes: Class names, in index order.
        warn: Warn when ``data`` shuffles, balances, bootstraps or weights
            (see `unusual_sampling`): the figures then describe that sample,
            not the partition. Defaults to `True`.
        metrics: More metrics by name (`kpipe.training.metrics.scores`: ``auc``, ``f1``...), computed
            exactly by scikit-learn on the predicted probabilities. Defaults to none.
        binary: Precision / recall / F1 / AUC of class 1 instead of macro averages (``label_mode="binary"``).
            Defaults to: the model has one output unit.

    Returns:
        ``{"loss", "accuracy", "macro_f1", "balanced_accuracy", "worst_class", "num_samples", "metrics",
        "classification_report", "confusion_matrix"}``: ``macro_f1`` is the unweighted mean of the per-class
        F1 (the report's "macro avg"), ``balanced_accuracy`` the mean recall of the classes present
        (`sklearn.metrics.balanced_accuracy_score`), ``worst_class`` ``{"name", "index", "recall"}`` the
        present class of lowest recall; the report is ``classification_report(..., output_dict=True)``.
    """
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

    from kpipe.training.metrics import scores

    why = unusual_sampling(data) if warn else None
    if why:
        warnings.warn(f"The evaluation generator {why}; evaluate on a sequential, unweighted generator "
                      "(DataGenerator(..., shuffle=False)) for the partition's figures.", stacklevel=2)
    pinned = PinnedEpoch(data)
    loss = None
    if getattr(model, "compiled", False) and getattr(model, "loss", None) is not None:
        loss = float(model.evaluate(pinned, verbose=0, return_dict=True)["loss"])
    probs = np.asarray(model.predict(pinned, verbose=0), dtype=np.float64)
    y_true = pinned.y_true()
    binary = probs.ndim == 2 and probs.shape[1] == 1 if binary is None else binary
    if probs.ndim == 2 and probs.shape[1] == 1:  # binary: a single probability
        probs = np.concatenate([1.0 - probs, probs], axis=1)
    y_pred = np.argmax(probs, axis=-1)
    labels = list(range(len(classes)))
    report = classification_report(y_true, y_pred, labels=labels, target_names=classes,
                                   output_dict=True, zero_division=0)
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    return {
        "loss": loss,
        "accuracy": float(accuracy_score(y_true, y_pred)),
        **class_balance(matrix, classes),
        "num_samples": int(len(y_true)),
        "metrics": scores(list(metrics), y_true, probs, binary=binary) if metrics else {},
        "classification_report": report,
        "confusion_matrix": matrix.tolist(),
    }


def class_balance(matrix: Any, classes: list[str]) -> dict[str, Any]:
    """Macro-F1, balanced accuracy and the worst class's recall from a confusion matrix.

    Args:
        matrix: ``C[i, j]`` = samples of true class ``i`` predicted ``j`` (`sklearn.metrics.confusion_matrix`).
        classes: Class names, in index order.

    Returns:
        ``{"macro_f1", "balanced_accuracy", "worst_class"}``: per-class F1 ``2 C[i, i] / (row_i + col_i)``
        (0 when both are 0) averaged over all classes; recall ``C[i, i] / row_i`` averaged over the classes
        present (row_i > 0); ``worst_class`` ``{"name", "index", "recall"}`` (the first of the lowest), or
        `None` when no class is present.
    """
    m = np.asarray(matrix, dtype=np.float64)
    tp, actual, predicted = np.diag(m), m.sum(axis=1), m.sum(axis=0)
    f1 = np.divide(2 * tp, actual + predicted, out=np.zeros_like(tp), where=(actual + predicted) > 0)
    present = np.flatnonzero(actual > 0)
    recall = tp[present] / actual[present]
    worst = None
    if len(present):
        k = int(present[int(np.argmin(recall))])
        worst = {"name": classes[k], "index": k, "recall": float(tp[k] / actual[k])}
    return {"macro_f1": float(f1.mean()) if len(f1) else 0.0,
            "balanced_accuracy": float(recall.mean()) if len(present) else 0.0, "worst_class": worst}


def evaluation_partition(manifest: Any) -> str:
    """The partition a run's final evaluation reads: ``test``, else ``validation``, else ``train``."""
    return next((p for p in ("test", "validation") if manifest.partition.get(p)), "train")


def artifact_names(partition: str, *, default_partition: str, fingerprint: str | None = None) -> tuple[str, str]:
    """``(metrics file, confusion-matrix PNG)`` of an evaluation in a run folder.

    The run's own evaluation (its dataset, ``default_partition``) is ``metrics.json`` /
    ``confusion_matrix.png``; another partition adds ``-<partition>``; another dataset (``fingerprint``, the
    first 8 characters of its `kpipe.training.run_folder.dataset_fingerprint`) adds ``-<fingerprint>`` too.
    """
    suffix = "" if partition == default_partition and fingerprint is None else f"-{partition}"
    suffix += f"-{fingerprint[:8]}" if fingerprint is not None else ""
    return f"metrics{suffix}.json", f"confusion_matrix{suffix}.png"


def evaluate_into_run(run: Any, model: keras.Model, data: Any, manifest: Any, *, partition: str,
                      metrics: tuple[str, ...] | list[str] = (), label_mode: str = "int",
                      facts: dict[str, Any] | None = None, names: tuple[str, str] | None = None
                      ) -> dict[str, Any]:
    """Evaluate ``model`` on ``data`` and write the metrics file and the confusion matrix into the run folder.

    Args:
        run: The `kpipe.training.run_folder.RunFolder`.
        model: The model (``model.keras``).
        data: A sequential, unweighted generator of ``partition``.
        manifest: The dataset's `kpipe.manifest.Manifest`.
        partition: The partition's name.
        metrics: Extra metric names (`kpipe.training.metrics.scores`).
        label_mode: The run's label mode (``"binary"``: class-1 precision / recall / F1 / AUC).
        facts: The training facts to keep with the figures (`kpipe.training.report.training_facts`).
        names: ``(metrics file, PNG)``. Defaults to `artifact_names` of the run's own evaluation.

    Returns:
        What was written to the metrics file.
    """
    from kpipe.training.artifacts import plot_confusion_matrix
    from kpipe.training.run_folder import writing

    names = names or artifact_names(partition, default_partition=partition)
    result = {"partition": partition, "manifest": None if manifest.path is None else str(manifest.path)}
    try:
        result |= evaluate_on(model, data, manifest.classes, metrics=metrics, binary=label_mode == "binary")
    except Exception as e:
        error = getattr(data, "last_error", None)  # what the generator raised, before TensorFlow wrapped it
        if isinstance(e, KpipeError) or not isinstance(error, KpipeError):
            raise
    else:
        error = None
    if error is not None:
        raise error
    result |= facts or {}
    run.write_json(names[0], result)
    with writing(run.path):
        plot_confusion_matrix(result["confusion_matrix"], manifest.classes, run.file(names[1]),
                              title=f"Confusion matrix ({partition}, {result['num_samples']} samples)")
    return result


def _run_facts(run: Any, config: dict[str, Any]) -> dict[str, Any]:
    """The training facts of a run: from its ``metrics.json``, else from ``history.json`` and its checkpoint."""
    import json

    from kpipe.training.report import training_facts

    keys = ("loop", "epochs_trained", "monitor", "best_epoch", "kept_epoch", "stop")
    try:
        previous = json.loads(run.file("metrics.json").read_text())
    except (OSError, ValueError):
        previous = {}
    if isinstance(previous, dict) and "epochs_trained" in previous:
        return {k: v for k, v in previous.items() if k in keys or k.startswith("best_")}
    try:
        history = json.loads(run.file("history.json").read_text())
        state = run.load_state()
    except (OSError, ValueError, KpipeError):
        return {}
    resolved = config.get("resolved") or {}
    monitor = resolved.get("monitor", config.get("monitor", "val_loss"))
    facts = training_facts(history, monitor=monitor, mode=resolved.get("monitor_mode", "min"),
                           epochs=int(config.get("epochs") or 0), patience=config.get("patience"),
                           stopped=bool(state.get("stopped")), kept_best=run.best_weights.is_file())
    return {"loop": config.get("loop")} | facts


@dataclasses.dataclass
class EvaluateResult:
    """What `evaluate_run` wrote: the metrics, and where."""

    run_dir: Path
    metrics: dict[str, Any]
    metrics_file: Path
    figure: Path

    def summary(self) -> str:
        """The evaluation sentence of `kpipe.training.report`, then the files written."""
        from kpipe.training.report import evaluation_sentence

        return f"{evaluation_sentence(self.metrics, fallback_note=False)}\n-> {self.metrics_file}, {self.figure.name}"

    def to_dict(self) -> dict[str, Any]:
        """The metrics file's content plus ``run_dir``, ``metrics_file`` and ``figure`` (``--json``)."""
        return {"run_dir": str(self.run_dir), "metrics_file": str(self.metrics_file),
                "figure": str(self.figure)} | self.metrics


def _compiled_model(run: Any, config: dict[str, Any], loss: str | None) -> keras.Model:
    """``model.keras`` loaded without its compile state, compiled with the run's loss (or ``loss``).

    A loss that names code (``module:function``) is imported only when the user names it again (``loss``);
    otherwise the model is left uncompiled and the loss is not computed (a warning says so).
    """
    from kpipe.training.loading import is_object_spec
    from kpipe.training.losses import build_loss

    path = run.file("model.keras")
    if not path.is_file():
        raise KpipeError(f"The run {run.path} has no model.keras: its training did not finish. Continue it with "
                         f"`kpipe train --resume {run.path}`.")
    model = keras.saving.load_model(path, compile=False)
    spec = loss or config.get("loss")
    if not isinstance(spec, str) or (is_object_spec(spec) and loss is None):
        warnings.warn(f"The run's loss names code ({spec}), which kpipe imports only when you name it: pass "
                      f"--loss {spec} to compute the loss too.", stacklevel=3)
        return model
    outputs = (config.get("resolved") or {}).get("outputs")
    model.compile(loss=build_loss(spec, config.get("loss_args"), outputs=outputs), metrics=["accuracy"])
    return model


def evaluate_run(run_dir: str | os.PathLike, *, manifest: str | os.PathLike | None = None,
                 partition: str | None = None, batch_size: int | None = None, loss: str | None = None
                 ) -> EvaluateResult:
    """Evaluate a run's ``model.keras`` (the kept epoch) on a partition and write its metrics and figure.

    Works for a run whose final evaluation failed (``model.keras`` is written before it). The run's own
    evaluation (test, else validation) rewrites ``metrics.json`` and ``confusion_matrix.png``; another
    partition writes ``metrics-<partition>.json`` and ``confusion_matrix-<partition>.png``; a dataset other
    than the run's (another fingerprint) adds its fingerprint to the names, so nothing of the run is lost.

    Args:
        run_dir: The run folder.
        manifest: The dataset. Defaults to the one the run recorded in ``config.json``.
        partition: ``"test"``, ``"validation"`` or ``"train"``. Defaults to the run's evaluation partition.
        batch_size: Defaults to the run's.
        loss: A loss to compute instead of the run's (needed when the run's loss names code).

    Returns:
        An `EvaluateResult`.

    Raises:
        KpipeError: If the folder is not a run, has no ``model.keras``, the manifest is missing or has other
            classes, or the partition is empty.
    """
    from kpipe._validation import check_positive_int, check_text_choice
    from kpipe.generator import DataGenerator
    from kpipe.manifest import load_manifest
    from kpipe.training.run_folder import RunFolder, dataset_fingerprint

    run = RunFolder(run_dir)
    config = run.read_config()
    if not config:
        raise ArgumentError(f"{run.path} is not a kpipe run folder (it has no config.json). Received: "
                            f"run={str(run_dir)!r}")
    source = manifest if manifest is not None else config.get("manifest")
    if not source:
        raise ArgumentError(f"The run {run.path} does not record its manifest; pass --manifest.")
    if manifest is None and not Path(source).is_file():
        raise ArgumentError(f"The run {run.path} was trained on {source}, which is not there any more (moved or "
                            "deleted); pass the dataset's manifest with --manifest.")
    data_manifest = load_manifest(source)
    _check_classes(run, config, data_manifest)
    own = dataset_fingerprint(data_manifest) == config.get("dataset_fingerprint")
    default = evaluation_partition(data_manifest)
    partition = check_text_choice(partition or default, "partition", ("test", "validation", "train"))
    if not own and config.get("dataset_fingerprint"):
        again = config.get("manifest") and data_manifest.path is not None and \
            Path(config["manifest"]).resolve() == Path(data_manifest.path).resolve()
        what = "changed since the run was trained on it (prepared again?)" if again else \
            "is not the dataset the run was trained on"
        warnings.warn(f"{data_manifest.path} {what}: its labels or partition differ, so its {partition} samples may "
                      "include ones the model trained on, and these metrics may be optimistic.", stacklevel=2)
    if not data_manifest.partition.get(partition):
        raise ArgumentError(f"The {partition} partition of {data_manifest.path} is empty. Choose another "
                            f"--partition. Received: partition={partition!r}")
    batch_size = check_positive_int(batch_size or config.get("batch_size") or 32, "batch_size")
    label_mode = (config.get("resolved") or {}).get("label_mode", "int")
    data = DataGenerator(data_manifest, partition, shuffle=False, batch_size=batch_size, label_mode=label_mode)
    names = artifact_names(partition, default_partition=default,
                           fingerprint=None if own else dataset_fingerprint(data_manifest))
    model = _compiled_model(run, config, loss)
    facts = _run_facts(run, config) if own else {}
    metrics = evaluate_into_run(run, model, data, data_manifest, partition=partition,
                                metrics=tuple(config.get("metrics") or ()), label_mode=label_mode, facts=facts,
                                names=names)
    return EvaluateResult(run.path.resolve(), metrics, run.file(names[0]).resolve(), run.file(names[1]).resolve())


def _check_classes(run: Any, config: dict[str, Any], manifest: Any) -> None:
    classes = (config.get("dataset") or {}).get("classes")
    if classes is not None and list(classes) != list(manifest.classes):
        raise ArgumentError(f"The run {run.path} was trained on the classes {classes}; {manifest.path} has "
                            f"{list(manifest.classes)}. Evaluate on a dataset with the same classes, in the same "
                            "order.")
