"""The demo's attribution maps: every method of :data:`~captum_ext.demo.config.METHODS`, in batches.

All methods explain the cross-entropy of the true class (Captum's ``target``) of a float64 copy of
the trained model; the caller passes float64 inputs. For predictions within about 1e-7 of
certainty, float32 cross-entropy gradients (which CAFO and CASO explain) are dominated by the
rounding of ``p_t - 1`` and the maps of such images would show rounding noise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .config import METHODS, SPARSITY_WINDOW, DemoConfig

__all__ = ["Maps", "attribution_maps", "dense_caso_cafo", "probe_hessian"]

Method = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Maps:
    """Maps of every method for one batch of images, with timings and CASO's per-image details.

    Attributes:
        maps: method name -> maps shaped like the inputs (detached).
        wall: method name -> wall-clock seconds.
        cpu: method name -> CPU seconds of this process (``time.process_time``).
        details: per-image lists from sparse CASO's ``last_details``: ``lambda1``, ``zeros``,
            ``in_window`` (1.0 where the sparsity search hit its window), ``converged`` (1.0 where
            the solver reached its tolerance) and ``error_bound`` (certified bound on the relative
            error of the map).
    """

    maps: dict[str, Tensor]
    wall: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    details: dict[str, list[float]] = field(default_factory=dict)


def probe_hessian(model: nn.Module, x: Tensor, y: Tensor, c1: float) -> str:
    """The Hessian path CASO's ``hessian="auto"`` probe picks for ``model`` on ``x``.

    Returns:
        ``"closed_form"`` (exact for piecewise-linear nets) or ``"exact"``.
    """
    from ..attr import CASO

    caso = CASO(model)
    caso.attribute(x.detach().requires_grad_(), target=y, c1=c1, hessian="auto")
    return str(caso.last_details.hessian)


def _methods(
    model: nn.Module, cfg: DemoConfig, nt_samples: int, hessian: str, sink: dict[str, list[Any]]
) -> dict[str, tuple[Method, int]]:
    """Method name -> (function of a batch ``(x, y)``, images per call)."""
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    from ..attr import CAFO, CASO

    nt = dict(nt_type="smoothgrad", nt_samples=nt_samples, stdevs=cfg.nt_stdev)
    caso_kw = dict(c1=cfg.c1, hessian=hessian, tol=cfg.caso_tol)

    def sparse_caso(a: Tensor, b: Tensor) -> Tensor:
        caso = CASO(model)
        out = caso.attribute(a, target=b, sparsity=SPARSITY_WINDOW, **caso_kw)
        sink["sparse"].append(caso.last_details)
        return out

    runs: dict[str, tuple[Method, int]] = {
        "Saliency": (lambda a, b: Saliency(model).attribute(a, target=b, abs=False), 512),
        "IntegratedGradients": (
            lambda a, b: IntegratedGradients(model).attribute(
                a, target=b, n_steps=cfg.ig_steps, internal_batch_size=512
            ),
            64,
        ),
        "SmoothGrad": (
            lambda a, b: NoiseTunnel(Saliency(model)).attribute(a, target=b, abs=False, **nt),
            max(1, 256 // nt_samples),
        ),
        "CAFO": (lambda a, b: CAFO(model).attribute(a, target=b), 512),
        "CASO": (lambda a, b: CASO(model).attribute(a, target=b, **caso_kw), 256),
        "sparse CASO": (sparse_caso, 64),
        # one image per call: the fastest on CPU (the noisy copies of larger batches crowd the cache)
        "SmoothCASO": (
            lambda a, b: NoiseTunnel(CASO(model)).attribute(
                a, target=b, sparsity=SPARSITY_WINDOW, **caso_kw, **nt
            ),
            1,
        ),
    }
    assert tuple(runs) == METHODS
    return runs


def attribution_maps(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: DemoConfig,
    *,
    nt_samples: int,
    seed: int,
    hessian: str = "auto",
    progress: bool = False,
    desc: str = "",
) -> Maps:
    """Maps of every demo method for ``x`` (targets ``y``), timed per method.

    Args:
        model: the float64 model to explain (eval mode, parameters frozen).
        x: ``(N, 1, H, W)`` float64 images.
        y: ``(N,)`` true classes (the explained targets).
        cfg: the run's configuration (``c1``, ``caso_tol``, ``ig_steps``, ``nt_stdev``).
        nt_samples: NoiseTunnel samples of SmoothGrad and SmoothCASO.
        seed: seed of the NoiseTunnel noise (one stream per method).
        hessian: CASO's Hessian path (see :func:`probe_hessian`).
        progress: tqdm bars per method.
        desc: suffix of the progress bars.

    Returns:
        A :class:`Maps`.
    """
    from tqdm.auto import tqdm

    x = x.detach()
    sink: dict[str, list[Any]] = {"sparse": []}
    out = Maps(maps={})
    for i, (name, (run, chunk)) in enumerate(_methods(model, cfg, nt_samples, hessian, sink).items()):
        torch.manual_seed(seed + 1000 + i)  # the noise of the NoiseTunnel methods
        t0, c0 = time.perf_counter(), time.process_time()
        starts = range(0, len(x), chunk)
        parts = [
            run(x[s : s + chunk].requires_grad_(), y[s : s + chunk]).detach()
            for s in tqdm(starts, desc=f"{name} {desc}".strip(), disable=not progress, leave=False)
        ]
        out.maps[name] = torch.cat(parts)
        out.wall[name] = time.perf_counter() - t0
        out.cpu[name] = time.process_time() - c0

    def field_of(attr: str) -> list[float]:
        return torch.cat(
            [getattr(d, attr).detach().cpu().flatten().double() for d in sink["sparse"]]
        ).tolist()

    out.details = {
        "lambda1": field_of("lambda1"),
        "zeros": field_of("sparsity"),
        "in_window": field_of("in_window"),
        "converged": field_of("converged"),
        "error_bound": field_of("error_bound"),
    }
    return out


def dense_caso_cafo(
    model: nn.Module, x: Tensor, y: Tensor, c1_values: tuple[float, ...], hessian: str, chunk: int = 256
) -> tuple[Tensor, dict[float, Tensor], Tensor, Tensor]:
    """Dense CAFO and CASO maps (``lambda1 = 0``: closed-form solves), CASO for each margin ``c1``.

    Returns:
        ``(cafo, caso, top_eigenvalue, rank)``: CAFO's maps, ``c1 -> CASO's maps``, and per image
        the top eigenvalue ``L`` of the input Hessian of the loss and the rank of its closed-form
        factor (0 on the exact path).
    """
    from ..attr import CAFO, CASO

    cafo, tops, ranks = [], [], []
    caso: dict[float, list[Tensor]] = {c1: [] for c1 in c1_values}
    for s in range(0, len(x), chunk):
        xs, ys = x[s : s + chunk].detach().requires_grad_(), y[s : s + chunk]
        cafo.append(CAFO(model).attribute(xs, target=ys).detach())
        for c1 in c1_values:
            solver = CASO(model)
            caso[c1].append(solver.attribute(xs, target=ys, c1=c1, hessian=hessian).detach())
        tops.append(solver.last_details.top_eigenvalue.detach().cpu().double())
        ranks.append(solver.last_details.rank.detach().cpu())
    return torch.cat(cafo), {c1: torch.cat(v) for c1, v in caso.items()}, torch.cat(tops), torch.cat(ranks)
