"""The generator's read path (issue 14 item 2): IDs mapped to store rows once, one plan per epoch, new arrays
for every batch (Keras keeps them), the cast + rescale in one pass equal to astype-then-multiply."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import make_pattern_folder

from kpipe.convert import convert
from kpipe.generator import DataGenerator
from kpipe.manifest import Manifest
from kpipe.prepare import prepare
from kpipe.storage import MemoryStore, open_store


@pytest.fixture(scope="module")
def uint8_datasets(tmp_path_factory) -> dict[str, Path]:
    """3 classes x 40 uint8 (8, 8, 1) samples, as npy and as hdf5 (3 shards)."""
    tmp = tmp_path_factory.mktemp("uint8")
    raw = make_pattern_folder(tmp / "raw", num_classes=3, per_class=40)
    npy = prepare(raw, tmp / "npy", split="0.6,0.2,0.2", n_jobs=1).manifest.path
    h5 = convert(npy, tmp / "hdf5", to="hdf5", shard_size=30).manifest.path
    return {"npy": npy, "hdf5": h5}


def _generators(paths: dict[str, Path], **kwargs) -> dict[str, DataGenerator]:
    return {"npy": DataGenerator(paths["npy"], "train", **kwargs),
            "hdf5": DataGenerator(paths["hdf5"], "train", **kwargs),
            "memory": DataGenerator(paths["hdf5"], "train", cache="memory", **kwargs)}


def _stored(path: Path, ids: list[str]) -> np.ndarray:
    m = Manifest.load(path)
    return np.stack([np.load(Path(m.path).parent / "data" / f"{i}.npy") for i in ids])


@pytest.mark.parametrize("dtype, rescale", [("float32", 1 / 255), ("float64", 0.5), ("float32", None),
                                            ("uint8", None), ("int32", 3)])
def test_cast_and_rescale_equal_astype_then_multiply(uint8_datasets, dtype, rescale):
    gens = _generators(uint8_datasets, batch_size=16, seed=3, dtype=dtype, rescale=rescale, class_weight="balanced")
    for i in range(len(gens["npy"])):
        ids = gens["npy"].batch_ids(i)
        expected = _stored(uint8_datasets["npy"], ids).astype(dtype)
        if rescale is not None:
            expected *= np.dtype(dtype).type(rescale)
        for kind, gen in gens.items():
            assert gen.batch_ids(i) == ids
            x, y, w = gen[i]
            assert x.dtype == np.dtype(dtype), kind
            np.testing.assert_array_equal(x, expected, err_msg=kind)  # bit for bit
            assert y.tolist() == [gen.manifest.labels[s] for s in ids] and w.dtype == np.float32


def test_every_batch_is_a_new_array(uint8_datasets):
    """Keras may keep a batch (tf.data wraps it without a copy, and prefetches): nothing returned is reused."""
    for rescale in (None, 1 / 255):  # the same dtype (read straight), and a cast through the reused read buffer
        for kind, gen in _generators(uint8_datasets, batch_size=8, dtype="uint8" if rescale is None else "float32",
                                     rescale=rescale, class_weight="balanced").items():
            batches = [gen[i] for i in range(len(gen))] + [gen[0], gen[len(gen) - 1]]
            arrays = [a for b in batches for a in b]
            for a_i, a in enumerate(arrays):
                for b in arrays[a_i + 1 :]:
                    assert not np.shares_memory(a, b), kind
            np.testing.assert_array_equal(batches[0][0], batches[-2][0])


def test_batches_through_keras_tf_dataset_are_intact(uint8_datasets):
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    gen = DataGenerator(uint8_datasets["hdf5"], "train", batch_size=8, rescale=1 / 255, cache="memory")
    expected = [gen.make_batch(k) for k in range(len(gen))]
    got = list(PyDatasetAdapter(gen, shuffle=False).get_tf_dataset())
    assert len(got) == len(expected)
    for (x, y), (ex, ey) in zip(got, expected):
        np.testing.assert_array_equal(x.numpy(), ex)
        np.testing.assert_array_equal(y.numpy(), ey)


def test_ids_map_to_rows_once_and_the_plan_once_per_epoch(uint8_datasets, monkeypatch):
    gen = DataGenerator(uint8_datasets["hdf5"], "train", batch_size=8, seed=1)
    calls = {"rows": 0, "indices": 0}
    rows, indices = gen.store.rows, type(gen.sampler).indices

    def count_rows(ids):
        calls["rows"] += 1
        return rows(ids)

    def count_indices(sampler, epoch):
        calls["indices"] += 1
        return indices(sampler, epoch)

    monkeypatch.setattr(gen.store, "rows", count_rows)
    monkeypatch.setattr(type(gen.sampler), "indices", count_indices)
    for _ in range(3):
        for i in range(len(gen)):
            gen[i]
        gen.on_epoch_end()
    assert calls == {"rows": 1, "indices": 3}


def test_a_store_set_later_is_read_by_its_own_rows(uint8_datasets):
    """`gen.store = other` (another row numbering: a cache of the IDs in reverse order) serves the same batches."""
    gen = DataGenerator(uint8_datasets["hdf5"], "train", batch_size=8, seed=2)
    expected = [gen[i] for i in range(len(gen))]
    gen.store = MemoryStore(open_store(Manifest.load(uint8_datasets["hdf5"])), gen.ids[::-1])
    for i, (x, y) in enumerate(expected):
        got_x, got_y = gen[i]
        np.testing.assert_array_equal(got_x, x)
        np.testing.assert_array_equal(got_y, y)


def test_one_hot_table_and_per_batch_one_hot_agree(uint8_datasets, monkeypatch):
    import kpipe.generator as generator

    table = DataGenerator(uint8_datasets["npy"], "train", batch_size=8, label_mode="categorical")
    monkeypatch.setattr(generator, "_ONE_HOT_TABLE_CLASSES", 0)  # as with more classes than the table holds
    per_batch = DataGenerator(uint8_datasets["npy"], "train", batch_size=8, label_mode="categorical")
    for i in range(len(table)):
        y = table[i][1]
        assert y.shape == (8, 3) and y.dtype == np.float32 and y.flags.c_contiguous
        np.testing.assert_array_equal(y, per_batch[i][1])
        assert y.argmax(1).tolist() == [table.manifest.labels[s] for s in table.batch_ids(i)]


def test_large_npy_partition_gets_a_one_time_hint_to_convert(uint8_datasets, monkeypatch, recwarn):
    import warnings

    import kpipe.generator as generator

    monkeypatch.setattr(generator, "_NPY_HINTED", set())
    monkeypatch.setattr(generator, "NPY_HINT_SAMPLES", 50)  # the train partition holds 72
    warnings.simplefilter("always")
    DataGenerator(uint8_datasets["hdf5"], "train")
    DataGenerator(uint8_datasets["npy"], "train", cache="memory")  # read once: nothing to gain
    DataGenerator(uint8_datasets["npy"], "validation")  # 24 samples
    assert not [w for w in recwarn if "kpipe convert" in str(w.message)]
    with pytest.warns(UserWarning, match=r"Partition 'train' holds 72 samples stored as one \.npy file each") as info:
        DataGenerator(uint8_datasets["npy"], "train")
    (hint,) = [w for w in info if "kpipe convert" in str(w.message)]
    assert f"kpipe convert {uint8_datasets['npy']} --to hdf5 --out DIR" in str(hint.message)
    assert hint.filename == __file__  # points at the caller's line
    recwarn.clear()
    DataGenerator(uint8_datasets["npy"], "train", batch_size=4)  # once per dataset and process
    assert not [w for w in recwarn if "kpipe convert" in str(w.message)]
    monkeypatch.setattr(generator, "_NPY_HINTED", set())
    monkeypatch.setattr(generator, "NPY_HINT_MAX_SAMPLE_BYTES", 63)  # samples of 64 bytes: the copy dominates
    DataGenerator(uint8_datasets["npy"], "train")
    assert not [w for w in recwarn if "kpipe convert" in str(w.message)]
