"""LightningModule for HuBERT pretraining: k-means targets, then masked prediction — the
whole two-iteration recipe in one run, or one iteration of it.

Iteration 1's targets are the zoo's k-means (:class:`~mlnotes_zoo.models.mixture.KMeans`,
k-means++ and Lloyd) on MFCC + Δ + ΔΔ frames of the unlabeled training audio (transcripts
are never read); iteration 2's are k-means on an encoder layer of an iteration-1 model, the
*teacher*, and a fresh network learns them (Hsu et al. 2021's iterative refinement). With the
defaults (``iteration=1``, ``iterations=2``) one run does both: ``iteration_epochs`` epochs of
iteration 1, then the network becomes the teacher, its layer is clustered, and a freshly
initialised network trains on the new targets for the remaining epochs. ``iteration=2
teacher=<ckpt>`` runs iteration 2 alone from a saved iteration-1 (or whole-recipe) run.

Both k-means and the teacher are part of this module's state, so checkpoints carry them and a
resumed run keeps its targets. Each batch's targets are its frames' nearest centres, one per
encoder frame. At test, when the DataModule knows which symbol sounds in every frame
(``frame_alignments``, the spoken_symbols generator), the quality of each iteration's
targets on the test split is logged: PNMI, phone purity and cluster purity
(:func:`~mlnotes_zoo.models.hubert.target_quality`) as ``test/pnmi_iteration{1,2}`` ... —
the point of iterating is that they rise.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mlnotes_zoo.constraints import NonNegativeFloat, NonNegativeInt, PositiveInt, Seed
from mlnotes_zoo.errors import UsageError
from mlnotes_zoo.lit.base import OptimizerFactory, SchedulerFactory, ZooModule, build_net
from mlnotes_zoo.models.ctc.model import length_mask
from mlnotes_zoo.models.hubert import HuBERT, masked_prediction_loss, span_mask, target_quality
from mlnotes_zoo.models.mixture import KMeans
from mlnotes_zoo.weights import load_checkpoint, safe_torch_load

MFCC_FEATURES = 3 * 13  # MFCC + Δ + ΔΔ
# The previous LitHuBERT (one iteration per run, before the whole recipe) kept its one k-means
# as ``target_kmeans``: the targets of its ``iteration``; no teacher (rebuilt from its path),
# no ``switch_seed``.
OLD_KMEANS = "target_kmeans."


def rename_old_kmeans(state: dict[str, Tensor], hparams: Mapping[str, Any]) -> bool:
    """Rename, in place, a previous LitHuBERT checkpoint's ``target_kmeans.*`` tensors to
    ``kmeans.<i − 1>.*``, i being the iteration that run trained (its hyper-parameter
    ``iteration``). True when ``state`` was of that layout."""
    old = [key for key in state if key.startswith(OLD_KMEANS)]
    index = int(hparams.get("iteration", 1)) - 1
    for key in old:
        state[f"kmeans.{index}.{key.removeprefix(OLD_KMEANS)}"] = state.pop(key)
    return bool(old)


class LitHuBERT(ZooModule):
    """Pretrains :class:`~mlnotes_zoo.models.hubert.HuBERT` by masked cluster prediction.

    Args:
        net: the HuBERT network (or its registry spec when loaded from a checkpoint).
        iteration: the iteration the run starts in. 1 — targets from k-means on MFCC
            frames; 2 — from k-means on layer ``teacher_layer`` of the ``teacher``
            checkpoint's encoder.
        iterations: the last iteration the run reaches: with ``iteration=1, iterations=2``
            epochs from ``iteration_epochs`` on are iteration 2, the teacher being this run's
            network at that point (``trainer.max_epochs`` then counts both iterations).
        iteration_epochs: epochs of iteration 1 before iteration 2 starts (whole recipe).
        teacher: path of a LitHuBERT checkpoint (``iteration=2`` only).
        teacher_layer: the teacher's encoder layer whose outputs are clustered (0 = encoder
            input); the paper takes a middle layer.
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

    Logged besides the loss terms: ``iteration`` and ``ranked_acc`` = iteration − 1 +
    masked-frame accuracy, the checkpoint metric: accuracies of different iterations are on
    different targets, so a later iteration's checkpoint ranks above an earlier one's.
    """

    net: HuBERT

    def __init__(self, *, net: nn.Module | Mapping[str, Any], iteration: Literal[1, 2] = 1,
                 iterations: Literal[1, 2] = 2, iteration_epochs: PositiveInt = 8,
                 teacher: str | None = None, teacher_layer: NonNegativeInt = 2,
                 kmeans_utterances: PositiveInt = 1000, kmeans_frames: PositiveInt = 50_000,
                 kmeans_iter: PositiveInt = 50, unmasked_weight: NonNegativeFloat = 0.0,
                 eval_seed: Seed = 1234, optimizer: OptimizerFactory | None = None,
                 scheduler: SchedulerFactory | None = None, **base_kwargs: Any) -> None:
        super().__init__(net=net, optimizer=optimizer, scheduler=scheduler, **base_kwargs)
        self.start_iteration, self.final_iteration = iteration, max(iteration, iterations)
        self.iteration_epochs, self.teacher_path = iteration_epochs, teacher
        self.teacher_layer = teacher_layer
        self.kmeans_utterances, self.kmeans_frames = kmeans_utterances, kmeans_frames
        self.kmeans_iter, self.unmasked_weight = kmeans_iter, unmasked_weight
        self.eval_seed = eval_seed
        num_clusters = self.net.num_clusters
        self.teacher: HuBERT | None = None
        teacher_kmeans: dict[str, Tensor] = {}
        if iteration == 2:
            if teacher is None:
                raise UsageError("model.iteration=2 clusters a pretrained encoder's features: "
                                 "set model.teacher=<path of an iteration-1 hubert checkpoint>")
            if not Path(teacher).is_file():
                raise UsageError(f"model.teacher={teacher}: no such checkpoint file")
            self.teacher = load_checkpoint(teacher)
            if not isinstance(self.teacher, HuBERT):
                raise UsageError(f"model.teacher={teacher}: a {type(self.teacher).__name__} "
                                 "checkpoint, not a hubert one")
            # its MFCC targets, to compare theirs with the new ones
            saved = safe_torch_load(teacher)
            state = dict(saved["state_dict"])
            rename_old_kmeans(state, saved.get("hyper_parameters") or {})
            teacher_kmeans = {k.removeprefix("kmeans.0."): v for k, v in state.items()
                              if k.startswith("kmeans.0.")}
        elif self.final_iteration == 2:
            self.teacher = copy.deepcopy(self.net)  # becomes this run's network at the switch
        if self.teacher is not None:
            if teacher_layer > len(self.teacher.layers):
                raise UsageError(f"model.teacher_layer={teacher_layer}: the teacher has "
                                 f"{len(self.teacher.layers)} layers (0 = its encoder input)")
            self.teacher.requires_grad_(False).eval()
        # kmeans[i − 1]: the targets of iteration i (MFCC frames; the teacher's layer)
        widths = [MFCC_FEATURES] + ([self.teacher.layers[0].linear1.in_features]
                                    if self.teacher is not None else [])
        self.kmeans = nn.ModuleList(KMeans(in_shape=(w,), num_clusters=num_clusters)
                                    for w in widths)
        own = self.kmeans[0].state_dict()
        if teacher_kmeans.keys() == own.keys() and all(
                v.shape == own[k].shape for k, v in teacher_kmeans.items()):
            self.kmeans[0].load_state_dict(teacher_kmeans)  # else no iteration-1 figures
        # drawn from the global RNG when fitting starts: seeds the recipe's switch to iteration
        # 2, which then draws nothing from the global RNG (the epoch's batch order comes from
        # it, drawn at a different moment in a resumed run)
        self.register_buffer("switch_seed", torch.zeros((), dtype=torch.long))
        self._eval_generator = torch.Generator().manual_seed(eval_seed)

    # -- iterations --------------------------------------------------------------------------
    @property
    def iteration(self) -> int:
        """The iteration whose targets the network learns now: 2 once the recipe's second
        k-means is fitted (at epoch ``iteration_epochs``; kept in checkpoints)."""
        if self.start_iteration == 2 or (len(self.kmeans) == 2 and bool(self.kmeans[1].fitted)):
            return 2
        return 1

    def train(self, mode: bool = True) -> LitHuBERT:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # no dropout in the targets
        return self

    # -- targets ---------------------------------------------------------------------------
    @torch.no_grad()
    def target_features(self, waves: Tensor, lengths: Tensor, iteration: int
                        ) -> tuple[Tensor, Tensor]:
        """Features iteration ``iteration``'s k-means clusters, (B, T, F), one per encoder
        frame, and frames (B,)."""
        if iteration == 1:
            return self.net.target_features(waves, lengths)
        return self.teacher.layer_features(waves, lengths, self.teacher_layer)

    @torch.no_grad()
    def targets(self, waves: Tensor, lengths: Tensor, iteration: int | None = None) -> Tensor:
        """Cluster index of each frame (B, T); padding frames get 0."""
        iteration = iteration or self.iteration
        feats, frames = self.target_features(waves, lengths, iteration)
        valid = length_mask(frames, feats.shape[1])
        labels = torch.zeros(valid.shape, dtype=torch.long, device=feats.device)
        labels[valid] = self.kmeans[iteration - 1].predict(feats[valid])
        return labels

    def _utterance_batches(self, split: str, count: int | None = None):
        """(waves, lengths) batches of 32 of ``split`` in its stored order (audio only)."""
        dataset = self.trainer.datamodule.reference_data(split)
        count = len(dataset) if count is None else min(count, len(dataset))
        for start in range(0, count, 32):
            waves = [dataset[i][0] for i in range(start, min(start + 32, count))]  # no text
            lengths = torch.tensor([len(w) for w in waves])
            batch = torch.zeros(len(waves), int(lengths.max()))
            for i, w in enumerate(waves):
                batch[i, : len(w)] = w
            yield batch.to(self.device), lengths.to(self.device)

    @torch.no_grad()
    def fit_targets(self, iteration: int, generator: torch.Generator) -> None:
        """Fit iteration ``iteration``'s k-means to frames of the training audio (the frame
        sample and k-means++ drawn from ``generator``)."""
        frames = []
        for waves, lengths in self._utterance_batches("train", self.kmeans_utterances):
            feats, n = self.target_features(waves, lengths, iteration)
            frames.append(feats[length_mask(n, feats.shape[1])])
        frames = torch.cat(frames)
        if len(frames) > self.kmeans_frames:
            frames = frames[torch.randperm(len(frames), generator=generator)[: self.kmeans_frames]
                            .to(frames.device)]
        self.kmeans[iteration - 1].fit(frames, max_iter=self.kmeans_iter, generator=generator)

    def on_fit_start(self) -> None:
        if not bool(self.kmeans[self.iteration - 1].fitted):  # else: the checkpoint's targets
            # seeded by the global RNG (seed_everything): the same targets for the same seed
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
            self.fit_targets(self.iteration, generator)
            self.switch_seed.fill_(int(torch.randint(2**62, (), generator=generator)))

    def on_train_epoch_start(self) -> None:
        if self.iteration == 1 and self.final_iteration == 2 \
                and self.current_epoch >= self.iteration_epochs:
            self.start_next_iteration()

    @torch.no_grad()
    def start_next_iteration(self) -> None:
        """Whole recipe, at epoch ``iteration_epochs``: this network becomes the teacher, its
        layer's k-means gives the new targets, and a fresh network (the constructor's
        initialisation, optimizer moments cleared) learns them, as the paper trains each
        iteration from scratch."""
        self.teacher.load_state_dict(self.net.state_dict())
        self.teacher.eval()
        seed = int(self.switch_seed)
        self.fit_targets(2, torch.Generator().manual_seed(seed))
        with torch.random.fork_rng(devices=[]):  # the global RNG is left as it was
            torch.manual_seed(seed + 1)
            fresh = build_net(self.hparams["net"])
        self.net.load_state_dict(fresh.state_dict())
        for optimizer in self.trainer.optimizers:
            optimizer.state.clear()

    # -- checkpoints of the previous layout --------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A previous LitHuBERT's checkpoint (``target_kmeans.*``) loads too: its k-means
        becomes ``kmeans.<its iteration − 1>``; what it did not keep is this module's own (the
        teacher loaded from ``model.teacher``, or the copy of the network that the switch to
        iteration 2 overwrites; the other k-means unfitted; ``switch_seed`` 0), and its
        optimizer state gains the teacher's frozen parameters, which it did not hold."""
        state = checkpoint.get("state_dict")
        if isinstance(state, dict) and rename_old_kmeans(
                state, checkpoint.get("hyper_parameters") or {}):
            for key, value in self.state_dict().items():
                if key not in state and (key == "switch_seed"
                                         or key.startswith(("teacher.", "kmeans."))):
                    state[key] = value.detach().clone()
            extra = len(list(self.teacher.parameters())) if self.teacher is not None else 0
            total = len(list(self.parameters()))
            for saved in checkpoint.get("optimizer_states") or []:
                groups = saved.get("param_groups") if isinstance(saved, dict) else None
                ids = [i for group in groups or [] for i in group["params"]]
                if extra and groups and len(ids) == total - extra:  # the network's only
                    start = max(ids, default=-1) + 1
                    groups[-1]["params"] = [*groups[-1]["params"], *range(start, start + extra)]
        super().on_load_checkpoint(checkpoint)

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
        result = masked_prediction_loss(out.logits, targets, out.mask, valid,
                                        unmasked_weight=self.unmasked_weight)
        if stage != "train":
            iteration = waves.new_tensor(float(self.iteration))
            result["iteration"] = iteration
            result["ranked_acc"] = iteration - 1 + result["masked_acc"]
        return result

    def on_validation_epoch_start(self) -> None:
        self._eval_generator.manual_seed(self.eval_seed)

    def on_test_epoch_start(self) -> None:
        self._eval_generator.manual_seed(self.eval_seed)

    @torch.no_grad()
    def on_test_epoch_end(self) -> None:
        """PNMI and purities of each fitted iteration's targets on the test split's frames,
        when the DataModule knows the symbol sounding in each frame."""
        alignments = getattr(self.trainer.datamodule, "frame_alignments", None)
        if alignments is None:
            return
        labels = torch.cat(alignments("test", self.net.frame_samples))
        for iteration, kmeans in enumerate(self.kmeans, 1):
            if not bool(kmeans.fitted):
                continue
            clusters = []
            for waves, lengths in self._utterance_batches("test"):
                targets = self.targets(waves, lengths, iteration)  # (B, T)
                valid = length_mask(self.net.output_lengths(lengths), targets.shape[1])
                clusters.append(targets[valid].cpu())
            clusters = torch.cat(clusters)
            if len(clusters) != len(labels):
                raise RuntimeError(f"{len(labels)} aligned frames but {len(clusters)} targets")
            for name, value in target_quality(labels, clusters).items():
                self.log(f"test/{name}_iteration{iteration}", value.float(), sync_dist=False)
