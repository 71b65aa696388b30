"""Builders of small data sets shared by the tests (import them: ``from helpers import make_image_folder``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


def make_pattern_folder(root: Path, num_classes: int = 3, per_class: int = 40, seed: int = 0) -> Path:
    """``root/<class>/s_<k>.npy``: uint8 (8, 8, 1) = a class template (0 or 180) + noise in [0, 75),
    learnable in a couple of epochs."""
    rng = np.random.default_rng(seed)
    for k in range(num_classes):
        template = (rng.random((8, 8, 1)) < 0.5).astype(np.uint8) * 180
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            sample = template + rng.integers(0, 75, (8, 8, 1), dtype=np.uint8)
            np.save(root / f"c{k}" / f"s_{i:03d}.npy", sample)
    return root


def tiny_model(input_shape, num_classes):
    """Flatten - Dense(16, relu) - Dense(num_classes, softmax): deterministic (no dropout)."""
    import keras

    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(16, activation="relu")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="tiny")


def make_pattern_images(root: Path, num_classes: int = 3, per_class: int = 30, bits: int = 8, seed: int = 0) -> Path:
    """``root/<class>/s_<k>.png``: the patterns of `make_pattern_folder` as 8x8 grayscale PNGs, 8-bit, or 16-bit
    (values x 257, so that prepare's ``--dtype auto`` stores uint16); learnable in a couple of epochs."""
    rng = np.random.default_rng(seed)
    for k in range(num_classes):
        template = (rng.random((8, 8)) < 0.5).astype(np.uint8) * 180
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            sample = template + rng.integers(0, 75, (8, 8), dtype=np.uint8)
            image = Image.fromarray(sample) if bits == 8 else Image.fromarray(sample.astype(np.uint16) * 257)
            image.save(root / f"c{k}" / f"s_{i:03d}.png")
    return root


def make_pattern_csv(path: Path, num_classes: int = 3, per_class: int = 30, seed: int = 0) -> Path:
    """A CSV ``id,f0..f5,label``: each class a center (scale 100, so normalisation matters) plus noise."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_classes, 6)) * 100 + 500
    lines = ["id," + ",".join(f"f{j}" for j in range(6)) + ",label"]
    for k in range(num_classes):
        for i in range(per_class):
            values = centers[k] + rng.normal(size=6) * 20
            lines.append(f"r{k}_{i}," + ",".join(f"{v:.3f}" for v in values) + f",k{k}")
    path.write_text("\n".join(lines) + "\n")
    return path


def png_is_drawn(path: Path, min_size: tuple[int, int] = (200, 150)) -> tuple[int, int]:
    """Open a PNG, check its pixel size and that it is not blank (more than one colour); returns the size."""
    with Image.open(path) as image:
        image.load()
        size = image.size
        pixels = np.asarray(image.convert("RGB"))
    assert size[0] >= min_size[0] and size[1] >= min_size[1], size
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10, "blank figure"
    assert pixels.std() > 5, "nearly blank figure"
    return size
