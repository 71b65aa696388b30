"""The ``tape`` loop: epochs, then batches, `tf.GradientTape`, `optimizer.apply_gradients`.

Everything `model.fit` does is written out, so that each line can be read and
changed: the forward pass runs with ``training=True`` (Dropout and
BatchNormalization behave as in `fit`), sample weights are applied, the
training step is compiled by `tf.function`, metrics are reset at each epoch,
validation runs at each epoch's end, and the Keras callbacks given to `fit`
(ModelCheckpoint, EarlyStopping, CSVLogger, TensorBoard, BackupAndRestore,
ProgbarLogger...) are called through `keras.callbacks.CallbackList`.

With the same seed, data and model (no dropout), two epochs of this loop and of
`fit` give the same losses up to float rounding (see
``tests/test_training_loops.py::test_three_loops_agree``).
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable, Iterator
from typing import Any

import keras
import tensorflow as tf

from kpipe.errors import KpipeError

# ------------------------------------------------------------------ batches
_WORKER_DATASET: Any = None


def _init_worker(dataset: Any) -> None:
    global _WORKER_DATASET
    _WORKER_DATASET = dataset


def _worker_batch(index: int) -> Any:
    return _WORKER_DATASET[index]


def iterate_batches(dataset: keras.utils.PyDataset) -> Iterator[Any]:
    """Yield ``dataset[0], dataset[1], ...`` for one epoch, honouring its ``workers``.

    With ``workers > 1`` batches are made ahead (at most ``max_queue_size``) by
    threads, or by processes with ``use_multiprocessing=True`` (a new pool per
    epoch that receives the dataset as it is now, as Keras does); they are
    yielded in order either way.
    """
    n = len(dataset)
    workers = int(getattr(dataset, "workers", 1) or 1)
    if workers <= 1:
        for i in range(n):
            yield dataset[i]
        return
    ahead = max(int(getattr(dataset, "max_queue_size", 10) or 10), workers)
    if getattr(dataset, "use_multiprocessing", False):
        pool: cf.Executor = cf.ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(dataset,))
        get: Callable[[int], Any] = _worker_batch
    else:
        pool = cf.ThreadPoolExecutor(workers)
        get = dataset.__getitem__
    with pool:
        pending = [pool.submit(get, i) for i in range(min(ahead, n))]
        for i in range(n):
            batch = pending[i].result()
            pending[i] = None  # free it
            if i + ahead < n:
                pending.append(pool.submit(get, i + ahead))
            yield batch


def _unpack(batch: Any) -> tuple[Any, Any, Any]:
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(tuple(batch) if isinstance(batch, list) else batch)
    return x, y, sample_weight


def accuracy_metric(label_mode: str | None, name: str = "accuracy") -> keras.metrics.Metric:
    """The accuracy `fit` picks for ``metrics=["accuracy"]``, from the label mode."""
    if label_mode == "int":
        return keras.metrics.SparseCategoricalAccuracy(name=name)
    if label_mode == "binary":
        return keras.metrics.BinaryAccuracy(name=name)
    return keras.metrics.CategoricalAccuracy(name=name)


# ------------------------------------------------------------------ the loop
class TapeLoop:
    """An explicit training loop over a `keras.utils.PyDataset` (e.g. `kpipe.DataGenerator`).

    Args:
        model: The `keras.Model` to train (built).
        loss: A `keras.losses.Loss` (see `kpipe.training.build_loss`); called
            as ``loss(y, y_pred, sample_weight=...)``, reduced as in `fit`
            (``sum(loss_i * w_i) / batch_size``). Regularization losses
            (``model.losses``) are added.
        optimizer: A `keras.optimizers.Optimizer`. With ``mixed_precision``
            (or a ``mixed_float16`` global policy) it is wrapped in
            `keras.optimizers.LossScaleOptimizer`: the loss is scaled before
            the gradients, which are unscaled (and skipped when not finite)
            before the update.
        metrics: Metric factories (called twice: train and validation copies),
            each ``() -> keras.metrics.Metric``. Defaults to accuracy for
            ``label_mode``.
        label_mode: ``"int"``, ``"categorical"`` or ``"binary"``, for the
            default accuracy.
        clip_norm: Clip gradients by global norm (float > 0). Defaults to `None`.
        mixed_precision: Wrap the optimizer in `LossScaleOptimizer`. Defaults
            to `None`: when the global dtype policy is ``mixed_float16``.
        weighted_metrics: Weigh the metrics by the batches' sample weights
            (as Keras' ``compile(weighted_metrics=...)``). Defaults to `False`,
            as ``compile(metrics=...)``: the loss is weighted, the metrics are not.
        jit_compile: Passed to `tf.function` (XLA). Defaults to `False`.

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
        if mixed_precision and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        self.model = model
        self.loss = loss
        self.optimizer = optimizer
        self.clip_norm = clip_norm
        self.weighted_metrics = weighted_metrics
        factories = metrics or [lambda: accuracy_metric(label_mode)]
        self.train_loss = keras.metrics.Mean(name="loss")
        self.train_metrics = [f() for f in factories]
        self.val_loss = keras.metrics.Mean(name="loss")
        self.val_metrics = [f() for f in factories]
        self.optimizer.build(model.trainable_variables)
        self._train_step = tf.function(self._train_step_eager, reduce_retracing=True, jit_compile=jit_compile)
        self._test_step = tf.function(self._test_step_eager, reduce_retracing=True, jit_compile=jit_compile)

    # ------------------------------------------------------------ the steps
    def _loss_value(self, y: Any, y_pred: Any, sample_weight: Any) -> Any:
        loss = self.loss(y, y_pred, sample_weight=sample_weight)
        extra = self.model.losses  # regularization and add_loss terms, as compute_loss adds them
        if extra:
            loss = loss + keras.ops.sum(keras.ops.stack([keras.ops.cast(keras.ops.sum(e), loss.dtype)
                                                         for e in extra]))
        return loss

    def _train_step_eager(self, x: Any, y: Any, sample_weight: Any) -> Any:
        with tf.GradientTape() as tape:
            y_pred = self.model(x, training=True)  # training=True: Dropout / BatchNormalization train behaviour
            loss = self._loss_value(y, y_pred, sample_weight)
            scaled_loss = self.optimizer.scale_loss(loss)  # identity unless LossScaleOptimizer
        variables = self.model.trainable_variables
        grads = tape.gradient(scaled_loss, variables)
        if self.clip_norm:
            grads = self._clip(grads)
        self.optimizer.apply_gradients(zip(grads, variables))
        self.train_loss.update_state(loss, sample_weight=tf.shape(x)[0])  # Keras: mean weighted by batch size
        for metric in self.train_metrics:
            # as compile(metrics=...): unweighted (Keras weighs only `weighted_metrics`)
            metric.update_state(y, y_pred, sample_weight=sample_weight if self.weighted_metrics else None)
        return loss

    def _clip(self, grads: list[Any]) -> list[Any]:
        from kpipe.training.step import clip_by_global_norm

        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            scale = self.optimizer.dynamic_scale  # built in __init__
            grads = [None if g is None else g / tf.cast(scale, g.dtype) for g in grads]
            clipped, _ = clip_by_global_norm(grads, float(self.clip_norm))
            return [None if g is None else g * tf.cast(scale, g.dtype) for g in clipped]
        return clip_by_global_norm(grads, float(self.clip_norm))[0]

    def _test_step_eager(self, x: Any, y: Any, sample_weight: Any) -> Any:
        y_pred = self.model(x, training=False)
        loss = self._loss_value(y, y_pred, sample_weight)
        self.val_loss.update_state(loss, sample_weight=tf.shape(x)[0])
        for metric in self.val_metrics:
            metric.update_state(y, y_pred, sample_weight=sample_weight if self.weighted_metrics else None)
        return loss

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

    def evaluate(self, data: keras.utils.PyDataset, callbacks: keras.callbacks.CallbackList | None = None
                 ) -> dict[str, float]:
        """Loss and metrics on ``data`` (``training=False``), as ``{name: value}``; resets them first."""
        for metric in (self.val_loss, *self.val_metrics):
            metric.reset_state()
        if callbacks is not None:
            callbacks.on_test_begin()
        for step, batch in enumerate(iterate_batches(data)):
            if callbacks is not None:
                callbacks.on_test_batch_begin(step)
            x, y, sw = _unpack(batch)
            self._test_step(x, y, sw)
            if callbacks is not None:
                callbacks.on_test_batch_end(step, self._results(self.val_loss, self.val_metrics))
        logs = self._results(self.val_loss, self.val_metrics)
        if callbacks is not None:
            callbacks.on_test_end(logs)
        if hasattr(data, "on_epoch_end"):
            data.on_epoch_end()
        return logs

    # ------------------------------------------------------------- the loop
    def fit(self, train_data: keras.utils.PyDataset, *, epochs: int, initial_epoch: int = 0,
            validation_data: keras.utils.PyDataset | None = None,
            callbacks: list[keras.callbacks.Callback] | None = None, verbose: int | str = "auto",
            log_every: int = 0, on_log: Callable[[int, int, float], None] | None = None) -> keras.callbacks.History:
        """Train for ``epochs - initial_epoch`` epochs.

        Args:
            train_data: Batches ``(x, y)`` or ``(x, y, sample_weight)``;
                ``len(train_data)`` batches per epoch; ``on_epoch_end`` is
                called after each epoch (the sampler moves on).
            epochs: Index of the last epoch + 1 (as `fit`).
            initial_epoch: Epoch to start at (as `fit`; resuming).
                `keras.callbacks.BackupAndRestore` may move it further.
            validation_data: Evaluated at each epoch's end; its results are
                logged with the prefix ``val_``.
            callbacks: Keras callbacks; `CallbackList` adds History and (unless
                ``verbose=0``) the progress bar.
            verbose: 0 silent, 1 progress bar, 2 one line per epoch, ``"auto"`` 1.
            log_every: Every this many optimizer steps (counted over the whole
                run), the batch loss is passed to ``on_log`` and shown as
                ``step_loss`` in the batch logs. 0: never.
            on_log: ``on_log(step, epoch, batch_loss)``. Defaults to nothing.

        Returns:
            The `keras.callbacks.History` (``.history``: ``{name: [value per epoch]}``).
        """
        model = self.model
        verbose = 1 if verbose == "auto" else int(verbose)
        strategy = tf.distribute.get_strategy()
        if strategy.num_replicas_in_sync > 1:
            raise KpipeError(
                f"The tape loop runs on one device, but the distribution strategy has "
                f"{strategy.num_replicas_in_sync} replicas. Use --loop fit or --loop step (Keras distributes them), "
                "or --distribute none."
            )
        steps = len(train_data)
        callback_list = callbacks if isinstance(callbacks, keras.callbacks.CallbackList) else \
            keras.callbacks.CallbackList(callbacks or [], add_history=True, add_progbar=verbose != 0, model=model,
                                         verbose=verbose, epochs=epochs, steps=steps)
        if getattr(model, "optimizer", None) is None:
            model.optimizer = self.optimizer  # so that checkpoints hold the optimizer state, as with fit
        model.stop_training = False
        callback_list.on_train_begin()
        restored = getattr(model, "_initial_epoch", None)  # set by BackupAndRestore in on_train_begin
        if restored:
            initial_epoch = int(restored)
            if hasattr(train_data, "epoch"):
                train_data.epoch = initial_epoch
        global_step = initial_epoch * steps
        logs: dict[str, float] = {}
        for epoch in range(initial_epoch, epochs):
            self.train_loss.reset_state()
            for metric in self.train_metrics:
                metric.reset_state()
            callback_list.on_epoch_begin(epoch)
            for step, batch in enumerate(iterate_batches(train_data)):
                callback_list.on_train_batch_begin(step)
                x, y, sw = _unpack(batch)
                loss = self._train_step(x, y, sw)
                global_step += 1
                logs = self._results(self.train_loss, self.train_metrics)
                if log_every and global_step % log_every == 0:
                    logs["step_loss"] = float(loss)
                    if on_log is not None:
                        on_log(global_step, epoch, logs["step_loss"])
                callback_list.on_train_batch_end(step, logs)
                if model.stop_training:
                    break
            epoch_logs = self._results(self.train_loss, self.train_metrics)
            if validation_data is not None:
                epoch_logs.update({f"val_{k}": v for k, v in self.evaluate(validation_data, callback_list).items()})
            callback_list.on_epoch_end(epoch, epoch_logs)
            if hasattr(train_data, "on_epoch_end"):
                train_data.on_epoch_end()
            logs = epoch_logs
            if model.stop_training:
                break
        callback_list.on_train_end(logs)
        return model.history
