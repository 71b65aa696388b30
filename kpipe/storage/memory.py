"""``cache="memory"``: a store wrapper that holds a set of samples in RAM.

The samples (typically one partition) are read once, through the wrapped
store, into one array; batch reads are then NumPy fancy indexing on it. The
wrapper pickles as its recipe (the wrapped store and the IDs), not the array:
a process that receives it by pickling (``spawn``, ``forkserver``) loads its
own copy on its first read, while a ``fork`` child shares the parent's pages.
`MemoryStore.close` releases the array (a later read loads it again).

Rows (`MemoryStore.rows`): the cached samples are rows ``0 .. m - 1``, in
the order of `MemoryStore.cached_ids`; the wrapped store's row ``r`` is row
``m + r`` (read through, uncached). A batch of cached rows is one bounds check
and one ``np.take``.

Stores built with the same ``share_key`` (`kpipe.DataGenerator` uses the
manifest file, its size, mtime and inode, and the IDs) share one array while
any of them holds it, so generators built again and again over the same data
(a hyper-parameter search) hold one copy, even though Keras keeps every
dataset given to ``fit`` alive.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from kpipe.storage.base import _INT64, Store, as_rows, rows_max

_LOAD_BLOCK_BYTES = 64 << 20


class _Cached:
    """One loaded set of samples: the array, the ID -> row index, and the IDs."""

    __slots__ = ("__weakref__", "data", "ids", "index")

    def __init__(self, data: np.ndarray, index: dict[str, int], ids: list[str]) -> None:
        self.data, self.index, self.ids = data, index, ids


_SHARED: weakref.WeakValueDictionary[Any, _Cached] = weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()


class MemoryStore(Store):
    """A `Store` whose samples ``ids`` are loaded into memory.

    Args:
        store: The store to load from (IDs it holds beyond ``ids`` are still
            read from it, uncached).
        ids: IDs to hold in memory. Defaults to ``store.ids``.
        lazy: Load on the first read instead of now. Defaults to `False`.
        share_key: A hashable naming the data exactly (files and their
            versions, and ``ids``): stores with equal keys share one array.
            Defaults to `None` (no sharing).

    Attributes:
        nbytes: Bytes held (0 before loading).

    Example:
        >>> cached = MemoryStore(open_store(manifest), manifest.ids("train"))
        >>> cached.read_many(manifest.ids("train")[:64]).shape
    """

    def __init__(self, store: Store, ids: Sequence[str] | None = None, *, lazy: bool = False,
                 share_key: Any = None) -> None:
        super().__init__(store.sample_shape, store.dtype)
        self.store = store
        self.format = store.format
        self._ids = list(store.ids if ids is None else dict.fromkeys(ids))
        self.share_key = share_key
        self._cached: _Cached | None = None
        self._lock = threading.Lock()
        if not lazy:
            self.load()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cached"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def ids(self) -> Sequence[str]:
        """Every ID readable: the wrapped store's."""
        return self.store.ids

    @property
    def cached_ids(self) -> Sequence[str]:
        """The IDs held in memory."""
        return self._ids

    @property
    def nbytes(self) -> int:
        cached = self._cached
        return 0 if cached is None else int(cached.data.nbytes)

    def load(self) -> None:
        """Read the samples into memory (no-op when loaded; shared when another store holds the same key)."""
        if self._cached is not None:
            return
        if self.share_key is not None:
            with _SHARED_LOCK:
                hit = _SHARED.get(self.share_key)
            if hit is not None and hit.ids == self._ids:
                self._cached = hit
                return
        data = np.empty((len(self._ids), *self.sample_shape), dtype=self.dtype)
        step = max(1, _LOAD_BLOCK_BYTES // max(1, data[:1].nbytes))
        for lo in range(0, len(self._ids), step):
            self.store.read_into(self._ids[lo : lo + step], data[lo : lo + step])
        self.store.close()  # its memory maps would keep a second copy in RSS; reopened if an uncached ID is read
        cached = _Cached(data, {sid: i for i, sid in enumerate(self._ids)}, self._ids)
        if self.share_key is not None:
            with _SHARED_LOCK:
                _SHARED[self.share_key] = cached
        self._cached = cached

    def _loaded(self) -> tuple[np.ndarray, dict[str, int]]:
        cached = self._cached
        if cached is None:
            with self._lock:
                self.load()
                cached = self._cached
        return cached.data, cached.index

    @property
    def num_rows(self) -> int:
        return len(self._ids) + self.store.num_rows

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Rows of ``ids``: ``0 .. m - 1`` for the cached ones, ``m + `` the wrapped store's row for the others.

        Raises:
            SampleNotFoundError: If an ID is neither cached nor in the wrapped store.
        """
        _, index = self._loaded()
        try:
            return np.fromiter(map(index.__getitem__, ids), dtype=np.int64, count=len(ids))
        except KeyError:
            pass
        out = np.empty(len(ids), dtype=np.int64)
        missing = [i for i, sid in enumerate(ids) if sid not in index]
        out[missing] = len(self._ids) + self.store.rows([ids[i] for i in missing])
        for i, sid in enumerate(ids):
            row = index.get(sid)
            if row is not None:
                out[i] = row
        return out

    def read_rows(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        cached = self._cached
        if (out is None and cached is not None and type(rows) is np.ndarray and rows.dtype == _INT64
                and rows.ndim == 1 and len(rows) and rows_max(rows) < len(cached.data)):  # all cached: the fast path
            return cached.data.take(rows, axis=0)  # a new array (mode "raise" without `out` copies once)
        return super().read_rows(rows, out)

    def read_rows_into(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        data, _ = self._loaded()
        self._check_out(len(rows), out)
        arr = np.asarray(rows)
        if arr.dtype != _INT64 or arr.ndim != 1:
            arr = as_rows(arr, self.num_rows)
        if not len(arr):
            return out
        if rows_max(arr) < len(data):  # all cached (a negative row counts as huge)
            np.take(data, arr, axis=0, out=out[: len(arr)], mode="clip")  # "raise" would buffer a copy
            return out
        arr = as_rows(arr, self.num_rows)
        m = len(data)
        through = np.flatnonzero(arr >= m)
        out[through] = self.store.read_rows(arr[through] - m)
        cached = np.flatnonzero(arr < m)
        out[cached] = data[arr[cached]]
        return out

    def read_into(self, ids: Sequence[str], out: np.ndarray) -> np.ndarray:
        data, index = self._loaded()
        try:
            rows = np.fromiter(map(index.__getitem__, ids), dtype=np.int64, count=len(ids))
        except KeyError:
            return self._read_mixed(ids, out, data, index)
        self._check_out(len(ids), out)
        np.take(data, rows, axis=0, out=out[: len(ids)], mode="clip")  # "raise" would buffer a copy
        return out

    def _read_mixed(self, ids: Sequence[str], out: np.ndarray, data: np.ndarray,
                    index: dict[str, int]) -> np.ndarray:
        """IDs not all cached: read the uncached ones from the wrapped store."""
        missing = [i for i, sid in enumerate(ids) if sid not in index]
        out[missing] = self.store.read_many([ids[i] for i in missing])  # SampleNotFoundError if unknown
        for i, sid in enumerate(ids):
            row = index.get(sid)
            if row is not None:
                out[i] = data[row]
        return out

    def close(self) -> None:
        """Release the cached samples (and the wrapped store's files); the next read loads them again."""
        with self._lock:
            self._cached = None
        self.store.close()

