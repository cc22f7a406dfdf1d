"""Variational autoencoder (Kingma & Welling 2014), MLP and convolutional variants, and its
objective: the ELBO and the importance-weighted bound (IWAE, Burda et al. 2016).

Reads top-down: encoders, decoders, :class:`VAE`, then the objective. The network returns
its outputs; the functions below turn them into the bounds. The notes (``shared/notes/000``
"Reparametrization trick", ``004`` "Variational autoencoder") explain why the sample is
written z = μ + σ·ε: the randomness ε has no parameters, so gradients reach the encoder only
through μ and σ. Notation of the objective:

    ELBO(x) = E_{q(z|x)}[log p(x|z)] − KL(q(z|x) ‖ p(z)),      p(z) = N(0, I)
    IWAE_k(x) = E[log (1/k) Σ_i p(x, z_i) / q(z_i|x)],          z_i ~ q(z|x)

IWAE_1 = ELBO ≤ IWAE_k ≤ IWAE_{k+1} ≤ log p(x) (Burda et al., Theorem 1). The objective's
functions return one value per example (shape ``(B,)``), in nats.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlnotes_zoo.constraints import PositiveInt
from mlnotes_zoo.models.shared import check_tensor
from mlnotes_zoo.registry import register_model

OBJECTIVE = ["gaussian_kl_standard_normal", "bernoulli_log_likelihood", "gaussian_log_likelihood",
             "log_normal", "elbo", "iwae_bound"]
__all__ = ["VAE", "VAEOutput", "MLPEncoder", "MLPDecoder", "ConvEncoder", "ConvDecoder",
           *OBJECTIVE]

class MLPEncoder(nn.Module):
    """x (B, C, H, W) -> 2·latent_dim numbers: (μ, log σ²)."""

    def __init__(self, *, in_shape: tuple[int, ...], latent_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(in_shape), hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 2 * latent_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MLPDecoder(nn.Module):
    """z (..., L) -> per-pixel parameters (..., C, H, W)."""

    def __init__(self, *, in_shape: tuple[int, ...], latent_dim: int, hidden: int) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, math.prod(in_shape)),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).unflatten(-1, self.in_shape)


class ConvEncoder(nn.Module):
    """Two stride-2 3×3 conv stages then a linear layer to (μ, log σ²)."""

    def __init__(self, *, in_shape: tuple[int, ...], latent_dim: int, hidden: int) -> None:
        super().__init__()
        c, h, w = in_shape
        c1, c2 = hidden // 8, hidden // 4
        self.net = nn.Sequential(
            nn.Conv2d(c, c1, 3, stride=2, padding=1),  # (B, c1, H/2, W/2)
            nn.SiLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),  # (B, c2, H/4, W/4)
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(c2 * (h // 4) * (w // 4), 2 * latent_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """Linear to a (c2, H/4, W/4) map, then two stride-2 transposed convs to (C, H, W)."""

    def __init__(self, *, in_shape: tuple[int, ...], latent_dim: int, hidden: int) -> None:
        super().__init__()
        c, h, w = in_shape
        c1, c2 = hidden // 8, hidden // 4
        self.seed_shape = (c2, h // 4, w // 4)
        self.fc = nn.Linear(latent_dim, math.prod(self.seed_shape))
        self.net = nn.Sequential(
            nn.SiLU(),
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),  # (B, c1, H/2, W/2)
            nn.SiLU(),
            nn.ConvTranspose2d(c1, c, 4, stride=2, padding=1),  # (B, C, H, W)
        )

    def forward(self, z: Tensor) -> Tensor:
        batch_shape = z.shape[:-1]
        h = self.fc(z.reshape(-1, z.shape[-1])).unflatten(-1, self.seed_shape)
        out = self.net(h)
        return out.reshape(*batch_shape, *out.shape[1:])


class VAEOutput(NamedTuple):
    decoded: Tensor  # Bernoulli logits or Gaussian means, (B, C, H, W)
    mu: Tensor  # (B, L)
    logvar: Tensor  # (B, L)
    z: Tensor  # (B, L)


@register_model("vae")
class VAE(nn.Module):
    """Gaussian encoder q(z|x) = N(μ(x), diag σ²(x)), prior N(0, I), decoder p(x|z).

    Args:
        in_shape: (C, H, W) of the images.
        latent_dim: L, the size of z.
        hidden: width of the MLP layers (the conv variant uses hidden/8 and hidden/4 channels).
        arch: ``"mlp"`` or ``"conv"`` (conv needs H and W divisible by 4).
        likelihood: ``"bernoulli"`` (pixels in {0, 1}, decoder gives logits) or
            ``"gaussian"`` (decoder gives means, one learned log-scale per pixel).
        encoder, decoder: pass your own modules to replace the built-in ones; the encoder
            must output (B, 2L), the decoder map (..., L) to (..., C, H, W).
    """

    def __init__(
        self,
        *,
        in_shape: tuple[PositiveInt, PositiveInt, PositiveInt] = (1, 8, 8),
        latent_dim: PositiveInt = 8,
        hidden: PositiveInt = 256,
        arch: Literal["mlp", "conv"] = "mlp",
        likelihood: Literal["bernoulli", "gaussian"] = "bernoulli",
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        in_shape = tuple(in_shape)
        if arch == "conv" and (in_shape[1] % 4 or in_shape[2] % 4):
            raise ValueError(f"arch='conv' needs H and W divisible by 4, got in_shape={in_shape}")
        self.in_shape = in_shape
        self.latent_dim = latent_dim
        self.likelihood = likelihood
        enc_cls, dec_cls = (MLPEncoder, MLPDecoder) if arch == "mlp" else (ConvEncoder, ConvDecoder)
        sizes = dict(in_shape=in_shape, latent_dim=latent_dim, hidden=hidden)
        self.encoder = encoder if encoder is not None else enc_cls(**sizes)
        self.decoder = decoder if decoder is not None else dec_cls(**sizes)
        if likelihood == "gaussian":
            self.log_scale = nn.Parameter(torch.zeros(in_shape))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Parameters (μ, log σ²) of q(z|x), each (B, L)."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor, num_samples: int | None = None) -> Tensor:
        """z = μ + σ·ε, ε ~ N(0, I): differentiable in μ and σ, not through the sampling.

        With ``num_samples=k`` returns (k, B, L), else (B, L).
        """
        shape = mu.shape if num_samples is None else (num_samples, *mu.shape)
        eps = torch.randn(shape, dtype=mu.dtype, device=mu.device)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: Tensor) -> Tensor:
        """Per-pixel parameters of p(x|z): logits (Bernoulli) or means (Gaussian)."""
        return self.decoder(z)

    def forward(self, x: Tensor) -> VAEOutput:
        check_tensor(x, "x", ("B", *self.in_shape), where="VAE.forward")
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        return VAEOutput(self.decode(z), mu, logvar, z)

    def log_likelihood(self, decoded: Tensor, x: Tensor) -> Tensor:
        """log p(x|z) in nats, summed over pixels: (...,) for decoded (..., C, H, W)."""
        if self.likelihood == "bernoulli":
            return bernoulli_log_likelihood(decoded, x, event_dims=3)
        return gaussian_log_likelihood(decoded, self.log_scale, x, event_dims=3)

    def mean_image(self, decoded: Tensor) -> Tensor:
        """E[x|z], for pictures: sigmoid of the logits or the Gaussian mean."""
        return torch.sigmoid(decoded) if self.likelihood == "bernoulli" else decoded

    def example_input(self, batch_size: int = 2) -> Tensor:
        """A valid input batch (binary pixels) for tests and benchmarks."""
        return torch.rand(batch_size, *self.in_shape).round()

    @torch.no_grad()
    def sample(self, num_samples: int, *, temperature: float = 1.0) -> Tensor:
        """Images E[x|z] for z ~ N(0, temperature²·I): (num_samples, C, H, W)."""
        device = next(self.parameters()).device
        z = temperature * torch.randn(num_samples, self.latent_dim, device=device)
        return self.mean_image(self.decode(z))


# -- the objective: ELBO and IWAE ------------------------------------------------------
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
