"""Data-side faults a new user met: ambiguous CSV columns, unchecked options, inconsistent manifests, odd inputs."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kpipe.cli import main
from kpipe.convert import convert
from kpipe.errors import ArgumentError, InputError, ManifestError, OutputExistsError, SplitError
from kpipe.ingest import load_npy, scan
from kpipe.manifest import Manifest
from kpipe.prepare import prepare
from kpipe.split import class_sizes, stratified_split
from kpipe.verify import verify


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ------------------------------------------------ 1: every column read by name must be one column
@pytest.mark.parametrize("text, options, message", [
    ("x,x,label\n1,2,0\n3,4,1\n", {}, r"names two columns 'x' \(columns 1 and 2\)"),
    ("a,label,label\n1,0,0\n3,1,1\n", {}, r"names two columns 'label' \(columns 2 and 3\)"),
    (" x,x ,label\n1,2,0\n3,4,1\n", {}, r"names two columns 'x'"),  # names compared after stripping blanks
    ("x,a,label\n1,2,0\n3,4,1\n", {"id_column": "x", "weight_column": "x"},
     "column 'x' is given as both `id_column` and `weight_column`"),
    ("id,a,label\nr1,2,0\nr2,4,1\n", {"id_column": "label"}, "both `label_column` and `id_column`"),
    (",a,label\n0,2,0\n1,4,1\n", {}, r"column 1 of the header has no name but holds values \(e.g. line 2\)"),
])
def test_ambiguous_csv_columns_are_refused_naming_file_and_columns(tmp_path: Path, text, options, message):
    raw = _csv(tmp_path / "t.csv", text)
    with pytest.raises(InputError, match=message) as e:
        prepare(raw, tmp_path / "out", n_jobs=1, **options)
    assert str(raw) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_an_empty_unnamed_column_from_a_trailing_comma_is_dropped_as_before(tmp_path: Path):
    found = scan(_csv(tmp_path / "t.csv", "a,label,\n1,0,\n2,1,\n"))
    assert found.details["feature_columns"] == ["a"] and found.details["dropped_column_reasons"] == {"#3": "empty"}


def test_cli_prepare_duplicate_header_is_one_line(tmp_path: Path):
    raw = _csv(tmp_path / "t.csv", "x,x,label\n" + "".join(f"{k},{k},{k % 2}\n" for k in range(20)))
    result = CliRunner().invoke(main, ["prepare", str(raw), "--out", str(tmp_path / "out"), "--n-jobs", "1"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "names two columns 'x'" in result.output


# ------------------------------------------------ 5: an unclosed CSV quote
def test_unclosed_quote_names_the_line_where_it_opened(tmp_path: Path):
    raw = _csv(tmp_path / "t.csv", 'a,b,label\n1,2,0\n3,"4,1\n5,6,1\n7,8,0\n')
    with pytest.raises(InputError, match=r"the quote opened on line 3 is never closed, so lines 3-5 \(the rest"):
        scan(raw)


def test_quote_closed_lines_later_names_the_swallowed_line_break(tmp_path: Path):
    raw = _csv(tmp_path / "t.csv", 'a,b,label\n1,2,0\n3,"4\n5",6,1\n7,8,0\n9,9,1\n')
    found = scan(raw)
    assert [s.source for s in found.samples] == [f"{raw}:2", f"{raw}:4", f"{raw}:5"]
    assert found.skipped == [{"path": f"{raw}:3", "kind": "bad-row", "reason":
                              "row has 4 cells, the header has 3: a quote opened in this row runs over 1 line break "
                              "before it closes, so those lines were read as one cell"}]


def test_quoted_cells_with_line_breaks_in_a_text_column_still_read(tmp_path: Path):
    raw = _csv(tmp_path / "t.csv", 'a,note,label\n1,"two\nlines",0\n2,x,1\n3,y,0\n')
    found = scan(raw)
    assert found.details["feature_columns"] == ["a"] and len(found.samples) == 3 and not found.skipped


# ------------------------------------------------ 2: numeric options checked at the boundary
@pytest.mark.parametrize("args, message", [
    (["--seed", "-1"], r"Invalid value for '--seed': `--seed` must be an integer in \[0, 18446744073709551615\]"),
    (["--seed", str(2**64)], "`--seed` must be an integer in"),
    (["--split", "0.5,0.6"], "Invalid value for '--split': `--split` must be three"),
    (["--split", "a,b,c"], "`--split` must be three numbers"),
    (["--image-size", "0x4"], "Invalid value for '--image-size': `--image-size` must be HEIGHTxWIDTH"),
    (["--image-size", "4"], "`--image-size` must be HEIGHTxWIDTH"),
    (["--n-jobs", "0"], "Invalid value for '--n-jobs': `--n-jobs` must be a non-zero integer"),
    (["--shard-size", "0", "--format", "hdf5"], "Invalid value for '--shard-size'"),
])
def test_cli_prepare_bad_numeric_option_is_a_usage_error_without_traceback(tmp_path: Path, args, message):
    raw = tmp_path / "raw"
    for c in "ab":
        (raw / c).mkdir(parents=True)
        np.save(raw / c / "s.npy", np.zeros(2, np.float32))
    result = CliRunner().invoke(main, ["prepare", str(raw), "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and re.search(message, error[0]), result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("options, error, message", [
    ({"seed": -1}, ArgumentError, r"`seed` must be an integer in \[0, 18446744073709551615\]. Received: seed=-1"),
    ({"seed": 1.5}, ArgumentError, "Received: seed=1.5"),
    ({"seed": True}, ArgumentError, "Received: seed=True"),
    ({"shard_size": 0, "format": "hdf5"}, ArgumentError, "`shard_size` must be a positive integer or None"),
    ({"shard_size": 2.5, "format": "hdf5"}, ArgumentError, "Received: shard_size=2.5"),
    ({"n_jobs": 1.0}, InputError, "`n_jobs` must be a non-zero integer"),
    ({"n_jobs": True}, InputError, "Received: n_jobs=True"),
    ({"image_size": (1.5, 2)}, InputError, r"`image_size` must be HEIGHTxWIDTH .* Received: image_size=\(1.5, 2\)"),
    ({"image_size": 5}, InputError, "Received: image_size=5"),
    ({"split": ("a", 0.1, 0.1)}, SplitError, "`split` must be a finite number"),
    ({"split": 0.8}, SplitError, "`split` must be three fractions"),
])
def test_prepare_api_checks_numeric_options_before_reading(tmp_path: Path, options, error, message):
    with pytest.raises(error, match=message):
        prepare(tmp_path / "not-read", tmp_path / "out", **options)


def test_stratified_split_and_convert_check_their_numbers(tmp_path: Path):
    with pytest.raises(ArgumentError, match="Received: seed=-1"):
        stratified_split(np.array([0, 1] * 5), (0.6, 0.2, 0.2), seed=-1)
    with pytest.raises(ArgumentError, match="Received: shard_size=0"):
        convert(tmp_path / "m.json", tmp_path / "o", to="hdf5", shard_size=0)


# ------------------------------------------------ 3: hand-edited, inconsistent manifests
@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    for c, count in (("a", 6), ("b", 6)):
        (raw / c).mkdir(parents=True)
        for k in range(count):
            np.save(raw / c / f"s{k}.npy", np.full(2, 10 * (c == "b") + k, np.float32))
    prepare(raw, tmp_path / "ds", split="0.5,0.25,0.25", n_jobs=1)
    return tmp_path / "ds" / "manifest.json"


def _edit(path: Path, change) -> None:
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(num_classes=5), "`num_classes` is 5 but `classes` lists 2"),
    (lambda d: d.update(num_samples=13), "`num_samples` is 13 but `labels` holds 12"),
    (lambda d: d["counts"]["train"].update(a=7), r"`counts.train\['a'\]` is 7 but partition and labels give 3"),
    (lambda d: d["counts"].pop("test"), "`counts` is .* but the partitions are"),
    (lambda d: d["counts"]["test"].pop("b"), r"`counts.test` is \{'a': 1\} but its classes are \['a', 'b'\]"),
    (lambda d: d["classes"].append("c"), r"`num_classes` is 2 but `classes` lists 3"),
])
def test_inconsistent_manifest_is_refused_by_every_loader_and_verify(prepared: Path, change, message):
    _edit(prepared, change)
    with pytest.raises(ManifestError, match="is inconsistent: " + message):
        Manifest.load(prepared)
    report = verify(prepared)
    assert not report.ok and re.search(message, report.problems[0].message)
    result = CliRunner().invoke(main, ["verify", str(prepared)])
    assert result.exit_code == 1 and result.output.startswith("Problem (manifest): ") and "FAILED" in result.output


def test_hdf5_shard_counts_must_agree(tmp_path: Path, prepared: Path):
    convert(prepared, tmp_path / "h5", to="hdf5")
    path = tmp_path / "h5" / "manifest.json"
    _edit(path, lambda d: d["storage"].update(num_shards=2))
    with pytest.raises(ManifestError, match="`storage.num_shards` is 2 but `storage.shards` lists 1"):
        Manifest.load(path)
    _edit(path, lambda d: (d["storage"].update(num_shards=1), d["storage"]["shards"][0].update(num_samples=3)))
    with pytest.raises(ManifestError, match=r"`storage.shards\[0\].num_samples` is 3 but its `ids` list 12"):
        Manifest.load(path)


def test_a_class_without_samples_and_an_empty_train_fail_verify(prepared: Path):
    assert verify(prepared).ok
    _edit(prepared, lambda d: (d["classes"].append("c"), d.update(num_classes=3),
                               [d["counts"][p].update(c=0) for p in d["counts"]]))
    Manifest.load(prepared)  # consistent, so loaders accept it (an in-memory manifest may have such a class)
    report = verify(prepared)
    assert [(p.kind, p.message.split(";")[0]) for p in report.problems] == [
        ("label", "1 class has no sample in any partition ('c')")]

    def empty_train(d):
        d["partition"]["validation"] += d["partition"]["train"]
        d["partition"]["train"] = []
        d["counts"] = {p: {c: sum(d["labels"][i] == k for i in ids) for k, c in enumerate(d["classes"])}
                       for p, ids in d["partition"].items()}
        d["classes"].pop()
        d.update(num_classes=2)
        for per in d["counts"].values():
            per.pop("c")

    _edit(prepared, empty_train)
    report = verify(prepared)
    assert [(p.kind, p.message.split(";")[0]) for p in report.problems] == [
        ("partition", "the train partition is empty")]
    result = CliRunner().invoke(main, ["verify", str(prepared), "--quick"])
    assert result.exit_code == 1 and "Problem (partition): the train partition is empty" in result.output


# ------------------------------------------------ 4: the README states the split rule the code follows
def test_readme_split_totals_are_those_of_class_sizes():
    text = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert "within one sample of" not in text
    assert "6 + 6 images with `0.8,0.1,0.1` give 4/1/1 per class, 8/2/2 in all against 9.6/1.2/1.2" in text
    assert "10 classes of 5 give 30/10/10 against 40/5/5" in text
    assert class_sizes([6, 6], (0.8, 0.1, 0.1)).tolist() == [[4, 1, 1], [4, 1, 1]]
    assert class_sizes([5] * 10, (0.8, 0.1, 0.1)).sum(axis=0).tolist() == [30, 10, 10]
    assert class_sizes([1000, 3], (0.9, 0.05, 0.05))[1].tolist() == [1, 1, 1]


# ------------------------------------------------ 5: odd .npy inputs are named for what they are
def test_npy_of_another_dtype_is_kind_dtype_and_a_0d_array_keeps_shape_0d(tmp_path: Path):
    raw = tmp_path / "raw"
    for c in "ab":
        (raw / c).mkdir(parents=True)
        for k in range(6):
            np.save(raw / c / f"s{k}.npy", np.full(1, k + 10 * (c == "b"), np.float32))
    np.save(raw / "a" / "wide.npy", np.full(1, 99, np.float64))
    np.save(raw / "a" / "wide2.npy", np.full(2, 99, np.float64))  # shape and dtype differ: the shape is named
    np.save(raw / "a" / "scalar.npy", np.float32(7))
    m = prepare(raw, tmp_path / "out", split="0.5,0.25,0.25", n_jobs=1).manifest
    skipped = {Path(s["path"]).name: (s["kind"], s["reason"]) for s in m.skipped}
    assert skipped == {
        "wide.npy": ("dtype", "array is float64 of shape (1,), the dataset's (most common) is float32 of shape (1,)"),
        "wide2.npy": ("shape", "array is float64 of shape (2,), the dataset's (most common) is float32 of shape (1,)"),
        "scalar.npy": ("shape", "array is float32 of shape (), the dataset's (most common) is float32 of shape (1,)"),
    }
    assert m.num_samples == 12


def test_load_npy_keeps_a_0d_array_0d(tmp_path: Path):
    np.save(tmp_path / "s.npy", np.float32(7))
    arr = load_npy(tmp_path / "s.npy")
    assert arr.shape == () and arr.dtype == np.float32 and arr == 7


# ------------------------------------------------ 5: an option of one layout given for another is refused
def _npy_folder(raw: Path) -> Path:
    for c in "ab":
        (raw / c).mkdir(parents=True)
        for k in range(4):
            np.save(raw / c / f"s{k}.npy", np.full(2, k + 10 * (c == "b"), np.float32))
    return raw


@pytest.mark.parametrize("options, message", [
    ({"label_column": "label"}, r"`label_column` applies to CSV input; .* is a folder of .npy files .* Received: "
                                r"label_column='label'$"),
    ({"id_column": "id", "missing": "drop-rows"}, r"`id_column`, `missing` apply to CSV input"),
    ({"background": "black"}, r"`background` applies to images; .* is npy input"),
])
def test_options_of_another_layout_are_refused_not_ignored(tmp_path: Path, options, message):
    with pytest.raises(InputError, match=message):
        prepare(_npy_folder(tmp_path / "raw"), tmp_path / "out", n_jobs=1, **options)


def test_cli_label_column_with_npy_input_is_one_line(tmp_path: Path):
    raw = _npy_folder(tmp_path / "raw")
    result = CliRunner().invoke(main, ["prepare", str(raw), "--out", str(tmp_path / "out"), "--label-column", "y"])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "`--label-column` applies to CSV input" in result.output and "Received: --label-column y" in result.output
    result = CliRunner().invoke(main, ["prepare", str(raw), "--out", str(tmp_path / "out"), "--n-jobs", "1"])
    assert result.exit_code == 0, result.output  # the defaults of the CSV and image options are not "given"


# ------------------------------------------------ 5: --overwrite never deletes a user's file inside kpipe's folders
@pytest.mark.parametrize("format, folder, name", [
    ("npy", "data", "notes.txt"), ("npy", "data", "mine.npy"), ("npy", "data", "sub"),
    ("hdf5", "shards", "extra.h5"), ("npy", "shards", "shard-00009.h5"),
])
def test_overwrite_refuses_files_kpipe_did_not_write_inside_its_folders(tmp_path: Path, format, folder, name):
    raw = _npy_folder(tmp_path / "raw")
    out = tmp_path / "out"
    prepare(raw, out, n_jobs=1, format=format)
    prepare(raw, out, n_jobs=1, format=format, overwrite=True)  # kpipe's own dataset: replaced
    (out / folder).mkdir(exist_ok=True)
    if name == "sub":
        (out / folder / name).mkdir()
    else:
        (out / folder / name).write_text("mine")
    with pytest.raises(OutputExistsError, match=rf"not a dataset written by kpipe \(it holds {folder}/{name}, which "
                                                r"kpipe did not write\)"):
        prepare(raw, out, n_jobs=1, format=format, overwrite=True)
    assert (out / folder / name).exists()
    result = CliRunner().invoke(main, ["prepare", str(raw), "--out", str(out), "--format", format, "--overwrite"])
    assert result.exit_code == 1 and f"{folder}/{name}" in result.output and result.output.count("\n") == 1


def test_overwrite_with_an_unreadable_manifest_tells_files_by_name(tmp_path: Path):
    raw = _npy_folder(tmp_path / "raw")
    out = tmp_path / "out"
    prepare(raw, out, n_jobs=1)
    (out / "manifest.json").write_text("{not json")
    prepare(raw, out, n_jobs=1, overwrite=True)  # only kpipe's names in data/
    (out / "manifest.json").write_text("{not json")
    (out / "data" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="data/notes.txt"):
        prepare(raw, out, n_jobs=1, overwrite=True)


# ------------------------------------------------ a JSON object naming a key twice: refused, never "the last wins"
def test_json_files_naming_a_key_twice_are_refused(tmp_path: Path):
    from kpipe.training.config import load_config_file
    from kpipe.weights import read_weights_file

    raw = tmp_path / "raw"
    for c in ("a", "b"):
        (raw / c).mkdir(parents=True)
        for i in range(5):
            np.save(raw / c / f"{c}{i}.npy", np.full(3, i, np.float32))
    m = prepare(raw, tmp_path / "p", n_jobs=1).manifest
    text = m.path.read_text()
    first = next(iter(m.labels))
    edited = text.replace(f'"{first}": {m.labels[first]}', f'"{first}": 0, "{first}": 1', 1)
    assert edited != text
    m.path.write_text(edited)
    with pytest.raises(ManifestError, match=f"the key '{first}' appears twice"):
        Manifest.load(m.path)
    (tmp_path / "w.json").write_text('{"a0": 1.0, "a0": 2.0}')
    with pytest.raises(InputError, match="the key 'a0' appears twice"):
        read_weights_file(tmp_path / "w.json")
    (tmp_path / "c.json").write_text('{"epochs": 1, "epochs": 50}')
    with pytest.raises(ArgumentError, match="the key 'epochs' appears twice"):
        load_config_file(tmp_path / "c.json")
