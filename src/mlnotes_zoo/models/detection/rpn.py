"""Region proposal network (Ren et al. 2015): torchvision's, sized by ``rpn_*`` arguments.

A 3×3 window slides over every pyramid level; at each location A = |sizes|·|ratios| anchors
each get an objectness logit and box deltas (notes ``003`` "Faster RCNN": several anchor
boxes per anchor point, predictions normalised by their anchor). With anchor (x_a, y_a, w_a,
h_a) and box (x, y, w, h) the regression targets are

    t_x = (x − x_a)/w_a,  t_y = (y − y_a)/h_a,  t_w = log(w/w_a),  t_h = log(h/h_a),

and the loss over a sampled mini-batch of anchors is

    L_rpn = (1/N_cls) Σ_i BCE(p_i, p*_i) + (1/N_cls) Σ_i p*_i · smoothL1_β=1/9(t_i − t*_i):

an anchor with no matching object (p*_i = 0) adds only the objectness term, as the notes ask.
The kept proposals (after per-level top-k and NMS) are detached before the RoI heads.
"""

from __future__ import annotations

from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

__all__ = ["build_rpn"]


def build_rpn(
    *,
    in_channels: int,
    anchor_sizes: tuple[tuple[int, ...], ...],
    aspect_ratios: tuple[float, ...],
    conv_depth: int,
    fg_iou_thresh: float,
    bg_iou_thresh: float,
    batch_size_per_image: int,
    positive_fraction: float,
    pre_nms_top_n_train: int,
    pre_nms_top_n_test: int,
    post_nms_top_n_train: int,
    post_nms_top_n_test: int,
    nms_thresh: float,
    score_thresh: float,
) -> RegionProposalNetwork:
    """Anchors (one tuple of sizes per pyramid level, same ratios on every level) + head."""
    sizes = tuple(tuple(int(s) for s in level) for level in anchor_sizes)
    ratios = (tuple(float(r) for r in aspect_ratios),) * len(sizes)
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=ratios)
    head = RPNHead(in_channels, anchors.num_anchors_per_location()[0], conv_depth=conv_depth)
    return RegionProposalNetwork(
        anchors,
        head,
        fg_iou_thresh=fg_iou_thresh,
        bg_iou_thresh=bg_iou_thresh,
        batch_size_per_image=batch_size_per_image,
        positive_fraction=positive_fraction,
        pre_nms_top_n={"training": pre_nms_top_n_train, "testing": pre_nms_top_n_test},
        post_nms_top_n={"training": post_nms_top_n_train, "testing": post_nms_top_n_test},
        nms_thresh=nms_thresh,
        score_thresh=score_thresh,
    )
