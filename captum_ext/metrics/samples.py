"""Sample quality of a classifier's implicit density model (Srinivas & Fleuret, 2021, Sec. 5.1.2).

* :func:`class_conditional_samples` — activity maximisation: gradient ascent on the class logit
  ``f_y(x) = log p(x | y)`` (up to a constant) from random noise, optionally with a small weight
  decay that pulls the sample towards the mid-grey value 0.5;
* :func:`gan_test` — the GAN-test score (Shmelkov et al., 2018): the accuracy of an independently
  trained classifier on those samples, with the class they were generated for as the label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from captum.log import log_usage
from torch import Tensor, nn

from captum_ext._autograd import input_gradient
from captum_ext.metrics._common import (
    NOT_IN_DICT,
    MetricResult,
    TargetLike,
    check_batch_size,
    check_data,
    check_eval_mode,
    check_labels,
    forward_batched,
)
from captum_ext.metrics._validate import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, validate

__all__ = ["ClassSamples", "GANTestResult", "class_conditional_samples", "gan_test"]


@dataclass(frozen=True, eq=False, repr=False)
class ClassSamples(MetricResult):
    """Class-conditional samples from :func:`class_conditional_samples`.

    Attributes:
        samples: ``(N, *input_shape)`` generated inputs.
        labels: ``(N,)`` class each sample was generated for.
        initial_logits: ``(N,)`` target logit at the starting noise.
        final_logits: ``(N,)`` target logit at the returned sample.

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> s = class_conditional_samples(net, (1, 4, 4), target=[0, 1, 2], steps=5)
        >>> s.samples.shape, s.labels
        (torch.Size([3, 1, 4, 4]), tensor([0, 1, 2]))
        >>> bool((s.final_logits > s.initial_logits).all())
        True
        >>> sorted(s.to_dict())  # the samples themselves stay out of the JSON summary
        ['final_logits', 'initial_logits', 'labels']
    """

    samples: Tensor = field(metadata=NOT_IN_DICT)
    labels: Tensor
    initial_logits: Tensor = field(repr=False)
    final_logits: Tensor = field(repr=False)

    def plot(self, ax: Any = None, ncols: int | None = None, cmap: str = "gray") -> Any:
        """Show the samples tiled in one grid image (1- or 3-channel images, or 2-d maps), each
        min-max normalised, labelled with its class in reading order; returns the Axes."""
        x = self.samples.detach().cpu().to(torch.float64)
        if x.dim() == 4 and x.shape[1] in (1, 3):
            imgs = x.permute(0, 2, 3, 1)
        elif x.dim() == 3:
            imgs = x.unsqueeze(-1)
        else:
            raise ValueError(f"cannot show samples shaped {tuple(x.shape)} as images")
        n, h, w, c = imgs.shape
        ncols = ncols or min(n, 10)
        nrows = (n + ncols - 1) // ncols
        lo = imgs.reshape(n, -1).amin(dim=1).view(n, 1, 1, 1)
        hi = imgs.reshape(n, -1).amax(dim=1).view(n, 1, 1, 1)
        imgs = torch.where(hi > lo, (imgs - lo) / (hi - lo).clamp_min(1e-300), torch.zeros_like(imgs))
        grid = torch.ones(nrows * (h + 1), ncols * (w + 1), c)
        for i in range(n):
            r, q = divmod(i, ncols)
            grid[r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = imgs[i].float()
        ax = self._axes(ax, (1.2 * ncols, 1.3 * nrows))
        ax.imshow((grid[..., 0] if c == 1 else grid).numpy(), cmap=cmap)
        ax.axis("off")
        ax.set_title("classes: " + " ".join(str(int(v)) for v in self.labels[:ncols]), fontsize=8)
        return ax


@dataclass(frozen=True, eq=False, repr=False)
class GANTestResult(MetricResult):
    """Outcome of :func:`gan_test`.

    Attributes:
        accuracy: share of samples the independent classifier assigns to their intended class.
        per_class: ``(classes,)`` accuracy per intended class (NaN for classes without samples).
        correct: ``(N,)`` per-sample hits.

    Examples:
        A judge that reads the class off the largest feature scores two samples, one recognised:

        >>> judge = torch.nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = judge.weight.copy_(torch.eye(2))
        >>> res = gan_test(judge, torch.tensor([[1.0, 0.0], [1.0, 0.0]]), target=[0, 1])
        >>> res.accuracy, res.per_class, res.correct
        (0.5, tensor([1., 0.], dtype=torch.float64), tensor([1., 0.], dtype=torch.float64))
        >>> res.to_dict()
        {'accuracy': 0.5, 'per_class': [1.0, 0.0]}
    """

    accuracy: float
    per_class: Tensor
    correct: Tensor = field(repr=False, metadata=NOT_IN_DICT)

    def plot(self, ax: Any = None) -> Any:
        """Bar chart of the per-class accuracy; returns the Axes."""
        ax = self._axes(ax, (4, 3))
        ax.bar(range(len(self.per_class)), self.per_class.cpu().numpy())
        ax.axhline(self.accuracy, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("intended class")
        ax.set_ylabel("GAN-test accuracy")
        return ax


@log_usage()
def class_conditional_samples(
    forward_func: nn.Module,
    input_shape: Sequence[int],
    *,
    target: TargetLike,
    steps: int = 100,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    center: float = 0.5,
    init: str | Tensor = "uniform",
    clip: tuple[float, float] | None = (0.0, 1.0),
    normalize_grad: bool = False,
    seed: int = 0,
    max_examples_per_batch: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    show_progress: bool = False,
) -> ClassSamples:
    """Class-conditional samples by gradient ascent on the class logit from noise.

    Each sample starts from seeded noise and takes ``steps`` steps

        x <- clip(x + lr * (grad_x f_y(x) - weight_decay * (x - center)))

    i.e. gradient ascent on ``f_y(x) - weight_decay / 2 * ||x - center||^2``: plain activity
    maximisation with ``weight_decay = 0`` (Srinivas & Fleuret, Sec. 5.1.2), and with a small
    ``weight_decay`` the paper's pull towards mid-grey 0.5. Gradients are taken
    with respect to the inputs only; the model is not changed.

    Args:
        forward_func: the classifier, an ``nn.Module`` (eval mode if it has BatchNorm / Dropout;
            never modified).
        input_shape: shape of one input without the batch dimension, e.g. ``(1, 28, 28)``.
        target: the class of each sample: an int (one sample), a list of ints or a 1-d tensor.
        steps: ascent steps.
        lr: step size.
        weight_decay: strength of the pull towards ``center``.
        center: the value the weight decay pulls towards.
        init: ``"uniform"`` noise in ``clip`` (or ``[0, 1]`` without clip), ``"normal"``
            (``center`` + 0.1 N(0, 1)), or a tensor ``(N, *input_shape)`` of starting points.
        clip: ``(low, high)`` box kept after every step (``None``: unconstrained).
        normalize_grad: scale each example's logit gradient to unit L2 norm before the step.
        seed: seed of the starting noise.
        max_examples_per_batch: samples optimised together (``None``: all at once).
        device: where to compute (default: the model's parameters' device).
        dtype: dtype of the samples (default: the model's parameters' dtype).
        show_progress: tqdm progress bar over steps.

    Returns:
        :class:`ClassSamples` (``.samples``, ``.labels``, initial and final target logits).

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> s = class_conditional_samples(net, (1, 4, 4), target=[0, 1, 2], steps=5)
        >>> s.samples.shape, bool((s.final_logits >= s.initial_logits).all())
        (torch.Size([3, 1, 4, 4]), True)
    """
    model, targets, batch_size = forward_func, target, max_examples_per_batch
    if not isinstance(model, nn.Module):
        raise TypeError(f"forward_func must be an nn.Module, got {type(model).__name__}")
    check_eval_mode(model)
    check_batch_size(batch_size)
    shape = tuple(int(s) for s in input_shape)
    if any(s < 1 for s in shape):
        raise ValueError(f"input_shape must hold positive sizes, got {tuple(input_shape)}")
    validate(steps=(steps, NON_NEGATIVE_INT), lr=(lr, POSITIVE), weight_decay=(weight_decay, NON_NEGATIVE))
    if clip is not None and not clip[0] < clip[1]:
        raise ValueError(f"clip must be (low, high) with low < high, got {clip}")
    param = next(iter(model.parameters()), None)
    dev = (
        torch.device(device)
        if device is not None
        else (param.device if param is not None else torch.device("cpu"))
    )
    dt = dtype or (
        param.dtype if param is not None and param.is_floating_point() else torch.get_default_dtype()
    )

    if isinstance(targets, int) and not isinstance(targets, bool):
        n = 1
    elif isinstance(targets, Tensor):
        n = targets.numel()
    elif isinstance(targets, Sequence) and not isinstance(targets, str):
        n = len(targets)
    else:
        raise TypeError("target must be an int, a list of ints or a 1-d tensor of classes")
    if n == 0:
        raise ValueError("target is empty: give at least one class")
    if not shape:
        raise ValueError("input_shape is one example's shape without the batch dimension, e.g. (1, 28, 28)")
    try:
        with torch.no_grad():
            probe = model(torch.zeros((1,) + shape, device=dev, dtype=dt))
    except RuntimeError as err:
        raise ValueError(
            f"forward_func cannot take inputs of shape (N, *{shape}) ({str(err).splitlines()[0]}); "
            "input_shape is ONE example's shape without the batch dimension, as the model expects it "
            "(e.g. (1, 28, 28) for a convolutional MNIST model, (784,) for a flat one)"
        ) from err
    if not isinstance(probe, Tensor) or probe.dim() != 2:
        raise ValueError(f"the model must return (batch, classes) scores for inputs of shape (N, *{shape})")
    labels = check_labels(targets, n, probe.shape[1]).to(dev)

    if isinstance(init, Tensor):
        if init.shape != (n,) + shape:
            raise ValueError(f"init tensor must have shape {(n,) + shape}, got {tuple(init.shape)}")
        x_all = init.detach().to(device=dev, dtype=dt).clone()
    elif init in ("uniform", "normal"):
        gen = torch.Generator().manual_seed(int(seed))
        if init == "uniform":
            lo, hi = clip if clip is not None else (0.0, 1.0)
            x_all = lo + (hi - lo) * torch.rand((n,) + shape, generator=gen, dtype=dt)
        else:
            x_all = center + 0.1 * torch.randn((n,) + shape, generator=gen, dtype=dt)
        x_all = x_all.to(dev)
    else:
        raise ValueError(f"init must be 'uniform', 'normal' or a tensor, got {init!r}")
    if clip is not None:
        x_all = x_all.clamp(clip[0], clip[1])

    bs = n if batch_size is None else batch_size
    from tqdm.auto import tqdm

    n_chunks = (n + bs - 1) // bs
    bar = tqdm(total=n_chunks * steps, desc="class samples", disable=not show_progress, leave=False)
    outs, start_logits, end_logits = [], [], []
    try:
        for start in range(0, n, bs):
            x = x_all[start : start + bs]
            y = labels[start : start + bs].view(-1, 1)
            view = (x.shape[0],) + (1,) * len(shape)
            with torch.no_grad():
                start_logits.append(model(x).gather(1, y)[:, 0])
            for _ in range(steps):
                with torch.enable_grad():
                    xr = x.detach().requires_grad_(True)
                    (g,) = input_gradient(model(xr).gather(1, y).sum(), (xr,))
                with torch.no_grad():
                    if normalize_grad:
                        gn = g.reshape(g.shape[0], -1).norm(dim=1).view(view)
                        g = g / gn.clamp_min(torch.finfo(g.dtype).tiny)
                    x = x + lr * (g - weight_decay * (x - center))
                    if clip is not None:
                        x = x.clamp(clip[0], clip[1])
                bar.update(1)
            x = x.detach()
            with torch.no_grad():
                end_logits.append(model(x).gather(1, y)[:, 0])
            outs.append(x)
    finally:
        bar.close()
    return ClassSamples(
        samples=torch.cat(outs),
        labels=labels,
        initial_logits=torch.cat(start_logits),
        final_logits=torch.cat(end_logits),
    )


@log_usage()
def gan_test(
    forward_func: nn.Module,
    inputs: Tensor | ClassSamples,
    *,
    target: TargetLike = None,
    max_examples_per_batch: int | None = None,
) -> GANTestResult:
    """GAN-test score: accuracy of an independently trained classifier on generated samples.

    Shmelkov et al. (2018) measure sample *quality* (not diversity) by how often a separate
    classifier, trained on real data, recognises the class a sample was generated for. Srinivas &
    Fleuret (Table 1) use it on the samples of :func:`class_conditional_samples`.

    Args:
        forward_func: a classifier trained independently of the model that generated the samples
            (eval mode if it has BatchNorm / Dropout; never modified).
        inputs: ``(N, ...)`` generated samples, or a :class:`ClassSamples` (its labels are the
            default target).
        target: the intended class of each sample (required for a plain tensor).
        max_examples_per_batch: evaluation batch size (``None``: all at once).

    Returns:
        :class:`GANTestResult` with ``.accuracy``, ``.per_class`` and the per-sample ``.correct``.

    Examples:
        >>> judge = torch.nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = judge.weight.copy_(torch.eye(2))
        >>> gan_test(judge, torch.tensor([[1.0, 0.0], [1.0, 0.0]]), target=[0, 1]).accuracy
        0.5
    """
    if not isinstance(forward_func, nn.Module):
        raise TypeError(f"forward_func must be an nn.Module, got {type(forward_func).__name__}")
    check_eval_mode(forward_func)
    check_batch_size(max_examples_per_batch)
    samples, labels = inputs, target
    if isinstance(samples, ClassSamples):
        if labels is None:
            labels = samples.labels
        samples = samples.samples
    if not isinstance(samples, Tensor):
        raise TypeError(f"inputs must be an (N, ...) tensor or a ClassSamples, got {type(samples).__name__}")
    n = check_data(samples, "inputs")
    if labels is None:
        raise ValueError("target is required: the class each sample was generated for")
    out = forward_batched(forward_func, (samples,), (), max_examples_per_batch)
    num_classes = out.shape[1]
    pred = out.argmax(dim=1).cpu()
    y = check_labels(labels, n, num_classes)
    correct = (pred == y).to(torch.float64)
    sums = torch.zeros(num_classes, dtype=torch.float64)
    counts = torch.zeros(num_classes, dtype=torch.float64)
    sums.scatter_add_(0, y, correct)
    counts.scatter_add_(0, y, torch.ones_like(correct))
    return GANTestResult(accuracy=float(correct.mean()), per_class=sums / counts, correct=correct)
