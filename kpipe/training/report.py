"""What a run reports: the kept epoch and why training stopped, and the summary lines people read.

Epochs are numbered from 1 everywhere a person reads them (Keras' progress bar "Epoch 1/15", ``log.csv``,
``history.json`` positions + 1, ``metrics.json``, ``curves.png``); ``checkpoint/state.json``'s ``next_epoch``
is a count of the epochs done. No Keras here: ``kpipe evaluate`` and the tests read these cheaply.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def kept_epoch(history: dict[str, list[float]], monitor: str, mode: str) -> int | None:
    """The epoch (1-based) whose weights ``model.keras`` holds: the first best finite value of ``monitor``.

    The rule of `kpipe.training.callbacks.BestCheckpoint` (a strict improvement replaces the best), so the
    first of equal values is kept. `None` if ``monitor`` has no finite value.
    """
    best, kept = None, None
    for epoch, value in enumerate(history.get(monitor) or [], start=1):
        if value is None or not math.isfinite(value):
            continue
        if best is None or (value < best if mode == "min" else value > best):
            best, kept = value, epoch
    return kept


def training_facts(history: dict[str, list[float]], *, monitor: str, mode: str, epochs: int,
                   patience: int | None, stopped: bool, kept_best: bool = True) -> dict[str, Any]:
    """The training part of ``metrics.json``: epochs trained, the kept epoch and why training stopped.

    Args:
        history: ``{name: [value per epoch]}`` of the whole run (resumed sessions included).
        monitor: The value that picks the kept epoch (``val_loss``...).
        mode: ``"min"`` or ``"max"``.
        epochs: The ``epochs`` asked for.
        patience: ``--patience`` (early stopping), or `None`.
        stopped: Training was stopped before ``epochs`` (``model.stop_training``).
        kept_best: ``model.keras`` holds the best epoch's weights (`False`: no epoch had a finite
            ``monitor``, the last epoch's weights were kept).

    Returns:
        ``{"epochs_trained", "monitor", "best_epoch", "best_<monitor>", "kept_epoch", "stop"}``; ``stop`` is
        ``{"reason": "epochs" | "early_stopping" | "callback", "epoch", ...}`` (1-based epochs).
    """
    trained = len(history.get("loss") or [])
    facts: dict[str, Any] = {"epochs_trained": trained, "monitor": monitor}
    best = kept_epoch(history, monitor, mode)
    if best is not None:
        facts |= {"best_epoch": best, "best_" + monitor: float(history[monitor][best - 1])}
    facts["kept_epoch"] = best if kept_best and best is not None else trained
    if not stopped:
        facts["stop"] = {"reason": "epochs", "epoch": trained, "epochs": epochs}
    elif patience:
        facts["stop"] = {"reason": "early_stopping", "epoch": trained, "patience": patience}
    else:
        facts["stop"] = {"reason": "callback", "epoch": trained}
    return facts


def stop_sentence(facts: dict[str, Any]) -> str:
    """``"Kept epoch 6 (best val_loss 0.0712); early stopping at epoch 9 (3 epochs without improvement)."``"""
    monitor, kept = facts.get("monitor", "val_loss"), facts.get("kept_epoch")
    best = facts.get("best_" + monitor)
    if best is not None and kept == facts.get("best_epoch"):
        head = f"Kept epoch {kept} (best {monitor} {best:.4f})"
    else:
        head = f"Kept the last epoch, {kept} ({monitor} was never finite)"
    stop = facts.get("stop") or {}
    if stop.get("reason") == "early_stopping":
        tail = (f"early stopping at epoch {stop['epoch']} ({stop['patience']} epoch"
                f"{'s' if stop['patience'] != 1 else ''} without improvement of {monitor})")
    elif stop.get("reason") == "callback":
        tail = f"stopped by a callback at epoch {stop['epoch']}"
    else:
        n = stop.get("epoch", facts.get("epochs_trained"))
        tail = f"trained all {n} epochs" if n != 1 else "trained its 1 epoch"
    return f"{head}; {tail}."


def evaluation_sentence(metrics: dict[str, Any], *, fallback_note: bool = True) -> str:
    """``"Test accuracy: 0.9777, macro-F1 0.9776, balanced accuracy 0.9778 (loss 0.0812, 179 samples); ..."``.

    Accuracy alone hides a small class that is never right, so macro-F1, balanced accuracy and the worst
    class's recall (named) come with it, then any ``--metrics``.
    """
    part = metrics.get("partition", "test")
    note = {"validation": " (no test partition)", "train": " (no validation or test partition)"}.get(part, "") \
        if fallback_note else ""
    loss = metrics.get("loss")
    loss_text = f"loss {loss:.4f}, " if loss is not None else ""
    extra = "".join(f", {k} {v:.4f}" if v is not None else f", {k} undefined"
                    for k, v in (metrics.get("metrics") or {}).items())
    text = (f"{part.capitalize()} accuracy{note}: {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, "
            f"balanced accuracy {metrics['balanced_accuracy']:.4f}{extra} ({loss_text}{metrics['num_samples']} "
            "samples)")
    worst = metrics.get("worst_class")
    if worst is not None:
        text += f"; worst class {worst['name']!r}: recall {worst['recall']:.4f}"
    return text


def run_summary(metrics: dict[str, Any], run_dir: str | Path, seconds: float | None = None) -> str:
    """The lines ``kpipe train`` ends with: the evaluation, the kept epoch and the stop, the run folder."""
    lines = [evaluation_sentence(metrics)]
    if "epochs_trained" in metrics:
        lines.append(stop_sentence(metrics))
    lines.append(f"-> {run_dir}" + (f" in {seconds:.0f}s" if seconds is not None else ""))
    return "\n".join(lines)
