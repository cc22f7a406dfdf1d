"""Inpainting with a trained ``model=ddpm`` checkpoint (issue 14): RePaint's resampling beside
the plain replacement sampler and the two baselines -> results/inpainting.json.

    python scripts/inpainting.py outputs/reproduce/ddpm/checkpoints/best-epoch244.ckpt
    python scripts/inpainting.py CKPT --settings 0,1 5,5 10,5 --fills 4 --eta 0 1

For each RePaint setting (jump r, resamplings U; "0,1" is the plain sampler of
``DDPM.inpaint``) and DDIM η, the test images' lower half and centre box (``--masks``) are
filled from the rest by the checkpoint's EMA weights (50 DDIM steps, ``--fills`` fills from a
fixed seed), and the masked-region mean squared error (pixels in [0, 1]) is reported for the
mean of the fills and for one fill, with the seconds taken; beside them the mean fill and the
nearest training image on the visible pixels (``models/diffusion``), and the average of the
k = 10 nearest training images' hidden pixels (a plain estimate of the posterior mean, as a
yardstick).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def knn_mean_fill(train: torch.Tensor, images: torch.Tensor, mask: torch.Tensor,
                  k: int) -> torch.Tensor:
    """The hidden pixels: the mean of the k training images nearest on the visible ones."""
    visible = mask.expand_as(images[:1]).flatten(1)
    dist = torch.cdist(images.flatten(1) * visible, train.flatten(1) * visible)
    nearest = dist.topk(k, largest=False).indices  # (B, k)
    return mask * images + (1 - mask) * train[nearest].mean(1)


def run(checkpoint: str, settings: list[tuple[int, int]], etas: list[float], fills: int,
        steps: int, masks: list[str]) -> dict:
    from mlnotes_zoo import create_model
    from mlnotes_zoo.data.digits import DigitsDataModule
    from mlnotes_zoo.models.diffusion import (
        fixed_mask,
        masked_mse,
        mean_fill,
        nearest_fill,
        repaint,
    )
    from mlnotes_zoo.weights import safe_torch_load

    ckpt = safe_torch_load(checkpoint, map_location="cpu")
    spec = dict(ckpt["hyper_parameters"]["net"])
    net = create_model(spec.pop("name"), **spec).eval()
    ema = {k.removeprefix("ema.module."): v for k, v in ckpt["state_dict"].items()
           if k.startswith("ema.module.")}
    net.load_state_dict(ema or {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()
                                if k.startswith("net.")})
    data = DigitsDataModule()
    train = data.reference_data("train").tensors[0]
    images = data.reference_data("test").tensors[0]
    out: dict = {"checkpoint": checkpoint, "steps": steps, "fills": fills, "masks": {}}
    for kind in masks:
        mask = fixed_mask(kind, *images.shape[-2:])
        row = {"mean_fill": masked_mse(mean_fill(train, images, mask), images, mask).item(),
               "nearest": masked_mse(nearest_fill(train, images, mask), images, mask).item(),
               "knn10_mean": masked_mse(knn_mean_fill(train, images, mask, 10), images,
                                        mask).item(),
               "repaint": []}
        for eta in etas:
            for jump, resample in settings:
                gen = torch.Generator().manual_seed(1237)
                start = time.perf_counter()
                with torch.no_grad():
                    filled = torch.stack([
                        repaint(net, images * 2 - 1, mask, steps=steps, eta=eta, jump=jump,
                                resample=resample, generator=gen) for _ in range(fills)])
                seconds = time.perf_counter() - start
                filled = ((filled + 1) / 2).clamp(0, 1)
                row["repaint"].append({
                    "eta": eta, "jump": jump, "resample": resample,
                    "mse_mean_of_fills": round(masked_mse(filled.mean(0), images, mask).item(), 5),
                    "mse_single": round(masked_mse(filled[0], images, mask).item(), 5),
                    "seconds": round(seconds, 1)})
                print(kind, row["repaint"][-1], flush=True)
        out["masks"][kind] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--settings", nargs="+", default=["0,1", "5,5", "10,10"],
                        help="RePaint jump,resample pairs (0,1: no resampling)")
    parser.add_argument("--eta", nargs="+", type=float, default=[0.0, 1.0])
    parser.add_argument("--fills", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--masks", nargs="+", default=["lower_half", "center_box"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(REPO / "results" / "inpainting.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = [tuple(int(v) for v in s.split(",")) for s in args.settings]
    result = run(args.checkpoint, settings, args.eta, args.fills, args.steps, args.masks)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
