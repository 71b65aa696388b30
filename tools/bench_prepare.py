#!/usr/bin/env python
"""Prepare throughput: ``kpipe prepare`` against decoding alone and what users do today, side by side.

Four workloads (generated under ``--tmp`` and deleted afterwards, except the
digits which ship in ``sample_data/``):

* ``digits``: the 1,797 8x8 grayscale PNGs of ``sample_data/digits``;
* ``jpeg``: 3,000 RGB JPEGs of 64x64 in 10 class folders;
* ``csv``: a 50,000-row CSV, 16 float features and a label;
* ``npy``: 50,000 small ``.npy`` files (8x8x1 float32) in 10 class folders.

Methods, each measured in samples/s (inputs per second of wall time):

* ``decode only``: the same inputs decoded in one process, nothing written
  (Pillow ``open`` + ``convert`` + ``np.asarray``; ``np.load``; the CSV parsed
  with the ``csv`` module and ``float``): the floor of any converter;
* ``kpipe npy/hdf5 n_jobs=1``: `kpipe.prepare` in this process only;
* ``kpipe npy/hdf5``: `kpipe.prepare` with its defaults (``backend="auto"``);
* ``kpipe npy/hdf5 dask``: ``backend="dask"`` on a `distributed.LocalCluster`
  started once for the whole run (its start-up time is printed apart);
* ``keras + tf.data save``: what Keras users do today:
  ``keras.utils.image_dataset_from_directory(...)`` then
  ``tf.data.Dataset.save`` (images); ``tf.data.experimental.make_csv_dataset``
  then ``save`` (CSV); ``np.load`` per file, ``from_tensor_slices``, ``save`` (npy);
* ``grain arrayrecord``: decode in one process (as ``decode only``) and write
  Grain's ArrayRecord file, one record per sample (``pip install kpipe[bench]``;
  skipped with a note where not installed).

Ratios are paired: each round's figure over the same round's baseline (decode only,
or kpipe with ``n_jobs=1``), then the median over rounds; ``(by cpu)`` is the same
ratio by CPU seconds. ``ran on`` is where kpipe ran the work (``backend="auto"``
picks serial, threads or loky from the measured cost).

Not like for like: kpipe also checks every sample (shape, dtype, NaN/Inf),
checksums it, splits and writes a manifest; tf.data and ArrayRecord write what
they are given. Rounds are interleaved (one run of every method per round) and
the median is reported, with the CPU seconds of the process and its children
(worker processes included): the machine may be shared, and CPU time shows the
work done whatever the wall clock says.

Usage::

    python tools/bench_prepare.py                       # all workloads, 3 rounds
    python tools/bench_prepare.py --workloads jpeg,csv --rounds 5
    python tools/bench_prepare.py --dask-check 20000    # also: 20,000 samples to HDF5, dask vs default
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "sample_data" / "digits"
SIZES = {"jpeg": 3000, "csv": 50_000, "npy": 50_000}
QUICK = {"jpeg": 300, "csv": 5_000, "npy": 5_000}
METHODS = ("decode only", "kpipe npy n_jobs=1", "kpipe npy", "kpipe npy dask", "kpipe hdf5 n_jobs=1", "kpipe hdf5",
           "kpipe hdf5 dask", "keras + tf.data save", "grain arrayrecord")


# ------------------------------------------------------------------ data
def make_workloads(tmp: Path, names: list[str], sizes: dict[str, int]) -> dict[str, Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out: dict[str, Path] = {}
    for name in names:
        if name == "digits":
            out[name] = DIGITS
        elif name == "jpeg":
            yy, xx = np.mgrid[0:64, 0:64]
            for k in range(sizes["jpeg"]):
                d = tmp / "jpeg" / f"c{k % 10}"
                d.mkdir(parents=True, exist_ok=True)
                base = (np.sin(xx / (3 + k % 7)) * 60 + np.cos(yy / (2 + k % 5)) * 60 + 128)[..., None]
                img = np.clip(base + rng.normal(0, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"img_{k:05d}.jpg", quality=90)
            out[name] = tmp / "jpeg"
        elif name == "csv":
            n = sizes["csv"]
            x = rng.normal(size=(n, 16)).astype(np.float32)
            y = rng.integers(0, 10, n)
            path = tmp / "table.csv"
            with open(path, "w") as f:
                f.write("label," + ",".join(f"f{j}" for j in range(16)) + "\n")
                f.writelines(f"{yi}," + ",".join(f"{v:.6g}" for v in row) + "\n" for yi, row in zip(y, x))
            out[name] = path
        elif name == "npy":
            for k in range(sizes["npy"]):
                d = tmp / "npy" / f"c{k % 10}"
                d.mkdir(parents=True, exist_ok=True)
                np.save(d / f"s{k:05d}.npy", rng.normal(size=(8, 8, 1)).astype(np.float32))
            out[name] = tmp / "npy"
        else:
            raise SystemExit(f"unknown workload {name!r}; choose from digits, jpeg, csv, npy")
    return out


def _files(raw: Path, suffix: str) -> list[tuple[Path, int]]:
    classes = sorted(p for p in raw.iterdir() if p.is_dir())
    return [(f, c) for c, d in enumerate(classes) for f in sorted(d.rglob(f"*{suffix}"))]


# --------------------------------------------------------------- methods
def decode_only(raw: Path, kind: str) -> int:
    """Decode every input in this process; nothing written. Returns the number of samples."""
    n = 0
    if kind == "csv":
        with open(raw, newline="") as f:
            rows = csv.reader(f)
            next(rows)
            for r in rows:
                np.asarray([float(v) for v in r[1:]], dtype=np.float32)
                n += 1
        return n
    if kind == "npy":
        for f, _ in _files(raw, ".npy"):
            np.load(f)
            n += 1
        return n
    from PIL import Image

    for f, _ in _files(raw, ".png" if kind == "digits" else ".jpg"):
        with Image.open(f) as img:
            np.asarray(img.convert("L" if kind == "digits" else "RGB"))
        n += 1
    return n


_RAN_ON: dict[str, str] = {}  # method -> where kpipe ran it (backend "auto" picks one)


def kpipe_prepare(raw: Path, out: Path, fmt: str, method: str, **kwargs) -> int:
    from kpipe.prepare import prepare

    with warnings_off():
        result = prepare(raw, out, format=fmt, **kwargs)
    _RAN_ON[method] = result.report["execution"]["backend"]
    return result.manifest.num_samples


def tf_save(raw: Path, out: Path, kind: str) -> int:
    """What Keras users do today: a tf.data pipeline from the raw files, then `tf.data.Dataset.save`."""
    import keras
    import tensorflow as tf

    if kind in ("digits", "jpeg"):
        size = (8, 8) if kind == "digits" else (64, 64)
        ds = keras.utils.image_dataset_from_directory(
            raw, image_size=size, color_mode="grayscale" if kind == "digits" else "rgb", batch_size=None,
            shuffle=False, verbose=False)
    elif kind == "csv":
        ds = tf.data.experimental.make_csv_dataset(str(raw), batch_size=1024, label_name="label", num_epochs=1,
                                                   shuffle=False).unbatch()
    else:
        files = _files(raw, ".npy")
        x = np.stack([np.load(f) for f, _ in files])
        ds = tf.data.Dataset.from_tensor_slices((x, np.array([c for _, c in files])))
    ds.save(str(out))
    if kind == "csv":
        with open(raw) as f:
            return sum(1 for _ in f) - 1
    return int(tf.data.Dataset.load(str(out)).cardinality())


def grain_arrayrecord(raw: Path, out: Path, kind: str) -> int:
    """Decode in this process and write one ArrayRecord file (one record per sample: raw bytes + label)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    out.mkdir(parents=True)
    writer = ArrayRecordWriter(str(out / "data.array_record"), "group_size:1")
    n = 0
    try:
        if kind == "csv":
            with open(raw, newline="") as f:
                rows = csv.reader(f)
                next(rows)
                for r in rows:
                    arr = np.asarray([float(v) for v in r[1:]], dtype=np.float32)
                    writer.write(int(r[0]).to_bytes(8, "little") + arr.tobytes())
                    n += 1
            return n
        if kind == "npy":
            for f, c in _files(raw, ".npy"):
                writer.write(c.to_bytes(8, "little") + np.load(f).tobytes())
                n += 1
            return n
        from PIL import Image

        for f, c in _files(raw, ".png" if kind == "digits" else ".jpg"):
            with Image.open(f) as img:
                arr = np.asarray(img.convert("L" if kind == "digits" else "RGB"))
            writer.write(c.to_bytes(8, "little") + arr.tobytes())
            n += 1
        return n
    finally:
        writer.close()


@contextlib.contextmanager
def warnings_off():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --------------------------------------------------------------- timing
_CLUSTER_PIDS: set[int] = set()  # the LocalCluster's processes: counted for the dask methods only


def _cpu_seconds(with_cluster: bool = False) -> float:
    """CPU seconds of this process and all its children, live ones (worker processes) included.

    The Dask cluster's processes (idle, they still tick) count only for the dask methods.
    """
    import resource

    reaped = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])  # children that ended (loky's idle timeout)
    try:
        import psutil
    except ImportError:
        return time.process_time() + reaped
    me = psutil.Process()
    total = sum(me.cpu_times()[:2]) + reaped
    for child in me.children(recursive=True):
        if child.pid in _CLUSTER_PIDS and not with_cluster:
            continue
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


def _available(name: str, dask_address: str | None) -> str | None:
    """Why a method cannot run here (a note), or `None`."""
    if "dask" in name and dask_address is None:
        return "dask not installed (pip install kpipe[dask]) or --no-dask"
    if name == "grain arrayrecord":
        try:
            import array_record.python.array_record_module  # noqa: F401
        except ImportError:
            return "array-record not installed (pip install kpipe[bench])"
    return None


def run_method(name: str, raw: Path, kind: str, out: Path, dask_address: str | None) -> int:
    if name == "decode only":
        return decode_only(raw, kind)
    if name.startswith("kpipe"):
        fmt = "hdf5" if "hdf5" in name else "npy"
        kwargs: dict = {}
        if name.endswith("n_jobs=1"):
            kwargs["n_jobs"] = 1
        elif name.endswith("dask"):
            kwargs.update(backend="dask", scheduler=dask_address)
        return kpipe_prepare(raw, out, fmt, name, **kwargs)
    if name == "keras + tf.data save":
        return tf_save(raw, out, kind)
    if name == "grain arrayrecord":
        return grain_arrayrecord(raw, out, kind)
    raise SystemExit(f"unknown method {name!r}")


def bench_workload(kind: str, raw: Path, methods: list[str], rounds: int, tmp: Path,
                   dask_address: str | None) -> dict:
    runs: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}
    notes = {m: why for m in methods if (why := _available(m, dask_address))}
    counts: dict[str, int] = {}
    for r in range(rounds):
        for m in methods:
            if m in notes:
                continue
            out = tmp / f"out-{kind}-{r}-{m.replace(' ', '_').replace('=', '')}"
            cluster = "dask" in m
            cpu0, t0 = _cpu_seconds(cluster), time.perf_counter()
            counts[m] = run_method(m, raw, kind, out, dask_address)
            runs[m].append((time.perf_counter() - t0, _cpu_seconds(cluster) - cpu0))
            shutil.rmtree(out, ignore_errors=True)
            os.sync()  # the file system's deferred work for the removed files is not billed to the next method
    results: dict[str, dict] = {}
    for m in methods:
        if m in notes:
            results[m] = {"note": notes[m]}
            continue
        wall = statistics.median(w for w, _ in runs[m])
        cpu = statistics.median(c for _, c in runs[m])
        results[m] = {"samples": counts[m], "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                      "samples_per_s": round(counts[m] / wall, 1), "walls": [round(w, 3) for w, _ in runs[m]]}
    # Ratios paired within each round (same moment of the shared machine), then the median over rounds.
    for m, res in results.items():
        if "samples_per_s" not in res:
            continue
        if m in _RAN_ON:
            res["ran_on"] = _RAN_ON[m]
        if runs.get("decode only"):
            res["vs_decode_only"] = _paired(runs["decode only"], runs[m], counts["decode only"], counts[m], 0)
        one = f"kpipe {'hdf5' if 'hdf5' in m else 'npy'} n_jobs=1"
        if m.startswith("kpipe") and runs.get(one):
            res["vs_n_jobs_1"] = _paired(runs[one], runs[m], 1, 1, 0)
            res["cpu_vs_n_jobs_1"] = _paired(runs[one], runs[m], 1, 1, 1)
    return {"raw": str(raw), "results": results}


def _paired(base: list[tuple[float, float]], other: list[tuple[float, float]], n_base: int, n_other: int,
            field: int) -> float:
    """Median over rounds of (other's samples per second) / (base's): wall time (field 0) or CPU time (1)."""
    return round(statistics.median((n_other / o[field]) / (n_base / b[field]) for b, o in zip(base, other)), 3)


def print_table(report: dict) -> None:
    print(f"\nmachine: {report['machine']}")
    if report.get("dask_cluster"):
        print(f"dask: {report['dask_cluster']}")
    for kind, w in report["workloads"].items():
        print(f"\n{kind} ({w['raw']}), median of {report['rounds']} interleaved rounds")
        print(f"  {'method':24s} {'ran on':8s} {'samples/s':>10s} {'wall s':>8s} {'cpu s':>7s} {'vs decode':>9s} "
              f"{'vs n_jobs=1':>11s} {'(by cpu)':>8s}")
        nan = float("nan")
        for m, res in w["results"].items():
            if "note" in res:
                print(f"  {m:24s} skipped: {res['note']}")
                continue
            print(f"  {m:24s} {res.get('ran_on', ''):8s} {res['samples_per_s']:10.0f} {res['wall_s']:8.2f} "
                  f"{res['cpu_s']:7.2f} {res.get('vs_decode_only', nan):9.2f} {res.get('vs_n_jobs_1', nan):11.2f} "
                  f"{res.get('cpu_vs_n_jobs_1', nan):8.2f}")


def machine() -> dict:
    cpu = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for mod in ("numpy", "h5py", "PIL", "tensorflow", "keras", "joblib", "dask", "distributed", "grain",
                "array_record"):
        try:
            versions[mod] = getattr(__import__(mod), "__version__", None)
        except ImportError:
            versions[mod] = None
        if versions[mod] is None:
            from importlib.metadata import PackageNotFoundError, version

            with contextlib.suppress(PackageNotFoundError):
                versions[mod] = version({"PIL": "pillow", "array_record": "array-record"}.get(mod, mod))
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), **versions}


def dask_check(n: int, tmp: Path, rounds: int, dask_address: str | None) -> dict:
    """``n`` samples of 32x32x3 float32 .npy to HDF5: the default backend against dask on the LocalCluster."""
    rng = np.random.default_rng(1)
    raw = tmp / "dask-check"
    for k in range(n):
        d = raw / f"c{k % 10}"
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / f"s{k:06d}.npy", rng.random((32, 32, 3), dtype=np.float32))
    methods = ["kpipe hdf5 n_jobs=1", "kpipe hdf5", "kpipe hdf5 dask"]
    result = bench_workload("dask-check", raw, methods, rounds, tmp, dask_address)
    shutil.rmtree(raw, ignore_errors=True)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="digits,jpeg,csv,npy", help="Comma-separated: digits, jpeg, csv, npy.")
    p.add_argument("--methods", default=",".join(METHODS), help="Comma-separated subset of: " + ", ".join(METHODS))
    p.add_argument("--rounds", type=int, default=3, help="Interleaved rounds (median reported).")
    p.add_argument("--quick", action="store_true", help="Smaller workloads: 300 JPEGs, 5,000 CSV rows and .npy files.")
    p.add_argument("--num-samples", type=int, default=None, help="Override the size of jpeg, csv and npy.")
    p.add_argument("--no-dask", action="store_true", help="Skip the dask methods.")
    p.add_argument("--dask-check", type=int, default=0, metavar="N",
                   help="Also prepare N samples of 32x32x3 float32 to HDF5, default backend vs dask.")
    p.add_argument("--json", default="bench_prepare.json", help="Where to write the results.")
    p.add_argument("--tmp", default=None, help="Parent folder of the temporary data (default: /tmp).")
    args = p.parse_args(argv)
    sizes = dict(QUICK if args.quick else SIZES)
    if args.num_samples:
        sizes = dict.fromkeys(sizes, args.num_samples)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}; choose from: {', '.join(METHODS)}")
    tmp = Path(tempfile.mkdtemp(prefix="kpipe-bench-prepare-", dir=args.tmp))
    report: dict = {"machine": machine(), "rounds": args.rounds, "sizes": sizes,
                    "command": " ".join([Path(sys.executable).name, *sys.argv]), "workloads": {}}
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, True)
        address = None
        if not args.no_dask and (any("dask" in m for m in methods) or args.dask_check):
            try:
                from distributed import Client, LocalCluster
            except ImportError:
                pass
            else:
                t0 = time.perf_counter()
                cluster = stack.enter_context(LocalCluster(
                    n_workers=os.cpu_count() or 1, threads_per_worker=1, processes=True, host="127.0.0.1",
                    dashboard_address=None, silence_logs=40))
                stack.enter_context(Client(cluster)).wait_for_workers(os.cpu_count() or 1)
                address = cluster.scheduler_address
                with contextlib.suppress(ImportError):
                    import psutil

                    _CLUSTER_PIDS.update(c.pid for c in psutil.Process().children(recursive=True))
                report["dask_cluster"] = (f"LocalCluster, {os.cpu_count()} worker processes x 1 thread, started in "
                                          f"{time.perf_counter() - t0:.1f}s (not counted)")
        data = make_workloads(tmp / "data", [w.strip() for w in args.workloads.split(",") if w.strip()], sizes)
        for kind, raw in data.items():
            report["workloads"][kind] = bench_workload(kind, raw, methods, args.rounds, tmp, address)
        if args.dask_check:
            report["workloads"][f"dask-check ({args.dask_check} x 32x32x3 float32 .npy)"] = dask_check(
                args.dask_check, tmp, args.rounds, address)
        print_table(report)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
