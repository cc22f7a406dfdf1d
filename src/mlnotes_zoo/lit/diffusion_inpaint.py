"""LightningModule for GLIDE's inpainting model (:class:`~mlnotes_zoo.models.diffusion.
InpaintDDPM`): trained as :class:`~mlnotes_zoo.lit.diffusion.LitDiffusion` (L_simple, EMA
weights), with a random mask per training image, and scored by the masked-region error of
its fills beside the two baselines."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import torch
from torch import Tensor, nn
from torchvision.utils import make_grid

from mlnotes_zoo.constraints import Field, PositiveInt
from mlnotes_zoo.lit.diffusion import LitDiffusion
from mlnotes_zoo.models.diffusion import (
    InpaintDDPM,
    fixed_mask,
    masked_mse,
    mean_fill,
    nearest_fill,
)

MaskKind = Literal["lower_half", "upper_half", "left_half", "right_half", "center_box"]


class LitDiffusionInpaint(LitDiffusion):
    """Trains :class:`~mlnotes_zoo.models.diffusion.InpaintDDPM` (the masked image and the
    mask as extra U-Net channels; GLIDE, Nichol et al. 2022) on L_simple with one random
    mask per image (:func:`~mlnotes_zoo.models.diffusion.random_masks`); ``val/loss`` and
    ``test/loss`` draw t, ε and the masks from a seeded generator (EMA weights).

    Test metrics, for each mask of ``mask_kinds`` applied to every test image (pixels in
    [0, 1], mean squared error per hidden pixel):

    - ``inpaint_mse_<kind>``: the mean of ``inpaint_samples`` fills per image (DDIM,
      ``sample_steps`` steps, η = ``ddim_eta``): a Monte-Carlo estimate of the posterior mean
      E[x_hidden | x_visible], the fill of least expected squared error — not a sample;
    - ``inpaint_mse_<kind>_single``: one fill, a sample of the posterior (its expected error
      is the posterior mean's plus the posterior variance);
    - ``inpaint_mse_<kind>_mean_fill`` and ``inpaint_mse_<kind>_nearest``: the baselines,
      the training images' mean and the training image nearest on the visible pixels.

    Args:
        net: the InpaintDDPM (or its registry spec when loaded from a checkpoint).
        mask_kinds: the evaluation masks (:func:`~mlnotes_zoo.models.diffusion.fixed_mask`).
        inpaint_samples: fills averaged per image.
        The rest: see :class:`~mlnotes_zoo.lit.diffusion.LitDiffusion` (its FID, guidance
        and bound metrics are not computed here; ``inpaint_eval`` draws the picture).
    """

    net: InpaintDDPM

    def __init__(
        self,
        *,
        net: nn.Module | Mapping[str, Any],
        mask_kinds: Annotated[list[MaskKind], Field(min_length=1, description=(
            "evaluation masks, each one of lower_half, upper_half, left_half, right_half, "
            "center_box"))] = ("lower_half", "center_box"),
        inpaint_samples: PositiveInt = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(net=net, inpaint_samples=inpaint_samples, **kwargs)
        self.mask_kinds = list(mask_kinds)

    def setup(self, stage: str) -> None:
        pass  # no digit classifier: nothing here is judged by FID

    # -- filling ---------------------------------------------------------------------------
    @torch.no_grad()
    def fill(self, images: Tensor, mask: Tensor, fills: int = 1) -> Tensor:
        """``images`` (B, C, H, W) in [0, 1] with the pixels where ``mask`` is 0 filled by
        the EMA model, in [0, 1]: (fills, B, C, H, W). Seeded: the same fills every call."""
        net = self.sampler
        was_training = net.training
        net.eval()
        mask = mask.to(self.device)
        gen = torch.Generator().manual_seed(self.eval_seed + 3)
        out = torch.stack([
            torch.cat([net.inpaint(chunk.to(self.device) * 2 - 1, mask,
                                   steps=self.sample_steps, eta=self.ddim_eta, generator=gen)
                       for chunk in images.split(1000)])
            for _ in range(fills)])
        net.train(was_training)
        return ((out + 1) / 2).clamp(0, 1).cpu()

    def on_test_epoch_end(self) -> None:
        if not self._has_reference_data():
            return
        train = self._split("train")[0]
        images = self._split("test")[0]
        metrics = {}
        for kind in self.mask_kinds:
            mask = fixed_mask(kind, *images.shape[-2:])
            fills = self.fill(images, mask, self.inpaint_samples)
            name = f"test/inpaint_mse_{kind}"
            metrics[name] = masked_mse(fills.mean(0), images, mask)
            metrics[f"{name}_single"] = masked_mse(fills[0], images, mask)
            metrics[f"{name}_mean_fill"] = masked_mse(mean_fill(train, images, mask), images,
                                                      mask)
            metrics[f"{name}_nearest"] = masked_mse(nearest_fill(train, images, mask), images,
                                                    mask)
        self.log_dict({key: value.float() for key, value in metrics.items()})

    # -- pictures ------------------------------------------------------------------------
    @torch.no_grad()
    def pictures(self, batch: Any) -> dict[str, Tensor]:
        """``inpainting``: for each mask kind, rows input (hidden pixels grey) / mask /
        one fill / mean of ``inpaint_samples`` fills / truth, one column per image."""
        if self._trainer is not None and self.current_epoch % self.pictures_every_n_epochs:
            return {}
        if not self.inpaint_eval:
            return {}
        truth = batch[0][:8].cpu()
        rows = []
        for kind in self.mask_kinds:
            one = fixed_mask(kind, *truth.shape[-2:])  # (1, 1, H, W): what the network takes
            fills = self.fill(truth, one, self.inpaint_samples)
            mask = one.expand_as(truth)  # the rows drawn: every image and channel
            rows += [truth * mask + 0.5 * (1 - mask), mask, fills[0], fills.mean(0), truth]
        return {"inpainting": make_grid(torch.cat(rows), nrow=len(truth), padding=1,
                                        pad_value=0.5)}
