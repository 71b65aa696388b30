"""Per-ID ``.npy`` files: ``ROOT/<ID>.npy``, one file per sample.

This is the layout of the classic Keras ``DataGenerator``
(``np.load(root / (ID + ".npy"))``). Reads are sped up two ways, both exact:

* all samples share shape and dtype, so every file has the same ``.npy``
  header; a read is one ``open``, one ``preadv`` that fills the header bytes
  and the caller's batch row at once (no intermediate array, no header
  parse) and one ``close``; the header bytes are compared, and a file whose
  header differs falls back to ``np.load`` and is checked;
* on machines with 4 or more CPUs, batches are read by a thread pool (file
  I/O releases the GIL): one pool of `READER_THREADS` threads per process,
  shared by every `NpyStore`, so generators built again and again do not add
  threads. Below 4 CPUs a batch is read in the calling thread: on 2 cores the
  pool measured slower (10.1 vs 8.7 µs of CPU per 12 KiB sample, 13.3 vs 11.5
  µs wall, ``tools/bench.py --npy-floor``), and training needs the other core.

The floor is the file system: ``open`` + ``preadv`` + ``close`` of one 12 KiB
file costs 6.8 µs of CPU in a C loop on the 2-core development machine, 5.5x
what numpy's copy of the sample from memory costs; this store spends 8.7 µs.
Datasets read many times are faster as HDF5 shards (`kpipe.DataGenerator`
says so once for a large npy partition: ``kpipe.generator.NPY_HINT_SAMPLES``).
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from kpipe._io import atomic_save_npy, describe_os_error, output_write_error
from kpipe._paths import check_sample_id, open_regular
from kpipe.errors import SampleNotFoundError, StoreError
from kpipe.storage.base import Store, StoreWriter

_THREADS_MIN_BATCH = 8
_HAS_PREADV = hasattr(os, "preadv")

def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


POOL_MIN_CPUS = 4
"""Batches are split over the reader pool on machines with at least this many CPUs (see the module docstring)."""

DEFAULT_READ_THREADS = min(8, _cpus()) if _cpus() >= POOL_MIN_CPUS else 1
"""`NpyStore`'s default ``num_threads``: the CPUs (at most 8) from `POOL_MIN_CPUS` on, else 1."""

READER_THREADS = max(1, min(8, _cpus()) - 1)
"""Threads of the process-wide reader pool (the calling thread reads a share too)."""

_READER_POOL: ThreadPoolExecutor | None = None
_READER_POOL_LOCK = threading.Lock()


def reader_pool() -> ThreadPoolExecutor:
    """The process-wide pool that reads the files of a batch (created on first use; a forked child gets its own)."""
    global _READER_POOL
    if _READER_POOL is None:
        with _READER_POOL_LOCK:
            if _READER_POOL is None:
                _READER_POOL = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="kpipe-npy")
    return _READER_POOL


def _forget_reader_pool() -> None:
    """In a forked child: the parent's reader threads (and its lock's state) do not exist here."""
    global _READER_POOL, _READER_POOL_LOCK
    _READER_POOL = None
    _READER_POOL_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_reader_pool)


def expected_header(sample_shape: Sequence[int], dtype: np.dtype) -> bytes:
    """The exact header bytes ``np.save`` writes for this shape and dtype."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(sample_shape)}
    )
    return buf.getvalue()


class NpyStore(Store):
    """Samples stored as ``ROOT/<ID>.npy``.

    Args:
        root: Folder of the ``.npy`` files.
        sample_shape: Shape of one sample, e.g. ``(8, 8, 1)``.
        dtype: Dtype of stored samples, e.g. ``"uint8"``.
        ids: IDs held, if known (used only by `ids`; reads go to disk).
        num_threads: Chunks one batch is read in (the calling thread reads
            one, the process-wide `reader_pool` the others); ``0`` or ``1``
            reads in the calling thread. Defaults to `DEFAULT_READ_THREADS`
            (the CPUs, at most 8, on machines with 4 CPUs or more; else 1).
        follow_links: Read a sample file that is a symbolic link. Defaults
            to `True`; `open_store` passes `False` for a manifest loaded from
            a file (a link planted in a dataset could lead outside it).

    Only regular files are read: a FIFO or a device named ``<ID>.npy`` gives
    a `StoreError` (it is opened without blocking and checked before reading).

    Example:
        >>> store = NpyStore("prepared/data", (8, 8, 1), "uint8")
        >>> store.read_many(["3_digit_0003", "3_digit_0013"]).shape
        (2, 8, 8, 1)
    """

    format = "npy"

    def __init__(self, root: str | os.PathLike, sample_shape: Sequence[int], dtype: str | np.dtype,
                 ids: Sequence[str] | None = None, *, num_threads: int | None = None,
                 follow_links: bool = True) -> None:
        super().__init__(sample_shape, dtype)
        self.root = Path(root)
        self._ids = list(ids) if ids is not None else []
        self.num_threads = DEFAULT_READ_THREADS if num_threads is None else int(num_threads)
        self._root_str = os.fspath(self.root)
        self.follow_links = bool(follow_links)
        self._open_flags = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
                            | (0 if follow_links else getattr(os, "O_NOFOLLOW", 0)))
        self._header = expected_header(self.sample_shape, self.dtype)
        self._nbytes = int(np.prod(self.sample_shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def ids(self) -> Sequence[str]:
        return self._ids

    def path(self, sample_id: str) -> Path:
        """File of one sample: ``root / (ID + ".npy")``."""
        return self.root / f"{sample_id}.npy"

    def _read_range(self, ids: Sequence[str], flat: np.ndarray, lo: int, hi: int) -> None:
        """Read ``ids[lo:hi]`` into the rows ``flat[lo:hi]`` (the batch seen as bytes, one row per sample)."""
        root, header, extra = self._root_str, bytearray(len(self._header)), bytearray(1)
        read = self._read_preadv if _HAS_PREADV else self._read_plain
        for i in range(lo, hi):
            sample_id = ids[i]
            path = f"{root}/{sample_id}.npy"  # a str: no Path object per sample
            if not read(sample_id, path, flat[i], header, extra):  # another header (numpy version...): load, check
                self._read_checked(sample_id, path, flat[i])

    def _missing(self, sample_id: str, path: str) -> SampleNotFoundError:
        return SampleNotFoundError(
            f"Sample {sample_id!r} has no file {path}. Check the ID, or run `kpipe prepare` again."
        )

    def _read_preadv(self, sample_id: str, path: str, row: np.ndarray, header: bytearray, extra: bytearray) -> bool:
        """One open, one preadv (header | data | 1 byte that must not exist), one close; False if the header differs.

        ``row``: the sample's bytes in the batch; ``header`` and ``extra``: scratch buffers (overwritten).
        """
        try:
            fd = os.open(path, self._open_flags)  # O_NONBLOCK: a FIFO does not block the open
        except FileNotFoundError:
            raise self._missing(sample_id, path) from None
        except OSError as e:
            self._check_regular(sample_id, path)  # a refused link says so
            raise StoreError(f"Sample {sample_id!r}: cannot read {path}: {describe_os_error(e)}") from e
        try:
            got = os.preadv(fd, [header, row, extra], 0)
        except OSError as e:
            got = e
        finally:
            os.close(fd)
        if isinstance(got, OSError):  # e.g. ESPIPE: not a regular file
            self._check_regular(sample_id, path)
            raise StoreError(f"Sample {sample_id!r}: cannot read {path}: {describe_os_error(got)}") from got
        if header != self._header:
            return False
        if got != len(header) + self._nbytes:
            self._check_regular(sample_id, path)
            held = "more than " if got > len(header) + self._nbytes else ""
            raise StoreError(
                f"Sample {sample_id!r}: file {path} holds {held}{got - len(header)} data bytes, expected "
                f"{self._nbytes}; it is truncated or corrupt. Run `kpipe prepare` again."
            )
        return True

    def _read_plain(self, sample_id: str, path: str, row: np.ndarray, header: bytearray, extra: bytearray) -> bool:
        """Without ``os.preadv``: read the header, then the data into the row; False if the header differs."""
        try:
            with os.fdopen(self._open_regular(sample_id, path), "rb", buffering=0) as f:
                if f.read(len(self._header)) != self._header:
                    return False
                n = f.readinto(memoryview(row))
                if n != self._nbytes or f.read(1):
                    size = os.fstat(f.fileno()).st_size - len(self._header)
                    raise StoreError(
                        f"Sample {sample_id!r}: file {path} holds {size} data bytes, expected "
                        f"{self._nbytes}; it is truncated or corrupt. Run `kpipe prepare` again."
                    )
                return True
        except FileNotFoundError:
            raise self._missing(sample_id, path) from None
        except StoreError:
            raise
        except OSError as e:
            raise StoreError(f"Sample {sample_id!r}: cannot read {path}: {e}") from e

    def _read_checked(self, sample_id: str, path: str, row: np.ndarray) -> None:
        """Load a file whose header is not the expected one with ``np.load``, and check its shape and dtype."""
        try:
            with os.fdopen(self._open_regular(sample_id, path), "rb") as f:
                arr = np.load(f, allow_pickle=False)
        except StoreError:
            raise
        except (OSError, ValueError, EOFError) as e:
            raise StoreError(f"Sample {sample_id!r}: file {path} is not a readable .npy file: {e}") from e
        if arr.shape != self.sample_shape or arr.dtype != self.dtype:
            raise StoreError(
                f"Sample {sample_id!r}: file {path} holds {arr.dtype}{list(arr.shape)}, the manifest says "
                f"{self.dtype}{list(self.sample_shape)}."
            )
        row[...] = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)

    def _open_regular(self, sample_id: str, path: str) -> int:
        try:
            return open_regular(path, what=f"file of sample {sample_id!r}", follow_links=self.follow_links)
        except FileNotFoundError:
            raise self._missing(sample_id, path) from None
        except StoreError:
            raise
        except OSError as e:
            raise StoreError(f"Sample {sample_id!r}: cannot read {path}: {describe_os_error(e)}") from e

    def _check_regular(self, sample_id: str, path: str) -> None:
        """Raise `StoreError` if ``path`` is not a regular file (a FIFO, a device, a refused link)."""
        os.close(self._open_regular(sample_id, path))

    def read_into(self, ids: Sequence[str], out: np.ndarray) -> np.ndarray:
        self._check_out(len(ids), out)
        if self.guard is not None:
            self.guard.check()  # one stat per batch: the dataset was not replaced
        if not out.flags.c_contiguous:  # rows are read in place: they must be contiguous
            tmp = np.empty((len(ids), *self.sample_shape), self.dtype)
            out[: len(ids)] = self.read_into(ids, tmp)
            return out
        n = len(ids)
        if n == 0:
            return out
        flat = out.reshape(len(out), -1).view(np.uint8)
        if self.num_threads <= 1 or n < _THREADS_MIN_BATCH:
            self._read_range(ids, flat, 0, n)
            return out
        # Contiguous chunks per thread: fewer futures, same exact result.
        bounds = np.linspace(0, n, min(self.num_threads, n) + 1).astype(int).tolist()
        # The calling thread reads the last chunk itself instead of waiting idle.
        pool = reader_pool()
        futures = [pool.submit(self._read_range, ids, flat, lo, hi) for lo, hi in zip(bounds[:-2], bounds[1:-1])]
        try:
            self._read_range(ids, flat, bounds[-2], bounds[-1])
        finally:
            for fut in futures:
                fut.result()  # re-raises the first error
        return out

    def close(self) -> None:
        """Nothing to release: files are closed after each read, and the reader pool is shared by the process."""


def write_npy_sample(root: str | os.PathLike, sample_id: str, array: np.ndarray) -> Path:
    """Write one sample atomically as ``root/<ID>.npy`` and return its path.

    Raises:
        ManifestError: If ``sample_id`` is not a plain file name (``/``, ``..``, NUL...).
        StoreError: If the file cannot be written (disk full, read-only file
            system...): an output error, never the input's fault.
    """
    check_sample_id(sample_id)
    path = Path(root) / f"{sample_id}.npy"
    try:
        atomic_save_npy(path, array)
    except OSError as e:
        raise output_write_error(e, path) from None
    return path


class NpyWriter(StoreWriter):
    """Writes ``root/<ID>.npy``, one file per sample, each atomically.

    Args:
        root: Folder of the files (created); its name becomes ``storage["root"]``.
        num_threads: Threads writing the files of one `add_many` call.
            Defaults to ``min(8, os.cpu_count())``.
    """

    format = "npy"

    def __init__(self, root: str | os.PathLike, *, num_threads: int | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.num_threads = min(8, os.cpu_count() or 1) if num_threads is None else int(num_threads)

    def add(self, sample_id: str, array: np.ndarray) -> None:
        write_npy_sample(self.root, sample_id, array)

    def add_many(self, ids: Sequence[str], arrays: np.ndarray) -> None:
        if self.num_threads <= 1 or len(ids) < _THREADS_MIN_BATCH:
            for sid, arr in zip(ids, arrays):
                write_npy_sample(self.root, sid, arr)
            return
        with ThreadPoolExecutor(self.num_threads, thread_name_prefix="kpipe-npy-write") as pool:
            list(pool.map(lambda i: write_npy_sample(self.root, ids[i], arrays[i]), range(len(ids))))

    def finish(self, labels: dict[str, int], order: Sequence[str] | None = None) -> dict:
        return {"format": "npy", "root": self.root.name}
