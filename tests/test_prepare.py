import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import make_image_folder, make_indexed_npy_folder
from kpipe.errors import InputError, OutputExistsError, SplitError
from kpipe.manifest import Manifest
from kpipe.prepare import parse_image_size, prepare


def test_prepare_images(image_folder: Path, tmp_path: Path):
    (image_folder / "a" / "broken.png").write_bytes(b"not a png")
    (image_folder / "b" / ".DS_Store").write_bytes(b"\0")
    result = prepare(image_folder, tmp_path / "out", n_jobs=2)
    m = Manifest.load(tmp_path / "out" / "manifest.json")
    assert m == result.manifest
    assert m.classes == ["a", "b", "c"]
    assert m.num_samples == 45
    assert m.sample_shape == (8, 8, 1) and m.sample_dtype == "uint8"
    assert {len(v) for v in m.partition.values()} <= {36, 4, 5}
    assert sum(len(v) for v in m.partition.values()) == 45
    assert result.num_skipped == 2
    reasons = {Path(s["path"]).name: s["reason"] for s in m.skipped}
    assert reasons["broken.png"].startswith("unreadable")
    assert reasons[".DS_Store"] == "hidden file"
    assert m.prepare["layout"] == "images" and m.prepare["color_mode"] == "grayscale"
    # data round trip: the stored sample equals the decoded image
    arr = np.load(tmp_path / "out" / "data" / "a_img_003.npy")
    np.testing.assert_array_equal(arr[:, :, 0], np.asarray(Image.open(image_folder / "a" / "img_003.png")))
    assert "2 inputs skipped" in result.summary()
    assert result.summary().startswith("Prepared 45 samples in 3 classes: train 36, validation 4, test 5 -> ")
    # nothing left behind
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]
    assert not list((tmp_path / "out").rglob("*.partial"))


def test_same_input_and_seed_same_partition(image_folder: Path, tmp_path: Path):
    a = prepare(image_folder, tmp_path / "a", seed=5, n_jobs=1).manifest
    b = prepare(image_folder, tmp_path / "b", seed=5, n_jobs=2).manifest
    c = prepare(image_folder, tmp_path / "c", seed=6, n_jobs=1).manifest
    assert a.partition == b.partition
    assert a.partition != c.partition


def test_image_size_color_mode_and_odd_sizes(tmp_path: Path):
    raw = make_image_folder(tmp_path / "raw", {"x": 5, "y": 5}, size=(8, 8), mode="RGB")
    Image.fromarray(np.zeros((9, 7, 3), np.uint8)).save(raw / "y" / "odd.png")
    m = prepare(raw, tmp_path / "o1", split="0.6,0.2,0.2", n_jobs=1).manifest
    assert m.sample_shape == (8, 8, 3) and m.num_samples == 10
    assert any("--image-size" in s["reason"] for s in m.skipped)
    m = prepare(raw, tmp_path / "o2", split="0.6,0.2,0.2", image_size="4x6", color_mode="grayscale", n_jobs=1).manifest
    assert m.sample_shape == (4, 6, 1) and m.num_samples == 11


def test_prepare_npy_and_mismatched_shape_skipped(tmp_path: Path):
    raw = make_indexed_npy_folder(tmp_path / "raw", {"p": 6, "q": 6})
    np.save(raw / "q" / "wrong.npy", np.zeros((3,), np.float32))
    np.save(raw / "q" / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    m = prepare(raw, tmp_path / "out", split="0.5,0.25,0.25", n_jobs=1).manifest
    assert m.num_samples == 12 and m.sample_dtype == "float32"
    reasons = {Path(s["path"]).name: s["reason"] for s in m.skipped}
    assert "float32[3]" in reasons["wrong.npy"]
    assert "pickle" in reasons["pickled.npy"].lower()


def test_prepare_csv(tmp_path: Path):
    rows = ["label,a,b"] + [f"{k % 3},{k},{k * 2}" for k in range(30)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    m = prepare(tmp_path / "t.csv", tmp_path / "out", n_jobs=1).manifest
    assert m.classes == ["0", "1", "2"] and m.sample_shape == (2,) and m.sample_dtype == "float32"
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "data" / "row000004.npy"), [3.0, 6.0])
    assert m.labels["row000004"] == 0


def test_existing_output_needs_overwrite(image_folder: Path, tmp_path: Path):
    out = tmp_path / "out"
    prepare(image_folder, out, n_jobs=1)
    (out / "keep.txt").write_text("old")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        prepare(image_folder, out, n_jobs=1)
    assert (out / "keep.txt").exists()  # nothing lost
    prepare(image_folder, out, n_jobs=1, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert Manifest.load(out).num_samples == 45


def test_failed_run_leaves_no_trace(tmp_path: Path):
    raw = make_image_folder(tmp_path / "raw", {"a": 10, "b": 1})
    with pytest.raises(SplitError, match="Class 'b' has 1 sample"):
        prepare(raw, tmp_path / "out", n_jobs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_missing_and_empty_input(tmp_path: Path):
    with pytest.raises(InputError, match="does not exist"):
        prepare(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="Found no samples"):
        prepare(tmp_path / "empty", tmp_path / "out")
    raw = tmp_path / "bad"
    (raw / "a").mkdir(parents=True)
    (raw / "a" / "x.png").write_bytes(b"junk")
    with pytest.raises(InputError, match="could be read"):
        prepare(raw, tmp_path / "out")


def test_parse_image_size():
    assert parse_image_size("64x48") == (64, 48)
    assert parse_image_size(None) is None
    with pytest.raises(InputError, match="HEIGHTxWIDTH"):
        parse_image_size("64")


def test_manifest_is_valid_json_with_required_keys(indexed_manifest: Path):
    d = json.loads(Path(indexed_manifest).read_text())
    for key in ("format_version", "classes", "labels", "partition", "sample", "storage", "counts", "prepare",
                "skipped"):
        assert key in d
    assert d["storage"] == {"format": "npy", "root": "data"}
    assert d["prepare"]["split"] == {"train": 0.6, "validation": 0.2, "test": 0.2}
    assert os.path.isabs(d["prepare"]["source"])


def test_most_common_shape_wins_over_an_odd_first_file(tmp_path: Path):
    raw = make_indexed_npy_folder(tmp_path / "raw", {"a": 6, "b": 6}, shape=(5, 4))
    np.save(raw / "a" / "0_odd.npy", np.zeros((5, 4), np.float64))  # sorts first
    m = prepare(raw, tmp_path / "out", split="0.5,0.25,0.25", n_jobs=1).manifest
    assert m.sample_shape == (5, 4) and m.sample_dtype == "float32" and m.num_samples == 12
    reasons = {Path(s["path"]).name: s["reason"] for s in m.skipped}
    assert "the dataset's (most common) is float32[5, 4]" in reasons["0_odd.npy"]


def test_one_class_is_an_error_and_split_error_mentions_skipped(tmp_path: Path):
    raw = make_indexed_npy_folder(tmp_path / "raw", {"only": 6})
    with pytest.raises(InputError, match="only one class .* a classifier needs at least two"):
        prepare(raw, tmp_path / "out", n_jobs=1)
    raw2 = make_indexed_npy_folder(tmp_path / "raw2", {"a": 6, "b": 1})
    for k in range(2):
        (raw2 / "b" / f"bad{k}.npy").write_bytes(b"junk")
    with pytest.raises(SplitError, match=r"Class 'b' has 1 sample.*Note: 2 of 9 inputs could not be converted"):
        prepare(raw2, tmp_path / "out", n_jobs=1)


def test_overwrite_keeps_training_runs(image_folder: Path, tmp_path: Path):
    out = tmp_path / "out"
    prepare(image_folder, out, n_jobs=1)
    (out / "runs" / "r1").mkdir(parents=True)
    (out / "runs" / "r1" / "metrics.json").write_text("{}")
    prepare(image_folder, out, n_jobs=1, overwrite=True)
    assert (out / "runs" / "r1" / "metrics.json").read_text() == "{}"


def test_output_inside_the_input_is_refused(image_folder: Path):
    with pytest.raises(InputError, match="is inside the input"):
        prepare(image_folder, image_folder / "a", overwrite=True, n_jobs=1)
    assert len(list((image_folder / "a").iterdir())) == 20
