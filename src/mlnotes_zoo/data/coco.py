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

Batches are ``(images, targets)`` lists as for :mod:`mlnotes_zoo.data.shapes`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mlnotes_zoo.data.shapes import detection_collate, masks_to_boxes_xyxy

__all__ = ["CocoDetection", "CocoDataModule", "PennFudanDataModule", "MaskFolderDetection"]


def _read_image(path: Path) -> Tensor:
    """RGB float (3, H, W) in [0, 1]."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1).float().div(255)


class CocoDetection(Dataset):
    """One COCO split: items are (image, target) with ``boxes`` xyxy, ``labels``, ``masks``."""

    def __init__(self, images_dir: str | Path, annotation_file: str | Path, *,
                 masks: bool = True) -> None:
        from pycocotools.coco import COCO

        annotation_file = Path(annotation_file)
        if not annotation_file.is_file():
            raise FileNotFoundError(f"COCO annotations not found: {annotation_file}")
        self.images_dir = Path(images_dir)
        self.coco = COCO(str(annotation_file))
        self.image_ids = sorted(self.coco.getImgIds())
        self.category_ids = sorted(self.coco.getCatIds())
        self.label_of = {cat: i + 1 for i, cat in enumerate(self.category_ids)}
        self.class_names = tuple(self.coco.cats[c]["name"] for c in self.category_ids)
        self.masks = masks

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        image = _read_image(self.images_dir / info["file_name"])
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes = []
        for a in anns:
            x, y, w, h = a["bbox"]  # COCO boxes are (x, y, width, height)
            boxes.append([x, y, x + w, y + h])
        boxes_t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
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
            raise FileNotFoundError(f"no images under {root / images}")
        self.mask_paths = [root / masks / f"{p.stem}{mask_suffix}.png" for p in self.image_paths]
        missing = [str(p) for p in self.mask_paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"masks missing for {len(missing)} images, e.g. {missing[0]}")

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image = _read_image(self.image_paths[index])
        with Image.open(self.mask_paths[index]) as m:
            ids_map = torch.from_numpy(np.asarray(m, dtype=np.int64).copy())  # (H, W) instance ids
        ids = ids_map.unique()
        ids = ids[ids != 0]
        masks = (ids_map[None] == ids[:, None, None]).to(torch.uint8)  # (N, H, W)
        return image, {"boxes": masks_to_boxes_xyxy(masks.bool()),
                       "labels": torch.ones(len(ids), dtype=torch.int64), "masks": masks}


class _DetectionDataModule(pl.LightningDataModule):
    def __init__(self, *, image_size: int, num_classes: int, batch_size: int,
                 num_workers: int) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.image_size = image_size  # read by the model config (min_size/max_size)
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.splits: dict[str, Dataset] = {}
        self.class_names: tuple[str, ...] = ()

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(self.splits[split], batch_size=self.batch_size, shuffle=shuffle,
                          collate_fn=detection_collate, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


class CocoDataModule(_DetectionDataModule):
    """A COCO-format folder (see module docstring).

    Args:
        root: the folder holding ``annotations/`` and the image folders.
        train_split, val_split, test_split: split names (``instances_<split>.json``,
            images in ``<root>/<split>/``); the test split defaults to the validation one.
        masks: load instance masks (Mask R-CNN needs them; Faster R-CNN does not).
        image_size: the detector resizes images so the long side is this (model config).
        num_classes: categories + 1; checked against the annotation file.
        batch_size, num_workers: DataLoader settings.
    """

    def __init__(self, *, root: str = "data/coco", train_split: str = "train2017",
                 val_split: str = "val2017", test_split: str | None = None, masks: bool = True,
                 image_size: int = 512, num_classes: int = 81, batch_size: int = 4,
                 num_workers: int = 0) -> None:
        super().__init__(image_size=image_size, num_classes=num_classes, batch_size=batch_size,
                         num_workers=num_workers)
        self.root = Path(root).expanduser()
        self.split_names = {"train": train_split, "val": val_split,
                            "test": test_split or val_split}
        self.masks = masks

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        for name, split in self.split_names.items():
            self.splits[name] = CocoDetection(
                self.root / split, self.root / "annotations" / f"instances_{split}.json",
                masks=self.masks)
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


class PennFudanDataModule(_DetectionDataModule):
    """Penn-Fudan-style folder (see module docstring), seeded val/test split.

    Args:
        root: folder with ``images`` and ``masks`` subfolders.
        images, masks, mask_suffix: their names; mask of ``x.png`` is ``<masks>/x<suffix>.png``.
        val_size, test_size: images held out (seeded by ``split_seed``).
        image_size, num_classes (must be 2), batch_size, num_workers: as in CocoDataModule.
    """

    class_names = ("pedestrian",)

    def __init__(self, *, root: str = "data/PennFudanPed", images: str = "PNGImages",
                 masks: str = "PedMasks", mask_suffix: str = "_mask", val_size: int = 20,
                 test_size: int = 20, split_seed: int = 0, image_size: int = 320,
                 num_classes: int = 2, batch_size: int = 2, num_workers: int = 0) -> None:
        super().__init__(image_size=image_size, num_classes=num_classes, batch_size=batch_size,
                         num_workers=num_workers)
        if num_classes != 2:
            raise ValueError(f"a mask folder has one class: num_classes must be 2, "
                             f"got {num_classes}")
        self.class_names = ("pedestrian",)
        self.root, self.folders = Path(root).expanduser(), (images, masks, mask_suffix)
        self.val_size, self.test_size, self.split_seed = val_size, test_size, split_seed

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        images, masks, suffix = self.folders
        full = MaskFolderDetection(self.root, images=images, masks=masks, mask_suffix=suffix)
        n_train = len(full) - self.val_size - self.test_size
        if self.val_size < 1 or self.test_size < 1 or n_train < 1:
            raise ValueError(f"val_size ({self.val_size}) + test_size ({self.test_size}) must "
                             f"leave training images out of {len(full)}")
        order = torch.randperm(len(full), generator=torch.Generator().manual_seed(self.split_seed))
        parts = {"test": order[: self.test_size],
                 "val": order[self.test_size : self.test_size + self.val_size],
                 "train": order[self.test_size + self.val_size :]}
        for name, idx in parts.items():
            self.splits[name] = torch.utils.data.Subset(full, idx.tolist())
