"""The ``step`` and ``tape`` loops in PyTorch's native form: ``loss.backward()``, then ``optimizer.apply``.

Imported only when the Keras backend is ``torch`` (`kpipe.training.loops.native`).
`StepMixin` gives `kpipe.training.KpipeModel` its `train_step` / `test_step`;
`TapeSteps` the steps of `kpipe.training.TapeLoop`. Both run eagerly: the
gradients are those autograd leaves in each variable's ``.grad``
(``variable.value`` is a `torch.nn.Parameter`), cleared by ``zero_grad()``
before each step, and the update runs under `torch.no_grad`.

Reference: the Keras guides "Customizing what happens in fit() with PyTorch"
and "Writing a training loop from scratch in PyTorch", and
`TorchTrainer.train_step` (keras/src/backend/torch/trainer.py).
"""

from __future__ import annotations

from typing import Any

import keras
import torch

from kpipe.training.loops.eager_test_step import EagerTestStep


def _tensors(*values: Any) -> tuple[Any, ...]:
    """Numpy batches as tensors on Keras' device (`None` stays `None`)."""
    return tuple(keras.tree.map_structure(keras.ops.convert_to_tensor, v) if v is not None else None for v in values)


class StepMixin(EagerTestStep):
    """`KpipeModel`'s steps on PyTorch: forward, ``loss.backward()``, the gradients of ``.grad``, the update.

    The steps call the model's extension points (``compute_loss`` with
    ``extra_loss``, ``transform_gradients``, ``apply_update``); `fit` runs them.
    """

    def num_replicas(self) -> int:
        """One: kpipe trains on one device on PyTorch."""
        return 1

    def apply_optimizer(self, grads: list[Any]) -> None:
        """``optimizer.apply(grads, trainable_variables)`` (`KpipeModel.apply_update`'s default)."""
        self.optimizer.apply(grads, self.trainable_variables)

    def train_step(self, data: Any) -> dict[str, Any]:
        """One training step on a batch ``(x, y)`` or ``(x, y, sample_weight)``; returns the metric results."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = self(x, training=True)
        self.zero_grad()  # torch.nn.Module.zero_grad: no gradient left over from the last step
        loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
        self._update_loss_metric(loss, x)
        self.optimizer.scale_loss(loss).backward()  # identity scale unless a LossScaleOptimizer
        grads = [v.value.grad for v in self.trainable_variables]
        with torch.no_grad():
            grads = self.transform_gradients(grads)
            self.apply_update(grads)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


class TapeSteps:
    """`TapeLoop`'s steps on PyTorch: ``zero_grad()``, forward, ``backward()``, ``optimizer.apply``; eager.

    Args:
        loop: The `TapeLoop` (its model, loss, optimizer and metrics).
        jit_compile: Not used: the steps run eagerly on PyTorch.
    """

    def __init__(self, loop: Any, *, jit_compile: bool = False) -> None:
        self.loop = loop

    @staticmethod
    def check_devices(*datasets: Any) -> None:
        """Nothing to check: kpipe trains on one device on PyTorch."""

    def train(self, x: Any, y: Any, sample_weight: Any) -> Any:
        """One training step; returns the batch loss (detached)."""
        loop, model = self.loop, self.loop.model
        x, y, sample_weight = _tensors(x, y, sample_weight)
        model.zero_grad()
        y_pred = model(x, training=True)  # training=True: Dropout / BatchNormalization train behaviour
        loss = loop.loss_value(y, y_pred, sample_weight, model.losses)
        loop.optimizer.scale_loss(loss).backward()  # identity scale unless LossScaleOptimizer
        variables = model.trainable_variables
        grads = [v.value.grad for v in variables]
        with torch.no_grad():
            loop.optimizer.apply(grads, variables)
            loop.update_metrics(loop.train_loss, loop.train_metrics, x, y, y_pred, loss, sample_weight)
        return loss.detach()

    def test(self, x: Any, y: Any, sample_weight: Any) -> Any:
        """One evaluation step (``training=False``, no gradients); returns the batch loss."""
        loop, model = self.loop, self.loop.model
        x, y, sample_weight = _tensors(x, y, sample_weight)
        with torch.no_grad():
            y_pred = model(x, training=False)
            loss = loop.loss_value(y, y_pred, sample_weight, model.losses)
            loop.update_metrics(loop.val_loss, loop.val_metrics, x, y, y_pred, loss, sample_weight)
        return loss
