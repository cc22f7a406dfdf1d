"""Faster R-CNN and Mask R-CNN: torchvision's detectors, assembled from parts sized by config.

    images ─ transform ─ backbone (ResNet+FPN) ─┬─ RPN ── proposals ──┐
                                                └──────── features ───┴─ RoI heads ─ detections
                                                              (box branch, + mask branch)

The machinery is torchvision's (``GeneralizedRCNN``: anchors, RPN, RoIAlign, RoI heads,
losses, post-processing). As torchvision intends, its ``FasterRCNN``/``MaskRCNN`` constructor
receives the parts — our small backbone, an ``AnchorGenerator``, an ``RPNHead``,
``MultiScaleRoIAlign`` poolers, the box and mask heads and predictors — plus the thresholds
and sizes under torchvision's own keyword names. This module only chooses those parts from
plain keyword arguments grouped by prefix (``backbone_*``, ``rpn_*``, ``box_*``, ``mask_*``),
so a Hydra config (``configs/model/faster_rcnn.yaml``) sets every size.

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

Top-down: the backbone, then :class:`FasterRCNN`, :class:`MaskRCNN`, and the toy targets.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Annotated, Any, ClassVar

import torch
import torchvision.models.detection as tvdet
from pydantic import Field
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.resnet import BasicBlock
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from mlnotes_zoo.constraints import Fraction, NonNegativeInt, PositiveFloat, PositiveInt
from mlnotes_zoo.models.shared import check_tensor
from mlnotes_zoo.registry import register_model

__all__ = ["ResNetFPN", "FasterRCNN", "MaskRCNN", "example_targets"]

NumClasses = Annotated[int, Field(ge=2, description="object classes + background")]


class ResNetFPN(nn.Module):
    """Backbone: stem (stride 2) + ResNet stages (stride 2 each) + feature pyramid network.

    The notes (``003`` "Masked RCNN", "why pyramid network"): deep features are semantically
    strong but coarse, shallow ones fine but weak; the FPN (Lin et al. 2017) adds the
    upsampled deep map to a 1×1 projection of each shallower one, P_l = conv3×3(C'_l +
    up(P'_{l+1})), so every level is both high-resolution and semantic, and every head reads
    one channel width (``out_channels``) on every level. Built from torchvision parts
    (``BasicBlock``, ``FeaturePyramidNetwork``), ``weights=None``: only the widths and depths
    are ours, so the network fits images of tens of pixels on a CPU.

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
        in_channels: PositiveInt = 3,
        stem_channels: PositiveInt = 16,
        stage_channels: tuple[PositiveInt, ...] = (16, 32, 64),
        stage_blocks: tuple[PositiveInt, ...] = (1, 1, 1),
        out_channels: PositiveInt = 64,
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


@register_model("faster_rcnn")
class FasterRCNN(tvdet.FasterRCNN):
    """Faster R-CNN (Ren et al. 2015): torchvision's, with a small ResNet+FPN, ``weights=None``.

    Args:
        num_classes: object classes + 1 (index 0 is background).
        min_size, max_size: the transform resizes images to short side ``min_size``,
            long side at most ``max_size`` (set both to the image side for no resizing).
        image_mean, image_std: per-channel normalisation inside the model.
        backbone_*: :class:`ResNetFPN` sizes (``backbone_out_channels`` is the FPN width
            every head reads).
        rpn_anchor_sizes: anchor sizes in pixels, one tuple per pyramid level (finest
            first; as many as ``backbone_stage_channels``, + 1 with ``backbone_extra_pool``).
        rpn_aspect_ratios: h/w ratios used on every level.
        rpn_conv_depth: 3×3 convolutions of the RPN head before its two 1×1 outputs.
        rpn_*: the rest as torchvision's ``FasterRCNN`` (IoU thresholds for anchor labels,
            sampled anchors per image, top-k before/after NMS in train/test, NMS IoU).
        box_roi_output_size, box_sampling_ratio: the box branch's RoIAlign.
        box_representation_size: width of its two-layer MLP (``TwoMLPHead``).
        box_bbox_reg_weights: torchvision's ``bbox_reg_weights`` (None: (10, 10, 5, 5)).
        box_*: the rest as torchvision's ``FasterRCNN`` (RoI sampling, test-time score
            threshold, NMS IoU and maximum detections per image).
        backbone: pass your own feature extractor (must return an OrderedDict of maps and
            expose ``out_channels``; level names then follow its keys).
    """

    repeated_blocks: ClassVar[tuple[type[nn.Module], ...]] = (BasicBlock,)

    def __init__(
        self,
        *,
        num_classes: NumClasses = 4,
        min_size: NonNegativeInt = 64,
        max_size: PositiveInt = 64,
        image_mean: tuple[Fraction, Fraction, Fraction] = (0.5, 0.5, 0.5),
        image_std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = (0.25, 0.25, 0.25),
        backbone_stem_channels: PositiveInt = 16,
        backbone_stage_channels: Annotated[tuple[PositiveInt, ...], Field(min_length=1)] = (
            16, 32, 64),
        backbone_stage_blocks: Annotated[tuple[PositiveInt, ...], Field(min_length=1)] = (
            1, 1, 1),
        backbone_out_channels: PositiveInt = 32,
        backbone_extra_pool: bool = False,
        rpn_anchor_sizes: tuple[Annotated[tuple[PositiveInt, ...], Field(min_length=1)], ...] = (
            (12,), (24,), (48,)),
        rpn_aspect_ratios: Annotated[tuple[PositiveFloat, ...], Field(min_length=1)] = (
            0.5, 1.0, 2.0),
        rpn_conv_depth: PositiveInt = 1,
        rpn_fg_iou_thresh: Fraction = 0.7,
        rpn_bg_iou_thresh: Fraction = 0.3,
        rpn_batch_size_per_image: PositiveInt = 128,
        rpn_positive_fraction: Fraction = 0.5,
        rpn_pre_nms_top_n_train: PositiveInt = 400,
        rpn_pre_nms_top_n_test: PositiveInt = 200,
        rpn_post_nms_top_n_train: PositiveInt = 200,
        rpn_post_nms_top_n_test: PositiveInt = 100,
        rpn_nms_thresh: Fraction = 0.7,
        rpn_score_thresh: Fraction = 0.0,
        box_roi_output_size: PositiveInt = 7,
        box_sampling_ratio: NonNegativeInt = 2,
        box_representation_size: PositiveInt = 128,
        box_fg_iou_thresh: Fraction = 0.5,
        box_bg_iou_thresh: Fraction = 0.5,
        box_batch_size_per_image: PositiveInt = 64,
        box_positive_fraction: Fraction = 0.25,
        box_bbox_reg_weights: tuple[PositiveFloat, PositiveFloat, PositiveFloat,
                                    PositiveFloat] | None = None,
        box_score_thresh: Fraction = 0.05,
        box_nms_thresh: Fraction = 0.5,
        box_detections_per_img: PositiveInt = 20,
        backbone: nn.Module | None = None,
    ) -> None:
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

        # RPN (notes 003 "Faster RCNN"): a 3×3 window slides over every level; at each place
        # A = |sizes|·|ratios| anchors get an objectness logit and box deltas normalised by
        # their anchor, t_x = (x − x_a)/w_a, t_y = (y − y_a)/h_a, t_w = log(w/w_a),
        # t_h = log(h/h_a). Over a sampled mini-batch of anchors
        #   L_rpn = (1/N) Σ_i BCE(p_i, p*_i) + (1/N) Σ_i p*_i · smoothL1_β=1/9(t_i − t*_i):
        # an anchor with no object (p*_i = 0) adds only the objectness term, as the notes ask.
        sizes = tuple(tuple(int(s) for s in level) for level in rpn_anchor_sizes)
        ratios = (tuple(float(r) for r in rpn_aspect_ratios),) * len(sizes)
        anchor_generator = AnchorGenerator(sizes=sizes, aspect_ratios=ratios)
        rpn_head = RPNHead(channels, anchor_generator.num_anchors_per_location()[0],
                           conv_depth=rpn_conv_depth)

        # Box branch (Fast R-CNN, Girshick 2015): each sampled RoI is RoIAligned from the level
        # suited to its size (k = ⌊4 + log2(√wh / 224)⌋ clamped to the levels), flattened
        # through a two-layer MLP, and classified with per-class box deltas:
        #   L_box = CE(class logits, u) + [u ≥ 1] · smoothL1_β=1/9(t^u − v) / N_rois.
        box_roi_pool = MultiScaleRoIAlign(levels, box_roi_output_size, box_sampling_ratio)
        box_head = TwoMLPHead(channels * box_roi_output_size**2, box_representation_size)
        box_predictor = FastRCNNPredictor(box_representation_size, num_classes)

        super().__init__(
            backbone,
            num_classes=None,  # the box predictor fixes it
            min_size=min_size,
            max_size=max_size,
            image_mean=list(image_mean),
            image_std=list(image_std),
            rpn_anchor_generator=anchor_generator,
            rpn_head=rpn_head,
            rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
            rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
            rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
            rpn_nms_thresh=rpn_nms_thresh,
            rpn_fg_iou_thresh=rpn_fg_iou_thresh,
            rpn_bg_iou_thresh=rpn_bg_iou_thresh,
            rpn_batch_size_per_image=rpn_batch_size_per_image,
            rpn_positive_fraction=rpn_positive_fraction,
            rpn_score_thresh=rpn_score_thresh,
            box_roi_pool=box_roi_pool,
            box_head=box_head,
            box_predictor=box_predictor,
            box_score_thresh=box_score_thresh,
            box_nms_thresh=box_nms_thresh,
            box_detections_per_img=box_detections_per_img,
            box_fg_iou_thresh=box_fg_iou_thresh,
            box_bg_iou_thresh=box_bg_iou_thresh,
            box_batch_size_per_image=box_batch_size_per_image,
            box_positive_fraction=box_positive_fraction,
            bbox_reg_weights=tuple(box_bbox_reg_weights) if box_bbox_reg_weights else None,
            # built last, so the weights are drawn in pipeline order (Mask R-CNN's mask branch)
            **self._extra_parts(channels, levels, num_classes),
        )
        self.num_classes = num_classes
        self.min_size = min_size
        self.featmap_names = levels

    def _extra_parts(self, channels: int, levels: list[str], num_classes: int
                     ) -> dict[str, nn.Module]:
        """Further torchvision constructor parts after the box branch (none here)."""
        return {}

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
class MaskRCNN(FasterRCNN, tvdet.MaskRCNN):
    """Mask R-CNN (He et al. 2017): torchvision's, i.e. Faster R-CNN + a mask branch.

    The notes (``003`` "Masked RCNN"): the mask predictor is separate from classification
    and box regression. A small FCN on its own RoIAlign predicts, for each positive RoI, K
    binary masks of m×m (one per class); only the mask of the ground-truth class k is trained,

        L_mask = −(1/m²) Σ_ij [y_ij log σ(s^k_ij) + (1 − y_ij) log(1 − σ(s^k_ij))],

    so classes do not compete for pixels (the box branch decides the class).

    The parts reach torchvision's ``MaskRCNN`` constructor (next in the method resolution
    order after :class:`FasterRCNN`) with the Faster R-CNN ones.

    Args:
        mask_roi_output_size: RoIAlign side for the mask branch (masks are twice that).
        mask_sampling_ratio: RoIAlign sampling points per bin.
        mask_layers: widths of the 3×3 conv layers of the mask head (``MaskRCNNHeads``).
        mask_dilation: dilation of those convs.
        mask_dim_reduced: channels of the 2× transposed conv before the per-class logits
            (``MaskRCNNPredictor``).
        **faster_rcnn: every :class:`FasterRCNN` argument (keyword-only there, so a
            misspelt name is still an error).
    """

    def __init__(
        self,
        *,
        mask_roi_output_size: PositiveInt = 14,
        mask_sampling_ratio: NonNegativeInt = 2,
        mask_layers: Annotated[tuple[PositiveInt, ...], Field(min_length=1)] = (32, 32),
        mask_dilation: PositiveInt = 1,
        mask_dim_reduced: PositiveInt = 32,
        **faster_rcnn: Any,
    ) -> None:
        # A plain attribute may be set before nn.Module.__init__; FasterRCNN.__init__ reads it
        # in _extra_parts once the backbone fixes the channels and level names.
        self._mask_sizes = (mask_roi_output_size, mask_sampling_ratio, tuple(mask_layers),
                            mask_dilation, mask_dim_reduced)
        super().__init__(**faster_rcnn)
        del self._mask_sizes

    def _extra_parts(self, channels: int, levels: list[str], num_classes: int
                     ) -> dict[str, nn.Module]:
        """RoIAlign to s² → 3×3 convs ``mask_layers`` → 2× up → K logit maps of (2s)²."""
        roi_output_size, sampling_ratio, layers, dilation, dim_reduced = self._mask_sizes
        return {
            "mask_roi_pool": MultiScaleRoIAlign(levels, roi_output_size, sampling_ratio),
            "mask_head": MaskRCNNHeads(channels, list(layers), dilation),
            "mask_predictor": MaskRCNNPredictor(layers[-1], dim_reduced, num_classes),
        }


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
