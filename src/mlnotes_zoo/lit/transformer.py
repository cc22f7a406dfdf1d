"""LightningModules for the Transformers: seq2seq with exact match, GPT with bits/char.

Both write ``samples.txt`` to the run dir after each validation epoch (rank 0): generated
translations of held-out numbers, or a sample of generated text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping
from torch import Tensor, nn
from torchmetrics import SumMetric

from mlnotes_zoo.constraints import Field, Fraction, NonNegativeInt, PositiveInt
from mlnotes_zoo.errors import UsageError
from mlnotes_zoo.lit.base import OptimizerFactory, SchedulerFactory, ZooModule
from mlnotes_zoo.models.transformer import (
    GPT,
    Seq2SeqTransformer,
    bits_per_char,
    sequence_exact_match,
    token_cross_entropy,
)

__all__ = ["LitSeq2Seq", "LitGPT", "detokenize", "is_char_start"]


def detokenize(tokens: Tensor, vocab: Sequence[str] | None, *, eos_id: int,
               skip: Sequence[int] = ()) -> str:
    """Token ids (T,) -> text up to the first ``eos_id``, ids in ``skip`` (padding, bos)
    dropped: digits joined without spaces ("4071"), words with ("four thousand seventy one");
    the ids themselves without a vocabulary."""
    words = []
    for t in tokens.tolist():
        if t == eos_id:
            break
        if t not in skip:
            words.append(vocab[t] if vocab is not None else str(t))
    return ("" if words and words[0].isdigit() else " ").join(words).strip()


def is_char_start(byte_tokens: Tensor) -> Tensor:
    """True at bytes that begin a UTF-8 character (not continuation bytes 0b10xxxxxx): the
    characters that bits per character divides by."""
    return (byte_tokens & 0xC0) != 0x80


def _write_samples(module: ZooModule, text: str) -> None:
    trainer = module._trainer
    if trainer is None or trainer.sanity_checking or not trainer.is_global_zero:
        return
    path = Path(trainer.default_root_dir) / "samples.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


class LitSeq2Seq(ZooModule):
    """Trains :class:`~mlnotes_zoo.models.transformer.Seq2SeqTransformer` with teacher
    forcing (cross-entropy of the next target token, padding ignored); validation and test
    also decode greedily with the KV cache and report sequence exact match.

    Batches are ``(src (B, S), tgt (B, T))``, tgt = bos … eos, right-padded.

    Args:
        net: the network (or its registry spec when loaded from a checkpoint).
        num_samples: held-out examples written to ``samples.txt``.
        stop_at_exact_match: stop training once val/exact_match reaches this value (the
            task is solved; Lightning ``EarlyStopping(stopping_threshold=...)``); None = never.
        patience: also stop after this many validation epochs without improvement; None =
            never.
        optimizer, scheduler, activation_checkpointing: see :class:`ZooModule`.

    ``samples.txt`` spells the tokens with the DataModule's ``vocab`` (token strings) when
    it has one, else as ids.
    """

    net: Seq2SeqTransformer

    def __init__(self, *, net: nn.Module | Mapping[str, Any], num_samples: PositiveInt = 20,
                 stop_at_exact_match: Fraction | None = None,
                 patience: NonNegativeInt | None = None,
                 optimizer: OptimizerFactory | None = None,
                 scheduler: SchedulerFactory | None = None, **base_kwargs: Any) -> None:
        super().__init__(net=net, optimizer=optimizer, scheduler=scheduler, **base_kwargs)
        self.num_samples = num_samples
        self.stop_at_exact_match, self.patience = stop_at_exact_match, patience
        self._sample_batch: tuple[Tensor, Tensor, Tensor] | None = None
        self._vocab: Sequence[str] | None = None

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and getattr(dm, "vocab_size", 0) > self.net.vocab_size:
            raise UsageError(f"data has {dm.vocab_size} tokens but model.net.vocab_size is "
                             f"{self.net.vocab_size}; allowed: model.net.vocab_size >= "
                             f"{dm.vocab_size}")
        self._vocab = getattr(dm, "vocab", None)

    def detokenize(self, tokens: Tensor) -> str:
        return detokenize(tokens, self._vocab, eos_id=self.net.eos_id,
                          skip=(self.net.pad_id, self.net.bos_id))

    def configure_callbacks(self) -> list[pl.Callback]:
        if self.stop_at_exact_match is None and self.patience is None:
            return []
        return [EarlyStopping(monitor="val/exact_match", mode="max",
                              patience=self.patience if self.patience is not None else 10**9,
                              stopping_threshold=self.stop_at_exact_match)]

    def greedy_exact_match(self, src: Tensor, tgt: Tensor) -> tuple[Tensor, Tensor]:
        """Greedy decoding of ``src`` (B, S) and whether it equals ``tgt`` (B, T) = bos …
        eos: (generated (B, ≤ T) tokens after bos, correct (B,) 1.0 or 0.0) — the exact
        match of validation and test, per example (scripts/seq2seq_by_length.py uses it too)."""
        generated = self.net.generate(src, max_new_tokens=tgt.shape[1])
        return generated, sequence_exact_match(generated, tgt[:, 1:], pad_id=self.net.pad_id)

    def model_step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        src, tgt = batch
        tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
        logits = self.net(src, tgt_in)  # (B, T-1, V)
        loss = token_cross_entropy(logits, tgt_out, ignore_index=self.net.pad_id)
        real = tgt_out != self.net.pad_id
        out = {"loss": loss,
               "token_accuracy": ((logits.argmax(-1) == tgt_out) & real).sum() / real.sum()}
        if stage != "train":
            generated, correct = self.greedy_exact_match(src, tgt)
            out["exact_match"] = correct.mean()
            if self._sample_batch is None:
                n = self.num_samples
                self._sample_batch = (src[:n], tgt_out[:n], generated[:n])
        return out

    def on_validation_epoch_end(self) -> None:
        if self._sample_batch is not None:
            lines = []
            for src, tgt, gen in zip(*self._sample_batch, strict=True):
                source, wanted, got = (self.detokenize(t) for t in (src, tgt, gen))
                mark = "ok " if got == wanted else "ERR"
                lines.append(f"{mark} {source:>11} -> {got}"
                             + ("" if mark == "ok " else f"   (want: {wanted})"))
            _write_samples(self, f"epoch {self.current_epoch}\n" + "\n".join(lines) + "\n")
        self._sample_batch = None


class LitGPT(ZooModule):
    """Trains :class:`~mlnotes_zoo.models.transformer.GPT` by next-token cross-entropy.

    Val/test report ``bits_per_char`` over the whole split (Σ −log₂ p over bytes ÷ number
    of characters, with torchmetrics sums), and after each validation epoch a text sample
    (``sample_length`` bytes after the first ``prompt_length`` of a validation window,
    temperature and top-k sampling with the KV cache) is written to ``samples.txt``.

    Batches are ``(x, y)`` byte tokens (B, T), y = x shifted by one.
    """

    net: GPT

    def __init__(self, *, net: nn.Module | Mapping[str, Any], sample_length: PositiveInt = 300,
                 prompt_length: PositiveInt = 32,
                 temperature: Annotated[float, Field(ge=0, description="0: greedy")] = 0.8,
                 top_k: PositiveInt | None = 40,
                 optimizer: OptimizerFactory | None = None,
                 scheduler: SchedulerFactory | None = None, **base_kwargs: Any) -> None:
        super().__init__(net=net, optimizer=optimizer, scheduler=scheduler, **base_kwargs)
        self.sample_length, self.prompt_length = sample_length, prompt_length
        self.temperature, self.top_k = temperature, top_k
        self.nll_sum, self.num_chars = SumMetric(), SumMetric()
        self._prompt: Tensor | None = None

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None:
            return
        if getattr(dm, "vocab_size", 0) > self.net.vocab_size:
            raise UsageError(f"data has {dm.vocab_size} tokens but model.net.vocab_size is "
                             f"{self.net.vocab_size}; allowed: model.net.vocab_size >= "
                             f"{dm.vocab_size}")
        if self.net.embed.positional != "rotary" and getattr(dm, "block_size", 0) > \
                self.net.max_len:
            raise UsageError(f"data.block_size={dm.block_size} exceeds model.net.max_len="
                             f"{self.net.max_len}; allowed: data.block_size <= model.net.max_len "
                             "(or model.net.positional=rotary)")

    def model_step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        x, y = batch
        logits = self.net(x)  # (B, T, V)
        if stage == "train":
            loss = token_cross_entropy(logits, y)
            return {"loss": loss, "bits_per_byte": loss.detach() / math.log(2)}
        nll = token_cross_entropy(logits, y, reduction="none")  # (B, T) nats
        self.nll_sum.update(nll.sum())
        self.num_chars.update(is_char_start(y).sum())
        if self._prompt is None:
            self._prompt = x[:1, : self.prompt_length]
        loss = nll.mean()
        return {"loss": loss, "bits_per_byte": loss / math.log(2)}

    def _log_bits_per_char(self, stage: str) -> None:
        if self.num_chars.update_count:
            self.log(f"{stage}/bits_per_char",
                     bits_per_char(self.nll_sum.compute(), self.num_chars.compute()))
        self.nll_sum.reset()
        self.num_chars.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_bits_per_char("val")
        if self._prompt is not None and self.sample_length > 0:
            _write_samples(self, self.sample_text(self._prompt))
        self._prompt = None

    def on_test_epoch_end(self) -> None:
        self._log_bits_per_char("test")
        self._prompt = None

    def sample_text(self, prompt: Tensor) -> str:
        """Prompt (1, T0) bytes and ``sample_length`` generated ones, decoded as UTF-8."""
        was_training = self.net.training
        self.net.eval()
        tokens = self.net.generate(prompt, self.sample_length, temperature=self.temperature,
                                   top_k=self.top_k)
        self.net.train(was_training)
        text = bytes(tokens[0].tolist()).decode("utf-8", errors="replace")
        head = bytes(prompt[0].tolist()).decode("utf-8", errors="replace")
        return (f"epoch {self.current_epoch}, temperature {self.temperature}, "
                f"top_k {self.top_k}; prompt = first {len(head)} characters\n"
                f"{'-' * 72}\n{text}\n")
