"""The interface every training loop implements, and the helpers the loops share."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import keras

from kpipe.errors import ArgumentError

if TYPE_CHECKING:
    from kpipe.training.config import TrainConfig


def make_optimizer(name: str, learning_rate: float, **options: Any) -> keras.optimizers.Optimizer:
    """A Keras optimizer by name, with ``options`` (``global_clipnorm``, ``gradient_accumulation_steps``) when set.

    Options that are `None` (or an accumulation of 1 step) are left out, so
    the optimizer behaves exactly as Keras' default.

    Raises:
        ArgumentError: If ``name`` is not a Keras optimizer.
    """
    config = {"learning_rate": learning_rate} | {k: v for k, v in options.items() if v not in (None, 1)}
    try:
        return keras.optimizers.get({"class_name": name, "config": config})
    except (ValueError, TypeError):
        raise ArgumentError(
            f"Unknown optimizer {name!r}. Use a Keras optimizer name such as adam, sgd, rmsprop or adamw. "
            f"Received: optimizer={name!r}"
        ) from None


def with_options(optimizer: keras.optimizers.Optimizer, **options: Any) -> keras.optimizers.Optimizer:
    """``optimizer``, or a copy of it (`get_config` / `from_config`) with ``options`` set where they differ.

    Raises:
        ArgumentError: If ``optimizer`` is built already (its state would be lost) and an option differs.
    """
    config = optimizer.get_config()
    changes = {k: v for k, v in options.items() if v not in (None, 1) and config.get(k) != v}
    if not changes:
        return optimizer
    if optimizer.built:
        raise ArgumentError(f"The optimizer is built already; create it with {changes} instead. "
                            f"Received: {type(optimizer).__name__} with {changes} missing")
    return type(optimizer).from_config(config | changes)


class Loop(abc.ABC):
    """One way of training: it makes the trainable model from the network, then runs the epochs.

    A loop owns the optimizer, the compiling and the iteration; the run folder,
    the callbacks, the data and the evaluation are the same for every loop
    (`kpipe.training.train`). Subclasses set `name` and implement `prepare`
    and `fit`.

    Args:
        config: The run's `TrainConfig` (``optimizer``, ``learning_rate``,
            ``clip_norm``, ``accumulation_steps``, ``step_model``...).
        label_mode: ``"int"``, ``"categorical"`` or ``"binary"``.
        mixed_precision: Whether the ``mixed_float16`` policy is in force.
        metrics: Factories of the metrics logged besides loss and accuracy
            (`kpipe.training.metrics.build_metrics`). Defaults to none.
    """

    name: ClassVar[str] = ""

    def __init__(self, config: TrainConfig, *, label_mode: str, mixed_precision: bool = False,
                 metrics: Sequence[Callable[[], keras.metrics.Metric]] = ()) -> None:
        self.config = config
        self.label_mode = label_mode
        self.mixed_precision = mixed_precision
        self.metrics = list(metrics)

    def compiled_metrics(self) -> list[Any]:
        """The ``metrics`` of `compile`: ``"accuracy"`` (Keras picks its form), then one new instance per factory."""
        return ["accuracy", *(factory() for factory in self.metrics)]

    def optimizer(self, **options: Any) -> keras.optimizers.Optimizer:
        """The configured optimizer, with gradient accumulation and any ``options``."""
        return make_optimizer(self.config.optimizer, self.config.learning_rate,
                              gradient_accumulation_steps=self.config.accumulation_steps, **options)

    @abc.abstractmethod
    def prepare(self, net: keras.Model, loss: keras.losses.Loss) -> keras.Model:
        """Make (under the strategy scope) the compiled model this loop trains; its weights are the checkpoint's."""

    def logged(self) -> list[str]:
        """Names logged per epoch besides ``loss`` and ``accuracy`` (and their ``val_`` forms)."""
        return []

    @abc.abstractmethod
    def fit(self, model: keras.Model, train: Any, *, validation: Any, epochs: int, initial_epoch: int,
            callbacks: list[keras.callbacks.Callback], verbose: int | str) -> None:
        """Train ``model`` from ``initial_epoch`` to ``epochs`` (as `keras.Model.fit`), calling ``callbacks``."""
