"""After-training diagnostic of the score-matching family: the input-Hessian trace beside ‖∇f‖².

Score matching lowers ``tr ∇²ₓf_y + ½‖∇ₓf_y‖²``, anti-score matching raises ``tr ∇²ₓf_y`` and
gradient-norm regularization lowers ``‖∇ₓf_y‖²`` (Srinivas & Fleuret, Sec. 3 and 5). Their training
losses use a cheap, noisy forward-only estimate of the trace (:func:`~captum_ext.regularizers.
score_matching.taylor_trace`); :func:`hessian_trace` measures both quantities on the trained model
with exact Hessian-vector products (double backward), so a user can check that a regularizer did what
it says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from captum.log import log_usage
from torch import Tensor
from tqdm.auto import tqdm

from .._autograd import input_hvp, math_attention_kernel, penalty_gradient
from .._format import (
    TargetLike,
    TensorOrTuple,
    expand_target,
    format_additional_args,
    format_inputs,
    run_forward,
    select_additional_args,
)
from .._model_state import check_eval_mode

__all__ = ["HessianTrace", "hessian_trace"]


@dataclass(frozen=True)
class HessianTrace:
    """Result of :func:`hessian_trace`, one entry per example.

    Attributes:
        trace: estimate of ``tr ∇²ₓ f_t(x)`` (summed over all input tensors), shape ``(N,)``.
        stderr: its Monte-Carlo standard error, shape ``(N,)`` (zeros when ``exact``).
        grad_norm_sq: ``‖∇ₓ f_t(x)‖²``, shape ``(N,)`` (exact).
        n_probes: probe vectors per example (the input dimension when ``exact``).
        exact: whether the trace is exact (one HVP per input coordinate) rather than Hutchinson's.

    Examples:
        ``f(x) = ‖x‖²`` has the Hessian ``2I``, so its trace is ``2·d``:

        >>> res = hessian_trace(lambda x: (x**2).sum(1, keepdim=True), torch.rand(2, 3, dtype=torch.float64),
        ...                     target=0, exact=True)
        >>> res.trace, res.n_probes, res.exact
        (tensor([6., 6.], dtype=torch.float64), 3, True)
        >>> sorted(res.summary())
        ['grad_norm_sq', 'trace', 'trace_stderr']
    """

    trace: Tensor
    stderr: Tensor
    grad_norm_sq: Tensor
    n_probes: int
    exact: bool

    def summary(self) -> dict[str, float]:
        """Batch means as floats: ``trace``, ``trace_stderr`` (of the mean), ``grad_norm_sq``."""
        n = self.trace.numel()
        return {
            "trace": float(self.trace.mean()),
            "trace_stderr": float(self.stderr.pow(2).sum().sqrt() / max(n, 1)),
            "grad_norm_sq": float(self.grad_norm_sq.mean()),
        }


@log_usage()
def hessian_trace(
    model: Callable[..., Tensor],
    inputs: TensorOrTuple,
    target: TargetLike = None,
    *,
    additional_forward_args: Any = None,
    n_probes: int = 32,
    exact: bool = False,
    max_examples_per_batch: int | None = None,
    seed: int = 0,
    show_progress: bool = False,
) -> HessianTrace:
    r"""Hessian trace of the target logit w.r.t. the inputs, by Hutchinson with exact HVPs.

    For every example ``x`` and its target class ``t``,

    .. math::
        \operatorname{tr}\nabla_x^2 f_t(x) \approx \frac1K\sum_{k=1}^K v_k^\top \nabla_x^2 f_t(x)\, v_k,
        \qquad v_k \in \{-1, 1\}^d \text{ (Rademacher)},

    where each ``∇²f_t v`` is an exact Hessian-vector product (a double backward pass, Pearlmutter's
    trick), unlike the forward-only Taylor estimate used in training. The estimate is unbiased, its
    standard error is reported per example (the sample std of the ``K`` probes over ``√K``), and
    ``exact=True`` computes the trace exactly with one HVP per input coordinate (for small inputs).
    ``‖∇ₓ f_t(x)‖²`` is returned beside it, since the score-matching objective is
    ``tr ∇²f + ½‖∇f‖²`` (Srinivas & Fleuret, eq. 2).

    The model must treat examples independently: the HVPs of a whole batch are taken through the
    summed logits. A model with BatchNorm or Dropout layers in training mode is refused
    (``ValueError``), as by every metric of the package. Only ``torch.autograd.grad`` with respect to
    the inputs is used, so the model's parameters, ``.grad`` fields, buffers and training flags are not
    changed. A
    piecewise-linear (ReLU) network has a zero input Hessian almost everywhere: smooth it first
    (:func:`~captum_ext.regularizers.activations.relu_to_softplus`).

    Args:
        model: forward function returning ``(batch, classes)`` logits.
        inputs: a batch-first tensor or a tuple of them (the trace is taken over all their entries).
        target: the logit to differentiate, in any form Captum accepts for a classifier (int, list of
            ints, 0-d or 1-d tensor); ``None`` uses each example's predicted class.
        additional_forward_args: extra arguments passed to ``model`` after the inputs (Captum style).
        n_probes: Rademacher probe vectors per example (ignored when ``exact``).
        exact: exact trace with ``d`` HVPs (``d`` = features per example) instead of Hutchinson's.
        max_examples_per_batch: examples per forward/backward pass (``None``: all at once).
        seed: seed of the probe vectors. They are drawn on the CPU chunk by chunk, so the result does
            not depend on the device (nor its random number generator) but does, within the stated
            standard error, on ``max_examples_per_batch``.
        show_progress: show a tqdm progress bar over the HVPs.

    Returns:
        A :class:`HessianTrace` with ``trace``, ``stderr`` and ``grad_norm_sq`` (each ``(N,)``, in the
        inputs' dtype and device).

    Examples:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(3, 8), nn.Softplus(beta=10), nn.Linear(8, 2)).double()
        >>> x = torch.rand(4, 3, dtype=torch.float64)
        >>> exact = hessian_trace(net, x, target=1, exact=True)
        >>> approx = hessian_trace(net, x, target=1, n_probes=256)
        >>> bool(((approx.trace - exact.trace).abs() <= 5 * approx.stderr + 1e-12).all())
        True
        >>> exact.trace.shape, exact.grad_norm_sq.shape
        (torch.Size([4]), torch.Size([4]))
    """

    check_eval_mode(model, "model")
    xs, _ = format_inputs(inputs)
    args = format_additional_args(additional_forward_args)
    if isinstance(n_probes, bool) or int(n_probes) != n_probes or n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer, got {n_probes}")
    if max_examples_per_batch is not None and (
        isinstance(max_examples_per_batch, bool) or int(max_examples_per_batch) < 1
    ):
        raise ValueError(f"max_examples_per_batch must be a positive integer, got {max_examples_per_batch}")
    if not all(t.is_floating_point() for t in xs):
        raise TypeError("inputs must be floating point to take their Hessian")
    n = xs[0].shape[0]
    dim = sum(t[0].numel() for t in xs) if n else 0
    k = dim if exact else int(n_probes)
    chunk = n if max_examples_per_batch is None else int(max_examples_per_batch)
    gen = torch.Generator().manual_seed(int(seed))
    traces, sq_sums, gnorms = [], [], []
    bar = tqdm(total=k * max(1, -(-n // max(chunk, 1))), disable=not show_progress, desc="HVPs")
    try:
        for start in range(0, n, max(chunk, 1)):
            idx = torch.arange(start, min(start + chunk, n), device=xs[0].device)
            part = tuple(t.index_select(0, idx) for t in xs)
            part_args = select_additional_args(args, n, idx)
            tr, sq, gn = _chunk_trace(model, part, part_args, target, n, idx, k, exact, gen, bar)
            traces.append(tr)
            sq_sums.append(sq)
            gnorms.append(gn)
    finally:
        bar.close()
    trace = torch.cat(traces) if traces else xs[0].new_zeros(0)
    gnorm = torch.cat(gnorms) if gnorms else xs[0].new_zeros(0)
    if exact or k < 2:
        stderr = torch.zeros_like(trace)
    else:
        second = torch.cat(sq_sums) / k
        var = (second - trace.pow(2)).clamp(min=0) * (k / (k - 1))
        stderr = (var / k).sqrt()
    return HessianTrace(trace=trace, stderr=stderr, grad_norm_sq=gnorm, n_probes=k, exact=bool(exact))


def _chunk_trace(
    model: Callable[..., Tensor],
    xs: tuple[Tensor, ...],
    args: tuple[Any, ...],
    target: TargetLike,
    n_total: int,
    idx: Tensor,
    k: int,
    exact: bool,
    gen: torch.Generator,
    bar: Any,
) -> tuple[Tensor, Tensor, Tensor]:
    """Trace estimate, sum of squared probe values and ‖∇f‖² for one chunk of examples."""
    # the math attention kernel has a double backward (the flash / efficient ones have none)
    with torch.enable_grad(), math_attention_kernel():
        leaves = tuple(t.detach().requires_grad_(True) for t in xs)
        logits = run_forward(model, leaves, args)
        t = expand_target(target, n_total, logits.shape[1], logits.device)
        t = logits.argmax(1) if t is None else t.index_select(0, idx.to(t.device))
        fy = logits.gather(1, t.unsqueeze(1)).squeeze(1)
        grads = penalty_gradient(fy.sum(), leaves, "hessian_trace")
        gnorm = sum(g.detach().pow(2).flatten(1).sum(1) for g in grads)
        m = leaves[0].shape[0]
        acc = leaves[0].new_zeros(m)
        acc_sq = leaves[0].new_zeros(m)
        offsets = [0]
        for leaf in leaves:
            offsets.append(offsets[-1] + leaf[0].numel())
        for j in range(k):
            probes = _probes(leaves, offsets, j, exact, gen)
            hvs = input_hvp(grads, leaves, probes, strict=True)
            quad = sum((v * hv).flatten(1).sum(1) for v, hv in zip(probes, hvs, strict=True)).detach()
            acc += quad
            acc_sq += quad.pow(2)
            bar.update(1)
    if exact:
        return acc, acc_sq, gnorm
    return acc / k, acc_sq, gnorm


def _probes(
    leaves: tuple[Tensor, ...], offsets: list[int], j: int, exact: bool, gen: torch.Generator
) -> list[Tensor]:
    """The ``j``-th probe for every input: a basis vector (``exact``) or Rademacher signs."""
    out = []
    for leaf, lo, hi in zip(leaves, offsets[:-1], offsets[1:], strict=True):
        shape = leaf.shape
        if exact:
            v = torch.zeros(hi - lo, dtype=leaf.dtype)
            if lo <= j < hi:
                v[j - lo] = 1.0
            v = v.reshape(shape[1:]).to(leaf.device).expand(shape)
        else:
            signs = torch.randint(0, 2, tuple(shape), generator=gen).to(leaf.dtype) * 2 - 1
            v = signs.to(leaf.device)
        out.append(v)
    return out
