"""CASO at the paper's own scale: ResNet-50 and ViT-B/16, 3x224x224 inputs, 1000 classes.

For each model (random weights, ``weights=None``), each batch size (``--batch``, default 1 and 8) and each
confidence level (the last layer is scaled so
that the median top probability is about 0.3, 0.9, 0.999 and 1 - 1e-6), one run times:

* ``cafo``: CAFO (one backward pass);
* ``factor``: CASO with the closed-form low-rank factor (``r + 1`` backward passes, Woodbury solve);
* ``gauss_newton``: CASO with matrix-free Gauss-Newton products ``J^T A J v`` (double-VJP ``J v``);
* ``exact``: CASO with double-backward products (Lanczos for ``L``, certified conjugate gradients);
* ``auto``: CASO's default, and which path it chose;
* ``sparsity_rule``: CASO's default path with the paper's ``lambda1`` choice (sparsity in [0.75, 1]);
* ``paper``: the paper's loop (10 power + 10 FISTA iterations, double-backward products);
* ``ig``: Captum's IntegratedGradients with 50 steps.

All CASO runs use ``lambda1 = 0``, ``lambda2 = L/2 + 10`` (paper defaults) and the default certified
tolerance. Time is CPU time of ONE thread (``torch.set_num_threads(1)``, ``time.process_time``: robust to
other jobs on the machine) beside wall time; on CUDA, wall time after synchronisation. Memory is the peak
resident set size of the process during the call minus the resident size just before it (Linux ``VmHWM``
after resetting it through ``/proc/self/clear_refs``): host memory the call added, including the autograd
graph (glibc is set to return freed blocks to the OS at once, so earlier calls' freed memory is not
silently reused); on CUDA also ``torch.cuda.max_memory_allocated``. The factor path is skipped (and its
predicted time reported) where the cost model predicts it is more than ``--factor-skip`` times slower than
the matrix-free path, to keep the run affordable. "correct" means: the path's Hessian is the model's
(Gauss-Newton paths only for piecewise-linear nets) and its attribution agrees with the exact path to
``--agree`` relative L2 error.

Run ``python benchmarks/bench_caso_scale.py`` (about 15-20 min of CPU), ``--quick`` for a small
development run (ResNet-18 at 64x64, a 2-layer ViT at 32x32), ``--device cuda`` on a GPU (untested
here: no GPU was available). Writes ``benchmarks/results/bench_caso_scale.{json,png}``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from captum.attr import IntegratedGradients
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine  # noqa: E402

from captum_ext import CAFO, CASO  # noqa: E402
from captum_ext.attr.cost_model import (  # noqa: E402
    default_max_memory,
    expected_products,
    kept_ranks,
    plan_auto,
    predict_costs,
)
from captum_ext.attr.curvature.gauss_newton import GaussNewtonHessian  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LEVELS = (0.3, 0.9, 0.999, 1 - 1e-6)
#: methods whose cost does not depend on the confidence: by default timed at one level per model
FIXED_COST = ("paper", "ig")
#: the methods of a cell, in table and plot order
METHODS = ("cafo", "factor", "gauss_newton", "exact", "auto", "auto_warm", "sparsity_rule", "paper", "ig")


def _caso_has_gauss_newton() -> bool:
    import typing

    from captum_ext.attr import caso as caso_module

    return "gauss_newton" in typing.get_args(caso_module.HessianMode)


class StandaloneCASO(CASO):
    """CASO with the issue-11 paths plugged in from outside, for a ``caso.py`` not yet wired.

    ``path="gauss_newton"`` uses :class:`GaussNewtonHessian` as the curvature operator (same Lanczos and
    certified CG as the exact path); ``path="auto"`` keeps CASO's curvature probe and then lets the cost
    model (:func:`plan_auto`) choose among the correct paths. Uses CASO's private hooks ``_choose_mode``
    and ``_operator``: a benchmark stand-in only.
    """

    def __init__(self, model: nn.Module, path: str) -> None:
        super().__init__(model)
        self.path = path

    def _choose_mode(self, graph, hessian):
        mode, gap, extra = super()._choose_mode(graph, hessian)
        if self.path == "gauss_newton":
            return "gauss_newton", gap, extra
        if hessian == "auto":
            d = sum(t[0].numel() for t in graph.inputs)
            plan = plan_auto(
                graph.probs, d, graph.logits.element_size(), mode == "closed_form", expected_products()
            )
            extra["auto"] = plan.summary()
            mode = plan.path
        return mode, gap, extra

    def _operator(self, graph, mode, rank_tol, max_rank):
        if mode != "gauss_newton":
            return super()._operator(graph, mode, rank_tol, max_rank)
        from captum_ext.attr.curvature import Curvature as _Curvature

        gn = GaussNewtonHessian(graph, samples=self._samples)
        rank = torch.zeros(gn.gradient.shape[0], dtype=torch.long, device=gn.gradient.device)
        return _Curvature(gn, gn.gradient, None, None, 0.0, rank, 2)


def build_model(name: str, quick: bool) -> tuple[nn.Module, nn.Linear, int, bool]:
    """``(model, last layer, image size, piecewise_linear)`` with random weights, eval mode."""
    torch.manual_seed(0)
    if name == "resnet50":
        factory = torchvision.models.resnet18 if quick else torchvision.models.resnet50
        model = factory(weights=None)
        return model.eval(), model.fc, 64 if quick else 224, True
    if name == "vit_b_16":
        if quick:
            model = torchvision.models.VisionTransformer(
                image_size=32, patch_size=16, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128
            )
        else:
            model = torchvision.models.vit_b_16(weights=None)
        head = model.heads.head
        nn.init.normal_(head.weight, std=0.02)  # torchvision initialises the head at zero
        return model.eval(), head, 32 if quick else 224, False
    raise ValueError(f"unknown model {name!r}")


def scale_to_confidence(model: nn.Module, head: nn.Linear, x: torch.Tensor, level: float) -> float:
    """Scale ``head`` (weight and bias) so that the median top probability of ``x`` is ``level``."""
    feats = []
    hook = head.register_forward_hook(lambda m, i, o: feats.append(i[0].detach()))
    with torch.no_grad():
        model(x)
    hook.remove()
    with torch.no_grad():
        z = (feats[0] @ head.weight.T + head.bias).double()

    def pmax(s: float) -> float:
        return float(torch.softmax(s * z, 1).amax(1).median())

    lo, hi = 1e-3, 1.0
    while pmax(hi) < level:
        hi *= 2.0
    for _ in range(100):  # bisection on log(scale)
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if pmax(mid) < level else (lo, mid)
    with torch.no_grad():
        head.weight.mul_(hi)
        head.bias.mul_(hi)
    return hi


def _exact_host_accounting() -> None:
    """Load glibc so that ``malloc_trim`` can return freed heap pages to the OS before each measurement
    (then memory freed by earlier calls is not silently reused inside the next call's peak)."""
    with contextlib.suppress(OSError, AttributeError):
        _LIBC.append(ctypes.CDLL("libc.so.6"))


_LIBC: list = []


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def measure(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> tuple[torch.Tensor, dict]:
    """Run ``fn`` ``repeats`` times: median CPU and wall seconds, peak added memory (MB)."""
    cpu, wall, peak, absolute = [], [], [], []
    out = None
    for _ in range(repeats):
        out = None
        gc.collect()
        for libc in _LIBC:
            libc.malloc_trim(0)
        base = _rss_kb("VmRSS")
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        t0, w0 = time.process_time(), time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        cpu.append(time.process_time() - t0)
        wall.append(time.perf_counter() - w0)
        peak.append((_rss_kb("VmHWM") - base) / 1024)
        absolute.append(_rss_kb("VmHWM") / 1024)
    rec = {
        "cpu_s": statistics.median(cpu),
        "wall_s": statistics.median(wall),
        "peak_host_mb": statistics.median(peak),
        "peak_rss_mb": statistics.median(absolute),
        "repeats": repeats,
    }
    if device.type == "cuda":
        rec["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out.detach(), rec


def run_cell(model, x, target, piecewise, args, device) -> dict:
    d = x[0].numel()
    cell: dict = {}
    with torch.no_grad():
        probs = torch.softmax(model(x).double(), 1)
    ranks = kept_ranks(probs, exact=True)
    cell["p_max"] = probs.amax(1).tolist()
    cell["rank"] = ranks.tolist()
    products = expected_products(n_power_iter=20, n_iter=5)  # Lanczos to 1e-4 + a few CG steps
    preds = predict_costs(ranks, d, products, itemsize=x.element_size(), piecewise_linear=piecewise)
    cell["predicted_backward_passes"] = {k: v.time for k, v in preds.items()}
    results: dict[str, torch.Tensor] = {}
    timings: dict[str, dict] = {}
    wired = _caso_has_gauss_newton()
    cell["wiring"] = "captum_ext CASO" if wired else "StandaloneCASO (benchmark stand-in)"
    last: list[CASO] = []

    def caso_run(path: str = "auto", **kw):
        def call():
            if wired:
                caso = CASO(model)
                kw.setdefault("hessian", path)
            else:
                caso = StandaloneCASO(model, path)
                kw.setdefault("hessian", {"gauss_newton": "exact"}.get(path, path))
            last[:] = [caso]
            return caso.attribute(x, target=target, **kw)

        return call

    methods: dict[str, Callable[[], torch.Tensor]] = {
        "cafo": lambda: CAFO(model).attribute(x, target=target),
        "exact": caso_run("exact"),
        "gauss_newton": caso_run("gauss_newton"),
        "factor": caso_run("closed_form"),
        "auto": caso_run("auto"),
        # the paper's unsupervised lambda1 (sparsity ratio in [0.75, 1]): the sparse solve at scale
        "sparsity_rule": caso_run("auto", sparsity=(0.75, 1.0)),
    }
    if args.warm_auto:  # the same object twice: the second call reuses the cached curvature probe
        warm = CASO(model) if wired else StandaloneCASO(model, "auto")
        methods["auto_warm"] = lambda: (
            warm.attribute(x, target=target),
            last.__setitem__(slice(None), [warm]),
        )[0]
    if args.methods:
        methods = {k: v for k, v in methods.items() if k in args.methods}
    if args.with_fixed and (not args.methods or "paper" in args.methods):
        methods["paper"] = caso_run("exact", solver="paper")
        ig = IntegratedGradients(model)
        methods["ig"] = lambda: ig.attribute(x, target=target, n_steps=50, internal_batch_size=10)
    gn_ratio = preds["closed_form"].time / preds["gauss_newton"].time
    if "auto_warm" in methods:
        warm.attribute(x, target=target)  # first call: probes (not timed)
    for name, fn in methods.items():
        if name == "factor" and gn_ratio > args.factor_skip:
            timings[name] = {"skipped": f"predicted {gn_ratio:.1f}x the Gauss-Newton path"}
            continue
        try:
            results[name], timings[name] = measure(fn, device, args.repeats)
        except (RuntimeError, TypeError, ValueError) as err:  # e.g. a path the installed CASO lacks
            timings[name] = {"error": str(err).splitlines()[0][:200]}
            continue
        if name not in ("cafo", "ig") and last and last[0].last_details is not None:
            det = last[0].last_details
            timings[name]["hessian"] = det.hessian
            timings[name]["n_hvp"] = det.n_hvp
            timings[name]["n_vjp"] = det.n_vjp
            extra = {k: v for k, v in det.extra.items() if isinstance(v, (int, float, str, dict, list))}
            if extra:
                timings[name]["extra"] = extra
        print(f"    {name:13s} {json.dumps(timings[name])}", flush=True)
    ref = results.get("exact")
    for name, out in results.items():
        # CAFO, IG and the sparse solve answer other questions than the lambda1 = 0 optimum
        if ref is not None and name not in ("cafo", "ig", "sparsity_rule"):
            rel = float((out - ref).norm() / ref.norm().clamp_min(1e-30))
            timings[name]["rel_diff_vs_exact"] = rel
            hess_ok = name in ("exact", "paper") or piecewise or timings[name].get("hessian") == "exact"
            timings[name]["correct"] = bool(hess_ok and rel <= args.agree)
    cell["methods"] = timings
    correct = {
        k: v["cpu_s"]
        for k, v in timings.items()
        if k in ("exact", "gauss_newton", "factor", "paper") and v.get("correct") and "cpu_s" in v
    }
    if correct:
        fastest = min(correct, key=correct.get)
        cell["fastest_correct"] = fastest
        if "cpu_s" in timings.get("auto", {}):
            cell["auto_over_fastest"] = timings["auto"]["cpu_s"] / correct[fastest]
    if "cpu_s" in timings.get("auto", {}) and "cpu_s" in timings.get("cafo", {}):
        cell["caso_over_cafo"] = timings["auto"]["cpu_s"] / timings["cafo"]["cpu_s"]
    return cell


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models and images (development)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=["resnet50", "vit_b_16"])
    parser.add_argument("--levels", nargs="+", type=float, default=list(LEVELS))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (each a cell)")
    parser.add_argument("--repeats", type=int, default=1, help="median of this many runs per method")
    parser.add_argument("--factor-skip", type=float, default=3.0)
    parser.add_argument("--agree", type=float, default=1e-3, help="relative L2 agreement with exact")
    parser.add_argument("--fixed-level", type=float, default=0.999, help="level where paper/ig run")
    parser.add_argument("--all-fixed", action="store_true", help="run paper/ig at every level")
    parser.add_argument("--out", default=str(RESULTS / "bench_caso_scale.json"))
    parser.add_argument("--methods", nargs="+", help="only these methods (default: all)")
    parser.add_argument("--warm-auto", action="store_true", help="also time auto's second call")
    parser.add_argument("--merge", nargs="+", help="join the cells of these JSON files into --out")
    parser.add_argument("--table", help="print the markdown table of this JSON file and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())))
        return {}
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        report = {**parts[0], "cells": [c for p in parts for c in p["cells"]], "merged_from": args.merge}
        report["configs"] = [p["config"] for p in parts]
        Path(args.out).write_text(json.dumps(report, indent=1))
        plot(report, Path(args.out).with_suffix(".png"))
        return report
    torch.set_num_threads(1)
    _exact_host_accounting()
    device = torch.device(args.device)
    report: dict = {
        "machine": describe_machine(device),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "memory_budget_bytes": default_max_memory(device),
        "note": __doc__,
        "cells": [],
    }
    for name, batch, level in [(m, b, lv) for m in args.models for b in args.batch for lv in args.levels]:
        model, head, size, piecewise = build_model(name, args.quick)
        model = model.to(device)
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(batch, 3, size, size, generator=gen).to(device)
        scale = scale_to_confidence(model, head, x, level)
        with torch.no_grad():
            target = model(x).argmax(1)
        args.with_fixed = args.all_fixed or abs(level - args.fixed_level) < 1e-12
        print(f"{name} batch={batch} level={level} scale={scale:.3g}", flush=True)
        kernel = sdpa_kernel(SDPBackend.MATH) if name.startswith("vit") else contextlib.nullcontext()
        with kernel:
            cell = run_cell(model, x, target, piecewise, args, device)
        cell.update(model=name, level=level, head_scale=scale, batch=batch, image=size)
        report["cells"].append(cell)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    plot(report, Path(args.out).with_suffix(".png"))
    return report


def markdown_table(report: dict) -> str:
    """One row per cell: CPU seconds (one thread) per method, auto's choice and the goal ratios."""
    names = list(METHODS)
    head = (
        "| model | batch | p_max | rank | "
        + " | ".join(names)
        + " | auto chose | auto / fastest | CASO / CAFO |"
    )
    lines = [head, "|" + "---|" * (len(names) + 7)]
    for c in report["cells"]:
        meth = c["methods"]
        vals = []
        for name in names:
            m = meth.get(name, {})
            if "cpu_s" in m:
                vals.append(f"{m['cpu_s']:.2f}" + ("" if m.get("correct", True) else "*"))
            elif "error" in m:
                vals.append("refused" if "is refused" in m["error"] else "error")
            else:
                vals.append("skipped" if "skipped" in m else "-")
        chose = meth.get("auto", {}).get("hessian", "-")
        fast = [  # paths checked against the exact path's answer (none where exact did not run)
            m["cpu_s"]
            for k, m in meth.items()
            if k in ("factor", "gauss_newton", "exact", "paper") and "cpu_s" in m and m.get("correct") is True
        ]
        autos = [meth[k]["cpu_s"] for k in ("auto", "auto_warm") if "cpu_s" in meth.get(k, {})]
        ratio = " / ".join(f"{a / min(fast):.2f}" for a in autos) if fast and autos else "-"
        cafo = meth.get("cafo", {}).get("cpu_s")
        over = " / ".join(f"{a / cafo:.1f}" for a in autos) if cafo and autos else "-"
        row = f"| {c['model']} | {c.get('batch', 1)} | {c['p_max'][0]:.6g} | {c['rank'][0]} | " + " | ".join(
            vals
        )
        lines.append(row + f" | {chose} | {ratio} | {over} |")
    lines.append(
        "\n\\* not correct here: a Gauss-Newton Hessian on a net that is not piecewise linear, or an "
        "attribution more than `--agree` away from the exact path's (the paper loop's fixed 10 steps); "
        "refused: CASO refuses a path that is not exact for the model (a curved ViT). "
        "Ratios: first call / second call of the same CASO object (auto_warm: curvature probe cached)."
    )
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({(c["model"], c.get("batch", 1)) for c in report["cells"]})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, (model, batch) in zip(axes[0], models, strict=True):
        cells = [c for c in report["cells"] if c["model"] == model and c.get("batch", 1) == batch]
        labels = [f"{c['level']:.6g}" for c in cells]
        names = list(METHODS)
        width = 0.8 / len(names)
        for k, meth in enumerate(names):
            vals = [c["methods"].get(meth, {}).get("cpu_s", float("nan")) for c in cells]
            ax.bar([i + k * width for i in range(len(cells))], vals, width, label=meth)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cells))], labels)
        ax.set_yscale("log")
        ax.set_xlabel("median p_max")
        ax.set_ylabel("CPU seconds, one thread")
        ax.set_title(f"{model} (batch {cells[0]['batch']}, {cells[0]['image']}^2)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
