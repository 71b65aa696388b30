"""kpipe: prepare raw samples, feed them to Keras fast and correctly, train.

Public names::

    from kpipe import DataGenerator, Manifest, prepare, train

Every public name is imported on first use (PEP 562 module ``__getattr__``),
so ``import kpipe`` loads neither scikit-learn nor TensorFlow, and
``kpipe --help`` starts at once.
"""

from __future__ import annotations

import importlib
from typing import Any

from kpipe._version import __version__
from kpipe.errors import (
    ArgumentError,
    InputError,
    KpipeError,
    LoadError,
    ManifestError,
    OutputExistsError,
    OutputWriteError,
    SampleNotFoundError,
    SamplingError,
    SplitError,
    StoreError,
    TransformError,
    WeightError,
    WorkerError,
)

_LAZY = {
    "ConvertResult": "kpipe.convert",
    "convert": "kpipe.convert",
    "Manifest": "kpipe.manifest",
    "PrepareResult": "kpipe.prepare",
    "prepare": "kpipe.prepare",
    "BalancedSampler": "kpipe.sampling",
    "BootstrapSampler": "kpipe.sampling",
    "Sampler": "kpipe.sampling",
    "SequentialSampler": "kpipe.sampling",
    "ShuffleSampler": "kpipe.sampling",
    "make_sampler": "kpipe.sampling",
    "Hdf5Store": "kpipe.storage",
    "MemoryStore": "kpipe.storage",
    "NpyStore": "kpipe.storage",
    "Store": "kpipe.storage",
    "open_store": "kpipe.storage",
    "SampleWeights": "kpipe.weights",
    "compute_sample_weights": "kpipe.weights",
    "DataGenerator": "kpipe.generator",
    "EpochSync": "kpipe.generator",
    "KpipeModel": "kpipe.training",
    "TapeLoop": "kpipe.training",
    "TrainConfig": "kpipe.training",
    "TrainResult": "kpipe.training",
    "train": "kpipe.training",
    "default_model": "kpipe.training",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kpipe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ArgumentError",
    "BalancedSampler",
    "BootstrapSampler",
    "ConvertResult",
    "DataGenerator",
    "EpochSync",
    "Hdf5Store",
    "InputError",
    "KpipeError",
    "KpipeModel",
    "LoadError",
    "Manifest",
    "ManifestError",
    "MemoryStore",
    "NpyStore",
    "OutputExistsError",
    "OutputWriteError",
    "PrepareResult",
    "SampleNotFoundError",
    "SampleWeights",
    "Sampler",
    "SamplingError",
    "SequentialSampler",
    "ShuffleSampler",
    "SplitError",
    "Store",
    "StoreError",
    "TapeLoop",
    "TrainConfig",
    "TrainResult",
    "TransformError",
    "WeightError",
    "WorkerError",
    "__version__",
    "compute_sample_weights",
    "convert",
    "default_model",
    "make_sampler",
    "open_store",
    "prepare",
    "train",
]
