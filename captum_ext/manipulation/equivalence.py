"""Check that two classifiers are discriminatively equivalent and measure how their gradients differ.

Two models are *discriminatively equivalent* on a batch when they give the same class probabilities
(Srinivas & Fleuret, Sec. 2). The report also says how far apart their logit-gradients (what
``captum.attr.Saliency`` shows) and loss-gradients are, which is the point of the manipulation
wrappers: equal probabilities, arbitrarily different logit-gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._autograd import input_gradient
from .._format import (
    TargetLike,
    TensorOrTuple,
    expand_target,
    format_additional_args,
    format_inputs,
    run_forward,
)

__all__ = ["EquivalenceReport", "check_equivalence", "rounding_tolerance"]


@dataclass(frozen=True)
class EquivalenceReport:
    """How two models compare on one batch (all maxima are over examples and coordinates).

    Attributes:
        max_prob_diff: ``max |p_a − p_b|`` over examples and classes.
        predictions_agree: fraction of examples with the same predicted class.
        max_loss_diff: ``max |ℓ_a − ℓ_b|`` of the per-example losses at the target class.
        logit_grad_max_diff: ``max |∇f_a,t − ∇f_b,t|`` (target-class logit-gradients).
        logit_grad_rel_diff: ``max_n ‖∇f_a,t − ∇f_b,t‖₂ / ‖∇f_a,t‖₂``.
        loss_grad_max_diff: ``max |∇ℓ_a − ∇ℓ_b|``.
        loss_grad_rel_diff: ``max_n ‖∇ℓ_a − ∇ℓ_b‖₂ / ‖∇ℓ_a‖₂``.
        tolerance: the rounding bound on ``max_prob_diff`` for two models with equal probabilities
            in exact arithmetic, ``2u·(4 + max|f_a| + max|f_b|)`` with ``u`` the unit roundoff of
            the logits' dtype (2⁻²⁴ ≈ 6e-8 for float32, 2⁻⁵³ for float64) and ``max|f|`` each
            model's largest absolute logit on the batch: adding a shift ``g`` to the logits rounds
            each to ``u·|f + g|``, and a softmax moves by at most the largest logit error (see
            :meth:`~captum_ext.manipulation.SoftmaxShift.paint` for the bound in terms of the
            picture). Default ``1e-5`` when built by hand.

    Examples:
        >>> report = EquivalenceReport(1e-7, 1.0, 2e-7, 3.0, 0.9, 1e-7, 1e-6)
        >>> report.equivalent(), report.as_dict()["logit_grad_max_diff"]
        (True, 3.0)
        >>> report.verdict()
        'equivalent: probabilities agree to 1e-07 (tolerance 1e-05), same prediction on 100% of examples'
    """

    max_prob_diff: float
    predictions_agree: float
    max_loss_diff: float
    logit_grad_max_diff: float
    logit_grad_rel_diff: float
    loss_grad_max_diff: float
    loss_grad_rel_diff: float
    tolerance: float = 1e-5

    def equivalent(self, atol: float | None = None) -> bool:
        """Discriminative equivalence on this batch: probabilities agree to ``atol`` and every
        prediction agrees.

        Args:
            atol: tolerance on ``max_prob_diff``; default :attr:`tolerance` (follows the dtype and
                the logits' size).

        Returns:
            ``max_prob_diff <= atol and predictions_agree == 1``.
        """
        atol = self.tolerance if atol is None else float(atol)
        return self.max_prob_diff <= atol and self.predictions_agree == 1.0

    def verdict(self) -> str:
        """One line: equivalent or not, the probability gap against the tolerance, the agreement."""
        head = "equivalent" if self.equivalent() else "NOT equivalent"
        text = (
            f"{head}: probabilities agree to {self.max_prob_diff:.3g} (tolerance {self.tolerance:.3g}), "
            f"same prediction on {100 * self.predictions_agree:.0f}% of examples"
        )
        if self.tolerance > 1e-3:
            text += "; the logits are too large for this dtype to resolve the probabilities well"
        return text

    def as_dict(self) -> dict[str, float]:
        """The report as a plain dictionary (for JSON)."""
        return asdict(self)


def _flat_grads(grads: tuple[Tensor, ...]) -> Tensor:
    return torch.cat([g.flatten(1) for g in grads], dim=1)


def _scores(
    model: Any, inputs: tuple[Tensor, ...], args: tuple[Any, ...], target: TargetLike
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(probabilities, target, per-example loss, logits)`` with graphs to ``inputs``."""
    logits = run_forward(model, inputs, args)
    t = expand_target(target, logits.shape[0], logits.shape[1], logits.device)
    if t is None:
        raise AssertionError("target is resolved before this call")
    per_example = getattr(model, "per_example_loss", None)
    if callable(per_example) and len(inputs) == 1 and not args:
        loss = per_example(inputs[0], t)
    else:
        loss = F.cross_entropy(logits, t, reduction="none")
    return logits.softmax(1), t, loss, logits


def check_equivalence(
    model_a: Any,
    model_b: Any,
    inputs: TensorOrTuple,
    target: TargetLike = None,
    additional_forward_args: Any = None,
) -> EquivalenceReport:
    """Compare two classifiers' probabilities and input-gradients on a batch.

    Neither model is changed, in any mode: gradients come from :func:`torch.autograd.grad` with
    respect to copies of the inputs, no training flag is touched, and every buffer of a module (e.g.
    the running statistics a BatchNorm layer in training mode updates on each forward pass) is
    restored afterwards. Models in training mode are compared as they compute in training mode
    (BatchNorm with batch statistics, Dropout random); use eval mode for a deterministic comparison.

    Args:
        model_a: reference classifier, ``(batch, classes)`` logits.
        model_b: the other classifier (e.g. a :class:`~captum_ext.manipulation.SoftmaxShift`).
        inputs: tensor or tuple of tensors, batch first.
        target: class for the logit- and loss-gradients in any Captum form; default the class
            ``model_a`` predicts.
        additional_forward_args: extra arguments for both models (Captum convention).

    Returns:
        An :class:`EquivalenceReport`. The loss is the per-example cross-entropy at ``target``, or
        ``model.per_example_loss(x, target)`` for a model that defines it (single input tensor),
        e.g. :class:`~captum_ext.manipulation.LossGradientManipulation`.

    Examples:
        >>> from captum_ext.manipulation import SoftmaxShift
        >>> net = torch.nn.Linear(4, 3)
        >>> report = check_equivalence(net, SoftmaxShift.add_pattern(net, torch.ones(4)),
        ...                            torch.randn(5, 4))
        >>> report.equivalent(), round(report.logit_grad_max_diff, 4)
        (True, 1.0)
    """
    xs, _ = format_inputs(inputs)
    args = format_additional_args(additional_forward_args)
    with _buffers_restored(model_a), _buffers_restored(model_b):
        return _compare(model_a, model_b, xs, args, target)


@contextlib.contextmanager
def _buffers_restored(model: Any) -> Iterator[None]:
    """Copy every buffer of a module back after the body (running statistics, counters)."""
    saved = [(b, b.detach().clone()) for b in model.buffers()] if isinstance(model, torch.nn.Module) else []
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def _compare(
    model_a: Any, model_b: Any, xs: tuple[Tensor, ...], args: tuple[Any, ...], target: TargetLike
) -> EquivalenceReport:
    with torch.enable_grad():
        xs = tuple(x.detach().requires_grad_(True) for x in xs)
        if target is None:
            with torch.no_grad():
                target = run_forward(model_a, xs, args).argmax(1)
        pa, t, la, fa = _scores(model_a, xs, args, target)
        pb, _, lb, fb = _scores(model_b, xs, args, t)
        sel = t.unsqueeze(1)
        ga_logit = input_gradient(fa.gather(1, sel).sum(), xs, retain_graph=True)
        gb_logit = input_gradient(fb.gather(1, sel).sum(), xs, retain_graph=True)
        ga_loss = input_gradient(la.sum(), xs)
        gb_loss = input_gradient(lb.sum(), xs)
    pa, pb, la, lb = pa.detach(), pb.detach(), la.detach(), lb.detach()
    a_logit, b_logit = _flat_grads(ga_logit), _flat_grads(gb_logit)
    a_loss, b_loss = _flat_grads(ga_loss), _flat_grads(gb_loss)

    def rel(a: Tensor, b: Tensor) -> float:
        return float(((a - b).norm(dim=1) / a.norm(dim=1).clamp_min(1e-30)).max())

    return EquivalenceReport(
        max_prob_diff=float((pa - pb).abs().max()),
        predictions_agree=float((pa.argmax(1) == pb.argmax(1)).double().mean()),
        max_loss_diff=float((la - lb).abs().max()),
        logit_grad_max_diff=float((a_logit - b_logit).abs().max()),
        logit_grad_rel_diff=rel(a_logit, b_logit),
        loss_grad_max_diff=float((a_loss - b_loss).abs().max()),
        loss_grad_rel_diff=rel(a_loss, b_loss),
        tolerance=rounding_tolerance(fa.detach(), fb.detach()),
    )


def rounding_tolerance(logits_a: Tensor, logits_b: Tensor) -> float:
    """``2u·(4 + max|f_a| + max|f_b|)``: how far rounding alone can move two equal probability vectors.

    Args:
        logits_a: the first model's logits.
        logits_b: the second model's logits.

    Returns:
        The bound, with ``u`` the unit roundoff of the wider of the two dtypes.

    Examples:
        >>> f = torch.zeros(2, 3)
        >>> rounding_tolerance(f, f) == 8 * torch.finfo(torch.float32).eps / 2
        True
    """
    dtype = torch.promote_types(logits_a.dtype, logits_b.dtype)
    u = torch.finfo(dtype).eps / 2
    size = float(logits_a.abs().max()) + float(logits_b.abs().max())
    return 2.0 * u * (4.0 + size)
