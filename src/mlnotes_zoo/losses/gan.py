"""GAN objectives: non-saturating (DCGAN) and Wasserstein with gradient penalty (WGAN-GP).

D is the discriminator (a logit of P(real)) or the critic (an unbounded score); x real,
x̃ = G(z) generated. Goodfellow et al. 2014 (§3 and the non-saturating heuristic),
Arjovsky et al. 2017, Gulrajani et al. 2017 (Algorithm 1):

    DCGAN  L_D = −log σ(D(x)) − log(1 − σ(D(x̃)))       L_G = −log σ(D(x̃))
    WGAN   L_D = D(x̃) − D(x) + λ·(‖∇_x̂ D(x̂)‖₂ − 1)²     L_G = −D(x̃)
           x̂ = ε·x + (1 − ε)·x̃,  ε ~ U[0, 1] per example

All losses are batch means (scalars); ``gradient_penalty`` returns the mean over examples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module

__all__ = [
    "discriminator_loss",
    "non_saturating_generator_loss",
    "critic_loss",
    "wasserstein_generator_loss",
    "interpolate",
    "gradient_penalty",
]


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Binary cross-entropy of D: real labelled 1, generated labelled 0."""
    # −log σ(D(x)) − log(1 − σ(D(x̃)));  log(1 − σ(a)) = log σ(−a)
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def non_saturating_generator_loss(fake_logits: Tensor) -> Tensor:
    """L_G = −log σ(D(G(z))): strong gradients early on, when D rejects the fakes easily.

    The minimax form log(1 − σ(D(G(z)))) saturates exactly then (Goodfellow et al. 2014, §3).
    """
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def critic_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """L_D = E[D(x̃)] − E[D(x)]: minus the critic's estimate of the Wasserstein-1 distance."""
    return fake_scores.mean() - real_scores.mean()


def wasserstein_generator_loss(fake_scores: Tensor) -> Tensor:
    """L_G = −E[D(G(z))]."""
    return -fake_scores.mean()


def interpolate(real: Tensor, fake: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """x̂ = ε·x + (1 − ε)·x̃ with one ε ~ U[0, 1] per example: points between the two sets."""
    eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device,
                     dtype=real.dtype, generator=generator)
    return eps * real + (1 - eps) * fake


def gradient_penalty(critic: Module, interpolates: Tensor) -> Tensor:
    """E[(‖∇_x̂ D(x̂)‖₂ − 1)²] over the examples x̂ (Gulrajani et al. 2017, eq. 3).

    The gradient is taken with ``create_graph=True`` so that the penalty itself is
    differentiable in the critic's parameters. Multiply by λ (10 in the paper) outside.
    """
    interpolates = interpolates.detach().requires_grad_(True)
    scores = critic(interpolates)  # (B,)
    # Σ_i D(x̂_i) has ∂/∂x̂_i = ∇D(x̂_i) when the critic treats examples independently
    (grads,) = torch.autograd.grad(scores.sum(), interpolates, create_graph=True)
    norms = grads.flatten(1).norm(2, dim=1)  # ‖∇_x̂ D(x̂)‖₂ per example, (B,)
    return (norms - 1).pow(2).mean()
