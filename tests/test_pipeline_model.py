"""The saved model is the whole pipeline: raw samples as prepare writes them in, class probabilities out (issue 12).

For each sample dtype (uint8 and 16-bit images, float32 arrays, CSV features) a short run is made; loading its
``model.keras`` with Keras alone and predicting on the raw test samples gives kpipe's own test accuracy, the
generators serve unscaled samples (no double scaling), and the preprocessing is the model's first layer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from helpers import make_pattern_csv, make_pattern_folder, make_pattern_images, tiny_model  # noqa: E402
from kpipe.generator import DataGenerator  # noqa: E402
from kpipe.manifest import load_manifest  # noqa: E402
from kpipe.prepare import prepare  # noqa: E402
from kpipe.storage import open_store  # noqa: E402
from kpipe.training import TrainConfig, train  # noqa: E402
from kpipe.training.report import kept_epoch, run_summary, stop_sentence, training_facts  # noqa: E402

FAST = dict(epochs=2, batch_size=16, learning_rate=0.03, verbose=0, tensorboard=False)


def _raw_test(manifest_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The test samples exactly as stored (dtype kept), and their class indices."""
    m = load_manifest(manifest_path)
    ids = m.ids("test")
    store = open_store(m)
    try:
        return store.read_many(ids), m.label_array(ids)
    finally:
        store.close()


def _datasets(root: Path) -> dict[str, Path]:
    make_pattern_images(root / "png8", bits=8)
    make_pattern_images(root / "png16", bits=16, seed=1)
    raw_float = make_pattern_folder(root / "npy", seed=2)
    for f in raw_float.rglob("*.npy"):  # float32 arrays of large values: only a Normalization suits them
        np.save(f, np.load(f).astype(np.float32) * 40.0 + 1000.0)
    make_pattern_csv(root / "table.csv")
    sources = {"uint8": root / "png8", "uint16": root / "png16", "float32": root / "npy", "csv": root / "table.csv"}
    out = {}
    for name, raw in sources.items():
        options = {"id_column": "id"} if name == "csv" else {}
        out[name] = prepare(raw, root / f"prepared_{name}", split="0.6,0.2,0.2", n_jobs=1, **options).manifest.path
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    manifests = _datasets(root)
    results = {}
    for name, path in manifests.items():
        model = tiny_model if name == "uint16" else None  # the default CNN / MLP, and a model of the user's
        config = TrainConfig(**(FAST | {"epochs": 6, "learning_rate": 0.003}), metrics=("f1",))
        results[name] = (path, train(path, config, out=root / f"run_{name}", model=model))
    return results


@pytest.mark.parametrize("dtype, first_layer", [("uint8", ("Rescaling", 1 / 255)), ("uint16", ("Rescaling", 1 / 65535)),
                                                ("float32", ("Normalization", None)), ("csv", ("Normalization", None))])
def test_model_keras_takes_raw_samples(runs, dtype, first_layer):
    manifest_path, result = runs[dtype]
    m = load_manifest(manifest_path)
    assert m.sample_dtype == ("float32" if dtype == "csv" else dtype)
    x_raw, y = _raw_test(manifest_path)
    assert x_raw.dtype == np.dtype(m.sample_dtype)
    model = keras.saving.load_model(result.run_dir / "model.keras")  # Keras alone, no kpipe object
    probs = model.predict(x_raw, verbose=0)
    accuracy = float(np.mean(np.argmax(probs, axis=-1) == y))
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert accuracy == metrics["accuracy"] == result.metrics["accuracy"]
    assert metrics["accuracy"] >= 0.9  # and it learnt: the scaling is right
    # the preprocessing is in the model, first thing after the input (in the default model or around the user's)
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    kind, scale = first_layer
    assert type(layers[0]).__name__ == kind
    if scale is not None:
        assert layers[0].get_config()["scale"] == pytest.approx(scale)
    else:  # adapted on the train partition
        assert np.all(np.asarray(layers[0].get_weights()[0]) != 0)
    resolved = json.loads((result.run_dir / "config.json").read_text())["resolved"]
    assert resolved["preprocessing"].startswith("x / " if scale else "normalized")


def test_generators_serve_unscaled_samples(runs):
    """No double scaling: the run's generators give the stored values (as float32); only the model scales."""
    from kpipe.training.data import make_generators

    manifest_path, result = runs["uint8"]
    config = TrainConfig(**FAST)
    train_gen, val_gen, test_gen = make_generators(load_manifest(manifest_path), config, label_mode="int")
    x_raw, _ = _raw_test(manifest_path)
    x, _ = test_gen[0]
    np.testing.assert_array_equal(x, x_raw[: len(x)].astype(np.float32))
    assert x.max() > 1.0 and all(g.rescale is None for g in (train_gen, val_gen, test_gen))
    # the model's predictions on the generator's batches are those on the raw samples
    model = keras.saving.load_model(result.run_dir / "model.keras")
    np.testing.assert_allclose(model.predict(x, verbose=0), model.predict(x_raw[: len(x)], verbose=0), rtol=1e-6)


def test_every_loop_saves_the_whole_pipeline(runs, tmp_path):
    """The step and tape loops export the same pipeline model (the fit loop is the fixture's)."""
    manifest_path, _ = runs["uint8"]
    x_raw, y = _raw_test(manifest_path)
    for loop in ("step", "tape"):
        result = train(manifest_path, TrainConfig(**FAST, loop=loop), out=tmp_path / loop, model=tiny_model)
        model = keras.saving.load_model(result.run_dir / "model.keras")
        assert type(model.layers[1]).__name__ == "Rescaling"
        assert float(np.mean(np.argmax(model.predict(x_raw, verbose=0), axis=-1) == y)) == result.metrics["accuracy"]


def test_mixed_precision_keeps_the_preprocessing_in_float32():
    """A uint16 sample of 65535 would overflow float16: the preprocessing layer computes in float32."""
    from kpipe.training.models import preprocessing_layer

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer, description = preprocessing_layer("uint16")
        out = layer(np.full((1, 2, 2, 1), 65535, dtype=np.float32))
    finally:
        keras.config.set_dtype_policy(previous)
    assert description == "x / 65535" and layer.compute_dtype == "float32"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), 1.0, rtol=1e-6)


def test_steps_per_epoch_and_epoch_numbers(runs, tmp_path):
    """--steps-per-epoch gives the train generator's epoch length; log.csv, metrics.json and the plots count
    epochs from 1 alike."""
    manifest_path, _ = runs["uint8"]
    config = TrainConfig(**(FAST | {"epochs": 3}), steps_per_epoch=2, log_every=1)
    result = train(manifest_path, config, out=tmp_path / "run", model=tiny_model)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["steps_per_epoch"] == 2 and saved["resolved"]["steps_per_epoch"] == 2
    steps = (tmp_path / "run" / "steps.csv").read_text().splitlines()[1:]
    assert [row.split(",")[:3] for row in steps] == [[str(s), str(1 + (s - 1) // 2), str(1 + (s - 1) % 2)]
                                                    for s in range(1, 7)]
    rows = [line.split(",") for line in (tmp_path / "run" / "log.csv").read_text().splitlines()]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3"]
    metrics = result.metrics
    val_loss = [float(r[rows[0].index("val_loss")]) for r in rows[1:]]
    assert metrics["best_epoch"] == 1 + int(np.argmin(val_loss)) == metrics["kept_epoch"]
    assert float(rows[metrics["best_epoch"]][rows[0].index("val_loss")]) == pytest.approx(metrics["best_val_loss"])
    assert metrics["stop"] == {"reason": "epochs", "epoch": 3, "epochs": 3}


def test_training_facts_say_which_epoch_was_kept_and_why_training_stopped():
    history = {"loss": [1.0, 0.8, 0.7, 0.6, 0.5], "val_loss": [0.9, 0.5, 0.5, 0.6, 0.7]}
    facts = training_facts(history, monitor="val_loss", mode="min", epochs=10, patience=3, stopped=True)
    assert facts == {"epochs_trained": 5, "monitor": "val_loss", "best_epoch": 2, "best_val_loss": 0.5,
                     "kept_epoch": 2, "stop": {"reason": "early_stopping", "epoch": 5, "patience": 3}}
    assert stop_sentence(facts) == ("Kept epoch 2 (best val_loss 0.5000); early stopping at epoch 5 (3 epochs "
                                    "without improvement of val_loss).")
    facts = training_facts(history, monitor="val_loss", mode="min", epochs=5, patience=None, stopped=False)
    assert stop_sentence(facts) == "Kept epoch 2 (best val_loss 0.5000); trained all 5 epochs."
    one = training_facts({"loss": [1.0], "val_loss": [0.9]}, monitor="val_loss", mode="min", epochs=1,
                         patience=None, stopped=False)
    assert stop_sentence(one) == "Kept epoch 1 (best val_loss 0.9000); trained its 1 epoch."
    assert kept_epoch({"val_accuracy": [0.5, float("nan"), 0.9, 0.9]}, "val_accuracy", "max") == 3
    facts = training_facts({"loss": [1.0, 2.0], "val_loss": [float("nan")] * 2}, monitor="val_loss", mode="min",
                           epochs=2, patience=None, stopped=False, kept_best=False)
    assert facts["kept_epoch"] == 2 and "best_epoch" not in facts
    assert stop_sentence(facts).startswith("Kept the last epoch, 2 (val_loss was never finite)")


def test_train_summary_reports_what_matters_on_imbalanced_data(runs):
    _, result = runs["uint8"]
    lines = result.summary().splitlines()
    m = result.metrics
    worst = m["worst_class"]
    assert lines[0] == (f"Test accuracy: {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, balanced accuracy "
                        f"{m['balanced_accuracy']:.4f}, f1 {m['metrics']['f1']:.4f} (loss {m['loss']:.4f}, "
                        f"{m['num_samples']} samples); worst class {worst['name']!r}: recall {worst['recall']:.4f}")
    assert lines[1].startswith(f"Kept epoch {m['kept_epoch']} (best val_loss ") and "trained all 6 epochs" in lines[1]
    assert lines[2].startswith(f"-> {result.run_dir} in ")
    assert run_summary(m, result.run_dir, None).splitlines()[2] == f"-> {result.run_dir}"
    assert m["macro_f1"] == pytest.approx(m["classification_report"]["macro avg"]["f1-score"])
    assert m["metrics"]["f1"] == pytest.approx(m["macro_f1"])
    assert set(result.history) >= {"f1", "val_f1"}


def test_run_records_how_its_inputs_are_read(runs):
    manifest_path, result = runs["csv"]
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert saved["manifest"] == str(Path(manifest_path).resolve())
    dataset = saved["dataset"]
    assert dataset["classes"] == ["k0", "k1", "k2"] and dataset["sample"] == {"shape": [6], "dtype": "float32"}
    assert dataset["prepare"]["feature_columns"] == [f"f{j}" for j in range(6)]
    assert dataset["prepare"]["layout"] == "csv" and dataset["prepare"]["id_column"] == "id"
    # config.json stays usable as --config: the dataset record is informational
    config = TrainConfig.from_options({}, config_file=result.run_dir / "config.json")
    assert config.metrics == ("f1",)


def test_generator_rescale_is_still_a_library_option(runs):
    manifest_path, _ = runs["uint8"]
    x, _ = DataGenerator(manifest_path, "test", rescale=1 / 255, batch_size=4)[0]
    assert float(x.max()) <= 1.0
