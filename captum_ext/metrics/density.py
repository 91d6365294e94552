"""Density ratios of the implicit class-conditional density model (Srinivas & Fleuret, Sec. 5.1.1).

Reading logits as unnormalised log-densities, ``p(x | y) ∝ exp(f_y(x))``, the ratio

.. math:: \\frac{p(x + \\eta \\mid y)}{p(x \\mid y)} = \\exp\\big(f_y(x + \\eta) - f_y(x)\\big)

is tractable for Gaussian noise ``η ~ N(0, σ²I)``. Averaged over a data set and plotted against σ it
is a local cross-section of the model's density along random directions (Fig. 1 of the paper; lower
is better: a good density model does not assign *higher* density to noisy inputs than to data).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._format import (
    TargetType,
    TensorOrTuple,
    expand_target,
    format_additional_args,
    format_inputs,
    run_forward,
    select_additional_args,
)
from .._model_state import has_stochastic_or_batch_layers

__all__ = ["DensityRatioCurve", "density_ratio_curve"]


@dataclass(frozen=True)
class DensityRatioCurve:
    """Mean density ratio per noise level.

    Attributes:
        sigmas: noise standard deviations, shape ``(S,)``.
        mean_ratio: ``mean exp(f_y(x+η) − f_y(x))`` over examples and noise samples, shape ``(S,)``
            (float64; ``inf`` if a ratio overflows float64).
        sem: standard error of ``mean_ratio`` over examples, shape ``(S,)``.
        mean_log_ratio: ``mean (f_y(x+η) − f_y(x))``, shape ``(S,)`` (never overflows).
        n_examples: number of examples averaged.
        n_samples: noise samples per example and σ.
    """

    sigmas: Tensor
    mean_ratio: Tensor
    sem: Tensor
    mean_log_ratio: Tensor
    n_examples: int
    n_samples: int

    def as_dict(self) -> dict[str, Any]:
        """Plain Python lists, for JSON."""
        return {
            "sigmas": self.sigmas.tolist(),
            "mean_ratio": self.mean_ratio.tolist(),
            "sem": self.sem.tolist(),
            "mean_log_ratio": self.mean_log_ratio.tolist(),
            "n_examples": self.n_examples,
            "n_samples": self.n_samples,
        }

    def plot(self, ax: Any = None, label: str | None = None, log_y: bool = True) -> Any:
        """Plot the curve (matplotlib imported lazily); returns the Axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(4, 3))
        s = self.sigmas.numpy()
        m = self.mean_ratio.numpy()
        e = self.sem.numpy()
        ax.plot(s, m, marker="o", label=label)
        ax.fill_between(s, m - e, m + e, alpha=0.2)
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("noise std σ")
        ax.set_ylabel("mean p(x+η|y) / p(x|y)")
        if label is not None:
            ax.legend()
        return ax


def density_ratio_curve(
    model: Any,
    inputs: TensorOrTuple,
    labels: TargetType,
    sigmas: Sequence[float] | Tensor,
    *,
    n_samples: int = 1,
    batch_size: int = 256,
    additional_forward_args: Any = None,
    seed: int = 0,
    show_progress: bool = False,
) -> DensityRatioCurve:
    """Mean density ratio ``exp(f_y(x + η) − f_y(x))`` over data, per noise level (Sec. 5.1.1).

    The same standard-normal directions ``z`` are reused for every σ (``η = σ·z``, common random
    numbers), so the curve is a cross-section along fixed random directions and is smooth in σ.
    Noise is added to every input tensor. The model is only evaluated (under ``torch.no_grad``): its
    mode, parameters and buffers are not touched; put it in eval mode first (a warning is raised for
    BatchNorm/Dropout in training mode).

    Args:
        model: classifier returning ``(batch, classes)`` logits.
        inputs: tensor or tuple of tensors, batch first.
        labels: the class ``y`` per example in any Captum target form (the paper uses the true label).
        sigmas: noise standard deviations (positive).
        n_samples: noise samples per example and σ.
        batch_size: examples per forward pass (each pass holds ``batch_size · n_samples`` rows).
        additional_forward_args: extra model arguments (Captum convention).
        seed: seed of the noise generator (created on the inputs' device).
        show_progress: tqdm progress bar over batches.

    Returns:
        A :class:`DensityRatioCurve` (tensors on CPU, float64).

    Examples:
        >>> net = torch.nn.Linear(4, 3)
        >>> curve = density_ratio_curve(net, torch.randn(8, 4), 0, [0.01, 0.1])
        >>> curve.mean_ratio.shape
        torch.Size([2])
    """
    xs, _ = format_inputs(inputs)
    args = format_additional_args(additional_forward_args)
    sig = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
    if sig.numel() == 0 or bool((sig <= 0).any()) or not bool(torch.isfinite(sig).all()):
        raise ValueError(f"sigmas must be a non-empty sequence of positive numbers, got {sigmas!r}")
    if int(n_samples) != n_samples or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if isinstance(model, torch.nn.Module) and has_stochastic_or_batch_layers(model):
        warnings.warn(
            "the model has BatchNorm/Dropout layers in training mode; call model.eval() first for "
            "deterministic density ratios",
            UserWarning,
            stacklevel=2,
        )
    n = xs[0].shape[0]
    device = xs[0].device
    gen = torch.Generator(device=device).manual_seed(int(seed))
    sums = torch.zeros(sig.numel(), dtype=torch.float64)
    sq_sums = torch.zeros_like(sums)
    log_sums = torch.zeros_like(sums)
    starts = range(0, n, int(batch_size))
    if show_progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="density ratios")
    y_all: Tensor | None = None
    with torch.no_grad():
        for start in starts:
            idx = torch.arange(start, min(start + int(batch_size), n), device=device)
            chunk = tuple(x.index_select(0, idx) for x in xs)
            chunk_args = select_additional_args(args, n, idx)
            base = run_forward(model, chunk, chunk_args)
            if y_all is None:
                y_all = expand_target(labels, n, base.shape[1], device)
                if y_all is None:
                    raise ValueError("labels are required (the class y of every example)")
            y = y_all.index_select(0, idx)
            fy = base.gather(1, y.unsqueeze(1)).squeeze(1).double()
            b = idx.numel()
            z = tuple(
                torch.randn((n_samples, *x.shape), generator=gen, device=device, dtype=x.dtype) for x in chunk
            )
            rep_args = tuple(
                a.repeat(n_samples, *([1] * (a.dim() - 1)))
                if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == b
                else a
                for a in chunk_args
            )
            y_rep = y.repeat(n_samples)
            for k, s in enumerate(sig.tolist()):
                noisy = tuple(
                    (x.unsqueeze(0) + s * zz).reshape(n_samples * b, *x.shape[1:])
                    for x, zz in zip(chunk, z, strict=True)
                )
                out = run_forward(model, noisy, rep_args)
                f_noisy = out.gather(1, y_rep.unsqueeze(1)).squeeze(1).double()
                diff = (f_noisy.reshape(n_samples, b) - fy.unsqueeze(0)).cpu()
                per_example = diff.exp().mean(0)
                sums[k] += per_example.sum()
                sq_sums[k] += per_example.pow(2).sum()
                log_sums[k] += diff.mean(0).sum()
    mean = sums / n
    var = (sq_sums / n - mean.pow(2)).clamp_min(0) * (n / max(n - 1, 1))
    return DensityRatioCurve(
        sigmas=sig,
        mean_ratio=mean,
        sem=var.sqrt() / n**0.5,
        mean_log_ratio=log_sums / n,
        n_examples=int(n),
        n_samples=int(n_samples),
    )
