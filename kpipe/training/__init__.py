"""Training on prepared datasets: default models, losses, the three loops, the run folder.

Three loops over the same generators, losses, callbacks and run folder
(``kpipe train --loop fit|step|tape``):

* ``fit``: `keras.Model.fit`;
* ``step``: `KpipeModel`, a `keras.Model` whose `train_step` / `test_step`
  are written out with extension points (gradient clipping, gradient
  accumulation, an extra loss term), still run by `fit`;
* ``tape``: `TapeLoop`, an explicit loop with `tf.GradientTape` and Keras
  callbacks through `keras.callbacks.CallbackList`.
"""

from kpipe.training.distribute import get_strategy
from kpipe.training.losses import (
    FunctionLoss,
    LossCheckError,
    build_loss,
    check_loss,
    label_mode_for_loss,
    resolve_loss,
)
from kpipe.training.models import build_model, default_model
from kpipe.training.run import LOOPS, TrainConfig, TrainingInterrupted, TrainResult, evaluate_on, train
from kpipe.training.step import KpipeModel, load_step_model_class, wrap_model
from kpipe.training.tape import TapeLoop

__all__ = [
    "LOOPS",
    "FunctionLoss",
    "KpipeModel",
    "LossCheckError",
    "TapeLoop",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "build_loss",
    "build_model",
    "check_loss",
    "default_model",
    "evaluate_on",
    "get_strategy",
    "label_mode_for_loss",
    "load_step_model_class",
    "resolve_loss",
    "train",
    "wrap_model",
]
