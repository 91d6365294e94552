"""Predicted cost of CASO's Hessian paths, and the choice of the cheapest correct one in a memory budget.

Pure arithmetic (no model calls except in :func:`calibrate_pass_costs`). Costs are in units of one
per-example backward pass (a vector-Jacobian product through the model), memory in bytes.

Paths, per example with kept rank ``r`` of ``A = diag(p) - pp^T``, ``d`` input features and ``P``
Hessian-vector products needed by the solver (top eigenvalue + iterations; 0 for the factor, whose
products are ``d x r`` matmuls and whose ``lambda1 = 0`` solve is closed form):

* ``"closed_form"`` (low-rank factor): ``r + 1`` backward passes (the ``+1`` is the gradient, saved when
  ``p - e_t`` lies in the kept eigen-span: the prediction keeps it, an upper bound);
  memory ``d r`` floats for ``B`` plus the VJP buffer. Exact for piecewise-linear nets (to
  ``rank_tol``), the Gauss-Newton part otherwise.
* ``"gauss_newton"`` (matrix-free ``J^T A J v``): gradient + one ``create_graph`` backward, then
  ``P (jvp + backward)``; memory a few input-sized vectors. Same correctness as the factor.
* ``"exact"`` (double backward): gradient with ``create_graph`` (one backward pass) then ``P``
  double-backward products;
  correct for any twice-differentiable model.

:func:`choose_path` takes the cheapest path that is correct for the model (``piecewise_linear``) and
fits ``max_memory``; ties go to the path listed first in ``PATHS``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .curvature import GraphAnalysis, paths
from .graph import DEFAULT_RANK_TOL, softmax_covariance
from .softmax_eig import choose_rank

#: the registered paths; their order breaks ties (the factor gives exact L and a closed-form
#: lambda1 = 0 solve)
PATHS = tuple(paths())


@dataclass(frozen=True)
class PassCosts:
    """Cost of one pass per example, in units of one backward pass (VJP) unless ``unit`` says otherwise.

    Defaults are measured on CPU (one thread, torch 2.14) for ResNet-50 at 224x224 with one image
    (backward ~0.09 s): forward 1.0, ``J v`` by the double-VJP trick 2.9 (a whole Gauss-Newton product,
    ``J v`` then ``J^T``, took 0.355 s, i.e. 3.9 backward passes; :func:`calibrate_pass_costs`, which
    times ``J v`` alone, said 2.7), one double-backward HVP 4.1 (0.36-0.38 s), the kept eigenpairs of
    the ``1000 x 1000`` matrix ``A`` 0.2 (secular equation,
    :func:`~captum_ext.attr.hessian.kept_eigenpairs`, ~6-30 ms depending on the rank; a dense ``eigh``
    took ~0.25 s). :func:`calibrate_pass_costs` measures them for a given model.

    Attributes:
        forward: one forward pass that keeps the graph.
        backward: one VJP (the unit).
        jvp: one Jacobian-vector product ``J v`` (Gauss-Newton path).
        double_backward: one exact Hessian-vector product by double backward.
        eigh: the kept eigenpairs of one example's ``c x c`` matrix ``A`` (factor path only).
        unit: what 1.0 means (``"backward"`` or ``"seconds"`` after calibration).
    """

    forward: float = 1.0
    backward: float = 1.0
    jvp: float = 2.9
    double_backward: float = 4.1
    eigh: float = 0.2
    unit: str = "backward"

    def __post_init__(self) -> None:
        for name in ("forward", "backward", "jvp", "double_backward", "eigh"):
            val = getattr(self, name)
            if not math.isfinite(val) or val <= 0:
                raise ValueError(f"PassCosts.{name} must be a positive number, got {val}")


#: costs measured for ResNet-50 on CPU (see :class:`PassCosts`)
DEFAULT_COSTS = PassCosts()


@dataclass(frozen=True)
class PathCost:
    """Predicted cost of one path for a whole batch.

    Attributes:
        path: one of :data:`PATHS`.
        time: predicted compute, in ``PassCosts.unit``.
        memory: predicted peak bytes of the path's own buffers (factor, VJP chunk, direction vectors);
            the model's saved activations are common to all paths and not counted.
        correct: whether the path computes the model's true Hessian (to the factor's ``rank_tol``).
    """

    path: str
    time: float
    memory: int
    correct: bool


def default_max_memory(device: torch.device | str = "cpu") -> int:
    """Default budget in bytes: half the free memory of a CUDA device; on CPU a quarter of RAM, <= 8 GiB.

    Examples:
        >>> default_max_memory("cpu") > 0
        True
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free // 2)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        ram = 4 * 2**30
    return int(min(ram // 4, 8 * 2**30))


def expected_products(
    lambda1_values: int = 1,
    lambda1_zero: bool = True,
    solver: str = "certified",
    n_power_iter: int = 10,
    n_iter: int = 10,
) -> int:
    """Hessian-vector products a matrix-free path is expected to need: ``L`` plus every solve.

    ``solver="certified"``: Lanczos to 1e-4 (about 8 products) plus conjugate gradients (about 5 per
    ``lambda1 = 0`` problem) or accelerated prox-gradient (about 30 per ``lambda1 > 0`` value): medians
    seen on the benchmark's nets with ``lambda2 = L/2 + c1``, where the system is well conditioned. A
    single ``lambda1 = 0`` problem shares one Lanczos run from ``g`` for ``L`` and the solve
    (:func:`~captum_ext.attr.solvers.lanczos_solve`), which stops once the answer is certified: 1 to 6
    products on the benchmarks' nets (ResNet-18/50: 1-2, ViT-B/16 at 224x224: 2, a small ViT: 2-6);
    3 is predicted.
    ``solver="paper"``: ``n_power_iter`` power steps plus ``n_iter`` FISTA steps per value (plus a
    couple of backtracking trials).

    Args:
        lambda1_values: number of ``lambda1`` values solved (a sweep or the sparsity search).
        lambda1_zero: whether every value is 0.
        solver: ``"certified"`` or ``"paper"``.
        n_power_iter, n_iter: iterations of ``solver="paper"``.

    Examples:
        >>> expected_products()
        3
        >>> expected_products(solver="paper")  # 10 power + 10 FISTA steps + backtracking
        22
    """
    if min(lambda1_values, n_power_iter, n_iter) < 0:
        raise ValueError("counts must be >= 0")
    if solver == "paper":
        return n_power_iter + lambda1_values * n_iter + 2
    if solver != "certified":
        raise ValueError(f"solver must be 'certified' or 'paper', got {solver!r}")
    if lambda1_values == 1 and lambda1_zero:  # one Lanczos run from g gives L and the solve (solvers/krylov)
        return 3
    return 8 + lambda1_values * (5 if lambda1_zero else 30)


def kept_ranks(
    probs: Tensor, rank_tol: float = DEFAULT_RANK_TOL, max_rank: int | None = None, exact: bool = False
) -> Tensor:
    """Rank per example the closed form keeps for ``rank_tol``.

    ``exact=True`` uses the eigenvalues of ``A = diag(p) - pp^T`` (``O(c^3)``), exactly as
    :func:`~captum_ext.attr.hessian.low_rank_factor` does. The default bound needs only the sorted
    probabilities (``O(c log c)``): ``A`` is a rank-one downdate of ``diag(p)``, so its eigenvalues
    interlace them (``p_(k+1) <= lambda_k <= p_(k)``, descending) and the tail mass beyond ``r`` is at
    most ``sum_{k>r} p_(k)``; the rank found this way is the exact one or one more (or, through the
    zero-eigenvalue floor, a few off), which is what a cost prediction needs.

    Examples:
        >>> p = torch.tensor([[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64)
        >>> kept_ranks(p, exact=True).tolist(), kept_ranks(p).tolist()
        ([1, 2], [2, 2])
    """
    if exact:
        lam = torch.flip(torch.linalg.eigvalsh(softmax_covariance(probs)), [1])
        return choose_rank(lam, rank_tol, max_rank)
    p = torch.sort(probs, dim=1, descending=True).values
    top = p[:, :1]
    rest = p[:, 1:].sum(1, keepdim=True)  # 1 - p_(1) without cancellation
    trace = top * rest + (p[:, 1:] * (1 - p[:, 1:])).sum(1, keepdim=True)  # tr(A) = sum p_i (1 - p_i)
    c = p.shape[1]
    floor = c * torch.finfo(p.dtype).eps * p[:, 1:2].clamp_min(0) if c > 1 else torch.zeros_like(top)
    q = torch.where(p > floor, p, torch.zeros_like(p))
    # bound[r] = sum_{k > r} q_(k) (k = 1..c), an upper bound on the tail of A's spectrum beyond r
    tail = torch.flip(torch.cumsum(torch.flip(q, [1]), 1), [1])  # tail[:, k] = sum_{j >= k} q_(j+1)
    bound = torch.cat([tail, torch.zeros_like(top)], dim=1)  # bound[:, r] for r = 0..c
    ok = bound <= rank_tol * trace
    rank = ok.to(torch.int64).argmax(1).clamp_max(max(c - 1, 0))  # A has rank <= c - 1
    if max_rank is not None:
        rank = rank.clamp_max(max_rank)
    return rank


def predict_costs(
    ranks: Sequence[int] | Tensor,
    d: int,
    products: int,
    costs: PassCosts = DEFAULT_COSTS,
    itemsize: int = 4,
    piecewise_linear: bool = True,
    vjp_batch: int = 16,
    packed: bool = True,
) -> dict[str, PathCost]:
    """Predicted time and memory of each path for a batch with these per-example ranks.

    Args:
        ranks: kept rank of ``A`` per example (``(n,)``).
        d: input features per example.
        products: Hessian-vector products a matrix-free path needs (:func:`expected_products`).
        costs: per-pass costs.
        itemsize: bytes per float of the model's dtype.
        piecewise_linear: whether the logits have zero curvature (then the factor and Gauss-Newton
            paths are exact); every layer is assumed to have a double backward. ``correct`` is what
            each registered path's ``not_exact_because`` says.
        vjp_batch: VJPs the factor computes in one vectorised backward (its buffer).
        packed: the factor packs columns by each example's rank (``sum r_i`` backward work,
            :mod:`~captum_ext.attr.packed_factor`) instead of ``n max r``.

    Returns:
        ``{path: PathCost}`` for every registered path (:func:`~captum_ext.attr.curvature.paths`),
        each predicted by the path itself (:meth:`~captum_ext.attr.curvature.CurvaturePath.predict`).

    Examples:
        >>> pc = predict_costs([2, 3], d=100, products=20)
        >>> pc["closed_form"].time, pc["gauss_newton"].time, pc["exact"].time
        (7.4, 160.0, 166.0)
        >>> pc["closed_form"].memory
        5200
    """
    r = torch.as_tensor(ranks, dtype=torch.float64).reshape(-1)
    if r.numel() == 0 or bool((r < 0).any()):
        raise ValueError("ranks must hold at least one non-negative rank")
    if products < 0 or d < 1:
        raise ValueError(f"products must be >= 0 and d >= 1, got {products}, {d}")
    assumed = GraphAnalysis(piecewise_linear, True, "assumed", curved_because="assumed curved")
    out = {}
    for name, path in paths().items():
        time, memory = path.predict(r, d, products, costs, itemsize, vjp_batch, packed)
        out[name] = PathCost(name, time, memory, path.not_exact_because(assumed) is None)
    return out


def choose_path(predictions: dict[str, PathCost], max_memory: int | None = None) -> PathCost:
    """Cheapest correct path whose predicted memory fits ``max_memory`` (``None``: no limit).

    A factor that does not fit whole can still be built in chunks of examples; callers that chunk
    pass the memory of the largest chunk. If no correct path fits, the correct path with the smallest
    memory is returned (the caller warns).

    Examples:
        >>> choose_path(predict_costs([2], d=150528, products=20)).path  # confident: 3 backward passes
        'closed_form'
        >>> low = predict_costs([999], d=150528, products=20)  # 1000 passes and 0.6 GB
        >>> choose_path(low).path
        'gauss_newton'
        >>> choose_path(predict_costs([50], d=150528, products=20), max_memory=2**24).path
        'gauss_newton'
        >>> choose_path(predict_costs([9], d=4, products=20, piecewise_linear=False)).path
        'exact'
    """
    correct = [c for c in predictions.values() if c.correct]  # registration order breaks ties
    if not correct:
        raise ValueError("no correct path among the predictions")
    fits = [c for c in correct if max_memory is None or c.memory <= max_memory]
    if not fits:
        return min(correct, key=lambda c: c.memory)
    return min(fits, key=lambda c: c.time)  # min keeps the first of equal times (PATHS order)


@dataclass(frozen=True)
class AutoPlan:
    """What ``hessian="auto"`` decided for a batch and why.

    Attributes:
        path: the chosen path (one of :data:`PATHS`).
        predictions: ``{path: PathCost}`` it chose from.
        ranks: kept rank per example.
        products: Hessian-vector products assumed for the matrix-free paths.
        max_memory: the budget in bytes.
    """

    path: str
    predictions: dict[str, PathCost]
    ranks: Tensor
    products: int
    max_memory: int

    def summary(self) -> dict[str, object]:
        """Plain numbers for ``last_details.extra``."""
        return {
            "choice": self.path,
            "predicted_cost": {k: round(v.time, 3) for k, v in self.predictions.items()},
            "predicted_memory": {k: v.memory for k, v in self.predictions.items()},
            "correct": [k for k, v in self.predictions.items() if v.correct],
            "products": self.products,
            "max_memory": self.max_memory,
            "unit": "backward passes of one example",
        }


def plan_auto(
    probs: Tensor,
    d: int,
    itemsize: int,
    piecewise_linear: bool,
    products: int,
    max_memory: int | None = None,
    costs: PassCosts = DEFAULT_COSTS,
    rank_tol: float = DEFAULT_RANK_TOL,
    exact: Sequence[str] | None = None,
) -> AutoPlan:
    """The cost model's choice for a batch with softmax ``probs`` ``(n, c)``: see :func:`choose_path`.

    ``max_memory=None`` uses :func:`default_max_memory` of ``probs``' device. ``exact`` names the
    paths exact for this graph (from its :class:`~captum_ext.attr.curvature.GraphAnalysis`); by
    default they follow from ``piecewise_linear``.

    Examples:
        >>> p = torch.softmax(torch.tensor([[30.0, 20.0] + [0.0] * 998], dtype=torch.float64), 1)
        >>> plan_auto(p, d=3 * 224 * 224, itemsize=4, piecewise_linear=True, products=13).path
        'closed_form'
        >>> flat = torch.full((1, 1000), 1e-3, dtype=torch.float64)
        >>> plan_auto(flat, d=3 * 224 * 224, itemsize=4, piecewise_linear=True, products=13).path
        'gauss_newton'
    """
    budget = default_max_memory(probs.device) if max_memory is None else int(max_memory)
    ranks = kept_ranks(probs, rank_tol)  # the O(c log c) bound: within about one of the exact rank
    preds = predict_costs(ranks, d, products, costs, itemsize, piecewise_linear)
    if exact is not None:
        preds = {k: dataclasses.replace(v, correct=k in exact) for k, v in preds.items()}
    return AutoPlan(choose_path(preds, budget).path, preds, ranks, products, budget)


def calibrate_pass_costs(graph, repeats: int = 1) -> PassCosts:  # noqa: ANN001 - LossGraph, avoids a cycle
    """Measure one backward, one ``J v`` and one double-backward product on ``graph`` (CPU time).

    Costs about 6 backward passes. Returns costs relative to the backward pass (``unit="backward"``),
    measured with ``time.process_time`` (robust to other processes; counts all of this process's
    threads). Keeps the graph alive.
    """
    from .curvature.exact import ExactHessian
    from .curvature.gauss_newton import GaussNewtonHessian

    n = graph.n
    d = sum(x[0].numel() for x in graph.inputs)
    gen = torch.Generator(device="cpu").manual_seed(0)
    v = torch.randn(n, d, generator=gen, dtype=graph.dtype).to(graph.logits.device)
    w = torch.randn(n, graph.logits.shape[1], generator=gen, dtype=graph.dtype).to(v.device)

    def timed(fn) -> float:  # noqa: ANN001
        best = math.inf
        for _ in range(max(1, repeats)):
            _sync(v)
            t0 = time.process_time()
            fn()
            _sync(v)
            best = min(best, time.process_time() - t0)
        return max(best, 1e-9)

    back = timed(lambda: graph.vjp(w))
    gn = GaussNewtonHessian(graph)
    gn.jvp(v)  # builds the J^T u graph once
    jvp = timed(lambda: gn.jvp(v))
    exact = ExactHessian(graph)
    dbl = timed(lambda: exact.hvp(v))
    return PassCosts(forward=1.0, backward=1.0, jvp=jvp / back, double_backward=dbl / back)


def _sync(t: Tensor) -> None:
    if t.device.type == "cuda":
        torch.cuda.synchronize(t.device)
