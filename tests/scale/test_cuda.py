"""GPU-only paths (NCCL DDP, FSDP1, DeepSpeed ZeRO-2, CUDA fp16 scaling): skipped without CUDA.

The CPU tests next to this file check the same mechanisms with gloo; these run the CUDA
code paths the configs select on a GPU machine.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import _worker as W
import pytest
import torch

CUDA = torch.cuda.is_available()
GPUS = torch.cuda.device_count() if CUDA else 0
pytestmark = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
WORKER = Path(W.__file__)


def _launch(mode: str, out: Path, *overrides: str, nproc: int = 1) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", str(WORKER), mode, str(out),
           "trainer.accelerator=gpu", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=out.parent,
                          env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(nproc)]


def test_cuda_16_mixed_uses_lightnings_grad_scaler(tmp_path):
    (rank,) = _launch("ddp", tmp_path / "out", "trainer.precision=16-mixed", "+inject_inf=2")
    assert rank["scales"][0] > 1 and rank["scales"][2] == rank["scales"][1] / 2


@pytest.mark.dist
@pytest.mark.skipif(GPUS < 2, reason="needs 2 GPUs")
def test_nccl_ddp_two_gpus_match_each_other(tmp_path):
    ranks = _launch("ddp", tmp_path / "out", nproc=2)
    for name, value in ranks[0]["params"].items():
        torch.testing.assert_close(ranks[1]["params"][name]["full"], value["full"])


def test_fsdp1_trains_on_cuda(tmp_path):
    (rank,) = _launch("fsdp1", tmp_path / "out")
    assert rank["strategy"] == "FSDPStrategy"


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed missing")
def test_deepspeed_zero2_trains_on_cuda(tmp_path):
    (rank,) = _launch("deepspeed", tmp_path / "out")
    assert rank["strategy"] == "DeepSpeedStrategy"
