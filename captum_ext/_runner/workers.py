"""Worker processes and the shared data: sent once, cleaned up when the parent dies.

* **data sent once** -- ``shared`` is pickled once (standard ``pickle``, or ``cloudpickle`` when
  it holds lambdas or closures and cloudpickle is installed, as it is with Dask) to a temporary
  file that each worker process of a pool reads once (by the pool's ``initializer``), or sent as
  bytes by ``client.scatter(..., broadcast=True)`` to every Dask worker (unpickled once there);
* **no orphans** -- every worker of a pool created here watches the process that created it and
  exits (removing the data file) within a second of that process's death, even by ``SIGKILL``;
  data files of dead processes on this host are removed at the next run as well;
* **a clear error** when the workers cannot start because the main script runs its work at import
  (no ``if __name__ == "__main__":`` guard): the workers re-import that script.
"""

from __future__ import annotations

import ast
import concurrent.futures as cf
import multiprocessing
import os
import pickle
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .cache import pid_alive

__all__ = ["check_main_guard", "process_pool"]

_WORKER_SHARED: dict[str, Any] = {}
_WORKER_LOCK = threading.Lock()
_FILE_PREFIX = "captum_ext-cells-"
#: seconds between two checks of a worker that its parent is alive
WATCH_SECONDS = 0.5


@dataclass(frozen=True)
class SharedRef:
    """A handle to ``shared``: a file each worker process reads once (then keeps it in memory)."""

    token: str
    path: str


def _watch_parent(parent: int, path: str | None) -> None:
    """Exit this worker (and remove the data file) once ``parent`` is gone."""
    while pid_alive(parent):
        time.sleep(WATCH_SECONDS)
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass
    os._exit(0)


def _init_worker(threads: int | None, shared: Any = None, parent: int | None = None) -> None:
    """Process-pool initializer: a watchdog on the parent, torch's thread count for the worker's
    life, then the shared data read from its file (once per worker, while the others start).

    The thread count is set here, once, rather than switched inside every cell: a worker that
    starts with torch's default (one OpenMP thread per core) and drops to one thread per cell
    ran its cells with 15-40 % more CPU when two workers shared two cores.
    """
    if parent is not None:
        path = shared.path if isinstance(shared, SharedRef) else None
        threading.Thread(target=_watch_parent, args=(parent, path), daemon=True).start()
    if threads is not None:
        torch.set_num_threads(threads)
    if shared is not None:
        resolve(shared)


def pickled(shared: Any) -> bytes:
    """``shared`` pickled by value where needed: standard pickle, else cloudpickle (lambdas)."""
    try:
        return pickle.dumps(shared, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as err:
        first = err
    try:
        import cloudpickle
    except ImportError:
        cloudpickle = None
    if cloudpickle is not None:
        try:
            return cloudpickle.dumps(shared, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as err:  # noqa: BLE001 - reported below with the first error
            first = err
    raise TypeError(
        f"executor: the data of the cells cannot be sent to worker processes ({first}); a model "
        "factory, trainer or loss function defined inside a function or as a lambda pickles only "
        "with cloudpickle (pip install cloudpickle, which Dask installs): define it at module level "
        "(or use functools.partial), or use executor=None"
    ) from first


def _file_owner(path: Path) -> tuple[str, int] | None:
    bits = path.name[len(_FILE_PREFIX) :].split("-")
    if len(bits) >= 3 and bits[-3].isdigit():
        return "-".join(bits[:-3]), int(bits[-3])
    return None


def clean_orphan_files(folder: str | None = None) -> list[Path]:
    """Remove data files that dead processes on this host left in the temp folder."""
    removed = []
    host = socket.gethostname().replace("-", "_")
    for p in Path(folder or tempfile.gettempdir()).glob(f"{_FILE_PREFIX}*.pkl"):
        owner = _file_owner(p)
        if owner is not None and owner[0] == host and not pid_alive(owner[1]):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def write_shared(shared: Any, token: str) -> str:
    """Pickle ``shared`` to a new temporary file (the caller deletes it) and return its path.

    The name carries the host and the process id, so that a later run removes the file of a
    process that was killed before it could.
    """
    blob = pickled(shared)
    clean_orphan_files()
    host = socket.gethostname().replace("-", "_")
    fd, path = tempfile.mkstemp(prefix=f"{_FILE_PREFIX}{host}-{os.getpid()}-{token[:8]}-", suffix=".pkl")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
    except BaseException:  # a full disk: leave no partial file behind
        os.unlink(path)
        raise
    return path


BLOB_TAG = "captum_ext-pickled-shared"


def resolve(shared: Any) -> Any:
    """The shared data of a cell: ``shared`` itself, or unpickled once per worker process from a
    file (:class:`SharedRef`) or from scattered bytes (``(BLOB_TAG, token, bytes)``)."""
    if isinstance(shared, SharedRef):
        token = shared.token
    elif isinstance(shared, tuple) and len(shared) == 3 and shared[0] == BLOB_TAG:
        token = shared[1]
    else:
        return shared
    with _WORKER_LOCK:
        if token not in _WORKER_SHARED:
            if isinstance(shared, SharedRef):
                with open(shared.path, "rb") as fh:
                    value = pickle.load(fh)
            else:
                value = pickle.loads(shared[2])
            _WORKER_SHARED.clear()  # keep one run's data at a time
            _WORKER_SHARED[token] = value
        return _WORKER_SHARED[token]


Out = tuple[Any, float, float, float, int]


def call(fn: Callable[[Any, Any], Any], shared: Any, cell: Any) -> Out:
    """Run one cell in a worker: ``(value, wall s, CPU s of this thread, start time, process id)``."""
    start = time.time()
    data = resolve(shared)
    w0, c0 = time.perf_counter(), time.thread_time()
    value = fn(data, cell)
    return value, time.perf_counter() - w0, time.thread_time() - c0, start, os.getpid()


_PRELOAD = ["torch", "torch._dynamo", "torch.optim", "captum_ext.metrics.diff_roar.cells"]


def mp_context() -> Any:
    """A fork server that imported torch (and ``torch._dynamo``, which the first ``torch.optim``
    optimiser of a process needs) once; forking straight from a multi-threaded parent can deadlock."""
    if "forkserver" not in multiprocessing.get_all_start_methods():  # pragma: no cover - Windows
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def _has_main_guard(source: str) -> bool:
    for node in ast.parse(source).body:
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test):
            return True
    return False


MAIN_GUARD_HINT = (
    "worker processes re-import the main script {path}: put the code that starts the run under "
    '`if __name__ == "__main__":` (see the multiprocessing docs, "safe importing of the main '
    'module"), or use executor=None'
)


def check_main_guard() -> None:
    """Raise ``RuntimeError`` when the main script has no ``if __name__ == "__main__":`` guard.

    Worker processes started by a fork server (or spawned) import the main script again; one that
    starts its run at import would start pools inside the workers, which then die
    (``BrokenProcessPool``). Interactive sessions, ``python -c`` and ``python -m`` are fine.

    Examples:
        >>> check_main_guard()  # doctest runner: a module with a guard, or no script at all
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None or getattr(main, "__spec__", None) is not None or not path.endswith(".py"):
        return
    try:
        source = Path(path).read_text()
        guarded = _has_main_guard(source)
    except (OSError, SyntaxError, ValueError):
        return
    if not guarded:
        raise RuntimeError(MAIN_GUARD_HINT.format(path=path))


def check_workers(workers: int) -> None:
    if workers < 1:
        raise ValueError(f"executor: the number of worker processes must be >= 1, got {workers}")


def process_pool(
    workers: int, threads: int | None = None, shared: SharedRef | None = None
) -> cf.ProcessPoolExecutor:
    """A ``ProcessPoolExecutor`` of ``workers`` processes from a preloaded fork server.

    Its initializer starts a watchdog that ends the worker when this process dies, sets torch's
    intra-op thread count to ``threads`` in every worker once (``None``: torch's default), and
    loads ``shared`` (a handle written by :func:`~captum_ext._runner.run_cells`) into the worker.
    """
    check_workers(workers)
    check_main_guard()
    return cf.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=mp_context(),
        initializer=_init_worker,
        initargs=(threads, shared, os.getpid()),
    )


def dask_client(executor: Any) -> Any | None:
    """The Dask ``Client`` behind ``executor`` (a client or its ``get_executor()``), else ``None``."""
    if hasattr(executor, "scatter") and hasattr(executor, "get_executor"):
        return executor
    if type(executor).__name__ == "ClientExecutor":
        return getattr(executor, "_client", None)
    return None
