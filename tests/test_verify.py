"""`kpipe verify` and `kpipe.verify`: a dataset check before training (issue 9)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import make_image_folder, make_indexed_npy_folder

from kpipe.cli import main
from kpipe.errors import ManifestError, StoreError
from kpipe.manifest import Manifest
from kpipe.prepare import prepare
from kpipe.verify import check_files, sample_digest, verify


@pytest.fixture
def dataset(tmp_path: Path) -> Manifest:
    raw = make_indexed_npy_folder(tmp_path / "raw", {"a": 10, "b": 10})
    return prepare(raw, tmp_path / "ds", n_jobs=1).manifest


@pytest.fixture
def h5_dataset(tmp_path: Path) -> Manifest:
    raw = make_indexed_npy_folder(tmp_path / "raw_h5", {"a": 10, "b": 10})
    return prepare(raw, tmp_path / "h5", format="hdf5", shard_size=8, n_jobs=1).manifest


def test_sample_digest_is_layout_and_byte_order_independent():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert sample_digest(a) == sample_digest(a.astype(">f4")) == sample_digest(np.asfortranarray(a))
    assert len(sample_digest(a)) == 32
    assert sample_digest(a) != sample_digest(a.reshape(4, 3))  # the shape is part of it
    assert sample_digest(a) != sample_digest(a.astype(np.float64))  # and the dtype
    b = a.copy()
    b[1, 1] += 1
    assert sample_digest(a) != sample_digest(b)


def test_a_sound_dataset_passes(dataset: Manifest, h5_dataset: Manifest):
    for m, files in ((dataset, 20), (h5_dataset, 3)):
        report = verify(m.path)
        assert report.ok, report.problems
        assert report.num_files == files and report.num_read == 20 and report.num_checksums == 20
        assert report.summary().startswith("OK: 20 samples in 2 classes (train 16, validation 2, test 2); ")
        assert check_files(m.path, ["train", "validation", "test"]) == files
    assert verify(h5_dataset.path).num_shard_hashes == 3


def test_missing_file_is_found(dataset: Manifest):
    sid = dataset.partition["test"][0]
    (dataset.root / f"{sid}.npy").unlink()
    with pytest.raises(StoreError, match=rf"Sample '{sid}' \(partition 'test'\): file .*{sid}.npy does not exist"):
        check_files(dataset.path, ["train", "validation", "test"])
    assert check_files(dataset.path, ["train"]) == 16  # a partition without the file passes
    report = verify(dataset.path)
    assert not report.ok
    [problem] = report.problems
    assert problem.kind == "file" and problem.ids == [sid] and "(test)" in problem.message
    assert report.num_read == 19


def test_truncated_file_and_wrong_dtype_are_found(dataset: Manifest):
    first, second = dataset.partition["train"][:2]
    path = dataset.root / f"{first}.npy"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(StoreError, match="truncated"):
        check_files(dataset)
    np.save(dataset.root / f"{second}.npy", np.zeros((4, 4, 1), np.int32))  # same size, another dtype
    report = verify(dataset.path)
    messages = " ".join(p.message for p in report.problems)
    assert "truncated" in messages and "int32[4, 4, 1], the manifest says float32[4, 4, 1]" in messages


def test_leakage_across_partitions_is_reported_with_ids(dataset: Manifest):
    train_id, test_id = dataset.partition["train"][0], dataset.partition["test"][0]
    shutil.copyfile(dataset.root / f"{train_id}.npy", dataset.root / f"{test_id}.npy")
    dataset.sample_checksums = None  # as a dataset from elsewhere, without checksums
    dataset.save()
    report = verify(dataset.path)
    assert [p.kind for p in report.problems] == ["leakage"]
    assert report.leakage == [{"train": [train_id], "test": [test_id]}]
    assert f"train {train_id!r} = test {test_id!r}" in report.problems[0].message
    assert report.summary().startswith("FAILED: 1 problem (1 leakage); 20 samples")


def test_changed_sample_fails_its_checksum(dataset: Manifest):
    sid = dataset.partition["validation"][0]
    arr = np.load(dataset.root / f"{sid}.npy")
    arr[0, 0, 0] += 1
    np.save(dataset.root / f"{sid}.npy", arr)  # same size, same header
    check_files(dataset)  # the cheap check cannot see it
    report = verify(dataset.path)
    assert [(p.kind, p.ids) for p in report.problems] == [("checksum", [sid])]


def test_nonfinite_values_are_counted(tmp_path: Path):
    root = tmp_path / "ds"
    (root / "data").mkdir(parents=True)
    labels = {}
    for k in range(6):
        arr = np.full((3,), float(k), np.float32)
        if k in (1, 4):
            arr[2] = np.nan if k == 1 else np.inf
        np.save(root / "data" / f"s{k}.npy", arr)
        labels[f"s{k}"] = k % 2
    m = Manifest(classes=["x", "y"], labels=labels, partition={"train": ["s0", "s1", "s2", "s3"], "test": ["s4", "s5"]},
                 sample_shape=(3,), sample_dtype="float32")
    m.save(root)
    report = verify(root)
    assert report.nonfinite_ids == ["s1", "s4"]
    assert [p.kind for p in report.problems] == ["nonfinite"]


def test_manifest_structure_problems_are_all_listed(dataset: Manifest):
    d = json.loads(dataset.path.read_text())
    ids = list(d["labels"])
    d["labels"][ids[0]] = 1.5  # would be read as class 1 by a lenient loader
    d["labels"][ids[1]] = True
    d["labels"][ids[2]] = 7
    d["partition"]["test"].append(d["partition"]["train"][0])  # in two partitions
    orphan = d["partition"]["validation"].pop()  # in none
    d["partition"]["test"].append("ghost")  # no label
    dataset.path.write_text(json.dumps(d))
    report = verify(dataset.path)
    kinds = [p.kind for p in report.problems]
    assert kinds == ["label", "partition", "partition", "partition"]
    assert report.problems[0].ids == ids[:3] and "not an integer class index in [0, 2)" in report.problems[0].message
    text = " ".join(p.message for p in report.problems)
    assert "listed twice" in text and "'ghost'" in text and f"in no partition (e.g. {orphan!r})" in text


def test_unreadable_manifest_is_a_problem_not_a_crash(tmp_path: Path):
    report = verify(tmp_path / "nowhere")
    assert not report.ok and report.problems[0].kind == "manifest" and "no manifest" in report.problems[0].message
    (tmp_path / "manifest.json").write_text("{not json")
    assert "cannot read" in verify(tmp_path).problems[0].message
    with pytest.raises(ManifestError):
        check_files(tmp_path)


def test_hdf5_corruption_and_permuted_ids_are_found(h5_dataset: Manifest):
    shards = h5_dataset.storage["shards"]
    first = h5_dataset.root / shards[0]["file"]
    data = bytearray(first.read_bytes())
    data[-64:] = b"\xff" * 64  # 64 overwritten bytes, same size
    first.write_bytes(bytes(data))
    check_files(h5_dataset)  # sizes still right
    report = verify(h5_dataset.path)
    assert any(p.kind == "file" and "sha256" in p.message for p in report.problems)
    # A manifest whose shard ID list is permuted (the shard's own `ids` disagree): rows would be misread.
    d = json.loads(h5_dataset.path.read_text())
    d["storage"]["shards"][1]["ids"][:2] = d["storage"]["shards"][1]["ids"][1::-1]
    d["storage"]["shards"][1].pop("sha256")
    h5_dataset.path.write_text(json.dumps(d))
    report = verify(h5_dataset.path)
    assert any("lists other IDs than the manifest (row 0" in p.message for p in report.problems)


def test_hdf5_missing_shard(h5_dataset: Manifest):
    last = h5_dataset.storage["shards"][-1]
    (h5_dataset.root / last["file"]).unlink()
    part_of = {sid: p for p, ids in h5_dataset.partition.items() for sid in ids}
    touched = {part_of[sid] for sid in last["ids"]}
    name = "test" if "test" in touched else min(touched)
    with pytest.raises(StoreError, match=rf"Shard .*shard-00002.h5 \(holding sample .* of partition '{name}'\) "
                                         "does not exist"):
        check_files(h5_dataset, [name])
    for other in sorted(set(h5_dataset.partition) - touched):
        check_files(h5_dataset, [other])  # partitions with no sample in the lost shard are fine
    report = verify(h5_dataset.path)
    assert [p.kind for p in report.problems] == ["file"] and report.num_read == 20 - last["num_samples"]


def test_prepared_duplicates_do_not_leak(tmp_path: Path):
    raw = make_image_folder(tmp_path / "raw", {"a": 12, "b": 12})
    for k in range(4):
        (raw / "a" / f"dup{k}.png").write_bytes((raw / "a" / "img_000.png").read_bytes())
    m = prepare(raw, tmp_path / "out", n_jobs=1).manifest
    report = verify(m.path)
    assert report.ok and report.duplicate_groups == 1 and report.leakage == []


# ------------------------------------------------------------------ CLI
def test_cli_verify_exit_codes_and_json(dataset: Manifest):
    runner = CliRunner()
    result = runner.invoke(main, ["verify", str(dataset.path)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith("OK: 20 samples in 2 classes")
    sid = dataset.partition["test"][0]
    (dataset.root / f"{sid}.npy").unlink()
    result = runner.invoke(main, ["verify", str(dataset.path.parent)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("Problem (file): 1 sample file (test) is wrong: e.g. ") and f"[IDs: {sid}]" in lines[0]
    assert lines[-1].startswith("FAILED: 1 problem (1 file)")
    result = runner.invoke(main, ["verify", str(dataset.path), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)  # one JSON object, nothing else
    assert report["ok"] is False and report["problems"][0]["ids"] == [sid]
    result = runner.invoke(main, ["verify", str(dataset.path), "--quick", "--json"])
    assert result.exit_code == 1 and json.loads(result.stdout)["num_read"] == 0


def test_cli_verify_missing_manifest_json(tmp_path: Path):
    result = CliRunner().invoke(main, ["verify", str(tmp_path / "nope.json"), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["problems"][0]["kind"] == "manifest"
    result = CliRunner().invoke(main, ["verify", str(tmp_path / "nope.json")])
    assert result.exit_code == 1 and "Traceback" not in result.output and "no manifest at" in result.output


def test_cli_prepare_policy_options(tmp_path: Path):
    raw = make_indexed_npy_folder(tmp_path / "raw", {"a": 8, "b": 8})
    bad = np.load(raw / "a" / "s_000.npy")
    bad[0] = np.inf
    np.save(raw / "a" / "s_000.npy", bad)
    runner = CliRunner()
    result = runner.invoke(main, ["prepare", str(raw), "--out", str(tmp_path / "o"), "--n-jobs", "1",
                                  "--nonfinite", "error"])
    assert result.exit_code == 1 and "--nonfinite error stops here" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(main, ["prepare", str(raw), "--out", str(tmp_path / "o"), "--n-jobs", "1",
                                  "--duplicates", "drop", "--small-classes", "warn"])
    assert result.exit_code == 0, result.output
    assert "1 with NaN/Inf skipped (--nonfinite skip)" in result.output
    result = runner.invoke(main, ["prepare", str(raw), "--out", str(tmp_path / "o2"), "--missing", "fill=x"])
    assert result.exit_code == 2 and "`missing` must be" in result.output
    result = runner.invoke(main, ["prepare", str(raw), "--out", str(tmp_path / "o3"), "--dtype", "uint8"])
    assert result.exit_code == 1 and "`--dtype` applies to images; " in result.output


def test_in_memory_manifest_without_path_is_a_problem():
    m = Manifest(classes=["x", "y"], labels={"a": 0, "b": 1}, partition={"train": ["a", "b"]}, sample_shape=(1,),
                 sample_dtype="uint8")
    report = verify(m)
    assert not report.ok and "no path" in report.problems[0].message


def test_a_storage_root_linked_out_of_the_dataset_is_a_problem_not_an_error(dataset: Manifest, tmp_path: Path):
    root = dataset.path.parent
    (root / "data").rename(tmp_path / "outside")
    (root / "data").symlink_to(tmp_path / "outside")
    report = verify(dataset.path)
    assert not report.ok and [p.kind for p in report.problems] == ["manifest"]
    assert "outside the dataset folder" in report.problems[0].message
    out = CliRunner().invoke(main, ["verify", str(dataset.path)])
    assert out.exit_code == 1 and out.output.startswith("Problem (manifest): ") and "FAILED: 1 problem" in out.output
