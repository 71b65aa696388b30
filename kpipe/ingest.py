"""Raw input layouts -> a list of samples to convert.

Three layouts are understood, detected by `detect_layout` or forced:

* ``"images"``: ``RAW/<class>/<file>`` with ``.png .jpg .jpeg .bmp .gif`` files
  (any case). Class names are the sorted sub-folder names, as
  ``keras.utils.image_dataset_from_directory`` does.
* ``"npy"``: ``RAW/<class>/<file>.npy``, loaded with ``allow_pickle=False``.
* ``"csv"``: ``RAW`` is a ``.csv`` file, one row per sample; the label column
  names the class, the other numeric columns form a float32 feature vector.

Listing (`scan`) is cheap and runs in the main process; loading one sample
(`load_sample`) is what runs in parallel. A file that cannot be used is never
fatal: it is returned in ``skipped`` with a reason.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kpipe.errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
NPY_EXTENSIONS = (".npy",)
LAYOUTS = ("images", "npy", "csv")
COLOR_MODES = ("grayscale", "rgb", "rgba")
_CHANNELS = {"grayscale": 1, "rgb": 3, "rgba": 4}
_PIL_MODES = {"grayscale": "L", "rgb": "RGB", "rgba": "RGBA"}
_MAX_ID_LEN = 150


@dataclasses.dataclass(frozen=True)
class RawSample:
    """One raw sample to convert.

    Attributes:
        id: Sample ID, safe as a file name, unique within the dataset.
        label: Class index.
        source: Where it comes from: a file path, or ``"file.csv:ROW"``.
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


# ------------------------------------------------------------------ layouts
def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".") or p.name.startswith("__")


def _class_dirs(raw: Path) -> list[Path]:
    return sorted((p for p in raw.iterdir() if p.is_dir() and not _is_hidden(p)), key=lambda p: p.name)


def detect_layout(raw: str | os.PathLike) -> str:
    """Guess the layout of ``raw``: ``"csv"``, ``"images"`` or ``"npy"``.

    A ``.csv`` file is ``"csv"``. A folder is ``"images"`` or ``"npy"`` by the
    extensions found in its class sub-folders, whichever is more frequent.

    Raises:
        InputError: If ``raw`` does not exist, is an empty folder, or holds
            neither images nor ``.npy`` files in class sub-folders.
    """
    raw = Path(raw)
    if not raw.exists():
        raise InputError(f"Input {raw} does not exist. Pass a folder of class sub-folders or a .csv file.")
    if raw.is_file():
        if raw.suffix.lower() == ".csv":
            return "csv"
        raise InputError(
            f"Input {raw} is a file but not a .csv. Pass a folder of class sub-folders "
            "(RAW/<class>/<file>) or a .csv table."
        )
    n_img = n_npy = 0
    for d in _class_dirs(raw):
        for f in d.iterdir():
            ext = f.suffix.lower()
            n_img += ext in IMAGE_EXTENSIONS
            n_npy += ext in NPY_EXTENSIONS
    if n_img == 0 and n_npy == 0:
        raise InputError(
            f"Found no samples in {raw}: expected class sub-folders holding images "
            f"({', '.join(IMAGE_EXTENSIONS)}) or .npy files, e.g. {raw}/cat/0001.png."
        )
    return "images" if n_img >= n_npy else "npy"


def scan(raw: str | os.PathLike, layout: str = "auto", *, label_column: str = "label",
         id_column: str | None = None, weight_column: str | None = None) -> ScanResult:
    """List the samples of ``raw`` without loading them (CSV rows are parsed).

    Args:
        raw: A folder of class sub-folders, or a ``.csv`` file.
        layout: ``"auto"`` (see `detect_layout`), ``"images"``, ``"npy"`` or ``"csv"``.
        label_column: CSV column holding the class. Defaults to ``"label"``.
        id_column: CSV column holding sample IDs; row numbers if `None`.
        weight_column: CSV column holding per-sample weights (finite, >= 0),
            kept out of the features; `None` for no weights.

    Returns:
        A `ScanResult`; samples in a deterministic order (class, then file name).

    Raises:
        InputError: If the input is missing or empty, ``layout`` is unknown,
            or a weight is not a finite number >= 0 (file and line named).
    """
    raw = Path(raw)
    if layout == "auto":
        layout = detect_layout(raw)
    elif layout not in LAYOUTS:
        raise InputError(f"`layout` must be one of auto, {', '.join(LAYOUTS)}. Received: layout={layout!r}")
    if layout == "csv":
        return _scan_csv(raw, label_column=label_column, id_column=id_column, weight_column=weight_column)
    if weight_column is not None:
        raise InputError(
            f"`weight_column` applies to CSV input; {raw} is a {layout} folder. Pass per-sample weights "
            f"with --weights FILE (rows ID,weight). Received: weight_column={weight_column!r}"
        )
    return _scan_folders(raw, layout)


def _scan_folders(raw: Path, layout: str) -> ScanResult:
    if not raw.is_dir():
        raise InputError(f"Layout {layout!r} needs a folder of class sub-folders; {raw} is not a folder.")
    extensions = IMAGE_EXTENSIONS if layout == "images" else NPY_EXTENSIONS
    skipped: list[dict[str, str]] = []
    for f in sorted(raw.iterdir()):
        if f.is_file():
            skipped.append({"path": str(f), "reason": "file at the top level, not in a class folder"})
    classes: list[str] = []
    entries: list[tuple[Path, int, str]] = []
    for d in _class_dirs(raw):
        files = []
        for f in sorted(d.iterdir(), key=lambda p: p.name):
            if f.is_dir():
                skipped.append({"path": str(f), "reason": "nested folder (only RAW/<class>/<file> is read)"})
            elif f.suffix.lower() not in extensions:
                kind = "an image" if layout == "images" else "a .npy"
                reason = "hidden file" if _is_hidden(f) else f"not {kind} file ({f.suffix or 'no extension'})"
                skipped.append({"path": str(f), "reason": reason})
            else:
                files.append(f)
        if not files:
            skipped.append({"path": str(d), "reason": "class folder holds no " + ("image" if layout == "images" else ".npy") + " files"})
            continue
        label = len(classes)
        classes.append(d.name)
        entries.extend((f, label, safe_id(f"{d.name}_{f.stem}")) for f in files)
    if not entries:
        raise InputError(
            f"Found no {layout} files in class sub-folders of {raw} "
            f"(expected {', '.join(extensions)} files such as {raw}/<class>/<file>)."
        )
    ids = unique_ids([e[2] for e in entries])
    samples = [RawSample(id=i, label=lab, source=str(f), path=f) for (f, lab, _), i in zip(entries, ids)]
    return ScanResult(layout=layout, classes=classes, samples=samples, skipped=skipped)


def _parse_float(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v


def _class_sort_key(names: Sequence[str]):
    if all(re.fullmatch(r"[+-]?\d+", n) for n in names):
        return lambda n: (int(n), n)
    return lambda n: n


def _scan_csv(raw: Path, *, label_column: str, id_column: str | None,
              weight_column: str | None = None) -> ScanResult:
    if not raw.is_file():
        raise InputError(f"Layout 'csv' needs a .csv file; {raw} is not a file.")
    try:
        with open(raw, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"Cannot read CSV {raw}: {e}") from e
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) < 2:
        raise InputError(f"CSV {raw} has no data rows (it needs a header row and one row per sample).")
    header = [h.strip() for h in rows[0]]
    if label_column not in header:
        raise InputError(
            f"CSV {raw} has no label column {label_column!r}. Its columns are: {', '.join(header)}. "
            "Pass --label-column NAME."
        )
    if id_column is not None and id_column not in header:
        raise InputError(
            f"CSV {raw} has no ID column {id_column!r}. Its columns are: {', '.join(header)}."
        )
    if weight_column is not None and weight_column not in header:
        raise InputError(
            f"CSV {raw} has no weight column {weight_column!r}. Its columns are: {', '.join(header)}."
        )
    w_idx = header.index(weight_column) if weight_column is not None else None
    data = rows[1:]
    label_idx = header.index(label_column)
    id_idx = header.index(id_column) if id_column is not None else None
    other = [j for j in range(len(header)) if j not in (label_idx, id_idx, w_idx)]
    # A column is a feature if most of its non-empty cells are numbers.
    feature_cols, dropped = [], []
    for j in other:
        cells = [r[j].strip() for r in data if j < len(r) and r[j].strip()]
        numeric = sum(_parse_float(c) is not None for c in cells)
        (feature_cols if cells and numeric * 2 > len(cells) else dropped).append(j)
    if not feature_cols:
        raise InputError(f"CSV {raw} has no numeric feature columns besides {label_column!r}.")
    skipped: list[dict[str, str]] = []
    kept: list[tuple[int, str, str, np.ndarray]] = []
    row_weight: dict[int, float] = {}
    for n, r in enumerate(data, start=2):  # line 1 is the header
        where = f"{raw}:{n}"
        if len(r) != len(header):
            skipped.append({"path": where, "reason": f"row has {len(r)} cells, the header has {len(header)}"})
            continue
        label = r[label_idx].strip()
        if not label:
            skipped.append({"path": where, "reason": f"empty label in column {label_column!r}"})
            continue
        values, bad = [], None
        for j in feature_cols:
            v = _parse_float(r[j].strip())
            if v is None or not math.isfinite(v):
                bad = j
                break
            values.append(v)
        if bad is not None:
            skipped.append({"path": where, "reason": f"value {r[bad]!r} in column {header[bad]!r} is not a finite number"})
            continue
        if w_idx is not None:
            row_weight[n] = _parse_weight(r[w_idx], where, weight_column)
        sid = r[id_idx].strip() if id_idx is not None else f"row{n - 1:06d}"
        kept.append((n, label, safe_id(sid), np.asarray(values, dtype=np.float32)))
    if not kept:
        raise InputError(f"CSV {raw} has no usable rows; see the reasons in the manifest's `skipped`.")
    names = sorted({k[1] for k in kept}, key=_class_sort_key([k[1] for k in kept]))
    index = {name: i for i, name in enumerate(names)}
    ids = unique_ids([k[2] for k in kept])
    samples = [
        RawSample(id=i, label=index[label], source=f"{raw}:{n}", values=v)
        for (n, label, _, v), i in zip(kept, ids)
    ]
    details = {
        "feature_columns": [header[j] for j in feature_cols],
        "dropped_columns": [header[j] for j in dropped],
        "label_column": label_column,
        "id_column": id_column,
    }
    weights = None
    if w_idx is not None:
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


# ------------------------------------------------------------------ loading
@dataclasses.dataclass(frozen=True)
class ImageOptions:
    """How images are decoded.

    Attributes:
        image_size: Target ``(height, width)`` in pixels, or `None` to keep
            each image's own size.
        color_mode: ``"grayscale"`` (1 channel), ``"rgb"`` (3) or ``"rgba"`` (4).
        resize: Resize images of another size to ``image_size`` (bilinear).
            If `False`, such an image is an error (and is skipped by prepare).
    """

    image_size: tuple[int, int] | None = None
    color_mode: str = "rgb"
    resize: bool = True


def _open_image(path: Path):
    from PIL import Image, ImageOps

    img = Image.open(path)
    img.seek(0)  # first frame of a GIF
    img.load()
    return ImageOps.exif_transpose(img) if path.suffix.lower() in (".jpg", ".jpeg") else img


def infer_image_options(path: Path, image_size: tuple[int, int] | None, color_mode: str | None) -> ImageOptions:
    """Fill in size and color mode left open, from the image at ``path``.

    ``color_mode=None`` takes ``"grayscale"`` for a one-band image, ``"rgba"``
    for one with transparency and ``"rgb"`` otherwise; ``image_size=None``
    takes the image's own ``(height, width)`` and turns resizing off, so that
    an image of another size is reported rather than silently distorted.
    """
    img = _open_image(path)
    if color_mode is None:
        if img.mode in ("1", "L", "I", "I;16", "F", "LA") and "A" not in img.mode:
            color_mode = "grayscale"
        elif "A" in img.mode or "transparency" in img.info:
            color_mode = "rgba"
        else:
            color_mode = "rgb"
    resize = image_size is not None
    if image_size is None:
        image_size = (img.height, img.width)
    return ImageOptions(image_size=tuple(image_size), color_mode=color_mode, resize=resize)


def load_image(path: Path, options: ImageOptions) -> np.ndarray:
    """Decode one image to uint8 ``(height, width, channels)``.

    Resizing (when the size differs from ``options.image_size``) uses bilinear
    interpolation, Keras' default for ``image_dataset_from_directory``.
    """
    from PIL import Image

    img = _open_image(path)
    if img.mode in ("I", "I;16", "F") and options.color_mode == "grayscale":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr / max(arr.max(), 1) * 255, 0, 255).astype(np.uint8))
    img = img.convert(_PIL_MODES[options.color_mode])
    if options.image_size is not None and (img.height, img.width) != tuple(options.image_size):
        h, w = options.image_size
        if not options.resize:
            raise ValueError(
                f"image is {img.height}x{img.width}, the dataset's (most common) size is {h}x{w}; "
                "pass --image-size HxW to resize all images"
            )
        img = img.resize((w, h), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def load_npy(path: Path) -> np.ndarray:
    """Load one ``.npy`` array with ``allow_pickle=False``."""
    arr = np.load(path, allow_pickle=False)
    if not isinstance(arr, np.ndarray):
        raise ValueError("not a single array")
    return arr


def load_sample(sample: RawSample, layout: str, image_options: ImageOptions | None = None) -> np.ndarray:
    """Load one raw sample as an array (raises on unreadable input)."""
    if layout == "csv":
        assert sample.values is not None
        return sample.values
    assert sample.path is not None
    if layout == "images":
        return load_image(sample.path, image_options or ImageOptions())
    return load_npy(sample.path)
