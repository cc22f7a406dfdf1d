"""Invertible building blocks of the flow models: squeeze and affine coupling.

Every block maps ``x -> (y, log_det)`` with ``log_det = log |det ∂y/∂x|`` per example, shape
``(B,)``, and has ``inverse(y) -> x``. RealNVP (Dinh et al. 2017) and Glow (Kingma &
Dhariwal 2018) both build on the affine coupling layer; they differ in how the halves are
chosen (masks vs. a learned 1×1 convolution) and in how the scale is squashed.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = ["Squeeze", "CouplingNet", "AffineCoupling", "checkerboard_mask"]

MASKS = ("checkerboard", "channel")
SCALE_MAPS = ("tanh", "sigmoid")


class Squeeze(nn.Module):
    """Space-to-depth: (B, C, H, W) -> (B, 4C, H/2, W/2), a permutation, so log|det| = 0."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = rearrange(x, "b c (h p) (w q) -> b (c p q) h w", p=2, q=2)
        return y, x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return rearrange(y, "b (c p q) h w -> b c (h p) (w q)", p=2, q=2)


class CouplingNet(nn.Module):
    """The conditioner of a coupling layer: 3×3 conv -> ReLU -> 1×1 conv -> ReLU -> 3×3 conv.

    Glow's NN() (Kingma & Dhariwal 2018, §3.3). The last conv starts near zero so each
    coupling starts near the identity (Glow uses exactly zero; a tiny nonzero start keeps
    gradients flowing to the earlier convs from the first step).
    """

    def __init__(self, *, in_channels: int, out_channels: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 3, padding=1),
        )
        last = self.net[-1]
        nn.init.normal_(last.weight, std=1e-3)
        nn.init.zeros_(last.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def checkerboard_mask(height: int, width: int, parity: int, device=None) -> Tensor:
    """(1, 1, H, W) with 1 where (i + j + parity) is even: the pixels the coupling keeps."""
    i = torch.arange(height, device=device).view(-1, 1)
    j = torch.arange(width, device=device).view(1, -1)
    return ((i + j + parity) % 2 == 0).float().view(1, 1, height, width)


class AffineCoupling(nn.Module):
    """Affine coupling y_b = x_b ⊙ exp(s(x_a)) + t(x_a), y_a = x_a (Dinh et al. 2017, eq. 4–5).

    The Jacobian is triangular, so log|det ∂y/∂x| = Σ s(x_a) over the transformed entries.

    Args:
        channels: C of the (B, C, H, W) input.
        hidden: channels of the conditioner :class:`CouplingNet`.
        mask: ``"checkerboard"`` (x_a = pixels with (i + j + parity) even, all channels;
            H and W must be even) or
            ``"channel"`` (x_a = one half of the channels; ``parity`` picks which half).
        parity: 0 or 1, alternated between consecutive couplings so every entry changes.
        scale_map: how the raw scale is squashed: ``"tanh"`` (RealNVP: s = a·tanh(raw), a
            learned per channel) or ``"sigmoid"`` (Glow: exp(s) = sigmoid(raw + 2)).
    """

    def __init__(
        self,
        *,
        channels: int,
        hidden: int,
        mask: Literal["checkerboard", "channel"] = "channel",
        parity: int = 0,
        scale_map: Literal["tanh", "sigmoid"] = "tanh",
    ) -> None:
        super().__init__()
        if mask not in MASKS:
            raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
        if scale_map not in SCALE_MAPS:
            raise ValueError(f"scale_map must be one of {SCALE_MAPS}, got {scale_map!r}")
        if mask == "channel" and channels < 2:
            raise ValueError("a channel mask needs at least 2 channels (squeeze first)")
        if parity not in (0, 1):
            raise ValueError(f"parity must be 0 or 1, got {parity}")
        self.channels, self.mask, self.parity, self.scale_map = channels, mask, parity, scale_map
        if mask == "checkerboard":
            n_in, n_out = 2 * channels, 2 * channels  # half the pixels, as (2C, H/2, W/2)
        else:
            n_in = channels // 2 if parity == 0 else channels - channels // 2
            n_out = channels - n_in
        self.net = CouplingNet(in_channels=n_in, out_channels=2 * n_out, hidden=hidden)
        if scale_map == "tanh":
            self.scale = nn.Parameter(torch.ones(1, n_out, 1, 1))

    # -- the two halves ------------------------------------------------------------------
    # The checkerboard halves are gathered as half-resolution images: in each 2×2 block the
    # pixels (0,0), (1,1) have i + j even and (0,1), (1,0) odd, so space-to-depth makes
    # x_a = (B, 2C, H/2, W/2). The partition is exactly the mask b ⊙ x of the paper; the
    # conditioner just runs on the kept pixels instead of a full grid that is half zeros
    # (a quarter of the conv cost of masking).
    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.mask == "checkerboard":
            blocks = rearrange(x, "b c (h p) (w q) -> b (p q) c h w", p=2, q=2)
            even = torch.cat([blocks[:, 0], blocks[:, 3]], dim=1)  # (B, 2C, H/2, W/2)
            odd = torch.cat([blocks[:, 1], blocks[:, 2]], dim=1)
            return (even, odd) if self.parity == 0 else (odd, even)
        n_a = self.channels // 2 if self.parity == 0 else self.channels - self.channels // 2
        if self.parity == 0:
            return x[:, :n_a], x[:, n_a:]
        return x[:, -n_a:], x[:, :-n_a]

    def _merge(self, x_a: Tensor, x_b: Tensor) -> Tensor:
        if self.mask == "checkerboard":
            even, odd = (x_a, x_b) if self.parity == 0 else (x_b, x_a)
            p00, p11 = even.chunk(2, dim=1)
            p01, p10 = odd.chunk(2, dim=1)
            blocks = torch.stack([p00, p01, p10, p11], dim=1)  # (B, 4, C, H/2, W/2)
            return rearrange(blocks, "b (p q) c h w -> b c (h p) (w q)", p=2, q=2)
        return torch.cat([x_a, x_b] if self.parity == 0 else [x_b, x_a], dim=1)

    def _log_scale_shift(self, x_a: Tensor) -> tuple[Tensor, Tensor]:
        raw_scale, shift = self.net(x_a).chunk(2, dim=1)
        if self.scale_map == "tanh":
            log_scale = self.scale * torch.tanh(raw_scale)
        else:
            log_scale = F.logsigmoid(raw_scale + 2.0)  # exp(s) = sigmoid(raw + 2) ∈ (0, 1)
        return log_scale, shift

    # -- x -> y and back -----------------------------------------------------------------
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x_a, x_b = self._split(x)
        log_scale, shift = self._log_scale_shift(x_a)
        y_b = x_b * torch.exp(log_scale) + shift
        # log|det ∂y/∂x| = Σ_{transformed entries} s(x_a)
        return self._merge(x_a, y_b), log_scale.flatten(1).sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        y_a, y_b = self._split(y)
        log_scale, shift = self._log_scale_shift(y_a)
        return self._merge(y_a, (y_b - shift) * torch.exp(-log_scale))
