"""DCGAN training-step time: ours (``LitGAN.training_step``) against labml-nn's DCGAN step.

Same networks, same size: labml-nn's MNIST DCGAN ``Generator`` / ``Discriminator`` (z of
100, 28×28 images, 14.5 M parameters) are passed into our :class:`GAN` wrapper
(``generator=`` / ``discriminator=``), so the comparison is of the training step itself:
labml's ``Configs.step`` (discriminator update on real and detached fakes, then a generator
update that samples z and runs G again, with its label-smoothed ``DiscriminatorLogitsLoss``
/ ``GeneratorLogitsLoss``) against ours (one G forward reused for both updates, plain
non-saturating loss). Both use Adam(2e-4, β=(0.5, 0.999)) and batch 64 of MNIST-shaped
images. Also timed: our own conv stack (``models/gan.py``) configured to labml's architecture
layer for layer — ``latent_dim=100, gen_width=256, disc_width=256, num_stages=3`` gives the
same widths, kernels and resolutions (28 -> 14 -> 7 -> 3, the odd step a 3×3 kernel), the
same parameter count up to 258 biases. Target: ratio ours / labml ≤ 1.0.
Peer: ``pip install --no-deps labml-nn labml`` (``requirements-bench.txt``).
"""

from __future__ import annotations

import statistics
import time
from functools import partial

import torch

from mlnotes_zoo import create_model
from mlnotes_zoo.lit.gan import LitGAN
from mlnotes_zoo.models.gan import GAN


class _Opt:
    """Stands in for Lightning's optimizer wrapper: ``LitGAN.training_step`` outside a Trainer."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.opt = opt

    def __getattr__(self, name):
        return getattr(self.opt, name)


def _our_step(net: GAN):
    adam = partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999))
    lit = LitGAN(net=net, objective="non_saturating", n_critic=1, gen_optimizer=adam,
                 disc_optimizer=adam, classifier_dir=None)
    opts = [_Opt(o) for o in lit.configure_optimizers()]
    lit.optimizers = lambda: opts
    lit.manual_backward = lambda loss: loss.backward()
    return lambda batch: lit.training_step(batch, 0)


def _labml_step(generator, discriminator):
    from labml_nn.gan.original import DiscriminatorLogitsLoss, GeneratorLogitsLoss

    opt_g = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    d_loss_fn, g_loss_fn = DiscriminatorLogitsLoss(0.01), GeneratorLogitsLoss(0.01)

    def step(batch):  # labml_nn.gan.original.experiment.Configs.step, tracker calls removed
        data = batch[0]
        latent = torch.randn(data.shape[0], 100)
        logits_true = discriminator(data)
        logits_false = discriminator(generator(latent).detach())
        loss_true, loss_false = d_loss_fn(logits_true, logits_false)
        opt_d.zero_grad()
        (loss_true + loss_false).backward()
        opt_d.step()
        latent = torch.randn(data.shape[0], 100)
        loss = g_loss_fn(discriminator(generator(latent)))
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()

    return step


def _time(step, batch, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        step(batch)
    return (time.perf_counter() - start) / inner


def bench_dcgan_step(batch_size: int = 64, repeats: int = 5, inner: int = 2) -> dict:
    import importlib.metadata

    from labml_nn.gan.dcgan import Discriminator, Generator

    torch.manual_seed(0)
    batch = (torch.rand(batch_size, 1, 28, 28), torch.zeros(batch_size, dtype=torch.long))
    labml_g, labml_d = Generator(), Discriminator()
    ours_same = GAN(in_shape=(1, 28, 28), latent_dim=100, generator=Generator(),
                    discriminator=Discriminator())
    ours_native = create_model("dcgan", in_shape=(1, 28, 28), latent_dim=100, gen_width=256,
                               disc_width=256, num_stages=3)  # labml's nets, layer for layer
    steps = {"ours_same_nets": _our_step(ours_same), "labml": _labml_step(labml_g, labml_d),
             "ours_native": _our_step(ours_native)}
    for step in steps.values():  # warm-up
        _time(step, batch, 1)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):  # interleaved: drift on a shared machine hits all alike
        for name, step in steps.items():
            times[name].append(_time(step, batch, inner))
    med = {k: statistics.median(v) for k, v in times.items()}

    def params(*mods):
        return sum(p.numel() for m in mods for p in m.parameters())

    return {
        "what": "DCGAN training step (D update + G update), seconds (median), CPU",
        "batch_size": batch_size,
        "image": [1, 28, 28],
        "params_labml": params(labml_g, labml_d),
        "params_ours_native": params(ours_native),
        "ours_native_config": "gen_width=256, disc_width=256, num_stages=3, latent_dim=100",
        "step_s_ours_same_nets": round(med["ours_same_nets"], 4),
        "step_s_labml": round(med["labml"], 4),
        "step_s_ours_native": round(med["ours_native"], 4),
        "ratio_ours_same_nets_vs_labml": round(med["ours_same_nets"] / med["labml"], 3),
        "ratio_ours_native_vs_labml": round(med["ours_native"] / med["labml"], 3),
        "target_ratio": 1.0,
        "peer": f"labml-nn {importlib.metadata.version('labml-nn')}",
        "threads": torch.get_num_threads(),
    }


BENCHMARKS = {"dcgan_step": bench_dcgan_step}
