"""Storage backends behind one `Store` interface, chosen from the manifest."""

from __future__ import annotations

from collections.abc import Callable

from kpipe.errors import ManifestError
from kpipe.manifest import Manifest
from kpipe.storage.base import Store
from kpipe.storage.npy import NpyStore


def _open_npy(manifest: Manifest, **kwargs) -> Store:
    return NpyStore(manifest.root, manifest.sample_shape, manifest.sample_dtype,
                    ids=list(manifest.labels), **kwargs)


STORE_OPENERS: dict[str, Callable[..., Store]] = {"npy": _open_npy}
"""Storage format name (``manifest.storage["format"]``) -> opener."""


def open_store(manifest: Manifest, **kwargs) -> Store:
    """Open the store a manifest describes (lazily: no file is opened yet).

    Args:
        manifest: A loaded `Manifest`.
        **kwargs: Passed to the backend (e.g. ``num_threads`` for npy).

    Returns:
        A `Store` for ``manifest.storage["format"]``.

    Raises:
        ManifestError: If the storage format is unknown.
    """
    fmt = manifest.storage.get("format")
    if fmt not in STORE_OPENERS:
        raise ManifestError(
            f"Unknown storage format {fmt!r} in {manifest.path}. This kpipe reads: "
            f"{', '.join(STORE_OPENERS)}."
        )
    return STORE_OPENERS[fmt](manifest, **kwargs)


__all__ = ["NpyStore", "STORE_OPENERS", "Store", "open_store"]
