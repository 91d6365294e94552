"""The demo's Markdown report, formatted from the numbers written to ``results.json`` (pure)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["format_report"]


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


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
    window = maps["sparsity_window"]
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
        f"in [{window[0]}, {window[1]}) (the window was hit on {hit} of {n_scored} "
        f"scored images{missed}). {_near_empty(maps)} SmoothGrad and SmoothCASO "
        f"average {cfg['nt_samples']} noise samples of standard deviation {cfg['nt_stdev']} in the "
        f"figure, {cfg['metric_nt_samples']} for the scores. CASO's Hessian path: "
        f"`{maps['hessian']}`; sparse CASO's certified solver (tolerance {cfg['caso_tol']:g}) converged "
        f"on {maps['sparse_caso_converged']} of {maps['sparse_caso_solves']} images, with a certified "
        f"relative error of at most {maps['sparse_caso_max_error_bound']:.1e}.\n"
    )
    leak = numbers["scores"]["mean"]["leakage"]
    rows = [
        [name, _fmt(1000 * m["cpu_per_image"], 1), _fmt(m["zeros"]), _fmt(leak.get(name))]
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
            str(round((1 - r["caso_zeros"]) * maps["units"])),
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
        "pixels kept",
    ]
    out.append(_table(header, rows) + "\n")
    return out


def _near_empty(maps: dict[str, Any]) -> str:
    """Why a sparse CASO map is near-empty (under 1 % of its features kept), if any is."""
    kept, units = maps["sparse_caso_kept"], maps["units"]
    text = (
        f"Sparse CASO keeps {_pct(kept['min'])}-{_pct(kept['max'])} of the features (median "
        f"{_pct(kept['median'])}, at least {round(kept['min'] * units)} of {units} pixels)"
    )
    n = maps["sparse_caso_near_empty"]
    if n == 0:
        return text + "; no map is near-empty (under 1 % kept)."
    why = (
        "the window's upper edge allows it"
        if maps["sparse_caso_near_empty_in_window"]
        else "the search missed the window and kept the candidate closest to it"
    )
    return text + f"; {n} map(s) keep under 1 %: {why}."


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _metrics_section(numbers: dict[str, Any]) -> list[str]:
    sc = numbers["scores"]
    out = ["## Scores of every method\n"]
    out.append(
        f"![metrics]({numbers['files']['metrics_figure']})\n\n"
        f"Every method of the figure, and a random ranking as the chance level, scored per image on "
        f"the same {sc['n_images']} test images by `captum_ext.compare_attributions`; each mean comes "
        f"with a 95 % paired bootstrap interval ({sc['n_boot']} resamples of the images, seed "
        f"{sc['seed']}), and a method's rank is 1 + the number of methods *significantly* better "
        f"(paired interval of the difference excluding 0). All three metrics rank pixels by "
        f"|attribution|, so they do not depend on a method's sign.\n\n"
        f"*pixel perturbation* (Srinivas & Fleuret): per image, the share of the removal levels "
        f"{', '.join(f'{100 * f:g}%' for f in sc['pixel_fractions'])} at which the prediction stays "
        f"right after the least relevant pixels are replaced by the image's mean (the mean over the "
        f"images is the mean accuracy over the levels; higher is better).\n\n"
        f"*DiffROAR* without retraining (Shah et al., App. C): per image, hit with only the top-k "
        f"pixels kept minus hit with only the bottom-k kept (the rest set to 0), averaged over k = "
        f"{', '.join(f'{100 * f:g}%' for f in sc['roar_fractions'])}; the mean is DiffROAR's "
        f"accuracy(top-k) - accuracy(bottom-k) averaged over k (higher is better, a random map gives "
        f"about 0). The retrained variant is not used: with ten classes, the pattern of kept pixels "
        f"on BlockMNIST's constant null patch encodes the class a map was computed for, so a model "
        f"retrained on masked images reads the label from the mask (`captum_ext.metrics.diff_roar`'s "
        f"mask-only control predicts the labels far above chance and warns of label leakage).\n\n"
        f"*leakage* (Shah et al.): the share of |attribution| outside the signal block (lower is "
        f"better; 0.5 is a uniform map's).\n\n"
        f"Sparse maps rank only their non-zero pixels; their exact zeros are ranked among themselves "
        f"at random, as ties are.\n\n"
    )
    out.append(sc["markdown"])
    return out


def _takeaway(numbers: dict[str, Any]) -> list[str]:
    """What CASO adds, in this run's own numbers: where it differs from CAFO, what the sparse maps
    keep, what it costs, and which differences the scores support."""
    cmp, maps, sc = numbers["caso_vs_cafo"], numbers["attributions"], numbers["scores"]
    k1, kp = f"{cmp['c1']:g}", f"{cmp['paper_c1']:g}"
    bands = [b for b in cmp["bands"][k1] if b["n"] > 0]
    low, high = bands[0], bands[-1]
    cpu = {name: 1000 * m["cpu_per_image"] for name, m in maps["methods"].items()}
    mean = sc["mean"]

    def diff(metric: str, a: str, b: str) -> str:
        for better, worse, d, lo, hi, sig in sc["pairs"][metric]:
            if {better, worse} == {a, b}:
                sign = 1.0 if better == a else -1.0
                lo, hi = sorted((sign * lo, sign * hi))
                verdict = "significant" if sig else "not significant"
                return f"{sign * d:+.3f} [{lo:.3f}, {hi:.3f}], {verdict}"
        return "n/a"

    def verdict(metric: str, a: str, b: str) -> str:
        for better, worse, _, _, _, sig in sc["pairs"][metric]:
            if {better, worse} == {a, b}:
                if not sig:
                    return f"no different on {metric}"
                return f"{'better' if better == a else 'worse'} on {metric}"
        return f"not compared on {metric}"

    best = "; ".join(
        f"{metric}: {', '.join(name for name, rank in sc['ranks'][metric].items() if rank == 1)}"
        for metric in sc["metrics"]
    )
    kept = maps["sparse_caso_kept"]
    lines = [
        "## Takeaway\n",
        f"- **Where CASO differs from CAFO.** Only on unsure predictions: the distance between the "
        f"unit-norm maps (0 = same map, 1.414 = orthogonal) has median {_fmt(low['median'])} on the "
        f"{low['n']} images with confidence {low['low']:g}-{low['high']:g} and "
        f"{_fmt(high['median'])} on the {high['n']} with confidence {high['low']:g}-{high['high']:g} "
        f"(c1 = {k1}; smallest cosine {_fmt(cmp['min_cos'][k1])}). With the paper's c1 = {kp} CASO "
        f"equals CAFO up to cosine {_fmt(cmp['min_cos'][kp])} here: on small images c1 must be small "
        f"against the Hessian's top eigenvalue (median {_fmt(cmp['top_eigenvalue']['median'], 2)}) "
        f"for the second-order term to matter.",
        f"- **What the sparse maps keep.** Sparse CASO keeps {_pct(kept['median'])} of the pixels "
        f"(median; {_pct(kept['min'])}-{_pct(kept['max'])}); against dense CASO, leakage "
        f"{_fmt(mean['leakage'].get('sparse CASO'))} vs {_fmt(mean['leakage'].get('CASO'))} "
        f"(difference {diff('leakage', 'sparse CASO', 'CASO')}), pixel perturbation "
        f"{diff('pixel perturbation', 'sparse CASO', 'CASO')}, DiffROAR "
        f"{diff('DiffROAR', 'sparse CASO', 'CASO')}: sparse CASO is "
        f"{', '.join(verdict(m, 'sparse CASO', 'CASO') for m in sc['metrics'])} (significance: the "
        f"paired 95 % interval excludes 0).",
        f"- **What it costs.** CPU per image (one thread): CASO {_fmt(cpu.get('CASO'), 1)} ms, "
        f"sparse CASO {_fmt(cpu.get('sparse CASO'), 1)} ms, SmoothCASO {_fmt(cpu.get('SmoothCASO'), 1)} ms, "
        f"against CAFO {_fmt(cpu.get('CAFO'), 1)} ms, Saliency {_fmt(cpu.get('Saliency'), 1)} ms and "
        f"IntegratedGradients {_fmt(cpu.get('IntegratedGradients'), 1)} ms.",
        f"- **What the scores support.** Rank 1 (no method significantly better): {best}. CASO "
        f"against CAFO: pixel perturbation {diff('pixel perturbation', 'CASO', 'CAFO')}, DiffROAR "
        f"{diff('DiffROAR', 'CASO', 'CAFO')}.",
        "- **Sign.** Every number here compares magnitudes (|attribution|, distances of unit-norm maps "
        "that flip together), so it holds under either sign convention of CASO and CAFO.\n",
    ]
    return lines


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
    out = _header(numbers)
    out[1:1] = _takeaway(numbers)  # right under the title
    out += _caso_section(numbers) + _maps_section(numbers) + _metrics_section(numbers)
    out.append("## Runtime per step\n")
    rows = [[k, _fmt(v["wall"], 1), _fmt(v["cpu"], 1)] for k, v in numbers["timings"].items()]
    out.append(_table(["step", "wall s", "CPU s"], rows) + "\n")
    out.append(
        "\nAll numbers are in `results.json`. Reproduce with the command above (same seed, mode, "
        "device and thread count give the same numbers).\n"
    )
    return "\n".join(out)
