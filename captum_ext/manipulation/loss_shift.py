"""Loss-gradient manipulation with a high-frequency, low-amplitude sine (Srinivas & Fleuret, App. A.1).

Adding ``g(x) = ε·sin(m⟨u, x⟩ + φ)`` to the loss moves every loss value by at most ``ε`` but moves
the loss-gradient by ``∇g = ε·m·cos(m⟨u, x⟩ + φ)·u``: up to ``m·ε·|u_d|`` in coordinate ``d`` (up to
``m·ε·D`` in ℓ1 for ``u ∈ {±1}ᴰ``, the bound of App. A.1), reached wherever the cosine is ±1. With
``m → ∞`` and ``ε`` fixed, two losses that agree to ``ε`` everywhere have arbitrarily different
gradients.

Why a loss wrapper and not a logit wrapper: a logit shift that is the same for every class cancels in
the softmax (it changes no loss at all, :class:`~captum_ext.manipulation.SoftmaxShift`), and a
class-dependent shift changes the probabilities. So, as in App. A.1, the manipulation is applied to the
loss: the wrapper's logits (predictions, probabilities) are exactly the model's, and its ``loss`` /
``per_example_loss`` are ``ℓ + g``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._format import TargetLike, expand_target

__all__ = ["sine_shift", "LossGradientManipulation"]


def _direction(direction: Tensor | None, like: Tensor) -> Tensor:
    if direction is None:
        return torch.ones_like(like[0])
    u = direction.to(device=like.device, dtype=like.dtype)
    if u.shape != like.shape[1:]:
        raise ValueError(
            f"direction must be shaped like one example {tuple(like.shape[1:])}, got {tuple(u.shape)}"
        )
    if bool((u.abs() > 1).any()):
        raise ValueError("direction entries must lie in [-1, 1] so the per-coordinate bound holds")
    return u


def sine_shift(
    inputs: Tensor, eps: float, m: float, direction: Tensor | None = None, phase: float = 0.0
) -> Tensor:
    """``g(x) = eps · sin(m·⟨u, x⟩ + phase)`` per example, shape ``(N,)``.

    Args:
        inputs: batch-first tensor.
        eps: amplitude ε ≥ 0 (the loss moves by at most ε).
        m: frequency m ≥ 0 (the gradient moves by up to ``m·ε·|u_d|`` per coordinate).
        direction: ``u``, shaped like one example, entries in ``[-1, 1]``; default all ones.
        phase: φ.

    Returns:
        ``g`` for every example; its input-gradient is ``eps·m·cos(m⟨u,x⟩+φ)·u``.

    Examples:
        >>> x = torch.zeros(2, 3, requires_grad=True)
        >>> g = sine_shift(x, eps=0.01, m=100.0)
        >>> g  # the loss moves by at most eps ...
        tensor([0., 0.], grad_fn=<MulBackward0>)
        >>> torch.autograd.grad(g.sum(), x)[0]  # ... its gradient by up to m * eps per coordinate
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
    """
    if not eps >= 0 or not m >= 0:
        raise ValueError(f"eps and m must be non-negative, got eps={eps}, m={m}")
    u = _direction(direction, inputs)
    arg = m * (inputs * u).flatten(1).sum(1) + phase
    return eps * torch.sin(arg)


class LossGradientManipulation(nn.Module):
    r"""Loss wrapper of App. A.1: ``ℓ̃ᵢ(x) = ℓᵢ(x) + ε·sin(m⟨u, x⟩ + φ)``.

    Guarantees (exact, tested):

    * logits, predictions and probabilities are the model's, unchanged;
    * ``|ℓ̃ᵢ(x) − ℓᵢ(x)| ≤ ε`` for every example and class;
    * ``∇ₓℓ̃ᵢ(x) − ∇ₓℓᵢ(x) = ε·m·cos(m⟨u,x⟩+φ)·u``: at most ``m·ε·|u_d|`` in coordinate ``d`` and
      ``m·ε·‖u‖₁ ≤ m·ε·D`` in ℓ1 (App. A.1), with equality where ``cos = ±1`` (e.g. ``⟨u,x⟩ = 0``,
      ``φ = 0``).

    Args:
        model: classifier returning ``(batch, classes)`` logits.
        eps: ε, the largest change of any loss value.
        m: frequency; the loss-gradient moves by up to ``m·ε`` per coordinate.
        direction: ``u`` (one example's shape, entries in ``[-1, 1]``); default all ones.
        phase: φ.

    Examples:
        >>> net = nn.Linear(5, 3)
        >>> fooled = LossGradientManipulation(net, eps=1e-3, m=1e4)
        >>> x, y = torch.zeros(2, 5), torch.tensor([0, 2])
        >>> gap = fooled.per_example_loss(x, y) - F.cross_entropy(net(x), y, reduction="none")
        >>> bool(gap.abs().max() <= 1e-3)
        True
    """

    def __init__(
        self,
        model: nn.Module,
        eps: float = 1e-3,
        m: float = 1e4,
        direction: Tensor | None = None,
        phase: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not eps >= 0 or not m >= 0:
            raise ValueError(f"eps and m must be non-negative, got eps={eps}, m={m}")
        self.model = model
        self.eps, self.m, self.phase = float(eps), float(m), float(phase)
        self.direction = None if direction is None else direction.detach().clone()
        self.last_parts: dict[str, float] = {}

    def forward(self, *args, **kwargs) -> Tensor:
        """The wrapped model's logits, unchanged."""
        return self.model(*args, **kwargs)

    def shift(self, inputs: Tensor) -> Tensor:
        """``g(x)`` per example (see :func:`sine_shift`)."""
        return sine_shift(inputs, self.eps, self.m, self.direction, self.phase)

    def per_example_loss(self, inputs: Tensor, target: TargetLike) -> Tensor:
        """``CE(f(x), t) + g(x)`` per example, shape ``(N,)``; ``target`` in any Captum form."""
        if not isinstance(inputs, Tensor):
            raise TypeError("LossGradientManipulation takes one input tensor")
        logits = self.model(inputs)
        t = expand_target(target, inputs.shape[0], logits.shape[1], logits.device)
        if t is None:
            t = logits.argmax(1)
        return F.cross_entropy(logits, t, reduction="none") + self.shift(inputs).to(logits.dtype)

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Batch mean of :meth:`per_example_loss`; parts (``ce``, ``shift``, ``total``) in
        ``last_parts`` as for the regularizer wrappers."""
        logits = self.model(x)
        ce = F.cross_entropy(logits, y.to(logits.device).long())
        g = self.shift(x).to(logits.dtype).mean()
        total = ce + g
        self.last_parts = {
            "ce": float(ce.detach()),
            "shift": float(g.detach()),
            "total": float(total.detach()),
        }
        return total
