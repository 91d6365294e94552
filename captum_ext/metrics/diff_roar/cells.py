"""DiffROAR's cells: what every retraining reads, one cell's computation and the run's cache key.

A cell is ``{"scheme", "fraction", "k", "seed", "control"}``; :func:`run_cell` trains a fresh model
on the cell's unmasked train set and scores it. The cells run on :mod:`captum_ext._runner`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..._runner import CellCache, fingerprint
from ...training import evaluate
from .._masking import keep_mask_from_rank, unit_mask_to_input, unmask

__all__ = ["run_cell", "valid_accuracy"]

_FORMAT = "captum_ext.diff_roar/4"
#: fields of :class:`Shared` that cannot change a cell's value (kept out of the cache key)
EVALUATION_ONLY = ("eval_batch_size",)


def architecture_of(model: nn.Module) -> tuple[Any, ...]:
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


def check_architecture(model: nn.Module, expected: tuple[Any, ...], where: str) -> None:
    got = architecture_of(model)
    if got != expected:
        raise ValueError(
            f"{where} returned a model of another architecture than the reference: "
            f"{_architecture_difference(expected, got)}. DiffROAR retrains the SAME architecture; "
            "pass a model_factory that builds it (and `model=` the model that was explained)."
        )


@dataclass(frozen=True)
class Shared:
    """What every cell of a run reads: sent to each worker once (see :func:`captum_ext._runner.run_cells`)."""

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


def rng_devices() -> list[int]:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return list(range(torch.cuda.device_count()))
    return []


def _cell_inputs(d: Shared, cell: dict[str, Any]) -> tuple[Tensor, Tensor]:
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


def run_cell(d: Shared, cell: dict[str, Any]) -> float:
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
        with torch.random.fork_rng(devices=rng_devices()):
            torch.manual_seed(cell["seed"])
            model = d.factory()
            check_architecture(model, d.architecture, "model_factory")
            trained = d.trainer(model, (train_x, d.train_y), cell["seed"])
        trained = model if trained is None else trained
        return float(evaluate(trained, (test_x, d.test_y), batch_size=d.eval_batch_size))
    finally:
        if d.threads is not None:
            torch.set_num_threads(old_threads)


def open_cache(
    cache_dir: str | os.PathLike[str] | None, cache_key: str | None, shared: Shared, manifest: dict[str, Any]
) -> CellCache | None:
    if cache_dir is None:
        return None
    if cache_key is not None and not isinstance(cache_key, str):
        raise TypeError(f"cache_key must be a string, got {type(cache_key).__name__}")
    content = {f.name: getattr(shared, f.name) for f in dataclasses.fields(shared)}
    content["architecture"] = repr(shared.architecture)
    for name in EVALUATION_ONLY:
        del content[name]
    if cache_key is not None:  # the user vouches for the factory and the trainer
        content["factory"] = content["trainer"] = None
    key = fingerprint({"format": _FORMAT, "cache_key": cache_key, **content}, "the model_factory or trainer")
    return CellCache(Path(cache_dir) / key[:24], key, manifest)


def valid_accuracy(value: Any) -> bool:
    """A cached cell value must be an accuracy: a finite number in ``[0, 1]``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0
