"""The store interface: one API over every storage format.

A store maps sample IDs to arrays of one shape and dtype. Stores that hold
file handles open them lazily in whichever process reads, and pickle as their
*recipe* (constructor arguments), never as open handles, so they are safe to
send to `fork`, `spawn` and `forkserver` worker processes.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kpipe._io import stat_identity
from kpipe.errors import StoreError


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


class Store(abc.ABC):
    """Read-only access to the samples of a prepared dataset.

    Subclasses implement `read_into`; `read` and `read_many` are built on it.

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
