"""CASO and SmoothCASO (Singla, Wallace, Feng, Feizi, ICML 2019): the Captum facade.

This module only speaks Captum: its methods validate their options into one frozen object
(:class:`~captum_ext.attr.options.CASOOptions`) and hand them to the shared plumbing of
:mod:`~captum_ext.attr.base` (formatting, model policy, chunking, outputs shaped like the inputs);
CAFO is in :mod:`~captum_ext.attr.cafo`. Everything else is elsewhere, one idea per module:

* :mod:`~captum_ext.attr.engine`: one chunk's solve (path choice, guard on ``lambda2``, certificates);
* :mod:`~captum_ext.attr.curvature`: the registered curvature paths and the graph analysis that says
  which of them is exact for this model at this point;
* :mod:`~captum_ext.attr.solvers`: certified and paper solvers, the objective, the ``lambda1`` search;
* :mod:`~captum_ext.attr.details`: :class:`AttributionDetails` (``last_details``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from captum.log import log_usage
from torch import Tensor

from .._format import (
    TargetLike,
    TensorOrTuple,
    repeat_additional_args,
)
from . import engine
from .base import _ContextAwareAttribution, _grid_fn
from .curvature import paths
from .details import AttributionDetails
from .graph import (
    DEFAULT_RANK_TOL,
    LossGraph,
)
from .options import CASOOptions, Orientation, matching_options

#: values of ``hessian=``: ``"auto"`` and the registered curvature paths
HessianMode = Literal[("auto", *paths())]  # type: ignore[valid-type]
SolverMode = Literal["certified", "paper"]

__all__ = ["CASO", "SmoothCASO"]


class CASO(_ContextAwareAttribution):
    r"""Context-Aware Second-Order interpretation (Singla et al., 2019, Def. 3).

    For each example, with ``l`` the cross-entropy at ``target`` (default: the predicted class),
    ``g`` its input-gradient and ``H`` its input Hessian, CASO returns the perturbation that maximises

    .. math:: g^T\Delta + \tfrac12 \Delta^T H \Delta - \lambda_1\|\Delta\|_1 - \lambda_2\|\Delta\|_2^2

    in the orientation of Captum's attributions: the returned map is ``-Delta``, positive where the
    input is evidence *for* the target (like signed ``Saliency`` of the target logit, so
    ``captum.attr.visualization.visualize_image_attr(..., sign="positive")`` shows evidence for the
    class); ``orientation="paper"`` returns the paper's ``Delta`` itself (the loss-*increasing*
    perturbation), ``abs=True`` ``|Delta|`` (the paper's importance, the same in both orientations).
    ``lambda2=None`` uses the paper's
    ``L/2 + c1`` (Theorem 3; ``L`` the top Hessian eigenvalue, ``c1 = 10``). A single-logit model is
    read as the binary logistic loss (logits ``[0, z]``); ``log_softmax`` outputs are logits too.

    The Hessian enters through a curvature operator (``hessian=``):

    * ``"closed_form"``: ``H = B B^T`` from the eigen-decomposition of ``A = diag(p) - pp^T`` and one
      backward pass per kept eigenvector (exact for ReLU / max-pool / linear / conv / eval-mode
      BatchNorm networks, the Gauss-Newton part otherwise). ``L`` is exact, ``lambda1 = 0`` is solved
      in closed form (Woodbury), and every ``lambda1`` of a sweep reuses the factor.
    * ``"exact"``: Hessian-vector products by double backward (attention under the math kernel) and
      ``L`` by Lanczos; valid for any twice-differentiable model (softplus, GELU, attention, ...).
    * ``"gauss_newton"``: matrix-free products ``J^T A (J v)`` (one Jacobian-vector and one
      vector-Jacobian product each, :class:`~captum_ext.attr.curvature.gauss_newton.GaussNewtonHessian`): the
      closed form's Hessian without its ``d x r`` memory or ``r + 1`` backward passes; ``L`` by Lanczos.
    * ``"auto"`` (default): a free look at the autograd graph
      (:func:`~captum_ext.attr.hessian.structural_curvature`) recognises piecewise-linear nets
      (where the factor and Gauss-Newton paths are exact) and nets made of known smooth operations
      (GELU, tanh, LayerNorm, softmax, products of input-dependent tensors: only ``"exact"`` is
      correct); when it cannot tell, one double-backward probe at these inputs (on every call:
      curvature depends on the point) tells piecewise-linear nets from curved ones, with finite
      differences where a layer's second derivative cannot be trusted (custom ``autograd.Function``,
      ``torch.compile`` graphs, Hardsigmoid); then the cost model
      (:mod:`~captum_ext.attr.cost_model`) takes the correct path with the least predicted work that
      fits ``max_memory``, and reports its choice and predictions in ``last_details.extra["auto"]``.

    **No wrong answer is certified.** A path that is not exact for the model at these inputs is
    refused when asked for explicitly (``CurvaturePathError``, a ``RuntimeError`` naming the exact
    paths), and when no path is exact (curved layers without a second derivative) CASO raises saying
    why and what would work. A ``torch.compile``'d module is differentiated through its eager original.

    ``solver="certified"`` (default) returns the optimum to ``tol`` (relative error, default 1e-8 in
    float64 and 1e-4 in float32): ``lambda1 = 0`` by conjugate gradients (Woodbury on the closed form),
    ``lambda1 > 0`` on the closed form exactly, by a semismooth Newton method on the rank-``r`` dual
    (certified by its KKT residual), elsewhere by accelerated proximal gradient with a step from the
    curvature bound, adaptive restart and a certified stopping rule, up to ``max_iter`` iterations.
    Certificates are computed in float64 at any scale of the gradient. An unconverged solve warns.
    Any observed curvature ``v.Hv > 2 lambda2 |v|^2`` proves the problem non-concave: with
    ``lambda2=None`` ``L`` is raised and the problem re-solved, an explicit ``lambda2`` raises
    ``ValueError``. ``solver="paper"`` runs the paper's algorithm exactly (``n_power_iter`` power
    iterations for ``L``, ``n_iter`` FISTA iterations with step ``lr`` and backtracking ``decay``;
    paper: 10, 10, 0.1, 0.5; step sizes per example) and reports, but does not enforce, its error.
    ``sparsity=(low, high)`` chooses ``lambda1`` per example by the paper's sparsity-ratio rule.

    **Scale.** The ``lambda2`` penalty sets the size of the map: without curvature it is
    ``g / (2 lambda2)`` with ``lambda2 >= c1 = 10``, and the loss gradient ``g`` is about
    ``1 - p_target`` times the logit gradient Saliency returns. So CASO's and CAFO's values are at
    least 20x smaller than Saliency's: about 30x on an unsure 10-class model, hundreds of times or
    more on confident predictions. Rankings, cosines and visualisations do not care; scale-sensitive scores
    do: pass ``normalize=True`` to ``captum.metrics.infidelity``
    (:func:`~captum_ext.compare_attributions` does).

    After each call, :attr:`last_details` (:class:`AttributionDetails`) holds, per example, the
    ``lambda1``, ``lambda2``, sparsity, objective, top eigenvalue, rank, ``converged``,
    ``error_bound`` and ``iterations``. They describe the problem solved, in the paper's orientation
    (``objective`` is the maximised value above at ``Delta``), whatever ``orientation`` is.

    SmoothCASO is ``captum.attr.NoiseTunnel(CASO(model))`` (paper: ``nt_samples=50``,
    ``stdevs=0.15``). NoiseTunnel averages the CASO solutions of the noisy copies (SmoothGrad style);
    the paper's Def. 4 instead solves one problem with averaged ``g`` and ``H`` (:class:`SmoothCASO`).

    Args:
        forward_func: the model or any function returning logits ``(batch, classes)``. Must be
            deterministic and per-example (eval mode for BatchNorm / Dropout); a probe checks this.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from captum_ext import CASO
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <...>
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.GELU(), nn.Linear(8, 3)).eval()
        >>> x = torch.randn(2, 1, 4, 4)
        >>> caso = CASO(model)
        >>> attr = caso.attribute(x, target=[0, 2], lambda1=1e-3)
        >>> attr.shape
        torch.Size([2, 1, 4, 4])
        >>> caso.last_details.hessian, bool(caso.last_details.converged.all())
        ('exact', True)
        >>> paper = caso.attribute(x, target=[0, 2], lambda1=1e-3, orientation="paper")  # the paper's Delta
        >>> torch.allclose(paper, -attr)
        True
    """

    @log_usage()
    @matching_options(CASOOptions)
    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTuple,
        target: TargetLike = None,
        additional_forward_args: Any = None,
        *,
        lambda1: float | Tensor = 0.0,
        lambda2: float | None = None,
        c1: float = 10.0,
        solver: SolverMode = "certified",
        tol: float | None = None,
        max_iter: int = 1000,
        n_iter: int | None = None,
        lr: float = 0.1,
        decay: float = 0.5,
        hessian: HessianMode = "auto",
        rank_tol: float = DEFAULT_RANK_TOL,
        sparsity: tuple[float, float] | None = None,
        orientation: Orientation = "captum",
        abs: bool = False,
        n_power_iter: int = 10,
        internal_batch_size: int | None = None,
        max_rank: int | None = None,
        max_memory: int | None = None,
        show_progress: bool = False,
    ) -> TensorOrTuple:
        r"""Compute CASO attributions.

        Args:
            inputs: tensor or tuple of tensors, batch first.
            target: class per example in any form Captum accepts (int, 1-tuple, list, tensor);
                default the predicted class.
            additional_forward_args: extra arguments passed to ``forward_func`` after the inputs.
            lambda1: l1 weight (>= 0), a number or one value per example (1-d tensor). Ignored when
                ``sparsity`` is given.
            lambda2: l2 weight; ``None`` for ``L/2 + c1``. A number must be finite and exceed ``L/2``.
            c1: margin added to ``L/2`` when ``lambda2`` is None (paper: 10).
            solver: ``"certified"`` (optimum to ``tol``) or ``"paper"`` (fixed ``n_iter`` FISTA steps).
            tol: relative error tolerance of the certified solver (default 1e-8 float64, 1e-4 else).
            max_iter: iteration cap of the certified solver; an unconverged result warns.
            n_iter: FISTA iterations of ``solver="paper"`` (default 10); not used otherwise.
            lr, decay: initial step and backtracking factor of ``solver="paper"`` (paper: 0.1, 0.5);
                ``decay`` also shrinks the certified solver's step where the curvature bound is loose.
            hessian: ``"auto"``, ``"closed_form"``, ``"gauss_newton"`` or ``"exact"`` (see the class
                docstring).
            rank_tol: relative spectral mass of ``A = diag(p) - pp^T`` the closed form may drop.
                The Hessian error is at most ``rank_tol * tr(A) * ||J||_2^2`` (default 1e-3);
                0 keeps the whole spectrum (exact for piecewise-linear nets).
            sparsity: ``(low, high)`` window for the unsupervised ``lambda1`` choice (paper:
                ``(0.75, 1.0)``), or None.
            orientation: ``"captum"`` (default) returns ``-Delta``, positive where the input is
                evidence for the target, as Captum's attributions are; ``"paper"`` returns the paper's
                ``Delta`` (the loss-increasing perturbation).
            abs: return ``|Delta|`` (the paper's importance, either orientation) instead of the
                signed map.
            n_power_iter: power iterations for ``L`` on the exact path of ``solver="paper"``.
            internal_batch_size: examples per chunk, to bound memory for large inputs or many
                classes (the factor holds ``rank`` input-sized vectors per example).
            max_rank: hard cap (>= 1) on the closed-form rank (memory); exactness is lost beyond it.
            max_memory: bytes the Hessian's own buffers may take (the factor ``B`` and its VJP buffer,
                or the iterates of the matrix-free paths; not the model's activations). Default: a
                quarter of RAM up to 8 GiB on CPU, half the free memory on CUDA. ``hessian="auto"``
                never picks a path predicted not to fit (it warns when none does); ``"closed_form"``
                builds the factor in groups of examples that fit (same result; raises ``ValueError``
                when one example's factor alone does not fit; not for :class:`SmoothCASO`).
            show_progress: a tqdm progress bar over the batch's examples, advanced per chunk (set
                ``internal_batch_size`` for a long batch); off by default.

        Returns:
            Attributions shaped like ``inputs`` (tuple in, tuple out), in the chosen ``orientation``.
        """
        opts = CASOOptions(
            lambda1=lambda1,
            lambda2=lambda2,
            c1=c1,
            solver=solver,
            tol=tol,
            max_iter=max_iter,
            n_iter=n_iter,
            lr=lr,
            decay=decay,
            hessian=hessian,
            rank_tol=rank_tol,
            sparsity=sparsity,
            orientation=orientation,
            n_power_iter=n_power_iter,
            max_rank=max_rank,
            max_memory=max_memory,
            show_progress=show_progress,
        )
        return self._attribute(inputs, target, additional_forward_args, None, internal_batch_size, opts, abs)

    def sweep(
        self,
        inputs: TensorOrTuple,
        lambda1_values: Sequence[float] | Tensor,
        target: TargetLike = None,
        additional_forward_args: Any = None,
        **kwargs: Any,
    ) -> TensorOrTuple:
        """Solve CASO for several ``lambda1`` values at once, reusing one Hessian per example.

        Returns attributions with a leading sweep dimension: ``(m, *input.shape)`` per input.
        ``last_details`` fields are ``(n, m)``. Other keyword arguments are those of
        :meth:`attribute` (except ``lambda1`` and ``sparsity``), ``orientation`` included.

        Examples:
            >>> import torch
            >>> from torch import nn
            >>> from captum_ext import CASO
            >>> model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
            >>> maps = CASO(model).sweep(torch.randn(2, 6), [1e-4, 1e-3, 1e-2])
            >>> maps.shape
            torch.Size([3, 2, 6])
        """
        if "lambda1" in kwargs or "sparsity" in kwargs:
            raise TypeError("sweep() takes lambda1_values instead of lambda1 / sparsity")
        grid_fn = _grid_fn(lambda1_values)
        abs_ = kwargs.pop("abs", False)
        internal_batch_size = kwargs.pop("internal_batch_size", None)
        try:
            opts = CASOOptions(**kwargs)
        except TypeError as err:  # an unknown keyword
            raise TypeError(f"sweep() got unexpected keyword arguments: {err}") from None
        return self._attribute(
            inputs, target, additional_forward_args, grid_fn, internal_batch_size, opts, abs_
        )

    def _solve(self, graph: LossGraph, opts, grid_fn, forward, args) -> tuple[Tensor, AttributionDetails]:
        return engine.solve(graph, opts, grid_fn, forward, args, self._samples, type(self).__name__)

    def forget_probe(self) -> None:
        """Kept for compatibility: nothing to forget, the curvature decision is made on every call."""


class SmoothCASO(CASO):
    r"""SmoothCASO exactly as the paper defines it (Singla et al., 2019, Def. 4).

    One problem per example with the gradient and Hessian **averaged** over noisy copies
    ``z = x + N(0, stdevs^2)``:

    .. math:: \max_\Delta\ \frac1n\sum_z \big(g_z^T\Delta + \tfrac12\Delta^T H_z \Delta\big)
              - \lambda_1\|\Delta\|_1 - \lambda_2\|\Delta\|_2^2

    This differs from ``NoiseTunnel(CASO(model))``, which solves one CASO problem per noisy copy and
    averages the solutions. With the closed form the averaged Hessian stays low rank
    (``[B_1, ..., B_n] / sqrt(n)``), so ``L`` is exact and ``lambda1 = 0`` is still a Woodbury solve;
    on the exact path each Hessian-vector product averages ``nt_samples`` double-backward products.
    Noise is drawn from torch's global generator (seed it with ``torch.manual_seed``). ``target=None``
    explains the class predicted for the clean input. Every argument of :meth:`CASO.attribute` and
    :meth:`CASO.sweep` applies; ``last_details`` reports one entry per (clean) example.

    Args:
        forward_func: the model or any function returning logits ``(batch, classes)``.
        nt_samples: noisy copies per example (paper: 50).
        stdevs: noise standard deviation, one float or one per input tensor (paper: 0.15).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from captum_ext import SmoothCASO
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
        >>> attr = SmoothCASO(model, nt_samples=8).attribute(torch.randn(2, 1, 4, 4), target=0)
        >>> attr.shape
        torch.Size([2, 1, 4, 4])
    """

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        nt_samples: int = 50,
        stdevs: float | Sequence[float] = 0.15,
    ) -> None:
        super().__init__(forward_func)
        if int(nt_samples) != nt_samples or nt_samples < 1:
            raise ValueError(f"nt_samples must be a positive integer, got {nt_samples}")
        stds = (stdevs,) if isinstance(stdevs, (int, float)) else tuple(stdevs)
        if any(not math.isfinite(sd) or sd < 0 for sd in stds):
            raise ValueError(f"stdevs must be finite and >= 0, got {stdevs}")
        self._samples = int(nt_samples)
        self.stdevs = stds

    def _expand(
        self, inputs: tuple[Tensor, ...], args: tuple[Any, ...]
    ) -> tuple[tuple[Tensor, ...], tuple[Any, ...]]:
        if len(self.stdevs) not in (1, len(inputs)):
            raise ValueError(
                f"stdevs has {len(self.stdevs)} entries but there are {len(inputs)} input tensors"
            )
        stds = self.stdevs * len(inputs) if len(self.stdevs) == 1 else self.stdevs
        s, n = self._samples, inputs[0].shape[0]
        noisy = tuple(
            x.repeat_interleave(s, 0) + sd * torch.randn_like(x.repeat_interleave(s, 0))
            for x, sd in zip(inputs, stds, strict=True)
        )
        return noisy, repeat_additional_args(args, n, s)
