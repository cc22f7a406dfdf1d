"""Detection data from disk: any COCO-format folder (pycocotools), or Penn-Fudan-style folders.

COCO layout (COCO 2017 with ``train_split=train2017``, ``val_split=val2017``)::

    <root>/annotations/instances_<split>.json
    <root>/<split>/<file_name of each image>

Category ids are mapped to contiguous labels 1..K in id order (0 is background), so
``num_classes`` is K + 1; crowd annotations (``iscrowd=1``) are skipped; polygon and RLE
segmentations become instance masks via ``COCO.annToMask``.

Penn-Fudan layout (``PennFudanDataModule``): ``<root>/PNGImages/<name>.png`` and
``<root>/PedMasks/<name>_mask.png`` whose pixel values are instance ids (0 = background),
every instance one class ("pedestrian"); a seeded split gives validation and test images.

Batches are ``(images, targets)`` lists in the format of :mod:`mlnotes_zoo.data.detection`.

Bad input is reported with the file it is in: a missing or unparsable annotation file, a
missing images folder, a split with no images, a missing, unreadable or differently sized
image. Annotations are screened when a split is loaded: a box that extends more than
``BOX_TOLERANCE`` pixels outside its image, or an unknown category or image id, is an error
naming the annotation file, the annotation id and the image (``on_bad="error"``, the default)
or is dropped and counted in a logged warning (``on_bad="skip"``). Boxes within the tolerance
are clipped to the image; boxes of zero width or height are dropped (torchvision's rule).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Subset

from mlnotes_zoo.constraints import NonNegativeInt, PositiveInt, Seed
from mlnotes_zoo.data.base import BadDataError, DataNotFoundError, seeded_split
from mlnotes_zoo.data.detection import DetectionDataModule, NumClasses, masks_to_boxes_xyxy

__all__ = ["CocoDetection", "CocoDataModule", "PennFudanDataModule", "MaskFolderDetection"]

log = logging.getLogger(__name__)

BOX_TOLERANCE = 1.0  # pixels a box may extend past the image edge (float rounding); clipped


def _open_image(path: Path, mode: str | None = None) -> np.ndarray:
    """Pixels of an image file as an array; errors name the file."""
    if not path.is_file():
        raise DataNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert(mode) if mode else image).copy()
    except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for damaged files
        raise BadDataError(f"{path}: cannot read image ({err})") from None


def _read_image(path: Path) -> Tensor:
    """RGB float (3, H, W) in [0, 1]."""
    array = _open_image(path, "RGB").astype(np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1).float().div(255)


class CocoDetection(Dataset):
    """One COCO split: items are (image, target) with ``boxes`` xyxy, ``labels``, ``masks``."""

    def __init__(self, images_dir: str | Path, annotation_file: str | Path, *,
                 masks: bool = True, on_bad: Literal["error", "skip"] = "error") -> None:
        from pycocotools.coco import COCO

        annotation_file = Path(annotation_file)
        if not annotation_file.is_file():
            raise DataNotFoundError(f"COCO annotations not found: {annotation_file}")
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise DataNotFoundError(f"images folder not found: {self.images_dir} (the images of "
                                    f"{annotation_file.name})")
        try:
            dataset = json.loads(annotation_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BadDataError(f"{annotation_file}: not a COCO JSON file ({err})") from None
        if not isinstance(dataset, dict) or not all(
                isinstance(dataset.get(k), list) for k in ("images", "annotations", "categories")):
            raise BadDataError(f"{annotation_file}: a COCO file needs 'images', 'annotations' "
                               f"and 'categories' lists")
        if not dataset["images"]:
            raise BadDataError(f"{annotation_file}: no images listed")
        self.annotation_file = annotation_file
        self.coco = COCO()
        self.coco.dataset = dataset
        self.coco.createIndex()
        self.image_ids = sorted(self.coco.getImgIds())
        self.category_ids = sorted(self.coco.getCatIds())
        self.label_of = {cat: i + 1 for i, cat in enumerate(self.category_ids)}
        self.class_names = tuple(self.coco.cats[c]["name"] for c in self.category_ids)
        self.masks = masks
        self.on_bad = on_bad
        self.skipped: list[str] = []
        self.dropped_ids = self._screen()

    def _problem(self, ann: dict) -> str | None:
        """Why annotation ``ann`` cannot be used, or None."""
        info = self.coco.imgs.get(ann.get("image_id"))
        if info is None:
            return f"image_id {ann.get('image_id')} is not in 'images'"
        if ann.get("category_id") not in self.label_of:
            return f"category_id {ann.get('category_id')} is not in 'categories'"
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, (int, float)) for v in bbox)):
            return f"bbox {bbox!r} is not [x, y, width, height]"
        x, y, w, h = bbox
        width, height = info.get("width"), info.get("height")
        if width is None or height is None:
            return f"image {info.get('file_name')} has no width/height"
        tol = BOX_TOLERANCE
        if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            return (f"box [x={x}, y={y}, w={w}, h={h}] extends outside the {width}x{height} "
                    f"image {info.get('file_name')}")
        return None

    def _screen(self) -> set:
        dropped = set()
        for ann in self.coco.dataset["annotations"]:
            if ann.get("iscrowd", 0):
                continue
            reason = self._problem(ann)
            if reason is None:
                continue
            where = f"{self.annotation_file}: annotation {ann.get('id')}: {reason}"
            if self.on_bad == "error":
                raise BadDataError(f"{where} (set data.on_bad=skip to drop such annotations)")
            dropped.add(ann.get("id"))
            self.skipped.append(where)
        if self.skipped:
            log.warning("skipped %d of %d annotations in %s; first: %s", len(self.skipped),
                        len(self.coco.dataset["annotations"]), self.annotation_file,
                        "; ".join(self.skipped[:3]))
        return dropped

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = self.images_dir / info["file_name"]
        image = _read_image(path)
        if tuple(image.shape[-2:]) != (info.get("height"), info.get("width")):
            raise BadDataError(f"{path} is {image.shape[-1]}x{image.shape[-2]} pixels but "
                               f"{self.annotation_file} says {info.get('width')}x"
                               f"{info.get('height')}")
        anns = [a for a in self.coco.imgToAnns.get(image_id, [])
                if not a.get("iscrowd", 0) and a.get("id") not in self.dropped_ids]
        boxes = []
        for a in anns:
            x, y, w, h = a["bbox"]  # COCO boxes are (x, y, width, height)
            boxes.append([x, y, x + w, y + h])
        boxes_t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        boxes_t[:, 0::2] = boxes_t[:, 0::2].clamp(0, info["width"])  # within BOX_TOLERANCE
        boxes_t[:, 1::2] = boxes_t[:, 1::2].clamp(0, info["height"])
        keep = (boxes_t[:, 2] > boxes_t[:, 0]) & (boxes_t[:, 3] > boxes_t[:, 1])
        target = {
            "boxes": boxes_t[keep],
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns],
                                   dtype=torch.int64)[keep],
            "image_id": torch.tensor(image_id),
        }
        if self.masks:
            h, w = image.shape[-2:]
            masks = [torch.from_numpy(self.coco.annToMask(a)) for a in anns]
            target["masks"] = (torch.stack(masks) if masks else
                               torch.zeros(0, h, w, dtype=torch.uint8))[keep]
        return image, target


class MaskFolderDetection(Dataset):
    """Penn-Fudan-style folder: images + instance-id masks, one object class."""

    def __init__(self, root: str | Path, *, images: str = "PNGImages", masks: str = "PedMasks",
                 mask_suffix: str = "_mask") -> None:
        root = Path(root)
        self.image_paths = sorted(p for p in (root / images).iterdir() if p.is_file()) \
            if (root / images).is_dir() else []
        if not self.image_paths:
            raise DataNotFoundError(f"no images under {root / images}")
        self.mask_paths = [root / masks / f"{p.stem}{mask_suffix}.png" for p in self.image_paths]
        missing = [str(p) for p in self.mask_paths if not p.is_file()]
        if missing:
            raise DataNotFoundError(f"masks missing for {len(missing)} images, e.g. {missing[0]}")

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image = _read_image(self.image_paths[index])
        ids_map = torch.from_numpy(_open_image(self.mask_paths[index]).astype(np.int64))
        if ids_map.dim() != 2 or tuple(ids_map.shape) != tuple(image.shape[-2:]):
            raise BadDataError(f"{self.mask_paths[index]}: an instance-id mask must be one "
                               f"channel of the image's size {tuple(image.shape[-2:])}, got "
                               f"{tuple(ids_map.shape)}")  # (H, W) instance ids
        ids = ids_map.unique()
        ids = ids[ids != 0]
        masks = (ids_map[None] == ids[:, None, None]).to(torch.uint8)  # (N, H, W)
        return image, {"boxes": masks_to_boxes_xyxy(masks.bool()),
                       "labels": torch.ones(len(ids), dtype=torch.int64), "masks": masks}


class CocoDataModule(DetectionDataModule):
    """A COCO-format folder (see module docstring).

    Args:
        root: the folder holding ``annotations/`` and the image folders.
        train_split, val_split, test_split: split names (``instances_<split>.json``,
            images in ``<root>/<split>/``); the test split defaults to the validation one.
        masks: load instance masks (Mask R-CNN needs them; Faster R-CNN does not).
        on_bad: ``"error"`` stops on the first bad annotation, naming the file and its id;
            ``"skip"`` drops bad annotations and logs how many (see the module docstring).
        image_size: the detector resizes images so the long side is this (model config).
        num_classes: categories + 1; checked against the annotation file.
        batch_size, num_workers: DataLoader settings.
    """

    def __init__(self, *, root: str = "data/coco", train_split: str = "train2017",
                 val_split: str = "val2017", test_split: str | None = None, masks: bool = True,
                 on_bad: Literal["error", "skip"] = "error", image_size: PositiveInt = 512,
                 num_classes: NumClasses = 81, batch_size: PositiveInt = 4,
                 num_workers: NonNegativeInt = 0) -> None:
        super().__init__(image_size=image_size, num_classes=num_classes, batch_size=batch_size,
                         num_workers=num_workers)
        self.root = Path(root).expanduser()
        self.split_names = {"train": train_split, "val": val_split,
                            "test": test_split or val_split}
        self.masks = masks
        self.on_bad = on_bad

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if not self.root.is_dir() or not any(self.root.iterdir()):
            raise DataNotFoundError(f"COCO folder {str(self.root)!r} is missing or empty: put "
                                    f"annotations/instances_<split>.json and <split>/ images "
                                    f"there, or set data.root=<dir>")
        for name, split in self.split_names.items():
            self.splits[name] = CocoDetection(
                self.root / split, self.root / "annotations" / f"instances_{split}.json",
                masks=self.masks, on_bad=self.on_bad)
        train = self.splits["train"]
        for name, ds in self.splits.items():
            if ds.category_ids != train.category_ids:
                raise ValueError(f"split {name!r} has other categories than train")
        if len(train.category_ids) + 1 != self.num_classes:
            raise ValueError(
                f"{self.root} has {len(train.category_ids)} categories, so the detector needs "
                f"num_classes={len(train.category_ids) + 1}: set data.num_classes="
                f"{len(train.category_ids) + 1} (got {self.num_classes})"
            )
        self.class_names = train.class_names


class PennFudanDataModule(DetectionDataModule):
    """Penn-Fudan-style folder (see module docstring), seeded val/test split.

    Args:
        root: folder with ``images`` and ``masks`` subfolders.
        images, masks, mask_suffix: their names; mask of ``x.png`` is ``<masks>/x<suffix>.png``.
        val_size, test_size: images held out (seeded by ``split_seed``).
        image_size, num_classes (must be 2), batch_size, num_workers: as in CocoDataModule.
    """

    class_names = ("pedestrian",)

    def __init__(self, *, root: str = "data/PennFudanPed", images: str = "PNGImages",
                 masks: str = "PedMasks", mask_suffix: str = "_mask", val_size: PositiveInt = 20,
                 test_size: PositiveInt = 20, split_seed: Seed = 0, image_size: PositiveInt = 320,
                 num_classes: Literal[2] = 2, batch_size: PositiveInt = 2,
                 num_workers: NonNegativeInt = 0) -> None:
        super().__init__(image_size=image_size, num_classes=num_classes, batch_size=batch_size,
                         num_workers=num_workers)
        self.root, self.folders = Path(root).expanduser(), (images, masks, mask_suffix)
        self.val_size, self.test_size, self.split_seed = val_size, test_size, split_seed

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        images, masks, suffix = self.folders
        full = MaskFolderDetection(self.root, images=images, masks=masks, mask_suffix=suffix)
        n_train = len(full) - self.val_size - self.test_size
        if n_train < 1:
            raise ValueError(f"val_size ({self.val_size}) + test_size ({self.test_size}) must "
                             f"leave training images out of {len(full)}")
        sizes = {"test": self.test_size, "val": self.val_size, "train": n_train}
        for name, idx in seeded_split(len(full), sizes, self.split_seed).items():
            self.splits[name] = Subset(full, idx)
