"""Mask R-CNN's mask branch (He et al. 2017): a separate small FCN on RoIAligned features.

The notes (``003`` "Masked RCNN"): the mask predictor is separated from classification and
box regression. For each positive RoI it predicts K binary masks of m×m (one per class) and
only the mask of the ground-truth class k is trained,

    L_mask = −(1/m²) Σ_ij [y_ij log σ(s^k_ij) + (1 − y_ij) log(1 − σ(s^k_ij))],

so classes do not compete for pixels (the box branch decides the class). Built from
torchvision's ``MaskRCNNHeads`` (3×3 convs) and ``MaskRCNNPredictor`` (2× transposed conv +
1×1 conv to K logit maps).
"""

from __future__ import annotations

from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

__all__ = ["build_mask_branch"]


def build_mask_branch(
    *,
    in_channels: int,
    featmap_names: list[str],
    num_classes: int,
    roi_output_size: int,
    sampling_ratio: int,
    layers: tuple[int, ...],
    dilation: int,
    dim_reduced: int,
) -> tuple[MultiScaleRoIAlign, MaskRCNNHeads, MaskRCNNPredictor]:
    """RoIAlign to roi_output_size² → convs ``layers`` → masks of (2·roi_output_size)²."""
    if not layers:
        raise ValueError("mask_layers must name at least one conv width")
    pool = MultiScaleRoIAlign(featmap_names, roi_output_size, sampling_ratio)
    head = MaskRCNNHeads(in_channels, list(layers), dilation)
    predictor = MaskRCNNPredictor(layers[-1], dim_reduced, num_classes)
    return pool, head, predictor
