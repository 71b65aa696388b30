"""Loading user objects: custom losses and model factories by `module:name` or `file.py:name`."""

import sys
from pathlib import Path

import pytest

from kpipe.errors import KpipeError, LoadError
from kpipe.training.loading import load_object

USER_CODE = '''
import keras

def my_loss(y_true, y_pred):
    return keras.ops.mean(keras.ops.square(y_true - y_pred), axis=-1)

def tiny(input_shape, num_classes):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                             keras.layers.Dense(num_classes, activation="softmax")])

def not_a_model(input_shape, num_classes):
    return 42

def wrong_signature(shape):
    return None

CONSTANT = 3
'''


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "user_code.py"
    path.write_text(USER_CODE)
    return path


def test_load_from_file_and_module(user_file: Path, monkeypatch):
    fn = load_object(f"{user_file}:my_loss", what="loss")
    assert fn.__name__ == "my_loss"
    monkeypatch.syspath_prepend(str(user_file.parent))
    assert load_object("user_code:CONSTANT") == 3
    assert load_object("os.path:join") is __import__("os").path.join
    sys.modules.pop("user_code", None)


@pytest.mark.parametrize(
    "spec, match",
    [
        ("no_colon", "must be given as `module:name`"),
        ("missing_mod_xyz:f", "Cannot import module 'missing_mod_xyz'"),
        ("os:nope", "has no attribute 'nope'"),
        ("nofile_here.py:f", "does not exist"),
    ],
)
def test_load_errors(spec, match):
    with pytest.raises(LoadError, match=match):
        load_object(spec, what="loss")


def test_file_that_raises_on_import(tmp_path: Path):
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(LoadError, match="RuntimeError: boom"):
        load_object(f"{bad}:f")


def test_build_model_from_factory(user_file: Path):
    import keras

    from kpipe.training.models import build_model, default_model

    model = build_model(f"{user_file}:tiny", (4, 4, 1), 3)
    assert isinstance(model, keras.Model) and model.output_shape == (None, 3)
    with pytest.raises(KpipeError, match="returned int, not a keras.Model"):
        build_model(f"{user_file}:not_a_model", (4,), 3)
    with pytest.raises(KpipeError, match="must accept `input_shape` and `num_classes`"):
        build_model(f"{user_file}:wrong_signature", (4,), 3)
    cnn = default_model((8, 8, 1), 10)
    mlp = default_model((5,), 2)
    assert cnn.name == "kpipe_cnn" and cnn.output_shape == (None, 10)
    assert mlp.name == "kpipe_mlp" and mlp.output_shape == (None, 2)
    assert default_model((64, 64, 3), 4).output_shape == (None, 4)


def test_resolve_loss(user_file: Path):
    from kpipe.training.losses import label_mode_for_loss, resolve_loss

    assert resolve_loss("sparse_categorical_crossentropy") == "sparse_categorical_crossentropy"
    assert resolve_loss(f"{user_file}:my_loss").__name__ == "my_loss"
    with pytest.raises(LoadError, match="Unknown loss 'nope'"):
        resolve_loss("nope")
    with pytest.raises(LoadError, match="not a function"):
        resolve_loss(f"{user_file}:CONSTANT")
    assert label_mode_for_loss("sparse_categorical_crossentropy") == "int"
    assert label_mode_for_loss("categorical_crossentropy") == "categorical"
    assert label_mode_for_loss("binary_crossentropy") == "binary"


def test_config_file_takes_cli_option_names(tmp_path: Path):
    import dataclasses

    from kpipe.training.config import load_config_file
    from kpipe.training.run import TrainConfig

    path = tmp_path / "train.toml"
    path.write_text('lr = 0.01\nsample-weights = true\nbatch_size = 8\nmanifest = "ignored"\n')
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert load_config_file(path, fields) == {"learning_rate": 0.01, "use_sample_weights": True, "batch_size": 8}
