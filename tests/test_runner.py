"""The job runner's contract (captum_ext._runner): no deadlock between runs sharing a cache, keys
that see class attributes, module attributes and editable installs, no orphans after SIGKILL, a
clear error for a main script without a guard, lambdas sent by value."""

import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from captum_ext._runner import CellCache, ExecutionOptions, fingerprint, run_cells
from captum_ext._runner import digest as fingerprint_module

ROOT = Path(__file__).resolve().parents[1]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def _square(shared, cell):
    return float(shared["base"][cell["i"]] ** 2)


CELLS = [{"i": i} for i in range(4)]


# ------------------------------------------------------------------------------------------ locks


class _SignallingCache(CellCache):
    """A cache that tells the test when a cell was recorded (its lock is released right after)."""

    recorded: threading.Event

    def put(self, cell, value, info=None):
        super().put(cell, value, info)
        self.recorded.set()


def test_a_run_records_its_finished_cells_while_another_run_holds_a_lock(tmp_path):
    # the deadlock of two parallel runs: each waited for a lock of the other while holding the
    # locks of cells it had finished but not recorded
    cache = _SignallingCache(tmp_path, "k")
    cache.recorded = threading.Event()
    cells = CELLS[:2]
    other_run = CellCache(tmp_path, "k").lock(cells[1])
    other_run.acquire()  # "another run" computes cell 1
    out = {}

    def run():
        with ThreadPoolExecutor(1) as pool:
            out["values"], out["stats"] = run_cells(
                _square, {"base": torch.arange(4.0)}, cells, executor=pool, cache=cache
            )

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        # a generous bound, not a timing assertion: cell 0 takes microseconds
        assert cache.recorded.wait(timeout=60), "cell 0 was not recorded while cell 1 was locked"
    finally:
        other_run.release()
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert out["values"] == [0.0, 1.0] and out["stats"].computed == 2


def test_serial_run_waits_for_a_cell_another_run_computes_and_reads_it(tmp_path):
    cache = CellCache(tmp_path, "k")
    other_run = CellCache(tmp_path, "k")
    lock = other_run.lock(CELLS[1])
    lock.acquire()
    out = {}
    worker = threading.Thread(
        target=lambda: out.update(r=run_cells(_square, {"base": torch.arange(4.0)}, CELLS, cache=cache)),
        daemon=True,
    )
    worker.start()
    other_run.put(CELLS[1], 1.0)  # the other run finishes cell 1 and releases its lock
    lock.release()
    worker.join(timeout=60)
    values, stats = out["r"]
    assert values == [0.0, 1.0, 4.0, 9.0] and (stats.computed, stats.cached) == (3, 1)


_PARALLEL_SCRIPT = """
import json, os, sys
from captum_ext._runner import CellCache, run_cells

def work(shared, cell):
    with open(shared["log"], "a") as fh:
        fh.write(f"{cell['i']}\\n")
    x = 1.0
    for _ in range(200_000):  # a few ms of work so that the two runs overlap
        x = (x * 1.000001) % 7.0
    return float(cell["i"])

if __name__ == "__main__":
    cache = CellCache(sys.argv[1], "shared-key")
    values, stats = run_cells(work, {"log": sys.argv[2]}, [{"i": i} for i in range(16)],
                              executor=2, cache=cache, max_in_flight=4)
    print(json.dumps({"values": values, "computed": stats.computed, "cached": stats.cached}))
"""


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.mark.slow
def test_two_parallel_pool_runs_on_one_cache_finish_and_compute_each_cell_once(tmp_path):
    script = tmp_path / "parallel_run.py"
    script.write_text(_PARALLEL_SCRIPT)
    log = tmp_path / "log.txt"
    log.touch()
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "cache"), str(log)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            start_new_session=True,
        )
        for _ in range(2)
    ]
    try:
        outs = [p.communicate(timeout=300) for p in procs]  # a hang (the old deadlock) fails here
    finally:
        for p in procs:
            _kill_group(p)
    results = []
    for p, (stdout, stderr) in zip(procs, outs, strict=True):
        assert p.returncode == 0, stderr
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    for r in results:
        assert r["values"] == [float(i) for i in range(16)]
    assert sum(r["computed"] for r in results) == 16
    assert sorted(int(i) for i in log.read_text().split()) == list(range(16))


# ------------------------------------------------------------------------------------ fingerprints


class _ConfiguredTrainer:
    """A trainer whose settings live in a class attribute (a dict)."""

    config = {"epochs": 1}

    def __call__(self, model, data, seed):
        return model


def test_a_dict_class_attribute_is_part_of_the_key():
    before = fingerprint(_ConfiguredTrainer())
    _ConfiguredTrainer.config["epochs"] = 20
    try:
        assert fingerprint(_ConfiguredTrainer()) != before
    finally:
        _ConfiguredTrainer.config["epochs"] = 1
    assert fingerprint(_ConfiguredTrainer()) == before


def _temp_modules(tmp_path, files):
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()


def _forget(tmp_path, *modules):
    sys.path.remove(str(tmp_path))
    for m in modules:
        sys.modules.pop(m, None)
    fingerprint_module._distributions.cache_clear()
    fingerprint_module._library.cache_clear()


def test_an_attribute_of_a_config_module_changed_in_memory_is_part_of_the_key(tmp_path):
    _temp_modules(
        tmp_path,
        {
            "user_config.py": "EPOCHS = 1\n",
            "user_train.py": """
                import user_config

                def train(model, data, seed):
                    return user_config.EPOCHS
            """,
        },
    )
    try:
        import user_config
        import user_train

        before = fingerprint(user_train.train)
        user_config.EPOCHS = 20  # the file is unchanged
        assert fingerprint(user_train.train) != before
        user_config.EPOCHS = 1
        assert fingerprint(user_train.train) == before
    finally:
        _forget(tmp_path, "user_config", "user_train")


def test_code_of_an_editable_install_is_digested_by_content(tmp_path):
    info = tmp_path / "userpkg-0.1.dist-info"
    _temp_modules(
        tmp_path,
        {
            "userpkg/__init__.py": "def train(model, data, seed):\n    return 1\n",
            "userpkg-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: userpkg\nVersion: 0.1\n",
            "userpkg-0.1.dist-info/top_level.txt": "userpkg\n",
            "userpkg-0.1.dist-info/RECORD": "userpkg/__init__.py,,\n",
            "userpkg-0.1.dist-info/direct_url.json": json.dumps(
                {"url": tmp_path.as_uri(), "dir_info": {"editable": True}}
            ),
        },
    )
    fingerprint_module._distributions.cache_clear()
    fingerprint_module._library.cache_clear()
    try:
        import userpkg

        assert fingerprint_module._library("userpkg") is None  # user code, not "userpkg==0.1"
        before = fingerprint(userpkg.train)
        (tmp_path / "userpkg/__init__.py").write_text("def train(model, data, seed):\n    return 20\n")
        importlib.reload(userpkg)  # edited code, same version
        assert fingerprint(userpkg.train) != before
        (info / "direct_url.json").unlink()  # an install from an index: identified by version and RECORD
        fingerprint_module._library.cache_clear()
        assert fingerprint_module._library("userpkg").startswith("userpkg==0.1 record=")
    finally:
        _forget(tmp_path, "userpkg")


# ------------------------------------------------------------------------------------ processes

_KILLED_SCRIPT = """
import os, sys, time
from captum_ext._runner import run_cells

def stuck(shared, cell):
    with open(shared["log"], "a") as fh:
        fh.write(f"{os.getpid()}\\n")
    while True:
        time.sleep(0.1)

if __name__ == "__main__":
    run_cells(stuck, {"log": sys.argv[1], "pad": b"x" * 100_000}, [{"i": i} for i in range(4)], executor=2)
"""


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_until(condition, seconds):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    return condition()


@pytest.mark.slow
def test_sigkilled_parent_leaves_no_workers_fork_server_or_data_file(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(_KILLED_SCRIPT)
    log = tmp_path / "pids.txt"
    log.touch()
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = dict(_env(), TMPDIR=str(temp))
    proc = subprocess.Popen([sys.executable, str(script), str(log)], env=env, start_new_session=True)
    try:
        assert _wait_until(lambda: len(log.read_text().split()) >= 2, 120), "the workers did not start"
        assert list(temp.glob("captum_ext-cells-*.pkl"))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # the workers notice within a second, then the fork server and resource tracker follow
        assert _wait_until(lambda: not _group_alive(proc.pid), 60), "processes survived their parent"
        assert not list(temp.glob("captum_ext-cells-*.pkl"))
    finally:
        _kill_group(proc)


def test_data_files_of_dead_processes_are_removed_at_the_next_run(tmp_path, monkeypatch):
    import socket

    from captum_ext._runner.workers import clean_orphan_files

    host = socket.gethostname().replace("-", "_")
    dead = tmp_path / f"captum_ext-cells-{host}-999999999-abcdef12-xyz.pkl"
    alive = tmp_path / f"captum_ext-cells-{host}-{os.getpid()}-abcdef12-xyz.pkl"
    for p in (dead, alive):
        p.write_bytes(b"x")
    assert clean_orphan_files(str(tmp_path)) == [dead]
    assert alive.exists()


@pytest.mark.slow
def test_a_script_without_main_guard_gets_a_clear_error(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text("from captum_ext._runner import run_cells\nrun_cells(abs, 0, [1, 2], executor=2)\n")
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=_env(), timeout=300
    )
    assert out.returncode != 0
    assert 'if __name__ == "__main__":' in out.stderr and "BrokenProcessPool" not in out.stderr


def _apply(shared, cell):
    return shared["fn"](cell)


@pytest.mark.slow
def test_lambdas_in_the_shared_data_are_sent_by_value_to_a_pool():
    values, _ = run_cells(_apply, {"fn": lambda c: c * 3}, [1, 2], executor=1)
    assert values == [3, 6]


def test_execution_options_are_validated():
    with pytest.raises(TypeError, match="executor"):
        ExecutionOptions(executor="dask")
    with pytest.raises(ValueError, match="max_in_flight"):
        ExecutionOptions(max_in_flight=0)
    with pytest.raises(TypeError, match="cache_key"):
        ExecutionOptions(cache_key=3)
