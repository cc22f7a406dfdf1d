"""Seeded 2-D toy densities (the FFJORD / RealNVP test beds): the embedded default of the CNF.

``moons`` and ``circles`` are scikit-learn's ``make_moons`` / ``make_circles`` and
``8gaussians`` its ``make_blobs`` (eight equal components on a circle), placed and scaled
as in FFJORD's ``toy_data.py``; ``checkerboard`` and ``pinwheel`` have no scikit-learn
generator and follow FFJORD's formulas with a seeded NumPy generator.

``8gaussians`` has a closed-form density (:func:`eight_gaussians_log_prob`), so its test
split's −mean log p_data estimates the entropy a perfect model would reach
(:meth:`Toy2DDataModule.log_prob`).

Batches are ``(x,)`` with x float32 (B, 2).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from mlnotes_zoo.constraints import NonNegativeInt, PositiveFloat, PositiveInt, Seed
from mlnotes_zoo.data.base import DataModule

__all__ = ["Toy2DDataModule", "sample_toy2d", "eight_gaussians_log_prob", "TOY2D",
           "EIGHT_GAUSSIANS_RADIUS", "EIGHT_GAUSSIANS_STD"]

TOY2D = ("moons", "circles", "8gaussians", "checkerboard", "pinwheel")
Toy = Literal["moons", "circles", "8gaussians", "checkerboard", "pinwheel"]

# FFJORD: centres at 4·(unit circle, every 45°) with std 0.5, then everything divided by 1.414
EIGHT_GAUSSIANS_RADIUS = 4 / 1.414
EIGHT_GAUSSIANS_STD = 0.5 / 1.414


def _eight_centres() -> np.ndarray:
    angles = np.arange(8) * math.pi / 4
    return EIGHT_GAUSSIANS_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def sample_toy2d(name: str, num: int, seed: int) -> Tensor:
    """``num`` points of the toy ``name``, a deterministic function of ``seed``: (num, 2)."""
    from sklearn.datasets import make_blobs, make_circles, make_moons

    rng = np.random.RandomState(seed)
    if name == "moons":
        x = make_moons(num, noise=0.1, random_state=seed)[0]
        x = x * 2 + np.array([-1.0, -0.2])
    elif name == "circles":
        x = make_circles(num, factor=0.5, noise=0.08, random_state=seed)[0] * 3
    elif name == "8gaussians":
        x = make_blobs(num, centers=_eight_centres(), cluster_std=EIGHT_GAUSSIANS_STD,
                       random_state=seed)[0]
    elif name == "checkerboard":
        x1 = rng.rand(num) * 4 - 2
        x2 = rng.rand(num) - rng.randint(0, 2, num) * 2
        x2 = x2 + np.floor(x1) % 2
        x = np.stack([x1, x2], axis=1) * 2
    elif name == "pinwheel":
        radial_std, tangential_std, num_classes, rate = 0.3, 0.1, 5, 0.25
        rads = np.linspace(0, 2 * np.pi, num_classes, endpoint=False)
        features = rng.randn(num, 2) * np.array([radial_std, tangential_std])
        features[:, 0] += 1.0
        labels = np.repeat(np.arange(num_classes), -(-num // num_classes))[:num]
        angles = rads[labels] + rate * np.exp(features[:, 0])
        rotations = np.stack([np.cos(angles), -np.sin(angles), np.sin(angles),
                              np.cos(angles)]).T.reshape(-1, 2, 2)
        x = 2 * rng.permutation(np.einsum("ti,tij->tj", features, rotations))
    else:
        raise ValueError(f"unknown toy {name!r}; pick one of {', '.join(TOY2D)}")
    return torch.from_numpy(np.asarray(x, dtype=np.float32))


def eight_gaussians_log_prob(x: Tensor) -> Tensor:
    """log p(x) of the 8-Gaussian mixture (equal weights, isotropic std), (B,)."""
    centres = torch.as_tensor(_eight_centres(), dtype=x.dtype, device=x.device)
    components = torch.distributions.Independent(
        torch.distributions.Normal(centres, EIGHT_GAUSSIANS_STD), 1)
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=torch.zeros(8, dtype=x.dtype, device=x.device)),
        components)
    return mixture.log_prob(x)


class Toy2DDataModule(DataModule):
    """A seeded 2-D toy density: fixed train, val and test sets of fresh draws.

    Args:
        dataset: ``moons``, ``circles``, ``8gaussians``, ``checkerboard`` or ``pinwheel``.
        train_size, val_size, test_size: points in each split.
        plot_range: the pictures show [−r, r]² (every toy lies well inside r = 4).
        seed: seed of the training points.
        split_seed: seed of the validation (split_seed) and test (split_seed + 1) points.
        batch_size, num_workers: see :class:`~mlnotes_zoo.data.base.DataModule`.
    """

    def __init__(
        self,
        *,
        dataset: Toy = "8gaussians",
        train_size: PositiveInt = 20_000,
        val_size: PositiveInt = 2_000,
        test_size: PositiveInt = 5_000,
        plot_range: PositiveFloat = 4.0,
        batch_size: PositiveInt = 256,
        seed: Seed = 0,
        split_seed: Seed = 1234,
        num_workers: NonNegativeInt = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        self.dataset = dataset
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.plot_range = plot_range
        self.seed = seed
        self.split_seed = split_seed

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        seeds = {"train": self.seed, "val": self.split_seed, "test": self.split_seed + 1}
        for split, size in self.sizes.items():
            self.splits[split] = TensorDataset(sample_toy2d(self.dataset, size, seeds[split]))

    @property
    def has_log_prob(self) -> bool:
        """Whether the data's density is known in closed form (8 Gaussians)."""
        return self.dataset == "8gaussians"

    def log_prob(self, x: Tensor) -> Tensor:
        """The true log-density of the data at ``x`` (B, 2), where it is known."""
        if not self.has_log_prob:
            raise ValueError(f"the density of {self.dataset!r} is not known in closed form")
        return eight_gaussians_log_prob(x)
