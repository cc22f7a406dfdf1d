"""The flow objective: exact negative log-likelihood of dequantized pixels, in nats and bits/dim.

Change of variables (``shared/notes/004`` "Normalizing flow"; Dinh et al. 2017, eq. 3):

    log p(x) = log p(z) + Σ_k log |det ∂f_k/∂z_{k−1}|,      z = f(x),  p(z) = N(0, I)

Pixels are discrete (K levels: 17 for the digits, 256 for 8-bit images), so a density on
them is degenerate. Uniform dequantization (Theis et al. 2016) models y = (k + u)/K,
u ~ U[0, 1)^D, instead; for the discrete image k,

    log P(k) ≥ E_u[log p(y)] − D·log K,

so −(log p(y) − D log K) / (D log 2) is an upper bound on the discrete bits/dim, the number
papers report. All functions return one value per example (shape ``(B,)``) unless noted.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "standard_normal_log_prob",
    "flow_log_likelihood",
    "quantize",
    "uniform_dequantize",
    "discrete_log_likelihood",
    "bits_per_dim",
    "flow_nll",
]

_LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over all but the batch dimension."""
    # log N = −½ Σ_d (z_d² + log 2π)
    return -0.5 * (z.pow(2) + _LOG_2PI).flatten(1).sum(1)


def flow_log_likelihood(z: Tensor, log_det: Tensor) -> Tensor:
    """log p(x) = log N(z; 0, I) + Σ_k log|det ∂f_k/∂z_{k−1}| for z = f(x)."""
    return standard_normal_log_prob(z) + log_det


def quantize(x: Tensor, levels: int) -> Tensor:
    """Pixels in [0, 1] -> their integer level k ∈ {0, …, K − 1} (as floats)."""
    return torch.round(x.clamp(0, 1) * (levels - 1))


def uniform_dequantize(x: Tensor, levels: int, noise: Tensor | None = None) -> Tensor:
    """y = (k + u) / K, u ~ U[0, 1): a continuous point in the pixel's bin, y ∈ [0, 1).

    ``noise`` (same shape as ``x``, in [0, 1)) fixes u, e.g. u = ½ for bin centres.
    """
    u = torch.rand_like(x) if noise is None else noise
    return (quantize(x, levels) + u) / levels


def discrete_log_likelihood(log_density: Tensor, num_dims: int, levels: int) -> Tensor:
    """log P(k) lower bound from the density of the dequantized y: log p(y) − D·log K.

    Each bin has volume 1/K per dimension in y-space, so P(k) = ∫_bin p(y) dy and Jensen's
    inequality over u gives the bound.
    """
    return log_density - num_dims * math.log(levels)


def bits_per_dim(log_likelihood: Tensor, num_dims: int) -> Tensor:
    """bits/dim = −log P(x) / (D · log 2), with log P in nats."""
    return -log_likelihood / (num_dims * math.log(2))


def flow_nll(z: Tensor, log_det: Tensor, *, num_dims: int, levels: int) -> dict[str, Tensor]:
    """Per-example objective of a flow on dequantized pixels.

    Returns ``{"nll": −log P(k) in nats, "bpd": bits/dim, "log_pz": log N(z; 0, I),
    "log_det": Σ log|det|}``, each of shape (B,).
    """
    log_pz = standard_normal_log_prob(z)
    log_density = log_pz + log_det  # change of variables, density of y in [0, 1]^D
    log_prob = discrete_log_likelihood(log_density, num_dims, levels)
    return {"nll": -log_prob, "bpd": bits_per_dim(log_prob, num_dims),
            "log_pz": log_pz, "log_det": log_det}
