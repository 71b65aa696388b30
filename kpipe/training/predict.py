"""``kpipe predict RUN INPUT...``: class probabilities for new raw inputs, read as the run's dataset was read.

Inputs are read with the ingest rules the dataset was prepared with (`kpipe.ingest`), taken from the run's
``config.json`` (``dataset.prepare``: layout, image size, colour mode, dtype, background, CSV feature
columns and missing-value policy) or, for an older run, from its manifest:

* an image file (images datasets): decoded by `kpipe.ingest.decode_image` with the same `ImageOptions`: same
  size (an image of another size is resized only if the dataset resized, else reported), colour mode,
  bit depth rule and background;
* a ``.npy`` file: one sample of the dataset's shape, or a stack ``(n, *shape)`` (one input per row, named
  ``file.npy[i]``); its dtype must be the dataset's or one that casts to it safely by type
  (``np.can_cast(..., "safe")``, whatever the values);
* a CSV file (CSV datasets): one input per row, the dataset's feature columns by name (other columns are
  ignored, the label column too), missing values as ``--missing`` decided (``fill=VALUE`` fills, otherwise the
  row is reported); rows are named by the ID column when the file has it, else ``file.csv:LINE``;
* a folder: every such file inside, recursively, in sorted order (hidden names skipped).

The samples go to ``model.keras`` as they are (its first layer scales or normalises them). An input that
cannot be read is reported on its own row (``error``); the others are still predicted.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kpipe.errors import ArgumentError, KpipeError, OutputExistsError
from kpipe.ingest import (
    IMAGE_EXTENSIONS,
    ImageOptions,
    SampleError,
    decode_image,
    is_hidden,
    load_npy,
)


@dataclasses.dataclass(frozen=True)
class InputRules:
    """How new inputs are read: the dataset's classes, sample shape and dtype, and ``prepare`` parameters."""

    classes: list[str]
    shape: tuple[int, ...]
    dtype: str
    prepare: dict[str, Any]

    @property
    def layout(self) -> str:
        return self.prepare.get("layout", "npy")

    @classmethod
    def of_run(cls, config: dict[str, Any], manifest: Any = None) -> InputRules:
        """From a run's ``config.json`` (its ``dataset`` record), else from ``manifest`` (a `Manifest`)."""
        record = config.get("dataset")
        if manifest is None and isinstance(record, dict) and "sample" in record:
            return cls(list(record["classes"]), tuple(record["sample"]["shape"]), record["sample"]["dtype"],
                       dict(record.get("prepare") or {}))
        if manifest is None:
            raise ArgumentError("The run does not record how its dataset was read (it predates kpipe predict); "
                                "pass --manifest with the dataset it was trained on.")
        return cls(list(manifest.classes), tuple(manifest.sample_shape), manifest.sample_dtype,
                   dict(manifest.prepare or {}))

    def image_options(self) -> ImageOptions:
        p = self.prepare
        size = p.get("image_size")
        return ImageOptions(image_size=tuple(size) if size else None, color_mode=p.get("color_mode", "rgb"),
                            resize=bool(p.get("resized", False)), dtype=p.get("dtype", self.dtype),
                            background=p.get("background", "white"))


@dataclasses.dataclass
class Prediction:
    """One input: its name, and its class probabilities or the reason it could not be read."""

    input: str
    probabilities: np.ndarray | None = None
    error: str | None = None


# ------------------------------------------------------------------ reading
def _as_sample(arr: np.ndarray, rules: InputRules, what: str) -> np.ndarray:
    if tuple(arr.shape) != rules.shape:
        raise SampleError("shape", f"{what} has shape {tuple(arr.shape)}; the model takes samples of shape "
                                   f"{rules.shape}")
    if arr.dtype != np.dtype(rules.dtype):
        if not np.can_cast(arr.dtype, rules.dtype, "safe"):
            raise SampleError("dtype", f"{what} has dtype {arr.dtype}; the dataset's samples are {rules.dtype} "
                                       "(values are never rescaled: save the sample as the dataset stores it)")
        arr = arr.astype(rules.dtype)
    return arr


def _npy_inputs(path: Path, rules: InputRules) -> Iterator[tuple[str, np.ndarray]]:
    arr = load_npy(path)
    if arr.ndim == len(rules.shape) + 1 and tuple(arr.shape[1:]) == rules.shape:
        if arr.shape[0] == 0:  # a row of its own, as any input that gives no sample
            raise SampleError("shape", f"the array is an empty stack (shape {tuple(arr.shape)}): no sample in it")
        for i in range(arr.shape[0]):
            yield f"{path}[{i}]", _as_sample(arr[i], rules, "the array")
        return
    yield str(path), _as_sample(arr, rules, "the array")


def _csv_rows(path: Path, rules: InputRules) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
    from kpipe.errors import InputError
    from kpipe.ingest import _is_missing, _parse_float, _read_csv, parse_missing  # prepare's rules for the rows

    features = list(rules.prepare.get("feature_columns") or [])
    _, fill = parse_missing(rules.prepare.get("missing", "auto"))
    try:
        rows = _read_csv(path)  # a quote never closed is refused, as prepare refuses it
    except InputError as e:
        raise SampleError("bad-row", str(e)) from None
    header = [h.strip() for h in rows[0][1]]
    missing = [c for c in features if c not in header]
    if missing:
        raise SampleError("bad-row", f"the CSV file has no column {missing[0]!r}; the model reads the columns "
                                     f"{', '.join(features)}")
    twice = next((c for c in features if header.count(c) > 1), None)
    if twice is not None:
        raise SampleError("bad-row", f"the CSV file names two columns {twice!r}; the model reads each column by its "
                                     "name, so which one is meant cannot be told. Rename one of them.")
    columns = [header.index(c) for c in features]
    id_column = rules.prepare.get("id_column")
    id_index = header.index(id_column) if id_column in header else None
    for n, r in rows[1:]:
        name = r[id_index].strip() if id_index is not None and id_index < len(r) else f"{path}:{n}"
        if len(r) != len(header):
            yield name, None, f"row has {len(r)} cells, the header has {len(header)}"
            continue
        values, problem = [], None
        for j in columns:
            cell = r[j].strip()
            value = fill if _is_missing(cell) else _parse_float(cell)
            if value is None:
                problem = f"value {cell!r} in column {header[j]!r} is " + \
                          ("missing" if _is_missing(cell) else "not a number")
                break
            values.append(value)
        yield name, (None if problem else np.asarray(values, dtype=np.float32)), problem


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        found += [Path(root) / f for f in sorted(files) if not is_hidden(f) and f.lower().endswith(suffixes)]
    return found


def _suffixes(rules: InputRules) -> tuple[str, ...]:
    return {"images": (*IMAGE_EXTENSIONS, ".npy"), "csv": (".csv", ".npy")}.get(rules.layout, (".npy",))


def read_inputs(inputs: Sequence[str | os.PathLike], rules: InputRules
                ) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
    """``(name, sample or None, error or None)`` for every input, in order (see the module docstring)."""
    options = rules.image_options() if rules.layout == "images" else None
    for given in inputs:
        path = Path(given)
        paths = _files(path, _suffixes(rules)) if path.is_dir() else [path]
        if path.is_dir() and not paths:
            yield str(path), None, f"the folder holds no {' / '.join(_suffixes(rules))} file"
        for p in paths:
            yield from _read_one(p, rules, options)


def _read_one(path: Path, rules: InputRules, options: ImageOptions | None
              ) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
    suffix = path.suffix.lower()
    try:
        if not path.exists():
            raise SampleError("unreadable", "no such file")
        if suffix == ".npy":
            yield from ((n, a, None) for n, a in _npy_inputs(path, rules))
        elif rules.layout == "csv" and suffix == ".csv":
            yield from _csv_rows(path, rules)
        elif rules.layout == "images" and suffix in IMAGE_EXTENSIONS:
            yield str(path), _as_sample(decode_image(path, options)[0], rules, "the image"), None
        else:
            kinds = {"images": "image files", "csv": "CSV files", "npy": "no other file"}[rules.layout]
            raise SampleError("not-a-sample", f"not an input this model reads (.npy samples, {kinds})")
    except SampleError as e:
        if e.kind == "size" and options is not None:
            h, w = options.image_size
            e = SampleError("size", f"image is {e.detail}; the model takes {h}x{w} images (its dataset was prepared "
                                    "without --image-size, so images of another size are not resized)")
        yield str(path), None, str(e)
    except (OSError, ValueError) as e:
        yield str(path), None, f"cannot read: {e}"


# ------------------------------------------------------------------ predicting
@dataclasses.dataclass
class PredictResult:
    """The predictions of `predict`, in input order."""

    run_dir: Path
    classes: list[str]
    predictions: list[Prediction]
    top_k: int | None = None

    @property
    def num_errors(self) -> int:
        return sum(p.error is not None for p in self.predictions)

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per input (the CSV): ``input, class, probability``, then either the probability of
        every class (``prob_<class>``) or, with ``top_k``, ``class_2, probability_2 ...``; then ``error``."""
        rows = []
        for p in self.predictions:
            row: dict[str, Any] = {"input": p.input, "class": "", "probability": ""}
            if p.probabilities is not None:
                order = np.argsort(-p.probabilities, kind="stable")
                row |= {"class": self.classes[order[0]], "probability": _fmt(p.probabilities[order[0]])}
                if self.top_k:
                    for rank, k in enumerate(order[1:self.top_k], start=2):
                        row |= {f"class_{rank}": self.classes[k], f"probability_{rank}": _fmt(p.probabilities[k])}
                else:
                    row |= {f"prob_{c}": _fmt(v) for c, v in zip(self.classes, p.probabilities)}
            row["error"] = p.error or ""
            rows.append(row)
        return rows

    def columns(self) -> list[str]:
        extra = ([f"{w}_{r}" for r in range(2, (self.top_k or 0) + 1) for w in ("class", "probability")]
                 if self.top_k else [f"prob_{c}" for c in self.classes])
        return ["input", "class", "probability", *extra, "error"]

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.columns(), restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows())
        return out.getvalue()

    def to_dict(self) -> dict[str, Any]:
        """``{"run_dir", "classes", "num_inputs", "num_errors", "predictions": [...]}`` (``--json``)."""
        items = []
        for p in self.predictions:
            item: dict[str, Any] = {"input": p.input, "class": None, "probability": None}
            if p.probabilities is not None:
                order = np.argsort(-p.probabilities, kind="stable")
                item |= {"class": self.classes[order[0]], "probability": float(p.probabilities[order[0]])}
                if self.top_k:
                    item["top_k"] = [{"class": self.classes[k], "probability": float(p.probabilities[k])}
                                     for k in order[:self.top_k]]
                else:
                    item["probabilities"] = {c: float(v) for c, v in zip(self.classes, p.probabilities)}
            item["error"] = p.error
            items.append(item)
        return {"run_dir": str(self.run_dir), "classes": self.classes, "num_inputs": len(items),
                "num_errors": self.num_errors, "predictions": items}

    def write(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``.csv`` or ``.json`` (by the suffix), atomically.

        Raises:
            OutputExistsError: As `check_out` (an existing file without
                ``overwrite``, or one that is not a predictions file).
        """
        from kpipe._io import atomic_write_bytes

        path = check_out(path, overwrite=overwrite)
        text = json.dumps(self.to_dict(), indent=1) + "\n" if path.suffix.lower() == ".json" else self.to_csv()
        atomic_write_bytes(path, text.encode("utf-8"))
        return path

    def summary(self) -> str:
        done = len(self.predictions) - self.num_errors
        note = f"; {self.num_errors} could not be read (see the error column)" if self.num_errors else ""
        return f"Predicted {done} of {len(self.predictions)} inputs{note}"


_PREDICTION_KEYS = {"run_dir", "classes", "num_inputs", "num_errors", "predictions"}


def _is_predictions_file(path: Path) -> bool:
    """True if ``path`` is a regular file that `PredictionResult.write` could have written (checked by content)."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            return isinstance(data, dict) and set(data) == _PREDICTION_KEYS
        first = head.split(b"\n", 1)[0].decode("utf-8").split(",")
    except (OSError, ValueError):
        return False
    return first[:3] == ["input", "class", "probability"] and first[-1] == "error"


def check_out(path: str | os.PathLike, *, overwrite: bool = False, inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Check that the predictions may be written to ``path`` (call it before predicting).

    A new file is always fine. An existing one is replaced only with
    ``overwrite`` and only if it is a predictions file kpipe wrote (a CSV
    whose header is ``input,class,probability,...,error``, or the JSON of
    ``--json``): never a manifest, a dataset's CSV or another file.

    Args:
        path: The ``--out`` file (``.csv`` or ``.json``).
        overwrite: Replace an existing predictions file.
        inputs: The inputs being predicted; ``path`` may not be one of them.

    Returns:
        ``path`` as a `Path`.

    Raises:
        OutputExistsError: If ``path`` is one of ``inputs``, exists without
            ``overwrite``, or exists and is not a predictions file.
    """
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return path
    if any(os.path.lexists(i) and path.resolve() == Path(i).resolve() for i in inputs):
        raise OutputExistsError(f"--out {path} is one of the inputs being predicted; write the predictions to "
                                "another file.")
    if not overwrite:
        raise OutputExistsError(f"{path} exists. Pass --overwrite to replace it (only a predictions file kpipe "
                                "wrote is replaced), or choose another --out.")
    if not _is_predictions_file(path):
        raise OutputExistsError(f"{path} exists and is not a predictions file kpipe wrote (its content is not "
                                "`kpipe predict`'s CSV or JSON); kpipe does not replace it, even with --overwrite. "
                                "Choose another --out.")
    return path


def _fmt(value: float) -> str:
    return f"{float(value):.6f}"


def predict(run_dir: str | os.PathLike, inputs: Sequence[str | os.PathLike], *, top_k: int | None = None,
            manifest: str | os.PathLike | None = None, batch_size: int = 256) -> PredictResult:
    """Class probabilities of a run's ``model.keras`` for raw inputs (see the module docstring for what is read).

    Args:
        run_dir: The run folder.
        inputs: Files (images, ``.npy``, ``.csv``) and folders.
        top_k: Report the ``k`` most probable classes instead of every class's probability.
        manifest: The dataset, for a run that does not record its ingest rules (older runs).
        batch_size: Samples per `model.predict` batch.

    Returns:
        A `PredictResult`: one `Prediction` per input, in order; unreadable inputs carry an ``error``.

    Raises:
        KpipeError: If the run has no ``model.keras`` or no inputs are given.
    """
    import keras

    from kpipe._validation import check_positive_int
    from kpipe.manifest import load_manifest
    from kpipe.training.run_folder import RunFolder

    run = RunFolder(run_dir)
    config = run.read_config()
    if not run.file("model.keras").is_file():
        raise KpipeError(f"No model.keras in {run.path}: it is not a finished kpipe run. Received: "
                         f"run={str(run_dir)!r}")
    if not inputs:
        raise ArgumentError("Give at least one INPUT: image files, a folder, .npy files or a CSV file.")
    top_k = None if top_k is None else check_positive_int(top_k, "top_k")
    rules = InputRules.of_run(config, None if manifest is None else load_manifest(manifest))
    read = list(read_inputs(inputs, rules))
    predictions = [Prediction(name, error=error) for name, _, error in read]
    good = [(p, sample) for p, (_, sample, error) in zip(predictions, read) if error is None]
    if good:
        model = keras.saving.load_model(run.file("model.keras"), compile=False)
        x = np.stack([sample for _, sample in good]).astype(np.float32)  # values as stored: the model scales
        probs = _probabilities(np.asarray(model.predict(x, batch_size=check_positive_int(batch_size, "batch_size"),
                                                        verbose=0)), (config.get("resolved") or {}).get("outputs"))
        for (p, _), row in zip(good, probs):
            p.probabilities = row
    return PredictResult(run.path.resolve(), rules.classes, predictions, top_k=top_k)


def _probabilities(outputs: np.ndarray, kind: str | None) -> np.ndarray:
    """Class probabilities ``(n, num_classes)`` from the model's outputs (logits get a softmax / sigmoid)."""
    outputs = outputs.astype(np.float64)
    if outputs.shape[-1] == 1:
        p = 1 / (1 + np.exp(-outputs)) if kind == "logits" else outputs
        return np.concatenate([1 - p, p], axis=1)
    if kind == "logits":
        e = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return outputs
