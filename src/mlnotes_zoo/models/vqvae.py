"""Vector-quantised VAE (van den Oord, Vinyals & Kavukcuoglu 2017, "Neural Discrete
Representation Learning"), its objective and its codebook-usage metric.

Reads top-down: residual block, encoder, codebook (:class:`VectorQuantizer`), decoder,
:class:`VQVAE`, then the objective and the metric. The encoder maps x to a grid of vectors
z_e(x); each vector is replaced by its nearest codebook entry e_k, k = argmin_j ‖z_e − e_j‖²;
the decoder reconstructs x from the quantised grid z_q. argmin has no gradient, so the
straight-through estimator copies the decoder's gradient at z_q onto z_e
(``z_e + sg[z_q − z_e]``). The codebook learns either from the codebook loss
‖sg[z_e] − e‖² (:func:`codebook_loss`) or, with ``ema=True``, as exponential moving averages
of the encoder outputs assigned to each code (paper, App. A.1). Codes that go unused can be
re-seeded on encoder outputs (dead-code restarts, as in Dhariwal et al. 2020, "Jukebox").
The notes (``shared/notes/003``, "VQ VAE") remark that the output is squashed by a sigmoid so
that it stays in the pixel range: ``output="sigmoid"``.

The objective (paper, eq. 3):

    L = ‖x − x̂(z_q)‖²  +  ‖sg[z_e(x)] − e‖²  +  β ‖z_e(x) − sg[e]‖²
        reconstruction    codebook loss         commitment loss

sg[·] is stop-gradient (``detach``). The codebook loss moves only the codes e towards the
encoder outputs; the commitment loss moves only the encoder towards its codes, so that z_e
does not grow faster than the codebook can follow (β = 0.25 in the paper). With EMA codebook
updates the codebook loss is left out (the codes are cluster means, not parameters). Its
functions return one value per example (shape ``(B,)``): means over that example's pixels or
latent elements, so the terms keep their scale across image and latent sizes.

Codebook usage over a whole split:

    p_k = n_k / Σ_j n_j,   perplexity = exp(H(p)) = exp(−Σ_k p_k log p_k)

Perplexity runs from 1 (every vector on one code) to K (all K codes equally used): the
effective number of codes. It is computed from the counts of the whole split, not averaged
over batches (a batch mean would understate it: a small batch cannot use many codes).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchmetrics import Metric

from mlnotes_zoo.constraints import NonNegativeInt, PositiveFloat, PositiveInt, UnitInterval
from mlnotes_zoo.models.shared import check_tensor
from mlnotes_zoo.registry import register_model

OBJECTIVE = ["reconstruction_error", "codebook_loss", "commitment_loss", "vqvae_loss"]
__all__ = ["VQVAE", "VQVAEOutput", "Quantized", "VectorQuantizer", "ResidualBlock",
           "VQEncoder", "VQDecoder", *OBJECTIVE, "codebook_perplexity", "CodebookUsage"]

class ResidualBlock(nn.Module):
    """x + Conv1×1(ReLU(Conv3×3(ReLU(x)))), the paper's residual unit; shape-preserving."""

    def __init__(self, *, channels: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class VQEncoder(nn.Module):
    """x (B, C, H, W) -> z_e (B, D, H/2^n, W/2^n): n stride-2 4×4 convs, residual stack, 1×1."""

    def __init__(self, *, in_channels: int, hidden: int, residual_hidden: int,
                 num_residual_blocks: int, num_downsamples: int, embedding_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(num_downsamples):
            layers += [nn.Conv2d(channels, hidden, 4, stride=2, padding=1), nn.ReLU()]  # H/2
            channels = hidden
        layers.append(nn.Conv2d(channels, hidden, 3, padding=1))
        layers += [ResidualBlock(channels=hidden, hidden=residual_hidden)
                   for _ in range(num_residual_blocks)]
        layers += [nn.ReLU(), nn.Conv2d(hidden, embedding_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class VQDecoder(nn.Module):
    """z_q (B, D, h, w) -> (B, C, h·2^n, w·2^n): 3×3 conv, residual stack, n stride-2 deconvs."""

    def __init__(self, *, out_channels: int, hidden: int, residual_hidden: int,
                 num_residual_blocks: int, num_downsamples: int, embedding_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(embedding_dim, hidden, 3, padding=1)]
        layers += [ResidualBlock(channels=hidden, hidden=residual_hidden)
                   for _ in range(num_residual_blocks)]
        for i in range(num_downsamples):
            last = i == num_downsamples - 1
            layers += [nn.ReLU(), nn.ConvTranspose2d(hidden, out_channels if last else hidden, 4,
                                                     stride=2, padding=1)]  # 2h
        if num_downsamples == 0:
            layers += [nn.ReLU(), nn.Conv2d(hidden, out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class Quantized(NamedTuple):
    z_q: Tensor  # codebook vectors e_k, (B, D, h, w); differentiable in the codebook
    z_st: Tensor  # straight-through z_e + sg[z_q − z_e]: value z_q, gradient to z_e
    indices: Tensor  # k = argmin_j ‖z_e − e_j‖², (B, h, w) long


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantisation of (B, D, h, w) grids against a (K, D) codebook.

    Args:
        num_codes: K, the codebook size.
        embedding_dim: D, the size of each code.
        ema: learn the codebook as EMA cluster means (no gradient; it is a buffer) instead of
            from the codebook loss (it is then a parameter).
        decay: γ of the EMA.
        eps: Laplace smoothing ε of the EMA cluster sizes (keeps empty clusters finite).
        restart_after: re-seed a code on a random encoder output of the current batch once it
            has been assigned to nothing for this many training steps; 0 turns restarts off.

    In training mode the forward pass also updates the EMA statistics and the usage counters
    (under ``no_grad``); in eval mode it changes nothing. Under ``torch.distributed`` the
    statistics are summed over ranks and restarts use rank 0's choice, so every rank keeps
    the same codebook.
    """

    def __init__(self, *, num_codes: PositiveInt, embedding_dim: PositiveInt, ema: bool = False,
                 decay: UnitInterval = 0.99, eps: PositiveFloat = 1e-5,
                 restart_after: NonNegativeInt = 0) -> None:
        super().__init__()
        self.num_codes, self.embedding_dim = num_codes, embedding_dim
        self.ema, self.decay, self.eps = ema, decay, eps
        self.restart_after = restart_after
        # Sonnet's initialisation: small uniform codes, so early assignments are near-random.
        codebook = torch.empty(num_codes, embedding_dim).uniform_(-1 / num_codes, 1 / num_codes)
        if ema:
            self.register_buffer("codebook", codebook)
            # EMA state: N_k (cluster sizes) and m_k (sums of assigned z_e); e_k = m_k / N_k.
            self.register_buffer("ema_cluster_size", torch.ones(num_codes))
            self.register_buffer("ema_embed_sum", codebook.clone())
        else:
            self.codebook = nn.Parameter(codebook)
        # Training steps since each code was last assigned (drives dead-code restarts).
        self.register_buffer("code_age", torch.zeros(num_codes, dtype=torch.long))

    def distances(self, flat: Tensor) -> Tensor:
        """‖z − e_j‖² for rows z of ``flat`` (N, D) and every code: (N, K)."""
        # ‖z‖² − 2 z·e + ‖e‖²: one matmul instead of an (N, K, D) difference tensor.
        e = self.codebook
        return (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t()
                + e.pow(2).sum(1).unsqueeze(0))

    def assign(self, flat: Tensor) -> Tensor:
        """k = argmin_j ‖z − e_j‖² for each row of ``flat`` (N, D): (N,) long."""
        # In float32 even under autocast: near-ties would flip in half precision.
        with torch.no_grad(), torch.autocast(flat.device.type, enabled=False):
            return self.distances(flat.float()).argmin(1)

    def forward(self, z_e: Tensor) -> Quantized:
        b, d, h, w = z_e.shape
        if d != self.embedding_dim:
            raise ValueError(f"expected {self.embedding_dim} channels, got {d}")
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)  # (B·h·w, D)
        if self.training and self.restart_after:
            self.restart_dead_codes(flat.detach())
        indices = self.assign(flat)  # (B·h·w,)
        if self.training:
            self.update(flat.detach().float(), indices)
        z_q = self.codebook[indices].view(b, h, w, d).permute(0, 3, 1, 2)  # (B, D, h, w)
        # Straight-through estimator: forward value z_q, backward ∂L/∂z_e := ∂L/∂z_q.
        z_st = z_e + (z_q - z_e).detach()
        return Quantized(z_q, z_st, indices.view(b, h, w))

    @torch.no_grad()
    def update(self, flat: Tensor, indices: Tensor) -> None:
        """One training step's bookkeeping: usage ages and, with ``ema``, the EMA codebook."""
        onehot = nn.functional.one_hot(indices, self.num_codes).to(flat.dtype)  # (N, K)
        counts = onehot.sum(0)  # n_k
        sums = onehot.t() @ flat if self.ema else None  # Σ_{i: k_i = k} z_i, (K, D)
        if _distributed():
            dist.all_reduce(counts)
            if sums is not None:
                dist.all_reduce(sums)
        self.code_age.add_(1).masked_fill_(counts > 0, 0)
        if not self.ema:
            return
        # N_k ← γ N_k + (1 − γ) n_k ;  m_k ← γ m_k + (1 − γ) Σ_{i: k_i = k} z_i
        self.ema_cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        # Laplace smoothing: N_k ← (N_k + ε) / (n + K ε) · n, n = Σ_k N_k  (Sonnet's VQ-EMA)
        n = self.ema_cluster_size.sum()
        size = (self.ema_cluster_size + self.eps) / (n + self.num_codes * self.eps) * n
        self.codebook.copy_(self.ema_embed_sum / size.unsqueeze(1))  # e_k = m_k / N_k

    @torch.no_grad()
    def restart_dead_codes(self, flat: Tensor) -> Tensor:
        """Re-seed codes unused for ``restart_after`` steps on random rows of ``flat`` (N, D).

        Returns the indices of the restarted codes. A restarted code starts with age 0 and,
        with ``ema``, with cluster size 1 and sum equal to its new value.
        """
        dead = (self.code_age >= max(self.restart_after, 1)).nonzero().squeeze(1)
        if dead.numel() == 0:
            return dead
        # Without replacement when the batch has enough vectors, so restarted codes differ.
        if flat.shape[0] >= dead.numel():
            rows = torch.randperm(flat.shape[0], device=flat.device)[: dead.numel()]
        else:
            rows = torch.randint(flat.shape[0], (dead.numel(),), device=flat.device)
        new_codes = flat[rows].to(self.codebook.dtype)
        if _distributed():
            dist.broadcast(new_codes, src=0)
        self.codebook.data[dead] = new_codes
        self.code_age[dead] = 0
        if self.ema:
            self.ema_cluster_size[dead] = 1.0
            self.ema_embed_sum[dead] = new_codes
        return dead

    def lookup(self, indices: Tensor) -> Tensor:
        """Codes for an index grid (B, h, w) -> (B, D, h, w)."""
        return self.codebook[indices].permute(0, 3, 1, 2)


class VQVAEOutput(NamedTuple):
    reconstruction: Tensor  # x̂ (B, C, H, W): in [0, 1] with output="sigmoid"
    z_e: Tensor  # encoder output (B, D, h, w)
    z_q: Tensor  # its nearest codes (B, D, h, w), differentiable in the codebook
    indices: Tensor  # code indices (B, h, w), long


@register_model("vqvae")
class VQVAE(nn.Module):
    """Encoder → nearest-neighbour codebook → decoder, trained with the straight-through
    estimator (van den Oord et al. 2017).

    Args:
        in_shape: (C, H, W) of the images; H and W must be divisible by 2^num_downsamples.
        hidden: channels of the conv stages.
        residual_hidden: inner channels of each residual block.
        num_residual_blocks: residual blocks in the encoder and in the decoder.
        num_downsamples: stride-2 stages; the latent grid is (H/2^n, W/2^n).
        num_codes: K, codebook size.
        embedding_dim: D, size of each code.
        ema, decay, eps, restart_after: see :class:`VectorQuantizer`.
        output: ``"sigmoid"`` (x̂ in [0, 1], for pixels in [0, 1]) or ``"linear"``.
        encoder, decoder: your own modules (x -> (B, D, h, w) and back) replace the built-in.
    """

    repeated_blocks: ClassVar[tuple[type[nn.Module], ...]] = (ResidualBlock,)

    def __init__(
        self,
        *,
        in_shape: tuple[PositiveInt, PositiveInt, PositiveInt] = (1, 8, 8),
        hidden: PositiveInt = 64,
        residual_hidden: PositiveInt = 32,
        num_residual_blocks: NonNegativeInt = 2,
        num_downsamples: NonNegativeInt = 1,
        num_codes: PositiveInt = 64,
        embedding_dim: PositiveInt = 16,
        ema: bool = False,
        decay: UnitInterval = 0.99,
        eps: PositiveFloat = 1e-5,
        restart_after: NonNegativeInt = 0,
        output: Literal["sigmoid", "linear"] = "sigmoid",
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        in_shape = tuple(in_shape)
        factor = 2**num_downsamples
        if in_shape[1] % factor or in_shape[2] % factor:
            raise ValueError(f"num_downsamples={num_downsamples} needs H and W divisible by "
                             f"{factor}, got in_shape={in_shape}")
        self.in_shape = in_shape
        self.latent_shape = (in_shape[1] // factor, in_shape[2] // factor)
        self.output = output
        sizes = dict(hidden=hidden, residual_hidden=residual_hidden,
                     num_residual_blocks=num_residual_blocks, num_downsamples=num_downsamples,
                     embedding_dim=embedding_dim)
        self.encoder = encoder if encoder is not None else VQEncoder(in_channels=in_shape[0],
                                                                     **sizes)
        self.quantizer = VectorQuantizer(num_codes=num_codes, embedding_dim=embedding_dim,
                                         ema=ema, decay=decay, eps=eps,
                                         restart_after=restart_after)
        self.decoder = decoder if decoder is not None else VQDecoder(out_channels=in_shape[0],
                                                                     **sizes)

    @property
    def num_codes(self) -> int:
        return self.quantizer.num_codes

    @property
    def bits_per_image(self) -> float:
        """Size of the discrete code of one image: h·w·log2 K bits."""
        return math.prod(self.latent_shape) * math.log2(self.num_codes)

    def encode(self, x: Tensor) -> Tensor:
        """Code indices (B, h, w) of images x."""
        check_tensor(x, "x", ("B", *self.in_shape), where="VQVAE.encode")
        return self.quantizer(self.encoder(x)).indices

    def decode(self, z: Tensor) -> Tensor:
        """x̂ from a latent grid (B, D, h, w)."""
        out = self.decoder(z)
        return torch.sigmoid(out) if self.output == "sigmoid" else out

    def decode_indices(self, indices: Tensor) -> Tensor:
        """x̂ from code indices (B, h, w)."""
        return self.decode(self.quantizer.lookup(indices))

    def forward(self, x: Tensor) -> VQVAEOutput:
        check_tensor(x, "x", ("B", *self.in_shape), where="VQVAE.forward")
        z_e = self.encoder(x)
        z_q, z_st, indices = self.quantizer(z_e)
        return VQVAEOutput(self.decode(z_st), z_e, z_q, indices)

    def example_input(self, batch_size: int = 2) -> Tensor:
        """A valid input batch (pixels in [0, 1]) for tests and benchmarks."""
        return torch.rand(batch_size, *self.in_shape)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# -- the objective: reconstruction, codebook and commitment terms -------------------------
def _per_example_mean(t: Tensor) -> Tensor:
    return t.flatten(1).mean(1)


def reconstruction_error(x_hat: Tensor, x: Tensor) -> Tensor:
    """Mean squared error per example, (1/|x|) ‖x − x̂‖² (a fixed-variance Gaussian's −log p)."""
    return _per_example_mean((x_hat - x).pow(2))


def codebook_loss(z_e: Tensor, z_q: Tensor) -> Tensor:
    """‖sg[z_e] − e‖² per example: gradient only to the codes ``z_q``."""
    return _per_example_mean((z_e.detach() - z_q).pow(2))


def commitment_loss(z_e: Tensor, z_q: Tensor) -> Tensor:
    """‖z_e − sg[e]‖² per example: gradient only to the encoder output ``z_e``."""
    return _per_example_mean((z_e - z_q.detach()).pow(2))


def vqvae_loss(recon: Tensor, codebook: Tensor, commitment: Tensor, beta: float = 0.25) -> Tensor:
    """L = reconstruction + codebook + β·commitment (pass a zero ``codebook`` under EMA)."""
    return recon + codebook + beta * commitment


# -- codebook usage: perplexity and codes used over a split ------------------------------
def codebook_perplexity(counts: Tensor) -> Tensor:
    """exp(H(p)) of the code histogram ``counts`` (K,); 0·log 0 = 0."""
    p = counts.float() / counts.sum().clamp_min(1)
    entropy = -torch.special.xlogy(p, p).sum()
    return entropy.exp()


class CodebookUsage(Metric):
    """Accumulates the code histogram over batches (summed across ranks); ``compute()``
    returns ``{"perplexity": exp(H), "codes_used": #codes with n_k > 0}``."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_codes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_codes = num_codes
        self.add_state("counts", default=torch.zeros(num_codes), dist_reduce_fx="sum")

    def update(self, indices: Tensor) -> None:
        self.counts += torch.bincount(indices.flatten(), minlength=self.num_codes).to(
            self.counts.dtype)

    def compute(self) -> dict[str, Tensor]:
        return {"perplexity": codebook_perplexity(self.counts),
                "codes_used": (self.counts > 0).sum().float()}
