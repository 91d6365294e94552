"""Exact sparse CASO on a low-rank Hessian (semismooth Newton on the r-dimensional dual) against
independent float64 oracles: exact active-set enumeration, scipy's split-variable L-BFGS-B, a certified
proximal-gradient run, the Woodbury closed form and the library's certified accelerated solver."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import captum_ext.attr.sparse_dual as sparse_dual_module
from benchmarks._oracles import prox_gradient_oracle
from captum_ext.attr.hessian import LowRankFactor
from captum_ext.attr.solvers import accelerated_prox_gradient
from captum_ext.attr.sparse_dual import sparse_dual_solve

from .test_optim import _scipy_split_solve

F64 = torch.float64


# ---------------------------------------------------------------- problems and oracles
def random_problem(seed, n=3, d=8, r=3, ratio=0.6, lam1_quantile=0.5, pad=True):
    """Factors with a spread of column scales (and, with ``pad``, example 0 padded to a lower rank by zero
    columns), ``lambda2 = ratio * L`` per example, ``lambda1`` a quantile of ``|g|``."""
    gen = torch.Generator().manual_seed(seed)
    B = torch.randn(n, d, r, generator=gen, dtype=F64) * torch.rand(n, 1, r, generator=gen, dtype=F64)
    if pad and r > 1:
        B[0, :, r // 2 :] = 0
    g = torch.randn(n, d, generator=gen, dtype=F64)
    L = top_eigenvalue(B)
    lam2 = ratio * L if r else torch.full((n,), ratio, dtype=F64)
    lam2 = torch.where(lam2 > 0, lam2, torch.full_like(lam2, ratio))  # an all-zero factor: L = 0
    lam1 = torch.quantile(g.abs(), lam1_quantile, dim=1)
    return B, g, lam1, lam2


def top_eigenvalue(B):
    if B.shape[2] == 0:
        return torch.zeros(B.shape[0], dtype=B.dtype)
    return torch.linalg.eigvalsh(B.transpose(1, 2) @ B)[:, -1].clamp_min(0)


def enumerate_active_sets(H, g, lam1, lam2):
    """Exact minimiser by trying every sign pattern (3^d, tiny d): on the support S with signs s,
    (2 lambda2 I - H)_SS D_S = g_S - lambda1 s_S; keep the pattern whose signs and off-support conditions
    |g_i + (H D)_i| <= lambda1 hold. Strong convexity makes it unique."""
    H, g = H.numpy(), g.numpy()
    d = g.size
    A = 2 * lam2 * np.eye(d) - H
    best, best_viol = None, np.inf
    for signs in itertools.product((-1, 0, 1), repeat=d):
        s = np.array(signs, dtype=float)
        S = s != 0
        D = np.zeros(d)
        if S.any():
            D[S] = np.linalg.solve(A[np.ix_(S, S)], g[S] - lam1 * s[S])
        sign_viol = np.maximum(-(D[S] * s[S]), 0).max(initial=0.0)
        off = np.abs(g + H @ D)[~S]
        off_viol = np.maximum(off - lam1, 0).max(initial=0.0)
        viol = max(sign_viol, off_viol)
        if viol < best_viol:
            best, best_viol = D, viol
    assert best_viol <= 1e-9 * (1 + np.abs(g).max())
    return torch.from_numpy(best)


def rel_err(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


# ---------------------------------------------------------------- exactness against oracles
@given(
    st.integers(0, 10_000),
    st.integers(1, 5),
    st.integers(0, 3),
    st.sampled_from([0.501, 0.51, 0.75, 2.0]),
    st.floats(0.0, 0.95),
)
def test_matches_exact_active_set_enumeration(seed, d, r, ratio, q):
    B, g, lam1, lam2 = random_problem(seed, n=2, d=d, r=r, ratio=ratio, lam1_quantile=q)
    res = sparse_dual_solve(B, g, lam1, lam2)
    assert bool(res.converged.all())
    for i in range(2):
        ref = enumerate_active_sets(B[i] @ B[i].T, g[i], float(lam1[i]), float(lam2[i]))
        err = float((res.delta[i] - ref).norm())
        assert err <= 1e-10 * (1 + float(ref.norm()))
        # the certificate is never below the true error
        assert err <= float(res.error_bound[i]) + 1e-15 * (1 + float(ref.norm()))


@pytest.mark.parametrize("seed", range(3))
def test_matches_scipy_split_variable_solver(seed):
    B, g, lam1, lam2 = random_problem(seed, n=2, d=12, r=3, ratio=0.55)
    res = sparse_dual_solve(B, g, lam1, lam2)
    for i in range(2):
        ref = torch.from_numpy(_scipy_split_solve(g[i], B[i] @ B[i].T, float(lam1[i]), float(lam2[i])))
        # L-BFGS-B with bounds is accurate to ~1e-6 here; our side is certified to 1e-8
        assert rel_err(res.delta[i], ref) <= 1e-5
        assert float(res.rel_error_bound[i]) <= 1e-8


@pytest.mark.parametrize("seed", range(3))
def test_tight_lambda2_converges_in_few_newton_steps(seed):
    """2 lambda2 = 1.002 L (condition number 500 for proximal gradient): a handful of Newton steps."""
    B, g, lam1, lam2 = random_problem(seed, n=3, d=60, r=4, ratio=0.501)
    res = sparse_dual_solve(B, g, lam1, lam2)
    assert bool(res.converged.all())
    assert int(res.iterations.max()) <= 8
    for i in range(3):
        ref = torch.from_numpy(
            prox_gradient_oracle(B[i].numpy(), g[i].numpy(), float(lam1[i]), float(lam2[i]))
        )
        err = float((res.delta[i] - ref).norm())
        assert err <= 1e-10 * float(ref.norm())
        assert err <= float(res.error_bound[i]) + 1e-13 * float(ref.norm())


@given(
    st.integers(0, 10_000),
    st.integers(8, 40),
    st.integers(1, 5),
    st.sampled_from([0.505, 0.6]),
    st.lists(st.floats(0.0, 0.99), min_size=1, max_size=2),
)
def test_random_low_rank_problems_match_the_independent_oracle(seed, d, r, ratio, quantiles):
    """Several lambda1 per example (a sweep's layout) on random factors at tight lambda2 (0.501 L: the
    parametrised test above; its oracle is slower)."""
    B, g, _, lam2 = random_problem(seed, n=2, d=d, r=r, ratio=ratio)
    grid = torch.quantile(g.abs(), torch.tensor(quantiles, dtype=F64), dim=1).T  # (n, m)
    m = grid.shape[1]
    res = sparse_dual_solve(B, g[:, None].expand(-1, m, -1), grid, lam2)
    assert bool(res.converged.all())
    for i in range(2):
        for j in range(m):
            Bi, gi = B[i].numpy(), g[i].numpy()
            ref = torch.from_numpy(prox_gradient_oracle(Bi, gi, float(grid[i, j]), float(lam2[i])))
            err = float((res.delta[i, j] - ref).norm())
            assert err <= 1e-9 * max(float(ref.norm()), 1e-300) + 1e-300
            assert err <= float(res.error_bound[i, j]) + 1e-13 * float(ref.norm())


@pytest.mark.parametrize("ratio", [0.505, 1.0])
def test_agrees_with_the_certified_accelerated_solver(ratio):
    B, g, lam1, lam2 = random_problem(7, n=4, d=40, r=5, ratio=ratio)
    res = sparse_dual_solve(B, g, lam1, lam2)
    factor = LowRankFactor(B=B, eigvals=None, rank=None, discarded=None, gradient=g)
    # tol 1e-11: the float64 certificate allows ~1e-12 of round-off at 2 lambda2 = 1.01 L
    apg = accelerated_prox_gradient(
        g[:, None], factor.hvp, lam1[:, None, None], lam2[:, None, None],
        l_upper=top_eigenvalue(B)[:, None, None], tol=1e-11, max_iter=20_000,
    )  # fmt: skip
    assert bool(apg.converged.all())
    for i in range(4):
        assert rel_err(res.delta[i], apg.delta[i, 0]) <= 1e-10
    assert torch.allclose(res.h_delta, factor.hvp(res.delta), rtol=0, atol=1e-12)


# ---------------------------------------------------------------- special cases
def test_lambda1_zero_is_one_newton_step_to_the_woodbury_solve():
    B, g, _, lam2 = random_problem(1, n=3, d=30, r=4, ratio=0.51)
    res = sparse_dual_solve(B, g, 0.0, lam2)
    factor = LowRankFactor(B=B, eigvals=None, rank=None, discarded=None, gradient=g)
    ref = factor.solve_shifted(g, lam2)
    assert res.iterations.tolist() == [1, 1, 1]
    assert (res.delta - ref).abs().max() <= 1e-12 * ref.abs().max()
    assert bool(res.converged.all())


def test_rank_zero_is_the_cafo_soft_threshold():
    g = torch.tensor([[1.0, -0.3, 0.2], [-2.0, 0.0, 0.5]], dtype=F64)
    B = torch.zeros(2, 3, 0, dtype=F64)
    res = sparse_dual_solve(B, g, 0.25, torch.tensor([1.0, 2.0], dtype=F64))
    expected = torch.tensor([[0.375, -0.025, 0.0], [-0.4375, 0.0, 0.0625]], dtype=F64)
    assert torch.allclose(res.delta, expected, rtol=1e-15, atol=0)
    assert res.iterations.tolist() == [0, 0]
    assert bool((res.rel_error_bound <= 1e-14).all())
    assert res.u.shape == (2, 0)


def test_zero_columns_change_nothing():
    B, g, lam1, lam2 = random_problem(3, n=2, d=20, r=3, pad=False)
    padded = torch.cat([B, torch.zeros(2, 20, 2, dtype=F64)], 2)
    a, b = sparse_dual_solve(B, g, lam1, lam2), sparse_dual_solve(padded, g, lam1, lam2)
    assert torch.allclose(a.delta, b.delta, rtol=0, atol=1e-14)
    assert b.u[:, 3:].abs().max() == 0


def test_lambda1_above_the_gradient_gives_exactly_zero():
    B, g, _, lam2 = random_problem(4, n=2, d=10, r=2)
    res = sparse_dual_solve(B, g, g.abs().amax(1) * 1.01, lam2)
    assert torch.equal(res.delta, torch.zeros_like(g))
    assert res.error_bound.tolist() == [0.0, 0.0]
    assert bool(res.converged.all())


def test_all_thresholded_batch_is_certified_at_zero_without_newton_and_matches_the_newton_path():
    """``|g_i| <= lambda1`` everywhere (here with ties ``|g_i| = lambda1``): ``D = 0`` is the KKT point; the
    shortcut returns it with a zero bound, the same as the Newton path inside a mixed batch and the
    active-set oracle; a non-concave ``lambda2`` is still refused."""
    B, g, _, lam2 = random_problem(7, n=2, d=6, r=2, ratio=0.6)
    g[0] = torch.tensor([0.5, -0.5, 0.25, 0.0, -0.125, 0.5], dtype=F64)
    lam1 = torch.tensor([0.5, float(g[1].abs().median())], dtype=F64)
    alone = sparse_dual_solve(B[:1], g[:1], lam1[:1], lam2[:1])
    mixed = sparse_dual_solve(B, g, lam1, lam2)
    assert torch.equal(alone.delta[0], torch.zeros(6, dtype=F64))
    assert torch.equal(mixed.delta[0], alone.delta[0]) and float(mixed.delta[1].abs().max()) > 0
    assert alone.error_bound.tolist() == [0.0] and bool(alone.converged.all())
    assert int(alone.iterations[0]) == 0 and torch.equal(alone.u, torch.zeros(1, 2, dtype=F64))
    ref = enumerate_active_sets(B[0] @ B[0].T, g[0], 0.5, float(lam2[0]))
    assert float(np.abs(ref).max()) == 0.0
    with pytest.raises(ValueError, match="lambda2"):
        sparse_dual_solve(B[:1], g[:1], lam1[:1], 0.4 * top_eigenvalue(B[:1]))


def test_tie_at_the_starting_point():
    """|g_i| = lambda1 exactly at u = 0: the generalised Jacobian takes the inactive branch and Newton
    still terminates on the right active set."""
    B, g, _, lam2 = random_problem(5, n=1, d=6, r=2, ratio=0.6)
    lam1 = 0.5
    g[0, :3] = torch.tensor([0.5, -0.5, 0.5], dtype=F64)
    res = sparse_dual_solve(B, g, lam1, lam2)
    ref = enumerate_active_sets(B[0] @ B[0].T, g[0], lam1, float(lam2[0]))
    assert bool(res.converged.all())
    assert float((res.delta[0] - ref).norm()) <= 1e-12 * (1 + float(ref.norm()))


def test_tie_at_the_solution():
    """A problem built with exact dyadic arithmetic so that |g + H D*| = lambda1 exactly on two
    coordinates where D* = 0 (the degenerate case of the active set)."""
    B = torch.tensor([[[0.5, 0.0], [0.5, 0.5], [-0.5, 0.5], [0.0, 0.5], [0.5, -0.5]]], dtype=F64)
    d_star = torch.tensor([[0.25, -0.5, 0.0, 0.0, 0.125]], dtype=F64)
    lam1, lam2 = 0.5, 1.0  # L <= ||B||_F^2 = 1.75 < 2 lambda2
    w = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0]], dtype=F64)  # ties on coordinates 2 and 3
    g = 2 * lam2 * d_star - B[0] @ (B[0].T @ d_star[0]) + lam1 * w  # all exact in binary
    res = sparse_dual_solve(B, g, lam1, lam2)
    assert bool(res.converged.all())
    assert float((res.delta - d_star).abs().max()) <= 1e-14
    assert float((res.delta - d_star).norm()) <= float(res.error_bound[0]) + 1e-16


def test_several_lambda1_per_example_match_separate_solves():
    B, g, _, lam2 = random_problem(6, n=2, d=25, r=3)
    grid = torch.tensor([[0.0, 0.1, 0.5, 3.0], [0.2, 0.3, 0.4, 0.05]], dtype=F64)
    many = sparse_dual_solve(B, g[:, None].expand(-1, 4, -1), grid, lam2)
    assert many.delta.shape == (2, 4, 25) and many.converged.shape == (2, 4)
    for j in range(4):
        one = sparse_dual_solve(B, g, grid[:, j], lam2)
        assert torch.allclose(many.delta[:, j], one.delta, rtol=0, atol=1e-14)


def test_results_do_not_depend_on_the_batch():
    B, g, lam1, lam2 = random_problem(8, n=3, d=30, r=3, ratio=0.502)
    full = sparse_dual_solve(B, g, lam1, lam2)
    for i in range(3):
        alone = sparse_dual_solve(B[i : i + 1], g[i : i + 1], lam1[i : i + 1], lam2[i : i + 1])
        assert torch.equal(full.delta[i], alone.delta[0])
        assert int(full.iterations[i]) == int(alone.iterations[0])


def test_warm_start_at_the_optimum_needs_no_step():
    B, g, lam1, lam2 = random_problem(9, n=2, d=30, r=3)
    cold = sparse_dual_solve(B, g, lam1, lam2)
    warm = sparse_dual_solve(B, g, lam1, lam2, u0=cold.u)
    assert warm.iterations.tolist() == [0, 0]
    assert torch.allclose(warm.delta, cold.delta, rtol=0, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_row_blocks_of_a_large_factor_give_the_same_answer(monkeypatch, dtype):
    """Large factors are processed in row blocks (no whole float64 copy, bounded Gram temporaries);
    blocks only reorder sums, so the answer moves by round-off, far inside the tolerance."""
    B, g, lam1, lam2 = (t.to(dtype) for t in random_problem(15, n=3, d=40, r=3, ratio=0.51))
    whole = sparse_dual_solve(B, g, lam1, lam2)
    monkeypatch.setattr(sparse_dual_module, "_CHUNK", 16)
    blocked = sparse_dual_solve(B, g, lam1, lam2)
    assert bool(blocked.converged.all())
    assert rel_err(blocked.delta.double(), whole.delta.double()) <= (
        1e-5 if dtype == torch.float32 else 1e-12
    )


# ---------------------------------------------------------------- certificate and failure reporting
@given(st.integers(0, 10_000), st.integers(0, 3), st.booleans(), st.sampled_from([0.501, 0.52, 1.0]))
def test_certificate_is_never_below_the_true_error(seed, max_iter, float32, ratio):
    """Also for stopped-early iterates (max_iter 0-3) and float32, where the oracle solves the same
    (float32-rounded) data exactly in float64."""
    B, g, lam1, lam2 = random_problem(seed, n=2, d=5, r=2, ratio=ratio)
    if float32:
        B, g, lam1, lam2 = (t.float() for t in (B, g, lam1, lam2))
        lam2 = torch.maximum(lam2, 0.501 * top_eigenvalue(B.double()).float())
    res = sparse_dual_solve(B, g, lam1, lam2, max_iter=max_iter)
    for i in range(2):
        H = (B[i].double() @ B[i].double().T).double()
        ref = enumerate_active_sets(H, g[i].double(), float(lam1[i]), float(lam2[i]))
        err = float((res.delta[i].double() - ref).norm())
        assert err <= float(res.error_bound[i]) * (1 + 1e-9) + 1e-15 * (1 + float(ref.norm()))
        if not bool(res.converged[i]):
            assert float(res.rel_error_bound[i]) > (1e-8 if not float32 else 1e-4)


def test_unfinished_solve_is_reported_not_converged():
    B, g, lam1, lam2 = random_problem(10, n=2, d=50, r=4, ratio=0.501)
    res = sparse_dual_solve(B, g, lam1, lam2, max_iter=0)
    assert not bool(res.converged.any())
    assert bool(torch.isfinite(res.error_bound).all()) and bool((res.rel_error_bound > 1e-8).all())
    assert res.iterations.tolist() == [0, 0]


def test_float32_meets_its_tolerance():
    """float32 at 2 lambda2 = 1.01 L: round-off of D itself is eps32 |D| ~ 1e-7 |D|; the residual it
    leaves is amplified by the condition number 2 lambda2 / (2 lambda2 - L) = 101 in the bound, so the
    default tolerance 1e-4 is met with a margin and the true error (against float64 on the same data)
    stays within 100 eps32 = 1.2e-5."""
    B, g, lam1, lam2 = random_problem(11, n=4, d=200, r=6, ratio=0.505)
    B32, g32, l1, l2 = (t.float() for t in (B, g, lam1, lam2))
    res = sparse_dual_solve(B32, g32, l1, l2)
    assert res.delta.dtype == torch.float32 and bool(res.converged.all())
    ref = sparse_dual_solve(B32.double(), g32.double(), l1.double(), l2.double())
    for i in range(4):
        assert rel_err(res.delta[i].double(), ref.delta[i]) <= 100 * torch.finfo(torch.float32).eps


def test_float32_confident_scales_are_refined_to_tolerance():
    """A confident prediction's factor (|B| ~ 1e-14, |g| ~ 1e-30, g nearly along B's top column, paper
    Thm. 4) at 2 lambda2 = 1.01 L: float32 sums over d = 3000 leave the dual variable ~1e-4 off; the
    float64-product refinement brings every example within the default tolerance 1e-4, and the
    certificate covers the true error against float64 on the same data."""
    gen = torch.Generator().manual_seed(0)
    n, d = 4, 3000
    B = torch.randn(n, d, 2, generator=gen, dtype=F64) * torch.tensor([1.0, 0.1], dtype=F64) * 1e-14
    g = B[:, :, 0] * 1e-16 + torch.randn(n, d, generator=gen, dtype=F64) * 1e-32
    B, g = B.float(), g.float()
    lam2, lam1 = (0.505 * top_eigenvalue(B.double())).float(), g.abs().median(1).values
    res = sparse_dual_solve(B, g, lam1, lam2)
    ref = sparse_dual_solve(B.double(), g.double(), lam1.double(), lam2.double())
    assert bool(res.converged.all()) and bool(ref.converged.all())
    for i in range(n):
        err = rel_err(res.delta[i].double(), ref.delta[i])
        assert err <= 1e-4
        assert err <= float(res.rel_error_bound[i]) + 1e-8  # + the float64 reference's own tolerance


# ---------------------------------------------------------------- errors
def test_refuses_a_nonconcave_problem():
    B, g, lam1, _ = random_problem(12, n=2, d=10, r=2)
    L = top_eigenvalue(B)
    with pytest.raises(ValueError, match=r"lambda2 > L / 2"):
        sparse_dual_solve(B, g, lam1, 0.5 * L)
    with pytest.raises(ValueError, match="example 1"):
        sparse_dual_solve(B, g, lam1, torch.stack([L[0], 0.4 * L[1]]))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda B, g, l1, l2: (B, g.clone().fill_(float("nan")), l1, l2), "finite"),
        (lambda B, g, l1, l2: (B, g[:, :-1], l1, l2), "shape"),
        (lambda B, g, l1, l2: (B[0], g, l1, l2), "shape"),
        (lambda B, g, l1, l2: (B, g, -l1, l2), "lambda1"),
        (lambda B, g, l1, l2: (B, g, l1[:1].expand(3), l2), "lambda1"),
        (lambda B, g, l1, l2: (B, g.float(), l1, l2), "dtype"),
        (lambda B, g, l1, l2: (B[:, :0], g[:, :0], l1, l2), "no features"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, match):
    with pytest.raises(ValueError, match=match):
        sparse_dual_solve(*change(*random_problem(13, n=2, d=6, r=2)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_follows_the_input_device():
    B, g, lam1, lam2 = random_problem(14, n=2, d=30, r=3, ratio=0.505)
    cpu = sparse_dual_solve(B, g, lam1, lam2)
    gpu = sparse_dual_solve(B.cuda(), g.cuda(), lam1.cuda(), lam2.cuda())
    assert gpu.delta.device.type == "cuda" and bool(gpu.converged.all())
    assert torch.allclose(gpu.delta.cpu(), cpu.delta, rtol=0, atol=1e-12)
