"""The training loops: one small module per loop behind one interface, `Loop`, chosen through `LOOPS`.

=========  =====================  ==================================================================
name       module                 what runs
=========  =====================  ==================================================================
``fit``    `loops.fit`            `keras.Model.fit`
``step``   `loops.step`           `KpipeModel`: `train_step` / `test_step` written out, run by `fit`
``tape``   `loops.tape`           `TapeLoop`: an explicit loop over epochs and batches
=========  =====================  ==================================================================

Every loop runs on the Keras backends TensorFlow, JAX and PyTorch. The steps
of ``step`` and ``tape`` are written in each backend's native form, one module
per backend (`native` imports the one in use, so a JAX or PyTorch run never
imports TensorFlow):

====================  ==============================================================================
module                form
====================  ==============================================================================
`native_tensorflow`   `tf.GradientTape` + ``tape.gradient``, compiled by `tf.function`
`native_jax`          pure functions of the variables' values (`keras.StatelessScope`,
                      ``stateless_call``) + `jax.value_and_grad` + ``stateless_apply``, `jax.jit`
`native_torch`        ``zero_grad()``, ``loss.backward()``, ``variable.value.grad``, ``optimizer.apply``
====================  ==============================================================================

`LOOPS` maps a name to ``"module:Class"``; `get_loop` imports only the loop in use.
"""

from __future__ import annotations

import importlib
from types import ModuleType

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


def native() -> ModuleType:
    """The module of the Keras backend in use holding the native ``step`` / ``tape`` steps (imported now).

    ``kpipe.training.loops.native_<backend>``: its ``StepMixin`` gives
    `KpipeModel` its ``train_step`` / ``test_step``, its ``TapeSteps`` the
    steps of `TapeLoop`.

    Raises:
        ArgumentError: On a backend kpipe cannot train on (see `kpipe.training.distribute.check_backend`).
    """
    from kpipe.training.distribute import check_backend

    return importlib.import_module(f"kpipe.training.loops.native_{check_backend()}")
