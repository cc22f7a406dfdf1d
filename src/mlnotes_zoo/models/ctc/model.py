"""CTC speech recognisers: log-mel front end, conv subsampling, BiGRU or Conformer encoder,
and the CTC objective (Graves et al. 2006).

Reads top-down: the front end (log-mel features, per-utterance normalisation, SpecAugment),
the 4× convolutional subsampling, the encoder blocks, the two registered networks, then the
objective:

- ``ctc``: :class:`DeepSpeechCTC`, conv subsampling + bidirectional GRU layers, as in
  DeepSpeech2 (Amodei et al. 2016);
- ``conformer_ctc``: :class:`ConformerCTC`, the same front end and subsampling feeding
  ``torchaudio.models.Conformer`` (Gulati et al. 2020).

Both return per-frame log-posteriors over blank + the vocabulary and the number of valid
output frames of each utterance; :func:`ctc_loss` turns them into the CTC loss and
:mod:`.decoding` into text. The notes (``shared/notes/003`` "CTC Loss") explain the setting:
a many-to-many prediction with no one-to-one correspondence between the T output frames and
the S ≪ T labels. CTC adds a blank token (index 0 here) and a collapse map B that merges
repeats between blanks and drops blanks, B(a a ∅ a b b ∅) = "aab", and sums over every
frame-level path that collapses to the labels:

    p(y | x) = Σ_{π : B(π) = y} Π_t p_t(π_t | x),        loss = −log p(y | x)

computed by the forward (α) recursion inside ``torch.nn.functional.ctc_loss``.
"""

from __future__ import annotations

from typing import ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn
from torchaudio.models.conformer import ConformerLayer

from mlnotes_zoo.constraints import NonNegativeInt, PositiveFloat, PositiveInt, UnitInterval
from mlnotes_zoo.models.ctc.decoding import BLANK, greedy_decode, ids_to_text, prefix_beam_search
from mlnotes_zoo.models.shared import check_tensor
from mlnotes_zoo.registry import register_model

OBJECTIVE = ["ctc_loss"]
__all__ = ["LogMelFrontend", "SpecAugment", "ConvSubsampling", "BiGRULayer", "CTCOutput",
           "CTCSpeechModel", "DeepSpeechCTC", "ConformerCTC", *OBJECTIVE]

DEFAULT_VOCAB = "0123456789abcdef"  # the spoken_symbols alphabet


def length_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B, max_len) bool, True on the valid steps of each sequence."""
    return torch.arange(max_len, device=lengths.device) < lengths.unsqueeze(1)


class LogMelFrontend(nn.Module):
    """Waveform (B, N) -> log-mel features (B, n_mels, T), normalised per utterance.

    Frames are ``hop_ms`` apart (centred windows, so T = 1 + N // hop). Each mel channel is
    standardised with the mean and standard deviation of the utterance's own frames
    (per-utterance CMVN), which removes the recording gain and channel colour; padding
    frames are 0 so the result does not depend on how much a batch pads.
    """

    def __init__(self, *, sample_rate: int, n_mels: int, win_ms: float, hop_ms: float) -> None:
        super().__init__()
        self.hop_length = round(sample_rate * hop_ms / 1000)
        win_length = round(sample_rate * win_ms / 1000)
        n_fft = 1 << (win_length - 1).bit_length()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, win_length=win_length,
            hop_length=self.hop_length, n_mels=n_mels, center=True, power=2.0,
        )

    def output_lengths(self, num_samples: Tensor) -> Tensor:
        return torch.div(num_samples, self.hop_length, rounding_mode="floor") + 1

    def forward(self, waves: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        frames = self.output_lengths(lengths)
        feats = waves.new_zeros(waves.shape[0], self.mel.n_mels, int(self.output_lengths(
            torch.tensor(waves.shape[-1]))))  # (B, n_mels, T)
        # One STFT per utterance over its own samples: the edge windows reflect the
        # utterance, not the batch's zero padding, so features do not depend on the batch.
        for b, n in enumerate(lengths.tolist()):
            logmel = torch.log(self.mel(waves[b, :n].float()) + 1e-6)  # (n_mels, frames_b)
            mean = logmel.mean(-1, keepdim=True)
            std = logmel.std(-1, unbiased=False, keepdim=True)
            feats[b, :, : logmel.shape[-1]] = (logmel - mean) / (std + 1e-5)
        return feats, frames


class SpecAugment(nn.Module):
    """SpecAugment (Park et al. 2019) without time warping: random frequency and time masks.

    Each utterance gets its own ``n_freq_masks`` bands of up to ``freq_mask`` mel channels
    and ``n_time_masks`` spans of up to ``time_mask`` frames set to 0 (the normalised
    mean). Active in training mode only.
    """

    def __init__(self, *, freq_mask: int, time_mask: int, n_freq_masks: int,
                 n_time_masks: int) -> None:
        super().__init__()
        self.freq = torchaudio.transforms.FrequencyMasking(freq_mask, iid_masks=True)
        self.time = torchaudio.transforms.TimeMasking(time_mask, iid_masks=True)
        self.n_freq_masks = n_freq_masks if freq_mask > 0 else 0
        self.n_time_masks = n_time_masks if time_mask > 0 else 0

    def forward(self, feats: Tensor) -> Tensor:
        if not self.training:
            return feats
        x = feats.unsqueeze(1)  # (B, 1, F, T): iid masks are drawn per (example, channel)
        for _ in range(self.n_freq_masks):
            x = self.freq(x)
        for _ in range(self.n_time_masks):
            x = self.time(x)
        return x.squeeze(1)


class ConvSubsampling(nn.Module):
    """Two 3×3 stride-2 convolutions over (frequency, time): T frames -> ⌈⌈T/2⌉/2⌉ frames.

    Output (B, T', dim). Each conv maps length L to ⌊(L + 2·1 − 3)/2⌋ + 1 = ⌈L/2⌉.
    """

    def __init__(self, *, n_mels: int, channels: int, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=2, padding=1)  # (B, c, ⌈F/2⌉, ⌈T/2⌉)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)  # ⌈F/4⌉, ⌈T/4⌉
        self.act = nn.GELU()
        freq_out = (n_mels + 1) // 2
        freq_out = (freq_out + 1) // 2
        self.proj = nn.Linear(channels * freq_out, dim)

    @staticmethod
    def half(lengths: Tensor) -> Tensor:
        return torch.div(lengths - 1, 2, rounding_mode="floor") + 1  # ⌈L/2⌉

    @classmethod
    def output_lengths(cls, lengths: Tensor) -> Tensor:
        return cls.half(cls.half(lengths))

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        half = self.half(lengths)
        x = self.act(self.conv1(feats.unsqueeze(1)))  # (B, c, F/2, T/2)
        # zero the frames past each utterance's end, as the standalone utterance's zero
        # padding would be: the result does not depend on the batch it is in
        x = x * length_mask(half, x.shape[-1])[:, None, None, :].to(x.dtype)
        x = self.act(self.conv2(x))  # (B, c, F', T')
        x = x.permute(0, 3, 1, 2).flatten(2)  # (B, T', c·F')
        return self.proj(x), self.half(half)


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each sequence of (B, T, D) within its own length; padding stays at the end."""
    t = torch.arange(x.shape[1], device=x.device).unsqueeze(0)  # (1, T)
    last = (lengths.to(x.device) - 1).unsqueeze(1)  # (B, 1)
    index = torch.where(t <= last, last - t, t)  # (B, T)
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


class BiGRULayer(nn.Module):
    """Pre-norm residual bidirectional GRU: x + W·[GRU→(LN x); GRU←(LN x)].

    The backward GRU reads each utterance reversed within its own length, so it starts at
    the last valid frame rather than in the padding (the result equals a packed-sequence
    BiGRU, without packing's slow per-step backward on CPU).
    """

    def __init__(self, *, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.gru_forward = nn.GRU(dim, hidden, batch_first=True)
        self.gru_backward = nn.GRU(dim, hidden, batch_first=True)
        self.proj = nn.Linear(2 * hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        h = self.norm(x)
        forward, _ = self.gru_forward(h)  # (B, T, hidden), causal: padding comes after
        backward, _ = self.gru_backward(reverse_padded(h, lengths))
        backward = reverse_padded(backward, lengths)  # back to time order
        return x + self.dropout(self.proj(torch.cat([forward, backward], dim=-1)))


class CTCOutput(NamedTuple):
    log_probs: Tensor  # (B, T', 1 + len(vocab)) log-softmax, index 0 = blank
    lengths: Tensor  # (B,) valid output frames after 4× subsampling


class CTCSpeechModel(nn.Module):
    """Shared front end, subsampling and output layer; subclasses build ``self.encoder_blocks``.

    Input: waveforms (B, N) at ``sample_rate`` zero-padded past ``lengths`` (B,) samples.
    Output: :class:`CTCOutput`. Index 0 of the classes is the CTC blank, index i ≥ 1 is the
    character ``vocab[i − 1]``.
    """

    repeated_blocks: ClassVar[tuple[type[nn.Module], ...]] = ()

    def __init__(
        self,
        *,
        vocab: str,
        sample_rate: int,
        n_mels: int,
        win_ms: float,
        hop_ms: float,
        freq_mask: int,
        time_mask: int,
        n_freq_masks: int,
        n_time_masks: int,
        conv_channels: int,
        dim: int,
    ) -> None:
        super().__init__()
        if not vocab or len(set(vocab)) != len(vocab):
            raise ValueError(f"vocab must be non-empty distinct characters, got {vocab!r}")
        self.vocab = vocab
        self.sample_rate = sample_rate
        self.frontend = LogMelFrontend(sample_rate=sample_rate, n_mels=n_mels, win_ms=win_ms,
                                       hop_ms=hop_ms)
        self.spec_augment = SpecAugment(freq_mask=freq_mask, time_mask=time_mask,
                                        n_freq_masks=n_freq_masks, n_time_masks=n_time_masks)
        self.subsample = ConvSubsampling(n_mels=n_mels, channels=conv_channels, dim=dim)
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, len(vocab) + 1)

    @property
    def num_classes(self) -> int:
        return len(self.vocab) + 1

    def output_lengths(self, num_samples: Tensor) -> Tensor:
        """Valid output frames for waveforms of ``num_samples`` samples."""
        return self.subsample.output_lengths(self.frontend.output_lengths(num_samples))

    def features(self, waves: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised (and, in training, SpecAugmented) log-mels (B, n_mels, T), frames (B,)."""
        feats, frames = self.frontend(waves, lengths)
        return self.spec_augment(feats), frames

    def encode(self, x: Tensor, lengths: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, waves: Tensor, lengths: Tensor | None = None) -> CTCOutput:
        where = f"{type(self).__name__}.forward"
        sizes = check_tensor(waves, "waves", ("B", "N"), where=where)
        if lengths is not None:
            check_tensor(lengths, "lengths", ("B",), kind="int", sizes=sizes, where=where)
        if lengths is None:
            lengths = torch.full((waves.shape[0],), waves.shape[-1], device=waves.device)
        feats, frames = self.features(waves, lengths)
        x, out_lengths = self.subsample(feats, frames)  # (B, T', dim)
        x = x[:, : int(out_lengths.max())]  # drop frames that are padding for every utterance
        x = self.encode(x, out_lengths)
        logits = self.classifier(self.norm(x))  # (B, T', C)
        return CTCOutput(logits.log_softmax(-1), out_lengths)

    def example_input(self, batch_size: int = 2) -> tuple[Tensor, Tensor]:
        """Noise waveforms of 0.5-1 s with varying lengths, and those lengths."""
        n = self.sample_rate
        lengths = torch.linspace(n // 2, n, batch_size).long()
        waves = 0.1 * torch.randn(batch_size, n) * length_mask(lengths, n)
        return waves, lengths

    @torch.no_grad()
    def transcribe(
        self,
        waves: Tensor,
        lengths: Tensor | None = None,
        *,
        decoder: Literal["greedy", "beam"] = "greedy",
        beam_width: int = 8,
    ) -> list[str]:
        """Text of each waveform (B, N) at ``self.sample_rate`` (call in eval mode)."""
        log_probs, out_lengths = self(waves, lengths)
        if decoder == "greedy":
            ids = greedy_decode(log_probs, out_lengths)
        elif decoder == "beam":
            ids = prefix_beam_search(log_probs, out_lengths, beam_width=beam_width)
        else:
            raise ValueError(f"decoder must be 'greedy' or 'beam', got {decoder!r}")
        return [ids_to_text(seq, self.vocab) for seq in ids]


@register_model("ctc")
class DeepSpeechCTC(CTCSpeechModel):
    """DeepSpeech2-like CTC model: log-mels -> 4× conv subsampling -> BiGRU layers -> softmax.

    Args:
        vocab: output characters; the model predicts blank + ``len(vocab)`` classes.
        sample_rate: of the input waveforms (Hz).
        n_mels, win_ms, hop_ms: log-mel features (hop 10 ms -> 25 output frames/s).
        freq_mask, time_mask, n_freq_masks, n_time_masks: SpecAugment (training only);
            mask widths in mel channels and frames, 0 disables.
        conv_channels: channels of the two subsampling convolutions.
        dim: width of the residual stream between GRU layers.
        hidden: GRU units per direction.
        num_layers: BiGRU layers.
        dropout: on each layer's residual branch.
    """

    repeated_blocks: ClassVar[tuple[type[nn.Module], ...]] = (BiGRULayer,)

    def __init__(
        self,
        *,
        vocab: str = DEFAULT_VOCAB,
        sample_rate: PositiveInt = 8000,
        n_mels: PositiveInt = 40,
        win_ms: PositiveFloat = 25.0,
        hop_ms: PositiveFloat = 10.0,
        freq_mask: NonNegativeInt = 6,
        time_mask: NonNegativeInt = 4,
        n_freq_masks: NonNegativeInt = 2,
        n_time_masks: NonNegativeInt = 2,
        conv_channels: PositiveInt = 32,
        dim: PositiveInt = 192,
        hidden: PositiveInt = 192,
        num_layers: PositiveInt = 3,
        dropout: UnitInterval = 0.1,
    ) -> None:
        super().__init__(vocab=vocab, sample_rate=sample_rate, n_mels=n_mels, win_ms=win_ms,
                         hop_ms=hop_ms, freq_mask=freq_mask, time_mask=time_mask,
                         n_freq_masks=n_freq_masks, n_time_masks=n_time_masks,
                         conv_channels=conv_channels, dim=dim)
        self.layers = nn.ModuleList(
            BiGRULayer(dim=dim, hidden=hidden, dropout=dropout) for _ in range(num_layers)
        )

    def encode(self, x: Tensor, lengths: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x, lengths)
        return x


def _zero_padding_before_depthwise_conv(layer: ConformerLayer) -> None:
    """Keep padding frames out of ``layer``'s depthwise convolution.

    torchaudio masks padding out of self-attention but its convolution module reads the
    padding frames' values, so without this a short utterance's output would depend on the
    batch it is in. The layer's padding mask is noted on each call of the layer (so the
    recomputation of activation checkpointing sees the same mask) and those frames are
    zeroed at the convolution's input, as zero padding of a lone utterance would be. The
    hooks are module-level functions reaching modules only through their arguments, so a
    deep copy of the model hooks its own modules.
    """
    layer.register_forward_pre_hook(_note_padding_mask)
    layer.conv_module.sequential[2].register_forward_pre_hook(_zero_padding_frames)


def _note_padding_mask(layer: nn.Module, args: tuple) -> None:
    mask = args[1] if len(args) > 1 else None  # (B, T), True = padding
    layer.conv_module.sequential[2].padding_mask = mask


def _zero_padding_frames(depthwise: nn.Module, args: tuple) -> tuple | None:
    mask = getattr(depthwise, "padding_mask", None)
    if mask is None:
        return None
    return (args[0].masked_fill(mask.unsqueeze(1), 0.0),)  # (B, C, T)


@register_model("conformer_ctc")
class ConformerCTC(CTCSpeechModel):
    """Conformer-CTC: log-mels -> 4× conv subsampling -> ``torchaudio.models.Conformer``.

    Each Conformer layer is FFN/2 -> self-attention -> depthwise-conv module -> FFN/2
    (macaron), with padding frames masked out of attention. Arguments as
    :class:`DeepSpeechCTC`, plus ``num_heads``, ``ffn_dim``, ``num_layers`` and
    ``kernel_size`` (depthwise convolution, odd) of the Conformer.
    """

    repeated_blocks: ClassVar[tuple[type[nn.Module], ...]] = (ConformerLayer,)

    def __init__(
        self,
        *,
        vocab: str = DEFAULT_VOCAB,
        sample_rate: PositiveInt = 8000,
        n_mels: PositiveInt = 40,
        win_ms: PositiveFloat = 25.0,
        hop_ms: PositiveFloat = 10.0,
        freq_mask: NonNegativeInt = 6,
        time_mask: NonNegativeInt = 4,
        n_freq_masks: NonNegativeInt = 2,
        n_time_masks: NonNegativeInt = 2,
        conv_channels: PositiveInt = 32,
        dim: PositiveInt = 144,
        num_heads: PositiveInt = 4,
        ffn_dim: PositiveInt = 576,
        num_layers: PositiveInt = 4,
        kernel_size: PositiveInt = 15,
        dropout: UnitInterval = 0.1,
    ) -> None:
        super().__init__(vocab=vocab, sample_rate=sample_rate, n_mels=n_mels, win_ms=win_ms,
                         hop_ms=hop_ms, freq_mask=freq_mask, time_mask=time_mask,
                         n_freq_masks=n_freq_masks, n_time_masks=n_time_masks,
                         conv_channels=conv_channels, dim=dim)
        self.conformer = torchaudio.models.Conformer(
            input_dim=dim, num_heads=num_heads, ffn_dim=ffn_dim, num_layers=num_layers,
            depthwise_conv_kernel_size=kernel_size, dropout=dropout,
        )
        for layer in self.conformer.conformer_layers:
            _zero_padding_before_depthwise_conv(layer)

    def encode(self, x: Tensor, lengths: Tensor) -> Tensor:
        return self.conformer(x, lengths)[0]


# -- the objective: CTC loss, blank = 0 ----------------------------------------------------
def ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    *,
    reduction: Literal["mean", "sum", "none"] = "mean",
    zero_infinity: bool = True,
) -> Tensor:
    """−log p(y|x) of padded label batches under frame posteriors, blank = 0.

    Args:
        log_probs: (B, T, C) log-softmax outputs, batch first (the zoo's layout; transposed
            to the (T, B, C) that cuDNN/CPU kernels take).
        targets: (B, S) label ids in 1..C−1, padded with anything past ``target_lengths``.
        input_lengths: (B,) valid frames of each output sequence (after subsampling).
        target_lengths: (B,) labels of each target.
        reduction: ``"mean"`` divides each utterance's loss by its label count, then
            averages over the batch (``torch.nn.CTCLoss``'s convention); ``"sum"``/``"none"``.
        zero_infinity: an infeasible pair (fewer frames than labels plus the blanks that
            separate repeats) has p(y|x) = 0; count it as loss 0 instead of +inf.
    """
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must be (B, T, C), got shape {tuple(log_probs.shape)}")
    return F.ctc_loss(
        log_probs.transpose(0, 1),  # (T, B, C)
        targets,
        input_lengths,
        target_lengths,
        blank=BLANK,
        reduction=reduction,
        zero_infinity=zero_infinity,
    )
