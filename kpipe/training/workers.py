"""Which folders a process of a run writes: one run folder, or in a multi-worker job the chief's and a temporary one."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from kpipe.manifest import Manifest
from kpipe.training import distribute, preflight
from kpipe.training.config import TrainConfig
from kpipe.training.run_folder import RunFolder


@contextlib.contextmanager
def run_folders(manifest: Manifest, config: TrainConfig) -> Iterator[tuple[RunFolder, dict[str, Any] | None,
                                                                             RunFolder]]:
    """``(the folder this process writes, the checkpoint state or None, the run's folder)``, checked (pre-flight).

    One process, or the chief (worker 0) of a multi-worker job: the run folder, twice. Every other worker of
    the job runs the same steps (so that the workers stay in step) and writes them to a temporary folder,
    removed when the block ends; it resumes from the chief's checkpoint (``--resume`` on a folder every
    worker sees), and the run's folder is the chief's.

    Raises:
        KpipeError: As `kpipe.training.preflight.check_run`.
    """
    if config.distribute != "multi-worker" or distribute.is_chief():
        run, state = preflight.check_run(manifest, config)
        yield run, state, run
        return
    worker_dir = tempfile.mkdtemp(prefix="kpipe-worker-")
    try:
        if config.resume is not None:
            chief, state = preflight.check_run(manifest, config)
            yield RunFolder(worker_dir), state, chief
        else:
            run, state = preflight.check_run(manifest, dataclasses.replace(config, out=worker_dir, overwrite=False))
            yield run, state, RunFolder(config.out or worker_dir)
    finally:
        shutil.rmtree(worker_dir, ignore_errors=True)
