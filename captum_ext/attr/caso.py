"""CASO, SmoothCASO and CAFO (Singla, Wallace, Feng, Feizi, ICML 2019): the Captum facade.

This module only speaks Captum: it formats inputs, targets and additional arguments, validates the
options into one frozen object (:class:`~captum_ext.attr.options.CASOOptions`), enforces the model
policy (:mod:`captum_ext._model_state`), chunks the batch and returns outputs shaped like the inputs.
Everything else is elsewhere, one idea per module:

* :mod:`~captum_ext.attr.engine`: one chunk's solve (path choice, guard on ``lambda2``, certificates);
* :mod:`~captum_ext.attr.curvature`: the registered curvature paths and the graph analysis that says
  which of them is exact for this model at this point;
* :mod:`~captum_ext.attr.solvers`: certified and paper solvers, the objective, the ``lambda1`` search;
* :mod:`~captum_ext.attr.details`: :class:`AttributionDetails` (``last_details``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor, nn

from .._autograd import math_attention_kernel
from .._format import (
    TargetLike,
    TensorOrTuple,
    expand_target,
    format_additional_args,
    format_inputs,
    format_output,
    repeat_additional_args,
    run_forward,
    select_additional_args,
)
from .._model_state import check_per_example, check_train_mode, refuse_train_mode_layers
from . import engine
from .curvature import paths
from .details import AttributionDetails
from .graph import (
    DEFAULT_RANK_TOL,
    LossGraph,
    build_loss_graph,
    loss_gradient_from_logits,
    unflatten_features,
)
from .options import CAFOOptions, CASOOptions, check_lambda1, matching_options
from .solvers import caso_objective, soft_threshold

#: values of ``hessian=``: ``"auto"`` and the registered curvature paths
HessianMode = Literal[("auto", *paths())]  # type: ignore[valid-type]
SolverMode = Literal["certified", "paper"]

__all__ = ["CAFO", "CASO", "AttributionDetails", "SmoothCASO"]


def _looks_like_probabilities(logits: Tensor) -> bool:
    out = logits.detach()
    return (
        out.shape[1] > 1
        and bool(((out >= 0) & (out <= 1)).all())
        and bool(((out.sum(1) - 1).abs() <= 1e-4).all())
    )


class _ContextAwareAttribution(GradientAttribution):
    """Shared plumbing of CASO and CAFO: validation, chunking, target handling, output shape."""

    #: copies of each example the loss is averaged over (SmoothCASO draws noisy copies)
    _samples = 1

    def __init__(self, forward_func: Callable[..., Tensor]) -> None:
        super().__init__(forward_func)
        self.last_details: AttributionDetails | None = None

    def _expand(
        self, inputs: tuple[Tensor, ...], args: tuple[Any, ...]
    ) -> tuple[tuple[Tensor, ...], tuple[Any, ...]]:
        """Inputs the loss is evaluated at: the inputs themselves (SmoothCASO adds noisy copies)."""
        return inputs, args

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    def has_convergence_delta(self) -> bool:
        return False

    # ------------------------------------------------------------------ driver
    def _run(
        self,
        inputs: TensorOrTuple,
        target: TargetLike,
        additional_forward_args: Any,
        grid_fn: Callable[[int, torch.device, torch.dtype], Tensor] | None,
        internal_batch_size: int | None,
        opts: CAFOOptions,
        sweep: bool,
    ) -> tuple[tuple[Tensor, ...], bool]:
        who = type(self).__name__
        tup, is_tuple = format_inputs(inputs)
        for i, x in enumerate(tup):
            if not x.is_floating_point():
                raise TypeError(f"inputs[{i}] must be floating point, got {x.dtype}")
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"inputs[{i}] contains NaN or infinite values")
        n = tup[0].shape[0]
        opts.check_batch(n)
        check_train_mode(self.forward_func, who)
        forward, compiled = _eager(self.forward_func)
        args = format_additional_args(additional_forward_args)
        if n == 0:
            raise ValueError("inputs hold no examples (batch size 0)")
        if internal_batch_size is not None and internal_batch_size < 1:
            raise ValueError(f"internal_batch_size must be >= 1, got {internal_batch_size}")
        chunk = n if internal_batch_size is None else internal_batch_size
        outs: list[tuple[Tensor, ...]] = []
        details: list[AttributionDetails] = []
        # the math attention kernel has a double backward (flash / efficient ones have none on CPU)
        with torch.enable_grad(), math_attention_kernel(), refuse_train_mode_layers(who):
            for start in range(0, n, chunk):
                idx = torch.arange(start, min(n, start + chunk), device=tup[0].device)
                xs = tuple(x.index_select(0, idx) for x in tup)
                a = select_additional_args(args, n, idx) if chunk < n else args
                xs_e, a_e = self._expand(xs, a)
                graph = build_loss_graph(forward, xs_e, a_e, None)
                check_per_example(forward, xs_e, a_e, graph.logits, who)
                if _looks_like_probabilities(graph.logits):
                    warnings.warn(
                        f"{who}: forward_func seems to return probabilities (rows in [0, 1] summing to 1); "
                        "the loss is the cross-entropy of softmax(output), so pass logits (or "
                        "log-probabilities) instead.",
                        stacklevel=3,
                    )
                t = expand_target(target, n, graph.logits.shape[1], graph.logits.device)
                if t is not None:
                    t = t.index_select(0, idx.to(t.device))
                elif self._samples > 1:  # explain the clean input's predicted class
                    with torch.no_grad():
                        t = run_forward(forward, xs, a).argmax(1)
                if t is not None:
                    graph.target = t.repeat_interleave(self._samples)
                chunk_opts = opts.for_examples(start, start + len(idx), n)
                flat, det = self._solve(graph, chunk_opts, grid_fn, forward, a_e)
                outs.append(unflatten_features(flat, xs))
                details.append(det)
        self.last_details = AttributionDetails.concat(details)
        if compiled:
            self.last_details.extra["compiled"] = compiled
        result = tuple(torch.cat([o[i] for o in outs]) for i in range(len(tup)))
        if sweep:  # (n, m, ...) -> (m, n, ...)
            result = tuple(r.movedim(1, 0) for r in result)
        return result, is_tuple


def _eager(forward_func: Callable[..., Tensor]) -> tuple[Callable[..., Tensor], str]:
    """A ``torch.compile``'d model's eager original (compiled graphs have no double backward)."""
    orig = getattr(forward_func, "_orig_mod", None) if isinstance(forward_func, nn.Module) else None
    orig = orig if orig is not None else getattr(forward_func, "_torchdynamo_orig_callable", None)
    if orig is None:
        return forward_func, ""
    return orig, "differentiated the eager original of the torch.compile'd model (same function)"


def _grid_fn(values: Sequence[float] | Tensor) -> Callable[[int, torch.device, torch.dtype], Tensor]:
    vals = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if vals.numel() == 0:
        raise ValueError("lambda1_values must hold at least one value")
    check_lambda1(vals)
    return lambda n, dev, dt: vals.to(dev, dt).expand(n, -1)


class CASO(_ContextAwareAttribution):
    r"""Context-Aware Second-Order interpretation (Singla et al., 2019, Def. 3).

    For each example, with ``l`` the cross-entropy at ``target`` (default: the predicted class),
    ``g`` its input-gradient and ``H`` its input Hessian, CASO returns the perturbation that maximises

    .. math:: g^T\Delta + \tfrac12 \Delta^T H \Delta - \lambda_1\|\Delta\|_1 - \lambda_2\|\Delta\|_2^2

    shaped like the inputs (``|Delta|`` with ``abs=True``). ``lambda2=None`` uses the paper's
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
      vector-Jacobian product each, :class:`~captum_ext.attr.gauss_newton.GaussNewtonHessian`): the
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
    ``lambda1 > 0`` by accelerated proximal gradient with a step from the curvature bound, adaptive
    restart and a certified stopping rule, up to ``max_iter`` iterations. An unconverged solve warns.
    Any observed curvature ``v.Hv > 2 lambda2 |v|^2`` proves the problem non-concave: with
    ``lambda2=None`` ``L`` is raised and the problem re-solved, an explicit ``lambda2`` raises
    ``ValueError``. ``solver="paper"`` runs the paper's algorithm exactly (``n_power_iter`` power
    iterations for ``L``, ``n_iter`` FISTA iterations with step ``lr`` and backtracking ``decay``;
    paper: 10, 10, 0.1, 0.5; step sizes per example) and reports, but does not enforce, its error.
    ``sparsity=(low, high)`` chooses ``lambda1`` per example by the paper's sparsity-ratio rule.

    After each call, :attr:`last_details` (:class:`AttributionDetails`) holds, per example, the
    ``lambda1``, ``lambda2``, sparsity, objective, top eigenvalue, rank, ``converged``,
    ``error_bound`` and ``iterations``.

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
        abs: bool = False,
        n_power_iter: int = 10,
        internal_batch_size: int | None = None,
        max_rank: int | None = None,
        max_memory: int | None = None,
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
            abs: return ``|Delta|`` (the paper's importance) instead of the signed ``Delta``.
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

        Returns:
            Attributions shaped like ``inputs`` (tuple in, tuple out).
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
            n_power_iter=n_power_iter,
            max_rank=max_rank,
            max_memory=max_memory,
        )
        out, is_tuple = self._run(
            inputs, target, additional_forward_args, None, internal_batch_size, opts, False
        )
        return format_output(is_tuple, tuple(o.abs() for o in out) if abs else out)

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
        :meth:`attribute` (except ``lambda1`` and ``sparsity``).

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
        out, is_tuple = self._run(
            inputs, target, additional_forward_args, grid_fn, internal_batch_size, opts, True
        )
        return format_output(is_tuple, tuple(o.abs() for o in out) if abs_ else out)

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


class CAFO(_ContextAwareAttribution):
    r"""Context-Aware First-Order interpretation (Singla et al., 2019, Def. 2).

    Maximises :math:`g^T\Delta - \lambda_1\|\Delta\|_1 - \lambda_2\|\Delta\|_2^2` per example, with
    ``g`` the input-gradient of the cross-entropy at ``target``. The problem is separable, so the
    optimum is exact in closed form for every ``lambda1``: ``Delta = soft(g, lambda1) / (2 lambda2)``
    (the paper runs FISTA; the closed form is its limit, at the cost of a single backward pass).
    ``lambda2=None`` means ``c1`` (paper: 10). ``sparsity=(low, high)`` picks ``lambda1`` per example
    by the sparsity-ratio rule of Sec. 4.1. SmoothCAFO is ``NoiseTunnel(CAFO(model))``.

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
            abs: return ``|Delta|`` instead of the signed ``Delta``.
            internal_batch_size: examples per chunk.

        Returns:
            Attributions shaped like ``inputs``.
        """
        opts = CAFOOptions(lambda1=lambda1, lambda2=lambda2, c1=c1, sparsity=sparsity)
        out, is_tuple = self._run(
            inputs, target, additional_forward_args, None, internal_batch_size, opts, False
        )
        return format_output(is_tuple, tuple(o.abs() for o in out) if abs else out)

    def sweep(
        self,
        inputs: TensorOrTuple,
        lambda1_values: Sequence[float] | Tensor,
        target: TargetLike = None,
        additional_forward_args: Any = None,
        *,
        lambda2: float | None = None,
        c1: float = 10.0,
        abs: bool = False,
        internal_batch_size: int | None = None,
    ) -> TensorOrTuple:
        """CAFO for several ``lambda1`` values; leading sweep dimension ``(m, *input.shape)``."""
        opts = CAFOOptions(lambda2=lambda2, c1=c1)
        grid_fn = _grid_fn(lambda1_values)
        out, is_tuple = self._run(
            inputs, target, additional_forward_args, grid_fn, internal_batch_size, opts, True
        )
        return format_output(is_tuple, tuple(o.abs() for o in out) if abs else out)

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
