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
from pathlib import Path

import click

from kpipe import __version__
from kpipe.errors import KpipeError


def _handle_errors(fn):
    """Turn library errors into `click.ClickException` (message, exit 1, no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KpipeError as e:
            raise click.ClickException(str(e)) from None

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
        import tensorflow as tf  # noqa: F401
        import keras  # noqa: F401

        tf.get_logger().setLevel("ERROR")
        tf.config.list_physical_devices()  # device probing logs here too


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kpipe")
def main() -> None:
    """kpipe: raw samples -> prepared dataset -> trained Keras model.

    \b
    kpipe prepare sample_data/digits --out prepared
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
@click.option("--n-jobs", default=-1, show_default=True, type=int, help="Parallel workers, as joblib (-1: all cores).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@_handle_errors
def prepare(raw: Path, out: Path, **options) -> None:
    """Convert RAW (class folders of images or .npy files, or a .csv) into a prepared dataset.

    Writes OUT/data/<ID>.npy, one file per sample, and OUT/manifest.json.
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
@_handle_errors
def train(manifest: Path, out: Path | None, **options) -> None:
    """Train a model on MANIFEST's train partition, validate each epoch, evaluate on test.

    Writes the run folder: model.keras, history.json, metrics.json, config.json.
    """
    from kpipe.manifest import Manifest

    loaded = Manifest.load(manifest)  # fail fast, before TensorFlow's start-up
    import_tensorflow_quietly()
    from kpipe.training import TrainConfig
    from kpipe.training import train as run_train

    if options.get("verbose") is None:
        options["verbose"] = 1 if sys.stdout.isatty() else 2
    config = TrainConfig.from_options(options)
    result = run_train(loaded, config, out=out)
    click.echo(result.summary())


if __name__ == "__main__":  # pragma: no cover
    main()
