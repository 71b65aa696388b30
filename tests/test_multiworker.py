"""`kpipe train --distribute multi-worker` (issue 13, item 2): two worker processes on 127.0.0.1 with TF_CONFIG.

The two-process run trains the digits exactly as one process does: the tape loop under
MultiWorkerMirroredStrategy, each worker reading its slice of every global batch (batch 27, so every slice is
padded), interrupted after epoch 1 and resumed, by the two workers and by one process (another number of
workers on resume); final weights within 1e-5 of the one-process run. ``--loop fit`` and ``--loop step``
exit 1 with one line naming the upstream Keras issue, before any worker waits for another. A job whose other
worker never starts ends within ``--distribute-timeout`` in one line naming it, leaving no folder.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from kpipe.errors import ArgumentError
from kpipe.training import TrainConfig
from kpipe.training.distribute import KERAS_MULTI_WORKER_ISSUE, check_multi_worker
from kpipe.training.rendezvous import ClusterTimeoutError, wait_for_peers

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "sample_data" / "digits"
MODEL = f"{Path(__file__).resolve().parent / 'helpers.py'}:tiny_model"  # no Dropout: its masks depend on the rows
OPTIONS = ["--model", MODEL, "--loop", "tape", "--batch-size", "27", "--learning-rate", "0.01", "--seed", "3",
           "--verbose", "0"]
CLI = [sys.executable, "-c", "from kpipe.cli import main; main()", "train"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    from kpipe.prepare import prepare

    return prepare(DIGITS, tmp_path_factory.mktemp("digits") / "prepared", n_jobs=1).manifest.path


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports on 127.0.0.1 (bound to port 0 together, then released)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _env(**extra: str) -> dict[str, str]:
    # without TF_CPP_MIN_LOG_LEVEL (conftest sets it) the command filters TensorFlow's start-up lines itself
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "TF_CPP_MIN_LOG_LEVEL")}
    return {**env, "KERAS_BACKEND": "tensorflow", **extra}


def _start(argv: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen(CLI + argv, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _workers(argv: list[str], tmp: Path, n: int = 2) -> list[subprocess.Popen]:
    """``n`` workers of one job; worker i's temporary folders go to ``tmp/worker<i>``."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(n)]}
    procs = []
    for i in range(n):
        (tmp / f"worker{i}").mkdir(exist_ok=True)
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        procs.append(_start(argv, TF_CONFIG=config, TMPDIR=str(tmp / f"worker{i}")))
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    results = []
    for proc in procs:
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            output, _ = proc.communicate()
        results.append((proc.returncode, output))
    return results


def _weights(run: Path) -> dict[str, np.ndarray]:
    """Every array of ``checkpoint/last.weights.h5`` (the model's and the optimizer's), by path."""
    arrays: dict[str, np.ndarray] = {}
    with h5py.File(run / "checkpoint" / "last.weights.h5") as f:
        f.visititems(lambda name, obj: arrays.__setitem__(name, np.asarray(obj[()], dtype=np.float64))
                     if isinstance(obj, h5py.Dataset) else None)
    return arrays


def _max_difference(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert sorted(wa) == sorted(wb) and len(wa) > 4
    return max(float(np.max(np.abs(wa[k] - wb[k]), initial=0.0)) for k in wa)


@pytest.mark.timeout(300)
def test_two_workers_train_as_one_process(digits: Path, tmp_path: Path):
    single = _start([str(digits), *OPTIONS, "--epochs", "2", "--out", str(tmp_path / "one")])
    refused = {loop: _start([str(digits), "--loop", loop, "--distribute", "multi-worker", "--out",
                             str(tmp_path / loop)], TF_CONFIG=json.dumps({
                                 "cluster": {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]},
                                 "task": {"type": "worker", "index": 1}}))
               for loop in ("fit", "step")}
    job = [str(digits), *OPTIONS, "--distribute", "multi-worker"]
    first = _finish(_workers([*job, "--epochs", "1", "--out", str(tmp_path / "two")], tmp_path), timeout=240)
    assert all(code == 0 for code, _ in first), first
    for loop, (code, output) in zip(refused, _finish(list(refused.values()), timeout=60)):
        # exit 1, one line, before any work (no folder), naming the upstream limitation
        assert code == 1 and output.count("\n") == 1, output
        assert output.startswith("Error: `--distribute` multi-worker trains with --loop tape") and "#20585" in output
        assert not (tmp_path / loop).exists()

    # resumed by the two workers, and (a copy) by one process: another number of workers on resume
    shutil.copytree(tmp_path / "two", tmp_path / "two-then-one")
    resumed = _workers([*job, "--epochs", "2", "--resume", str(tmp_path / "two")], tmp_path)
    alone = _start([str(digits), *OPTIONS, "--distribute", "none", "--epochs", "2", "--resume",
                    str(tmp_path / "two-then-one")])
    results = _finish([*resumed, alone, single], timeout=240)
    assert all(code == 0 for code, _ in results), results

    assert _max_difference(tmp_path / "one", tmp_path / "two") < 1e-5
    assert _max_difference(tmp_path / "one", tmp_path / "two-then-one") < 1e-5
    one, two = (json.loads((tmp_path / r / "history.json").read_text()) for r in ("one", "two"))
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5)
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["accuracy"] == \
        json.loads((tmp_path / "one" / "metrics.json").read_text())["accuracy"]
    # worker 1 wrote nothing of its own that is left: its temporary run folders are gone
    assert not any((tmp_path / "worker1").iterdir())


def test_multi_worker_refusals(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    check_multi_worker("multi-worker", "tape")
    check_multi_worker("auto", "fit", clip_norm=1.0)  # not multi-worker: nothing to check
    with pytest.raises(ArgumentError, match=KERAS_MULTI_WORKER_ISSUE):
        check_multi_worker("multi-worker", "step")
    with pytest.raises(ArgumentError, match="`clip_norm` with `distribute` multi-worker"):
        check_multi_worker("multi-worker", "tape", clip_norm=1.0)
    with pytest.raises(ArgumentError, match="`accumulation_steps` with `distribute` multi-worker"):
        check_multi_worker("multi-worker", "tape", accumulation_steps=2)
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(ArgumentError, match="needs TF_CONFIG"):
        check_multi_worker("multi-worker", "tape")


@pytest.mark.timeout(60)
def test_missing_worker_ends_the_wait_in_one_line(digits: Path, tmp_path: Path):
    # only worker 1 of 2 starts: it names worker 0, exits 1, and its temporary run folder is gone
    ports = _free_ports(2)
    config = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                         "task": {"type": "worker", "index": 1}})
    (tmp_path / "tmp").mkdir()
    worker = _start([str(digits), *OPTIONS, "--distribute", "multi-worker", "--distribute-timeout", "5", "--out",
                     str(tmp_path / "run")], TF_CONFIG=config, TMPDIR=str(tmp_path / "tmp"))
    [(code, output)] = _finish([worker], timeout=45)
    assert code == 1 and output.count("\n") == 1, output
    assert output.startswith("Error: The multi-worker job did not form within `--distribute-timeout` 5 seconds: "
                             f"no answer from worker 0 at 127.0.0.1:{ports[0]}. Start every worker"), output
    assert not (tmp_path / "run").exists() and not any((tmp_path / "tmp").iterdir())


def test_wait_for_peers_and_its_option():
    with socket.create_server(("127.0.0.1", 0)) as peer:  # a task that answers: no wait
        port = peer.getsockname()[1]
        wait_for_peers(5, json.dumps({"cluster": {"worker": ["127.0.0.1:1", f"127.0.0.1:{port}"]},
                                      "task": {"type": "worker", "index": 0}}))
    config = json.dumps({"cluster": {"chief": ["127.0.0.1:1"], "worker": [f"127.0.0.1:{port}"]},
                         "task": {"type": "chief", "index": 0}})
    with pytest.raises(ClusterTimeoutError, match=rf"within `distribute_timeout` 0.3 seconds: no answer from "
                                                  rf"worker 0 at 127.0.0.1:{port}\. Start every worker"):
        wait_for_peers(0.3, config)
    assert TrainConfig().distribute_timeout == 300.0
    assert TrainConfig(distribute_timeout=2).distribute_timeout == 2.0
    for bad in (0, -1, float("inf"), "5", True):
        with pytest.raises(ArgumentError, match="`distribute_timeout` must be a positive number"):
            TrainConfig(distribute_timeout=bad)
