"""Top eigenpairs of A = diag(p) - pp^T by the secular equation, against a dense float64 eigh."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from captum_ext.attr.hessian import (
    choose_rank,
    kept_eigenpairs,
    softmax_covariance,
    softmax_covariance_top_eigh,
)

torch.set_num_threads(1)


def _check_pairs(p: torch.Tensor, k: int) -> None:
    """Eigenvalues as eigh's, residuals and orthonormality at float64 precision (relative to lam_max)."""
    A = softmax_covariance(p)
    lam, U = softmax_covariance_top_eigh(p, k)
    ref = torch.linalg.eigvalsh(A).flip(1)[:, :k]
    scale = ref[:, :1].clamp_min(torch.finfo(p.dtype).tiny)
    c = p.shape[1]
    tol = 8 * c * torch.finfo(p.dtype).eps
    assert bool(((lam - ref).abs() <= tol * scale).all())
    assert bool(((A @ U - U * lam[:, None, :]).abs().amax(1) <= tol * scale).all())
    floor = c * torch.finfo(p.dtype).eps * scale  # eigh's own resolution: below it "zero" is all it knows
    for i in range(p.shape[0]):
        keep = lam[i] > floor[i]
        Ui = U[i][:, keep]
        torch.testing.assert_close(Ui.T @ Ui, torch.eye(Ui.shape[1], dtype=p.dtype), rtol=0, atol=1e-13)
        # the kept part of A is the same operator as eigh's where the k-th eigenvalue is well separated
        # from the next (inside a cluster the eigenvectors are not unique)
        full, U_ref = torch.linalg.eigh(A[i])
        full, U_ref = full.flip(0), U_ref.flip(1)
        j = int(keep.sum())
        if j and (j == c or bool(full[j - 1] - full[j] > 0.1 * full[0])):
            torch.testing.assert_close(
                (Ui * lam[i][keep]) @ Ui.T,
                (U_ref[:, :j] * full[:j]) @ U_ref[:, :j].T,
                rtol=0,
                atol=float(10 * tol * scale[i]),
            )


@given(
    c=st.integers(2, 60),
    scale=st.floats(0.01, 60.0),
    seed=st.integers(0, 2**31 - 1),
    k=st.integers(1, 8),
)
def test_random_probabilities_match_dense_eigh(c, scale, seed, k):
    gen = torch.Generator().manual_seed(seed)
    p = torch.softmax(scale * torch.randn(2, c, generator=gen, dtype=torch.float64), 1)
    _check_pairs(p, min(k, c))


@pytest.mark.parametrize(
    "p",
    [
        [1 - 1e-12, 1e-12, 0.0, 0.0],
        [1 - 1e-12, 0.5e-12, 0.5e-12],  # a tie below the top
        [0.25, 0.25, 0.25, 0.25],  # all tied: eigenvalue 1/4 three times, then 0
        [0.4, 0.2, 0.2, 0.1, 0.1],
        [0.5, 0.5],
        [1.0, 0.0],  # A = 0
        [1.0, 2.5554757766121047e-22, 1.2631093957630967e-46],  # p_t rounds to 1 exactly
    ],
)
def test_extreme_probabilities(p):
    t = torch.tensor([p], dtype=torch.float64)
    _check_pairs(t, t.shape[1])


def test_thousand_classes_confident_and_flat():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, 1000, generator=gen, dtype=torch.float64)
    z[0, :3] += torch.tensor([40.0, 30.0, 29.0], dtype=torch.float64)
    z[1, 0] += 20.0
    _check_pairs(torch.softmax(z, 1), 8)


def _decaying_probabilities() -> torch.Tensor:
    """c = 300 (the secular path needs >= 128 classes); kept ranks at rank_tol 1e-3 / 1e-6 / 0 are about
    4 / 7 / 15 (8-pair pass), 14 / 28 / 61 (64-pair pass), 139 / 271 / 299 (dense fallback) and a
    confident row with p_max = 1 - 2e-11."""
    gen = torch.Generator().manual_seed(1)
    decay = torch.tensor([[2.0], [0.5], [0.05], [0.5]], dtype=torch.float64)
    z = -decay * torch.arange(300, dtype=torch.float64) + 0.1 * torch.randn(
        4, 300, generator=gen, dtype=torch.float64
    )
    z[3, 0] += 25.0
    return torch.softmax(z[:, torch.randperm(300, generator=gen)], 1)


@pytest.mark.parametrize("rank_tol", [1e-3, 1e-6, 0.0])
@pytest.mark.parametrize("rows", [[0], [1], [2], [3], [0, 1, 2, 3]])
def test_kept_eigenpairs_equal_the_dense_rank_rule(rank_tol, rows):
    p = _decaying_probabilities()[rows]
    lam, U, rank, discarded = kept_eigenpairs(p, rank_tol)
    ref_lam, ref_U = torch.linalg.eigh(softmax_covariance(p))
    ref_lam, ref_U = ref_lam.flip(1), ref_U.flip(2)
    assert rank.tolist() == choose_rank(ref_lam, rank_tol).tolist()
    r = int(rank.max())
    scale = float(ref_lam[:, 0].max())
    torch.testing.assert_close(lam, ref_lam[:, :r].clamp_min(0), rtol=0, atol=1e-14 * scale)
    torch.testing.assert_close(discarded, ref_lam.clamp_min(0)[:, r:].sum(1), rtol=1e-8, atol=1e-13 * scale)
    # same kept operator U diag(lam) U^T (robust to the sign of each eigenvector)
    torch.testing.assert_close(
        torch.einsum("ncr,nr,ndr->ncd", U, lam, U),
        torch.einsum("ncr,nr,ndr->ncd", ref_U[:, :, :r], ref_lam[:, :r].clamp_min(0), ref_U[:, :, :r]),
        rtol=0,
        atol=1e-13 * scale,
    )


def test_bad_k_raises():
    with pytest.raises(ValueError, match="k must lie"):
        softmax_covariance_top_eigh(torch.full((1, 3), 1 / 3, dtype=torch.float64), 4)
