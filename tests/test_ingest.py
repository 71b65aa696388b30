from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import make_image_folder
from kpipe.errors import InputError
from kpipe.ingest import (
    ImageOptions,
    detect_layout,
    infer_image_options,
    load_image,
    safe_id,
    scan,
    unique_ids,
)


def test_detect_layout_images_npy_csv(tmp_path: Path, image_folder: Path):
    assert detect_layout(image_folder) == "images"
    (tmp_path / "n" / "x").mkdir(parents=True)
    np.save(tmp_path / "n" / "x" / "a.npy", np.zeros(3))
    assert detect_layout(tmp_path / "n") == "npy"
    csv = tmp_path / "t.csv"
    csv.write_text("label,f\n0,1\n")
    assert detect_layout(csv) == "csv"


def test_detect_layout_errors(tmp_path: Path):
    with pytest.raises(InputError, match="does not exist"):
        detect_layout(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="Found no samples"):
        detect_layout(tmp_path / "empty")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(InputError, match="not a .csv"):
        detect_layout(tmp_path / "f.txt")


def test_extensions_any_case_and_stray_files_skipped(tmp_path: Path):
    raw = make_image_folder(tmp_path / "raw", {"b": 2, "a": 1})
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(raw / "a" / "UPPER.PNG")
    (raw / "a" / ".DS_Store").write_bytes(b"\0")
    (raw / "a" / "README.txt").write_text("notes")
    (raw / "top.txt").write_text("x")
    found = scan(raw)
    assert found.layout == "images"
    assert found.classes == ["a", "b"]  # sorted folder names, as Keras
    assert [s.id for s in found.samples] == ["a_UPPER", "a_img_000", "b_img_000", "b_img_001"]
    assert [s.label for s in found.samples] == [0, 0, 1, 1]
    reasons = {Path(s["path"]).name: s["reason"] for s in found.skipped}
    assert reasons[".DS_Store"] == "hidden file"
    assert "not an image file (.txt)" in reasons["README.txt"]
    assert "top level" in reasons["top.txt"]


def test_safe_id_and_uniqueness():
    assert safe_id("cats/Tom & Jerry.png") == "cats_Tom_Jerry.png"
    assert safe_id("../../etc/passwd") == "_.._etc_passwd"
    assert "/" not in safe_id("a/b\\c") and "\\" not in safe_id("a/b\\c")
    assert safe_id("..") == "sample"
    long = safe_id("x" * 500)
    assert len(long) == 150 and long != safe_id("x" * 499)
    assert unique_ids(["a", "a", "A", "b"]) == ["a", "a_2", "A_3", "b"]


def test_colliding_ids_are_made_unique(tmp_path: Path):
    raw = tmp_path / "raw"
    (raw / "c").mkdir(parents=True)
    for name in ("x.png", "x.jpg", "x y.png", "x_y.png"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(raw / "c" / name)
    ids = [s.id for s in scan(raw).samples]
    assert len(set(ids)) == 4
    assert all(safe_id(i) == i for i in ids)


def test_image_options_inferred_and_resize(tmp_path: Path):
    raw = make_image_folder(tmp_path / "raw", {"a": 1}, size=(6, 10), mode="RGB")
    path = raw / "a" / "img_000.png"
    opts = infer_image_options(path, None, None)
    assert opts == ImageOptions(image_size=(6, 10), color_mode="rgb", resize=False)
    assert load_image(path, opts).shape == (6, 10, 3)
    assert load_image(path, ImageOptions((3, 5), "grayscale")).shape == (3, 5, 1)
    assert load_image(path, ImageOptions((3, 5), "rgba")).shape == (3, 5, 4)
    with pytest.raises(ValueError, match="--image-size"):
        load_image(path, ImageOptions((3, 5), "rgb", resize=False))


def test_csv_scan(tmp_path: Path):
    csv = tmp_path / "t.csv"
    csv.write_text(
        "id,f1,name,label,f2\n"
        "s1,1.5,foo,cat,2\n"
        "s2,2,bar,dog,3\n"
        "s3,oops,baz,dog,4\n"
        "s4,1,qux,,5\n"
        "s5,1,quux,10,5\n"
    )
    found = scan(csv, id_column="id")
    assert found.layout == "csv"
    assert found.classes == ["10", "cat", "dog"]
    assert [s.id for s in found.samples] == ["s1", "s2", "s5"]
    np.testing.assert_array_equal(found.samples[0].values, np.array([1.5, 2.0], np.float32))
    assert found.samples[0].values.dtype == np.float32
    assert found.details["feature_columns"] == ["f1", "f2"]
    assert found.details["dropped_columns"] == ["name"]
    reasons = [s["reason"] for s in found.skipped]
    assert "value 'oops' in column 'f1' is not a finite number" in reasons
    assert "empty label in column 'label'" in reasons


def test_csv_integer_classes_sort_numerically_and_row_ids(tmp_path: Path):
    csv = tmp_path / "t.csv"
    csv.write_text("f,label\n1,10\n2,9\n3,10\n")
    found = scan(csv)
    assert found.classes == ["9", "10"]
    assert [s.id for s in found.samples] == ["row000001", "row000002", "row000003"]
    assert [s.label for s in found.samples] == [1, 0, 1]


def test_csv_errors(tmp_path: Path):
    csv = tmp_path / "t.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="no label column 'label'.*--label-column"):
        scan(csv)
    csv.write_text("label\n")
    with pytest.raises(InputError, match="no data rows"):
        scan(csv)
