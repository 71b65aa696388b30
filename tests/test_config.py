"""One schema (TrainConfig) behind the Python API, the `kpipe train` options and the configuration file."""

import dataclasses

import click
import pytest
from click.testing import CliRunner

from kpipe.cli import main
from kpipe.errors import ArgumentError
from kpipe.training.config import TrainConfig, key_aliases, load_config_file, options


def test_every_field_is_a_train_option_with_the_schema_choices():
    params = {p.name: p for p in main.commands["train"].params}
    for name, _default, option in options():
        assert name in params, name
        if option.choices is not None:
            assert tuple(params[name].type.choices) == option.choices
        assert params[name].default is None  # "not given": the schema's default applies (or the files')
    assert set(params) == {f.name for f in dataclasses.fields(TrainConfig)} | {"manifest", "config_file", "as_json"}
    help_text = CliRunner().invoke(main, ["train", "--help"]).output
    assert "[default: 15]" in help_text and "--lr" in help_text and "--sample-weights" in help_text


def test_config_is_frozen_keyword_only_and_normalised():
    config = TrainConfig(epochs=3, loss_args='{"gamma": 2}', step_model="default")
    assert config.loss_args == {"gamma": 2} and config.step_model is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 4
    with pytest.raises(TypeError):
        TrainConfig("default")  # keyword-only


@pytest.mark.parametrize("field, value, message", [
    ("epochs", 0, "`epochs` must be a positive integer"),
    ("learning_rate", -1.0, "`learning_rate` must be a positive number"),
    ("loop", "custom", "`loop` must be one of fit, step, tape"),
    ("verbose", 3, "`verbose` must be an integer in [0, 2]"),
    ("class_weight", "{oops", "`class_weight` must be a JSON object"),
    ("seed", -1, "`seed` must be an integer in [0, 18446744073709551615]"),
])
def test_one_check_for_the_api_and_the_config_file(tmp_path, field, value, message):
    with pytest.raises(ArgumentError, match=message.replace("[", r"\[").replace("]", r"\]")):
        TrainConfig(**{field: value})
    path = tmp_path / "c.json"
    path.write_text(__import__("json").dumps({field: value}))
    with pytest.raises(ArgumentError):
        TrainConfig.from_options({}, config_file=path)


def test_bad_option_values_exit_2_before_anything_runs(tmp_path):
    result = CliRunner().invoke(main, ["train", str(tmp_path / "m.json"), "--loop", "custom"])
    assert result.exit_code == 2 and "'custom' is not one of" in result.output
    assert isinstance(main.commands["train"].params[0].type, click.Path)


def test_config_file_keys_take_the_option_spellings(tmp_path):
    assert key_aliases() == {"lr": "learning_rate", "sample_weights": "use_sample_weights"}
    path = tmp_path / "c.toml"
    path.write_text('[train]\nlr = 0.01\nbatch-size = 8\nsample-weights = true\n')
    assert load_config_file(path) == {"learning_rate": 0.01, "batch_size": 8, "use_sample_weights": True}


def test_config_file_top_level_and_train_table_merge_and_a_key_is_set_once(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('epochs = 1\n[train]\nbatch_size = 8\n')  # the top level used to be dropped silently
    assert load_config_file(path) == {"epochs": 1, "batch_size": 8}
    path.write_text('epochs = 1\n[other]\nx = 1\n')
    with pytest.raises(ArgumentError, match="Unknown key 'other'"):
        load_config_file(path)
    path.write_text('epochs = 1\n[train]\nepochs = 2\n')
    with pytest.raises(ArgumentError, match="sets 'epochs' both at the top level and under"):
        load_config_file(path)
    path.write_text('batch-size = 8\nbatch_size = 16\n')  # two spellings of one option: not "the last wins"
    with pytest.raises(ArgumentError, match="sets 'batch_size' twice \\(as 'batch-size' and 'batch_size'\\)"):
        load_config_file(path)
    path.write_text('lr = 0.1\nlearning_rate = 0.2\n')
    with pytest.raises(ArgumentError, match="sets 'learning_rate' twice"):
        load_config_file(path)
