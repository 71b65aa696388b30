"""Figures of a run folder: training curves and the test confusion matrix (matplotlib, no display).

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas, so no
global backend is switched and no window opens (works on servers). When
matplotlib is not installed the figures are skipped with a warning.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        warnings.warn("matplotlib is not installed: the run folder gets no PNG figures. "
                      "Install it with `pip install matplotlib`.", stacklevel=3)
        return None
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f"{path.stem}.{uuid.uuid4().hex[:8]}.partial.png")
    try:
        fig.savefig(tmp, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def plot_history(history: dict[str, list[float]], path: str | os.PathLike) -> Path | None:
    """Plot each metric per epoch, train and validation on the same axes, into a PNG.

    Args:
        history: ``{"loss": [...], "val_loss": [...], "accuracy": [...], ...}``
            (as ``History.history``), one value per epoch.
        path: The PNG to write.

    Returns:
        ``path``, or `None` if matplotlib is missing or the history is empty.
    """
    names = [k for k in history if not k.startswith("val_") and history[k]]
    names += [k[4:] for k in history if k.startswith("val_") and k[4:] not in names and history[k]]
    if not names:
        return None
    fig = _figure(4.5 * len(names), 3.6)
    if fig is None:
        return None
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        for key, label in ((name, "train"), (f"val_{name}", "validation")):
            values = history.get(key) or []
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    path = Path(path)
    _save(fig, path)
    return path


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | os.PathLike,
                          *, title: str = "Confusion matrix (test)") -> Path | None:
    """Draw a confusion matrix (rows: true class, columns: predicted) with counts, into a PNG.

    Args:
        matrix: ``num_classes x num_classes`` counts, as
            `sklearn.metrics.confusion_matrix` (``C[i, j]``: true ``i``, predicted ``j``).
        classes: Class names, in index order.
        path: The PNG to write.
        title: Figure title.

    Returns:
        ``path``, or `None` if matplotlib is missing.
    """
    import numpy as np

    cm = np.asarray(matrix)
    n = len(classes)
    size = max(4.0, 0.45 * n + 2.5)
    fig = _figure(size, size)
    if fig is None:
        return None
    ax = fig.subplots()
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels=list(classes), rotation=45 if n > 6 else 0, ha="right" if n > 6 else "center")
    ax.set_yticks(range(n), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = cm.max() / 2 if cm.size else 0
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if cm[i, j] > threshold else "black")
    path = Path(path)
    _save(fig, path)
    return path
