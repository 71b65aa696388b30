"""Building a dataset folder safely: one staging helper for ``prepare`` and ``convert``.

A dataset is built in a sibling staging folder ``.OUT.partial-<token>`` and
moved into place at the end, so a killed run never leaves ``OUT`` half
written. This module owns every step of that, once:

* `check_output_folder`: where ``OUT`` may be. Never the working directory,
  a home folder, a folder above either, the input or a folder above it; an
  existing, non-empty ``OUT`` needs ``overwrite``, and ``overwrite`` replaces
  only a dataset kpipe wrote (the `MARKER_NAME` file and ``manifest.json``,
  nothing else but kpipe's own entries, at the top and in its sample folders
  ``data/`` and ``shards/``: only the files the manifest names);
* `staged_dataset`: a context manager that makes the staging folder (with
  the marker, which records the writing process), yields it, and on success
  moves it into place; on any error it removes the staging folder, leaves
  ``OUT`` as it was, and reports an error *writing* (disk full, read-only
  file system...) as a `StoreError` that says so, never as a bad input;
* the final move cannot replace a dataset that appeared meanwhile: the
  staging folder is renamed onto ``OUT`` only while ``OUT`` is missing or an
  empty folder (``rename(2)`` refuses a non-empty one), so of two runs racing
  to a new ``OUT`` exactly one wins and the other gets `OutputExistsError`;
* `recover_interrupted`: folders left by a killed run next to ``OUT``
  (staging folders, and the old dataset of a replacement cut between its two
  renames) are cleaned up or restored, but only kpipe's own and only when the
  process that made them is gone (pid, host, boot and process start time are
  recorded in the marker).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import shutil
import socket
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kpipe._io import atomic_write_json, output_write_error
from kpipe.errors import InputError, KpipeError, OutputExistsError, OutputWriteError, StoreError

MARKER_NAME = ".kpipe-dataset"
"""Ownership marker written into every dataset folder kpipe creates (JSON: kpipe version, writer process)."""

MANIFEST_NAME = "manifest.json"
KPIPE_ENTRIES = frozenset({MANIFEST_NAME, MARKER_NAME, "data", "shards", "runs", "class_counts.png", "samples.png"})
"""Top-level entries of a dataset folder that kpipe writes (``runs/`` holds training runs kept with the data; the
two PNGs are ``kpipe inspect``'s figures)."""

_STAGING_INFIX = ".partial-"
_OLD_INFIX = ".old-"


# ------------------------------------------------------------------ processes
def _proc_start(pid: int) -> str | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), else `None`."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
        return text[text.rindex(")") + 2:].split()[19]
    except (OSError, ValueError, IndexError):
        return None


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def process_identity() -> dict[str, Any]:
    """This process, as recorded in a marker: pid, host name, boot id and start time."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "boot_id": _boot_id(), "started": _proc_start(pid)}


def owner_alive(writer: Any) -> bool | None:
    """Whether the process described by ``writer`` (see `process_identity`) still runs.

    Returns:
        `True` or `False`; `None` when it cannot be told (another host, or a
        malformed record): such folders are left alone.
    """
    if not isinstance(writer, dict) or not isinstance(writer.get("pid"), int):
        return None
    if writer.get("host") != socket.gethostname():
        return None
    boot = _boot_id()
    if boot is not None and writer.get("boot_id") not in (None, boot):
        return False  # recorded before the last reboot
    pid = writer["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    except OSError:
        return None
    started = writer.get("started")
    return started is None or _proc_start(pid) in (None, started)  # a reused pid started later


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of a kpipe dataset or staging folder, or `None` if there is none (or it is unreadable)."""
    try:
        data = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("kpipe") == "dataset" else None


def _write_marker(folder: Path, token: str) -> None:
    from kpipe._version import __version__

    atomic_write_json(folder / MARKER_NAME, {
        "kpipe": "dataset",
        "kpipe_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "token": token,
        "writer": process_identity(),
    })


# -------------------------------------------------------------- output checks
STORAGE_FOLDERS = {"data": "npy", "shards": "hdf5"}
"""Folders of a dataset that hold its samples -> the storage format that writes them (`kpipe.storage.STORAGE_ROOTS`
reversed): ``data/<ID>.npy`` files, or ``shards/shard-NNNNN.h5`` files."""


def _foreign_entry(out: Path) -> str | None:
    """Why ``out`` is not a dataset kpipe wrote (`None` if it is one).

    The same rule at the top and inside kpipe's sample folders: every entry must be one kpipe writes (or a
    ``*.partial`` file of an interrupted write); in ``data/`` and ``shards/`` that is a file the manifest names.
    """
    if read_marker(out) is None:
        return f"it has no {MARKER_NAME} marker"
    if not (out / MANIFEST_NAME).is_file():
        return f"it has no {MANIFEST_NAME}"
    for entry in sorted(out.iterdir()):
        if entry.name not in KPIPE_ENTRIES and not entry.name.endswith(".partial"):
            return f"it holds {entry.name!r}, which kpipe did not write"
    storage = _manifest_storage(out)
    for folder, format in STORAGE_FOLDERS.items():
        reason = _foreign_in_folder(out / folder, folder, storage, format)
        if reason is not None:
            return reason
    return None


def _manifest_storage(out: Path) -> dict[str, Any] | None:
    """``{"format", "root", "names"}`` from ``out``'s manifest: the file names its sample folder holds (`None`
    if the manifest cannot be read: then files are told by name, see `_foreign_in_folder`)."""
    try:
        d = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
        storage, labels = d["storage"], d["labels"]
        if storage.get("format") == "hdf5":
            names = {str(shard["file"]) for shard in storage.get("shards", [])}
        else:
            names = {f"{sid}.npy" for sid in labels}
        return {"format": storage.get("format"), "root": storage.get("root", "data"), "names": names}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _foreign_in_folder(path: Path, folder: str, storage: dict[str, Any] | None, format: str) -> str | None:
    """Why the sample folder ``path`` holds something kpipe did not write, or `None`.

    With a readable manifest, its files must be those the manifest names (another format's folder must be
    empty); without one, ``*.npy`` files in ``data/`` and ``shard-*.h5`` files in ``shards/``. Sub-folders,
    links and other names are not kpipe's.
    """
    if not os.path.lexists(path):
        return None
    if path.is_symlink() or not path.is_dir():
        return f"its {folder!r} is not a folder kpipe wrote"
    if storage is None:
        names = None
    elif storage["format"] == format and storage["root"] == folder:
        names = storage["names"]
    else:
        names = set()
    with os.scandir(path) as it:
        for e in sorted(it, key=lambda e: e.name):
            if e.name.endswith(".partial"):
                continue
            if names is None:
                ours = e.name.endswith(".npy") if format == "npy" else (e.name.startswith("shard-")
                                                                         and e.name.endswith(".h5"))
            else:
                ours = e.name in names
            if not ours or not e.is_file(follow_symlinks=False):
                return f"it holds {folder}/{e.name}, which kpipe did not write"
    return None


def check_output_folder(out: str | os.PathLike, source: str | os.PathLike | None, *, overwrite: bool,
                        what: str = "input") -> None:
    """Refuse an output folder that kpipe must not write or replace.

    Args:
        out: The output folder (``--out``).
        source: The input (raw data or source dataset), or `None`.
        overwrite: Whether an existing dataset may be replaced.
        what: What ``source`` is, for messages (``"input"``, ``"source dataset"``).

    Raises:
        InputError: If ``out`` is the working directory, a home folder, a
            folder above one of them, the input, a folder above the input,
            inside the input, or a symbolic link.
        OutputExistsError: If ``out`` exists, is not an empty folder, and
            ``overwrite`` is False; or ``overwrite`` is True but ``out`` is not
            a dataset kpipe wrote (a file, or a folder without kpipe's marker
            and manifest, or with entries kpipe did not write, at its top or
            in ``data/`` / ``shards/``: a file there the manifest does not name).
    """
    out = Path(out)
    real = Path(os.path.realpath(out))
    protected = {"the working directory": Path.cwd().resolve()}
    with contextlib.suppress(RuntimeError, KeyError):  # no home folder
        protected["your home folder"] = Path.home().resolve()
    if source is not None:
        protected[f"the {what}"] = Path(source).resolve()
    for name, place in protected.items():
        if real == place or real in place.parents:
            held = name if real == place else f"{name} {place}"
            raise InputError(f"Output {out} would replace {held}; choose another --out.")
    if source is not None and Path(source).is_dir() and Path(source).resolve() in real.parents:
        raise InputError(f"Output {out} is inside the {what} {source}; choose an --out outside it.")
    if out.is_symlink():
        raise InputError(f"Output {out} is a symbolic link; pass the folder it points to, or another --out.")
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputExistsError(f"Output {out} exists and is not a folder; kpipe will not replace it. "
                                "Choose another --out.")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise OutputExistsError(
            f"Output {out} exists already. Pass --overwrite to replace it, or choose another --out."
        )
    reason = _foreign_entry(out)
    if reason is not None:
        raise OutputExistsError(
            f"Output {out} is not a dataset written by kpipe ({reason}); --overwrite replaces only kpipe's own "
            "datasets. Remove it yourself, or choose another --out."
        )


# -------------------------------------------------------------- recovery
def _siblings(out: Path, infix: str) -> list[Path]:
    prefix = f".{out.name}{infix}"
    try:
        return sorted(p for p in out.parent.iterdir() if p.name.startswith(prefix) and p.is_dir()
                      and not p.is_symlink())
    except OSError:
        return []


def _recover(out: Path, done: list[str]) -> None:
    """The work of `recover_interrupted`; appends a message per action to ``done``."""
    staging = {_token(p, _STAGING_INFIX): p for p in _siblings(out, _STAGING_INFIX)}
    current = read_marker(out) if out.is_dir() else None
    for old in _siblings(out, _OLD_INFIX):
        token = _token(old, _OLD_INFIX)
        partner = staging.get(token)
        marker = read_marker(partner) if partner is not None else None
        if marker is None and current is not None and current.get("token") == token:
            marker = current
        if marker is not None and owner_alive(marker.get("writer")) is not False:
            continue
        if not out.exists():
            if partner is not None and (partner / "runs").is_dir() and not (old / "runs").exists():
                os.replace(partner / "runs", old / "runs")
            os.replace(old, out)
            done.append(f"Restored {out} from an interrupted replacement (the kpipe process that was replacing "
                        "it is gone).")
        elif not (old / "runs").exists():
            shutil.rmtree(old, ignore_errors=True)
            done.append(f"Removed {old}, the old copy of {out} left by an interrupted kpipe run.")
        # else: its runs/ would be lost; left for the user
    for partner in staging.values():
        if not partner.exists():
            continue
        marker = read_marker(partner)
        if marker is None:
            if not any(partner.iterdir()):  # killed before writing its marker
                partner.rmdir()
            continue  # not recognisably kpipe's: left alone
        if owner_alive(marker.get("writer")) is False:
            shutil.rmtree(partner, ignore_errors=True)
            done.append(f"Removed {partner}, a staging folder left by a kpipe run that was killed.")


def _token(folder: Path, infix: str) -> str:
    return folder.name.rsplit(infix, 1)[-1]


def recover_interrupted(out: str | os.PathLike) -> list[str]:
    """Clean up, or restore, what killed kpipe runs left next to ``out``.

    * a staging folder ``.OUT.partial-<token>`` whose writer is gone is removed
      (an empty one, killed before its marker was written, too);
    * the old dataset ``.OUT.old-<token>`` of a replacement cut between its
      renames is moved back to ``OUT`` when ``OUT`` is missing (with the
      ``runs/`` folder the run had moved into its staging folder), or removed
      when the new ``OUT`` is in place.

    Folders whose writer runs, or cannot be told (another host), are left alone.

    Returns:
        One message per action taken (also issued as warnings).
    """
    out = Path(out)
    done: list[str] = []
    try:
        _recover(out, done)
    except OSError:
        pass  # best effort: what could not be cleaned up is left as it is
    for message in done:
        warnings.warn(message, stacklevel=3)
    return done


# -------------------------------------------------------------- staging
class Staging:
    """A staging folder being filled (see `staged_dataset`).

    Attributes:
        path: The staging folder; write the dataset here.
        out: The final folder.
        token: Random hex shared by the staging folder and the marker.
    """

    def __init__(self, path: Path, out: Path, token: str) -> None:
        self.path, self.out, self.token = path, out, token
        self._cleanups: list[Callable[[], None]] = []

    def on_abort(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` if the build fails (e.g. a writer's ``abort``), before the folder is removed."""
        self._cleanups.append(cleanup)

    def writer(self, format: str, sample_shape, dtype, **options):
        """`kpipe.storage.make_writer` into this folder, aborted if the build fails."""
        from kpipe.storage import make_writer

        writer = make_writer(format, self.path, sample_shape, dtype, **options)
        self.on_abort(writer.abort)
        return writer

    def _abort(self) -> None:
        for cleanup in reversed(self._cleanups):
            with contextlib.suppress(Exception):
                cleanup()
        shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def staged_dataset(out: str | os.PathLike, *, source: str | os.PathLike | None, overwrite: bool,
                   what: str = "input") -> Iterator[Staging]:
    """Build a dataset in a staging folder and move it to ``out`` when the block ends without error.

    Checks ``out`` (`check_output_folder`), cleans up after killed runs
    (`recover_interrupted`), makes ``.OUT.partial-<token>`` with the marker,
    yields a `Staging`, then swaps it into place: an old dataset at ``out``
    (``overwrite``) is renamed aside, its ``runs/`` moved into the new one, the
    new one renamed to ``out`` and the old one removed.

    On any error the staging folder is removed and ``out`` is left as it was;
    an `OSError` (writing the output) becomes a `StoreError` that names the
    cause (no space left, read-only file system, permission...).

    Raises:
        InputError, OutputExistsError: From `check_output_folder`; also
            `OutputExistsError` if another process created ``out`` meanwhile.
        StoreError: If writing the output fails.
    """
    out = Path(out)
    recover_interrupted(out)
    check_output_folder(out, source, overwrite=overwrite, what=what)
    token = uuid.uuid4().hex[:12]
    path = out.parent / f".{out.name}{_STAGING_INFIX}{token}"
    try:
        path.mkdir(parents=True)
        _write_marker(path, token)
    except OSError as e:
        shutil.rmtree(path, ignore_errors=True)
        raise output_write_error(e, path, out=out) from None
    staging = Staging(path, out, token)
    try:
        yield staging
        _swap_into_place(staging, overwrite=overwrite)
    except BaseException as e:
        staging._abort()
        if isinstance(e, OSError) and not isinstance(e, KpipeError):
            raise output_write_error(e, getattr(e, "filename", None) or path, out=out) from None
        if type(e) in (StoreError, OutputWriteError) and "left as it was" not in str(e):  # a file failed
            raise type(e)(f"{e} {out} was left as it was.") from None
        raise


def _swap_into_place(staging: Staging, *, overwrite: bool) -> None:
    """Rename the finished staging folder to ``out``; with ``overwrite``, the old dataset goes last."""
    out, path = staging.out, staging.path
    old = None
    if overwrite and out.exists() and any(out.iterdir()):
        check_output_folder(out, None, overwrite=True)  # still kpipe's (it may have changed meanwhile)
        old = out.parent / f".{out.name}{_OLD_INFIX}{staging.token}"
        os.replace(out, old)
        if (old / "runs").is_dir() and not (path / "runs").exists():
            os.replace(old / "runs", path / "runs")  # training runs kept next to the data are not lost
    try:
        os.rename(path, out)  # onto a missing or empty folder only
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise
        if old is not None:
            _undo_replacement(old, path, out)
        raise OutputExistsError(
            f"Output {out} was created by another process while this one was writing; it was left as it is and "
            "nothing was written. Pass --overwrite to replace it, or choose another --out."
        ) from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _undo_replacement(old: Path, staging: Path, out: Path) -> None:
    """Best effort after a failed final rename: give the old dataset its ``runs/`` and name back."""
    if (staging / "runs").is_dir() and not (old / "runs").exists():
        os.replace(staging / "runs", old / "runs")
    with contextlib.suppress(OSError):
        os.rename(old, out)
