"""Detection data: the seeded shapes generator, COCO folders and Penn-Fudan-style folders,
the last two on tiny files in their real on-disk formats written here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torchvision.ops import masks_to_boxes

from mlnotes_zoo.data.coco import CocoDataModule, PennFudanDataModule
from mlnotes_zoo.data.detection import detection_collate, masks_to_boxes_xyxy
from mlnotes_zoo.data.shapes import ShapesDataModule, generate_shapes


def test_shapes_are_seeded_and_targets_match_the_pixels():
    images, targets = generate_shapes(12, image_size=48, min_shape_size=8, max_shape_size=20,
                                      seed=5)
    again, targets_again = generate_shapes(12, image_size=48, min_shape_size=8,
                                           max_shape_size=20, seed=5)
    assert torch.equal(images, again) and images.dtype == torch.uint8
    assert images.shape == (12, 3, 48, 48)
    other, _ = generate_shapes(12, image_size=48, min_shape_size=8, max_shape_size=20, seed=6)
    assert not torch.equal(images, other)
    kinds = set()
    for t, u in zip(targets, targets_again, strict=True):
        assert torch.equal(t["boxes"], u["boxes"]) and torch.equal(t["masks"], u["masks"])
        n = len(t["labels"])
        assert 2 <= n <= 5 and t["masks"].shape == (n, 48, 48) and t["boxes"].shape == (n, 4)
        assert ((t["labels"] >= 1) & (t["labels"] <= 3)).all()
        kinds |= set(t["labels"].tolist())
        # visible masks never overlap, and boxes enclose them (torchvision: inclusive maxima)
        assert t["masks"].sum(0).max() <= 1
        torch.testing.assert_close(t["boxes"], masks_to_boxes(t["masks"]) + torch.tensor(
            [0.0, 0.0, 1.0, 1.0]))
    assert kinds == {1, 2, 3}


def test_shape_areas_follow_their_geometry():
    # one unoccluded shape per image: area ≈ πr² (circle), s² (square), s²/2 (triangle)
    _, targets = generate_shapes(30, image_size=64, min_objects=1, max_objects=1,
                                 min_shape_size=30, max_shape_size=30, noise=0.0, seed=0)
    expected = {1: math.pi * 15**2, 2: 30.0**2, 3: 30.0**2 / 2}
    for t in targets:
        area = float(t["masks"].sum())
        assert area == pytest.approx(expected[int(t["labels"][0])], rel=0.08)


def test_masks_to_boxes_xyxy_and_collate():
    masks = torch.zeros(2, 5, 6, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 4, 0] = True
    assert masks_to_boxes_xyxy(masks).tolist() == [[2, 1, 5, 3], [0, 4, 1, 5]]
    images, targets = detection_collate([(torch.zeros(3, 4, 4), {"a": 1}),
                                         (torch.ones(3, 5, 6), {"a": 2})])
    assert isinstance(images, list) and [t["a"] for t in targets] == [1, 2]


def test_shapes_datamodule_splits():
    dm = ShapesDataModule(num_train=6, num_val=3, num_test=4, batch_size=4, seed=0)
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    assert len(images) == 4 and images[0].shape == (3, 64, 64) and images[0].dtype == torch.float32
    assert 0 <= images[0].min() and images[0].max() <= 1 and "masks" in targets[0]
    assert len(dm.splits["test"]) == 4
    # the test split depends on split_seed only, not on the training seed
    other = ShapesDataModule(num_train=6, num_val=3, num_test=4, seed=9)
    other.setup("test")
    assert torch.equal(dm.splits["test"][3][0], other.splits["test"][3][0])
    assert not torch.equal(dm.splits["train"][0][0], other.splits["train"][0][0])
    # image i is the same whatever order the split is read in
    fresh = ShapesDataModule(num_train=6, num_val=3, num_test=4, seed=9)
    fresh.setup("test")
    assert torch.equal(fresh.splits["test"][3][1]["masks"], other.splits["test"][3][1]["masks"])
    with pytest.raises(ValueError, match="num_classes=3: must be 4"):
        ShapesDataModule(num_classes=3)


def _write_coco(root, split, files):
    """A tiny COCO split: images with a polygon square, a box-only rectangle and a crowd."""
    (root / split).mkdir(parents=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, anns = [], []
    for i, name in enumerate(files, start=1):
        Image.fromarray(np.full((30, 40, 3), 40 * i, dtype=np.uint8)).save(root / split / name)
        images.append({"id": i, "file_name": name, "height": 30, "width": 40})
        anns.append({"id": 10 * i, "image_id": i, "category_id": 7, "iscrowd": 0, "area": 100,
                     "bbox": [5, 4, 10, 10],
                     "segmentation": [[5, 4, 15, 4, 15, 14, 5, 14]]})
        anns.append({"id": 10 * i + 1, "image_id": i, "category_id": 3, "iscrowd": 0,
                     "area": 50, "bbox": [20, 10, 10, 5],
                     "segmentation": [[20, 10, 30, 10, 30, 15, 20, 15]]})
        anns.append({"id": 10 * i + 2, "image_id": i, "category_id": 3, "iscrowd": 1,
                     "area": 4, "bbox": [0, 0, 2, 2],
                     "segmentation": {"counts": [0, 4, 1196], "size": [30, 40]}})
    cats = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    (root / "annotations" / f"instances_{split}.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))


def test_coco_folder(tmp_path):
    _write_coco(tmp_path, "train", ["a.png", "b.jpg"])
    _write_coco(tmp_path, "val", ["c.png"])
    dm = CocoDataModule(root=str(tmp_path), train_split="train", val_split="val",
                        num_classes=3, batch_size=2)
    dm.setup("fit")
    assert dm.class_names == ("cat", "dog") and len(dm.splits["test"]) == 1
    images, targets = next(iter(dm.train_dataloader()))
    assert images[0].shape == (3, 30, 40) and images[0].max() <= 1
    t = targets[0]
    # crowd skipped; (x, y, w, h) -> xyxy; category ids 3, 7 -> labels 1, 2 in id order
    assert t["labels"].tolist() == [2, 1]
    assert t["boxes"].tolist() == [[5, 4, 15, 14], [20, 10, 30, 15]]
    assert t["masks"].shape == (2, 30, 40) and t["masks"].dtype == torch.uint8
    # pycocotools rasterises the 10×10 polygon to about 100 pixels inside the box
    assert 90 <= int(t["masks"][0].sum()) <= 121
    assert t["masks"][0, 4:15, 5:16].sum() == t["masks"][0].sum()
    with pytest.raises(ValueError, match="num_classes=3"):
        CocoDataModule(root=str(tmp_path), train_split="train", val_split="val",
                       num_classes=81).setup("fit")
    with pytest.raises(FileNotFoundError):
        CocoDataModule(root=str(tmp_path / "nowhere"), num_classes=3).setup("fit")


def test_penn_fudan_folder(tmp_path):
    (tmp_path / "PNGImages").mkdir()
    (tmp_path / "PedMasks").mkdir()
    for i in range(5):
        Image.fromarray(np.zeros((20, 24, 3), dtype=np.uint8)).save(
            tmp_path / "PNGImages" / f"P{i}.png")
        ids = Image.new("L", (24, 20))
        draw = ImageDraw.Draw(ids)
        draw.rectangle([2, 3, 6, 10], fill=1)  # inclusive corners: x 2..6, y 3..10
        draw.rectangle([10 + i, 5, 20, 8], fill=2)
        ids.save(tmp_path / "PedMasks" / f"P{i}_mask.png")
    dm = PennFudanDataModule(root=str(tmp_path), val_size=1, test_size=1, batch_size=3)
    dm.setup("fit")
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    images, targets = next(iter(dm.train_dataloader()))
    t = targets[0]
    assert t["labels"].tolist() == [1, 1] and t["masks"].shape == (2, 20, 24)
    assert t["boxes"][0].tolist() == [2, 3, 7, 11]
