"""Faster R-CNN and Mask R-CNN: the two-stage detectors of the notes, sized by config.

    images ─ transform ─ backbone (ResNet+FPN) ─┬─ RPN ── proposals ──┐
                                                └──────── features ───┴─ RoI heads ─ detections
                                                              (box branch, + mask branch)

Everything is torchvision's ``GeneralizedRCNN`` machinery (anchors, RPN, RoIAlign, RoIHeads,
losses, post-processing); this module chooses the parts and their sizes from plain keyword
arguments grouped by prefix (``rpn_*``, ``box_*``, ``mask_*``) as torchvision does, so a Hydra
config (``configs/model/faster_rcnn.yaml``) sets every size.

I/O contract (torchvision's):

- ``images``: list of float tensors (C, H, W) in [0, 1], sizes may differ (a (B, C, H, W)
  tensor works too). They are normalised by ``image_mean``/``image_std`` and resized so the
  short side is ``min_size`` (long side ≤ ``max_size``); outputs are in input pixels.
- ``targets`` (train mode): one dict per image with ``boxes`` float (N, 4) ``xyxy`` pixels,
  ``labels`` int64 (N,) in 1..num_classes−1 (0 is background) and, for Mask R-CNN, ``masks``
  uint8 (N, H, W) instance masks.
- train mode returns the loss dict ``{"loss_objectness", "loss_rpn_box_reg",
  "loss_classifier", "loss_box_reg"[, "loss_mask"]}`` (their sum is the training loss);
- eval mode returns one dict per image: ``boxes`` (D, 4) xyxy, ``labels`` (D,), ``scores``
  (D,) and for Mask R-CNN ``masks`` (D, 1, H, W) probabilities (threshold at 0.5).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.models.resnet import BasicBlock

from mlnotes_zoo.models.detection.backbone import ResNetFPN
from mlnotes_zoo.models.detection.mask_head import build_mask_branch
from mlnotes_zoo.models.detection.roi_heads import build_roi_heads
from mlnotes_zoo.models.detection.rpn import build_rpn
from mlnotes_zoo.models.shared import check_tensor
from mlnotes_zoo.registry import register_model

__all__ = ["FasterRCNN", "MaskRCNN", "example_targets"]


@register_model("faster_rcnn")
class FasterRCNN(GeneralizedRCNN):
    """Faster R-CNN (Ren et al. 2015) with a small ResNet+FPN backbone, ``weights=None``.

    Args:
        num_classes: object classes + 1 (index 0 is background).
        min_size, max_size: the transform resizes images to short side ``min_size``,
            long side at most ``max_size`` (set both to the image side for no resizing).
        image_mean, image_std: per-channel normalisation inside the model.
        backbone_*: :class:`~mlnotes_zoo.models.detection.backbone.ResNetFPN` sizes
            (``backbone_out_channels`` is the FPN width every head reads).
        rpn_anchor_sizes: anchor sizes in pixels, one tuple per pyramid level (finest
            first; as many as ``backbone_stage_channels``, + 1 with ``backbone_extra_pool``).
        rpn_aspect_ratios: h/w ratios used on every level.
        rpn_*: the rest as torchvision's ``FasterRCNN`` (IoU thresholds for anchor labels,
            sampled anchors per image, top-k before/after NMS in train/test, NMS IoU).
        box_*: RoIAlign output size and sampling ratio, MLP width, RoI sampling and the
            test-time score threshold, NMS IoU and maximum detections per image.
        backbone: pass your own feature extractor (must return an OrderedDict of maps and
            expose ``out_channels``; level names then follow its keys).
    """

    repeated_blocks: ClassVar[tuple[type[nn.Module], ...]] = (BasicBlock,)

    def __init__(
        self,
        *,
        num_classes: int = 4,
        min_size: int = 64,
        max_size: int = 64,
        image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        image_std: tuple[float, float, float] = (0.25, 0.25, 0.25),
        backbone_stem_channels: int = 16,
        backbone_stage_channels: tuple[int, ...] = (16, 32, 64),
        backbone_stage_blocks: tuple[int, ...] = (1, 1, 1),
        backbone_out_channels: int = 32,
        backbone_extra_pool: bool = False,
        rpn_anchor_sizes: tuple[tuple[int, ...], ...] = ((12,), (24,), (48,)),
        rpn_aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
        rpn_conv_depth: int = 1,
        rpn_fg_iou_thresh: float = 0.7,
        rpn_bg_iou_thresh: float = 0.3,
        rpn_batch_size_per_image: int = 128,
        rpn_positive_fraction: float = 0.5,
        rpn_pre_nms_top_n_train: int = 400,
        rpn_pre_nms_top_n_test: int = 200,
        rpn_post_nms_top_n_train: int = 200,
        rpn_post_nms_top_n_test: int = 100,
        rpn_nms_thresh: float = 0.7,
        rpn_score_thresh: float = 0.0,
        box_roi_output_size: int = 7,
        box_sampling_ratio: int = 2,
        box_representation_size: int = 128,
        box_fg_iou_thresh: float = 0.5,
        box_bg_iou_thresh: float = 0.5,
        box_batch_size_per_image: int = 64,
        box_positive_fraction: float = 0.25,
        box_bbox_reg_weights: tuple[float, float, float, float] | None = None,
        box_score_thresh: float = 0.05,
        box_nms_thresh: float = 0.5,
        box_detections_per_img: int = 20,
        backbone: nn.Module | None = None,
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes counts background too, so must be >= 2; "
                             f"got {num_classes}")
        if backbone is None:
            backbone = ResNetFPN(
                stem_channels=backbone_stem_channels,
                stage_channels=tuple(backbone_stage_channels),
                stage_blocks=tuple(backbone_stage_blocks),
                out_channels=backbone_out_channels,
                extra_pool=backbone_extra_pool,
            )
            levels = [str(i) for i in range(len(backbone_stage_channels))]
            if len(rpn_anchor_sizes) != backbone.num_levels:
                raise ValueError(
                    f"rpn_anchor_sizes needs one tuple per pyramid level ({backbone.num_levels}),"
                    f" got {len(rpn_anchor_sizes)}: {rpn_anchor_sizes}"
                )
        else:
            with torch.no_grad():
                names = list(backbone(torch.zeros(1, 3, min_size, min_size)).keys())
            levels = [n for n in names if n != "pool"]
        channels = backbone.out_channels
        rpn = build_rpn(
            in_channels=channels,
            anchor_sizes=rpn_anchor_sizes,
            aspect_ratios=rpn_aspect_ratios,
            conv_depth=rpn_conv_depth,
            fg_iou_thresh=rpn_fg_iou_thresh,
            bg_iou_thresh=rpn_bg_iou_thresh,
            batch_size_per_image=rpn_batch_size_per_image,
            positive_fraction=rpn_positive_fraction,
            pre_nms_top_n_train=rpn_pre_nms_top_n_train,
            pre_nms_top_n_test=rpn_pre_nms_top_n_test,
            post_nms_top_n_train=rpn_post_nms_top_n_train,
            post_nms_top_n_test=rpn_post_nms_top_n_test,
            nms_thresh=rpn_nms_thresh,
            score_thresh=rpn_score_thresh,
        )
        roi_heads = build_roi_heads(
            in_channels=channels,
            featmap_names=levels,
            num_classes=num_classes,
            roi_output_size=box_roi_output_size,
            sampling_ratio=box_sampling_ratio,
            representation_size=box_representation_size,
            fg_iou_thresh=box_fg_iou_thresh,
            bg_iou_thresh=box_bg_iou_thresh,
            batch_size_per_image=box_batch_size_per_image,
            positive_fraction=box_positive_fraction,
            bbox_reg_weights=box_bbox_reg_weights,
            score_thresh=box_score_thresh,
            nms_thresh=box_nms_thresh,
            detections_per_img=box_detections_per_img,
        )
        transform = GeneralizedRCNNTransform(min_size, max_size, list(image_mean), list(image_std))
        super().__init__(backbone, rpn, roi_heads, transform)
        self.num_classes = num_classes
        self.min_size = min_size
        self.featmap_names = levels

    @property
    def has_mask(self) -> bool:
        return self.roi_heads.has_mask()

    def forward(  # noqa: D102 (the contract is in the module docstring)
        self, images: list[Tensor] | Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> Any:
        self._check_inputs(images, targets)
        return super().forward(images, targets)

    def _check_inputs(self, images: Any, targets: Any) -> None:
        where = f"{type(self).__name__}.forward"
        channels = len(self.transform.image_mean)
        if isinstance(images, Tensor):
            check_tensor(images, "images", ("B", channels, "H", "W"), where=where)
            images = list(images)
        if not isinstance(images, (list, tuple)):
            raise ValueError(f"{where}: images must be a list of float tensors ({channels}, H, W) "
                             f"or a (B, {channels}, H, W) tensor; got {type(images).__name__}")
        sides = [check_tensor(image, f"images[{i}]", (channels, "H", "W"), where=where)
                 for i, image in enumerate(images)]
        if targets is None:
            return  # torchvision asks for targets in training mode itself
        if not isinstance(targets, (list, tuple)) or len(targets) != len(images):
            count = f" of {len(targets)}" if isinstance(targets, (list, tuple)) else ""
            raise ValueError(f"{where}: targets must be a list of one dict per image "
                             f"({len(images)}); got {type(targets).__name__}{count}")
        for i, target in enumerate(targets):
            if not isinstance(target, dict) or not {"boxes", "labels"} <= set(target):
                raise ValueError(f"{where}: targets[{i}] must be a dict with 'boxes' and 'labels'")
            n = check_tensor(target["boxes"], f"targets[{i}]['boxes']", ("N", 4), where=where)
            check_tensor(target["labels"], f"targets[{i}]['labels']", ("N",), kind="long",
                         sizes=n, where=where)
            if self.has_mask and self.training:
                check_tensor(target.get("masks"), f"targets[{i}]['masks']",
                             ("N", sides[i]["H"], sides[i]["W"]), kind="any", sizes=n,
                             where=where)

    def example_input(self, batch_size: int = 2) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
        """(images, targets) with one object of every class per image, for train-mode forward."""
        return example_targets(batch_size, self.min_size, self.num_classes, masks=self.has_mask)


@register_model("mask_rcnn")
class MaskRCNN(FasterRCNN):
    """Mask R-CNN (He et al. 2017): Faster R-CNN + a mask branch on its own RoIAlign.

    Args:
        mask_roi_output_size: RoIAlign side for the mask branch (masks are twice that).
        mask_sampling_ratio: RoIAlign sampling points per bin.
        mask_layers: widths of the 3×3 conv layers of the mask head.
        mask_dilation: dilation of those convs.
        mask_dim_reduced: channels of the 2× transposed conv before the per-class logits.
        **faster_rcnn: every :class:`FasterRCNN` argument (keyword-only there, so a
            misspelt name is still an error).
    """

    def __init__(
        self,
        *,
        mask_roi_output_size: int = 14,
        mask_sampling_ratio: int = 2,
        mask_layers: tuple[int, ...] = (32, 32),
        mask_dilation: int = 1,
        mask_dim_reduced: int = 32,
        **faster_rcnn: Any,
    ) -> None:
        super().__init__(**faster_rcnn)
        pool, head, predictor = build_mask_branch(
            in_channels=self.backbone.out_channels,
            featmap_names=self.featmap_names,
            num_classes=self.num_classes,
            roi_output_size=mask_roi_output_size,
            sampling_ratio=mask_sampling_ratio,
            layers=tuple(mask_layers),
            dilation=mask_dilation,
            dim_reduced=mask_dim_reduced,
        )
        self.roi_heads.mask_roi_pool = pool
        self.roi_heads.mask_head = head
        self.roi_heads.mask_predictor = predictor


def example_targets(
    batch_size: int, size: int, num_classes: int, *, masks: bool, seed: int = 0
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Images (3, size, size) with one filled rectangle per class on grey, and their targets."""
    gen = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(batch_size):
        image = torch.full((3, size, size), 0.5)
        boxes, instance_masks = [], []
        for _label in range(1, num_classes):
            w, h = (torch.randint(size // 5, size // 2, (2,), generator=gen)).tolist()
            x0 = int(torch.randint(0, size - w, (1,), generator=gen))
            y0 = int(torch.randint(0, size - h, (1,), generator=gen))
            image[:, y0 : y0 + h, x0 : x0 + w] = torch.rand(3, 1, 1, generator=gen)
            mask = torch.zeros(size, size, dtype=torch.uint8)
            mask[y0 : y0 + h, x0 : x0 + w] = 1
            boxes.append([x0, y0, x0 + w, y0 + h])
            instance_masks.append(mask)
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32),
            "labels": torch.arange(1, num_classes, dtype=torch.int64),
        }
        if masks:
            target["masks"] = torch.stack(instance_masks)
        images.append(image)
        targets.append(target)
    return images, targets
