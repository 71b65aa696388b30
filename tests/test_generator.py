"""DataGenerator basics: length, last batch, label modes, determinism, classic form, model.fit."""

from pathlib import Path

import numpy as np
import pytest

from kpipe.generator import DataGenerator
from kpipe.manifest import Manifest


def _ids_of(x: np.ndarray) -> list[int]:
    """Sample indices encoded in the data (each sample is filled with its index)."""
    return [int(v) for v in x.reshape(len(x), -1)[:, 0]]


def test_len_and_last_partial_batch(indexed_manifest: Path):
    m = Manifest.load(indexed_manifest)
    n = len(m.partition["train"])  # 36
    gen = DataGenerator(indexed_manifest, "train", batch_size=10)
    assert n == 36 and len(gen) == 4
    sizes = [len(gen[i][0]) for i in range(len(gen))]
    assert sizes == [10, 10, 10, 6]
    dropped = DataGenerator(indexed_manifest, "train", batch_size=10, drop_remainder=True)
    assert len(dropped) == 3
    with pytest.raises(IndexError):
        gen[4]


def test_batch_content_matches_ids_and_labels(indexed_manifest: Path):
    m = Manifest.load(indexed_manifest)
    gen = DataGenerator(indexed_manifest, "validation", batch_size=5)
    assert not gen.shuffle  # validation defaults to sequential
    x, y = gen[0]
    assert x.shape == (5, 4, 4, 1) and x.dtype == np.float32
    assert y.dtype == np.int32 and y.shape == (5,)
    ids = gen.batch_ids(0)
    assert ids == m.partition["validation"][:5]
    expected = [m.labels[i] for i in ids]
    assert y.tolist() == expected
    # the sample file holds its global index; IDs are "<class>_s_<k>"
    np.testing.assert_array_equal(x, np.stack([np.load(m.root / f"{i}.npy") for i in ids]))


def test_label_modes_and_rescale(indexed_manifest: Path):
    cat = DataGenerator(indexed_manifest, "train", batch_size=4, label_mode="categorical", shuffle=False)
    i = DataGenerator(indexed_manifest, "train", batch_size=4, label_mode="int", shuffle=False, rescale=0.5)
    xc, yc = cat[1]
    xi, yi = i[1]
    assert yc.shape == (4, 3) and yc.dtype == np.float32
    np.testing.assert_array_equal(yc.argmax(1), yi)
    np.testing.assert_array_equal(yc.sum(1), np.ones(4))
    np.testing.assert_allclose(xi, xc * 0.5)
    (x_only,) = DataGenerator(indexed_manifest, "train", batch_size=4, label_mode=None)[0]
    assert x_only.shape == (4, 4, 4, 1)
    with pytest.raises(ValueError, match="needs exactly 2 classes"):
        DataGenerator(indexed_manifest, "train", label_mode="binary")


def test_binary_label_mode(tmp_path: Path):
    from helpers import make_indexed_npy_folder
    from kpipe.prepare import prepare

    raw = make_indexed_npy_folder(tmp_path / "raw", {"neg": 6, "pos": 6})
    m = prepare(raw, tmp_path / "p", split="0.5,0.25,0.25", n_jobs=1).manifest
    x, y = DataGenerator(m, "train", batch_size=6, label_mode="binary")[0]
    assert y.shape == (6, 1) and y.dtype == np.float32
    assert set(np.unique(y)) <= {0.0, 1.0}


def test_epoch_order_is_pure_function_of_seed_and_epoch(indexed_manifest: Path):
    a = DataGenerator(indexed_manifest, "train", batch_size=8, seed=1)
    b = DataGenerator(indexed_manifest, "train", batch_size=8, seed=1)
    c = DataGenerator(indexed_manifest, "train", batch_size=8, seed=2)
    first = [a.batch_ids(i) for i in range(len(a))]
    assert first == [b.batch_ids(i) for i in range(len(b))]
    assert first != [c.batch_ids(i) for i in range(len(c))]
    a.on_epoch_end()
    second = [a.batch_ids(i) for i in range(len(a))]
    assert second != first
    assert sorted(sum(second, [])) == sorted(sum(first, []))  # each epoch: every ID exactly once
    resumed = DataGenerator(indexed_manifest, "train", batch_size=8, seed=1, initial_epoch=1)
    assert [resumed.batch_ids(i) for i in range(len(resumed))] == second


def test_pickle_round_trip_gives_same_batches(indexed_manifest: Path):
    import pickle

    gen = DataGenerator(indexed_manifest, "train", batch_size=8, seed=3)
    gen.on_epoch_end()
    clone = pickle.loads(pickle.dumps(gen))
    for i in range(len(gen)):
        np.testing.assert_array_equal(gen[i][0], clone[i][0])


def test_classic_constructor(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    ids = [f"id-{k}" for k in range(7)]
    for k, sid in enumerate(ids):
        np.save(data / f"{sid}.npy", np.full((3, 2), k, np.float32))
    labels = {sid: k % 2 for k, sid in enumerate(ids)}
    gen = DataGenerator(list_IDs=ids, labels=labels, data_dir=data, batch_size=3, shuffle=False,
                        label_mode="categorical")
    assert len(gen) == 3
    x, y = gen[2]
    assert x.shape == (1, 3, 2) and x[0, 0, 0] == 6
    assert y.tolist() == [[1.0, 0.0]]
    with pytest.raises(ValueError, match="no label for 1 of `list_IDs`"):
        DataGenerator(list_IDs=ids + ["x"], labels=labels, data_dir=data)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, r"`batch_size` must be a positive integer. Received: batch_size=0"),
        ({"label_mode": "onehot"}, r"`label_mode` must be one of"),
        ({"rescale": float("nan")}, r"`rescale` must be a finite number"),
    ],
)
def test_argument_errors(indexed_manifest: Path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataGenerator(indexed_manifest, "train", **kwargs)


def test_missing_sample_file_names_id_and_file(indexed_manifest: Path):
    from kpipe.errors import SampleNotFoundError

    m = Manifest.load(indexed_manifest)
    victim = m.partition["test"][0]
    (m.root / f"{victim}.npy").unlink()
    gen = DataGenerator(m, "test", batch_size=64)
    with pytest.raises(SampleNotFoundError, match=f"Sample '{victim}' has no file"):
        gen[0]


class RecordingGenerator(DataGenerator):
    """Writes the IDs of every batch it makes to a file (works from any process)."""

    log_dir: str = ""

    def __getitem__(self, index):
        batch = super().__getitem__(index)
        ids = self.batch_ids(int(index))
        (Path(self.log_dir) / f"e{self.epoch}_b{int(index)}_{np.random.randint(1 << 30)}.txt").write_text(
            "\n".join(ids)
        )
        return batch


@pytest.mark.timeout(300)
def test_fit_with_two_processes_sees_every_id_once_per_epoch(indexed_manifest: Path, tmp_path: Path):
    import keras

    log = tmp_path / "log"
    log.mkdir()
    gen = RecordingGenerator(indexed_manifest, "train", batch_size=8, seed=0, workers=2,
                             use_multiprocessing=True, max_queue_size=4)
    gen.log_dir = str(log)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(gen, epochs=3, shuffle=False, verbose=0)
    assert gen.epoch == 3

    train_ids = sorted(Manifest.load(indexed_manifest).partition["train"])
    orders = []
    for epoch in range(3):
        batches = {}
        for f in log.glob(f"e{epoch}_b*"):
            index = int(f.name.split("_")[1][1:])
            ids = f.read_text().split("\n")
            assert batches.setdefault(index, ids) == ids  # a batch re-read is identical
        assert sorted(batches) == list(range(len(gen)))
        order = [sid for i in sorted(batches) for sid in batches[i]]
        assert sorted(order) == train_ids  # every training ID exactly once
        orders.append(order)
    assert orders[0] != orders[1] != orders[2] != orders[0]
    # fit's epoch e is the generator's epoch e: the batches a single process computes for it
    fresh = DataGenerator(indexed_manifest, "train", batch_size=8, seed=0)
    for epoch, order in enumerate(orders):
        assert order == [sid for i in range(len(fresh)) for sid in fresh.batch_ids(i, epoch=epoch)]
