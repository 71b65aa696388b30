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

from kpipe.errors import (  # noqa: E402
    InputError,
    KpipeError,
    LoadError,
    ManifestError,
    OutputExistsError,
    SampleNotFoundError,
    SplitError,
    StoreError,
)
from kpipe.manifest import Manifest  # noqa: E402
from kpipe.prepare import PrepareResult, prepare  # noqa: E402
from kpipe.storage import NpyStore, Store, open_store  # noqa: E402

_LAZY = {
    "DataGenerator": "kpipe.generator",
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
    "DataGenerator",
    "InputError",
    "KpipeError",
    "LoadError",
    "Manifest",
    "ManifestError",
    "NpyStore",
    "OutputExistsError",
    "PrepareResult",
    "SampleNotFoundError",
    "SplitError",
    "Store",
    "StoreError",
    "TrainConfig",
    "TrainResult",
    "__version__",
    "default_model",
    "open_store",
    "prepare",
    "train",
]
