import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kpipe.errors import ManifestError
from kpipe.manifest import FORMAT_VERSION, Manifest


def _manifest(**kw) -> Manifest:
    base = {
        "classes": ["cat", "dog"],
        "labels": {"a": 0, "b": 1, "c": 1},
        "partition": {"train": ["a", "b"], "validation": ["c"], "test": []},
        "sample_shape": (2, 3),
        "sample_dtype": "float32",
    }
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


# ------------------------------------------------------------------ strict schema (issue 10)
def _set(path, value):
    """An edit of a manifest dict: set the value at a path of keys."""
    def edit(d):
        target = d
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


HOSTILE_VALUES = [
    (_set(["labels", "b"], 1.5), "labels"),               # a later label: checked in bulk
    (_set(["labels", "a"], 1.5), "labels"),               # the first label: checked by jsonschema
    (_set(["labels", "b"], True), "labels"),
    (_set(["labels", "a"], True), "not of type 'integer'"),
    (_set(["labels", "b"], 1.0), "labels"),
    (_set(["labels", "b"], "1"), "labels"),
    (_set(["labels", "b"], -1), "labels"),
    (_set(["format_version"], -1), "format_version"),
    (_set(["format_version"], "1"), "format_version"),
    (_set(["format_version"], 1.0), "format_version"),
    (_set(["format_version"], True), "format_version"),
    (_set(["sample", "dtype"], "object"), "sample.dtype"),
    (_set(["sample", "dtype"], "not-a-dtype"), "sample.dtype"),
    (_set(["sample", "dtype"], 7), "sample.dtype"),
    (_set(["sample", "shape"], [-1, 3]), r"sample.shape\[0\]"),
    (_set(["sample", "shape"], [0]), r"sample.shape\[0\]"),
    (_set(["sample", "shape"], ["2", 3]), r"sample.shape\[0\]"),
    (_set(["sample", "shape"], [2.5]), r"sample.shape\[0\]"),
    (_set(["sample", "shape"], "2x3"), "sample.shape"),
    (_set(["classes"], [1, 2]), r"classes\[\d\]: \d is not of type"),
    (_set(["classes"], []), "classes"),
    (_set(["partition", "train"], "ab"), "partition.train"),
    (_set(["partition", "train"], ["a", "b\x00c"]), "NUL or control character"),
    (_set(["labels"], {"a": 0, "b": 1, "c\x00d": 1}), "NUL or control character"),
    (_set(["sample_weights"], {"a": True, "b": 1.0, "c": 1.0}), "sample_weights"),
    (_set(["sample_weights"], {"a": 1.0, "b": -2, "c": 1.0}), "sample_weights"),
    (_set(["sample_weights"], {"a": 1.0, "b": "x", "c": 1.0}), "sample_weights"),
    (_set(["storage", "root"], "/abs/data"), "points outside the dataset folder"),
    (_set(["storage", "root"], "../data"), "points outside the dataset folder"),
    (_set(["storage"], {"format": "hdf5", "root": "shards"}), "'shards' is a required property"),
    (_set(["storage"], {"format": "hdf5", "root": "shards", "shards": [{"file": "x.h5", "ids": ["a"],
                                                                          "sha256": "nothex"}]}), "sha256"),
    (_set(["sample_checksums"], {"algorithm": "blake2b-128", "digests": {"a": "zz"}}), "sample_checksums"),
    (_set(["sample_checksums"], {"algorithm": "blake2b-128", "digests": {"a": "00" * 16, "b": "zz", "c": "ab"}}),
     r"sample_checksums\.digests \(values\)"),
    (_set(["sample_checksums"], {"a": "00" * 16}), "sample_checksums"),
    (_set(["sample_weights"], {"a": float("nan"), "b": 1.0, "c": 1.0}), "NaN, which is not a JSON number"),
    (_set(["sample_weights"], {"a": 1.0, "b": float("inf"), "c": 1.0}), "Infinity, which is not a JSON number"),
]


@pytest.mark.parametrize("edit, match", HOSTILE_VALUES)
def test_manifest_values_are_checked_before_any_coercion(tmp_path: Path, edit, match):
    """Each would have been converted silently (1.5 -> class 1, true -> 1, '2' -> 2) or crashed with a
    traceback; now each is one line naming the place."""
    path = _manifest().save(tmp_path)
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))
    with pytest.raises(ManifestError, match=match) as info:
        Manifest.load(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_optional_fields_are_allowed_and_checked_when_present(tmp_path: Path):
    path = _manifest().save(tmp_path)
    d = json.loads(path.read_text())
    d["sample_checksums"] = {"algorithm": "blake2b-128", "digests": {"a": "0" * 64, "b": "ab" * 32, "c": "12345678"}}
    d["a_field_of_a_later_version"] = {"anything": [1, 2]}
    path.write_text(json.dumps(d))
    assert Manifest.load(path).labels == {"a": 0, "b": 1, "c": 1}


def test_cli_reports_a_bad_manifest_in_one_line(tmp_path: Path):
    from click.testing import CliRunner

    from kpipe.cli import main

    path = _manifest().save(tmp_path)
    d = json.loads(path.read_text())
    d["sample"]["dtype"] = "object"
    path.write_text(json.dumps(d))
    res = CliRunner().invoke(main, ["convert", str(path), "--to", "hdf5", "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "sample.dtype" in res.output and "Traceback" not in res.output


def test_schema_file_is_shipped_and_names_the_id_rule():
    from kpipe._paths import NAME_PATTERN
    from kpipe.manifest import manifest_schema

    schema = manifest_schema()
    assert schema["$defs"]["sample_id"]["pattern"] == NAME_PATTERN
    assert set(schema["required"]) == {"format_version", "classes", "labels", "partition", "sample", "storage"}



_ANY_JSON_SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 2**63), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=210), st.sampled_from([".", "..", "...", "a/b", "a\\b", "x\x00", "x\n", "é", "0" * 64,
                                            "ab12cd34", "ab12cd34\n", "-", ".hidden", "a" * 200, "a" * 201]),
)


@given(_ANY_JSON_SCALAR)
def test_bulk_checks_are_exactly_the_schema(value):
    """The per-sample fast checks (used for millions of IDs) agree with jsonschema on every JSON value
    (NaN and Infinity are not JSON: `Manifest.load` refuses them while parsing)."""
    from kpipe.manifest import _FAST_CHECKS, _validator

    for definition, check in _FAST_CHECKS.items():
        assert check(value) == _validator(definition).is_valid(value), (definition, value)
