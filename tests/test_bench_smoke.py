"""tools/bench.py runs end to end at a tiny size and writes its JSON with ratios."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "tools" / "bench.py"


def test_bench_tiny(tmp_path):
    spec = importlib.util.spec_from_file_location("kpipe_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--num-samples", "256", "--epochs", "1", "--sizes", "32x32x3 float32",
                       "--json", str(out), "--tmp", str(tmp_path)]) == 0
    report = json.loads(out.read_text())
    results = report["sizes"]["32x32x3 float32"]["results"]
    for name in ("numpy", "classic", "tf.data mem", "tf.data files", "kpipe npy", "kpipe hdf5"):
        assert results[name]["samples_per_s"] > 0 and "vs_numpy" in results[name] and "vs_tf_mem" in results[name]
    assert set(report["sizes"]["32x32x3 float32"]["targets"]) == {
        "hdf5 >= 1.5x tf.data mem", "hdf5 >= 0.3x numpy", "npy >= 3x classic", "npy >= 1.0x tf.data files"}
    assert list(tmp_path.iterdir()) == [out]  # temporary data removed


def test_bench_integrity_tiny(tmp_path):
    """`--integrity` reports the read-path checks' cost side by side with the unchecked memory-mapped path."""
    spec = importlib.util.spec_from_file_location("kpipe_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--no-speed", "--integrity", "--num-samples", "256", "--integrity-rounds", "1", "--sizes",
                       "128x128x3 uint8", "--json", str(out), "--tmp", str(tmp_path)]) == 0
    result = json.loads(out.read_text())["integrity"]["128x128x3 uint8"]
    assert set(result["kpipe_vs_reference"]) == {"store", "generator"}
    assert all(v > 0 for v in result["samples_per_s"].values()) and result["hash_once_s"] > 0
    assert list(tmp_path.iterdir()) == [out]


def test_bench_prepare_tiny(tmp_path):
    """tools/bench_prepare.py: samples/s per method, ratios to decoding alone and to n_jobs=1, notes for skips."""
    spec = importlib.util.spec_from_file_location("kpipe_bench_prepare", BENCH.parent / "bench_prepare.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--workloads", "digits,npy", "--num-samples", "200", "--rounds", "1", "--no-dask",
                       "--methods", "decode only,kpipe hdf5 n_jobs=1,kpipe hdf5,kpipe hdf5 dask",
                       "--json", str(out), "--tmp", str(tmp_path)]) == 0
    report = json.loads(out.read_text())
    assert report["machine"]["cores"] >= 1 and report["machine"]["numpy"]
    for kind, n in (("digits", 1797), ("npy", 200)):
        results = report["workloads"][kind]["results"]
        assert results["decode only"]["samples"] == results["kpipe hdf5"]["samples"] == n
        assert results["kpipe hdf5"]["samples_per_s"] > 0 and results["kpipe hdf5"]["vs_decode_only"] > 0
        assert results["kpipe hdf5 n_jobs=1"]["vs_n_jobs_1"] == 1.0 and results["kpipe hdf5 n_jobs=1"]["ran_on"] == "serial"
        assert results["kpipe hdf5"]["ran_on"] in ("serial", "threads", "loky") and results["kpipe hdf5"]["cpu_vs_n_jobs_1"] > 0
        assert "dask" in results["kpipe hdf5 dask"]["note"]
    assert list(tmp_path.iterdir()) == [out]
