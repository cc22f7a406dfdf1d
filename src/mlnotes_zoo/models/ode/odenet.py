"""ODE-Net (Chen et al. 2018, §7.1): a classifier whose middle is an ODE block instead of a
stack of residual blocks, and the equal-size ResNet it is compared with.

Notes ``004`` ("Neural ordinary differential equations"): a residual block h + f(h, θ_k) is
one Euler step of dh/dt = f(h, t, θ); give the layers the time as an input ([h, t], θ) and
the stack becomes an ODE that any solver can integrate, with as many function evaluations
as the input needs. Here ``block="resnet"`` is that single Euler step (h + f(0, h), the same
parameters), ``block="ode"`` integrates dh/dt = f(t, h) from 0 to ``integration_time``.

Reads top-down: the time-conditioned convolution, the dynamics, :class:`ODENet`, then the
objective.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlnotes_zoo.constraints import PositiveFloat, PositiveInt
from mlnotes_zoo.models.ode.solve import (
    CountedDynamics,
    Solver,
    SolverOptions,
    Tolerance,
    solve,
)
from mlnotes_zoo.models.shared import check_tensor
from mlnotes_zoo.registry import register_model

__all__ = ["ConcatConv2d", "ConvDynamics", "ODENet", "classification_loss"]


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: an example's output must not depend on its batch (and the
    # solver evaluates f at states that are no training batch).
    return nn.GroupNorm(min(8, channels), channels)


class ConcatConv2d(nn.Module):
    """3×3 convolution of [h, t]: the time is one more input channel (Chen et al.'s
    ``ConcatConv2d``), so the layer knows where on [0, T] it is."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 1, out_channels, 3, padding=1)

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        time = t.to(h).expand(h.shape[0], 1, *h.shape[2:])  # (B, 1, H, W)
        return self.conv(torch.cat([time, h], dim=1))


class ConvDynamics(nn.Module):
    """f(t, h) = norm(conv_t(silu(norm(conv_t(silu(norm(h))))))), h (B, C, H, W).

    SiLU where Chen et al. have ReLU: the adjoint's backward solve needs a smooth f. With
    ReLU's kinks, adjoint and back-propagated gradients of this network (largest 5) still
    differed by 1.2e-3 at rtol = atol = 1e-9 after 95,000 evaluations; with SiLU by 1e-8
    after 450 (tests/models/test_ode.py checks the agreement).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = _norm(channels), _norm(channels), _norm(channels)
        self.conv1 = ConcatConv2d(channels, channels)
        self.conv2 = ConcatConv2d(channels, channels)

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        out = self.conv1(t, F.silu(self.norm1(h)))
        out = self.conv2(t, F.silu(self.norm2(out)))
        return self.norm3(out)


@register_model("odenet")
class ODENet(nn.Module):
    """Images (B, C, H, W) -> class logits (B, num_classes): conv down-sampling to
    (channels, H/2, W/2), an ODE block (or one residual block), then norm, ReLU, global
    average pooling and a linear head.

    Args:
        in_shape: (C, H, W) of the images (H, W even).
        num_classes: classes of the head.
        channels: width of the feature maps the ODE block evolves.
        block: ``"ode"`` integrates dh/dt = f(t, h) over [0, integration_time];
            ``"resnet"`` is h + f(0, h), the residual block with the same parameters.
        solver, rtol, atol, adjoint, step_size: how the ODE block is integrated
            (:class:`~mlnotes_zoo.models.ode.solve.SolverOptions`).
        integration_time: T, the end of the integration interval.
    """

    def __init__(
        self,
        *,
        in_shape: tuple[PositiveInt, PositiveInt, PositiveInt] = (1, 8, 8),
        num_classes: PositiveInt = 10,
        channels: PositiveInt = 32,
        block: Literal["ode", "resnet"] = "ode",
        solver: Solver = "dopri5",
        rtol: Tolerance = 1e-3,
        atol: Tolerance = 1e-3,
        adjoint: bool = False,
        step_size: PositiveFloat | None = None,
        integration_time: PositiveFloat = 1.0,
    ) -> None:
        super().__init__()
        in_shape = tuple(in_shape)
        if in_shape[1] % 2 or in_shape[2] % 2:
            raise ValueError(f"ODENet needs even H and W, got in_shape={in_shape}")
        self.in_shape = in_shape
        self.num_classes = num_classes
        self.block = block
        self.solver_options = SolverOptions(solver, rtol, atol, adjoint, step_size)
        self.integration_time = integration_time
        self.downsample = nn.Sequential(
            nn.Conv2d(in_shape[0], channels, 3, padding=1),  # (B, C', H, W)
            _norm(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 4, stride=2, padding=1),  # (B, C', H/2, W/2)
        )
        self.dynamics = CountedDynamics(ConvDynamics(channels))
        self.head = nn.Sequential(_norm(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(channels, num_classes))

    @property
    def nfe(self) -> int:
        """Evaluations of f so far (forward solves, and adjoint solves in backward)."""
        return self.dynamics.nfe

    def features(self, h: Tensor) -> Tensor:
        """The ODE block: h(T) for h(0) = h, (B, C', H/2, W/2)."""
        if self.block == "resnet":
            return h + self.dynamics(torch.zeros((), device=h.device), h)  # one Euler step, Δt = 1
        times = torch.tensor([0.0, self.integration_time])
        return solve(self.dynamics, h, times, self.solver_options)[-1]

    def forward(self, x: Tensor) -> Tensor:
        check_tensor(x, "x", ("B", *self.in_shape), where="ODENet.forward")
        return self.head(self.features(self.downsample(x)))

    def example_input(self, batch_size: int = 2) -> Tensor:
        return torch.rand(batch_size, *self.in_shape)


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy −log softmax(logits)_y per example, (B,)."""
    return F.cross_entropy(logits, labels, reduction="none")
