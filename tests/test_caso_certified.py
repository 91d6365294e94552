"""Certified CASO solves against dense float64 oracles, safe lambda2, every architecture, clear errors."""

import functools
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import captum_ext.attr.engine as caso_module
from captum_ext import CAFO, CASO
from captum_ext.attr.solvers import (
    LanczosResult,
    accelerated_prox_gradient,
    conjugate_gradient,
    lanczos_extremes,
    soft_threshold,
)

from ._nets import relu_mlp
from .test_optim import _scipy_split_solve

TOL64 = 1e-8  # the certified solver's default relative tolerance in float64


# ---------------------------------------------------------------- oracle helpers
def stable_dense(model, x, target):
    """Dense Hessian and gradient of CE for one example, with CE = log1p(sum_j exp(z_j - z_t)), which
    has no cancellation of p_t - 1 (plain cross_entropy loses digits at high confidence), under the math
    attention kernel (the only one with a double backward on CPU)."""

    def loss(z):
        out = model(z[None])
        if out.shape[1] == 1:
            out = torch.cat([torch.zeros_like(out), out], 1)
        o = out[0]
        others = torch.cat([o[:target], o[target + 1 :]])
        return torch.log1p(torch.exp(others - o[target]).sum())

    with sdpa_kernel(SDPBackend.MATH):
        h = torch.autograd.functional.hessian(loss, x)
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(xg), xg)
    d = x.numel()
    return h.reshape(d, d), g.reshape(d)


def dense_certificate(H, g, delta, lam1, lam2):
    """||minimum-norm subgradient|| / (mu ||delta||) from the dense Hessian: an independent error bound."""
    L = float(torch.linalg.eigvalsh(H)[-1])
    grad = -g - H @ delta + 2 * lam2 * delta
    u = torch.where(delta != 0, grad + lam1 * torch.sign(delta), soft_threshold(grad, lam1))
    return float(u.norm() / ((2 * lam2 - L) * delta.norm().clamp_min(1e-300)))


def objective(H, g, D, lam1, lam2):
    return float(g @ D + 0.5 * D @ H @ D - lam1 * D.abs().sum() - lam2 * D @ D)


def assert_matches_oracle(model, x, out, det, lam1, oracle_model=None, oracle_tol=1e-12):
    """lambda1 = 0: dense linear solve; lambda1 > 0: scipy's L-BFGS-B on the split problem (accurate to
    ~1e-6 relative on these problems) plus the dense certificate, which must meet our tolerance.
    ``out`` is in Captum's orientation (the default), the negated solution ``Delta`` of the problem."""
    assert bool(det.converged.all())
    assert float(det.error_bound.max()) <= TOL64
    errors = []
    for i in range(x.shape[0]):
        H, g = stable_dense(oracle_model or model, x[i], int(det.target[i]))
        lam2 = float(det.lambda2[i])
        D = -out[i].reshape(-1).detach()  # Delta = -out
        L = float(torch.linalg.eigvalsh(H)[-1])
        assert lam2 > L / 2
        if lam1 == 0:
            ref = torch.linalg.solve(2 * lam2 * torch.eye(len(g), dtype=H.dtype) - H, g)
            err = float((D - ref).norm() / ref.norm())
            assert err <= float(det.error_bound[i]) + oracle_tol, (i, err, float(det.error_bound[i]))
        else:
            ref = torch.from_numpy(_scipy_split_solve(g, H, lam1, lam2))
            err = float((D - ref).norm() / ref.norm().clamp_min(1e-300))
            assert err <= 1e-5, (i, err)
            # the objective's terms reach lambda2 |D|^2 and cancel: compare at their round-off scale
            slack = 1e-12 * (1 + lam2 * float(D @ D))
            assert objective(H, g, D, lam1, lam2) >= objective(H, g, ref, lam1, lam2) - slack
            assert dense_certificate(H, g, D, lam1, lam2) <= 2 * TOL64
        errors.append(err)
    return max(errors)


def scaled_mlp(act, scale=50.0, d=8, c=4, hidden=10, seed=0):
    """A curved MLP whose first layer is scaled: the top Hessian eigenvalue L is large."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, hidden), act, nn.Linear(hidden, c)).double().eval()
    with torch.no_grad():
        model[0].weight.mul_(scale)
    return model


# ---------------------------------------------------------------- dense oracles on curved nets
@pytest.mark.parametrize("lam1", [0.0, 0.01])
@pytest.mark.parametrize("setting", ["default", "lambda2_near_L_over_2", "small_c1"])
def test_curved_net_with_large_L_matches_dense_oracle(setting, lam1):
    model = scaled_mlp(nn.GELU())
    x = torch.randn(3, 8, dtype=torch.float64)
    caso = CASO(model)
    if setting == "lambda2_near_L_over_2":
        caso.attribute(x)  # L per example
        L = caso.last_details.top_eigenvalue
        kw = dict(lambda2=float(0.55 * L.max()))  # within 10 % of L/2 for the stiffest example
        assert float(L.max()) > 10  # a large L: the paper's lr = 0.1 cap cannot converge here
    else:
        kw = dict(c1=0.01) if setting == "small_c1" else {}
    out = caso.attribute(x, lambda1=lam1, **kw)
    det = caso.last_details
    assert det.hessian == "exact" and det.solver == "certified"
    assert_matches_oracle(model, x, out, det, lam1)


@pytest.mark.parametrize(
    "family",
    ["relu", "softplus", "elu", "layernorm", "gru"],
)
def test_architecture_families_match_dense_oracle(family):
    torch.manual_seed(0)
    d = 12
    if family == "relu":
        model = relu_mlp(d=d)
    elif family in ("softplus", "elu"):
        model = scaled_mlp(nn.Softplus() if family == "softplus" else nn.ELU(), scale=3.0, d=d)
    elif family == "layernorm":
        model = nn.Sequential(nn.Linear(d, 10), nn.LayerNorm(10), nn.Tanh(), nn.Linear(10, 4)).double().eval()
    else:
        model = _GRUClassifier().double().eval()
    x = torch.randn(2, d, dtype=torch.float64)
    for lam1 in (0.0, 1e-3):
        caso = CASO(model)
        out = caso.attribute(x, lambda1=lam1)
        assert caso.last_details.hessian == ("closed_form" if family == "relu" else "exact")
        assert_matches_oracle(model, x, out, caso.last_details, lam1)


class _GRUClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.gru = nn.GRU(3, 6, batch_first=True)
        self.head = nn.Linear(6, 4)

    def forward(self, z):
        return self.head(self.gru(z.reshape(z.shape[0], 4, 3))[0][:, -1])


# ---------------------------------------------------------------- transformers under auto
class _EncoderClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, z):
        return self.head(self.enc(z.reshape(z.shape[0], 3, 8)).mean(1))


class _TinyViT(nn.Module):
    def __init__(self):
        super().__init__()
        import torchvision

        torch.manual_seed(0)
        self.vit = torchvision.models.VisionTransformer(
            image_size=4, patch_size=2, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=3
        )
        nn.init.normal_(self.vit.heads.head.weight)  # torchvision initialises the head to zero

    def forward(self, z):
        return self.vit(z.reshape(-1, 3, 4, 4))


class _MHAClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, z):
        z = z.reshape(z.shape[0], 3, 8)
        return self.head(self.mha(z, z, z)[0].mean(1))


@pytest.mark.parametrize("net", ["encoder", "vit", "mha"])
def test_attention_models_under_auto_match_dense_oracle(net):
    model = {"encoder": _EncoderClassifier, "vit": _TinyViT, "mha": _MHAClassifier}[net]().double().eval()
    d = 48 if net == "vit" else 24
    x = torch.randn(2, d, dtype=torch.float64)
    caso = CASO(model)
    out = caso.attribute(x)
    assert caso.last_details.hessian == "exact"
    assert_matches_oracle(model, x, out, caso.last_details, 0.0)
    if net == "encoder":
        out = caso.attribute(x, lambda1=1e-3)
        assert_matches_oracle(model, x, out, caso.last_details, 1e-3)


def test_hardsigmoid_net_is_read_as_piecewise_linear_and_exact_is_refused():
    model = scaled_mlp(nn.Hardsigmoid(), scale=1.0)

    class ClampHS(nn.Module):  # the same function with a double backward, for the oracle
        def forward(self, z):
            return torch.clamp(z / 6 + 0.5, 0, 1)

    oracle = nn.Sequential(model[0], ClampHS(), model[2])
    x = torch.randn(3, 8, dtype=torch.float64)
    caso = CASO(model)
    out = caso.attribute(x, rank_tol=0.0)  # the default 1e-3 would drop some Hessian mass
    det = caso.last_details
    # Hardsigmoid is a clamp: piecewise linear, read off the graph (it has no double backward, which the
    # closed form does not need)
    assert det.hessian == "closed_form" and det.extra["probe"] == "structural"
    # PyTorch's hardsigmoid backward uses a float32 constant 1/6 even in float64 (3e-8 relative), so the
    # closed form (built from that backward) and the clamp oracle differ at that level
    assert_matches_oracle(model, x, out, det, 0.0, oracle_model=oracle, oracle_tol=1e-7)
    with pytest.raises(RuntimeError, match="closed_form"):
        CASO(model).attribute(x, hessian="exact")


def test_log_softmax_head_counts_as_piecewise_linear():
    model = relu_mlp()
    x = torch.randn(3, 12, dtype=torch.float64)
    caso = CASO(lambda z: torch.log_softmax(model(z), 1))
    out = caso.attribute(x, lambda1=1e-3)
    assert caso.last_details.hessian == "closed_form"
    ref = CASO(model).attribute(x, lambda1=1e-3)
    assert torch.allclose(out, ref, rtol=1e-7, atol=1e-12)


def test_probability_output_warns():
    model = relu_mlp()
    x = torch.randn(3, 12, dtype=torch.float64)
    with pytest.warns(UserWarning, match="probabilities"):
        CASO(lambda z: torch.softmax(model(z), 1)).attribute(x)


def test_single_logit_model_is_binary_logistic_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 1)).double().eval()
    two = nn.Sequential(model, _PrependZero()).eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    caso = CASO(model)
    out = caso.attribute(x, lambda1=1e-3)
    det = caso.last_details
    assert det.extra["binary_logistic"] is True
    assert torch.equal(det.target, (model(x)[:, 0] > 0).long())
    assert float(out.abs().sum()) > 0
    ref = CASO(two).attribute(x, lambda1=1e-3)
    assert torch.allclose(out, ref, rtol=1e-6, atol=1e-12)
    assert_matches_oracle(model, x, out, det, 1e-3)
    # CAFO too: g = J^T (sigmoid(z) - t)
    cafo = CAFO(model).attribute(x, target=1)
    z = model(x)[:, 0]
    w = model[2].weight @ torch.diag_embed(1 - torch.tanh(model[0](x)) ** 2) @ model[0].weight
    g = (torch.sigmoid(z) - 1)[:, None] * w[:, 0]
    assert torch.allclose(cafo, -g.detach() / 20.0, atol=1e-12)  # Captum orientation: -Delta


class _PrependZero(nn.Module):
    def forward(self, z):
        return torch.cat([torch.zeros_like(z), z], 1)


# ---------------------------------------------------------------- safe lambda2
def test_too_small_explicit_lambda2_raises():
    model = scaled_mlp(nn.GELU())
    x = torch.randn(2, 8, dtype=torch.float64)
    caso = CASO(model)
    caso.attribute(x)
    L = float(caso.last_details.top_eigenvalue.max())
    with pytest.raises(ValueError, match="too small"):
        caso.attribute(x, lambda2=0.45 * L)


def _underestimating_lanczos(factor):
    real = caso_module.lanczos_extremes

    def fake(*args, **kwargs):
        res = real(*args, **kwargs)
        low = res.top * factor
        return LanczosResult(low, res.bottom, torch.zeros_like(low), res.converged, res.steps, res.n_hvp)

    return fake


def test_guard_catches_underestimated_L(monkeypatch):
    """If the spectrum estimate is too low, products seen during the solve prove non-concavity: an
    explicit lambda2 raises, lambda2=None raises L and re-solves to the right answer. At lambda1 = 0 L
    comes from the solve's own Krylov space (no separate estimate to get wrong): the same lambda2 is
    refused before any answer is returned."""
    model = scaled_mlp(nn.GELU())
    x = torch.randn(3, 8, dtype=torch.float64)
    good = CASO(model)
    ref = good.attribute(x, c1=0.01)
    L_true = good.last_details.top_eigenvalue
    monkeypatch.setattr(caso_module, "lanczos_extremes", _underestimating_lanczos(0.2))
    lam2 = float(0.4 * L_true.max())  # above the fake L/2, below the true L/2
    with pytest.raises(ValueError, match="non-concave"):
        CASO(model).attribute(x, lambda1=0.01, lambda2=lam2)
    with pytest.raises(ValueError, match="too small for a concave objective"):
        CASO(model).attribute(x, lambda1=0.0, lambda2=lam2)
    caso = CASO(model)
    out = caso.attribute(x, c1=0.01, lambda1=0.01)
    det = caso.last_details
    assert det.extra["lambda2_raised"] >= 1
    assert bool((det.lambda2 > L_true / 2).all())
    assert bool(det.converged.all())
    assert_matches_oracle(model, x, out, det, 0.01)
    out = caso.attribute(x, c1=0.01)
    assert "lambda2_raised" not in caso.last_details.extra
    torch.testing.assert_close(out, ref, rtol=1e-7, atol=0.0)
    assert_matches_oracle(model, x, out, caso.last_details, 0.0)


def test_solvers_flag_nonconcave_problems():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 6, generator=gen, dtype=torch.float64)
    H = q + q.transpose(1, 2)
    L = torch.linalg.eigvalsh(H)[:, -1]

    def hvp(v):
        return torch.einsum("nij,nmj->nmi", H, v)

    g = torch.randn(2, 1, 6, generator=gen, dtype=torch.float64)
    lam2 = (0.4 * L)[:, None, None]
    cg = conjugate_gradient(g, hvp, lam2, l_upper=0.1 * L[:, None, None], tol=1e-10)
    apg = accelerated_prox_gradient(g, hvp, 0.1, lam2, l_upper=0.1 * L[:, None, None], tol=1e-10)
    for res in (cg, apg):
        assert bool(res.nonconcave.all()) and not bool(res.converged.any())
        assert bool(torch.isinf(res.error_bound).all())


def test_lanczos_matches_eigvalsh():
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(3, 20, 20, generator=gen, dtype=torch.float64)
    H = q @ q.transpose(1, 2) - 5 * torch.eye(20, dtype=torch.float64)
    ev = torch.linalg.eigvalsh(H)
    res = lanczos_extremes(
        lambda v: torch.einsum("nij,nj->ni", H, v), torch.randn(3, 20, generator=gen).double()
    )
    assert bool(res.converged.all())
    assert torch.allclose(res.top, ev[:, -1], rtol=1e-8)
    assert bool((res.upper >= ev[:, -1] - 1e-10).all())


# ---------------------------------------------------------------- the paper's fixed iterations
def paper_fista(H, g, lam1, lam2, n_iter=10, lr=0.1, decay=0.5):
    """Singla et al.'s algorithm for one example, written independently: FISTA from 0 with backtracking
    (sufficient decrease on the smooth part, step shared across iterations), no monotone safeguard."""

    def s(D):
        return -g @ D - 0.5 * D @ H @ D + lam2 * D @ D

    def grad_s(D):
        return -g - H @ D + 2 * lam2 * D

    x = torch.zeros_like(g)
    y, t, step = x, 1.0, lr
    for _ in range(n_iter):
        gy = grad_s(y)
        while True:
            z = soft_threshold(y - step * gy, step * lam1)
            if s(z) <= s(y) + gy @ (z - y) + (z - y) @ (z - y) / (2 * step):
                break
            step *= decay
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        y = z + ((t - 1) / t_next) * (z - x)
        x, t = z, t_next
    return x


@pytest.mark.parametrize("hessian", ["closed_form", "exact"])
def test_paper_setting_reproduces_the_papers_algorithm(hessian):
    model = relu_mlp() if hessian == "closed_form" else scaled_mlp(nn.Softplus(), scale=3.0, d=12)
    x = torch.randn(3, 12, dtype=torch.float64)
    lam1, lam2 = 0.01, 3.0
    for i in range(3):  # one example at a time: the paper shares one step over the batch
        caso = CASO(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 10 iterations do not converge (the point of this issue)
            out = caso.attribute(
                x[i : i + 1], lambda1=lam1, lambda2=lam2, solver="paper", hessian=hessian, orientation="paper"
            )
        H, g = stable_dense(model, x[i], int(caso.last_details.target[0]))
        ref = paper_fista(H, g, lam1, lam2)
        assert torch.allclose(out[0], ref, rtol=1e-10, atol=1e-13)
        assert caso.last_details.iterations.tolist() == [10]
        assert caso.last_details.solver == "paper"


def test_paper_setting_warns_with_its_error_and_certified_does_not():
    model = scaled_mlp(nn.GELU())
    x = torch.randn(2, 8, dtype=torch.float64)
    with pytest.warns(UserWarning, match="fixed 10 iterations"):
        CASO(model).attribute(x, lambda1=0.01, solver="paper")
    caso = CASO(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        caso.attribute(x, lambda1=0.01)
    assert bool(caso.last_details.converged.all())


def test_unconverged_solve_warns_and_reports():
    model = scaled_mlp(nn.GELU())
    x = torch.randn(2, 8, dtype=torch.float64)
    caso = CASO(model)
    with pytest.warns(UserWarning, match="did not reach"):
        caso.attribute(x, lambda1=0.01, c1=0.01, max_iter=3)
    det = caso.last_details
    assert not bool(det.converged.all())
    assert float(det.error_bound.max()) > TOL64
    assert int(det.iterations.max()) == 3


def test_float32_default_tolerance():
    """float32 certifies to 1e-4; compared with the float64 solution up to float32 round-off of the
    model (the two dtypes run different kernels, so no exact equality)."""
    m64 = scaled_mlp(nn.GELU(), scale=10.0)
    m32 = scaled_mlp(nn.GELU(), scale=10.0).float()
    x = torch.randn(3, 8, dtype=torch.float64)
    for lam1 in (0.0, 0.01):
        c32 = CASO(m32)
        a32 = c32.attribute(x.float(), lambda1=lam1)
        assert bool(c32.last_details.converged.all())
        assert float(c32.last_details.error_bound.max()) <= 1e-4
        a64 = CASO(m64).attribute(x, lambda1=lam1)
        assert float((a32.double() - a64).norm() / a64.norm()) < 1e-3


def test_sweep_and_sparsity_report_certificates():
    model = scaled_mlp(nn.GELU(), scale=10.0)
    x = torch.randn(2, 8, dtype=torch.float64)
    caso = CASO(model)
    caso.sweep(x, [0.0, 1e-3, 1e-2])
    det = caso.last_details
    assert det.converged.shape == (2, 3) and bool(det.converged.all())
    caso.attribute(x, sparsity=(0.5, 1.0))
    det = caso.last_details
    assert det.converged.shape == (2,) and bool(det.converged.all())


def test_batch_invariance_of_certified_exact_path():
    model = scaled_mlp(nn.GELU(), scale=10.0)
    x = torch.randn(4, 8, dtype=torch.float64)
    full = CASO(model).attribute(x, lambda1=1e-3)
    alone = torch.cat([CASO(model).attribute(x[i : i + 1], lambda1=1e-3) for i in range(4)])
    # each example is frozen at its own convergence: equal up to the batched kernels' round-off
    assert torch.allclose(full, alone, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------- misuse
def test_coupling_probe_catches_train_mode_batchnorm_behind_a_lambda(untouched):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    # reachable through the closure or functools.partial: refused before any forward pass
    with untouched(model):
        for f in (lambda z: model(z), functools.partial(model.forward)):
            with pytest.raises(ValueError, match="eval"):
                CASO(f).attribute(x)
    # hidden in a container: the coupling probe catches it
    holder = {"m": model}
    with pytest.raises(ValueError, match="BatchNorm"):
        CASO(lambda z: holder["m"](z)).attribute(x)
    with pytest.raises(ValueError, match="another example"):
        CAFO(lambda z: holder["m"](z)).attribute(x)


def test_per_example_lambda1():
    model = scaled_mlp(nn.GELU(), scale=5.0)
    x = torch.randn(3, 8, dtype=torch.float64)
    lam1 = torch.tensor([0.0, 1e-3, 1e-2])
    out = CASO(model).attribute(x, lambda1=lam1, internal_batch_size=2)
    for i in range(3):
        single = CASO(model).attribute(x[i : i + 1], lambda1=float(lam1[i]))
        assert torch.allclose(out[i : i + 1], single, rtol=1e-6, atol=1e-12)
    with pytest.raises(ValueError, match="one value per example"):
        CASO(model).attribute(x, lambda1=torch.tensor([0.1, 0.2]))


def test_clear_errors_for_bad_arguments():
    model = relu_mlp()
    x = torch.randn(2, 12, dtype=torch.float64)
    caso = CASO(model)
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="lambda2"):
            caso.attribute(x, lambda2=bad)
        with pytest.raises(ValueError, match="lambda2"):
            CAFO(model).attribute(x, lambda2=bad)
    with pytest.raises(ValueError, match="n_iter"):
        caso.attribute(x, lambda1=0.1, solver="paper", n_iter=0)
    with pytest.raises(ValueError, match="n_iter"):
        caso.attribute(x, lambda1=0.1, n_iter=20)  # n_iter belongs to solver="paper"
    with pytest.raises(TypeError, match="window"):
        caso.attribute(x, sparsity=0.8)
    with pytest.raises(TypeError, match="window"):
        CAFO(model).attribute(x, sparsity=0.8)
    with pytest.raises(ValueError, match="max_rank"):
        caso.attribute(x, max_rank=-1)
    with pytest.raises(ValueError, match="max_iter"):
        caso.attribute(x, max_iter=0)
    with pytest.raises(ValueError, match="tol"):
        caso.attribute(x, tol=0.0)
    with pytest.raises(ValueError, match="solver"):
        caso.attribute(x, solver="fast")
    const = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="does not depend on the inputs"):
        caso.__class__(lambda z: const + 0 * z.detach()[:, :3]).attribute(x)
    with pytest.raises(ValueError, match="does not depend on the inputs"):
        CAFO(lambda z: const.clone()).attribute(x)


def test_solver_doc_numbers_are_consistent():
    """conjugate_gradient's certified bound holds against the dense solve on a random SPD system."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 9, 9, generator=gen, dtype=torch.float64)
    H = q @ q.transpose(1, 2)
    L = torch.linalg.eigvalsh(H)[:, -1]
    g = torch.randn(1, 1, 9, generator=gen, dtype=torch.float64)
    lam2 = (0.52 * L)[:, None, None]
    res = conjugate_gradient(
        g, lambda v: torch.einsum("nij,nmj->nmi", H, v), lam2, l_upper=L[:, None, None], tol=1e-6
    )
    ref = torch.linalg.solve(2 * lam2[0, 0] * torch.eye(9, dtype=torch.float64) - H[0], g[0, 0])
    err = float((res.delta[0, 0] - ref).norm() / ref.norm())
    assert bool(res.converged.all()) and err <= float(res.error_bound) <= 1e-6
    assert np.isfinite(err)


def test_lanczos_absolute_tolerance_stops_early_on_a_tiny_spectrum():
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(1, 30, 30, generator=gen, dtype=torch.float64)
    H = 1e-6 * (q @ q.transpose(1, 2))  # L ~ 1e-4: irrelevant next to 2 lambda2 ~ 20
    start = torch.randn(1, 30, generator=gen, dtype=torch.float64)

    def hvp(v):
        return torch.einsum("nij,nj->ni", H, v)

    rel = lanczos_extremes(hvp, start, tol=1e-4)
    absolute = lanczos_extremes(hvp, start, tol=1e-4, atol=1e-4 * 20.0)
    assert int(absolute.steps) < int(rel.steps)
    assert bool(absolute.converged.all())
    assert float(absolute.upper) >= float(absolute.top)


def test_a_zero_optimum_costs_no_extra_products():
    """A candidate with lambda1 >= |g|_inf has the optimum D = 0, reached from D = 0 by a zero step: it
    must cost no backtracking (it used to exhaust the 60 trials of every iteration, ~60 extra products
    per call in the sparsity search), and the batch's other problems must come out the same."""
    gen = torch.Generator().manual_seed(0)
    M = torch.randn(2, 12, 12, generator=gen, dtype=torch.float64)
    H = M @ M.transpose(1, 2) / 12
    g = torch.randn(2, 1, 12, generator=gen, dtype=torch.float64)
    L = torch.linalg.eigvalsh(H)[:, -1]
    lam2 = (L / 2 + 0.5)[:, None, None]
    hvp = lambda v: torch.einsum("nij,nmj->nmi", H, v)  # noqa: E731
    g_inf = g.abs().amax(-1, keepdim=True)
    upper = L[:, None, None]
    kw = dict(l_upper=upper, tol=1e-10)
    alone = accelerated_prox_gradient(g, hvp, 0.3 * g_inf, lam2, **kw)
    both = accelerated_prox_gradient(
        g.expand(2, 2, 12), hvp, torch.cat([0.3 * g_inf, 2.0 * g_inf], 1), lam2.expand(2, 2, 1), **kw
    )
    assert torch.equal(both.delta[:, 1], torch.zeros(2, 12, dtype=torch.float64))
    assert bool(both.converged.all())
    torch.testing.assert_close(both.delta[:, :1], alone.delta, rtol=0, atol=1e-12)
    assert both.n_hvp == alone.n_hvp
