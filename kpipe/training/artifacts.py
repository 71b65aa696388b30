"""Figures: a run's training curves and confusion matrix, a dataset's class counts and samples (matplotlib).

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


SOFTWARE = "kpipe"
"""The PNG ``Software`` text chunk of every figure kpipe draws: how `is_kpipe_figure` tells them apart."""


def is_kpipe_figure(path: str | os.PathLike) -> bool:
    """True if ``path`` is a PNG that kpipe drew (its ``Software`` text chunk says ``kpipe``)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.format == "PNG" and im.info.get("Software") == SOFTWARE
    except (OSError, ValueError):
        return False


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f"{path.stem}.{uuid.uuid4().hex[:8]}.partial.png")
    try:
        fig.savefig(tmp, bbox_inches="tight", metadata={"Software": SOFTWARE})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def plot_history(history: dict[str, list[float]], path: str | os.PathLike, *, best_epoch: int | None = None,
                 monitor: str | None = None) -> Path | None:
    """Plot each metric per epoch, train and validation on the same axes, into a PNG.

    Epochs are numbered from 1, as Keras' progress bar, ``log.csv`` and ``metrics.json`` number them;
    the x axis has integer ticks only.

    Args:
        history: ``{"loss": [...], "val_loss": [...], "accuracy": [...], ...}``
            (as ``History.history``), one value per epoch.
        path: The PNG to write.
        best_epoch: The epoch kept (1-based), marked by a dashed line on every panel and a point on the
            ``monitor`` curve. Defaults to none.
        monitor: The value that picked ``best_epoch`` (named in the legend).

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
    from matplotlib.ticker import MaxNLocator

    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        for key, label in ((name, "train"), (f"val_{name}", "validation")):
            values = history.get(key) or []
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=label)
            if best_epoch is not None and key == monitor and 1 <= best_epoch <= len(values):
                ax.plot([best_epoch], [values[best_epoch - 1]], marker="*", markersize=14, color="crimson",
                        linestyle="none", label=f"kept: epoch {best_epoch} (best {monitor})")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="crimson", linestyle="--", linewidth=1, alpha=0.6)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    path = Path(path)
    _save(fig, path)
    return path


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | os.PathLike,
                          *, title: str = "Confusion matrix (test)") -> Path | None:
    """Draw a confusion matrix normalised per true class (recall on the diagonal), counts annotated, into a PNG.

    Each row is divided by its total, so a small class that is fully correct is as dark as a large one;
    each non-empty cell shows the count and, below it, the row share. A class with no sample has an empty row.

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

    cm = np.asarray(matrix, dtype=np.int64)
    n = len(classes)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    size = max(4.5, 0.55 * n + 2.5)
    fig = _figure(size, size)
    if fig is None:
        return None
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class (recall on the diagonal)")
    ax.set_xticks(range(n), labels=list(classes), rotation=45 if n > 6 else 0, ha="right" if n > 6 else "center")
    ax.set_yticks(range(n), labels=[f"{c} ({int(r)})" for c, r in zip(classes, rows[:, 0])])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (samples)")
    ax.set_title(title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j] == 0:  # empty cells stay blank, so the errors stand out
                    continue
                text = str(int(cm[i, j])) if n > 12 else f"{int(cm[i, j])}\n{share[i, j]:.0%}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7 if n > 12 else 8,
                        color="white" if share[i, j] > 0.5 else "black")
    path = Path(path)
    _save(fig, path)
    return path


def plot_class_counts(counts: dict[str, dict[str, int]], classes: Sequence[str], path: str | os.PathLike,
                      *, title: str = "Samples per class") -> Path | None:
    """A grouped bar chart: one group per class, one bar per partition, into a PNG.

    Args:
        counts: ``{partition: {class name: count}}`` (a manifest's ``counts``).
        classes: Class names, in index order.
        path: The PNG to write.
        title: Figure title.

    Returns:
        ``path``, or `None` if matplotlib is missing.
    """
    import numpy as np

    n, parts = len(classes), [p for p in counts if counts[p]]
    fig = _figure(max(5.0, 0.5 * n * max(len(parts), 1) / 2 + 3), 3.8)
    if fig is None:
        return None
    ax = fig.subplots()
    width = 0.8 / max(len(parts), 1)
    x = np.arange(n)
    for k, part in enumerate(parts):
        values = [counts[part].get(c, 0) for c in classes]
        ax.bar(x + (k - (len(parts) - 1) / 2) * width, values, width, label=f"{part} ({sum(values)})")
    ax.set_xticks(x, labels=list(classes), rotation=45 if n > 8 else 0, ha="right" if n > 8 else "center")
    ax.set_xlabel("class")
    ax.set_ylabel("samples")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="partition")
    path = Path(path)
    _save(fig, path)
    return path


def plot_samples(samples: dict[str, list], path: str | os.PathLike, *, title: str = "Samples per class"
                 ) -> Path | None:
    """A grid of images, one row per class, into a PNG.

    Args:
        samples: ``{class name: [(ID, array)]}``; arrays ``(H, W)`` or ``(H, W, C)`` with C 1, 3 or 4.
            Integer arrays are shown on their dtype's full range (uint8: 0-255, uint16: 0-65535); float
            arrays are stretched from their own minimum to maximum (display only).
        path: The PNG to write.
        title: Figure title.

    Returns:
        ``path``, or `None` if matplotlib is missing or there is nothing to show.
    """
    import numpy as np

    rows = [(name, items) for name, items in samples.items() if items]
    if not rows:
        return None
    cols = max(len(items) for _, items in rows)
    fig = _figure(1.3 * cols + 1.2, 1.3 * len(rows) + 0.6)
    if fig is None:
        return None
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, (name, items) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if c >= len(items):
                continue
            image = _displayable(np.asarray(items[c][1]))
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0,
                      interpolation="nearest")
            ax.set_title(str(items[c][0])[-18:], fontsize=6)
            if c == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title)
    path = Path(path)
    _save(fig, path)
    return path


def _displayable(a):
    """An image as float values in [0, 1]: ``(H, W)`` or ``(H, W, 3|4)``."""
    import numpy as np

    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.dtype.kind in "ui" and a.dtype.itemsize <= 2:
        info = np.iinfo(a.dtype)
        return (a.astype(np.float64) - info.min) / (info.max - info.min)
    a = a.astype(np.float64)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    return np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo)
