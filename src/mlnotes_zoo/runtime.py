"""Settings of the training process itself: ``runtime:`` in configs/train.yaml, applied by
``train.main`` before anything is built.

``runtime.threads`` is the number of CPU threads torch computes with
(``torch.set_num_threads``, and the inter-op pool where torch still lets it be set).
``auto`` (train.yaml's default) leaves torch's own choice: ``OMP_NUM_THREADS`` when it is
set, else one thread per core. A model config sets its own where the model trains faster on
fewer threads — small recurrent networks, whose steps are chains of small matrix products
(a GRU cell of 64–128 units): a second thread costs more in hand-offs than it computes
(``python scripts/bench.py --only cpu_levers`` measures it). The command line wins over
both: ``python train.py model=pondernet runtime.threads=2``.

The value is checked by its annotation here (``threads``), by the CLI before the run dir
exists (``validation.validate_config``) and by :func:`apply_runtime` for a config handed to
``train.main`` directly: ``runtime.threads=0: must be an integer >= 1, or 'auto', or null``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from mlnotes_zoo.constraints import PositiveInt, parameters, show
from mlnotes_zoo.errors import UsageError

__all__ = ["runtime_settings", "apply_runtime"]


def runtime_settings(*, threads: PositiveInt | Literal["auto"] | None = "auto") -> None:
    """The schema of ``runtime:`` (its keys, types and ranges).

    threads: CPU threads for torch's intra-op pool; ``auto``/null: torch's default.
    """


def apply_runtime(runtime: Mapping[str, Any] | None) -> int:
    """Check ``runtime`` (the config's ``runtime:`` node) and apply it to this process;
    returns the number of threads torch computes with from now on."""
    import torch

    params = parameters(runtime_settings)[0]
    settings = dict(runtime or {})
    for key, value in settings.items():
        if key not in params:
            raise UsageError(f"unknown key 'runtime.{key}'\nvalid keys for runtime: "
                             f"{', '.join(params)}")
        problem = params[key].problem(value)
        if problem:
            raise UsageError(f"runtime.{key}={show(value)}: {problem}")
    threads = settings.get("threads", "auto")
    if threads not in (None, "auto") and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
        try:  # only before any inter-op work has run in this process; else torch keeps its pool
            torch.set_num_interop_threads(threads)
        except RuntimeError:
            pass
    return torch.get_num_threads()
