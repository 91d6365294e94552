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


def _curves(ax: Any, fractions: list[float], curves: dict[str, list[float]], start: float | None) -> None:
    """One line per method; CASO's family solid, the others dashed, the random map grey."""
    xs = ([0.0] if start is not None else []) + [100 * f for f in fractions]
    for k, (name, ys) in enumerate(curves.items()):
        ys = ([start] if start is not None else []) + list(ys)
        mean = sum(ys[1:] if start is not None else ys) / len(fractions)
        style: dict[str, Any] = {"marker": "o", "ms": 3, "lw": 1.2, "label": f"{name} ({mean:.3f})"}
        if name == "random":
            style.update(color="0.5", ls=":")
        elif "CASO" not in name:
            style.update(ls="--", color=f"C{k}")
        else:
            style.update(lw=2.0, color=f"C{k}")
        ax.plot(xs, ys, **style)
    ax.grid(alpha=0.3)


def metrics_figure(path: Path, pix: dict[str, Any], roar: dict[str, Any], nt_samples: int) -> Path:
    """Pixel perturbation and DiffROAR (no retraining) curves of every scored map."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    _curves(ax1, pix["fractions"], pix["accuracy"], pix["baseline_accuracy"])
    ax1.set_xlabel("least relevant pixels removed (%)")
    ax1.set_ylabel("accuracy")
    ax1.set_title("pixel perturbation: accuracy kept (higher is better)", fontsize=10)
    ax1.legend(
        fontsize=7, title="method (mean)", title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1)
    )
    diffs = {k: v["diff"] for k, v in roar["methods"].items()}
    _curves(ax2, roar["fractions"], diffs, None)
    ax2.axhline(0.0, color="0.3", lw=0.8)
    ax2.set_xlabel("pixels kept k (%)")
    ax2.set_ylabel("accuracy(top-k) - accuracy(bottom-k)")
    ax2.set_title("DiffROAR without retraining (higher is better)", fontsize=10)
    ax2.legend(
        fontsize=7, title="method (mean)", title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1)
    )
    fig.suptitle(
        f"Every method of the figure and a random ranking, scored on {pix['n_images']} test images "
        f"(SmoothGrad and SmoothCASO with {nt_samples} noise samples); the legends give the mean",
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
