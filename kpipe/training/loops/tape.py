"""The ``tape`` loop: epochs, then batches, the gradients, the update, in each backend's native form.

Everything `model.fit` does is written out, so that each line can be read and
changed: the forward pass runs with ``training=True`` (Dropout and
BatchNormalization behave as in `fit`), sample weights are applied, metrics
are reset at each epoch, validation runs at each epoch's end, and Keras
callbacks (ModelCheckpoint, EarlyStopping, CSVLogger, TensorBoard,
ProgbarLogger...) are called through `keras.callbacks.CallbackList`. Batches
are read in order, ``dataset[0]``, ``dataset[1]``..., between the dataset's
``on_epoch_begin`` / ``on_epoch_end`` hooks, as `fit` calls them; a
`kpipe.DataGenerator` makes them ahead with its own workers.

The step itself is the backend's (`kpipe.training.loops.native`):

==============  ==================================================================================
backend         one training step
==============  ==================================================================================
tensorflow      `tf.GradientTape`, ``optimizer.apply_gradients``, compiled by `tf.function`
jax             ``model.stateless_call``, `jax.value_and_grad`, ``optimizer.stateless_apply``,
                compiled by `jax.jit`; the new values are written back into the variables
torch           ``zero_grad()``, forward, ``loss.backward()``, ``optimizer.apply`` under `torch.no_grad`
==============  ==================================================================================

On TensorFlow the loop also runs under `tf.distribute.MultiWorkerMirroredStrategy`
(``kpipe train --distribute multi-worker``): one replica per worker process,
each step in ``strategy.run`` on the worker's slice of a sharded
`kpipe.DataGenerator`, with the losses, gradients and metrics of one process
(``native_tensorflow.TapeSteps``).

Resuming is by ``initial_epoch`` (kpipe's run checkpoint gives it);
`keras.callbacks.BackupAndRestore` talks to `fit` through private model
attributes, so this loop refuses it and says so.

With the same seed, data and model, two epochs of this loop and of `fit` give
the same losses up to float rounding, on each backend (see
``tests/test_training_loops.py::test_three_loops_agree`` and ``tests/test_backends.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import keras

from kpipe.errors import ArgumentError
from kpipe.training.loops import native
from kpipe.training.loops.base import Loop, with_options


def iterate_batches(dataset: Any) -> Iterator[Any]:
    """Yield ``dataset[0], dataset[1], ...`` for one epoch, between its ``on_epoch_begin`` / ``on_epoch_end``."""
    begin = getattr(dataset, "on_epoch_begin", None)  # a PyDataset hook since Keras 3.5
    if begin is not None:
        begin()
    for i in range(len(dataset)):
        yield dataset[i]
    end = getattr(dataset, "on_epoch_end", None)
    if end is not None:
        end()


def _unpack(batch: Any) -> tuple[Any, Any, Any]:
    return keras.utils.unpack_x_y_sample_weight(tuple(batch) if isinstance(batch, list) else batch)


def accuracy_metric(label_mode: str | None, name: str = "accuracy") -> keras.metrics.Metric:
    """The accuracy `fit` picks for ``metrics=["accuracy"]``, from the label mode."""
    if label_mode == "int":
        return keras.metrics.SparseCategoricalAccuracy(name=name)
    if label_mode == "binary":
        return keras.metrics.BinaryAccuracy(name=name)
    return keras.metrics.CategoricalAccuracy(name=name)


class TapeLoop:
    """An explicit training loop over a `keras.utils.PyDataset` (e.g. `kpipe.DataGenerator`).

    Args:
        model: The `keras.Model` to train (built).
        loss: A `keras.losses.Loss` (see `kpipe.training.build_loss`); called
            as ``loss(y, y_pred, sample_weight=...)``, reduced as in `fit`
            (``sum(loss_i * w_i) / batch_size``). Regularization losses
            (``model.losses``) are added.
        optimizer: A `keras.optimizers.Optimizer` (its
            ``gradient_accumulation_steps`` accumulates, as with `fit`). With
            ``mixed_precision`` (or a ``mixed_float16`` global policy) it is
            wrapped in `keras.optimizers.LossScaleOptimizer`: the loss is
            scaled before the gradients, which are unscaled (and skipped when
            not finite) before the update.
        metrics: Metric factories (called twice: train and validation copies),
            each ``() -> keras.metrics.Metric``. Defaults to accuracy for
            ``label_mode``.
        label_mode: ``"int"``, ``"categorical"`` or ``"binary"``, for the
            default accuracy.
        clip_norm: Clip gradients by global norm (float > 0): the optimizer's
            ``global_clipnorm`` (applied to the unscaled, accumulated
            gradients, as in `fit`). Defaults to `None`.
        mixed_precision: Wrap the optimizer in `LossScaleOptimizer`. Defaults
            to `None`: when the global dtype policy is ``mixed_float16``.
        weighted_metrics: Weigh the metrics by the batches' sample weights
            (as Keras' ``compile(weighted_metrics=...)``). Defaults to `False`,
            as ``compile(metrics=...)``: the loss is weighted, the metrics are not.
        jit_compile: On TensorFlow, passed to `tf.function` (XLA). Defaults
            to `False`. JAX steps are always compiled by `jax.jit`; PyTorch
            steps run eagerly.

    Example:
        >>> loop = TapeLoop(model, keras.losses.SparseCategoricalCrossentropy(), keras.optimizers.Adam(1e-3),
        ...                 label_mode="int")
        >>> history = loop.fit(train, validation_data=val, epochs=5, log_every=50)
        >>> history.history["val_loss"]
    """

    def __init__(self, model: keras.Model, loss: keras.losses.Loss, optimizer: keras.optimizers.Optimizer, *,
                 metrics: list[Callable[[], keras.metrics.Metric]] | None = None, label_mode: str | None = "int",
                 clip_norm: float | None = None, mixed_precision: bool | None = None,
                 weighted_metrics: bool = False, jit_compile: bool = False) -> None:
        if mixed_precision is None:
            mixed_precision = keras.config.dtype_policy().name == "mixed_float16"
        optimizer = with_options(optimizer, global_clipnorm=clip_norm)
        if mixed_precision and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        self.model = model
        self.loss = loss
        self.optimizer = optimizer
        self.weighted_metrics = weighted_metrics
        factories = metrics or [lambda: accuracy_metric(label_mode)]
        self.train_loss = keras.metrics.Mean(name="loss")
        self.train_metrics = [f() for f in factories]
        self.val_loss = keras.metrics.Mean(name="loss")
        self.val_metrics = [f() for f in factories]
        self.optimizer.build(model.trainable_variables)
        self.global_step = 0
        self.steps = native().TapeSteps(self, jit_compile=jit_compile)  # the backend's train / test steps

    # ------------------------------------------------- what every step computes
    def loss_value(self, y: Any, y_pred: Any, sample_weight: Any, losses: list[Any], replicas: int = 1) -> Any:
        """The batch loss: ``loss(y, y_pred, sample_weight)`` plus ``losses`` (regularization, ``add_loss``).

        Args:
            y: The labels.
            y_pred: The model's outputs.
            sample_weight: float32 ``(batch,)`` or `None`.
            losses: The model's losses of this forward pass (``model.losses``,
                or what ``stateless_call(..., return_losses=True)`` returned).
            replicas: Under a `tf.distribute` strategy, its replicas: ``losses``
                are divided by them, as Keras divides the loss (and as `fit`
                divides both), so that the replicas' shares sum to the loss.

        Returns:
            A scalar, reduced as `fit` reduces it (``sum(loss_i * w_i) / batch_size``).
        """
        loss = self.loss(y, y_pred, sample_weight=sample_weight)
        if losses:  # as compute_loss adds them
            extra = keras.ops.sum(keras.ops.stack([keras.ops.cast(keras.ops.sum(e), loss.dtype) for e in losses]))
            loss = loss + (extra if replicas == 1 else extra / replicas)
        return loss

    def update_metrics(self, loss_metric: Any, metrics: list[Any], x: Any, y: Any, y_pred: Any, loss: Any,
                       sample_weight: Any) -> None:
        """Update the loss mean (weighted by batch size, as Keras) and the metrics with one batch."""
        batch_size = keras.ops.shape(keras.tree.flatten(x)[0])[0]
        loss_metric.update_state(loss, sample_weight=batch_size)
        for metric in metrics:
            # as compile(metrics=...): unweighted (Keras weighs only `weighted_metrics`)
            metric.update_state(y, y_pred, sample_weight=sample_weight if self.weighted_metrics else None)

    # ------------------------------------------------------------- helpers
    @staticmethod
    def _results(loss: keras.metrics.Metric, metrics: list[keras.metrics.Metric], prefix: str = "") -> dict[str, float]:
        logs = {prefix + loss.name: float(loss.result())}
        for metric in metrics:
            result = metric.result()
            if isinstance(result, dict):
                logs.update({prefix + k: float(v) for k, v in result.items()})
            else:
                logs[prefix + metric.name] = float(result)
        return logs

    def evaluate(self, data: Any, callbacks: keras.callbacks.CallbackList | None = None) -> dict[str, float]:
        """Loss and metrics on ``data`` (``training=False``), as ``{name: value}``; resets them first."""
        for metric in (self.val_loss, *self.val_metrics):
            metric.reset_state()
        if callbacks is not None:
            callbacks.on_test_begin()
        for step, batch in enumerate(iterate_batches(data)):
            if callbacks is not None:
                callbacks.on_test_batch_begin(step)
            self.steps.test(*_unpack(batch))
            if callbacks is not None:
                callbacks.on_test_batch_end(step, self._results(self.val_loss, self.val_metrics))
        logs = self._results(self.val_loss, self.val_metrics)
        if callbacks is not None:
            callbacks.on_test_end(logs)
        return logs

    def _callback_list(self, callbacks: Any, *, verbose: int, epochs: int, steps: int) -> keras.callbacks.CallbackList:
        if isinstance(callbacks, keras.callbacks.CallbackList):
            return callbacks
        callbacks = list(callbacks or [])
        if any(isinstance(c, keras.callbacks.BackupAndRestore) for c in callbacks):
            raise ArgumentError(
                "The tape loop does not take keras.callbacks.BackupAndRestore (it restores through private "
                "attributes of fit). Resume with `initial_epoch` (kpipe train --resume RUN does), or use fit."
            )
        return keras.callbacks.CallbackList(callbacks, add_history=True, add_progbar=verbose != 0, model=self.model,
                                            verbose=verbose, epochs=epochs, steps=steps)

    def _run_epoch(self, epoch: int, train_data: Any, callback_list: keras.callbacks.CallbackList,
                   log_every: int, on_log: Callable[[int, int, float], None] | None) -> None:
        for metric in (self.train_loss, *self.train_metrics):
            metric.reset_state()
        for step, batch in enumerate(iterate_batches(train_data)):
            callback_list.on_train_batch_begin(step)
            loss = self.steps.train(*_unpack(batch))
            self.global_step += 1
            logs = self._results(self.train_loss, self.train_metrics)
            if log_every and self.global_step % log_every == 0:
                logs["step_loss"] = float(loss)
                if on_log is not None:
                    on_log(self.global_step, epoch, logs["step_loss"])
            callback_list.on_train_batch_end(step, logs)
            if self.model.stop_training:
                break

    # ------------------------------------------------------------- the loop
    def fit(self, train_data: Any, *, epochs: int, initial_epoch: int = 0, validation_data: Any = None,
            callbacks: list[keras.callbacks.Callback] | None = None, verbose: int | str = "auto",
            log_every: int = 0, on_log: Callable[[int, int, float], None] | None = None) -> keras.callbacks.History:
        """Train for ``epochs - initial_epoch`` epochs.

        Args:
            train_data: Batches ``(x, y)`` or ``(x, y, sample_weight)``;
                ``len(train_data)`` batches per epoch, read in order between
                its ``on_epoch_begin`` / ``on_epoch_end`` hooks.
            epochs: Index of the last epoch + 1 (as `fit`).
            initial_epoch: Epoch to start at (as `fit`; resuming).
            validation_data: Evaluated at each epoch's end; its results are
                logged with the prefix ``val_``.
            callbacks: Keras callbacks; `CallbackList` adds History and (unless
                ``verbose=0``) the progress bar. Not `BackupAndRestore` (see above).
            verbose: 0 silent, 1 progress bar, 2 one line per epoch, ``"auto"`` 1.
            log_every: Every this many optimizer steps (counted over the whole
                run), the batch loss is passed to ``on_log`` and shown as
                ``step_loss`` in the batch logs. 0: never.
            on_log: ``on_log(step, epoch, batch_loss)``. Defaults to nothing.

        Returns:
            The `keras.callbacks.History` (``.history``: ``{name: [value per epoch]}``).

        Raises:
            ArgumentError: On a `BackupAndRestore` callback, or a distribution
                strategy with more than one replica (except multi-worker, one
                replica per worker, over generators sharded as its replicas).
        """
        model = self.model
        verbose = 1 if verbose == "auto" else int(verbose)
        self.steps.check_devices(train_data, validation_data)
        callback_list = self._callback_list(callbacks, verbose=verbose, epochs=epochs, steps=len(train_data))
        history = next(c for c in callback_list.callbacks if isinstance(c, keras.callbacks.History))
        if getattr(model, "optimizer", None) is None:
            model.optimizer = self.optimizer  # so that checkpoints hold the optimizer state, as with fit
        model.stop_training = False
        callback_list.on_train_begin()
        self.global_step = initial_epoch * len(train_data)  # optimizer steps over the whole run
        logs: dict[str, float] = {}
        for epoch in range(initial_epoch, epochs):
            callback_list.on_epoch_begin(epoch)
            self._run_epoch(epoch, train_data, callback_list, log_every, on_log)
            logs = self._results(self.train_loss, self.train_metrics)
            if validation_data is not None:
                logs.update({f"val_{k}": v for k, v in self.evaluate(validation_data, callback_list).items()})
            callback_list.on_epoch_end(epoch, logs)
            if model.stop_training:
                break
        callback_list.on_train_end(logs)
        return history


class TapeRunner(Loop):
    """The ``tape`` loop of `kpipe.training.train`: a `TapeLoop` over the run's model, loss and optimizer.

    The model is compiled too (same optimizer object), so that evaluation,
    prediction and checkpoints work as for `fit`.
    """

    name = "tape"

    def prepare(self, net: keras.Model, loss: keras.losses.Loss) -> keras.Model:
        metrics = [lambda: accuracy_metric(self.label_mode), *self.metrics]
        self.tape = TapeLoop(net, loss, self.optimizer(), metrics=metrics, label_mode=self.label_mode,
                             clip_norm=self.config.clip_norm, mixed_precision=self.mixed_precision)
        net.compile(optimizer=self.tape.optimizer, loss=loss, metrics=self.compiled_metrics(), auto_scale_loss=False)
        return net

    def fit(self, model: keras.Model, train: Any, *, validation: Any, epochs: int, initial_epoch: int,
            callbacks: list[keras.callbacks.Callback], verbose: int | str) -> None:
        self.tape.fit(train, epochs=epochs, initial_epoch=initial_epoch, validation_data=validation,
                      callbacks=callbacks, verbose=verbose, log_every=self.config.log_every)
