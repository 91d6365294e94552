"""DiffROAR on a real Dask cluster: a ``dask scheduler`` and two ``dask worker`` processes started as
separate processes on 127.0.0.1, each in its own working folder, no folder shared with the client
(the cache lives with the coordinating process only). Always torn down, also when a test fails."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from captum_ext.datasets import SignedBasisToy
from captum_ext.metrics import ExecutionOptions, diff_roar
from captum_ext.training import MLPFactory, Trainer

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _start(args, folder, env):
    folder.mkdir(parents=True)
    log = open(folder / "log.txt", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "dask", *args],
        cwd=folder,
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )


def _stop(proc):
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def client(tmp_path):
    distributed = pytest.importorskip("distributed")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    address_file = tmp_path / "scheduler" / "scheduler.json"
    common = ["--host", "127.0.0.1", "--no-dashboard"]
    procs = []
    conn = None
    try:
        procs.append(
            _start(
                ["scheduler", "--port", "0", "--scheduler-file", str(address_file), *common],
                tmp_path / "scheduler",
                env,
            )
        )
        deadline = time.monotonic() + 120
        while not address_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert address_file.exists(), (tmp_path / "scheduler" / "log.txt").read_text()
        for i in range(2):
            folder = tmp_path / f"worker{i}"
            args = ["worker", "--scheduler-file", str(address_file), "--nthreads", "1", "--no-nanny"]
            procs.append(_start([*args, "--local-directory", str(folder / "dask"), *common], folder, env))
        conn = distributed.Client(scheduler_file=str(address_file), timeout=120)
        conn.wait_for_workers(2, timeout=120)
        yield conn
    finally:
        if conn is not None:
            conn.close()
        for proc in reversed(procs):
            _stop(proc)


def _toy():
    train, test = SignedBasisToy(96, d=10, seed=1), SignedBasisToy(48, d=10, seed=2)
    return train, test, (train.signal_masks.float(), test.signal_masks.float())


def test_diff_roar_on_a_scheduler_and_two_worker_processes_equals_serial(client, tmp_path):
    train, test, attr = _toy()
    kw = dict(
        model_factory=MLPFactory((10,), hidden=(8,)),
        fractions=(0.1, 1.0),
        seeds=(0, 1),
        # a lambda: the shared data reach the workers by value (cloudpickle)
        trainer=Trainer(epochs=2, lr=3e-2, batch_size=32, loss_fn=lambda o, t: F.cross_entropy(o, t)),
    )
    serial = diff_roar(None, train, test, attr, **kw)
    cache = tmp_path / "client-cache"
    remote = diff_roar(
        None, train, test, attr, execution=ExecutionOptions(executor=client, cache_dir=cache), **kw
    )
    assert torch.equal(serial.accuracies, remote.accuracies)
    assert torch.equal(serial.control, remote.control)
    workers = {pid for pid in remote.timings["cell_workers"]}
    assert len(workers) == 2 and os.getpid() not in workers  # both worker processes computed cells
    assert remote.timings["computed"] == 12
    assert not list(tmp_path.glob("worker*/**/cell-*.json"))  # the cache is the client's alone
    again = diff_roar(
        None, train, test, attr, execution=ExecutionOptions(executor=client, cache_dir=cache), **kw
    )
    assert again.timings["cached"] == 12 and torch.equal(again.accuracies, serial.accuracies)
