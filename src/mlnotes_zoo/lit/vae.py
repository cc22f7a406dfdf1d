"""LightningModule for the VAE: β-ELBO training, IWAE log-likelihood at test time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.utils import make_grid

from mlnotes_zoo.constraints import NonNegativeFloat, NonNegativeInt, PositiveInt
from mlnotes_zoo.lit.base import OptimizerFactory, SchedulerFactory, ZooModule, paired_rows_grid
from mlnotes_zoo.models.vae import VAE, elbo, gaussian_kl_standard_normal, iwae_bound


class LitVAE(ZooModule):
    """Trains :class:`~mlnotes_zoo.models.vae.VAE` by maximising the β-ELBO.

    Args:
        net: the VAE (or its registry spec when loaded from a checkpoint).
        beta: weight of the KL term (β-VAE, Higgins et al. 2017); β = 1 is the ELBO.
        iwae_samples: k for the test-time importance-weighted bound log p(x) ≥ IWAE_k.
        num_pictures: how many images the reconstruction and sample grids show.
        optimizer, scheduler, activation_checkpointing: see
            :class:`~mlnotes_zoo.lit.base.ZooModule`.
    """

    net: VAE

    def __init__(
        self,
        *,
        net: nn.Module | Mapping[str, Any],
        beta: NonNegativeFloat = 1.0,
        iwae_samples: PositiveInt = 256,
        num_pictures: NonNegativeInt = 32,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(net=net, optimizer=optimizer, scheduler=scheduler, **base_kwargs)
        self.beta = beta
        self.iwae_samples = iwae_samples
        self.num_pictures = num_pictures

    def prepare(self, x: Tensor) -> Tensor:
        # A Bernoulli likelihood is a density only on binary pixels: binarize grey levels at
        # 0.5 (fixed, as in "binarized MNIST"), so the reported nats are a true likelihood.
        return (x > 0.5).to(x.dtype) if self.net.likelihood == "bernoulli" else x

    def model_step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        x = self.prepare(batch[0])
        decoded, mu, logvar, _ = self.net(x)
        log_px = self.net.log_likelihood(decoded, x)  # (B,) one-sample estimate of E_q log p(x|z)
        kl = gaussian_kl_standard_normal(mu, logvar)  # (B,) analytic
        objective = elbo(log_px, kl, beta=self.beta)
        out = {
            "loss": -objective.mean(),
            "elbo": elbo(log_px, kl).mean(),
            "recon": -log_px.mean(),
            "kl": kl.mean(),
        }
        if stage == "test":
            out["nll_iwae"] = -self.iwae(x, self.iwae_samples).mean()
        return out

    @torch.no_grad()
    def iwae(self, x: Tensor, num_samples: int, chunk: int = 64) -> Tensor:
        """IWAE_k(x) for each example (B,), k = ``num_samples``, in chunks of k to bound memory."""
        mu, logvar = self.net.encode(x)
        log_ws = []
        for start in range(0, num_samples, chunk):
            k = min(chunk, num_samples - start)
            z = self.net.reparameterize(mu, logvar, num_samples=k)  # (k, B, L)
            log_px = self.net.log_likelihood(self.net.decode(z), x)  # (k, B)
            # iwae_bound of one chunk is logmeanexp over it; recombine chunks exactly below.
            log_ws.append(iwae_bound(log_px, z, mu, logvar) + torch.log(torch.tensor(float(k))))
        total = torch.logsumexp(torch.stack(log_ws), dim=0)
        return total - torch.log(torch.tensor(float(num_samples)))

    @torch.no_grad()
    def pictures(self, batch: Any) -> dict[str, Tensor]:
        x = self.prepare(batch[0][: self.num_pictures])
        recon = self.net.mean_image(self.net.decode(self.net.encode(x)[0]))
        samples = self.net.sample(64).clamp(0, 1)
        return {
            # inputs, with their reconstructions (decoder mean at z = μ) below them
            "reconstructions": paired_rows_grid(x, recon.clamp(0, 1)),
            "samples": make_grid(samples, nrow=8, padding=1, pad_value=0.5),
        }
