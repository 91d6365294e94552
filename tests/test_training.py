import pickle

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset

from captum_ext.datasets import BlockMNIST
from captum_ext.training import MLPFactory, Trainer, as_tensors, evaluate, fit


def _separable(n=200, d=5, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return x, y


class _ItemDataset(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i], "extra"


# ----------------------------------------------------------------------------------------- as_tensors


def test_as_tensors_accepts_every_form():
    x, y = _separable(10)
    for data in ((x, y), [x, y], TensorDataset(x, y), _ItemDataset(x, y)):
        xx, yy = as_tensors(data)
        assert torch.equal(xx, x) and torch.equal(yy, y)
    ds = BlockMNIST("test", n=5)
    xx, yy = as_tensors(ds)
    assert xx is ds.inputs and yy is ds.labels


def test_as_tensors_errors():
    x, y = _separable(10)
    with pytest.raises(ValueError, match="differ in length"):
        as_tensors((x, y[:5]))
    with pytest.raises(ValueError, match="empty"):
        as_tensors((x[:0], y[:0]))
    with pytest.raises(ValueError, match="empty"):
        as_tensors(_ItemDataset(x[:0], y[:0]))
    with pytest.raises(TypeError, match="inputs, labels"):
        as_tensors((x, y, y))
    with pytest.raises(TypeError, match="tensor pair or a torch Dataset"):
        as_tensors({"x": x})


# ---------------------------------------------------------------------------------------------- fit


def test_fit_learns_and_returns_eval_mode():
    x, y = _separable()
    torch.manual_seed(0)
    net = MLPFactory((5,), hidden=(16,))()
    out = fit(net, (x, y), epochs=30, lr=1e-2, progress=False)
    assert out is net and not net.training
    assert evaluate(net, (x, y)) > 0.95
    assert all(p.grad is None for p in net.parameters())


def test_fit_is_deterministic_and_keeps_global_rng():
    x, y = _separable()
    factory = MLPFactory((5,), hidden=(8,))
    nets = []
    for _ in range(2):
        torch.manual_seed(1)
        nets.append(factory())
    torch.manual_seed(123)
    before = torch.get_rng_state()
    fit(nets[0], (x, y), epochs=2, seed=7, progress=False)
    assert torch.equal(torch.get_rng_state(), before)
    fit(nets[1], (x, y), epochs=2, seed=7, progress=False)
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.equal(a, b)
    torch.manual_seed(1)
    other = fit(factory(), (x, y), epochs=2, seed=8, progress=False)
    assert not all(torch.equal(a, b) for a, b in zip(nets[0].parameters(), other.parameters(), strict=True))


def test_fit_update_is_torch_adam():
    x, y = _separable(96)
    torch.manual_seed(0)
    ours = MLPFactory((5,), hidden=(8,))()
    ref = MLPFactory((5,), hidden=(8,))()
    ref.load_state_dict(ours.state_dict())
    fit(ours, (x, y), epochs=3, lr=1e-2, batch_size=32, weight_decay=0.1, seed=4, progress=False)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2, weight_decay=0.1)
    order = torch.Generator().manual_seed(4)
    ref.train()
    for _ in range(3):
        perm = torch.randperm(96, generator=order)
        for b in range(3):
            idx = perm[b * 32 : (b + 1) * 32]
            opt.zero_grad()
            F.cross_entropy(ref(x[idx]), y[idx]).backward()
            opt.step()
    for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_fit_dropout_is_seeded():
    x, y = _separable()
    nets = []
    for _ in range(2):
        torch.manual_seed(0)
        nets.append(nn.Sequential(nn.Linear(5, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 2)))
        fit(nets[-1], (x, y), epochs=2, seed=3, progress=False)
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.equal(a, b)


def test_fit_uses_wrapper_loss_protocol_and_loss_fn():
    x, y = _separable(64)

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Linear(5, 2)
            self.calls = 0

        def forward(self, x):
            return self.model(x)

        def loss(self, x, y):
            self.calls += 1
            return F.cross_entropy(self(x), y)

    w = Wrapper()
    fit(w, (x, y), epochs=1, batch_size=16, progress=False)
    assert w.calls == 4

    seen = []

    def loss_fn(out, target):
        seen.append(out.shape)
        return F.cross_entropy(out, target)

    w2 = Wrapper()
    fit(w2, (x, y), epochs=1, batch_size=32, progress=False, loss_fn=loss_fn)
    assert w2.calls == 0 and seen == [torch.Size([32, 2])] * 2


def test_fit_float64_and_dataset_input():
    x, y = _separable(dtype=torch.float64)
    torch.manual_seed(0)
    net = MLPFactory((5,), hidden=(8,), dtype=torch.float64)()
    fit(net, TensorDataset(x, y), epochs=20, lr=1e-2, progress=False)
    assert next(net.parameters()).dtype == torch.float64
    assert evaluate(net, (x, y)) > 0.9


def test_fit_rejects_bad_arguments():
    x, y = _separable(8)
    with pytest.raises(ValueError, match="batch_size"):
        fit(nn.Linear(5, 2), (x, y), batch_size=0, progress=False)
    frozen = nn.Linear(5, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        fit(frozen, (x, y), progress=False)


def test_fit_progress_bar_writes(capsys):
    x, y = _separable(8)
    fit(nn.Linear(5, 2), (x, y), epochs=1, progress=True)
    assert "fit" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- evaluate


@given(
    n=st.integers(1, 40),
    c=st.integers(2, 6),
    batch=st.integers(1, 50),
    seed=st.integers(0, 10_000),
)
def test_evaluate_matches_argmax_accuracy(n, c, batch, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    expected = (logits.argmax(1) == y).double().mean().item()
    assert evaluate(nn.Identity(), (logits, y), batch_size=batch) == pytest.approx(expected)


def test_evaluate_leaves_model_untouched(untouched):
    x, y = _separable(20)
    net = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
    net.train()
    with untouched(net):
        a = evaluate(net, (x, y), batch_size=7)
    with untouched(net):
        b = evaluate(net, (x, y), batch_size=20)
    assert a == b  # eval mode inside: dropout and batch statistics off
    assert net.training


def test_evaluate_plain_callable():
    x, y = _separable(30)
    assert evaluate(lambda t: torch.stack([-t[:, 0], t[:, 0]], 1), (x, y)) > 0.7


# ----------------------------------------------------------------------------------- Trainer/factory


def test_trainer_matches_fit_and_pickles():
    x, y = _separable()
    factory = MLPFactory((5,), hidden=(8,))
    trainer = Trainer(epochs=2, lr=1e-2, batch_size=32)
    assert pickle.loads(pickle.dumps(trainer)) == trainer
    assert pickle.loads(pickle.dumps(factory)) == factory
    torch.manual_seed(0)
    a = trainer(factory(), (x, y), 5)
    torch.manual_seed(0)
    b = fit(factory(), (x, y), epochs=2, lr=1e-2, batch_size=32, seed=5, progress=False)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_mlp_factory_builds_fresh_models():
    factory = MLPFactory((1, 4, 4), hidden=(6, 5), num_classes=3)
    a, b = factory(), factory()
    assert a is not b
    assert a(torch.zeros(2, 1, 4, 4)).shape == (2, 3)
    shapes = [tuple(p.shape) for p in a.parameters()]
    assert shapes == [(6, 16), (6,), (5, 6), (5,), (3, 5), (3,)]
    assert not torch.equal(a[1].weight, b[1].weight)


def test_fit_uses_torch_optim_adam(monkeypatch):
    """The update comes from torch.optim.Adam itself (no hand-written copy to keep in sync)."""
    import captum_ext.training as training

    assert not hasattr(training, "_Adam")
    built = []
    real = torch.optim.Adam

    def spy(*args, **kwargs):
        opt = real(*args, **kwargs)
        built.append(opt)
        return opt

    monkeypatch.setattr(torch.optim, "Adam", spy)
    x, y = _separable(40)
    fit(nn.Linear(5, 2), (x, y), epochs=1, lr=1e-2, weight_decay=0.1, progress=False)
    assert len(built) == 1
    group = built[0].param_groups[0]
    assert group["lr"] == 1e-2 and group["weight_decay"] == 0.1 and group["foreach"] is False
