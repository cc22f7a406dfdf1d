"""The baseline a flow has to beat: a full-covariance Gaussian on the dequantized pixels.

Fitted by maximum likelihood (sample mean, sample covariance) to the same dequantized
training images the flow sees; its test bits/dim use the same dequantization bound as the
flow (:func:`mlnotes_zoo.losses.flows.discrete_log_likelihood`), so the two are comparable.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torch.distributions import MultivariateNormal

from mlnotes_zoo.losses.flows import bits_per_dim, discrete_log_likelihood, uniform_dequantize

__all__ = ["fit_gaussian", "gaussian_bits_per_dim"]


def fit_gaussian(
    images: Iterable[Tensor], *, levels: int, draws: int = 4, seed: int = 0
) -> MultivariateNormal:
    """ML Gaussian N(μ, Σ) over flattened dequantized images (float64).

    ``images``: batches (B, C, H, W) in [0, 1]; each is dequantized ``draws`` times with a
    seeded generator (more draws average out the uniform noise in μ and Σ).
    """
    generator = torch.Generator().manual_seed(seed)
    count, total, outer = 0, None, None
    for x in images:
        x = x.detach().double().cpu().flatten(1)  # (B, D)
        for _ in range(draws):
            y = uniform_dequantize(x, levels, torch.rand(x.shape, generator=generator,
                                                         dtype=x.dtype))
            total = y.sum(0) if total is None else total + y.sum(0)
            outer = y.T @ y if outer is None else outer + y.T @ y
            count += y.shape[0]
    if count < 2:
        raise ValueError("need at least two images to fit a Gaussian")
    mean = total / count
    cov = outer / count - torch.outer(mean, mean)  # ML estimate: E[yyᵀ] − μμᵀ
    cov = 0.5 * (cov + cov.T) + 1e-9 * torch.eye(len(mean), dtype=cov.dtype)
    return MultivariateNormal(mean, covariance_matrix=cov)


def gaussian_bits_per_dim(gaussian: MultivariateNormal, y: Tensor, *, levels: int) -> Tensor:
    """bits/dim of dequantized images ``y`` (B, C, H, W) under ``gaussian``: (B,)."""
    flat = y.detach().double().cpu().flatten(1)
    log_prob = discrete_log_likelihood(gaussian.log_prob(flat), flat.shape[1], levels)
    return bits_per_dim(log_prob, flat.shape[1]).to(y)
