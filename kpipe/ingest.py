"""Raw input layouts -> a list of samples to convert.

Three layouts are understood, detected by `detect_layout` or forced:

* ``"images"``: ``RAW/<class>/.../<file>`` with ``.png .jpg .jpeg .bmp .gif
  .tif .tiff .webp`` files (any case). Class names are the sorted sub-folder
  names, and each class folder is read recursively (sub-folders too), as
  ``keras.utils.image_dataset_from_directory`` does.
* ``"npy"``: ``RAW/<class>/.../<file>.npy``, loaded with ``allow_pickle=False``.
* ``"csv"``: ``RAW`` is a ``.csv`` file, one row per sample; the label column
  names the class, the other numeric columns form a float32 feature vector.

Listing (`scan`) is cheap and runs in the main process; loading one sample
(`load_sample`) is what runs in parallel. An input that cannot be used is
never fatal and never silent: it is returned in ``skipped`` as
``{"path": ..., "reason": ..., "kind": ...}``, where ``kind`` is one of
`SKIP_KINDS` (reports group by it).

Rules for folders (one rule for every level):

* names starting with ``.`` (hidden files and folders, macOS ``._x`` files)
  are skipped as ``"hidden"``; ``__name`` folders are ordinary classes;
* only regular files are opened: FIFOs, sockets and devices are skipped
  (``"special"``) without being opened, broken symbolic links are reported
  (``"broken-link"``), folders that cannot be listed too (``"unreadable-folder"``);
* symbolic links are followed; a folder reached a second time within a class
  (a link loop, or two links to one folder) is read once (``"link-loop"``).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import hashlib
import io
import math
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from kpipe.errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
NPY_EXTENSIONS = (".npy",)
LAYOUTS = ("images", "npy", "csv")
COLOR_MODES = ("grayscale", "rgb", "rgba")
IMAGE_DTYPES = ("auto", "uint8", "uint16", "float32")
"""Values of ``dtype`` for images (see `ImageOptions`)."""
BACKGROUNDS = ("white", "black")
"""Values of ``background``: what transparent pixels are composited onto for ``rgb`` / ``grayscale``."""
MISSING_POLICIES = ("auto", "drop-rows", "drop-columns", "fill=VALUE")
"""Values of ``missing`` for CSV input (see `parse_missing`)."""
MISSING_TOKENS = frozenset(
    s.lower() for s in ("", "NA", "N/A", "n/a", "NaN", "-NaN", "nan", "-nan", "NULL", "null", "None", "?", "#N/A",
                        "#N/A N/A", "#NA", "<NA>", "-1.#IND", "-1.#QNAN", "1.#IND", "1.#QNAN")
)
"""CSV cells read as a missing value (compared case-insensitively, after stripping blanks): pandas'
default ``na_values`` plus ``?`` (used by many UCI tables)."""

SKIP_KINDS = {
    "hidden": "hidden (name starts with '.')",
    "top-level": "file at the top level, not in a class folder",
    "not-a-sample": "not a sample file (extension)",
    "special": "not a regular file (FIFO, socket or device)",
    "broken-link": "broken symbolic link",
    "unreadable-folder": "folder cannot be listed",
    "link-loop": "folder already read through another link",
    "empty-class": "class folder without sample files",
    "unreadable": "unreadable or corrupt",
    "size": "image of another size",
    "shape": "array of another shape",
    "dtype": "values kpipe cannot store as they are (or another dtype than the dataset's)",
    "nonfinite": "NaN or Inf values",
    "duplicate": "exact duplicate of another sample",
    "missing-value": "CSV row with a missing value",
    "bad-row": "malformed CSV row",
    "missing-label": "no label",
    "class-dropped": "class left without any sample",
}
"""Kinds of skipped inputs -> what they mean (the ``kind`` of each ``skipped`` entry)."""

_CHANNELS = {"grayscale": 1, "rgb": 3, "rgba": 4}
_PIL_MODES = {"grayscale": "L", "rgb": "RGB", "rgba": "RGBA"}
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # one band, more than 8 bits (I: 32-bit signed)
_FLOAT_MODES = ("F",)
_MAX_ID_LEN = 150
_ORIENTATION_TAG = 0x0112


class SampleError(ValueError):
    """One raw sample that cannot be used; it is skipped with ``kind`` and the message as reason.

    Attributes:
        kind: One of `SKIP_KINDS`.
        detail: Optional machine-readable detail (e.g. the image size ``"12x10"``).
    """

    def __init__(self, kind: str, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class RawSample:
    """One raw sample to convert.

    Attributes:
        id: Sample ID, safe as a file name, unique within the dataset.
        label: Class index.
        source: Where it comes from: a file path, or ``"file.csv:LINE"``.
        path: The file to read (images and npy layouts), else `None`.
        values: The feature vector (csv layout), float32 of shape ``(F,)``.
    """

    id: str
    label: int
    source: str
    path: Path | None = None
    values: np.ndarray | None = None


@dataclasses.dataclass
class ScanResult:
    """What `scan` found: classes, samples to convert, and skipped inputs."""

    layout: str
    classes: list[str]
    samples: list[RawSample]
    skipped: list[dict[str, str]]
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    weights: dict[str, float] | None = None  # sample ID -> weight (CSV --weight-column)


def skip(path: str | os.PathLike, kind: str, reason: str) -> dict[str, str]:
    """One ``skipped`` entry: ``{"path": ..., "reason": ..., "kind": ...}``.

    Raises:
        ValueError: If ``kind`` is not one of `SKIP_KINDS` (a programming error).
    """
    if kind not in SKIP_KINDS:
        raise ValueError(f"`kind` must be one of {', '.join(SKIP_KINDS)}. Received: kind={kind!r}")
    return {"path": str(path), "reason": reason, "kind": kind}


def describe_skipped(skipped: Sequence[dict[str, str]], *, examples: int = 1) -> str:
    """The skipped inputs grouped by kind, most frequent first, for one line.

    Example:
        >>> describe_skipped([skip("a/.x", "hidden", "hidden file"), skip("b", "size", "image is 9x7 ...")])
        "1 hidden (name starts with '.') (e.g. a/.x: hidden file); 1 image of another size (e.g. b: image is 9x7 ...)"
    """
    groups: dict[str, list[dict[str, str]]] = {}
    for s in skipped:
        groups.setdefault(s.get("kind") or "unreadable", []).append(s)
    parts = []
    for kind, entries in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        shown = "; ".join(f"{e['path']}: {e['reason']}" for e in entries[:examples])
        parts.append(f"{len(entries)} {SKIP_KINDS.get(kind, kind)} (e.g. {shown})")
    return "; ".join(parts)


# --------------------------------------------------------------------- IDs
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_id(text: str) -> str:
    """Turn ``text`` into a sample ID that is safe as a file name.

    Runs of characters other than ``A-Z a-z 0-9 . _ -`` become ``_``; leading
    dots and dashes are dropped (no hidden files, no option-like names); an ID
    longer than 150 characters is cut and given a short hash of the full text,
    so that it stays unique.

    Example:
        >>> safe_id("cats/Tom & Jerry.png")
        'cats_Tom_Jerry.png'
    """
    out = _UNSAFE.sub("_", text).lstrip(".-") or "sample"
    if len(out) > _MAX_ID_LEN:
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]
        out = f"{out[: _MAX_ID_LEN - 11]}_{digest}"
    return out


def unique_ids(candidates: Sequence[str]) -> list[str]:
    """Make IDs unique in order: the second ``x`` becomes ``x_2`` (then ``x_3``...).

    Comparison is case-insensitive, so IDs stay distinct as file names on
    case-insensitive file systems too.
    """
    seen: set[str] = set()
    out = []
    for c in candidates:
        candidate, k = c, 1
        while candidate.lower() in seen:
            k += 1
            candidate = f"{c}_{k}"
        seen.add(candidate.lower())
        out.append(candidate)
    return out


# ------------------------------------------------------------- regular files
def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open ``path`` for binary reading if, and only if, it is a regular file.

    The file is opened with ``O_NONBLOCK`` and checked with ``fstat`` on the
    open descriptor, so a FIFO, socket or device (even one swapped in after a
    listing) is refused without blocking and without reading from it.

    Raises:
        SampleError: (``kind="special"``) If ``path`` is not a regular file.
        OSError: If it cannot be opened.
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise SampleError("special", f"{_file_kind(st.st_mode)}, not a regular file; only regular files are read")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SampleError("special", f"{_file_kind(st.st_mode)}, not a regular file; only regular files are read")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# ------------------------------------------------------------------ layouts
def is_hidden(name: str) -> bool:
    """The one rule for hidden entries: the name starts with ``.``."""
    return name.startswith(".")


def _stat_entry(path: Path) -> tuple[os.stat_result | None, dict[str, str] | None]:
    """``(stat, None)`` of what ``path`` points to, or ``(None, skipped entry)``."""
    try:
        return os.stat(path), None
    except FileNotFoundError:
        if os.path.islink(path):
            return None, skip(path, "broken-link", f"broken symbolic link (to {os.readlink(path)})")
        return None, skip(path, "unreadable", "vanished while listing")
    except OSError as e:
        kind = "link-loop" if e.errno == errno.ELOOP else "unreadable"  # ELOOP: a link to itself
        return None, skip(path, kind, f"cannot be read: {e.strerror or e}")


def _list_dir(folder: Path) -> tuple[list[os.DirEntry], dict[str, str] | None]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name), None
    except OSError as e:
        return [], skip(folder, "unreadable-folder", f"folder cannot be listed: {e.strerror or e}")


def _top_level(raw: Path) -> tuple[list[Path], list[dict[str, str]]]:
    """Class folders of ``raw`` (sorted by name, links followed) and the other entries, skipped."""
    entries, problem = _list_dir(raw)
    if problem is not None:
        raise InputError(f"Cannot list the input folder {raw}: {problem['reason']}. Check its permissions.")
    classes, skipped = [], []
    for e in entries:
        p = Path(e.path)
        if is_hidden(e.name):
            skipped.append(skip(p, "hidden", "hidden folder" if e.is_dir() else "hidden file"))
            continue
        st, problem = _stat_entry(p)
        if problem is not None:
            skipped.append(problem)
        elif stat.S_ISDIR(st.st_mode):
            classes.append(p)
        elif stat.S_ISREG(st.st_mode):
            skipped.append(skip(p, "top-level", "file at the top level, not in a class folder"))
        else:
            skipped.append(skip(p, "special", f"{_file_kind(st.st_mode)}, not a regular file or a class folder"))
    return classes, skipped


def _walk_class(class_dir: Path) -> tuple[list[tuple[str, Path]], list[dict[str, str]]]:
    """Every regular file under ``class_dir`` (recursively, links followed without loops).

    Returns:
        ``([(relative path without suffix, path), ...] sorted, skipped)``.
    """
    files: list[tuple[tuple[str, ...], Path]] = []
    skipped: list[dict[str, str]] = []
    visited: set[tuple[int, int]] = set()
    stack: list[tuple[Path, tuple[str, ...]]] = [(class_dir, ())]
    while stack:
        folder, rel = stack.pop()
        st, problem = _stat_entry(folder)
        if problem is not None:
            skipped.append(problem)
            continue
        key = (st.st_dev, st.st_ino)
        if key in visited:
            skipped.append(skip(folder, "link-loop", "folder already read in this class (symbolic link loop or "
                                                     "a second link to it); read once"))
            continue
        visited.add(key)
        entries, problem = _list_dir(folder)
        if problem is not None:
            skipped.append(problem)
            continue
        sub = []
        for e in entries:
            if is_hidden(e.name):
                skipped.append(skip(Path(e.path), "hidden", "hidden folder" if e.is_dir() else "hidden file"))
                continue
            try:  # the entry's type from the listing (no stat call) when it is not a symbolic link
                if not e.is_symlink() and e.is_file(follow_symlinks=False):
                    files.append(((*rel, e.name), e.path))
                    continue
            except OSError:
                pass  # the full check below reports it
            p = Path(e.path)
            est, problem = _stat_entry(p)
            if problem is not None:
                skipped.append(problem)
            elif stat.S_ISDIR(est.st_mode):
                sub.append((p, (*rel, e.name)))
            elif stat.S_ISREG(est.st_mode):
                files.append(((*rel, e.name), e.path))
            else:
                skipped.append(skip(p, "special", f"{_file_kind(est.st_mode)}, not a regular file; not opened"))
        stack.extend(reversed(sub))
    files.sort(key=lambda f: f[0])
    return [("/".join(r[:-1] + (_stem(r[-1]),)), Path(p)) for r, p in files], skipped


def _stem(name: str) -> str:
    """``Path(name).stem`` for a plain file name, without building a `Path`."""
    i = name.rfind(".")
    return name[:i] if 0 < i < len(name) - 1 else name


def detect_layout(raw: str | os.PathLike) -> str:
    """Guess the layout of ``raw``: ``"csv"``, ``"images"`` or ``"npy"``.

    A ``.csv`` file is ``"csv"``. A folder is ``"images"`` or ``"npy"`` by the
    extensions found in its class sub-folders (read recursively), whichever
    is more frequent.

    Raises:
        InputError: If ``raw`` does not exist, is not a regular file or a
            folder, is an empty folder, or holds neither images nor ``.npy``
            files in class sub-folders.
    """
    return _detect(Path(raw))[0]


def _detect(raw: Path) -> tuple[str, list[tuple[Path, list[tuple[str, Path]]]], list[dict[str, str]]]:
    """``(layout, [(class folder, files)], skipped)``; the folder walk is done once, here."""
    if not raw.exists():
        raise InputError(f"Input {raw} does not exist. Pass a folder of class sub-folders or a .csv file.")
    mode = os.stat(raw).st_mode
    if stat.S_ISREG(mode):
        if raw.suffix.lower() == ".csv":
            return "csv", [], []
        raise InputError(
            f"Input {raw} is a file but not a .csv. Pass a folder of class sub-folders "
            "(RAW/<class>/<file>) or a .csv table."
        )
    if not stat.S_ISDIR(mode):
        raise InputError(f"Input {raw} is {_file_kind(mode)}; pass a folder of class sub-folders or a .csv file.")
    class_dirs, skipped = _top_level(raw)
    walked = []
    n_img = n_npy = 0
    for d in class_dirs:
        files, problems = _walk_class(d)
        skipped.extend(problems)
        walked.append((d, files))
        for _, f in files:
            ext = f.suffix.lower()
            n_img += ext in IMAGE_EXTENSIONS
            n_npy += ext in NPY_EXTENSIONS
    if n_img == 0 and n_npy == 0:
        found = f" Skipped: {describe_skipped(skipped)}." if skipped else ""
        raise InputError(
            f"Found no samples in {raw}: expected class sub-folders holding images "
            f"({', '.join(IMAGE_EXTENSIONS)}) or .npy files, e.g. {raw}/cat/0001.png.{found}"
        )
    return ("images" if n_img >= n_npy else "npy"), walked, skipped


_FOLDER_WORDS = {"images": "a folder of images", "npy": "a folder of .npy files"}
"""A folder layout in words, for messages."""


def scan(raw: str | os.PathLike, layout: str = "auto", *, label_column: str | None = None,
         id_column: str | None = None, weight_column: str | None = None, missing: str | None = None) -> ScanResult:
    """List the samples of ``raw`` without loading them (CSV rows are parsed).

    The CSV options (``label_column``, ``id_column``, ``weight_column``, ``missing``) are refused for a folder
    of images or ``.npy`` files rather than ignored: each one given there is a mistake about the input.

    Args:
        raw: A folder of class sub-folders, or a ``.csv`` file.
        layout: ``"auto"`` (see `detect_layout`), ``"images"``, ``"npy"`` or ``"csv"``.
        label_column: CSV column holding the class; `None` (default) means ``"label"``.
        id_column: CSV column holding sample IDs (unique); row numbers if `None`.
        weight_column: CSV column holding per-sample weights (finite, >= 0),
            kept out of the features; `None` for no weights.
        missing: CSV missing-value policy, see `parse_missing`; `None` (default) means ``"auto"``.

    Returns:
        A `ScanResult`; samples in a deterministic order (class, then relative
        path; CSV: row order).

    Raises:
        InputError: If the input is missing or empty, ``layout`` is unknown,
            a CSV ID repeats, the label column looks continuous, a weight
            is not a finite number >= 0 (file and line named), or a CSV
            option is given for a folder.
    """
    raw = Path(raw)
    if layout not in ("auto", *LAYOUTS):
        raise InputError(f"`layout` must be one of auto, {', '.join(LAYOUTS)}. Received: layout={layout!r}")
    if layout == "csv" or (layout == "auto" and raw.suffix.lower() == ".csv" and raw.is_file()):
        return _scan_csv(raw, label_column=label_column, id_column=id_column, weight_column=weight_column,
                         missing=missing)
    if not raw.is_dir() and layout != "auto":
        raise InputError(f"Layout {layout!r} needs a folder of class sub-folders; {raw} is not a folder.")
    detected, walked, skipped = _detect(raw)
    if detected == "csv":
        return _scan_csv(raw, label_column=label_column, id_column=id_column, weight_column=weight_column,
                         missing=missing)
    layout = detected if layout == "auto" else layout
    folder_words = _FOLDER_WORDS.get(layout, f"a {layout} folder")
    if weight_column is not None:
        raise InputError(
            f"`weight_column` applies to CSV input; {raw} is {folder_words}. Pass per-sample weights "
            f"with --weights FILE (rows ID,weight). Received: weight_column={weight_column!r}"
        )
    given = {name: value for name, value in (("label_column", label_column), ("id_column", id_column),
                                              ("missing", missing)) if value is not None}
    if given:
        raise InputError(
            f"{', '.join(f'`{name}`' for name in given)} appl{'y' if len(given) != 1 else 'ies'} to CSV input; {raw} "
            f"is {folder_words} (classes are its sub-folders, IDs their file paths). Leave "
            f"{'them' if len(given) != 1 else 'it'} out. Received: "
            + ", ".join(f"{name}={value!r}" for name, value in given.items())
        )
    return _scan_folders(raw, layout, walked, skipped)


def _scan_folders(raw: Path, layout: str, walked, skipped: list[dict[str, str]]) -> ScanResult:
    extensions = IMAGE_EXTENSIONS if layout == "images" else NPY_EXTENSIONS
    noun = "image" if layout == "images" else ".npy"
    classes: list[str] = []
    entries: list[tuple[Path, int, str]] = []
    for d, files in walked:
        kept = []
        for rel, f in files:
            if f.suffix.lower() in extensions:
                kept.append((rel, f))
            else:
                skipped.append(skip(f, "not-a-sample", f"not {'an image' if layout == 'images' else 'a .npy'} file "
                                                       f"({f.suffix or 'no extension'})"))
        if not kept:
            if not any(s["path"] == str(d) and s["kind"] == "unreadable-folder" for s in skipped):
                skipped.append(skip(d, "empty-class", f"class folder holds no {noun} files"))
            continue
        label = len(classes)
        classes.append(d.name)
        entries.extend((f, label, safe_id(f"{d.name}_{rel}")) for rel, f in kept)
    if not entries:
        found = f" Skipped: {describe_skipped(skipped)}." if skipped else ""
        raise InputError(
            f"Found no {layout} files in class sub-folders of {raw} "
            f"(expected {', '.join(extensions)} files such as {raw}/<class>/<file>).{found}"
        )
    ids = unique_ids([e[2] for e in entries])
    samples = [RawSample(id=i, label=lab, source=str(f), path=f) for (f, lab, _), i in zip(entries, ids)]
    return ScanResult(layout=layout, classes=classes, samples=samples, skipped=skipped)


# --------------------------------------------------------------------- CSV
def _parse_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _is_missing(cell: str) -> bool:
    return cell.strip().lower() in MISSING_TOKENS


def _numbers(cells: Sequence[str]) -> list[float] | None:
    """``float`` of every cell if each is a number and none a NaN (so none is a missing-value token), else `None`.

    Every token of `MISSING_TOKENS` either fails ``float`` or parses to NaN,
    so a row or column that passes holds no missing value.
    """
    try:
        values = [float(c) for c in cells]
    except ValueError:
        return None
    return None if any(math.isnan(v) for v in values) else values


def _all_numbers(cells: Sequence[str]) -> bool:
    return _numbers(cells) is not None


def parse_missing(policy: str) -> tuple[str, float | None]:
    """Parse the CSV missing-value policy.

    * ``"auto"`` (default): drop the feature columns that are mostly empty
      (more than half of the rows missing), then the rows still missing a value;
    * ``"drop-rows"``: keep every numeric column, drop each row missing a value;
    * ``"drop-columns"``: drop every feature column with a missing value;
    * ``"fill=VALUE"``: keep everything, a missing value becomes ``VALUE``.

    Missing values are the cells in `MISSING_TOKENS` (empty, ``NA``, ``?``...).

    Returns:
        ``(policy, fill value or None)``.

    Raises:
        InputError: If ``policy`` is none of these.

    Example:
        >>> parse_missing("fill=0")
        ('fill', 0.0)
    """
    if isinstance(policy, str) and policy in ("auto", "drop-rows", "drop-columns"):
        return policy, None
    if isinstance(policy, str) and policy.startswith("fill="):
        value = _parse_float(policy[5:].strip())
        if value is not None and math.isfinite(value):
            return "fill", value
    raise InputError(
        f"`missing` must be auto, drop-rows, drop-columns or fill=VALUE (a finite number, e.g. fill=0). "
        f"Received: missing={policy!r}"
    )


def _canonical_label(text: str) -> str:
    """``"1"``, ``"1.0"`` and ``" 01 "`` are one class ``"1"``; other numbers keep their shortest form."""
    text = text.strip()
    v = _parse_float(text)
    if v is None or not math.isfinite(v):
        return text
    if v == int(v):
        return str(int(v))
    return repr(v)


def _class_sort_key(names: Sequence[str]):
    if all(_parse_float(n) is not None and math.isfinite(float(n)) for n in names):
        return lambda n: (float(n), n)
    return lambda n: n


def _check_label_is_categorical(raw: Path, column: str, labels: Sequence[str]) -> None:
    """Refuse a label column that looks like a regression target (many distinct non-integer numbers)."""
    values = [_parse_float(x) for x in labels]
    if not values or any(v is None for v in values):
        return
    distinct = set(labels)
    non_integral = [x for x, v in zip(labels, values) if v != int(v)]
    if non_integral and len(distinct) >= 10 and len(distinct) * 4 > len(labels):
        shown = ", ".join(sorted(distinct, key=float)[:3])
        raise InputError(
            f"kpipe does classification; the label column {column!r} of {raw} holds {len(distinct)} distinct "
            f"numbers in {len(labels)} rows (e.g. {shown}), which looks continuous (a regression target). Bin the "
            "values into classes first, or pass --label-column with the column that names the class."
        )


@dataclasses.dataclass(frozen=True)
class _CsvColumns:
    """The header of a CSV table and where its label, ID and weight columns are (`None`: no such column)."""

    header: list[str]
    label_column: str
    id_column: str | None
    weight_column: str | None
    label: int
    id: int | None
    weight: int | None

    def candidates(self) -> list[int]:
        """Positions of the possible feature columns: all but the label, ID and weight columns."""
        return [j for j in range(len(self.header)) if j not in (self.label, self.id, self.weight)]

    def sample_id(self, row: Sequence[str], n: int) -> str:
        """The ID of the row numbered ``n``, before `safe_id`: its ID cell, else ``row<n - 1>`` (6 digits)."""
        return row[self.id].strip() if self.id is not None else f"row{n - 1:06d}"


def _read_csv(raw: Path) -> list[tuple[int, list[str]]]:
    """The non-blank rows of ``raw``, numbered from 1 (the ``N`` of ``file.csv:N``); the first is the header.

    A quote left open swallows the lines after it into one cell (the `csv` module reads on to the closing
    quote, or to the end of the file): a row holding a line break is checked by `_check_open_quote`.

    Raises:
        InputError: If the file cannot be read, has no data row after the header, or a quote opened on some
            line is never closed (the line is named).
    """
    rows: list[list[str]] = []
    starts: list[int] = []  # the physical line each row starts on
    try:
        with open_regular(raw) as fb, io.TextIOWrapper(fb, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            last = 0
            for row in reader:
                rows.append(row)
                starts.append(last + 1)
                last = reader.line_num
    except SampleError as e:
        raise InputError(f"Cannot read CSV {raw}: {e}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"Cannot read CSV {raw}: {e}") from e
    spanning = [k for k, r in enumerate(rows) if any("\n" in c or "\r" in c for c in r)]
    if spanning:
        _check_open_quote(raw, rows[spanning[-1]], starts[spanning[-1]], last_row=spanning[-1] == len(rows) - 1)
    numbered = [(n, r) for n, r in enumerate(rows, start=1) if any(cell.strip() for cell in r)]
    if len(numbered) < 2:
        raise InputError(f"CSV {raw} has no data rows (it needs a header row and one row per sample).")
    return numbered


def _quote_line(row: Sequence[str], start: int) -> int:
    """The physical line where the first cell of ``row`` holding a line break opened its quote."""
    line = start
    for cell in row:
        if "\n" in cell or "\r" in cell:
            return line
        line += cell.count("\n")
    return line


def _check_open_quote(raw: Path, row: Sequence[str], start: int, *, last_row: bool) -> None:
    """Refuse a quote that is never closed: the last row spanning lines runs to the end of the file.

    The `csv` module (``strict=False``) returns such a row without a word; read again from its first line with
    ``strict=True``, it ends in "unexpected end of data".

    Raises:
        InputError: Naming the line where the quote opened and the lines it swallowed.
    """
    if not last_row:
        return
    try:
        with open_regular(raw) as fb, io.TextIOWrapper(fb, encoding="utf-8-sig", newline="") as f:
            for _ in range(start - 1):
                f.readline()
            list(csv.reader(f, strict=True))
    except csv.Error as e:
        if "unexpected end of data" not in str(e):
            return  # another oddity of the row; the row's own checks report it
        line = _quote_line(row, start)
        end = start + sum(c.count("\n") for c in row[:-1]) + row[-1].rstrip("\r\n").count("\n")
        raise InputError(
            f"CSV {raw}: the quote opened on line {line} is never closed, so lines {line}-{end} (the rest of the "
            "file) would be read as one cell. Close the quote (or remove the stray \" character) and run again."
        ) from None
    except (OSError, UnicodeDecodeError):
        return


def _resolve_columns(raw: Path, header_row: Sequence[str], label_column: str, id_column: str | None,
                     weight_column: str | None) -> _CsvColumns:
    """Find the label, ID and weight columns in the header (names compared after stripping blanks).

    Every column is read by its name later (``prepare.feature_columns``, ``kpipe predict``), so each name must
    name exactly one column.

    Raises:
        InputError: If a header name is given to two columns, a named column is not in the header, or one
            column is named for two roles (label, ID, weight).
    """
    header = [h.strip() for h in header_row]
    seen: dict[str, int] = {}
    for j, h in enumerate(header):
        if h in seen and h:  # unnamed columns: `_check_unnamed_columns`
            raise InputError(
                f"CSV {raw}: the header names two columns {h!r} (columns {seen[h] + 1} and {j + 1}); every column "
                "is read by its name, so names must be unique. Rename one of them."
            )
        seen[h] = j
    for name, what in ((label_column, "label"), (id_column, "ID"), (weight_column, "weight")):
        if name is not None and name not in header:
            hint = " Pass --label-column NAME." if what == "label" else ""
            raise InputError(f"CSV {raw} has no {what} column {name!r}. Its columns are: {', '.join(header)}.{hint}")
    roles = [(name, what) for name, what in ((label_column, "label_column"), (id_column, "id_column"),
                                             (weight_column, "weight_column")) if name is not None]
    for k, (name, what) in enumerate(roles):
        other = next((w for n, w in roles[:k] if n == name), None)
        if other is not None:
            raise InputError(
                f"CSV {raw}: column {name!r} is given as both `{other}` and `{what}`; a column plays one role. "
                f"Received: {other}={name!r}, {what}={name!r}"
            )
    return _CsvColumns(
        header=header, label_column=label_column, id_column=id_column, weight_column=weight_column,
        label=seen[label_column],
        id=seen[id_column] if id_column is not None else None,
        weight=seen[weight_column] if weight_column is not None else None,
    )


def _check_unnamed_columns(raw: Path, rows: Sequence[tuple[int, list[str]]], cols: _CsvColumns) -> None:
    """Refuse a column without a header name that holds a value (an empty one, e.g. from a trailing comma, is
    dropped as ``"empty"`` like any empty column).

    Raises:
        InputError: Naming the file, the columns' positions and a row holding a value.
    """
    unnamed = [j for j, h in enumerate(cols.header) if not h]
    used = [(j, next((n for n, r in rows if not _is_missing(r[j])), None)) for j in unnamed]
    used = [(j, n) for j, n in used if n is not None]
    if used:
        positions = ", ".join(str(j + 1) for j, _ in used)
        raise InputError(
            f"CSV {raw}: column{'s' if len(used) != 1 else ''} {positions} of the header "
            f"{'have' if len(used) != 1 else 'has'} no name but hold{'' if len(used) != 1 else 's'} values (e.g. "
            f"line {used[0][1]}); every column is read by its name, so each needs one (pandas: save with "
            "index=False, or name the index). Received: header " + ", ".join(repr(h) for h in cols.header)
        )


def _usable_rows(raw: Path, data: Sequence[tuple[int, list[str]]], cols: _CsvColumns,
                 skipped: list[dict[str, str]]) -> list[tuple[int, list[str]]]:
    """The rows that can be used whatever the feature columns: as wide as the header, with a label (and an ID).

    The others are appended to ``skipped`` (``"bad-row"``, ``"missing-label"``).

    Raises:
        InputError: If no row is left.
    """
    good: list[tuple[int, list[str]]] = []
    for n, r in data:
        where = f"{raw}:{n}"
        if len(r) != len(cols.header):
            breaks = sum(c.count("\n") for c in r)
            quote = (f": a quote opened in this row runs over {breaks} line break{'s' if breaks != 1 else ''} before "
                     "it closes, so those lines were read as one cell") if breaks else ""
            skipped.append(skip(where, "bad-row", f"row has {len(r)} cells, the header has {len(cols.header)}{quote}"))
        elif _is_missing(r[cols.label]):
            skipped.append(skip(where, "missing-label", f"missing label in column {cols.label_column!r}"))
        elif cols.id is not None and _is_missing(r[cols.id]):
            skipped.append(skip(where, "bad-row", f"missing ID in column {cols.id_column!r}"))
        else:
            good.append((n, r))
    if not good:
        raise InputError(f"CSV {raw} has no usable rows. Skipped: {describe_skipped(skipped)}.")
    return good


def _check_unique_ids(raw: Path, rows: Sequence[tuple[int, list[str]]], cols: _CsvColumns) -> None:
    """Refuse an ID column whose (stripped) IDs repeat, naming the two rows."""
    if cols.id is None:
        return
    first_line: dict[str, int] = {}
    for n, r in rows:
        sid = r[cols.id].strip()
        if sid in first_line:
            raise InputError(
                f"CSV {raw}: the ID {sid!r} in column {cols.id_column!r} is on lines {first_line[sid]} and {n}; IDs "
                "must be unique. Fix the file, or drop --id-column to number the rows."
            )
        first_line[sid] = n


def _column_verdict(cells: Sequence[str], policy: str) -> str | None:
    """Why a possible feature column is dropped (``"empty"``, ``"text"``, ``"N% missing"``), or `None` to keep it.

    A column is text when at most half of its present (not missing) cells are numbers. A column with missing
    values is dropped by the ``"drop-columns"`` policy, and by ``"auto"`` when more than half of its cells are
    missing (see `parse_missing`).
    """
    if _all_numbers(cells):  # fast path, same answer: no cell is missing and every one is a number
        present, n_missing, numeric = cells, 0, len(cells)
    else:
        present = [c.strip() for c in cells if not _is_missing(c)]
        n_missing = len(cells) - len(present)
        numeric = sum(_parse_float(c) is not None for c in present)
    if not present:
        return "empty"
    if numeric * 2 <= len(present):
        return "text"
    if n_missing and (policy == "drop-columns" or (policy == "auto" and n_missing * 2 > len(cells))):
        return f"{100 * n_missing / len(cells):.0f}% missing"
    return None


def _feature_columns(raw: Path, rows: Sequence[tuple[int, list[str]]], cols: _CsvColumns,
                     policy: str) -> tuple[list[int], dict[str, str]]:
    """``(positions of the feature columns, {dropped column name: reason})``, see `_column_verdict`.

    Raises:
        InputError: If no feature column is left.
    """
    features: list[int] = []
    dropped: dict[str, str] = {}
    for j in cols.candidates():
        reason = _column_verdict([r[j] for _, r in rows], policy)
        if reason is None:
            features.append(j)
        else:
            dropped[cols.header[j] or f"#{j + 1}"] = reason
    if not features:
        why = f" (dropped: {', '.join(f'{k} ({v})' for k, v in dropped.items())})" if dropped else ""
        raise InputError(f"CSV {raw} has no numeric feature columns besides {cols.label_column!r}{why}.")
    return features, dropped


def _row_values(row: Sequence[str], features: Sequence[int], header: Sequence[str], policy: str,
                fill: float | None) -> tuple[np.ndarray | None, tuple[str, str] | None]:
    """The feature vector of one row, float32 of shape ``(F,)``, or ``(None, (kind, reason))`` to skip the row.

    A missing cell becomes ``fill``, or skips the row (``"missing-value"``) when ``fill`` is `None`; a cell
    that is not a number skips it (``"bad-row"``). The first such cell, in column order, decides.
    """
    fast = _numbers([row[j] for j in features])
    if fast is not None:  # every feature cell a number, none missing: what the loop below would find
        return np.asarray(fast, dtype=np.float32), None
    values: list[float] = []
    for j in features:
        cell = row[j].strip()
        if _is_missing(cell):
            if fill is None:
                return None, ("missing-value", f"missing value {cell!r} in column {header[j]!r} (--missing {policy})")
            values.append(fill)
            continue
        v = _parse_float(cell)
        if v is None:
            return None, ("bad-row", f"value {cell!r} in column {header[j]!r} is not a number")
        values.append(v)
    return np.asarray(values, dtype=np.float32), None


def _parse_rows(raw: Path, rows: Sequence[tuple[int, list[str]]], cols: _CsvColumns, features: Sequence[int],
                policy: str, fill: float | None, skipped: list[dict[str, str]],
                ) -> tuple[list[tuple[int, str, str, np.ndarray]], dict[int, float], int]:
    """Parse the values, label, ID and weight of each row, in row order; skipped rows go to ``skipped``.

    Returns:
        ``(kept, weights, dropped_rows)``: ``kept`` holds ``(row number, canonical label, safe ID, values)``;
        ``weights`` maps a kept row's number to its weight (empty without a weight column); ``dropped_rows``
        counts the rows skipped for a missing value.

    Raises:
        InputError: If a kept row's weight is not a finite number >= 0 (file and row named), or no row is kept.
    """
    kept: list[tuple[int, str, str, np.ndarray]] = []
    weights: dict[int, float] = {}
    dropped_rows = 0
    for n, r in rows:
        values, problem = _row_values(r, features, cols.header, policy, fill)
        if problem is not None:
            kind, reason = problem
            skipped.append(skip(f"{raw}:{n}", kind, reason))
            if kind == "missing-value":
                dropped_rows += 1
            continue
        if cols.weight is not None:
            weights[n] = _parse_weight(r[cols.weight], f"{raw}:{n}", cols.weight_column)
        kept.append((n, _canonical_label(r[cols.label]), safe_id(cols.sample_id(r, n)), values))
    if not kept:
        raise InputError(f"CSV {raw} has no usable rows. Skipped: {describe_skipped(skipped)}.")
    return kept, weights, dropped_rows


def _csv_classes(raw: Path, label_column: str, labels: Sequence[str]) -> list[str]:
    """The class names: the distinct canonical labels, in numeric order when all are numbers, else sorted.

    Raises:
        InputError: If the labels look continuous (see `_check_label_is_categorical`).
    """
    _check_label_is_categorical(raw, label_column, labels)
    return sorted(set(labels), key=_class_sort_key(labels))


def _scan_csv(raw: Path, *, label_column: str | None, id_column: str | None,
              weight_column: str | None = None, missing: str | None = None) -> ScanResult:
    """`scan` of a CSV table: a sample per usable row, its numeric feature columns as a float32 vector.

    In order: the header's columns (`_resolve_columns`), the rows usable whatever the features (`_usable_rows`),
    the feature columns under the ``missing`` policy (`_feature_columns`), each row's values (`_parse_rows`),
    then the classes (`_csv_classes`).
    """
    label_column = "label" if label_column is None else label_column
    policy, fill = parse_missing("auto" if missing is None else missing)
    numbered = _read_csv(raw)
    cols = _resolve_columns(raw, numbered[0][1], label_column, id_column, weight_column)
    skipped: list[dict[str, str]] = []
    rows = _usable_rows(raw, numbered[1:], cols, skipped)
    _check_unnamed_columns(raw, rows, cols)
    _check_unique_ids(raw, rows, cols)
    features, dropped = _feature_columns(raw, rows, cols, policy)
    kept, row_weight, dropped_rows = _parse_rows(raw, rows, cols, features, policy, fill, skipped)
    names = _csv_classes(raw, label_column, [k[1] for k in kept])
    index = {name: i for i, name in enumerate(names)}
    ids = unique_ids([k[2] for k in kept])
    samples = [
        RawSample(id=i, label=index[label], source=f"{raw}:{n}", values=v)
        for (n, label, _, v), i in zip(kept, ids)
    ]
    details: dict[str, Any] = {
        "feature_columns": [cols.header[j] for j in features],
        "dropped_columns": list(dropped),
        "dropped_column_reasons": dropped,
        "dropped_rows": dropped_rows,
        "label_column": label_column,
        "id_column": id_column,
        "missing": policy if fill is None else f"fill={fill:g}",
    }
    weights = None
    if cols.weight is not None:
        details["weight_column"] = weight_column
        weights = {i: row_weight[n] for (n, *_), i in zip(kept, ids)}
    return ScanResult(layout="csv", classes=names, samples=samples, skipped=skipped, details=details,
                      weights=weights)


def _parse_weight(cell: str, where: str, column: str) -> float:
    w = _parse_float(cell.strip())
    if w is None or not math.isfinite(w) or w < 0:
        raise InputError(
            f"{where}: the weight {cell!r} in column {column!r} is not a finite number >= 0. "
            "Fix the row or drop the weight column."
        )
    return w


# ------------------------------------------------------------------ images
@dataclasses.dataclass(frozen=True)
class ImageOptions:
    """How images are decoded.

    The same rules hold for every file format and image mode:

    * EXIF orientation is applied (JPEG, PNG, WebP, TIFF: whatever carries it);
    * pixel values are never rescaled per image. 8-bit images are stored as
      they are in ``uint8``; 16-bit images (mode ``I;16``, or ``I`` with
      values in ``[0, 65535]``) as they are in ``uint16``. Converting between
      the two uses one fixed scale: ``v >> 8`` (16 -> 8 bits) and ``v * 257``
      (8 -> 16 bits, so that 255 becomes 65535). Float images (mode ``F``) are
      stored as ``float32`` values as they are. Pillow decodes 16-bit colour
      PNGs at 8 bits per channel (the high byte: ``v >> 8``), so these are
      refused with ``dtype="uint16"``;
    * transparency (RGBA, LA, PA, a palette or ``tRNS`` transparency colour)
      is composited onto ``background`` for ``rgb`` and ``grayscale``; with
      ``rgba`` the file's RGBA values are kept as they are.

    Attributes:
        image_size: Target ``(height, width)`` in pixels, or `None` to keep
            each image's own size.
        color_mode: ``"grayscale"`` (1 channel), ``"rgb"`` (3) or ``"rgba"`` (4).
        resize: Resize images of another size to ``image_size`` (bilinear).
            If `False`, such an image is an error (and is skipped by prepare).
        dtype: Stored dtype: ``"uint8"``, ``"uint16"`` or ``"float32"``.
        background: ``"white"`` or ``"black"``: what transparent pixels are
            composited onto.
    """

    image_size: tuple[int, int] | None = None
    color_mode: str = "rgb"
    resize: bool = True
    dtype: str = "uint8"
    background: str = "white"


def _png_bit_depth(header: bytes) -> tuple[int, int] | None:
    """``(bit depth, colour type)`` from the first 26 bytes of a PNG file, else `None`."""
    if header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR" and len(header) >= 26:
        return header[24], header[25]
    return None


def _open_image(path: Path):
    """Open an image (a regular file only), first frame, EXIF orientation applied.

    Returns:
        ``(image, bits)``: ``bits`` is 16 for a 16-bit-per-channel colour image
        that Pillow decoded at 8 bits, else `None`.
    """
    from PIL import Image, ImageOps

    with open_regular(path) as f:
        header = f.read(26)
        f.seek(0)
        try:
            img = Image.open(f)
        except Image.UnidentifiedImageError:  # its message quotes the file object (a descriptor number)
            raise OSError("cannot identify image file (not an image, or a format Pillow cannot read)") from None
        img.seek(0)  # first frame of a GIF / WebP / TIFF
        img.load()
    bits = None
    png = _png_bit_depth(header)
    if png is not None and png[0] == 16 and png[1] in (2, 4, 6):  # RGB, gray+alpha, RGBA at 16 bits
        bits = 16
    elif img.format == "TIFF" and img.mode not in _WIDE_MODES:
        per_sample = img.tag_v2.get(258) if hasattr(img, "tag_v2") else None
        if isinstance(per_sample, tuple) and per_sample and max(per_sample) > 8:
            bits = 16
    return ImageOps.exif_transpose(img), bits


def _source_depth(img) -> str:
    """``"8"``, ``"16"`` or ``"float"``: the depth of the values Pillow decoded."""
    if img.mode in _FLOAT_MODES:
        return "float"
    if img.mode in _WIDE_MODES:
        if img.mode == "I":
            lo, hi = img.getextrema()
            if lo < 0 or hi > 65535:
                return "float"  # 32-bit integers beyond 16 bits: only float32 holds them as they are
        return "16"
    return "8"


def infer_image_options(path: Path, image_size: tuple[int, int] | None, color_mode: str | None,
                        dtype: str = "auto", background: str = "white") -> ImageOptions:
    """Fill in size, color mode and dtype left open, from the image at ``path``.

    ``color_mode=None`` takes ``"grayscale"`` for a one-band image, ``"rgba"``
    for one with transparency and ``"rgb"`` otherwise; ``image_size=None``
    takes the image's own ``(height, width)`` (after EXIF orientation) and
    turns resizing off, so that an image of another size is reported rather
    than silently distorted; ``dtype="auto"`` takes ``"uint16"`` for a 16-bit
    image, ``"float32"`` for a float image and ``"uint8"`` otherwise.

    Raises:
        SampleError: If the image cannot be used.
        OSError: If it cannot be read.
    """
    img, _ = _open_image(path)
    if color_mode is None:
        transparent = "A" in img.mode or "a" in img.mode or "transparency" in img.info
        if transparent:
            color_mode = "rgba"
        elif img.mode in ("1", "L", *_WIDE_MODES, *_FLOAT_MODES):
            color_mode = "grayscale"
        else:
            color_mode = "rgb"
    if dtype == "auto":
        dtype = {"8": "uint8", "16": "uint16", "float": "float32"}[_source_depth(img)]
    resize = image_size is not None
    if image_size is None:
        image_size = (img.height, img.width)
    return ImageOptions(image_size=tuple(image_size), color_mode=color_mode, resize=resize, dtype=dtype,
                        background=background)


def image_kind(path: Path) -> tuple:
    """A cheap fingerprint of an image from its header: ``(height, width, mode)`` after EXIF orientation."""
    from PIL import Image

    with open_regular(path) as f, Image.open(f) as img:
        h, w = img.height, img.width
        # Pillow's TIFF reader reports (and decodes) the oriented size itself.
        with contextlib.suppress(Exception):  # unreadable EXIF: the image is judged when decoded
            if img.format != "TIFF" and img.getexif().get(_ORIENTATION_TAG) in (5, 6, 7, 8):  # turned 90 / 270 deg
                h, w = w, h
        return (h, w, img.mode)


def _size_check(h: int, w: int, options: ImageOptions) -> tuple[int, int] | None:
    """The size to resize to, or `None`; raises a ``"size"`` `SampleError` when resizing is off."""
    if options.image_size is None or (h, w) == tuple(options.image_size):
        return None
    th, tw = options.image_size
    if not options.resize:
        raise SampleError(
            "size", f"image is {h}x{w}, the dataset's (most common) size is {th}x{tw}; "
                    "pass --image-size HxW to resize all images", detail=f"{h}x{w}")
    return th, tw


def _decode_wide(img, options: ImageOptions, depth: str, notes: list[str]) -> np.ndarray:
    """A one-band 16-bit or float image -> ``(H, W, C)`` of ``options.dtype``, no per-image scaling."""
    from PIL import Image

    if depth == "float" and options.dtype != "float32":
        raise SampleError("dtype", f"image holds {'float' if img.mode == 'F' else '32-bit integer'} values, which "
                                   f"{options.dtype} cannot hold as they are; pass --dtype float32")
    plane = np.asarray(img)
    target = _size_check(plane.shape[0], plane.shape[1], options)
    if target is not None:
        resized = Image.fromarray(plane.astype(np.float32), mode="F").resize((target[1], target[0]), Image.BILINEAR)
        plane = np.asarray(resized)
        notes.append("resized")
    if options.dtype == "float32":
        plane = plane.astype(np.float32)
        opaque = 65535.0 if depth == "16" else 1.0
    else:
        plane = np.clip(np.rint(plane), 0, 65535).astype(np.uint16) if target is not None else plane.astype(np.uint16)
        if options.dtype == "uint8":
            plane = (plane >> 8).astype(np.uint8)
            notes.append("16->8 bits")
        opaque = np.iinfo(plane.dtype).max
    channels = _CHANNELS[options.color_mode]
    out = np.repeat(plane[:, :, None], min(channels, 3), axis=2)
    if channels == 4:
        out = np.concatenate([out, np.full(plane.shape + (1,), opaque, dtype=out.dtype)], axis=2)
    return out


def decode_image(path: Path, options: ImageOptions) -> tuple[np.ndarray, list[str]]:
    """Decode one image; returns ``(array, notes)``.

    ``notes`` names each change of values made by the rules of `ImageOptions`:
    ``"16->8 bits"``, ``"8->16 bits"``, ``"alpha composited"``, ``"resized"``
    (prepare counts them in its summary).
    """
    from PIL import Image

    notes: list[str] = []
    img, bits = _open_image(path)
    depth = _source_depth(img)
    if depth != "8":
        return _decode_wide(img, options, depth, notes), notes
    if bits == 16:
        if options.dtype == "uint16":
            raise SampleError("dtype", "16-bit colour image: Pillow decodes it at 8 bits per channel, so uint16 "
                                       "would not hold its values; pass --dtype uint8 (stores v >> 8)")
        if options.dtype == "uint8":
            notes.append("16->8 bits")
    mode = _PIL_MODES[options.color_mode]
    has_alpha = "A" in img.mode or "a" in img.mode or "transparency" in img.info
    if mode != "RGBA" and has_alpha:
        rgba = img.convert("RGBA")
        fill = (255, 255, 255, 255) if options.background == "white" else (0, 0, 0, 255)
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, fill), rgba).convert(mode)
        notes.append("alpha composited")
    else:
        img = img.convert(mode)
    target = _size_check(img.height, img.width, options)
    if target is not None:
        img = img.resize((target[1], target[0]), Image.BILINEAR)
        notes.append("resized")
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if options.dtype == "uint16":
        notes.append("8->16 bits")
        return arr.astype(np.uint16) * np.uint16(257), notes
    if options.dtype == "float32":
        return arr.astype(np.float32), notes
    return arr, notes


def load_image(path: Path, options: ImageOptions) -> np.ndarray:
    """Decode one image to ``(height, width, channels)`` of ``options.dtype``.

    See `ImageOptions` for the rules (orientation, bit depth, transparency).
    Resizing (when the size differs from ``options.image_size``) uses bilinear
    interpolation, Keras' default for ``image_dataset_from_directory``.

    Raises:
        SampleError: If the image cannot be used (another size without
            resizing, values the dtype cannot hold, not a regular file).
        OSError: If it cannot be read or decoded.
    """
    return decode_image(path, options)[0]


# -------------------------------------------------------------------- npy
def npy_kind(path: Path) -> tuple:
    """``(shape, native dtype str)`` of a ``.npy`` file, from its header only."""
    with open_regular(path) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:  # a newer header version: read the array (rare)
            f.seek(0)
            arr = np.load(f, allow_pickle=False)
            shape, dtype = arr.shape, arr.dtype
    return (tuple(shape), dtype.newbyteorder("=").str)


def load_npy(path: Path) -> np.ndarray:
    """Load one ``.npy`` array with ``allow_pickle=False``, in native byte order and C order.

    Big-endian and Fortran-order arrays are converted (values unchanged).

    Raises:
        SampleError: If the file holds Python objects, strings or another
            non-numeric dtype (kpipe stores bool, integer and float arrays),
            or is not a regular file.
        OSError, ValueError: If it is not a readable ``.npy`` file.
    """
    with open_regular(path) as f:
        magic = f.read(6)
        f.seek(0)
        if magic != b"\x93NUMPY":
            what = "a .npz archive" if magic[:2] == b"PK" else "a Python pickle" if magic[:1] == b"\x80" else "unknown"
            raise SampleError("unreadable", f"not a .npy file (no NumPy header; {what} content)")
        try:
            arr = np.load(f, allow_pickle=False)
        except ValueError as e:
            if "allow_pickle" in str(e):
                raise SampleError("dtype", "holds Python objects (dtype object), which kpipe never unpickles; save "
                                           "a numeric array") from None
            raise
    if arr.dtype.kind not in "biuf":
        raise SampleError("dtype", f"dtype {arr.dtype} is not numeric; kpipe stores bool, integer and float arrays")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.asarray(arr, order="C")  # not ascontiguousarray: it turns a 0-d array into shape (1,)


def describe_array(dtype: Any, shape: Sequence[int]) -> str:
    """``"float32 of shape (8, 8, 1)"``: an array's dtype and shape for messages (a 0-d one: ``shape ()``)."""
    return f"{np.dtype(dtype).name} of shape {tuple(int(d) for d in shape)}"


def load_sample(sample: RawSample, layout: str, image_options: ImageOptions | None = None) -> np.ndarray:
    """Load one raw sample as an array.

    Raises:
        SampleError: If the input cannot be used (the reason says why).
        OSError, ValueError: If it cannot be read.
    """
    return load_sample_noted(sample, layout, image_options)[0]


def load_sample_noted(sample: RawSample, layout: str,
                      image_options: ImageOptions | None = None) -> tuple[np.ndarray, list[str]]:
    """`load_sample`, with the notes of `decode_image` (empty for npy and CSV)."""
    if layout == "csv":
        if sample.values is None:
            raise TypeError(f"CSV sample {sample.id!r} has no `values`; it was not made by `scan` of a CSV file")
        return sample.values, []
    if sample.path is None:
        raise TypeError(f"{layout} sample {sample.id!r} has no `path`; it was not made by `scan` of a folder")
    if layout == "images":
        return decode_image(sample.path, image_options or ImageOptions())
    return load_npy(sample.path), []


def count_nonfinite(arr: np.ndarray) -> int:
    """Number of NaN / Inf values in ``arr`` (0 for integer and bool arrays)."""
    if arr.dtype.kind not in "fc":
        return 0
    return int(arr.size - np.count_nonzero(np.isfinite(arr)))
