"""Atomic file writes: write ``name.<random>.partial``, then ``os.replace``.

A killed process leaves at most a ``*.partial`` file, never a half-written
file under the final name (the pattern of zarr and TFDS).
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
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
    np.save(buf, np.asarray(array, order="C"), allow_pickle=False)  # a 0-d array stays 0-d
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


def stat_identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """``(st_dev, st_ino, st_size, st_mtime_ns)``: which file, and whether it changed."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


_LOCK_HINT = ("another process holds it open for writing (HDF5 file locking); wait for that process to finish, or "
              "set the environment variable HDF5_USE_FILE_LOCKING=FALSE to read it anyway")


def os_error_errno(e: BaseException) -> int | None:
    """The errno of an `OSError`, also when HDF5 only quotes it in the message (``errno = 28``)."""
    code = getattr(e, "errno", None)
    if isinstance(code, int):
        return code
    match = re.search(r"errno = (\d+)", str(e))
    return int(match.group(1)) if match else None


def describe_os_error(e: BaseException) -> str:
    """What an OS error is, in words a user can act on (no space, file limit, lock, permission...).

    Each kind is reported as what it is, never as "corrupt": ``ENOSPC`` and
    ``EDQUOT`` (disk or quota full), ``EROFS`` (read-only file system),
    ``EACCES`` / ``EPERM`` (permission), ``ENOENT`` (missing), ``EMFILE`` /
    ``ENFILE`` (open-file limit, with the current ``ulimit -n``), ``EIO``, and
    HDF5's "unable to lock file" (with the ``HDF5_USE_FILE_LOCKING`` hint).

    Returns:
        A phrase such as ``"no space left on the device (ENOSPC)"``.
    """
    text = str(e)
    if "unable to lock file" in text:
        return _LOCK_HINT
    code = os_error_errno(e)
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        what = "no space left on the device" if code == errno.ENOSPC else "disk quota exceeded"
        return f"{what} ({errno.errorcode[code]}); free some space or write somewhere else"
    if code == errno.EROFS:
        return "the file system is read-only (EROFS); write somewhere else"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied ({errno.errorcode[code]}); check the file's owner and mode"
    if code == errno.ENOENT:
        return "it does not exist (ENOENT)"
    if code in (errno.EMFILE, errno.ENFILE):
        try:
            import resource

            limit = f"the limit is {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}, "
        except (ImportError, OSError, ValueError):
            limit = ""
        scope = "this process" if code == errno.EMFILE else "the system"
        return (f"too many open files in {scope} ({errno.errorcode[code]}; {limit}see `ulimit -n`); raise the "
                "limit or open fewer files at once")
    if code == errno.EIO:
        return "input/output error (EIO): the disk or network file system failed"
    if code is not None and code in errno.errorcode:
        return f"{os.strerror(code)} ({errno.errorcode[code]})"
    return text or type(e).__name__


def output_write_error(e: OSError, path: str | os.PathLike, *, out: str | os.PathLike | None = None):
    """An `OutputWriteError` (a `StoreError`) for an error *writing output*: never an input's fault.

    Args:
        e: The OS error.
        path: The file or folder being written.
        out: The output folder the user asked for; the message says it was
            left as it was.
    """
    from kpipe.errors import OutputWriteError

    untouched = f" {out} was left as it was." if out is not None else ""
    return OutputWriteError(f"Cannot write the output {path}: {describe_os_error(e)}.{untouched}")
