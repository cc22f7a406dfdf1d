"""LightningModule for the denoising autoencoder: trained on its corruptions (noise or masks),
scored by denoising PSNR at fixed noise levels and by inpainting beside two baselines."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import torch
from torch import Tensor, nn
from torchmetrics.functional.image import peak_signal_noise_ratio
from torchvision.utils import make_grid

from mlnotes_zoo.constraints import Field, NonNegativeInt, Seed
from mlnotes_zoo.lit.base import ZooModule
from mlnotes_zoo.models.dae import DAE, gaussian_corruption
from mlnotes_zoo.models.diffusion import mean_fill, nearest_fill


def psnr(images: Tensor, target: Tensor) -> Tensor:
    """Mean over images of PSNR = 10·log10(1 / MSE) in dB, pixels in [0, 1] (torchmetrics)."""
    return peak_signal_noise_ratio(images, target, data_range=1.0, dim=tuple(
        range(1, images.dim())), reduction="elementwise_mean")


class LitDAE(ZooModule):
    """Trains :class:`~mlnotes_zoo.models.dae.DAE` on ‖r(x̃, m) − x‖² with the network's
    corruptions (images in [0, 1]). ``val/loss`` and ``test/loss`` use corruptions drawn
    from a seeded generator (the same draws every epoch).

    Test metrics (epoch means over the test images, noise from the seeded generator):
    for each σ in ``test_sigmas``, ``psnr_sigma<σ>`` of the denoised images r(x + σε)
    clamped to [0, 1], beside ``psnr_noisy_sigma<σ>`` of the noisy input clamped to [0, 1]
    (clipping alone is a denoiser). Inpainting, when the network was trained with masks
    (``mask_prob`` > 0): the lower half of every test image hidden, ``inpaint_mse`` the mean
    squared error per hidden pixel of the network's fill, beside ``inpaint_mse_mean_fill``
    (the training images' mean) and ``inpaint_mse_nearest`` (the hidden half of the training
    image nearest on the visible half) — the baselines and the mask of ``ddpm``'s inpainting
    (:mod:`mlnotes_zoo.models.diffusion`), so the figures compare directly.

    Args:
        net: the DAE (or its registry spec when loaded from a checkpoint).
        test_sigmas: the noise levels σ of the denoising metrics and pictures.
        num_pictures: images per row of the pictures (noisy / denoised / clean rows per σ;
            masked / filled / truth rows for a lower-half and a box mask).
        eval_seed: seed of the evaluation corruptions.
        optimizer, scheduler, activation_checkpointing: see :class:`ZooModule`.
    """

    net: DAE

    def __init__(
        self,
        *,
        net: nn.Module | Mapping[str, Any],
        test_sigmas: Annotated[list[Annotated[float, Field(gt=0)]], Field(
            min_length=1, description="noise levels of the test PSNR")] = (0.1, 0.3, 0.5),
        num_pictures: NonNegativeInt = 8,
        eval_seed: Seed = 1234,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(net=net, **base_kwargs)
        self.test_sigmas = [float(s) for s in test_sigmas]
        self.num_pictures = num_pictures
        self.eval_seed = eval_seed
        self._generator = torch.Generator().manual_seed(eval_seed)
        self._train_images: Tensor | None = None  # baselines' training split, out of the state

    # -- training / evaluation -----------------------------------------------------------
    def model_step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        x = batch[0]
        if stage == "train":
            return {"loss": self.net.loss(x)}
        out = {"loss": self.net.loss(x, generator=self._generator)}
        if stage == "test":
            out.update(self.denoising_metrics(x))
            if self.net.mask_prob > 0:
                out.update(self.inpainting_metrics(x))
        return out

    def on_validation_epoch_start(self) -> None:
        self._generator = torch.Generator().manual_seed(self.eval_seed)

    def on_test_epoch_start(self) -> None:
        self._generator = torch.Generator().manual_seed(self.eval_seed)

    @torch.no_grad()
    def denoise(self, x: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
        """(noisy x + σε, denoised r(x + σε) clamped to [0, 1]) for clean x in [0, 1]."""
        noisy = gaussian_corruption(x, sigma, generator=self._generator)
        return noisy, self.net(noisy).clamp(0, 1)

    def denoising_metrics(self, x: Tensor) -> dict[str, Tensor]:
        out = {}
        for sigma in self.test_sigmas:
            noisy, denoised = self.denoise(x, sigma)
            out[f"psnr_sigma{sigma:g}"] = psnr(denoised, x)
            out[f"psnr_noisy_sigma{sigma:g}"] = psnr(noisy.clamp(0, 1), x)
        return out

    @staticmethod
    def inpaint_mask(like: Tensor) -> Tensor:
        """1 on the upper half of the rows (visible), 0 on the lower half: (1, 1, H, 1)."""
        h = like.shape[-2]
        return (torch.arange(h, device=like.device) < h // 2).to(like.dtype).view(1, 1, h, 1)

    @torch.no_grad()
    def inpaint(self, x: Tensor, mask: Tensor) -> Tensor:
        """x with its hidden pixels (``mask`` 0) filled by the network, in [0, 1]; the
        visible pixels are kept as they are."""
        mask = mask.expand_as(x)
        return mask * x + (1 - mask) * self.net(x * mask, mask).clamp(0, 1)

    def inpainting_metrics(self, x: Tensor) -> dict[str, Tensor]:
        mask = self.inpaint_mask(x)
        hidden = 1 - mask

        def mse(filled: Tensor) -> Tensor:  # per hidden pixel
            return ((filled - x) ** 2 * hidden).sum() / hidden.expand_as(x).sum()

        out = {"inpaint_mse": mse(self.inpaint(x, mask))}
        train = self._training_images()
        if train is not None:
            train = train.to(x.device)
            out["inpaint_mse_mean_fill"] = mse(mean_fill(train, x, mask))
            out["inpaint_mse_nearest"] = mse(nearest_fill(train, x, mask))
        return out

    def _training_images(self) -> Tensor | None:
        """The datamodule's whole training split (N, C, H, W), or None without one."""
        if self._train_images is None:
            dm = self._trainer.datamodule if self._trainer is not None else None
            if not hasattr(dm, "reference_data"):
                return None
            self._train_images = dm.reference_data("train").tensors[0]
        return self._train_images

    # -- pictures ------------------------------------------------------------------------
    @torch.no_grad()
    def pictures(self, batch: Any) -> dict[str, Tensor]:
        if not self.num_pictures:
            return {}
        x = batch[0][: self.num_pictures].to(self.device)
        n = len(x)
        generator = self._generator
        self._generator = torch.Generator().manual_seed(self.eval_seed + 1)
        rows = []
        for sigma in self.test_sigmas:  # rows: noisy / denoised / clean, for each σ
            noisy, denoised = self.denoise(x, sigma)
            rows += [noisy.clamp(0, 1), denoised, x]
        grids = {"denoising": make_grid(torch.cat(rows), nrow=n, padding=1, pad_value=0.5)}
        if self.net.mask_prob > 0:  # rows: masked (hidden grey) / filled / truth
            rows = []
            box = self.net.draw_masks(n, generator=self._generator, device=self.device)
            for mask in (self.inpaint_mask(x), box):
                mask = mask.expand_as(x)
                rows += [x * mask + 0.5 * (1 - mask), self.inpaint(x, mask), x]
            grids["inpainting"] = make_grid(torch.cat(rows), nrow=n, padding=1, pad_value=0.5)
        self._generator = generator
        return grids
