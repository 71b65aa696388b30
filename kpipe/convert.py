"""``kpipe convert``: a prepared dataset -> the same dataset in another storage format."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from kpipe._staging import check_output_folder, staged_dataset
from kpipe.errors import InputError
from kpipe.manifest import MANIFEST_NAME, Manifest, load_manifest
from kpipe._validation import check_int
from kpipe.storage import check_storage_options, open_store

_BLOCK_BYTES = 32 << 20  # samples read and written per step


@dataclasses.dataclass
class ConvertResult:
    """What `convert` produced.

    Attributes:
        manifest: The new `Manifest` (``manifest.path`` is set).
        source_format: Storage format of the input dataset.
        seconds: Wall time of the conversion.
    """

    manifest: Manifest
    source_format: str
    seconds: float

    def summary(self) -> str:
        """One line for people, e.g. ``Converted 1797 samples from npy to hdf5 (2 shards): ...``."""
        m = self.manifest
        what = f"{m.storage['format']}"
        if m.storage.get("shards") is not None:
            n = len(m.storage["shards"])
            what += f" ({n} shard{'s' if n != 1 else ''}, compression {m.storage.get('compression', 'none')})"
        return (f"Converted {m.num_samples} samples from {self.source_format} to {what} "
                f"in {self.seconds:.1f}s -> {m.path}")


def convert(
    manifest: Manifest | str | os.PathLike,
    out: str | os.PathLike,
    *,
    to: str,
    shard_size: int | None = None,
    compression: str | None = "none",
    overwrite: bool = False,
    verify: bool = True,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> ConvertResult:
    """Write a prepared dataset in another storage format.

    The new dataset has the same classes, IDs, labels, partition, sample
    weights, provenance and skipped list; every sample is bit-identical. As
    `prepare`, it is built in a staging folder next to ``out`` and moved into
    place at the end. HDF5 shards are laid out partition by partition.

    Args:
        manifest: The source `Manifest`, or the path of its ``manifest.json``.
        out: Output folder (it gets ``manifest.json`` and ``data/`` or ``shards/``).
        to: Target format: ``"npy"`` or ``"hdf5"``.
        shard_size: Samples per HDF5 shard. Defaults to about 1 GiB of data.
        compression: HDF5 compression ``"none"``, ``"gzip"`` or ``"lzf"``.
            Defaults to ``"none"``.
        overwrite: Replace ``out`` if it exists and is a dataset kpipe wrote (see
            `kpipe.prepare`). Defaults to `False`.
        verify: Check the sha256 of HDF5 source shards before reading them
            (a shard verified before and unchanged since is not hashed again).
            Defaults to `True`.
        progress: Called with the number of samples done since the last call.
        on_start: Called once with the number of samples to convert.

    Returns:
        A `ConvertResult` with the new manifest.

    Raises:
        ManifestError: If the source manifest cannot be read.
        InputError: If an option is invalid or ``out`` is the source folder.
        OutputExistsError: If ``out`` exists and ``overwrite`` is False, or
            is not a dataset kpipe wrote.
        StoreError: If a source file is missing, truncated or corrupt, or the
            output cannot be written (disk full...; ``out`` is left as it was).
        SampleNotFoundError: If a sample of the manifest has no data.

    Example:
        >>> result = convert("prepared/manifest.json", "prepared_h5", to="hdf5")
        >>> print(result.summary())
        Converted 1797 samples from npy to hdf5 (1 shard, compression none) in 0.4s -> ...
    """
    start = time.perf_counter()
    shard_size = check_int(shard_size, "shard_size", minimum=1, allow_none=True)
    compression = check_storage_options(to, shard_size, compression)
    source = load_manifest(manifest)
    out = Path(out)
    if source.path is None:
        raise InputError("`convert` needs a manifest loaded from (or saved to) a file.")
    src_dir = source.path.parent
    check_output_folder(out, src_dir, overwrite=overwrite, what="source dataset")

    hdf5 = source.storage.get("format") == "hdf5"
    store = open_store(source, **({"verify": "once" if verify else "never"} if hdf5 else {}))
    if verify and hdf5:
        store.verify(recheck=False)  # fail before anything is written
    # Partition by partition (as prepare lays out shards), then any unpartitioned IDs.
    order = [sid for ids in source.partition.values() for sid in ids]
    seen = set(order)
    order += [sid for sid in source.labels if sid not in seen]

    with store, staged_dataset(out, source=src_dir, overwrite=overwrite, what="source dataset") as staging:
        writer = staging.writer(to, source.sample_shape, source.sample_dtype,
                                shard_size=shard_size, compression=compression)
        if on_start:
            on_start(len(order))
        step = max(1, _BLOCK_BYTES // max(1, store.dtype.itemsize * math.prod(store.sample_shape)))
        for lo in range(0, len(order), step):
            block = order[lo : lo + step]
            writer.add_many(block, store.read_many(block))
            if progress:
                progress(len(block))
        storage = writer.finish(dict(source.labels), order)
        params = dict(source.prepare)
        params["format"] = to
        if to == "hdf5":
            params["compression"] = compression
        else:
            params.pop("compression", None)
        params["converted_from"] = {"path": str(source.path), "format": source.storage.get("format")}
        new = Manifest(
            classes=list(source.classes),
            labels=dict(source.labels),
            partition={p: list(ids) for p, ids in source.partition.items()},
            sample_shape=source.sample_shape,
            sample_dtype=source.sample_dtype,
            storage=storage,
            sample_weights=dict(source.sample_weights) if source.sample_weights is not None else None,
            sample_checksums=source.sample_checksums,  # digests of the decoded arrays: the same in every format
            prepare=params,
            skipped=list(source.skipped),
        )
        new.save(staging.path / MANIFEST_NAME)
    new.path = (out / MANIFEST_NAME).resolve()
    return ConvertResult(manifest=new, source_format=str(source.storage.get("format")),
                         seconds=time.perf_counter() - start)
