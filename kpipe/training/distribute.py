"""Distribution strategy and mixed precision for a training run.

The hook is `get_strategy`: ``"auto"`` (the default) gives TensorFlow's
default strategy (one device) unless several GPUs are visible, then
`tf.distribute.MirroredStrategy` over all of them (data parallel: each batch
is split across the GPUs, gradients are all-reduced). ``"none"`` forces one
device, ``"mirrored"`` asks for MirroredStrategy. A `tf.distribute.Strategy`
instance can also be passed to `kpipe.training.train(..., strategy=...)`.

The model, its optimizer and metrics are created under ``strategy.scope()``;
`fit` and the ``step`` loop then run distributed by Keras. The ``tape`` loop
runs on one device and refuses a strategy with more than one replica.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from typing import TYPE_CHECKING, Any

import keras

from kpipe._validation import check_text_choice

if TYPE_CHECKING:
    import tensorflow as tf

STRATEGIES = ("auto", "none", "mirrored")


def get_strategy(name: str | tf.distribute.Strategy | Any | None = "auto") -> tf.distribute.Strategy:
    """The distribution strategy of a run.

    Args:
        name: ``"auto"`` (MirroredStrategy when more than one GPU is visible,
            else the default one-device strategy), ``"none"`` (one device),
            ``"mirrored"`` (MirroredStrategy over the visible GPUs, or the CPU),
            or a strategy instance (returned as is). Defaults to ``"auto"``.

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ArgumentError: On an unknown name.
    """
    import tensorflow as tf  # this hook is TensorFlow's: imported only when a run asks for a strategy

    if isinstance(name, tf.distribute.Strategy):
        return name
    name = check_text_choice(name or "auto", "distribute", STRATEGIES)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


@contextlib.contextmanager
def dtype_policy(mixed_precision: bool) -> Iterator[str]:
    """Set the Keras global dtype policy for the duration of a run, then restore the previous one.

    ``mixed_precision=True`` selects ``"mixed_float16"``: layers compute in
    float16 and keep float32 variables; `fit` / the ``step`` loop wrap the
    optimizer in `keras.optimizers.LossScaleOptimizer` (Keras'
    ``compile(auto_scale_loss=True)``), the ``tape`` loop does it explicitly.
    Worth it on GPUs with float16 units (compute capability >= 7.0); on a
    CPU it is slower.

    Yields:
        The policy name in force.
    """
    previous = keras.config.dtype_policy()
    if mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    try:
        yield keras.config.dtype_policy().name
    finally:
        keras.config.set_dtype_policy(previous)


def output_dtype_warning(model: keras.Model) -> str | None:
    """A message if a mixed-precision model's output is float16 (softmax in float16 loses precision)."""
    try:
        dtype = keras.backend.standardize_dtype(model.outputs[0].dtype)
    except (AttributeError, IndexError, ValueError):
        return None
    if dtype == "float16":
        return ("With --mixed-precision the model's last layer should compute in float32 "
                "(e.g. Dense(num_classes, activation='softmax', dtype='float32')); it outputs float16.")
    return None



def mixed_precision_warning() -> str | None:
    """A message if ``--mixed-precision`` is asked for and no GPU is visible (float16 is slower on a CPU)."""
    import tensorflow as tf  # the device list is TensorFlow's, as the strategy

    if tf.config.list_logical_devices("GPU"):
        return None
    return ("--mixed-precision without a GPU: float16 is emulated on the CPU, so training is slower, not faster. "
            "Drop --mixed-precision on this machine.")
