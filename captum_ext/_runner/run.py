"""The runner: values of independent cells, from the cache or computed on an executor.

Locks are never waited for while this process holds any: a cell locked by another run is put off,
and taken up again (non-blocking) whenever this run's own cells finish, so two runs sharing a
cache cannot wait for each other (each computes a cell once, the other reads it).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from .cache import CellCache
from .workers import (
    BLOB_TAG,
    MAIN_GUARD_HINT,
    Out,
    SharedRef,
    call,
    check_workers,
    dask_client,
    pickled,
    process_pool,
    write_shared,
)

__all__ = ["CellStats", "run_cells"]

#: seconds between two looks at cells that another run is computing
POLL_SECONDS = 0.5


@dataclass
class CellStats:
    """Timings of one :func:`run_cells` call.

    Attributes:
        computed: cells computed by this call.
        cached: cells read from the cache (including cells another process computed meanwhile).
        cell_seconds: wall seconds of each computed cell inside its worker.
        cell_cpu_seconds: CPU seconds of each computed cell (the worker thread's).
        cell_started: ``time.time()`` at which each computed cell reached its worker.
        cell_workers: the process id that computed each cell.
        started: ``time.time()`` at the start of the call.
        wall_seconds: wall time of the whole call.
    """

    computed: int = 0
    cached: int = 0
    cell_seconds: list[float] = field(default_factory=list)
    cell_cpu_seconds: list[float] = field(default_factory=list)
    cell_started: list[float] = field(default_factory=list)
    cell_workers: list[int] = field(default_factory=list)
    started: float = 0.0
    wall_seconds: float = 0.0


_BUSY = (-1, None)  # only cells that other runs hold are left


class _Claims:
    """Hands out the cells this process must compute, each with its lock held.

    :meth:`take` never blocks while the caller may hold locks (``wait=0``): a cell locked by
    another run is deferred and retried later; a cell found in the cache is reported through
    ``on_hit`` and skipped.
    """

    def __init__(
        self,
        cells: Sequence[Any],
        cache: CellCache | None,
        on_hit: Callable[[int, Any], None],
        check: Callable[[Any], bool] | None,
    ) -> None:
        self.cells, self.cache, self.on_hit, self.check = cells, cache, on_hit, check
        self.fresh: deque[int] = deque(range(len(cells)))
        self.deferred: deque[int] = deque()

    def take(self, wait: float) -> tuple[int, Any] | None:
        """``(index, lock)`` of the next cell to compute, :data:`_BUSY`, or ``None`` when done.

        Args:
            wait: seconds to wait for one deferred cell's lock when nothing else is left (0: do
                not wait; only a caller that holds no lock may wait).
        """
        if self.cache is None:
            return (self.fresh.popleft(), None) if self.fresh else None
        while self.fresh:
            got = self._try(self.fresh.popleft(), 0)
            if got is not None:
                return got
        for _ in range(len(self.deferred)):
            got = self._try(self.deferred.popleft(), 0)
            if got is not None:
                return got
        if self.deferred and wait > 0:
            got = self._try(self.deferred.popleft(), wait)
            if got is not None:
                return got
        return _BUSY if self.deferred else None

    def _try(self, i: int, wait: float) -> tuple[int, Any] | None:
        """Lock cell ``i`` and return it when it must be computed; ``None`` when it was found in the
        cache (reported) or is locked by another run (deferred)."""
        from filelock import Timeout

        assert self.cache is not None
        lock = self.cache.lock(self.cells[i])
        try:
            lock.acquire(timeout=wait)
        except Timeout:  # another run computes it
            self.deferred.append(i)
            return None
        value = self.cache.get(self.cells[i], self.check)
        if value is None:  # ours to compute (also when the other run failed or died)
            return i, lock
        lock.release()
        self.on_hit(i, value)
        return None


def run_cells(
    fn: Callable[[Any, Any], Any],
    shared: Any,
    cells: Sequence[Any],
    *,
    executor: Any = None,
    cache: CellCache | None = None,
    max_in_flight: int | None = None,
    show_progress: bool = False,
    desc: str = "cells",
    worker_threads: int | None = None,
    check: Callable[[Any], bool] | None = None,
) -> tuple[list[Any], CellStats]:
    """Values of ``fn(shared, cell)`` for every cell, from the cache or computed (see the package doc).

    Args:
        fn: a picklable top-level function ``fn(shared, cell) -> JSON-able value`` (not ``None``).
        shared: the data every cell reads (sent to each worker once).
        cells: JSON-able cell descriptions (the cache identifies a cell by its JSON text).
        executor: ``None`` (in this process), an ``int`` (a process pool of that many workers,
            created and shut down here, data sent by its initializer), a Dask ``Client`` or its
            ``get_executor()`` (data scattered to every worker once), or any other
            ``concurrent.futures.Executor`` (data written once to a temporary file that each
            worker process reads once; a ``ThreadPoolExecutor`` gets ``shared`` itself).
        cache: an optional :class:`~captum_ext._runner.CellCache`.
        max_in_flight: most cells submitted and not finished at a time (default: twice the
            number of workers when known, else 8).
        show_progress: a tqdm bar over cells.
        desc: the bar's label.
        worker_threads: torch's intra-op thread count in the worker processes of a pool created
            here (``executor=<int>``), set once when each worker starts; ``None`` leaves torch's
            default.
        check: ``check(value) -> bool`` for values read from the cache; a refused value (a file
            edited together with its checksum) is recomputed with a warning.

    Returns:
        ``(values, stats)``: one value per cell, in order, and a :class:`CellStats`.

    Raises:
        RuntimeError: the worker processes died while starting (with the likely cause: a main
            script without an ``if __name__ == "__main__":`` guard).

    Examples:
        >>> values, stats = run_cells(lambda shared, cell: shared * cell, 10, [1, 2, 3])
        >>> values, stats.computed
        ([10, 20, 30], 3)
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    values: list[Any] = [None] * len(cells)
    stats = CellStats(started=time.time())
    bar = tqdm(total=len(cells), desc=desc, disable=not show_progress)

    def on_hit(i: int, value: Any) -> None:
        values[i] = value
        stats.cached += 1
        bar.update(1)

    held: dict[int, Any] = {}

    def record(i: int, out: Out) -> None:
        value, wall, cpu, start, pid = out
        values[i] = value
        stats.computed += 1
        stats.cell_seconds.append(wall)
        stats.cell_cpu_seconds.append(cpu)
        stats.cell_started.append(start)
        stats.cell_workers.append(pid)
        lock = held.pop(i)
        if cache is not None:
            cache.put(cells[i], value, {"seconds": wall, "cpu_seconds": cpu})
            lock.release()
        bar.update(1)

    owned_pool = None
    tmp_file = None
    claims = _Claims(cells, cache, on_hit, check)
    try:
        if executor is None:
            while (got := claims.take(wait=POLL_SECONDS)) is not None:
                if got is not _BUSY:
                    held[got[0]] = got[1]
                    record(got[0], call(fn, shared, cells[got[0]]))
        else:
            token = uuid.uuid4().hex
            workers = None
            client = dask_client(executor)
            if isinstance(executor, bool) or not (
                isinstance(executor, int) or client is not None or isinstance(executor, cf.Executor)
            ):
                raise TypeError(
                    "executor must be None, a number of worker processes, a Dask Client (or its "
                    f"get_executor()) or a concurrent.futures.Executor; got {type(executor).__name__}"
                )
            if isinstance(executor, int):
                check_workers(executor)  # before the data file is written
                ref: Any = SharedRef(token, tmp_file := write_shared(shared, token))
                owned_pool = pool = process_pool(executor, worker_threads, ref)
                workers = executor
            elif client is not None:
                pool = executor if isinstance(executor, cf.Executor) else client.get_executor()
                # pickled once here and scattered as bytes: 0.35 s for 100 MB of tensors on a local
                # cluster, against 1.3-2.5 s when Dask serializes the object itself
                blob = client.scatter(pickled(shared), broadcast=True, hash=False)
                ref = (BLOB_TAG, token, blob)  # a tuple, so that Dask resolves the future inside
                workers = len(client.scheduler_info().get("workers", {})) or None
            elif isinstance(executor, cf.ThreadPoolExecutor):
                pool, ref = executor, shared
                workers = getattr(executor, "_max_workers", None)
            else:
                pool = executor
                ref = SharedRef(token, tmp_file := write_shared(shared, token))
                workers = getattr(executor, "_max_workers", None)
            limit = max_in_flight or (2 * workers if workers else 8)
            if limit < 1:
                raise ValueError(f"max_in_flight must be >= 1, got {limit}")
            _pump(pool, fn, ref, cells, claims, held, record, limit)
    except BrokenProcessPool as err:
        path = getattr(sys.modules.get("__main__"), "__file__", "(interactive)")
        raise RuntimeError(
            "the worker processes died (BrokenProcessPool). Likely causes: out of memory, a crash "
            "in native code, or " + MAIN_GUARD_HINT.format(path=path)
        ) from err
    finally:
        for lock in held.values():
            if lock is not None:
                lock.release()
        if owned_pool is not None:
            owned_pool.shutdown(wait=True, cancel_futures=True)
        if tmp_file is not None:
            os.unlink(tmp_file)
        bar.close()
    stats.wall_seconds = time.perf_counter() - t0
    return values, stats


def _pump(
    pool: cf.Executor,
    fn: Callable[[Any, Any], Any],
    ref: Any,
    cells: Sequence[Any],
    claims: _Claims,
    held: dict[int, Any],
    record: Callable[[int, Out], None],
    limit: int,
) -> None:
    """Keep at most ``limit`` cells in flight on ``pool`` until every claim is done.

    Only when nothing of ours is in flight (so no lock of ours is held) does it wait for another
    run's lock; otherwise it waits for its own cells and retries the deferred ones in between.
    """
    pending: dict[cf.Future[Any], int] = {}
    busy = False

    def fill() -> bool:
        """Submit cells up to the limit; ``True`` when only other runs' cells are left."""
        while len(pending) < limit:
            got = claims.take(wait=0 if pending else POLL_SECONDS)
            if got is None:
                return False
            if got is _BUSY:
                return True
            held[got[0]] = got[1]
            pending[pool.submit(call, fn, ref, cells[got[0]])] = got[0]
        return False

    try:
        busy = fill()
        while pending or busy:
            if pending:
                done, _ = cf.wait(
                    pending, timeout=POLL_SECONDS if busy else None, return_when=cf.FIRST_COMPLETED
                )
                for fut in done:
                    record(pending.pop(fut), fut.result())
            busy = fill()
    except BaseException:
        for fut in pending:
            fut.cancel()
        raise
