"""LightningModules of the neural-ODE family: the ODE-Net classifier, the continuous
normalizing flow and the latent ODE. Each logs the solver's cost as well as its metric:
``nfe`` (function evaluations of the forward solve per step) and, in training,
``nfe_backward`` (evaluations of the backward pass: the adjoint solve, 0 when the gradient
back-propagates through the solver's operations)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import torch
from torch import Tensor, nn

from mlnotes_zoo.constraints import Field, NonNegativeInt, PositiveFloat, PositiveInt
from mlnotes_zoo.lit.base import OptimizerFactory, SchedulerFactory, ZooModule
from mlnotes_zoo.models.flows import Preprocess, flow_nll, uniform_dequantize
from mlnotes_zoo.models.ode import (
    CNF,
    LatentODE,
    ODENet,
    classification_loss,
    cnf_log_likelihood,
    masked_gaussian_log_likelihood,
    masked_mse,
    standard_normal_kl,
)


class _CountsNFE(ZooModule):
    """Logs ``nfe`` per step and, after each backward pass, ``train/nfe_backward``."""

    _nfe_after_forward: int | None = None

    def count_forward(self, nfe_before: int) -> Tensor:
        """The forward solve's evaluations since ``nfe_before``, as a loggable scalar."""
        self._nfe_after_forward = self.net.nfe
        return torch.tensor(float(self.net.nfe - nfe_before))

    def on_after_backward(self) -> None:
        if self._nfe_after_forward is None:
            return
        backward = self.net.nfe - self._nfe_after_forward
        self._nfe_after_forward = None
        # logged on the steps the loggers write, as ZooModule's training values are
        if self.logs_this_step(self.global_step):
            self.log("train/nfe_backward", float(backward), on_step=True, on_epoch=False)


class LitODENet(_CountsNFE):
    """Trains :class:`~mlnotes_zoo.models.ode.ODENet` (or its ``block="resnet"`` twin) on
    cross-entropy; logs ``loss``, ``acc`` and ``nfe`` (0 for the ResNet).

    Args:
        net: the ODE-Net (or its registry spec when loaded from a checkpoint).
        optimizer, scheduler, activation_checkpointing: see
            :class:`~mlnotes_zoo.lit.base.ZooModule`.
    """

    net: ODENet

    def __init__(
        self,
        *,
        net: nn.Module | Mapping[str, Any],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(net=net, optimizer=optimizer, scheduler=scheduler, **base_kwargs)

    def model_step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        x, y = batch[0], batch[1]
        nfe_before = self.net.nfe
        logits = self.net(x)
        nfe = self.count_forward(nfe_before) if stage == "train" else \
            torch.tensor(float(self.net.nfe - nfe_before))
        loss = classification_loss(logits, y).mean()
        return {"loss": loss, "acc": (logits.argmax(-1) == y).float().mean(), "nfe": nfe}


class LitCNF(_CountsNFE):
    """Trains :class:`~mlnotes_zoo.models.ode.CNF` by maximum likelihood: loss = nll =
    −mean log p(x) in nats; also ``log_det`` (mean ∫tr ∂f/∂z) and ``nfe``. At test, where the
    data's density is known (the DataModule's ``log_prob``, e.g. 8 Gaussians), ``data_nll``:
    −mean log p_data of the same test points, the entropy a perfect model would reach.

    The ``density`` picture puts side by side, on [−r, r]²: a histogram of the validation
    points, the model's density exp(log p) on a grid, and a histogram of samples x = F⁻¹(z).

    Images (batches (x (B, C, H, W), labels), ``data=digits``) are modelled as flows model
    them (:class:`~mlnotes_zoo.lit.flows.LitFlow`): uniformly dequantized y = (k + u)/K,
    RealNVP's logit transform (α = 0.05, its log|det| counted), flattened to D = C·H·W; the
    loss is bits/dim (also ``bpd``); the ``samples`` picture shows images F⁻¹(z).

    Args:
        net: the CNF (or its registry spec when loaded from a checkpoint).
        levels: K, pixel levels of image data; None takes the DataModule's ``levels`` (17 for
            the digits) or 256.
        grid_size: pixels per side of each panel.
        num_samples: samples in the third panel.
        plot_range: r; None takes the DataModule's ``plot_range`` (or 4).
        optimizer, scheduler, activation_checkpointing: see
            :class:`~mlnotes_zoo.lit.base.ZooModule`.
    """

    net: CNF

    def __init__(
        self,
        *,
        net: nn.Module | Mapping[str, Any],
        levels: Annotated[int, Field(ge=2, description="discrete pixel levels")] | None = None,
        grid_size: PositiveInt = 96,
        num_samples: PositiveInt = 5000,
        plot_range: PositiveFloat | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(net=net, optimizer=optimizer, scheduler=scheduler, **base_kwargs)
        self.levels = levels
        # images: RealNVP's logit(α + (1 − 2α)·y) unbounds the pixels (log|det| included)
        self.preprocess = Preprocess(kind="logit", alpha=0.05)
        self.grid_size = grid_size
        self.num_samples = num_samples
        self.plot_range = plot_range

    def model_step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        with torch.inference_mode(False):  # the trace needs autograd, even in evaluation
            return self._step(batch[0].clone(), stage)

    def _step(self, x: Tensor, stage: str) -> dict[str, Tensor]:
        images = x.dim() == 4
        log_det_pixels = 0.0
        if images:  # continuous y = (k + u)/K in the pixel's bin, logit, flattened (B, D)
            x, log_det_pixels = self.preprocess(uniform_dequantize(x, self.num_levels))
            x = x.flatten(1)
        nfe_before = self.net.nfe
        z, log_det = self.net(x)
        nfe = self.count_forward(nfe_before) if stage == "train" else \
            torch.tensor(float(self.net.nfe - nfe_before))
        if images:
            parts = flow_nll(z, log_det + log_det_pixels, num_dims=x.shape[1],
                             levels=self.num_levels)
            bpd = parts["bpd"].mean()
            return {"loss": bpd, "bpd": bpd, "nll": parts["nll"].mean(),
                    "log_det": log_det.mean(), "nfe": nfe}
        nll = -cnf_log_likelihood(z, log_det).mean()
        out = {"loss": nll, "nll": nll, "log_det": log_det.mean(), "nfe": nfe}
        datamodule = self._datamodule()
        if stage == "test" and getattr(datamodule, "has_log_prob", False):
            out["data_nll"] = -datamodule.log_prob(x).mean()
        return out

    @property
    def num_levels(self) -> int:
        if self.levels is not None:
            return self.levels
        return int(getattr(self._datamodule(), "levels", 256))

    def _datamodule(self) -> Any:
        return getattr(self._trainer, "datamodule", None) if self._trainer else None

    @property
    def range(self) -> float:
        if self.plot_range is not None:
            return self.plot_range
        return float(getattr(self._datamodule(), "plot_range", 4.0))

    @torch.no_grad()
    def grid_log_density(self, size: int, limit: float) -> tuple[Tensor, float]:
        """log p on the centres of a size × size grid over [−limit, limit]², (size, size)
        with rows from top (y = +limit) to bottom, and the area of one cell."""
        step = 2 * limit / size
        centres = torch.linspace(-limit + step / 2, limit - step / 2, size, device=self.device)
        y, x = torch.meshgrid(centres.flip(0), centres, indexing="ij")
        points = torch.stack([x.reshape(-1), y.reshape(-1)], dim=1)
        log_p = torch.cat([self.net.log_prob(chunk) for chunk in points.split(4096)])
        return log_p.view(size, size), step * step

    @torch.no_grad()
    def pictures(self, batch: Any) -> dict[str, Tensor]:
        if batch[0].dim() == 4:  # images: samples F⁻¹(z), z ~ N(0, I)
            from torchvision.utils import make_grid

            shape = batch[0].shape[1:]
            samples = self.preprocess.inverse(self.net.sample(64)).clamp(0, 1).view(-1, *shape)
            return {"samples": make_grid(samples, nrow=8, padding=1, pad_value=0.5)}
        if self.net.dim != 2:
            return {}
        with torch.inference_mode(False):
            return self._density_picture(batch[0].clone())

    def _density_picture(self, points: Tensor) -> dict[str, Tensor]:
        limit, size = self.range, self.grid_size
        log_p, _ = self.grid_log_density(size, limit)
        panels = [_histogram(points, size, limit), log_p.exp(),
                  _histogram(self.net.sample(self.num_samples), size, limit)]
        heat = [_heat_map(p / p.max().clamp_min(1e-12)) for p in panels]
        gap = torch.ones(3, size, 2, device=heat[0].device)
        return {"density": torch.cat([heat[0], gap, heat[1], gap, heat[2]], dim=2)}


def _histogram(points: Tensor, size: int, limit: float) -> Tensor:
    """Counts of 2-D points in a size × size grid over [−limit, limit]² (rows top-down)."""
    cells = ((points + limit) / (2 * limit) * size).floor().long()
    inside = ((cells >= 0) & (cells < size)).all(dim=1)
    col, row = cells[inside, 0], size - 1 - cells[inside, 1]
    counts = torch.zeros(size * size, device=points.device)
    counts.index_add_(0, row * size + col, torch.ones_like(col, dtype=counts.dtype))
    return counts.view(size, size)


def _heat_map(values: Tensor) -> Tensor:
    """Values in [0, 1] (H, W) -> a black-red-yellow-white image (3, H, W)."""
    v = values.clamp(0, 1)
    return torch.stack([(3 * v).clamp(0, 1), (3 * v - 1).clamp(0, 1), (3 * v - 2).clamp(0, 1)])


class LitLatentODE(_CountsNFE):
    """Trains :class:`~mlnotes_zoo.models.ode.LatentODE` (or its GRU baseline) on the ELBO

        ELBO = Σ_{t ∈ targets} log N(x_t; g(z(t)), σ²) − KL(q(z₀ | x_obs) ‖ N(0, I))

    with the encoder seeing only the observed times of the window and the targets being those
    observations and every time after the window (Rubanova et al.'s extrapolation set-up).

    Logged: ``loss`` (−ELBO per series, nats), ``elbo``, ``recon``, ``kl``, ``nfe``, and in
    evaluation, from the posterior mean z₀ = μ: ``mse_observed``, ``mse_interp`` (the
    window's held-out times, never a training target) and ``mse_extrap`` (after the window).
    The ``trajectories`` picture: for a few series, the first coordinate over time: truth
    (grey), observations (white dots), posterior mean (red), samples (blue), window end.

    Args:
        net: the latent ODE (or its registry spec when loaded from a checkpoint).
        num_pictures: series in the picture.
        picture_samples: posterior samples drawn per series in the picture.
        optimizer, scheduler, activation_checkpointing: see
            :class:`~mlnotes_zoo.lit.base.ZooModule`.
    """

    net: LatentODE

    def __init__(
        self,
        *,
        net: nn.Module | Mapping[str, Any],
        num_pictures: NonNegativeInt = 6,
        picture_samples: NonNegativeInt = 8,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(net=net, optimizer=optimizer, scheduler=scheduler, **base_kwargs)
        self.num_pictures = num_pictures
        self.picture_samples = picture_samples

    def model_step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        values, times, observed, _held_out, future = batch
        nfe_before = self.net.nfe
        mean, mu, logvar, _ = self.net(values, times, observed)
        nfe = self.count_forward(nfe_before) if stage == "train" else \
            torch.tensor(float(self.net.nfe - nfe_before))
        targets = observed + future
        recon = masked_gaussian_log_likelihood(mean, values, targets, self.net.obs_std)  # (B,)
        kl = standard_normal_kl(mu, logvar)  # (B,)
        elbo = recon - kl
        out = {"loss": -elbo.mean(), "elbo": elbo.mean(), "recon": -recon.mean(),
               "kl": kl.mean(), "nfe": nfe}
        if stage != "train":
            out.update(self.mse(batch, mu))
        return out

    @torch.no_grad()
    def mse(self, batch: Any, mu: Tensor) -> dict[str, Tensor]:
        """MSE of the posterior-mean trajectory on the observed, held-out and future times."""
        values, times, observed, held_out, future = batch
        prediction = self.net.decode(mu, times[0])
        return {"mse_observed": masked_mse(prediction, values, observed),
                "mse_interp": masked_mse(prediction, values, held_out),
                "mse_extrap": masked_mse(prediction, values, future)}

    @torch.no_grad()
    def pictures(self, batch: Any) -> dict[str, Tensor]:
        n = min(self.num_pictures, len(batch[0]))
        if n == 0:
            return {}
        values, times, observed, held_out, future = (t[:n] for t in batch)
        grid = times[0]
        mu, logvar = self.net.encode(values, grid, observed)
        mean = self.net.decode(mu, grid)  # (n, T, D)
        z0 = mu + torch.exp(0.5 * logvar) * torch.randn(self.picture_samples, *mu.shape,
                                                        device=mu.device)
        samples = self.net.decode(z0, grid)  # (S, n, T, D)
        panels = [_trajectory_panel(grid, values[i, :, 0], observed[i], future[i],
                                    mean[i, :, 0], samples[:, i, :, 0]) for i in range(n)]
        return {"trajectories": torch.cat(panels, dim=1)}


def _trajectory_panel(times: Tensor, truth: Tensor, observed: Tensor, future: Tensor,
                      mean: Tensor, samples: Tensor, width: int = 320,
                      height: int = 90) -> Tensor:
    """One series' first coordinate over time as a (3, height, width) image in [0, 1]."""
    from PIL import Image, ImageDraw
    from torchvision.transforms.functional import pil_to_tensor

    everything = torch.cat([truth, mean, samples.flatten()])
    low, high = float(everything.min()), float(everything.max())
    span = max(high - low, 1e-6)
    t0, t1 = float(times[0]), float(times[-1])

    def xy(t: Tensor, v: Tensor) -> list[tuple[float, float]]:
        xs = (t - t0) / (t1 - t0) * (width - 9) + 4
        ys = height - 5 - (v - low) / span * (height - 9)
        return list(zip(xs.tolist(), ys.tolist(), strict=True))

    image = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    if bool(future.any()):
        x_end = xy(times[future.argmax()].reshape(1), truth[:1])[0][0]
        draw.line([(x_end, 0), (x_end, height)], fill=(70, 70, 70))
    for sample in samples:
        draw.line(xy(times, sample), fill=(40, 80, 200))
    draw.line(xy(times, truth), fill=(150, 150, 150), width=2)
    draw.line(xy(times, mean), fill=(230, 40, 40), width=2)
    seen = observed.bool()
    for x, y in xy(times[seen], truth[seen]):
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(255, 255, 255))
    draw.line([(0, height - 1), (width, height - 1)], fill=(255, 255, 255))  # panel border
    return pil_to_tensor(image).float() / 255
