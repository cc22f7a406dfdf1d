"""LightningModule for HuBERT pretraining: k-means targets, then masked prediction.

At the start of fitting the targets' k-means (:class:`~mlnotes_zoo.models.mixture.KMeans`,
k-means++ and Lloyd) is fitted to frames of the unlabeled training audio (transcripts are
never read): MFCC + Δ + ΔΔ frames in iteration 1, an encoder layer of the iteration-1
model (``teacher``) in iteration 2. The fitted centres are part of this module's state, so
checkpoints carry them and a resumed run keeps its targets. Each batch's targets are its
frames' nearest centres, one per encoder frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mlnotes_zoo.constraints import NonNegativeFloat, NonNegativeInt, PositiveInt, Seed
from mlnotes_zoo.errors import UsageError
from mlnotes_zoo.lit.base import OptimizerFactory, SchedulerFactory, ZooModule
from mlnotes_zoo.models.ctc.model import length_mask
from mlnotes_zoo.models.hubert import HuBERT, masked_prediction_loss, span_mask
from mlnotes_zoo.models.mixture import KMeans


class LitHuBERT(ZooModule):
    """Pretrains :class:`~mlnotes_zoo.models.hubert.HuBERT` by masked cluster prediction.

    Args:
        net: the HuBERT network (or its registry spec when loaded from a checkpoint).
        iteration: 1 — targets from k-means on MFCC frames; 2 — from k-means on layer
            ``teacher_layer`` of the ``teacher`` checkpoint's encoder (an iteration-1 run).
        teacher: path of a LitHuBERT checkpoint (iteration 2 only).
        teacher_layer: its encoder layer whose outputs are clustered (0 = encoder input).
        kmeans_utterances: training utterances whose frames the k-means sees.
        kmeans_frames: at most this many of those frames, drawn at random (fairseq's recipe
            clusters a sample of the frames too).
        kmeans_iter: Lloyd iterations.
        unmasked_weight: weight of the unmasked frames' cross-entropy (0: masked only, the
            paper's best).
        eval_seed: seed of the span masks drawn in validation and test (the same masks
            every epoch), where masked-frame accuracy is measured.
        optimizer, scheduler, activation_checkpointing: see
            :class:`~mlnotes_zoo.lit.base.ZooModule`.
    """

    net: HuBERT

    def __init__(self, *, net: nn.Module | Mapping[str, Any], iteration: Literal[1, 2] = 1,
                 teacher: str | None = None, teacher_layer: NonNegativeInt = 2,
                 kmeans_utterances: PositiveInt = 1000, kmeans_frames: PositiveInt = 50_000,
                 kmeans_iter: PositiveInt = 50, unmasked_weight: NonNegativeFloat = 0.0,
                 eval_seed: Seed = 1234, optimizer: OptimizerFactory | None = None,
                 scheduler: SchedulerFactory | None = None, **base_kwargs: Any) -> None:
        super().__init__(net=net, optimizer=optimizer, scheduler=scheduler, **base_kwargs)
        self.iteration, self.teacher_path, self.teacher_layer = iteration, teacher, teacher_layer
        self.kmeans_utterances, self.kmeans_frames = kmeans_utterances, kmeans_frames
        self.kmeans_iter, self.unmasked_weight = kmeans_iter, unmasked_weight
        self.eval_seed = eval_seed
        self._teacher: dict[str, HuBERT] = {}  # kept out of the state_dict: rebuilt from path
        if iteration == 2:
            if teacher is None:
                raise UsageError("model.iteration=2 clusters a pretrained encoder's features: "
                                 "set model.teacher=<path of an iteration-1 hubert checkpoint>")
            if not Path(teacher).is_file():
                raise UsageError(f"model.teacher={teacher}: no such checkpoint file")
            teacher_net = type(self).load_from_checkpoint(teacher, map_location="cpu").net.eval()
            if teacher_layer > len(teacher_net.layers):
                raise UsageError(f"model.teacher_layer={teacher_layer}: the teacher has "
                                 f"{len(teacher_net.layers)} layers (0 = its encoder input)")
            teacher_net.requires_grad_(False)
            self._teacher["net"] = teacher_net
            features = teacher_net.layers[0].linear1.in_features
        else:
            features = 3 * 13  # MFCC + Δ + ΔΔ
        self.target_kmeans = KMeans(in_shape=(features,), num_clusters=self.net.num_clusters)
        self._eval_generator = torch.Generator().manual_seed(eval_seed)

    # -- targets ---------------------------------------------------------------------------
    @torch.no_grad()
    def target_features(self, waves: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Features the targets' k-means clusters, (B, T, F), one per encoder frame."""
        if self.iteration == 1:
            return self.net.target_features(waves, lengths)
        teacher = self._teacher["net"].to(waves.device)
        return teacher.layer_features(waves, lengths, self.teacher_layer)

    @torch.no_grad()
    def targets(self, waves: Tensor, lengths: Tensor) -> Tensor:
        """Cluster index of each frame (B, T); padding frames get 0."""
        feats, frames = self.target_features(waves, lengths)
        valid = length_mask(frames, feats.shape[1])
        labels = torch.zeros(valid.shape, dtype=torch.long, device=feats.device)
        labels[valid] = self.target_kmeans.predict(feats[valid])
        return labels

    def on_fit_start(self) -> None:
        if bool(self.target_kmeans.fitted):
            return  # the checkpoint's targets
        dataset = self.trainer.datamodule.reference_data("train")
        frames = []
        count = min(self.kmeans_utterances, len(dataset))
        for start in range(0, count, 32):
            waves = [dataset[i][0] for i in range(start, min(start + 32, count))]  # no text
            lengths = torch.tensor([len(w) for w in waves])
            batch = torch.zeros(len(waves), int(lengths.max()))
            for i, w in enumerate(waves):
                batch[i, : len(w)] = w
            feats, n = self.target_features(batch.to(self.device), lengths.to(self.device))
            frames.append(feats[length_mask(n, feats.shape[1])])
        frames = torch.cat(frames)
        # seeded by the global RNG (seed_everything): the same targets for the same seed
        generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
        if len(frames) > self.kmeans_frames:
            frames = frames[torch.randperm(len(frames), generator=generator)[: self.kmeans_frames]
                            .to(frames.device)]
        self.target_kmeans.fit(frames, max_iter=self.kmeans_iter, generator=generator)

    # -- steps -----------------------------------------------------------------------------
    def model_step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        waves, lengths = batch[0], batch[1]  # the transcripts (batch[2:]) are never used
        targets = self.targets(waves, lengths)
        mask = None
        if stage != "train":  # the same masks every evaluation
            frames = self.net.output_lengths(lengths)
            mask = span_mask(frames.cpu(), int(frames.max()), mask_prob=self.net.mask_prob,
                             span=self.net.mask_span, generator=self._eval_generator
                             ).to(waves.device)
        out = self.net(waves, lengths, mask=mask)
        if out.logits.shape[:2] != targets.shape:
            raise RuntimeError(f"targets {tuple(targets.shape)} do not align with the encoder's "
                               f"frames {tuple(out.logits.shape[:2])}")
        valid = length_mask(out.lengths, out.logits.shape[1])
        return masked_prediction_loss(out.logits, targets, out.mask, valid,
                                      unmasked_weight=self.unmasked_weight)

    def on_validation_epoch_start(self) -> None:
        self._eval_generator.manual_seed(self.eval_seed)

    on_test_epoch_start = on_validation_epoch_start
