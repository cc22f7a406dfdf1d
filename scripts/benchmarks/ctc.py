"""CTC encoders vs torchaudio's at equal size: training-step time on log-mel features.

Our DeepSpeech2-like BiGRU encoder (``model=ctc``) against ``torchaudio.models.DeepSpeech``
(DeepSpeech 1: per-frame MLP + one BiRNN) with its hidden width chosen to match our
parameter count, and our Conformer-CTC against a bare ``torchaudio.models.Conformer`` +
linear head with the same layer sizes. Timed: forward + CTC loss + backward + AdamW step on
a batch of 16 two-second utterances at 16 kHz (CPU, the threads torch picks).
"""

from __future__ import annotations

import time

import torch
import torchaudio
from torch import nn

from mlnotes_zoo import create_model
from mlnotes_zoo.models.ctc import ctc_loss

BATCH, SECONDS, RATE, STEPS = 16, 2.0, 16000, 5


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _time(step) -> float:
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(STEPS):
        step()
    return (time.perf_counter() - start) / STEPS


def _ours(name: str, **kwargs) -> tuple[float, int, nn.Module]:
    torch.manual_seed(0)
    model = create_model(name, sample_rate=RATE, vocab=" 'abcdefghijklmnopqrstuvwxyz", **kwargs)
    opt = torch.optim.AdamW(model.parameters())
    n = int(SECONDS * RATE)
    waves, lengths = 0.1 * torch.randn(BATCH, n), torch.full((BATCH,), n)
    targets, target_lengths = torch.randint(1, 29, (BATCH, 20)), torch.full((BATCH,), 20)

    def step():
        log_probs, out_lengths = model(waves, lengths)
        loss = ctc_loss(log_probs, targets, out_lengths, target_lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return _time(step), _params(model), model


def _peer(model: nn.Module, frames: int, features: int, forward) -> float:
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randn(BATCH, frames, features)
    targets, target_lengths = torch.randint(1, 29, (BATCH, 20)), torch.full((BATCH,), 20)

    def step():
        log_probs = forward(x).log_softmax(-1)
        lengths = torch.full((BATCH,), log_probs.shape[1])
        loss = ctc_loss(log_probs, targets, lengths, target_lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return _time(step)


def bench_ctc() -> dict:
    ours_s, ours_params, model = _ours("ctc")
    frames = int(SECONDS * RATE) // model.frontend.hop_length + 1
    n_mels = model.frontend.mel.n_mels
    # torchaudio's DeepSpeech on the same log-mels, widened to our parameter count
    hidden = min(range(64, 2049, 8), key=lambda h: abs(
        _params(torchaudio.models.DeepSpeech(n_mels, n_hidden=h, n_class=29)) - ours_params))
    peer = torchaudio.models.DeepSpeech(n_mels, n_hidden=hidden, n_class=29)
    peer_s = _peer(peer, frames, n_mels, lambda x: peer(x.unsqueeze(1)))
    return {
        "ours": {"model": "ctc (conv 4x subsampling + 3 BiGRU layers)", "params": ours_params,
                 "step_s": round(ours_s, 4)},
        "peer": {"model": f"torchaudio.models.DeepSpeech(n_hidden={hidden}), no subsampling",
                 "params": _params(peer), "step_s": round(peer_s, 4),
                 "version": torchaudio.__version__},
        "setup": f"batch {BATCH} x {SECONDS}s @ {RATE} Hz, fwd+CTC+bwd+AdamW, "
                 f"{torch.get_num_threads()} threads",
    }


def bench_conformer_ctc() -> dict:
    ours_s, ours_params, model = _ours("conformer_ctc")
    frames = model.output_lengths(torch.tensor([int(SECONDS * RATE)])).item()
    dim = model.classifier.in_features
    conformer = torchaudio.models.Conformer(input_dim=dim, num_heads=4, ffn_dim=4 * dim,
                                            num_layers=4, depthwise_conv_kernel_size=15)
    peer = nn.ModuleDict({"conformer": conformer, "head": nn.Linear(dim, 29)})
    lengths = torch.full((BATCH,), frames)
    peer_s = _peer(peer, frames, dim,
                   lambda x: peer["head"](peer["conformer"](x, lengths)[0]))
    return {
        "ours": {"model": "conformer_ctc (front end + subsampling + Conformer)",
                 "params": ours_params, "step_s": round(ours_s, 4)},
        "peer": {"model": "torchaudio.models.Conformer + linear head on pre-subsampled input",
                 "params": _params(peer), "step_s": round(peer_s, 4),
                 "version": torchaudio.__version__},
        "setup": f"batch {BATCH} x {SECONDS}s @ {RATE} Hz ({frames} encoder frames), "
                 f"fwd+CTC+bwd+AdamW, {torch.get_num_threads()} threads",
    }


BENCHMARKS = {"ctc": bench_ctc, "conformer_ctc": bench_conformer_ctc}
