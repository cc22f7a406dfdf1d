"""HuBERT: seconds per pretraining step, ours against torchaudio's ``HuBERTPretrainModel``.

    python scripts/bench.py --only hubert_step

The same Transformer encoder on both sides (``model=hubert`` defaults: 4 pre-norm layers,
dim 128, 4 heads, FF 256, K = 50 codewords of 64, mask_prob 0.5 in spans of 5 frames,
masked-only loss) on a batch of 16 utterances of 0.75-2 s at 8 kHz; the front ends differ
as the two designs do: ours the log-mel + 4× conv subsampling of ``model=ctc`` (one frame per
40 ms), torchaudio's its waveform CNN (7 conv layers of 32 channels, stride 320: one frame per
40 ms too). A step is forward, masked cross-entropy, backward and AdamW, with fixed cluster
labels; the median of 10 steps after 2 warm-up steps, on the process's threads. Also:
seconds to compute the batch's iteration-1 targets (MFCC + Δ + ΔΔ and the nearest of 50
k-means centres), which torchaudio's recipe computes offline.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

BATCH, STEPS, WARMUP = 16, 10, 2


def _batch(sample_rate: int = 8000) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(int(0.75 * sample_rate), 2 * sample_rate, (BATCH,), generator=g)
    waves = 0.1 * torch.randn(BATCH, int(lengths.max()), generator=g)
    waves *= (torch.arange(waves.shape[1]) < lengths[:, None]).float()
    return waves, lengths


def _median_step(step) -> float:
    for _ in range(WARMUP):
        step()
    times = []
    for _ in range(STEPS):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def hubert_step() -> dict:
    import torchaudio

    from mlnotes_zoo import create_model
    from mlnotes_zoo.models.hubert import masked_prediction_loss
    from mlnotes_zoo.models.mixture import KMeans

    torch.manual_seed(0)
    waves, lengths = _batch()
    ours = create_model("hubert").train()
    frames = ours.output_lengths(lengths)
    labels = torch.randint(0, 50, (BATCH, int(frames.max())))
    valid = torch.arange(labels.shape[1]) < frames[:, None]
    opt = torch.optim.AdamW(ours.parameters(), lr=1e-3)

    def our_step() -> None:
        out = ours(waves, lengths)
        loss = masked_prediction_loss(out.logits, labels, out.mask, valid)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    conv = [(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2  # stride 5·2⁶ = 320
    peer = torchaudio.models.hubert_pretrain_model(
        extractor_mode="group_norm", extractor_conv_layer_config=conv, extractor_conv_bias=False,
        encoder_embed_dim=128, encoder_projection_dropout=0.1, encoder_pos_conv_kernel=9,
        encoder_pos_conv_groups=8, encoder_num_layers=4, encoder_num_heads=4,
        encoder_attention_dropout=0.1, encoder_ff_interm_features=256,
        encoder_ff_interm_dropout=0.0, encoder_dropout=0.1, encoder_layer_norm_first=True,
        encoder_layer_drop=0.0, mask_prob=0.5, mask_selection="static", mask_other=0.0,
        mask_length=5, no_mask_overlap=False, mask_min_space=1, mask_channel_prob=0.0,
        mask_channel_selection="static", mask_channel_other=0.0, mask_channel_length=10,
        no_mask_channel_overlap=False, mask_channel_min_space=1, skip_masked=False,
        skip_nomask=True, num_classes=50, final_dim=64, feature_grad_mult=0.1).train()
    peer_frames = peer.wav2vec2.feature_extractor(waves, lengths)[1]
    peer_labels = torch.randint(0, 50, (BATCH, int(peer_frames.max())))
    peer_opt = torch.optim.AdamW(peer.parameters(), lr=1e-3)

    def peer_step() -> None:
        logit_m, _, penalty = peer(waves, peer_labels, lengths)
        target = torch.zeros(len(logit_m), dtype=torch.long)  # the positive is column 0
        loss = F.cross_entropy(logit_m, target) + 10 * penalty
        peer_opt.zero_grad(set_to_none=True)
        loss.backward()
        peer_opt.step()

    kmeans = KMeans(in_shape=(39,), num_clusters=50)
    feats, n = ours.target_features(waves, lengths)
    kmeans.initialize(feats[valid], generator=torch.Generator().manual_seed(0))

    def targets() -> None:
        f, n = ours.target_features(waves, lengths)
        kmeans.predict(f[torch.arange(f.shape[1]) < n[:, None]])

    result = {
        "batch": f"{BATCH} utterances, {int(lengths.sum())} samples at 8 kHz",
        "threads": torch.get_num_threads(), "torchaudio": torchaudio.__version__,
        "ours_params": sum(p.numel() for p in ours.parameters()),
        "torchaudio_params": sum(p.numel() for p in peer.parameters()),
        "ours_frames": int(frames.sum()), "torchaudio_frames": int(peer_frames.sum()),
        "ours_step_s": _median_step(our_step), "torchaudio_step_s": _median_step(peer_step),
        "ours_targets_s": _median_step(targets),
    }
    result["ratio"] = result["ours_step_s"] / result["torchaudio_step_s"]
    return result


BENCHMARKS = {"hubert_step": hubert_step}

if __name__ == "__main__":
    import json

    print(json.dumps(hubert_step(), indent=2))
