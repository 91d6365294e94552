"""The demo's plumbing: data, training, maps, comparison, scores, figures and files, step by step."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import scoring
from .compare import by_confidence, map_difference, select_examples
from .config import DEFAULT_OUT, PAPER_C1, SPARSITY_WINDOW, DemoConfig, demo_cnn, resolve_device
from .explain import attribution_maps, dense_caso_cafo, probe_hessian
from .figures import attribution_figure, caso_vs_cafo_figure, metrics_figure
from .report import format_report

__all__ = ["DemoResult", "MissingExtraError", "run_demo"]

# attributions are computed on a float64 copy of the trained model (see explain.py)
EXPLAIN_DTYPE = torch.float64
FILES = {
    "figure": "attributions.png",
    "comparison_figure": "caso_vs_cafo.png",
    "metrics_figure": "metrics.png",
    "report": "report.md",
    "results": "results.json",
}


@dataclass
class DemoResult:
    """What :func:`run_demo` produced.

    Attributes:
        out_dir: the output folder.
        files: name -> path of every file written (``figure``, ``comparison_figure``,
            ``metrics_figure``, ``report``, ``results``).
        numbers: the JSON-friendly results (also written to ``results.json``).

    Examples:
        >>> DemoResult(Path("out"), {}, {"model": {"test_accuracy": 0.9}}).accuracy
        0.9
    """

    out_dir: Path
    files: dict[str, Path]
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        """Test accuracy of the trained CNN."""
        return float(self.numbers["model"]["test_accuracy"])


class MissingExtraError(ImportError):
    """An optional dependency of the demo (matplotlib) is not installed.

    Examples:
        >>> issubclass(MissingExtraError, ImportError)
        True
    """


def _require_extras() -> None:
    missing = []
    for mod, pkg in (("matplotlib", "matplotlib"), ("sklearn", "scikit-learn")):
        try:
            __import__(mod)
        except ImportError:
            missing.append(pkg)
    if missing:
        raise MissingExtraError(
            f"the demo needs {' and '.join(missing)} (figures and the offline digits): "
            "pip install 'captum-ext[demo]'"
        )


class _Steps:
    """Step headers on stderr and wall-clock and CPU timings per step."""

    def __init__(self, total: int, verbose: bool) -> None:
        self.total, self.verbose, self.k = total, verbose, 0
        self.timings: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.k += 1
        if self.verbose:
            print(f"[{self.k}/{self.total}] {name} ...", file=sys.stderr, flush=True)
        t0, c0 = time.perf_counter(), time.process_time()
        yield
        self.timings[name] = {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0}


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """Fork the RNGs (the caller's state is restored) and make cuDNN deterministic."""
    devices = [device.index or 0] if device.type == "cuda" else []
    old = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old


def run_demo(
    out_dir: str | os.PathLike[str] = DEFAULT_OUT,
    *,
    mode: str = "default",
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    verbose: bool = True,
    config: DemoConfig | None = None,
    command: str | None = None,
    threads: int | None = 1,
) -> DemoResult:
    """Run the demo and write its figures, report and numbers into ``out_dir``.

    Args:
        out_dir: output folder (created; files of the same names are overwritten).
        mode: ``"quick"``, ``"default"`` or ``"full"`` (see :meth:`DemoConfig.for_mode`).
        seed: seed of everything random (data placement, initialisation, shuffling, noise).
        device: ``"cpu"``, ``"cuda"``, ... or ``None`` for CUDA when available.
        progress: tqdm progress bars on the long steps.
        verbose: step headers on stderr.
        config: explicit sizes (overrides ``mode``).
        command: the command line to print in the report.
        threads: torch CPU threads during the run (restored afterwards); default 1: the models
            are small, the numbers then do not depend on the machine's core count, and torch's
            multi-threaded kernels slow down badly when other processes load the CPU. ``None``
            keeps the current setting.

    Returns:
        A :class:`DemoResult` with the output paths and the numbers.

    Raises:
        ValueError: unknown mode, unusable device or sizes.
        MissingExtraError: matplotlib or scikit-learn missing (an ``ImportError``).

    Examples:
        >>> import tempfile
        >>> tiny = DemoConfig(mode="custom", n_train=60, epochs=1, n_explain=2, n_show=2, ig_steps=2,
        ...                   nt_samples=1, metric_nt_samples=1, n_metric_test=4,
        ...                   pixel_fractions=(0.5,), roar_fractions=(0.5,))
        >>> with tempfile.TemporaryDirectory() as out:
        ...     res = run_demo(out, config=tiny, progress=False, verbose=False, device="cpu")
        ...     sorted(p.name for p in res.files.values())
        ['attributions.png', 'caso_vs_cafo.png', 'metrics.png', 'report.md', 'results.json']
    """
    cfg = config if config is not None else DemoConfig.for_mode(mode)
    cfg.check()
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    dev = resolve_device(device)
    _require_extras()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start, c_start = time.perf_counter(), time.process_time()
    steps = _Steps(7, verbose)  # the number of steps in _pipeline
    old_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        used_threads = torch.get_num_threads()
        with _deterministic(dev):
            numbers = _pipeline(cfg, seed, dev, progress, steps, out)
    finally:
        torch.set_num_threads(old_threads)
    numbers["timings"] = {k: {a: round(b, 2) for a, b in v.items()} for k, v in steps.timings.items()}
    import captum

    numbers["run"] = {
        "command": command or f"python -m captum_ext.demo --mode {cfg.mode} --seed {seed}",
        "seed": seed,
        "device": str(dev),
        "torch_threads": used_threads,
        "torch": torch.__version__,
        "captum": captum.__version__,
        "platform": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU(s)",
        "seconds": round(time.perf_counter() - t_start, 1),
        "cpu_seconds": round(time.process_time() - c_start, 1),
    }
    files = {k: out / v for k, v in FILES.items()}
    files["report"].write_text(format_report(numbers))
    files["results"].write_text(json.dumps(numbers, indent=1))
    return DemoResult(out_dir=out, files=files, numbers=numbers)


def _pipeline(
    cfg: DemoConfig, seed: int, dev: torch.device, progress: bool, steps: _Steps, out: Path
) -> dict[str, Any]:
    from ..datasets import BlockMNIST
    from ..training import evaluate, fit

    numbers: dict[str, Any] = {"config": dataclasses.asdict(cfg), "files": dict(FILES)}

    with steps.step("data: BlockMNIST from scikit-learn's real digits"):
        train = BlockMNIST("train", classes=cfg.classes, seed=seed, n=cfg.n_train)
        test = BlockMNIST("test", classes=cfg.classes, seed=seed)
        x_tr, y_tr, _ = (t.to(dev) for t in train.tensors())
        x_te, y_te, m_te = (t.to(dev) for t in test.tensors())
        numbers["data"] = {"classes": list(cfg.classes), "n_train": len(train), "n_test": len(test)}

    with steps.step("training the CNN"):
        torch.manual_seed(seed)
        model = demo_cnn(len(cfg.classes)).to(dev)
        fit(
            model,
            (x_tr, y_tr),
            epochs=cfg.epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            seed=seed,
            device=dev,
            progress=progress,
        )
        model.requires_grad_(False)  # attributions need input gradients only
        explained = copy.deepcopy(model).to(EXPLAIN_DTYPE)
        numbers["model"] = {
            "test_accuracy": evaluate(model, (x_te, y_te)),
            "train_accuracy": evaluate(model, (x_tr, y_tr)),
            "parameters": sum(p.numel() for p in model.parameters()),
        }

    n_all = x_te.shape[0]
    x64 = x_te.to(EXPLAIN_DTYPE)
    with steps.step(
        f"CASO against CAFO on {n_all} test images (c1 = {cfg.c1:g} and the paper's {PAPER_C1:g})"
    ):
        # CASO's "auto" probe decides the Hessian path once (it also warms up autograd, whose
        # first call with tensor grad_outputs imports sympy: seconds that are not CASO's)
        hessian = probe_hessian(explained, x64[:8], y_te[:8], cfg.c1)
        with torch.no_grad():
            conf, pred = (t.cpu() for t in torch.softmax(model(x_te), dim=1).max(dim=1))
        cafo, caso, top, rank = dense_caso_cafo(explained, x64, y_te, (cfg.c1, PAPER_C1), hessian)
        cos, dist = map_difference(caso[cfg.c1], cafo)
        cos_p, dist_p = map_difference(caso[PAPER_C1], cafo)
        idx, confident = select_examples(cos, conf, y_te.cpu(), cfg.n_explain, cfg.n_show)
        k1, kp = f"{cfg.c1:g}", f"{PAPER_C1:g}"
        numbers["caso_vs_cafo"] = {
            "c1": cfg.c1,
            "paper_c1": PAPER_C1,
            "n_images": n_all,
            "hessian": hessian,
            "top_eigenvalue": {
                "median": float(top.median()),
                "max": float(top.max()),
                "max_gain": float((top.max() + 2 * cfg.c1) / (2 * cfg.c1)),
                "max_gain_paper": float((top.max() + 2 * PAPER_C1) / (2 * PAPER_C1)),
            },
            "min_cos": {k1: float(cos.nan_to_num(1.0).min()), kp: float(cos_p.nan_to_num(1.0).min())},
            "bands": {k1: by_confidence(conf, dist), kp: by_confidence(conf, dist_p)},
            "confidence": conf.tolist(),
            "cos": {k1: cos.tolist(), kp: cos_p.tolist()},
            "dist": {k1: dist.tolist(), kp: dist_p.tolist()},
            "shown": idx[: cfg.n_show].tolist(),
            "shown_confidence": conf[idx[: cfg.n_show]].tolist(),
        }

    n_te = n_all if cfg.n_metric_test is None else min(cfg.n_metric_test, n_all)
    xm, ym, mm = x_te[:n_te], y_te[:n_te], m_te[:n_te]
    with steps.step(f"attribution maps of {n_te} scored test images (7 methods)"):
        scored = attribution_maps(
            explained,
            x64[:n_te],
            ym,
            cfg,
            nt_samples=cfg.metric_nt_samples,
            seed=seed,
            hessian=hessian,
            progress=progress,
            desc="(scored)",
        )
        scored_maps = {k: v.to(xm.dtype) for k, v in scored.maps.items()}

    with steps.step(f"attribution maps of the {cfg.n_explain} selected images"):
        sel = idx.to(dev)
        xe, ye, me = x_te[sel], y_te[sel], m_te[sel]
        shown = attribution_maps(
            explained, x64[sel], ye, cfg, nt_samples=cfg.nt_samples, seed=seed, hessian=hessian
        )
        leak = scoring.leakage(x64[sel], shown.maps, me)
        per_image = []
        for k, i in enumerate(idx.tolist()):
            per_image.append(
                {
                    "test_index": i,
                    "confident": bool(confident[k]),
                    "digit": int(cfg.classes[int(y_te[i])]),
                    "signal": "top" if bool(test.signal_on_top[i]) else "bottom",
                    "prediction": int(cfg.classes[int(pred[i])]),
                    "confidence": float(conf[i]),
                    "hessian_rank": int(rank[i]),
                    "top_eigenvalue": float(top[i]),
                    "cos_caso_cafo": float(cos[i]),
                    "dist_caso_cafo": float(dist[i]),
                    "cos_caso_cafo_paper_c1": float(cos_p[i]),
                    "caso_lambda1": float(shown.details["lambda1"][k]),
                    "caso_zeros": float(shown.details["zeros"][k]),
                    "leakage": {m: leak[m][k] for m in leak},
                }
            )
        solved = scored.details["error_bound"] + shown.details["error_bound"]
        zeros = torch.tensor(scored.details["zeros"], dtype=torch.float64)
        numbers["attributions"] = {
            "hessian": hessian,
            "n_scored": n_te,
            "sparsity_window_hit": int(sum(scored.details["in_window"])),
            "sparse_caso_converged": int(sum(scored.details["converged"]) + sum(shown.details["converged"])),
            "sparse_caso_solves": len(solved),
            "sparse_caso_max_error_bound": max(solved),
            "sparsity_window": list(SPARSITY_WINDOW),
            # a map keeping under 1 % of its features is "near-empty"; the window's upper edge
            # prevents them unless the search missed the window (then the closest candidate is kept)
            "sparse_caso_near_empty": int((zeros > 0.99).sum()),
            "sparse_caso_near_empty_in_window": int(
                ((zeros > 0.99) & torch.tensor(scored.details["in_window"]).bool()).sum()
            ),
            "sparse_caso_kept": {
                "min": float(1 - zeros.max()),
                "median": float(1 - zeros.median()),
                "max": float(1 - zeros.min()),
            },
            "units": int(xm[0].numel()),
            "methods": {
                k: {
                    "seconds": scored.wall[k],
                    "cpu_seconds": scored.cpu[k],
                    "cpu_per_image": scored.cpu[k] / n_te,
                    "zeros": float((v == 0).double().mean()),
                }
                for k, v in scored_maps.items()
            },
            "per_image": per_image,
        }

    gen = torch.Generator().manual_seed(seed + 7)
    scored_maps["random"] = torch.rand(xm.shape, generator=gen).to(dev)
    with steps.step("scores: pixel perturbation, DiffROAR, leakage (compare_attributions)"):
        comparison, numbers["scores"] = scoring.compare_methods(
            model, xm, ym, scored_maps, mm, cfg, seed=seed, progress=progress
        )

    with steps.step("figures"):
        n = cfg.n_show
        attribution_figure(
            out / FILES["figure"],
            xe[:n].cpu(),
            me[:n].cpu(),
            {k: v[:n].cpu() for k, v in shown.maps.items()},
            per_image[:n],
            {k: v[:n] for k, v in leak.items()},
            cfg.c1,
        )
        metrics_figure(out / FILES["metrics_figure"], comparison, cfg.metric_nt_samples)
        caso_vs_cafo_figure(out / FILES["comparison_figure"], numbers["caso_vs_cafo"])
    return numbers
