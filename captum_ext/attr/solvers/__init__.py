"""Solvers of the CASO problem, pure tensor maths named for what they promise.

* :mod:`~captum_ext.attr.solvers.certified`: the optimum to a tolerance, with a per-problem error
  bound (conjugate gradients, accelerated proximal gradient, :func:`certify`).
* :mod:`~captum_ext.attr.solvers.lanczos`: Lanczos for ``L`` (the extreme eigenvalues).
* :mod:`~captum_ext.attr.solvers.krylov`: one Lanczos run from ``g`` for ``L`` and the ``lambda1 = 0``
  solve.
* :mod:`~captum_ext.attr.solvers.paper`: the paper's fixed-iteration FISTA (reference algorithm).
* :mod:`~captum_ext.attr.solvers.objective`: the objective, its smooth part and the l1 prox.
* :mod:`~captum_ext.attr.solvers.lambda1_search`: the paper's ``lambda1`` choice by sparsity ratio.

A new solver is a module here taking ``(g, hvp, lambda1, lambda2, ...)`` on ``(n, m, d)`` batches and
returning a :class:`~captum_ext.attr.solvers.certified.SolveResult` (or a result the caller certifies).
"""

from .certified import (
    CurvatureOperator,
    SolveResult,
    accelerated_prox_gradient,
    certify,
    conjugate_gradient,
    default_tol,
)
from .krylov import LanczosSolveResult, lanczos_solve
from .lambda1_search import SparsitySearch, initial_lambda1_grid, sparsity_ratio, sparsity_search
from .lanczos import LanczosResult, lanczos_extremes
from .objective import HVP, caso_objective, smooth_part, soft_threshold
from .paper import FistaResult, FistaStep, fista

__all__ = [
    "HVP",
    "CurvatureOperator",
    "FistaResult",
    "FistaStep",
    "LanczosResult",
    "LanczosSolveResult",
    "SolveResult",
    "SparsitySearch",
    "accelerated_prox_gradient",
    "caso_objective",
    "certify",
    "conjugate_gradient",
    "default_tol",
    "fista",
    "initial_lambda1_grid",
    "lanczos_extremes",
    "lanczos_solve",
    "smooth_part",
    "soft_threshold",
    "sparsity_ratio",
    "sparsity_search",
]
