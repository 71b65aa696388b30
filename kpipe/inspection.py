"""``kpipe inspect MANIFEST``: what a prepared dataset holds, for people, before training on it.

Classes and per-partition counts (a class x partition table), the imbalance ratio, the sample shape, dtype
and storage size, the inputs ``prepare`` skipped grouped by kind, and two figures: ``class_counts.png`` (a bar
per class and partition) and ``samples.png`` (a few samples per class, for image data). Reads the manifest
and, for the figure, a few samples; changes nothing of the dataset (the figures go next to the manifest, or
to ``out``). The table and the ratio are also what ``kpipe prepare`` prints.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from kpipe.errors import ArgumentError
from kpipe.manifest import Manifest, load_manifest

FIGURES = ("class_counts.png", "samples.png")
"""The figures `inspect_dataset` writes."""


def _check_figures_replaceable(folder: Path) -> None:
    from kpipe.errors import OutputExistsError
    from kpipe.training.artifacts import is_kpipe_figure

    for name in FIGURES:
        path = folder / name
        if (path.exists() or path.is_symlink()) and (path.is_symlink() or not is_kpipe_figure(path)):
            raise OutputExistsError(f"{path} exists and is not a figure kpipe drew; kpipe does not replace it. "
                                    "Choose another --out folder (or move the file).")


def class_counts(manifest: Manifest) -> dict[str, dict[str, int]]:
    """``{partition: {class: count}}`` for every partition of the manifest, every class listed."""
    return {p: {c: int(n) for c, n in manifest.class_counts(p).items()} for p in manifest.partition}


def imbalance(counts: dict[str, int]) -> dict[str, Any]:
    """The imbalance ratio of ``{class: count}``: largest count / smallest count (imbalanced-learn's definition).

    Returns:
        ``{"ratio", "largest": [class, count], "smallest": [class, count]}``; ``ratio`` is `None` when the
        smallest class has no sample (infinite) or there is no class.
    """
    if not counts:
        return {"ratio": None, "largest": None, "smallest": None}
    largest = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
    smallest = min(counts.items(), key=lambda kv: (kv[1], kv[0]))
    ratio = largest[1] / smallest[1] if smallest[1] else None
    return {"ratio": ratio, "largest": list(largest), "smallest": list(smallest)}


def imbalance_sentence(manifest: Manifest) -> str:
    """``imbalance ratio 1.05 (largest class '3': 183 samples, smallest '8': 174)``, over all partitions."""
    totals = {c: sum(per[c] for per in class_counts(manifest).values()) for c in manifest.classes}
    info = imbalance(totals)
    if info["largest"] is None:
        return "no class"
    ratio = "infinite" if info["ratio"] is None else f"{info['ratio']:.2f}"
    (big, n_big), (small, n_small) = info["largest"], info["smallest"]
    return f"imbalance ratio {ratio} (largest class {big!r}: {n_big} samples, smallest {small!r}: {n_small})"


def class_table(manifest: Manifest, *, max_rows: int = 20) -> str:
    """The per-class counts per partition as an aligned text table, with totals.

    With more than ``max_rows`` classes, the 10 smallest and the 5 largest are shown (``kpipe inspect --json``
    lists all).
    """
    counts = class_counts(manifest)
    parts = list(counts)
    totals = {c: sum(counts[p][c] for p in parts) for c in manifest.classes}
    classes = list(manifest.classes)
    hidden = 0
    if len(classes) > max_rows:
        by_size = sorted(classes, key=lambda c: (totals[c], c))
        hidden = len(classes) - 15
        classes = by_size[:10] + [None] + by_size[-5:]
    rows = [["class", *parts, "total"]]
    for c in classes:
        rows.append([f"... {hidden} more", *[""] * (len(parts) + 1)] if c is None
                    else [c, *(str(counts[p][c]) for p in parts), str(totals[c])])
    rows.append(["total", *(str(sum(counts[p].values())) for p in parts), str(sum(totals.values()))])
    width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width[0]) if i == 0 else cell.rjust(width[i]) for i, cell in enumerate(r))
                     .rstrip() for r in rows)


def skipped_by_kind(manifest: Manifest, *, examples: int = 3) -> dict[str, dict[str, Any]]:
    """The skipped inputs grouped by kind, most frequent first: ``{kind: {"count", "meaning", "examples"}}``."""
    from kpipe.ingest import SKIP_KINDS

    groups: dict[str, list[dict[str, str]]] = {}
    for entry in manifest.skipped:
        groups.setdefault(entry.get("kind") or "unreadable", []).append(entry)
    return {kind: {"count": len(entries), "meaning": SKIP_KINDS.get(kind, kind),
                   "examples": [{"path": e.get("path"), "reason": e.get("reason")} for e in entries[:examples]]}
            for kind, entries in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))}


def storage_bytes(manifest: Manifest) -> int | None:
    """Bytes the samples take on disk: the shards' recorded sizes (hdf5), or header + data per ``.npy`` file."""
    storage = manifest.storage or {}
    if storage.get("format") == "hdf5":
        sizes = [s.get("num_bytes") for s in storage.get("shards", [])]
        return None if any(s is None for s in sizes) else int(sum(sizes))
    from kpipe.storage.npy import expected_header

    dtype = np.dtype(manifest.sample_dtype)
    per_file = len(expected_header(manifest.sample_shape, dtype)) + math.prod(manifest.sample_shape) * dtype.itemsize
    return per_file * manifest.num_samples


def _size(num_bytes: int | None) -> str:
    if num_bytes is None:
        return "unknown"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if num_bytes < 1024 or unit == "TiB":
            return f"{num_bytes} {unit}" if unit == "bytes" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return str(num_bytes)


def is_image(shape: tuple[int, ...]) -> bool:
    """Samples drawable as images: ``(H, W)`` or ``(H, W, C)`` with C 1, 3 or 4."""
    return len(shape) == 2 or (len(shape) == 3 and shape[-1] in (1, 3, 4))


@dataclasses.dataclass
class InspectReport:
    """What `inspect_dataset` found (`summary` for people, `to_dict` for ``--json``)."""

    manifest: Manifest
    counts: dict[str, dict[str, int]]
    storage_bytes: int | None
    skipped: dict[str, dict[str, Any]]
    figures: list[Path]

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        totals = {c: sum(per[c] for per in self.counts.values()) for c in m.classes}
        return {
            "manifest": str(m.path), "classes": list(m.classes), "num_classes": m.num_classes,
            "num_samples": m.num_samples, "counts": self.counts, "totals": totals,
            "imbalance": imbalance(totals) | {"partitions": {p: imbalance(c) for p, c in self.counts.items()}},
            "sample": {"shape": list(m.sample_shape), "dtype": m.sample_dtype},
            "storage": {"format": (m.storage or {}).get("format"), "bytes": self.storage_bytes},
            "skipped": self.skipped, "num_skipped": len(m.skipped), "figures": [str(f) for f in self.figures],
        }

    def summary(self) -> str:
        m = self.manifest
        parts = ", ".join(f"{p} {sum(c.values())}" for p, c in self.counts.items())
        lines = [f"{m.path}: {m.num_samples} samples in {m.num_classes} classes ({parts})", class_table(m),
                 imbalance_sentence(m).capitalize(),
                 f"Samples: shape {tuple(m.sample_shape)}, {m.sample_dtype}; stored as "
                 f"{(m.storage or {}).get('format')}, {_size(self.storage_bytes)}"]
        if self.skipped:
            lines.append(f"Skipped by prepare: {len(m.skipped)} input{'s' if len(m.skipped) != 1 else ''}")
            for kind, group in self.skipped.items():
                example = group["examples"][0]
                lines.append(f"  {group['count']} {kind} ({group['meaning']}), e.g. {example['path']}: "
                             f"{example['reason']}")
        else:
            lines.append("Skipped by prepare: nothing")
        if self.figures:
            lines.append("-> " + ", ".join(str(f) for f in self.figures))
        return "\n".join(lines)


def _sample_grid(manifest: Manifest, per_class: int) -> dict[str, list]:
    """Up to ``per_class`` samples of each class (train first, in manifest order) as ``{class: [(ID, array)]}``."""
    from kpipe.storage import open_store

    chosen: dict[str, list[str]] = {c: [] for c in manifest.classes}
    for part in ("train", "validation", "test"):
        for sid in manifest.ids(part) if manifest.partition.get(part) else []:
            name = manifest.classes[manifest.labels[sid]]
            if len(chosen[name]) < per_class:
                chosen[name].append(sid)
    store = open_store(manifest)
    try:
        ids = [sid for group in chosen.values() for sid in group]
        arrays = dict(zip(ids, store.read_many(ids))) if ids else {}
    finally:
        store.close()
    return {c: [(sid, arrays[sid]) for sid in group] for c, group in chosen.items()}


def inspect_dataset(manifest: Manifest | str | os.PathLike, *, out: str | os.PathLike | None = None,
                    samples_per_class: int = 6, figures: bool = True) -> InspectReport:
    """Describe a prepared dataset and draw ``class_counts.png`` and ``samples.png``.

    Args:
        manifest: A `Manifest` or the path of ``manifest.json`` (or its folder).
        out: Folder for the figures (created if needed). Defaults to the manifest's folder.
        samples_per_class: Samples per class in ``samples.png`` (image data only). Defaults to 6.
        figures: Draw the figures. Defaults to `True`.

    Returns:
        An `InspectReport`.

    Raises:
        ManifestError: If the manifest cannot be read.
        StoreError: If a sample drawn for ``samples.png`` cannot be read.
        OutputWriteError: If a figure cannot be written (the message names it).
        OutputExistsError: If ``out`` holds a ``class_counts.png`` or ``samples.png`` kpipe did not draw.
    """
    from kpipe._validation import check_int
    from kpipe.training.artifacts import plot_class_counts, plot_samples
    from kpipe.training.run_folder import writing

    m = load_manifest(manifest)
    samples_per_class = check_int(samples_per_class, "samples_per_class", minimum=0, maximum=50)
    counts = class_counts(m)
    written: list[Path] = []
    if figures:
        folder = Path(out) if out is not None else (m.path.parent if m.path is not None else None)
        if folder is None:
            raise ArgumentError("An in-memory manifest has no folder: pass `out` for the figures.")
        if out is not None:  # a folder the user named: replace only figures kpipe drew
            _check_figures_replaceable(folder)
        with writing(folder):
            folder.mkdir(parents=True, exist_ok=True)
            path = plot_class_counts(counts, m.classes, folder / FIGURES[0],
                                     title=f"Samples per class ({imbalance_sentence(m)})")
            written += [path] if path else []
            if samples_per_class and is_image(tuple(m.sample_shape)):
                path = plot_samples(_sample_grid(m, samples_per_class), folder / FIGURES[1],
                                    title=f"{samples_per_class} samples per class ({m.sample_dtype})")
                written += [path] if path else []
    return InspectReport(m, counts, storage_bytes(m), skipped_by_kind(m), written)
