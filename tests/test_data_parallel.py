"""`kpipe train --loop fit --distribute data-parallel` on JAX (issue 13, item 4): keras.distribution.DataParallel.

One process with 4 CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4``, set in a subprocess
before JAX starts) trains the digits as one device does: batch 28 splits into 4 x 7; the train partition's last
batch (1438 = 51 x 28 + 10) is padded to 12 rows with zero-weight rows. Final weights within 1e-5 of the
one-device run, also when interrupted after epoch 1 and resumed; accuracy and validation as one device; the
logged train loss is Keras' mean over batches weighted by their rows, padding included (the one documented
difference). Skipped where JAX is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kpipe.errors import ArgumentError
from kpipe.training.distribute import check_data_parallel

ROOT = Path(__file__).resolve().parent.parent
MODEL = f"{Path(__file__).resolve().parent / 'helpers.py'}:tiny_model"

CHILD = """
import json, sys
import h5py, numpy as np
from kpipe.errors import ArgumentError
from kpipe.training import TrainConfig, train
from kpipe.training.distribute import check_data_parallel

tmp, manifest, model = sys.argv[1], sys.argv[2], sys.argv[3]
options = dict(model=model, loop="fit", batch_size=28, learning_rate=0.01, seed=3, verbose=0)
one = train(manifest, TrainConfig(**options, epochs=2, distribute="none"), out=tmp + "/one")
first = train(manifest, TrainConfig(**options, epochs=1, distribute="data-parallel"), out=tmp + "/dp")
resumed = train(manifest, TrainConfig(**options, epochs=2, distribute="data-parallel"), resume=tmp + "/dp")

def weights(run):
    arrays = {}
    with h5py.File(run + "/checkpoint/last.weights.h5") as f:
        f.visititems(lambda name, obj: arrays.__setitem__(name, np.asarray(obj[()], dtype=np.float64))
                     if isinstance(obj, h5py.Dataset) else None)
    return arrays

a, b = weights(tmp + "/one"), weights(tmp + "/dp")
refused = []
for kwargs in (dict(loop="tape", batch_size=28, weighted=False), dict(loop="fit", batch_size=30, weighted=False),
               dict(loop="fit", batch_size=28, weighted=True)):
    try:
        check_data_parallel("data-parallel", **kwargs)
    except ArgumentError as e:
        refused.append(str(e))
print("RESULT " + json.dumps({
    "names": [sorted(a), sorted(b)],
    "max_difference": max(float(np.max(np.abs(a[k] - b[k]), initial=0.0)) for k in a),
    "history": [json.load(open(tmp + "/" + r + "/history.json")) for r in ("one", "dp")],
    "replicas": json.load(open(tmp + "/dp/config.json"))["resolved"]["replicas"],
    "refused": refused,
}))
"""


@pytest.mark.timeout(240)
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed (pip install -e '.[jax]')")
def test_data_parallel_trains_as_one_device(tmp_path: Path):
    from kpipe.prepare import prepare

    manifest = str(prepare(ROOT / "sample_data" / "digits", tmp_path / "prepared", n_jobs=1).manifest.path)
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    refused_cli = subprocess.Popen(
        [sys.executable, "-c", "from kpipe.cli import main; main()", "train", manifest, "--model", MODEL,
         "--distribute", "data-parallel", "--batch-size", "30"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    child = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), manifest, MODEL], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=200)
    assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-3000:]
    result = json.loads(child.stdout.split("RESULT ", 1)[1])
    assert result["names"][0] == result["names"][1] and len(result["names"][0]) > 4
    assert result["replicas"] == 4
    assert result["max_difference"] < 1e-5, result["max_difference"]
    one, dp = result["history"]
    for key in ("accuracy", "val_loss", "val_accuracy"):  # validation: 180 = 6 x 28 + 12, no padding
        assert dp[key] == pytest.approx(one[key], rel=1e-5), key
    # train loss: Keras weighs the last batch by its 12 rows, not 10 (0.05% here); the gradients are exact
    assert dp["loss"] == pytest.approx(one["loss"], rel=2e-3)
    assert [m.split(". Received")[0] for m in result["refused"]] == [
        "`distribute` data-parallel is keras.distribution.DataParallel with --loop fit on the JAX backend "
        "(KERAS_BACKEND=jax); on TensorFlow use --distribute mirrored or multi-worker",
        "`batch_size` must be a multiple of the 4 devices that `distribute` data-parallel splits every batch among",
        "`distribute` data-parallel weighs its metrics by the batches' weights (which mark the padding of a "
        "partial batch), so sample or class weights would weigh the metrics too: train without them, or without "
        "data-parallel"]
    output, _ = refused_cli.communicate(timeout=60)
    assert refused_cli.returncode == 1 and output.count("\n") == 1, output
    assert output.startswith("Error: `--batch-size` must be a multiple of the 4 devices"), output
    assert not (tmp_path / "prepared" / "runs").exists()


def test_data_parallel_refused_off_jax():
    with pytest.raises(ArgumentError, match="KERAS_BACKEND=jax"):
        check_data_parallel("data-parallel", "fit", batch_size=28, weighted=False)
    check_data_parallel("multi-worker", "tape", batch_size=27, weighted=True)  # not data-parallel: not checked
