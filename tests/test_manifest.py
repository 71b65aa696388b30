import json
from pathlib import Path

import pytest

from kpipe.errors import ManifestError
from kpipe.manifest import FORMAT_VERSION, Manifest


def _manifest(**kw) -> Manifest:
    base = dict(
        classes=["cat", "dog"],
        labels={"a": 0, "b": 1, "c": 1},
        partition={"train": ["a", "b"], "validation": ["c"], "test": []},
        sample_shape=(2, 3),
        sample_dtype="float32",
    )
    base.update(kw)
    return Manifest(**base)


def test_round_trip(tmp_path: Path):
    m = _manifest(sample_weights={"a": 2.0, "b": 1.0, "c": 0.5}, prepare={"seed": 1},
                  skipped=[{"path": "x", "reason": "y"}])
    path = m.save(tmp_path)
    assert path == (tmp_path / "manifest.json").resolve()
    loaded = Manifest.load(tmp_path)
    assert loaded == m
    assert loaded.root == tmp_path.resolve() / "data"
    d = json.loads(path.read_text())
    assert d["format_version"] == FORMAT_VERSION
    assert d["counts"] == {"train": {"cat": 1, "dog": 1}, "validation": {"cat": 0, "dog": 1},
                           "test": {"cat": 0, "dog": 0}}
    assert d["sample"] == {"shape": [2, 3], "dtype": "float32"}
    assert not list(tmp_path.glob("*.partial"))


def test_views():
    m = _manifest()
    assert m.num_classes == 2 and m.num_samples == 3
    assert m.ids("train") == ["a", "b"]
    assert m.label_array(["c", "a"]).tolist() == [1, 0]
    with pytest.raises(ManifestError, match=r"Unknown partition 'dev'.*Received: partition='dev'"):
        m.ids("dev")


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"labels": {"a": 0, "b": 5, "c": 1}}, "label 5, not a class index"),
        ({"partition": {"train": ["a", "zz"]}}, "names sample 'zz', which has no label"),
        ({"partition": {"train": ["a"], "test": ["a"]}}, "is in both 'train' and 'test'"),
        ({"classes": ["x", "x"]}, "class name twice"),
        ({"sample_weights": {"a": -1.0}}, "weights must be finite and >= 0"),
        ({"format_version": FORMAT_VERSION + 1}, "Upgrade kpipe"),
    ],
)
def test_validation_errors(kw, match):
    with pytest.raises(ManifestError, match=match):
        _manifest(**kw)


def test_load_errors(tmp_path: Path):
    with pytest.raises(ManifestError, match=r"No manifest at .*Run `kpipe prepare RAW_DIR --out"):
        Manifest.load(tmp_path / "nope.json")
    bad = tmp_path / "manifest.json"
    bad.write_text("{not json")
    with pytest.raises(ManifestError, match="Cannot read manifest"):
        Manifest.load(bad)
    bad.write_text(json.dumps({"classes": []}))
    with pytest.raises(ManifestError, match="lacks required keys"):
        Manifest.load(bad)


def test_sample_checksums_round_trip_and_validation(tmp_path: Path):
    checksums = {"algorithm": "blake2b-128", "digests": {"a": "00" * 16, "b": "11" * 16}}
    m = _manifest(sample_checksums=checksums)
    m.save(tmp_path)
    assert Manifest.load(tmp_path).sample_checksums == checksums
    assert json.loads((tmp_path / "manifest.json").read_text())["sample_checksums"] == checksums
    assert "sample_checksums" not in _manifest().to_dict()  # optional
    with pytest.raises(ManifestError, match="malformed `sample_checksums`"):
        _manifest(sample_checksums={"digests": {"a": "00"}})
    with pytest.raises(ManifestError, match="checksum for unknown sample 'zz'"):
        _manifest(sample_checksums={"algorithm": "blake2b-128", "digests": {"zz": "00"}})
