"""LightningModule for Faster/Mask R-CNN: summed torchvision losses, COCO mAP, detection PNGs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid

from mlnotes_zoo.constraints import Fraction, NonNegativeInt
from mlnotes_zoo.lit.base import OptimizerFactory, SchedulerFactory, ZooModule
from mlnotes_zoo.models.detection import FasterRCNN

# torchmetrics' result keys -> our names (box_* from iou_type "bbox", mask_* from "segm")
_REPORTED = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")


class LitDetection(ZooModule):
    """Trains :class:`~mlnotes_zoo.models.detection.FasterRCNN` or ``MaskRCNN``.

    ``model_step``: in training the loss is the sum of the network's named losses (RPN
    objectness + RPN box regression + RoI classification + RoI box regression [+ mask]),
    each logged as ``train/<name>``. In validation and test the same losses are computed
    with the normalisation statistics frozen (no update, no gradient) and the eval-mode
    detections update torchmetrics' ``MeanAveragePrecision`` (COCO definition, pycocotools
    backend), logged per epoch as ``val|test/box_map``, ``box_map_50``, ``box_map_75``, ...
    and, with a mask head, ``mask_map``, ``mask_map_50``, ...

    Args:
        net: the detector (or its registry spec when loaded from a checkpoint).
        mask_threshold: probability above which a predicted mask pixel is foreground.
        picture_score_threshold: detections drawn in the PNGs score at least this.
        num_pictures: validation images drawn per epoch.
        optimizer, scheduler, activation_checkpointing: see
            :class:`~mlnotes_zoo.lit.base.ZooModule` (the best checkpoint maximises
            ``val/box_map_50``: configs/model/faster_rcnn.yaml).
    """

    net: FasterRCNN

    def __init__(
        self,
        *,
        net: nn.Module | Mapping[str, Any],
        mask_threshold: Fraction = 0.5,
        picture_score_threshold: Fraction = 0.5,
        num_pictures: NonNegativeInt = 8,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(net=net, optimizer=optimizer, scheduler=scheduler, **base_kwargs)
        self.mask_threshold = mask_threshold
        self.picture_score_threshold = picture_score_threshold
        self.num_pictures = num_pictures
        iou_type = ("bbox", "segm") if self.net.has_mask else ("bbox",)
        self.val_map = MeanAveragePrecision(iou_type=iou_type, backend="pycocotools")
        self.test_map = MeanAveragePrecision(iou_type=iou_type, backend="pycocotools")

    def model_step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        images, targets = batch
        if stage == "train":
            losses = self.net(images, targets)
            return {"loss": sum(losses.values()), **losses}
        with torch.no_grad():
            losses = self.loss_without_update(images, targets)
            detections = self.net(images)
        metric = self.val_map if stage == "val" else self.test_map
        metric.update(self.metric_format(detections), self.metric_format(targets))
        return {"loss": sum(losses.values()), **losses}

    def loss_without_update(self, images: list[Tensor], targets: list[dict]) -> dict[str, Tensor]:
        """The training losses on a held-out batch: train-mode heads (proposal/RoI sampling
        and matching need targets) but eval-mode BatchNorm, so running statistics stay put."""
        was_training = self.net.training
        self.net.train()
        for module in self.net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        try:
            return self.net(images, targets)
        finally:
            self.net.train(was_training)

    def metric_format(self, items: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        """Detections or targets as MeanAveragePrecision wants them (masks (N, H, W) bool)."""
        out = []
        for item in items:
            entry = {"boxes": item["boxes"], "labels": item["labels"]}
            if "scores" in item:
                entry["scores"] = item["scores"]
            if self.net.has_mask:
                masks = item["masks"]
                if masks.dim() == 4:  # predictions: (N, 1, H, W) probabilities
                    masks = masks[:, 0] > self.mask_threshold
                entry["masks"] = masks.bool()
            out.append(entry)
        return out

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_map("val", self.val_map)

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._log_map("test", self.test_map)

    def _log_map(self, stage: str, metric: MeanAveragePrecision) -> None:
        result = metric.compute()
        metric.reset()
        prefixes = {"bbox": "box", "segm": "mask"}
        for iou_type in metric.iou_type:
            for name in _REPORTED:
                key = f"{iou_type}_{name}" if len(metric.iou_type) > 1 else name
                self.log(f"{stage}/{prefixes[iou_type]}_{name}", result[key].float())

    @torch.no_grad()
    def pictures(self, batch: Any) -> dict[str, Tensor]:
        images, targets = batch
        images, targets = images[: self.num_pictures], targets[: self.num_pictures]
        was_training = self.net.training
        self.net.eval()
        detections = self.net(images)
        self.net.train(was_training)
        names = getattr(getattr(self.trainer, "datamodule", None), "class_names", None) \
            if self._trainer is not None else None
        drawn_pred, drawn_true = [], []
        for image, det, target in zip(images, detections, targets, strict=True):
            keep = det["scores"] >= self.picture_score_threshold
            masks = det["masks"][keep, 0] > self.mask_threshold if "masks" in det else None
            captions = [f"{_name(names, int(c))} {s:.2f}"
                        for c, s in zip(det["labels"][keep], det["scores"][keep], strict=True)]
            drawn_pred.append(_draw(image, det["boxes"][keep], det["labels"][keep], captions,
                                    masks))
            true_masks = target["masks"].bool() if self.net.has_mask else None
            drawn_true.append(_draw(image, target["boxes"], target["labels"],
                                    [_name(names, int(c)) for c in target["labels"]], true_masks))
        nrow = min(4, len(images))
        return {name: make_grid(drawn, nrow=nrow, padding=2, pad_value=255).float() / 255
                for name, drawn in (("detections", drawn_pred), ("ground_truth", drawn_true))}


# fixed colour per class label (tab10), so a class looks the same in every picture
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf"]


def _name(names: Any, label: int) -> str:
    return names[label - 1] if names is not None and 0 < label <= len(names) else str(label)


def _draw(image: Tensor, boxes: Tensor, labels: Tensor, captions: list[str],
          masks: Tensor | None, min_side: int = 192) -> Tensor:
    """uint8 (3, H', W') picture: masks (alpha 0.5), then boxes with their captions; small
    images are first enlarged (nearest) to ``min_side`` so the captions stay legible."""
    scale = max(1, min_side // max(image.shape[-2:]))
    picture = image[:3].clamp(0, 1).mul(255).to(torch.uint8).cpu()
    if scale > 1:
        picture = picture.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
        boxes = boxes * scale
        if masks is not None:
            masks = masks.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    colours = [_PALETTE[int(c) % len(_PALETTE)] for c in labels]
    if masks is not None and len(masks):
        picture = draw_segmentation_masks(picture, masks.cpu(), alpha=0.5, colors=colours)
    if len(boxes):
        picture = draw_bounding_boxes(picture, boxes.cpu(), captions, colors=colours, width=1)
    return picture
