"""kpipe: prepare raw samples, feed them to Keras fast and correctly, train.

Public names::

    from kpipe import DataGenerator, Manifest, prepare, train

Names that need TensorFlow / Keras (`DataGenerator`, `train`, ...) are
imported on first use, so ``import kpipe`` and ``kpipe prepare`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from kpipe.convert import ConvertResult, convert  # noqa: E402
from kpipe.errors import (  # noqa: E402
    ArgumentError,
    InputError,
    KpipeError,
    LoadError,
    ManifestError,
    OutputExistsError,
    SampleNotFoundError,
    SamplingError,
    SplitError,
    StoreError,
    TransformError,
    WeightError,
    WorkerError,
)
from kpipe.manifest import Manifest  # noqa: E402
from kpipe.prepare import PrepareResult, prepare  # noqa: E402
from kpipe.sampling import (  # noqa: E402
    BalancedSampler,
    BootstrapSampler,
    Sampler,
    SequentialSampler,
    ShuffleSampler,
    make_sampler,
)
from kpipe.storage import Hdf5Store, MemoryStore, NpyStore, Store, open_store  # noqa: E402
from kpipe.weights import SampleWeights, compute_sample_weights  # noqa: E402

_LAZY = {
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
