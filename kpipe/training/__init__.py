"""Training on prepared datasets: default models, losses, the loop, the run folder."""

from kpipe.training.losses import label_mode_for_loss, resolve_loss
from kpipe.training.models import build_model, default_model
from kpipe.training.run import TrainConfig, TrainResult, evaluate_on, train

__all__ = [
    "TrainConfig",
    "TrainResult",
    "build_model",
    "default_model",
    "evaluate_on",
    "label_mode_for_loss",
    "resolve_loss",
    "train",
]
