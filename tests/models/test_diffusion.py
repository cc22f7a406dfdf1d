"""DDPM's maths against independent computations, its U-Net, sampler and guidance identities,
and a short end-to-end run.

- q(x_t | x_0) in closed form has the moments of t one-step transitions run one by one
  (Monte Carlo);
- the posterior q(x_{t−1} | x_t, x_0) is the product of the Gaussians q(x_{t−1} | x_0) and
  q(x_t | x_{t−1}) (Bayes' rule, precisions added);
- DDIM with η = 1 over every timestep is ancestral sampling with σ² = β̃_t, draw for draw;
- ε- and v-parametrisations convert into each other exactly;
- schedules: the cosine one against its cos² formula; a schedule leaving ᾱ_T far from 0 is
  refused in one line (API and CLI);
- guidance with w = 1 is the conditional model, w = 0 the null-label model; a dropped label
  is the null label.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from mlnotes_zoo import create_model
from mlnotes_zoo.errors import UsageError
from mlnotes_zoo.models.diffusion import (
    DDPM,
    AttentionBlock,
    ResBlock,
    cosine_betas,
    ddim_timesteps,
    discretized_gaussian_log_likelihood,
    eps_from_v,
    linear_betas,
    mean_fill,
    nearest_fill,
    normal_kl,
    q_posterior,
    q_sample,
    v_from_eps,
    x0_from_eps,
)
from mlnotes_zoo.scale.activation_checkpointing import apply_activation_checkpointing

TINY = dict(widths=[8, 8], groups=4, heads=2, timesteps=20, schedule="cosine")


def _tiny(**kwargs) -> DDPM:
    torch.manual_seed(0)
    return create_model("ddpm", **{**TINY, **kwargs})


# -- the forward process ----------------------------------------------------------------------
def test_closed_form_q_has_the_moments_of_the_one_step_chain():
    torch.manual_seed(0)
    betas = linear_betas(200, 1e-3, 0.05)
    alpha_bar = torch.cumprod(1 - betas, 0)
    x0 = torch.tensor([-1.0, -0.3, 0.5, 1.0], dtype=torch.float64)
    n = 40_000
    x = x0.expand(n, 4).clone()
    for t in range(200):  # x_t = √(1 − β_t) x_{t−1} + √β_t ε, one step at a time
        x = (1 - betas[t]).sqrt() * x + betas[t].sqrt() * torch.randn_like(x)
        if t in (0, 9, 59, 199):
            mean, var = alpha_bar[t].sqrt() * x0, (1 - alpha_bar[t]).expand(4)
            # 5 standard errors of the Monte-Carlo mean / variance
            assert (x.mean(0) - mean).abs().max() < 5 * math.sqrt(var[0] / n)
            assert (x.var(0) - var).abs().max() < 5 * var[0] * math.sqrt(2 / n)
            closed = q_sample(x0.expand(n, 4), torch.full((n,), t), torch.randn(n, 4,
                              dtype=torch.float64), alpha_bar)
            assert (closed.mean(0) - x.mean(0)).abs().max() < 7 * math.sqrt(var[0] / n)


def test_posterior_is_the_product_of_the_two_gaussians():
    torch.manual_seed(1)
    betas = cosine_betas(100)
    alpha_bar = torch.cumprod(1 - betas, 0)
    t = torch.randint(1, 100, (16,))
    x0, xt = torch.randn(2, 16, 1, 2, 2, dtype=torch.float64)
    mean, var = q_posterior(x0, xt, t, betas)
    # prior on x_{t−1}: N(√ᾱ_{t−1} x_0, 1 − ᾱ_{t−1}); likelihood of x_t: N(√α_t x_{t−1}, β_t),
    # i.e. in x_{t−1} a Gaussian of precision α_t/β_t around x_t/√α_t
    a_prev, beta = alpha_bar[t - 1].view(-1, 1, 1, 1), betas[t].view(-1, 1, 1, 1)
    precision = 1 / (1 - a_prev) + (1 - beta) / beta
    expected_mean = (a_prev.sqrt() * x0 / (1 - a_prev) + (1 - beta).sqrt() * xt / beta) / precision
    torch.testing.assert_close(var, 1 / precision)
    torch.testing.assert_close(mean, expected_mean)
    # t = 0: x_{−1} = x_0 exactly
    mean0, var0 = q_posterior(x0, xt, torch.zeros(16, dtype=torch.long), betas)
    torch.testing.assert_close(mean0, x0)
    assert var0.abs().max() == 0


def test_eps_and_v_parametrisations_convert_exactly():
    torch.manual_seed(2)
    alpha_bar = torch.cumprod(1 - cosine_betas(50), 0)
    x0, eps = torch.randn(2, 8, 1, 4, 4, dtype=torch.float64)
    t = torch.randint(0, 50, (8,))
    xt = q_sample(x0, t, eps, alpha_bar)
    v = v_from_eps(x0, t, eps, alpha_bar)
    torch.testing.assert_close(eps_from_v(xt, t, v, alpha_bar), eps)
    torch.testing.assert_close(x0_from_eps(xt, t, eps, alpha_bar), x0)
    # v = dx_t/dφ on the circle x_t = cos φ x_0 + sin φ ε (Salimans & Ho 2022, §4)
    phi = torch.atan2((1 - alpha_bar[t]).sqrt(), alpha_bar[t].sqrt()).view(-1, 1, 1, 1)
    torch.testing.assert_close(v, -torch.sin(phi) * x0 + torch.cos(phi) * eps)


# -- schedules and their refusal -------------------------------------------------------------
def test_schedules():
    betas = linear_betas(1000)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    t = torch.arange(1, 1001, dtype=torch.float64)
    f = torch.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    f0 = math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    alpha_bar = torch.cumprod(1 - cosine_betas(1000), 0)
    unclipped = cosine_betas(1000) < 0.999
    torch.testing.assert_close(alpha_bar[unclipped], (f / f0)[unclipped])
    for kind in ("linear", "cosine"):
        assert float(create_model("ddpm", schedule=kind).alpha_bar[-1]) < 1e-3


def test_a_schedule_that_leaves_signal_in_x_T_is_refused_in_one_line(run_cli):
    with pytest.raises(UsageError, match=r"ᾱ_T=0.364 > 0.001") as err:
        create_model("ddpm", timesteps=100)  # Σβ ≈ 1: x_T keeps e^{-1/2} of x_0
    assert len(str(err.value).splitlines()) == 1
    create_model("ddpm", timesteps=100, schedule="cosine")  # the cosine one reaches 0
    code, message = run_cli("model=ddpm", "model.net.timesteps=100")
    assert code == 2 and "ᾱ_T" in message and len(message.splitlines()) == 1, message


def test_ddim_timesteps_start_at_T_and_are_evenly_spaced():
    assert ddim_timesteps(20, 20) == list(range(19, -1, -1))
    steps = ddim_timesteps(1000, 50)
    assert len(steps) == 50 and steps[0] == 999 and steps[-1] == 19
    assert {a - b for a, b in zip(steps, steps[1:], strict=False)} == {20}


# -- samplers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_with_eta_1_over_every_step_is_ancestral_sampling_with_beta_tilde(clip):
    net = _tiny().eval()
    kw = dict(clip=clip, trajectory=0)
    ancestral = net.sample_ancestral(6, variance="beta_tilde",
                                     generator=torch.Generator().manual_seed(3), **kw)
    ddim = net.sample_ddim(6, steps=20, eta=1.0, generator=torch.Generator().manual_seed(3), **kw)
    torch.testing.assert_close(ddim, ancestral, atol=1e-5, rtol=1e-5)
    beta = net.sample_ancestral(6, variance="beta", generator=torch.Generator().manual_seed(3),
                                **kw)
    assert (beta - ancestral).abs().max() > 1e-3  # the other variance is another sampler
    # the same generator seed gives the same samples; clipped samples stay in [−1, 1]
    a = net.sample_ddim(4, steps=5, generator=torch.Generator().manual_seed(4))
    b = net.sample_ddim(4, steps=5, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b)
    assert a.abs().max() <= 1.0 + 1e-6 or not clip


def test_trajectory_runs_from_noise_to_the_sample():
    net = _tiny().eval()
    x, path = net.sample_ddim(3, steps=10, generator=torch.Generator().manual_seed(5),
                              trajectory=4)
    assert path.shape == (3, 4, 1, 8, 8)
    torch.testing.assert_close(path[:, 0], torch.randn(3, 1, 8, 8,
                                                       generator=torch.Generator().manual_seed(5)))
    torch.testing.assert_close(path[:, -1], x)


# -- the network --------------------------------------------------------------------------
def test_unet_shapes_blocks_and_activation_checkpointing_gives_the_same_gradients():
    net = create_model("ddpm")
    x, t = net.example_input(3)
    assert net(x, t).shape == (3, 1, 8, 8)
    blocks = [m for m in net.modules() if isinstance(m, DDPM.repeated_blocks)]
    assert sum(isinstance(m, AttentionBlock) for m in blocks) == 1
    # down 2 levels × 1, up 2 levels × (1 + 1), middle 2
    assert sum(isinstance(m, ResBlock) for m in blocks) == 2 + 4 + 2
    torch.manual_seed(0)
    plain = _tiny(num_classes=3)
    torch.manual_seed(0)
    checkpointed = _tiny(num_classes=3)
    assert apply_activation_checkpointing(checkpointed) == len(
        [m for m in plain.modules() if isinstance(m, DDPM.repeated_blocks)])
    x, t, y = plain.example_input(4)
    for net in (plain, checkpointed):
        net(x, t, y).square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_bad_shapes_are_refused():
    with pytest.raises(UsageError, match="divisible by 2"):
        create_model("ddpm", in_shape=(1, 6, 6), widths=[8, 8, 8], groups=4)
    with pytest.raises(ValueError, match="t must be an int64 tensor of shape"):
        create_model("ddpm")(torch.randn(2, 1, 8, 8), torch.zeros(2))


def test_guidance_weights_and_the_null_label():
    net = _tiny(num_classes=4).eval()
    x, t, y = net.example_input(5)
    null = torch.full_like(y, 4)
    with torch.no_grad():
        cond, uncond = net(x, t, y), net(x, t, null)
        eps1, _ = net.predict(x, t, y, guidance=1.0, clip=False)
        eps0, _ = net.predict(x, t, y, guidance=0.0, clip=False)
        eps3, _ = net.predict(x, t, y, guidance=3.0, clip=False)
        torch.testing.assert_close(net(x, t), uncond)  # no label = the null label
    torch.testing.assert_close(eps1, cond)
    torch.testing.assert_close(eps0, uncond)
    torch.testing.assert_close(eps3, uncond + 3 * (cond - uncond))
    # every label dropped: the loss is the null-label loss, whatever the labels were
    x0 = torch.rand(5, 1, 8, 8) * 2 - 1
    dropped = net.loss(x0, y, label_dropout=1.0, generator=torch.Generator().manual_seed(0))
    for labels in (null, (y + 1) % 4):
        same = net.loss(x0, labels, label_dropout=1.0,
                        generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(dropped, same)
    kept = net.loss(x0, y, generator=torch.Generator().manual_seed(0))
    assert (kept - dropped).abs() > 1e-6


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_the_loss_is_the_mse_of_the_named_target(prediction):
    net = _tiny(prediction=prediction)
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    loss = net.loss(x0, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)  # the same draws, in the loss's order
    t = torch.randint(0, 20, (4,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    xt = q_sample(x0, t, eps, net.alpha_bar)
    target = eps if prediction == "eps" else v_from_eps(x0, t, eps, net.alpha_bar)
    torch.testing.assert_close(loss, ((net(xt, t) - target) ** 2).mean())


def test_a_few_hundred_steps_learn_to_denoise():
    torch.manual_seed(0)
    net = _tiny()
    x0 = (torch.rand(16, 1, 8, 8) > 0.5).float() * 2 - 1
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    fixed = torch.Generator().manual_seed(1)
    with torch.no_grad():
        before = float(net.loss(x0, generator=torch.Generator().manual_seed(1)))
    for _ in range(150):
        loss = net.loss(x0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(net.loss(x0, generator=fixed))
    assert after < 0.5 * before, (before, after)


# -- the variational bound -------------------------------------------------------------------
def test_decoder_and_kl_match_torch_distributions():
    torch.manual_seed(4)
    levels = 17
    grid = torch.linspace(-1, 1, levels, dtype=torch.float64)
    mean = torch.tensor([[-1.3], [-0.2], [0.45], [0.99]], dtype=torch.float64)  # (4, 1)
    std = torch.tensor([[0.3], [0.02], [0.6], [0.1]], dtype=torch.float64)
    normal = torch.distributions.Normal(mean, std)
    edges = torch.cat([torch.tensor([-math.inf]), (grid[1:] + grid[:-1]) / 2,
                       torch.tensor([math.inf])]).to(torch.float64)
    expected = normal.cdf(edges[1:]) - normal.cdf(edges[:-1])  # P(bin k), (4, K)
    got = discretized_gaussian_log_likelihood(grid[None], mean, std, levels=levels).exp()
    torch.testing.assert_close(got, expected)
    m1, m2, v1, v2 = torch.randn(4, 6, dtype=torch.float64)
    v1, v2 = v1.exp(), v2.exp()
    torch.testing.assert_close(
        normal_kl(m1, v1, m2, v2),
        torch.distributions.kl_divergence(torch.distributions.Normal(m1, v1.sqrt()),
                                          torch.distributions.Normal(m2, v2.sqrt())))


def test_variational_bound_terms_sum_and_an_exact_denoiser_is_tight():
    net = _tiny().eval()
    x0 = (torch.randint(0, 17, (3, 1, 8, 8)) / 16.0) * 2 - 1
    terms = net.variational_bound(x0, levels=17, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(terms["total"],
                               terms["prior"] + terms["diffusion"] + terms["decoder"])
    assert (terms["prior"] >= 0).all() and (terms["diffusion"] >= 0).all()
    assert (terms["decoder"] >= 0).all()

    # a denoiser that knows x_0 (data = one image): x̂_0 = x_0 makes every KL term 0 with
    # σ_t² = β̃_t, and the decoder is N(x_0, β̃_1) integrated over x_0's bin
    class Oracle(DDPM):
        def predict(self, xt, t, y=None, *, guidance=1.0, clip=True):
            a = self.alpha_bar[t].view(-1, 1, 1, 1).to(xt.dtype)
            return (xt - a.sqrt() * x0) / (1 - a).sqrt(), x0.to(xt.dtype)

    oracle = Oracle(**{k: v for k, v in TINY.items()})
    exact = oracle.variational_bound(x0, levels=17, variance="beta_tilde")
    assert exact["diffusion"].abs().max() < 1e-9 and exact["prior"].max() < 1e-3
    a, beta = oracle.alpha_bar, oracle.betas
    std = ((1 - a[0]) / (1 - a[1]) * beta[1]).sqrt()
    normal, h = torch.distributions.Normal(0.0, float(std)), 1 / 16
    inner = -math.log(normal.cdf(torch.tensor(h)) - normal.cdf(torch.tensor(-h)))
    edge = -math.log(normal.cdf(torch.tensor(h)))  # ±1: the outer bin reaches to ±∞
    on_edge = (x0.abs() == 1).flatten(1).sum(1).double()
    torch.testing.assert_close(exact["decoder"], on_edge * edge + (64 - on_edge) * inner,
                               rtol=1e-5, atol=0)  # x̂_0 passes through float32
    assert (terms["total"] > exact["total"]).all()


# -- the bound on data from a known Gaussian ------------------------------------------------
# x_0 = N(m, s²) rounded onto the bound's grid (256 levels in [−1, 1], the outer bins reaching
# to ±∞: the discretized decoder's convention), so its exact NLL is −log₂ P(x_0) per dimension
# in closed form. E over the data of any model's bound ≥ the cross-entropy ≥ the entropy, and
# a denoiser that knows the data makes the bound tight as the steps get finer.
GAUSS = dict(mean=0.1, std=0.25, levels=256)


def _discretised_gaussian(levels: int = GAUSS["levels"]) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid g_k and P(x_0 = g_k) = Φ(upper edge) − Φ(lower edge) of N(mean, std²)."""
    grid = torch.linspace(-1, 1, levels, dtype=torch.float64)
    edges = torch.cat([torch.tensor([-math.inf]), (grid[1:] + grid[:-1]) / 2,
                       torch.tensor([math.inf])]).double()
    cdf = torch.special.ndtr((edges - GAUSS["mean"]) / GAUSS["std"])
    return grid, cdf[1:] - cdf[:-1]


class _LinearDenoiser(DDPM):
    """x̂_0 = E[x_0 | x_t] for x_0 ~ N(m, s²): m + √ᾱ s²/(ᾱ s² + 1 − ᾱ)·(x_t − √ᾱ m), the
    optimal (linear) denoiser, its gain scaled by ``gain`` (1: optimal)."""

    gain = 1.0

    def predict(self, xt, t, y=None, *, guidance=1.0, clip=True):
        m, s2 = GAUSS["mean"], GAUSS["std"] ** 2
        a = self.alpha_bar[t].view(-1, 1, 1, 1)
        x0 = m + self.gain * a.sqrt() * s2 / (a * s2 + 1 - a) * (xt.double() - a.sqrt() * m)
        return (xt - a.sqrt() * x0) / (1 - a).sqrt(), x0


def _expected_bound(net: DDPM, replicas: int, seed: int = 0,
                    levels: int = GAUSS["levels"]) -> tuple[float, float, float, torch.Tensor]:
    """(E_x0[bound] − H, its standard error, H, the bounds (replicas, levels)) in bits/dim:
    every grid value ``replicas`` times (one x_t per step each), weighted by P(x_0); the
    reported bits/dim path."""
    grid, p = _discretised_gaussian(levels)
    images = ((grid + 1) / 2).repeat(replicas).view(-1, 1, 1, 1)
    terms = net.bound_bits_per_dim(images, levels=levels, chunk=len(images),
                                   generator=torch.Generator().manual_seed(seed))
    parts = terms["prior"] + terms["diffusion"] + terms["decoder"]
    torch.testing.assert_close(terms["total"], parts, rtol=1e-12, atol=0)  # the terms add up
    total = terms["total"].view(replicas, -1)
    exact = float(-(p * p.log2()).sum())  # H = E[−log₂ P(x_0)], one dimension
    se = float((p**2 * total.var(0) / replicas).sum().sqrt())
    return float((p * total.mean(0)).sum()) - exact, se, exact, total


def _gaussian_net(cls, timesteps: int, **kwargs) -> DDPM:
    return cls(**{**dict(in_shape=(1, 1, 1), widths=[4], groups=2, heads=2,
                         timesteps=timesteps, schedule="cosine"), **kwargs})


def test_the_bound_on_gaussian_data_is_never_below_its_exact_nll_and_tightens_with_T():
    gaps = {}
    for steps in (10, 50, 1000):
        net = _gaussian_net(_LinearDenoiser, steps)
        gaps[steps], se, exact, _ = _expected_bound(net, replicas=256 if steps < 1000 else 128)
        assert gaps[steps] > -4 * se, (steps, gaps[steps], se)
        gaps[steps] = (gaps[steps], se)
    assert exact == pytest.approx(7.04, abs=0.01)  # ≈ log₂(√(2πe)·s/Δ), Δ = 2/255
    # finer steps: the Gaussian reverse steps become exact, the bound approaches H
    (g10, s10), (g50, s50), (g1000, s1000) = gaps[10], gaps[50], gaps[1000]
    assert g10 > g50 + 4 * math.hypot(s10, s50) and g50 > g1000 + 4 * math.hypot(s50, s1000)
    assert g1000 < 0.05, gaps
    for gain in (0.0, 0.5, 1.5):  # worse denoisers: the bound is higher, never below H
        net = _gaussian_net(type("Off", (_LinearDenoiser,), {"gain": gain}), 50)
        gap, se, *_ = _expected_bound(net, replicas=64)
        assert gap > g50 + 4 * math.hypot(se, s50), (gain, gap, g50)


def test_the_bound_on_gaussian_data_approaches_its_exact_nll_as_the_model_is_trained():
    class PerStepLinear(DDPM):  # ε_θ(x_t, t) = a_t x_t + b_t: the optimum is in the family
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.a = torch.nn.Parameter(torch.zeros(self.timesteps))
            self.b = torch.nn.Parameter(torch.zeros(self.timesteps))

        def forward(self, x, t, y=None):
            return self.a[t].view(-1, 1, 1, 1) * x + self.b[t].view(-1, 1, 1, 1)

    torch.manual_seed(0)
    steps = 50
    net = _gaussian_net(PerStepLinear, steps)
    optimum, se_opt, *_ = _expected_bound(_gaussian_net(_LinearDenoiser, steps), replicas=128)
    grid, p = _discretised_gaussian()
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    gaps = []
    for step in range(301):
        if step % 100 == 0:
            gaps.append(_expected_bound(net, replicas=64)[:2])
        x0 = grid[torch.multinomial(p, 4096, replacement=True)].float().view(-1, 1, 1, 1)
        loss = net.loss(x0)  # L_simple, the model's own training objective
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(gap > -4 * se for gap, se in gaps), gaps  # never below H
    # from ~730 bits (ε̂ = 0) to the analytic optimum's gap (~0.09 at T = 50) — the same
    # x_t draws at every evaluation, so the steps compare without their Monte-Carlo noise
    (start, _), (early, _), _, (final, se) = gaps
    assert start > 100 > early > final, gaps
    assert final < optimum + 4 * math.hypot(se, se_opt), (gaps, optimum)


def test_on_17_levels_a_first_step_of_half_a_level_tightens_the_bound():
    """Why model=ddpm's β_1 is 5e-4 on the digits: with the exact denoiser of the 17-level
    data (x̂_0 = E[x_0 | x_t], the posterior over the grid), β_1 = 1e-4 (√β_1 = 0.01, a sixth
    of half a level) leaves steps whose reverse Gaussians of variance β_t cannot match the
    posterior's β̃_t; √β_1 ≈ 0.02 hands most of them to the decoder, which integrates over
    the level."""
    grid, p = _discretised_gaussian(17)

    class Exact(DDPM):
        def predict(self, xt, t, y=None, *, guidance=1.0, clip=True):
            a = self.alpha_bar[t].view(-1, 1, 1, 1)
            x = xt.double()[..., None]
            w = (p.log() - (x - a[..., None].sqrt() * grid) ** 2 / (2 * (1 - a[..., None])))
            x0 = (w.softmax(-1) * grid).sum(-1)
            return (xt - a.sqrt() * x0) / (1 - a).sqrt(), x0

    totals = {}
    for beta_start in (1e-4, 5e-4):
        net = _gaussian_net(Exact, 1000, schedule="linear", beta_start=beta_start)
        gap, se, _, totals[beta_start] = _expected_bound(net, replicas=256, levels=17)
        assert gap > -4 * se, (beta_start, gap, se)  # never below H
    # paired over the same noise draws: the difference of the two expected bounds
    diff = totals[1e-4] - totals[5e-4]
    gain, se = float((p * diff.mean(0)).sum()), float((p**2 * diff.var(0) / 256).sum().sqrt())
    assert gain > 0.1 and gain > 4 * se and gap < 0.35, (gain, se, gap)  # ≈ 0.17, 0.24


# -- inpainting ------------------------------------------------------------------------------
def test_inpainting_keeps_the_visible_pixels_and_an_oracle_fills_in_the_truth():
    x0 = (torch.randint(0, 17, (3, 1, 8, 8)) / 16.0) * 2 - 1
    mask = (torch.arange(8) < 4).float().view(1, 1, 8, 1)
    net = _tiny().eval()
    filled = net.inpaint(x0, mask, steps=10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(filled * mask, x0 * mask)
    assert (filled - x0).abs().max() > 0.1  # an untrained net does not know the rest

    class Oracle(DDPM):  # x̂_0 = the truth: DDIM (η = 0) lands on it
        def predict(self, xt, t, y=None, *, guidance=1.0, clip=True):
            a = self.alpha_bar[t].view(-1, 1, 1, 1).to(xt.dtype)
            return (xt - a.sqrt() * x0) / (1 - a).sqrt(), x0.to(xt.dtype)

    oracle = Oracle(**TINY)
    torch.testing.assert_close(oracle.inpaint(x0, mask, steps=10), x0, atol=1e-5, rtol=0)


def test_inpainting_baselines_match_scikit_learn_nearest_neighbours():
    from sklearn.neighbors import NearestNeighbors

    torch.manual_seed(5)
    train, images = torch.rand(50, 1, 8, 8), torch.rand(7, 1, 8, 8)
    mask = (torch.arange(8) < 4).float().view(1, 1, 8, 1)
    top = slice(0, 4)
    index = NearestNeighbors(n_neighbors=1).fit(train[:, :, top].flatten(1).numpy())
    nearest = torch.as_tensor(index.kneighbors(images[:, :, top].flatten(1).numpy())[1][:, 0])
    expected = images.clone()
    expected[:, :, 4:] = train[nearest][:, :, 4:]
    torch.testing.assert_close(nearest_fill(train, images, mask), expected)
    expected[:, :, 4:] = train.mean(0)[:, 4:]
    torch.testing.assert_close(mean_fill(train, images, mask), expected)


# -- end to end ------------------------------------------------------------------------------
@pytest.mark.slow
def test_train_and_test_write_fid_coverage_and_guided_accuracy(make_cfg, tmp_path):
    from mlnotes_zoo.train import main

    cfg = make_cfg("model=ddpm", "model.net.widths=[8,8]", "model.net.groups=4",
                   "model.net.heads=2", "model.net.num_classes=10", "model.sample_steps=4",
                   "model.classifier_steps=30", "model.fid_max_samples=40",
                   "model.ancestral_eval=true", "model.vlb_eval=true", "model.net.timesteps=30",
                   "model.net.schedule=cosine", f"model.classifier_dir={tmp_path / 'cls'}")
    main(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    for key in ("test/fid", "test/fid_floor", "test/class_coverage", "test/sample_seconds",
                "test/fid_ancestral", "test/class_coverage_ancestral",
                "test/guided_acc_w0", "test/guided_acc_w1", "test/guided_acc_w3", "test/fid_w3",
                "test/bpd", "test/bpd_prior", "test/bpd_diffusion", "test/bpd_decoder",
                "test/inpaint_mse", "test/inpaint_mse_single", "test/inpaint_mse_mean_fill",
                "test/inpaint_mse_nearest"):
        assert key in metrics and math.isfinite(metrics[key]), key
    parts = sum(metrics[f"test/bpd_{k}"] for k in ("prior", "diffusion", "decoder"))
    assert metrics["test/bpd"] == pytest.approx(parts, rel=1e-5)
    pictures = {p.stem for p in (tmp_path / "pictures").glob("*.png")}
    assert {"samples", "trajectory", "guided", "inpainting"} <= pictures
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(k.startswith("ema.") for k in ckpt["state_dict"])
