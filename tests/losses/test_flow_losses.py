"""Flow objective and Gaussian baseline against independent computations."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import multivariate_normal
from torch.distributions import Independent, Normal

from mlnotes_zoo.losses.flows import (
    bits_per_dim,
    discrete_log_likelihood,
    flow_nll,
    quantize,
    standard_normal_log_prob,
    uniform_dequantize,
)
from mlnotes_zoo.metrics.flows import fit_gaussian, gaussian_bits_per_dim


def test_standard_normal_log_prob_matches_torch_distributions():
    z = torch.randn(5, 2, 3, 3)
    expected = Independent(Normal(torch.zeros(2, 3, 3), torch.ones(2, 3, 3)), 3).log_prob(z)
    torch.testing.assert_close(standard_normal_log_prob(z), expected)


def test_dequantization_stays_in_the_pixel_bin():
    levels = 17
    x = torch.randint(0, levels, (1000, 1, 2, 2)).float() / (levels - 1)
    y = uniform_dequantize(x, levels)
    assert y.min() >= 0 and y.max() < 1
    torch.testing.assert_close(torch.floor(y * levels), quantize(x, levels))
    # bin centres with u = 1/2
    centre = uniform_dequantize(x, levels, torch.full_like(x, 0.5))
    torch.testing.assert_close(centre, (quantize(x, levels) + 0.5) / levels)
    # 8-bit images: 256 levels, k = 255·x
    x8 = torch.randint(0, 256, (10, 3)).float() / 255
    torch.testing.assert_close(quantize(x8, 256), torch.round(x8 * 255))


def test_uniform_density_gives_log2_levels_bits_per_dim():
    # p(y) = 1 on [0, 1]^D is the uniform distribution over the K^D pixel values: log2 K bits
    for levels in (17, 256):
        log_prob = discrete_log_likelihood(torch.zeros(3), num_dims=64, levels=levels)
        torch.testing.assert_close(bits_per_dim(log_prob, 64), torch.full((3,), math.log2(levels)))


def test_flow_nll_parts_add_up():
    z, log_det = torch.randn(4, 64), torch.randn(4)
    out = flow_nll(z, log_det, num_dims=64, levels=17)
    expected_nll = -(standard_normal_log_prob(z) + log_det - 64 * math.log(17))
    torch.testing.assert_close(out["nll"], expected_nll)
    torch.testing.assert_close(out["bpd"], expected_nll / (64 * math.log(2)))


def test_gaussian_baseline_matches_numpy_and_scipy():
    torch.manual_seed(0)
    levels = 17
    x = (torch.rand(300, 1, 2, 2) ** 2 * 16).round() / 16  # skewed discrete pixels
    gaussian = fit_gaussian([x[:150], x[150:]], levels=levels, draws=2, seed=3)
    # the same draws, recomputed: two batches × two dequantizations with the seeded generator
    g = torch.Generator().manual_seed(3)
    draws = []
    for batch in (x[:150], x[150:]):
        flat = batch.double().flatten(1)
        for _ in range(2):
            draws.append(uniform_dequantize(flat, levels, torch.rand(flat.shape, generator=g,
                                                                    dtype=flat.dtype)))
    data = torch.cat(draws).numpy()
    np.testing.assert_allclose(gaussian.mean.numpy(), data.mean(0), rtol=1e-10)
    np.testing.assert_allclose(gaussian.covariance_matrix.numpy(), np.cov(data.T, bias=True),
                               atol=1e-8)
    y = uniform_dequantize(x[:7], levels)
    bpd = gaussian_bits_per_dim(gaussian, y, levels=levels)
    log_pdf = multivariate_normal(data.mean(0), np.cov(data.T, bias=True)).logpdf(
        y.double().flatten(1).numpy())
    expected = -(log_pdf - 4 * math.log(levels)) / (4 * math.log(2))
    np.testing.assert_allclose(bpd.numpy(), expected, rtol=1e-5)
