"""Fast R-CNN box branch (Girshick 2015) on RoIAlign features: torchvision's ``RoIHeads``.

Each image's proposals (plus its ground-truth boxes) are matched to objects; a sampled
mini-batch of RoIs (``box_batch_size_per_image``, ``box_positive_fraction`` foreground) is
RoIAligned from the pyramid level suited to its size (MultiScaleRoIAlign, k = ⌊4 + log2(√wh /
224)⌋ clamped to the levels), flattened through a two-layer MLP (``TwoMLPHead``) and fed to a
class + per-class box predictor. Loss:

    L_box = CE(class logits, u) + [u ≥ 1] · smoothL1_β=1/9(t^u − v) / N_rois,

t^u the predicted deltas of the true class u (same parametrisation as the RPN's). At test
time: softmax scores, decoded boxes, score threshold, per-class NMS, top ``detections_per_img``.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import MultiScaleRoIAlign

__all__ = ["build_roi_heads"]


def build_roi_heads(
    *,
    in_channels: int,
    featmap_names: list[str],
    num_classes: int,
    roi_output_size: int,
    sampling_ratio: int,
    representation_size: int,
    fg_iou_thresh: float,
    bg_iou_thresh: float,
    batch_size_per_image: int,
    positive_fraction: float,
    bbox_reg_weights: tuple[float, float, float, float] | None,
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
    mask_branch: tuple[nn.Module, nn.Module, nn.Module] | None = None,
) -> RoIHeads:
    """Box RoIAlign + TwoMLPHead + FastRCNNPredictor (+ the mask branch for Mask R-CNN)."""
    pool = MultiScaleRoIAlign(featmap_names, roi_output_size, sampling_ratio)
    head = TwoMLPHead(in_channels * roi_output_size**2, representation_size)
    predictor = FastRCNNPredictor(representation_size, num_classes)
    mask_pool, mask_head, mask_predictor = mask_branch or (None, None, None)
    return RoIHeads(
        pool,
        head,
        predictor,
        fg_iou_thresh=fg_iou_thresh,
        bg_iou_thresh=bg_iou_thresh,
        batch_size_per_image=batch_size_per_image,
        positive_fraction=positive_fraction,
        bbox_reg_weights=tuple(bbox_reg_weights) if bbox_reg_weights else None,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
        mask_roi_pool=mask_pool,
        mask_head=mask_head,
        mask_predictor=mask_predictor,
    )
