"""Tiny deterministic networks shared by the CASO tests."""

import torch
from torch import nn
from torch.autograd.function import once_differentiable


def relu_mlp(d: int = 12, c: int = 4, hidden: int = 10, dtype=torch.float64, seed: int = 0):
    torch.manual_seed(seed)
    return (
        nn.Sequential(
            nn.Linear(d, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.1),
            nn.Linear(hidden, c),
        )
        .to(dtype)
        .eval()
    )


def relu_cnn(c: int = 5, dtype=torch.float64, seed: int = 0):
    torch.manual_seed(seed)
    return (
        nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 3 * 3, c),
        )
        .to(dtype)
        .eval()
    )


def softplus_mlp(d: int = 12, c: int = 4, hidden: int = 10, dtype=torch.float64, seed: int = 0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, hidden), nn.Softplus(beta=2.0), nn.Linear(hidden, c)).to(dtype).eval()


def dense_loss_hessian(model, x, target):
    """Dense input Hessian and gradient of CE at ``target`` for one example ``x`` (no batch dim)."""

    def loss(z):
        return nn.functional.cross_entropy(model(z[None]), torch.tensor([target]))

    h = torch.autograd.functional.hessian(loss, x)
    d = x.numel()
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(xg), xg)
    return h.reshape(d, d), g.reshape(d)


class OnceTanh(torch.autograd.Function):
    """tanh with a first derivative only (as fused kernels and quantised layers often are)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.tanh(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (1 - torch.tanh(x) ** 2)


class OnceRelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > 0)
