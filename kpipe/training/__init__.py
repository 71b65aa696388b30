"""Training on prepared datasets: the options, the run folder, the loops, models, losses and evaluation.

Layout (one job per module)::

    config.py       TrainConfig: the one definition of every option (API, CLI, config file)
    run_folder.py   RunFolder: layout, ownership marker, overwrite / resume policy, artifacts
    preflight.py    checks before anything is written: run folder, monitor, dataset; model and loss on one batch
    loops/          LOOPS = {"fit", "step", "tape"}: one module per loop behind one interface (Loop);
                    native_tensorflow / native_jax / native_torch: the steps in each backend's form
    run.py          train(): the orchestration of the above
    evaluate.py     evaluate_on(): loss, accuracy, per-class report on a generator
    models.py, losses.py, callbacks.py, data.py, distribute.py, artifacts.py, loading.py

Names are imported on first use (PEP 562), so ``from kpipe.training import
TrainConfig`` loads neither Keras nor TensorFlow; the ``step`` / ``tape``
loops load only when used, with the steps of the Keras backend in use only
(a JAX or PyTorch run never imports TensorFlow).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TrainConfig": "kpipe.training.config",
    "RunFolder": "kpipe.training.run_folder",
    "LOOPS": "kpipe.training.loops",
    "get_loop": "kpipe.training.loops",
    "Loop": "kpipe.training.loops.base",
    "KpipeModel": "kpipe.training.loops.step",
    "load_step_model_class": "kpipe.training.loops.step",
    "wrap_model": "kpipe.training.loops.step",
    "TapeLoop": "kpipe.training.loops.tape",
    "TrainResult": "kpipe.training.run",
    "TrainingInterrupted": "kpipe.training.run",
    "train": "kpipe.training.run",
    "evaluate_on": "kpipe.training.evaluate",
    "build_model": "kpipe.training.models",
    "default_model": "kpipe.training.models",
    "FunctionLoss": "kpipe.training.losses",
    "LossCheckError": "kpipe.training.losses",
    "build_loss": "kpipe.training.losses",
    "check_loss": "kpipe.training.losses",
    "label_mode_for_loss": "kpipe.training.losses",
    "resolve_loss": "kpipe.training.losses",
    "get_strategy": "kpipe.training.distribute",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kpipe.training' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(_LAZY)
