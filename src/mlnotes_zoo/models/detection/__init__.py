"""Two-stage detectors, split by pipeline stage: backbone, RPN, RoI heads, mask head, model."""

from mlnotes_zoo.models.detection.backbone import ResNetFPN
from mlnotes_zoo.models.detection.model import FasterRCNN, MaskRCNN, example_targets

__all__ = ["FasterRCNN", "MaskRCNN", "ResNetFPN", "example_targets"]
