"""Measure kpipe's training on each installed Keras backend: the README's "Backends" table.

For each backend (a subprocess with ``KERAS_BACKEND`` set, since Keras reads it
once at import) on a prepared dataset, with the default model (its Dropout
included), ``epochs`` epochs, seed 0:

* ``fit``, ``step``, ``tape``: the largest relative difference of the per-epoch
  ``loss`` / ``val_loss`` of ``step`` and ``tape`` from ``fit``, the last
  epoch's loss, the test accuracy (and, in the JSON lines only, the wall
  time of each run: one run each, not a comparison);
* ``workers``: ``fit`` with ``workers=2`` (threads): whether its losses equal
  one worker's exactly;
* ``resume``: ``step`` interrupted after epoch 1 and resumed: whether its
  losses and weights equal the uninterrupted ``step`` run's exactly.

Usage::

    kpipe prepare sample_data/digits --out prepared --overwrite
    python tools/backend_check.py prepared/manifest.json --epochs 3

Prints one JSON line per backend and a Markdown table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _runs(manifest: str, epochs: int, out: Path) -> dict:
    """Everything measured on the backend of this process."""
    import keras
    import numpy as np

    from kpipe.training import TrainConfig, TrainingInterrupted, train

    class StopAfter(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                raise KeyboardInterrupt

    base = {"epochs": epochs, "verbose": 0, "seed": 0, "tensorboard": False}
    result: dict = {"backend": keras.backend.backend(), "keras": keras.__version__}
    runs = {}
    for loop in ("fit", "step", "tape"):
        started = time.perf_counter()
        runs[loop] = train(manifest, TrainConfig(**base, loop=loop), out=out / loop)
        result[f"{loop}_seconds"] = round(time.perf_counter() - started, 1)
    fit = runs["fit"].history
    result["last_loss"] = {loop: runs[loop].history["loss"][-1] for loop in runs}
    result["test_accuracy"] = {loop: runs[loop].metrics["accuracy"] for loop in runs}
    result["max_rel_diff_vs_fit"] = max(
        float(np.max(np.abs(np.array(runs[loop].history[key]) - fit[key]) / np.abs(fit[key])))
        for loop in ("step", "tape") for key in ("loss", "val_loss"))
    workers = train(manifest, TrainConfig(**base, workers=2), out=out / "workers2")
    result["workers2_equal"] = workers.history["loss"] == fit["loss"]
    try:
        train(manifest, TrainConfig(**base, loop="step"), out=out / "cut", callbacks=[StopAfter()])
    except TrainingInterrupted:
        pass
    resumed = train(manifest, TrainConfig.from_options({"resume": str(out / "cut")}))
    same_weights = all(np.array_equal(a, b) for a, b in zip(resumed.model.get_weights(),
                                                             runs["step"].model.get_weights()))
    result["resume_equal"] = resumed.history["loss"] == runs["step"].history["loss"] and same_weights
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--backends", nargs="*", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        with tempfile.TemporaryDirectory() as tmp:
            print("RESULT" + json.dumps(_runs(args.manifest, args.epochs, Path(tmp))), flush=True)
        return
    rows = []
    for backend in args.backends:
        if importlib.util.find_spec(backend) is None:
            print(f"{backend}: not installed, skipped", file=sys.stderr)
            continue
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        out = subprocess.run([sys.executable, __file__, args.manifest, "--epochs", str(args.epochs), "--worker"],
                             env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0 or "RESULT" not in out.stdout:
            print(f"{backend}: failed\n{out.stderr[-3000:]}", file=sys.stderr)
            continue
        row = json.loads(out.stdout.split("RESULT", 1)[1])
        print(json.dumps(row))
        rows.append(row)
    print("\n| backend | fit / step / tape: last-epoch loss | max rel. diff. vs fit | test accuracy | "
          "workers=2 equal | resume equal |\n|---|---|---|---|---|---|")
    for r in rows:
        losses = " / ".join(f"{r['last_loss'][k]:.6f}" for k in ("fit", "step", "tape"))
        accuracy = " / ".join(f"{r['test_accuracy'][k]:.4f}" for k in ("fit", "step", "tape"))
        print(f"| {r['backend']} | {losses} | {r['max_rel_diff_vs_fit']:.1e} | {accuracy} | "
              f"{r['workers2_equal']} | {r['resume_equal']} |")


if __name__ == "__main__":
    main()
