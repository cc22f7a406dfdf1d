"""Seeded 2-D time series observed at irregular times: the embedded default of the latent ODE.

Two kinds (Chen et al. 2018 §5.1; Rubanova et al. 2019 §4), each series with its own random
parameters:

* ``spirals``: Archimedean spirals r = a + bθ, θ = θ₀ + ω t, turning clockwise or
  counter-clockwise, x = (r cos θ, ±r sin θ) / 2;
* ``oscillators``: damped oscillators x(t) = A e^{−γt} cos(ωt + φ) seen in phase space,
  (x, ẋ/ω).

Every series lives on one grid of ``num_times`` times over [0, ``t_end``]. Inside the
observation window [0, ``window``·t_end] each grid time is observed with probability
``observed_fraction`` (Gaussian noise of std ``noise`` added), so the gaps between
observations are irregular and differ between series; the window's other grid times are held
out for interpolation, and every grid time after the window is an extrapolation target.

Batches are ``(values (B, T, 2), times (B, T), observed (B, T), held_out (B, T),
future (B, T))``: ``values`` are the noisy observations where ``observed`` and the
noise-free truth elsewhere; the masks are float {0, 1}; ``times`` is the same grid in every
row.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from mlnotes_zoo.constraints import (
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Probability,
    Seed,
)
from mlnotes_zoo.data.base import DataModule

__all__ = ["IrregularSeriesDataModule", "make_series", "SERIES_KINDS"]

SERIES_KINDS = ("spirals", "oscillators", "both")


def _uniform(num: int, low: float, high: float, g: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(num, 1, generator=g, dtype=torch.float64)


def make_series(kind: str, num: int, times: Tensor, generator: torch.Generator) -> Tensor:
    """Noise-free trajectories of ``kind`` at ``times`` (T,): (num, T, 2) float64."""
    t = times.to(torch.float64)[None, :]  # (1, T)
    if kind == "spirals":
        a, b = _uniform(num, 0.5, 1.0, generator), _uniform(num, 0.1, 0.2, generator)
        theta0, omega = _uniform(num, 0, 2 * math.pi, generator), _uniform(num, 0.8, 1.2, generator)
        sign = torch.randint(0, 2, (num, 1), generator=generator).double() * 2 - 1  # cw / ccw
        theta = theta0 + omega * t  # (num, T)
        r = a + b * (theta - theta0)
        return torch.stack([r * torch.cos(theta), sign * r * torch.sin(theta)], dim=-1) / 2
    if kind == "oscillators":
        amp, gamma = _uniform(num, 0.5, 1.5, generator), _uniform(num, 0.05, 0.2, generator)
        omega, phase = _uniform(num, 0.8, 1.5, generator), _uniform(num, 0, 2 * math.pi, generator)
        decay = amp * torch.exp(-gamma * t)
        x = decay * torch.cos(omega * t + phase)
        # ẋ = −A e^{−γt} (γ cos(ωt + φ) + ω sin(ωt + φ))
        angle = omega * t + phase
        velocity = -decay * (gamma * torch.cos(angle) + omega * torch.sin(angle))
        return torch.stack([x, velocity / omega], dim=-1)
    if kind == "both":
        half = num // 2
        kinds = torch.cat([make_series("spirals", half, times, generator),
                           make_series("oscillators", num - half, times, generator)])
        return kinds[torch.randperm(num, generator=generator)]
    raise ValueError(f"unknown kind {kind!r}; pick one of {', '.join(SERIES_KINDS)}")


class IrregularSeriesDataModule(DataModule):
    """Irregularly observed spirals and damped oscillators, fixed seeded splits.

    Args:
        kind: ``spirals``, ``oscillators`` or ``both`` (half each, shuffled).
        num_times: grid times over [0, t_end].
        t_end: the end of the time axis.
        window: share of [0, t_end] the encoder sees (the rest is extrapolation).
        observed_fraction: chance that a grid time inside the window is observed.
        noise: std of the Gaussian noise on the observations.
        train_size, val_size, test_size: series in each split.
        batch_size, num_workers: see :class:`~mlnotes_zoo.data.base.DataModule`.
        seed: seed of the training series; split_seed: of the validation (split_seed) and
            test (split_seed + 1) series.
    """

    obs_dim = 2

    def __init__(
        self,
        *,
        kind: Literal["spirals", "oscillators", "both"] = "both",
        num_times: PositiveInt = 100,
        t_end: PositiveFloat = 10.0,
        window: Fraction = 0.5,
        observed_fraction: Probability = 0.5,
        noise: NonNegativeFloat = 0.02,
        train_size: PositiveInt = 1000,
        val_size: PositiveInt = 200,
        test_size: PositiveInt = 500,
        batch_size: PositiveInt = 50,
        seed: Seed = 0,
        split_seed: Seed = 1234,
        num_workers: NonNegativeInt = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        if num_times < 2:
            raise ValueError(f"num_times must be >= 2, got {num_times}")
        self.kind = kind
        self.num_times = num_times
        self.t_end = t_end
        self.window = window
        self.observed_fraction = observed_fraction
        self.noise = noise
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.seed = seed
        self.split_seed = split_seed

    @property
    def times(self) -> Tensor:
        return torch.linspace(0, self.t_end, self.num_times)

    @property
    def window_end(self) -> float:
        return self.window * self.t_end

    def make_split(self, num: int, seed: int) -> TensorDataset:
        """``num`` series and their masks, a deterministic function of ``seed``."""
        g = torch.Generator().manual_seed(seed)
        times = self.times
        truth = make_series(self.kind, num, times, g)  # (num, T, 2)
        inside = (times <= self.window_end)[None, :].expand(num, -1)  # (num, T)
        observed = inside & (torch.rand(num, self.num_times, generator=g) < self.observed_fraction)
        noisy = truth + self.noise * torch.randn(truth.shape, generator=g, dtype=truth.dtype)
        values = torch.where(observed[..., None], noisy, truth).float()
        return TensorDataset(values, times.expand(num, -1).clone(), observed.float(),
                             (inside & ~observed).float(), (~inside).float())

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        seeds = {"train": self.seed, "val": self.split_seed, "test": self.split_seed + 1}
        for split, size in self.sizes.items():
            self.splits[split] = self.make_split(size, seeds[split])
