"""The ``kpipe`` command line: thin commands over the library.

Each command parses its options, calls one library function and prints a
one-line summary. Library errors (`KpipeError`) become a plain message and
exit code 1; bad option values exit 2 (click's convention). TensorFlow is
imported only by the commands that train, with its C++ start-up logs quieted
unless ``TF_CPP_MIN_LOG_LEVEL`` is set.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings
from pathlib import Path

import click

from kpipe import __version__
from kpipe.errors import KpipeError, kpipe_error_in


def _handle_errors(fn):
    """Turn library errors into `click.ClickException` (message, exit 1, no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KpipeError as e:
            raise click.ClickException(str(e)) from None
        except Exception as e:
            # A kpipe error raised inside TensorFlow (tf.data runs the generator) arrives wrapped.
            recovered = kpipe_error_in(str(e))
            if recovered is None:
                raise
            raise click.ClickException(str(recovered)) from None

    return wrapper


@contextlib.contextmanager
def _stderr_fd_silenced(enabled: bool = True):
    """Send file descriptor 2 to /dev/null (C++ logs printed before absl's init ignore every env var)."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and Keras with the start-up log noise kept out of the way.

    Sets ``TF_CPP_MIN_LOG_LEVEL=2`` (warnings and info off) unless the user set
    it; with the default, the import itself also runs with stderr silenced.
    Set ``TF_CPP_MIN_LOG_LEVEL=0`` to see everything.
    """
    user_set = "TF_CPP_MIN_LOG_LEVEL" in os.environ
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _stderr_fd_silenced(not user_set):
        import keras  # noqa: F401
        import tensorflow as tf  # noqa: F401

        tf.get_logger().setLevel("ERROR")
        tf.config.list_physical_devices()  # device probing logs here too


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as people read them at the command line: no source file, no code line."""
    return f"Warning: {message}\n"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kpipe")
def main() -> None:
    """kpipe: raw samples -> prepared dataset -> trained Keras model.

    \b
    kpipe prepare sample_data/digits --out prepared
    kpipe verify prepared/manifest.json
    kpipe train prepared/manifest.json
    """
    warnings.formatwarning = _format_warning


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
@click.option("--n-jobs", default=-1, show_default=True, type=int,
              help="Parallel workers on this machine, as joblib (-1: all cores; 1: this process only).")
@click.option("--backend", type=click.Choice(["auto", "threads", "loky", "dask"]), default="auto", show_default=True,
              help="Where the work runs: auto picks this process, threads or loky processes from the measured cost "
                   "per sample; dask runs tasks on a Dask cluster (pip install 'kpipe[dask]'; OUT must be on a path "
                   "every worker shares).")
@click.option("--scheduler", default=None, metavar="ADDRESS|auto",
              help="With --backend dask: the scheduler address (tcp://host:8786), or auto (default) for a local "
                   "cluster on 127.0.0.1.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@_handle_errors
def prepare(raw: Path, out: Path, **options) -> None:
    """Convert RAW (class folders of images or .npy files, or a .csv) into a prepared dataset.

    Writes OUT/data/<ID>.npy, one file per sample (or OUT/shards/shard-00000.h5, ... with
    --format hdf5), and OUT/manifest.json.
    """
    from kpipe.prepare import prepare as run_prepare

    if options["scheduler"] is not None and options["backend"] != "dask":
        raise click.BadParameter("--scheduler applies to --backend dask only.", param_hint="--scheduler")
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
@main.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Run folder (default: runs/<time> next to the manifest).")
@click.option("--model", default="default", show_default=True,
              help="default, or a factory module:function / path.py:function(input_shape, num_classes).")
@click.option("--loss", default="sparse_categorical_crossentropy", show_default=True,
              help="Keras loss name, or module:function / path.py:function(y_true, y_pred).")
@click.option("--label-mode", type=click.Choice(["int", "categorical", "binary"]), default=None,
              help="Label encoding (default: from the loss).")
@click.option("--optimizer", default="adam", show_default=True, help="Keras optimizer name.")
@click.option("--learning-rate", "--lr", default=1e-3, show_default=True, type=float)
@click.option("--epochs", default=15, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of initialization, shuffling, dropout.")
@click.option("--rescale", default=None, type=float,
              help="Multiply inputs by this (default: 1/255 for uint8 data, else a Normalization layer).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Threads (or processes) making batches.")
@click.option("--use-multiprocessing", is_flag=True, help="Make batches in processes, not threads.")
@click.option("--max-queue-size", default=10, show_default=True, type=click.IntRange(min=1),
              help="Batches kept ready ahead.")
@click.option("--verbose", type=click.IntRange(0, 2), default=None,
              help="Keras verbosity: 0 silent, 1 progress bar, 2 one line per epoch (default: 1 on a terminal).")
@click.option("--sampling", type=click.Choice(["shuffle", "balanced", "bootstrap", "sequential"]), default=None,
              help="How the train partition is sampled each epoch (default: shuffle).")
@click.option("--balance", type=click.Choice(["undersample", "oversample", "none", "stratified", "balanced"]),
              default=None, help="balanced: undersample (default) | oversample; bootstrap: none | stratified | balanced.")
@click.option("--samples-per-epoch", type=click.IntRange(min=1), default=None,
              help="Samples per epoch for --sampling balanced/bootstrap (default: from --balance).")
@click.option("--target-distribution", default=None, metavar="JSON",
              help='Class shares for --sampling balanced, e.g. \'{"cat": 0.5, "dog": 0.5}\' (default: uniform).')
@click.option("--class-weight", default=None, metavar="balanced|JSON",
              help='balanced (n_samples / (n_classes * count)) or JSON class -> weight, e.g. \'{"7": 2.0}\'.')
@click.option("--condition-weights", default=None, metavar="JSON",
              help='JSON class -> factor multiplying the weight of that class\'s samples.')
@click.option("--sample-weights", "use_sample_weights", is_flag=True,
              help="Multiply by the per-sample weights stored by `kpipe prepare --weight-column/--weights`.")
# --- training loops, losses, run folder (issue 5)
@click.option("--loop", type=click.Choice(["fit", "step", "tape"]), default=None,
              help="fit: model.fit; step: a Model subclass with its own train_step; "
                   "tape: an explicit tf.GradientTape loop (default: fit).")
@click.option("--loss-args", default=None, metavar="JSON",
              help='Arguments of a Keras loss class, e.g. \'{"gamma": 3.0}\' with --loss categorical_focal_crossentropy.')
@click.option("--step-model", default=None, metavar="MODULE:CLASS",
              help="With --loop step: a kpipe.training.KpipeModel subclass, module:Class or path.py:Class.")
@click.option("--clip-norm", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Clip gradients by global norm.")
@click.option("--accumulation-steps", type=click.IntRange(min=1), default=None,
              help="Average the gradients of this many batches per update (default: 1).")
@click.option("--log-every", type=click.IntRange(min=0), default=None,
              help="Write the training loss to RUN/steps.csv every N steps (default: 0, never).")
@click.option("--monitor", default=None, help="Value that picks the best model and drives --patience (default: val_loss).")
@click.option("--patience", type=click.IntRange(min=0), default=None,
              help="Stop after N epochs without improvement of --monitor (default: never).")
@click.option("--tensorboard/--no-tensorboard", default=None,
              help="TensorBoard logs in RUN/tensorboard (default: when tensorboard is installed).")
@click.option("--mixed-precision/--no-mixed-precision", default=None,
              help="Train with the mixed_float16 policy and loss scaling (GPU).")
@click.option("--distribute", type=click.Choice(["auto", "none", "mirrored"]), default=None,
              help="Distribution strategy (default: auto, MirroredStrategy when several GPUs are visible).")
@click.option("--resume", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Continue the run in this folder from its last checkpoint (its config.json is the base).")
@click.option("--overwrite", is_flag=True, default=None, help="Replace the run folder --out if it exists.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="TOML (or JSON) file with one key per option; options given here override it.")
@_handle_errors
def train(manifest: Path, out: Path | None, **options) -> None:
    """Train a model on MANIFEST's train partition, validate each epoch, evaluate on test.

    Writes the run folder: model.keras (best by --monitor), history.json, metrics.json,
    config.json, log.csv, curves.png, confusion_matrix.png, checkpoint/ (for --resume).
    """
    from kpipe.manifest import Manifest

    loaded = Manifest.load(manifest)  # fail fast, before TensorFlow's start-up
    import_tensorflow_quietly()
    from kpipe.training import TrainConfig
    from kpipe.training import train as run_train

    if options.get("verbose") is None:
        options["verbose"] = 1 if sys.stdout.isatty() else 2
    ctx = click.get_current_context()
    explicit = {name for name in [*options, "out"]
                if ctx.get_parameter_source(name) in (click.core.ParameterSource.COMMANDLINE,
                                                      click.core.ParameterSource.ENVIRONMENT)}
    config_file = options.pop("config_file", None)
    options["out"] = out
    config = TrainConfig.from_options(options, explicit=explicit, config_file=config_file)
    result = run_train(loaded, config)
    click.echo(result.summary())


if __name__ == "__main__":  # pragma: no cover
    main()
