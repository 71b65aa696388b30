"""The generators a training run reads: train, validation and test, and the one-batch probe of pre-flight."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kpipe.generator import DataGenerator
from kpipe.manifest import Manifest

if TYPE_CHECKING:
    from kpipe.training.config import TrainConfig

SAMPLING_FIELDS = ("sampling", "balance", "samples_per_epoch", "target_distribution", "class_weight",
                   "condition_weights", "use_sample_weights")
"""`TrainConfig` fields passed to the train generator under the same names."""


def sampling_options(config: Any) -> dict[str, Any]:
    """The sampling and weight options of ``config`` as `DataGenerator` keyword arguments.

    Fields a config lacks, or leaves at `None`, are not passed (the
    generator's defaults apply); ``use_sample_weights`` is passed when true.
    """
    options = {name: getattr(config, name, None) for name in SAMPLING_FIELDS}
    return {k: v for k, v in options.items() if v is not None and v is not False}


def probe_generator(manifest: Manifest, config: TrainConfig) -> DataGenerator:
    """The train partition in manifest order with integer labels: pre-flight's batch and the normalizer's data."""
    return DataGenerator(manifest, "train", shuffle=False, batch_size=config.batch_size, label_mode="int")


def make_generators(manifest: Manifest, config: TrainConfig, *, label_mode: str, pad_to_multiple: int = 1
                    ) -> tuple[DataGenerator, DataGenerator | None, DataGenerator | None]:
    """Build the ``train``, ``validation`` and ``test`` generators of a run.

    Train follows the config's sampling (default ``"shuffle"``) and weights
    (``class_weight``, ``condition_weights``, ``use_sample_weights``: its
    batches are then ``(x, y, sample_weight)``, so do not pass
    ``class_weight`` to `fit`); validation and test are sequential and
    unweighted, so their metrics are the plain ones. A partition with no
    sample gives `None`. Only train and validation use workers (test is read once).
    ``steps_per_epoch`` sets the train generator's epoch length (its exact stream policy). With
    ``distribute="multi-worker"`` train and validation are sharded (``num_shards="auto"``: each worker reads
    its slice of every global batch, see `kpipe.generator`); test is read whole by every worker.
    ``pad_to_multiple`` (``distribute="data-parallel"``: the devices) pads the train and validation batches to a
    multiple of it with zero-weight rows.

    Samples are served as stored, cast to float32 and never scaled: the scaling or normalization is the
    model's first layer (`kpipe.training.models.preprocessing_layer`), so ``model.keras`` takes raw samples.

    Returns:
        ``(train, validation or None, test or None)``.

    Raises:
        SamplingError: On an invalid sampling option (see `kpipe.sampling`).
        WeightError: On an invalid weight option (see `kpipe.weights`).
    """
    common = dict(batch_size=config.batch_size, seed=config.seed, label_mode=label_mode)
    loader = dict(workers=config.workers, use_multiprocessing=config.use_multiprocessing,
                  max_queue_size=config.max_queue_size,
                  num_shards="auto" if getattr(config, "distribute", None) == "multi-worker" else 1,
                  pad_to_multiple=pad_to_multiple)
    train = DataGenerator(manifest, "train", **common, **loader, **sampling_options(config),
                          steps_per_epoch=config.steps_per_epoch)
    val = (DataGenerator(manifest, "validation", shuffle=False, **common, **loader)
           if manifest.partition.get("validation") else None)
    test = DataGenerator(manifest, "test", shuffle=False, **common) if manifest.partition.get("test") else None
    return train, val, test
