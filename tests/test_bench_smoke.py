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
    for name in ("numpy", "classic", "tf.data mem", "tf.data files", "kpipe npy", "kpipe hdf5", "kpipe cache=memory"):
        r = results[name]
        assert r["samples_per_s"] > 0 and r["samples_per_cpu_s"] > 0 and len(r["rounds"]) == 1
        assert r["vs_numpy"] > 0 and r["vs_numpy_cpu"] > 0 and r["vs_tf_mem"] > 0
    assert results["numpy"]["vs_numpy"] == 1.0  # ratios are paired per round
    assert set(report["sizes"]["32x32x3 float32"]["targets"]) == {
        "hdf5 >= 1.5x tf.data mem", "hdf5 >= 0.3x numpy", "hdf5 mmap >= 0.8x numpy", "cache=memory >= 0.9x numpy",
        "npy >= 3x classic", "npy >= 1.0x tf.data files"}
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


def test_bench_peers_tiny(tmp_path):
    """`--peers` at a tiny size: each method in its own process; peers not installed are skipped with a note."""
    import importlib.util as util

    spec = importlib.util.spec_from_file_location("kpipe_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    methods = ["kpipe balanced hdf5", "Grain MapDataset.mix"]
    assert bench.main(["--no-speed", "--peers", "--quick", "--peer-rounds", "1", "--peer-scenarios", "balanced 99:1",
                       "--peers-only", ",".join(methods), "--json", str(out), "--tmp", str(tmp_path)]) == 0
    report = json.loads(out.read_text())["peers"]
    assert report["versions"]["numpy"]
    installed = {"Grain MapDataset.mix": util.find_spec("grain") is not None,
                 "imbalanced-learn BalancedBatchGenerator": util.find_spec("imblearn") is not None}
    for method, present in installed.items():
        assert (method in report["skipped"]) != present
    result = report["scenarios"]["balanced 99:1"]
    expected = {"kpipe balanced hdf5", *(m for m, present in installed.items() if present)}
    assert set(result) == expected
    kpipe = result["kpipe balanced hdf5"]
    assert kpipe["samples_per_s"] > 0 and kpipe["samples_per_epoch"] == 100  # 10 classes x the 10 of the smallest
    assert kpipe["max_deviation"] < 0.01  # 6 or 7 of each class in a batch of 64: |7/64 - 1/10| = 0.009
    assert kpipe["majority_new_next_epoch"] == 1.0  # a new undersample every epoch
    assert kpipe["peak_rss_mb"] > kpipe["baseline_rss_mb"] > 0
    if installed["imbalanced-learn BalancedBatchGenerator"]:
        assert result["imbalanced-learn BalancedBatchGenerator"]["majority_new_next_epoch"] == 0.0
        assert kpipe["vs_reference"] > 0
    assert list(tmp_path.iterdir()) == [out]


def test_bench_npy_floor_tiny(tmp_path):
    """`--npy-floor`: the npy store against a C loop of open + preadv + close (left out without a C compiler)."""
    import shutil

    spec = importlib.util.spec_from_file_location("kpipe_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--no-speed", "--npy-floor", "--num-samples", "256", "--epochs", "1", "--npy-floor-sizes",
                       "32x32x3 float32", "--json", str(out), "--tmp", str(tmp_path)]) == 0
    result = json.loads(out.read_text())["npy_floor"]["32x32x3 float32"]
    rows = result["results"]
    has_cc = any(shutil.which(c) for c in ("cc", "gcc", "clang"))
    assert ("C open+preadv+close, 1 thread" in rows) == has_cc
    for row in rows.values():
        assert row["samples_per_s"] > 0 and row["cpu_us_per_sample"] > 0
    assert result["file_bytes"] == 12_416 and result["npy_epoch_s"] > 0 and result["convert_s"] > 0


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
        one_job, default = results["kpipe hdf5 n_jobs=1"], results["kpipe hdf5"]
        assert one_job["vs_n_jobs_1"] == 1.0 and one_job["ran_on"] == "serial"
        assert default["ran_on"] in ("serial", "threads", "loky") and default["cpu_vs_n_jobs_1"] > 0
        assert "dask" in results["kpipe hdf5 dask"]["note"]
    assert list(tmp_path.iterdir()) == [out]


def test_imbalance_study_subset_is_a_valid_dataset(tmp_path):
    """tools/imbalance_study.py's step-imbalanced manifest loads (its storage root stays inside its folder)."""
    from helpers import make_indexed_npy_folder

    from kpipe import DataGenerator
    from kpipe.prepare import prepare

    spec = importlib.util.spec_from_file_location("kpipe_study", BENCH.parent / "imbalance_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    raw = make_indexed_npy_folder(tmp_path / "raw", {str(c): 20 for c in range(10)}, shape=(4,))
    prepared = prepare(raw, tmp_path / "p", split="0.6,0.2,0.2", seed=0, n_jobs=1).manifest
    imb = study.make_imbalanced(prepared, prepared.path.parent / "imbalanced.json", keep=0.25)
    counts = imb.class_counts("train")
    assert [counts[str(c)] for c in range(10)] == [12] * 5 + [3] * 5  # round(0.25 * 12) of classes 5-9
    assert imb.class_counts("test") == prepared.class_counts("test")
    gen = DataGenerator(prepared.path.parent / "imbalanced.json", "train", batch_size=8)
    assert sum(len(gen[i][1]) for i in range(len(gen))) == 75
