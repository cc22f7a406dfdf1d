"""The noise-prediction network of DDPM: a small U-Net (Ho et al. 2020, App. B; the
PixelCNN++-style backbone with a time embedding).

Reads top-down: the sinusoidal time embedding, the residual block (GroupNorm, SiLU, conv, the
time/class embedding added in between), self-attention, the down/up-sampling convs, then
:class:`UNet`. Each resolution level has ``num_res_blocks`` residual blocks going down and
one more coming up (each taking the skip connection of one block on the way down);
self-attention runs in the middle block, at the lowest resolution, where it is cheapest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["sinusoidal_embedding", "ResBlock", "AttentionBlock", "Downsample", "Upsample",
           "UNet"]


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """(B,) timesteps -> (B, dim): [cos(t·ω_k), sin(t·ω_k)], ω_k = max_period^(−k/(dim/2)).

    The Transformer's position encoding (Vaswani et al. 2017, §3.5) applied to the
    timestep, as in DDPM.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device,
                                                            dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]  # (B, dim/2)
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return F.pad(emb, (0, dim % 2))  # (B, dim)


class ResBlock(nn.Module):
    """x + conv(SiLU(GN(conv(SiLU(GN(x))) + W·emb))), with a 1×1 conv on the skip when the
    channels change. ``forward(x (B, C_in, H, W), emb (B, E)) -> (B, C_out, H, W)``."""

    def __init__(self, *, in_channels: int, out_channels: int, emb_dim: int, groups: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = (nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels
                     else nn.Identity())

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]  # the timestep, per channel
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """x + proj(softmax(QKᵀ/√d)·V) over the H·W positions, ``heads`` heads."""

    def __init__(self, *, channels: int, groups: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w
                                                 ).transpose(-1, -2).unbind(1)  # (B, nh, HW, d)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, nh, HW, d)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3×3 conv: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 then a 3×3 conv: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """(x_t (B, C, H, W), t (B,), y (B,) or None) -> (B, C, H, W): the predicted noise ε (or v).

    Args:
        in_channels: C.
        widths: channels at each resolution level; level i runs at side H/2^i.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        groups: GroupNorm groups (divides every width).
        heads: attention heads in the middle block (divides the last width).
        dropout: inside the residual blocks.
        num_classes: 0 for an unconditional net; K > 0 adds a label embedding with K + 1
            rows, the last the null label ∅ of classifier-free guidance.
    """

    def __init__(self, *, in_channels: int, widths: Sequence[int], num_res_blocks: int,
                 groups: int, heads: int, dropout: float = 0.0, num_classes: int = 0) -> None:
        super().__init__()
        widths = list(widths)
        emb_dim = 4 * widths[0]
        self.num_classes = num_classes
        self.time_dim = widths[0]
        self.time_mlp = nn.Sequential(nn.Linear(widths[0], emb_dim), nn.SiLU(),
                                      nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(in_channels=cin, out_channels=cout, emb_dim=emb_dim, groups=groups,
                            dropout=dropout)

        # down: remember the channels of every skip connection
        skips, ch = [widths[0]], widths[0]
        self.down = nn.ModuleList()
        for i, width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(res(ch, width))
                ch = width
                skips.append(ch)
            sample = Downsample(ch) if i < len(widths) - 1 else nn.Identity()
            if i < len(widths) - 1:
                skips.append(ch)
            self.down.append(nn.ModuleDict({"blocks": blocks, "sample": sample}))
        self.mid1 = res(ch, ch)
        self.mid_attn = AttentionBlock(channels=ch, groups=groups, heads=heads)
        self.mid2 = res(ch, ch)
        self.up = nn.ModuleList()
        for i, width in reversed(list(enumerate(widths))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(res(ch + skips.pop(), width))
                ch = width
            sample = Upsample(ch) if i > 0 else nn.Identity()
            self.up.append(nn.ModuleDict({"blocks": blocks, "sample": sample}))
        self.head = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(),
                                  nn.Conv2d(ch, in_channels, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.time_mlp(sinusoidal_embedding(t, self.time_dim))  # (B, E)
        if self.label_emb is not None:
            if y is None:  # no label: the null label ∅
                y = torch.full_like(t, self.num_classes)
            emb = emb + self.label_emb(y)
        h = self.stem(x)
        hs = [h]
        for level in self.down:
            for block in level["blocks"]:
                h = block(h, emb)
                hs.append(h)
            if not isinstance(level["sample"], nn.Identity):
                h = level["sample"](h)  # (B, C, H/2, W/2)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for level in self.up:
            for block in level["blocks"]:
                h = block(torch.cat([h, hs.pop()], dim=1), emb)  # skip from the way down
            h = level["sample"](h)
        return self.head(h)
