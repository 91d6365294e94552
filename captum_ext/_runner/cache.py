"""The verified on-disk cell cache: one JSON file per finished cell, a lock file per cell.

* **verified files** -- each cell file stores the run key, the cell and a SHA-256 checksum of
  both plus the value; a file that fails the check, or whose value the caller's ``check`` refuses
  (a value edited together with its checksum), is reported with a warning and recomputed;
* **no litter** -- files are written to a ``.part`` temporary and renamed; ``.part`` files left
  by dead processes (or older than an hour) are removed when a cache is opened;
* **shared work** -- a cell being computed is guarded by a lock file (``filelock``, an OS lock
  that dies with its process), so concurrent runs on one cache compute every cell once.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["CellCache", "atomic_write_json", "pid_alive"]

FORMAT = "captum_ext.cells/2"
STALE_PART_SECONDS = 3600.0


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _checksum(key: str, cell: Any, value: Any) -> str:
    return hashlib.sha256(_canonical([FORMAT, key, cell, value]).encode()).hexdigest()


def _part_name() -> str:
    return f".tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.part"


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host."""
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
                dead = not pid_alive(int(bits[1]))
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

    def get(self, cell: Any, check: Callable[[Any], bool] | None = None) -> Any | None:
        """The cached value of ``cell``, or ``None`` (with a warning for a file that fails its
        checksum, belongs to another key or cell, or holds a value that ``check`` refuses)."""
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
            elif rec.get("value") is None or (check is not None and not check(rec["value"])):
                problem = f"holds a value that is not a valid result ({rec.get('value')!r:.60})"
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
