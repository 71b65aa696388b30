"""Default models: a small CNN for images, an MLP for vectors."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import keras

from kpipe.errors import KpipeError
from kpipe.training.loading import load_object


def default_model(input_shape: Sequence[int], num_classes: int, *,
                  normalizer: keras.layers.Layer | None = None, binary: bool = False) -> keras.Model:
    """A small model suited to the sample shape; outputs softmax probabilities.

    * ``(H, W, C)`` or ``(H, W)``: a CNN of up to three blocks
      Conv2D-Conv2D-MaxPooling2D (32, 64, 128 filters; a block is added while
      the feature map is at least 8x8), then global average pooling (large
      maps) or flatten, Dense(128), Dropout(0.3) and the softmax layer;
    * anything else: an MLP, Flatten-Dense(128)-Dropout(0.2)-Dense(64) and
      the softmax layer.

    The last layer is ``Dense(num_classes, activation="softmax")`` (with
    ``binary=True``: ``Dense(1, activation="sigmoid")``), so losses take
    ``from_logits=False`` (`kpipe.training.losses.model_outputs` reads it). It
    computes in float32 whatever the dtype policy (as Keras recommends for
    mixed precision: a float16 softmax loses precision).

    Every random layer gets an explicit seed, drawn from Python's `random`
    (which `kpipe.training.train` seeds) as Keras draws a default seed: on
    TensorFlow and JAX the masks are the same as unseeded; on PyTorch, where
    an unseeded Dropout uses torch's global generator, a seeded one draws from
    its own `keras.random.SeedGenerator`, whose state the run checkpoint saves
    (exact resume).

    Args:
        input_shape: Shape of one sample, e.g. ``(8, 8, 1)``.
        num_classes: Number of classes (>= 2).
        normalizer: Optional preprocessing layer applied to the input first
            (e.g. an adapted `keras.layers.Normalization`).
        binary: One sigmoid output (for ``label_mode="binary"``, 2 classes)
            instead of ``num_classes`` softmax outputs. Defaults to `False`.

    Returns:
        An uncompiled `keras.Model`.
    """
    input_shape = tuple(int(d) for d in input_shape)
    inputs = keras.Input(shape=input_shape, name="x")
    x = normalizer(inputs) if normalizer is not None else inputs
    if len(input_shape) in (2, 3):
        if len(input_shape) == 2:
            x = keras.layers.Reshape((*input_shape, 1))(x)
        h, w = input_shape[0], input_shape[1]
        for filters in (32, 64, 128):
            x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
            x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
            if min(h, w) < 8:
                break
            x = keras.layers.MaxPooling2D(2)(x)
            h, w = h // 2, w // 2
        x = keras.layers.GlobalAveragePooling2D()(x) if h * w > 16 else keras.layers.Flatten()(x)
        x = keras.layers.Dense(128, activation="relu")(x)
        x = keras.layers.Dropout(0.3, seed=_layer_seed())(x)
        name = "kpipe_cnn"
    else:
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(128, activation="relu")(x)
        x = keras.layers.Dropout(0.2, seed=_layer_seed())(x)
        x = keras.layers.Dense(64, activation="relu")(x)
        name = "kpipe_mlp"
    if binary:
        outputs = keras.layers.Dense(1, activation="sigmoid", name="probabilities", dtype="float32")(x)
    else:
        outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


def _layer_seed() -> int:
    """A seed for a random layer, as Keras' default (``random.randint(1, 10**9)``, Python's seeded generator)."""
    return random.randint(1, 10**9)


def build_model(spec: str | Callable[..., keras.Model] | None, input_shape: Sequence[int], num_classes: int,
                **default_kwargs) -> keras.Model:
    """Build the default model, or call a user factory.

    Args:
        spec: `None` or ``"default"`` for `default_model`; a callable, or
            ``"module:function"`` / ``"path.py:function"``, called as
            ``factory(input_shape=..., num_classes=...)``.
        input_shape: Shape of one sample.
        num_classes: Number of classes.
        **default_kwargs: Passed to `default_model` only.

    Returns:
        A `keras.Model`.

    Raises:
        LoadError: If the factory cannot be loaded.
        KpipeError: If the factory fails or returns something other than a `keras.Model`.
    """
    if spec is None or spec == "default":
        return default_model(input_shape, num_classes, **default_kwargs)
    factory = load_object(spec, what="model factory") if isinstance(spec, str) else spec
    try:
        model = factory(input_shape=tuple(input_shape), num_classes=num_classes)
    except TypeError as e:
        raise KpipeError(
            f"The model factory {spec!r} must accept `input_shape` and `num_classes` keyword arguments: {e}"
        ) from e
    if not isinstance(model, keras.Model):
        raise KpipeError(f"The model factory {spec!r} returned {type(model).__name__}, not a keras.Model.")
    return model


def adapted_normalizer(data: Any, max_samples: int = 10_000) -> keras.layers.Normalization:
    """A per-feature `Normalization` layer adapted on (up to) ``max_samples`` samples of ``data``.

    Args:
        data: A `kpipe.DataGenerator` (its ``ids`` and ``store`` are read, in manifest order).
        max_samples: Samples read at most.
    """
    x = data.store.read_many(list(data.ids)[:max_samples]).astype("float32")
    layer = keras.layers.Normalization(axis=-1)
    layer.adapt(x)
    return layer


def plain_model(net: keras.Model) -> keras.Model:
    """A plain functional model over the layers of ``net`` (what ``model.keras`` holds).

    `KpipeModel` subclasses and other functional subclasses become a
    `keras.Model`, so that ``model.keras`` loads without their code; a model
    without functional inputs (subclassed) is returned as it is.
    """
    try:
        inputs, outputs = net.inputs, net.outputs
    except (AttributeError, ValueError):
        return net
    if not inputs or not outputs:
        return net
    inputs = inputs[0] if len(inputs) == 1 else inputs
    outputs = outputs[0] if len(outputs) == 1 else outputs
    return keras.Model(inputs, outputs, name=net.name)
