"""The ``kpipe`` command line: thin commands over the library.

Each command parses its options, calls one library function and prints a
short summary for people, or with ``--json`` one JSON object on stdout and
nothing else. Library errors (`KpipeError`) become one line naming the options
as typed (`cli_names`) and exit code 1; bad option values exit 2 (click's
convention); Ctrl-C is one line and exit code 130. The options of
``kpipe train`` are generated from `kpipe.training.config.TrainConfig`.
Nothing here changes the process outside a running command: warnings are
printed plainly, and TensorFlow's C++ start-up lines filtered out of stderr,
only while a command runs (after a Ctrl-C, which ends the process, joblib's
messages about its stopped pool stay silenced).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import signal
import sys
import threading
import warnings
from pathlib import Path

import click

from kpipe._version import __version__
from kpipe.errors import KpipeError

# TensorFlow's C++ log lines (absl: "I0000 00:00:17.5 123 file.cc:45] ...", the older
# "2024-01-01 10:00:00.000: I tensorflow/...") and absl's pre-init notice, printed to fd 2
# before any Python setting can stop them; other lines (a real error) pass through.
_TF_NOISE = re.compile(
    r"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\] |\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] "
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called|To enable the following instructions:)"
)


def _handle_errors(fn):
    """Library errors become one line (exit 1) with the command's option names; Ctrl-C one line (exit 130).

    Warnings print plainly while the command runs.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():  # restores the process's warning settings when the command ends
            warnings.showwarning = _show_warning
            try:
                return fn(*args, **kwargs)
            except KeyboardInterrupt as e:
                text = cli_names(str(e), _option_flags()) if isinstance(e, KpipeError) else ""
                click.echo(f"Interrupted{': ' + text if text else ' (Ctrl-C).'}", err=True)
                raise click.exceptions.Exit(130) from None
            except KpipeError as e:
                text = cli_names(str(e), _option_flags())
                if kwargs.get("as_json"):  # --json: scripts read the error on stdout too (the line goes to stderr)
                    _echo_json({"error": text, "error_type": type(e).__name__, "exit_code": 1})
                raise click.ClickException(text) from None
            except ImportError as e:
                if (e.name or "").split(".")[0] not in _BACKEND_MODULES:
                    raise
                backend = os.environ.get("KERAS_BACKEND", "tensorflow")
                raise click.ClickException(
                    f"Keras cannot start with its {backend!r} backend: {e}. Install it (e.g. `pip install "
                    f"{e.name.split('.')[0]}`) or set KERAS_BACKEND to an installed backend (tensorflow, jax, torch)."
                ) from None

    return wrapper


_BACKEND_MODULES = ("keras", "tensorflow", "jax", "jaxlib", "torch")
"""Modules whose absence at import time means the Keras backend asked for is not installed."""


def _option_flags() -> dict[str, tuple[str, bool]]:
    """``{parameter name: (its long flag, is a flag)}`` of the running command's options."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return {}
    flags = {}
    for param in ctx.command.params:
        if isinstance(param, click.Option) and param.name:
            long = [o for o in param.opts if o.startswith("--")]
            flags[param.name] = ((long or param.opts)[0], bool(param.is_flag))
    for library, param in _LIBRARY_SPELLINGS.items():  # the library's argument under another option's name
        if param in flags and library not in flags:
            flags[library] = flags[param]
    return flags


_LIBRARY_SPELLINGS = {"format": "to"}
"""Library arguments whose option has another name: ``convert(format=...)`` is ``kpipe convert --to``."""


_ASSIGNMENT = re.compile(r"(?<![\w.-])([a-z_][a-z0-9_]*)=('(?:[^'\\]|\\.)*'|\"[^\"]*\"|[^\s,;)`]+)")
_NAME = re.compile(r"`([a-z_][a-z0-9_]*)`")


def cli_names(message: str, flags: dict[str, tuple[str, bool]]) -> str:
    """Python spellings of options in ``message`` written as on the command line.

    ``label_mode='binary'`` becomes ``--label-mode binary``, `` `batch_size` `` becomes `` `--batch-size` ``,
    ``Received: monitor='x'`` becomes ``Received: --monitor x``; names that are not options of the command
    are left alone.

    Args:
        message: The error message.
        flags: ``{parameter name: (flag, is a boolean flag)}`` (`_option_flags`).
    """
    def assignment(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        if name not in flags:
            return match.group(0)
        flag, boolean = flags[name]
        if value[:1] in "'\"" and value[-1:] == value[:1]:
            value = value[1:-1]
        if boolean:
            return flag if value == "True" else f"no {flag}"
        return f"{flag} (not given)" if value == "None" else f"{flag} {value}"

    message = _ASSIGNMENT.sub(assignment, message)
    return _NAME.sub(lambda m: f"`{flags[m.group(1)][0]}`" if m.group(1) in flags else m.group(0), message)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as people read them at the command line: no source file, no code line."""
    click.echo(f"Warning: {message}", err=True)


@contextlib.contextmanager
def _tf_noise_filtered():
    """Filter TensorFlow's C++ log lines out of file descriptor 2 while the block runs; pass everything else.

    Set ``TF_CPP_MIN_LOG_LEVEL`` (e.g. 0) to see every line: then nothing is filtered.

    Yields:
        The file descriptor of the real stderr, for what must reach it without Python's help (`faulthandler`).
    """
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        yield 2
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"  # TensorFlow reads it at import; info and warnings off
    sys.stderr.flush()
    saved, (read_end, write_end) = os.dup(2), os.pipe()

    def forward() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for raw in pipe:
                if not _TF_NOISE.match(raw.decode("utf-8", "replace")):
                    os.write(saved, raw)

    thread = threading.Thread(target=forward, name="kpipe-stderr-filter", daemon=True)
    thread.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield saved
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the thread drains it and stops
        thread.join(timeout=5)
        os.close(saved)
        del os.environ["TF_CPP_MIN_LOG_LEVEL"]


@contextlib.contextmanager
def _kpipe_info_to_stderr():
    """Print kpipe's INFO log lines (e.g. the label mode chosen for a custom loss) while a command runs."""
    logger = logging.getLogger("kpipe")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def _shielded(fn, cancel: threading.Event, **kwargs):
    """Run ``fn(**kwargs)`` so that Ctrl-C stops it cleanly, worker processes included.

    ``fn`` runs in a thread started with SIGINT blocked: the worker processes it starts (joblib's) inherit the
    block, so the terminal's Ctrl-C never reaches them half-started (a traceback per worker). The main thread
    takes Ctrl-C, sets ``cancel`` (``fn``'s progress callback raises `KeyboardInterrupt` at its next call, so
    ``fn`` cleans up as on any error) and waits for it, then raises `KeyboardInterrupt`.
    """
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no signal masks
        return fn(**kwargs)
    from multiprocessing import resource_tracker

    # Started here first: Python 3.11's tracker start unblocks SIGINT in the thread that starts it.
    resource_tracker.ensure_running()
    outcome: dict = {}
    done = threading.Event()  # not Thread.join: a join interrupted by Ctrl-C can mark a running thread stopped

    def target() -> None:
        try:
            outcome["value"] = fn(**kwargs)
        except BaseException as e:  # handed to the main thread
            outcome["error"] = e
        finally:
            done.set()

    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        threading.Thread(target=target, name="kpipe-command", daemon=True).start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    try:
        while not done.wait(0.1):
            pass
    except KeyboardInterrupt:
        # What joblib says while its pool stops (callbacks refused, tasks cancelled) is not for the user:
        # silenced for the rest of this process, which ends.
        logging.getLogger("concurrent.futures").disabled = True
        warnings.simplefilter("ignore")
        cancel.set()  # the work stops at its next progress call and cleans up (its staging folder) as on an error
        done.wait(timeout=30)
        raise KeyboardInterrupt from None
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@contextlib.contextmanager
def _progress(label: str, *, show: bool, cancel: threading.Event):
    """``(on_start, progress)`` callbacks drawing a click progress bar on stderr (when ``show``); both stop the
    work with `KeyboardInterrupt` once ``cancel`` is set (see `_shielded`)."""
    with contextlib.ExitStack() as stack:
        state: dict = {}

        def on_start(total: int) -> None:
            if cancel.is_set():
                raise KeyboardInterrupt
            if show:
                state["bar"] = stack.enter_context(
                    click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True))

        def progress(n: int) -> None:
            if cancel.is_set():
                raise KeyboardInterrupt
            if "bar" in state:
                state["bar"].update(n)

        yield on_start, progress


def _echo_json(value) -> None:
    click.echo(json.dumps(value, indent=1, default=str))


_JSON_HELP = ("Print one JSON object on stdout (nothing else), for scripts; on an error, "
              '{"error": ..., "error_type": ..., "exit_code": 1}.')


class _Group(click.Group):
    """Commands listed in the order of the work (prepare, verify, inspect, train, evaluate, predict, convert);
    Ctrl-C while a command's options are read is one line and exit 130, as during the command."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        order = ["prepare", "verify", "inspect", "train", "evaluate", "predict", "convert"]
        return sorted(self.commands, key=lambda c: (order.index(c) if c in order else len(order), c))

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("Interrupted (Ctrl-C).", err=True)
            raise click.exceptions.Exit(130) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kpipe")
def main() -> None:
    """kpipe: raw samples -> prepared dataset -> trained Keras model -> predictions.

    \b
    kpipe prepare sample_data/digits --out prepared
    kpipe inspect prepared/manifest.json
    kpipe train prepared/manifest.json --out runs/digits
    kpipe evaluate runs/digits --partition validation
    kpipe predict runs/digits sample_data/digits/3/digit_0003.png
    """


# ----------------------------------------------------------------- prepare
def _checked(check):
    """A click callback running the library's own check of an option (``check(value)``), so that a bad value
    is a usage error (exit 2) named as typed, before any work; the value is passed on as given."""

    def callback(ctx: click.Context, param: click.Parameter, value):
        if value is None:
            return value
        try:
            check(value)
        except KpipeError as e:
            flags = {param.name: ((param.opts[0] if param.opts else param.name), False)}
            raise click.BadParameter(cli_names(str(e), flags), ctx=ctx, param=param) from None
        return value

    return callback


def _check_split(value: str) -> None:
    from kpipe.split import parse_split

    parse_split(value)


def _check_image_size(value: str) -> None:
    from kpipe.prepare import parse_image_size

    parse_image_size(value)


def _check_seed(value: int) -> None:
    from kpipe._validation import check_seed

    check_seed(value)


def _check_n_jobs(value: int) -> None:
    from kpipe._validation import check_n_jobs

    check_n_jobs(value)


@main.command()
@click.argument("raw", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="Output folder for data/ and manifest.json.")
@click.option("--layout", type=click.Choice(["auto", "images", "npy", "csv"]), default="auto", show_default=True,
              help="Input layout; auto detects it.")
@click.option("--split", default="0.8,0.1,0.1", show_default=True, callback=_checked(_check_split),
              help="Train,validation,test fractions (stratified).")
@click.option("--seed", default=0, show_default=True, type=int, callback=_checked(_check_seed),
              help="Seed of the split (an integer in [0, 2**64)).")
@click.option("--image-size", default=None, metavar="HxW", callback=_checked(_check_image_size),
              help="Resize images to HEIGHTxWIDTH pixels (default: keep the size of the first image).")
@click.option("--color-mode", type=click.Choice(["grayscale", "rgb", "rgba"]), default=None,
              help="Image channels (default: from the first image).")
@click.option("--label-column", default=None, help="CSV column of the class.  [default: label]")
@click.option("--id-column", default=None, help="CSV column of sample IDs (default: row numbers).")
@click.option("--format", "format", type=click.Choice(["npy", "hdf5"]), default="npy", show_default=True,
              help="Storage: one .npy file per sample, or HDF5 shards.")
@click.option("--shard-size", type=click.IntRange(min=1), default=None,
              help="Samples per HDF5 shard (default: about 1 GiB of data per shard).")
@click.option("--compression", type=click.Choice(["none", "gzip", "lzf"]), default="none", show_default=True,
              help="HDF5 compression; none is the fastest to read (memory-mapped).")
@click.option("--weight-column", default=None,
              help="CSV column of per-sample weights (stored in the manifest, not a feature).")
@click.option("--weights", "weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="File of per-sample weights: CSV rows ID,weight (or a JSON object), stored in the manifest.")
@click.option("--dtype", type=click.Choice(["auto", "uint8", "uint16", "float32"]), default="auto", show_default=True,
              help="Image dtype; auto: uint16 for 16-bit images, float32 for float images, else uint8. Never "
                   "scaled per image: 16->8 bits is v >> 8, 8->16 bits v * 257.")
@click.option("--background", type=click.Choice(["white", "black"]), default=None,
              help="What transparent pixels are composited onto for rgb and grayscale (rgba keeps alpha).  "
                   "[default: white]")
@click.option("--missing", default=None, metavar="auto|drop-rows|drop-columns|fill=VALUE",
              callback=lambda ctx, param, value: _parse_missing_option(value),
              help="CSV missing values (empty, NA, ?...): auto drops the columns more than half empty, then the "
                   "rows still missing a value.  [default: auto]")
@click.option("--nonfinite", type=click.Choice(["skip", "error"]), default="skip", show_default=True,
              help="A sample holding NaN or Inf: skip it (listed in the manifest) or stop.")
@click.option("--duplicates", type=click.Choice(["group", "drop", "error"]), default="group", show_default=True,
              help="Samples of equal content: keep each group in one partition, keep the first only, or stop.")
@click.option("--small-classes", type=click.Choice(["error", "warn"]), default="error", show_default=True,
              help="A class too small for a sample in every partition: stop, or warn and fill train first.")
@click.option("--n-jobs", default=-1, show_default=True, type=int, callback=_checked(_check_n_jobs),
              help="Parallel workers on this machine, as joblib (-1: all cores; 1: this process only).")
@click.option("--backend", type=click.Choice(["auto", "threads", "loky", "dask"]), default="auto", show_default=True,
              help="Where the work runs: auto picks this process, threads or loky processes from the measured cost "
                   "per sample; dask runs tasks on a Dask cluster (pip install 'kpipe[dask]'; OUT must be on a path "
                   "every worker shares).")
@click.option("--scheduler", default=None, metavar="ADDRESS|auto",
              help="With --backend dask: the scheduler address (tcp://host:8786), or auto (default) for a local "
                   "cluster on 127.0.0.1.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@_handle_errors
def prepare(raw: Path, out: Path, as_json: bool, **options) -> None:
    """Convert RAW (class folders of images or .npy files, or a .csv) into a prepared dataset.

    Writes OUT/data/<ID>.npy, one file per sample (or OUT/shards/shard-00000.h5, ... with
    --format hdf5), and OUT/manifest.json; prints the counts per class and partition and the
    imbalance ratio.

    \b
    Examples:
      kpipe prepare sample_data/digits --out prepared --overwrite
      kpipe prepare photos/ --out prepared --image-size 64x64 --color-mode rgb --format hdf5
      kpipe prepare table.csv --out prepared_csv --label-column species --missing drop-rows
    """
    from kpipe.prepare import prepare as run_prepare

    if options["scheduler"] is not None and options["backend"] != "dask":
        raise click.BadParameter("--scheduler applies to --backend dask only.", param_hint="--scheduler")
    cancel = threading.Event()
    with _progress("Converting", show=not as_json and sys.stderr.isatty(), cancel=cancel) as (on_start, progress):
        result = _shielded(run_prepare, cancel, raw=raw, out=out, **options, progress=progress, on_start=on_start)
    _echo_json(result.to_dict()) if as_json else click.echo(result.summary())


def _parse_missing_option(value: str | None) -> str | None:
    from kpipe.errors import InputError
    from kpipe.ingest import parse_missing

    if value is None:
        return None
    try:
        parse_missing(value)
    except InputError as e:
        raise click.BadParameter(str(e)) from None
    return value


# ------------------------------------------------------------------ verify
@main.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.option("--quick", is_flag=True, help="Check the manifest and the files' existence and sizes only (no reading).")
@_handle_errors
def verify(manifest: Path, as_json: bool, quick: bool) -> None:
    """Check the prepared dataset MANIFEST before training: exit 0 if sound, 1 on any problem.

    Checks labels (integers in range), partitions (each ID in exactly one), every file (exists, size,
    shard sha256), then reads every sample: shape and dtype, per-sample checksums, NaN/Inf, and identical
    samples in different partitions (leakage, with IDs). Prints each problem, then one summary line.

    \b
    Examples:
      kpipe verify prepared/manifest.json
      kpipe verify prepared/manifest.json --quick
      kpipe verify prepared/manifest.json --json > report.json
    """
    from kpipe.verify import verify as run_verify

    cancel = threading.Event()
    with _progress("Reading", show=not as_json and sys.stderr.isatty(), cancel=cancel) as (on_start, progress):
        report = _shielded(run_verify, cancel, manifest=manifest, content=not quick, progress=progress,
                           on_start=on_start)
    if as_json:
        click.echo(report.to_json())
    else:
        for problem in report.problems[:50]:
            ids = f" [IDs: {', '.join(problem.ids)}{', ...' if problem.num_ids > len(problem.ids) else ''}]" \
                if problem.ids else ""
            click.echo(f"Problem ({problem.kind}): {problem.message}{ids}")
        if len(report.problems) > 50:
            click.echo(f"... and {len(report.problems) - 50} more problems (see --json)")
        click.echo(report.summary())
    if not report.ok:
        sys.exit(1)


# ----------------------------------------------------------------- inspect
@main.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for class_counts.png and samples.png (default: next to the manifest).")
@click.option("--samples-per-class", type=click.IntRange(0, 50), default=6, show_default=True,
              help="Samples per class drawn in samples.png (image data).")
@click.option("--no-figures", is_flag=True, help="Print only; draw no figure.")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@_handle_errors
def inspect(manifest: Path, out: Path | None, samples_per_class: int, no_figures: bool, as_json: bool) -> None:
    """Describe the prepared dataset MANIFEST: classes, counts per partition, imbalance, samples, skipped inputs.

    Prints the class x partition table, the imbalance ratio (largest / smallest class), the sample shape,
    dtype and storage size, and the inputs prepare skipped grouped by kind; draws class_counts.png (a bar
    per class and partition) and samples.png (a few samples per class, image data).

    \b
    Examples:
      kpipe inspect prepared/manifest.json
      kpipe inspect prepared/manifest.json --out figures --samples-per-class 10
      kpipe inspect prepared/manifest.json --json --no-figures
    """
    from kpipe.inspection import inspect_dataset

    report = inspect_dataset(manifest, out=out, samples_per_class=samples_per_class, figures=not no_figures)
    _echo_json(report.to_dict()) if as_json else click.echo(report.summary())


# ----------------------------------------------------------------- convert
@main.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--to", "to", type=click.Choice(["npy", "hdf5"]), required=True, help="Target storage format.")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--shard-size", type=click.IntRange(min=1), default=None,
              help="Samples per HDF5 shard (default: about 1 GiB of data per shard).")
@click.option("--compression", type=click.Choice(["none", "gzip", "lzf"]), default="none", show_default=True,
              help="HDF5 compression.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@_handle_errors
def convert(manifest: Path, out: Path, as_json: bool, **options) -> None:
    """Write the prepared dataset MANIFEST in another storage format (same IDs, labels, partition).

    \b
    Examples:
      kpipe convert prepared/manifest.json --to hdf5 --out prepared_h5
      kpipe convert prepared/manifest.json --to hdf5 --out prepared_h5 --compression lzf --overwrite
      kpipe convert prepared_h5/manifest.json --to npy --out prepared_npy
    """
    from kpipe.convert import convert as run_convert

    cancel = threading.Event()
    with _progress("Converting", show=not as_json and sys.stderr.isatty(), cancel=cancel) as (on_start, progress):
        result = _shielded(run_convert, cancel, manifest=manifest, out=out, **options, progress=progress,
                           on_start=on_start)
    if as_json:
        m = result.manifest
        _echo_json({"manifest": str(m.path), "format": (m.storage or {}).get("format"),
                    "num_samples": m.num_samples, "summary": result.summary()})
    else:
        click.echo(result.summary())


# ------------------------------------------------------------------- train
_CLICK_KIND = {"int": int, "float": float, "text": str}


def _click_option(name: str, default, option) -> dict:
    """click keyword arguments for one `TrainConfig` field (its `Option`): every default is `None` ("not given")."""
    kwargs: dict = {"default": None, "help": option.help}
    if default not in (None, ()) and option.kind not in ("flag", "switch"):
        kwargs["help"] += f"  [default: {default}]"
    if option.choices is not None:
        kwargs["type"] = click.Choice(option.choices)
    elif option.kind == "int" and (option.minimum is not None or option.maximum is not None):
        kwargs["type"] = click.IntRange(min=option.minimum, max=option.maximum)
    elif option.kind == "float" and option.minimum is not None:
        kwargs["type"] = click.FloatRange(min=option.minimum, min_open=option.min_open)
    elif option.kind in ("path", "dir"):
        kwargs["type"] = click.Path(path_type=Path, exists=option.kind == "dir", file_okay=option.kind != "dir")
    elif option.kind == "flag":
        kwargs["is_flag"] = True
    elif option.kind != "switch":
        kwargs["type"] = _CLICK_KIND[option.kind]
    if option.metavar:
        kwargs["metavar"] = option.metavar
    return kwargs


class _GroupedOptions(click.Command):
    """``--help`` lists the options of `kpipe.training.config.TrainConfig` by group (data, model and loss...)."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from kpipe.training.config import GROUPS, options

        group_of = {name: option.group for name, _, option in options()}
        sections: dict[str, list] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(group_of.get(param.name, "other"), []).append(record)
        for group in (*GROUPS, "other"):
            if sections.get(group):
                with formatter.section(f"{group.capitalize()} options"):
                    formatter.write_dl(sections[group])


def _train_options(command):
    """One click option per `TrainConfig` field, generated from the schema, plus ``--config`` and ``--json``."""
    from kpipe.training.config import options

    command = click.option("--json", "as_json", is_flag=True, help=_JSON_HELP + " Keras' progress goes to "
                           "stderr.")(command)
    command = click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                           default=None, help="TOML (or JSON) file with one key per option; options given here "
                                              "override it.")(command)
    for name, default, option in reversed(list(options())):
        if not option.cli:
            continue
        flag = "--" + name.replace("_", "-")
        decls = option.flags or (f"{flag}/--no-{flag[2:]}" if option.kind == "switch" else flag,)
        command = click.option(*decls, name, **_click_option(name, default, option))(command)
    return command


@main.command(cls=_GroupedOptions)
@click.argument("manifest", type=click.Path(path_type=Path), required=False)
@_train_options
@_handle_errors
def train(manifest: Path | None, config_file: Path | None, as_json: bool, **options) -> None:
    """Train a model on MANIFEST's train partition, validate each epoch, evaluate on test.

    Writes the run folder: model.keras (the best epoch by --monitor, preprocessing included: it takes
    samples as prepare wrote them), metrics.json, history.json, config.json, log.csv, curves.png,
    confusion_matrix.png, checkpoint/ (for --resume). Prints accuracy, macro-F1, balanced accuracy and the
    worst class's recall, the kept epoch and why training stopped. Options, the manifest and the run
    folder are checked before TensorFlow starts. With --resume RUN, MANIFEST may be left out.

    \b
    Examples:
      kpipe train prepared/manifest.json --out runs/digits --overwrite
      kpipe train prepared/manifest.json --sampling balanced --metrics auc,f1 --monitor val_f1 --patience 5
      kpipe train --resume runs/digits --epochs 30
    """
    from kpipe.manifest import Manifest
    from kpipe.training.config import TrainConfig
    from kpipe.training.preflight import check_run

    explicit = {name for name, value in options.items() if value is not None}
    if options.get("verbose") is None:
        options["verbose"] = 1 if sys.stdout.isatty() and not as_json else 2  # under a --config file's value
    options = {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}
    config = TrainConfig.from_options(options, explicit=explicit, config_file=config_file)
    loaded = Manifest.load(_train_manifest(manifest, config.resume))
    with warnings.catch_warnings():  # its warnings come once, from train()'s own check_run
        warnings.simplefilter("ignore")
        check_run(loaded, config)  # errors before TensorFlow's start-up
    with _tf_noise_filtered() as stderr_fd, _kpipe_info_to_stderr(), contextlib.redirect_stdout(
            sys.stderr if as_json else sys.stdout):
        from kpipe.training.distribute import keep_tensorflow_unloaded
        from kpipe.training.rendezvous import reporting_to
        from kpipe.training.run import train as run_train

        with keep_tensorflow_unloaded(), reporting_to(stderr_fd):  # on JAX / PyTorch TensorFlow is never imported
            result = run_train(loaded, config)
    _echo_json(result.to_dict()) if as_json else click.echo(result.summary())


def _train_manifest(manifest: Path | None, resume: str | None) -> Path:
    """MANIFEST, or the one a resumed run recorded."""
    if manifest is not None:
        return manifest
    if resume is None:
        raise click.UsageError("Missing argument 'MANIFEST' (it may be left out only with --resume RUN).")
    from kpipe.training.run_folder import RunFolder

    recorded = RunFolder(resume).read_config().get("manifest")
    if not recorded:
        raise click.UsageError(f"The run {resume} does not record its manifest: give MANIFEST.")
    if not Path(recorded).is_file():
        raise click.UsageError(f"The run {resume} was trained on {recorded}, which is not there any more (moved or "
                               "deleted): give the dataset's manifest as MANIFEST.")
    return Path(recorded)


# ---------------------------------------------------------------- evaluate
@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--manifest", type=click.Path(path_type=Path), default=None,
              help="The dataset (default: the one the run was trained on, recorded in its config.json).")
@click.option("--partition", type=click.Choice(["test", "validation", "train"]), default=None,
              help="Partition to evaluate (default: test, else validation).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Default: the run's.")
@click.option("--loss", default=None, help="Loss to compute when the run's names code (module:function).")
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@_handle_errors
def evaluate(run: Path, manifest: Path | None, partition: str | None, batch_size: int | None, loss: str | None,
             as_json: bool) -> None:
    """Evaluate the run folder RUN's model.keras on a partition; write its metrics and confusion matrix.

    The run's own evaluation (test, else validation) rewrites metrics.json and confusion_matrix.png
    (also for a run whose final evaluation failed); another partition writes metrics-<partition>.json
    and confusion_matrix-<partition>.png.

    \b
    Examples:
      kpipe evaluate runs/digits
      kpipe evaluate runs/digits --partition validation
      kpipe evaluate runs/digits --manifest moved/prepared/manifest.json --json
    """
    with _tf_noise_filtered():
        from kpipe.training.evaluate import evaluate_run

        result = evaluate_run(run, manifest=manifest, partition=partition, batch_size=batch_size, loss=loss)
    _echo_json(result.to_dict()) if as_json else click.echo(result.summary())


# ----------------------------------------------------------------- predict
def _check_out_suffix(ctx, param, value: Path | None) -> Path | None:
    if value is not None and value.suffix.lower() not in (".csv", ".json"):
        raise click.BadParameter(f"the file must end in .csv or .json. Received: {value}")
    return value


@main.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              callback=_check_out_suffix, help="Write the predictions to FILE.csv or FILE.json (default: CSV on "
                                               "stdout).")
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="Report the K most probable classes instead of every class's probability.")
@click.option("--manifest", type=click.Path(path_type=Path), default=None,
              help="The dataset, for a run that does not record how its inputs were read (older runs).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing --out file, if it is a predictions file kpipe wrote (never another file).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@_handle_errors
def predict(run: Path, inputs: tuple[Path, ...], out: Path | None, overwrite: bool, top_k: int | None,
            manifest: Path | None, batch_size: int, as_json: bool) -> None:
    """Predict the class of each INPUT with the run folder RUN's model.keras.

    INPUT: image files, folders (read recursively), .npy files (one sample, or a stack of samples) or a
    CSV file (one input per row), read with the rules the run's dataset was prepared with (image size,
    colour mode, dtype, CSV feature columns). One row per input: the class, its probability and every
    class's probability (or the --top-k classes); an input that cannot be read gets an error on its row
    and the others are still predicted (exit 1 only if none could be).

    \b
    Examples:
      kpipe predict runs/digits sample_data/digits/3/digit_0003.png
      kpipe predict runs/digits new_scans/ --top-k 3 --out predictions.csv
      kpipe predict runs/table new_rows.csv --json
    """
    with _tf_noise_filtered():
        from kpipe.training.predict import check_out
        from kpipe.training.predict import predict as run_predict

        if out is not None:
            check_out(out, overwrite=overwrite, inputs=inputs)  # before the work, not after it
        result = run_predict(run, inputs, top_k=top_k, manifest=manifest, batch_size=batch_size)
    if out is not None:
        from kpipe.training.run_folder import writing

        with writing(out):
            result.write(out, overwrite=overwrite)
    if as_json:
        _echo_json(result.to_dict())
    elif out is not None:
        click.echo(f"{result.summary()} -> {out}")
    else:
        click.echo(result.to_csv(), nl=False)
    if result.num_errors:
        first = next(p for p in result.predictions if p.error)
        click.echo(f"Warning: {result.num_errors} of {len(result.predictions)} inputs could not be read "
                   f"(e.g. {first.input}: {first.error}).", err=True)
    if result.num_errors == len(result.predictions):
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
