"""CASO's and CAFO's options as one frozen object, validated once and passed down whole.

:class:`CASOOptions` holds every solver and curvature option of :meth:`CASO.attribute
<captum_ext.attr.caso.CASO.attribute>`; :class:`CAFOOptions` those of CAFO. The facade builds one per
call; chunks of a batch get :meth:`CASOOptions.for_examples` (their own ``lambda1`` values).
:func:`matching_options` checks, when the facade is defined, that a method's keyword arguments are
exactly the options' fields with the same defaults, plus the facade's own (``abs``,
``internal_batch_size``), so the two can never drift apart.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor

from .curvature import get_path
from .graph import DEFAULT_RANK_TOL

#: solvers of the CASO problem (see :mod:`captum_ext.attr.solvers`)
SOLVERS = ("certified", "paper")
#: arguments of the facade methods that are not solver options
FACADE_ARGS = ("abs", "internal_batch_size")
#: values of ``orientation=``: Captum's sign convention (evidence for the target is positive, the
#: default) or the paper's (the loss-increasing perturbation ``Delta``, its negation)
ORIENTATIONS = ("captum", "paper")
Orientation = Literal["captum", "paper"]


def _positive_int(name: str, value: Any, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if optional else ''}, got {value}")


def check_lambda1(lambda1: Any) -> None:
    """``ValueError`` unless ``lambda1`` is finite and non-negative (a number or a tensor of them)."""
    lam = torch.as_tensor(lambda1, dtype=torch.float64)
    if not bool(torch.isfinite(lam).all()) or bool((lam < 0).any()):
        raise ValueError(f"lambda1 must be finite and >= 0, got {lambda1}")


@dataclass(frozen=True)
class CAFOOptions:
    """Options of CAFO (and the part CASO shares): see :meth:`CAFO.attribute`.

    Examples:
        >>> CAFOOptions(lambda1=1e-3).c1
        10.0
        >>> try:
        ...     CAFOOptions(sparsity=0.8)
        ... except TypeError as err:
        ...     print(str(err)[:40])
        sparsity must be a window (low, high), e
        >>> CAFOOptions().orientation, CAFOOptions(orientation="paper").sign
        ('captum', 1.0)
    """

    lambda1: float | Tensor = 0.0
    lambda2: float | None = None
    c1: float = 10.0
    sparsity: tuple[float, float] | None = None
    orientation: Orientation = "captum"

    def __post_init__(self) -> None:
        if self.orientation not in ORIENTATIONS:
            raise ValueError(
                f"orientation must be 'captum' (positive = evidence for the target, the default) or "
                f"'paper' (the loss-increasing perturbation), got {self.orientation!r}"
            )
        check_lambda1(self.lambda1)
        if torch.as_tensor(self.lambda1).dim() > 1:
            raise ValueError(
                f"lambda1 must be a number or a 1-d tensor, got shape {tuple(self.lambda1.shape)}"
            )
        if isinstance(self.c1, bool) or not isinstance(self.c1, int | float) or not math.isfinite(self.c1):
            raise ValueError(f"c1 must be a positive number, got {self.c1}")
        if self.c1 <= 0:
            raise ValueError(f"c1 must be a positive number, got {self.c1}")
        if self.lambda2 is not None:
            if isinstance(self.lambda2, bool) or not isinstance(self.lambda2, int | float):
                raise TypeError(f"lambda2 must be a number or None, got {type(self.lambda2).__name__}")
            if not math.isfinite(self.lambda2) or self.lambda2 <= 0:
                raise ValueError(f"lambda2 must be a finite positive number (or None), got {self.lambda2}")
        if self.sparsity is not None:
            if not isinstance(self.sparsity, tuple | list):
                raise TypeError(
                    f"sparsity must be a window (low, high), e.g. (0.75, 1.0), not {self.sparsity!r}; "
                    "for a target sparsity s use (s, 1.0)"
                )
            low_high = tuple(self.sparsity)
            if len(low_high) != 2 or not 0.0 <= low_high[0] < low_high[1] <= 1.0:
                raise ValueError(
                    f"sparsity must be a window (low, high) with 0 <= low < high <= 1, got {self.sparsity}"
                )

    @property
    def sign(self) -> float:
        """Factor from the solved ``Delta`` (paper orientation) to the returned attribution."""
        return 1.0 if self.orientation == "paper" else -1.0

    def check_batch(self, n: int) -> None:
        """``ValueError`` unless ``lambda1`` is one number or one value per example."""
        lam1 = torch.as_tensor(self.lambda1)
        if lam1.numel() not in (1, n):
            raise ValueError(
                f"lambda1 must be a number or a 1-d tensor with one value per example ({n}), "
                f"got shape {tuple(lam1.shape)}"
            )

    def for_examples(self, start: int, stop: int, n: int) -> Any:
        """These options for examples ``start:stop`` of a batch of ``n`` (per-example ``lambda1``)."""
        lam1 = torch.as_tensor(self.lambda1)
        if lam1.dim() == 1 and lam1.numel() == n and (start, stop) != (0, n):
            return dataclasses.replace(self, lambda1=lam1[start:stop])
        return self


@dataclass(frozen=True)
class CASOOptions(CAFOOptions):
    """Every solver and curvature option of :meth:`CASO.attribute`, validated once.

    Examples:
        >>> opts = CASOOptions(lambda1=1e-3, hessian="exact")
        >>> opts.solver, opts.tol, opts.hessian
        ('certified', None, 'exact')
        >>> try:
        ...     CASOOptions(hessian="dense")
        ... except ValueError as err:
        ...     print(err)
        hessian must be one of 'auto', 'closed_form', 'gauss_newton', 'exact', got 'dense'
    """

    solver: str = "certified"
    tol: float | None = None
    max_iter: int = 1000
    n_iter: int | None = None
    lr: float = 0.1
    decay: float = 0.5
    hessian: str = "auto"
    rank_tol: float = DEFAULT_RANK_TOL
    n_power_iter: int = 10
    max_rank: int | None = None
    max_memory: int | None = None
    show_progress: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.show_progress, bool):
            raise TypeError(f"show_progress must be True or False, got {self.show_progress!r}")
        if self.hessian != "auto":
            get_path(self.hessian)  # raises naming the registered paths
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(map(repr, SOLVERS))}, got {self.solver!r}")
        if self.solver == "paper":
            _positive_int("n_iter (FISTA iterations)", self.n_iter, optional=True)
            if not self.lr > 0:
                raise ValueError(f"lr must be positive, got {self.lr}")
        elif self.n_iter is not None:
            raise ValueError(
                "n_iter is the fixed iteration count of solver='paper'; the certified solver stops on "
                "tol and max_iter"
            )
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"decay must lie in (0, 1), got {self.decay}")
        _positive_int("max_iter", self.max_iter)
        _positive_int("n_power_iter", self.n_power_iter)
        _positive_int("max_rank", self.max_rank, optional=True)
        _positive_int("max_memory (bytes)", self.max_memory, optional=True)
        if self.tol is not None and not 0.0 < self.tol < 1.0:
            raise ValueError(f"tol must lie in (0, 1), got {self.tol}")
        if not 0.0 <= self.rank_tol < 1.0:
            raise ValueError(f"rank_tol must lie in [0, 1), got {self.rank_tol}")

    @property
    def paper_iterations(self) -> int:
        """FISTA iterations of ``solver="paper"`` (paper: 10)."""
        return self.n_iter or 10


F = TypeVar("F", bound=Callable[..., Any])


def matching_options(options: type, *, exclude: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Decorator: check that a method's keyword-only arguments are ``options``' fields (same defaults)
    plus :data:`FACADE_ARGS`, minus ``exclude``. Raises ``TypeError`` when the class is defined.

    Examples:
        >>> @matching_options(CAFOOptions)
        ... def attribute(inputs, *, lambda1=0.0, lambda2=None, c1=10.0, sparsity=None,
        ...               orientation="captum", abs=False, internal_batch_size=None): ...
    """
    fields = {f.name: f.default for f in dataclasses.fields(options) if f.name not in exclude}

    def check(method: F) -> F:
        params = {
            p.name: p.default
            for p in inspect.signature(method).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in FACADE_ARGS
        }
        if params != fields:
            missing = sorted(set(fields) - set(params))
            extra = sorted(set(params) - set(fields))
            wrong = sorted(k for k in set(params) & set(fields) if params[k] != fields[k])
            raise TypeError(
                f"{method.__qualname__} and {options.__name__} disagree: missing {missing}, "
                f"unknown {extra}, different defaults {wrong}"
            )
        return method

    return check
