"""Safe with datasets from strangers and under faults (issue 10, data and storage side).

A catalogue of hostile manifests and dataset folders (paths out of the dataset, special files), `--overwrite`
guards, two runs racing to one output, stale staging folders of killed runs, a full or read-only disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import make_image_folder, make_indexed_npy_folder

from kpipe._io import describe_os_error
from kpipe._staging import MARKER_NAME, recover_interrupted, staged_dataset
from kpipe.cli import main
from kpipe.convert import convert
from kpipe.errors import InputError, ManifestError, OutputExistsError, StoreError
from kpipe.manifest import Manifest
from kpipe.prepare import prepare
from kpipe.storage import open_store


@pytest.fixture(scope="module")
def h5_dataset(tmp_path_factory) -> Path:
    """An HDF5 dataset (2 classes of 6 samples, float32 4x4x1 filled with the sample's index, 3 shards)."""
    tmp = tmp_path_factory.mktemp("h5")
    raw = make_indexed_npy_folder(tmp / "raw", {"a": 6, "b": 6})
    return prepare(raw, tmp / "ds", split="0.5,0.25,0.25", format="hdf5", shard_size=4, n_jobs=1).manifest.path


def _edited_copy(src_manifest: Path, dst: Path, edit) -> Path:
    """Copy a dataset folder and edit its manifest.json (a dict) with ``edit``; returns the manifest path."""
    shutil.copytree(src_manifest.parent, dst)
    path = dst / "manifest.json"
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))
    return path


def _rename_id(d: dict, old: str, new: str) -> None:
    """Rename a sample ID everywhere in a manifest dict (labels, partition, shard ids)."""
    d["labels"] = {(new if k == old else k): v for k, v in d["labels"].items()}
    for ids in d["partition"].values():
        ids[:] = [new if i == old else i for i in ids]
    for shard in d["storage"].get("shards", []):
        shard["ids"] = [new if i == old else i for i in shard["ids"]]


# ------------------------------------------------------- 1. confinement
HOSTILE_IDS = ["../../../escaped", "/tmp/kpipe-absolute-escape", "a\x00b", "..", ".", "sub/dir", "back\\slash",
               "tab\tid"]


@pytest.mark.parametrize("bad_id", HOSTILE_IDS)
def test_hostile_sample_ids_are_refused_before_anything_is_written(h5_dataset, tmp_path, bad_id):
    first = Manifest.load(h5_dataset).ids("train")[0]
    path = _edited_copy(h5_dataset, tmp_path / "ds", lambda d: _rename_id(d, first, bad_id))
    with pytest.raises(ManifestError, match="not allowed") as info:
        convert(path, tmp_path / "conv", to="npy")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "conv").exists() and not list(tmp_path.glob(".conv*"))
    assert not Path("/tmp/kpipe-absolute-escape.npy").exists()
    assert not (tmp_path / "escaped.npy").exists() and not (tmp_path.parent / "escaped.npy").exists()


def test_cli_convert_of_escaping_ids_exits_1_and_writes_nothing(h5_dataset, tmp_path):
    """The reported case: IDs '../../x' in labels, partition and shard ids, `convert --to npy`."""
    ids = Manifest.load(h5_dataset).ids("train")
    target = tmp_path / "outside" / "pwned"

    def edit(d):
        for k, sid in enumerate(ids[:2]):
            _rename_id(d, sid, f"../../outside/pwned{k}")

    path = _edited_copy(h5_dataset, tmp_path / "work" / "ds", edit)
    (tmp_path / "outside").mkdir()
    res = CliRunner().invoke(main, ["convert", str(path), "--to", "npy", "--out", str(tmp_path / "work" / "conv")])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and "not allowed" in res.output
    assert list((tmp_path / "outside").iterdir()) == [] and not target.with_suffix(".npy").exists()


@pytest.mark.parametrize("field, value, match", [
    ("root", "../elsewhere", "outside the dataset folder"),
    ("root", "/etc", "outside the dataset folder"),
    ("root", "shards/../../x", "outside the dataset folder"),
    ("file", "../outside.h5", "not allowed"),
    ("file", "/dev/zero", "not allowed"),
    ("file", "sub/shard.h5", "not allowed"),
])
def test_hostile_storage_paths_are_refused(h5_dataset, tmp_path, field, value, match):
    def edit(d):
        if field == "root":
            d["storage"]["root"] = value
        else:
            d["storage"]["shards"][0]["file"] = value

    path = _edited_copy(h5_dataset, tmp_path / "ds", edit)
    with pytest.raises(ManifestError, match=match):
        m = Manifest.load(path)
        open_store(m).read_many(m.storage["shards"][0]["ids"])


def test_links_out_of_the_dataset_are_refused(h5_dataset, tmp_path):
    """A storage root, a shard or a sample file that is a symbolic link leading out of the dataset."""
    outside = tmp_path / "outside"
    shutil.copytree(h5_dataset.parent / "shards", outside)
    # the storage root is a link to a folder outside
    path = _edited_copy(h5_dataset, tmp_path / "a", lambda d: None)
    shutil.rmtree(path.parent / "shards")
    (path.parent / "shards").symlink_to(outside)
    with pytest.raises(ManifestError, match="outside the dataset folder"):
        open_store(Manifest.load(path))
    # one shard is a link to a file outside
    path = _edited_copy(h5_dataset, tmp_path / "b", lambda d: None)
    m = Manifest.load(path)
    shard = m.storage["shards"][1]
    (m.root / shard["file"]).unlink()
    (m.root / shard["file"]).symlink_to(outside / shard["file"])
    with pytest.raises(StoreError, match="outside the dataset folder"):
        open_store(m).read(shard["ids"][0])
    # an npy sample file is a link (to a valid sample outside)
    npy = convert(h5_dataset, tmp_path / "npy", to="npy").manifest
    sid = npy.ids("train")[0]
    shutil.copy(npy.root / f"{sid}.npy", outside / "x.npy")
    (npy.root / f"{sid}.npy").unlink()
    (npy.root / f"{sid}.npy").symlink_to(outside / "x.npy")
    with pytest.raises(StoreError, match="symbolic link"):
        open_store(Manifest.load(npy.path)).read(sid)


# --------------------------------------------------- 5. only regular files
@pytest.mark.timeout(30)
def test_fifo_and_devices_are_never_opened_for_reading(h5_dataset, tmp_path):
    """A FIFO would block forever and /dev/zero never ends: both are refused at once."""
    path = _edited_copy(h5_dataset, tmp_path / "ds", lambda d: None)
    m = Manifest.load(path)
    shard = m.storage["shards"][0]
    (m.root / shard["file"]).unlink()
    os.mkfifo(m.root / shard["file"])
    with pytest.raises(StoreError, match="not a regular file"):
        open_store(m).read(shard["ids"][0])
    with pytest.raises(StoreError, match="not a regular file"):
        open_store(m).verify()
    res = CliRunner().invoke(main, ["convert", str(path), "--to", "npy", "--out", str(tmp_path / "c")])
    assert res.exit_code == 1 and "not a regular file" in res.output and "Traceback" not in res.output

    npy = convert(h5_dataset, tmp_path / "npy", to="npy").manifest
    ids = npy.ids("train")
    (npy.root / f"{ids[0]}.npy").unlink()
    os.mkfifo(npy.root / f"{ids[0]}.npy")
    (npy.root / f"{ids[1]}.npy").unlink()
    (npy.root / f"{ids[1]}.npy").symlink_to("/dev/zero")
    store = open_store(Manifest.load(npy.path), follow_links=True)  # links followed: the device itself is refused
    for sid in ids[:2]:
        with pytest.raises(StoreError, match="not a regular file"):
            store.read(sid)


# ------------------------------------------------------ 2. --overwrite guards
@pytest.fixture
def small_raw(tmp_path) -> Path:
    return make_image_folder(tmp_path / "raw", {"a": 10, "b": 10})


def test_overwrite_never_replaces_the_working_directory_or_a_home_folder(small_raw, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.tex").write_text("precious")
    monkeypatch.chdir(work)
    for out in (work, tmp_path):  # the working directory, and a folder above it
        with pytest.raises(InputError, match="would replace the working directory"):
            prepare(small_raw, out, overwrite=True, n_jobs=1)
    res = CliRunner().invoke(main, ["prepare", str(small_raw), "--out", ".", "--overwrite"])
    assert res.exit_code == 1 and "working directory" in res.output and "Traceback" not in res.output
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(InputError, match="home folder"):
        prepare(small_raw, home, overwrite=True, n_jobs=1)
    assert (work / "thesis.tex").read_text() == "precious"
    monkeypatch.chdir(home)
    raw = make_image_folder(tmp_path / "in" / "raw", {"a": 3, "b": 3})
    with pytest.raises(InputError, match="would replace the input"):
        prepare(raw, tmp_path / "in", overwrite=True, n_jobs=1)


def test_overwrite_replaces_only_kpipe_datasets(small_raw, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text("{}")  # looks like a dataset, but no marker
    (foreign / "data").mkdir()
    ds = prepare(small_raw, tmp_path / "ds", n_jobs=1).manifest
    with pytest.raises(OutputExistsError, match=f"no {MARKER_NAME} marker"):
        prepare(small_raw, foreign, overwrite=True, n_jobs=1)
    with pytest.raises(OutputExistsError, match=f"no {MARKER_NAME} marker"):
        convert(ds.path, foreign, to="hdf5", overwrite=True)
    assert sorted(p.name for p in foreign.iterdir()) == ["data", "manifest.json"]
    marker = json.loads((ds.path.parent / MARKER_NAME).read_text())
    assert marker["kpipe"] == "dataset" and marker["writer"]["pid"] == os.getpid()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    with pytest.raises(OutputExistsError, match="not a folder"):
        prepare(small_raw, a_file, overwrite=True, n_jobs=1)
    res = CliRunner().invoke(main, ["convert", str(ds.path), "--to", "npy", "--out", str(foreign), "--overwrite"])
    assert res.exit_code == 1 and "not a dataset written by kpipe" in res.output and "Traceback" not in res.output


# ------------------------------------------------------ 3. racing runs
def test_second_run_to_a_new_output_fails_instead_of_replacing_the_first(small_raw, tmp_path):
    out = tmp_path / "out"
    first: dict = {}

    def progress(n):  # while this run converts, another one creates OUT
        if not first:
            first["m"] = prepare(small_raw, out, seed=1, n_jobs=1).manifest

    with pytest.raises(OutputExistsError, match="created by another process"):
        prepare(small_raw, out, seed=2, n_jobs=1, progress=progress)
    assert Manifest.load(out).partition == first["m"].partition  # the first run's dataset is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]  # no staging folder left


def test_staging_moves_onto_a_missing_or_empty_folder_only(tmp_path):
    out = tmp_path / "out"
    # Both start while OUT is missing; b finishes first.
    with pytest.raises(OutputExistsError, match="created by another process"), \
            staged_dataset(out, source=None, overwrite=False) as a:
        (a.path / "manifest.json").write_text('{"a": 1}')
        with staged_dataset(out, source=None, overwrite=False) as b:
            (b.path / "manifest.json").write_text('{"b": 1}')
    assert (out / "manifest.json").read_text() == '{"b": 1}'  # b finished first and is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with staged_dataset(empty, source=None, overwrite=False) as c:  # an empty folder is taken
        (c.path / "manifest.json").write_text("{}")
    assert (empty / "manifest.json").is_file()


# ------------------------------------------------------ 9. stale staging
_KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    from kpipe import _staging
    from kpipe.prepare import prepare
    raw, out, where = sys.argv[1:4]
    if where == "converting":
        def progress(n):
            os.kill(os.getpid(), signal.SIGKILL)
        prepare(raw, out, n_jobs=1, progress=progress)
    else:  # killed between the two renames of --overwrite: OUT moved aside, the new one not yet in place
        real_rename = os.rename
        def rename(src, dst):
            if str(src).startswith(os.path.join(os.path.dirname(out), "." + os.path.basename(out) + ".partial-")):
                os.kill(os.getpid(), signal.SIGKILL)
            return real_rename(src, dst)
        _staging.os.rename = rename
        prepare(raw, out, n_jobs=1, overwrite=True, seed=5)
""")


def _killed_prepare(raw: Path, out: Path, where: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _KILLED_RUN, str(raw), str(out), where], capture_output=True,
                          text=True, timeout=120, cwd=out.parent, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_killed_runs_are_cleaned_up_and_a_half_swap_is_restored(small_raw, tmp_path):
    out = tmp_path / "out"
    _killed_prepare(small_raw, out, "converting")
    (stale,) = tmp_path.glob(".out.partial-*")
    assert json.loads((stale / MARKER_NAME).read_text())["writer"]["pid"] > 0
    foreign = tmp_path / ".out.partial-notkpipe"  # same name pattern, not kpipe's: left alone
    foreign.mkdir()
    (foreign / "x").write_text("x")
    with pytest.warns(UserWarning, match="staging folder left by a kpipe run that was killed"):
        first = prepare(small_raw, out, n_jobs=1).manifest
    assert not stale.exists() and (foreign / "x").exists()

    (out / "runs" / "r1").mkdir(parents=True)
    (out / "runs" / "r1" / "config.json").write_text("{}")
    _killed_prepare(small_raw, out, "swapping")
    assert not out.exists() and list(tmp_path.glob(".out.old-*"))  # the half-swapped state
    with pytest.warns(UserWarning) as caught:  # e.g. `kpipe train OUT/manifest.json` next: OUT comes back first
        assert Manifest.load(out / "manifest.json").partition == first.partition
    assert any("Restored" in str(w.message) for w in caught)
    assert (out / "runs" / "r1" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.partial-notkpipe", "out", "raw"]


def test_a_live_runs_staging_folder_is_left_alone(small_raw, tmp_path):
    out = tmp_path / "out"
    with staged_dataset(out, source=None, overwrite=False) as live:
        assert recover_interrupted(out) == []
        assert live.path.is_dir()


# ------------------------------------------------- 6, 12. disk full, read-only
@contextlib.contextmanager
def _tmpfs(path: Path, options: str):
    path.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                              timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        done = None
    if done is None or done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30, check=False)


@pytest.fixture(scope="module")
def big_raw(tmp_path_factory) -> Path:
    """2 classes x 90 .npy samples of 64x64x3 uint8: 2.2 MB of output, more than the 2 MB tmpfs holds."""
    root = tmp_path_factory.mktemp("big") / "raw"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for k in range(90):
            np.save(root / c / f"s{k:03d}.npy", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return root


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fmt", ["npy", "hdf5"])
def test_disk_full_is_an_output_error_and_out_is_untouched(big_raw, tmp_path, fmt):
    small = tmp_path / "small"
    for c in ("a", "b"):
        (small / c).mkdir(parents=True)
        for f in sorted((big_raw / c).iterdir())[:6]:
            shutil.copy(f, small / c)
    with _tmpfs(tmp_path / "disk", "size=2m") as disk:
        out = disk / "out"
        prepare(small, out, n_jobs=2, format=fmt, split="0.5,0.5,0")
        before = _snapshot(out)
        with pytest.raises(StoreError, match="no space left on the device") as info:
            prepare(big_raw, out, n_jobs=2, format=fmt, overwrite=True)
        assert "\n" not in str(info.value) and "left as it was" in str(info.value)
        assert _snapshot(out) == before and sorted(p.name for p in disk.iterdir()) == ["out"]
        res = CliRunner().invoke(main, ["prepare", str(big_raw), "--out", str(disk / "new"), "--format", fmt])
        assert res.exit_code == 1, res.output
        assert "no space left" in res.output and "Prepared" not in res.output and "Traceback" not in res.output
        with pytest.raises(StoreError, match="no space left"):
            convert(Manifest.load(_full_copy(big_raw, tmp_path, fmt)), disk / "conv", to="npy" if fmt == "hdf5"
                    else "hdf5")
        assert sorted(p.name for p in disk.iterdir()) == ["out"]


def _full_copy(raw: Path, tmp_path: Path, fmt: str) -> Path:
    return prepare(raw, tmp_path / f"full_{fmt}", n_jobs=2, format=fmt).manifest.path


def test_read_only_output_is_one_line(small_raw, tmp_path):
    with _tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        res = CliRunner().invoke(main, ["prepare", str(small_raw), "--out", str(ro / "out")])
        assert res.exit_code == 1 and "read-only" in res.output and "Traceback" not in res.output


def test_os_errors_are_named_as_what_they_are():
    import errno

    cases = {errno.ENOSPC: "no space left", errno.EROFS: "read-only", errno.EACCES: "permission denied",
             errno.EMFILE: "too many open files", errno.ENOENT: "does not exist", errno.EIO: "input/output"}
    for code, words in cases.items():
        assert words in describe_os_error(OSError(code, os.strerror(code)))
    h5_lock = OSError("Unable to synchronously open file (unable to lock file, errno = 11, error message = "
                      "'Resource temporarily unavailable')")
    assert "HDF5_USE_FILE_LOCKING=FALSE" in describe_os_error(h5_lock)
    h5_full = OSError("Can't synchronously write data (file write failed: errno = 28, error message = 'No space')")
    assert "no space left" in describe_os_error(h5_full)
