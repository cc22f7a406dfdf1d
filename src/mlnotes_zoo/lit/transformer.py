"""LightningModules for the Transformers: seq2seq with exact match, GPT with bits/char.

Both write ``samples.txt`` to the run dir after each validation epoch (rank 0): generated
translations of held-out numbers, or a sample of generated text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping
from torch import Tensor, nn
from torchmetrics import SumMetric

from mlnotes_zoo.lit.base import OptimizerFactory, SchedulerFactory, ZooModule
from mlnotes_zoo.models.transformer import (
    GPT,
    Seq2SeqTransformer,
    bits_per_char,
    sequence_exact_match,
    token_cross_entropy,
)

__all__ = ["LitSeq2Seq", "LitGPT"]


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
        optimizer, scheduler, monitor, monitor_mode: see :class:`ZooModule`.
    """

    net: Seq2SeqTransformer

    def __init__(self, *, net: nn.Module | Mapping[str, Any], num_samples: int = 20,
                 stop_at_exact_match: float | None = None, patience: int | None = None,
                 optimizer: OptimizerFactory | None = None,
                 scheduler: SchedulerFactory | None = None, **base_kwargs: Any) -> None:
        super().__init__(net=net, optimizer=optimizer, scheduler=scheduler, **base_kwargs)
        self.num_samples = num_samples
        self.stop_at_exact_match, self.patience = stop_at_exact_match, patience
        self._sample_batch: tuple[Tensor, Tensor, Tensor] | None = None

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and getattr(dm, "vocab_size", 0) > self.net.vocab_size:
            raise ValueError(f"data has {dm.vocab_size} tokens but model.vocab_size is "
                             f"{self.net.vocab_size}")

    def configure_callbacks(self) -> list[pl.Callback]:
        if self.stop_at_exact_match is None and self.patience is None:
            return []
        return [EarlyStopping(monitor="val/exact_match", mode="max",
                              patience=self.patience if self.patience is not None else 10**9,
                              stopping_threshold=self.stop_at_exact_match)]

    def model_step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        src, tgt = batch
        tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
        logits = self.net(src, tgt_in)  # (B, T-1, V)
        loss = token_cross_entropy(logits, tgt_out, ignore_index=self.net.pad_id)
        real = tgt_out != self.net.pad_id
        out = {"loss": loss,
               "token_accuracy": ((logits.argmax(-1) == tgt_out) & real).sum() / real.sum()}
        if stage != "train":
            generated = self.net.generate(src, max_new_tokens=tgt.shape[1])
            out["exact_match"] = sequence_exact_match(generated, tgt_out,
                                                      pad_id=self.net.pad_id).mean()
            if self._sample_batch is None:
                n = self.num_samples
                self._sample_batch = (src[:n], tgt_out[:n], generated[:n])
        return out

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self._sample_batch is not None:
            from mlnotes_zoo.data.seq2seq_numbers import decode_tokens

            lines = []
            for src, tgt, gen in zip(*self._sample_batch, strict=True):
                mark = "ok " if decode_tokens(gen) == decode_tokens(tgt) else "ERR"
                lines.append(f"{mark} {decode_tokens(src):>11} -> {decode_tokens(gen)}"
                             + ("" if mark == "ok " else f"   (want: {decode_tokens(tgt)})"))
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

    def __init__(self, *, net: nn.Module | Mapping[str, Any], sample_length: int = 300,
                 prompt_length: int = 32, temperature: float = 0.8, top_k: int | None = 40,
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
            raise ValueError(f"data has {dm.vocab_size} tokens but model.vocab_size is "
                             f"{self.net.vocab_size}")
        if self.net.embed.positional != "rotary" and getattr(dm, "block_size", 0) > \
                self.net.max_len:
            raise ValueError(f"data.block_size ({dm.block_size}) exceeds model.max_len "
                             f"({self.net.max_len})")

    def model_step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        from mlnotes_zoo.data.text import is_char_start

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
        super().on_validation_epoch_end()
        self._log_bits_per_char("val")
        if self._prompt is not None and self.sample_length > 0:
            _write_samples(self, self.sample_text(self._prompt))
        self._prompt = None

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
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
