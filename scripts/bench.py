"""Benchmarks whose JSON the README quotes (not tests: nothing here asserts a time).

    python scripts/bench.py                      # all benchmarks -> results/bench.json
    python scripts/bench.py --only overhead      # one of them

Family benchmarks live in scripts/benchmarks/<family>.py (see _discover). Peer
implementations they compare against are installed only for benchmarking:
``pip install -r requirements-bench.txt``.

overhead: seconds per training epoch (every step, data loading included) of the train.py
path — Lightning Trainer with the default callbacks and loggers of configs/ — against a bare
PyTorch loop on the same network, batches and optimizer (target ratio <= 1.05), and the same
for the whole epoch with validation, where train.py also checkpoints and draws pictures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results" / "bench.json"


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from mlnotes_zoo.config import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    out = tempfile.mkdtemp(prefix="bench-")
    with open_dict(cfg):
        cfg.paths.output_dir = out
        cfg.hydra.runtime.output_dir = out
    HydraConfig.instance().set_config(cfg)
    return cfg


def bench_overhead(model: str = "vae", epochs: int = 21, *overrides: str, repeats: int = 3) -> dict:
    """Median over ``repeats`` interleaved pairs of :func:`overhead_once` (timings on a
    shared 2-core machine drift; pairing and the median keep the ratio honest)."""
    runs = [overhead_once(model, epochs, *overrides) for _ in range(repeats)]
    result = dict(runs[0])
    for key in runs[0]:
        if key.endswith(("_s_train_py", "_s_bare", "_ratio")):
            result[key] = statistics.median(r[key] for r in runs)
    result["ratios_per_repeat"] = [[r["train_epoch_ratio"], r["full_epoch_ratio"]] for r in runs]
    return result


def overhead_once(model: str = "vae", epochs: int = 21, *overrides: str) -> dict:
    """train.py path vs a bare loop, seconds per epoch over epochs 1..E (epoch 0 warms up).

    ``train``: the training epoch — every step with data loading, logging and the progress
    bar (the target, <= 1.05). ``full``: the whole epoch including validation, which on the
    train.py path also writes the checkpoints and pictures.
    """
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    cfg = _compose(f"model={model}", "trainer.accelerator=cpu", f"trainer.max_epochs={epochs}",
                   "trainer.enable_model_summary=false", *overrides)

    # -- the train.py path: same instantiation as mlnotes_zoo.train.main ------------------
    pl.seed_everything(0)
    datamodule = instantiate(cfg.data)
    lit = instantiate(cfg.model, _convert_="all")
    ours = {"train": 0.0, "full": 0.0}
    marks: dict[str, float] = {}

    class Clock(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            marks["start"] = time.perf_counter()

        def on_validation_start(self, trainer, pl_module):
            if not trainer.sanity_checking:
                marks["val"] = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            # after validation, checkpointing and pictures of the epoch
            if trainer.current_epoch >= 1:
                now = time.perf_counter()
                ours["train"] += marks.pop("val", now) - marks["start"]
                ours["full"] += now - marks["start"]

    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c and "_target_" in c]
    callbacks.append(Clock())
    loggers = [instantiate(c) for c in cfg.logger.values() if c]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    trainer.fit(lit, datamodule=datamodule)

    # -- bare PyTorch: same network kwargs, data, batches, optimizer and maths ------------
    pl.seed_everything(0)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    bare_lit = instantiate(cfg.model, _convert_="all")  # builds the same net and optimizer
    net, opt, step = bare_lit.net, bare_lit.configure_optimizers(), bare_lit.model_step
    bare = {"train": 0.0, "full": 0.0}
    val_every = cfg.trainer.check_val_every_n_epoch
    for epoch in range(epochs):
        start = time.perf_counter()
        net.train()
        for batch in datamodule.train_dataloader():
            loss = step(batch, "train")["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        trained = time.perf_counter()
        if (epoch + 1) % val_every == 0:
            net.eval()
            with torch.no_grad():
                for batch in datamodule.val_dataloader():
                    step(batch, "val")
        if epoch >= 1:
            bare["train"] += trained - start
            bare["full"] += time.perf_counter() - start
    n = epochs - 1
    result = {
        "model": model,
        "overrides": list(overrides),
        "data": cfg.data._target_.rsplit(".", 1)[-1],
        "batch_size": cfg.data.batch_size,
        "steps_per_epoch": len(datamodule.train_dataloader()),
        "epochs_timed": n,
    }
    for part in ("train", "full"):
        result[f"{part}_epoch_s_train_py"] = round(ours[part] / n, 4)
        result[f"{part}_epoch_s_bare"] = round(bare[part] / n, 4)
        result[f"{part}_epoch_ratio"] = round(ours[part] / bare[part], 3)
    result["target_train_epoch_ratio"] = 1.05
    return result


BENCHMARKS = {"overhead": bench_overhead}


def _discover() -> dict:
    """Family benchmarks: every ``scripts/benchmarks/<family>.py`` exposes ``BENCHMARKS``,
    a dict of name -> zero-argument function returning a JSON-able dict."""
    import importlib.util

    found = dict(BENCHMARKS)
    for path in sorted((REPO / "scripts" / "benchmarks").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"benchmarks.{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for name, fn in getattr(module, "BENCHMARKS", {}).items():
            if name in found:
                raise ValueError(f"benchmark {name!r} defined twice ({path.name})")
            found[name] = fn
    return found


def main(argv: list[str] | None = None) -> None:
    benchmarks = _discover()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(benchmarks), action="append")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("overrides", nargs="*", help="config overrides for the overhead run")
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for name in args.only or sorted(benchmarks):
        print(f"== {name}", file=sys.stderr)
        if name == "overhead":
            results[name] = bench_overhead("vae", 21, *args.overrides)
        else:
            results[name] = benchmarks[name]()
        print(json.dumps(results[name], indent=2))
    results["machine"] = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "command": " ".join(["python scripts/bench.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
