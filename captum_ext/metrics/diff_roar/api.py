"""DiffROAR's entry points: :func:`diff_roar` (retrained) and :func:`diff_roar_without_retraining`."""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from captum.log import log_usage
from torch import Tensor, nn

from ..._format import format_additional_args
from ..._runner import ExecutionOptions, run_cells
from ...training import Trainer
from .._common import check_batch_size, check_eval_mode, check_finite, check_labels, forward_batched
from .._masking import (
    DIFF_ROAR_FRACTIONS,
    check_fractions,
    count_for_fraction,
    keep_mask_from_rank,
    rank_units,
    relevance_scores,
    unit_shape,
    unmask,
)
from .._validate import UNIT_INTERVAL, validate
from .cells import (
    Shared,
    architecture_of,
    check_architecture,
    open_cache,
    rng_devices,
    run_cell,
    valid_accuracy,
)
from .checks import as_pair, attributions_of, check_counts, num_classes
from .result import SCHEMES, DiffROARResult, leakage_message, leakage_threshold, majority_rate

__all__ = ["diff_roar", "diff_roar_without_retraining"]

DEFAULT_SEEDS = (0, 1, 2, 3, 4)


def _check_baselines(baselines: Any) -> None:
    if (
        isinstance(baselines, (int, float))
        and not isinstance(baselines, bool)
        and not math.isfinite(baselines)
    ):
        raise ValueError(f"baselines must be finite, got {baselines!r}; use 0.0, 'mean' or a finite tensor")
    if isinstance(baselines, Tensor):
        check_finite(baselines, "baselines")


def _ranks(attr: Tensor, aggregate: str, channel_dim: int, gen: torch.Generator) -> Tensor:
    return rank_units(relevance_scores(attr, aggregate, channel_dim), gen)


def _accuracy(
    model: Callable[..., Tensor], x: Tensor, y: Tensor, batch: int, args: tuple[Any, ...] = ()
) -> float:
    out = forward_batched(model, (x,), args, batch)
    return float((out.argmax(dim=1) == y.to(out.device)).double().mean())


@log_usage()
def diff_roar_without_retraining(
    forward_func: Callable[..., Tensor],
    test: Any,
    attributions: Tensor | Callable[..., Any],
    *,
    fractions: Iterable[float] = DIFF_ROAR_FRACTIONS,
    attribution_target: str = "prediction",
    additional_forward_args: Any = None,
    baselines: float | str | Tensor = 0.0,
    aggregate: str = "abs",
    channel_dim: int = 1,
    max_examples_per_batch: int | None = None,
    tie_seed: int = 0,
    show_progress: bool = False,
) -> DiffROARResult:
    """DiffROAR without retraining (Shah et al., App. C): the explained model itself scored on the
    test set with only the top-k, respectively bottom-k, units kept.

    One deterministic cell per ``(scheme, k)``; nothing is trained, so there are no seeds, no
    executor and no cache (see :func:`diff_roar` for the arguments shared with it).

    Args:
        forward_func: the explained model, returning ``(batch, classes)`` scores, in eval mode.
        test: ``(inputs, labels)`` tensors or a ``Dataset``.
        attributions: test attributions shaped like the inputs, or a callable
            ``(inputs, target) -> attributions``.
        fractions: unmasking levels in ``(0, 1]``.
        attribution_target: ``"prediction"`` or ``"label"`` for a callable ``attributions``.
        additional_forward_args: extra arguments of ``forward_func`` (and of the callable).
        baselines: value of masked units (a finite number, ``"mean"``, ``"channel_mean"`` or a tensor).
        aggregate: ``"abs"``, ``"signed"`` or a per-pixel reduction (see :func:`diff_roar`).
        channel_dim: channel dimension for per-pixel aggregation.
        max_examples_per_batch: batch size of attribution calls and of evaluation.
        tie_seed: seed of the random tie-breaking in the ranking.
        show_progress: a tqdm bar over the ``2 F`` evaluations.

    Returns:
        A :class:`DiffROARResult` with ``retrain=False`` and one pseudo-seed ``0``.

    Examples:
        >>> from captum_ext.datasets import SignedBasisToy
        >>> test = SignedBasisToy(32, d=10, seed=2)
        >>> net = torch.nn.Linear(10, 2).eval()
        >>> res = diff_roar_without_retraining(net, test, test.signal_masks.float(), fractions=(0.5, 1.0))
        >>> res.accuracies.shape, res.retrain
        (torch.Size([2, 2, 1]), False)
    """
    from tqdm.auto import tqdm

    fracs = check_fractions(fractions)
    check_batch_size(max_examples_per_batch)
    _check_baselines(baselines)
    if forward_func is None:
        raise ValueError("DiffROAR without retraining scores the explained model: pass it as forward_func")
    check_eval_mode(forward_func)
    args = format_additional_args(additional_forward_args)
    test_x, test_y = as_pair(test, "test")
    classes = num_classes(forward_func, test_x, args, "forward_func")
    test_y = check_labels(test_y, test_x.shape[0], classes, "test labels").to(test_y.device)
    attr = attributions_of(
        (None, attributions) if not callable(attributions) else attributions,
        forward_func,
        {"test": (test_x, test_y)},
        attribution_target,
        additional_forward_args,
        max_examples_per_batch,
    )
    units = unit_shape(test_x.shape, aggregate, channel_dim)
    rank = _ranks(attr["test"], aggregate, channel_dim, torch.Generator().manual_seed(tie_seed))
    counts = tuple(count_for_fraction(f, rank.shape[1]) for f in fracs)
    check_counts(fracs, counts, rank.shape[1])
    eval_batch = max_examples_per_batch or 1024
    acc = torch.empty(2, len(fracs), 1, dtype=torch.float64)
    with tqdm(total=2 * len(fracs), desc="DiffROAR (no retraining)", disable=not show_progress) as bar:
        for j, k in enumerate(counts):
            for i, scheme in enumerate(SCHEMES):
                x = unmask(test_x, keep_mask_from_rank(rank, k, scheme), units, baselines, channel_dim)
                acc[i, j, 0] = _accuracy(forward_func, x, test_y, eval_batch, args)
                bar.update(1)
    target = attribution_target if callable(attributions) else "given"
    return DiffROARResult(fracs, (0,), acc, counts, rank.shape[1], retrain=False, attribution_target=target)


@log_usage()
def diff_roar(
    forward_func: Callable[..., Tensor] | None,
    train: Any,
    test: Any,
    attributions: Any,
    *,
    model_factory: Callable[[], nn.Module] | None = None,
    fractions: Iterable[float] = DIFF_ROAR_FRACTIONS,
    seeds: Iterable[int] | None = None,
    retrain: bool = True,
    trainer: Callable[..., nn.Module] | None = None,
    attribution_target: str = "prediction",
    additional_forward_args: Any = None,
    baselines: float | str | Tensor = 0.0,
    aggregate: str = "abs",
    channel_dim: int = 1,
    max_examples_per_batch: int | None = None,
    tie_seed: int = 0,
    mask_control: bool | None = None,
    leakage_tolerance: float = 0.1,
    execution: ExecutionOptions | None = None,
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

    Without retraining (the paper's App. C variant) see :func:`diff_roar_without_retraining`;
    ``retrain=False`` calls it (and refuses the options that only retraining uses).

    **Scale-out** (``execution=ExecutionOptions(...)``, see
    :class:`~captum_ext._runner.ExecutionOptions`). Cells run in this process (``executor=None``),
    in a process pool created here (``executor=2``: the data are pickled once to a temporary file
    that each worker reads once; workers exit if this process dies), on a Dask cluster
    (``executor=client``: the data are pickled once, with cloudpickle when they hold lambdas, and
    scattered to every worker), or on any ``concurrent.futures`` process executor. The README's
    scale-out section gives the commands for several machines. ``model_factory`` and ``trainer``
    must be importable on Dask workers (install the package that defines them there, or
    ``client.upload_file("my_module.py")``) unless they are lambdas or closures (sent by value).
    The cache is read and written by this (the coordinating) process only.

    **Cache.** With ``cache_dir`` every finished cell is written at once (atomically, with its key
    and a checksum, verified on read), so a killed run resumes where it stopped, a finished run is
    read back, and concurrent runs on one cache compute each cell once. The key digests by content
    the data, the attributions' ranking, every option that can change a value (not the evaluation
    batch size), ``model_factory`` and ``trainer`` (code, closure values, defaults, referenced
    globals and module attributes, fields, class attributes; the code of packages installed from a
    local folder). What cannot be digested raises a
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
        seeds: retraining seeds (default ``(0, 1, 2, 3, 4)``).
        retrain: ``False`` calls :func:`diff_roar_without_retraining` (which see).
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
            at once for attributions, 1024 for evaluation); not part of the cache key.
        tie_seed: seed of the random tie-breaking in the ranking.
        mask_control: compute the mask-only control (see above).
        leakage_tolerance: the smallest margin over chance that counts as leakage.
        execution: where the cells run and whether they are cached (an
            :class:`~captum_ext._runner.ExecutionOptions`; default: serially, no cache, one torch
            thread per cell).
        show_progress: a tqdm progress bar over cells.

    Returns:
        A :class:`DiffROARResult` with ``.fractions``, ``.top``, ``.bottom``, ``.diff``, ``.std``,
        per-cell ``.accuracies`` / ``.cells``, ``.control``, ``.leakage``, ``.to_dict()`` and
        ``.plot()``.

    Raises:
        ValueError: empty, 1-D or non-finite data, attributions or baselines, labels outside the
            model's classes, attributions not shaped like the inputs, fractions outside ``(0, 1]``
            or keeping no unit, no seeds, a factory returning another architecture (or the same
            object twice), ``forward_func`` in training mode, ``retrain=False`` with options only
            retraining uses.
        TypeError: a cache key that cannot be computed (pass ``cache_key``), bad argument types,
            tuple inputs (retrained models take one tensor).

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
    if not retrain:
        return _without_retraining(
            forward_func,
            test,
            attributions,
            model_factory=model_factory,
            seeds=seeds,
            trainer=trainer,
            mask_control=mask_control,
            execution=execution,
            fractions=fractions,
            attribution_target=attribution_target,
            additional_forward_args=additional_forward_args,
            baselines=baselines,
            aggregate=aggregate,
            channel_dim=channel_dim,
            max_examples_per_batch=max_examples_per_batch,
            tie_seed=tie_seed,
            show_progress=show_progress,
        )
    opts = ExecutionOptions() if execution is None else execution
    if not isinstance(opts, ExecutionOptions):
        raise TypeError(f"execution must be an ExecutionOptions, got {type(opts).__name__}")
    if isinstance(opts.executor, cf.ThreadPoolExecutor):
        raise TypeError(
            "executor: a ThreadPoolExecutor cannot run DiffROAR cells (each cell seeds torch's global RNG, "
            "which threads share); use a number of worker processes, a ProcessPoolExecutor or Dask"
        )
    fracs = check_fractions(fractions)
    seed_list = tuple(int(s) for s in (DEFAULT_SEEDS if seeds is None else seeds))
    if not seed_list:
        raise ValueError("seeds must contain at least one seed")
    if len(set(seed_list)) != len(seed_list):
        raise ValueError(f"seeds must be distinct, got {seed_list}")
    check_batch_size(max_examples_per_batch)
    validate(leakage_tolerance=(leakage_tolerance, UNIT_INTERVAL))
    _check_baselines(baselines)
    if model_factory is None or not callable(model_factory):
        raise TypeError("model_factory must be a zero-argument callable returning a fresh model")
    if forward_func is not None:
        check_eval_mode(forward_func)
    test_x, test_y = as_pair(test, "test")
    train_x, train_y = as_pair(train, "train")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ValueError(
            f"train inputs {tuple(train_x.shape[1:])} and test inputs {tuple(test_x.shape[1:])} "
            "differ in shape"
        )

    # classes: from the factory's model; labels must lie in range
    with torch.random.fork_rng(devices=rng_devices()):
        probe_a, probe_b = model_factory(), model_factory()
    architecture = architecture_of(probe_a)
    if probe_a is probe_b or (forward_func is not None and forward_func in (probe_a, probe_b)):
        raise ValueError(
            "model_factory must build a NEW model on every call (retraining must not touch the "
            "explained model); e.g. lambda: MyNet() rather than lambda: net"
        )
    check_architecture(probe_b, architecture, "model_factory (second call)")
    if isinstance(forward_func, nn.Module):
        check_architecture(forward_func, architecture, "model_factory (compared with forward_func)")
    classes = num_classes(probe_a.eval(), test_x, (), "model_factory's model")
    del probe_a, probe_b
    sets = {
        name: (x, check_labels(y, x.shape[0], classes, f"{name} labels").to(y.device))
        for name, (x, y) in {"train": (train_x, train_y), "test": (test_x, test_y)}.items()
    }
    test_y = sets["test"][1]

    attr = attributions_of(
        attributions, forward_func, sets, attribution_target, additional_forward_args, max_examples_per_batch
    )
    units = unit_shape(test_x.shape, aggregate, channel_dim)
    gen = torch.Generator().manual_seed(tie_seed)
    test_rank = _ranks(attr["test"], aggregate, channel_dim, gen)
    n_units = test_rank.shape[1]
    counts = tuple(count_for_fraction(f, n_units) for f in fracs)
    check_counts(fracs, counts, n_units)
    train_rank = _ranks(attr["train"], aggregate, channel_dim, gen)
    shared = Shared(
        factory=model_factory,
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
        threads=opts.threads,
        eval_batch_size=max_examples_per_batch or 1024,
    )
    manifest = {
        "train_shape": list(train_x.shape),
        "test_shape": list(test_x.shape),
        "aggregate": aggregate,
        "cache_key": opts.cache_key,
        "trainer": repr(shared.trainer)[:500],
    }
    cache = open_cache(opts.cache_dir, opts.cache_key, shared, manifest)
    with_control = True if mask_control is None else bool(mask_control)
    cells = [
        {"scheme": scheme, "fraction": f, "k": k, "seed": seed, "control": False}
        for seed in seed_list
        for f, k in zip(fracs, counts, strict=True)
        for scheme in SCHEMES
    ]
    if with_control:
        cells += [
            {"scheme": scheme, "fraction": f, "k": k, "seed": seed_list[0], "control": True}
            for f, k in zip(fracs, counts, strict=True)
            for scheme in SCHEMES
        ]
    values, stats = run_cells(
        run_cell,
        shared,
        cells,
        executor=opts.executor,
        cache=cache,
        max_in_flight=opts.max_in_flight,
        show_progress=show_progress,
        desc="DiffROAR cells",
        worker_threads=opts.threads,
        check=valid_accuracy,
    )
    n_main = 2 * len(fracs) * len(seed_list)
    acc = (
        torch.tensor(values[:n_main], dtype=torch.float64)
        .reshape(len(seed_list), len(fracs), 2)
        .permute(2, 1, 0)
    )
    control = None
    if with_control:
        control = torch.tensor(values[n_main:], dtype=torch.float64).reshape(len(fracs), 2).T.contiguous()
    chance = majority_rate(test_y)
    result = DiffROARResult(
        fracs,
        seed_list,
        acc.contiguous(),
        counts,
        n_units,
        retrain=True,
        control=control,
        chance=chance,
        leakage_threshold=leakage_threshold(chance, test_x.shape[0], float(leakage_tolerance)),
        attribution_target=attribution_target if callable(attributions) else "given",
        timings=dataclasses.asdict(stats),
    )
    if result.leakage:
        warnings.warn(leakage_message(result), UserWarning, stacklevel=3)
    return result


def _without_retraining(forward_func: Any, test: Any, attributions: Any, **kw: Any) -> DiffROARResult:
    """``diff_roar(..., retrain=False)``: refuse the options only retraining uses, then delegate."""
    only_retraining = ("model_factory", "seeds", "trainer", "mask_control", "execution")
    given = [name for name in only_retraining if kw.pop(name) is not None]
    if given:
        raise ValueError(
            f"retrain=False trains nothing: {', '.join(given)} would be ignored; drop them "
            "(or call diff_roar_without_retraining)"
        )
    if callable(attributions):
        test_attr = attributions
    elif isinstance(attributions, (tuple, list)) and len(attributions) == 2:
        test_attr = attributions[1]
    else:
        raise TypeError(
            "attributions must be a (train_attributions, test_attributions) pair (train may be None) "
            "or a callable (inputs, target) -> attributions"
        )
    return diff_roar_without_retraining(forward_func, test, test_attr, **kw)


def _compact_rank(rank: Tensor) -> Tensor:
    """Ranks in the smallest integer type that holds them (they travel to every worker)."""
    p = rank.shape[1]
    dtype = torch.int16 if p <= 2**15 else torch.int32 if p <= 2**31 else torch.int64
    return rank.to(dtype)
