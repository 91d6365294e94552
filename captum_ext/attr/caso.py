"""CASO and CAFO (Singla, Wallace, Feng, Feizi, ICML 2019) as Captum attributions.

This module is plumbing only: input/target formatting, validation, batching and bookkeeping. The
maths lives in :mod:`captum_ext.attr.hessian` (input Hessians) and :mod:`captum_ext.attr.optim` (FISTA, prox,
lambda1 search).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor, nn

from .._format import (
    TargetType,
    TensorOrTuple,
    expand_target,
    format_additional_args,
    format_inputs,
    format_output,
    repeat_additional_args,
    run_forward,
    select_additional_args,
)
from .._model_state import has_stochastic_or_batch_layers
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
    unflatten_features,
)
from .optim import caso_objective, fista, soft_threshold, sparsity_ratio, sparsity_search

HessianMode = Literal["auto", "closed_form", "exact"]


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
        hessian: ``"closed_form"``, ``"exact"`` or ``"none"`` (CAFO).
        target: class whose loss was explained.
        in_window: for the sparsity search, whether the chosen sparsity lies in the window.
        probe_gap: for ``hessian="auto"``, relative curvature of the logits along a random direction
            (zero for piecewise-linear nets; see :func:`captum_ext.attr.hessian.logit_curvature_gap`).
        n_hvp: Hessian-vector products evaluated by double backward (exact path).
        n_vjp: vector-Jacobian products (backward passes) used to build the closed-form factor.
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
        )


def _owning_module(forward_func: Callable[..., Tensor]) -> nn.Module | None:
    if isinstance(forward_func, nn.Module):
        return forward_func
    owner = getattr(forward_func, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


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
        module = _owning_module(self.forward_func)
        if module is None:
            return
        live = has_stochastic_or_batch_layers(module)
        if live:
            raise ValueError(
                f"{type(self).__name__} needs a deterministic, per-example model, but these layers "
                f"are in training mode: {live[:5]}. Call model.eval() first (captum_ext never "
                "changes the model's mode for you)."
            )

    @staticmethod
    def _check_common(inputs: tuple[Tensor, ...], lambda1: Any, c1: float) -> None:
        for i, x in enumerate(inputs):
            if not x.is_floating_point():
                raise TypeError(f"inputs[{i}] must be floating point, got {x.dtype}")
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"inputs[{i}] contains NaN or infinite values")
        _check_lambda1(lambda1)
        if not math.isfinite(c1) or c1 <= 0:
            raise ValueError(f"c1 must be a positive number, got {c1}")

    @staticmethod
    def _check_sparsity(sparsity: tuple[float, float] | None) -> None:
        if sparsity is None:
            return
        if len(sparsity) != 2 or not 0.0 <= sparsity[0] < sparsity[1] <= 1.0:
            raise ValueError(
                f"sparsity must be a window (low, high) with 0 <= low < high <= 1, got {sparsity}"
            )

    # ------------------------------------------------------------------ driver
    def _run(
        self,
        inputs: TensorOrTuple,
        target: TargetType,
        additional_forward_args: Any,
        lambda1_grid: Callable[[int, torch.device, torch.dtype], Tensor] | None,
        internal_batch_size: int | None,
        solve_kwargs: dict[str, Any],
        sweep: bool,
    ) -> tuple[tuple[Tensor, ...], bool]:
        tup, is_tuple = format_inputs(inputs)
        self._check_common(tup, solve_kwargs["lambda1"], solve_kwargs["c1"])
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
        with torch.enable_grad():
            for start in range(0, n, chunk):
                idx = torch.arange(start, min(n, start + chunk), device=tup[0].device)
                xs = tuple(x.index_select(0, idx) for x in tup)
                a = select_additional_args(args, n, idx) if chunk < n else args
                xs_e, a_e = self._expand(xs, a)
                graph = build_loss_graph(self.forward_func, xs_e, a_e, None)
                t = expand_target(target, n, graph.logits.shape[1], graph.logits.device)
                if t is not None:
                    t = t.index_select(0, idx.to(t.device))
                elif self._samples > 1:  # explain the clean input's predicted class
                    with torch.no_grad():
                        t = run_forward(self.forward_func, xs, a).argmax(1)
                if t is not None:
                    graph.target = t.repeat_interleave(self._samples)
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
        lambda1: float,
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
        lam = torch.full((n, 1), float(lambda1), dtype=g.dtype, device=g.device)
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


class CASO(_ContextAwareAttribution):
    r"""Context-Aware Second-Order interpretation (Singla et al., 2019, Def. 3).

    For each example, with ``l`` the cross-entropy at ``target`` (default: the predicted class),
    ``g`` its input-gradient and ``H`` its input Hessian, CASO returns the perturbation that maximises

    .. math:: g^T\Delta + \tfrac12 \Delta^T H \Delta - \lambda_1\|\Delta\|_1 - \lambda_2\|\Delta\|_2^2

    shaped like the inputs (``|Delta|`` with ``abs=True``). ``lambda2=None`` uses the paper's
    ``L/2 + c1`` (Theorem 3; ``L`` the top Hessian eigenvalue, ``c1 = 10``).

    The Hessian enters in one of two ways (``hessian=``):

    * ``"closed_form"``: ``H = B B^T`` from the eigen-decomposition of ``A = diag(p) - pp^T`` and one
      backward pass per kept eigenvector (exact for ReLU / max-pool / linear / conv / eval-mode
      BatchNorm networks, the Gauss-Newton part otherwise). ``L`` is exact, ``lambda1 = 0`` is solved
      in closed form (Woodbury), and every ``lambda1`` of a sweep reuses the factor.
    * ``"exact"``: Hessian-vector products by double backward and ``L`` by power iteration: the
      paper's algorithm, valid for any twice-differentiable model (softplus, GELU, ...).
    * ``"auto"`` (default): one exact HVP probe decides; the closed form is used when it matches the
      exact Hessian (piecewise-linear nets).

    ``lambda1 > 0`` is solved by proximal FISTA with backtracking (``n_iter``, ``lr``, ``decay``;
    paper: 10, 0.1, 0.5), step sizes per example. ``sparsity=(low, high)`` chooses ``lambda1`` per
    example by the paper's unsupervised sparsity-ratio rule (Sec. 4.1).

    After each call, :attr:`last_details` (:class:`AttributionDetails`) holds the ``lambda1``,
    ``lambda2``, sparsity, objective value, top eigenvalue and Hessian rank used per example.

    SmoothCASO is ``captum.attr.NoiseTunnel(CASO(model))`` (paper: ``nt_samples=50``,
    ``stdevs=0.15``). NoiseTunnel averages the CASO solutions of the noisy copies (SmoothGrad style);
    the paper's Def. 4 instead solves one problem with averaged ``g`` and ``H``.

    Args:
        forward_func: the model or any function returning logits ``(batch, classes)``. Must be
            deterministic and per-example (eval mode for BatchNorm / Dropout).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from captum_ext import CASO
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <...>
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
        >>> x = torch.randn(2, 1, 4, 4)
        >>> caso = CASO(model)
        >>> attr = caso.attribute(x, target=[0, 2], lambda1=1e-3)
        >>> attr.shape
        torch.Size([2, 1, 4, 4])
        >>> caso.last_details.hessian
        'closed_form'
    """

    @log_usage()
    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        lambda1: float = 0.0,
        lambda2: float | None = None,
        c1: float = 10.0,
        n_iter: int = 10,
        lr: float = 0.1,
        decay: float = 0.5,
        hessian: HessianMode = "auto",
        rank_tol: float = DEFAULT_RANK_TOL,
        sparsity: tuple[float, float] | None = None,
        abs: bool = False,
        n_power_iter: int = 10,
        internal_batch_size: int | None = None,
        max_rank: int | None = None,
    ) -> TensorOrTuple:
        r"""Compute CASO attributions.

        Args:
            inputs: tensor or tuple of tensors, batch first.
            target: class per example (int, list, or tensor); default the predicted class.
            additional_forward_args: extra arguments passed to ``forward_func`` after the inputs.
            lambda1: l1 weight (>= 0). Ignored when ``sparsity`` is given.
            lambda2: l2 weight; ``None`` for ``L/2 + c1``. A float must exceed ``L/2``.
            c1: margin added to ``L/2`` when ``lambda2`` is None (paper: 10).
            n_iter, lr, decay: FISTA iterations, initial step and backtracking factor.
            hessian: ``"auto"``, ``"closed_form"`` or ``"exact"`` (see the class docstring).
            rank_tol: relative spectral mass of ``A = diag(p) - pp^T`` the closed form may drop.
                The Hessian error is at most ``rank_tol * tr(A) * ||J||_2^2`` (default 1e-3);
                0 keeps the whole spectrum (exact for piecewise-linear nets).
            sparsity: ``(low, high)`` window for the unsupervised ``lambda1`` choice (paper:
                ``(0.75, 1.0)``), or None.
            abs: return ``|Delta|`` (the paper's importance) instead of the signed ``Delta``.
            n_power_iter: power iterations for ``L`` on the exact path (paper: 10).
            internal_batch_size: examples per chunk, to bound memory for large inputs or many
                classes (the factor holds ``rank`` input-sized vectors per example).
            max_rank: hard cap on the closed-form rank (memory); exactness is lost beyond it.

        Returns:
            Attributions shaped like ``inputs`` (tuple in, tuple out).
        """
        self._check_sparsity(sparsity)
        if hessian not in ("auto", "closed_form", "exact"):
            raise ValueError(f"hessian must be 'auto', 'closed_form' or 'exact', got {hessian!r}")
        kw = dict(
            lambda1=lambda1,
            lambda2=lambda2,
            c1=c1,
            n_iter=n_iter,
            lr=lr,
            decay=decay,
            hessian=hessian,
            rank_tol=rank_tol,
            sparsity=sparsity,
            n_power_iter=n_power_iter,
            max_rank=max_rank,
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
        target: TargetType = None,
        additional_forward_args: Any = None,
        **kwargs: Any,
    ) -> TensorOrTuple:
        """Solve CASO for several ``lambda1`` values at once, reusing one Hessian per example.

        Returns attributions with a leading sweep dimension: ``(m, *input.shape)`` per input.
        ``last_details`` fields are ``(n, m)``. Other keyword arguments are those of
        :meth:`attribute` (except ``lambda1`` and ``sparsity``).

        Examples:
            >>> maps = CASO(model).sweep(x, [1e-4, 1e-3, 1e-2])  # doctest: +SKIP
            >>> maps.shape  # (3, *x.shape)  # doctest: +SKIP
        """
        if "lambda1" in kwargs or "sparsity" in kwargs:
            raise TypeError("sweep() takes lambda1_values instead of lambda1 / sparsity")
        grid = _grid_tensor(lambda1_values)
        abs_ = kwargs.pop("abs", False)
        internal_batch_size = kwargs.pop("internal_batch_size", None)
        kw = dict(
            lambda1=0.0,
            lambda2=None,
            c1=10.0,
            n_iter=10,
            lr=0.1,
            decay=0.5,
            hessian="auto",
            rank_tol=DEFAULT_RANK_TOL,
            sparsity=None,
            n_power_iter=10,
            max_rank=None,
        )
        unknown = set(kwargs) - set(kw)
        if unknown:
            raise TypeError(f"unexpected keyword arguments: {sorted(unknown)}")
        kw.update(kwargs)
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
    def _solve(
        self,
        graph: LossGraph,
        lambda1_grid,
        *,
        lambda1,
        lambda2,
        c1,
        n_iter,
        lr,
        decay,
        hessian,
        rank_tol,
        sparsity,
        n_power_iter,
        max_rank,
    ):
        n = graph.n
        dtype, device = graph.dtype, graph.logits.device
        probe_gap = None
        mode = hessian
        if mode == "auto":
            gen = torch.Generator(device="cpu").manual_seed(0)
            d = sum(x[0].numel() for x in graph.inputs)
            c = graph.logits.shape[1]
            v = torch.randn(n, d, generator=gen, dtype=dtype).to(device)
            w = torch.randn(n, c, generator=gen, dtype=dtype).to(device)
            probe_gap = logit_curvature_gap(graph, v, w).detach()
            tol = 1e-4 if dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-9
            mode = "closed_form" if bool((probe_gap <= tol).all()) else "exact"

        factor: LowRankFactor | None = None
        exact: ExactHessian | None = None
        s = self._samples
        n = n // s
        if mode == "closed_form":
            per_copy = low_rank_factor(graph, rank_tol=rank_tol, max_rank=max_rank)
            n_vjp = per_copy.B.shape[2] + 1
            factor = group_mean_factor(per_copy, s)
            g = factor.gradient
            top = factor.top_eigenvalue()
            hvp = factor.hvp
            rank = factor.rank
        else:
            exact = ExactHessian(graph, samples=s)
            g = exact.gradient
            top = exact.top_eigenvalue(n_power_iter)
            hvp = exact.hvp
            rank = torch.zeros(n, dtype=torch.long, device=device)
            n_vjp = 1
        lam2 = self._resolve_lambda2(lambda2, c1, top, "CASO")
        grid = None if lambda1_grid is None else lambda1_grid(n, device, dtype)

        def solve(lams: Tensor) -> tuple[Tensor, Tensor]:
            gm = g[:, None, :]
            l2 = lam2[:, None, None]
            l1 = lams[:, :, None]
            closed = (lams == 0)[:, :, None] if factor is not None else None
            if closed is not None and bool(closed.all()):
                delta = factor.solve_shifted(g, lam2)[:, None, :].expand(-1, lams.shape[1], -1)
            else:
                res = fista(gm, hvp, l1, l2, n_iter=n_iter, lr=lr, decay=decay)
                delta, hd = res.delta, res.h_delta
                if closed is not None and bool(closed.any()):  # lambda1 = 0 columns: Woodbury
                    delta = torch.where(closed, factor.solve_shifted(g, lam2)[:, None, :], delta)
            if closed is not None:
                hd = factor.hvp(delta)
            obj = caso_objective(delta, hd, gm, l1, l2)
            return delta, obj

        delta, obj, lam1, eta, in_window = self._search_or_solve(solve, g, lambda1, grid, sparsity)
        if exact is not None:
            exact.release()
        else:
            graph.release()
        details = AttributionDetails(
            lambda1=lam1.detach(),
            lambda2=lam2.detach(),
            sparsity=eta.detach(),
            objective=obj.detach(),
            top_eigenvalue=top.detach(),
            rank=rank,
            hessian=mode,
            target=graph.target[::s],
            in_window=in_window,
            probe_gap=None if probe_gap is None else probe_gap.reshape(n, s).amax(1),
            n_hvp=0 if exact is None else exact.n_hvp,
            n_vjp=n_vjp,
        )
        return delta.detach(), details


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
        target: TargetType = None,
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
            target: class per example (int, list, or tensor); default the predicted class.
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
        target: TargetType = None,
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
        )
        return delta.detach(), details
