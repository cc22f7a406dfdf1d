"""LightningModule for the CTC speech models: CTC loss, decoding, CER and WER."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.text import CharErrorRate, WordErrorRate

from mlnotes_zoo.constraints import PositiveInt
from mlnotes_zoo.errors import UsageError
from mlnotes_zoo.lit.base import OptimizerFactory, SchedulerFactory, ZooModule
from mlnotes_zoo.models.ctc import (
    CTCSpeechModel,
    ctc_loss,
    greedy_decode,
    ids_to_text,
    prefix_beam_search,
)
from mlnotes_zoo.weights import load_checkpoint


class LitCTC(ZooModule):
    """Trains a :class:`~mlnotes_zoo.models.ctc.CTCSpeechModel` on the CTC loss.

    Validation decodes greedily; test uses ``test_decoder`` (prefix beam search of width
    ``beam_width`` by default). CER and WER (torchmetrics) are computed over the whole split
    and logged as ``val/cer``, ``val/wer``, ``test/cer``, ``test/wer``; on a corpus without
    spaces (spoken symbols) WER is the utterance error rate.

    Args:
        net: the network (or its registry spec when loaded from a checkpoint).
        test_decoder: ``"greedy"`` or ``"beam"``.
        beam_width: prefix beam search width.
        encoder_init: path of a ``model=hubert`` checkpoint whose pretrained encoder the
            network (``hubert_ctc``) starts from when fitting begins (not when resuming: the
            run's checkpoint then has the weights).
        optimizer, scheduler, activation_checkpointing: see
            :class:`~mlnotes_zoo.lit.base.ZooModule`.
    """

    net: CTCSpeechModel

    def __init__(
        self,
        *,
        net: nn.Module | Mapping[str, Any],
        test_decoder: Literal["greedy", "beam"] = "beam",
        beam_width: PositiveInt = 8,
        encoder_init: str | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(net=net, optimizer=optimizer, scheduler=scheduler, **base_kwargs)
        self.test_decoder = test_decoder
        self.beam_width = beam_width
        self.encoder_init = encoder_init
        if encoder_init is not None and not hasattr(self.net, "load_encoder"):
            raise UsageError(f"model.encoder_init: {type(self.net).__name__} takes no pretrained "
                             "encoder; use model=hubert_ctc")
        self.cer = nn.ModuleDict({"val": CharErrorRate(), "test": CharErrorRate()})
        self.wer = nn.ModuleDict({"val": WordErrorRate(), "test": WordErrorRate()})

    def setup(self, stage: str) -> None:
        # before a resumed run's checkpoint is restored, which then overrides these weights
        if stage == "fit" and self.encoder_init is not None:
            if not Path(self.encoder_init).is_file():
                raise UsageError(f"model.encoder_init={self.encoder_init}: no such checkpoint "
                                 "file")
            pretrained = load_checkpoint(self.encoder_init)
            try:
                self.net.load_encoder(pretrained)
            except (ValueError, AttributeError) as err:
                raise UsageError(f"model.encoder_init={self.encoder_init}: {err}") from None

    def decode(self, log_probs: Tensor, lengths: Tensor, stage: str) -> list[str]:
        if stage == "test" and self.test_decoder == "beam":
            ids = prefix_beam_search(log_probs, lengths, beam_width=self.beam_width)
        else:
            ids = greedy_decode(log_probs, lengths)
        return [ids_to_text(seq, self.net.vocab) for seq in ids]

    def model_step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        waves, wave_lengths, targets, target_lengths = batch
        log_probs, out_lengths = self.net(waves, wave_lengths)  # (B, T', C), (B,)
        loss = ctc_loss(log_probs, targets, out_lengths, target_lengths)
        out = {"loss": loss}
        if stage in ("val", "test"):
            hyps = self.decode(log_probs, out_lengths, stage)
            refs = [ids_to_text(t[:n].tolist(), self.net.vocab)
                    for t, n in zip(targets, target_lengths, strict=True)]
            self.cer[stage].update(hyps, refs)
            self.wer[stage].update(hyps, refs)
            # share of frames whose best class is the blank: ~1 early in training (the
            # blank-only plateau), then falls to about 1 − labels/frames
            valid = torch.arange(log_probs.shape[1], device=self.device) < out_lengths[:, None]
            out["blank_rate"] = (log_probs.argmax(-1) == 0)[valid].float().mean()
        return out

    def on_validation_epoch_end(self) -> None:
        self._log_error_rates("val")

    def on_test_epoch_end(self) -> None:
        self._log_error_rates("test")

    def _log_error_rates(self, stage: str) -> None:
        for name, metric in (("cer", self.cer[stage]), ("wer", self.wer[stage])):
            self.log(f"{stage}/{name}", metric.compute(), prog_bar=name == "cer")
            metric.reset()

    @torch.no_grad()
    def pictures(self, batch: Any) -> dict[str, Tensor]:
        """Log-mel features of the first validation utterance above its CTC posteriors."""
        waves, wave_lengths = batch[0][:1], batch[1][:1]
        feats, frames = self.net.frontend(waves, wave_lengths)  # (1, F, T)
        log_probs, out_lengths = self.net(waves, wave_lengths)  # (1, T', C)
        feats = feats[0, :, : int(frames[0])].flip(0)  # low frequencies at the bottom
        feats = (feats - feats.min()) / (feats.max() - feats.min() + 1e-6)
        posteriors = log_probs[0, : int(out_lengths[0])].exp().T  # (C, T')
        posteriors = F.interpolate(posteriors[None, None], size=(posteriors.shape[0] * 4,
                                   feats.shape[1]), mode="nearest")[0, 0]
        image = torch.cat([feats, torch.ones(2, feats.shape[1]), 1 - posteriors])
        return {"features_and_posteriors": image.clamp(0, 1).expand(3, -1, -1).contiguous()}
