"""Shared fixtures: small raw data sets generated under tmp_path."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Shard verification markers (kpipe.storage.hdf5.cache_dir) go to a throw-away folder, not ~/.cache/kpipe.
os.environ.setdefault("KPIPE_CACHE_DIR", tempfile.mkdtemp(prefix="kpipe-test-cache-"))

import numpy as np
import pytest
from PIL import Image


def make_image_folder(root: Path, class_counts: dict[str, int], size: tuple[int, int] = (8, 8),
                      mode: str = "L", seed: int = 0, ext: str = ".png") -> Path:
    """``root/<class>/img_<k>.png`` with random pixels; returns ``root``."""
    rng = np.random.default_rng(seed)
    channels = {"L": None, "RGB": 3, "RGBA": 4}[mode]
    for name, count in class_counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            shape = size if channels is None else (*size, channels)
            arr = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(arr).save(root / name / f"img_{k:03d}{ext}")
    return root


def make_indexed_npy_folder(root: Path, class_counts: dict[str, int], shape=(4, 4, 1)) -> Path:
    """``root/<class>/s_<k>.npy``: every sample is filled with its global index (float32), so a
    batch's content tells which samples it holds."""
    index = 0
    for name, count in class_counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            np.save(root / name / f"s_{k:03d}.npy", np.full(shape, index, dtype=np.float32))
            index += 1
    return root


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
