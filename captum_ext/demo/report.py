"""The demo's Markdown report, formatted from the numbers written to ``results.json`` (pure)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .config import SPARSITY_WINDOW

__all__ = ["format_report"]


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _header(numbers: dict[str, Any]) -> list[str]:
    cfg, data, model, run = numbers["config"], numbers["data"], numbers["model"], numbers["run"]
    return [
        "# captum_ext demo report\n",
        f"`{run['command']}` -- mode `{cfg['mode']}`, seed {run['seed']}, device `{run['device']}`, "
        f"{run['torch_threads']} torch thread(s), torch {run['torch']}, captum {run['captum']}, "
        f"{run['platform']}. Pipeline runtime {run['seconds']:.1f} s wall, {run['cpu_seconds']:.1f} s "
        f"CPU of this process (after Python start-up and imports).\n",
        "## Data and model\n",
        f"BlockMNIST built offline from scikit-learn's real handwritten digits (classes "
        f"{', '.join(str(c) for c in data['classes'])}): 56x28 images, the digit in a 28x28 signal "
        f"block placed top or bottom at random, a fixed patch in the other (null) block. "
        f"{data['n_train']} training and {data['n_test']} test images.\n",
        f"A small ReLU CNN ({model['parameters']} parameters, {cfg['epochs']} epochs of Adam) reaches "
        f"**test accuracy {_fmt(model['test_accuracy'])}** (train accuracy "
        f"{_fmt(model['train_accuracy'])}).\n",
    ]


def _caso_section(numbers: dict[str, Any]) -> list[str]:
    cmp = numbers["caso_vs_cafo"]
    c1, paper = cmp["c1"], cmp["paper_c1"]
    k1, kp = f"{c1:g}", f"{paper:g}"
    top = cmp["top_eigenvalue"]
    out = ["## What CASO adds: CASO against CAFO\n"]
    out.append(
        f"![CASO vs CAFO]({numbers['files']['comparison_figure']})\n\n"
        f"With lambda1 = 0 both have closed forms: CAFO is the loss gradient g (scaled), CASO solves "
        f"(2 lambda2 I - H) Delta = g with the input Hessian H of the loss and lambda2 = L/2 + c1 "
        f"(L its top eigenvalue). The Hessian can reweight directions by at most (L + 2 c1) / (2 c1), "
        f"and g is parallel to H's top eigenvector when the prediction is confident (the paper's "
        f"Theorem 4), so the two differ only for unsure predictions with L not small against c1. "
        f"The paper's c1 = {kp} was chosen for ImageNet; on these {cmp['n_images']} test images L has "
        f"median {_fmt(top['median'], 2)} and maximum {_fmt(top['max'], 2)}, so c1 = {kp} caps the "
        f"reweighting at {_fmt(top['max_gain_paper'], 2)} and CASO = CAFO up to cos "
        f"{_fmt(cmp['min_cos'][kp])} on every image. The demo uses c1 = {k1} (the paper: lambda2 must "
        f"not 'overpower' H), a cap of {_fmt(top['max_gain'], 1)}: the smallest cosine is then "
        f"{_fmt(cmp['min_cos'][k1])}.\n"
    )
    out.append(
        "Distance ||CASO/|CASO| - CAFO/|CAFO||| (the paper's Fig. 1 measure; 0 = the same map, "
        "1.414 = orthogonal maps) per confidence band, median and maximum over the images in it:\n"
    )
    rows = [
        [
            f"{b['low']:g}-{b['high']:g}",
            str(b["n"]),
            _fmt(b["median"]),
            _fmt(b["max"]),
            _fmt(bp["median"]),
            _fmt(bp["max"]),
        ]
        for b, bp in zip(cmp["bands"][k1], cmp["bands"][kp], strict=True)
    ]
    header = ["confidence", "images", f"c1 = {k1}: median", "max", f"c1 = {kp}: median", "max"]
    out.append(_table(header, rows) + "\n")
    return out


def _maps_section(numbers: dict[str, Any]) -> list[str]:
    cfg, maps = numbers["config"], numbers["attributions"]
    n_show = cfg["n_show"]
    hit, n_scored = maps["sparsity_window_hit"], maps["n_scored"]
    missed = "" if hit == n_scored else "; the others take the candidate closest to it"
    out = ["## Attribution maps\n"]
    out.append(
        f"![attribution maps]({numbers['files']['figure']})\n\n"
        f"The figure shows the {n_show - 1} of the {numbers['caso_vs_cafo']['n_images']} test images "
        f"where CASO and CAFO differ most (smallest cosine) and, for contrast, the most confident one; the "
        f"table below lists {cfg['n_explain']} images picked the same way. Every map explains the "
        "true class and is normalised for display as in SmoothGrad (absolute value, 99th-percentile "
        "cap, scaled to [0, 1]); the orange box is the signal block. All attributions are computed in "
        "float64 on a copy of the model: for predictions within about 1e-7 of certainty, float32 "
        "cross-entropy gradients are rounding noise. *sparse CASO* and *SmoothCASO* choose lambda1 "
        f"per image by the CASO paper's sparsity rule: of the candidates 1e-5, 1e-4, ... (refined by "
        f"halving), the one with the best objective among those whose share of zero features lies "
        f"in [{SPARSITY_WINDOW[0]}, {SPARSITY_WINDOW[1]}) (the window was hit on {hit} of {n_scored} "
        f"scored images{missed}); SmoothGrad and SmoothCASO "
        f"average {cfg['nt_samples']} noise samples of standard deviation {cfg['nt_stdev']} in the "
        f"figure, {cfg['metric_nt_samples']} for the scores. CASO's Hessian path: "
        f"`{maps['hessian']}`; sparse CASO's certified solver (tolerance {cfg['caso_tol']:g}) converged "
        f"on {maps['sparse_caso_converged']} of {maps['sparse_caso_solves']} images, with a certified "
        f"relative error of at most {maps['sparse_caso_max_error_bound']:.1e}.\n"
    )
    rows = [
        [name, _fmt(1000 * m["cpu_per_image"], 1), _fmt(m["zeros"]), _fmt(m["leakage"])]
        for name, m in maps["methods"].items()
    ]
    out.append(
        f"Per method, over the {n_scored} scored images: CPU time "
        "per image (one thread), share of exactly-zero features, and *leakage*, the mean share of "
        "|attribution| outside the signal block (0 is ideal; Shah et al.).\n\n"
        + _table(["method", "CPU ms / image", "zeros", "leakage"], rows)
        + "\n"
    )
    rows = [
        [
            str(i + 1) + (" (shown)" if i < n_show else ""),
            str(r["digit"]),
            str(r["prediction"]),
            _fmt(r["confidence"]),
            str(r["hessian_rank"]),
            _fmt(r["top_eigenvalue"], 2),
            _fmt(r["cos_caso_cafo"]),
            _fmt(r["dist_caso_cafo"]),
            _fmt(r["cos_caso_cafo_paper_c1"]),
            f"{r['caso_lambda1']:.1e}",
            _fmt(r["caso_zeros"]),
        ]
        for i, r in enumerate(maps["per_image"])
    ]
    header = [
        "#",
        "digit",
        "predicted",
        "confidence",
        "Hessian rank",
        "L",
        "cos(CASO, CAFO)",
        "distance",
        f"cos at c1 = {numbers['caso_vs_cafo']['paper_c1']:g}",
        "sparse CASO lambda1",
        "zeros",
    ]
    out.append(_table(header, rows) + "\n")
    return out


def _metrics_section(numbers: dict[str, Any]) -> list[str]:
    pix, roar, maps = numbers["pixel_perturbation"], numbers["diff_roar"], numbers["attributions"]
    out = ["## Scores of every method\n"]
    out.append(
        f"![metrics]({numbers['files']['metrics_figure']})\n\n"
        f"Every method of the figure, and a random ranking as the chance level, on the same "
        f"{pix['n_images']} test images.\n\n"
        f"*Pixel perturbation* (Srinivas & Fleuret): the least relevant pixels are replaced by the "
        f"image's mean value and the model's **accuracy** is measured; a good map keeps the pixels "
        f"the model needs (higher is better; unperturbed accuracy {_fmt(pix['baseline_accuracy'])}).\n\n"
        f"*DiffROAR without retraining* (Shah et al.'s top-k minus bottom-k test in its App. C "
        f"variant): keep only the top-k, or only the bottom-k, pixels of each image by |attribution|, "
        f"set the rest to 0, and measure the accuracy of the explained model itself; DiffROAR = "
        f"accuracy(top-k) - accuracy(bottom-k), larger is better, a random map gives about 0. The "
        f"retrained variant is not used: with ten classes, the pattern of kept pixels on BlockMNIST's "
        f"constant null patch encodes the class a map was computed for, so a model retrained on "
        f"masked images reads the label from the mask: `captum_ext.metrics.diff_roar`'s mask-only "
        f"control (the binary kept-pixel masks alone, retrained) predicts the labels far above chance "
        f"and warns of label leakage. `diff_roar(...)` retrains by default; use that where the "
        f"ranking does not depend on the explained class.\n\n"
        f"Sparse maps rank only their non-zero pixels; the exact zeros (at least "
        f"{SPARSITY_WINDOW[0]:.0%} of a sparse CASO map) are ranked among themselves at random, as "
        f"ties are. Mean over the fractions:\n"
    )
    rows = [
        [
            name,
            _fmt(_mean(pix["accuracy"][name])),
            _fmt(_mean(roar["methods"][name]["diff"])),
            _fmt(maps["methods"][name]["leakage"]) if name in maps["methods"] else "n/a",
        ]
        for name in pix["accuracy"]
    ]
    out.append(_table(["method", "pixel perturbation", "DiffROAR", "leakage"], rows) + "\n")
    methods = list(maps["methods"])
    pix_best = max(methods, key=lambda m: _mean(pix["accuracy"][m]))
    roar_best = max(methods, key=lambda m: _mean(roar["methods"][m]["diff"]))
    leak_best = min(methods, key=lambda m: maps["methods"][m]["leakage"])
    out.append(
        f"Highest mean pixel perturbation: {pix_best} ({_fmt(_mean(pix['accuracy'][pix_best]))}); highest "
        f"mean DiffROAR: {roar_best} ({_fmt(_mean(roar['methods'][roar_best]['diff']))}); lowest leakage: "
        f"{leak_best} ({_fmt(maps['methods'][leak_best]['leakage'])}). An accuracy on "
        f"{pix['n_images']} images has a binomial standard error of at most "
        f"{_fmt(0.5 / math.sqrt(pix['n_images']))}.\n"
    )
    names = list(pix["accuracy"])
    out.append("Pixel perturbation, accuracy per fraction of pixels removed:\n")
    rows = [
        [f"{100 * f:.0f}%"] + [_fmt(pix["accuracy"][n][j]) for n in names]
        for j, f in enumerate(pix["fractions"])
    ]
    out.append(_table(["removed"] + names, rows) + "\n")
    out.append("DiffROAR per fraction k of pixels kept (top-k and bottom-k accuracies in `results.json`):\n")
    rows = [
        [f"{100 * f:g}%"] + [_fmt(roar["methods"][n]["diff"][j]) for n in names]
        for j, f in enumerate(roar["fractions"])
    ]
    out.append(_table(["k"] + names, rows) + "\n")
    return out


def format_report(numbers: dict[str, Any]) -> str:
    """The Markdown report of one run.

    Every number is printed with three decimals (``f"{x:.3f}"``), eigenvalues with two, times
    with one.

    Args:
        numbers: the dictionary :func:`~captum_ext.demo.run_demo` writes to ``results.json``.

    Returns:
        Markdown text.

    Examples:
        >>> import tempfile
        >>> from captum_ext.demo import DemoConfig, run_demo
        >>> tiny = DemoConfig(mode="custom", n_train=60, epochs=1, n_explain=2, n_show=2, ig_steps=2,
        ...                   nt_samples=1, metric_nt_samples=1, n_metric_test=4,
        ...                   pixel_fractions=(0.5,), roar_fractions=(0.5,))
        >>> with tempfile.TemporaryDirectory() as out:
        ...     numbers = run_demo(out, config=tiny, progress=False, verbose=False, device="cpu").numbers
        >>> format_report(numbers).splitlines()[0]
        '# captum_ext demo report'
    """
    out = _header(numbers) + _caso_section(numbers) + _maps_section(numbers) + _metrics_section(numbers)
    out.append("## Runtime per step\n")
    rows = [[k, _fmt(v["wall"], 1), _fmt(v["cpu"], 1)] for k, v in numbers["timings"].items()]
    out.append(_table(["step", "wall s", "CPU s"], rows) + "\n")
    out.append(
        "\nAll numbers are in `results.json`. Reproduce with the command above (same seed, mode, "
        "device and thread count give the same numbers).\n"
    )
    return "\n".join(out)
