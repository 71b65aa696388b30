"""`DataGenerator`: a `keras.utils.PyDataset` over a prepared dataset.

How batches are numbered (the ``steps_per_epoch`` policy)
---------------------------------------------------------

A generator serves one endless *stream* of batches. Global batch ``k`` is
batch ``k mod P`` of sampler epoch ``k div P``, where ``P`` =
`DataGenerator.batches_per_sampler_epoch` (``ceil(epoch_size / batch_size)``,
``floor`` with ``drop_remainder``): every sample is served once per sampler
epoch (shuffle, sequential), or as the sampler plans it (balanced,
bootstrap). ``fit`` epoch ``e`` reads the window ``e * S .. e * S + S - 1``
of the stream, ``S = steps_per_epoch`` (a generator argument; default ``P``,
so fit epochs and sampler epochs coincide). Batch ``k`` is a pure function of
``k`` (`DataGenerator.make_batch`), so it is the same whichever thread or
process makes it, whatever ``workers`` is, on every Keras backend, and after
resuming at epoch ``e`` (``initial_epoch``, `DataGenerator.load_state_dict`,
or `EpochSync`).

The generator's position (its fit epoch, `DataGenerator.epoch`) moves with
the public `PyDataset` hooks only: ``on_epoch_end`` moves to the next window
once the current window's last batch has been asked for, so the extra calls
Keras makes around its shape inference (``on_epoch_end`` before the first
epoch, one ``on_epoch_begin``/``on_epoch_end`` around a one-batch peek on
JAX and PyTorch) do not move it. ``fit(gen, steps_per_epoch=n)`` with ``n``
below ``len(gen)`` makes Keras read a window over several of its epochs:
the window then still holds the same batches, and Keras ends the epoch that
reaches the window's end early ("Your input ran out of data"). To get ``n``
batches in every fit epoch, give ``steps_per_epoch=n`` to the generator.

Sharding (several training workers)
-----------------------------------

``DataGenerator(..., num_shards=N, shard_index=i)`` (or ``num_shards="auto"``,
from ``TF_CONFIG``, `keras.distribution` / JAX, or ``WORLD_SIZE``/``RANK``:
`kpipe._shards`) is worker ``i``'s view of the same stream: every worker
plans the same global batches from ``(seed, epoch)``, ``len()`` is the number
of global batches, and ``make_batch(k)`` is slice ``i`` of global batch
``k``: its samples ``i*b .. i*b + b - 1``, ``b = ceil(batch_size / N)``
(`shard_batch_size`). A slice that the batch does not fill (``N`` not
dividing the batch size, the last partial batch of an epoch) is padded to
``b`` rows with copies of the batch's first sample, of sample weight 0. The
N slices, minus padding, concatenate to the batch of one process (same
samples in the same order, so the same class quotas), and every sample of an
epoch is served once across the workers.

Sharded batches are always ``(x, y, sample_weight)``: the real rows' weights
(1, or the configured ones) are multiplied by ``N * b / n``, ``n`` the global
batch's length, so that a loss averaged over the padded global batch
(``N * b`` rows: Keras' ``"sum_over_batch_size"`` per replica divided by the
replicas, as `tf.distribute` and `keras.distribution` reduce it) equals the
one-process loss ``sum(w * loss) / n``; with ``N`` dividing the batch size
the factor is 1 except on a last, partial batch. Nothing else changes with
``N``: the state (`state_dict`) holds no shard, so a run resumes at any
``(epoch, step)`` with another number of workers and the same remaining
batches. A ``transform`` needs ``transform_rng="sample"`` when sharded
(one generator per sample, keyed by ``(seed, sampler epoch, slot of the
sample in the epoch)``, so the augmentation does not depend on ``N``);
the default, ``"batch"``, keeps the one-process stream of earlier versions.
``pad_to_multiple=d`` pads one process's batches to a multiple of ``d``
rows with zero-weight rows, the real rows' weights unchanged, for
`keras.distribution.DataParallel`, which splits every batch among devices.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import keras
import numpy as np

from kpipe._prefetch import IDLE_RELEASE_SECONDS, Prefetcher
from kpipe._shards import Shard, check_shard, shard_slots
from kpipe._validation import (
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_positive_int,
)
from kpipe.errors import ArgumentError, KpipeError, ManifestError, SamplingError, TransformError, WeightError
from kpipe.manifest import MANIFEST_NAME, Manifest, load_manifest
from kpipe.sampling import (
    DEFAULT_BATCH_SIZE,
    STREAM_AUGMENT,
    STREAM_AUGMENT_SAMPLE,
    BootstrapSampler,
    Sampler,
    check_seed_value,
    epoch_rng,
    sampler_from_options,
)
from kpipe.storage import CACHE_MODES, MemoryStore, open_store
from kpipe.storage.base import Store
from kpipe.weights import SampleWeights

if TYPE_CHECKING:
    from typing_extensions import Self

LABEL_MODES = ("int", "categorical", "binary", None)
TRANSFORM_RNGS = ("batch", "sample")
"""How ``transform``'s generator is keyed: once per batch, or once per sample (see `DataGenerator`)."""

_SAMPLING_OPTIONS = ("sampling", "balance", "samples_per_epoch", "target_distribution")
_WEIGHT_OPTIONS = ("class_weight", "condition_weights", "use_sample_weights")
_LOADER_OPTIONS = ("workers", "use_multiprocessing", "max_queue_size")
_CLASSIC_OPTIONS = ("list_IDs", "labels", "data_dir", "num_classes")


NPY_HINT_SAMPLES = 50_000
"""From this many samples in a partition (of samples up to `NPY_HINT_MAX_SAMPLE_BYTES`), a generator over an npy
dataset says once that HDF5 would read it faster. Measured with ``tools/bench.py --npy-floor`` on the 2-core
development machine: a DataGenerator epoch over npy costs 8.9 µs of CPU per 12 KiB sample, of which the file
system's open + preadv + close is 6.8 µs (a C loop), against 1.4 µs (memory map) or 2.9 µs (``preadv``) over HDF5
shards. The saving, about 10 µs per sample and epoch whatever the sample size, is half a second per epoch from
50,000 samples; ``kpipe convert`` pays for itself after 13 epochs (12 KiB samples) or 46 (48 KiB)."""

NPY_HINT_MAX_SAMPLE_BYTES = 64 << 10
"""Above this sample size the conversion (which copies every byte) takes longer to pay for itself than most
trainings last (480 epochs for 768 KiB samples, see `NPY_HINT_SAMPLES`): no hint."""

_NPY_HINTED: set[str] = set()
"""Dataset folders this process has given the npy hint for."""

_ONE_HOT_TABLE_CLASSES = 1024
"""Up to this many classes, one-hot labels are rows of a precomputed identity matrix."""


class _EpochPlan(NamedTuple):
    """One sampler epoch, planned: positions (into the generator's IDs) and the store's rows of them."""

    epoch: int
    positions: np.ndarray
    rows: np.ndarray


class Prefetch(NamedTuple):
    """How a generator makes batches ahead: the ``workers``, ``use_multiprocessing`` and ``max_queue_size`` asked for.

    Keras sees ``workers=1`` and ``use_multiprocessing=False`` (it reads the
    batches in order, in one thread); the generator's own pool does this.
    """

    workers: int = 1
    use_multiprocessing: bool = False
    max_queue_size: int = 10

    @property
    def parallel(self) -> bool:
        """True if batches are made by a pool (as Keras: ``workers > 1`` or processes)."""
        return self.workers > 1 or (self.workers > 0 and self.use_multiprocessing)


class DataGenerator(keras.utils.PyDataset):
    """Batches ``(x, y)`` or ``(x, y, sample_weight)`` of one partition of a prepared dataset, for `model.fit`.

    A generator is a stream of batches: global batch ``k`` is batch
    ``k mod P`` of sampler epoch ``k div P`` (``P`` =
    `batches_per_sampler_epoch`), and ``fit`` epoch ``e`` reads batches
    ``e * S .. e * S + S - 1``, ``S = steps_per_epoch`` (default ``P``).
    An epoch's order is a pure function of ``(seed, epoch)`` (see
    `kpipe.sampling`), so ``workers > 1``, ``use_multiprocessing=True``, every
    Keras backend, and a run resumed at epoch ``e`` (``initial_epoch``,
    `load_state_dict`, or `EpochSync` with Keras' `BackupAndRestore`) all
    serve exactly the batches of one process. Pass ``shuffle=False`` to
    `model.fit`: the generator owns the shuffling (Keras' own only reorders
    whole batches). See the module docstring for how the position moves.

    The generator makes batches ahead itself, with ``workers`` threads (or
    processes with ``use_multiprocessing=True``, which receive the generator
    once, as its recipe, and then only batch numbers) keeping up to
    ``max_queue_size`` batches ready; Keras is shown ``workers=1`` and reads
    the batches in order (what was asked for is in `prefetch`). A worker
    process that dies makes the request fail with a `WorkerError` naming the
    batch. The pool is stopped by `close` (or ``with DataGenerator(...) as
    gen:``), or after a few idle seconds at an epoch's end (Keras keeps the
    datasets given to ``fit`` alive after it returns).

    Batches are ``(x, y)``; with any weight configured they are ``(x, y,
    sample_weight)``, ``sample_weight`` float32 of shape ``(batch,)``, the
    product of the configured factors (see `kpipe.weights`), computed from
    class indices whatever ``label_mode``. Do not also pass ``class_weight``
    to `fit` (Keras refuses both; `kpipe.weights.check_fit_class_weight`).

    Three ways to build one:

    * from a manifest: ``DataGenerator("prepared/manifest.json", "train")``
      (a path pickles as a small recipe: worker processes load the manifest
      themselves, and refuse one that changed since);
    * with the sampling options grouped in a sampler, and the weights in a
      `SampleWeights`: ``DataGenerator("prepared", "train",
      sampler=BalancedSampler(batch_size=64, seed=5, balance="oversample"),
      weights=SampleWeights(class_weight="balanced"))``;
    * as the classic Keras ``DataGenerator`` (per-ID ``.npy`` files):
      ``DataGenerator(list_IDs=ids, labels={id: class_index}, data_dir="data/")``.

    Args:
        manifest: A `Manifest`, or the path of ``manifest.json`` (or its folder).
        partition: ``"train"``, ``"validation"`` or ``"test"``. Defaults to ``"train"``.
        sampler: A `kpipe.sampling.Sampler` (usually unbound: built without
            labels): the one owner of ``seed``, ``batch_size`` and the
            sampling options. Defaults to one built from the shortcuts below.
        weights: A `kpipe.weights.SampleWeights`. Defaults to one built from
            the weight shortcuts below (none: no weights).
        batch_size: Samples per batch (positive int). Defaults to the
            sampler's, else 32.
        seed: Seed of the sampling and of the ``transform`` generator: an
            integer in ``[0, 2**64)``, used whole. Defaults to the sampler's, else 0.
        shuffle: New random order every epoch (``sampling="shuffle"``) or
            manifest order (``"sequential"``). Defaults to `True` for
            ``"train"`` and `False` otherwise.
        label_mode: ``"int"``: ``y`` int32 of shape ``(batch,)``;
            ``"categorical"``: one-hot float32 ``(batch, num_classes)``;
            ``"binary"``: float32 0/1 of shape ``(batch, 1)`` (two classes only);
            `None`: no labels, batches are ``(x,)``. Defaults to ``"int"``.
        rescale: Factor applied to ``x`` after the cast, e.g. ``1/255`` for
            uint8 images. Defaults to `None` (no scaling).
        dtype: Dtype of ``x``. Defaults to ``"float32"``.
        drop_remainder: Drop the last, partial batch of every sampler epoch
            (a warning says how many samples that is). Defaults to `False`.
        transform: ``fn(x_batch, y_batch, rng) -> (x_batch, y_batch)`` (or
            just ``x_batch``), applied after the cast and rescale; ``rng`` is
            a `np.random.Generator` from ``(seed, sampler epoch, batch
            index)``: the same augmentation whichever worker makes the batch
            and on a rerun. Must pickle (a module-level function) for
            ``use_multiprocessing=True``. Anything it raises becomes a
            `TransformError` naming the batch, the epoch and the sample IDs.
            See ``transform_rng``. Defaults to `None`.
        steps_per_epoch: Batches per ``fit`` epoch (``len(generator)``), read
            from the stream in order. Defaults to `batches_per_sampler_epoch`.
        initial_epoch: The ``fit`` epoch the generator starts at (to resume).
        state: A `state_dict` to resume from (instead of ``initial_epoch``).
        cache: `None` (read from storage every batch) or ``"memory"``: load
            the partition into RAM once, here (it must fit). Defaults to `None`.
        num_shards: Workers the global batches are split among (an int >= 1),
            or ``"auto"``: from the environment (``TF_CONFIG``,
            ``KERAS_DISTRIBUTION_NUM_PROCESSES``/``_PROCESS_ID``,
            `jax.distributed`, ``WORLD_SIZE``/``RANK``; 1 outside a job).
            See "Sharding" in the module docstring. Defaults to 1.
        shard_index: This worker's slice, in ``[0, num_shards)`` (required
            with ``num_shards > 1``; unset with ``"auto"``).
        transform_rng: ``"batch"``: ``transform`` is called once per batch
            with a generator from ``(seed, sampler epoch, batch index)``;
            ``"sample"``: once per sample (``x_batch`` of one row), with a
            generator from ``(seed, sampler epoch, slot of the sample in the
            epoch's order)``, so a sharded generator augments as one process
            does, whatever the number of shards (required then).
            Defaults to ``"batch"``.
        pad_to_multiple: Pad a batch whose length is not a multiple of it
            (the last, partial batch of a sampler epoch) with zero-weight
            rows, copies of the batch's first sample, to the next multiple;
            the real rows keep their weights (1 without any). Batches are then
            always ``(x, y, sample_weight)``; a loss reduced by the weights'
            sum (``reduction="mean_with_sample_weight"``) and weighted metrics
            are those of the real rows. For `keras.distribution.DataParallel`,
            which splits every batch evenly among devices (``kpipe train
            --distribute data-parallel``). Not with ``num_shards > 1`` (their
            slices are padded already). Defaults to 1 (no padding).
        **options: Keyword shortcuts, all optional:
            ``workers`` (threads or processes making batches, default 1),
            ``use_multiprocessing`` (processes, default `False`),
            ``max_queue_size`` (batches, not samples, made ahead, default 10),
            as `keras.utils.PyDataset`;
            ``sampling`` (``"shuffle"``, ``"sequential"``, ``"balanced"``,
            ``"bootstrap"``, or a `Sampler` as ``sampler``), ``balance``,
            ``samples_per_epoch``, ``target_distribution`` (see
            `kpipe.sampling.sampler_from_options`);
            ``class_weight``, ``condition_weights``, ``use_sample_weights``
            (see `kpipe.weights.SampleWeights`);
            ``list_IDs``, ``labels`` (ID -> class index), ``data_dir``,
            ``num_classes`` (the classic form, instead of ``manifest``).

    Raises:
        ArgumentError: On an invalid or unknown argument (the message names it; a `ValueError`).
        SamplingError: On an invalid sampling option, options given both to
            the sampler and to the generator, or a class to balance that has
            no sample in the partition (named, with its index).
        WeightError: On an invalid weight (see `kpipe.weights`).
        ManifestError: If the manifest cannot be read or the partition is unknown.

    Example:
        >>> train = DataGenerator("prepared/manifest.json", "train", batch_size=64, rescale=1 / 255)
        >>> x, y = train[0]
        >>> x.shape, x.dtype, y.shape
        ((64, 8, 8, 1), dtype('float32'), (64,))
        >>> model.fit(train, epochs=5, shuffle=False)
        >>> balanced = DataGenerator("prepared/manifest.json", "train",
        ...                          sampler=BalancedSampler(batch_size=32, balance="oversample"),
        ...                          condition_weights={"7": 2.0}, workers=4)
        >>> x, y, w = balanced[0]  # w: float32 (32,)
    """

    def __init__(
        self,
        manifest: Manifest | str | os.PathLike | None = None,
        partition: str = "train",
        *,
        sampler: Sampler | None = None,
        weights: SampleWeights | None = None,
        batch_size: int | None = None,
        seed: int | None = None,
        shuffle: bool | None = None,
        label_mode: str | None = "int",
        rescale: float | None = None,
        dtype: str = "float32",
        drop_remainder: bool = False,
        transform: Callable[..., Any] | None = None,
        steps_per_epoch: int | None = None,
        initial_epoch: int = 0,
        state: Mapping[str, Any] | None = None,
        cache: str | None = None,
        num_shards: int | str = 1,
        shard_index: int | None = None,
        transform_rng: str = "batch",
        pad_to_multiple: int = 1,
        **options: Any,
    ) -> None:
        unknown = sorted(set(options) - set(_SAMPLING_OPTIONS + _WEIGHT_OPTIONS + _LOADER_OPTIONS + _CLASSIC_OPTIONS))
        if unknown:
            raise ArgumentError(
                f"`DataGenerator` has no argument {unknown[0]!r}. Keyword shortcuts: "
                f"{', '.join(_SAMPLING_OPTIONS + _WEIGHT_OPTIONS + _LOADER_OPTIONS + _CLASSIC_OPTIONS)}. "
                f"Received: {unknown[0]}={options[unknown[0]]!r}"
            )
        prefetch = Prefetch(
            workers=check_int(options.get("workers", 1), "workers", minimum=0),
            use_multiprocessing=check_bool(options.get("use_multiprocessing", False), "use_multiprocessing"),
            max_queue_size=check_positive_int(options.get("max_queue_size", 10), "max_queue_size"),
        )
        # Keras reads the batches in order, in one thread; the generator's own pool makes them ahead.
        super().__init__(workers=1, use_multiprocessing=False, max_queue_size=prefetch.max_queue_size)
        if batch_size is not None:
            batch_size = check_positive_int(batch_size, "batch_size")
        recipe = {
            "partition": partition,
            "source": _source(manifest, partition, {k: options.get(k) for k in _CLASSIC_OPTIONS}),
            "sampler": _sampler_options(partition, sampler, batch_size, seed, shuffle,
                                        {k: options.get(k) for k in _SAMPLING_OPTIONS}),
            "weights": _weight_options(weights, {k: options[k] for k in _WEIGHT_OPTIONS if k in options}),
            "label_mode": check_choice(label_mode, "label_mode", LABEL_MODES),
            "rescale": check_number(rescale, "rescale", allow_none=True),
            "dtype": _check_dtype(dtype),
            "drop_remainder": check_bool(drop_remainder, "drop_remainder"),
            "transform": _check_transform(transform),
            "steps_per_epoch": check_positive_int(steps_per_epoch, "steps_per_epoch", allow_none=True),
            "cache": check_choice(cache, "cache", CACHE_MODES),
            "prefetch": prefetch,
            "shard": check_shard(num_shards, shard_index),
            "transform_rng": check_choice(transform_rng, "transform_rng", TRANSFORM_RNGS),
            "pad_to_multiple": check_positive_int(pad_to_multiple, "pad_to_multiple"),
        }
        self._setup(recipe, epoch=check_int(initial_epoch, "initial_epoch", minimum=0), warn=True)
        if state is not None:
            self.load_state_dict(state)

    # ------------------------------------------------------------- building
    def _setup(self, recipe: dict[str, Any], *, epoch: int, warn: bool) -> None:
        """Derive everything from the recipe (at construction, and in a process that unpickled it)."""
        self._recipe = recipe
        self.partition: str = recipe["partition"]
        self.manifest: Manifest = _load_source(recipe["source"])
        self.ids: list[str] = self.manifest.ids(self.partition)
        if not self.ids:
            raise KpipeError(
                f"Partition {self.partition!r} of {self.manifest.path or 'the manifest'} is empty; "
                "there is nothing to iterate. Prepare with a split that gives it samples."
            )
        self.num_classes: int = self.manifest.num_classes
        self.label_mode: str | None = recipe["label_mode"]
        if self.label_mode == "binary" and self.num_classes != 2:
            raise ArgumentError(
                f"`label_mode='binary'` needs exactly 2 classes; this dataset has {self.num_classes}. "
                "Use label_mode='int' or 'categorical'."
            )
        self.labels: np.ndarray = self.manifest.label_array(self.ids)
        self.sampler: Sampler = recipe["sampler"].bind(self.labels, class_names=self.manifest.classes,
                                                       partition=self.partition)
        self._batch_size = int(self.sampler.batch_size)
        self.weights: SampleWeights = recipe["weights"]
        self.sample_weights, self.weight_details = self.weights.compute(
            self.labels, self.manifest.classes, manifest=self.manifest, ids=self.ids, partition=self.partition)
        if self.sample_weights is not None and self.label_mode is None:
            raise ArgumentError("Sample weights need labels: batches would be (x, None, w). "
                                "Use label_mode='int' (or another) with class_weight / condition_weights / "
                                "use_sample_weights.")
        self.rescale: float | None = recipe["rescale"]
        self.dtype = np.dtype(recipe["dtype"])
        self.drop_remainder: bool = recipe["drop_remainder"]
        self.transform: Callable[..., Any] | None = recipe["transform"]
        self.prefetch: Prefetch = recipe["prefetch"]
        n, b = self.sampler.epoch_size, self.batch_size
        if self.drop_remainder and n < b:
            raise ArgumentError(
                f"`drop_remainder=True` with batch_size={b} leaves no batch: partition "
                f"{self.partition!r} has {n} samples per epoch."
            )
        self.batches_per_sampler_epoch: int = n // b if self.drop_remainder else -(-n // b)
        self.num_dropped: int = n - self.batches_per_sampler_epoch * b if self.drop_remainder else 0
        self.steps_per_epoch: int = recipe["steps_per_epoch"] or self.batches_per_sampler_epoch
        self.transform_rng: str = recipe["transform_rng"]
        self._setup_shard(recipe["shard"], pad_to_multiple=recipe["pad_to_multiple"])
        self._labels_out = self._label_table()
        self._scratch = threading.local()  # per thread: the read buffer of a batch converted to `dtype`
        store: Store = open_store(self.manifest)
        if recipe["cache"] == "memory":  # shared by generators over the same files and IDs (see MemoryStore)
            source = recipe["source"]
            key = None if "path" not in source else (
                source["path"], tuple(source["fingerprint"]), self.partition, len(self.ids), hash(tuple(self.ids)))
            store = MemoryStore(store, self.ids, share_key=key)
        self.store = store
        self.last_error: KpipeError | None = None
        self._lock = threading.Lock()
        self._epoch = int(epoch)
        self._reset_window()
        self._prefetcher = (Prefetcher(self, workers=self.prefetch.workers,
                                       use_multiprocessing=self.prefetch.use_multiprocessing,
                                       ahead=max(self.prefetch.max_queue_size, self.prefetch.workers),
                                       describe=self._describe)
                            if self.prefetch.parallel else None)
        if warn:
            self._warn_about_options(recipe)

    def _setup_shard(self, shard: Shard, *, pad_to_multiple: int) -> None:
        """The worker's slice of every global batch (`kpipe._shards`), checked against the other options."""
        self.shard: Shard = shard
        self.shard_batch_size: int = -(-self._batch_size // shard.count)
        self.pad_to_multiple: int = pad_to_multiple
        if shard.count == 1 and pad_to_multiple == 1:
            return
        if shard.count > 1 and pad_to_multiple > 1:
            raise ArgumentError(
                f"A sharded generator pads every slice to shard_batch_size rows already; `pad_to_multiple` is for "
                f"one process. Received: num_shards={shard.count}, pad_to_multiple={pad_to_multiple}"
            )
        if self.label_mode is None:
            raise ArgumentError(
                f"A sharded or padded generator marks its padding rows by sample weight 0, so it needs labels; "
                f"with label_mode=None the padding could not be told apart. Use label_mode='int' (or another), or "
                f"num_shards=1 and pad_to_multiple=1. Received: num_shards={shard.count}, "
                f"pad_to_multiple={pad_to_multiple}, label_mode=None"
            )
        if shard.count == 1:
            return
        if self.transform is not None and self.transform_rng == "batch":
            raise ArgumentError(
                f"With num_shards={shard.count} each worker transforms only its slice of a batch, so a generator "
                "keyed per batch would augment differently for every number of workers. Pass "
                "transform_rng='sample' (one generator per sample, keyed by its place in the epoch: the same "
                "augmentation for any num_shards, also 1). Received: transform_rng='batch'"
            )

    @property
    def num_shards(self) -> int:
        """Workers the global batches are split among (1: not sharded)."""
        return self.shard.count

    @property
    def shard_index(self) -> int:
        """Which slice of every global batch this generator serves, in ``[0, num_shards)``."""
        return self.shard.index

    def _warn_about_options(self, recipe: dict[str, Any]) -> None:
        if self.num_dropped:
            warnings.warn(
                f"drop_remainder=True drops {self.num_dropped} of the {self.sampler.epoch_size} samples of every "
                f"epoch of partition {self.partition!r} (the last, partial batch of {self.batch_size}).",
                UserWarning, stacklevel=4,
            )
        if self.weights.balances_classes and (self.sampling == "balanced" or self.balance == "balanced"):
            warnings.warn(
                f"sampling={self.sampling!r} already balances the classes, and class_weight='balanced' "
                "corrects for the imbalance a second time (the rare classes end up over-weighted). "
                "Use one of the two.",
                UserWarning, stacklevel=4,
            )
        self._hint_npy(recipe)
        if recipe["cache"] == "memory" and self.prefetch.use_multiprocessing \
                and multiprocessing.get_start_method() != "fork":
            warnings.warn(
                f"cache='memory' with use_multiprocessing=True under the {multiprocessing.get_start_method()!r} "
                "start method: each worker process loads its own copy of the partition. Use threads "
                "(use_multiprocessing=False), which share the cache, or the 'fork' start method.",
                UserWarning, stacklevel=4,
            )

    def _hint_npy(self, recipe: dict[str, Any]) -> None:
        """Once per dataset and process: a large npy partition of small samples would read faster as HDF5."""
        n = len(self.ids)
        if (self.manifest.storage.get("format") != "npy" or recipe["cache"] is not None or n < NPY_HINT_SAMPLES
                or self.store.sample_nbytes > NPY_HINT_MAX_SAMPLE_BYTES):
            return
        key = str(self.manifest.root)
        if key in _NPY_HINTED:
            return
        _NPY_HINTED.add(key)
        how = (f"`kpipe convert {self.manifest.path} --to hdf5 --out DIR`" if self.manifest.path is not None
               else "`kpipe prepare RAW --out DIR --format hdf5`")
        warnings.warn(
            f"Partition {self.partition!r} holds {n:,} samples stored as one .npy file each, so every epoch opens "
            f"and closes {n:,} files (about 10 µs each, the file system's floor, more than reading a small sample). "
            f"HDF5 shards skip that: convert once with {how} (in kpipe's benchmark it pays for itself after 13 "
            "epochs for 12 KiB samples, 46 for 48 KiB), or pass cache='memory' if the partition fits in RAM.",
            UserWarning, stacklevel=5,
        )

    # ----------------------------------------------------- options (owned by the sampler)
    @property
    def seed(self) -> int:
        """The sampler's seed (of the sampling and of the ``transform`` generator)."""
        return self.sampler.seed

    @property
    def batch_size(self) -> int:
        """The sampler's batch size."""
        return self._batch_size

    @property
    def store(self) -> Store:
        """The `kpipe.storage.Store` batches are read from (`open_store` of the manifest, or its `MemoryStore`).

        Setting it (e.g. a store opened with other options over the same
        manifest) makes the generator map its IDs to the new store's rows
        again on the next batch.
        """
        return self._store

    @store.setter
    def store(self, store: Store) -> None:
        self._store = store
        self._rows: np.ndarray | None = None  # store row of every position (`Store.rows(self.ids)`), once
        self._plan_cache: _EpochPlan | None = None

    @property
    def sampling(self) -> str:
        """The sampling mode: ``"shuffle"``, ``"sequential"``, ``"balanced"``, ``"bootstrap"`` (or the class name)."""
        return self.sampler.mode or type(self.sampler).__name__

    @property
    def shuffle(self) -> bool:
        """False for sequential sampling."""
        return self.sampling != "sequential"

    @property
    def balance(self) -> str | None:
        """The sampler's ``balance`` (`None` for shuffle and sequential)."""
        return self.sampler.balance

    @property
    def yields_weights(self) -> bool:
        """True if batches are ``(x, y, sample_weight)`` (weights configured, a sharded or padded generator)."""
        return self.sample_weights is not None or self.shard.count > 1 or self.pad_to_multiple > 1

    # ------------------------------------------------------------- PyDataset
    @property
    def num_batches(self) -> int:
        """Batches per ``fit`` epoch: ``steps_per_epoch`` (``len(generator)``)."""
        return self.steps_per_epoch

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __getitem__(self, index: int):
        """Batch ``index`` of the current ``fit`` epoch (global batch ``epoch * len(self) + index``).

        Raises:
            IndexError: If ``index`` is not in ``[0, len(self))``.
            KpipeError: If the batch cannot be made (a missing or corrupt
                sample, a failing ``transform``, a dead worker process);
                kept in `last_error` too.
        """
        index = self._check_index(index)
        with self._lock:
            k = self._epoch * self.steps_per_epoch + index
            self._served_since_end = True
            if index == self.steps_per_epoch - 1:
                self._window_complete = True
        try:
            return self.make_batch(k) if self._prefetcher is None else self._prefetcher.get(k)
        except KpipeError as e:
            self.last_error = e
            raise

    def make_batch(self, k: int):
        """Global batch ``k`` of the stream: batch ``k mod P`` of sampler epoch ``k div P``.

        A pure function of ``k`` (and of the generator's arguments): what
        worker threads and processes run. The batch's positions and store
        rows are slices of the sampler epoch's plan (computed once per
        epoch); the batch itself is assembled in `assemble`.

        Returns:
            ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``.
        """
        epoch, index = divmod(int(k), self.batches_per_sampler_epoch)
        plan = self._plan(epoch)
        lo = index * self._batch_size
        hi = min(lo + self._batch_size, len(plan.positions))
        if self.pad_to_multiple > 1:  # one process, padded to a multiple (the real rows' weights unchanged)
            slots, num_real = shard_slots(lo, hi, Shard(1, 0), -(-(hi - lo) // self.pad_to_multiple)
                                          * self.pad_to_multiple)
            return self.assemble(plan.positions[slots], plan.rows[slots], epoch, index, slots=slots,
                                 num_real=num_real)
        if self.shard.count == 1:
            return self.assemble(plan.positions[lo:hi], plan.rows[lo:hi], epoch, index)
        slots, num_real = shard_slots(lo, hi, self.shard, self._batch_size)
        return self.assemble(plan.positions[slots], plan.rows[slots], epoch, index, slots=slots, num_real=num_real,
                             weight_scale=self.shard.count * self.shard_batch_size / (hi - lo))

    def assemble(self, positions: np.ndarray, rows: np.ndarray, epoch: int, index: int, *,
                 slots: np.ndarray | None = None, num_real: int | None = None, weight_scale: float = 1.0):
        """The batch of the samples at ``positions`` (into `ids`), read from the store's ``rows``.

        All of a batch is assembled here: the samples read, cast to `dtype`
        and rescaled, the labels encoded, ``transform`` applied (its ``rng``
        from ``(seed, epoch, index)``, or per sample with
        ``transform_rng="sample"``) and the sample weights attached. Every
        array returned is new: Keras may keep a batch (TensorFlow's
        ``from_generator`` wraps a NumPy array without copying it, and
        prefetches), so a returned buffer is never written again. Only the
        read buffer of a batch that is cast to `dtype` is reused (per thread).

        Args:
            positions: int64 ``(n,)`` positions into `ids`.
            rows: int64 ``(n,)`` the store's rows of those samples
                (``store.rows(ids)[positions]``).
            epoch: The sampler epoch (for ``transform``'s generator and messages).
            index: The batch's index in that sampler epoch.
            slots: int64 ``(n,)``: the samples' slots in the sampler epoch's
                order (keys of the per-sample ``transform`` generators).
                Defaults to the batch's own, ``index * batch_size + arange(n)``.
            num_real: A shard's slice: rows from ``num_real`` on are
                padding, of sample weight 0 (the weights are then always
                yielded). Defaults to `None`: not a shard's slice.
            weight_scale: A shard's slice: factor of the real rows' weights,
                ``num_shards * shard_batch_size / global batch length`` (see
                `DataGenerator`).

        Returns:
            ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``.
        """
        x = self._read_x(rows)
        y = None if self._labels_out is None else self._encode(positions)
        if self.transform is not None:
            x, y = self._apply_transform(x, y, epoch, index, positions, slots)
        if y is None:
            return (x,)
        if num_real is None:
            if self.sample_weights is None:
                return x, y
            return x, y, self.sample_weights[positions]
        w = np.ones(len(positions)) if self.sample_weights is None else self.sample_weights[positions].astype(float)
        w = (w * weight_scale).astype(np.float32)
        w[num_real:] = 0.0
        return x, y, w

    def _read_x(self, rows: np.ndarray) -> np.ndarray:
        """The samples at ``rows``, as a new array of `dtype`, rescaled."""
        store = self._store
        if store.dtype == self.dtype:
            x = store.read_rows(rows)
            if self.rescale is not None:
                x *= self.dtype.type(self.rescale)
            return x
        raw = store.read_rows(rows, out=self._read_buffer(store, len(rows)))
        x = np.empty(raw.shape, self.dtype)
        if self.rescale is None:
            np.copyto(x, raw, casting="unsafe")
        else:  # one pass: cast each value to `dtype`, then multiply in `dtype` (as astype, then *=)
            np.multiply(raw, self.dtype.type(self.rescale), out=x, dtype=self.dtype, casting="unsafe")
        return x

    def _read_buffer(self, store: Store, n: int) -> np.ndarray:
        """This thread's buffer for ``n`` samples in the store's dtype (consumed before the batch is returned)."""
        buf = getattr(self._scratch, "buf", None)
        if buf is None or len(buf) < n or buf.dtype != store.dtype or buf.shape[1:] != store.sample_shape:
            buf = np.empty((max(n, self._batch_size), *store.sample_shape), store.dtype)
            self._scratch.buf = buf
        return buf

    def _label_table(self) -> np.ndarray | None:
        """Encoded labels, once: per position (int, binary), or one row per class (categorical)."""
        if self.label_mode is None:
            return None
        if self.label_mode == "int":
            return self.labels.astype(np.int32)
        if self.label_mode == "binary":
            return self.labels.astype(np.float32)[:, None]
        if self.num_classes <= _ONE_HOT_TABLE_CLASSES:
            return np.eye(self.num_classes, dtype=np.float32)
        return np.empty(0, np.float32)  # many classes: one-hot rows are filled per batch

    def _encode(self, positions: np.ndarray) -> np.ndarray:
        table = self._labels_out
        if self.label_mode != "categorical":
            return table[positions]
        y = self.labels[positions]
        if len(table):
            return table[y]
        onehot = np.zeros((len(y), self.num_classes), dtype=np.float32)
        onehot[np.arange(len(y)), y] = 1.0
        return onehot

    def _check_index(self, index: Any) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"Batch indices are integers. Received: index={index!r}")
        if not 0 <= index < self.steps_per_epoch:
            raise IndexError(f"Batch index {index} is out of range for {self.steps_per_epoch} batches.")
        return int(index)

    def _positions(self, epoch: int, index: int) -> np.ndarray:
        order = self.epoch_order(epoch)
        return order[index * self._batch_size : (index + 1) * self._batch_size]

    def _apply_transform(self, x: np.ndarray, y: np.ndarray | None, epoch: int, index: int, positions: np.ndarray,
                         slots: np.ndarray | None):
        k = epoch * self.batches_per_sampler_epoch + index
        if self.transform_rng == "batch":
            return self._call_transform(x, y, epoch_rng(self.seed, epoch, STREAM_AUGMENT, index), k, positions)
        if slots is None:
            slots = index * self._batch_size + np.arange(len(positions))
        xs, ys = [], []
        for j, slot in enumerate(slots.tolist()):  # one call per sample, its generator keyed by its slot
            xj, yj = self._call_transform(x[j : j + 1], None if y is None else y[j : j + 1],
                                          epoch_rng(self.seed, epoch, STREAM_AUGMENT_SAMPLE, slot), k, positions)
            xs.append(xj)
            ys.append(yj)
        return np.concatenate(xs), None if y is None else np.concatenate(ys)

    def _call_transform(self, x: np.ndarray, y: np.ndarray | None, rng: np.random.Generator, k: int,
                        positions: np.ndarray):
        try:
            out = self.transform(x, y, rng)
        except Exception as e:
            raise TransformError(
                f"`transform` failed on {self._describe(k, positions)}: {type(e).__name__}: {e}"
            ) from e
        if isinstance(out, tuple):
            if len(out) != 2:
                raise TransformError(
                    f"`transform` must return x_batch or (x_batch, y_batch); on {self._describe(k, positions)} it "
                    f"returned a tuple of {len(out)} items."
                )
            return out
        return out, y

    def _describe(self, k: int, positions: Sequence[int] | None = None) -> str:
        """Words naming global batch ``k``: its fit epoch, index and sample IDs."""
        epoch, index = divmod(int(k), self.steps_per_epoch)
        if positions is None:
            e, i = divmod(int(k), self.batches_per_sampler_epoch)
            positions = self._positions(e, i)
        ids = [self.ids[p] for p in positions]
        shown = ", ".join(repr(s) for s in ids[:8]) + (f", ... ({len(ids)} in all)" if len(ids) > 8 else "")
        return f"batch {index} of epoch {epoch} of partition {self.partition!r} (sample IDs {shown})"

    # ------------------------------------------------------------- position
    @property
    def epoch(self) -> int:
        """The ``fit`` epoch the generator serves: ``self[i]`` is global batch ``epoch * len(self) + i``.

        Setting it (as `EpochSync` does) moves the generator there.
        """
        return self._epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        value = check_int(value, "epoch", minimum=0)
        with self._lock:
            self._epoch = value
            self._reset_window()

    def _reset_window(self) -> None:
        self._window_complete = False  # the window's last batch was asked for
        self._served_since_end = False  # a batch was asked for since the last on_epoch_end
        self._in_epoch = False  # on_epoch_begin was called since the last on_epoch_end
        self._bare_advance = False  # the last move came from an on_epoch_end without on_epoch_begin

    def on_epoch_begin(self) -> None:
        """Called by Keras (and by loops) at the start of each epoch.

        An ``on_epoch_end`` that came without an ``on_epoch_begin`` before it
        and is followed by this call with no batch asked for in between is
        Keras' reset before an epoch (after its shape peek): that move is
        taken back.
        """
        with self._lock:
            if self._bare_advance and not self._served_since_end:
                self._epoch -= 1
            self._bare_advance = False
            self._in_epoch = True

    def on_epoch_end(self) -> None:
        """Called by Keras (and by loops) after each epoch: moves to the next window if this one was served.

        The position moves when the current window's last batch
        (``self[len(self) - 1]``) has been asked for; other calls (Keras'
        reset and shape peeks, an epoch cut short) leave it. To move without
        serving, set `epoch`.
        """
        with self._lock:
            bare = not self._in_epoch
            self._in_epoch = False
            if not self._window_complete:
                return
            self._epoch += 1
            self._window_complete = False
            self._served_since_end = False
            self._bare_advance = bare
        if self._prefetcher is not None:
            self._prefetcher.release_when_idle(IDLE_RELEASE_SECONDS)

    # ------------------------------------------------------------- inspection
    def epoch_order(self, epoch: int | None = None) -> np.ndarray:
        """Positions (into `ids`) visited in sampler epoch ``epoch``, in order.

        Defaults to the sampler epoch of the current ``fit`` epoch's first batch.
        """
        if epoch is None:
            epoch = self._epoch * self.steps_per_epoch // self.batches_per_sampler_epoch
        return self._plan(int(epoch)).positions

    def _plan(self, epoch: int) -> _EpochPlan:
        """Sampler epoch ``epoch``'s positions and store rows (the last epoch's is kept)."""
        plan = self._plan_cache
        if plan is not None and plan.epoch == epoch:
            return plan
        rows = self._rows
        if rows is None:
            rows = self._rows = self._store.rows(self.ids)
        positions = self.sampler.indices(epoch)
        plan = _EpochPlan(epoch, positions, rows[positions])
        self._plan_cache = plan  # a race here only recomputes the same value
        return plan

    def batch_positions(self, index: int, epoch: int | None = None) -> np.ndarray:
        """Positions (into `ids`) of batch ``index`` of ``fit`` epoch ``epoch`` (default: the current one)."""
        return self._batch_positions(index, epoch)

    def _batch_positions(self, index: int, epoch: int | None = None) -> np.ndarray:
        index = self._check_index(index)
        fit_epoch = self._epoch if epoch is None else check_int(epoch, "epoch", minimum=0)
        e, i = divmod(fit_epoch * self.steps_per_epoch + index, self.batches_per_sampler_epoch)
        return self._positions(e, i)

    def batch_ids(self, index: int, epoch: int | None = None) -> list[str]:
        """Sample IDs of batch ``index`` of ``fit`` epoch ``epoch`` (default: the current one)."""
        return [self.ids[p] for p in self._batch_positions(index, epoch)]

    def oob_ids(self, epoch: int | None = None) -> list[str]:
        """Out-of-bag sample IDs of sampler epoch ``epoch`` (default as `epoch_order`): those not drawn.

        Raises:
            SamplingError: If the generator does not bootstrap.
        """
        if not isinstance(self.sampler, BootstrapSampler):
            raise SamplingError(f"`oob_ids` needs sampling='bootstrap'. Received: sampling={self.sampling!r}")
        if epoch is None:
            epoch = self._epoch * self.steps_per_epoch // self.batches_per_sampler_epoch
        return [self.ids[p] for p in self.sampler.oob(int(epoch))]

    # ------------------------------------------------------------- resuming
    def state_dict(self) -> dict[str, Any]:
        """The generator's position, JSON-ready.

        Keys: ``epoch`` (the next ``fit`` epoch to serve), and ``seed``,
        ``sampling``, ``balance``, ``batch_size``, ``num_batches`` (per fit
        epoch), ``batches_per_sampler_epoch``, ``partition`` (checked on loading).

        A generator built with the same arguments and ``state=`` this dict (or
        `load_state_dict`) serves exactly the batches this one serves next.
        """
        return {"epoch": int(self._epoch), "seed": self.seed, "sampling": self.sampling, "balance": self.balance,
                "batch_size": self.batch_size, "num_batches": self.num_batches,
                "batches_per_sampler_epoch": self.batches_per_sampler_epoch, "partition": self.partition}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at ``state["epoch"]`` (see `state_dict`).

        Raises:
            SamplingError: If ``state`` has no valid epoch, or was saved by a
                generator with another seed, sampling, batch size or number
                of batches (its batches would differ).
        """
        epoch = state.get("epoch") if isinstance(state, Mapping) else None
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise SamplingError(f"`state` must hold an `epoch` >= 0 (see `state_dict()`). Received: state={state!r}")
        for key in ("seed", "sampling", "balance", "batch_size", "num_batches", "batches_per_sampler_epoch",
                    "partition"):
            if key in state and state[key] != getattr(self, key):
                raise SamplingError(
                    f"`state` was saved by a generator with {key}={state[key]!r}, this one has "
                    f"{key}={getattr(self, key)!r}; resuming would serve other batches. Build the generator "
                    f"with the same arguments. Received: state={dict(state)!r}"
                )
        self.epoch = int(epoch)

    # ------------------------------------------------------------- resources
    def close(self) -> None:
        """Stop the prefetch pool and release the store's files and cache; a later batch reopens them."""
        if self._prefetcher is not None:
            self._prefetcher.close()
        self.store.close()
        self._plan_cache = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- pickling: the recipe
    def __getstate__(self) -> dict[str, Any]:
        """The recipe (manifest path or object, and the arguments) and the position; no data, pool or cache."""
        return {"recipe": self._recipe, "epoch": self._epoch}

    def __setstate__(self, state: dict[str, Any]) -> None:
        recipe = state["recipe"]
        keras.utils.PyDataset.__init__(self, workers=1, use_multiprocessing=False,
                                       max_queue_size=recipe["prefetch"].max_queue_size)
        self._setup(recipe, epoch=state["epoch"], warn=False)

    def __repr__(self) -> str:
        dropped = f", dropped_per_epoch={self.num_dropped}" if self.drop_remainder else ""
        sharded = f", shard={self.shard_index} of {self.num_shards}" if self.num_shards > 1 else ""
        return (
            f"DataGenerator(partition={self.partition!r}, num_samples={len(self.ids)}, "
            f"batch_size={self.batch_size}, num_batches={self.num_batches}, sampling={self.sampling!r}, "
            f"weights={self.yields_weights}, seed={self.seed}, epoch={self.epoch}{dropped}{sharded})"
        )


class EpochSync(keras.callbacks.Callback):
    """Keeps generators on `fit`'s epoch: sets ``generator.epoch = epoch`` at each epoch's start.

    Needed when `fit` starts at an epoch the generator does not know, as
    after Keras' `BackupAndRestore` restores an interrupted run: the resumed
    run then serves exactly the batches of an uninterrupted one. Keras calls
    callbacks' ``on_epoch_begin`` before it reads the epoch's first batch.
    It also refuses a `fit` whose ``steps_per_epoch`` differs from
    ``len(generator)`` (give ``steps_per_epoch`` to the generator instead).

    Args:
        *generators: The `DataGenerator` objects to keep in step (train;
            validation is sequential and needs none).

    Raises:
        ArgumentError: At the start of `fit`, if its ``steps_per_epoch``
            differs from a generator's length.

    Example:
        >>> model.fit(train, epochs=10, shuffle=False,
        ...           callbacks=[keras.callbacks.BackupAndRestore("backup"), EpochSync(train)])
    """

    def __init__(self, *generators: DataGenerator) -> None:
        super().__init__()
        self.generators = generators

    def on_train_begin(self, logs: dict | None = None) -> None:
        steps = (self.params or {}).get("steps")
        for g in self.generators:
            if steps is not None and steps != len(g):
                raise ArgumentError(
                    f"`fit` runs {steps} steps per epoch over a generator of {len(g)} batches per epoch, so its "
                    "epochs and the generator's would drift apart. Give the generator the epoch length: "
                    f"DataGenerator(..., steps_per_epoch={steps}), and call fit without steps_per_epoch. "
                    f"Received: steps_per_epoch={steps}"
                )

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        for g in self.generators:
            g.epoch = int(epoch)


# ------------------------------------------------------------------ argument groups
def _source(manifest: Any, partition: str, classic: dict[str, Any]) -> dict[str, Any]:
    """Where the manifest comes from: a file (path + fingerprint, loaded here) or an in-memory `Manifest`."""
    if classic.get("list_IDs") is not None:
        if manifest is not None:
            raise ArgumentError("Pass either `manifest` or `list_IDs` (with `labels` and `data_dir`), not both.")
        return {"manifest": _manifest_from_ids(partition=partition, **classic)}
    given = [k for k in ("labels", "data_dir", "num_classes") if classic.get(k) is not None]
    if given:
        raise ArgumentError(f"`{given[0]}` goes with `list_IDs` (the classic form). Received: {given[0]}="
                            f"{classic[given[0]]!r} without list_IDs")
    if manifest is None:
        raise ArgumentError("`DataGenerator` needs a `manifest`, or `list_IDs` with `labels` and `data_dir`.")
    if isinstance(manifest, Manifest):
        return {"manifest": manifest}
    if not isinstance(manifest, (str, os.PathLike)):
        raise ArgumentError(f"`manifest` must be a Manifest or the path of manifest.json. Received: manifest="
                            f"{manifest!r}")
    path = Path(manifest)
    if path.is_dir():
        path = path / MANIFEST_NAME
    loaded, fingerprint = _load_manifest_file(path)
    return {"path": str(loaded.path), "fingerprint": fingerprint, "loaded": loaded}


def _fingerprint(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _load_manifest_file(path: Path) -> tuple[Manifest, tuple[int, int, int]]:
    """Load ``manifest.json`` and the (size, mtime, inode) it had while read."""
    before = _fingerprint(path) if path.is_file() else None
    manifest = load_manifest(path)  # ManifestError when missing or invalid
    after = _fingerprint(manifest.path)
    if before != after:
        raise ManifestError(f"{manifest.path} changed while it was read. Build the generator again.")
    return manifest, after


def _load_source(source: dict[str, Any]) -> Manifest:
    if "manifest" in source:
        return source["manifest"]
    loaded = source.pop("loaded", None)
    if loaded is not None:  # the constructor's own load
        return loaded
    manifest, fingerprint = _load_manifest_file(Path(source["path"]))
    if fingerprint != tuple(source["fingerprint"]):
        raise ManifestError(
            f"{source['path']} changed after the generator was built (it was re-prepared or edited), so this "
            "process would read other samples than the generator's own. Build the generator again."
        )
    return manifest


def _sampler_options(partition: str, sampler: Any, batch_size: int | None, seed: Any, shuffle: Any,
                     shortcuts: dict[str, Any]) -> Sampler:
    """The generator's sampler (unbound, or bound by the user): the one owner of seed and batch size."""
    if isinstance(shortcuts.get("sampling"), Sampler):
        if sampler is not None:
            raise SamplingError("Pass the sampler once, as `sampler=` (or the older `sampling=`), not both.")
        sampler, shortcuts = shortcuts["sampling"], {**shortcuts, "sampling": None}
    if sampler is None:
        sampling = shortcuts["sampling"]
        if shuffle is not None:
            shuffle = check_bool(shuffle, "shuffle", error=SamplingError)
        if sampling is None:
            sampling = "shuffle" if ((partition == "train") if shuffle is None else shuffle) else "sequential"
        elif shuffle is not None and shuffle != (sampling != "sequential"):
            raise SamplingError(
                f"`shuffle={shuffle}` contradicts sampling={sampling!r}; leave `shuffle` unset when passing "
                f"`sampling`. Received: shuffle={shuffle!r}, sampling={sampling!r}"
            )
        return sampler_from_options(
            sampling, seed=0 if seed is None else seed, batch_size=batch_size or DEFAULT_BATCH_SIZE,
            balance=shortcuts["balance"], samples_per_epoch=shortcuts["samples_per_epoch"],
            target_distribution=shortcuts["target_distribution"])
    if not isinstance(sampler, Sampler):
        raise SamplingError(f"`sampler` must be a kpipe.sampling.Sampler, e.g. BalancedSampler(batch_size=32). "
                            f"Received: sampler={sampler!r}")
    extra = [k for k, v in (("shuffle", shuffle), *shortcuts.items()) if v is not None]
    if extra:
        raise SamplingError(
            f"With a sampler, set its options on the sampler, not on the generator. Received: {extra[0]}="
            f"{(shuffle if extra[0] == 'shuffle' else shortcuts[extra[0]])!r} and sampler={sampler!r}"
        )
    if seed is not None and check_seed_value(seed) != sampler.seed:
        raise SamplingError(
            f"The sampler is seeded {sampler.seed} and owns the seed; the generator was given seed={seed}. "
            f"Build the sampler with seed={seed}, or leave the generator's `seed` unset."
        )
    if sampler.batch_size is None:
        return dataclasses.replace(sampler, batch_size=batch_size or DEFAULT_BATCH_SIZE)
    if batch_size is not None and batch_size != sampler.batch_size:
        raise SamplingError(
            f"The sampler plans batches of {sampler.batch_size} and owns the batch size; the generator was given "
            f"batch_size={batch_size}. Build both with the same batch_size, or leave the generator's unset."
        )
    return sampler


def _weight_options(weights: Any, shortcuts: dict[str, Any]) -> SampleWeights:
    if weights is None:
        return SampleWeights(**shortcuts)
    if not isinstance(weights, SampleWeights):
        raise WeightError(f"`weights` must be a kpipe.weights.SampleWeights. Received: weights={weights!r}")
    if shortcuts:
        name = next(iter(shortcuts))
        raise WeightError(f"Set the weight options once: on `weights=` or as keywords, not both. "
                          f"Received: weights={weights!r} and {name}={shortcuts[name]!r}")
    return weights


def _check_dtype(dtype: Any) -> str:
    try:
        return np.dtype(dtype).name
    except TypeError:
        raise ArgumentError(f"`dtype` must be a NumPy dtype such as 'float32'. Received: dtype={dtype!r}") from None


def _check_transform(transform: Any) -> Callable[..., Any] | None:
    if transform is not None and not callable(transform):
        raise ArgumentError(f"`transform` must be a callable fn(x, y, rng). Received: transform={transform!r}")
    return transform


def _manifest_from_ids(list_IDs, labels, data_dir, num_classes, partition) -> Manifest:
    """An in-memory manifest for the classic ``(list_IDs, labels, data_dir)`` form."""
    if labels is None or data_dir is None:
        raise ArgumentError("With `list_IDs`, pass `labels` (ID -> class index) and `data_dir` too.")
    ids = [str(i) for i in list_IDs]
    if not ids:
        raise ArgumentError("`list_IDs` is empty; there is nothing to iterate.")
    missing = [i for i in ids if i not in labels]
    if missing:
        raise ArgumentError(f"`labels` has no label for {len(missing)} of `list_IDs`, e.g. {missing[0]!r}.")
    values = {i: labels[i] for i in ids}
    for i, v in values.items():
        check_int(v, f"labels[{i!r}]", minimum=0)
    n_classes = (check_positive_int(num_classes, "num_classes") if num_classes is not None
                 else int(max(values.values())) + 1)
    data_dir = Path(data_dir)
    first = data_dir / f"{ids[0]}.npy"
    try:
        probe = np.load(first, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ArgumentError(f"Cannot read the first sample {first}: {e}") from e
    return Manifest(
        classes=[str(c) for c in range(n_classes)],
        labels={i: int(v) for i, v in values.items()},
        partition={partition: ids},
        sample_shape=probe.shape,
        sample_dtype=probe.dtype.name,
        storage={"format": "npy", "root": str(data_dir.resolve())},
    )
