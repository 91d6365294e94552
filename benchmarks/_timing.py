"""Paired timing of several functions: the one loop every benchmark's same-run ratios come from."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch


def paired(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    device: torch.device | str = "cpu",
    min_sample_s: float = 0.1,
) -> dict[str, dict[str, list[float]]]:
    """``{name: {"cpu": [s per call, one per repeat], "wall": [...]}}``.

    Every function runs once per repeat, in turn (paired), after a warm-up. A function faster than
    ``min_sample_s`` runs ``ceil(min_sample_s / t)`` times in a row per sample, averaged, so that timer
    and scheduler noise do not dominate short calls. On CUDA the device is synchronised around each
    sample.
    """
    device = torch.device(device)
    loops = {}
    for name, fn in fns.items():
        fn()
        c0 = time.process_time()
        fn()
        loops[name] = max(1, math.ceil(min_sample_s / max(time.process_time() - c0, 1e-6)))
    out: dict[str, dict[str, list[float]]] = {k: {"cpu": [], "wall": []} for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            k = loops[name]
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(k):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            out[name]["wall"].append((time.perf_counter() - t0) / k)
            out[name]["cpu"].append((time.process_time() - c0) / k)
    return out
