"""The ``step`` and ``tape`` loops in JAX's native form: pure functions of the variables, `jax.value_and_grad`.

Imported only when the Keras backend is ``jax`` (`kpipe.training.loops.native`).
On JAX a step cannot change variables: it takes their values and returns new
ones. The forward pass runs on given values (`keras.Model.stateless_call`, or
the model called inside a `keras.StatelessScope` that maps each variable to a
value: what `stateless_call` does), `jax.value_and_grad` differentiates the
loss with respect to the trainable values, and the optimizer's update runs on
values too (`keras.optimizers.Optimizer.stateless_apply`, or ``apply`` inside
a `StatelessScope`). The new non-trainable values carry the seed-generator
state of Dropout-like layers, so the masks change from step to step as in `fit`.

`StepMixin` gives `kpipe.training.KpipeModel` its `train_step(state, data)` /
`test_step(state, data)`, which Keras' JAX trainer compiles with `jax.jit`;
its extension points (``compute_loss`` with ``extra_loss``,
``transform_gradients``, ``apply_update``) are written with stateful Keras
calls and run inside a `StatelessScope`, so the same subclass works on
every backend. `TapeSteps` are the `jax.jit`-compiled steps of
`kpipe.training.TapeLoop`; it writes the new values back into the variables
after each step, so that callbacks, checkpoints and evaluation see them.

Reference: the Keras guides "Customizing what happens in fit() with JAX" and
"Writing a training loop from scratch in JAX", and `JAXTrainer.train_step`
(keras/src/backend/jax/trainer.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import keras


def _mapping(*pairs: tuple[Sequence[Any], Sequence[Any]]) -> list[tuple[Any, Any]]:
    """``[(variable, value), ...]`` for a `keras.StatelessScope`, from (variables, values) pairs."""
    return [item for variables, values in pairs for item in zip(variables, values)]


def _values(scope: keras.StatelessScope, variables: Sequence[Any]) -> list[Any]:
    """The values ``variables`` have at the end of ``scope``."""
    return [scope.get_current_value(v) for v in variables]


class StepMixin:
    """`KpipeModel`'s steps on JAX: ``train_step(state, data) -> (logs, state)``, as `JAXTrainer` calls them.

    ``state`` is ``(trainable, non_trainable, optimizer, metrics)`` values for
    training and ``(trainable, non_trainable, metrics)`` for evaluation, each
    a list in the order of the model's (optimizer's) variable lists.
    """

    def num_replicas(self) -> int:
        """One: kpipe trains on one device on JAX."""
        return 1

    def apply_optimizer(self, grads: list[Any]) -> None:
        """``optimizer.stateless_apply`` on the current values, then assigned (`KpipeModel.apply_update`'s default).

        Called inside the step's `keras.StatelessScope`: reading a variable
        gives its value in the scope, assigning records the new one.
        """
        optimizer, variables = self.optimizer, self.trainable_variables
        trainable, optimizer_values = optimizer.stateless_apply(
            [keras.ops.convert_to_tensor(v) for v in optimizer.variables], grads,
            [keras.ops.convert_to_tensor(v) for v in variables])
        for variable, value in zip((*variables, *optimizer.variables), (*trainable, *optimizer_values)):
            variable.assign(value)

    def _stateless_loss(self, trainable: list[Any], non_trainable: list[Any], metrics: list[Any],
                        optimizer: list[Any] | None, x: Any, y: Any, sample_weight: Any, training: bool
                        ) -> tuple[Any, tuple[Any, Any, list[Any], list[Any]]]:
        """``(scaled loss, (loss, y_pred, non_trainable, metrics))``: a pure function of the values, for `jax.grad`.

        The call and `compute_loss` run in one scope that collects the losses
        of the call (``add_loss``), so ``self.losses`` holds them as on the
        other backends; the ``loss`` metric is updated there too.
        """
        pairs = [(self.trainable_variables, trainable), (self.non_trainable_variables, non_trainable),
                 (self.metrics_variables, metrics)]
        if optimizer is not None:
            pairs.append((self.optimizer.variables, optimizer))
        with keras.StatelessScope(state_mapping=_mapping(*pairs), collect_losses=True) as scope:
            y_pred = self(x, training=training)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
            self._update_loss_metric(loss, x)
            scaled_loss = self.optimizer.scale_loss(loss) if training else loss  # identity unless loss scaling
        return scaled_loss, (loss, y_pred, _values(scope, self.non_trainable_variables),
                             _values(scope, self.metrics_variables))

    def train_step(self, state: tuple[list[Any], ...], data: Any) -> tuple[dict[str, Any], tuple[list[Any], ...]]:
        """One training step on a batch ``(x, y)`` or ``(x, y, sample_weight)``; returns ``(logs, new state)``."""
        trainable, non_trainable, optimizer, metrics = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        grad_fn = jax.value_and_grad(self._stateless_loss, has_aux=True)
        (_, (loss, y_pred, non_trainable, metrics)), grads = grad_fn(
            trainable, non_trainable, metrics, optimizer, x, y, sample_weight, True)
        groups = (self.trainable_variables, self.non_trainable_variables, self.optimizer.variables,
                  self.metrics_variables)
        with keras.StatelessScope(state_mapping=_mapping(*zip(groups, (trainable, non_trainable, optimizer,
                                                                        metrics)))) as scope:
            grads = self.transform_gradients(grads)
            self.apply_update(grads)  # new trainable and optimizer values in the scope
            logs = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        return logs, tuple(_values(scope, group) for group in groups)

    def test_step(self, state: tuple[list[Any], ...], data: Any) -> tuple[dict[str, Any], tuple[list[Any], ...]]:
        """One evaluation step (``training=False``); returns ``(logs, new state)``."""
        trainable, non_trainable, metrics = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        _, (_, y_pred, non_trainable, metrics) = self._stateless_loss(
            trainable, non_trainable, metrics, None, x, y, sample_weight, False)
        groups = (self.trainable_variables, self.non_trainable_variables, self.metrics_variables)
        with keras.StatelessScope(state_mapping=_mapping(*zip(groups, (trainable, non_trainable, metrics)))) as scope:
            logs = self._test_results(x, y, y_pred, sample_weight)
        return logs, (trainable, non_trainable, _values(scope, self.metrics_variables))


class TapeSteps:
    """`TapeLoop`'s steps on JAX: `stateless_call`, `jax.value_and_grad`, `stateless_apply`, under `jax.jit`.

    Each call reads the variables' values, runs the compiled pure step and
    writes the new values back (model, optimizer, metrics).

    Args:
        loop: The `TapeLoop` (its model, loss, optimizer and metrics).
        jit_compile: Not used: JAX steps are always compiled by `jax.jit` (XLA).
    """

    def __init__(self, loop: Any, *, jit_compile: bool = False) -> None:
        self.loop = loop
        self._train = jax.jit(self._train_values)
        self._test = jax.jit(self._test_values)

    @staticmethod
    def check_devices(*datasets: Any) -> None:
        """Nothing to check: kpipe trains on one device on JAX."""

    def _groups(self, training: bool) -> list[list[Any]]:
        loop = self.loop
        metrics = [loop.train_loss, *loop.train_metrics] if training else [loop.val_loss, *loop.val_metrics]
        groups = [loop.model.trainable_variables, loop.model.non_trainable_variables,
                  [v for m in metrics for v in m.variables]]
        return [*groups, loop.optimizer.variables] if training else groups

    def _run(self, step: Any, training: bool, x: Any, y: Any, sample_weight: Any) -> Any:
        groups = self._groups(training)
        loss, state = step([[v.value for v in group] for group in groups], x, y, sample_weight)
        for group, values in zip(groups, state):
            for variable, value in zip(group, values):
                variable.assign(value)
        return loss

    def train(self, x: Any, y: Any, sample_weight: Any) -> Any:
        """One training step; the variables hold the new values afterwards. Returns the batch loss."""
        return self._run(self._train, True, x, y, sample_weight)

    def test(self, x: Any, y: Any, sample_weight: Any) -> Any:
        """One evaluation step (``training=False``); updates the validation metrics. Returns the batch loss."""
        return self._run(self._test, False, x, y, sample_weight)

    def _metrics(self, values: list[Any], training: bool, x: Any, y: Any, y_pred: Any, loss: Any,
                 sample_weight: Any) -> list[Any]:
        """The metric values after `TapeLoop.update_metrics` on ``values`` (run in a `StatelessScope`)."""
        loop = self.loop
        loss_metric, metrics = (loop.train_loss, loop.train_metrics) if training else (loop.val_loss, loop.val_metrics)
        variables = [v for m in (loss_metric, *metrics) for v in m.variables]
        with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
            loop.update_metrics(loss_metric, metrics, x, y, y_pred, loss, sample_weight)
        return _values(scope, variables)

    def _train_values(self, state: list[list[Any]], x: Any, y: Any, sample_weight: Any) -> tuple[Any, list[Any]]:
        loop, model, optimizer = self.loop, self.loop.model, self.loop.optimizer
        trainable, non_trainable, metrics, optimizer_values = state

        def loss_fn(trainable: list[Any]) -> tuple[Any, tuple[Any, Any, list[Any]]]:
            y_pred, new_non_trainable, losses = model.stateless_call(trainable, non_trainable, x, training=True,
                                                                     return_losses=True)
            loss = loop.loss_value(y, y_pred, sample_weight, losses)
            with keras.StatelessScope(state_mapping=list(zip(optimizer.variables, optimizer_values))):
                scaled_loss = optimizer.scale_loss(loss)  # identity unless LossScaleOptimizer
            return scaled_loss, (loss, y_pred, new_non_trainable)

        (_, (loss, y_pred, non_trainable)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        trainable, optimizer_values = optimizer.stateless_apply(optimizer_values, grads, trainable)
        metrics = self._metrics(metrics, True, x, y, y_pred, loss, sample_weight)
        return loss, [trainable, non_trainable, metrics, optimizer_values]

    def _test_values(self, state: list[list[Any]], x: Any, y: Any, sample_weight: Any) -> tuple[Any, list[Any]]:
        loop, model = self.loop, self.loop.model
        trainable, non_trainable, metrics = state
        y_pred, non_trainable, losses = model.stateless_call(trainable, non_trainable, x, training=False,
                                                             return_losses=True)
        loss = loop.loss_value(y, y_pred, sample_weight, losses)
        return loss, [trainable, non_trainable, self._metrics(metrics, False, x, y, y_pred, loss, sample_weight)]
