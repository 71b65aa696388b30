"""`DataGenerator`: a `keras.utils.PyDataset` over a prepared dataset."""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kpipe.errors import ArgumentError, KpipeError
from kpipe.manifest import Manifest, load_manifest
from kpipe.sampling import SAMPLERS, STREAM_AUGMENT, BootstrapSampler, Sampler, SamplingError, epoch_rng, make_sampler
from kpipe.storage import open_store
from kpipe.storage.base import Store

LABEL_MODES = ("int", "categorical", "binary", None)


class DataGenerator(keras.utils.PyDataset):
    """Batches ``(x, y)`` or ``(x, y, sample_weight)`` of one partition of a prepared dataset, for `model.fit`.

    An epoch's order is a pure function of ``(seed, epoch)`` (see
    `kpipe.sampling`): batch ``i`` of epoch ``e`` is the same whichever
    thread or process makes it, so ``workers > 1`` and
    ``use_multiprocessing=True`` produce exactly the batches of a single
    process, and so does a generator resumed at epoch ``e``
    (``initial_epoch=e``, `load_state_dict`, or `EpochSync` with Keras'
    `BackupAndRestore`). `on_epoch_end` moves to the next epoch. Pass
    ``shuffle=False`` to `model.fit`: the generator owns the shuffling
    (Keras' own only reorders whole batches).

    Batches are ``(x, y)``; with any weight configured (``class_weight``,
    ``condition_weights``, ``use_sample_weights``) they are ``(x, y,
    sample_weight)``, ``sample_weight`` float32 of shape ``(batch,)``, the
    product of the configured factors (see `kpipe.weights`), computed from
    class indices whatever ``label_mode``. Do not also pass ``class_weight``
    to `fit` (Keras refuses both; `kpipe.weights.check_fit_class_weight`).

    ``len(generator)`` is ``ceil(epoch_size / batch_size)`` (``floor`` with
    ``drop_remainder``), fixed for the generator's life; ``epoch_size`` is:
    the partition size for ``"shuffle"``, ``"sequential"`` and
    ``"bootstrap"`` (or ``samples_per_epoch``); for ``"balanced"``
    ``num_classes x smallest class count`` (``"undersample"``),
    ``num_classes x largest class count`` (``"oversample"``) or
    ``samples_per_epoch``.

    Two ways to build one:

    * from a manifest: ``DataGenerator("prepared/manifest.json", "train")``;
    * as the classic Keras ``DataGenerator`` (per-ID ``.npy`` files):
      ``DataGenerator(list_IDs=ids, labels={id: class_index}, data_dir="data/")``.

    Args:
        manifest: A `Manifest`, or the path of ``manifest.json`` (or its folder).
        partition: ``"train"``, ``"validation"`` or ``"test"``. Defaults to ``"train"``.
        list_IDs: Sample IDs, instead of a manifest (classic layout).
        labels: Sample ID -> class index (int), with ``list_IDs``.
        data_dir: Folder of ``<ID>.npy`` files, with ``list_IDs``.
        num_classes: Number of classes, with ``list_IDs``; defaults to
            ``max(label) + 1``.
        batch_size: Samples per batch (positive int). Defaults to 32.
        shuffle: New random order every epoch (``sampling="shuffle"``) or
            manifest order (``"sequential"``). Defaults to `True` for
            ``"train"`` and `False` otherwise. Leave it `None` when passing
            ``sampling``.
        seed: Seed of the sampling and of the ``transform`` generator (int).
            Defaults to 0.
        label_mode: ``"int"``: ``y`` int32 of shape ``(batch,)``;
            ``"categorical"``: one-hot float32 ``(batch, num_classes)``;
            ``"binary"``: float32 0/1 of shape ``(batch, 1)`` (two classes only);
            `None`: no labels, batches are ``(x,)``. Defaults to ``"int"``.
        rescale: Factor applied to ``x`` after the cast, e.g. ``1/255`` for
            uint8 images. Defaults to `None` (no scaling).
        dtype: Dtype of ``x``. Defaults to ``"float32"``.
        drop_remainder: Drop the last, partial batch. Defaults to `False`: the
            partial batch is served.
        initial_epoch: Epoch the generator starts at (to resume a run).
        sampling: ``"shuffle"``, ``"sequential"``, ``"balanced"``,
            ``"bootstrap"`` (see `kpipe.sampling`), or a `Sampler` built for
            this partition. Defaults to ``shuffle``'s choice.
        balance: With ``"balanced"``: ``"undersample"`` (default) or
            ``"oversample"``; with ``"bootstrap"``: ``"none"`` (default),
            ``"stratified"`` (keep each class's count) or ``"balanced"``
            (the same count per class).
        samples_per_epoch: Epoch size for ``"balanced"`` / ``"bootstrap"``
            (default: from ``balance``).
        target_distribution: With ``"balanced"``: class name (or index) ->
            share, e.g. ``{"cat": 0.5, "dog": 0.25, "bird": 0.25}``, instead
            of uniform.
        class_weight: ``"balanced"`` (``n_samples / (n_classes * count)``
            over this partition, scikit-learn's ``compute_class_weight``), or
            class name (or index) -> weight. Defaults to `None`.
        condition_weights: Class name (or index) -> factor multiplying the
            weight of that class's samples. Defaults to `None`.
        use_sample_weights: Multiply by the manifest's per-sample weights
            (``kpipe prepare --weight-column`` / ``--weights``). Defaults to `False`.
        transform: ``fn(x_batch, y_batch, rng) -> (x_batch, y_batch)`` (or
            just ``x_batch``), applied after the cast and rescale; ``rng`` is
            a `np.random.Generator` from ``(seed, epoch, batch index)``: the
            same augmentation whichever worker makes the batch and on a rerun,
            different across batches and epochs. Must pickle (a module-level
            function) for ``use_multiprocessing=True``. Defaults to `None`.
        state: A `state_dict` to resume from (instead of ``initial_epoch``).
        workers: As `keras.utils.PyDataset`: number of threads or processes
            making batches. Defaults to 1.
        use_multiprocessing: As `keras.utils.PyDataset`: processes, not
            threads. Defaults to `False`.
        max_queue_size: As `keras.utils.PyDataset`: batches (not samples) kept
            ready ahead. Defaults to 10.
        cache: `None` (read from storage every batch) or ``"memory"``: load
            the partition into RAM once, here (it must fit). Defaults to `None`.

    Raises:
        ArgumentError: On an invalid argument (the message names it; a `ValueError`).
        SamplingError: On an invalid sampling option, or a class to balance
            that has no sample in the partition (named).
        WeightError: On an invalid weight (unknown class key, negative, NaN
            or infinite value, missing per-sample weights).
        ManifestError: If the manifest cannot be read or the partition is unknown.

    Example:
        >>> train = DataGenerator("prepared/manifest.json", "train", batch_size=64, rescale=1 / 255)
        >>> x, y = train[0]
        >>> x.shape, x.dtype, y.shape
        ((64, 8, 8, 1), dtype('float32'), (64,))
        >>> model.fit(train, epochs=5, shuffle=False)
        >>> balanced = DataGenerator("prepared/manifest.json", "train", sampling="balanced",
        ...                          balance="oversample", condition_weights={"7": 2.0})
        >>> x, y, w = balanced[0]  # w: float32 (32,)
    """

    def __init__(
        self,
        manifest: Manifest | str | os.PathLike | None = None,
        partition: str = "train",
        *,
        list_IDs: Sequence[str] | None = None,  # noqa: N803 - the classic name
        labels: Mapping[str, int] | None = None,
        data_dir: str | os.PathLike | None = None,
        num_classes: int | None = None,
        batch_size: int = 32,
        shuffle: bool | None = None,
        seed: int = 0,
        label_mode: str | None = "int",
        rescale: float | None = None,
        dtype: str = "float32",
        drop_remainder: bool = False,
        initial_epoch: int = 0,
        sampling: str | Sampler | None = None,
        balance: str | None = None,
        samples_per_epoch: int | None = None,
        target_distribution: Mapping[str, float] | Sequence[float] | str | None = None,
        class_weight: str | Mapping[Any, float] | Sequence[float] | None = None,
        condition_weights: Mapping[Any, float] | str | None = None,
        use_sample_weights: bool = False,
        transform: Callable[..., Any] | None = None,
        state: Mapping[str, Any] | None = None,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
        cache: str | None = None,
    ) -> None:
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ArgumentError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
        if label_mode not in LABEL_MODES:
            raise ArgumentError(
                f"`label_mode` must be one of 'int', 'categorical', 'binary' or None. Received: label_mode={label_mode!r}"
            )
        if not isinstance(seed, (int, np.integer)):
            raise ArgumentError(f"`seed` must be an integer. Received: seed={seed!r}")
        if rescale is not None and not (isinstance(rescale, (int, float)) and math.isfinite(rescale)):
            raise ArgumentError(f"`rescale` must be a finite number or None. Received: rescale={rescale!r}")
        if initial_epoch < 0:
            raise ArgumentError(f"`initial_epoch` must be >= 0. Received: initial_epoch={initial_epoch!r}")

        if list_IDs is not None:
            if manifest is not None:
                raise ArgumentError("Pass either `manifest` or `list_IDs` (with `labels` and `data_dir`), not both.")
            manifest = _manifest_from_ids(list_IDs, labels, data_dir, num_classes, partition)
        elif manifest is None:
            raise ArgumentError("`DataGenerator` needs a `manifest`, or `list_IDs` with `labels` and `data_dir`.")
        self.manifest = load_manifest(manifest)
        self.partition = partition
        self.ids = self.manifest.ids(partition)
        if not self.ids:
            raise KpipeError(
                f"Partition {partition!r} of {self.manifest.path or 'the manifest'} is empty; "
                "there is nothing to iterate. Prepare with a split that gives it samples."
            )
        self.num_classes = self.manifest.num_classes
        if label_mode == "binary" and self.num_classes != 2:
            raise ArgumentError(
                f"`label_mode='binary'` needs exactly 2 classes; this dataset has {self.num_classes}. "
                "Use label_mode='int' or 'categorical'."
            )
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.label_mode = label_mode
        self.rescale = rescale
        self.dtype = np.dtype(dtype)
        self.drop_remainder = bool(drop_remainder)
        self.epoch = int(initial_epoch)
        self.labels = self.manifest.label_array(self.ids)
        # --- sampling, weights, transform (issue 4)
        self.sampler: Sampler = self._make_sampler(partition, shuffle, sampling, balance, samples_per_epoch,
                                                   target_distribution)
        self.sampling = _SAMPLER_NAMES.get(type(self.sampler), type(self.sampler).__name__)
        self.shuffle = self.sampling != "sequential"
        self.balance = _balance_of(self.sampler)
        if transform is not None and not callable(transform):
            raise ArgumentError(f"`transform` must be a callable fn(x, y, rng). Received: transform={transform!r}")
        self.transform = transform
        self.sample_weights, self.weight_details = self._make_weights(class_weight, condition_weights,
                                                                      use_sample_weights)
        if self.sample_weights is not None and label_mode is None:
            raise ArgumentError("Sample weights need labels: batches would be (x, None, w). "
                             "Use label_mode='int' (or another) with class_weight / condition_weights / "
                             "use_sample_weights.")
        if class_weight == "balanced" and (self.sampling == "balanced" or self.balance == "balanced"):
            warnings.warn(
                f"sampling={self.sampling!r} already balances the classes, and class_weight='balanced' "
                "corrects for the imbalance a second time (the rare classes end up over-weighted). "
                "Use one of the two.",
                stacklevel=2,
            )
        if state is not None:
            self.load_state_dict(state)
        self.store: Store = open_store(self.manifest, cache=cache, ids=self.ids)
        if cache == "memory" and use_multiprocessing and multiprocessing.get_start_method() != "fork":
            warnings.warn(
                f"cache='memory' with use_multiprocessing=True under the {multiprocessing.get_start_method()!r} "
                "start method: each worker process reloads the partition (Keras starts new workers every "
                "epoch). Use threads (use_multiprocessing=False), which share the cache, or the 'fork' start method.",
                stacklevel=2,
            )
        if self.drop_remainder and self.sampler.epoch_size < self.batch_size:
            raise ArgumentError(
                f"`drop_remainder=True` with batch_size={self.batch_size} leaves no batch: partition "
                f"{partition!r} has {self.sampler.epoch_size} samples per epoch."
            )
        self._order_cache: tuple[int, np.ndarray] | None = None

    # ------------------------------------------------------------- PyDataset
    @property
    def num_batches(self) -> int:
        """Batches per epoch: ``ceil(n / batch_size)``, or ``floor`` with `drop_remainder`."""
        n = self.sampler.epoch_size
        return n // self.batch_size if self.drop_remainder else -(-n // self.batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def epoch_order(self, epoch: int | None = None) -> np.ndarray:
        """Positions (into `ids`) visited in ``epoch`` (default: the current one), in order."""
        epoch = self.epoch if epoch is None else int(epoch)
        cached = self._order_cache
        if cached is not None and cached[0] == epoch:
            return cached[1]
        order = self.sampler.indices(epoch)
        self._order_cache = (epoch, order)  # a race here only recomputes the same value
        return order

    def batch_ids(self, index: int, epoch: int | None = None) -> list[str]:
        """Sample IDs of batch ``index`` of ``epoch`` (default: the current one)."""
        return [self.ids[p] for p in self._batch_positions(index, epoch)]

    def _batch_positions(self, index: int, epoch: int | None = None) -> np.ndarray:
        if not 0 <= index < self.num_batches:
            raise IndexError(f"Batch index {index} is out of range for {self.num_batches} batches.")
        order = self.epoch_order(epoch)
        return order[index * self.batch_size : (index + 1) * self.batch_size]

    def __getitem__(self, index: int):
        positions = self._batch_positions(int(index))
        ids = [self.ids[p] for p in positions]
        raw = self.store.read_many(ids)
        x = raw.astype(self.dtype, copy=raw.dtype != self.dtype)
        if self.rescale is not None:
            x *= self.dtype.type(self.rescale)
        y = None if self.label_mode is None else self._encode(self.labels[positions])
        if self.transform is not None:
            x, y = self._apply_transform(x, y, int(index))
        if y is None:
            return (x,)
        if self.sample_weights is None:
            return x, y
        return x, y, self.sample_weights[positions]

    def _apply_transform(self, x: np.ndarray, y: np.ndarray | None, index: int):
        rng = epoch_rng(self.seed, self.epoch, STREAM_AUGMENT, index)
        out = self.transform(x, y, rng)
        if isinstance(out, tuple):
            if len(out) != 2:
                raise ArgumentError(
                    f"`transform` must return x_batch or (x_batch, y_batch). Received: a tuple of {len(out)} items"
                )
            return out
        return out, y

    def _encode(self, y: np.ndarray) -> np.ndarray:
        if self.label_mode == "int":
            return y.astype(np.int32)
        if self.label_mode == "categorical":
            onehot = np.zeros((len(y), self.num_classes), dtype=np.float32)
            onehot[np.arange(len(y)), y] = 1.0
            return onehot
        return y.astype(np.float32)[:, None]  # binary

    def on_epoch_end(self) -> None:
        """Move to the next epoch's order (called by Keras after each epoch).

        Keras 3's `fit` also calls this once *before* the first epoch (its
        ``EpochIterator.reset()`` after reading batches 0 and 1 to infer
        shapes); that call is ignored, so that epoch ``e`` of `fit` is epoch
        ``e`` of the generator, as in a hand-written loop.
        """
        if _called_by_keras_reset():
            return
        self.epoch += 1

    # ------------------------------------------------- sampling and weights (issue 4)
    def _make_sampler(self, partition, shuffle, sampling, balance, samples_per_epoch, target_distribution) -> Sampler:
        if isinstance(sampling, Sampler):
            if sampling.num_samples != len(self.ids):
                raise SamplingError(
                    f"The sampler covers {sampling.num_samples} positions, but partition {partition!r} has "
                    f"{len(self.ids)} samples. Build it from this partition's labels. "
                    f"Received: sampling={sampling!r}"
                )
            if getattr(sampling, "batch_size", self.batch_size) != self.batch_size:
                raise SamplingError(
                    f"The sampler plans batches of {sampling.batch_size}, the generator's batch_size is "
                    f"{self.batch_size}. Build both with the same batch_size."
                )
            if any(v is not None for v in (shuffle, balance, samples_per_epoch, target_distribution)):
                raise SamplingError("With a `Sampler` as `sampling`, set its options on the sampler, not on "
                                    "the generator (shuffle, balance, samples_per_epoch, target_distribution).")
            return sampling
        if sampling is None:
            sampling = "shuffle" if ((partition == "train") if shuffle is None else shuffle) else "sequential"
        elif shuffle is not None and bool(shuffle) != (sampling != "sequential"):
            raise SamplingError(
                f"`shuffle={shuffle}` contradicts sampling={sampling!r}; leave `shuffle` unset when passing "
                f"`sampling`. Received: shuffle={shuffle!r}, sampling={sampling!r}"
            )
        return make_sampler(sampling, labels=self.labels, classes=self.manifest.classes,
                            batch_size=self.batch_size, seed=self.seed, balance=balance,
                            samples_per_epoch=samples_per_epoch, target_distribution=target_distribution)

    def _make_weights(self, class_weight, condition_weights, use_sample_weights):
        from kpipe.weights import compute_sample_weights, manifest_sample_weights

        per_sample = manifest_sample_weights(self.manifest, self.ids) if use_sample_weights else None
        return compute_sample_weights(self.labels, self.manifest.classes, class_weight=class_weight,
                                      condition_weights=condition_weights, per_sample=per_sample)

    @property
    def yields_weights(self) -> bool:
        """True if batches are ``(x, y, sample_weight)``."""
        return self.sample_weights is not None

    def oob_ids(self, epoch: int | None = None) -> list[str]:
        """Out-of-bag sample IDs of ``epoch`` (default: the current one): those the bootstrap did not draw.

        Raises:
            SamplingError: If the generator does not bootstrap.
        """
        if not isinstance(self.sampler, BootstrapSampler):
            raise SamplingError(
                f"`oob_ids` needs sampling='bootstrap'. Received: sampling={self.sampling!r}"
            )
        epoch = self.epoch if epoch is None else int(epoch)
        return [self.ids[p] for p in self.sampler.oob(epoch)]

    # ------------------------------------------------------------- resuming
    def state_dict(self) -> dict[str, Any]:
        """The generator's position, JSON-ready.

        Keys: ``epoch`` (the next epoch to serve), and ``seed``, ``sampling``,
        ``balance``, ``num_batches``, ``partition`` (checked on loading).

        A generator built with the same arguments and ``state=`` this dict (or
        `load_state_dict`) serves exactly the batches this one serves next.
        """
        return {"epoch": int(self.epoch), "seed": self.seed, "sampling": self.sampling, "balance": self.balance,
                "num_batches": self.num_batches, "partition": self.partition}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at ``state["epoch"]`` (see `state_dict`).

        Raises:
            SamplingError: If ``state`` has no valid epoch, or was saved by a
                generator with another seed, sampling or number of batches
                (its batches would differ).
        """
        epoch = state.get("epoch") if isinstance(state, Mapping) else None
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise SamplingError(f"`state` must hold an `epoch` >= 0 (see `state_dict()`). Received: state={state!r}")
        for key in ("seed", "sampling", "balance", "num_batches", "partition"):
            if key in state and state[key] != getattr(self, key):
                raise SamplingError(
                    f"`state` was saved by a generator with {key}={state[key]!r}, this one has "
                    f"{key}={getattr(self, key)!r}; resuming would serve other batches. Build the generator "
                    f"with the same arguments. Received: state={dict(state)!r}"
                )
        self.epoch = int(epoch)

    # ------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_order_cache"] = None
        return state

    def __repr__(self) -> str:
        return (
            f"DataGenerator(partition={self.partition!r}, num_samples={len(self.ids)}, "
            f"batch_size={self.batch_size}, num_batches={self.num_batches}, sampling={self.sampling!r}, "
            f"weights={self.yields_weights}, seed={self.seed}, epoch={self.epoch})"
        )


_SAMPLER_NAMES: dict[type, str] = {cls: name for name, cls in SAMPLERS.items()}
"""Sampler class -> sampling mode name (`DataGenerator.sampling`)."""


def _balance_of(sampler: Sampler) -> str | None:
    """The normalized ``balance`` of a sampler (`None` for shuffle and sequential)."""
    if isinstance(sampler, BootstrapSampler):
        return "stratified" if sampler.stratified else "balanced" if sampler.balanced else "none"
    return getattr(sampler, "balance", None)


class EpochSync(keras.callbacks.Callback):
    """Keeps generators on `fit`'s epoch: sets ``generator.epoch = epoch`` at each epoch's start.

    Needed when `fit` starts at an epoch the generator does not know, as
    after Keras' `BackupAndRestore` restores an interrupted run: the resumed
    run then serves exactly the batches of an uninterrupted one. Keras calls
    callbacks' ``on_epoch_begin`` before it starts the epoch's workers, so
    threads and processes see the new epoch.

    Args:
        *generators: The `DataGenerator` objects to keep in step (train;
            validation is sequential and needs none).

    Example:
        >>> model.fit(train, epochs=10, shuffle=False,
        ...           callbacks=[keras.callbacks.BackupAndRestore("backup"), EpochSync(train)])
    """

    def __init__(self, *generators: DataGenerator) -> None:
        super().__init__()
        self.generators = generators

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        for g in self.generators:
            g.epoch = int(epoch)


def _called_by_keras_reset(max_depth: int = 8) -> bool:
    """True if the current `on_epoch_end` call comes from Keras' ``EpochIterator.reset``."""
    frame = sys._getframe(2)
    for _ in range(max_depth):
        if frame is None:
            return False
        code = frame.f_code
        if code.co_name == "reset" and code.co_filename.endswith("epoch_iterator.py"):
            return True
        frame = frame.f_back
    return False


def _manifest_from_ids(list_IDs, labels, data_dir, num_classes, partition) -> Manifest:  # noqa: N803
    """An in-memory manifest for the classic ``(list_IDs, labels, data_dir)`` form."""
    if labels is None or data_dir is None:
        raise ArgumentError("With `list_IDs`, pass `labels` (ID -> class index) and `data_dir` too.")
    ids = [str(i) for i in list_IDs]
    missing = [i for i in ids if i not in labels]
    if missing:
        raise ArgumentError(f"`labels` has no label for {len(missing)} of `list_IDs`, e.g. {missing[0]!r}.")
    values = {i: labels[i] for i in ids}
    bad = [i for i, v in values.items() if not isinstance(v, (int, np.integer)) or v < 0]
    if bad:
        raise ArgumentError(
            f"`labels` must map IDs to class indices (ints >= 0). Received: labels[{bad[0]!r}]={values[bad[0]]!r}"
        )
    n_classes = int(num_classes) if num_classes is not None else int(max(values.values())) + 1
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
