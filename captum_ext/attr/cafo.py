"""CAFO (Singla et al., 2019, Def. 2) as a Captum attribution: closed form for every ``lambda1``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from captum.log import log_usage
from torch import Tensor

from .._format import (
    TargetLike,
    TensorOrTuple,
)
from . import engine
from .base import _ContextAwareAttribution, _grid_fn
from .details import AttributionDetails
from .graph import (
    LossGraph,
    loss_gradient_from_logits,
)
from .options import CAFOOptions, Orientation, matching_options
from .solvers import caso_objective, soft_threshold


class CAFO(_ContextAwareAttribution):
    r"""Context-Aware First-Order interpretation (Singla et al., 2019, Def. 2).

    Maximises :math:`g^T\Delta - \lambda_1\|\Delta\|_1 - \lambda_2\|\Delta\|_2^2` per example, with
    ``g`` the input-gradient of the cross-entropy at ``target``, returned as ``-Delta`` (positive where
    the input is evidence for the target, Captum's orientation; ``orientation="paper"`` returns
    ``Delta``, the loss-increasing perturbation). The problem is separable, so the
    optimum is exact in closed form for every ``lambda1``: ``Delta = soft(g, lambda1) / (2 lambda2)``
    (the paper runs FISTA; the closed form is its limit, at the cost of a single backward pass).
    ``lambda2=None`` means ``c1`` (paper: 10). ``sparsity=(low, high)`` picks ``lambda1`` per example
    by the sparsity-ratio rule of Sec. 4.1. SmoothCAFO is ``NoiseTunnel(CAFO(model))``. Scale: the
    maps are ``1 / (2 lambda2)`` (1/20 by default) times the loss gradient, itself about
    ``1 - p_target`` times Saliency's logit gradient: at least 20x smaller than Saliency's (see
    :class:`~captum_ext.attr.caso.CASO`); use ``normalize=True`` with ``captum.metrics.infidelity``.
    ``last_details`` describes the problem solved (paper orientation) whatever ``orientation`` is.

    Args:
        forward_func: the model or any function returning logits ``(batch, classes)``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from captum_ext import CAFO
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
        >>> attr = CAFO(model).attribute(torch.randn(2, 1, 4, 4), target=1, lambda1=1e-3)
        >>> attr.shape
        torch.Size([2, 1, 4, 4])
    """

    @log_usage()
    @matching_options(CAFOOptions)
    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTuple,
        target: TargetLike = None,
        additional_forward_args: Any = None,
        *,
        lambda1: float = 0.0,
        lambda2: float | None = None,
        c1: float = 10.0,
        sparsity: tuple[float, float] | None = None,
        orientation: Orientation = "captum",
        abs: bool = False,
        internal_batch_size: int | None = None,
    ) -> TensorOrTuple:
        """Compute CAFO attributions.

        Args:
            inputs: tensor or tuple of tensors, batch first.
            target: class per example in any form Captum accepts (int, 1-tuple, list, tensor);
                default the predicted class.
            additional_forward_args: extra arguments passed to ``forward_func`` after the inputs.
            lambda1: l1 weight (>= 0). Ignored when ``sparsity`` is given.
            lambda2: l2 weight (> 0); ``None`` means ``c1``.
            c1: default ``lambda2`` (paper: 10).
            sparsity: ``(low, high)`` window for the unsupervised ``lambda1`` choice, or None.
            orientation: ``"captum"`` (default, ``-Delta``: evidence for the target is positive) or
                ``"paper"`` (``Delta``, the loss-increasing perturbation).
            abs: return ``|Delta|`` (either orientation) instead of the signed map.
            internal_batch_size: examples per chunk.

        Returns:
            Attributions shaped like ``inputs``, in the chosen ``orientation``.
        """
        opts = CAFOOptions(
            lambda1=lambda1, lambda2=lambda2, c1=c1, sparsity=sparsity, orientation=orientation
        )
        return self._attribute(inputs, target, additional_forward_args, None, internal_batch_size, opts, abs)

    def sweep(
        self,
        inputs: TensorOrTuple,
        lambda1_values: Sequence[float] | Tensor,
        target: TargetLike = None,
        additional_forward_args: Any = None,
        *,
        lambda2: float | None = None,
        c1: float = 10.0,
        orientation: Orientation = "captum",
        abs: bool = False,
        internal_batch_size: int | None = None,
    ) -> TensorOrTuple:
        """CAFO for several ``lambda1`` values; leading sweep dimension ``(m, *input.shape)``."""
        opts = CAFOOptions(lambda2=lambda2, c1=c1, orientation=orientation)
        grid_fn = _grid_fn(lambda1_values)
        return self._attribute(
            inputs, target, additional_forward_args, grid_fn, internal_batch_size, opts, abs
        )

    def _solve(self, graph: LossGraph, opts, grid_fn, forward, args) -> tuple[Tensor, AttributionDetails]:
        n = graph.n
        dtype, device = graph.dtype, graph.logits.device
        # g = J^T (p - e_t) with p_t - 1 formed without cancellation (accurate in float32 at p ~ 1)
        g = loss_gradient_from_logits(graph)
        graph.release()
        top = torch.zeros(n, dtype=dtype, device=device)
        lam2 = top + (opts.c1 if opts.lambda2 is None else float(opts.lambda2))
        grid = None if grid_fn is None else grid_fn(n, device, dtype)

        def solve(lams: Tensor) -> tuple[Tensor, Tensor]:
            gm = g[:, None, :]
            l1 = lams[:, :, None]
            l2 = lam2[:, None, None]
            delta = soft_threshold(gm, l1) / (2.0 * l2)
            return delta, caso_objective(delta, None, gm, l1, l2)

        delta, obj, lam1, eta, in_window = engine.search_or_solve(solve, g, opts.lambda1, grid, opts.sparsity)
        details = AttributionDetails(
            lambda1=lam1.detach(),
            lambda2=lam2,
            sparsity=eta.detach(),
            objective=obj.detach(),
            top_eigenvalue=top,
            rank=torch.zeros(n, dtype=torch.long, device=device),
            hessian="none",
            target=graph.target,
            in_window=in_window,
            n_vjp=1,
            converged=torch.ones(eta.shape, dtype=torch.bool, device=device),  # exact closed form
            error_bound=torch.zeros(eta.shape, dtype=dtype, device=device),
            iterations=torch.zeros(eta.shape, dtype=torch.long, device=device),
            solver="closed_form",
            extra={"binary_logistic": True} if graph.binary else {},
        )
        return delta.detach(), details
