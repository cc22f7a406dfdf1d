"""LightningModule for SimCLR / SupCon: contrastive training, frozen-feature evaluation.

Training: two random views of each image (``ContrastiveAugment``), one forward of both, and
NT-Xent (``loss="nt_xent"``, self-supervised) or SupCon (``loss="supcon"``, labels) on the
projections. Evaluation freezes the encoder and classifies its features h:

- k-NN (the notes' k-nearest neighbours, cosine similarity, k = ⌈ln N⌉ by default — the
  notes' rule of thumb) and a linear probe (scikit-learn logistic regression on standardised
  features), each fitted on all training labels and on 10 labels per class (the mean over
  ``few_shot_draws`` seeded draws);
- the same four numbers for two baselines: raw pixels and a randomly initialised encoder of
  the same architecture.

Validation logs ``val/knn_acc`` (all labels) each epoch, the metric that picks the best
checkpoint; test logs everything above (``test/probe_acc_10pc``, ``test/pixels_probe_acc_10pc``,
``test/random_probe_acc_10pc``, …), which lands in ``metrics.json``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision.utils import make_grid

from mlnotes_zoo.constraints import Field, NonNegativeInt, PositiveFloat, PositiveInt
from mlnotes_zoo.lit.base import OptimizerFactory, SchedulerFactory, ZooModule
from mlnotes_zoo.models.simclr import ContrastiveAugment, SimCLR, nt_xent, supcon

Temperature = Annotated[float, Field(gt=0, description="the contrastive temperature τ")]


class LitSimCLR(ZooModule):
    """Trains :class:`~mlnotes_zoo.models.simclr.SimCLR` contrastively; evaluates frozen h.

    Args:
        net: the network (or its registry spec when loaded from a checkpoint).
        loss: ``"nt_xent"`` (SimCLR, no labels) or ``"supcon"`` (labels give the positives).
        temperature: τ of the loss.
        augment: the view augmentation; :class:`ContrastiveAugment` defaults when None
            (pass a dict of its keyword arguments from the config).
        knn_k: neighbours of the k-NN classifier; ⌈ln N⌉ of the labelled set when None.
        labels_per_class: labelled examples per class of the few-label evaluation.
        few_shot_draws: seeded draws of the few-label subset; the metrics are their mean.
        probe_c: inverse L2 strength of the logistic-regression probe.
        baselines: also evaluate raw pixels and a randomly initialised encoder at test time.
        num_pictures: images shown with their two views in the ``views`` picture.
        optimizer, scheduler, activation_checkpointing: see
            :class:`~mlnotes_zoo.lit.base.ZooModule`.

    The labelled bank of the evaluation is the DataModule's ``reference_data("train")``.
    """

    net: SimCLR

    def __init__(
        self,
        *,
        net: nn.Module | Mapping[str, Any],
        loss: Literal["nt_xent", "supcon"] = "nt_xent",
        temperature: Temperature = 0.5,
        augment: Mapping[str, Any] | None = None,
        knn_k: PositiveInt | None = None,
        labels_per_class: PositiveInt = 10,
        few_shot_draws: PositiveInt = 5,
        probe_c: PositiveFloat = 1.0,
        baselines: bool = True,
        num_pictures: NonNegativeInt = 16,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        activation_checkpointing: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(net=net, optimizer=optimizer, scheduler=scheduler,
                         activation_checkpointing=activation_checkpointing, compile=compile)
        self.loss_name = loss
        self.temperature = temperature
        self.augment = ContrastiveAugment(**dict(augment or {}))
        self.knn_k = knn_k
        self.labels_per_class = labels_per_class
        self.few_shot_draws = few_shot_draws
        self.probe_c = probe_c
        self.baselines = baselines
        self.num_pictures = num_pictures
        self._eval_batches: list[tuple[Tensor, Tensor, Tensor]] = []

    # -- training ----------------------------------------------------------------------
    def contrastive_loss(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        n = x.shape[0]
        with torch.no_grad():
            views = torch.cat([self.augment(x), self.augment(x)])  # (2n, C, H, W)
        # One forward for both views, so BatchNorm normalises them together (as SimCLR).
        z = self.net(views).projections  # (2n, D)
        z1, z2 = z[:n], z[n:]
        if self.loss_name == "nt_xent":
            loss = nt_xent(z1, z2, self.temperature)
        else:
            loss = supcon(torch.stack([z1, z2], dim=1), y, self.temperature)  # (n, 2, D)
        with torch.no_grad():  # how often a view's nearest other view is its partner
            zn = nn.functional.normalize(z.detach(), dim=1)
            sim = (zn @ zn.T).fill_diagonal_(-2)
            partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
            pos_top1 = (sim.argmax(1) == partner).float().mean()
        return {"loss": loss, "positive_top1": pos_top1}

    def model_step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        x, y = batch[0], batch[1]
        out = self.contrastive_loss(x, y)
        if stage in ("val", "test"):
            # frozen features of the un-augmented images, for the k-NN / probe evaluation
            self._eval_batches.append((self.net(x).features.detach(), x.detach(), y.detach()))
        return out

    # -- evaluation ----------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._eval_batches = []

    def on_test_epoch_start(self) -> None:
        self._eval_batches = []

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self._eval_batches:
            return
        train_h, _, train_y = self._train_split_features(self.net)
        eval_h, _, eval_y = self._gathered_eval_batches()
        acc = knn_accuracy(train_h, train_y, eval_h, eval_y, self.knn_k)
        self.log("val/knn_acc", acc, prog_bar=True, sync_dist=False)

    def on_test_epoch_end(self) -> None:
        if not self._eval_batches:
            return
        train_h, train_x, train_y = self._train_split_features(self.net)
        test_h, test_x, test_y = self._gathered_eval_batches()
        candidates = {"": (train_h, test_h)}
        if self.baselines:
            candidates["pixels_"] = (train_x.flatten(1), test_x.flatten(1))
            random_net = self._random_init_copy()
            # the same images in the same order as train_y (the loader shuffles each pass)
            candidates["random_"] = (self._features(random_net, train_x),
                                     self._features(random_net, test_x))
        for prefix, (train_f, test_f) in candidates.items():
            scores = self.evaluate_features(train_f, train_y, test_f, test_y)
            for name, value in scores.items():
                self.log(f"test/{prefix}{name}", value, sync_dist=False)

    def evaluate_features(self, train_f: Tensor, train_y: Tensor, test_f: Tensor,
                          test_y: Tensor) -> dict[str, float]:
        """k-NN and linear-probe test accuracy with all labels and with few per class."""
        scores = {
            "knn_acc": knn_accuracy(train_f, train_y, test_f, test_y, self.knn_k),
            "probe_acc": probe_accuracy(train_f, train_y, test_f, test_y, self.probe_c),
        }
        few_knn, few_probe = [], []
        for draw in range(self.few_shot_draws):
            idx = few_labels_per_class(train_y, self.labels_per_class, seed=draw)
            few_knn.append(knn_accuracy(train_f[idx], train_y[idx], test_f, test_y, self.knn_k))
            few_probe.append(probe_accuracy(train_f[idx], train_y[idx], test_f, test_y,
                                            self.probe_c))
        tag = f"{self.labels_per_class}pc"  # "10pc": 10 labels per class
        scores[f"knn_acc_{tag}"] = float(np.mean(few_knn))
        scores[f"probe_acc_{tag}"] = float(np.mean(few_probe))
        return scores

    @torch.no_grad()
    def _features(self, net: nn.Module, x: Tensor, chunk: int = 512) -> Tensor:
        was_training = net.training
        net.eval()
        feats = [net(x[i:i + chunk].to(self.device)).features for i in range(0, len(x), chunk)]
        net.train(was_training)
        return torch.cat(feats).cpu()

    def _train_split_features(self, net: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
        """Features, images and labels of the whole training split (the labelled bank), in
        its stored order, so the few-label draws pick the same images in every run."""
        datamodule = self.trainer.datamodule
        if not hasattr(datamodule, "reference_data"):
            raise RuntimeError("LitSimCLR evaluates against the training split: pass a "
                               "DataModule to trainer.fit / trainer.test")
        # batched by a DataLoader: any Dataset of (image, label) items will do
        batches = list(DataLoader(datamodule.reference_data("train"), batch_size=256))
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        return self._features(net, x), x, y

    def _gathered_eval_batches(self) -> tuple[Tensor, Tensor, Tensor]:
        """This epoch's (features, images, labels), from every rank under DDP."""
        parts = [torch.cat(p) for p in zip(*self._eval_batches, strict=True)]
        self._eval_batches = []
        if self.trainer.world_size > 1:
            parts = [self.all_gather(p).flatten(0, 1) for p in parts]
        return tuple(p.cpu() for p in parts)  # type: ignore[return-value]

    def _random_init_copy(self, seed: int = 0) -> nn.Module:
        """The same architecture freshly initialised (seeded): the random-encoder baseline."""
        net = copy.deepcopy(self.net)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module in net.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        return net

    # -- pictures ------------------------------------------------------------------------
    @torch.no_grad()
    def pictures(self, batch: Any) -> dict[str, Tensor]:
        x = batch[0][: self.num_pictures]
        # rows: the images, then their two random views
        rows = torch.cat([x, self.augment(x), self.augment(x)])
        return {"views": make_grid(rows, nrow=len(x), padding=1, pad_value=0.5)}


# -- frozen-feature classifiers (scikit-learn) ---------------------------------------------
def knn_accuracy(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor,
                 k: int | None = None) -> float:
    """Accuracy of a cosine-similarity k-NN vote; k = ⌈ln N⌉ when None (the notes)."""
    from sklearn.neighbors import KNeighborsClassifier

    n = len(train_f)
    k = min(n, k if k is not None else max(1, math.ceil(math.log(n))))
    clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
    clf.fit(train_f.double().numpy(), train_y.numpy())
    return float(clf.score(test_f.double().numpy(), test_y.numpy()))


def probe_accuracy(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor,
                   c: float = 1.0) -> float:
    """Accuracy of a linear probe: multinomial logistic regression on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    clf.fit(train_f.double().numpy(), train_y.numpy())
    return float(clf.score(test_f.double().numpy(), test_y.numpy()))


def few_labels_per_class(labels: Tensor, per_class: int, seed: int) -> Tensor:
    """Indices of ``per_class`` seeded random examples of each class (all if fewer)."""
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for cls in labels.unique(sorted=True):
        idx = (labels == cls).nonzero().flatten()
        picked.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.cat(picked)
