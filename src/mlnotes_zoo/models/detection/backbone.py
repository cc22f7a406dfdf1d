"""Backbone: a small ResNet whose stages feed a feature pyramid network (FPN).

The notes (``shared/notes/003`` "Masked RCNN", "why pyramid network"): deep features are
semantically strong but coarse, shallow ones fine but weak; the FPN (Lin et al. 2017) adds
the upsampled deep map to a 1×1 projection of each shallower one, P_l = conv3×3(C'_l +
up(P'_{l+1})), so every level is both high-resolution and semantic. Detection heads then
share one channel width (``out_channels``) across levels.

Built from torchvision parts (``BasicBlock``, ``FeaturePyramidNetwork``) with ``weights=None``:
only the stage widths/depths are ours, so the network fits images of tens of pixels on a CPU.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

__all__ = ["ResNetFPN"]


class ResNetFPN(nn.Module):
    """Stem (stride 2) + ResNet stages (stride 2 each) + FPN.

    Input (B, C, H, W); output an ``OrderedDict`` ``{"0": P_1, "1": P_2, ...}`` of
    (B, out_channels, H/2^(l+1), W/2^(l+1)) maps, finest first (plus ``"pool"``, a stride-2
    max-pool of the coarsest, when ``extra_pool``): the format torchvision's RPN and
    ``MultiScaleRoIAlign`` read.

    Args:
        in_channels: image channels.
        stem_channels: width of the stride-2 3×3 stem convolution.
        stage_channels: width of each ResNet stage (one pyramid level per stage).
        stage_blocks: ``BasicBlock``s per stage (the first one strides by 2).
        out_channels: FPN width shared by every level.
        extra_pool: add the ``"pool"`` level (torchvision's ``LastLevelMaxPool``).
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        stem_channels: int = 16,
        stage_channels: tuple[int, ...] = (16, 32, 64),
        stage_blocks: tuple[int, ...] = (1, 1, 1),
        out_channels: int = 64,
        extra_pool: bool = False,
    ) -> None:
        super().__init__()
        if len(stage_channels) != len(stage_blocks) or not stage_channels:
            raise ValueError(
                f"stage_channels {tuple(stage_channels)} and stage_blocks {tuple(stage_blocks)} "
                "must be non-empty and of equal length"
            )
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
        )  # (B, stem, H/2, W/2)
        stages, width = [], stem_channels
        for channels, blocks in zip(stage_channels, stage_blocks, strict=True):
            stages.append(self._stage(width, channels, blocks))  # halves H and W
            width = channels
        self.stages = nn.ModuleList(stages)
        extra = LastLevelMaxPool() if extra_pool else None
        self.fpn = FeaturePyramidNetwork(list(stage_channels), out_channels, extra_blocks=extra)
        self.out_channels = out_channels  # read by torchvision's detection heads
        self.num_levels = len(stage_channels) + int(extra_pool)

    @staticmethod
    def _stage(in_width: int, width: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(in_width, width, 1, stride=2, bias=False), nn.BatchNorm2d(width)
        )
        layers = [BasicBlock(in_width, width, stride=2, downsample=downsample)]
        layers += [BasicBlock(width, width) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        x = self.stem(x)
        features = OrderedDict()
        for level, stage in enumerate(self.stages):
            x = stage(x)  # (B, stage_channels[level], H/2^(level+2), W/2^(level+2))
            features[str(level)] = x
        return self.fpn(features)
