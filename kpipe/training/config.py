"""Configuration files for `kpipe train --config FILE` and the layering of configuration sources.

A configuration file holds one key per `kpipe train` option, named as the
option without the leading dashes (``--batch-size`` -> ``batch_size``;
``batch-size`` is accepted too), at the top level or under a ``[train]``
table. TOML (read with `tomllib`) and JSON are accepted, so a run folder's
``config.json`` can be given back as ``--config`` to repeat a run::

    # train.toml
    loop = "tape"
    epochs = 20
    batch_size = 64
    loss = "categorical_focal_crossentropy"
    loss_args = { gamma = 3.0 }
    monitor = "val_accuracy"
    patience = 4

Precedence, lowest first: `TrainConfig` defaults, the resumed run's
``config.json`` (``--resume``), the ``--config`` file, options given on the
command line.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from kpipe.errors import KpipeError

# Keys a file may hold that are not TrainConfig fields: ignored (written by runs for people).
INFORMATIONAL_KEYS = frozenset({"manifest", "dataset_fingerprint", "kpipe_version", "resolved"})

# Keys named after a CLI option whose field has another name (``--lr``, ``--sample-weights``).
KEY_ALIASES = {"lr": "learning_rate", "sample_weights": "use_sample_weights"}


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise KpipeError(f"No configuration file at {path}. Received: config={str(path)!r}")
    text = path.read_bytes()
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise KpipeError(f"{path} is not valid JSON: {e}") from None
    else:
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ImportError:
                raise KpipeError(
                    f"Reading {path} needs Python 3.11+ (tomllib) or `pip install tomli`; a .json file also works."
                ) from None
        try:
            data = tomllib.loads(text.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise KpipeError(f"{path} is not valid TOML: {e}") from None
    if not isinstance(data, dict):
        raise KpipeError(f"{path} must hold a table of options (key = value). Received: {type(data).__name__}")
    if isinstance(data.get("train"), dict):
        data = data["train"]
    return data


def load_config_file(path: str | os.PathLike, fields: set[str]) -> dict[str, Any]:
    """Read a TOML or JSON configuration file into ``{field: value}``.

    Args:
        path: A ``.toml`` file (any other suffix is read as TOML) or ``.json``.
        fields: The accepted keys (the `TrainConfig` field names).

    Returns:
        The values, keys with ``-`` turned into ``_``; informational keys of a
        run's ``config.json`` (``manifest``, ``dataset_fingerprint``, ``kpipe_version``) dropped.

    Raises:
        KpipeError: If the file is missing, unreadable, or has an unknown key
            (the message lists the valid ones).
    """
    path = Path(path)
    data = {str(k).replace("-", "_"): v for k, v in _read(path).items()}
    data = {KEY_ALIASES.get(k, k): v for k, v in data.items()}
    unknown = sorted(k for k in data if k not in fields and k not in INFORMATIONAL_KEYS)
    if unknown:
        raise KpipeError(
            f"Unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in {path}. "
            f"Valid keys (the `kpipe train` options): {', '.join(sorted(fields))}."
        )
    return {k: v for k, v in data.items() if k in fields}


def layered_options(cls: type, options: dict[str, Any], *, explicit: set[str] | None = None,
                    config_file: str | os.PathLike | None = None,
                    resume: str | os.PathLike | None = None) -> dict[str, Any]:
    """Merge configuration sources into the keyword arguments of ``cls`` (a dataclass).

    Args:
        cls: `TrainConfig`.
        options: Option values (e.g. from click); `None` means "not given".
        explicit: Names of the options given explicitly (on the command line);
            they override the file. `None`: every non-`None` option is explicit.
        config_file: A ``--config`` file (`load_config_file`).
        resume: A run folder whose ``config.json`` is the base (``--resume``).

    Returns:
        ``{field: value}`` for ``cls(**...)``.
    """
    fields = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in options.items() if k in fields and v is not None}
    explicit_names = set(given) if explicit is None else {k for k in explicit if k in given}
    merged: dict[str, Any] = {}
    if resume is not None:
        run_config = Path(resume) / "config.json"
        if not run_config.is_file():
            raise KpipeError(
                f"Cannot resume {resume}: it has no config.json (is it a kpipe run folder?). "
                f"Received: resume={str(resume)!r}"
            )
        merged.update(load_config_file(run_config, fields))
    # click defaults (not explicit) sit under the files, explicit options over them
    for k, v in given.items():
        if k not in explicit_names and k not in merged:
            merged[k] = v
    if config_file is not None:
        merged.update(load_config_file(config_file, fields))
        for k, v in given.items():
            if k not in explicit_names and k not in merged:
                merged[k] = v
    merged.update({k: given[k] for k in explicit_names})
    if resume is not None:
        merged["resume"] = str(resume)
    return merged
