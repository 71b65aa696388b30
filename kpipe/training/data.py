"""The generators a training run reads: train, validation and test."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kpipe.generator import DataGenerator
from kpipe.manifest import Manifest

if TYPE_CHECKING:
    from kpipe.training.run import TrainConfig


def make_generators(manifest: Manifest, config: TrainConfig, *, label_mode: str, rescale: float | None
                    ) -> tuple[DataGenerator, DataGenerator | None, DataGenerator | None]:
    """Build the ``train``, ``validation`` and ``test`` generators of a run.

    Train shuffles; validation and test are sequential. A partition with no
    sample gives `None`. Only train and validation use workers (test is read once).

    Returns:
        ``(train, validation or None, test or None)``.
    """
    common = dict(batch_size=config.batch_size, seed=config.seed, label_mode=label_mode, rescale=rescale)
    loader = dict(workers=config.workers, use_multiprocessing=config.use_multiprocessing,
                  max_queue_size=config.max_queue_size)
    train = DataGenerator(manifest, "train", shuffle=True, **common, **loader)
    val = (DataGenerator(manifest, "validation", shuffle=False, **common, **loader)
           if manifest.partition.get("validation") else None)
    test = DataGenerator(manifest, "test", shuffle=False, **common) if manifest.partition.get("test") else None
    return train, val, test
