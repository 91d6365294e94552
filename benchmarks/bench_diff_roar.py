"""Benchmark: a full DiffROAR curve on offline BlockMNIST, serially and with 2 worker processes.

The attribution is the input gradient (Captum's ``Saliency``) of a standard MLP trained on
BlockMNIST (scikit-learn's real digits, offline). The curve uses the paper's defaults: 11 unmasking
levels k in {5, 10, 20, ..., 100}%, top and bottom schemes, 3 seeds = 66 cells, each a fresh MLP
retrained on unmasked data. Each configuration is timed ``--repeats`` times (median reported):

* serial: ``diff_roar(..., executor=None)`` in this process (cells use 1 torch thread each);
* pool: ``diff_roar(..., executor=ProcessPoolExecutor(2))``, pool start-up included.

CPU seconds are recorded too (this process for serial, the reaped workers for the pool): on a
machine shared with other jobs, ``serial_cpu_share_of_wall`` well below 1 says the run waited
for a core, and the wall-time speed-up then measures the contention, not the executor.

The ratio serial / pool is the speed-up; both runs must give identical numbers (checked). The
oracle signal mask and a random attribution are run once through the pool for the figure.

Usage: ``python benchmarks/bench_diff_roar.py [--repeats 3] [--workers 2] [--note "..."]``.
Writes ``benchmarks/results/bench_diff_roar.json`` and ``bench_diff_roar.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from captum.attr import Saliency

from captum_ext.datasets import BlockMNIST
from captum_ext.metrics import DIFF_ROAR_FRACTIONS, diff_roar
from captum_ext.training import MLPFactory, Trainer, evaluate, fit

RESULTS = Path(__file__).resolve().parent / "results"


def _load() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:  # pragma: no cover - not on every platform
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128])
    parser.add_argument("--note", default="")
    parser.add_argument("--out", default=str(RESULTS / "bench_diff_roar.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    train, test = BlockMNIST("train", seed=0), BlockMNIST("test", seed=0)
    x, y, mask = train.tensors()
    xt, yt, maskt = test.tensors()
    factory = MLPFactory((1, 56, 28), hidden=tuple(args.hidden))
    trainer = Trainer(epochs=args.epochs, lr=1e-3, batch_size=32)
    model = fit(factory(), (x, y), epochs=args.epochs, lr=1e-3, batch_size=32, progress=False)
    saliency = Saliency(model)
    attr = (
        saliency.attribute(x, target=y).detach(),
        saliency.attribute(xt, target=yt).detach(),
    )
    seeds = tuple(range(args.seeds))
    common = dict(fractions=DIFF_ROAR_FRACTIONS, seeds=seeds, trainer=trainer, progress=False)
    n_cells = 2 * len(DIFF_ROAR_FRACTIONS) * len(seeds)

    load_start = _load()
    serial_times, pool_times, serial_cpu, pool_cpu = [], [], [], []
    serial_res = pool_res = None
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        serial_res = diff_roar(factory, (x, y), (xt, yt), attr, model=model, **common)
        serial_times.append(time.perf_counter() - t0)
        serial_cpu.append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), _children_cpu()
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            pool_res = diff_roar(factory, (x, y), (xt, yt), attr, model=model, executor=pool, **common)
        pool_times.append(time.perf_counter() - t0)
        pool_cpu.append(_children_cpu() - c0)  # the workers' CPU time (reaped at shutdown)
    load_end = _load()
    assert serial_res is not None and pool_res is not None
    identical = bool(torch.equal(serial_res.accuracies, pool_res.accuracies))

    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        oracle = diff_roar(factory, (x, y), (xt, yt), (mask.float(), maskt.float()), executor=pool, **common)
        g = torch.Generator().manual_seed(0)
        rand = (torch.rand(x.shape, generator=g), torch.rand(xt.shape, generator=g))
        random_res = diff_roar(factory, (x, y), (xt, yt), rand, executor=pool, **common)

    serial_med, pool_med = statistics.median(serial_times), statistics.median(pool_times)
    report = {
        "benchmark": "bench_diff_roar",
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "processor": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "device": "cpu",
            "load_average_start": load_start,
            "load_average_end": load_end,
        },
        "config": {
            "data": f"offline BlockMNIST (sklearn digits 0/1): {len(y)} train, {len(yt)} test",
            "model": f"MLP hidden={tuple(args.hidden)}",
            "trainer": repr(trainer),
            "fractions": list(DIFF_ROAR_FRACTIONS),
            "seeds": list(seeds),
            "cells": n_cells,
            "workers": args.workers,
            "repeats": args.repeats,
            "attribution": "Saliency (|input gradient|) of the standard MLP",
            "explained_model_test_accuracy": evaluate(model, (xt, yt)),
        },
        "results": {
            "serial_seconds": serial_times,
            "pool_seconds": pool_times,
            "serial_cpu_seconds": serial_cpu,
            "pool_workers_cpu_seconds": pool_cpu,
            "serial_median_s": serial_med,
            "pool_median_s": pool_med,
            "serial_cells_per_minute": 60.0 * n_cells / serial_med,
            "pool_cells_per_minute": 60.0 * n_cells / pool_med,
            "speedup_serial_over_pool": serial_med / pool_med,
            "serial_cpu_share_of_wall": statistics.median(
                c / w for c, w in zip(serial_cpu, serial_times, strict=True)
            ),
            "identical_numbers_serial_vs_pool": identical,
            "full_curve_under_10_min_on_pool": pool_med < 600.0,
        },
        "curves": {
            "saliency": serial_res.to_dict(),
            "oracle_signal_mask": oracle.to_dict(),
            "random": random_res.to_dict(),
        },
        "note": args.note,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    oracle.plot(ax=ax, label="oracle signal mask")
    serial_res.plot(ax=ax, label="saliency (standard MLP)")
    random_res.plot(ax=ax, label="random")
    ax.set_title(f"DiffROAR on offline BlockMNIST ({len(seeds)} seeds)", fontsize="medium")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=90)
    print(json.dumps(report["results"], indent=1))


if __name__ == "__main__":
    main()
