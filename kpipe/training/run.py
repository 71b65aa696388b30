"""`train`: a short orchestration over the run folder, pre-flight, the loop table and evaluation."""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

from kpipe._io import atomic_save
from kpipe.errors import KpipeError
from kpipe.generator import DataGenerator
from kpipe.manifest import Manifest, load_manifest
from kpipe.training import distribute, preflight, rendezvous
from kpipe.training.callbacks import RunCheckpoint, monitor_mode, restore_checkpoint, run_callbacks_for
from kpipe.training.config import TrainConfig
from kpipe.training.data import make_generators, probe_generator
from kpipe.training.distribute import dtype_policy, mixed_precision_warning, output_dtype_warning
from kpipe.training.evaluate import evaluate_into_run, evaluation_partition
from kpipe.training.loops import get_loop
from kpipe.training.loops.base import Loop, make_optimizer
from kpipe.training.losses import build_loss, known_label_mode, loss_name
from kpipe.training.metrics import build_metrics
from kpipe.training.models import plain_model, run_model
from kpipe.training.report import run_summary, training_facts
from kpipe.training.run_folder import DISK_FULL, RunFolder, output_error, writing
from kpipe.training.workers import run_folders


@dataclasses.dataclass
class TrainResult:
    """What `train` produced: the run folder, the model, history and evaluation metrics."""

    run_dir: Path
    model: keras.Model
    history: dict[str, list[float]]
    metrics: dict[str, Any]
    seconds: float
    loop: str = "fit"

    def summary(self) -> str:
        """Three lines for people: the evaluation (accuracy, macro-F1, balanced accuracy, the worst class),
        the kept epoch and why training stopped, the run folder (`kpipe.training.report.run_summary`)."""
        return run_summary(self.metrics, self.run_dir, self.seconds)

    def to_dict(self) -> dict[str, Any]:
        """``metrics.json`` plus ``run_dir`` and ``seconds`` (``kpipe train --json``)."""
        return {"run_dir": str(self.run_dir), "seconds": round(self.seconds, 2)} | self.metrics


class TrainingInterrupted(KpipeError, KeyboardInterrupt):
    """Training stopped by Ctrl-C (or a callback raising `KeyboardInterrupt`); the message says how to resume."""


@dataclasses.dataclass
class _Setup:
    """What `_build` made: the loop, the model it trains, the loss, the data and what was resolved."""

    loop: Loop
    model: keras.Model
    loss: keras.losses.Loss
    train: DataGenerator
    validation: DataGenerator | None
    test: DataGenerator | None
    resolved: dict[str, Any]
    strategy: Any


def _build(manifest: Manifest, config: TrainConfig, *, model: Any, loss: Any, strategy: Any, policy: str) -> _Setup:
    """Strategy, model, loss, pre-flight on one batch, generators, and the loop's compiled model."""
    strategy = distribute.run_strategy(config, strategy)
    loss_spec = loss if loss is not None else config.loss
    probe = probe_generator(manifest, config)
    wanted = config.label_mode or known_label_mode(loss_spec)
    with strategy.scope():
        net, outputs, preprocessing = run_model(model if model is not None else config.model, manifest,
                                                rescale=config.rescale, data=probe, binary=wanted == "binary")
        for message in (output_dtype_warning(net), mixed_precision_warning()) if policy == "mixed_float16" else ():
            if message:
                warnings.warn(message, stacklevel=3)
        resolved_loss = build_loss(loss_spec, config.loss_args, outputs=outputs)
    if message := preflight.logits_warning(resolved_loss, outputs):
        warnings.warn(message, stacklevel=3)
    label_mode = preflight.check_model(net, resolved_loss, probe[0], num_classes=manifest.num_classes,
                                       label_mode=wanted)
    train, validation, test = make_generators(manifest, config, label_mode=label_mode,
                                              pad_to_multiple=distribute.pad_to_multiple(strategy))
    metrics = build_metrics(config.metrics, num_classes=manifest.num_classes, label_mode=label_mode,
                            logits=outputs == "logits")
    loop = get_loop(config.loop)(config, label_mode=label_mode, mixed_precision=policy == "mixed_float16",
                                 metrics=metrics)
    with strategy.scope():
        trained = loop.prepare(net, distribute.training_loss(strategy, resolved_loss, train, config))
    monitor = config.monitor
    if validation is None and monitor.startswith("val_"):
        warnings.warn(f"There is no validation partition: monitoring {monitor[4:]!r} instead of {monitor!r}.",
                      stacklevel=3)
        monitor = monitor[4:]
    resolved = {"label_mode": label_mode, "preprocessing": preprocessing, "outputs": outputs, "monitor": monitor,
                "monitor_mode": monitor_mode(monitor), "loss": loss_name(resolved_loss),
                "loss_label": loss_spec if isinstance(loss_spec, str) else loss_name(loss_spec),
                "dtype_policy": policy, "strategy": type(strategy).__name__,
                "replicas": int(strategy.num_replicas_in_sync), "steps_per_epoch": len(train),
                "backend": keras.backend.backend()}
    return _Setup(loop, trained, resolved_loss, train, validation, test, resolved, strategy)


def _resume(run: RunFolder, setup: _Setup, state: dict[str, Any], source: RunFolder) -> int:
    """Restore weights, optimizer and RNG state (from ``source``) and the sampler position; returns the next epoch."""
    epoch = int(state["next_epoch"])
    saved = preflight.check_sampler_state(source, state, setup.train)
    restore_checkpoint(setup.model, source, state)
    setup.train.load_state_dict(saved | {"epoch": epoch})
    run.trim_logs(epochs=epoch, steps=epoch * len(setup.train))
    return epoch


def _generator_error(setup: _Setup) -> KpipeError | None:
    """The kpipe error a generator met inside Keras / TensorFlow (which re-raise it wrapped), if any."""
    errors = (getattr(data, "last_error", None) for data in (setup.train, setup.validation))
    return next((error for error in errors if isinstance(error, KpipeError)), None)


def _fit(run: RunFolder, setup: _Setup, config: TrainConfig, callbacks: list[keras.callbacks.Callback],
         initial_epoch: int, manifest: Manifest) -> None:
    """Run the loop; a failure before the first epoch ends leaves no folder, errors come out as kpipe errors."""
    try:
        with distribute.fit_scope(setup.strategy):
            setup.loop.fit(setup.model, setup.train, validation=setup.validation, epochs=config.epochs,
                           initial_epoch=initial_epoch, callbacks=callbacks, verbose=config.verbose)
        return
    except KeyboardInterrupt:
        done = run.load_state()["next_epoch"] if run.has_checkpoint() else 0
        run.discard_unfinished()
        hint = (f"Resume with: kpipe train --resume {run.path}" if done
                else "No epoch finished, so there is no checkpoint: start the run again.")
        raise TrainingInterrupted(f"Training interrupted after {done} complete epoch(s). {hint}") from None
    except Exception as e:
        run.discard_unfinished()
        if isinstance(e, KpipeError):
            raise
        error = output_error(e, run.path) if isinstance(e, OSError) and e.errno in DISK_FULL else \
            _generator_error(setup)
        if error is None:
            raise
    raise error  # outside the handler: the wrapped error and its frames are freed, and not shown


def _finish(run: RunFolder, setup: _Setup, config: TrainConfig, manifest: Manifest,
            checkpoint: RunCheckpoint) -> tuple[keras.Model, dict[str, Any]]:
    """Export the best model as ``model.keras``, evaluate it, write ``metrics.json`` and the figures.

    A failing evaluation (a test file gone since pre-flight) leaves ``model.keras`` and the curves in place
    and says to run ``kpipe evaluate RUN``.
    """
    history = checkpoint.history
    run.write_json("history.json", history)
    kept_best = run.best_weights.is_file()
    if kept_best:
        setup.model.load_weights(run.best_weights)
    export = plain_model(setup.model)
    export.compile(optimizer=make_optimizer(config.optimizer, config.learning_rate), loss=setup.loss,
                   metrics=["accuracy"])
    export.optimizer.build(export.trainable_variables)  # so that load_model finds the variables it expects
    with writing(run.file("model.keras")), distribute.saving_without_tensorflow():  # see keep_tensorflow_unloaded
        atomic_save(run.file("model.keras"), export.save)
    early = checkpoint.early_stopping
    facts = training_facts(history, monitor=setup.resolved["monitor"], mode=setup.resolved["monitor_mode"],
                           epochs=config.epochs, patience=config.patience, kept_best=kept_best,
                           stopped=bool(early is not None and early.stopped_epoch) or bool(setup.model.stop_training))
    facts = {"loop": config.loop} | facts
    run.plot_curves(history, facts)
    partition = evaluation_partition(manifest)
    data = {"test": setup.test, "validation": setup.validation}.get(partition) or DataGenerator(
        manifest, "train", shuffle=False, batch_size=config.batch_size, label_mode=setup.resolved["label_mode"])
    try:
        metrics = evaluate_into_run(run, export, data, manifest, partition=partition, metrics=config.metrics,
                                    label_mode=setup.resolved["label_mode"], facts=facts)
    except KpipeError as e:
        raise KpipeError(f"Training finished and {run.file('model.keras')} is saved, but the final evaluation on "
                         f"the {partition} partition failed: {e} Fix it, then run `kpipe evaluate {run.path}`.") from e
    return export, metrics


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

    The loop is ``config.loop`` (`kpipe.training.loops.LOOPS`: ``fit``, ``step``, ``tape``); all loops
    read the same generators, use the same loss and callbacks and write the same run folder (see
    `RunFolder`: ``model.keras``, ``metrics.json``, ``checkpoint/``, ``config.json``...).
    A multi-worker job waits ``distribute_timeout`` seconds for its workers (`kpipe.training.rendezvous`).

    Args:
        manifest: A `Manifest` or the path of ``manifest.json``.
        config: A `TrainConfig`; defaults to ``TrainConfig()``.
        out: Run folder, overriding ``config.out`` (default: ``<manifest folder>/runs/<UTC time>``).
        model: A `keras.Model` or factory, overriding ``config.model``.
        loss: A loss (name, callable, `keras.losses.Loss`), overriding ``config.loss``.
        callbacks: Extra Keras callbacks, called after kpipe's (all loops).
        resume: A run folder to continue from its last checkpoint, overriding ``config.resume``.
        strategy: A `tf.distribute.Strategy`, overriding ``config.distribute``.

    Returns:
        A `TrainResult`.

    Raises:
        KpipeError: On an invalid configuration or manifest, a run folder that may not be written or resumed,
            a loss or model that does not fit the data (`LossCheckError`), a full disk (`OutputWriteError`),
            Ctrl-C (`TrainingInterrupted`, saying how to resume).

    Example:
        >>> print(train("prepared/manifest.json", TrainConfig(epochs=5, loop="tape")).summary())
    """
    started = time.perf_counter()
    manifest = load_manifest(manifest)
    config = config or TrainConfig()
    overrides = {"out": None if out is None else str(out), "resume": None if resume is None else str(resume)}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    with run_folders(manifest, config) as (run, state, run_of_job), rendezvous.bounded_startup(config) as first_step:
        distribute.set_random_seed(config.seed)  # backend's own: on JAX / PyTorch, TensorFlow is not imported
        with dtype_policy(config.mixed_precision) as policy:
            setup = _build(manifest, config, model=model, loss=loss, strategy=strategy, policy=policy)
            run.create(replace=state is None and config.overwrite and run is run_of_job)
            initial_epoch = _resume(run, setup, state, run_of_job) if state is not None else 0
            run.write_config(config, manifest=manifest, resolved=setup.resolved)  # after a resume was accepted
            run_callbacks, checkpoint = run_callbacks_for(run, config, setup.train, setup.resolved, state,
                                                          [first_step, *(callbacks or ())])
            _fit(run, setup, config, run_callbacks, initial_epoch, manifest)
            export, metrics = _finish(run, setup, config, manifest, checkpoint)
        seconds = time.perf_counter() - started
        metrics["train_seconds"] = round(seconds, 2)
        run.write_json("metrics.json", metrics)
    return TrainResult(run_of_job.path.resolve(), export, checkpoint.history, metrics, seconds, loop=config.loop)
