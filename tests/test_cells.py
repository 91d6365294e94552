"""The generic cached cell runner: content fingerprints, verified files, locks, executors."""

import functools
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from captum_ext._runner import CellCache, UnfingerprintableError, fingerprint, run_cells
from captum_ext._runner.workers import mp_context as _mp_context
from captum_ext.training import MLPFactory, Trainer

# ------------------------------------------------------------------------------------- fingerprints


def _make(epochs):
    def train(model, data, seed):
        return epochs

    return train


SCALE = 2.0


def _uses_global(x):
    return x * SCALE


def test_closures_are_told_apart_by_their_values():
    assert fingerprint(_make(1)) == fingerprint(_make(1))
    assert fingerprint(_make(1)) != fingerprint(_make(60))


def test_lambdas_are_told_apart_by_code_constants_and_defaults():
    a = lambda o, t: F.cross_entropy(o, t)  # noqa: E731
    b = lambda o, t: F.cross_entropy(o, t, label_smoothing=0.1)  # noqa: E731
    c = lambda o, t, w=1.0: w * F.cross_entropy(o, t)  # noqa: E731
    d = lambda o, t, w=2.0: w * F.cross_entropy(o, t)  # noqa: E731
    assert len({fingerprint(f) for f in (a, b, c, d)}) == 4
    assert fingerprint(Trainer(loss_fn=a)) != fingerprint(Trainer(loss_fn=b))
    assert fingerprint(Trainer(loss_fn=a)) == fingerprint(Trainer(loss_fn=lambda o, t: F.cross_entropy(o, t)))


def test_referenced_globals_partials_and_dataclass_fields_count():
    global SCALE
    before = fingerprint(_uses_global)
    SCALE = 3.0
    try:
        assert fingerprint(_uses_global) != before
    finally:
        SCALE = 2.0
    assert fingerprint(_uses_global) == before
    assert fingerprint(functools.partial(_make, 1)) != fingerprint(functools.partial(_make, 2))
    assert fingerprint(Trainer(epochs=1)) != fingerprint(Trainer(epochs=2))
    assert fingerprint(MLPFactory((3,), hidden=(4,))) != fingerprint(MLPFactory((3,), hidden=(5,)))
    assert fingerprint(torch.ones(3)) != fingerprint(torch.ones(3, dtype=torch.float64))
    assert fingerprint(torch.ones(3)) != fingerprint(torch.tensor([1.0, 1.0, 2.0]))
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})


@pytest.mark.slow
def test_fingerprint_is_the_same_in_another_process():
    code = (
        "from captum_ext._runner import fingerprint;"
        "from captum_ext.training import MLPFactory, Trainer;"
        "import torch;"
        "print(fingerprint((MLPFactory((3,), hidden=(4,)), Trainer(epochs=2), torch.arange(5))))"
    )
    env = dict(os.environ, PYTHONHASHSEED="123", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    here = fingerprint((MLPFactory((3,), hidden=(4,)), Trainer(epochs=2), torch.arange(5)))
    assert out.stdout.strip() == here


@dataclass
class _WithLock:
    guard: object = field(default_factory=threading.Lock)


def test_unfingerprintable_objects_name_cache_key():
    with pytest.raises(UnfingerprintableError, match="cache_key") as err:
        fingerprint(_WithLock(), "the trainer")
    assert "the trainer" in str(err.value) and isinstance(err.value, TypeError)


# -------------------------------------------------------------------------------------------- cache


def test_cache_round_trip_checksum_and_foreign_files(tmp_path):
    cache = CellCache(tmp_path / "run", "key-1", {"note": "x"})
    cell = {"i": 1, "f": 0.5}
    assert cache.get(cell) is None
    cache.put(cell, 0.75, {"seconds": 1.0})
    assert cache.get(cell) == 0.75
    assert json.loads((tmp_path / "run" / "run.json").read_text())["key"] == "key-1"
    path = cache.path(cell)
    rec = json.loads(path.read_text())
    rec["value"] = 0.99  # hand edit
    path.write_text(json.dumps(rec))
    with pytest.warns(UserWarning, match="checksum"):
        assert cache.get(cell) is None
    other = CellCache(tmp_path / "run", "key-2")  # same folder, another key
    cache.put(cell, 0.75)
    with pytest.warns(UserWarning, match="another run key"):
        assert other.get(cell) is None
    path.write_text("[1, 2")
    with pytest.warns(UserWarning, match="not a valid"):
        assert cache.get(cell) is None


def test_stale_part_files_are_removed_live_ones_kept(tmp_path):
    import socket

    folder = tmp_path / "run"
    folder.mkdir()
    host = socket.gethostname()
    dead = folder / f".tmp-{host}-999999999-0000.part"
    old = folder / ".tmp-legacy.part"
    live = folder / f".tmp-{host}-{os.getpid()}-1111.part"
    other_host = folder / ".tmp-elsewhere-12-2222.part"
    for p in (dead, old, live, other_host):
        p.write_text("{")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    CellCache(folder, "k")
    assert not dead.exists() and not old.exists()
    assert live.exists() and other_host.exists()  # a writer at work; another machine's file, young


# ------------------------------------------------------------------------------------------- runner


def _square(shared, cell):
    return float(shared["base"][cell["i"]] ** 2)


def _logged(shared, cell):
    """A cell that appends its index to a log file (O_APPEND writes of one line are atomic)."""
    with open(shared["log"], "a") as fh:
        fh.write(f"{cell['i']} {os.getpid()}\n")
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(cell["i"]))
    for _ in range(40):  # a few ms of work so that two runs overlap
        x = torch.tanh(x @ x.T / 64)
    return float(cell["i"])


CELLS = [{"i": i} for i in range(6)]


@pytest.mark.slow
def test_serial_pools_and_cache_agree(tmp_path):
    shared = {"base": torch.arange(6.0)}
    serial, stats = run_cells(_square, shared, CELLS)
    assert serial == [float(i * i) for i in range(6)] and stats.computed == 6
    own, _ = run_cells(_square, shared, CELLS, executor=2)
    with ProcessPoolExecutor(2, mp_context=_mp_context()) as pool:
        given, _ = run_cells(_square, shared, CELLS, executor=pool, max_in_flight=1)
    assert own == serial == given
    cache = CellCache(tmp_path, "sq")
    run_cells(_square, shared, CELLS[:3], cache=cache)
    again, stats = run_cells(_square, shared, CELLS, cache=cache)
    assert again == serial and (stats.cached, stats.computed) == (3, 3)


def _threads_and_data(shared, cell):
    return torch.get_num_threads(), float(shared["base"].sum())


@pytest.mark.slow
def test_pool_workers_start_with_the_cells_thread_count_and_the_data_file_is_removed(tmp_path, monkeypatch):
    # the thread count is set once per worker (not switched per cell), and the pickled data go
    # through one temporary file that is deleted when the run ends, also when a cell fails
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    shared = {"base": torch.arange(6.0)}
    values, stats = run_cells(_threads_and_data, shared, CELLS, executor=2, worker_threads=1)
    assert values == [(1, 15.0)] * 6 and stats.computed == 6
    two, _ = run_cells(_threads_and_data, shared, CELLS[:1], executor=1, worker_threads=2)
    assert two == [(2, 15.0)]
    assert not list(tmp_path.glob("captum_ext-cells-*"))
    with pytest.raises(RuntimeError, match="cell 3"):
        run_cells(_boom, {}, CELLS, executor=2)
    assert not list(tmp_path.glob("captum_ext-cells-*"))


def _boom(shared, cell):
    if cell["i"] == 3:
        raise RuntimeError("cell 3 failed")
    return float(cell["i"])


def test_a_failing_cell_releases_its_lock(tmp_path):
    cache = CellCache(tmp_path, "boom")
    with pytest.raises(RuntimeError, match="cell 3"):
        run_cells(_boom, {}, CELLS, cache=cache)
    values, stats = run_cells(_square, {"base": torch.arange(6.0)}, CELLS, cache=cache)
    assert stats.cached == 3 and values[:3] == [0.0, 1.0, 2.0]  # finished cells were kept


def _worker(folder, log, barrier, out):
    barrier.wait()
    cache = CellCache(folder, "shared-key")
    values, stats = run_cells(_logged, {"log": log}, CELLS, cache=cache)
    out.put((values, stats.computed, stats.cached))


def test_two_processes_on_one_cache_compute_each_cell_once(tmp_path):
    ctx = _mp_context()
    log = tmp_path / "log.txt"
    log.touch()
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(tmp_path / "cache", str(log), barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    lines = Path(log).read_text().split()
    computed = sorted(int(i) for i in lines[::2])
    assert computed == list(range(6)), lines  # every cell once, whoever computed it
    for values, n_computed, n_cached in results:
        assert values == [float(i) for i in range(6)] and n_computed + n_cached == 6
    assert sum(r[1] for r in results) == 6


# a module whose classes and functions the fingerprint digests by content
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)


def test_user_classes_and_modules_are_digested():
    a = fingerprint(_Net)
    assert a == fingerprint(_Net)
    assert fingerprint(sys.modules[__name__]) == fingerprint(sys.modules[__name__])
    assert fingerprint(nn.Linear) != fingerprint(nn.Conv1d)
