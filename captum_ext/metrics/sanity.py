"""Sanity checks for attributions (Adebayo et al., 2018; Gong et al., 2024, supplement C.2.6).

* :func:`model_randomization` — re-initialise the model's layers, cascading from the output
  towards the input (or one layer at a time, ``mode="independent"``), and measure how similar each
  stage's attributions stay to the original ones (SSIM, Spearman rank correlation, top-k
  intersection). Attributions that do not change when the weights are destroyed do not explain the
  model.
* :func:`data_randomization` — retrain a fresh copy of the architecture on permuted labels with the
  same pluggable trainer as DiffROAR (``trainer(model, (inputs, labels), seed)``) and compare its
  attributions with the original model's.

Both work on deep copies: the model passed in is never changed. Randomisation is seeded: layer
``j`` (in input-to-output order) is re-initialised with its own seed derived from ``seed`` and
``j``, so the cascading and independent runs draw the same random weights for a layer, and a run is
reproducible without touching the caller's global RNG.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from captum_ext._format import (
    TargetType,
    TensorOrTuple,
    expand_target,
    format_additional_args,
    format_inputs,
    run_forward,
    select_additional_args,
)
from captum_ext._model_state import has_stochastic_or_batch_layers
from captum_ext.metrics._attribution import call_attribution, check_like
from captum_ext.metrics.similarity import (
    AttrLike,
    normalize_maps,
    saliency_map,
    spearman,
    ssim,
    topk_intersection,
)

__all__ = ["RandomizationResult", "data_randomization", "model_randomization"]

ExplainerLike = type | Callable[[nn.Module], Callable[..., AttrLike]]
InitLike = str | Callable[[nn.Module], None]
METRICS = ("ssim", "spearman", "topk")


# ----------------------------------------------------------------------------------------------
# Result


@dataclass
class RandomizationResult:
    """Similarity of attributions after each randomisation stage to the original attributions.

    Attributes:
        mode: ``"cascading"``, ``"independent"`` or ``"data"``.
        stages: one label per stage: for ``"cascading"`` the last layer randomised so far (every
            layer from the output down to it is random), for ``"independent"`` the one randomised
            layer, for ``"data"`` ``"permuted labels"``.
        scores: metric name (``"ssim"``, ``"spearman"``, ``"topk"``) -> ``(stages, N)`` tensor of
            per-example similarities. Spearman is NaN for an example whose attribution is constant.
        attributions: when requested, the original attributions followed by each stage's.
        model: for data randomisation, the model retrained on permuted labels.

    Examples:
        >>> result.mean()["spearman"]  # doctest: +SKIP
        tensor([0.41, 0.12, 0.03])
        >>> result.plot()  # doctest: +SKIP
    """

    mode: str
    stages: list[str]
    scores: dict[str, Tensor]
    attributions: list[AttrLike] | None = None
    model: nn.Module | None = field(default=None, repr=False)

    def mean(self) -> dict[str, Tensor]:
        """Mean similarity per stage (NaN examples ignored): metric -> ``(stages,)``."""
        return {k: torch.nanmean(v.double(), dim=1).to(v.dtype) for k, v in self.scores.items()}

    def std(self) -> dict[str, Tensor]:
        """Standard deviation per stage over examples (NaN examples ignored)."""
        out = {}
        for k, v in self.scores.items():
            vals = []
            for row in v.double():
                row = row[~torch.isnan(row)]
                vals.append(row.std(correction=0) if row.numel() else torch.tensor(math.nan))
            out[k] = torch.stack(vals).to(v.dtype) if vals else v.new_empty(0)
        return out

    def plot(self, ax: Any = None, metrics: Sequence[str] | None = None) -> Any:
        """Plot mean ± std of each metric against the randomisation stage.

        Args:
            ax: a matplotlib Axes to draw on (a new figure when ``None``).
            metrics: which metrics to draw (default: all computed).

        Returns:
            The matplotlib Axes.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(self.stages) + 2.0), 3.5))
        names = list(metrics) if metrics is not None else list(self.scores)
        unknown = [m for m in names if m not in self.scores]
        if unknown:
            raise ValueError(f"no scores for {unknown}; computed: {list(self.scores)}")
        means, stds = self.mean(), self.std()
        xs = list(range(len(self.stages)))
        labels = {"ssim": "SSIM", "spearman": "Spearman rank corr.", "topk": "top-k intersection"}
        for m in names:
            ax.errorbar(
                xs,
                means[m].cpu().numpy(),
                yerr=stds[m].cpu().numpy(),
                marker="o",
                capsize=3,
                label=labels.get(m, m),
            )
        ax.set_xticks(xs)
        ax.set_xticklabels(self.stages, rotation=45, ha="right")
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel("similarity to original")
        ax.set_xlabel(
            {"cascading": "randomised from the output down to", "independent": "randomised layer"}.get(
                self.mode, ""
            )
        )
        ax.set_title(f"{self.mode} randomisation")
        ax.legend(fontsize="small")
        return ax


# ----------------------------------------------------------------------------------------------
# Plumbing shared with robustness / fidelity


def check_eval_mode(model: nn.Module, name: str = "model") -> None:
    """Raise if ``model`` has BatchNorm / Dropout layers in training mode (a forward would change
    buffers or be random)."""
    bad = has_stochastic_or_batch_layers(model)
    if bad:
        raise ValueError(
            f"{name} has layers in training mode whose output depends on the mode ({bad[:5]}); "
            f"call {name}.eval() first"
        )


def explainer_for(explainer: ExplainerLike, model: nn.Module) -> Callable[..., AttrLike]:
    """Turn ``explainer`` into an attribution function for ``model``.

    ``explainer`` is a Captum ``Attribution`` class (``Saliency``, ``IntegratedGradients``, ...;
    ``cls(model).attribute`` is used) or a factory ``model -> attribute_fn`` where
    ``attribute_fn(inputs, target=..., **kwargs)`` returns attributions shaped like the inputs
    (e.g. ``lambda m: NoiseTunnel(Saliency(m)).attribute``).
    """
    if isinstance(explainer, type):
        from captum.attr import Attribution

        if not issubclass(explainer, Attribution):
            raise TypeError(
                f"explainer class {explainer.__name__} is not a captum.attr.Attribution; pass a "
                "Captum attribution class or a factory `lambda model: attribute_fn`"
            )
        return explainer(model).attribute
    if not callable(explainer):
        raise TypeError(
            "explainer must be a Captum Attribution class or a callable `model -> attribute_fn`, "
            f"got {type(explainer).__name__}"
        )
    fn = explainer(model)
    if not callable(fn):
        raise TypeError(
            "explainer(model) must return an attribution function `(inputs, target) -> tensor`, "
            f"got {type(fn).__name__}"
        )
    return fn


def resolve_target(
    model: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    target: TargetType,
    args: tuple[Any, ...] = (),
    batch_size: int | None = None,
) -> Tensor:
    """``target`` as a ``(N,)`` LongTensor; ``None`` becomes the model's predicted classes."""
    n = inputs[0].shape[0]
    with torch.no_grad():
        out = _forward_batched(model, inputs, args, batch_size)
    t = expand_target(target, n, out.shape[1], out.device)
    return out.argmax(dim=1) if t is None else t


def _forward_batched(
    model: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    args: tuple[Any, ...],
    batch_size: int | None,
) -> Tensor:
    n = inputs[0].shape[0]
    bs = n if batch_size is None else batch_size
    outs = []
    for start in range(0, n, max(bs, 1)):
        idx = torch.arange(start, min(start + bs, n), device=inputs[0].device)
        outs.append(run_forward(model, tuple(x[idx] for x in inputs), select_additional_args(args, n, idx)))
    return torch.cat(outs, dim=0)


def check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")


def compute_attributions(
    attribute_fn: Callable[..., AttrLike],
    inputs: TensorOrTuple,
    target: Tensor | None,
    *,
    additional_forward_args: Any = None,
    attribute_kwargs: dict[str, Any] | None = None,
    batch_size: int | None = None,
) -> AttrLike:
    """Call ``attribute_fn(inputs, target=..., **kwargs)`` in batches and check the output.

    The batching is :func:`captum_ext.metrics._attribution.call_attribution` (target by keyword
    when the function has a ``target`` parameter, positionally otherwise).

    Args:
        attribute_fn: a Captum ``attribute`` method or any ``(inputs, target) -> attributions``.
        inputs: tensor or tuple of tensors, batch first.
        target: ``(N,)`` classes (split with the batches) or ``None``.
        additional_forward_args: passed as ``additional_forward_args=`` when not ``None``
            (batch-shaped tensors are split with the batches).
        attribute_kwargs: extra keyword arguments for ``attribute_fn`` (e.g. ``nt_samples``).
        batch_size: examples per call (``None``: all at once).

    Returns:
        Detached attributions shaped like ``inputs`` (a tuple for tuple inputs).
    """
    check_batch_size(batch_size)
    tup, is_tuple = format_inputs(inputs)
    n = tup[0].shape[0]
    fn = functools.partial(attribute_fn, **attribute_kwargs) if attribute_kwargs else attribute_fn
    out = call_attribution(
        fn, tup, is_tuple, target, n if batch_size is None else batch_size, additional_forward_args
    )
    check_like(out, tup, "attributions")
    return out if is_tuple else out[0]


def check_metrics(metrics: Sequence[str] | None) -> tuple[str, ...] | None:
    """Validate a metric selection (``None`` means: decide from the attributions' shape)."""
    if metrics is None:
        return None
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {metrics}")
    return metrics


def _ssim_applicable(attributions: AttrLike, ssim_kwargs: dict[str, Any] | None) -> bool:
    if isinstance(attributions, tuple) or attributions.dim() not in (3, 4):
        return False
    window = (ssim_kwargs or {}).get("window_size", 11)
    return min(attributions.shape[-2:]) >= window


def settle_metrics(
    metrics: tuple[str, ...] | None, attributions: AttrLike, ssim_kwargs: dict[str, Any] | None
) -> tuple[str, ...]:
    """``None`` -> every metric that applies (SSIM only for image maps at least a window wide);
    an explicit ``"ssim"`` on non-image attributions raises ``ValueError``."""
    if metrics is None:
        if _ssim_applicable(attributions, ssim_kwargs):
            return METRICS
        return ("spearman", "topk")
    if "ssim" not in metrics:
        return metrics
    if isinstance(attributions, tuple) or attributions.dim() not in (3, 4):
        shape = (
            [tuple(a.shape) for a in attributions]
            if isinstance(attributions, tuple)
            else tuple(attributions.shape)
        )
        raise ValueError(
            f"SSIM needs image attributions (N, C, H, W) or (N, H, W), got {shape}; "
            "leave 'ssim' out of metrics for other inputs"
        )
    return metrics


def compare_attributions(
    original: AttrLike,
    other: AttrLike,
    metrics: tuple[str, ...],
    *,
    absolute: bool = True,
    topk_fraction: float = 0.4,
    ssim_kwargs: dict[str, Any] | None = None,
) -> dict[str, Tensor]:
    """Per-example similarity of two attribution batches for each requested metric.

    SSIM compares min-max normalised single-channel maps (channels summed, absolute values when
    ``absolute``) with ``data_range=1``, as in Adebayo et al.'s sanity checks; Spearman and top-k
    compare every feature (absolute values when ``absolute``).
    """
    out: dict[str, Tensor] = {}
    if "ssim" in metrics:
        ma = normalize_maps(saliency_map(original, absolute=absolute))  # type: ignore[arg-type]
        mb = normalize_maps(saliency_map(other, absolute=absolute))  # type: ignore[arg-type]
        out["ssim"] = ssim(ma, mb, data_range=1.0, **(ssim_kwargs or {}))
    if "spearman" in metrics:
        if absolute:
            a = tuple(t.abs() for t in original) if isinstance(original, tuple) else original.abs()
            b = tuple(t.abs() for t in other) if isinstance(other, tuple) else other.abs()
        else:
            a, b = original, other
        out["spearman"] = spearman(a, b)
    if "topk" in metrics:
        out["topk"] = topk_intersection(original, other, fraction=topk_fraction, absolute=absolute)
    return out


# ----------------------------------------------------------------------------------------------
# Layer randomisation


def parameter_layers(model: nn.Module) -> list[str]:
    """Names of the sub-modules that own parameters, in registration (input-to-output) order."""
    return [name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]


def _layer_seed(seed: int, index: int) -> int:
    return (int(seed) * 1_000_003 + index * 7_919 + 12_345) % (2**63 - 1)


def _cuda_devices(module: nn.Module) -> list[int]:
    devs = {p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"}
    devs |= {b.device.index or 0 for b in module.buffers() if b.device.type == "cuda"}
    return sorted(devs)


def randomize_layer(module: nn.Module, seed: int, init: InitLike = "reset") -> None:
    """Re-initialise one module in place from a seeded RNG (the global RNG is restored after).

    Args:
        module: the layer to re-initialise.
        seed: its seed.
        init: ``"reset"`` calls ``module.reset_parameters()`` (PyTorch's default initialisation
            of a fresh layer); a callable ``init(module)`` is called instead, under the same seeded
            RNG (so ``torch.nn.init.*`` calls inside are reproducible).
    """
    with torch.random.fork_rng(devices=_cuda_devices(module)):
        torch.manual_seed(seed)
        with torch.no_grad():
            if init == "reset":
                reset = getattr(module, "reset_parameters", None)
                if not callable(reset):
                    raise ValueError(
                        f"layer {type(module).__name__} has no reset_parameters(); pass "
                        "init=callable(module) to re-initialise it"
                    )
                reset()
            elif callable(init):
                init(module)
            else:
                raise ValueError(f"init must be 'reset' or a callable(module), got {init!r}")


def _resolve_layers(model: nn.Module, layers: Sequence[str] | None) -> list[str]:
    available = parameter_layers(model)
    if layers is None:
        if not available:
            raise ValueError("the model has no layers with parameters to randomise")
        return available
    if isinstance(layers, str):
        layers = [layers]
    modules = dict(model.named_modules())
    layers = list(layers)
    missing = [n for n in layers if n not in modules]
    if missing:
        raise ValueError(f"unknown layer names {missing}; layers with parameters: {available}")
    if not layers:
        raise ValueError("layers is empty: give at least one layer to randomise")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers must not repeat, got {layers}")
    return layers


# ----------------------------------------------------------------------------------------------
# Public checks


def model_randomization(
    model: nn.Module,
    inputs: TensorOrTuple,
    explainer: ExplainerLike,
    target: TargetType = None,
    *,
    mode: str = "cascading",
    layers: Sequence[str] | None = None,
    init: InitLike = "reset",
    seed: int = 0,
    additional_forward_args: Any = None,
    attribute_kwargs: dict[str, Any] | None = None,
    metrics: Sequence[str] | None = None,
    absolute: bool = True,
    topk_fraction: float = 0.4,
    ssim_kwargs: dict[str, Any] | None = None,
    batch_size: int | None = None,
    return_attributions: bool = False,
    progress: bool = True,
) -> RandomizationResult:
    """Model parameter randomisation test (cascading or independent).

    The attributions of a deep copy of ``model`` are computed, then layers are re-initialised and
    the attributions recomputed at every stage:

    * ``mode="cascading"``: stage ``s`` randomises the ``s + 1`` layers closest to the output
      (the randomisation accumulates from the output towards the input, Gong et al. Fig. 11);
    * ``mode="independent"``: stage ``s`` randomises only the ``s``-th layer from the output,
      every other layer keeps its trained weights.

    Each stage's attributions are compared with the original ones per example (see
    :func:`compare_attributions`): SSIM of normalised single-channel maps (image inputs only),
    Spearman rank correlation and top-k intersection (``k`` = ``topk_fraction`` of the original's
    non-zero features).

    Args:
        model: the trained model (never modified; randomisation works on deep copies).
        inputs: tensor or tuple of tensors, batch first.
        explainer: a Captum Attribution class (e.g. ``Saliency``) or a factory
            ``model -> attribute_fn`` with ``attribute_fn(inputs, target=..., **kw)``.
        target: classes to explain; ``None`` uses the original model's predictions (the same
            classes at every stage).
        mode: ``"cascading"`` or ``"independent"``.
        layers: names of the modules to randomise, in input-to-output order (default: every
            module that owns parameters, in registration order). Stages go from the last name to
            the first.
        init: ``"reset"`` (each layer's ``reset_parameters()``) or a callable ``init(module)``.
        seed: randomisation seed.
        additional_forward_args: extra forward arguments (passed to the attribution function).
        attribute_kwargs: extra keyword arguments for the attribution function.
        metrics: subset of ``("ssim", "spearman", "topk")``; ``None`` takes all three for image
            attributions (``(N, C, H, W)`` or ``(N, H, W)`` at least an SSIM window wide) and
            Spearman and top-k otherwise.
        absolute: compare absolute attributions (the usual saliency-map convention).
        topk_fraction: fraction of non-zero features in the top-k set.
        ssim_kwargs: keyword arguments for :func:`~captum_ext.metrics.similarity.ssim` (e.g.
            ``window_size=7`` for small maps).
        batch_size: examples per attribution call.
        return_attributions: keep the original and every stage's attributions in the result.
        progress: tqdm progress bar over stages.

    Returns:
        :class:`RandomizationResult` with ``scores[metric]`` of shape ``(stages, N)``.

    Examples:
        >>> from captum.attr import Saliency
        >>> res = model_randomization(net, images, Saliency, labels)  # doctest: +SKIP
        >>> res.mean()["ssim"], res.plot()  # doctest: +SKIP
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if mode not in ("cascading", "independent"):
        raise ValueError(f"mode must be 'cascading' or 'independent', got {mode!r}")
    mets = check_metrics(metrics)
    check_batch_size(batch_size)
    tup, _ = format_inputs(inputs)
    args = format_additional_args(additional_forward_args)
    names = _resolve_layers(model, layers)
    index = {name: i for i, name in enumerate(names)}
    order = list(reversed(names))  # output -> input

    work = copy.deepcopy(model)
    check_eval_mode(work)
    tgt = resolve_target(work, tup, target, args, batch_size)

    def attribute(m: nn.Module) -> AttrLike:
        return compute_attributions(
            explainer_for(explainer, m),
            inputs,
            tgt,
            additional_forward_args=additional_forward_args,
            attribute_kwargs=attribute_kwargs,
            batch_size=batch_size,
        )

    original = attribute(work)
    mets = settle_metrics(mets, original, ssim_kwargs)
    kept: list[AttrLike] = [original]
    per_stage: list[dict[str, Tensor]] = []

    from tqdm.auto import tqdm

    for name in tqdm(order, desc=f"{mode} randomisation", disable=not progress, leave=False):
        if mode == "independent":
            work = copy.deepcopy(model)
        modules = dict(work.named_modules())
        randomize_layer(modules[name], _layer_seed(seed, index[name]), init)
        attr = attribute(work)
        per_stage.append(
            compare_attributions(
                original, attr, mets, absolute=absolute, topk_fraction=topk_fraction, ssim_kwargs=ssim_kwargs
            )
        )
        if return_attributions:
            kept.append(attr)
    scores = {m: torch.stack([s[m] for s in per_stage]) for m in mets}
    return RandomizationResult(
        mode=mode, stages=order, scores=scores, attributions=kept if return_attributions else None
    )


def data_randomization(
    model: nn.Module,
    train_data: Any,
    inputs: TensorOrTuple,
    explainer: ExplainerLike,
    target: TargetType = None,
    *,
    trainer: Callable[[nn.Module, Any, int], nn.Module] | None = None,
    seed: int = 0,
    reinitialize: bool = True,
    init: InitLike = "reset",
    additional_forward_args: Any = None,
    attribute_kwargs: dict[str, Any] | None = None,
    metrics: Sequence[str] | None = None,
    absolute: bool = True,
    topk_fraction: float = 0.4,
    ssim_kwargs: dict[str, Any] | None = None,
    batch_size: int | None = None,
    return_attributions: bool = False,
) -> RandomizationResult:
    """Data randomisation test: retrain on permuted labels and compare attributions.

    A deep copy of ``model`` is re-initialised (every layer with parameters, seeded) and trained
    by ``trainer(copy, (train_inputs, permuted_labels), seed)`` — the same pluggable trainer
    signature as DiffROAR. Attributions of the original model and of the random-label model are
    then compared on ``inputs`` for the same target classes. Explanations that survive the label
    permutation do not depend on the relation between inputs and labels.

    Args:
        model: the model trained on the true labels (never modified).
        train_data: ``(inputs, labels)`` tensors or a Dataset (see
            :func:`captum_ext.training.as_tensors`).
        inputs: the examples to explain, batch first.
        explainer: a Captum Attribution class or a factory ``model -> attribute_fn``.
        target: classes to explain; ``None`` uses the original model's predictions.
        trainer: ``trainer(model, (inputs, labels), seed) -> model``; default
            ``captum_ext.training.Trainer()``.
        seed: seed of the label permutation, the re-initialisation and the training.
        reinitialize: re-initialise the copy before training (``False`` fine-tunes the trained
            weights on the permuted labels instead).
        init: how to re-initialise a layer (see :func:`model_randomization`).
        additional_forward_args: extra forward arguments (passed to the attribution function).
        attribute_kwargs: extra keyword arguments for the attribution function.
        metrics: subset of ``("ssim", "spearman", "topk")``; ``None`` takes all three for image
            attributions (``(N, C, H, W)`` or ``(N, H, W)`` at least an SSIM window wide) and
            Spearman and top-k otherwise.
        absolute: compare absolute attributions.
        topk_fraction: fraction of non-zero features in the top-k set.
        ssim_kwargs: keyword arguments for the SSIM.
        batch_size: examples per attribution call.
        return_attributions: keep both attribution batches in the result.

    Returns:
        :class:`RandomizationResult` with one stage (``scores[metric]`` shaped ``(1, N)``) and the
        random-label model in ``.model``.

    Examples:
        >>> res = data_randomization(
        ...     net, (x_train, y_train), x_test[:64], Saliency)  # doctest: +SKIP
        >>> res.mean()["spearman"]  # doctest: +SKIP
    """
    from captum_ext.training import Trainer, as_tensors

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    mets = check_metrics(metrics)
    check_batch_size(batch_size)
    if trainer is None:
        trainer = Trainer()
    elif not callable(trainer):
        raise TypeError("trainer must be callable as trainer(model, (inputs, labels), seed)")
    x_train, y_train = as_tensors(train_data)
    tup, _ = format_inputs(inputs)
    args = format_additional_args(additional_forward_args)

    reference = copy.deepcopy(model)
    check_eval_mode(reference)
    tgt = resolve_target(reference, tup, target, args, batch_size)

    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(y_train.shape[0], generator=gen).to(y_train.device)
    y_perm = y_train[perm]

    fresh = copy.deepcopy(model)
    if reinitialize:
        modules = dict(fresh.named_modules())
        for i, name in enumerate(parameter_layers(fresh)):
            randomize_layer(modules[name], _layer_seed(seed, i), init)
    trained = trainer(fresh, (x_train, y_perm), seed)
    if not isinstance(trained, nn.Module):
        raise TypeError(f"trainer must return the trained nn.Module, got {type(trained).__name__}")
    check_eval_mode(trained, "the model returned by the trainer")

    def attribute(m: nn.Module) -> AttrLike:
        return compute_attributions(
            explainer_for(explainer, m),
            inputs,
            tgt,
            additional_forward_args=additional_forward_args,
            attribute_kwargs=attribute_kwargs,
            batch_size=batch_size,
        )

    original = attribute(reference)
    mets = settle_metrics(mets, original, ssim_kwargs)
    randomized = attribute(trained)
    scores = compare_attributions(
        original, randomized, mets, absolute=absolute, topk_fraction=topk_fraction, ssim_kwargs=ssim_kwargs
    )
    return RandomizationResult(
        mode="data",
        stages=["permuted labels"],
        scores={m: s.unsqueeze(0) for m, s in scores.items()},
        attributions=[original, randomized] if return_attributions else None,
        model=trained,
    )
