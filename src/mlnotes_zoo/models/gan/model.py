"""Generative adversarial networks: DCGAN (Radford et al. 2016) and WGAN-GP (Gulrajani et al.
2017), with their objectives.

Reads top-down: the up/down conv stages, :class:`Generator`, :class:`Discriminator`, the
wrapper :class:`GAN` that the registry builds as ``dcgan`` and ``wgan_gp``, then the
objective. The notes (``shared/notes/003`` "Generative Adversarial Networks") describe the
game: the generator maps simple noise z ~ N(0, I) to data-like images to fool a
discriminator that tells real from fake; ``shared/notes/004`` "Transposed convolution" the
learnable up-sampling the generator is built from. The networks return outputs; the
functions at the end turn them into the non-saturating and Wasserstein losses and the
gradient penalty (D is the discriminator, a logit of P(real), or the critic, an unbounded
score; x real, x̃ = G(z) generated; Goodfellow et al. 2014, §3 and the non-saturating
heuristic, Arjovsky et al. 2017, Gulrajani et al. 2017, Algorithm 1):

    DCGAN  L_D = −log σ(D(x)) − log(1 − σ(D(x̃)))       L_G = −log σ(D(x̃))
    WGAN   L_D = D(x̃) − D(x) + λ·(‖∇_x̂ D(x̂)‖₂ − 1)²     L_G = −D(x̃)
           x̂ = ε·x + (1 − ε)·x̃,  ε ~ U[0, 1] per example

All losses are batch means (scalars); ``gradient_penalty`` returns the mean over examples.

Images are in [0, 1] like the data modules deliver them: the generator ends in a sigmoid
(= (tanh(2a) + 1) / 2, DCGAN's tanh output rescaled), so real and generated images share
one range with no conversion anywhere.

Each stage halves (D) or doubles (G) the side, rounding down: an even side n <-> n/2 with a
4×4 kernel, padding 1; an odd side 2m+1 <-> m with a 3×3 kernel, padding 0 (labml-nn's MNIST
DCGAN: 28 -> 14 -> 7 -> 3). So ``in_shape=(1, 28, 28), latent_dim=100, gen_width=256,
disc_width=256, num_stages=3`` is that network layer for layer.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlnotes_zoo.constraints import Field, PositiveInt
from mlnotes_zoo.models.shared import check_tensor
from mlnotes_zoo.registry import register_model

OBJECTIVE = ["discriminator_loss", "non_saturating_generator_loss", "critic_loss",
             "wasserstein_generator_loss", "interpolate", "gradient_penalty"]
__all__ = ["GAN", "GANOutput", "Generator", "Discriminator", "UpBlock", "DownBlock", "dcgan",
           "wgan_gp", *OBJECTIVE]

def _halving_kernel(side: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """Kernel and padding of a stride-2 (transposed) conv between ``side`` and ``side // 2``."""
    # (n + 2·1 − 4) / 2 + 1 = n/2 for even n; (2m + 1 − 3) / 2 + 1 = m for odd n = 2m + 1,
    # and the transposed conv inverts each: (m − 1)·2 − 2 + 4 = 2m, (m − 1)·2 + 3 = 2m + 1.
    return {"kernel_size": tuple(4 if n % 2 == 0 else 3 for n in side),
            "padding": tuple(1 if n % 2 == 0 else 0 for n in side)}


def _norm(kind: str, channels: int) -> nn.Module:
    # "layer": GroupNorm with one group normalises each example over (C, H, W), i.e. a
    # LayerNorm. A WGAN-GP critic must not use BatchNorm: the gradient penalty is defined
    # per example, and BatchNorm couples the examples of a batch (Gulrajani et al., §4).
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


class UpBlock(nn.Module):
    """Transposed 4×4 conv, stride 2 (doubles H and W), then norm and ReLU (DCGAN generator).

    ``kernel_size=3, padding=0`` makes H -> 2H + 1 instead (see :func:`_halving_kernel`).
    """

    def __init__(self, *, in_channels: int, out_channels: int, norm: str = "batch",
                 kernel_size: int | tuple[int, int] = 4, padding: int | tuple[int, int] = 1
                 ) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride=2,
                                       padding=padding, bias=norm == "none")
        self.norm = _norm(norm, out_channels)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))  # (B, out, 2H, 2W)


class DownBlock(nn.Module):
    """Strided 4×4 conv (halves H and W), then norm and LeakyReLU(0.2) (DCGAN discriminator).

    ``kernel_size=3, padding=0`` makes 2H + 1 -> H instead (see :func:`_halving_kernel`).
    """

    def __init__(self, *, in_channels: int, out_channels: int, norm: str = "batch",
                 kernel_size: int | tuple[int, int] = 4, padding: int | tuple[int, int] = 1
                 ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=2, padding=padding,
                              bias=norm == "none")
        self.norm = _norm(norm, out_channels)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))  # (B, out, H/2, W/2)


class Generator(nn.Module):
    """z (B, L) -> images (B, C, H, W) in [0, 1].

    A linear layer makes a (width·2^(S−1), H/2^S, W/2^S) map (DCGAN's transposed conv of the
    1×1 z, written as the matmul it is); S − 1 :class:`UpBlock` stages halve the channels and
    double the side; as in DCGAN the S-th up-sampling conv emits the C image channels itself,
    with no norm (Radford et al. 2016, §3), so no layer runs at full resolution with ``width``
    channels.
    """

    def __init__(self, *, in_shape: tuple[int, int, int], latent_dim: int, width: int,
                 num_stages: int, norm: str = "batch") -> None:
        super().__init__()
        c, h, w = in_shape
        sides = [(h >> i, w >> i) for i in range(num_stages + 1)]  # H, H/2, ..., H/2^S
        channels = [width * 2 ** (num_stages - 1 - i) for i in range(num_stages)]
        self.seed_shape = (channels[0], *sides[-1])
        self.project = nn.Sequential(
            nn.Linear(latent_dim, channels[0] * sides[-1][0] * sides[-1][1],
                      bias=norm == "none"),
            nn.Unflatten(1, self.seed_shape),  # (B, 2^(S-1)·width, H/2^S, W/2^S)
            _norm(norm, channels[0]),
            nn.ReLU(),
        )
        self.stages = nn.Sequential(*[
            UpBlock(in_channels=channels[i], out_channels=channels[i + 1], norm=norm,
                    **_halving_kernel(sides[num_stages - 1 - i]))
            for i in range(num_stages - 1)
        ])  # (B, width, H/2, W/2)
        self.to_image = nn.ConvTranspose2d(width, c, stride=2, **_halving_kernel(sides[0]))

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.to_image(self.stages(self.project(z))))


class Discriminator(nn.Module):
    """Images (B, C, H, W) -> one logit (DCGAN) or critic value (WGAN) per image, (B,).

    S :class:`DownBlock` stages (the first without norm, as in DCGAN) double the channels and
    halve the side; a linear layer reads the final map.
    """

    def __init__(self, *, in_shape: tuple[int, int, int], width: int, num_stages: int,
                 norm: str = "batch") -> None:
        super().__init__()
        c, h, w = in_shape
        channels = [c] + [width * 2**i for i in range(num_stages)]
        self.stages = nn.Sequential(*[
            DownBlock(in_channels=channels[i], out_channels=channels[i + 1],
                      norm="none" if i == 0 else norm, **_halving_kernel((h >> i, w >> i)))
            for i in range(num_stages)
        ])  # (B, width·2^(S-1), H/2^S, W/2^S)
        # = DCGAN's last conv, whose kernel covers the whole final map
        self.head = nn.Linear(channels[-1] * (h >> num_stages) * (w >> num_stages), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(x).flatten(1)).squeeze(-1)


class GANOutput(NamedTuple):
    images: Tensor  # G(z), (B, C, H, W) in [0, 1]
    logits: Tensor  # D(G(z)), (B,)


class GAN(nn.Module):
    """A generator G and a discriminator/critic D; ``forward(z)`` returns G(z) and D(G(z)).

    Training alternates updates of D and G (``lit/gan.py``), so the two halves are
    reachable as ``net.generator`` and ``net.discriminator``; the forward exists for the
    registry contract (every parameter reaches an output) and for benchmarks.

    Args:
        in_shape: (C, H, W) of the images; H and W at least 2^num_stages (any size: each
            stage halves the side rounding down, e.g. 28 -> 14 -> 7 -> 3).
        latent_dim: L, the size of z ~ N(0, I).
        gen_width, disc_width: channels of the last generator / first discriminator stage;
            each other stage doubles them.
        num_stages: up-sampling stages in G = down-sampling stages in D.
        gen_norm: ``"batch"`` | ``"layer"`` | ``"none"`` after each generator stage.
        disc_norm: the same for the discriminator stages after the first (``"layer"`` or
            ``"none"`` for a WGAN-GP critic).
        generator, discriminator: pass your own modules to replace the built-in ones.
    """

    repeated_blocks: ClassVar[tuple[type[nn.Module], ...]] = (UpBlock, DownBlock)

    def __init__(
        self,
        *,
        in_shape: tuple[PositiveInt, PositiveInt, PositiveInt] = (1, 8, 8),
        latent_dim: PositiveInt = 64,
        gen_width: PositiveInt = 64,
        disc_width: PositiveInt = 64,
        num_stages: PositiveInt = 2,
        gen_norm: Literal["batch", "layer", "none"] = "batch",
        disc_norm: Literal["batch", "layer", "none"] = "batch",
        generator: nn.Module | None = None,
        discriminator: nn.Module | None = None,
    ) -> None:
        super().__init__()
        in_shape = tuple(in_shape)
        if min(in_shape[1:]) < 2**num_stages:
            raise ValueError(f"num_stages={num_stages} needs H and W >= 2**num_stages "
                             f"(each stage halves them), got in_shape={in_shape}")
        self.in_shape = in_shape
        self.latent_dim = latent_dim
        self.generator = generator if generator is not None else Generator(
            in_shape=in_shape, latent_dim=latent_dim, width=gen_width, num_stages=num_stages,
            norm=gen_norm)
        self.discriminator = discriminator if discriminator is not None else Discriminator(
            in_shape=in_shape, width=disc_width, num_stages=num_stages, norm=disc_norm)

    def forward(self, z: Tensor) -> GANOutput:
        check_tensor(z, "z", ("B", self.latent_dim), where="GAN.forward")
        images = self.generator(z)
        return GANOutput(images, self.discriminator(images))

    def noise(self, num_samples: int, *, generator: torch.Generator | None = None) -> Tensor:
        """z ~ N(0, I): (num_samples, L) on the network's device."""
        device = next(self.parameters()).device
        return torch.randn(num_samples, self.latent_dim, device=device, generator=generator)

    def example_input(self, batch_size: int = 2) -> Tensor:
        """A batch of noise vectors z for tests and benchmarks."""
        return torch.randn(batch_size, self.latent_dim)

    @torch.no_grad()
    def sample(self, num_samples: int, *, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> Tensor:
        """Images G(z), z ~ N(0, temperature²·I): (num_samples, C, H, W) in [0, 1]."""
        return self.generator(temperature * self.noise(num_samples, generator=generator))


@register_model("dcgan")
def dcgan(
    *,
    in_shape: tuple[PositiveInt, PositiveInt, PositiveInt] = (1, 8, 8),
    latent_dim: PositiveInt = 64,
    gen_width: PositiveInt = 64,
    disc_width: PositiveInt = 64,
    num_stages: PositiveInt = 2,
    gen_norm: Literal["batch", "layer", "none"] = "batch",
    disc_norm: Literal["batch", "layer", "none"] = "batch",
) -> GAN:
    """DCGAN: BatchNorm in both networks, D outputs a logit of P(real)."""
    return GAN(in_shape=in_shape, latent_dim=latent_dim, gen_width=gen_width,
               disc_width=disc_width, num_stages=num_stages, gen_norm=gen_norm,
               disc_norm=disc_norm)


@register_model("wgan_gp")
def wgan_gp(
    *,
    in_shape: tuple[PositiveInt, PositiveInt, PositiveInt] = (1, 8, 8),
    latent_dim: PositiveInt = 64,
    gen_width: PositiveInt = 64,
    disc_width: PositiveInt = 64,
    num_stages: PositiveInt = 2,
    gen_norm: Literal["batch", "layer", "none"] = "batch",
    disc_norm: Annotated[Literal["layer", "none"], Field(description=(
        "not 'batch': BatchNorm mixes the examples of a batch, so the per-example gradient "
        "penalty would be wrong"))] = "layer",
) -> GAN:
    """WGAN-GP: the same generator; a critic with per-example (layer) norm, no sigmoid."""
    return GAN(in_shape=in_shape, latent_dim=latent_dim, gen_width=gen_width,
               disc_width=disc_width, num_stages=num_stages, gen_norm=gen_norm,
               disc_norm=disc_norm)


# -- the objective: non-saturating and Wasserstein losses, gradient penalty ----------
def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Binary cross-entropy of D: real labelled 1, generated labelled 0."""
    # −log σ(D(x)) − log(1 − σ(D(x̃)));  log(1 − σ(a)) = log σ(−a)
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def non_saturating_generator_loss(fake_logits: Tensor) -> Tensor:
    """L_G = −log σ(D(G(z))): strong gradients early on, when D rejects the fakes easily.

    The minimax form log(1 − σ(D(G(z)))) saturates exactly then (Goodfellow et al. 2014, §3).
    """
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def critic_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """L_D = E[D(x̃)] − E[D(x)]: minus the critic's estimate of the Wasserstein-1 distance."""
    return fake_scores.mean() - real_scores.mean()


def wasserstein_generator_loss(fake_scores: Tensor) -> Tensor:
    """L_G = −E[D(G(z))]."""
    return -fake_scores.mean()


def interpolate(real: Tensor, fake: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """x̂ = ε·x + (1 − ε)·x̃ with one ε ~ U[0, 1] per example: points between the two sets."""
    eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device,
                     dtype=real.dtype, generator=generator)
    return eps * real + (1 - eps) * fake


def gradient_penalty(critic: nn.Module, interpolates: Tensor) -> Tensor:
    """E[(‖∇_x̂ D(x̂)‖₂ − 1)²] over the examples x̂ (Gulrajani et al. 2017, eq. 3).

    The gradient is taken with ``create_graph=True`` so that the penalty itself is
    differentiable in the critic's parameters. Multiply by λ (10 in the paper) outside.
    """
    interpolates = interpolates.detach().requires_grad_(True)
    scores = critic(interpolates)  # (B,)
    # Σ_i D(x̂_i) has ∂/∂x̂_i = ∇D(x̂_i) when the critic treats examples independently
    (grads,) = torch.autograd.grad(scores.sum(), interpolates, create_graph=True)
    norms = grads.flatten(1).norm(2, dim=1)  # ‖∇_x̂ D(x̂)‖₂ per example, (B,)
    return (norms - 1).pow(2).mean()
