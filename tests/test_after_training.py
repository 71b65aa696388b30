"""After training: ``kpipe evaluate``, ``kpipe predict``, ``kpipe inspect``, ``--json`` and the figures (issue 12)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

keras = pytest.importorskip("keras")

from helpers import make_image_folder, make_pattern_csv, make_pattern_images, png_is_drawn, tiny_model  # noqa: E402
from kpipe.cli import main  # noqa: E402
from kpipe.errors import KpipeError  # noqa: E402
from kpipe.manifest import load_manifest  # noqa: E402
from kpipe.prepare import prepare  # noqa: E402
from kpipe.storage import open_store  # noqa: E402
from kpipe.training import TrainConfig, train  # noqa: E402

FAST = dict(epochs=4, batch_size=16, learning_rate=0.01, verbose=0, tensorboard=False)


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("after")
    raw = make_pattern_images(root / "raw")
    (raw / "c0" / "notes.txt").write_text("not an image")
    manifest = prepare(raw, root / "prepared", split="0.6,0.2,0.2", n_jobs=1).manifest.path
    result = train(manifest, TrainConfig(**FAST), out=root / "run", model=tiny_model)
    return root, manifest, result


# ----------------------------------------------------------------- evaluate
class RemoveAtEnd(keras.callbacks.Callback):
    """Moves a file away at the last epoch's end (after pre-flight), so that the final evaluation fails."""

    def __init__(self, path: Path, epochs: int):
        super().__init__()
        self.path, self.epochs = path, epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epochs - 1:
            self.path.rename(self.path.with_suffix(".away"))


def test_evaluate_redoes_a_failed_final_evaluation(image_run, tmp_path):
    root, manifest, _ = image_run
    copy = tmp_path / "prepared"
    shutil.copytree(manifest.parent, copy)
    victim = copy / "data" / f"{load_manifest(copy / 'manifest.json').ids('test')[0]}.npy"
    with pytest.raises(KpipeError, match=r"is saved, but the final evaluation on the test partition failed: .*"
                                         r"run `kpipe evaluate "):
        train(copy / "manifest.json", TrainConfig(**FAST), out=tmp_path / "run", model=tiny_model,
              callbacks=[RemoveAtEnd(victim, FAST["epochs"])])
    run = tmp_path / "run"
    assert (run / "model.keras").is_file() and (run / "curves.png").is_file() and not (run / "metrics.json").exists()
    resumed = invoke("train", "--resume", run, "--verbose", "0")  # no MANIFEST needed with --resume
    assert resumed.exit_code == 1 and "Nothing to resume" in resumed.output
    assert f"run `kpipe evaluate {run}`" in resumed.output

    victim.with_suffix(".away").rename(victim)
    result = invoke("evaluate", run)
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert result.output.startswith(f"Test accuracy: {metrics['accuracy']:.4f}, macro-F1 ")
    assert metrics["partition"] == "test" and metrics["num_samples"] == 18 and metrics["loss"] is not None
    assert metrics["epochs_trained"] == FAST["epochs"] and metrics["kept_epoch"] >= 1  # from the history
    png_is_drawn(run / "confusion_matrix.png")

    # the accuracy is the model's on the raw test samples
    m = load_manifest(copy / "manifest.json")
    store = open_store(m)
    x, y = store.read_many(m.ids("test")), m.label_array(m.ids("test"))
    store.close()
    model = keras.saving.load_model(run / "model.keras")
    assert float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y)) == metrics["accuracy"]


def test_evaluate_other_partitions_and_datasets(image_run, tmp_path):
    root, manifest, result = image_run
    run = tmp_path / "run"
    shutil.copytree(result.run_dir, run)
    before = (run / "metrics.json").read_text()
    out = invoke("evaluate", run, "--partition", "validation", "--json")
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)  # one JSON object, nothing else
    assert report["partition"] == "validation" and report["metrics_file"] == str((run / "metrics-validation.json"))
    assert json.loads((run / "metrics-validation.json").read_text())["num_samples"] == 18
    assert (run / "confusion_matrix-validation.png").is_file() and (run / "metrics.json").read_text() == before
    assert out.stdout.lstrip().startswith("{") and out.stdout.rstrip().endswith("}")

    moved = tmp_path / "moved"  # the same dataset elsewhere: the run's own evaluation
    shutil.copytree(manifest.parent, moved)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(config | {"manifest": str(tmp_path / "gone" / "manifest.json")}))
    out = invoke("evaluate", run)  # the recorded dataset moved: say so, and how to name it
    assert out.exit_code == 1 and "which is not there any more" in out.output and "--manifest" in out.output
    out = invoke("train", "--resume", run, "--epochs", "99")
    assert out.exit_code == 2 and "which is not there any more" in out.output and "as MANIFEST" in out.output
    (run / "config.json").write_text(json.dumps(config))
    out = invoke("evaluate", run, "--manifest", moved / "manifest.json", "--partition", "train")
    assert out.exit_code == 0, out.output
    assert json.loads((run / "metrics-train.json").read_text())["num_samples"] == 54
    assert "Warning" not in out.stderr

    raw2 = make_pattern_images(tmp_path / "raw2", seed=5, per_class=25)  # same classes, another dataset:
    other = prepare(raw2, tmp_path / "other", split="0.6,0.2,0.2", n_jobs=1).manifest.path  # names get its fingerprint
    out = invoke("evaluate", run, "--manifest", other)
    assert out.exit_code == 0, out.output
    assert [p.name for p in run.glob("metrics-test-*.json")] and (run / "metrics.json").read_text() == before
    assert f"Warning: {other} is not the dataset the run was trained on" in out.stderr, out.output
    assert "may be optimistic" in out.stderr

    wrong = prepare(make_image_folder(tmp_path / "raw3", {"x": 6, "y": 6}), tmp_path / "wrong", n_jobs=1).manifest
    out = invoke("evaluate", run, "--manifest", wrong.path)
    assert out.exit_code == 1 and "trained on the classes ['c0', 'c1', 'c2']" in out.output
    out = invoke("evaluate", tmp_path)
    assert out.exit_code == 1 and "is not a kpipe run folder" in out.output


# ------------------------------------------------------------------ predict
def test_predict_reads_inputs_as_prepare_did(image_run, tmp_path):
    root, manifest, result = image_run
    raw = root / "raw"
    m = load_manifest(manifest)
    store = open_store(m)
    sid = m.ids("test")[0]
    sample = store.read_many([sid])[0]
    store.close()
    np.save(tmp_path / "one.npy", sample)
    np.save(tmp_path / "stack.npy", np.stack([sample, sample]))
    np.save(tmp_path / "floats.npy", sample.astype(np.float32) / 255)  # another dtype: refused, not rescaled
    np.save(tmp_path / "empty.npy", np.zeros((0, *sample.shape), sample.dtype))  # a row with its error
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "big.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    source = raw / "c0" / "s_000.png"
    out = invoke("predict", result.run_dir, source, tmp_path / "one.npy", tmp_path / "stack.npy", raw / "c1",
                 tmp_path / "floats.npy", tmp_path / "big.png", tmp_path / "bad.png", tmp_path / "missing.png",
                 tmp_path / "empty.npy")
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert lines[0] == "input,class,probability,prob_c0,prob_c1,prob_c2,error"
    rows = {row[0]: row for row in csv.reader(lines[1:])}
    assert len(lines) == 1 + 1 + 1 + 2 + 30 + 5
    assert rows[str(tmp_path / "empty.npy")][-1].startswith("the array is an empty stack (shape (0, 8, 8, 1))")
    model = keras.saving.load_model(result.run_dir / "model.keras")
    expected = model.predict(sample[None], verbose=0)[0]
    for name in (str(tmp_path / "one.npy"), f"{tmp_path / 'stack.npy'}[1]"):
        np.testing.assert_allclose([float(v) for v in rows[name][3:6]], expected, atol=1e-6)
        assert rows[name][1] == m.classes[int(np.argmax(expected))] and rows[name][-1] == ""
    assert "dtype float32; the dataset's samples are uint8" in rows[str(tmp_path / "floats.npy")][-1]
    assert rows[str(tmp_path / "big.png")][-1].startswith("image is 10x12; the model takes 8x8 images")
    assert rows[str(tmp_path / "missing.png")][-1] == "no such file"
    assert rows[str(tmp_path / "bad.png")][-1].startswith("cannot read")
    assert "5 of 39 inputs could not be read" in out.stderr
    # the raw PNG gives what the prepared sample gives
    prepared_id = "c0_s_000"
    store = open_store(m)
    np.testing.assert_allclose([float(v) for v in rows[str(source)][3:6]],
                               model.predict(store.read_many([prepared_id]), verbose=0)[0], atol=1e-6)
    store.close()

    out = invoke("predict", result.run_dir, raw / "c2", "--top-k", "2", "--out", tmp_path / "p.json")
    assert out.exit_code == 0 and out.stdout == f"Predicted 30 of 30 inputs -> {tmp_path / 'p.json'}\n"
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved["num_inputs"] == 30 and saved["num_errors"] == 0
    assert [len(p["top_k"]) for p in saved["predictions"]] == [2] * 30
    assert sum(p["class"] == "c2" for p in saved["predictions"]) >= 27
    out = invoke("predict", result.run_dir, source, "--top-k", "2", "--out", tmp_path / "p.csv")
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "input,class,probability,class_2,probability_2,error"
    # --out replaces only a predictions file kpipe wrote, and only with --overwrite; checked before predicting
    before = (tmp_path / "p.csv").read_bytes()
    out = invoke("predict", result.run_dir, source, "--out", tmp_path / "p.csv")
    assert out.exit_code == 1 and "exists. Pass --overwrite" in out.output and "Traceback" not in out.output
    assert (tmp_path / "p.csv").read_bytes() == before
    out = invoke("predict", result.run_dir, source, "--out", tmp_path / "p.csv", "--overwrite")
    assert out.exit_code == 0 and (tmp_path / "p.csv").read_text().splitlines()[0].startswith("input,class,")
    out = invoke("predict", result.run_dir, source, "--out", tmp_path / "p.json", "--overwrite")
    assert out.exit_code == 0 and json.loads((tmp_path / "p.json").read_text())["num_inputs"] == 1
    manifest_bytes = Path(manifest).read_bytes()
    for victim in (Path(manifest), tmp_path / "rows.csv"):
        if victim.suffix == ".csv":
            victim.write_text("x,label\n1,a\n")
        kept = victim.read_bytes()
        out = invoke("predict", result.run_dir, source, "--out", victim, "--overwrite")
        assert out.exit_code == 1 and "is not a predictions file kpipe wrote" in out.output, out.output
        assert victim.read_bytes() == kept
    assert Path(manifest).read_bytes() == manifest_bytes
    out = invoke("predict", result.run_dir, tmp_path / "p.csv", "--out", tmp_path / "p.csv", "--overwrite")
    assert out.exit_code == 1 and "is one of the inputs" in out.output
    out = invoke("predict", result.run_dir, tmp_path / "bad.png", "--json")
    assert out.exit_code == 1 and json.loads(out.stdout)["num_errors"] == 1  # nothing could be read
    out = invoke("predict", result.run_dir, source, "--out", tmp_path / "p.txt")
    assert out.exit_code == 2 and ".csv or .json" in out.output


def test_predict_rgba_images_and_csv_rows(tmp_path):
    # RGBA inputs are composited onto the dataset's background, as prepare did
    raw = make_image_folder(tmp_path / "raw", {"a": 8, "b": 8}, mode="RGBA")
    manifest = prepare(raw, tmp_path / "p", color_mode="rgb", background="black", n_jobs=1).manifest
    run = train(manifest.path, TrainConfig(**(FAST | {"epochs": 1})), out=tmp_path / "run", model=tiny_model)
    from kpipe.training.predict import predict

    image = raw / "a" / "img_003.png"
    got = predict(run.run_dir, [image]).predictions[0].probabilities
    store = open_store(manifest)
    model = keras.saving.load_model(run.run_dir / "model.keras")
    np.testing.assert_allclose(got, model.predict(store.read_many(["a_img_003"]), verbose=0)[0], atol=1e-6)
    store.close()

    table = make_pattern_csv(tmp_path / "t.csv")
    m = prepare(table, tmp_path / "pc", id_column="id", n_jobs=1).manifest
    run = train(m.path, TrainConfig(**FAST), out=tmp_path / "run_csv")
    rows = table.read_text().splitlines()
    new = tmp_path / "new.csv"
    cells = rows[1].split(",")
    shuffled = ["label,f5,f4,f3,f2,f1,f0,id,extra", ",".join([cells[7], *cells[6:0:-1], cells[0], "x"]),
                ",".join(["k1", "", *cells[5:0:-1], "r_missing", "y"])]
    new.write_text("\n".join(shuffled) + "\n")  # columns found by name; a missing value is that row's error
    result = predict(run.run_dir, [new])
    first, second = result.predictions
    assert first.input == cells[0] and first.error is None
    assert second.input == "r_missing" and "value '' in column 'f5' is missing" in second.error
    store = open_store(m)
    expected = keras.saving.load_model(run.run_dir / "model.keras").predict(store.read_many([cells[0]]), verbose=0)
    store.close()
    np.testing.assert_allclose(first.probabilities, expected[0], atol=1e-5)
    # a column the model reads, named twice in the new file: that file's error, never the first one read silently
    twice = tmp_path / "twice.csv"
    twice.write_text("\n".join([shuffled[0].replace("extra", "f5"), shuffled[1]]) + "\n")
    unclosed = tmp_path / "unclosed.csv"
    unclosed.write_text("\n".join([shuffled[0], '"' + shuffled[1], shuffled[1]]) + "\n")
    (bad_twice,), (bad_quote,) = (predict(run.run_dir, [f]).predictions for f in (twice, unclosed))
    assert "names two columns 'f5'" in bad_twice.error and bad_twice.probabilities is None
    assert "the quote opened on line 2 is never closed" in bad_quote.error


# ------------------------------------------------------------------ inspect
def test_inspect_reports_and_draws(image_run, tmp_path):
    root, manifest, _ = image_run
    copy = tmp_path / "prepared"
    shutil.copytree(manifest.parent, copy)
    out = invoke("inspect", copy / "manifest.json")
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert lines[0] == f"{copy / 'manifest.json'}: 90 samples in 3 classes (train 54, validation 18, test 18)"
    assert lines[1:6] == ["class  train  validation  test  total", "c0        18           6     6     30",
                          "c1        18           6     6     30", "c2        18           6     6     30",
                          "total     54          18    18     90"]
    assert lines[6] == "Imbalance ratio 1.00 (largest class 'c2': 30 samples, smallest 'c0': 30)"
    assert lines[7] == "Samples: shape (8, 8, 1), uint8; stored as npy, 16.9 KiB"  # 90 x (128 header + 64 bytes)
    assert lines[8] == "Skipped by prepare: 1 input"
    assert lines[9].startswith(f"  1 not-a-sample (not a sample file (extension)), e.g. {root / 'raw' / 'c0'}")
    for name, size in (("class_counts.png", (500, 250)), ("samples.png", (300, 300))):
        png_is_drawn(copy / name, min_size=size)
    # the figures live with the data: prepare --overwrite still replaces the dataset
    again = invoke("prepare", root / "raw", "--out", copy, "--overwrite", "--n-jobs", "1", "--split", "0.6,0.2,0.2")
    assert again.exit_code == 0, again.output

    out = invoke("inspect", copy / "manifest.json", "--json", "--out", tmp_path / "figs", "--samples-per-class", "2")
    report = json.loads(out.stdout)
    assert report["counts"]["train"] == {"c0": 18, "c1": 18, "c2": 18} and report["imbalance"]["ratio"] == 1.0
    assert report["storage"] == {"format": "npy", "bytes": 90 * 192}
    assert report["skipped"]["not-a-sample"]["count"] == 1
    assert sorted(Path(f).name for f in report["figures"]) == ["class_counts.png", "samples.png"]
    # a folder the user named: kpipe's own figures are redrawn, a file of the same name kpipe did not draw is kept
    again = invoke("inspect", copy / "manifest.json", "--out", tmp_path / "figs")
    assert again.exit_code == 0, again.output
    from PIL import Image

    Image.new("L", (4, 4)).save(tmp_path / "figs" / "samples.png")
    mine = (tmp_path / "figs" / "samples.png").read_bytes()
    refused = invoke("inspect", copy / "manifest.json", "--out", tmp_path / "figs")
    assert refused.exit_code == 1 and "is not a figure kpipe drew" in refused.output, refused.output
    assert (tmp_path / "figs" / "samples.png").read_bytes() == mine


def test_inspect_imbalanced_vectors_and_skipped_kinds(tmp_path):
    rows = ["label,x,y"] + [f"big,{k},1" for k in range(40)] + [f"small,{k},2" for k in range(4)]
    rows += ["big,,1", "small,oops,2", "big,1"]  # a missing value, a bad value, a short row
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    prepare(tmp_path / "t.csv", tmp_path / "p", n_jobs=1, missing="drop-rows")
    from kpipe.inspection import inspect_dataset

    report = inspect_dataset(tmp_path / "p" / "manifest.json")
    data = report.to_dict()
    assert data["imbalance"]["ratio"] == 10.0 and data["imbalance"]["smallest"] == ["small", 4]
    assert {k: v["count"] for k, v in data["skipped"].items()} == {"bad-row": 2, "missing-value": 1}
    assert [Path(f).name for f in data["figures"]] == ["class_counts.png"]  # vectors: no sample grid
    assert "Imbalance ratio 10.00 (largest class 'big': 40 samples, smallest 'small': 4)" in report.summary()


# ------------------------------------------------------------------ figures and --json
def test_run_figures_are_drawn(image_run, monkeypatch):
    from kpipe.training import artifacts

    _, _, result = image_run
    png_is_drawn(result.run_dir / "curves.png", min_size=(600, 250))
    png_is_drawn(result.run_dir / "confusion_matrix.png", min_size=(300, 300))
    figures = []
    monkeypatch.setattr(artifacts, "_save", lambda fig, path: figures.append(fig))
    history = {"loss": [1.0, 0.5, 0.4, 0.45, 0.5, 0.6, 0.7], "val_loss": [0.9, 0.6, 0.3, 0.5, 0.6, 0.7, 0.8]}
    artifacts.plot_history(history, "unused.png", best_epoch=3, monitor="val_loss")
    ax = figures[0].axes[0]
    assert all(float(t).is_integer() for t in ax.get_xticks())  # whole epochs only
    starred = [line for line in ax.get_lines() if line.get_marker() == "*"]
    assert [tuple(line.get_xydata()[0]) for line in starred] == [(3.0, 0.3)]  # epochs from 1, as log.csv
    # a small class that is fully right is as dark as a large one: each row is divided by its total
    artifacts.plot_confusion_matrix([[90, 10], [0, 3]], ["big", "small"], "unused.png")
    shares = figures[1].axes[0].images[0].get_array()
    np.testing.assert_allclose(np.asarray(shares), [[0.9, 0.1], [0.0, 1.0]])
    texts = [t.get_text() for t in figures[1].axes[0].texts]
    assert texts == ["90\n90%", "10\n10%", "3\n100%"]  # counts annotated; empty cells blank


def test_every_summary_command_takes_json(image_run, tmp_path):
    root, manifest, result = image_run
    checks = {
        "prepare": ["prepare", root / "raw", "--out", tmp_path / "p", "--n-jobs", "1", "--split", "0.6,0.2,0.2"],
        "convert": ["convert", manifest, "--to", "hdf5", "--out", tmp_path / "h5"],
        "verify": ["verify", manifest, "--quick"],
        "inspect": ["inspect", manifest, "--no-figures"],
        "train": ["train", manifest, "--out", tmp_path / "run", "--epochs", "1", "--verbose", "1",
                  "--no-tensorboard"],
        "evaluate": ["evaluate", result.run_dir],
        "predict": ["predict", result.run_dir, root / "raw" / "c0" / "s_000.png"],
    }
    values = {}
    for command, args in checks.items():
        out = invoke(*args, "--json")
        assert out.exit_code == 0, (command, out.output)
        values[command] = json.loads(out.stdout)  # the whole of stdout is one JSON object
        assert isinstance(values[command], dict), command
    assert values["prepare"]["imbalance"]["ratio"] == 1.0 and values["prepare"]["num_samples"] == 90
    (tmp_path / "empty").mkdir()
    for args in (["prepare", tmp_path / "empty", "--out", tmp_path / "p2"], ["evaluate", tmp_path],
                 ["inspect", tmp_path / "nope.json"]):  # an error under --json: JSON on stdout, the line on stderr
        out = invoke(*args, "--json")
        error = json.loads(out.stdout)
        assert out.exit_code == 1 and error["exit_code"] == 1 and error["error"] in out.stderr, out.output
    assert values["convert"]["format"] == "hdf5" and values["verify"]["ok"] is True
    assert values["train"]["run_dir"] == str((tmp_path / "run").resolve()) and "macro_f1" in values["train"]
    assert values["evaluate"]["partition"] == "test" and values["inspect"]["num_classes"] == 3
    assert values["predict"]["predictions"][0]["class"] == "c0"
