"""The input-Hessian toolkit of CASO in one import: the loss graph, the closed-form factor, exact and
Gauss-Newton products, the curvature analysis and the eigenpairs of the softmax covariance.

Each name lives in the module of its one idea (:mod:`~captum_ext.attr.graph`,
:mod:`~captum_ext.attr.softmax_eig`, :mod:`~captum_ext.attr.curvature`); this module gathers the
public ones for notebooks and scripts.

Examples:
    >>> import torch
    >>> from torch import nn
    >>> from captum_ext.attr.hessian import build_loss_graph, low_rank_factor
    >>> net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    >>> graph = build_loss_graph(net, (torch.randn(2, 4, dtype=torch.float64),))
    >>> factor = low_rank_factor(graph, rank_tol=0.0)
    >>> factor.B.shape[:2]
    torch.Size([2, 4])
"""

from .curvature.analysis import (
    GraphAnalysis,
    analyse_graph,
    finite_difference_curvature,
    logit_curvature_gap,
    structural_curvature,
    structural_piecewise_linear,
)
from .curvature.closed_form import LowRankFactor, group_mean_factor, low_rank_factor
from .curvature.exact import ExactHessian, stable_loss_surrogate
from .curvature.gauss_newton import GaussNewtonHessian, apply_softmax_covariance
from .graph import (
    DEFAULT_RANK_TOL,
    LossGraph,
    build_loss_graph,
    flatten_features,
    loss_gradient_from_logits,
    softmax_covariance,
    unflatten_features,
)
from .softmax_eig import choose_rank, kept_eigenpairs, softmax_covariance_top_eigh

__all__ = [
    "DEFAULT_RANK_TOL",
    "ExactHessian",
    "GaussNewtonHessian",
    "GraphAnalysis",
    "LossGraph",
    "LowRankFactor",
    "analyse_graph",
    "apply_softmax_covariance",
    "build_loss_graph",
    "choose_rank",
    "finite_difference_curvature",
    "flatten_features",
    "group_mean_factor",
    "kept_eigenpairs",
    "logit_curvature_gap",
    "loss_gradient_from_logits",
    "low_rank_factor",
    "softmax_covariance",
    "softmax_covariance_top_eigh",
    "stable_loss_surrogate",
    "structural_curvature",
    "structural_piecewise_linear",
    "unflatten_features",
]
