"""Where ``kpipe prepare``'s tasks run: in this process, threads, processes (loky) or a Dask cluster.

Every backend is a `concurrent.futures.Executor` behind one `Pool`, so the
prepare code has one path (submit, wait, merge in task order) whatever runs
the tasks:

* ``"serial"``: in the calling thread, no pool (``n_jobs=1``, or too little
  work for a pool to pay);
* ``"threads"``: a `ThreadPoolExecutor`: no start-up, no pickling; Pillow's
  decoders and every file read and write release the GIL;
* ``"loky"``: joblib's reusable process pool (`joblib.externals.loky`):
  pays when the per-sample work holds the GIL (small images) and there is
  enough of it to cover the processes' start-up;
* ``"dask"``: a ``dask.distributed`` cluster through
  ``Client.get_executor(pure=False)`` (``pip install kpipe[dask]``);
  ``scheduler="auto"`` starts a `distributed.LocalCluster` on 127.0.0.1
  without a dashboard, closed afterwards.

Any other `concurrent.futures.Executor` (a Ray or MPI pool) can be passed to
`kpipe.prepare.prepare` as ``executor``: nothing else of the backend is
assumed (no ``return_as="generator"``, which Ray's joblib backend refuses).

`run_ordered` keeps a bounded number of tasks in flight, hands results back
in task order (so the merge is the same as a sequential run, whichever task
ends first), and on an error cancels what has not started and waits for what
has, so that no task writes into a folder that is being removed.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from kpipe.errors import ArgumentError, LoadError

BACKENDS = ("auto", "threads", "loky", "dask")
"""Values of ``prepare(backend=...)`` / ``--backend``: ``auto`` picks serial, threads or loky from the work."""

_ABORT_WAIT_S = 120.0  # after an error: how long to wait for tasks already running


class SerialExecutor(cf.Executor):
    """Runs each task in the calling thread when it is submitted (a done `Future` comes back)."""

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:
            future.set_exception(e)
        return future


@dataclasses.dataclass
class Pool:
    """An executor and what the prepare code needs to know about it.

    Attributes:
        executor: Where tasks run.
        kind: ``"serial"``, ``"threads"``, ``"loky"``, ``"dask"`` or ``"custom"``.
        workers: Tasks that run at once (threads, processes or cluster threads).
        remote: Whether tasks may run on another machine (output must be on a
            shared POSIX path) and be run more than once (a lost worker's
            tasks are retried).
        description: For messages and benchmarks, e.g. ``"dask (2 workers, 2 threads)"``.
    """

    executor: cf.Executor
    kind: str
    workers: int
    remote: bool = False
    description: str = ""


def effective_n_jobs(n_jobs: int) -> int:
    """``n_jobs`` as joblib counts it: ``-1`` all cores, ``-2`` all but one, ...; at least 1."""
    cores = os.cpu_count() or 1
    if n_jobs < 0:
        return max(1, cores + 1 + n_jobs)
    return max(1, n_jobs)


def check_backend(backend: str, scheduler: str | None) -> tuple[str, str | None]:
    """Validate ``backend`` and ``scheduler`` together; returns them.

    Raises:
        ArgumentError: If ``backend`` is unknown, or ``scheduler`` is given
            with a backend other than ``"dask"``.
    """
    if backend not in BACKENDS:
        raise ArgumentError(f"`backend` must be one of {', '.join(BACKENDS)}. Received: backend={backend!r}")
    if scheduler is not None and backend != "dask":
        raise ArgumentError("`scheduler` applies to backend='dask' only (a Dask scheduler address, or 'auto'). "
                            f"Received: backend={backend!r}, scheduler={scheduler!r}")
    if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.strip()):
        raise ArgumentError("`scheduler` must be a Dask scheduler address such as tcp://10.0.0.5:8786, or 'auto'. "
                            f"Received: scheduler={scheduler!r}")
    return backend, scheduler


@contextlib.contextmanager
def local_pool(kind: str, workers: int) -> Iterator[Pool]:
    """A `Pool` on this machine: ``"serial"``, ``"threads"`` or ``"loky"`` with ``workers`` workers."""
    if kind == "serial" or workers <= 1:
        yield Pool(SerialExecutor(), "serial", 1, description="serial (this process)")
        return
    if kind == "threads":
        with cf.ThreadPoolExecutor(workers, thread_name_prefix="kpipe-prepare") as ex:
            yield Pool(ex, "threads", workers, description=f"threads ({workers})")
        return
    if kind == "loky":
        from joblib.externals.loky import get_reusable_executor

        # Reused across calls (joblib's own pool): started once per session, not per prepare.
        ex = get_reusable_executor(max_workers=workers, timeout=60)
        yield Pool(ex, "loky", workers, description=f"loky processes ({workers})")
        return
    raise ArgumentError(f"Unknown local pool {kind!r}.")


@contextlib.contextmanager
def dask_pool(scheduler: str | None) -> Iterator[Pool]:
    """A `Pool` on a Dask cluster: ``scheduler`` is an address (``tcp://host:8786``) or ``"auto"``.

    ``"auto"`` (and `None`) starts a `distributed.LocalCluster` on 127.0.0.1
    (worker processes, one thread each, as many as cores; no dashboard) and
    closes it afterwards.

    Raises:
        LoadError: If ``dask.distributed`` is not installed.
        ArgumentError: If the scheduler cannot be reached.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as e:
        raise LoadError("`backend='dask'` needs dask.distributed: pip install 'kpipe[dask]'. "
                        f"Received: backend='dask' ({e})") from None
    with contextlib.ExitStack() as stack:
        if scheduler in (None, "auto"):
            cores = os.cpu_count() or 1
            cluster = stack.enter_context(LocalCluster(
                n_workers=cores, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None, silence_logs=40))  # logging.ERROR
            client = stack.enter_context(Client(cluster))
            where = "LocalCluster on 127.0.0.1"
        else:
            try:
                client = stack.enter_context(Client(scheduler, timeout="30s"))
            except OSError as e:
                raise ArgumentError(
                    f"Cannot reach the Dask scheduler at {scheduler}: {e}. Start it with `dask scheduler` and "
                    "workers with `dask worker ADDRESS`, or pass --scheduler auto for a local cluster. "
                    f"Received: scheduler={scheduler!r}") from None
            where = scheduler
        threads = client.nthreads()
        workers = max(1, sum(threads.values()))
        # pure=False: tasks are never deduplicated by their arguments (hashing them would cost more than the task).
        executor = client.get_executor(pure=False)
        yield Pool(executor, "dask", workers, remote=True,
                   description=f"dask ({where}: {len(threads)} workers, {workers} threads)")


def run_ordered(pool: Pool, fn: Callable[[Any], Any], tasks: Sequence[Any], *,
                on_result: Callable[[int, Any], None], max_in_flight: int | None = None) -> None:
    """Run ``fn(task)`` for every task on ``pool``; call ``on_result(index, result)`` in task order.

    At most ``max_in_flight`` tasks (default: 2 per worker) are submitted
    at once; results that end early wait for the ones before them, so
    ``on_result`` sees exactly the order of a sequential run. If a task or
    ``on_result`` raises, tasks not yet started are cancelled, those running
    are waited for (up to 2 minutes), and the error propagates.
    """
    limit = max(1, max_in_flight or 2 * pool.workers)
    pending: dict[int, cf.Future] = {}
    done: dict[int, Any] = {}
    todo: Iterator[tuple[int, Any]] = iter(enumerate(tasks))
    next_out = 0
    try:
        for index, task in _take(todo, limit):
            pending[index] = pool.executor.submit(fn, task)
        while pending:
            finished, _ = cf.wait(list(pending.values()), return_when=cf.FIRST_COMPLETED)
            for index in [i for i, f in pending.items() if f in finished]:
                done[index] = pending.pop(index).result()
            while next_out in done:
                on_result(next_out, done.pop(next_out))
                next_out += 1
            for index, task in _take(todo, limit - len(pending)):
                pending[index] = pool.executor.submit(fn, task)
    except BaseException:
        _abort(pending.values())
        raise


def _take(it: Iterator[Any], n: int) -> Iterable[Any]:
    for _ in range(max(0, n)):
        item = next(it, None)
        if item is None:
            return
        yield item


def _abort(futures: Iterable[cf.Future]) -> None:
    """Cancel what has not started; wait (bounded) for what runs, so it stops writing before clean-up."""
    futures = list(futures)
    for f in futures:
        f.cancel()
    running = [f for f in futures if not f.cancelled()]
    if running:
        cf.wait(running, timeout=_ABORT_WAIT_S)
