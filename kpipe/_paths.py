"""Confinement: every path built from manifest data stays inside its dataset folder.

A manifest may come from someone else. Sample IDs, shard file names and the
storage root are data, not paths: kpipe builds file names from them, so each is
checked before any file is opened or written, the way Python's ``tarfile``
``data_filter`` and TensorFlow Datasets' extraction code treat member names
from an archive:

* a sample ID or a shard file name is one file-name component: no ``/``, no
  ``\\``, no NUL or other control character, not ``.`` or ``..``, at most
  `MAX_NAME_CHARS` characters;
* the storage root is a relative path with no ``..`` component;
* the resolved path (symbolic links followed) must lie inside the resolved
  dataset folder; a link that leads outside is refused.

Only regular files are opened for reading (`open_regular`): a FIFO or a device
named by a manifest (or planted in a dataset folder) is refused, never read
(a FIFO would block forever, ``/dev/zero`` never ends).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path, PurePosixPath

from kpipe.errors import KpipeError, ManifestError, StoreError

MAX_NAME_CHARS = 200
"""Longest sample ID or shard file name (``<ID>.npy`` must fit a 255-byte file name)."""

NAME_PATTERN = r"^(?!\.\.?$)[^/\\\u0000-\u001f\u007f]{1,200}$(?!\n)"
"""Regular expression of a safe file-name component (the schema's ``sample_id`` and ``file_name``)."""

_NAME = re.compile(NAME_PATTERN)


def is_safe_name(name: object) -> bool:
    """Whether ``name`` is a string that is one safe file-name component (see the module docstring)."""
    return type(name) is str and _NAME.match(name) is not None


def name_problem(name: object) -> str:
    """Why ``name`` is not a safe file-name component (for messages)."""
    if not isinstance(name, str):
        return f"it is a {type(name).__name__}, not a string"
    if not name:
        return "it is empty"
    if name in (".", ".."):
        return "it is '.' or '..'"
    if "/" in name or "\\" in name:
        return "it contains a path separator"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "it contains a NUL or control character"
    if len(name) > MAX_NAME_CHARS:
        return f"it is longer than {MAX_NAME_CHARS} characters"
    return "it is not a plain file name"


def check_sample_id(sample_id: object, *, where: str = "", error: type[KpipeError] = ManifestError) -> str:
    """Return ``sample_id`` if it is safe as the file name ``<ID>.npy``.

    Raises:
        ManifestError: (or ``error``) If it is not; the message says why.
    """
    if not is_safe_name(sample_id):
        raise error(
            f"Sample ID {sample_id!r}{where} is not allowed: {name_problem(sample_id)}. An ID must be one plain "
            "file name (no '/', '\\\\', NUL or control characters, not '.' or '..'). The manifest was not written "
            "by `kpipe prepare`, or was edited; prepare the dataset again."
        )
    return sample_id


def check_relative(path: str, *, what: str, where: str = "") -> PurePosixPath:
    """Return ``path`` as a relative path if it has no absolute root and no ``..`` component.

    Raises:
        ManifestError: If ``path`` is absolute, empty, holds ``..`` or NUL.
    """
    if not isinstance(path, str) or not path or "\x00" in path or "\\" in path:
        raise ManifestError(f"The {what} {path!r}{where} is not a relative path inside the dataset folder.")
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts:
        raise ManifestError(
            f"The {what} {path!r}{where} points outside the dataset folder (absolute paths and '..' are refused). "
            "Received a manifest that was not written by kpipe, or was edited; prepare the dataset again."
        )
    return pure


def confined(root: str | os.PathLike, relative: str | os.PathLike, *, what: str, where: str = "",
             error: type[KpipeError] = ManifestError) -> Path:
    """``root / relative``, refused unless it resolves inside ``root``.

    Args:
        root: The folder the path must stay in (e.g. the dataset folder).
        relative: A relative path from manifest data.
        what: What the path is, for messages (``"storage root"``, ``"shard file"``).
        where: Extra context for messages, e.g. ``" in /data/manifest.json"``.
        error: Error class to raise. Defaults to `ManifestError`.

    Returns:
        The joined path (not resolved: it keeps the caller's spelling).

    Raises:
        ManifestError: (or ``error``) If ``relative`` is absolute, holds ``..``,
            or resolves (through a symbolic link) outside ``root``.
    """
    pure = check_relative(os.fspath(relative), what=what, where=where)
    root = Path(root)
    path = root.joinpath(*pure.parts)
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise error(
            f"The {what} {os.fspath(relative)!r}{where} resolves to {real}, outside the dataset folder {real_root} "
            "(through a symbolic link). kpipe reads and writes only inside the dataset folder."
        )
    return path


def open_regular(path: str | os.PathLike, *, what: str = "file", follow_links: bool = True) -> int:
    """Open ``path`` read-only and return its file descriptor, if it is a regular file.

    The file is opened with ``O_NONBLOCK`` (opening a FIFO does not wait for a
    writer) and checked with ``fstat`` before anything is read.

    Args:
        path: The file.
        what: What it is, for messages.
        follow_links: Follow a symbolic link in the last component. Defaults
            to `True`; `False` refuses a link (``O_NOFOLLOW``).

    Raises:
        FileNotFoundError: If it does not exist.
        StoreError: If it is not a regular file (or a refused link).
        OSError: Any other error of ``open``.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow_links:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if not follow_links and e.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            raise StoreError(f"The {what} {path} is a symbolic link; kpipe reads only regular files.") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise StoreError(
            f"The {what} {path} is not a regular file (it is a {_kind(mode)}); kpipe reads only regular files."
        )
    return fd


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"), (stat.S_ISLNK, "link")):
        if test(mode):
            return name
    return "special file"
