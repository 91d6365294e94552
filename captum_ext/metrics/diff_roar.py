"""DiffROAR (Shah, Jain, Netrapalli, NeurIPS 2021, Sec. 3): top-k vs bottom-k remove-and-retrain.

``DiffROAR(A, k) = PredPower(A_k^top) - PredPower(A_k^bot)``: keep (*unmask*) the ``k`` most, or the
``k`` least, relevant coordinates of every train and test example according to the attribution
``A``, fill the rest with the baseline (0), retrain a fresh model of the same architecture on each
unmasked train set and report the difference of the test accuracies. A random attribution gives 0
in expectation; an attribution that ranks the discriminative coordinates first gives a large
positive value.

**Leakage control.** The masks themselves can carry the label: an attribution computed at the
true label may put its top-k pixels in label-dependent places (Saliency of an *untrained* net
gives top-5 % PredPower 1.0 on BlockMNIST), or the kept-pixel shape may draw the digit. DiffROAR
then measures the mask, not the kept values. :func:`diff_roar` therefore also retrains, for the
first seed, on the binary kept-unit masks *alone* (``mask_control=True``) and warns when that
control beats the majority-class rate by more than ``max(leakage_tolerance, 3 standard errors)``.

Plumbing lives in :mod:`._cells` (content-keyed verified cache, file locks, executors that send
the data once); the tensor maths in :mod:`._masking`. This module defines the cells and the result.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import math
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from captum.log import log_usage
from torch import Tensor, nn

from .._format import format_additional_args, select_additional_args
from ..training import Trainer, as_tensors, evaluate
from ._cells import CellCache, fingerprint, run_cells
from ._common import (
    NOT_IN_DICT,
    MetricResult,
    check_batch_size,
    check_eval_mode,
    check_labels,
    compute_attributions,
    forward_batched,
)
from ._masking import (
    DIFF_ROAR_FRACTIONS,
    check_fractions,
    count_for_fraction,
    keep_mask_from_rank,
    rank_units,
    relevance_scores,
    unit_mask_to_input,
    unit_shape,
    unmask,
)

__all__ = ["DiffROARResult", "diff_roar", "unmask"]

SCHEMES = ("top", "bottom")
ATTRIBUTION_TARGETS = ("prediction", "label")
_FORMAT = "captum_ext.diff_roar/3"


# --------------------------------------------------------------------------------------------------
# result


@dataclass(frozen=True, eq=False)
class DiffROARResult(MetricResult):
    """Outcome of :func:`diff_roar`.

    Attributes:
        fractions: the unmasking levels ``k`` (fractions of units kept).
        seeds: the retraining seeds (one pseudo-seed ``0`` for the no-retraining variant).
        accuracies: ``(2, F, S)`` float64 test accuracies; index 0 is top-k, 1 is bottom-k.
        counts: units kept at each fraction (rounded half up, see
            :func:`~captum_ext.metrics._masking.count_for_fraction`).
        units: units per example.
        retrain: whether models were retrained (``False``: ``forward_func`` was scored).
        control: ``(2, F)`` test accuracies of the mask-only control (models retrained, with the
            first seed, on the binary kept-unit masks alone), or ``None`` when not computed.
        chance: the majority-class rate of the test labels (what a constant guess scores).
        leakage_threshold: the control accuracy above which :attr:`leakage` is flagged:
            ``chance + max(leakage_tolerance, 3 * sqrt(chance * (1 - chance) / N_test))``.
        attribution_target: ``"prediction"`` or ``"label"`` for a callable attribution,
            ``"given"`` for precomputed attributions.
        timings: cells computed / read from the cache and their seconds (not in ``to_dict``).

    Examples:
        >>> res = DiffROARResult((0.5, 1.0), (0,), torch.tensor([[[0.9], [0.5]], [[0.6], [0.5]]]),
        ...                      (1, 2), 2, control=torch.tensor([[0.5, 0.5], [0.5, 0.5]]), chance=0.5)
        >>> res.diff, res.leakage
        (tensor([0.3000, 0.0000]), False)
    """

    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    accuracies: Tensor
    counts: tuple[int, ...]
    units: int
    retrain: bool = True
    control: Tensor | None = None
    chance: float = float("nan")
    leakage_threshold: float = float("nan")
    attribution_target: str = "given"
    timings: dict[str, Any] = field(default_factory=dict, metadata=NOT_IN_DICT)

    @property
    def top(self) -> Tensor:
        """Mean top-k predictive power per fraction, ``(F,)``."""
        return self.accuracies[0].mean(dim=1)

    @property
    def bottom(self) -> Tensor:
        """Mean bottom-k predictive power per fraction, ``(F,)``."""
        return self.accuracies[1].mean(dim=1)

    @property
    def diffs(self) -> Tensor:
        """Per-seed DiffROAR, ``(F, S)`` (the top and bottom cells of a seed share an init)."""
        return self.accuracies[0] - self.accuracies[1]

    @property
    def diff(self) -> Tensor:
        """DiffROAR per fraction: mean over seeds of top minus bottom, ``(F,)``."""
        return self.diffs.mean(dim=1)

    @property
    def std(self) -> Tensor:
        """Standard deviation over seeds of the per-seed DiffROAR, ``(F,)`` (zeros for one seed)."""
        if self.diffs.shape[1] < 2:
            return torch.zeros(len(self.fractions), dtype=self.accuracies.dtype)
        return self.diffs.std(dim=1)

    @property
    def top_std(self) -> Tensor:
        """Standard deviation over seeds of the top-k accuracy, ``(F,)``."""
        a = self.accuracies[0]
        return a.std(dim=1) if a.shape[1] > 1 else torch.zeros(a.shape[0], dtype=a.dtype)

    @property
    def bottom_std(self) -> Tensor:
        """Standard deviation over seeds of the bottom-k accuracy, ``(F,)``."""
        a = self.accuracies[1]
        return a.std(dim=1) if a.shape[1] > 1 else torch.zeros(a.shape[0], dtype=a.dtype)

    @property
    def leakage(self) -> bool:
        """Whether the mask-only control beats :attr:`leakage_threshold` at some fraction."""
        if self.control is None or math.isnan(self.leakage_threshold):
            return False
        return bool((self.control > self.leakage_threshold).any())

    @property
    def cells(self) -> dict[tuple[str, float, int], float]:
        """Every cell's accuracy keyed by ``(scheme, fraction, seed)``."""
        return {
            (scheme, f, s): float(self.accuracies[i, j, m])
            for i, scheme in enumerate(SCHEMES)
            for j, f in enumerate(self.fractions)
            for m, s in enumerate(self.seeds)
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary: the fields plus the curves (``top``, ``bottom``, ``diff``, ``std``)."""
        out = super().to_dict()
        out["accuracies"] = {"top": self.accuracies[0].tolist(), "bottom": self.accuracies[1].tolist()}
        if self.control is not None:
            out["control"] = {"top": self.control[0].tolist(), "bottom": self.control[1].tolist()}
        out.update(
            top=self.top.tolist(),
            bottom=self.bottom.tolist(),
            diff=self.diff.tolist(),
            std=self.std.tolist(),
            leakage=self.leakage,
        )
        return out

    def plot(
        self, ax: Any = None, label: str | None = None, show_parts: bool = False, show_control: bool = False
    ) -> Any:
        """Plot DiffROAR against the unmasking fraction (mean +- std over seeds).

        Args:
            ax: matplotlib ``Axes`` to draw on (a new figure when ``None``).
            label: legend label of the curve.
            show_parts: also draw the top-k and bottom-k accuracy curves.
            show_control: also draw the mask-only control accuracies and the leakage threshold.

        Returns:
            The matplotlib ``Axes``.
        """
        ax = self._axes(ax)
        x = [100 * f for f in self.fractions]
        mean, std = self.diff.numpy(), self.std.numpy()
        (line,) = ax.plot(x, mean, marker="o", label=label or "DiffROAR")
        ax.fill_between(x, mean - std, mean + std, alpha=0.2, color=line.get_color())
        if show_parts:
            ax.plot(x, self.top.numpy(), ls="--", label="top-k accuracy")
            ax.plot(x, self.bottom.numpy(), ls=":", label="bottom-k accuracy")
        if show_control and self.control is not None:
            ax.plot(x, self.control[0].numpy(), ls="-.", label="mask-only control (top-k)")
            ax.plot(x, self.control[1].numpy(), ls="-.", label="mask-only control (bottom-k)")
            ax.axhline(self.leakage_threshold, color="red", lw=0.8, ls="--", label="leakage threshold")
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xlabel("unmasked fraction k (%)")
        ax.set_ylabel("DiffROAR" if not (show_parts or show_control) else "accuracy / DiffROAR")
        ax.legend(loc="best", fontsize="small")
        return ax


# --------------------------------------------------------------------------------------------------
# pure helpers


def majority_rate(labels: Tensor) -> float:
    """Accuracy of always guessing the most frequent label.

    Examples:
        >>> majority_rate(torch.tensor([0, 1, 1, 2]))
        0.5
    """
    return float(torch.bincount(labels.reshape(-1).long()).max()) / labels.numel()


def leakage_threshold(chance: float, n: int, tolerance: float) -> float:
    """``chance + max(tolerance, 3 * sqrt(chance * (1 - chance) / n))``: "well above chance".

    Three binomial standard errors keep a small test set's noise from raising the alarm.

    Examples:
        >>> round(leakage_threshold(0.5, 100, 0.1), 3)
        0.65
    """
    return chance + max(tolerance, 3.0 * math.sqrt(chance * (1.0 - chance) / max(n, 1)))


def _architecture(model: nn.Module) -> tuple[Any, ...]:
    """A comparable description of a model's structure: module types and parameter/buffer shapes."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"the model factory must return an nn.Module, got {type(model).__name__}")
    modules = tuple((n, type(m).__qualname__) for n, m in model.named_modules())
    params = tuple((n, tuple(p.shape)) for n, p in model.named_parameters())
    buffers = tuple((n, tuple(b.shape)) for n, b in model.named_buffers())
    return modules, params, buffers


def _architecture_difference(expected: tuple[Any, ...], got: tuple[Any, ...]) -> str:
    for label, a, b in zip(("modules", "parameters", "buffers"), expected, got, strict=True):
        if a != b:
            first = next(
                (f"{x} != {y}" for x, y in zip(a, b, strict=False) if x != y),
                f"{len(a)} vs {len(b)} entries",
            )
            return f"{label} differ ({first})"
    return "no difference"


def _check_architecture(model: nn.Module, expected: tuple[Any, ...], where: str) -> None:
    got = _architecture(model)
    if got != expected:
        raise ValueError(
            f"{where} returned a model of another architecture than the reference: "
            f"{_architecture_difference(expected, got)}. DiffROAR retrains the SAME architecture; "
            "pass a model_factory that builds it (and `model=` the model that was explained)."
        )


# --------------------------------------------------------------------------------------------------
# cells


@dataclass(frozen=True)
class _Shared:
    """What every cell of a run reads: sent to each worker once (see :func:`._cells.run_cells`)."""

    factory: Callable[[], nn.Module]
    trainer: Callable[..., nn.Module]
    architecture: tuple[Any, ...]
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    train_rank: Tensor
    test_rank: Tensor
    units: tuple[int, ...]
    baselines: float | str | Tensor
    channel_dim: int
    threads: int | None
    eval_batch_size: int


def _rng_devices() -> list[int]:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return list(range(torch.cuda.device_count()))
    return []


def _accuracy(
    model: Callable[..., Tensor], x: Tensor, y: Tensor, batch: int, args: tuple[Any, ...] = ()
) -> float:
    out = forward_batched(model, (x,), args, batch)
    return float((out.argmax(dim=1) == y.to(out.device)).double().mean())


def _cell_inputs(d: _Shared, cell: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """The train and test inputs of a cell: unmasked data, or the masks alone for the control."""
    k, scheme = cell["k"], cell["scheme"]
    keep_train = keep_mask_from_rank(d.train_rank, k, scheme)
    keep_test = keep_mask_from_rank(d.test_rank, k, scheme)
    if cell["control"]:
        return tuple(  # type: ignore[return-value]
            unit_mask_to_input(keep, x.shape, d.units).to(x.dtype)
            for keep, x in ((keep_train, d.train_x), (keep_test, d.test_x))
        )
    return (
        unmask(d.train_x, keep_train, d.units, d.baselines, d.channel_dim),
        unmask(d.test_x, keep_test, d.units, d.baselines, d.channel_dim),
    )


def run_cell(d: _Shared, cell: dict[str, Any]) -> float:
    """One DiffROAR cell: a fresh model trained on the cell's train inputs, scored on its test inputs.

    The model is built by the factory under ``torch.manual_seed(cell["seed"])`` (top and bottom
    cells of a seed share their initialisation), trained with ``trainer(model, data, seed)``, and
    scored in eval mode. Torch's intra-op thread count is ``d.threads`` inside the cell, so the
    number does not depend on where the cell runs.
    """
    old_threads = torch.get_num_threads()
    if d.threads is not None:
        torch.set_num_threads(d.threads)
    try:
        train_x, test_x = _cell_inputs(d, cell)
        with torch.random.fork_rng(devices=_rng_devices()):
            torch.manual_seed(cell["seed"])
            model = d.factory()
            _check_architecture(model, d.architecture, "model_factory")
            trained = d.trainer(model, (train_x, d.train_y), cell["seed"])
        trained = model if trained is None else trained
        return float(evaluate(trained, (test_x, d.test_y), batch_size=d.eval_batch_size))
    finally:
        if d.threads is not None:
            torch.set_num_threads(old_threads)


def _compact_rank(rank: Tensor) -> Tensor:
    """Ranks in the smallest integer type that holds them (they travel to every worker)."""
    p = rank.shape[1]
    dtype = torch.int16 if p <= 2**15 else torch.int32 if p <= 2**31 else torch.int64
    return rank.to(dtype)


# --------------------------------------------------------------------------------------------------
# input checks


def _as_pair(data: Any, name: str) -> tuple[Tensor, Tensor]:
    if data is None:
        raise ValueError(f"{name} data is required")
    try:
        x, y = as_tensors(data)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from err
    if x.dim() < 2:
        raise ValueError(f"{name} inputs must be (N, ...) with at least one feature dimension")
    return x.detach(), y.detach()


def _num_classes(model: Callable[..., Tensor], x: Tensor, args: tuple[Any, ...], what: str) -> int:
    device = (
        next((p.device for p in model.parameters()), x.device) if isinstance(model, nn.Module) else x.device
    )
    n = min(2, x.shape[0])
    with torch.no_grad():
        out = forward_batched(
            model, (x[:n].to(device),), select_additional_args(args, x.shape[0], torch.arange(n))
        )
    if out.dim() != 2:
        raise ValueError(f"{what} must return (batch, classes) scores, got shape {tuple(out.shape)}")
    return int(out.shape[1])


def _attributions(
    attributions: Any,
    forward_func: Callable[..., Tensor] | None,
    sets: dict[str, tuple[Tensor, Tensor]],
    attribution_target: str,
    args: Any,
    batch: int | None,
) -> dict[str, Tensor]:
    if callable(attributions):
        if attribution_target not in ATTRIBUTION_TARGETS:
            raise ValueError(
                f"attribution_target must be one of {ATTRIBUTION_TARGETS}, got {attribution_target!r}"
            )
        if attribution_target == "prediction" and forward_func is None:
            raise ValueError(
                "attribution_target='prediction' needs forward_func (the explained model) to predict the "
                "labels the attributions are taken at; pass it, or attribution_target='label'"
            )
        out = {}
        for name, (x, y) in sets.items():
            if attribution_target == "prediction":
                target = forward_batched(forward_func, (x,), format_additional_args(args), batch).argmax(1)  # type: ignore[arg-type]
            else:
                target = y
            out[name] = compute_attributions(
                attributions, x, target, additional_forward_args=args, max_examples_per_batch=batch
            )  # type: ignore[assignment]
        return out
    if not (isinstance(attributions, (tuple, list)) and len(attributions) == 2):
        raise TypeError(
            "attributions must be a (train_attributions, test_attributions) pair of tensors or a "
            "callable (inputs, target) -> tensor such as a Captum attribution's .attribute"
        )
    pair = dict(zip(("train", "test"), attributions, strict=True))
    out = {}
    for name, (x, _) in sets.items():
        a = pair[name]
        if not isinstance(a, Tensor):
            raise TypeError(f"{name} attributions must be a tensor, got {type(a).__name__}")
        if a.shape != x.shape:
            raise ValueError(
                f"{name} attributions have shape {tuple(a.shape)} but the {name} inputs {tuple(x.shape)}; "
                "attributions must be shaped like the inputs"
            )
        out[name] = a.detach()
    return out


def _check_counts(fracs: tuple[float, ...], counts: tuple[int, ...], n_units: int) -> None:
    empty = [f for f, k in zip(fracs, counts, strict=True) if k == 0]
    if empty:
        raise ValueError(
            f"fractions {empty} keep 0 of the {n_units} units per example (round half up): the cells "
            f"would score empty inputs; use fractions >= {0.5 / n_units:.3g}"
        )


def _cache(
    cache_dir: str | os.PathLike[str] | None, cache_key: str | None, shared: _Shared, manifest: dict[str, Any]
) -> CellCache | None:
    if cache_dir is None:
        return None
    if cache_key is not None and not isinstance(cache_key, str):
        raise TypeError(f"cache_key must be a string, got {type(cache_key).__name__}")
    content = {f.name: getattr(shared, f.name) for f in dataclasses.fields(shared)}
    content["architecture"] = repr(shared.architecture)
    if cache_key is not None:  # the user vouches for the factory and the trainer
        content["factory"] = content["trainer"] = None
    key = fingerprint({"format": _FORMAT, "cache_key": cache_key, **content}, "the model_factory or trainer")
    return CellCache(Path(cache_dir) / key[:24], key, manifest)


# --------------------------------------------------------------------------------------------------
# public entry point


@log_usage()
def diff_roar(
    forward_func: Callable[..., Tensor] | None,
    train: Any,
    test: Any,
    attributions: Any,
    *,
    model_factory: Callable[[], nn.Module] | None = None,
    fractions: Iterable[float] = DIFF_ROAR_FRACTIONS,
    seeds: Iterable[int] = (0, 1, 2, 3, 4),
    retrain: bool = True,
    trainer: Callable[..., nn.Module] | None = None,
    attribution_target: str = "prediction",
    additional_forward_args: Any = None,
    baselines: float | str | Tensor = 0.0,
    aggregate: str = "abs",
    channel_dim: int = 1,
    max_examples_per_batch: int | None = None,
    tie_seed: int = 0,
    threads: int | None = 1,
    mask_control: bool = True,
    leakage_tolerance: float = 0.1,
    executor: Any = None,
    max_in_flight: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_key: str | None = None,
    show_progress: bool = False,
) -> DiffROARResult:
    """DiffROAR curve of an attribution: top-k minus bottom-k predictive power, retrained.

    For every fraction ``k`` and seed, two cells are computed: a fresh model from ``model_factory``
    (initialised under ``torch.manual_seed(seed)``) is trained with ``trainer`` on the train set in
    which only the top-k (respectively bottom-k) units of each example are kept and the others set
    to ``baselines``, and its accuracy on the equally unmasked test set is that cell's *PredPower*.
    ``diff = mean over seeds of (top - bottom)``. The defaults follow the paper: every coordinate
    ranked on its own by ``|attribution|``, masked coordinates set to 0, ``k`` in
    {5, 10, 20, ..., 100}%, five seeds, attributions taken at the *predicted* label. Ties in the
    ranking are broken at random (seeded with ``tie_seed``), the same way for every seed.

    **Mask-only control** (``mask_control=True``, ``2 F`` extra cells for the first seed): the same
    retraining on the binary kept-unit masks alone. If the masks predict the labels, PredPower
    measures where the attribution put its top-k units, not what the kept values say. A
    ``UserWarning`` is raised when a control accuracy exceeds ``leakage_threshold = chance +
    max(leakage_tolerance, 3 * sqrt(chance * (1 - chance) / N_test))``, ``chance`` being the
    majority-class rate of the test labels; the control is in ``result.control``.

    With ``retrain=False`` (the paper's App. C variant) nothing is trained: ``forward_func`` is
    scored on the unmasked test sets; ``train`` may be ``None`` and there is one deterministic cell
    per ``(scheme, k)``.

    **Scale-out.** Cells run in this process (``executor=None``), in a process pool created here
    (``executor=2``: the data are pickled once to a temporary file that each worker's initializer
    reads once, and each worker runs ``threads`` torch threads from its start), on a Dask cluster
    (``executor=client``: the data are pickled once and scattered to every worker as bytes with
    ``client.scatter(..., broadcast=True)``), or on any ``concurrent.futures`` executor (the same
    temporary file, read at each worker's first cell). At most ``max_in_flight`` cells are queued.
    Recipe for several machines::

        # one machine (the scheduler):  dask scheduler --port 8786
        # every machine (same Python env, captum_ext and the module defining the factory installed):
        #     dask worker tcp://scheduler:8786 --nworkers <cores> --nthreads 1
        # (one thread per worker process: each cell uses ``threads`` = 1 torch thread)
        from dask.distributed import Client
        client = Client("tcp://scheduler:8786")
        res = diff_roar(model, train, test, Saliency(model).attribute, model_factory=MyFactory(),
                        executor=client, cache_dir="/shared/cache")  # cache_dir optional

    The data reach each worker once per call (``client.scatter(..., broadcast=True)`` of one pickle:
    about ``4 * (N_train + N_test) * D`` bytes plus the ranks, e.g. ~110 MB for 6 000 CIFAR
    images), then each cell sends a few hundred bytes. ``model_factory`` and ``trainer`` must be
    importable on the workers (install the package that defines them there, or
    ``client.upload_file("my_module.py")``; Dask pickles lambdas and closures by value).
    ``cache_dir`` is read and written by this (the coordinating) process only; two coordinators
    sharing one cache on a network file system need working POSIX locks there to split the work.

    **Cache.** With ``cache_dir`` every finished cell is written at once (atomically, with its key
    and a checksum, verified on read), so a killed run resumes where it stopped, a finished run is
    read back, and concurrent runs on one cache compute each cell once. The key digests by content
    the data, the attributions' ranking, every option, ``model_factory`` and ``trainer`` (code,
    closure values, defaults, referenced globals, fields). What cannot be digested raises a
    ``TypeError`` asking for ``cache_key``: a string that then stands for ``model_factory`` and
    ``trainer`` (change it whenever they change).

    Args:
        forward_func: the explained model, returning ``(batch, classes)`` scores. Needed for
            ``attribution_target="prediction"`` with a callable ``attributions`` and for
            ``retrain=False``; when it is an ``nn.Module`` its architecture is checked against the
            factory's models. It must be in eval mode (BatchNorm/Dropout in training mode raise)
            and is never modified. ``None`` with precomputed attributions.
        train: ``(inputs, labels)`` tensors or a ``Dataset`` (see
            :func:`~captum_ext.training.as_tensors`).
        test: the same for the test set.
        attributions: a ``(train_attributions, test_attributions)`` pair of tensors shaped like the
            inputs, or a callable ``(inputs, target) -> attributions`` (a Captum attribution's
            ``attribute``), called in batches of ``max_examples_per_batch``.
        model_factory: zero-argument callable returning a fresh, untrained model of the
            architecture under study (picklable for worker processes: a top-level function, class
            or ``functools.partial``; see :class:`~captum_ext.training.MLPFactory`). Required
            when ``retrain=True``.
        fractions: unmasking levels in ``(0, 1]``; the number of kept units is
            ``round_half_up(k * P)``, which must be at least 1.
        seeds: retraining seeds.
        retrain: retrain per cell (default) or score ``forward_func`` without retraining.
        trainer: ``trainer(model, (inputs, labels), seed) -> model``; default
            :class:`~captum_ext.training.Trainer` ``()`` (Adam, 5 epochs). Retrained models are
            called as ``model(inputs)`` (``additional_forward_args`` are not passed to them).
        attribution_target: for a callable ``attributions``: the class the maps are taken at,
            ``"prediction"`` (``forward_func``'s arg-max, the paper's choice, default) or
            ``"label"`` (the true label: the mask may then encode the label, see the control).
        additional_forward_args: extra arguments of ``forward_func`` and of the attribution
            callable (Captum's convention; tensors with the set's batch size are split per batch).
        baselines: value of masked units: a number (default 0), ``"mean"``, ``"channel_mean"``
            (per example and channel along ``channel_dim``) or a tensor broadcastable to the inputs.
        aggregate: ``"abs"`` (default: ``|a|`` per coordinate), ``"signed"``, or a per-pixel reduction
            over ``channel_dim`` (``"abs_sum"``, ``"sum"``, ``"abs_max"``, ``"l2"``), in which case
            whole pixels are kept or masked.
        channel_dim: channel dimension for per-pixel aggregation and ``"channel_mean"``.
        max_examples_per_batch: batch size of attribution calls and of evaluation (``None``: all
            at once for attributions, 1024 for evaluation).
        tie_seed: seed of the random tie-breaking in the ranking.
        threads: torch intra-op threads inside each cell (default 1: parallelism comes from the
            executor and results do not depend on the machine's thread count); ``None`` leaves it.
        mask_control: compute the mask-only control (see above).
        leakage_tolerance: the smallest margin over chance that counts as leakage.
        executor: ``None``, a number of worker processes, a Dask ``Client`` (or its
            ``get_executor()``), or any ``concurrent.futures.Executor``.
        max_in_flight: most cells queued on the executor at a time (default twice its workers).
        cache_dir: folder of the per-cell cache (see above).
        cache_key: a string standing for ``model_factory`` and ``trainer`` in the cache key.
        show_progress: a tqdm progress bar over cells.

    Returns:
        A :class:`DiffROARResult` with ``.fractions``, ``.top``, ``.bottom``, ``.diff``, ``.std``,
        per-cell ``.accuracies`` / ``.cells``, ``.control``, ``.leakage``, ``.to_dict()`` and
        ``.plot()``.

    Raises:
        ValueError: empty data, labels outside the model's classes, attributions not shaped like
            the inputs, fractions outside ``(0, 1]`` or keeping no unit, no seeds, a factory
            returning another architecture (or the same object twice), ``forward_func`` in
            training mode, ``retrain=False`` without ``forward_func``.
        TypeError: a cache key that cannot be computed (pass ``cache_key``), bad argument types.

    Examples:
        >>> from captum_ext.datasets import SignedBasisToy
        >>> from captum_ext.training import MLPFactory, Trainer
        >>> train, test = SignedBasisToy(64, d=10, seed=1), SignedBasisToy(32, d=10, seed=2)
        >>> oracle = (train.signal_masks.float(), test.signal_masks.float())
        >>> res = diff_roar(None, train, test, oracle, model_factory=MLPFactory((10,), hidden=(8,)),
        ...                 fractions=(0.1, 1.0), seeds=(0,), trainer=Trainer(epochs=1))
        >>> res.accuracies.shape, res.counts, res.control.shape
        (torch.Size([2, 2, 1]), (1, 10), torch.Size([2, 2]))
    """
    fracs = check_fractions(fractions)
    seed_list = tuple(int(s) for s in seeds) if retrain else (0,)
    if not seed_list:
        raise ValueError("seeds must contain at least one seed")
    if len(set(seed_list)) != len(seed_list):
        raise ValueError(f"seeds must be distinct, got {seed_list}")
    check_batch_size(max_examples_per_batch)
    if not (isinstance(leakage_tolerance, (int, float)) and 0 <= leakage_tolerance <= 1):
        raise ValueError(f"leakage_tolerance must lie in [0, 1], got {leakage_tolerance!r}")
    eval_batch = max_examples_per_batch or 1024
    if isinstance(executor, cf.ThreadPoolExecutor):
        raise TypeError(
            "executor: a ThreadPoolExecutor cannot run DiffROAR cells (each cell seeds torch's global RNG, "
            "which threads share); use a number of worker processes, a ProcessPoolExecutor or Dask"
        )
    args = format_additional_args(additional_forward_args)
    if forward_func is not None:
        check_eval_mode(forward_func)
    test_x, test_y = _as_pair(test, "test")
    if not retrain:
        if forward_func is None:
            raise ValueError("retrain=False scores the explained model: pass it as forward_func")
        sets = {"test": (test_x, test_y)}
    else:
        if model_factory is None or not callable(model_factory):
            raise TypeError("model_factory must be a zero-argument callable returning a fresh model")
        train_x, train_y = _as_pair(train, "train")
        if train_x.shape[1:] != test_x.shape[1:]:
            raise ValueError(
                f"train inputs {tuple(train_x.shape[1:])} and test inputs {tuple(test_x.shape[1:])} "
                "differ in shape"
            )
        sets = {"train": (train_x, train_y), "test": (test_x, test_y)}

    # classes: from the explained model, else from the factory's model; labels must lie in range
    if retrain:
        with torch.random.fork_rng(devices=_rng_devices()):
            probe_a, probe_b = model_factory(), model_factory()  # type: ignore[misc]
        architecture = _architecture(probe_a)
        if probe_a is probe_b or (forward_func is not None and forward_func in (probe_a, probe_b)):
            raise ValueError(
                "model_factory must build a NEW model on every call (retraining must not touch the "
                "explained model); e.g. lambda: MyNet() rather than lambda: net"
            )
        _check_architecture(probe_b, architecture, "model_factory (second call)")
        if isinstance(forward_func, nn.Module):
            _check_architecture(forward_func, architecture, "model_factory (compared with forward_func)")
        classes = _num_classes(probe_a.eval(), test_x, (), "model_factory's model")
        del probe_a, probe_b
    else:
        classes = _num_classes(forward_func, test_x, args, "forward_func")  # type: ignore[arg-type]
    sets = {
        name: (x, check_labels(y, x.shape[0], classes, f"{name} labels").to(y.device))
        for name, (x, y) in sets.items()
    }
    test_y = sets["test"][1]

    attr = _attributions(
        attributions, forward_func, sets, attribution_target, additional_forward_args, max_examples_per_batch
    )
    units = unit_shape(test_x.shape, aggregate, channel_dim)
    gen = torch.Generator().manual_seed(tie_seed)
    test_rank = rank_units(relevance_scores(attr["test"], aggregate, channel_dim), gen)
    n_units = test_rank.shape[1]
    counts = tuple(count_for_fraction(f, n_units) for f in fracs)
    _check_counts(fracs, counts, n_units)
    target_used = attribution_target if callable(attributions) else "given"

    if not retrain:
        acc = torch.empty(2, len(fracs), 1, dtype=torch.float64)
        for j, k in enumerate(counts):
            for i, scheme in enumerate(SCHEMES):
                x = unmask(test_x, keep_mask_from_rank(test_rank, k, scheme), units, baselines, channel_dim)
                acc[i, j, 0] = _accuracy(forward_func, x, test_y, eval_batch, args)  # type: ignore[arg-type]
        return DiffROARResult(
            fracs, (0,), acc, counts, n_units, retrain=False, attribution_target=target_used
        )

    train_rank = rank_units(relevance_scores(attr["train"], aggregate, channel_dim), gen)
    shared = _Shared(
        factory=model_factory,  # type: ignore[arg-type]
        trainer=Trainer() if trainer is None else trainer,
        architecture=architecture,
        train_x=sets["train"][0],
        train_y=sets["train"][1],
        test_x=test_x,
        test_y=test_y,
        train_rank=_compact_rank(train_rank),
        test_rank=_compact_rank(test_rank),
        units=units,
        baselines=baselines,
        channel_dim=channel_dim,
        threads=threads,
        eval_batch_size=eval_batch,
    )
    manifest = {
        "train_shape": list(train_x.shape),
        "test_shape": list(test_x.shape),
        "aggregate": aggregate,
        "cache_key": cache_key,
        "trainer": repr(shared.trainer)[:500],
    }
    cache = _cache(cache_dir, cache_key, shared, manifest)

    cells = [
        {"scheme": scheme, "fraction": f, "k": k, "seed": seed, "control": False}
        for seed in seed_list
        for f, k in zip(fracs, counts, strict=True)
        for scheme in SCHEMES
    ]
    if mask_control:
        cells += [
            {"scheme": scheme, "fraction": f, "k": k, "seed": seed_list[0], "control": True}
            for f, k in zip(fracs, counts, strict=True)
            for scheme in SCHEMES
        ]
    values, stats = run_cells(
        run_cell,
        shared,
        cells,
        executor=executor,
        cache=cache,
        max_in_flight=max_in_flight,
        show_progress=show_progress,
        desc="DiffROAR cells",
        worker_threads=threads,
    )
    n_main = 2 * len(fracs) * len(seed_list)
    acc = (
        torch.tensor(values[:n_main], dtype=torch.float64)
        .reshape(len(seed_list), len(fracs), 2)
        .permute(2, 1, 0)
    )
    control = None
    if mask_control:
        control = torch.tensor(values[n_main:], dtype=torch.float64).reshape(len(fracs), 2).T.contiguous()
    chance = majority_rate(test_y)
    threshold = leakage_threshold(chance, test_x.shape[0], float(leakage_tolerance))
    result = DiffROARResult(
        fracs,
        seed_list,
        acc.contiguous(),
        counts,
        n_units,
        retrain=True,
        control=control,
        chance=chance,
        leakage_threshold=threshold,
        attribution_target=target_used,
        timings=dataclasses.asdict(stats),
    )
    if result.leakage:
        assert control is not None
        i, j = divmod(int(control.argmax()), len(fracs))
        warnings.warn(
            f"DiffROAR label leakage: the kept-unit masks ALONE predict the test labels with accuracy "
            f"{float(control[i, j]):.3f} ({SCHEMES[i]}-k, k={fracs[j]:g}) against a majority-class rate of "
            f"{chance:.3f} (threshold {threshold:.3f}). PredPower then measures where the attribution "
            "put its kept units (their position or shape), not what the kept values say; see result.control. "
            + (
                "The attributions were taken at the true labels: try attribution_target='prediction'."
                if target_used == "label"
                else ""
            ),
            UserWarning,
            stacklevel=3,
        )
    return result
