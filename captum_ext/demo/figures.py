"""The demo's figures, drawn from tensors and the JSON-friendly numbers (matplotlib, no pyplot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

__all__ = ["COLUMN_TITLES", "attribution_figure", "caso_vs_cafo_figure", "metrics_figure"]

# figure column titles of the methods (two lines each)
COLUMN_TITLES = {
    "Saliency": "Saliency\n",
    "IntegratedGradients": "Integrated-\nGradients",
    "SmoothGrad": "SmoothGrad\n",
    "CAFO": "CAFO\n(λ1 = 0)",
    "CASO": "CASO\n(λ1 = 0)",
    "sparse CASO": "sparse CASO\n(λ1 by sparsity rule)",
    "SmoothCASO": "SmoothCASO\n(sparse)",
}


def attribution_figure(
    path: Path,
    images: Tensor,
    masks: Tensor,
    maps: dict[str, Tensor],
    per_image: list[dict[str, Any]],
    leak: dict[str, list[float]],
    c1: float,
) -> Path:
    """Images (rows) by methods (columns); the CASO column states its distance to CAFO per image.

    The last row is the confident contrast image (see :func:`~captum_ext.demo.compare.select_examples`).
    """
    from ..visualization import plot_attribution_grid

    n = images.shape[0]
    notes: dict[str, list[str]] = {COLUMN_TITLES[k]: [f"leak {v:.2f}" for v in leak[k]] for k in maps}
    notes[COLUMN_TITLES["CASO"]] = [
        f"vs CAFO: cos {r['cos_caso_cafo']:.2f}\ndist {r['dist_caso_cafo']:.2f}, leak {leak['CASO'][i]:.2f}"
        for i, r in enumerate(per_image)
    ]
    notes[COLUMN_TITLES["sparse CASO"]] = [
        f"λ1 {r['caso_lambda1']:.0e}, zeros {r['caso_zeros']:.3f}\nleak {leak['sparse CASO'][i]:.2f}"
        for i, r in enumerate(per_image)
    ]
    rows = [
        f"{'most confident' if r['confident'] else 'low confidence'}\n"
        f"digit {r['digit']}, pred {r['prediction']}, p={r['confidence']:.2f}"
        for r in per_image
    ]
    unsure = [r["cos_caso_cafo"] for r in per_image if not r["confident"]]
    sure = [r["cos_caso_cafo"] for r in per_image if r["confident"]]
    fig = plot_attribution_grid(
        images,
        {COLUMN_TITLES[k]: v for k, v in maps.items()},
        row_titles=rows,
        outlines=masks,
        annotations=notes,
        title=(
            f"CASO (λ1 = 0, c1 = {c1:g}) differs from CAFO where the CNN is unsure "
            f"(cos {min(unsure):.2f}-{max(unsure):.2f}) and matches it where it is sure "
            f"(cos {min(sure):.3f}).\nBlockMNIST from real digits, {n} test images; the box is the "
            "signal block, 'leak' the share of |attribution| outside it"
        ),
    )
    fig.savefig(path, dpi=90)
    return path


def metrics_figure(path: Path, comparison: Any, nt_samples: int) -> Path:
    """Every method's mean score with its paired-bootstrap interval, one panel per metric."""
    from matplotlib.figure import Figure

    n_k, n_m = len(comparison.metrics), len(comparison.methods)
    fig = Figure(figsize=(4.0 * n_k + 1.5, 0.4 * n_m + 1.8), layout="constrained")
    axes = list(fig.subplots(1, n_k, squeeze=False)[0])
    comparison.plot(ax=axes)
    fig.suptitle(
        f"Every method of the figure and a random ranking on {comparison.scores.shape[-1]} test images "
        f"(SmoothGrad and SmoothCASO with {nt_samples} noise samples): mean and "
        f"{100 * comparison.confidence:g} % bootstrap interval",
        fontsize=10,
    )
    fig.savefig(path, dpi=90)
    return path


def caso_vs_cafo_figure(path: Path, comparison: dict[str, Any]) -> Path:
    """The CASO paper's Fig. 1 on the demo's test images: CASO-CAFO distance against confidence."""
    from matplotlib.figure import Figure

    conf = comparison["confidence"]
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    for c1, style in ((comparison["c1"], dict(c="C3", s=12)), (comparison["paper_c1"], dict(c="0.4", s=8))):
        ax.scatter(conf, comparison["dist"][f"{c1:g}"], label=f"c1 = {c1:g}", alpha=0.7, **style)
    for k, (i, p) in enumerate(zip(comparison["shown"], comparison["shown_confidence"], strict=True)):
        ax.annotate(str(k + 1), (p, comparison["dist"][f"{comparison['c1']:g}"][i]), fontsize=8)
    ax.set_xlabel("confidence (top softmax probability)")
    ax.set_ylabel("||CASO/|CASO| - CAFO/|CAFO|||")
    ax.set_title(
        f"CASO vs CAFO (λ1 = 0) on {len(conf)} test images; numbers: the figure's rows",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=90)
    return path
