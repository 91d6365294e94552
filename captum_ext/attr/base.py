"""The Captum plumbing CASO, SmoothCASO and CAFO share: input and target formatting, the model policy,
chunking, output shapes and ``last_details`` (one chunk's maths is each method's ``_solve``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from captum.attr import GradientAttribution
from torch import Tensor, nn

from .._autograd import math_attention_kernel
from .._format import (
    TargetLike,
    TensorOrTuple,
    expand_target,
    format_additional_args,
    format_inputs,
    format_output,
    run_forward,
    select_additional_args,
)
from .._model_state import check_eval_mode, check_per_example, refuse_train_mode_layers
from .details import AttributionDetails
from .graph import (
    build_loss_graph,
    unflatten_features,
)
from .options import CAFOOptions, check_lambda1
from .progress import example_progress


def _looks_like_probabilities(logits: Tensor) -> bool:
    out = logits.detach()
    return (
        out.shape[1] > 1
        and bool(((out >= 0) & (out <= 1)).all())
        and bool(((out.sum(1) - 1).abs() <= 1e-4).all())
    )


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

    # ------------------------------------------------------------------ driver
    def _attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetLike,
        additional_forward_args: Any,
        grid_fn: Callable[[int, torch.device, torch.dtype], Tensor] | None,
        internal_batch_size: int | None,
        opts: CAFOOptions,
        abs_: bool,
    ) -> TensorOrTuple:
        """Solve every chunk (``self._solve``) and shape the output like ``inputs``: ``opts.sign * Delta``
        (``-Delta`` in Captum's orientation, ``|Delta|`` with ``abs_``); a grid of ``lambda1`` values
        (``grid_fn``) adds a leading sweep dimension."""
        who = type(self).__name__
        tup, is_tuple = format_inputs(inputs)
        for i, x in enumerate(tup):
            if not x.is_floating_point():
                raise TypeError(f"inputs[{i}] must be floating point, got {x.dtype}")
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"inputs[{i}] contains NaN or infinite values")
        n = tup[0].shape[0]
        opts.check_batch(n)
        check_eval_mode(self.forward_func, who)
        forward, compiled = _eager(self.forward_func)
        args = format_additional_args(additional_forward_args)
        if n == 0:
            raise ValueError("inputs hold no examples (batch size 0)")
        if internal_batch_size is not None and internal_batch_size < 1:
            raise ValueError(f"internal_batch_size must be >= 1, got {internal_batch_size}")
        chunk = n if internal_batch_size is None else internal_batch_size
        outs: list[tuple[Tensor, ...]] = []
        details: list[AttributionDetails] = []
        # the math attention kernel has a double backward (flash / efficient ones have none on CPU)
        bar = example_progress(n, getattr(opts, "show_progress", False), who)
        with torch.enable_grad(), math_attention_kernel(), refuse_train_mode_layers(who), bar:
            for start in range(0, n, chunk):
                idx = torch.arange(start, min(n, start + chunk), device=tup[0].device)
                xs = tuple(x.index_select(0, idx) for x in tup)
                a = select_additional_args(args, n, idx) if chunk < n else args
                xs_e, a_e = self._expand(xs, a)
                graph = build_loss_graph(forward, xs_e, a_e, None)
                check_per_example(forward, xs_e, a_e, graph.logits, who)
                if _looks_like_probabilities(graph.logits):
                    warnings.warn(
                        f"{who}: forward_func seems to return probabilities (rows in [0, 1] summing to 1); "
                        "the loss is the cross-entropy of softmax(output), so pass logits (or "
                        "log-probabilities) instead.",
                        stacklevel=3,
                    )
                t = expand_target(target, n, graph.logits.shape[1], graph.logits.device)
                if t is not None:
                    t = t.index_select(0, idx.to(t.device))
                elif self._samples > 1:  # explain the clean input's predicted class
                    with torch.no_grad():
                        t = run_forward(forward, xs, a).argmax(1)
                if t is not None:
                    graph.target = t.repeat_interleave(self._samples)
                chunk_opts = opts.for_examples(start, start + len(idx), n)
                flat, det = self._solve(graph, chunk_opts, grid_fn, forward, a_e)
                outs.append(unflatten_features(flat, xs))
                details.append(det)
                bar.update(len(idx))
        self.last_details = AttributionDetails.concat(details)
        if compiled:
            self.last_details.extra["compiled"] = compiled
        result = tuple(torch.cat([o[i] for o in outs]) for i in range(len(tup)))
        if grid_fn is not None:  # (n, m, ...) -> (m, n, ...)
            result = tuple(r.movedim(1, 0) for r in result)
        # the one place the orientation is applied: solvers and last_details keep the paper's Delta
        return format_output(is_tuple, tuple(r.abs() if abs_ else opts.sign * r for r in result))


def _eager(forward_func: Callable[..., Tensor]) -> tuple[Callable[..., Tensor], str]:
    """A ``torch.compile``'d model's eager original (compiled graphs have no double backward)."""
    orig = getattr(forward_func, "_orig_mod", None) if isinstance(forward_func, nn.Module) else None
    orig = orig if orig is not None else getattr(forward_func, "_torchdynamo_orig_callable", None)
    if orig is None:
        return forward_func, ""
    return orig, "differentiated the eager original of the torch.compile'd model (same function)"


def _grid_fn(values: Sequence[float] | Tensor) -> Callable[[int, torch.device, torch.dtype], Tensor]:
    vals = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if vals.numel() == 0:
        raise ValueError("lambda1_values must hold at least one value")
    check_lambda1(vals)
    return lambda n, dev, dt: vals.to(dev, dt).expand(n, -1)
