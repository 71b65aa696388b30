"""Imbalance study: which correction helps on step-imbalanced digits?

Builds a step-imbalanced version of ``sample_data/digits`` (Buda, Maki and
Mazurowski, 2018, "A systematic study of the class imbalance problem in
convolutional neural networks", step imbalance with mu = 0.5 minority
classes and ratio rho = 10): the train partition keeps every sample of
classes 0-4 and ``--keep`` (10%) of classes 5-9; validation and test stay
balanced. It then trains kpipe's default model with each correction:

* ``none``: shuffle, no weights;
* ``class_weight``: shuffle, ``class_weight="balanced"``;
* ``undersample``: ``sampling="balanced", balance="undersample"``;
* ``oversample``: ``sampling="balanced", balance="oversample"``;
* ``bootstrap``: ``sampling="bootstrap", balance="balanced"``;

for the same number of optimizer steps (``--steps``, batch 32: epochs =
round(steps / batches per epoch), so every mode sees about as many batches
whatever its epoch size), over ``--seeds`` seeds (model initialization and
sampling; the imbalanced subset is the same), and reports macro-F1 and
balanced accuracy on the balanced test partition, mean ± std (sample std,
ddof=1) over the seeds, as a Markdown table.

Usage::

    python tools/imbalance_study.py --steps 1200 --seeds 0 1 2 --out study.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

MODES = {
    "none": {},
    "class_weight balanced": {"class_weight": "balanced"},
    "balanced undersample": {"sampling": "balanced", "balance": "undersample"},
    "balanced oversample": {"sampling": "balanced", "balance": "oversample"},
    "balanced bootstrap": {"sampling": "bootstrap", "balance": "balanced"},
}


def make_imbalanced(prepared, out: Path, minority=range(5, 10), keep: float = 0.1, seed: int = 0):
    """A manifest whose train partition keeps ``keep`` of the ``minority`` classes (validation, test unchanged)."""
    from kpipe.manifest import Manifest

    m = prepared
    rng = np.random.default_rng(seed)
    train = m.partition["train"]
    labels = m.label_array(train)
    drop = set()
    for c in minority:
        members = [sid for sid, y in zip(train, labels) if y == c]
        n_keep = max(1, round(keep * len(members)))
        kept = set(rng.choice(members, size=n_keep, replace=False).tolist())
        drop |= set(members) - kept
    storage = dict(m.storage)  # saved next to the prepared manifest: the same relative root
    imb = Manifest(classes=m.classes, labels=m.labels,
                   partition=dict(m.partition, train=[i for i in train if i not in drop]),
                   sample_shape=m.sample_shape, sample_dtype=m.sample_dtype, storage=storage,
                   prepare=dict(m.prepare, imbalance={"minority": list(minority), "keep": keep, "seed": seed}))
    imb.save(out)
    return imb


def run_one(manifest, mode: str, seed: int, steps: int, batch_size: int) -> dict:
    import keras
    from sklearn.metrics import balanced_accuracy_score, f1_score

    from kpipe.generator import DataGenerator
    from kpipe.training import default_model

    keras.utils.set_random_seed(seed)
    train = DataGenerator(manifest, "train", batch_size=batch_size, seed=seed, rescale=1 / 255, **MODES[mode])
    test = DataGenerator(manifest, "test", batch_size=256, rescale=1 / 255)
    epochs = max(1, round(steps / len(train)))
    model = default_model(manifest.sample_shape, manifest.num_classes)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    started = time.perf_counter()
    model.fit(train, epochs=epochs, shuffle=False, verbose=0)
    seconds = time.perf_counter() - started
    y_pred = np.argmax(model.predict(test, verbose=0), axis=1)
    y_true = test.labels[test.epoch_order(0)]
    return {
        "mode": mode, "seed": seed, "epochs": epochs, "batches_per_epoch": len(train),
        "steps": epochs * len(train), "samples_per_epoch": train.sampler.epoch_size,
        "macro_f1": float(f1_score(y_true, y_pred, average="macro")),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "seconds": round(seconds, 1),
    }


def _sd(a: np.ndarray) -> float:
    return float(a.std(ddof=1)) if len(a) > 1 else 0.0


def table(results: list[dict]) -> str:
    lines = ["| correction | steps (epochs x batches) | macro-F1 | balanced accuracy |",
             "|---|---|---|---|"]
    for mode in MODES:
        rows = [r for r in results if r["mode"] == mode]
        if not rows:
            continue
        f1 = np.array([r["macro_f1"] for r in rows])
        ba = np.array([r["balanced_accuracy"] for r in rows])
        r0 = rows[0]
        lines.append(f"| {mode} | {r0['steps']} ({r0['epochs']} x {r0['batches_per_epoch']}) | "
                     f"{f1.mean():.3f} ± {_sd(f1):.3f} | {ba.mean():.3f} ± {_sd(ba):.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--raw", type=Path, default=ROOT / "sample_data" / "digits")
    parser.add_argument("--steps", type=int, default=1200, help="Optimizer steps per run (batch 32).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--keep", type=float, default=0.1, help="Fraction of classes 5-9 kept in train.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--out", type=Path, default=None, help="Write the results as JSON here.")
    args = parser.parse_args(argv)

    from kpipe.prepare import prepare

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepare(args.raw, Path(tmp) / "prepared", split="0.6,0.2,0.2", seed=0, n_jobs=1).manifest
        manifest = make_imbalanced(prepared, prepared.path.parent / "imbalanced.json", keep=args.keep)
        counts = manifest.class_counts("train")
        print(f"train counts: {counts}; test counts: {manifest.class_counts('test')}", file=sys.stderr)
        results = []
        for mode in args.modes:
            for seed in args.seeds:
                r = run_one(manifest, mode, seed, args.steps, args.batch_size)
                print(json.dumps(r), file=sys.stderr, flush=True)
                results.append(r)
    print(table(results))
    total = time.perf_counter() - started
    print(f"\n{len(results)} runs in {total:.0f} s", file=sys.stderr)
    if args.out:
        args.out.write_text(json.dumps({"train_counts": counts, "steps": args.steps, "seeds": args.seeds,
                                        "keep": args.keep, "results": results, "seconds": round(total, 1)},
                                       indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
