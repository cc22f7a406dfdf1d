"""LightningModule for the VQ-VAE: reconstruction + codebook + β·commitment, codebook usage."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mlnotes_zoo.constraints import NonNegativeFloat, NonNegativeInt
from mlnotes_zoo.lit.base import OptimizerFactory, SchedulerFactory, ZooModule, paired_rows_grid
from mlnotes_zoo.models.vqvae import (
    VQVAE,
    CodebookUsage,
    codebook_loss,
    codebook_perplexity,
    commitment_loss,
    reconstruction_error,
    vqvae_loss,
)


class LitVQVAE(ZooModule):
    """Trains :class:`~mlnotes_zoo.models.vqvae.VQVAE` on L = ‖x − x̂‖² + ‖sg[z_e] − e‖²
    + β‖z_e − sg[e]‖² (the codebook term is dropped when the network uses EMA codes).

    Logged: ``loss``, ``recon_mse`` (mean squared error per pixel, pixels in [0, 1]),
    ``codebook``, ``commitment`` per step/epoch; over the whole validation and test split the
    codebook ``perplexity`` exp(H(code usage)) and ``codes_used`` (out of K). Training also logs
    the per-batch perplexity ``batch_perplexity``.

    Args:
        net: the VQ-VAE (or its registry spec when loaded from a checkpoint).
        beta: weight β of the commitment loss (0.25 in the paper).
        num_pictures: how many inputs the reconstruction grid shows.
        optimizer, scheduler, activation_checkpointing: see
            :class:`~mlnotes_zoo.lit.base.ZooModule`.
    """

    net: VQVAE

    def __init__(
        self,
        *,
        net: nn.Module | Mapping[str, Any],
        beta: NonNegativeFloat = 0.25,
        num_pictures: NonNegativeInt = 32,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(net=net, optimizer=optimizer, scheduler=scheduler, **base_kwargs)
        self.beta = beta
        self.num_pictures = num_pictures
        self.code_usage = CodebookUsage(self.net.num_codes)

    def model_step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        x = batch[0]
        x_hat, z_e, z_q, indices = self.net(x)
        recon = reconstruction_error(x_hat, x)  # (B,)
        commitment = commitment_loss(z_e, z_q)
        codebook = codebook_loss(z_e, z_q)
        # EMA codes are cluster means, not parameters: the codebook term has nothing to move.
        trained_codebook = codebook if not self.net.quantizer.ema else torch.zeros_like(codebook)
        loss = vqvae_loss(recon, trained_codebook, commitment, self.beta)
        out = {
            "loss": loss.mean(),
            "recon_mse": recon.mean(),
            "codebook": codebook.mean().detach(),
            "commitment": commitment.mean(),
        }
        if stage == "train":
            counts = torch.bincount(indices.flatten(), minlength=self.net.num_codes)
            out["batch_perplexity"] = codebook_perplexity(counts)
        else:
            self.code_usage.update(indices)
        return out

    # Split-level usage: torchmetrics sums the histograms over batches and ranks.
    def on_validation_epoch_start(self) -> None:
        self.code_usage.reset()

    def on_test_epoch_start(self) -> None:
        self.code_usage.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_usage("val")

    def on_test_epoch_end(self) -> None:
        self._log_usage("test")

    def _log_usage(self, stage: str) -> None:
        if not self.code_usage.update_called:
            return
        for name, value in self.code_usage.compute().items():
            self.log(f"{stage}/{name}", value)
        self.code_usage.reset()

    @torch.no_grad()
    def pictures(self, batch: Any) -> dict[str, Tensor]:
        x = batch[0][: self.num_pictures]
        recon = self.net.decode_indices(self.net.encode(x))
        if self.net.output != "sigmoid":
            recon = recon.clamp(0, 1)
        # inputs, with their reconstructions from the codes below them
        return {"reconstructions": paired_rows_grid(x, recon)}
