"""The sharded generator (issue 13, item 1), in NumPy only: N workers' slices of every global batch are the batch
of one process, for every sampling mode, any N, after resuming with another N, with weights and augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kpipe._shards import Shard, shard_from_environment
from kpipe.errors import ArgumentError
from kpipe.generator import DataGenerator

MODES = [
    {"sampling": "shuffle"},
    {"sampling": "sequential"},
    {"sampling": "balanced"},
    {"sampling": "balanced", "balance": "oversample", "class_weight": {"a": 1, "b": 2, "c": 3}},
    {"sampling": "bootstrap", "balance": "stratified"},
    {"sampling": "shuffle", "drop_remainder": True},
]


def _index(x: np.ndarray) -> np.ndarray:
    """Global sample indices encoded in the data (each sample is filled with its index)."""
    return np.rint(x.reshape(len(x), -1)[:, 0] if len(x) else x.reshape(0)).astype(int)


def augment(x, y, rng):
    """Integer noise (thousands) over the sample's index, so both stay readable."""
    return x + rng.integers(0, 1000, size=(len(x), 1, 1, 1)).astype(x.dtype) * 1000, y


def _shards(manifest: Path, n: int, **options) -> list[DataGenerator]:
    return [DataGenerator(manifest, "train", num_shards=n, shard_index=i, **options) for i in range(n)]


def _joined(shards: list[DataGenerator], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Global batch ``k`` from its slices, padding removed: ``(x, y, w, padded rows)`` (one shard: no padding,
    weights only if configured, else ones)."""
    xs, ys, ws, padded = [], [], [], 0
    for gen in shards:
        x, y, w = (*gen.make_batch(k), None)[:3]
        if w is None:
            w = np.ones(len(x), np.float32)
        assert gen.num_shards == 1 or len(x) == len(y) == len(w) == gen.shard_batch_size
        real = w > 0
        assert real[: real.sum()].all()  # padding only at the end of a slice
        xs.append(x[real])
        ys.append(y[real])
        ws.append(w[real])
        padded += int((~real).sum())
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ws), padded


@pytest.mark.filterwarnings("ignore:drop_remainder=True drops")
@pytest.mark.parametrize("options", MODES, ids=lambda o: "-".join(str(v) for v in o.values() if not isinstance(v, dict)
                                                                  ))
def test_slices_concatenate_to_the_single_process_batch(indexed_manifest: Path, options: dict):
    single = DataGenerator(indexed_manifest, "train", batch_size=7, seed=3, **options)
    batches = 2 * single.batches_per_sampler_epoch  # two sampler epochs, each with its last, partial batch
    for n in (1, 2, 3, 4):
        shards = _shards(indexed_manifest, n, batch_size=7, seed=3, **options)
        assert all(len(g) == len(single) for g in shards)
        for k in range(batches):
            expected = single.make_batch(k)
            x, y, w, padded = _joined(shards, k)
            np.testing.assert_array_equal(x, expected[0])
            np.testing.assert_array_equal(y, expected[1])
            assert padded == (0 if n == 1 else n * shards[0].shard_batch_size - len(expected[0]))
            # weights: the one-process weights (1 without any) times N * b / n
            base = expected[2] if single.yields_weights else np.ones(len(expected[0]))
            scale = 1 if n == 1 else n * shards[0].shard_batch_size / len(expected[0])
            np.testing.assert_allclose(w, base * scale, rtol=1e-6)


def test_every_sample_once_per_epoch_across_the_workers(indexed_manifest: Path):
    for n in (2, 3, 4):
        shards = _shards(indexed_manifest, n, batch_size=5, seed=1)
        for _ in range(2):  # two epochs
            served = []
            for gen in shards:
                for i in range(len(gen)):
                    x, _, w = gen[i]
                    served += _index(x[w > 0]).tolist()
                gen.on_epoch_end()
            assert sorted(served) == sorted(_index(DataGenerator(indexed_manifest, "train", shuffle=False,
                                                                  batch_size=36)[0][0]).tolist())
            assert len(served) == 36


def test_padded_loss_mean_is_the_single_process_loss(indexed_manifest: Path):
    """Keras reduces a weighted loss over each replica's rows and divides by the replicas: sum(l*w) / (N*b).
    With the weights' factor that is the one-process mean sum(l*w) / n, on full and partial batches."""
    single = DataGenerator(indexed_manifest, "train", batch_size=7, class_weight={"a": 2, "b": 1, "c": 3})
    for n in (2, 3, 4):
        shards = _shards(indexed_manifest, n, batch_size=7, class_weight={"a": 2, "b": 1, "c": 3})
        for k in range(single.batches_per_sampler_epoch):
            x, y, w = single.make_batch(k)
            expected = float(np.sum(np.sqrt(_index(x) + 1.0) * w)) / len(x)  # any per-sample loss
            got = 0.0
            for gen in shards:
                xs, _, ws = gen.make_batch(k)
                got += float(np.sum(np.sqrt(_index(xs) + 1.0) * ws)) / len(xs) / n
            assert got == pytest.approx(expected, rel=1e-6)


def test_resume_at_epoch_and_step_with_another_number_of_workers(indexed_manifest: Path):
    options = dict(batch_size=5, seed=7, sampling="balanced", balance="oversample", steps_per_epoch=4)
    single = DataGenerator(indexed_manifest, "train", **options)
    first = _shards(indexed_manifest, 2, **options)
    for gen in first:  # the 2 workers train one epoch, and are stopped inside the second
        for i in range(len(gen)):
            gen[i]
        gen.on_epoch_end()
    state, step = first[0].state_dict(), 2
    assert state["epoch"] == 1 and "num_shards" not in state
    resumed = [DataGenerator(indexed_manifest, "train", num_shards=3, shard_index=i, state=state, **options)
               for i in range(3)]
    for epoch in (1, 2):
        for i in range(step if epoch == 1 else 0, len(single)):
            k = epoch * len(single) + i
            x, y, _, _ = _joined(resumed, k)
            expected = single.make_batch(k)
            np.testing.assert_array_equal(x, expected[0])
            np.testing.assert_array_equal(y, expected[1])
            for gen in resumed:  # the same batch through __getitem__ at the resumed position
                np.testing.assert_array_equal(gen[i][0], gen.make_batch(k)[0])
        for gen in resumed:
            gen.on_epoch_end()


def test_augmentation_per_sample_does_not_depend_on_the_number_of_workers(indexed_manifest: Path):
    single = DataGenerator(indexed_manifest, "train", batch_size=7, seed=2, transform=augment, transform_rng="sample")
    for n in (2, 3):
        shards = _shards(indexed_manifest, n, batch_size=7, seed=2, transform=augment, transform_rng="sample")
        for k in range(2 * single.batches_per_sampler_epoch):
            np.testing.assert_array_equal(_joined(shards, k)[0], single.make_batch(k)[0])
    noise = single[0][0].reshape(7, -1)[:, 0] // 1000
    assert len(set(noise.tolist())) > 1  # per sample, not one draw per batch
    per_batch = DataGenerator(indexed_manifest, "train", batch_size=7, seed=2, transform=augment)
    assert not np.array_equal(per_batch[0][0], single[0][0])  # the default keeps the per-batch stream
    with pytest.raises(ArgumentError, match="transform_rng='sample'"):
        DataGenerator(indexed_manifest, "train", num_shards=2, shard_index=0, transform=augment)


def test_sharded_processes_serve_the_same_slices(indexed_manifest: Path):
    plain = DataGenerator(indexed_manifest, "train", batch_size=7, num_shards=3, shard_index=1, seed=4)
    with DataGenerator(indexed_manifest, "train", batch_size=7, num_shards=3, shard_index=1, seed=4, workers=2,
                       use_multiprocessing=True) as pooled:
        for i in range(len(plain)):
            for a, b in zip(plain[i], pooled[i]):
                np.testing.assert_array_equal(a, b)


def test_shard_arguments_and_environment(indexed_manifest: Path, monkeypatch):
    for name in ("TF_CONFIG", "KERAS_DISTRIBUTION_NUM_PROCESSES", "KERAS_DISTRIBUTION_PROCESS_ID", "WORLD_SIZE",
                 "RANK"):
        monkeypatch.delenv(name, raising=False)
    assert shard_from_environment() == Shard(1, 0, "none")
    cluster = {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2", "127.0.0.1:3"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    gen = DataGenerator(indexed_manifest, "train", num_shards="auto", batch_size=8)
    assert (gen.num_shards, gen.shard_index, gen.shard_batch_size) == (3, 2, 3)
    assert "shard=2 of 3" in repr(gen)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "evaluator", "index": 0}}))
    with pytest.raises(ArgumentError, match="'evaluator' task"):
        shard_from_environment()
    monkeypatch.delenv("TF_CONFIG")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert shard_from_environment() == Shard(4, 3, "WORLD_SIZE/RANK")
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ArgumentError, match="`RANK` must be in"):
        shard_from_environment()
    for kwargs, match in [({"num_shards": 2}, "pass this worker's `shard_index`"),
                          ({"num_shards": 2, "shard_index": 2}, "shard_index"),
                          ({"num_shards": 0}, "num_shards"),
                          ({"num_shards": "all"}, "'auto'"),
                          ({"num_shards": "auto", "shard_index": 0}, "leave it unset"),
                          ({"num_shards": 2, "shard_index": 0, "label_mode": None}, "needs labels")]:
        with pytest.raises(ArgumentError, match=match):
            DataGenerator(indexed_manifest, "train", **kwargs)


def test_one_process_pads_its_batches_to_a_multiple(indexed_manifest: Path):
    """pad_to_multiple (for keras.distribution.DataParallel): 36 = 3 * 10 + 6 samples, batches of 10 padded to
    a multiple of 4: 12, 12, 12, then 6 real rows and 2 zero-weight copies of the batch's first sample; the real
    rows keep their weights (1 here, the class weights below)."""
    plain = DataGenerator(indexed_manifest, "train", batch_size=10, seed=5)
    padded = DataGenerator(indexed_manifest, "train", batch_size=10, seed=5, pad_to_multiple=4)
    assert padded.yields_weights and len(padded) == len(plain) == 4
    for k in range(len(plain)):
        x, y = plain.make_batch(k)
        xp, yp, wp = padded.make_batch(k)
        assert len(xp) == (12 if k < 3 else 8)
        np.testing.assert_array_equal(xp[: len(x)], x)
        np.testing.assert_array_equal(yp[: len(y)], y)
        np.testing.assert_array_equal(wp, [1.0] * len(x) + [0.0] * (len(xp) - len(x)))
    np.testing.assert_array_equal(xp[6:], np.repeat(x[:1], 2, axis=0))
    weights = {"class_weight": {"a": 1, "b": 2, "c": 3}}
    _, _, w = DataGenerator(indexed_manifest, "train", batch_size=10, seed=5, **weights).make_batch(3)
    _, _, wp = DataGenerator(indexed_manifest, "train", batch_size=10, seed=5, pad_to_multiple=4,
                             **weights).make_batch(3)
    np.testing.assert_array_equal(wp, [*w, 0.0, 0.0])
    for kwargs, match in [({"label_mode": None}, "needs labels"), ({"num_shards": 2, "shard_index": 0}, "one process")]:
        with pytest.raises(ArgumentError, match=match):
            DataGenerator(indexed_manifest, "train", pad_to_multiple=4, **kwargs)
