"""Independent float64 oracles shared by benchmarks and tests (numpy only, nothing from captum_ext)."""

from __future__ import annotations

import numpy as np


def prox_gradient_oracle(
    B: np.ndarray, g: np.ndarray, lam1: float, lam2: float, rtol: float = 1e-14
) -> np.ndarray:
    """Minimiser of ``-g.D - 1/2 |B^T D|^2 + lam2 |D|^2 + lam1 |D|_1`` (``2 lam2 > L = |B|^2``) by ISTA.

    The step ``1 / (2 lam2)`` makes the iteration a contraction with factor ``q = L / (2 lam2)``, so
    ``|x_k - D*| <= q / (1 - q) |x_k - x_{k-1}|``: it stops once that bound is ``rtol |x_k|``.

    Examples:
        >>> prox_gradient_oracle(np.zeros((2, 0)), np.array([1.0, -0.2]), 0.5, 1.0) + 0.0  # + 0.0: no -0.0
        array([0.25, 0.  ])
    """
    q = float(np.linalg.eigvalsh(B.T @ B)[-1]) / (2 * lam2) if B.shape[1] else 0.0
    x = np.zeros_like(g)
    for _ in range(1_000_000):
        z = g + B @ (B.T @ x)
        new = np.sign(z) * np.maximum(np.abs(z) - lam1, 0) / (2 * lam2)
        step = np.linalg.norm(new - x)
        x = new
        if step * q / (1 - q) <= rtol * max(np.linalg.norm(x), 1e-300):
            return x
    raise RuntimeError("proximal-gradient oracle did not converge")
