"""The ``kpipe`` command line: thin commands over the library.

Each command parses its options, calls one library function and prints a
one-line summary. Library errors (`KpipeError`) become a plain message and
exit code 1; bad option values exit 2 (click's convention). The options of
``kpipe train`` are generated from `kpipe.training.config.TrainConfig`.
Nothing here changes the process outside a running command: warnings are
printed plainly, and TensorFlow's C++ start-up lines filtered out of stderr,
only while a command runs.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
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
    """Turn library errors into `click.ClickException` (message, exit 1, no traceback); warnings print plainly."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():  # restores the process's warning settings when the command ends
            warnings.showwarning = _show_warning
            try:
                return fn(*args, **kwargs)
            except KpipeError as e:
                raise click.ClickException(str(e)) from None

    return wrapper


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as people read them at the command line: no source file, no code line."""
    click.echo(f"Warning: {message}", err=True)


@contextlib.contextmanager
def _tf_noise_filtered():
    """Filter TensorFlow's C++ log lines out of file descriptor 2 while the block runs; pass everything else.

    Set ``TF_CPP_MIN_LOG_LEVEL`` (e.g. 0) to see every line: then nothing is filtered.
    """
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        yield
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
        yield
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kpipe")
def main() -> None:
    """kpipe: raw samples -> prepared dataset -> trained Keras model.

    \b
    kpipe prepare sample_data/digits --out prepared
    kpipe verify prepared/manifest.json
    kpipe train prepared/manifest.json
    """


# ----------------------------------------------------------------- prepare
@main.command()
@click.argument("raw", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="Output folder for data/ and manifest.json.")
@click.option("--layout", type=click.Choice(["auto", "images", "npy", "csv"]), default="auto", show_default=True,
              help="Input layout; auto detects it.")
@click.option("--split", default="0.8,0.1,0.1", show_default=True,
              help="Train,validation,test fractions (stratified).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the split.")
@click.option("--image-size", default=None, metavar="HxW",
              help="Resize images to HEIGHTxWIDTH pixels (default: keep the size of the first image).")
@click.option("--color-mode", type=click.Choice(["grayscale", "rgb", "rgba"]), default=None,
              help="Image channels (default: from the first image).")
@click.option("--label-column", default="label", show_default=True, help="CSV column of the class.")
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
@click.option("--background", type=click.Choice(["white", "black"]), default="white", show_default=True,
              help="What transparent pixels are composited onto for rgb and grayscale (rgba keeps alpha).")
@click.option("--missing", default="auto", show_default=True, metavar="auto|drop-rows|drop-columns|fill=VALUE",
              callback=lambda ctx, param, value: _parse_missing_option(value),
              help="CSV missing values (empty, NA, ?...): auto drops the columns more than half empty, then the "
                   "rows still missing a value.")
@click.option("--nonfinite", type=click.Choice(["skip", "error"]), default="skip", show_default=True,
              help="A sample holding NaN or Inf: skip it (listed in the manifest) or stop.")
@click.option("--duplicates", type=click.Choice(["group", "drop", "error"]), default="group", show_default=True,
              help="Samples of equal content: keep each group in one partition, keep the first only, or stop.")
@click.option("--small-classes", type=click.Choice(["error", "warn"]), default="error", show_default=True,
              help="A class too small for a sample in every partition: stop, or warn and fill train first.")
@click.option("--n-jobs", default=-1, show_default=True, type=int, help="Parallel workers, as joblib (-1: all cores).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@_handle_errors
def prepare(raw: Path, out: Path, **options) -> None:
    """Convert RAW (class folders of images or .npy files, or a .csv) into a prepared dataset.

    Writes OUT/data/<ID>.npy, one file per sample (or OUT/shards/shard-00000.h5, ... with
    --format hdf5), and OUT/manifest.json.
    """
    from kpipe.prepare import prepare as run_prepare

    with contextlib.ExitStack() as stack:
        state: dict = {}

        def on_start(total: int) -> None:
            state["bar"] = stack.enter_context(
                click.progressbar(length=total, label="Converting", file=sys.stderr, show_pos=True)
            )

        def progress(n: int) -> None:
            state["bar"].update(n)

        result = run_prepare(raw, out, **options, progress=progress, on_start=on_start)
    click.echo(result.summary())


def _parse_missing_option(value: str) -> str:
    from kpipe.errors import InputError
    from kpipe.ingest import parse_missing

    try:
        parse_missing(value)
    except InputError as e:
        raise click.BadParameter(str(e)) from None
    return value


# ------------------------------------------------------------------ verify
@main.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout (nothing else), for scripts.")
@click.option("--quick", is_flag=True, help="Check the manifest and the files' existence and sizes only (no reading).")
@_handle_errors
def verify(manifest: Path, as_json: bool, quick: bool) -> None:
    """Check the prepared dataset MANIFEST before training: exit 0 if sound, 1 on any problem.

    Checks labels (integers in range), partitions (each ID in exactly one), every file (exists, size,
    shard sha256), then reads every sample: shape and dtype, per-sample checksums, NaN/Inf, and identical
    samples in different partitions (leakage, with IDs). Prints each problem, then one summary line.
    """
    from kpipe.verify import verify as run_verify

    with contextlib.ExitStack() as stack:
        state: dict = {}

        def on_start(total: int) -> None:
            if not as_json and sys.stderr.isatty():
                state["bar"] = stack.enter_context(
                    click.progressbar(length=total, label="Reading", file=sys.stderr, show_pos=True))

        def progress(n: int) -> None:
            if "bar" in state:
                state["bar"].update(n)

        report = run_verify(manifest, content=not quick, progress=progress, on_start=on_start)
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
@_handle_errors
def convert(manifest: Path, out: Path, **options) -> None:
    """Write the prepared dataset MANIFEST in another storage format (same IDs, labels, partition)."""
    from kpipe.convert import convert as run_convert

    with contextlib.ExitStack() as stack:
        state: dict = {}

        def on_start(total: int) -> None:
            state["bar"] = stack.enter_context(
                click.progressbar(length=total, label="Converting", file=sys.stderr, show_pos=True)
            )

        result = run_convert(manifest, out, **options, progress=lambda n: state["bar"].update(n), on_start=on_start)
    click.echo(result.summary())


# ------------------------------------------------------------------- train
_CLICK_KIND = {"int": int, "float": float, "text": str}


def _click_option(name: str, default, option) -> dict:
    """click keyword arguments for one `TrainConfig` field (its `Option`): every default is `None` ("not given")."""
    kwargs: dict = {"default": None, "help": option.help}
    if default is not None and option.kind not in ("flag", "switch"):
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


def _train_options(command):
    """One click option per `TrainConfig` field, generated from the schema, plus ``--config``."""
    from kpipe.training.config import options

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


@main.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@_train_options
@_handle_errors
def train(manifest: Path, config_file: Path | None, **options) -> None:
    """Train a model on MANIFEST's train partition, validate each epoch, evaluate on test.

    Writes the run folder: model.keras (best by --monitor), history.json, metrics.json,
    config.json, log.csv, curves.png, confusion_matrix.png, checkpoint/ (for --resume).
    Options, the manifest and the run folder are checked before TensorFlow starts.
    """
    from kpipe.manifest import Manifest
    from kpipe.training.config import TrainConfig
    from kpipe.training.preflight import check_run

    explicit = {name for name, value in options.items() if value is not None}
    if options.get("verbose") is None:
        options["verbose"] = 1 if sys.stdout.isatty() else 2  # under a --config file's value
    options = {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}
    config = TrainConfig.from_options(options, explicit=explicit, config_file=config_file)
    loaded = Manifest.load(manifest)
    check_run(loaded, config)  # before TensorFlow's start-up
    with _tf_noise_filtered(), _kpipe_info_to_stderr():
        from kpipe.training.distribute import keep_tensorflow_unloaded
        from kpipe.training.run import train as run_train

        with keep_tensorflow_unloaded():  # on JAX / PyTorch this command never imports TensorFlow
            result = run_train(loaded, config)
    click.echo(result.summary())


if __name__ == "__main__":  # pragma: no cover
    main()
