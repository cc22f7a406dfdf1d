"""Loading and export of weights: ``weights_only`` checkpoints, safetensors, clear mismatches.

Nothing here unpickles more than tensors and plain Python values, so a file from an
untrusted source cannot run code when it is opened (a pickle can name any callable, e.g.
``os.system``, and ``torch.load(weights_only=False)`` would call it). A file that does not
fit the network — another model, other kwargs — is reported by name, key and shape instead
of as a wall of missing keys. Lightning is not needed.

Formats read by :func:`read_weights`:

- a ``.ckpt`` written by ``train.py``: the network's registry spec is in
  ``hyper_parameters["net"]``, its tensors are the ``net.*`` entries of ``state_dict``;
- a ``.safetensors`` written by :func:`export`: the spec is the ``mlnotes_zoo.net`` metadata
  entry (JSON);
- a plain ``state_dict`` saved with ``torch.save`` (no spec: the kwargs must be given).

:func:`load_checkpoint` rebuilds a network from either of the first two; :func:`export`
writes the second from the first. (A training run's full state — optimizer, RNG, loops — is
:mod:`mlnotes_zoo.resume`'s business.)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mlnotes_zoo.errors import ZooError
from mlnotes_zoo.registry import create_model

__all__ = ["load_checkpoint", "export", "read_weights", "load_weights", "safe_torch_load",
           "check_state_dict", "atomic_path", "UnsafeCheckpointError",
           "IncompatibleWeightsError", "UnreadableWeightsError"]

SPEC_KEY = "mlnotes_zoo.net"  # safetensors metadata: JSON {"name": ..., **kwargs}
_SHOWN = 3  # keys listed per kind of mismatch; the rest are counted


class UnsafeCheckpointError(ZooError, ValueError):
    """The file's pickle asks for more than tensors and plain values (it could run code)."""


class UnreadableWeightsError(ZooError, ValueError):
    """The file is not a checkpoint, state dict or safetensors file (or it is truncated)."""


class IncompatibleWeightsError(ZooError, ValueError):
    """The weights belong to another network, or to the same one built with other kwargs."""


# -- reading ------------------------------------------------------------------------------
def safe_torch_load(path: str | PathLike, *, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that say what went wrong
    (``mmap=True``: tensors are mapped from the file, not read)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - torch raises KeyError/RuntimeError/... for junk
        message = str(err)
        if "Weights only load failed" in message:
            glob = re.search(r"GLOBAL ([\w.]+)", message)
            what = (f"calls {glob.group(1)}" if glob else
                    "uses pickle instructions beyond tensors and plain values")
            raise UnsafeCheckpointError(
                f"{path}: refused to load: its pickle {what}, and loading it could run "
                "arbitrary code (checkpoints are read with torch.load(weights_only=True)). "
                "Only if you trust its source: torch.load(path, weights_only=False), then save "
                "its state_dict."
            ) from None
        first = message.split(". ")[0].splitlines()[0] if message else "no detail"
        raise UnreadableWeightsError(
            f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {first}); "
            "is it truncated?"
        ) from None


def read_weights(path: str | PathLike) -> tuple[dict[str, Any] | None, dict[str, Tensor]]:
    """``(spec or None, network state_dict)`` of a checkpoint, safetensors or state-dict file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    obj = safe_torch_load(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        spec = (obj.get("hyper_parameters") or {}).get("net")
        prefix = "net."
        state = {k[len(prefix):]: v for k, v in obj["state_dict"].items() if k.startswith(prefix)}
        return (dict(spec) if isinstance(spec, Mapping) else None), state
    if isinstance(obj, Mapping) and all(isinstance(v, Tensor) for v in obj.values()):
        return None, dict(obj)
    raise UnreadableWeightsError(
        f"{path}: neither a training checkpoint (with 'state_dict') nor a state dict of tensors")


def _read_safetensors(path: Path) -> tuple[dict[str, Any] | None, dict[str, Tensor]]:
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except SafetensorError as err:
        raise UnreadableWeightsError(f"{path}: not a readable safetensors file ({err})") from None
    spec = json.loads(metadata[SPEC_KEY]) if SPEC_KEY in metadata else None
    return spec, state


# -- checking and loading -----------------------------------------------------------------
def check_state_dict(expected: Mapping[str, Tensor], found: Mapping[str, Tensor], *,
                     source: str, target: str, note: str = "") -> None:
    """Raise :class:`IncompatibleWeightsError` naming the keys and shapes that differ."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k} {tuple(found[k].shape)} in the file vs {tuple(v.shape)} in the model"
              for k, v in expected.items()
              if k in found and tuple(found[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return
    problems = []
    for label, items in (("differ in shape", shapes), ("are missing from the file", missing),
                         ("in the file are not in the model", unexpected)):
        if items:
            more = f", … ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
            problems.append(f"{len(items)} tensor(s) {label}: {', '.join(items[:_SHOWN])}{more}")
    raise IncompatibleWeightsError(
        f"{source} does not fit {target}: " + "; ".join(problems) + (f". {note}" if note else ""))


def describe(spec: Mapping[str, Any]) -> str:
    """``vae(latent_dim=16, hidden=1024, ...)`` for messages."""
    kwargs = ", ".join(f"{k}={v!r}" for k, v in spec.items() if k != "name")
    return f"{spec.get('name', '?')}({kwargs})"


def spec_note(saved: Mapping[str, Any] | None, asked: Mapping[str, Any]) -> str:
    """Which kwargs the file was saved with that differ from the ones asked for."""
    if not saved:
        return ""
    diffs = [f"{k}={saved[k]!r} (asked {asked[k]!r})" for k in saved
             if k != "name" and k in asked and _plain(asked[k]) != _plain(saved[k])]
    return f"The weights were saved with {', '.join(diffs)}." if diffs else ""


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def load_weights(name: str | None, path: str | PathLike, kwargs: Mapping[str, Any]) -> nn.Module:
    """``create_model(name, **kwargs)`` with the tensors of ``path``; see :func:`read_weights`.

    The file's own kwargs are the defaults (``create_model("vae", weights=f)`` rebuilds the
    saved network); kwargs given here override them, and must still fit the tensors.
    ``name=None`` takes the name from the file.
    """
    spec, state = read_weights(path)
    if name is None:
        if spec is None or "name" not in spec:
            raise UnreadableWeightsError(
                f"{path}: no network spec (a checkpoint's hyper_parameters['net']); it was not "
                "written by a mlnotes_zoo LightningModule with a registered network")
        name = spec["name"]
    if spec is not None and spec.get("name") != name:
        raise IncompatibleWeightsError(
            f"{path} holds a {spec.get('name')!r} network ({describe(spec)}), not {name!r}; "
            f"use create_model({spec.get('name')!r}, weights=...)")
    saved = {k: v for k, v in (spec or {}).items() if k != "name"}
    model = create_model(name, **{**saved, **kwargs})
    check_state_dict(model.state_dict(), state, source=str(path),
                     target=describe(model.zoo_spec), note=spec_note(spec, kwargs))
    model.load_state_dict(state)
    return model


def load_checkpoint(path: str | PathLike, *, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load ``path`` (a ``.ckpt`` written by ``train.py``, or a ``.safetensors`` written by
    :func:`export`) and return its network in eval mode; Lightning is not needed.

    The network is rebuilt from the registry name and kwargs kept in the file (a checkpoint's
    ``hyper_parameters["net"]``): nothing is unpickled but tensors and plain Python values
    (``torch.load(weights_only=True)``); a pickle that asks for more is refused
    (:class:`UnsafeCheckpointError`).
    """
    return load_weights(None, path, {}).to(map_location).eval()


# -- writing ------------------------------------------------------------------------------
@contextmanager
def atomic_path(path: str | PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``.

    A crash at any moment (SIGKILL, power loss) leaves either the old file or the new one,
    never a truncated mix: ``os.replace`` within one directory is atomic (POSIX rename), and
    the fsyncs order the data before the rename on disk.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def export(checkpoint: str | PathLike, out: str | PathLike) -> Path:
    """Write the network of ``checkpoint`` (a ``.ckpt`` from ``train.py``) to ``out``, a
    ``.safetensors`` file with the registry spec as metadata; returns ``out``.

    ``create_model(name, weights=out)`` rebuilds it; the file holds no pickle at all.
    """
    from safetensors.torch import save_file

    model = load_weights(None, checkpoint, {})  # checks the tensors against the spec
    # copies: safetensors refuses tensors that share storage (tied weights are stored twice)
    tensors = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    out = Path(out)
    metadata = {SPEC_KEY: json.dumps(model.zoo_spec), "format": "pt",
                "mlnotes_zoo.version": package_version()}
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return out


def package_version() -> str:
    """The installed mlnotes-zoo version (``0+unknown`` when run from an uninstalled tree)."""
    try:
        return metadata.version("mlnotes-zoo")
    except metadata.PackageNotFoundError:
        return "0+unknown"
