"""How a metric that runs many jobs (trainings) runs them: one validated, frozen object."""

from __future__ import annotations

import concurrent.futures as cf
import os
from dataclasses import dataclass
from typing import Any

from .workers import dask_client

__all__ = ["ExecutionOptions"]


@dataclass(frozen=True)
class ExecutionOptions:
    """Where and how the jobs (cells) of a metric run; none of it changes a returned number.

    Args:
        executor: ``None`` (this process), a number of worker processes (a pool created and shut
            down by the call), a Dask ``Client`` (or its ``get_executor()``), or a
            ``concurrent.futures.ProcessPoolExecutor``-like executor. Thread pools are refused by
            metrics whose jobs seed torch's global random generator.
        max_in_flight: most jobs queued on the executor at a time (default twice its workers).
        cache_dir: folder of the verified per-job cache (``None``: no cache). A killed run resumes,
            a finished run is read back, concurrent runs on one folder compute each job once.
        cache_key: a string that stands for the user code (model factory, trainer) in the cache
            key; change it whenever that code changes. Needed only when the code cannot be
            digested (the error says so).
        threads: torch intra-op threads inside each job (default 1, so that results do not depend
            on where a job runs); ``None`` leaves torch's default.

    Examples:
        >>> ExecutionOptions(executor=2, cache_dir="runs/cache").executor
        2
        >>> try:
        ...     ExecutionOptions(executor=0)
        ... except ValueError as e:
        ...     print(e)
        executor: the number of worker processes must be >= 1, got 0
    """

    executor: Any = None
    max_in_flight: int | None = None
    cache_dir: str | os.PathLike[str] | None = None
    cache_key: str | None = None
    threads: int | None = 1

    def __post_init__(self) -> None:
        ex = self.executor
        if isinstance(ex, bool) or not (
            ex is None or isinstance(ex, int) or isinstance(ex, cf.Executor) or dask_client(ex) is not None
        ):
            raise TypeError(
                "executor must be None, a number of worker processes, a Dask Client (or its "
                f"get_executor()) or a concurrent.futures.Executor; got {type(ex).__name__}"
            )
        if isinstance(ex, int) and ex < 1:
            raise ValueError(f"executor: the number of worker processes must be >= 1, got {ex}")
        for name in ("max_in_flight", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if self.cache_key is not None and not isinstance(self.cache_key, str):
            raise TypeError(f"cache_key must be a string, got {type(self.cache_key).__name__}")
        if self.cache_dir is not None and not isinstance(self.cache_dir, (str, os.PathLike)):
            raise TypeError(f"cache_dir must be a path, got {type(self.cache_dir).__name__}")
