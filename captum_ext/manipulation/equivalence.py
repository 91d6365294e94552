"""Check that two classifiers are discriminatively equivalent and measure how their gradients differ.

Two models are *discriminatively equivalent* on a batch when they give the same class probabilities
(Srinivas & Fleuret, Sec. 2). The report also says how far apart their logit-gradients (what
``captum.attr.Saliency`` shows) and loss-gradients are, which is the point of the manipulation
wrappers: equal probabilities, arbitrarily different logit-gradients.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._format import (
    TargetLike,
    TensorOrTuple,
    expand_target,
    format_additional_args,
    format_inputs,
    run_forward,
)

__all__ = ["EquivalenceReport", "check_equivalence"]


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

    Examples:
        >>> report = EquivalenceReport(1e-7, 1.0, 2e-7, 3.0, 0.9, 1e-7, 1e-6)
        >>> report.equivalent(), report.as_dict()["logit_grad_max_diff"]
        (True, 3.0)
    """

    max_prob_diff: float
    predictions_agree: float
    max_loss_diff: float
    logit_grad_max_diff: float
    logit_grad_rel_diff: float
    loss_grad_max_diff: float
    loss_grad_rel_diff: float

    def equivalent(self, atol: float = 1e-5) -> bool:
        """Whether the probabilities agree to ``atol`` (discriminative equivalence on this batch)."""
        return self.max_prob_diff <= atol

    def as_dict(self) -> dict[str, float]:
        """The report as a plain dictionary (for JSON)."""
        return asdict(self)


def _flat_grads(grads: tuple[Tensor | None, ...], inputs: tuple[Tensor, ...]) -> Tensor:
    parts = [(torch.zeros_like(x) if g is None else g).flatten(1) for g, x in zip(grads, inputs, strict=True)]
    return torch.cat(parts, dim=1)


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

    Neither model is changed: gradients come from :func:`torch.autograd.grad` with respect to copies
    of the inputs, and no training flag is touched (call it on models in eval mode for deterministic
    layers).

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
    with torch.enable_grad():
        xs = tuple(x.detach().requires_grad_(True) for x in xs)
        if target is None:
            with torch.no_grad():
                target = run_forward(model_a, xs, args).argmax(1)
        pa, t, la, fa = _scores(model_a, xs, args, target)
        pb, _, lb, fb = _scores(model_b, xs, args, t)
        sel = t.unsqueeze(1)
        ga_logit = torch.autograd.grad(fa.gather(1, sel).sum(), xs, retain_graph=True, allow_unused=True)
        gb_logit = torch.autograd.grad(fb.gather(1, sel).sum(), xs, retain_graph=True, allow_unused=True)
        ga_loss = torch.autograd.grad(la.sum(), xs, allow_unused=True)
        gb_loss = torch.autograd.grad(lb.sum(), xs, allow_unused=True)
    pa, pb, la, lb = pa.detach(), pb.detach(), la.detach(), lb.detach()
    a_logit, b_logit = _flat_grads(ga_logit, xs), _flat_grads(gb_logit, xs)
    a_loss, b_loss = _flat_grads(ga_loss, xs), _flat_grads(gb_loss, xs)

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
    )
