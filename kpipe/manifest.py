"""The manifest: what a prepared dataset holds and where.

``manifest.json`` sits at the top of a prepared dataset. It lists the classes,
every sample ID with its class index, the partition (train / validation /
test ID lists), the sample shape and dtype, how samples are stored, the
per-partition class counts, the parameters ``kpipe prepare`` ran with and the
raw inputs it skipped (with reasons). Everything a generator or a training run
needs is in it, so no data file has to be opened to plan an epoch.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kpipe._io import atomic_write_json
from kpipe.errors import ManifestError

FORMAT_VERSION = 1
"""Version of the manifest layout this kpipe writes and reads."""

MANIFEST_NAME = "manifest.json"
PARTITIONS = ("train", "validation", "test")


@dataclasses.dataclass
class Manifest:
    """Description of a prepared dataset (the content of ``manifest.json``).

    Attributes:
        classes: Class names, in label order: ``classes[i]`` is the name of
            label ``i``.
        labels: Sample ID -> class index (int in ``[0, len(classes))``).
        partition: Partition name (``"train"``, ``"validation"``, ``"test"``)
            -> list of sample IDs, in a fixed order.
        sample_shape: Shape of one sample, e.g. ``(8, 8, 1)``.
        sample_dtype: NumPy dtype name of stored samples, e.g. ``"uint8"``.
        storage: How samples are stored: ``{"format": "npy", "root": "data"}``
            with ``root`` relative to the manifest's folder; for HDF5 shards
            ``{"format": "hdf5", "root": "shards", "compression": "none",
            "shard_size": int, "num_shards": int, "shards": [{"file":
            "shard-00000.h5", "num_samples": int, "num_bytes": int,
            "sha256": str, "ids": [...]}, ...]}`` (row ``r`` of a shard holds
            ``ids[r]``). See `kpipe.storage`.
        sample_weights: Optional sample ID -> per-sample weight (float >= 0).
        prepare: The parameters ``kpipe prepare`` ran with (provenance).
        skipped: Raw inputs that were skipped: ``[{"path": ..., "reason": ...}]``.
        format_version: Manifest layout version (see `FORMAT_VERSION`).
        created: UTC time of writing, ISO 8601.
        kpipe_version: kpipe version that wrote the manifest.
        path: File the manifest was loaded from or saved to (not serialized);
            relative storage roots resolve against its folder.
    """

    classes: list[str]
    labels: dict[str, int]
    partition: dict[str, list[str]]
    sample_shape: tuple[int, ...]
    sample_dtype: str
    storage: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"format": "npy", "root": "data"}
    )
    sample_weights: dict[str, float] | None = None
    prepare: dict[str, Any] = dataclasses.field(default_factory=dict)
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)
    format_version: int = FORMAT_VERSION
    created: str | None = None
    kpipe_version: str | None = None
    path: Path | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.sample_shape = tuple(int(d) for d in self.sample_shape)
        self.classes = [str(c) for c in self.classes]
        self.validate()

    # ------------------------------------------------------------------ views
    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def num_samples(self) -> int:
        """Number of samples over all partitions."""
        return len(self.labels)

    @property
    def root(self) -> Path:
        """Absolute folder of the stored samples (``storage["root"]``)."""
        root = Path(self.storage.get("root", "data"))
        if not root.is_absolute():
            if self.path is None:
                raise ManifestError(
                    "This manifest has no `path`, so its relative storage root "
                    f"{str(root)!r} cannot be resolved. Load it with "
                    "`Manifest.load(path)` or save it first."
                )
            root = self.path.parent / root
        return root

    def ids(self, partition: str) -> list[str]:
        """Sample IDs of one partition, in manifest order.

        Raises:
            ManifestError: If the partition does not exist.
        """
        if partition not in self.partition:
            raise ManifestError(
                f"Unknown partition {partition!r}. This manifest has: "
                f"{', '.join(self.partition)}. Received: partition={partition!r}"
            )
        return list(self.partition[partition])

    def label_array(self, ids: Sequence[str]) -> np.ndarray:
        """Class indices of ``ids``, int64 array of shape ``(len(ids),)``."""
        return np.fromiter((self.labels[i] for i in ids), dtype=np.int64, count=len(ids))

    def class_counts(self, partition: str) -> dict[str, int]:
        """Class name -> number of samples of that class in ``partition``."""
        counts = np.bincount(self.label_array(self.ids(partition)), minlength=self.num_classes)
        return {name: int(n) for name, n in zip(self.classes, counts)}

    # ------------------------------------------------------------- validation
    def validate(self) -> None:
        """Check internal consistency.

        Raises:
            ManifestError: If a partition names an unknown ID, an ID appears in
                two partitions, a label is out of range, or a weight is invalid.
        """
        where = f" in {self.path}" if self.path else ""
        if self.format_version > FORMAT_VERSION:
            raise ManifestError(
                f"Manifest{where} has format_version {self.format_version}, newer than "
                f"this kpipe understands ({FORMAT_VERSION}). Upgrade kpipe."
            )
        if not self.classes:
            raise ManifestError(f"Manifest{where} lists no classes.")
        if len(set(self.classes)) != len(self.classes):
            raise ManifestError(f"Manifest{where} lists a class name twice: {self.classes}")
        n = len(self.classes)
        for sid, label in self.labels.items():
            if not isinstance(label, (int, np.integer)) or not 0 <= int(label) < n:
                raise ManifestError(
                    f"Sample {sid!r}{where} has label {label!r}, not a class index in "
                    f"[0, {n}). The manifest is corrupt; run `kpipe prepare` again."
                )
        seen: dict[str, str] = {}
        for part, ids in self.partition.items():
            for sid in ids:
                if sid not in self.labels:
                    raise ManifestError(
                        f"Partition {part!r}{where} names sample {sid!r}, which has no "
                        "label. The manifest is corrupt; run `kpipe prepare` again."
                    )
                if sid in seen:
                    raise ManifestError(
                        f"Sample {sid!r}{where} is in both {seen[sid]!r} and {part!r}; "
                        "partitions must not overlap."
                    )
                seen[sid] = part
        if self.sample_weights is not None:
            for sid, w in self.sample_weights.items():
                if sid not in self.labels:
                    raise ManifestError(f"Sample weight{where} for unknown sample {sid!r}.")
                if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                    raise ManifestError(
                        f"Sample {sid!r}{where} has weight {w!r}; weights must be finite "
                        "and >= 0."
                    )
        try:
            np.dtype(self.sample_dtype)
        except TypeError as e:
            raise ManifestError(f"Manifest{where} has an unknown sample_dtype {self.sample_dtype!r}.") from e

    # ------------------------------------------------------------ (de)serialize
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict written to ``manifest.json``."""
        from kpipe._version import __version__

        d: dict[str, Any] = {
            "format_version": self.format_version,
            "kpipe_version": self.kpipe_version or __version__,
            "created": self.created
            or _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "classes": list(self.classes),
            "num_classes": self.num_classes,
            "num_samples": self.num_samples,
            "sample": {"shape": list(self.sample_shape), "dtype": self.sample_dtype},
            "storage": self.storage,
            "counts": {p: self.class_counts(p) for p in self.partition},
            "partition": {p: list(ids) for p, ids in self.partition.items()},
            "labels": {k: int(v) for k, v in self.labels.items()},
        }
        if self.sample_weights is not None:
            d["sample_weights"] = {k: float(v) for k, v in self.sample_weights.items()}
        d["prepare"] = self.prepare
        d["skipped"] = self.skipped
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: Path | None = None) -> Manifest:
        """Build a manifest from the dict of ``manifest.json``.

        Raises:
            ManifestError: If a required key is missing or the content is invalid.
        """
        where = f" {path}" if path else ""
        required = ("format_version", "classes", "labels", "partition", "sample", "storage")
        missing = [k for k in required if k not in d]
        if missing:
            raise ManifestError(
                f"Manifest{where} lacks required keys: {', '.join(missing)}. "
                "Was it written by `kpipe prepare`?"
            )
        try:
            return cls(
                classes=list(d["classes"]),
                labels={str(k): int(v) for k, v in d["labels"].items()},
                partition={str(p): [str(i) for i in ids] for p, ids in d["partition"].items()},
                sample_shape=tuple(d["sample"]["shape"]),
                sample_dtype=str(d["sample"]["dtype"]),
                storage=dict(d["storage"]),
                sample_weights=(
                    {str(k): float(v) for k, v in d["sample_weights"].items()}
                    if d.get("sample_weights") is not None
                    else None
                ),
                prepare=dict(d.get("prepare", {})),
                skipped=list(d.get("skipped", [])),
                format_version=int(d["format_version"]),
                created=d.get("created"),
                kpipe_version=d.get("kpipe_version"),
                path=path,
            )
        except ManifestError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise ManifestError(f"Manifest{where} is malformed: {e!r}") from e

    @classmethod
    def load(cls, path: str | os.PathLike) -> Manifest:
        """Read and validate a manifest.

        Args:
            path: ``manifest.json``, or the folder that holds it.

        Returns:
            The `Manifest`, with `path` set to the resolved file.

        Raises:
            ManifestError: If there is no manifest at ``path`` or it is invalid.
        """
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(
                f"No manifest at {path}. Run `kpipe prepare RAW_DIR --out {path.parent}` first."
            )
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ManifestError(f"Cannot read manifest {path}: {e}") from e
        if not isinstance(d, dict):
            raise ManifestError(f"Manifest {path} is not a JSON object.")
        return cls.from_dict(d, path=path.resolve())

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write ``manifest.json`` atomically (temporary file, then rename).

        Args:
            path: Target file, or a folder to write ``manifest.json`` into.
                Defaults to `self.path`.

        Returns:
            The path written; `self.path` is set to it.
        """
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ManifestError("`Manifest.save()` needs a path. Received: path=None")
        if target.is_dir():
            target = target / MANIFEST_NAME
        d = self.to_dict()
        self.created, self.kpipe_version = d["created"], d["kpipe_version"]
        atomic_write_json(target, d)
        self.path = target.resolve()
        return self.path


def load_manifest(manifest: Manifest | str | os.PathLike) -> Manifest:
    """Return ``manifest`` itself if it is a `Manifest`, else `Manifest.load` it."""
    return manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
