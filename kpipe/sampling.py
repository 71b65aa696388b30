"""Samplers: which sample positions an epoch visits, and in what order.

A sampler is a pure function of the epoch: ``indices(epoch)`` derives a fresh
``np.random.Generator`` from ``(seed, epoch)`` and keeps no iterator state
(as Grain's samplers do), so every thread, process or resumed run computes the
same order for the same epoch.
"""

from __future__ import annotations

import abc
import dataclasses

import numpy as np


def epoch_rng(seed: int, epoch: int, *stream: int) -> np.random.Generator:
    """The generator for one epoch: ``np.random.default_rng([seed, epoch, *stream])``.

    ``SeedSequence`` mixes the entropy words, so neighbouring seeds or epochs
    give independent streams.
    """
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), *map(int, stream)])


@dataclasses.dataclass(frozen=True)
class Sampler(abc.ABC):
    """Base sampler over ``num_samples`` positions of a partition.

    Attributes:
        num_samples: Positions ``0 .. num_samples - 1`` of the partition.
        seed: Seed of every random choice.
    """

    num_samples: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_samples <= 0:
            raise ValueError(f"`num_samples` must be positive. Received: num_samples={self.num_samples}")

    @property
    def epoch_size(self) -> int:
        """Number of positions one epoch visits."""
        return self.num_samples

    @abc.abstractmethod
    def indices(self, epoch: int) -> np.ndarray:
        """Positions visited in ``epoch``: int64 array of shape ``(epoch_size,)``."""


@dataclasses.dataclass(frozen=True)
class SequentialSampler(Sampler):
    """Every position once per epoch, in manifest order (validation and test)."""

    def indices(self, epoch: int) -> np.ndarray:
        return np.arange(self.num_samples, dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class ShuffleSampler(Sampler):
    """Every position once per epoch, in a new random order each epoch."""

    def indices(self, epoch: int) -> np.ndarray:
        return epoch_rng(self.seed, epoch).permutation(self.num_samples).astype(np.int64)


SAMPLERS = {"sequential": SequentialSampler, "shuffle": ShuffleSampler}
"""Sampling mode name -> sampler class."""
