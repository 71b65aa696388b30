"""Shared fixtures: small raw data sets generated under tmp_path."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Shard verification markers (kpipe.storage.hdf5.cache_dir) go to a throw-away folder, not ~/.cache/kpipe.
os.environ.setdefault("KPIPE_CACHE_DIR", tempfile.mkdtemp(prefix="kpipe-test-cache-"))

import pytest

from helpers import make_image_folder, make_indexed_npy_folder


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """3 classes (a: 20, b: 15, c: 10) of 8x8 grayscale PNGs."""
    return make_image_folder(tmp_path / "raw", {"a": 20, "b": 15, "c": 10})


@pytest.fixture
def indexed_manifest(tmp_path: Path) -> Path:
    """A prepared npy dataset (3 classes: 30, 20, 10 samples of float32 4x4x1, each filled with its
    index), split 0.6,0.2,0.2 with seed 0; returns the manifest path."""
    from kpipe.prepare import prepare

    raw = make_indexed_npy_folder(tmp_path / "raw_npy", {"a": 30, "b": 20, "c": 10})
    result = prepare(raw, tmp_path / "prepared", split="0.6,0.2,0.2", n_jobs=1)
    return result.manifest.path
