"""Curvature paths: one module per way of multiplying by the input Hessian, plus the shared analysis.

The import below *is* the registration: each module's path class is decorated with
:func:`~captum_ext.attr.curvature.registry.register`, and the import order breaks cost ties.
"""

from . import closed_form, gauss_newton, exact  # noqa: F401, I001  (registration, in tie-break order)
from .analysis import GraphAnalysis, analyse_graph
from .registry import Curvature, CurvaturePath, get_path, paths, register

__all__ = ["Curvature", "CurvaturePath", "GraphAnalysis", "analyse_graph", "get_path", "paths", "register"]
