"""`TrainConfig`: the one definition of every training option, and the configuration-file layering.

Each field of `TrainConfig` carries an `Option` (its help text, its check,
its command-line spelling and group). From that one schema come:

* the Python API: ``TrainConfig(epochs=5, loop="tape")`` (keyword-only,
  frozen, validated and normalised in ``__post_init__`` by the ``check_*``
  functions of `kpipe._validation`);
* the options of ``kpipe train`` (`kpipe.cli` builds one click option per
  field from `options`, with the same default, choices and help);
* the configuration file (``--config FILE``): one key per field, named as the
  field or as its command-line option without dashes (``batch-size``, ``lr``),
  at the top level or under a ``[train]`` table, TOML (`tomllib`) or JSON, so
  a run folder's ``config.json`` can be given back as ``--config``::

    # train.toml
    loop = "tape"
    epochs = 20
    loss = "categorical_focal_crossentropy"
    loss_args = { gamma = 3.0 }
    monitor = "val_accuracy"
    patience = 4

Precedence, lowest first: the defaults, the resumed run's ``config.json``
(``--resume``), the ``--config`` file, the options given on the command line.

Trust: the command line and a ``--config`` file the user passes may name code
(``--model``, ``--loss``, ``--step-model`` as ``module:attr`` or
``file.py:attr``), which kpipe imports. A run folder is data: code named in
its ``config.json`` is never imported by ``--resume`` unless the user names it
again on the command line (`layered_options` refuses otherwise).

This module imports neither Keras nor TensorFlow: ``kpipe train`` validates
its options before TensorFlow starts.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kpipe._validation import (
    check_bool,
    check_int,
    check_json_object,
    check_name_list,
    check_number,
    check_optional_bool,
    check_positive_int,
    check_seed,
    check_text,
    check_text_choice,
    loads_json,
)
from kpipe.errors import ArgumentError, KpipeError
from kpipe.training.loading import is_object_spec

OPTION = "kpipe_option"
"""Key of the `Option` in a `TrainConfig` field's metadata."""

LOOP_NAMES = ("fit", "step", "tape")
"""Names of the training loops (the keys of `kpipe.training.loops.LOOPS`)."""

CODE_FIELDS = ("model", "loss", "step_model")
"""Fields that may name code to import (``module:attr`` / ``file.py:attr``)."""

METRIC_NAMES = ("accuracy", "auc", "pr_auc", "precision", "recall", "f1", "balanced_accuracy")
"""Names ``--metrics`` accepts (`kpipe.training.metrics`; accuracy is always logged)."""

GROUPS = ("data", "model and loss", "sampling and weights", "optimisation", "loop", "run folder")
"""The sections of ``kpipe train --help``, in order (each option's `Option.group`)."""

INFORMATIONAL_KEYS = frozenset({"manifest", "dataset_fingerprint", "kpipe_version", "resolved", "dataset"})
"""Keys a run's ``config.json`` holds for people, ignored when it is read back."""


@dataclasses.dataclass(frozen=True)
class Option:
    """How one `TrainConfig` field is checked and offered on the command line.

    Attributes:
        help: One line of help (``kpipe train --help``).
        check: ``check(value, name) -> normalised value``; raises `ArgumentError`.
        group: Section of the option: ``"data"``, ``"model and loss"``,
            ``"sampling and weights"``, ``"optimisation"``, ``"loop"``, ``"run folder"``.
        kind: Command-line type: ``"int"``, ``"float"``, ``"text"``, ``"flag"``
            (``--x``), ``"switch"`` (``--x/--no-x``), ``"path"``, ``"dir"`` (an existing folder).
        choices: The accepted strings, if the option is a choice.
        minimum: Smallest number accepted (with ``min_open``: excluded).
        maximum: Largest number accepted.
        min_open: ``minimum`` itself is refused.
        flags: Command-line spellings; defaults to ``--<name with dashes>``.
        metavar: Placeholder shown in ``--help``.
        cli: Offered as a ``kpipe train`` option.
    """

    help: str
    check: Callable[[Any, str], Any]
    group: str
    kind: str = "text"
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    min_open: bool = False
    flags: tuple[str, ...] = ()
    metavar: str | None = None
    cli: bool = True


def _field(default: Any, help: str, check: Callable[[Any, str], Any], group: str, **kwargs: Any) -> Any:
    return dataclasses.field(default=default, metadata={OPTION: Option(help, check, group, **kwargs)})


def _positive_int(default: int, help: str, group: str, **kwargs: Any) -> Any:
    return _field(default, help, lambda v, n: check_positive_int(v, n), group, kind="int", minimum=1, **kwargs)


def _choice(default: str | None, help: str, choices: tuple[str, ...], group: str) -> Any:
    allow_none = default is None
    return _field(default, help, lambda v, n: check_text_choice(v, n, choices, allow_none=allow_none), group,
                  choices=choices)


def _text(default: str | None, help: str, group: str, **kwargs: Any) -> Any:
    allow_none = default is None
    return _field(default, help, lambda v, n: check_text(v, n, allow_none=allow_none), group, **kwargs)


def _json_kept(value: Any, name: str) -> Any:
    """A JSON text or value, checked to parse and kept as given (the generator reads it; config.json shows it)."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except json.JSONDecodeError as e:
            raise ArgumentError(f"`{name}` must be a JSON object such as '{{\"cat\": 2.0}}'. "
                                f"Received: {name}={value!r} ({e.msg})") from None
    elif value is not None and not isinstance(value, (dict, list, tuple)):
        raise ArgumentError(f"`{name}` must be a JSON object such as '{{\"cat\": 2.0}}'. Received: {name}={value!r}")
    return value


def _json(help: str, group: str, check: Callable[[Any, str], Any] = _json_kept, metavar: str = "JSON") -> Any:
    return _field(None, help, check, group, metavar=metavar)


def _verbose(value: Any, name: str) -> int | str:
    return "auto" if value == "auto" else check_int(value, name, minimum=0, maximum=2)


def _class_weight(value: Any, name: str) -> Any:
    return value if value in (None, "balanced") else _json_kept(value, name)


def _patience(value: Any, name: str) -> int | None:
    return check_int(value, name, minimum=0, allow_none=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a training run is configured by (written to the run folder as ``config.json``).

    Keyword-only and frozen; each value is checked and normalised when the
    config is made (`dataclasses.replace` makes a changed copy). The fields,
    their defaults and help are listed by ``kpipe train --help``; see
    `Option` and each field's ``metadata["kpipe_option"]``.

    Raises:
        ArgumentError: On an invalid value (the message names the option).

    Example:
        >>> config = TrainConfig(epochs=5, loop="tape", loss="categorical_focal_crossentropy",
        ...                      loss_args={"gamma": 3.0})
    """

    # --- model and loss
    model: str = _text("default", "default, or a factory module:function / path.py:function(input_shape, "
                       "num_classes).", "model and loss")
    loss: str = _text("sparse_categorical_crossentropy", "Keras loss name or class name, or module:function / "
                      "path.py:function(y_true, y_pred).", "model and loss")
    loss_args: dict[str, Any] | None = _json(
        'Arguments of a Keras loss class, e.g. \'{"gamma": 3.0}\' with --loss categorical_focal_crossentropy.',
        "model and loss", check=lambda v, n: check_json_object(v, n))
    label_mode: str | None = _choice(None, "Label encoding (default: from the loss; a custom loss is tried on one "
                                     "batch with one-hot, then integer labels).", ("int", "categorical", "binary"),
                                     "model and loss")
    rescale: float | None = _field(None, "Multiply inputs by this, inside the saved model (default: 1/255 for "
                                   "uint8, 1/65535 for uint16 data, else a Normalization layer adapted on train).",
                                   lambda v, n: check_number(v, n, allow_none=True), "model and loss", kind="float")
    metrics: tuple[str, ...] = _field((), "Metrics logged besides loss and accuracy, comma-separated: auc, pr_auc, "
                                      "precision, recall, f1, balanced_accuracy (macro over classes; of class 1 "
                                      "with --label-mode binary). --monitor may name them.",
                                      lambda v, n: tuple(m for m in check_name_list(v, n, METRIC_NAMES)
                                                         if m != "accuracy"), "model and loss", metavar="NAMES")
    # --- optimisation
    optimizer: str = _text("adam", "Keras optimizer name.", "optimisation")
    learning_rate: float = _field(1e-3, "Learning rate of the optimizer.", lambda v, n: check_number(
        v, n, minimum=0, exclusive_minimum=True), "optimisation", kind="float", minimum=0, min_open=True,
        flags=("--learning-rate", "--lr"))
    epochs: int = _positive_int(15, "Number of epochs.", "optimisation")
    batch_size: int = _positive_int(32, "Samples per batch.", "optimisation")
    seed: int = _field(0, "Seed of initialization, shuffling and dropout.", lambda v, n: check_seed(v, n),
                       "optimisation", kind="int", minimum=0)
    clip_norm: float | None = _field(None, "Clip gradients by global norm.", lambda v, n: check_number(
        v, n, minimum=0, exclusive_minimum=True, allow_none=True), "optimisation", kind="float", minimum=0,
        min_open=True)
    accumulation_steps: int = _positive_int(1, "Average the gradients of this many batches per update.",
                                            "optimisation")
    mixed_precision: bool = _field(False, "Train with the mixed_float16 policy and loss scaling (GPU).",
                                   lambda v, n: check_bool(v, n), "optimisation", kind="switch")
    distribute: str = _choice("auto", "Distribution strategy: auto (MirroredStrategy when several GPUs are "
                              "visible; one device on JAX and PyTorch), none, mirrored (TensorFlow), "
                              "multi-worker (TensorFlow, --loop tape: one process per worker, TF_CONFIG), or "
                              "data-parallel (JAX, --loop fit: keras.distribution.DataParallel over one process's "
                              "devices).", ("auto", "none", "mirrored", "multi-worker", "data-parallel"),
                              "optimisation")
    distribute_timeout: float = _field(300.0, "With --distribute multi-worker: seconds to wait for every worker "
                                       "of TF_CONFIG to join (until the first step ends); then this worker names the "
                                       "ones it cannot reach and ends with exit 1 (the Python process too).",
                                       lambda v, n: check_number(v, n, minimum=0, exclusive_minimum=True),
                                       "optimisation", kind="float", minimum=0, min_open=True, metavar="SECONDS")
    monitor: str = _text("val_loss", "Logged value that picks the best model and drives --patience "
                         "(val_loss is minimized, val_accuracy maximized).", "optimisation")
    patience: int | None = _field(None, "Stop after N epochs without improvement of --monitor (default: never).",
                                  _patience, "optimisation", kind="int", minimum=0)
    # --- loop
    loop: str = _choice("fit", "fit: model.fit; step: a Model subclass with its own train_step; tape: an "
                        "explicit loop (GradientTape, jax.grad or backward() by backend).", LOOP_NAMES, "loop")
    step_model: str | None = _text(None, "With --loop step: a kpipe.training.KpipeModel subclass, module:Class "
                                   "or path.py:Class.", "loop", metavar="MODULE:CLASS")
    log_every: int = _field(0, "Write the training loss to RUN/steps.csv every N steps (0: never).",
                            lambda v, n: check_int(v, n, minimum=0), "loop", kind="int", minimum=0)
    verbose: int | str = _field("auto", "Keras verbosity: 0 silent, 1 progress bar, 2 one line per epoch "
                                "(default: 1 on a terminal, else 2).", _verbose, "loop", kind="int", minimum=0,
                                maximum=2)
    # --- data
    workers: int = _positive_int(1, "Threads (or processes) making batches.", "data")
    use_multiprocessing: bool = _field(False, "Make batches in processes, not threads.",
                                       lambda v, n: check_bool(v, n), "data", kind="flag")
    max_queue_size: int = _positive_int(10, "Batches kept ready ahead.", "data")
    # --- sampling and weights (passed to the train generator under the same names)
    sampling: str = _choice("shuffle", "How the train partition is sampled each epoch.",
                            ("shuffle", "balanced", "bootstrap", "sequential"), "sampling and weights")
    balance: str | None = _choice(None, "balanced: undersample (default) | oversample; bootstrap: none | "
                                  "stratified | balanced.", ("undersample", "oversample", "none", "stratified",
                                                             "balanced"), "sampling and weights")
    steps_per_epoch: int | None = _field(None, "Batches per epoch, read in order from the train generator's "
                                         "endless stream (default: one pass over the sampler's epoch).",
                                         lambda v, n: check_positive_int(v, n, allow_none=True),
                                         "sampling and weights", kind="int", minimum=1)
    samples_per_epoch: int | None = _field(None, "Samples per epoch for --sampling balanced/bootstrap (default: "
                                           "from --balance).", lambda v, n: check_positive_int(
                                               v, n, allow_none=True), "sampling and weights", kind="int",
                                           minimum=1)
    target_distribution: dict[str, float] | None = _json(
        'Class shares for --sampling balanced, e.g. \'{"cat": 0.5, "dog": 0.5}\' (default: uniform).',
        "sampling and weights")
    class_weight: str | dict[str, float] | None = _field(
        None, 'balanced (n_samples / (n_classes * count)) or JSON class -> weight, e.g. \'{"7": 2.0}\'.',
        _class_weight, "sampling and weights", metavar="balanced|JSON")
    condition_weights: dict[str, float] | None = _json(
        "JSON class -> factor multiplying the weight of that class's samples.", "sampling and weights")
    use_sample_weights: bool = _field(False, "Multiply by the per-sample weights stored by `kpipe prepare "
                                      "--weight-column/--weights`.", lambda v, n: check_bool(v, n),
                                      "sampling and weights", kind="flag", flags=("--sample-weights",))
    # --- run folder
    out: str | None = _field(None, "Run folder (default: runs/<time> next to the manifest).",
                             lambda v, n: check_text(v, n, allow_none=True), "run folder", kind="path",
                             flags=("--out", "-o"))
    overwrite: bool = _field(False, "Replace the run folder --out if kpipe made it (it holds kpipe's run marker).",
                             lambda v, n: check_bool(v, n), "run folder", kind="flag")
    resume: str | None = _field(None, "Continue the run in this folder from its last checkpoint (its config.json "
                                "is the base; code it names is not imported unless given again).",
                                lambda v, n: check_text(v, n, allow_none=True), "run folder", kind="dir")
    tensorboard: bool | None = _field(None, "TensorBoard logs in RUN/tensorboard (default: when tensorboard is "
                                      "installed and the backend is TensorFlow).",
                                      lambda v, n: check_optional_bool(v, n), "run folder",
                                      kind="switch")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            # the documented way to normalise a frozen dataclass's own field
            object.__setattr__(self, f.name, f.metadata[OPTION].check(getattr(self, f.name), f.name))
        if self.step_model == "default":
            object.__setattr__(self, "step_model", None)
        monitored = self.monitor.removeprefix("val_")
        if monitored in METRIC_NAMES[1:] and monitored not in self.metrics:  # --monitor val_auc logs auc
            object.__setattr__(self, "metrics", (*self.metrics, monitored))
        if self.step_model is not None and self.loop != "step":
            raise ArgumentError(
                f"`step_model` is used by the step loop only. Add --loop step, or drop --step-model. "
                f"Received: loop={self.loop!r}, step_model={self.step_model!r}"
            )

    @classmethod
    def from_options(cls, options: dict[str, Any], *, explicit: set[str] | None = None,
                     config_file: str | os.PathLike | None = None) -> TrainConfig:
        """Build from command-line options, a configuration file and a resumed run (see `layered_options`).

        Args:
            options: ``{field: value}``; keys that are not fields are ignored,
                `None` values mean "not given".
            explicit: Options given on the command line. `None`: all
                non-`None` options count as given.
            config_file: Path of a ``--config`` file.

        Returns:
            The `TrainConfig`.

        Raises:
            KpipeError: On an unreadable file, an unknown key, an invalid
                value, or code named by a resumed run and not given again.
        """
        resume = options.get("resume")
        if resume is None and config_file is not None:
            resume = load_config_file(config_file).get("resume")
        return cls(**layered_options(options, explicit=explicit, config_file=config_file, resume=resume))


def options() -> Iterator[tuple[str, Any, Option]]:
    """``(name, default, Option)`` of every `TrainConfig` field, in declaration order."""
    for f in dataclasses.fields(TrainConfig):
        yield f.name, f.default, f.metadata[OPTION]


def field_names() -> frozenset[str]:
    """The names of the `TrainConfig` fields."""
    return frozenset(f.name for f in dataclasses.fields(TrainConfig))


def key_aliases() -> dict[str, str]:
    """Configuration-file keys that are command-line spellings of a field: ``{"lr": "learning_rate", ...}``."""
    aliases = {}
    for name, _, option in options():
        for flag in option.flags:
            key = flag.lstrip("-").replace("-", "_")
            if flag.startswith("--") and key != name:
                aliases[key] = name
    return aliases


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ArgumentError(f"No configuration file at {path}. Received: config={str(path)!r}")
    text = path.read_bytes()
    if path.suffix.lower() == ".json":
        try:
            data = loads_json(text)
        except ValueError as e:
            raise ArgumentError(f"{path} is not valid JSON: {e}") from None
    else:
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib  # a dependency on Python < 3.11
        try:
            data = tomllib.loads(text.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ArgumentError(f"{path} is not valid TOML: {e}") from None
    if not isinstance(data, dict):
        raise ArgumentError(f"{path} must hold a table of options (key = value). Received: {type(data).__name__}")
    if isinstance(data.get("train"), dict):  # `[train]`: merged with the top level, never in place of it
        top = {k: v for k, v in data.items() if k != "train"}
        both = sorted(set(top) & set(data["train"]))
        if both:
            raise ArgumentError(f"{path} sets {both[0]!r} both at the top level and under [train]; set it once.")
        data = top | data["train"]
    return data


def load_config_file(path: str | os.PathLike, fields: set[str] | frozenset[str] | None = None) -> dict[str, Any]:
    """Read a TOML or JSON configuration file into ``{field: value}``.

    Args:
        path: A ``.json`` file, or TOML (any other suffix).
        fields: The accepted keys. Defaults to the `TrainConfig` fields.

    Returns:
        The values, keys with ``-`` turned into ``_`` and command-line
        spellings (``lr``) into field names; a run's informational keys
        (``manifest``, ``dataset_fingerprint``, ``kpipe_version``, ``resolved``) dropped.

    Raises:
        ArgumentError: If the file is missing, unreadable, or has an unknown
            key (the message lists the valid ones).
    """
    path = Path(path)
    aliases, fields = key_aliases(), field_names() if fields is None else frozenset(fields)
    data: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in _read(path).items():
        name = str(key).replace("-", "_")
        name = aliases.get(name, name)
        if name in data:
            raise ArgumentError(f"{path} sets {name!r} twice (as {spelled[name]!r} and {str(key)!r}); set it once.")
        data[name], spelled[name] = value, str(key)
    unknown = sorted(k for k in data if k not in fields and k not in INFORMATIONAL_KEYS)
    if unknown:
        raise ArgumentError(
            f"Unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in {path}. "
            f"Valid keys (the `kpipe train` options): {', '.join(sorted(fields))}."
        )
    return {k: v for k, v in data.items() if k in fields}


def _run_options(resume: str | os.PathLike) -> dict[str, Any]:
    run_config = Path(resume) / "config.json"
    if not run_config.is_file():
        raise KpipeError(
            f"Cannot resume {resume}: it has no config.json (is it a kpipe run folder?). "
            f"Received: resume={str(resume)!r}"
        )
    return load_config_file(run_config)


def _refuse_code_from_run(resume: str | os.PathLike, from_run: dict[str, Any], merged: dict[str, Any],
                          trusted: set[str]) -> None:
    """A run folder is data: code it names is imported only if the user names it again."""
    for name in CODE_FIELDS:
        value = from_run.get(name)
        if name in trusted or merged.get(name) != value or not isinstance(value, str) or not is_object_spec(value):
            continue
        flag = "--" + name.replace("_", "-")
        raise ArgumentError(
            f"The run {resume} names code to import: {flag} {value}. kpipe does not run code named by a run "
            f"folder; if you trust it, pass {flag} {value} on the command line."
        )


def layered_options(options: dict[str, Any], *, explicit: set[str] | None = None,
                    config_file: str | os.PathLike | None = None,
                    resume: str | os.PathLike | None = None) -> dict[str, Any]:
    """Merge the configuration sources into `TrainConfig` keyword arguments.

    Args:
        options: Option values (e.g. from click); `None` means "not given".
        explicit: Names of the options given explicitly (on the command line);
            they override the files. `None`: every non-`None` option is explicit.
            Options given but not explicit sit under the files.
        config_file: A ``--config`` file (`load_config_file`).
        resume: A run folder whose ``config.json`` is the base (``--resume``).

    Returns:
        ``{field: value}``.

    Raises:
        ArgumentError: If the resumed run names code (``model``, ``loss``,
            ``step_model`` as ``module:attr``) that neither the command line
            nor the ``--config`` file names.
    """
    fields = field_names()
    given = {k: v for k, v in options.items() if k in fields and v is not None}
    explicit_names = set(given) if explicit is None else {k for k in explicit if k in given}
    from_run = _run_options(resume) if resume is not None else {}
    from_file = load_config_file(config_file) if config_file is not None else {}
    merged = {k: v for k, v in given.items() if k not in explicit_names}  # e.g. click defaults: under the files
    merged |= from_run
    merged |= from_file
    merged |= {k: given[k] for k in explicit_names}
    if resume is not None:
        _refuse_code_from_run(resume, from_run, merged, explicit_names | set(from_file))
        merged["resume"] = str(resume)
    return merged
