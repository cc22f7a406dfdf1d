"""Distributed worker for tests/scale (run by torchrun or Lightning's launcher, not pytest).

    python _worker.py MODE OUT_DIR [overrides...]

Trains a tiny deterministic ZooModule on fixed data with the trainer config composed from
configs/ (so the test exercises our trainer=ddp|zero1|fsdp configs and the ZooModule
hooks), then saves what the test checks into OUT_DIR/rank<r>.pt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from mlnotes_zoo.config import config_dir
from mlnotes_zoo.lit.base import ZooModule
from mlnotes_zoo.scale.launch import end_process_group, leave_process, resolve_trainer_kwargs

BATCH, STEPS, WIDTH, BLOCKS = 4, 4, 8, 2


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(WIDTH, WIDTH)

    def forward(self, x):
        return x + torch.tanh(self.fc(x))


class Net(nn.Module):
    repeated_blocks = (Block,)

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[Block() for _ in range(BLOCKS)])
        self.head = nn.Linear(WIDTH, 2)

    def forward(self, x):
        return self.head(self.blocks(x))


def make_net() -> Net:
    torch.manual_seed(0)
    return Net()


def make_data() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    n = BATCH * 2 * STEPS  # two ranks, STEPS steps
    return TensorDataset(torch.randn(n, WIDTH, generator=g), torch.randn(n, 2, generator=g))


def make_val_data() -> TensorDataset:
    """14 examples: 7 per rank, in batches of BATCH and 3 (unequal batch sizes)."""
    g = torch.Generator().manual_seed(2)
    return TensorDataset(torch.randn(14, WIDTH, generator=g), torch.randn(14, 2, generator=g))


class LitRegression(ZooModule):
    inject_inf_at: int | None = None

    def model_step(self, batch, stage):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        if stage == "train" and self.global_step == self.inject_inf_at:
            loss = loss * float("inf")  # an overflow the loss scaler must catch
        return {"loss": loss}

    def train_dataloader(self):
        # A non-shuffling distributed sampler: rank r takes examples r, r + W, r + 2W, ...
        data = make_data()
        sampler = DistributedSampler(data, num_replicas=self.trainer.world_size,
                                     rank=self.trainer.global_rank, shuffle=False)
        return DataLoader(data, batch_size=BATCH, sampler=sampler)

    def val_loader(self):
        data = make_val_data()
        sampler = DistributedSampler(data, num_replicas=self.trainer.world_size,
                                     rank=self.trainer.global_rank, shuffle=False)
        return DataLoader(data, batch_size=BATCH, sampler=sampler)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        self.scales.append(None if scaler is None else float(scaler.get_scale()))
        self.snapshots.append({k: v.detach().clone() for k, v in self.net.state_dict().items()})
        self.batches.append(batch[0].detach().clone())


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    overrides = sys.argv[3:]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"trainer={mode}", "trainer.accelerator=cpu",
                                          f"trainer.default_root_dir={out}",
                                          "trainer.enable_model_summary=false", *overrides])
    kwargs = resolve_trainer_kwargs(instantiate(cfg.trainer, _partial_=True).keywords)
    epochs = int(cfg.get("epochs", 1))
    # zero1: checkpoint at the end of each epoch as train.py does (every rank takes part:
    # the sharded optimizer state is consolidated on rank 0 first).
    callbacks = [ModelCheckpoint(dirpath=out, save_last=True, save_top_k=0)] \
        if mode == "zero1" else []
    kwargs.update(max_epochs=epochs, logger=False, enable_checkpointing=bool(callbacks),
                  callbacks=callbacks,
                  enable_progress_bar=False, limit_val_batches=1.0 if "validate" in cfg else 0,
                  default_root_dir=str(out),
                  use_distributed_sampler=False)
    lit = LitRegression(net=make_net(), optimizer=_optimizer(cfg))
    lit.scales, lit.snapshots, lit.batches = [], [], []
    if "inject_inf" in cfg:
        lit.inject_inf_at = int(cfg.inject_inf)
    trainer = pl.Trainer(**kwargs)
    trainer.fit(lit, ckpt_path=cfg.get("resume"))
    if "validate" in cfg:  # the epoch means of ZooModule's validation logging, all ranks
        trainer.validate(lit, dataloaders=lit.val_loader(), verbose=False)
        lit.val_loss = float(trainer.callback_metrics["val/loss"])
    result = {"rank": trainer.global_rank, "world_size": trainer.world_size,
              "scales": lit.scales, "snapshots": lit.snapshots, "batches": lit.batches,
              "strategy": type(trainer.strategy).__name__,
              "val_loss": getattr(lit, "val_loss", None)}
    optimizer = trainer.optimizers[0]
    result["optimizer"] = type(optimizer).__name__
    names = {id(p): n for n, p in lit.net.named_parameters()}
    if hasattr(optimizer, "optim"):  # ZeroRedundancyOptimizer: this rank's local shard
        result["local_state"] = {names[id(p)]: {k: v.clone() for k, v in st.items()}
                                 for p, st in optimizer.optim.state.items()}
        result["local_numel"] = sum(p.numel() for g in optimizer.optim.param_groups
                                    for p in g["params"])
    params = {}
    for name, p in lit.net.named_parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        params[name] = {"local_numel": local.numel(), "full": full.detach().clone()}
    result["params"] = params
    state = next(iter(optimizer.state.values()), {}) if not hasattr(optimizer, "optim") else {}
    avg = state.get("exp_avg")
    if avg is not None and hasattr(avg, "to_local"):
        result["exp_avg_local_numel"] = avg.to_local().numel()
        result["exp_avg_full_numel"] = avg.full_tensor().numel()
    if mode == "zero1":
        result["ckpt"] = str(out / "last.ckpt")
    out.mkdir(parents=True, exist_ok=True)
    torch.save(result, out / f"rank{trainer.global_rank}.pt")
    # as train.py does: a process group alive at exit, or the C++ teardown, aborts a rank
    # now and then
    if end_process_group():
        leave_process(0)


def _optimizer(cfg):
    from functools import partial

    lr = float(cfg.get("lr", 0.05))
    return partial(torch.optim.Adam, lr=lr) if cfg.get("adam", False) else \
        partial(torch.optim.SGD, lr=lr)


if __name__ == "__main__":
    main()
