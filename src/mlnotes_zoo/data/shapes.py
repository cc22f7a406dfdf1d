"""Seeded shapes: the embedded default for detection (boxes + instance masks, no download).

Each image has a random background colour with a little noise and several circles, squares
and triangles of random colour, size and position, drawn one over another: an earlier shape
may be partly hidden, and its mask and box are its *visible* pixels (the COCO convention).
A placement that would hide more than ``max_occlusion`` of any shape is redrawn.

Batches are ``(images, targets)`` lists in the format of :mod:`mlnotes_zoo.data.detection`,
labels 1..3 (circle, square, triangle) and instance ``masks``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mlnotes_zoo.constraints import Fraction, NonNegativeFloat, NonNegativeInt, PositiveInt, Seed
from mlnotes_zoo.data.detection import DetectionDataModule, masks_to_boxes_xyxy

__all__ = ["ShapesDataModule", "ShapesDataset", "generate_shapes", "SHAPE_NAMES"]

SHAPE_NAMES = ("circle", "square", "triangle")  # labels 1, 2, 3


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


class ShapesDataModule(DetectionDataModule):
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
        num_classes: 4 (3 shapes + background); the model config reads it.
        batch_size, num_workers: DataLoader settings.
        seed: seed of the training images; ``split_seed`` of validation and test.
    """

    class_names = SHAPE_NAMES

    def __init__(
        self,
        *,
        num_train: PositiveInt = 4000,
        num_val: PositiveInt = 48,
        num_test: PositiveInt = 200,
        image_size: PositiveInt = 64,
        min_objects: PositiveInt = 2,
        max_objects: PositiveInt = 5,
        min_shape_size: PositiveInt = 12,
        max_shape_size: PositiveInt = 28,
        max_occlusion: Fraction = 0.4,
        noise: NonNegativeFloat = 0.03,
        num_classes: Literal[4] = 4,
        batch_size: PositiveInt = 8,
        num_workers: NonNegativeInt = 0,
        seed: Seed = 0,
        split_seed: Seed = 1,
    ) -> None:
        super().__init__(image_size=image_size, num_classes=num_classes, batch_size=batch_size,
                         num_workers=num_workers)
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.shape_kwargs: dict[str, Any] = dict(
            image_size=image_size, min_objects=min_objects, max_objects=max_objects,
            min_shape_size=min_shape_size, max_shape_size=max_shape_size,
            max_occlusion=max_occlusion, noise=noise,
        )
        generate_shapes(1, **self.shape_kwargs)  # fail on bad sizes now, not at setup
        self.seeds = {"train": seed, "val": 1000 * split_seed + 1, "test": 1000 * split_seed + 2}

    def setup(self, stage: str | None = None) -> None:
        for name, size in self.sizes.items():
            if name not in self.splits:
                self.splits[name] = ShapesDataset(size, seed=self.seeds[name], **self.shape_kwargs)
