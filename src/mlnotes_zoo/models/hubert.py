"""HuBERT (Hsu et al. 2021): masked prediction of cluster targets from unlabeled speech.

Note ``003`` ("HuBert"): BERT-style masked prediction for audio, whose labels "come from an
unsupervised teacher which is the k-means" — k-means on MFCC frames first, then on the
model's own features. Here:

    waveform (B, N) → log-mels every hop_ms → 4× conv subsampling → frames (B, T, dim)
    → span masking: frames of sampled spans replaced by a learned mask embedding
    → Transformer encoder → final projection z_t
    → logits l_tk = cos(z_t, e_k) / τ against learned codeword embeddings e_k
    loss = CE over the masked frames (+ ``unmasked_weight`` × CE over the others)

The front end and subsampling are the CTC family's (``models/ctc``), so an encoder
pretrained here has the frame rate of ``model=ctc``. ``hubert_ctc`` (:class:`HuBERTCTC`) is
the same encoder under a CTC head, the downstream model: fine-tuned from a pretrained
encoder (``model=hubert_ctc model.encoder_init=<hubert ckpt>``) or trained from scratch.
:func:`mfcc_features` gives the iteration-1 k-means features (13 MFCCs + Δ + ΔΔ,
torchaudio) at exactly the encoder's frame rate: one target per encoder frame, for every
length (tested); :func:`target_quality` measures targets against reference labels (PNMI).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

from mlnotes_zoo.constraints import (
    Fraction,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    UnitInterval,
)
from mlnotes_zoo.models.ctc.model import (
    DEFAULT_VOCAB,
    ConvSubsampling,
    CTCSpeechModel,
    LogMelFrontend,
    length_mask,
)
from mlnotes_zoo.models.shared import check_tensor
from mlnotes_zoo.registry import register_model

OBJECTIVE = ["span_mask", "cosine_logits", "masked_prediction_loss"]
__all__ = ["HuBERT", "HuBERTCTC", "HuBERTOutput", "context_network", "encode_context",
           "mfcc_features", "target_quality", *OBJECTIVE]


def span_mask(lengths: Tensor, max_len: int, *, mask_prob: float, span: int,
              generator: torch.Generator | None = None) -> Tensor:
    """(B, max_len) bool: for each utterance of L frames, round(mask_prob·L / span) spans of
    ``span`` frames, starts drawn uniformly without replacement from [0, L − span]
    (fairseq's / torchaudio's ``compute_mask_indices`` with a fixed length; overlapping
    spans merge, so at most ``mask_prob`` of the frames are masked). Never masks padding;
    an utterance shorter than ``span`` frames is not masked."""
    mask = torch.zeros(len(lengths), max_len, dtype=torch.bool)
    for b, length in enumerate(lengths.tolist()):
        starts_range = length - span + 1
        count = min(round(mask_prob * length / span), max(starts_range, 0))
        if count <= 0:
            continue
        starts = torch.randperm(starts_range, generator=generator)[:count]
        index = (starts[:, None] + torch.arange(span)).flatten()
        mask[b, index] = True
    return mask.to(lengths.device)


def cosine_logits(projected: Tensor, codewords: Tensor, temperature: float) -> Tensor:
    """l_k = cos(z, e_k) / τ for z (..., C) and codewords (K, C): (..., K)."""
    # cos(z, e) = z·e / (‖z‖ ‖e‖)
    return F.normalize(projected, dim=-1) @ F.normalize(codewords, dim=-1).T / temperature


def masked_prediction_loss(logits: Tensor, targets: Tensor, mask: Tensor, valid: Tensor,
                           *, unmasked_weight: float = 0.0) -> dict[str, Tensor]:
    """Cross-entropy of the cluster targets (B, T) over the masked frames (mean), plus
    ``unmasked_weight`` × that over the valid unmasked frames (HuBERT's L = α L_m + (1 − α) L_u
    with α = 1 by default, the paper's best). Returns loss, both terms, and accuracies."""
    ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, T)
    correct = (logits.argmax(-1) == targets).float()
    masked, unmasked = mask & valid, ~mask & valid
    zero = logits.new_zeros(())
    ce_m = ce[masked].mean() if masked.any() else zero
    ce_u = ce[unmasked].mean() if unmasked.any() else zero
    return {"loss": ce_m + unmasked_weight * ce_u, "masked_ce": ce_m, "unmasked_ce": ce_u,
            "masked_acc": correct[masked].mean() if masked.any() else zero,
            "unmasked_acc": correct[unmasked].mean() if unmasked.any() else zero}


def target_quality(labels: Tensor, clusters: Tensor) -> dict[str, Tensor]:
    """How well cluster targets (N,) match reference labels (N,) ("phones"; here the symbol
    sounding in each frame), the HuBERT paper's cluster-quality measures, from the joint p(y, z)
    of the frames' label y and cluster z:

    - PNMI = I(y; z) / H(y), phone-normalised mutual information: the share of the label's
      uncertainty a frame's cluster removes (1: the clusters determine the labels);
    - phone purity = E_z[max_y p(y | z)]: accuracy of labelling each cluster by its
      commonest label;
    - cluster purity = E_y[max_z p(z | y)]: how concentrated each label is in one cluster.
    """
    labels, clusters = labels.long().flatten(), clusters.long().flatten()
    num_labels, num_clusters = int(labels.max()) + 1, int(clusters.max()) + 1
    joint = torch.bincount(labels * num_clusters + clusters, minlength=num_labels * num_clusters)
    joint = joint.view(num_labels, num_clusters).double() / len(labels)  # p(y, z)
    p_label, p_cluster = joint.sum(1), joint.sum(0)
    nonzero = joint > 0
    # I(y; z) = Σ p(y, z) log p(y, z) / (p(y) p(z)),  H(y) = −Σ p(y) log p(y)
    ratio = joint / (p_label[:, None] * p_cluster[None, :])
    mutual = (joint[nonzero] * ratio[nonzero].log()).sum()
    entropy = -(p_label[p_label > 0] * p_label[p_label > 0].log()).sum()
    return {"pnmi": mutual / entropy if entropy > 0 else torch.ones((), dtype=torch.float64),
            "phone_purity": joint.max(0).values.sum(),  # Σ_z p(z) max_y p(y | z)
            "cluster_purity": joint.max(1).values.sum()}  # Σ_y p(y) max_z p(z | y)


def mfcc_features(waves: Tensor, lengths: Tensor, *, sample_rate: int, hop_ms: float,
                  num_mfcc: int = 13, subsampling: int = 4) -> tuple[Tensor, Tensor]:
    """MFCC + Δ + ΔΔ (torchaudio) per utterance, (B, T, 3·num_mfcc), and frames (B,), at the
    encoder's frame rate: centred windows every ``subsampling × hop`` samples give
    1 + ⌊N / (4·hop)⌋ = ⌈(1 + ⌊N / hop⌋) / 4⌉ frames, the encoder's count. Each coefficient
    is standardised over the utterance's frames (as the log-mel front end)."""
    hop = round(sample_rate * hop_ms / 1000) * subsampling
    n_fft = 1 << (2 * hop - 1).bit_length()
    mfcc = torchaudio.transforms.MFCC(
        sample_rate=sample_rate, n_mfcc=num_mfcc,
        melkwargs=dict(n_fft=n_fft, win_length=2 * hop, hop_length=hop, n_mels=40, center=True,
                       pad_mode="constant"))  # any length, even below n_fft / 2
    deltas = torchaudio.transforms.ComputeDeltas()
    frames = torch.div(lengths, hop, rounding_mode="floor") + 1
    out = waves.new_zeros(len(lengths), int(frames.max()), 3 * num_mfcc)
    for b, n in enumerate(lengths.tolist()):
        c = mfcc.to(waves.device)(waves[b, :n].float())  # (num_mfcc, T_b)
        d1 = deltas(c)
        feats = torch.cat([c, d1, deltas(d1)]).T  # (T_b, 3·num_mfcc)
        feats = (feats - feats.mean(0)) / (feats.std(0, unbiased=False) + 1e-5)
        out[b, : len(feats)] = feats
    return out, frames


def context_network(*, dim: int, num_layers: int, num_heads: int, ff_dim: int,
                    dropout: float) -> tuple[nn.Conv1d, nn.ModuleList]:
    """HuBERT's context network: a convolutional relative position embedding (wav2vec 2.0)
    and pre-norm Transformer layers (:func:`encode_context` runs them)."""
    pos_conv = nn.Conv1d(dim, dim, kernel_size=9, padding=4, groups=8)
    layers = nn.ModuleList(
        nn.TransformerEncoderLayer(dim, num_heads, ff_dim, dropout, batch_first=True,
                                   norm_first=True, activation="gelu")
        for _ in range(num_layers))
    return pos_conv, layers


def encode_context(x: Tensor, valid: Tensor, pos_conv: nn.Conv1d, layers: nn.ModuleList
                   ) -> list[Tensor]:
    """x (B, T, dim), valid (B, T) bool -> [input + position term, layer 1 output, ...]."""
    x = x * valid[..., None].to(x.dtype)  # padding is 0 for the position convolution
    x = x + F.gelu(pos_conv(x.transpose(1, 2))).transpose(1, 2)
    hidden = [x]
    for layer in layers:
        x = layer(x, src_key_padding_mask=~valid)
        hidden.append(x)
    return hidden


class HuBERTOutput(NamedTuple):
    logits: Tensor  # cos(z, e_k)/τ, (B, T, K)
    lengths: Tensor  # valid frames, (B,)
    mask: Tensor  # frames replaced by the mask embedding, (B, T) bool
    hidden: list[Tensor]  # the encoder input and each layer's output, each (B, T, dim)


@register_model("hubert")
class HuBERT(nn.Module):
    """HuBERT's network (see the module docstring).

    Args:
        sample_rate, n_mels, win_ms, hop_ms, conv_channels: the log-mel front end and
            conv subsampling of ``model=ctc`` (one frame per 4·hop_ms).
        dim, num_layers, num_heads, ff_dim, dropout: the Transformer encoder (pre-norm).
        num_clusters: K, the number of target clusters (codewords).
        code_dim: size of the projection z and the codewords.
        temperature: τ of the cosine logits (0.1 in the paper and torchaudio).
        mask_prob, mask_span: span masking in training (frames; see :func:`span_mask`).

    ``forward(waves, lengths, mask=None)``: in training mode a span mask is drawn when none
    is given; in eval mode nothing is masked unless ``mask`` is given.
    """

    repeated_blocks = (nn.TransformerEncoderLayer,)

    def __init__(self, *, sample_rate: PositiveInt = 8000, n_mels: PositiveInt = 40,
                 win_ms: PositiveFloat = 25.0, hop_ms: PositiveFloat = 10.0,
                 conv_channels: PositiveInt = 32, dim: PositiveInt = 128,
                 num_layers: PositiveInt = 4, num_heads: PositiveInt = 4,
                 ff_dim: PositiveInt = 256, dropout: UnitInterval = 0.1,
                 num_clusters: PositiveInt = 50, code_dim: PositiveInt = 64,
                 temperature: PositiveFloat = 0.1, mask_prob: Fraction = 0.5,
                 mask_span: PositiveInt = 5) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.sample_rate, self.hop_ms = sample_rate, hop_ms
        self.num_clusters, self.temperature = num_clusters, temperature
        self.mask_prob, self.mask_span = mask_prob, mask_span
        self.frontend = LogMelFrontend(sample_rate=sample_rate, n_mels=n_mels, win_ms=win_ms,
                                       hop_ms=hop_ms)
        self.subsample = ConvSubsampling(n_mels=n_mels, channels=conv_channels, dim=dim)
        self.mask_embedding = nn.Parameter(torch.empty(dim).uniform_())
        self.pos_conv, self.layers = context_network(
            dim=dim, num_layers=num_layers, num_heads=num_heads, ff_dim=ff_dim, dropout=dropout)
        self.norm = nn.LayerNorm(dim)
        self.final_proj = nn.Linear(dim, code_dim)
        self.codewords = nn.Parameter(torch.empty(num_clusters, code_dim).uniform_())

    def output_lengths(self, num_samples: Tensor) -> Tensor:
        """Encoder frames for waveforms of ``num_samples`` samples."""
        return self.subsample.output_lengths(self.frontend.output_lengths(num_samples))

    @property
    def frame_samples(self) -> int:
        """Samples between encoder frames: frame t is centred on sample t·frame_samples."""
        return 4 * self.frontend.hop_length

    def target_features(self, waves: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Iteration-1 k-means features at this network's frame rate (:func:`mfcc_features`)."""
        return mfcc_features(waves, lengths, sample_rate=self.sample_rate, hop_ms=self.hop_ms)

    def forward(self, waves: Tensor, lengths: Tensor | None = None,
                mask: Tensor | None = None) -> HuBERTOutput:
        where = "HuBERT.forward"
        sizes = check_tensor(waves, "waves", ("B", "N"), where=where)
        if lengths is not None:
            check_tensor(lengths, "lengths", ("B",), kind="int", sizes=sizes, where=where)
        else:
            lengths = torch.full((waves.shape[0],), waves.shape[-1], device=waves.device)
        feats, frames = self.frontend(waves, lengths)
        x, out_lengths = self.subsample(feats, frames)  # (B, T, dim)
        x = x[:, : int(out_lengths.max())]
        valid = length_mask(out_lengths, x.shape[1])  # (B, T)
        if mask is None:
            mask = (span_mask(out_lengths, x.shape[1], mask_prob=self.mask_prob,
                              span=self.mask_span) if self.training
                    else torch.zeros_like(valid))
        check_tensor(mask, "mask", ("B", x.shape[1]), kind="any", sizes=sizes, where=where)
        # masked frames: the learned mask embedding instead of the features
        x = torch.where(mask[..., None], self.mask_embedding.to(x.dtype), x)
        hidden = encode_context(x, valid, self.pos_conv, self.layers)
        logits = cosine_logits(self.final_proj(self.norm(hidden[-1])), self.codewords,
                               self.temperature)
        return HuBERTOutput(logits, out_lengths, mask, hidden)

    @torch.no_grad()
    def layer_features(self, waves: Tensor, lengths: Tensor, layer: int) -> tuple[Tensor, Tensor]:
        """Unmasked output of encoder layer ``layer`` (1-based; 0 = the encoder input),
        (B, T, dim), and frames (B,): the iteration-2 k-means features."""
        frames = int(self.output_lengths(lengths).max())
        out = self(waves, lengths, mask=torch.zeros(waves.shape[0], frames, dtype=torch.bool,
                                                    device=waves.device))
        return out.hidden[layer], out.lengths

    def example_input(self, batch_size: int = 2) -> tuple[Tensor, Tensor]:
        """Noise waveforms of 0.5-1 s with varying lengths, and those lengths."""
        n = self.sample_rate
        lengths = torch.linspace(n // 2, n, batch_size).long()
        waves = 0.1 * torch.randn(batch_size, n) * length_mask(lengths, n)
        return waves, lengths


@register_model("hubert_ctc")
class HuBERTCTC(CTCSpeechModel):
    """HuBERT's encoder under a CTC head: log-mels → 4× conv subsampling → position
    convolution → pre-norm Transformer → LayerNorm → blank + characters (HuBERT's
    fine-tuning, with SpecAugment on the features in place of masking frames).

    :meth:`load_encoder` copies a pretrained :class:`HuBERT`'s front end, subsampling,
    Transformer and final norm (everything but its mask embedding, projection and
    codewords); the classifier starts from scratch. Arguments as :class:`HuBERT`'s and
    ``model=ctc``'s.
    """

    repeated_blocks = (nn.TransformerEncoderLayer,)

    def __init__(self, *, vocab: str = DEFAULT_VOCAB, sample_rate: PositiveInt = 8000,
                 n_mels: PositiveInt = 40, win_ms: PositiveFloat = 25.0,
                 hop_ms: PositiveFloat = 10.0, freq_mask: NonNegativeInt = 6,
                 time_mask: NonNegativeInt = 4, n_freq_masks: NonNegativeInt = 2,
                 n_time_masks: NonNegativeInt = 2, conv_channels: PositiveInt = 32,
                 dim: PositiveInt = 128, num_layers: PositiveInt = 4, num_heads: PositiveInt = 4,
                 ff_dim: PositiveInt = 256, dropout: UnitInterval = 0.1) -> None:
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        super().__init__(vocab=vocab, sample_rate=sample_rate, n_mels=n_mels, win_ms=win_ms,
                         hop_ms=hop_ms, freq_mask=freq_mask, time_mask=time_mask,
                         n_freq_masks=n_freq_masks, n_time_masks=n_time_masks,
                         conv_channels=conv_channels, dim=dim)
        self.pos_conv, self.layers = context_network(
            dim=dim, num_layers=num_layers, num_heads=num_heads, ff_dim=ff_dim, dropout=dropout)

    def encode(self, x: Tensor, lengths: Tensor) -> Tensor:
        valid = length_mask(lengths, x.shape[1])
        return encode_context(x, valid, self.pos_conv, self.layers)[-1]

    @torch.no_grad()
    def load_encoder(self, pretrained: HuBERT) -> None:
        """Copy ``pretrained``'s encoder (sizes must match; the error names what differs)."""
        for name in ("frontend", "subsample", "pos_conv", "layers", "norm"):
            mine, theirs = getattr(self, name), getattr(pretrained, name)
            for key, value in theirs.state_dict().items():
                own = mine.state_dict().get(key)
                if own is None or own.shape != value.shape:
                    raise ValueError(f"the pretrained encoder's {name}.{key} has shape "
                                     f"{tuple(value.shape)}, this model's "
                                     f"{None if own is None else tuple(own.shape)}: build "
                                     "hubert_ctc with the hubert checkpoint's sizes")
            mine.load_state_dict(theirs.state_dict())
