"""Launch glue: torchrun's environment, one run dir for all ranks, CPU/CUDA-only checks,
the process group's end."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, NoReturn

from mlnotes_zoo.errors import UsageError

__all__ = ["torchrun_sizes", "share_run_stamp", "resolve_trainer_kwargs", "end_process_group",
           "LaunchError"]


class LaunchError(UsageError):
    """A trainer setting that cannot work here; the message is one line for the user."""


def torchrun_sizes() -> tuple[int, int] | None:
    """(processes per node, nodes) when started by torchrun / torchelastic, else None."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" not in env or "LOCAL_WORLD_SIZE" not in env:
        return None
    local = int(env["LOCAL_WORLD_SIZE"])
    nodes = int(env.get("GROUP_WORLD_SIZE") or env.get("NNODES") or
                int(env.get("WORLD_SIZE", local)) // local)
    return local, nodes


def share_run_stamp() -> None:
    """Give every process of a run one run-dir time stamp in ``MLNOTES_RUN_STAMP``.

    Each rank runs Hydra itself and would name its run dir by its own clock; configs/hydra
    reads the stamp from this variable instead. Processes Lightning starts inherit it from
    the environment; under torchrun rank 0's stamp is broadcast, over the process group
    that Lightning then uses (it skips initialisation when one exists).
    """
    if "MLNOTES_RUN_STAMP" in os.environ:
        return
    if torchrun_sizes() is None:
        os.environ["MLNOTES_RUN_STAMP"] = time.strftime("%Y-%m-%d_%H-%M-%S")
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    stamp = [time.strftime("%Y-%m-%d_%H-%M-%S")]
    dist.broadcast_object_list(stamp, src=0)
    os.environ["MLNOTES_RUN_STAMP"] = stamp[0]


def end_process_group() -> bool:
    """Destroy torch.distributed's process groups, if any: call at the end of a run.

    Neither Lightning (for gloo) nor :func:`share_run_stamp` destroys the group, and one left
    alive at exit is torn down during interpreter finalisation: a gloo worker thread that
    drops its last collective's tensors then needs the GIL, Python ends the thread
    (pthread_exit) and the C++ runtime aborts the process ("terminate called without an
    active exception", SIGABRT), now and then, after a run that succeeded. Destroying the
    group here joins those threads while the interpreter is whole. Every rank calls it once
    it is done with its collectives (not on an error path: a rank that stops part-way must
    not wait on its peers). Returns whether there was a group.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        return True
    return False


def leave_process(code: int = 0) -> NoReturn:
    """End a distributed rank's process without the C++ runtime's teardown.

    Even with the group destroyed (:func:`end_process_group`), an FSDP2 rank on gloo aborted
    now and then at interpreter exit, after every line of the run had returned ("terminate
    called without an active exception": a native thread still running when static
    destructors run; about 1 in 10 test runs on a loaded 2-core machine). Python's exit
    handlers (run locks, loggers) run here, the streams are flushed, and the process ends with
    ``code`` without the static destructors.
    """
    import atexit
    import logging

    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


_CUDA_ONLY = {
    "deepspeed": "DeepSpeed (trainer=deepspeed)",
    "fsdp": "FSDP1 (trainer=fsdp1; use trainer=fsdp for FSDP2, which runs on CPU)",
}


def resolve_trainer_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Fill in what torchrun decides, swap in the CPU loss scaler, refuse CUDA-only setups.

    ``kwargs`` are the Trainer's keyword arguments (the resolved ``trainer`` config).
    """
    import torch

    kwargs = dict(kwargs)
    accelerator = kwargs.get("accelerator", "auto")
    cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    strategy = kwargs.get("strategy")
    name = strategy if isinstance(strategy, str) else type(strategy).__name__.lower()
    for key, what in _CUDA_ONLY.items():
        if not cuda and name and name.startswith(key) and "fsdp2" not in name:
            raise LaunchError(f"{what} needs CUDA GPUs and none is available here")

    sizes = torchrun_sizes()
    if sizes is not None:
        local, nodes = sizes
        devices = kwargs.get("devices", "auto")
        if devices not in (None, "auto", 1, "1", local, str(local)):
            raise LaunchError(
                f"trainer.devices={devices} but torchrun started {local} processes per node; "
                "leave trainer.devices unset under torchrun (it is read from LOCAL_WORLD_SIZE)"
            )
        num_nodes = kwargs.get("num_nodes", 1)
        if num_nodes not in (1, nodes):
            raise LaunchError(f"trainer.num_nodes={num_nodes} but torchrun runs {nodes} nodes")
        kwargs["devices"], kwargs["num_nodes"] = local, nodes

    if str(kwargs.get("precision")) in ("16-mixed", "16") and not cuda:
        from mlnotes_zoo.scale.strategies import cpu_mixed_precision

        kwargs.pop("precision")
        kwargs["plugins"] = [*(kwargs.get("plugins") or []), cpu_mixed_precision()]
    return kwargs
