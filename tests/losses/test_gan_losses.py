"""GAN losses against independent computations: torch.distributions, per-example autograd
Jacobians, and a linear critic whose gradient penalty has a closed form."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli

from mlnotes_zoo.losses.gan import (
    critic_loss,
    discriminator_loss,
    gradient_penalty,
    interpolate,
    non_saturating_generator_loss,
    wasserstein_generator_loss,
)


def test_discriminator_and_generator_losses_match_bernoulli_log_likelihoods():
    torch.manual_seed(0)
    real_logits, fake_logits = torch.randn(7) * 3, torch.randn(7) * 3
    expected = (-Bernoulli(logits=real_logits).log_prob(torch.ones(7)).mean()
                - Bernoulli(logits=fake_logits).log_prob(torch.zeros(7)).mean())
    torch.testing.assert_close(discriminator_loss(real_logits, fake_logits), expected)
    torch.testing.assert_close(non_saturating_generator_loss(fake_logits),
                               -Bernoulli(logits=fake_logits).log_prob(torch.ones(7)).mean())


def test_non_saturating_loss_keeps_its_gradient_where_the_minimax_loss_vanishes():
    # D confidently rejects the fakes (logit −10): log(1 − σ(a)) is flat there, −log σ(a) is not.
    logits = torch.full((4,), -10.0, requires_grad=True)
    (grad_ns,) = torch.autograd.grad(non_saturating_generator_loss(logits), logits)
    minimax = torch.log1p(-torch.sigmoid(logits)).mean()  # the generator minimises this
    (grad_mm,) = torch.autograd.grad(minimax, logits)
    assert grad_ns.abs().min() > 0.2 and grad_mm.abs().max() < 1e-4


def test_wasserstein_losses():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 0.0, 4.0])
    assert critic_loss(real, fake).item() == pytest.approx(1.0 - 2.0)
    assert wasserstein_generator_loss(fake).item() == pytest.approx(-1.0)


def test_interpolates_lie_on_the_segments_with_one_epsilon_per_example():
    torch.manual_seed(1)
    real, fake = torch.randn(5, 2, 3, 3), torch.randn(5, 2, 3, 3)
    x_hat = interpolate(real, fake)
    eps = ((x_hat - fake) / (real - fake)).flatten(1)  # (B, D): constant along each row
    torch.testing.assert_close(eps, eps[:, :1].expand_as(eps))
    assert (eps >= 0).all() and (eps <= 1).all() and eps[:, 0].std() > 0


def test_gradient_penalty_matches_per_example_autograd_jacobians():
    torch.manual_seed(2)
    critic = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                           nn.Linear(4 * 5 * 5, 1), nn.Flatten(0))
    x_hat = torch.randn(6, 1, 5, 5)
    norms = torch.stack([
        torch.autograd.functional.jacobian(lambda x: critic(x.unsqueeze(0))[0], x).norm()
        for x in x_hat
    ])  # ‖∇_x D(x)‖₂ of each example on its own
    expected = ((norms - 1) ** 2).mean()
    torch.testing.assert_close(gradient_penalty(critic, x_hat), expected)


def test_gradient_penalty_of_a_linear_critic_and_its_parameter_gradient():
    # D(x) = w·x + b: ∇_x D = w everywhere, so GP = (‖w‖ − 1)² and ∂GP/∂w = 2(‖w‖ − 1) w/‖w‖;
    # the second needs create_graph=True (the penalty must train the critic).
    torch.manual_seed(3)
    critic = nn.Sequential(nn.Flatten(), nn.Linear(12, 1), nn.Flatten(0))
    w = critic[1].weight
    gp = gradient_penalty(critic, torch.randn(4, 3, 2, 2))
    norm = w.detach().norm()
    assert gp.item() == pytest.approx(((norm - 1) ** 2).item(), rel=1e-5)
    gp.backward()
    torch.testing.assert_close(w.grad, 2 * (norm - 1) * w.detach() / norm)
    assert critic[1].bias.grad is None or not critic[1].bias.grad.abs().sum()
