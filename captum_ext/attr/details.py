"""What a CASO / CAFO call used and found, per example: :class:`AttributionDetails` (``last_details``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


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
            from finite differences where double backward cannot be trusted; None when the graph
            decided (``extra["probe"]``). Decided afresh on every call.
        n_hvp: Hessian-vector products evaluated by double backward (exact path).
        n_vjp: vector-Jacobian products (backward passes) used to build the closed-form factor.
        converged: whether the solution is certified to ``tol`` (see ``error_bound``).
        error_bound: certified bound on ``||Delta - Delta*|| / ||Delta||`` from the final residual
            (strong convexity; ``mu = 2 lambda2 - L``), for the problem with the Hessian operator used
            (closed form: the Gauss-Newton part truncated at ``rank_tol``, exact for piecewise-linear
            nets with ``rank_tol=0``). With a sparsity search: the worst over the candidates solved.
        iterations: solver iterations used (0 for closed forms).
        solver: ``"certified"``, ``"dual_newton"`` (the closed form's exact sparse solve at
            ``lambda1 > 0``, :mod:`~captum_ext.attr.sparse_dual`), ``"paper"`` (fixed iterations) or
            ``"closed_form"`` (CAFO).
        extra: notes, e.g. ``"auto"`` (the cost model's choice, predicted cost per path in backward
            passes, predicted memory, budget; see :meth:`~captum_ext.attr.cost_model.AutoPlan.summary`),
            ``"factor_groups"`` (sizes of the example groups the factor was built in, to fit
            ``max_memory`` or to pack ranks), ``"probe"`` (what told ``auto`` whether the net is
            piecewise linear: ``"structural"`` (its autograd graph, free), ``"numeric (...)"`` (one
            double backward, plus finite differences where a layer's second derivative cannot be
            trusted)), ``"compiled"`` (a ``torch.compile``'d model was differentiated through its
            eager original),
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
        ('closed_form', 'dual_newton', 'structural')
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
            **{name: cat(name) for name in _PER_EXAMPLE},
            hessian=modes.pop() if len(modes) == 1 else "mixed",
            n_hvp=sum(p.n_hvp for p in parts),
            n_vjp=sum(p.n_vjp for p in parts),
            solver=parts[0].solver,
            extra={k: v for p in parts for k, v in p.extra.items()},
        )

    def __repr__(self) -> str:
        """One line: the batch size, path, solver, certificate summary and pass counts (the
        per-example tensors are fields; print them one by one).

        Examples:
            >>> d = AttributionDetails(*(torch.zeros(3),) * 6, hessian="exact", target=torch.arange(3))
            >>> d
            AttributionDetails(n=3, hessian='exact', solver='certified', lambda2 median 0, n_hvp=0, n_vjp=0)
        """
        parts = [f"n={self.lambda1.shape[0]}", f"hessian={self.hessian!r}", f"solver={self.solver!r}"]
        if self.converged is not None:
            parts.append(f"converged {int(self.converged.sum())}/{self.converged.numel()}")
        if self.error_bound is not None and self.error_bound.numel():
            parts.append(f"error_bound max {float(self.error_bound.max()):.3g}")
        if self.lambda2.numel():
            parts.append(f"lambda2 median {float(self.lambda2.median()):.4g}")
        parts += [f"n_hvp={self.n_hvp}", f"n_vjp={self.n_vjp}"]
        return f"AttributionDetails({', '.join(parts)})"

    def take(self, index: Tensor) -> AttributionDetails:
        """The details of the examples ``index`` (a 1-d index tensor), in that order.

        Examples:
            >>> d = AttributionDetails(*(torch.arange(3.0),) * 6, hessian="exact", target=torch.arange(3))
            >>> d.take(torch.tensor([2, 0])).lambda1
            tensor([2., 0.])
        """

        def pick(val: Tensor | None) -> Tensor | None:
            return None if val is None else val.index_select(0, index.to(val.device))

        return dataclasses.replace(self, **{name: pick(getattr(self, name)) for name in _PER_EXAMPLE})


#: the fields that hold one entry (or one row) per example
_PER_EXAMPLE = (
    "lambda1",
    "lambda2",
    "sparsity",
    "objective",
    "top_eigenvalue",
    "rank",
    "target",
    "in_window",
    "probe_gap",
    "converged",
    "error_bound",
    "iterations",
)
