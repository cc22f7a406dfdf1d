"""The VAE maths against independent computations (torch.distributions, Monte Carlo, autograd)."""

from __future__ import annotations

import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from mlnotes_zoo import create_model
from mlnotes_zoo.models.vae import (
    VAE,
    bernoulli_log_likelihood,
    gaussian_kl_standard_normal,
    gaussian_log_likelihood,
    iwae_bound,
    log_normal,
)


def test_analytic_kl_matches_monte_carlo_and_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(3, 5), torch.randn(3, 5) * 0.5
    analytic = gaussian_kl_standard_normal(mu, logvar)
    q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
    p = Independent(Normal(torch.zeros(5), torch.ones(5)), 1)
    torch.testing.assert_close(analytic, kl_divergence(q, p), rtol=1e-5, atol=1e-5)
    z = q.sample((200_000,))
    monte_carlo = (q.log_prob(z) - p.log_prob(z)).mean(0)
    torch.testing.assert_close(analytic, monte_carlo, rtol=0.02, atol=0.02)


def test_log_likelihoods_match_torch_distributions():
    torch.manual_seed(0)
    logits, x = torch.randn(4, 1, 3, 3), torch.randint(0, 2, (4, 1, 3, 3)).float()
    expected = Independent(Bernoulli(logits=logits), 3).log_prob(x)
    torch.testing.assert_close(bernoulli_log_likelihood(logits, x, event_dims=3), expected)

    mean, log_scale, y = torch.randn(4, 1, 3, 3), torch.randn(1, 3, 3), torch.randn(4, 1, 3, 3)
    expected = Independent(Normal(mean, log_scale.exp()), 3).log_prob(y)
    torch.testing.assert_close(gaussian_log_likelihood(mean, log_scale, y, event_dims=3), expected)

    z, mu, logvar = torch.randn(6, 4), torch.randn(6, 4), torch.randn(6, 4)
    expected = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1).log_prob(z)
    torch.testing.assert_close(log_normal(z, mu, logvar), expected)


def test_iwae_one_sample_is_the_elbo_estimate():
    torch.manual_seed(0)
    mu, logvar = torch.randn(3, 2), torch.randn(3, 2)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(1, 3, 2)
    log_px = torch.randn(1, 3)
    # k = 1: log w = log p(x|z) + log p(z) − log q(z|x), a one-sample ELBO estimate
    expected = log_px[0] + log_normal(z[0], torch.zeros(2), torch.zeros(2)) \
        - log_normal(z[0], mu, logvar)
    torch.testing.assert_close(iwae_bound(log_px, z, mu, logvar), expected)


def _trained_looking_vae() -> tuple[VAE, torch.Tensor]:
    """A VAE fitted briefly to 16 binary patterns, so q(z|x) is far from the prior."""
    torch.manual_seed(1)
    model = create_model("vae", latent_dim=4, hidden=64)
    x = model.example_input(16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        decoded, mu, logvar, _ = model(x)
        loss = -(model.log_likelihood(decoded, x) - gaussian_kl_standard_normal(mu, logvar)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), x


def test_iwae_is_at_least_the_elbo_and_non_decreasing_in_k():
    model, x = _trained_looking_vae()
    torch.manual_seed(2)
    pool = 4096
    with torch.no_grad():
        mu, logvar = model.encode(x)
        z = model.reparameterize(mu, logvar, num_samples=pool)  # (pool, B, L)
        log_px = model.log_likelihood(model.decode(z), x)  # (pool, B)
        elbo = (log_px - gaussian_kl_standard_normal(mu, logvar)).mean(0)
    # Unbiased estimates of IWAE_k from one pool, split into nested groups of k samples.
    bounds = {}
    for k in (1, 4, 16, 64, 256):
        groups = [iwae_bound(log_px[i : i + k], z[i : i + k], mu, logvar)
                  for i in range(0, pool, k)]
        bounds[k] = torch.stack(groups).mean(0)
    # IWAE_1 is the ELBO (here with the analytic KL in place of its Monte-Carlo estimate).
    torch.testing.assert_close(bounds[1].mean(), elbo.mean(), rtol=0, atol=0.05)
    ks = sorted(bounds)
    for small, large in zip(ks, ks[1:], strict=False):
        assert (bounds[large] >= bounds[small] - 1e-4).all(), (small, large)
    assert (bounds[256] - bounds[1]).mean() > 0.1  # the bound really tightens on this model


def test_lit_iwae_estimate_beats_the_elbo():
    from mlnotes_zoo.lit.vae import LitVAE

    model, x = _trained_looking_vae()
    torch.manual_seed(3)
    lit = LitVAE(net=model)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        z = model.reparameterize(mu, logvar, num_samples=4096)
        elbo = (model.log_likelihood(model.decode(z), x) - gaussian_kl_standard_normal(mu, logvar))
        iwae = torch.stack([lit.iwae(x, 500, chunk=64) for _ in range(8)])
    assert iwae.mean() > elbo.mean() + 0.1
    assert iwae.std(0).mean() < 0.2  # chunked evaluation is a stable estimate


def test_gradients_flow_only_through_mu_and_sigma():
    torch.manual_seed(0)
    mu = torch.randn(5, 3, requires_grad=True)
    logvar = torch.randn(5, 3, requires_grad=True)
    z = VAE.reparameterize(mu, logvar)
    # The graph of z has exactly two leaves, μ and log σ²: ε entered as a constant.
    leaves, stack, seen = set(), [z.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):
            leaves.add(id(fn.variable))
        stack.extend(f for f, _ in fn.next_functions)
    assert leaves == {id(mu), id(logvar)}
    # dz/dμ = 1 and dz/dlogσ² = ½σε, with ε = (z − μ)/σ recovered from the sample.
    grad_mu, grad_logvar = torch.autograd.grad(z.sum(), [mu, logvar])
    sigma = torch.exp(0.5 * logvar.detach())
    eps = (z.detach() - mu.detach()) / sigma
    torch.testing.assert_close(grad_mu, torch.ones_like(mu))
    torch.testing.assert_close(grad_logvar, 0.5 * sigma * eps)
