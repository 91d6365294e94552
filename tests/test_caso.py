import math

import numpy as np
import pytest
import torch
from captum.attr import NoiseTunnel, Saliency
from captum.metrics import infidelity, sensitivity_max
from torch import nn

from captum_ext import CAFO, CASO
from captum_ext.attr.solvers import soft_threshold

from ._nets import dense_loss_hessian, relu_cnn, relu_mlp, softplus_mlp
from .test_optim import _scipy_split_solve


def _dense(model, x, target):
    hs, gs = zip(*[dense_loss_hessian(model, x[i], int(target[i])) for i in range(x.shape[0])], strict=True)
    return torch.stack(hs), torch.stack(gs)


# ---------------------------------------------------------------- exact oracles
@pytest.mark.parametrize("hessian", ["closed_form", "auto"])
def test_lambda1_zero_is_dense_newton_solution(hessian):
    model = relu_mlp()
    x = torch.randn(4, 12, dtype=torch.float64)
    caso = CASO(model)
    delta = caso.attribute(x, hessian=hessian, rank_tol=0.0, orientation="paper")
    det = caso.last_details
    assert det.hessian == "closed_form"
    H, g = _dense(model, x, det.target)
    for i in range(4):
        L = float(torch.linalg.eigvalsh(H[i])[-1])
        lam2 = L / 2 + 10.0
        assert float(det.lambda2[i]) == pytest.approx(lam2, rel=1e-10)
        ref = torch.linalg.solve(2 * lam2 * torch.eye(12, dtype=torch.float64) - H[i], g[i])
        assert torch.allclose(delta[i], ref, rtol=1e-9, atol=1e-13)


def test_lambda1_zero_exact_path_converges_to_dense_solution():
    model = softplus_mlp()
    x = torch.randn(3, 12, dtype=torch.float64)
    caso = CASO(model)
    delta = caso.attribute(x, hessian="exact", lambda2=5.0, orientation="paper")
    H, g = _dense(model, x, caso.last_details.target)
    for i in range(3):
        ref = torch.linalg.solve(10.0 * torch.eye(12, dtype=torch.float64) - H[i], g[i])
        assert torch.allclose(delta[i], ref, rtol=1e-7, atol=1e-10)


def test_cafo_closed_forms():
    model = relu_mlp()
    x = torch.randn(5, 12, dtype=torch.float64)
    cafo = CAFO(model)
    target = torch.tensor([0, 1, 2, 3, 0])
    d0 = cafo.attribute(x, target=target, orientation="paper")
    _, g = _dense(model, x, target)
    assert torch.allclose(d0, g / 20.0, atol=1e-14)
    d1 = cafo.attribute(x, target=target, lambda1=0.01, lambda2=3.0, orientation="paper")
    assert torch.allclose(d1, soft_threshold(g, 0.01) / 6.0, atol=1e-14)
    # Captum's orientation (the default) is the negated paper solution
    assert torch.equal(cafo.attribute(x, target=target, lambda1=0.01, lambda2=3.0), -d1)


@pytest.mark.parametrize("hessian", ["closed_form", "exact"])
def test_lambda1_positive_matches_scipy(hessian):
    model = relu_mlp(d=6, c=3, hidden=8)
    x = torch.randn(2, 6, dtype=torch.float64)
    caso = CASO(model)
    delta = caso.attribute(x, hessian=hessian, lambda1=0.02, lambda2=2.0, rank_tol=0.0, orientation="paper")
    H, g = _dense(model, x, caso.last_details.target)
    for i in range(2):
        ref = _scipy_split_solve(g[i], H[i], 0.02, 2.0)
        assert np.allclose(delta[i].numpy(), ref, atol=1e-6)


def test_closed_form_and_exact_paths_agree_on_relu_net():
    model = relu_cnn()
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    kw = dict(lambda1=1e-3, lambda2=4.0, rank_tol=0.0)
    a = CASO(model).attribute(x, hessian="closed_form", **kw)
    b = CASO(model).attribute(x, hessian="exact", **kw)
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- Theorem 4 / 5
def _confident_linear(c, eps, noise=0.3, seed=0):
    """Linear softmax model with p = [1-(c-1)eps, eps, ..., eps] at x."""
    d = 2 * c
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    W = q[:c] + noise * torch.randn(c, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
    x = torch.randn(1, d, generator=gen, dtype=torch.float64)
    p = torch.full((c,), eps, dtype=torch.float64)
    p[0] = 1 - (c - 1) * eps
    lin = nn.Linear(d, c).double()
    with torch.no_grad():
        lin.weight.copy_(W)
        lin.bias.copy_(torch.log(p) - W @ x[0])
    return lin.eval(), x


def _theorem4_errors(c, eps):
    model, x = _confident_linear(c, eps)
    assert torch.allclose(torch.softmax(model(x), 1)[0, 1:], torch.tensor(eps, dtype=torch.float64))
    H, g = _dense(model, x, [0])
    approx = torch.outer(g[0], g[0]) / (eps * (c - 1))
    rel = float((H[0] - approx).norm() / H[0].norm())
    L = float(torch.linalg.eigvalsh(H[0])[-1])
    caso = CASO(model).attribute(x, target=0, lambda2=0.55 * L)  # close to the concavity limit
    cafo = CAFO(model).attribute(x, target=0)
    cos = float((caso * cafo).sum() / caso.norm() / cafo.norm())
    return rel, 1 - cos


def test_theorem4_rank_one_hessian_and_caso_parallel_to_cafo():
    cs = [10, 40, 160]
    by_c = [_theorem4_errors(c, 1e-2 / c) for c in cs]
    # error to g g^T / (eps (c-1)) and CASO-CAFO misalignment shrink as c grows
    assert by_c[0][0] > by_c[1][0] > by_c[2][0]
    assert by_c[0][1] > by_c[1][1] > by_c[2][1]
    assert by_c[2][0] < 0.1 and by_c[2][1] < 1e-5
    by_eps = [_theorem4_errors(40, s / 40) for s in (1e-1, 1e-2, 1e-3)]
    assert by_eps[0][0] > by_eps[1][0] > by_eps[2][0]
    assert by_eps[0][1] > by_eps[1][1] > by_eps[2][1]


# ---------------------------------------------------------------- sparsity / sweep / details
def test_sparsity_search_hits_window_and_records_details():
    model = relu_cnn(c=4)
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    caso = CASO(model)
    delta = caso.attribute(x, sparsity=(0.75, 1.0), orientation="paper")
    det = caso.last_details
    eta = (delta.reshape(3, -1) == 0).double().mean(1)
    assert torch.allclose(det.sparsity, eta)
    assert bool(det.in_window.all())
    assert bool(((eta >= 0.75) & (eta < 1.0)).all())
    assert bool((det.lambda1 > 0).all())
    assert det.rank.shape == (3,) and bool((det.rank >= 1).all())
    # objective recorded equals the maximised objective recomputed from the dense Hessian
    H, g = _dense(model, x, det.target)
    for i in range(3):
        D = delta[i].reshape(-1)
        val = g[i] @ D + 0.5 * D @ H[i] @ D - det.lambda1[i] * D.abs().sum() - det.lambda2[i] * D @ D
        assert float(det.objective[i]) == pytest.approx(float(val), rel=1e-8, abs=1e-14)


def test_sweep_equals_individual_calls():
    model = relu_mlp()
    x = torch.randn(3, 12, dtype=torch.float64)
    lams = [0.0, 1e-3, 1e-2, 1.0]
    caso = CASO(model)
    maps = caso.sweep(x, lams, lambda2=3.0)
    assert maps.shape == (4, 3, 12)
    assert caso.last_details.lambda1.shape == (3, 4)
    for j, lam in enumerate(lams):
        single = CASO(model).attribute(x, lambda1=lam, lambda2=3.0)
        assert torch.allclose(maps[j], single, atol=1e-12)
    cafo_maps = CAFO(model).sweep(x, lams)
    assert cafo_maps.shape == (4, 3, 12)
    assert bool((cafo_maps[-1] == 0).all())  # lambda1 = 1 >= |g|_inf


# ---------------------------------------------------------------- Captum conventions
def test_noise_tunnel_infidelity_sensitivity():
    model = relu_cnn(c=3, dtype=torch.float32)
    x = torch.randn(2, 2, 6, 6)
    for method in (CASO(model), CAFO(model)):
        nt = NoiseTunnel(method)
        smooth = nt.attribute(x, nt_type="smoothgrad", nt_samples=5, stdevs=0.15, target=1, lambda1=1e-4)
        assert smooth.shape == x.shape and torch.isfinite(smooth).all()

        def perturb(inputs):
            noise = torch.randn_like(inputs) * 0.01
            return noise, inputs - noise

        inf = infidelity(model, perturb, x, method.attribute(x, target=1), target=1, n_perturb_samples=4)
        assert inf.shape == (2,) and torch.isfinite(inf).all()
        sens = sensitivity_max(method.attribute, x, target=1, n_perturb_samples=3)
        assert sens.shape == (2,) and torch.isfinite(sens).all()


class _TwoInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(4, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x1, x2, scale=1.0):
        return self.out(torch.relu(self.a(x1) + self.b(x2) * scale))


def test_tuple_inputs_and_additional_forward_args():
    model = _TwoInput().double().eval()
    x1 = torch.randn(3, 6, dtype=torch.float64)
    x2 = torch.randn(3, 4, dtype=torch.float64)
    scale = torch.tensor([[0.5], [1.0], [2.0]], dtype=torch.float64)
    caso = CASO(model)
    a1, a2 = caso.attribute(
        (x1, x2), target=2, additional_forward_args=(scale,), rank_tol=0.0, orientation="paper"
    )
    assert a1.shape == x1.shape and a2.shape == x2.shape
    # oracle: dense Hessian over the concatenated inputs
    for i in range(3):

        def loss(z, i=i):
            out = model(z[None, :6], z[None, 6:], scale[i : i + 1])
            return nn.functional.cross_entropy(out, torch.tensor([2]))

        z = torch.cat([x1[i], x2[i]])
        H = torch.autograd.functional.hessian(loss, z)
        zg = z.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(zg), zg)
        lam2 = float(caso.last_details.lambda2[i])
        ref = torch.linalg.solve(2 * lam2 * torch.eye(10, dtype=torch.float64) - H, g)
        assert torch.allclose(torch.cat([a1[i], a2[i]]), ref, atol=1e-12)
    # tuple in, tuple out; tensor in, tensor out
    assert isinstance(CAFO(model).attribute((x1, x2), additional_forward_args=scale), tuple)


@pytest.mark.parametrize("target_form", ["int", "list", "tensor0d", "tensor1d", "none"])
def test_every_target_form(target_form):
    model = relu_mlp()
    x = torch.randn(3, 12, dtype=torch.float64)
    pred = model(x).argmax(1)
    forms = {
        "int": (2, torch.tensor([2, 2, 2])),
        "list": ([0, 1, 3], torch.tensor([0, 1, 3])),
        "tensor0d": (torch.tensor(1), torch.tensor([1, 1, 1])),
        "tensor1d": (torch.tensor([3, 2, 1]), torch.tensor([3, 2, 1])),
        "none": (None, pred),
    }
    target, expected = forms[target_form]
    caso = CASO(model)
    out = caso.attribute(x, target=target)
    assert torch.equal(caso.last_details.target, expected)
    per_example = torch.cat([CASO(model).attribute(x[i : i + 1], target=int(expected[i])) for i in range(3)])
    assert torch.allclose(out, per_example, atol=1e-12)


@pytest.mark.parametrize("hessian", ["closed_form", "exact"])
def test_batch_size_invariance_and_chunking(hessian):
    model = relu_cnn(c=4)
    x = torch.randn(5, 2, 6, 6, dtype=torch.float64)
    kw = dict(hessian=hessian, lambda1=1e-3, sparsity=None)
    full = CASO(model).attribute(x, **kw)
    alone = torch.cat([CASO(model).attribute(x[i : i + 1], **kw) for i in range(5)])
    chunked = CASO(model).attribute(x, internal_batch_size=2, **kw)
    assert torch.allclose(full, alone, atol=1e-12)
    assert torch.allclose(full, chunked, atol=1e-12)
    sp_full = CASO(model).attribute(x, hessian=hessian, sparsity=(0.75, 1.0))
    sp_alone = torch.cat(
        [CASO(model).attribute(x[i : i + 1], hessian=hessian, sparsity=(0.75, 1.0)) for i in range(5)]
    )
    assert torch.allclose(sp_full, sp_alone, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_and_abs(dtype):
    model = relu_cnn(c=3, dtype=dtype)
    x = torch.randn(2, 2, 6, 6, dtype=dtype)
    caso = CASO(model)
    signed = caso.attribute(x, lambda1=1e-3)
    assert signed.dtype == dtype
    assert caso.last_details.hessian == "closed_form"
    assert torch.equal(caso.attribute(x, lambda1=1e-3, abs=True), signed.abs())


def test_model_left_untouched(untouched):
    model = relu_cnn(c=3, dtype=torch.float32)
    for p in model[0].parameters():
        p.requires_grad_(False)
    model[-1].weight.grad = torch.ones_like(model[-1].weight)
    x = torch.randn(2, 2, 6, 6)
    with untouched(model):
        for hessian in ("auto", "closed_form", "exact"):
            CASO(model).attribute(x, lambda1=1e-3, hessian=hessian)
        CASO(model).attribute(x, sparsity=(0.75, 1.0))
        CAFO(model).attribute(x, sparsity=(0.75, 1.0))
        with torch.no_grad():  # NoiseTunnel calls attribute under no_grad
            NoiseTunnel(CASO(model)).attribute(x, nt_samples=2, target=0)
    assert x.grad is None


def test_plain_function_forward_and_agreement_with_captum_saliency():
    model = relu_mlp(dtype=torch.float32)
    x = torch.randn(4, 12)
    target = model(x).argmax(1)
    cafo = CAFO(lambda z: model(z)).attribute(x, target=target)
    # CAFO(lambda1=0) = g / (2 c1) with g the input-gradient of the cross-entropy, which Captum's
    # Saliency computes on the negative log-softmax output; Captum's orientation (default) is -g / (2 c1)
    g = Saliency(lambda z: -torch.log_softmax(model(z), 1)).attribute(
        x.clone().requires_grad_(True), target=target, abs=False
    )
    assert torch.allclose(cafo, -g / 20.0, atol=1e-7)


# ---------------------------------------------------------------- errors
def test_clear_errors():
    model = relu_mlp()
    x = torch.randn(2, 12, dtype=torch.float64)
    caso = CASO(model)
    with pytest.raises(ValueError, match="target"):
        caso.attribute(x, target=7)
    with pytest.raises(ValueError, match="entries"):
        caso.attribute(x, target=[0, 1, 2])
    with pytest.raises(ValueError, match="lambda1"):
        caso.attribute(x, lambda1=-1.0)
    with pytest.raises(ValueError, match="too small"):
        caso.attribute(x, lambda2=1e-9)
    with pytest.raises(ValueError, match="NaN"):
        caso.attribute(torch.full_like(x, float("nan")))
    with pytest.raises(ValueError, match="sparsity"):
        caso.attribute(x, sparsity=(0.9, 0.1))
    with pytest.raises(ValueError, match="hessian"):
        caso.attribute(x, hessian="dense")
    with pytest.raises(ValueError, match="lambda2"):
        CAFO(model).attribute(x, lambda2=0.0)
    with pytest.raises(ValueError, match="batch size 0"):
        caso.attribute(x[:0])
    train_model = nn.Sequential(nn.Linear(12, 4), nn.Dropout(0.5), nn.Linear(4, 3)).double()
    state = train_model.training
    with pytest.raises(ValueError, match="eval"):
        CASO(train_model).attribute(x)
    assert train_model.training == state


# ---------------------------------------------------------------- SmoothCASO (paper Def. 4)
def test_smooth_caso_solves_the_averaged_problem():
    from captum_ext import SmoothCASO

    model = relu_mlp()
    x = torch.randn(2, 12, dtype=torch.float64)
    s, sd = 6, 0.3
    torch.manual_seed(5)
    out = SmoothCASO(model, nt_samples=s, stdevs=sd).attribute(
        x, target=[1, 2], rank_tol=0.0, orientation="paper"
    )
    torch.manual_seed(5)
    rep = x.repeat_interleave(s, 0)
    noisy = rep + sd * torch.randn_like(rep)
    for i, t in enumerate([1, 2]):
        H, g = _dense(model, noisy[i * s : (i + 1) * s], [t] * s)
        Hm, gm = H.mean(0), g.mean(0)
        lam2 = float(torch.linalg.eigvalsh(Hm)[-1]) / 2 + 10.0
        ref = torch.linalg.solve(2 * lam2 * torch.eye(12, dtype=torch.float64) - Hm, gm)
        assert torch.allclose(out[i], ref, rtol=1e-9, atol=1e-13)


def test_smooth_caso_paths_agree_and_reduce_to_caso():
    from captum_ext import SmoothCASO

    model = relu_cnn(c=4)
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    kw = dict(lambda1=1e-3, lambda2=3.0, rank_tol=0.0, target=0)
    torch.manual_seed(1)
    a = SmoothCASO(model, nt_samples=4).attribute(x, hessian="closed_form", **kw)
    torch.manual_seed(1)
    sm = SmoothCASO(model, nt_samples=4)
    b = sm.attribute(x, hessian="exact", **kw)
    assert torch.allclose(a, b, rtol=1e-8, atol=1e-12)
    assert sm.last_details.lambda1.shape == (2,)
    plain = CASO(model).attribute(x, **kw)
    assert torch.allclose(SmoothCASO(model, nt_samples=1, stdevs=0.0).attribute(x, **kw), plain)
    with pytest.raises(ValueError):
        SmoothCASO(model, nt_samples=0)


@pytest.mark.parametrize("hessian", ["closed_form", "exact"])
def test_float32_stays_accurate_at_high_confidence(hessian):
    """p_t - 1 is formed without cancellation, so float32 results match float64 ones at p_t ~ 1."""
    import copy

    torch.manual_seed(0)
    act = nn.ReLU() if hessian == "closed_form" else nn.Softplus(beta=3.0)
    model = nn.Sequential(nn.Linear(12, 16), act, nn.Linear(16, 5)).eval()
    with torch.no_grad():
        model[-1].weight.mul_(40.0)
    x = torch.randn(6, 12)
    assert float(torch.softmax(model(x), 1).max(1).values.max()) > 1 - 1e-5
    m64 = copy.deepcopy(model).double()
    for method, kw in ((CAFO, {}), (CASO, dict(hessian=hessian, lambda2=200.0, rank_tol=0.0))):
        a32 = method(model).attribute(x, **kw).double()
        a64 = method(m64).attribute(x.double(), **kw)
        assert float((a32 - a64).norm() / a64.norm()) < 1e-3
