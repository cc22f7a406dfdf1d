"""Normalizing flows for images: RealNVP (Dinh et al. 2017) and Glow (Kingma & Dhariwal 2018),
their objective, and the Gaussian baseline a flow has to beat.

A flow is an invertible map z = f(x) = f_K ∘ … ∘ f_1(x) onto a standard normal z, so the
density of x is exact by the change of variables (``shared/notes/004`` "Normalizing flow";
Dinh et al. 2017, eq. 3):

    log p(x) = log N(f(x); 0, I) + Σ_k log |det ∂f_k/∂z_{k−1}|,      z_0 = x, z_K = z

Reads top-down: the per-layer bijections (logit preprocessing, ActNorm, the LU 1×1
convolution, one Glow step), the multi-scale container, :class:`RealNVP` and :class:`Glow`,
then the objective and the baseline. Squeeze and the affine coupling are in
:mod:`.coupling`. Every layer maps ``x -> (y, log_det)`` with ``log_det`` of shape (B,) and
has ``inverse(y) -> x``. The networks take dequantized images in [0, 1]
(:func:`uniform_dequantize`) and return ``FlowOutput(z (B, D), log_det (B,))``;
:func:`flow_nll` turns those into the negative log-likelihood and bits/dim.

Pixels are discrete (K levels: 17 for the digits, 256 for 8-bit images), so a density on
them is degenerate. Uniform dequantization (Theis et al. 2016) models y = (k + u)/K,
u ~ U[0, 1)^D, instead; for the discrete image k,

    log P(k) ≥ E_u[log p(y)] − D·log K,

so −(log p(y) − D log K) / (D log 2) is an upper bound on the discrete bits/dim, the number
papers report. The objective's functions return one value per example (shape ``(B,)``)
unless noted. The baseline, a full-covariance Gaussian fitted by maximum likelihood to the
same dequantized training images, is scored with the same bound, so the two are comparable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Annotated, ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import MultivariateNormal

from mlnotes_zoo.constraints import Field, PositiveInt
from mlnotes_zoo.models.flows.coupling import AffineCoupling, Squeeze
from mlnotes_zoo.models.shared import check_tensor
from mlnotes_zoo.registry import register_model

OBJECTIVE = ["flow_log_likelihood", "uniform_dequantize", "bits_per_dim", "flow_nll"]
__all__ = ["FlowOutput", "Preprocess", "ActNorm", "InvertibleConv1x1", "GlowStep",
           "MultiScaleFlow", "RealNVP", "Glow", *OBJECTIVE, "standard_normal_log_prob",
           "quantize", "discrete_log_likelihood", "fit_gaussian", "gaussian_bits_per_dim"]

# α of the logit preprocessing x = logit(α + (1 − 2α)·y)
LogitAlpha = Annotated[float, Field(gt=0, lt=0.5, description="α of the logit preprocessing")]

class Preprocess(nn.Module):
    """[0, 1] pixels -> the flow's input space.

    ``"logit"`` (RealNVP §4.1): x = logit(α + (1 − 2α)·y), which unbounds the pixels;
    log|det| = Σ [log(1 − 2α) − log u − log(1 − u)], u = α + (1 − 2α)·y.
    ``"center"`` (Glow): x = y − ½, log|det| = 0.
    """

    def __init__(self, *, kind: Literal["logit", "center"] = "logit",
                 alpha: LogitAlpha = 0.05) -> None:
        super().__init__()
        self.kind, self.alpha = kind, alpha

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        if self.kind == "center":
            return y - 0.5, y.new_zeros(y.shape[0])
        u = self.alpha + (1 - 2 * self.alpha) * y
        x = torch.log(u) - torch.log1p(-u)
        log_det = math.log(1 - 2 * self.alpha) - torch.log(u) - torch.log1p(-u)
        return x, log_det.flatten(1).sum(1)

    def inverse(self, x: Tensor) -> Tensor:
        if self.kind == "center":
            return x + 0.5
        return (torch.sigmoid(x) - self.alpha) / (1 - 2 * self.alpha)


class ActNorm(nn.Module):
    """Per-channel affine y = (x + b)·exp(s) (Glow §3.1), log|det| = H·W·Σ_c s_c.

    Data-dependent init: the first forward in training mode sets b and s so that this batch
    comes out with zero mean and unit variance per channel; afterwards b, s are ordinary
    parameters. The ``initialized`` buffer travels with checkpoints.
    """

    def __init__(self, *, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + 1e-6))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and not self.initialized:
            self.initialize(x)
        y = (x + self.bias) * torch.exp(self.log_scale)
        log_det = x.shape[2] * x.shape[3] * self.log_scale.sum()
        return y, log_det.expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale) - self.bias


class InvertibleConv1x1(nn.Module):
    """Invertible 1×1 convolution in LU form (Glow §3.2): W = P·L·(U + diag(sign·exp(log_s))).

    P is a fixed permutation, L unit lower triangular, U strictly upper triangular, so
    log|det ∂y/∂x| = H·W·Σ log_s costs O(C) instead of O(C³). Initialised from a random
    rotation, as in the paper.
    """

    def __init__(self, *, channels: int) -> None:
        super().__init__()
        rotation = torch.linalg.qr(torch.randn(channels, channels))[0]
        permutation, lower, upper = torch.linalg.lu(rotation)
        diag = torch.diagonal(upper)
        self.register_buffer("permutation", permutation)
        self.register_buffer("sign_s", torch.sign(diag))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(diag.abs()))

    def weight(self) -> Tensor:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.permutation @ lower @ upper  # (C, C)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = F.conv2d(x, self.weight()[:, :, None, None])
        # log|det| of a 1×1 conv = H·W·log|det W| = H·W·Σ log_s (det P = ±1, det L = 1)
        log_det = x.shape[2] * x.shape[3] * self.log_s.sum()
        return y, log_det.expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return F.conv2d(y, torch.linalg.inv(self.weight())[:, :, None, None])


class GlowStep(nn.Module):
    """One step of flow (Glow fig. 2a): ActNorm -> invertible 1×1 conv -> affine coupling."""

    def __init__(self, *, channels: int, hidden: int) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels=channels)
        self.conv = InvertibleConv1x1(channels=channels)
        self.coupling = AffineCoupling(channels=channels, hidden=hidden, mask="channel",
                                       scale_map="sigmoid")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x, log_det_actnorm = self.actnorm(x)
        x, log_det_conv = self.conv(x)
        x, log_det_coupling = self.coupling(x)
        return x, log_det_actnorm + log_det_conv + log_det_coupling

    def inverse(self, y: Tensor) -> Tensor:
        return self.actnorm.inverse(self.conv.inverse(self.coupling.inverse(y)))


class FlowOutput(NamedTuple):
    z: Tensor  # (B, D) all latents, factored-out ones first, flattened
    log_det: Tensor  # (B,) Σ_k log|det ∂f_k/∂z_{k−1}|, preprocessing included


class MultiScaleFlow(nn.Module):
    """Levels of invertible layers with half the channels factored out after each level
    but the last (RealNVP §3.6): deeper levels work on fewer, coarser variables.

    Subclasses fill ``self.levels`` (one ``nn.ModuleList`` of layers per level) and
    ``self.preprocess``; this class runs them, keeps the factored-out shapes and gives
    ``forward``, ``inverse``, ``log_prob`` and ``sample``.
    """

    in_shape: tuple[int, int, int]
    levels: nn.ModuleList
    preprocess: Preprocess

    def _record_shapes(self) -> None:
        """Shapes of the latents each level hands out, from a dry run on a zero input."""
        with torch.no_grad():
            x = torch.zeros(1, *self.in_shape)
            shapes = []
            for i, level in enumerate(self.levels):
                for layer in level:
                    x = _shape_only(layer, x)
                if i < len(self.levels) - 1:
                    shapes.append(tuple(x[:, : x.shape[1] // 2].shape[1:]))
                    x = x[:, x.shape[1] // 2 :]
            shapes.append(tuple(x.shape[1:]))
        self.latent_shapes = shapes
        self.latent_dim = sum(math.prod(s) for s in shapes)

    def forward(self, x: Tensor) -> FlowOutput:
        """x: dequantized images (B, C, H, W) in [0, 1] -> ``FlowOutput(z, log_det)``."""
        check_tensor(x, "x", ("B", *self.in_shape), where=f"{type(self).__name__}.forward")
        h, log_det = self.preprocess(x)
        latents = []
        for i, level in enumerate(self.levels):
            for layer in level:
                h, layer_log_det = layer(h)
                log_det = log_det + layer_log_det
            if i < len(self.levels) - 1:
                # factor out half the channels: they go straight to the prior
                half = h.shape[1] // 2
                latents.append(h[:, :half].flatten(1))
                h = h[:, half:]
        latents.append(h.flatten(1))
        return FlowOutput(torch.cat(latents, dim=1), log_det)

    def inverse(self, z: Tensor) -> Tensor:
        """z (B, D) -> images (B, C, H, W) in [0, 1] (before quantization)."""
        sizes = [math.prod(s) for s in self.latent_shapes]
        parts = [p.unflatten(1, s) for p, s in zip(z.split(sizes, dim=1), self.latent_shapes,
                                                    strict=True)]
        h = parts[-1]
        for i in range(len(self.levels) - 1, -1, -1):
            if i < len(self.levels) - 1:
                h = torch.cat([parts[i], h], dim=1)
            for layer in reversed(self.levels[i]):
                h = layer.inverse(h)
        return self.preprocess.inverse(h)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) in nats per example (B,): log N(f(x); 0, I) + Σ_k log|det ∂f_k/∂z_{k−1}|."""
        z, log_det = self(x)
        return standard_normal_log_prob(z) + log_det

    def example_input(self, batch_size: int = 2) -> Tensor:
        """A batch of dequantized images in [0, 1) for tests and benchmarks."""
        return torch.rand(batch_size, *self.in_shape)

    @torch.no_grad()
    def sample(self, num_samples: int, *, temperature: float = 1.0) -> Tensor:
        """Images x = f⁻¹(z), z ~ N(0, temperature²·I), clamped to [0, 1]: (N, C, H, W).

        Temperature < 1 trades diversity for cleaner samples (Glow §5, "reduced temperature").
        """
        device = next(self.parameters()).device
        z = temperature * torch.randn(num_samples, self.latent_dim, device=device)
        return self.inverse(z).clamp(0, 1)


def _shape_only(layer: nn.Module, x: Tensor) -> Tensor:
    """Only squeezes change shapes; skipping the rest keeps ActNorm uninitialised."""
    return layer(x)[0] if isinstance(layer, Squeeze) else x


def _check_shape(in_shape: tuple[int, ...], num_squeezes: int) -> tuple[int, int, int]:
    in_shape = tuple(int(s) for s in in_shape)
    step = 2**num_squeezes
    if in_shape[1] % step or in_shape[2] % step:
        raise ValueError(
            f"H and W must be divisible by 2^{num_squeezes} = {step} for {num_squeezes} "
            f"squeezes, got in_shape={in_shape}"
        )
    return in_shape  # type: ignore[return-value]


@register_model("realnvp")
class RealNVP(MultiScaleFlow):
    """RealNVP (Dinh et al. 2017, §3.6): affine couplings with checkerboard and channel masks.

    Each scale but the last: ``num_couplings`` checkerboard couplings, squeeze,
    ``num_couplings`` channel couplings, then half the channels are factored out. The last
    scale: ``num_couplings + 1`` checkerboard couplings. Masks alternate parity so every
    variable is transformed.

    Args:
        in_shape: (C, H, W); H and W divisible by 2^(num_scales − 1).
        num_scales: scales of the multi-scale architecture.
        num_couplings: couplings per mask type per scale.
        hidden: channels of each coupling's conditioner network.
        preprocess: ``"logit"`` (the paper's) or ``"center"``.
        logit_alpha: α of the logit preprocessing.
    """

    repeated_blocks: ClassVar[tuple[type[nn.Module], ...]] = (AffineCoupling,)

    def __init__(
        self,
        *,
        in_shape: tuple[PositiveInt, PositiveInt, PositiveInt] = (1, 8, 8),
        num_scales: PositiveInt = 2,
        num_couplings: PositiveInt = 3,
        hidden: PositiveInt = 64,
        preprocess: Literal["logit", "center"] = "logit",
        logit_alpha: LogitAlpha = 0.05,
    ) -> None:
        super().__init__()
        self.in_shape = _check_shape(in_shape, num_scales - 1)
        self.preprocess = Preprocess(kind=preprocess, alpha=logit_alpha)
        channels = self.in_shape[0]
        levels = []
        for scale in range(num_scales):
            last = scale == num_scales - 1
            layers: list[nn.Module] = [
                AffineCoupling(channels=channels, hidden=hidden, mask="checkerboard", parity=k % 2)
                for k in range(num_couplings + int(last))
            ]
            if not last:
                layers.append(Squeeze())
                channels *= 4
                layers += [
                    AffineCoupling(channels=channels, hidden=hidden, mask="channel", parity=k % 2)
                    for k in range(num_couplings)
                ]
                channels //= 2  # the other half is factored out
            levels.append(nn.ModuleList(layers))
        self.levels = nn.ModuleList(levels)
        self._record_shapes()


@register_model("glow")
class Glow(MultiScaleFlow):
    """Glow (Kingma & Dhariwal 2018, fig. 2b): per level, squeeze then ``depth`` steps of
    ActNorm -> invertible 1×1 conv (LU) -> affine coupling; half the channels are factored
    out after each level but the last.

    Args:
        in_shape: (C, H, W); H and W divisible by 2^num_levels.
        num_levels: L, levels of the multi-scale architecture.
        depth: K, flow steps per level.
        hidden: channels of each coupling's conditioner network.
        preprocess: ``"center"`` (the paper's x − ½) or ``"logit"``.
        logit_alpha: α of the logit preprocessing.
    """

    repeated_blocks: ClassVar[tuple[type[nn.Module], ...]] = (GlowStep,)

    def __init__(
        self,
        *,
        in_shape: tuple[PositiveInt, PositiveInt, PositiveInt] = (1, 8, 8),
        num_levels: PositiveInt = 2,
        depth: PositiveInt = 4,
        hidden: PositiveInt = 64,
        preprocess: Literal["logit", "center"] = "logit",
        logit_alpha: LogitAlpha = 0.05,
    ) -> None:
        super().__init__()
        self.in_shape = _check_shape(in_shape, num_levels)
        self.preprocess = Preprocess(kind=preprocess, alpha=logit_alpha)
        channels = self.in_shape[0]
        levels = []
        for level in range(num_levels):
            channels *= 4
            levels.append(nn.ModuleList(
                [Squeeze()] + [GlowStep(channels=channels, hidden=hidden) for _ in range(depth)]
            ))
            if level < num_levels - 1:
                channels //= 2
        self.levels = nn.ModuleList(levels)
        self._record_shapes()


# -- the objective: exact NLL of dequantized pixels, in nats and bits/dim ---------------
_LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over all but the batch dimension."""
    # log N = −½ Σ_d (z_d² + log 2π)
    return -0.5 * (z.pow(2) + _LOG_2PI).flatten(1).sum(1)


def flow_log_likelihood(z: Tensor, log_det: Tensor) -> Tensor:
    """log p(x) = log N(z; 0, I) + Σ_k log|det ∂f_k/∂z_{k−1}| for z = f(x)."""
    return standard_normal_log_prob(z) + log_det


def quantize(x: Tensor, levels: int) -> Tensor:
    """Pixels in [0, 1] -> their integer level k ∈ {0, …, K − 1} (as floats)."""
    return torch.round(x.clamp(0, 1) * (levels - 1))


def uniform_dequantize(x: Tensor, levels: int, noise: Tensor | None = None) -> Tensor:
    """y = (k + u) / K, u ~ U[0, 1): a continuous point in the pixel's bin, y ∈ [0, 1).

    ``noise`` (same shape as ``x``, in [0, 1)) fixes u, e.g. u = ½ for bin centres.
    """
    u = torch.rand_like(x) if noise is None else noise
    return (quantize(x, levels) + u) / levels


def discrete_log_likelihood(log_density: Tensor, num_dims: int, levels: int) -> Tensor:
    """log P(k) lower bound from the density of the dequantized y: log p(y) − D·log K.

    Each bin has volume 1/K per dimension in y-space, so P(k) = ∫_bin p(y) dy and Jensen's
    inequality over u gives the bound.
    """
    return log_density - num_dims * math.log(levels)


def bits_per_dim(log_likelihood: Tensor, num_dims: int) -> Tensor:
    """bits/dim = −log P(x) / (D · log 2), with log P in nats."""
    return -log_likelihood / (num_dims * math.log(2))


def flow_nll(z: Tensor, log_det: Tensor, *, num_dims: int, levels: int) -> dict[str, Tensor]:
    """Per-example objective of a flow on dequantized pixels.

    Returns ``{"nll": −log P(k) in nats, "bpd": bits/dim, "log_pz": log N(z; 0, I),
    "log_det": Σ log|det|}``, each of shape (B,).
    """
    log_pz = standard_normal_log_prob(z)
    log_density = log_pz + log_det  # change of variables, density of y in [0, 1]^D
    log_prob = discrete_log_likelihood(log_density, num_dims, levels)
    return {"nll": -log_prob, "bpd": bits_per_dim(log_prob, num_dims),
            "log_pz": log_pz, "log_det": log_det}


# -- the baseline: a full-covariance Gaussian on the dequantized pixels -----------------
def fit_gaussian(
    images: Iterable[Tensor], *, levels: int, draws: int = 4, seed: int = 0
) -> MultivariateNormal:
    """ML Gaussian N(μ, Σ) over flattened dequantized images (float64).

    ``images``: batches (B, C, H, W) in [0, 1]; each is dequantized ``draws`` times with a
    seeded generator (more draws average out the uniform noise in μ and Σ).
    """
    generator = torch.Generator().manual_seed(seed)
    count, total, outer = 0, None, None
    for x in images:
        x = x.detach().double().cpu().flatten(1)  # (B, D)
        for _ in range(draws):
            y = uniform_dequantize(x, levels, torch.rand(x.shape, generator=generator,
                                                         dtype=x.dtype))
            total = y.sum(0) if total is None else total + y.sum(0)
            outer = y.T @ y if outer is None else outer + y.T @ y
            count += y.shape[0]
    if count < 2:
        raise ValueError("need at least two images to fit a Gaussian")
    mean = total / count
    cov = outer / count - torch.outer(mean, mean)  # ML estimate: E[yyᵀ] − μμᵀ
    cov = 0.5 * (cov + cov.T) + 1e-9 * torch.eye(len(mean), dtype=cov.dtype)
    return MultivariateNormal(mean, covariance_matrix=cov)


def gaussian_bits_per_dim(gaussian: MultivariateNormal, y: Tensor, *, levels: int) -> Tensor:
    """bits/dim of dequantized images ``y`` (B, C, H, W) under ``gaussian``: (B,)."""
    flat = y.detach().double().cpu().flatten(1)
    log_prob = discrete_log_likelihood(gaussian.log_prob(flat), flat.shape[1], levels)
    return bits_per_dim(log_prob, flat.shape[1]).to(y)
