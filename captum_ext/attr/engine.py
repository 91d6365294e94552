"""CASO's solve for one chunk of a batch: pick an exact curvature path, build it, solve, certify.

The steps, each in one place:

1. :func:`~captum_ext.attr.curvature.analyse_graph` decides, for this graph at this point, whether the
   logits are curved and whether second derivatives are real (once per call: curvature depends on the
   point, so nothing is cached across calls).
2. :func:`choose_path` asks every registered path whether it is exact here. An explicit ``hessian=``
   that is not exact is **refused** (:class:`CurvaturePathError`): a certified wrong answer is never
   returned. ``"auto"`` lets the cost model pick the cheapest exact path within ``max_memory``; when no
   path is exact the error says why and what would work.
3. :func:`solve` builds the operator, estimates ``L`` where the path does not know it, resolves
   ``lambda2`` (raising ``L`` when a solve proves the problem non-concave), runs the solver
   (:mod:`~captum_ext.attr.solvers`) and fills :class:`~captum_ext.attr.details.AttributionDetails`.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._autograd import is_missing_double_backward
from .._format import select_additional_args
from .cost_model import DEFAULT_COSTS, default_max_memory, expected_products, kept_ranks, plan_auto
from .curvature import Curvature, GraphAnalysis, analyse_graph, get_path, paths
from .curvature.closed_form import LowRankFactor
from .details import AttributionDetails
from .graph import LossGraph, build_loss_graph
from .options import CASOOptions
from .packed_factor import factor_memory, plan_rank_groups
from .solvers import (
    SolveResult,
    accelerated_prox_gradient,
    caso_objective,
    certify,
    conjugate_gradient,
    default_tol,
    fista,
    lanczos_extremes,
    lanczos_solve,
    sparsity_ratio,
    sparsity_search,
)
from .sparse_dual import sparse_dual_solve

#: Lanczos for ``L`` on matrix-free operators: relative Ritz residual and step cap. The eigenvalue error
#: is about residual^2 / gap, and the solve's guard catches any underestimate (see :func:`solve`).
LANCZOS_TOL = 1e-4
LANCZOS_MAX_ITER = 64

#: a solver for one batch of lambda1 values ``(n, m)`` -> ``(delta (n, m, d), objective (n, m))``
Solve = Callable[[Tensor], tuple[Tensor, Tensor]]


class CurvaturePathError(RuntimeError):
    """No curvature path computes the exact input Hessian of this model here, or the one asked for
    does not: the message says why and what would work."""


def _what_would_work(analysis: GraphAnalysis) -> str:
    return (
        f"No Hessian path is exact for this model at these inputs: the logits are curved "
        f"({analysis.curved_because}) and {analysis.no_double_backward_because}. What would work: give "
        "every curved layer a real second derivative (e.g. torch.clamp(x / 6 + 0.5, 0, 1) instead of "
        "nn.Hardsigmoid; a custom autograd.Function whose backward uses differentiable operations "
        "instead of @once_differentiable; the eager model instead of a torch.compile'd one, "
        "model._orig_mod), or a first-order method such as CAFO."
    )


def choose_path(
    graph: LossGraph, analysis: GraphAnalysis, opts: CASOOptions, n_values: int, budget: int, who: str
) -> tuple[str, dict[str, Any]]:
    """The path to use for ``graph`` and notes for ``last_details.extra``; refuses inexact paths."""
    exact = [name for name, path in paths().items() if path.not_exact_because(analysis) is None]
    if opts.hessian != "auto":
        reason = get_path(opts.hessian).not_exact_because(analysis)
        if reason is not None:
            advice = (
                f"Paths exact here: {exact} (hessian='auto' picks the cheapest)."
                if exact
                else _what_would_work(analysis)
            )
            raise CurvaturePathError(
                f"{who}(hessian={opts.hessian!r}) is refused: it is not exact for this model at these "
                f"inputs, because {reason} ({analysis.probe}). {advice}"
            )
        return opts.hessian, {}
    if not exact:
        raise CurvaturePathError(f"{who}(hessian='auto'): {_what_would_work(analysis)}")
    start = time.perf_counter()
    zero = opts.sparsity is None and n_values == 1 and bool((torch.as_tensor(opts.lambda1) == 0).all())
    products = expected_products(n_values, zero, opts.solver, opts.n_power_iter, opts.paper_iterations)
    d = sum(x[0].numel() for x in graph.inputs)
    plan = plan_auto(
        graph.probs,
        d,
        graph.logits.element_size(),
        analysis.zero_curvature,
        products,
        budget,
        rank_tol=opts.rank_tol,
        exact=exact,
    )
    if plan.predictions[plan.path].memory > budget:
        warnings.warn(
            f"{who}(hessian='auto'): no exact path is predicted to fit max_memory={budget} bytes; "
            f"took {plan.path!r}, predicted {plan.predictions[plan.path].memory} bytes.",
            stacklevel=6,
        )
    # planning reads only the softmax probabilities the graph holds (a c-sized eigen-bound per example)
    return plan.path, {"auto": {**plan.summary(), "planning_s": time.perf_counter() - start}}


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


def _warn_unconverged(conv: Tensor, bound: Tensor, tol: float, iters: int, paper: bool, who: str) -> None:
    if bool(conv.all()):
        return
    k, total = int((~conv).sum()), conv.numel()
    worst = float(bound[~conv].max())
    how = f"after the fixed {iters} iterations of solver='paper'" if paper else f"within max_iter={iters}"
    warnings.warn(
        f"{who}: {k} of {total} solves did not reach the relative tolerance {tol:g} {how}; their "
        f"certified relative error is up to {worst:.3g} (last_details.error_bound). Raise max_iter, or "
        "lambda2 / c1 (a larger margin above L/2 converges faster); in float32 the bound also covers "
        "round-off, about eps sqrt(d) L / (2 lambda2 - L), which only float64 inputs reduce.",
        stacklevel=6,
    )


def resolve_lambda2(lambda2: float | None, c1: float, top: Tensor, who: str) -> Tensor:
    """``L/2 + c1`` per example, or the explicit ``lambda2`` when it exceeds ``L/2`` (else ``ValueError``)."""
    if lambda2 is None:
        return top / 2.0 + c1
    lam2 = torch.full_like(top, float(lambda2))
    bad = lam2 <= top / 2.0
    if bool(bad.any()):
        worst = float(top[bad].max())
        raise ValueError(
            f"{who}: lambda2={lambda2} is too small for a concave objective; it must exceed "
            f"L/2 where L is the top eigenvalue of the input Hessian (here up to {worst:.4g}, "
            f"so lambda2 > {worst / 2:.4g}). Use lambda2=None for the paper's L/2 + c1."
        )
    return lam2


def search_or_solve(
    solve_fn: Solve,
    g: Tensor,
    lambda1: float | Tensor,
    grid: Tensor | None,
    sparsity: tuple[float, float] | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """``delta, objective, lambda1, sparsity, in_window`` for one value, a grid, or the sparsity search."""
    n = g.shape[0]
    if sparsity is not None:
        res = sparsity_search(solve_fn, g.abs().amax(1), sparsity)
        return res.delta, res.objective, res.lambda1, res.sparsity, res.in_window
    if grid is not None:
        delta, obj = solve_fn(grid)
        return delta, obj, grid, sparsity_ratio(delta), None
    lam = torch.as_tensor(lambda1, dtype=g.dtype, device=g.device).reshape(-1, 1).expand(n, 1)
    delta, obj = solve_fn(lam)
    return delta[:, 0], obj[:, 0], lam[:, 0], sparsity_ratio(delta[:, 0]), None


def _dual_newton(factor: LowRankFactor, gm: Tensor, lams: Tensor, lam2: Tensor, upper, tol: float):
    """The exact sparse solve on ``H = B B^T`` (:func:`~captum_ext.attr.sparse_dual.sparse_dual_solve`),
    certified by its float64 KKT bound, as a :class:`SolveResult` (``method="dual_newton"``)."""
    res = sparse_dual_solve(factor.B, gm, lams, lam2, tol=tol)
    conv = res.converged[..., None]
    bound = res.rel_error_bound[..., None].to(gm.dtype)
    # the problem is concave by construction (2 lambda2 > L exactly, else sparse_dual_solve raises)
    return SolveResult(
        res.delta, res.h_delta, conv, bound, res.iterations[..., None], torch.zeros_like(conv),
        upper.expand_as(bound), 0, method="dual_newton",
    )  # fmt: skip


def _make_solve(
    curv: Curvature, g: Tensor, lam2: Tensor, stats: list[SolveResult], opts: CASOOptions
) -> Solve:
    op, tol = curv.op, default_tol(g.dtype) if opts.tol is None else opts.tol
    # the uncertainty of L takes its share of the tolerance (see _estimate_spectrum)
    tol = max(tol - float(_lambda2_error(curv, curv.top, opts).max()), 0.25 * tol)
    factor = op if isinstance(op, LowRankFactor) else None

    def solve_fn(lams: Tensor) -> tuple[Tensor, Tensor]:
        gm = g[:, None, :].expand(-1, lams.shape[1], -1)
        l2, l1, upper = lam2[:, None, None], lams[:, :, None], curv.upper[:, None, None]
        if opts.solver == "paper":
            k = opts.paper_iterations
            res = fista(gm, op.hvp, l1, l2, n_iter=k, lr=opts.lr, decay=opts.decay, monotone=False)
            st = _certified(res.delta, res.h_delta, gm, l1, l2, upper, k, res.n_hvp)
        elif factor is not None and bool((lams == 0).all()):
            delta = factor.solve_shifted(g, lam2)[:, None, :].expand_as(gm)
            st = _certified(delta, factor.hvp(delta), gm, l1, l2, upper, 0, 0)
        elif bool((lams == 0).all()):
            st = conjugate_gradient(gm, op.hvp, l2, l_upper=upper, tol=tol, max_iter=opts.max_iter)
        elif factor is not None:  # closed form (also SmoothCASO's group mean, packed groups), lambda1 > 0
            st = _dual_newton(factor, gm, lams, lam2, upper, tol)
        else:
            lower = curv.lower[:, None, None] if isinstance(curv.lower, Tensor) else 0.0
            st = accelerated_prox_gradient(
                gm,
                op.hvp,
                l1,
                l2,
                l_upper=upper,
                l_lower=lower,
                tol=tol,
                max_iter=opts.max_iter,
                decay=opts.decay,
            )
        stats.append(st)
        return st.delta, caso_objective(st.delta, st.h_delta, gm, l1, l2)

    return solve_fn


def _estimate_spectrum(curv: Curvature, opts: CASOOptions, tol: float) -> None:
    """Fill ``top`` / ``upper`` / ``lower`` of a matrix-free operator (power steps for the paper).

    With the default ``lambda2 = L/2 + c1``, ``L`` is needed only as far as it moves the answer: an error
    ``e`` in ``L`` moves ``lambda2`` by ``e / 2`` and the optimum by at most ``e / (2 lambda2 - L) <=
    e / (2 c1 - e)`` relative (strong convexity), so Lanczos stops once its residual (which bounds ``e``)
    is below ``0.9 tol c1`` (at most about ``tol / 2`` of the answer's error); :func:`_lambda2_error`
    adds that error to the certificate, and the solve gets the rest of the tolerance.
    """
    if curv.top is not None:
        return
    if opts.solver == "paper":
        curv.top = curv.upper = curv.op.top_eigenvalue(opts.n_power_iter)
        return
    # default lambda2: an absolute target for L from the answer's tolerance; explicit: L feeds only mu
    rtol, atol = (0.0, 0.9 * tol * opts.c1) if opts.lambda2 is None else (LANCZOS_TOL, 0.0)
    lz = lanczos_extremes(
        curv.op.hvp, _lanczos_start(curv.gradient), tol=rtol, max_iter=LANCZOS_MAX_ITER, atol=atol
    )
    curv.top, curv.upper = lz.top.clamp_min(0), lz.upper.clamp_min(0)
    curv.lower = lz.bottom if curv.lower is None else curv.lower


def _shared_krylov(curv: Curvature, opts: CASOOptions, grid: Tensor | None, tol: float, who: str):
    """``L`` and the ``lambda1 = 0`` solve of a matrix-free operator from one Lanczos run started at ``g``
    (:func:`~captum_ext.attr.solvers.krylov.lanczos_solve`), certified like every other solve; ``None``
    where it does not apply (a known ``L``, ``lambda1 > 0``, a grid or search, the paper's solver); also
    ``None``, with ``L`` filled in, when the run needs more than ``LANCZOS_MAX_ITER`` products (its basis
    would grow too large: conjugate gradients go on) or its certificate finds a Rayleigh quotient above
    ``2 lambda2`` (the guarded route runs)."""
    zero = bool((torch.as_tensor(opts.lambda1) == 0).all())
    if (
        curv.top is not None
        or opts.solver == "paper"
        or grid is not None
        or opts.sparsity is not None
        or not zero
    ):
        return None
    g = curv.gradient
    cap = min(opts.max_iter, LANCZOS_MAX_ITER)
    res = lanczos_solve(
        curv.op.hvp, g, c1=opts.c1, lambda2=opts.lambda2, tol=tol, max_iter=cap, l_rtol=LANCZOS_TOL
    )
    curv.top, curv.upper = res.top, res.upper
    curv.lower = res.bottom if curv.lower is None else curv.lower
    lam2 = resolve_lambda2(opts.lambda2, opts.c1, res.top, who)  # refuses an explicit lambda2 <= L / 2
    if not bool(res.converged.all()) and cap < opts.max_iter:
        # a slow solve (explicit lambda2 close to L / 2): L is known now; CG, which keeps no basis, goes on
        return None
    gm, delta, hd = g[:, None, :], res.delta[:, None, :], res.h_delta[:, None, :]
    l2, upper = lam2[:, None, None], res.upper[:, None, None]
    bound, nonconcave, rq = certify(delta, hd, gm, 0.0, l2, upper)
    if bool(nonconcave.any()):  # explicit lambda2 between top / 2 and upper / 2: the guarded route decides
        return None
    # the uncertainty of L takes its share of the tolerance (as in _make_solve)
    solve_tol = max(tol - float(_lambda2_error(curv, curv.top, opts).max()), 0.25 * tol)
    conv = (bound <= solve_tol) & ~nonconcave
    st = SolveResult(delta, hd, conv, bound, res.steps[:, None, None], nonconcave, rq, res.n_hvp)
    obj = caso_objective(delta, hd, gm, 0.0, l2)[:, 0]
    lam1 = torch.zeros_like(lam2)
    return (res.delta, obj, lam1, sparsity_ratio(res.delta), None), lam2, curv.top, [st], 0


def _lambda2_error(curv: Curvature, top: Tensor, opts: CASOOptions) -> Tensor:
    """Relative error ``(n,)`` that the uncertainty of ``L`` (``upper - top``) puts into the optimum
    through the default ``lambda2 = L/2 + c1`` (zero for an explicit ``lambda2`` or an exact ``L``)."""
    if opts.lambda2 is not None:
        return torch.zeros_like(top)
    err = (curv.upper - top).clamp_min(0)
    margin = 2.0 * opts.c1 - err
    return torch.where(margin > 0, err / margin.clamp_min(torch.finfo(top.dtype).tiny), math.inf)


def _guarded_solve(curv: Curvature, opts: CASOOptions, grid: Tensor | None, who: str):
    """Solve with ``lambda2`` from ``L``; a Rayleigh quotient above ``2 lambda2`` raises ``L`` and
    re-solves (``lambda2=None``) or refuses (explicit ``lambda2``)."""
    g, n, top, raised = curv.gradient, curv.gradient.shape[0], curv.top, 0
    while True:
        lam2 = resolve_lambda2(opts.lambda2, opts.c1, top, who)
        stats: list[SolveResult] = []
        found = search_or_solve(_make_solve(curv, g, lam2, stats, opts), g, opts.lambda1, grid, opts.sparsity)
        bad = torch.stack([st.nonconcave.reshape(n, -1).any(1) for st in stats]).any(0)
        if not bool(bad.any()):
            return found, lam2, top, stats, raised
        seen = torch.stack([st.rayleigh_max.reshape(n, -1).amax(1) for st in stats]).amax(0)
        if opts.lambda2 is not None:
            raise ValueError(
                f"{who}: lambda2={opts.lambda2} makes the problem non-concave: a direction v with "
                f"v.Hv / v.v = {float(seen[bad].max()):.4g} > 2 lambda2 was found (the Hessian's top "
                f"eigenvalue L is at least that, above the estimate {float(top[bad].max()):.4g}). "
                "Use a larger lambda2 or lambda2=None."
            )
        if raised == 3:  # pragma: no cover - needs an operator whose spectrum keeps growing
            raise RuntimeError(f"{who}: could not find a lambda2 that makes the problem concave")
        raised += 1
        top = torch.where(bad, torch.maximum(top, seen) * (1 + 1e-3), top)
        curv.upper = torch.maximum(curv.upper, top)


def solve(
    graph: LossGraph,
    opts: CASOOptions,
    grid_fn: Callable[[int, torch.device, torch.dtype], Tensor] | None,
    forward_func: Callable[..., Tensor],
    args: tuple[Any, ...],
    samples: int = 1,
    who: str = "CASO",
) -> tuple[Tensor, AttributionDetails]:
    """Attribution ``(n, d)`` (or ``(n, m, d)`` for a grid) and its details for one chunk."""
    dtype, device = graph.dtype, graph.logits.device
    budget = default_max_memory(device) if opts.max_memory is None else int(opts.max_memory)
    analysis = analyse_graph(graph, forward_func, args)
    n_values = 1 if grid_fn is None else grid_fn(1, device, dtype).shape[1]
    mode, extra = choose_path(graph, analysis, opts, n_values, budget, who)
    extra = {"probe": analysis.probe, **extra, **({"binary_logistic": True} if graph.binary else {})}
    if mode == "closed_form" and samples == 1:
        groups = _factor_groups(graph, opts, budget)
        if groups is not None:
            return _solve_groups(graph, groups, opts, grid_fn, forward_func, args, extra, who)
    curv = get_path(mode).build(graph, opts.rank_tol, opts.max_rank, samples)
    n = curv.gradient.shape[0]
    n_hvp0 = getattr(curv.op, "n_hvp", 0)
    grid = None if grid_fn is None else grid_fn(n, device, dtype)
    tol = default_tol(dtype) if opts.tol is None else opts.tol
    try:
        shared = _shared_krylov(curv, opts, grid, tol, who)
        if shared is None:
            _estimate_spectrum(curv, opts, tol)
            shared = _guarded_solve(curv, opts, grid, who)
        (delta, obj, lam1, eta, in_window), lam2, top, stats, raised = shared
    except RuntimeError as err:
        if is_missing_double_backward(err):
            raise CurvaturePathError(
                f"{who}(hessian={mode!r}) needs a second derivative through every layer, which this model "
                f"lacks ({str(err).splitlines()[0]}). {_what_would_work(analysis)}"
            ) from err
        raise
    if raised:
        extra["lambda2_raised"] = raised
    release = getattr(curv.op, "release", None)
    release() if callable(release) else graph.release()
    bound = torch.cat([st.error_bound.reshape(n, -1) for st in stats], 1)
    bound = bound + _lambda2_error(curv, top, opts)[:, None].to(bound.dtype)
    conv = torch.cat([st.converged.reshape(n, -1) for st in stats], 1) & (bound <= tol)
    iters = torch.cat([st.iterations.reshape(n, -1) for st in stats], 1)
    if grid is None or opts.sparsity is not None:  # one value per example: worst over the candidates
        conv, bound, iters = conv.all(1), bound.amax(1), iters.amax(1)
    paper = opts.solver == "paper"
    _warn_unconverged(conv, bound, tol, opts.paper_iterations if paper else opts.max_iter, paper, who)
    gap = analysis.probe_gap
    details = AttributionDetails(
        lambda1=lam1.detach(),
        lambda2=lam2.detach(),
        sparsity=eta.detach(),
        objective=obj.detach(),
        top_eigenvalue=top.detach(),
        rank=curv.rank,
        hessian=mode,
        target=graph.target[::samples],
        in_window=in_window,
        probe_gap=None if gap is None else gap.reshape(n, samples).amax(1),
        n_hvp=getattr(curv.op, "n_hvp", 0) - n_hvp0,
        n_vjp=curv.n_vjp,
        converged=conv,
        error_bound=bound,
        iterations=iters,
        solver="dual_newton" if any(st.method == "dual_newton" for st in stats) else opts.solver,
        extra=extra,
    )
    return delta.detach(), details


def _factor_groups(graph: LossGraph, opts: CASOOptions, budget: int) -> list[Tensor] | None:
    """Groups of examples whose factors fit ``budget`` (None when the whole batch fits)."""
    d, size = sum(x[0].numel() for x in graph.inputs), graph.logits.element_size()
    bound = kept_ranks(graph.probs, opts.rank_tol, opts.max_rank)  # O(c log c), the exact rank or more
    top = int(bound.max())
    # groups re-run the forward of every example, so they win only if the ranks below the largest add
    # up to more backward passes than a forward of the batch: otherwise one factor, no planning
    spare = float((top - bound).sum()) * DEFAULT_COSTS.backward
    if factor_memory(graph.n, top, d, size) <= budget and spare <= graph.n * DEFAULT_COSTS.forward:
        return None
    try:  # the O(c log c) rank bound first; exact ranks only if it seems not to fit
        plan = plan_rank_groups(bound, d, size, budget)
    except ValueError:
        ranks = kept_ranks(graph.probs, opts.rank_tol, opts.max_rank, exact=True)
        plan = plan_rank_groups(ranks, d, size, budget)
    if len(plan.groups) == 1:
        return None
    # one group reuses the batch's forward graph (already built); groups each pay their own forward
    ranks = plan.ranks
    one = factor_memory(graph.n, int(ranks.max()), d, size)
    if one <= budget and graph.n * DEFAULT_COSTS.backward * (int(ranks.max()) + 1) <= plan.work:
        return None
    return plan.groups


def _solve_groups(graph, groups, opts, grid_fn, forward_func, args, extra, who):
    """Solve each group of examples on its own forward graph (closed form); results in batch order."""
    n = graph.n
    deltas, parts = [], []
    for idx in groups:
        i = idx.to(graph.logits.device)
        xs = tuple(x.detach().index_select(0, i) for x in graph.inputs)
        sub_args = select_additional_args(args, n, i)
        sub = build_loss_graph(forward_func, xs, sub_args, graph.target.index_select(0, i))
        lam1 = torch.as_tensor(opts.lambda1)
        sub_lam1 = lam1[idx] if lam1.dim() == 1 else opts.lambda1
        sub_opts = dataclasses.replace(opts, lambda1=sub_lam1, hessian="closed_form", max_memory=None)
        delta, det = solve(sub, sub_opts, grid_fn, forward_func, sub_args, 1, who)
        deltas.append(delta)
        parts.append(det)
    graph.release()
    inverse = torch.argsort(torch.cat(groups)).to(graph.logits.device)
    det = AttributionDetails.concat(parts).take(inverse)
    det.extra = {**extra, **det.extra, "factor_groups": [len(g) for g in groups]}
    return torch.cat(deltas).index_select(0, inverse), det
