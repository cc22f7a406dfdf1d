"""LightningModule for the RNN encoder-decoder: teacher forcing as a choice, teacher-forced
perplexity and free-running exact match reported apart, beam search at test, attention maps.

The notes (``003``, "Teacher forcing in RNN") name teacher forcing's weakness: trained only on
true prefixes, the model meets its own (possibly wrong) prefixes first at test time ("open
loop"). So this module reports both sides: ``perplexity`` with teacher forcing (the training
condition) and ``exact_match`` of greedy decoding (the open loop), plus at test
``exact_match_beam`` and exact match per target length
(``pictures/exact_match_by_length.json``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn
from torchmetrics import Metric, SumMetric
from torchvision.transforms.functional import pil_to_tensor

from mlnotes_zoo.constraints import Field, Fraction, NonNegativeFloat, PositiveInt
from mlnotes_zoo.lit.transformer import LitSeq2Seq
from mlnotes_zoo.models.recurrent import RNNSeq2Seq, inverse_sigmoid_decay
from mlnotes_zoo.models.transformer import sequence_exact_match, token_cross_entropy

__all__ = ["LitRNNSeq2Seq", "ExactMatchByLength", "draw_attention"]

ScheduleK = Annotated[float, Field(ge=1, description="k of the inverse-sigmoid decay")]


class LitRNNSeq2Seq(LitSeq2Seq):
    """Trains :class:`~mlnotes_zoo.models.recurrent.RNNSeq2Seq` on cross-entropy of the next
    target token (padding ignored), fed true or own previous tokens.

    Args:
        net: the network (or its registry spec when loaded from a checkpoint).
        teacher_forcing: the probability of feeding the true previous token in training, per
            token: 1.0 = always (teacher forcing), 0.0 = never (free running), in between a
            fixed ratio; ``scheduled`` = scheduled sampling (Bengio et al. 2015) with the
            inverse-sigmoid decay ε_i = k / (k + exp(i / k)) over training steps i.
        schedule_k: k of that decay (ε is ½ near step k·ln k).
        beam_size: width of the test-time beam search (``test/exact_match_beam``).
        length_alpha: α of the beam's length penalty ((5 + |y|) / 6)^α; 0 = none.
        grad_clip: gradient-norm clipping used when the trainer sets none (the decoder is
            unrolled over the target); 0 disables it.
        num_samples, stop_at_exact_match, patience, optimizer, scheduler: see
            :class:`~mlnotes_zoo.lit.transformer.LitSeq2Seq`.

    Logged: ``loss`` and ``perplexity`` (teacher-forced, over all tokens of the split in
    evaluation), ``token_accuracy``, ``teacher_forcing`` (train), ``exact_match`` (greedy,
    val/test), ``exact_match_beam`` (test).
    """

    net: RNNSeq2Seq

    def __init__(self, *, net: nn.Module | Mapping[str, Any],
                 teacher_forcing: Fraction | Literal["scheduled"] = 1.0,
                 schedule_k: ScheduleK = 150.0, beam_size: PositiveInt = 4,
                 length_alpha: NonNegativeFloat = 1.0, grad_clip: NonNegativeFloat = 1.0,
                 **kwargs: Any) -> None:
        super().__init__(net=net, **kwargs)
        self.teacher_forcing, self.schedule_k = teacher_forcing, schedule_k
        self.beam_size, self.length_alpha = beam_size, length_alpha
        self.grad_clip = grad_clip
        self.nll_sum, self.num_tokens = SumMetric(), SumMetric()
        self.by_length = ExactMatchByLength(self.net.max_len + 1)

    def teacher_forcing_ratio(self) -> float:
        """The probability of feeding the true previous token at this training step."""
        if self.teacher_forcing == "scheduled":
            return float(inverse_sigmoid_decay(self.global_step, self.schedule_k))
        return float(self.teacher_forcing)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None) -> None:
        if gradient_clip_val is None and self.grad_clip > 0:
            gradient_clip_val, gradient_clip_algorithm = self.grad_clip, "norm"
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)

    def model_step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        src, tgt = batch
        tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
        pad = self.net.pad_id
        ratio = self.teacher_forcing_ratio() if stage == "train" else 1.0
        logits = self.net(src, tgt_in, teacher_forcing=ratio)  # (B, T−1, V)
        real = tgt_out != pad
        out = {"loss": token_cross_entropy(logits, tgt_out, ignore_index=pad)}
        out["token_accuracy"] = ((logits.argmax(-1) == tgt_out) & real).sum() / real.sum()
        if stage == "train":
            out["perplexity"] = out["loss"].detach().exp()
            out["teacher_forcing"] = torch.tensor(ratio)
            return out
        self.nll_sum.update(token_cross_entropy(logits, tgt_out, ignore_index=pad,
                                                reduction="sum"))
        self.num_tokens.update(real.sum())
        generated, correct = self.greedy_exact_match(src, tgt)
        out["exact_match"] = correct.mean()
        if stage == "test":
            beam = self.net.beam_search(src, beam_size=self.beam_size,
                                        max_new_tokens=tgt.shape[1], alpha=self.length_alpha)
            out["exact_match_beam"] = sequence_exact_match(beam.tokens, tgt_out,
                                                           pad_id=pad).mean()
            self.by_length.update(real.sum(1) - 1, correct)  # words, eos not counted
        if self._sample_batch is None:
            n = self.num_samples
            self._sample_batch = (src[:n], tgt_out[:n], generated[:n])
        return out

    def _log_perplexity(self, stage: str) -> None:
        if self.num_tokens.update_count:
            self.log(f"{stage}/perplexity",
                     (self.nll_sum.compute() / self.num_tokens.compute()).exp())
        self.nll_sum.reset()
        self.num_tokens.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_perplexity("val")
        super().on_validation_epoch_end()

    def on_test_epoch_start(self) -> None:
        self.by_length.reset()

    def on_test_epoch_end(self) -> None:
        self._log_perplexity("test")
        self._sample_batch = None
        table = self.by_length.compute() if self.by_length.update_called else None
        trainer = self._trainer
        if table is not None and trainer is not None and trainer.is_global_zero:
            out = Path(trainer.default_root_dir) / "pictures"
            out.mkdir(parents=True, exist_ok=True)
            table = {"attention": self.net.attention_kind, **table}
            (out / "exact_match_by_length.json").write_text(json.dumps(table, indent=1) + "\n")

    @torch.no_grad()
    def pictures(self, batch: Any) -> dict[str, Tensor]:
        """Attention maps α (target word × source digit) of the first validation examples,
        teacher-forced on their true targets; none without attention."""
        if self.net.attention is None:
            return {}
        src, tgt = (t[:4] for t in batch)
        was_training = self.net.training
        self.net.eval()
        _, weights = self.net(src, tgt[:, :-1], return_attention=True)  # (B, T, S)
        self.net.train(was_training)
        vocab = self._vocab
        panels = []
        for s, t, w in zip(src, tgt[:, 1:], weights, strict=True):
            src_words = [_token(i, vocab) for i in s.tolist() if i != self.net.pad_id]
            tgt_words = [_token(i, vocab) for i in t.tolist() if i != self.net.pad_id]
            panels.append((src_words, tgt_words, w[: len(tgt_words), : len(src_words)]))
        return {"attention": draw_attention(panels)}


def _token(i: int, vocab: Sequence[str] | None) -> str:
    return vocab[i] if vocab is not None else str(i)


class ExactMatchByLength(Metric):
    """Exact match per target length (words), summed over batches and ranks.

    ``compute()``: ``{"length", "count", "exact_match"}`` over the lengths seen (lists).
    """

    full_state_update = False

    def __init__(self, max_length: int) -> None:
        super().__init__()
        self.add_state("count", torch.zeros(max_length), dist_reduce_fx="sum")
        self.add_state("correct", torch.zeros(max_length), dist_reduce_fx="sum")

    def update(self, length: Tensor, correct: Tensor) -> None:
        length = length.clamp(0, self.count.shape[0] - 1)
        self.count.index_add_(0, length, torch.ones_like(correct, dtype=torch.float))
        self.correct.index_add_(0, length, correct.float())

    def compute(self) -> dict[str, Any]:
        seen = self.count > 0
        return {"length": torch.nonzero(seen).squeeze(1).tolist(),
                "count": self.count[seen].long().tolist(),
                "exact_match": (self.correct[seen] / self.count[seen]).tolist()}


def draw_attention(panels: Sequence[tuple[Sequence[str], Sequence[str], Tensor]],
                   cell: int = 16) -> Tensor:
    """Attention maps side by side: for each (source tokens, target tokens, α (T, S)), source
    across, target down, darker = more weight. (3, H, W) in [0, 1]."""
    try:
        font = ImageFont.load_default(size=11)  # Pillow >= 10.1: a scalable font
    except TypeError:
        font = ImageFont.load_default()
    left, top, gap = 70, 18, 12
    widths = [left + len(s) * cell for s, _, _ in panels]
    height = top + max(len(t) for _, t, _ in panels) * cell + 4
    image = Image.new("RGB", (sum(widths) + gap * len(panels), height), "white")
    draw = ImageDraw.Draw(image)
    x0 = 0
    for (src, tgt, weights), width in zip(panels, widths, strict=True):
        for j, token in enumerate(src):
            draw.text((x0 + left + j * cell + 4, 2), token, fill="black", font=font)
        for i, token in enumerate(tgt):
            draw.text((x0 + 2, top + i * cell + 2), token[:11], fill="black", font=font)
            for j in range(len(src)):
                shade = float(weights[i, j])
                colour = tuple(int(255 - shade * (255 - c)) for c in (8, 48, 107))
                x, y = x0 + left + j * cell, top + i * cell
                draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour)
        x0 += width + gap
    return pil_to_tensor(image).float() / 255
