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
import functools
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kpipe._io import atomic_write_json, stat_identity
from kpipe._paths import check_sample_id, confined, is_safe_name, name_problem, open_regular
from kpipe._validation import loads_json
from kpipe.errors import ManifestError

FORMAT_VERSION = 1
"""Version of the manifest layout this kpipe writes and reads."""

MANIFEST_NAME = "manifest.json"
PARTITIONS = ("train", "validation", "test")

SCHEMA_FILE = "manifest.schema.json"
"""The JSON Schema of ``manifest.json``, shipped inside the package (``kpipe/manifest.schema.json``)."""

SAMPLE_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                 "float16", "float32", "float64")
"""Sample dtypes a manifest may name (the schema's ``sample.dtype`` enum): plain numeric types, never ``object``."""


# ------------------------------------------------------------------ schema
@functools.lru_cache(maxsize=1)
def manifest_schema() -> dict[str, Any]:
    """The JSON Schema of ``manifest.json`` (a dict, loaded once from the package)."""
    from importlib import resources

    return json.loads(resources.files("kpipe").joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


@functools.cache
def _validator(definition: str | None = None):
    """A jsonschema validator of the whole schema, or of one of its ``$defs`` (``definition``).

    JSON "integer" means an int here, never a float such as ``1.0`` nor a bool:
    values are checked before they are converted, not after.
    """
    import jsonschema

    base = jsonschema.Draft202012Validator
    strict = base.TYPE_CHECKER.redefine(
        "integer", lambda checker, value: isinstance(value, int) and not isinstance(value, bool))
    cls = jsonschema.validators.extend(base, type_checker=strict)
    schema = manifest_schema()
    if definition is not None:
        schema = {"$defs": schema["$defs"], "$ref": f"#/$defs/{definition}"}
    return cls(schema)


def _is_label(v: Any) -> bool:
    return type(v) is int and v >= 0  # bool (an int subclass) is refused


def _is_weight(v: Any) -> bool:
    return type(v) in (int, float) and v >= 0


_CHECKSUM = re.compile(r"^[0-9a-f]{8,128}$(?!\n)")


def _is_checksum(v: Any) -> bool:
    return type(v) is str and _CHECKSUM.match(v) is not None


_FAST_CHECKS = {"sample_id": is_safe_name, "label": _is_label, "weight": _is_weight, "checksum": _is_checksum}
"""Exact equivalents of the schema's per-sample ``$defs`` (a test checks each against jsonschema)."""


def _place(path) -> str:
    """A JSON path as people read it: ``storage.shards[0].ids[3]``."""
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return text or "the document"


def _id_message(sample_id: Any, place: str) -> str:
    return (f"sample ID {sample_id!r} in {place} is not allowed: {name_problem(sample_id)}. An ID must be one plain "
            "file name (no '/', '\\', NUL or control characters, not '.' or '..')")


def _schema_message(error) -> str:
    place = _place(error.absolute_path)
    if error.validator == "pattern" and error.validator_value == manifest_schema()["$defs"]["sample_id"]["pattern"]:
        if len(error.absolute_path) >= 1 and error.absolute_path[0] == "storage" and "file" in error.absolute_path:
            return f"shard file name {error.instance!r} in {place} is not allowed: {name_problem(error.instance)}"
        return _id_message(error.instance, place)
    if error.validator == "pattern" and error.validator_value == manifest_schema()["$defs"]["relative_path"]["pattern"]:
        return (f"{place} {error.instance!r} points outside the dataset folder (absolute paths, '..', backslashes "
                "and NUL are refused)")
    return f"{place}: {error.message}"


def validate_manifest_dict(d: Any, where: str = "") -> None:
    """Check the content of ``manifest.json`` against `manifest_schema`, before anything is converted.

    The per-sample collections (``labels``, ``partition`` lists,
    ``sample_weights``, ``sample_checksums``, shard ``ids``) can hold millions
    of values: the document is validated by jsonschema with each of them cut
    to its first item, and every item is then checked by an exact,
    vectorizable equivalent of its ``$defs`` entry (`_FAST_CHECKS`); an item
    that fails is re-validated by jsonschema for the message.

    Raises:
        ManifestError: One line naming the first problem and its place.
    """
    if not isinstance(d, dict):
        raise ManifestError(f"Manifest{where} is not a JSON object.")
    version = d.get("format_version")
    if type(version) is int and version > FORMAT_VERSION:
        raise ManifestError(
            f"Manifest{where} has format_version {version}, newer than this kpipe understands "
            f"({FORMAT_VERSION}). Upgrade kpipe."
        )
    head, bulk = _split_bulk(d)
    errors = sorted(_validator().iter_errors(head), key=lambda e: list(e.absolute_path))
    if errors:
        import jsonschema

        best = jsonschema.exceptions.best_match(errors)
        raise ManifestError(f"Manifest{where} is invalid: {_schema_message(best)}. It was not written by "
                            "`kpipe prepare`, or was edited; prepare the dataset again.")
    for place, definition, values in bulk:
        check = _FAST_CHECKS[definition]
        if all(map(check, values)):
            continue
        bad = next(v for v in values if not check(v))
        if definition == "sample_id":
            reason = name_problem(bad)
            raise ManifestError(f"Manifest{where} is invalid: sample ID {bad!r} in {place} is not allowed: {reason}. "
                                "An ID must be one plain file name (no '/', '\\', NUL or control characters, not "
                                "'.' or '..'); prepare the dataset again.")
        err = next(iter(_validator(definition).iter_errors(bad)), None)
        reason = err.message if err is not None else f"{bad!r} is not a valid {definition}"
        raise ManifestError(f"Manifest{where} is invalid: {place}: {reason}. It was not written by "
                            "`kpipe prepare`, or was edited; prepare the dataset again.")


def _split_bulk(d: dict) -> tuple[dict, list[tuple[str, str, Sequence[Any]]]]:
    """``d`` with each per-sample collection cut to its first item, and the collections to check in bulk."""
    head = dict(d)
    bulk: list[tuple[str, str, Sequence[Any]]] = []
    for key, value_def in (("labels", "label"), ("sample_weights", "weight")):
        value = d.get(key)
        if isinstance(value, dict) and len(value) > 1:
            head[key] = dict([next(iter(value.items()))])
            bulk.append((f"{key} (keys)", "sample_id", list(value)))
            bulk.append((f"{key} (values)", value_def, list(value.values())))
    checksums = d.get("sample_checksums")
    digests = checksums.get("digests") if isinstance(checksums, dict) else None
    if isinstance(digests, dict) and len(digests) > 1:
        head["sample_checksums"] = {**checksums, "digests": dict([next(iter(digests.items()))])}
        bulk.append(("sample_checksums.digests (keys)", "sample_id", list(digests)))
        bulk.append(("sample_checksums.digests (values)", "checksum", list(digests.values())))
    partition = d.get("partition")
    if isinstance(partition, dict):
        head["partition"] = {}
        for name, ids in partition.items():
            if isinstance(ids, list) and len(ids) > 1:
                head["partition"][name] = ids[:1]
                bulk.append((f"partition.{name}", "sample_id", ids))
            else:
                head["partition"][name] = ids
    storage = d.get("storage")
    if isinstance(storage, dict) and isinstance(storage.get("shards"), list):
        shards = []
        for k, shard in enumerate(storage["shards"]):
            if isinstance(shard, dict) and isinstance(shard.get("ids"), list) and len(shard["ids"]) > 1:
                bulk.append((f"storage.shards[{k}].ids", "sample_id", shard["ids"]))
                shard = {**shard, "ids": shard["ids"][:1]}
            shards.append(shard)
        head["storage"] = {**storage, "shards": shards}
    return head, bulk


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
        skipped: Raw inputs that were skipped: ``[{"path": ..., "reason": ...,
            "kind": ...}]`` (``kind``, optional, groups reasons: see
            `kpipe.ingest.SKIP_KINDS`).
        format_version: Manifest layout version (see `FORMAT_VERSION`).
        created: UTC time of writing, ISO 8601.
        kpipe_version: kpipe version that wrote the manifest.
        sample_checksums: Optional checksum of every stored sample:
            ``{"algorithm": "blake2b-128", "digests": {ID: hex}}``, computed on
            the decoded array (see `kpipe.verify.sample_digest`), so it holds
            in every storage format; `kpipe.verify.verify` checks it.
        path: File the manifest was loaded from or saved to (not serialized);
            relative storage roots resolve against its folder.
        file_identity: ``(st_dev, st_ino, st_size, st_mtime_ns)`` of that
            file when it was loaded or saved (not serialized); stores opened
            from this manifest fail if the file changes (the dataset was
            replaced under them), see `kpipe.storage.base.DatasetGuard`.
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
    sample_checksums: dict[str, Any] | None = None
    path: Path | None = dataclasses.field(default=None, compare=False, repr=False)
    file_identity: tuple[int, int, int, int] | None = dataclasses.field(default=None, compare=False, repr=False)

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
        """Folder of the stored samples (``storage["root"]``), inside the manifest's folder.

        A manifest read from (or saved to) a file has a relative root that must
        resolve inside the manifest's folder (no absolute path, no ``..``, no
        symbolic link leading out). Only a manifest built in code, without a
        `path` (e.g. the classic ``list_IDs`` / ``data_dir`` form of
        `DataGenerator`), may name an absolute root: the caller's own folder.

        Raises:
            ManifestError: If the root leaves the dataset folder, or is relative
                and the manifest has no `path`.
        """
        root = self.storage.get("root", "data")
        if self.path is None:
            if Path(root).is_absolute():
                return Path(root)
            raise ManifestError(
                "This manifest has no `path`, so its relative storage root "
                f"{str(root)!r} cannot be resolved. Load it with "
                "`Manifest.load(path)` or save it first."
            )
        return confined(self.path.parent, root, what="storage root", where=f" in {self.path}")

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
                two partitions, a label is out of range, or a weight or
                checksum is invalid.
        """
        where = f" in {self.path}" if self.path else ""
        self._check_header(where)
        self._check_labels(where)
        self._check_partition(where)
        self._check_weights(where)
        self._check_checksums(where)

    def _check_header(self, where: str) -> None:
        if self.format_version > FORMAT_VERSION:
            raise ManifestError(
                f"Manifest{where} has format_version {self.format_version}, newer than "
                f"this kpipe understands ({FORMAT_VERSION}). Upgrade kpipe."
            )
        if not self.classes:
            raise ManifestError(f"Manifest{where} lists no classes.")
        if len(set(self.classes)) != len(self.classes):
            raise ManifestError(f"Manifest{where} lists a class name twice: {self.classes}")
        if self.sample_dtype not in SAMPLE_DTYPES:
            raise ManifestError(
                f"Manifest{where} has sample_dtype {self.sample_dtype!r}; kpipe stores plain numeric samples: "
                f"{', '.join(SAMPLE_DTYPES)}."
            )
        if any(d < 1 for d in self.sample_shape):
            raise ManifestError(f"Manifest{where} has sample_shape {self.sample_shape}; every size must be >= 1.")

    def _check_labels(self, where: str) -> None:
        n = len(self.classes)
        for sid in self.labels:
            if not is_safe_name(sid):
                check_sample_id(sid, where=where)
        for sid, label in self.labels.items():
            if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= int(label) < n:
                raise ManifestError(
                    f"Sample {sid!r}{where} has label {label!r}, not a class index in "
                    f"[0, {n}). The manifest is corrupt; run `kpipe prepare` again."
                )

    def _check_partition(self, where: str) -> None:
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

    def _check_weights(self, where: str) -> None:
        for sid, w in (self.sample_weights or {}).items():
            if sid not in self.labels:
                raise ManifestError(f"Sample weight{where} for unknown sample {sid!r}.")
            if isinstance(w, bool) or not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise ManifestError(
                    f"Sample {sid!r}{where} has weight {w!r}; weights must be finite "
                    "and >= 0."
                )

    def _check_checksums(self, where: str) -> None:
        c = self.sample_checksums
        if c is None:
            return
        digests = c.get("digests") if isinstance(c, dict) else None
        if not (isinstance(c, dict) and isinstance(c.get("algorithm"), str) and isinstance(digests, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in digests.items())):
            raise ManifestError(
                f"Manifest{where} has a malformed `sample_checksums`: it must be "
                '{"algorithm": str, "digests": {ID: hex string}}.'
            )
        unknown = next((k for k in digests if k not in self.labels), None)
        if unknown is not None:
            raise ManifestError(f"Manifest{where} has a sample checksum for unknown sample {unknown!r}.")

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
        if self.sample_checksums is not None:
            d["sample_checksums"] = self.sample_checksums
        d["prepare"] = self.prepare
        d["skipped"] = self.skipped
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: Path | None = None) -> Manifest:
        """Build a manifest from the dict of ``manifest.json``.

        Besides `validate`, the keys that repeat what the rest says (``num_classes``, ``num_samples``,
        ``counts``, ``storage.num_shards``, each shard's ``num_samples``) must agree with it.

        Raises:
            ManifestError: If a required key is missing, the content is invalid, or a repeated key disagrees
                with the rest (the key is named).
        """
        where = f" {path}" if path else ""
        required = ("format_version", "classes", "labels", "partition", "sample", "storage")
        missing = [k for k in required if isinstance(d, Mapping) and k not in d]
        if missing:
            raise ManifestError(
                f"Manifest{where} lacks required keys: {', '.join(missing)}. "
                "Was it written by `kpipe prepare`?"
            )
        validate_manifest_dict(dict(d) if isinstance(d, Mapping) else d, where)
        try:
            manifest = cls(
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
                sample_checksums=d.get("sample_checksums"),
                path=path,
            )
        except ManifestError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise ManifestError(f"Manifest{where} is malformed: {e!r}") from e
        _check_derived(d, manifest, where)
        return manifest

    @classmethod
    def load(cls, path: str | os.PathLike) -> Manifest:
        """Read and validate a manifest.

        Args:
            path: ``manifest.json``, or the folder that holds it.

        Returns:
            The `Manifest`, with `path` set to the resolved file.

        If the dataset folder is missing because a ``prepare`` / ``convert
        --overwrite`` was killed between its two renames, the previous dataset
        is restored first (see `kpipe._staging.recover_interrupted`).

        Raises:
            ManifestError: If there is no manifest at ``path`` or it is invalid.
        """
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        if not path.exists() and not path.parent.exists() and path.name == MANIFEST_NAME:
            from kpipe._staging import recover_interrupted

            recover_interrupted(path.parent)  # a replacement killed between its two renames: restored
        if not path.is_file():
            raise ManifestError(
                f"No manifest at {path}. Run `kpipe prepare RAW_DIR --out {path.parent}` first."
            )
        try:
            with os.fdopen(open_regular(path, what="manifest"), "rb") as f:
                identity = stat_identity(os.fstat(f.fileno()))
                d = loads_json(f.read().decode("utf-8"), parse_constant=_refuse_constant)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
            raise ManifestError(f"Cannot read manifest {path}: {e}") from e
        if not isinstance(d, dict):
            raise ManifestError(f"Manifest {path} is not a JSON object.")
        manifest = cls.from_dict(d, path=path.resolve())
        manifest.file_identity = identity
        return manifest

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
        self.file_identity = stat_identity(os.stat(self.path))
        return self.path


def _check_derived(d: Mapping[str, Any], m: Manifest, where: str) -> None:
    """The keys of ``manifest.json`` that repeat what the rest says must agree with it.

    ``num_classes`` (``len(classes)``), ``num_samples`` (``len(labels)``), ``counts`` (per partition and class,
    from ``partition`` and ``labels``), ``storage.num_shards`` (``len(storage.shards)``) and each shard's
    ``num_samples`` (``len(ids)``). `Manifest.to_dict` writes them from the rest, so a difference means the file
    was edited; which one is right cannot be told, so the manifest is refused.

    Raises:
        ManifestError: Naming the key, its value and what the rest of the manifest gives.
    """
    def refuse(key: str, value: Any, rule: str, expected: Any) -> None:
        raise ManifestError(
            f"Manifest{where} is inconsistent: `{key}` is {value!r} but {rule} {expected!r}. It was edited after "
            "`kpipe prepare` wrote it; prepare the dataset again (or fix the key)."
        )

    if "num_classes" in d and d["num_classes"] != m.num_classes:
        refuse("num_classes", d["num_classes"], "`classes` lists", m.num_classes)
    if "num_samples" in d and d["num_samples"] != m.num_samples:
        refuse("num_samples", d["num_samples"], "`labels` holds", m.num_samples)
    counts = d.get("counts")
    if counts is not None:
        actual = {p: m.class_counts(p) for p in m.partition}
        if counts != actual:
            if not isinstance(counts, dict) or set(counts) != set(actual):
                given = sorted(counts) if isinstance(counts, dict) else counts
                refuse("counts", given, "the partitions are", sorted(actual))
            part = next(p for p in actual if counts[p] != actual[p])
            given = counts[part]
            if not isinstance(given, dict) or set(given) != set(actual[part]):
                refuse(f"counts.{part}", given, "its classes are", list(actual[part]))
            name = next(c for c in actual[part] if given[c] != actual[part][c])
            refuse(f"counts.{part}[{name!r}]", given[name], "partition and labels give", actual[part][name])
    shards = m.storage.get("shards")
    if isinstance(shards, list):
        if "num_shards" in m.storage and m.storage["num_shards"] != len(shards):
            refuse("storage.num_shards", m.storage["num_shards"], "`storage.shards` lists", len(shards))
        for k, shard in enumerate(shards):
            if "num_samples" in shard and shard["num_samples"] != len(shard["ids"]):
                refuse(f"storage.shards[{k}].num_samples", shard["num_samples"], "its `ids` list", len(shard["ids"]))


def _refuse_constant(name: str) -> float:
    raise ValueError(f"it holds {name}, which is not a JSON number (JSON numbers are finite)")


def load_manifest(manifest: Manifest | str | os.PathLike) -> Manifest:
    """Return ``manifest`` itself if it is a `Manifest`, else `Manifest.load` it."""
    return manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
