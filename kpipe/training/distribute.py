"""The Keras backend of a run: its check, seeding, distribution strategy and mixed precision.

Everything here that is TensorFlow's is imported only when the backend is
``tensorflow``: with ``KERAS_BACKEND=jax`` or ``torch`` a run never imports
TensorFlow (`set_random_seed` seeds the backend without
`keras.utils.set_random_seed`, which imports TensorFlow whenever it is installed).

The strategy hook is `get_strategy`: on TensorFlow, ``"auto"`` (the default)
gives the default strategy (one device) unless several GPUs are visible, then
`tf.distribute.MirroredStrategy` over all of them (data parallel: each batch
is split across the GPUs, gradients are all-reduced). ``"none"`` forces one
device, ``"mirrored"`` asks for MirroredStrategy. A `tf.distribute.Strategy`
instance can also be passed to `kpipe.training.train(..., strategy=...)`.
On JAX and PyTorch a run uses one device (`SingleDevice`); ``"mirrored"`` is
refused before any work starts.

The model, its optimizer and metrics are created under ``strategy.scope()``;
`fit` and the ``step`` loop then run distributed by Keras. The ``tape`` loop
runs on one device and refuses a strategy with more than one replica, except:

``"multi-worker"``: one process per worker, each running the same ``kpipe
train`` command with its own ``TF_CONFIG``. On TensorFlow it is
`tf.distribute.MultiWorkerMirroredStrategy` with the ``tape`` loop (its steps
run in `strategy.run`, one replica per worker process, each reading its
slice of every global batch from a sharded `kpipe.DataGenerator`);
`check_multi_worker` refuses, in one line and before any worker waits for
another, what does not run or would not be exact: ``fit`` and ``step``
(Keras 3's `fit` fails under that strategy, `KERAS_MULTI_WORKER_ISSUE`),
``--clip-norm`` and ``--accumulation-steps`` (Keras clips and accumulates each
replica's gradients before they are summed), and a missing ``TF_CONFIG``.
The chief (`is_chief`: worker 0) writes the run folder.

``"data-parallel"``: on JAX, `keras.distribution.DataParallel` over the
devices of one process (`DataParallelDevices`), with ``--loop fit``: the model's
variables are replicated on every device, each batch is split among them, and
its loss and gradients are those of the whole batch. Every batch must split
evenly: `check_data_parallel` asks for a batch size that is a multiple of the
devices ``d``, and the generators pad the last, partial batch of an epoch to a
multiple of ``d`` with zero-weight rows (``pad_to_multiple``). So that the
padding counts for nothing, the loss is reduced by the weights' sum
(`data_parallel_loss`) and the metrics are weighted (``weighted_metrics``).
What is not exact: Keras' logged ``loss`` / ``val_loss`` average the batches'
losses weighted by their rows, padding included, so the epoch's last batch
weighs up to ``d - 1`` rows more than in one process. Refused: other backends
and loops, several processes, and sample or class weights (they would weight
the metrics).
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from kpipe._shards import shard_from_environment
from kpipe._validation import check_text_choice
from kpipe.errors import ArgumentError

if TYPE_CHECKING:
    import tensorflow as tf

STRATEGIES = ("auto", "none", "mirrored", "multi-worker", "data-parallel")

KERAS_MULTI_WORKER_ISSUE = "https://github.com/keras-team/keras/issues/20585"
"""Keras 3's `fit` under `tf.distribute.MultiWorkerMirroredStrategy` fails (open upstream issue)."""

BACKENDS = ("tensorflow", "jax", "torch")
"""The Keras backends kpipe trains on: every loop of `kpipe.training.loops.LOOPS` runs on each."""


def check_backend() -> str:
    """The Keras backend in use (``keras.backend.backend()``), if kpipe can train on it.

    Raises:
        ArgumentError: On a backend that cannot train (``numpy``, ``openvino``: no gradients).
    """
    backend = keras.backend.backend()
    if backend not in BACKENDS:
        raise ArgumentError(
            f"kpipe trains on the Keras backends {', '.join(BACKENDS)} (every loop: fit, step, tape); the "
            f"{backend} backend computes no gradients. Set KERAS_BACKEND to one of them. Received: backend={backend!r}"
        )
    return backend


def set_random_seed(seed: int) -> None:
    """Seed Python's `random`, NumPy's global generator and the backend's, as `keras.utils.set_random_seed`.

    On TensorFlow this is `keras.utils.set_random_seed` (which also seeds
    TensorFlow and resets Keras' global `SeedGenerator`). On JAX and PyTorch
    TensorFlow is left alone (Keras' function would import it): Python and
    NumPy are seeded, and ``torch.manual_seed`` on PyTorch. Layers draw their
    seeds from Python's `random` (Keras' ``make_default_seed``), so the
    models a run builds are the same on every run of the same seed.
    """
    if keras.backend.backend() == "tensorflow":
        keras.utils.set_random_seed(seed)
        return
    random.seed(seed)
    np.random.seed(seed)
    if keras.backend.backend() == "torch":
        import torch

        torch.manual_seed(seed)


class _TensorFlowAbsent:
    """A `sys.meta_path` finder under which ``import tensorflow`` fails as if it were not installed."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "tensorflow":
            raise ModuleNotFoundError("kpipe keeps TensorFlow unloaded while it saves a model on another Keras "
                                      "backend", name=name)


_keep_tensorflow_unloaded = [False]  # set by `keep_tensorflow_unloaded` for the command that runs


@contextlib.contextmanager
def keep_tensorflow_unloaded() -> Iterator[None]:
    """For the rest of a process's life (``kpipe train``): `saving_without_tensorflow` hides an unloaded TensorFlow.

    Keras' serialization (``model.save``) asks whether TensorFlow is
    installed (``tf.available`` in ``keras/src/saving/serialization_lib.py``,
    to recognise `tf.TensorShape` objects), which imports it, and remembers
    the answer for the rest of the process. While TensorFlow is not loaded,
    no object can be a TensorFlow one, so answering "absent" saves the same
    file; but Keras then treats TensorFlow as not installed in this process,
    which only a process about to end (a command) may accept. The Python API
    (`kpipe.training.train`) leaves Keras' probe alone.
    """
    _keep_tensorflow_unloaded[0] = True
    try:
        yield
    finally:
        _keep_tensorflow_unloaded[0] = False


@contextlib.contextmanager
def saving_without_tensorflow() -> Iterator[None]:
    """Within `keep_tensorflow_unloaded`, on JAX / PyTorch with TensorFlow not loaded: ``import tensorflow`` fails.

    Anything else (the TensorFlow backend, TensorFlow loaded already, the
    Python API) runs the block as it is.
    """
    hide = (_keep_tensorflow_unloaded[0] and keras.backend.backend() != "tensorflow"
            and "tensorflow" not in sys.modules)
    if not hide:
        yield
        return
    finder = _TensorFlowAbsent()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


class SingleDevice:
    """The strategy of a run on JAX or PyTorch: one device, ``scope()`` does nothing.

    It has the two members of `tf.distribute.Strategy` a run uses:
    ``scope()`` and ``num_replicas_in_sync`` (1).
    """

    num_replicas_in_sync = 1

    def scope(self) -> contextlib.AbstractContextManager:
        """A context that changes nothing (JAX and PyTorch place variables on the default device)."""
        return contextlib.nullcontext()


class DataParallelDevices:
    """The strategy of a ``--distribute data-parallel`` run on JAX: `keras.distribution.DataParallel` on its devices.

    It has the two members of `tf.distribute.Strategy` a run uses:
    ``scope()`` (the distribution's: variables made in it are replicated on
    every device, and `fit` run in it splits each batch among them) and
    ``num_replicas_in_sync`` (the devices).

    Args:
        devices: The devices, ``keras.distribution.list_devices()`` by default.
    """

    def __init__(self, devices: list[str] | None = None) -> None:
        self.devices = list(devices or keras.distribution.list_devices())
        self.distribution = keras.distribution.DataParallel(devices=self.devices, auto_shard_dataset=False)
        self.num_replicas_in_sync = len(self.devices)

    def scope(self) -> contextlib.AbstractContextManager:
        """`keras.distribution.DataParallel`'s scope."""
        return self.distribution.scope()


def check_data_parallel(distribute: Any, loop: str, *, batch_size: int | None, weighted: bool) -> None:
    """Refuse a ``--distribute data-parallel`` run that cannot run or would not be exact (see the module docstring).

    Args:
        distribute: The run's ``distribute`` (only ``"data-parallel"`` is checked).
        loop: The run's loop name.
        batch_size: The global batch size (`None`: not checked).
        weighted: True if the train batches carry sample or class weights.

    Raises:
        ArgumentError: Off JAX, with another loop than ``fit``, in a job of
            several processes, with a batch size that the devices do not
            divide, or with weights.
    """
    if distribute != "data-parallel":
        return
    backend = check_backend()
    received = f"Received: distribute='data-parallel', backend={backend!r}, loop={loop!r}"
    if backend != "jax" or loop != "fit":
        raise ArgumentError(
            "`distribute` data-parallel is keras.distribution.DataParallel with --loop fit on the JAX backend "
            "(KERAS_BACKEND=jax); on TensorFlow use --distribute mirrored or multi-worker. " + received
        )
    processes = int(os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES") or 1)
    if processes > 1:
        raise ArgumentError(
            "`distribute` data-parallel runs in one process over its devices in this version; for several "
            "processes use KERAS_BACKEND=tensorflow with --distribute multi-worker --loop tape. "
            f"Received: KERAS_DISTRIBUTION_NUM_PROCESSES={processes}"
        )
    devices = len(keras.distribution.list_devices())
    if batch_size is not None and batch_size % devices:
        raise ArgumentError(
            f"`batch_size` must be a multiple of the {devices} devices that `distribute` data-parallel splits "
            f"every batch among. Received: batch_size={batch_size}"
        )
    if weighted:
        raise ArgumentError(
            "`distribute` data-parallel weighs its metrics by the batches' weights (which mark the padding of a "
            "partial batch), so sample or class weights would weigh the metrics too: train without them, or "
            "without data-parallel. " + received
        )


class _WeightedMean(keras.losses.Loss):
    """``loss``'s per-sample values reduced by the weights' sum: the mean over the real rows of a padded batch."""

    def __init__(self, loss: keras.losses.Loss) -> None:
        super().__init__(name=loss.name, reduction="mean_with_sample_weight", dtype=loss.dtype)
        self.loss = loss

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return self.loss.call(y_true, y_pred)


def data_parallel_loss(loss: keras.losses.Loss) -> keras.losses.Loss:
    """``loss`` for the padded batches of ``--distribute data-parallel``: reduced by the weights' sum.

    The padding rows weigh 0 and the others 1 (weights are refused), so
    this is ``loss``'s ``"sum_over_batch_size"`` mean over the real rows:
    the loss, and the gradients, of the batch in one process. Used for
    training only; the run exports ``loss`` itself.

    Raises:
        ArgumentError: If ``loss`` reduces otherwise (``"sum"``, none).
    """
    if loss.reduction not in ("sum_over_batch_size", "mean", "mean_with_sample_weight"):
        raise ArgumentError(
            "`distribute` data-parallel averages the loss over the real rows of a padded batch, so the loss must "
            f"reduce by its mean ('sum_over_batch_size'). Received: loss reduction={loss.reduction!r}"
        )
    return _WeightedMean(loss)


def run_strategy(config: Any, strategy: Any = None) -> Any:
    """The strategy of a run: ``strategy``, or ``config.distribute``'s once its options are checked.

    Args:
        config: A `kpipe.training.TrainConfig`.
        strategy: A strategy given to `kpipe.training.train` (used as it is), or `None`.

    Raises:
        ArgumentError: As `check_multi_worker`, `check_data_parallel` (the
            weights are checked by `training_loss`) and `get_strategy`.
    """
    if strategy is not None:
        return get_strategy(strategy)
    check_multi_worker(config.distribute, config.loop, clip_norm=config.clip_norm,
                       accumulation_steps=config.accumulation_steps)
    check_data_parallel(config.distribute, config.loop, batch_size=config.batch_size, weighted=False)
    return get_strategy(config.distribute)


def pad_to_multiple(strategy: Any) -> int:
    """The rows a run's train and validation batches are padded to a multiple of: a `DataParallelDevices`' devices."""
    return strategy.num_replicas_in_sync if isinstance(strategy, DataParallelDevices) else 1


def training_loss(strategy: Any, loss: keras.losses.Loss, train: Any, config: Any) -> keras.losses.Loss:
    """The loss a run's loop trains with: ``loss``, or under `DataParallelDevices` `data_parallel_loss` of it.

    Raises:
        ArgumentError: Under `DataParallelDevices`, as `check_data_parallel`
            (weighted train batches) and `data_parallel_loss`.
    """
    if not isinstance(strategy, DataParallelDevices):
        return loss
    check_data_parallel("data-parallel", config.loop, batch_size=config.batch_size,
                        weighted=train.sample_weights is not None)
    return data_parallel_loss(loss)


def fit_scope(strategy: Any) -> contextlib.AbstractContextManager:
    """Where a run's loop runs: a `DataParallelDevices`' scope, else nothing.

    `keras.distribution` splits the batches among devices only while it is
    in force; a `tf.distribute.Strategy` is Keras' own business in `fit`
    (the model was made in its scope).
    """
    return strategy.scope() if isinstance(strategy, DataParallelDevices) else contextlib.nullcontext()


def is_chief() -> bool:
    """True unless this process is a multi-worker job's worker other than worker 0 (`kpipe._shards`)."""
    return shard_from_environment().index == 0


def check_multi_worker(distribute: Any, loop: str, *, clip_norm: float | None = None,
                       accumulation_steps: int = 1) -> None:
    """Refuse a multi-worker run that cannot run or would not be exact, before any worker waits for another.

    Args:
        distribute: The run's ``distribute`` (only ``"multi-worker"`` is checked).
        loop: The run's loop name.
        clip_norm: ``--clip-norm``.
        accumulation_steps: ``--accumulation-steps``.

    Raises:
        ArgumentError: On ``--loop fit`` or ``step`` on TensorFlow (upstream
            Keras issue, `KERAS_MULTI_WORKER_ISSUE`), ``--clip-norm`` or
            ``--accumulation-steps`` on TensorFlow, a missing ``TF_CONFIG``,
            or a backend without a multi-worker path.
    """
    if distribute != "multi-worker":
        return
    backend = check_backend()
    if backend != "tensorflow":
        raise ArgumentError(
            f"`distribute` multi-worker runs on the TensorFlow backend (MultiWorkerMirroredStrategy, --loop tape); "
            f"the {backend} backend trains in one process here (--distribute data-parallel on JAX: its devices). "
            f"Set KERAS_BACKEND=tensorflow, or use --distribute auto. "
            f"Received: distribute='multi-worker', backend={backend!r}"
        )
    if loop != "tape":
        raise ArgumentError(
            f"`distribute` multi-worker trains with --loop tape on TensorFlow: Keras 3's fit, which --loop {loop} "
            "runs, fails under tf.distribute.MultiWorkerMirroredStrategy (open upstream Keras issue #20585, "
            f"{KERAS_MULTI_WORKER_ISSUE}). Use --loop tape. Received: loop={loop!r}"
        )
    for name, value, given in (("clip_norm", clip_norm, clip_norm is not None),
                               ("accumulation_steps", accumulation_steps, accumulation_steps != 1)):
        if given:
            raise ArgumentError(
                f"`{name}` with `distribute` multi-worker would not give the one-process update: Keras clips and "
                "accumulates each worker's gradients before they are summed. Drop it. "
                f"Received: {name}={value!r}"
            )
    if not os.environ.get("TF_CONFIG"):
        raise ArgumentError(
            "`distribute` multi-worker needs TF_CONFIG in every worker's environment: the cluster and the "
            "worker's task, e.g. TF_CONFIG='{\"cluster\": {\"worker\": [\"host0:12345\", \"host1:12345\"]}, "
            "\"task\": {\"type\": \"worker\", \"index\": 0}}'. Received: TF_CONFIG unset"
        )


def get_strategy(name: str | tf.distribute.Strategy | Any | None = "auto") -> tf.distribute.Strategy | SingleDevice:
    """The distribution strategy of a run.

    Args:
        name: ``"auto"`` (MirroredStrategy when more than one GPU is visible,
            else the default one-device strategy), ``"none"`` (one device),
            ``"mirrored"`` (MirroredStrategy over the visible GPUs, or the CPU),
            ``"multi-worker"`` (MultiWorkerMirroredStrategy, from ``TF_CONFIG``),
            ``"data-parallel"`` (JAX: `keras.distribution.DataParallel` on the devices),
            or a strategy instance (returned as is). Defaults to ``"auto"``.

    Returns:
        A `tf.distribute.Strategy` on TensorFlow; a `SingleDevice` on JAX and
        PyTorch, or a `DataParallelDevices` for ``"data-parallel"`` on JAX.

    Raises:
        ArgumentError: On an unknown name, a backend kpipe cannot train on, or
            ``"mirrored"`` / ``"multi-worker"`` on another backend than TensorFlow,
            ``"data-parallel"`` on another backend than JAX.
    """
    backend = check_backend()
    if backend != "tensorflow":
        if name is not None and not isinstance(name, str):
            return name
        name = check_text_choice(name or "auto", "distribute", STRATEGIES)
        check_multi_worker(name, "tape")  # refuses multi-worker off TensorFlow
        if name == "data-parallel":
            check_data_parallel(name, "fit", batch_size=None, weighted=False)  # the run's options: `_build`
            return DataParallelDevices()
        if name == "mirrored":
            raise ArgumentError(
                f"`distribute` mirrored is TensorFlow's MirroredStrategy; on the {backend} backend kpipe trains "
                "on one device: use --distribute auto or none (or KERAS_BACKEND=tensorflow). "
                "Received: distribute='mirrored'"
            )
        return SingleDevice()
    import tensorflow as tf  # this hook is TensorFlow's: imported only when a run asks for a strategy

    if isinstance(name, tf.distribute.Strategy):
        return name
    name = check_text_choice(name or "auto", "distribute", STRATEGIES)
    check_data_parallel(name, "fit", batch_size=None, weighted=False)  # refuses data-parallel on TensorFlow
    if name == "multi-worker":  # created before anything else starts TensorFlow's runtime (it configures it)
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


@contextlib.contextmanager
def dtype_policy(mixed_precision: bool) -> Iterator[str]:
    """Set the Keras global dtype policy for the duration of a run, then restore the previous one.

    ``mixed_precision=True`` selects ``"mixed_float16"``: layers compute in
    float16 and keep float32 variables; `fit` / the ``step`` loop wrap the
    optimizer in `keras.optimizers.LossScaleOptimizer` (Keras'
    ``compile(auto_scale_loss=True)``), the ``tape`` loop does it explicitly.
    Worth it on GPUs with float16 units (compute capability >= 7.0); on a
    CPU it is slower.

    Yields:
        The policy name in force.
    """
    previous = keras.config.dtype_policy()
    if mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    try:
        yield keras.config.dtype_policy().name
    finally:
        keras.config.set_dtype_policy(previous)


def output_dtype_warning(model: keras.Model) -> str | None:
    """A message if a mixed-precision model's output is float16 (softmax in float16 loses precision)."""
    try:
        dtype = keras.backend.standardize_dtype(model.outputs[0].dtype)
    except (AttributeError, IndexError, ValueError):
        return None
    if dtype == "float16":
        return ("With --mixed-precision the model's last layer should compute in float32 "
                "(e.g. Dense(num_classes, activation='softmax', dtype='float32')); it outputs float16.")
    return None



def mixed_precision_warning() -> str | None:
    """A message if ``--mixed-precision`` is asked for and no GPU is visible (float16 is slower on a CPU)."""
    import tensorflow as tf  # the device list is TensorFlow's, as the strategy

    if tf.config.list_logical_devices("GPU"):
        return None
    return ("--mixed-precision without a GPU: float16 is emulated on the CPU, so training is slower, not faster. "
            "Drop --mixed-precision on this machine.")
