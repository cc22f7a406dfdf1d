"""CPU levers per family (issue 19): training-step time in float32, bf16-mixed autocast and
compiled, on one and on two threads, in one run.

``cpu_levers``: for one model per family (and the small recurrent ones), the default config
(``python train.py model=<name>``: its data, batch size, optimizer) is trained for a few
steps by Lightning's Trainer as ``train.py`` runs it, minus validation, checkpoints and
loggers; a callback times each training step (forward, loss, backward, optimizer step; data
loading excluded) in wall and CPU seconds. Cells:

* ``fp32``: ``trainer.precision=32-true``, the default;
* ``bf16``: ``trainer.precision=bf16-mixed`` (torch.autocast on the CPU, bfloat16 matmuls and
  convolutions, float32 weights and optimizer);
* ``compiled``: float32 with ``net.compile()``, what ``+model.compile=true`` does
  (TorchInductor: the network's ``__call__``, forward and backward; methods the
  LightningModule calls besides it run eagerly).

For fp32 and bf16 one run switches ``torch.set_num_threads`` between 1 and 2 from step to step
(1, 2, 2, 1, 1, 2, ...), so a change of the machine's load hits both thread counts alike.
Compiled code has its thread count fixed when it is generated, so the compiled cell is
compiled and run once per thread count (``compile_s``: the first steps' extra time).

Each cell: median wall ``step_ms``, CPU time of the process ``cpu_ms`` and of the thread that
runs the step ``main_cpu_ms``. On a machine other jobs load, wall times at two threads say
little (a thread spins at every barrier waiting for its descheduled partner: 10-35x slower
than one thread under a load of 12-16 on 2 cores); run it then with
``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep): the main thread, which takes part in
every parallel region, then spends its CPU time on the step's critical path, and its CPU time
at two threads over one thread's CPU time (``..._main_cpu``) is a lower bound of the idle
machine's two-over-one ratio. Only a bound: it leaves out the hand-offs between threads,
which dominate where a step is thousands of small operations (pondernet: 0.82 by this bound
under load, yet on the idle machine two threads train it about half as fast as one).

Reported per model: the medians in milliseconds, and the ratios —
``fp32_2t_over_1t`` (< 1: two threads faster), ``bf16_over_fp32_<n>t`` and
``compiled_over_fp32_<n>t`` at each thread count (< 1: the lever helps; ``..._cpu``: the same
in CPU time, steadier on a shared machine). Step time only: whether a lever keeps a model's
metric is measured by full trainings (see the README). The ratios are noisy on a machine
shared with other jobs (``machine_shared`` says what the run saw): rerun on an idle machine
before quoting them.

    python scripts/bench.py --only cpu_levers                        # every model below
    python scripts/benchmarks/cpu_levers.py gpt ctc --modes fp32     # a subset, to stdout
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

# one per family, and the small recurrent ones whose thread default this decides
MODELS = ("vae", "dcgan", "realnvp", "vqvae", "transformer", "gpt", "rnn_seq2seq",
          "pondernet", "act", "ctc", "conformer_ctc", "hubert", "faster_rcnn", "simclr",
          "ddpm", "odenet", "latent_ode")
MODES = ("fp32", "bf16", "compiled")
THREADS = (1, 2)


def _compose(model: str) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from mlnotes_zoo.config import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}"], return_hydra_config=True)
    out = tempfile.mkdtemp(prefix="cpu-levers-")
    with open_dict(cfg):
        cfg.paths.output_dir = out
        cfg.hydra.runtime.output_dir = out
    HydraConfig.instance().set_config(cfg)
    return cfg


class _StepClock(pl.Callback):
    """Wall and CPU time of each training step, by thread count; ``schedule`` gives the thread
    count of step i (``schedule[i % len]``; None: leave it); the first ``warmup`` steps are
    kept apart (``first``, wall seconds)."""

    def __init__(self, schedule: list[int] | None, warmup: int) -> None:
        self.schedule, self.warmup = schedule, warmup
        self.times: dict[int, list[tuple[float, float, float]]] = {}
        self.first: list[float] = []
        self.step = 0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:
        if self.schedule is not None:
            torch.set_num_threads(self.schedule[self.step % len(self.schedule)])
        self.start = (time.perf_counter(), time.process_time(), time.thread_time())

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        wall = time.perf_counter() - self.start[0]
        cpu = time.process_time() - self.start[1]
        main = time.thread_time() - self.start[2]
        if self.step < self.warmup:
            self.first.append(wall)
        else:
            self.times.setdefault(torch.get_num_threads(), []).append((wall, cpu, main))
        self.step += 1


def _fit(cfg: Any, datamodule: Any, *, precision: str, compiled: bool,
         schedule: list[int] | None, steps: int, warmup: int) -> _StepClock:
    from hydra.utils import instantiate

    torch.manual_seed(0)
    lit = instantiate(cfg.model, _convert_="all")
    lit.configure_callbacks = list  # no early stopping or pictures: nothing is validated
    if compiled:
        torch._dynamo.reset()
        lit.net.compile()
    clock = _StepClock(schedule, warmup)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=warmup + steps, precision=precision,
        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[clock],
        gradient_clip_val=cfg.trainer.get("gradient_clip_val"),
        default_root_dir=cfg.paths.output_dir)
    trainer.fit(lit, datamodule=datamodule)
    return clock


def _medians(samples: list[tuple[float, float, float]]) -> dict[str, float]:
    return {"step_ms": round(1e3 * statistics.median(s[0] for s in samples), 2),
            "cpu_ms": round(1e3 * statistics.median(s[1] for s in samples), 2),
            "main_cpu_ms": round(1e3 * statistics.median(s[2] for s in samples), 2),
            "steps": len(samples)}


def _mode_cells(cfg: Any, datamodule: Any, mode: str, threads: tuple[int, ...], steps: int,
                warmup: int) -> dict[str, dict[str, Any]]:
    precision = "bf16-mixed" if mode == "bf16" else "32-true"
    cells: dict[str, dict[str, Any]] = {}
    if mode == "compiled":
        for n in threads:
            torch.set_num_threads(n)
            start = time.perf_counter()
            clock = _fit(cfg, datamodule, precision=precision, compiled=True, schedule=None,
                         steps=steps, warmup=warmup + 1)
            cell = _medians(clock.times[n])
            cell["compile_s"] = round(sum(clock.first) - len(clock.first) * cell["step_ms"] / 1e3,
                                      1)
            cell["run_s"] = round(time.perf_counter() - start, 1)
            cells[f"{mode}_{n}t"] = cell
            torch._dynamo.reset()
        return cells
    # 1, 2, 2, 1, 1, 2, ...: each thread count as often early as late in the run
    pattern = [*threads, *reversed(threads)]
    clock = _fit(cfg, datamodule, precision=precision, compiled=False, schedule=pattern,
                 steps=steps * len(threads), warmup=warmup)
    return {f"{mode}_{n}t": _medians(clock.times[n]) for n in threads}


def measure(model: str, *, modes: tuple[str, ...] = MODES, threads: tuple[int, ...] = THREADS,
            steps: int = 6, warmup: int = 2) -> dict[str, Any]:
    """Step times of ``model``'s default config in each mode and thread count."""
    from hydra.utils import instantiate

    cfg = _compose(model)
    datamodule = instantiate(cfg.data)
    before = torch.get_num_threads()
    cells: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    try:
        for mode in modes:
            try:
                cells.update(_mode_cells(cfg, datamodule, mode, threads, steps, warmup))
            except Exception as err:  # noqa: BLE001 - e.g. a network Inductor cannot compile
                errors[mode] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
    finally:
        torch.set_num_threads(before)
        torch._dynamo.reset()
    result: dict[str, Any] = {"batch_size": cfg.data.get("batch_size"), "cells": cells}
    if errors:
        result["errors"] = errors
    ratios: dict[str, float] = {}
    for mode in modes:
        if len(threads) == 2 and all(f"{mode}_{n}t" in cells for n in threads):
            one, two = (cells[f"{mode}_{n}t"] for n in threads)
            key = f"{mode}_{threads[1]}t_over_{threads[0]}t"
            ratios[key] = round(two["step_ms"] / one["step_ms"], 3)
            # critical path at two threads over one thread's work (OMP_WAIT_POLICY=PASSIVE)
            ratios[f"{key}_main_cpu"] = round(two["main_cpu_ms"] / one["cpu_ms"], 3)
        for n in threads:
            if mode != "fp32" and f"{mode}_{n}t" in cells and f"fp32_{n}t" in cells:
                ours, base = cells[f"{mode}_{n}t"], cells[f"fp32_{n}t"]
                ratios[f"{mode}_over_fp32_{n}t"] = round(ours["step_ms"] / base["step_ms"], 3)
                ratios[f"{mode}_over_fp32_{n}t_cpu"] = round(ours["cpu_ms"] / base["cpu_ms"], 3)
    result["ratios"] = ratios
    fastest = min(cells, key=lambda k: cells[k]["step_ms"]) if cells else None
    result["fastest"] = fastest
    return result


def _load() -> dict[str, Any]:
    """The 1-minute load average against the cores, and the machine's busy CPU seconds so far
    (/proc/stat, where there is one) with this process's own, to tell other jobs' share."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    busy = None
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # - idle, iowait
    except (OSError, ValueError, IndexError):
        pass
    own = sum(os.times()[:4])
    return {"load_avg_1min": load, "cpu_count": os.cpu_count(), "busy_cpu_s": busy,
            "own_cpu_s": own, "wall": time.perf_counter()}


def _others_share(before: dict[str, Any], after: dict[str, Any]) -> float | None:
    """Fraction of the cores' time other processes used during the run (None without
    /proc/stat): the machine's busy CPU seconds minus this process's, over wall x cores."""
    if before["busy_cpu_s"] is None or after["busy_cpu_s"] is None:
        return None
    machine = after["busy_cpu_s"] - before["busy_cpu_s"]
    others = machine - (after["own_cpu_s"] - before["own_cpu_s"])
    return max(0.0, others) / ((after["wall"] - before["wall"]) * (os.cpu_count() or 1))


def bench_cpu_levers(models: tuple[str, ...] = MODELS, modes: tuple[str, ...] = MODES,
                     threads: tuple[int, ...] = THREADS, steps: int = 6) -> dict[str, Any]:
    import warnings

    pl.seed_everything(0, verbose=False)
    warnings.filterwarnings("ignore", category=UserWarning)
    before = _load()
    result: dict[str, Any] = {
        "unit": "median training-step time (ms) per cell; ratios of medians",
        "modes": list(modes), "threads": list(threads), "steps_per_cell": steps,
        "models": {},
    }
    for model in models:
        start = time.perf_counter()
        try:
            result["models"][model] = measure(model, modes=modes, threads=threads, steps=steps)
        except Exception as err:  # noqa: BLE001 - one family's failure leaves the others
            result["models"][model] = {"error": f"{type(err).__name__}: {err}"[:300]}
        result["models"][model]["bench_s"] = round(time.perf_counter() - start, 1)
        print(model, json.dumps(result["models"][model].get("ratios")),
              json.dumps(result["models"][model].get("cells")), flush=True)
    after = _load()
    others = _others_share(before, after)
    result["machine_load"] = {"before": before, "after": after}
    result["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "(libgomp's default)")
    result["others_cpu_share"] = None if others is None else round(others, 3)
    result["machine_shared"] = (
        "unknown (no /proc/stat)" if others is None else
        f"other processes used {others:.0%} of the cores' time during the run"
        + (": the ratios (two threads above all) are noisy; rerun on an idle machine before "
           "quoting them" if others > 0.05 else ""))
    return result


BENCHMARKS = {"cpu_levers": bench_cpu_levers}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--threads", nargs="+", type=int, default=list(THREADS))
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    print(json.dumps(bench_cpu_levers(tuple(args.models), tuple(args.modes),
                                      tuple(args.threads), args.steps), indent=2))
