"""Issue 18's CASO targets as paired, same-run ratios (CPU time of one thread, wall time beside).

Sections (each a dict in ``benchmarks/results/bench_caso_targets.json``):

* ``sparse_cnn``: a confident ReLU CNN (32x32x3, 10 classes, batch 16, random init, last layer x1000,
  float32). Certified sparse CASO on the closed form (``lambda1 = 1e-3``, default ``lambda2``) against the
  paper's algorithm (:func:`bench_caso.reference_caso`: 10 power + 10 FISTA double-backward iterations, same
  ``lambda1`` and ``lambda2``) and against the same CASO call at ``lambda1 = 0``. Also the tight setting of
  ``bench_sparse_dual`` (``lambda2 = 0.505 max L``, ``lambda1 = median |g|``) against ``lambda1 = 0``.
* ``sparse_mlp_f64``: a float64 ReLU MLP (784-256-256-10), batch 16, ``lambda2 = 0.505 max L``,
  ``lambda1 = median |g|``: sparse CASO against the ``lambda1 = 0`` solve at the same ``lambda2``.
* ``auto_resnet18``: ``hessian="auto"`` against the fastest explicit path (:func:`auto_resnet18`).
* ``vit_caso_over_cafo``: CASO at ``lambda1 = 0`` with defaults against CAFO on a small ViT
  (:func:`vit_caso_over_cafo`).

Each repeat runs every function once in turn (paired; a call shorter than 0.1 s is repeated within its
sample and averaged); ratios are per repeat, reported as the median with a 95 % t-interval of the mean log
ratio (:func:`bench_sparse_dual.ratio_summary`).

Run: ``python benchmarks/bench_caso_targets.py --threads 1 [--repeats 7] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine  # noqa: E402
from _timing import paired as paired_times  # noqa: E402
from bench_caso import reference_caso  # noqa: E402
from bench_sparse_dual import confident_cnn, ratio_summary, relu_mlp_f64  # noqa: E402

from captum_ext import CAFO, CASO  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


#: each timed sample lasts at least this long (short calls run several times per sample and are averaged)
MIN_SAMPLE_S = 0.1


def paired(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, dict]:
    """:func:`_timing.paired` with samples of at least ``MIN_SAMPLE_S``."""
    return paired_times(fns, repeats, device, MIN_SAMPLE_S)


def summary(times: dict[str, dict], pairs: dict[str, tuple[str, str]]) -> dict[str, object]:
    clock = "cpu" if all(len(v["cpu"]) for v in times.values()) else "wall"
    return {
        "cpu_s_median": {k: statistics.median(v["cpu"]) for k, v in times.items()},
        "wall_s_median": {k: statistics.median(v["wall"]) for k, v in times.items()},
        "ratios_cpu": {
            name: ratio_summary(times[a][clock], times[b][clock]) for name, (a, b) in pairs.items()
        },
        "ratios_wall": {
            name: ratio_summary(times[a]["wall"], times[b]["wall"]) for name, (a, b) in pairs.items()
        },
    }


def _details(caso: CASO) -> dict[str, object]:
    det = caso.last_details
    return {
        "solver": det.solver,
        "hessian": det.hessian,
        "converged": bool(det.converged.all()),
        "error_bound_max": float(det.error_bound.max()),
        "iterations_max": int(det.iterations.max()),
    }


def median_abs_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """``median |g|`` over the batch (CAFO at ``lambda2 = 1/2`` is ``g`` up to the output's sign)."""
    return float(CAFO(model).attribute(x, target=y, lambda2=0.5).abs().median())


def sparse_cnn(repeats: int, device: torch.device) -> dict[str, object]:
    model, x = confident_cnn()
    model, x = model.to(device), x.to(device)
    caso = CASO(model)
    with torch.no_grad():
        y = model(x).argmax(1)
    kw = dict(target=y, hessian="closed_form")
    caso.attribute(x, lambda1=1e-3, **kw)
    lam2 = float(caso.last_details.lambda2.max())
    top = caso.last_details.top_eigenvalue
    default = _details(caso)
    tight = dict(lambda2=0.505 * float(top.max()), lambda1=median_abs_gradient(model, x, y))
    caso.attribute(x, **tight, **kw)
    tight_details = _details(caso)
    fns = {
        "caso_sparse": lambda: caso.attribute(x, lambda1=1e-3, **kw),
        "caso_lambda1_0": lambda: caso.attribute(x, lambda1=0.0, **kw),
        "paper_algorithm": lambda: reference_caso(model, x, y, 1e-3, lam2),
        "caso_sparse_tight": lambda: caso.attribute(x, **tight, **kw),
        "caso_lambda1_0_tight": lambda: caso.attribute(x, lambda1=0.0, lambda2=tight["lambda2"], **kw),
    }
    times = paired(fns, repeats, device)
    out = summary(
        times,
        {
            "paper_over_sparse": ("paper_algorithm", "caso_sparse"),
            "sparse_over_lambda1_0": ("caso_sparse", "caso_lambda1_0"),
            "sparse_over_lambda1_0_tight": ("caso_sparse_tight", "caso_lambda1_0_tight"),
        },
    )
    r = out["ratios_cpu"]
    out.update(
        setting={"lambda1": 1e-3, "lambda2": lam2, "tight": tight, "batch": int(x.shape[0])},
        details_default=default,
        details_tight=tight_details,
        targets={
            "sparse_ge_20x_faster_than_paper": r["paper_over_sparse"]["median"] >= 20,
            "sparse_le_1.5x_lambda1_0": r["sparse_over_lambda1_0"]["median"] <= 1.5,
        },
    )
    return out


def sparse_mlp(repeats: int, device: torch.device) -> dict[str, object]:
    model, x = relu_mlp_f64()
    model, x = model.to(device), x.to(device)
    caso = CASO(model)
    kw = dict(hessian="closed_form")
    caso.attribute(x, **kw)
    lam2 = 0.505 * float(caso.last_details.top_eigenvalue.max())
    lam1 = median_abs_gradient(model, x, caso.last_details.target)
    caso.attribute(x, lambda1=lam1, lambda2=lam2, **kw)
    sparse_details = _details(caso)
    fns = {
        "caso_sparse": lambda: caso.attribute(x, lambda1=lam1, lambda2=lam2, **kw),
        "caso_lambda1_0": lambda: caso.attribute(x, lambda2=lam2, **kw),
    }
    times = paired(fns, repeats, device)
    out = summary(times, {"sparse_over_lambda1_0": ("caso_sparse", "caso_lambda1_0")})
    out.update(
        setting={"lambda1": lam1, "lambda2": lam2, "batch": int(x.shape[0])},
        details=sparse_details,
        targets={"sparse_le_3x_lambda1_0": out["ratios_cpu"]["sparse_over_lambda1_0"]["median"] <= 3},
    )
    return out


def _scaled_head(model: torch.nn.Module, head: torch.nn.Linear, scale: float) -> torch.nn.Module:
    with torch.no_grad():
        head.weight.mul_(scale)
        head.bias.mul_(scale)
    return model


def _head_scale_for(model: torch.nn.Module, head: torch.nn.Linear, x: torch.Tensor, level: float) -> float:
    """The smallest head scale (within 2 %, by bisection on its log) with every ``p_max >= level``: confident
    but not saturated (a saturated float32 softmax gives ``g = 0`` exactly, a trivial problem)."""
    w, b = head.weight.detach().clone(), head.bias.detach().clone()

    def p_min(scale: float) -> float:
        with torch.no_grad():
            head.weight.copy_(w * scale)
            head.bias.copy_(b * scale)
            return float(torch.softmax(model(x).double(), 1).amax(1).min())

    lo, hi = 1.0, 2.0
    while p_min(hi) < level:
        lo, hi = hi, hi * 2
    while hi / lo > 1.02:
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if p_min(mid) < level else (lo, mid)
    p_min(1.0)  # restore
    return hi


def auto_resnet18(repeats: int, device: torch.device) -> dict[str, object]:
    """``hessian="auto"`` against every explicit path on ResNet-18 (1000 classes, 3x64x64, random weights,
    batch 2) at low confidence (as initialised) and high confidence (the smallest head scale with every
    p_max >= 0.999)."""
    from _resnet import resnet18

    out: dict[str, object] = {}
    for label, level in (("low_confidence", None), ("high_confidence", 0.999)):
        torch.manual_seed(0)
        model = resnet18(1000).to(device)
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)).to(device)
        scale = 1.0 if level is None else _head_scale_for(model, model[-1], x, level)
        model = _scaled_head(model, model[-1], scale)
        with torch.no_grad():
            p_max = torch.softmax(model(x), 1).amax(1)
        caso = CASO(model)
        fns = {h: (lambda h=h, c=caso, x=x: c.attribute(x, hessian=h)) for h in PATHS}
        times = paired(fns, repeats, device)
        caso.attribute(x)
        det = caso.last_details
        med = {h: statistics.median(times[h]["cpu"]) for h in PATHS}
        fastest = min((h for h in PATHS if h != "auto"), key=med.get)
        row = summary(times, {"auto_over_fastest_explicit": ("auto", fastest)})
        row.update(
            p_max=p_max.tolist(),
            head_scale=scale,
            auto_choice=det.hessian,
            fastest_explicit=fastest,
            planning_s=det.extra["auto"]["planning_s"],
            target_auto_le_1_15x=row["ratios_cpu"]["auto_over_fastest_explicit"]["median"] <= 1.15,
        )
        out[label] = row
    return out


def vit_caso_over_cafo(repeats: int, device: torch.device) -> dict[str, object]:
    """CASO (``lambda1 = 0``, defaults) against CAFO on a small ViT (64x64, patch 8, 4 layers, width 128,
    1000 classes, batch 2, random weights) at low confidence and at p_max >= 0.999 (the smallest head scale
    that gives it: confident, not saturated)."""
    from _vit import SmallViT

    out: dict[str, object] = {}
    for label, level, target in (("low_confidence", None, 12.0), ("high_confidence", 0.999, 5.0)):
        torch.manual_seed(0)
        model = SmallViT().eval().to(device)
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)).to(device)
        scale = 1.0 if level is None else _head_scale_for(model, model.head, x, level)
        model = _scaled_head(model, model.head, scale)
        with torch.no_grad():
            p_max = torch.softmax(model(x), 1).amax(1)
        caso, cafo = CASO(model), CAFO(model)
        fns = {"caso": lambda c=caso, x=x: c.attribute(x), "cafo": lambda c=cafo, x=x: c.attribute(x)}
        times = paired(fns, repeats, device)
        caso.attribute(x)
        row = summary(times, {"caso_over_cafo": ("caso", "cafo")})
        row.update(
            p_max=p_max.tolist(),
            head_scale=scale,
            details=_details(caso),
            n_hvp=caso.last_details.n_hvp,
            target=f"<= {target}x",
            target_met=row["ratios_cpu"]["caso_over_cafo"]["median"] <= target,
        )
        out[label] = row
    return out


PATHS = ("auto", "closed_form", "gauss_newton", "exact")
SECTIONS = {
    "sparse_cnn": sparse_cnn,
    "sparse_mlp_f64": sparse_mlp,
    "auto_resnet18": auto_resnet18,
    "vit_caso_over_cafo": vit_caso_over_cafo,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_caso_targets.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    results = dict(old.get("results", {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the paper's fixed iterations warn by design
        for name in args.sections:
            results[name] = SECTIONS[name](args.repeats, device)
            print(name, json.dumps(results[name], default=str)[:1500])
    out = {
        "benchmark": "bench_caso_targets",
        "machine": describe_machine(device),
        "repeats": args.repeats,
        "timer": "time.process_time (ratios) and time.perf_counter (wall), paired per repeat",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
