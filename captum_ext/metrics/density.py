"""Density ratios of the implicit class-conditional density model (Srinivas & Fleuret, Sec. 5.1.1).

Reading logits as unnormalised log-densities, ``p(x | y) ∝ exp(f_y(x))``, the ratio

.. math:: \\frac{p(x + \\eta \\mid y)}{p(x \\mid y)} = \\exp\\big(f_y(x + \\eta) - f_y(x)\\big)

is tractable for Gaussian noise ``η ~ N(0, σ²I)``. Averaged over a data set and plotted against σ it
is a local cross-section of the model's density along random directions (Fig. 1 of the paper; lower
is better: a good density model does not assign *higher* density to noisy inputs than to data).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from captum.log import log_usage
from torch import Tensor

from .._format import (
    TensorOrTuple,
    format_additional_args,
    format_inputs,
    run_forward,
    select_additional_args,
)
from ._common import (
    NOT_IN_DICT,
    MetricResult,
    TargetLike,
    check_batch_size,
    check_data,
    check_eval_mode,
    check_labels,
)
from ._validate import POSITIVE_INT, validate

__all__ = ["DensityRatioCurve", "density_ratio_curve"]


@dataclass(frozen=True, eq=False, repr=False)
class DensityRatioCurve(MetricResult):
    """Mean density ratio per noise level.

    Attributes:
        sigmas: noise standard deviations, shape ``(S,)``.
        mean_ratio: ``mean exp(f_y(x+η) − f_y(x))`` over examples and noise samples, shape ``(S,)``
            (float64; ``inf`` if a ratio overflows float64).
        sem: standard error of ``mean_ratio`` over examples, shape ``(S,)``.
        mean_log_ratio: ``mean (f_y(x+η) − f_y(x))``, shape ``(S,)`` (never overflows).
        n_examples: number of examples averaged.
        n_samples: noise samples per example and σ.
        ratios: ``(S, N)`` per-example ratio, averaged over the noise samples.
        log_ratios: ``(S, N)`` per-example log ratio, averaged over the noise samples.

    Examples:
        For a linear model ``f_y(x + σz) − f_y(x) = σ·wᵀz``; the same ``z`` serve every σ, so the mean
        log ratio grows tenfold from σ = 0.01 to σ = 0.1:

        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Linear(4, 3).double()
        >>> curve = density_ratio_curve(net, torch.randn(8, 4, dtype=torch.float64), [0.01, 0.1], target=0)
        >>> growth = curve.mean_log_ratio[1] / curve.mean_log_ratio[0]
        >>> curve.n_examples, curve.ratios.shape, round(float(growth), 6)
        (8, torch.Size([2, 8]), 10.0)
        >>> sorted(curve.to_dict())
        ['mean_log_ratio', 'mean_ratio', 'n_examples', 'n_samples', 'sem', 'sigmas']
    """

    sigmas: Tensor
    mean_ratio: Tensor
    sem: Tensor
    mean_log_ratio: Tensor
    n_examples: int
    n_samples: int
    ratios: Tensor = field(repr=False, metadata=NOT_IN_DICT)
    log_ratios: Tensor = field(repr=False, metadata=NOT_IN_DICT)

    def plot(self, ax: Any = None, label: str | None = None, log_y: bool = True) -> Any:
        """Plot the curve (matplotlib imported lazily); returns the Axes."""
        ax = self._axes(ax, (4, 3))
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


def _example_noise(chunk: tuple[Tensor, ...], idx: Tensor, n_samples: int, seed: int) -> tuple[Tensor, ...]:
    """Standard-normal noise ``(n_samples, b, ...)`` per input tensor, example ``i`` drawn from a CPU
    generator seeded with ``(seed, i)``: the same numbers whatever the batching."""
    per_example: list[list[Tensor]] = [[] for _ in chunk]
    for i in idx.tolist():
        gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
        for t, x in enumerate(chunk):
            per_example[t].append(torch.randn((n_samples, *x.shape[1:]), generator=gen, dtype=x.dtype))
    return tuple(torch.stack(zs, dim=1).to(x.device) for zs, x in zip(per_example, chunk, strict=True))


@log_usage()
def density_ratio_curve(
    forward_func: Callable[..., Tensor],
    inputs: TensorOrTuple,
    sigmas: Sequence[float] | Tensor,
    *,
    target: TargetLike = None,
    additional_forward_args: Any = None,
    max_examples_per_batch: int | None = None,
    n_samples: int = 1,
    seed: int = 0,
    show_progress: bool = False,
) -> DensityRatioCurve:
    """Mean density ratio ``exp(f_y(x + η) − f_y(x))`` over data, per noise level (Sec. 5.1.1).

    The same standard-normal directions ``z`` are reused for every σ (``η = σ·z``, common random
    numbers), so the curve is a cross-section along fixed random directions and is smooth in σ.
    Noise is added to every input tensor. The model is only evaluated (under ``torch.no_grad``): its
    mode, parameters and buffers are not touched; a model with BatchNorm/Dropout in training mode is
    refused with a ``ValueError`` (call ``.eval()`` first).

    Args:
        forward_func: classifier returning ``(batch, classes)`` logits.
        inputs: tensor or tuple of tensors, batch first.
        sigmas: noise standard deviations (positive).
        target: the class ``y`` per example in any Captum form for a classifier (the paper uses the
            true label); ``None`` uses the predicted class of the clean input.
        additional_forward_args: extra model arguments (Captum convention).
        max_examples_per_batch: examples per forward pass (each pass holds
            ``max_examples_per_batch · n_samples`` rows); ``None``: all at once.
        n_samples: noise samples per example and σ.
        seed: seed of the noise: example ``i`` draws its noise from its own generator seeded with
            ``(seed, i)``, so the numbers do not depend on ``max_examples_per_batch`` or the device.
        show_progress: tqdm progress bar over batches.

    Returns:
        A :class:`DensityRatioCurve` (tensors on CPU, float64).

    Examples:
        >>> net = torch.nn.Linear(4, 3)
        >>> curve = density_ratio_curve(net, torch.randn(8, 4), [0.01, 0.1], target=0)
        >>> curve.mean_ratio.shape, curve.ratios.shape
        (torch.Size([2]), torch.Size([2, 8]))
    """
    check_eval_mode(forward_func)
    xs, _ = format_inputs(inputs)
    n = check_data(xs)
    args = format_additional_args(additional_forward_args)
    sig = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
    if sig.numel() == 0 or bool((sig <= 0).any()) or not bool(torch.isfinite(sig).all()):
        raise ValueError(f"sigmas must be a non-empty sequence of positive numbers, got {sigmas!r}")
    validate(n_samples=(n_samples, POSITIVE_INT))
    check_batch_size(max_examples_per_batch)
    bs = n if max_examples_per_batch is None else max_examples_per_batch
    device = xs[0].device
    ratios = torch.zeros(sig.numel(), n, dtype=torch.float64)
    log_ratios = torch.zeros_like(ratios)
    starts = range(0, n, bs)
    if show_progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="density ratios", leave=False)
    y_all: Tensor | None = None
    with torch.no_grad():
        for start in starts:
            idx = torch.arange(start, min(start + bs, n), device=device)
            chunk = tuple(x.index_select(0, idx) for x in xs)
            chunk_args = select_additional_args(args, n, idx)
            base = run_forward(forward_func, chunk, chunk_args)
            if y_all is None:
                if target is None:
                    y_all = torch.empty(n, dtype=torch.long, device=device)
                else:
                    y_all = check_labels(target, n, base.shape[1]).to(device)
            if target is None:
                y_all[idx] = base.argmax(dim=1).to(device)
            y = y_all.index_select(0, idx).to(base.device)
            fy = base.gather(1, y.unsqueeze(1)).squeeze(1).double()
            b = idx.numel()
            z = _example_noise(chunk, idx, n_samples, int(seed))
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
                out = run_forward(forward_func, noisy, rep_args)
                f_noisy = out.gather(1, y_rep.unsqueeze(1)).squeeze(1).double()
                diff = (f_noisy.reshape(n_samples, b) - fy.unsqueeze(0)).cpu()
                ratios[k, idx.cpu()] = diff.exp().mean(0)
                log_ratios[k, idx.cpu()] = diff.mean(0)
    mean = ratios.mean(dim=1)
    var = (ratios.pow(2).mean(dim=1) - mean.pow(2)).clamp_min(0) * (n / max(n - 1, 1))
    return DensityRatioCurve(
        sigmas=sig,
        mean_ratio=mean,
        sem=var.sqrt() / n**0.5,
        mean_log_ratio=log_ratios.mean(dim=1),
        n_examples=int(n),
        n_samples=int(n_samples),
        ratios=ratios,
        log_ratios=log_ratios,
    )
