"""Test accuracy per seed of one-step norm-regularized adversarial training on the reproduction's setting.

The setting of benchmarks/reproduce_gong.py: the digits CNN, 4x4 patches, eps 0.4 (group) / 0.1 (l1,
elastic, eps2 0.05), clamp (0, 1), Adam 1e-3, batch 64, 8 epochs. One thread; about 3 s per run.

    PYTHONPATH=$PWD python scripts/gong_group_seeds.py --warmup-steps 50 --seeds 0 1 2 3 4 5
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._repro import small_cnn  # noqa: E402
from captum_ext.datasets import SklearnDigits  # noqa: E402
from captum_ext.regularizers import NormRegularizedAdversarialTraining  # noqa: E402
from captum_ext.training import evaluate, fit  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    p.add_argument("--norms", nargs="+", default=["group", "l1", "elastic"])
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--epochs", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(1)
    src = SklearnDigits()
    x_tr, y_tr = src.load("train")
    x_te, y_te = src.load("test")
    x_tr, x_te = x_tr[:, None], x_te[:, None]
    for norm in args.norms:
        accs, flagged = [], []
        for seed in args.seeds:
            torch.manual_seed(seed)
            net = small_cnn(10)
            adv = NormRegularizedAdversarialTraining(
                net,
                norm=norm,
                eps=0.4 if norm == "group" else 0.1,
                eps2=0.05,
                group_size=4,
                clamp=(0.0, 1.0),
                warmup_steps=args.warmup_steps,
            )
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fit(adv, (x_tr, y_tr), epochs=args.epochs, lr=1e-3, batch_size=64, seed=seed, progress=False)
            accs.append(evaluate(net, (x_te, y_te)))
            flagged.append(any("collapsing" in str(w.message) for w in caught))
        print(
            f"{norm:8s} warmup {args.warmup_steps:3d}: "
            + " ".join(f"{a:.3f}{'!' if f else ''}" for a, f in zip(accs, flagged, strict=True))
            + "  (! = dead-unit warning)",
            flush=True,
        )


if __name__ == "__main__":
    main()
