"""The bounded start-up of a multi-worker job: a worker never waits forever for a peer that is not there.

`tf.distribute.MultiWorkerMirroredStrategy` waits for every task of
``TF_CONFIG`` when it is made, with no public time limit, and holds Python's
GIL while it waits (in ``ensure_initialized``), so no Python thread or signal
handler can run, let alone stop it. A multi-worker run therefore meets its
peers first, in Python (`wait_for_peers`): each worker listens on its own
``TF_CONFIG`` port and connects to every other task's port (TCP) until all
answer, then closes its listener and lets TensorFlow take the port. If they
have not all answered within ``distribute_timeout`` seconds
(``--distribute-timeout``, 300 by default), it raises `ClusterTimeoutError`
naming the silent peers: one line at the command line, exit 1, and nothing
has been made yet (a non-chief's temporary folder is removed as for any error).

A peer that answered and stopped before TensorFlow's own wait ended would
still block it. As a backstop, `bounded_startup` arms `faulthandler`'s timer
(a C thread, needing no GIL) for another ``distribute_timeout`` seconds until
the first training step ends: if it fires, the process prints where it waited
(Python's stack dump) and ends at once with exit status 1 (`os._exit`), under
the Python API too; a non-chief's temporary folder is then left in the
temporary directory.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import keras

from kpipe.errors import KpipeError
from kpipe.training.distribute import check_multi_worker

ADVICE = "Start every worker listed in TF_CONFIG; a worker that stopped printed why."

_report_to: list[Any] = [None]  # where the backstop writes: set by `reporting_to`, else sys.stderr


class ClusterTimeoutError(KpipeError, TimeoutError):
    """The tasks of a multi-worker job's ``TF_CONFIG`` did not all answer within ``distribute_timeout`` seconds."""


def _tasks(tf_config: str | None) -> tuple[list[tuple[str, str]], str | None]:
    """``([(task, "host:port")] of the other tasks, this task's address)`` from a ``TF_CONFIG`` text."""
    try:
        spec = json.loads(tf_config or "{}")
        own = (spec.get("task", {}).get("type"), spec.get("task", {}).get("index"))
        tasks = [((job, i), address) for job, addresses in spec.get("cluster", {}).items()
                 for i, address in enumerate(addresses)]
    except (ValueError, AttributeError, TypeError):  # TensorFlow refuses such a TF_CONFIG itself
        return [], None
    return [(f"{job} {i}", a) for (job, i), a in tasks if (job, i) != own], dict(tasks).get(own)


def answers(address: str, timeout: float = 1.0) -> bool:
    """True if something at ``"host:port"`` accepts a TCP connection within ``timeout`` seconds."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def unreachable(tasks: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The ``tasks`` at whose address nothing accepts a TCP connection (`answers`, probed together)."""
    with ThreadPoolExecutor(max_workers=min(32, len(tasks) or 1)) as pool:
        up = list(pool.map(answers, [address for _, address in tasks]))
    return [task for task, ok in zip(tasks, up) if not ok]


@contextlib.contextmanager
def _listening(address: str | None) -> Iterator[None]:
    """Accept TCP connections on ``address``'s port (all interfaces, as TensorFlow's server) while the block runs."""
    try:
        server = socket.create_server(("", int(address.rpartition(":")[2])), backlog=128)
    except (OSError, ValueError, AttributeError):  # taken (e.g. by this process's TensorFlow server) or no port
        server = None
    try:
        yield
    finally:
        if server is not None:
            server.close()  # connections never accepted are reset: the port is left free, without TIME_WAIT


def wait_for_peers(seconds: float, tf_config: str | None, *, poll: float = 0.2) -> None:
    """Listen on this task's port until every other task of ``tf_config`` accepts a TCP connection.

    Args:
        seconds: The time limit.
        tf_config: The ``TF_CONFIG`` text (JSON: ``cluster`` and this ``task``).
        poll: Seconds between two rounds of probes.

    Raises:
        ClusterTimeoutError: If some tasks did not answer within ``seconds``; the message names them.
    """
    missing, own = _tasks(tf_config)
    deadline = time.monotonic() + seconds
    with _listening(own):
        while (missing := unreachable(missing)) and time.monotonic() < deadline:
            time.sleep(poll)
    if missing:
        who = ", ".join(f"{task} at {address}" for task, address in missing)
        raise ClusterTimeoutError(
            f"The multi-worker job did not form within `distribute_timeout` {seconds:g} seconds: no answer from "
            f"{who}. {ADVICE} Received: distribute_timeout={seconds:g}"
        )


@contextlib.contextmanager
def reporting_to(file: Any) -> Iterator[None]:
    """While the block runs, the backstop of `bounded_startup` writes to ``file`` (a command's real stderr)."""
    previous, _report_to[0] = _report_to[0], file
    try:
        yield
    finally:
        _report_to[0] = previous


class FirstStep(keras.callbacks.Callback):
    """Disarms `bounded_startup`'s backstop when the first training step ends: the job has formed."""

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        faulthandler.cancel_dump_traceback_later()


@contextlib.contextmanager
def bounded_startup(config: Any) -> Iterator[FirstStep]:
    """In a multi-worker run (``config.distribute``): `wait_for_peers` (``TF_CONFIG``), then the backstop.

    Yields:
        A `FirstStep` callback for the run's callbacks. The backstop is
        disarmed when the block ends in any case.

    Raises:
        ArgumentError: As `kpipe.training.distribute.check_multi_worker`.
        ClusterTimeoutError: As `wait_for_peers`.
    """
    if config.distribute != "multi-worker":
        yield FirstStep()
        return
    check_multi_worker(config.distribute, config.loop, clip_norm=config.clip_norm,
                       accumulation_steps=config.accumulation_steps)  # refusals come before any wait
    wait_for_peers(config.distribute_timeout, os.environ.get("TF_CONFIG"))
    faulthandler.dump_traceback_later(config.distribute_timeout, exit=True, file=_report_to[0] or sys.stderr)
    try:
        yield FirstStep()
    finally:
        faulthandler.cancel_dump_traceback_later()
