"""How prepare runs (serial, threads, loky, an Executor, Dask) never changes what it writes."""

from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_image_folder, make_indexed_npy_folder

from kpipe._prepare_tasks import ChunkTask, convert_chunk
from kpipe.cli import main
from kpipe.errors import ArgumentError, InputError, StoreError
from kpipe.manifest import Manifest
from kpipe.prepare import prepare
from kpipe.storage import open_store
from kpipe.verify import verify

DIGITS = Path(__file__).resolve().parents[1] / "sample_data" / "digits"


def _content(m: Manifest) -> dict:
    """What must not depend on the backend: classes, IDs, labels, partition, checksums and every sample's bytes."""
    with open_store(m) as store:
        ids = list(m.labels)
        data = store.read_many(ids)
    return {"classes": m.classes, "labels": m.labels, "partition": m.partition, "skipped": m.skipped,
            "checksums": m.sample_checksums, "bytes": {i: data[k].tobytes() for k, i in enumerate(ids)}}


def _shards(m: Manifest) -> list[tuple[str, list[str], str]]:
    return [(s["file"], s["ids"], s["sha256"]) for s in m.storage["shards"]]


def test_local_backends_write_the_same_files(tmp_path: Path):
    """Serial, threads and loky processes: same manifest content, and byte-identical HDF5 shards."""
    raw = make_image_folder(tmp_path / "raw", {"a": 40, "b": 30, "c": 20})
    (raw / "a" / "broken.png").write_bytes(b"not a png")
    runs = {name: prepare(raw, tmp_path / name, format="hdf5", shard_size=16, n_jobs=jobs, backend=backend).manifest
            for name, jobs, backend in [("serial", 1, "auto"), ("threads", 2, "threads"), ("loky", 2, "loky")]}
    first = runs["serial"]
    assert first.num_samples == 90 and [s["kind"] for s in first.skipped] == ["unreadable"]
    assert [len(s["ids"]) for s in first.storage["shards"]] == [16] * 5 + [10]
    # laid out partition by partition (each in input order), as `kpipe convert` does
    position = {sid: k for k, sid in enumerate(first.labels)}
    assert [i for s in first.storage["shards"] for i in s["ids"]] == [i for p in first.partition.values()
                                                                        for i in sorted(p, key=position.get)]
    for name, m in runs.items():
        assert _content(m) == _content(first), name
        assert _shards(m) == _shards(first), name
    npy = prepare(raw, tmp_path / "npy", n_jobs=2, backend="threads").manifest
    assert _content(npy) == _content(first)


class _Remote(cf.ThreadPoolExecutor):
    """An Executor that prepare treats as a cluster: tasks write their own shards (as Dask workers do)."""


@pytest.mark.parametrize("fmt", ["npy", "hdf5"])
def test_cluster_tasks_write_their_own_output_and_the_driver_fixes_up(tmp_path: Path, fmt: str):
    """Tasks write one shard each before the split is known; a duplicate dropped across shards and a class
    renumbered (one left without samples) are fixed up after the merge; the content equals a local run."""
    raw = make_indexed_npy_folder(tmp_path / "raw", {"a": 12, "b": 10, "c": 8})
    np.save(raw / "c" / "s_900.npy", np.full((4, 4, 1), 3, np.float32))  # duplicate of a/s_003, another shard
    np.save(raw / "c" / "s_800.npy", np.full((4, 4, 1), np.nan, np.float32))  # skipped just before it
    (raw / "b2").mkdir()
    (raw / "b2" / "bad.npy").write_bytes(b"junk")  # class b2 is dropped: c becomes class 2 again, after b
    (raw / "aa").mkdir()
    (raw / "aa" / "bad.npy").write_bytes(b"junk")  # class aa (index 1) is dropped: b and c are renumbered
    options = {"format": fmt, "duplicates": "drop", "split": "0.5,0.25,0.25"}
    if fmt == "hdf5":
        options["shard_size"] = 8
    local = prepare(raw, tmp_path / "local", n_jobs=1, **options).manifest
    with _Remote(2) as ex:
        remote = prepare(raw, tmp_path / "remote", executor=ex, **options).manifest
    assert _content(remote) == _content(local)
    assert local.classes == ["a", "b", "c"] and "c_s_900" not in local.labels  # a/s_003 came first
    # skipped inputs listed in input order whatever the tasks were: the same list as a sequential run
    assert [Path(s["path"]).name for s in remote.skipped if s["kind"] != "class-dropped"] == [
        "bad.npy", "bad.npy", "s_800.npy", "s_900.npy"]
    assert [s["kind"] for s in remote.skipped][2:4] == ["nonfinite", "duplicate"]
    assert verify(remote.path).ok
    if fmt == "hdf5":
        files = sorted(p.name for p in (tmp_path / "remote" / "shards").iterdir())
        assert files == sorted(s["file"] for s in remote.storage["shards"])  # no leftover partial file
        import h5py

        for s in remote.storage["shards"]:  # y rewritten with the final class indices
            with h5py.File(tmp_path / "remote" / "shards" / s["file"]) as f:
                assert f["y"][:].tolist() == [remote.labels[i] for i in s["ids"]]


def test_auto_backend_follows_the_measured_cost():
    from kpipe.prepare import _auto_kind, _Cost

    small_png, jpeg_on_nfs, big_image = _Cost(1e-4, 1e-4), _Cost(1e-3, 2e-4), _Cost(5e-3, 5e-3)
    assert _auto_kind(8, 1_000, small_png) == "serial"  # 0.1 s of work: no pool pays
    assert _auto_kind(1, 10**6, jpeg_on_nfs) == "serial"  # --n-jobs 1
    assert _auto_kind(8, 50_000, small_png) == "serial"  # 5 s holding the GIL: threads contend, processes cost more
    assert _auto_kind(8, 200_000, small_png) == "loky"  # 20 s holding the GIL: processes pay
    assert _auto_kind(8, 10_000, jpeg_on_nfs) == "threads"  # waits for I/O: threads overlap it
    assert _auto_kind(8, 1_000, big_image) == "threads"  # long decodes in C release the GIL
    local_disk, nfs = _Cost(1e-4, 1e-4, 7e-4, 7e-4), _Cost(1e-4, 1e-4, 2e-3, 1e-4)  # + writing .npy files
    assert _auto_kind(8, 50_000, local_disk) == "serial"  # creating files in one folder does not parallelize
    assert _auto_kind(8, 50_000, nfs) == "threads"  # but waiting for a network file system does


def test_error_policies_stop_a_parallel_run_on_the_first_sample_in_input_order(tmp_path: Path):
    raw = make_indexed_npy_folder(tmp_path / "raw", {"a": 40, "b": 40})
    for name in ("s_010", "s_030"):
        arr = np.zeros((4, 4, 1), np.float32)
        arr[0, 0, 0] = np.nan
        np.save(raw / "b" / f"{name}.npy", arr)
    for kwargs in ({"n_jobs": 1}, {"n_jobs": 2, "backend": "threads"}, {"executor": cf.ThreadPoolExecutor(2)}):
        with pytest.raises(InputError, match="Sample 'b_s_010'.*--nonfinite error stops here"):
            prepare(raw, tmp_path / "out", nonfinite="error", format="hdf5", shard_size=4, **kwargs)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # staging removed, nothing written


def test_a_retried_task_replaces_its_shard_atomically(tmp_path: Path):
    root = tmp_path / "shards"
    root.mkdir()
    task = ChunkTask(index=3, ids=("x", "y"), labels=np.array([0, 1]), paths=None,
                     values=np.arange(6, dtype=np.float32).reshape(2, 3), layout="csv", image_options=None,
                     shape=(3,), dtype="float32", format="hdf5", root=str(root), shard_name="shard-00003.h5")
    first, again = convert_chunk(task), convert_chunk(task)
    assert first.shard == again.shard and first.shard["ids"] == ["x", "y"]
    assert [p.name for p in root.iterdir()] == ["shard-00003.h5"]
    gone = ChunkTask(**{**task.__dict__, "root": str(tmp_path / "not-shared")})
    with pytest.raises(StoreError, match="shared by every worker"):
        convert_chunk(gone)


def test_backend_arguments_are_checked(tmp_path: Path):
    raw = make_indexed_npy_folder(tmp_path / "raw", {"a": 4, "b": 4})
    with pytest.raises(ArgumentError, match="`backend` must be one of"):
        prepare(raw, tmp_path / "o", backend="ray")
    with pytest.raises(ArgumentError, match="`scheduler` applies to backend='dask'"):
        prepare(raw, tmp_path / "o", scheduler="auto")
    with pytest.raises(InputError, match="`executor` must be"):
        prepare(raw, tmp_path / "o", executor=object())
    res = CliRunner().invoke(main, ["prepare", str(raw), "--out", str(tmp_path / "o"), "--scheduler", "auto"])
    assert res.exit_code == 2 and "--backend dask" in res.output


@pytest.mark.timeout(180)
def test_dask_local_cluster_gives_the_same_dataset(tmp_path: Path):
    """`kpipe prepare --backend dask --scheduler auto` on the digits: same IDs, labels, partition and sample bytes
    as the default backend, for npy and hdf5 (loopback LocalCluster)."""
    pytest.importorskip("distributed")
    for fmt in ("npy", "hdf5"):
        default = prepare(DIGITS, tmp_path / f"default_{fmt}", format=fmt).manifest
        res = CliRunner().invoke(main, ["prepare", str(DIGITS), "--out", str(tmp_path / f"dask_{fmt}"), "--format",
                                        fmt, "--backend", "dask", "--scheduler", "auto"])
        assert res.exit_code == 0, res.output
        dask = Manifest.load(tmp_path / f"dask_{fmt}" / "manifest.json")
        assert dask.num_samples == 1797
        assert _content(dask) == _content(default)
        if fmt == "hdf5":
            assert len(dask.storage["shards"]) >= 1 and verify(dask.path).ok


@pytest.mark.parametrize("fmt", ["npy", "hdf5"])
def test_disk_full_in_a_cluster_task_is_one_output_error(tmp_path: Path, fmt: str):
    """A task that cannot write (ENOSPC on a 1 MB tmpfs) stops the run with the output error; OUT is untouched."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True,
                          timeout=30, check=False)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        raw = tmp_path / "raw"
        rng = np.random.default_rng(0)
        for c in ("a", "b"):
            (raw / c).mkdir(parents=True)
            for k in range(60):  # 2 x 60 x 12 KiB: more than the tmpfs holds
                np.save(raw / c / f"s{k:03d}.npy", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        with _Remote(2) as ex, pytest.raises(StoreError, match="no space left on the device") as info:
            prepare(raw, disk / "out", format=fmt, executor=ex, split="0.5,0.5,0")
        assert "\n" not in str(info.value) and "left as it was" in str(info.value)
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30, check=False)
