"""The VAE objective: ELBO, its parts, and the importance-weighted bound (IWAE).

Notation follows the notes (``shared/notes/004``, "Variational autoencoder") and
Kingma & Welling 2014 / Burda et al. 2016:

    ELBO(x) = E_{q(z|x)}[log p(x|z)] − KL(q(z|x) ‖ p(z)),      p(z) = N(0, I)
    IWAE_k(x) = E[log (1/k) Σ_i p(x, z_i) / q(z_i|x)],          z_i ~ q(z|x)

IWAE_1 = ELBO ≤ IWAE_k ≤ IWAE_{k+1} ≤ log p(x) (Burda et al., Theorem 1).
All functions return one value per example (shape ``(B,)``), in nats.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "gaussian_kl_standard_normal",
    "bernoulli_log_likelihood",
    "gaussian_log_likelihood",
    "log_normal",
    "elbo",
    "iwae_bound",
]

_LOG_2PI = math.log(2 * math.pi)


def gaussian_kl_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """Analytic KL(N(μ, diag σ²) ‖ N(0, I)) summed over the latent dimension."""
    # KL = −½ Σ_j (1 + log σ_j² − μ_j² − σ_j²)
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=-1)


def log_normal(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; μ, diag σ²) summed over the last dimension."""
    # log N = −½ Σ_j [log 2π + log σ_j² + (z_j − μ_j)² / σ_j²]
    return -0.5 * torch.sum(_LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar), dim=-1)


def bernoulli_log_likelihood(logits: Tensor, x: Tensor, *, event_dims: int) -> Tensor:
    """log p(x|z) = Σ_d x_d log π_d + (1 − x_d) log(1 − π_d), π = sigmoid(logits); x ∈ {0, 1}.

    Sums over the last ``event_dims`` dimensions (3 for (C, H, W) images); ``x`` broadcasts
    against ``logits`` so k samples ``(k, B, ...)`` can share one batch ``(B, ...)``.
    """
    x = x.expand_as(logits)
    nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return -nll.sum(dim=tuple(range(-event_dims, 0)))


def gaussian_log_likelihood(
    mean: Tensor, log_scale: Tensor, x: Tensor, *, event_dims: int
) -> Tensor:
    """log N(x; mean, σ²) summed over the last ``event_dims`` dims, σ = exp(log_scale)."""
    # log N = −½ log 2π − log σ − (x − m)² / (2σ²)
    log_px = -0.5 * _LOG_2PI - log_scale - 0.5 * ((x - mean) * torch.exp(-log_scale)).pow(2)
    return log_px.sum(dim=tuple(range(-event_dims, 0)))


def elbo(log_px_given_z: Tensor, kl: Tensor, beta: float = 1.0) -> Tensor:
    """β-ELBO = E_q[log p(x|z)] − β·KL (β = 1 is the evidence lower bound of the notes)."""
    return log_px_given_z - beta * kl


def iwae_bound(log_px_given_z: Tensor, z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """Importance-weighted bound from k samples laid out as ``(k, B, ...)``.

    ``log_px_given_z``: (k, B); ``z``: (k, B, L) drawn from q(z|x) = N(μ, σ²); ``mu``,
    ``logvar``: (B, L). Returns (B,).
    """
    k = z.shape[0]
    log_pz = log_normal(z, torch.zeros_like(z), torch.zeros_like(z))  # (k, B)
    log_qz = log_normal(z, mu.unsqueeze(0), logvar.unsqueeze(0))  # (k, B)
    log_w = log_px_given_z + log_pz - log_qz  # log p(x, z_i) − log q(z_i|x)
    # IWAE_k = log (1/k) Σ_i w_i, computed stably
    return torch.logsumexp(log_w, dim=0) - math.log(k)
