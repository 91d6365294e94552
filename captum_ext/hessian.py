"""Deprecated location: the CASO Hessian code lives in :mod:`captum_ext.attr.hessian`.

Kept only so that older imports keep working; import from :mod:`captum_ext.attr.hessian`.
"""

from .attr.hessian import build_loss_graph, low_rank_factor, softmax_covariance

__all__ = ["build_loss_graph", "low_rank_factor", "softmax_covariance"]
