"""Flows vs normflows (Stimper et al., ``pip install normflows``) at equal architecture and size.

    python scripts/bench.py --only flows_realnvp --only flows_glow

For each model: CPU seconds per training step on one thread (forward x -> z, bits/dim loss,
backward, Adam) of ours and of normflows' ``MultiscaleFlow`` built from the same blocks
(same levels, steps, hidden channels, conditioner convs 3×3 -> 1×1 -> 3×3, logit
preprocessing, standard normal prior), timed in interleaved rounds (median) on batches of
the digits; then test bits/dim of both after the same number of steps from the same
batches, and the full-covariance Gaussian baseline on the same data.

normflows' checkerboard coupling gathers the kept pixels into an (H, W/2) image, ours into
(2C, H/2, W/2) (space-to-depth), so at equal hidden width our RealNVP conditioners have
more input/output channels (parameter counts are reported) and a quarter of the positions.
"""

from __future__ import annotations

import math
import statistics
import time

import torch

from mlnotes_zoo import create_model
from mlnotes_zoo.data.digits import DigitsDataModule
from mlnotes_zoo.models.flows import (
    bits_per_dim,
    fit_gaussian,
    flow_nll,
    gaussian_bits_per_dim,
    uniform_dequantize,
)

LEVELS, SHAPE, DIMS = 17, (1, 8, 8), 64
BATCH = 128


def _normflows_glow(num_levels: int, depth: int, hidden: int):
    import normflows as nf

    c = SHAPE[0]
    flows, merges, q0 = [], [], []
    for i in range(num_levels):  # generative order: level 0 is the coarsest
        channels = c * 2 ** (num_levels + 1 - i)
        level = [nf.flows.GlowBlock(channels, hidden, split_mode="channel", scale=True,
                                    scale_map="sigmoid") for _ in range(depth)]
        flows.append(level + [nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            k = num_levels - i
            shape = (c * 2**k, SHAPE[1] // 2**k, SHAPE[2] // 2**k)
        else:
            shape = (c * 2 ** (num_levels + 1), SHAPE[1] // 2**num_levels,
                     SHAPE[2] // 2**num_levels)
        q0.append(nf.distributions.DiagGaussian(shape, trainable=False))
    return nf.MultiscaleFlow(q0, flows, merges, transform=nf.transforms.Logit(alpha=0.05),
                             class_cond=False)


def _normflows_realnvp(num_couplings: int, hidden: int):
    """Two scales, as ours: [checkerboard ×n, squeeze, channel ×n, split], [checkerboard ×(n+1)]."""
    import normflows as nf

    def coupling(channels, mode, parity):
        if mode == "checkerboard":
            sizes = (channels, hidden, hidden, 2 * channels)
        else:
            sizes = (channels // 2, hidden, hidden, 2 * (channels - channels // 2))
        net = nf.nets.ConvNet2d(sizes, (3, 1, 3), leaky=0.0, init_zeros=True)
        split = mode + ("_inv" if parity else "")
        return nf.flows.AffineCouplingBlock(net, scale=True, scale_map="exp", split_mode=split)

    c = SHAPE[0]
    last = [coupling(2 * c, "checkerboard", k % 2) for k in range(num_couplings + 1)]
    first = ([coupling(4 * c, "channel", k % 2) for k in range(num_couplings)][::-1]
             + [nf.flows.Squeeze()]
             + [coupling(c, "checkerboard", k % 2) for k in range(num_couplings)][::-1])
    q0 = [nf.distributions.DiagGaussian((2 * c, 4, 4), trainable=False),
          nf.distributions.DiagGaussian((2 * c, 4, 4), trainable=False)]
    return nf.MultiscaleFlow(q0, [last[::-1], first], [nf.flows.Merge()],
                             transform=nf.transforms.Logit(alpha=0.05), class_cond=False)


def _ours_loss(model):
    def loss(y):
        z, log_det = model(y)
        return flow_nll(z, log_det, num_dims=DIMS, levels=LEVELS)["bpd"].mean()
    return loss


def _theirs_loss(model):
    def loss(y):
        log_prob = model.log_prob(y, None) - DIMS * math.log(LEVELS)
        return bits_per_dim(log_prob, DIMS).mean()
    return loss


def _data():
    dm = DigitsDataModule(batch_size=BATCH)
    dm.setup()
    return dm.splits["train"].tensors[0], dm.splits["test"].tensors[0]


def _batches(train, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    while len(out) < steps:
        order = torch.randperm(len(train), generator=g)
        out += [train[order[i:i + BATCH]] for i in range(0, len(train) - BATCH + 1, BATCH)]
    return out[:steps]


def _train(model, loss_fn, batches, seed=0):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for x in batches:
        y = uniform_dequantize(x, LEVELS, torch.rand(x.shape, generator=g))
        loss = loss_fn(y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return float(loss)


@torch.no_grad()
def _test_bpd(loss_fn, model, test, draws=4):
    model.eval()
    g = torch.Generator().manual_seed(123)
    values = [float(loss_fn(uniform_dequantize(test, LEVELS, torch.rand(test.shape, generator=g))))
              for _ in range(draws)]
    return statistics.fmean(values)


def _compare(name, ours, theirs, sizes, steps=200, timed_steps=10, rounds=5) -> dict:
    import normflows

    train, test = _data()
    pairs = {"ours": (ours, _ours_loss), "normflows": (theirs, _theirs_loss)}
    # -- step time: interleaved rounds on fresh copies, median --------------------------
    # One thread, CPU seconds of this process: on a shared machine that is what stays put
    # when other jobs come and go (wall seconds are reported too).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    timing = {k: [] for k in pairs}
    wall = {k: [] for k in pairs}
    batches = _batches(train, timed_steps + 2)
    for _ in range(rounds):
        for key, (build, make_loss) in pairs.items():
            torch.manual_seed(0)
            model = build()
            loss_fn = make_loss(model)
            _train(model, loss_fn, batches[:2])  # warm-up (and ActNorm's data-dependent init)
            start, start_wall = time.process_time(), time.perf_counter()
            _train(model, loss_fn, batches[2:])
            timing[key].append((time.process_time() - start) / timed_steps)
            wall[key].append((time.perf_counter() - start_wall) / timed_steps)
    step_s = {k: statistics.median(v) for k, v in timing.items()}
    step_wall_s = {k: statistics.median(v) for k, v in wall.items()}
    # -- bits/dim after the same steps on the same batches and noise ---------------------
    result_bpd, params = {}, {}
    long_batches = _batches(train, steps)
    for key, (build, make_loss) in pairs.items():
        torch.manual_seed(0)
        model = build()
        loss_fn = make_loss(model)
        params[key] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        _train(model, loss_fn, long_batches)
        result_bpd[key] = _test_bpd(loss_fn, model, test)
    gaussian = fit_gaussian([train], levels=LEVELS)
    g = torch.Generator().manual_seed(123)
    gauss_bpd = float(gaussian_bits_per_dim(
        gaussian, uniform_dequantize(test, LEVELS, torch.rand(test.shape, generator=g)),
        levels=LEVELS).mean())
    torch.set_num_threads(threads)
    return {
        "model": name,
        "sizes": sizes,
        "params": params,
        "batch_size": BATCH,
        "data": "digits 8x8, 17 levels, uniform dequantization",
        "step_cpu_s_ours": step_s["ours"],
        "step_cpu_s_normflows": step_s["normflows"],
        "step_time_ratio": step_s["ours"] / step_s["normflows"],
        "step_wall_s_ours": step_wall_s["ours"],
        "step_wall_s_normflows": step_wall_s["normflows"],
        "step_cpu_s_per_round": timing,
        "steps_for_bpd": steps,
        "test_bpd_ours": result_bpd["ours"],
        "test_bpd_normflows": result_bpd["normflows"],
        "test_bpd_gaussian_baseline": gauss_bpd,
        "threads": 1,
        "normflows_version": normflows.__version__,
    }


def bench_realnvp() -> dict:
    sizes = dict(num_scales=2, num_couplings=3, hidden=64)
    return _compare("realnvp", lambda: create_model("realnvp", **sizes),
                    lambda: _normflows_realnvp(sizes["num_couplings"], sizes["hidden"]), sizes)


def bench_glow() -> dict:
    sizes = dict(num_levels=2, depth=4, hidden=64)
    return _compare("glow", lambda: create_model("glow", **sizes),
                    lambda: _normflows_glow(sizes["num_levels"], sizes["depth"], sizes["hidden"]),
                    sizes)


BENCHMARKS = {"flows_realnvp": bench_realnvp, "flows_glow": bench_glow}
