"""Denoising autoencoder (Vincent et al. 2008) with the notes' two corruptions: Gaussian
noise, and masking out a part of the image ("neural inpainting").

The notes (``shared/notes/001`` "Variational Autoencoders") describe both: "by feeding the
encoder step noisy images as inputs, you can force the decoder to remove the noise ... a
de-noising autoencoder", and "Neural Inpainting is when u crop out a part of the input
image, feed it to the encoder step and have the decoder come up with the part that you
cropped". The network r (encoder → bottleneck → decoder) sees the corrupted input x̃ and the
mask of the pixels it may trust, and is trained to give back the clean x:

    x̃ = x + σ·ε,  ε ~ N(0, I)     (noise; σ fixed or drawn per image from [σ_min, σ_max])
    x̃ = m ⊙ x                      (masking; m = 1 on visible pixels, 0 on hidden ones)
    L = E ‖r(x̃, m) − x‖²            (the mean over pixels)

The minimiser of L is r*(x̃) = E[x | x̃]. For Gaussian noise that is Tweedie's formula
r*(x̃) = x̃ + σ²·∇ log p_σ(x̃), p_σ = p ∗ N(0, σ²I); so (r(x) − x)/σ² estimates the score
∇ log p(x) as σ → 0 (Alain & Bengio 2014; Vincent 2011) — the quantity a diffusion model's
ε-prediction estimates at each noise level (ε̂ = −σ·∇ log p_σ, ``models/diffusion``).
For masking, r*'s hidden pixels are the posterior mean of the missing part given the
visible one, the fill of least expected squared error.

Reads top-down: the corruptions and the loss (pure functions of tensors), the MLP and conv
encoder-decoders, then :class:`DAE`, the registered network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlnotes_zoo.constraints import Field, Fraction, PositiveInt
from mlnotes_zoo.errors import UsageError
from mlnotes_zoo.models.shared import check_tensor
from mlnotes_zoo.registry import register_model

OBJECTIVE = ["gaussian_corruption", "box_masks", "half_masks", "denoising_loss"]
__all__ = ["DAE", "dae", "MLPDenoiser", "ConvDenoiser", *OBJECTIVE]


# -- corruptions and the loss --------------------------------------------------------------
def _uniform(shape: Sequence[int], generator: torch.Generator | None,
             device: torch.device) -> Tensor:
    """U[0, 1) draws: from ``generator`` on the CPU when one is given (reproducible
    evaluation on any device), else from the device's global stream."""
    if generator is None:
        return torch.rand(*shape, device=device)
    return torch.rand(*shape, generator=generator).to(device)


def gaussian_corruption(x: Tensor, sigma: float | Tensor, *,
                        generator: torch.Generator | None = None) -> Tensor:
    """x̃ = x + σ·ε, ε ~ N(0, I) (unclipped). ``sigma``: one number, or one per example (B,)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.dim():
        sigma = sigma.view(-1, *[1] * (x.dim() - 1))  # (B, 1, ...)
    if generator is None:
        noise = torch.randn_like(x)
    else:
        noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    return x + sigma * noise


def box_masks(n: int, size: tuple[int, int], *, min_fraction: float, max_fraction: float,
              generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> Tensor:
    """(n, 1, H, W) masks (1 visible, 0 hidden), each hiding one axis-aligned rectangle of
    f·H·W pixels, f ~ U[min_fraction, max_fraction] (to within max(H, W)/2 pixels: the
    sides are whole; at least one pixel), aspect ratio log-uniform in [1/2, 2], placed uniformly."""
    h, w = size
    u = _uniform((n, 4), generator, torch.device(device))
    area = (min_fraction + (max_fraction - min_fraction) * u[:, 0]) * h * w
    aspect = 2 ** (2 * u[:, 1] - 1)  # box height / width
    box_h = (area * aspect).sqrt().round().clamp(1, h)
    box_w = (area / box_h).round().clamp(1, w)
    box_h = (area / box_w).round().clamp(1, h)  # whole sides: |box_h·box_w − area| ≤ max(h, w)/2
    top = (u[:, 2] * (h - box_h + 1)).floor()
    left = (u[:, 3] * (w - box_w + 1)).floor()
    rows = torch.arange(h, device=u.device)
    cols = torch.arange(w, device=u.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])  # (n, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])  # (n, W)
    hidden = in_rows[:, :, None] & in_cols[:, None, :]  # (n, H, W)
    return (~hidden).to(torch.float32).unsqueeze(1)


def half_masks(n: int, size: tuple[int, int], *, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> Tensor:
    """(n, 1, H, W) masks hiding the upper, lower, left or right half (⌊H/2⌋ rows or ⌊W/2⌋
    columns), each side with probability 1/4."""
    h, w = size
    side = (_uniform((n,), generator, torch.device(device)) * 4).long()  # 0 top .. 3 right
    rows = torch.arange(h, device=side.device).view(1, h, 1)
    cols = torch.arange(w, device=side.device).view(1, 1, w)
    s = side.view(n, 1, 1)
    hidden = (((s == 0) & (rows < h // 2)) | ((s == 1) & (rows >= h - h // 2))
              | ((s == 2) & (cols < w // 2)) | ((s == 3) & (cols >= w - w // 2)))
    return (~hidden).to(torch.float32).unsqueeze(1)


def denoising_loss(reconstruction: Tensor, clean: Tensor) -> Tensor:
    """L = mean over examples and pixels of (r(x̃) − x)²."""
    return F.mse_loss(reconstruction, clean)


# -- encoder-decoders ----------------------------------------------------------------------
class MLPDenoiser(nn.Module):
    """(x̃, m) flattened -> hidden -> latent (the bottleneck) -> hidden -> x̂ (any in_shape)."""

    def __init__(self, *, in_shape: tuple[int, ...], hidden: int, latent_dim: int) -> None:
        super().__init__()
        d = math.prod(in_shape)
        self.in_shape = tuple(in_shape)
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(2 * d, hidden), nn.SiLU(),
                                     nn.Linear(hidden, hidden), nn.SiLU(),
                                     nn.Linear(hidden, latent_dim))
        self.decoder = nn.Sequential(nn.SiLU(), nn.Linear(latent_dim, hidden), nn.SiLU(),
                                     nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, d))

    def forward(self, inputs: Tensor) -> Tensor:  # (B, 2C, ...) -> (B, C, ...)
        return self.decoder(self.encoder(inputs)).unflatten(1, self.in_shape)


class ConvDenoiser(nn.Module):
    """3×3 convs with two stride-2 stages down to (2w, H/4, W/4), a linear bottleneck of
    ``latent_dim``, and the mirror image up (transposed convs); w = ``hidden`` // 4."""

    def __init__(self, *, in_shape: tuple[int, ...], hidden: int, latent_dim: int) -> None:
        super().__init__()
        c, h, w = in_shape
        c1, c2 = max(hidden // 4, 1), max(hidden // 2, 1)
        self.seed_shape = (c2, h // 4, w // 4)
        self.encoder = nn.Sequential(
            nn.Conv2d(2 * c, c1, 3, padding=1), nn.SiLU(),  # (B, c1, H, W)
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.SiLU(),  # (B, c2, H/2, W/2)
            nn.Conv2d(c2, c2, 3, stride=2, padding=1), nn.SiLU(),  # (B, c2, H/4, W/4)
            nn.Flatten(), nn.Linear(math.prod(self.seed_shape), latent_dim))
        self.fc = nn.Sequential(nn.SiLU(), nn.Linear(latent_dim, math.prod(self.seed_shape)))
        self.decoder = nn.Sequential(
            nn.SiLU(),
            nn.ConvTranspose2d(c2, c2, 4, stride=2, padding=1), nn.SiLU(),  # (B, c2, H/2, W/2)
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), nn.SiLU(),  # (B, c1, H, W)
            nn.Conv2d(c1, c, 3, padding=1))  # (B, C, H, W)

    def forward(self, inputs: Tensor) -> Tensor:
        z = self.encoder(inputs)  # (B, latent_dim)
        return self.decoder(self.fc(z).unflatten(1, self.seed_shape))


# -- the network -----------------------------------------------------------------------------
class DAE(nn.Module):
    """Denoising autoencoder r(x̃, m): ``forward(x̃ (B, *in_shape), mask (B or 1, 1 or C, H, W)
    float, or None)`` returns the reconstruction x̂ (B, *in_shape), unclamped. ``mask``: 1 where
    x̃ may be trusted, 0 where a pixel was hidden; None means every pixel is visible (the
    noise corruption). The network sees (m ⊙ x̃, m) stacked on the channel axis, so a hidden
    pixel is never mistaken for a black one.

    :meth:`loss` corrupts a clean batch as configured and returns L; :meth:`corrupt` is that
    corruption alone; :meth:`score` is (r(x) − x)/σ² (Alain & Bengio 2014). With ``skip``
    the network adds its output to m ⊙ x̃ instead of giving x̂ itself.

    Args: see :func:`dae`.
    """

    def __init__(self, *, in_shape: Sequence[int] = (1, 8, 8), arch: str = "mlp",
                 hidden: int = 256, latent_dim: int = 32, sigma_min: float = 0.05,
                 sigma_max: float = 0.6, mask_prob: float = 0.5, masks: str = "mixed",
                 box_min: float = 0.1, box_max: float = 0.5, skip: bool = False) -> None:
        super().__init__()
        self.in_shape = tuple(int(s) for s in in_shape)
        if arch == "conv" and (len(self.in_shape) != 3 or self.in_shape[1] % 4
                               or self.in_shape[2] % 4):
            raise UsageError(f"dae: arch=conv needs in_shape (C, H, W) with H and W divisible "
                             f"by 4; got in_shape={list(self.in_shape)}")
        if mask_prob > 0 and len(self.in_shape) != 3:
            raise UsageError(f"dae: masking (mask_prob={mask_prob}) needs images, in_shape "
                             f"(C, H, W); got in_shape={list(self.in_shape)}: set mask_prob=0")
        if sigma_min > sigma_max:
            raise UsageError(f"dae: need sigma_min <= sigma_max, got {sigma_min} > {sigma_max}")
        if box_min > box_max:
            raise UsageError(f"dae: need box_min <= box_max, got {box_min} > {box_max}")
        if mask_prob < 1 and sigma_max == 0:
            raise UsageError(f"dae: mask_prob={mask_prob} leaves images to the noise "
                             "corruption, but sigma_max=0 adds none; raise sigma_max")
        self.arch = arch
        self.skip = skip
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.mask_prob = float(mask_prob)
        self.masks = masks
        self.box_min, self.box_max = float(box_min), float(box_max)
        net_cls = MLPDenoiser if arch == "mlp" else ConvDenoiser
        self.net = net_cls(in_shape=self.in_shape, hidden=hidden, latent_dim=latent_dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        sizes = check_tensor(x, "x", ("B", *self.in_shape), where="DAE.forward")
        if mask is None:
            mask = torch.ones_like(x)
        else:
            shape = (None, None, *self.in_shape[1:])  # (1 or B, 1 or C, H, W)
            check_tensor(mask, "mask", shape, where="DAE.forward", sizes=sizes)
            if mask.shape[0] not in (1, x.shape[0]) or mask.shape[1] not in (1, x.shape[1]):
                dims = ", ".join([f"1 or {x.shape[0]}", f"1 or {x.shape[1]}",
                                  *map(str, self.in_shape[1:])])
                raise ValueError(f"DAE.forward: mask must be a float tensor of shape ({dims}); "
                                 f"got {mask.dtype} {tuple(mask.shape)}")
            mask = mask.to(x.dtype).expand_as(x)
        x = x * mask
        out = self.net(torch.cat([x, mask], dim=1))  # (B, 2C, ...) -> (B, C, ...)
        return x + out if self.skip else out

    def example_input(self, batch_size: int = 2) -> Tensor:
        """A noisy batch in the data's range, for tests and benchmarks."""
        return gaussian_corruption(torch.rand(batch_size, *self.in_shape), 0.3)

    # -- the corruption and the objective ------------------------------------------------
    def draw_sigma(self, n: int, *, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> Tensor:
        """σ per example (n,), uniform in [sigma_min, sigma_max]."""
        u = _uniform((n,), generator, torch.device(device))
        return self.sigma_min + (self.sigma_max - self.sigma_min) * u

    def draw_masks(self, n: int, *, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> Tensor:
        """(n, 1, H, W) masks of the configured kind: ``boxes``, ``halves`` or ``mixed``
        (each image a box or a half with probability 1/2)."""
        size = self.in_shape[1:]
        kwargs = dict(generator=generator, device=device)
        if self.masks == "halves":
            return half_masks(n, size, **kwargs)
        boxes = box_masks(n, size, min_fraction=self.box_min, max_fraction=self.box_max,
                          **kwargs)
        if self.masks == "boxes":
            return boxes
        halves = half_masks(n, size, **kwargs)
        pick = (_uniform((n,), generator, torch.device(device)) < 0.5).view(n, 1, 1, 1)
        return torch.where(pick, halves, boxes)

    def corrupt(self, x: Tensor, *, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor]:
        """(x̃, m) for a clean batch x: each image masked with probability ``mask_prob``
        (x̃ = m ⊙ x), the others noised (x̃ = x + σε, σ ~ U[sigma_min, sigma_max], m = 1)."""
        n = x.shape[0]
        ones = torch.ones(n, *[1] * (x.dim() - 1), device=x.device, dtype=x.dtype)
        noisy = gaussian_corruption(x, self.draw_sigma(n, generator=generator, device=x.device),
                                    generator=generator)
        if self.mask_prob == 0:
            return noisy, ones.expand_as(x)
        masks = self.draw_masks(n, generator=generator, device=x.device).to(x.dtype)
        masked = _uniform((n,), generator, x.device) < self.mask_prob
        mask = torch.where(masked.view(-1, 1, 1, 1), masks, ones).expand_as(x)
        return torch.where(masked.view(-1, 1, 1, 1), x * mask, noisy), mask

    def loss(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """L = ‖r(x̃, m) − x‖² (mean) for a clean batch x and (x̃, m) = :meth:`corrupt` (x)."""
        corrupted, mask = self.corrupt(x, generator=generator)
        return denoising_loss(self(corrupted, mask), x)

    def score(self, x: Tensor, sigma: float) -> Tensor:
        """(r(x) − x)/σ² ≈ ∇ₓ log p(x) for a DAE trained at noise σ (Alain & Bengio 2014)."""
        return (self(x) - x) / sigma**2


@register_model("dae")
def dae(
    *,
    in_shape: Annotated[tuple[PositiveInt, ...], Field(min_length=1, description=(
        "(C, H, W) of images, or (D,) of points with arch=mlp"))] = (1, 8, 8),
    arch: Literal["mlp", "conv"] = "mlp",
    hidden: PositiveInt = 256,
    latent_dim: PositiveInt = 32,
    sigma_min: Annotated[float, Field(ge=0, description="least training noise σ")] = 0.05,
    sigma_max: Annotated[float, Field(ge=0, description="largest training noise σ")] = 0.6,
    mask_prob: Fraction = 0.5,
    masks: Literal["boxes", "halves", "mixed"] = "mixed",
    box_min: Annotated[float, Field(gt=0, le=1, description=(
        "least share of pixels a box hides"))] = 0.1,
    box_max: Annotated[float, Field(gt=0, le=1, description=(
        "largest share of pixels a box hides"))] = 0.5,
    skip: bool = False,
) -> DAE:
    """Denoising autoencoder (Vincent et al. 2008): Gaussian noise with σ drawn per image
    from [sigma_min, sigma_max] (equal for one σ), or with probability ``mask_prob`` a mask
    (``masks``: rectangles hiding box_min..box_max of the pixels, halves, or both) — the
    notes' "neural inpainting". ``arch``: MLP (any in_shape) or conv (H, W divisible by 4);
    ``hidden`` widths around a ``latent_dim`` bottleneck. ``skip``: x̂ = m⊙x̃ + g(x̃, m), the
    network learns only the correction (the residual learning of DnCNN, Zhang et al. 2017);
    at small σ that correction is σ²·∇ log p, so the score estimate is learned directly."""
    return DAE(in_shape=in_shape, arch=arch, hidden=hidden, latent_dim=latent_dim,
               sigma_min=sigma_min, sigma_max=sigma_max, mask_prob=mask_prob, masks=masks,
               box_min=box_min, box_max=box_max, skip=skip)
