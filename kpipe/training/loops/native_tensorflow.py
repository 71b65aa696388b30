"""The ``step`` and ``tape`` loops in TensorFlow's native form: `tf.GradientTape`, compiled by `tf.function`.

Imported only when the Keras backend is ``tensorflow`` (`kpipe.training.loops.native`).
`StepMixin` gives `kpipe.training.KpipeModel` its `train_step` / `test_step`;
`TapeSteps` the compiled steps of `kpipe.training.TapeLoop`.

Reference: the Keras guides "Customizing what happens in fit() with
TensorFlow" and "Writing a training loop from scratch in TensorFlow", and
`TensorFlowTrainer.train_step` (keras/src/backend/tensorflow/trainer.py).
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from kpipe.errors import ArgumentError


class StepMixin:
    """`KpipeModel`'s steps on TensorFlow: the loss under a `tf.GradientTape`, ``tape.gradient``, then the update.

    The steps call the model's extension points (``compute_loss`` with
    ``extra_loss``, ``transform_gradients``, ``apply_update``); `fit` runs
    them (in a `tf.function`, distributed by the model's strategy).
    """

    def num_replicas(self) -> int:
        """Replicas of the model's distribution strategy (a Keras loss is divided by it per replica)."""
        return self.distribute_strategy.num_replicas_in_sync

    def apply_optimizer(self, grads: list[Any]) -> None:
        """``optimizer.apply(grads, trainable_variables)`` (`KpipeModel.apply_update`'s default)."""
        self.optimizer.apply(grads, self.trainable_variables)

    def train_step(self, data: Any) -> dict[str, Any]:
        """One training step on a batch ``(x, y)`` or ``(x, y, sample_weight)``; returns the metric results."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            self._update_loss_metric(loss, x)
            scaled_loss = self.optimizer.scale_loss(loss)  # identity unless a LossScaleOptimizer
        grads = tape.gradient(scaled_loss, self.trainable_variables)
        grads = self.transform_gradients(grads)
        self.apply_update(grads)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def test_step(self, data: Any) -> dict[str, Any]:
        """One evaluation step: forward pass with ``training=False``, loss and metrics updated."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = self(x, training=False)
        loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False)
        self._update_loss_metric(loss, x)
        return self._test_results(x, y, y_pred, sample_weight)


class TapeSteps:
    """`TapeLoop`'s steps on TensorFlow: `tf.GradientTape`, ``optimizer.apply_gradients``, `tf.function`.

    Args:
        loop: The `TapeLoop` (its model, loss, optimizer and metrics).
        jit_compile: Compile the steps with XLA (`tf.function(jit_compile=...)`).
    """

    def __init__(self, loop: Any, *, jit_compile: bool = False) -> None:
        self.loop = loop
        self.train = tf.function(self._train, reduce_retracing=True, jit_compile=jit_compile)
        self.test = tf.function(self._test, reduce_retracing=True, jit_compile=jit_compile)

    @staticmethod
    def check_devices() -> None:
        """Refuse a strategy with more than one replica (the loop runs on one device)."""
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            raise ArgumentError(
                f"The tape loop runs on one device, but the distribution strategy has {replicas} replicas. "
                "Use --loop fit or --loop step (Keras distributes them), or --distribute none."
            )

    def _train(self, x: Any, y: Any, sample_weight: Any) -> Any:
        loop, model = self.loop, self.loop.model
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)  # training=True: Dropout / BatchNormalization train behaviour
            loss = loop.loss_value(y, y_pred, sample_weight, model.losses)
            scaled_loss = loop.optimizer.scale_loss(loss)  # identity unless LossScaleOptimizer
        variables = model.trainable_variables
        grads = tape.gradient(scaled_loss, variables)
        loop.optimizer.apply_gradients(zip(grads, variables))
        loop.update_metrics(loop.train_loss, loop.train_metrics, x, y, y_pred, loss, sample_weight)
        return loss

    def _test(self, x: Any, y: Any, sample_weight: Any) -> Any:
        loop, model = self.loop, self.loop.model
        y_pred = model(x, training=False)
        loss = loop.loss_value(y, y_pred, sample_weight, model.losses)
        loop.update_metrics(loop.val_loss, loop.val_metrics, x, y, y_pred, loss, sample_weight)
        return loss
