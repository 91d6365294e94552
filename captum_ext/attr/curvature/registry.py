"""The registry of curvature paths: what each path costs, what it needs, and when it is exact.

A *curvature path* turns a live :class:`~captum_ext.attr.graph.LossGraph` into a curvature operator
(anything with ``hvp(v) -> H v``, see :class:`~captum_ext.attr.solvers.CurvatureOperator`) plus the
spectral facts the solvers need. Every path is one module in ``captum_ext/attr/curvature/`` holding a
subclass of :class:`CurvaturePath` decorated with :func:`register`; ``curvature/__init__.py`` imports
the modules, and their import order breaks cost ties. Nothing else in the package lists the paths:
the options' validation, ``hessian="auto"``'s choice, the cost model and the error messages all read
this registry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from ..graph import LossGraph
    from .analysis import GraphAnalysis


@dataclass
class Curvature:
    """A curvature operator with its gradient and spectral estimates, as a path builds it.

    Attributes:
        op: anything with ``hvp(v)`` for ``v`` ``(n, d)`` or ``(n, m, d)``.
        gradient: the loss input-gradient ``g`` ``(n, d)``.
        top: ``L``, exact when known (closed form), else None (the solver estimates it by Lanczos).
        upper: the estimate of ``L`` used in error bounds (None until estimated).
        lower: a known lower bound on ``lambda_min`` (``0.0`` for a PSD operator), None if unknown.
        rank: factor rank per example (0 for matrix-free operators).
        n_vjp: backward passes spent building the operator.
    """

    op: Any
    gradient: Tensor
    top: Tensor | None
    upper: Tensor | None
    lower: Tensor | float | None
    rank: Tensor
    n_vjp: int


class CurvaturePath(ABC):
    """One way of multiplying by the input Hessian of the per-example loss.

    Subclasses set :attr:`name` and :attr:`needs` and implement the three methods below; register
    them with :func:`register`.
    """

    #: the value of ``hessian=`` that selects this path
    name: ClassVar[str]
    #: what the path needs from the model: ``"double_backward"`` (a second derivative through every
    #: layer), ``"factor_memory"`` (``d x r`` floats per example)
    needs: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def not_exact_because(self, analysis: GraphAnalysis) -> str | None:
        """``None`` when this path computes the exact input Hessian of this graph at this point,
        else the reason it does not (used in error messages)."""

    @abstractmethod
    def predict(
        self, ranks: Tensor, d: int, products: int, costs: Any, itemsize: int, vjp_batch: int, packed: bool
    ) -> tuple[float, int]:
        """Predicted ``(time, memory)`` for a batch: time in ``costs``' unit, memory in bytes.

        ``ranks`` are the kept ranks of ``A`` per example, ``products`` the Hessian-vector products a
        matrix-free solve needs (:func:`~captum_ext.attr.cost_model.expected_products`).
        """

    @abstractmethod
    def build(self, graph: LossGraph, rank_tol: float, max_rank: int | None, samples: int) -> Curvature:
        """The curvature operator for ``graph`` (``samples`` consecutive copies per example are
        averaged, as :class:`~captum_ext.attr.caso.SmoothCASO` needs)."""


_REGISTRY: dict[str, CurvaturePath] = {}


def register(cls: type[CurvaturePath]) -> type[CurvaturePath]:
    """Class decorator: add a path to the registry under ``cls.name``.

    Examples:
        >>> from captum_ext.attr.curvature import paths
        >>> list(paths())
        ['closed_form', 'gauss_newton', 'exact']
    """
    if cls.name in _REGISTRY or cls.name == "auto":
        raise ValueError(f"a curvature path named {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls()
    return cls


def paths() -> dict[str, CurvaturePath]:
    """The registered paths by name, in registration order (the cost model's tie-break order)."""
    return dict(_REGISTRY)


def get_path(name: str) -> CurvaturePath:
    """The path registered as ``name``; ``ValueError`` naming the valid choices otherwise."""
    if name not in _REGISTRY:
        choices = ", ".join(repr(p) for p in ("auto", *_REGISTRY))
        raise ValueError(f"hessian must be one of {choices}, got {name!r}")
    return _REGISTRY[name]
