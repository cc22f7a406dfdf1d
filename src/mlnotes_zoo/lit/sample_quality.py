"""Judging generated images in a digit classifier's features (FID, class coverage): what
LitGAN and LitDDPM share.

The classifier (``models/gan/fid_classifier.py``) is trained on the datamodule's training
split, or loaded from ``classifier_dir``, once per module, and kept out of the state_dict.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mlnotes_zoo.models.gan import load_or_train_classifier

__all__ = ["ClassifierJudged"]


class ClassifierJudged:
    """Mixin for a LightningModule with ``classifier_dir``, ``classifier_steps`` and
    ``_eval = {}`` set in its constructor."""

    classifier_dir: str | None
    classifier_steps: int
    _eval: dict[str, Any]

    def _has_reference_data(self) -> bool:
        dm = self._trainer.datamodule if self._trainer is not None else None  # type: ignore[attr-defined]
        return hasattr(dm, "reference_data")

    def _split(self, name: str) -> tuple[Tensor, Tensor]:
        """(images (N, C, H, W) in [0, 1], labels (N,)) of a whole split."""
        return self.trainer.datamodule.reference_data(name).tensors  # type: ignore[attr-defined]

    def _evaluation_extras(self, classifier: nn.Module) -> dict[str, Any]:
        """More entries of the evaluator built with the classifier (e.g. a running FID)."""
        return {}

    def _evaluator(self) -> dict[str, Any]:
        """The cached classifier, its test accuracy and :meth:`_evaluation_extras`, built on
        first use and moved to the module's device (``setup`` runs before ``.to(device)``)."""
        device = self.device  # type: ignore[attr-defined]
        if not self._eval:
            train_x, train_y = self._split("train")
            classifier, accuracy = load_or_train_classifier(
                self.classifier_dir, (train_x, train_y), self._split("test"),
                num_classes=int(train_y.max()) + 1, steps=self.classifier_steps)
            self._eval = {"device": torch.device("cpu"), "classifier": classifier,
                          "classifier_acc": accuracy, **self._evaluation_extras(classifier)}
        if self._eval["device"] != device:
            for key, value in self._eval.items():
                if isinstance(value, nn.Module):  # the classifier, torchmetrics metrics
                    self._eval[key] = value.to(device)
            self._eval["device"] = device
        return self._eval
