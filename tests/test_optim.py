import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import minimize

from captum_ext.attr.solvers import (
    caso_objective,
    fista,
    initial_lambda1_grid,
    soft_threshold,
    sparsity_ratio,
    sparsity_search,
)

floats = st.floats(-5, 5, allow_nan=False, width=64)


@given(st.lists(floats, min_size=1, max_size=8), st.floats(0, 3))
def test_soft_threshold_is_exact_prox(xs, thr):
    """prox(x) minimises 1/2|z-x|^2 + thr|z|_1: check first-order optimality and against perturbations."""
    x = torch.tensor(xs, dtype=torch.float64)
    z = soft_threshold(x, thr)

    def obj(v):
        return 0.5 * ((v - x) ** 2).sum() + thr * v.abs().sum()

    base = obj(z)
    for eps in (1e-3, -1e-3, 0.1, -0.1):
        for i in range(len(xs)):
            zz = z.clone()
            zz[i] += eps
            assert obj(zz) >= base - 1e-12
    # subgradient condition: x - z in thr * d|z|
    r = x - z
    nz = z != 0
    assert torch.allclose(r[nz], thr * torch.sign(z[nz]))
    assert bool((r[~nz].abs() <= thr + 1e-12).all())


def _random_problem(seed, d, rank, n=1, m=1):
    gen = torch.Generator().manual_seed(seed)
    B = torch.randn(n, d, rank, generator=gen, dtype=torch.float64)
    g = torch.randn(n, 1, d, generator=gen, dtype=torch.float64)
    H = B @ B.transpose(1, 2)
    top = torch.linalg.eigvalsh(H)[:, -1]
    lam2 = (top / 2 + torch.rand(n, generator=gen, dtype=torch.float64) + 0.05)[:, None, None]

    def hvp(v):
        return torch.einsum("nij,nmj->nmi", H, v)

    return g, H, hvp, lam2


def _scipy_split_solve(g, H, lam1, lam2):
    """Independent solver: D = u - v with u, v >= 0 turns the l1 term linear (L-BFGS-B with bounds)."""
    g, H = g.numpy(), H.numpy()
    d = g.size

    def f(w):
        u, v = w[:d], w[d:]
        D = u - v
        hd = H @ D
        val = -g @ D - 0.5 * D @ hd + lam2 * D @ D + lam1 * (u.sum() + v.sum())
        gd = -g - hd + 2 * lam2 * D
        return val, np.concatenate([gd + lam1, -gd + lam1])

    res = minimize(
        f,
        np.zeros(2 * d),
        jac=True,
        method="L-BFGS-B",
        bounds=[(0, None)] * (2 * d),
        options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10000},
    )
    return res.x[:d] - res.x[d:]


@pytest.mark.parametrize("seed", range(4))
def test_fista_matches_scipy_split_variable_solver(seed):
    g, H, hvp, lam2 = _random_problem(seed, d=7, rank=3)
    lam1 = 0.3
    res = fista(g, hvp, lam1, lam2, n_iter=3000, lr=0.1)
    ref = _scipy_split_solve(g[0, 0], H[0], lam1, float(lam2))
    assert np.allclose(res.delta[0, 0].numpy(), ref, atol=1e-6)
    # and objective values agree (maximisation form)
    ours = caso_objective(res.delta, res.h_delta, g, lam1, lam2)
    theirs = caso_objective(
        torch.from_numpy(ref)[None, None], hvp(torch.from_numpy(ref)[None, None]), g, lam1, lam2
    )
    assert float(ours) >= float(theirs) - 1e-10


@given(
    st.integers(0, 10_000),
    st.integers(1, 8),
    st.floats(0, 1),
    st.integers(1, 15),
    st.sampled_from([0.1, 1.0, 5.0]),
    st.booleans(),
)
def test_fista_backtracking_invariants(seed, d, lam1, n_iter, lr, monotone):
    g, H, hvp, lam2 = _random_problem(seed, d=d, rank=2, n=2, m=1)
    res = fista(g, hvp, lam1, lam2, n_iter=n_iter, lr=lr, monotone=monotone, record=True)
    eps = 1e-9
    for step in res.history:
        # every accepted step satisfies the sufficient-decrease test
        acc = step.accepted
        assert bool((step.s_z[acc] <= step.bound[acc] + eps * (1 + step.bound[acc].abs())).all())
    obj = caso_objective(res.delta, res.h_delta, g, lam1, lam2)
    if monotone:
        # never worse than at D = 0, whose objective is 0
        assert bool((obj >= -1e-12).all())
    # the reported H delta is consistent
    assert torch.allclose(res.h_delta, hvp(res.delta), atol=1e-10)


@pytest.mark.parametrize("seed", range(3))
def test_fista_converges_as_iterations_grow(seed):
    g, H, hvp, lam2 = _random_problem(seed, d=6, rank=2)
    ref = torch.from_numpy(_scipy_split_solve(g[0, 0], H[0], 0.2, float(lam2)))
    errs = [float((fista(g, hvp, 0.2, lam2, n_iter=k).delta[0, 0] - ref).norm()) for k in (5, 50, 1000)]
    assert errs[2] <= errs[1] <= errs[0] + 1e-12
    assert errs[2] < 1e-6


def test_fista_per_example_steps_do_not_couple():
    g, H, hvp, lam2 = _random_problem(0, d=5, rank=2, n=3)
    full = fista(g, hvp, 0.1, lam2, n_iter=10).delta
    for i in range(3):
        Hi = H[i : i + 1]
        alone = fista(
            g[i : i + 1],
            lambda v, Hi=Hi: torch.einsum("nij,nmj->nmi", Hi, v),
            0.1,
            lam2[i : i + 1],
            n_iter=10,
        ).delta
        assert torch.allclose(full[i], alone[0], atol=1e-14)


def test_fista_rejects_bad_hyperparameters():
    g = torch.ones(1, 1, 2)
    with pytest.raises(ValueError):
        fista(g, lambda v: 0 * v, 0.1, 1.0, decay=1.5)
    with pytest.raises(ValueError):
        fista(g, lambda v: 0 * v, 0.1, 1.0, lr=0.0)


def test_initial_grid_stops_at_first_all_zero_value():
    grid = initial_lambda1_grid(torch.tensor([3e-3, 0.5]))
    assert torch.allclose(grid[0, :4], torch.tensor([1e-5, 1e-4, 1e-3, 1e-2]))
    # 0.5 needs 1e-5 ... 1 (6 values); 3e-3 is padded to the same length
    assert grid.shape == (2, 6)
    assert float(grid[1, -1]) >= 0.5 and float(grid[1, -2]) < 0.5


def test_sparsity_search_picks_in_window_with_largest_objective():
    # CAFO-like separable problem: D = soft(g, l1) / (2 l2) has known sparsity for each l1
    g = torch.tensor([[1.0, 0.5, 0.25, 0.125, 0.01, 0.01, 0.01, 0.01]], dtype=torch.float64)

    def solve(lams):
        d = soft_threshold(g[:, None, :], lams[:, :, None]) / 2.0
        return d, caso_objective(d, None, g[:, None, :], lams[:, :, None], 1.0)

    res = sparsity_search(solve, g.abs().amax(1), (0.75, 1.0))
    assert bool(res.in_window.all())
    eta = float(res.sparsity)
    assert 0.75 <= eta < 1.0
    assert eta == float(sparsity_ratio(res.delta))
    # the first sweep gives 1e-1 (eta=.5), 1 (eta=1): halving 0.5 / 0.25 gives eta 7/8 and 6/8;
    # 0.25 has the larger objective (smaller lambda1 in window)
    assert float(res.lambda1) == pytest.approx(0.25)


def test_sparsity_search_reports_when_window_is_unreachable():
    g = torch.ones(1, 4, dtype=torch.float64)  # all features equal: eta jumps from 0 to 1

    def solve(lams):
        d = soft_threshold(g[:, None, :], lams[:, :, None]) / 2.0
        return d, caso_objective(d, None, g[:, None, :], lams[:, :, None], 1.0)

    res = sparsity_search(solve, g.abs().amax(1), (0.5, 0.9), max_rounds=2)
    assert not bool(res.in_window.any())
    with pytest.raises(ValueError):
        sparsity_search(solve, g.abs().amax(1), (0.9, 0.5))
