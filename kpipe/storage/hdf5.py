"""HDF5 shards: ``ROOT/shard-00000.h5``, ``shard-00001.h5``, ... many samples per file.

Each shard holds three datasets:

* ``x``: the samples, shape ``(n, *sample_shape)``, the manifest's dtype;
* ``y``: their class indices, int64 ``(n,)``;
* ``ids``: their IDs, UTF-8 strings ``(n,)``.

The manifest lists every shard (file, IDs, byte size, sha256) in
``manifest.storage["shards"]``, so ``ID -> (shard, row)`` is known without
opening a file.

Layout and reads:

* uncompressed shards store ``x`` *contiguously*: a sample is a fixed-size
  run of bytes at ``offset + row * sample_nbytes``. The store asks h5py once
  for the dataset's file offset (``dset.id.get_offset()``) and closes the
  file; no HDF5 call, lock or handle is on the read path. Then either
  - it memory-maps that byte range: a batch read is one
    ``np.take`` (fancy indexing) on the map, straight into the batch array
    (the fastest; used when the store's data is at most `MMAP_LIMIT_BYTES`,
    because mapped pages count in the process' RSS and the kernel maps
    whole page-cache folios, megabytes, around each touched sample), or
  - it reads each row with one ``os.preadv`` straight into its row of the
    batch array (larger stores: RSS stays flat whatever the data size, the
    OS page cache still serves warm data; the GIL is released while reading);
* compressed shards (``gzip``, ``lzf``) are chunked along the sample axis,
  one sample per chunk (or as many as make 4 KiB for tiny samples), so a
  random read decompresses only what it needs, with the shuffle filter and
  fletcher32 checksums (a corrupted chunk is detected, not returned). They
  are read with h5py: each shard's rows once, in increasing order, then put
  back in the requested order, duplicates included.

Integrity, checked when a process opens a shard: the file name is a plain
name and the file a regular file inside the store's root (links are resolved
and must stay inside); its byte size matches the manifest; its sha256 matches
(``verify="once"``: hashed the first time, then trusted while its device,
inode, size, mtime and ctime are unchanged, see `mark_verified`); its own
``ids`` dataset lists the manifest's IDs row by row; and the dataset's
``manifest.json`` is still the file the manifest was loaded from (a dataset
replaced under a reader is an error, see `kpipe.storage.base.DatasetGuard`).
Before every batch from a memory map, the file's size is checked (a mapped
page past the end of a truncated file would kill the process with SIGBUS).
At most ``max_open_shards`` shards are open per process (least recently
used closed first); an OS error is reported as what it is (open-file limit,
HDF5 lock held by a writer, permission...), never as "corrupt".

Fork- and spawn-safety: no file is opened until a process reads; handles are
tagged with the process id and reopened when it changes (an inherited h5py
handle is never used, nor closed, in a child); a store pickles as its recipe
(root, shard list, shape, dtype and plain-integer layout facts).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import math
import mmap as _mmap
import os
import stat
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kpipe._io import describe_os_error, os_error_errno
from kpipe._paths import confined, is_safe_name, name_problem, open_regular
from kpipe._validation import check_positive_int
from kpipe.errors import ArgumentError, InputError, ManifestError, SampleNotFoundError, StoreError
from kpipe.storage.base import Store, StoreWriter, as_rows

COMPRESSIONS = ("none", "gzip", "lzf")
"""Values of ``--compression``."""

SHARD_NAME = "shard-{:05d}.h5"
DEFAULT_SHARD_BYTES = 1 << 30
"""Default shard size: about 1 GiB of sample data per shard."""

_GZIP_LEVEL = 4
_MIN_CHUNK_BYTES = 4096
_COPY_BLOCK_BYTES = 64 << 20
_BLOCK_BYTES = 8 << 20  # rows buffered by a `ShardBuilder` before each write to ``x``
MMAP_LIMIT_BYTES = 256 << 20
"""``mmap="auto"`` maps a store's shards when all their samples take at most this many bytes."""
_HAS_PREADV = hasattr(os, "preadv")
_MAP_POPULATE = getattr(_mmap, "MAP_POPULATE", 0)

# h5py handles inherited through fork: kept referenced, so that a child never
# closes (and so never calls into HDF5 for) a handle its parent opened.
_INHERITED: list[Any] = []
_FORK_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    global _FORK_LOCK
    _FORK_LOCK = threading.Lock()  # the parent's may have been held by another thread at fork time


os.register_at_fork(after_in_child=_after_fork_in_child)


def default_shard_size(sample_shape: Sequence[int], dtype: str | np.dtype) -> int:
    """Samples per shard for about `DEFAULT_SHARD_BYTES` of data (at least 1)."""
    nbytes = int(np.prod(sample_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return max(1, DEFAULT_SHARD_BYTES // max(1, nbytes))


def check_compression(compression: str | None) -> str:
    """Validate and normalize ``compression`` (`None` -> ``"none"``).

    Raises:
        InputError: If it is not one of `COMPRESSIONS`.
    """
    value = "none" if compression is None else str(compression).lower()
    if value not in COMPRESSIONS:
        raise InputError(
            f"`compression` must be one of {', '.join(COMPRESSIONS)}. Received: compression={compression!r}"
        )
    return value


def file_sha256(path: str | os.PathLike, block: int = 8 << 20) -> str:
    """Hex sha256 of a regular file's bytes.

    Raises:
        StoreError: If ``path`` is not a regular file (a FIFO or a device is
            never read: it could block or never end).
        OSError: If it cannot be read.
    """
    h = hashlib.sha256()
    with os.fdopen(open_regular(path, what="shard file"), "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------- verified-once cache
def cache_dir() -> Path:
    """kpipe's cache folder: ``$KPIPE_CACHE_DIR``, else ``$XDG_CACHE_HOME/kpipe``, else ``~/.cache/kpipe``."""
    env = os.environ.get("KPIPE_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path("~/.cache").expanduser()) / "kpipe"


def _verified_path(st: os.stat_result, sha256: str) -> Path:
    """Marker of "this file, unchanged since, matched ``sha256``": keyed by device, inode, size, mtime and ctime.

    Any write to the file changes its mtime and ctime (ctime cannot be set
    back by a user), and a replaced file has another inode, so a marker never
    vouches for content that was not hashed.
    """
    key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{sha256}"
    return cache_dir() / "verified" / hashlib.sha256(key.encode()).hexdigest()


def _is_verified(st: os.stat_result, sha256: str) -> bool:
    return _verified_path(st, sha256).exists()


def mark_verified(path: str | os.PathLike, sha256: str) -> None:
    """Record that the file ``path``, as it is now, has this sha256 (best effort: a read-only cache is skipped)."""
    try:
        marker = _verified_path(os.stat(path), sha256)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:
        pass


def _too_many_files(e: BaseException) -> bool:
    return os_error_errno(e) in (errno.EMFILE, errno.ENFILE)


class _Fd:
    """An owned file descriptor, closed when the last user drops it (an evicted shard may still be read
    by another thread: its descriptor must not be closed, or reused, under that thread)."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass


class _Reader:
    """The open state of one shard in one process: a memory map, a file descriptor + offset, or h5py."""

    __slots__ = ("array", "dset", "fd", "file", "mmap", "need", "offset")

    def __init__(self, file=None, dset=None, mmap: _mmap.mmap | None = None, array: np.ndarray | None = None,
                 fd: _Fd | None = None, offset: int = 0, need: int = 0) -> None:
        self.file, self.dset, self.mmap, self.array = file, dset, mmap, array
        self.fd, self.offset, self.need = fd, offset, need


VERIFY_MODES = ("once", "always", "never")
"""Values of `Hdf5Store`'s ``verify``: when a shard's sha256 is checked against the manifest."""


def _check_verify(verify: bool | str) -> str:
    value = {True: "always", False: "never"}.get(verify, verify) if isinstance(verify, bool) else verify
    if value not in VERIFY_MODES:
        raise ArgumentError(f"`verify` must be 'once', 'always', 'never', True or False. Received: verify={verify!r}")
    return value


def _default_max_open() -> int:
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 64
    if soft == getattr(resource, "RLIM_INFINITY", -1) or soft <= 0:
        return 128
    return max(4, min(128, soft // 8))


class Hdf5Store(Store):
    """Samples stored in HDF5 shards (see the module docstring for the layout).

    Args:
        root: Folder of the shard files.
        shards: One dict per shard, in order: ``{"file": "shard-00000.h5",
            "ids": [...], "num_bytes": int, "sha256": str}`` (``num_bytes`` and
            ``sha256`` optional); the ``manifest.storage["shards"]`` list.
            File names are plain names inside ``root`` (no ``/``, no ``..``).
        sample_shape: Shape of one sample, e.g. ``(32, 32, 3)``.
        dtype: Dtype of stored samples, e.g. ``"float32"``.
        mmap: How to read contiguous, uncompressed shards: ``"auto"`` maps
            them when all samples take at most `MMAP_LIMIT_BYTES` (256 MiB)
            and reads rows with ``os.preadv`` otherwise; `True` always maps
            (fastest, but the mapped file counts in RSS); ``"pread"`` never
            maps; `False` reads everything through h5py (slow; a reference).
            Defaults to ``"auto"``.
        verify: When a shard's sha256 is checked against the manifest, as a
            process opens it: ``"once"`` (hash the file the first time, then
            trust it while its device, inode, size, mtime and ctime are
            unchanged: a marker under `cache_dir` ``/verified`` records it),
            ``"always"`` (`True`: hash at every open) or ``"never"``
            (`False`: only the byte size is checked). Defaults to ``"once"``.
        max_open_shards: Shards kept open at once per process (least
            recently used closed first). Defaults to an eighth of the
            open-file limit (``ulimit -n``), between 4 and 128.

    Raises:
        ManifestError: If a shard file name is not a plain name.
        StoreError: On reads, if a shard is missing, not a regular file,
            truncated, corrupt (sha256), locked by a writer, unreadable, or does
            not match the manifest (its own ``ids`` differ), or if the dataset
            was replaced since its manifest was loaded; the message names the
            file, the sample ID and the cause.
        SampleNotFoundError: On reads, if an ID is in no shard.

    Example:
        >>> store = open_store(Manifest.load("prepared/manifest.json"))  # an hdf5 dataset
        >>> store.read_many(["cat_001", "dog_007", "cat_001"]).shape
        (3, 64, 64, 3)
    """

    format = "hdf5"

    def __init__(self, root: str | os.PathLike, shards: Sequence[Mapping[str, Any]],
                 sample_shape: Sequence[int], dtype: str | np.dtype, *, mmap: bool | str = "auto",
                 verify: bool | str = "once", max_open_shards: int | None = None) -> None:
        super().__init__(sample_shape, dtype)
        self.root = Path(root)
        self.shards = [
            {"file": str(s["file"]), "ids": [str(i) for i in s["ids"]],
             "num_bytes": s.get("num_bytes"), "sha256": s.get("sha256")}
            for s in shards
        ]
        for s in self.shards:
            if not is_safe_name(s["file"]):
                raise ManifestError(f"Shard file {s['file']!r} is not allowed: {name_problem(s['file'])}. A shard "
                                    f"is named by a plain file name inside {self.root}.")
        if mmap not in (True, False, "auto", "pread"):
            raise ValueError(f"`mmap` must be 'auto', True, False or 'pread'. Received: mmap={mmap!r}")
        self.verify_mode = _check_verify(verify)
        self.max_open_shards = (_default_max_open() if max_open_shards is None
                                else check_positive_int(max_open_shards, "max_open_shards"))
        self._sample_nbytes = int(np.prod(self.sample_shape, dtype=np.int64)) * self.dtype.itemsize
        self._starts = np.cumsum([0] + [len(s["ids"]) for s in self.shards]).astype(np.int64)
        if mmap == "auto":
            small = int(self._starts[-1]) * self._sample_nbytes <= MMAP_LIMIT_BYTES
            mmap = True if small or not _HAS_PREADV else "pread"
        self.mmap = mmap
        self.read_mode = "h5py" if mmap is False else "mmap" if mmap is True else "pread"
        """``"mmap"``, ``"pread"`` or ``"h5py"``: how contiguous shards are read."""
        # Plain-integer layout facts (picklable), set once a shard's `x` and `ids` were checked against the
        # manifest: shard -> file offset of `x`, or -1 for h5py reads.
        self._offsets: dict[int, int] = {}
        self._init_process_state()

    @property
    def verify_on_open(self) -> bool:
        """Whether shards are hashed when opened (``verify`` is not ``"never"``)."""
        return self.verify_mode != "never"

    def _init_process_state(self) -> None:
        self._row_index: dict[str, int] | None = None  # ID -> row (`rows`): its position, shards end to end
        self._all_ids: list[str] | None = None
        self._readers: OrderedDict[int, _Reader] = OrderedDict()
        self._pid = os.getpid()
        self._lock = threading.Lock()

    # -------------------------------------------------------------- pickling
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_row_index", "_all_ids", "_readers", "_pid", "_lock"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_process_state()

    # ----------------------------------------------------------------- index
    @property
    def ids(self) -> list[str]:
        if self._all_ids is None:
            self._all_ids = [i for s in self.shards for i in s["ids"]]
        return self._all_ids

    @property
    def num_samples(self) -> int:
        """Number of samples over all shards."""
        return int(self._starts[-1])

    def _id_not_found(self, sample_id: str) -> SampleNotFoundError:
        return SampleNotFoundError(f"Sample {sample_id!r} is in none of the {len(self.shards)} shards under "
                                   f"{self.root}. Check the ID against the manifest's `labels`.")

    @property
    def num_rows(self) -> int:
        return int(self._starts[-1])

    def locate(self, sample_id: str) -> tuple[str, int]:
        """``(shard file name, row)`` of one sample.

        Raises:
            SampleNotFoundError: If the ID is in no shard.
        """
        g = int(self.rows([sample_id])[0])
        s = int(np.searchsorted(self._starts, g, side="right")) - 1
        return self.shards[s]["file"], g - int(self._starts[s])

    # ------------------------------------------------------------ open files
    def _shard_path(self, s: int) -> Path:
        return self.root / self.shards[s]["file"]

    def _reader(self, s: int, row: int) -> _Reader:
        """The open reader of shard ``s`` in this process (opened now if needed; ``row``: for messages)."""
        if self._pid != os.getpid():
            self._forget_parent_handles()
        readers = self._readers
        reader = readers.get(s)
        if reader is not None:
            try:
                readers.move_to_end(s)
            except KeyError:  # evicted by another thread meanwhile: still usable
                pass
            return reader
        with self._lock:
            reader = readers.get(s)
            if reader is None:
                reader = self._open_retrying(s, self.shards[s]["ids"][row])
                readers[s] = reader
                while len(readers) > self.max_open_shards:
                    readers.popitem(last=False)  # closed when no thread reads it any more
        return reader

    def _forget_parent_handles(self) -> None:
        """Forked: never touch the parent's handles (nor its lock)."""
        with _FORK_LOCK:
            if self._pid != os.getpid():
                _INHERITED.extend(r.file for r in self._readers.values() if r.file is not None)
                for r in self._readers.values():
                    if r.fd is not None:  # the child's copy of the descriptor
                        r.fd.close()
                self._readers = OrderedDict()
                self._lock = threading.Lock()
                self._pid = os.getpid()

    def _open_retrying(self, s: int, sample_id: str) -> _Reader:
        """`_open`; at the open-file limit, close the shards no thread is reading and try once more."""
        try:
            return self._open(s, sample_id)
        except OSError as e:
            if isinstance(e, StoreError) or not _too_many_files(e):
                raise
        self._readers.clear()
        gc.collect()
        try:
            return self._open(s, sample_id)
        except OSError as again:
            if isinstance(again, StoreError) or not _too_many_files(again):
                raise
            raise StoreError(
                f"Sample {sample_id!r} (shard {self._shard_path(s)}): cannot open the shard: "
                f"{describe_os_error(again)}. kpipe keeps at most {self.max_open_shards} shards "
                "open per process (`max_open_shards`)."
            ) from None

    def _open(self, s: int, sample_id: str) -> _Reader:
        """Check shard ``s`` and open it; raises `StoreError`, or a plain `OSError` for the open-file limit."""
        path = self._shard_path(s)
        n = len(self.shards[s]["ids"])
        where = f"Sample {sample_id!r} (shard {path})"
        if self.guard is not None:
            self.guard.check()
        st = self._stat_shard(s, where)
        self._check_sha256(s, st, where)
        offset = self._offsets.get(s)
        if self.read_mode != "h5py" and offset is not None and offset >= 0:  # layout known: no HDF5 call
            return self._map(path, offset, n, st.st_size, where)
        return self._open_h5py(s, st, where)

    def _stat_shard(self, s: int, where: str) -> os.stat_result:
        """The shard file's stat: confined to the root, a regular file of the manifest's byte size."""
        shard = self.shards[s]
        try:
            confined(self.root, shard["file"], what="shard file", error=StoreError)
            st = os.stat(self._shard_path(s))
        except FileNotFoundError:
            raise StoreError(f"{where}: the shard file does not exist. Run `kpipe prepare` again.") from None
        except StoreError as e:
            raise StoreError(f"{where}: {e}") from None
        except OSError as e:
            raise StoreError(f"{where}: cannot read the shard: {describe_os_error(e)}.") from None
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{where}: the shard is not a regular file; kpipe reads only regular files.")
        expected = shard.get("num_bytes")
        if expected is not None and st.st_size != int(expected):
            raise StoreError(
                f"{where}: the file has {st.st_size} bytes, the manifest says {expected}; it is truncated or was "
                "modified. Run `kpipe prepare` (or `kpipe convert` from a good copy) again."
            )
        return st

    def _check_sha256(self, s: int, st: os.stat_result, where: str, mode: str | None = None) -> None:
        """Hash the shard as ``mode`` (default: the store's ``verify``) says: ``"never"``, ``"once"`` (unless a
        marker vouches for this file version) or ``"always"``; a match is marked for ``"once"``."""
        mode = mode or self.verify_mode
        sha = self.shards[s].get("sha256")
        if not sha or mode == "never" or (mode == "once" and _is_verified(st, sha)):
            return
        path = self._shard_path(s)
        try:
            digest = file_sha256(path)
        except StoreError as e:
            raise StoreError(f"{where}: {e}") from None
        except OSError as e:
            if _too_many_files(e):
                raise
            raise StoreError(f"{where}: cannot read the shard: {describe_os_error(e)}.") from None
        if digest != sha:
            raise StoreError(
                f"{where}: the file's sha256 is {digest}, the manifest says {sha}; it is corrupt (checksum "
                "mismatch). Run `kpipe prepare` (or `kpipe convert` from a good copy) again."
            )
        mark_verified(path, sha)

    def _open_h5py(self, s: int, st: os.stat_result, where: str) -> _Reader:
        """Open shard ``s`` with h5py: check ``x`` and ``ids``, learn the layout, then map it or keep h5py."""
        import h5py

        path = self._shard_path(s)
        n = len(self.shards[s]["ids"])
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            if _too_many_files(e):
                raise
            code = os_error_errno(e)
            if "unable to lock file" in str(e) or code in (errno.EACCES, errno.EPERM, errno.ENOENT, errno.EIO):
                raise StoreError(f"{where}: cannot open the shard: {describe_os_error(e)}.") from None
            raise StoreError(f"{where}: not a readable HDF5 file ({e}); it is truncated or corrupt.") from None
        try:
            dset = f["x"]
            if dset.shape != (n, *self.sample_shape) or dset.dtype != self.dtype:
                raise StoreError(
                    f"{where}: dataset `x` is {dset.dtype}{list(dset.shape)}, the manifest says "
                    f"{self.dtype}{[n, *self.sample_shape]}. The shard does not belong to this manifest."
                )
            plain = (dset.chunks is None and dset.compression is None and not dset.shuffle
                     and not dset.fletcher32 and dset.scaleoffset is None)
            file_offset = dset.id.get_offset() if plain and n > 0 else None
            if s not in self._offsets:
                self._check_ids(f, s, where)
        except StoreError:
            f.close()
            raise
        except (KeyError, OSError, RuntimeError, ValueError) as e:
            f.close()
            raise StoreError(f"{where}: cannot read dataset `x` ({e}); the shard is corrupt.") from None
        self._offsets[s] = -1 if file_offset is None else int(file_offset)
        if self.read_mode == "h5py" or file_offset is None:
            return _Reader(file=f, dset=dset)
        f.close()
        return self._map(path, int(file_offset), n, st.st_size, where)

    def _check_ids(self, f, s: int, where: str) -> None:
        """The shard's own ``ids`` dataset must list the manifest's IDs, row by row."""
        expected = self.shards[s]["ids"]
        try:
            ids = f["ids"].asstr()[:].tolist()
        except (KeyError, OSError, RuntimeError, ValueError, TypeError) as e:
            raise StoreError(f"{where}: the shard has no readable `ids` dataset ({e}); it is corrupt.") from None
        if ids != expected:
            row = next((r for r, (a, b) in enumerate(zip(ids, expected)) if a != b), min(len(ids), len(expected)))
            held = repr(ids[row]) if row < len(ids) else "nothing"
            said = repr(expected[row]) if row < len(expected) else "nothing"
            raise StoreError(
                f"{where}: row {row} of the shard holds sample {held}, the manifest says {said}. The manifest does "
                "not describe this shard (its shard `ids` were edited, or the shard was replaced); reading it would "
                "give samples the wrong labels. Run `kpipe prepare` again."
            )

    def _map(self, path: Path, offset: int, n: int, size: int, where: str) -> _Reader:
        need = offset + n * self._sample_nbytes
        if need > size:
            raise StoreError(f"{where}: the file is too short for its {n} samples; it is truncated.")
        try:
            fd = open_regular(path, what="shard file")
        except StoreError as e:
            raise StoreError(f"{where}: {e}") from None
        except OSError as e:
            if _too_many_files(e):
                raise
            raise StoreError(f"{where}: cannot open the shard: {describe_os_error(e)}.") from None
        if self.read_mode == "pread":
            return _Reader(fd=_Fd(fd), offset=offset)
        try:
            if n == 0:
                return _Reader(array=np.empty((0, *self.sample_shape), self.dtype), need=need)
            start = offset - offset % _mmap.ALLOCATIONGRANULARITY
            # MAP_POPULATE: the page tables are filled now, once (tens of ms for 256 MiB), not by a page fault at
            # the first read of each sample (a balanced epoch at 99:1 reads mostly samples not read before).
            if hasattr(_mmap, "MAP_SHARED"):
                mm = _mmap.mmap(fd, need - start, flags=_mmap.MAP_SHARED | _MAP_POPULATE, prot=_mmap.PROT_READ,
                                offset=start)
            else:  # Windows
                mm = _mmap.mmap(fd, need - start, access=_mmap.ACCESS_READ, offset=start)
        finally:
            os.close(fd)
        array = np.frombuffer(mm, dtype=self.dtype, count=n * math.prod(self.sample_shape), offset=offset - start)
        return _Reader(mmap=mm, array=array.reshape(n, *self.sample_shape), need=need - start)

    # ----------------------------------------------------------------- reads
    def read_into(self, ids: Sequence[str], out: np.ndarray) -> np.ndarray:
        self._check_out(len(ids), out)
        if len(ids):
            self._read_positions(self.rows(ids), out)
        return out

    def read_rows(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if out is not None:
            return super().read_rows(rows, out)
        g = as_rows(rows, int(self._starts[-1]))
        out = np.empty((len(g), *self.sample_shape), dtype=self.dtype)
        if len(g):
            self._read_positions(g, out)
        return out

    def read_rows_into(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        self._check_out(len(rows), out)
        g = as_rows(rows, int(self._starts[-1]))
        if len(g):
            self._read_positions(g, out)
        return out

    def _read_positions(self, g: np.ndarray, out: np.ndarray) -> None:
        """Read the samples at global positions ``g`` (valid, non-empty) into ``out[: len(g)]``."""
        if len(self.shards) == 1:
            self._read_rows(0, g, None, out)
            return
        shard_of = np.searchsorted(self._starts, g, side="right") - 1
        first = shard_of[0]
        if (shard_of == first).all():
            self._read_rows(int(first), g - self._starts[first], None, out)
            return
        for s in np.unique(shard_of):
            where = np.flatnonzero(shard_of == s)
            self._read_rows(int(s), g[where] - self._starts[s], where, out)

    def _read_rows(self, s: int, rows: np.ndarray, where: np.ndarray | None, out: np.ndarray) -> None:
        """Read ``rows`` of shard ``s`` into ``out[where]`` (or ``out[:len(rows)]``)."""
        reader = self._reader(s, int(rows[0]))
        if reader.array is not None:
            # A mapped page past the end of a file that shrank would kill the process (SIGBUS): check the
            # size (one fstat) before every batch.
            if reader.mmap is not None and reader.mmap.size() < reader.need:
                self._readers.pop(s, None)
                raise StoreError(
                    f"Sample {self.shards[s]['ids'][int(rows[0])]!r} (shard {self._shard_path(s)}): the file shrank "
                    f"to {reader.mmap.size()} bytes while it was being read; it was truncated or rewritten in place. "
                    "Run `kpipe prepare` again, and do not change a dataset while it is read."
                )
            if where is None:
                # mode="clip": rows are valid, and mode="raise" would copy through a buffer.
                reader.array.take(rows, axis=0, out=out[: len(rows)], mode="clip")
            else:
                out[where] = reader.array[rows]
            return
        if reader.fd is not None:
            if out.flags.c_contiguous:
                self._pread_rows(s, reader, rows, where, out)
            else:  # preadv needs contiguous destination rows
                tmp = np.empty((len(rows), *self.sample_shape), self.dtype)
                self._pread_rows(s, reader, rows, None, tmp)
                out[np.arange(len(rows)) if where is None else where] = tmp
            return
        # h5py: strictly increasing rows, no duplicates; then back to the requested order.
        # One read per row: h5py's fancy (point-list) selection is ~100x slower on chunked data.
        uniq, inverse = np.unique(rows, return_inverse=True)
        data = np.empty((len(uniq), *self.sample_shape), dtype=self.dtype)
        dset = reader.dset
        try:
            for k, r in enumerate(uniq.tolist()):
                data[k] = dset[r]
        except (OSError, RuntimeError, ValueError) as e:
            bad = self._find_bad_row(reader, uniq)
            sid = self.shards[s]["ids"][bad if bad is not None else int(rows[0])]
            raise StoreError(
                f"Sample {sid!r} (row {bad if bad is not None else '?'} of shard {self._shard_path(s)}): "
                f"cannot read it ({e}); the shard is corrupt. Run `kpipe prepare` again."
            ) from None
        if where is None:
            np.take(data, inverse, axis=0, out=out[: len(rows)], mode="clip")
        else:
            out[where] = data[inverse]

    def _pread_rows(self, s: int, reader: _Reader, rows: np.ndarray, where: np.ndarray | None,
                    out: np.ndarray) -> None:
        """One ``preadv`` per row, straight into ``out``'s rows, in increasing file order."""
        nb = self._sample_nbytes
        dest = np.arange(len(rows)) if where is None else where
        order = np.argsort(rows, kind="stable")
        fd, base = reader.fd.fd, reader.offset
        flat = out.reshape(len(out), -1).view(np.uint8)
        for i, r in zip(dest[order].tolist(), rows[order].tolist()):
            try:
                got = os.preadv(fd, [flat[i]], base + r * nb)
            except OSError as e:
                got = e
            if got != nb:
                sid = self.shards[s]["ids"][r]
                what = (describe_os_error(got) if isinstance(got, OSError)
                        else f"{got} of {nb} bytes; the file is truncated")
                raise StoreError(
                    f"Sample {sid!r} (row {r} of shard {self._shard_path(s)}): read {what}. "
                    "Run `kpipe prepare` again."
                )

    @staticmethod
    def _find_bad_row(reader: _Reader, rows: np.ndarray) -> int | None:
        for r in rows:
            try:
                reader.dset[int(r)]
            except Exception:  # looking for the failing row: any error marks it
                return int(r)
        return None

    def verify(self, *, recheck: bool = True) -> None:
        """Check every shard's byte size and sha256 against the manifest.

        Args:
            recheck: Hash every shard now (`True`, the default), or trust a
                shard verified before and unchanged since (``verify="once"``'s
                marker, `False`).

        Raises:
            StoreError: Naming the first shard that differs (and its first ID).
        """
        for s, shard in enumerate(self.shards):
            path = self._shard_path(s)
            first = shard["ids"][0] if shard["ids"] else "?"
            where = f"Shard {path} (first sample {first!r})"
            self._check_sha256(s, self._stat_shard(s, where), where, mode="always" if recheck else "once")

    def close(self) -> None:
        if self._pid == os.getpid():
            for r in self._readers.values():
                if r.file is not None:
                    r.file.close()
                if r.fd is not None:
                    r.fd.close()
        self._readers = OrderedDict()


class Hdf5Writer(StoreWriter):
    """Writes samples into HDF5 shards under ``root``.

    Samples are appended to a raw temporary file as they come; `finish`
    writes the shards in the requested order with their final labels, each
    under a temporary name renamed into place, and returns the
    ``manifest.storage`` dict with the shard list.

    Args:
        root: Folder for the shards (created).
        sample_shape: Shape of one sample.
        dtype: Dtype of the samples.
        shard_size: Samples per shard. Defaults to about 1 GiB of data per
            shard (`default_shard_size`).
        compression: ``"none"`` (contiguous, memory-mappable), ``"gzip"`` or
            ``"lzf"`` (chunked along the sample axis: one sample per chunk, or
            as many as make 4 KiB for small samples). Defaults to ``"none"``.
        progress: Called with the number of samples written to shards, as
            `finish` goes.

    Raises:
        InputError: If ``shard_size`` or ``compression`` is invalid.
    """

    format = "hdf5"

    def __init__(self, root: str | os.PathLike, sample_shape: Sequence[int], dtype: str | np.dtype, *,
                 shard_size: int | None = None, compression: str | None = "none",
                 progress=None) -> None:
        self.root = Path(root)
        self.sample_shape = tuple(int(d) for d in sample_shape)
        self.dtype = np.dtype(dtype)
        self.compression = check_compression(compression)
        if shard_size is None:
            shard_size = default_shard_size(self.sample_shape, self.dtype)
        if isinstance(shard_size, bool) or not isinstance(shard_size, (int, np.integer)) or shard_size <= 0:
            raise InputError(f"`shard_size` must be a positive number of samples. Received: shard_size={shard_size!r}")
        self.shard_size = int(shard_size)
        self.progress = progress
        self._nbytes = int(np.prod(self.sample_shape, dtype=np.int64)) * self.dtype.itemsize
        self.root.mkdir(parents=True, exist_ok=True)
        self._raw_path = self.root / f".samples.{uuid.uuid4().hex[:8]}.partial"
        self._raw = open(self._raw_path, "wb")  # closed in finish / abort
        self._ids: list[str] = []
        self._row: dict[str, int] = {}

    def add(self, sample_id: str, array: np.ndarray) -> None:
        self.add_many([sample_id], np.asarray(array)[None])

    def add_many(self, ids: Sequence[str], arrays: np.ndarray) -> None:
        arrays = np.asarray(arrays)
        if arrays.shape != (len(ids), *self.sample_shape) or arrays.dtype != self.dtype:
            raise InputError(
                f"Samples must be {self.dtype}{list(self.sample_shape)}. Received: "
                f"{arrays.dtype}{list(arrays.shape[1:])} for {ids[0] if len(ids) else '?'!r}"
            )
        for sid in ids:
            if sid in self._row:
                raise InputError(f"Sample ID {sid!r} was added twice; IDs must be unique.")
            self._row[sid] = len(self._ids)
            self._ids.append(sid)
        self._raw.write(np.ascontiguousarray(arrays).data)

    def finish(self, labels: dict[str, int], order: Sequence[str] | None = None) -> dict:
        import h5py

        self._raw.close()
        try:
            order = list(self._ids if order is None else order)
            if sorted(order) != sorted(self._ids):
                raise InputError("`order` must list every added sample ID exactly once.")
            n = len(order)
            rows = np.fromiter((self._row[i] for i in order), dtype=np.int64, count=n)
            raw = (np.memmap(self._raw_path, dtype=self.dtype, mode="r", shape=(len(self._ids), *self.sample_shape))
                   if self._ids else np.empty((0, *self.sample_shape), self.dtype))
            shards = []
            for k, lo in enumerate(range(0, n, self.shard_size)):
                hi = min(n, lo + self.shard_size)
                shards.append(self._write_shard(h5py, k, order[lo:hi], rows[lo:hi], raw, labels))
            del raw
        finally:
            self._raw_path.unlink(missing_ok=True)
        storage: dict[str, Any] = {
            "format": "hdf5",
            "root": self.root.name,
            "compression": self.compression,
            "shard_size": self.shard_size,
            "num_shards": len(shards),
            "shards": shards,
        }
        return storage

    def _write_shard(self, h5py, k: int, ids: list[str], rows: np.ndarray, raw: np.ndarray,
                     labels: Mapping[str, int]) -> dict:
        builder = ShardBuilder(self.root, SHARD_NAME.format(k), len(ids), self.sample_shape, self.dtype,
                               compression=self.compression, shard_index=k)
        try:
            step = max(1, _COPY_BLOCK_BYTES // max(1, self._nbytes))
            for lo in range(0, len(ids), step):
                hi = min(len(ids), lo + step)
                builder.add_block(ids[lo:hi], [int(labels[i]) for i in ids[lo:hi]], raw[rows[lo:hi]])
                if self.progress:
                    self.progress(hi - lo)
            return builder.finish()
        except BaseException:
            builder.abort()
            raise

    def abort(self) -> None:
        if not self._raw.closed:
            self._raw.close()
        self._raw_path.unlink(missing_ok=True)


def _dataset_options(n: int, sample_shape: tuple[int, ...], dtype: np.dtype, compression: str) -> dict[str, Any]:
    """``create_dataset`` options of ``x``: contiguous, or chunked along the sample axis with checksums."""
    if compression == "none":
        return {}
    nbytes = int(np.prod(sample_shape, dtype=np.int64)) * dtype.itemsize
    per_chunk = max(1, math.ceil(_MIN_CHUNK_BYTES / max(1, nbytes)))
    kwargs: dict[str, Any] = {"chunks": (max(1, min(n, per_chunk)), *sample_shape), "fletcher32": True,
                              "shuffle": dtype.itemsize > 1, "compression": compression}
    if compression == "gzip":
        kwargs["compression_opts"] = _GZIP_LEVEL
    return kwargs


class ShardBuilder:
    """Writes one shard file, streaming: samples go to ``x`` in blocks as they come.

    The file is written under a temporary name (``NAME.<random>.partial``) and
    renamed to ``root / name`` by `finish`, so a shard is either complete or
    absent, and a task that is run again (a retried Dask task) replaces it
    atomically with the same content. ``x`` is created for ``capacity`` rows;
    if fewer samples come (skipped inputs), `finish` copies them to a file of
    the exact size. Memory: one block (about 8 MiB), whatever the shard size.

    Args:
        root: Folder of the shard (must exist: a builder never creates folders,
            so a task cannot write into a staging folder that was removed).
        name: File name of the shard, e.g. ``shard-00003.h5``.
        capacity: Most samples the shard will hold.
        sample_shape: Shape of one sample.
        dtype: Dtype of the samples.
        compression: ``"none"``, ``"gzip"`` or ``"lzf"`` (see `Hdf5Writer`).
        shard_index: Stored as the file's ``kpipe_shard`` attribute.

    Raises:
        OSError: If the file cannot be written (`finish` and `abort` remove the
            temporary file).
    """

    def __init__(self, root: str | os.PathLike, name: str, capacity: int, sample_shape: Sequence[int],
                 dtype: str | np.dtype, *, compression: str = "none", shard_index: int = 0) -> None:
        import h5py

        self.root, self.name = Path(root), name
        self.sample_shape = tuple(int(d) for d in sample_shape)
        self.dtype = np.dtype(dtype)
        self.compression = check_compression(compression)
        self.capacity = max(1, int(capacity))
        self.shard_index = int(shard_index)
        nbytes = max(1, int(np.prod(self.sample_shape, dtype=np.int64)) * self.dtype.itemsize)
        self._block = np.empty((max(1, min(self.capacity, _BLOCK_BYTES // nbytes)), *self.sample_shape), self.dtype)
        self._in_block = 0
        self.ids: list[str] = []
        self.labels: list[int] = []
        self._tmp = self.root / f"{name}.{uuid.uuid4().hex[:12]}.partial"
        self._file = h5py.File(self._tmp, "w")
        try:
            self._x = self._file.create_dataset("x", shape=(self.capacity, *self.sample_shape), dtype=self.dtype,
                                                **_dataset_options(self.capacity, self.sample_shape, self.dtype,
                                                                   self.compression))
        except BaseException:
            self.abort()
            raise

    def add(self, sample_id: str, label: int, array: np.ndarray) -> None:
        """Append one sample (shape and dtype of the shard)."""
        self._block[self._in_block] = array
        self._in_block += 1
        self.ids.append(sample_id)
        self.labels.append(int(label))
        if self._in_block == len(self._block):
            self._flush()

    def add_block(self, ids: Sequence[str], labels: Sequence[int], arrays: np.ndarray) -> None:
        """Append ``len(ids)`` samples at once (``arrays``: ``(len(ids), *sample_shape)``)."""
        self._flush()
        lo = len(self.ids) - self._in_block
        self._x[lo : lo + len(ids)] = arrays
        self.ids.extend(ids)
        self.labels.extend(int(v) for v in labels)

    def _flush(self) -> None:
        if self._in_block:
            lo = len(self.ids) - self._in_block
            self._x[lo : lo + self._in_block] = self._block[: self._in_block]
            self._in_block = 0

    def finish(self) -> dict | None:
        """Close the shard, rename it into place; its manifest record, or `None` (and no file) if empty.

        Returns:
            ``{"file", "num_samples", "num_bytes", "sha256", "ids"}``.
        """
        import h5py

        try:
            n = len(self.ids)
            if n == 0:
                self.abort()
                return None
            self._flush()
            if n < self.capacity:  # inputs were skipped: copy the rows to a file of the exact size
                self._file.close()
                exact = self.root / f"{self.name}.{uuid.uuid4().hex[:12]}.partial"
                try:
                    with h5py.File(self._tmp, "r") as src, h5py.File(exact, "w") as dst:
                        x = dst.create_dataset("x", shape=(n, *self.sample_shape), dtype=self.dtype,
                                               **_dataset_options(n, self.sample_shape, self.dtype, self.compression))
                        step = len(self._block)
                        for lo in range(0, n, step):
                            x[lo : min(n, lo + step)] = src["x"][lo : min(n, lo + step)]
                except BaseException:
                    exact.unlink(missing_ok=True)
                    raise
                self._tmp.unlink(missing_ok=True)
                self._tmp = exact
                self._file = h5py.File(self._tmp, "r+")
            f = self._file
            f.create_dataset("y", data=np.asarray(self.labels, dtype=np.int64))
            f.create_dataset("ids", data=np.array(self.ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
            f.attrs["kpipe_shard"] = self.shard_index
            f.attrs["sample_shape"] = list(self.sample_shape)
            f.close()
            digest = file_sha256(self._tmp)
            size = self._tmp.stat().st_size
            final = self.root / self.name
            os.replace(self._tmp, final)
        except BaseException:
            self.abort()
            raise
        mark_verified(final, digest)  # hashed as written: readers need not hash it again
        return {"file": self.name, "num_samples": n, "num_bytes": size, "sha256": digest, "ids": list(self.ids)}

    def abort(self) -> None:
        """Close and remove the temporary file."""
        with contextlib.suppress(Exception):  # already closed, or the file system failed: removed below anyway
            self._file.close()
        self._tmp.unlink(missing_ok=True)


def rebuild_shard(root: str | os.PathLike, record: Mapping[str, Any], keep: Sequence[str],
                  labels: Mapping[str, int], sample_shape: Sequence[int], dtype: str | np.dtype, *,
                  compression: str = "none") -> dict | None:
    """Write shard ``record["file"]`` again with only the IDs ``keep`` (in its row order) and new labels.

    For the rare fix-ups after a parallel prepare (``--duplicates drop`` across
    shards, a class left empty): the shard is rebuilt under a temporary name
    and renamed over the old one. Returns the new record (`None`, file removed,
    if nothing is kept); a shard that needs no change is returned as it is.
    """
    import h5py

    root = Path(root)
    keep_set = set(keep)
    rows = [r for r, sid in enumerate(record["ids"]) if sid in keep_set]
    path = root / record["file"]
    with h5py.File(path, "r") as f:
        y = f["y"][:]
        new_y = [int(labels[record["ids"][r]]) for r in rows]
        if len(rows) == len(record["ids"]) and y.tolist() == new_y:
            return dict(record)
        if not rows:
            path.unlink()
            return None
        builder = ShardBuilder(root, record["file"], len(rows), sample_shape, dtype, compression=compression,
                               shard_index=int(f.attrs.get("kpipe_shard", 0)))
        try:
            x = f["x"]
            step = len(builder._block)
            for lo in range(0, len(rows), step):
                part = rows[lo : lo + step]
                builder.add_block([record["ids"][r] for r in part], new_y[lo : lo + len(part)], x[part])
        except BaseException:
            builder.abort()
            raise
    return builder.finish()


def open_hdf5(manifest, **kwargs) -> Hdf5Store:
    """Opener of `STORE_OPENERS`: the `Hdf5Store` a manifest describes.

    Raises:
        ManifestError: If ``manifest.storage`` has no valid shard list.
    """
    from kpipe.errors import ManifestError

    shards = manifest.storage.get("shards")
    if not isinstance(shards, list) or not all(isinstance(s, dict) and "file" in s and "ids" in s for s in shards):
        raise ManifestError(
            f"Manifest {manifest.path} has storage format 'hdf5' but no valid `storage.shards` list "
            "(file, ids per shard). Run `kpipe prepare --format hdf5` again."
        )
    return Hdf5Store(manifest.root, shards, manifest.sample_shape, manifest.sample_dtype, **kwargs)
