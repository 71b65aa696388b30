#!/usr/bin/env python
"""Input-pipeline benchmark: kpipe against what users would pick instead, side by side.

One run measures samples/s for one shuffled epoch at batch size 64, in one
process, for each method, in interleaved rounds (one epoch of every method per
round, the order rotated, after a warm-up round, so the page cache is warm and
a load change on a shared machine hits every method alike); a ratio is the
median of the per-round ratios. Methods:

1. ``numpy``: fancy indexing on the whole array in memory (the ceiling);
2. ``classic``: the Keras ``DataGenerator`` of the Stanford blog post
   (https://stanford.edu/~shervine/blog/keras-how-to-generate-data-on-the-fly):
   a loop of ``np.load`` per ID into a preallocated batch (here of the stored
   dtype and with int labels, which only makes it faster);
3. ``tf.data mem``: ``from_tensor_slices -> shuffle -> batch -> prefetch(AUTOTUNE)``;
4. ``tf.data files``: per-ID ``.npy`` files, ``tf.io.read_file`` +
   ``tf.io.decode_raw`` skipping the header, parallel map, prefetch;
5. ``kpipe npy``: `kpipe.DataGenerator` over per-ID ``.npy`` files;
6. ``kpipe hdf5``: `kpipe.DataGenerator` over HDF5 shards (memory-mapped, as
   ``mmap="auto"`` does for stores up to 256 MiB); ``kpipe hdf5 pread``: the
   same with one ``preadv`` per sample, the path of larger stores;
7. ``... workers=2``: the same fed through Keras' own `PyDataset` adapter
   with 2 worker threads;

plus references: ``h5py naive`` (h5py sorted fancy indexing per batch),
``kpipe hdf5 lzf`` (compressed shards) and ``kpipe cache=memory``.

Every figure gets its ratio to (1) and to (3). Two data sets: 20,000 samples
of 32x32x3 float32 and 5,000 of 128x128x3 uint8 (``--quick``: 4,000 and 1,000).
Optional checks: ``--memory`` (RSS over HDF5 epochs of a ~2 GB data set),
``--training`` (``model.fit`` epoch time, generator over hdf5 vs arrays in memory) and
``--integrity`` (the cost of the read-path integrity checks: the default memory-mapped
HDF5 path against the same path without any check, `ReferenceMmapStore`, interleaved;
plus the one-time sha256 of the shards).

Usage::

    python tools/bench.py                     # full sizes, table + bench.json
    python tools/bench.py --quick --epochs 3  # a quick look
    python tools/bench.py --memory --training --json bench.json
    python tools/bench.py --no-speed --integrity        # the integrity checks' cost only

Data is written under ``--tmp`` (default: a fresh folder in /tmp) and deleted.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

BATCH = 64
SIZES = {
    "32x32x3 float32": {"n": 20_000, "quick": 4_000, "shape": (32, 32, 3), "dtype": "float32"},
    "128x128x3 uint8": {"n": 5_000, "quick": 1_000, "shape": (128, 128, 3), "dtype": "uint8"},
}
NUM_CLASSES = 10


# ------------------------------------------------------------------ data
def make_arrays(n: int, shape, dtype: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        x = rng.standard_normal((n, *shape), dtype=np.float32).astype(dtype, copy=False)
    else:
        x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    y = rng.integers(0, NUM_CLASSES, n).astype(np.int64)
    return x, y


def write_dataset(folder: Path, x: np.ndarray, y: np.ndarray, fmt: str, **options):
    """A prepared dataset (all samples in ``train``) written through kpipe's own writers."""
    from kpipe.manifest import Manifest
    from kpipe.storage import make_writer

    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"s{i:07d}" for i in range(len(x))]
    writer = make_writer(fmt, folder, x.shape[1:], x.dtype, **options)
    step = max(1, (32 << 20) // max(1, x[:1].nbytes))
    for lo in range(0, len(x), step):
        writer.add_many(ids[lo : lo + step], x[lo : lo + step])
    labels = {sid: int(v) for sid, v in zip(ids, y)}
    storage = writer.finish(labels, ids)
    m = Manifest(classes=[str(c) for c in range(NUM_CLASSES)], labels=labels, partition={"train": ids},
                 sample_shape=x.shape[1:], sample_dtype=x.dtype.name, storage=storage)
    m.save(folder / "manifest.json")
    return m


# --------------------------------------------------------------- methods
def epochs_numpy(x, y, epochs):
    n = len(x)
    for e in range(epochs):
        perm = np.random.default_rng(e).permutation(n)

        def run(perm=perm):
            for lo in range(0, n, BATCH):
                idx = perm[lo : lo + BATCH]
                xb, yb = x[idx], y[idx]  # noqa: F841 - the read is what is measured
        yield run


class ClassicGenerator:
    """The Stanford-blog generator: ``np.load('data/' + ID + '.npy')`` per sample."""

    def __init__(self, list_IDs, labels, data_dir, batch_size, dim, dtype, shuffle=True):
        self.list_IDs, self.labels, self.data_dir = list_IDs, labels, data_dir
        self.batch_size, self.dim, self.dtype, self.shuffle = batch_size, dim, dtype, shuffle
        self.on_epoch_end()

    def __len__(self):
        return int(np.ceil(len(self.list_IDs) / self.batch_size))

    def __getitem__(self, index):
        indexes = self.indexes[index * self.batch_size : (index + 1) * self.batch_size]
        list_IDs_temp = [self.list_IDs[k] for k in indexes]
        X = np.empty((len(list_IDs_temp), *self.dim), dtype=self.dtype)
        y = np.empty((len(list_IDs_temp)), dtype=int)
        for i, ID in enumerate(list_IDs_temp):
            X[i,] = np.load(self.data_dir + "/" + ID + ".npy")
            y[i] = self.labels[ID]
        return X, y

    def on_epoch_end(self):
        self.indexes = np.arange(len(self.list_IDs))
        if self.shuffle:
            np.random.shuffle(self.indexes)


def epochs_generator(gen, epochs):
    for _ in range(epochs):
        def run():
            for i in range(len(gen)):
                gen[i]
            gen.on_epoch_end()
        yield run


def epochs_keras_adapter(gen, epochs):
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    adapter = PyDatasetAdapter(gen, shuffle=False)
    for _ in range(epochs):
        def run():
            adapter.on_epoch_begin()
            for _batch in adapter.get_numpy_iterator():
                pass
            adapter.on_epoch_end()
        yield run


def epochs_tf_memory(x, y, epochs):
    import tensorflow as tf

    ds = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), reshuffle_each_iteration=True)
          .batch(BATCH).prefetch(tf.data.AUTOTUNE))
    for _ in range(epochs):
        def run():
            for _batch in ds:
                pass
        yield run


def epochs_tf_files(manifest, y, epochs):
    import tensorflow as tf

    from kpipe.storage.npy import expected_header

    ids = manifest.ids("train")
    root = str(manifest.root)
    paths = [f"{root}/{i}.npy" for i in ids]
    header = len(expected_header(manifest.sample_shape, np.dtype(manifest.sample_dtype)))
    tf_dtype = tf.as_dtype(np.dtype(manifest.sample_dtype))
    shape = manifest.sample_shape

    def load(path, label):
        raw = tf.io.read_file(path)
        data = tf.io.decode_raw(tf.strings.substr(raw, header, -1), tf_dtype)
        return tf.reshape(data, shape), label

    ds = (tf.data.Dataset.from_tensor_slices((paths, y)).shuffle(len(paths), reshuffle_each_iteration=True)
          .map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH).prefetch(tf.data.AUTOTUNE))
    for _ in range(epochs):
        def run():
            for _batch in ds:
                pass
        yield run


def epochs_h5py_naive(manifest, epochs):
    import h5py

    shard = manifest.storage["shards"][0]
    f = h5py.File(manifest.root / shard["file"], "r")
    dset = f["x"]
    n = dset.shape[0]
    for e in range(epochs):
        perm = np.random.default_rng(e).permutation(n)

        def run(perm=perm):
            for lo in range(0, n, BATCH):
                dset[np.sort(perm[lo : lo + BATCH])]
        yield run
    f.close()


MIN_MEASURE_S = 0.3
"""A method whose epoch is shorter is timed over several epochs back to back (so that one scheduler time slice
on a shared machine does not decide a measurement)."""

ENDLESS = 10**9
"""Epochs asked of a method's epoch iterator: as many as the rounds take (the iterators are lazy)."""


def measure_interleaved(methods: dict, n: int, epochs: int) -> dict:
    """One measurement of every method per round, ``epochs + 1`` rounds (the first a warm-up), the order rotated
    each round, so that a load change on the shared machine hits all methods alike. A measurement is one epoch,
    or as many back to back as take `MIN_MEASURE_S` (counted from the warm-up).

    ``methods``: label -> ``make()``, an iterator of epoch runs (as `epochs_generator`; a run may return its own
    ``(wall_s, cpu_s)``). Returns label -> ``{"samples_per_s", "samples_per_cpu_s", "rounds": [samples/s per
    round], "cpu_rounds", "epochs_per_round"}`` (medians; CPU time is the process', all threads, so it is less
    disturbed by other jobs than wall time).
    """
    iters = {label: iter(make()) for label, make in methods.items()}
    reps = dict.fromkeys(methods, 1)
    wall: dict[str, list[float]] = {label: [] for label in methods}
    cpu: dict[str, list[float]] = {label: [] for label in methods}
    labels = list(methods)
    for r in range(epochs + 1):
        for label in labels[r % len(labels):] + labels[: r % len(labels)]:
            gc.collect()
            dt = dc = 0.0
            for _ in range(reps[label]):
                run = next(iters[label])
                t, c = time.perf_counter(), time.process_time()
                own = run()
                if isinstance(own, tuple):  # the run's own clock (an external program)
                    dt, dc = dt + own[0], dc + own[1]
                else:
                    dt, dc = dt + time.perf_counter() - t, dc + time.process_time() - c
            if r == 0:
                reps[label] = max(1, math.ceil(MIN_MEASURE_S / max(dt, 1e-9)))
            else:
                wall[label].append(n * reps[label] / dt)
                cpu[label].append(n * reps[label] / max(dc, 1e-9))
    return {label: {"samples_per_s": statistics.median(wall[label]),
                    "samples_per_cpu_s": statistics.median(cpu[label]),
                    "rounds": [round(v) for v in wall[label]], "cpu_rounds": [round(v) for v in cpu[label]],
                    "epochs_per_round": reps[label]}
            for label in methods}


def paired_ratio(a: dict, b: dict, key: str = "rounds") -> float:
    """Median over rounds of ``a / b`` (both measured in the same round)."""
    return statistics.median(x / y for x, y in zip(a[key], b[key]))


def bench_size(name: str, spec: dict, args, tmp: Path) -> dict:
    import keras  # noqa: F401 - imported before timing

    from kpipe import DataGenerator
    from kpipe.convert import convert
    from kpipe.storage import open_store

    n = args.num_samples or (spec["quick"] if args.quick else spec["n"])
    shape, dtype = spec["shape"], spec["dtype"]
    print(f"\n== {name}: {n} samples ({n * np.prod(shape) * np.dtype(dtype).itemsize / 2**20:.0f} MiB) ==",
          flush=True)
    x, y = make_arrays(n, shape, dtype)
    folder = tmp / name.replace(" ", "_")
    m_npy = write_dataset(folder / "npy", x, y, "npy")
    m_h5 = convert(m_npy, folder / "hdf5", to="hdf5").manifest
    m_lzf = convert(m_npy, folder / "lzf", to="hdf5", compression="lzf").manifest
    E = ENDLESS
    ids = m_npy.ids("train")
    labels = dict(m_npy.labels)

    def gen(manifest, **kw):
        return DataGenerator(manifest, "train", batch_size=BATCH, shuffle=True, dtype=dtype, **kw)

    def gen_pread(manifest):
        """The read path of stores over MMAP_LIMIT_BYTES (256 MiB): one preadv per sample."""
        g = gen(manifest)
        g.store = open_store(g.manifest, mmap="pread")
        return g

    methods = {
        "numpy": lambda: epochs_numpy(x, y, E),
        "classic": lambda: epochs_generator(
            ClassicGenerator(ids, labels, str(m_npy.root), BATCH, shape, dtype), E),
        "tf.data mem": lambda: epochs_tf_memory(x, y, E),
        "tf.data files": lambda: epochs_tf_files(m_npy, y, E),
        "kpipe npy": lambda: epochs_generator(gen(m_npy), E),
        "kpipe hdf5": lambda: epochs_generator(gen(m_h5), E),
        "kpipe hdf5 pread": lambda: epochs_generator(gen_pread(m_h5), E),
        "kpipe npy workers=2": lambda: epochs_keras_adapter(gen(m_npy, workers=2), E),
        "kpipe hdf5 workers=2": lambda: epochs_keras_adapter(gen(m_h5, workers=2), E),
        "h5py naive": lambda: epochs_h5py_naive(m_h5, E),
        "kpipe hdf5 lzf": lambda: epochs_generator(gen(m_lzf), E),
        "kpipe cache=memory": lambda: epochs_generator(gen(m_h5, cache="memory"), E),
    }
    if args.only:
        methods = {k: v for k, v in methods.items() if k in args.only or k in ("numpy", "tf.data mem")}
    print(f"  {len(methods)} methods, {args.epochs} interleaved rounds after a warm-up round ...", flush=True)
    results = measure_interleaved(methods, n, args.epochs)
    ceiling, tf_mem = results["numpy"], results["tf.data mem"]
    for label, r in results.items():
        r["vs_numpy"] = paired_ratio(r, ceiling)
        r["vs_numpy_cpu"] = paired_ratio(r, ceiling, "cpu_rounds")
        r["vs_tf_mem"] = paired_ratio(r, tf_mem)
        print(f"  {label:<22} {r['samples_per_s']:>10,.0f} samples/s  x numpy {r['vs_numpy']:.2f} "
              f"(by CPU time {r['vs_numpy_cpu']:.2f})", flush=True)
    targets = {}  # name -> (method, against, threshold)
    if "kpipe hdf5" in results:
        targets["hdf5 >= 1.5x tf.data mem"] = ("kpipe hdf5", "tf.data mem", 1.5)
        targets["hdf5 >= 0.3x numpy"] = ("kpipe hdf5", "numpy", 0.3)
        targets["hdf5 mmap >= 0.8x numpy"] = ("kpipe hdf5", "numpy", 0.8)
    if "kpipe cache=memory" in results:
        targets["cache=memory >= 0.9x numpy"] = ("kpipe cache=memory", "numpy", 0.9)
    if "kpipe npy" in results:
        if "classic" in results:
            targets["npy >= 3x classic"] = ("kpipe npy", "classic", 3.0)
        if "tf.data files" in results:
            targets["npy >= 1.0x tf.data files"] = ("kpipe npy", "tf.data files", 1.0)
    out = {}
    for name, (method, against, threshold) in targets.items():
        wall = paired_ratio(results[method], results[against])
        cpu = paired_ratio(results[method], results[against], "cpu_rounds")
        out[name] = {"ratio": wall, "ratio_cpu": cpu, "met": wall >= threshold, "met_cpu": cpu >= threshold}
    return {"num_samples": n, "shape": list(shape), "dtype": dtype, "batch_size": BATCH, "results": results,
            "targets": out}


def print_table(report: dict) -> None:
    for name, size in report["sizes"].items():
        print(f"\n{name}, {size['num_samples']} samples, batch {BATCH}, median of {report['epochs']} interleaved "
              "rounds (ratios: median of the per-round ratios)")
        print(f"| {'method':<22} | {'samples/s':>10} | {'vs numpy (1)':>12} | {'by CPU time':>11} | "
              f"{'vs tf.data mem (3)':>18} |")
        print(f"|{'-' * 24}|{'-' * 11}:|{'-' * 13}:|{'-' * 12}:|{'-' * 19}:|")
        for label, r in size["results"].items():
            print(f"| {label:<22} | {r['samples_per_s']:>10,.0f} | {r['vs_numpy']:>12.2f} | "
                  f"{r['vs_numpy_cpu']:>11.2f} | {r['vs_tf_mem']:>18.2f} |")
        for k, t in size["targets"].items():
            print(f"  target {k:<28} wall {t['ratio']:5.2f} {'met' if t['met'] else 'NOT met':<8} "
                  f"CPU time {t['ratio_cpu']:5.2f} {'met' if t['met_cpu'] else 'NOT met'}")


# ---------------------------------------------------------------- memory
def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _memory_child(manifest_path: str, epochs: int, cache: str | None) -> None:
    """Runs in a fresh interpreter: RSS before / during / after HDF5 epochs, as JSON on stdout."""
    import threading

    import keras  # noqa: F401 - part of the baseline

    from kpipe import DataGenerator

    baseline = _rss_mb()
    peak = [baseline]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    gen = DataGenerator(manifest_path, "train", batch_size=BATCH, shuffle=True, cache=cache)
    after_epoch = []
    for _ in range(epochs):
        for i in range(len(gen)):
            gen[i]
        gen.on_epoch_end()
        after_epoch.append(_rss_mb())
    stop.set()
    t.join()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"baseline_mb": baseline, "peak_mb": max(peak[0], *after_epoch), "maxrss_mb": maxrss,
                      "after_epoch_mb": after_epoch}))


def memory_check(args, tmp: Path) -> dict:
    from kpipe.storage.hdf5 import Hdf5Writer

    n, shape = (2_000, (128, 128, 3)) if args.quick else (42_000, (128, 128, 3))  # 42,000 x 48 KiB = 2.06 GB
    folder = tmp / "memory"
    print(f"\n== memory: {n} x {shape} uint8 ({n * np.prod(shape) / 1e9:.2f} GB) in hdf5 ==", flush=True)
    from kpipe.manifest import Manifest

    ids = [f"s{i:07d}" for i in range(n)]
    writer = Hdf5Writer(folder / "shards", shape, "uint8")
    rng = np.random.default_rng(0)
    step = 1000
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        writer.add_many(ids[lo:hi], rng.integers(0, 256, (hi - lo, *shape), dtype=np.uint8))
    labels = {sid: i % NUM_CLASSES for i, sid in enumerate(ids)}
    m = Manifest(classes=[str(c) for c in range(NUM_CLASSES)], labels=labels, partition={"train": ids},
                 sample_shape=shape, sample_dtype="uint8", storage=writer.finish(labels, ids))
    path = m.save(folder / "manifest.json")
    out = {}
    for cache in (None, "memory"):
        epochs = args.memory_epochs if cache is None else 2
        cmd = [sys.executable, __file__, "--_memory-child", str(path), str(epochs), str(cache)]
        proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["peak_above_baseline_mb"] = res["peak_mb"] - res["baseline_mb"]
        first = res["after_epoch_mb"][0]
        res["growth_over_epochs"] = (res["after_epoch_mb"][-1] - first) / first
        key = "cache=memory" if cache else "hdf5"
        out[key] = res
        print(f"  {key:<13} baseline {res['baseline_mb']:.0f} MB, peak +{res['peak_above_baseline_mb']:.0f} MB, "
              f"RSS after epochs {[round(v) for v in res['after_epoch_mb']]} MB "
              f"(growth {100 * res['growth_over_epochs']:+.1f}%)", flush=True)
    h = out["hdf5"]
    out["targets"] = {
        "peak RSS < 300 MB above baseline": {"value_mb": h["peak_above_baseline_mb"],
                                             "met": h["peak_above_baseline_mb"] < 300},
        "RSS growth over epochs <= 5%": {"value": h["growth_over_epochs"], "met": h["growth_over_epochs"] <= 0.05},
    }
    out["dataset_gb"] = n * int(np.prod(shape)) / 1e9
    shutil.rmtree(folder, ignore_errors=True)
    return out


# -------------------------------------------------------------- training
def training_check(args, tmp: Path) -> dict:
    import keras

    from kpipe import DataGenerator

    n = 4_000 if args.quick else 20_000
    shape = (32, 32, 3)
    print(f"\n== training: small CNN, {n} x {shape} float32, batch {BATCH} ==", flush=True)
    x, y = make_arrays(n, shape, "float32")
    m = write_dataset(tmp / "training" / "npy", x, y, "npy")
    from kpipe.convert import convert

    m_h5 = convert(m, tmp / "training" / "hdf5", to="hdf5").manifest

    def model():
        keras.utils.set_random_seed(0)
        net = keras.Sequential([  # the classic small CIFAR-10 CNN of the Keras examples
            keras.Input(shape),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(NUM_CLASSES, activation="softmax"),
        ])
        net.compile("adam", "sparse_categorical_crossentropy")
        return net

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.t)

    class ConstantBatches(keras.utils.PyDataset):
        """The floor of any Keras PyDataset: the same ready-made batch every step."""

        def __init__(self):
            super().__init__()
            self.batch = (x[:BATCH].copy(), y[:BATCH].astype(np.int32))

        def __len__(self):
            return -(-n // BATCH)

        def __getitem__(self, index):
            return self.batch

    # Epochs of the variants are interleaved (one epoch of each per round), so that a load change on a
    # shared machine hits all of them alike; the first round (tracing, warm-up) is not counted.
    variants = {
        "arrays in memory": lambda net, e, t: net.fit(x, y, batch_size=BATCH, epochs=e + 1, initial_epoch=e,
                                                      shuffle=True, verbose=0, callbacks=[t]),
        "DataGenerator hdf5": lambda net, e, t: net.fit(gens["hdf5"], epochs=e + 1, initial_epoch=e,
                                                        shuffle=False, verbose=0, callbacks=[t]),
        "DataGenerator hdf5 workers=2": lambda net, e, t: net.fit(gens["workers"], epochs=e + 1, initial_epoch=e,
                                                                  shuffle=False, verbose=0, callbacks=[t]),
        "constant PyDataset (floor)": lambda net, e, t: net.fit(gens["constant"], epochs=e + 1, initial_epoch=e,
                                                                shuffle=False, verbose=0, callbacks=[t]),
    }
    gens = {"hdf5": DataGenerator(m_h5, "train", batch_size=BATCH),
            "workers": DataGenerator(m_h5, "train", batch_size=BATCH, workers=2),
            "constant": ConstantBatches()}
    nets = {label: model() for label in variants}
    timers = {label: Timer() for label in variants}
    for t in timers.values():
        t.times = []
    for e in range(args.train_epochs + 1):
        for label, fit in variants.items():
            fit(nets[label], e, timers[label])
    out = {}
    for label, t in timers.items():
        out[label] = {"epoch_s": statistics.median(t.times[1:]), "epochs_s": [round(v, 3) for v in t.times]}
        print(f"  {label:<30} {out[label]['epoch_s']:.2f} s/epoch  {out[label]['epochs_s']}", flush=True)
    base = out["arrays in memory"]["epoch_s"]
    for r in out.values():
        r["vs_memory"] = r["epoch_s"] / base
    # Paired per round (same load): median of (generator epoch / arrays epoch).
    ratio = statistics.median(g / a for g, a in zip(timers["DataGenerator hdf5"].times[1:],
                                                    timers["arrays in memory"].times[1:]))
    floor = out["DataGenerator hdf5"]["epoch_s"] / out["constant PyDataset (floor)"]["epoch_s"]
    out["targets"] = {"fit epoch time within 1.1x of arrays": {"ratio": ratio, "met": ratio <= 1.1},
                      "vs constant PyDataset": {"ratio": floor}}
    print(f"  target fit within 1.1x of in-memory arrays: {ratio:.3f}  {'met' if ratio <= 1.1 else 'NOT met'}"
          f" (DataGenerator / constant PyDataset: {floor:.3f})")
    return out


# ------------------------------------------------------------ integrity cost
class ReferenceMmapStore:
    """The yardstick of the integrity checks: kpipe 0.1.0's memory-mapped read path, kept here verbatim in
    spirit (``np.memmap`` of each shard's ``x``, one ``np.take`` per batch) with none of today's checks
    (confinement, regular file, sha256 verified once, shard ``ids`` vs manifest, dataset replacement,
    size before each batch). Same interface as a `kpipe.storage.Store` for `DataGenerator`."""

    def __init__(self, manifest):
        import h5py

        shards = manifest.storage["shards"]
        first = shards[0]
        with h5py.File(manifest.root / first["file"], "r") as f:
            self.sample_shape, self.dtype = f["x"].shape[1:], f["x"].dtype
        self.format = "hdf5"
        self._starts = np.cumsum([0] + [len(s["ids"]) for s in shards])
        self._index = {sid: g for g, sid in enumerate(i for s in shards for i in s["ids"])}
        self._maps = []
        for s in shards:
            with h5py.File(manifest.root / s["file"], "r") as f:
                offset = f["x"].id.get_offset()
            self._maps.append(np.memmap(manifest.root / s["file"], dtype=self.dtype, mode="r", offset=offset,
                                        shape=(len(s["ids"]), *self.sample_shape)))

    @property
    def ids(self):
        return list(self._index)

    def rows(self, ids):
        return np.fromiter(map(self._index.__getitem__, ids), dtype=np.int64, count=len(ids))

    def read_rows(self, rows, out=None):
        """By row (the generator's path), unchecked: one ``np.take`` per shard."""
        g = np.asarray(rows)
        if out is None:
            out = np.empty((len(g), *self.sample_shape), self.dtype)
        if len(self._maps) == 1:
            np.take(self._maps[0], g, axis=0, out=out[: len(g)], mode="clip")
            return out[: len(g)]
        shard_of = np.searchsorted(self._starts, g, side="right") - 1
        for s in np.unique(shard_of):
            where = np.flatnonzero(shard_of == s)
            out[where] = self._maps[s][g[where] - self._starts[s]]
        return out[: len(g)]

    def read_into(self, ids, out):
        g = np.fromiter(map(self._index.__getitem__, ids), dtype=np.int64, count=len(ids))
        if len(self._maps) == 1:
            np.take(self._maps[0], g, axis=0, out=out[: len(ids)], mode="clip")
            return out
        shard_of = np.searchsorted(self._starts, g, side="right") - 1
        for s in np.unique(shard_of):
            where = np.flatnonzero(shard_of == s)
            out[where] = self._maps[s][g[where] - self._starts[s]]
        return out

    def read_many(self, ids, out=None):
        if out is None:
            out = np.empty((len(ids), *self.sample_shape), self.dtype)
        return self.read_into(ids, out)[: len(ids)]

    def close(self):
        self._maps = []


def integrity_check(args, tmp: Path) -> dict:
    """Cost of the read-path integrity checks against `ReferenceMmapStore`, side by side.

    * one-time: hashing the shards (`Hdf5Store.verify`), done once per shard file version (``verify="once"``);
    * steady state: epochs of ``read_many`` batches (store level) and of `DataGenerator` batches, the
      two read paths interleaved round by round; the figure is the median of the per-round ratios.
    """
    return {name: _integrity_size(name, SIZES[name], args, tmp) for name in args.sizes.split(",")}


def _store_epoch(store, ids: list[str], seed: int) -> tuple[float, float]:
    """One epoch of ``read_many`` batches: (samples per wall second, samples per CPU second of this process)."""
    perm = np.random.default_rng(seed).permutation(len(ids))
    batches = [[ids[i] for i in perm[lo : lo + BATCH]] for lo in range(0, len(ids), BATCH)]
    buf = np.empty((BATCH, *store.sample_shape), store.dtype)
    t, c = time.perf_counter(), time.process_time()
    for batch in batches:
        store.read_many(batch, out=buf)
    return len(ids) / (time.perf_counter() - t), len(ids) / max(1e-9, time.process_time() - c)


def _generator_epoch(gen, n: int) -> tuple[float, float]:
    t, c = time.perf_counter(), time.process_time()
    for i in range(len(gen)):
        gen[i]
    gen.on_epoch_end()
    return n / (time.perf_counter() - t), n / max(1e-9, time.process_time() - c)


def _integrity_size(name: str, spec: dict, args, tmp: Path) -> dict:
    from kpipe import DataGenerator
    from kpipe.convert import convert
    from kpipe.manifest import Manifest
    from kpipe.storage import open_store

    n = args.num_samples or (spec["quick"] if args.quick else spec["n"])
    x, y = make_arrays(n, spec["shape"], spec["dtype"])
    folder = tmp / ("integrity_" + name.replace(" ", "_"))
    m_npy = write_dataset(folder / "npy", x, y, "npy")
    del x
    m = Manifest.load(convert(m_npy, folder / "hdf5", to="hdf5").manifest.path)
    nbytes = sum(s["num_bytes"] for s in m.storage["shards"])
    t = time.perf_counter()
    open_store(m).verify(recheck=True)
    hash_s = time.perf_counter() - t
    ids = m.ids("train")
    stores = {"reference": ReferenceMmapStore(m),
              "kpipe": open_store(m, mmap=True)}  # the default: verify="once" (the shards are marked verified)
    gens = {}
    for who, store in stores.items():
        gens[who] = DataGenerator(m, "train", batch_size=BATCH, seed=0, dtype=spec["dtype"])
        gens[who].store = store
    for who, store in stores.items():  # warm-up
        _store_epoch(store, ids, 0)
        _generator_epoch(gens[who], n)
    wall: dict[str, list[float]] = {f"{level} {who}": [] for level in ("store", "generator") for who in stores}
    cpu: dict[str, list[float]] = {k: [] for k in wall}
    for r in range(args.integrity_rounds):
        order = ("reference", "kpipe") if r % 2 == 0 else ("kpipe", "reference")
        for level in ("store", "generator"):
            for who in order:
                w, c = _store_epoch(stores[who], ids, r) if level == "store" else _generator_epoch(gens[who], n)
                wall[f"{level} {who}"].append(w)
                cpu[f"{level} {who}"].append(c)

    def ratios(rows):
        return {level: statistics.median(k / ref for k, ref in zip(rows[f"{level} kpipe"], rows[f"{level} reference"]))
                for level in ("store", "generator")}

    ratio, cpu_ratio = ratios(wall), ratios(cpu)
    epoch_s = n / statistics.median(wall["generator reference"])
    result = {
        "num_samples": n, "shard_bytes": nbytes, "rounds": args.integrity_rounds,
        "samples_per_s": {k: statistics.median(v) for k, v in wall.items()},
        "samples_per_cpu_s": {k: statistics.median(v) for k, v in cpu.items()},
        "kpipe_vs_reference": ratio, "kpipe_vs_reference_cpu": cpu_ratio,
        "slowdown_pct": {k: round((1 - v) * 100, 1) for k, v in ratio.items()},
        "hash_once_s": hash_s, "hash_mb_per_s": nbytes / 2**20 / hash_s, "hash_once_vs_one_epoch": hash_s / epoch_s,
    }
    print(f"\n== integrity checks, {name}: {n} samples, {nbytes / 2**20:.0f} MiB of shards, "
          f"{args.integrity_rounds} interleaved rounds ==")
    for k, v in result["samples_per_s"].items():
        print(f"  {k:<22} {v:>10,.0f} samples/s  {result['samples_per_cpu_s'][k]:>10,.0f} samples/CPU-s")
    print(f"  kpipe / reference (median of per-round ratios): store {ratio['store']:.3f}, generator "
          f"{ratio['generator']:.3f}; by CPU time {cpu_ratio['store']:.3f}, {cpu_ratio['generator']:.3f} "
          "(target >= 0.90)")
    print(f"  one-time sha256 of the shards: {hash_s:.2f} s ({result['hash_mb_per_s']:,.0f} MiB/s), "
          f"{result['hash_once_vs_one_epoch']:.2f}x one epoch")
    for store in stores.values():
        store.close()
    shutil.rmtree(folder, ignore_errors=True)
    return result


# ------------------------------------------------------------- npy floor
NPY_FLOOR_C = r"""
/* The syscall floor of one file per sample: open + preadv + close per sample, no Python, no checks.
   usage: floor LIST NBYTES THREADS   (LIST: one path per line, in the order to read) -> samples/s */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
static char **paths; static long n, nbytes; static int threads;
static void *work(void *arg) {
  long t = (long)arg; char *buf = malloc(nbytes + 1);
  for (long i = t; i < n; i += threads) {
    int fd = open(paths[i], O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) { perror(paths[i]); exit(1); }
    struct iovec v[1] = {{buf, nbytes + 1}};
    if (preadv(fd, v, 1, 0) != nbytes) { fprintf(stderr, "short read: %s\n", paths[i]); exit(1); }
    close(fd);
  }
  free(buf); return NULL;
}
int main(int argc, char **argv) {
  FILE *f = fopen(argv[1], "r"); nbytes = atol(argv[2]); threads = atoi(argv[3]);
  long cap = 1024; paths = malloc(sizeof(char *) * cap); char line[4096];
  while (fgets(line, sizeof line, f)) {
    if (n == cap) paths = realloc(paths, sizeof(char *) * (cap *= 2));
    line[strcspn(line, "\n")] = 0; paths[n++] = strdup(line);
  }
  struct timespec a, b; clock_gettime(CLOCK_MONOTONIC, &a);
  pthread_t th[64]; for (long t = 0; t < threads; t++) pthread_create(&th[t], NULL, work, (void *)t);
  for (int t = 0; t < threads; t++) pthread_join(th[t], NULL);
  clock_gettime(CLOCK_MONOTONIC, &b);
  printf("%.1f\n", n / ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9));
  return 0;
}
"""

NPY_FLOOR_SIZES = {
    "32x32x3 float32": {"n": 20_000, "quick": 2_000, "shape": (32, 32, 3), "dtype": "float32"},
    "128x128x3 uint8": {"n": 5_000, "quick": 1_000, "shape": (128, 128, 3), "dtype": "uint8"},
    "512x512x3 uint8": {"n": 600, "quick": 100, "shape": (512, 512, 3), "dtype": "uint8"},
}


def _compile_floor(tmp: Path) -> Path | None:
    import shutil as sh

    cc = sh.which(os.environ.get("CC", "cc")) or sh.which("gcc") or sh.which("clang")
    if cc is None:
        return None
    (tmp / "floor.c").write_text(NPY_FLOOR_C)
    exe = tmp / "npy_floor"
    proc = subprocess.run([cc, "-O2", "-pthread", "-o", str(exe), str(tmp / "floor.c")], capture_output=True, text=True)
    return exe if proc.returncode == 0 else None


def _epochs_c_floor(exe: Path, paths: list[str], nbytes: int, threads: int, tmp: Path, epochs: int):
    """Epoch runs of the C floor; a run returns the program's own wall time (reads only) and its CPU time."""
    listing = tmp / f"floor-{threads}.txt"
    for e in range(epochs):
        order = np.random.default_rng(e).permutation(len(paths))
        listing.write_text("\n".join(paths[i] for i in order) + "\n")

        def run():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            out = subprocess.run([str(exe), str(listing), str(nbytes), str(threads)], check=True,
                                 capture_output=True, text=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            return (len(paths) / float(out.stdout.strip()),
                    (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
        yield run


def _epochs_py_floor(paths: list[str], shape, dtype: str, epochs: int):
    """Epoch runs of the Python floor: os.open + os.preadv + os.close per sample into a batch, one thread."""
    header = len(__import__("kpipe.storage.npy", fromlist=["expected_header"]).expected_header(shape, np.dtype(dtype)))
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    for e in range(epochs):
        perm = np.random.default_rng(e).permutation(len(paths))

        def run(perm=perm):
            head = bytearray(header)
            for lo in range(0, len(perm), BATCH):
                out = np.empty((len(perm[lo : lo + BATCH]), *shape), dtype)
                flat = out.reshape(len(out), -1).view(np.uint8)
                for i, p in enumerate(perm[lo : lo + BATCH].tolist()):
                    fd = os.open(paths[p], flags)
                    os.preadv(fd, [head, flat[i]], 0)
                    os.close(fd)
        yield run


def _epochs_store_rows(store, ids: list[str], epochs: int):
    rows = store.rows(ids)
    for e in range(epochs):
        perm = np.random.default_rng(e).permutation(len(ids))

        def run(perm=perm):
            for lo in range(0, len(perm), BATCH):
                store.read_rows(rows[perm[lo : lo + BATCH]])
        yield run


def npy_floor_check(args, tmp: Path) -> dict:
    """Where the npy store's time goes: the same shuffled epochs read by a C loop of open + preadv + close
    (1 and 2 threads), the same loop in Python, `NpyStore` (1 thread, then its reader pool), `DataGenerator`
    over npy, and over HDF5 (memory map, ``preadv``); numpy fancy indexing in memory as the ceiling.
    Interleaved rounds; ratios are medians of the per-round ratios. Also: ``kpipe convert --to hdf5`` time, and
    the epochs after which it pays for itself (what `DataGenerator`'s npy hint is chosen from)."""

    exe = _compile_floor(tmp)
    if exe is None:
        print("\n== npy floor: no C compiler (cc, gcc, clang): the C floor is left out ==")
    return {name: _npy_floor_size(name, NPY_FLOOR_SIZES[name], args, tmp, exe)
            for name in args.npy_floor_sizes.split(",")}


def _npy_floor_size(name: str, spec: dict, args, tmp: Path, exe: Path | None) -> dict:
    from kpipe import DataGenerator
    from kpipe.convert import convert
    from kpipe.storage import open_store

    n = spec["quick"] if args.quick else spec["n"]
    if args.num_samples:
        n = min(n, args.num_samples)
    shape, dtype = spec["shape"], spec["dtype"]
    x, y = make_arrays(n, shape, dtype)
    folder = tmp / ("npyfloor_" + name.replace(" ", "_"))
    m_npy = write_dataset(folder / "npy", x, y, "npy")
    t = time.perf_counter()
    m_h5 = convert(m_npy, folder / "hdf5", to="hdf5").manifest
    convert_s = time.perf_counter() - t
    ids = m_npy.ids("train")
    paths = [f"{m_npy.root}/{i}.npy" for i in ids]
    nbytes = os.path.getsize(paths[0])
    E = ENDLESS
    pooled = open_store(m_npy, num_threads=2)  # the calling thread and one pool thread (the default from 4 CPUs)
    serial = open_store(m_npy, num_threads=1)  # the default below 4 CPUs

    def gen(manifest, **kw):
        return DataGenerator(manifest, "train", batch_size=BATCH, dtype=dtype, **kw)

    def gen_pread():
        g = gen(m_h5)
        g.store = open_store(g.manifest, mmap="pread")
        return g

    methods = {"numpy": lambda: epochs_numpy(x, y, E)}
    c_labels = []
    if exe is not None:
        for threads in (1, 2):
            label = f"C open+preadv+close, {threads} thread{'s' if threads > 1 else ''}"
            c_labels.append(label)
            methods[label] = lambda threads=threads: _epochs_c_floor(exe, paths, nbytes, threads, folder, E)
    methods.update({
        "Python os.open+preadv+close": lambda: _epochs_py_floor(paths, shape, dtype, E),
        "NpyStore, 1 thread": lambda: _epochs_store_rows(serial, ids, E),
        "NpyStore, 2 threads (pool)": lambda: _epochs_store_rows(pooled, ids, E),
        "DataGenerator npy": lambda: epochs_generator(gen(m_npy), E),
        "DataGenerator hdf5 (mmap)": lambda: epochs_generator(gen(m_h5), E),
        "DataGenerator hdf5 (preadv)": lambda: epochs_generator(gen_pread(), E),
    })
    print(f"\n== npy floor, {name}: {n} samples of {nbytes:,} bytes, {args.epochs} interleaved rounds ==",
          flush=True)
    res = measure_interleaved(methods, n, args.epochs)
    base = c_labels[0] if c_labels else None
    for label, r in res.items():
        r["vs_numpy"] = paired_ratio(r, res["numpy"])
        r["us_per_sample"] = 1e6 / r["samples_per_s"]
        r["cpu_us_per_sample"] = 1e6 / r["samples_per_cpu_s"]
        if base is not None:
            r["vs_c_1_thread"] = paired_ratio(r, res[base])
            r["vs_c_1_thread_cpu"] = paired_ratio(r, res[base], "cpu_rounds")
        print(f"  {label:<30} {r['samples_per_s']:>9,.0f} samples/s {r['us_per_sample']:6.1f} us/sample "
              f"({r['cpu_us_per_sample']:5.1f} CPU)  x numpy {r['vs_numpy']:.3f}"
              + (f"  x C 1 thread {r['vs_c_1_thread']:.2f} (CPU {r['vs_c_1_thread_cpu']:.2f})" if base else ""),
              flush=True)
    npy_s = n / res["DataGenerator npy"]["samples_per_s"]
    h5_s = n / res["DataGenerator hdf5 (preadv)"]["samples_per_s"]  # the path of stores over 256 MiB
    saved = npy_s - h5_s
    out = {"num_samples": n, "file_bytes": nbytes, "results": res, "convert_s": convert_s,
           "npy_epoch_s": npy_s, "hdf5_epoch_s": h5_s,
           "convert_pays_after_epochs": convert_s / saved if saved > 0 else None}
    print(f"  epoch: npy {npy_s:.2f} s, hdf5 (preadv) {h5_s:.2f} s; kpipe convert --to hdf5 took {convert_s:.2f} s:"
          f" it pays for itself after {convert_s / saved:.1f} epochs" if saved > 0 else "  hdf5 saves nothing here")
    shutil.rmtree(folder, ignore_errors=True)
    return out


# ------------------------------------------------------------------ peers
# `--peers`: kpipe against the libraries users would pick instead, each method in its own process (its peak RSS
# is its own), all driven in the same interleaved rounds: one epoch of every method per round, in a rotated order.
PEER_SCENARIOS = {
    # name -> samples per class (10 classes); "shuffle": every sample once per epoch, "balanced": equal class
    # shares per batch (undersampling: 10 x the smallest class per epoch)
    "shuffle": {"counts": [2_000] * 10, "quick": [200] * 10},
    "balanced 19:1": {"counts": [3_800] * 5 + [200] * 5, "quick": [380] * 5 + [20] * 5},
    "balanced 99:1": {"counts": [3_960] * 5 + [40] * 5, "quick": [990] * 5 + [10] * 5},
}
PEER_SHAPE, PEER_DTYPE = (32, 32, 3), "float32"

PEERS = {
    # method -> (scenario kind, module it needs or None, how it reads)
    "numpy fancy indexing": ("shuffle", None, "memory"),
    "tf.data from_tensor_slices": ("shuffle", "tensorflow", "memory"),
    "Grain MapDataset": ("shuffle", "grain", "ArrayRecord"),
    "Grain DataLoader, 0 workers": ("shuffle", "grain", "ArrayRecord"),
    "Grain DataLoader, 2 workers": ("shuffle", "grain", "ArrayRecord"),
    "kpipe hdf5": ("shuffle", None, "HDF5 (memory map)"),
    "kpipe npy": ("shuffle", None, "one .npy per sample"),
    "imbalanced-learn BalancedBatchGenerator": ("balanced", "imblearn", "memory"),
    "tf.data sample_from_datasets": ("balanced", "tensorflow", "memory"),
    "tf.data choose_from_datasets": ("balanced", "tensorflow", "memory"),
    "tf.data rejection_resample": ("balanced", "tensorflow", "memory"),
    "Grain MapDataset.mix": ("balanced", "grain", "ArrayRecord"),
    "kpipe balanced hdf5": ("balanced", None, "HDF5 (memory map)"),
    "kpipe balanced cache=memory": ("balanced", None, "memory"),
}
PEER_REFERENCE = {"shuffle": "numpy fancy indexing", "balanced": "imbalanced-learn BalancedBatchGenerator"}


def _installed(module: str | None) -> bool:
    import importlib.util

    return module is None or importlib.util.find_spec(module) is not None


def peer_versions() -> dict:
    from importlib import metadata

    out = {}
    for dist in ("kpipe", "numpy", "tensorflow", "keras", "h5py", "grain", "array-record", "imbalanced-learn",
                 "scikit-learn"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _write_peer_data(folder: Path, counts: list[int], seed: int = 0) -> dict:
    """The scenario's samples in every format the peers read: arrays (.npy), kpipe npy + hdf5, ArrayRecord."""
    n = sum(counts)
    x, _ = make_arrays(n, PEER_SHAPE, PEER_DTYPE, seed)
    y = np.random.default_rng(seed + 1).permutation(np.repeat(np.arange(len(counts)), counts)).astype(np.int64)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    from kpipe.convert import convert

    m_npy = write_dataset(folder / "npy", x, y, "npy")
    convert(m_npy, folder / "hdf5", to="hdf5")
    paths = {"arrays": str(folder), "npy": str(folder / "npy" / "manifest.json"),
             "hdf5": str(folder / "hdf5" / "manifest.json")}
    if _installed("array_record"):
        from array_record.python.array_record_module import ArrayRecordWriter

        writer = ArrayRecordWriter(str(folder / "samples.array_record"), "group_size:1")
        for i in range(n):  # a record: the sample's bytes, then its label and index as int64
            writer.write(x[i].tobytes() + np.int64(y[i]).tobytes() + np.int64(i).tobytes())
        writer.close()
        paths["array_record"] = str(folder / "samples.array_record")
    return paths


def _parse_record(record: bytes) -> dict:
    raw = np.frombuffer(record, np.uint8)
    nbytes = int(np.prod(PEER_SHAPE)) * np.dtype(PEER_DTYPE).itemsize
    label, index = raw[nbytes:].view(np.int64).tolist()
    return {"x": raw[:nbytes].view(PEER_DTYPE).reshape(PEER_SHAPE), "y": label, "i": index}


def _grain_parse():
    import grain

    class Parse(grain.transforms.Map):
        def map(self, element):
            return _parse_record(element)
    return Parse()


def _epoch_size(y: np.ndarray) -> int:
    return len(np.bincount(y)) * int(np.bincount(y).min())


# Each builder returns epoch(e) -> list of batches as (labels, sample indices or None).
def _peer_numpy(paths, y):
    x = np.load(Path(paths["arrays"]) / "x.npy")
    n = len(x)

    def epoch(e):
        perm = np.random.default_rng(e).permutation(n)
        out = []
        for lo in range(0, n, BATCH):
            idx = perm[lo : lo + BATCH]
            xb, yb = x[idx], y[idx]  # noqa: F841 - the read is what is measured
            out.append((yb, None))
        return out
    return epoch


def _tf_per_class(x, y):
    import tensorflow as tf

    return [tf.data.Dataset.from_tensor_slices((x[y == c], y[y == c], np.flatnonzero(y == c)))
            .shuffle(int((y == c).sum()), seed=c).repeat() for c in range(int(y.max()) + 1)]


def _tf_epochs(ds, batches_per_epoch: int | None = None):
    """Finite ``ds``: one pass per epoch. Infinite: one iterator for the run (shuffle buffers filled once), an
    epoch pulls ``batches_per_epoch`` batches from it."""
    if batches_per_epoch is None:
        def epoch(e):
            return [(yb.numpy(), ib.numpy()) for _xb, yb, ib in ds]
        return epoch
    it = iter(ds)

    def epoch_of_stream(e):
        return [(yb.numpy(), ib.numpy()) for _xb, yb, ib in (next(it) for _ in range(batches_per_epoch))]
    return epoch_of_stream


def _peer_tf_memory(paths, y):
    import tensorflow as tf

    x = np.load(Path(paths["arrays"]) / "x.npy")
    ds = (tf.data.Dataset.from_tensor_slices((x, y, np.arange(len(y)))).shuffle(len(y), seed=0)
          .batch(BATCH).prefetch(tf.data.AUTOTUNE))
    return _tf_epochs(ds)


def _peer_tf_sample(paths, y):
    import tensorflow as tf

    x = np.load(Path(paths["arrays"]) / "x.npy")
    k = int(y.max()) + 1
    ds = tf.data.Dataset.sample_from_datasets(_tf_per_class(x, y), weights=[1 / k] * k, seed=0)
    return _tf_epochs(ds.batch(BATCH).prefetch(tf.data.AUTOTUNE), -(-_epoch_size(y) // BATCH))


def _peer_tf_choose(paths, y):
    import tensorflow as tf

    x = np.load(Path(paths["arrays"]) / "x.npy")
    k = int(y.max()) + 1
    ds = tf.data.Dataset.choose_from_datasets(_tf_per_class(x, y), tf.data.Dataset.range(k).repeat())
    return _tf_epochs(ds.batch(BATCH).prefetch(tf.data.AUTOTUNE), -(-_epoch_size(y) // BATCH))


def _peer_tf_rejection(paths, y):
    import tensorflow as tf

    x = np.load(Path(paths["arrays"]) / "x.npy")
    counts = np.bincount(y)
    k = len(counts)
    ds = (tf.data.Dataset.from_tensor_slices((x, y, np.arange(len(y)))).shuffle(len(y), seed=0).repeat()
          .rejection_resample(lambda xs, ys, i: tf.cast(ys, tf.int32), target_dist=[1 / k] * k,
                              initial_dist=(counts / counts.sum()).tolist(), seed=0)
          .map(lambda cls, element: element))
    return _tf_epochs(ds.batch(BATCH).prefetch(tf.data.AUTOTUNE), -(-_epoch_size(y) // BATCH))


def _grain_batches(batches):
    return [(np.asarray(b["y"]), np.asarray(b["i"])) for b in batches]


def _peer_grain_map(paths, y):
    import grain

    base = grain.MapDataset.source(grain.sources.ArrayRecordDataSource(paths["array_record"])).map(_grain_parse())

    def epoch(e):
        return _grain_batches(base.shuffle(seed=e).batch(BATCH))
    return epoch


def _peer_grain_loader(workers):
    def build(paths, y):
        import grain

        source = grain.sources.ArrayRecordDataSource(paths["array_record"])
        loader = grain.DataLoader(data_source=source, worker_count=workers,
                                  sampler=grain.samplers.IndexSampler(len(source), shuffle=True, num_epochs=None,
                                                                      seed=0),
                                  operations=[_grain_parse(), grain.transforms.Batch(BATCH)])
        it = iter(loader)
        per_epoch = -(-len(source) // BATCH)

        def epoch(e):
            return _grain_batches(next(it) for _ in range(per_epoch))
        return epoch
    return build


def _peer_grain_mix(paths, y):
    import grain

    source = grain.sources.ArrayRecordDataSource(paths["array_record"])
    k = int(y.max()) + 1
    per_class = []
    for c in range(k):
        members = np.flatnonzero(y == c)
        # repeat, then shuffle: Grain's lazy global shuffle (shuffle-then-repeat measured 25x slower in a mix)
        per_class.append(grain.MapDataset.range(len(members)).map(lambda j, m=members: source[int(m[j])])
                         .map(_grain_parse()).repeat(1000).shuffle(seed=c))
    mixed = grain.MapDataset.mix(per_class, weights=[1 / k] * k)
    size = _epoch_size(y)

    def epoch(e):
        return _grain_batches(mixed[e * size : (e + 1) * size].batch(BATCH))
    return epoch


def _peer_imblearn(paths, y):
    from imblearn.keras import BalancedBatchGenerator
    from imblearn.under_sampling import RandomUnderSampler

    x = np.load(Path(paths["arrays"]) / "x.npy")
    gen = BalancedBatchGenerator(x.reshape(len(x), -1), y, batch_size=BATCH, sampler=RandomUnderSampler(random_state=0),
                                 random_state=0)

    def epoch(e):
        out = []
        for i in range(len(gen)):
            _xb, yb = gen[i]
            out.append((yb, gen.indices_[i * BATCH : (i + 1) * BATCH]))
        gen.on_epoch_end()
        return out
    return epoch


def _peer_kpipe(fmt, **options):
    def build(paths, y):
        from kpipe import DataGenerator

        gen = DataGenerator(paths[fmt], "train", batch_size=BATCH, dtype=PEER_DTYPE, **options)
        positions = {sid: i for i, sid in enumerate(gen.manifest.ids("train"))}  # the sample's index in x
        index = np.array([positions[sid] for sid in gen.ids])

        def epoch(e):
            out = []
            for i in range(len(gen)):
                _xb, yb = gen[i]
                out.append((yb, None))
            order = index[gen.epoch_order(e)]
            gen.on_epoch_end()
            return [(yb, order[i * BATCH : i * BATCH + len(yb)]) for i, (yb, _) in enumerate(out)]
        return epoch
    return build


PEER_BUILDERS = {
    "numpy fancy indexing": _peer_numpy,
    "tf.data from_tensor_slices": _peer_tf_memory,
    "Grain MapDataset": _peer_grain_map,
    "Grain DataLoader, 0 workers": _peer_grain_loader(0),
    "Grain DataLoader, 2 workers": _peer_grain_loader(2),
    "kpipe hdf5": _peer_kpipe("hdf5"),
    "kpipe npy": _peer_kpipe("npy"),
    "imbalanced-learn BalancedBatchGenerator": _peer_imblearn,
    "tf.data sample_from_datasets": _peer_tf_sample,
    "tf.data choose_from_datasets": _peer_tf_choose,
    "tf.data rejection_resample": _peer_tf_rejection,
    "Grain MapDataset.mix": _peer_grain_mix,
    "kpipe balanced hdf5": _peer_kpipe("hdf5", sampling="balanced"),
    "kpipe balanced cache=memory": _peer_kpipe("hdf5", sampling="balanced", cache="memory"),
}


def _balance(batches: list, k: int) -> float:
    """Max over full batches and classes of |share of the class in the batch - 1/k|."""
    full = [np.asarray(yb) for yb, _ in batches if len(yb) == BATCH]
    if not full:
        return float("nan")
    return float(max(np.abs(np.bincount(yb, minlength=k) / BATCH - 1 / k).max() for yb in full))


def _peer_child(method: str, paths_json: str) -> None:
    """Runs in its own process: builds one method, then serves epochs on request (stdin "epoch E" / "quit")."""
    paths = json.loads(paths_json)
    module = PEERS[method][1]
    if module is not None:
        __import__(module)
    if method.startswith(("kpipe", "imbalanced-learn")):
        import keras  # noqa: F401 - what a Keras user has loaded anyway
    baseline = _rss_mb()
    y = np.load(Path(paths["arrays"]) / "y.npy")
    epoch = PEER_BUILDERS[method](paths, y)
    k = int(y.max()) + 1
    big = np.flatnonzero(np.bincount(y) > np.bincount(y).min())
    print(json.dumps({"ready": True, "baseline_mb": baseline}), flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        start, count = map(int, line.split()[1:3])  # "epochs START COUNT": epochs START .. START + COUNT - 1
        samples, wall, cpu, deviations, served = 0, 0.0, 0.0, [], []
        for e in range(start, start + count):
            t, c = time.perf_counter(), time.process_time()
            batches = epoch(e)
            wall, cpu = wall + time.perf_counter() - t, cpu + time.process_time() - c
            samples += sum(len(yb) for yb, _ in batches)
            deviations.append(_balance(batches, k))
            served.append(sorted(i for _, idx in batches if idx is not None
                                 for i in np.asarray(idx)[np.isin(y[idx], big)].tolist()))
        deviation = float("nan") if np.isnan(deviations).all() else float(np.nanmax(deviations))  # nan: no full batch
        print(json.dumps({"samples": int(samples), "wall_s": wall, "cpu_s": cpu, "max_deviation": deviation,
                          "majority_served": served[:2]}), flush=True)
    print(json.dumps({"maxrss_mb": _peak_rss_mb(), "baseline_mb": baseline}), flush=True)


def _peak_rss_mb() -> float:
    """This process image's peak RSS (VmHWM; ``ru_maxrss`` survives ``exec`` and can report the parent's)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _start_peer(method: str, paths: dict) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, __file__, "--_peer-child", method, json.dumps(paths)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            stderr=subprocess.DEVNULL)
    return proc


def _ask(proc: subprocess.Popen, line: str | None) -> dict:
    """Send ``line`` (unless `None`) and return the peer's next JSON answer."""
    if line is not None:
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
    while True:
        out = proc.stdout.readline()
        if not out:
            raise RuntimeError("a peer process ended without an answer")
        if out.startswith("{"):
            return json.loads(out)


def peers_check(args, tmp: Path) -> dict:
    """`--peers`: each scenario's methods in their own processes, interleaved rounds (see PEERS)."""
    report = {"versions": peer_versions(), "skipped": {}, "scenarios": {}}
    for method, (_, module, _) in PEERS.items():
        if not _installed(module):
            report["skipped"][method] = f"{module} is not installed (pip install 'kpipe[bench]')"
    for method, why in report["skipped"].items():
        print(f"  skipped {method}: {why}")
    for name in args.peer_scenarios.split(","):
        spec = PEER_SCENARIOS[name]
        kind = "shuffle" if name == "shuffle" else "balanced"
        methods = [m for m, (k, _, _) in PEERS.items() if k == kind and m not in report["skipped"]]
        if args.peers_only:
            methods = [m for m in methods if m in args.peers_only or m == PEER_REFERENCE[kind]]
        counts = spec["quick"] if args.quick else spec["counts"]
        paths = _write_peer_data(tmp / ("peers_" + name.replace(" ", "_").replace(":", "-")), counts)
        report["scenarios"][name] = _peer_scenario(name, kind, methods, paths, counts, args)
        shutil.rmtree(Path(paths["arrays"]), ignore_errors=True)
    print_peers(report)
    return report


def _peer_scenario(name: str, kind: str, methods: list[str], paths: dict, counts: list[int], args) -> dict:
    print(f"\n== peers, {name}: {sum(counts):,} samples ({', '.join(map(str, sorted(set(counts), reverse=True)))} "
          f"per class), {args.peer_rounds} interleaved rounds, one process per method ==", flush=True)
    procs = {}
    try:
        for m in methods:  # one at a time: start-up does not overlap the others
            procs[m] = _start_peer(m, paths)
            _ask(procs[m], None)  # its "ready" line
        rounds: dict[str, list[dict]] = {m: [] for m in methods}  # round 0 (the warm-up: epochs 0 and 1) first
        reps, next_epoch = dict.fromkeys(methods, 2), dict.fromkeys(methods, 0)
        for r in range(args.peer_rounds + 1):
            for m in methods[r % len(methods):] + methods[: r % len(methods)]:
                rounds[m].append(_ask(procs[m], f"epochs {next_epoch[m]} {reps[m]}"))
                next_epoch[m] += reps[m]
                if r == 0:  # from now on, as many epochs as take MIN_MEASURE_S
                    reps[m] = max(1, math.ceil(MIN_MEASURE_S / max(rounds[m][0]["wall_s"] / 2, 1e-9)))
        final = {m: _ask(p, "quit") for m, p in procs.items()}
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
    return _summarize_peers(kind, methods, rounds, final)


def _summarize_peers(kind: str, methods: list[str], rounds: dict, final: dict) -> dict:
    out = {}
    for m in methods:
        rates = [r["samples"] / r["wall_s"] for r in rounds[m][1:]]  # 0 when a method serves no full batch
        cpu_rates = [r["samples"] / max(r["cpu_s"], 1e-9) for r in rounds[m][1:]]  # its process only
        served = [set(v) for v in rounds[m][0]["majority_served"]]  # epochs 0 and 1
        changes = None
        if kind == "balanced" and len(served) > 1 and served[0]:
            changes = len(served[1] - served[0]) / max(1, len(served[1]))  # share of majority samples new
        out[m] = {"samples_per_s": statistics.median(rates), "rounds": rates, "cpu_rounds": cpu_rates,
                  "samples_per_epoch": rounds[m][0]["samples"] // 2, "epochs_per_round": rounds[m][-1]["samples"]
                  // max(1, rounds[m][0]["samples"] // 2), "max_deviation": max(r["max_deviation"] for r in rounds[m])
                  if not any(math.isnan(r["max_deviation"]) for r in rounds[m]) else float("nan"),
                  "majority_new_next_epoch": changes, "peak_rss_mb": final[m]["maxrss_mb"],
                  "baseline_rss_mb": final[m]["baseline_mb"], "storage": PEERS[m][2]}
    ref = PEER_REFERENCE[kind]
    for r in out.values():
        for key, rates in (("vs_reference", "rounds"), ("vs_reference_cpu", "cpu_rounds")):
            pairs = list(zip(r[rates], out[ref][rates])) if ref in out else []
            r[key] = statistics.median(a / b for a, b in pairs) if pairs and all(b > 0 for _, b in pairs) else None
    return out


def print_peers(report: dict) -> None:
    print("\nversions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v))
    for name, res in report["scenarios"].items():
        ref = PEER_REFERENCE["shuffle" if name == "shuffle" else "balanced"]
        print(f"\n{name} (ratios: median of per-round ratios to {ref})")
        print("| method | reads from | samples/s | x reference, wall / CPU | peak RSS MB | of it, above the imports | "
              "max deviation | majority new next epoch |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for m, r in res.items():
            dev = "-" if name == "shuffle" else f"{r['max_deviation']:.3f}"
            new = "-" if r["majority_new_next_epoch"] is None else f"{r['majority_new_next_epoch']:.0%}"
            ratio = "-" if r["vs_reference"] is None else f"{r['vs_reference']:.2f} / {r['vs_reference_cpu']:.2f}"
            print(f"| {m} | {r['storage']} | {r['samples_per_s']:,.0f} | {ratio} | {r['peak_rss_mb']:,.0f} | "
                  f"{r['peak_rss_mb'] - r['baseline_rss_mb']:,.0f} | {dev} | {new} |")


# ------------------------------------------------------------------ main
def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import h5py
    import tensorflow as tf

    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(os.sysconf("SC_PAGE_SIZE")
            * os.sysconf("SC_PHYS_PAGES") / 2**30, 1), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__, "tensorflow": tf.__version__,
            "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", "--small", action="store_true", help="Small sizes (4,000 and 1,000 samples).")
    p.add_argument("--epochs", type=int, default=5, help="Timed epochs per method (after one warm-up).")
    p.add_argument("--num-samples", type=int, default=None, help="Override the number of samples of every size.")
    p.add_argument("--sizes", default=",".join(SIZES), help="Comma-separated subset of: " + ", ".join(SIZES))
    p.add_argument("--only", default=None, help="Comma-separated methods (numpy and tf.data mem always run).")
    p.add_argument("--no-speed", action="store_true", help="Skip the speed table.")
    p.add_argument("--memory", action="store_true", help="Also run the RSS check over a ~2 GB HDF5 dataset.")
    p.add_argument("--memory-epochs", type=int, default=10)
    p.add_argument("--training", action="store_true", help="Also run the model.fit epoch-time check.")
    p.add_argument("--train-epochs", type=int, default=4, help="Timed fit epochs (after one warm-up).")
    p.add_argument("--integrity", action="store_true",
                   help="Also measure the read-path integrity checks against the unchecked memory-mapped path.")
    p.add_argument("--integrity-rounds", type=int, default=7, help="Interleaved rounds of the integrity check.")
    p.add_argument("--npy-floor", action="store_true",
                   help="Also measure the npy store against the syscall floor (a C loop of open + preadv + close).")
    p.add_argument("--npy-floor-sizes", default=",".join(NPY_FLOOR_SIZES), help=argparse.SUPPRESS)
    p.add_argument("--peers", action="store_true",
                   help="Also compare with Grain, imbalanced-learn and tf.data (pip install 'kpipe[bench]').")
    p.add_argument("--peer-rounds", type=int, default=5, help="Interleaved rounds of the peers comparison.")
    p.add_argument("--peers-only", default=None, help="Comma-separated peer methods (the references always run).")
    p.add_argument("--peer-scenarios", default=",".join(PEER_SCENARIOS),
                   help="Comma-separated subset of: " + ", ".join(PEER_SCENARIOS))
    p.add_argument("--json", default="bench.json", help="Where to write the results.")
    p.add_argument("--tmp", default=None, help="Parent folder of the temporary data (default: /tmp).")
    p.add_argument("--_memory-child", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--_peer-child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._memory_child:
        path, epochs, cache = args._memory_child
        _memory_child(path, int(epochs), None if cache == "None" else cache)
        return 0
    if args._peer_child:
        _peer_child(*args._peer_child)
        return 0
    args.only = set(args.only.split(",")) if args.only else None
    args.peers_only = set(args.peers_only.split(",")) if args.peers_only else None

    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    tmp = Path(tempfile.mkdtemp(prefix="kpipe-bench-", dir=args.tmp))
    report = {"machine": machine(), "epochs": args.epochs, "batch_size": BATCH, "quick": args.quick,
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "sizes": {}}
    try:
        if not args.no_speed:
            for name in args.sizes.split(","):
                report["sizes"][name] = bench_size(name, SIZES[name], args, tmp)
                shutil.rmtree(tmp / name.replace(" ", "_"), ignore_errors=True)
            print_table(report)
        if args.memory:
            report["memory"] = memory_check(args, tmp)
        if args.training:
            report["training"] = training_check(args, tmp)
        if args.integrity:
            report["integrity"] = integrity_check(args, tmp)
        if args.npy_floor:
            report["npy_floor"] = npy_floor_check(args, tmp)
        if args.peers:
            report["peers"] = peers_check(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
