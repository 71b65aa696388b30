"""Losses: names, Keras classes with JSON arguments, custom functions; the one-batch check (issue 5)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from kpipe.errors import KpipeError, LoadError  # noqa: E402
from kpipe.training import FunctionLoss, LossCheckError, TrainConfig, build_loss, check_loss, train  # noqa: E402
from kpipe.training.losses import label_mode_for_loss, model_outputs  # noqa: E402

CUSTOM_LOSSES = '''
import keras


def weighted_ce(y_true, y_pred):
    """Categorical cross-entropy per sample, written by hand (one-hot labels)."""
    y_pred = keras.ops.clip(y_pred, 1e-7, 1.0)
    return -keras.ops.sum(y_true * keras.ops.log(y_pred), axis=-1)


def sparse_ce(y_true, y_pred):
    return keras.losses.sparse_categorical_crossentropy(y_true, y_pred)


sparse_ce.label_mode = "int"


def wrong_shape(y_true, y_pred):
    return keras.ops.mean(y_pred, axis=0)  # (num_classes,), not (batch,)


def nan_loss(y_true, y_pred):
    return keras.ops.log(y_pred - 2.0)[:, 0]


def int_loss(y_true, y_pred):
    return keras.ops.cast(keras.ops.argmax(y_pred, axis=-1), "int32")
'''


@pytest.fixture(scope="module")
def losses_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("losses") / "my_losses.py"
    path.write_text(CUSTOM_LOSSES)
    return path


def softmax_model(num_classes: int = 3, activation: str | None = "softmax") -> keras.Model:
    inputs = keras.Input(shape=(4,))
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation=activation)(inputs))


def batch(label_mode: str = "int", n: int = 8):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = np.arange(n) % 3
    if label_mode == "categorical":
        return x, np.eye(3, dtype="float32")[y]
    return x, y.astype("int32")


# ------------------------------------------------------------------ resolving
def test_keras_names_become_loss_instances_with_from_logits_from_the_model():
    loss = build_loss("sparse_categorical_crossentropy", outputs="probabilities")
    assert isinstance(loss, keras.losses.SparseCategoricalCrossentropy) and not loss.get_config()["from_logits"]
    assert build_loss("categorical_crossentropy", outputs="logits").get_config()["from_logits"] is True
    assert isinstance(build_loss("mse"), keras.losses.MeanSquaredError)  # an alias


def test_keras_loss_class_with_json_arguments():
    loss = build_loss("CategoricalFocalCrossentropy", '{"gamma": 3.0, "alpha": 0.5}', outputs="probabilities")
    assert loss.get_config()["gamma"] == 3.0 and loss.get_config()["alpha"] == 0.5
    assert build_loss("categorical_focal_crossentropy", {"gamma": 1.0}).get_config()["gamma"] == 1.0
    with pytest.raises(KpipeError, match="gama"):
        build_loss("categorical_focal_crossentropy", {"gama": 1.0})
    with pytest.raises(KpipeError, match="JSON object"):
        build_loss("categorical_focal_crossentropy", "[1, 2]")
    with pytest.raises(LoadError, match="Unknown loss 'crossentropy_of_doom'"):
        build_loss("crossentropy_of_doom")


def test_custom_functions_from_a_file_and_a_module(losses_file, monkeypatch):
    from_file = build_loss(f"{losses_file}:weighted_ce")
    assert isinstance(from_file, FunctionLoss) and from_file.name == "weighted_ce"
    monkeypatch.syspath_prepend(str(losses_file.parent))
    sys.modules.pop("my_losses", None)
    from_module = build_loss("my_losses:weighted_ce")
    y = np.eye(3, dtype="float32")[[0, 1, 2]]
    p = np.full((3, 3), 1 / 3, dtype="float32")
    assert float(from_module(y, p)) == pytest.approx(np.log(3), rel=1e-5)
    assert label_mode_for_loss("my_losses:sparse_ce") == "int"  # declared by the function
    assert label_mode_for_loss("my_losses:weighted_ce") == "categorical"
    assert label_mode_for_loss("binary_focal_crossentropy") == "binary"


def test_model_outputs_from_the_last_activation():
    assert model_outputs(softmax_model()) == "probabilities"
    assert model_outputs(softmax_model(activation=None)) == "logits"
    from kpipe.training import default_model

    assert model_outputs(default_model((8, 8, 1), 3)) == "probabilities"


# ------------------------------------------------------------------ checking
def test_sparse_loss_with_one_hot_labels_says_which_label_mode():
    loss = build_loss("sparse_categorical_crossentropy", outputs="probabilities")
    with pytest.raises(LossCheckError, match=r"label_mode='int'.*--label-mode int"):
        check_loss(loss, softmax_model(), batch("categorical"), label_mode="categorical")


def test_one_hot_loss_with_int_labels_says_which_label_mode():
    loss = build_loss("categorical_crossentropy", outputs="probabilities")
    with pytest.raises(LossCheckError, match=r"label_mode='categorical'"):
        check_loss(loss, softmax_model(), batch("int"), label_mode="int")


@pytest.mark.parametrize("name, message", [
    ("wrong_shape", r"one value per sample, shape \(8,\).*returned shape \(3,\)"),
    ("nan_loss", "NaN or infinity"),
    ("int_loss", "must return floats; it returned dtype int32"),
])
def test_broken_custom_losses_are_named(losses_file, name, message):
    loss = build_loss(f"{losses_file}:{name}")
    with pytest.raises(LossCheckError, match=message) as info:
        check_loss(loss, softmax_model(), batch("categorical"), label_mode="categorical")
    assert name in str(info.value)


def test_from_logits_must_match_the_last_activation():
    loss = build_loss("sparse_categorical_crossentropy", {"from_logits": True})
    with pytest.raises(LossCheckError, match="from_logits=True, but the model outputs probabilities"):
        check_loss(loss, softmax_model(), batch("int"), label_mode="int")
    ok = build_loss("sparse_categorical_crossentropy", outputs=model_outputs(softmax_model(activation=None)))
    assert check_loss(ok, softmax_model(activation=None), batch("int"), label_mode="int") > 0


def test_a_good_loss_passes_with_sample_weights():
    x, y = batch("int")
    loss = build_loss("sparse_categorical_crossentropy", outputs="probabilities")
    value = check_loss(loss, softmax_model(), (x, y, np.ones(8, "float32")), label_mode="int")
    assert np.isfinite(value)


# ------------------------------------------------------------------ through train()
@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    from helpers import make_pattern_folder
    from kpipe.prepare import prepare

    root = tmp_path_factory.mktemp("loss_data")
    return prepare(make_pattern_folder(root / "raw", per_class=20), root / "prepared", split="0.6,0.2,0.2",
                   n_jobs=1).manifest.path


def tiny(input_shape, num_classes):
    inputs = keras.Input(shape=input_shape)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(keras.layers.Flatten()(inputs)))


@pytest.mark.parametrize("form", ["file", "module"])
def test_train_with_a_custom_loss(manifest, losses_file, tmp_path, monkeypatch, form):
    monkeypatch.syspath_prepend(str(losses_file.parent))
    spec = f"{losses_file}:weighted_ce" if form == "file" else "my_losses:weighted_ce"
    result = train(manifest, TrainConfig(loss=spec, epochs=1, batch_size=16, verbose=0, loop="tape"),
                   out=tmp_path / form, model=tiny)
    assert np.isfinite(result.history["loss"][0])
    saved = (tmp_path / form / "config.json").read_text()
    assert '"label_mode": "categorical"' in saved and "weighted_ce" in saved


def test_train_refuses_a_label_mode_that_does_not_fit_the_loss(manifest, tmp_path):
    with pytest.raises(LossCheckError, match="label_mode='int'"):
        train(manifest, TrainConfig(loss="sparse_categorical_crossentropy", label_mode="categorical", epochs=1,
                                    verbose=0), out=tmp_path / "bad", model=tiny)
    assert not (tmp_path / "bad" / "model.keras").exists()
