"""Which slice of every global batch a worker serves: the shard of a `kpipe.DataGenerator`, and where it comes from.

A sharded generator (``num_shards=N, shard_index=i``) plans the same global
batches as one process (from ``(seed, epoch)``) and serves slice ``i`` of
each: the slots ``[lo + i*b, lo + (i+1)*b)`` of a global batch that starts
at slot ``lo`` of its sampler epoch, ``b = ceil(batch_size / N)``
(`shard_slots`). Slots past the batch's end are *padding*: they repeat the
batch's first slot and get sample weight 0, so every worker's slice has
``b`` rows and the N slices, minus padding, concatenate to the batch of one
process.

``"auto"`` reads the worker's place in the job from the environment
(`shard_from_environment`): ``TF_CONFIG`` (TensorFlow's
`MultiWorkerMirroredStrategy`: the chief is worker 0, then the workers in
order), ``KERAS_DISTRIBUTION_NUM_PROCESSES`` / ``KERAS_DISTRIBUTION_PROCESS_ID``
(`keras.distribution.initialize`), JAX's process count and index once
`jax.distributed` is initialized, or ``WORLD_SIZE`` / ``RANK`` (torchrun, MPI
launchers). None of them: one shard.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NamedTuple

import numpy as np

from kpipe._validation import check_int, check_positive_int
from kpipe.errors import ArgumentError


class Shard(NamedTuple):
    """One worker's place: ``index`` in ``[0, count)``, and where it was read (``source``, for messages)."""

    count: int
    index: int
    source: str = "arguments"


def _tf_config(text: str) -> Shard | None:
    """The worker's place in a ``TF_CONFIG`` cluster (chief first, then workers), or `None` without a cluster."""
    try:
        config = json.loads(text)
        cluster, task = config.get("cluster") or {}, config.get("task") or {}
        chiefs, workers = list(cluster.get("chief") or []), list(cluster.get("worker") or [])
        kind, index = task.get("type"), int(task.get("index", 0))
    except (ValueError, TypeError, AttributeError):
        raise ArgumentError(f"`TF_CONFIG` must be JSON such as '{{\"cluster\": {{\"worker\": [\"host:port\", ...]}}, "
                            f"\"task\": {{\"type\": \"worker\", \"index\": 0}}}}'. Received: TF_CONFIG={text!r}") \
            from None
    if not chiefs and not workers:
        return None
    if kind == "chief":
        place = index
    elif kind == "worker":
        place = len(chiefs) + index
    else:
        raise ArgumentError(f"A sharded generator runs in a training worker (TF_CONFIG task type 'chief' or "
                            f"'worker'); this process is a {kind!r} task. Received: TF_CONFIG={text!r}")
    count = len(chiefs) + len(workers)
    if not 0 <= place < count:
        raise ArgumentError(f"`TF_CONFIG` task {kind!r} index {index} is not in its cluster of {count} workers. "
                            f"Received: TF_CONFIG={text!r}")
    return Shard(count, place, "TF_CONFIG")


def _env_pair(count_name: str, index_name: str) -> Shard | None:
    count, index = os.environ.get(count_name), os.environ.get(index_name)
    if count is None:
        return None
    try:
        shard = Shard(int(count), int(index if index is not None else -1), f"{count_name}/{index_name}")
    except ValueError:
        raise ArgumentError(f"`{count_name}` and `{index_name}` must be integers. Received: {count_name}={count!r}, "
                            f"{index_name}={index!r}") from None
    if shard.count < 1 or not 0 <= shard.index < shard.count:
        raise ArgumentError(f"`{index_name}` must be in [0, {count_name}). Received: {count_name}={count!r}, "
                            f"{index_name}={index!r}")
    return shard


def _jax_processes() -> Shard | None:
    """JAX's process count and index, only when JAX is imported and `jax.distributed` is initialized."""
    jax = sys.modules.get("jax")
    if jax is None:
        return None
    initialized = getattr(jax.distributed, "is_initialized", None)
    if initialized is None or not initialized():
        return None  # asking earlier would start JAX's backend before jax.distributed.initialize()
    return Shard(int(jax.process_count()), int(jax.process_index()), "jax.distributed")


def shard_from_environment() -> Shard:
    """This worker's place in a training job, from the environment (see the module docstring).

    Returns:
        A `Shard`; ``Shard(1, 0, "none")`` outside a multi-worker job.

    Raises:
        ArgumentError: If ``TF_CONFIG`` or a count / index pair is malformed,
            or names a task that is not a training worker.
    """
    text = os.environ.get("TF_CONFIG")
    shard = _tf_config(text) if text else None
    for found in (lambda: _env_pair("KERAS_DISTRIBUTION_NUM_PROCESSES", "KERAS_DISTRIBUTION_PROCESS_ID"),
                  _jax_processes, lambda: _env_pair("WORLD_SIZE", "RANK")):
        if shard is not None:
            break
        shard = found()
    return shard if shard is not None else Shard(1, 0, "none")


def check_shard(num_shards: Any, shard_index: Any) -> Shard:
    """``num_shards`` (an int >= 1, or ``"auto"``) and ``shard_index`` (an int in ``[0, num_shards)``), checked.

    Raises:
        ArgumentError: On an invalid pair: a count that is not a positive
            int or ``"auto"``, an index out of range, an index missing for
            ``num_shards > 1`` or given with ``"auto"``.
    """
    if isinstance(num_shards, str) and num_shards == "auto":
        if shard_index is not None:
            raise ArgumentError(f"`shard_index` comes from the environment with num_shards='auto'; leave it unset. "
                                f"Received: shard_index={shard_index!r}")
        return shard_from_environment()
    if isinstance(num_shards, str):
        raise ArgumentError(f"`num_shards` must be a positive int or 'auto'. Received: num_shards={num_shards!r}")
    count = check_positive_int(num_shards, "num_shards")
    if shard_index is None:
        if count > 1:
            raise ArgumentError(f"With num_shards={count}, pass this worker's `shard_index` (0 to {count - 1}), or "
                                "num_shards='auto'. Received: shard_index=None")
        return Shard(1, 0)
    return Shard(count, check_int(shard_index, "shard_index", minimum=0, maximum=count - 1))


def shard_slots(lo: int, hi: int, shard: Shard, batch_size: int) -> tuple[np.ndarray, int]:
    """The slots (positions in the sampler epoch's order) of ``shard``'s slice of the global batch ``[lo, hi)``.

    Args:
        lo: The batch's first slot.
        hi: One past its last slot (``hi - lo <= batch_size``; less for a last, partial batch).
        shard: The worker's `Shard`.
        batch_size: The global batch size ``B``; every slice has ``b = ceil(B / N)`` slots.

    Returns:
        ``(slots, num_real)``: int64 ``(b,)``, the slice's slots then, from
        ``num_real`` on, padding (the batch's first slot repeated).
    """
    b = -(-batch_size // shard.count)
    start = min(lo + shard.index * b, hi)
    stop = min(start + b, hi)
    slots = np.full(b, lo, dtype=np.int64)
    slots[: stop - start] = np.arange(start, stop, dtype=np.int64)
    return slots, stop - start
