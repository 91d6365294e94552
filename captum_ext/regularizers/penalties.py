"""l1 / l2 / linf input-gradient and weight penalties (Bötte & Pfeiffer), alone or combined.

Bötte & Pfeiffer (Sec. III.B) train the same model with an ℓ1, ℓ2 or ℓ∞ penalty on the input
gradients, on the weights, or on both. The paper reports neither the penalty weights nor whether
the input gradient is that of the loss or of a logit; we default to the **loss-gradient** (double
backpropagation, as in Ross & Doshi-Velez whom the paper discusses) and a weight ``lam`` you should
tune. For ``p = 2`` the penalty is the **squared** norm ("ℓ2 is proportional to the square of the
weights or gradients", Sec. IV); pass ``squared=False`` for the plain norm.

Combine penalties by nesting wrappers; every part is reported:

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
>>> both = WeightPenalty(InputGradientPenalty(net, p=2, lam=0.1), p=2, lam=1e-3)
>>> loss = both.loss(torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 0, 1]))
>>> sorted(both.last_parts)
['ce', 'input_grad_l2', 'total', 'weight_l2']
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._autograd import penalty_gradient
from .base import RegularizedModel, auxiliary_forward, class_scores, reusable

__all__ = ["InputGradientPenalty", "WeightPenalty", "norm_penalty", "weight_norm", "penalised_parameters"]

_P_NAMES = {1: "l1", 2: "l2", math.inf: "linf"}


def _check_p(p: float | str) -> float:
    if isinstance(p, str):
        key = p.lower().lstrip("l")
        p = math.inf if key in ("inf", "infinity") else float(key)
    if p not in (1, 2, math.inf):
        raise ValueError(f"p must be 1, 2 or inf (also 'l1', 'l2', 'linf'), got {p!r}")
    return float(p)


def norm_penalty(values: Tensor, p: float, squared: bool = True) -> Tensor:
    """Per-example ℓp norm of batch-first ``values`` (flattened): shape ``(N,)``.

    Args:
        values: tensor ``(N, *shape)``.
        p: 1, 2 or ``math.inf``.
        squared: for ``p = 2``, return the squared norm (the usual "ℓ2 penalty"); ignored otherwise.

    Returns:
        ``Σ|v|`` (p=1), ``Σv²`` or ``√Σv²`` (p=2), ``max|v|`` (p=inf), one value per example.
    """
    p = _check_p(p)
    flat = values.flatten(1)
    if p == 1:
        return flat.abs().sum(1)
    if p == 2:
        sq = flat.pow(2).sum(1)
        return sq if squared else sq.sqrt()
    return flat.abs().amax(1)


ParamFilter = Callable[[str, nn.Parameter], bool]

_NORM_LAYERS = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)


def penalised_parameters(
    model: nn.Module, include_bias: bool = False, include: ParamFilter | None = None
) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs a weight penalty acts on.

    Default rule: every trainable parameter except biases (names ending in ``bias``, unless
    ``include_bias``) and except the affine parameters (γ, β) of normalisation layers (BatchNorm,
    InstanceNorm, LayerNorm, GroupNorm): γ scales a normalised activation, and shrinking it is not
    shrinking a weight (the usual weight-decay practice). ``include`` replaces the rule.

    Args:
        model: the plain model.
        include_bias: also select biases (of non-normalisation layers).
        include: ``include(name, parameter) -> bool`` deciding for every trainable parameter; when
            given, ``include_bias`` must be left ``False``.

    Returns:
        The selected pairs, in ``named_parameters`` order.

    Examples:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
        >>> [n for n, _ in penalised_parameters(net)]
        ['0.weight', '2.weight']
        >>> [n for n, _ in penalised_parameters(net, include=lambda n, w: n.startswith("2."))]
        ['2.weight', '2.bias']
    """
    if include is not None and include_bias:
        raise ValueError("give either include (a filter) or include_bias, not both")
    if include is None:
        in_norm = {
            id(w) for m in model.modules() if isinstance(m, _NORM_LAYERS) for w in m.parameters(recurse=False)
        }

        def include(name: str, w: nn.Parameter) -> bool:
            return id(w) not in in_norm and (include_bias or not name.endswith("bias"))

    return [(n, w) for n, w in model.named_parameters() if w.requires_grad and include(n, w)]


def weight_norm(
    model: nn.Module,
    p: float,
    squared: bool = True,
    include_bias: bool = False,
    include: ParamFilter | None = None,
) -> Tensor:
    """ℓp norm of the selected weights taken together as one vector (0-d tensor, differentiable).

    Args:
        model: the module whose parameters are penalised.
        p: 1, 2 or ``math.inf``.
        squared: for ``p = 2``, the squared norm ``Σw²``.
        include_bias: also penalise parameters whose name ends in ``bias``.
        include: a filter replacing the default selection (see :func:`penalised_parameters`).

    Returns:
        ``Σ|w|``, ``Σw²`` (or its root) or ``max|w|`` over the selected parameters.
    """
    p = _check_p(p)
    params = [w for _, w in penalised_parameters(model, include_bias, include)]
    if not params:
        raise ValueError("the model has no trainable weights to penalise (check include / include_bias)")
    if p == 1:
        return torch.stack([w.abs().sum() for w in params]).sum()
    if p == 2:
        sq = torch.stack([w.pow(2).sum() for w in params]).sum()
        return sq if squared else sq.sqrt()
    return torch.stack([w.abs().amax() for w in params]).amax()


class InputGradientPenalty(RegularizedModel):
    r"""Penalise the ℓp norm of the input-gradient: ``CE + lam · mean_n ‖∇ₓ s(x_n)‖_p``.

    ``s`` is the per-example cross-entropy (``of="loss"``, default) or the raw logit of the label
    (``of="logit"``). Per-example gradients come from one backward pass of the summed scores; the
    penalty's forward pass runs with frozen statistics (BatchNorm in eval mode, see
    :mod:`captum_ext.regularizers.base`), so examples do not interact and the gradients are exact.
    Differentiated by double backward (``create_graph=True``).

    Args:
        model: classifier returning ``(batch, classes)`` logits (or another wrapper).
        p: 1, 2 or ``inf`` (Bötte & Pfeiffer, Sec. III.B).
        lam: penalty weight. The paper does not report it; ``0.01`` is our default.
        of: ``"loss"`` or ``"logit"``: which input-gradient is penalised.
        squared: for ``p = 2``, penalise ``‖g‖²`` (default) rather than ``‖g‖``.

    Records ``input_grad_l1`` / ``input_grad_l2`` / ``input_grad_linf`` (mean unweighted norm).

    Examples:
        For a linear model the logit-gradient of class ``y`` is the weight row ``W[y]``:

        >>> _ = torch.manual_seed(0)
        >>> net = nn.Linear(4, 3)
        >>> reg = InputGradientPenalty(net, p=2, lam=0.1, of="logit")
        >>> y = torch.tensor([0, 1, 2, 0])
        >>> reg.loss(torch.randn(4, 4), y).backward()
        >>> exact = net.weight.detach()[y].pow(2).sum(1).mean()
        >>> abs(reg.last_parts["input_grad_l2"] - float(exact)) < 1e-6
        True
    """

    needs_input_grad = True

    def __init__(
        self,
        model: nn.Module,
        p: float | str = 2,
        lam: float = 0.01,
        of: str = "loss",
        squared: bool = True,
    ) -> None:
        super().__init__(model)
        self.p = _check_p(p)
        if of not in ("loss", "logit"):
            raise ValueError(f"of must be 'loss' or 'logit', got {of!r}")
        if not lam >= 0:
            raise ValueError(f"lam must be non-negative, got {lam}")
        self.lam, self.of, self.squared = float(lam), of, bool(squared)

    def penalty(self, x: Tensor, y: Tensor, logits: Tensor | None) -> tuple[Tensor, dict[str, float]]:
        if not reusable(self.model, logits):
            with auxiliary_forward(self.model):
                logits = self.model(x)
        if self.of == "loss":
            score = F.cross_entropy(logits, y, reduction="sum")
        else:
            score = class_scores(logits, y).sum()
        (grad,) = penalty_gradient(score, (x,), type(self).__name__)
        value = norm_penalty(grad, self.p, self.squared).mean()
        return self.lam * value, {f"input_grad_{_P_NAMES[self.p]}": float(value.detach())}


class WeightPenalty(RegularizedModel):
    r"""Penalise the ℓp norm of the model's weights: ``task loss + lam · ‖w‖_p``.

    All selected parameters form one vector (``weight_norm``). By default these are the weights of
    the plain model: biases and the affine parameters (γ, β) of normalisation layers are excluded
    (Bötte & Pfeiffer regularise "the weights"; :func:`penalised_parameters` states the rule);
    ``wrapper.penalised_names()`` lists them, ``include=`` replaces the rule. ``p = 2`` with
    ``squared=True`` is ordinary weight decay written into the loss.

    Args:
        model: classifier (or another wrapper); the penalty acts on the plain model's parameters.
        p: 1, 2 or ``inf``.
        lam: penalty weight. The paper does not report it; ``1e-4`` is our default.
        squared: for ``p = 2``, penalise ``Σw²`` (default) rather than ``‖w‖₂``.
        include_bias: also penalise biases.
        include: ``include(name, parameter) -> bool`` selecting the penalised parameters instead of
            the default rule (e.g. ``lambda n, w: w.dim() > 1`` for every matrix and kernel).

    Records ``weight_l1`` / ``weight_l2`` / ``weight_linf`` (unweighted norm).

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Linear(4, 3)
        >>> reg = WeightPenalty(net, p=1, lam=1e-3)
        >>> reg.loss(torch.randn(4, 4), torch.tensor([0, 1, 2, 0])).backward()
        >>> abs(reg.last_parts["weight_l1"] - float(net.weight.detach().abs().sum())) < 1e-6
        True
        >>> p = reg.last_parts
        >>> abs(p["total"] - (p["ce"] + 1e-3 * p["weight_l1"])) < 1e-6
        True
        >>> reg.penalised_names()
        ['weight']
    """

    def __init__(
        self,
        model: nn.Module,
        p: float | str = 2,
        lam: float = 1e-4,
        squared: bool = True,
        include_bias: bool = False,
        include: ParamFilter | None = None,
    ) -> None:
        super().__init__(model)
        self.p = _check_p(p)
        if not lam >= 0:
            raise ValueError(f"lam must be non-negative, got {lam}")
        if include is not None and not callable(include):
            raise TypeError(
                f"include must be a callable (name, parameter) -> bool, got {type(include).__name__}"
            )
        self.lam, self.squared, self.include_bias = float(lam), bool(squared), bool(include_bias)
        self.include = include
        if not self.penalised_names():
            raise ValueError("the model has no trainable weights to penalise (check include / include_bias)")

    def penalised_names(self) -> list[str]:
        """Names (in the plain model) of the parameters this penalty acts on."""
        return [n for n, _ in penalised_parameters(self.model, self.include_bias, self.include)]

    def penalty(self, x: Tensor, y: Tensor, logits: Tensor | None) -> tuple[Tensor, dict[str, float]]:
        value = weight_norm(self.model, self.p, self.squared, self.include_bias, self.include)
        return self.lam * value, {f"weight_{_P_NAMES[self.p]}": float(value.detach())}
