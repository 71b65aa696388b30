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
from kpipe.training.loops.eager_test_step import EagerTestStep


class StepMixin(EagerTestStep):
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


class TapeSteps:
    """`TapeLoop`'s steps on TensorFlow: `tf.GradientTape`, ``optimizer.apply_gradients``, `tf.function`.

    Under `tf.distribute.MultiWorkerMirroredStrategy` (``kpipe train
    --distribute multi-worker``; the loop is made under its scope) each step
    runs in ``strategy.run``, one replica per worker process, on the worker's
    slice of the global batch (a sharded `kpipe.DataGenerator`, handed to the
    replica by ``experimental_distribute_values_from_function``). A replica's
    loss is its share of the one-process loss: Keras divides a loss averaged
    over the replica's rows by the number of replicas, the generator's
    weights make that average the global one (padding weighs 0, see
    `kpipe.generator`), the regularization losses are divided by the
    replicas here, and Keras' optimizer sums the replicas' gradients before
    the update. The metrics' variables sum over the replicas when read; each
    replica counts its real rows only (weight > 0), and the loss mean is
    weighted by the global batch's length, as in one process.

    Args:
        loop: The `TapeLoop` (its model, loss, optimizer and metrics).
        jit_compile: Compile the steps with XLA (`tf.function(jit_compile=...)`).
    """

    def __init__(self, loop: Any, *, jit_compile: bool = False) -> None:
        self.loop = loop
        self.strategy = tf.distribute.get_strategy()
        self.multi_worker = isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)
        if not self.multi_worker:
            self.train = tf.function(self._train, reduce_retracing=True, jit_compile=jit_compile)
            self.test = tf.function(self._test, reduce_retracing=True, jit_compile=jit_compile)
            return
        train = tf.function(self._across_replicas(self._replica_train), reduce_retracing=True, jit_compile=jit_compile)
        test = tf.function(self._across_replicas(self._replica_test), reduce_retracing=True, jit_compile=jit_compile)
        self.train = lambda x, y, sample_weight: train(*self._per_replica(x, y, sample_weight))
        self.test = lambda x, y, sample_weight: test(*self._per_replica(x, y, sample_weight))

    def check_devices(self, *datasets: Any) -> None:
        """Refuse a strategy with more than one replica (the loop runs on one device), except multi-worker.

        Multi-worker: one replica per worker process, and every dataset a
        generator sharded as the strategy's replicas (``num_shards`` = the
        replicas, ``shard_index`` = this worker's replica).
        """
        replicas = self.strategy.num_replicas_in_sync
        if not self.multi_worker:
            if replicas > 1:
                raise ArgumentError(
                    f"The tape loop runs on one device, but the distribution strategy has {replicas} replicas. "
                    "Use --loop fit or --loop step (Keras distributes them), or --distribute none."
                )
            return
        local: list[int] = []
        self.strategy.experimental_distribute_values_from_function(
            lambda ctx: local.append(ctx.replica_id_in_sync_group) or tf.constant(0))
        if len(local) != 1:
            raise ArgumentError(
                f"`distribute` multi-worker trains one replica per worker process; this worker sees {len(local)} "
                "devices. Start one worker process per GPU (CUDA_VISIBLE_DEVICES=i, each with its own TF_CONFIG "
                f"task). Received: {len(local)} local replicas"
            )
        for data in datasets:
            shard = (getattr(data, "num_shards", 1), getattr(data, "shard_index", 0))
            if data is not None and shard != (replicas, local[0]):
                raise ArgumentError(
                    f"Under `distribute` multi-worker each worker reads its slice of every batch: "
                    f"DataGenerator(..., num_shards='auto') (here {replicas} workers, this one replica {local[0]}). "
                    f"Received: a dataset with num_shards={shard[0]}, shard_index={shard[1]}"
                )

    # ------------------------------------------------------------- one device
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

    # ------------------------------------------------------------- multi-worker
    def _per_replica(self, x: Any, y: Any, sample_weight: Any) -> tuple[Any, Any, Any]:
        """This worker's slice as the values of its replica (`experimental_distribute_values_from_function`)."""
        if sample_weight is None:
            raise ArgumentError("Under `distribute` multi-worker the batches must come from a sharded DataGenerator "
                                "(num_shards='auto'), whose sample weights mark the padding. Received: a batch "
                                "without sample weights")
        values = self.strategy.experimental_distribute_values_from_function(lambda ctx: (x, y, sample_weight))
        return tuple(values)

    def _across_replicas(self, step: Any) -> Any:
        def run(x: Any, y: Any, sample_weight: Any) -> Any:
            losses = self.strategy.run(step, args=(x, y, sample_weight))
            return self.strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)  # the global batch's loss
        return run

    def _replica_train(self, x: Any, y: Any, sample_weight: Any) -> Any:
        loop, model = self.loop, self.loop.model
        replicas = self.strategy.num_replicas_in_sync
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = loop.loss_value(y, y_pred, sample_weight, model.losses, replicas=replicas)  # this replica's share
            scaled_loss = loop.optimizer.scale_loss(loss)
        variables = model.trainable_variables
        grads = tape.gradient(scaled_loss, variables)
        loop.optimizer.apply_gradients(zip(grads, variables))  # Keras sums the replicas' gradients first
        self._update_metrics(loop.train_loss, loop.train_metrics, y, y_pred, loss, sample_weight)
        return loss

    def _replica_test(self, x: Any, y: Any, sample_weight: Any) -> Any:
        loop, model = self.loop, self.loop.model
        y_pred = model(x, training=False)
        loss = loop.loss_value(y, y_pred, sample_weight, model.losses, replicas=self.strategy.num_replicas_in_sync)
        self._update_metrics(loop.val_loss, loop.val_metrics, y, y_pred, loss, sample_weight)
        return loss

    def _update_metrics(self, loss_metric: Any, metrics: list[Any], y: Any, y_pred: Any, loss: Any,
                        sample_weight: Any) -> None:
        """One replica's part of `TapeLoop.update_metrics` (the metric variables sum over the replicas)."""
        replicas = self.strategy.num_replicas_in_sync
        real = tf.cast(sample_weight > 0, loss.dtype)
        count = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(real))
        loss_metric.update_state(loss * replicas, sample_weight=count / replicas)  # sums to (global loss, count)
        if self.loop.weighted_metrics:  # the batch's own weights: the sharded ones times count / (replicas * rows)
            rows = tf.cast(tf.shape(sample_weight)[0], loss.dtype)
            weights = tf.cast(sample_weight, loss.dtype) * count / (replicas * rows)
        else:
            weights = real
        for metric in metrics:
            metric.update_state(y, y_pred, sample_weight=weights)
