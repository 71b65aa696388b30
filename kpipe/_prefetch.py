"""Batches made ahead, in order, by a thread or process pool, for `kpipe.DataGenerator`.

The generator presents ``workers=1`` to Keras, so Keras (on every backend) asks
for its batches one by one, in order, in one thread; the pool here makes the
next ``ahead`` batches meanwhile. Batches are keyed by their *global* index
``k`` in the generator's stream, and a batch is a pure function of ``k``
(`DataGenerator.make_batch`), so a batch made ahead is the batch a single
process makes, whoever asks and whenever.

* threads: a `concurrent.futures.ThreadPoolExecutor` calling
  ``source.make_batch(k)``;
* processes: a `concurrent.futures.ProcessPoolExecutor` whose workers receive
  the generator once (by ``fork``, or pickled as its recipe under ``spawn`` /
  ``forkserver``) and then only the index ``k`` of each batch. A worker that
  dies (a signal, ``os._exit``, a native crash, the OOM killer) breaks the
  pool, which the executor reports at once: the waiting request raises
  `WorkerError` naming the batch, and the other workers are terminated.

The pool lives across epochs; `Prefetcher.close` stops it, and
`Prefetcher.release_when_idle` stops it once no batch was requested for a
while (Keras keeps the datasets given to ``fit`` alive after it returns, so an
idle generator must not keep threads or processes).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import threading
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from kpipe.errors import WorkerError

IDLE_RELEASE_SECONDS = 3.0
"""A pool not asked for a batch for this long after an epoch's end is shut down (restarted when needed)."""

_WORKER_SOURCE: Any = None
"""The generator a worker process makes batches of (set once per worker)."""


def _init_worker(source: Any) -> None:
    global _WORKER_SOURCE
    _WORKER_SOURCE = source


def _worker_batch(k: int) -> Any:
    return _WORKER_SOURCE.make_batch(k)


class Prefetcher:
    """Makes the batches ``k + 1 .. k + ahead`` while batch ``k`` is used.

    Args:
        source: An object with ``make_batch(k)``, a pure function of ``k``
            (pickled to worker processes as a whole, once).
        workers: Threads or processes in the pool (>= 1).
        use_multiprocessing: Processes instead of threads.
        ahead: Batches made ahead of the one requested (>= 1).
        describe: ``describe(k)`` -> words naming batch ``k``, for messages.
    """

    def __init__(self, source: Any, *, workers: int, use_multiprocessing: bool, ahead: int,
                 describe: Callable[[int], str]) -> None:
        self.source = source
        self.workers = int(workers)
        self.use_multiprocessing = bool(use_multiprocessing)
        self.ahead = max(1, int(ahead))
        self.describe = describe
        self._pool: cf.Executor | None = None
        self._pending: dict[int, cf.Future] = {}
        self._lock = threading.Lock()
        self._last_use = time.monotonic()
        self._timer: threading.Timer | None = None

    @property
    def running(self) -> bool:
        """True while the pool exists."""
        return self._pool is not None

    def _new_pool(self) -> cf.Executor:
        if self.use_multiprocessing:
            return cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(),
                                          initializer=_init_worker, initargs=(self.source,))
        return cf.ThreadPoolExecutor(self.workers, thread_name_prefix="kpipe-prefetch")

    def _submit(self, pool: cf.Executor, k: int) -> cf.Future:
        if self.use_multiprocessing:
            return pool.submit(_worker_batch, k)
        return pool.submit(self.source.make_batch, k)

    def get(self, k: int) -> Any:
        """Batch ``k``: made ahead already, or now; then the next ``ahead`` are started.

        Raises:
            WorkerError: If a worker process died (the pool is shut down; the
                next request starts a new one).
            Exception: Whatever ``make_batch(k)`` raised.
        """
        k = int(k)
        try:
            with self._lock:
                self._last_use = time.monotonic()
                if self._pool is None:
                    self._pool = self._new_pool()
                pool = self._pool
                future = self._pending.pop(k, None)
                for j in [j for j in self._pending if j <= k or j > k + self.ahead]:
                    self._pending.pop(j).cancel()
                if future is None:
                    future = self._submit(pool, k)
                for j in range(k + 1, k + 1 + self.ahead):
                    if j not in self._pending:
                        self._pending[j] = self._submit(pool, j)
            return future.result()
        except BrokenProcessPool as e:
            self.close()
            raise WorkerError(
                f"A worker process died while making {self.describe(k)} (or a batch made ahead of it; "
                f"use_multiprocessing=True, workers={self.workers}): it was killed by a signal, called os._exit(), "
                "crashed in native code (e.g. a segfault in `transform`), or the out-of-memory killer stopped it. "
                "Run with use_multiprocessing=False to see a Python error in this process, or use less memory "
                "(fewer workers, a smaller max_queue_size, no cache='memory')."
            ) from e

    def release_when_idle(self, seconds: float = IDLE_RELEASE_SECONDS) -> None:
        """Shut the pool down once no batch has been requested for ``seconds`` (checked in the background)."""
        with self._lock:
            if self._pool is None or self._timer is not None:
                return
            self._arm(seconds, seconds)

    def _arm(self, delay: float, seconds: float) -> None:
        timer = threading.Timer(delay, self._reap, args=(seconds,))
        timer.daemon = True
        self._timer = timer
        timer.start()

    def _reap(self, seconds: float) -> None:
        with self._lock:
            self._timer = None
            if self._pool is None:
                return
            idle = time.monotonic() - self._last_use
            if idle < seconds:  # in use since: look again later
                self._arm(seconds - idle, seconds)
                return
            pool, pending = self._detach()
        self._shutdown(pool, pending)

    def _detach(self) -> tuple[cf.Executor | None, dict[int, cf.Future]]:
        pool, pending = self._pool, self._pending
        self._pool, self._pending = None, {}
        return pool, pending

    @staticmethod
    def _shutdown(pool: cf.Executor | None, pending: dict[int, cf.Future]) -> None:
        for future in pending.values():
            future.cancel()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        """Stop the pool now (its threads or processes end before this returns); a later `get` starts a new one."""
        with self._lock:
            timer, self._timer = self._timer, None
            pool, pending = self._detach()
        if timer is not None:
            timer.cancel()
        self._shutdown(pool, pending)
