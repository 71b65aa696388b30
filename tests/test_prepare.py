import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import make_image_folder, make_indexed_npy_folder
from PIL import Image

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
    assert "2 inputs skipped (1 hidden, 1 unreadable" in result.summary()
    lines = result.summary().splitlines()
    assert lines[0] == f"Prepared 45 samples in 3 classes: train 36, validation 5, test 4 -> {m.path}"
    assert lines[1:6] == ["class  train  validation  test  total", "a         16           2     2     20",
                          "b         12           2     1     15", "c          8           1     1     10",
                          "total     36           5     4     45"]
    assert lines[6] == "Imbalance ratio 2.00 (largest class 'a': 20 samples, smallest 'c': 10)"
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
    assert "float32 of shape (3,)" in reasons["wrong.npy"]
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
    with pytest.raises(OutputExistsError, match="'keep.txt', which kpipe did not write"):
        prepare(image_folder, out, n_jobs=1, overwrite=True)  # --overwrite never deletes a file kpipe did not write
    (out / "keep.txt").unlink()
    prepare(image_folder, out, n_jobs=1, overwrite=True)
    assert Manifest.load(out).num_samples == 45


def test_failed_run_leaves_no_trace(tmp_path: Path):
    raw = make_image_folder(tmp_path / "raw", {"a": 10, "b": 1})
    with pytest.raises(SplitError, match=r"Class 'b' \(1 sample\) cannot have a sample in each of the 3"):
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
    assert "the dataset's (most common) is float32 of shape (5, 4)" in reasons["0_odd.npy"]


def test_one_class_is_an_error_and_split_error_mentions_skipped(tmp_path: Path):
    raw = make_indexed_npy_folder(tmp_path / "raw", {"only": 6})
    with pytest.raises(InputError, match="only one class .* a classifier needs at least two"):
        prepare(raw, tmp_path / "out", n_jobs=1)
    raw2 = make_indexed_npy_folder(tmp_path / "raw2", {"a": 6, "b": 1})
    for k in range(2):
        (raw2 / "b" / f"bad{k}.npy").write_bytes(b"junk")
    with pytest.raises(SplitError, match=r"Class 'b' \(1 sample\).*Skipped 2 inputs: 2 unreadable or corrupt "
                                         r"\(e.g. .*bad0.npy: not a .npy file"):
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


# ---------------------------------------------------------------- issue 9
def _load(out: Path, sid: str) -> np.ndarray:
    return np.load(out / "data" / f"{sid}.npy")


def test_16bit_classes_stay_apart(tmp_path: Path):
    raw = tmp_path / "raw"
    for name, value in (("dark", 2000), ("bright", 65535)):
        (raw / name).mkdir(parents=True)
        for k in range(6):
            Image.fromarray(np.full((4, 4), value - 256 * k, np.uint16)).save(raw / name / f"{k}.png")
    result = prepare(raw, tmp_path / "out", n_jobs=1)
    m = result.manifest
    assert m.sample_dtype == "uint16" and m.prepare["dtype"] == "uint16"
    assert int(_load(tmp_path / "out", "dark_0").max()) == 2000  # old code: 255 for both classes
    assert int(_load(tmp_path / "out", "bright_0").max()) == 65535
    assert "onverted" not in result.summary()
    m8 = prepare(raw, tmp_path / "out8", dtype="uint8", n_jobs=1)
    assert int(_load(tmp_path / "out8", "dark_0").max()) == 2000 >> 8
    assert "\nConverted: 12 16-bit to uint8 (v >> 8)" in m8.summary()


def test_mixed_sizes_error_names_the_sizes_and_the_option(tmp_path: Path):
    raw = make_image_folder(tmp_path / "raw", {"a": 8}, size=(8, 8))
    make_image_folder(raw, {"b": 8}, size=(10, 12), seed=1)
    make_image_folder(raw, {"a": 0}, size=(10, 12))
    with pytest.raises(InputError) as e:
        prepare(raw, tmp_path / "out", n_jobs=1)
    msg = str(e.value)
    assert "Found only one class ('a', 8 samples)" in msg
    assert "Skipped 9 inputs: 8 image of another size (e.g. " in msg and "1 class left without any sample" in msg
    assert "The images come in 2 sizes: 10x12 (8), 8x8 (8); pass --image-size HxW" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
    m = prepare(raw, tmp_path / "out", image_size="8x8", n_jobs=1).manifest
    assert m.num_samples == 16 and m.classes == ["a", "b"]


def test_nonfinite_samples_skipped_or_an_error(tmp_path: Path):
    raw = make_indexed_npy_folder(tmp_path / "raw", {"a": 75, "b": 75})
    bad = np.load(raw / "b" / "s_010.npy")
    bad[0, 0, 0] = np.nan
    np.save(raw / "b" / "s_010.npy", bad)
    result = prepare(raw, tmp_path / "out", n_jobs=1)
    assert result.manifest.num_samples == 149
    [entry] = [s for s in result.manifest.skipped if s["kind"] == "nonfinite"]
    assert entry["path"].endswith("s_010.npy") and "1 NaN/Inf value among 16" in entry["reason"]
    assert "1 with NaN/Inf skipped (--nonfinite skip)" in result.summary()
    with pytest.raises(InputError, match=r"Sample 'b_s_010' \(.*s_010.npy\) holds 1 NaN/Inf value; --nonfinite error"):
        prepare(raw, tmp_path / "out2", nonfinite="error", n_jobs=1)
    assert not (tmp_path / "out2").exists()


def test_csv_missing_values_policy_in_the_summary(tmp_path: Path):
    rows = ["label,a,sparse,name,b"]
    for k in range(200):
        rows.append(f"{k % 2},{k},{k if k % 20 in (0, 1) else 'NA'},n{k},{'inf' if k == 7 else k * 2}")
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    result = prepare(tmp_path / "t.csv", tmp_path / "out", n_jobs=1)
    assert result.manifest.num_samples == 199  # old code: 10, after dropping 190 rows
    summary = result.summary()
    assert "\nDropped columns: sparse (90% missing), name (text)\n" in summary
    assert "1 with NaN/Inf skipped (--nonfinite skip)" in summary
    result = prepare(tmp_path / "t.csv", tmp_path / "out2", missing="drop-rows", n_jobs=1)
    assert result.manifest.num_samples == 20
    assert "180 rows dropped for missing values (--missing drop-rows)" in result.summary()
    assert result.manifest.prepare["missing"] == "drop-rows"


def test_nothing_convertible_names_a_file_and_its_reason(tmp_path: Path):
    raw = tmp_path / "raw"
    for c in ("a", "b"):
        (raw / c).mkdir(parents=True)
        for k in range(2):
            np.save(raw / c / f"o{k}.npy", np.array([{"k": k}], dtype=object), allow_pickle=True)
            np.save(raw / c / f"s{k}.npy", np.array(["text"]))
    with pytest.raises(InputError, match=r"None of the 8 inputs .* could be read\. Skipped 8 inputs: 8 values kpipe "
                                         r"cannot store as they are \(or another dtype than the dataset's\) "
                                         r"\(e\.g\. .*\.npy: "):
        prepare(raw, tmp_path / "out", n_jobs=1)


def test_big_endian_dataset_is_converted(tmp_path: Path):
    raw = make_indexed_npy_folder(tmp_path / "raw", {"a": 6, "b": 6})
    for f in raw.rglob("*.npy"):
        np.save(f, np.load(f).astype(">f4"))
    m = prepare(raw, tmp_path / "out", n_jobs=1).manifest
    assert m.num_samples == 12 and m.sample_dtype == "float32"
    np.testing.assert_array_equal(_load(tmp_path / "out", "b_s_000"), np.full((4, 4, 1), 6, np.float32))


def _duplicated_images(root: Path) -> Path:
    raw = make_image_folder(root, {"a": 20, "b": 20})
    for k in range(5):  # five copies of a_img_000 in class a, three of b_img_000 in class b
        (raw / "a" / f"copy{k}.png").write_bytes((raw / "a" / "img_000.png").read_bytes())
    for k in range(3):
        (raw / "b" / f"copy{k}.png").write_bytes((raw / "b" / "img_000.png").read_bytes())
    return raw


def test_duplicates_never_cross_partitions(tmp_path: Path):
    raw = _duplicated_images(tmp_path / "raw")
    for seed in range(6):
        result = prepare(raw, tmp_path / f"out{seed}", seed=seed, n_jobs=1)
        m = result.manifest
        part_of = {sid: p for p, ids in m.partition.items() for sid in ids}
        groups = m.prepare["duplicate_groups"]
        assert sorted(len(g) for g in groups) == [4, 6]
        for g in groups:
            assert len({part_of[i] for i in g}) == 1
        assert "2 duplicate groups (10 samples): each group kept in one partition (--duplicates group)" in \
            result.summary()


def test_duplicates_drop_and_error(tmp_path: Path):
    raw = _duplicated_images(tmp_path / "raw")
    for fmt in ("npy", "hdf5"):
        result = prepare(raw, tmp_path / f"drop_{fmt}", duplicates="drop", format=fmt, n_jobs=1)
        m = result.manifest
        assert m.num_samples == 40 and "a_copy0" in m.labels and "a_copy1" not in m.labels
        dropped = [s for s in m.skipped if s["kind"] == "duplicate"]
        assert len(dropped) == 8 and dropped[0]["reason"] == "exact duplicate of 'a_copy0' (--duplicates drop)"
        assert "the first of each kept (--duplicates drop)" in result.summary()
    assert not (tmp_path / "drop_npy" / "data" / "a_copy1.npy").exists()
    with pytest.raises(InputError, match=r"Samples 'a_copy0' .* and 'a_copy1' .* are exact duplicates"):
        prepare(raw, tmp_path / "err", duplicates="error", n_jobs=1)


def test_rare_and_tiny_classes_through_prepare(tmp_path: Path):
    rows = ["label,x"] + [f"common,{k}" for k in range(1000)] + [f"rare,{-k}" for k in range(1, 4)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    result = prepare(tmp_path / "t.csv", tmp_path / "out", split="0.9,0.05,0.05", n_jobs=1)
    assert result.manifest.class_counts("validation")["rare"] == 1
    assert result.manifest.class_counts("test")["rare"] == 1
    assert "\ncommon    900          50    50   1000\nrare        1           1     1      3\n" in result.summary()
    assert result.summary().endswith("\nImbalance ratio 333.33 (largest class 'common': 1000 samples, smallest "
                                     "'rare': 3)")
    raw = make_image_folder(tmp_path / "raw", {"x": 6, "y": 6})
    m = prepare(raw, tmp_path / "out2", n_jobs=1).manifest  # old code: refused
    assert [len(m.partition[p]) for p in ("train", "validation", "test")] == [8, 2, 2]


def test_small_class_warn_is_in_the_summary(tmp_path: Path):
    raw = make_image_folder(tmp_path / "raw", {"x": 10, "y": 2})
    with pytest.warns(UserWarning, match="Class 'y' \\(2 samples\\)"):
        result = prepare(raw, tmp_path / "out", small_classes="warn", n_jobs=1)
    assert "Class 'y' (2 samples) cannot have a sample in each of the 3 partitions" in result.summary()
    assert result.manifest.class_counts("test")["y"] == 0


@pytest.mark.parametrize("backend", ["auto", "threads"])
def test_an_output_error_stops_prepare_and_is_not_a_bad_input(tmp_path: Path, monkeypatch, backend):
    import errno

    from kpipe import _prepare_tasks

    raw = make_indexed_npy_folder(tmp_path / "raw", {"a": 6, "b": 6})
    real = _prepare_tasks.write_npy_file
    calls = []

    def full_disk(root, sid, header, arr):
        calls.append(sid)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device", f"{root}/{sid}.npy")
        return real(root, sid, header, arr)

    monkeypatch.setattr(_prepare_tasks, "write_npy_file", full_disk)
    with pytest.raises(OSError, match="no space left on the device"):
        prepare(raw, tmp_path / "out", n_jobs=2, backend=backend)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


@pytest.mark.timeout(60)
def test_fifo_in_a_class_folder_does_not_hang_prepare(tmp_path: Path):
    raw = make_image_folder(tmp_path / "raw", {"a": 6, "b": 6})
    os.mkfifo(raw / "a" / "pipe.png")
    result = prepare(raw, tmp_path / "out", n_jobs=1)
    assert result.manifest.num_samples == 12
    assert [s["kind"] for s in result.manifest.skipped] == ["special"]


def test_sample_checksums_match_the_stored_samples_in_every_format(tmp_path: Path):
    from kpipe.storage import open_store
    from kpipe.verify import CHECKSUM_ALGORITHM, sample_digest

    raw = make_image_folder(tmp_path / "raw", {"a": 6, "b": 6})
    npy = prepare(raw, tmp_path / "npy", n_jobs=1).manifest
    h5 = prepare(raw, tmp_path / "h5", format="hdf5", n_jobs=1).manifest
    assert npy.sample_checksums["algorithm"] == CHECKSUM_ALGORITHM
    assert npy.sample_checksums == h5.sample_checksums
    assert set(npy.sample_checksums["digests"]) == set(npy.labels)
    with open_store(h5) as store:
        for sid, digest in h5.sample_checksums["digests"].items():
            assert sample_digest(store.read(sid)) == digest == sample_digest(_load(tmp_path / "npy", sid))


def test_many_classes_summary_is_compact(tmp_path: Path):
    rows = ["label,x"] + [f"c{k:02d},{k * 100 + j}" for k in range(30) for j in range(3 + k)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    lines = prepare(tmp_path / "t.csv", tmp_path / "out", n_jobs=1).summary().splitlines()
    table = lines[1:-1]  # 10 smallest, a "... more" row, 5 largest, the totals
    assert len(table) == 1 + 10 + 1 + 5 + 1
    assert table[1].split() == ["c00", "1", "1", "1", "3"] and table[11].split() == ["...", "15", "more"]
    assert table[-2].split()[0] == "c29" and table[-1].split()[0] == "total"
    assert lines[-1].startswith("Imbalance ratio 10.67 (largest class 'c29': 32 samples, smallest 'c00': 3)")
