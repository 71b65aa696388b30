"""The ``fit`` loop: `keras.Model.fit`, with clipping and accumulation by the optimizer."""

from __future__ import annotations

from typing import Any

import keras

from kpipe.training.loops.base import Loop


class FitLoop(Loop):
    """`model.compile` + `model.fit`: Keras' own loop.

    ``clip_norm`` is the optimizer's ``global_clipnorm`` and
    ``accumulation_steps`` its ``gradient_accumulation_steps``; with mixed
    precision `compile` wraps the optimizer in `keras.optimizers.LossScaleOptimizer`.
    """

    name = "fit"

    def prepare(self, net: keras.Model, loss: keras.losses.Loss) -> keras.Model:
        # data-parallel batches are padded with zero-weight rows (`kpipe.training.distribute`): the metrics
        # count by the weights, so the padding counts for nothing
        key = "weighted_metrics" if getattr(self.config, "distribute", None) == "data-parallel" else "metrics"
        net.compile(optimizer=self.optimizer(global_clipnorm=self.config.clip_norm), loss=loss,
                    **{key: self.compiled_metrics()})
        return net

    def fit(self, model: keras.Model, train: Any, *, validation: Any, epochs: int, initial_epoch: int,
            callbacks: list[keras.callbacks.Callback], verbose: int | str) -> None:
        model.fit(
            train,
            validation_data=validation,
            epochs=epochs,
            initial_epoch=initial_epoch,
            shuffle=False,  # the generator shuffles samples; Keras' shuffle would only reorder batches
            callbacks=callbacks,
            verbose=verbose,
        )
