"""The store interface: one API over every storage format.

A store maps sample IDs to arrays of one shape and dtype. Stores that hold
file handles open them lazily in whichever process reads, and pickle as their
*recipe* (constructor arguments), never as open handles, so they are safe to
send to `fork`, `spawn` and `forkserver` worker processes.

Samples are read by ID (`Store.read_many`, `Store.read_into`) or by *row*
(`Store.rows`, `Store.read_rows`): a row is the store's own number of a
sample, an integer, so a reader that asks for the same samples again and
again (`kpipe.DataGenerator`) maps its IDs to rows once and keeps strings and
dictionary lookups out of its per-batch path. Rows are stable for the life of
a store and of its pickled copies.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kpipe._io import stat_identity
from kpipe.errors import ArgumentError, SampleNotFoundError, StoreError


class DatasetGuard:
    """Detects a dataset replaced under a reader.

    Records the identity (device, inode, size, mtime) of the dataset's
    ``manifest.json`` as it was when the manifest was loaded. ``kpipe prepare``
    and ``kpipe convert`` always write a new manifest file (a new inode), so if
    the dataset folder is replaced while a process reads it, `check` fails
    instead of letting the process read the new files through the old
    manifest's ID -> file / row map. Picklable (plain values).

    Args:
        path: The manifest file.
        identity: ``(st_dev, st_ino, st_size, st_mtime_ns)`` of it when loaded.
    """

    __slots__ = ("identity", "path")

    def __init__(self, path: str | os.PathLike, identity: tuple[int, int, int, int]) -> None:
        self.path = str(path)
        self.identity = tuple(identity)

    def check(self) -> None:
        """Raise `StoreError` if the manifest file is not the one that was loaded (one ``stat``)."""
        try:
            now = stat_identity(os.stat(self.path))
        except OSError:
            now = None
        if now != self.identity:
            what = "removed" if now is None else "replaced"
            raise StoreError(
                f"The dataset {Path(self.path).parent} changed while this process was reading it: its manifest.json "
                f"was {what} after it was loaded (was the dataset prepared or converted again?). Samples read now "
                "could come from the new files through the old manifest; restart to read the new dataset."
            )

    def __getstate__(self) -> tuple:
        return (self.path, self.identity)

    def __setstate__(self, state: tuple) -> None:
        self.path, self.identity = state


_INT64 = np.dtype(np.int64)
_UINT64 = np.dtype(np.uint64)


def rows_max(rows: np.ndarray) -> int:
    """The largest of int64 ``rows`` seen as unsigned: a negative row counts as huge (one pass for both bounds)."""
    return int(rows.view(_UINT64).max())


def as_rows(rows, num_rows: int) -> np.ndarray:
    """``rows`` as an int64 array of rows in ``[0, num_rows)`` (no copy when it is one already).

    Raises:
        ArgumentError: If ``rows`` is not a 1-D array of integers, or a row is
            out of range (a row comes from `Store.rows`).
    """
    arr = rows if type(rows) is np.ndarray else np.asarray(rows)
    if arr.dtype != _INT64:
        if arr.size == 0:
            arr = arr.astype(np.int64)
        elif arr.dtype.kind not in "iu":
            raise ArgumentError(f"`rows` must be integers (from `store.rows(ids)`). Received: rows={rows!r}")
        else:
            arr = arr.astype(np.int64)
    if arr.ndim != 1:
        raise ArgumentError(f"`rows` must be a 1-D array of row numbers. Received: rows of shape {arr.shape}")
    if len(arr) and rows_max(arr) >= num_rows:
        bad = int(arr[(arr < 0) | (arr >= num_rows)][0])
        raise ArgumentError(
            f"`rows` must be row numbers in [0, {num_rows}) given by `store.rows(ids)`. Received: row={bad}"
        )
    return arr


class Store(abc.ABC):
    """Read-only access to the samples of a prepared dataset.

    Subclasses implement `read_into` (by ID); `read` and `read_many` are
    built on it. Stores that address samples by number (HDF5 rows, an array
    in memory) also override `rows` and `read_rows_into`, the row-based path;
    the defaults here number the samples by their position in `ids`.

    Attributes:
        sample_shape: Shape of one sample.
        dtype: NumPy dtype of stored samples.
    """

    format: str = ""

    def __init__(self, sample_shape: Sequence[int], dtype: str | np.dtype) -> None:
        self.sample_shape = tuple(int(d) for d in sample_shape)
        self.dtype = np.dtype(dtype)
        self.guard: DatasetGuard | None = None
        """Set by `open_store`: checked before files are opened, it fails if the dataset was replaced."""
        self._row_index: dict[str, int] | None = None  # ID -> row, built by the first `rows` call

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_row_index"] = None  # rebuilt where needed, not sent to worker processes
        return state

    @property
    @abc.abstractmethod
    def ids(self) -> Sequence[str]:
        """IDs of the samples this store holds (when known), else empty."""

    @abc.abstractmethod
    def read_into(self, ids: Sequence[str], out: np.ndarray) -> np.ndarray:
        """Read ``ids`` into ``out[: len(ids)]``, in order, duplicates allowed.

        Args:
            ids: Sample IDs; may repeat (bootstrap batches repeat IDs).
            out: Array of shape ``(>= len(ids), *sample_shape)`` and the
                store's dtype.

        Returns:
            ``out``.

        Raises:
            SampleNotFoundError: If an ID is not in the store.
            StoreError: If a file is unreadable, truncated or corrupt (the
                message names the file and the ID).
        """

    def _check_out(self, n: int, out: np.ndarray) -> None:
        """Raise `ValueError` unless ``out`` can hold ``n`` samples of this store."""
        if out.shape[1:] != self.sample_shape or out.dtype != self.dtype or len(out) < n:
            raise ValueError(
                f"`out` must have shape (>= {n}, *{self.sample_shape}) and dtype {self.dtype}. "
                f"Received: out.shape={out.shape}, out.dtype={out.dtype}"
            )

    def read(self, sample_id: str) -> np.ndarray:
        """Read one sample: array of shape `sample_shape` and dtype `dtype`."""
        out = np.empty((1, *self.sample_shape), dtype=self.dtype)
        return self.read_into([sample_id], out)[0]

    @property
    def sample_nbytes(self) -> int:
        """Bytes of one stored sample."""
        return int(np.prod(self.sample_shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def num_rows(self) -> int:
        """Rows `read_rows` accepts: ``0 .. num_rows - 1`` (by default ``len(ids)``)."""
        return len(self.ids)

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """The rows of ``ids``, to read them with `read_rows`.

        Args:
            ids: Sample IDs; may repeat.

        Returns:
            int64 array of shape ``(len(ids),)``.

        Raises:
            SampleNotFoundError: If an ID is not in the store (by default: not in `ids`).
        """
        index = getattr(self, "_row_index", None)
        if index is None:
            index = {sid: r for r, sid in enumerate(self.ids)}
            self._row_index = index
        try:
            return np.fromiter(map(index.__getitem__, ids), dtype=np.int64, count=len(ids))
        except KeyError as e:
            raise self._id_not_found(e.args[0]) from None

    def _id_not_found(self, sample_id: str) -> SampleNotFoundError:
        """The error of `rows` for an ID the store does not hold (stores word where they looked)."""
        return SampleNotFoundError(f"Sample {sample_id!r} is not in this {self.format or 'store'} store (not among "
                                   "its `ids`). Check the ID against the manifest's `labels`.")

    def read_rows_into(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Read ``rows`` into ``out[: len(rows)]``, in order, duplicates allowed.

        Args:
            rows: Row numbers (from `rows`): int array of shape ``(n,)``.
            out: Array of shape ``(>= n, *sample_shape)`` and the store's dtype.

        Returns:
            ``out``.

        Raises:
            ArgumentError: If a row is out of range.
            StoreError: As `read_into`.
        """
        rows = as_rows(rows, self.num_rows)
        ids = self.ids
        return self.read_into([ids[r] for r in rows.tolist()], out)

    def read_rows(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Read samples by row into one array of shape ``(len(rows), *sample_shape)``.

        The row-based twin of `read_many`: ``store.read_rows(store.rows(ids))``
        equals ``store.read_many(ids)``.

        Args:
            rows: Row numbers (from `rows`), in the order wanted; duplicates allowed.
            out: Optional preallocated array to fill (see `read_rows_into`).

        Returns:
            The filled array (``out`` itself, or a view of its first rows); a
            new array when ``out`` is `None`.
        """
        n = len(rows)
        if out is None:
            out = np.empty((n, *self.sample_shape), dtype=self.dtype)
        self.read_rows_into(rows, out)
        return out[:n]

    def read_many(self, ids: Sequence[str], out: np.ndarray | None = None) -> np.ndarray:
        """Read several samples into one array of shape ``(len(ids), *sample_shape)``.

        Args:
            ids: Sample IDs, in the order wanted; duplicates allowed.
            out: Optional preallocated array to fill (see `read_into`).

        Returns:
            The filled array (``out`` itself, or a view of its first rows).
        """
        if out is None:
            out = np.empty((len(ids), *self.sample_shape), dtype=self.dtype)
        self.read_into(ids, out)
        return out[: len(ids)]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release open files and threads; the store reopens them on the next read."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StoreWriter(abc.ABC):
    """Writes samples in one storage format; `finish` returns ``manifest.storage``.

    Samples are added in any order; `finish` receives the final labels and the
    order in which a sharded format should lay samples out (e.g. partition by
    partition), so that formats whose files hold labels can be written once,
    with the final label of every sample.
    """

    format: str = ""

    @abc.abstractmethod
    def add(self, sample_id: str, array: np.ndarray) -> None:
        """Add one sample (an array of the writer's shape and dtype)."""

    def add_many(self, ids: Sequence[str], arrays: np.ndarray) -> None:
        """Add ``len(ids)`` samples: ``arrays`` has shape ``(len(ids), *sample_shape)``."""
        for sid, arr in zip(ids, arrays):
            self.add(sid, arr)

    @abc.abstractmethod
    def finish(self, labels: dict[str, int], order: Sequence[str] | None = None) -> dict:
        """Write what is left and return the ``storage`` dict of the manifest.

        Args:
            labels: Final sample ID -> class index, for every added sample.
            order: The added IDs in the order to lay them out (sharded
                formats); default: the order they were added.

        Returns:
            A JSON-ready dict with at least ``"format"`` and ``"root"``.
        """

    def abort(self) -> None:  # noqa: B027 - optional hook
        """Remove temporary files after a failure (the staging folder is removed anyway)."""
