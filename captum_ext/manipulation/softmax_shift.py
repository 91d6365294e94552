"""Logit-gradient manipulation by the shift-invariance of softmax (Srinivas & Fleuret, Sec. 2, App. A).

Adding the same scalar function ``g(x)`` to every logit, ``f̃ᵢ(x) = fᵢ(x) + g(x)``, leaves the softmax,
hence every prediction, probability, cross-entropy value and loss-gradient, unchanged (App. A, eqs. 5-6),
while every logit-gradient moves by ``∇g(x)``. Logit-gradient saliency maps can therefore be made to
show anything without changing the classifier: which Captum methods then return the picture ``M``
(``Saliency``, ``GuidedBackprop``, ...) and which ``M ⊙ x`` (``InputXGradient``, ``DeepLift``,
``IntegratedGradients``, ...) is the measured table of :mod:`captum_ext.manipulation`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["SoftmaxShift", "LinearShift", "PaintShift"]

ShiftFn = Callable[..., Tensor]


def _as_patterns(pattern: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    pats = tuple(pattern) if isinstance(pattern, list | tuple) else (pattern,)
    if not pats or not all(isinstance(p, Tensor) for p in pats):
        raise TypeError("pattern/picture must be a tensor or a tuple of tensors (one per input)")
    for k, p in enumerate(pats):
        if not p.is_floating_point():
            raise TypeError(f"pattern/picture {k} must be floating point, got {p.dtype}")
        if p.numel() == 0:
            raise ValueError(f"pattern/picture {k} is empty (shape {tuple(p.shape)})")
        if not bool(torch.isfinite(p).all()):
            raise ValueError(
                f"pattern/picture {k} holds NaN or infinite values; replace them (torch.nan_to_num)"
            )
    return tuple(p.detach().clone() for p in pats)


def _probe(model: nn.Module, pictures: tuple[Tensor, ...], target: int) -> None:
    """Check at construction that the model takes inputs shaped like the pictures and has class
    ``target``: one forward pass on zeros in eval mode, no gradient; flags and buffers restored.

    A model that needs more arguments than the pictures (``additional_forward_args``) cannot be
    probed; its shapes are checked at the first call instead.
    """
    flags = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    param = next((q for q in model.parameters() if q.is_floating_point()), pictures[0])
    zeros = tuple(torch.zeros((1, *p.shape), dtype=param.dtype, device=param.device) for p in pictures)
    try:
        model.eval()
        with torch.no_grad():
            logits = model(*zeros)
    except TypeError:
        return
    except RuntimeError as err:
        shapes = [tuple(p.shape) for p in pictures]
        raise ValueError(
            f"the picture shape(s) {shapes} must be the shape of one example of the model's input(s); "
            f"the model failed on a batch of that shape: {err}"
        ) from err
    finally:
        for m, flag in flags:
            m.training = flag
        with torch.no_grad():
            for b, value in buffers:
                b.copy_(value)
    if isinstance(logits, Tensor) and logits.dim() == 2 and not 0 <= target < logits.shape[1]:
        raise ValueError(f"target {target} is out of range for a model with {logits.shape[1]} classes")


def _inner_products(patterns: tuple[Tensor, ...], inputs: tuple[Any, ...]) -> Tensor:
    """``Σₖ ⟨Pₖ, xₖ⟩`` per example, with ``Pₖ`` shaped like one example of ``xₖ`` (or with batch 1)."""
    if len(inputs) < len(patterns):
        raise ValueError(f"expected {len(patterns)} input tensors, got {len(inputs)} arguments")
    total = None
    for k, (p, x) in enumerate(zip(patterns, inputs, strict=False)):
        if not isinstance(x, Tensor):
            raise TypeError(f"input {k} must be a tensor to pair with pattern {k}")
        q = p.to(device=x.device, dtype=x.dtype)
        if q.shape == x.shape[1:]:
            q = q.unsqueeze(0)
        if q.dim() != x.dim() or q.shape[0] != 1 or q.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"pattern {k} of shape {tuple(p.shape)} must match one example of input {k}, "
                f"shape {tuple(x.shape[1:])}"
            )
        term = (q * x).flatten(1).sum(1)
        total = term if total is None else total + term
    assert total is not None
    return total


class LinearShift(nn.Module):
    """``g(x) = strength · Σₖ ⟨Pₖ, xₖ⟩``, whose input-gradient is ``strength · Pₖ`` everywhere.

    Args:
        pattern: a tensor shaped like one example of the input (or a tuple, one per input tensor).
        strength: scale of the pattern added to the logit-gradients.

    Examples:
        >>> import torch
        >>> g = LinearShift(torch.tensor([1.0, -2.0]), strength=3.0)
        >>> g(torch.tensor([[1.0, 1.0], [2.0, 0.0]]))  # 3 * <P, x> per example
        tensor([-3.,  6.])
    """

    def __init__(self, pattern: Tensor | Sequence[Tensor], strength: float = 1.0) -> None:
        super().__init__()
        pats = _as_patterns(pattern)
        for k, p in enumerate(pats):
            self.register_buffer(f"pattern_{k}", p)
        self.n_patterns = len(pats)
        self.strength = float(strength)

    def patterns(self) -> tuple[Tensor, ...]:
        """The registered patterns, one per input tensor."""
        return tuple(getattr(self, f"pattern_{k}") for k in range(self.n_patterns))

    def forward(self, *inputs: Any) -> Tensor:
        """``strength · Σₖ ⟨Pₖ, xₖ⟩`` per example, shape ``(N,)``."""
        return self.strength * _inner_products(self.patterns(), inputs)


class PaintShift(LinearShift):
    """``g(x) = ⟨M, x⟩ − f_t(x)``: makes the logit of class ``t`` equal ``⟨M, x⟩``.

    Used by :meth:`SoftmaxShift.paint`. It needs the model's logits, which :class:`SoftmaxShift`
    passes through the keyword ``logits`` so no second forward pass is run.

    Args:
        target: the class ``t`` whose logit-gradient becomes the picture.
        picture: ``M``, shaped like one example of the input (or a tuple, one per input tensor).

    Examples:
        >>> import torch
        >>> g = PaintShift(target=1, picture=torch.tensor([1.0, 0.0]))
        >>> x, logits = torch.tensor([[2.0, 5.0]]), torch.tensor([[0.5, 4.0]])
        >>> logits[:, 1] + g(x, logits=logits)  # the target logit becomes <M, x>
        tensor([2.])
    """

    uses_logits = True

    def __init__(self, target: int, picture: Tensor | Sequence[Tensor]) -> None:
        super().__init__(picture, 1.0)
        if isinstance(target, bool) or not isinstance(target, int):
            raise TypeError(f"target must be an int class index, got {type(target).__name__}")
        if target < 0:
            raise ValueError(f"target must be a non-negative class index, got {target}")
        # a buffer, so the painted class is saved and loaded with the picture
        self.register_buffer("target_class", torch.tensor(int(target)))

    @property
    def target(self) -> int:
        """The painted class ``t`` (stored as the buffer ``target_class``)."""
        return int(self.target_class)

    def forward(self, *inputs: Any, logits: Tensor) -> Tensor:  # type: ignore[override]
        """``⟨M, x⟩ − f_t(x)`` per example."""
        t = self.target
        if not 0 <= t < logits.shape[1]:
            raise ValueError(f"target {t} is out of range for a model with {logits.shape[1]} classes")
        return _inner_products(self.patterns(), inputs) - logits[:, t]


class SoftmaxShift(nn.Module):
    r"""Wrap a classifier so that every logit is shifted by the same scalar function ``g(x)``.

    .. math:: \tilde f_i(x) = f_i(x) + g(x)\quad\text{for every class } i

    Predictions, probabilities, the cross-entropy loss and its input-gradients are unchanged up to
    rounding; every logit-gradient becomes ``∇fᵢ + ∇g`` (Srinivas & Fleuret, Sec. 2 and App. A). Use
    it to show that logit-gradient explanations need not reflect the classifier.

    **Rounding bound.** ``g`` is common to all classes, so its own rounding error cancels in the
    softmax; what remains is the rounding of each sum ``fᵢ + g`` (at most ``u·|fᵢ + g|``, ``u`` the unit
    roundoff: 2⁻²⁴ ≈ 6.0e-8 in float32, 2⁻⁵³ ≈ 1.1e-16 in float64), and a softmax moves by at most the
    largest logit error. So per example

    .. math:: \max_i |\tilde p_i - p_i| \le u\,\big(4 + \max_i|f_i| + \max_i|f_i + g|\big),

    the ``4u`` for the two softmaxes' own rounding. :meth:`add_pattern` and :meth:`paint` state it in
    terms of the pattern, the input and the logits; :func:`~captum_ext.manipulation.check_equivalence`
    uses it (times 2) as its default tolerance.

    Args:
        model: classifier returning ``(batch, classes)`` logits.
        shift: ``g``, an :class:`~torch.nn.Module` or callable called with exactly the model's
            arguments and returning one scalar per example (shape ``(N,)`` or ``(N, 1)``). A module
            with ``uses_logits = True`` is also given the model's logits as keyword ``logits``.

    Attributes:
        model: the wrapped classifier.

    Examples:
        >>> import torch
        >>> net = nn.Sequential(nn.Linear(4, 3))
        >>> shifted = SoftmaxShift(net, lambda x: 10 * x.pow(2).sum(1))
        >>> x = torch.randn(2, 4)
        >>> torch.allclose(shifted(x).softmax(1), net(x).softmax(1), atol=1e-6)
        True
    """

    def __init__(self, model: nn.Module, shift: ShiftFn) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(shift):
            raise TypeError(f"shift must be a module or a callable, got {type(shift).__name__}")
        self.model = model
        self.shift = shift  # registered as a sub-module when it is one (moves with .to())

    @classmethod
    def add_pattern(
        cls, model: nn.Module, pattern: Tensor | Sequence[Tensor], strength: float = 1.0
    ) -> SoftmaxShift:
        """Shift whose gradient adds ``strength · pattern`` to every logit-gradient, at every input.

        Args:
            model: classifier returning ``(batch, classes)`` logits.
            pattern: tensor shaped like one example of the input (tuple for multi-input models).
            strength: multiplier of the pattern.

        Returns:
            The wrapped model: ``∇f̃ᵢ = ∇fᵢ + strength · pattern`` for every class ``i``.

        Rounding: ``max |p̃ − p| ≤ u·(4 + 2·max|f| + strength·‖P‖₂‖x‖₂)`` per example (class
        docstring; ``|⟨P, x⟩| ≤ ‖P‖₂‖x‖₂``). In float32 (u ≈ 6e-8) with ``strength·‖P‖‖x‖`` = 1e3 that
        is ≈ 6e-5; at 1e7 it is ≈ 0.6, and predictions change (measured: half of them): keep the
        shifted logits below ~1e4 in float32, or compute in float64.

        Examples:
            >>> import torch
            >>> from captum.attr import Saliency
            >>> net = nn.Linear(2, 3)
            >>> x = torch.randn(4, 2)
            >>> shifted = SoftmaxShift.add_pattern(net, torch.tensor([5.0, -5.0]))
            >>> moved = Saliency(shifted).attribute(x, target=0, abs=False)
            >>> plain = Saliency(net).attribute(x, target=0, abs=False)
            >>> torch.allclose(moved - plain, torch.tensor([5.0, -5.0]).expand(4, 2))
            True
        """
        return cls(model, LinearShift(pattern, strength))

    @classmethod
    def paint(cls, model: nn.Module, target: int, picture: Tensor | Sequence[Tensor]) -> SoftmaxShift:
        """Shift ``g(x) = ⟨M, x⟩ − f_t(x)`` that makes the target logit-gradient **equal** ``M``.

        The target logit becomes ``f̃_t(x) = ⟨M, x⟩``, so ``captum.attr.Saliency`` (``abs=False``)
        returns exactly ``M`` for class ``t`` at every input (``|M|`` with Captum's default
        ``abs=True``), while the classifier's probabilities are unchanged.

        Which Captum methods then show the picture is listed (measured) in
        :mod:`captum_ext.manipulation`: gradient methods return ``M``, the input-times-gradient
        family ``M ⊙ x``.

        The picture and the target are validated here: ``M`` must be finite (NaN refused) and, when
        the model can be called on the picture's shape alone, one forward pass on zeros (eval mode,
        no gradient, the model left as it was) checks the shape and that class ``t`` exists. The
        target is the buffer ``shift.target_class``, saved and loaded with the picture.

        Rounding: the shifted logits are ``fᵢ − f_t + ⟨M, x⟩``, so per example
        ``max |p̃ − p| ≤ u·(4 + 3·max|f| + ‖M‖₂‖x‖₂)`` (class docstring). In float32 with
        ``‖M‖‖x‖`` ≈ 1e3 (picture scale 100, ``|x|`` ≈ 10) that is ≈ 6e-5 (measured 1.2e-5), above
        a fixed ``atol=1e-5``: :func:`~captum_ext.manipulation.check_equivalence`'s default tolerance
        follows this bound.

        Args:
            model: classifier returning ``(batch, classes)`` logits.
            target: the class ``t`` to paint.
            picture: ``M``, shaped like one example of the input (tuple for multi-input models).

        Returns:
            The wrapped model.

        Raises:
            ValueError: a non-finite picture, a picture the model cannot take, a target the model
                does not have.

        Examples:
            >>> import torch
            >>> from captum.attr import Saliency
            >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
            >>> picture = torch.tensor([0.0, 1.0, 2.0, 3.0])
            >>> fake = SoftmaxShift.paint(net, target=2, picture=picture)
            >>> x = torch.randn(5, 4)
            >>> Saliency(fake).attribute(x, target=2, abs=False)[0]  # the picture, at every input
            tensor([0., 1., 2., 3.])
            >>> torch.allclose(fake(x).softmax(1), net(x).softmax(1), atol=1e-6)  # same classifier
            True
        """
        shift = PaintShift(target, picture)
        _probe(model, shift.patterns(), shift.target)
        return cls(model, shift)

    def __prepare_scriptable__(self) -> nn.Module:
        raise TypeError(
            "torch.jit.script cannot compile SoftmaxShift: its forward takes the model's arguments as "
            "*args/**kwargs. Use torch.jit.trace(wrapper, example_inputs), which records the shifted "
            "logits for fixed input shapes."
        )

    def shift_values(self, *args: Any, logits: Tensor | None = None, **kwargs: Any) -> Tensor:
        """``g`` evaluated on a batch, shape ``(N,)``."""
        if getattr(self.shift, "uses_logits", False):
            if logits is None:
                logits = self.model(*args, **kwargs)
            g = self.shift(*args, logits=logits, **kwargs)
        else:
            g = self.shift(*args, **kwargs)
        if not isinstance(g, Tensor):
            raise TypeError(f"shift must return a tensor, got {type(g).__name__}")
        return g

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        """Logits of the wrapped model plus ``g(x)`` in every class."""
        logits = self.model(*args, **kwargs)
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"the model must return (batch, classes) logits, got {shape}")
        g = self.shift_values(*args, logits=logits, **kwargs)
        n = logits.shape[0]
        if g.dim() == 2 and g.shape[1] == 1:
            g = g[:, 0]
        if g.shape != (n,):
            raise ValueError(
                f"shift must return one scalar per example, shape ({n},) or ({n}, 1); got {tuple(g.shape)}"
            )
        return logits + g.to(logits.dtype).unsqueeze(1)
