"""What the detection DataModules share: the batch format, its collate function, boxes from
masks, and their base class (:mod:`~mlnotes_zoo.data.shapes`, :mod:`~mlnotes_zoo.data.coco`).

Detection batches are ``(images, targets)``: two lists, because images of other datasets
differ in size (:func:`detection_collate`); each image is float (3, H, W) in [0, 1] and each
target a dict with ``boxes`` float (N, 4) ``xyxy`` pixels, ``labels`` int64 (N,) in 1..K
(0 is background) and, for instance segmentation, ``masks`` uint8 (N, H, W).
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor
from torchvision.ops import masks_to_boxes

from mlnotes_zoo.constraints import Field, NonNegativeInt, PositiveInt
from mlnotes_zoo.data.base import DataModule

__all__ = ["DetectionDataModule", "detection_collate", "masks_to_boxes_xyxy", "NumClasses"]

NumClasses = Annotated[int, Field(ge=2, description="object classes + background")]


def detection_collate(batch: list[tuple[Tensor, dict[str, Tensor]]]) -> tuple[list, list]:
    """[(image, target), ...] -> ([images], [targets]): detection models take lists."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def masks_to_boxes_xyxy(masks: Tensor) -> Tensor:
    """(N, H, W) non-empty masks -> (N, 4) ``xyxy`` boxes enclosing whole pixels.

    torchvision's ``masks_to_boxes`` gives the last pixel's index as x2/y2; the box of the
    pixels themselves ends one further (x2 = last column + 1), as COCO's boxes do.
    """
    return masks_to_boxes(masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])


class DetectionDataModule(DataModule):
    """Base of the detection DataModules: list batches, and what the model config reads.

    Args:
        image_size: the detector resizes images to this side (its ``min_size``/``max_size``).
        num_classes: object classes + background (the detector's ``num_classes``).
        batch_size, num_workers: DataLoader settings.
    """

    collate_fn = staticmethod(detection_collate)
    class_names: tuple[str, ...] = ()

    def __init__(self, *, image_size: PositiveInt, num_classes: NumClasses,
                 batch_size: PositiveInt, num_workers: NonNegativeInt = 0) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        self.image_size = image_size  # read by the model config (min_size/max_size)
        self.num_classes = num_classes
