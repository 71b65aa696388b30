"""DataGenerator basics: length, last batch, label modes, determinism, classic form; its position under every
sequence of hooks Keras makes; steps_per_epoch; its own prefetching (threads, processes, dead workers); close();
pickling as a recipe (issues 8, 10, 11, 15)."""

from __future__ import annotations

import faulthandler
import gc
import multiprocessing
import os
import pickle
import signal
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from kpipe.errors import ArgumentError, ManifestError, SamplingError, TransformError, WorkerError
from kpipe.generator import DataGenerator, EpochSync
from kpipe.manifest import Manifest
from kpipe.sampling import BalancedSampler, ShuffleSampler


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
    with pytest.warns(UserWarning, match=r"drop_remainder=True drops 6 of the 36 samples of every epoch"):
        dropped = DataGenerator(indexed_manifest, "train", batch_size=10, drop_remainder=True)
    assert len(dropped) == 3 and dropped.num_dropped == 6 and "dropped_per_epoch=6" in repr(dropped)
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
    _, y = DataGenerator(m, "train", batch_size=6, label_mode="binary")[0]
    assert y.shape == (6, 1) and y.dtype == np.float32
    assert set(np.unique(y)) <= {0.0, 1.0}


def test_epoch_order_is_pure_function_of_seed_and_epoch(indexed_manifest: Path):
    a = DataGenerator(indexed_manifest, "train", batch_size=8, seed=1)
    b = DataGenerator(indexed_manifest, "train", batch_size=8, seed=1)
    c = DataGenerator(indexed_manifest, "train", batch_size=8, seed=2)
    first = [a.batch_ids(i) for i in range(len(a))]
    assert first == [b.batch_ids(i) for i in range(len(b))]
    assert first != [c.batch_ids(i) for i in range(len(c))]
    a.on_epoch_end()  # no batch of this epoch was served: the position does not move
    assert a.epoch == 0 and [a.batch_ids(i) for i in range(len(a))] == first
    a.epoch = 1
    second = [a.batch_ids(i) for i in range(len(a))]
    assert second != first
    assert sorted(np.concatenate(second)) == sorted(np.concatenate(first))  # each epoch: every ID exactly once
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
        ({"worker": 2}, r"`DataGenerator` has no argument 'worker'"),
        ({"workers": -1}, r"`workers` must be an integer >= 0"),
        ({"steps_per_epoch": 0}, r"`steps_per_epoch` must be a positive integer"),
        ({"seed": 2**64}, r"`seed` must be an integer in \[0, 18446744073709551615\]"),
        ({"labels": {"a": 0}}, r"`labels` goes with `list_IDs`"),
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




def test_transform_errors_name_batch_epoch_and_ids(indexed_manifest: Path):
    """A failing transform used to surface as its own bare exception, naming neither the batch nor the IDs."""
    for loader in ({}, {"workers": 2}):
        gen = DataGenerator(indexed_manifest, "train", batch_size=8, transform=divide_by_zero, **loader)
        gen.epoch = 2
        with pytest.raises(TransformError, match=r"`transform` failed on batch 1 of epoch 2 of partition 'train' "
                                                 r"\(sample IDs '.*'\): ZeroDivisionError: boom") as info:
            gen[1]
        assert isinstance(info.value.__cause__, ZeroDivisionError)
        assert gen.last_error is info.value
        assert repr(gen.batch_ids(1)[0]) in str(info.value)
        gen.close()
    with pytest.raises(TransformError, match=r"returned a tuple of 3 items"):
        DataGenerator(indexed_manifest, "train", transform=lambda x, y, rng: (x, y, y))[0]


def divide_by_zero(x, y, rng):
    raise ZeroDivisionError("boom")


def test_missing_sample_is_kept_in_last_error(indexed_manifest: Path):
    from kpipe.errors import SampleNotFoundError

    m = Manifest.load(indexed_manifest)
    gen = DataGenerator(m, "test", batch_size=64)
    assert gen.last_error is None
    (m.root / f"{m.partition['test'][3]}.npy").unlink()
    with pytest.raises(SampleNotFoundError) as info:
        gen[0]
    assert gen.last_error is info.value


# ------------------------------------------------------------------ position: the hooks Keras calls
def _drive(gen: DataGenerator, script: str, epochs: int) -> list[int]:
    """Run a hook sequence; returns the global batch index of every request made inside an epoch's body.

    ``script`` names the prologue (what Keras does once before the epochs) and the epoch body's hooks.
    """
    n = len(gen)
    served: list[int] = []

    def request(i: int, record: bool) -> None:
        k = gen.epoch * n + i
        gen[i]
        if record:
            served.append(k)

    prologue, body = script.split("|")
    for step in prologue.split():
        if step == "peek":  # TF: batches 0 and 1 read for the tensor spec
            for i in range(min(2, n)):
                request(i, False)
        elif step == "begin":
            gen.on_epoch_begin()
        elif step == "end":
            gen.on_epoch_end()
        elif step == "one":  # JAX / torch symbolic build of an unbuilt model: one batch
            request(0, False)
    for _ in range(epochs):
        if "begin" in body:
            gen.on_epoch_begin()
        for i in range(n):
            request(i, True)
        gen.on_epoch_end()
    return served


@pytest.mark.parametrize("batch_size", [6, 18])  # 6 and 2 batches: with 2, TF's shape peek reads a whole epoch
@pytest.mark.parametrize("script", [
    "peek end | begin",  # Keras >= 3.8, TensorFlow: peek, reset (on_epoch_end), then begin/end per epoch
    "begin one end | begin",  # Keras >= 3.8, JAX / PyTorch with an unbuilt model
    "peek | begin",  # Keras 3.4 - 3.7: no reset call
    "peek | ",  # Keras 3.3: no on_epoch_begin at all
    " | ",  # a hand-written loop: batches, then on_epoch_end
])
def test_every_hook_sequence_serves_consecutive_windows(indexed_manifest: Path, script: str, batch_size: int):
    """The position used to rely on recognising Keras' reset call by walking the call stack."""
    gen = DataGenerator(indexed_manifest, "train", batch_size=batch_size)
    served = _drive(gen, script, epochs=3)
    assert served == list(range(3 * len(gen))) and gen.epoch == 3


def test_evaluation_hooks_and_epoch_sync(indexed_manifest: Path):
    val = DataGenerator(indexed_manifest, "validation", batch_size=4)
    for evaluation in range(3):  # Keras' evaluate: reset (end), begin, batches, end
        val.on_epoch_end()
        val.on_epoch_begin()
        assert val.epoch == evaluation
        for i in range(len(val)):
            val[i]
        val.on_epoch_end()
    gen = DataGenerator(indexed_manifest, "train", batch_size=6)
    gen.on_epoch_end()  # an epoch that served nothing does not move
    assert gen.epoch == 0
    gen[len(gen) - 1]
    gen.epoch = 4  # EpochSync's way: a jump clears the window
    gen.on_epoch_end()
    assert gen.epoch == 4


def test_fit_steps_per_epoch_below_len_reads_each_window_over_several_keras_epochs(indexed_manifest: Path):
    """fit(steps_per_epoch=2) on 9 batches: Keras continues its iterator across its epochs; the position moves
    only when the window's last batch was asked for, so no epoch's batches mix with another's."""
    gen = DataGenerator(indexed_manifest, "train", batch_size=4)
    n = len(gen)
    assert n == 9
    served = []
    i = 0
    for _keras_epoch in range(7):  # Keras: [0, 1] [2, 3] [4, 5] [6, 7] [8] (ran out of data) [0, 1] [2, 3]
        gen.on_epoch_begin()
        for _ in range(2):
            if i == n:  # the pass is over: Keras ends this epoch early, and starts a new iterator
                break
            served.append(gen.epoch * n + i)
            gen[i]
            i += 1
        if i == n:
            i = 0
        gen.on_epoch_end()
    assert served == list(range(13))


def test_steps_per_epoch_is_a_window_on_one_stream(indexed_manifest: Path):
    """40 samples, batch 4, steps_per_epoch=4 used to give Keras epochs of 4 + 4 + 2 batches; now every fit epoch
    has 4 batches, read in order from a stream where every sample comes once per sampler epoch."""
    gen = DataGenerator(indexed_manifest, "train", batch_size=4, steps_per_epoch=4)
    full = DataGenerator(indexed_manifest, "train", batch_size=4)
    assert len(gen) == 4 and gen.batches_per_sampler_epoch == len(full) == 9
    stream = []
    for epoch in range(5):
        for i in range(4):
            stream.append(gen.batch_ids(i, epoch=epoch))
            np.testing.assert_array_equal(gen.make_batch(epoch * 4 + i)[0], full.make_batch(epoch * 4 + i)[0])
    first, second = stream[:9], stream[9:18]
    assert sorted(np.concatenate(first)) == sorted(full.ids) == sorted(np.concatenate(second))
    assert first == [full.batch_ids(i, epoch=0) for i in range(9)]
    assert second == [full.batch_ids(i, epoch=1) for i in range(9)]
    assert gen.state_dict()["batches_per_sampler_epoch"] == 9


# ------------------------------------------------------------------ samplers own seed and batch size (issue 8)
def test_sampler_object_owns_seed_and_batch_size(indexed_manifest: Path):
    gen = DataGenerator(indexed_manifest, "train", sampler=BalancedSampler(batch_size=6, seed=5, balance="oversample"))
    assert gen.seed == 5 and gen.batch_size == 6 and gen.sampling == "balanced" and gen.balance == "oversample"
    assert gen.state_dict()["seed"] == 5  # was 0: the generator's own default seed
    short = DataGenerator(indexed_manifest, "train", batch_size=6, seed=5, sampling="balanced", balance="oversample")
    assert [gen.batch_ids(i) for i in range(len(gen))] == [short.batch_ids(i) for i in range(len(short))]
    assert DataGenerator(indexed_manifest, "train", batch_size=6, sampler=ShuffleSampler(seed=2)).batch_size == 6
    with pytest.raises(SamplingError, match=r"The sampler is seeded 5 and owns the seed"):
        DataGenerator(indexed_manifest, "train", seed=1, sampler=BalancedSampler(seed=5))
    with pytest.raises(SamplingError, match=r"The sampler plans batches of 6"):
        DataGenerator(indexed_manifest, "train", batch_size=8, sampler=BalancedSampler(batch_size=6))
    with pytest.raises(SamplingError, match=r"set its options on the sampler.*Received: balance='oversample'"):
        DataGenerator(indexed_manifest, "train", balance="oversample", sampler=BalancedSampler())


# ------------------------------------------------------------------ pickling: the recipe (issue 8)
def test_pickle_is_the_recipe_and_refuses_a_changed_manifest(indexed_manifest: Path, tmp_path: Path):
    gen = DataGenerator(indexed_manifest, "train", batch_size=8, sampling="balanced", balance="oversample",
                        condition_weights={"a": 2})
    data = pickle.dumps(gen)
    from_object = pickle.dumps(DataGenerator(Manifest.load(indexed_manifest), "train", batch_size=8))
    some_id = gen.ids[0].encode()
    assert some_id not in data and some_id in from_object  # the path and the arguments, not the manifest's IDs
    assert len(data) < 1500
    clone = pickle.loads(data)
    for k in range(len(gen) + 2):
        for a, b in zip(gen.make_batch(k), clone.make_batch(k)):
            np.testing.assert_array_equal(a, b)
    m = Manifest.load(indexed_manifest)
    m.save()  # re-written: another generation of the dataset
    with pytest.raises(ManifestError, match=r"changed after the generator was built"):
        pickle.loads(data)


# ------------------------------------------------------------------ prefetching, close (issues 10, 11, 15)
def test_prefetch_threads_serve_the_single_process_batches_and_close(indexed_manifest: Path, monkeypatch):
    import kpipe.generator as generator_module

    ref = DataGenerator(indexed_manifest, "train", batch_size=4, transform=noise, cache="memory")
    before = threading.active_count()
    gen = DataGenerator(indexed_manifest, "train", batch_size=4, transform=noise, cache="memory", workers=3,
                        max_queue_size=4)
    assert (gen.workers, gen.use_multiprocessing) == (1, False)  # what Keras sees
    assert gen.prefetch == (3, False, 4)  # what was asked for
    for epoch in range(2):
        gen.epoch = epoch
        for i in range(len(gen)):
            for a, b in zip(gen[i], ref.make_batch(epoch * len(gen) + i)):
                np.testing.assert_array_equal(a, b)
    assert threading.active_count() > before
    gen.close()
    assert threading.active_count() <= before + 1  # the reader pool may have started
    assert gen.store.nbytes == 0  # the cache is released ...
    np.testing.assert_array_equal(gen[2][0], ref.make_batch(len(gen) + 2)[0])  # ... and loaded again when needed
    gen.close()
    # at an epoch's end, an idle pool is released by itself
    monkeypatch.setattr(generator_module, "IDLE_RELEASE_SECONDS", 0.2)
    with DataGenerator(indexed_manifest, "train", batch_size=12, workers=2) as idle:
        for i in range(len(idle)):
            idle[i]
        idle.on_epoch_end()
        deadline = time.monotonic() + 10
        while idle._prefetcher.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not idle._prefetcher.running


def noise(x, y, rng):
    """A module-level transform: integer noise, different per batch and epoch."""
    return x + rng.integers(0, 1000, size=(len(x), 1, 1, 1)).astype(x.dtype) * 1000, y


def crash(x, y, rng):
    """Kills the worker process that makes a batch (never the test process)."""
    if multiprocessing.parent_process() is not None:
        faulthandler.disable()  # no traceback dump for the crash this test wants
        os.kill(os.getpid(), signal.SIGKILL if x.reshape(len(x), -1)[0, 0] % 2 else signal.SIGSEGV)
        os._exit(3)
    return x


def _tiny_model():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.mark.timeout(120)
def test_dead_worker_process_fails_fit_within_seconds_naming_the_batch(indexed_manifest: Path):
    """A worker killed by a signal or os._exit used to leave fit hung forever."""
    gen = DataGenerator(indexed_manifest, "train", batch_size=8, transform=crash, workers=2,
                        use_multiprocessing=True)
    model = _tiny_model()
    others = set(multiprocessing.active_children())  # e.g. joblib's reusable workers from an earlier prepare
    start = time.monotonic()
    with pytest.raises(Exception, match=r"worker process died") as info:  # TF may wrap it
        model.fit(gen, epochs=2, shuffle=False, verbose=0)
    assert time.monotonic() - start < 30
    assert isinstance(gen.last_error, WorkerError)
    assert "batch 0 of epoch 0 of partition 'train'" in str(gen.last_error)
    assert isinstance(info.value, WorkerError) or "worker process died" in str(info.value)
    deadline = time.monotonic() + 10
    while set(multiprocessing.active_children()) - others and time.monotonic() < deadline:  # no orphans
        time.sleep(0.05)
    assert set(multiprocessing.active_children()) - others == set()
    gen.close()


@pytest.mark.timeout(300)
def test_fit_over_steps_per_epoch_windows_is_exact_with_threads_and_processes(indexed_manifest: Path):
    """Through the real model.fit: 5 epochs of 4 batches over 9-batch sampler epochs, served exactly as one
    process computes them, with 2 threads and with 2 processes; EpochSync refuses a fit steps_per_epoch."""
    import keras

    seen: list[list[np.ndarray]] = []

    class Recording(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(keras.ops.reshape(x, (-1, 16)) / 1e6)

        def train_step(self, data):
            seen.append([np.asarray(t) for t in data])
            return super().train_step(data)

    ref = DataGenerator(indexed_manifest, "train", batch_size=4, transform=noise)
    expected = [ref.make_batch(k) for k in range(20)]
    for loader in ({}, {"workers": 2}, {"workers": 2, "use_multiprocessing": True}):
        seen.clear()
        keras.utils.set_random_seed(0)
        model = Recording()
        model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      run_eagerly=True)
        with DataGenerator(indexed_manifest, "train", batch_size=4, transform=noise, steps_per_epoch=4,
                           **loader) as gen:
            model.fit(gen, epochs=5, shuffle=False, verbose=0)
            assert gen.epoch == 5
        assert len(seen) == 20, loader
        for got, want in zip(seen, expected):
            for a, b in zip(got, want):
                np.testing.assert_array_equal(a, b)
    gen = DataGenerator(indexed_manifest, "train", batch_size=4)
    with pytest.raises(ArgumentError, match=r"DataGenerator\(\.\.\., steps_per_epoch=2\)"):
        _tiny_model().fit(gen, epochs=1, steps_per_epoch=2, verbose=0, callbacks=[EpochSync(gen)])


@pytest.mark.timeout(300)
def test_rebuilt_generators_keep_threads_and_memory_flat(tmp_path: Path):
    """A loop of DataGenerator(cache="memory", workers=2) -> fit -> close used to add threads and memory every
    round (Keras keeps every dataset given to fit alive)."""
    from helpers import make_indexed_npy_folder

    from kpipe.prepare import prepare

    raw = make_indexed_npy_folder(tmp_path / "raw", {"a": 200, "b": 200}, shape=(64, 64, 1))
    m = prepare(raw, tmp_path / "p", split="0.8,0.2,0", n_jobs=1).manifest  # train cache: 5.2 MB
    import keras

    model = keras.Sequential([keras.Input((64, 64, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # Python-heap bytes (numpy's arrays included), not RSS: new threads' malloc arenas and older Keras' retraced
    # functions (3.5 keeps every fitted dataset alive) move RSS by a few MB a round without any leak of kpipe's.
    traced, threads = [], []
    tracemalloc.start()
    try:
        for _round in range(10):
            with DataGenerator(m, "train", batch_size=64, cache="memory", workers=2) as train, \
                    DataGenerator(m, "validation", batch_size=64, workers=2) as val:
                model.fit(train, validation_data=val, epochs=2, shuffle=False, verbose=0)
            gc.collect()
            traced.append(tracemalloc.get_traced_memory()[0] / 1e6)
            threads.append(threading.active_count())
    finally:
        tracemalloc.stop()
    assert threads[-1] <= threads[1], threads
    assert traced[-1] - traced[2] < 5.2, traced  # a leak of the cache would be 5.2 MB per round
    # without close(), rebuilt generators over the same files share one cached array
    a = DataGenerator(m, "train", batch_size=64, cache="memory")
    b = DataGenerator(m.path, "train", batch_size=64, cache="memory")
    c = DataGenerator(m.path, "train", batch_size=64, cache="memory")
    assert b.store._cached is c.store._cached and a.store._cached is not b.store._cached  # a: an object



# ------------------------------------------------------------------ other Keras backends (issue 15)
_BACKEND_CHECK = """
import os, sys, json
import numpy as np
import keras
from kpipe.generator import DataGenerator

served = []

class Log(DataGenerator):
    def __getitem__(self, index):
        batch = super().__getitem__(index)
        served.append((self.epoch, int(index), np.asarray(batch[0]).tolist()))
        return batch

class Marks(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        served.append(("begin", epoch, None))

result = {}
for name, loader in (("threads", {"workers": 2}), ("processes", {"workers": 2, "use_multiprocessing": True})):
    served.clear()
    gen = Log(sys.argv[1], "train", batch_size=4, **loader)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(gen, epochs=3, shuffle=False, verbose=0, callbacks=[Marks()])
    gen.close()
    result[name] = served[:]
print("RESULT" + json.dumps(result))
"""


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_workers_serve_single_process_batches_on_other_backends(indexed_manifest: Path, tmp_path: Path, backend):
    """On JAX and PyTorch, Keras' enqueuer trained 11 batches of epoch 0 twice and shifted every epoch boundary
    when workers > 1; the generator's own pool is now the only prefetcher on every backend."""
    import importlib.util
    import json
    import subprocess
    import sys

    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    script = tmp_path / "check.py"
    script.write_text(_BACKEND_CHECK)
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, str(script), str(indexed_manifest)], env=env, capture_output=True,
                         text=True, timeout=500, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.split("RESULT", 1)[1])
    ref = DataGenerator(indexed_manifest, "train", batch_size=4)
    for name, served in result.items():
        epochs = []
        for entry in served:
            if entry[0] == "begin":
                epochs.append([])
            elif epochs:  # requests before the first epoch are Keras' shape peeks
                epochs[-1].append(entry)
        assert len(epochs) == 3, name
        for e, requests in enumerate(epochs):
            assert [(r[0], r[1]) for r in requests] == [(e, i) for i in range(len(ref))], name
            for _, i, x in requests:
                np.testing.assert_array_equal(np.asarray(x, np.float32), ref.make_batch(e * len(ref) + i)[0])
