"""Sources of 28x28 handwritten digits for the BlockMNIST family.

A *digit source* is any object with ``load(split) -> (images, labels)`` where ``split`` is
``"train"`` or ``"test"``, ``images`` is a float32 tensor ``(N, 28, 28)`` with values in ``[0, 1]``
and ``labels`` a long tensor ``(N,)`` of digits 0-9. Two are provided:

* :class:`SklearnDigits` -- offline: scikit-learn's bundled 1,797 real 8x8 handwritten digits,
  upsampled to a 20x20 box and centred in a 28x28 frame (MNIST's own geometry). Deterministic, no
  network; every test, tutorial and the demo use it.
* :class:`TorchvisionMNIST` -- torchvision's MNIST loader (``root``, ``download``) for users who
  have (or can download) the real data set.
"""

from __future__ import annotations

import functools
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["DigitSource", "SklearnDigits", "TorchvisionMNIST", "get_digit_source"]

_SPLITS = ("train", "test")


@runtime_checkable
class DigitSource(Protocol):
    """A digit source: ``load(split) -> (images (N, 28, 28) in [0, 1], labels (N,))``.

    Any object with such a ``load`` method can be passed as ``source`` to the BlockMNIST data sets.

    Examples:
        >>> class Blank:
        ...     def load(self, split):
        ...         return torch.zeros(10, 28, 28), torch.arange(10)
        >>> get_digit_source(Blank()).load("train")[0].shape
        torch.Size([10, 28, 28])
    """

    def load(self, split: str) -> tuple[Tensor, Tensor]:
        """Return the ``split`` (``"train"`` or ``"test"``) images and digit labels."""
        ...


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


@functools.lru_cache(maxsize=4)
def _sklearn_digits_28(box: int) -> tuple[Tensor, Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - exercised only without scikit-learn
        raise ImportError(
            "the offline digit source needs scikit-learn (pip install scikit-learn), or use "
            "source='mnist' with torchvision's MNIST"
        ) from err
    raw = load_digits()
    small = torch.as_tensor(raw.images, dtype=torch.float32) / 16.0  # (N, 8, 8) in [0, 1]
    big = F.interpolate(small[:, None], size=(box, box), mode="bilinear", align_corners=False)
    pad = (28 - box) // 2
    frame = torch.zeros(small.shape[0], 28, 28)
    frame[:, pad : pad + box, pad : pad + box] = big[:, 0].clamp(0.0, 1.0)
    return frame, torch.as_tensor(raw.target, dtype=torch.long)


class SklearnDigits:
    """Offline digit source: scikit-learn's real 8x8 digits upsampled to 28x28.

    Each 8x8 scan (values 0-16) is scaled to ``[0, 1]``, bilinearly upsampled to a ``box x box``
    square (20 by default, like MNIST's digit box) and centred in a 28x28 frame. The train/test
    split is fixed and stratified: within each digit class, in the data set's order, every
    ``round(1 / test_fraction)``-th image goes to the test split (20% by default).

    Args:
        test_fraction: share of each class held out for ``"test"``, in ``(0, 1)``.
        box: side of the upsampled digit inside the 28x28 frame (even, 8 to 28).

    Examples:
        >>> images, labels = SklearnDigits().load("train")
        >>> images.shape[1:], float(images.max()) <= 1.0
        (torch.Size([28, 28]), True)
    """

    def __init__(self, test_fraction: float = 0.2, box: int = 20) -> None:
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
        if box % 2 or not 8 <= box <= 28:
            raise ValueError(f"box must be an even size between 8 and 28, got {box}")
        self.test_fraction = float(test_fraction)
        self.box = int(box)

    def __repr__(self) -> str:
        return f"SklearnDigits(test_fraction={self.test_fraction}, box={self.box})"

    def load(self, split: str) -> tuple[Tensor, Tensor]:
        """Return ``(images (N, 28, 28) float32 in [0, 1], labels (N,) long)`` of ``split``."""
        _check_split(split)
        images, labels = _sklearn_digits_28(self.box)
        stride = max(2, round(1.0 / self.test_fraction))
        rank = torch.zeros_like(labels)
        for c in labels.unique():
            where = (labels == c).nonzero().flatten()
            rank[where] = torch.arange(where.numel())
        is_test = (rank % stride) == (stride - 1)
        keep = is_test if split == "test" else ~is_test
        return images[keep].clone(), labels[keep].clone()


class TorchvisionMNIST:
    """Digit source backed by ``torchvision.datasets.MNIST`` (needs the files or a download).

    Args:
        root: directory where torchvision keeps (or downloads) MNIST.
        download: let torchvision download the files when they are missing.

    Examples:
        Nothing is read or downloaded until :meth:`load`; with ``download=True`` torchvision fetches
        the files on first use, after which ``source.load("train")`` returns 60,000 images.

        >>> source = TorchvisionMNIST("mnist_data")
        >>> source
        TorchvisionMNIST(root='mnist_data', download=False)
        >>> get_digit_source("mnist", root="mnist_data", download=True)
        TorchvisionMNIST(root='mnist_data', download=True)
    """

    def __init__(self, root: str, download: bool = False) -> None:
        if not root:
            raise ValueError("TorchvisionMNIST needs a root directory")
        self.root = str(root)
        self.download = bool(download)

    def __repr__(self) -> str:
        return f"TorchvisionMNIST(root={self.root!r}, download={self.download})"

    def load(self, split: str) -> tuple[Tensor, Tensor]:
        """Return ``(images (N, 28, 28) float32 in [0, 1], labels (N,) long)`` of ``split``."""
        _check_split(split)
        try:
            from torchvision.datasets import MNIST
        except ImportError as err:  # pragma: no cover - torchvision is a core dependency
            raise ImportError("source='mnist' needs torchvision (pip install torchvision)") from err
        ds = MNIST(self.root, train=(split == "train"), download=self.download)
        images = ds.data.to(torch.float32) / 255.0
        return images, ds.targets.to(torch.long)


def get_digit_source(
    source: str | DigitSource = "digits", root: str | None = None, download: bool = False
) -> DigitSource:
    """Resolve ``source``: ``"digits"`` (offline, default), ``"mnist"`` (torchvision) or an object.

    Args:
        source: ``"digits"``/``"sklearn"`` for :class:`SklearnDigits`, ``"mnist"`` for
            :class:`TorchvisionMNIST` (needs ``root``), or any object with a ``load(split)`` method.
        root: MNIST directory for ``"mnist"``.
        download: allow torchvision to download MNIST.

    Returns:
        A digit source.

    Examples:
        >>> get_digit_source("digits")
        SklearnDigits(test_fraction=0.2, box=20)
    """
    if isinstance(source, str):
        key = source.lower()
        if key in ("digits", "sklearn"):
            return SklearnDigits()
        if key == "mnist":
            if root is None:
                raise ValueError("source='mnist' needs root=<directory for torchvision's MNIST>")
            return TorchvisionMNIST(root, download=download)
        raise ValueError(f"unknown digit source {source!r}; use 'digits', 'mnist' or an object")
    if not callable(getattr(source, "load", None)):
        raise TypeError("a digit source must have a load(split) -> (images, labels) method")
    return source
