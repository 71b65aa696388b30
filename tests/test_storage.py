"""Store contract suite: every backend (npy, hdf5 memory-mapped, hdf5 preadv, hdf5 through h5py,
hdf5 gzip, memory cache) runs the same tests; then backend-specific failure modes."""

from __future__ import annotations

import multiprocessing
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import make_indexed_npy_folder

from kpipe.convert import convert
from kpipe.errors import InputError, ManifestError, SampleNotFoundError, StoreError
from kpipe.manifest import Manifest
from kpipe.prepare import prepare
from kpipe.storage import MemoryStore, NpyStore, open_store
from kpipe.storage.hdf5 import Hdf5Writer, file_sha256

BACKENDS = ["npy", "hdf5", "hdf5-pread", "hdf5-h5py", "hdf5-gzip", "memory"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    """One 60-sample dataset (float32 4x4x1, each sample filled with its index) in every format."""
    tmp = tmp_path_factory.mktemp("stores")
    raw = make_indexed_npy_folder(tmp / "raw", {"a": 30, "b": 20, "c": 10})
    npy = prepare(raw, tmp / "npy", split="0.6,0.2,0.2", n_jobs=1).manifest.path
    h5 = convert(npy, tmp / "hdf5", to="hdf5", shard_size=7).manifest.path  # 9 shards
    gz = convert(npy, tmp / "gzip", to="hdf5", shard_size=25, compression="gzip").manifest.path
    return {"npy": npy, "hdf5": h5, "gzip": gz}


@pytest.fixture(scope="module")
def expected(datasets) -> dict[str, np.ndarray]:
    """ID -> sample, read with plain np.load (independent of the stores)."""
    m = Manifest.load(datasets["npy"])
    return {sid: np.load(m.root / f"{sid}.npy") for sid in m.labels}


def _open(kind: str, datasets: dict[str, Path]):
    if kind == "npy":
        return open_store(Manifest.load(datasets["npy"]))
    if kind == "hdf5":
        return open_store(Manifest.load(datasets["hdf5"]))
    if kind == "hdf5-pread":
        return open_store(Manifest.load(datasets["hdf5"]), mmap="pread")
    if kind == "hdf5-h5py":
        return open_store(Manifest.load(datasets["hdf5"]), mmap=False)
    if kind == "hdf5-gzip":
        return open_store(Manifest.load(datasets["gzip"]))
    m = Manifest.load(datasets["hdf5"])
    return open_store(m, cache="memory", ids=m.ids("train"))  # validation/test IDs fall through


@pytest.fixture(params=BACKENDS)
def store(request, datasets):
    s = _open(request.param, datasets)
    yield s
    s.close()


# ------------------------------------------------------------------ contract
def test_round_trip(store, expected):
    ids = list(expected)
    assert sorted(store.ids) == sorted(ids)
    assert store.sample_shape == (4, 4, 1) and store.dtype == np.float32
    batch = store.read_many(ids)
    assert batch.shape == (60, 4, 4, 1) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, np.stack([expected[i] for i in ids]))
    np.testing.assert_array_equal(store.read(ids[17]), expected[ids[17]])


def test_order_and_duplicates(store, expected):
    ids = sorted(expected)
    wanted = [ids[59], ids[0], ids[59], ids[31], ids[0], ids[8], ids[8], ids[8]]  # across shards, repeated
    batch = store.read_many(wanted)
    np.testing.assert_array_equal(batch, np.stack([expected[i] for i in wanted]))
    out = np.full((12, 4, 4, 1), -1, np.float32)
    store.read_many(wanted, out=out)
    np.testing.assert_array_equal(out[:8], batch)
    assert (out[8:] == -1).all()
    assert store.read_many([]).shape == (0, 4, 4, 1)


def test_missing_id(store, expected):
    with pytest.raises(SampleNotFoundError, match="no_such_id") as info:
        store.read_many([next(iter(expected)), "no_such_id"])
    assert isinstance(info.value, KeyError)


def test_pickle_round_trip(store, expected):
    ids = sorted(expected)
    store.read_many(ids[:5])  # open files / pools / caches first: none of it may be pickled
    clone = pickle.loads(pickle.dumps(store))
    assert type(clone) is type(store)
    np.testing.assert_array_equal(clone.read_many(ids[::-1]), np.stack([expected[i] for i in ids[::-1]]))
    if isinstance(store, MemoryStore):
        assert len(pickle.dumps(store)) < 20_000  # the recipe, not the cached array


def _read_in_worker(args):
    store, ids = args
    return os.getpid(), store.read_many(ids)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_reads_in_worker_processes(method, datasets, expected):
    """Stores opened (and read) in the parent give the right data in fork / spawn / forkserver workers."""
    stores = [_open(kind, datasets) for kind in BACKENDS]
    ids = sorted(expected)
    for s in stores:
        s.read_many(ids[:3])  # handles and maps now exist in the parent
    jobs = [(s, ids[k::3]) for s in stores for k in range(2)]
    with multiprocessing.get_context(method).Pool(2) as pool:
        results = pool.map(_read_in_worker, jobs)
    for (_, wanted), (pid, batch) in zip(jobs, results):
        assert pid != os.getpid()
        np.testing.assert_array_equal(batch, np.stack([expected[i] for i in wanted]))
    for s in stores:  # the parent's handles still work
        np.testing.assert_array_equal(s.read_many(ids[:3]), np.stack([expected[i] for i in ids[:3]]))
        s.close()


def test_threads_share_a_store(datasets, expected):
    from concurrent.futures import ThreadPoolExecutor

    ids = sorted(expected)
    for kind in ("npy", "hdf5", "hdf5-pread", "hdf5-gzip"):
        s = _open(kind, datasets)
        with ThreadPoolExecutor(4) as pool:
            batches = list(pool.map(lambda k, s=s: s.read_many(ids[k % 4 :: 4]), range(8)))
        for k, b in enumerate(batches):
            np.testing.assert_array_equal(b, np.stack([expected[i] for i in ids[k % 4 :: 4]]))


# ------------------------------------------------------------------- hdf5
def test_manifest_lists_shards(datasets):
    m = Manifest.load(datasets["hdf5"])
    st = m.storage
    assert st["format"] == "hdf5" and st["root"] == "shards" and st["compression"] == "none"
    assert [s["file"] for s in st["shards"]] == [f"shard-{k:05d}.h5" for k in range(9)]
    assert sorted(i for s in st["shards"] for i in s["ids"]) == sorted(m.labels)
    # Laid out partition by partition.
    assert [i for s in st["shards"] for i in s["ids"]] == [i for p in m.partition.values() for i in p]
    import h5py

    for s in st["shards"]:
        path = m.root / s["file"]
        assert path.stat().st_size == s["num_bytes"] and file_sha256(path) == s["sha256"]
        with h5py.File(path, "r") as f:
            assert f["x"].shape == (len(s["ids"]), 4, 4, 1) and f["x"].chunks is None
            assert [v.decode() for v in f["ids"][:]] == s["ids"]
            assert f["y"][:].tolist() == [m.labels[i] for i in s["ids"]]
    gz = Manifest.load(datasets["gzip"]).root / "shard-00000.h5"
    with h5py.File(gz, "r") as f:
        assert f["x"].compression == "gzip" and f["x"].fletcher32 and f["x"].chunks[1:] == (4, 4, 1)


def _copy_dataset(src: Path, dst: Path) -> Manifest:
    import shutil

    shutil.copytree(src.parent, dst)
    return Manifest.load(dst)


def test_truncated_shard_names_file_and_id(datasets, tmp_path):
    m = _copy_dataset(datasets["hdf5"], tmp_path / "copy")
    shard = m.storage["shards"][2]
    path = m.root / shard["file"]
    os.truncate(path, path.stat().st_size // 2)
    sid = shard["ids"][3]
    with pytest.raises(StoreError) as info:
        open_store(m).read_many([sid])
    assert shard["file"] in str(info.value) and sid in str(info.value) and "truncated" in str(info.value)


def test_corrupt_header_names_file_and_id(datasets, tmp_path):
    m = _copy_dataset(datasets["hdf5"], tmp_path / "copy")
    shard = m.storage["shards"][0]
    path = m.root / shard["file"]
    with open(path, "r+b") as f:  # same size, garbage superblock
        f.write(b"\0garbage" * 64)
    with pytest.raises(StoreError) as info:
        open_store(m).read(shard["ids"][1])
    assert shard["file"] in str(info.value) and shard["ids"][1] in str(info.value)
    with pytest.raises(StoreError, match=shard["file"]):
        open_store(m).verify()


def test_corrupt_compressed_chunk_names_the_sample(datasets, tmp_path):
    m = _copy_dataset(datasets["gzip"], tmp_path / "copy")
    shard = m.storage["shards"][0]
    path = m.root / shard["file"]
    import h5py

    with h5py.File(path, "r") as f:  # find row 5's chunk in the file
        info = f["x"].id.get_chunk_info_by_coord((5, 0, 0, 0))
    with open(path, "r+b") as f:
        f.seek(info.byte_offset)
        head = f.read(8)
        f.seek(info.byte_offset)
        f.write(bytes(b ^ 0xFF for b in head))
    good = m.storage["shards"][1]["ids"][0]  # another shard: still readable
    bad = shard["ids"][5]
    store = open_store(m)
    store.read_many([good])
    with pytest.raises(StoreError) as err:
        store.read_many([good, bad])
    assert shard["file"] in str(err.value) and repr(bad) in str(err.value)


def test_missing_shard_and_bad_manifest(datasets, tmp_path):
    m = _copy_dataset(datasets["hdf5"], tmp_path / "copy")
    shard = m.storage["shards"][-1]
    (m.root / shard["file"]).unlink()
    with pytest.raises(StoreError, match="does not exist"):
        open_store(m).read(shard["ids"][0])
    m.storage.pop("shards")
    with pytest.raises(ManifestError, match="shards"):
        open_store(m)


def test_npy_truncated_file_names_file_and_id(datasets, tmp_path):
    m = _copy_dataset(datasets["npy"], tmp_path / "copy")
    sid = sorted(m.labels)[4]
    path = m.root / f"{sid}.npy"
    os.truncate(path, path.stat().st_size - 8)
    with pytest.raises(StoreError) as info:
        open_store(m).read_many(sorted(m.labels)[:10])
    assert str(path) in str(info.value) and sid in str(info.value)


def test_auto_read_mode_follows_data_size(datasets, monkeypatch, expected):
    """`mmap="auto"` maps small stores and reads large ones with preadv (flat RSS)."""
    from kpipe.storage import hdf5

    m = Manifest.load(datasets["hdf5"])
    assert open_store(m).read_mode == "mmap"
    assert open_store(Manifest.load(datasets["gzip"])).read_mode == "mmap"  # compressed shards: h5py anyway
    monkeypatch.setattr(hdf5, "MMAP_LIMIT_BYTES", 1000)
    store = open_store(m)
    assert store.read_mode == "pread"
    ids = sorted(expected)[::-1]
    out = np.zeros((60, 4, 4, 2), np.float32)[..., :1]  # not contiguous
    store.read_many(ids, out=out)
    np.testing.assert_array_equal(out, np.stack([expected[i] for i in ids]))
    with pytest.raises(ValueError, match="mmap"):
        open_store(m, mmap="always")


def test_writer_validates_options(tmp_path):
    with pytest.raises(InputError, match="compression"):
        Hdf5Writer(tmp_path / "a", (2,), "float32", compression="zstd")
    with pytest.raises(InputError, match="shard_size"):
        Hdf5Writer(tmp_path / "b", (2,), "float32", shard_size=0)
    w = Hdf5Writer(tmp_path / "c", (2,), "float32")
    with pytest.raises(InputError, match="float32"):
        w.add("x", np.zeros(3, np.float32))
    w.add("x", np.zeros(2, np.float32))
    with pytest.raises(InputError, match="twice"):
        w.add("x", np.zeros(2, np.float32))
    w.abort()
    assert not list((tmp_path / "c").iterdir())


def test_open_store_rejects_unknown_cache(datasets):
    with pytest.raises(ValueError, match="cache"):
        open_store(Manifest.load(datasets["npy"]), cache="disk")
    assert isinstance(open_store(Manifest.load(datasets["npy"])), NpyStore)


# --------------------------------------------------------------- generator
def test_generator_same_batches_over_every_format(datasets):
    from kpipe import DataGenerator

    gens = [DataGenerator(datasets["npy"], "train", batch_size=8, seed=3),
            DataGenerator(datasets["hdf5"], "train", batch_size=8, seed=3),
            DataGenerator(datasets["gzip"], "train", batch_size=8, seed=3),
            DataGenerator(datasets["hdf5"], "train", batch_size=8, seed=3, cache="memory")]
    assert isinstance(gens[-1].store, MemoryStore)
    for _epoch in range(2):
        assert len({len(g) for g in gens}) == 1
        for i in range(len(gens[0])):
            ref = gens[0][i]
            for g in gens[1:]:
                got = g[i]
                np.testing.assert_array_equal(got[0], ref[0])
                np.testing.assert_array_equal(got[1], ref[1])
        for g in gens:
            g.on_epoch_end()


def test_generator_over_hdf5_with_keras_multiprocessing(datasets):
    """Keras `use_multiprocessing=True` workers (a new pool every epoch) read the same batches."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    from kpipe import DataGenerator

    ref = DataGenerator(datasets["hdf5"], "train", batch_size=8, seed=1)
    gen = DataGenerator(datasets["hdf5"], "train", batch_size=8, seed=1, workers=2, use_multiprocessing=True)
    gen[0]  # the parent opens its maps first
    adapter = PyDatasetAdapter(gen, shuffle=False)
    for _epoch in range(2):
        adapter.on_epoch_begin()
        batches = list(adapter.get_numpy_iterator())
        adapter.on_epoch_end()
        assert len(batches) == len(ref)
        for i, (x, y) in enumerate(batches):
            np.testing.assert_array_equal(x, ref[i][0])
            np.testing.assert_array_equal(y, ref[i][1])
        ref.on_epoch_end()


# ------------------------------------------------- integrity and faults (issue 9, issue 10)
def _x_offset(path: Path) -> int:
    import h5py

    with h5py.File(path, "r") as f:
        return f["x"].id.get_offset()


@pytest.mark.parametrize("mmap", [True, "pread", False])
def test_overwritten_bytes_in_an_uncompressed_shard_are_detected(datasets, tmp_path, mmap):
    """64 bytes overwritten inside `x` (same size, valid HDF5): a StoreError, never garbage samples."""
    m = _copy_dataset(datasets["hdf5"], tmp_path / "copy")
    ids = sorted(m.labels)
    open_store(m, mmap=mmap).read_many(ids)  # verified once (and marked) while intact
    shard = m.storage["shards"][3]
    path = m.root / shard["file"]
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(_x_offset(path) + 40)
        f.write(b"\x7f" * 64)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime back (ctime still moves)
    with pytest.raises(StoreError, match="sha256") as info:
        open_store(Manifest.load(m.path), mmap=mmap).read_many(ids)
    assert shard["file"] in str(info.value) and "corrupt" in str(info.value)


def test_shards_are_hashed_once_per_file_version(datasets, tmp_path, monkeypatch):
    from kpipe.storage import hdf5

    calls = []
    real = hdf5.file_sha256
    monkeypatch.setattr(hdf5, "file_sha256", lambda p: calls.append(p) or real(p))
    m = _copy_dataset(datasets["hdf5"], tmp_path / "copy")  # copied files: new inodes, not verified yet
    ids = sorted(m.labels)
    open_store(m).read_many(ids)
    assert len(calls) == 9
    open_store(Manifest.load(m.path)).read_many(ids)
    assert len(calls) == 9  # unchanged files are not hashed again
    open_store(Manifest.load(m.path), verify="always").read_many(ids)
    assert len(calls) == 18
    open_store(Manifest.load(m.path), verify=False).read_many(ids)
    assert len(calls) == 18
    fresh = convert(m.path, tmp_path / "fresh", to="hdf5", shard_size=20).manifest
    calls.clear()
    open_store(Manifest.load(fresh.path)).read_many(ids)
    assert calls == []  # the writer hashed the shards as it wrote them


@pytest.mark.parametrize("kind", ["hdf5", "gzip"])
def test_manifest_ids_disagreeing_with_the_shard_are_detected(datasets, tmp_path, kind):
    """Permuted shard IDs in the manifest would give samples the wrong labels: refused."""
    import json

    m = _copy_dataset(datasets[kind], tmp_path / "copy")
    d = json.loads(m.path.read_text())
    ids = d["storage"]["shards"][0]["ids"]
    ids[1], ids[2] = ids[2], ids[1]
    m.path.write_text(json.dumps(d))
    store = open_store(Manifest.load(m.path))
    with pytest.raises(StoreError, match=rf"row 1 of the shard holds sample '{ids[2]}', the manifest says '{ids[1]}'"):
        store.read(ids[0])


def test_a_dataset_replaced_under_a_reader_is_detected(tmp_path):
    """`prepare --overwrite` while a reader runs: open shards keep serving the old files, new opens fail."""
    raw = make_indexed_npy_folder(tmp_path / "raw", {"a": 12, "b": 12})
    out = tmp_path / "ds"
    m = prepare(raw, out, split="0.5,0.25,0.25", format="hdf5", shard_size=4, n_jobs=1, seed=0).manifest
    value = {sid: float(np.load(m.root.parent.parent / "raw" / sid[0] / f"{sid[2:]}.npy").flat[0])
             for sid in m.labels}
    store = open_store(m)
    first = m.storage["shards"][0]["ids"]
    np.testing.assert_array_equal(store.read_many(first)[:, 0, 0, 0], [value[i] for i in first])
    prepare(raw, out, split="0.5,0.25,0.25", format="hdf5", shard_size=4, n_jobs=1, seed=1, overwrite=True)
    np.testing.assert_array_equal(store.read_many(first)[:, 0, 0, 0], [value[i] for i in first])  # still right
    with pytest.raises(StoreError, match="changed while this process was reading it"):
        store.read_many(m.storage["shards"][4]["ids"])
    npy = prepare(raw, tmp_path / "npy", n_jobs=1, split="0.5,0.25,0.25").manifest
    npy_store = open_store(npy)
    npy_store.read_many(npy.ids("train"))
    prepare(raw, tmp_path / "npy", n_jobs=1, split="0.5,0.25,0.25", seed=3, overwrite=True)
    with pytest.raises(StoreError, match="changed while"):
        npy_store.read_many(npy.ids("train"))


@pytest.mark.parametrize("mmap", [True, "pread"])
def test_many_shards_under_a_low_open_file_limit(datasets, mmap, expected):
    """60 one-sample shards with ~10 free file descriptors: the pool of open shards adapts (LRU); with none
    free, the error says it is the open-file limit (not "corrupt")."""
    import resource

    m = Manifest.load(datasets["npy"])
    ids = sorted(m.labels)
    h5 = convert(m, datasets["npy"].parent.parent / f"one_per_shard_{mmap}", to="hdf5", shard_size=1).manifest
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    probe = os.open(os.devnull, os.O_RDONLY)  # the lowest free descriptor: opens fail once it reaches the limit
    os.close(probe)
    store = open_store(Manifest.load(h5.path), mmap=mmap)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (probe + 10, hard))
        for lo in range(0, 60, 20):
            batch = ids[lo:lo + 20]
            np.testing.assert_array_equal(store.read_many(batch), np.stack([expected[i] for i in batch]))
        store.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (probe, hard))
        with pytest.raises(StoreError, match=r"too many open files .*ulimit -n"):
            store.read(ids[0])
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    small = open_store(Manifest.load(h5.path), mmap=mmap, max_open_shards=3)
    np.testing.assert_array_equal(small.read_many(ids[::-1]), np.stack([expected[i] for i in ids[::-1]]))
    assert len(small._readers) <= 3


_HOLD_FOR_WRITING = """
import sys, time, h5py
f = h5py.File(sys.argv[1], "a")
print("open", flush=True)
time.sleep(60)
"""


def test_a_shard_locked_by_a_writer_is_reported_as_locked(datasets, tmp_path):
    import subprocess
    import sys

    m = _copy_dataset(datasets["hdf5"], tmp_path / "copy")
    shard = m.storage["shards"][0]
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_FOR_WRITING, str(m.root / shard["file"])],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreError, match="HDF5_USE_FILE_LOCKING=FALSE") as info:
            open_store(m, verify=False).read(shard["ids"][0])
        assert "corrupt" not in str(info.value)
    finally:
        holder.kill()
        holder.wait()


_TRUNCATE_WHILE_MAPPED = """
import os, sys
import numpy as np
from kpipe.errors import StoreError
from kpipe.storage import Hdf5Store
from kpipe.storage.hdf5 import Hdf5Writer
root = sys.argv[1]
w = Hdf5Writer(root, (1024,), "float32")
ids = [f"s{k}" for k in range(64)]  # 256 KiB of samples: pages past the cut are gone, not zero-filled
w.add_many(ids, np.ones((64, 1024), np.float32))
shards = w.finish({i: 0 for i in ids})["shards"]
store = Hdf5Store(root, shards, (1024,), "float32", mmap=True)
store.read_many(ids)
os.truncate(os.path.join(root, shards[0]["file"]), 100)
try:
    store.read_many(ids)
    print("no error")
except StoreError as e:
    print("StoreError:", e)
"""


def test_a_shard_truncated_while_mapped_is_an_error_not_sigbus(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _TRUNCATE_WHILE_MAPPED, str(tmp_path / "shards")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])  # -7: killed by SIGBUS
    assert "StoreError:" in proc.stdout and "shrank" in proc.stdout
