"""Inpainting with diffusion models: GLIDE's inpainting model (the masked image and the mask
as extra input channels of the U-Net; Nichol et al. 2022, §4 "Image inpainting") and
RePaint's resampling for the unconditional DDPM (Lugmayr et al. 2022).

The notes (``shared/notes/003`` "GLIDE") describe editing an image "by putting masks on the
image and tell[ing] the model what to draw in the masked area". A mask is 1 on the visible
pixels and 0 on the hidden ones (to be filled); images are in [−1, 1].

- :class:`InpaintDDPM` (registered ``ddpm_inpaint``): ε_θ(x_t, t | m ⊙ x_0, m), trained on
  L_simple with a random mask per image (:func:`random_masks`: halves and rectangles). Its
  sampler (:meth:`InpaintDDPM.inpaint`) is DDIM with GLIDE's ``denoised_fn``: the visible
  pixels of every x̂_0 are the known ones, so the last step returns them exactly.
- :func:`repaint`: the unconditional :class:`~.model.DDPM` fills the hole by replacing the
  visible pixels of x_τ' with a draw of q(x_τ' | x_0) after each DDIM step; with resampling,
  every ``jump`` steps the image is noised back ``jump`` steps (q(x_s | x_t), s > t) and
  denoised again, ``resample`` times in all, so the generated part can agree with the
  visible one (RePaint, Algorithm 1 and §4.2 "Resampling").
- The two baselines the fills are compared with: the training mean, and the training image
  nearest on the visible pixels (:func:`~.model.mean_fill`, :func:`~.model.nearest_fill`,
  kept in ``model.py`` where the unconditional inpainting uses them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Literal

import torch
from torch import Tensor, nn

from mlnotes_zoo.constraints import Field, Fraction, PositiveInt, UnitInterval
from mlnotes_zoo.models.diffusion.model import (
    DDPM,
    _at,
    ddim_timesteps,
    diffusion_loss,
    eps_from_v,
    q_sample,
    v_from_eps,
    x0_from_eps,
)
from mlnotes_zoo.models.shared import check_tensor
from mlnotes_zoo.registry import register_model

__all__ = ["InpaintDDPM", "ddpm_inpaint", "MASK_KINDS", "fixed_mask", "random_masks",
           "conditioning", "masked_mse", "renoise", "repaint", "repaint_schedule", "sample_inpaint"]

MASK_KINDS = ("lower_half", "upper_half", "left_half", "right_half", "center_box")
Predict = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]  # (x_t, t) -> (ε̂, x̂_0)


# -- masks -----------------------------------------------------------------------------------
def fixed_mask(kind: str, height: int, width: int) -> Tensor:
    """(1, 1, H, W): 1 visible, 0 hidden. ``lower_half`` hides rows ≥ H/2 (…``_half`` alike);
    ``center_box`` hides the middle H/2 × W/2 rectangle."""
    rows = torch.arange(height).view(height, 1)
    cols = torch.arange(width).view(1, width)
    hidden = {
        "lower_half": (rows >= height // 2) & (cols >= 0),
        "upper_half": (rows < height // 2) & (cols >= 0),
        "left_half": (cols < width // 2) & (rows >= 0),
        "right_half": (cols >= width // 2) & (rows >= 0),
        "center_box": ((rows >= height // 4) & (rows < height // 4 + height // 2)
                       & (cols >= width // 4) & (cols < width // 4 + width // 2)),
    }
    if kind not in hidden:
        raise ValueError(f"fixed_mask: kind={kind!r} is not one of {list(hidden)}")
    return (~hidden[kind]).float().view(1, 1, height, width)


def random_masks(n: int, height: int, width: int, *, half_share: float = 0.5,
                 generator: torch.Generator | None = None) -> Tensor:
    """(n, 1, H, W) training masks, each one hidden rectangle: with probability
    ``half_share`` one of the four halves, else a rectangle with sides uniform in 1..H (1..W)
    at a uniform position (the whole image now and then: GLIDE's model also generates)."""
    def draw(high: Tensor | int) -> Tensor:  # uniform integers in [0, high), per image
        return (torch.rand(n, generator=generator) * high).long()

    side = draw(4)  # 0 lower, 1 upper, 2 left, 3 right
    half_r0 = torch.where(side == 0, height // 2, 0)
    half_r1 = torch.where(side == 1, height // 2, height)
    half_c0 = torch.where(side == 3, width // 2, 0)
    half_c1 = torch.where(side == 2, width // 2, width)
    box_h, box_w = draw(height) + 1, draw(width) + 1
    box_r0, box_c0 = draw(height - box_h + 1), draw(width - box_w + 1)
    is_half = torch.rand(n, generator=generator) < half_share
    r0 = torch.where(is_half, half_r0, box_r0)[:, None, None]
    r1 = torch.where(is_half, half_r1, box_r0 + box_h)[:, None, None]
    c0 = torch.where(is_half, half_c0, box_c0)[:, None, None]
    c1 = torch.where(is_half, half_c1, box_c0 + box_w)[:, None, None]
    rows = torch.arange(height).view(1, height, 1)
    cols = torch.arange(width).view(1, 1, width)
    hidden = (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)  # (n, H, W)
    return (~hidden).float()[:, None]


def conditioning(known: Tensor, mask: Tensor) -> Tensor:
    """GLIDE's extra input channels: the visible pixels (hidden ones 0) and the mask,
    (B, C + 1, H, W)."""
    mask = mask.to(known).expand(known.shape[0], 1, *known.shape[2:])
    return torch.cat([known * mask, mask], dim=1)


def masked_mse(filled: Tensor, truth: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error per hidden pixel (``mask`` 0), over the batch: a scalar."""
    hidden = (1 - mask.to(truth)).expand_as(truth)
    return (((filled - truth) ** 2) * hidden).sum() / hidden.sum()


# -- the sampler both models use -----------------------------------------------------------
def repaint_schedule(steps: int, jump: int, resample: int) -> list[int]:
    """The states a RePaint walk visits over ``steps`` DDIM steps: state k is x at the k-th
    sampler timestep (``steps`` is x_0). Each step down is one denoising step; at every k
    divisible by ``jump`` the walk goes back up ``jump`` states, ``resample`` − 1 times
    (RePaint's ``get_schedule_jump``). ``jump = 0`` or ``resample = 1``: 0, 1, …, steps."""
    path, k = [0], 0
    left = ({j: resample - 1 for j in range(jump, steps + 1, jump)}
            if jump > 0 and resample > 1 else {})
    while k < steps:
        k += 1
        path.append(k)
        if left.get(k, 0) > 0:
            left[k] -= 1
            for _ in range(jump):
                k -= 1
                path.append(k)
    return path


def renoise(x: Tensor, alpha_bar_from: Tensor, alpha_bar_to: Tensor, noise: Tensor) -> Tensor:
    """A draw of q(x_s | x_t) for s later (noisier) than t: √(ᾱ_s/ᾱ_t) x_t + √(1 − ᾱ_s/ᾱ_t) ε,
    the forward chain from t to s in closed form (RePaint's jump back, Algorithm 1 line 10)."""
    ratio = (alpha_bar_to / alpha_bar_from).to(x.dtype)
    return ratio.sqrt() * x + (1 - ratio).sqrt() * noise


def _noise(shape: Sequence[int], like: Tensor, generator: torch.Generator | None) -> Tensor:
    # drawn on the CPU from ``generator``: the same draws on every device
    return torch.randn(tuple(shape), generator=generator).to(like.device, like.dtype)


@torch.no_grad()
def sample_inpaint(predict: Predict, alpha_bar: Tensor, times: Sequence[int], known: Tensor,
                   mask: Tensor, *, replace: Literal["x_t", "x0"], eta: float = 0.0,
                   jump: int = 0, resample: int = 1,
                   generator: torch.Generator | None = None) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) from x_T ~ N(0, I) over ``times`` that keeps the
    visible pixels (``mask`` 1) of ``known`` (B, C, H, W), returning (B, C, H, W).

    ``replace="x_t"`` (RePaint): after each step the visible pixels of x_τ' are a draw of
    q(x_τ' | x_0) — and of x_T at the start; ``replace="x0"`` (GLIDE's ``denoised_fn``):
    the visible pixels of each x̂_0 are the known ones and ε̂ follows from it. ``jump`` and
    ``resample`` walk :func:`repaint_schedule`; going up from state k to k − 1 draws
    x_s ~ q(x_s | x_t) = N(√(ᾱ_s/ᾱ_t) x_t, (1 − ᾱ_s/ᾱ_t) I). Noise comes from ``generator``
    in the order of :meth:`DDPM.inpaint` (start, its visible draw, then per step z and the
    visible draw), so ``resample = 1`` is that sampler draw for draw.
    """
    n = known.shape[0]
    visible = mask.to(known)
    times = list(times)
    x = _noise(known.shape, known, generator)

    def at(state: int) -> Tensor:  # ᾱ of a state; the last one is x_0 (ᾱ = 1)
        return alpha_bar[times[state]] if state < len(times) else alpha_bar.new_tensor(1.0)

    def seen(state: int) -> Tensor:  # the visible pixels at a state: q(x_τ | x_0) or x_0
        if state >= len(times):
            return known
        t = torch.full((n,), times[state], device=known.device, dtype=torch.long)
        return q_sample(known, t, _noise(known.shape, known, generator), alpha_bar)

    if replace == "x_t":
        x = visible * seen(0) + (1 - visible) * x
    path = repaint_schedule(len(times), jump, resample)
    for state, nxt in zip(path[:-1], path[1:], strict=True):
        if nxt < state:  # back up one state: re-noise the whole image
            x = renoise(x, at(state), at(nxt), _noise(x.shape, x, generator))
            continue
        step = times[state]
        t = torch.full((n,), step, device=x.device, dtype=torch.long)
        eps, x0 = predict(x.float(), t)
        if replace == "x0":
            x0 = visible * known + (1 - visible) * x0
            a = _at(alpha_bar, t, x)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        x0, eps = x0.double(), eps.double()
        z = _noise(x.shape, x, generator).double()
        a, a_prev = at(state), at(nxt)
        sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps + sigma * z
        x = x.float()
        if replace == "x_t":
            x = visible * seen(nxt) + (1 - visible) * x
    return visible * known + (1 - visible) * x  # exact on the visible pixels


def repaint(net: DDPM, known: Tensor, mask: Tensor, *, steps: int = 50, eta: float = 0.0,
            jump: int = 0, resample: int = 1,
            generator: torch.Generator | None = None) -> Tensor:
    """Fill the hidden pixels of ``known`` (B, C, H, W) in [−1, 1] with the unconditional
    ``net`` (RePaint, Lugmayr et al. 2022, on DDIM's ``steps`` trailing timesteps): the
    visible pixels of x_τ' replaced by q(x_τ' | x_0) after every step; every ``jump`` steps
    the image goes back ``jump`` steps and is denoised again, ``resample`` times in all.
    ``jump = 0`` or ``resample = 1`` is :meth:`DDPM.inpaint`. Returns (B, C, H, W)."""
    return sample_inpaint(lambda xt, t: net.predict(xt, t), net.alpha_bar,
                          ddim_timesteps(net.timesteps, steps), known, mask, replace="x_t",
                          eta=eta, jump=jump, resample=resample, generator=generator)


# -- GLIDE's inpainting model ----------------------------------------------------------------
class InpaintDDPM(DDPM):
    """A DDPM whose U-Net also sees the masked image and the mask: ε_θ(x_t, t | m ⊙ x_0, m)
    (GLIDE's inpainting model: "additional input channels … the masked image and the mask").

    ``forward(x_t (B, C, H, W), t (B,), y=None, *, known (B, C, H, W) or None, mask
    (B, 1, H, W) or (1, 1, H, W) or None)`` returns the predicted ε (or v), (B, C, H, W).
    Without ``known``/``mask`` nothing is visible (all-zero conditioning channels): the model
    generates, and the samplers it inherits from :class:`DDPM` draw whole images.

    Args: as :class:`DDPM`, without classes; ``half_share``: the share of training masks that
    hide a half (the rest hide a random rectangle, see :func:`random_masks`).
    """

    def __init__(self, *, half_share: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.half_share = half_share
        channels, widths0 = self.in_shape[0], self.unet.stem.out_channels
        # x_t, the masked image and the mask: 2C + 1 input channels, C out
        self.unet.stem = nn.Conv2d(2 * channels + 1, widths0, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, *,
                known: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        sizes = check_tensor(x, "x", ("B", *self.in_shape), where="InpaintDDPM.forward")
        check_tensor(t, "t", ("B",), where="InpaintDDPM.forward", kind="long", sizes=sizes)
        c, h, w = self.in_shape
        if known is None or mask is None:
            known, mask = torch.zeros_like(x), x.new_zeros(1, 1, h, w)
        check_tensor(known, "known", ("B", c, h, w), where="InpaintDDPM.forward", sizes=sizes)
        if mask.dim() != 4 or mask.shape[0] not in (1, x.shape[0]) or mask.shape[1:] != (1, h, w):
            raise ValueError(f"InpaintDDPM.forward: mask must be a float tensor of shape "
                             f"({x.shape[0]} or 1, 1, {h}, {w}); got {tuple(mask.shape)}")
        return self.unet(torch.cat([x, conditioning(known, mask)], dim=1), t)

    def example_input(self, batch_size: int = 2) -> tuple[Tensor, ...]:
        """(x_t, t) — the conditioning channels are keyword arguments (none: nothing seen)."""
        return torch.randn(batch_size, *self.in_shape), torch.randint(0, self.timesteps,
                                                                       (batch_size,))

    def loss(self, x0: Tensor, y: Tensor | None = None, *, label_dropout: float = 0.0,
             generator: torch.Generator | None = None, mask: Tensor | None = None) -> Tensor:
        """L_simple (or the v loss) over the whole image, t ~ U{0..T−1}, ε ~ N(0, I), one
        :func:`random_masks` mask per image unless ``mask`` is given (GLIDE trains on the
        whole image too). Draws from ``generator`` on the CPU when given."""
        b, device = x0.shape[0], x0.device
        if mask is None:
            mask = random_masks(b, *self.in_shape[1:], half_share=self.half_share,
                                generator=generator).to(device, x0.dtype)
        if generator is None:
            t = torch.randint(0, self.timesteps, (b,), device=device)
            noise = torch.randn_like(x0)
        else:
            t = torch.randint(0, self.timesteps, (b,), generator=generator).to(device)
            noise = torch.randn(x0.shape, generator=generator).to(device, x0.dtype)
        xt = q_sample(x0, t, noise, self.alpha_bar)
        target = noise if self.prediction == "eps" else v_from_eps(x0, t, noise, self.alpha_bar)
        return diffusion_loss(self(xt, t, known=x0, mask=mask), target)

    def predict_given(self, xt: Tensor, t: Tensor, known: Tensor, mask: Tensor, *,
                      clip: bool = True) -> tuple[Tensor, Tensor]:
        """(ε̂, x̂_0) at x_t, t given the visible pixels; ``clip`` as :meth:`DDPM.predict`."""
        out = self(xt, t, known=known, mask=mask)
        eps = out if self.prediction == "eps" else eps_from_v(xt, t, out, self.alpha_bar)
        x0 = x0_from_eps(xt, t, eps, self.alpha_bar)
        if clip:
            x0 = x0.clamp(-1, 1)
            a = _at(self.alpha_bar, t, xt)
            eps = (xt - a.sqrt() * x0) / (1 - a).sqrt()
        return eps, x0

    @torch.no_grad()
    def inpaint(self, known: Tensor, mask: Tensor, *, steps: int = 50, eta: float = 0.0,
                generator: torch.Generator | None = None) -> Tensor:
        """Fill the pixels where ``mask`` is 0 in ``known`` (B, C, H, W) in [−1, 1] by DDIM
        over ``steps`` trailing timesteps with the conditioning channels, the visible
        pixels of every x̂_0 set to the known ones (GLIDE's ``denoised_fn``). Returns
        (B, C, H, W), equal to ``known`` on the visible pixels."""
        mask = mask.to(known)
        return sample_inpaint(lambda xt, t: self.predict_given(xt, t, known, mask),
                              self.alpha_bar, ddim_timesteps(self.timesteps, steps), known,
                              mask, replace="x0", eta=eta, generator=generator)


@register_model("ddpm_inpaint")
def ddpm_inpaint(
    *,
    in_shape: tuple[PositiveInt, PositiveInt, PositiveInt] = (1, 8, 8),
    widths: Annotated[list[PositiveInt], Field(min_length=1, description=(
        "channels per resolution level"))] = (32, 64),
    num_res_blocks: PositiveInt = 1,
    groups: PositiveInt = 8,
    heads: PositiveInt = 4,
    dropout: UnitInterval = 0.0,
    timesteps: Annotated[int, Field(ge=2, description="T, the diffusion steps")] = 1000,
    schedule: Literal["linear", "cosine"] = "linear",
    beta_start: Annotated[float, Field(gt=0, lt=1)] = 1e-4,
    beta_end: Annotated[float, Field(gt=0, lt=1)] = 0.02,
    prediction: Literal["eps", "v"] = "eps",
    half_share: Fraction = 0.5,
) -> InpaintDDPM:
    """GLIDE-style inpainting DDPM: the U-Net takes x_t, the masked image and the mask;
    ``half_share`` of the training masks hide a half, the rest a random rectangle."""
    return InpaintDDPM(in_shape=in_shape, widths=widths, num_res_blocks=num_res_blocks,
                       groups=groups, heads=heads, dropout=dropout, timesteps=timesteps,
                       schedule=schedule, beta_start=beta_start, beta_end=beta_end,
                       prediction=prediction, half_share=half_share)
