"""A cached runner of independent *cells* (plumbing only, no metric maths).

A run is a list of cells, each a small JSON-able description (``{"kind": "top", "k": 3, ...}``),
and one function ``fn(shared, cell) -> value`` with one ``shared`` object (the data) common to all
cells. :func:`run_cells` computes the values serially or on an executor and keeps them in an
optional on-disk :class:`CellCache`:

* **keys by content** -- :func:`fingerprint` digests what determines a result: tensor bytes, the
  byte code, constants, defaults, closure values and referenced globals of functions (lambdas and
  closures included), dataclass fields, object attributes. Code from installed third-party
  packages and the standard library is identified by name and package version. Anything it cannot
  digest raises :class:`UnfingerprintableError`, which tells the caller to pass ``cache_key``;
* **verified files** -- each cell file stores the run key, the cell and a SHA-256 checksum of
  both plus the value; a file that fails the check is reported with a warning and recomputed;
* **no litter** -- files are written to a ``.part`` temporary and renamed; ``.part`` files left
  by dead processes (or older than an hour) are removed when a cache is opened;
* **shared work** -- a cell being computed is guarded by a lock file (``filelock``, an OS lock
  that dies with its process), so concurrent runs on one cache compute every cell once;
* **data sent once** -- ``shared`` reaches each worker once: pickled once to a temporary file
  that each worker process reads once (by the process pool's ``initializer`` for
  ``executor=<int>``, at its first cell for any other ``concurrent.futures`` executor; a file
  rather than the pool's pipes, which took 0.55 s per worker for 88 MB), or pickled once and
  sent as bytes by ``client.scatter(..., broadcast=True)`` for Dask (unpickled once per worker).
  At most ``max_in_flight`` cells are submitted at a time.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import enum
import functools
import hashlib
import importlib.metadata
import json
import multiprocessing
import os
import pickle
import socket
import sys
import tempfile
import threading
import time
import types
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "CellCache",
    "CellStats",
    "UnfingerprintableError",
    "fingerprint",
    "process_pool",
    "run_cells",
]

FORMAT = "captum_ext.cells/2"
STALE_PART_SECONDS = 3600.0


# --------------------------------------------------------------------------------------------------
# content fingerprints


class UnfingerprintableError(TypeError):
    """An object that determines a cached result cannot be digested by content."""


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


@functools.lru_cache(maxsize=256)
def _library(module: str | None) -> str | None:
    """``"name==version"`` for stdlib / installed third-party modules; ``None`` for code we digest.

    ``captum_ext`` itself and modules of no installed distribution (scripts, ``__main__``, test
    files, notebooks) are digested by content because they change without a version bump.
    """
    if not module:
        return None
    top = module.split(".")[0]
    if top == "captum_ext" or module == "__main__":
        return None
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return f"python=={sys.version_info[0]}.{sys.version_info[1]}"
    dists = _distributions().get(top)
    if dists:
        try:
            return f"{dists[0]}=={importlib.metadata.version(dists[0])}"
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover
            return None
    return None


_CODE_ATTRS = (
    "co_argcount",
    "co_posonlyargcount",
    "co_kwonlyargcount",
    "co_flags",
    "co_code",
    "co_names",
    "co_varnames",
    "co_freevars",
    "co_cellvars",
)


class _Hasher:
    def __init__(self, what: str) -> None:
        self.h = hashlib.sha256()
        self.what = what
        self.stack: list[int] = []

    def put(self, *parts: Any) -> None:
        for p in parts:
            self.h.update(p if isinstance(p, bytes) else str(p).encode())
            self.h.update(b"\x00")

    def refuse(self, obj: Any, why: str) -> None:
        raise UnfingerprintableError(
            f"cannot fingerprint {self.what} for the cache: {type(obj).__module__}.{type(obj).__qualname__} "
            f"{why}. Pass cache_key='...' (a string that you change whenever this object changes) "
            "or run without cache_dir."
        )

    def feed(self, obj: Any) -> None:  # noqa: C901 - one dispatch table
        if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
            self.put(type(obj).__name__, repr(obj))
            return
        if isinstance(obj, (torch.dtype, torch.device, torch.layout, torch.memory_format, range, slice)):
            self.put(type(obj).__name__, repr(obj))
            return
        if obj is Ellipsis or obj is NotImplemented:
            self.put(repr(obj))
            return
        if isinstance(obj, Path):
            self.put("path", str(obj))
            return
        if isinstance(obj, enum.Enum):
            self.feed(type(obj))
            self.put("enum", obj.name)
            return
        if isinstance(obj, Tensor):
            self.tensor(obj)
            return
        if type(obj).__module__ == "numpy" or type(obj).__module__.startswith("numpy."):
            if hasattr(obj, "tobytes") and hasattr(obj, "dtype"):
                self.put("ndarray", str(obj.dtype), repr(getattr(obj, "shape", ())), obj.tobytes())
                return
        if id(obj) in self.stack:
            self.put("cycle", self.stack.index(id(obj)))
            return
        self.stack.append(id(obj))
        try:
            self._feed_container(obj)
        finally:
            self.stack.pop()

    def _feed_container(self, obj: Any) -> None:  # noqa: C901
        if isinstance(obj, (tuple, list)):
            self.put(type(obj).__name__, len(obj))
            for o in obj:
                self.feed(o)
            return
        if isinstance(obj, dict):
            self.put("dict", len(obj))
            for k in sorted(obj, key=repr):
                self.feed(k)
                self.feed(obj[k])
            return
        if isinstance(obj, (set, frozenset)):
            self.put("set", len(obj))
            for sub in sorted(fingerprint(o, self.what) for o in obj):
                self.put(sub)
            return
        if isinstance(obj, types.CodeType):
            self.code(obj)
            return
        if isinstance(obj, functools.partial):
            self.put("partial")
            self.feed(obj.func)
            self.feed(obj.args)
            self.feed(obj.keywords)
            return
        if isinstance(obj, types.MethodType):
            self.put("method")
            self.feed(obj.__func__)
            self.feed(obj.__self__)
            return
        if isinstance(obj, types.FunctionType):
            self.function(obj)
            return
        if isinstance(obj, types.ModuleType):
            self.module(obj)
            return
        if isinstance(obj, type):
            self.klass(obj)
            return
        if isinstance(obj, (types.BuiltinFunctionType, types.BuiltinMethodType)):
            self.named(obj)
            return
        if isinstance(obj, (property, staticmethod, classmethod)):
            self.put(type(obj).__name__)
            for f in (getattr(obj, "fget", None), getattr(obj, "fset", None), getattr(obj, "__func__", None)):
                if f is not None:
                    self.feed(f)
            return
        if isinstance(obj, torch.Generator):
            self.put("generator", str(obj.device))
            self.tensor(obj.get_state())
            return
        self.instance(obj)

    def tensor(self, t: Tensor) -> None:
        t = t.detach()
        if t.is_sparse or t.layout != torch.strided:
            t = t.to_dense()
        t = t.to("cpu").contiguous()
        self.put("tensor", str(t.dtype), tuple(t.shape))
        if t.dtype == torch.bool:
            t = t.to(torch.uint8)
        self.h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())

    def named(self, obj: Any) -> None:
        module = getattr(obj, "__module__", None) or getattr(type(obj), "__module__", None)
        lib = _library(module)
        name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
        if lib is None or name is None:
            self.refuse(obj, "is built-in code outside the standard library and installed packages")
        self.put("named", module, name, lib)

    def code(self, code: types.CodeType) -> None:
        self.put("code", *(repr(getattr(code, a, None)) for a in _CODE_ATTRS))
        table = getattr(code, "co_exceptiontable", None)
        if table is not None:
            self.put(table)
        self.put("consts", len(code.co_consts))
        for c in code.co_consts:
            self.feed(c)

    def _global_names(self, code: types.CodeType) -> set[str]:
        names = set(code.co_names)
        for c in code.co_consts:
            if isinstance(c, types.CodeType):
                names |= self._global_names(c)
        return names

    def function(self, fn: types.FunctionType) -> None:
        lib = _library(fn.__module__)
        if lib is not None:
            self.put("function", fn.__module__, fn.__qualname__, lib)
            return
        self.put("function", fn.__module__, fn.__qualname__)
        self.code(fn.__code__)
        self.feed(fn.__defaults__)
        self.feed(fn.__kwdefaults__)
        cells = fn.__closure__ or ()
        self.put("closure", len(cells))
        for cell in cells:
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                self.put("empty-cell")
                continue
            self.feed(value)
        used = sorted(n for n in self._global_names(fn.__code__) if n in fn.__globals__)
        self.put("globals", len(used))
        for name in used:
            self.put(name)
            self.feed(fn.__globals__[name])

    def module(self, mod: types.ModuleType) -> None:
        lib = _library(mod.__name__)
        if lib is not None:
            self.put("module", mod.__name__, lib)
            return
        path = getattr(mod, "__file__", None)
        if path is None or not os.path.exists(path):
            self.refuse(mod, "has no source file to digest")
        self.put("module", mod.__name__, hashlib.sha256(Path(path).read_bytes()).hexdigest())

    def klass(self, cls: type) -> None:
        lib = _library(cls.__module__)
        if lib is not None:
            self.put("class", cls.__module__, cls.__qualname__, lib)
            return
        self.put("class", cls.__module__, cls.__qualname__)
        for base in cls.__bases__:
            self.feed(base)
        for name in sorted(cls.__dict__):
            value = cls.__dict__[name]
            if isinstance(value, (types.FunctionType, property, staticmethod, classmethod)):
                self.put(name)
                self.feed(value)
            elif not name.startswith("__") and isinstance(value, (bool, int, float, str, tuple, Tensor)):
                self.put(name)
                self.feed(value)

    def instance(self, obj: Any) -> None:
        cls = type(obj)
        self.feed(cls)
        if dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                self.put(f.name)
                self.feed(getattr(obj, f.name))
            return
        state: dict[str, Any] = {}
        if hasattr(obj, "__dict__"):
            state.update(vars(obj))
        for klass in cls.__mro__:
            for slot in getattr(klass, "__slots__", ()):
                if slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                    state[slot] = getattr(obj, slot)
        if not state and not hasattr(obj, "__dict__"):
            self.refuse(obj, "exposes no state (no __dict__ or __slots__) to digest")
        self.feed(state)


def fingerprint(obj: Any, what: str = "an object") -> str:
    """SHA-256 hex digest of ``obj`` by content (see the module doc), the same in every process.

    Args:
        obj: tensors, numbers, strings, containers, functions (code, defaults, closure values and
            referenced globals), classes, dataclass instances and plain objects, nested freely.
        what: how to name the object in the error message.

    Returns:
        A 64-character hex digest.

    Raises:
        UnfingerprintableError: (a ``TypeError``) for an object whose content cannot be read;
            the message names the ``cache_key`` escape hatch.

    Examples:
        >>> def make(epochs):
        ...     return lambda: epochs
        >>> fingerprint(make(1)) == fingerprint(make(1)), fingerprint(make(1)) == fingerprint(make(60))
        (True, False)
    """
    h = _Hasher(what)
    h.feed(obj)
    return h.h.hexdigest()


# --------------------------------------------------------------------------------------------------
# the on-disk cache


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _checksum(key: str, cell: Any, value: Any) -> str:
    return hashlib.sha256(_canonical([FORMAT, key, cell, value]).encode()).hexdigest()


def _part_name() -> str:
    return f".tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.part"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - alive, another user's
        return True
    return True


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` atomically: a ``.part`` temporary in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / _part_name()
    try:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class CellCache:
    """One verified JSON file per finished cell under ``folder`` (see the module doc).

    Args:
        folder: the cache folder of one run key (created on first write).
        key: the run key (a content fingerprint of everything that determines the values).
        manifest: a JSON-able description written once to ``run.json`` (for humans).
        stale_after: age in seconds after which a ``.part`` file of a live process is stale too.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        key: str,
        manifest: dict[str, Any] | None = None,
        stale_after: float = STALE_PART_SECONDS,
    ) -> None:
        self.folder = Path(folder)
        self.key = key
        self.folder.mkdir(parents=True, exist_ok=True)
        self.clean_parts(stale_after)
        run = self.folder / "run.json"
        if manifest is not None and not run.exists():
            atomic_write_json(run, {"format": FORMAT, "key": key, **manifest})

    def clean_parts(self, stale_after: float = STALE_PART_SECONDS) -> list[Path]:
        """Remove ``.part`` files of dead processes on this host or older than ``stale_after`` s."""
        removed = []
        host = socket.gethostname()
        now = time.time()
        for p in self.folder.glob("*.part"):
            bits = p.name[len(".tmp-") : -len(".part")].rsplit("-", 2)
            dead = False
            if len(bits) == 3 and bits[0] == host and bits[1].isdigit():
                dead = not _pid_alive(int(bits[1]))
            try:
                old = now - p.stat().st_mtime > stale_after
                if dead or old:
                    p.unlink()
                    removed.append(p)
            except FileNotFoundError:  # removed by a concurrent run
                pass
        return removed

    def path(self, cell: Any) -> Path:
        name = hashlib.sha256(_canonical(cell).encode()).hexdigest()[:24]
        return self.folder / f"cell-{name}.json"

    def lock(self, cell: Any) -> Any:
        from filelock import FileLock

        path = str(self.path(cell).with_suffix(".lock"))
        try:  # keep the file: unlinking a lock file on release lets two runs hold "the" lock
            return FileLock(path, thread_local=False, preserve_lock_file=True)
        except TypeError:  # pragma: no cover - filelock < 3.17
            return FileLock(path, thread_local=False)

    def get(self, cell: Any) -> Any | None:
        """The cached value of ``cell``, or ``None`` (with a warning for a file that fails its check)."""
        path = self.path(cell)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            rec = json.loads(text)
            problem = None
            if rec.get("format") != FORMAT or rec.get("key") != self.key or rec.get("cell") != cell:
                problem = "belongs to another run key or cell"
            elif rec.get("checksum") != _checksum(self.key, cell, rec.get("value")):
                problem = "fails its checksum (edited or corrupted)"
        except (ValueError, AttributeError, TypeError):
            problem = "is not a valid cell record"
        if problem is not None:
            warnings.warn(f"cache file {path} {problem}; recomputing the cell", stacklevel=3)
            return None
        return rec["value"]

    def put(self, cell: Any, value: Any, info: dict[str, Any] | None = None) -> None:
        rec = {
            "format": FORMAT,
            "key": self.key,
            "cell": cell,
            "value": value,
            "checksum": _checksum(self.key, cell, value),
            "info": info or {},
        }
        atomic_write_json(self.path(cell), rec)


# --------------------------------------------------------------------------------------------------
# sending the shared data once

_WORKER_SHARED: dict[str, Any] = {}
_WORKER_LOCK = threading.Lock()


@dataclass(frozen=True)
class _SharedRef:
    """A handle to ``shared``: a file each worker process reads once (then keeps it in memory)."""

    token: str
    path: str


def _init_worker(threads: int | None, shared: Any = None) -> None:
    """Process-pool initializer: torch's thread count for the worker's life, then the shared data
    read from its file (once per worker, while the other workers start).

    The thread count is set here, once, rather than switched inside every cell: a worker that
    starts with torch's default (one OpenMP thread per core) and drops to one thread per cell
    ran its cells with 15-40 % more CPU when two workers shared two cores.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    if shared is not None:
        _resolve(shared)


def _pickled(shared: Any) -> bytes:
    try:
        return pickle.dumps(shared, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as err:
        raise TypeError(
            f"executor: the data of the cells cannot be sent to worker processes ({err}); a model "
            "factory, trainer or loss function defined inside a function or as a lambda does not "
            "pickle: define it at module level (or use functools.partial), or use executor=None"
        ) from err


def _write_shared(shared: Any) -> str:
    """Pickle ``shared`` to a new temporary file (the caller deletes it) and return its path."""
    blob = _pickled(shared)
    fd, path = tempfile.mkstemp(prefix="captum_ext-cells-", suffix=".pkl")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
    except BaseException:  # a full disk: leave no partial file behind
        os.unlink(path)
        raise
    return path


_BLOB_TAG = "captum_ext-pickled-shared"


def _resolve(shared: Any) -> Any:
    """The shared data of a cell: ``shared`` itself, or unpickled once per worker process from a
    file (:class:`_SharedRef`) or from scattered bytes (``(_BLOB_TAG, token, bytes)``)."""
    if isinstance(shared, _SharedRef):
        token = shared.token
    elif isinstance(shared, tuple) and len(shared) == 3 and shared[0] == _BLOB_TAG:
        token = shared[1]
    else:
        return shared
    with _WORKER_LOCK:
        if token not in _WORKER_SHARED:
            if isinstance(shared, _SharedRef):
                with open(shared.path, "rb") as fh:
                    value = pickle.load(fh)
            else:
                value = pickle.loads(shared[2])
            _WORKER_SHARED.clear()  # keep one run's data at a time
            _WORKER_SHARED[token] = value
        return _WORKER_SHARED[token]


_Out = tuple[Any, float, float, float, int]


def _call(fn: Callable[[Any, Any], Any], shared: Any, cell: Any) -> _Out:
    """Run one cell in a worker: ``(value, wall s, CPU s of this thread, start time, process id)``."""
    start = time.time()
    data = _resolve(shared)
    w0, c0 = time.perf_counter(), time.thread_time()
    value = fn(data, cell)
    return value, time.perf_counter() - w0, time.thread_time() - c0, start, os.getpid()


_PRELOAD = ["torch", "torch._dynamo", "torch.optim", "captum_ext.metrics.diff_roar"]


def _mp_context() -> Any:
    """A fork server that imported torch (and ``torch._dynamo``, which the first ``torch.optim``
    optimiser of a process needs) once; forking straight from a multi-threaded parent can deadlock."""
    if "forkserver" not in multiprocessing.get_all_start_methods():  # pragma: no cover - Windows
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def _check_workers(workers: int) -> None:
    if workers < 1:
        raise ValueError(f"executor: the number of worker processes must be >= 1, got {workers}")


def process_pool(
    workers: int, threads: int | None = None, shared: _SharedRef | None = None
) -> cf.ProcessPoolExecutor:
    """A ``ProcessPoolExecutor`` of ``workers`` processes from a preloaded fork server.

    Its initializer sets torch's intra-op thread count to ``threads`` in every worker once, when
    the worker starts (``None``: torch's default), and loads ``shared`` (a handle written by
    :func:`run_cells`) into the worker.
    """
    _check_workers(workers)
    return cf.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=_mp_context(),
        initializer=_init_worker,
        initargs=(threads, shared),
    )


def _dask_client(executor: Any) -> Any | None:
    if hasattr(executor, "scatter") and hasattr(executor, "get_executor"):
        return executor
    if type(executor).__name__ == "ClientExecutor":
        return getattr(executor, "_client", None)
    return None


# --------------------------------------------------------------------------------------------------
# the runner


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


def _claims(
    cells: Sequence[Any], cache: CellCache | None, on_hit: Callable[[int, Any], None]
) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, lock)`` for cells this process must compute, holding each cell's lock.

    Cells locked by another run are put off until the end, then waited for and read from the
    cache (or computed here when that run died or failed before writing them).
    """
    from filelock import Timeout

    deferred = []
    for i, cell in enumerate(cells):
        if cache is None:
            yield i, None
            continue
        lock = cache.lock(cell)
        try:
            lock.acquire(timeout=0)
        except Timeout:  # another run holds it
            deferred.append((i, lock))
            continue
        yield from _claimed(i, cell, lock, cache, on_hit)
    for i, lock in deferred:
        lock.acquire()  # the other run finished the cell, failed, or died (its OS lock went with it)
        yield from _claimed(i, cells[i], lock, cache, on_hit)  # type: ignore[arg-type]


def _claimed(
    i: int, cell: Any, lock: Any, cache: CellCache, on_hit: Callable[[int, Any], None]
) -> Iterator[tuple[int, Any]]:
    value = cache.get(cell)
    if value is not None:
        lock.release()
        on_hit(i, value)
        return
    yield i, lock


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
) -> tuple[list[Any], CellStats]:
    """Values of ``fn(shared, cell)`` for every cell, from the cache or computed (see module doc).

    Args:
        fn: a picklable top-level function ``fn(shared, cell) -> JSON-able value``.
        shared: the data every cell reads (sent to each worker once).
        cells: JSON-able cell descriptions (the cache identifies a cell by its JSON text).
        executor: ``None`` (in this process), an ``int`` (a process pool of that many workers,
            created and shut down here, data sent by its initializer), a Dask ``Client`` or its
            ``get_executor()`` (data scattered to every worker once), or any other
            ``concurrent.futures.Executor`` (data written once to a temporary file that each
            worker process reads once).
        cache: an optional :class:`CellCache`.
        max_in_flight: most cells submitted and not finished at a time (default: twice the
            number of workers when known, else 8).
        show_progress: a tqdm bar over cells.
        desc: the bar's label.
        worker_threads: torch's intra-op thread count in the worker processes of a pool created
            here (``executor=<int>``), set once when each worker starts; ``None`` leaves torch's
            default.

    Returns:
        ``(values, stats)``: one value per cell, in order, and a :class:`CellStats`.
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

    def record(i: int, out: _Out) -> None:
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
    try:
        claims = _claims(cells, cache, on_hit)
        if executor is None:
            for i, lock in claims:
                held[i] = lock
                record(i, _call(fn, shared, cells[i]))
        else:
            token = uuid.uuid4().hex
            workers = None
            client = _dask_client(executor)
            if isinstance(executor, bool) or not (
                isinstance(executor, int) or client is not None or isinstance(executor, cf.Executor)
            ):
                raise TypeError(
                    "executor must be None, a number of worker processes, a Dask Client (or its "
                    f"get_executor()) or a concurrent.futures.Executor; got {type(executor).__name__}"
                )
            if isinstance(executor, int):
                _check_workers(executor)  # before the data file is written
                ref: Any = _SharedRef(token, tmp_file := _write_shared(shared))
                owned_pool = pool = process_pool(executor, worker_threads, ref)
                workers = executor
            elif client is not None:
                pool = executor if isinstance(executor, cf.Executor) else client.get_executor()
                # pickled once here and scattered as bytes: 0.35 s for 100 MB of tensors on a local
                # cluster, against 1.3-2.5 s when Dask serializes the object itself
                blob = client.scatter(_pickled(shared), broadcast=True, hash=False)
                ref = (_BLOB_TAG, token, blob)  # a tuple, so that Dask resolves the future inside
                workers = len(client.scheduler_info().get("workers", {})) or None
            elif isinstance(executor, cf.ThreadPoolExecutor):
                pool, ref = executor, shared
                workers = getattr(executor, "_max_workers", None)
            else:
                pool = executor
                ref = _SharedRef(token, tmp_file := _write_shared(shared))
                workers = getattr(executor, "_max_workers", None)
            limit = max_in_flight or (2 * workers if workers else 8)
            if limit < 1:
                raise ValueError(f"max_in_flight must be >= 1, got {limit}")
            _pump(pool, fn, ref, cells, claims, held, record, limit)
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
    claims: Iterator[tuple[int, Any]],
    held: dict[int, Any],
    record: Callable[[int, _Out], None],
    limit: int,
) -> None:
    """Keep at most ``limit`` cells in flight on ``pool`` until every claim is done."""
    pending: dict[cf.Future[Any], int] = {}

    def submit_next() -> bool:
        for i, lock in claims:
            held[i] = lock
            pending[pool.submit(_call, fn, ref, cells[i])] = i
            return True
        return False

    try:
        while len(pending) < limit and submit_next():
            pass
        while pending:
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                record(pending.pop(fut), fut.result())
            while len(pending) < limit and submit_next():
                pass
    except BaseException:
        for fut in pending:
            fut.cancel()
        raise
