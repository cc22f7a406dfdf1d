"""DDP, ZeRO-1, FSDP2 and 16-mixed loss scaling, each against a single-process reference.

Two gloo ranks on CPU run ``_worker.py`` (a tiny deterministic ZooModule trained with the
trainer config composed from configs/), under torchrun or Lightning's own launcher.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import _worker as W
import pytest
import torch
from torch import nn

pytestmark = pytest.mark.dist
WORKER = Path(W.__file__)
REPO = Path(__file__).resolve().parents[2]


def launch(launcher: str, mode: str, out: Path, *overrides: str) -> list[dict]:
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(WORKER), mode, str(out), *overrides]
    else:  # Lightning starts the second process itself
        cmd = [sys.executable, str(WORKER), mode, str(out), "trainer.devices=2", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=out.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def reference(epochs: int = 1, adam: bool = False, lr: float = 0.05):
    """Single process on the concatenated batch: what two ranks must reproduce.

    The non-shuffling DistributedSampler gives rank r the indices r, r+2, r+4, ...; step s
    of each rank takes the next BATCH of them.
    """
    net = W.make_net()
    x, y = W.make_data().tensors
    opt = (torch.optim.Adam if adam else torch.optim.SGD)(net.parameters(), lr=lr)
    per_rank = [torch.arange(r, len(x), 2) for r in (0, 1)]
    for _ in range(epochs):
        for s in range(W.STEPS):
            idx = torch.cat([ix[s * W.BATCH:(s + 1) * W.BATCH] for ix in per_rank])
            loss = nn.functional.mse_loss(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net, opt


def assert_params(result: dict, net: nn.Module, atol: float = 1e-6) -> None:
    for name, p in net.named_parameters():
        torch.testing.assert_close(result["params"][name]["full"], p.detach(), rtol=0, atol=atol)


@pytest.mark.parametrize("launcher", ["lightning", "torchrun"])
def test_ddp_two_ranks_equal_single_process_on_the_concatenated_batch(tmp_path, launcher):
    ranks = launch(launcher, "ddp", tmp_path / "out")
    assert all(r["world_size"] == 2 and r["strategy"] == "DDPStrategy" for r in ranks)
    net, _ = reference()
    for r in ranks:
        assert_params(r, net)


def test_ddp_validation_means_are_weighted_over_every_rank(tmp_path):
    # 7 examples per rank in batches of 4 and 3: the logged val/loss must be the mean over
    # all 14 examples (batch-size weighted, summed over ranks), not a mean of batch means
    # or one rank's value
    ranks = launch("torchrun", "ddp", tmp_path / "out", "+validate=true")
    net, _ = reference()
    x, y = W.make_val_data().tensors
    with torch.no_grad():
        expected = nn.functional.mse_loss(net(x), y).item()
        per_rank = [nn.functional.mse_loss(net(x[r::2]), y[r::2]).item() for r in (0, 1)]
    assert abs(per_rank[0] - per_rank[1]) > 1e-3  # the ranks' own means differ
    for r in ranks:
        assert r["val_loss"] == pytest.approx(expected, abs=1e-6)


def test_zero1_shards_optimizer_state_and_resumes(tmp_path):
    ranks = launch("torchrun", "zero1", tmp_path / "one", "+adam=true", "+lr=0.01")
    net, opt = reference(adam=True, lr=0.01)
    names = {id(p): n for n, p in net.named_parameters()}
    full_state = {names[id(p)]: st for p, st in opt.state.items()}
    total = sum(p.numel() for p in net.parameters())
    shards = [set(r["local_state"]) for r in ranks]
    assert all(r["optimizer"] == "ZeroRedundancyOptimizer" for r in ranks)
    assert shards[0] and shards[1] and not shards[0] & shards[1]  # each rank: its shard only
    assert shards[0] | shards[1] == set(full_state)  # ... and together the whole state
    assert sum(r["local_numel"] for r in ranks) == total
    for r in ranks:
        assert r["local_numel"] < total
        for name, st in r["local_state"].items():
            for key in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(st[key], full_state[name][key], rtol=0, atol=1e-6)
        assert_params(r, net)  # parameters match DDP + the plain optimizer

    # The checkpoint holds the consolidated state; resuming continues exactly.
    resumed = launch("torchrun", "zero1", tmp_path / "two", "+adam=true", "+lr=0.01",
                     "+epochs=2", f"+resume={ranks[0]['ckpt']}")
    net2, _ = reference(epochs=2, adam=True, lr=0.01)
    for r in resumed:
        assert_params(r, net2)


def test_fsdp2_each_rank_holds_half_of_every_parameter_and_state(tmp_path):
    ranks = launch("torchrun", "fsdp", tmp_path / "out", "+adam=true", "+lr=0.01")
    net, _ = reference(adam=True, lr=0.01)
    for r in ranks:
        assert r["strategy"] == "FSDP2Strategy"
        for name, p in net.named_parameters():
            assert r["params"][name]["local_numel"] * 2 == p.numel(), name
        assert r["exp_avg_local_numel"] * 2 == r["exp_avg_full_numel"]
        assert_params(r, net, atol=1e-5)  # gathered parameters match one process


def test_16_mixed_on_cpu_scales_the_loss_and_skips_an_overflow_on_every_rank(tmp_path):
    ranks = launch("torchrun", "ddp", tmp_path / "out", "trainer.precision=16-mixed",
                   "+inject_inf=2")
    for r in ranks:
        scales = r["scales"]
        assert scales[0] is not None and scales[0] > 1  # a GradScaler multiplies the loss
        assert scales[2] == scales[1] / 2  # the overflow halves the scale ...
        for name, before in r["snapshots"][1].items():  # ... and leaves the weights alone
            assert torch.equal(r["snapshots"][2][name], before), name
        assert not torch.equal(r["snapshots"][1]["head.weight"], r["snapshots"][0]["head.weight"])


def _train_py(*args: str, cwd: Path, torchrun: bool = False) -> subprocess.CompletedProcess:
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] \
        if torchrun else [sys.executable]
    return subprocess.run([*head, str(REPO / "train.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=240)


@pytest.mark.parametrize("trainer, what", [("deepspeed", "DeepSpeed"), ("fsdp1", "FSDP1")])
def test_cuda_only_strategies_refuse_in_one_line(tmp_path, trainer, what):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the strategy is allowed")
    out = _train_py(f"trainer={trainer}", cwd=tmp_path)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and what in errors[0] and "CUDA" in errors[0]
    assert "Traceback (most recent call last)" not in out.stderr


def test_devices_mismatch_under_torchrun_is_one_line(tmp_path):
    out = _train_py("trainer=ddp", "trainer.devices=3", "trainer.accelerator=cpu",
                    cwd=tmp_path, torchrun=True)
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "LOCAL_WORLD_SIZE" in errors[0]  # rank 0 says it, once
    # torchrun itself reports the failed workers (ChildFailedError); no frame of ours shows
    assert "mlnotes_zoo" not in out.stderr.replace(errors[0], "")
