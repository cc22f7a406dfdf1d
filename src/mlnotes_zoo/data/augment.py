"""Batched view augmentations for contrastive learning on tiny images (8×8 … 32×32).

SimCLR's views (Chen et al. 2020, §3 and appendix A) are a random resized crop, colour
distortion and Gaussian blur; for small grey images we use their analogues: crop + affine
(rotation, shear, translation) in one resampling, brightness/contrast jitter, blur and
pixel noise.

Every image of a batch gets its own random parameters. ``torchvision.transforms.v2``
classes draw *one* parameter set per call, so calling them on a batch would crop every image
the same way and the two views would differ only by one batch-wide transform — an easy
shortcut for the loss. The geometry therefore builds one affine matrix per image and
resamples the whole batch in one ``grid_sample`` (the same maths as v2's ``affine`` and
``resized_crop``); the blur uses ``torchvision.transforms.v2.functional.gaussian_blur``. It
runs on the batch's device (GPU included) with the global torch RNG (seeded by
``seed_everything``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.v2.functional import gaussian_blur

__all__ = ["ContrastiveAugment"]


class ContrastiveAugment(nn.Module):
    """(B, C, H, W) images in [0, 1] -> one random view of each, same shape, in [0, 1].

    Args:
        crop_scale: range of the crop's area as a fraction of the image (RandomResizedCrop).
        crop_ratio: range of the crop's aspect ratio (sampled log-uniformly).
        degrees: rotation drawn from U(−degrees, degrees).
        shear: shear angle in degrees drawn from U(−shear, shear) along x.
        translate: shift drawn from U(−translate, translate) of the image size, per axis.
        flip_p: probability of a horizontal flip (0 for digits: a flipped 2 is not a 2).
        jitter: brightness and contrast factors drawn from U(1 − jitter, 1 + jitter).
        blur_p, blur_sigma: probability of a Gaussian blur and the range of its σ (pixels).
        noise_std: standard deviation of additive Gaussian pixel noise.
    """

    def __init__(
        self,
        *,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        degrees: float = 15.0,
        shear: float = 10.0,
        translate: float = 0.1,
        flip_p: float = 0.0,
        jitter: float = 0.4,
        blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 1.0),
        noise_std: float = 0.05,
    ) -> None:
        super().__init__()
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {crop_scale}")
        if not 0 < crop_ratio[0] <= crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < lo <= hi, got {crop_ratio}")
        for name, p in (("flip_p", flip_p), ("blur_p", blur_p)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        self.crop_scale = tuple(crop_scale)
        self.crop_ratio = tuple(crop_ratio)
        self.degrees, self.shear, self.translate = degrees, shear, translate
        self.flip_p, self.jitter = flip_p, jitter
        self.blur_p, self.blur_sigma, self.noise_std = blur_p, tuple(blur_sigma), noise_std

    def affine_matrices(self, batch_size: int, device: torch.device) -> Tensor:
        """(B, 2, 3) maps from output to input coordinates in [−1, 1] (``affine_grid``):
        input = crop ∘ translate ∘ rotate ∘ shear ∘ flip (output)."""

        def uniform(lo: float, hi: float) -> Tensor:
            return torch.empty(batch_size, device=device).uniform_(lo, hi)

        # Random resized crop: area s, aspect r -> half-width w, half-height h (≤ 1), centre c
        area = uniform(*self.crop_scale)
        ratio = torch.exp(uniform(math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])))
        w = torch.sqrt(area * ratio).clamp(max=1.0)
        h = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = (1 - w) * uniform(-1, 1)
        cy = (1 - h) * uniform(-1, 1)
        angle = torch.deg2rad(uniform(-self.degrees, self.degrees))
        shear = torch.tan(torch.deg2rad(uniform(-self.shear, self.shear)))
        flip = torch.where(torch.rand(batch_size, device=device) < self.flip_p, -1.0, 1.0)
        tx, ty = (2 * self.translate * uniform(-1, 1) for _ in range(2))
        cos, sin = torch.cos(angle), torch.sin(angle)
        # rotate · shear_x · flip:  [[cos, −sin], [sin, cos]] · [[1, k], [0, 1]] · [[f, 0], [0, 1]]
        a11, a12 = cos * flip, cos * shear - sin
        a21, a22 = sin * flip, sin * shear + cos
        # crop scales and shifts the result: x_in = diag(w, h) (A x_out + t) + c
        rows = torch.stack([
            torch.stack([w * a11, w * a12, w * tx + cx], dim=-1),
            torch.stack([h * a21, h * a22, h * ty + cy], dim=-1),
        ], dim=1)
        return rows  # (B, 2, 3)

    def forward(self, x: Tensor) -> Tensor:
        b, c, height, width = x.shape
        theta = self.affine_matrices(b, x.device).to(x.dtype)
        grid = F.affine_grid(theta, [b, c, height, width], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.jitter > 0:
            shape = (b, 1, 1, 1)
            brightness = torch.empty(shape, device=x.device).uniform_(1 - self.jitter,
                                                                      1 + self.jitter)
            contrast = torch.empty(shape, device=x.device).uniform_(1 - self.jitter,
                                                                    1 + self.jitter)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - mean) * contrast + mean) * brightness
        if self.blur_p > 0:
            chosen = torch.rand(b, device=x.device) < self.blur_p
            if chosen.any():
                # kernel about 10% of the image side as in SimCLR, at least 3 and odd
                size = max(3, int(0.1 * min(height, width)) // 2 * 2 + 1)
                # one σ per call: v2's blur takes one kernel for the batch it is given
                sigma = float(torch.empty(()).uniform_(*self.blur_sigma))
                blurred = gaussian_blur(x[chosen], kernel_size=[size, size], sigma=[sigma, sigma])
                x = x.clone()
                x[chosen] = blurred
        if self.noise_std > 0:
            x = x + self.noise_std * torch.randn_like(x)
        return x.clamp(0, 1)

