"""The evaluation step `KpipeModel` shares on TensorFlow and PyTorch (JAX's is stateless: `native_jax`)."""

from __future__ import annotations

from typing import Any

import keras


class EagerTestStep:
    """``test_step`` for backends whose steps read and update the model's variables in place."""

    def test_step(self, data: Any) -> dict[str, Any]:
        """One evaluation step: forward pass with ``training=False``, loss and metrics updated."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = self(x, training=False)
        loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False)
        self._update_loss_metric(loss, x)
        return self._test_results(x, y, y_pred, sample_weight)
