#!/usr/bin/env python
"""The generator's own prefetching and resources, measured side by side (issues 8, 10, 11, 15).

* ``--fit``: ``model.fit`` epoch time over `DataGenerator(workers=2)` (its own
  thread or process pool; Keras sees ``workers=1``) against the same batches
  prefetched by Keras' own enqueuer (a `keras.utils.PyDataset` with
  ``workers=2`` whose ``__getitem__`` makes the generator's batch). Epochs are
  interleaved (one of each variant per round) and the median is reported with
  the ratio own / Keras (below 1: the own prefetcher is faster).
* ``--pickle``: bytes of ``pickle.dumps(generator)`` at 200,000 IDs, for a
  generator built from a manifest path (its recipe) and from a `Manifest`
  object (which pickles the manifest, as every generator did before).
* ``--rounds``: RSS and threads over 10 rounds of ``DataGenerator(cache="memory",
  workers=2)`` -> ``fit`` -> ``close()`` (and the same without ``close()``).
* ``--dead-worker``: seconds from ``fit`` to the error when a worker process
  is killed (SIGKILL, as the OOM killer does).

Usage::

    python tools/bench_prefetch.py --fit --pickle --rounds --dead-worker
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

BATCH = 64


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_dataset(root: Path, n: int, shape, fmt: str = "npy") -> Path:
    """A prepared dataset of ``n`` random samples in 4 classes (written directly, no raw folder)."""
    from kpipe.manifest import Manifest
    from kpipe.storage import make_writer

    rng = np.random.default_rng(0)
    ids = [f"s{i:06d}" for i in range(n)]
    labels = {sid: i % 4 for i, sid in enumerate(ids)}
    writer = make_writer(fmt, root, shape, "uint8")
    for lo in range(0, n, 1000):
        writer.add_many(ids[lo : lo + 1000], rng.integers(0, 256, (min(1000, n - lo), *shape), dtype=np.uint8))
    storage = writer.finish(labels, ids)
    root.mkdir(parents=True, exist_ok=True)
    m = Manifest(classes=["a", "b", "c", "d"], labels=labels, partition={"train": ids[: n * 8 // 10],
                                                                           "validation": ids[n * 8 // 10 :]},
                 sample_shape=shape, sample_dtype="uint8", storage=storage)
    return m.save(root / "manifest.json")


def augment(x, y, rng):
    """CPU work per batch, as an augmentation would do: random flips, crops by roll, and noise."""
    flip = rng.random(len(x)) < 0.5
    x[flip] = x[flip, :, ::-1]
    x = np.roll(x, int(rng.integers(-3, 4)), axis=1)
    return x + rng.normal(0, 0.01, x.shape).astype(x.dtype), y


def fit_check(tmp: Path, rounds: int, n: int) -> None:
    import keras

    from kpipe import DataGenerator

    manifest = make_dataset(tmp / "fit", n, (32, 32, 3))

    class KerasPrefetched(keras.utils.PyDataset):
        """The generator's batches, prefetched by Keras' own enqueuer."""

        def __init__(self, gen, **kwargs):
            super().__init__(**kwargs)
            self.gen = gen

        def __len__(self):
            return len(self.gen)

        def __getitem__(self, index):
            return self.gen.make_batch(self.gen.epoch * len(self.gen) + index)

        def on_epoch_end(self):
            self.gen.epoch += 1

    def model():
        keras.utils.set_random_seed(0)
        net = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(4)])
        net.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return net

    for mp in (False, True):
        common = {"batch_size": BATCH, "rescale": 1 / 255, "transform": augment}
        data = {
            "own": DataGenerator(manifest, "train", workers=2, use_multiprocessing=mp, **common),
            "keras": KerasPrefetched(DataGenerator(manifest, "train", **common), workers=2,
                                     use_multiprocessing=mp),
            "none": DataGenerator(manifest, "train", **common),
        }
        nets = {k: model() for k in data}
        times: dict[str, list[float]] = {k: [] for k in data}
        for r in range(rounds + 1):
            for k, d in data.items():
                t = time.perf_counter()
                nets[k].fit(d, epochs=r + 1, initial_epoch=r, shuffle=False, verbose=0)
                if r:
                    times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        kind = "processes" if mp else "threads"
        print(f"fit epoch, {n} x 32x32x3 uint8 npy + augment, workers=2 {kind}: "
              + ", ".join(f"{k} {v:.2f} s" for k, v in med.items())
              + f"; own / keras = {med['own'] / med['keras']:.2f}, own / workers=1 = {med['own'] / med['none']:.2f}"
              + f" (median of {rounds} interleaved rounds)", flush=True)
        data["own"].close()


def pickle_check(tmp: Path, n: int = 200_000) -> None:
    from kpipe import DataGenerator
    from kpipe.manifest import Manifest

    ids = [f"sample_{i:07d}" for i in range(n)]
    m = Manifest(classes=[str(c) for c in range(10)], labels={s: i % 10 for i, s in enumerate(ids)},
                 partition={"train": ids}, sample_shape=(8, 8, 1), sample_dtype="uint8",
                 storage={"format": "npy", "root": "data"})
    (tmp / "big").mkdir()
    path = m.save(tmp / "big" / "manifest.json")
    by_path = len(pickle.dumps(DataGenerator(path, "train", sampling="balanced")))
    by_object = len(pickle.dumps(DataGenerator(Manifest.load(path), "train", sampling="balanced")))
    print(f"pickle at {n:,} IDs: from a manifest path {by_path:,} bytes; from a Manifest object "
          f"{by_object / 2**20:.1f} MiB (the whole manifest, as before)", flush=True)


def rounds_check(tmp: Path, close: bool) -> None:
    import keras

    from kpipe import DataGenerator

    manifest = make_dataset(tmp / f"rounds{int(close)}", 2000, (64, 64, 3))  # train cache: 19.7 MB
    model = keras.Sequential([keras.Input((64, 64, 3)), keras.layers.Flatten(), keras.layers.Dense(4)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rss, threads = [], []
    for _ in range(10):
        train = DataGenerator(manifest, "train", batch_size=BATCH, cache="memory", workers=2)
        val = DataGenerator(manifest, "validation", batch_size=BATCH, workers=2)
        model.fit(train, validation_data=val, epochs=2, shuffle=False, verbose=0)
        if close:
            train.close()
            val.close()
        del train, val
        gc.collect()
        rss.append(_rss_mb())
        threads.append(threading.active_count())
    print(f"10 rebuild rounds ({'close()' if close else 'no close()'}): RSS MB "
          + " ".join(f"{v:.0f}" for v in rss) + f"; threads {threads}", flush=True)


def crash(x, y, rng):
    os.kill(os.getpid(), signal.SIGKILL)


def dead_worker_check(tmp: Path) -> None:
    import keras

    from kpipe import DataGenerator

    manifest = make_dataset(tmp / "dead", 2000, (32, 32, 3))
    gen = DataGenerator(manifest, "train", batch_size=BATCH, workers=2, use_multiprocessing=True, transform=crash)
    net = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(4)])
    net.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    t = time.perf_counter()
    try:
        net.fit(gen, epochs=1, verbose=0)
    except Exception as e:
        wrapped = type(e).__name__
    else:
        wrapped = "no error"
    print(f"dead worker (SIGKILL): fit failed after {time.perf_counter() - t:.2f} s ({wrapped}); "
          f"generator.last_error: {gen.last_error}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fit", action="store_true")
    parser.add_argument("--pickle", action="store_true")
    parser.add_argument("--rounds", action="store_true")
    parser.add_argument("--dead-worker", action="store_true")
    parser.add_argument("--fit-rounds", type=int, default=5)
    parser.add_argument("--num-samples", type=int, default=8000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.pickle:
            pickle_check(tmp)
        if args.fit:
            fit_check(tmp, args.fit_rounds, args.num_samples)
        if args.rounds:
            rounds_check(tmp, close=True)
            rounds_check(tmp, close=False)
        if args.dead_worker:
            dead_worker_check(tmp)


if __name__ == "__main__":
    sys.exit(main())
