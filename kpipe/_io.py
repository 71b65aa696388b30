"""Atomic file writes: write ``name.<random>.partial``, then ``os.replace``.

A killed process leaves at most a ``*.partial`` file, never a half-written
file under the final name (the pattern of zarr and TFDS).
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

PARTIAL_SUFFIX = ".partial"


def _partial_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` atomically.

    Args:
        path: Final file path; its folder must exist.
        data: The bytes to write.
        fsync: Also flush to disk before the rename, so that the file
            survives a power loss, not only a killed process. Defaults to
            `False` (one fsync per sample costs more than the write).

    Raises:
        OSError: If the file cannot be written (the partial file is removed).
    """
    path = Path(path)
    tmp = _partial_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save one array as ``.npy`` (``allow_pickle=False``) atomically."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"), fsync=True)


def atomic_save(path: str | os.PathLike, save: Callable[[Path], Any]) -> None:
    """Call ``save(tmp_path)``, then move ``tmp_path`` to ``path`` atomically.

    For writers that insist on a file name suffix (Keras: ``.keras``,
    ``.weights.h5``), the temporary name keeps every suffix of ``path``:
    ``last.weights.h5`` is written as ``last.<random>.partial.weights.h5``.
    A killed run leaves the old file (or none), never a half-written one.
    """
    path = Path(path)
    base, dot, rest = path.name.partition(".")
    tmp = path.with_name(f"{base}.{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}{dot}{rest}")
    try:
        save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_output_folder(out: Path, source: Path, *, overwrite: bool, what: str = "input") -> None:
    """Refuse an output folder that exists (without ``overwrite``) or would replace ``source``.

    Raises:
        OutputExistsError: If ``out`` exists, is not empty and ``overwrite`` is False.
        InputError: If ``out`` is ``source``, a folder above it, or a folder inside it.
    """
    from kpipe.errors import InputError, OutputExistsError

    if out.exists() and not overwrite and (out.is_file() or any(out.iterdir())):
        raise OutputExistsError(
            f"Output {out} exists already. Pass --overwrite to replace it, or choose another --out."
        )
    if out.resolve() == source.resolve() or out.resolve() in source.resolve().parents:
        raise InputError(f"Output {out} would replace the {what} {source}; choose another --out.")
    if source.is_dir() and source.resolve() in out.resolve().parents:
        raise InputError(f"Output {out} is inside the {what} {source}; choose an --out outside it.")


def staging_folder(out: Path) -> Path:
    """A new, empty sibling of ``out`` (``.OUT.partial-<random>``) to build it in."""
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    return staging
