"""The unit of work of ``kpipe prepare``: one chunk of inputs -> written samples + metadata.

A `ChunkTask` names a contiguous run of inputs (in input order) and where
to write them; `convert_chunk` loads, checks and checksums each input and
writes the good ones itself, into the staging folder:

* ``format="npy"``: one ``<ID>.npy`` per sample, each written atomically
  (``<ID>.npy.<random>.partial``, then renamed);
* ``format="hdf5"`` with a ``shard_name`` (tasks on a cluster): the task
  writes its own shard, streamed and renamed into place when complete
  (`kpipe.storage.hdf5.ShardBuilder`);
* ``format="hdf5"`` without (tasks on this machine): the task hands the kept
  arrays back, and the driver streams them into shards in input order (no
  bytes are pickled with threads, and the shards do not depend on how the
  work was cut into tasks).

Names are deterministic (the sample ID, the shard name), so a task that runs
twice (a Dask worker lost and its task retried) replaces its files atomically
with the same bytes. Apart from that local HDF5 case, a task returns only
metadata (`ChunkResult`): kept positions, per-sample checksums, skip kinds and
reasons, value notes, the shard record; no sample bytes travel back.

Tasks pickle small: paths as strings, labels as one array, CSV values as
one 2-D array. Nothing is imported per task.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kpipe._io import output_write_error
from kpipe._paths import check_sample_id
from kpipe.errors import StoreError
from kpipe.ingest import ImageOptions, SampleError, count_nonfinite, decode_image, describe_array, load_npy
from kpipe.storage.hdf5 import ShardBuilder
from kpipe.storage.npy import expected_header
from kpipe.verify import sample_digest

_OPEN_READ = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_OPEN_WRITE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


@dataclasses.dataclass(frozen=True)
class ChunkTask:
    """One chunk of inputs to convert (picklable, small).

    Attributes:
        index: Task number (input order); names the shard.
        ids: Sample IDs, in input order.
        labels: Class index per sample, int64 ``(n,)`` (as scanned; the
            driver fixes shards up if classes are renumbered).
        paths: The input file per sample (images, npy), else `None`.
        values: CSV feature rows, float32 ``(n, F)``, else `None`.
        layout: ``"images"``, ``"npy"`` or ``"csv"``.
        image_options: How images are decoded.
        shape: The dataset's sample shape.
        dtype: The dataset's sample dtype name.
        format: ``"npy"`` or ``"hdf5"``.
        root: Absolute path of the folder to write into (``data/`` or
            ``shards/`` of the staging folder; it must exist).
        compression: HDF5 compression.
        shard_name: HDF5: the shard file this task writes, or `None` to hand
            the arrays back to the driver.
    """

    index: int
    ids: tuple[str, ...]
    labels: np.ndarray
    paths: tuple[str, ...] | None
    values: np.ndarray | None
    layout: str
    image_options: ImageOptions | None
    shape: tuple[int, ...]
    dtype: str
    format: str
    root: str
    compression: str = "none"
    shard_name: str | None = None


@dataclasses.dataclass
class ChunkResult:
    """What one task did (metadata only).

    Attributes:
        index: The task's number.
        kept: Positions (in the task) of the samples written, increasing.
        digests: `kpipe.verify.sample_digest` of each kept sample.
        skips: ``(position, kind, reason, detail)`` per input that was not used.
        notes: Value changes made by the image rules, counted.
        shard: The shard record (hdf5; `None` when nothing was kept, or npy).
        arrays: The kept samples, ``(len(kept), *shape)`` (hdf5 without a
            ``shard_name``), else `None`.
        seconds: Wall time of the task; ``cpu_seconds``: its thread's CPU time.
    """

    index: int
    kept: list[int]
    digests: list[str]
    skips: list[tuple[int, str, str, str | None]]
    notes: Counter
    shard: dict | None = None
    arrays: np.ndarray | None = None
    seconds: float = 0.0
    cpu_seconds: float = 0.0


class _FastNpy:
    """Reads an input ``.npy`` whose header is exactly the dataset's in one ``read``; `None` otherwise."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.header = expected_header(shape, dtype)
        self.shape, self.dtype = shape, dtype
        self.count = int(np.prod(shape, dtype=np.int64))
        self.size = len(self.header) + self.count * dtype.itemsize

    def read(self, path: str) -> np.ndarray | None:
        try:
            fd = os.open(path, _OPEN_READ)  # O_NONBLOCK: a FIFO does not block the open
        except OSError:
            return None  # `load_npy` reports it
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            data = os.read(fd, self.size + 1)
        except OSError:
            return None
        finally:
            os.close(fd)
        if len(data) != self.size or not data.startswith(self.header):
            return None  # another header (byte order, Fortran order, numpy version), size or dtype: the full path
        return np.frombuffer(data, self.dtype, self.count, len(self.header)).reshape(self.shape)


def _load(task: ChunkTask, k: int, fast: _FastNpy | None) -> tuple[np.ndarray, list[str]]:
    if task.layout == "csv":
        return task.values[k], []
    path = task.paths[k]
    if task.layout == "images":
        return decode_image(Path(path), task.image_options or ImageOptions())
    arr = fast.read(path) if fast is not None else None
    return (load_npy(Path(path)) if arr is None else arr), []


def write_npy_file(root: str, sample_id: str, header: bytes, array: np.ndarray) -> None:
    """Write ``root/<ID>.npy`` (``header`` + the array's bytes) atomically.

    Raises:
        ManifestError: If ``sample_id`` is not a plain file name.
        StoreError: If the file cannot be written (disk full...): an output
            error, never the input's fault.
    """
    check_sample_id(sample_id)
    final = f"{root}/{sample_id}.npy"
    tmp = f"{final}.{uuid.uuid4().hex[:12]}.partial"
    try:
        fd = os.open(tmp, _OPEN_WRITE, 0o666)
        try:
            data = memoryview(np.ascontiguousarray(array)).cast("B")
            for part in (header, data):
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise output_write_error(e, getattr(e, "filename", None) or final) from None


def _load_checked(task: ChunkTask, k: int, fast, shape: tuple[int, ...], want: np.dtype):
    """Input ``k`` of the chunk as ``(array, notes)``, or its skip ``(kind, reason, detail)``.

    Only *input* errors become a skip (unreadable or undecodable file, another
    shape or dtype, NaN / Inf); anything else propagates.
    """
    try:
        arr, notes = _load(task, k, fast)
        if arr.shape != shape or arr.dtype != want:
            kind = "shape" if arr.shape != shape else "dtype"
            raise SampleError(kind, f"array is {describe_array(arr.dtype, arr.shape)}, the dataset's (most common) "
                                    f"is {describe_array(want, shape)}")
        bad = count_nonfinite(arr)
        if bad:
            raise SampleError("nonfinite", f"{bad} NaN/Inf value{'s' if bad != 1 else ''} among {arr.size}")
    except SampleError as e:
        return None, (e.kind, str(e), e.detail)
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # PIL raises SyntaxError on some corrupt files
        return None, ("unreadable", f"unreadable: {e}", None)
    except Exception as e:
        return None, ("unreadable", f"unreadable: {type(e).__name__}: {e}", None)
    return (arr, notes), None


class _Sink:
    """Where a chunk's good samples go: its own shard (cluster tasks), an array for the driver, or npy files."""

    def __init__(self, task: ChunkTask, n: int, shape: tuple[int, ...], want: np.dtype) -> None:
        self.task, self.shard, self.arrays, self.count = task, None, None, 0
        self.header = expected_header(shape, want) if task.format == "npy" else b""
        if task.format == "hdf5" and task.shard_name is not None:
            try:
                self.shard = ShardBuilder(task.root, task.shard_name, n, shape, want, compression=task.compression,
                                          shard_index=task.index)
            except OSError as e:
                raise output_write_error(e, Path(task.root) / task.shard_name) from None
        elif task.format == "hdf5":
            self.arrays = np.empty((n, *shape), want)

    def add(self, k: int, arr: np.ndarray) -> None:
        if self.shard is not None:
            self.shard.add(self.task.ids[k], int(self.task.labels[k]), arr)
        elif self.arrays is not None:
            self.arrays[self.count] = arr
        else:
            write_npy_file(self.task.root, self.task.ids[k], self.header, arr)  # an output error propagates
        self.count += 1

    def finish(self, result: ChunkResult) -> None:
        if self.shard is not None:
            result.shard = self.shard.finish()
        elif self.arrays is not None:
            result.arrays = self.arrays[: self.count]

    def abort(self) -> None:
        if self.shard is not None:
            self.shard.abort()


def convert_chunk(task: ChunkTask) -> ChunkResult:
    """Load, check, checksum and write one chunk of inputs; return the metadata.

    Only *input* errors (reading or decoding a raw file, a sample of another
    shape or dtype, NaN / Inf) make a skip; an error *writing* the output
    raises (`StoreError`) and stops prepare: a full disk is never a bad input.

    Raises:
        StoreError: If the output cannot be written, or the output folder is
            not visible to this process (a Dask worker on a machine that does
            not share the output path).
    """
    start, cpu = time.perf_counter(), time.thread_time()
    if not os.path.isdir(task.root):
        raise StoreError(
            f"The output folder {task.root} does not exist on this worker (host {os.uname().nodename}). With "
            "--backend dask, OUT must be on a file system shared by every worker and this machine, at the same "
            "path."
        )
    want = np.dtype(task.dtype)
    shape = tuple(task.shape)
    fast = _FastNpy(shape, want) if task.layout == "npy" else None
    result = ChunkResult(task.index, [], [], [], Counter())
    sink = _Sink(task, len(task.ids), shape, want)
    try:
        for k in range(len(task.ids)):
            loaded, skipped = _load_checked(task, k, fast, shape, want)
            if skipped is not None:
                result.skips.append((k, *skipped))
                continue
            arr, notes = loaded
            result.digests.append(sample_digest(arr))
            result.kept.append(k)
            if notes:
                result.notes.update(notes)
            sink.add(k, arr)
        sink.finish(result)
    except BaseException as e:
        sink.abort()
        if isinstance(e, OSError) and not isinstance(e, StoreError):
            raise output_write_error(e, getattr(e, "filename", None) or task.root) from None
        raise
    result.seconds = time.perf_counter() - start
    result.cpu_seconds = time.thread_time() - cpu
    return result


def rebuild_shard_task(args: tuple[str, dict, Sequence[str], dict[str, int], tuple[int, ...], str, str]) -> Any:
    """`kpipe.storage.hdf5.rebuild_shard` as one task: ``(root, record, keep, labels, shape, dtype, compression)``."""
    from kpipe.storage.hdf5 import rebuild_shard

    root, record, keep, labels, shape, dtype, compression = args
    try:
        return rebuild_shard(root, record, keep, labels, shape, dtype, compression=compression)
    except OSError as e:
        if isinstance(e, StoreError):
            raise
        raise output_write_error(e, getattr(e, "filename", None) or Path(root) / record["file"]) from None
