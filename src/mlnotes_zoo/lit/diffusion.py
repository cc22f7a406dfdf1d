"""LightningModule for DDPM: L_simple (or v) training with an EMA of the weights, DDIM and
ancestral samples judged by FID and class coverage in the GAN family's classifier features,
classifier-free guidance, sample grids and denoising trajectories."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.utils import make_grid

from mlnotes_zoo.constraints import (
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    Seed,
    UnitInterval,
)
from mlnotes_zoo.lit.base import ZooModule
from mlnotes_zoo.lit.sample_quality import ClassifierJudged
from mlnotes_zoo.models.diffusion import DDPM, mean_fill, nearest_fill, repaint
from mlnotes_zoo.models.gan import class_coverage, classifier_fid


class LitDiffusion(ClassifierJudged, ZooModule):
    """Trains :class:`~mlnotes_zoo.models.diffusion.DDPM` on L_simple (Ho et al. 2020,
    Algorithm 1) or the v loss; images arrive in [0, 1] and are mapped to [−1, 1].

    Samples come from an exponential moving average of the weights (``ema_decay``; 0 samples
    with the trained weights), kept in the checkpoint (``ema.*``) so a resumed run continues
    exactly. ``val/loss`` and ``test/loss`` are the loss at t and ε drawn from a seeded
    generator (the same draws every epoch), with the EMA weights.

    Test metrics, in the feature space of the GAN family's classifier (trained once on the
    training split, cached; :mod:`mlnotes_zoo.models.gan.fid_classifier`) — the same metric
    and floor as ``dcgan``/``wgan_gp``: ``fid`` and ``class_coverage`` of DDIM samples
    (``sample_steps`` steps, ``ddim_eta``), ``sample_seconds`` for them, ``fid_floor``,
    ``classifier_acc``; with ``ancestral_eval`` also ``fid_ancestral``,
    ``class_coverage_ancestral``, ``sample_seconds_ancestral`` (T steps). A class-conditional
    net adds, for each guidance weight w, ``guided_acc_w<w>`` (the classifier's accuracy on
    samples asked for class y = i mod K) and ``fid_w<w>``. With ``vlb_eval``: ``bpd`` (the
    bound in bits/dim) and its terms ``bpd_prior``, ``bpd_diffusion``, ``bpd_decoder``. With
    ``inpaint_eval``: ``inpaint_mse``, the mean squared error per hidden pixel (in [0, 1]) of
    the test images' lower half filled from the upper half by the mean of
    ``inpaint_samples`` fills of :meth:`DDPM.inpaint` (an estimate of the posterior mean, the
    fill of least expected squared error); ``inpaint_mse_single`` of one fill; beside the
    baselines ``inpaint_mse_mean_fill`` (the training mean) and ``inpaint_mse_nearest``
    (the training image nearest on the visible half). With ``inpaint_resample`` > 1 also
    ``inpaint_mse_repaint`` (and ``_single``): the same fills with RePaint's resampling
    (:func:`~mlnotes_zoo.models.diffusion.repaint`, Lugmayr et al. 2022).

    Args:
        net: the DDPM (or its registry spec when loaded from a checkpoint).
        ema_decay: decay of the weights' moving average used for sampling (0: none).
        label_dropout: share of labels replaced by the null label ∅ in training
            (classifier-free guidance; class-conditional nets only).
        sample_steps: DDIM steps of the evaluation samples and pictures.
        ddim_eta: DDIM's η (0 deterministic, 1 ancestral-like).
        ancestral_eval: also score T-step ancestral samples at test (slow: T net calls).
        ancestral_variance: σ_t² = β_t or β̃_t of the ancestral sampler (and of p_θ in the
            variational bound).
        inpaint_eval: score inpainting of the test images' lower half (see below).
        inpaint_samples: fills averaged per image for ``inpaint_mse``.
        inpaint_jump, inpaint_resample: RePaint's jump length r (DDIM steps gone back) and
            resamplings U (1: none) of the ``inpaint_mse_repaint`` fills.
        vlb_eval: also the variational bound on −log P(x) of the test split in bits/dim
            (T net calls per batch), on the data's discrete levels as ``realnvp``/``glow``.
        guidance_weights: the w at which a class-conditional net is scored.
        classifier_dir, classifier_steps, fid_max_samples, coverage_min_share: as in
            :class:`~mlnotes_zoo.lit.gan.LitGAN`.
        num_pictures: images in the sample grid.
        pictures_every_n_epochs: draw the pictures (T/steps net calls each) only on every
            n-th validation epoch; the others return none.
        trajectory_steps: snapshots x_T … x_0 per row of the trajectory picture.
        eval_seed: seed of the evaluation noise.
        optimizer, scheduler, activation_checkpointing: see :class:`ZooModule`.
    """

    net: DDPM

    def __init__(
        self,
        *,
        net: nn.Module | Mapping[str, Any],
        ema_decay: UnitInterval = 0.995,
        label_dropout: Fraction = 0.1,
        sample_steps: PositiveInt = 50,
        ddim_eta: NonNegativeFloat = 0.0,
        ancestral_eval: bool = False,
        ancestral_variance: Literal["beta", "beta_tilde"] = "beta",
        vlb_eval: bool = False,
        inpaint_eval: bool = True,
        inpaint_samples: PositiveInt = 4,
        inpaint_jump: NonNegativeInt = 5,
        inpaint_resample: PositiveInt = 1,
        guidance_weights: list[NonNegativeFloat] = (0.0, 1.0, 3.0),
        classifier_dir: str | None = "data/classifiers",
        classifier_steps: PositiveInt = 1500,
        fid_max_samples: PositiveInt = 10000,
        coverage_min_share: Fraction = 0.5,
        num_pictures: NonNegativeInt = 64,
        pictures_every_n_epochs: PositiveInt = 1,
        trajectory_steps: PositiveInt = 10,
        eval_seed: Seed = 1234,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(net=net, **base_kwargs)
        self.ema_decay = ema_decay
        self.label_dropout = label_dropout
        self.sample_steps = sample_steps
        self.ddim_eta = ddim_eta
        self.ancestral_eval = ancestral_eval
        self.ancestral_variance = ancestral_variance
        self.vlb_eval = vlb_eval
        self.inpaint_eval = inpaint_eval
        self.inpaint_samples = inpaint_samples
        self.inpaint_jump = inpaint_jump
        self.inpaint_resample = inpaint_resample
        self.guidance_weights = [float(w) for w in guidance_weights]
        self.classifier_dir = classifier_dir
        self.classifier_steps = classifier_steps
        self.fid_max_samples = fid_max_samples
        self.coverage_min_share = coverage_min_share
        self.num_pictures = num_pictures
        self.pictures_every_n_epochs = pictures_every_n_epochs
        self.trajectory_steps = trajectory_steps
        self.eval_seed = eval_seed
        self.ema = (AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(ema_decay),
                                  use_buffers=True).requires_grad_(False)
                    if ema_decay > 0 else None)  # averaged, never trained
        self._step_generator = torch.Generator().manual_seed(eval_seed + 1)
        self._eval: dict[str, Any] = {}  # the classifier: out of the state_dict

    @property
    def sampler(self) -> DDPM:
        """The network samples come from: the EMA weights when there are any."""
        return self.ema.module if self.ema is not None else self.net

    # -- training / evaluation -----------------------------------------------------------
    def model_step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        x0 = batch[0] * 2 - 1  # [0, 1] -> [−1, 1]
        y = batch[1] if self.net.num_classes else None
        if stage == "train":
            return {"loss": self.net.loss(x0, y, label_dropout=self.label_dropout)}
        return {"loss": self.sampler.loss(x0, y, generator=self._step_generator)}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(_Full(self.net))  # θ_ema ← d·θ_ema + (1 − d)·θ

    def on_validation_epoch_start(self) -> None:
        self._step_generator = torch.Generator().manual_seed(self.eval_seed + 1)

    def on_test_epoch_start(self) -> None:
        self._step_generator = torch.Generator().manual_seed(self.eval_seed + 1)

    # -- sampling --------------------------------------------------------------------------
    @torch.no_grad()
    def samples(self, n: int, *, ancestral: bool = False, labels: Tensor | None = None,
                guidance: float = 1.0, chunk: int = 1000) -> Tensor:
        """n images in [0, 1] (n, C, H, W) from the fixed evaluation noise."""
        net = self.sampler
        was_training = net.training
        net.eval()
        gen = torch.Generator().manual_seed(self.eval_seed)
        out = []
        for i in range(0, n, chunk):
            m = min(chunk, n - i)
            y = labels[i:i + m].to(self.device) if labels is not None else None
            if ancestral:
                x = net.sample_ancestral(m, variance=self.ancestral_variance, y=y,
                                         guidance=guidance, generator=gen)
            else:
                x = net.sample_ddim(m, steps=self.sample_steps, eta=self.ddim_eta, y=y,
                                    guidance=guidance, generator=gen)
            out.append(((x + 1) / 2).clamp(0, 1))
        net.train(was_training)
        return torch.cat(out)

    # -- test metrics ----------------------------------------------------------------------
    def on_test_epoch_end(self) -> None:
        if not self._has_reference_data():
            return
        evaluator = self._evaluator()
        classifier = evaluator["classifier"]
        train_x = self._split("train")[0][: self.fid_max_samples]
        test_x = self._split("test")[0]
        n, k = len(train_x), classifier.num_classes
        metrics = {"test/classifier_acc": torch.tensor(evaluator["classifier_acc"]),
                   "test/fid_floor": self._fid(train_x.to(self.device))}
        runs = [("", False)] + ([("_ancestral", True)] if self.ancestral_eval else [])
        for suffix, ancestral in runs:
            start = time.perf_counter()
            samples = self.samples(n, ancestral=ancestral)
            metrics[f"test/sample_seconds{suffix}"] = torch.tensor(time.perf_counter() - start)
            metrics[f"test/fid{suffix}"] = self._fid(samples)
            preds = self._predict(samples)
            metrics[f"test/class_coverage{suffix}"] = class_coverage(
                preds, k, self.coverage_min_share)
        if self.net.num_classes:
            labels = torch.arange(n) % self.net.num_classes
            for w in self.guidance_weights:
                samples = self.samples(n, labels=labels, guidance=w)
                name = f"w{w:g}"
                metrics[f"test/guided_acc_{name}"] = (
                    self._predict(samples).cpu() == labels).float().mean()
                metrics[f"test/fid_{name}"] = self._fid(samples)
        if self.vlb_eval:
            metrics.update(self._bound(test_x))
        if self.inpaint_eval:
            metrics.update(self._inpaint_metrics(self._split("train")[0], test_x))
        self.log_dict({key: value.float() for key, value in metrics.items()})

    def inpaint_mask(self, like: Tensor) -> Tensor:
        """1 on the upper half of the rows (visible), 0 on the lower half: (1, 1, H, 1)."""
        h = like.shape[-2]
        return (torch.arange(h, device=like.device) < h // 2).to(like.dtype).view(1, 1, h, 1)

    @torch.no_grad()
    def inpaint(self, images: Tensor, fills: int = 1, *, resample: int = 1) -> Tensor:
        """``images`` in [0, 1] with their lower half filled by the model, in [0, 1]:
        (fills, B, C, H, W); ``resample`` > 1: RePaint's resampling (``inpaint_jump``)."""
        net = self.sampler
        was_training = net.training
        net.eval()
        mask = self.inpaint_mask(images).to(self.device)
        gen = torch.Generator().manual_seed(self.eval_seed + 3)
        out = torch.stack([
            torch.cat([repaint(net, chunk.to(self.device) * 2 - 1, mask, steps=self.sample_steps,
                               eta=self.ddim_eta, jump=self.inpaint_jump, resample=resample,
                               generator=gen)
                       for chunk in images.split(1000)])
            for _ in range(fills)])
        net.train(was_training)
        return ((out + 1) / 2).clamp(0, 1)

    def _inpaint_metrics(self, train: Tensor, images: Tensor) -> dict[str, Tensor]:
        mask = self.inpaint_mask(images)
        hidden = (1 - mask).expand_as(images).sum() * 1.0

        def mse(filled: Tensor) -> Tensor:
            return (((filled.cpu() - images) ** 2) * (1 - mask)).sum() / hidden

        fills = self.inpaint(images, self.inpaint_samples)
        out = {"test/inpaint_mse": mse(fills.mean(0)), "test/inpaint_mse_single": mse(fills[0]),
               "test/inpaint_mse_mean_fill": mse(mean_fill(train, images, mask)),
               "test/inpaint_mse_nearest": mse(nearest_fill(train, images, mask))}
        if self.inpaint_resample > 1:  # RePaint's resampling, beside the plain fills
            fills = self.inpaint(images, self.inpaint_samples, resample=self.inpaint_resample)
            out["test/inpaint_mse_repaint"] = mse(fills.mean(0))
            out["test/inpaint_mse_repaint_single"] = mse(fills[0])
        return out

    def _bound(self, images: Tensor) -> dict[str, Tensor]:
        """The variational bound's terms in bits/dim, means over ``images`` in [0, 1]."""
        levels = int(getattr(self.trainer.datamodule, "levels", 256))
        net = self.sampler
        was_training = net.training
        net.eval()
        terms = net.bound_bits_per_dim(images, levels=levels, variance=self.ancestral_variance,
                                       generator=torch.Generator().manual_seed(self.eval_seed + 2))
        net.train(was_training)
        return {("test/bpd" if k == "total" else f"test/bpd_{k}"): v.mean().float()
                for k, v in terms.items()}

    def _predict(self, images: Tensor) -> Tensor:
        classifier = self._evaluator()["classifier"]
        return torch.cat([classifier(c).argmax(-1) for c in images.split(1000)])

    def _fid(self, images: Tensor) -> Tensor:
        """FID of ``images`` against the test split (as LitGAN's ``test/fid``)."""
        fid = classifier_fid(self._evaluator()["classifier"]).to(self.device)
        for chunk in self._split("test")[0].split(1000):
            fid.update(chunk.to(self.device), real=True)
        for chunk in images.split(1000):
            fid.update(chunk.to(self.device), real=False)
        return fid.compute().float()

    def setup(self, stage: str) -> None:
        # the classifier is needed at test only; train (or load) it outside the test loop
        if stage == "test" and self._has_reference_data():
            self._evaluator()

    # -- pictures ------------------------------------------------------------------------
    @torch.no_grad()
    def pictures(self, batch: Any) -> dict[str, Tensor]:
        if self._trainer is not None and self.current_epoch % self.pictures_every_n_epochs:
            return {}
        grids = {}
        if self.num_pictures:
            grids["samples"] = make_grid(self.samples(self.num_pictures), nrow=8, padding=1,
                                         pad_value=0.5)
        # denoising trajectory: one row per sample, x_T (left) -> x_0 (right), DDIM steps
        net = self.sampler
        was_training = net.training
        net.eval()
        _, path = net.sample_ddim(8, steps=self.sample_steps, eta=self.ddim_eta,
                                  generator=torch.Generator().manual_seed(self.eval_seed),
                                  trajectory=self.trajectory_steps)  # (8, k, C, H, W)
        grids["trajectory"] = make_grid(((path.flatten(0, 1) + 1) / 2).clamp(0, 1),
                                        nrow=path.shape[1], padding=1, pad_value=0.5)
        if self.inpaint_eval:  # rows: visible upper half / model's fill / truth
            truth = batch[0][:8].to(self.device)
            shown = truth * self.inpaint_mask(truth) + 0.5 * (1 - self.inpaint_mask(truth))
            grids["inpainting"] = make_grid(torch.cat([shown, self.inpaint(truth)[0], truth]),
                                            nrow=len(truth), padding=1, pad_value=0.5)
        if net.num_classes:  # one row per class at the largest guidance weight
            k = net.num_classes
            labels = torch.arange(k).repeat_interleave(8)
            grids["guided"] = make_grid(
                self.samples(8 * k, labels=labels, guidance=max(self.guidance_weights)),
                nrow=8, padding=1, pad_value=0.5)
        net.train(was_training)
        return grids


class _Full:
    """The parameters and buffers of ``net`` as whole tensors: under FSDP2 (trainer=fsdp) each
    rank holds a shard (a DTensor) and gathers the rest here, so the EMA copy is an ordinary
    full network on every rank that samples without collectives (pictures run on rank 0)."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net

    @staticmethod
    def _whole(tensors: Any) -> Any:
        return (t.full_tensor() if hasattr(t, "full_tensor") else t for t in tensors)

    def parameters(self) -> Any:
        return self._whole(self.net.parameters())

    def buffers(self) -> Any:
        return self._whole(self.net.buffers())
