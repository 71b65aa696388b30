"""The training loops: one small module per loop behind one interface, `Loop`, chosen through `LOOPS`.

=========  =====================  ==================================================================
name       module                 what runs
=========  =====================  ==================================================================
``fit``    `loops.fit`            `keras.Model.fit`
``step``   `loops.step`           `KpipeModel`: `train_step` / `test_step` written out, run by `fit`
``tape``   `loops.tape`           `TapeLoop`: an explicit `tf.GradientTape` loop
=========  =====================  ==================================================================

`LOOPS` maps a name to ``"module:Class"``; `get_loop` imports only the loop in
use, so the TensorFlow-specific code of ``step`` and ``tape`` loads only when
that loop runs (a loop per Keras backend slots in here the same way).
"""

from __future__ import annotations

import importlib

from kpipe.errors import ArgumentError

LOOPS: dict[str, str] = {
    "fit": "kpipe.training.loops.fit:FitLoop",
    "step": "kpipe.training.loops.step:StepLoop",
    "tape": "kpipe.training.loops.tape:TapeRunner",
}
"""Loop name -> ``"module:Class"`` of its `Loop` (``TrainConfig.loop``)."""


def get_loop(name: str) -> type:
    """The `Loop` class registered as ``name`` in `LOOPS` (its module is imported now).

    Raises:
        ArgumentError: If ``name`` is not a registered loop.
    """
    if name not in LOOPS:
        raise ArgumentError(f"`loop` must be one of {', '.join(LOOPS)}. Received: loop={name!r}")
    module, _, attr = LOOPS[name].partition(":")
    return getattr(importlib.import_module(module), attr)
