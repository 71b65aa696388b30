"""The callbacks of a run folder: best model, early stopping, logs, and the checkpoint `--resume` reads.

All are plain `keras.callbacks.Callback` subclasses using only public hooks
(``on_epoch_end(epoch, logs)``, ``self.model``), so the three loops share
them: `fit` and the ``step`` loop get them through `model.fit`, the ``tape``
loop through `keras.callbacks.CallbackList`.

A run folder's ``checkpoint/`` holds what resuming needs, rewritten atomically
at the end of every epoch by `RunCheckpoint`:

* ``last.weights.h5``: the model weights *and the optimizer state* (Keras 3
  `Model.save_weights` includes the optimizer's variables);
* ``state.json``: the next epoch, the history so far, the random-generator
  state of Dropout-like layers (their `keras.random.SeedGenerator` variables,
  on every backend), on PyTorch also torch's global generator (which unseeded
  random layers of a user's model draw from), the best monitored value, the
  early-stopping state and the train generator's position.
"""

from __future__ import annotations

import base64
import csv
import importlib.util
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from kpipe._io import atomic_save, atomic_write_json
from kpipe._validation import check_positive_int
from kpipe.errors import ArgumentError
from kpipe.training.run_folder import RunFolder, writing

if TYPE_CHECKING:
    from kpipe.training.config import TrainConfig


def monitor_mode(monitor: str) -> str:
    """``"min"`` for loss- and error-like names (``val_loss``, ``mse``...), ``"max"`` otherwise (accuracy, AUC...)."""
    lower = monitor.removeprefix("val_").lower()
    if "loss" in lower or "error" in lower or "crossentropy" in lower or lower in ("mse", "mae", "mape", "msle"):
        return "min"
    return "max"


def _improves(current: float, best: float | None, mode: str) -> bool:
    if best is None or not math.isfinite(best):
        return math.isfinite(current)
    return current < best if mode == "min" else current > best


def _state_variables(model: keras.Model) -> list[Any]:
    """The model's variables that are not weights (the seed-generator states of Dropout...), in model order."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def _rng_state(model: keras.Model) -> dict[str, list]:
    """``{path: value}`` of `_state_variables`, in model order."""
    return {v.path: keras.ops.convert_to_numpy(v).tolist() for v in _state_variables(model)}


def _set_rng_state(model: keras.Model, state: dict[str, list]) -> None:
    """Assign the saved values to `_state_variables` by position.

    Paths are not names to match: Keras numbers each `SeedGenerator` in the
    order of creation in the process (``seed_generator_2/...``), so a model
    rebuilt in the same process (``train(..., resume=...)`` from Python) has
    other paths than the saved ones, the same architecture the same order.
    """
    variables = _state_variables(model)
    values = list(state.values())
    if len(values) != len(variables):
        return
    for variable, value in zip(variables, values):
        value = np.asarray(value, dtype=variable.dtype)
        if value.shape == tuple(variable.shape):
            variable.assign(value)


def _global_rng_state() -> dict[str, str] | None:
    """On PyTorch, torch's global random state (CPU, and each CUDA device in use), base64 bytes; else `None`.

    TensorFlow's and JAX's random layers draw from their seed generators only
    (`_rng_state`); PyTorch's unseeded Dropout draws from the global generator.
    """
    if keras.backend.backend() != "torch":
        return None
    import torch

    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states |= {f"cuda:{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    return {k: base64.b64encode(v.numpy().tobytes()).decode("ascii") for k, v in states.items()}


def _set_global_rng_state(state: dict[str, str] | None) -> None:
    if not state or keras.backend.backend() != "torch":
        return
    import torch

    def tensor(key: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(state[key])), dtype=torch.uint8)

    torch.set_rng_state(tensor("cpu"))
    cuda = sorted((k for k in state if k.startswith("cuda:")), key=lambda k: int(k[5:]))
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensor(k) for k in cuda])


def save_weights(model: keras.Model, path: Path) -> None:
    """``model.save_weights(path)`` atomically; an `OSError` becomes an `OutputWriteError` naming ``path``."""
    with writing(path):
        atomic_save(path, lambda p: model.save_weights(p, overwrite=True))


class BestCheckpoint(keras.callbacks.Callback):
    """Save the weights of the best epoch by ``monitor``, atomically; resumable.

    Weights only: the run folder's ``model.keras`` is written once at the end
    from them, as a plain functional model that loads without kpipe's classes.

    Args:
        path: The weights file (``*.weights.h5``).
        monitor: Name of the logged value, e.g. ``"val_loss"``.
        mode: ``"min"`` or ``"max"``. Defaults to `monitor_mode` of ``monitor``.
        best: The best value so far (resuming); `None` for a new run.
    """

    def __init__(self, path: str | os.PathLike, *, monitor: str = "val_loss", mode: str | None = None,
                 best: float | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.monitor = monitor
        self.mode = mode or monitor_mode(monitor)
        self.best = best

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is not None and _improves(float(current), self.best, self.mode):
            self.best = float(current)
            save_weights(self.model, self.path)


class EarlyStopping(keras.callbacks.Callback):
    """Stop after ``patience`` epochs without improvement of ``monitor``; its state can be saved and restored.

    The rule of `keras.callbacks.EarlyStopping` (``min_delta=0``, no baseline):
    each epoch without a strictly better value adds one to ``wait``; training
    stops when ``wait >= patience``.

    Args:
        monitor: Name of the logged value.
        mode: ``"min"`` or ``"max"``.
        patience: Epochs without improvement before stopping (>= 1).
        state: A `state` dict of an earlier session (resuming).
    """

    def __init__(self, *, monitor: str, mode: str, patience: int, state: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.monitor, self.mode = monitor, mode
        self.patience = check_positive_int(patience, "patience")
        state = state or {}
        self.wait = int(state.get("wait") or 0)
        self.best = state.get("best")
        self.best_epoch = int(state.get("best_epoch") or 0)
        self.stopped_epoch = int(state.get("stopped_epoch") or 0)

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None:
            return
        self.wait += 1
        if _improves(float(current), self.best, self.mode):
            self.best, self.best_epoch, self.wait = float(current), int(epoch), 0
        elif self.wait >= self.patience:
            self.stopped_epoch = int(epoch)
            self.model.stop_training = True

    def state(self) -> dict[str, Any]:
        """``{"wait", "best", "best_epoch", "stopped_epoch"}`` as JSON values."""
        return {"wait": self.wait, "best": self.best, "best_epoch": self.best_epoch,
                "stopped_epoch": self.stopped_epoch}


ResumableEarlyStopping = EarlyStopping  # the name of kpipe 0.1


class RunCheckpoint(keras.callbacks.Callback):
    """Write ``checkpoint/last.weights.h5`` and ``checkpoint/state.json`` at the end of every epoch.

    Put it after `BestCheckpoint` and `EarlyStopping` in the list: it records
    their state for that epoch.

    Args:
        run: The `RunFolder`.
        history: History of the epochs before this session (resuming), ``{name: [values]}``.
        best: The `BestCheckpoint`, if any.
        early_stopping: The `EarlyStopping`, if any.
        generator: The train generator; its `state_dict()` (sampler position)
            is saved as ``sampler``, at the next epoch.
    """

    def __init__(self, run: RunFolder, *, history: dict[str, list[float]] | None = None,
                 best: BestCheckpoint | None = None, early_stopping: EarlyStopping | None = None,
                 generator: Any = None) -> None:
        super().__init__()
        self.run = run
        self.generator = generator
        self.history = {k: list(v) for k, v in (history or {}).items()}
        self.best = best
        self.early_stopping = early_stopping

    def on_epoch_end(self, epoch, logs=None):
        for k, v in (logs or {}).items():
            if isinstance(v, (int, float, np.floating, np.integer)) or hasattr(v, "numpy"):
                self.history.setdefault(k, []).append(float(v))
        save_weights(self.model, self.run.last_weights)
        best = None if self.best is None else self.best.best
        sampler = None
        if self.generator is not None:
            sampler = dict(self.generator.state_dict()) | {"epoch": int(epoch) + 1}
        state = {
            "next_epoch": int(epoch) + 1,
            "history": self.history,
            "rng_state": _rng_state(self.model),
            "global_rng_state": _global_rng_state(),
            "best": best if best is not None and math.isfinite(best) else None,
            "early_stopping": None if self.early_stopping is None else self.early_stopping.state(),
            "stopped": bool(self.model.stop_training),
            "sampler": sampler,
        }
        with writing(self.run.state_file):
            atomic_write_json(self.run.state_file, state)


def restore_checkpoint(model: keras.Model, run: RunFolder, state: dict[str, Any]) -> None:
    """Load ``last.weights.h5`` (weights and optimizer state) and the RNG states into a compiled model.

    The optimizer is built first so that its saved variables have somewhere to go.
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    model.load_weights(run.last_weights)
    _set_rng_state(model, state.get("rng_state") or {})
    _set_global_rng_state(state.get("global_rng_state"))


class EpochLogger(keras.callbacks.Callback):
    """Append each epoch's logs to a CSV file (``log.csv``), as `keras.callbacks.CSVLogger` writes it.

    Columns: ``epoch``, then the logged names in sorted order. Epochs are numbered from 1, as Keras'
    progress bar ("Epoch 1/15"), ``metrics.json`` and ``curves.png`` number them (`keras.callbacks.CSVLogger`
    writes the 0-based index). The file is
    opened for each row and closed at once, so a run that fails mid-way
    leaves no open file behind; a resumed run appends.

    Args:
        path: The CSV file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(path)

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        keys = sorted(logs)
        new = not self.path.exists() or self.path.stat().st_size == 0
        with writing(self.path), open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["epoch", *keys])
            writer.writerow([epoch + 1, *(logs[k] for k in keys)])


class StepLossLogger(keras.callbacks.Callback):
    """Append the training loss to ``steps.csv`` every ``every`` optimizer steps.

    Columns: ``step`` (counted over the whole run), ``epoch`` and ``batch`` (both from 1),
    ``loss`` (the running mean over the epoch so far, as Keras logs it) and
    ``step_loss`` (the loss of that very batch; the ``tape`` loop reports it,
    the ``fit`` / ``step`` loops leave it empty). With ``echo=True`` a line is
    also printed.

    Args:
        path: The CSV file (appended to, so a resumed run continues it).
        every: Steps between two rows (>= 1).
        initial_step: Steps done before this session (resuming).
        echo: Print each row.
    """

    def __init__(self, path: str | os.PathLike, every: int, *, initial_step: int = 0, echo: bool = False) -> None:
        super().__init__()
        self.path = Path(path)
        self.every = check_positive_int(every, "log_every")
        self.step = int(initial_step)
        self.echo = echo
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every:
            return
        logs = logs or {}
        loss, step_loss = logs.get("loss"), logs.get("step_loss")
        new = not self.path.exists()
        with writing(self.path), open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["step", "epoch", "batch", "loss", "step_loss"])
            writer.writerow([self.step, self._epoch + 1, batch + 1, "" if loss is None else f"{float(loss):.6g}",
                             "" if step_loss is None else f"{float(step_loss):.6g}"])
        if self.echo:
            shown = step_loss if step_loss is not None else loss
            print(f"step {self.step} (epoch {self._epoch + 1}, batch {batch + 1}): loss {float(shown):.4f}", flush=True)


def _use_tensorboard(setting: bool | None) -> bool:
    """Whether to add the TensorBoard callback: ``setting``, or (`None`) whether tensorboard is installed.

    `None` means no on JAX and PyTorch: Keras' TensorBoard callback writes
    through ``tf.summary``, which would import TensorFlow (``--tensorboard``
    still asks for it there).
    """
    installed = importlib.util.find_spec("tensorboard") is not None
    if setting and not installed:
        raise ArgumentError("TensorBoard logs need the tensorboard package: `pip install tensorboard`, "
                         "or run without --tensorboard. Received: tensorboard=True")
    if setting is None:
        return installed and keras.backend.backend() == "tensorflow"
    return bool(setting)


def run_callbacks_for(run: RunFolder, config: TrainConfig, train: Any, resolved: dict[str, Any],
                      state: dict[str, Any] | None, extra: list[keras.callbacks.Callback] | None
                      ) -> tuple[list[keras.callbacks.Callback], RunCheckpoint]:
    """The callbacks of a run: kpipe's (`EpochSync` keeps the sampler on the loop's epoch), then ``extra``.

    Args:
        run: The `RunFolder`.
        config: The run's `TrainConfig` (``patience``, ``tensorboard``, ``log_every``, ``verbose``).
        train: The train generator.
        resolved: ``monitor`` and ``monitor_mode`` as resolved for this run.
        state: The checkpoint state when resuming, else `None`.
        extra: The user's callbacks, called after kpipe's.

    Returns:
        ``(callbacks, the RunCheckpoint)``; the latter's ``history`` is the run's history.
    """
    from kpipe.generator import EpochSync

    state = state or {}
    monitor, mode = resolved["monitor"], resolved["monitor_mode"]
    best = BestCheckpoint(run.best_weights, monitor=monitor, mode=mode, best=state.get("best"))
    early = EarlyStopping(monitor=monitor, mode=mode, patience=config.patience,
                          state=state.get("early_stopping")) if config.patience else None
    callbacks: list[keras.callbacks.Callback] = [EpochSync(train), best] + ([early] if early else [])
    callbacks.append(EpochLogger(run.file("log.csv")))
    if _use_tensorboard(config.tensorboard):
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run.file("tensorboard")), write_graph=False))
    initial_step = int(state.get("next_epoch", 0)) * len(train)
    if config.log_every:
        callbacks.append(StepLossLogger(run.file("steps.csv"), config.log_every, initial_step=initial_step,
                                        echo=config.verbose == 2))
    checkpoint = RunCheckpoint(run, history=state.get("history"), best=best, early_stopping=early,
                               generator=train)
    return [*callbacks, checkpoint, *(extra or [])], checkpoint
