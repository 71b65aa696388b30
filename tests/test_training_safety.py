"""A run folder or config file from someone else, a full disk, a mid-epoch error, start-up (issues 8 and 10)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import make_pattern_folder
from kpipe.cli import main

FAST = ["--epochs", "1", "--batch-size", "8", "--verbose", "0", "--no-tensorboard"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    from kpipe.prepare import prepare

    root = tmp_path_factory.mktemp("safety")
    return prepare(make_pattern_folder(root / "raw", per_class=12), root / "prepared", split="0.6,0.2,0.2",
                   n_jobs=1).manifest.path


def test_overwrite_needs_kpipe_run_marker_also_from_a_config_file(manifest, tmp_path):
    """A folder that merely looks like a run (config.json, checkpoint/) is never deleted."""
    foreign = tmp_path / "model_from_elsewhere"
    (foreign / "checkpoint").mkdir(parents=True)
    (foreign / "config.json").write_text("{}")
    (foreign / "precious.txt").write_text("keep me")
    (tmp_path / "c.toml").write_text(f'out = "{foreign}"\noverwrite = true\n')
    for args in (["--out", str(foreign), "--overwrite"], ["--config", str(tmp_path / "c.toml")]):
        result = CliRunner().invoke(main, ["train", str(manifest), *args, *FAST])
        assert result.exit_code == 1, result.output
        assert "is not a kpipe run folder" in result.output and len(result.output.strip().splitlines()) == 1
        assert (foreign / "precious.txt").read_text() == "keep me"

    run = tmp_path / "run"  # a folder kpipe made carries the marker, and --overwrite replaces it
    assert CliRunner().invoke(main, ["train", str(manifest), "--out", str(run), *FAST]).exit_code == 0
    assert json.loads((run / "kpipe-run.json").read_text())["kind"] == "kpipe-run"
    (run / "stale.txt").write_text("old")
    result = CliRunner().invoke(main, ["train", str(manifest), "--out", str(run), "--overwrite", *FAST])
    assert result.exit_code == 0, result.output
    assert not (run / "stale.txt").exists()


def test_resume_does_not_run_code_named_by_the_run_folder(manifest, tmp_path):
    run = tmp_path / "run"
    assert CliRunner().invoke(main, ["train", str(manifest), "--out", str(run), *FAST]).exit_code == 0
    evil = tmp_path / "evil.py"
    witness = tmp_path / "ran.txt"
    evil.write_text(f"open({str(witness)!r}, 'w').write('ran')\n"
                    "def build(input_shape, num_classes):\n    return None\n")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(config | {"model": f"{evil}:build"}))
    result = CliRunner().invoke(main, ["train", str(manifest), "--resume", str(run), "--epochs", "2"])
    assert result.exit_code == 1, result.output
    assert f"pass --model {evil}:build on the command line" in result.output
    assert not witness.exists()


def test_disk_full_during_training_is_one_line(manifest, tmp_path):
    """The run folder on a 200 KiB tmpfs: the first checkpoint does not fit."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        result = CliRunner().invoke(main, ["train", str(manifest), "--out", str(small / "run"), *FAST])
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: No space left on device writing "), result.output
        assert "best.weights.h5" in lines[0] or "last.weights.h5" in lines[0]
        assert not (small / "run").exists()  # no epoch ended: nothing is kept
    finally:
        subprocess.run(["umount", "-l", str(small)], check=True)  # lazy: a failed h5py save may keep its file open


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    code = "import sys; from kpipe.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)


def test_tensorflow_start_up_lines_are_filtered_but_real_errors_show(manifest, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = _cli("train", str(manifest), "--out", str(tmp_path / "run"), *FAST, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # no absl / C++ start-up lines
    fake = tmp_path / "fake"
    (fake / "tensorflow").mkdir(parents=True)
    (fake / "tensorflow" / "__init__.py").write_text("raise ImportError('tensorflow is broken here')\n")
    result = _cli("train", str(manifest), "--out", str(tmp_path / "run2"), *FAST,
                  env=env | {"PYTHONPATH": str(fake), "KERAS_BACKEND": "tensorflow"})
    assert result.returncode != 0 and "tensorflow is broken here" in result.stderr, result.stderr


def test_mid_epoch_error_is_one_line_without_tensorflow_noise(manifest, tmp_path):
    from kpipe.generator import DataGenerator

    assert hasattr(DataGenerator(manifest, "train"), "last_error")
    copy = tmp_path / "prepared"
    subprocess.run(["cp", "-r", str(manifest.parent), str(copy)], check=True)
    victim = json.loads((copy / "manifest.json").read_text())["partition"]["train"][20]
    path = copy / "data" / f"{victim}.npy"
    path.write_bytes(b"\0" * path.stat().st_size)  # right size (the pre-flight passes), unreadable content
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = _cli("train", str(copy / "manifest.json"), "--out", str(tmp_path / "run"), *FAST, env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith(f"Error: Sample '{victim}': file ") and "not a readable .npy file" in result.stderr


def test_a_missing_test_file_is_found_before_training(manifest, tmp_path):
    """Issue 9: the pre-flight stats every file of every partition, so a missing test file stops the run before
    epoch 1 (it used to surface at the final evaluation, leaving a run without metrics.json)."""
    copy = tmp_path / "prepared"
    subprocess.run(["cp", "-r", str(manifest.parent), str(copy)], check=True)
    victim = json.loads((copy / "manifest.json").read_text())["partition"]["test"][0]
    (copy / "data" / f"{victim}.npy").unlink()
    result = CliRunner().invoke(main, ["train", str(copy / "manifest.json"), "--out", str(tmp_path / "run"), *FAST])
    assert result.exit_code == 1, result.output
    assert victim in result.output and "test" in result.output and "Traceback" not in result.output
    assert "tensorflow" not in result.output.lower()
    assert not (tmp_path / "run").exists()


def test_arguments_and_manifest_are_checked_before_tensorflow_starts(manifest, tmp_path):
    code = (
        "import sys, warnings; from click.testing import CliRunner; from kpipe.cli import main; "
        "before = (warnings.formatwarning, warnings.showwarning); "
        f"r = CliRunner().invoke(main, ['train', {str(manifest)!r}, '--monitor', 'val_bogus']); "
        "print(r.exit_code, 'tensorflow' in sys.modules, 'keras' in sys.modules, "
        "before == (warnings.formatwarning, warnings.showwarning)); print(r.output)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("1 False False True"), out.stdout  # nothing changed outside the command
    assert "`--monitor` must be a value the run logs" in out.stdout
    code = ("import sys, kpipe; "
            "print(sorted(m for m in ('sklearn', 'keras', 'tensorflow', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
