"""The VQ-VAE objective (van den Oord et al. 2017, eq. 3) and its parts.

    L = ‖x − x̂(z_q)‖²  +  ‖sg[z_e(x)] − e‖²  +  β ‖z_e(x) − sg[e]‖²
        reconstruction    codebook loss         commitment loss

sg[·] is stop-gradient (``detach``). The codebook loss moves only the codes e towards the
encoder outputs; the commitment loss moves only the encoder towards its codes, so that z_e
does not grow faster than the codebook can follow (β = 0.25 in the paper). The decoder's
gradient reaches the encoder through the straight-through estimator in
:class:`mlnotes_zoo.models.vqvae.VectorQuantizer`. With EMA codebook updates the codebook loss
is left out (the codes are cluster means, not parameters).

All functions return one value per example (shape ``(B,)``): means over that example's
pixels or latent elements, so the terms keep their scale across image and latent sizes.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["reconstruction_error", "codebook_loss", "commitment_loss", "vqvae_loss"]


def _per_example_mean(t: Tensor) -> Tensor:
    return t.flatten(1).mean(1)


def reconstruction_error(x_hat: Tensor, x: Tensor) -> Tensor:
    """Mean squared error per example, (1/|x|) ‖x − x̂‖² (a fixed-variance Gaussian's −log p)."""
    return _per_example_mean((x_hat - x).pow(2))


def codebook_loss(z_e: Tensor, z_q: Tensor) -> Tensor:
    """‖sg[z_e] − e‖² per example: gradient only to the codes ``z_q``."""
    return _per_example_mean((z_e.detach() - z_q).pow(2))


def commitment_loss(z_e: Tensor, z_q: Tensor) -> Tensor:
    """‖z_e − sg[e]‖² per example: gradient only to the encoder output ``z_e``."""
    return _per_example_mean((z_e - z_q.detach()).pow(2))


def vqvae_loss(recon: Tensor, codebook: Tensor, commitment: Tensor, beta: float = 0.25) -> Tensor:
    """L = reconstruction + codebook + β·commitment (pass a zero ``codebook`` under EMA)."""
    return recon + codebook + beta * commitment
