"""``kpipe train``: fit a model on a prepared dataset and write a run folder."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kpipe._io import atomic_save, atomic_write_bytes, atomic_write_json
from kpipe.errors import KpipeError, kpipe_error_in
from kpipe.generator import DataGenerator, EpochSync
from kpipe.manifest import Manifest, load_manifest
from kpipe.training.data import make_generators
from kpipe.training.losses import build_loss, label_mode_for_loss
from kpipe.training.models import build_model
from kpipe.training.step import KpipeModel

LOOPS = ("fit", "step", "tape")
"""The training loops of `train` (``TrainConfig.loop``)."""


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
        loss_args: Arguments of a Keras (or custom) loss class, a dict or a
            JSON object, e.g. ``{"gamma": 3.0}`` (see `build_loss`).
        loop: ``"fit"`` (`model.fit`), ``"step"`` (`KpipeModel`, a custom
            `train_step` under `fit`) or ``"tape"`` (`TapeLoop`, an explicit
            `tf.GradientTape` loop).
        step_model: With ``loop="step"``: a `KpipeModel` subclass
            ``module:Class`` / ``path.py:Class``. Defaults to `KpipeModel`.
        clip_norm: Clip gradients by global norm (`None`: no clipping).
        accumulation_steps: Average the gradients of this many batches per
            optimizer update (1: none).
        log_every: Append the training loss to ``steps.csv`` every this many
            steps (0: never); the tape loop logs each step's own loss.
        monitor: Logged value that picks the best model and drives early
            stopping, e.g. ``"val_loss"`` (minimized) or ``"val_accuracy"``
            (maximized).
        patience: Stop after this many epochs without improvement of
            ``monitor`` (`None` or 0: never).
        tensorboard: Write TensorBoard logs to ``<run>/tensorboard``. `None`
            (default): when the ``tensorboard`` package is installed (TensorFlow
            does not install it; ``pip install tensorboard``).
        mixed_precision: Train with the ``mixed_float16`` policy (with loss scaling).
        distribute: ``"auto"``, ``"none"`` or ``"mirrored"`` (see `get_strategy`).
        resume: A run folder to continue from its last checkpoint.
        out: The run folder (`train(out=...)` overrides it).
        overwrite: Replace ``out`` if it exists and is not empty (otherwise
            that is an error: a finished run is never replaced silently).
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
    # --- training loops, losses and the run folder (issue 5)
    loss_args: dict[str, Any] | str | None = None  # Keras loss class arguments (dict or JSON object)
    loop: str = "fit"  # fit | step | tape
    step_model: str | None = None  # KpipeModel subclass module:Class / path.py:Class (loop="step")
    clip_norm: float | None = None  # clip gradients by global norm
    accumulation_steps: int = 1  # average the gradients of k batches per update
    log_every: int = 0  # steps between two rows of steps.csv (0: no steps.csv)
    monitor: str = "val_loss"  # best model and early stopping
    patience: int | None = None  # early stopping after this many epochs without improvement
    tensorboard: bool | None = None  # TensorBoard logs in <run>/tensorboard (None: if tensorboard is installed)
    mixed_precision: bool = False  # mixed_float16 policy with loss scaling
    distribute: str = "auto"  # auto | none | mirrored (kpipe.training.distribute)
    resume: str | None = None  # run folder to continue
    out: str | None = None  # run folder
    overwrite: bool = False  # replace an existing, non-empty run folder
    # --- sampling and weights (issue 4); passed to the train generator by training/data.py
    sampling: str = "shuffle"  # shuffle | balanced | bootstrap | sequential (kpipe.sampling)
    balance: str | None = None  # balanced: undersample | oversample; bootstrap: none | stratified | balanced
    samples_per_epoch: int | None = None  # epoch size for balanced / bootstrap (default: from `balance`)
    target_distribution: dict[str, float] | str | None = None  # balanced: class -> share (or JSON)
    class_weight: str | dict[str, float] | None = None  # "balanced", class -> weight, or JSON
    condition_weights: dict[str, float] | str | None = None  # class -> factor, or JSON
    use_sample_weights: bool = False  # multiply by the manifest's per-sample weights

    @classmethod
    def from_options(cls, options: dict[str, Any], *, explicit: set[str] | None = None,
                     config_file: str | os.PathLike | None = None) -> TrainConfig:
        """Build from CLI options, a configuration file and a resumed run.

        Precedence, lowest first: the defaults, the ``config.json`` of the run
        named by ``options["resume"]``, ``config_file`` (TOML or JSON, one key
        per option, see `kpipe.training.config`), the options in ``explicit``.

        Args:
            options: ``{field: value}``; keys that are not fields are ignored,
                `None` values mean "not given".
            explicit: Options given on the command line. `None`: all
                non-`None` options count as given.
            config_file: Path of a ``--config`` file.

        Returns:
            The `TrainConfig`.

        Raises:
            KpipeError: On an unreadable file, an unknown key or an invalid value.
        """
        from kpipe.training.config import layered_options

        resume = options.get("resume")
        if resume is None and config_file is not None:
            from kpipe.training.config import load_config_file

            resume = load_config_file(config_file, {f.name for f in dataclasses.fields(cls)}).get("resume")
        return cls(**layered_options(cls, options, explicit=explicit, config_file=config_file, resume=resume))

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "workers", "max_queue_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise KpipeError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise KpipeError(f"`learning_rate` must be a positive number. Received: learning_rate={self.learning_rate!r}")
        self._check_loop_options()

    def _check_loop_options(self) -> None:
        """Validate the issue-5 fields (loops, monitoring, precision)."""
        if self.loop not in LOOPS:
            raise KpipeError(f"`loop` must be one of {', '.join(LOOPS)}. Received: loop={self.loop!r}")
        if self.step_model not in (None, "", "default") and self.loop != "step":
            raise KpipeError(
                f"`step_model` is used by the step loop only. Add --loop step, or drop --step-model. "
                f"Received: loop={self.loop!r}, step_model={self.step_model!r}"
            )
        if self.clip_norm is not None and not (isinstance(self.clip_norm, (int, float)) and self.clip_norm > 0):
            raise KpipeError(f"`clip_norm` must be a positive number. Received: clip_norm={self.clip_norm!r}")
        for name, low in (("accumulation_steps", 1), ("log_every", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise KpipeError(f"`{name}` must be an integer >= {low}. Received: {name}={value!r}")
        if self.patience is not None and (isinstance(self.patience, bool) or not isinstance(self.patience, int)
                                          or self.patience < 0):
            raise KpipeError(f"`patience` must be an integer >= 0. Received: patience={self.patience!r}")
        if not isinstance(self.monitor, str) or not self.monitor:
            raise KpipeError(f"`monitor` must name a logged value such as val_loss. Received: monitor={self.monitor!r}")
        if self.distribute not in ("auto", "none", "mirrored"):
            raise KpipeError(
                f"`distribute` must be one of auto, none, mirrored. Received: distribute={self.distribute!r}"
            )
        from kpipe.training.losses import parse_loss_args

        self.loss_args = parse_loss_args(self.loss_args) or None


@dataclasses.dataclass
class TrainResult:
    """What `train` produced: the run folder, the model, history and test metrics."""

    run_dir: Path
    model: keras.Model
    history: dict[str, list[float]]
    metrics: dict[str, Any]
    seconds: float
    loop: str = "fit"

    def summary(self) -> str:
        """One line for people."""
        m = self.metrics
        part = m.get("partition", "test")
        note = "" if part == "test" else " (no test partition)"
        return (
            f"{part.capitalize()} accuracy{note}: {m['accuracy']:.4f} (loss {m['loss']:.4f}, "
            f"{m['num_samples']} samples) in {self.seconds:.0f}s -> {self.run_dir}"
        )


class TrainingInterrupted(KpipeError, KeyboardInterrupt):
    """Training stopped by Ctrl-C (or a callback raising `KeyboardInterrupt`); the message says how to resume."""


def default_run_dir(manifest: Manifest) -> Path:
    """``<manifest folder>/runs/<UTC time>``, unique."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = manifest.root.parent if manifest.path is None else manifest.path.parent
    run = base / "runs" / stamp
    while run.exists():
        run = base / "runs" / f"{stamp}-{uuid.uuid4().hex[:4]}"
    return run


def _make_optimizer(name: str, learning_rate: float, **options: Any) -> keras.optimizers.Optimizer:
    """A Keras optimizer by name; ``options`` (``global_clipnorm``, ``gradient_accumulation_steps``) when set."""
    config = {"learning_rate": learning_rate} | {k: v for k, v in options.items() if v not in (None, 1)}
    try:
        return keras.optimizers.get({"class_name": name, "config": config})
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


def monitor_mode(monitor: str) -> str:
    """``"min"`` for loss- and error-like names (``val_loss``, ``mse``...), ``"max"`` otherwise (accuracy, AUC...)."""
    base = monitor.removeprefix("val_")
    lower = base.lower()
    if "loss" in lower or "error" in lower or "crossentropy" in lower or lower in ("mse", "mae", "mape", "msle"):
        return "min"
    return "max"


def _plain_model(net: keras.Model) -> keras.Model:
    """A plain functional model over the layers of ``net`` (what ``model.keras`` holds).

    `KpipeModel` subclasses and other functional subclasses become a
    `keras.Model`, so that ``model.keras`` loads without their code; a model
    without functional inputs (subclassed) is returned as it is.
    """
    try:
        inputs, outputs = net.inputs, net.outputs
    except (AttributeError, ValueError):
        return net
    if not inputs or not outputs:
        return net
    single = lambda t: t[0] if isinstance(t, (list, tuple)) and len(t) == 1 else t  # noqa: E731
    return keras.Model(single(inputs), single(outputs), name=net.name)


def _use_tensorboard(setting: bool | None) -> bool:
    """Whether to add the TensorBoard callback: ``setting``, or (`None`) whether tensorboard is installed."""
    import importlib.util

    installed = importlib.util.find_spec("tensorboard") is not None
    if setting and not installed:
        raise KpipeError("TensorBoard logs need the tensorboard package: `pip install tensorboard`, "
                         "or run without --tensorboard. Received: tensorboard=True")
    return installed if setting is None else bool(setting)


def _trim_logs(run_dir: Path, *, epochs: int, steps: int) -> None:
    """Drop rows of ``log.csv`` / ``steps.csv`` written after the checkpoint (an interrupt between writes)."""
    for name, column, limit in (("log.csv", 0, epochs - 1), ("steps.csv", 0, steps)):
        path = run_dir / name
        if not path.is_file():
            continue
        lines = path.read_text().splitlines(keepends=True)
        kept = lines[:1] + [line for line in lines[1:] if line.split(",")[column].strip().isdigit()
                            and int(line.split(",")[column]) <= limit]
        if len(kept) != len(lines):
            atomic_write_bytes(path, "".join(kept).encode("utf-8"))


def _set_generator_position(gen: Any, state: dict[str, Any] | None, epoch: int) -> None:
    """Put the train generator at ``epoch`` (its sampler position), from its saved state when it has one."""
    if state and hasattr(gen, "load_state_dict"):
        gen.load_state_dict(dict(state) | {"epoch": epoch})
    elif hasattr(gen, "epoch"):
        gen.epoch = epoch


def _effective_config(config: TrainConfig, *, manifest: Manifest, loss_label: str, resolved: dict[str, Any]
                      ) -> dict[str, Any]:
    """The run's ``config.json``: every option (usable again as ``--config``) plus what was resolved."""
    from kpipe import __version__

    values = dataclasses.asdict(config) | {"loss": loss_label}
    values.pop("resume", None)
    values.pop("out", None)
    values.pop("overwrite", None)
    return values | {"manifest": str(manifest.path), "dataset_fingerprint": dataset_fingerprint(manifest),
                     "kpipe_version": __version__, "resolved": resolved}


def dataset_fingerprint(manifest: Manifest) -> str:
    """sha256 of what a run's batches depend on: classes, labels, partition, sample shape and dtype.

    Two manifests with the same fingerprint serve the same batches (a copied dataset is the same
    dataset; a re-split one is not), so `--resume` compares fingerprints, not paths.
    """
    import hashlib

    key = {"classes": manifest.classes, "labels": manifest.labels, "partition": manifest.partition,
           "shape": list(manifest.sample_shape), "dtype": manifest.sample_dtype}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()


def _check_resume_manifest(run_dir: Path, manifest: Manifest) -> None:
    """Refuse to resume a run on another dataset than the one it was trained on."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return
    previous, fingerprint = saved.get("manifest"), saved.get("dataset_fingerprint")
    if fingerprint is not None:
        differs = fingerprint != dataset_fingerprint(manifest)
    else:
        differs = bool(previous) and manifest.path is not None and \
            Path(previous).resolve() != Path(manifest.path).resolve()
    if differs:
        raise KpipeError(
            f"Run {run_dir} was trained on {previous}, whose classes, labels or partition differ from "
            f"{manifest.path}; resuming it on another dataset would mix the two. Run `kpipe train {previous} --resume {run_dir}`, or start a new run."
        )


def _check_replaceable_run(run_dir: Path, manifest: Manifest) -> None:
    """`--overwrite` replaces a kpipe run folder, and nothing else: never the dataset or a folder above it."""
    target = run_dir.resolve()
    protected = [Path.cwd().resolve()]
    if manifest.path is not None:
        protected += [Path(manifest.path).resolve().parent, manifest.root.resolve()]
    for p in protected:
        if target == p or target in p.parents:
            raise KpipeError(
                f"--overwrite would delete {run_dir}, which holds {p}. Choose another --out for the run."
            )
    if not (run_dir.is_dir() and ((run_dir / "config.json").is_file() or (run_dir / "checkpoint").is_dir())):
        raise KpipeError(
            f"{run_dir} is not a kpipe run folder (no config.json or checkpoint/), so --overwrite will not "
            "delete it. Choose another --out."
        )


def _check_output_size(net: keras.Model, num_classes: int, label_mode: str, x: np.ndarray) -> None:
    """The model must have one output with one unit per class (one unit for binary labels).

    ``x`` (one sample, batched) is run through a model whose output shape is not known yet
    (a `keras.Sequential` without an `Input`).
    """
    try:
        shape = net.output_shape
    except (AttributeError, ValueError):
        y = net(x, training=False)
        shape = [tuple(t.shape) for t in y] if isinstance(y, (list, tuple, dict)) else tuple(y.shape)
    if isinstance(shape, (list, dict)):
        raise KpipeError(
            f"The model has {len(shape)} outputs; kpipe trains single-output classifiers. Return a model "
            "with one output of shape (batch, num_classes)."
        )
    if not (isinstance(shape, tuple) and shape and isinstance(shape[-1], int)):
        return  # unknown: the loss check on one batch decides
    expected = 1 if label_mode == "binary" else num_classes
    if shape[-1] != expected and not (label_mode == "binary" and shape[-1] == 2):
        raise KpipeError(
            f"The model outputs {shape[-1]} values per sample, but this dataset has {num_classes} classes "
            f"(label_mode={label_mode!r} needs {expected}). End the model with Dense({expected}). "
            f"Received: output_shape={shape}"
        )


def _check_monitor(config: TrainConfig, *, has_validation: bool) -> None:
    """``monitor`` must be a value the run logs (a custom step model may log more: not checked)."""
    if config.step_model is not None:
        return
    names = ["loss", "accuracy"] + (["gradient_norm"] if config.loop == "step" and config.clip_norm else [])
    if has_validation:
        names += [f"val_{n}" for n in ("loss", "accuracy")]
    if config.monitor not in names and config.monitor.removeprefix("val_") not in names:
        raise KpipeError(
            f"`monitor` must be a value the run logs: {', '.join(names)}. Received: monitor={config.monitor!r}"
        )


def train(
    manifest: Manifest | str | os.PathLike,
    config: TrainConfig | None = None,
    *,
    out: str | os.PathLike | None = None,
    model: keras.Model | Callable[..., keras.Model] | None = None,
    loss: Any = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
    resume: str | os.PathLike | None = None,
    strategy: Any = None,
) -> TrainResult:
    """Train on the ``train`` partition, validate each epoch, evaluate on ``test``, write a run folder.

    The loop is ``config.loop``: ``"fit"`` (`model.fit`), ``"step"``
    (`KpipeModel`: a `train_step` written out, under `fit`) or ``"tape"``
    (`TapeLoop`: an explicit `tf.GradientTape` loop). All three read the same
    generators (with sample weights when configured), use the same loss and
    callbacks and write the same run folder:

    * ``model.keras``: the best model by ``config.monitor`` (the last one
      without validation data), a plain functional model;
    * ``checkpoint/``: ``best.weights.h5``, ``last.weights.h5`` (with the
      optimizer state) and ``state.json``, for ``resume``;
    * ``history.json`` (per-epoch values), ``log.csv`` (`keras.callbacks.CSVLogger`),
      ``tensorboard/``, ``steps.csv`` (with ``log_every``);
    * ``metrics.json``: test loss, accuracy, per-class precision / recall / F1
      (``sklearn.metrics.classification_report``), confusion matrix;
    * ``config.json``: every option (usable as ``--config``) and the resolved values;
    * ``curves.png`` (loss and metrics per epoch, train vs validation) and
      ``confusion_matrix.png``.

    Args:
        manifest: A `Manifest` or the path of ``manifest.json``.
        config: A `TrainConfig`; defaults to ``TrainConfig()``.
        out: Run folder; defaults to ``config.out``, then
            ``<manifest folder>/runs/<UTC time>``.
        model: A `keras.Model` or factory, overriding ``config.model``.
        loss: A loss (name, callable, `keras.losses.Loss`), overriding ``config.loss``.
        callbacks: Extra Keras callbacks, called after kpipe's (all loops).
        resume: A run folder to continue from its last checkpoint (weights,
            optimizer state, epoch, sampler position, best value, early-stopping
            counter); defaults to ``config.resume``. Pass the run's own
            configuration (`TrainConfig.from_options` with ``resume`` reads it).
        strategy: A `tf.distribute.Strategy`, overriding ``config.distribute``.

    Returns:
        A `TrainResult`.

    Raises:
        ManifestError: If the manifest cannot be read.
        LoadError: If the model factory, the loss or the step model cannot be loaded.
        LossCheckError: If the loss does not fit the labels or the model (checked on one batch).
        TrainingInterrupted: On Ctrl-C; the message says how to resume.
        KpipeError: On an invalid configuration, or nothing left to resume.

    Example:
        >>> result = train("prepared/manifest.json", TrainConfig(epochs=5, loop="tape"))
        >>> print(result.summary())
    """
    from kpipe.training.artifacts import plot_confusion_matrix, plot_history
    from kpipe.training.callbacks import (
        BEST_WEIGHTS,
        CHECKPOINT_DIR,
        BestCheckpoint,
        ResumableEarlyStopping,
        RunCheckpoint,
        StepLossLogger,
        load_checkpoint_state,
        restore_checkpoint,
    )
    from kpipe.training.distribute import dtype_policy, get_strategy, output_dtype_warning
    from kpipe.training.losses import check_loss, loss_name, model_outputs
    from kpipe.training.step import load_step_model_class, wrap_model
    from kpipe.training.tape import TapeLoop

    started = time.perf_counter()
    config = config or TrainConfig()
    manifest = load_manifest(manifest)
    resume = resume if resume is not None else config.resume
    state: dict[str, Any] | None = None
    if resume is not None:
        run_dir = Path(resume)
        out = out if out is not None else config.out
        if out is not None and Path(out).resolve() != run_dir.resolve():
            raise KpipeError(f"--resume continues the run in its own folder; drop --out. "
                             f"Received: resume={str(resume)!r}, out={str(out)!r}")
        state = load_checkpoint_state(run_dir)
        _check_resume_manifest(run_dir, manifest)
        if state.get("stopped") or state["next_epoch"] >= config.epochs:
            why = "stopped early" if state.get("stopped") else f"trained {state['next_epoch']} of {config.epochs} epochs"
            raise KpipeError(
                f"Nothing to resume: the run {run_dir} {why}. Pass a larger --epochs to train further. "
                f"Received: epochs={config.epochs}"
            )
    else:
        target = out if out is not None else config.out
        run_dir = Path(target) if target is not None else default_run_dir(manifest)
        if run_dir.is_file() or (run_dir.is_dir() and any(run_dir.iterdir())):
            if not config.overwrite:
                raise KpipeError(
                    f"Run folder {run_dir} exists already. Pass --overwrite to replace it, "
                    f"--resume {run_dir} to continue it, or choose another --out."
                )
            _check_replaceable_run(run_dir, manifest)
    initial_epoch = int(state["next_epoch"]) if state else 0
    keras.utils.set_random_seed(config.seed)

    with dtype_policy(config.mixed_precision) as policy:
        strategy = get_strategy(strategy if strategy is not None else config.distribute)
        loss_spec = loss if loss is not None else config.loss
        label_mode = config.label_mode or label_mode_for_loss(loss_spec)
        rescale = config.rescale
        uint8 = manifest.sample_dtype == "uint8"
        if rescale is None and uint8:
            rescale = 1.0 / 255.0
        train_data, val_data, test_data = make_generators(manifest, config, label_mode=label_mode, rescale=rescale)

        with strategy.scope():
            if isinstance(model, keras.Model):
                net = model
            else:
                spec = model if model is not None else config.model
                extra: dict[str, Any] = {}
                if spec in (None, "default"):
                    extra["normalizer"] = _normalizer(train_data) if (config.rescale is None and not uint8) else None
                    extra["binary"] = label_mode == "binary"
                net = build_model(spec, manifest.sample_shape, manifest.num_classes, **extra)
            if policy == "mixed_float16" and (message := output_dtype_warning(net)):
                warnings.warn(message, stacklevel=2)
            resolved_loss = build_loss(loss_spec, config.loss_args, outputs=model_outputs(net))
            tape_loop = None
            if config.loop == "step":
                cls = load_step_model_class(config.step_model)
                kwargs: dict[str, Any] = {}
                if issubclass(cls, KpipeModel):
                    if config.clip_norm is not None:
                        kwargs["clip_norm"] = config.clip_norm
                    if config.accumulation_steps > 1:
                        kwargs["accumulation_steps"] = config.accumulation_steps
                net = wrap_model(net, cls, **kwargs)
                optimizer = _make_optimizer(config.optimizer, config.learning_rate)
                net.compile(optimizer=optimizer, loss=resolved_loss, metrics=["accuracy"])
                net.optimizer.build(net.trainable_variables)  # its variables exist before train_step is traced
            elif config.loop == "tape":
                optimizer = _make_optimizer(config.optimizer, config.learning_rate,
                                            gradient_accumulation_steps=config.accumulation_steps)
                tape_loop = TapeLoop(net, resolved_loss, optimizer, label_mode=label_mode, clip_norm=config.clip_norm,
                                     mixed_precision=policy == "mixed_float16")
                # compiled too (same optimizer object): evaluation, predict and checkpoints work as for fit
                net.compile(optimizer=tape_loop.optimizer, loss=resolved_loss, metrics=["accuracy"],
                            auto_scale_loss=False)
            else:
                optimizer = _make_optimizer(config.optimizer, config.learning_rate, global_clipnorm=config.clip_norm,
                                            gradient_accumulation_steps=config.accumulation_steps)
                net.compile(optimizer=optimizer, loss=resolved_loss, metrics=["accuracy"])

        first_batch = train_data[0]
        _check_output_size(net, manifest.num_classes, label_mode, first_batch[0][:1])
        check_loss(resolved_loss, net, first_batch, label_mode=label_mode)
        _check_monitor(config, has_validation=val_data is not None)

        if state is None and config.overwrite and run_dir.exists():
            shutil.rmtree(run_dir) if run_dir.is_dir() else run_dir.unlink()
        created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        if state is None:  # a new run in an old folder: drop what a resume or the step log would pick up
            shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
            (run_dir / "steps.csv").unlink(missing_ok=True)
        monitor = config.monitor
        if val_data is None and monitor.startswith("val_"):
            warnings.warn(f"There is no validation partition: monitoring {monitor[4:]!r} instead of {monitor!r}.",
                          stacklevel=2)
            monitor = monitor[4:]
        mode = monitor_mode(monitor)
        label = loss_name(loss_spec) if not isinstance(loss_spec, str) else loss_spec
        resolved = {"label_mode": label_mode, "rescale": rescale, "monitor": monitor, "monitor_mode": mode,
                    "loss": loss_name(resolved_loss), "dtype_policy": policy,
                    "strategy": type(strategy).__name__, "replicas": int(strategy.num_replicas_in_sync)}
        atomic_write_json(run_dir / "config.json",
                          _effective_config(config, manifest=manifest, loss_label=label, resolved=resolved))

        if state is not None:
            restore_checkpoint(net, run_dir, state)
            _set_generator_position(train_data, state.get("sampler"), initial_epoch)
            _trim_logs(run_dir, epochs=initial_epoch, steps=initial_epoch * len(train_data))

        best = BestCheckpoint(run_dir / CHECKPOINT_DIR / BEST_WEIGHTS, monitor=monitor, mode=mode,
                              best=state.get("best") if state else None)
        (run_dir / CHECKPOINT_DIR).mkdir(exist_ok=True)
        # EpochSync keeps the sampler on fit's epoch (resume)
        run_callbacks: list[keras.callbacks.Callback] = [EpochSync(train_data), best]
        early = None
        if config.patience:
            early = ResumableEarlyStopping(monitor=monitor, mode=mode, patience=config.patience,
                                           state=state.get("early_stopping") if state else None)
            run_callbacks.append(early)
        run_callbacks.append(keras.callbacks.CSVLogger(str(run_dir / "log.csv"), append=state is not None))
        if _use_tensorboard(config.tensorboard):
            run_callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard"), write_graph=False))
        verbose = config.verbose
        if config.log_every:
            run_callbacks.append(StepLossLogger(run_dir / "steps.csv", config.log_every,
                                                initial_step=initial_epoch * len(train_data), echo=verbose == 2))
        checkpoint = RunCheckpoint(run_dir, history=state.get("history") if state else None, best=best,
                                   early_stopping=early, generator=train_data)
        run_callbacks.append(checkpoint)
        run_callbacks.extend(callbacks or [])

        try:
            if tape_loop is not None:
                tape_loop.fit(train_data, epochs=config.epochs, initial_epoch=initial_epoch, validation_data=val_data,
                              callbacks=run_callbacks, verbose=verbose, log_every=config.log_every)
            else:
                net.fit(
                    train_data,
                    validation_data=val_data,
                    epochs=config.epochs,
                    initial_epoch=initial_epoch,
                    shuffle=False,  # the generator shuffles samples; Keras' shuffle would only reorder batches
                    callbacks=run_callbacks,
                    verbose=verbose,
                )
        except KeyboardInterrupt:
            done = load_checkpoint_state(run_dir)["next_epoch"] if (run_dir / CHECKPOINT_DIR / "state.json").is_file() \
                else 0
            hint = (f"Resume with: kpipe train {manifest.path} --resume {run_dir}" if done
                    else "No epoch finished, so there is no checkpoint: start the run again.")
            if not done and created:
                shutil.rmtree(run_dir, ignore_errors=True)  # nothing worth keeping
            raise TrainingInterrupted(f"Training interrupted after {done} complete epoch(s). {hint}") from None
        except Exception as e:  # a kpipe error from the generator, wrapped by tf.data
            if created and not (run_dir / CHECKPOINT_DIR / "state.json").is_file():
                shutil.rmtree(run_dir, ignore_errors=True)  # a run that failed before its first epoch ended
            recovered = None if isinstance(e, KpipeError) else kpipe_error_in(str(e))
            if recovered is None:
                raise
            raise recovered from None

        hist = checkpoint.history
        atomic_write_json(run_dir / "history.json", hist)
        best_path = run_dir / CHECKPOINT_DIR / BEST_WEIGHTS
        if best_path.is_file():
            net.load_weights(best_path)
        export = _plain_model(net)
        if export is not net:
            export.compile(optimizer=_make_optimizer(config.optimizer, config.learning_rate), loss=resolved_loss,
                           metrics=["accuracy"])
            export.optimizer.build(export.trainable_variables)  # so that load_model finds the variables it expects
        atomic_save(run_dir / "model.keras", export.save)

        metrics: dict[str, Any] = {"partition": "test"}
        if test_data is not None:
            metrics |= evaluate_on(export, test_data, manifest.classes)
        elif val_data is not None:
            metrics = {"partition": "validation"} | evaluate_on(export, val_data, manifest.classes)
        else:
            train_eval = DataGenerator(manifest, "train", shuffle=False, batch_size=config.batch_size,
                                       label_mode=label_mode, rescale=rescale)
            metrics = {"partition": "train"} | evaluate_on(export, train_eval, manifest.classes)
    seconds = time.perf_counter() - started
    monitored = hist.get(monitor) or []
    metrics |= {"loop": config.loop, "epochs_trained": len(hist.get("loss", [])), "monitor": monitor}
    if monitored:
        pick = int(np.argmin(monitored) if mode == "min" else np.argmax(monitored))
        metrics |= {"best_epoch": pick + 1, "best_" + monitor: float(monitored[pick])}
    metrics["train_seconds"] = round(seconds, 2)
    atomic_write_json(run_dir / "metrics.json", metrics)
    plot_history(hist, run_dir / "curves.png")
    plot_confusion_matrix(metrics["confusion_matrix"], manifest.classes, run_dir / "confusion_matrix.png",
                          title=f"Confusion matrix ({metrics['partition']})")
    return TrainResult(run_dir=run_dir.resolve(), model=export, history=hist, metrics=metrics, seconds=seconds,
                       loop=config.loop)
