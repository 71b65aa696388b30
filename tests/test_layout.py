"""The structure issue 8 asks for, kept: short functions, no import cycle, no arrow back up, public Keras only."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("code_stats", ROOT / "tools" / "code_stats.py")
code_stats = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(code_stats)


def test_training_functions_are_short():
    lengths = code_stats.function_lengths(ROOT / "kpipe" / "training")
    assert lengths[0][0] <= 80, lengths[:3]
    assert next(n for n, name in lengths if name.endswith("run.py:train")) <= 60
    assert len((ROOT / "kpipe" / "training" / "run.py").read_text().splitlines()) < 250


def test_no_import_cycle_and_no_arrow_back_to_the_facade():
    assert code_stats.cycles(code_stats.import_graph(ROOT / "kpipe")) == []
    assert code_stats.facade_importers(ROOT / "kpipe") == []


def test_training_uses_public_keras_only():
    private = re.compile(r"keras\.src|_initial_epoch|_is_improvement|kpipe_outputs|object\.__setattr__\(self, \"_"
                         r"|_batch_positions|sys\._getframe|\._keras_loss_classes|kpipe_error_in")
    for path in [*(ROOT / "kpipe" / "training").rglob("*.py"), ROOT / "kpipe" / "cli.py", ROOT / "kpipe" / "errors.py"]:
        hits = [line for line in path.read_text().splitlines() if private.search(line)]
        assert not hits, (path, hits)
