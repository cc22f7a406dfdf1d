"""Denoising diffusion probabilistic models (Ho et al. 2020) with DDIM sampling (Song et al.
2021), v-prediction (Salimans & Ho 2022) and classifier-free guidance (Ho & Salimans 2021).

The notes (``shared/notes/003`` "Diffusion Models") describe the idea: start from the image,
add noise step by step until nothing of it is left, then learn to reverse the steps; "GLIDE"
describes the class/text-guided generation and editing built on it. In formulas, with a β
schedule β_1..β_T, α_t = 1 − β_t and ᾱ_t = ∏_{s≤t} α_s:

    forward   q(x_t | x_{t−1}) = N(√α_t x_{t−1}, β_t I)
              q(x_t | x_0)     = N(√ᾱ_t x_0, (1 − ᾱ_t) I)                    (closed form)
    posterior q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I),
              μ̃_t = √ᾱ_{t−1} β_t/(1 − ᾱ_t) x_0 + √α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t) x_t,
              β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) β_t
    loss      L_simple = E_{t, x_0, ε} ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖²
              (or the v target v = √ᾱ_t ε − √(1 − ᾱ_t) x_0)

Code indexes the timesteps 0..T−1 (paper's t = 1..T); ᾱ_{−1} = 1. Images are in [−1, 1]
here (the LightningModule maps the data's [0, 1] there and back).

Reads top-down: the schedules, the objective (pure functions of tensors), then :class:`DDPM`,
the registered network (a :class:`~.unet.UNet` and its schedule) with its samplers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlnotes_zoo.constraints import Field, NonNegativeInt, PositiveInt, UnitInterval
from mlnotes_zoo.errors import UsageError
from mlnotes_zoo.models.diffusion.unet import AttentionBlock, ResBlock, UNet
from mlnotes_zoo.models.shared import check_tensor
from mlnotes_zoo.registry import register_model

OBJECTIVE = ["q_sample", "q_posterior", "x0_from_eps", "v_from_eps", "eps_from_v",
             "diffusion_loss", "normal_kl", "discretized_gaussian_log_likelihood"]
__all__ = ["DDPM", "ddpm", "linear_betas", "cosine_betas", "ddim_timesteps", "mean_fill",
           "nearest_fill",
           "MAX_FINAL_ALPHA_BAR", *OBJECTIVE]

# ᾱ_T above this leaves visible signal in x_T (its std √ᾱ_T > 0.03 of x_0), so sampling
# from x_T ~ N(0, I) starts from the wrong distribution (Lin et al. 2024 on broken schedules).
MAX_FINAL_ALPHA_BAR = 1e-3


# -- schedules ------------------------------------------------------------------------------
def linear_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """β_t linear from beta_start to beta_end (Ho et al. 2020: 1e-4 .. 0.02, T = 1000), float64."""
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64, device="cpu")


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """β_t = 1 − ᾱ_t/ᾱ_{t−1} with ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2)/ᾱ(0), β ≤ 0.999
    (Nichol & Dhariwal 2021, eq. 17), float64."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64, device="cpu") / timesteps
    alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def ddim_timesteps(timesteps: int, steps: int) -> list[int]:
    """``steps`` timesteps from T−1 down to ≥ 0, evenly spaced and starting at T−1.

    "Trailing" spacing (Lin et al. 2024, Table 2): the first step is at t = T−1, where
    x_T ~ N(0, I) is right; DDIM's original ``range(0, T, T//S)`` starts at T − T/S and
    feeds pure noise to a timestep that expects some signal (the off-by-one that few-step
    samplers in diffusers had). ``steps = T`` gives every timestep.
    """
    return sorted({round(timesteps - 1 - i * timesteps / steps) for i in range(steps)},
                  reverse=True)


def _at(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """values[t] broadcast over the image dims of ``like``: (B, 1, 1, 1)."""
    return values.to(like.device)[t].to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


# -- the objective --------------------------------------------------------------------------
def q_sample(x0: Tensor, t: Tensor, noise: Tensor, alpha_bar: Tensor) -> Tensor:
    """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε: a draw of q(x_t | x_0) (Ho et al. 2020, eq. 4)."""
    a = _at(alpha_bar, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def q_posterior(x0: Tensor, xt: Tensor, t: Tensor, betas: Tensor) -> tuple[Tensor, Tensor]:
    """Mean μ̃_t (like x0) and variance β̃_t ((B, 1, 1, 1)) of q(x_{t−1} | x_t, x_0) (eq. 6-7)."""
    alpha_bar = torch.cumprod(1 - betas, 0)
    prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])  # ᾱ_{t−1}, ᾱ_{−1} = 1
    a, a_prev, beta = _at(alpha_bar, t, x0), _at(prev, t, x0), _at(betas, t, x0)
    # μ̃_t = √ᾱ_{t−1} β_t/(1 − ᾱ_t) x_0 + √α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t) x_t
    mean = (a_prev.sqrt() * beta / (1 - a)) * x0 + ((1 - beta).sqrt() * (1 - a_prev) / (1 - a)) * xt
    return mean, (1 - a_prev) / (1 - a) * beta  # β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) β_t


def x0_from_eps(xt: Tensor, t: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
    """x̂_0 = (x_t − √(1 − ᾱ_t) ε)/√ᾱ_t: q_sample solved for x_0."""
    a = _at(alpha_bar, t, xt)
    return (xt - (1 - a).sqrt() * eps) / a.sqrt()


def v_from_eps(x0: Tensor, t: Tensor, eps: Tensor, alpha_bar: Tensor) -> Tensor:
    """v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho 2022, §4)."""
    a = _at(alpha_bar, t, x0)
    return a.sqrt() * eps - (1 - a).sqrt() * x0


def eps_from_v(xt: Tensor, t: Tensor, v: Tensor, alpha_bar: Tensor) -> Tensor:
    """ε = √ᾱ_t v + √(1 − ᾱ_t) x_t: with x_t = √ᾱ x_0 + √(1−ᾱ) ε, since ᾱ + (1 − ᾱ) = 1."""
    a = _at(alpha_bar, t, xt)
    return a.sqrt() * v + (1 - a).sqrt() * xt


def diffusion_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """L_simple: the mean squared error of the predicted ε (or v) over every element."""
    return F.mse_loss(prediction, target)


def normal_kl(mean1: Tensor, var1: Tensor, mean2: Tensor, var2: Tensor) -> Tensor:
    """KL(N(mean1, var1) ‖ N(mean2, var2)) elementwise, in nats."""
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1)


def discretized_gaussian_log_likelihood(x0: Tensor, mean: Tensor, std: Tensor, *,
                                        levels: int) -> Tensor:
    """log P(x_0) elementwise under N(mean, std²) integrated over x_0's bin (Ho et al. 2020,
    eq. 13): ``levels`` values evenly spaced in [−1, 1], bins of width 2/(levels − 1), the
    outermost reaching to ±∞. ``x0`` must lie on that grid."""
    half = 1.0 / (levels - 1)
    upper = (x0 + half - mean) / std
    lower = (x0 - half - mean) / std
    log_cdf_upper = torch.special.log_ndtr(upper)  # bottom bin: (−∞, −1 + h]
    log_survival_lower = torch.special.log_ndtr(-lower)  # top bin: [1 − h, ∞)
    # Φ(b) − Φ(a) = Φ(−a) − Φ(−b): take the tail with the more precision
    inner = torch.where(lower > 0,
                        torch.special.ndtr(-lower) - torch.special.ndtr(-upper),
                        torch.special.ndtr(upper) - torch.special.ndtr(lower))
    log_inner = inner.clamp(min=1e-30).log()
    return torch.where(x0 < -1 + half / 2, log_cdf_upper,
                       torch.where(x0 > 1 - half / 2, log_survival_lower, log_inner))


# -- the network ----------------------------------------------------------------------------
class DDPM(nn.Module):
    """A U-Net ε_θ (or v_θ) with its noise schedule and samplers.

    ``forward(x_t (B, C, H, W), t (B,) int64 in [0, T), y (B,) int64 or None)`` returns the
    network's prediction (ε or v, as ``prediction`` says), (B, C, H, W). The schedule (β,
    ᾱ in float64) is rebuilt from the kwargs, not kept in the state_dict.

    Args:
        in_shape: (C, H, W); H and W divisible by 2^(len(widths) − 1).
        widths, num_res_blocks, groups, heads, dropout, num_classes: see
            :class:`~.unet.UNet`.
        timesteps: T.
        schedule: ``"linear"`` (beta_start .. beta_end) or ``"cosine"``.
        prediction: ``"eps"`` (L_simple) or ``"v"``.
    """

    repeated_blocks: ClassVar[tuple[type[nn.Module], ...]] = (ResBlock, AttentionBlock)

    def __init__(self, *, in_shape: Sequence[int] = (1, 8, 8), widths: Sequence[int] = (32, 64),
                 num_res_blocks: int = 1, groups: int = 8, heads: int = 4, dropout: float = 0.0,
                 num_classes: int = 0, timesteps: int = 1000,
                 schedule: str = "linear", beta_start: float = 1e-4, beta_end: float = 0.02,
                 prediction: str = "eps") -> None:
        super().__init__()
        self.in_shape = tuple(int(s) for s in in_shape)
        widths = tuple(int(w) for w in widths)
        factor = 2 ** (len(widths) - 1)
        if any(side % factor for side in self.in_shape[1:]):
            raise UsageError(f"ddpm: in_shape={list(self.in_shape)} has sides not divisible by "
                             f"2**(len(widths) - 1) = {factor} (widths={list(widths)})")
        if any(w % groups for w in widths) or widths[-1] % heads:
            raise UsageError(f"ddpm: every width must be divisible by groups={groups} and the "
                             f"last by heads={heads}; got widths={list(widths)}")
        if schedule == "linear":
            if not beta_start < beta_end < 1:
                raise UsageError(f"ddpm: need beta_start < beta_end < 1, got {beta_start}, "
                                 f"{beta_end}")
            betas = linear_betas(timesteps, beta_start, beta_end)
        else:
            betas = cosine_betas(timesteps)
        alpha_bar = torch.cumprod(1 - betas, 0)
        final = float(alpha_bar[-1])
        if final > MAX_FINAL_ALPHA_BAR:
            raise UsageError(
                f"ddpm: the {schedule} schedule with timesteps={timesteps} leaves ᾱ_T={final:.3g} "
                f"> {MAX_FINAL_ALPHA_BAR:g} (x_T keeps signal, not N(0, I)); raise timesteps "
                f"or beta_end, or use schedule=cosine")
        self.timesteps = timesteps
        self.schedule = schedule
        self.prediction = prediction
        self.num_classes = num_classes
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("alpha_bar", alpha_bar, persistent=False)
        self.unet = UNet(in_channels=self.in_shape[0], widths=widths,
                         num_res_blocks=num_res_blocks, groups=groups, heads=heads,
                         dropout=dropout, num_classes=num_classes)

    def _apply(self, fn, recurse=True):  # .to(float32/bf16) must not round the schedule
        betas, alpha_bar = self.betas, self.alpha_bar
        out = super()._apply(fn, recurse)
        device = self.unet.stem.weight.device
        self.betas, self.alpha_bar = betas.to(device), alpha_bar.to(device)
        return out

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        sizes = check_tensor(x, "x", ("B", *self.in_shape), where="DDPM.forward")
        check_tensor(t, "t", ("B",), where="DDPM.forward", kind="long", sizes=sizes)
        if y is not None:
            check_tensor(y, "y", ("B",), where="DDPM.forward", kind="long", sizes=sizes)
        return self.unet(x, t, y)

    def example_input(self, batch_size: int = 2) -> tuple[Tensor, ...]:
        """(x_t, t) — and labels y when class-conditional — for tests and benchmarks."""
        x = torch.randn(batch_size, *self.in_shape)
        t = torch.randint(0, self.timesteps, (batch_size,))
        if self.num_classes:
            return x, t, torch.randint(0, self.num_classes, (batch_size,))
        return x, t

    # -- training target ---------------------------------------------------------------
    def loss(self, x0: Tensor, y: Tensor | None = None, *, label_dropout: float = 0.0,
             generator: torch.Generator | None = None) -> Tensor:
        """L_simple (or the v loss) at t ~ U{0..T−1}, ε ~ N(0, I), for x_0 in [−1, 1].

        ``label_dropout``: the share of labels replaced by ∅ (classifier-free guidance
        trains one network for both). Draws t, ε (and the dropout) from ``generator``
        on the CPU when one is given (reproducible evaluation), else from the global stream.
        """
        b = x0.shape[0]
        device = x0.device
        if generator is None:
            t = torch.randint(0, self.timesteps, (b,), device=device)
            noise = torch.randn_like(x0)
            drop = torch.rand(b, device=device) < label_dropout
        else:
            t = torch.randint(0, self.timesteps, (b,), generator=generator).to(device)
            noise = torch.randn(x0.shape, generator=generator).to(device, x0.dtype)
            drop = (torch.rand(b, generator=generator) < label_dropout).to(device)
        if y is not None and self.num_classes:
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        else:
            y = None
        xt = q_sample(x0, t, noise, self.alpha_bar)
        target = noise if self.prediction == "eps" else v_from_eps(x0, t, noise, self.alpha_bar)
        return diffusion_loss(self(xt, t, y), target)

    # -- sampling ------------------------------------------------------------------------
    def predict(self, xt: Tensor, t: Tensor, y: Tensor | None = None, *,
                guidance: float = 1.0, clip: bool = True) -> tuple[Tensor, Tensor]:
        """(ε̂, x̂_0) at x_t, t. With labels: ε̂ = ε(x, ∅) + w·(ε(x, y) − ε(x, ∅)), w = guidance
        (Ho & Salimans 2021, eq. 6; w = 1 is the conditional model). ``clip``: x̂_0 clipped
        to [−1, 1] and ε̂ recomputed from it, so the two stay consistent."""
        if y is not None and self.num_classes and guidance != 1.0:
            out = self(torch.cat([xt, xt]), torch.cat([t, t]),
                       torch.cat([y, torch.full_like(y, self.num_classes)]))
            cond, uncond = out.chunk(2)
            out = uncond + guidance * (cond - uncond)
        else:
            out = self(xt, t, y if self.num_classes else None)
        eps = out if self.prediction == "eps" else eps_from_v(xt, t, out, self.alpha_bar)
        x0 = x0_from_eps(xt, t, eps, self.alpha_bar)
        if clip:
            x0 = x0.clamp(-1, 1)
            a = _at(self.alpha_bar, t, xt)
            eps = (xt - a.sqrt() * x0) / (1 - a).sqrt()
        return eps, x0

    # -- the variational bound --------------------------------------------------------------
    @torch.no_grad()
    def variational_bound(self, x0: Tensor, *, levels: int,
                          variance: Literal["beta", "beta_tilde"] = "beta",
                          y: Tensor | None = None,
                          generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The terms of −log P(x_0) ≤ L_T + Σ_{t>1} L_{t−1} + L_0 (Ho et al. 2020, eq. 5), in
        nats per image (B,), for x_0 on the ``levels`` grid in [−1, 1]:

            prior     L_T     = KL(q(x_T | x_0) ‖ N(0, I))
            diffusion L_{t−1} = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)), t = 2..T,
                      one x_t ~ q(x_t | x_0) per t, p_θ = N(μ̃(x̂_0, x_t), σ_t²)
            decoder   L_0     = −log p_θ(x_0 | x_1), the discretized Gaussian

        σ_t² = β_t or β̃_t (β̃ of the second step for the decoder, whose own β̃ is 0; Nichol &
        Dhariwal 2021). ``total`` is their sum. T net calls on the batch.
        """
        x0 = x0.double()
        betas, alpha_bar = self.betas.to(x0.device), self.alpha_bar.to(x0.device)
        b = x0.shape[0]
        a_T = alpha_bar[-1]
        prior = normal_kl(a_T.sqrt() * x0, (1 - a_T).expand_as(x0), torch.zeros_like(x0),
                          torch.ones_like(x0)).flatten(1).sum(1)
        diffusion = x0.new_zeros(b)
        decoder = x0.new_zeros(b)
        _, tilde = q_posterior(x0[:1], x0[:1], torch.arange(self.timesteps), betas)
        for step in range(self.timesteps - 1, -1, -1):
            t = torch.full((b,), step, device=x0.device, dtype=torch.long)
            noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64
                                ).to(x0.device)
            xt = q_sample(x0, t, noise, alpha_bar)
            _, x0_hat = self.predict(xt.float(), t, y, clip=False)
            model_mean, _ = q_posterior(x0_hat.double(), xt, t, betas)
            if step == 0:
                var = betas[0] if variance == "beta" else tilde[min(1, self.timesteps - 1)]
                log_p = discretized_gaussian_log_likelihood(
                    x0, model_mean, var.sqrt().expand_as(x0), levels=levels)
                decoder = -log_p.flatten(1).sum(1)
            else:
                true_mean, true_var = q_posterior(x0, xt, t, betas)
                var = (betas[step] if variance == "beta" else tilde[step]).expand_as(x0)
                diffusion += normal_kl(true_mean, true_var.expand_as(x0), model_mean,
                                       var).flatten(1).sum(1)
        total = prior + diffusion + decoder
        return {"prior": prior, "diffusion": diffusion, "decoder": decoder, "total": total}

    @torch.no_grad()
    def bound_bits_per_dim(self, images: Tensor, *, levels: int,
                           variance: Literal["beta", "beta_tilde"] = "beta",
                           y: Tensor | None = None, generator: torch.Generator | None = None,
                           chunk: int = 1000) -> dict[str, Tensor]:
        """:meth:`variational_bound` of ``images`` (B, C, H, W) in [0, 1], rounded onto the
        ``levels`` grid, in bits per dimension, per image (B,): nats / (C·H·W · log 2) — the
        discrete −log₂ P(x)/D that ``realnvp``/``glow`` bound on the same levels. Keys as
        :meth:`variational_bound`; ``total`` is the sum of the others."""
        per_dim = images[0].numel() * math.log(2)
        device = self.unet.stem.weight.device
        parts: dict[str, list[Tensor]] = {}
        for i in range(0, len(images), chunk):
            x = images[i:i + chunk].double()
            x0 = ((x * (levels - 1)).round() / (levels - 1) * 2 - 1).to(device)
            labels = y[i:i + chunk].to(device) if y is not None else None
            terms = self.variational_bound(x0, levels=levels, variance=variance, y=labels,
                                           generator=generator)
            for key, value in terms.items():
                parts.setdefault(key, []).append(value.cpu() / per_dim)
        return {key: torch.cat(value) for key, value in parts.items()}

    def _start(self, n: int, generator: torch.Generator | None) -> Tensor:
        device = self.unet.stem.weight.device
        return torch.randn(n, *self.in_shape, generator=generator).to(device)

    def _noise(self, like: Tensor, generator: torch.Generator | None) -> Tensor:
        return torch.randn(like.shape, generator=generator).to(like.device, like.dtype)

    @torch.no_grad()
    def sample_ancestral(self, n: int, *, variance: Literal["beta", "beta_tilde"] = "beta",
                         y: Tensor | None = None, guidance: float = 1.0, clip: bool = True,
                         generator: torch.Generator | None = None, trajectory: int = 0,
                         ) -> Tensor | tuple[Tensor, Tensor]:
        """x_T ~ N(0, I), then T steps x_{t−1} = μ̃_t(x̂_0, x_t) + σ_t z, σ_t² = β_t or β̃_t
        (Ho et al. 2020, Algorithm 2; no noise at the last step). Returns x_0 in [−1, 1]
        (n, C, H, W); with ``trajectory=k`` also k snapshots x_t from T to 0, (n, k, C, H, W).
        Noise comes from ``generator`` on the CPU (the same draws on every device)."""
        return self._sample(n, list(range(self.timesteps - 1, -1, -1)), eta=None,
                            variance=variance, y=y, guidance=guidance, clip=clip,
                            generator=generator, trajectory=trajectory)

    @torch.no_grad()
    def sample_ddim(self, n: int, *, steps: int = 50, eta: float = 0.0,
                    y: Tensor | None = None, guidance: float = 1.0, clip: bool = True,
                    generator: torch.Generator | None = None, trajectory: int = 0,
                    ) -> Tensor | tuple[Tensor, Tensor]:
        """DDIM (Song et al. 2021, eq. 12) over ``steps`` trailing timesteps τ:
        x_{τ'} = √ᾱ_{τ'} x̂_0 + √(1 − ᾱ_{τ'} − σ²) ε̂ + σ z,
        σ = η √((1 − ᾱ_{τ'})/(1 − ᾱ_τ)) √(1 − ᾱ_τ/ᾱ_{τ'}); η = 0 is deterministic, η = 1
        with every step is ancestral sampling with σ² = β̃_t. Returns as
        :meth:`sample_ancestral`."""
        return self._sample(n, ddim_timesteps(self.timesteps, steps), eta=eta, variance=None,
                            y=y, guidance=guidance, clip=clip, generator=generator,
                            trajectory=trajectory)

    @torch.no_grad()
    def inpaint(self, known: Tensor, mask: Tensor, *, steps: int = 50, eta: float = 0.0,
                generator: torch.Generator | None = None) -> Tensor:
        """Fill the pixels where ``mask`` is 0 in ``known`` (B, C, H, W) in [−1, 1] (``mask``
        1 on the visible pixels, broadcastable to ``known``), with the unconditional model:
        after every DDIM step the visible pixels are replaced by a draw of q(x_τ' | x_0)
        (RePaint, Lugmayr et al. 2022, without its resampling jumps), so the last step
        returns them exactly. Returns (B, C, H, W) in [−1, 1]."""
        return self._sample(known.shape[0], ddim_timesteps(self.timesteps, steps), eta=eta,
                            variance=None, y=None, guidance=1.0, clip=True,
                            generator=generator, trajectory=0, known=(known, mask.to(known)))

    def _sample(self, n, times, *, eta, variance, y, guidance, clip, generator, trajectory,
                known=None):
        x = self._start(n, generator)
        if known is not None:  # the visible pixels of x_T: a draw of q(x_T | x_0)
            image, visible = known
            t0 = torch.full((n,), times[0], device=x.device, dtype=torch.long)
            x = visible * q_sample(image, t0, self._noise(x, generator), self.alpha_bar) \
                + (1 - visible) * x
        states = [x] if trajectory else []  # x_T, then x after each step
        alpha_bar = self.alpha_bar
        for i, step in enumerate(times):
            t = torch.full((n,), step, device=x.device, dtype=torch.long)
            eps, x0 = self.predict(x.float(), t, y, guidance=guidance, clip=clip)
            x0, eps = x0.double(), eps.double()
            z = self._noise(x, generator).double()
            prev = times[i + 1] if i + 1 < len(times) else -1
            a = alpha_bar[step]
            a_prev = alpha_bar[prev] if prev >= 0 else alpha_bar.new_tensor(1.0)
            if eta is None:  # ancestral: the posterior q(x_{t−1} | x_t, x̂_0)
                mean, tilde = q_posterior(x0, x.double(), t, self.betas)
                var = tilde if variance == "beta_tilde" else _at(self.betas, t, x0)
                sigma = var.sqrt() if step > 0 else torch.zeros_like(var)
                x = mean + sigma * z
            else:
                sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
                x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps \
                    + sigma * z
            x = x.float()
            if known is not None:
                if prev >= 0:
                    t_prev = torch.full((n,), prev, device=x.device, dtype=torch.long)
                    seen = q_sample(image, t_prev, self._noise(x, generator), self.alpha_bar)
                else:
                    seen = image
                x = visible * seen + (1 - visible) * x
            if trajectory:
                states.append(x)
        if not trajectory:
            return x
        # ``trajectory`` states evenly spaced from x_T (first) to x_0 (last)
        last = len(states) - 1
        keep = sorted({round(i * last / max(trajectory - 1, 1)) for i in range(trajectory)})
        return x, torch.stack([states[i] for i in keep], dim=1)


def mean_fill(train: Tensor, images: Tensor, mask: Tensor) -> Tensor:
    """Baseline inpainting: the hidden pixels (``mask`` 0) get the training images' mean."""
    return mask * images + (1 - mask) * train.mean(0, keepdim=True)


def nearest_fill(train: Tensor, images: Tensor, mask: Tensor) -> Tensor:
    """Baseline inpainting: the hidden pixels are copied from the training image nearest in
    squared distance on the visible pixels."""
    visible = mask.expand_as(images[:1]).flatten(1)  # (1, D)
    dist = torch.cdist(images.flatten(1) * visible, train.flatten(1) * visible)  # (B, N)
    return mask * images + (1 - mask) * train[dist.argmin(1)]


@register_model("ddpm")
def ddpm(
    *,
    in_shape: tuple[PositiveInt, PositiveInt, PositiveInt] = (1, 8, 8),
    widths: Annotated[list[PositiveInt], Field(min_length=1, description=(
        "channels per resolution level"))] = (32, 64),
    num_res_blocks: PositiveInt = 1,
    groups: PositiveInt = 8,
    heads: PositiveInt = 4,
    dropout: UnitInterval = 0.0,
    num_classes: NonNegativeInt = 0,
    timesteps: Annotated[int, Field(ge=2, description="T, the diffusion steps")] = 1000,
    schedule: Literal["linear", "cosine"] = "linear",
    beta_start: Annotated[float, Field(gt=0, lt=1)] = 1e-4,
    beta_end: Annotated[float, Field(gt=0, lt=1)] = 0.02,
    prediction: Literal["eps", "v"] = "eps",
) -> DDPM:
    """DDPM (Ho et al. 2020): U-Net ε_θ, linear or cosine schedule; ``num_classes`` > 0 for
    classifier-free guidance."""
    return DDPM(in_shape=in_shape, widths=widths, num_res_blocks=num_res_blocks, groups=groups,
                heads=heads, dropout=dropout, num_classes=num_classes, timesteps=timesteps,
                schedule=schedule, beta_start=beta_start, beta_end=beta_end,
                prediction=prediction)
