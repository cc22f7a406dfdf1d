"""Seeded shapes: the embedded default for detection (boxes + instance masks, no download).

Each image has a random background colour with a little noise and several circles, squares
and triangles of random colour, size and position, drawn one over another: an earlier shape
may be partly hidden, and its mask and box are its *visible* pixels (the COCO convention).
A placement that would hide more than ``max_occlusion`` of any shape is redrawn.

Detection batches are ``(images, targets)``: two lists, because images of other datasets
differ in size (:func:`detection_collate`); each target is a dict with ``boxes`` float (N, 4)
``xyxy`` pixels, ``labels`` int64 (N,) in 1..3 (0 is background), ``masks`` uint8 (N, H, W).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import masks_to_boxes

__all__ = ["ShapesDataModule", "ShapesDataset", "DetectionDataset", "detection_collate",
           "generate_shapes", "masks_to_boxes_xyxy", "SHAPE_NAMES"]

SHAPE_NAMES = ("circle", "square", "triangle")  # labels 1, 2, 3


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


def _shape_mask(kind: int, cx: float, cy: float, size: float,
                grid: tuple[Tensor, Tensor]) -> Tensor:
    """Pixels (centres at +0.5) in a circle of diameter, square or triangle of side ``size``."""
    y, x = grid
    half = size / 2
    if kind == 1:  # circle: (x − cx)² + (y − cy)² ≤ r²
        return (x - cx) ** 2 + (y - cy) ** 2 <= half**2
    if kind == 2:  # axis-aligned square
        return ((x - cx).abs() <= half) & ((y - cy).abs() <= half)
    # upright isosceles triangle: apex at (cx, cy − s/2), base y = cy + s/2 of width s;
    # half-width grows linearly from 0 at the apex to s/2 at the base
    depth = y - (cy - half)
    return (depth >= 0) & (y <= cy + half) & ((x - cx).abs() <= depth / 2)


def generate_shapes(
    num_images: int,
    *,
    image_size: int = 64,
    min_objects: int = 2,
    max_objects: int = 5,
    min_shape_size: int = 12,
    max_shape_size: int = 28,
    max_occlusion: float = 0.4,
    noise: float = 0.03,
    seed: int = 0,
) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """``num_images`` images uint8 (N, 3, S, S) and their targets (see module docstring)."""
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    if not 2 <= min_shape_size <= max_shape_size < image_size:
        raise ValueError(
            f"need 2 <= min_shape_size <= max_shape_size < image_size, got {min_shape_size}, "
            f"{max_shape_size}, {image_size}"
        )
    gen = torch.Generator().manual_seed(seed)
    coords = torch.arange(image_size, dtype=torch.float32) + 0.5
    grid = torch.meshgrid(coords, coords, indexing="ij")  # (y, x), each (S, S)
    images = torch.empty(num_images, 3, image_size, image_size, dtype=torch.uint8)
    targets = []

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=gen))

    for i in range(num_images):
        background = torch.rand(3, generator=gen)
        image = background.view(3, 1, 1).expand(3, image_size, image_size).clone()
        full: list[Tensor] = []  # each shape's own pixels
        visible: list[Tensor] = []  # what is left after the shapes drawn over it
        labels: list[int] = []
        count = int(torch.randint(min_objects, max_objects + 1, (), generator=gen))
        for _ in range(count):
            for _attempt in range(20):
                kind = int(torch.randint(1, len(SHAPE_NAMES) + 1, (), generator=gen))
                size = uniform(min_shape_size, max_shape_size)
                cx = uniform(size / 2, image_size - size / 2)
                cy = uniform(size / 2, image_size - size / 2)
                mask = _shape_mask(kind, cx, cy, size, grid)
                kept = [v & ~mask for v in visible]
                min_left = [(1 - max_occlusion) * f.sum() for f in full]
                if all(k.sum() >= m for k, m in zip(kept, min_left, strict=True)):
                    break
            else:
                continue  # no room for another shape
            colour = torch.rand(3, generator=gen)
            while (colour - background).abs().max() < 0.3:  # keep shapes visible
                colour = torch.rand(3, generator=gen)
            image[:, mask] = colour.view(3, 1)
            visible = [*kept, mask]
            full.append(mask)
            labels.append(kind)
        image += noise * torch.randn(image.shape, generator=gen)
        images[i] = image.clamp(0, 1).mul(255).round().to(torch.uint8)
        masks = torch.stack(visible).to(torch.uint8)  # (N, S, S)
        targets.append({
            "boxes": masks_to_boxes_xyxy(masks.bool()),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": masks,
        })
    return images, targets


class DetectionDataset(Dataset):
    """uint8 images held in memory + their targets; items are (float image in [0, 1], target)."""

    def __init__(self, images: Tensor, targets: list[dict[str, Tensor]]) -> None:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self.images[index].float().div(255), self.targets[index]


class ShapesDataset(Dataset):
    """``size`` shapes images, image ``i`` generated from its own seed on first access, then kept.

    Per-image seeds make a split cheap to open (a run that reads two batches draws 16
    images, not thousands) and make image ``i`` the same whatever order it is read in.
    """

    def __init__(self, size: int, *, seed: int, **shape_kwargs: Any) -> None:
        self.size, self.seed, self.shape_kwargs = size, seed, shape_kwargs
        self.cache: dict[int, tuple[Tensor, dict[str, Tensor]]] = {}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} images")
        if index not in self.cache:
            images, targets = generate_shapes(1, seed=self.seed * 1_000_003 + index,
                                              **self.shape_kwargs)
            self.cache[index] = images[0], targets[0]
        image, target = self.cache[index]
        return image.float().div(255), target


class ShapesDataModule(pl.LightningDataModule):
    """Circles, squares and triangles with boxes and instance masks, generated from seeds.

    The test split depends on ``split_seed`` only (never on the training seed), so every run
    is scored on the same images.

    Args:
        num_train, num_val, num_test: images per split.
        image_size: side S of the square images (the model's ``min_size``/``max_size``).
        min_objects, max_objects: shapes per image (fewer when no placement fits).
        min_shape_size, max_shape_size: side (square, triangle) or diameter (circle) in pixels.
        max_occlusion: largest fraction of a shape that later shapes may hide.
        noise: standard deviation of the per-pixel Gaussian noise (pixel values in [0, 1]).
        num_classes: must be 4 (3 shapes + background); the model config reads it.
        batch_size, num_workers: DataLoader settings.
        seed: seed of the training images; ``split_seed`` of validation and test.
    """

    class_names = SHAPE_NAMES

    def __init__(
        self,
        *,
        num_train: int = 4000,
        num_val: int = 48,
        num_test: int = 200,
        image_size: int = 64,
        min_objects: int = 2,
        max_objects: int = 5,
        min_shape_size: int = 12,
        max_shape_size: int = 28,
        max_occlusion: float = 0.4,
        noise: float = 0.03,
        num_classes: int = 4,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        split_seed: int = 1,
    ) -> None:
        super().__init__()
        if num_classes != len(SHAPE_NAMES) + 1:
            raise ValueError(f"shapes has {len(SHAPE_NAMES)} classes + background: num_classes "
                             f"must be {len(SHAPE_NAMES) + 1}, got {num_classes}")
        if min(num_train, num_val, num_test) < 1 or batch_size < 1:
            raise ValueError("num_train, num_val, num_test and batch_size must be >= 1")
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.shape_kwargs: dict[str, Any] = dict(
            image_size=image_size, min_objects=min_objects, max_objects=max_objects,
            min_shape_size=min_shape_size, max_shape_size=max_shape_size,
            max_occlusion=max_occlusion, noise=noise,
        )
        generate_shapes(1, **self.shape_kwargs)  # fail on bad sizes now, not at setup
        self.image_size = image_size
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seeds = {"train": seed, "val": 1000 * split_seed + 1, "test": 1000 * split_seed + 2}
        self.splits: dict[str, ShapesDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        for name, size in self.sizes.items():
            if name not in self.splits:
                self.splits[name] = ShapesDataset(size, seed=self.seeds[name], **self.shape_kwargs)

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
