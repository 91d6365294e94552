"""A job runner of its own: many independent *cells* of work, cached, resumable, parallel.

Plumbing only, no metric maths. A run is a list of cells, each a small JSON-able description
(``{"kind": "top", "k": 3, ...}``), one function ``fn(shared, cell) -> JSON-able value`` and one
``shared`` object (the data) common to all cells. :func:`run_cells` returns the values in order.

**Contract.**

* *Keys by content* (:func:`fingerprint`): a run's cache key digests everything that determines
  its values; what cannot be digested raises :class:`UnfingerprintableError`, whose message asks
  the caller for a ``cache_key`` string. Options that cannot change a value (evaluation batch
  size, executor, progress bars) must stay out of the key.
* *Verified cache* (:class:`CellCache`): one file per finished cell, written atomically with a
  checksum; a file that fails verification (or whose value the caller's ``check`` refuses) is
  recomputed with a warning; a killed run resumes where it stopped.
* *Shared work without deadlock*: each cell is computed under an OS file lock; a run never waits
  for another run's lock while holding one of its own, so any number of runs (serial or
  parallel) on one cache finish, each cell computed once.
* *Executors*: ``None`` (this process), an ``int`` (a pool of worker processes started from a
  fork server, data sent once by file), a Dask ``Client`` (data pickled once, cloudpickle for
  lambdas, and scattered), or any ``concurrent.futures.Executor``.
* *No orphans*: workers of a pool created here exit when the process that created them dies
  (``SIGKILL`` included) and remove its data file; data files of dead processes are removed at
  the next run. A main script without an ``if __name__ == "__main__":`` guard is reported before
  a pool starts.

Modules: :mod:`.digest` (content fingerprints), :mod:`.cache` (verified files, locks),
:mod:`.workers` (pools, shared data, watchdog), :mod:`.run` (the scheduler),
:mod:`.options` (:class:`ExecutionOptions`, the options every job-running metric takes).
"""

from .cache import CellCache
from .digest import UnfingerprintableError, fingerprint
from .options import ExecutionOptions
from .run import CellStats, run_cells
from .workers import process_pool

__all__ = [
    "CellCache",
    "CellStats",
    "ExecutionOptions",
    "UnfingerprintableError",
    "fingerprint",
    "process_pool",
    "run_cells",
]
