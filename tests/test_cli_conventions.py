"""Command-line conventions (issue 12): examples in every --help, train's options by group, the CLI's own names in
errors, Ctrl-C (exit 130, one line), a re-runnable quick start, --resume without MANIFEST, one-line warnings."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import make_image_folder, make_pattern_images
from kpipe.cli import cli_names, main
from kpipe.training import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("conventions")
    out = invoke("prepare", make_pattern_images(root / "raw", per_class=12), "--out", root / "prepared",
                 "--n-jobs", "1")
    assert out.exit_code == 0, out.output
    return root / "prepared" / "manifest.json"


def test_every_subcommand_help_has_examples():
    for name in main.commands:
        text = invoke(name, "--help").output
        examples = text.split("Examples:")[1].split("\n\n")[0].strip().splitlines() if "Examples:" in text else []
        assert 2 <= len(examples) <= 3 and all(e.strip().startswith(f"kpipe {name} ") for e in examples), (name, text)


def test_train_help_groups_its_options():
    text = invoke("train", "--help").output
    sections = re.findall(r"^(\w[\w ]*) options:$", text, flags=re.MULTILINE)
    assert sections == ["Data", "Model and loss", "Sampling and weights", "Optimisation", "Loop", "Run folder",
                        "Other"]
    section = text.split("Sampling and weights options:")[1].split("Optimisation options:")[0]
    assert "--class-weight" in section and "--steps-per-epoch" in section and "--epochs" not in section
    assert "--metrics NAMES" in text.split("Model and loss options:")[1].split("Sampling")[0]


def test_errors_use_the_command_line_names():
    flags = {"label_mode": ("--label-mode", False), "batch_size": ("--batch-size", False),
             "use_multiprocessing": ("--use-multiprocessing", True), "image_size": ("--image-size", False)}
    assert cli_names("`label_mode='binary'` needs exactly 2 classes. Use label_mode='int'.", flags) == \
        "`--label-mode binary` needs exactly 2 classes. Use --label-mode int."
    assert cli_names("`batch_size` must be a positive integer. Received: batch_size=0, image_size=None", flags) == \
        "`--batch-size` must be a positive integer. Received: --batch-size 0, --image-size (not given)"
    assert cli_names("Received: use_multiprocessing=True, from_logits=True, seed=3", flags) == \
        "Received: --use-multiprocessing, from_logits=True, seed=3"  # only the command's own options change


def test_a_library_error_at_the_cli_names_the_option(prepared, tmp_path):
    out = invoke("train", prepared, "--loss", "binary_crossentropy", "--out", tmp_path / "r")
    assert out.exit_code == 1 and "`--label-mode binary` needs exactly 2 classes" in out.output, out.output
    assert "label_mode=" not in out.output


def _interrupted(args: list[str], delay: float, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``kpipe ARGS`` in its own process group and send the group SIGINT (Ctrl-C) after ``delay`` seconds."""
    code = "import sys; from kpipe.cli import main; sys.argv = ['kpipe'] + sys.argv[1:]; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    time.sleep(delay)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("delay", [0.6, 1.5])
def test_ctrl_c_during_prepare_exits_130_with_one_line(tmp_path, delay):
    """Worker processes start with SIGINT blocked: no traceback from a half-started worker (the first second)."""
    raw = make_image_folder(tmp_path / "raw", {f"k{i}": 300 for i in range(6)}, size=(32, 32))
    result = _interrupted(["prepare", str(raw), "--out", str(tmp_path / "out"), "--n-jobs", "2"], delay, tmp_path)
    if result.returncode == 0:
        pytest.skip("prepare finished before the interrupt")
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip().splitlines() == ["Interrupted (Ctrl-C)."], result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


def test_ctrl_c_during_train_exits_130_with_the_resume_hint(prepared, tmp_path, monkeypatch):
    from kpipe.training import TrainingInterrupted, run

    def interrupted(*args, **kwargs):
        raise TrainingInterrupted("Training interrupted after 2 complete epoch(s). Resume with: kpipe train "
                                  f"--resume {tmp_path}")

    monkeypatch.setattr(run, "train", interrupted)
    out = invoke("train", prepared, "--out", tmp_path / "r")
    assert out.exit_code == 130
    assert out.output == f"Interrupted: Training interrupted after 2 complete epoch(s). Resume with: kpipe train " \
                         f"--resume {tmp_path}\n"


def _quick_start() -> list[list[str]]:
    """The kpipe commands of README's first command line."""
    first = ROOT.joinpath("README.md").read_text().split("```bash\n")[1].split("```")[0].strip()
    return [part.split()[1:] for part in first.split("&&") if part.split()[:1] == ["kpipe"]]


def test_the_quick_start_can_be_run_again(tmp_path, monkeypatch):
    commands = _quick_start()
    assert [c[0] for c in commands] == ["prepare", "train"]
    (tmp_path / "sample_data").symlink_to(ROOT / "sample_data")
    monkeypatch.chdir(tmp_path)
    for attempt in range(2):
        for command in commands:
            extra = ["--epochs", "1", "--batch-size", "512", "--verbose", "0", "--no-tensorboard"] \
                if command[0] == "train" else []
            out = invoke(*command, *extra)
            assert out.exit_code == 0, (attempt, command, out.output)
    assert (tmp_path / "runs" / "digits" / "metrics.json").is_file()


def test_resume_needs_no_manifest(prepared, tmp_path):
    run = tmp_path / "run"
    fast = ["--batch-size", "16", "--verbose", "0", "--no-tensorboard"]
    assert invoke("train", prepared, "--out", run, "--epochs", "1", *fast).exit_code == 0
    out = invoke("train", "--resume", run, "--epochs", "2", "--verbose", "0")
    assert out.exit_code == 0, out.output
    assert len((run / "log.csv").read_text().splitlines()) == 1 + 2
    out = invoke("train")
    assert out.exit_code == 2 and "Missing argument 'MANIFEST' (it may be left out only with --resume RUN)" \
        in out.output
    # a refused resume changes nothing: the run's options stay its own, and the message names the option
    config = (run / "config.json").read_bytes()
    out = invoke("train", "--resume", run, "--epochs", "3", "--batch-size", "7", "--verbose", "0")
    assert out.exit_code == 1 and "was trained with --batch-size 16, this session has --batch-size 7" in out.output
    assert "state=" not in out.output and (run / "config.json").read_bytes() == config
    out = invoke("train", "--resume", run, "--epochs", "3", "--verbose", "0")
    assert out.exit_code == 0, out.output
    # --overwrite never follows a link to a run folder
    (tmp_path / "link").symlink_to(run)
    out = invoke("train", prepared, "--out", tmp_path / "link", "--overwrite", "--epochs", "1", *fast)
    assert out.exit_code == 1 and "is a symbolic link" in out.output and (run / "model.keras").is_file()


def test_resume_after_the_dataset_was_prepared_again_says_what_to_do(tmp_path):
    raw = make_pattern_images(tmp_path / "raw", per_class=12)
    prepared = tmp_path / "prepared" / "manifest.json"
    assert invoke("prepare", raw, "--out", prepared.parent, "--n-jobs", "1").exit_code == 0
    run = tmp_path / "run"
    fast = ["--batch-size", "16", "--verbose", "0", "--no-tensorboard"]
    assert invoke("train", prepared, "--out", run, "--epochs", "1", *fast).exit_code == 0
    assert invoke("prepare", raw, "--out", prepared.parent, "--n-jobs", "1", "--overwrite",
                  "--seed", "5").exit_code == 0
    out = invoke("train", "--resume", run, "--epochs", "2", "--verbose", "0")
    assert out.exit_code == 1 and f"The dataset {prepared} changed since run {run} was trained" in out.output
    assert "Start a new run" in out.output and "--resume" not in out.output.split("changed since")[1]
    out = invoke("evaluate", run)  # the test partition may now hold training samples: said, not silent
    assert out.exit_code == 0 and "changed since the run was trained on it" in out.stderr, out.output


def test_one_line_warnings(prepared, tmp_path):
    # said once, in one line, also when the run goes on (kpipe train checks before TensorFlow starts, then train()
    # checks again)
    out = invoke("train", prepared, "--use-multiprocessing", "--out", tmp_path / "once", "--epochs", "1",
                 "--batch-size", "16", "--verbose", "0", "--no-tensorboard")
    assert out.exit_code == 0, out.output
    warning = [line for line in out.output.splitlines() if line.startswith("Warning: ")]
    assert warning == ["Warning: --use-multiprocessing with one worker starts a process to make batches one at a "
                       "time, which is slower than the main process alone. Add --workers N (N > 1), or drop it."]
    from kpipe.training.distribute import mixed_precision_warning

    message = mixed_precision_warning()
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        assert message is None
    else:
        assert message.startswith("--mixed-precision without a GPU") and "\n" not in message


LOGITS = '''
import keras


def build(input_shape, num_classes):
    inputs = keras.Input(shape=input_shape)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(keras.layers.Flatten()(inputs)))


def ce(y_true, y_pred):
    return keras.losses.categorical_crossentropy(y_true, y_pred)
'''


def test_a_custom_loss_on_logits_warns_naming_from_logits(prepared, tmp_path):
    from kpipe.training import train

    (tmp_path / "m.py").write_text(LOGITS)
    config = TrainConfig(model=f"{tmp_path / 'm.py'}:build", loss=f"{tmp_path / 'm.py'}:ce", epochs=1, verbose=0,
                         tensorboard=False)
    with pytest.warns(UserWarning, match=r"outputs logits.*from_logits=True"):
        result = train(prepared, config, out=tmp_path / "run")
    assert result.metrics["num_samples"] == 3
    # a Keras loss needs no warning: kpipe sets from_logits, looking through the preprocessing in front
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        config = TrainConfig(model=f"{tmp_path / 'm.py'}:build", epochs=1, verbose=0, tensorboard=False)
        train(prepared, config, out=tmp_path / "run2")
    import json

    assert json.loads((tmp_path / "run2" / "config.json").read_text())["resolved"]["outputs"] == "logits"


def test_the_readme_balanced_sampling_example_runs(tmp_path, monkeypatch):
    text = ROOT.joinpath("README.md").read_text().split("## Imbalanced data")[1].split("```python\n")[1]
    code = text.split("```")[0]
    assert "x, y = balanced[0]" in code and "x, y, w = weighted[0]" in code
    raw = make_image_folder(tmp_path / "raw", {"3": 20, "7": 10})
    assert invoke("prepare", raw, "--out", tmp_path / "prepared", "--n-jobs", "1").exit_code == 0
    monkeypatch.chdir(tmp_path)
    scope: dict = {"model": type("Model", (), {"fit": lambda self, *a, **k: None})()}
    exec(compile(code, "README.md", "exec"), scope)  # the README's own example
    assert scope["w"].dtype == np.float32 and scope["w"].shape == (32,) and len(scope["balanced"][0]) == 2


def test_errors_name_the_options_of_the_command(prepared, tmp_path):
    out = invoke("convert", prepared, "--to", "npy", "--shard-size", "10", "--out", tmp_path / "c")
    assert out.exit_code != 0 and "format=" not in out.output, out.output
    assert "--to npy" in out.output and "--shard-size 10" in out.output
    out = invoke("train", prepared, "--class-weight", '{"zz": 1}', "--out", tmp_path / "r", "--epochs", "1")
    assert out.exit_code == 1 and "Received: --class-weight {'zz': ...}" in out.output, out.output
    # options naming classes are checked with the dataset before TensorFlow starts (NumPy only)
    from kpipe.errors import KpipeError
    from kpipe.manifest import Manifest
    from kpipe.training.preflight import check_run

    for options in ({"class_weight": {"zz": 1}}, {"condition_weights": {"zz": 2}},
                    {"sampling": "balanced", "target_distribution": {"zz": 1}}):
        with pytest.raises(KpipeError, match="'zz'"):
            check_run(Manifest.load(prepared), TrainConfig(out=str(tmp_path / "r2"), **options))
