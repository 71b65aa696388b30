#!/usr/bin/env python
"""Per-batch overhead above the storage read, and balanced-epoch planning cost, for one or two source trees.

The samples are one float32 each, so copying them costs nothing and what is left is the generator's own work
per batch: the ID / row mapping, the plan lookup, the store's checks, the label encoding. Measured in CPU time
(``time.process_time``; less disturbed than wall time on a shared machine), batch 64, in a fresh process per
tree and round, the trees interleaved round by round:

* ``numpy``: ``x[idx], y[idx]`` per batch, the floor of any Python loop;
* ``cache=memory`` / ``hdf5`` / ``npy``: `kpipe.DataGenerator` batches (shuffle) over an in-memory cache, HDF5
  shards (memory-mapped) and per-sample ``.npy`` files: microseconds per batch;
* ``plan 19:1`` / ``plan 99:1``: ``BalancedSampler.indices(epoch)`` over 5 x 3,800 + 5 x 200 and
  5 x 3,960 + 5 x 40 labels (undersampling: epochs of 2,000 and 400 samples): microseconds per epoch, over
  consecutive epochs (what training asks for).

Usage::

    python tools/bench_overhead.py                     # this tree
    python tools/bench_overhead.py --against main      # and main (exported with `git archive`), side by side
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, os, sys, tempfile, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
from kpipe import DataGenerator
from kpipe.convert import convert
from kpipe.manifest import Manifest
from kpipe.sampling import BalancedSampler
from kpipe.storage import make_writer

epochs = int(sys.argv[1])
tmp = tempfile.mkdtemp(prefix="kpipe-overhead-")
n, classes = 20_000, 10
rng = np.random.default_rng(0)
x = rng.standard_normal((n, 1), dtype=np.float32)
y = rng.integers(0, classes, n)
ids = [f"s{i:07d}" for i in range(n)]
src = os.path.join(tmp, "npy")
writer = make_writer("npy", src, (1,), "float32")
writer.add_many(ids, x)
labels = {s: int(v) for s, v in zip(ids, y)}
m = Manifest(classes=[str(c) for c in range(classes)], labels=labels, partition={"train": ids}, sample_shape=(1,),
             sample_dtype="float32", storage=writer.finish(labels, ids))
m.save(os.path.join(src, "manifest.json"))
h5 = convert(m, os.path.join(tmp, "h5"), to="hdf5").manifest
out = {}


def per_batch(run, batches):
    run()  # warm-up
    times = []
    for _ in range(epochs):
        c = time.process_time()
        run()
        times.append((time.process_time() - c) / batches * 1e6)
    return statistics.median(times)


import statistics


def numpy_epoch():
    perm = rng.permutation(n)
    for lo in range(0, n, 64):
        idx = perm[lo : lo + 64]
        x[idx], y[idx]


out["numpy"] = per_batch(numpy_epoch, -(-n // 64))
for name, gen in (("cache=memory", DataGenerator(h5, "train", batch_size=64, cache="memory")),
                  ("hdf5", DataGenerator(h5, "train", batch_size=64)),
                  ("npy", DataGenerator(m, "train", batch_size=64))):
    def epoch(gen=gen):
        for i in range(len(gen)):
            gen[i]
        gen.on_epoch_end()
    out[name] = per_batch(epoch, len(gen))
for name, (big, small) in (("plan 19:1", (3800, 200)), ("plan 99:1", (3960, 40))):
    sampler = BalancedSampler(labels=np.repeat(np.arange(10), [big] * 5 + [small] * 5), batch_size=64, seed=0)
    counter = iter(range(10**9))

    def plans(sampler=sampler, counter=counter):
        for _ in range(100):
            sampler.indices(next(counter))
    out[name] = per_batch(plans, 100)
import shutil
shutil.rmtree(tmp, ignore_errors=True)
print(json.dumps(out))
"""

UNITS = {"plan 19:1": "us/epoch", "plan 99:1": "us/epoch"}


def run_tree(tree: Path, epochs: int) -> dict:
    env = os.environ | {"PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(epochs)], env=env, check=True, capture_output=True,
                          text=True, cwd=tree)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def export(ref: str, into: Path) -> Path:
    """``git archive REF kpipe`` of this repository, unpacked under ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "kpipe"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", default=None, help="A git ref (e.g. main) to measure side by side.")
    p.add_argument("--rounds", type=int, default=5, help="Interleaved rounds (a fresh process per tree and round).")
    p.add_argument("--epochs", type=int, default=5, help="Timed epochs per process (median).")
    p.add_argument("--json", default=None, help="Also write the results here.")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="kpipe-overhead-trees-"))
    try:
        trees = {"this": ROOT} | ({args.against: export(args.against, tmp)} if args.against else {})
        rows: dict[str, dict[str, list[float]]] = {t: {} for t in trees}
        for _ in range(args.rounds):
            for tree_name, tree in trees.items():
                for key, value in run_tree(tree, args.epochs).items():
                    rows[tree_name].setdefault(key, []).append(value)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {t: {k: statistics.median(v) for k, v in r.items()} for t, r in rows.items()}
    print(f"CPU microseconds, median of {args.rounds} rounds x {args.epochs} epochs, batch 64, "
          "20,000 samples of 4 bytes")
    header = f"| {'':<26}|" + "".join(f" {t:>10} |" for t in trees) + (" ratio |" if args.against else "")
    print(header)
    for key in result["this"]:
        line = f"| {key + ' (' + UNITS.get(key, 'us/batch') + ')':<26}|"
        line += "".join(f" {result[t][key]:>10.1f} |" for t in trees)
        if args.against:
            line += f" {result[args.against][key] / result['this'][key]:5.1f} |"
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": args.rounds, "epochs": args.epochs, "results": result},
                                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
