"""Storage backends behind one `Store` interface, chosen from the manifest.

* ``npy``: ``OUT/data/<ID>.npy``, one file per sample (`NpyStore`, `NpyWriter`);
* ``hdf5``: ``OUT/shards/shard-00000.h5``, ... (`Hdf5Store`, `Hdf5Writer`).

`open_store` picks the backend from ``manifest.storage["format"]`` through
`STORE_OPENERS`; `make_writer` picks a writer through `STORE_WRITERS`.
``cache="memory"`` wraps any store in a `MemoryStore`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from kpipe.errors import ArgumentError, InputError, ManifestError
from kpipe.manifest import Manifest
from kpipe.storage.base import DatasetGuard, Store, StoreWriter
from kpipe.storage.hdf5 import COMPRESSIONS, Hdf5Store, Hdf5Writer, check_compression, open_hdf5
from kpipe.storage.memory import MemoryStore
from kpipe.storage.npy import NpyStore, NpyWriter


def _open_npy(manifest: Manifest, **kwargs) -> Store:
    # A manifest read from a file is untrusted: a sample file that is a link (out of the dataset) is refused.
    kwargs.setdefault("follow_links", manifest.path is None)
    return NpyStore(manifest.root, manifest.sample_shape, manifest.sample_dtype,
                    ids=list(manifest.labels), **kwargs)


STORE_OPENERS: dict[str, Callable[..., Store]] = {"npy": _open_npy, "hdf5": open_hdf5}
"""Storage format name (``manifest.storage["format"]``) -> opener ``(manifest, **kwargs) -> Store``."""

FORMATS = tuple(STORE_OPENERS)
"""Storage formats kpipe reads and writes."""

STORAGE_ROOTS = {"npy": "data", "hdf5": "shards"}
"""Format -> folder (under the dataset folder) that holds its files."""

CACHE_MODES = (None, "memory")


def _npy_writer(root: Path, sample_shape, dtype, **options) -> StoreWriter:
    return NpyWriter(root)


def _hdf5_writer(root: Path, sample_shape, dtype, **options) -> StoreWriter:
    return Hdf5Writer(root, sample_shape, dtype, shard_size=options.get("shard_size"),
                      compression=options.get("compression"), progress=options.get("progress"))


STORE_WRITERS: dict[str, Callable[..., StoreWriter]] = {"npy": _npy_writer, "hdf5": _hdf5_writer}
"""Format -> writer factory ``(root, sample_shape, dtype, **options) -> StoreWriter``."""


def check_format(format: str) -> str:  # `format`: the field's term
    """Validate a storage format name.

    Raises:
        InputError: If it is not one of `FORMATS`.
    """
    if format not in STORE_WRITERS:
        raise InputError(f"`format` must be one of {', '.join(STORE_WRITERS)}. Received: format={format!r}")
    return format


def check_storage_options(format: str, shard_size: int | None = None,
                          compression: str | None = "none") -> str:
    """Validate a storage format with its options; returns the normalized compression.

    The one place that knows which options apply to which format (used by
    `kpipe.prepare`, `kpipe.convert` and `make_writer`).

    Raises:
        InputError: If the format is unknown, the compression invalid, or
            ``shard_size`` / ``compression`` are given for a format other
            than ``"hdf5"``.
    """
    check_format(format)
    compression = check_compression(compression)
    if format != "hdf5" and (compression != "none" or shard_size is not None):
        raise InputError(
            "`shard_size` and `compression` apply to the hdf5 format only. "
            f"Received: format={format!r}, shard_size={shard_size!r}, compression={compression!r}"
        )
    return compression


def make_writer(format: str, dataset_dir: str | Path, sample_shape, dtype, **options) -> StoreWriter:
    """A writer of ``format`` whose files go under ``dataset_dir / STORAGE_ROOTS[format]``.

    Args:
        format: ``"npy"`` or ``"hdf5"``.
        dataset_dir: The (staging) dataset folder, next to ``manifest.json``.
        sample_shape: Shape of one sample.
        dtype: Dtype of the samples.
        **options: ``shard_size`` and ``compression`` (hdf5), ``progress``.

    Raises:
        InputError: If the format or an option is invalid.
    """
    check_storage_options(format, options.get("shard_size"), options.get("compression"))
    return STORE_WRITERS[format](Path(dataset_dir) / STORAGE_ROOTS[format], sample_shape, dtype, **options)


def open_store(manifest: Manifest, *, cache: str | None = None, ids: Sequence[str] | None = None,
               **kwargs) -> Store:
    """Open the store a manifest describes (lazily: no file is opened yet).

    Args:
        manifest: A loaded `Manifest`.
        cache: `None` (read from disk every time) or ``"memory"``: load the
            samples ``ids`` into RAM now, once (a `MemoryStore`).
        ids: With ``cache="memory"``, the IDs to load (e.g. one partition).
            Defaults to every sample.
        **kwargs: Passed to the backend (``num_threads``, ``follow_links``
            for npy; ``mmap``, ``verify``, ``max_open_shards`` for hdf5).

    Returns:
        A `Store` for ``manifest.storage["format"]``.

    The store is bound to the manifest file as it was loaded: if the dataset
    is replaced while the store reads it (``prepare --overwrite``), reads that
    open files fail with `StoreError` (see `kpipe.storage.base.DatasetGuard`).

    Raises:
        ManifestError: If the storage format is unknown, or the storage root
            or a shard file leaves the dataset folder.
        ValueError: If ``cache`` is not `None` or ``"memory"``.
    """
    if cache not in CACHE_MODES:
        raise ArgumentError(f"`cache` must be None or 'memory'. Received: cache={cache!r}")
    fmt = manifest.storage.get("format")
    if fmt not in STORE_OPENERS:
        raise ManifestError(
            f"Unknown storage format {fmt!r} in {manifest.path}. This kpipe reads: "
            f"{', '.join(STORE_OPENERS)}."
        )
    store = STORE_OPENERS[fmt](manifest, **kwargs)
    if manifest.path is not None and manifest.file_identity is not None:
        store.guard = DatasetGuard(manifest.path, manifest.file_identity)
    if cache == "memory":
        store = MemoryStore(store, list(manifest.labels) if ids is None else ids)
    return store


__all__ = [
    "COMPRESSIONS",
    "FORMATS",
    "STORE_OPENERS",
    "STORE_WRITERS",
    "DatasetGuard",
    "Hdf5Store",
    "Hdf5Writer",
    "MemoryStore",
    "NpyStore",
    "NpyWriter",
    "Store",
    "StoreWriter",
    "check_storage_options",
    "make_writer",
    "open_store",
]
