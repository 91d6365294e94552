"""End-to-end demo: train, explain, evaluate -- on real handwritten digits, offline.

Run ``python -m captum_ext.demo`` (or ``captum-ext demo``; ``--help`` lists the options). It

1. builds BlockMNIST from scikit-learn's bundled real digits (no download): 56x28 images whose
   *signal* block holds the digit (all ten classes) and whose *null* block holds a fixed patch;
2. trains a small piecewise-linear CNN on it;
3. explains a few test images with Saliency, IntegratedGradients, SmoothGrad
   (``NoiseTunnel(Saliency)``), CAFO, CASO and SmoothCASO (``NoiseTunnel(CASO)``), the last three
   with the CASO paper's unsupervised ``lambda1`` (sparsity window 0.75-1);
4. scores Saliency and CASO (against a random ranking) with discriminative pixel perturbation
   (accuracy after removing the least relevant pixels) and DiffROAR without retraining (accuracy
   with only the top-k minus accuracy with only the bottom-k pixels kept);
5. writes ``attributions.png``, ``metrics.png``, ``report.md`` and ``results.json`` into the
   output folder and names it at the end.

Everything is seeded: the same seed, mode, device and thread count (``--threads``, default 1)
give the same numbers. The default mode takes well under three minutes on two CPU cores;
``--quick`` is a smoke test on small subsets, ``--full`` explains more images (16) with a
longer-trained model and 100 IntegratedGradients steps, and adds the 100% fractions.

Why DiffROAR without retraining: with ten classes, the pattern of pixels kept on BlockMNIST's
constant null patch encodes the class a map was computed for, and a retrained model learns to
read the label from the mask (both top-k and bottom-k reach full accuracy), so the retrained
variant is not meaningful for class-specific maps on this data.

The pure pieces (configuration, device resolution, image selection, report formatting) are
separate functions; :func:`run_demo` is the plumbing that ties them together and can be called
from Python.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "DEFAULT_OUT",
    "MODES",
    "DemoConfig",
    "DemoResult",
    "MissingExtraError",
    "add_arguments",
    "build_parser",
    "demo_cnn",
    "format_report",
    "main",
    "resolve_device",
    "run_demo",
    "run_from_args",
    "select_examples",
]

DEFAULT_OUT = "captum_ext_demo_out"
MODES = ("quick", "default", "full")
SPARSITY_WINDOW = (0.75, 1.0)  # the CASO paper's window on the share of zero features
METHODS = ("Saliency", "IntegratedGradients", "SmoothGrad", "CAFO", "CASO", "SmoothCASO")
METRIC_METHODS = ("Saliency", "CASO")
# Attributions are computed on a float64 copy of the trained model: for predictions within about
# 1e-7 of certainty, float32 cross-entropy gradients (which CAFO and CASO explain) are dominated
# by the rounding of p_t - 1, and the maps of such images would show rounding noise.
EXPLAIN_DTYPE = torch.float64


# --------------------------------------------------------------------------------------------------
# configuration (pure)


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of one demo run. :meth:`for_mode` gives the three presets.

    Attributes:
        mode: name of the preset (``"quick"``, ``"default"``, ``"full"``) or ``"custom"``.
        classes: digits used (BlockMNIST's multi-class variant; ``(0, 1)`` is the paper's
            binary set).
        n_train: training images (``None``: the whole offline train split, 1,442 for ten digits).
        epochs, lr, batch_size: training of the explained CNN (Adam).
        n_explain: test images explained by all six methods (statistics in the report).
        n_show: how many of them appear in the figure.
        ig_steps: IntegratedGradients steps.
        nt_samples, nt_stdev: NoiseTunnel samples and noise level (paper: 50 and 0.15).
        n_metric_test: test images scored by the metrics (``None``: the whole test split).
        pixel_fractions: fractions of pixels removed by pixel perturbation.
        roar_fractions: DiffROAR's unmasking levels ``k``.
    """

    mode: str = "default"
    classes: tuple[int, ...] = tuple(range(10))
    n_train: int | None = None
    epochs: int = 6
    lr: float = 5e-3
    batch_size: int = 32
    n_explain: int = 8
    n_show: int = 4
    ig_steps: int = 50
    nt_samples: int = 50
    nt_stdev: float = 0.15
    n_metric_test: int | None = None
    pixel_fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    roar_fractions: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

    @classmethod
    def for_mode(cls, mode: str) -> DemoConfig:
        """The preset for ``mode`` (``"quick"``, ``"default"`` or ``"full"``).

        Examples:
            >>> DemoConfig.for_mode("quick").n_show
            2
        """
        if mode == "default":
            return cls()
        if mode == "quick":
            return cls(
                mode="quick",
                n_train=600,
                epochs=6,
                n_explain=2,
                n_show=2,
                ig_steps=16,
                nt_samples=4,
                n_metric_test=120,
                pixel_fractions=(0.25, 0.5, 0.75),
                roar_fractions=(0.1, 0.3),
            )
        if mode == "full":
            return cls(
                mode="full",
                epochs=12,
                n_explain=16,
                n_show=6,
                ig_steps=100,
                pixel_fractions=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
                roar_fractions=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            )
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")

    def check(self) -> None:
        """Raise ``ValueError`` for sizes that cannot work."""
        if not 1 <= self.n_show <= self.n_explain:
            raise ValueError(f"need 1 <= n_show <= n_explain, got {self.n_show}, {self.n_explain}")
        for name in ("epochs", "ig_steps", "nt_samples", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to run on: ``None`` means CUDA when available, else the CPU.

    Args:
        device: ``None``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (or ``"mps"`` on Apple silicon).

    Returns:
        A usable ``torch.device``.

    Raises:
        ValueError: an unknown device string, or a device this machine does not have (with what
            it has instead).

    Examples:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'") from err
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} was requested but CUDA is not available on this machine "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); "
                "use --device cpu"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(
                f"device {device!r} was requested but this machine has {count} CUDA device(s) "
                f"(cuda:0 to cuda:{count - 1})"
            )
        return dev
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device {device!r} was requested but MPS is not available; use cpu")
        return dev
    raise ValueError(f"device type {dev.type!r} is not supported by the demo: use cpu or cuda")


def demo_cnn(num_classes: int = 10) -> nn.Sequential:
    """The small piecewise-linear CNN the demo trains, for ``(N, 1, 56, 28)`` BlockMNIST images.

    Two strided ReLU convolutions and a linear layer: piecewise linear, so CASO's closed-form
    Hessian is exact for it.

    Examples:
        >>> demo_cnn()(torch.zeros(2, 1, 56, 28)).shape
        torch.Size([2, 10])
    """
    return nn.Sequential(
        nn.Conv2d(1, 8, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 14 * 7, num_classes),
    )


def select_examples(
    labels: Tensor,
    signal_on_top: Tensor,
    n: int,
    generator: torch.Generator,
    confidence: Tensor | None = None,
) -> Tensor:
    """Pick ``n`` distinct examples to explain: varied labels, both signal positions, and (when
    ``confidence`` is given) every second pick among the least confident predictions.

    Even picks scan the examples in a random order and take the first with an unseen label and
    the wanted signal position (top for picks 0, 4, 8, ..., bottom for 2, 6, ...). With
    ``confidence``, odd picks scan from the least confident prediction up (where CASO and CAFO
    differ, the CASO paper's Theorem 4) and take the first unseen label whatever its position;
    without it they scan the random order like even picks. When no candidate qualifies, the
    first one not yet taken with an unseen label (else any) is used.

    Args:
        labels: ``(N,)`` class indices.
        signal_on_top: ``(N,)`` bool, where each example's signal block is.
        n: how many to pick, ``1 <= n <= N``.
        generator: seeded generator of the random order.
        confidence: optional ``(N,)`` prediction confidences (e.g. the top softmax probability).

    Returns:
        ``(n,)`` long indices, distinct.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> labels, top = torch.tensor([0, 0, 1, 1]), torch.tensor([True, False, True, False])
        >>> idx = select_examples(labels, top, 2, g, confidence=torch.tensor([.9, .9, .9, .4]))
        >>> int(idx[1]), sorted(labels[idx].tolist())
        (3, [0, 1])
    """
    total = int(labels.shape[0])
    if not 1 <= n <= total:
        raise ValueError(f"cannot pick {n} examples out of {total}")
    if signal_on_top.shape[0] != total or (confidence is not None and confidence.shape[0] != total):
        raise ValueError("labels, signal_on_top and confidence must have the same length")
    random_order = torch.randperm(total, generator=generator).tolist()
    uncertain_order = (
        torch.sort(confidence.detach().cpu(), stable=True).indices.tolist() if confidence is not None else []
    )
    lab = [int(v) for v in labels.tolist()]
    top = [bool(v) for v in signal_on_top.tolist()]
    chosen: list[int] = []
    taken: set[int] = set()
    seen: set[int] = set()
    for k in range(n):
        uncertain = k % 2 == 1 and confidence is not None
        order = uncertain_order if uncertain else random_order
        want_top = (k // 2) % 2 == 0
        free = [i for i in order if i not in taken]
        pick = next((i for i in free if lab[i] not in seen and (uncertain or top[i] == want_top)), None)
        if pick is None:
            pick = next((i for i in free if lab[i] not in seen), free[0])
        chosen.append(pick)
        taken.add(pick)
        seen.add(lab[pick])
    return torch.tensor(chosen, dtype=torch.long)


# --------------------------------------------------------------------------------------------------
# results and report (pure)


@dataclass
class DemoResult:
    """What :func:`run_demo` produced.

    Attributes:
        out_dir: the output folder.
        files: name -> path of every file written (``report``, ``figure``, ``metrics_figure``,
            ``results``).
        numbers: the JSON-friendly results (also written to ``results.json``).
    """

    out_dir: Path
    files: dict[str, Path]
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        """Test accuracy of the trained CNN."""
        return float(self.numbers["model"]["test_accuracy"])


def _fmt(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def format_report(numbers: dict[str, Any]) -> str:
    """The Markdown report of a demo run, from its ``results.json`` content.

    Every number is printed with three decimals (``f"{x:.3f}"``), seconds with one.

    Args:
        numbers: the dictionary :func:`run_demo` writes to ``results.json``.

    Returns:
        Markdown text.
    """
    cfg, data, model = numbers["config"], numbers["data"], numbers["model"]
    maps, pix, roar = numbers["attributions"], numbers["pixel_perturbation"], numbers["diff_roar"]
    run = numbers["run"]
    out: list[str] = []
    out.append("# captum_ext demo report\n")
    out.append(
        f"`{run['command']}` -- mode `{cfg['mode']}`, seed {run['seed']}, "
        f"device `{run['device']}`, "
        f"{run['torch_threads']} torch thread(s), torch {run['torch']}, captum {run['captum']}, "
        f"{run['platform']}. Pipeline runtime {run['seconds']:.1f} s (after Python start-up and "
        f"imports).\n"
    )
    out.append("## Data and model\n")
    out.append(
        f"BlockMNIST built offline from scikit-learn's real handwritten digits (classes "
        f"{', '.join(str(c) for c in data['classes'])}): 56x28 images, the digit in a 28x28 "
        f"signal block placed top or bottom at random, a fixed patch in the other (null) block. "
        f"{data['n_train']} training and {data['n_test']} test images.\n"
    )
    out.append(
        f"A small ReLU CNN ({model['parameters']} parameters, {cfg['epochs']} epochs of Adam) "
        f"reaches **test accuracy {_fmt(model['test_accuracy'])}** "
        f"(train accuracy {_fmt(model['train_accuracy'])}).\n"
    )
    out.append("## Attribution maps\n")
    out.append(
        f"![attribution maps]({numbers['files']['figure']})\n\n"
        f"Maps for {cfg['n_explain']} test images (the figure shows {cfg['n_show']}), each "
        "explaining the true class and normalised for display as in SmoothGrad (absolute value, "
        "99th-percentile cap, scaled to [0, 1]); the orange box is the signal block. All "
        "attributions are computed in float64 (on a copy of the model), because for predictions "
        "within about 1e-7 of certainty float32 cross-entropy gradients are rounding noise. "
        f"CAFO, CASO and SmoothCASO choose lambda1 per image by the CASO paper's sparsity window "
        f"{SPARSITY_WINDOW[0]}-{SPARSITY_WINDOW[1]}; SmoothGrad and SmoothCASO use "
        f"{cfg['nt_samples']} noise samples of standard deviation {cfg['nt_stdev']}. "
        "*Leakage* is the share of |attribution| outside the signal block (0 is ideal; Shah et "
        "al.), *zeros* the share of exactly-zero features.\n"
    )
    rows = [
        [name, _fmt(m["seconds"], 1), _fmt(m["zeros"]), _fmt(m["leakage"])]
        for name, m in maps["methods"].items()
    ]
    out.append(_table(["method", "seconds", "zeros", "leakage (mean)"], rows) + "\n")
    per = maps["per_image"]
    rows = [
        [
            str(i),
            str(r["digit"]),
            r["signal"],
            str(r["prediction"]),
            _fmt(r["confidence"]),
            str(r["hessian_rank"]),
            _fmt(r["top_eigenvalue"]),
            f"{r['caso_lambda1']:.1e}",
            _fmt(r["caso_zeros"]),
            _fmt(r["cos_caso_cafo"]),
        ]
        for i, r in enumerate(per)
    ]
    out.append(
        "\nPer image: the rank and top eigenvalue L of the input Hessian of the loss (CASO's "
        "closed form), the lambda1 the sparsity search chose for CASO and its share of zeros, and "
        "the cosine between CASO and CAFO at lambda1 = 0. CASO solves (2 lambda2 I - H) Delta = g "
        "with lambda2 = L/2 + c1 (c1 = 10), CAFO Delta = g / (2 c1): they coincide at high "
        "confidence (the paper's Theorem 4) and can only differ where L is not small against "
        "c1.\n"
    )
    out.append(
        _table(
            [
                "#",
                "digit",
                "signal",
                "predicted",
                "confidence",
                "Hessian rank",
                "L",
                "CASO lambda1",
                "CASO zeros",
                "cos(CASO, CAFO)",
            ],
            rows,
        )
        + "\n"
    )
    out.append("## Metrics: discriminative pixel perturbation\n")
    out.append(
        f"![metrics]({numbers['files']['metrics_figure']})\n\n"
        f"Both metrics score Saliency and CASO (lambda1 = 0, so that every pixel is ranked) "
        f"against a random ranking. Pixel perturbation (Srinivas & Fleuret): on "
        f"{pix['n_images']} test images, the least relevant pixels are replaced by the image's "
        f"mean value and the model's **accuracy** is measured. Higher is better: a good map "
        f"keeps the pixels the model needs. Unperturbed accuracy "
        f"{_fmt(pix['baseline_accuracy'])}.\n"
    )
    names = list(pix["accuracy"])
    rows = [
        [f"{100 * f:.0f}%"] + [_fmt(pix["accuracy"][n][j]) for n in names]
        for j, f in enumerate(pix["fractions"])
    ]
    out.append(_table(["pixels removed"] + names, rows) + "\n")
    mean_rows = ", ".join(f"{n} {_fmt(sum(v) / len(v))}" for n, v in pix["accuracy"].items())
    out.append(f"\nMean accuracy over the fractions: {mean_rows}.\n")
    out.append("## Metrics: DiffROAR without retraining\n")
    out.append(
        f"Shah et al.'s top-k minus bottom-k test, in its no-retraining variant (their App. C): "
        f"keep only the top-k, or only the bottom-k, pixels of each of the {roar['n_images']} test "
        f"images by |attribution|, set the rest to 0, and measure the trained model's accuracy. "
        f"DiffROAR = accuracy(top-k) - accuracy(bottom-k): larger means the map ranks the pixels "
        f"the model relies on first; a random map gives about 0.\n\n"
        f"Why not the retrained variant here: with ten classes, the pattern of kept pixels on "
        f"BlockMNIST's constant null patch encodes the class the map was computed for, so a model "
        f"retrained on masked images reads the label from the mask (top-k and bottom-k both reach "
        f"the explained model's accuracy or more), which makes the retrained DiffROAR meaningless "
        f"for class-specific maps on this data. `captum_ext.metrics.diff_roar(...)` retrains by "
        f"default; use that where the ranking does not depend on the explained class.\n"
    )
    names = list(roar["methods"])
    header = ["k"] + [f"{n}: DiffROAR (top / bottom)" for n in names]
    rows = []
    for j, f in enumerate(roar["fractions"]):
        row = [f"{100 * f:g}%"]
        for n in names:
            r = roar["methods"][n]
            row.append(f"{_fmt(r['diff'][j])} ({_fmt(r['top'][j])} / {_fmt(r['bottom'][j])})")
        rows.append(row)
    out.append(_table(header, rows) + "\n")
    means = ", ".join(f"{n} {_fmt(sum(r['diff']) / len(r['diff']))}" for n, r in roar["methods"].items())
    out.append(f"\nMean DiffROAR over k: {means}.\n")
    out.append("## Runtime per step\n")
    out.append(_table(["step", "seconds"], [[k, _fmt(v, 1)] for k, v in numbers["timings"].items()]) + "\n")
    out.append(
        "\nAll numbers are in `results.json`. Reproduce with the command above (same seed, mode, "
        "device and thread count give the same numbers).\n"
    )
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# plumbing


class _Steps:
    """Step headers on stderr and wall-clock timings per step."""

    def __init__(self, total: int, verbose: bool) -> None:
        self.total, self.verbose, self.k = total, verbose, 0
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.k += 1
        if self.verbose:
            print(f"[{self.k}/{self.total}] {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - t0


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


class MissingExtraError(ImportError):
    """An optional dependency of the demo (matplotlib, scikit-learn) is not installed."""


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
            "pip install 'captum-ext[dev]'"
        )


def _batched(
    fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor, batch: int, desc: str, progress: bool
) -> Tensor:
    from tqdm.auto import tqdm

    parts = []
    for s in tqdm(range(0, x.shape[0], batch), desc=desc, disable=not progress, leave=False):
        parts.append(fn(x[s : s + batch].detach().requires_grad_(), y[s : s + batch]).detach())
    return torch.cat(parts)


def _explain(
    model: nn.Module, x: Tensor, y: Tensor, cfg: DemoConfig, seed: int, progress: bool
) -> tuple[dict[str, Tensor], dict[str, float], dict[str, Any]]:
    """The six maps for ``x`` (targets ``y``), their timings, and CASO's per-image details."""
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency
    from tqdm.auto import tqdm

    from .attr import CAFO, CASO

    x = x.detach().requires_grad_()  # gradient methods want leaves that require grad
    caso = CASO(model)
    nt = dict(nt_type="smoothgrad", nt_samples=cfg.nt_samples, stdevs=cfg.nt_stdev)
    # method -> (function of a batch, examples per call): the NoiseTunnel methods go one image
    # at a time so that their progress bar moves
    runs: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], int]] = {
        "Saliency": (lambda a, b: Saliency(model).attribute(a, target=b, abs=False), len(x)),
        "IntegratedGradients": (
            lambda a, b: IntegratedGradients(model).attribute(
                a, target=b, n_steps=cfg.ig_steps, internal_batch_size=512
            ),
            len(x),
        ),
        "SmoothGrad": (lambda a, b: NoiseTunnel(Saliency(model)).attribute(a, target=b, abs=False, **nt), 1),
        "CAFO": (lambda a, b: CAFO(model).attribute(a, target=b, sparsity=SPARSITY_WINDOW), len(x)),
        "CASO": (lambda a, b: caso.attribute(a, target=b, sparsity=SPARSITY_WINDOW), len(x)),
        "SmoothCASO": (
            lambda a, b: NoiseTunnel(CASO(model)).attribute(a, target=b, sparsity=SPARSITY_WINDOW, **nt),
            1,
        ),
    }
    # Warm-up outside the timings: the first autograd call with tensor grad_outputs in a process
    # imports sympy inside torch (seconds), which would otherwise be charged to CASO.
    CASO(model).attribute(x[:1], target=y[:1], sparsity=SPARSITY_WINDOW)
    Saliency(model).attribute(x[:1], target=y[:1])
    maps: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}
    details: dict[str, Any] = {}
    for i, (name, (run, chunk)) in enumerate(runs.items()):
        torch.manual_seed(seed + 1000 + i)  # the noise of the NoiseTunnel methods
        t0 = time.perf_counter()
        starts = range(0, len(x), chunk)
        parts = [
            run(x[s : s + chunk], y[s : s + chunk]).detach()
            for s in tqdm(starts, desc=f"{name} maps", disable=not progress, leave=False)
        ]
        maps[name] = torch.cat(parts)
        seconds[name] = time.perf_counter() - t0
        if name == "CASO":
            d = caso.last_details
            details = {
                "lambda1": d.lambda1.tolist(),
                "zeros": d.sparsity.tolist(),
                "rank": d.rank.tolist(),
                "top_eigenvalue": d.top_eigenvalue.tolist(),
            }
    dense_caso = caso.attribute(x, target=y).flatten(1)
    dense_cafo = CAFO(model).attribute(x, target=y).flatten(1)
    details["cos_caso_cafo"] = nn.functional.cosine_similarity(dense_caso, dense_cafo).tolist()
    details["rank"] = caso.last_details.rank.tolist()
    return maps, seconds, details


def _metric_attributions(
    model: nn.Module, x: Tensor, y: Tensor, progress: bool, desc: str
) -> dict[str, Tensor]:
    """Saliency and CASO (lambda1 = 0, closed form when exact) for the metrics."""
    from captum.attr import Saliency

    from .attr import CASO

    sal, caso = Saliency(model), CASO(model)
    return {
        "Saliency": _batched(
            lambda a, b: sal.attribute(a, target=b, abs=False), x, y, 512, f"Saliency ({desc})", progress
        ),
        "CASO": _batched(lambda a, b: caso.attribute(a, target=b), x, y, 256, f"CASO ({desc})", progress),
    }


def _make_figures(
    out: Path,
    images: Tensor,
    masks: Tensor,
    maps: dict[str, Tensor],
    row_titles: list[str],
    leak: dict[str, list[float]],
    pix: dict[str, Any],
    roar: dict[str, Any],
    cfg: DemoConfig,
) -> tuple[Path, Path]:
    from matplotlib.figure import Figure

    from .visualization import plot_attribution_grid

    n = cfg.n_show
    fig = plot_attribution_grid(
        images[:n],
        {k: v[:n] for k, v in maps.items()},
        row_titles=row_titles[:n],
        outlines=masks[:n],
        annotations={k: [f"leak {v:.2f}" for v in leak[k][:n]] for k in maps},
        title="Which pixels explain the class? BlockMNIST from real digits; the box marks the "
        "signal block, 'leak' is the share of |attribution| outside it",
    )
    fig_path = out / "attributions.png"
    fig.savefig(fig_path, dpi=110)

    mfig = Figure(figsize=(10, 3.6), layout="constrained")
    ax1, ax2 = mfig.subplots(1, 2)
    for name, res in pix["results"].items():
        res.plot(ax=ax1, label=name)
    ax1.set_title("pixel perturbation (higher is better)", fontsize=10)
    ax1.set_ylim(0, 1.02)
    for name, res in roar["results"].items():
        res.plot(ax=ax2, label=name)
    ax2.set_title("DiffROAR, no retraining (higher is better)", fontsize=10)
    mfig.suptitle(
        f"Saliency and CASO (lambda1 = 0) against a random ranking, {pix['n_images']} test images",
        fontsize=10,
    )
    metrics_path = out / "metrics.png"
    mfig.savefig(metrics_path, dpi=110)
    return fig_path, metrics_path


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
        >>> res = run_demo("demo_out", mode="quick")  # doctest: +SKIP
        >>> res.files["report"]  # doctest: +SKIP
        PosixPath('demo_out/report.md')
    """
    cfg = config if config is not None else DemoConfig.for_mode(mode)
    cfg.check()
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    dev = resolve_device(device)
    _require_extras()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    steps = _Steps(7, verbose)
    old_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        used_threads = torch.get_num_threads()
        with _deterministic(dev):
            numbers = _pipeline(cfg, seed, dev, progress, steps, out)
    finally:
        torch.set_num_threads(old_threads)
    numbers["timings"] = {k: round(v, 2) for k, v in steps.timings.items()}
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
    }
    files = {
        "figure": out / "attributions.png",
        "metrics_figure": out / "metrics.png",
        "report": out / "report.md",
        "results": out / "results.json",
    }
    numbers["files"] = {k: v.name for k, v in files.items()}
    files["report"].write_text(format_report(numbers))
    files["results"].write_text(json.dumps(numbers, indent=1))
    return DemoResult(out_dir=out, files=files, numbers=numbers)


def _pipeline(
    cfg: DemoConfig, seed: int, dev: torch.device, progress: bool, steps: _Steps, out: Path
) -> dict[str, Any]:
    from .datasets import BlockMNIST
    from .metrics import diff_roar, feature_leakage, pixel_perturbation
    from .training import evaluate, fit

    numbers: dict[str, Any] = {"config": dataclasses.asdict(cfg)}

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

    with steps.step("attribution maps (6 methods)"):
        with torch.no_grad():
            conf_all = torch.softmax(model(x_te), dim=1).amax(dim=1).cpu()
        gen = torch.Generator().manual_seed(seed)
        idx = select_examples(y_te.cpu(), test.signal_on_top, cfg.n_explain, gen, confidence=conf_all).to(dev)
        xe, ye, me = x_te[idx], y_te[idx], m_te[idx]
        maps, seconds, details = _explain(explained, xe.to(EXPLAIN_DTYPE), ye, cfg, seed, progress)
        leak = {k: feature_leakage(v, me).tolist() for k, v in maps.items()}
        with torch.no_grad():
            probs = torch.softmax(model(xe), dim=1)
        conf, pred = probs.max(dim=1)
        per_image = []
        for i in range(cfg.n_explain):
            per_image.append(
                {
                    "test_index": int(idx[i]),
                    "digit": int(cfg.classes[int(ye[i])]),
                    "signal": "top" if bool(test.signal_on_top[int(idx[i])]) else "bottom",
                    "prediction": int(cfg.classes[int(pred[i])]),
                    "confidence": float(conf[i]),
                    "hessian_rank": int(details["rank"][i]),
                    "top_eigenvalue": float(details["top_eigenvalue"][i]),
                    "caso_lambda1": float(details["lambda1"][i]),
                    "caso_zeros": float(details["zeros"][i]),
                    "cos_caso_cafo": float(details["cos_caso_cafo"][i]),
                }
            )
        numbers["attributions"] = {
            "methods": {
                k: {
                    "seconds": seconds[k],
                    "zeros": float((maps[k] == 0).double().mean()),
                    "leakage": float(torch.tensor(leak[k]).nanmean()),
                    "leakage_per_image": leak[k],
                }
                for k in maps
            },
            "per_image": per_image,
        }

    n_te = x_te.shape[0] if cfg.n_metric_test is None else min(cfg.n_metric_test, x_te.shape[0])
    xm, ym = x_te[:n_te], y_te[:n_te]
    with steps.step(f"metric attributions (Saliency, CASO on {n_te} test images)"):
        attr_te = _metric_attributions(explained, xm.to(EXPLAIN_DTYPE), ym, progress, "test")
        attr_te = {k: v.to(xm.dtype) for k, v in attr_te.items()}
        gen = torch.Generator().manual_seed(seed + 7)
        attr_te["random"] = torch.rand(xm.shape, generator=gen).to(dev)

    with steps.step("pixel perturbation"):
        pix_res = {
            name: pixel_perturbation(
                model,
                xm,
                ym,
                a,
                fractions=cfg.pixel_fractions,
                order="least",
                fill="mean",
                seed=seed,
                progress=progress,
            )
            for name, a in attr_te.items()
        }
        base = next(iter(pix_res.values()))
        numbers["pixel_perturbation"] = {
            "n_images": n_te,
            "fractions": list(cfg.pixel_fractions),
            "order": "least",
            "fill": "mean",
            "baseline_accuracy": base.baseline_accuracy,
            "accuracy": {k: r.accuracy.tolist() for k, r in pix_res.items()},
            "label_prob": {k: r.label_prob.tolist() for k, r in pix_res.items()},
        }

    with steps.step("DiffROAR (no retraining)"):
        roar_res = {
            name: diff_roar(
                None,
                None,
                (xm, ym),
                (None, a),
                fractions=cfg.roar_fractions,
                retrain=False,
                model=model,
                tie_seed=seed,
                progress=progress,
            )
            for name, a in attr_te.items()
        }
        numbers["diff_roar"] = {
            "n_images": n_te,
            "fractions": list(cfg.roar_fractions),
            "retrain": False,
            "fill": 0.0,
            "methods": {
                k: {"diff": r.diff.tolist(), "top": r.top.tolist(), "bottom": r.bottom.tolist()}
                for k, r in roar_res.items()
            },
        }

    with steps.step("figures"):
        row_titles = [
            f"digit {r['digit']} ({r['signal']})\npred {r['prediction']}, p={r['confidence']:.2f}"
            for r in per_image
        ]
        _make_figures(
            out,
            xe.cpu(),
            me.cpu(),
            {k: v.cpu() for k, v in maps.items()},
            row_titles,
            leak,
            {"results": pix_res, "n_images": n_te},
            {"results": roar_res},
            cfg,
        )
    return numbers


# --------------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the demo's options to ``parser`` (shared by ``python -m captum_ext.demo`` and
    ``captum-ext demo``) and return it."""
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=DEFAULT_OUT,
        help=f"output folder for the figures, report.md and results.json (default: {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of everything random; same seed, same numbers (default: 0)"
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--mode",
        choices=MODES,
        default="default",
        help="quick: smoke test on small subsets; default: the demo (under 3 minutes on 2 CPU "
        "cores); full: more images (16), epochs and IntegratedGradients steps, every "
        "fraction (a few minutes)",
    )
    size.add_argument(
        "--quick", dest="mode", action="store_const", const="quick", help="same as --mode quick"
    )
    size.add_argument("--full", dest="mode", action="store_const", const="full", help="same as --mode full")
    parser.add_argument(
        "--device",
        default=None,
        help="cpu, cuda or cuda:N (default: cuda if available, else cpu); an unavailable device is an error",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="torch CPU threads (default: 1; the models are small, the numbers then do not "
        "depend on the core count, and multi-threaded torch slows down badly on a busy CPU)",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return parser


def build_parser(prog: str = "python -m captum_ext.demo") -> argparse.ArgumentParser:
    """The demo's stand-alone argument parser."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "captum_ext demo: train a small CNN on BlockMNIST built from scikit-learn's real "
            "digits (offline), compute Saliency, IntegratedGradients, SmoothGrad, CAFO, CASO and "
            "SmoothCASO maps, score Saliency and CASO with pixel perturbation and DiffROAR "
            "(no retraining), and "
            "write attributions.png, metrics.png, report.md and results.json to --out."
        ),
    )
    return add_arguments(parser)


def run_from_args(
    args: argparse.Namespace, parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> int:
    """Run the demo for parsed arguments; usage errors go through ``parser.error`` (exit 2)."""
    try:
        resolve_device(args.device)
    except ValueError as err:
        parser.error(str(err))
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    shown = " ".join(sys.argv[1:] if argv is None else argv)
    try:
        res = run_demo(
            args.out,
            mode=args.mode,
            seed=args.seed,
            device=args.device,
            progress=args.progress,
            command=f"{parser.prog} {shown}".strip(),
            threads=args.threads,
        )
    except MissingExtraError as err:
        parser.error(str(err))
    names = ", ".join(p.name for p in res.files.values())
    print(f"test accuracy {res.accuracy:.3f}; runtime {res.numbers['run']['seconds']:.1f} s")
    print(f"Results written to {res.out_dir.resolve()} ({names}); start with report.md")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m captum_ext.demo``.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status (0 on success).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_from_args(args, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
