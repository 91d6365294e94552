"""Benchmark: a CIFAR-sized DiffROAR curve serially, on a 2-process pool and on a 2-worker Dask cluster.

Job (the issue's size): 5 000 train / 1 000 test images of 3x32x32, **synthetic** (generated here,
no download: ten classes, each a fixed random 8x8 colour template pasted at a random quadrant of
Gaussian noise), a small CNN (two strided 3x3 convolutions, 8 and 16 channels, and a linear
layer), the paper's 11 unmasking levels x top/bottom x 3 seeds = 66 cells, each a fresh CNN
trained for ``--epochs`` epoch(s) with Adam. The attribution is Saliency at the predicted label of
a CNN trained on the full data (computed once, outside the timings).

Configurations, each timed ``--repeats`` times (median reported; the order alternates between
repeats, and the speed-up is reported both as the ratio of medians and as the median of the
ratios within a repeat), numbers checked identical:

* ``serial``: ``diff_roar(..., execution=ExecutionOptions(executor=None))``;
* ``pool``: ``ExecutionOptions(executor=2)``: a process pool created by the call (its start-up is
  timed) whose initializer receives the data once per worker;
* ``dask``: ``ExecutionOptions(executor=client)`` on a ``LocalCluster(n_workers=2,
  threads_per_worker=1)`` (start-up reported separately); the data are scattered to both workers
  once per call.

The fork server the pools fork from (it imports torch once per Python session) is started before
the timings; the Dask cluster is started and warmed up before each Dask timing and closed after it
(its scheduler runs in this process and would otherwise take CPU during the other timings); both
start-up times are reported.

**Honest numbers on a shared machine.** The machine's load average is recorded before and after,
and the CPU seconds of the whole process tree (this process, the fork server, the pool workers, the
Dask nanny and worker processes; see :class:`TreeCPU`) beside the wall time of every run.
On a loaded machine the wall-time speed-up measures the contention, so the JSON also has a
*CPU-time projection* for an idle machine: ``serial cells' CPU seconds / (start-up + the busiest
worker's cells' CPU seconds + its per-cell dispatch gaps)``, and the per-cell executor overhead:
the time a worker slot spends between cells (``workers * (wall - start-up) - sum of cell wall
times``, per cell) relative to the mean cell time.

Usage: ``python benchmarks/bench_diff_roar.py [--repeats 3] [--epochs 1] [--note "..."]``.
Writes ``benchmarks/results/bench_diff_roar.json`` and ``bench_diff_roar.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from captum.attr import Saliency
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine  # noqa: E402

from captum_ext._runner import ExecutionOptions, process_pool  # noqa: E402
from captum_ext.metrics import DIFF_ROAR_FRACTIONS, diff_roar  # noqa: E402
from captum_ext.training import Trainer, evaluate, fit  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
WORKERS = 2


def synthetic_cifar(n: int, seed: int, classes: int = 10) -> tuple[Tensor, Tensor]:
    """``n`` images 3x32x32: class template (8x8, fixed per class) at a random quadrant + noise."""
    templates = torch.randn(classes, 3, 8, 8, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = 0.5 * torch.randn(n, 3, 32, 32, generator=g)
    quadrant = torch.randint(0, 4, (n,), generator=g)
    jitter = torch.randint(0, 9, (n, 2), generator=g)
    for i in range(n):
        r = 16 * int(quadrant[i] // 2) + int(jitter[i, 0])
        c = 16 * int(quadrant[i] % 2) + int(jitter[i, 1])
        x[i, :, r : r + 8, c : c + 8] += templates[y[i]]
    return x, y


class SmallCNN(nn.Sequential):
    """Conv(3->8, 3x3, stride 2) - ReLU - Conv(8->16, 3x3, stride 2) - ReLU - Linear(16*7*7 -> 10)."""

    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(3, 8, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16 * 7 * 7, 10),
        )


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def _analyse(stats: dict[str, Any], workers: int) -> dict[str, Any]:
    """Start-up, per-cell gaps and the busiest worker's CPU time from a run's cell timings."""
    starts, walls, cpus, pids = (
        stats[k] for k in ("cell_started", "cell_seconds", "cell_cpu_seconds", "cell_workers")
    )
    startup = min(starts) - stats["started"]
    per_worker: dict[int, list[tuple[float, float, float]]] = defaultdict(list)
    for s, w, c, p in zip(starts, walls, cpus, pids, strict=True):
        per_worker[p].append((s, w, c))
    gaps = []
    for cells in per_worker.values():
        cells.sort()
        gaps += [b[0] - (a[0] + a[1]) for a, b in zip(cells, cells[1:], strict=False)]
    busiest = max(sum(c for _, _, c in cells) for cells in per_worker.values())
    busiest_cells = max(len(cells) for cells in per_worker.values())
    slot_overhead = (workers * (stats["wall_seconds"] - startup) - sum(walls)) / len(walls)
    mean_gap = statistics.mean(gaps) if gaps else 0.0
    return {
        "startup_s": startup,
        "workers_seen": len(per_worker),
        "cells_cpu_s": sum(cpus),
        "cells_wall_s": sum(walls),
        "mean_cell_wall_s": statistics.mean(walls),
        "mean_cell_cpu_s": statistics.mean(cpus),
        "busiest_worker_cpu_s": busiest,
        "mean_dispatch_gap_s": mean_gap,
        "per_cell_slot_overhead_s": slot_overhead,
        "overhead_fraction_of_cell": slot_overhead / statistics.mean(walls),
        "dispatch_gap_fraction_of_cell": mean_gap / statistics.mean(walls),
        "idle_projection_s": startup + busiest + max(busiest_cells - 1, 0) * max(mean_gap, 0.0),
    }


class TreeCPU:
    """CPU seconds (user + system) of this process and of every descendant during a ``with`` block.

    Descendants (the fork server, pool workers, Dask nanny and worker processes) are sampled every
    0.1 s from a thread; a process that exits between two samples loses at most its last 0.1 s.
    Processes that existed before the block count only their CPU time spent inside it.
    """

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.seen: dict[int, float] = {}
        self.base: dict[int, float] = {}
        self.stop = False
        self.seconds = 0.0

    def _children(self) -> dict[int, float]:
        out = {}
        for child in self.me.children(recursive=True):
            try:
                t = child.cpu_times()
                out[child.pid] = t.user + t.system
            except Exception:  # noqa: BLE001 - exited meanwhile
                continue
        return out

    def _sample(self) -> None:
        while not self.stop:
            self.seen.update(self._children())
            time.sleep(0.1)

    def __enter__(self) -> TreeCPU:
        import threading

        self.base = self._children()
        self.own0 = time.process_time()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seen.update(self._children())
        self.stop = True
        self.thread.join()
        children = sum(max(v - self.base.get(pid, 0.0), 0.0) for pid, v in self.seen.items())
        self.seconds = time.process_time() - self.own0 + children


@contextlib.contextmanager
def _dask_cluster(starts: list[float]) -> Iterator[Any]:
    """A 2-worker ``LocalCluster`` (one thread each, forked from the preloaded fork server), warmed up."""
    import dask
    import distributed

    t0 = time.perf_counter()
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        cluster = distributed.LocalCluster(
            n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
        )
    client = distributed.Client(cluster)
    try:
        client.run(lambda: torch.optim.Adam([torch.zeros(1, requires_grad=True)]))  # import torch._dynamo
        starts.append(time.perf_counter() - t0)
        yield client
    finally:
        client.close()
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=5000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--configs", nargs="+", default=["serial", "pool", "dask"])
    parser.add_argument("--note", default="")
    parser.add_argument("--out", default=str(RESULTS / "bench_diff_roar.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    x, y = synthetic_cifar(args.n_train, seed=0)
    xt, yt = synthetic_cifar(args.n_test, seed=1)
    torch.manual_seed(0)
    model = fit(SmallCNN(), (x, y), epochs=3, lr=3e-3, batch_size=64, progress=False)
    attr = tuple(Saliency(model).attribute(d, target=model(d).argmax(1)).detach() for d in (x, xt))
    trainer = Trainer(epochs=args.epochs, lr=3e-3, batch_size=64)
    seeds = tuple(range(args.seeds))
    common: dict[str, Any] = dict(
        model_factory=SmallCNN,
        fractions=DIFF_ROAR_FRACTIONS,
        seeds=seeds,
        trainer=trainer,
        mask_control=False,
    )
    n_cells = 2 * len(DIFF_ROAR_FRACTIONS) * len(seeds)
    data_mb = sum(t.numel() * t.element_size() for t in (x, y, xt, yt)) / 2**20

    # warm-ups outside the timings: the fork server (imports torch once), the Dask cluster
    t0 = time.perf_counter()
    with process_pool(WORKERS) as pool:
        list(pool.map(abs, range(WORKERS)))
    forkserver_s = time.perf_counter() - t0
    dask_start: list[float] = []
    info = {
        "load_start": _load(),
        "config": {
            "data": f"SYNTHETIC CIFAR-sized: {len(y)} train / {len(yt)} test images 3x32x32, 10 classes "
            f"(class template at a random quadrant + noise), {data_mb:.0f} MiB of tensors",
            "model": "SmallCNN: Conv(3,8,3,s2)-ReLU-Conv(8,16,3,s2)-ReLU-Linear(784,10)",
            "trainer": repr(trainer),
            "fractions": list(DIFF_ROAR_FRACTIONS),
            "seeds": list(seeds),
            "cells": n_cells,
            "workers": WORKERS,
            "repeats": args.repeats,
            "attribution": "Saliency at the predicted label of a SmallCNN trained 3 epochs on the train set",
            "explained_model_test_accuracy": evaluate(model, (xt, yt)),
            "forkserver_start_s (once per session, not timed)": forkserver_s,
            "dask_cluster_start_s (not timed, per repeat)": dask_start,
        },
    }
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in args.configs}
    results: dict[str, Any] = {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop cleanly: the JSON has the repeats done
    for rep in range(args.repeats):
        # alternate the order (serial, pool, dask / dask, pool, serial): a host whose speed drifts
        # over minutes then favours no configuration
        for name in args.configs if rep % 2 == 0 else args.configs[::-1]:
            # the Dask scheduler lives in this process: it runs only during the Dask timing
            with _dask_cluster(dask_start) if name == "dask" else contextlib.nullcontext() as client:
                executor = {"serial": None, "pool": WORKERS, "dask": client}[name]
                w0, c0 = time.perf_counter(), time.process_time()
                with TreeCPU() as tree:
                    res = diff_roar(
                        model, (x, y), (xt, yt), attr, execution=ExecutionOptions(executor=executor), **common
                    )
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            timing = _analyse(res.timings, WORKERS)
            in_cells = timing["cells_cpu_s"] if name == "serial" else 0.0
            timing["coordinator_cpu_outside_cells_s"] = cpu - in_cells
            runs[name].append(
                {"wall_s": wall, "coordinator_cpu_s": cpu, "tree_cpu_s": tree.seconds, **timing}
            )
            results[name] = res
            print(
                f"{name}: {wall:.1f} s wall, {tree.seconds:.1f} s CPU (process tree), load {_load()}",
                flush=True,
            )
        _report(args, runs, results, info)


def _report(
    args: argparse.Namespace,
    runs: dict[str, list[dict[str, Any]]],
    results: dict[str, Any],
    info: dict[str, Any],
) -> None:
    """Write the JSON and the figure from the repeats finished so far (called after each repeat)."""
    load_end = _load()
    names = [c for c in args.configs if runs[c]]
    ref = results[names[0]]
    identical = all(torch.equal(ref.accuracies, results[n].accuracies) for n in names)
    med = {c: {k: statistics.median(r[k] for r in runs[c]) for k in runs[c][0]} for c in names}
    summary: dict[str, Any] = {
        "identical_numbers": identical,
        "repeats_done": min(len(runs[c]) for c in names),
    }
    if "serial" in med:
        serial_cpu = med["serial"]["cells_cpu_s"]
        for name in names:
            if name == "serial":
                continue
            pairs = zip(runs["serial"], runs[name], strict=False)
            summary[name] = {
                "wall_speedup": med["serial"]["wall_s"] / med[name]["wall_s"],
                # the same ratio within each repeat (runs seconds apart), median over repeats
                "wall_speedup_paired_median": statistics.median(s["wall_s"] / r["wall_s"] for s, r in pairs),
                # CPU of the whole process tree (coordinator, fork server, workers, Dask processes)
                "tree_cpu_s": med[name]["tree_cpu_s"],
                "tree_cpu_vs_serial": med[name]["tree_cpu_s"] / med["serial"]["tree_cpu_s"],
                "idle_projection_speedup": serial_cpu / med[name]["idle_projection_s"],
                # end to end, counting the coordinator's own CPU (ranking, pickling) as never overlapping
                "idle_projection_end_to_end_speedup": med["serial"]["coordinator_cpu_s"]
                / (med[name]["coordinator_cpu_s"] + med[name]["busiest_worker_cpu_s"]),
                "per_cell_overhead_fraction": med[name]["overhead_fraction_of_cell"],
                "dispatch_gap_fraction": med[name]["dispatch_gap_fraction_of_cell"],
                "startup_s": med[name]["startup_s"],
            }
    load_start = info["load_start"]
    report = {
        "benchmark": "bench_diff_roar",
        "machine": {
            **describe_machine("cpu"),
            "load_average_start": load_start,
            "load_average_end": load_end,
            "note": "load average above the core count means other jobs shared the cores",
        },
        "config": info["config"],
        "summary": summary,
        "median": med,
        "runs": runs,
        "curve": ref.to_dict(),
        "note": args.note,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps({"summary": summary, "load": [load_start, load_end]}, indent=1), flush=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ref.plot(ax=ax1, label="Saliency (SmallCNN)", show_parts=True)
    ax1.set_title("DiffROAR, synthetic CIFAR-sized data", fontsize="medium")
    ax2.bar(
        [n + " wall" for n in names],
        [med[n]["wall_s"] for n in names],
        color="tab:blue",
        label="wall (median)",
    )
    if "serial" in med:
        proj = [med["serial"]["cells_cpu_s"]] + [med[n]["idle_projection_s"] for n in names if n != "serial"]
        ax2.bar([n + " idle" for n in names], proj, color="tab:green", label="idle-machine projection (CPU)")
    ax2.set_ylabel("seconds")
    ax2.set_title(f"66 cells, {WORKERS} workers, load {load_start} -> {load_end}", fontsize="small")
    ax2.tick_params(axis="x", rotation=30, labelsize="small")
    ax2.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
