"""CASO and CAFO (Singla, Wallace, Feng, Feizi, ICML 2019) as Captum attributions.

This module is plumbing only: input/target formatting, validation, batching and bookkeeping. The
maths lives in :mod:`captum_ext.attr.hessian` (input Hessians), :mod:`captum_ext.attr.solvers`
(Lanczos, certified CG and accelerated prox-gradient) and :mod:`captum_ext.attr.optim` (the paper's
FISTA, prox, lambda1 search).

Plugging in a curvature operator: ``CASO._operator(graph, mode, rank_tol, max_rank)`` returns a
``_Curvature(op, gradient, top, upper, lower, rank, n_vjp)``. ``op`` is anything with
``hvp(v) -> H v`` for ``v`` ``(n, d)`` or ``(n, m, d)`` (:class:`~captum_ext.attr.solvers.CurvatureOperator`).
``top=None`` makes ``_solve`` estimate ``L`` by Lanczos (``upper`` = Ritz value + residual); a known
``lower`` bound on ``lambda_min`` (``0.0`` for a PSD Gauss-Newton operator) sets the prox-gradient step.
A :class:`~captum_ext.attr.hessian.LowRankFactor` gets the Woodbury solve for ``lambda1 = 0``; any
other operator gets conjugate gradients.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor

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
from .cost_model import default_max_memory, expected_products, kept_ranks, plan_auto
from .gauss_newton import GaussNewtonHessian
from .hessian import (
    DEFAULT_RANK_TOL,
    ExactHessian,
    LossGraph,
    LowRankFactor,
    build_loss_graph,
    group_mean_factor,
    logit_curvature_gap,
    loss_gradient_from_logits,
    low_rank_factor,
    structural_curvature,
    unflatten_features,
)
from .optim import caso_objective, fista, soft_threshold, sparsity_ratio, sparsity_search
from .packed_factor import plan_rank_groups
from .solvers import (
    SolveResult,
    accelerated_prox_gradient,
    certify,
    conjugate_gradient,
    default_tol,
    lanczos_extremes,
)

HessianMode = Literal["auto", "closed_form", "gauss_newton", "exact"]
SolverMode = Literal["certified", "paper"]


@dataclass
class AttributionDetails:
    """What the last ``attribute`` call used and found, per example (``(n,)`` tensors).

    For :meth:`CASO.sweep` / :meth:`CAFO.sweep` the per-candidate fields are ``(n, m)``.

    Attributes:
        lambda1: l1 weight used (chosen by the sparsity search when ``sparsity`` was given).
        lambda2: l2 weight used (``L/2 + c1`` by default).
        sparsity: fraction of exactly-zero features of the solution (the paper's eta).
        objective: maximised objective ``g.D + 1/2 D.HD - lambda1|D|_1 - lambda2|D|^2`` at the solution.
        top_eigenvalue: ``L``, the largest eigenvalue of the input Hessian (0 for CAFO).
        rank: rank of the Hessian factor each example needed (closed form), else 0.
        hessian: ``"closed_form"``, ``"gauss_newton"``, ``"exact"`` or ``"none"`` (CAFO).
        target: class whose loss was explained.
        in_window: for the sparsity search, whether the chosen sparsity lies in the window.
        probe_gap: for ``hessian="auto"``, relative curvature of the logits along a random direction
            (zero for piecewise-linear nets; see :func:`captum_ext.attr.hessian.logit_curvature_gap`);
            None when the structural probe or the cache decided (``extra["probe"]``).
        n_hvp: Hessian-vector products evaluated by double backward (exact path).
        n_vjp: vector-Jacobian products (backward passes) used to build the closed-form factor.
        converged: whether the solution is certified to ``tol`` (see ``error_bound``).
        error_bound: certified bound on ``||Delta - Delta*|| / ||Delta||`` from the final residual
            (strong convexity; ``mu = 2 lambda2 - L``), for the problem with the Hessian operator used
            (closed form: the Gauss-Newton part truncated at ``rank_tol``, exact for piecewise-linear
            nets with ``rank_tol=0``). With a sparsity search: the worst over the candidates solved.
        iterations: solver iterations used (0 for closed forms).
        solver: ``"certified"``, ``"paper"`` (fixed iterations) or ``"closed_form"`` (CAFO).
        extra: notes, e.g. ``"auto"`` (the cost model's choice, predicted cost per path in backward
            passes, predicted memory, budget; see :meth:`~captum_ext.attr.cost_model.AutoPlan.summary`),
            ``"factor_groups"`` (sizes of the example groups the factor was built in, to fit
            ``max_memory`` or to pack ranks), ``"probe"`` (what told ``auto`` whether the net is
            piecewise linear: ``"structural"`` (its autograd graph, free), ``"cached"`` or
            ``"numeric (...)"`` (one double backward)), ``"fallback"`` (why ``auto`` took the closed
            form without a curvature probe),
            ``"binary_logistic"`` (single-logit model), ``"lambda2_raised"`` (times ``L`` was raised).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from captum_ext import CASO
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
        >>> caso = CASO(model)
        >>> x = torch.randn(2, 4, dtype=torch.float64)
        >>> delta = caso.attribute(x, target=0, sparsity=(0.5, 1.0))
        >>> d = caso.last_details
        >>> d.hessian, d.solver, d.extra["probe"]  # ReLU net: exact closed form, read off the graph
        ('closed_form', 'certified', 'structural')
        >>> d.converged.tolist(), bool((d.error_bound < 1e-6).all()), d.in_window.tolist()
        ([True, True], True, [True, True])
    """

    lambda1: Tensor
    lambda2: Tensor
    sparsity: Tensor
    objective: Tensor
    top_eigenvalue: Tensor
    rank: Tensor
    hessian: str
    target: Tensor
    in_window: Tensor | None = None
    probe_gap: Tensor | None = None
    n_hvp: int = 0
    n_vjp: int = 0
    converged: Tensor | None = None
    error_bound: Tensor | None = None
    iterations: Tensor | None = None
    solver: str = "certified"
    extra: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def concat(parts: Sequence[AttributionDetails]) -> AttributionDetails:
        """Join the details of consecutive chunks of a batch."""
        if len(parts) == 1:
            return parts[0]

        def cat(name: str) -> Tensor | None:
            vals = [getattr(p, name) for p in parts]
            return None if any(v is None for v in vals) else torch.cat(vals)

        modes = {p.hessian for p in parts}
        return AttributionDetails(
            lambda1=cat("lambda1"),
            lambda2=cat("lambda2"),
            sparsity=cat("sparsity"),
            objective=cat("objective"),
            top_eigenvalue=cat("top_eigenvalue"),
            rank=cat("rank"),
            hessian=modes.pop() if len(modes) == 1 else "mixed",
            target=cat("target"),
            in_window=cat("in_window"),
            probe_gap=cat("probe_gap"),
            n_hvp=sum(p.n_hvp for p in parts),
            n_vjp=sum(p.n_vjp for p in parts),
            converged=cat("converged"),
            error_bound=cat("error_bound"),
            iterations=cat("iterations"),
            solver=parts[0].solver,
            extra={k: v for p in parts for k, v in p.extra.items()},
        )


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

    # ------------------------------------------------------------------ checks
    def _check_model_mode(self) -> None:
        check_train_mode(self.forward_func, type(self).__name__)

    @staticmethod
    def _check_common(inputs: tuple[Tensor, ...], lambda1: Any, c1: float, lambda2: Any = None) -> None:
        for i, x in enumerate(inputs):
            if not x.is_floating_point():
                raise TypeError(f"inputs[{i}] must be floating point, got {x.dtype}")
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"inputs[{i}] contains NaN or infinite values")
        _check_lambda1(lambda1)
        lam1 = torch.as_tensor(lambda1)
        if lam1.numel() not in (1, inputs[0].shape[0]) or lam1.dim() > 1:
            raise ValueError(
                f"lambda1 must be a number or a 1-d tensor with one value per example "
                f"({inputs[0].shape[0]}), got shape {tuple(lam1.shape)}"
            )
        if not math.isfinite(c1) or c1 <= 0:
            raise ValueError(f"c1 must be a positive number, got {c1}")
        if lambda2 is not None:
            if isinstance(lambda2, bool) or not isinstance(lambda2, (int, float)):
                raise TypeError(f"lambda2 must be a number or None, got {type(lambda2).__name__}")
            if not math.isfinite(lambda2) or lambda2 <= 0:
                raise ValueError(f"lambda2 must be a finite positive number (or None), got {lambda2}")

    @staticmethod
    def _check_sparsity(sparsity: tuple[float, float] | None) -> None:
        if sparsity is None:
            return
        if not isinstance(sparsity, (tuple, list)):
            raise TypeError(
                f"sparsity must be a window (low, high), e.g. (0.75, 1.0), not {sparsity!r}; "
                "for a target sparsity s use (s, 1.0)"
            )
        if len(sparsity) != 2 or not 0.0 <= sparsity[0] < sparsity[1] <= 1.0:
            raise ValueError(
                f"sparsity must be a window (low, high) with 0 <= low < high <= 1, got {sparsity}"
            )

    # ------------------------------------------------------------------ driver
    def _run(
        self,
        inputs: TensorOrTuple,
        target: TargetLike,
        additional_forward_args: Any,
        lambda1_grid: Callable[[int, torch.device, torch.dtype], Tensor] | None,
        internal_batch_size: int | None,
        solve_kwargs: dict[str, Any],
        sweep: bool,
    ) -> tuple[tuple[Tensor, ...], bool]:
        tup, is_tuple = format_inputs(inputs)
        self._check_common(tup, solve_kwargs["lambda1"], solve_kwargs["c1"], solve_kwargs["lambda2"])
        self._check_model_mode()
        args = format_additional_args(additional_forward_args)
        n = tup[0].shape[0]
        if n == 0:
            raise ValueError("inputs hold no examples (batch size 0)")
        if internal_batch_size is not None and internal_batch_size < 1:
            raise ValueError(f"internal_batch_size must be >= 1, got {internal_batch_size}")
        chunk = n if internal_batch_size is None else internal_batch_size
        outs: list[tuple[Tensor, ...]] = []
        details: list[AttributionDetails] = []
        lam1_all = torch.as_tensor(solve_kwargs["lambda1"], dtype=torch.float64)
        # the math attention kernel has a double backward (flash / efficient ones have none on CPU)
        math_kernel = solve_kwargs.get("hessian", "closed_form") != "closed_form"
        kernel = math_attention_kernel() if math_kernel else contextlib.nullcontext()
        with torch.enable_grad(), kernel, refuse_train_mode_layers(type(self).__name__):
            for start in range(0, n, chunk):
                idx = torch.arange(start, min(n, start + chunk), device=tup[0].device)
                xs = tuple(x.index_select(0, idx) for x in tup)
                a = select_additional_args(args, n, idx) if chunk < n else args
                xs_e, a_e = self._expand(xs, a)
                graph = build_loss_graph(self.forward_func, xs_e, a_e, None)
                check_per_example(self.forward_func, xs_e, a_e, graph.logits, type(self).__name__)
                if _looks_like_probabilities(graph.logits):
                    warnings.warn(
                        f"{type(self).__name__}: forward_func seems to return probabilities (rows in [0, 1] "
                        "summing to 1); the loss is the cross-entropy of softmax(output), so pass logits "
                        "(or log-probabilities) instead.",
                        stacklevel=3,
                    )
                if lam1_all.dim() == 1 and lam1_all.numel() == n:
                    solve_kwargs = {**solve_kwargs, "lambda1": lam1_all[start : start + len(idx)]}
                t = expand_target(target, n, graph.logits.shape[1], graph.logits.device)
                if t is not None:
                    t = t.index_select(0, idx.to(t.device))
                elif self._samples > 1:  # explain the clean input's predicted class
                    with torch.no_grad():
                        t = run_forward(self.forward_func, xs, a).argmax(1)
                if t is not None:
                    graph.target = t.repeat_interleave(self._samples)
                self._chunk_args = a_e
                flat, det = self._solve(graph, lambda1_grid, **solve_kwargs)
                outs.append(unflatten_features(flat, xs))
                details.append(det)
        self.last_details = AttributionDetails.concat(details)
        result = tuple(torch.cat([o[i] for o in outs]) for i in range(len(tup)))
        if sweep:  # (n, m, ...) -> (m, n, ...)
            result = tuple(r.movedim(1, 0) for r in result)
        return result, is_tuple

    @staticmethod
    def _resolve_lambda2(lambda2: float | None, c1: float, top: Tensor, name: str) -> Tensor:
        if lambda2 is None:
            return top / 2.0 + c1
        lam2 = torch.full_like(top, float(lambda2))
        bad = lam2 <= top / 2.0
        if bool(bad.any()):
            worst = float(top[bad].max())
            raise ValueError(
                f"{name}: lambda2={lambda2} is too small for a concave objective; it must exceed "
                f"L/2 where L is the top eigenvalue of the input Hessian (here up to {worst:.4g}, "
                f"so lambda2 > {worst / 2:.4g}). Use lambda2=None for the paper's L/2 + c1."
            )
        return lam2

    @staticmethod
    def _search_or_solve(
        solve: Callable[[Tensor], tuple[Tensor, Tensor]],
        g: Tensor,
        lambda1: float | Tensor,
        lambda1_grid: Tensor | None,
        sparsity: tuple[float, float] | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """Returns ``delta, objective, lambda1, sparsity, in_window`` for one of the three modes."""
        n = g.shape[0]
        if sparsity is not None:
            res = sparsity_search(solve, g.abs().amax(1), sparsity)
            return res.delta, res.objective, res.lambda1, res.sparsity, res.in_window
        if lambda1_grid is not None:
            delta, obj = solve(lambda1_grid)
            return delta, obj, lambda1_grid, sparsity_ratio(delta), None
        lam = torch.as_tensor(lambda1, dtype=g.dtype, device=g.device).reshape(-1, 1).expand(n, 1)
        delta, obj = solve(lam)
        return delta[:, 0], obj[:, 0], lam[:, 0], sparsity_ratio(delta[:, 0]), None


def _check_lambda1(lambda1: Any) -> None:
    lam = torch.as_tensor(lambda1, dtype=torch.float64)
    if not bool(torch.isfinite(lam).all()) or bool((lam < 0).any()):
        raise ValueError(f"lambda1 must be finite and >= 0, got {lambda1}")


def _grid_tensor(values: Sequence[float] | Tensor) -> Tensor:
    vals = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if vals.numel() == 0:
        raise ValueError("lambda1_values must hold at least one value")
    _check_lambda1(vals)
    return vals


#: Lanczos for ``L`` on matrix-free operators: relative Ritz residual and step cap. The eigenvalue error
#: is about residual^2 / gap, and the solve's guard catches any underestimate (see ``_solve``).
LANCZOS_TOL = 1e-4
LANCZOS_MAX_ITER = 64


@dataclass
class _Curvature:
    """A curvature operator (anything with ``hvp``) with its gradient and spectral estimates."""

    op: Any
    gradient: Tensor
    top: Tensor | None  # best estimate of L (exact for the closed form)
    upper: Tensor | None  # estimate used in the error bounds (Lanczos: Ritz value + residual)
    lower: Tensor | float | None  # estimate of lambda_min (for the prox-gradient step), None: unknown
    rank: Tensor
    n_vjp: int


def _lanczos_start(g: Tensor) -> Tensor:
    """The gradient (close to the top eigenvector at high confidence, paper Thm. 4) plus a fixed
    direction shared by all examples, so that no eigen-direction is missed and results do not depend
    on the batch."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    r = torch.randn(1, g.shape[1], generator=gen, dtype=g.dtype).to(g.device)
    unit = g / g.norm(dim=1, keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)
    return unit + 0.3 * r / r.norm()


def _certified(delta, h_delta, g, lam1, lam2, upper, iterations: int, n_hvp: int) -> SolveResult:
    """A :class:`SolveResult` for a solution found by another route (closed form, fixed iterations)."""
    bound, nonconcave, rq = certify(delta, h_delta, g, lam1, lam2, upper)
    tol = default_tol(delta.dtype)
    iters = torch.full_like(bound, iterations, dtype=torch.long)
    return SolveResult(delta, h_delta, (bound <= tol) & ~nonconcave, bound, iters, nonconcave, rq, n_hvp)


def _warn_unconverged(conv: Tensor, bound: Tensor, tol: float, iters: int, paper: bool) -> None:
    if bool(conv.all()):
        return
    k, total = int((~conv).sum()), conv.numel()
    worst = float(bound[~conv].max())
    how = f"after the fixed {iters} iterations of solver='paper'" if paper else f"within max_iter={iters}"
    warnings.warn(
        f"CASO: {k} of {total} solves did not reach the relative tolerance {tol:g} {how}; their "
        f"certified relative error is up to {worst:.3g} (last_details.error_bound). Raise max_iter, or "
        "lambda2 / c1 (a larger margin above L/2 converges faster).",
        stacklevel=5,
    )


_CASO_DEFAULTS: dict[str, Any] = dict(
    lambda1=0.0,
    lambda2=None,
    c1=10.0,
    solver="certified",
    tol=None,
    max_iter=1000,
    n_iter=None,
    lr=0.1,
    decay=0.5,
    hessian="auto",
    rank_tol=DEFAULT_RANK_TOL,
    sparsity=None,
    n_power_iter=10,
    max_rank=None,
    max_memory=None,
)


def _caso_kwargs(**kwargs: Any) -> dict[str, Any]:
    """Validate CASO's solver options (the input-dependent ones are checked in ``_run``)."""
    unknown = set(kwargs) - set(_CASO_DEFAULTS)
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {sorted(unknown)}")
    kw = {**_CASO_DEFAULTS, **kwargs}
    _ContextAwareAttribution._check_sparsity(kw["sparsity"])
    if kw["hessian"] not in ("auto", "closed_form", "gauss_newton", "exact"):
        raise ValueError(
            f"hessian must be 'auto', 'closed_form', 'gauss_newton' or 'exact', got {kw['hessian']!r}"
        )
    if kw["max_memory"] is not None and (int(kw["max_memory"]) != kw["max_memory"] or kw["max_memory"] < 1):
        raise ValueError(f"max_memory must be a positive number of bytes or None, got {kw['max_memory']}")
    if kw["solver"] not in ("certified", "paper"):
        raise ValueError(f"solver must be 'certified' or 'paper', got {kw['solver']!r}")
    if kw["solver"] == "paper":
        if kw["n_iter"] is not None and (int(kw["n_iter"]) != kw["n_iter"] or kw["n_iter"] < 1):
            raise ValueError(f"n_iter must be a positive integer (FISTA iterations), got {kw['n_iter']}")
        if not kw["lr"] > 0:
            raise ValueError(f"lr must be positive, got {kw['lr']}")
    elif kw["n_iter"] is not None:
        raise ValueError(
            "n_iter is the fixed iteration count of solver='paper'; the certified solver stops on "
            "tol and max_iter"
        )
    if not 0.0 < kw["decay"] < 1.0:
        raise ValueError(f"decay must lie in (0, 1), got {kw['decay']}")
    if int(kw["max_iter"]) != kw["max_iter"] or kw["max_iter"] < 1:
        raise ValueError(f"max_iter must be a positive integer, got {kw['max_iter']}")
    if kw["tol"] is not None and not 0.0 < kw["tol"] < 1.0:
        raise ValueError(f"tol must lie in (0, 1), got {kw['tol']}")
    if kw["max_rank"] is not None and (int(kw["max_rank"]) != kw["max_rank"] or kw["max_rank"] < 1):
        raise ValueError(f"max_rank must be a positive integer or None, got {kw['max_rank']}")
    if int(kw["n_power_iter"]) != kw["n_power_iter"] or kw["n_power_iter"] < 1:
        raise ValueError(f"n_power_iter must be a positive integer, got {kw['n_power_iter']}")
    return kw


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
      correct); when it cannot tell, one double-backward probe
      tells piecewise-linear nets from curved ones (only ``"exact"`` is correct), and its answer is kept
      per input signature for later calls (:meth:`forget_probe`); then the cost model
      (:mod:`~captum_ext.attr.cost_model`) takes the correct path with the least predicted work that
      fits ``max_memory``, and reports its choice and predictions in ``last_details.extra["auto"]``.
      Layers without a double-backward kernel (e.g. ``Hardsigmoid``) skip the probe and assume a
      piecewise-linear net, with a warning and a note in ``last_details.extra["fallback"]``.

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
        kw = _caso_kwargs(
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
            inputs, target, additional_forward_args, None, internal_batch_size, kw, sweep=False
        )
        if abs:
            out = tuple(o.abs() for o in out)
        return format_output(is_tuple, out)

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
        grid = _grid_tensor(lambda1_values)
        abs_ = kwargs.pop("abs", False)
        internal_batch_size = kwargs.pop("internal_batch_size", None)
        kw = _caso_kwargs(**kwargs)
        out, is_tuple = self._run(
            inputs,
            target,
            additional_forward_args,
            lambda n, dev, dt: grid.to(dev, dt).expand(n, -1),
            internal_batch_size,
            kw,
            sweep=True,
        )
        if abs_:
            out = tuple(o.abs() for o in out)
        return format_output(is_tuple, out)

    # ------------------------------------------------------------------ maths glue
    def _operator(self, graph: LossGraph, mode: str, rank_tol: float, max_rank: int | None) -> _Curvature:
        """Build the curvature operator and its spectral bounds for ``mode``."""
        s = self._samples
        if mode == "closed_form":
            per_copy = low_rank_factor(graph, rank_tol=rank_tol, max_rank=max_rank)
            factor = group_mean_factor(per_copy, s)
            top = factor.top_eigenvalue()
            return _Curvature(factor, factor.gradient, top, top, 0.0, factor.rank, per_copy.B.shape[2] + 1)
        if mode == "gauss_newton":  # PSD: lambda_min >= 0
            gn = GaussNewtonHessian(graph, samples=s)
            rank = torch.zeros(graph.n // s, dtype=torch.long, device=graph.logits.device)
            return _Curvature(gn, gn.gradient, None, None, 0.0, rank, 2)
        exact = ExactHessian(graph, samples=s)
        n = graph.n // s
        rank = torch.zeros(n, dtype=torch.long, device=graph.logits.device)
        # top=None: L by Lanczos (or power iteration for solver="paper"); lower=None: H may be indefinite
        return _Curvature(exact, exact.gradient, None, None, None, rank, 1)

    def _solve(
        self,
        graph: LossGraph,
        lambda1_grid,
        *,
        lambda1,
        lambda2,
        c1,
        solver,
        tol,
        max_iter,
        n_iter,
        lr,
        decay,
        hessian,
        rank_tol,
        sparsity,
        n_power_iter,
        max_rank,
        max_memory,
    ):
        dtype, device = graph.dtype, graph.logits.device
        s = self._samples
        budget = default_max_memory(device) if max_memory is None else int(max_memory)
        mode, probe_gap, extra = self._choose_mode(graph, hessian)
        if hessian == "auto":
            n_values = 1 if lambda1_grid is None else lambda1_grid(1, device, dtype).shape[1]
            zero = sparsity is None and bool((torch.as_tensor(lambda1) == 0).all()) and lambda1_grid is None
            products = expected_products(n_values, zero, solver, n_power_iter, n_iter or 10)
            d = sum(x[0].numel() for x in graph.inputs)
            size, pl = graph.logits.element_size(), mode == "closed_form"
            plan = plan_auto(graph.probs, d, size, pl, products, budget, rank_tol=rank_tol)
            extra["auto"] = plan.summary()
            mode = plan.path
            if plan.predictions[mode].memory > budget:
                warnings.warn(
                    f"CASO(hessian='auto'): no correct path is predicted to fit max_memory={budget} bytes; "
                    f"took {mode!r}, predicted {plan.predictions[mode].memory} bytes.",
                    stacklevel=5,
                )
        if mode == "closed_form" and s == 1:
            groups = self._factor_groups(graph, rank_tol, max_rank, budget)
            if groups is not None:
                kw = dict(lambda1=lambda1, lambda2=lambda2, c1=c1, solver=solver, tol=tol, max_iter=max_iter)
                kw.update(n_iter=n_iter, lr=lr, decay=decay, rank_tol=rank_tol, sparsity=sparsity)
                kw.update(n_power_iter=n_power_iter, max_rank=max_rank, max_memory=None)
                return self._solve_groups(graph, groups, lambda1_grid, kw, extra)
        curv = self._operator(graph, mode, rank_tol, max_rank)
        op, g = curv.op, curv.gradient
        n = g.shape[0]
        tol = default_tol(dtype) if tol is None else tol
        paper = solver == "paper"
        n_hvp0 = getattr(op, "n_hvp", 0)
        try:
            if curv.top is None:  # matrix-free operator: estimate the spectrum
                if paper:
                    curv.top = op.top_eigenvalue(n_power_iter)
                    curv.upper = curv.top
                else:
                    start = _lanczos_start(g)
                    lz = lanczos_extremes(op.hvp, start, tol=LANCZOS_TOL, max_iter=LANCZOS_MAX_ITER)
                    curv.top, curv.upper = lz.top.clamp_min(0), lz.upper.clamp_min(0)
                    curv.lower = lz.bottom if curv.lower is None else curv.lower
            grid = None if lambda1_grid is None else lambda1_grid(n, device, dtype)
            raised = 0
            top = curv.top
            while True:
                lam2 = self._resolve_lambda2(lambda2, c1, top, "CASO")
                stats: list[SolveResult] = []
                solve = self._make_solve(curv, g, lam2, stats, paper, tol, max_iter, n_iter, lr, decay)
                delta, obj, lam1, eta, in_window = self._search_or_solve(solve, g, lambda1, grid, sparsity)
                bad = torch.stack([st.nonconcave.reshape(n, -1).any(1) for st in stats]).any(0)
                if not bool(bad.any()):
                    break
                seen = torch.stack([st.rayleigh_max.reshape(n, -1).amax(1) for st in stats]).amax(0)
                if lambda2 is not None:
                    raise ValueError(
                        f"CASO: lambda2={lambda2} makes the problem non-concave: a direction v with "
                        f"v.Hv / v.v = {float(seen[bad].max()):.4g} > 2 lambda2 was found (the Hessian's top "
                        f"eigenvalue L is at least that, above the estimate {float(top[bad].max()):.4g}). "
                        "Use a larger lambda2 or lambda2=None."
                    )
                if raised == 3:  # pragma: no cover - needs an operator whose spectrum keeps growing
                    raise RuntimeError("CASO: could not find a lambda2 that makes the problem concave")
                raised += 1
                top = torch.where(bad, torch.maximum(top, seen) * (1 + 1e-3), top)
                curv.upper = torch.maximum(curv.upper, top)
        except RuntimeError as err:
            if "not implemented" in str(err) and mode == "exact":
                raise RuntimeError(
                    "CASO(hessian='exact') needs the double backward of every layer, which this model "
                    f"lacks ({err}). Use hessian='closed_form' (the Gauss-Newton Hessian, exact for "
                    "piecewise-linear nets)."
                ) from err
            raise
        if raised:
            extra["lambda2_raised"] = raised
        op_release = getattr(op, "release", None)
        if callable(op_release):
            op_release()
        else:
            graph.release()
        conv = torch.cat([st.converged.reshape(n, -1) for st in stats], 1)
        bound = torch.cat([st.error_bound.reshape(n, -1) for st in stats], 1)
        iters = torch.cat([st.iterations.reshape(n, -1) for st in stats], 1)
        if grid is None or sparsity is not None:  # one value per example: worst over the candidates
            conv, bound, iters = conv.all(1), bound.amax(1), iters.amax(1)
        _warn_unconverged(conv, bound, tol, max_iter if not paper else n_iter or 10, paper)
        details = AttributionDetails(
            lambda1=lam1.detach(),
            lambda2=lam2.detach(),
            sparsity=eta.detach(),
            objective=obj.detach(),
            top_eigenvalue=top.detach(),
            rank=curv.rank,
            hessian=mode,
            target=graph.target[::s],
            in_window=in_window,
            probe_gap=None if probe_gap is None else probe_gap.reshape(n, s).amax(1),
            n_hvp=getattr(op, "n_hvp", 0) - n_hvp0,
            n_vjp=curv.n_vjp,
            converged=conv,
            error_bound=bound,
            iterations=iters,
            solver=solver,
            extra=extra,
        )
        return delta.detach(), details

    @staticmethod
    def _factor_groups(
        graph: LossGraph, rank_tol: float, max_rank: int | None, budget: int
    ) -> list[Tensor] | None:
        """Groups of examples whose factors fit ``budget`` (None when the whole batch fits)."""
        d, size = sum(x[0].numel() for x in graph.inputs), graph.logits.element_size()
        try:  # the O(c log c) rank bound first; exact ranks only if it seems not to fit
            plan = plan_rank_groups(kept_ranks(graph.probs, rank_tol, max_rank), d, size, budget)
        except ValueError:
            plan = plan_rank_groups(kept_ranks(graph.probs, rank_tol, max_rank, exact=True), d, size, budget)
        return plan.groups if len(plan.groups) > 1 else None

    def _solve_groups(self, graph, groups, lambda1_grid, kw, extra) -> tuple[Tensor, AttributionDetails]:
        """Solve each group of examples on its own forward graph; results in the batch's order."""
        n = graph.n
        lam1 = torch.as_tensor(kw["lambda1"])
        deltas, parts = [], []
        for idx in groups:
            i = idx.to(graph.logits.device)
            xs = tuple(x.detach().index_select(0, i) for x in graph.inputs)
            args = select_additional_args(self._chunk_args, n, i)
            sub = build_loss_graph(self.forward_func, xs, args, graph.target.index_select(0, i))
            sub_kw = {**kw, "lambda1": lam1[idx] if lam1.dim() == 1 else kw["lambda1"]}
            delta, det = self._solve(sub, lambda1_grid, hessian="closed_form", **sub_kw)
            deltas.append(delta)
            parts.append(det)
        graph.release()
        inverse = torch.argsort(torch.cat(groups)).to(graph.logits.device)
        det = AttributionDetails.concat(parts)
        for name in ("lambda1", "lambda2", "sparsity", "objective", "top_eigenvalue", "rank", "target"):
            setattr(det, name, getattr(det, name).index_select(0, inverse.to(getattr(det, name).device)))
        for name in ("in_window", "probe_gap", "converged", "error_bound", "iterations"):
            val = getattr(det, name)
            if val is not None:
                setattr(det, name, val.index_select(0, inverse.to(val.device)))
        det.extra = {**extra, **det.extra, "factor_groups": [len(g) for g in groups]}
        return torch.cat(deltas).index_select(0, inverse), det

    def _choose_mode(self, graph: LossGraph, hessian: str) -> tuple[str, Tensor | None, dict[str, Any]]:
        extra: dict[str, Any] = {}
        if graph.binary:
            extra["binary_logistic"] = True
        if hessian != "auto":
            return hessian, None, extra
        # free and sound: every input-dependent node of the graph is a known piecewise-linear operation
        kind, names = structural_curvature(graph)
        if kind == "piecewise_linear":
            extra["probe"] = "structural"
            return "closed_form", None, extra
        if kind == "smooth":  # curved for sure, and differentiable twice: no probe needed
            extra["probe"] = f"structural (smooth: {', '.join(sorted(set(names)))})"
            return "exact", None, extra
        reason = names[0]
        key = tuple((tuple(x.shape[1:]), x.dtype, x.device) for x in graph.inputs)
        cache = self.__dict__.setdefault("_probe_cache", {})
        if key in cache:  # the model's curvature was probed on an earlier call with these inputs
            extra["probe"] = "cached"
            return cache[key], None, extra
        extra["probe"] = f"numeric (graph has {reason})"
        n, dtype, device = graph.n, graph.dtype, graph.logits.device
        gen = torch.Generator(device="cpu").manual_seed(0)
        d = sum(x[0].numel() for x in graph.inputs)
        c = graph.logits.shape[1]
        v = torch.randn(n, d, generator=gen, dtype=dtype).to(device)
        # zero-sum cotangents: the loss only sees logits up to a per-example shift (log_softmax heads)
        w = torch.randn(n, c, generator=gen, dtype=dtype).to(device)
        w = w - w.mean(1, keepdim=True)
        try:
            probe_gap = logit_curvature_gap(graph, v, w).detach()
        except RuntimeError as err:
            if "not implemented" not in str(err):
                raise
            extra["fallback"] = (
                f"no double backward ({str(err).splitlines()[0]}); used the closed-form Gauss-Newton "
                "Hessian, exact only for piecewise-linear nets"
            )
            warnings.warn(f"CASO(hessian='auto'): {extra['fallback']}.", stacklevel=5)
            return "closed_form", None, extra
        tol = 1e-4 if dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-9
        cache[key] = "closed_form" if bool((probe_gap <= tol).all()) else "exact"
        return cache[key], probe_gap, extra

    def forget_probe(self) -> None:
        """Probe the model's curvature again on the next ``hessian="auto"`` call.

        ``auto`` probes once per input signature (shapes, dtypes, devices) and keeps the answer
        (piecewise linear or curved) for the life of this object: call this after changing the
        model's activations, or use a new :class:`CASO`.
        """
        self.__dict__.pop("_probe_cache", None)

    @staticmethod
    def _make_solve(curv, g, lam2, stats, paper, tol, max_iter, n_iter, lr, decay):
        op = curv.op
        factor = op if isinstance(op, LowRankFactor) else None

        def solve(lams: Tensor) -> tuple[Tensor, Tensor]:
            gm = g[:, None, :].expand(-1, lams.shape[1], -1)
            l2 = lam2[:, None, None]
            l1 = lams[:, :, None]
            upper = curv.upper[:, None, None]
            if paper:
                res = fista(gm, op.hvp, l1, l2, n_iter=n_iter or 10, lr=lr, decay=decay, monotone=False)
                st = _certified(res.delta, res.h_delta, gm, l1, l2, upper, n_iter or 10, res.n_hvp)
            elif factor is not None and bool((lams == 0).all()):
                delta = factor.solve_shifted(g, lam2)[:, None, :].expand_as(gm)
                st = _certified(delta, factor.hvp(delta), gm, l1, l2, upper, 0, 0)
            elif bool((lams == 0).all()):
                st = conjugate_gradient(gm, op.hvp, l2, l_upper=upper, tol=tol, max_iter=max_iter)
            else:
                lower = curv.lower[:, None, None] if isinstance(curv.lower, Tensor) else 0.0
                st = accelerated_prox_gradient(
                    gm, op.hvp, l1, l2, l_upper=upper, l_lower=lower, tol=tol, max_iter=max_iter, decay=decay
                )
            stats.append(st)
            return st.delta, caso_objective(st.delta, st.h_delta, gm, l1, l2)

        return solve


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
        self._check_sparsity(sparsity)
        if lambda2 is not None and not lambda2 > 0:
            raise ValueError(f"CAFO: lambda2 must be > 0 for a concave objective, got {lambda2}")
        kw = dict(lambda1=lambda1, lambda2=lambda2, c1=c1, sparsity=sparsity)
        out, is_tuple = self._run(
            inputs, target, additional_forward_args, None, internal_batch_size, kw, sweep=False
        )
        if abs:
            out = tuple(o.abs() for o in out)
        return format_output(is_tuple, out)

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
        grid = _grid_tensor(lambda1_values)
        kw = dict(lambda1=0.0, lambda2=lambda2, c1=c1, sparsity=None)
        out, is_tuple = self._run(
            inputs,
            target,
            additional_forward_args,
            lambda n, dev, dt: grid.to(dev, dt).expand(n, -1),
            internal_batch_size,
            kw,
            sweep=True,
        )
        if abs:
            out = tuple(o.abs() for o in out)
        return format_output(is_tuple, out)

    def _solve(self, graph: LossGraph, lambda1_grid, *, lambda1, lambda2, c1, sparsity):
        n = graph.n
        dtype, device = graph.dtype, graph.logits.device
        # g = J^T (p - e_t) with p_t - 1 formed without cancellation (accurate in float32 at p ~ 1)
        g = loss_gradient_from_logits(graph)
        graph.release()
        top = torch.zeros(n, dtype=dtype, device=device)
        lam2 = top + (c1 if lambda2 is None else float(lambda2))
        grid = None if lambda1_grid is None else lambda1_grid(n, device, dtype)

        def solve(lams: Tensor) -> tuple[Tensor, Tensor]:
            gm = g[:, None, :]
            l1 = lams[:, :, None]
            l2 = lam2[:, None, None]
            delta = soft_threshold(gm, l1) / (2.0 * l2)
            return delta, caso_objective(delta, None, gm, l1, l2)

        delta, obj, lam1, eta, in_window = self._search_or_solve(solve, g, lambda1, grid, sparsity)
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
