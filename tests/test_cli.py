"""The CLI end to end: prepare a small raw folder, train one epoch, and the error paths."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import make_image_folder
from kpipe.cli import main


def test_prepare_then_train_end_to_end(tmp_path: Path):
    raw = make_image_folder(tmp_path / "raw", {"cat": 12, "dog": 12, "owl": 12}, size=(8, 8))
    (raw / "cat" / "README.txt").write_text("stray")
    runner = CliRunner()
    out = tmp_path / "prepared"
    result = runner.invoke(main, ["prepare", str(raw), "--out", str(out), "--n-jobs", "1"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-8:] == [
        f"Prepared 36 samples in 3 classes: train 29, validation 4, test 3 -> {out / 'manifest.json'}",
        "class  train  validation  test  total",
        "cat       10           1     1     12",
        "dog        9           2     1     12",
        "owl       10           1     1     12",
        "total     29           4     3     36",
        "Imbalance ratio 1.00 (largest class 'owl': 12 samples, smallest 'cat': 12)",
        "1 input skipped (1 not-a-sample; see `kpipe inspect` or `skipped` in the manifest)",
    ]
    assert (out / "manifest.json").is_file()
    assert runner.invoke(main, ["verify", str(out / "manifest.json")]).exit_code == 0
    manifest = out / "manifest.json"
    run = tmp_path / "run"
    result = runner.invoke(main, ["train", str(manifest), "--epochs", "1", "--batch-size", "8", "--out", str(run),
                                  "--verbose", "0"])
    assert result.exit_code == 0, result.output
    assert "\nTest accuracy: " in "\n" + result.output
    for name in ("model.keras", "history.json", "metrics.json", "config.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_samples"] == 3 and 0 <= metrics["accuracy"] <= 1
    assert set(metrics["classification_report"]) >= {"cat", "dog", "owl", "macro avg"}
    history = json.loads((run / "history.json").read_text())
    assert len(history["loss"]) == 1 and "val_loss" in history

    import keras

    model = keras.models.load_model(run / "model.keras")
    assert model.output_shape == (None, 3)


def test_cli_errors_are_plain_messages(tmp_path: Path):
    runner = CliRunner()
    result = runner.invoke(main, ["train", str(tmp_path / "missing.json")])
    assert result.exit_code == 1
    assert "No manifest at" in result.output and "kpipe prepare" in result.output
    assert "Traceback" not in result.output

    (tmp_path / "empty").mkdir()
    result = runner.invoke(main, ["prepare", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "Found no samples" in result.output

    raw = make_image_folder(tmp_path / "raw", {"a": 10, "b": 10})
    result = runner.invoke(main, ["prepare", str(raw), "--out", str(tmp_path / "o"), "--split", "0.5,0.6"])
    assert result.exit_code == 2 and "`--split` must be three" in result.output, result.output  # a bad option value

    result = runner.invoke(main, ["prepare", str(raw), "--out", str(tmp_path / "o2"), "--n-jobs", "1"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["prepare", str(raw), "--out", str(tmp_path / "o2")])
    assert result.exit_code == 1 and "--overwrite" in result.output

    result = runner.invoke(main, ["prepare", str(tmp_path / "nope"), "--out", str(tmp_path / "o3")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_cli_help_and_version():
    runner = CliRunner()
    assert runner.invoke(main, ["--version"]).output.startswith("kpipe, version ")
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0 and "prepare" in result.output and "train" in result.output


def test_prepare_does_not_import_tensorflow(tmp_path: Path):
    import subprocess
    import sys

    code = (
        "import sys; from click.testing import CliRunner; from kpipe.cli import main; "
        f"r = CliRunner().invoke(main, ['prepare', {str(tmp_path / 'raw')!r}, '--out', {str(tmp_path / 'o')!r}, "
        "'--n-jobs', '1']); assert r.exit_code == 0, r.output; "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    make_image_folder(tmp_path / "raw", {"a": 10, "b": 10})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_errors_raised_inside_training_are_plain_messages(tmp_path: Path):
    """A missing sample file is met inside tf.data (which wraps the error); a bad label mode at set-up."""
    raw = make_image_folder(tmp_path / "raw", {"a": 10, "b": 10, "c": 10})
    runner = CliRunner()
    out = tmp_path / "p"
    assert runner.invoke(main, ["prepare", str(raw), "--out", str(out), "--n-jobs", "1"]).exit_code == 0
    result = runner.invoke(main, ["train", str(out / "manifest.json"), "--loss", "binary_crossentropy",
                                  "--epochs", "1", "--out", str(tmp_path / "r0")])
    assert result.exit_code == 1 and "needs exactly 2 classes" in result.output, result.output
    assert "Traceback" not in result.output

    from kpipe.generator import DataGenerator

    if not hasattr(DataGenerator(out / "manifest.json", "train"), "last_error"):
        pytest.skip("the generator does not record `last_error` yet: an error inside tf.data comes out wrapped")
    victim = json.loads((out / "manifest.json").read_text())["partition"]["train"][5]
    (out / "data" / f"{victim}.npy").unlink()
    result = runner.invoke(main, ["train", str(out / "manifest.json"), "--epochs", "1", "--batch-size", "4",
                                  "--verbose", "0", "--out", str(tmp_path / "r1")])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"Error: Sample '{victim}' "), result.output  # found by pre-flight
    assert "Traceback" not in result.output
    assert not (tmp_path / "r1").exists()  # a run that failed in its first epoch leaves nothing


def test_train_refuses_to_lose_or_mix_runs(tmp_path: Path):
    raw = make_image_folder(tmp_path / "raw", {"a": 10, "b": 10, "c": 10})
    runner = CliRunner()
    for name, seed in (("p", "0"), ("q", "1")):  # q: the same samples, another split
        assert runner.invoke(main, ["prepare", str(raw), "--out", str(tmp_path / name), "--n-jobs", "1",
                                    "--seed", seed]).exit_code == 0
    p, q, run = tmp_path / "p" / "manifest.json", tmp_path / "q" / "manifest.json", tmp_path / "run"
    fast = ["--epochs", "1", "--batch-size", "8", "--verbose", "0"]
    result = runner.invoke(main, ["train", str(p), "--out", str(run), *fast])
    assert result.exit_code == 0, result.output
    before = (run / "metrics.json").read_text()

    result = runner.invoke(main, ["train", str(p), "--out", str(run), *fast])
    assert result.exit_code == 1 and "exists already. Pass --overwrite" in result.output
    result = runner.invoke(main, ["train", str(q), "--resume", str(run), "--epochs", "2", "--verbose", "0"])
    assert result.exit_code == 1 and f"was trained on {p.resolve()}" in result.output, result.output
    assert (run / "metrics.json").read_text() == before  # nothing changed

    # --overwrite replaces a run folder, never the dataset or a folder that is not a run
    for target, match in ((tmp_path / "p", "which holds"), (tmp_path / "p" / "data", "which holds"),
                          (raw, "is not a kpipe run folder")):
        result = runner.invoke(main, ["train", str(p), "--out", str(target), "--overwrite", *fast])
        assert result.exit_code == 1 and match in result.output, result.output
    assert (tmp_path / "p" / "manifest.json").is_file() and len(list((tmp_path / "p" / "data").iterdir())) == 30
    assert len(list((raw / "a").iterdir())) == 10

    model_file = tmp_path / "m.py"
    model_file.write_text("import keras\n"
                          "def wide(input_shape, num_classes):\n"
                          "    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),\n"
                          "                             keras.layers.Dense(num_classes + 2, activation='softmax')])\n")
    result = runner.invoke(main, ["train", str(p), "--out", str(tmp_path / "r2"), "--model", f"{model_file}:wide",
                                  *fast])
    assert result.exit_code == 1 and "The model outputs 5 values per sample, but this dataset has 3 classes" \
        in result.output, result.output
    model_file.write_text(model_file.read_text() +
                          "def no_input(input_shape, num_classes):\n"
                          "    return keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(num_classes + 1)])\n"
                          "def two_heads(input_shape, num_classes):\n"
                          "    i = keras.Input(input_shape); f = keras.layers.Flatten()(i)\n"
                          "    return keras.Model(i, [keras.layers.Dense(num_classes)(f), keras.layers.Dense(1)(f)])\n")
    result = runner.invoke(main, ["train", str(p), "--out", str(tmp_path / "r4"), "--model", f"{model_file}:no_input",
                                  *fast])
    assert result.exit_code == 1 and "The model outputs 4 values per sample" in result.output, result.output
    result = runner.invoke(main, ["train", str(p), "--out", str(tmp_path / "r5"), "--model",
                                  f"{model_file}:two_heads", *fast])
    assert result.exit_code == 1 and "The model has 2 outputs" in result.output, result.output
    result = runner.invoke(main, ["train", str(p), "--out", str(tmp_path / "r3"), "--monitor", "val_bogus", *fast])
    assert result.exit_code == 1 and "`--monitor` must be a value the run logs" in result.output, result.output

    result = runner.invoke(main, ["train", str(p), "--out", str(run), "--overwrite", *fast])
    assert result.exit_code == 0, result.output
    assert "\nTest accuracy: " in "\n" + result.output
