"""The small training loop shared by metrics (DiffROAR, data randomisation), tutorials, benchmarks.

* :func:`fit` trains a model in place with Adam (the regularizer-wrapper protocol is honoured:
  a model with a callable ``loss(x, y)`` method is trained on that loss);
* :func:`evaluate` returns the accuracy of a model without changing it;
* :func:`as_tensors` turns a ``Dataset`` or an ``(inputs, labels)`` pair into two tensors;
* :class:`Trainer` is the pluggable trainer signature ``trainer(model, (inputs, labels), seed)``;
* :class:`MLPFactory` builds fresh small MLPs (a picklable model factory for DiffROAR and friends).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, TensorDataset

DataLike = Dataset | tuple[Tensor, Tensor] | list
LossFn = Callable[[Tensor, Tensor], Tensor]

__all__ = ["MLPFactory", "Trainer", "as_tensors", "evaluate", "fit"]


def as_tensors(data: Any) -> tuple[Tensor, Tensor]:
    """Return ``(inputs, labels)`` tensors for a tensor pair or a ``Dataset``.

    Accepted forms:

    * an ``(inputs, labels)`` tuple or list of two tensors (returned as they are);
    * a dataset with a ``tensors()`` method (the ``captum_ext.datasets`` convention; its first two
      outputs are used, so ``(images, labels, signal_masks)`` works);
    * a ``torch.utils.data.TensorDataset`` (its first two tensors);
    * any map-style ``Dataset`` whose items are ``(input, label, ...)`` (items are stacked).

    Args:
        data: the data in one of the forms above.

    Returns:
        ``(inputs, labels)`` with the same first dimension; labels are a tensor (class indices for
        classification).

    Raises:
        ValueError: for empty data or inputs and labels of different lengths.
        TypeError: for anything else.

    Examples:
        >>> x, y = as_tensors((torch.zeros(4, 3), torch.tensor([0, 1, 0, 1])))
        >>> x.shape, y.shape
        (torch.Size([4, 3]), torch.Size([4]))
    """
    if isinstance(data, (tuple, list)):
        if len(data) != 2 or not all(isinstance(t, Tensor) for t in data):
            raise TypeError(
                "data given as a tuple must be (inputs, labels), two tensors; got "
                f"{len(data)} item(s) of types {[type(t).__name__ for t in data]}"
            )
        x, y = data
    elif callable(getattr(data, "tensors", None)):
        out = data.tensors()
        x, y = out[0], out[1]
    elif isinstance(data, TensorDataset):
        if len(data.tensors) < 2:
            raise ValueError("a TensorDataset used for training needs (inputs, labels) tensors")
        x, y = data.tensors[0], data.tensors[1]
    elif isinstance(data, Dataset):
        n = len(data)  # type: ignore[arg-type]
        if n == 0:
            raise ValueError("data is empty: the dataset has no examples")
        items = [data[i] for i in range(n)]
        if not all(isinstance(it, (tuple, list)) and len(it) >= 2 for it in items):
            raise TypeError("dataset items must be (input, label, ...) tuples")
        x = torch.stack([torch.as_tensor(it[0]) for it in items])
        y = torch.stack([torch.as_tensor(it[1]) for it in items])
    else:
        raise TypeError(
            f"data must be an (inputs, labels) tensor pair or a torch Dataset, got {type(data).__name__}"
        )
    if x.dim() == 0 or y.dim() == 0:
        raise ValueError("inputs and labels need a batch dimension")
    if x.shape[0] == 0:
        raise ValueError("data is empty: inputs have 0 examples")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"inputs and labels differ in length: {x.shape[0]} inputs, {y.shape[0]} labels")
    return x, y


def _model_device(model: nn.Module) -> torch.device | None:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return None


def _resolve_device(model: nn.Module, x: Tensor, device: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    dev = _model_device(model)
    return dev if dev is not None else x.device


def _rng_devices(device: torch.device) -> list[int]:
    if device.type == "cuda":
        return [device.index if device.index is not None else torch.cuda.current_device()]
    return []


class _Permutation(Sampler[int]):
    """One ``torch.randperm(n, generator)`` per epoch (``RandomSampler`` draws a second, empty one)."""

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n, self.generator = n, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.n, generator=self.generator).tolist())


def _batches(x: Tensor, y: Tensor, batch_size: int, seed: int) -> DataLoader:
    """Shuffled mini-batches: a ``DataLoader`` whose sampler yields index lists (one gather per batch).

    The order is ``torch.randperm(n, generator)`` per epoch with a generator seeded by ``seed``,
    cut into consecutive batches (the last one may be smaller).
    """
    sampler = BatchSampler(
        _Permutation(x.shape[0], torch.Generator().manual_seed(seed)), batch_size=batch_size, drop_last=False
    )
    # batch_size=None: the sampler's index lists go straight to TensorDataset.__getitem__
    return DataLoader(TensorDataset(x, y), sampler=sampler, batch_size=None)


def fit(
    model: nn.Module,
    data: Any,
    *,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    loss_fn: LossFn | None = None,
) -> nn.Module:
    """Train ``model`` in place with Adam and return it in eval mode.

    The optimiser is ``torch.optim.Adam`` (betas 0.9 and 0.999, eps 1e-8, L2 weight decay added to
    the gradient, ``foreach=False`` so that the update does not depend on the multi-tensor kernels);
    mini-batches come from a ``torch.utils.data.DataLoader`` over a ``TensorDataset`` with a
    seeded sampler (one ``randperm`` per epoch), batched by index lists so that each
    batch is one tensor gather. The first ``torch.optim`` optimiser of a process imports
    ``torch._dynamo`` (seconds, once per process); DiffROAR's worker pools preload it.

    The shuffling order and any randomness inside the model (dropout) are drawn from generators
    seeded with ``seed``; the caller's global RNG state is restored afterwards, so the same
    model, data and seed give the same weights.

    Args:
        model: the module to train (changed in place: that is what training means).
        data: an ``(inputs, labels)`` tensor pair or a ``Dataset`` (see :func:`as_tensors`).
        epochs: passes over the data.
        lr: Adam learning rate.
        batch_size: mini-batch size.
        weight_decay: Adam's (L2) weight decay.
        seed: seed for shuffling and in-model randomness.
        device: where to train; ``None`` keeps the model where it is (the data follows it). When
            given, the model is moved there.
        progress: show a tqdm progress bar over mini-batches.
        loss_fn: ``loss_fn(outputs, labels) -> scalar``. When ``None`` and the model has a callable
            ``loss(x, y)`` method (the regularizer-wrapper protocol) that is used; otherwise the
            cross-entropy of ``model(x)``.

    Returns:
        The same ``model`` object, trained and in eval mode.

    Examples:
        >>> net = MLPFactory((4,), hidden=(8,), num_classes=2)()
        >>> x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
        >>> net = fit(net, (x, y), epochs=1, progress=False)
        >>> net.training
        False
    """
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"need epochs >= 0 and batch_size >= 1, got {epochs} and {batch_size}")
    x, y = as_tensors(data)
    dev = _resolve_device(model, x, device)
    model.to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    own_loss = getattr(model, "loss", None)
    use_model_loss = loss_fn is None and callable(own_loss)

    loader = _batches(x, y, batch_size, seed)
    from tqdm.auto import tqdm

    bar = tqdm(total=epochs * len(loader), desc="fit", disable=not progress, leave=False)
    with torch.random.fork_rng(devices=_rng_devices(dev)):
        torch.manual_seed(seed)
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=False)
        model.train()
        try:
            with torch.enable_grad():
                for _ in range(epochs):
                    for xb, yb in loader:
                        xb, yb = xb.to(dev), yb.to(dev)
                        opt.zero_grad(set_to_none=True)
                        if use_model_loss:
                            loss = own_loss(xb, yb)  # type: ignore[misc]
                        elif loss_fn is not None:
                            loss = loss_fn(model(xb), yb)
                        else:
                            loss = F.cross_entropy(model(xb), yb)
                        loss.backward()
                        opt.step()
                        bar.update(1)
                        if progress:
                            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", refresh=False)
        finally:
            bar.close()
            opt.zero_grad(set_to_none=True)
            model.eval()
    return model


def evaluate(
    model: nn.Module | Callable[[Tensor], Tensor],
    data: Any,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> float:
    """Accuracy of ``model`` on ``data``, computed in eval mode; the model is left as it was.

    Training flags are switched to eval for the computation and restored afterwards; no gradients
    are taken and no parameter or buffer changes.

    Args:
        model: a classifier returning ``(batch, classes)`` scores (a module or any callable).
        data: an ``(inputs, labels)`` tensor pair or a ``Dataset`` (see :func:`as_tensors`).
        batch_size: evaluation batch size.
        device: where to compute; ``None`` uses the model's device (or the data's for callables).

    Returns:
        The fraction of examples whose arg-max score equals the label, a float in ``[0, 1]``.

    Examples:
        >>> net = MLPFactory((4,), hidden=(8,), num_classes=2)()
        >>> 0.0 <= evaluate(net, (torch.randn(10, 4), torch.zeros(10, dtype=torch.long))) <= 1.0
        True
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x, y = as_tensors(data)
    if isinstance(model, nn.Module):
        dev = torch.device(device) if device is not None else (_model_device(model) or x.device)
        flags = [(m, m.training) for m in model.modules()]
        model.eval()
    else:
        dev = torch.device(device) if device is not None else x.device
        flags = []
    correct = 0
    try:
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                xb = x[start : start + batch_size].to(dev)
                yb = y[start : start + batch_size].to(dev)
                out = model(xb)
                if not isinstance(out, Tensor) or out.dim() != 2:
                    raise ValueError("the model must return (batch, classes) scores")
                correct += int((out.argmax(dim=1) == yb).sum())
    finally:
        for m, was_training in flags:
            m.training = was_training
    return correct / x.shape[0]


@dataclass
class Trainer:
    """The default pluggable trainer: ``trainer(model, (inputs, labels), seed) -> model``.

    Everything that retrains (DiffROAR, data randomisation) calls a trainer with this signature,
    so any callable of the same shape can replace it (it must be picklable to run in worker
    processes). This one calls :func:`fit` with its fields.

    Args:
        epochs: passes over the data.
        lr: Adam learning rate.
        batch_size: mini-batch size.
        weight_decay: Adam weight decay.
        progress: a progress bar per training run (off by default: callers that run many
            trainings show one bar over the runs instead).
        device: where to train (``None``: where the model is).
        loss_fn: optional ``loss_fn(outputs, labels)``; see :func:`fit`.

    Examples:
        >>> trainer = Trainer(epochs=1)
        >>> data = (torch.randn(8, 4), torch.ones(8).long())
        >>> net = trainer(MLPFactory((4,), hidden=(8,))(), data, 0)
    """

    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    progress: bool = False
    device: str | None = None
    loss_fn: LossFn | None = None

    def __call__(self, model: nn.Module, data: Any, seed: int = 0) -> nn.Module:
        return fit(
            model,
            data,
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            weight_decay=self.weight_decay,
            seed=seed,
            device=self.device,
            progress=self.progress,
            loss_fn=self.loss_fn,
        )


@dataclass(frozen=True)
class MLPFactory:
    """A picklable factory of fresh ReLU MLPs: ``MLPFactory(input_shape, hidden, num_classes)()``.

    Calling the factory returns a new ``nn.Sequential(Flatten, Linear, ReLU, ..., Linear)`` whose
    weights come from torch's global RNG (seed it for reproducible initialisations). Being a
    top-level dataclass, it can be sent to worker processes and Dask workers.

    Args:
        input_shape: shape of one input without the batch dimension, e.g. ``(1, 56, 28)``.
        hidden: widths of the hidden layers.
        num_classes: number of outputs.
        dtype: parameter dtype.

    Examples:
        >>> net = MLPFactory((1, 28, 28), hidden=(64,), num_classes=10)()
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    input_shape: Sequence[int]
    hidden: Sequence[int] = (128,)
    num_classes: int = 2
    dtype: torch.dtype = torch.float32

    def __call__(self) -> nn.Sequential:
        d = 1
        for s in self.input_shape:
            d *= int(s)
        layers: list[nn.Module] = [nn.Flatten()]
        for h in self.hidden:
            layers += [nn.Linear(d, int(h)), nn.ReLU()]
            d = int(h)
        layers.append(nn.Linear(d, self.num_classes))
        return nn.Sequential(*layers).to(self.dtype)
