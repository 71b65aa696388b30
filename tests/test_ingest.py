import os
from pathlib import Path

import numpy as np
import pytest
from helpers import make_image_folder
from PIL import Image

from kpipe.errors import InputError
from kpipe.ingest import (
    ImageOptions,
    RawSample,
    SampleError,
    count_nonfinite,
    detect_layout,
    image_kind,
    infer_image_options,
    load_image,
    load_npy,
    load_sample,
    npy_kind,
    open_regular,
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
    assert {s["kind"] for s in found.skipped} == {"hidden", "not-a-sample", "top-level"}
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
    assert "value 'oops' in column 'f1' is not a number" in reasons
    assert "missing label in column 'label'" in reasons


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


# ------------------------------------------------------------ issue 9, item 1: bit depth
def _png16(path: Path, arr: np.ndarray) -> Path:
    """A 16-bit PNG (grayscale if 2-D, RGB / RGBA if 3-D), written by hand (Pillow writes no 16-bit colour)."""
    import struct
    import zlib

    h, w = arr.shape[:2]
    ctype = 0 if arr.ndim == 2 else {3: 2, 4: 6}[arr.shape[2]]
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def test_16bit_images_keep_their_values_no_per_image_scaling(tmp_path: Path):
    dark = tmp_path / "dark.png"
    Image.fromarray(np.full((4, 4), 1000, np.uint16)).save(dark)  # Pillow writes I;16 as a 16-bit PNG
    bright = tmp_path / "bright.png"
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(bright)
    opts = infer_image_options(dark, None, None)
    assert opts.dtype == "uint16" and opts.color_mode == "grayscale"
    a, b = load_image(dark, opts), load_image(bright, opts)
    assert a.dtype == np.uint16 and a.shape == (4, 4, 1)
    assert (a == 1000).all() and (b == 65535).all()  # old code: both became 255
    # One fixed scale to uint8 for every image: v >> 8.
    as8 = ImageOptions((4, 4), "grayscale", dtype="uint8")
    assert (load_image(dark, as8) == 1000 >> 8).all() and (load_image(bright, as8) == 255).all()


def test_16bit_mid_grey_to_rgb_and_rgba(tmp_path: Path):
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((3, 5), 32768, np.uint16)).save(grey)
    rgb16 = load_image(grey, ImageOptions((3, 5), "rgb", dtype="uint16"))
    assert rgb16.shape == (3, 5, 3) and (rgb16 == 32768).all()  # old code: 100% at 255
    rgb8 = load_image(grey, ImageOptions((3, 5), "rgb", dtype="uint8"))
    assert (rgb8 == 128).all()
    rgba = load_image(grey, ImageOptions((3, 5), "rgba", dtype="uint16"))
    assert (rgba[..., :3] == 32768).all() and (rgba[..., 3] == 65535).all()
    resized = load_image(grey, ImageOptions((6, 10), "grayscale", dtype="uint16"))
    assert resized.shape == (6, 10, 1) and (resized == 32768).all()


def test_8bit_image_in_a_16bit_dataset_uses_the_fixed_scale(tmp_path: Path):
    path = tmp_path / "a.png"
    Image.fromarray(np.array([[0, 1, 128, 255]], np.uint8)).save(path)
    out = load_image(path, ImageOptions((1, 4), "grayscale", dtype="uint16"))
    assert out[0, :, 0].tolist() == [0, 257, 128 * 257, 65535]
    f = load_image(path, ImageOptions((1, 4), "grayscale", dtype="float32"))
    assert f.dtype == np.float32 and f[0, :, 0].tolist() == [0, 1, 128, 255]


def test_16bit_colour_png_is_never_silently_truncated(tmp_path: Path):
    arr = np.zeros((2, 2, 3), np.uint16)
    arr[..., 0], arr[..., 1], arr[..., 2] = 0x1234, 0xFF00, 0x00FF
    path = _png16(tmp_path / "c.png", arr)
    opts = infer_image_options(path, None, None)
    assert opts.dtype == "uint8"  # Pillow decodes 16-bit colour at 8 bits: the high byte, i.e. v >> 8
    assert load_image(path, opts)[0, 0].tolist() == [0x12, 0xFF, 0x00]
    with pytest.raises(SampleError, match="16-bit colour") as e:
        load_image(path, ImageOptions((2, 2), "rgb", dtype="uint16"))
    assert e.value.kind == "dtype"


def test_float_images_are_kept_as_float32_or_refused(tmp_path: Path):
    path = tmp_path / "f.tif"
    Image.fromarray(np.array([[0.25, -3.5], [1e6, 2.0]], np.float32)).save(path)
    opts = infer_image_options(path, None, None)
    assert opts.dtype == "float32"
    np.testing.assert_array_equal(load_image(path, opts)[..., 0], [[0.25, -3.5], [1e6, 2.0]])
    with pytest.raises(SampleError, match="--dtype float32"):
        load_image(path, ImageOptions((2, 2), "grayscale", dtype="uint8"))


# ------------------------------------------------------------ issue 9, item 2: alpha
def test_transparent_pixels_are_composited_the_same_way_for_every_mode(tmp_path: Path):
    red_hidden = np.zeros((2, 2, 4), np.uint8)
    red_hidden[..., 0] = 255  # red under alpha 0
    blue_hidden = np.zeros((2, 2, 4), np.uint8)
    blue_hidden[..., 2] = 255
    Image.fromarray(red_hidden, "RGBA").save(tmp_path / "r.png")
    Image.fromarray(blue_hidden, "RGBA").save(tmp_path / "b.png")
    la = Image.fromarray(np.zeros((2, 2, 2), np.uint8), "LA")
    la.save(tmp_path / "la.png")
    pal = Image.new("P", (2, 2), 1)
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pal.save(tmp_path / "p.png", transparency=1)  # palette entry 1 (dark red) is transparent
    for background, value in (("white", 255), ("black", 0)):
        for mode, channels in (("rgb", 3), ("grayscale", 1)):
            opts = ImageOptions((2, 2), mode, background=background)
            for name in ("r.png", "b.png", "la.png", "p.png"):
                arr = load_image(tmp_path / name, opts)
                assert arr.shape == (2, 2, channels) and (arr == value).all(), (name, mode, background)
    # rgba keeps the file's values as they are
    kept = load_image(tmp_path / "r.png", ImageOptions((2, 2), "rgba"))
    assert kept[0, 0].tolist() == [255, 0, 0, 0]
    # half transparent: the usual "over" compositing
    half = np.zeros((1, 1, 4), np.uint8)
    half[..., 3] = 128
    Image.fromarray(half, "RGBA").save(tmp_path / "h.png")
    v = int(load_image(tmp_path / "h.png", ImageOptions((1, 1), "rgb"))[0, 0, 0])
    assert abs(v - round(255 * 127 / 255)) <= 1


# ------------------------------------------------------------ issue 9, item 3: EXIF orientation
@pytest.mark.parametrize("fmt", ["png", "webp", "tiff", "jpg"])
def test_exif_orientation_applied_for_every_format(tmp_path: Path, fmt: str):
    from PIL import features

    if fmt == "webp" and not features.check("webp"):
        pytest.skip("Pillow without WebP")
    arr = np.zeros((2, 3, 3), np.uint8)
    arr[0, 0] = 255  # a white corner, top left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / f"o.{fmt}"
    kwargs = {"lossless": True} if fmt == "webp" else {"quality": 100} if fmt == "jpg" else {}
    Image.fromarray(arr).save(path, exif=exif.tobytes(), **kwargs)
    opts = infer_image_options(path, None, None)
    assert opts.image_size == (3, 2)
    out = load_image(path, opts)
    assert out.shape == (3, 2, 3)
    expected = np.rot90(arr, -1)
    if fmt == "jpg":
        assert np.abs(out.astype(int) - expected).max() < 40
    else:
        np.testing.assert_array_equal(out, expected)
    assert image_kind(path)[:2] == (3, 2)


# ------------------------------------------------------------ issue 9, items 5 and 6: folders
def _png(path: Path, value: int = 0, size=(4, 4)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8)).save(path)
    return path


def test_nested_class_folders_are_read_recursively(tmp_path: Path):
    raw = tmp_path / "raw"
    _png(raw / "cat" / "a.png")
    _png(raw / "cat" / "nested" / "deeper" / "h.png")
    _png(raw / "dog" / "sub" / "b.png")
    found = scan(raw)
    assert found.classes == ["cat", "dog"]
    assert [s.id for s in found.samples] == ["cat_a", "cat_nested_deeper_h", "dog_sub_b"]
    assert found.skipped == []


def test_symlinks_followed_without_loops(tmp_path: Path):
    raw = tmp_path / "raw"
    _png(raw / "cat" / "a.png")
    (raw / "cat" / "loop").symlink_to(raw / "cat", target_is_directory=True)
    elsewhere = tmp_path / "elsewhere"
    _png(elsewhere / "x.png")
    _png(elsewhere / "y.png")
    (raw / "dog").symlink_to(elsewhere, target_is_directory=True)  # a linked class folder
    (raw / "cat" / "self").symlink_to(raw / "cat" / "self")  # a link to itself
    found = scan(raw)
    assert [s.id for s in found.samples] == ["cat_a", "dog_x", "dog_y"]
    kinds = {Path(s["path"]).name: s["kind"] for s in found.skipped}
    assert kinds == {"loop": "link-loop", "self": "link-loop"}


def test_hidden_entries_one_rule_and_every_unused_entry_reported(tmp_path: Path):
    raw = tmp_path / "raw"
    _png(raw / "cat" / "a.png")
    _png(raw / "cat" / ".hidden.jpg")  # a valid image, but hidden
    (raw / "dog").mkdir()
    (raw / "dog" / "._i.png").write_bytes(b"\0\5\26\7AppleDouble")  # macOS metadata, not an image
    _png(raw / "dog" / "i.png", 9)
    _png(raw / "dog" / ".thumbs" / "t.png")  # hidden folder inside a class
    _png(raw / "__background__" / "bg.png", 3)  # an ordinary class
    _png(raw / ".git" / "x.png")  # hidden top-level folder
    (raw / "dog" / "gone.png").symlink_to(tmp_path / "nowhere.png")  # broken link
    (raw / "stray.txt").write_text("x")
    found = scan(raw)
    assert found.classes == ["__background__", "cat", "dog"]
    assert [s.id for s in found.samples] == ["__background___bg", "cat_a", "dog_i"]
    kinds = {Path(s["path"]).name: s["kind"] for s in found.skipped}
    assert kinds == {".git": "hidden", ".hidden.jpg": "hidden", "._i.png": "hidden", ".thumbs": "hidden",
                     "gone.png": "broken-link", "stray.txt": "top-level"}
    assert all(s["reason"] for s in found.skipped)


@pytest.mark.timeout(60)
def test_special_files_are_skipped_never_opened(tmp_path: Path):
    raw = tmp_path / "raw"
    _png(raw / "cat" / "a.png")
    _png(raw / "dog" / "b.png")
    os.mkfifo(raw / "cat" / "pipe.png")  # opening it for reading would block forever
    found = scan(raw)
    assert [s.id for s in found.samples] == ["cat_a", "dog_b"]
    assert {Path(s["path"]).name: s["kind"] for s in found.skipped} == {"pipe.png": "special"}
    with pytest.raises(SampleError, match="FIFO") as e:
        open_regular(raw / "cat" / "pipe.png")
    assert e.value.kind == "special"
    with pytest.raises(SampleError, match="character device"):
        open_regular("/dev/zero")
    # a FIFO swapped in after the listing is refused at load time, without blocking
    fifo_sample = RawSample(id="x", label=0, source="s", path=raw / "cat" / "pipe.png")
    with pytest.raises(SampleError, match="FIFO"):
        load_sample(fifo_sample, "images", ImageOptions((4, 4), "grayscale"))
    with pytest.raises(SampleError, match="FIFO"):
        load_npy(raw / "cat" / "pipe.png")


def test_unreadable_class_folder_is_reported(tmp_path: Path, monkeypatch):
    raw = tmp_path / "raw"
    _png(raw / "cat" / "a.png")
    _png(raw / "dog" / "b.png")
    _png(raw / "owl" / "c.png")
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "owl":  # as a folder without read permission (the tests may run as root)
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = scan(raw)
    assert found.classes == ["cat", "dog"]
    assert [(Path(s["path"]).name, s["kind"]) for s in found.skipped] == [("owl", "unreadable-folder")]
    assert "Permission denied" in found.skipped[0]["reason"]


def test_input_that_is_a_fifo_is_refused(tmp_path: Path):
    os.mkfifo(tmp_path / "t.csv")
    with pytest.raises(InputError, match="FIFO"):
        detect_layout(tmp_path / "t.csv")


def test_nothing_found_error_lists_what_was_skipped(tmp_path: Path):
    raw = tmp_path / "raw"
    _png(raw / "cat" / ".a.png")
    _png(raw / ".dog" / "b.png")
    with pytest.raises(InputError, match=r"Found no samples.*Skipped: 2 hidden"):
        scan(raw)


# ------------------------------------------------------------ issue 9, item 10: npy dtypes
def test_npy_big_endian_and_fortran_are_converted(tmp_path: Path):
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "be.npy", values.astype(">f4"))
    np.save(tmp_path / "f.npy", np.asfortranarray(values))
    for name in ("be.npy", "f.npy"):
        arr = load_npy(tmp_path / name)
        assert arr.dtype == np.float32 and arr.dtype.isnative and arr.flags.c_contiguous
        np.testing.assert_array_equal(arr, values)
    assert npy_kind(tmp_path / "be.npy") == npy_kind(tmp_path / "f.npy") == ((2, 3), np.dtype(np.float32).str)


def test_npy_object_and_string_arrays_say_why(tmp_path: Path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "s.npy", np.array(["ab", "cd"]))
    with pytest.raises(SampleError, match="Python objects") as e:
        load_npy(tmp_path / "o.npy")
    assert e.value.kind == "dtype"
    with pytest.raises(SampleError, match="<U2 is not numeric"):
        load_npy(tmp_path / "s.npy")


def test_count_nonfinite():
    assert count_nonfinite(np.array([1.0, np.nan, np.inf, -np.inf], np.float32)) == 3
    assert count_nonfinite(np.arange(3)) == 0


# ------------------------------------------------------------ issue 9, items 9 and 11: CSV
def test_csv_mostly_empty_column_dropped_not_the_rows(tmp_path: Path):
    rows = ["label,a,sparse,b"]
    for k in range(200):
        sparse = str(k) if k % 20 == 0 else ("", "NA", "?")[k % 3]
        rows.append(f"{k % 2},{k},{sparse},{k * 2}")
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    found = scan(tmp_path / "t.csv")
    assert len(found.samples) == 200  # old code: 190 of 200 rows dropped
    assert found.details["feature_columns"] == ["a", "b"]
    assert found.details["dropped_column_reasons"] == {"sparse": "95% missing"}
    rows_policy = scan(tmp_path / "t.csv", missing="drop-rows")
    assert len(rows_policy.samples) == 10 and rows_policy.details["dropped_rows"] == 190
    assert rows_policy.details["feature_columns"] == ["a", "sparse", "b"]
    assert {s["kind"] for s in rows_policy.skipped} == {"missing-value"}
    filled = scan(tmp_path / "t.csv", missing="fill=-1")
    assert len(filled.samples) == 200 and filled.samples[1].values.tolist() == [1, -1, 2]
    cols = scan(tmp_path / "t.csv", missing="drop-columns")
    assert cols.details["dropped_columns"] == ["sparse"]


def test_csv_auto_drops_rows_missing_a_value_in_a_mostly_full_column(tmp_path: Path):
    (tmp_path / "t.csv").write_text("label,a,b\n0,1,2\n1,NA,3\n0,2,\n1,4,5\n")
    found = scan(tmp_path / "t.csv")
    assert [s.source.rsplit(":", 1)[1] for s in found.samples] == ["2", "5"]
    assert found.details["dropped_rows"] == 2
    assert [s["reason"] for s in found.skipped] == ["missing value 'NA' in column 'a' (--missing auto)",
                                                    "missing value '' in column 'b' (--missing auto)"]


def test_parse_missing():
    from kpipe.ingest import parse_missing

    assert parse_missing("auto") == ("auto", None)
    assert parse_missing("fill=0.5") == ("fill", 0.5)
    for bad in ("fill=", "fill=nan", "drop", "", None):
        with pytest.raises(InputError, match="`missing` must be"):
            parse_missing(bad)


def test_csv_text_columns_named_and_numeric_labels_merged(tmp_path: Path):
    (tmp_path / "t.csv").write_text("label,a,name\n1,1,x\n1.0,2,y\n 01 ,3,z\n2,4,w\n2.00,5,v\n")
    found = scan(tmp_path / "t.csv")
    assert found.classes == ["1", "2"]  # 1, 1.0 and 01 are one class
    assert [s.label for s in found.samples] == [0, 0, 0, 1, 1]
    assert found.details["dropped_column_reasons"] == {"name": "text"}


def test_csv_continuous_label_says_classification(tmp_path: Path):
    rows = ["target,a"] + [f"{0.37 * k + 0.01:.3f},{k}" for k in range(40)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(InputError, match="kpipe does classification; the label column 'target'.*40 distinct"):
        scan(tmp_path / "t.csv", label_column="target")


def test_csv_duplicate_ids_are_an_error(tmp_path: Path):
    (tmp_path / "t.csv").write_text("id,label,a\nx,0,1\ny,1,2\nx,1,3\n")
    with pytest.raises(InputError, match="ID 'x' in column 'id' is on lines 2 and 4"):
        scan(tmp_path / "t.csv", id_column="id")


def test_csv_without_usable_rows_says_why_not_where_to_look(tmp_path: Path):
    (tmp_path / "t.csv").write_text("label,a\n,1\nNA,2\n")
    with pytest.raises(InputError, match=r"has no usable rows. Skipped: 2 no label \(e.g. .*t.csv:2: missing label"):
        scan(tmp_path / "t.csv")
