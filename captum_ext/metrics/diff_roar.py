"""DiffROAR (Shah, Jain, Netrapalli, NeurIPS 2021, Sec. 3): top-k vs bottom-k remove-and-retrain.

``DiffROAR(A, k) = PredPower(A_k^top) - PredPower(A_k^bot)``: keep (*unmask*) the ``k`` most, or the
``k`` least, relevant coordinates of every train and test example according to the attribution
``A``, fill the rest with 0, retrain a fresh model of the same architecture on each unmasked train
set and report the difference of the test accuracies. A random attribution gives 0 in expectation;
an attribution that ranks the discriminative coordinates first gives a large positive value.

Plumbing (this module) is separate from the tensor maths (:mod:`._masking`): a run is a grid of
independent *cells* ``(scheme, k, seed) -> accuracy``. Cells are plain picklable tasks, run in
order or through any ``concurrent.futures.Executor`` (a process pool, a Dask client's
``get_executor()``), and each finished cell is written atomically to an optional on-disk cache
keyed by a fingerprint of the data, the attribution and the configuration, so that a killed run
resumes where it stopped and a finished run is never recomputed.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import functools
import hashlib
import inspect
import itertools
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..training import Trainer, as_tensors, evaluate
from ._attribution import call_attribution, check_like
from ._masking import (
    DIFF_ROAR_FRACTIONS,
    apply_fill,
    check_fractions,
    count_for_fraction,
    keep_mask_from_rank,
    rank_units,
    relevance_scores,
    unit_mask_to_input,
    unit_shape,
)

__all__ = ["DiffROARResult", "diff_roar", "unmask"]

SCHEMES = ("top", "bottom")
_CACHE_VERSION = "captum_ext.diff_roar/1"


# --------------------------------------------------------------------------------------------------
# result


@dataclass(frozen=True, eq=False)
class DiffROARResult:
    """Outcome of :func:`diff_roar`.

    Attributes:
        fractions: the unmasking levels ``k`` (fractions of units kept).
        seeds: the retraining seeds (one pseudo-seed ``0`` for the no-retraining variant).
        accuracies: ``(2, F, S)`` float64 test accuracies; index 0 is top-k, 1 is bottom-k.
        counts: units kept at each fraction (rounded half up, see
            :func:`~captum_ext.metrics._masking.count_for_fraction`).
        units: units per example.
        retrain: whether models were retrained (``False``: the given model was scored).

    Examples:
        >>> res = diff_roar(...)  # doctest: +SKIP
        >>> res.diff, res.std  # doctest: +SKIP
        >>> res.plot()  # doctest: +SKIP
    """

    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    accuracies: Tensor
    counts: tuple[int, ...]
    units: int
    retrain: bool = True

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
    def cells(self) -> dict[tuple[str, float, int], float]:
        """Every cell's accuracy keyed by ``(scheme, fraction, seed)``."""
        return {
            (scheme, f, s): float(self.accuracies[i, j, m])
            for i, scheme in enumerate(SCHEMES)
            for j, f in enumerate(self.fractions)
            for m, s in enumerate(self.seeds)
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary (curves and per-cell accuracies)."""
        return {
            "fractions": list(self.fractions),
            "seeds": list(self.seeds),
            "counts": list(self.counts),
            "units": self.units,
            "retrain": self.retrain,
            "top": self.top.tolist(),
            "bottom": self.bottom.tolist(),
            "diff": self.diff.tolist(),
            "std": self.std.tolist(),
            "accuracies": {
                "top": self.accuracies[0].tolist(),
                "bottom": self.accuracies[1].tolist(),
            },
        }

    def plot(self, ax: Any = None, label: str | None = None, show_parts: bool = False) -> Any:
        """Plot DiffROAR against the unmasking fraction (mean +- std over seeds).

        Args:
            ax: matplotlib ``Axes`` to draw on (a new figure when ``None``).
            label: legend label of the curve.
            show_parts: also draw the top-k and bottom-k accuracy curves.

        Returns:
            The matplotlib ``Axes``.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        x = [100 * f for f in self.fractions]
        mean, std = self.diff.numpy(), self.std.numpy()
        (line,) = ax.plot(x, mean, marker="o", label=label or "DiffROAR")
        ax.fill_between(x, mean - std, mean + std, alpha=0.2, color=line.get_color())
        if show_parts:
            ax.plot(x, self.top.numpy(), ls="--", label="top-k accuracy")
            ax.plot(x, self.bottom.numpy(), ls=":", label="bottom-k accuracy")
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xlabel("unmasked fraction k (%)")
        ax.set_ylabel("DiffROAR" if not show_parts else "accuracy / DiffROAR")
        ax.legend(loc="best", fontsize="small")
        return ax


# --------------------------------------------------------------------------------------------------
# pure helpers


def unmask(inputs: Tensor, keep_units: Tensor, units: Sequence[int], fill: float | str | Tensor) -> Tensor:
    """Unmasked inputs ``x^S``: keep the units in ``keep_units`` (``(N, P)`` bool), fill the rest.

    Args:
        inputs: ``(N, ...)`` inputs.
        keep_units: ``(N, P)`` boolean mask over units.
        units: the per-example unit grid (see :func:`~captum_ext.metrics._masking.unit_shape`).
        fill: fill value (see :func:`~captum_ext.metrics._masking.apply_fill`).

    Returns:
        A tensor like ``inputs``.

    Examples:
        >>> unmask(torch.tensor([[1.0, 2.0]]), torch.tensor([[False, True]]), (2,), 0.0)
        tensor([[0., 2.]])
    """
    keep = unit_mask_to_input(keep_units.to(inputs.device), inputs.shape, units)
    return apply_fill(inputs, keep, fill)


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


def _describe(obj: Any) -> str:
    """A stable, process-independent description of a callable or config object for the cache key.

    Functions and classes are described by their qualified name, dataclasses by their type and
    the fields they show in their ``repr``, partials by function and arguments; objects whose
    ``repr`` holds a memory address by their type only.
    """
    if obj is None or isinstance(obj, (bool, int, float, str, torch.dtype, torch.device)):
        return repr(obj)
    if isinstance(obj, (tuple, list)):
        return f"{type(obj).__name__}({', '.join(_describe(o) for o in obj)})"
    if isinstance(obj, dict):
        return "dict(" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in sorted(obj.items())) + ")"
    if isinstance(obj, Tensor):
        return f"tensor{tuple(obj.shape)}"
    if isinstance(obj, functools.partial):
        kw = ", ".join(f"{k}={_describe(v)}" for k, v in sorted(obj.keywords.items()))
        return f"partial({_describe(obj.func)}, {_describe(obj.args)}, {kw})"
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        shown = ", ".join(
            f"{f.name}={_describe(getattr(obj, f.name))}" for f in dataclasses.fields(obj) if f.repr
        )
        return f"{type(obj).__module__}.{type(obj).__qualname__}({shown})"
    if isinstance(obj, type) or inspect.isroutine(obj):
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
    text = repr(obj)
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
    return kind if " at 0x" in text else f"{kind}:{text}"


def _digest(h: Any, t: Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _atomic_write_json(path: Path, obj: dict[str, Any]) -> None:
    """Write JSON to ``path`` atomically: a temporary file in the same folder, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# --------------------------------------------------------------------------------------------------
# cells


@dataclass(frozen=True)
class _CellData:
    """What every cell of a run shares (sent to workers with each task)."""

    factory: Callable[[], nn.Module]
    trainer: Callable[..., nn.Module]
    architecture: tuple[Any, ...]
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    units: tuple[int, ...]
    fill: float | str | Tensor
    threads: int | None
    eval_batch_size: int


@dataclass(frozen=True)
class _CellTask:
    """One cell: a fresh model trained on unmasked train data, scored on unmasked test data."""

    scheme: str
    fraction: float
    seed: int
    train_keep: Tensor
    test_keep: Tensor
    data: _CellData = field(repr=False)


def _rng_devices() -> list[int]:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return list(range(torch.cuda.device_count()))
    return []


def run_cell(task: _CellTask) -> float:
    """Run one DiffROAR cell (a top-level function so that it pickles for worker processes).

    The model is built by the factory under ``torch.manual_seed(task.seed)`` (top and bottom cells
    of a seed share their initialisation), trained with ``trainer(model, data, seed)``, and scored
    on the unmasked test set. Torch's intra-op thread count is set to ``data.threads`` for the
    cell, so the numbers do not depend on where the cell runs.
    """
    d = task.data
    old_threads = torch.get_num_threads()
    if d.threads is not None:
        torch.set_num_threads(d.threads)
    try:
        train_x = unmask(d.train_x, task.train_keep, d.units, d.fill)
        test_x = unmask(d.test_x, task.test_keep, d.units, d.fill)
        with torch.random.fork_rng(devices=_rng_devices()):
            torch.manual_seed(task.seed)
            model = d.factory()
            _check_architecture(model, d.architecture, "model_factory")
            trained = d.trainer(model, (train_x, d.train_y), task.seed)
        if trained is None:
            trained = model
        return float(evaluate(trained, (test_x, d.test_y), batch_size=d.eval_batch_size))
    finally:
        if d.threads is not None:
            torch.set_num_threads(old_threads)


# --------------------------------------------------------------------------------------------------
# cache


class _CellCache:
    """One JSON file per finished cell under ``cache_dir/<fingerprint[:20]>/``."""

    def __init__(self, cache_dir: str | os.PathLike[str] | None, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        self.folder = None if cache_dir is None else Path(cache_dir) / fingerprint[:20]

    def _path(self, scheme: str, fraction: float, seed: int) -> Path:
        assert self.folder is not None
        return self.folder / f"{scheme}_k{fraction!r}_seed{seed}.json"

    def get(self, scheme: str, fraction: float, seed: int) -> float | None:
        if self.folder is None:
            return None
        path = self._path(scheme, fraction, seed)
        if not path.exists():
            return None
        try:
            rec = json.loads(path.read_text())
            ok = (
                rec["fingerprint"] == self.fingerprint
                and rec["scheme"] == scheme
                and rec["fraction"] == fraction
                and rec["seed"] == seed
            )
            value = float(rec["accuracy"])
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            warnings.warn(f"ignoring unreadable or foreign DiffROAR cache file {path}", stacklevel=3)
            return None
        return value

    def put(self, scheme: str, fraction: float, seed: int, accuracy: float) -> None:
        if self.folder is None:
            return
        rec = {
            "fingerprint": self.fingerprint,
            "scheme": scheme,
            "fraction": fraction,
            "seed": seed,
            "accuracy": accuracy,
        }
        _atomic_write_json(self._path(scheme, fraction, seed), rec)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        if self.folder is None:
            return
        path = self.folder / "run.json"
        if not path.exists():
            _atomic_write_json(path, {"fingerprint": self.fingerprint, **manifest})


# --------------------------------------------------------------------------------------------------
# public entry point


def _as_pair(data: Any, name: str) -> tuple[Tensor, Tensor]:
    if data is None:
        raise ValueError(f"{name} data is required")
    try:
        x, y = as_tensors(data)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from err
    if x.dim() < 2:
        raise ValueError(f"{name} inputs must be (N, ...) with at least one feature dimension")
    return x, y


def _resolve(
    attribution: Any,
    train: tuple[Tensor, Tensor] | None,
    test: tuple[Tensor, Tensor],
    batch_size: int,
) -> tuple[Tensor | None, Tensor]:
    if callable(attribution):
        tr = None
        if train is not None:
            tr = call_attribution(attribution, (train[0],), False, train[1], batch_size)[0]
        te = call_attribution(attribution, (test[0],), False, test[1], batch_size)[0]
    elif isinstance(attribution, (tuple, list)) and len(attribution) == 2:
        tr, te = attribution
        if train is None:
            tr = None
    else:
        raise TypeError(
            "attribution must be a (train_attributions, test_attributions) pair of tensors or a "
            "callable (inputs, target) -> tensor such as a Captum attribution's .attribute"
        )
    if tr is not None:
        check_like((tr,), (train[0],), "train attributions")  # type: ignore[index]
    check_like((te,), (test[0],), "test attributions")
    return tr, te


def diff_roar(
    model_factory: Callable[[], nn.Module] | None,
    train: Any,
    test: Any,
    attribution: Any,
    fractions: Iterable[float] = DIFF_ROAR_FRACTIONS,
    seeds: Iterable[int] = (0, 1, 2, 3, 4),
    *,
    retrain: bool = True,
    trainer: Callable[..., nn.Module] | None = None,
    executor: cf.Executor | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    model: nn.Module | None = None,
    fill: float | str | Tensor = 0.0,
    aggregate: str = "abs",
    channel_dim: int = 1,
    batch_size: int = 256,
    tie_seed: int = 0,
    threads: int | None = 1,
    cache_key: str | None = None,
    progress: bool = True,
) -> DiffROARResult:
    """DiffROAR curve of an attribution: top-k minus bottom-k predictive power, retrained.

    For every fraction ``k`` and seed, two cells are computed: a fresh model from ``model_factory``
    (initialised under ``torch.manual_seed(seed)``) is trained with ``trainer`` on the train set in
    which only the top-k (respectively bottom-k) units of each example are kept and the others set
    to ``fill``, and its accuracy on the equally unmasked test set is that cell's *PredPower*.
    ``diff = mean over seeds of (top - bottom)``. The defaults follow the paper: every coordinate
    ranked on its own by ``|attribution|``, masked coordinates set to 0, ``k`` in
    {5, 10, 20, ..., 100}%, five seeds. Ties in the ranking are broken at random (seeded with
    ``tie_seed``), the same way for every seed, so that a mask-like attribution picks a random
    subset of its equally ranked coordinates rather than the first rows of the image.

    With ``retrain=False`` (the paper's App. C variant) nothing is trained: ``model`` (the model
    that was explained) is scored on the unmasked test sets; ``train`` may be ``None`` and there is
    one deterministic cell per ``(scheme, k)``.

    Args:
        model_factory: zero-argument callable returning a fresh, untrained model of the
            architecture under study (must pickle when an executor with worker processes is used:
            a top-level function, class or ``functools.partial``; see
            :class:`~captum_ext.training.MLPFactory`). Unused when ``retrain=False``.
        train: ``(inputs, labels)`` tensors or a ``Dataset`` (see
            :func:`~captum_ext.training.as_tensors`).
        test: the same for the test set.
        attribution: a ``(train_attributions, test_attributions)`` pair of tensors shaped like the
            inputs, or a callable ``(inputs, target) -> attributions`` (a Captum attribution's
            ``attribute``, called with ``target=`` the labels, in batches of ``batch_size``).
        fractions: unmasking levels in ``(0, 1]``; the number of kept units is
            ``round_half_up(k * P)`` (see :func:`~captum_ext.metrics._masking.count_for_fraction`).
        seeds: retraining seeds.
        retrain: retrain per cell (default) or score ``model`` without retraining.
        trainer: ``trainer(model, (inputs, labels), seed) -> model``; default
            :class:`~captum_ext.training.Trainer` ``()`` (Adam, 5 epochs).
        executor: any ``concurrent.futures.Executor`` to run cells in parallel, e.g.
            ``ProcessPoolExecutor(2)`` or ``dask.distributed.Client(...).get_executor()``.
            ``None`` runs cells one after another in this process.
        cache_dir: folder for the per-cell cache. Each finished cell is written atomically as
            soon as it is known; a rerun with the same data, attribution and configuration reads
            the cached cells and computes only the missing ones.
        model: the model that was explained. Its architecture is checked against the factory's
            models; required when ``retrain=False``. It is never modified.
        fill: value of masked units: a number (default 0), ``"mean"``, ``"channel_mean"`` or a
            tensor broadcastable to the inputs.
        aggregate: ``"abs"`` (default: |a| per coordinate), ``"signed"``, or a per-pixel reduction
            over ``channel_dim`` (``"abs_sum"``, ``"sum"``, ``"abs_max"``, ``"l2"``), in which case
            whole pixels are kept or masked.
        channel_dim: channel dimension for per-pixel aggregation.
        batch_size: batch size of callable attributions and of evaluation.
        tie_seed: seed of the random tie-breaking in the ranking.
        threads: torch intra-op threads inside each cell (default 1: parallelism comes from the
            executor and results do not depend on the machine's thread count); ``None`` leaves it.
        cache_key: extra text mixed into the cache fingerprint (e.g. to tell apart two trainers
            whose descriptions coincide).
        progress: a tqdm progress bar over cells.

    Returns:
        A :class:`DiffROARResult` with ``.fractions``, ``.top``, ``.bottom``, ``.diff``, ``.std``,
        per-cell ``.accuracies`` / ``.cells`` and ``.plot()``.

    Raises:
        ValueError: empty data, attributions not shaped like the inputs, fractions outside
            ``(0, 1]``, no seeds, a factory returning another architecture (or the same object
            twice), ``retrain=False`` without ``model``.

    Examples:
        >>> from captum.attr import Saliency
        >>> from captum_ext.datasets import BlockMNIST
        >>> from captum_ext.training import MLPFactory, Trainer, fit
        >>> train, test = BlockMNIST("train"), BlockMNIST("test")
        >>> factory = MLPFactory((1, 56, 28), hidden=(64,))
        >>> net = fit(factory(), train, epochs=3, progress=False)
        >>> res = diff_roar(factory, train, test, Saliency(net).attribute, model=net,
        ...                 trainer=Trainer(epochs=3))  # doctest: +SKIP
        >>> res.diff  # doctest: +SKIP
    """
    fracs = check_fractions(fractions)
    seed_list = tuple(int(s) for s in seeds) if retrain else (0,)
    if not seed_list:
        raise ValueError("seeds must contain at least one seed")
    if len(set(seed_list)) != len(seed_list):
        raise ValueError(f"seeds must be distinct, got {seed_list}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    test_x, test_y = _as_pair(test, "test")
    train_pair = _as_pair(train, "train") if retrain else None
    if train_pair is not None and train_pair[0].shape[1:] != test_x.shape[1:]:
        raise ValueError(
            f"train inputs {tuple(train_pair[0].shape[1:])} and test inputs "
            f"{tuple(test_x.shape[1:])} differ in shape"
        )
    if not retrain and model is None:
        raise ValueError("retrain=False scores the explained model: pass it as model=...")

    train_attr, test_attr = _resolve(attribution, train_pair, (test_x, test_y), batch_size)
    units = unit_shape(test_x.shape, aggregate, channel_dim)
    gen = torch.Generator().manual_seed(tie_seed)
    test_rank = rank_units(relevance_scores(test_attr, aggregate, channel_dim), gen)
    n_units = test_rank.shape[1]
    counts = tuple(count_for_fraction(f, n_units) for f in fracs)

    if not retrain:
        return _no_retrain(model, test_x, test_y, test_rank, units, fill, fracs, counts, batch_size)

    assert train_pair is not None and train_attr is not None
    if model_factory is None or not callable(model_factory):
        raise TypeError("model_factory must be a zero-argument callable returning a fresh model")
    with torch.random.fork_rng(devices=_rng_devices()):
        probe_a, probe_b = model_factory(), model_factory()
    architecture = _architecture(probe_a)
    if probe_a is probe_b or (model is not None and (probe_a is model or probe_b is model)):
        raise ValueError(
            "model_factory must build a NEW model on every call (retraining must not touch the "
            "explained model); e.g. lambda: MyNet() rather than lambda: net"
        )
    _check_architecture(probe_b, architecture, "model_factory (second call)")
    if model is not None:
        _check_architecture(model, architecture, "model_factory (compared with `model`)")
    del probe_a, probe_b
    train_rank = rank_units(relevance_scores(train_attr, aggregate, channel_dim), gen)
    trainer = Trainer() if trainer is None else trainer

    data = _CellData(
        factory=model_factory,
        trainer=trainer,
        architecture=architecture,
        train_x=train_pair[0].detach(),
        train_y=train_pair[1].detach(),
        test_x=test_x.detach(),
        test_y=test_y.detach(),
        units=units,
        fill=fill,
        threads=threads,
        eval_batch_size=batch_size,
    )
    fingerprint = _fingerprint(data, train_rank, test_rank, aggregate, channel_dim, cache_key)
    cache = _CellCache(cache_dir, fingerprint)
    cache.write_manifest(
        {
            "factory": _describe(model_factory),
            "trainer": _describe(trainer),
            "fill": _describe(fill) if not isinstance(fill, Tensor) else "tensor",
            "aggregate": aggregate,
            "train_shape": list(train_pair[0].shape),
            "test_shape": list(test_x.shape),
        }
    )

    acc = torch.full((2, len(fracs), len(seed_list)), float("nan"), dtype=torch.float64)
    todo: list[tuple[tuple[int, int, int], Callable[[], _CellTask]]] = []
    for m, seed in enumerate(seed_list):
        for j, (f, k) in enumerate(zip(fracs, counts, strict=True)):
            for i, scheme in enumerate(SCHEMES):
                hit = cache.get(scheme, f, seed)
                if hit is not None:
                    acc[i, j, m] = hit
                    continue
                make = _task_maker(scheme, f, k, seed, train_rank, test_rank, data)
                todo.append(((i, j, m), make))

    _run_cells(todo, acc, cache, fracs, seed_list, executor, progress)
    return DiffROARResult(fracs, seed_list, acc, counts, n_units, retrain=True)


def _task_maker(
    scheme: str, f: float, k: int, seed: int, train_rank: Tensor, test_rank: Tensor, data: _CellData
) -> Callable[[], _CellTask]:
    def make() -> _CellTask:
        return _CellTask(
            scheme=scheme,
            fraction=f,
            seed=seed,
            train_keep=keep_mask_from_rank(train_rank, k, scheme),
            test_keep=keep_mask_from_rank(test_rank, k, scheme),
            data=data,
        )

    return make


def _run_cells(
    todo: list[tuple[tuple[int, int, int], Callable[[], _CellTask]]],
    acc: Tensor,
    cache: _CellCache,
    fracs: tuple[float, ...],
    seeds: tuple[int, ...],
    executor: cf.Executor | None,
    progress: bool,
    max_in_flight: int = 32,
) -> None:
    from tqdm.auto import tqdm

    total = acc.numel()
    bar = tqdm(total=total, initial=total - len(todo), desc="DiffROAR cells", disable=not progress)

    def record(where: tuple[int, int, int], value: float) -> None:
        i, j, m = where
        acc[i, j, m] = value
        cache.put(SCHEMES[i], fracs[j], seeds[m], value)
        bar.update(1)

    try:
        if executor is None:
            for where, make in todo:
                record(where, run_cell(make()))
            return
        pending: dict[cf.Future[float], tuple[int, int, int]] = {}
        queue = iter(todo)
        try:
            for where, make in itertools.islice(queue, max_in_flight):
                pending[executor.submit(run_cell, make())] = where
            while pending:
                done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    where = pending.pop(fut)
                    record(where, float(fut.result()))
                for where, make in itertools.islice(queue, len(done)):
                    pending[executor.submit(run_cell, make())] = where
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    finally:
        bar.close()


def _fingerprint(
    data: _CellData,
    train_rank: Tensor,
    test_rank: Tensor,
    aggregate: str,
    channel_dim: int,
    cache_key: str | None,
) -> str:
    h = hashlib.sha256()
    h.update(_CACHE_VERSION.encode())
    for t in (data.train_x, data.train_y, data.test_x, data.test_y, train_rank, test_rank):
        _digest(h, t)
    if isinstance(data.fill, Tensor):
        _digest(h, data.fill)
    else:
        h.update(f"fill={data.fill!r}".encode())
    parts = (
        _describe(data.factory),
        repr(data.architecture),
        _describe(data.trainer),
        f"units={data.units}",
        f"aggregate={aggregate}",
        f"channel_dim={channel_dim}",
        f"threads={data.threads}",
        f"key={cache_key}",
    )
    h.update("|".join(parts).encode())
    return h.hexdigest()


def _no_retrain(
    model: nn.Module,
    test_x: Tensor,
    test_y: Tensor,
    test_rank: Tensor,
    units: tuple[int, ...],
    fill: float | str | Tensor,
    fracs: tuple[float, ...],
    counts: tuple[int, ...],
    batch_size: int,
) -> DiffROARResult:
    acc = torch.empty(2, len(fracs), 1, dtype=torch.float64)
    for j, k in enumerate(counts):
        for i, scheme in enumerate(SCHEMES):
            x = unmask(test_x, keep_mask_from_rank(test_rank, k, scheme), units, fill)
            acc[i, j, 0] = evaluate(model, (x, test_y), batch_size=batch_size)
    return DiffROARResult(fracs, (0,), acc, counts, test_rank.shape[1], retrain=False)
