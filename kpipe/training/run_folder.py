"""`RunFolder`: the layout of a run folder, its ownership marker, the overwrite / resume policy, its artifacts.

A run folder (``kpipe train --out RUN``) holds::

    kpipe-run.json        the marker: kpipe made this folder (only such a folder is ever deleted)
    config.json           every option, usable again as --config, plus what was resolved
    checkpoint/           last.weights.h5 (weights + optimizer), best.weights.h5, state.json (for --resume)
    history.json, log.csv, steps.csv, tensorboard/
    model.keras, metrics.json, curves.png, confusion_matrix.png

Policy: a new run goes to an empty or absent folder; ``overwrite`` replaces a
folder only if it carries the marker, and never the working directory, a
home folder, or a folder holding the dataset. ``resume`` continues a folder
with a checkpoint, on the dataset it was trained on (compared by
`dataset_fingerprint`). This module imports neither Keras nor TensorFlow, so
later commands (evaluate, predict, inspect) can open a run cheaply.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kpipe._io import atomic_write_bytes, atomic_write_json
from kpipe._version import __version__
from kpipe.errors import ArgumentError, KpipeError, OutputExistsError, OutputWriteError
from kpipe.manifest import Manifest

MARKER = "kpipe-run.json"
CHECKPOINT_DIR = "checkpoint"
LAST_WEIGHTS = "last.weights.h5"
BEST_WEIGHTS = "best.weights.h5"
STATE_FILE = "state.json"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
"""`OSError` numbers of a full device (or quota)."""


def dataset_fingerprint(manifest: Manifest) -> str:
    """sha256 of what a run's batches depend on: classes, labels, partition, sample shape and dtype.

    Two manifests with the same fingerprint serve the same batches (a copied dataset is the same
    dataset; a re-split one is not), so `--resume` compares fingerprints, not paths.
    """
    key = {"classes": manifest.classes, "labels": manifest.labels, "partition": manifest.partition,
           "shape": list(manifest.sample_shape), "dtype": manifest.sample_dtype}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()


PREPARE_KEYS = ("layout", "image_size", "color_mode", "resized", "dtype", "background", "feature_columns",
                "label_column", "id_column", "missing", "weight_column")
"""The ``prepare`` parameters a run keeps: how ``kpipe predict`` reads new inputs as the dataset's were read."""


def dataset_record(manifest: Manifest) -> dict[str, Any]:
    """What a run needs of its dataset to read new inputs without it: classes, sample, the ingest rules."""
    prepare = manifest.prepare or {}
    return {"classes": list(manifest.classes), "sample": {"shape": list(manifest.sample_shape),
                                                          "dtype": manifest.sample_dtype},
            "prepare": {k: prepare[k] for k in PREPARE_KEYS if k in prepare}}


def output_error(error: OSError, path: str | os.PathLike) -> OutputWriteError:
    """The `OutputWriteError` for an `OSError` met writing ``path`` (one line, the file named)."""
    target = error.filename or path
    if error.errno in DISK_FULL:
        return OutputWriteError(f"No space left on device writing {target}. Free some space or choose another "
                                "--out (a run with a complete epoch continues with --resume).")
    return OutputWriteError(f"Cannot write {target}: {error.strerror or error}. Check the folder's permissions "
                            "and free space, or choose another --out.")


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn an `OSError` raised while writing ``path`` into an `OutputWriteError` that names it."""
    try:
        yield
        return
    except OutputWriteError:
        raise
    except OSError as e:
        error = output_error(e, path)
    # Raised outside the handler, so that the OSError, its traceback and the failed writer's frames (h5py keeps
    # the file open there) are freed now, not when the process ends.
    raise error


class RunFolder:
    """One run folder: where each artifact lives, who owns the folder, and whether it may be replaced.

    Args:
        path: The folder (it may not exist yet).

    Example:
        >>> run = RunFolder.for_new_run(manifest, out="runs/a", overwrite=False)
        >>> run.create()
        >>> run.write_json("metrics.json", {"accuracy": 0.9})
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.created = False

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ------------------------------------------------------------ layout
    def file(self, name: str) -> Path:
        """``path / name`` (``"model.keras"``, ``"metrics.json"``...)."""
        return self.path / name

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def state_file(self) -> Path:
        return self.checkpoint_dir / STATE_FILE

    @property
    def last_weights(self) -> Path:
        return self.checkpoint_dir / LAST_WEIGHTS

    @property
    def best_weights(self) -> Path:
        return self.checkpoint_dir / BEST_WEIGHTS

    def is_owned(self) -> bool:
        """True if the folder carries kpipe's run marker (then `--overwrite` may replace it)."""
        try:
            marker = json.loads((self.path / MARKER).read_text())
        except (OSError, ValueError):
            return False
        return isinstance(marker, dict) and marker.get("kind") == "kpipe-run"

    def has_checkpoint(self) -> bool:
        """True if an epoch has ended: ``checkpoint/state.json`` and ``last.weights.h5`` exist."""
        return self.state_file.is_file() and self.last_weights.is_file()

    # ------------------------------------------------------------ policy
    @classmethod
    def default(cls, manifest: Manifest) -> RunFolder:
        """``<manifest folder>/runs/<UTC time>``, unique."""
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        base = manifest.root.parent if manifest.path is None else manifest.path.parent
        run = base / "runs" / stamp
        while run.exists():
            run = base / "runs" / f"{stamp}-{uuid.uuid4().hex[:4]}"
        return cls(run)

    @classmethod
    def for_new_run(cls, manifest: Manifest, *, out: str | os.PathLike | None, overwrite: bool) -> RunFolder:
        """The folder of a new run, checked (nothing is written yet: see `create`).

        Raises:
            OutputExistsError: If ``out`` exists, is not empty, and ``overwrite`` is not set.
            ArgumentError: If ``overwrite`` would delete a folder kpipe does not own (no marker), the
                working directory, a home folder, or a folder holding the dataset.
        """
        run = cls(out) if out is not None else cls.default(manifest)
        if not (run.path.is_file() or (run.path.is_dir() and any(run.path.iterdir()))):
            return run
        if not overwrite:
            raise OutputExistsError(f"Run folder {run.path} exists already. Pass --overwrite to replace it, "
                                    f"--resume {run.path} to continue it, or choose another --out.")
        run._check_replaceable(manifest)
        return run

    def _check_replaceable(self, manifest: Manifest) -> None:
        if self.path.is_symlink():
            raise ArgumentError(f"{self.path} is a symbolic link; --overwrite does not replace links or what they "
                                "point to. Choose another --out (or the folder itself).")
        target = self.path.resolve()
        protected = [Path.cwd().resolve(), Path.home().resolve()]
        if manifest.path is not None:
            protected += [Path(manifest.path).resolve().parent, manifest.root.resolve()]
        for p in protected:
            if target == p or target in p.parents:
                raise ArgumentError(f"--overwrite would delete {self.path}, which holds {p}. "
                                    "Choose another --out for the run.")
        if not (self.path.is_dir() and self.is_owned()):
            raise ArgumentError(f"{self.path} is not a kpipe run folder (it has no {MARKER}), so --overwrite "
                                "will not delete it. Choose another --out.")

    @classmethod
    def for_resume(cls, path: str | os.PathLike, *, out: str | os.PathLike | None, manifest: Manifest,
                   epochs: int) -> tuple[RunFolder, dict[str, Any]]:
        """The folder of a resumed run and its checkpoint state.

        Raises:
            ArgumentError: If ``out`` names another folder.
            KpipeError: If there is no checkpoint, nothing left to train, or
                the run was trained on another dataset.
        """
        run = cls(path)
        if out is not None and Path(out).resolve() != run.path.resolve():
            raise ArgumentError(f"--resume continues the run in its own folder; drop --out. "
                                f"Received: resume={str(path)!r}, out={str(out)!r}")
        state = run.load_state()
        run._check_dataset(manifest)
        if state.get("stopped") or state["next_epoch"] >= epochs:
            why = "stopped early" if state.get("stopped") else f"trained {state['next_epoch']} of {epochs} epochs"
            unevaluated = "" if run.file("metrics.json").is_file() else (
                f" Its final evaluation did not complete: run `kpipe evaluate {run.path}`.")
            raise KpipeError(f"Nothing to resume: the run {run.path} {why}.{unevaluated} Pass a larger --epochs to "
                             f"train further. Received: epochs={epochs}")
        return run, state

    def load_state(self) -> dict[str, Any]:
        """``checkpoint/state.json``.

        Raises:
            KpipeError: If the folder has no checkpoint (or an unreadable one).
        """
        if not self.has_checkpoint():
            raise KpipeError(f"No checkpoint to resume from in {self.path}: {self.state_file} is missing (a run "
                             "writes it after its first epoch). Start a new run without --resume.")
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError) as e:
            raise KpipeError(f"Cannot read the checkpoint state {self.state_file}: {e}") from None

    def read_config(self) -> dict[str, Any]:
        """The run's ``config.json`` (``{}`` when missing or unreadable)."""
        try:
            value = json.loads(self.file("config.json").read_text())
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def _check_dataset(self, manifest: Manifest) -> None:
        saved = self.read_config()
        previous, fingerprint = saved.get("manifest"), saved.get("dataset_fingerprint")
        if fingerprint is not None:
            differs = fingerprint != dataset_fingerprint(manifest)
        else:
            differs = bool(previous) and manifest.path is not None and \
                Path(previous).resolve() != Path(manifest.path).resolve()
        if differs and previous and manifest.path is not None and \
                Path(previous).resolve() == Path(manifest.path).resolve():
            raise KpipeError(
                f"The dataset {manifest.path} changed since run {self.path} was trained on it (its classes, labels "
                "or partition differ: it was prepared again); resuming would mix the two datasets. Start a new "
                "run (another --out, or --overwrite)."
            )
        if differs:
            raise KpipeError(
                f"Run {self.path} was trained on {previous}, whose classes, labels or partition differ from "
                f"{manifest.path}; resuming it on another dataset would mix the two. Run `kpipe train {previous} "
                f"--resume {self.path}`, or start a new run."
            )

    # ------------------------------------------------------------ writing
    def create(self, *, replace: bool = False) -> None:
        """Make the folder and its marker; with ``replace``, delete the (checked, owned) old one first."""
        with writing(self.path):
            if replace and self.path.exists():
                shutil.rmtree(self.path) if self.path.is_dir() else self.path.unlink()
            self.created = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
            self.checkpoint_dir.mkdir(exist_ok=True)
            marker = {"kind": "kpipe-run", "kpipe_version": __version__,
                      "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
            atomic_write_json(self.path / MARKER, marker)

    def discard_unfinished(self) -> None:
        """Delete the folder if this session created it and no epoch ended (nothing worth keeping)."""
        if self.created and not self.has_checkpoint():
            shutil.rmtree(self.path, ignore_errors=True)

    def write_config(self, config: Any, *, manifest: Manifest, resolved: dict[str, Any]) -> Path:
        """Write ``config.json``: every option of ``config`` (usable again as ``--config``) and what was resolved.

        ``resume``, ``out`` and ``overwrite`` are left out (they say where a
        session ran, not how); ``loss`` is the loss as named
        (``resolved["loss_label"]``).
        """
        resolved = dict(resolved)
        values = dataclasses.asdict(config) | {"loss": resolved.pop("loss_label", config.loss)}
        for key in ("resume", "out", "overwrite"):
            values.pop(key, None)
        return self.write_json("config.json", values | {
            "manifest": None if manifest.path is None else str(Path(manifest.path).resolve()),
            "dataset_fingerprint": dataset_fingerprint(manifest), "dataset": dataset_record(manifest),
            "kpipe_version": __version__, "resolved": resolved})

    def plot_curves(self, history: dict[str, list[float]], facts: dict[str, Any]) -> None:
        """Draw ``curves.png`` (`kpipe.training.artifacts.plot_history`) with the kept epoch marked."""
        from kpipe.training.artifacts import plot_history

        with writing(self.path):
            plot_history(history, self.file("curves.png"), best_epoch=facts.get("best_epoch"),
                         monitor=facts.get("monitor"))

    def write_json(self, name: str, value: Any) -> Path:
        """Write ``name`` (JSON) atomically; returns its path."""
        path = self.file(name)
        with writing(path):
            atomic_write_json(path, value)
        return path

    def trim_logs(self, *, epochs: int, steps: int) -> None:
        """Drop rows of ``log.csv`` / ``steps.csv`` written after the checkpoint (an interrupt between writes).

        ``log.csv`` numbers epochs from 1, so the rows kept are epochs ``1 .. epochs``.
        """
        for name, limit in (("log.csv", epochs), ("steps.csv", steps)):
            path = self.file(name)
            if not path.is_file():
                continue
            lines = path.read_text().splitlines(keepends=True)
            kept = lines[:1] + [line for line in lines[1:] if line.split(",")[0].strip().isdigit()
                                and int(line.split(",")[0]) <= limit]
            if len(kept) != len(lines):
                with writing(path):
                    atomic_write_bytes(path, "".join(kept).encode("utf-8"))
