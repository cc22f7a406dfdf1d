"""DDPM benchmarks (not tests: nothing here asserts a time).

``ddpm_ddim_steps``: FID / class coverage / sampling time of DDIM with 10, 25, 50 and 1000
steps (η = 0) — and the 1000-step ancestral sampler (σ² = β) beside them — from one trained
checkpoint, in the digit classifier's features with the same reference split, sample count
and seed as ``python train.py model=ddpm`` reports (``test/fid``). The checkpoint:
``MLNOTES_DDPM_CKPT=<path>`` or ``--ckpt <path>`` when run as a script; without one, a short
run of the default config is trained first (``SHORT_EPOCHS`` epochs; its FID is then above
the default run's).

``ddpm_step``: a training step (L_simple at t ~ U, ε ~ N(0, I): forward, backward, Adam)
of ours (:meth:`DDPM.loss`) against denoising-diffusion-pytorch's ``GaussianDiffusion``
(``objective="pred_noise"``, ``beta_schedule="linear"``, T = 1000, the settings of
``model=ddpm``), batch 128 of the 8×8 digits, Adam(2e-3):
- ``same_net``: both around the very same U-Net (ours, ``model=ddpm``'s widths) — the
  diffusion wrappers compared;
- ``native``: each library's own U-Net at (nearly) equal size: theirs ``Unet(dim=16,
  dim_mults=(1, 2))`` (two ResNet blocks and an attention per level, 240 k parameters),
  ours ``widths=[16, 32], num_res_blocks=2`` (two residual blocks per level down, three up,
  attention in the middle, 231 k).
Also each one's EMA of the weights as their trainers run it: ours every step
(``torch.optim.swa_utils`` in ``LitDiffusion``), theirs ``ema_pytorch.EMA`` (decay 0.995,
``update_every=10``, as ``denoising_diffusion_pytorch.Trainer``). Target: ratio ours /
theirs ≤ 1.0 for the step; ``loss_wrapper_us_*``: the loss call around a 1×1 conv, what the
two same-net steps differ in besides the network. Peer: ``pip install --no-deps -r
requirements-bench.txt`` (denoising-diffusion-pytorch 2.3.4 with accelerate, ema-pytorch,
pytorch-fid); without it the result says ``"missing"``.

    python scripts/bench.py --only ddpm_ddim_steps --only ddpm_step
    python scripts/benchmarks/diffusion.py --ckpt outputs/.../checkpoints/best-....ckpt
"""

from __future__ import annotations

import copy
import importlib.metadata
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
SHORT_EPOCHS = 60
STEPS = (10, 25, 50, 1000)


# -- DDIM steps vs FID / time ----------------------------------------------------------------
def _short_checkpoint() -> str:
    """Train ``model=ddpm`` for SHORT_EPOCHS epochs in a temporary run dir (no test metrics
    besides the defaults'); returns its last checkpoint."""
    out = Path(tempfile.mkdtemp(prefix="bench-ddpm-"))
    subprocess.run([sys.executable, str(REPO / "train.py"), "model=ddpm",
                    f"trainer.max_epochs={SHORT_EPOCHS}", "model.inpaint_eval=false",
                    "model.vlb_eval=false", f"hydra.run.dir={out}"], check=True, cwd=REPO)
    return str(out / "checkpoints" / "last.ckpt")


def bench_ddim_steps(ckpt: str | None = None, steps: tuple[int, ...] = STEPS) -> dict:
    from mlnotes_zoo.data.digits import DigitsDataModule
    from mlnotes_zoo.lit.diffusion import LitDiffusion
    from mlnotes_zoo.models.gan import class_coverage, classifier_fid, load_or_train_classifier

    ckpt = ckpt or os.environ.get("MLNOTES_DDPM_CKPT") or _short_checkpoint()
    lit = LitDiffusion.load_from_checkpoint(ckpt, map_location="cpu").eval()
    if tuple(lit.net.in_shape) != (1, 8, 8):
        raise SystemExit(f"ddpm_ddim_steps: {ckpt} is a {list(lit.net.in_shape)} model; this "
                         f"table scores 8×8 digits models (model=ddpm's default data)")
    splits = DigitsDataModule().load_splits()
    train, test = splits["train"], splits["test"]
    classifier, accuracy = load_or_train_classifier(
        REPO / "data" / "classifiers", train, test, num_classes=10, steps=lit.classifier_steps)
    n = min(len(train[0]), lit.fid_max_samples)  # as LitDiffusion's test/fid

    def fid(images: torch.Tensor) -> float:
        metric = classifier_fid(classifier)
        metric.update(test[0], real=True)
        metric.update(images, real=False)
        return round(float(metric.compute()), 2)

    def score(images: torch.Tensor, seconds: float) -> dict:
        preds = torch.cat([classifier(c).argmax(-1) for c in images.split(1000)])
        return {"fid": fid(images), "class_coverage": float(class_coverage(preds, 10, 0.5)),
                "sample_s": round(seconds, 2)}

    rows = {}
    for k in steps:
        lit.sample_steps = k
        start = time.perf_counter()
        images = lit.samples(n)
        rows[f"ddim_{k}"] = {"steps": k, **score(images, time.perf_counter() - start)}
    start = time.perf_counter()
    images = lit.samples(n, ancestral=True)
    rows["ancestral_1000"] = {"steps": lit.net.timesteps, "variance": lit.ancestral_variance,
                              **score(images, time.perf_counter() - start)}
    ckpt_meta = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    return {
        "what": f"FID (digit-classifier features, floor {fid(train[0][:n])}) and class "
                f"coverage of {n} samples (EMA weights, eval seed {lit.eval_seed}) vs sampler "
                "steps; sample_s: wall seconds for all of them",
        "checkpoint": str(ckpt),
        "checkpoint_epoch": int(ckpt_meta.get("epoch", -1)),
        "net": {k: v for k, v in lit.hparams["net"].items() if not k.startswith("_")}
        if isinstance(lit.hparams.get("net"), dict) else str(type(lit.net).__name__),
        "ddim_eta": lit.ddim_eta,
        "classifier_acc": round(float(accuracy), 4),
        "rows": rows,
        "threads": torch.get_num_threads(),
    }


# -- training step vs denoising-diffusion-pytorch ------------------------------------------
class _TheirInterface(nn.Module):
    """Our U-Net behind the attributes and call that ``GaussianDiffusion`` expects."""

    def __init__(self, unet: nn.Module, channels: int) -> None:
        super().__init__()
        self.unet = unet
        self.channels = self.out_dim = channels
        self.self_condition = False
        self.random_or_learned_sinusoidal_cond = False

    def forward(self, x, t, x_self_cond=None):
        return self.unet(x, t)


def _ours(net, lr: float, ema: bool):
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    opt = torch.optim.Adam(net.parameters(), lr=lr)
    avg = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.995), use_buffers=True)

    def step(images):  # LitDiffusion.model_step("train") + the optimizer + on_train_batch_end
        loss = net.loss(images * 2 - 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema:
            avg.update_parameters(net)

    return step


def _theirs(unet, lr: float, ema: bool):
    from denoising_diffusion_pytorch import GaussianDiffusion
    from ema_pytorch import EMA

    diffusion = GaussianDiffusion(unet, image_size=8, timesteps=1000, objective="pred_noise",
                                  beta_schedule="linear")  # auto_normalize: [0, 1] -> [−1, 1]
    opt = torch.optim.Adam(diffusion.parameters(), lr=lr)
    avg = EMA(diffusion, beta=0.995, update_every=10)  # their Trainer's EMA

    def step(images):  # Trainer.train's step without accelerate's wrappers
        loss = diffusion(images)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema:
            avg.update()

    return step


def _median_times(steps: dict, batch: torch.Tensor, repeats: int, inner: int) -> dict:
    for step in steps.values():  # warm-up
        step(batch)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):  # interleaved: drift on a shared machine hits all alike
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(inner):
                step(batch)
            times[name].append((time.perf_counter() - start) / inner)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_step(batch_size: int = 128, repeats: int = 7, inner: int = 5,
               lr: float = 2e-3) -> dict:
    try:
        version = importlib.metadata.version("denoising-diffusion-pytorch")
        from denoising_diffusion_pytorch import Unet
    except (importlib.metadata.PackageNotFoundError, ImportError) as err:
        return {"missing": "denoising-diffusion-pytorch is not installed "
                           f"(pip install --no-deps -r requirements-bench.txt): {err}"}
    from mlnotes_zoo import create_model
    from mlnotes_zoo.data.digits import DigitsDataModule

    batch = DigitsDataModule().load_splits()["train"][0][:batch_size]
    torch.manual_seed(0)
    ours_same = create_model("ddpm", widths=[16, 32], num_res_blocks=1)
    their_same = _TheirInterface(copy.deepcopy(ours_same.unet), channels=1)
    ours_native = create_model("ddpm", widths=[16, 32], num_res_blocks=2)
    their_native = Unet(dim=16, dim_mults=(1, 2), channels=1)

    def params(m):
        return sum(p.numel() for p in m.parameters())

    result = {"what": "DDPM training step (L_simple, forward + backward + Adam), seconds "
                      "(median), CPU",
              "batch_size": batch_size, "image": [1, 8, 8], "timesteps": 1000,
              "params_same_net": params(ours_same),
              "params_ours_native": params(ours_native),
              "params_theirs_native": params(their_native),
              "ours_native_config": "widths=[16, 32], num_res_blocks=2",
              "theirs_native_config": "Unet(dim=16, dim_mults=(1, 2), channels=1)"}
    for ema in (False, True):
        steps = {"ours_same_net": _ours(ours_same, lr, ema),
                 "theirs_same_net": _theirs(their_same, lr, ema),
                 "ours_native": _ours(ours_native, lr, ema),
                 "theirs_native": _theirs(their_native, lr, ema)}
        med = _median_times(steps, batch, repeats, inner)
        tag = "_with_ema" if ema else ""
        for name, value in med.items():
            result[f"step_s_{name}{tag}"] = round(value, 5)
        for kind in ("same_net", "native"):
            result[f"ratio_{kind}{tag}"] = round(med[f"ours_{kind}"] / med[f"theirs_{kind}"], 3)
    # the wrappers alone (q_sample, targets, loss) around a 1×1 conv: what differs
    # between the two same-net steps besides the network, microseconds per loss call
    wrap = {"ours": create_model("ddpm", widths=[16, 32]), "theirs": None}
    wrap["ours"].unet = _OneByOne()
    from denoising_diffusion_pytorch import GaussianDiffusion

    wrap["theirs"] = GaussianDiffusion(_TheirInterface(_OneByOne(), channels=1), image_size=8,
                                       timesteps=1000, objective="pred_noise",
                                       beta_schedule="linear")
    calls = {"ours": lambda: wrap["ours"].loss(batch * 2 - 1),
             "theirs": lambda: wrap["theirs"](batch)}
    for name, call in calls.items():
        call()
        start = time.perf_counter()
        for _ in range(500):
            call()
        result[f"loss_wrapper_us_{name}"] = round((time.perf_counter() - start) / 500 * 1e6, 1)
    result.update(target_ratio=1.0, peer=f"denoising-diffusion-pytorch {version}",
                  threads=torch.get_num_threads())
    return result


class _OneByOne(nn.Module):
    """A stand-in network (one 1×1 conv) for timing the diffusion wrappers alone."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 1, 1)

    def forward(self, x, t, y=None):
        return self.stem(x)


BENCHMARKS = {"ddpm_ddim_steps": bench_ddim_steps, "ddpm_step": bench_step}


if __name__ == "__main__":  # the table from a given checkpoint, merged into results/bench.json
    import argparse

    parser = argparse.ArgumentParser(description="DDIM steps vs FID/time from a checkpoint")
    parser.add_argument("--ckpt", help="a model=ddpm checkpoint (default: train a short one)")
    args, rest = parser.parse_known_args()
    if args.ckpt:
        os.environ["MLNOTES_DDPM_CKPT"] = str(Path(args.ckpt).resolve())
    sys.path.insert(0, str(REPO / "scripts"))
    import bench

    bench.main(["--only", "ddpm_ddim_steps", *rest])
