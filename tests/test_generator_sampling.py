"""DataGenerator with samplers, weights, the transform hook and resuming; the same batches under model.fit
from one process, threads, processes, and after resuming (issue 4)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from kpipe.generator import DataGenerator, EpochSync
from kpipe.manifest import Manifest
from kpipe.sampling import SamplingError
from kpipe.weights import WeightError


def _index(x: np.ndarray) -> list[int]:
    """Global sample indices encoded in the data (each sample is filled with its index)."""
    return [round(v) for v in x.reshape(len(x), -1)[:, 0]]


def augment(x, y, rng):
    """A module-level transform (pickles for worker processes): integer noise, so indices stay readable."""
    return x + rng.integers(0, 1000, size=(len(x), 1, 1, 1)).astype(x.dtype) * 1000, y


def test_balanced_generator_batches(indexed_manifest: Path):
    m = Manifest.load(indexed_manifest)
    assert m.class_counts("train") == {"a": 18, "b": 12, "c": 6}
    gen = DataGenerator(indexed_manifest, "train", batch_size=6, sampling="balanced")
    assert gen.sampling == "balanced" and gen.shuffle
    assert len(gen) == 3  # 3 classes x 6 (smallest class) / 6
    for epoch in range(3):
        gen.epoch = epoch
        ids = []
        for i in range(len(gen)):
            _, y = gen[i]
            assert np.bincount(y, minlength=3).tolist() == [2, 2, 2]
            assert [m.labels[s] for s in gen.batch_ids(i)] == y.tolist()
            ids += gen.batch_ids(i)
        assert len(set(ids)) == 18  # undersampling: no repeats within an epoch
    over = DataGenerator(indexed_manifest, "train", batch_size=6, sampling="balanced", balance="oversample")
    assert len(over) == 9 and over.sampler.epoch_size == 54
    fixed = DataGenerator(indexed_manifest, "train", batch_size=8, sampling="balanced", samples_per_epoch=20,
                          drop_remainder=True)
    assert len(fixed) == 2
    target = DataGenerator(indexed_manifest, "train", batch_size=8, sampling="balanced",
                           target_distribution={"a": 0.5, "b": 0.25, "c": 0.25})
    assert np.bincount(target[0][1], minlength=3).tolist() == [4, 2, 2]


def test_bootstrap_generator_and_oob(indexed_manifest: Path):
    gen = DataGenerator(indexed_manifest, "train", batch_size=8, sampling="bootstrap", balance="stratified", seed=3)
    assert len(gen) == 5
    drawn = {sid for i in range(len(gen)) for sid in gen.batch_ids(i)}
    oob = set(gen.oob_ids())
    assert drawn | oob == set(gen.ids) and not drawn & oob
    assert gen.oob_ids(epoch=1) != gen.oob_ids(epoch=0)
    with pytest.raises(SamplingError, match=r"`oob_ids` needs sampling='bootstrap'"):
        DataGenerator(indexed_manifest, "train").oob_ids()


def test_weights_are_yielded_as_a_third_element(indexed_manifest: Path):
    plain = DataGenerator(indexed_manifest, "train", batch_size=6)
    assert len(plain[0]) == 2 and not plain.yields_weights
    gen = DataGenerator(indexed_manifest, "train", batch_size=6, class_weight="balanced",
                        condition_weights={"c": 3})
    _, y, w = gen[0]
    assert w.dtype == np.float32 and w.shape == (6,)
    # 36 / (3 * [18, 12, 6]) = [2/3, 1, 2]; class c also x3
    np.testing.assert_allclose(w, np.array([2 / 3, 1.0, 6.0], np.float32)[y], rtol=1e-6)
    cat = DataGenerator(indexed_manifest, "train", batch_size=6, class_weight="balanced", label_mode="categorical")
    np.testing.assert_array_equal(cat[0][2], DataGenerator(indexed_manifest, "train", batch_size=6,
                                                           class_weight="balanced")[0][2])
    assert gen.weight_details["class_weight"]["c"] == pytest.approx(2.0)


def test_weight_and_sampling_errors(indexed_manifest: Path):
    with pytest.raises(WeightError, match=r"has no per-sample weights"):
        DataGenerator(indexed_manifest, "train", use_sample_weights=True)
    with pytest.raises(WeightError, match=r"not a class: 'zebra'"):
        DataGenerator(indexed_manifest, "train", class_weight={"zebra": 2})
    with pytest.raises(SamplingError, match=r"contradicts sampling='balanced'"):
        DataGenerator(indexed_manifest, "train", shuffle=False, sampling="balanced")
    with pytest.warns(UserWarning, match=r"corrects for the imbalance a second time"):
        DataGenerator(indexed_manifest, "train", sampling="balanced", class_weight="balanced")
    m = Manifest.load(indexed_manifest)
    m.partition["train"] = [i for i in m.partition["train"] if m.labels[i] != 2]
    with pytest.raises(SamplingError, match=r"Class 'c' \(index 2\) has no sample in partition 'train'"):
        DataGenerator(m, "train", sampling="balanced")
    with pytest.raises(WeightError, match=r"Class 'c' \(index 2\) has no sample in partition 'train'"):
        DataGenerator(m, "train", class_weight="balanced")
    with pytest.raises(WeightError, match=r"gives class 'a' \(index 0\) twice"):
        DataGenerator(indexed_manifest, "train", class_weight={"a": 2, 0: 5})
    cw = DataGenerator(indexed_manifest, "train", batch_size=6, class_weight=np.array([1.0, 2.0, 4.0]))
    _, y, w = cw[0]  # an array was numpy's "truth value of an array ... is ambiguous"
    np.testing.assert_array_equal(w, np.array([1.0, 2.0, 4.0], np.float32)[y])


def test_per_sample_weights_from_the_manifest(indexed_manifest: Path):
    m = Manifest.load(indexed_manifest)
    m.sample_weights = {sid: 0.5 + (k % 2) for k, sid in enumerate(m.labels)}
    gen = DataGenerator(m, "train", batch_size=6, use_sample_weights=True, class_weight={"a": 2, "*": 1})
    *_, w = gen[1]
    ids = gen.batch_ids(1)
    expected = [m.sample_weights[s] * (2.0 if m.labels[s] == 0 else 1.0) for s in ids]
    np.testing.assert_allclose(w, expected)


def test_transform_rng_is_a_function_of_seed_epoch_and_batch(indexed_manifest: Path):
    gen = DataGenerator(indexed_manifest, "train", batch_size=6, transform=augment, seed=5)
    again = DataGenerator(indexed_manifest, "train", batch_size=6, transform=augment, seed=5)
    np.testing.assert_array_equal(gen[0][0], gen[0][0])
    np.testing.assert_array_equal(gen[1][0], again[1][0])
    noise = [gen[i][0].reshape(6, -1)[:, 0] // 1000 for i in range(2)]
    assert not np.array_equal(noise[0], noise[1])  # different across batches
    gen.epoch = 1
    assert not np.array_equal(gen[0][0] // 1000, again[0][0] // 1000)  # and across epochs
    x_only = DataGenerator(indexed_manifest, "train", batch_size=6, transform=lambda x, y, rng: x * 0)
    assert not x_only[0][0].any() and len(x_only[0]) == 2


def test_state_dict_resume(indexed_manifest: Path):
    gen = DataGenerator(indexed_manifest, "train", batch_size=6, sampling="balanced", balance="oversample")
    for _ in range(2):  # two epochs served
        for i in range(len(gen)):
            gen[i]
        gen.on_epoch_end()
    state = gen.state_dict()
    assert state["epoch"] == 2 and state["sampling"] == "balanced"
    resumed = DataGenerator(indexed_manifest, "train", batch_size=6, sampling="balanced", balance="oversample",
                            state=state)
    at_two = DataGenerator(indexed_manifest, "train", batch_size=6, sampling="balanced", balance="oversample",
                           initial_epoch=2)
    for i in range(len(gen)):
        assert resumed.batch_ids(i) == gen.batch_ids(i) == at_two.batch_ids(i)
    with pytest.raises(ValueError, match=r"saved by a generator with seed=0, this one has seed=1"):
        DataGenerator(indexed_manifest, "train", batch_size=6, sampling="balanced", balance="oversample",
                      seed=1, state=state)


# ------------------------------------------------------------------ under model.fit
SEEN: list[list[np.ndarray]] = []


def _fit(gen, epochs, *, initial_epoch=0, callbacks=()):
    """Train a tiny model eagerly, recording every batch `fit` consumed (x, y, w) in the main process."""
    import keras

    class Recording(keras.Model):
        def __init__(self):
            super().__init__()
            self.flat = keras.layers.Flatten()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(self.flat(x) / 1e6)

        def train_step(self, data):
            SEEN.append([np.asarray(t) for t in data])
            return super().train_step(data)

    SEEN.clear()
    keras.utils.set_random_seed(0)
    model = Recording()
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  run_eagerly=True)
    model(np.zeros((1, 4, 4, 1), np.float32))  # built, as BackupAndRestore needs
    model.fit(gen, epochs=epochs, initial_epoch=initial_epoch, shuffle=False, verbose=0, callbacks=list(callbacks))
    return list(SEEN)


def _assert_same(a, b):
    assert len(a) == len(b)
    for batch_a, batch_b in zip(a, b):
        assert len(batch_a) == len(batch_b) == 3
        for u, v in zip(batch_a, batch_b):
            np.testing.assert_array_equal(u, v)


def _make(manifest, **loader):
    return DataGenerator(manifest, "train", batch_size=6, seed=7, sampling="balanced", balance="oversample",
                         class_weight={"c": 2.0, "*": 1.0}, condition_weights={"a": 0.5}, transform=augment, **loader)


@pytest.mark.timeout(300)
def test_fit_sees_the_same_batches_in_one_process_threads_processes_and_after_resume(indexed_manifest: Path,
                                                                                      tmp_path: Path):
    import keras

    epochs = 3
    single = _fit(_make(indexed_manifest), epochs)
    gen = _make(indexed_manifest)
    n = len(gen)
    assert len(single) == epochs * n
    # fit's epoch e is the generator's epoch e, as a hand-written loop computes it
    expected = []
    for epoch in range(epochs):
        gen.epoch = epoch
        expected += [list(gen[i]) for i in range(n)]
    _assert_same(single, expected)
    by_epoch = [_index(b[0] % 1000) for b in single]
    assert by_epoch[:n] != by_epoch[n : 2 * n]  # a new draw every epoch

    _assert_same(_fit(_make(indexed_manifest, workers=2), epochs), single)  # threads
    _assert_same(_fit(_make(indexed_manifest, workers=2, use_multiprocessing=True, max_queue_size=4), 2),
                 single[: 2 * n])  # processes (one Pool per epoch)

    # resume at epoch 2: initial_epoch (or a state dict) ...
    _assert_same(_fit(_make(indexed_manifest, initial_epoch=2), epochs, initial_epoch=2), single[2 * n :])

    # ... or Keras' BackupAndRestore after an interruption, with EpochSync keeping the generator on fit's epoch
    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("interrupted")

    backup = str(tmp_path / "backup")
    first = _make(indexed_manifest)
    with pytest.raises(RuntimeError, match="interrupted"):
        _fit(first, epochs, callbacks=[keras.callbacks.BackupAndRestore(backup), EpochSync(first), Interrupt()])
    fresh = _make(indexed_manifest)  # a new process would start at epoch 0
    resumed = _fit(fresh, epochs, callbacks=[keras.callbacks.BackupAndRestore(backup), EpochSync(fresh)])
    _assert_same(resumed, single[2 * n :])


def test_cli_train_with_sampling_and_weights(indexed_manifest: Path, tmp_path: Path):
    import json

    from click.testing import CliRunner

    from kpipe.cli import main

    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CliRunner().invoke(main, [
            "train", str(indexed_manifest), "--out", str(out), "--epochs", "1", "--batch-size", "6",
            "--sampling", "balanced", "--balance", "oversample", "--class-weight", '{"c": 2, "*": 1}',
            "--condition-weights", '{"a": 0.5}', "--verbose", "0"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["sampling"] == "balanced" and config["balance"] == "oversample"
    assert config["class_weight"] == '{"c": 2, "*": 1}' and config["condition_weights"] == '{"a": 0.5}'
    bad = CliRunner().invoke(main, ["train", str(indexed_manifest), "--out", str(tmp_path / "bad"),
                                    "--sampling", "balanced", "--balance", "stratified"])
    assert bad.exit_code == 1, bad.output
    assert "With --sampling balanced, `--balance` must be one of 'undersample', 'oversample'" in bad.output
    bad = CliRunner().invoke(main, ["train", str(indexed_manifest), "--out", str(tmp_path / "bad"),
                                    "--class-weight", "{oops"])
    assert bad.exit_code == 1 and "`--class-weight` must be a JSON object" in bad.output
