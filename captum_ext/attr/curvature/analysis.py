"""What the autograd graph says about the logits' curvature, decided once per call and shared by every path.

:func:`analyse_graph` returns a :class:`GraphAnalysis`: whether the logits have zero curvature at this
point (then the closed form and Gauss-Newton paths are exact), whether every layer has a real second
derivative (then the exact path is), and how that was decided. Each registered path reads it through
:meth:`~captum_ext.attr.curvature.registry.CurvaturePath.not_exact_because`.

1. A free walk over the graph (:func:`structural_curvature`) recognises piecewise-linear nets (every
   input-dependent node a known piecewise-linear operation) and nets curved by known smooth operations.
2. Otherwise one double-backward probe (:func:`logit_curvature_gap`) measures the curvature at this
   point. The decision is made per call: curvature depends on the point (a saturated Hardswish is flat).
3. Where double backward cannot be trusted (a custom ``autograd.Function``, whose backward may be
   ``@once_differentiable`` or detached and then yields exact zeros; a ``torch.compile`` graph; a layer
   without a double-backward kernel such as Hardsigmoid) a finite difference of first derivatives
   (:func:`finite_difference_curvature`) decides instead, and a double-backward answer that contradicts
   it marks the exact path as unusable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..._autograd import custom_function_nodes, input_gradient, input_hvp, is_missing_double_backward
from ..._format import run_forward
from ..graph import LossGraph, flatten_features, unflatten_features


def logit_curvature_gap(graph: LossGraph, v: Tensor, w: Tensor) -> Tensor:
    """Relative size of the logits' own curvature along ``v``, per example, by one double backward.

    Returns ``||Hess(w.f) v|| * (1 + ||x||) / (||J^T w|| * ||v||)`` for cotangents ``w`` ``(n, c)``.
    The loss Hessian equals its Gauss-Newton part ``J^T A J`` exactly when every logit has zero
    curvature, which autograd reports as exact zeros for ReLU / LeakyReLU / max-pool / linear / conv /
    eval-mode BatchNorm networks; smooth activations (softplus, GELU, sigmoid) give an O(1) value.
    Probing the logits rather than the loss avoids the catastrophic cancellation of ``p_t - 1`` in
    float32 at high confidence. Keeps the graph alive.
    """
    inputs = graph.inputs
    grads = input_gradient(graph.logits, inputs, w, create_graph=True, retain_graph=True)
    hv = flatten_features(input_hvp(grads, inputs, unflatten_features(v, inputs)))
    return _relative_curvature(hv, flatten_features([gr.detach() for gr in grads]), graph, v)


def _relative_curvature(hv: Tensor, jt_w: Tensor, graph: LossGraph, v: Tensor) -> Tensor:
    """``||Hv|| (1 + ||x||) / (||J^T w|| ||v||)`` per example (scale-free)."""
    x_norm = flatten_features([x.detach() for x in graph.inputs]).norm(dim=1)
    tiny = torch.finfo(v.dtype).tiny
    return hv.norm(dim=1) * (1 + x_norm) / (jt_w.norm(dim=1) * v.norm(dim=1)).clamp_min(tiny)


def finite_difference_curvature(
    graph: LossGraph, forward_func: Callable[..., Tensor], args: tuple[Any, ...], v: Tensor, w: Tensor
) -> tuple[Tensor, Tensor]:
    """``Hess(w.f) v`` by a central difference of first derivatives (no double backward), and ``J^T w``.

    Two forward and two backward passes at ``x +- h v`` with ``h = eps^(1/3) (1 + ||x||) / ||v||``
    (truncation and round-off balanced: about ``eps^(2/3)`` relative, 4e-11 in float64 and 2e-5 in
    float32). Works through layers without a second derivative (compiled graphs, custom Functions);
    a kink of a piecewise-linear layer inside the step shows up as curvature (the safe direction).

    Returns:
        ``(hv, jt_w)``, each ``(n, d)``.
    """
    x = flatten_features([t.detach() for t in graph.inputs])
    step = (
        torch.finfo(v.dtype).eps ** (1 / 3) * (1 + x.norm(dim=1, keepdim=True)) / v.norm(dim=1, keepdim=True)
    )
    grads = []
    for sign in (1.0, -1.0):
        moved = tuple(t.requires_grad_(True) for t in unflatten_features(x + sign * step * v, graph.inputs))
        with torch.enable_grad():
            out = run_forward(forward_func, moved, args)
            out = torch.cat([torch.zeros_like(out), out], dim=1) if graph.binary else out
            grads.append(flatten_features(input_gradient(out, moved, w.to(out.dtype))))
    return (grads[0] - grads[1]) / (2 * step), (grads[0] + grads[1]) / 2


# ---------------------------------------------------------------------------- structural curvature probe
#: autograd nodes that are piecewise linear in every input they receive (selections, reshapes, sums,
#: max / ReLU-type activations, pooling by averages or maxima)
_PL_ANY = frozenset(
    {
        "AbsBackward0",
        "AdaptiveAvgPool1DBackward0",
        "AdaptiveAvgPool2DBackward0",
        "AdaptiveAvgPool3DBackward0",
        "AdaptiveMaxPool1DBackward0",
        "AdaptiveMaxPool2DBackward0",
        "AdaptiveMaxPool3DBackward0",
        "AddBackward0",
        "AddBackward1",
        "AliasBackward0",
        "AmaxBackward0",
        "AminBackward0",
        "AsStridedBackward0",
        "AvgPool2DBackward0",
        "AvgPool3DBackward0",
        "CatBackward0",
        "ClampBackward1",
        "ClampMaxBackward0",
        "ClampMinBackward0",
        "CloneBackward0",
        "ConstantPadNdBackward0",
        "DivBackward1",
        "ExpandBackward0",
        "FlipBackward0",
        "HardsigmoidBackward0",
        "HardtanhBackward0",
        "IndexBackward0",
        "IndexSelectBackward0",
        "GatherBackward0",
        "LeakyReluBackward0",
        "LeakyReluBackward1",
        "MaxBackward0",
        "MaxBackward1",
        "MaximumBackward0",
        "MaxPool2DWithIndicesBackward0",
        "MaxPool3DWithIndicesBackward0",
        "MeanBackward0",
        "MeanBackward1",
        "MinBackward0",
        "MinBackward1",
        "MinimumBackward0",
        "MulBackward1",
        "NegBackward0",
        "PermuteBackward0",
        "ReflectionPad1DBackward0",
        "ReflectionPad2DBackward0",
        "ReluBackward0",
        "RepeatBackward0",
        "ReplicationPad1DBackward0",
        "ReplicationPad2DBackward0",
        "ReshapeAliasBackward0",
        "RollBackward0",
        "SelectBackward0",
        "SliceBackward0",
        "SplitBackward0",
        "SplitWithSizesBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "SqueezeBackward2",
        "StackBackward0",
        "SubBackward0",
        "SubBackward1",
        "SumBackward0",
        "SumBackward1",
        "TBackward0",
        "ThresholdBackward0",
        "ToCopyBackward0",
        "TransposeBackward0",
        "UnbindBackward0",
        "UnsafeViewBackward0",
        "UnsqueezeBackward0",
        "UpsampleNearest2DBackward0",
        "ViewBackward0",
        "WhereBackward0",
    }
)
#: nodes that are linear in ONE operand: piecewise linear only when no other operand depends on the input
_PL_SINGLE = frozenset(
    {
        "AddmmBackward0",
        "BmmBackward0",
        "ConvolutionBackward0",
        "MmBackward0",
        "MulBackward0",
        "MvBackward0",
        "PreluKernelBackward0",
    }
)
#: batch-norm nodes: affine in the input in eval mode (``_saved_training`` False), curved in training mode
_BATCH_NORM = frozenset({"NativeBatchNormBackward0", "CudnnBatchNormBackward0", "MiopenBatchNormBackward0"})
#: output-only nodes: ``log_softmax`` shifts each example's logits by a constant, which the loss ignores
_HEAD = frozenset({"LogSoftmaxBackward0"})


def structural_piecewise_linear(graph: LossGraph) -> tuple[bool, str]:
    """Whether the logits are piecewise linear in the inputs, read from the autograd graph (no passes).

    Walks ``graph.logits.grad_fn`` back to the input leaves and inspects every node that depends on an
    input. The answer is ``True`` only when each of them is a known piecewise-linear operation
    (ReLU-type activations, max / average pooling, reshapes, selections, sums, ``log_softmax`` as the
    output node) or an operation linear in its one input-dependent operand (matrix products,
    convolutions and products by tensors that do not depend on the input, eval-mode batch norm, division
    of an input-dependent numerator). Then the logits' curvature is zero almost everywhere and the loss
    Hessian is its Gauss-Newton part. Any other node (smooth activations, normalisation by statistics of
    the input, products of two input-dependent tensors such as attention's ``Q K^T``, custom functions)
    gives ``False``: "unknown", to be settled by :func:`logit_curvature_gap`. Sound by construction, not
    complete.

    Returns:
        ``(piecewise_linear, reason)``; ``reason`` names the first node that was not recognised.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from captum_ext.attr.graph import build_loss_graph
        >>> relu = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> structural_piecewise_linear(build_loss_graph(relu, (torch.randn(2, 4),)))
        (True, 'all input-dependent nodes are piecewise linear')
        >>> gelu = nn.Sequential(nn.Linear(4, 3), nn.GELU(), nn.Linear(3, 2))
        >>> structural_piecewise_linear(build_loss_graph(gelu, (torch.randn(2, 4),)))
        (False, 'GeluBackward0')
    """
    kind, names = _classify_graph(graph)
    if kind == "piecewise_linear":
        return True, "all input-dependent nodes are piecewise linear"
    return False, names[0]


#: autograd nodes of smooth, genuinely curved operations that all have a double backward: a graph whose
#: only non-piecewise-linear nodes are of these kinds is curved and the exact path can differentiate it
_SMOOTH = frozenset(
    {
        "GeluBackward0",
        "TanhBackward0",
        "SigmoidBackward0",
        "SoftplusBackward0",
        "EluBackward0",
        "SiluBackward0",
        "MishBackward0",
        "LogSigmoidBackward0",
        "NativeLayerNormBackward0",
        "SoftmaxBackward0",
        "SafeSoftmaxBackward0",
        "ExpBackward0",
        "LogBackward0",
        "SqrtBackward0",
        "RsqrtBackward0",
    }
)


#: products and quotients: smooth with a double backward whichever operands depend on the input
_PRODUCTS = frozenset({"DivBackward0", "BaddbmmBackward0", "MvBackward0", "DotBackward0"})


def structural_curvature(graph: LossGraph) -> tuple[str, tuple[str, ...]]:
    """Classify the logits' dependence on the inputs from the autograd graph (no passes).

    Returns:
        ``(kind, names)``: ``kind`` is ``"piecewise_linear"`` (as :func:`structural_piecewise_linear`
        says, ``names`` empty), ``"smooth"`` (every unrecognised input-dependent node is a smooth
        operation with a double backward, e.g. GELU, tanh, LayerNorm, softmax: take the exact path
        without probing) or ``"unknown"`` (settle it with :func:`logit_curvature_gap`); ``names`` are
        the unrecognised nodes' types in graph order. Calling a net "smooth" is always safe: the exact
        path is correct for every twice-differentiable net, only slower than the closed form.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from captum_ext.attr.graph import build_loss_graph
        >>> gelu = nn.Sequential(nn.Linear(4, 3), nn.GELU(), nn.Linear(3, 2))
        >>> structural_curvature(build_loss_graph(gelu, (torch.randn(2, 4),)))
        ('smooth', ('GeluBackward0',))
        >>> structural_curvature(build_loss_graph(lambda x: x * x, (torch.randn(2, 4),)))
        ('smooth', ('MulBackward0',))
        >>> structural_curvature(build_loss_graph(torch.sin, (torch.randn(2, 4),)))
        ('unknown', ('SinBackward0',))
    """
    return _classify_graph(graph)


def _input_dependence(graph: LossGraph, root: Any) -> dict[Any, bool]:
    """Every node reachable from ``root`` mapped to whether it depends on one of the inputs."""
    leaves = {id(x) for x in graph.inputs}
    depends: dict[Any, bool] = {}
    # iterative post-order: a node depends on the input when one of its children does
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if node in depends:
            continue
        if type(node).__name__ == "AccumulateGrad":
            depends[node] = id(node.variable) in leaves
            continue
        children = [nxt for nxt, _ in node.next_functions if nxt is not None]
        if expanded:
            depends[node] = any(depends.get(ch, False) for ch in children)
            continue
        stack.append((node, True))
        stack.extend((ch, False) for ch in children if ch not in depends)
    return depends


def _classify_graph(graph: LossGraph) -> tuple[str, tuple[str, ...]]:
    root = graph.logits.grad_fn
    if root is None:
        return "unknown", ("logits have no grad_fn",)
    depends = _input_dependence(graph, root)
    names: list[str] = []
    smooth = True
    for node, dep in depends.items():
        name = type(node).__name__
        if not dep or name == "AccumulateGrad" or name in _PL_ANY:
            continue
        operands = [depends.get(nxt, False) if nxt is not None else False for nxt, _ in node.next_functions]
        n_dep = sum(operands)
        if name in _PL_SINGLE and n_dep == 1:
            continue
        if name == "DivBackward0" and operands[0] and n_dep == 1:  # x / c, not c / x
            continue
        if name in _BATCH_NORM and n_dep == 1 and getattr(node, "_saved_training", None) is False:
            continue
        if name in _HEAD and node is root:
            continue
        names.append(name)
        # a product or quotient of input-dependent tensors (attention's Q K^T) is smooth and curved
        bilinear = (name in _PL_SINGLE and n_dep > 1) or name in _PRODUCTS
        smooth = smooth and (name in _SMOOTH or bilinear)
    if not names:
        return "piecewise_linear", ()
    return ("smooth" if smooth else "unknown"), tuple(names)


#: autograd nodes known to have no double-backward kernel (flash / efficient attention only appear
#: outside :func:`~captum_ext._autograd.math_attention_kernel`)
_NO_DOUBLE_BACKWARD = frozenset(
    {
        "HardsigmoidBackward0",
        "ScaledDotProductFlashAttentionForCpuBackward0",
        "ScaledDotProductFlashAttentionBackward0",
        "ScaledDotProductEfficientAttentionBackward0",
        "ScaledDotProductCudnnAttentionBackward0",
    }
)

#: relative curvature below which the logits count as flat: double-backward probe, finite differences
_PROBE_TOL = {torch.float64: 1e-9, "low": 1e-4}
_FD_TOL = {torch.float64: 1e-6, "low": 1e-2}


def _tol(table: dict[Any, float], dtype: torch.dtype) -> float:
    return table.get(dtype, table["low"])


@dataclass(frozen=True)
class GraphAnalysis:
    """What is known about one loss graph's curvature at its current point (one per call or chunk).

    Attributes:
        zero_curvature: the logits have no curvature here, so the loss Hessian is its Gauss-Newton part.
        double_backward: every layer has a trustworthy second derivative.
        probe: how it was decided (``"structural"``, ``"structural (smooth: ...)"``, ``"numeric (...)"``).
        probe_gap: per-example relative curvature from a numeric probe, None when the graph decided.
        curved_because: why the logits are curved (empty when they are not).
        no_double_backward_because: why second derivatives are missing or untrustworthy (empty if not).
    """

    zero_curvature: bool
    double_backward: bool
    probe: str
    probe_gap: Tensor | None = None
    curved_because: str = ""
    no_double_backward_because: str = ""


def analyse_graph(
    graph: LossGraph, forward_func: Callable[..., Tensor], args: tuple[Any, ...] = ()
) -> GraphAnalysis:
    """Decide, for this graph at this point, whether the logits are curved and double backward is real.

    Free for graphs the structural walk recognises; otherwise one double-backward probe, plus a
    finite difference of first derivatives (two forward and backward passes) where double backward
    is missing or cannot be trusted (custom ``autograd.Function``, ``torch.compile`` graphs).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from captum_ext.attr.graph import build_loss_graph
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.Hardswish(), nn.Linear(3, 2)).double()
        >>> x = torch.randn(2, 4, dtype=torch.float64)
        >>> a = analyse_graph(build_loss_graph(net, (x,)), net)
        >>> a.zero_curvature, a.double_backward, a.probe
        (False, True, 'numeric (graph has HardswishBackward0)')
    """
    kind, names = structural_curvature(graph)
    root = graph.logits.grad_fn
    custom = custom_function_nodes(root)
    missing = sorted({type(node).__name__ for node in _nodes(root)} & _NO_DOUBLE_BACKWARD)
    untrusted = ", ".join(custom + missing)
    no_db = (
        f"the graph has {untrusted}, whose second derivative autograd does not provide" if untrusted else ""
    )
    if kind == "piecewise_linear":
        return GraphAnalysis(True, not untrusted, "structural", no_double_backward_because=no_db)
    if kind == "smooth" and not custom:
        what = ", ".join(sorted(set(names)))
        return GraphAnalysis(
            False, not missing, f"structural (smooth: {what})", None, f"it has {what}", no_db
        )
    n, dtype, device = graph.n, graph.dtype, graph.logits.device
    gen = torch.Generator(device="cpu").manual_seed(0)
    v = torch.randn(n, sum(x[0].numel() for x in graph.inputs), generator=gen, dtype=dtype).to(device)
    # zero-sum cotangents: the loss only sees logits up to a per-example shift (log_softmax heads)
    w = torch.randn(n, graph.logits.shape[1], generator=gen, dtype=dtype).to(device)
    w = w - w.mean(1, keepdim=True)
    probe = f"numeric (graph has {names[0]})"
    try:
        gap_db = logit_curvature_gap(graph, v, w).detach()
    except RuntimeError as err:
        if not is_missing_double_backward(err):
            raise
        gap_db, no_db = None, no_db or str(err).splitlines()[0]
    if gap_db is not None and not untrusted:
        flat = bool((gap_db <= _tol(_PROBE_TOL, dtype)).all())
        why = (
            ""
            if flat
            else f"a double-backward probe measured curvature {float(gap_db.max()):.3g} at this point"
        )
        return GraphAnalysis(flat, True, probe, gap_db, why)
    hv, jt_w = finite_difference_curvature(graph, forward_func, args, v, w)
    gap_fd = _relative_curvature(hv, jt_w, graph, v)
    tol = _tol(_FD_TOL, dtype)
    flat = bool((gap_fd <= tol).all())
    probe = f"{probe}, finite differences ({untrusted or 'no double backward'})"
    why = "" if flat else f"finite differences of the gradient measured curvature {float(gap_fd.max()):.3g}"
    if gap_db is None:
        return GraphAnalysis(flat, False, probe, gap_fd, why, no_db)
    agree = bool(((gap_db - gap_fd).abs() <= tol * (1 + gap_fd)).all())
    if not agree:
        no_db = (
            f"detected contradiction: double backward through {untrusted} gives curvature "
            f"{float(gap_db.max()):.3g}, finite differences {float(gap_fd.max()):.3g} "
            "(a @once_differentiable or detached backward)"
        )
    return GraphAnalysis(flat, agree, probe, gap_fd, why, "" if agree else no_db)


def _nodes(root: Any) -> list[Any]:
    seen: dict[int, Any] = {}
    stack = [root]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        stack.extend(nxt for nxt, _ in getattr(node, "next_functions", ()))
    return list(seen.values())
