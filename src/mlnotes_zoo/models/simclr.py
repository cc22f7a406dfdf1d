"""SimCLR (Chen et al. 2020) and SupCon (Khosla et al. 2020): encoder + projection head.

Reads top-down: the residual block, the small ResNet encoder for 8×8 … 32×32 images, the MLP
projection head, then :class:`SimCLR`. The network returns ``(projections, features)``;
:mod:`mlnotes_zoo.losses.contrastive` turns the projections of two augmented views into
NT-Xent or SupCon, and the features h (before the head) are what downstream tasks use
(SimCLR §4.2: h is linearly more informative than z = g(h)). The two registered names build
the same network; they differ in the objective their LightningModule trains
(``lit/simclr.py``). The notes: ``shared/notes/003`` "Contrastive loss".
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from mlnotes_zoo.models.shared import check_tensor
from mlnotes_zoo.registry import register_model

__all__ = ["ResidualBlock", "ResNetEncoder", "ProjectionHead", "SimCLR", "SupCon",
           "SimCLROutput"]


class ResidualBlock(nn.Module):
    """ResNet basic block (He et al. 2016): two 3×3 convs with BN, identity or 1×1 shortcut."""

    def __init__(self, *, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return torch.relu(h + self.shortcut(x))


class ResNetEncoder(nn.Module):
    """Small ResNet for tiny images: a 3×3 stem (no max-pool: 8×8 inputs have no pixels to
    spare, as in SimCLR's CIFAR variant), then one stage per width, each stage after the
    first halving the resolution; global average pooling gives h (B, widths[-1])."""

    def __init__(self, *, in_channels: int, widths: tuple[int, ...],
                 blocks_per_stage: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        channels = widths[0]
        for stage, width in enumerate(widths):
            for b in range(blocks_per_stage):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(ResidualBlock(in_channels=channels, out_channels=width,
                                            stride=stride))
                channels = width
        self.blocks = nn.ModuleList(blocks)
        self.out_features = channels

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)  # (B, w0, H, W)
        for block in self.blocks:
            h = block(h)  # (B, w_s, H/2^s, W/2^s)
        return h.mean(dim=(-2, -1))  # (B, w_last)


class ProjectionHead(nn.Module):
    """g(h) = W2 ReLU(BN(W1 h)): the MLP whose output the contrastive loss sees (SimCLR §2.1)."""

    def __init__(self, *, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, out_features),
        )

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


class SimCLROutput(NamedTuple):
    projections: Tensor  # z = g(h), (B, proj_dim): what the loss compares
    features: Tensor  # h = f(x), (B, widths[-1]): what downstream tasks use


@register_model("simclr")
class SimCLR(nn.Module):
    """Encoder f and projection head g: x ↦ (z = g(f(x)), h = f(x)).

    Args:
        in_shape: (C, H, W) of the images (any H, W ≥ 2^(len(widths)-1)).
        widths: channels of the encoder stages; every stage after the first halves H and W.
        blocks_per_stage: residual blocks per stage.
        proj_hidden, proj_dim: hidden width and output size of the projection head.
        encoder: pass your own module mapping (B, C, H, W) to (B, F); give its
            ``out_features`` attribute (F), or it is inferred from one forward.

    Use ``trainer.sync_batchnorm=true`` under DDP: SimCLR's global BN keeps a rank's batch
    statistics from giving its positives away (Chen et al. 2020, §B.5).
    """

    repeated_blocks: ClassVar[tuple[type[nn.Module], ...]] = (ResidualBlock,)

    def __init__(
        self,
        *,
        in_shape: tuple[int, int, int] = (1, 8, 8),
        widths: tuple[int, ...] = (16, 32, 64),
        blocks_per_stage: int = 1,
        proj_hidden: int = 64,
        proj_dim: int = 32,
        encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        in_shape = tuple(in_shape)
        widths = tuple(widths)
        if len(in_shape) != 3:
            raise ValueError(f"in_shape must be (C, H, W), got {in_shape}")
        if not widths or blocks_per_stage < 1:
            raise ValueError(f"need at least one stage and block, got widths={widths}, "
                             f"blocks_per_stage={blocks_per_stage}")
        self.in_shape = in_shape
        if encoder is None:
            encoder = ResNetEncoder(in_channels=in_shape[0], widths=widths,
                                    blocks_per_stage=blocks_per_stage)
        self.encoder = encoder
        feat_dim = getattr(encoder, "out_features", None)
        if feat_dim is None:
            with torch.no_grad():
                feat_dim = encoder.eval()(torch.zeros(2, *in_shape)).shape[-1]
            encoder.train()
        self.feature_dim = int(feat_dim)
        self.head = ProjectionHead(in_features=self.feature_dim, hidden=proj_hidden,
                                   out_features=proj_dim)

    def forward(self, x: Tensor) -> SimCLROutput:
        # any H, W: the encoder ends in global average pooling
        check_tensor(x, "x", ("B", self.in_shape[0], "H", "W"),
                     where=f"{type(self).__name__}.forward")
        features = self.encoder(x)
        return SimCLROutput(self.head(features), features)

    def example_input(self, batch_size: int = 2) -> Tensor:
        """A valid input batch (images in [0, 1]) for tests and benchmarks."""
        return torch.rand(batch_size, *self.in_shape)


@register_model("supcon")
class SupCon(SimCLR):
    """The SimCLR network under its SupCon name: same f and g, trained with labels
    (Khosla et al. 2020 use the same architecture; only the objective changes)."""
