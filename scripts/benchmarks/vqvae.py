"""VQ-VAE: our quantiser vs lucidrains' ``vector-quantize-pytorch`` at equal architecture.

    python scripts/bench.py --only vqvae

Both sides use the same encoder and decoder (ours, the default ``model=vqvae`` sizes) and
differ only in the quantiser: ours (:class:`mlnotes_zoo.models.vqvae.VectorQuantizer`, EMA,
no restarts) vs ``vector_quantize_pytorch.VectorQuantize`` (EMA, same K, D, decay, β,
straight-through, no rotation trick, no k-means init, no dead-code expiry). Measured:
seconds per training step (forward, reconstruction + β·commitment, backward, Adam) in
interleaved rounds (median; wall and CPU seconds, one thread, since the machine is shared),
the same for the quantiser alone (forward + backward of a (128, 16, 4, 4) grid: the only part
that differs), then test reconstruction MSE and code perplexity after the same number of
steps from the same batches and initial weights.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn

from mlnotes_zoo import create_model
from mlnotes_zoo.data.digits import DigitsDataModule
from mlnotes_zoo.models.vqvae import codebook_perplexity, commitment_loss, reconstruction_error

K, D, DECAY, BETA, BATCH = 64, 16, 0.99, 0.25, 128


class _PeerVQVAE(nn.Module):
    """Our encoder/decoder around lucidrains' VectorQuantize."""

    def __init__(self, ours: nn.Module) -> None:
        super().__init__()
        from vector_quantize_pytorch import VectorQuantize

        self.encoder, self.decoder = copy.deepcopy(ours.encoder), copy.deepcopy(ours.decoder)
        self.vq = VectorQuantize(dim=D, codebook_size=K, decay=DECAY, commitment_weight=BETA,
                                 accept_image_fmap=True, rotation_trick=False,
                                 kmeans_init=False, threshold_ema_dead_code=0)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        quantized, indices, commit = self.vq(self.encoder(x))
        x_hat = torch.sigmoid(self.decoder(quantized))
        return reconstruction_error(x_hat, x).mean() + commit.sum(), indices


def _ours_loss(model: nn.Module):
    def loss(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_hat, z_e, z_q, indices = model(x)
        return (reconstruction_error(x_hat, x) + BETA * commitment_loss(z_e, z_q)).mean(), indices
    return loss


def _step_fn(loss_fn, params):
    opt = torch.optim.Adam(params, lr=1e-3)

    def step(x):
        loss, _ = loss_fn(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss
    return step


def bench_vqvae(steps: int = 400, timed_rounds: int = 19, steps_per_round: int = 10) -> dict:
    import vector_quantize_pytorch

    torch.set_num_threads(1)  # a shared 2-core machine: one thread each gives steady timings
    torch.manual_seed(0)
    dm = DigitsDataModule(batch_size=BATCH)
    dm.setup()
    x_train, x_test = dm.splits["train"].tensors[0], dm.splits["test"].tensors[0]
    generator = torch.Generator().manual_seed(0)
    batches = [x_train[torch.randint(len(x_train), (BATCH,), generator=generator)]
               for _ in range(steps)]

    ours = create_model("vqvae", ema=True, decay=DECAY, num_codes=K, embedding_dim=D)
    peer = _PeerVQVAE(ours)
    with torch.no_grad():  # same initial codes on both sides
        peer.vq._codebook.embed.copy_(ours.quantizer.codebook.unsqueeze(0))
        peer.vq._codebook.embed_avg.copy_(ours.quantizer.codebook.unsqueeze(0))
    sides = {"ours": (ours, _ours_loss(ours)), "peer": (peer, peer.loss)}
    steppers = {name: _step_fn(fn, m.parameters()) for name, (m, fn) in sides.items()}

    # Train both on the same batches; the first rounds are also the timing rounds.
    times: dict[str, list[float]] = {name: [] for name in sides}
    cpu_times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(0, steps, steps_per_round):
        chunk = batches[r:r + steps_per_round]
        for name in sides:
            sides[name][0].train()
            start, cpu_start = time.perf_counter(), time.process_time()
            for x in chunk:
                steppers[name](x)
            if r // steps_per_round < timed_rounds + 1 and r > 0:  # round 0 is warm-up
                times[name].append((time.perf_counter() - start) / len(chunk))
                cpu_times[name].append((time.process_time() - cpu_start) / len(chunk))

    result = {"batch": BATCH, "num_codes": K, "embedding_dim": D, "steps": steps,
              "threads": torch.get_num_threads(),
              "peer": f"vector-quantize-pytorch {vector_quantize_pytorch.__version__}"
              if hasattr(vector_quantize_pytorch, "__version__")
              else "vector-quantize-pytorch 1.32.0",
              "params": sum(p.numel() for p in ours.parameters())}
    for name, (model, loss_fn) in sides.items():
        model.eval()
        with torch.no_grad():
            loss, indices = loss_fn(x_test)
            x_hat = ours(x_test).reconstruction if name == "ours" else torch.sigmoid(
                model.decoder(model.vq(model.encoder(x_test))[0]))
        counts = torch.bincount(indices.flatten(), minlength=K)
        result[f"step_s_{name}"] = statistics.median(times[name])
        result[f"step_cpu_s_{name}"] = statistics.median(cpu_times[name])
        result[f"test_recon_mse_{name}"] = reconstruction_error(x_hat, x_test).mean().item()
        result[f"test_perplexity_{name}"] = codebook_perplexity(counts).item()
    result["step_ratio_ours_over_peer"] = result["step_s_ours"] / result["step_s_peer"]
    result["step_cpu_ratio_ours_over_peer"] = (result["step_cpu_s_ours"]
                                               / result["step_cpu_s_peer"])
    result.update(_quantiser_only(ours.quantizer, peer.vq))
    return result


def _quantiser_only(ours: nn.Module, peer: nn.Module, rounds: int = 30, reps: int = 20) -> dict:
    """Forward + backward of the quantisers alone on the same grid, interleaved rounds."""
    z = torch.randn(BATCH, D, 4, 4, requires_grad=True)

    def run_ours():
        z_q, z_st, _ = ours(z)
        (z_st.square().mean() + BETA * commitment_loss(z, z_q).mean()).backward()

    def run_peer():
        quantized, _, commit = peer(z)
        (quantized.square().mean() + commit.sum()).backward()

    times: dict[str, list[float]] = {"ours": [], "peer": []}
    ours.train(), peer.train()
    for _ in range(rounds):
        for name, fn in (("ours", run_ours), ("peer", run_peer)):
            start = time.process_time()
            for _ in range(reps):
                fn()
            times[name].append((time.process_time() - start) / reps)
    out = {f"quantizer_cpu_s_{k}": statistics.median(v) for k, v in times.items()}
    out["quantizer_ratio_ours_over_peer"] = (out["quantizer_cpu_s_ours"]
                                             / out["quantizer_cpu_s_peer"])
    return out


BENCHMARKS = {"vqvae": bench_vqvae}
