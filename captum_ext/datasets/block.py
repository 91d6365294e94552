"""The BlockMNIST family of Shah et al. (NeurIPS 2021, Sec. 5 and 6) and the ``x = y e_j`` toy set.

* :class:`BlockMNIST` -- 56x28 images stacking a 28x28 *signal* block (a handwritten digit of one of
  two classes) and a 28x28 *null* block (a fixed square patch made of two horizontal, two vertical
  and two slanted lines, independent of the class), the signal placed on top or at the bottom at
  random; ``top=True`` gives BlockMNIST-Top (signal always on top).
* :class:`SimplifiedBlockMNIST` -- the distribution of eq. (2): ``d`` blocks of ``d_tilde``
  coordinates, noise ``eta * g_i`` (``g_i`` uniform in the unit ball) everywhere, plus the signal
  ``y * u_star`` in one block ``j`` drawn from the first ``d / 2`` (task-relevant) blocks.
* :class:`SignedBasisToy` -- the toy set ``x = y * e_j`` of Bötte & Pfeiffer, i.e.
  eq. (2) with ``d_tilde = 1``, ``eta = 0``, ``u_star = 1``.

Every data set is a ``torch.utils.data.Dataset`` whose items are ``(input, label, signal_mask)``
(or ``(input, label)`` with ``with_masks=False``), is deterministic given its seed, and has
``tensors() -> (inputs, labels, signal_masks)``. Labels are class indices (``0``/``1``; for the
vector sets ``label = (y + 1) / 2``, the signs ``y = +-1`` are kept in ``.signs``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .digits import DigitSource, get_digit_source

__all__ = ["BlockMNIST", "SignedBasisToy", "SimplifiedBlockMNIST", "null_patch"]

BLOCK = 28


def null_patch(size: int = BLOCK, margin: int = 4, width: float = 2.0) -> Tensor:
    """The fixed null-block patch: a square with its two diagonals (values 0 and 1).

    The square's two horizontal and two vertical sides and its two slanted diagonals are drawn as
    lines of about ``width`` pixels between the points ``margin + width / 2`` and
    ``size - margin - width / 2`` (a pixel is on when its centre lies within ``width / 2`` of a
    line). With the defaults the patch fills the same 20x20 box as the digits.

    Args:
        size: side of the block.
        margin: empty border around the square.
        width: line width in pixels.

    Returns:
        A float32 tensor ``(size, size)`` of zeros and ones.

    Examples:
        >>> p = null_patch()
        >>> p.shape, bool(p[14, 14]), bool(p[0, 0])
        (torch.Size([28, 28]), True, False)
    """
    if size < 4 or margin < 0 or 2 * margin + 2 * width >= size or width <= 0:
        raise ValueError(f"invalid patch geometry: size={size}, margin={margin}, width={width}")
    lo = margin + width / 2.0
    hi = size - margin - width / 2.0
    c = torch.arange(size, dtype=torch.float64) + 0.5
    r, s = torch.meshgrid(c, c, indexing="ij")  # row, column centres
    half = width / 2.0
    inside = (r >= lo - half) & (r <= hi + half) & (s >= lo - half) & (s <= hi + half)
    on = (
        ((r - lo).abs() <= half)
        | ((r - hi).abs() <= half)
        | ((s - lo).abs() <= half)
        | ((s - hi).abs() <= half)
        | ((r - s).abs() / 2**0.5 <= half)
        | ((r + s - size).abs() / 2**0.5 <= half)
    )
    return (on & inside).to(torch.float32)


def _split_offset(split: str) -> int:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return 0 if split == "train" else 1


class _TensorsDataset(Dataset):
    """Shared plumbing: items and ``tensors()`` from three stored tensors."""

    inputs: Tensor
    labels: Tensor
    signal_masks: Tensor
    with_masks: bool

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        if self.with_masks:
            return self.inputs[i], self.labels[i], self.signal_masks[i]
        return self.inputs[i], self.labels[i]

    def tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(inputs, labels, signal_masks)`` (the stored tensors, not copies)."""
        return self.inputs, self.labels, self.signal_masks


class BlockMNIST(_TensorsDataset):
    """BlockMNIST and BlockMNIST-Top (Shah et al., Sec. 5).

    Each image is ``(1, 56, 28)``: a 28x28 signal block holding a digit of class ``classes[0]`` or
    ``classes[1]`` and a 28x28 null block holding :func:`null_patch`. In BlockMNIST the signal block
    is the top or the bottom half with probability 1/2 each; in BlockMNIST-Top (``top=True``) it is
    always the top half. The label is the index of the digit's class in ``classes``.
    ``signal_masks`` is ``True`` exactly on the 28x28 signal block.

    The digits come from a pluggable source: ``"digits"`` (default, offline: scikit-learn's real
    handwritten digits upsampled to 28x28, see :class:`~captum_ext.datasets.SklearnDigits`),
    ``"mnist"`` (torchvision's MNIST in ``root``, optionally downloaded) or any
    :class:`~captum_ext.datasets.DigitSource`.

    Args:
        split: ``"train"`` or ``"test"`` split of the digit source.
        classes: the digit of class 0 and of class 1 (or more digits for a multi-class variant).
        top: BlockMNIST-Top (signal always on top).
        seed: seed of the placements (and of the resampling when ``n`` is given).
        source: the digit source, see above.
        n: number of images. ``None`` uses every digit of the chosen classes once; a smaller
            ``n`` takes a random subset; a larger one draws digits with replacement.
        root: MNIST directory for ``source="mnist"``.
        download: let torchvision download MNIST.
        with_masks: items are ``(image, label, mask)`` (default) or, with ``False``, ``(image,
            label)`` for a plain ``for x, y in loader`` training loop (``tensors()`` always
            returns the masks).

    Attributes:
        inputs: ``(N, 1, 56, 28)`` float32 images in ``[0, 1]``.
        labels: ``(N,)`` long class indices.
        signal_masks: ``(N, 1, 56, 28)`` bool ground-truth signal masks.
        signal_on_top: ``(N,)`` bool, where the signal block is.
        digits: ``(N,)`` the digit shown in each image.

    Examples:
        >>> ds = BlockMNIST("train", top=False, seed=0)
        >>> images, labels, masks = ds.tensors()
        >>> images.shape[1:], int(masks[0].sum())
        (torch.Size([1, 56, 28]), 784)
        >>> loader = torch.utils.data.DataLoader(BlockMNIST("test", n=8, with_masks=False), batch_size=4)
        >>> [(tuple(x.shape), tuple(y.shape)) for x, y in loader][0]
        ((4, 1, 56, 28), (4,))
    """

    def __init__(
        self,
        split: str = "train",
        *,
        classes: Sequence[int] = (0, 1),
        top: bool = False,
        seed: int = 0,
        source: str | DigitSource = "digits",
        n: int | None = None,
        root: str | None = None,
        download: bool = False,
        with_masks: bool = True,
    ) -> None:
        offset = _split_offset(split)
        classes = tuple(int(c) for c in classes)
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be at least two distinct digits, got {classes}")
        if n is not None and n < 1:
            raise ValueError(f"n must be a positive number of images, got {n}")
        self.split, self.classes, self.top, self.seed = split, classes, bool(top), int(seed)
        self.with_masks = with_masks
        self.source = get_digit_source(source, root=root, download=download)

        digits_img, digit_lab = self.source.load(split)
        wanted = torch.zeros_like(digit_lab, dtype=torch.bool)
        for c in classes:
            wanted |= digit_lab == c
        pool = wanted.nonzero().flatten()
        if pool.numel() == 0:
            raise ValueError(f"the digit source has no images of classes {classes} in {split!r}")

        gen = torch.Generator().manual_seed(2 * self.seed + offset)
        if n is None:
            chosen = pool
        elif n <= pool.numel():
            chosen = pool[torch.randperm(pool.numel(), generator=gen)[:n]].sort().values
        else:
            chosen = pool[torch.randint(pool.numel(), (n,), generator=gen)]
        count = chosen.numel()
        on_top = torch.ones(count, dtype=torch.bool) if self.top else torch.rand(count, generator=gen) < 0.5
        signal = digits_img[chosen].to(torch.float32)  # (N, 28, 28)
        patch = null_patch().expand(count, BLOCK, BLOCK)
        top_half = torch.where(on_top[:, None, None], signal, patch)
        bottom_half = torch.where(on_top[:, None, None], patch, signal)
        self.inputs = torch.cat([top_half, bottom_half], dim=1)[:, None].contiguous()
        mask_top = on_top[:, None, None].expand(count, BLOCK, BLOCK)
        self.signal_masks = torch.cat([mask_top, ~mask_top], dim=1)[:, None].contiguous()
        self.digits = digit_lab[chosen].clone()
        lookup = {c: i for i, c in enumerate(classes)}
        self.labels = torch.tensor([lookup[int(d)] for d in self.digits], dtype=torch.long)
        self.signal_on_top = on_top

    def __repr__(self) -> str:
        name = "BlockMNIST-Top" if self.top else "BlockMNIST"
        return f"{name}(split={self.split!r}, n={len(self)}, classes={self.classes}, seed={self.seed})"


def _unit_ball(n: int, blocks: int, dim: int, gen: torch.Generator) -> Tensor:
    """``(n, blocks, dim)`` points drawn uniformly from the ``dim``-dimensional unit ball."""
    g = torch.randn(n, blocks, dim, generator=gen, dtype=torch.float64)
    g = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    radius = torch.rand(n, blocks, 1, generator=gen, dtype=torch.float64) ** (1.0 / dim)
    return g * radius


class SimplifiedBlockMNIST(_TensorsDataset):
    """The simplified BlockMNIST distribution of eq. (2) in Shah et al.

    ``y = +-1`` with probability 1/2 each, and
    ``x = [eta g_1, ..., y u_star + eta g_j, ..., eta g_d]`` with ``j`` uniform in the first
    ``d / 2`` blocks (task-relevant) and each ``g_i`` uniform in the unit ball of
    ``R^{d_tilde}``; blocks ``d/2 + 1 .. d`` are pure noise. Inputs are flat vectors of
    ``d * d_tilde`` coordinates (block ``i`` is ``x[:, i*d_tilde:(i+1)*d_tilde]``).

    Args:
        n: number of examples.
        d: number of blocks (even).
        d_tilde: coordinates per block.
        eta: noise scale (the paper's theory takes ``eta < 1 / (10 d)``).
        u_star: signal direction, a vector of unit norm with ``d_tilde`` entries; default
            ``(1, 0, ..., 0)``.
        seed: seed of the draw.
        dtype: dtype of the inputs.
        with_masks: items are ``(x, label, mask)`` (default) or ``(x, label)``.

    Attributes:
        inputs: ``(n, d * d_tilde)``.
        labels: ``(n,)`` class indices ``(y + 1) / 2``.
        signs: ``(n,)`` the labels ``y`` in ``{-1, +1}``.
        signal_block: ``(n,)`` the block ``j`` (0-based) carrying the signal.
        signal_masks: ``(n, d * d_tilde)`` bool, ``True`` on block ``j``.

    Examples:
        >>> ds = SimplifiedBlockMNIST(100, d=10, d_tilde=2, eta=0.01, seed=0)
        >>> ds.inputs.shape, bool((ds.signal_block < 5).all())
        (torch.Size([100, 20]), True)
    """

    def __init__(
        self,
        n: int = 1000,
        *,
        d: int = 10,
        d_tilde: int = 1,
        eta: float = 0.0,
        u_star: Sequence[float] | Tensor | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        with_masks: bool = True,
        _signal_blocks: int | None = None,
    ) -> None:
        if n < 1:
            raise ValueError(f"n must be a positive number of examples, got {n}")
        if d_tilde < 1:
            raise ValueError(f"d_tilde must be >= 1, got {d_tilde}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if _signal_blocks is None:
            if d < 2 or d % 2:
                raise ValueError(f"d must be an even number of blocks >= 2, got {d}")
            n_signal = d // 2
        else:
            if d < 1 or not 1 <= _signal_blocks <= d:
                raise ValueError(f"need 1 <= signal_dims <= d, got {_signal_blocks} and d={d}")
            n_signal = _signal_blocks
        if u_star is None:
            u = torch.zeros(d_tilde, dtype=torch.float64)
            u[0] = 1.0
        else:
            u = torch.as_tensor(u_star, dtype=torch.float64).reshape(-1)
            if u.numel() != d_tilde:
                raise ValueError(f"u_star has {u.numel()} entries, expected d_tilde={d_tilde}")
            if abs(float(u.norm()) - 1.0) > 1e-6:
                raise ValueError(f"u_star must have unit norm, got norm {float(u.norm()):.6g}")
        self.d, self.d_tilde, self.eta, self.seed = int(d), int(d_tilde), float(eta), int(seed)
        self.u_star = u.to(dtype)
        self.with_masks = with_masks

        gen = torch.Generator().manual_seed(self.seed)
        signs = torch.where(torch.rand(n, generator=gen) < 0.5, -1, 1).to(torch.long)
        j = torch.randint(n_signal, (n,), generator=gen)
        x = torch.zeros(n, d, d_tilde, dtype=torch.float64)
        if eta > 0:
            x = eta * _unit_ball(n, d, d_tilde, gen)
        rows = torch.arange(n)
        x[rows, j] += signs[:, None].to(torch.float64) * u
        mask = torch.zeros(n, d, d_tilde, dtype=torch.bool)
        mask[rows, j] = True
        self.inputs = x.reshape(n, d * d_tilde).to(dtype)
        self.signs = signs
        self.labels = (signs + 1) // 2
        self.signal_block = j
        self.signal_masks = mask.reshape(n, d * d_tilde)


class SignedBasisToy(SimplifiedBlockMNIST):
    """The toy set ``x = y * e_j`` (Bötte & Pfeiffer; Shah et al. Fig. 5).

    ``y = +-1`` with probability 1/2 and ``x`` is ``y`` times the ``j``-th standard basis vector of
    ``R^d``, ``j`` uniform among the first ``signal_dims`` coordinates; the others are noise
    coordinates that are always zero. This is eq. (2) with ``d_tilde = 1``, ``eta = 0``,
    ``u_star = 1``. The default ``signal_dims = d // 2`` follows Shah et al. (whose data set
    Bötte & Pfeiffer reuse: five task-relevant and five noise coordinates for ``d = 10``);
    ``signal_dims = d`` gives the literal reading "j uniform in 1..d" of Bötte & Pfeiffer.

    Args:
        n: number of examples.
        d: dimension.
        signal_dims: how many leading coordinates can carry the signal (default ``d // 2``).
        seed: seed of the draw.
        dtype: dtype of the inputs.
        with_masks: items are ``(x, label, mask)`` (default) or ``(x, label)``.

    Examples:
        >>> ds = SignedBasisToy(8, d=10, seed=0)
        >>> bool((ds.inputs.abs().sum(dim=1) == 1).all())
        True
    """

    def __init__(
        self,
        n: int = 1000,
        *,
        d: int = 10,
        signal_dims: int | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        with_masks: bool = True,
    ) -> None:
        if d < 1:
            raise ValueError(f"d must be >= 1, got {d}")
        k = max(1, d // 2) if signal_dims is None else int(signal_dims)
        super().__init__(
            n,
            d=d,
            d_tilde=1,
            eta=0.0,
            u_star=[1.0],
            seed=seed,
            dtype=dtype,
            with_masks=with_masks,
            _signal_blocks=k,
        )
        self.signal_dims = k
