"""`kpipe convert`, `kpipe prepare --format hdf5`, and their CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from kpipe.cli import main
from kpipe.convert import convert
from kpipe.errors import InputError, OutputExistsError
from kpipe.manifest import Manifest
from kpipe.prepare import prepare
from kpipe.storage import open_store


def _all_samples(manifest: Manifest) -> dict[str, bytes]:
    store = open_store(manifest)
    ids = sorted(manifest.labels)
    return dict(zip(ids, (row.tobytes() for row in store.read_many(ids))))


def _same_dataset(a: Manifest, b: Manifest) -> None:
    assert a.classes == b.classes and a.labels == b.labels and a.partition == b.partition
    assert a.sample_shape == b.sample_shape and a.sample_dtype == b.sample_dtype
    assert a.skipped == b.skipped
    assert _all_samples(a) == _all_samples(b)  # bit-identical


def test_convert_round_trip_bit_identical(indexed_manifest, tmp_path):
    src = Manifest.load(indexed_manifest)
    src.sample_weights = {sid: 0.5 + (k % 3) for k, sid in enumerate(src.labels)}
    src.save()
    h5 = convert(indexed_manifest, tmp_path / "h5", to="hdf5", shard_size=16).manifest
    assert h5.storage["format"] == "hdf5" and len(h5.storage["shards"]) == 4
    assert h5.prepare["converted_from"]["format"] == "npy" and h5.sample_weights == src.sample_weights
    lzf = convert(h5.path, tmp_path / "lzf", to="hdf5", compression="lzf").manifest
    back = convert(lzf.path, tmp_path / "back", to="npy").manifest
    assert back.storage == {"format": "npy", "root": "data"} and "compression" not in back.prepare
    for m in (h5, lzf, back):
        _same_dataset(src, Manifest.load(m.path))
    assert not list(tmp_path.glob(".*partial*"))


def test_convert_refuses_bad_output(indexed_manifest, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        convert(indexed_manifest, tmp_path / "taken", to="hdf5")
    with pytest.raises(OutputExistsError, match="not a dataset written by kpipe"):  # a foreign folder
        convert(indexed_manifest, tmp_path / "taken", to="hdf5", overwrite=True)
    assert (tmp_path / "taken" / "file").read_text() == "x"
    convert(indexed_manifest, tmp_path / "h5", to="hdf5")
    convert(indexed_manifest, tmp_path / "h5", to="npy", overwrite=True)  # kpipe's own dataset: replaced
    assert Manifest.load(tmp_path / "h5").storage["format"] == "npy"
    with pytest.raises(InputError, match="source dataset"):
        convert(indexed_manifest, indexed_manifest.parent, to="hdf5", overwrite=True)
    with pytest.raises(InputError, match="hdf5 format only"):
        convert(indexed_manifest, tmp_path / "x", to="npy", compression="gzip")
    with pytest.raises(InputError, match="format"):
        convert(indexed_manifest, tmp_path / "x", to="zarr")


def test_prepare_hdf5_matches_npy(image_folder, tmp_path):
    npy = prepare(image_folder, tmp_path / "npy", n_jobs=1).manifest
    h5 = prepare(image_folder, tmp_path / "h5", n_jobs=2, format="hdf5", shard_size=10).manifest
    assert h5.prepare["format"] == "hdf5" and h5.prepare["compression"] == "none"
    assert sum(s["num_samples"] for s in h5.storage["shards"]) == 45
    _same_dataset(npy, h5)
    with pytest.raises(InputError, match="hdf5 format only"):
        prepare(image_folder, tmp_path / "bad", shard_size=10)


def test_cli_prepare_hdf5_and_convert(image_folder, tmp_path):
    runner = CliRunner()
    out = tmp_path / "h5"
    res = runner.invoke(main, ["prepare", str(image_folder), "--out", str(out), "--format", "hdf5",
                               "--shard-size", "16", "--compression", "gzip", "--n-jobs", "1"])
    assert res.exit_code == 0, res.output
    storage = json.loads((out / "manifest.json").read_text())["storage"]
    assert storage["compression"] == "gzip" and len(storage["shards"]) == 3
    assert (out / "shards" / "shard-00002.h5").is_file()

    res = runner.invoke(main, ["convert", str(out / "manifest.json"), "--to", "npy", "--out", str(tmp_path / "n")])
    assert res.exit_code == 0, res.output
    assert "Converted 45 samples from hdf5 to npy" in res.output
    _same_dataset(Manifest.load(out), Manifest.load(tmp_path / "n"))

    res = runner.invoke(main, ["convert", str(out), "--to", "npy", "--out", str(tmp_path / "n")])
    assert res.exit_code == 1 and "exists already" in res.output and "Traceback" not in res.output

    shard = out / "shards" / "shard-00001.h5"
    shard.write_bytes(shard.read_bytes()[:1000])  # truncated
    res = runner.invoke(main, ["convert", str(out), "--to", "npy", "--out", str(tmp_path / "m")])
    assert res.exit_code == 1 and "shard-00001.h5" in res.output and "truncated" in res.output
    assert "Traceback" not in res.output

    res = runner.invoke(main, ["prepare", str(image_folder), "--out", str(tmp_path / "z"), "--compression", "lzf"])
    assert res.exit_code == 1 and "hdf5 format only" in res.output
    res = runner.invoke(main, ["convert", str(out), "--to", "parquet", "--out", str(tmp_path / "p")])
    assert res.exit_code == 2


def test_shard_reads_sample_values(tmp_path):
    """The HDF5 files are plain HDF5: h5py alone reads the samples back."""
    import h5py
    from helpers import make_indexed_npy_folder

    raw = make_indexed_npy_folder(tmp_path / "raw", {"a": 6, "b": 6})
    m = prepare(raw, tmp_path / "h5", split="0.5,0.5,0", format="hdf5", n_jobs=1).manifest
    shard = m.storage["shards"][0]
    with h5py.File(m.root / shard["file"], "r") as f:
        x = f["x"][:]
    np.testing.assert_array_equal(x, open_store(m).read_many(shard["ids"]))
