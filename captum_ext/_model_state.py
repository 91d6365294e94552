"""The model-untouched contract: a snapshot of a model's mutable state, and the one train-mode policy.

* :class:`ModelState` compares everything an attribution or metric promises to leave unchanged.
* :func:`has_stochastic_or_batch_layers` names the layers whose forward pass in training mode changes
  the model (running statistics of every normalisation kind that keeps them: BatchNorm of any
  dimension, ``SyncBatchNorm``, the lazy variants, ``InstanceNorm(track_running_stats=True)``, any
  custom layer with ``running_*`` buffers), couples the examples of a batch (train-mode BatchNorm) or
  is random (Dropout). CASO, CAFO and every metric refuse such a model.
* :func:`check_eval_mode` refuses a model with such layers in training mode, looking through bound
  methods, partials, closures, compiled modules and Captum attributions.
* :func:`refuse_train_mode_layers` enforces the same policy on models hidden behind a lambda or any
  opaque callable, for every batch size (one included): a global forward pre-hook raises *before*
  such a layer runs, so nothing is updated.
* :func:`check_per_example` is the numeric coupling probe (examples must not influence each other);
  with a batch of one it compares against a batch of two, so it is sound for every batch size.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._format import repeat_additional_args, run_forward, select_additional_args


@dataclass(frozen=True)
class ModelState:
    """Training flags, ``requires_grad`` flags, ``.grad`` fields and buffers of a module.

    ``ModelState.of(model) == ModelState.of(model)`` compares by value, so tests and callers can
    check that a call left a model exactly as it was.
    """

    training: tuple[tuple[str, bool], ...]
    requires_grad: tuple[tuple[str, bool], ...]
    grads: tuple[tuple[str, torch.Tensor | None], ...]
    buffers: tuple[tuple[str, torch.Tensor], ...]
    params: tuple[tuple[str, torch.Tensor], ...]

    @staticmethod
    def of(model: nn.Module) -> ModelState:
        return ModelState(
            training=tuple((n, m.training) for n, m in model.named_modules()),
            requires_grad=tuple((n, p.requires_grad) for n, p in model.named_parameters()),
            grads=tuple(
                (n, None if p.grad is None else p.grad.detach().clone()) for n, p in model.named_parameters()
            ),
            buffers=tuple((n, b.detach().clone()) for n, b in model.named_buffers()),
            params=tuple((n, p.detach().clone()) for n, p in model.named_parameters()),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelState):
            return NotImplemented

        def same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
            if a is None or b is None:
                return a is None and b is None
            return a.shape == b.shape and bool(torch.equal(a, b))

        def pairs_equal(xs, ys) -> bool:
            return len(xs) == len(ys) and all(
                n1 == n2 and same(t1, t2) for (n1, t1), (n2, t2) in zip(xs, ys, strict=True)
            )

        return (
            self.training == other.training
            and self.requires_grad == other.requires_grad
            and pairs_equal(self.grads, other.grads)
            and pairs_equal(self.buffers, other.buffers)
            and pairs_equal(self.params, other.params)
        )

    __hash__ = None  # type: ignore[assignment]


def _mode_dependent(module: nn.Module) -> bool:
    """Whether ``module`` in training mode changes state, couples examples or is random."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.modules.dropout._DropoutNd):
        return True  # BatchNorm (Sync, Lazy, any dim) uses batch statistics; Dropout is random
    if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
        return True  # InstanceNorm(track_running_stats=True) and other running-stat norms
    return any(name.startswith("running_") for name, _ in module.named_buffers(recurse=False))


def has_stochastic_or_batch_layers(model: nn.Module) -> list[str]:
    """Names of sub-modules in training mode whose forward pass depends on the mode.

    That is: every normalisation layer that keeps running statistics (``BatchNorm1d/2d/3d``,
    ``SyncBatchNorm``, ``LazyBatchNorm*``, ``InstanceNorm*`` with ``track_running_stats=True``, any
    layer with ``running_*`` buffers) and Dropout of every kind. GroupNorm, LayerNorm and
    InstanceNorm without running statistics behave the same in both modes and are not listed.

    Examples:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.InstanceNorm2d(2, track_running_stats=True))
        >>> has_stochastic_or_batch_layers(net.train())
        ['1']
        >>> has_stochastic_or_batch_layers(net.eval())
        []
    """
    return [n or type(m).__name__ for n, m in model.named_modules() if m.training and _mode_dependent(m)]


def owning_modules(forward_func: Any, depth: int = 3) -> list[nn.Module]:
    """Modules reachable from ``forward_func``: itself, a bound method's owner, a ``functools.partial``'s
    function and arguments, a closure's cells (``lambda x: model(x)``), a compiled module's eager
    original (``torch.compile``'s ``_orig_mod``) and a Captum attribution's ``forward_func``.

    Examples:
        >>> net = nn.Linear(2, 2)
        >>> owning_modules(net.forward)[0] is net
        True
    """
    if isinstance(forward_func, nn.Module):
        orig = getattr(forward_func, "_orig_mod", None)
        return [forward_func] + ([orig] if isinstance(orig, nn.Module) else [])
    if depth == 0:
        return []
    found: list[Any] = []
    if isinstance(forward_func, functools.partial):
        found = [forward_func.func, *forward_func.args, *forward_func.keywords.values()]
    else:
        owner = getattr(forward_func, "__self__", None)
        found += [owner, getattr(owner, "forward_func", None)]
        for cell in getattr(forward_func, "__closure__", None) or ():
            try:
                found.append(cell.cell_contents)
            except ValueError:  # empty cell
                pass
    mods: list[nn.Module] = []
    for obj in found:
        if obj is not None and (isinstance(obj, nn.Module) or callable(obj)):
            mods.extend(m for m in owning_modules(obj, depth - 1) if all(m is not k for k in mods))
    return mods


def check_eval_mode(forward_func: Any, name: str = "forward_func") -> None:
    """Raise ``ValueError`` when a module reachable from ``forward_func`` has mode-dependent layers
    in training mode (see :func:`has_stochastic_or_batch_layers`).

    The one train-mode policy of every attribution, metric and diagnostic: such a model would
    overwrite its running statistics, answer at random or couple the examples of a batch, so it is
    refused before it is touched. What :func:`owning_modules` cannot see into (an opaque callable) is
    caught while it runs by :func:`refuse_train_mode_layers`.

    Args:
        forward_func: a module, a bound method, a ``functools.partial``, a closure, a compiled module
            or a Captum attribution's bound ``attribute`` (its model is checked).
        name: who needs the eval-mode model (the caller or the argument), for the message.

    Raises:
        ValueError: naming the offending layers and the fix (``.eval()``).

    Examples:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
        >>> check_eval_mode(net.eval(), "CASO")
        >>> try:
        ...     check_eval_mode(net.train(), "CASO")
        ... except ValueError as err:
        ...     print(str(err)[:40])
        CASO needs a deterministic, per-example
    """
    modules = owning_modules(forward_func)
    live = [layer for module in modules for layer in has_stochastic_or_batch_layers(module)]
    if live:
        raise ValueError(_train_mode_message(name, live))


def _train_mode_message(who: str, live: list[str]) -> str:
    return (
        f"{who} needs a deterministic, per-example model, but these layers are in training mode: "
        f"{live[:5]}. Call model.eval() first (captum_ext never changes the model's mode for you; in "
        "training mode these layers update running statistics, are random, or make one example's output "
        "change when another example of the batch changes)."
    )


@contextlib.contextmanager
def refuse_train_mode_layers(who: str) -> Iterator[None]:
    """Refuse any mode-dependent layer in training mode that runs inside the block, before it runs.

    A global forward pre-hook sees every module called, also behind a lambda or another opaque
    callable that :func:`owning_modules` cannot look into, and raises ``ValueError`` before the layer
    updates anything: sound for every batch size, one included.

    Examples:
        >>> bn = nn.BatchNorm1d(2).train()
        >>> hidden = lambda x: bn(x)  # noqa: E731
        >>> try:
        ...     with refuse_train_mode_layers("CASO"):
        ...         hidden(torch.ones(1, 2, 3))
        ... except ValueError as err:
        ...     print(str(err)[:24], bool((bn.running_mean == 0).all()))
        CASO needs a determinist True
    """

    def hook(module: nn.Module, args: Any) -> None:
        if module.training and _mode_dependent(module):
            raise ValueError(_train_mode_message(who, [type(module).__name__]))

    handle = nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def check_per_example(
    forward_func: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    args: tuple[Any, ...],
    logits: Tensor,
    who: str,
) -> None:
    """Coupling probe: put one example between moved copies of itself; its output must not change.

    ``logits`` are ``forward_func``'s outputs at ``inputs`` (a single-logit output may have been
    widened to ``[0, z]``). The probe is a batch of three, ``[moved, x_0, moved]``, so ``x_0`` meets
    other examples before and after it that it did not meet in ``inputs``: an output that depends on
    the rest of the batch in any direction (batch statistics, a sum or scan over dim 0, randomness)
    changes. It costs a no-grad forward of three examples whatever the batch size. With a batch of
    one, where only randomness can matter, the probe is ``[x_0, moved]``.

    Raises:
        ValueError: the outputs of one example depend on another example.

    Examples:
        >>> net = nn.Linear(3, 2)
        >>> x = torch.randn(4, 3)
        >>> check_per_example(net, (x,), (), net(x), "CASO")
    """
    n = inputs[0].shape[0]
    moved = []
    for x in inputs:
        x0 = x[:1].detach()
        shift = x0 + 0.1 * (1.0 + x0.abs())
        moved.append(torch.cat([x0, shift]) if n == 1 else torch.cat([shift, x0, shift]))
    first = torch.zeros(1, dtype=torch.long, device=inputs[0].device)
    probe_args = repeat_additional_args(select_additional_args(args, n, first), 1, 2 if n == 1 else 3)
    ref, row = logits.detach()[:1], 0 if n == 1 else 1
    with torch.no_grad():
        out = run_forward(forward_func, tuple(moved), probe_args)
    if out.shape[1] == 1 and ref.shape[1] == 2:  # single-logit model read as [0, z]
        ref = ref[:, 1:]
    stay = out[row : row + 1]
    tol = (1e-9 if ref.dtype == torch.float64 else 1e-4) * (1.0 + float(ref.abs().max()))
    change = float((stay - ref).abs().max())
    if not change <= tol:
        raise ValueError(
            f"{who}: the model's output for one example changes when another example of the batch "
            f"changes (by {change:.3g}); {who} explains each example's own loss and needs a per-example, "
            "deterministic model. Likely cause: a batch-statistics layer (BatchNorm in training mode, "
            "F.batch_norm(training=True)) or random layer behind an opaque callable; call model.eval()."
        )
