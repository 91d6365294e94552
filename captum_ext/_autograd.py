"""Input derivatives by autograd: the package's one home for gradients, Hessian-vector products and
the checks that second derivatives are real.

Everything here differentiates with respect to *inputs* (never parameters), with
``torch.autograd.grad`` (never ``.backward()``), so the model's ``.grad`` fields are left alone.

* :func:`input_gradient`: ``d(outputs)/d(inputs)`` for a cotangent, zeros where an input is unused,
  optionally with ``create_graph`` for a second differentiation.
* :func:`input_hvp`: ``H v`` from a gradient built with ``create_graph``; raises
  :class:`NoDoubleBackwardError` (a ``RuntimeError``) when a layer has no usable double backward,
  instead of returning the zeros autograd silently produces for detached or ``@once_differentiable``
  backward functions.
* :func:`penalty_gradient`: an input gradient that a training loss differentiates again (gradient
  penalties, score matching), refused when autograd would silently drop its second-order term.
* :func:`hutchinson`: mean and standard error of Hutchinson probes ``v.Hv`` (trace estimation).
* :func:`math_attention_kernel`: the context under which ``scaled_dot_product_attention`` (and so
  ``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``) has a double backward on every device.
* :func:`double_backward_support`: whether the graph from ``inputs`` to ``outputs`` can be
  differentiated twice, with the reason when it cannot.
* :func:`custom_function_nodes`: the ``torch.autograd.Function`` backward nodes of a graph (their
  second derivatives cannot be trusted without a numeric check).

Examples:
    >>> import torch
    >>> from captum_ext._autograd import input_gradient, input_hvp
    >>> x = torch.tensor([[1.0, 2.0]], requires_grad=True)
    >>> (g,) = input_gradient((x**3).sum(), (x,), create_graph=True)
    >>> g
    tensor([[ 3., 12.]], grad_fn=<MulBackward0>)
    >>> input_hvp((g,), (x,), (torch.ones_like(x),))
    (tensor([[ 6., 12.]]),)
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = [
    "NoDoubleBackwardError",
    "custom_function_nodes",
    "double_backward_support",
    "hutchinson",
    "input_gradient",
    "input_hvp",
    "is_missing_double_backward",
    "math_attention_kernel",
    "penalty_gradient",
    "rademacher",
]

#: fragments of torch's messages for a missing second derivative
_NO_DOUBLE_BACKWARD = (
    "not implemented",
    "does not currently support double backward",
    "once_differentiable",
    "differentiate twice",
    "does not support double backward",
)


class NoDoubleBackwardError(RuntimeError):
    """A layer of the model has no usable second derivative (no double-backward kernel, a custom
    ``autograd.Function`` whose backward is ``@once_differentiable`` or detached, a compiled graph)."""


def is_missing_double_backward(err: BaseException) -> bool:
    """Whether ``err`` is torch's complaint about a missing second derivative.

    Examples:
        >>> is_missing_double_backward(RuntimeError("derivative for aten::foo is not implemented"))
        True
        >>> is_missing_double_backward(RuntimeError("shape mismatch"))
        False
    """
    text = str(err)
    return isinstance(err, NoDoubleBackwardError) or any(frag in text for frag in _NO_DOUBLE_BACKWARD)


def _zeros_for_none(grads: Sequence[Tensor | None], like: Sequence[Tensor]) -> tuple[Tensor, ...]:
    return tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, like, strict=True))


def input_gradient(
    outputs: Tensor | Sequence[Tensor],
    inputs: Sequence[Tensor],
    grad_outputs: Tensor | Sequence[Tensor] | None = None,
    *,
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> tuple[Tensor, ...]:
    """``J^T w``: the gradient of ``outputs`` (with cotangent ``grad_outputs``) w.r.t. each input.

    Inputs the outputs do not depend on get zeros. With ``create_graph=True`` the result can be
    differentiated again (:func:`input_hvp`).

    Args:
        outputs: a tensor (scalar unless ``grad_outputs`` is given) or a sequence of them.
        inputs: tensors with ``requires_grad=True``.
        grad_outputs: cotangent(s) shaped like ``outputs``; ``None`` for scalar outputs.
        create_graph: keep the graph of the gradient for a second derivative.
        retain_graph: keep the forward graph (default: ``create_graph``).

    Returns:
        One gradient per input, shaped like it.

    Examples:
        >>> x = torch.ones(2, 3, requires_grad=True)
        >>> [g.shape for g in input_gradient((2 * x).sum(), (x,))]
        [torch.Size([2, 3])]
    """
    try:
        grads = torch.autograd.grad(
            outputs,
            tuple(inputs),
            grad_outputs=grad_outputs,
            create_graph=create_graph,
            retain_graph=create_graph if retain_graph is None else retain_graph,
            allow_unused=True,
        )
    except RuntimeError as err:
        if "donated buffers" not in str(err):
            raise
        raise RuntimeError(
            "forward_func runs a torch.compile'd graph whose backward may run only once (it donates "
            "its buffers), and this computation needs several backward passes through it. Pass the "
            "compiled nn.Module itself (its eager original is then differentiated), pass the eager "
            "model, or compile with torch._functorch.config.donated_buffer = False."
        ) from err
    return _zeros_for_none(grads, inputs)


def input_hvp(
    grads: Sequence[Tensor],
    inputs: Sequence[Tensor],
    vectors: Sequence[Tensor],
    *,
    retain_graph: bool = True,
    strict: bool = False,
) -> tuple[Tensor, ...]:
    """``H v`` from gradients built with ``create_graph=True`` (Pearlmutter's double backward).

    For a batch (gradients of a sum of per-example scalars, examples independent) this is one product
    per example with its own ``v``.

    Args:
        grads: the output of :func:`input_gradient` with ``create_graph=True``.
        inputs: the tensors the gradients were taken with respect to.
        vectors: directions, shaped like ``inputs``.
        retain_graph: keep the graph for further products.
        strict: raise :class:`NoDoubleBackwardError` when the gradients have no graph at all or one
            that does not reach the inputs (autograd's sign of a detached or ``@once_differentiable``
            backward) instead of returning zeros. Use it where the gradient must depend on the inputs
            (as that of CASO's loss surrogate always does).

    Returns:
        One product per input, shaped like it.

    Examples:
        >>> x = torch.tensor([[1.0, -1.0]], requires_grad=True)
        >>> g = input_gradient((x**2).sum(), (x,), create_graph=True)
        >>> input_hvp(g, (x,), (torch.tensor([[1.0, 0.0]]),))
        (tensor([[2., 0.]]),)
    """
    live = [i for i, g in enumerate(grads) if g.requires_grad]
    if not live:
        if strict:
            raise NoDoubleBackwardError(
                "the input gradient has no graph to differentiate again: a layer's backward is detached "
                "(a custom autograd.Function marked @once_differentiable, or a compiled model)"
            )
        return tuple(torch.zeros_like(x) for x in inputs)
    try:
        hv = torch.autograd.grad(
            [grads[i] for i in live],
            tuple(inputs),
            grad_outputs=[vectors[i] for i in live],
            retain_graph=retain_graph,
            allow_unused=True,
        )
    except RuntimeError as err:
        if is_missing_double_backward(err):
            raise NoDoubleBackwardError(str(err).splitlines()[0]) from err
        raise
    if strict and all(h is None for h in hv):
        raise NoDoubleBackwardError(
            "the input gradient does not depend on the inputs: a layer's backward is detached (e.g. a "
            "custom autograd.Function whose backward detaches its result)"
        )
    return _zeros_for_none(hv, inputs)


def penalty_gradient(score: Tensor, inputs: Sequence[Tensor], who: str) -> tuple[Tensor, ...]:
    """Input gradient of ``score`` with ``create_graph=True``, for a loss that differentiates it again.

    A training loss built on an input gradient (a gradient penalty, score matching) needs that
    gradient's own derivative with respect to the parameters. A layer without a usable double
    backward (a custom ``autograd.Function`` marked ``@once_differentiable``, a backward that detaches,
    a compiled model) makes autograd drop that term without an error: the penalty would be reported
    but never trained. This refuses a gradient without a graph and warns about custom Functions, whose
    second derivatives cannot be checked here.

    Args:
        score: a scalar (e.g. the summed label logit of a batch).
        inputs: tensors with ``requires_grad=True`` that ``score`` was computed from.
        who: the caller's name for the error message.

    Returns:
        One gradient per input, with a graph for a second differentiation.

    Raises:
        NoDoubleBackwardError: the gradient has no graph at all.

    Warns:
        RuntimeWarning: the graph holds a custom Function (its second derivative is unverifiable).

    Examples:
        >>> x = torch.ones(2, 3, requires_grad=True)
        >>> (g,) = penalty_gradient(torch.tanh(x).sum(), (x,), "example")
        >>> g.requires_grad
        True
    """
    grads = input_gradient(score, inputs, create_graph=True)
    if not any(g.requires_grad for g in grads):
        raise NoDoubleBackwardError(
            f"{who}: the input gradient has no graph to differentiate again (a layer's backward is "
            "detached or the model is compiled), so the penalty would never be trained; use the eager "
            "model, or layers with a double backward"
        )
    custom = custom_function_nodes(score.grad_fn)
    if custom:
        warnings.warn(
            f"{who}: the model contains custom autograd Functions ({', '.join(sorted(set(custom)))}) "
            "whose second derivatives cannot be verified; if one of them is @once_differentiable or "
            "detaches in its backward, the penalty's gradient through it is silently zero",
            RuntimeWarning,
            stacklevel=3,
        )
    return grads


def rademacher(shape: Sequence[int], generator: torch.Generator, like: Tensor) -> Tensor:
    """Random signs ``+-1`` drawn on the CPU from ``generator`` (device-independent), moved to ``like``.

    Examples:
        >>> v = rademacher((2, 3), torch.Generator().manual_seed(0), torch.zeros(1))
        >>> sorted(set(v.flatten().tolist())) <= [-1.0, 1.0]
        True
    """
    signs = torch.randint(0, 2, tuple(shape), generator=generator).to(like.dtype) * 2 - 1
    return signs.to(like.device)


def hutchinson(quadratic_forms: Tensor, exact: bool = False) -> tuple[Tensor, Tensor]:
    """Trace estimate and its standard error from probe values ``v_k.H v_k``.

    Args:
        quadratic_forms: ``(k, n)``: ``k`` probes per example. With ``exact=True`` the probes are the
            basis vectors and the trace is their sum (standard error zero).
        exact: sum the probes instead of averaging them.

    Returns:
        ``(trace, stderr)``, each ``(n,)``; ``stderr`` is the sample standard deviation over ``sqrt(k)``
        (zero for ``exact`` or a single probe).

    Examples:
        >>> q = torch.tensor([[1.0], [3.0]])
        >>> hutchinson(q)
        (tensor([2.]), tensor([1.]))
        >>> hutchinson(q, exact=True)[0]
        tensor([4.])
    """
    k = quadratic_forms.shape[0]
    if exact:
        total = quadratic_forms.sum(0)
        return total, torch.zeros_like(total)
    mean = quadratic_forms.mean(0)
    if k < 2:
        return mean, torch.zeros_like(mean)
    var = (quadratic_forms.pow(2).mean(0) - mean.pow(2)).clamp(min=0) * (k / (k - 1))
    return mean, (var / k).sqrt()


@contextlib.contextmanager
def math_attention_kernel() -> Iterator[None]:
    """Run ``scaled_dot_product_attention`` with the math kernel, which has a double backward.

    The flash and memory-efficient kernels have none (on CPU torch picks the flash kernel), so any
    Hessian-vector product through ``nn.MultiheadAttention`` or a transformer layer needs this.

    Examples:
        >>> with math_attention_kernel():
        ...     out = torch.nn.functional.scaled_dot_product_attention(*(torch.ones(1, 2, 4),) * 3)
        >>> out.shape
        torch.Size([1, 2, 4])
    """
    with sdpa_kernel(SDPBackend.MATH):
        yield


def custom_function_nodes(root: Any) -> list[str]:
    """Names of the custom ``torch.autograd.Function`` backward nodes reachable from ``root``.

    Autograd differentiates the *backward* of a custom Function only if that backward is itself
    written with differentiable operations; a ``@once_differentiable`` or detached backward yields
    second derivatives of exactly zero without any error.

    Examples:
        >>> class Twice(torch.autograd.Function):
        ...     @staticmethod
        ...     def forward(ctx, x):
        ...         return 2 * x
        ...     @staticmethod
        ...     def backward(ctx, g):
        ...         return 2 * g
        >>> x = torch.ones(2, requires_grad=True)
        >>> custom_function_nodes(Twice.apply(x).sum().grad_fn)
        ['TwiceBackward']
    """
    seen: set[int] = set()
    found: list[str] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            found.append(type(node).__name__)
        stack.extend(nxt for nxt, _ in getattr(node, "next_functions", ()))
    return found


def double_backward_support(outputs: Tensor, inputs: Sequence[Tensor]) -> tuple[bool, str]:
    """Whether ``outputs`` can be differentiated twice with respect to ``inputs``, and why not.

    Takes one gradient with ``create_graph=True`` along a fixed random cotangent and one product along
    a fixed random direction (cost: about one double-backward pass). A zero second derivative is
    *not* a failure (piecewise-linear nets have one); a missing kernel, a compiled graph or a
    custom Function's once-differentiable backward is. Custom Functions are reported separately by
    :func:`custom_function_nodes` because a detached backward cannot be told from a zero curvature.

    Returns:
        ``(ok, reason)``; ``reason`` is ``""`` when ``ok``.

    Examples:
        >>> x = torch.randn(3, 2, requires_grad=True)
        >>> double_backward_support(torch.tanh(x), (x,))
        (True, '')
    """
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(outputs.shape, generator=gen, dtype=outputs.dtype).to(outputs.device)
    try:
        grads = input_gradient(outputs, inputs, w, create_graph=True, retain_graph=True)
        vs = tuple(torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device) for x in inputs)
        input_hvp(grads, inputs, vs, retain_graph=True)
    except RuntimeError as err:
        if is_missing_double_backward(err):
            return False, str(err).splitlines()[0]
        raise
    return True, ""
