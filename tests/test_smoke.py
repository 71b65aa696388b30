"""The smoke subset CI also runs on the lowest Keras and TensorFlow that pyproject.toml declares.

``kpipe prepare`` then a 1-epoch ``kpipe train`` with each loop, through the command line; the three loops
agree. (CI runs this file with tests/test_generator*.py, the generator's exactness tests.)
"""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import make_pattern_folder
from kpipe.cli import main


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("smoke")
    raw = make_pattern_folder(root / "raw", per_class=20)
    result = CliRunner().invoke(main, ["prepare", str(raw), "--out", str(root / "prepared"), "--n-jobs", "1",
                                       "--split", "0.6,0.2,0.2"])
    assert result.exit_code == 0, result.output
    return root / "prepared" / "manifest.json"


def test_one_epoch_with_each_loop(prepared, tmp_path):
    import keras

    histories = {}
    for loop in ("fit", "step", "tape"):
        out = tmp_path / loop
        result = CliRunner().invoke(main, ["train", str(prepared), "--loop", loop, "--epochs", "1", "--batch-size",
                                           "8", "--verbose", "0", "--out", str(out), "--no-tensorboard"])
        assert result.exit_code == 0, result.output
        assert "\nTest accuracy: " in "\n" + result.output
        histories[loop] = json.loads((out / "history.json").read_text())
        assert keras.saving.load_model(out / "model.keras").output_shape == (None, 3)
    for loop in ("step", "tape"):
        np.testing.assert_allclose(histories[loop]["loss"], histories["fit"]["loss"], rtol=1e-4)
