"""A small image classifier that the package trains once, used to judge generated samples.

Inception-v3 (the usual FID feature extractor) knows nothing of 8×8 digits and cannot be
downloaded here, so the GAN family measures samples in the feature space of a small CNN
trained on the same dataset's training split (Heusel et al. 2017 define FID for any
feature map; torchmetrics' ``FrechetInceptionDistance(feature=<nn.Module>)`` takes one):

    FID = ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^{1/2})

over the classifier's penultimate features of real (r) and generated (g) images. Its class
predictions also tell which of the classes the samples cover (mode dropping).

The classifier is trained with a fixed seed inside ``torch.random.fork_rng`` (so caching
it or not never changes the caller's random stream) and cached as
``<cache_dir>/classifier-<C>x<H>x<W>-<data digest>-seed<seed>.pt`` with its test accuracy.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from torchmetrics.image.fid import FrechetInceptionDistance

__all__ = [
    "DigitsClassifier",
    "ClassifierFeatures",
    "train_classifier",
    "classifier_accuracy",
    "load_or_train_classifier",
    "classifier_fid",
    "class_coverage",
]

class DigitsClassifier(nn.Module):
    """Three 3×3 conv layers (two of stride 2), a small pooled map, a feature layer, logits.

    ``features(x)``: (B, num_features) penultimate activations; ``forward(x)``: (B, K) logits.
    Inputs are images in [0, 1] of shape ``in_shape``.
    """

    def __init__(self, *, in_shape: tuple[int, int, int], num_classes: int = 10,
                 width: int = 32, num_features: int = 64) -> None:
        super().__init__()
        c, h, w = in_shape
        self.in_shape = tuple(in_shape)
        self.num_classes = num_classes
        self.num_features = num_features
        pooled = max(1, min(4, h // 4, w // 4))
        self.body = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.ReLU(),  # (B, w, H, W)
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),  # (B, 2w, H/2, W/2)
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),  # (B, 2w, H/4, W/4)
            nn.AdaptiveAvgPool2d(pooled),  # (B, 2w, p, p)
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(2 * width * pooled * pooled, num_features), nn.ReLU(),
        )
        self.head = nn.Linear(num_features, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class ClassifierFeatures(nn.Module):
    """The classifier's features as torchmetrics' FID ``feature=`` extractor: (B, F) float."""

    def __init__(self, classifier: DigitsClassifier) -> None:
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)
        self.num_features = classifier.num_features

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier.features(x.float())

    def train(self, mode: bool = True) -> ClassifierFeatures:
        return super().train(False)  # always eval: dropout off, features deterministic


def train_classifier(x: Tensor, y: Tensor, *, num_classes: int = 10, steps: int = 1500,
                     batch_size: int = 64, lr: float = 2e-3, seed: int = 0) -> DigitsClassifier:
    """Adam on cross-entropy for ``steps`` minibatches of (x, y), seeded; returns eval mode.

    A fixed number of steps rather than epochs, so the cost does not grow with the dataset.
    Runs on ``x``'s device.
    """
    # fork_rng: the caller's random stream is the same whether or not we trained here;
    # enable_grad: callers may be inside an evaluation loop's no-grad/inference mode
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        torch.manual_seed(seed)
        model = DigitsClassifier(in_shape=tuple(x.shape[1:]), num_classes=num_classes).to(x.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
        gen = torch.Generator().manual_seed(seed)
        order = torch.empty(0, dtype=torch.long)
        for _ in range(steps):
            if len(order) < batch_size:
                order = torch.cat([order, torch.randperm(len(x), generator=gen)])
            idx, order = order[:batch_size], order[batch_size:]
            xb, yb = x[idx.to(x.device)], y[idx.to(x.device)]
            # one-pixel random shifts: a little augmentation, the sets are small
            shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
            xb = torch.roll(xb, shifts=shift, dims=(-2, -1))
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def classifier_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``x`` whose argmax logit equals ``y``."""
    preds = torch.cat([model(xb).argmax(-1) for xb in x.split(batch_size)])
    return float((preds == y).float().mean())


def _digest(x: Tensor, y: Tensor) -> str:
    """Short content hash of a split: the cache key changes whenever the data do."""
    h = hashlib.sha1()
    h.update(x.mul(255).round().to(torch.uint8).cpu().numpy().tobytes())
    h.update(y.to(torch.int64).cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def load_or_train_classifier(
    cache_dir: str | os.PathLike | None,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    *,
    num_classes: int = 10,
    steps: int = 1500,
    seed: int = 0,
) -> tuple[DigitsClassifier, float]:
    """The classifier for this training split (cached under ``cache_dir``) and its accuracy
    on ``test``. ``cache_dir=None`` trains without caching."""
    x, y = train
    c, h, w = x.shape[1:]
    path = None
    if cache_dir is not None:
        key = f"classifier-{c}x{h}x{w}-{_digest(x, y)}-steps{steps}-seed{seed}.pt"
        path = Path(cache_dir).expanduser() / key
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            with torch.random.fork_rng(devices=[]):  # the throw-away init draws random numbers
                model = DigitsClassifier(**saved["kwargs"])
            model.load_state_dict(saved["state_dict"])
            return model.eval(), float(saved["test_accuracy"])
    model = train_classifier(x, y, num_classes=num_classes, steps=steps, seed=seed)
    accuracy = classifier_accuracy(model, *test)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"in_shape": [int(c), int(h), int(w)], "num_classes": num_classes}
        state = {k: v.cpu() for k, v in model.state_dict().items()}
        # write-then-rename: a concurrent run never reads a half-written file
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as f:
            torch.save({"kwargs": kwargs, "state_dict": state, "test_accuracy": accuracy}, f)
        os.replace(f.name, path)
    return model, accuracy


def classifier_fid(classifier: DigitsClassifier, **kwargs) -> FrechetInceptionDistance:
    """torchmetrics' FID in the classifier's feature space; images float in [0, 1]."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=ClassifierFeatures(classifier), normalize=True,
                                    **kwargs)


def class_coverage(predictions: Tensor, num_classes: int, min_share: float = 0.5) -> Tensor:
    """Fraction of the classes predicted for at least ``min_share`` of their fair share.

    A class counts as covered when it receives ≥ min_share · N / K of the N predictions, so
    a handful of stray samples does not hide a dropped mode. Returns a scalar in [0, 1].
    """
    counts = torch.bincount(predictions.flatten(), minlength=num_classes)[:num_classes]
    return (counts >= min_share * predictions.numel() / num_classes).float().mean()
