"""Default models (a small CNN for images, an MLP for vectors) and the preprocessing put in front of every model.

The model a run saves (``model.keras``) is the whole pipeline from the samples as ``kpipe prepare`` writes them
to class probabilities: `preprocessing_layer` scales integer images (``Rescaling(1/255)`` for uint8,
``Rescaling(1/65535)`` for uint16) or normalises other data (a `keras.layers.Normalization` adapted on the
train partition), and the run's generators serve the samples unscaled, so nothing is scaled twice.
"""

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

    It computes in float32 whatever the dtype policy (float16 would overflow on large raw values).

    Args:
        data: A `kpipe.DataGenerator` (its ``ids`` and ``store`` are read, in manifest order).
        max_samples: Samples read at most.
    """
    x = data.store.read_many(list(data.ids)[:max_samples]).astype("float32")
    layer = keras.layers.Normalization(axis=-1, dtype="float32", name="normalization")
    layer.adapt(x)
    return layer


INTEGER_SCALES = {"uint8": 1 / 255, "uint16": 1 / 65535}
"""Sample dtype -> the scale that maps its full range onto [0, 1] (8-bit and 16-bit images)."""


def preprocessing_layer(sample_dtype: str, *, rescale: float | None = None, data: Any = None
                        ) -> tuple[keras.layers.Layer, str]:
    """The layer that turns raw samples into the model's inputs, and a description of it.

    * ``rescale`` given: ``Rescaling(rescale)``, whatever the dtype;
    * uint8 / uint16 samples (8- and 16-bit images): ``Rescaling(1/255)`` / ``Rescaling(1/65535)``
      (`INTEGER_SCALES`: the full range to [0, 1], as prepare's 8 -> 16 bits rule ``v * 257`` keeps it);
    * anything else (float, other integers, CSV features): a `keras.layers.Normalization` adapted on ``data``
      (`adapted_normalizer`).

    The layer computes in float32 (a float16 policy could not hold 65535).

    Args:
        sample_dtype: The manifest's sample dtype.
        rescale: A factor that overrides the choice. Defaults to `None`.
        data: The train partition (a `kpipe.DataGenerator`), needed for the normalization.

    Returns:
        ``(layer, description)``, e.g. ``(Rescaling, "x / 255")``.
    """
    if rescale is not None:
        return keras.layers.Rescaling(rescale, dtype="float32", name="rescaling"), f"x * {rescale:g}"
    if sample_dtype in INTEGER_SCALES:
        scale = INTEGER_SCALES[sample_dtype]
        return keras.layers.Rescaling(scale, dtype="float32", name="rescaling"), f"x / {round(1 / scale)}"
    return adapted_normalizer(data), "normalized (mean and variance of the train partition)"


def with_preprocessing(net: keras.Model, layer: keras.layers.Layer, input_shape: Sequence[int]) -> keras.Model:
    """A functional model ``net(layer(x))`` named as ``net``: the preprocessing in front of any model.

    Args:
        net: The model (functional, Sequential or subclassed; it becomes one layer of the result).
        layer: The preprocessing layer (`preprocessing_layer`).
        input_shape: Shape of one sample.

    Returns:
        An uncompiled `keras.Model` taking raw samples.
    """
    inputs = keras.Input(shape=tuple(int(d) for d in input_shape))
    return keras.Model(inputs, net(layer(inputs)), name=net.name)


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


def run_model(spec: Any, manifest: Any, *, rescale: float | None, data: Any, binary: bool = False
              ) -> tuple[keras.Model, str | None, str]:
    """The model a run trains: kpipe's preprocessing in front of the default model or the user's.

    The default model takes the `preprocessing_layer` as its first layer; a `keras.Model` or a factory of
    the user's is called on it (`with_preprocessing`), so ``model.keras`` always maps raw samples to class
    probabilities.

    Args:
        spec: A `keras.Model`, a factory, ``"module:function"``, or `None` / ``"default"``.
        manifest: The `kpipe.manifest.Manifest` (sample shape and dtype, number of classes).
        rescale: ``--rescale`` (`None`: chosen from the dtype).
        data: The train partition (adapts a `keras.layers.Normalization`).
        binary: One sigmoid output for the default model.

    Returns:
        ``(model, outputs, description)``: ``outputs`` is what the model's own last layer gives
        (``"probabilities"``, ``"logits"`` or `None`, `kpipe.training.losses.model_outputs`), the description
        says what the preprocessing does.
    """
    from kpipe.training.losses import model_outputs

    layer, description = preprocessing_layer(manifest.sample_dtype, rescale=rescale, data=data)
    if not isinstance(spec, keras.Model) and spec in (None, "default"):
        net = default_model(manifest.sample_shape, manifest.num_classes, normalizer=layer, binary=binary)
        return net, model_outputs(net), description
    net = spec if isinstance(spec, keras.Model) else build_model(spec, manifest.sample_shape, manifest.num_classes)
    return with_preprocessing(net, layer, manifest.sample_shape), model_outputs(net), description
