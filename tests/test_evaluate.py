"""Evaluation pairs labels and predictions from the same batches; loss checks call the loss as Keras does (issue 11)."""

import logging
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from kpipe.generator import DataGenerator  # noqa: E402
from kpipe.training import LossCheckError, TrainConfig, build_loss, check_loss, evaluate_on, train  # noqa: E402


class Oracle(keras.Model):
    """A perfect model of the indexed dataset: sample ``i`` (filled with ``i``) is class a (< 30), b (< 50) or c."""

    def call(self, x):
        v = keras.ops.mean(keras.ops.reshape(x, (keras.ops.shape(x)[0], -1)), axis=-1)
        cls = keras.ops.cast(v >= 30, "int32") + keras.ops.cast(v >= 50, "int32")
        return keras.ops.one_hot(cls, 3)


def test_evaluation_with_a_shuffled_generator_pairs_each_prediction_with_its_label(indexed_manifest: Path):
    model = Oracle()
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    shuffled = DataGenerator(indexed_manifest, "validation", shuffle=True, batch_size=4)
    with pytest.warns(UserWarning, match="shuffles, balances or bootstraps"):
        metrics = evaluate_on(model, shuffled, ["a", "b", "c"])
    assert metrics["accuracy"] == 1.0 and metrics["num_samples"] == 12
    assert np.trace(np.asarray(metrics["confusion_matrix"])) == 12

    weighted = DataGenerator(indexed_manifest, "validation", shuffle=False, class_weight={"a": 2.0})
    with pytest.warns(UserWarning, match="weighs its samples"):
        evaluate_on(model, weighted, ["a", "b", "c"])


def _batch(n: int = 8):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, (np.arange(n) % 3).astype("int32")


def _softmax_model():
    inputs = keras.Input(shape=(4,))
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))


def test_loss_is_called_with_the_casts_keras_makes():
    def scaled_sparse(y_true, y_pred):  # float arithmetic on the labels: fine under fit, which casts them
        return (1.0 + 0.5 * y_true) * keras.losses.sparse_categorical_crossentropy(y_true, y_pred)

    scaled_sparse.label_mode = "int"
    loss = build_loss(scaled_sparse)
    assert np.isfinite(check_loss(loss, _softmax_model(), _batch(), label_mode="int"))


def test_a_loss_returning_its_input_is_refused():
    def identity(y_true, y_pred):
        return y_pred  # (batch, num_classes): not one value per sample

    x, y = _batch()
    with pytest.raises(LossCheckError, match=r"one value per sample, shape \(8,\).*returned shape \(8, 3\)"):
        check_loss(build_loss(identity), _softmax_model(), (x, np.eye(3, dtype="float32")[y]),
                   label_mode="categorical")


INT_ONLY_LOSS = '''
import keras


def plain(y_true, y_pred):
    return keras.losses.sparse_categorical_crossentropy(y_true, y_pred)
'''


def test_a_custom_loss_gets_the_label_mode_that_runs_and_says_so(indexed_manifest, tmp_path, caplog):
    (tmp_path / "int_only.py").write_text(INT_ONLY_LOSS)
    config = TrainConfig(loss=f"{tmp_path / 'int_only.py'}:plain", epochs=1, batch_size=8, verbose=0,
                         tensorboard=False)
    with caplog.at_level(logging.INFO, logger="kpipe"):
        result = train(indexed_manifest, config, out=tmp_path / "run")
    assert "label_mode='int' chosen for the loss" in caplog.text
    assert np.isfinite(result.history["loss"][0])
    assert '"label_mode": "int"' in (tmp_path / "run" / "config.json").read_text()
