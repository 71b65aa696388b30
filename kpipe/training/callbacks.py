"""The callbacks of a run folder: best model, early stopping, logs, and the checkpoint `--resume` reads.

All are plain `keras.callbacks.Callback` objects, so the three loops share
them: `fit` and the ``step`` loop get them through `model.fit`, the ``tape``
loop through `keras.callbacks.CallbackList`.

A run folder's ``checkpoint/`` holds what resuming needs, rewritten atomically
at the end of every epoch by `RunCheckpoint`:

* ``last.weights.h5``: the model weights *and the optimizer state* (Keras 3
  `Model.save_weights` includes the optimizer's variables);
* ``state.json``: the next epoch, the history so far, the random-generator
  state of Dropout-like layers, the best monitored value and the
  early-stopping counter.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kpipe._io import atomic_save, atomic_write_json
from kpipe.errors import KpipeError

CHECKPOINT_DIR = "checkpoint"
LAST_WEIGHTS = "last.weights.h5"
BEST_WEIGHTS = "best.weights.h5"
STATE_FILE = "state.json"


def _rng_state(model: keras.Model) -> dict[str, list]:
    """Values of the model's variables that are not weights (the seed-generator states of Dropout...)."""
    weights = {id(v) for v in model.weights}
    return {v.path: np.asarray(v.numpy()).tolist() for v in model.variables if id(v) not in weights}


def _set_rng_state(model: keras.Model, state: dict[str, list]) -> None:
    by_path = {v.path: v for v in model.variables}
    for path, value in state.items():
        if path in by_path:
            by_path[path].assign(np.asarray(value, dtype=by_path[path].dtype))


class BestCheckpoint(keras.callbacks.ModelCheckpoint):
    """`keras.callbacks.ModelCheckpoint` of the best weights, atomically, resumable.

    Saves ``checkpoint/best.weights.h5`` when ``monitor`` improves. Weights only:
    the run folder's ``model.keras`` is written once at the end from them, as a
    plain functional model that loads without kpipe's classes.

    Args:
        path: The weights file (``*.weights.h5``).
        monitor: Name of the logged value, e.g. ``"val_loss"``.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (as Keras: ``max`` for accuracy-like names).
        best: The best value so far (resuming); `None` for a new run.
    """

    def __init__(self, path: str | os.PathLike, *, monitor: str = "val_loss", mode: str = "auto",
                 best: float | None = None) -> None:
        super().__init__(str(path), monitor=monitor, mode=mode, save_best_only=True, save_weights_only=True,
                         initial_value_threshold=best, verbose=0)

    def _save_model(self, epoch, batch, logs):  # noqa: D102 - atomic variant of Keras' save
        logs = logs or {}
        current = logs.get(self.monitor)
        if current is None:
            return
        if self.best is None or self._is_improvement(current, self.best):
            self.best = float(current)
            atomic_save(Path(self.filepath), lambda p: self.model.save_weights(p, overwrite=True))


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """`keras.callbacks.EarlyStopping` that can start from a saved state (``wait``, ``best``, ``best_epoch``)."""

    def __init__(self, *args: Any, state: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resume_state = state or {}

    def on_train_begin(self, logs=None):  # noqa: D102
        super().on_train_begin(logs)
        for key in ("wait", "best", "best_epoch", "stopped_epoch"):
            if self._resume_state.get(key) is not None:
                setattr(self, key, self._resume_state[key])

    def state(self) -> dict[str, Any]:
        """``{"wait", "best", "best_epoch", "stopped_epoch"}`` as JSON values."""
        best = self.best
        return {"wait": int(self.wait), "best": None if best is None else float(best),
                "best_epoch": int(self.best_epoch), "stopped_epoch": int(self.stopped_epoch)}


class RunCheckpoint(keras.callbacks.Callback):
    """Write ``checkpoint/last.weights.h5`` and ``checkpoint/state.json`` at the end of every epoch.

    Put it after `BestCheckpoint` and `ResumableEarlyStopping` in the list: it
    records their state for that epoch.

    Args:
        run_dir: The run folder.
        history: History of the epochs before this session (resuming), ``{name: [values]}``.
        best: The `BestCheckpoint`, if any.
        early_stopping: The `ResumableEarlyStopping`, if any.
        generator: The train generator; its `state_dict()` (sampler position)
            is saved as ``sampler``, at the next epoch.
        extra: More JSON values kept in ``state.json``.
    """

    def __init__(self, run_dir: str | os.PathLike, *, history: dict[str, list[float]] | None = None,
                 best: BestCheckpoint | None = None, early_stopping: ResumableEarlyStopping | None = None,
                 generator: Any = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.generator = generator
        self.dir = Path(run_dir) / CHECKPOINT_DIR
        self.history = {k: list(v) for k, v in (history or {}).items()}
        self.best = best
        self.early_stopping = early_stopping
        self.extra = dict(extra or {})

    def on_epoch_end(self, epoch, logs=None):  # noqa: D102
        for k, v in (logs or {}).items():
            if isinstance(v, (int, float, np.floating, np.integer)) or hasattr(v, "numpy"):
                self.history.setdefault(k, []).append(float(v))
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_save(self.dir / LAST_WEIGHTS, lambda p: self.model.save_weights(p, overwrite=True))
        state = {
            "next_epoch": int(epoch) + 1,
            "history": self.history,
            "rng_state": _rng_state(self.model),
            "best": None if self.best is None or self.best.best is None or not math.isfinite(self.best.best)
            else float(self.best.best),
            "early_stopping": None if self.early_stopping is None else self.early_stopping.state(),
            "stopped": bool(self.model.stop_training),
            "sampler": self._sampler_state(epoch + 1),
        } | self.extra
        atomic_write_json(self.dir / STATE_FILE, state)


    def _sampler_state(self, next_epoch: int) -> dict[str, Any] | None:
        if self.generator is None or not hasattr(self.generator, "state_dict"):
            return None
        return dict(self.generator.state_dict()) | {"epoch": int(next_epoch)}


def load_checkpoint_state(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``checkpoint/state.json`` of ``run_dir``.

    Raises:
        KpipeError: If the run folder has no checkpoint.
    """
    path = Path(run_dir) / CHECKPOINT_DIR / STATE_FILE
    if not path.is_file() or not (path.parent / LAST_WEIGHTS).is_file():
        raise KpipeError(
            f"No checkpoint to resume from in {run_dir}: {path} is missing (a run writes it after its first "
            "epoch). Start a new run without --resume."
        )
    return json.loads(path.read_text())


def restore_checkpoint(model: keras.Model, run_dir: str | os.PathLike, state: dict[str, Any]) -> None:
    """Load ``last.weights.h5`` (weights and optimizer state) and the RNG state into a compiled model.

    The optimizer is built first so that its saved variables have somewhere to go.
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    model.load_weights(Path(run_dir) / CHECKPOINT_DIR / LAST_WEIGHTS)
    _set_rng_state(model, state.get("rng_state") or {})


class StepLossLogger(keras.callbacks.Callback):
    """Append the training loss to ``steps.csv`` every ``every`` optimizer steps.

    Columns: ``step`` (counted over the whole run), ``epoch``, ``batch``,
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
        if every < 1:
            raise KpipeError(f"`log_every` must be >= 1 here. Received: log_every={every}")
        self.path = Path(path)
        self.every = int(every)
        self.step = int(initial_step)
        self.echo = echo
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):  # noqa: D102
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):  # noqa: D102
        self.step += 1
        if self.step % self.every:
            return
        logs = logs or {}
        loss = logs.get("loss")
        step_loss = logs.get("step_loss")
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["step", "epoch", "batch", "loss", "step_loss"])
            writer.writerow([self.step, self._epoch, batch, "" if loss is None else f"{float(loss):.6g}",
                             "" if step_loss is None else f"{float(step_loss):.6g}"])
        if self.echo:
            shown = step_loss if step_loss is not None else loss
            print(f"step {self.step} (epoch {self._epoch + 1}, batch {batch + 1}): loss {float(shown):.4f}", flush=True)
