"""Reproduce Shah, Jain, Netrapalli (NeurIPS 2021) at small scale: feature leakage and DiffROAR.

(a) The toy set x = y e_j (d = 10, j uniform over all 10 coordinates, as in the authors' notebook
    ``02_fig_in_synthetic_data.ipynb``): a one-hidden-layer ReLU MLP (2 logits) trained with plain SGD
    (lr 0.1, batch 250) as in the authors' code, standard and l_inf-PGD adversarially trained
    (8 steps of 0.25 eps, no random start, inputs clamped to [-1, 1]). For the loss input-gradient of
    every test point we report the fraction where the signal coordinate j has the largest |gradient|
    (argmax) and the smallest (argmin). The authors' notebook prints 0.041 / 0.562 (standard) and
    1.000 / 0.000 (robust). The same standard MLP trained with Adam (captum_ext.training.fit) is
    reported too: the result depends on the optimiser.
(b) BlockMNIST (offline digits 0/1, 1x56x28): a one-hidden-layer MLP, standard and l2-PGD robust
    (eps = 2, the paper's robust ResNet budget), and a standard MLP on BlockMNIST-Top; feature
    leakage of Saliency (|logit gradient|) = share of attribution mass outside the signal block, and
    the share of the top-10% pixels outside it (captum_ext.metrics.feature_leakage).
(c) DiffROAR (captum_ext.metrics.diff_roar) on the offline 10-class digits with a two-hidden-layer
    MLP (the paper's MLP experiments are on SVHN / Fashion-MNIST): Saliency of a standard and of an
    l2-PGD robust model, and a random attribution as the calibration baseline; k in {5, 10, 20, 40}%.

Scaled down (so that the whole script runs in a few minutes on 2 CPU cores): toy width 256 instead of
25,000, 2,000 instead of 10,000 training points, 1,000 SGD steps instead of 500 epochs (20,000 steps);
robust toy model with eps = 0.35 (the paper's Sec. 6 value; the notebook uses 0.45 for 500 epochs,
which our small, short run does not fit) reached through a linear eps ramp over the first half of
training; BlockMNIST from scikit-learn's 8x8 digits upsampled to 28x28; DiffROAR with one run per seed and 4
levels instead of 5 runs and 10 levels. (d) Sec. 6: the toy set of eq. (2) (j among the first 5 of 10
coordinates, the others noise) for a linear model, a standard and an l_inf-robust MLP. Every number is
paired over the seeds of --seeds (default 0-4). Writes benchmarks/results/reproduce_shah.json and .png.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from captum.attr import Saliency
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.append(str(ROOT))

from benchmarks._repro import (  # noqa: E402
    VERDICT_RULE,
    Rule,
    Stopwatch,
    accuracy,
    claim,
    loss_input_gradient,
    make_parser,
    mean_std,
    one_hidden_mlp,
    paired_claim,
    pm,
    png_path,
    print_claims,
    seed_list,
    sgd_train,
    signal_rank_fractions,
    summary,
    write_report,
)
from captum_ext.datasets import BlockMNIST, SignedBasisToy, SklearnDigits  # noqa: E402
from captum_ext.metrics import diff_roar, feature_leakage  # noqa: E402
from captum_ext.regularizers import PGDAdversarialTraining  # noqa: E402
from captum_ext.training import MLPFactory, Trainer, evaluate, fit  # noqa: E402

TOY_VARIANTS = ("standard_sgd", "standard_adam", "robust_sgd")
ROAR_VARIANTS = ("standard", "robust_l2", "robust_l2_eps2", "linear", "random")
SEC6_VARIANTS = ("standard_sgd", "linear_sgd", "robust_sgd")
AUTHORS_TOY = {"standard": {"top": 0.041, "bottom": 0.562}, "robust": {"top": 1.0, "bottom": 0.0}}


def saliency(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """|d logit_y / d x| via captum's Saliency (the model is not changed)."""
    return Saliency(model).attribute(x.clone().requires_grad_(True), target=y).detach()


# --------------------------------------------------------------------------------------------------
# (a) toy set


def toy_stats(g: Tensor, signal: Tensor, signal_dims: int) -> dict[str, float]:
    """Rank statistics of ``|gradient|`` plus the Sec. 6 quantities: share of the |gradient| mass on
    the noise coordinates ``>= signal_dims`` and the ratio of the signal coordinate's |gradient| to
    the mean |gradient| of the other task-relevant coordinates (Theorem 1: 1, i.e. feature leakage)."""
    stats = signal_rank_fractions(g, signal)
    a = g.double()
    total = a.sum(1).clamp_min(1e-300)
    stats["noise_share"] = float((a[:, signal_dims:].sum(1) / total).mean())
    rel = a[:, :signal_dims]
    sig = rel.gather(1, signal.long().view(-1, 1))[:, 0]
    others = (rel.sum(1) - sig) / max(signal_dims - 1, 1)
    stats["signal_vs_relevant"] = float((sig / others.clamp_min(1e-300)).median())
    # input-agnostic gradients (linear models): spread across points of the normalised |gradient|
    prof = a / total[:, None]
    stats["across_point_std"] = float(prof.std(0).mean())
    return stats


def run_toy(args, signal_dims: int = 10, variants: tuple[str, ...] = TOY_VARIANTS) -> dict:
    """The toy set ``x = y e_j`` with ``j`` uniform over the first ``signal_dims`` of 10 coordinates
    (10: the authors' notebook; 5: the paper's Sec. 6 / eq. (2) with d = 10)."""
    d, width = 10, args.toy_width
    n_train, steps = (500, 150) if args.quick else (args.toy_train, args.toy_steps)
    seeds = seed_list(args)
    out: dict = {"runs": {}, "maps": {}}
    eps = args.toy_eps
    test0 = None
    for variant in variants:
        rows = []
        for s in seeds:
            x_tr, y_tr, _ = SignedBasisToy(n_train, d=d, signal_dims=signal_dims, seed=s).tensors()
            test = SignedBasisToy(1000, d=d, signal_dims=signal_dims, seed=1000 + s)
            x_te, y_te, _ = test.tensors()
            test0 = test0 or test
            torch.manual_seed(s)
            net = nn.Linear(d, 2) if variant == "linear_sgd" else one_hidden_mlp(d, width, 2)
            with Stopwatch() as t:
                if variant in ("standard_sgd", "linear_sgd"):
                    sgd_train(
                        net,
                        x_tr,
                        y_tr,
                        steps=steps,
                        lr=0.1,
                        batch_size=250,
                        seed=s,
                        progress=args.progress,
                        desc=variant,
                    )
                elif variant == "standard_adam":
                    fit(
                        net,
                        (x_tr, y_tr),
                        epochs=max(1, steps * 250 // n_train),
                        lr=1e-3,
                        batch_size=250,
                        seed=s,
                        progress=args.progress,
                    )
                else:
                    adv = PGDAdversarialTraining(
                        net,
                        norm="inf",
                        eps=0.0,
                        steps=8,
                        step_size=0.0,
                        random_start=False,
                        clamp=(-1.0, 1.0),
                    )

                    def ramp(step: int, adv: PGDAdversarialTraining = adv) -> None:
                        adv.eps = eps * min(1.0, 2.0 * (step + 1) / steps)
                        adv.step_size = 0.25 * adv.eps

                    sgd_train(
                        adv,
                        x_tr,
                        y_tr,
                        steps=steps,
                        lr=0.1,
                        batch_size=250,
                        seed=s,
                        on_step=ramp,
                        progress=args.progress,
                        desc=variant,
                    )
            g = loss_input_gradient(net, x_te, y_te).abs()
            stats = toy_stats(g, test.signal_block, signal_dims)
            stats.update(test_accuracy=accuracy(net, x_te, y_te), seconds=t.seconds, seed=s)
            rows.append(stats)
            if s == seeds[0]:
                out["maps"][variant] = g[:30]
            print(
                f"[toy d*={signal_dims}] {variant} seed {s}: acc {stats['test_accuracy']:.3f}, "
                f"top {stats['top']:.3f}, bottom {stats['bottom']:.3f}, noise {stats['noise_share']:.3f}, "
                f"signal/relevant {stats['signal_vs_relevant']:.2f} ({t.seconds:.0f}s)",
                flush=True,
            )
        out["runs"][variant] = {
            "per_seed": rows,
            **{k: summary([r[k] for r in rows]) for k in rows[0] if k != "seed"},
        }
    out["signal"] = test0.signal_block[:30]
    out["config"] = {
        "d": d,
        "signal_dims": signal_dims,
        "width": width,
        "n_train": n_train,
        "n_test": 1000,
        "sgd": f"lr 0.1, batch 250, {steps} steps",
        "adam": "fit(): Adam lr 1e-3, "
        f"batch 250, {max(1, steps * 250 // n_train)} epochs (same number of steps)",
        "robust": f"l_inf PGD eps {eps} (linear ramp over the first half), 8 steps of "
        "0.25*eps, no random start, clamp [-1, 1]",
        "gradient": "loss input-gradient (summed CE), as in the authors' code",
        "eps": eps,
        "seeds": seeds,
        "data_seeds": "train seed s, test seed 1000 + s",
    }
    return out


# --------------------------------------------------------------------------------------------------
# (b) BlockMNIST leakage


def run_blockmnist(args) -> dict:
    n_train, n_test, epochs = (300, 80, 2) if args.quick else (1000, 400, 5)
    seeds = seed_list(args)
    factory = MLPFactory((1, 56, 28), hidden=(256,), num_classes=2)
    out: dict = {"runs": {}, "examples": {}}
    for variant, top, robust in (
        ("standard", False, False),
        ("robust_l2", False, True),
        ("standard_top", True, False),
    ):
        rows = []
        for s in seeds:
            tr = BlockMNIST("train", top=top, n=n_train, seed=s)
            te = BlockMNIST("test", top=top, n=n_test, seed=s)
            x_tr, y_tr, _ = tr.tensors()
            x_te, y_te, m_te = te.tensors()
            torch.manual_seed(s)
            net = factory()
            trainee = (
                PGDAdversarialTraining(net, norm=2, eps=args.block_eps, steps=7, clamp=(0.0, 1.0))
                if robust
                else net
            )
            with Stopwatch() as t:
                fit(
                    trainee,
                    (x_tr, y_tr),
                    epochs=epochs,
                    lr=1e-3,
                    batch_size=64,
                    seed=s,
                    progress=args.progress,
                )
            attr = saliency(net, x_te, y_te)
            rows.append(
                {
                    "seed": s,
                    "test_accuracy": evaluate(net, (x_te, y_te)),
                    "seconds": t.seconds,
                    "leakage_mass": feature_leakage(x_te, attr, m_te).mean(),
                    "leakage_top10": feature_leakage(x_te, attr, m_te, top_k=0.1).mean(),
                }
            )
            if s == seeds[0]:
                out["examples"][variant] = {"images": x_te[:3, 0], "saliency": attr[:3, 0]}
            print(
                f"[block] {variant} seed {s}: acc {rows[-1]['test_accuracy']:.3f}, leakage "
                f"{rows[-1]['leakage_mass']:.3f} (mass), {rows[-1]['leakage_top10']:.3f} "
                f"(top-10%) ({t.seconds:.0f}s)",
                flush=True,
            )
        out["runs"][variant] = {
            "per_seed": rows,
            **{k: summary([r[k] for r in rows]) for k in ("test_accuracy", "leakage_mass", "leakage_top10")},
        }
    out["config"] = {
        "data": "BlockMNIST / BlockMNIST-Top from offline sklearn digits 0 and 1",
        "n_train": n_train,
        "n_test": n_test,
        "model": "MLP 1568-256-2",
        "training": f"Adam lr 1e-3, batch 64, {epochs} epochs",
        "robust": f"l2 PGD eps {args.block_eps}, 7 steps, random start, clamp [0,1]",
        "attribution": "captum Saliency (|logit gradient| of the label)",
        "seeds": seeds,
    }
    return out


# --------------------------------------------------------------------------------------------------
# (c) DiffROAR


def run_diffroar(args) -> dict:
    """DiffROAR per seed: the explained model, the random attribution and the retrainings all use
    seed ``s`` (one retraining per cell), so the spread over seeds covers all three."""
    src = SklearnDigits()
    x_tr, y_tr = src.load("train")
    x_te, y_te = src.load("test")
    x_tr, x_te = x_tr[:, None], x_te[:, None]
    fractions = (0.05, 0.2) if args.quick else (0.05, 0.1, 0.2, 0.4)
    seeds = seed_list(args)
    epochs = 2 if args.quick else 10
    if args.quick:
        x_tr, y_tr, x_te, y_te = x_tr[:300], y_tr[:300], x_te[:100], y_te[:100]
    factory = MLPFactory((1, 28, 28), hidden=(128, 128), num_classes=10)
    trainer = Trainer(epochs=epochs)
    out: dict = {"curves": {}}
    for variant in ROAR_VARIANTS:
        per_seed = []
        for seed in seeds:
            torch.manual_seed(seed)
            net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)) if variant == "linear" else factory()
            if variant.startswith("robust_l2"):
                eps = 2 * args.roar_eps if variant == "robust_l2_eps2" else args.roar_eps
                fit(
                    PGDAdversarialTraining(net, norm=2, eps=eps, steps=7, clamp=(0.0, 1.0)),
                    (x_tr, y_tr),
                    epochs=epochs,
                    seed=seed,
                    progress=args.progress,
                )
            else:
                fit(net, (x_tr, y_tr), epochs=epochs, seed=seed, progress=args.progress)
            if variant == "random":
                gen = torch.Generator().manual_seed(seed)
                attr = (torch.rand(x_tr.shape, generator=gen), torch.rand(x_te.shape, generator=gen))
            else:
                attr = (saliency(net, x_tr, y_tr), saliency(net, x_te, y_te))
            with Stopwatch() as t:
                res = diff_roar(
                    None,
                    (x_tr, y_tr),
                    (x_te, y_te),
                    attr,
                    model_factory=factory,
                    fractions=fractions,
                    seeds=(seed,),
                    trainer=trainer,
                    mask_control=False,
                    show_progress=args.progress,
                )
            no_retrain = None
            if variant in ("standard", "robust_l2"):  # App. C: DiffROAR without retraining
                no_retrain = diff_roar(
                    net, (x_tr, y_tr), (x_te, y_te), attr, fractions=fractions, retrain=False
                ).diff.tolist()
            per_seed.append(
                {
                    "seed": seed,
                    "diff_no_retrain": no_retrain,
                    "diff": res.diff.tolist(),
                    "top": res.top.tolist(),
                    "bottom": res.bottom.tolist(),
                    "model_test_accuracy": evaluate(net, (x_te, y_te)),
                    "seconds": t.seconds,
                }
            )
            print(
                f"[diffroar] {variant} seed {seed}: DiffROAR {[round(v, 3) for v in res.diff.tolist()]}, "
                f"top {[round(v, 3) for v in res.top.tolist()]} at k={list(fractions)} ({t.seconds:.0f}s)",
                flush=True,
            )
        curve = {"per_seed": per_seed}
        for key in ("diff", "top", "bottom"):
            cols = list(zip(*(r[key] for r in per_seed), strict=True))
            curve[key] = [mean_std(c)[0] for c in cols]
            curve[key + "_std"] = [mean_std(c)[1] for c in cols]
            curve[key + "_per_seed"] = [list(c) for c in cols]
        curve["model_test_accuracy"] = summary([r["model_test_accuracy"] for r in per_seed])
        out["curves"][variant] = curve
    out["config"] = {
        "data": "sklearn digits 28x28, 10 classes",
        "model": "MLP 784-128-128-10 (explained and retrained)",
        "training": f"Adam lr 1e-3, batch 64, {epochs} epochs (also per retraining)",
        "robust": f"l2 PGD eps {args.roar_eps} (robust_l2_eps2: {2 * args.roar_eps}), 7 steps, random "
        "start, clamp [0,1]",
        "linear": "Flatten + Linear(784, 10), input-agnostic gradients up to the label",
        "no_retrain": "diff_roar(retrain=False) for standard and robust_l2 (App. C)",
        "fractions": list(fractions),
        "seeds": list(seeds),
        "per_seed": "explained model, random attribution and the retraining of each cell share the seed",
        "ranking": "every pixel on its own by |attribution|, masked pixels set to 0",
    }
    return out


# --------------------------------------------------------------------------------------------------
# report


def _ps(run: dict, key: str) -> list[float]:
    return [r[key] for r in run["per_seed"]]


def make_claims(toy: dict, sec6: dict, block: dict, roar: dict) -> tuple[list[dict], list[dict]]:
    claims, checks = [], []
    std, adam, rob = (toy["runs"][k] for k in ("standard_sgd", "standard_adam", "robust_sgd"))
    # the notebook's toy (j over all 10 coordinates) is the authors' code, not a claim of the paper,
    # and repeats Sec. 6: listed as checks, not counted
    checks.append(
        claim(
            "shah_toy_standard",
            "Toy x = y e_j (j over all 10 coordinates): the loss gradients of a standard one-hidden-layer "
            "MLP do not single out the signal coordinate (Pr[largest] / Pr[smallest |gradient|])",
            "authors' notebook 02_fig_in_synthetic_data: 0.041 / 0.562 (not in the paper; not counted)",
            f"{pm(_ps(std, 'top'), '.3f')} / {pm(_ps(std, 'bottom'), '.3f')} (SGD, width "
            f"{toy['config']['width']}); Adam: {pm(_ps(adam, 'top'), '.3f')} / "
            f"{pm(_ps(adam, 'bottom'), '.3f')}",
            "yes" if std["top"]["mean"] < 0.2 and std["bottom"]["mean"] > 0.3 else "no",
            "yes: Pr[largest] < 0.2 and Pr[smallest] > 0.3 (the notebook's numbers are one run).",
        )
    )
    checks.append(
        claim(
            "shah_toy_robust",
            "Toy: the loss gradients of an l_inf-robust MLP pick out the signal coordinate",
            "authors' notebook: 1.000 / 0.000 (eps 0.45; not in the paper; not counted)",
            f"{pm(_ps(rob, 'top'), '.3f')} / {pm(_ps(rob, 'bottom'), '.3f')} (eps "
            f"{toy['config']['eps']:g}, test accuracy {pm(_ps(rob, 'test_accuracy'), '.3f')})",
            "yes" if rob["top"]["mean"] > 0.95 and rob["bottom"]["mean"] < 0.05 else "no",
        )
    )
    s6s, s6l, s6r = (sec6["runs"][k] for k in ("standard_sgd", "linear_sgd", "robust_sgd"))
    seeds = [r["seed"] for r in s6s["per_seed"]]
    claims.append(
        paired_claim(
            "shah_sec6",
            "Sec. 6, eq. (2) with d = 10, d̃ = 1, η = 0 (5 task-relevant, 5 noise coordinates): linear "
            "models have input-agnostic gradients that suppress the noise coordinates; standard MLPs "
            "suppress noise but weight all five task-relevant coordinates about equally (feature "
            "leakage, Thm. 1); an l_inf-robust MLP (ε = 0.35) highlights the instance's own coordinate",
            "Fig. 5 and Sec. 6 text (width 10,000; figure only)",
            [
                (
                    "linear: 0.01 vs across-point spread of the normalised |gradient|",
                    [0.01] * len(seeds),
                    _ps(s6l, "across_point_std"),
                    Rule("0.01 - spread (input-agnostic)"),
                ),
                (
                    "linear: 0.5 (equal weights) vs noise share",
                    [0.5] * len(seeds),
                    _ps(s6l, "noise_share"),
                    Rule("0.5 - noise share", 0.4),
                ),
                (
                    "standard: 0.5 vs noise share",
                    [0.5] * len(seeds),
                    _ps(s6s, "noise_share"),
                    Rule("0.5 - noise share", 0.4),
                ),
                (
                    "standard: 0.25 vs |signal / other task-relevant − 1| (Thm. 1: 0)",
                    [0.25] * len(seeds),
                    [abs(v - 1) for v in _ps(s6s, "signal_vs_relevant")],
                    Rule("0.25 - |ratio - 1|"),
                ),
                (
                    "Pr[signal largest] robust vs standard",
                    _ps(s6r, "top"),
                    _ps(s6s, "top"),
                    Rule("Pr_top(robust) - Pr_top(standard)", 0.8),
                ),
            ],
            seeds,
            extra=f"robust test accuracy {pm(_ps(s6r, 'test_accuracy'), '.3f')}",
            note="'suppress the noise coordinates' read as a noise share far below the 0.5 of equal "
            "weights (implied effect 0.4); 'about equally' as a ratio within 25 % of 1",
        )
    )
    b = block["runs"]
    bseeds = [r["seed"] for r in b["standard"]["per_seed"]]
    claims.append(
        paired_claim(
            "shah_blockmnist_leakage",
            "BlockMNIST: standard models' gradients also highlight the null block (feature leakage); "
            "robust models' suppress it",
            "Sec. 5, Fig. 1 (qualitative)",
            [
                (
                    f"{name} outside the signal block, standard vs robust",
                    _ps(b["standard"], key),
                    _ps(b["robust_l2"], key),
                    Rule(f"{key}(standard) - {key}(robust)"),
                )
                for key, name in (("leakage_mass", "|gradient| share"), ("leakage_top10", "top-10% pixels"))
            ],
            bseeds,
        )
    )
    claims.append(
        paired_claim(
            "shah_blockmnist_top",
            "BlockMNIST-Top (signal always on top): standard models' gradients no longer leak",
            "Sec. 5, Fig. 4 (qualitative)",
            [
                (
                    f"{name} outside the signal block, BlockMNIST vs BlockMNIST-Top",
                    _ps(b["standard"], key),
                    _ps(b["standard_top"], key),
                    Rule(f"{key}(BlockMNIST) - {key}(Top)"),
                )
                for key, name in (("leakage_mass", "|gradient| share"), ("leakage_top10", "top-10% pixels"))
            ],
            bseeds,
        )
    )
    c = roar["curves"]
    fr = roar["config"]["fractions"]
    rseeds = [r["seed"] for r in c["standard"]["per_seed"]]

    def at(variant: str, i: int, key: str = "diff") -> list[float]:
        return [r[key][i] for r in c[variant]["per_seed"]]

    claims.append(
        paired_claim(
            "shah_diffroar_robust",
            "DiffROAR: robust MLPs' input gradients beat standard ones at every k < 100%",
            "Sec. 4, Fig. 3(a),(b) (+10-30% for SVHN MLPs at k = 10%)",
            [
                (
                    f"k = {100 * f:g}%, robust vs standard",
                    at("robust_l2", i),
                    at("standard", i),
                    Rule("DiffROAR gap", 0.1),
                )
                for i, f in enumerate(fr)
            ],
            rseeds,
            spec=".2f",
            note="implied effect: the paper's 10 % at k = 10 %, used at every k",
        )
    )
    claims.append(
        paired_claim(
            "shah_diffroar_eps",
            "A larger PGD budget ε amplifies DiffROAR across k",
            "Sec. 4 ('increasing ε amplifies the magnitude of DiffROAR across k'; figure only)",
            [
                (
                    f"k = {100 * f:g}%, ε = 2 vs ε = 1",
                    at("robust_l2_eps2", i),
                    at("robust_l2", i),
                    Rule("DiffROAR gain"),
                )
                for i, f in enumerate(fr)
            ],
            rseeds,
            spec=".3f",
        )
    )
    claims.append(
        paired_claim(
            "shah_diffroar_standard_baselines",
            "Standard (Fashion-MNIST) MLPs fare no better than random attributions and the input-agnostic "
            "attributions of linear models for most k",
            "Sec. 4, Fig. 3(b)",
            [
                (
                    f"k = {100 * f:g}%, 0.05 vs |standard − {base}|",
                    [0.05] * len(rseeds),
                    [abs(x - y) for x, y in zip(at("standard", i), at(base, i), strict=True)],
                    Rule(f"0.05 - |DiffROAR(standard) - DiffROAR({base})| (equal within 0.05)"),
                )
                for base in ("random", "linear")
                for i, f in enumerate(fr)
            ],
            rseeds,
            spec=".3f",
            extra="DiffROAR standard / random / linear: "
            + "; ".join(
                f"k = {100 * f:g}%: {pm(at('standard', i))} / {pm(at('random', i))} / {pm(at('linear', i))}"
                for i, f in enumerate(fr)
            ),
            note="'no better' read as equal within 0.05 DiffROAR; at large k the digits' top-k accuracy "
            "saturates near 1 for every attribution, so only bottom-k moves the curve",
        )
    )
    claims.append(
        paired_claim(
            "shah_diffroar_no_retrain",
            "App. C: DiffROAR without retraining gives qualitatively similar results (robust above "
            "standard), less consistently at small k",
            "Sec. 4 'Additional results' / App. C (figure only)",
            [
                (
                    f"k = {100 * f:g}%, robust vs standard, no retraining",
                    at("robust_l2", i, "diff_no_retrain"),
                    at("standard", i, "diff_no_retrain"),
                    Rule("DiffROAR gap without retraining"),
                )
                for i, f in enumerate(fr)
            ],
            rseeds,
            spec=".3f",
        )
    )
    return claims, checks


def plot(toy: dict, block: dict, roar: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(15, 8.2))
    gs = fig.add_gridspec(2, 4)
    sig = toy["signal"]
    for i, (variant, title) in enumerate(
        (("standard_sgd", "standard (SGD)"), ("robust_sgd", "l∞-robust (SGD)"))
    ):
        ax = fig.add_subplot(gs[0, i])
        g = toy["maps"][variant]
        lo, hi = g.amin(1, keepdim=True), g.amax(1, keepdim=True)
        g = (g - lo) / (hi - lo).clamp_min(1e-30)
        ax.imshow(g.numpy(), cmap="magma", aspect="auto", vmin=0, vmax=1)
        ax.scatter(
            sig.numpy(),
            range(len(sig)),
            marker="o",
            s=14,
            facecolors="none",
            edgecolors="cyan",
            linewidths=0.8,
        )
        ax.set_title(f"(a) toy, {title}:\n|loss grad|, each row min-max scaled", fontsize="medium")
        ax.set(xlabel="coordinate", ylabel="test point (circle: signal j)")
    ax = fig.add_subplot(gs[0, 2])
    names = ("standard_sgd", "standard_adam", "robust_sgd")
    xs = range(len(names))
    width = 0.2
    for off, key, color in ((-1.5, "top", "tab:blue"), (-0.5, "bottom", "tab:orange")):
        vals = [toy["runs"][n][key]["mean"] for n in names]
        errs = [toy["runs"][n][key]["std"] for n in names]
        ax.bar([x + off * width for x in xs], vals, width, yerr=errs, color=color, label=f"ours: {key}")
    for off, key, color in ((0.5, "top", "tab:blue"), (1.5, "bottom", "tab:orange")):
        vals = [AUTHORS_TOY["standard" if "standard" in n else "robust"][key] for n in names]
        ax.bar(
            [x + off * width for x in xs],
            vals,
            width,
            color=color,
            alpha=0.35,
            hatch="//",
            label=f"authors: {key}",
        )
    ax.set_xticks(list(xs), ["standard\nSGD", "standard\nAdam", "robust\nSGD"])
    ax.set(
        ylim=(0, 1.05),
        ylabel="Pr[signal coord. is argmax / argmin |grad|]",
        title="toy: signal rank, authors' code vs ours",
    )
    ax.legend(fontsize="x-small", ncol=2)

    ax = fig.add_subplot(gs[0, 3])
    c = roar["curves"]
    for key, label in (("standard", "standard"), ("robust_l2", "l2-robust"), ("random", "random")):
        ks = [100 * f for f in roar["config"]["fractions"]]
        ax.errorbar(ks, c[key]["diff"], yerr=c[key]["diff_std"], marker="o", capsize=3, label=label)
        ax.plot(ks, c[key]["top"], ls=":", lw=0.8, color=ax.lines[-1].get_color())
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(
        xlabel="unmasked fraction k (%)",
        ylabel="DiffROAR (top-k − bottom-k accuracy)",
        title="(c) DiffROAR ± std over seeds (dotted: top-k accuracy)",
    )
    ax.legend(fontsize="small")

    ex = block["examples"]
    inner = gs[1, 0:3].subgridspec(1, 9, wspace=0.05)
    col = 0
    for variant, label in (
        ("standard", "standard"),
        ("robust_l2", "l2-robust"),
        ("standard_top", "standard, Top"),
    ):
        for k in range(3):
            ax = fig.add_subplot(inner[0, col])
            img, sal = ex[variant]["images"][k], ex[variant]["saliency"][k]
            ax.imshow(img.numpy(), cmap="gray", alpha=0.35)
            ax.imshow(sal.numpy(), cmap="hot", alpha=0.75)
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 1:
                ax.set_title(f"(b) BlockMNIST Saliency: {label}", fontsize="small")
            col += 1
    ax = fig.add_subplot(gs[1, 3])
    b = block["runs"]
    names = ("standard", "robust_l2", "standard_top")
    xs = range(len(names))
    ax.bar(
        [x - 0.2 for x in xs],
        [b[n]["leakage_mass"]["mean"] for n in names],
        0.4,
        yerr=[b[n]["leakage_mass"]["std"] for n in names],
        label="share of |grad| mass",
    )
    ax.bar(
        [x + 0.2 for x in xs],
        [b[n]["leakage_top10"]["mean"] for n in names],
        0.4,
        yerr=[b[n]["leakage_top10"]["std"] for n in names],
        label="share of top-10% pixels",
    )
    ax.set_xticks(list(xs), ["standard", "l2-robust", "standard\n(BlockMNIST-Top)"])
    ax.set(ylabel="outside the signal block (leakage)", title="BlockMNIST feature leakage")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = make_parser(__doc__)
    p.add_argument("--toy-width", type=int, default=256, help="hidden width of the toy MLP")
    p.add_argument("--toy-train", type=int, default=2000, help="toy training points")
    p.add_argument("--toy-steps", type=int, default=1000, help="SGD steps per toy model")
    p.add_argument("--toy-eps", type=float, default=0.35, help="l_inf radius of the robust toy MLP")
    p.add_argument("--block-eps", type=float, default=2.0, help="l2 radius, robust BlockMNIST MLP")
    p.add_argument("--roar-eps", type=float, default=1.0, help="l2 radius, robust DiffROAR MLP")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    c0 = time.process_time()
    toy = run_toy(args)
    sec6 = run_toy(args, signal_dims=5, variants=SEC6_VARIANTS)
    block = run_blockmnist(args)
    roar = run_diffroar(args)
    claims, checks = make_claims(toy, sec6, block, roar)
    report = {
        "paper": "Shah, Jain, Netrapalli, NeurIPS 2021: Sec. 4 (DiffROAR), Sec. 5 (BlockMNIST), "
        "Sec. 6 / Fig. 5 (toy set); authors' notebook for the toy numbers",
        "config": {
            "toy": toy.pop("config"),
            "sec6": sec6.pop("config"),
            "blockmnist": block["config"],
            "diffroar": roar["config"],
            "seeds": seed_list(args),
            "scaled_down": "see the module docstring: toy width 256 (25,000 / 10,000), 2,000 points "
            "(10,000), 1,000 steps (20,000); robust eps 0.35 with a ramp; "
            "offline digits; DiffROAR one run per seed x 4 levels",
        },
        "authors_toy_numbers": AUTHORS_TOY,
        "verdict_rule": VERDICT_RULE,
        "claims": claims,
        "consistency_checks": checks,
        "results": {
            "toy": toy,
            "sec6": {k: v for k, v in sec6.items() if k != "maps"},
            "blockmnist": block,
            "diffroar": roar,
        },
    }
    report["total_seconds"] = time.perf_counter() - t0
    report["cpu_seconds"] = time.process_time() - c0
    examples = block.pop("examples")  # images and maps go to the figure, not the JSON
    path = write_report(report, "reproduce_shah", args.out, args.quick, seed_list(args))
    block["examples"] = examples
    plot(toy, block, roar, png_path("reproduce_shah", args.out, args.quick, seed_list(args)))
    print_claims(claims + checks)
    print(f"total {report['total_seconds']:.0f}s -> {path} (+ .png)")


if __name__ == "__main__":
    main()
