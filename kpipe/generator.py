"""`DataGenerator`: a `keras.utils.PyDataset` over a prepared dataset."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kpipe.errors import KpipeError
from kpipe.manifest import Manifest, load_manifest
from kpipe.sampling import SAMPLERS, Sampler
from kpipe.storage import open_store
from kpipe.storage.base import Store

LABEL_MODES = ("int", "categorical", "binary", None)


class DataGenerator(keras.utils.PyDataset):
    """Batches ``(x, y)`` of one partition of a prepared dataset, for `model.fit`.

    An epoch's order is a pure function of ``(seed, epoch)``: batch ``i`` of
    epoch ``e`` is the same whichever thread or process makes it, so
    ``workers > 1`` and ``use_multiprocessing=True`` produce exactly the
    batches of a single process. `on_epoch_end` moves to the next epoch.
    Pass ``shuffle=False`` to `model.fit`: the generator owns the shuffling
    (Keras' own only reorders whole batches).

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
        shuffle: New random order every epoch. Defaults to `True` for
            ``"train"`` and `False` otherwise.
        seed: Seed of the shuffling (int). Defaults to 0.
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
        workers: As `keras.utils.PyDataset`: number of threads or processes
            making batches. Defaults to 1.
        use_multiprocessing: As `keras.utils.PyDataset`: processes, not
            threads. Defaults to `False`.
        max_queue_size: As `keras.utils.PyDataset`: batches (not samples) kept
            ready ahead. Defaults to 10.

    Raises:
        ValueError: On an invalid argument (the message names it).
        ManifestError: If the manifest cannot be read or the partition is unknown.

    Example:
        >>> train = DataGenerator("prepared/manifest.json", "train", batch_size=64, rescale=1 / 255)
        >>> x, y = train[0]
        >>> x.shape, x.dtype, y.shape
        ((64, 8, 8, 1), dtype('float32'), (64,))
        >>> model.fit(train, epochs=5, shuffle=False)
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
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
    ) -> None:
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
        if label_mode not in LABEL_MODES:
            raise ValueError(
                f"`label_mode` must be one of 'int', 'categorical', 'binary' or None. Received: label_mode={label_mode!r}"
            )
        if not isinstance(seed, (int, np.integer)):
            raise ValueError(f"`seed` must be an integer. Received: seed={seed!r}")
        if rescale is not None and not (isinstance(rescale, (int, float)) and math.isfinite(rescale)):
            raise ValueError(f"`rescale` must be a finite number or None. Received: rescale={rescale!r}")
        if initial_epoch < 0:
            raise ValueError(f"`initial_epoch` must be >= 0. Received: initial_epoch={initial_epoch!r}")

        if list_IDs is not None:
            if manifest is not None:
                raise ValueError("Pass either `manifest` or `list_IDs` (with `labels` and `data_dir`), not both.")
            manifest = _manifest_from_ids(list_IDs, labels, data_dir, num_classes, partition)
        elif manifest is None:
            raise ValueError("`DataGenerator` needs a `manifest`, or `list_IDs` with `labels` and `data_dir`.")
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
            raise ValueError(
                f"`label_mode='binary'` needs exactly 2 classes; this dataset has {self.num_classes}. "
                "Use label_mode='int' or 'categorical'."
            )
        self.batch_size = int(batch_size)
        self.shuffle = (partition == "train") if shuffle is None else bool(shuffle)
        self.seed = int(seed)
        self.label_mode = label_mode
        self.rescale = rescale
        self.dtype = np.dtype(dtype)
        self.drop_remainder = bool(drop_remainder)
        self.epoch = int(initial_epoch)
        self.labels = self.manifest.label_array(self.ids)
        self.sampler: Sampler = SAMPLERS["shuffle" if self.shuffle else "sequential"](
            num_samples=len(self.ids), seed=self.seed
        )
        self.store: Store = open_store(self.manifest)
        if self.drop_remainder and self.sampler.epoch_size < self.batch_size:
            raise ValueError(
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
        if self.label_mode is None:
            return (x,)
        return x, self._encode(self.labels[positions])

    def _encode(self, y: np.ndarray) -> np.ndarray:
        if self.label_mode == "int":
            return y.astype(np.int32)
        if self.label_mode == "categorical":
            return np.eye(self.num_classes, dtype=np.float32)[y]
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

    # ------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_order_cache"] = None
        return state

    def __repr__(self) -> str:
        return (
            f"DataGenerator(partition={self.partition!r}, num_samples={len(self.ids)}, "
            f"batch_size={self.batch_size}, num_batches={self.num_batches}, shuffle={self.shuffle}, "
            f"seed={self.seed}, epoch={self.epoch})"
        )


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
        raise ValueError("With `list_IDs`, pass `labels` (ID -> class index) and `data_dir` too.")
    ids = [str(i) for i in list_IDs]
    missing = [i for i in ids if i not in labels]
    if missing:
        raise ValueError(f"`labels` has no label for {len(missing)} of `list_IDs`, e.g. {missing[0]!r}.")
    values = {i: labels[i] for i in ids}
    bad = [i for i, v in values.items() if not isinstance(v, (int, np.integer)) or v < 0]
    if bad:
        raise ValueError(
            f"`labels` must map IDs to class indices (ints >= 0). Received: labels[{bad[0]!r}]={values[bad[0]]!r}"
        )
    n_classes = int(num_classes) if num_classes is not None else int(max(values.values())) + 1
    data_dir = Path(data_dir)
    first = data_dir / f"{ids[0]}.npy"
    try:
        probe = np.load(first, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"Cannot read the first sample {first}: {e}") from e
    return Manifest(
        classes=[str(c) for c in range(n_classes)],
        labels={i: int(v) for i, v in values.items()},
        partition={partition: ids},
        sample_shape=probe.shape,
        sample_dtype=probe.dtype.name,
        storage={"format": "npy", "root": str(data_dir.resolve())},
    )
