"""``model.compile=true``: training-step time with and without ``torch.compile``, one model
per family, on this CPU.

    python scripts/bench.py --only compile
    python scripts/benchmarks/compile.py vae gpt          # some models, printed

Each model trains through the train.py path (its config composed by Hydra, its DataModule,
a Lightning Trainer; no validation, checkpoints, loggers or pictures) for ``STEPS`` batches,
eager and compiled (``model.compile=true``: ``nn.Module.compile`` of the network's forward,
lit/base.py). A callback times every training batch (forward, loss, backward, optimizer) in
CPU seconds of this process (one thread: the machine is shared, and other jobs' load moves
wall time by 2× between runs; CPU time moves little) and in wall seconds.
Reported per model: the median step of the batches after ``WARMUP`` (compiled: after its
compilations and recompilations), their ratio (compiled / eager: < 1 is faster), the first
compiled steps (wall: the compile itself, paid once per run), and the break-even: how many
steps the CPU gain per step needs to pay for the compile. A family whose LightningModule
calls the network's parts rather than its forward (the GANs' generator/discriminator steps,
the mixtures' EM) gets nothing compiled, which the ratio shows.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

MODELS = ("vae", "dcgan", "ddpm", "realnvp", "vqvae", "gmm", "gpt", "pondernet",
          "rnn_seq2seq", "act", "ctc", "hubert", "faster_rcnn", "simclr", "odenet", "dae")
STEPS, WARMUP = 14, 4


def _lightning_steps(model: str, compile: bool,
                     steps: int = STEPS) -> list[tuple[float, float]]:
    """(CPU s, wall s) of each of ``steps`` training batches of ``model`` (train.py path)."""
    import pytorch_lightning as pl
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from mlnotes_zoo.config import config_dir

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.times: list[tuple[float, float]] = []  # (CPU s, wall s) per batch

        def on_train_batch_start(self, *args: object) -> None:
            self.start = (time.process_time(), time.perf_counter())

        def on_train_batch_end(self, *args: object) -> None:
            self.times.append((time.process_time() - self.start[0],
                               time.perf_counter() - self.start[1]))

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True, overrides=[
            f"model={model}", f"model.compile={str(compile).lower()}", "callbacks=none",
            "logger=none", "trainer.accelerator=cpu", "trainer.max_epochs=1"])
    out = tempfile.mkdtemp(prefix="bench-compile-")
    with open_dict(cfg):
        cfg.paths.output_dir = out
        cfg.hydra.runtime.output_dir = out
    HydraConfig.instance().set_config(cfg)
    pl.seed_everything(0)
    datamodule = instantiate(cfg.data)
    lit = instantiate(cfg.model, _convert_="all")
    lit.configure_callbacks = list  # no early stopping on a validation that does not run
    timer = StepTimer()
    trainer_kwargs = instantiate(cfg.trainer, _partial_=True).keywords
    trainer_kwargs.update(max_epochs=1, limit_train_batches=steps, limit_val_batches=0,
                          enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, logger=False, num_sanity_val_steps=0)
    trainer_kwargs.pop("callbacks", None)
    trainer = pl.Trainer(**trainer_kwargs, callbacks=[timer])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(lit, datamodule=datamodule)
    torch._dynamo.reset()  # the next model compiles from scratch
    return timer.times


def bench_one(model: str) -> dict:
    eager = _lightning_steps(model, compile=False)
    compiled = _lightning_steps(model, compile=True)
    if len(eager) <= WARMUP or len(compiled) <= WARMUP:
        return {"model": model, "error": f"only {len(eager)}/{len(compiled)} training batches"}
    row: dict = {"model": model, "steps": len(eager)}
    for k, clock in enumerate(("cpu", "wall")):
        eager_step = statistics.median(t[k] for t in eager[WARMUP:])
        compiled_step = statistics.median(t[k] for t in compiled[WARMUP:])
        row[f"eager_step_{clock}_s"] = round(eager_step, 5)
        row[f"compiled_step_{clock}_s"] = round(compiled_step, 5)
        row[f"ratio_{clock}"] = round(compiled_step / eager_step, 3)
    first = sum(t[1] for t in compiled[:WARMUP])  # wall: the compile runs in workers too
    gain = row["eager_step_cpu_s"] - row["compiled_step_cpu_s"]  # wall gains are noise here
    row["first_compiled_steps_wall_s"] = round(first, 2)
    extra = first - WARMUP * row["compiled_step_cpu_s"]
    row["break_even_steps"] = round(extra / gain) if gain > 0 else None
    return row


def bench_compile(models: tuple[str, ...] = MODELS) -> dict:
    torch.set_num_threads(1)  # one thread: the machine is shared; the ratio is what counts
    rows = []
    for model in models:
        print(f"-- {model}", file=sys.stderr, flush=True)
        try:
            rows.append(bench_one(model))
        except Exception as err:  # noqa: BLE001 - a model compile cannot handle is a result
            rows.append({"model": model, "error": f"{type(err).__name__}: "
                                                  f"{str(err).splitlines()[0][:200]}"})
        print(rows[-1], file=sys.stderr, flush=True)
    return {"threads": torch.get_num_threads(), "steps": STEPS, "warmup": WARMUP,
            "torch": torch.__version__, "rows": rows}


BENCHMARKS = {"compile": bench_compile}

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    import json

    print(json.dumps(bench_compile(tuple(sys.argv[1:]) or MODELS), indent=2))
