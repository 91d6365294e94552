"""The regularizer-wrapper protocol shared by every training-time regularizer (DESIGN.md section 5).

A wrapper ``W(model, **hyper)`` is an :class:`torch.nn.Module` such that

* ``W(x)`` returns the wrapped model's logits unchanged, so Captum, metrics and every pipeline see
  the plain classifier;
* ``W.loss(x, y)`` returns the training loss (the task loss plus the wrapper's penalty, or the loss on
  adversarial inputs) and records its parts, as floats, in ``W.last_parts``;
* ``W.model`` is the plain model (all wrappers peeled off), for saving with ``state_dict()`` and loading
  into an unwrapped architecture.

Wrappers compose by nesting: the task loss of a wrapper around another wrapper is the inner wrapper's
``loss``, so ``WeightPenalty(InputGradientPenalty(model, p=2), p=1)`` trains with
cross-entropy + gradient penalty + weight penalty and reports all three parts.

**One training-step policy, whatever the nesting.** During one ``loss(x, y)`` call the plain model's
layers whose output depends on the training flag (BatchNorm and every normalisation layer with
running statistics, Dropout) see exactly **one** training-mode forward pass: the task loss's, on the
clean batch, or on the adversarial batch for adversarial training (the convention of Madry et al.:
the model trains on, and normalises with the statistics of, the inputs it is trained on). So the
running statistics and ``num_batches_tracked`` move exactly as in plain training on that batch.
Every auxiliary forward pass (attacks, gradient penalties, the noisy copies of the trace estimators)
runs with **frozen statistics**: in eval mode (running statistics, nothing updated, Dropout off),
every module's flag restored afterwards. A penalty reuses the task loss's logits only when that gives
the same numbers (no such layer in training mode), saving one forward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._model_state import has_stochastic_or_batch_layers

__all__ = ["RegularizedModel", "unwrap", "restore_modes", "auxiliary_forward"]


def unwrap(model: nn.Module) -> nn.Module:
    """Return the plain model inside nested :class:`RegularizedModel` and data-parallel wrappers.

    ``nn.DataParallel`` and ``DistributedDataParallel`` are peeled off too (their ``module``), so
    ``unwrap(w).state_dict()`` has the plain model's keys (no ``module.`` prefix) and loads into the
    unwrapped architecture.

    Args:
        model: a wrapper or a plain module.

    Returns:
        The innermost module that is neither a :class:`RegularizedModel` nor a data-parallel wrapper.

    Examples:
        >>> net = nn.Linear(4, 3)
        >>> unwrap(net) is net, unwrap(nn.DataParallel(net)) is net
        (True, True)
    """
    parallel = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while isinstance(model, (RegularizedModel, *parallel)):
        model = model.inner if isinstance(model, RegularizedModel) else model.module
    return model


@contextlib.contextmanager
def restore_modes(model: nn.Module, *, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Context manager: optionally switch ``model`` to eval mode, then restore every module's flag.

    Attacks and estimators run inside it so that the model leaves in exactly the mode it came in
    (``m.training`` of every sub-module is restored one by one, so mixed modes survive too).

    Args:
        model: the module whose training flags are saved and restored.
        eval_mode: put the model in eval mode for the body (so BatchNorm statistics are not updated and
            Dropout is off while an attack searches for a perturbation).

    Yields:
        ``model``.
    """
    flags = [(m, m.training) for m in model.modules()]
    try:
        if eval_mode:
            model.eval()
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def auxiliary_forward(model: nn.Module, *, float32: bool = False) -> Iterator[nn.Module]:
    """Context for an auxiliary forward pass: frozen statistics (eval mode, flags restored after).

    Args:
        model: the plain model.
        float32: also switch autocast off, so a model with float32 weights computes in float32
            (for estimators that divide small differences of outputs, see the trace estimators).

    Yields:
        ``model``.

    Examples:
        >>> bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        >>> with auxiliary_forward(bn):
        ...     _ = bn(torch.randn(5, 3))
        >>> int(bn[1].num_batches_tracked), bn.training
        (0, True)
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(restore_modes(model))
        if float32:
            for device_type in ("cpu", "cuda"):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield model


def autocast_active() -> bool:
    """Whether autocast is on for CPU or CUDA in the current thread."""
    return torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")


def reusable(model: nn.Module, logits: Tensor | None) -> bool:
    """Whether a penalty may reuse the task loss's ``logits`` (same numbers as a frozen forward)."""
    return logits is not None and not has_stochastic_or_batch_layers(model)


def check_batch(x: Tensor, y: Tensor) -> None:
    """Validate a ``(inputs, labels)`` training batch and raise an actionable error if it is wrong."""
    if not isinstance(x, Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(y, Tensor):
        raise TypeError(f"labels must be a torch.Tensor of class indices, got {type(y).__name__}")
    if x.dim() < 2:
        raise ValueError(f"inputs must be batch-first with at least 2 dims, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"inputs must be floating point, got dtype {x.dtype}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must have shape ({x.shape[0]},) to match the inputs, got {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex():
        raise TypeError(f"labels must hold integer class indices, got dtype {y.dtype}")


def class_scores(logits: Tensor, y: Tensor) -> Tensor:
    """``logits[n, y[n]]`` for every example: the raw logit of each example's label, shape ``(N,)``."""
    if logits.dim() != 2:
        raise ValueError(f"the model must return (batch, classes) logits, got {tuple(logits.shape)}")
    return logits.gather(1, y.to(logits.device).long().unsqueeze(1)).squeeze(1)


class RegularizedModel(nn.Module):
    """Base class of the regularizer wrappers: logits unchanged, ``loss`` = task loss + penalty.

    Subclasses implement :meth:`penalty` (a weighted penalty tensor and its parts) or override
    :meth:`loss` entirely (adversarial training replaces the task loss instead of adding to it).

    Args:
        model: the classifier to train, returning ``(batch, classes)`` logits, or another wrapper.

    Attributes:
        inner: the wrapped module (a plain model or another wrapper).
        last_parts: the parts of the last :meth:`loss` call, as Python floats, e.g.
            ``{"ce": 0.31, "grad_norm": 2.4, "total": 0.33}``.

    Examples:
        A new regularizer only defines :meth:`penalty` (here: the mean absolute logit):

        >>> class LogitPenalty(RegularizedModel):
        ...     def penalty(self, x, y, logits):
        ...         value = (self.model(x) if logits is None else logits).abs().mean()
        ...         return 0.1 * value, {"logit_abs": float(value.detach())}
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Linear(4, 3)
        >>> reg = LogitPenalty(net)
        >>> x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
        >>> reg.loss(x, y).backward()
        >>> sorted(reg.last_parts), reg.model is net, torch.equal(reg(x), net(x))
        (['ce', 'logit_abs', 'total'], True, True)
    """

    #: Whether :meth:`penalty` needs gradients with respect to the inputs.
    needs_input_grad: bool = False

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.inner = model
        self.last_parts: dict[str, float] = {}

    @property
    def model(self) -> nn.Module:
        """The plain model (every wrapper and data-parallel wrapper removed): save
        ``wrapper.model.state_dict()``. Attacks and penalties run their auxiliary forward passes on it
        (one device); the task loss's forward pass goes through :attr:`inner`."""
        return unwrap(self.inner)

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script(wrapper)`` scripts the plain model: its forward is the wrapper's.

        The wrapper's own ``forward(*args, **kwargs)`` cannot be compiled by TorchScript, and the
        scripted module is for inference, where the wrapper adds nothing (``loss`` is not scripted).
        """
        return self.model

    def forward(self, *args, **kwargs):  # noqa: D401 - same contract as the wrapped model
        """Return the wrapped model's output unchanged."""
        return self.inner(*args, **kwargs)

    def penalty(self, x: Tensor, y: Tensor, logits: Tensor | None) -> tuple[Tensor, dict[str, float]]:
        """Weighted penalty (a 0-d tensor that carries the graph) and its unweighted parts.

        Args:
            x: the inputs; ``requires_grad`` is set when :attr:`needs_input_grad`.
            y: labels, shape ``(N,)``.
            logits: the plain model's logits at ``x`` when they were already computed with the same
                graph (the wrapper wraps a plain model), else ``None``.
        """
        raise TypeError(
            f"{type(self).__name__} must override penalty() (or loss()) to define its regularizer"
        )

    def task_loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None, dict[str, float]]:
        """Task loss of the wrapped module: its own ``loss`` if it is a wrapper, else cross-entropy.

        Returns:
            ``(loss, logits_or_None, parts)``; ``logits`` are returned when they were computed on ``x``
            by the plain model, so a penalty can reuse them instead of running a second forward pass.
        """
        if isinstance(self.inner, RegularizedModel):
            loss = self.inner.loss(x, y)
            parts = {k: v for k, v in self.inner.last_parts.items() if k != "total"}
            return loss, None, parts
        logits = self.inner(x)
        loss = F.cross_entropy(logits, y)
        return loss, logits, {"ce": float(loss.detach())}

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Training loss on a batch: task loss + this wrapper's penalty; parts go to ``last_parts``.

        Args:
            x: inputs, batch first.
            y: integer labels, shape ``(N,)``.

        Returns:
            A 0-d tensor to call ``backward()`` on inside the training step.
        """
        check_batch(x, y)
        y = y.to(x.device).long()
        with torch.enable_grad():
            if self.needs_input_grad:
                x = x.detach().requires_grad_(True)
            base, logits, parts = self.task_loss(x, y)
            pen, pen_parts = self.penalty(x, y, logits)
            total = base + pen
        self.last_parts = merge_parts(parts, pen_parts)
        self.last_parts["total"] = float(total.detach())
        return total


def merge_parts(first: dict[str, float], second: dict[str, float]) -> dict[str, float]:
    """Merge two part dictionaries; a repeated name gets a numeric suffix instead of being lost."""
    out = dict(first)
    for k, v in second.items():
        name, i = k, 2
        while name in out:
            name = f"{k}_{i}"
            i += 1
        out[name] = v
    return out
