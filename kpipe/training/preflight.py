"""Pre-flight: everything that can be checked before a run writes anything or trains a step.

Two steps, so that a mistake costs seconds, not an epoch:

* `check_run` (no Keras, no TensorFlow: ``kpipe train`` calls it before
  TensorFlow starts): the run folder policy (new / overwrite / resume), the
  ``monitor`` name, and the dataset (cheap checks of the manifest);
* `check_model` (after the model is built): one sample through the model
  (one output, one unit per class), then the loss on one batch exactly as
  Keras will call it; for a custom loss the label mode is chosen here by
  trying one-hot, then integer labels.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from kpipe.errors import ArgumentError, KpipeError
from kpipe.manifest import Manifest
from kpipe.training.run_folder import RunFolder

if TYPE_CHECKING:
    import keras

    from kpipe.training.config import TrainConfig

logger = logging.getLogger("kpipe.training")

CANDIDATE_LABEL_MODES = ("categorical", "int")
"""Label modes tried, in order, for a loss whose mode is not known (a custom function)."""


def logged_names(config: TrainConfig, *, has_validation: bool) -> list[str]:
    """The values a run logs per epoch (what ``monitor`` may name)."""
    both = ["loss", "accuracy", *config.metrics]
    names = both + (["gradient_norm"] if config.loop == "step" and config.clip_norm else [])
    return names + ([f"val_{n}" for n in both] if has_validation else [])


def check_monitor(config: TrainConfig, *, has_validation: bool) -> None:
    """``monitor`` must be a value the run logs (a custom step model may log more: not checked).

    Raises:
        ArgumentError: If it names nothing the run logs.
    """
    if config.step_model is not None:
        return
    names = logged_names(config, has_validation=has_validation)
    if config.monitor not in names and config.monitor.removeprefix("val_") not in names:
        raise ArgumentError(
            f"`monitor` must be a value the run logs: {', '.join(names)}. Received: monitor={config.monitor!r}"
        )


def check_dataset(manifest: Manifest, config: TrainConfig) -> None:
    """Cheap checks of the dataset a run reads (no sample is opened).

    Besides the manifest itself, every file the run will read (train,
    validation and test) must exist with its recorded size: one ``stat`` per
    file (`kpipe.verify.check_files`), so a missing test file is found before
    epoch 1, not at the final evaluation. ``kpipe verify`` checks the rest
    (checksums, content, leakage).

    Raises:
        ArgumentError: If the train partition is empty, or ``label_mode="binary"`` meets more than 2 classes.
        StoreError: Naming the first file that is missing, not a regular file or of the wrong size.
    """
    from kpipe.verify import check_files

    if not manifest.partition.get("train"):
        raise ArgumentError(f"The train partition of {manifest.path or 'the manifest'} is empty: there is nothing "
                            "to train on. Prepare with a split that gives it samples.")
    if config.label_mode == "binary" and manifest.num_classes != 2:
        raise ArgumentError(f"`label_mode='binary'` needs exactly 2 classes; this dataset has "
                            f"{manifest.num_classes}. Use --label-mode int or categorical.")
    _check_class_options(manifest, config)
    if manifest.path is not None:  # an in-memory manifest (classic list_IDs form) has no files to list
        check_files(manifest, [p for p in ("train", "validation", "test") if manifest.partition.get(p)])


def _check_class_options(manifest: Manifest, config: TrainConfig) -> None:
    """Options naming classes (class and condition weights, target distribution), against the dataset's classes:
    NumPy only, so an unknown class is said before TensorFlow starts."""
    from kpipe.sampling import check_target_distribution
    from kpipe.weights import check_class_weight, check_condition_weights

    classes = list(manifest.classes)
    if config.class_weight is not None:
        labels = manifest.label_array(manifest.partition["train"])
        check_class_weight(config.class_weight, classes, labels, partition="train")
    check_condition_weights(config.condition_weights, classes)
    if config.target_distribution is not None:
        check_target_distribution(config.target_distribution, classes)


def check_run(manifest: Manifest, config: TrainConfig) -> tuple[RunFolder, dict[str, Any] | None]:
    """The checks that need neither Keras nor TensorFlow (``kpipe train`` runs them before TensorFlow starts).

    Returns:
        The `RunFolder` of the run (nothing is written yet) and, when
        resuming, its checkpoint state (else `None`).

    Raises:
        KpipeError: On a run folder that may not be written or resumed, a
            ``monitor`` the run does not log, or a dataset that cannot be trained on.
    """
    check_monitor(config, has_validation=bool(manifest.partition.get("validation")))
    if config.use_multiprocessing and config.workers == 1:
        warnings.warn("--use-multiprocessing with one worker starts a process to make batches one at a time, "
                      "which is slower than the main process alone. Add --workers N (N > 1), or drop it.",
                      stacklevel=2)
    if config.resume is not None:  # the run first: "nothing to resume" whatever the state of the files
        run, state = RunFolder.for_resume(config.resume, out=config.out, manifest=manifest, epochs=config.epochs)
    else:
        run, state = RunFolder.for_new_run(manifest, out=config.out, overwrite=config.overwrite), None
    check_dataset(manifest, config)
    return run, state


def logits_warning(loss: Any, outputs: str | None) -> str | None:
    """A message if a custom loss function meets a model that outputs logits (no softmax / sigmoid at the end).

    kpipe sets ``from_logits`` for Keras losses; a custom function gets the outputs as they are, so it must
    take logits itself, or the model should end with a softmax.
    """
    from kpipe.training.losses import FunctionLoss, loss_name

    if not (isinstance(loss, FunctionLoss) and outputs == "logits"):
        return None
    return (f"The model's last layer has no softmax or sigmoid (it outputs logits), and the custom loss "
            f"`{loss_name(loss)}` gets these outputs as they are: make it take logits (as a Keras loss does with "
            "from_logits=True), or end the model with a softmax.")


def check_output_size(net: keras.Model, num_classes: int, label_mode: str, x: np.ndarray) -> None:
    """The model must have one output with one unit per class (one unit for binary labels).

    ``x`` (one sample, batched) is run through a model whose output shape is
    not known yet (a `keras.Sequential` without an `Input`).

    Raises:
        ArgumentError: On several outputs or a wrong number of units.
    """
    try:
        shape = net.output_shape
    except (AttributeError, ValueError):
        y = net(x, training=False)
        shape = [tuple(t.shape) for t in y] if isinstance(y, (list, tuple, dict)) else tuple(y.shape)
    if isinstance(shape, (list, dict)):
        raise ArgumentError(f"The model has {len(shape)} outputs; kpipe trains single-output classifiers. Return a "
                            "model with one output of shape (batch, num_classes).")
    if not (isinstance(shape, tuple) and shape and isinstance(shape[-1], int)):
        return  # unknown: the loss check on one batch decides
    expected = 1 if label_mode == "binary" else num_classes
    if shape[-1] != expected and not (label_mode == "binary" and shape[-1] == 2):
        raise ArgumentError(
            f"The model outputs {shape[-1]} values per sample, but this dataset has {num_classes} classes "
            f"(label_mode={label_mode!r} needs {expected}). End the model with Dense({expected}). "
            f"Received: output_shape={shape}"
        )


def encode_labels(y: np.ndarray, label_mode: str, num_classes: int) -> np.ndarray:
    """Class indices as the generator encodes them: int32 ``(batch,)``, one-hot or 0/1 float32."""
    y = np.asarray(y).astype(np.int64)
    if label_mode == "categorical":
        return np.eye(num_classes, dtype=np.float32)[y]
    if label_mode == "binary":
        return y.astype(np.float32)[:, None]
    return y.astype(np.int32)


def check_model(net: keras.Model, loss: keras.losses.Loss, probe: tuple[Any, ...], *, num_classes: int,
                label_mode: str | None) -> str:
    """Check the model and the loss on one batch; return the label mode the run uses.

    Args:
        net: The built model.
        loss: The loss (`kpipe.training.losses.build_loss`).
        probe: ``(x, y)`` with integer class indices ``y`` (`kpipe.training.data.probe_generator`).
        num_classes: Number of classes.
        label_mode: The mode the run asks for, or `None` to try `CANDIDATE_LABEL_MODES`
            in order and take the first that passes (logged).

    Returns:
        The label mode.

    Raises:
        ArgumentError: If the model's output does not fit the classes.
        LossCheckError: If the loss does not fit (with every candidate label mode).
    """
    from kpipe.training.losses import LossCheckError, check_loss, loss_name

    if label_mode == "binary" and num_classes != 2:
        raise ArgumentError(f"`label_mode='binary'` needs exactly 2 classes; this dataset has {num_classes}. "
                            "Use label_mode='int' or 'categorical' (a sparse or one-hot loss).")
    x, y = probe[0], probe[1]
    check_output_size(net, num_classes, label_mode or "categorical", x[:1])
    if label_mode is not None:
        check_loss(loss, net, (x, encode_labels(y, label_mode, num_classes)), label_mode=label_mode)
        return label_mode
    failures = []
    for mode in CANDIDATE_LABEL_MODES:
        try:
            check_loss(loss, net, (x, encode_labels(y, mode, num_classes)), label_mode=mode)
        except LossCheckError as e:
            failures.append(f"with label_mode={mode!r}: {e}")
            continue
        how = "one-hot labels" if mode == "categorical" else "class indices (it fails on one-hot labels)"
        logger.info("label_mode=%r chosen for the loss `%s`: it runs on %s, tried on one batch "
                    "(--label-mode sets it).", mode, loss_name(loss), how)
        return mode
    raise LossCheckError(f"The loss `{loss_name(loss)}` fails on one batch {' and '.join(failures)}")


_SAMPLER_OPTIONS = {"seed": "--seed", "sampling": "--sampling", "balance": "--balance",
                    "batch_size": "--batch-size", "num_batches": "--steps-per-epoch (or --samples-per-epoch)",
                    "batches_per_sampler_epoch": "--samples-per-epoch"}
"""What the train generator's saved state is checked against on resume, and the option that sets each."""


def check_sampler_state(run: RunFolder, state: dict[str, Any], train: Any) -> dict[str, Any]:
    """The train generator's saved state (``state["sampler"]``), checked against ``train``'s arguments.

    Returns:
        The saved sampler state (``train.state_dict()`` for a checkpoint without one).

    Raises:
        KpipeError: Naming the option that differs (e.g. ``--batch-size 16``
            then, this session, ``--batch-size 7``): the resumed run would
            serve other batches.
    """
    saved = dict(state.get("sampler") or train.state_dict())
    for key, option in _SAMPLER_OPTIONS.items():
        if key in saved and saved[key] != getattr(train, key):
            raise KpipeError(
                f"Run {run.path} was trained with {option} {saved[key]}, this session has {option} "
                f"{getattr(train, key)}; resuming would serve other batches. Resume without changing "
                f"{option} (`kpipe train --resume {run.path}` uses the run's own options), or start a new run."
            )
    return saved
