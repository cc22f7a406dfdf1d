"""LightningModule for k-means and Gaussian mixtures: EM epochs as training epochs.

Each training batch is an E step whose sums (:meth:`GaussianMixture.statistics`) are added up
by :class:`EMStep`, the optimizer Lightning steps under manual optimization; the epoch's
last batch also takes the M step from the whole epoch's sums. One epoch is therefore one
full-batch EM (or Lloyd) iteration, whatever the batch size, and ``train/lower_bound`` at
that step is scikit-learn's ``lower_bound_`` of the iteration. No gradients anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.utils import make_grid

from mlnotes_zoo.constraints import NonNegativeFloat, NonNegativeInt
from mlnotes_zoo.errors import UsageError
from mlnotes_zoo.lit.base import ZooModule, _batch_size
from mlnotes_zoo.models.mixture import GaussianMixture, KMeans, cluster_purity


class EMStep(torch.optim.Optimizer):
    """EM's M step as an optimizer. ``step(statistics=...)`` adds one batch's E-step sums to
    the optimizer state; ``step(statistics=..., m_step=True)`` also re-estimates the
    network's parameters from all the sums since the last M step and clears them.

    Under DDP the sums are added over the ranks before the M step.
    The sums live in ``state``, hence in the checkpoint's optimizer state: a run stopped
    mid-epoch resumes with the half-epoch's sums (exact resume), and Lightning counts each
    step in ``global_step``. ``lower_bound`` (mean log-likelihood of the last M step's data
    under the parameters before it; minus the mean inertia for k-means) is kept too.
    """

    def __init__(self, net: GaussianMixture | KMeans) -> None:
        params = [b for b in net.buffers() if b.is_floating_point()]
        super().__init__(params, {})
        self.net = net
        self._anchor = params[0]  # the state entry the sums are kept under

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *,  # type: ignore[override]
             statistics: Mapping[str, Tensor] | None = None, m_step: bool = False) -> None:
        if closure is not None:
            closure()  # Lightning's (empty under manual optimization)
        state = self.state[self._anchor]
        sums = {k: v for k, v in state.items() if k != "lower_bounds"}
        for key, value in (statistics or {}).items():
            sums[key] = sums[key] + value if key in sums else value.clone()
        if m_step and sums:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                # DDP: each rank summed its shard of the epoch; the M step needs all of it,
                # and every rank then takes the same step (the parameters stay identical)
                for value in sums.values():
                    torch.distributed.all_reduce(value)
            self.net.m_step(sums)
            mean = (sums["log_likelihood"] if "log_likelihood" in sums
                    else -sums["inertia"]) / sums["count"]
            previous = state.get("lower_bounds", mean.new_empty(0))
            state.clear()
            state["lower_bounds"] = torch.cat([previous, mean.reshape(1)])
        else:
            state.update(sums)

    @property
    def lower_bounds(self) -> Tensor:
        """The lower bound of each M step so far (one per epoch)."""
        return self.state[self._anchor].get("lower_bounds", self._anchor.new_empty(0))


class LitMixture(ZooModule):
    """Fits :class:`~mlnotes_zoo.models.mixture.GaussianMixture` (EM) or
    :class:`~mlnotes_zoo.models.mixture.KMeans` (Lloyd) on the training images.

    The network is initialised (k-means++, PCA if asked) at the start of fitting from the
    whole training split (``datamodule.reference_data("train")``), unless a checkpoint
    already holds fitted parameters.

    Args:
        net: the mixture (or its registry spec when loaded from a checkpoint).
        tol: stop when an epoch's lower bound gains less than this (scikit-learn's ``tol``
            for mixtures; k-means stops when the inertia per example moves less); 0 runs
            every epoch of ``trainer.max_epochs``.
        num_pictures: samples in the picture grid (Gaussian mixtures).

    Logged: ``<stage>/loss`` (minus the mean log-likelihood in nats, or the mean squared
    distance to the nearest centre), ``<stage>/purity`` (each cluster labelled with its
    commonest digit), ``train/lower_bound`` at each M step; at test time also
    ``test/log_likelihood`` and the training split's ``test/train_bic`` (mixtures) or
    ``test/train_inertia`` (k-means).
    """

    net: GaussianMixture | KMeans

    def __init__(self, *, net: nn.Module | Mapping[str, Any], tol: NonNegativeFloat = 1e-3,
                 num_pictures: NonNegativeInt = 64, **base_kwargs: Any) -> None:
        for key in ("optimizer", "scheduler"):
            if base_kwargs.get(key) is not None:
                raise UsageError(f"LitMixture fits by EM, not by gradients: remove model.{key}"
                                 " (it would be ignored)")
        super().__init__(net=net, **base_kwargs)
        if not isinstance(self.net, (GaussianMixture, KMeans)):
            raise UsageError(f"LitMixture fits model=gmm or model=kmeans, not a "
                             f"{type(self.net).__name__}")
        self.automatic_optimization = False  # EMStep takes the M step; nothing to backprop
        self.tol = tol
        self.num_pictures = num_pictures
        self._clusters: list[Tensor] = []
        self._labels: list[Tensor] = []

    @property
    def is_gmm(self) -> bool:
        return isinstance(self.net, GaussianMixture)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return EMStep(self.net)

    def on_fit_start(self) -> None:
        if bool(self.net.fitted):
            return  # a checkpoint's parameters
        images = self.trainer.datamodule.reference_data("train").tensors[0].to(self.device)
        # k-means++ draws from a generator seeded by the global RNG (seed_everything)
        generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
        self.net.initialize(images, generator=generator)

    # -- training: the E step on each batch, the M step on the epoch's last -------------------
    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        optimizer = self.optimizers()
        stats = self.net.statistics(batch[0])
        out = {"loss": self._batch_loss(stats)}
        self.check_finite(out)
        last = batch_idx + 1 >= self.trainer.num_training_batches
        optimizer.step(statistics=stats, m_step=last)
        if last:
            bounds = optimizer.optimizer.lower_bounds
            out["lower_bound"] = bounds[-1]
            if self.tol > 0 and len(bounds) > 1 and abs(float(bounds[-1] - bounds[-2])) < self.tol:
                self.trainer.should_stop = True  # converged, as scikit-learn's tol
        if last or self.logs_this_step(self.global_step - 1):
            self.log_outputs("train", out, _batch_size(batch))
        return out

    def _batch_loss(self, stats: Mapping[str, Tensor]) -> Tensor:
        total = stats["log_likelihood"] if self.is_gmm else -stats["inertia"]
        return (-total / stats["count"]).float()

    # -- validation / test -------------------------------------------------------------------
    def model_step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        x, labels = batch[0], batch[1]
        if self.is_gmm:
            log_resp, log_likelihood = self.net(x)
            clusters, loss = log_resp.argmax(1), -log_likelihood.mean()
        else:
            sq_distances, clusters = self.net(x)
            loss = sq_distances.min(1).values.mean()
        self._clusters.append(clusters)
        self._labels.append(labels)
        out = {"loss": loss.float()}
        if stage == "test" and self.is_gmm:
            out["log_likelihood"] = -out["loss"]
        return out

    def on_validation_epoch_start(self) -> None:
        self._clusters, self._labels = [], []

    on_test_epoch_start = on_validation_epoch_start

    def on_validation_epoch_end(self) -> None:
        self.log_purity("val")

    def on_test_epoch_end(self) -> None:
        self.log_purity("test")
        train = self.trainer.datamodule.reference_data("train").tensors[0].to(self.device)
        if self.is_gmm:
            self.log("test/train_bic", self.net.bic(train))
        else:
            self.log("test/train_inertia", -self.net.score(train))

    def log_purity(self, stage: str) -> None:
        if not self._clusters:
            return
        clusters, labels = torch.cat(self._clusters), torch.cat(self._labels)
        k = self.net.num_components if self.is_gmm else self.net.num_clusters
        purity = cluster_purity(clusters, labels, k, int(labels.max()) + 1)
        self.log(f"{stage}/purity", purity, sync_dist=True)

    # -- pictures ----------------------------------------------------------------------------
    @torch.no_grad()
    def pictures(self, batch: Any) -> dict[str, Tensor]:
        if len(self.net.in_shape) != 3:
            return {}
        grids = {}
        if self.is_gmm:
            generator = torch.Generator().manual_seed(0)  # the same draws every epoch
            samples, _ = self.net.sample(self.num_pictures, generator=generator)
            grids["samples"] = _grid(samples)
            grids["means"] = _grid(self.net.projection.inverse(self.net.means))
        else:
            grids["centres"] = _grid(self.net.projection.inverse(self.net.cluster_centers))
        return grids


def _grid(images: Tensor) -> Tensor:
    return make_grid(images.float().clamp(0, 1).cpu(), nrow=8, padding=1, pad_value=0.5)
