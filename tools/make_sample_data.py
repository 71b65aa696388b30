"""Write scikit-learn's bundled digits as grayscale PNGs in class folders.

The 1,797 8x8 handwritten digits of ``sklearn.datasets.load_digits`` (a copy
of the test set of the UCI "Optical Recognition of Handwritten Digits" data,
Alpaydin & Kaynak, 1998) become ``OUT/<digit>/digit_<index>.png``. Pixel
values 0..16 are scaled to 0..255 (``round(v * 255 / 16)``) and saved as
8-bit grayscale ("L") PNGs. The output is deterministic: same bytes on every
run, so it is committed as ``sample_data/digits``.

Usage:
    python tools/make_sample_data.py [--out sample_data/digits]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("sample_data/digits"))
    args = parser.parse_args(argv)

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    for index, (image, target) in enumerate(zip(images, digits.target)):
        folder = args.out / str(int(target))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"digit_{index:04d}.png", optimize=True)
    print(f"Wrote {len(images)} images in {len(set(digits.target))} classes to {args.out}")


if __name__ == "__main__":
    main()
