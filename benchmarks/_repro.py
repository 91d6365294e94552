"""Shared plumbing of the ``benchmarks/reproduce_*.py`` paper reproductions.

Small helpers only: a command-line parser with the common options, a plain-SGD training loop that
honours the regularizer-wrapper protocol (the authors' recipes of Shah et al. and Bötte & Pfeiffer use
SGD, while :func:`captum_ext.training.fit` is Adam-only), loss input-gradients, a few pure tensor
statistics (Gini index, rank of the signal coordinate), the small ReLU CNN used on offline digits, and
the report writer (JSON with the machine description, PNG next to it).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks._machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TABLE_SEEDS = (0, 1, 2, 3, 4)  # the seeds of REPRODUCTIONS.md's numbers
HIDDEN_SEEDS = (5, 6, 7, 8, 9)  # the seeds its verdicts are re-checked on


# --------------------------------------------------------------------------------------------------
# command line and reports


def make_parser(doc: str) -> argparse.ArgumentParser:
    """Parser with the options every reproduction shares (``--quick``, ``--seed``, ``--threads``...)."""
    p = argparse.ArgumentParser(
        description=doc.strip().splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(doc.strip().splitlines()[1:]),
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny smoke run (seconds); writes *_quick.json/.png, not for reporting",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(TABLE_SEEDS),
        help="the seeds, e.g. --seeds 0 1 2 3 4 (the default, the table's); another list writes "
        "<stem>_seeds<first>-<last>.json, e.g. the hidden seeds 5 6 7 8 9",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=min(2, torch.get_num_threads()),
        help="torch intra-op threads (default: up to 2)",
    )
    p.add_argument("--progress", action="store_true", help="show tqdm progress bars")
    p.add_argument("--out", type=Path, default=RESULTS, help="output folder")
    return p


def claim(
    claim_id: str,
    statement: str,
    paper: str,
    ours: str,
    agrees: bool | str,
    note: str = "",
    rule: str = "",
) -> dict[str, Any]:
    """One row of the paper-vs-ours table (``agrees``: True, False or ``"partly"``; ``rule``: the
    verdict rule of the row, written in the script before the run and quoted in the JSON)."""
    row = {"id": claim_id, "claim": statement, "paper": paper, "ours": ours, "agrees": agrees, "note": note}
    if rule:
        row["rule"] = rule
    return row


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
        return float(f"{obj:.6g}")  # 6 significant digits keep the reports small and readable
    return obj


def report_name(stem: str, seeds: Sequence[int], quick: bool = False) -> str:
    """File stem of a run: ``stem`` on the table's seeds, ``stem_seeds5-9`` on others, ``_quick`` added."""
    name = stem if tuple(seeds) == TABLE_SEEDS else f"{stem}_seeds{seeds[0]}-{seeds[-1]}"
    return name + ("_quick" if quick else "")


def write_report(
    report: dict[str, Any], stem: str, out: Path, quick: bool, seeds: Sequence[int] = TABLE_SEEDS
) -> Path:
    """Write ``<out>/<report_name>.json`` (machine description added) and return the JSON path."""
    out.mkdir(parents=True, exist_ok=True)
    name = report_name(stem, seeds, quick)
    report = {"benchmark": stem, "quick": quick, "machine": describe_machine("cpu"), **report}
    path = out / f"{name}.json"
    path.write_text(json.dumps(_jsonable(report), indent=2))
    return path


def png_path(stem: str, out: Path, quick: bool, seeds: Sequence[int] = TABLE_SEEDS) -> Path:
    """Where the figure of a report goes (next to its JSON)."""
    return out / (report_name(stem, seeds, quick) + ".png")


def print_claims(claims: Sequence[dict[str, Any]]) -> None:
    """Print the paper-vs-ours table to stdout."""
    for c in claims:
        mark = {True: "yes", False: "NO"}.get(c["agrees"], str(c["agrees"]))
        print(f"[{mark:>6}] {c['id']}: paper {c['paper']} | ours {c['ours']}")


class Stopwatch:
    """Wall-clock timer: ``with Stopwatch() as t: ...; t.seconds``."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def summary(values: Sequence[float]) -> dict[str, float]:
    """Mean and (sample) standard deviation of a list of numbers."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    return {"mean": float(t.mean()), "std": float(t.std()) if t.numel() > 1 else 0.0}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value); NaNs and Nones are dropped."""
    t = torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float64)
    t = t[~torch.isnan(t)]
    if t.numel() == 0:
        return math.nan, math.nan
    return float(t.mean()), float(t.std()) if t.numel() > 1 else 0.0


def pm(values: Sequence[float], spec: str = ".2f") -> str:
    """``"mean ± std"`` of per-seed values, e.g. ``pm([0.1, 0.3]) == "0.20 ± 0.14"``."""
    m, s = mean_std(values)
    return f"{format(m, spec)} ± {format(s, spec)}"


def seed_list(args: argparse.Namespace) -> list[int]:
    """The seeds of a run (``--seeds``; the first two with ``--quick``)."""
    seeds = [int(s) for s in args.seeds]
    return seeds[:2] if getattr(args, "quick", False) else seeds


# --------------------------------------------------------------------------------------------------
# paired statistics and the verdict rule

VERDICT_RULE = (
    "Each comparison is paired: the same seed gives both sides the same data, initial weights and "
    "random draws, and the effect is the mean over seeds of the per-seed difference (expected sign "
    "positive), with a two-sided 95 % Student-t interval over >= 5 seeds. yes: the interval excludes 0 "
    "on the expected side and the mean effect is at least `small` times the effect size the paper "
    "implies; partly: the interval excludes 0 but the effect is smaller than that (whatever the paper's "
    "scale), or the interval contains 0 while the mean is at least that large on the expected side "
    "(only where the paper implies an effect size); "
    "no: otherwise (interval on the wrong side, or no effect of the paper's size). A compound claim is "
    "yes when every part is yes, no when every part is no, partly otherwise. A verdict that differs on "
    "the hidden seeds 5-9 is partly at best."
)


@dataclass(frozen=True)
class Rule:
    """The verdict rule of one paired comparison, fixed in the script before the run.

    Args:
        what: what the difference is, e.g. ``"AUC(SM) - AUC(baseline)"`` (expected positive).
        paper_effect: the effect size the paper implies for that difference (positive), in the same
            units; ``None`` when the paper implies none (then any effect whose interval excludes 0 is
            enough for *yes*).
        small: an effect below ``small * paper_effect`` counts as "far smaller than the paper's".
    """

    what: str
    paper_effect: float | None = None
    small: float = 0.25

    def __post_init__(self) -> None:
        if self.paper_effect is not None and not self.paper_effect > 0:
            raise ValueError(f"paper_effect must be positive (orient `what`), got {self.paper_effect}")
        if not 0 <= self.small <= 1:
            raise ValueError(f"small must lie in [0, 1], got {self.small}")

    def text(self) -> str:
        """The rule as quoted in the JSON."""
        size = (
            f"paper's implied effect {self.paper_effect:.3g}, 'far smaller' below {self.small:g}x that"
            if self.paper_effect is not None
            else "the paper implies no effect size: any effect whose interval excludes 0"
        )
        return f"{self.what} > 0; {size}"


def t_quantile_975(df: int) -> float:
    """Two-sided 95 % quantile of Student's t with ``df`` degrees of freedom (scipy)."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def paired(a: Sequence[float], b: Sequence[float] | float, seeds: Sequence[int]) -> dict[str, Any]:
    """Paired difference ``a - b`` over seeds: means, mean difference and its 95 % t interval.

    ``b`` may be a number (a one-sample comparison with a threshold). Non-finite pairs are dropped
    and counted in ``dropped``.

    Examples:
        >>> p = paired([1.0, 2.0, 3.0, 4.0, 5.0], [0.5, 1.0, 2.5, 3.0, 4.5], [0, 1, 2, 3, 4])
        >>> round(p["diff"], 3), p["n"], p["lo"] > 0
        (0.7, 5, True)
    """
    bb = [b] * len(a) if isinstance(b, (int, float)) else list(b)
    if len(bb) != len(a) or len(a) != len(seeds):
        raise ValueError(f"paired needs one value per seed: {len(a)}, {len(bb)}, {len(seeds)}")

    def ok(v: Any) -> bool:
        return v is not None and math.isfinite(float(v))

    keep = [(float(x), float(y), s) for x, y, s in zip(a, bb, seeds, strict=True) if ok(x) and ok(y)]
    d = [x - y for x, y, _ in keep]
    n = len(d)
    mean = sum(d) / n if n else math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1)) if n > 1 else math.nan
    half = t_quantile_975(n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
    return {
        "n": n,
        "seeds": [s for _, _, s in keep],
        "dropped": len(a) - n,
        "mean_a": sum(x for x, _, _ in keep) / n if n else math.nan,
        "mean_b": sum(y for _, y, _ in keep) / n if n else math.nan,
        "diff": mean,
        "lo": mean - half,
        "hi": mean + half,
        "per_seed": d,
        "positive": sum(v > 0 for v in d),
    }


def paired_verdict(stats: dict[str, Any], rule: Rule) -> bool | str:
    """``True`` / ``"partly"`` / ``False`` for one paired comparison under :data:`VERDICT_RULE`."""
    if stats["n"] < 2 or not math.isfinite(stats["lo"]):
        return False
    big = rule.paper_effect is None or stats["diff"] >= rule.small * rule.paper_effect
    if stats["lo"] > 0:
        return True if big else "partly"
    if stats["diff"] > 0 and big and rule.paper_effect is not None:
        return "partly"
    return False


def combine(verdicts: Sequence[bool | str]) -> bool | str:
    """A compound claim: yes if every part is yes, no if every part is no, partly otherwise."""
    if all(v is True for v in verdicts):
        return True
    if all(v is False for v in verdicts):
        return False
    return "partly"


def fmt_paired(stats: dict[str, Any], spec: str = ".3f", label: str = "") -> str:
    """``"label a vs b: diff [lo, hi]"`` e.g. ``"0.930 vs 0.893: +0.037 [+0.021, +0.053]"``."""
    head = f"{label} " if label else ""
    return (
        f"{head}{format(stats['mean_a'], spec)} vs {format(stats['mean_b'], spec)}: "
        f"{format(stats['diff'], '+' + spec)} [{format(stats['lo'], '+' + spec)}, "
        f"{format(stats['hi'], '+' + spec)}] ({stats['positive']}/{stats['n']} seeds > 0)"
    )


def paired_claim(
    claim_id: str,
    statement: str,
    paper: str,
    parts: Sequence[tuple[str, Sequence[float], Sequence[float] | float, Rule]],
    seeds: Sequence[int],
    *,
    spec: str = ".3f",
    extra: str = "",
    note: str = "",
) -> dict[str, Any]:
    """A table row made of paired comparisons ``(label, a, b, rule)``: verdict by :func:`combine`.

    ``ours`` lists each comparison as ``label a vs b: diff [95 % interval]``; the JSON row keeps the
    statistics (``paired``) and the rules (``rule``).
    """
    stats = [paired(a, b, seeds) for _, a, b, _ in parts]
    verdicts = [paired_verdict(s, r) for s, (_, _, _, r) in zip(stats, parts, strict=True)]
    ours = "; ".join(fmt_paired(s, spec, lab) for s, (lab, _, _, _) in zip(stats, parts, strict=True))
    row = claim(
        claim_id,
        statement,
        paper,
        ours + (f"; {extra}" if extra else ""),
        combine(verdicts),
        note,
        rule=" | ".join(f"{lab}: {r.text()}" for lab, _, _, r in parts),
    )
    row["paired"] = [
        {"label": lab, **s, "verdict": v} for (lab, _, _, _), s, v in zip(parts, stats, verdicts, strict=True)
    ]
    return row


# --------------------------------------------------------------------------------------------------
# models and training


def small_cnn(num_classes: int = 10) -> nn.Sequential:
    """A small ReLU CNN for 1x28x28 digits (piecewise linear, so CASO's closed form is exact)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, stride=2, padding=2),
        nn.ReLU(),  # 28 -> 14
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),  # 14 -> 7
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


def one_hidden_mlp(d: int, width: int, num_classes: int = 2) -> nn.Sequential:
    """``Linear(d, width) -> ReLU -> Linear(width, classes)``: the toy-set model of Shah et al."""
    return nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Linear(width, num_classes))


def sgd_train(
    trainee: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    on_step: Callable[[int], None] | None = None,
    progress: bool = False,
    desc: str = "sgd",
) -> nn.Module:
    """Plain SGD (no momentum, no weight decay) on ``trainee.loss(x, y)`` or cross-entropy.

    ``trainee`` is a plain classifier or a regularizer wrapper (anything with a ``loss(x, y)``
    method); mini-batches are drawn without replacement within each pass, from a generator seeded
    with ``seed``. ``on_step(step)`` is called before each step (e.g. to ramp an attack's radius).
    Returns ``trainee`` in eval mode.
    """
    from tqdm.auto import tqdm

    params = [p for p in trainee.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    own_loss = getattr(trainee, "loss", None)
    n = inputs.shape[0]
    perm = torch.randperm(n, generator=gen)
    pos = 0
    trainee.train()
    with torch.enable_grad():
        for step in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
            if pos + batch_size > n:
                perm, pos = torch.randperm(n, generator=gen), 0
            idx = perm[pos : pos + batch_size]
            pos += batch_size
            if on_step is not None:
                on_step(step)
            xb, yb = inputs[idx], labels[idx]
            loss = own_loss(xb, yb) if callable(own_loss) else F.cross_entropy(trainee(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    return trainee.eval()


def loss_input_gradient(model: nn.Module, inputs: Tensor, labels: Tensor) -> Tensor:
    """Gradient of the summed cross-entropy w.r.t. the inputs (the authors' ``get_input_gradients``).

    Uses :func:`torch.autograd.grad` with respect to a copy of the inputs only: the model's
    parameters, ``.grad`` and mode are untouched.
    """
    with torch.enable_grad():
        x = inputs.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(model(x), labels, reduction="sum")
        (g,) = torch.autograd.grad(loss, x)
    return g


@torch.no_grad()
def accuracy(model: nn.Module, inputs: Tensor, labels: Tensor) -> float:
    """Plain accuracy (the model is assumed to be in eval mode already)."""
    return float((model(inputs).argmax(1) == labels).float().mean())


# --------------------------------------------------------------------------------------------------
# pure statistics


def gini(values: Tensor) -> Tensor:
    """Gini index of each row of non-negative ``values`` ``(N, ...)`` (Hurley & Rickard, 2009).

    0 for a constant row, ``1 - 1/P`` for a row with a single non-zero entry; rows are flattened.
    A scale-invariant sparsity measure: ``1 - 2 * sum_k (a_(k) / |a|_1) * (P - k + 1/2) / P`` with
    ``a_(k)`` sorted ascending. Rows summing to zero give ``nan``.
    """
    a = values.detach().flatten(1).to(torch.float64).sort(dim=1).values
    n = a.shape[1]
    k = torch.arange(1, n + 1, dtype=torch.float64, device=a.device)
    total = a.sum(1, keepdim=True)
    share = a / total
    out = 1.0 - 2.0 * (share * ((n - k + 0.5) / n)).sum(1)
    return torch.where(total[:, 0] > 0, out, torch.full_like(out, float("nan")))


def near_zero_fraction(values: Tensor, rel: float = 0.01) -> Tensor:
    """Fraction of entries of each row whose magnitude is below ``rel`` times the row's maximum."""
    a = values.detach().abs().flatten(1)
    return (a < rel * a.amax(1, keepdim=True)).to(torch.float64).mean(1)


def signal_rank_fractions(grad_abs: Tensor, signal: Tensor) -> dict[str, float]:
    """For rows of ``|gradient|`` ``(N, d)`` and the signal coordinate ``(N,)`` of each row:

    ``top``: fraction where the signal coordinate has the largest magnitude (``argmax``, as in the
    authors' code); ``bottom``: where it has the smallest (``argmin``); ``share``: mean share
    ``|g_j| / sum_i |g_i|`` of the signal coordinate (``1/d`` for equal magnitudes).
    """
    j = signal.long().view(-1, 1)
    total = grad_abs.sum(1).clamp_min(1e-300)
    return {
        "top": float((grad_abs.argmax(1) == j[:, 0]).double().mean()),
        "bottom": float((grad_abs.argmin(1) == j[:, 0]).double().mean()),
        "share": float((grad_abs.gather(1, j)[:, 0] / total).double().mean()),
    }


def column_auc(grad_abs: Tensor, signal: Tensor) -> float:
    """Mean over coordinates ``j`` of the ROC AUC of ``|g_j|`` for "``j`` is this point's signal".

    For each column ``j`` of ``|gradient|`` ``(N, d)``, the probability that a point whose signal
    coordinate is ``j`` has a larger ``|g_j|`` than a point whose signal lies elsewhere (ties count
    one half): 1 when the signal stands out in every column of the heat map, 0.5 for no
    information. Columns with no positive or no negative point are skipped.
    """
    a = grad_abs.detach().double()
    aucs = []
    for j in range(a.shape[1]):
        pos, neg = a[signal == j, j], a[signal != j, j]
        if pos.numel() == 0 or neg.numel() == 0:
            continue
        greater = (pos[:, None] > neg[None, :]).double().mean()
        ties = (pos[:, None] == neg[None, :]).double().mean()
        aucs.append(float(greater + 0.5 * ties))
    return sum(aucs) / len(aucs) if aucs else math.nan


def row_flatness(grad_abs: Tensor) -> float:
    """Mean over rows of ``min_i |g_i| / max_i |g_i|``: 1 when every coordinate of a row has the same
    size after the per-row normalisation of Bötte & Pfeiffer's heat maps, 0 when one entry vanishes."""
    a = grad_abs.detach().double()
    return float((a.amin(1) / a.amax(1).clamp_min(1e-300)).mean())


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman rank correlation of two 1-d tensors (average ranks for ties, via scipy)."""
    from scipy.stats import spearmanr

    return float(spearmanr(x.double().numpy(), y.double().numpy()).statistic)


# --------------------------------------------------------------------------------------------------
# markdown rows for REPRODUCTIONS.md

_RANK = {False: 0, "no": 0, "partly": 1, True: 2, "yes": 2}
_NAME = {0: "no", 1: "partly", 2: "yes"}


def final_verdict(table: bool | str, hidden: bool | str | None) -> str:
    """The verdict of a row from the table's seeds and the hidden seeds: the same on both, or, when
    they differ, "partly" at best (yes/no -> partly, yes/partly -> partly, partly/no -> no)."""
    a = _RANK[table]
    if hidden is None:
        return _NAME[a]
    b = _RANK[hidden]
    return _NAME[a] if a == b else _NAME[1 if {a, b} == {0, 2} else min(a, b)]


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_rows(
    report: dict[str, Any], key: str = "claims", label: str = "", hidden: dict[str, Any] | None = None
) -> list[str]:
    """One row ``| label | where | claim | ours | verdict 0-4 | verdict 5-9 | verdict |`` per claim of a
    report; ``hidden`` is the same script's report on the hidden seeds (its verdicts only)."""
    other = {c["id"]: c["agrees"] for c in (hidden or {}).get(key, [])}
    rows = []
    for c in report.get(key, []):
        v04 = _NAME[_RANK[c["agrees"]]]
        v59 = other.get(c["id"])
        fin = final_verdict(c["agrees"], v59)
        cells = [label, c["paper"], c["claim"], c["ours"], v04, "—" if v59 is None else _NAME[_RANK[v59]]]
        cells.append(f"**{fin}**" if fin == "no" else fin)
        rows.append("| " + " | ".join(_cell(x) for x in cells) + " |")
    return rows


def count(reports: Sequence[tuple[dict[str, Any], dict[str, Any] | None]]) -> dict[str, int]:
    """Counts of final verdicts over the ``claims`` of (table report, hidden report) pairs."""
    out = {"yes": 0, "partly": 0, "no": 0}
    for rep, hid in reports:
        other = {c["id"]: c["agrees"] for c in (hid or {}).get("claims", [])}
        for c in rep.get("claims", []):
            out[final_verdict(c["agrees"], other.get(c["id"]))] += 1
    return out


if __name__ == "__main__":  # python -m benchmarks._repro benchmarks/results/reproduce_x.json ... -> rows
    import sys

    pairs = []
    for arg in sys.argv[1:]:
        path = Path(arg)
        rep = json.loads(path.read_text())
        hid_path = path.with_name(f"{path.stem}_seeds{HIDDEN_SEEDS[0]}-{HIDDEN_SEEDS[-1]}.json")
        hid = json.loads(hid_path.read_text()) if hid_path.exists() else None
        pairs.append((rep, hid))
        name = rep["benchmark"].removeprefix("reproduce_").capitalize()
        print("\n".join(markdown_rows(rep, "claims", name, hid)))
        print("\n".join(markdown_rows(rep, "consistency_checks", name, hid)))
    print(count(pairs))
