"""LightningModule for GANs: alternating D/G updates (manual optimization), FID in a
classifier's feature space, class coverage, sample grids."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchvision.utils import make_grid

from mlnotes_zoo.constraints import (
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    Seed,
)
from mlnotes_zoo.errors import UsageError
from mlnotes_zoo.lit.base import OptimizerFactory, ZooModule, _batch_size
from mlnotes_zoo.lit.sample_quality import ClassifierJudged
from mlnotes_zoo.models.gan import (
    GAN,
    class_coverage,
    classifier_fid,
    critic_loss,
    discriminator_loss,
    gradient_penalty,
    interpolate,
    non_saturating_generator_loss,
    wasserstein_generator_loss,
)


class LitGAN(ClassifierJudged, ZooModule):
    """Trains :class:`~mlnotes_zoo.models.gan.GAN` by alternating discriminator and
    generator updates (Goodfellow et al. 2014, Algorithm 1; Gulrajani et al. 2017, Algorithm 1).

    Every training batch makes one discriminator/critic update on that real batch and a
    fresh fake batch; every ``n_critic``-th batch is followed by one generator update. The
    optimizers' states, the update counter and the random state are in the checkpoint, so a
    resumed run continues exactly as an uninterrupted one.

    Metrics (``val/…`` each epoch, ``test/…`` after fitting), in the feature space of a
    small classifier trained once on the training split
    (:mod:`mlnotes_zoo.models.gan.fid_classifier`), with the real images of the DataModule's
    ``reference_data`` (none without a DataModule):
    ``fid`` of samples vs the split; at test also ``fid_floor`` (real training images vs the
    test split, the same numbers of images: the best a generator can score),
    ``class_coverage`` (fraction of classes the samples cover) and ``classifier_acc``.

    Args:
        net: the GAN (or its registry spec when loaded from a checkpoint).
        objective: ``"non_saturating"`` (DCGAN) or ``"wasserstein"`` (WGAN-GP).
        n_critic: discriminator updates per generator update.
        gp_weight: λ of the gradient penalty λ·(‖∇D(x̂)‖₂ − 1)² (0 turns it off).
        gen_optimizer, disc_optimizer: ``functools.partial`` of optimizers taking the
            generator's / discriminator's parameters; Adam(2e-4, β=(0.5, 0.999)) when None.
        classifier_dir: where the feature classifier is cached (None: retrain every run).
        classifier_steps: its training steps (seeded; part of the cache key).
        fid_max_samples: cap on the number of generated and real training images in FID.
        coverage_min_share: a class is covered when it gets ≥ this share of N / K samples.
        num_pictures: images in the sample grid.
        eval_seed: seed of the fixed noise for validation/test samples and grids.
        activation_checkpointing: see :class:`~mlnotes_zoo.lit.base.ZooModule`.
    """

    net: GAN

    def __init__(
        self,
        *,
        net: nn.Module | Mapping[str, Any],
        objective: Literal["non_saturating", "wasserstein"] = "non_saturating",
        n_critic: PositiveInt = 1,
        gp_weight: NonNegativeFloat = 0.0,
        gen_optimizer: OptimizerFactory | None = None,
        disc_optimizer: OptimizerFactory | None = None,
        classifier_dir: str | None = "data/classifiers",
        classifier_steps: PositiveInt = 1500,
        fid_max_samples: PositiveInt = 10000,
        coverage_min_share: Fraction = 0.5,
        num_pictures: NonNegativeInt = 64,
        eval_seed: Seed = 1234,
        **base_kwargs: Any,
    ) -> None:
        for key in ("optimizer", "scheduler"):
            if base_kwargs.get(key) is not None:
                raise UsageError(f"LitGAN trains two networks: set gen_optimizer and "
                                 f"disc_optimizer, not {key}= (it would be ignored)")
        super().__init__(net=net, **base_kwargs)
        for name in ("gen_optimizer", "disc_optimizer"):  # partials: not checkpoint material
            self.hparams.pop(name, None)
            self._hparams_initial.pop(name, None)
        self.automatic_optimization = False  # two optimizers, alternating: we step them
        self.objective = objective
        self.n_critic = n_critic
        self.gp_weight = gp_weight
        default = partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999))
        self.gen_optimizer = gen_optimizer or default
        self.disc_optimizer = disc_optimizer or default
        self.classifier_dir = classifier_dir
        self.classifier_steps = classifier_steps
        self.fid_max_samples = fid_max_samples
        self.coverage_min_share = coverage_min_share
        self.num_pictures = num_pictures
        self.eval_seed = eval_seed
        self.disc_steps = 0  # discriminator updates so far (checkpointed)
        self._step_generator = torch.Generator().manual_seed(eval_seed + 1)  # reset per epoch
        # Evaluation state kept out of the module tree, hence out of the state_dict: the
        # classifier is rebuilt from its cache, never from a GAN checkpoint.
        self._eval: dict[str, Any] = {}

    # -- losses --------------------------------------------------------------------------
    def discriminator_losses(self, real: Tensor, fake: Tensor, *, penalty: bool
                             ) -> dict[str, Tensor]:
        """D's loss on a real and a (detached) fake batch, with its named parts."""
        disc = self.net.discriminator
        real_out, fake_out = disc(real), disc(fake)  # (B,), (B,)
        if self.objective == "wasserstein":
            loss = critic_loss(real_out, fake_out)
            out = {"wasserstein": -loss.detach(), "d_real": real_out.mean().detach(),
                   "d_fake": fake_out.mean().detach()}
            if penalty and self.gp_weight > 0:
                gp = gradient_penalty(disc, interpolate(real, fake))
                loss = loss + self.gp_weight * gp  # L_D = D(x̃) − D(x) + λ·(‖∇D(x̂)‖₂ − 1)²
                out["gradient_penalty"] = gp.detach()
        else:
            loss = discriminator_loss(real_out, fake_out)
            out = {"d_real_prob": torch.sigmoid(real_out).mean().detach(),
                   "d_fake_prob": torch.sigmoid(fake_out).mean().detach()}
        return {"disc_loss": loss, **out}

    def generator_loss(self, fake_out: Tensor) -> Tensor:
        if self.objective == "wasserstein":
            return wasserstein_generator_loss(fake_out)
        return non_saturating_generator_loss(fake_out)

    # -- training: manual optimization ---------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        opt_gen, opt_disc = self.optimizers()
        real = batch[0]
        gen_update = (self.disc_steps + 1) % self.n_critic == 0
        z = self.net.noise(real.shape[0])
        with torch.set_grad_enabled(gen_update):  # keep G's graph only when G updates next
            fake = self.net.generator(z)

        # 1) discriminator / critic: minimise L_D on real vs detached fakes
        out = self.discriminator_losses(real, fake.detach(), penalty=True)
        self.check_finite(out, "disc_loss")  # stops on NaN/inf unless AMP skips the step
        opt_disc.zero_grad(set_to_none=True)
        self.manual_backward(out["disc_loss"])
        opt_disc.step()
        self.disc_steps += 1

        # 2) generator, every n_critic-th batch: minimise L_G through the updated D
        if gen_update:
            disc = self.net.discriminator
            disc.requires_grad_(False)  # gradients flow through D to G, not into D's weights
            gen_loss = self.generator_loss(disc(fake))
            self.check_finite({"gen_loss": gen_loss, **out}, "gen_loss")
            opt_gen.zero_grad(set_to_none=True)
            self.manual_backward(gen_loss)
            opt_gen.step()
            disc.requires_grad_(True)
            out["gen_loss"] = gen_loss.detach()
        out["loss"] = out["disc_loss"].detach()

        if self.logs_this_step(self.disc_steps - 1):  # batches trained on before this one
            self.log_outputs("train", out, _batch_size(batch))
        return out

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        # order matters for self.optimizers(): generator first, discriminator second
        return [self.gen_optimizer(self.net.generator.parameters()),
                self.disc_optimizer(self.net.discriminator.parameters())]

    # -- validation / test: losses on held-out real batches, FID at epoch end ------------
    def model_step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        real = batch[0]
        fake = self.net.generator(self._fixed_noise(real.shape[0], self._step_generator))
        out = self.discriminator_losses(real, fake, penalty=False)  # no autograd in eval
        out["gen_loss"] = self.generator_loss(self.net.discriminator(fake))
        out["loss"] = out["disc_loss"]
        return out

    def on_validation_epoch_start(self) -> None:
        self._step_generator = torch.Generator().manual_seed(self.eval_seed + 1)

    def on_test_epoch_start(self) -> None:
        self._step_generator = torch.Generator().manual_seed(self.eval_seed + 1)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self._has_reference_data():
            return
        evaluator = self._evaluator()
        fid = evaluator["val_fid"]
        if not evaluator["val_real_done"]:
            for chunk in self._split("val")[0].split(1000):
                fid.update(chunk.to(self.device), real=True)
            evaluator["val_real_done"] = True
        fid.reset()  # fakes only: reset_real_features=False keeps the real statistics
        for chunk in self._samples(len(self._split("val")[0])).split(1000):
            fid.update(chunk, real=False)
        self.log("val/fid", fid.compute().float(), prog_bar=True)

    def on_test_epoch_end(self) -> None:
        if not self._has_reference_data():
            return
        evaluator = self._evaluator()
        classifier = evaluator["classifier"]
        train_x = self._split("train")[0][: self.fid_max_samples]
        test_x = self._split("test")[0]
        samples = self._samples(len(train_x))
        fid, floor = classifier_fid(classifier).to(self.device), \
            classifier_fid(classifier).to(self.device)
        for chunk in test_x.split(1000):
            fid.update(chunk.to(self.device), real=True)
            floor.update(chunk.to(self.device), real=True)
        for chunk in samples.split(1000):
            fid.update(chunk, real=False)
        for chunk in train_x.split(1000):
            floor.update(chunk.to(self.device), real=False)
        preds = torch.cat([classifier(chunk).argmax(-1) for chunk in samples.split(1000)])
        self.log_dict({
            "test/fid": fid.compute().float(),
            "test/fid_floor": floor.compute().float(),
            "test/class_coverage": class_coverage(preds, classifier.num_classes,
                                                  self.coverage_min_share),
            "test/classifier_acc": torch.tensor(evaluator["classifier_acc"]),
        })

    # -- evaluation helpers --------------------------------------------------------------
    def _fixed_noise(self, n: int, generator: torch.Generator) -> Tensor:
        # drawn on the CPU from a seeded generator: the same z on every device and epoch,
        # and the global random stream (data order, training noise) is left alone
        return torch.randn(n, self.net.latent_dim, generator=generator).to(self.device)

    @torch.no_grad()
    def _samples(self, n: int, chunk: int = 1000) -> Tensor:
        """n images G(z) from the fixed evaluation noise, (n, C, H, W) in [0, 1]."""
        was_training = self.net.training
        self.net.eval()
        gen = torch.Generator().manual_seed(self.eval_seed)
        out = torch.cat([self.net.generator(self._fixed_noise(min(chunk, n - i), gen))
                         for i in range(0, n, chunk)])
        self.net.train(was_training)
        return out

    def setup(self, stage: str) -> None:
        # train or load the classifier here, before the first validation: a hook that runs
        # outside the evaluation loops, so its training is not under inference mode
        if self._has_reference_data():
            self._evaluator()

    def _evaluation_extras(self, classifier: nn.Module) -> dict[str, Any]:
        # the validation FID keeps the real split's features between epochs
        return {"val_fid": classifier_fid(classifier, reset_real_features=False),
                "val_real_done": False}

    # -- pictures ------------------------------------------------------------------------
    @torch.no_grad()
    def pictures(self, batch: Any) -> dict[str, Tensor]:
        grids = {"samples": make_grid(self._samples(self.num_pictures), nrow=8, padding=1,
                                      pad_value=0.5)}
        if self._eval:
            # 8 samples per predicted class, one row per class (grey where a class is missing)
            classifier = self._evaluator()["classifier"]
            samples = self._samples(1000)
            preds = classifier(samples).argmax(-1)
            blank = torch.full_like(samples[0], 0.5)
            rows = []
            for k in range(classifier.num_classes):
                found = list(samples[preds == k][:8])
                rows += found + [blank] * (8 - len(found))
            grids["samples_by_class"] = make_grid(torch.stack(rows), nrow=8, padding=1,
                                                  pad_value=0.5)
        return grids

    # -- exact resume ----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning keeps both optimizers' states, the RandomState callback the random state
        # (next noise, interpolation ε, data order); the update counter decides which batches
        # update G and which steps are logged.
        super().on_save_checkpoint(checkpoint)
        checkpoint["gan"] = {"disc_steps": self.disc_steps}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.disc_steps = int(checkpoint.get("gan", {}).get("disc_steps", 0))
