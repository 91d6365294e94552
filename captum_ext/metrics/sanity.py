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
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from captum.log import log_usage
from torch import Tensor, nn

from captum_ext._format import (
    TensorOrTuple,
    format_additional_args,
    format_inputs,
)
from captum_ext.metrics._common import (
    NOT_IN_DICT,
    MetricResult,
    TargetLike,
    check_batch_size,
    check_data,
    check_eval_mode,
    compute_attributions,
    explainer_for,
    resolve_target,
)
from captum_ext.metrics._validate import OneOf, validate
from captum_ext.metrics.similarity import (
    AttrLike,
    check_metrics,
    compare_attributions,
    settle_metrics,
)

__all__ = ["RandomizationResult", "data_randomization", "model_randomization"]

ExplainerLike = type | Callable[[nn.Module], Callable[..., AttrLike]]
InitLike = str | Callable[[nn.Module], None]


# ----------------------------------------------------------------------------------------------
# Result


@dataclass(frozen=True, eq=False, repr=False)
class RandomizationResult(MetricResult):
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
        >>> res = RandomizationResult("data", ("permuted labels",), {"topk": torch.tensor([[0.5, 1.0]])})
        >>> res.mean()["topk"], res.to_dict()["scores"]
        (tensor([0.7500]), {'topk': [[0.5, 1.0]]})
    """

    mode: str
    stages: tuple[str, ...]
    scores: dict[str, Tensor]
    attributions: tuple[AttrLike, ...] | None = field(default=None, repr=False, metadata=NOT_IN_DICT)
    model: nn.Module | None = field(default=None, repr=False, metadata=NOT_IN_DICT)

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
        ax = self._axes(ax, (max(4.0, 0.6 * len(self.stages) + 2.0), 3.5))
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


@log_usage()
def model_randomization(
    forward_func: nn.Module,
    inputs: TensorOrTuple,
    explainer: ExplainerLike,
    *,
    target: TargetLike = None,
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
    max_examples_per_batch: int | None = None,
    return_attributions: bool = False,
    show_progress: bool = False,
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
        forward_func: the trained model, an ``nn.Module`` (never modified; randomisation works on
            deep copies; BatchNorm/Dropout in training mode is refused).
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
        max_examples_per_batch: examples per attribution call (``None``: all at once).
        return_attributions: keep the original and every stage's attributions in the result.
        show_progress: tqdm progress bar over stages.

    Returns:
        :class:`RandomizationResult` with ``scores[metric]`` of shape ``(stages, N)``.

    Examples:
        >>> from captum.attr import Saliency
        >>> net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
        >>> res = model_randomization(net, torch.rand(6, 5), Saliency, target=0)
        >>> res.stages, res.scores["spearman"].shape
        (('2', '0'), torch.Size([2, 6]))
    """
    model = forward_func
    if not isinstance(model, nn.Module):
        raise TypeError(f"forward_func must be an nn.Module, got {type(model).__name__}")
    check_eval_mode(model)
    validate(mode=(mode, OneOf(("cascading", "independent"))))
    mets = check_metrics(metrics)
    check_batch_size(max_examples_per_batch)
    batch_size = max_examples_per_batch
    tup, _ = format_inputs(inputs)
    check_data(tup)
    args = format_additional_args(additional_forward_args)
    names = _resolve_layers(model, layers)
    index = {name: i for i, name in enumerate(names)}
    order = list(reversed(names))  # output -> input

    work = copy.deepcopy(model)
    tgt = resolve_target(work, tup, target, args, batch_size)

    def attribute(m: nn.Module) -> AttrLike:
        return compute_attributions(
            explainer_for(explainer, m),
            inputs,
            tgt,
            additional_forward_args=additional_forward_args,
            attribute_kwargs=attribute_kwargs,
            max_examples_per_batch=batch_size,
        )

    original = attribute(work)
    mets = settle_metrics(mets, original, ssim_kwargs)
    kept: list[AttrLike] = [original]
    per_stage: list[dict[str, Tensor]] = []

    from tqdm.auto import tqdm

    for name in tqdm(order, desc=f"{mode} randomisation", disable=not show_progress, leave=False):
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
        mode=mode,
        stages=tuple(order),
        scores=scores,
        attributions=tuple(kept) if return_attributions else None,
    )


@log_usage()
def data_randomization(
    forward_func: nn.Module,
    inputs: TensorOrTuple,
    explainer: ExplainerLike,
    *,
    train_data: Any,
    target: TargetLike = None,
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
    max_examples_per_batch: int | None = None,
    return_attributions: bool = False,
    show_progress: bool = False,
) -> RandomizationResult:
    """Data randomisation test: retrain on permuted labels and compare attributions.

    A deep copy of ``model`` is re-initialised (every layer with parameters, seeded) and trained
    by ``trainer(copy, (train_inputs, permuted_labels), seed)`` — the same pluggable trainer
    signature as DiffROAR. Attributions of the original model and of the random-label model are
    then compared on ``inputs`` for the same target classes. Explanations that survive the label
    permutation do not depend on the relation between inputs and labels.

    Args:
        forward_func: the model trained on the true labels, an ``nn.Module`` (never modified).
        inputs: the examples to explain, batch first.
        explainer: a Captum Attribution class or a factory ``model -> attribute_fn``.
        train_data: ``(inputs, labels)`` tensors or a Dataset (see
            :func:`captum_ext.training.as_tensors`).
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
        max_examples_per_batch: examples per attribution call (``None``: all at once).
        return_attributions: keep both attribution batches in the result.
        show_progress: a progress bar over the training epochs of the default trainer (a given
            ``trainer`` shows its own, e.g. ``Trainer(progress=True)``).

    Returns:
        :class:`RandomizationResult` with one stage (``scores[metric]`` shaped ``(1, N)``) and the
        random-label model in ``.model``.

    Examples:
        >>> from captum.attr import Saliency
        >>> from captum_ext.training import Trainer
        >>> net = torch.nn.Linear(5, 3)
        >>> x, y = torch.rand(12, 5), torch.randint(0, 3, (12,))
        >>> res = data_randomization(net, x[:4], Saliency, train_data=(x, y), trainer=Trainer(epochs=1))
        >>> res.scores["spearman"].shape
        torch.Size([1, 4])
    """
    from captum_ext.training import Trainer, as_tensors

    model = forward_func
    if not isinstance(model, nn.Module):
        raise TypeError(f"forward_func must be an nn.Module, got {type(model).__name__}")
    check_eval_mode(model)
    mets = check_metrics(metrics)
    check_batch_size(max_examples_per_batch)
    batch_size = max_examples_per_batch
    if trainer is None:
        trainer = Trainer(progress=bool(show_progress))
    elif not callable(trainer):
        raise TypeError("trainer must be callable as trainer(model, (inputs, labels), seed)")
    x_train, y_train = as_tensors(train_data)
    check_data(x_train, "train_data inputs")
    tup, _ = format_inputs(inputs)
    check_data(tup)
    args = format_additional_args(additional_forward_args)

    reference = copy.deepcopy(model)
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
            max_examples_per_batch=batch_size,
        )

    original = attribute(reference)
    mets = settle_metrics(mets, original, ssim_kwargs)
    randomized = attribute(trained)
    scores = compare_attributions(
        original, randomized, mets, absolute=absolute, topk_fraction=topk_fraction, ssim_kwargs=ssim_kwargs
    )
    return RandomizationResult(
        mode="data",
        stages=("permuted labels",),
        scores={m: s.unsqueeze(0) for m, s in scores.items()},
        attributions=(original, randomized) if return_attributions else None,
        model=trained,
    )
