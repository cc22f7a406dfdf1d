"""RealNVP and Glow: invertibility, every layer's log|det| against the autograd Jacobian,
ActNorm's data-dependent init, sampling with a temperature.

Flow objective and Gaussian baseline against independent computations.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from torch import nn
from torch.distributions import Independent, Normal

from mlnotes_zoo import create_model
from mlnotes_zoo.models.flows import (
    ActNorm,
    AffineCoupling,
    CouplingNet,
    Glow,
    GlowStep,
    InvertibleConv1x1,
    MultiScaleFlow,
    Preprocess,
    RealNVP,
    Squeeze,
    bits_per_dim,
    checkerboard_mask,
    discrete_log_likelihood,
    fit_gaussian,
    flow_nll,
    gaussian_bits_per_dim,
    quantize,
    standard_normal_log_prob,
    uniform_dequantize,
)

SMALL = {
    "realnvp": dict(in_shape=(1, 4, 4), num_scales=2, num_couplings=2, hidden=8),
    "glow": dict(in_shape=(1, 4, 4), num_levels=2, depth=2, hidden=8),
}


def _randomize(model: nn.Module, scale: float = 0.3) -> nn.Module:
    """Make every layer far from the identity: the near-zero init would hide errors."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, CouplingNet):
                last = module.net[-1]
                last.weight.normal_(0, scale)
                last.bias.normal_(0, scale)
            if isinstance(module, ActNorm):
                module.bias.normal_(0, scale)
                module.log_scale.normal_(0, scale)
                module.initialized.fill_(True)
            if isinstance(module, InvertibleConv1x1):
                module.lower.add_(torch.randn_like(module.lower) * scale)
                module.upper.add_(torch.randn_like(module.upper) * scale)
                module.log_s.add_(torch.randn_like(module.log_s) * scale)
    return model


def _small_flow(name: str) -> MultiScaleFlow:
    torch.manual_seed(0)
    return _randomize(create_model(name, **SMALL[name])).double().eval()


def _jacobian_log_det(layer, x: torch.Tensor) -> torch.Tensor:
    """log|det ∂y/∂x| of one example by autograd: the reference for the layers' formulas."""
    jac = torch.autograd.functional.jacobian(lambda v: layer(v.view_as(x))[0].flatten(),
                                             x.flatten(), vectorize=True)
    return torch.linalg.slogdet(jac)[1]


@pytest.mark.parametrize("name", ["realnvp", "glow"])
def test_every_layer_log_det_matches_the_autograd_jacobian(name):
    flow = _small_flow(name)
    h = torch.rand(1, *flow.in_shape, dtype=torch.float64)
    h, log_det = flow.preprocess(h)
    checked = 1
    for i, level in enumerate(flow.levels):
        for layer in level:
            expected = _jacobian_log_det(layer, h)
            h_next, log_det = layer(h)
            torch.testing.assert_close(log_det[0], expected, atol=1e-4, rtol=1e-4,
                                       msg=f"{type(layer).__name__} in level {i}")
            h, checked = h_next, checked + 1
        if i < len(flow.levels) - 1:
            h = h[:, h.shape[1] // 2:]
    assert checked == 1 + sum(len(level) for level in flow.levels)


@pytest.mark.parametrize("layer", [
    Preprocess(kind="logit", alpha=0.05),
    Preprocess(kind="center"),
    Squeeze(),
    _randomize(ActNorm(channels=4)),
    _randomize(InvertibleConv1x1(channels=4)),
    _randomize(AffineCoupling(channels=4, hidden=8, mask="checkerboard", parity=0)),
    _randomize(AffineCoupling(channels=4, hidden=8, mask="checkerboard", parity=1,
                              scale_map="sigmoid")),
    _randomize(AffineCoupling(channels=4, hidden=8, mask="channel", parity=0)),
    _randomize(AffineCoupling(channels=3, hidden=8, mask="channel", parity=1,
                              scale_map="sigmoid")),
    _randomize(GlowStep(channels=4, hidden=8)),
], ids=lambda m: type(m).__name__)
def test_each_layer_type_log_det_and_inverse(layer):
    torch.manual_seed(1)
    layer = layer.double().eval()
    x = torch.rand(3, 4 if not isinstance(layer, AffineCoupling) else layer.channels, 4, 4,
                   dtype=torch.float64)
    y, log_det = layer(x)
    assert log_det.shape == (3,)
    for b in range(3):
        torch.testing.assert_close(log_det[b], _jacobian_log_det(layer, x[b:b + 1]),
                                   atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(layer.inverse(y), x, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["realnvp", "glow"])
def test_whole_flow_log_prob_is_the_change_of_variables(name):
    flow = _small_flow(name)
    x = torch.rand(2, *flow.in_shape, dtype=torch.float64)
    for b in range(2):
        z = flow(x[b:b + 1]).z
        expected = standard_normal_log_prob(z) + _jacobian_log_det(lambda v: flow(v), x[b:b + 1])
        torch.testing.assert_close(flow.log_prob(x[b:b + 1]), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["realnvp", "glow"])
def test_x_to_z_to_x_reconstructs(name):
    torch.manual_seed(0)
    flow = create_model(name).train()
    x = flow.example_input(16)
    flow(x)  # ActNorm data-dependent init on this batch
    _randomize(flow, scale=0.1).eval()
    with torch.no_grad():
        z, log_det = flow(x)
        assert z.shape == (16, x[0].numel()) and log_det.shape == (16,)
        torch.testing.assert_close(flow.inverse(z), x, atol=1e-4, rtol=0)
        # and the other way round: z -> x -> z
        z = 0.5 * torch.randn(8, flow.latent_dim)
        torch.testing.assert_close(flow(flow.inverse(z)).z, z, atol=1e-4, rtol=1e-4)


def test_actnorm_init_gives_zero_mean_unit_variance():
    torch.manual_seed(0)
    layer = ActNorm(channels=3).train()
    x = torch.randn(64, 3, 5, 5) * torch.tensor([0.1, 2.0, 7.0]).view(1, 3, 1, 1) + 4.0
    y, _ = layer(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=(0, 2, 3), unbiased=False), torch.ones(3),
                               atol=1e-4, rtol=0)
    assert bool(layer.initialized)
    # afterwards the parameters are ordinary: a second batch does not re-initialise
    before = layer.log_scale.detach().clone()
    layer(torch.randn(8, 3, 5, 5))
    torch.testing.assert_close(layer.log_scale.detach(), before)
    # and the flag travels with the state dict
    fresh = ActNorm(channels=3)
    fresh.load_state_dict(layer.state_dict())
    assert bool(fresh.initialized)


def test_actnorm_inside_glow_is_initialised_by_the_first_training_batch():
    torch.manual_seed(0)
    flow = create_model("glow").train()
    x = flow.example_input(256)
    h, _ = flow.preprocess(x)
    h, _ = flow.levels[0][0](h)  # squeeze
    actnorm = flow.levels[0][1].actnorm
    flow(x)
    y, _ = actnorm(h)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(4),
                               atol=1e-3, rtol=0)


def test_lu_conv_weight_log_det_matches_slogdet():
    torch.manual_seed(0)
    conv = _randomize(InvertibleConv1x1(channels=6))
    sign, logabsdet = torch.linalg.slogdet(conv.weight())
    torch.testing.assert_close(conv.log_s.sum(), logabsdet)
    x = torch.randn(2, 6, 3, 5)
    torch.testing.assert_close(conv(x)[1], logabsdet.expand(2) * 15)


def test_coupling_leaves_the_conditioning_half_unchanged():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 4, 4)
    board = _randomize(AffineCoupling(channels=4, hidden=8, mask="checkerboard", parity=1))
    keep = checkerboard_mask(4, 4, parity=1).bool().expand_as(x)
    y = board(x)[0]
    assert torch.equal(y[keep], x[keep]) and not torch.allclose(y[~keep], x[~keep])
    channel = _randomize(AffineCoupling(channels=4, hidden=8, mask="channel", parity=1))
    y = channel(x)[0]
    assert torch.equal(y[:, 2:], x[:, 2:]) and not torch.allclose(y[:, :2], x[:, :2])


def test_sampling_uses_the_temperature():
    flow = _small_flow("glow").float()
    torch.manual_seed(3)
    samples = flow.sample(5, temperature=0.5)
    torch.manual_seed(3)
    z = 0.5 * torch.randn(5, flow.latent_dim)
    torch.testing.assert_close(samples, flow.inverse(z).clamp(0, 1))
    assert samples.shape == (5, *flow.in_shape)
    assert samples.min() >= 0 and samples.max() <= 1


def test_multiscale_structure_and_repeated_blocks():
    realnvp, glow = create_model("realnvp"), create_model("glow")
    assert realnvp.latent_shapes == [(2, 4, 4), (2, 4, 4)]
    assert glow.latent_shapes == [(2, 4, 4), (8, 2, 2)]
    for flow in (realnvp, glow):
        assert flow.latent_dim == 64
        blocks = [m for m in flow.modules() if isinstance(m, flow.repeated_blocks)]
        assert blocks
    masks = [m.mask for m in realnvp.modules() if isinstance(m, AffineCoupling)]
    assert masks == ["checkerboard"] * 3 + ["channel"] * 3 + ["checkerboard"] * 4
    assert sum(isinstance(m, GlowStep) for m in glow.modules()) == 8
    assert isinstance(realnvp, RealNVP) and isinstance(glow, Glow)


def test_mnist_and_cifar_shapes_build():
    mnist = create_model("glow", in_shape=(1, 28, 28), depth=1, hidden=8)
    cifar = create_model("realnvp", in_shape=(3, 32, 32), num_couplings=1, hidden=8)
    for flow in (mnist, cifar):
        x = flow.example_input(2)
        z, _ = flow.eval()(x)
        torch.testing.assert_close(flow.inverse(z), x, atol=1e-4, rtol=0)


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="divisible"):
        create_model("glow", in_shape=(1, 6, 6))
    with pytest.raises(ValueError, match="preprocess"):
        create_model("realnvp", preprocess="dequant")
    with pytest.raises(ValueError, match="mask"):
        AffineCoupling(channels=4, hidden=8, mask="stripes")


@pytest.mark.parametrize("name", ["realnvp", "glow"])
def test_activation_checkpointing_keeps_values_gradients_and_inverse(name):
    from mlnotes_zoo.scale.activation_checkpointing import apply_activation_checkpointing

    torch.manual_seed(0)
    plain = create_model(name, hidden=16).train()
    torch.manual_seed(0)
    wrapped = create_model(name, hidden=16).train()
    assert apply_activation_checkpointing(wrapped) == len(
        [m for m in plain.modules() if isinstance(m, plain.repeated_blocks)])
    x = plain.example_input(4)
    plain.log_prob(x).sum().backward()
    wrapped.log_prob(x).sum().backward()
    for p, q in zip(plain.parameters(), wrapped.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    with torch.no_grad():
        torch.testing.assert_close(wrapped.eval().inverse(wrapped(x).z), x, atol=1e-4, rtol=0)


# -- the objective and the Gaussian baseline ----------------------------------------------
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
