"""``kpipe train``: fit a model on a prepared dataset and write a run folder."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kpipe._io import atomic_write_json
from kpipe.errors import KpipeError
from kpipe.generator import DataGenerator
from kpipe.manifest import Manifest, load_manifest
from kpipe.training.data import make_generators
from kpipe.training.losses import label_mode_for_loss, resolve_loss
from kpipe.training.models import build_model


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run is configured by (written as ``config.json``).

    Attributes:
        model: ``"default"`` or a factory ``module:function`` / ``path.py:function``.
        loss: A Keras loss name or ``module:function`` / ``path.py:function``.
        label_mode: ``"int"``, ``"categorical"``, ``"binary"``, or `None` to
            infer it from the loss.
        optimizer: A Keras optimizer name (``"adam"``, ``"sgd"``, ``"rmsprop"``...).
        learning_rate: Learning rate of the optimizer.
        epochs: Number of epochs.
        batch_size: Samples per batch.
        seed: Seed of weight initialization, shuffling and dropout.
        rescale: Factor applied to ``x``; `None` picks ``1/255`` for uint8
            samples and otherwise adapts a `Normalization` layer on train.
        workers: Threads or processes making batches (`keras.utils.PyDataset`).
        use_multiprocessing: Processes instead of threads.
        max_queue_size: Batches kept ready ahead.
        verbose: Keras verbosity: 0 silent, 1 progress bar, 2 one line per epoch.
    """

    model: str = "default"
    loss: str = "sparse_categorical_crossentropy"
    label_mode: str | None = None
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    epochs: int = 15
    batch_size: int = 32
    seed: int = 0
    rescale: float | None = None
    workers: int = 1
    use_multiprocessing: bool = False
    max_queue_size: int = 10
    verbose: int | str = "auto"

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> TrainConfig:
        """Build from CLI options: keys that are fields are taken, `None` values left at the default."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in options.items() if k in names and v is not None})

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "workers", "max_queue_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise KpipeError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise KpipeError(f"`learning_rate` must be a positive number. Received: learning_rate={self.learning_rate!r}")


@dataclasses.dataclass
class TrainResult:
    """What `train` produced: the run folder, the model, history and test metrics."""

    run_dir: Path
    model: keras.Model
    history: dict[str, list[float]]
    metrics: dict[str, Any]
    seconds: float

    def summary(self) -> str:
        """One line for people."""
        m = self.metrics
        return (
            f"Test accuracy: {m['accuracy']:.4f} (loss {m['loss']:.4f}, {m['num_samples']} samples) "
            f"in {self.seconds:.0f}s -> {self.run_dir}"
        )


def default_run_dir(manifest: Manifest) -> Path:
    """``<manifest folder>/runs/<UTC time>``, unique."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = manifest.root.parent if manifest.path is None else manifest.path.parent
    run = base / "runs" / stamp
    while run.exists():
        run = base / "runs" / f"{stamp}-{uuid.uuid4().hex[:4]}"
    return run


def _make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    try:
        return keras.optimizers.get({"class_name": name, "config": {"learning_rate": learning_rate}})
    except (ValueError, TypeError):
        raise KpipeError(
            f"Unknown optimizer {name!r}. Use a Keras optimizer name such as adam, sgd, rmsprop or adamw."
        ) from None


def _normalizer(train: DataGenerator, max_samples: int = 10_000) -> keras.layers.Normalization:
    """A per-feature `Normalization` layer adapted on (up to) ``max_samples`` training samples."""
    ids = train.ids[:max_samples]
    x = train.store.read_many(ids).astype("float32")
    layer = keras.layers.Normalization(axis=-1)
    layer.adapt(x)
    return layer


def _save_model(model: keras.Model, path: Path) -> None:
    tmp = path.with_name(f"{path.stem}.{uuid.uuid4().hex[:8]}.partial.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def evaluate_on(model: keras.Model, data: DataGenerator, classes: list[str]) -> dict[str, Any]:
    """Loss and accuracy of ``model`` on ``data``, with scikit-learn's per-class report.

    Returns:
        ``{"loss", "accuracy", "num_samples", "classification_report",
        "confusion_matrix"}``; the report is ``classification_report(...,
        output_dict=True)`` (precision, recall, F1 and support per class).
    """
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

    results = model.evaluate(data, verbose=0, return_dict=True)
    probs = model.predict(data, verbose=0)
    order = np.concatenate([data._batch_positions(i) for i in range(len(data))])
    y_true = data.labels[order]
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


def train(
    manifest: Manifest | str | os.PathLike,
    config: TrainConfig | None = None,
    *,
    out: str | os.PathLike | None = None,
    model: keras.Model | Callable[..., keras.Model] | None = None,
    loss: Callable[..., Any] | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> TrainResult:
    """Train on the ``train`` partition, validate each epoch, evaluate on ``test``.

    Writes a run folder: ``model.keras``, ``history.json`` (per-epoch metrics),
    ``metrics.json`` (test loss, accuracy, per-class precision / recall / F1 from
    ``sklearn.metrics.classification_report``, confusion matrix) and
    ``config.json`` (the effective configuration).

    Args:
        manifest: A `Manifest` or the path of ``manifest.json``.
        config: A `TrainConfig`; defaults to ``TrainConfig()``.
        out: Run folder; defaults to ``<manifest folder>/runs/<UTC time>``.
        model: A `keras.Model` or factory, overriding ``config.model``.
        loss: A loss callable, overriding ``config.loss``.
        callbacks: Extra Keras callbacks for `model.fit`.

    Returns:
        A `TrainResult`.

    Raises:
        ManifestError: If the manifest cannot be read.
        LoadError: If the model factory or the loss cannot be loaded.
        KpipeError: On an invalid configuration.

    Example:
        >>> result = train("prepared/manifest.json", TrainConfig(epochs=5))
        >>> print(result.summary())
    """
    started = time.perf_counter()
    config = config or TrainConfig()
    manifest = load_manifest(manifest)
    keras.utils.set_random_seed(config.seed)

    resolved_loss = loss if loss is not None else resolve_loss(config.loss)
    label_mode = config.label_mode or label_mode_for_loss(resolved_loss)
    rescale = config.rescale
    uint8 = manifest.sample_dtype == "uint8"
    if rescale is None and uint8:
        rescale = 1.0 / 255.0
    train_data, val_data, test_data = make_generators(manifest, config, label_mode=label_mode, rescale=rescale)

    if isinstance(model, keras.Model):
        net = model
    else:
        normalizer = _normalizer(train_data) if (config.rescale is None and not uint8) else None
        spec = model if model is not None else config.model
        extra = {"normalizer": normalizer} if spec in (None, "default") else {}
        net = build_model(spec, manifest.sample_shape, manifest.num_classes, **extra)
    # "accuracy" resolves to the sparse / categorical / binary variant from the shapes.
    net.compile(optimizer=_make_optimizer(config.optimizer, config.learning_rate),
                loss=resolved_loss, metrics=["accuracy"])

    run_dir = Path(out) if out is not None else default_run_dir(manifest)
    run_dir.mkdir(parents=True, exist_ok=True)
    effective = dataclasses.asdict(config) | {
        "label_mode": label_mode, "rescale": rescale, "manifest": str(manifest.path),
        "loss": config.loss if loss is None else getattr(loss, "__name__", repr(loss)),
    }
    atomic_write_json(run_dir / "config.json", effective)

    history = net.fit(
        train_data,
        validation_data=val_data,
        epochs=config.epochs,
        shuffle=False,  # the generator shuffles samples; Keras' shuffle would only reorder batches
        callbacks=list(callbacks or []),
        verbose=config.verbose,
    )
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    atomic_write_json(run_dir / "history.json", hist)
    _save_model(net, run_dir / "model.keras")

    metrics: dict[str, Any] = {"partition": "test"}
    if test_data is not None:
        metrics |= evaluate_on(net, test_data, manifest.classes)
    elif val_data is not None:
        metrics = {"partition": "validation"} | evaluate_on(net, val_data, manifest.classes)
    else:
        train_eval = DataGenerator(manifest, "train", shuffle=False, batch_size=config.batch_size,
                                   label_mode=label_mode, rescale=rescale)
        metrics = {"partition": "train"} | evaluate_on(net, train_eval, manifest.classes)
    seconds = time.perf_counter() - started
    metrics["train_seconds"] = round(seconds, 2)
    atomic_write_json(run_dir / "metrics.json", metrics)
    return TrainResult(run_dir=run_dir.resolve(), model=net, history=hist, metrics=metrics, seconds=seconds)


def load_history(run_dir: str | os.PathLike) -> dict[str, list[float]]:
    """Read ``history.json`` of a run folder."""
    return json.loads((Path(run_dir) / "history.json").read_text())
