"""``kpipe verify``: is a prepared dataset sound, before anyone trains on it?

Two levels:

* `check_files` (cheap, raises): every file that the given partitions read
  exists, is a regular file and has the expected byte size. ``kpipe train``
  runs it before epoch 1, so a missing test file is found in seconds.
* `verify` (complete, reports): the manifest's labels and partitions, every
  file (existence, size, HDF5 shard sha256, shard ``ids`` and ``y`` against
  the manifest), then every sample read back: shape and dtype, per-sample
  checksums (``manifest.sample_checksums``), NaN / Inf values, and exact
  duplicate content across partitions (leakage, with the IDs). It returns a
  `VerifyReport` listing every problem; it does not stop at the first.

Per-sample checksums (`sample_digest`) are computed on the decoded array, not
on a file, so the same digest holds for a sample in ``.npy`` files and in HDF5
shards, and a sample read back from either can be checked against it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kpipe.errors import KpipeError, ManifestError, StoreError

CHECKSUM_ALGORITHM = "blake2b-128"
"""Name of the per-sample checksum recorded in ``manifest.sample_checksums["algorithm"]``."""

_BLOCK_BYTES = 32 << 20  # samples read per step by `verify`
_MAX_IDS = 20  # IDs listed per problem


def sample_digest(array: np.ndarray) -> str:
    """Checksum of one sample: 32 hex digits (`CHECKSUM_ALGORITHM`).

    BLAKE2b with a 16-byte digest (``hashlib.blake2b(digest_size=16)``) of the
    ASCII text ``"<dtype name>[<shape>]"`` (e.g. ``"uint8[8, 8, 1]"``)
    followed by the array's bytes in C order, little-endian. Equal arrays (same
    dtype, shape and values) have equal digests, whatever their byte order,
    memory layout or storage format.

    Example:
        >>> sample_digest(np.zeros((2, 2), np.uint8)) == sample_digest(np.zeros((2, 2), np.uint8))
        True
    """
    arr = np.asarray(array)
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not np.little_endian):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{arr.dtype.name}{list(arr.shape)}".encode("ascii"))
    h.update(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
    return h.hexdigest()


# ------------------------------------------------------------- cheap check
def _load(manifest) -> Any:
    from kpipe.manifest import load_manifest

    return load_manifest(manifest)


def _partition_of(manifest) -> dict[str, str]:
    out: dict[str, str] = {}
    for p, ids in manifest.partition.items():
        for sid in ids:
            out.setdefault(sid, p)
    return out


def _npy_expected(manifest) -> tuple[bytes, int]:
    from kpipe.storage.npy import expected_header

    header = expected_header(manifest.sample_shape, np.dtype(manifest.sample_dtype))
    nbytes = math.prod(manifest.sample_shape) * np.dtype(manifest.sample_dtype).itemsize
    return header, nbytes


def _npy_size_problem(path: str, size: int, manifest, header: bytes, nbytes: int) -> str | None:
    """Why a ``.npy`` file of ``size`` bytes cannot hold one sample of the manifest, or `None`."""
    if size == len(header) + nbytes:
        return None
    try:  # another header length (another numpy version): read the header and judge by it
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = reader(f)
            offset = f.tell()
    except (OSError, ValueError) as e:
        return f"is not a readable .npy file ({e})"
    want = f"{np.dtype(manifest.sample_dtype)}{list(manifest.sample_shape)}"
    if tuple(shape) != tuple(manifest.sample_shape) or np.dtype(dtype).newbyteorder("=") != np.dtype(
            manifest.sample_dtype):
        return f"holds {np.dtype(dtype)}{list(shape)}, the manifest says {want}"
    if size != offset + nbytes:
        return f"has {size} bytes, a {want} sample takes {offset + nbytes}; it is truncated or was modified"
    return None


def _stat_problem(path: str) -> tuple[int | None, str | None]:
    """``(size, None)`` for a regular file, else ``(None, why)``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, "does not exist"
    except OSError as e:
        return None, f"cannot be read ({e.strerror or e})"
    if not stat.S_ISREG(st.st_mode):
        return None, "is not a regular file"
    return st.st_size, None


def check_files(manifest, partitions: Iterable[str] | None = None) -> int:
    """Check that every file the samples of ``partitions`` need exists with the right size.

    Reads no sample: one ``stat`` per ``.npy`` file (size = header + sample
    bytes), or one per HDF5 shard (size recorded in the manifest). Meant as a
    pre-flight before training: a missing or truncated file is found before
    epoch 1.

    Args:
        manifest: A `Manifest`, or the path of its ``manifest.json`` (or folder).
        partitions: Partition names to check, e.g. ``["train", "validation",
            "test"]``. Defaults to every sample of the manifest.

    Returns:
        The number of files checked.

    Raises:
        StoreError: Naming the first file (and a sample ID) that is missing, not
            a regular file, or of the wrong size.
        ManifestError: If the manifest cannot be read or a partition is unknown.

    Example:
        >>> check_files("prepared/manifest.json", ["train", "validation", "test"])
        1797
    """
    m = _load(manifest)
    if partitions is None:
        ids = list(m.labels)
        part_of = _partition_of(m)
    else:
        ids, part_of = [], {}
        for p in partitions:
            for sid in m.ids(p):  # raises ManifestError for an unknown partition
                ids.append(sid)
                part_of[sid] = p
    fmt = m.storage.get("format")
    if fmt == "hdf5":
        return _check_shards(m, ids, part_of)
    if fmt != "npy":
        raise ManifestError(f"Unknown storage format {fmt!r} in {m.path}.")
    header, nbytes = _npy_expected(m)
    root = os.fspath(m.root)
    for sid in ids:
        path = f"{root}/{sid}.npy"
        size, why = _stat_problem(path)
        if why is None:
            why = _npy_size_problem(path, size, m, header, nbytes)
        if why is not None:
            where = f" (partition {part_of[sid]!r})" if sid in part_of else ""
            raise StoreError(f"Sample {sid!r}{where}: file {path} {why}. Restore the file or run `kpipe prepare` "
                             "again; `kpipe verify` lists every problem.")
    return len(ids)


def _check_shards(m, ids: Sequence[str], part_of: dict[str, str]) -> int:
    shards = m.storage.get("shards") or []
    shard_of = {sid: k for k, s in enumerate(shards) for sid in s.get("ids", [])}
    needed: dict[int, str] = {}
    for sid in ids:
        k = shard_of.get(sid)
        if k is None:
            raise StoreError(f"Sample {sid!r} (partition {part_of.get(sid, '?')!r}) is in none of the "
                             f"{len(shards)} shards of {m.path}. Run `kpipe prepare` again.")
        needed.setdefault(k, sid)
    for k, sid in sorted(needed.items()):
        path = os.fspath(m.root / shards[k]["file"])
        size, why = _stat_problem(path)
        expected = shards[k].get("num_bytes")
        if why is None and expected is not None and size != int(expected):
            why = f"has {size} bytes, the manifest says {expected}; it is truncated or was modified"
        if why is not None:
            raise StoreError(f"Shard {path} (holding sample {sid!r} of partition {part_of.get(sid, '?')!r}) {why}. "
                             "Restore the file or run `kpipe prepare` again; `kpipe verify` lists every problem.")
    return len(needed)


# ---------------------------------------------------------- complete check
@dataclasses.dataclass
class Problem:
    """One thing wrong with a dataset.

    Attributes:
        kind: ``"manifest"``, ``"label"``, ``"partition"``, ``"file"``,
            ``"checksum"``, ``"shape"``, ``"unreadable"``, ``"nonfinite"`` or
            ``"leakage"``.
        message: One line for people.
        ids: Sample IDs concerned (at most 20 listed; see ``num_ids``).
        num_ids: How many samples are concerned.
        file: The file concerned, if any.
    """

    kind: str
    message: str
    ids: list[str] = dataclasses.field(default_factory=list)
    num_ids: int = 0
    file: str | None = None


@dataclasses.dataclass
class VerifyReport:
    """What `verify` found. ``ok`` is true when there is no problem.

    Attributes:
        manifest: Path of the manifest checked.
        num_samples: Samples in the manifest.
        num_classes: Classes in the manifest.
        partitions: Partition name -> number of samples.
        storage_format: ``"npy"`` or ``"hdf5"``.
        num_files: Files checked for existence and size.
        num_read: Samples read back (0 with ``content=False``).
        checksum_algorithm: Algorithm of ``manifest.sample_checksums``, or `None`.
        num_checksums: Per-sample checksums compared.
        num_shard_hashes: HDF5 shard sha256 values compared.
        duplicate_groups: Groups of samples with equal content (all partitions).
        conflicting_label_groups: Of those, groups whose samples have different labels.
        leakage: Groups of equal samples found in more than one partition,
            each ``{partition: [IDs]}``.
        nonfinite_ids: Samples holding NaN or Inf values.
        problems: Every `Problem` found.
    """

    manifest: str
    num_samples: int = 0
    num_classes: int = 0
    partitions: dict[str, int] = dataclasses.field(default_factory=dict)
    storage_format: str | None = None
    num_files: int = 0
    num_read: int = 0
    checksum_algorithm: str | None = None
    num_checksums: int = 0
    num_shard_hashes: int = 0
    duplicate_groups: int = 0
    conflicting_label_groups: int = 0
    leakage: list[dict[str, list[str]]] = dataclasses.field(default_factory=list)
    nonfinite_ids: list[str] = dataclasses.field(default_factory=list)
    problems: list[Problem] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """`True` when no problem was found."""
        return not self.problems

    def add(self, kind: str, message: str, ids: Sequence[str] = (), file: str | None = None) -> None:
        """Record one problem."""
        self.problems.append(Problem(kind, message, list(ids[:_MAX_IDS]), len(ids), file))

    def summary(self) -> str:
        """One line: ``OK: ...`` or ``FAILED: N problems (...)``, then ``-> manifest``."""
        parts = ", ".join(f"{p} {n}" for p, n in self.partitions.items())
        facts = [f"{self.num_samples} samples in {self.num_classes} classes ({parts})"]
        if self.storage_format is not None:
            facts.append(f"{self.num_files} {self.storage_format} file{'s' if self.num_files != 1 else ''} checked")
        if self.num_shard_hashes:
            facts.append(f"{self.num_shard_hashes} shard sha256 compared")
        if self.num_read:
            facts.append(f"{self.num_read} samples read")
            facts.append(f"{self.num_checksums} sample checksums compared" if self.num_checksums
                         else "no sample checksums in the manifest")
            facts.append(f"{self.duplicate_groups} duplicate group{'s' if self.duplicate_groups != 1 else ''}"
                         + (f" ({self.conflicting_label_groups} with conflicting labels)"
                            if self.conflicting_label_groups else ""))
        if self.ok:
            return f"OK: {'; '.join(facts)} -> {self.manifest}"
        kinds: dict[str, int] = {}
        for p in self.problems:
            kinds[p.kind] = kinds.get(p.kind, 0) + 1
        listed = ", ".join(f"{n} {k}" for k, n in kinds.items())
        n = len(self.problems)
        return f"FAILED: {n} problem{'s' if n != 1 else ''} ({listed}); {'; '.join(facts)} -> {self.manifest}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``kpipe verify --json`` prints), with ``"ok"`` first."""
        d = dataclasses.asdict(self)
        return {"ok": self.ok, **d}

    def to_json(self) -> str:
        """`to_dict` as one line of JSON."""
        return json.dumps(self.to_dict(), ensure_ascii=False)


def _check_structure(d: dict[str, Any], report: VerifyReport) -> None:
    """Labels are integers in range; every ID in exactly one partition, once; partitions name known IDs."""
    classes = d.get("classes")
    labels = d.get("labels")
    partition = d.get("partition")
    if not isinstance(classes, list) or not isinstance(labels, dict) or not isinstance(partition, dict):
        report.add("manifest", "the manifest lacks `classes` (a list), `labels` or `partition` (objects)")
        return
    n = len(classes)
    bad = [sid for sid, v in labels.items() if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n]
    if bad:
        shown = ", ".join(f"{sid!r}: {labels[sid]!r}" for sid in bad[:3])
        report.add("label", f"{len(bad)} label{'s are' if len(bad) != 1 else ' is'} not an integer class index in "
                            f"[0, {n}) (e.g. {shown})", bad)
    seen: dict[str, str] = {}
    twice, unknown = [], []
    for p, ids in partition.items():
        if not isinstance(ids, list):
            report.add("partition", f"partition {p!r} is not a list of IDs")
            continue
        for sid in ids:
            if sid in seen:
                twice.append(f"{sid} ({seen[sid]}, {p})")
            else:
                seen[sid] = p
            if sid not in labels:
                unknown.append(str(sid))
    if twice:
        report.add("partition", f"{len(twice)} sample{'s are' if len(twice) != 1 else ' is'} listed twice "
                                f"(e.g. {twice[0]}); each ID must be in exactly one partition, once",
                   [t.split(" (")[0] for t in twice])
    if unknown:
        report.add("partition", f"{len(unknown)} ID{'s' if len(unknown) != 1 else ''} in a partition "
                                f"{'have' if len(unknown) != 1 else 'has'} no label (e.g. {unknown[0]!r})", unknown)
    orphans = [sid for sid in labels if sid not in seen]
    if orphans:
        report.add("partition", f"{len(orphans)} labelled sample{'s are' if len(orphans) != 1 else ' is'} in no "
                                f"partition (e.g. {orphans[0]!r})", orphans)
    if len(set(classes)) != len(classes):
        report.add("manifest", f"a class name is listed twice: {classes}")


def _read_json(path: Path) -> tuple[Path, dict[str, Any] | None, str | None]:
    from kpipe.manifest import MANIFEST_NAME

    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return path, None, f"no manifest at {path}; run `kpipe prepare RAW --out {path.parent}` first"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return path, None, f"cannot read {path}: {e}"
    if not isinstance(d, dict):
        return path, None, f"{path} is not a JSON object"
    return path, d, None


def verify(manifest, *, content: bool = True, progress: Callable[[int], None] | None = None,
           on_start: Callable[[int], None] | None = None) -> VerifyReport:
    """Check a prepared dataset and report every problem found.

    Checks, in order (a failed step does not hide the others):

    1. the manifest: labels are integers in ``[0, num_classes)``; every ID is
       in exactly one partition, once; partitions name only labelled IDs; the
       keys that repeat the rest agree with it (``num_classes``, ``num_samples``,
       ``counts``, shard counts: see `kpipe.manifest.Manifest.from_dict`); every
       class has a sample and the train partition is not empty;
    2. files: every sample file (npy) or shard (hdf5) exists, is a regular
       file and has the expected size; shard sha256 match the manifest;
       each shard's ``x`` shape and dtype, ``ids`` and ``y`` agree with it;
    3. with ``content=True``, every sample is read back: its shape and dtype,
       its checksum against ``manifest.sample_checksums`` (if recorded), NaN /
       Inf values; and samples of equal content (same `sample_digest`) in
       more than one partition are reported as leakage, with their IDs.

    Args:
        manifest: A `Manifest`, or the path of ``manifest.json`` (or its folder).
        content: Read every sample (step 3). Defaults to `True`; `False` checks
            only the manifest and the files (fast).
        progress: Called with the number of samples read since the last call.
        on_start: Called once with the number of samples to read.

    Returns:
        A `VerifyReport`; ``report.ok`` is `False` if anything is wrong. A
        manifest that cannot be read is a problem in the report, not an error.

    Example:
        >>> report = verify("prepared/manifest.json")
        >>> print(report.summary())
        OK: 1797 samples in 10 classes (train 1438, validation 180, test 179); ... -> .../manifest.json
    """
    from kpipe.manifest import Manifest

    if isinstance(manifest, Manifest):
        if manifest.path is None:
            report = VerifyReport(manifest="None")
            report.add("manifest", "the manifest has no path, so its storage root cannot be found; save or load it "
                                   "from a file first")
            return report
        d = manifest.to_dict()
        path = manifest.path
    else:
        path, d, error = _read_json(Path(manifest))
        if error is not None:
            report = VerifyReport(manifest=str(path))
            report.add("manifest", error, file=str(path))
            return report
    report = VerifyReport(manifest=str(path))
    _check_structure(d, report)
    if not report.ok:
        return report
    try:
        m = manifest if isinstance(manifest, Manifest) else Manifest.from_dict(d, path=Path(path).resolve())
    except ManifestError as e:
        report.add("manifest", str(e), file=str(path))
        return report
    report.manifest = str(m.path)
    report.num_samples, report.num_classes = m.num_samples, m.num_classes
    report.partitions = {p: len(ids) for p, ids in m.partition.items()}
    report.storage_format = m.storage.get("format")
    if m.sample_checksums is not None:
        report.checksum_algorithm = m.sample_checksums.get("algorithm")
        if report.checksum_algorithm != CHECKSUM_ALGORITHM:
            report.add("manifest", f"unknown sample checksum algorithm {report.checksum_algorithm!r} (this kpipe "
                                   f"computes {CHECKSUM_ALGORITHM}); checksums not compared")
    _check_coverage(m, report)
    try:
        readable = _check_all_files(m, report)
        if content:
            _check_content(m, readable, report, progress, on_start)
    except ManifestError as e:  # e.g. a storage root that leaves the dataset folder: a problem, as the others
        report.add("manifest", str(e), file=str(path))
    return report


def _check_coverage(m, report: VerifyReport) -> None:
    """A class without any sample, and a missing or empty train partition, are problems.

    Neither is in a dataset kpipe wrote: prepare drops a class left without samples (``class-dropped``) and
    gives every class at least one train sample (train's fraction is > 0); convert copies classes and
    partitions. A model trained on such a manifest has an output no sample teaches (and ``class_weight
    balanced`` divides by its zero count), or nothing to train on.
    """
    totals = np.bincount(np.fromiter(m.labels.values(), dtype=np.int64, count=len(m.labels)),
                         minlength=m.num_classes)
    empty = [name for name, n in zip(m.classes, totals) if n == 0]
    if empty:
        shown = ", ".join(repr(c) for c in empty[:5]) + (", ..." if len(empty) > 5 else "")
        report.add("label", f"{len(empty)} class{'es have' if len(empty) != 1 else ' has'} no sample in any "
                            f"partition ({shown}); kpipe prepare never writes such a class. Remove it from `classes` "
                            "(renumbering the labels) or prepare the dataset again")
    if not m.partition.get("train"):
        what = "empty" if "train" in m.partition else "missing"
        report.add("partition", f"the train partition is {what}; kpipe prepare always puts samples in train. "
                                "Prepare the dataset again")


def _check_all_files(m, report: VerifyReport) -> list[str]:
    """Existence, size, sha256 and shard metadata; returns the IDs worth reading."""
    part_of = _partition_of(m)
    fmt = m.storage.get("format")
    if fmt == "npy":
        header, nbytes = _npy_expected(m)
        root = os.fspath(m.root)
        bad: dict[str, list[str]] = {}
        first_reason: dict[str, str] = {}
        ok = []
        for sid in m.labels:
            path = f"{root}/{sid}.npy"
            size, why = _stat_problem(path)
            if why is None:
                why = _npy_size_problem(path, size, m, header, nbytes)
            report.num_files += 1
            if why is None:
                ok.append(sid)
                continue
            key = why if why in ("does not exist", "is not a regular file") else "size"
            bad.setdefault(key, []).append(sid)
            first_reason.setdefault(key, f"{path} {why}")
        for key, ids in bad.items():
            parts = sorted({part_of.get(i, "?") for i in ids})
            report.add("file", f"{len(ids)} sample file{'s' if len(ids) != 1 else ''} "
                               f"({', '.join(parts)}) {'is' if len(ids) == 1 else 'are'} wrong: "
                               f"e.g. {first_reason[key]}", ids, file=first_reason[key].split(" ")[0])
        return ok
    if fmt == "hdf5":
        return _check_all_shards(m, report)
    report.add("manifest", f"unknown storage format {fmt!r}")
    return []


def _check_all_shards(m, report: VerifyReport) -> list[str]:
    from kpipe.storage.hdf5 import file_sha256

    shards = m.storage.get("shards")
    if not isinstance(shards, list):
        report.add("manifest", "storage format hdf5 without a `storage.shards` list")
        return []
    in_shards: dict[str, int] = {}
    ok: list[str] = []
    for shard in shards:
        ids = [str(i) for i in shard.get("ids", [])]
        for sid in ids:
            in_shards[sid] = in_shards.get(sid, 0) + 1
        path = os.fspath(m.root / str(shard.get("file")))
        report.num_files += 1
        size, why = _stat_problem(path)
        expected = shard.get("num_bytes")
        if why is None and expected is not None and size != int(expected):
            why = f"has {size} bytes, the manifest says {expected}; it is truncated or was modified"
        if why is None and shard.get("sha256"):
            report.num_shard_hashes += 1
            if file_sha256(path) != shard["sha256"]:
                why = "does not match its sha256 in the manifest; it is corrupt or was modified"
        if why is None:
            why = _shard_metadata_problem(path, ids, m)
        if why is not None:
            report.add("file", f"shard {path} {why}", ids, file=path)
            continue
        ok.extend(ids)
    twice = [sid for sid, n in in_shards.items() if n > 1]
    if twice:
        report.add("file", f"{len(twice)} sample{'s are' if len(twice) != 1 else ' is'} stored in more than one "
                           f"shard row (e.g. {twice[0]!r})", twice)
    missing = [sid for sid in m.labels if sid not in in_shards]
    if missing:
        report.add("file", f"{len(missing)} labelled sample{'s are' if len(missing) != 1 else ' is'} in no shard "
                           f"(e.g. {missing[0]!r})", missing)
    unknown = [sid for sid in in_shards if sid not in m.labels]
    if unknown:
        report.add("file", f"{len(unknown)} shard row{'s hold' if len(unknown) != 1 else ' holds'} an ID without "
                           f"a label (e.g. {unknown[0]!r})", unknown)
    return [sid for sid in ok if sid in m.labels and in_shards[sid] == 1]


def _shard_metadata_problem(path: str, ids: list[str], m) -> str | None:
    """Why a shard's own ``x`` / ``ids`` / ``y`` disagree with the manifest, or `None`."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            x = f["x"]
            want = (len(ids), *m.sample_shape)
            if x.shape != want or x.dtype != np.dtype(m.sample_dtype):
                return f"holds x of {x.dtype}{list(x.shape)}, the manifest says {np.dtype(m.sample_dtype)}{list(want)}"
            stored = [i.decode("utf-8") if isinstance(i, bytes) else str(i) for i in f["ids"][()]]
            if stored != ids:
                k = next((j for j, (a, b) in enumerate(zip(stored, ids)) if a != b), min(len(stored), len(ids)))
                shard_id, manifest_id = stored[k] if k < len(stored) else None, ids[k] if k < len(ids) else None
                return (f"lists other IDs than the manifest (row {k}: shard {shard_id!r}, manifest {manifest_id!r}); "
                        "rows would be read as the wrong samples")
            y = np.asarray(f["y"][()])
            want_y = np.array([m.labels.get(i, -1) for i in ids], dtype=np.int64)
            if y.shape != want_y.shape or not np.array_equal(y, want_y):
                k = int(np.flatnonzero(y != want_y)[0]) if y.shape == want_y.shape else 0
                return f"holds labels y that disagree with the manifest (e.g. row {k}, sample {ids[k]!r})"
    except (OSError, KeyError, ValueError, IndexError) as e:
        return f"is not a readable kpipe shard ({e})"
    return None


def _read_samples(m, ids: list[str], report: VerifyReport, progress):
    """Yield ``(id, array)`` for every readable sample of ``ids``, block by block; report the unreadable ones."""
    from kpipe.errors import SampleNotFoundError
    from kpipe.storage import open_store

    errors = (StoreError, SampleNotFoundError, OSError, ValueError)
    step = max(1, _BLOCK_BYTES // max(1, math.prod(m.sample_shape) * np.dtype(m.sample_dtype).itemsize))
    unreadable: list[str] = []
    first_error = ""
    try:
        store = open_store(m)
    except KpipeError as e:
        report.add("unreadable", f"cannot open the store: {e}")
        return
    try:
        for lo in range(0, len(ids), step):
            block = ids[lo : lo + step]
            try:
                yield from zip(block, store.read_many(block))
            except errors:
                for sid in block:  # find the culprits, one by one
                    try:
                        yield sid, store.read(sid)
                    except errors as e:
                        unreadable.append(sid)
                        first_error = first_error or str(e)
            if progress:
                progress(len(block))
    finally:
        store.close()
    if unreadable:
        report.add("unreadable", f"{len(unreadable)} sample{'s' if len(unreadable) != 1 else ''} cannot be read "
                                 f"back (e.g. {first_error})", unreadable)


def _check_content(m, ids: list[str], report: VerifyReport, progress, on_start) -> None:
    expected = (m.sample_checksums or {}).get("digests", {}) if report.checksum_algorithm == CHECKSUM_ALGORITHM else {}
    # Read partition by partition, in manifest order (shard order for HDF5).
    order_index = {sid: k for k, sid in enumerate(sid for ids_ in m.partition.values() for sid in ids_)}
    ids = sorted(ids, key=lambda s: order_index.get(s, len(order_index)))
    digests: dict[str, list[str]] = {}
    mismatched, nonfinite = [], []
    if on_start:
        on_start(len(ids))
    for sid, arr in _read_samples(m, ids, report, progress):
        digest = sample_digest(arr)
        digests.setdefault(digest, []).append(sid)
        if sid in expected:
            report.num_checksums += 1
            if expected[sid] != digest:
                mismatched.append(sid)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            nonfinite.append(sid)
        report.num_read += 1
    if mismatched:
        report.add("checksum", f"{len(mismatched)} sample{'s do' if len(mismatched) != 1 else ' does'} not match "
                               f"{'their' if len(mismatched) != 1 else 'its'} checksum in the manifest (e.g. "
                               f"{mismatched[0]!r}); the data changed after prepare", mismatched)
    report.nonfinite_ids = nonfinite
    if nonfinite:
        report.add("nonfinite", f"{len(nonfinite)} sample{'s hold' if len(nonfinite) != 1 else ' holds'} NaN or "
                                f"Inf values (e.g. {nonfinite[0]!r}); a model trained on them gets NaN weights",
                   nonfinite)
    _report_duplicates(m, digests, report)


def _report_duplicates(m, digests: dict[str, list[str]], report: VerifyReport) -> None:
    """Count groups of identical samples; those spanning partitions are leakage (with their IDs)."""
    part_of = _partition_of(m)
    for group in digests.values():
        if len(group) < 2:
            continue
        report.duplicate_groups += 1
        if len({m.labels[s] for s in group}) > 1:
            report.conflicting_label_groups += 1
        by_part: dict[str, list[str]] = {}
        for sid in group:
            by_part.setdefault(part_of.get(sid, "?"), []).append(sid)
        if len(by_part) > 1:
            report.leakage.append(by_part)
    if report.leakage:
        first = report.leakage[0]
        shown = " = ".join(f"{p} {ids_[0]!r}" for p, ids_ in first.items())
        n = len(report.leakage)
        report.add("leakage", f"{n} group{'s' if n != 1 else ''} of identical samples span{'s' if n == 1 else ''} "
                              f"partitions (e.g. {shown}); evaluation on them measures memory, not generalisation. "
                              "Run `kpipe prepare` again (its default --duplicates group keeps each group in one "
                              "partition)", [sid for g in report.leakage for ids_ in g.values() for sid in ids_])
